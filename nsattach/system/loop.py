"""The single-threaded event loop: file descriptors, signals and a heap of deadlines.

Signal handlers do nothing but let Python write the signal number to a wakeup pipe
(``signal.set_wakeup_fd``); the loop reads the numbers and hands them to its callback, so no
work ever happens in signal context. The loop sleeps in ``select`` until a descriptor is
ready, a signal arrives or the earliest timer is due: there is no polling interval.
"""

from __future__ import annotations

import heapq
import os
import selectors
import signal
import time
from typing import Callable, Iterable


class Loop:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, tuple]] = []
        self._timer_ids: dict[tuple, int] = {}      # key -> id of the live entry
        self._seq = 0
        self._stopped = False
        self._wakeup_r = self._wakeup_w = -1
        self._on_signal: Callable[[int], None] | None = None
        self._old_handlers: dict[int, object] = {}
        self._urgent: frozenset[int] = frozenset()
        # set by the handler itself for an urgent signal, so code that is not in the loop
        # (a hook command being waited for) can see a stop request at once
        self.urgent_seen = False

    # -- descriptors ---------------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.watch(fd, callback, None)

    def remove_reader(self, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def watch(self, fd: int, on_read: Callable[[], None] | None, on_write: Callable[[], None] | None) -> None:
        """Register (or change) the callbacks for ``fd``; None for both unregisters it."""
        events = (selectors.EVENT_READ if on_read else 0) | (selectors.EVENT_WRITE if on_write else 0)
        try:
            self.selector.get_key(fd)
            registered = True
        except KeyError:
            registered = False
        if not events:
            if registered:
                self.selector.unregister(fd)
            return
        data = (on_read, on_write)
        if registered:
            self.selector.modify(fd, events, data)
        else:
            self.selector.register(fd, events, data)

    # -- timers --------------------------------------------------------------------------

    def call_at(self, when: float, key: tuple) -> None:
        """Arm (or re-arm) the timer ``key``; ``on_timer(key)`` is called when it is due."""
        self._seq += 1
        self._timer_ids[key] = self._seq
        heapq.heappush(self._timers, (when, self._seq, key))

    def cancel(self, key: tuple) -> None:
        self._timer_ids.pop(key, None)

    def has_timer(self, key: tuple) -> bool:
        return key in self._timer_ids

    def _registered(self, fd: int, callback) -> bool:
        """A read callback may have closed or re-registered ``fd``: only call what is still there."""
        try:
            return self.selector.get_key(fd).data[1] is callback
        except (KeyError, ValueError):
            return False

    def _due_timers(self, now: float) -> list[tuple]:
        due = []
        while self._timers and self._timers[0][0] <= now:
            _, seq, key = heapq.heappop(self._timers)
            if self._timer_ids.get(key) == seq:
                del self._timer_ids[key]
                due.append(key)
        return due

    def _timeout(self) -> float | None:
        while self._timers and self._timer_ids.get(self._timers[0][2]) != self._timers[0][1]:
            heapq.heappop(self._timers)        # drop cancelled entries
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - self.clock())

    # -- signals -------------------------------------------------------------------------

    def handle_signals(self, signums: Iterable[int], callback: Callable[[int], None],
                       urgent: Iterable[int] = ()) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_r, self._wakeup_w = r, w
        self._on_signal = callback
        self._urgent = frozenset(int(s) for s in urgent)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for signum in signums:
            self._old_handlers[signum] = signal.signal(signum, self._record)
        self.add_reader(r, self._read_signals)

    def _read_signals(self) -> None:
        try:
            data = os.read(self._wakeup_r, 4096)
        except BlockingIOError:
            return
        for signum in data:
            if self._on_signal is not None:
                self._on_signal(signum)

    def restore_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        if self._wakeup_w >= 0:
            signal.set_wakeup_fd(-1)
            self.remove_reader(self._wakeup_r)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            self._wakeup_r = self._wakeup_w = -1

    # -- running -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopped = True

    def run(self, on_timer: Callable[[tuple], None]) -> None:
        self._stopped = False
        while not self._stopped:
            timeout = self._timeout()
            try:
                ready = self.selector.select(timeout)
            except InterruptedError:
                ready = []
            for key, mask in ready:
                on_read, on_write = key.data
                if mask & selectors.EVENT_READ and on_read is not None:
                    on_read()
                if mask & selectors.EVENT_WRITE and on_write is not None and self._registered(key.fd, on_write):
                    on_write()
                if self._stopped:
                    return
            for timer in self._due_timers(self.clock()):
                on_timer(timer)
                if self._stopped:
                    return

    def close(self) -> None:
        self.restore_signals()
        self.selector.close()


    def _record(self, signum, frame) -> None:
        """The wakeup fd carries the signal number to the loop; the handler only notes an
        urgent one."""
        if signum in self._urgent:
            self.urgent_seen = True
