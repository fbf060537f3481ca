"""Legion on etcd: lord election with leases and a fencing term.

A UDP legion (``nsattach.legion.election``) cannot rule out two lords: a partition lets each
side elect its own and nothing fences the old one. An etcd legion leaves agreement to etcd
(Raft quorum, leases, revisions) and keeps only the policy here:

* Each node holds one **lease** (TTL ``T``, ``legion-etcd-ttl``) and keeps it alive. Under it
  sits its **member key** ``PREFIX/LEGION/members/ID`` (valor, name, pid, scroll) and, on the
  lord only, the **lord key** ``PREFIX/LEGION/lord``. A dead or cut-off node's keys vanish
  when etcd expires its lease; nothing else removes another node's keys.
* **Election**: among the live members (the member keys), the highest valor is the rightful
  lord, ties broken by the higher member id (a random uuid, fixed for the life of the
  service), valor 0 never leads - the UDP rules. Only the rightful lord tries to create the
  lord key, with a transaction that succeeds only if the key does not exist
  (``create_revision == 0``); so there is at most one lord key, whoever believes what.
* **Hand-over**: a lord that sees a strictly better member stops being lord (its legion
  daemons are stopped), waits until none of them runs, and only then deletes the lord key
  (a transaction on ``value == its own``); the better node creates the key at its next poll.
* **Fencing term**: the revision at which the lord key was created. etcd revisions only grow,
  so every new lordship has a larger term than all earlier ones. Legion daemons and lord
  actions get it as ``NSATTACH_LEGION_TERM``; a protected resource that remembers the highest
  term it has seen can refuse a stale writer.

The lease safety math (all local deadlines on the monotonic clock; no wall clock is compared
across machines). With ``T`` the TTL, ``M`` the reload-mercy (legion daemons get SIGKILL ``M``
seconds after they were asked to stop), ``D`` the request deadline and ``S = 1 s + D``:

* A renewal counts from the moment its request was **sent** (``r``): etcd restarts the lease
  clock when it handles the request, which is after ``r``, so the lease cannot expire before
  ``r + T`` (a leader change only extends leases).
* A lord that has not renewed since ``r`` stops being lord at ``r + T - M - S`` at the latest:
  its daemons are told to stop then and are SIGKILLed by ``r + T - S``, ``S`` seconds before
  the earliest moment etcd could expire its lease and delete its lord key.
* Another node can create the lord key only after the old one is gone: deleted by its owner
  after its daemons stopped, revoked with its lease by its owner after its daemons stopped,
  or expired - after the owner's daemons were killed, by the point above.
* So at most one node runs the legion daemons at any moment while etcd is healthy. A node cut
  off from etcd, or a cluster without quorum, renews nothing and elects nothing: its lord
  steps down at its deadline and nobody can create a lord key - no lord at all, never two.
* ``check`` requires ``T >= 2 M + 5`` so the keep-alive schedule (every ``(T - M - S) / 3``
  seconds, retried quickly on failure) has room for several tries before the deadline.

What it cannot promise (README, "Legion on etcd"): a smart daemon outlives a SIGKILLed master
by design and nothing is left to stop it; a process that survives SIGKILL (uninterruptible
sleep) is beyond any supervisor; etcd's own guarantees assume its members' clocks run at the
same rate as ours (a lease's TTL is measured by the etcd leader). The fencing term covers
those cases only if the protected resource checks it.

The module has two layers: :class:`EtcdElection`, a pure state machine (each input carries
``now``; it returns effects: :class:`Call` an etcd request, and the UDP election's
``RunActions``, ``LordChanged`` and ``Log``) tested with a fake clock and a fake etcd, and
:class:`EtcdLegionService`, which connects it to the non-blocking client
(``nsattach.legion.etcd_client``) and to the master through the LegionHost protocol.
"""

from __future__ import annotations

import enum
import json
import math
import ssl
import time
import uuid as uuid_module
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from nsattach.config.model import EtcdLegionPlan, LegionActionPlan, LegionSettings
from nsattach.errors import LegionError
from nsattach.legion.actions import run_action_chain
from nsattach.legion.election import Log, LordChanged, RunActions
from nsattach.legion.etcd_client import CODE_NOT_FOUND, EtcdClient, Reply, b64, prefix_end, unb64
from nsattach.legion.node import LegionHost

REQUEST_TIMEOUT_S = 2.0     # D: every etcd request has this deadline
POLL_S = 1.0                # how often a member reads the legion (members and lord key)
RETRY_S = 0.25              # a failed keep-alive, registration, release or revoke is retried after this
GRANT_RETRY_S = 1.0         # no lease: ask again after this
IDLE_POLL_S = 0.1           # while waiting for our legion daemons to be gone
DEFAULT_TTL_S = 15
DEFAULT_PREFIX = "/nsattach/legion/"
UNREACHABLE_LOG_INTERVAL_S = 60.0


def min_ttl(mercy: int) -> int:
    """The shortest lease TTL ``check`` accepts for a reload-mercy (see the module docstring)."""
    return 2 * mercy + 5


def default_ttl(mercy: int) -> int:
    return max(DEFAULT_TTL_S, min_ttl(mercy))


@dataclass(frozen=True)
class Timing:
    ttl: float                          # T
    mercy: float                        # M
    request_timeout: float = REQUEST_TIMEOUT_S   # D
    poll: float = POLL_S

    @property
    def safety(self) -> float:
        """S: SIGKILL delivery, loop latency and clock-rate differences, plus one request deadline."""
        return 1.0 + self.request_timeout

    @property
    def budget(self) -> float:
        """How long after a renewal was sent the lord may go on without another one."""
        return self.ttl - self.mercy - self.safety

    @property
    def keepalive(self) -> float:
        return max(0.2, self.budget / 3)

    def stop_by(self, renewed_at: float, ttl: float | None = None) -> float:
        ttl = self.ttl if ttl is None else min(self.ttl, ttl)
        return renewed_at + ttl - self.mercy - self.safety


# --- effects ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """Send ``body`` to the gateway's ``path``; answer with ``EtcdElection.reply(token, ...)``."""

    token: int
    path: str
    body: dict


Effect = Call | RunActions | LordChanged | Log


# --- state ----------------------------------------------------------------------------------

class Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    LEAVING = "leaving"         # stopping: daemons first, then the lease is revoked
    STOPPED = "stopped"


class Role(enum.Enum):
    FOLLOWER = "follower"
    TAKING = "taking"           # the take transaction is on its way
    ACTIONS = "actions"         # we hold the lord key; the lord actions run
    LORD = "lord"
    STEPPING_DOWN = "stepping-down"   # daemons stopping, then the lord key is released


@dataclass(frozen=True)
class Member:
    id: str
    name: str
    pid: int
    valor: int
    scroll: str | None
    lease: int

    @property
    def rank(self) -> tuple[int, str]:
        return (self.valor, self.id)


@dataclass(frozen=True)
class LordKey:
    id: str
    name: str
    valor: int
    lease: int
    term: int           # the key's create_revision
    value: bytes


def best_member(members: Iterable[Member]) -> Member | None:
    """The rightful lord: highest valor, then highest id; valor 0 (arbiters) never."""
    candidates = [m for m in members if m.valor > 0]
    return max(candidates, key=lambda m: m.rank, default=None)


def _int(value, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def parse_member(kv: dict) -> Member | None:
    try:
        info = json.loads(unb64(kv.get("value")))
        return Member(id=str(info["id"]), name=str(info.get("name", "?")), pid=_int(info.get("pid")),
                      valor=max(0, _int(info.get("valor"))), scroll=info.get("scroll"),
                      lease=_int(kv.get("lease")))
    except (ValueError, KeyError, TypeError):
        return None


def parse_lord(kv: dict) -> LordKey:
    value = unb64(kv.get("value"))
    try:
        info = json.loads(value)
        ident, name, valor = str(info["id"]), str(info.get("name", "?")), _int(info.get("valor"))
    except (ValueError, KeyError, TypeError):
        ident, name, valor = "?", "?", 0
    return LordKey(ident, name, valor, _int(kv.get("lease")), _int(kv.get("create_revision")), value)


def _range_kvs(response: dict) -> list[dict]:
    inner = response.get("response_range") or {}
    kvs = inner.get("kvs") or []
    return [kv for kv in kvs if isinstance(kv, dict)]


class EtcdElection:
    """One etcd legion's membership and lordship, as a pure state machine.

    Inputs: :meth:`start`, :meth:`tick` (when :meth:`next_deadline` is due), :meth:`reply` (an
    etcd call finished), :meth:`actions_finished`, :meth:`leave`. Before each input the host
    sets :attr:`idle`: True when none of this legion's daemons runs on this node.
    """

    def __init__(self, plan: EtcdLegionPlan, *, name: str, pid: int, member_id: str,
                 death_on_lord_error: int = 0, timing: Timing | None = None):
        if not member_id:
            raise ValueError("the member id must not be empty")
        self.plan = plan
        self.legion = plan.name
        self.name = name
        self.pid = pid
        self.id = member_id
        self.valor = plan.valor
        self.timing = timing or Timing(float(plan.ttl), float(plan.reload_mercy))
        self.death_on_lord_error = death_on_lord_error
        base = f"{plan.prefix}{plan.name}/".encode("utf-8", "surrogateescape")
        self.lord_key = base + b"lord"
        self.members_prefix = base + b"members/"
        self.member_key = self.members_prefix + member_id.encode()
        member = {"id": member_id, "name": name, "pid": pid, "valor": plan.valor}
        if plan.scroll:
            member["scroll"] = plan.scroll
        self.member_value = json.dumps(member, sort_keys=True).encode()
        self.lord_value = json.dumps({"id": member_id, "name": name, "pid": pid, "valor": plan.valor},
                                     sort_keys=True).encode()
        self._actions: dict[str, tuple[LegionActionPlan, ...]] = {}
        for action in plan.actions:
            self._actions[action.event] = self._actions.get(action.event, ()) + (action,)

        self.phase = Phase.NEW
        self.role = Role.FOLLOWER
        self.idle = True
        self.now = -math.inf                # the latest input's time
        # the session: our lease
        self.lease: int | None = None
        self.lease_ttl = self.timing.ttl
        self.renewed_at = -math.inf         # monotonic send time of the last successful grant/keep-alive
        self.gen = 0                        # bumped when a session ends: late answers are recognised
        self.registered = False
        self.joined = False
        self.stale_leases: set[int] = set()     # earlier leases of ours, revoked once our daemons are gone
        # lordship
        self.term = 0
        self.lord_since = 0.0
        self.pending_lord: int | None = None
        self.suspended_until: float | None = None
        # what the last poll saw
        self.members: dict[str, Member] | None = None
        self.lord: LordKey | None = None
        self.seen_at: float | None = None
        # the etcd revision our picture of the lord key is at least as new as: a poll answered
        # at an older revision (sent before our take or release was applied) is not looked at
        self.revision = 0
        # requests
        self._token = 0
        self._inflight: dict[int, tuple[str, int, float, dict]] = {}   # token -> (kind, gen, sent at, extra)
        self._next = {"grant": -math.inf, "keepalive": math.inf, "register": math.inf, "poll": math.inf,
                      "revoke": -math.inf, "release": -math.inf}
        self._first_take_at = math.inf
        self._leave_deadline = math.inf
        self._leave_revoked = False
        # reachability, for logs and status
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._unreachable_logged = -math.inf
        self._error_logged = -math.inf

    # --- queries ----------------------------------------------------------------------------

    @property
    def is_lord(self) -> bool:
        return self.role is Role.LORD

    @property
    def stop_by(self) -> float:
        """When a lord must have begun stopping its daemons, given the last renewal."""
        if self.lease is None:
            return -math.inf
        return self.timing.stop_by(self.renewed_at, self.lease_ttl)

    def _busy(self, kind: str) -> bool:
        return any(k == kind for k, _, _, _ in self._inflight.values())

    def _waiting_for_idle(self) -> bool:
        if self.idle:
            return False
        return (self.role is Role.STEPPING_DOWN or bool(self.stale_leases) or self.phase is Phase.LEAVING)

    def next_deadline(self) -> float:
        if self.phase in (Phase.NEW, Phase.STOPPED):
            return math.inf
        d = math.inf
        if self.lease is not None:
            d = min(d, self.stop_by)
            if not self._busy("keepalive"):
                d = min(d, self._next["keepalive"])
            if self.phase is Phase.RUNNING:
                if not self.registered and self.suspended_until is None and not self._busy("register"):
                    d = min(d, self._next["register"])
                if (self.registered or self.suspended_until is not None) and not self._busy("poll"):
                    d = min(d, self._next["poll"])
                if self.role is Role.STEPPING_DOWN and self.idle and not self._busy("release"):
                    d = min(d, self._next["release"])
        elif self.phase is Phase.RUNNING and not self._busy("grant"):
            d = min(d, self._next["grant"])
        if self.stale_leases and self.idle and not self._busy("revoke"):
            d = min(d, self._next["revoke"])
        if self.suspended_until is not None:
            d = min(d, self.suspended_until)
        if self.phase is Phase.LEAVING:
            d = min(d, self._leave_deadline)
        if self._waiting_for_idle():
            d = min(d, self.now + IDLE_POLL_S)
        return d

    def status(self, now: float) -> dict:
        lord = self.lord
        return {
            "legion": self.legion,
            "backend": "etcd",
            "phase": self.phase.value,
            "name": self.name,
            "pid": self.pid,
            "valor": self.valor,
            "id": self.id,
            "lord": self.is_lord,
            "lord_since": self.lord_since if self.is_lord else None,
            "term": self.term if self.role in (Role.LORD, Role.ACTIONS) else None,
            "role": self.role.value,
            "becoming_lord": self.role is Role.ACTIONS,
            "suspended": self.suspended_until is not None,
            "lease": format(self.lease, "x") if self.lease is not None else None,
            "lease_ttl": self.lease_ttl if self.lease is not None else None,
            "renewed_ago": round(now - self.renewed_at, 3) if self.lease is not None else None,
            "steps_down_in": round(self.stop_by - now, 3) if self.role in (Role.LORD, Role.ACTIONS) else None,
            "etcd": {"endpoints": list(self.plan.endpoints), "reachable": self.reachable,
                     "last_error": self.last_error,
                     "last_error_ago": round(now - self.last_error_at, 3) if self.last_error_at is not None else None},
            "current_lord": (None if lord is None else
                             {"id": lord.id, "name": lord.name, "valor": lord.valor, "term": lord.term,
                              "lease": format(lord.lease, "x")}),
            "seen_ago": round(now - self.seen_at, 3) if self.seen_at is not None else None,
            "members": [{"id": m.id, "name": m.name, "pid": m.pid, "valor": m.valor, "arbiter": m.valor == 0,
                         "scroll": m.scroll} for m in (self.members or {}).values()],
        }

    # --- inputs ---------------------------------------------------------------------------------

    def start(self, now: float, now_wall: float) -> list[Effect]:
        if self.phase is not Phase.NEW:
            raise RuntimeError(f"legion {self.legion}: start() in phase {self.phase.value}")
        self.phase = Phase.RUNNING
        self.now = now
        out: list[Effect] = [Log(f"[legion-etcd] node {self.name} (pid {self.pid}) valor: {self.valor} id: {self.id} "
                                 f"joining Legion {self.legion} on etcd {','.join(self.plan.endpoints)} "
                                 f"(lease TTL {self.timing.ttl:g} s)")]
        if self.valor == 0:
            out.append(Log(f"[legion-etcd] valor 0: this node is an arbiter of Legion {self.legion} "
                           f"(it never becomes Lord)"))
        self._fire("setup", out)
        self._step(now, now_wall, out)
        return out

    def tick(self, now: float, now_wall: float) -> list[Effect]:
        if self.phase in (Phase.NEW, Phase.STOPPED):
            return []
        self.now = now
        out: list[Effect] = []
        self._step(now, now_wall, out)
        return out

    def reply(self, token: int, reply: Reply, now: float, now_wall: float) -> list[Effect]:
        """An etcd call finished (answer or failure)."""
        entry = self._inflight.pop(token, None)
        if entry is None or self.phase in (Phase.NEW, Phase.STOPPED):
            return []
        self.now = now
        kind, gen, sent_at, extra = entry
        out: list[Effect] = []
        self._note_reachability(reply, now, out)
        getattr(self, f"_on_{kind}")(reply, gen == self.gen, sent_at, extra, now, now_wall, out)
        self._step(now, now_wall, out)
        return out

    def actions_finished(self, token: int, failed: bool, now: float, now_wall: float) -> list[Effect]:
        if token != self.pending_lord:
            return []
        self.pending_lord = None
        self.now = now
        out: list[Effect] = []
        if self.phase is not Phase.RUNNING or self.role is not Role.ACTIONS:
            return out
        if failed and self.death_on_lord_error > 0:
            out.append(Log(f"[legion-etcd] suspending myself from Legion \"{self.legion}\" for "
                           f"{self.death_on_lord_error} seconds", "warning"))
            self.suspended_until = now + self.death_on_lord_error
            self.role = Role.STEPPING_DOWN      # release the key (no daemon ran) and leave the members
            self._next["release"] = now
        else:
            self._become_lord(now, now_wall, out)
        self._step(now, now_wall, out)
        return out

    def leave(self, now: float, now_wall: float, *, death_actions: bool) -> list[Effect]:
        """Stop (death actions) or reload: stop being lord, keep the lease until our legion
        daemons are gone, then revoke it (that deletes our keys at once)."""
        if self.phase is not Phase.RUNNING:
            self.phase = Phase.STOPPED
            return []
        self.now = now
        out: list[Effect] = []
        if death_actions:
            self._fire("death", out)
        if self.role is Role.LORD:
            out.append(LordChanged(False, now_wall))
        self.pending_lord = None
        self.role = Role.FOLLOWER
        self.phase = Phase.LEAVING
        self._leave_deadline = now + self.timing.ttl
        self._step(now, now_wall, out)
        return out

    # --- the step -------------------------------------------------------------------------------

    def _step(self, now: float, now_wall: float, out: list[Effect]) -> None:
        if self.phase in (Phase.NEW, Phase.STOPPED):
            return
        if self.lease is not None and now >= self.stop_by:
            ago = now - self.renewed_at
            self._lose_session(now, now_wall, out,
                               f"lease {self.lease:x} not renewed for {ago:.1f} s (TTL {self.lease_ttl:g} s)")
        if self.phase is Phase.LEAVING:
            self._leave_step(now, out)
            return
        if self.suspended_until is not None and now >= self.suspended_until:
            self.suspended_until = None
            out.append(Log(f"[legion-etcd] suspension from Legion \"{self.legion}\" is over, rejoining"))
            self.registered = False
            self._next["register"] = now
        if self.stale_leases and self.idle and not self._busy("revoke") and now >= self._next["revoke"]:
            self._revoke(min(self.stale_leases), now, out)
        if self.lease is None:
            if not self._busy("grant") and now >= self._next["grant"]:
                self._send("grant", "/v3/lease/grant", {"TTL": int(self.timing.ttl)}, now, out)
            return
        if not self._busy("keepalive") and now >= self._next["keepalive"]:
            self._send("keepalive", "/v3/lease/keepalive", {"ID": str(self.lease)}, now, out)
        if (not self.registered and self.suspended_until is None and not self._busy("register")
                and now >= self._next["register"]):
            self._send("register", "/v3/kv/put", {"key": b64(self.member_key), "value": b64(self.member_value),
                                                   "lease": str(self.lease)}, now, out)
        if (self.role is Role.STEPPING_DOWN and self.idle and not self._busy("release")
                and now >= self._next["release"]):
            self._release(now, out)
        if (self.registered or self.suspended_until is not None) and not self._busy("poll") and now >= self._next["poll"]:
            self._send("poll", "/v3/kv/txn", {"success": [
                {"request_range": {"key": b64(self.lord_key)}},
                {"request_range": {"key": b64(self.members_prefix), "range_end": b64(prefix_end(self.members_prefix))}},
            ]}, now, out)
            self._next["poll"] = now + self.timing.poll

    def _leave_step(self, now: float, out: list[Effect]) -> None:
        if now >= self._leave_deadline:
            out.append(Log(f"[legion-etcd] Legion {self.legion}: giving up on handing the lease back; "
                           f"etcd expires it within {self.timing.ttl:g} s", "warning"))
            self.phase = Phase.STOPPED
            return
        if self.lease is not None and not self._busy("keepalive") and now >= self._next["keepalive"]:
            self._send("keepalive", "/v3/lease/keepalive", {"ID": str(self.lease)}, now, out)
        if not self.idle:
            return          # our daemons still run: keep the lease (and the lord key) until they are gone
        if not self._leave_revoked:
            self._leave_revoked = True
            leases = sorted(self.stale_leases | ({self.lease} if self.lease is not None else set()))
            for lease in leases:
                self._revoke(lease, now, out)
        if not self._busy("revoke"):
            self.phase = Phase.STOPPED
            out.append(Log(f"[legion-etcd] node {self.name} left Legion {self.legion}"))

    # --- requests and answers -----------------------------------------------------------------------

    def _send(self, kind: str, path: str, body: dict, now: float, out: list[Effect], extra: dict | None = None) -> None:
        self._token += 1
        self._inflight[self._token] = (kind, self.gen, now, extra or {})
        out.append(Call(self._token, path, body))

    def _revoke(self, lease: int, now: float, out: list[Effect]) -> None:
        self._send("revoke", "/v3/lease/revoke", {"ID": str(lease)}, now, out, {"lease": lease})

    def _release(self, now: float, out: list[Effect]) -> None:
        body = {"compare": [{"key": b64(self.lord_key), "target": "VALUE", "result": "EQUAL",
                             "value": b64(self.lord_value)}],
                "success": [{"request_delete_range": {"key": b64(self.lord_key)}}]}
        if self.suspended_until is not None:        # leave the members too, so others go on without us
            body["success"].append({"request_delete_range": {"key": b64(self.member_key)}})
            body["failure"] = [{"request_delete_range": {"key": b64(self.member_key)}}]
        self._send("release", "/v3/kv/txn", body, now, out)

    def _note_reachability(self, reply: Reply, now: float, out: list[Effect]) -> None:
        if reply.transport:
            self.last_error, self.last_error_at = f"{reply.endpoint}: {reply.error}", now
            if self.reachable is not False or now - self._unreachable_logged >= UNREACHABLE_LOG_INTERVAL_S:
                out.append(Log(f"[legion-etcd] Legion {self.legion}: etcd unreachable: {self.last_error}", "warning"))
                self._unreachable_logged = now
            self.reachable = False
        else:
            if self.reachable is False:
                out.append(Log(f"[legion-etcd] Legion {self.legion}: etcd reachable again ({reply.endpoint})"))
            self.reachable = True
            if not reply.ok and reply.code != CODE_NOT_FOUND:
                error = f"{reply.endpoint}: {reply.error}"
                if error != self.last_error or now - self._error_logged >= UNREACHABLE_LOG_INTERVAL_S:
                    out.append(Log(f"[legion-etcd] Legion {self.legion}: etcd refused a request: {error}", "warning"))
                    self._error_logged = now
                self.last_error, self.last_error_at = error, now

    def _on_grant(self, reply: Reply, current: bool, sent_at: float, extra: dict, now: float, now_wall: float,
                  out: list[Effect]) -> None:
        if not reply.ok:
            self._next["grant"] = now + GRANT_RETRY_S
            return
        lease, ttl = _int(reply.data.get("ID")), _int(reply.data.get("TTL"))
        if self.lease is not None or self.phase is not Phase.RUNNING:
            if lease:
                self.stale_leases.add(lease)    # not needed any more: hand it back
            return
        if not lease or ttl <= 0:
            out.append(Log(f"[legion-etcd] Legion {self.legion}: etcd granted no usable lease ({reply.data})", "error"))
            self._next["grant"] = now + GRANT_RETRY_S
            return
        self.lease, self.lease_ttl, self.renewed_at = lease, min(self.timing.ttl, ttl), sent_at
        self.registered = False
        self._next["keepalive"] = sent_at + self.timing.keepalive
        self._next["register"] = now
        out.append(Log(f"[legion-etcd] Legion {self.legion}: lease {lease:x} granted (TTL {ttl} s)"))
        if now >= self.stop_by:
            self._lose_session(now, now_wall, out, "the lease grant took too long")

    def _on_keepalive(self, reply: Reply, current: bool, sent_at: float, extra: dict, now: float, now_wall: float,
                      out: list[Effect]) -> None:
        if not current or self.lease is None:
            return
        if reply.ok:
            ttl = _int(reply.data.get("TTL"))
            if ttl <= 0:
                self._lose_session(now, now_wall, out, f"etcd says lease {self.lease:x} has expired")
                return
            self.renewed_at = max(self.renewed_at, sent_at)
            self.lease_ttl = min(self.timing.ttl, ttl)
            self._next["keepalive"] = sent_at + self.timing.keepalive
        elif reply.code == CODE_NOT_FOUND:
            self._lose_session(now, now_wall, out, f"etcd says lease {self.lease:x} is gone ({reply.error})")
        else:
            self._next["keepalive"] = now + RETRY_S

    def _on_register(self, reply: Reply, current: bool, sent_at: float, extra: dict, now: float, now_wall: float,
                     out: list[Effect]) -> None:
        if not current or self.lease is None:
            return
        if reply.ok:
            self.registered = True
            self._next["poll"] = now
            self._first_take_at = now + self.timing.poll    # see who else is there before taking
            if not self.joined:
                self.joined = True
                self._fire("join", out)
        elif reply.code == CODE_NOT_FOUND:
            self._lose_session(now, now_wall, out, f"etcd says lease {self.lease:x} is gone ({reply.error})")
        else:
            self._next["register"] = now + RETRY_S

    def _on_revoke(self, reply: Reply, current: bool, sent_at: float, extra: dict, now: float, now_wall: float,
                   out: list[Effect]) -> None:
        lease = extra["lease"]
        if reply.ok or reply.code == CODE_NOT_FOUND or self.phase is Phase.LEAVING:
            self.stale_leases.discard(lease)
            if reply.ok and lease != self.lease:
                out.append(Log(f"[legion-etcd] Legion {self.legion}: old lease {lease:x} revoked"))
        else:
            self._next["revoke"] = now + RETRY_S

    def _on_release(self, reply: Reply, current: bool, sent_at: float, extra: dict, now: float, now_wall: float,
                    out: list[Effect]) -> None:
        if not current or self.role is not Role.STEPPING_DOWN:
            return
        if reply.ok:
            self.revision = max(self.revision, _int((reply.data.get("header") or {}).get("revision")))
            self.lord = None
            if reply.data.get("succeeded"):
                out.append(Log(f"[legion-etcd] Legion {self.legion}: lord key released (term {self.term})"))
            self.role = Role.FOLLOWER
            if self.suspended_until is not None:
                self.registered = False
            self._next["poll"] = now
        else:
            self._next["release"] = now + RETRY_S

    def _on_take(self, reply: Reply, current: bool, sent_at: float, extra: dict, now: float, now_wall: float,
                 out: list[Effect]) -> None:
        if not current or self.role is not Role.TAKING:
            return      # a late answer from an earlier session: a key it made is cleaned up as stale
        self.role = Role.FOLLOWER
        if not reply.ok:
            self._next["poll"] = now        # did it go through? the next poll tells (then we adopt it)
            return
        self.revision = max(self.revision, _int((reply.data.get("header") or {}).get("revision")))
        if reply.data.get("succeeded"):
            term = _int((reply.data.get("header") or {}).get("revision"))
            self.lord = LordKey(self.id, self.name, self.valor, self.lease or 0, term, self.lord_value)
            self._won(term, now, now_wall, out)
        else:
            responses = reply.data.get("responses") or []
            kvs = _range_kvs(responses[0]) if responses else []
            self.lord = parse_lord(kvs[0]) if kvs else None
            self._next["poll"] = now

    def _on_poll(self, reply: Reply, current: bool, sent_at: float, extra: dict, now: float, now_wall: float,
                 out: list[Effect]) -> None:
        if not reply.ok or not current:
            return
        revision = _int((reply.data.get("header") or {}).get("revision"))
        if revision < self.revision:
            return      # older than what our own take or release told us
        self.revision = revision
        responses = reply.data.get("responses") or []
        if len(responses) != 2:
            out.append(Log(f"[legion-etcd] Legion {self.legion}: unexpected answer from etcd: {reply.data}", "warning"))
            return
        lord_kvs, member_kvs = _range_kvs(responses[0]), _range_kvs(responses[1])
        members: dict[str, Member] = {}
        for kv in member_kvs:
            m = parse_member(kv)
            if m is not None:
                members[m.id] = m
        old = self.members or {}
        for ident in members.keys() - old.keys():
            if ident != self.id:
                m = members[ident]
                out.append(Log(f"[legion-etcd] {'node' if m.valor else 'arbiter'}: {m.name} (pid {m.pid}) "
                               f"valor: {m.valor} id: {m.id} joined Legion {self.legion}"))
                self._fire("node-joined", out)
        for ident in old.keys() - members.keys():
            if ident != self.id:
                m = old[ident]
                out.append(Log(f"[legion-etcd] {'node' if m.valor else 'arbiter'}: {m.name} (pid {m.pid}) "
                               f"valor: {m.valor} id: {m.id} left Legion {self.legion}"))
                self._fire("node-left", out)
        self.members = members
        self.lord = parse_lord(lord_kvs[0]) if lord_kvs else None
        self.seen_at = now
        self._decide(now, now_wall, out)

    # --- decisions ----------------------------------------------------------------------------------

    def _decide(self, now: float, now_wall: float, out: list[Effect]) -> None:
        if self.phase is not Phase.RUNNING or self.lease is None or self.members is None:
            return
        me = self.members.get(self.id)
        if self.registered and (me is None or me.lease != self.lease) and self.suspended_until is None:
            self.registered = False         # our member key is gone or older than our lease: put it again
            self._next["register"] = now
        lord = self.lord
        mine = lord is not None and lord.id == self.id and lord.lease == self.lease
        if lord is not None and lord.id == self.id and lord.lease != self.lease and lord.lease:
            self.stale_leases.add(lord.lease)       # a lord key from an earlier session of ours
        best = best_member(self.members.values())
        rightful = (best is not None and best.id == self.id and self.registered
                    and self.suspended_until is None)
        if self.role in (Role.LORD, Role.ACTIONS):
            if not mine:
                holder = "nobody" if lord is None else f"{lord.name} ({lord.id})"
                out.append(Log(f"[legion-etcd] Legion {self.legion}: the lord key is no longer ours (held by "
                               f"{holder}): stepping down at once", "error"))
                self._unlord(now_wall, out)
                self.role = Role.FOLLOWER
            elif not rightful and best is not None and best.id != self.id:
                out.append(Log(f"[legion-etcd] a new Lord (valor: {best.valor} id: {best.id} name: {best.name}) "
                               f"raised for Legion {self.legion}: stopping the legion daemons, then handing over"))
                self._unlord(now_wall, out)
                self.role = Role.STEPPING_DOWN
                self._next["release"] = now
        elif self.role is Role.FOLLOWER and mine:
            if rightful and self.idle:      # our take went through but its answer was lost
                self._won(lord.term, now, now_wall, out)
            else:
                self.role = Role.STEPPING_DOWN
                self._next["release"] = now
        elif self.role is Role.FOLLOWER:
            self._maybe_take(now, out)

    def _maybe_take(self, now: float, out: list[Effect]) -> None:
        if (self.phase is not Phase.RUNNING or self.lease is None or self.role is not Role.FOLLOWER
                or self.members is None or self.lord is not None or now < self._first_take_at
                or self._busy("take") or self._busy("release") or now >= self.stop_by
                or not self.idle):      # our daemons from an earlier lordship are still dying
            return
        best = best_member(self.members.values())
        me = self.members.get(self.id)
        if (best is None or best.id != self.id or me is None or me.lease != self.lease or not self.registered
                or self.suspended_until is not None):
            return
        self.role = Role.TAKING
        self._send("take", "/v3/kv/txn", {
            "compare": [{"key": b64(self.lord_key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(self.lord_key), "value": b64(self.lord_value),
                                         "lease": str(self.lease)}}],
            "failure": [{"request_range": {"key": b64(self.lord_key)}}],
        }, now, out)

    def _won(self, term: int, now: float, now_wall: float, out: list[Effect]) -> None:
        self.term = term
        self.role = Role.ACTIONS
        out.append(Log(f"[legion-etcd] attempting to become the Lord of the Legion {self.legion} (term {term})"))
        token = self._fire("lord", out)
        if token is None:
            self._become_lord(now, now_wall, out)
        else:
            self.pending_lord = token

    def _become_lord(self, now: float, now_wall: float, out: list[Effect]) -> None:
        if now >= self.stop_by:
            return      # the step that follows loses the session
        self.role = Role.LORD
        self.lord_since = now_wall
        out.append(Log(f"[legion-etcd] i am now the Lord of the Legion {self.legion} (term {self.term})"))
        out.append(LordChanged(True, now_wall))
        self._next["poll"] = now        # the world may have moved while the lord actions ran

    def _unlord(self, now_wall: float, out: list[Effect]) -> None:
        if self.role is Role.LORD:
            self._fire("unlord", out)
            out.append(LordChanged(False, now_wall))
        self.pending_lord = None

    def _lose_session(self, now: float, now_wall: float, out: list[Effect], why: str) -> None:
        was = self.role
        level = "error" if was in (Role.LORD, Role.ACTIONS, Role.STEPPING_DOWN) else "warning"
        action = (": stepping down now, before the lease can expire" if was is Role.LORD else "")
        out.append(Log(f"[legion-etcd] Legion {self.legion}: {why}{action}", level))
        self._unlord(now_wall, out)
        if self.lease is not None:
            self.stale_leases.add(self.lease)
        self.lease = None
        self.registered = False
        self.gen += 1
        self.role = Role.FOLLOWER
        self.lord = None
        self._first_take_at = math.inf
        self._next["grant"] = now
        self._next["revoke"] = now

    def _fire(self, event: str, out: list[Effect]) -> int | None:
        actions = self._actions.get(event, ())
        if not actions:
            return None
        self._token += 1
        out.append(RunActions(event, actions, self._token))
        return self._token


# --- the service --------------------------------------------------------------------------------

class EtcdLegionHost(LegionHost, Protocol):
    """LegionHost, plus what the etcd legions need: writability (non-blocking connect, TLS and
    writes), a way to know that a legion's daemons are gone, and a goodbye when a service that
    was stopped has handed its leases back."""

    def watch(self, fd: int, on_read: Callable[[], None] | None, on_write: Callable[[], None] | None) -> None:
        """Register (or change) the callbacks for ``fd``; None for both forgets it."""

    def legion_idle(self, legion: str) -> bool:
        """True when none of ``legion``'s daemons runs (or is stopping) on this node."""

    def finished(self) -> None:
        """A stopped service is done (its leases revoked, or given up on)."""


@dataclass
class _EtcdLegion:
    plan: EtcdLegionPlan
    election: EtcdElection
    client: EtcdClient | None = None


def tls_context(plan: EtcdLegionPlan) -> ssl.SSLContext | None:
    """The TLS context for an etcd legion with https endpoints (LegionError when a file is unusable)."""
    if not any(e.strip().startswith("https://") for e in plan.endpoints):
        return None
    try:
        context = ssl.create_default_context(cafile=plan.cacert)
        if plan.cert:
            context.load_cert_chain(plan.cert, plan.key)
    except (OSError, ssl.SSLError) as exc:
        raise LegionError(f"[legion-etcd] Legion {plan.name}: TLS files: "
                          f"{getattr(exc, 'strerror', None) or exc}") from exc
    return context


class EtcdLegionService:
    """All etcd legions of one master: clients, elections, actions, one timer."""

    def __init__(self, plans: Iterable[EtcdLegionPlan], settings: LegionSettings, host: EtcdLegionHost, *,
                 hostname: str, pid: int, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = lambda: str(uuid_module.uuid4()),
                 timing: Callable[[EtcdLegionPlan], Timing] | None = None):
        self.settings = settings
        self.host = host
        self.hostname = hostname
        self.pid = pid
        self.clock = clock
        self.wall = wall
        self.legions: dict[str, _EtcdLegion] = {}
        for plan in plans:
            election = EtcdElection(plan, name=hostname, pid=pid, member_id=new_id(),
                                    death_on_lord_error=settings.death_on_lord_error,
                                    timing=timing(plan) if timing else None)
            self.legions[plan.name] = _EtcdLegion(plan, election)
        self.running = False
        self.done = False
        self.actions_in_flight = 0
        self._queue: deque[Callable[[], None]] = deque()
        self._draining = False

    # --- host entry points ------------------------------------------------------------------------

    def start(self) -> None:
        if self.running or self.done:
            raise RuntimeError("etcd legion service already started")
        for lg in self.legions.values():
            context = tls_context(lg.plan)
            user, password = lg.plan.user, lg.plan.password
            lg.client = EtcdClient(lg.plan.endpoints, watch=self.host.watch, clock=self.clock,
                                   timeout=lg.election.timing.request_timeout, ssl_context=context,
                                   user=user, password=password)
            problems = lg.client.resolve()
            for problem in problems:
                self.host.log(f"[legion-etcd] Legion {lg.plan.name}: {problem}", "warning")
            if len(problems) == len(lg.plan.endpoints):
                for other in self.legions.values():
                    if other.client is not None:
                        other.client.close()
                raise LegionError(f"[legion-etcd] unable to activate legion {lg.plan.name}: no etcd endpoint resolves")
        self.running = True
        for lg in self.legions.values():
            self._post(lambda lg=lg: self._input(lg, lambda now, wall: lg.election.start(now, wall)))
        self._post(self._rearm)

    def on_timer(self) -> None:
        self._post(self._timer)

    def stop(self) -> None:
        """Shutdown: death actions; the lease is kept until this node's legion daemons are gone,
        then revoked (its keys vanish at once and another node can take over)."""
        self._post(lambda: self._leave(death_actions=True))

    def reload_stop(self) -> None:
        """Before a reload that changes the etcd legions: as stop, without death actions."""
        self._post(lambda: self._leave(death_actions=False))

    def flush(self, timeout: float) -> None:
        """At master exit: drive the last requests (the lease revocation) without the master's
        loop, for at most ``timeout`` seconds."""
        end = self.clock() + timeout
        while not self.done:
            self._post(self._timer)
            left = end - self.clock()
            if self.done or left <= 0:
                break
            busy = [lg.client for lg in self.legions.values() if lg.client is not None and lg.client.calls]
            if not busy:
                wait = min(left, max(0.0, self._next_deadline() - self.clock()), 0.05)
                time.sleep(wait)
                continue
            for client in busy:
                client.pump(min(left, 0.05))
        if not self.done:
            self._finish()

    def status(self) -> dict:
        now = self.clock()
        return {name: lg.election.status(now) for name, lg in self.legions.items()}

    def is_lord(self, legion: str) -> bool:
        lg = self.legions.get(legion)
        return bool(lg and lg.election.is_lord)

    def term(self, legion: str) -> int:
        """The fencing term of this node's lordship of ``legion`` (0 when it is not the lord)."""
        lg = self.legions.get(legion)
        if lg is None or not lg.election.is_lord:
            return 0
        return lg.election.term

    # --- internals ---------------------------------------------------------------------------------

    def _post(self, work: Callable[[], None]) -> None:
        self._queue.append(work)
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue:
                self._queue.popleft()()
        finally:
            self._draining = False

    def _input(self, lg: _EtcdLegion, feed: Callable[[float, float], list]) -> None:
        lg.election.idle = self.host.legion_idle(lg.plan.name)
        self._apply(lg, feed(self.clock(), self.wall()))

    def _next_deadline(self) -> float:
        deadline = math.inf
        for lg in self.legions.values():
            deadline = min(deadline, lg.election.next_deadline())
            if lg.client is not None:
                deadline = min(deadline, lg.client.next_deadline())
        return deadline

    def _rearm(self) -> None:
        if not self.running:
            return
        deadline = self._next_deadline()
        if deadline != math.inf:
            self.host.call_at(deadline)

    def _timer(self) -> None:
        if not self.running:
            return
        for lg in self.legions.values():
            if lg.client is not None:
                lg.client.expire(self.clock())
            if self.clock() >= lg.election.next_deadline():
                self._input(lg, lg.election.tick)
        self._check_done()
        self._rearm()

    def _leave(self, *, death_actions: bool) -> None:
        if not self.running:
            return
        for lg in self.legions.values():
            self._input(lg, lambda now, wall, lg=lg: lg.election.leave(now, wall, death_actions=death_actions))
        self._check_done()
        self._rearm()

    def _check_done(self) -> None:
        if self.running and all(lg.election.phase is Phase.STOPPED for lg in self.legions.values()):
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.running = False
        for lg in self.legions.values():
            if lg.client is not None:
                lg.client.close()
            lg.election.phase = Phase.STOPPED
        self.host.finished()

    def _apply(self, lg: _EtcdLegion, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, Call):
                self._call(lg, effect)
            elif isinstance(effect, Log):
                self.host.log(effect.text, effect.level)
            elif isinstance(effect, LordChanged):
                self.host.lord_changed(lg.plan.name, effect.is_lord, effect.since_wall)
            elif isinstance(effect, RunActions):
                self._run_actions(lg, effect)
            else:       # pragma: no cover - a new effect type without a handler
                raise TypeError(f"unknown legion effect {effect!r}")

    def _call(self, lg: _EtcdLegion, call: Call) -> None:
        def done(reply: Reply) -> None:
            self._post(lambda: self._answered(lg, call.token, reply))

        lg.client.call(call.path, call.body, done)

    def _answered(self, lg: _EtcdLegion, token: int, reply: Reply) -> None:
        if not self.running:
            return
        self._input(lg, lambda now, wall: lg.election.reply(token, reply, now, wall))
        self._check_done()
        self._rearm()

    def _run_actions(self, lg: _EtcdLegion, effect: RunActions) -> None:
        """The actions of one event one after the other, each after the previous one finished
        (as for UDP legions); then the election hears how it went."""
        legion = lg.plan.name
        env = {"NSATTACH_LEGION": legion, "NSATTACH_LEGION_EVENT": effect.event}
        if effect.event == "lord":
            env["NSATTACH_LEGION_TERM"] = str(lg.election.term)
        election = lg.election
        self.actions_in_flight += 1

        def finish(failed: bool) -> None:
            self.actions_in_flight -= 1
            if self.running:
                self._input(lg, lambda now, wall: election.actions_finished(effect.token, failed, now, wall))
                self._rearm()

        run_action_chain(self.host, legion, effect.event, effect.actions, env, tag="legion-etcd",
                         stop_on_error=effect.stop_on_error, post=self._post, on_finished=finish)
