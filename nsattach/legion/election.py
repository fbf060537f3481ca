"""One legion's membership and Lord election: a pure state machine (uwsgi-spec §7.5-§7.7).

Pure means: this module never reads a clock, sleeps, touches a socket or runs a command. Each
input carries ``now`` (monotonic seconds for every interval, wall seconds for what goes on the
wire and into logs) and returns a list of effects for the host to carry out:

* :class:`Send` - encrypt and send this announcement to every destination;
* :class:`RunActions` - run these legion actions in order; for the ``lord`` event the host must
  report the outcome with :meth:`Election.actions_finished` (the Lord decision waits for it),
  the other events are fire-and-forget;
* :class:`LordChanged` - this node became, or stopped being, the Lord;
* :class:`Log` - a log line (texts kept from uWSGI where uWSGI has one).

The host calls :meth:`Election.tick` when :meth:`Election.next_deadline` is due.

The rules are uWSGI's, bit for bit where peers can see them (announced fields, the checksum,
the candidate and the unanimity vote), so that nsattach and uWSGI nodes converge on the same
Lord. Deliberate deviations, all invisible on the wire except where noted:

* Timing (Q-L5): announcements follow a fixed monotonic schedule, one every ``freq`` seconds
  from start, whatever the incoming traffic; uWSGI can postpone its own announcements
  indefinitely under traffic. We also announce once at start (uWSGI waits ``freq``), at once on
  becoming Lord (as uWSGI does) and on death.
* First election: uWSGI skips the election step of its first loop iteration, which in effect
  makes a lonely node wait about 2 x freq. Here no election runs before ``2 x freq`` seconds
  after start (FIRST_ELECTION_FREQS): every live peer announces at least once per freq, so by
  then each has been heard with a whole period of margin, and a node never promotes itself
  before it could know about a better one (one freq is not enough: a peer's announcement due at
  the same instant may still sit unread in the socket). A lonely node becomes Lord after 2 x freq.
* Lord actions do not block (Q-L10): the node says "attempting to become the Lord", the host runs
  the actions, and only :meth:`actions_finished` makes it Lord ("i am now the Lord"), keeping
  uWSGI's order hooks -> Lord. Meanwhile announcements and packets go on. Right after becoming
  Lord the election is evaluated again, so if a better node appeared meanwhile it unlords at once
  (uWSGI processed such packets only after its blocking hooks, with the same outcome).
* Losing quorum unlords at once; only the "no quorum" log line is throttled to one per 60 s
  (Q-L4; uWSGI's unlord waits for the log throttle).
* After a ``legion-death-on-lord-error`` suspension the ``dead`` flag is cleared, so the node
  rejoins (Q-L2; uWSGI announces ``dead=1`` forever). The dead announcement is sent once,
  immediately, as in uWSGI.
* A node announcing its death runs the ``node-left`` actions, like an expired node (Q-L6), and the
  election is evaluated at once (uWSGI waits for its next event).
* A peer's scroll is updated from every packet (Q-L7), not only from its first one.
* Expiry: a node is dropped when ``now - last_seen >= tolerance`` on the monotonic clock (uWSGI:
  ``>`` on whole wall seconds).
* On stop the dead announcement is sent even while suspended (uWSGI skips it then), and a Lord
  reports :class:`LordChanged` (False) so the host can stop Lord-only work; like uWSGI no ``unlord``
  actions run on stop.
* Byte comparisons of uuids (tie-break) and the checksum treat bytes as signed C ``char``, as uWSGI
  on x86 does; identical to plain byte order for the ASCII uuids every real node sends.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from nsattach.config.model import LegionActionPlan, LegionPlan, LegionSettings
from nsattach.legion.wire import NO_UUID, UUID_LEN, Announcement

NO_QUORUM_LOG_INTERVAL_S = 60.0     # uWSGI's throttle for the "no quorum" warning
FIRST_ELECTION_FREQS = 2            # no election before this many announce periods after start
UVALOR_LIMIT = 0xFFFF               # uWSGI's add_node() keeps only 16 bits of a peer's valor
_U64 = 1 << 64
_SIGN_FLIP = bytes((b ^ 0x80) for b in range(256))   # signed-char order == unsigned order after this


# --- effects ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    announcement: Announcement


@dataclass(frozen=True)
class RunActions:
    """Run ``actions`` one after the other. ``stop_on_error``: stop at the first non-zero exit
    (only for lord actions under legion-death-on-lord-error, as uWSGI does). The host answers
    ``actions_finished(token, failed, ...)``; only the ``lord`` event's answer matters."""

    event: str
    actions: tuple[LegionActionPlan, ...]
    token: int
    stop_on_error: bool = False


@dataclass(frozen=True)
class LordChanged:
    is_lord: bool
    since_wall: float


@dataclass(frozen=True)
class Log:
    text: str
    level: str = "info"


Effect = Send | RunActions | LordChanged | Log


# --- state --------------------------------------------------------------------------------

class Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass
class Member:
    """A peer, identified by (valor, name, uuid) like uWSGI (the pid is not part of it)."""

    valor: int
    name: str
    uuid: bytes
    pid: int
    last_seen: float            # monotonic
    last_seen_wall: float
    checksum: int = 0
    lord_valor: int = 0
    lord_uuid: bytes = NO_UUID
    scroll: bytes | None = None

    @property
    def kind(self) -> str:
        return "node" if self.valor > 0 else "arbiter"


def uuid_text(uuid: bytes) -> str:
    if uuid == NO_UUID:
        return "(none)"
    return uuid.decode("ascii", "backslashreplace")


def _signed_sum(data: bytes) -> int:
    return sum(b - 256 if b >= 128 else b for b in data)


def _uuid_greater(a: bytes, b: bytes) -> bool:
    """uWSGI's uwsgi_uuid_cmp(a, b) > 0: byte-wise on signed chars."""
    return a.translate(_SIGN_FLIP) > b.translate(_SIGN_FLIP)


def checksum_of(entries: list[tuple[int, bytes]]) -> int:
    """Σ (valor + Σ uuid bytes) over self and every member, arbiters included, mod 2**64."""
    return sum(valor + _signed_sum(uuid) for valor, uuid in entries) % _U64


class Election:
    """The per-legion state machine. Identity (hostname, pid, uuid) is fixed for its lifetime:
    a restart or reload makes a new Election with a new uuid."""

    def __init__(self, plan: LegionPlan, settings: LegionSettings, *, name: str, pid: int, uuid: str):
        uuid_bytes = uuid.encode("ascii")
        if len(uuid_bytes) != UUID_LEN:
            raise ValueError(f"uuid must be {UUID_LEN} characters, not {len(uuid_bytes)}")
        if not name:
            raise ValueError("the node name (hostname) must not be empty")
        if plan.valor < 0:
            raise ValueError("valor must not be negative")
        self.plan = plan
        self.settings = settings
        self.legion = plan.name
        self.name = name
        self.pid = pid
        self.valor = plan.valor
        self.uuid = uuid_bytes
        self.scroll = plan.scroll.encode("utf-8", "surrogateescape") if plan.scroll else None
        self.freq = float(settings.freq or 3)
        self.tolerance = float(settings.tolerance or 15)
        self.skew_tolerance = float(settings.skew_tolerance or 60)
        self.quorum = plan.quorum
        self._actions: dict[str, tuple[LegionActionPlan, ...]] = {}
        for action in plan.actions:
            self._actions[action.event] = self._actions.get(action.event, ()) + (action,)

        self.phase = Phase.NEW
        self.members: dict[tuple[int, str, bytes], Member] = {}
        # what we announce (uWSGI: 0 and NULs until the first election step)
        self.lord_valor = 0
        self.lord_uuid = NO_UUID
        self.checksum = 0
        self.lord_scroll: bytes | None = None
        self.lord = False
        self.lord_since: float = 0.0        # wall time we became Lord (announced as "lord")
        self.joined = False
        self.changed = False
        self.dead = False
        self.suspended_until: float | None = None   # monotonic
        self.last_warning = -math.inf
        self.votes = 0
        self.agreed = False                 # last step had unanimity and quorum
        self.pending_lord: int | None = None   # token of the lord actions we wait for
        self._token = 0
        self._next_announce = math.inf
        self._elections_from = math.inf
        self._settled = False

    # --- queries ----------------------------------------------------------------------------

    @property
    def is_lord(self) -> bool:
        return self.lord

    def next_deadline(self) -> float:
        """Monotonic time at which :meth:`tick` must be called (inf when stopped)."""
        if self.phase is not Phase.RUNNING:
            return math.inf
        deadline = self._next_announce
        if not self._settled:
            deadline = min(deadline, self._elections_from)
        if self.suspended_until is not None:
            deadline = min(deadline, self.suspended_until)
        for member in self.members.values():
            deadline = min(deadline, member.last_seen + self.tolerance)
        return deadline

    def status(self) -> dict:
        candidate_name = self.name
        if self.lord_uuid == NO_UUID:
            candidate_name = None
        elif (self.lord_valor, self.lord_uuid) != (self.valor, self.uuid):
            candidate_name = next((m.name for m in self.members.values()
                                   if (m.valor, m.uuid) == (self.lord_valor, self.lord_uuid)), None)
        return {
            "legion": self.legion,
            "phase": self.phase.value,
            "name": self.name,
            "pid": self.pid,
            "valor": self.valor,
            "uuid": uuid_text(self.uuid),
            "lord": self.is_lord,
            "lord_since": self.lord_since if self.lord else None,
            "becoming_lord": self.pending_lord is not None,
            "suspended": self.suspended_until is not None,
            "dead": self.dead,
            "candidate": {"valor": self.lord_valor, "uuid": uuid_text(self.lord_uuid), "name": candidate_name},
            "lord_scroll": self.lord_scroll.decode("utf-8", "replace") if self.lord_scroll else None,
            "checksum": self.checksum,
            "quorum": self.quorum,
            "votes": self.votes,
            "agreed": self.agreed,
            "members": [
                {"name": m.name, "valor": m.valor, "uuid": uuid_text(m.uuid), "pid": m.pid,
                 "arbiter": m.valor == 0, "last_seen": m.last_seen_wall, "checksum": m.checksum,
                 "vote_valor": m.lord_valor, "vote_uuid": uuid_text(m.lord_uuid),
                 "scroll": m.scroll.decode("utf-8", "replace") if m.scroll else None}
                for m in self.members.values()
            ],
        }

    # --- inputs ----------------------------------------------------------------------------

    def start(self, now: float, now_wall: float) -> list[Effect]:
        if self.phase is not Phase.NEW:
            raise RuntimeError(f"legion {self.legion}: start() in phase {self.phase.value}")
        self.phase = Phase.RUNNING
        out: list[Effect] = [Log(f"[uwsgi-legion] node {self.name} (pid {self.pid}) valor: {self.valor} "
                                 f"uuid: {uuid_text(self.uuid)} joining Legion {self.legion}")]
        if self.valor == 0:
            out.append(Log(f"[uwsgi-legion] valor 0: this node is an arbiter of Legion {self.legion} "
                           f"(it votes but never becomes Lord)"))
        elif self.valor > UVALOR_LIMIT:
            out.append(Log(f"[uwsgi-legion] valor {self.valor} of Legion {self.legion} is above {UVALOR_LIMIT}: "
                           f"uWSGI peers keep only 16 bits of it and will never agree with this node",
                           "warning"))
        self._fire("setup", out)
        self._send(now_wall, out)
        self._next_announce = now + self.freq
        self._elections_from = now + FIRST_ELECTION_FREQS * self.freq
        return out

    def packet(self, ann: Announcement, now: float, now_wall: float) -> list[Effect]:
        """Steps 6-10 of §7.5 for a datagram that decoded, then an election step."""
        if self.phase is not Phase.RUNNING:
            return []
        out: list[Effect] = []
        self._check_suspension(now, now_wall, out)
        if ann.legion != self.legion:
            out.append(Log(f"[uwsgi-legion] invalid legion name ({ann.legion!r} received on the socket of "
                           f"Legion {self.legion})", "warning"))
            return out
        if not ann.name:        # Q-L3 (wire.decode already refuses these; keep the core safe alone)
            out.append(Log("[uwsgi-legion] invalid packet (empty node name)", "warning"))
            return out
        if (ann.name == self.name and ann.pid == self.pid and ann.valor == self.valor
                and ann.uuid == self.uuid):
            return out          # our own packet, looped back (multicast, or listed as a node)
        if ann.unix < now_wall - self.skew_tolerance:
            out.append(Log(f"[uwsgi-legion] untolerable packet received for Legion {self.legion} , "
                           f"check your clock !!!", "warning"))
            return out
        key = (ann.valor, ann.name, ann.uuid)
        member = self.members.get(key)
        if member is None:
            if ann.dead:
                return out      # a suspended or departing node we never knew
            member = Member(ann.valor, ann.name, ann.uuid, ann.pid, now, now_wall)
            self.members[key] = member
            out.append(Log(f"[uwsgi-legion] {member.kind}: {member.name} valor: {member.valor} "
                           f"uuid: {uuid_text(member.uuid)} joined Legion {self.legion}"))
            self._fire("node-joined", out)
        elif ann.dead:
            del self.members[key]
            out.append(Log(f"[uwsgi-legion] {member.kind}: {member.name} valor: {member.valor} "
                           f"uuid: {uuid_text(member.uuid)} announced its death to Legion {self.legion}"))
            self._fire("node-left", out)
            self._step(now, now_wall, out)
            return out
        member.pid = ann.pid
        member.last_seen = now
        member.last_seen_wall = now_wall
        member.lord_valor = ann.lord_valor
        member.checksum = ann.checksum
        member.lord_uuid = ann.lord_uuid
        member.scroll = ann.scroll
        self._step(now, now_wall, out)
        return out

    def tick(self, now: float, now_wall: float) -> list[Effect]:
        """Expire silent nodes, run an election step, and announce when the schedule says so."""
        if self.phase is not Phase.RUNNING:
            return []
        out: list[Effect] = []
        self._check_suspension(now, now_wall, out)
        for key, member in list(self.members.items()):
            if now - member.last_seen >= self.tolerance:
                del self.members[key]
                out.append(Log(f"[uwsgi-legion] {member.kind}: {member.name} valor: {member.valor} "
                               f"uuid: {uuid_text(member.uuid)} left Legion {self.legion}"))
                self._fire("node-left", out)
        self._step(now, now_wall, out)
        if now >= self._next_announce:
            if not any(isinstance(e, Send) for e in out):
                self._send(now_wall, out)
            # fixed schedule: skip the slots we missed, keep the phase
            missed = math.floor((now - self._next_announce) / self.freq) + 1
            self._next_announce += missed * self.freq
        return out

    def actions_finished(self, token: int, failed: bool, now: float, now_wall: float) -> list[Effect]:
        """The host finished a RunActions; only the pending lord actions change anything."""
        if token != self.pending_lord:
            return []
        self.pending_lord = None
        if self.phase is not Phase.RUNNING:
            return []
        out: list[Effect] = []
        self._check_suspension(now, now_wall, out)
        if failed and self.settings.death_on_lord_error > 0:
            # announce our death once, then keep quiet; peers drop us at once and elect another
            self.dead = True
            self._send(now_wall, out)
            self.suspended_until = now + self.settings.death_on_lord_error
            out.append(Log(f"[uwsgi-legion] suspending myself from Legion \"{self.legion}\" for "
                           f"{self.settings.death_on_lord_error} seconds", "warning"))
            return out
        self._become_lord(now, now_wall, out)
        return out

    def stop(self, now: float, now_wall: float) -> list[Effect]:
        """Shutdown: death actions, then the dead announcement."""
        return self._die(now, now_wall, run_death_actions=True)

    def reload(self, now: float, now_wall: float) -> list[Effect]:
        """Reload: the dead announcement only (the next incarnation comes with a new uuid)."""
        return self._die(now, now_wall, run_death_actions=False)

    # --- internals ---------------------------------------------------------------------------

    def _die(self, now: float, now_wall: float, *, run_death_actions: bool) -> list[Effect]:
        if self.phase is not Phase.RUNNING:
            self.phase = Phase.STOPPED
            return []
        out: list[Effect] = []
        if run_death_actions:
            self._fire("death", out)
        self.dead = True
        self._send(now_wall, out, force=True)
        if self.lord:
            self.lord = False
            out.append(LordChanged(False, now_wall))
        self.pending_lord = None
        self.phase = Phase.STOPPED
        return out

    def _check_suspension(self, now: float, now_wall: float, out: list[Effect]) -> None:
        if self.suspended_until is not None and now >= self.suspended_until:
            self.suspended_until = None
            self.dead = False       # Q-L2: uWSGI would announce dead=1 forever
            out.append(Log(f"[uwsgi-legion] suspension from Legion \"{self.legion}\" is over, rejoining"))
            self._send(now_wall, out)

    def _suspended(self, now: float) -> bool:
        return self.suspended_until is not None and now < self.suspended_until

    def _announcement(self, now_wall: float) -> Announcement:
        return Announcement(
            legion=self.legion, valor=self.valor, unix=int(now_wall),
            lord=int(self.lord_since) if self.lord else 0,
            name=self.name, pid=self.pid, uuid=self.uuid, checksum=self.checksum,
            lord_valor=self.lord_valor, lord_uuid=self.lord_uuid, scroll=self.scroll, dead=self.dead,
        )

    def _send(self, now_wall: float, out: list[Effect], *, force: bool = False) -> None:
        if self.suspended_until is not None and not force:
            return
        out.append(Send(self._announcement(now_wall)))

    def _fire(self, event: str, out: list[Effect], *, stop_on_error: bool = False) -> int | None:
        actions = self._actions.get(event, ())
        if not actions:
            return None
        self._token += 1
        out.append(RunActions(event, actions, self._token, stop_on_error))
        return self._token

    def _step(self, now: float, now_wall: float, out: list[Effect]) -> None:
        """One election step (§7.7)."""
        if not self._settled:
            if now < self._elections_from:
                return
            self._settled = True

        # 1. candidate: the highest (valor, uuid) among self and the non-arbiter members
        best_valor, best_uuid, best_node = self.valor, self.uuid, None
        for m in self.members.values():
            if m.valor == 0:
                continue
            if m.valor > best_valor or (m.valor == best_valor and _uuid_greater(m.uuid, best_uuid)):
                best_valor, best_uuid, best_node = m.valor, m.uuid, m
        if ((self.valor > 0 and self.lord_valor == 0) or best_valor != self.lord_valor
                or best_uuid != self.lord_uuid):
            self.changed = True
        self.lord_valor, self.lord_uuid = best_valor, best_uuid
        if best_node is not None:
            self.lord_scroll = best_node.scroll

        # 2. who we vote for (an arbiter or a suspended node alone votes for nobody)
        i_am_the_best = False
        if best_node is not None:
            vote_valor, vote_uuid = best_node.valor, best_node.uuid
        elif self.valor > 0 and not self._suspended(now):
            vote_valor, vote_uuid, i_am_the_best = self.valor, self.uuid, True
        else:
            vote_valor, vote_uuid = 0, NO_UUID

        # 3. membership checksum: all members see the same one once they know each other
        checksum = checksum_of([(self.valor, self.uuid)]
                               + [(m.valor, m.uuid) for m in self.members.values()])
        if checksum != self.checksum:
            self.changed = True
        self.checksum = checksum

        # 4. unanimity: one disagreeing member freezes every decision
        votes = 1
        for m in self.members.values():
            if m.checksum != checksum or m.lord_valor != vote_valor or m.lord_uuid != vote_uuid:
                votes = 0
                break
            votes += 1
        self.votes = votes
        self.agreed = votes > 0 and votes >= self.quorum

        # 5. decisions
        if self.agreed:
            if not self.joined:
                self._fire("join", out)
                self.joined = True
            if self.changed:
                self._report_quorum(vote_valor, vote_uuid, votes, out)
                self.changed = False
            if i_am_the_best:
                if not self.is_lord and self.pending_lord is None:
                    out.append(Log(f"[uwsgi-legion] attempting to become the Lord of the Legion {self.legion}"))
                    token = self._fire("lord", out, stop_on_error=self.settings.death_on_lord_error > 0)
                    if token is None:       # no lord actions: nothing to wait for
                        self._become_lord(now, now_wall, out)
                    else:
                        self.pending_lord = token
            elif self.is_lord:
                out.append(Log(f"[uwsgi-legion] a new Lord (valor: {self.lord_valor} uuid: "
                               f"{uuid_text(self.lord_uuid)}) raised for Legion {self.legion}..."))
                if self.lord_scroll:
                    out.append(Log("*********** The New Lord Scroll ***********"))
                    out.append(Log(self.lord_scroll.decode("utf-8", "replace")))
                    out.append(Log("*********** End of the New Lord Scroll ***********"))
                self._unlord(now_wall, out)
        elif votes > 0:
            if now - self.last_warning >= NO_QUORUM_LOG_INTERVAL_S:
                out.append(Log(f"[uwsgi-legion] no quorum: only {votes} vote(s) for Legion {self.legion}, "
                               f"{self.quorum} needed to elect a Lord", "warning"))
                self.last_warning = now
            if self.is_lord:
                out.append(Log(f"[uwsgi-legion] i cannot be The Lord of The Legion {self.legion} "
                               f"without a quorum ...", "warning"))
                self._unlord(now_wall, out)

    def _become_lord(self, now: float, now_wall: float, out: list[Effect]) -> None:
        self.lord_scroll = self.scroll
        out.append(Log(f"[uwsgi-legion] i am now the Lord of the Legion {self.legion}"))
        self.lord, self.lord_since = True, now_wall
        out.append(LordChanged(True, now_wall))
        self._send(now_wall, out)       # lets the old Lord step down sooner
        self._step(now, now_wall, out)  # the world may have moved while the lord actions ran

    def _unlord(self, now_wall: float, out: list[Effect]) -> None:
        self.lord = False
        self._fire("unlord", out)
        out.append(LordChanged(False, now_wall))

    def _report_quorum(self, valor: int, uuid: bytes, votes: int, out: list[Effect]) -> None:
        out.append(Log(f"[uwsgi-legion] --- WE HAVE QUORUM FOR LEGION {self.legion} !!! (valor: {valor} "
                       f"uuid: {uuid_text(uuid)} checksum: {self.checksum} votes: {votes}) ---"))
        for m in self.members.values():
            out.append(Log(f"[uwsgi-legion-node] {m.kind}: {m.name} valor: {m.valor} uuid: {uuid_text(m.uuid)} "
                           f"last_seen: {int(m.last_seen_wall)} vote_valor: {m.lord_valor} "
                           f"vote_uuid: {uuid_text(m.lord_uuid)}"))
        out.append(Log("[uwsgi-legion] --- END OF QUORUM REPORT ---"))
