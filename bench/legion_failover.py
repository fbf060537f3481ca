#!/usr/bin/env python3
"""Legion failover: SIGKILL of the Lord's master until the legion daemon runs on the other node.

Two nodes of one legion on 127.0.0.1, each on its own UDP port and listing the other with
``legion-node``: node A (valor 20) and node B (valor 10), ``aes-128-cbc``, no quorum, each with
``legion-attach-daemon = bench sleep <number>`` (a distinct number per node, per setting and per
implementation, so every daemon is identified by its argv in /proc). Once A is the Lord (A's
daemon runs, B's does not, steadily for 2 x freq + 1 s plus a random 0..freq s, so the kill hits
a random phase of A's announcement period), A's master is SIGKILLed; the figure is the time
from the kill until B's daemon has exec'd below B's master. A is then restarted (a new master,
a new uuid) and, having the higher valor, must become the Lord again: B's daemon stops, A's runs
("hand-back", reported for information). Then the next round: always the same roles.

Measured for each legion setting (--settings, default the defaults ``freq 3, tolerance 15`` and
``freq 1, tolerance 3``), for nsattach and for uWSGI's own two nodes. Throughout, /proc is polled
every 5 ms for every copy of the legion daemon, below either master or orphaned (re-parented to
the benchmark): two copies at once are reported (after a kill, an orphan of the dead Lord still
running when the new Lord's starts; during a hand-back, the overlap; in a steady state, a flap).

    python bench/legion_failover.py [--repeat 3] [--settings 3/15,1/3] [--quick] [--no-uwsgi]
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (Master, Row, alive, base_parser, children, cmdline, descendants, median,  # noqa: E402
                     run_main, want_uwsgi)

LEGION = "bench"
SECRET = "aes-128-cbc:s3cret"
VALORS = {"A": 20, "B": 10}         # A, the higher valor, is the Lord whenever it is up
TAG_BASE = 30000                    # node daemons: sleep 30000 + 100*setting + 10*implementation + node
DEFAULT_FREQ, DEFAULT_TOLERANCE = 3, 15
POLL_S = 0.005
IMPLEMENTATIONS = ("nsattach", "uwsgi")


def free_udp_ports(n: int) -> list[int]:
    """``n`` distinct UDP ports on 127.0.0.1 that are free right now (the kernel picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    name: str                   # "A" or "B"
    valor: int
    port: int
    peer_port: int
    tag: tuple[str, str]        # the legion daemon's argv
    kind: str
    freq: int
    tolerance: int
    dir: str
    master: Master | None = None
    starts: int = 0

    def config(self, d: str) -> str:
        lines = []
        if self.kind == "nsattach":
            # two masters on one machine: each its own control socket (the default path is
            # /run/nsattach/<config name>.sock, the same for both)
            lines.append(f"control-socket = {os.path.join(d, 'ctl.sock')}")
        lines += [f"legion = {LEGION} 127.0.0.1:{self.port} {self.valor} {SECRET}",
                 f"legion-node = {LEGION} 127.0.0.1:{self.peer_port}"]
        if (self.freq, self.tolerance) != (DEFAULT_FREQ, DEFAULT_TOLERANCE):
            lines += [f"legion-freq = {self.freq}", f"legion-tolerance = {self.tolerance}"]
        lines.append(f"legion-attach-daemon = {LEGION} {' '.join(self.tag)}")
        return "".join(x + "\n" for x in lines)

    def start(self) -> Master:
        self.starts += 1
        d = os.path.join(self.dir, f"{self.name}{self.starts}")   # its own .ini and .log per start
        os.makedirs(d, exist_ok=True)
        self.master = Master(self.kind, self.config(d), d).start()
        return self.master

    def up(self) -> bool:
        return self.master is not None and self.master.running()


@dataclass
class Census:
    """Live copies of the legion daemons: where -> pids. where is a node name or "orphan"."""
    at: float
    where: dict[str, list[int]]

    def count(self) -> int:
        return sum(len(p) for p in self.where.values())

    def only(self, name: str) -> bool:
        return len(self.where.get(name, [])) == 1 and self.count() == 1

    def describe(self) -> str:
        return ", ".join(f"{k}: {len(v)}" for k, v in sorted(self.where.items()) if v) or "none"


def census(nodes: list[Node]) -> Census:
    tags = {n.tag: n.name for n in nodes}
    where: dict[str, list[int]] = {}
    masters = set()
    for n in nodes:
        if n.up():
            masters.add(n.master.pid)
            for argv, pids in n.master.programs().items():     # also remembered for cleanup
                if argv in tags:
                    # a node's daemon below a node that is not its own would be a bug worth seeing
                    key = n.name if tags[argv] == n.name else f"{tags[argv]}'s daemon below {n.name}"
                    where.setdefault(key, []).extend(pids)
    # orphans: re-parented to us (we are a subreaper) when their master died
    for c in children(os.getpid()):
        if c in masters:
            continue
        for p in [c, *descendants(c)]:
            argv = cmdline(p)
            if argv in tags and alive(p):
                where.setdefault("orphan", []).append(p)
    return Census(time.monotonic(), where)


@dataclass
class Result:
    failover: list[float] = field(default_factory=list)
    handback: list[float] = field(default_factory=list)
    handback_overlap: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    orphaned: list[int] = field(default_factory=list)    # rounds: the dead Lord's daemon still ran
    notes: list[str] = field(default_factory=list)


def settle(nodes: list[Node], lord: str, hold: float, timeout: float, res: Result, phase: str,
           t0: float) -> tuple[float, float] | None:
    """Wait until only ``lord``'s daemon runs, continuously for ``hold`` seconds.

    Returns (seconds from t0 until that state was first reached, seconds during which two or
    more copies ran before it was reached), or None after ``timeout`` (problem recorded). A
    departure from the state once reached is recorded as a flap."""
    deadline = time.monotonic() + timeout
    reached: float | None = None
    first: float | None = None
    overlap = 0.0
    last = time.monotonic()
    flaps = 0
    while True:
        for n in nodes:
            if n.master is not None and not n.up():
                res.problems.append(f"{phase}: node {n.name}'s master exited (status "
                                    f"{n.master.proc.returncode}); log tail:\n{n.master.log_tail(5)}")
                return None
        c = census(nodes)
        if c.count() > 1 and first is None:
            overlap += c.at - last
        last = c.at
        if c.only(lord):
            if reached is None:
                reached = c.at
                if first is None:
                    first = c.at
            elif c.at - reached >= hold:
                return first - t0, overlap
        elif reached is not None:
            flaps += 1
            res.problems.append(f"{phase}: the steady state broke {c.at - reached:.2f} s after it was reached "
                                f"(lord {lord}; daemons now: {c.describe()})")
            reached = None
            if flaps >= 3:
                return None
        if c.at >= deadline:
            res.problems.append(f"{phase}: no steady state (only node {lord}'s daemon) within {timeout:.0f} s; "
                                f"daemons now: {c.describe()}")
            return None
        time.sleep(POLL_S)


def failover(nodes: list[Node], res: Result, timeout: float, rnd: int) -> bool:
    """Kill A's master, time until B's daemon runs. False if the round could not complete."""
    a, b = nodes
    ma = a.master
    ma.remember_tree()
    old = set(census(nodes).where.get("A", []))
    t_kill = time.monotonic()
    os.kill(ma.pid, signal.SIGKILL)
    deadline = t_kill + timeout
    a_gone: float | None = None
    took: float | None = None
    orphan: list[int] = []
    while True:
        c = census(nodes)
        a_left = [p for p in c.where.get("orphan", []) + c.where.get("A", []) if p in old]
        if not a_left and a_gone is None:
            a_gone = c.at
        if c.where.get("B"):
            took = c.at - t_kill
            if a_left:
                orphan = a_left
                res.orphaned.append(rnd)
            extra = [k for k, v in c.where.items() if v and k not in ("B", "orphan")]
            if len(c.where["B"]) > 1 or extra:
                res.problems.append(f"round {rnd}: unexpected daemons when B's started: {c.describe()}")
            break
        if not b.up():
            res.problems.append(f"round {rnd}: node B's master exited (status {b.master.proc.returncode})")
            break
        if c.at >= deadline:
            res.problems.append(f"round {rnd}: B's daemon did not start within {timeout:.0f} s of the kill; "
                                f"daemons now: {c.describe()}")
            break
        time.sleep(POLL_S)
    if a_gone is not None and a_gone - t_kill > 0.5:
        res.notes.append(f"round {rnd}: the killed Lord's daemon outlived its master by {a_gone - t_kill:.2f} s")
    ma.cleanup()            # reaps the master, kills its orphans (by pid + start time)
    if took is None:
        return False
    res.failover.append(took)
    print(f"    round {rnd}: failover {took:.3f} s"
          + (f"; TWO DAEMONS AT ONCE: the killed Lord's daemon (pid {', '.join(map(str, orphan))}) survived "
             f"its master, orphaned, and still ran when B's started (the benchmark killed it then)"
             if orphan else ""), flush=True)
    return True


def measure(kind: str, freq: int, tolerance: int, tags: tuple[int, int], rounds: int, workdir: str,
            rng: random.Random, hold: float | None) -> Result:
    res = Result()
    ports = free_udp_ports(2)
    d = os.path.join(workdir, f"{kind}-f{freq}-t{tolerance}")
    nodes = [Node("A", VALORS["A"], ports[0], ports[1], ("sleep", str(tags[0])), kind, freq, tolerance, d),
             Node("B", VALORS["B"], ports[1], ports[0], ("sleep", str(tags[1])), kind, freq, tolerance, d)]
    a, b = nodes
    hold = 2 * freq + 1.0 if hold is None else hold
    settle_timeout = tolerance + 4 * freq + 15 + hold
    failover_timeout = tolerance + 4 * freq + 15
    try:
        t0 = time.monotonic()
        a.start()
        b.start()
        got = settle(nodes, "A", hold, settle_timeout, res, "start", t0)
        if got is None:
            return res
        print(f"    both started; A is the Lord after {got[0]:.2f} s", flush=True)
        for rnd in range(1, rounds + 1):
            # a random phase of A's announcement period, still watching for a second copy
            if settle(nodes, "A", rng.uniform(0, freq), freq + 5, res, f"round {rnd} before the kill",
                      time.monotonic()) is None:
                return res
            if not failover(nodes, res, failover_timeout, rnd):
                return res
            t_restart = time.monotonic()
            a.start()
            got = settle(nodes, "A", hold, settle_timeout, res, f"round {rnd} hand-back", t_restart)
            if got is None:
                return res
            res.handback.append(got[0])
            res.handback_overlap.append(got[1])
            print(f"    round {rnd}: A restarted, Lord again after {got[0]:.2f} s"
                  + (f" (two daemons at once for {got[1]:.2f} s)" if got[1] > 0 else ""), flush=True)
    finally:
        for n in nodes:
            if n.master is not None:
                n.master.cleanup()
    return res


def orphan_text(res: Result, kills: int) -> str:
    return (f"two daemons at once after {len(res.orphaned)} of {kills} kill(s): the killed Lord's daemon "
            f"survived its master (orphaned) and was still running when the new Lord's started")


def parse_settings(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        f, _, t = item.strip().partition("/")
        out.append((int(f), int(t)))
    return out


def label(freq: int, tolerance: int) -> str:
    if (freq, tolerance) == (DEFAULT_FREQ, DEFAULT_TOLERANCE):
        return f"defaults (freq {freq}, tol {tolerance})"
    return f"freq {freq}, tol {tolerance}"


def body(args, workdir, rows):
    settings = parse_settings(args.settings or ("1/3" if args.quick else "3/15,1/3"))
    rounds = args.repeat or (1 if args.quick else 3)
    kinds = ["nsattach"] + (["uwsgi"] if want_uwsgi(args) else [])
    rng = random.Random(args.seed)
    results: dict[tuple[str, int, int], Result] = {}
    for si, (freq, tol) in enumerate(settings):
        for kind in kinds:
            tags = tuple(TAG_BASE + 100 * si + 10 * IMPLEMENTATIONS.index(kind) + i for i in range(2))
            print(f"{kind}, {label(freq, tol)}: {rounds} round(s), nodes A (valor 20) and B (valor 10) ...",
                  flush=True)
            res = measure(kind, freq, tol, tags, rounds, workdir, rng, args.hold)
            results[(kind, freq, tol)] = res
            if res.failover:
                print(f"  {kind}: failover median {median(res.failover):.3f} s, max {max(res.failover):.3f} s "
                      f"over {len(res.failover)} round(s)")
            if res.orphaned:
                print(f"  {kind}: PROBLEM: {orphan_text(res, len(res.failover))}")
            for p in res.problems:
                print(f"  {kind}: PROBLEM: {p}")
            for p in res.notes:
                print(f"  {kind}: note: {p}")

    for freq, tol in settings:
        ns = results[("nsattach", freq, tol)]
        uw = results.get(("uwsgi", freq, tol), Result())
        target = tol + 2 * freq
        ns_max = max(ns.failover) if ns.failover else None
        complete = len(ns.failover) == rounds and not ns.problems and not ns.orphaned
        notes = []
        for kind, r in (("nsattach", ns), ("uwsgi", uw)):
            if r.orphaned:
                notes.append(f"{kind}: {orphan_text(r, len(r.failover))}")
            notes += [f"{kind}: {p}" for p in r.problems + r.notes]
        if ("uwsgi", freq, tol) in results and len(uw.failover) < rounds:
            notes.append(f"uwsgi: only {len(uw.failover)} of {rounds} round(s) measured")
        lab = label(freq, tol)
        rows.append(Row(f"failover, {lab}, median", "s", median(ns.failover) if ns.failover else None,
                        median(uw.failover) if uw.failover else None))
        rows.append(Row(f"failover, {lab}, max", "s", ns_max, max(uw.failover) if uw.failover else None,
                        f"<= {target} s (tol + 2 freq)", None if ns_max is None else (ns_max <= target and complete),
                        "; ".join(notes)))
        hb_note = []
        for kind, r in (("nsattach", ns), ("uwsgi", uw)):
            if r.handback_overlap and max(r.handback_overlap) > 0:
                hb_note.append(f"{kind}: both daemons ran at once during a hand-back for up to "
                               f"{max(r.handback_overlap):.2f} s")
        rows.append(Row(f"hand-back (A restarted, Lord again), {lab}, median", "s",
                        median(ns.handback) if ns.handback else None,
                        median(uw.handback) if uw.handback else None, note="; ".join(hb_note)))


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", "--repeat", dest="repeat", type=int, default=0,
                   help="failover rounds per setting and implementation (default 3, --quick 1)")
    p.add_argument("--settings", default="",
                   help="comma-separated FREQ/TOLERANCE pairs (default 3/15,1/3; --quick 1/3); "
                        "3/15 writes no legion-freq/legion-tolerance lines (the defaults)")
    p.add_argument("--hold", type=float, default=None,
                   help="seconds A must be the only one running the daemon before each kill "
                        "(default 2 x freq + 1; longer to watch a steady legion for flaps)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random kill phases")
    return run_main("legion_failover", body, p)


if __name__ == "__main__":
    sys.exit(main())
