"""The raw configuration: an ordered list of (key, value) entries, each knowing where it came from.

This is the hand-over point between the ini dialect (``ini.py``, ``expand.py``), which produces
a RawConfig, and the plan builder (``plan.py``), which turns it into a validated Plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nsattach.errors import ConfigProblem, Origin

COMMAND_LINE = "<command line>"


@dataclass(frozen=True)
class Entry:
    """One configuration line after includes, logic blocks and expansion have been applied."""

    key: str
    value: str
    origin: Origin


@dataclass
class RawConfig:
    entries: list[Entry] = field(default_factory=list)
    # every config file read, in order (absolute paths), first one first
    files: list[str] = field(default_factory=list)
    # names that were looked up as %(name) placeholders, or defined with set-placeholder:
    # an unknown key in this set is a placeholder, not a typo
    placeholders: set[str] = field(default_factory=set)
    warnings: list[ConfigProblem] = field(default_factory=list)

    def values(self, key: str) -> list[str]:
        return [e.value for e in self.entries if e.key == key]
