"""The start-up sequence of the run mode: everything between a validated Plan and the
master's event loop, in uWSGI's order (uwsgi-spec §5.2), each hook phase exactly once (Q-M1).

Without a jail, one process does it all::

    env= → asap hooks → logto → pidfile → pre-jail hooks → in-jail hooks
    → [unshare (pid: fork once, this process relays signals to the master inside); post-jail hooks]
    → as-root hooks → uid/gid drop (verified) → as-user hooks → chdir → Runtime
      (master-start hooks once every daemon was started, as-user-atexit hooks at its end)

With ``namespace = DIR[:HOSTNAME]`` the process that started stays on the host as a small
*monitor* (the pidfile names it) and the master runs jailed, as PID 1 of new namespaces::

    monitor: ... pre-jail hooks → fork the jailed master → [veth] → post-jail hooks
             (UWSGI_JAIL_PID / NSATTACH_JAIL_PID set) → "go" → relay signals, answer reloads,
             wait; exit with the jailed master's status, or rebuild the jail (throttled) when it
             exits with EXIT_JAIL_REBUILD
    jailed:  / rprivate → wait for "go" (Q-H5) → PDEATHSIG → hostname → network → jail recipe
             (system/jail.py) → in-jail hooks → as-root → drop → as-user → chdir → Runtime

A fatal failure before the loop exits non-zero (1, or N for ``exit:N``) with nothing spawned
(Q-M4); when the jailed master dies, the kernel takes every process of the jail with it, and
its mounts go with its mount namespace.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
import traceback
from dataclasses import replace

from nsattach.config.model import Plan
from nsattach.core.throttle import Throttle
from nsattach.errors import EXIT_JAIL_REBUILD, ConfigError, ConfigProblem, HookError, NsattachError, SetupError
from nsattach.log import Logger, open_logto
from nsattach.runtime import Runtime, open_control_socket
from nsattach.system import jail, linux, netns, pidfile, privileges
from nsattach.system.hooks import HookRunner, TouchHooks
from nsattach.system.loop import Loop
from nsattach.system.notify import Notifier

JAIL_REBUILD_MAX_DELAY_S = 30     # respawn throttle cap for jail rebuilds
CHANNEL_TIMEOUT_S = 60.0          # the jailed master waits this long for the monitor's answer
STARTUP_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
MONITOR_RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def run(plan: Plan, invocation) -> int:
    return Startup(plan, invocation).run()


# --------------------------------------------------------------------------------------------
# signals before the event loop


class StopDuringStartup(BaseException):
    """A stop signal arrived before the master's loop had its handlers: nothing runs yet."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def install_startup_handlers(log) -> None:
    """Until the Runtime installs its own: a stop signal ends the start-up cleanly (and, for a
    PID 1, is not silently ignored as the kernel would without a handler), SIGHUP is ignored."""
    def stop(signum, frame):
        raise StopDuringStartup(signum)

    def hup(signum, frame):
        log("SIGHUP during start-up: ignored (there is nothing to reload yet)", "warning")

    for sig in STARTUP_STOP_SIGNALS:
        signal.signal(sig, stop)
    signal.signal(signal.SIGHUP, hup)


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _exit_code(status: int) -> int:
    """A wait status as the exit status to pass on (128+N for a signal, as shells do)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


# --------------------------------------------------------------------------------------------
# the monitor <-> jailed master channel: length-prefixed pickles over a unix socketpair


def send_message(sock: socket.socket, message) -> None:
    data = pickle.dumps(message)
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the other side closed the channel")
        data += chunk
    return data


def recv_message(sock: socket.socket, timeout: float | None):
    sock.settimeout(timeout)
    try:
        (length,) = struct.unpack("!I", _recv_exact(sock, 4))
        return pickle.loads(_recv_exact(sock, length))
    finally:
        sock.settimeout(None)


def peer_gone(sock: socket.socket) -> bool:
    """True when the other end of ``sock`` has closed (nothing pending to read but EOF)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


# --------------------------------------------------------------------------------------------


class Startup:
    def __init__(self, plan: Plan, invocation, log: Logger | None = None):
        self.plan = plan
        self.invocation = invocation
        self.log = log or Logger()
        self.hooks = HookRunner(plan.hooks, binsh=plan.master.binsh, log=self.log)
        self.pidfile_owner: int | None = None
        self.channel: socket.socket | None = None      # jailed master: its line to the monitor
        self.jailed = False
        self.pdeathsig = False                         # re-armed after the uid drop
        self.master_start_failed = False
        self.touch_hooks: TouchHooks | None = None
        self.runtime: Runtime | None = None
        self.control_sock = None                       # bound before the jail and the uid drop
        self.control_owner: int | None = None

    # -- the sequence ---------------------------------------------------------------------------

    def run(self) -> int:
        plan = self.plan
        if os.geteuid() != 0 and (plan.namespace or plan.master.unshare
                                  or plan.master.identity.changes_anything
                                  or any(d.ns_pid for d in plan.daemons)):
            raise SetupError("namespace, unshare, uid/gid and ns_pid need root: run nsattach as root")
        install_startup_handlers(self.log)
        try:
            for key, value in plan.master.env:
                os.environ[key] = value
            for key in plan.master.unenv:
                os.environ.pop(key, None)
            # first: a second nsattach on the same config stops here, before its hooks or
            # pidfile could touch anything of the running one
            self._bind_control_socket()
            self.hooks.run_phase("asap")
            if plan.master.logto:
                try:
                    open_logto(plan.master.logto)
                except OSError as exc:
                    raise SetupError(f"logto {plan.master.logto}: {exc.strerror}") from None
            self._write_pidfile()
            self.hooks.run_phase("pre-jail")
            if plan.namespace is not None:
                return JailMonitor(self).run()
            return self.master(plan)
        except StopDuringStartup as stop:
            self.log(f"{_signame(stop.signum)} received during start-up: stopping (no daemon was started)")
            return 0
        finally:
            self._vacuum()
            self._remove_control_socket()

    def _bind_control_socket(self) -> None:
        """Bound here, as root and on the host's filesystem, like uWSGI binds its sockets
        before the jail and the privilege drop: the jailed or dropped master inherits the
        listening socket, and `nsattach status` on the host reaches it at the usual path."""
        path = self.plan.master.control_socket
        if not path:
            return
        self.control_sock = open_control_socket(path, self.plan.master.control_group)
        self.control_owner = os.getpid()

    def _remove_control_socket(self) -> None:
        if self.control_sock is None or self.control_owner != os.getpid():
            return
        self.control_sock.close()
        try:
            os.unlink(self.plan.master.control_socket)
        except OSError:
            pass

    def _write_pidfile(self) -> None:
        path = self.plan.master.pidfile
        if not path:
            return
        try:
            pidfile.write_pid(path, os.getpid())
        except OSError as exc:
            raise SetupError(f"writing pidfile {path}: {exc.strerror}") from None
        self.pidfile_owner = os.getpid()
        self.log(f"writing pidfile to {path}")

    def _vacuum(self) -> None:
        path = self.plan.master.pidfile
        if not (path and self.plan.master.vacuum and self.pidfile_owner == os.getpid()):
            return
        try:
            pidfile.remove(path)
            self.log("VACUUM: pidfile removed.")
        except OSError as exc:
            self.log(f"VACUUM: cannot remove {path}: {exc.strerror}", "warning")

    def master(self, plan: Plan) -> int:
        """From the in-jail phase to the end of the event loop (inside the jail, if any)."""
        self.hooks.run_phase("in-jail")
        if plan.master.unshare:
            flags = privileges.apply_unshare(plan.master.unshare, self.log)
            if flags & linux.CLONE_NEWPID:
                # Only children enter the new PID namespace, and once its first process is gone
                # no more can be forked in it (Q-N10): fork the master now.
                status = privileges.refork_into_pid_namespace(
                    self.log, on_child=lambda: install_startup_handlers(self.log))
                if status is not None:
                    self.log(f"master inside the PID namespace ended (status {_exit_code(status)})")
                    return _exit_code(status)
                self.pdeathsig = True
                if flags & linux.CLONE_NEWNS:
                    self._step("mount a fresh /proc for the new PID namespace", "/proc",
                               lambda: linux.mount("proc", "/proc", "proc", jail.PROC_FLAGS))
            if flags & linux.CLONE_NEWNET:
                netns.loopback_up(self.log)
            if not self.jailed:             # with a jail, post-jail ran in the monitor: once per start
                self.hooks.run_phase("post-jail")
        self.hooks.run_phase("as-root")
        if plan.master.identity.changes_anything:
            preload_modules()
        privileges.drop_privileges(plan.master.identity, self.log)
        if self.pdeathsig:
            self._arm_pdeathsig()          # the credential change cleared it
        self.hooks.run_phase("as-user")
        if plan.master.chdir:
            self._step("chdir", plan.master.chdir, lambda: os.chdir(plan.master.chdir))
            self.log(f"chdir() to {plan.master.chdir}")
        return self._run_loop(plan)

    def _step(self, what: str, path: str, fn) -> None:
        try:
            fn()
        except OSError as exc:
            raise SetupError(f"{what} ({path}): {exc.strerror} [{linux.errno_name(exc.errno or 0)}]") from None

    def _arm_pdeathsig(self) -> None:
        linux.set_pdeathsig(signal.SIGKILL)
        if self.channel is not None and peer_gone(self.channel):
            raise SetupError("the process outside the jail is gone")

    # -- the event loop ---------------------------------------------------------------------------

    def _run_loop(self, plan: Plan) -> int:
        if self.jailed:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(key, None)       # the monitor speaks to systemd for the jail
        self.runtime = Runtime(self._runtime_plan(plan, initial=True), reload_plan=self._reload_plan, log=self.log,
                               on_started=self._on_started, on_exit=self._on_exit, check_reload=self._check_reload,
                               on_reload=self._on_reload, control_sock=self.control_sock)
        status = self.runtime.run()
        if self.master_start_failed and status == 0:
            status = 1
        return status

    def _runtime_plan(self, plan: Plan, *, initial: bool) -> Plan:
        """What the Runtime still has to do. The pidfile and chdir are done here, in uWSGI's
        order (the pidfile by the process outside a jail or a PID namespace), and so is the
        initial env= (a putenv hook keeps its value), and logto is opened here too; the Runtime
        keeps its path to reopen it on SIGUSR2, unless that path is out of reach: inside a
        jail, or after a uid drop.
        The control socket was bound before either (see _bind_control_socket)."""
        master = replace(plan.master, pidfile=None, chdir=None)
        if self.jailed or plan.master.identity.changes_anything:
            master = replace(master, logto=None)
        if initial:
            master = replace(master, env=(), unenv=())
        return replace(plan, master=master)

    def _on_started(self) -> None:
        # from here on the master's loop runs: a hook command must give way to a stop
        self.hooks.interrupt = self.runtime.stop_pending
        try:
            self.hooks.run_phase("master-start")
        except HookError:
            if self.runtime.stop_pending():
                return              # interrupted by an operator's stop: the stop goes on
            # the daemons are up: stop them the normal way, then exit non-zero (Q-M4)
            self.master_start_failed = True
            self.log("master-start hook failed: stopping the instance", "error")
            self.runtime.request_stop(time.monotonic(), "master-start hook failure")
            self.runtime.drain()
            return
        self.touch_hooks = TouchHooks(self.hooks, self.plan.hooks)
        if self.runtime is not None:
            self.touch_hooks.start(self.runtime.loop)
        if self.channel is not None:
            try:
                send_message(self.channel, ("started",))
            except OSError:
                pass

    def _on_exit(self) -> None:
        if self.touch_hooks is not None:
            self.touch_hooks.close()
        # at exit the stop is under way: its deadline bounds these hooks too
        self.hooks.interrupt = None
        self.hooks.deadline = self.runtime.stop_deadline()
        self.hooks.run_phase("as-user-atexit", fatal=False)

    def _reload_plan(self) -> Plan:
        if self.channel is None:
            from nsattach.config import load_plan

            inv = self.invocation
            return self._runtime_plan(load_plan(inv.config_args, inv.cli_entries, cwd=inv.cwd), initial=False)
        # Inside the jail the configuration files are out of reach: the monitor reads them.
        try:
            send_message(self.channel, ("reload",))
            kind, payload = recv_message(self.channel, CHANNEL_TIMEOUT_S)
        except (OSError, EOFError, pickle.PickleError, struct.error, ValueError) as exc:
            raise ConfigError(f"cannot get the configuration from the process outside the jail: {exc}") from None
        if kind != "plan":
            raise ConfigError([ConfigProblem(None, None, str(p)) for p in payload])
        return self._runtime_plan(payload, initial=False)

    def _check_reload(self, plan: Plan) -> list[ConfigProblem]:
        for what in restart_needed(self.plan, plan):
            if what == "namespace" and self.jailed:
                continue
            self.log(f"reload: {what} changed: that needs a restart of nsattach (not applied)", "warning")
        return []

    def _on_reload(self, plan: Plan) -> bool:
        """For the Runtime: True when the reloaded plan changes the jail itself, so the jailed
        master must exit with EXIT_JAIL_REBUILD and the monitor builds a fresh jail."""
        return self.jailed and jail_key(plan) != jail_key(self.plan)

    # -- inside the jail -------------------------------------------------------------------------

    def jailed_master(self, channel: socket.socket) -> int:
        """In the forked process, PID 1 of the new namespaces: wait for the monitor, build the
        jail, go on with the master's sequence."""
        ns = self.plan.namespace
        self.channel = channel
        in_place = jail.resolve_root(ns.root) == "/"
        jail.make_private()
        try:
            message = recv_message(channel, None)
        except EOFError:
            raise SetupError("the process outside the jail went away before the jail was built") from None
        if message != ("go",):
            raise SetupError(f"unexpected message from the process outside the jail: {message!r}")
        # From here the jail dies with the monitor (its parent, since the intermediate exited).
        self._arm_pdeathsig()
        self.pdeathsig = True
        if ns.hostname:
            jail.set_hostname(ns.hostname)
        if ns.net:
            netns.loopback_up(self.log)
        if ns.veth:
            netns.configure_jail_end(ns.veth, self.log)
        jail.build_jail(ns, self.log)
        self.jailed = True
        if not in_place:
            from nsattach.config.plan import jail_accounts

            accounts = jail_accounts("/")
        else:
            from nsattach.config import convert

            accounts = convert.SYSTEM_ACCOUNTS
        self.hooks = HookRunner(self.plan.hooks, binsh=self.plan.master.binsh, log=self.log, accounts=accounts)
        self.log(f"jailed master ready in {ns.root} (pid: {os.getpid()})")
        return self.master(self.plan)


def jail_key(plan: Plan):
    """The jail's own settings, without line numbers: a change means a new jail."""
    ns = plan.namespace
    if ns is None:
        return None
    return replace(ns, origin=None, keep_mounts=tuple(replace(k, origin=None) for k in ns.keep_mounts))


def restart_needed(old: Plan, new: Plan) -> list[str]:
    """Start-up settings a reload cannot apply (they are used once, before the loop)."""
    changed = []
    if jail_key(old) != jail_key(new):
        changed.append("namespace")
    if old.master.identity != new.master.identity:
        changed.append("uid/gid")
    if old.master.unshare != new.master.unshare:
        changed.append("unshare")
    strip = lambda hooks: [(h.phase, h.family, h.value) for h in hooks if h.phase != "touch"]  # noqa: E731
    if strip(old.hooks) != strip(new.hooks):
        changed.append("hooks")
    return changed


# --------------------------------------------------------------------------------------------
# the monitor: the process outside the jail


def _forget_loop_after_fork(loop: Loop) -> None:
    """In a forked child: drop the parent's loop without touching it. Loop.close() would
    unregister the fds from the epoll instance, which the child *shares* with the parent (the
    parent would stop seeing its signals); closing our copies of the fds leaves it intact."""
    signal.set_wakeup_fd(-1)
    fds = [loop.selector.fileno(), getattr(loop, "_wakeup_r", -1), getattr(loop, "_wakeup_w", -1)]
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    for sig in (signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)


def preload_modules() -> None:
    """Import everything the master may need later, while it still can: after pivot_root the
    standard library's and site-packages' files are gone, and after a uid drop they may be
    unreadable (recipes.md §3: pyenv lives under /root, mode 0700)."""
    import encodings.ascii  # noqa: F401
    import encodings.idna  # noqa: F401
    import encodings.latin_1  # noqa: F401
    import encodings.utf_8  # noqa: F401
    import grp  # noqa: F401
    import ipaddress  # noqa: F401
    import json  # noqa: F401
    import pwd  # noqa: F401
    import stat  # noqa: F401

    import psutil

    import nsattach.config.plan  # noqa: F401
    import nsattach.control.handler  # noqa: F401
    import nsattach.control.server  # noqa: F401
    import nsattach.system.output  # noqa: F401

    try:
        psutil.Process().create_time()
    except Exception:
        pass
    import select  # noqa: F401
    import socket  # noqa: F401

    import nsattach.config.ini  # noqa: F401   (a reload reads the config again)
    import nsattach.legion.node  # noqa: F401  (sockets, crypto, election)
    import nsattach.system.cgroup  # noqa: F401
    netns.preload()


class JailMonitor:
    """The process that stays outside the jail (uwsgi-spec §4.2, with Q-N3/Q-N4/Q-N9/Q-H5 fixed).

    It forwards SIGTERM/SIGINT/SIGQUIT/SIGHUP (and SIGUSR1/SIGUSR2) to the jailed master,
    answers its requests for the configuration, exits with its status after a stop, and
    rebuilds the jail only when the jailed master exits with EXIT_JAIL_REBUILD (throttled).
    If the monitor dies, PR_SET_PDEATHSIG takes the jailed master, and the kernel the jail.
    """

    def __init__(self, start: Startup):
        self.start = start
        self.plan = start.plan
        self.log = start.log
        self.loop = Loop()
        self.notifier = Notifier()
        self.throttle = Throttle()
        self.p1: int | None = None
        self.pidfd = -1
        self.channel: socket.socket | None = None
        self.status: int | None = None
        self.stopping = False

    def run(self) -> int:
        preload_modules()
        linux.set_child_subreaper()
        self.loop.handle_signals([*MONITOR_RELAYED, signal.SIGCHLD], self._on_signal)
        try:
            while True:
                built = time.monotonic()
                status = self._one_jail()
                code = _exit_code(status)
                if code == EXIT_JAIL_REBUILD:
                    if self.stopping:
                        self.log("jailed master asked for a new jail, but a stop was requested")
                        return 0
                    if not self._before_rebuild(time.monotonic() - built):
                        return 0
                    continue
                if os.WIFSIGNALED(status):
                    self.log(f"jailed master (pid: {self.p1}) was killed by {_signame(os.WTERMSIG(status))}")
                else:
                    self.log(f"jailed master (pid: {self.p1}) exited with status {code}")
                return code
        finally:
            self.notifier.stopping()
            self.notifier.close()
            self.loop.close()

    # -- one jail -------------------------------------------------------------------------------

    def _one_jail(self) -> int:
        ns = self.plan.namespace
        jail.resolve_root(ns.root)          # a missing directory fails here, before any fork
        self.log(f"*** jailing nsattach in {ns.value or ns.root} ***")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.status = None
        # Every signal stays blocked across the fork: the child must not run our handlers,
        # and it opens them again once its own are in place.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, linux.CATCHABLE_SIGNALS)
        try:
            p1 = jail.open_namespaces(ns, lambda: self._child(theirs, mine))
        except BaseException:
            mine.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            theirs.close()
        self.p1, self.channel = p1, mine
        self.pidfd = linux.pidfd_open(p1)
        os.environ["UWSGI_JAIL_PID"] = os.environ["NSATTACH_JAIL_PID"] = str(p1)
        self.log(f"jailed master is pid {p1} (PID 1 of its namespaces)")
        try:
            try:
                if ns.veth:
                    netns.create_veth(ns.veth, p1, self.log)
                # a fresh runner: this is a new start of the jail, its post-jail phase runs once
                HookRunner(self.plan.hooks, binsh=self.plan.master.binsh, log=self.log).run_phase("post-jail")
            except BaseException:
                self._kill_jail("the post-jail phase failed")   # never leave it orphaned (Q-N9)
                raise
            try:
                send_message(mine, ("go",))
            except OSError:
                pass            # it is already gone: its exit status tells why
            self.log(f"waiting for jailed master (pid: {p1}) death...")
            self.loop.add_reader(mine.fileno(), self._on_message)
            while self.status is None:
                self.loop.run(self._on_timer)
            return self.status
        finally:
            self.loop.remove_reader(mine.fileno())
            mine.close()
            self.channel = None
            os.close(self.pidfd)
            self.pidfd = -1
            if ns.veth:
                try:
                    netns.delete_link(ns.veth.host_ifname)
                except SetupError as exc:
                    self.log(str(exc), "warning")

    def _kill_jail(self, why: str) -> None:
        self.log(f"{why}: killing the jailed master (pid: {self.p1})", "error")
        jail.forward_signal(self.pidfd, signal.SIGKILL)
        try:
            os.waitpid(self.p1, 0)
        except ChildProcessError:
            pass

    def _child(self, channel: socket.socket, monitor_end: socket.socket):
        """The jailed master (a fork of the monitor, every signal blocked). Never returns."""
        status = 1
        try:
            _forget_loop_after_fork(self.loop)  # its handlers, wakeup pipe and epoll are the monitor's
            monitor_end.close()
            self.notifier.close()
            install_startup_handlers(self.log)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            status = self.start.jailed_master(channel)
        except StopDuringStartup as stop:
            self.log(f"{_signame(stop.signum)} received during start-up: stopping (no daemon was started)")
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except NsattachError as exc:
            self.log(f"nsattach: {exc}", "error")
            status = exc.exit_status
        except BaseException:
            self.log("jailed master crashed:\n" + traceback.format_exc(), "error")
            status = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)

    # -- events ---------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self._reap()
            return
        if signum in STARTUP_STOP_SIGNALS:
            if not self.stopping:
                self.notifier.stopping()
            self.stopping = True
        if self.p1 is None or self.pidfd < 0:
            if self.stopping:
                self.loop.stop()            # waiting to rebuild: just stop
            return
        if jail.forward_signal(self.pidfd, signum):
            self.log(f"{_signame(signum)} forwarded to the jailed master (pid: {self.p1})")

    def _reap(self) -> None:
        for pid, status in linux.reap_children():
            if pid == self.p1 and self.status is None:
                self.status = status
                self.loop.stop()
            # anything else: an orphan re-parented to us (we are a child subreaper)

    def _on_message(self) -> None:
        try:
            message = recv_message(self.channel, 5.0)
        except (EOFError, OSError, pickle.PickleError, struct.error):
            self.loop.remove_reader(self.channel.fileno())   # the jailed master is ending
            return
        if message == ("reload",):
            self._answer_reload()
        elif message == ("started",):
            self.notifier.ready(f"jailed master (pid {self.p1}) running in {self.plan.namespace.root}")

    def _answer_reload(self) -> None:
        try:
            plan = self._load()
            reply = ("plan", plan)
            self.log("configuration re-read for the jailed master")
        except ConfigError as exc:
            reply = ("error", [str(p) for p in exc.problems])
        try:
            send_message(self.channel, reply)
        except OSError as exc:
            self.log(f"cannot answer the jailed master: {exc.strerror}", "warning")

    def _load(self) -> Plan:
        from nsattach.config import load_plan

        inv = self.start.invocation
        return load_plan(inv.config_args, inv.cli_entries, cwd=inv.cwd)

    def _on_timer(self, key: tuple) -> None:
        self.loop.stop()

    # -- rebuilds -------------------------------------------------------------------------------

    def _before_rebuild(self, lived_s: float) -> bool:
        """Wait the throttle delay (a stop ends it: False), then re-read the configuration."""
        delay = self.throttle.delay_after_death(lived_s, JAIL_REBUILD_MAX_DELAY_S)
        self.p1 = None
        self.log(f"jailed master asked for a new jail; rebuilding{f' in {delay} s' if delay else ''}")
        if delay:
            self.loop.call_at(time.monotonic() + delay, ("rebuild",))
            self.loop.run(self._on_timer)
            self.loop.cancel(("rebuild",))
            if self.stopping:
                self.log("stop requested while waiting to rebuild the jail")
                return False
        try:
            plan = self._load()
        except ConfigError as exc:
            for problem in exc.problems:
                self.log(f"rebuild: {problem}", "error")
            self.log("rebuild: the configuration has errors; building the jail from the previous one", "error")
            return True
        if plan.namespace is None:
            self.log("rebuild: the configuration has no namespace any more; keeping the previous jail settings "
                     "(restart nsattach to run without a jail)", "warning")
            plan = replace(plan, namespace=self.plan.namespace)
        for what in restart_needed(self.plan, plan):
            if what != "namespace":
                self.log(f"rebuild: {what} changed: applied in the new jail", "warning")
        self.plan = plan
        self.start.plan = plan
        return True
