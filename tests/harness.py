"""The harness of the tests that run real processes: a real nsattach master on a config
file, its log, and a registry that cleans up every process a test started.

Every wait has a deadline. Every process is recorded with its start time and, at teardown,
killed by pid only if it is still that same process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

DEADLINE_S = 15.0


def wait_for(condition, timeout: float = DEADLINE_S, interval: float = 0.01, what: str = "condition"):
    """Poll ``condition`` until it returns a truthy value or the deadline passes."""
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


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def status_fields(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def ns_pids(pid: int) -> list[int]:
    """NSpid: the pid in every PID namespace the process is in, outermost first."""
    return [int(x) for x in status_fields(pid)["NSpid"].split()]


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
                 name: str = "ns.ini", env: dict | None = None, stdin: Path | None = None,
                 args: tuple[str, ...] = ()):
        self.tmp = tmp
        self.registry = registry
        self.config = tmp / name
        self.config.write_text(textwrap.dedent(ini))
        self.prefix = prefix
        self.env = env
        self.stdin = stdin
        self.args = args
        self.log_path = tmp / f"nsattach-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nsattach":
        self.log_file = open(self.log_path, "wb")
        extra = list(self.args)
        if "control-socket" not in self.config.read_text():
            # never the shared default under /run: test runs must not see each other's masters
            extra += ["--control-socket", str(self.tmp / "ctl.sock")]
        stdin = open(self.stdin, "rb") if self.stdin else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "nsattach", "-c", str(self.config), *extra],
            stdin=stdin, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.tmp, env={**os.environ, **(self.env or {})})
        if self.stdin:
            stdin.close()
        self.registry.add(self.proc.pid)
        return self

    def ctl(self, *words: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run ``nsattach WORDS... --socket <this master's socket>``."""
        return subprocess.run([sys.executable, "-m", "nsattach", *words, "--socket", str(self.tmp / "ctl.sock")],
                              capture_output=True, text=True, timeout=timeout, cwd=self.tmp)

    def spawned_pid(self, name: str, count: int = 1, timeout: float = DEADLINE_S) -> int:
        """The host pid of the ``count``-th spawn of daemon ``name`` (outside a jail)."""
        pid = self.daemon_pid(name, count, timeout)
        self.registry.add(pid)
        return pid

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

    def children(self) -> list[psutil.Process]:
        return self.descendants()

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
        forget_instance(self.config)


def forget_instance(config: Path) -> None:
    """What a master killed with SIGKILL leaves on the host for its config: its daemons'
    cgroups and its lock file (a clean stop removes both itself)."""
    from nsattach.system.cgroup import Cgroups, find_hierarchy, instance_name

    instance = instance_name([str(config)])
    found = find_hierarchy()
    if found is not None:
        Cgroups(found[0], found[1], instance).clear()
    try:
        os.unlink(f"/run/nsattach/{instance}.lock")
    except OSError:
        pass




Master = Nsattach
