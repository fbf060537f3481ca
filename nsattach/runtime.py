"""Wiring: the event loop, the pure core, and the system edges that carry out its effects.

The runtime turns kernel notifications (a pidfd became readable, SIGCHLD, a signal, a timer)
into core events, and the core's effects into system calls. Events produced while effects
are carried out (a spawn's result, a pidfile's content) are queued and handled in order, so
the core always sees one event at a time.
"""

from __future__ import annotations

import collections
import errno
import os
import resource
import signal
import time

from nsattach.config.model import DaemonKind, Plan
from nsattach.core import effects as fx
from nsattach.core import events as ev
from nsattach.core.shellcmd import shell_argv
from nsattach.core.supervisor import Supervisor
from nsattach.errors import ConfigError, ConfigProblem, SetupError, SpawnError
from nsattach.log import Logger, open_logto
from nsattach.system import linux, pidfile, procfs
from nsattach.system.loop import Loop
from nsattach.system.spawn import SpawnRequest, daemon_env, spawn

STOP_SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGQUIT: "SIGQUIT"}
TOUCH_POLL_S = 1.0


class Runtime:
    def __init__(self, plan: Plan, reload_plan=None, log: Logger | None = None,
                 on_started=None, on_exit=None, check_reload=None):
        self.plan = plan
        self.reload_plan = reload_plan        # () -> Plan, raises ConfigError
        self.check_reload = check_reload      # (Plan) -> list[ConfigProblem]: what a reload cannot apply
        self.on_started = on_started          # () -> None, after every daemon was started (master-start hooks)
        self.on_exit = on_exit                # () -> None, when the master ends (atexit hooks)
        self.log = log or Logger()
        self.loop = Loop()
        self.core = Supervisor(plan, master_ids=(os.getuid(), os.getgid()))
        self.queue: collections.deque[ev.Event] = collections.deque()
        self.pidfds: dict[int, int] = {}      # watched pid -> pidfd
        self.statuses: dict[int, int] = {}    # reaped before their pidfd was handled
        self.touch: dict[str, dict[str, tuple[float, bool]]] = {}   # owner -> path -> (mtime, exists)
        self.exit_status: int | None = None
        self.base_env: dict[str, str] = {}

    # -- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
        plan = self.plan
        self._raise_fd_limit()
        if plan.master.logto:
            open_logto(plan.master.logto)
        linux.set_child_subreaper()
        self._apply_env(plan)
        if plan.master.chdir:
            try:
                os.chdir(plan.master.chdir)
            except OSError as exc:
                raise SetupError(f"chdir({plan.master.chdir}): {exc.strerror}") from None
            self.log(f"chdir() to {plan.master.chdir}")
        if plan.master.pidfile:
            try:
                pidfile.write_pid(plan.master.pidfile, os.getpid())
            except OSError as exc:
                raise SetupError(f"writing pidfile {plan.master.pidfile}: {exc.strerror}") from None
            self.log(f"writing pidfile to {plan.master.pidfile}")
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.loop.handle_signals([*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD], self._on_signal)
        self.log(f"nsattach master (pid: {os.getpid()}) supervising {len(plan.daemons)} daemon(s)")

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
            self.post(ev.MasterStarted(time.monotonic()))
            self.drain()
            if self.on_started is not None and self.exit_status is None:
                self.on_started()
            if self.exit_status is None:
                self.loop.run(self._on_timer)
        finally:
            self.finish()
        return self.exit_status or 0

    def finish(self) -> None:
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()
        self.loop.close()
        if self.plan.master.pidfile and self.plan.master.vacuum:
            try:
                pidfile.remove(self.plan.master.pidfile)
                self.log("VACUUM: pidfile removed.")
            except OSError as exc:
                self.log(f"VACUUM: cannot remove {self.plan.master.pidfile}: {exc.strerror}", "warning")
        if self.on_exit is not None:
            self.on_exit()
        self.log("goodbye to nsattach.")

    # -- events in --------------------------------------------------------------------------

    def post(self, event: ev.Event) -> None:
        self.queue.append(event)

    def drain(self) -> None:
        while self.queue and self.exit_status is None:
            event = self.queue.popleft()
            for effect in self.core.handle(event):
                self.execute(effect)
                if self.exit_status is not None:
                    return

    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if signum == signal.SIGCHLD:
            self._reap(now)
        elif signum in STOP_SIGNALS:
            self.post(ev.StopRequested(now, STOP_SIGNALS[signum]))
        elif signum == signal.SIGHUP:
            self.post(ev.ReloadRequested(now))
        self.drain()

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
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
        request = SpawnRequest(
            argv=tuple(shell_argv(self.plan.master.binsh, d.command)),
            env=daemon_env(os.environ, d.identity),
            cwd=d.chdir,
            identity=d.identity,
            stdin_devnull=not d.honour_stdin,
            pdeathsig=signal.SIGKILL if d.kind is DaemonKind.DUMB else None,
            daemonize_pidfile=d.pidfile if d.kind is DaemonKind.SMART2 else None,
        )
        now = time.monotonic()
        try:
            result = spawn(request)
        except SpawnError as exc:
            self.post(ev.SpawnFailed(now, e.name, str(exc)))
            return
        self.post(ev.Spawned(now, e.name, result.pid, result.program_pid))

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
        pids = procfs.session_members(e.sid, exclude={os.getpid()})
        self.post(ev.RemnantsFound(time.monotonic(), e.name, tuple(pids)))

    def _do_KillPids(self, e: fx.KillPids) -> None:
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
            refusal = pidfile.plausible(pid, d.plan.pidfile)
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
        try:
            plan = self.reload_plan()
            problems = self.check_reload(plan) if self.check_reload else []
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            self.post(ev.ConfigReloadFailed(now, tuple(str(p) for p in exc.problems)))
            return
        for warning in plan.warnings:
            self.log(f"reload: warning: {warning}", "warning")
        self.plan = plan
        self._apply_env(plan)
        self.post(ev.ConfigReloaded(now, plan))

    def _do_Exit(self, e: fx.Exit) -> None:
        self.exit_status = e.status
        self.loop.stop()


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
