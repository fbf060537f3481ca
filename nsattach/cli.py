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
       nsattach status [--json] | stop NAME... | start NAME... | restart NAME...
       nsattach signal NAME... SIGNAL | reload | shutdown | reopen-logs
       nsattach --help | --help-options | --version

  run      run the master in the foreground (the default verb)
  check    read and validate the configuration, print the resolved plan, start nothing
           (exit 0: valid, 100: configuration errors, each printed as FILE:LINE: key: problem)
  status   what the running master does: one row per daemon
  stop, start, restart NAME...   act on single daemons; a daemon stopped here stays stopped
           (through respawns, touches and reloads) until started again
  signal NAME... SIGNAL          send a signal (TERM, HUP, 10, ...) to the daemons' process groups
  reload, shutdown, reopen-logs  the master: re-read the config / stop / reopen log files
           (the control verbs exit 0 when it worked, 1 when not, 3 when nsattach cannot be reached)

  -c, --config FILE[:SECTION]   an ini file (repeatable); SECTION defaults to [uwsgi] or [nsattach]
  --json                        (check, status) print JSON
  --socket PATH                 (control verbs) the control socket; default: the one the -c file
                                implies, else the only one in /run/nsattach
  --KEY VALUE, --KEY=VALUE      any configuration key, see --help-options
"""

CONTROL_VERBS = ("status", "stop", "start", "restart", "signal", "reload", "shutdown", "reopen-logs")
VERBS = ("run", "check", *CONTROL_VERBS)
EXIT_UNREACHABLE = 3


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
    socket: str | None = None
    words: list[str] = field(default_factory=list)   # control verbs: daemon names (and a signal)


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
        elif arg == "--socket" or arg.startswith("--socket="):
            if "=" in arg:
                inv.socket = arg.split("=", 1)[1]
            else:
                if i + 1 >= len(args):
                    raise UsageError("--socket needs a path")
                i += 1
                inv.socket = args[i]
        elif inv.verb in CONTROL_VERBS and not arg.startswith("-"):
            inv.words.append(arg)
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
    if inv.verb in CONTROL_VERBS:
        return control_main(inv)
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


def control_main(inv: Invocation) -> int:
    """The control verbs: one request to the running master, its answer printed."""
    import json

    from nsattach.control.client import find_socket, request
    from nsattach.errors import ControlError

    verb, words = inv.verb, inv.words
    message: dict = {"cmd": verb}
    if verb in ("stop", "start", "restart"):
        if not words:
            print(f"nsattach {verb}: name at least one daemon", file=sys.stderr)
            return EXIT_USAGE
        message["names"] = words
    elif verb == "signal":
        if len(words) < 2:
            print("nsattach signal: usage: nsattach signal NAME... SIGNAL", file=sys.stderr)
            return EXIT_USAGE
        message["names"], message["signal"] = words[:-1], words[-1]
    elif words:
        print(f"nsattach {verb}: unexpected argument {words[0]!r}", file=sys.stderr)
        return EXIT_USAGE
    config_files = []
    socket_path = inv.socket
    if inv.config_args and socket_path is None:
        from nsattach.config import load_plan
        from nsattach.config.ini import parse_config_arg

        try:    # the config may set control-socket; its path is what the master listens on
            socket_path = load_plan(inv.config_args, inv.cli_entries, cwd=inv.cwd).master.control_socket
        except ConfigError:
            config_files = [os.path.abspath(parse_config_arg(a)[0]) for a in inv.config_args]
    try:
        path = find_socket(socket_path, config_files)
        reply = request(path, message)
    except ControlError as exc:
        print(f"nsattach {verb}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if verb == "status" and reply.get("ok"):
        print(json.dumps(reply, indent=2) if inv.json else format_status(reply))
        return EXIT_OK
    stream = sys.stdout if reply.get("ok") else sys.stderr
    if inv.json:
        print(json.dumps(reply, indent=2), file=stream)
    else:
        for line in (r["message"] for r in reply.get("results", [])) if reply.get("results") else [reply.get("message", "")]:
            print(line, file=stream)
        for error in reply.get("errors", []):
            print(error, file=stream)
    return EXIT_OK if reply.get("ok") else 1


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_status(reply: dict) -> str:
    m = reply["master"]
    lines = [f"nsattach master pid {m['pid']}, up {_duration(m['uptime'])}, {m['phase']}, "
             f"config {', '.join(m['config']) or '(command line)'}"]
    rows = [("NAME", "KIND", "STATE", "PID", "UPTIME", "RESPAWNS", "LAST EXIT", "NOTE")]
    for d in reply["daemons"]:
        notes = []
        if d.get("backoff") is not None:
            notes.append(f"respawn in {d['backoff']:.0f}s")
        if d.get("held"):
            notes.append("stopped by operator")
        if d.get("legion"):
            lord = d.get("lord")
            notes.append(f"legion {d['legion']}" + ("" if lord is None else (" (lord)" if lord else " (not lord)")))
        rows.append((d["name"], d["kind"], d["state"], str(d["pid"] or "-"), _duration(d["uptime"]),
                     str(d["respawns"]), d["last_exit"] or "-", ", ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return "\n".join(lines)
