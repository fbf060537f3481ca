"""The rig for the privileged tests: a busybox root filesystem, a real nsattach run with a
deadline on every wait, and the kernel's view of a process (namespaces, ids, environment).

Every process a test starts is recorded with its start time and killed at teardown only if
it is still that same process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

DEADLINE_S = 15.0
NS_TYPES = ("mnt", "pid", "uts", "ipc", "net")


def wait_for(condition, timeout: float = DEADLINE_S, interval: float = 0.02, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def status_fields(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def environ(pid: int) -> dict[str, str]:
    data = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in data if b"=" in item)


def ns_pids(pid: int) -> list[int]:
    """NSpid: the pid in every PID namespace the process is in, outermost first."""
    return [int(x) for x in status_fields(pid)["NSpid"].split()]


def host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


def host_links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def host_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


# --- the root filesystem ----------------------------------------------------------------------

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/sh
nsauser:x:4242:4242:nsattach test user:/home/nsauser:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh
"""
GROUP = """\
root:x:0:
tty:x:5:
www-data:x:33:
nsagroup:x:4242:
nsaextra:x:4343:nsauser
nogroup:x:65534:
"""


def build_rootfs(root: Path, *, dev_nodes: bool = True) -> Path:
    """A minimal busybox root filesystem (recipes.md §3, §5): /bin with busybox and its applets,
    /etc/passwd and /etc/group, /proc, /tmp, /root (0700), an empty /usr to keep-mount the host's
    onto, lib -> usr/lib and lib64 -> usr/lib64 for dynamically linked host programs (dropbear),
    and with ``dev_nodes`` the device nodes daemons need (null, zero, random, urandom)."""
    for d in ("bin", "etc", "proc", "dev", "tmp", "usr", "var/www", "home/nsauser", "shared"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "root").mkdir(mode=0o700, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s", "/bin"], check=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    os.chown(root / "home/nsauser", 4242, 4242)
    for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")):
        os.symlink(target, root / link)
    if dev_nodes:
        for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
            os.mknod(root / "dev" / name, 0o666 | 0o020000, os.makedev(1, minor))
            os.chmod(root / "dev" / name, 0o666)
    return root


# --- a running nsattach -----------------------------------------------------------------------

class ProcessRegistry:
    def __init__(self):
        self.procs: dict[int, float] = {}

    def add(self, pid: int | None) -> None:
        if pid is None:
            return
        try:
            self.procs.setdefault(pid, psutil.Process(pid).create_time())
        except psutil.NoSuchProcess:
            pass

    def add_tree(self, pid: int) -> None:
        self.add(pid)
        try:
            for child in psutil.Process(pid).children(recursive=True):
                self.add(child.pid)
        except psutil.NoSuchProcess:
            pass

    def survivors(self) -> list[int]:
        left = []
        for pid, created in self.procs.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        return left

    def kill_all(self) -> None:
        for pid, created in self.procs.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        for pid in self.procs:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


class Nsattach:
    """``python -m nsattach -c FILE`` in its own session, its output in a log file."""

    def __init__(self, tmp: Path, registry: ProcessRegistry, ini: str, *, prefix: tuple[str, ...] = (),
                 name: str = "ns.ini", env: dict | None = None):
        self.tmp = tmp
        self.registry = registry
        self.config = tmp / name
        self.config.write_text(textwrap.dedent(ini))
        self.prefix = prefix
        self.env = env
        self.log_path = tmp / f"nsattach-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nsattach":
        self.log_file = open(self.log_path, "wb")
        extra = []
        if "control-socket" not in self.config.read_text():
            # never the shared default under /run: test runs must not see each other's masters
            extra = ["--control-socket", str(self.tmp / "ctl.sock")]
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "nsattach", "-c", str(self.config), *extra],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.tmp, env={**os.environ, **(self.env or {})})
        self.registry.add(self.proc.pid)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = DEADLINE_S) -> list[re.Match]:
        rx = re.compile(pattern)

        def found():
            matches = list(rx.finditer(self.log()))
            if len(matches) >= count:
                return matches
            if self.proc.poll() is not None and len(list(rx.finditer(self.log()))) < count:
                raise AssertionError(f"nsattach exited ({self.proc.returncode}) before {pattern!r}; "
                                     f"log:\n{self.log()}")
            return None

        try:
            return wait_for(found, timeout, what=f"{count}x {pattern!r} in the log")
        except AssertionError as exc:
            if "exited" in str(exc):
                raise
            raise AssertionError(f"timed out waiting for {count}x {pattern!r}; log:\n{self.log()}") from None

    def jail_pid(self, timeout: float = DEADLINE_S) -> int:
        """Host pid of the jailed master."""
        pid = int(self.wait_log(r"jailed master is pid (\d+)", timeout=timeout)[-1].group(1))
        self.registry.add(pid)
        return pid

    def daemon_pid(self, name: str, count: int = 1, timeout: float = DEADLINE_S) -> int:
        """The pid the master logged for a daemon: a host pid, or a jail pid inside a jail."""
        m = self.wait_log(rf"\[uwsgi-daemons\] (?:re)?spawning .* \[{re.escape(name)}\] pid (\d+)", count, timeout)
        return int(m[count - 1].group(1))

    def descendants(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for k in kids:
            self.registry.add(k.pid)
        return kids

    def host_pid_of(self, inner_pid: int, jail_pid: int) -> int:
        """The host pid of the process that is ``inner_pid`` in the jail of ``jail_pid``."""
        def find():
            for p in [psutil.Process(jail_pid), *psutil.Process(jail_pid).children(recursive=True)]:
                try:
                    pids = ns_pids(p.pid)
                except (OSError, KeyError):
                    continue
                if len(pids) >= 2 and pids[1] == inner_pid:
                    self.registry.add(p.pid)
                    return p.pid
            return None
        return wait_for(find, what=f"jail pid {inner_pid}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"nsattach did not exit within {timeout} s; log:\n{self.log()}") from None

    def stop(self, timeout: float = DEADLINE_S) -> int:
        if self.proc.poll() is None:
            self.descendants()
            self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.descendants()
            self.proc.kill()
            self.proc.wait(5)
        self.log_file.close()


def in_netns(name: str, *argv: str, timeout: float = 10, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True,
                          timeout=timeout, **kw)
