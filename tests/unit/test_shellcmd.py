"""shell_argv / needs_exec_prefix: when ``exec`` may go in front of a daemon's command.

Real ``sh -c`` runs proving the rewritten command's shell pid *is* the program live in
tests/process/test_spawn.py; this file stays pure.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from nsattach.core import shellcmd
from nsattach.core.shellcmd import needs_exec_prefix, shell_argv, with_exec_prefix

# command -> rewritten command (same string = left untouched)
CASES = [
    # simple commands get exec
    ("sleep 30", "exec sleep 30"),
    ("  sleep 30", "  exec sleep 30"),
    ("/usr/bin/memcached -p 11211 -u nobody", "exec /usr/bin/memcached -p 11211 -u nobody"),
    ("memcached -p 1 > /tmp/log", "exec memcached -p 1 > /tmp/log"),
    ("memcached -p 1 >/tmp/log 2>&1", "exec memcached -p 1 >/tmp/log 2>&1"),
    ("cmd 2>&1 >>log </dev/null", "exec cmd 2>&1 >>log </dev/null"),
    ("cmd >| clobber", "exec cmd >| clobber"),
    ("true", "exec true"),
    ("false", "exec false"),
    ("echo 'a; b' \"c | d\" e\\;f", "exec echo 'a; b' \"c | d\" e\\;f"),
    ("'/opt/my prog' --x", "exec '/opt/my prog' --x"),
    ('"$HOME/bin/x" -v', 'exec "$HOME/bin/x" -v'),
    ("redis-server --port $(cat /etc/port)", "exec redis-server --port $(cat /etc/port)"),
    ("x $(a | b; c) `d; e`", "exec x $(a | b; c) `d; e`"),
    ("x ${A:-a;b} $((1+2))", "exec x ${A:-a;b} $((1+2))"),
    ("x \"$(echo ')')\"", "exec x \"$(echo ')')\""),
    ("sleep 5 # comment; with & stuff", "exec sleep 5 # comment; with & stuff"),
    ("sleep \\\n 5", "exec sleep \\\n 5"),
    ("a#b c", "exec a#b c"),
    # leading assignments and redirections stay in front of exec (dash: A=1 exec env works,
    # exec A=1 env looks for a program called A=1)
    ("A=1 env", "A=1 exec env"),
    ("A=1 B='x y' env", "A=1 B='x y' exec env"),
    (">/dev/null sleep 1", ">/dev/null exec sleep 1"),
    ("A=1 >log B=2 cmd", "A=1 >log B=2 exec cmd"),
    ("2>/dev/null ls", "2>/dev/null exec ls"),
    ('"A=1" cmd', 'exec "A=1" cmd'),
    ("a2>x cmd", "exec a2>x cmd"),
    # control operators: several commands, pipelines, background, subshells
    ("a; b", None),
    ("a && b", None),
    ("a || b", None),
    ("a | b", None),
    ("a &", None),
    ("a &>log", None),
    ("a\nb", None),
    ("(a)", None),
    ("a (b)", None),
    ("sleep 5 # c\nother", None),
    ("cat <<EOF", None),
    ("cat 0<<EOF", None),
    # reserved words
    ("if true; then x; fi", None),
    ("while :; do x; done", None),
    ("{ x; }", None),
    ("! x", None),
    ("for i in 1; do x; done", None),
    ("case x in x) y;; esac", None),
    ("function f", None),
    ("time sleep 1", None),
    ("A=1 if x", None),
    # shell-only builtins and exec itself
    ("exec sleep 30", None),
    ("A=1 exec env", None),
    ("cd /tmp", None),
    ("export A=1", None),
    ("set -e", None),
    (". ./env.sh", None),
    ("source env.sh", None),
    ("eval x", None),
    (": nothing", None),
    ("ulimit -n 10", None),
    ("umask 022", None),
    ("wait", None),
    ("exit 3", None),
    ("trap '' INT", None),
    # nothing to run: empty, assignments or redirections only
    ("", None),
    ("   ", None),
    ("A=1", None),
    ("A=1 B=2", None),
    (">/tmp/x", None),
    ("A=1 >/tmp/x", None),
    ("cmd >", None),
    # unbalanced: let sh report it
    ("echo 'oops", None),
    ('echo "oops', None),
    ("echo `oops", None),
    ("echo $(oops", None),
    ("echo ${oops", None),
    ('echo "$(oops"', None),
]


@pytest.mark.parametrize(("command", "expected"), CASES, ids=[repr(c) for c, _ in CASES])
def test_exec_prefix_table(command: str, expected: str | None) -> None:
    want = command if expected is None else expected
    assert with_exec_prefix(command) == want
    assert needs_exec_prefix(command) is (expected is not None)


def test_shell_argv_shape() -> None:
    assert shell_argv("/bin/sh", "sleep 30") == ["/bin/sh", "-c", "exec sleep 30"]
    assert shell_argv("/bin/bash", "a | b") == ["/bin/bash", "-c", "a | b"]


def test_prefix_is_idempotent() -> None:
    for command, _ in CASES:
        once = with_exec_prefix(command)
        assert with_exec_prefix(once) == once


def test_shellcmd_is_pure() -> None:
    tree = ast.parse(pathlib.Path(shellcmd.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"os", "signal", "subprocess", "socket", "ctypes", "shlex"}
