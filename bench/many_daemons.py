#!/usr/bin/env python3
"""Scale: 1000 dumb daemons (``sleep 1000i``) under one master: start, check, stop, check.

Figures: time from launch until all N programs run; that all N run (and nothing more); time from
SIGINT to the master's exit; that none of them is left. The master's RSS, open fds and CPU time
while starting are printed as well. nsattach raises its RLIMIT_NOFILE soft limit to the hard limit
itself (one pidfd per daemon).

uWSGI starts the same N daemons, but stops them one by one at about a second each (~N s): its
stop is observed for --uwsgi-stop-window seconds (default 5), the number stopped in that window
gives a rate (the first goes at once, then one per interval), and the full stop is EXTRAPOLATED
from it (then the rest is killed).

    python bench/many_daemons.py [--n 1000] [--quick] [--no-uwsgi] [--uwsgi-stop-window 5]
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Master, ProgramWatcher, Row, base_parser, gone_after, run_main, sleep_daemons, wait_for, want_uwsgi  # noqa: E402


def start(kind: str, n: int, workdir: str):
    config, argvs = sleep_daemons(n)
    want = set(argvs)
    d = os.path.join(workdir, kind)
    os.makedirs(d, exist_ok=True)
    m = Master(kind, config, d).start()
    watcher = ProgramWatcher(m.pid)

    def ready():
        if not m.running():
            raise RuntimeError(f"{kind} master exited early; log:\n{m.log_tail()}")
        return time.monotonic() if want.issubset(watcher.scan()) else None

    done, _ = wait_for(ready, 60 + n * 0.05, 0.01, f"{n} daemons of {kind} to run")
    started = done - m.launched_at
    programs = m.programs()
    pids = [p for ps in programs.values() for p in ps]
    extra = {a: ps for a, ps in programs.items() if len(ps) != 1 or a not in want}
    p = psutil.Process(m.pid)
    t = p.cpu_times()
    info = {"rss_mb": p.memory_info().rss / 2**20, "fds": p.num_fds(), "cpu_s": t.user + t.system}
    return m, started, pids, extra, info


def body(args, workdir, rows):
    n = args.n or (300 if args.quick else 1000)
    print(f"nsattach: starting {n} daemons ...", flush=True)
    m, ns_start, pids, extra, info = start("nsattach", n, workdir)
    notes = []
    try:
        print(f"  nsattach: all {n} running after {ns_start:.3f} s ({len(pids)} program processes); master RSS "
              f"{info['rss_mb']:.1f} MB, {info['fds']} fds, {info['cpu_s']:.2f} s CPU so far", flush=True)
        if extra:
            notes.append(f"nsattach: {len(extra)} program(s) with an unexpected process count, e.g. {next(iter(extra.items()))}")
        time.sleep(1.0)
        ns_stop = m.stop_timed(args.timeout)
        left = gone_after(pids, 0.0)
        print(f"  nsattach: stop took {'(no exit within %g s)' % args.timeout if ns_stop is None else '%.3f s' % ns_stop}; "
              f"{len(left)} of {len(pids)} daemons alive after the exit", flush=True)
        if ns_stop is None:
            notes.append(f"nsattach did not exit within {args.timeout:g} s of SIGINT; log tail: {m.log_tail(3)!r}")
        if left:
            notes.append(f"nsattach exited with {len(left)} daemon(s) still alive")
    finally:
        m.cleanup()

    uw_start = uw_stop = None
    if want_uwsgi(args):
        print(f"uwsgi: starting {n} daemons ...", flush=True)
        um, uw_start, upids, uextra, uinfo = start("uwsgi", n, workdir)
        try:
            print(f"  uwsgi: all {n} running after {uw_start:.3f} s; master RSS {uinfo['rss_mb']:.1f} MB, "
                  f"{uinfo['fds']} fds, {uinfo['cpu_s']:.2f} s CPU so far", flush=True)
            time.sleep(1.0)
            um.remember_tree()
            t0 = time.monotonic()
            os.kill(um.pid, signal.SIGINT)
            time.sleep(args.uwsgi_stop_window)
            window = time.monotonic() - t0
            stopped = len(upids) - len(gone_after(upids, 0.0))
            if um.running() and stopped > 1:
                # the first daemon is signalled right at the SIGINT, the next ones one per
                # interval: `stopped` daemons span stopped - 1 intervals
                per = window / (stopped - 1)
                uw_stop = per * n
                notes.append(f"uWSGI stop EXTRAPOLATED: {stopped} of {n} daemons gone in the first "
                             f"{window:.1f} s after SIGINT (the first at once), i.e. {per:.2f} s per daemon, x {n}")
                print(f"  uwsgi: {stopped} of {n} daemons stopped {window:.1f} s after SIGINT "
                      f"-> about {uw_stop:.0f} s for all (extrapolated); killing it", flush=True)
            elif not um.running():
                uw_stop = window                          # exited within the window: an upper bound
                notes.append(f"uWSGI exited within the {window:.1f} s window")
        finally:
            um.cleanup()
    rows.append(Row(f"start {n} daemons (launch -> all exec'd)", "s", ns_start, uw_start, "",
                    None, "; ".join(x for x in notes if x.startswith("nsattach:"))))
    rows.append(Row(f"stop {n} daemons (SIGINT -> exit)", "s", ns_stop, uw_stop, "exits, none left",
                    ns_stop is not None and not left and not extra,
                    "; ".join(x for x in notes if not x.startswith("nsattach:")), uwsgi_extrapolated=True))


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=0, help="daemons (default 1000, --quick 300)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline for nsattach's exit after SIGINT")
    p.add_argument("--uwsgi-stop-window", type=float, default=5.0,
                   help="seconds to watch uWSGI stopping before extrapolating and killing it")
    return run_main("many_daemons", body, p)


if __name__ == "__main__":
    sys.exit(main())
