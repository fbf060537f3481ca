#!/usr/bin/env python3
"""Idle cost: the master's CPU time and memory while N daemons just run.

N dumb daemons ``attach-daemon = sleep 1000i``. Once all run and --settle seconds have passed,
the master's CPU time (user + system, its own, not its children's; psutil) is sampled, the
benchmark sleeps --seconds (default 60) without polling anything, and samples it again; the
difference is the figure (psutil has clock-tick resolution, 10 ms; the on-CPU time from
/proc/PID/task/*/schedstat, in ns, and the context switches per second, i.e. wake-ups, are
printed as well). The master's RSS is read at the end of the window. nsattach and uWSGI
run side by side in the same window (--sequential to run them one after the other).

    python bench/idle_cost.py [--n 100] [--seconds 60] [--quick] [--no-uwsgi] [--sequential]
"""

from __future__ import annotations

import os
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Master, Row, base_parser, run_main, sleep_daemons, want_uwsgi  # noqa: E402

TARGET_CPU_S = 0.3
TARGET_RSS_MB = 40.0


def sched_ns(pid: int) -> int:
    """On-CPU time of every thread of ``pid`` in ns (/proc/PID/task/*/schedstat), 0 if unknown."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return total


def switches(p: psutil.Process) -> int:
    c = p.num_ctx_switches()
    return c.voluntary + c.involuntary


def idle(kinds: list[str], n: int, seconds: float, settle: float, workdir: str) -> dict[str, tuple[float, float, int]]:
    config, argvs = sleep_daemons(n)
    masters = []
    try:
        for kind in kinds:
            d = os.path.join(workdir, kind)
            os.makedirs(d, exist_ok=True)
            masters.append(Master(kind, config, d).start())
        for m in masters:
            m.wait_programs(argvs, timeout=30 + n * 0.05)
        time.sleep(settle)
        procs = {m.kind: psutil.Process(m.pid) for m in masters}
        before = {k: (p.cpu_times(), sched_ns(p.pid), switches(p)) for k, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - t0
        out = {}
        for m in masters:
            p = procs[m.kind]
            if not m.running():
                raise RuntimeError(f"{m.kind} master died during the idle window; log:\n{m.log_tail()}")
            after = p.cpu_times()
            b_times, b_sched, b_sw = before[m.kind]
            cpu = (after.user - b_times.user) + (after.system - b_times.system)
            sched = (sched_ns(p.pid) - b_sched) / 1e9
            wakeups = (switches(p) - b_sw) / window
            rss = p.memory_info().rss / (1024 * 1024)
            live = sum(len(v) for v in m.programs().values())
            out[m.kind] = (cpu, rss, live, window, sched, wakeups)
        return out
    finally:
        for m in masters:
            m.cleanup()


def body(args, workdir, rows):
    n = args.n or 100
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    kinds = ["nsattach"] + (["uwsgi"] if want_uwsgi(args) else [])
    res = {}
    groups = [[k] for k in kinds] if args.sequential else [kinds]
    for group in groups:
        print(f"{' and '.join(group)}: {n} idle daemons, {seconds:g} s window after {args.settle:g} s settle ...",
              flush=True)
        res.update(idle(group, n, seconds, args.settle, workdir))
    for kind, (cpu, rss, live, window, sched, wakeups) in res.items():
        print(f"  {kind}: {cpu:.3f} s CPU (schedstat: {sched * 1000:.2f} ms) in {window:.1f} s, "
              f"{wakeups:.2f} context switches/s, RSS {rss:.1f} MB, {live}/{n} daemons running at the end")
    ns_cpu, ns_rss, ns_live, window, ns_sched, ns_wake = res["nsattach"]
    uw = res.get("uwsgi")
    scale = 60.0 / window
    note = f"CPU over a {window:.0f} s window" + ("" if abs(window - 60) < 1 else f"; target is per 60 s, compared as x{scale:.2f}")
    if ns_live != n:
        note += f"; only {ns_live}/{n} nsattach daemons were running at the end"
    rows.append(Row(f"idle CPU, {n} daemons, {window:.0f} s", "s", ns_cpu, uw[0] if uw else None,
                    f"<= {TARGET_CPU_S:g} s / 60 s", ns_cpu * scale <= TARGET_CPU_S and ns_live == n, note))
    rows.append(Row("idle CPU, schedstat (ns resolution)", "ms", ns_sched, uw[4] if uw else None))
    rows.append(Row("idle context switches per second", "/s", ns_wake, uw[5] if uw else None))
    rows.append(Row(f"master RSS, {n} daemons", "MB", ns_rss, uw[1] if uw else None,
                    f"<= {TARGET_RSS_MB:g} MB", ns_rss <= TARGET_RSS_MB))


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=0, help="daemons (default 100)")
    p.add_argument("--seconds", "--repeat", dest="seconds", type=float, default=0,
                   help="idle window in seconds (default 60, --quick 10)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after all daemons run before the window")
    p.add_argument("--sequential", action="store_true", help="measure nsattach and uWSGI one after the other")
    return run_main("idle_cost", body, p)


if __name__ == "__main__":
    sys.exit(main())
