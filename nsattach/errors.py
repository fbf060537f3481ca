"""The error tree of nsattach and the exit status each error maps to.

Every error the program can end on is one of these; `exit_status_for` is the one place that
turns them into process exit statuses (the CLI uses it, nothing else calls sys.exit with a
number of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILURE = 1          # a runtime failure: setup, spawn of the master, hooks
EXIT_USAGE = 2            # bad command line (argparse's own convention)
EXIT_CONFIG = 100         # the configuration is invalid; nothing was started
EXIT_JAIL_REBUILD = 75    # jailed master -> its monitor: the jail's own options changed, build it again


@dataclass(frozen=True)
class Origin:
    """Where a configuration entry came from: a file and line, or the command line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong (or worth a warning) in a configuration.

    Rendered as ``FILE:LINE: key: message`` so an operator can jump straight to it.
    """

    origin: Origin | None
    key: str | None
    message: str

    def __str__(self) -> str:
        parts = []
        if self.origin is not None:
            parts.append(str(self.origin))
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)


class NsattachError(Exception):
    """Base of every error nsattach raises on purpose."""

    exit_status = EXIT_FAILURE


class ConfigError(NsattachError):
    """The configuration could not be turned into a plan; carries every problem found."""

    exit_status = EXIT_CONFIG

    def __init__(self, problems: list[ConfigProblem] | ConfigProblem | str):
        if isinstance(problems, str):
            problems = [ConfigProblem(None, None, problems)]
        elif isinstance(problems, ConfigProblem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SetupError(NsattachError):
    """A privileged or start-up step failed (names the step, the object and the errno)."""


class SpawnError(NsattachError):
    """A daemon could not be started (fork failed, or the child failed before exec)."""


class HookError(NsattachError):
    """A fatal hook failed."""


class LegionError(NsattachError):
    """A Legion socket or protocol failure that stops the instance."""


class ControlError(NsattachError):
    """The control socket could not be reached or answered with an error."""


def exit_status_for(error: BaseException) -> int:
    if isinstance(error, NsattachError):
        return error.exit_status
    return EXIT_FAILURE
