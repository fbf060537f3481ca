"""A harness that runs a real nsattach master on a config file and watches its log.

Every wait has a deadline. Every process the master or a test starts is recorded with its
start time and, at teardown, killed by pid only if it is still that same process.
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

DEADLINE_S = 10.0


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
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class ProcessRegistry:
    """Processes to clean up: (pid, create_time), killed only if still the same process."""

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


class Master:
    def __init__(self, tmp: Path, registry: ProcessRegistry, ini: str, name: str = "ns.ini",
                 args: tuple[str, ...] = (), stdin: Path | None = None, env: dict | None = None):
        self.tmp = tmp
        self.registry = registry
        self.config = tmp / name
        self.config.write_text(textwrap.dedent(ini))
        self.args = args
        self.stdin = stdin
        self.env = env
        self.log_path = tmp / f"master-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Master":
        self.log_file = open(self.log_path, "wb")
        stdin = open(self.stdin, "rb") if self.stdin else subprocess.DEVNULL
        args = list(self.args)
        if "control-socket" not in self.config.read_text():
            # never the shared default under /run: test runs must not see each other's masters
            args += ["--control-socket", str(self.tmp / "ctl.sock")]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nsattach", "-c", str(self.config), *args],
            stdin=stdin, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.tmp, env={**os.environ, **(self.env or {})})
        if self.stdin:
            stdin.close()
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
            return matches if len(matches) >= count else None

        try:
            return wait_for(found, timeout, what=f"{count}× {pattern!r} in the log")
        except AssertionError:
            raise AssertionError(f"timed out waiting for {count}× {pattern!r}; log:\n{self.log()}") from None

    def spawned_pid(self, name: str, count: int = 1, timeout: float = DEADLINE_S) -> int:
        """The pid of the ``count``-th spawn of daemon ``name``."""
        m = self.wait_log(rf"\[uwsgi-daemons\] (?:re)?spawning .* \[{re.escape(name)}\] pid (\d+)", count, timeout)
        pid = int(m[count - 1].group(1))
        self.registry.add(pid)
        return pid

    def children(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for k in kids:
            self.registry.add(k.pid)
        return kids

    def ctl(self, *words: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run ``nsattach WORDS... --socket <this master's socket>``."""
        sock = self.tmp / "ctl.sock"
        return subprocess.run([sys.executable, "-m", "nsattach", *words, "--socket", str(sock)],
                              capture_output=True, text=True, timeout=timeout, cwd=self.tmp)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"master did not exit within {timeout} s; log:\n{self.log()}") from None

    def stop(self, timeout: float = DEADLINE_S) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGINT)
        return self.wait_exit(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.children()
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None:
            self.log_file.close()
