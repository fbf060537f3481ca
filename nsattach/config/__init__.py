"""uWSGI's ini dialect -> RawConfig -> validated Plan."""

from __future__ import annotations

from typing import Mapping, Sequence

from nsattach.config.model import Plan


def load_plan(config_args: Sequence[str], cli_entries: Sequence[tuple[str, str, int]] = (), *,
              cwd: str | None = None, environ: Mapping[str, str] | None = None) -> Plan:
    """Read every config source and build the plan; raises ConfigError with every problem."""
    from nsattach.config.ini import load_raw
    from nsattach.config.options import is_option
    from nsattach.config.plan import build_plan

    raw = load_raw(list(config_args), list(cli_entries), is_option=is_option, environ=environ, cwd=cwd)
    return build_plan(raw, cwd=cwd)
