"""Hook phases: run every hook of a phase, in uWSGI's order, exactly once per start.

Within a phase the families run in a fixed order (uwsgi-spec §5.1): the advanced ``hook-``
chain, then ``mount-``, ``umount-``, ``exec-`` (``call-`` is refused when the plan is built),
each in config order. A fatal phase stops at the first failure and raises HookError; the
non-fatal ones (atexit, touch) run everything and log what failed.

Fixed against uWSGI: a command killed by a signal fails (Q-H2), ``exit:N`` exits with N
whatever its length (Q-H1), mount and umount flags have separate tables (Q-H3), ``chmod``
takes the whole octal mode.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import stat
import time
from typing import Callable, Mapping

from nsattach.config import convert as c
from nsattach.config.model import HookPlan, Identity
from nsattach.errors import HookError, SpawnError
from nsattach.system import linux
from nsattach.system.jail import mounts_below
from nsattach.core.shellcmd import shell_argv
from nsattach.system.spawn import SpawnRequest, daemon_env, spawn

# uWSGI's phase names in its log lines
PHASE_LOG_NAMES = {
    "asap": "asap", "pre-jail": "pre-jail", "post-jail": "post-jail", "in-jail": "in-jail",
    "as-root": "as root", "as-user": "as user", "master-start": "master-start",
    "as-user-atexit": "atexit", "touch": "touch",
}
FAMILY_ORDER = ("hook", "mount", "umount", "exec")
HOOK_POLL_S = 0.1                  # how often a running hook command checks for a stop
WAIT_FOR_TIMEOUT_S = 60.0          # uWSGI's wait-for-fs-timeout / wait-for-socket-timeout default
WAIT_FOR_POLL_S = 0.1
SPINNING_FIFO_POLL_S = 1.0

MOUNT_FLAGS = {
    "bind": linux.MS_BIND, "dirsync": linux.MS_DIRSYNC, "mandlock": linux.MS_MANDLOCK,
    "move": linux.MS_MOVE, "noatime": linux.MS_NOATIME, "nodev": linux.MS_NODEV,
    "noexec": linux.MS_NOEXEC, "rdonly": linux.MS_RDONLY, "readonly": linux.MS_RDONLY,
    "ro": linux.MS_RDONLY, "remount": linux.MS_REMOUNT, "nosuid": linux.MS_NOSUID,
    "sync": linux.MS_SYNCHRONOUS, "rec": linux.MS_REC, "recursive": linux.MS_REC,
    "private": linux.MS_PRIVATE, "shared": linux.MS_SHARED, "slave": linux.MS_SLAVE,
    "unbindable": linux.MS_UNBINDABLE, "defaults": 0,
}
UMOUNT_FLAGS = {
    "detach": linux.MNT_DETACH, "force": linux.MNT_FORCE, "expire": linux.MNT_EXPIRE,
    "nofollow": linux.UMOUNT_NOFOLLOW, "rec": 0, "recursive": 0,
}


class _Failed(Exception):
    """One action failed; the message says what and why."""


def _errno_text(exc: OSError) -> str:
    code = exc.errno or 0
    return f"{os.strerror(code)} [{linux.errno_name(code)}]" if code else str(exc)


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by signal {sig} ({name})"
    return f"exited with non-zero code: {os.waitstatus_to_exitcode(status)}"


class HookRunner:
    """Runs the hooks of a plan. ``accounts`` answers chown's user and group names (inside a
    jail: the jail's own files, see config.plan.jail_accounts)."""

    def __init__(self, hooks: tuple[HookPlan, ...], *, binsh: str, log: Callable[..., None],
                 accounts: c.Accounts = c.SYSTEM_ACCOUNTS):
        self.hooks = hooks
        self.binsh = binsh
        self.log = log
        self.accounts = accounts
        self.ran: list[str] = []          # phases run, in order (each at most once per start)
        # Once the master's loop runs, a hook must never hold up a stop: `interrupt` says a
        # stop was asked for (the running command is then killed), `deadline` (monotonic) is
        # when a command still running is killed anyway (the stop's own deadline, at exit).
        self.interrupt: Callable[[], bool] | None = None
        self.deadline: float | None = None

    def has(self, phase: str) -> bool:
        return any(h.phase == phase for h in self.hooks)

    def run_phase(self, phase: str, *, fatal: bool = True, env: Mapping[str, str] | None = None) -> None:
        """Run every hook of ``phase``. Fatal phases raise HookError at the first failure."""
        if phase in self.ran and phase != "touch":
            raise AssertionError(f"hook phase {phase} would run twice")
        self.ran.append(phase)
        items = [h for f in FAMILY_ORDER for h in self.hooks if h.phase == phase and h.family == f]
        for hook in items:
            try:
                self.run_one(hook, env=env)
            except _Failed as exc:
                where = f"{hook.option} = {_shown(hook)} ({hook.origin})"
                if fatal:
                    self.log(f"FATAL hook failed, destroying instance: {where}: {exc}", "error")
                    raise HookError(f"{PHASE_LOG_NAMES.get(phase, phase)} phase: {where}: {exc}") from None
                self.log(f"hook failed: {where}: {exc}", "error")

    def run_one(self, hook: HookPlan, *, env: Mapping[str, str] | None = None) -> None:
        phase = PHASE_LOG_NAMES.get(hook.phase, hook.phase)
        if hook.family == "exec":
            self._log_exec(hook.value, hook.phase)
            self._exec(hook.value, env)
        elif hook.family == "mount":
            self.log(f'mounting "{hook.value}" ({phase})...')
            self._mount(hook.value)
        elif hook.family == "umount":
            self.log(f'un-mounting "{hook.value}" ({phase})...')
            self._umount(hook.value)
        else:
            value = hook.value
            if hook.phase == "touch":
                value = value.partition(" ")[2]
            self.action(value, hook.phase, env=env)

    def action(self, text: str, phase: str, *, env: Mapping[str, str] | None = None) -> None:
        """One advanced hook ``action:argument`` (raises _Failed)."""
        action, _, arg = text.partition(":")
        private = action.startswith("!")
        action = action.lstrip("!")
        shown = "--- PRIVATE HOOK ---" if private else f'"{text}"'
        self.log(f"running {shown} ({PHASE_LOG_NAMES.get(phase, phase)})...")
        method = getattr(self, "_do_" + action.replace("-", "_"), None)
        if method is None:       # refused at check time; here only if a plan was built by hand
            raise _Failed(f"hook action not found: {action}")
        try:
            method(arg, env)
        except OSError as exc:
            raise _Failed(f"{action}: {_errno_text(exc)}") from None

    # -- exec ----------------------------------------------------------------------------------

    def _log_exec(self, command: str, phase: str) -> None:
        if phase == "as-user":
            self.log(f'running "{command}" (as uid: {os.getuid()} gid: {os.getgid()}) ...')
        else:
            self.log(f'running "{command}" ({PHASE_LOG_NAMES.get(phase, phase)})...')

    def _exec(self, command: str, env: Mapping[str, str] | None) -> None:
        environ = daemon_env(os.environ, Identity())
        if env:
            environ.update(env)
        # its own process group, so a command that has to be killed goes with all it forked
        request = SpawnRequest(argv=tuple(shell_argv(self.binsh, command)), env=environ, new_session=True,
                               stdin_devnull=False, pdeathsig=signal.SIGKILL)
        try:
            child = spawn(request)
        except SpawnError as exc:
            raise _Failed(f'command "{command}" could not be started: {exc}') from None
        status = self._wait(child.pid, command)
        if status != 0:
            raise _Failed(f'command "{command}" {describe_status(status)}')

    def _wait(self, pid: int, command: str) -> int:
        """The command's wait status; it is killed (and this fails) when a stop is asked for
        or the deadline passes, so a stuck hook cannot keep the master from stopping."""
        if self.interrupt is None and self.deadline is None:
            try:
                return os.waitpid(pid, 0)[1]
            except ChildProcessError:
                raise _Failed(f'command "{command}": its exit status was taken by someone else') from None
        pidfd = linux.pidfd_open(pid)
        try:
            while True:
                timeout = HOOK_POLL_S
                if self.deadline is not None:
                    timeout = max(0.0, min(timeout, self.deadline - time.monotonic()))
                select.select([pidfd], [], [], timeout)
                try:
                    reaped, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    raise _Failed(f'command "{command}": its exit status was taken by someone else') from None
                if reaped:
                    return status
                why = None
                if self.interrupt is not None and self.interrupt():
                    why = "a stop was requested"
                elif self.deadline is not None and time.monotonic() >= self.deadline:
                    why = "the stop deadline passed"
                if why:
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    raise _Failed(f'command "{command}" killed: {why}')
        finally:
            os.close(pidfd)

    def _do_exec(self, arg: str, env) -> None:
        self._exec(arg, env)

    def _do_safeexec(self, arg: str, env) -> None:
        try:
            self._exec(arg, env)
        except _Failed as exc:
            self.log(f"{exc} (safeexec: ignored)", "warning")

    # -- mounts --------------------------------------------------------------------------------

    def _mount(self, value: str) -> None:
        fields = value.split(None, 4)
        if len(fields) < 3:
            raise _Failed("invalid mount syntax (expected: FSTYPE SOURCE TARGET [FLAGS [DATA]])")
        fstype, source, target = fields[:3]
        flags = 0
        for name in (fields[3].split(",") if len(fields) > 3 else ()):
            if name and name not in MOUNT_FLAGS:
                raise _Failed(f'unknown mount flag "{name}"')
            flags |= MOUNT_FLAGS.get(name, 0)
        data = fields[4] if len(fields) > 4 else None
        try:
            linux.mount(source, target, fstype, flags, data)
        except OSError as exc:
            raise _Failed(f"mount({source}, {target}, {fstype}, {flags:#x}): {_errno_text(exc)}") from None

    def _umount(self, value: str) -> None:
        fields = value.split()
        if not fields:
            raise _Failed("invalid umount syntax (expected: TARGET [FLAGS])")
        target = fields[0]
        flags, recursive = 0, False
        for name in (fields[1].split(",") if len(fields) > 1 else ()):
            if name and name not in UMOUNT_FLAGS:
                raise _Failed(f'unknown umount flag "{name}"')
            recursive = recursive or name in ("rec", "recursive")
            flags |= UMOUNT_FLAGS.get(name, 0)
        if recursive:
            for below in mounts_below(target):
                try:
                    linux.umount2(below, flags)
                except OSError as exc:
                    raise _Failed(f"umount2({below}) below {target}: {_errno_text(exc)}") from None
        try:
            linux.umount2(target, flags)
        except OSError as exc:
            raise _Failed(f"umount2({target}, {flags:#x}): {_errno_text(exc)}") from None

    def _do_mount(self, arg: str, env) -> None:
        self._mount(arg)

    def _do_umount(self, arg: str, env) -> None:
        self._umount(arg)

    # -- files and process state ---------------------------------------------------------------

    def _do_cd(self, arg: str, env) -> None:
        os.chdir(arg)

    _do_chdir = _do_cd

    def _do_mkdir(self, arg: str, env) -> None:
        os.mkdir(arg)

    def _do_putenv(self, arg: str, env) -> None:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise _Failed(f"putenv: {arg!r} is not NAME=VALUE")
        os.environ[key] = value

    def _do_create(self, arg: str, env) -> None:
        os.close(os.open(arg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666))

    _do_creat = _do_create

    def _write(self, arg: str, flags: int, newline: bool, need_text: bool = True) -> None:
        path, sep, text = arg.partition(" ")
        if need_text and not sep:
            raise _Failed("expected: FILE STRING")
        data = text.encode() + (b"\n" if newline else b"")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, 0o666)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _do_write(self, arg: str, env) -> None:
        self._write(arg, os.O_TRUNC, False)

    def _do_writen(self, arg: str, env) -> None:
        self._write(arg, os.O_TRUNC, True)

    def _do_append(self, arg: str, env) -> None:
        self._write(arg, os.O_APPEND, False)

    def _do_appendn(self, arg: str, env) -> None:
        self._write(arg, os.O_APPEND, True, need_text=False)

    def _fifo_write(self, arg: str) -> bool:
        """True when written, False when nobody reads the fifo (yet)."""
        path, sep, text = arg.partition(" ")
        if not sep:
            raise _Failed("expected: FIFO STRING")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENODEV):
                return False
            raise
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        return True

    def _do_writefifo(self, arg: str, env) -> None:
        self._fifo_write(arg)            # no reader: success without writing, as uWSGI

    def _do_spinningfifo(self, arg: str, env) -> None:
        while not self._fifo_write(arg):
            self.log(f"waiting for {arg.partition(' ')[0]} ...")
            self._pause(SPINNING_FIFO_POLL_S, f"spinningfifo {arg}")

    def _do_unlink(self, arg: str, env) -> None:
        os.unlink(arg)

    def _do_chmod(self, arg: str, env) -> None:
        path, _, mode = arg.partition(" ")
        mode = mode.strip()
        if not mode or any(ch not in "01234567" for ch in mode) or len(mode) > 4:
            raise _Failed(f"chmod: {mode!r} is not an octal mode (like 644 or 2775)")
        os.chmod(path, int(mode, 8))

    def _do_sticky(self, arg: str, env) -> None:
        os.chmod(arg, stat.S_IMODE(os.stat(arg).st_mode) | stat.S_ISVTX)

    def _do_chown(self, arg: str, env) -> None:
        fields = arg.split()
        if len(fields) != 3:
            raise _Failed("expected: FILE USER GROUP")
        try:
            uid = self.accounts.getpwnam(fields[1]).pw_uid
        except KeyError:
            raise _Failed(f"chown: user {fields[1]!r} not found") from None
        try:
            gid = self.accounts.getgrnam(fields[2]).gr_gid
        except KeyError:
            raise _Failed(f"chown: group {fields[2]!r} not found") from None
        os.chown(fields[0], uid, gid)

    def _do_chown2(self, arg: str, env) -> None:
        fields = arg.split()
        if len(fields) != 3 or not fields[1].lstrip("-").isdigit() or not fields[2].lstrip("-").isdigit():
            raise _Failed("expected: FILE UID GID (numbers)")
        os.chown(fields[0], int(fields[1]), int(fields[2]))

    def _do_hostname(self, arg: str, env) -> None:
        socket.sethostname(arg)

    def _do_print(self, arg: str, env) -> None:
        self.log(arg)

    _do_log = _do_print

    def _do_exit(self, arg: str, env) -> None:
        arg = arg.strip()
        code = int(arg) if arg else 0      # any integer (uWSGI ignores one-digit codes, Q-H1)
        self.log(f"exit hook: exiting with status {code}")
        raise SystemExit(code)

    # -- waits ---------------------------------------------------------------------------------

    def _wait_for(self, what: str, arg: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_FOR_TIMEOUT_S
        while not ready():
            if time.monotonic() >= deadline:
                raise _Failed(f"{what} {arg}: still not there after {WAIT_FOR_TIMEOUT_S:g} s")
            self._pause(WAIT_FOR_POLL_S, f"{what} {arg}")

    def _pause(self, seconds: float, what: str) -> None:
        """A polling hook's wait, cut short (as a failure) by a stop or the deadline."""
        if self.interrupt is not None and self.interrupt():
            raise _Failed(f"{what}: given up, a stop was requested")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _Failed(f"{what}: given up, the stop deadline passed")
        time.sleep(seconds)

    def _do_wait_for_fs(self, arg: str, env) -> None:
        self._wait_for("wait_for_fs", arg, lambda: os.path.lexists(arg))

    def _do_wait_for_file(self, arg: str, env) -> None:
        self._wait_for("wait_for_file", arg, lambda: os.path.isfile(arg))

    def _do_wait_for_dir(self, arg: str, env) -> None:
        self._wait_for("wait_for_dir", arg, lambda: os.path.isdir(arg))

    def _do_wait_for_socket(self, arg: str, env) -> None:
        self._wait_for("wait_for_socket", arg, lambda: _can_connect(arg))


def _can_connect(address: str) -> bool:
    try:
        if "/" in address or ":" not in address:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(address)
        else:
            host, _, port = address.rpartition(":")
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1.0):
                pass
        return True
    except (OSError, ValueError):
        return False


def _shown(hook: HookPlan) -> str:
    return "--- PRIVATE HOOK ---" if hook.family == "hook" and hook.value.startswith("!") else hook.value


class TouchHooks:
    """``hook-touch = FILE ACTION``: run the action when FILE's mtime changes (or it appears),
    checked once a second, as uWSGI's touch options (uwsgi-spec §3.7). Non-fatal.

    It needs a periodic wake-up in the master's loop; the Runtime exposes only its Loop, so
    this uses a timerfd registered as a reader (a Runtime-level touch API would be nicer).
    """

    POLL_S = 1.0

    def __init__(self, runner: HookRunner, hooks: tuple[HookPlan, ...]):
        self.runner = runner
        self.hooks = [h for h in hooks if h.phase == "touch"]
        self.state: dict[str, float | None] = {}
        self.fd = -1

    def start(self, loop) -> None:
        if not self.hooks:
            return
        for hook in self.hooks:
            path = hook.value.partition(" ")[0]
            self.state[path] = _mtime(path)
            if self.state[path] is None:
                self.runner.log(f"unable to stat() {path}, events will be triggered as soon as the file is created")
        self.fd = linux.periodic_timerfd(self.POLL_S)
        loop.add_reader(self.fd, self._tick)

    def _tick(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        fired = set()
        for path, before in list(self.state.items()):
            now = _mtime(path)
            if now is not None and (before is None or now > before):
                fired.add(path)
            self.state[path] = now
        for hook in self.hooks:
            path = hook.value.partition(" ")[0]
            if path in fired:
                self.runner.log(f"*** {path} has been touched... running its hook ***")
                try:
                    self.runner.run_one(hook)
                except _Failed as exc:
                    self.runner.log(f"hook failed: {hook.option} = {_shown(hook)} ({hook.origin}): {exc}", "error")
                except SystemExit:
                    raise
                except Exception as exc:       # a touch hook never takes the master down
                    self.runner.log(f"hook failed: {hook.option} ({hook.origin}): {exc}", "error")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
