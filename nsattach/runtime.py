"""Wiring: the event loop, the pure core, and the system edges that carry out its effects.

The runtime turns kernel notifications (a pidfd became readable, SIGCHLD, a signal, a timer)
into core events, and the core's effects into system calls. Events produced while effects
are carried out (a spawn's result, a pidfile's content) are queued and handled in order, so
the core always sees one event at a time.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import resource
import select
import signal
import time

from nsattach.config.model import DaemonKind, Plan
from nsattach.control.server import ControlServer, ControlSocketError, bind_control_socket
from nsattach.core import effects as fx
from nsattach.core import events as ev
from nsattach.core.shellcmd import shell_argv
from nsattach.core.supervisor import STOP_GRACE_S, Phase, Supervisor
from nsattach.errors import EXIT_JAIL_REBUILD, ConfigError, SetupError, SpawnError
from nsattach.log import Logger, open_logto
from nsattach.system import linux, pidfile, procfs
from nsattach.system.cgroup import Cgroups, instance_name
from nsattach.system.loop import Loop
from nsattach.system.notify import Notifier
from nsattach.system.output import Capture, FileSink, LogSink
from nsattach.system.spawn import SpawnRequest, daemon_env, spawn

STOP_SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGQUIT: "SIGQUIT"}
TOUCH_POLL_S = 1.0
HOUSEKEEPING_S = 1.0      # control-connection deadlines and pending operator requests


class Runtime:
    def __init__(self, plan: Plan, reload_plan=None, log: Logger | None = None,
                 on_started=None, on_exit=None, check_reload=None, on_reload=None, control_sock=None):
        self.plan = plan
        self.reload_plan = reload_plan        # () -> Plan, raises ConfigError
        self.check_reload = check_reload      # (Plan) -> list[ConfigProblem]: what a reload cannot apply
        self.on_started = on_started          # () -> None, after every daemon was started (master-start hooks)
        self.on_exit = on_exit                # () -> None, when the master ends (atexit hooks)
        # (Plan) -> bool: True when the new plan cannot be applied in place (the jail's own
        # options changed): the master then stops and run() returns EXIT_JAIL_REBUILD
        self.on_reload = on_reload
        self.control_sock = control_sock      # a control socket bound early (before a jail or a uid drop)
        self.rebuild = False
        self.log = log or Logger()
        self.loop = Loop()
        self.core = Supervisor(plan, master_ids=(os.getuid(), os.getgid()))
        self.queue: collections.deque[ev.Event] = collections.deque()
        self.pidfds: dict[int, int] = {}      # watched pid -> pidfd
        self.touch: dict[str, dict[str, tuple[float, bool]]] = {}   # owner -> path -> (mtime, exists)
        self.exit_status: int | None = None
        self.started_at = time.monotonic()
        self.control: ControlServer | None = None
        self.control_ino: int | None = None
        self.notifier = Notifier()
        self.captures: dict[int, Capture] = {}        # pipe read fd -> capture
        self.sinks: dict[str, FileSink] = {}          # per-daemon log file path -> sink
        self.waiters: list = []                       # operator requests waiting for daemons
        self.last_reload: tuple[bool, list[str]] | None = None
        self.fifo_fd = -1
        self.fifo_slot = 0
        self.stopping = False
        self.stop_began: float | None = None
        self._draining = False
        self.legions: list = []                       # legion services (UDP, etcd) of the current plan
        self.legions_leaving: list = []               # etcd services handing their leases back
        self.legion_serial = 0
        self.cgroups = None                           # system.cgroup.Cgroups, when the kernel offers one
        self.lock_fd = -1                             # flock held for the master's whole life
        self.lock_path = ""
        self.action_children: dict[int, object] = {}  # pid of a running legion action -> on_done

    # -- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
        plan = self.plan
        # the pidfile, chdir, logto and the first env= were done by the start-up sequence
        # (startup.py), in uWSGI's order; the runtime plan it passes no longer carries them
        self._raise_fd_limit()
        linux.set_child_subreaper()
        self._setup_cgroups(plan)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if self.control_sock is not None:
            self._serve_control(self.control_sock, plan.master.control_group)
        elif plan.master.control_socket:
            self._open_control(plan.master.control_socket, plan.master.control_group)
        if plan.master.master_fifo:
            self._open_fifo(0)
        self.loop.handle_signals([*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2],
                                 self._on_signal, urgent=STOP_SIGNALS)
        self.log(f"nsattach master (pid: {os.getpid()}) supervising {len(plan.daemons)} daemon(s)")

    def _open_control(self, path: str, gid: int | None) -> None:
        self._serve_control(open_control_socket(path, gid), gid)
        self.control_ino = os.stat(path).st_ino        # ours to remove at exit

    def _serve_control(self, sock, gid: int | None) -> None:
        from nsattach.control.handler import handle_request

        self.control = ControlServer(self.loop, sock, lambda req, conn: handle_request(self, req, conn), self.log,
                                     allowed_gid=gid, on_connect=self.arm_housekeeping)

    def arm_housekeeping(self) -> None:
        """A once-a-second check of control deadlines, armed only while a connection or an
        operator request is pending: an idle master has no timer to wake it."""
        if not self.loop.has_timer(("", "housekeeping")):
            self.loop.call_at(time.monotonic() + HOUSEKEEPING_S, ("", "housekeeping"))

    def _close_control(self) -> None:
        if self.control is None:
            return
        self.control.close()
        self.control = None
        path = self.plan.master.control_socket
        try:
            if path and self.control_ino is not None and os.stat(path).st_ino == self.control_ino:
                os.unlink(path)
        except OSError:
            pass

    # -- master FIFO (uWSGI-compatible commands) ---------------------------------------------

    def _open_fifo(self, slot: int) -> None:
        paths = self.plan.master.master_fifo
        if slot >= len(paths):
            self.log(f"master fifo: no slot {slot}", "warning")
            return
        if self.fifo_fd >= 0:
            self.loop.remove_reader(self.fifo_fd)
            os.close(self.fifo_fd)
            self.fifo_fd = -1
        path = paths[slot]
        try:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.mkfifo(path, 0o600)
            # O_RDWR: the fifo never reports end-of-file when a writer goes away
            self.fifo_fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise SetupError(f"master fifo {path}: {exc.strerror}") from None
        self.fifo_slot = slot
        self.loop.add_reader(self.fifo_fd, self._on_fifo)

    def _on_fifo(self) -> None:
        try:
            data = os.read(self.fifo_fd, 64)
        except BlockingIOError:
            return
        now = time.monotonic()
        for byte in data:
            cmd = chr(byte)
            if cmd in "rR":
                self.post(ev.ReloadRequested(now))
            elif cmd in "qQ":
                self.request_stop(now, "master fifo")
            elif cmd == "s":
                self._log_status()
            elif cmd == "P" and self.plan.master.pidfile:
                pidfile.write_pid(self.plan.master.pidfile, os.getpid())
            elif cmd in "lL":
                self.reopen_logs()
            elif cmd.isdigit():
                self._open_fifo(int(cmd))
                self.log(f"active master fifo is now {self.plan.master.master_fifo[self.fifo_slot]}")
                break
        self.drain()

    def _setup_cgroups(self, plan: Plan) -> None:
        """One cgroup per dumb or legion daemon (see system/cgroup.py); first, whatever a
        master of this configuration killed with SIGKILL left in them is stopped."""
        if os.geteuid() != 0:
            return
        instance = instance_name(plan.config_files)
        self.cgroups = Cgroups.detect(instance)
        if self.cgroups is None:
            self.log("no cgroup hierarchy: a daemon's leftovers are found through its session only", "warning")
            return
        # the leftovers below are killed: make sure they are not a live master's daemons
        os.makedirs("/run/nsattach", mode=0o755, exist_ok=True)
        self.lock_path = f"/run/nsattach/{instance}.lock"
        self._take_lock(self.lock_path)
        for name, pids in self.cgroups.leftovers().items():
            self.log(f"found {len(pids)} process(es) left in the cgroup of daemon {name} by an earlier "
                     f"nsattach (pids: {' '.join(map(str, pids[:20]))}): killing them", "warning")
            if not self.cgroups.sweep(name):
                self.log(f"the cgroup of daemon {name} could not be emptied", "error")
            self.cgroups.remove(name)

    def _take_lock(self, path: str) -> None:
        """flock the instance's lock file. The file is removed at exit, so a lock taken on a
        file that was unlinked meanwhile is worthless: check the inode, try again once."""
        for _ in range(2):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SetupError(f"another nsattach runs this configuration (it holds {path}): "
                                 "refusing to start the same daemons twice") from None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    self.lock_fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)
        raise SetupError(f"could not take the lock {path}: it keeps being replaced")

    def _release_lock(self) -> None:
        if self.lock_fd >= 0:
            try:
                os.unlink(self.lock_path)      # still holding it: nobody can be in between
            except OSError:
                pass
            os.close(self.lock_fd)
            self.lock_fd = -1

    def _in_cgroup(self, d) -> bool:
        return self.cgroups is not None and (d.kind is DaemonKind.DUMB or d.legion is not None)

    def _apply_env(self, plan: Plan) -> None:
        for key, value in plan.master.env:
            os.environ[key] = value
        for key in plan.master.unenv:
            os.environ.pop(key, None)

    @staticmethod
    def _raise_fd_limit() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def run(self) -> int:
        self.start()
        try:
            self._start_legions(self.plan)
            self.load_held()
            self.post(ev.MasterStarted(time.monotonic()))
            self.drain()
            if self.on_started is not None and self.exit_status is None:
                self.on_started()
            if self.exit_status is None:
                self.notifier.ready(self.summary())
                if self.notifier.watchdog_s:
                    self.loop.call_at(time.monotonic(), ("", "watchdog"))
                self.loop.run(self._on_timer)
        finally:
            self.finish()
        if self.rebuild:
            return EXIT_JAIL_REBUILD
        return self.exit_status or 0

    def _sweep_cgroups(self) -> None:
        """At exit nothing of a dumb or legion daemon may stay behind, whatever it forked."""
        if self.cgroups is None:
            return
        for name, d in self.core.daemons.items():
            if self._in_cgroup(d.plan):
                left = self.cgroups.members(name)
                if left:
                    self.log(f"killing {len(left)} process(es) left in the cgroup of {name} "
                             f"(pids: {' '.join(map(str, left[:20]))}) [{name}]", "warning")
                    self.cgroups.sweep(name)
                self.cgroups.remove(name)
        self.cgroups.remove_instance()

    # -- operator-stopped daemons survive a restart of nsattach (anchors P7) ----------------------

    def _held_path(self) -> str:
        return f"/run/nsattach/{instance_name(self.plan.config_files)}.held"

    def load_held(self) -> None:
        try:
            with open(self._held_path()) as f:
                names = json.load(f)
        except (OSError, ValueError):
            return
        if not isinstance(names, list):
            return
        held = {n for n in names if isinstance(n, str) and n in self.core.daemons}
        for name in sorted(held):
            self.log(f"{name} stays stopped: an operator stopped it (nsattach start {name} to start it) [{name}]")
        self.core.held |= held

    def save_held(self) -> None:
        path = self._held_path()
        try:
            if not self.core.held:
                if os.path.exists(path):
                    os.unlink(path)
                return
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(sorted(self.core.held), f)
            os.replace(tmp, path)
        except OSError as exc:
            self.log(f"cannot record the operator-stopped daemons in {path}: {exc.strerror}", "warning")

    def summary(self) -> str:
        """One line for systemd's STATUS=: how many daemons are in which state."""
        counts = collections.Counter(r["state"] for r in self.core.status(time.monotonic()))
        parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return f"{len(self.core.daemons)} daemon(s): {parts or 'none'}"

    def _log_status(self) -> None:
        for row in self.core.status(time.monotonic()):
            self.log(f"status: {row['name']} {row['state']} pid={row['pid']} respawns={row['respawns']}")

    def reopen_logs(self) -> None:
        if self.plan.master.logto:
            open_logto(self.plan.master.logto)
        for sink in self.sinks.values():
            try:
                sink.reopen()
            except OSError as exc:
                self.log(f"reopening {sink.path}: {exc.strerror}", "error")
        self.log("log files reopened")

    def request_stop(self, now: float, why: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_began = now
            self.notifier.stopping()
        self.post(ev.StopRequested(now, why))

    def stop_pending(self) -> bool:
        """A stop was asked for, even one the loop has not seen yet (a hook is running)."""
        return self.stopping or self.loop.urgent_seen

    def stop_deadline(self) -> float:
        """When a stop must be over: reload-mercy + 1 s after it began (or from now)."""
        began = self.stop_began if self.stop_began is not None else time.monotonic()
        return began + self.plan.master.reload_mercy + STOP_GRACE_S

    def finish(self) -> None:
        self._stop_legions(reload=False)
        self._sweep_cgroups()
        self._release_lock()
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()
        for capture in list(self.captures.values()):
            self._drain_capture(capture)
        for sink in self.sinks.values():
            sink.close()
        self._close_control()
        if self.fifo_fd >= 0:
            os.close(self.fifo_fd)
            self.fifo_fd = -1
        self.notifier.close()
        self.loop.close()
        if self.on_exit is not None:
            self.on_exit()
        self.log("goodbye to nsattach.")

    # -- events in --------------------------------------------------------------------------

    def post(self, event: ev.Event) -> None:
        self.queue.append(event)

    def drain(self) -> None:
        if self._draining:
            return       # called back from inside an effect: the running drain takes the events
        self._draining = True
        try:
            self._drain()
        finally:
            self._draining = False

    def _drain(self) -> None:
        while self.queue and self.exit_status is None:
            event = self.queue.popleft()
            for effect in self.core.handle(event):
                self.execute(effect)
                if self.exit_status is not None:
                    return
        if self.waiters:
            from nsattach.control.handler import check_waiters

            check_waiters(self)
        if self.legions and self.core.phase in (Phase.STOPPING, Phase.DONE):
            self._stop_legions(reload=False)      # announce the death while the daemons stop

    # -- legion ------------------------------------------------------------------------------

    def _start_legions(self, plan: Plan, kinds: tuple[str, ...] = ("udp", "etcd")) -> None:
        import socket

        from nsattach.errors import LegionError

        services = []
        if "udp" in kinds and plan.legions:
            from nsattach.legion.node import LegionService

            host = self._legion_host("udp")
            services.append(LegionService(plan.legions, plan.legion_settings, host,
                                          hostname=socket.gethostname(), pid=os.getpid()))
        if "etcd" in kinds and plan.etcd_legions:
            from nsattach.legion.etcd import EtcdLegionService

            host = self._legion_host("etcd")
            services.append(EtcdLegionService(plan.etcd_legions, plan.legion_settings, host,
                                              hostname=socket.gethostname(), pid=os.getpid()))
        for service in services:
            service.host.service = service
            try:
                service.start()
            except LegionError as exc:
                raise SetupError(str(exc)) from None
            self.legions.append(service)

    def _legion_host(self, kind: str) -> "_LegionHost":
        self.legion_serial += 1
        return _LegionHost(self, f"legion-{kind}-{self.legion_serial}")

    def _stop_legions(self, reload: bool, kinds: tuple[str, ...] = ("udp", "etcd")) -> None:
        """Stop the legion services of ``kinds``. A UDP service is gone at once (its death
        announcement is sent); an etcd service keeps its lease until this node's legion daemons
        are gone, then revokes it, so it stays on the loop (``legions_leaving``) until then. At
        exit (the loop has ended, the daemons are gone) the leaving ones get a bounded last
        chance to revoke their leases."""
        from nsattach.legion.etcd import EtcdLegionService

        for service in [s for s in self.legions if _legion_kind(s) in kinds]:
            self.legions.remove(service)
            if isinstance(service, EtcdLegionService):
                self.legions_leaving.append(service)
            else:
                self.loop.cancel(("", service.host.key))
            if reload:
                service.reload_stop()
            else:
                service.stop()
        if self.core.phase is Phase.DONE or self.exit_status is not None:
            for service in list(self.legions_leaving):
                service.flush(service_flush_s(service))
                self._legion_finished(service)

    def _legion_finished(self, service) -> None:
        if service in self.legions_leaving:
            self.legions_leaving.remove(service)
        self.loop.cancel(("", service.host.key))

    def _legion_timer(self, key: str) -> None:
        for service in (*self.legions, *self.legions_leaving):
            if service.host.key == key:
                service.on_timer()
                return

    def _legion_service(self, legion: str):
        for service in self.legions:
            if legion in service.legions:
                return service
        return None

    def _reconfigure_legions(self, old: Plan, new: Plan) -> None:
        """A reload keeps the legion nodes as they are unless their configuration changed;
        then the old identity leaves (UDP: announces its death; etcd: hands its lease back once
        its daemons are gone) and a new one (new uuid) joins. UDP and etcd legions are
        compared (and restarted) separately."""
        kinds = []
        if old.legions != new.legions or old.legion_settings != new.legion_settings:
            kinds.append("udp")
        if old.etcd_legions != new.etcd_legions or (
                old.etcd_legions and old.legion_settings.death_on_lord_error != new.legion_settings.death_on_lord_error):
            kinds.append("etcd")
        if not kinds:
            return
        names = set()
        if "udp" in kinds:
            names |= {lg.name for lg in old.legions}
        if "etcd" in kinds:
            names |= {lg.name for lg in old.etcd_legions}
        was_lord = [legion for legion in self.core.lords if legion in names]
        self._stop_legions(reload=True, kinds=tuple(kinds))
        now = time.monotonic()
        for legion in was_lord:
            self.post(ev.LordChanged(now, legion, False))
        self._start_legions(new, tuple(kinds))

    def _on_action_exit(self, pid: int, status: int) -> None:
        on_done = self.action_children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        on_done(code if code >= 0 else 128 - code)     # killed by a signal: a failure

    def execute_all(self, effects) -> None:
        """Carry out effects that did not come from an event (operator commands), then drain."""
        for effect in effects:
            self.execute(effect)
            if self.exit_status is not None:
                return
        self.drain()

    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if signum == signal.SIGCHLD:
            self._reap(now)
        elif signum in STOP_SIGNALS:
            self.request_stop(now, STOP_SIGNALS[signum])
        elif signum == signal.SIGHUP:
            self.post(ev.ReloadRequested(now))
        elif signum == signal.SIGUSR1:
            self._log_status()
        elif signum == signal.SIGUSR2:
            self.reopen_logs()
        self.drain()

    def _reap(self, now: float) -> None:
        for pid, status in linux.reap_children():
            if pid in self.action_children:
                self._on_action_exit(pid, status)
                continue
            if pid in self.pidfds:
                self._forget(pid)
            self.post(ev.ProcessExited(now, pid, status))

    def _on_pidfd(self, pid: int) -> None:
        if pid not in self.pidfds:
            return
        self._forget(pid)
        status = None
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped == 0:
                status = None
        except ChildProcessError:
            pass
        self.post(ev.ProcessExited(time.monotonic(), pid, status))
        self.drain()

    def _on_timer(self, key: tuple) -> None:
        name, what = key
        if what == "touch-poll":
            self._poll_touch()
        elif name == "" and what.startswith("legion-"):
            self._legion_timer(what)
        elif name == "" and what == "housekeeping":
            from nsattach.control.handler import check_waiters

            if self.control is not None:
                self.control.expire()
            check_waiters(self)
            if self.waiters or (self.control is not None and self.control.connections):
                self.arm_housekeeping()
        elif name == "" and what == "watchdog":
            self.notifier.watchdog()
            self.loop.call_at(time.monotonic() + self.notifier.watchdog_s / 2, ("", "watchdog"))
        else:
            self.post(ev.TimerFired(time.monotonic(), name, what))
        self.drain()

    # -- effects out ------------------------------------------------------------------------

    def execute(self, effect: fx.Effect) -> None:
        getattr(self, "_do_" + type(effect).__name__)(effect)

    def _do_Log(self, e: fx.Log) -> None:
        self.log(e.text, e.level)

    def _do_Spawn(self, e: fx.Spawn) -> None:
        d = self.core.daemons[e.name].plan
        now = time.monotonic()
        try:
            read_fd, write_fd = self._output_fds(d)
        except OSError as exc:
            self.post(ev.SpawnFailed(now, e.name, f"output {d.output}: {exc.strerror}"))
            return
        env = daemon_env(os.environ, d.identity)
        if d.legion is not None:
            # so a daemon can tell its legion and since when this node leads it (fencing)
            env["NSATTACH_LEGION"] = d.legion
            env["NSATTACH_LEGION_LORD_SINCE"] = str(int(self.core.lords.get(d.legion, 0)))
            service = self._legion_service(d.legion)
            # the fencing term: only grows from one lordship to the next (etcd: the lord key's revision)
            env["NSATTACH_LEGION_TERM"] = str(service.term(d.legion) if service is not None else 0)
        cgroup_fd = None
        if self._in_cgroup(d):
            try:
                cgroup_fd = self.cgroups.procs_fd(d.name)
            except OSError as exc:
                self.log(f"cgroup for {d.name}: {exc.strerror}; tracking it by its session only", "warning")
        request = SpawnRequest(
            argv=tuple(shell_argv(self.plan.master.binsh, d.command)),
            env=env,
            cwd=d.chdir,
            identity=d.identity,
            stdin_devnull=not d.honour_stdin,
            pdeathsig=signal.SIGKILL if d.kind is DaemonKind.DUMB else None,
            daemonize_pidfile=d.pidfile if d.kind is DaemonKind.SMART2 else None,
            stdout_fd=write_fd,
            stderr_fd=None if write_fd is None else 1,
            ns_pid=d.ns_pid,
            cgroup_fd=cgroup_fd,
        )
        try:
            result = spawn(request)
        except SpawnError as exc:
            if read_fd is not None:
                os.close(read_fd)
            self.post(ev.SpawnFailed(now, e.name, str(exc)))
            return
        finally:
            if write_fd is not None:
                os.close(write_fd)
            if cgroup_fd is not None:
                os.close(cgroup_fd)
        if read_fd is not None:
            sink = LogSink(self.log) if d.output == "tag" else self._file_sink(d.output)
            capture = Capture(d.name, read_fd, sink)
            self.captures[read_fd] = capture
            self.loop.add_reader(read_fd, lambda c=capture: self._on_capture(c))
        self.post(ev.Spawned(now, e.name, result.pid, result.program_pid))

    def _output_fds(self, d) -> tuple[int | None, int | None]:
        """(read end to capture, fd for the daemon's stdout/stderr); (None, None) to inherit.

        Dumb daemons write into a pipe the master reads, so a per-daemon file can be reopened
        and lines can be tagged. A smart daemon outlives the master, so it must never write
        into a pipe the master holds: it gets the file itself (reopening it needs a restart).
        """
        if d.output == "inherit":
            return None, None
        if d.kind is DaemonKind.DUMB:
            r, w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(r, False)
            return r, w
        fd = os.open(d.output, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        return None, fd

    def _file_sink(self, path: str) -> FileSink:
        sink = self.sinks.get(path)
        if sink is None:
            sink = self.sinks[path] = FileSink(path)
        return sink

    def _on_capture(self, capture: Capture) -> None:
        if not capture.on_readable():
            self.loop.remove_reader(capture.fd)
            self.captures.pop(capture.fd, None)
            capture.close()

    def _drain_capture(self, capture: Capture) -> None:
        """At exit: take what is already in the pipe, without waiting for more."""
        for _ in range(16):
            if not capture.on_readable() or not _readable_now(capture.fd):
                break
        self.loop.remove_reader(capture.fd)
        self.captures.pop(capture.fd, None)
        capture.close()

    def _do_Watch(self, e: fx.Watch) -> None:
        if e.pid in self.pidfds:
            return
        try:
            fd = linux.pidfd_open(e.pid)
        except ProcessLookupError:
            # already gone (and reaped by someone): report it, never signal that number again
            self.post(ev.ProcessExited(time.monotonic(), e.pid, None))
            return
        self.pidfds[e.pid] = fd
        self.loop.add_reader(fd, lambda pid=e.pid: self._on_pidfd(pid))

    def _forget(self, pid: int) -> None:
        fd = self.pidfds.pop(pid, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)

    def _do_Unwatch(self, e: fx.Unwatch) -> None:
        self._forget(e.pid)

    def _do_SendSignal(self, e: fx.SendSignal) -> None:
        fd = self.pidfds.get(e.pid)
        if fd is None:
            self.log(f"not signalling pid {e.pid}: it is not (or no longer) a process nsattach watches", "warning")
            return
        try:
            # through the pidfd first: if the process is gone this fails instead of hitting
            # whoever got the pid since
            linux.pidfd_send_signal(fd, e.signum if not e.group else 0)
            if e.group:
                st = procfs.read_stat(e.pid)
                if st is not None and st.pgrp == e.pid:
                    os.killpg(e.pid, e.signum)
                else:
                    linux.pidfd_send_signal(fd, e.signum)
        except ProcessLookupError:
            pass
        except OSError as exc:
            self.log(f"kill({e.pid}, {e.signum}): {exc.strerror}", "error")

    def _do_FindRemnants(self, e: fx.FindRemnants) -> None:
        pids = set(procfs.session_members(e.sid, exclude={os.getpid()})) if e.sid else set()
        d = self.core.daemons.get(e.name)
        if d is not None and self._in_cgroup(d.plan):
            # the cgroup also holds what left the session (setsid) or was orphaned
            for pid in self.cgroups.members(e.name):
                st = procfs.read_stat(pid)
                if st is not None and not st.is_zombie:
                    pids.add(pid)
        self.post(ev.RemnantsFound(time.monotonic(), e.name, tuple(sorted(pids))))

    def _do_KillPids(self, e: fx.KillPids) -> None:
        d = self.core.daemons.get(e.name)
        if e.signum == signal.SIGKILL and d is not None and self._in_cgroup(d.plan):
            self.cgroups.kill(e.name, signal.SIGKILL)    # the whole cgroup at once: fork storms too
        for pid in e.pids:
            fd = self.pidfds.get(pid)
            try:
                if fd is not None:
                    linux.pidfd_send_signal(fd, e.signum)
                elif procfs.in_session(pid, e.sid):
                    os.kill(pid, e.signum)
            except ProcessLookupError:
                pass
            except OSError as exc:
                self.log(f"kill({pid}, {e.signum}): {exc.strerror}", "error")

    def _do_ReadPidfile(self, e: fx.ReadPidfile) -> None:
        d = self.core.daemons.get(e.name)
        if d is None or not d.plan.pidfile:
            return
        result = pidfile.read_pid(d.plan.pidfile)
        pid, reason = result.pid, result.reason
        if pid is not None:
            refusal = pidfile.plausible(pid, d.plan.pidfile, d.plan.identity.uid)
            if refusal is not None:
                pid, reason = None, refusal
        self.post(ev.PidfileRead(time.monotonic(), e.name, pid, reason))

    def _do_ArmTimer(self, e: fx.ArmTimer) -> None:
        self.loop.call_at(e.at, (e.name, e.key))

    def _do_CancelTimer(self, e: fx.CancelTimer) -> None:
        self.loop.cancel((e.name, e.key))

    def _do_WatchTouch(self, e: fx.WatchTouch) -> None:
        if not e.paths:
            self.touch.pop(e.name, None)
            return
        known = self.touch.get(e.name, {})
        self.touch[e.name] = {p: known.get(p) or _touch_state(p, self.log) for p in e.paths}
        if not self.loop.has_timer(("", "touch-poll")):
            self.loop.call_at(time.monotonic() + TOUCH_POLL_S, ("", "touch-poll"))

    def _poll_touch(self) -> None:
        now = time.monotonic()
        for owner, files in self.touch.items():
            for path, (mtime, existed) in list(files.items()):
                current = _stat_mtime(path)
                fired = False
                if current is None:
                    fired = existed
                    files[path] = (0.0, False)
                else:
                    fired = (not existed) or current > mtime
                    files[path] = (current, True)
                if fired:
                    self.post(ev.Touched(now, owner, path))
                    break       # one event per owner and round, as uWSGI reports the first file
        if self.touch:
            self.loop.call_at(now + TOUCH_POLL_S, ("", "touch-poll"))

    def _do_LoadConfig(self, e: fx.LoadConfig) -> None:
        now = time.monotonic()
        self.notifier.reloading()
        try:
            plan = self.reload_plan()
            problems = self.check_reload(plan) if self.check_reload else []
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            errors = [str(p) for p in exc.problems]
            self.last_reload = (False, errors)
            self.post(ev.ConfigReloadFailed(now, tuple(errors)))
            self.notifier.ready(f"reload failed; {self.summary()}")
            return
        for warning in plan.warnings:
            self.log(f"reload: warning: {warning}", "warning")
        if self.on_reload is not None and self.on_reload(plan):
            self.log("reload: the jail's own options changed: stopping to build the jail again")
            self.rebuild = True
            self.last_reload = (True, [])
            self.request_stop(now, "reload with new jail options")
            return
        old, self.plan = self.plan, plan
        self._apply_env(plan)
        try:
            self._reconfigure_legions(old, plan)
        except SetupError as exc:
            self.log(f"reload: {exc}", "error")
        self.last_reload = (True, [])
        self.post(ev.ConfigReloaded(now, plan))
        self.notifier.ready(self.summary())

    def _do_Exit(self, e: fx.Exit) -> None:
        self.exit_status = e.status
        self.loop.stop()


class _LegionHost:
    """What a legion service needs from the master (nsattach.legion.node.LegionHost, and
    nsattach.legion.etcd.EtcdLegionHost). ``key`` names the service's own timer."""

    def __init__(self, rt: Runtime, key: str):
        self.rt = rt
        self.key = key
        self.service = None

    def call_at(self, when_monotonic: float) -> None:
        self.rt.loop.call_at(when_monotonic, ("", self.key))

    def add_reader(self, fd: int, callback) -> None:
        self.rt.loop.add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        self.rt.loop.remove_reader(fd)

    def watch(self, fd: int, on_read, on_write) -> None:
        self.rt.loop.watch(fd, on_read, on_write)

    def legion_idle(self, legion: str) -> bool:
        from nsattach.core.supervisor import DaemonState

        return all(d.state is DaemonState.IDLE for d in self.rt.core.daemons.values() if d.plan.legion == legion)

    def finished(self) -> None:
        if self.service is not None:
            self.rt._legion_finished(self.service)

    def run_action(self, legion: str, event: str, action, env: dict[str, str], on_done) -> None:
        if action.action == "log":
            self.rt.log(f"[uwsgi-legion] {action.argument}")
            on_done(0)
            return
        request = SpawnRequest(argv=(self.rt.plan.master.binsh, "-c", action.argument),
                               env=daemon_env({**os.environ, **env}, self.rt.plan.master.identity))
        try:
            result = spawn(request)
        except SpawnError as exc:
            self.rt.log(f"[uwsgi-legion] {event} action {action.action}:{action.argument}: {exc}", "error")
            on_done(None)
            return
        self.rt.action_children[result.pid] = on_done

    def log(self, text: str, level: str = "info") -> None:
        self.rt.log(text, level)

    def lord_changed(self, legion: str, lord: bool, since_wall: float) -> None:
        self.rt.post(ev.LordChanged(time.monotonic(), legion, lord, since_wall))
        self.rt.drain()


def _legion_kind(service) -> str:
    from nsattach.legion.etcd import EtcdLegionService

    return "etcd" if isinstance(service, EtcdLegionService) else "udp"


def service_flush_s(service) -> float:
    """How long an exiting master waits for an etcd service's last requests (lease revocation)."""
    from nsattach.legion.etcd import REQUEST_TIMEOUT_S

    return REQUEST_TIMEOUT_S + 0.5


def open_control_socket(path: str, gid: int | None):
    """Bind the control socket, as a SetupError that says what to do when it cannot be."""
    try:
        return bind_control_socket(path, gid)
    except ControlSocketError as exc:
        raise SetupError(f"control socket: {exc.strerror}") from None
    except OSError as exc:
        raise SetupError(f"control socket {path}: {exc.strerror}") from None


def _readable_now(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _stat_mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _touch_state(path: str, log) -> tuple[float, bool]:
    mtime = _stat_mtime(path)
    if mtime is None:
        log(f"unable to stat() {path}, events will be triggered as soon as the file is created")
        return (0.0, False)
    return (mtime, True)
