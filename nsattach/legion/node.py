"""Legion sockets and the service that connects them to the pure election (uwsgi-spec §7.2, §7.6).

Nothing here owns an event loop or a thread: the host (the master's runtime, or a test) tells
:class:`LegionService` when a socket is readable and when the timer it asked for is due, and
runs the legion actions for it without blocking. That keeps the master single-threaded while
announcements keep their schedule during slow lord hooks (uWSGI ran hooks in its legion thread
and went silent meanwhile, Q-L10).

Socket rules follow uWSGI's ``bind_to_udp``: IPv4 UDP, SO_REUSEADDR, non-blocking, bound to

* ``:port`` -> 0.0.0.0:port;
* a multicast group (224-239.x.x.x) -> 0.0.0.0:port, joined on INADDR_ANY with
  IP_MULTICAST_LOOP = multicast-loop and IP_MULTICAST_TTL = multicast-ttl;
* ``255.255.255.255:port`` -> that address, with SO_BROADCAST;
* anything else -> that numeric IPv4 address.

Every announcement goes to every destination: the legion address itself for ``legion-mcast``,
plus each ``legion-node``. Receivers never look at the source address.

The host drives everything through :class:`LegionHost` (readers, one re-armable timer, actions
run without blocking, logs, Lord changes). Before each timer-driven election step the service
reads whatever is already queued on its sockets, so a peer's announcement that arrived together
with the deadline is never ignored by that step, whatever order the host runs timers and readers in.

Deliberate deviations from uWSGI:

* SO_BROADCAST and the multicast TTL/loop options are set on every legion socket, not only on
  broadcast/multicast-bound ones, so a ``legion-node`` that is a broadcast or multicast address
  works from a unicast-bound socket (uWSGI's sendto fails with EACCES there).
* Unix-socket legion addresses are not supported (Q-L11; the config layer rejects them).
* Undecodable datagrams are logged at most once per minute per legion, with a count of the
  ones dropped silently in between (uWSGI logs every one).
* Actions get ``NSATTACH_LEGION`` and ``NSATTACH_LEGION_EVENT`` in their environment.
"""

from __future__ import annotations

import math
import socket
import struct
import time
import uuid as uuid_module
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from nsattach.config.model import LegionActionPlan, LegionPlan, LegionSettings
from nsattach.errors import LegionError
from nsattach.legion.actions import run_action_chain
from nsattach.legion.ciphers import lookup_cipher
from nsattach.legion.crypto import LegionCipher
from nsattach.legion.election import Election, Log, LordChanged, RunActions, Send
from nsattach.legion.wire import PacketError, decode, encode

RECV_BUFFER = 65536                 # larger than MAX_DATAGRAM, so oversized datagrams are seen as such
RECV_BATCH = 256                    # datagrams per readable callback: a flood cannot starve the loop
BAD_PACKET_LOG_INTERVAL_S = 60.0


class LegionHost(Protocol):
    """What a LegionService needs from the program that runs it."""

    def call_at(self, when_monotonic: float) -> None:
        """Call ``service.on_timer()`` at or after that time; a new call replaces the old one."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...

    def run_action(self, legion: str, event: str, action: LegionActionPlan, env: dict[str, str],
                   on_done: Callable[[int | None], None]) -> None:
        """Run a ``cmd:``/``exec:`` action (``sh -c ARG``) without blocking, with ``env`` added to
        the master's environment; later call ``on_done(exit status)``, or ``on_done(None)`` if it
        could not be spawned. ``on_done`` may also be called before run_action returns."""

    def log(self, text: str, level: str = "info") -> None: ...

    def lord_changed(self, legion: str, lord: bool, since_wall: float) -> None: ...


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host or "0.0.0.0", int(port)


def _is_multicast(host: str) -> bool:
    try:
        return 224 <= int(host.split(".")[0]) <= 239
    except ValueError:
        return False


class LegionSocket:
    """A legion's UDP socket plus its destination list."""

    def __init__(self, plan: LegionPlan, settings: LegionSettings):
        host, port = _split_address(plan.address)
        self.address = (host, port)
        self.destinations: list[tuple[str, int]] = []
        if plan.multicast:
            self.destinations.append((host, port))
        for node in plan.nodes:
            self.destinations.append(_split_address(node.address))
        self.messages: list[str] = []       # things worth logging once the host can
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s = self.sock
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if settings.multicast_loop else 0)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, settings.multicast_ttl or 1)
            if _is_multicast(host):
                s.bind(("0.0.0.0", port))
                membership = struct.pack("4s4s", socket.inet_aton(host), socket.inet_aton("0.0.0.0"))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
                self.messages.append(f"[uwsgi-mcast] joining multicast group: {host}:{port}")
            else:
                s.bind((host, port))
            s.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> list[tuple[tuple[str, int], OSError]]:
        """Send to every destination; return the failures (one dead peer must not stop the rest)."""
        failures = []
        for dest in self.destinations:
            try:
                self.sock.sendto(data, dest)
            except OSError as exc:
                failures.append((dest, exc))
        return failures

    def recv(self, limit: int = RECV_BATCH) -> list[bytes]:
        """Drain up to ``limit`` datagrams. Raises OSError only if the first read fails."""
        datagrams: list[bytes] = []
        while len(datagrams) < limit:
            try:
                datagrams.append(self.sock.recv(RECV_BUFFER))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                if not datagrams:
                    raise
                break
        return datagrams

    def close(self) -> None:
        self.sock.close()


@dataclass
class _Legion:
    plan: LegionPlan
    cipher: LegionCipher
    sock: LegionSocket | None = None
    election: Election | None = None
    bad_logged_at: float = -math.inf
    bad_suppressed: int = 0
    readers: list[int] = field(default_factory=list)
    send_errors: dict = field(default_factory=dict)     # destination -> error last reported


class LegionService:
    """All legions of one master: sockets, elections, actions, timers."""

    def __init__(self, plans: Iterable[LegionPlan], settings: LegionSettings, host: LegionHost, *,
                 hostname: str, pid: int, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 new_uuid: Callable[[], str] = lambda: str(uuid_module.uuid4())):
        self.settings = settings
        self.host = host
        self.hostname = hostname
        self.pid = pid
        self.clock = clock
        self.wall = wall
        self.new_uuid = new_uuid
        # ciphers first: an unusable cipher is a configuration problem, found before any bind
        self.legions = {p.name: _Legion(p, LegionCipher(lookup_cipher(p.cipher), p.secret, p.iv)) for p in plans}
        self.running = False
        self.actions_in_flight = 0
        self._queue: deque[Callable[[], None]] = deque()
        self._draining = False

    # --- host entry points --------------------------------------------------------------------

    def start(self) -> None:
        """Bind every socket (all or nothing), then start the elections: setup actions run and
        the first announcement goes out."""
        if self.running:
            raise RuntimeError("legion service already started")
        opened: list[LegionSocket] = []
        try:
            for lg in self.legions.values():
                try:
                    lg.sock = LegionSocket(lg.plan, self.settings)
                except OSError as exc:
                    raise LegionError(f"[uwsgi-legion] unable to activate legion {lg.plan.name}: "
                                      f"{lg.plan.address}: {exc.strerror or exc}") from exc
                opened.append(lg.sock)
        except LegionError:
            for sock in opened:
                sock.close()
            for lg in self.legions.values():
                lg.sock = None
            raise
        self.running = True
        for lg in self.legions.values():
            for message in lg.sock.messages:
                self.host.log(message)
            fd = lg.sock.fileno()
            self.host.add_reader(fd, lambda lg=lg: self._post(lambda: self._readable(lg)))
            lg.readers.append(fd)
            lg.election = Election(lg.plan, self.settings, name=self.hostname, pid=self.pid, uuid=self.new_uuid())
        for lg in self.legions.values():
            self._post(lambda lg=lg: self._apply(lg, lg.election.start(self.clock(), self.wall())))
        self._post(self._rearm)

    def on_timer(self) -> None:
        self._post(self._timer)

    def stop(self) -> None:
        """Shutdown: death actions (started, not awaited: see ``actions_in_flight``) and the dead
        announcement, then the sockets close."""
        self._post(lambda: self._shutdown(reload=False))

    def reload_stop(self) -> None:
        """Before a reload: the dead announcement only, then the sockets close."""
        self._post(lambda: self._shutdown(reload=True))

    def status(self) -> dict:
        return {name: (lg.election.status() if lg.election else {"legion": name, "phase": "new"})
                for name, lg in self.legions.items()}

    def is_lord(self, legion: str) -> bool:
        lg = self.legions.get(legion)
        return bool(lg and lg.election and lg.election.is_lord)

    def term(self, legion: str) -> int:
        """What legion daemons get as NSATTACH_LEGION_TERM: for a UDP legion the wall-clock
        second this node became lord (0 when it is not). Unlike an etcd legion's term it is not
        ordered across nodes (clocks differ, and two lords are possible)."""
        lg = self.legions.get(legion)
        if not (lg and lg.election and lg.election.is_lord):
            return 0
        return int(lg.election.lord_since)

    # --- internals ---------------------------------------------------------------------------

    def _post(self, work: Callable[[], None]) -> None:
        """Run ``work`` after whatever is running now. Action callbacks may arrive synchronously
        from inside host.run_action; queueing keeps every election input strictly sequential and
        the stack flat."""
        self._queue.append(work)
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue:
                self._queue.popleft()()
        finally:
            self._draining = False

    def _rearm(self) -> None:
        if not self.running:
            return
        deadline = min((lg.election.next_deadline() for lg in self.legions.values() if lg.election),
                       default=math.inf)
        if deadline != math.inf:
            self.host.call_at(deadline)

    def _timer(self) -> None:
        if not self.running:
            return
        for lg in self.legions.values():
            # Read what is already queued before deciding anything: a peer's announcement that
            # arrived together with our deadline must not be missed by this election step
            # (a host loop may run timers before readers).
            self._receive(lg)
            now = self.clock()
            if now >= lg.election.next_deadline():
                self._apply(lg, lg.election.tick(now, self.wall()))
        self._rearm()

    def _readable(self, lg: _Legion) -> None:
        if not self.running or lg.sock is None:
            return
        self._receive(lg)
        # a flood must not delay the schedule even if the host favours readable sockets
        now = self.clock()
        if now >= lg.election.next_deadline():
            self._apply(lg, lg.election.tick(now, self.wall()))
        self._rearm()

    def _receive(self, lg: _Legion) -> None:
        if lg.sock is None:
            return
        try:
            datagrams = lg.sock.recv()
        except OSError as exc:
            self.host.log(f"[uwsgi-legion] read(): {exc.strerror or exc}", "warning")
            return
        for data in datagrams:
            try:
                ann = decode(data, lg.cipher)
            except PacketError as exc:
                self._bad_packet(lg, exc.reason)
                continue
            self._apply(lg, lg.election.packet(ann, self.clock(), self.wall()))

    def _bad_packet(self, lg: _Legion, reason: str) -> None:
        now = self.clock()
        if now - lg.bad_logged_at < BAD_PACKET_LOG_INTERVAL_S:
            lg.bad_suppressed += 1
            return
        more = f" ({lg.bad_suppressed} more dropped since the last report)" if lg.bad_suppressed else ""
        self.host.log(f"[uwsgi-legion] Legion {lg.plan.name}: dropped datagram: {reason}{more}", "warning")
        lg.bad_logged_at, lg.bad_suppressed = now, 0

    def _shutdown(self, *, reload: bool) -> None:
        if not self.running:
            return
        for lg in self.legions.values():
            now, now_wall = self.clock(), self.wall()
            self._apply(lg, lg.election.reload(now, now_wall) if reload else lg.election.stop(now, now_wall))
        self.running = False
        for lg in self.legions.values():
            for fd in lg.readers:
                self.host.remove_reader(fd)
            lg.readers.clear()
            if lg.sock is not None:
                lg.sock.close()
                lg.sock = None

    def _apply(self, lg: _Legion, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._send(lg, effect)
            elif isinstance(effect, Log):
                self.host.log(effect.text, effect.level)
            elif isinstance(effect, LordChanged):
                self.host.lord_changed(lg.plan.name, effect.is_lord, effect.since_wall)
            elif isinstance(effect, RunActions):
                self._run_actions(lg, effect)
            else:       # pragma: no cover - a new effect type without a handler
                raise TypeError(f"unknown legion effect {effect!r}")

    def _send(self, lg: _Legion, effect: Send) -> None:
        if lg.sock is None:
            return
        try:
            data = encode(effect.announcement, lg.cipher)
        except ValueError as exc:
            self.host.log(f"[uwsgi-legion] cannot build the announcement for Legion {lg.plan.name}: {exc}", "error")
            return
        failing = {}
        for dest, exc in lg.sock.send(data):
            failing[dest] = exc.strerror or str(exc)
            # once per destination and error, not every announcement: a node that is down
            # for an hour must not fill the log
            if lg.send_errors.get(dest) != failing[dest]:
                self.host.log(f"[uwsgi-legion] sendto(): {failing[dest]} ({dest[0]}:{dest[1]})", "warning")
        for dest in set(lg.send_errors) - set(failing):
            self.host.log(f"[uwsgi-legion] sending to {dest[0]}:{dest[1]} works again")
        lg.send_errors = failing

    def _run_actions(self, lg: _Legion, effect: RunActions) -> None:
        """Run the actions one after the other (uWSGI's order), each only after the previous
        one finished; then tell the election how it went."""
        legion = lg.plan.name
        env = {"NSATTACH_LEGION": legion, "NSATTACH_LEGION_EVENT": effect.event}
        election = lg.election
        self.actions_in_flight += 1

        def finish(failed: bool) -> None:
            self.actions_in_flight -= 1
            self._apply(lg, election.actions_finished(effect.token, failed, self.clock(), self.wall()))
            self._rearm()

        run_action_chain(self.host, legion, effect.event, effect.actions, env, tag="uwsgi-legion",
                         stop_on_error=effect.stop_on_error, post=self._post, on_finished=finish)
