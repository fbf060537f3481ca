#!/usr/bin/env python3
"""Stopping many daemons that ignore SIGTERM: time from SIGINT to the master's exit.

N dumb daemons ``attach-daemon = trap "" TERM; exec sleep 1000i`` (the shell sets SIGTERM to
ignored and execs sleep, which keeps the ignored disposition: the pid the master tracks *is* the
stubborn program, for nsattach and uWSGI alike), with ``reload-mercy = 2``. The master gets SIGINT;
it sends SIGTERM, waits the mercy, SIGKILLs. The figure is the time until the master exits; every
daemon must be gone by then. The script checks, before the stop, that every program really
ignores SIGTERM (SigIgn in /proc/PID/status).

uWSGI waits the mercy for each daemon in turn, so it runs with a few daemons (--uwsgi-n, default
3); its per-daemon cost is reported and extrapolated to N, labelled as such.

    python bench/stop_stubborn.py [--n 100] [--mercy 2] [--uwsgi-n 3] [--quick] [--no-uwsgi]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Row, base_parser, ignores_sigterm, run_main, want_uwsgi  # noqa: E402
from stop_many import stop_run  # noqa: E402

TEMPLATE = 'trap "" TERM; exec {prog}'


def check_stubborn(pids: list[int]) -> None:
    bad = [p for p in pids if not ignores_sigterm(p)]
    if bad:
        raise RuntimeError(f"{len(bad)} daemon program(s) do not ignore SIGTERM (e.g. pid {bad[0]}): "
                           "the experiment would not measure what it claims")


def body(args, workdir, rows):
    n = args.n or 100
    un = args.uwsgi_n or (2 if args.quick else 3)
    mercy = args.mercy
    target = mercy + 0.5
    extra = f"reload-mercy = {mercy:g}\n"
    notes = []
    print(f"nsattach: {n} daemons ignoring SIGTERM, reload-mercy {mercy:g}, SIGINT ...", flush=True)
    ns, ns_left, ns_count, ns_tree, ns_tail = stop_run("nsattach", n, workdir, mercy + 30, extra, TEMPLATE,
                                                       check_stubborn)
    print(f"  nsattach: stop took {'(did not exit)' if ns is None else '%.3f s' % ns}; "
          f"{len(ns_left)} of {ns_count} daemon program(s) alive at exit")
    if ns is None:
        notes.append(f"nsattach did not exit within {mercy + 30:g} s; log tail: {ns_tail!r}")
    if ns_left:
        notes.append(f"nsattach exited with {len(ns_left)} daemon(s) still running: {ns_left[:10]}")
    if ns_tree:
        notes.append(f"nsattach left other processes of its tree alive: {ns_tree[:10]}")
    uw = uw_per = None
    if want_uwsgi(args):
        print(f"uwsgi: {un} daemons ignoring SIGTERM, reload-mercy {mercy:g}, SIGINT (about mercy per daemon) ...",
              flush=True)
        timeout = un * (mercy + 3) + 15
        uw_real, uw_left, uw_count, _, _ = stop_run("uwsgi", un, workdir, timeout, extra, TEMPLATE, check_stubborn)
        if uw_real is None:
            notes.append(f"uwsgi did not exit within {timeout:g} s")
        else:
            uw_per = uw_real / un
            uw = uw_per * n
            print(f"  uwsgi: stop of {un} daemons took {uw_real:.3f} s = {uw_per:.3f} s per daemon; "
                  f"{len(uw_left)} daemon program(s) alive at exit")
            notes.append(f"uWSGI figure EXTRAPOLATED: measured {uw_real:.2f} s for {un} daemons "
                         f"({uw_per:.3f} s/daemon) x {n}")
            if uw_left:
                notes.append(f"uwsgi exited with {len(uw_left)} of {uw_count} daemon(s) still running")
    rows.append(Row(f"stop {n} SIGTERM-ignoring daemons, mercy {mercy:g}", "s", ns, uw,
                    f"<= {target:g} s", ns is not None and ns <= target and not ns_left,
                    "; ".join(notes), uwsgi_extrapolated=True))


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", "--repeat", dest="n", type=int, default=0, help="daemons for nsattach (default 100)")
    p.add_argument("--uwsgi-n", type=int, default=0, help="daemons for uWSGI (default 3, --quick 2)")
    p.add_argument("--mercy", type=float, default=2.0, help="reload-mercy in seconds (default 2)")
    return run_main("stop_stubborn", body, p)


if __name__ == "__main__":
    sys.exit(main())
