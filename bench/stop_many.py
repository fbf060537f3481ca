#!/usr/bin/env python3
"""Stopping many well-behaved daemons: time from SIGINT to the master's exit.

N dumb daemons ``attach-daemon = sleep 1000i`` (sleep dies on SIGTERM). Once all run, the master
gets SIGINT (a stop for both; for a uWSGI 2.0 master SIGTERM would mean *reload*); the figure is
the time until the master process exits (seen through a pidfd), and every daemon's process must
be gone by then.

uWSGI stops its daemons one after another and sleeps at least 1 s for each, so it runs with
fewer daemons (--uwsgi-n, default 20); its per-daemon cost is reported and extrapolated to N,
labelled as such.

    python bench/stop_many.py [--n 100] [--uwsgi-n 20] [--quick] [--no-uwsgi]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Master, Row, base_parser, gone_after, run_main, sleep_daemons, want_uwsgi  # noqa: E402

TARGET_S = 1.0


def stop_run(kind: str, n: int, workdir: str, stop_timeout: float, extra: str = "", template: str = "{prog}",
             before_stop=None):
    """Start ``n`` daemons, SIGINT, time the exit.

    Returns (stop seconds or None, daemon programs still alive, daemon programs, other processes of
    the tree still alive, the master's last log lines). ``before_stop(pids)`` may check the
    running programs first."""
    config, argvs = sleep_daemons(n, template=template)
    m = Master(kind, extra + config, workdir).start()
    try:
        m.wait_programs(argvs, timeout=30 + n * 0.05)
        time.sleep(0.5)                       # let the master settle after the spawns
        programs = m.programs()
        pids = [p for ps in programs.values() for p in ps]
        if before_stop is not None:
            before_stop(pids)
        all_tree = m.remember_tree()
        elapsed = m.stop_timed(stop_timeout)
        left = gone_after(pids, 0.0)
        left_tree = gone_after([p for p in all_tree if p not in pids], 0.0)
        return elapsed, left, len(pids), left_tree, m.log_tail(3)
    finally:
        m.cleanup()


def body(args, workdir, rows):
    n = args.n or 100
    un = args.uwsgi_n or (5 if args.quick else 20)
    print(f"nsattach: {n} daemons, SIGINT ...", flush=True)
    ns, ns_left, ns_count, ns_tree_left, ns_tail = stop_run("nsattach", n, workdir, args.timeout)
    print(f"  nsattach: stop took {'> %.0f s (did not exit)' % args.timeout if ns is None else '%.3f s' % ns}; "
          f"{len(ns_left)} of {ns_count} daemon program(s) still alive at exit")
    uw = None
    uw_per = None
    notes = []
    if ns is None:
        notes.append(f"nsattach did not exit within {args.timeout:.0f} s of SIGINT; log tail: {ns_tail!r}")
    if ns_left:
        notes.append(f"nsattach exited with {len(ns_left)} daemon(s) still running: {ns_left[:10]}")
    if ns_tree_left:
        notes.append(f"nsattach left other processes of its tree alive: {ns_tree_left[:10]}")
    if want_uwsgi(args):
        print(f"uwsgi: {un} daemons, SIGINT (at least ~1 s per daemon) ...", flush=True)
        uw_timeout = un * 4 + 15
        uw_real, uw_left, uw_count, _, uw_tail = stop_run("uwsgi", un, workdir, uw_timeout)
        if uw_real is None:
            notes.append(f"uwsgi did not exit within {uw_timeout} s")
        else:
            uw_per = uw_real / un
            uw = uw_per * n
            print(f"  uwsgi: stop of {un} daemons took {uw_real:.3f} s = {uw_per:.3f} s per daemon; "
                  f"{len(uw_left)} daemon program(s) alive at exit")
            notes.append(f"uWSGI figure EXTRAPOLATED: measured {uw_real:.2f} s for {un} daemons "
                         f"({uw_per:.3f} s/daemon) x {n}")
            if uw_left:
                notes.append(f"uwsgi exited with {len(uw_left)} daemon(s) still running")
    rows.append(Row(f"stop {n} daemons (SIGINT -> exit)", "s", ns, uw, f"<= {TARGET_S:.0f} s",
                    ns is not None and ns <= TARGET_S and not ns_left,
                    "; ".join(notes), uwsgi_extrapolated=True))
    if uw_per is not None:
        rows.append(Row("stop, per daemon", "ms", ns / n if ns else None, uw_per))


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", "--repeat", dest="n", type=int, default=0, help="daemons for nsattach (default 100)")
    p.add_argument("--uwsgi-n", type=int, default=0, help="daemons for uWSGI (default 20, --quick 5)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline for nsattach's exit")
    return run_main("stop_many", body, p)


if __name__ == "__main__":
    sys.exit(main())
