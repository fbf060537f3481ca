"""The respawn throttle, decided in the master (uWSGI sleeps in the child, Q-D2).

uWSGI's rule (uwsgi-spec §2.3): a daemon that dies within 3 s of its spawn is delayed by
about "number of spawns so far" seconds, at least 1, capped by ``max_throttle`` (300 by
default); one that lived longer comes back at once. Its counter never decays (Q-D8), so an
old daemon that flaps twice gets a huge delay.

nsattach keeps the growth and the cap and fixes the rest:

* the first quick death is respawned at once (no 1-second penalty for a single crash);
* each further quick death in a row waits one second more: 0, 1, 2, 3, ... up to the cap;
* a daemon that stays up for ``RESET_AFTER_S`` (10 s) or longer starts afresh;
* a daemon is never given up on: the delay only stops growing at the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

QUICK_DEATH_S = 3.0      # uWSGI's window: a death this soon after the spawn counts as a crash
RESET_AFTER_S = 10.0     # up this long: the crash streak is forgotten


@dataclass
class Throttle:
    streak: int = 0      # quick deaths in a row

    def delay_after_death(self, lifetime_s: float, cap_s: int) -> int:
        """Seconds to wait before the next spawn of a daemon that lived ``lifetime_s``."""
        if lifetime_s >= RESET_AFTER_S:
            self.streak = 0
        if lifetime_s > QUICK_DEATH_S:
            return 0
        self.streak += 1
        return min(cap_s, self.streak - 1)

    def reset(self) -> None:
        self.streak = 0
