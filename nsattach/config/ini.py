"""uWSGI's ini dialect: files, sections, magic variables, logic blocks, includes -> RawConfig.

``load_raw`` builds ONE ordered list of ``(key, value)`` entries the way uWSGI does ("top-bottom,
expand asap"): every ``-c`` file is loaded as if ``ini = file`` opened the list, then the
command-line entries follow. Immediate keys act while the list is being built and do not
appear in it:

* ``ini``, ``include``, ``inherit`` - load another file in place (``file[:section]``);
* ``set = k=v`` - adds the entry ``k = v`` (handled like a line ``k = v``, so it is expanded);
* ``set-placeholder``/``set-ph = k=v`` - adds ``k = v`` raw (never expanded itself) and records
  ``k`` as a placeholder; ``k`` must not be an option name;
* logic blocks ``for``/``for-times``/``for-glob``/``for-readline`` ... ``endfor`` and
  ``if-env``/``if-exists``/``if-file``/``if-dir``/``if-opt``/``if-hostname``/
  ``if-hostname-match``/``if-reload``/``if-plugin`` (and their ``if-not-`` forms) ... ``endif``,
  with ``else`` (uWSGI 2.1). Any of ``end``, ``endif``, ``end-if``, ``endfor``, ``end-for``
  closes any block. Each body line is handed to the block on its own: a two-line ``for`` body
  gives every copy of line 1, then every copy of line 2; ``%(_)`` in the VALUE is replaced by
  the loop item / environment value / path / option value. Conditions are evaluated for each
  body line (so ``if-opt`` sees options added by earlier body lines, as in uWSGI).

When a file is read, magic variables (``%d``, ``%n``, ``%h`` ...) are substituted on its raw text
(``%%`` is a literal ``%``; ``%(`` is kept for placeholders; an unknown ``%X`` becomes the empty
string, with a warning - Q-C1). Magic variables are not applied to command-line entries. After
everything is read, ``expand.py`` applies the ``$( )``, ``@( )`` and ``%( )`` passes to the
deferred entries.

Deliberate differences from uWSGI:

* A RELATIVE path given to ``ini``/``include``/``inherit`` inside a file is relative to the
  directory of the including file (uWSGI: the current working directory, which made configs
  depend on where the daemon was started). ``-c`` arguments and command-line ``--ini`` stay
  relative to the working directory. ``%d`` still works as in uWSGI.
* ``inherit`` is handled exactly like ``include`` (uWSGI defers it and then skips the
  ``$( )``/``%( )`` passes for its content; here that content is expanded like any other).
* Logic blocks belong to the file (or the command line) that opened them: a block still open
  at the end of that file is an error, as is a closing key or ``else`` without an open block
  (uWSGI silently ignores a stray ``endif`` and lets a block run on into the next file).
* Nested logic is an error even when the outer condition is false (uWSGI only notices it when
  the inner opener line is actually taken).
* ``for-times`` needs a non-negative integer (uWSGI: ``atoi``, garbage gives 0 iterations);
  ``for-readline`` on a file that cannot be read is an error (uWSGI logs and skips the block).
* ``set``/``set-ph``: spaces around ``k`` and ``v`` are stripped (uWSGI keeps ``k `` with its
  space, which can never match anything). ``set``/``set-ph`` without ``=`` is an error as in
  uWSGI; a line with an empty key (``= value``) is an error.
* ``%n`` of a file without an extension is the file name (uWSGI: empty); uWSGI's binary path
  ``%b`` is nsattach's program path, ``%V`` its version.
* ``if-opt`` and ``%(name)`` see the entries list: immediate keys such as ``ini`` or ``for`` are
  not visible to them. ``if-plugin`` is always false and ``if-not-plugin`` always true
  (nsattach has no plugins); ``if-hostname-match`` uses Python's ``re.search``.
* A ``%`` at the very end of a line swallows the newline and joins the line with the next one,
  exactly as in uWSGI; nsattach warns about it (and about unknown magic variables).
* Limits instead of unbounded work: lines of at most ``MAX_LINE`` characters, files of at
  most ``MAX_FILE_SIZE`` bytes, include depth ``MAX_INCLUDE_DEPTH``, ``MAX_ADDS`` entries added
  in total (loop expansion), no NUL bytes, UTF-8 only. Every problem is collected and raised
  together as one ConfigError; a "section not found" is only a warning, as in uWSGI.
"""

from __future__ import annotations

import glob
import os
import re
import socket
import stat
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from nsattach.config import expand as _expand
from nsattach.config.raw import COMMAND_LINE, Entry, RawConfig
from nsattach.errors import ConfigError, ConfigProblem, Origin

DEFAULT_SECTIONS = ("uwsgi", "nsattach")
MAX_LINE = 65536                  # characters in one raw line
MAX_MAGIC_LINE = 1 << 20          # characters in one line after magic variables
MAX_FILE_SIZE = 16 << 20          # bytes in one configuration file
MAX_INCLUDE_DEPTH = 32
MAX_ADDS = 100_000                # entries added in total (stops runaway loops)

FILE_KEYS = frozenset({"ini", "include", "inherit"})
SET_KEYS = frozenset({"set"})
SET_PH_KEYS = frozenset({"set-placeholder", "set-ph"})
END_KEYS = frozenset({"end", "endif", "end-if", "endfor", "end-for"})
ELSE_KEY = "else"

FOR_KEYS = {
    "for": "for",
    "for-times": "times",
    "for-glob": "glob",
    "for-readline": "readline",
}
# key -> (condition name, negated)
IF_KEYS = {
    "if-env": ("env", False), "ifenv": ("env", False), "if-not-env": ("env", True),
    "if-exists": ("exists", False), "ifexists": ("exists", False),
    "if-not-exists": ("exists", True),
    "if-file": ("file", False), "if-not-file": ("file", True),
    "if-dir": ("dir", False), "ifdir": ("dir", False), "if-directory": ("dir", False),
    "if-not-dir": ("dir", True),
    "if-opt": ("opt", False), "if-not-opt": ("opt", True),
    "if-hostname": ("hostname", False), "if-not-hostname": ("hostname", True),
    "if-hostname-match": ("hostname-match", False),
    "if-not-hostname-match": ("hostname-match", True),
    "if-reload": ("reload", False), "if-not-reload": ("reload", True),
    "if-plugin": ("plugin", False), "if-not-plugin": ("plugin", True),
}
LOGIC_KEYS = frozenset(FOR_KEYS) | frozenset(IF_KEYS)
IMMEDIATE_KEYS = FILE_KEYS | SET_KEYS | SET_PH_KEYS | END_KEYS | LOGIC_KEYS | {ELSE_KEY}

class _Abort(Exception):
    """Stop loading: a limit was hit (the problem is already recorded)."""


def parse_config_arg(arg: str) -> tuple[str, str | None]:
    """'file.ini:section' -> (file, section); split at the LAST ':'.

    A ':' followed later by a '/' belongs to the path and never splits; 'f.ini:' gives
    (f.ini, None) meaning the default section; ':section' gives ('', section), meaning the same
    section name in the last file loaded.
    """
    idx = arg.rfind(":")
    if idx < 0 or "/" in arg[idx + 1:]:
        return arg, None
    return arg[:idx], (arg[idx + 1:] or None)


# --------------------------------------------------------------------------- magic variables


def djb33x_hash(data: bytes) -> int:
    """uWSGI's djb33x hash, with C's signed ``char`` for bytes >= 0x80."""
    h = 5381
    for b in data:
        if b >= 0x80:
            b = (b - 256) & 0xFFFFFFFF
        h = (((h << 5) + h) & 0xFFFFFFFF) ^ b
    return h


def _file_magic(given: str, path: str, section: str | None) -> dict[str, str]:
    """The per-file magic variables. ``given`` is the argument as written (with ':section'),
    ``path`` the path opened (absolute)."""
    table: dict[str, str] = {"o": given}
    full = path if os.path.islink(path) else os.path.realpath(path)
    table["p"] = full
    table["j"] = djb33x_hash(os.fsencode(full)).to_bytes(4, "little").hex()
    try:
        table["i"] = str(os.lstat(full).st_ino)
    except OSError:
        table["i"] = ""
    slash = full.rfind("/")
    name = full[slash + 1:]
    directory = full[:slash + 1]
    table["s"] = name
    table["d"] = directory
    parts = [p for p in directory.split("/") if p]
    table["c"] = parts[-1] if parts else ""
    for n in range(10):
        table[str(n)] = parts[n] if n < len(parts) else ""
    dot = name.rfind(".")
    table["e"] = name[dot + 1:] if dot >= 0 else ""
    table["n"] = name[:dot] if dot >= 0 else name
    table["x"] = section or ""
    return table


def _static_magic(cwd: str, hostname: str) -> dict[str, str]:
    import pwd
    import grp

    from nsattach import __version__

    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = ""
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = ""
    prog = sys.argv[0] if sys.argv and sys.argv[0] else sys.executable
    now_us = time.time_ns() // 1000
    return {
        "b": os.path.realpath(prog) if prog else "",
        "v": cwd,
        "h": hostname,
        "t": str(now_us // 1_000_000),
        "T": str(now_us),
        "V": __version__,
        "k": str(os.cpu_count() or 1),
        "[": "\x1b",
        "u": str(uid),
        "U": user,
        "g": str(gid),
        "G": group,
    }


@dataclass
class _Line:
    lineno: int               # line (1-based) where this logical line starts
    text: str
    unknown: list[str] = field(default_factory=list)   # unknown magic characters
    joined: list[int] = field(default_factory=list)    # raw lines swallowed by a final '%'


def apply_magic(text: str, table: Mapping[str, str]) -> list[_Line]:
    """Substitute magic variables over the file text and split it into lines.

    A ``%`` at the end of a line consumes the newline (as in uWSGI, where the newline is just the
    character after ``%``): the line continues on the next one.
    Raises ValueError(lineno, message) when a line grows beyond MAX_MAGIC_LINE.
    """
    raw_lines = text.split("\n")
    last = len(raw_lines) - 1
    out: list[_Line] = []
    cur: _Line | None = None
    pieces: list[str] = []
    size = 0
    for n, s in enumerate(raw_lines):
        lineno = n + 1
        if cur is None:
            cur = _Line(lineno, "")
            pieces, size = [], 0
        joins = False
        if "%" not in s:
            pieces.append(s)
            size += len(s)
        else:
            pos = 0
            while True:
                j = s.find("%", pos)
                if j < 0:
                    pieces.append(s[pos:])
                    size += len(s) - pos
                    break
                pieces.append(s[pos:j])
                size += j - pos
                if j + 1 == len(s):
                    joins = n != last
                    if not joins:
                        cur.unknown.append("")      # a lone '%' ending the file
                    break
                c = s[j + 1]
                if c == "%":
                    rep = "%"
                elif c == "(":
                    rep = "%("
                else:
                    rep = table.get(c)
                    if rep is None:
                        cur.unknown.append(c)
                        rep = ""
                pieces.append(rep)
                size += len(rep)
                if size > MAX_MAGIC_LINE:
                    raise _MagicTooLong(cur.lineno)
                pos = j + 2
        if size > MAX_MAGIC_LINE:
            raise _MagicTooLong(cur.lineno)
        if joins:
            cur.joined.append(lineno + 1)
            continue
        cur.text = "".join(pieces)
        out.append(cur)
        cur = None
    return out


class _MagicTooLong(Exception):
    def __init__(self, lineno: int):
        super().__init__(lineno)
        self.lineno = lineno


# --------------------------------------------------------------------------- loader


@dataclass
class _Block:
    key: str
    kind: str                 # "for", "if", "else"
    arg: str
    origin: Origin
    cond: str = ""            # for "if": condition name
    negated: bool = False
    items: list[str] | None = None    # for "for": the items
    failed: bool | None = None        # for "if": result of the last evaluation (None = never)
    pattern: re.Pattern[str] | None = None   # for if-hostname-match


@dataclass
class _Scope:
    """One source of lines (a file, or the command line) with its own logic-block state."""

    name: str                 # file path or "<command line>"
    base_dir: str             # where relative paths given in this source are resolved
    block: _Block | None = None
    rejected: int = 0         # nested openers rejected: their closing keys are swallowed


class _Loader:
    def __init__(self, *, is_option: Callable[[str], bool], environ: Mapping[str, str],
                 cwd: str, hostname: str):
        self.is_option = is_option
        self.environ = environ
        self.cwd = cwd
        self.hostname = hostname
        self.entries: list[Entry] = []
        self.raw_indices: set[int] = set()
        self.first_value: dict[str, str] = {}
        self.files: list[str] = []
        self.placeholders: set[str] = set()
        self.warnings: list[ConfigProblem] = []
        self.errors: list[ConfigProblem] = []
        self.chain: list[tuple[str, str | None, str]] = []   # (realpath, section, shown name)
        self.running = 0          # > 0 while a block body line is being executed
        self.adds = 0
        self.last_file: str | None = None
        self.static_magic: dict[str, str] | None = None
        self.first_magic: dict[str, str] | None = None

    # ---- problems

    def error(self, origin: Origin | None, key: str | None, message: str) -> None:
        self.errors.append(ConfigProblem(origin, key, message))

    def warn(self, origin: Origin | None, key: str | None, message: str) -> None:
        self.warnings.append(ConfigProblem(origin, key, message))

    def _warn_unexpanded(self, origin: Origin, key: str, value: str,
                         tokens: Iterable[str] = ("%(", "$(", "@(")) -> None:
        found = [t for t in tokens if t in value]
        if found:
            if key in SET_PH_KEYS:
                hint = "write a plain 'name = value' line to get the value expanded"
            elif key in SET_KEYS:
                hint = "the name part of set is never expanded"
            else:
                hint = "use a magic variable such as %d instead"
            self.warn(origin, key,
                      f"{' and '.join(t + ')' for t in found)} is not expanded in the argument "
                      f"of the immediate option {key!r} (uWSGI compatibility): it is used "
                      f"literally; {hint}")

    # ---- files

    def load_file(self, spec: str, base_dir: str, origin: Origin | None, key: str) -> None:
        file, section = parse_config_arg(spec)
        where = f"{key} = {spec}" if origin is not None else f"-c {spec}"
        if not file:
            if section is None:
                self.error(origin, key, "empty file name (expected a path, optionally "
                           "followed by :section)")
                return
            if self.last_file is None:
                self.error(origin, key, f"{spec!r}: ':section' reuses the last file loaded, "
                           "but no file has been loaded yet; write file.ini:section")
                return
            path = self.last_file
        else:
            path = os.path.join(base_dir, file)
        if "\0" in path:
            self.error(origin, key, f"{where}: the file name contains a NUL character")
            return
        real = os.path.realpath(path)
        ident = (real, section)
        if any((r, s) == ident for r, s, _ in self.chain):
            names = [shown for _, _, shown in self.chain]
            start = next(i for i, (r, s, _) in enumerate(self.chain) if (r, s) == ident)
            cycle = " -> ".join(names[start:] + [_shown(os.path.abspath(path), section)])
            self.error(origin, key, f"include cycle: {cycle} (a file cannot include itself, "
                       "directly or indirectly)")
            return
        if len(self.chain) >= MAX_INCLUDE_DEPTH:
            self.error(origin, key, f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels "
                       f"while loading {path!r}")
            return
        data = self._read(path, origin, key)
        if data is None:
            return
        text = self._decode(path, data, origin, key)
        if text is None:
            return
        shown = os.path.abspath(path)
        if shown not in self.files:
            self.files.append(shown)
        self.last_file = shown

        table = dict(self.static_magic or {})
        filem = _file_magic(spec, shown, section)
        table.update(filem)
        if self.first_magic is None:
            self.first_magic = {k.upper(): filem[k] for k in "opsdcenxij"}
        table.update(self.first_magic)
        try:
            lines = apply_magic(text, table)
        except _MagicTooLong as e:
            self.error(Origin(shown, e.lineno), None,
                       f"line longer than {MAX_MAGIC_LINE} characters after magic variables")
            return

        self.chain.append((real, section, _shown(shown, section)))
        try:
            self._parse(lines, shown, section, os.path.dirname(shown))
        finally:
            self.chain.pop()

    def _read(self, path: str, origin: Origin | None, key: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if stat.S_ISREG(st.st_mode) and st.st_size > MAX_FILE_SIZE:
                    self.error(origin, key, f"config file {path!r} is larger than "
                               f"{MAX_FILE_SIZE} bytes")
                    return None
                data = f.read(MAX_FILE_SIZE + 1)
        except OSError as e:
            self.error(origin, key, f"cannot read config file {path!r}: "
                       f"{e.strerror or e}")
            return None
        if len(data) > MAX_FILE_SIZE:
            self.error(origin, key, f"config file {path!r} is larger than {MAX_FILE_SIZE} "
                       "bytes")
            return None
        return data

    def _decode(self, path: str, data: bytes, origin: Origin | None, key: str) -> str | None:
        shown = os.path.abspath(path)
        nul = data.find(b"\0")
        if nul >= 0:
            self.error(Origin(shown, data.count(b"\n", 0, nul) + 1), None,
                       "NUL byte in config file (is this a binary file?)")
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            self.error(Origin(shown, data.count(b"\n", 0, e.start) + 1), None,
                       f"config file is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
                       f"{e.start}); save it as UTF-8")
            return None
        bad = False
        for lineno, raw in enumerate(text.split("\n"), 1):
            if len(raw) > MAX_LINE:
                self.error(Origin(shown, lineno), None,
                           f"line longer than {MAX_LINE} characters")
                bad = True
        return None if bad else text

    def _parse(self, lines: list[_Line], shown: str, section: str | None, base: str) -> None:
        scope = _Scope(shown, base)
        wanted = (lambda s: s in DEFAULT_SECTIONS) if section is None else \
            (lambda s: s == section)
        current: str | None = None
        found = False
        for line in lines:
            t = line.text.strip(" \t\r")
            if not t:
                continue
            if t[0] == "[":
                current = t[1:-1]
                if wanted(current):
                    found = True
                continue
            if current is None or not wanted(current):
                continue
            origin = Origin(shown, line.lineno)
            if line.joined:
                self.warn(origin, None,
                          "a '%' at the end of the line joined it with line(s) "
                          f"{', '.join(map(str, line.joined))} (uWSGI magic variable rule); "
                          "write '%%' for a literal '%'")
            if t[0] in ";#":
                continue
            k, sep, v = t.partition("=")
            k = k.rstrip(" \t\r")
            v = v.lstrip(" \t\r")
            if line.unknown:
                shown_chars = ", ".join(
                    repr("%" + c) if c else "'%' at the end of the file" for c in line.unknown)
                self.warn(origin, k or None,
                          f"unknown magic variable {shown_chars} replaced by an empty string "
                          "(uWSGI behaviour); write '%%' for a literal '%'")
            if not k:
                self.error(origin, None, f"empty key in {t[:80]!r} (expected key = value)")
                continue
            self.feed(scope, k, v, origin)
        self.close_scope(scope)
        if not found:
            if section is None:
                self.warn(Origin(shown, 0), None,
                          "can't find section \"[uwsgi]\" or \"[nsattach]\" in INI configuration "
                          "file; no options taken from it")
            else:
                self.warn(Origin(shown, 0), None,
                          f"can't find section \"[{section}]\" in INI configuration file; no "
                          "options taken from it")

    def close_scope(self, scope: _Scope) -> None:
        if scope.block is not None:
            b = scope.block
            where = "the end of the file" if scope.name != COMMAND_LINE else \
                "the end of the command line"
            self.error(b.origin, b.key,
                       f"logic block is never closed: add 'end{'for' if b.kind == 'for' else 'if'}'"
                       f" before {where}")
            scope.block = None

    # ---- lines

    def feed(self, scope: _Scope, key: str, value: str, origin: Origin) -> None:
        """A line read from a file or the command line."""
        if key in END_KEYS:
            if scope.rejected and scope.block is not None:
                scope.rejected -= 1       # closes a rejected nested block (already reported)
                return
            if scope.block is None:
                self.error(origin, key, "closing key without an open logic block (valid: "
                           "after for/for-*/if-*/else)")
            scope.block = None
            scope.rejected = 0
            return
        if key == ELSE_KEY:
            b = scope.block
            if scope.rejected and b is not None:
                return                    # belongs to a rejected nested block
            if b is None:
                self.error(origin, key, "'else' without an open if-block")
            elif b.kind != "if":
                self.error(origin, key, f"'else' is only valid in an if-block, not after "
                           f"{b.key!r} (opened at {b.origin})")
            else:
                failed = b.failed
                if failed is None:
                    failed = not self.evaluate(b)[0]
                scope.block = _Block(key, "else", "", origin, failed=failed)
            return
        if key in LOGIC_KEYS and scope.block is not None:
            self.error(origin, key, f"recursive logic in options is not supported "
                       f"(option = {key}): a {scope.block.key!r} block opened at "
                       f"{scope.block.origin} is still open; close it first")
            scope.rejected += 1
            return
        if scope.block is not None:
            self.run_block(scope, key, value, origin)
            return
        self.add(scope, key, value, origin)

    def run_block(self, scope: _Scope, key: str, value: str, origin: Origin) -> None:
        b = scope.block
        assert b is not None
        self.running += 1
        try:
            if b.kind == "for":
                for item in b.items or ():
                    self.add(scope, key, value.replace("%(_)", item), origin)
            elif b.kind == "else":
                if b.failed:
                    self.add(scope, key, value, origin)
            else:
                ok, ctx = self.evaluate(b)
                b.failed = not ok
                if ok:
                    if ctx is not None:
                        value = value.replace("%(_)", ctx)
                    self.add(scope, key, value, origin)
        finally:
            self.running -= 1

    def evaluate(self, b: _Block) -> tuple[bool, str | None]:
        """-> (condition holds, context value for %(_) or None to leave it)."""
        arg = b.arg
        cond = b.cond
        ctx: str | None = arg
        if cond in ("env", "opt"):
            name, eq, want = arg.partition("=")
            if cond == "env":
                got = self.environ.get(name) if name and "\0" not in name else None
            else:
                got = self.first_value.get(name)
            ctx = got
            ok = got is not None and (not eq or got == want)
        elif cond in ("exists", "file", "dir"):
            path = os.path.join(self.cwd, arg) if arg else ""
            try:
                if not arg:
                    ok = False
                elif cond == "exists":
                    ok = os.path.lexists(path)
                elif cond == "file":
                    ok = os.path.isfile(path)
                else:
                    ok = os.path.isdir(path)
            except (OSError, ValueError):
                ok = False
        elif cond == "hostname":
            ok = self.hostname == arg
        elif cond == "hostname-match":
            ok = b.pattern is not None and b.pattern.search(self.hostname) is not None
        elif cond == "reload":
            ok = False          # never a reload while the configuration is loaded
            ctx = None
        else:                   # plugin
            ok = False
        if b.negated:
            ok = not ok
        return ok, ctx

    def add(self, scope: _Scope, key: str, value: str, origin: Origin) -> None:
        """Add one option: immediate keys act now, the rest become entries."""
        self.adds += 1
        if self.adds > MAX_ADDS:
            self.error(origin, key, f"more than {MAX_ADDS} configuration entries (runaway "
                       "loop or include?); configuration loading stopped here")
            raise _Abort()
        if key in LOGIC_KEYS:
            if scope.block is not None or self.running:
                self.error(origin, key, f"recursive logic in options is not supported "
                           f"(option = {key}): logic blocks cannot be nested")
                return
            self.open_block(scope, key, value, origin)
            return
        if key in END_KEYS or key == ELSE_KEY:
            # only reachable through 'set' or a block body
            self.error(origin, key, f"{key!r} cannot be used here")
            return
        if key in FILE_KEYS:
            self._warn_unexpanded(origin, key, value)
            base = scope.base_dir
            self.load_file(value, base, origin, key)
            return
        if key in SET_KEYS or key in SET_PH_KEYS:
            k, eq, v = value.partition("=")
            k, v = k.strip(" \t\r"), v.strip(" \t\r")
            if not eq or not k:
                self.error(origin, key, f"invalid placeholder/option syntax {value!r}: "
                           f"expected {key} = name=value")
                return
            if key in SET_KEYS:
                self._warn_unexpanded(origin, key, k, ("%(", "$(", "@("))
                self.add(scope, k, v, origin)
                return
            self._warn_unexpanded(origin, key, v, ("$(", "@("))
            if self.is_option(k) or k in IMMEDIATE_KEYS:
                self.error(origin, key, f"you cannot use {k!r} as a placeholder, it is "
                           "already available as an option (pick another name, or use "
                           f"'set = {k}=...' to set the option)")
                return
            self._append(k, v, origin, raw=True)
            self.placeholders.add(k)
            return
        self._append(key, value, origin, raw=False)

    def _append(self, key: str, value: str, origin: Origin, raw: bool) -> None:
        if raw:
            self.raw_indices.add(len(self.entries))
        self.entries.append(Entry(key, value, origin))
        self.first_value.setdefault(key, value)

    def open_block(self, scope: _Scope, key: str, value: str, origin: Origin) -> None:
        self._warn_unexpanded(origin, key, value)
        if key in FOR_KEYS:
            items = self.for_items(FOR_KEYS[key], key, value, origin)
            if items is None:
                items = []
            scope.block = _Block(key, "for", value, origin, items=items)
        else:
            cond, negated = IF_KEYS[key]
            block = _Block(key, "if", value, origin, cond=cond, negated=negated)
            if cond == "hostname-match":
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        block.pattern = re.compile(value)
                except (re.error, RecursionError, OverflowError) as e:
                    self.error(origin, key, f"invalid regular expression {value!r}: {e}")
            scope.block = block

    def for_items(self, kind: str, key: str, arg: str, origin: Origin) -> list[str] | None:
        if kind == "for":
            return [p for p in arg.split(" ") if p]
        if kind == "times":
            s = arg.strip()
            if not re.fullmatch(r"[0-9]+", s):
                self.error(origin, key, f"{arg!r} is not a number (expected for-times = N, "
                           "N >= 0)")
                return None
            n = int(s)
            if n > MAX_ADDS:
                self.error(origin, key, f"for-times = {n} exceeds the limit of {MAX_ADDS} "
                           "iterations")
                return None
            return [str(i) for i in range(1, n + 1)]
        if kind == "glob":
            if not arg or "\0" in arg:
                return [arg] if arg else []
            try:
                if os.path.isabs(arg):
                    found = glob.glob(arg)
                else:
                    found = glob.glob(arg, root_dir=self.cwd)
            except (OSError, ValueError):
                found = []
            out = []
            for p in sorted(found):
                full = p if os.path.isabs(p) else os.path.join(self.cwd, p)
                out.append(p + "/" if os.path.isdir(full) and not p.endswith("/") else p)
            return out or [arg]          # GLOB_NOCHECK: no match -> the pattern itself
        # readline
        path = os.path.join(self.cwd, arg)
        try:
            if "\0" in path:
                raise ValueError("NUL in file name")
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except (OSError, ValueError) as e:
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.error(origin, key, f"cannot read {path!r}: {msg}")
            return None
        if len(data) > MAX_FILE_SIZE:
            self.error(origin, key, f"{path!r} is larger than {MAX_FILE_SIZE} bytes")
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.error(origin, key, f"{path!r} is not valid UTF-8")
            return None
        if "\0" in text:
            self.error(origin, key, f"{path!r} contains a NUL byte")
            return None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [ln.rstrip("\r") for ln in lines]


def _shown(path: str, section: str | None) -> str:
    return path if section is None else f"{path}:{section}"


def load_raw(config_args: list[str], cli_entries: Iterable[tuple[str, str, int]] = (), *,
             is_option: Callable[[str], bool], environ: Mapping[str, str] | None = None,
             cwd: str | None = None, hostname: str | None = None) -> RawConfig:
    """Read the configuration: ``-c`` files in order, then command-line entries, then expand.

    Raises ConfigError with every problem found; warnings are returned in the RawConfig.
    """
    environ = os.environ if environ is None else environ
    cwd = os.path.abspath(os.getcwd() if cwd is None else cwd)
    hostname = socket.gethostname() if hostname is None else hostname
    loader = _Loader(is_option=is_option, environ=environ, cwd=cwd, hostname=hostname)
    try:
        loader.static_magic = _static_magic(cwd, hostname)
    except Exception as e:     # pragma: no cover - defensive: never a traceback
        loader.static_magic = {}
        loader.warn(None, None, f"could not compute magic variables: {e}")

    aborted = False
    try:
        for arg in config_args:
            loader.load_file(arg, cwd, None, "-c")
        scope = _Scope(COMMAND_LINE, cwd)
        for key, value, index in cli_entries:
            origin = Origin(COMMAND_LINE, index)
            if not key:
                loader.error(origin, None, "empty option name on the command line")
                continue
            loader.feed(scope, key, value, origin)
        loader.close_scope(scope)
    except _Abort:
        aborted = True
    except RecursionError:
        aborted = True
        loader.error(None, None, "configuration nested too deeply")

    if aborted:
        raise ConfigError(loader.errors)

    result = _expand.expand_entries(loader.entries, raw=loader.raw_indices,
                                    environ=environ, cwd=cwd)
    errors = loader.errors + result.errors
    if errors:
        raise ConfigError(errors)
    placeholders = set(loader.placeholders) | result.placeholders
    placeholders.discard("_")
    return RawConfig(entries=result.entries, files=loader.files,
                     placeholders=placeholders, warnings=loader.warnings)
