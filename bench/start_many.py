#!/usr/bin/env python3
"""Starting many daemons: time from launching the master until all N programs have exec'd.

N dumb daemons ``attach-daemon = sleep 1000i``. The clock starts right before the master is
launched (``subprocess.Popen``; for nsattach this includes the Python interpreter's start and
imports) and stops when every ``sleep 1000i`` is a live process below the master (/proc polled
every ~2 ms, incrementally: a program seen once is not re-read; the poller shares the machine's CPUs with the master). The time to the *first*
program is reported too. Repeated --repeat times (median).

    python bench/start_many.py [--n 100] [--repeat 3] [--quick] [--no-uwsgi]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Master, ProgramWatcher, Row, base_parser, median, run_main, sleep_daemons, wait_for, want_uwsgi  # noqa: E402

TARGET_S = 2.0


def start_once(kind: str, n: int, workdir: str, timeout: float) -> tuple[float, float]:
    config, argvs = sleep_daemons(n)
    want = set(argvs)
    m = Master(kind, config, workdir).start()
    watcher = ProgramWatcher(m.pid)
    first = None
    try:
        def ready():
            nonlocal first
            if not m.running():
                raise RuntimeError(f"{kind} master exited early; log:\n{m.log_tail()}")
            found = watcher.scan()
            now = time.monotonic()
            if found and first is None:
                first = now - m.launched_at
            return now if want.issubset(found) else None

        done, _ = wait_for(ready, timeout, 0.002, f"{n} daemons of {kind} to run")
        live = watcher.live()
        if set(live) != want or any(len(v) != 1 for v in live.values()):
            raise RuntimeError(f"{kind}: after the start, {len(live)} of {n} programs live "
                               f"({sum(len(v) for v in live.values())} processes)")
        m.programs()                   # remember the tree for cleanup
    finally:
        # no graceful stop: uWSGI would take about a second per daemon; stopping is measured
        # by stop_many.py

        m.cleanup()
    return done - m.launched_at, first


def body(args, workdir, rows):
    n = args.n or 100
    repeat = args.repeat or (1 if args.quick else 3)
    res = {}
    kinds = ["nsattach"] + (["uwsgi"] if want_uwsgi(args) else [])
    for kind in kinds:
        alls, firsts = [], []
        for r in range(repeat):
            t_all, t_first = start_once(kind, n, workdir, 30 + n * 0.05)
            alls.append(t_all)
            firsts.append(t_first)
            print(f"  {kind} run {r + 1}/{repeat}: first program after {t_first * 1000:.0f} ms, "
                  f"all {n} after {t_all * 1000:.0f} ms", flush=True)
        res[kind] = (median(alls), median(firsts))
    ns_all, ns_first = res["nsattach"]
    uw_all, uw_first = res.get("uwsgi", (None, None))
    rows.append(Row(f"start {n} daemons (launch -> all exec'd)", "s", ns_all, uw_all, f"<= {TARGET_S:g} s",
                    ns_all <= TARGET_S, f"median of {repeat} run(s)"))
    rows.append(Row("start: launch -> first daemon exec'd", "s", ns_first, uw_first))


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=0, help="daemons (default 100)")
    p.add_argument("--repeat", type=int, default=0, help="runs per supervisor (default 3, --quick 1)")
    return run_main("start_many", body, p)


if __name__ == "__main__":
    sys.exit(main())
