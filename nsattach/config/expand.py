"""The expansion passes uWSGI applies to deferred options: ``$( )``, then ``@( )``, then ``%( )``.

After every configuration file and the command line have been read (``ini.py``), the values of
all deferred entries are rewritten pass by pass, each pass over the whole list in order
(``uwsgi_apply_config_pass``):

1. ``$(NAME)`` - environment variable ``NAME``;
2. ``@(path)`` - contents of a file, exactly one trailing ``\\n`` or ``\\r`` removed;
3. ``%(name)`` - value of the FIRST entry called ``name`` (options count too: the classic
   ``%(chdir)`` takes the first ``chdir`` value); the "math" form when the text holds a space.

A token is ``<sym>(`` ... the matching ``)`` (nested parentheses allowed), scanned exactly the
way uWSGI scans it; an empty token (``%()``) is ignored. When a lookup finds nothing the token
stays in the text literally. ``set-placeholder`` entries are skipped by every pass (their value
is used raw), but ``%( )`` tokens inside them are expanded where they are substituted.

Deliberate differences from uWSGI (see also ``ini.py``):

* ``$( )`` follows uWSGI 2.0: a plain environment lookup, an unknown name is left literally.
  Only a POSIX-shaped name (``[A-Za-z_][A-Za-z0-9_]*``) is looked up, so shell command
  substitutions in daemon commands such as ``$(id -u)`` or ``$(cat /run/x.pid)`` survive.
  nsattach additionally supports ``$(NAME:-default)`` (default when ``NAME`` is unset or empty),
  split at the FIRST ``:-`` only, so the default may itself contain ``-`` and ``:``
  (``$(PORT:-a-b:c)`` gives ``a-b:c``). uWSGI 2.1 splits on the characters ``:``/``-`` and
  truncates such defaults (``dflt-x`` -> ``dflt``) and mangles ``$(id -u)`` into ``u``
  (Q-C2); the 2.1 ``$(NAME-default)`` form is not supported (it would break ``$(id -u)``).
* ``@( )`` reads plain files only (relative to the working directory); ``exec://``,
  ``http://`` and the other uWSGI schemes are rejected with an error saying so.
* uWSGI rescans the whole value from its start after every substitution, so a self reference
  (``a = %(a)``) or a cycle loops forever and ``a = %(a a)`` grows without bound. nsattach
  expands each substituted text on its own (recursively, with memoisation) and reports a
  reference cycle as an error naming it, nesting deeper than ``MAX_DEPTH`` as an error and any
  value larger than ``MAX_VALUE_SIZE`` as an error. A consequence: substituted text is never
  re-joined with the text around it to form a new token (``x = %(`` then ``%(x)name)`` does not
  look up ``name``), which only changes contrived configurations.
* In the math form operands are the fully expanded values of the named entries (uWSGI uses
  whatever state the entry has at that moment, i.e. unexpanded for later entries).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from nsattach.config.raw import Entry
from nsattach.errors import ConfigProblem

MAX_VALUE_SIZE = 1 << 20          # characters a single value may grow to while expanding
MAX_DEPTH = 64                    # nested references (a -> b -> c ...) followed at most
MAX_FILE_SIZE = 1 << 20           # bytes an @(file) may contain

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


class ExpandError(Exception):
    """An expansion failed; the message says what and how to fix it."""


class _Reported(Exception):
    """An error already recorded further down; unwind without recording it again."""


@dataclass
class ExpandResult:
    entries: list[Entry]
    placeholders: set[str] = field(default_factory=set)
    errors: list[ConfigProblem] = field(default_factory=list)


def scan_tokens(text: str, sym: str) -> Iterator[tuple[int, int, str]]:
    """Yield ``(start, end, content)`` for every complete ``sym(...)`` token, left to right.

    Parentheses nest; an unterminated token ends the scan (the rest of the text stays as is),
    and scanning resumes after the closing parenthesis of each token, like uWSGI.
    """
    opener = sym + "("
    n = len(text)
    i = 0
    while True:
        start = text.find(opener, i)
        if start < 0:
            return
        j = start + 2
        depth = 0
        while j < n:
            c = text[j]
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            j += 1
        if j >= n:
            return
        yield start, j + 1, text[start + 2:j]
        i = j + 1


def _substitute(text: str, sym: str, resolve) -> str:
    """Replace each token whose ``resolve(content)`` is not None; enforce the size cap."""
    if sym + "(" not in text:
        return text
    out: list[str] = []
    size = 0
    last = 0
    for start, end, content in scan_tokens(text, sym):
        if not content:
            continue
        rep = resolve(content)
        if rep is None:
            continue
        out.append(text[last:start])
        out.append(rep)
        size += (start - last) + len(rep)
        if size > MAX_VALUE_SIZE:
            raise ExpandError(
                f"value grows beyond {MAX_VALUE_SIZE} characters while expanding "
                f"{sym}({_short(content)}) (exponential placeholder growth?)")
        last = end
    if not out:
        return text
    out.append(text[last:])
    result = "".join(out)
    if len(result) > MAX_VALUE_SIZE:
        raise ExpandError(f"value grows beyond {MAX_VALUE_SIZE} characters while expanding")
    return result


def _short(s: str, limit: int = 60) -> str:
    return s if len(s) <= limit else s[:limit] + "..."


# --------------------------------------------------------------------------- $( )


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """The ``$( )`` pass over one value (see the module docstring for the rules)."""
    return _expand_env(text, environ, [])


def _expand_env(text: str, environ: Mapping[str, str], stack: list[str]) -> str:
    def resolve(content: str) -> str | None:
        m = _ENV_TOKEN.fullmatch(content)
        if m is None:
            return None            # not a variable name: a shell $(...) - leave it alone
        name, default = m.group(1), m.group(2)
        value = environ.get(name)
        if default is not None and not value:
            value = default
        if value is None:
            return None
        if name in stack:
            chain = " -> ".join(stack[stack.index(name):] + [name])
            raise ExpandError(f"environment variable reference cycle: $({chain})")
        if len(stack) >= MAX_DEPTH:
            raise ExpandError(f"$( ) references nested deeper than {MAX_DEPTH} levels")
        return _expand_env(value, environ, stack + [name])

    return _substitute(text, "$", resolve)


# --------------------------------------------------------------------------- @( )


def expand_files(text: str, cwd: str) -> str:
    """The ``@( )`` pass over one value: file contents, one trailing newline removed."""
    return _expand_files(text, cwd, [])


def _read_value_file(content: str, cwd: str) -> tuple[str, str]:
    if _SCHEME.match(content):
        scheme = content.split("://", 1)[0]
        raise ExpandError(
            f"@({_short(content)}): the {scheme}:// scheme is not supported by nsattach; "
            "@( ) only reads plain files (use a file path)")
    path = os.path.join(cwd, content)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ExpandError(
            f"@({_short(content)}): cannot read file {path!r}: {e.strerror or e}") from None
    except ValueError as e:      # e.g. an embedded NUL in the path
        raise ExpandError(f"@({_short(content)}): invalid file name: {e}") from None
    if len(data) > MAX_FILE_SIZE:
        raise ExpandError(f"@({_short(content)}): file {path!r} is larger than "
                          f"{MAX_FILE_SIZE} bytes")
    if b"\0" in data:
        raise ExpandError(f"@({_short(content)}): file {path!r} contains a NUL byte")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExpandError(f"@({_short(content)}): file {path!r} is not valid UTF-8 "
                          f"(byte offset {e.start})") from None
    if text.endswith(("\n", "\r")):
        text = text[:-1]
    return os.path.realpath(path), text


def _expand_files(text: str, cwd: str, stack: list[str]) -> str:
    def resolve(content: str) -> str | None:
        real, value = _read_value_file(content, cwd)
        if real in stack:
            chain = " -> ".join(stack[stack.index(real):] + [real])
            raise ExpandError(f"@( ) file inclusion cycle: {chain}")
        if len(stack) >= MAX_DEPTH:
            raise ExpandError(f"@( ) references nested deeper than {MAX_DEPTH} levels")
        return _expand_files(value, cwd, stack + [real])

    return _substitute(text, "@", resolve)


# --------------------------------------------------------------------------- %( )


def strtoll(s: str) -> int:
    """C ``strtoll(s, NULL, 10)``: leading blanks, optional sign, digits; saturating."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)", s)
    if m is None:
        return 0
    value = int(m.group(2))
    if m.group(1) == "-":
        value = -value
    return max(_INT64_MIN, min(_INT64_MAX, value))


def _wrap64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= (1 << 63) else v


def split_quoted(text: str) -> list[str]:
    """Split on spaces/tabs; single or double quotes group (and are removed), like uWSGI."""
    tokens: list[str] = []
    cur: list[str] = []
    have = False
    quote = None
    for c in text:
        if quote:
            if c == quote:
                quote = None
            else:
                cur.append(c)
        elif c in "\"'":
            quote = c
            have = True
        elif c in " \t":
            if have:
                tokens.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(c)
            have = True
    if have:
        tokens.append("".join(cur))
    return tokens


class _Placeholders:
    """The ``%( )`` pass: first-definition lookups with memoisation and cycle detection."""

    def __init__(self, entries: Sequence[Entry]):
        self.entries = entries
        self.first: dict[str, int] = {}
        for i, e in enumerate(entries):
            self.first.setdefault(e.key, i)
        self.cache: dict[int, str] = {}
        self.failed: set[int] = set()
        self.stack: list[int] = []
        self.looked_up: set[str] = set()
        self.reported_cycles: set[frozenset[int]] = set()

    def value_of(self, idx: int) -> str:
        if idx in self.cache:
            return self.cache[idx]
        if idx in self.failed:
            raise _Reported()
        if idx in self.stack:
            cycle = self.stack[self.stack.index(idx):]
            key = frozenset(cycle)
            names = " -> ".join(self.entries[i].key for i in cycle + [idx])
            if key in self.reported_cycles:
                raise _Reported()
            self.reported_cycles.add(key)
            raise ExpandError(f"placeholder reference cycle: %({names}); "
                              "a value cannot (indirectly) refer to itself")
        if len(self.stack) >= MAX_DEPTH:
            raise ExpandError(f"%( ) references nested deeper than {MAX_DEPTH} levels")
        self.stack.append(idx)
        try:
            value = self.expand(self.entries[idx].value)
        except BaseException:
            self.failed.add(idx)
            raise
        finally:
            self.stack.pop()
        self.cache[idx] = value
        return value

    def lookup(self, name: str) -> str | None:
        if name != "_":
            self.looked_up.add(name)
        idx = self.first.get(name)
        if idx is None:
            return None
        return self.value_of(idx)

    def resolve(self, content: str) -> str | None:
        if " " not in content:
            return self.lookup(content)
        return self.math(content)

    def math(self, content: str) -> str | None:
        tokens = split_quoted(content)
        if not tokens:
            return None
        cur: str | None = None
        op = None
        for tok in tokens:
            if tok.isascii() and tok.isdigit():
                operand = tok
            else:
                operand = self.lookup(tok) if tok in self.first else None
                if operand is None:
                    if tok in ("+", "-", "*", "/"):
                        op = tok
                        continue
                    if tok in ("++", "--"):
                        base = strtoll(cur or "")
                        cur = str(_wrap64(base + (1 if tok == "++" else -1)))
                        continue
                    if tok != "_":
                        self.looked_up.add(tok)
                    operand = ""
            cur = _apply(op, cur, operand)
            op = None
        return cur

    def expand(self, text: str) -> str:
        return _substitute(text, "%", self.resolve)


def _apply(op: str | None, cur: str | None, operand: str) -> str:
    if op is None:
        return (cur or "") + operand
    a = strtoll(cur or "")
    b = strtoll(operand)
    if op == "+":
        return str(_wrap64(a + b))
    if op == "-":
        return str(_wrap64(a - b))
    if op == "*":
        return str(_wrap64(a * b))
    if b == 0:
        return "0"
    q = abs(a) // abs(b)            # C division truncates toward zero
    return str(_wrap64(q if (a >= 0) == (b >= 0) else -q))


# --------------------------------------------------------------------------- all passes


def expand_entries(entries: Sequence[Entry], *, raw: Collection[int] = (),
                   environ: Mapping[str, str], cwd: str) -> ExpandResult:
    """Apply the three passes to every entry whose index is not in ``raw``.

    Returns new entries (same order, same origins), the names looked up through ``%( )``
    (``_`` excluded) and one problem per failing entry. A failing entry keeps the value it had
    before the failing pass. Problems are listed in entry order.
    """
    raw = set(raw)
    values = [e.value for e in entries]
    found: list[tuple[int, ConfigProblem]] = []
    seen: set[tuple[int, str]] = set()

    def record(i: int, message: str) -> None:
        if (i, message) not in seen:
            seen.add((i, message))
            found.append((i, ConfigProblem(entries[i].origin, entries[i].key, message)))

    for i, v in enumerate(values):
        if i in raw or "$(" not in v:
            continue
        try:
            values[i] = _expand_env(v, environ, [])
        except ExpandError as e:
            record(i, str(e))

    for i, v in enumerate(values):
        if i in raw or "@(" not in v:
            continue
        try:
            values[i] = _expand_files(v, cwd, [])
        except ExpandError as e:
            record(i, str(e))

    staged = [Entry(e.key, values[i], e.origin) for i, e in enumerate(entries)]
    ph = _Placeholders(staged)
    for i in range(len(staged)):
        if i in raw:
            continue
        try:
            values[i] = ph.value_of(i)
        except ExpandError as e:
            record(i, str(e))
        except _Reported:
            pass
        except RecursionError:
            record(i, "placeholder references nested too deeply")

    out = [Entry(e.key, values[i], e.origin) for i, e in enumerate(entries)]
    found.sort(key=lambda item: item[0])          # stable: per entry, in pass order
    return ExpandResult(out, ph.looked_up, [problem for _, problem in found])
