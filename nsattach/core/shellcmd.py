"""Turn a daemon's command string into the argv we exec, with ``exec`` put in front when safe.

uWSGI runs every daemon as ``/bin/sh -c COMMAND``. Whether the shell then ``exec``s the program
or forks it and waits depends on the shell and the command: Debian's dash 0.5.12 forks even for
``sleep 5``, and any shell forks for ``memcached -p 1 > /tmp/log``. A forked program means the pid
we track is a ``sh`` that does not forward signals. Prefixing ``exec`` makes the shell replace
itself with the program, so the pid we watch *is* the program.

Prefixing is only safe when the command is one simple command that names a program. This module
decides that with a small POSIX tokenizer. Whenever it is unsure (unbalanced quotes, a compound
command, a builtin, an unterminated ``$(``) it leaves the command exactly as written: the shell
then runs it the way uWSGI would, and signals still reach it through its process group.

Where ``exec`` goes: after leading assignments and redirections, right before the command word.
dash honours ``A=1 exec env`` (``A`` reaches the program) and ``>log exec cmd``, but
``exec A=1 env`` tries to run a program called ``A=1``.

Pure: no os, no signal, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["shell_argv", "needs_exec_prefix", "with_exec_prefix"]

# Words that open or continue a compound command, or are keywords in some /bin/sh (bash: time,
# function, select, coproc, [[). A reserved word is only special unquoted; a quoted one is a word
# like any other, but leaving it alone costs nothing.
_RESERVED = frozenset(
    "if then else elif fi do done case esac while until for { } ! in function select time "
    "coproc [[ ]]".split()
)

# Builtins that only mean something inside the shell (changing its state, or with no program of
# that name), so ``exec NAME`` would fail or do something else. Programs that also exist as
# builtins (true, false, echo, printf, test, [, kill, pwd, sleep) are fine to exec.
_SHELL_ONLY = frozenset(
    ". : source eval exec exit return break continue shift times trap unset set export readonly "
    "local declare typeset let cd pushd popd dirs alias unalias hash type command builtin "
    "enable getopts read readarray mapfile ulimit umask wait jobs fg bg disown suspend "
    "logout history fc shopt compgen complete compopt caller help bind".split()
)

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_REDIRECT_OPS = ("<<-", "<<", ">>", "<&", ">&", "<>", ">|", "<", ">")


class _Unsure(Exception):
    """The command is not something we can safely prefix."""


@dataclass(frozen=True)
class _Token:
    kind: str      # "word" or "redirect" (the operator; the target is the next word)
    text: str      # raw text as written, quotes included
    start: int     # offset in the command


def _skip_single_quote(s: str, i: int) -> int:
    """``s[i]`` is ``'``; return the index just past the closing quote."""
    end = s.find("'", i + 1)
    if end < 0:
        raise _Unsure("unbalanced single quote")
    return end + 1


def _skip_double_quote(s: str, i: int) -> int:
    """``s[i]`` is ``"``; return the index just past the closing quote."""
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        elif c == "`":
            i = _skip_backquote(s, i)
        elif s.startswith("$(", i) or s.startswith("${", i):
            i = _skip_dollar(s, i)
        else:
            i += 1
    raise _Unsure("unbalanced double quote")


def _skip_backquote(s: str, i: int) -> int:
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
        elif c == "`":
            return i + 1
        else:
            i += 1
    raise _Unsure("unbalanced backquote")


def _skip_dollar(s: str, i: int) -> int:
    """``s[i:]`` starts with ``$(`` or ``${``; return the index past the matching closer.

    Nested brackets and quotes are followed. A ``case`` pattern's lone ``)`` inside ``$(...)``
    ends the scan early; the rest is then read as top level, which only makes us more careful.
    """
    opener = s[i + 1]
    closer = ")" if opener == "(" else "}"
    depth = 0
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            i = _skip_single_quote(s, i)
            continue
        if c == '"':
            i = _skip_double_quote(s, i)
            continue
        if c == "`":
            i = _skip_backquote(s, i)
            continue
        if c == opener:
            depth += 1
        elif c == closer:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise _Unsure("unterminated $( or ${")


def _tokenize(s: str) -> list[_Token]:
    """Split one command line into words and redirection operators, POSIX style.

    Raises _Unsure on an unquoted control operator (; & | newline ( )) or anything unbalanced.
    """
    tokens: list[_Token] = []
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c in " \t":
            i += 1
            continue
        if c == "\\" and i + 1 < n and s[i + 1] == "\n":    # line continuation
            i += 2
            continue
        if c in ";&|\n()":
            raise _Unsure(f"control operator {c!r}")
        if c == "#":                                         # a comment runs to end of line
            nl = s.find("\n", i)
            if nl < 0:
                break
            raise _Unsure("newline after comment")
        op = next((o for o in _REDIRECT_OPS if s.startswith(o, i)), None)
        if op is not None:
            if op.startswith("<<"):
                raise _Unsure("here-document")
            tokens.append(_Token("redirect", op, i))
            i += len(op)
            continue
        # a word: runs until unquoted blank, operator or redirection character
        start = i
        while i < n:
            c = s[i]
            if c in " \t;&|\n()<>":
                break
            if c == "\\":
                if i + 1 >= n:
                    i += 1          # a trailing backslash is literal for sh
                else:
                    i += 2
            elif c == "'":
                i = _skip_single_quote(s, i)
            elif c == '"':
                i = _skip_double_quote(s, i)
            elif c == "`":
                i = _skip_backquote(s, i)
            elif c == "$" and i + 1 < n and s[i + 1] in "({":
                i = _skip_dollar(s, i)
            else:
                i += 1
        word = s[start:i]
        # 2>&1: a word of digits right before a redirection operator is its fd number
        if word.isdigit() and i < n and s[i] in "<>":
            op = next(o for o in _REDIRECT_OPS if s.startswith(o, i))
            if op.startswith("<<"):
                raise _Unsure("here-document")
            tokens.append(_Token("redirect", word + op, start))
            i += len(op)
            continue
        tokens.append(_Token("word", word, start))
    return tokens


def _command_word(command: str) -> _Token | None:
    """The token naming the program, or None when there is none we may put ``exec`` before."""
    try:
        tokens = _tokenize(command)
    except _Unsure:
        return None
    if not tokens:
        return None
    for k, tok in enumerate(tokens):
        if tok.kind == "redirect" and (k + 1 >= len(tokens) or tokens[k + 1].kind != "word"):
            return None                       # "cmd >" with no target: let sh complain
    if tokens[0].kind == "word" and tokens[0].text in _RESERVED:
        return None
    k = 0
    while k < len(tokens):
        tok = tokens[k]
        if tok.kind == "redirect":
            k += 2                            # the operator and its target word
            continue
        if _ASSIGNMENT.match(tok.text):
            k += 1
            continue
        if tok.text in _RESERVED or tok.text in _SHELL_ONLY:
            return None
        return tok
    return None                               # only assignments and redirections


def needs_exec_prefix(command: str) -> bool:
    """True when ``exec`` can and should go in front of the program in ``command``."""
    return _command_word(command) is not None


def with_exec_prefix(command: str) -> str:
    """``command`` with ``exec `` inserted before its program word, or unchanged when unsafe."""
    tok = _command_word(command)
    if tok is None:
        return command
    return command[: tok.start] + "exec " + command[tok.start :]


def shell_argv(binsh: str, command: str) -> list[str]:
    """The argv that runs ``command`` through ``binsh`` so that the shell becomes the program."""
    return [binsh, "-c", with_exec_prefix(command)]
