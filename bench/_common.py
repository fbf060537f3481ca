"""Shared helpers for the nsattach benchmarks.

Everything here is about starting a supervisor (nsattach or uWSGI) on a generated config,
looking at its process tree through /proc, and tearing everything down again, whatever happens.

Process hygiene (see README.md):

* the benchmark makes itself a child subreaper, so a daemon orphaned by a dying master is
  re-parented to the benchmark (not to init) and can be found, killed and reaped by pid;
* every master is started with ``start_new_session=True``; cleanup SIGKILLs the master's
  process group, every process of its tree (collected before the kill), and then every orphan
  that landed on the benchmark, each by pid, and reaps them;
* every wait has a deadline;
* temporary files live in one ``mkdtemp`` directory, removed at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

UWSGI = "/usr/bin/uwsgi"
SLEEP_BASE = 10000          # daemon i runs `sleep SLEEP_BASE+i`: a distinct argv per daemon
PR_SET_CHILD_SUBREAPER = 36

_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


# -- small things -----------------------------------------------------------------------------

def have_uwsgi() -> bool:
    return os.path.isfile(UWSGI) and os.access(UWSGI, os.X_OK)


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ratio(ns: float | None, uw: float | None) -> float | None:
    """uWSGI / nsattach: > 1 means nsattach is faster (or cheaper)."""
    if ns is None or uw is None or ns <= 0:
        return None
    return uw / ns


class Timeout(Exception):
    pass


def wait_for(cond: Callable[[], Any], timeout: float, interval: float = 0.001, what: str = "condition"):
    """Call ``cond`` until it returns something truthy; return (value, seconds waited).

    Raises Timeout after ``timeout`` seconds. ``interval`` is the sleep between two calls.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        value = cond()
        now = time.monotonic()
        if value:
            return value, now - start
        if now >= deadline:
            raise Timeout(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(min(interval, max(0.0, deadline - now)))


def become_subreaper() -> None:
    """Orphans of our masters' trees come back to us (Linux >= 3.4)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    except (OSError, AttributeError) as exc:   # still works, cleanup is just less thorough
        print(f"warning: cannot become a child subreaper ({exc}); orphans go to init", file=sys.stderr)


def check_nsattach_importable() -> None:
    import importlib.util

    if importlib.util.find_spec("nsattach") is None:
        sys.exit("error: the nsattach package is not importable by this Python "
                 f"({sys.executable}).\nRun with PYTHONPATH=/path/to/the/repo (the directory that "
                 "holds nsattach/) or install it (pip install -e .).")


# -- /proc ------------------------------------------------------------------------------------

def proc_state(pid: int) -> str | None:
    """The one-letter state of a process, None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return data[data.rindex(b")") + 2:data.rindex(b")") + 3].decode()


def alive(pid: int) -> bool:
    """Exists and is not a zombie (a killed, not yet reaped process is not alive)."""
    return proc_state(pid) not in (None, "Z", "X")


def cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return tuple(x.decode(errors="replace") for x in data.split(b"\0")[:-1])


def _children_fast(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def _ppid_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def children(pid: int) -> list[int]:
    if _CHILDREN_FILES:
        return _children_fast(pid)
    return _ppid_map().get(pid, [])


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (children, grandchildren, ...), zombies included."""
    out: list[int] = []
    if _CHILDREN_FILES:
        todo = _children_fast(pid)
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(_children_fast(p))
        return out
    kids = _ppid_map()
    todo = list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def sleep_argv(i: int, base: int = SLEEP_BASE) -> tuple[str, str]:
    return ("sleep", str(base + i))


def running_programs(root: int) -> dict[tuple[str, ...], list[int]]:
    """Live descendants of ``root`` grouped by argv (only the ones whose argv[0] is ``sleep``)."""
    found: dict[tuple[str, ...], list[int]] = {}
    for p in descendants(root):
        argv = cmdline(p)
        if argv and argv[0] == "sleep" and alive(p):
            found.setdefault(argv, []).append(p)
    return found


class ProgramWatcher:
    """Cheap repeated scans for "which ``sleep`` programs have exec'd below ``root``".

    A process once seen running ``sleep ...`` is remembered and neither re-read nor descended
    into (sleep execs nothing and forks nothing), so a scan of 1000 settled daemons costs one
    read of the master's children list instead of thousands of /proc reads; the poller then
    disturbs the supervisor it measures much less.
    """

    def __init__(self, root: int):
        self.root = root
        self.known: dict[int, tuple[str, ...]] = {}

    def scan(self) -> set[tuple[str, ...]]:
        todo = children(self.root)
        while todo:
            p = todo.pop()
            if p in self.known:
                continue
            argv = cmdline(p)
            if argv and argv[0] == "sleep":
                self.known[p] = argv
            else:
                todo.extend(children(p))
        return set(self.known.values())

    def live(self) -> dict[tuple[str, ...], list[int]]:
        out: dict[tuple[str, ...], list[int]] = {}
        for p, argv in self.known.items():
            if alive(p) and cmdline(p) == argv:
                out.setdefault(argv, []).append(p)
        return out


# -- masters ----------------------------------------------------------------------------------

_ACTIVE: list["Master"] = []


@dataclass
class Master:
    """One supervisor run: nsattach (``kind="nsattach"``) or uWSGI (``kind="uwsgi"``)."""

    kind: str
    config: str                          # body of the [uwsgi] section, one "key = value" a line
    workdir: str
    proc: subprocess.Popen | None = None
    launched_at: float = 0.0
    log_path: str = ""
    seen: dict[int, float] = field(default_factory=dict)   # pid -> start ticks, for cleanup

    def argv(self, ini: str) -> list[str]:
        if self.kind == "nsattach":
            return [sys.executable, "-m", "nsattach", "-c", ini]
        return [UWSGI, "--ini", ini]

    def start(self) -> "Master":
        base = os.path.join(self.workdir, self.kind)
        ini = base + ".ini"
        with open(ini, "w") as f:
            f.write("[uwsgi]\n")
            if self.kind == "uwsgi":
                f.write("master = true\n")
            f.write(self.config)
        self.log_path = base + ".log"
        log = open(self.log_path, "wb")
        try:
            self.launched_at = time.monotonic()
            self.proc = subprocess.Popen(self.argv(ini), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=self.workdir)
        finally:
            log.close()
        _ACTIVE.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remember_tree(self) -> list[int]:
        pids = descendants(self.pid)
        for p in pids:
            self.seen.setdefault(p, _start_ticks(p))
        return pids

    def programs(self) -> dict[tuple[str, ...], list[int]]:
        found = running_programs(self.pid)
        for pids in found.values():
            for p in pids:
                self.seen.setdefault(p, _start_ticks(p))
        return found

    def wait_programs(self, argvs: Iterable[tuple[str, ...]], timeout: float, interval: float = 0.005) -> float:
        """Wait until every argv runs (live, below the master); return the seconds waited."""
        want = set(argvs)

        def ready():
            self._check_alive()
            found = self.programs()
            return want.issubset(found)

        return wait_for(ready, timeout, interval, f"{len(want)} daemon(s) of {self.kind} to run")[1]

    def _check_alive(self) -> None:
        if not self.running():
            raise RuntimeError(f"{self.kind} master exited early (status {self.proc.returncode}); "
                               f"log tail:\n{self.log_tail()}")

    def send(self, signum: int) -> None:
        if self.running():
            os.kill(self.pid, signum)

    def wait_exit(self, timeout: float) -> float | None:
        """Seconds until the master exits (precise: a pidfd, not Popen's 50 ms polling), None
        if it did not exit within ``timeout``. The master is reaped when it has exited."""
        start = time.monotonic()
        if not exited_within(self.proc, timeout):
            return None
        elapsed = time.monotonic() - start
        self.proc.wait(timeout=5)
        return elapsed

    def stop_timed(self, timeout: float, signum: int = signal.SIGINT) -> float | None:
        """Send the stop signal (SIGINT: for uWSGI 2.0 SIGTERM means reload) and time the exit.

        None when the master did not exit within ``timeout`` (it is left running; cleanup()
        kills it)."""
        self.remember_tree()
        fd = _pidfd(self.proc.pid)
        try:
            t0 = time.monotonic()
            os.kill(self.pid, signum)
            if not exited_within(self.proc, timeout, fd):
                return None
            elapsed = time.monotonic() - t0
        finally:
            if fd is not None:
                os.close(fd)
        self.proc.wait(timeout=5)
        return elapsed

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + x for x in text.splitlines()[-lines:])

    def cleanup(self) -> None:
        """Kill whatever is left of this run, by pid, and reap. Safe to call twice."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.remember_tree()
            try:
                os.killpg(self.pid, signal.SIGKILL)   # the session/group we created
            except ProcessLookupError:
                pass
        for p, ticks in list(self.seen.items()):
            if _start_ticks(p) == ticks and alive(p):   # same process, not a recycled pid
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.kind} master {self.pid} did not die after SIGKILL", file=sys.stderr)
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        reap_orphans()


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def exited_within(proc: subprocess.Popen, timeout: float, fd: int | None = None) -> bool:
    """True as soon as ``proc`` has exited (not reaped), False after ``timeout`` seconds."""
    own = fd is None
    if own:
        fd = _pidfd(proc.pid)
    try:
        if fd is not None:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(max(0, int(timeout * 1000))))
        deadline = time.monotonic() + timeout      # no pidfd: poll /proc every millisecond
        while alive(proc.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True
    finally:
        if own and fd is not None:
            os.close(fd)


def _start_ticks(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return float(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return -1.0


def reap_orphans(deadline_s: float = 10.0) -> int:
    """SIGKILL and reap processes re-parented to us (we are a subreaper), except live masters.

    Only our own direct children are touched: they are all processes some master of ours
    started (or the masters themselves).
    """
    keep = {m.pid for m in _ACTIVE if m.proc is not None}
    deadline = time.monotonic() + deadline_s
    reaped = 0
    while True:
        orphans = [p for p in children(os.getpid()) if p not in keep]
        if not orphans:
            return reaped
        for p in orphans:
            if alive(p):
                # an orphan may itself have children: kill its tree, they come back to us too
                for q in descendants(p):
                    try:
                        os.kill(q, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                if os.waitpid(p, os.WNOHANG)[0] == p:
                    reaped += 1
            except ChildProcessError:
                pass
        if time.monotonic() >= deadline:
            print(f"warning: could not reap orphans {orphans}", file=sys.stderr)
            return reaped
        time.sleep(0.01)


def cleanup_all() -> None:
    for m in list(_ACTIVE):
        m.cleanup()
    reap_orphans()


# -- the usual experiment: N daemons, start, stop ------------------------------------------------

def sleep_daemons(n: int, base: int = SLEEP_BASE, template: str = "{prog}") -> tuple[str, list[tuple[str, str]]]:
    """Config lines for ``n`` dumb daemons and the argv of each one's program.

    ``template`` wraps the program, e.g. ``trap "" TERM; exec {prog}``."""
    argvs = [sleep_argv(i, base) for i in range(n)]
    lines = "".join(f"attach-daemon = {template.format(prog=' '.join(a))}\n" for a in argvs)
    return lines, argvs


def ignores_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & (1 << (15 - 1)))
    except OSError:
        pass
    return False


def gone_after(pids: Iterable[int], timeout: float = 0.0) -> list[int]:
    """The pids still alive after waiting up to ``timeout`` seconds for them to go."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.005)


# -- results and command line -----------------------------------------------------------------

@dataclass
class Row:
    figure: str
    unit: str                      # "s", "ms", "MB", "count"
    nsattach: float | None
    uwsgi: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    uwsgi_extrapolated: bool = False     # the uWSGI figure is computed from a smaller run

    @property
    def ratio(self) -> float | None:
        return ratio(self.nsattach, self.uwsgi)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value * 1000:.1f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "/s":
        return f"{value:.2f}/s"
    return f"{value:g} {unit}"


def print_rows(rows: list[Row], title: str = "") -> None:
    if title:
        print(f"\n== {title} ==")
    header = ("figure", "nsattach", "uWSGI", "uWSGI/nsattach", "target", "met")
    table = [header]
    for r in rows:
        table.append((r.figure, fmt(r.nsattach, r.unit),
                      fmt(r.uwsgi, r.unit) + (" (extrapolated)" if r.uwsgi_extrapolated and r.uwsgi is not None else ""),
                      "-" if r.ratio is None else f"{r.ratio:.1f}x", r.target or "-",
                      {True: "yes", False: "NO", None: "-"}[r.met]))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        if r.note:
            print(f"  note [{r.figure}]: {r.note}")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller, faster run")
    p.add_argument("--no-uwsgi", action="store_true", help="skip the uWSGI comparison")
    p.add_argument("--json-out", metavar="FILE", help="also write the result rows as JSON (run_all.py uses it)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, master logs)")
    return p


def write_json(path: str | None, script: str, rows: list[Row], extra: dict | None = None) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump({"script": script, "rows": [asdict(r) for r in rows], "extra": extra or {}}, f, indent=1)


def _raise_on_term(signum, frame):
    raise SystemExit(128 + signum)


def run_main(script: str, body: Callable[[argparse.Namespace, str, list[Row]], None],
             parser: argparse.ArgumentParser) -> int:
    """Parse arguments, set up (subreaper, temp dir, signals), run ``body``, always clean up.

    Exit status: 0 ran and every target met, 1 the run failed, 2 ran but a target was missed."""
    args = parser.parse_args()
    check_nsattach_importable()
    become_subreaper()
    signal.signal(signal.SIGTERM, _raise_on_term)
    signal.signal(signal.SIGHUP, _raise_on_term)
    workdir = tempfile.mkdtemp(prefix=f"nsattach-bench-{script}-")
    rows: list[Row] = []
    status = 1                          # until the body has run through
    try:
        body(args, workdir, rows)
        status = 0
    except (Timeout, RuntimeError) as exc:
        print(f"{script}: FAILED: {exc}", file=sys.stderr)
        for m in _ACTIVE:
            print(f"  {m.kind} log tail ({m.log_path}):\n{m.log_tail()}", file=sys.stderr)
    finally:
        cleanup_all()
        print_rows(rows, script)
        if args.keep:
            print(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        write_json(args.json_out, script, rows, {"failed": status != 0})
    if status == 0 and any(r.met is False for r in rows):
        status = 2                      # ran through, but a target was missed
    return status


def want_uwsgi(args) -> bool:
    if args.no_uwsgi:
        return False
    if not have_uwsgi():
        print(f"({UWSGI} not found: uWSGI figures skipped)")
        return False
    return True
