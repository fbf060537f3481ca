"""The ``nsattach`` command line.

    nsattach [run] -c FILE[:SECTION] [--KEY VALUE ...]     run the master in the foreground
    nsattach check -c FILE [--json] [--KEY VALUE ...]       validate and print the plan; starts nothing
    nsattach --help | --help-options | --version

Every configuration key can be given as ``--key value`` (or ``--key=value``), as uWSGI allows;
a boolean key may stand alone (``--vacuum``). Positional ``*.ini`` arguments are config files.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from nsattach import __version__
from nsattach.errors import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, ConfigError, NsattachError, exit_status_for

USAGE = """\
usage: nsattach [run] -c FILE[:SECTION] [--KEY VALUE ...]
       nsattach check -c FILE[:SECTION] [--json] [--KEY VALUE ...]
       nsattach --help | --help-options | --version

  run      run the master in the foreground (the default verb)
  check    read and validate the configuration, print the resolved plan, start nothing
           (exit 0: valid, 100: configuration errors, each printed as FILE:LINE: key: problem)

  -c, --config FILE[:SECTION]   an ini file (repeatable); SECTION defaults to [uwsgi] or [nsattach]
  --json                        (check) print the plan as JSON
  --KEY VALUE, --KEY=VALUE      any configuration key, see --help-options
"""

VERBS = ("run", "check")


class UsageError(Exception):
    pass


@dataclass
class Invocation:
    verb: str = "run"
    config_args: list[str] = field(default_factory=list)
    cli_entries: list[tuple[str, str, int]] = field(default_factory=list)
    json: bool = False
    show: str | None = None          # help, help-options, version
    cwd: str = field(default_factory=os.getcwd)   # where relative config paths are resolved, also on reload


def parse_argv(argv: list[str]) -> Invocation:
    from nsattach.config.options import lookup

    inv = Invocation()
    args = list(argv)
    if args and args[0] in VERBS:
        inv.verb = args.pop(0)
    i = 0
    while i < len(args):
        arg = args[i]
        index = i + 1 + len(argv) - len(args)   # 1-based position in the original argv
        if arg in ("-h", "--help"):
            inv.show = "help"
        elif arg == "--help-options":
            inv.show = "help-options"
        elif arg in ("-V", "--version"):
            inv.show = "version"
        elif arg == "--json":
            inv.json = True
        elif arg in ("-c", "--config") or arg.startswith(("-c=", "--config=")):
            if "=" in arg:
                inv.config_args.append(arg.split("=", 1)[1])
            else:
                if i + 1 >= len(args):
                    raise UsageError(f"{arg} needs a file name")
                i += 1
                inv.config_args.append(args[i])
        elif arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            if not eq:
                opt = lookup(key)
                takes_none = opt is not None and opt.flag
                if i + 1 < len(args) and not (takes_none and args[i + 1].startswith("--")):
                    i += 1
                    value = args[i]
                elif takes_none:
                    value = ""
                else:
                    raise UsageError(f"--{key} needs a value")
            inv.cli_entries.append((key, value, index))
        elif not arg.startswith("-") and (arg.endswith(".ini") or ".ini:" in arg):
            inv.config_args.append(arg)
        else:
            raise UsageError(f"unexpected argument {arg!r}")
        i += 1
    return inv


def _print_problems(error: ConfigError) -> None:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    n = len(error.problems)
    print(f"nsattach: {n} configuration problem{'s' if n != 1 else ''}; nothing was started", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        inv = parse_argv(argv)
    except UsageError as exc:
        print(f"nsattach: {exc}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    if inv.show == "help":
        print(USAGE, end="")
        return EXIT_OK
    if inv.show == "version":
        print(f"nsattach {__version__}")
        return EXIT_OK
    if inv.show == "help-options":
        from nsattach.config.options import format_help_options

        print(format_help_options(), end="")
        return EXIT_OK
    if not inv.config_args and not inv.cli_entries:
        print(f"nsattach: no configuration given (use -c FILE)\n\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE

    from nsattach.config import load_plan

    try:
        plan = load_plan(inv.config_args, inv.cli_entries, cwd=inv.cwd)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    if inv.verb == "check":
        from nsattach.config.render import plan_to_json, plan_to_text

        sys.stdout.write(plan_to_json(plan) if inv.json else plan_to_text(plan))
        return EXIT_OK

    try:
        from nsattach.startup import run

        return run(plan, inv)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    except NsattachError as exc:
        print(f"nsattach: {exc}", file=sys.stderr)
        return exit_status_for(exc)
