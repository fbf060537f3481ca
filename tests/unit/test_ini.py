"""The uWSGI ini dialect: files, sections, magic variables, logic blocks, includes (config.ini)."""

from __future__ import annotations

import atexit
import builtins
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nsattach
from nsattach.config import ini
from nsattach.config.ini import djb33x_hash, load_raw, parse_config_arg
from nsattach.config.raw import COMMAND_LINE, RawConfig
from nsattach.errors import ConfigError, Origin

OPTIONS = {"master", "socket", "chdir", "env", "attach-daemon", "smart-attach-daemon",
           "rbrequire", "rack", "namespace", "namespace-keep-mount", "exec-as-root",
           "legion-mcast", "legion-smart-attach-daemon", "attach-daemon2", "pidfile"}

SEED = Path("/work/shared/reference/seed-managing-external-daemons.txt")


def is_option(name: str) -> bool:
    return name in OPTIONS


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str | None = None, *, args=None, cli=(), environ=None,
         hostname="box", name="main.ini") -> RawConfig:
    if text is not None:
        write(tmp_path / name, text)
    if args is None:
        args = [str(tmp_path / name)]
    return load_raw(args, cli, is_option=is_option, environ=environ or {},
                    cwd=str(tmp_path), hostname=hostname)


def kv(raw: RawConfig) -> list[tuple[str, str]]:
    return [(e.key, e.value) for e in raw.entries]


def errors(tmp_path: Path, text: str | None = None, **kw) -> list:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text, **kw)
    return ei.value.problems


def messages(problems) -> str:
    return "\n".join(str(p) for p in problems)


# --------------------------------------------------------------------------- parse_config_arg


@pytest.mark.parametrize("arg, expected", [
    ("f.ini", ("f.ini", None)),
    ("f.ini:sec", ("f.ini", "sec")),
    ("f.ini:", ("f.ini", None)),
    (":sec", ("", "sec")),
    ("a:b:c", ("a:b", "c")),
    ("/etc/a:b/c.ini", ("/etc/a:b/c.ini", None)),
    ("/etc/a:b/c.ini:s", ("/etc/a:b/c.ini", "s")),
    ("http://host/x.ini", ("http://host/x.ini", None)),
    ("", ("", None)),
])
def test_parse_config_arg(arg, expected):
    assert parse_config_arg(arg) == expected


# --------------------------------------------------------------------------- lines and sections


class TestLines:
    def test_basic_key_values_in_order(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nmaster = true\nsocket=:3031\n  chdir\t=\t/srv  \n")
        assert kv(r) == [("master", "true"), ("socket", ":3031"), ("chdir", "/srv")]
        assert r.entries[2].origin == Origin(str(tmp_path / "main.ini"), 4)
        assert r.files == [str(tmp_path / "main.ini")]
        assert r.warnings == []

    def test_comments_and_blank_lines(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\n; c1\n# c2\n\n   \n  ;indented\na = 1\n")
        assert kv(r) == [("a", "1")]

    def test_no_inline_comments(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\na = v ; c\nb = x # y\n")
        assert kv(r) == [("a", "v ; c"), ("b", "x # y")]

    def test_bare_key_has_empty_value(self, tmp_path):
        assert kv(load(tmp_path, "[uwsgi]\nmaster\n")) == [("master", "")]

    def test_key_ends_at_first_equal(self, tmp_path):
        assert kv(load(tmp_path, "[uwsgi]\nenv = A=B = C\n")) == [("env", "A=B = C")]

    def test_crlf_file(self, tmp_path):
        (tmp_path / "main.ini").write_bytes(b"[uwsgi]\r\na = 1\r\nb = 2 \r\n")
        assert kv(load(tmp_path)) == [("a", "1"), ("b", "2")]

    def test_repeated_keys_all_kept(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nattach-daemon = a\nattach-daemon = b\nattach-daemon = a\n")
        assert r.values("attach-daemon") == ["a", "b", "a"]

    def test_empty_key_is_an_error(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\n= value\n")
        assert probs[0].origin == Origin(str(tmp_path / "main.ini"), 2)
        assert "empty key" in probs[0].message

    def test_no_line_continuation_or_quoting(self, tmp_path):
        r = load(tmp_path, '[uwsgi]\na = "x y" \\\nb = \'z\'\n')
        assert kv(r) == [("a", '"x y" \\'), ("b", "'z'")]


class TestSections:
    def test_default_takes_uwsgi_and_nsattach(self, tmp_path):
        r = load(tmp_path, "a = 0\n[uwsgi]\na = 1\n[other]\nb = 2\n[nsattach]\nc = 3\n"
                           "[uwsgi]\nd = 4\n")
        assert kv(r) == [("a", "1"), ("c", "3"), ("d", "4")]

    def test_named_section(self, tmp_path):
        write(tmp_path / "main.ini", "[uwsgi]\na = 1\n[dev]\nb = 2\n[dev]\nc = 3\n")
        r = load(tmp_path, args=[f"{tmp_path}/main.ini:dev"])
        assert kv(r) == [("b", "2"), ("c", "3")]

    def test_named_section_does_not_take_nsattach(self, tmp_path):
        write(tmp_path / "main.ini", "[nsattach]\na = 1\n[uwsgi]\nb = 2\n")
        assert kv(load(tmp_path, args=[f"{tmp_path}/main.ini:uwsgi"])) == [("b", "2")]

    def test_empty_section_suffix_means_default(self, tmp_path):
        write(tmp_path / "main.ini", "[uwsgi]\na = 1\n[x]\nb = 2\n")
        assert kv(load(tmp_path, args=[f"{tmp_path}/main.ini:"])) == [("a", "1")]

    def test_missing_section_is_only_a_warning(self, tmp_path):
        write(tmp_path / "main.ini", "[uwsgi]\na = 1\n")
        r = load(tmp_path, args=[f"{tmp_path}/main.ini:prod"])
        assert r.entries == []
        assert len(r.warnings) == 1
        assert 'section "[prod]"' in r.warnings[0].message
        assert r.warnings[0].origin.file == str(tmp_path / "main.ini")

    def test_missing_default_section_is_only_a_warning(self, tmp_path):
        r = load(tmp_path, "[app]\na = 1\n")
        assert r.entries == []
        assert "[uwsgi]" in r.warnings[0].message and "[nsattach]" in r.warnings[0].message

    def test_header_drops_its_last_character_blindly(self, tmp_path):
        # Q-C5: '[uwsgi] ; x' is section 'uwsgi] ;' and '[uwsgix' is section 'uwsgi'
        r = load(tmp_path, "[uwsgi] ; x\na = 1\n[uwsgix\nb = 2\n")
        assert kv(r) == [("b", "2")]

    def test_section_name_from_magic_variable(self, tmp_path):
        write(tmp_path / "main.ini", "[%n]\na = 1\n[uwsgi]\nb = 2\n")
        assert kv(load(tmp_path, args=[f"{tmp_path}/main.ini:main"])) == [("a", "1")]


# --------------------------------------------------------------------------- magic variables


class TestMagic:
    def test_file_variables(self, tmp_path):
        d = tmp_path / "etc" / "ns"
        write(d / "app.conf.ini", "[uwsgi]\np = %p\ns = %s\nd = %d\nc = %c\ne = %e\nn = %n\n"
                                  "o = %o\nx = %x\n")
        r = load(tmp_path, args=[f"{d}/app.conf.ini:uwsgi"])
        got = dict(kv(r))
        assert got["p"] == f"{d}/app.conf.ini"
        assert got["s"] == "app.conf.ini"
        assert got["d"] == f"{d}/"
        assert got["c"] == "ns"
        assert got["e"] == "ini"
        assert got["n"] == "app.conf"
        assert got["o"] == f"{d}/app.conf.ini:uwsgi"
        assert got["x"] == "uwsgi"

    def test_directory_components(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nv = %0|%1|%9\n")
        parts = [p for p in str(tmp_path).split("/") if p]
        assert r.entries[0].value == f"{parts[0]}|{parts[1] if len(parts) > 1 else ''}|" + \
            (parts[9] if len(parts) > 9 else "")

    def test_relative_argument_and_realpath(self, tmp_path):
        write(tmp_path / "real" / "a.ini", "[uwsgi]\np = %p\no = %o\n")
        r = load(tmp_path, args=["real/../real/a.ini"])
        assert dict(kv(r)) == {"p": f"{tmp_path}/real/a.ini", "o": "real/../real/a.ini"}

    def test_symlink_is_not_resolved(self, tmp_path):
        write(tmp_path / "real" / "a.ini", "[uwsgi]\np = %p\nd = %d\n")
        os.symlink(tmp_path / "real" / "a.ini", tmp_path / "link.ini")
        r = load(tmp_path, args=["link.ini"])
        assert dict(kv(r)) == {"p": f"{tmp_path}/link.ini", "d": f"{tmp_path}/"}

    def test_inode_and_hash(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\ni = %i\nj = %j\n")
        path = str(tmp_path / "main.ini")
        got = dict(kv(r))
        assert got["i"] == str(os.lstat(path).st_ino)
        assert got["j"] == djb33x_hash(path.encode()).to_bytes(4, "little").hex()
        assert len(got["j"]) == 8

    def test_djb33x_hash(self):
        assert djb33x_hash(b"") == 5381
        assert djb33x_hash(b"a") == (5381 * 33) ^ 97
        # C 'char' is signed: 0xff is -1, sign-extended before the xor
        assert djb33x_hash(b"\xff") == ((5381 * 33) ^ 0xFFFFFFFF) & 0xFFFFFFFF

    def test_process_variables(self, tmp_path):
        before = int(time.time())
        r = load(tmp_path, "[uwsgi]\nh = %h\nv = %v\nk = %k\nV = %V\nu = %u\ng = %g\n"
                           "esc = %[[0m\nt = %t\nT = %T\nb = %b\nU = %U\nG = %G\n",
                 hostname="node7")
        got = dict(kv(r))
        assert got["h"] == "node7"
        assert got["v"] == str(tmp_path)
        assert got["k"] == str(os.cpu_count())
        assert got["V"] == nsattach.__version__
        assert got["u"] == str(os.getuid()) and got["g"] == str(os.getgid())
        assert got["esc"] == "\x1b[0m"
        assert before <= int(got["t"]) <= int(time.time())
        assert int(got["T"]) // 1_000_000 == int(got["t"])
        assert os.path.isabs(got["b"])
        import pwd
        assert got["U"] == pwd.getpwuid(os.getuid()).pw_name

    def test_percent_escapes(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\na = 100%%\nb = %%(x)\nc = %(a)\n")
        # '%%(' still yields a '%(' placeholder (uWSGI scans sequentially)
        assert kv(r) == [("a", "100%"), ("b", "%(x)"), ("c", "100%")]

    def test_unknown_magic_becomes_empty_with_warning(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\n\ncmd = date +%Y-%m | %s\n")
        assert r.entries[0].value == "date +- | main.ini"
        w = r.warnings
        assert len(w) == 1
        assert w[0].origin == Origin(str(tmp_path / "main.ini"), 3)
        assert w[0].key == "cmd" and "'%Y'" in w[0].message and "'%m'" in w[0].message

    def test_unknown_magic_in_other_section_does_not_warn(self, tmp_path):
        r = load(tmp_path, "[other]\na = %Y\n[uwsgi]\n; 50% done\nb = 1\n")
        assert kv(r) == [("b", "1")] and r.warnings == []

    def test_percent_at_end_of_line_joins_lines(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\na = 100%\nb = 2\nc = 3\n")
        assert kv(r) == [("a", "100b = 2"), ("c", "3")]
        assert r.entries[1].origin.line == 4
        assert "joined" in r.warnings[0].message and r.warnings[0].origin.line == 2

    def test_percent_at_end_of_file(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\na = 5%")
        assert kv(r) == [("a", "5")]
        assert "end of the file" in r.warnings[0].message

    def test_frozen_first_file_variables(self, tmp_path):
        write(tmp_path / "sub" / "inc.ini", "[uwsgi]\nn = %n\nN = %N\nD = %D\nd = %d\nX = %X\n")
        write(tmp_path / "first.ini", "[uwsgi]\ninclude = sub/inc.ini\nN0 = %N\n")
        r = load(tmp_path, args=[f"{tmp_path}/first.ini:uwsgi"])
        got = dict(kv(r))
        assert got == {"n": "inc", "N": "first", "D": f"{tmp_path}/", "d": f"{tmp_path}/sub/",
                       "X": "uwsgi", "N0": "first"}

    def test_magic_not_applied_to_command_line(self, tmp_path):
        write(tmp_path / "main.ini", "[uwsgi]\nbase = /srv\n")
        r = load(tmp_path, cli=[("chdir", "%d/%(base)", 2)])
        assert r.entries[-1].value == "%d//srv"
        assert r.entries[-1].origin == Origin(COMMAND_LINE, 2)

    def test_file_without_extension(self, tmp_path):
        write(tmp_path / "conf", "[uwsgi]\nn = %n\ne = %e\n")
        assert dict(kv(load(tmp_path, args=["conf"]))) == {"n": "conf", "e": ""}


# --------------------------------------------------------------------------- includes


class TestIncludes:
    def test_include_splices_in_place_relative_to_including_file(self, tmp_path):
        write(tmp_path / "conf" / "common.ini", "[uwsgi]\nb = 2\n")
        write(tmp_path / "conf" / "main.ini", "[uwsgi]\na = 1\ninclude = common.ini\nc = 3\n")
        r = load(tmp_path, args=["conf/main.ini"])
        assert kv(r) == [("a", "1"), ("b", "2"), ("c", "3")]
        assert r.files == [f"{tmp_path}/conf/main.ini", f"{tmp_path}/conf/common.ini"]
        assert r.entries[1].origin == Origin(f"{tmp_path}/conf/common.ini", 2)

    @pytest.mark.parametrize("key", ["ini", "include", "inherit"])
    def test_all_file_keys(self, tmp_path, key):
        write(tmp_path / "d" / "x.ini", "[uwsgi]\nx = 1\n")
        r = load(tmp_path, f"[uwsgi]\n{key} = d/x.ini\ny = 2\n")
        assert kv(r) == [("x", "1"), ("y", "2")]

    def test_inherited_content_is_expanded(self, tmp_path):
        write(tmp_path / "base.ini", "[uwsgi]\nhome = $(HOME)/%(app)\n")
        r = load(tmp_path, "[uwsgi]\napp = foo\ninherit = base.ini\n", environ={"HOME": "/h"})
        assert kv(r) == [("app", "foo"), ("home", "/h/foo")]

    def test_include_with_section(self, tmp_path):
        write(tmp_path / "lib.ini", "[uwsgi]\na = 1\n[extra]\nb = 2\n")
        r = load(tmp_path, "[uwsgi]\ninclude = lib.ini:extra\n")
        assert kv(r) == [("b", "2")]

    def test_include_same_file_other_section_via_colon(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\na = 1\ninclude = :common\nc = 3\n[common]\nb = 2\n")
        assert kv(r) == [("a", "1"), ("b", "2"), ("c", "3")]
        assert r.files == [str(tmp_path / "main.ini")]

    def test_colon_section_without_previous_file(self, tmp_path):
        probs = errors(tmp_path, args=[":sec"])
        assert "no file has been loaded yet" in probs[0].message

    def test_same_file_twice_sequentially_is_fine(self, tmp_path):
        write(tmp_path / "x.ini", "[uwsgi]\nx = 1\n")
        r = load(tmp_path, "[uwsgi]\ninclude = x.ini\ninclude = x.ini\n")
        assert kv(r) == [("x", "1"), ("x", "1")]

    def test_self_include_is_an_error(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\ninclude = main.ini\n")
        assert len(probs) == 1
        main = str(tmp_path / "main.ini")
        assert probs[0].origin == Origin(main, 2) and probs[0].key == "include"
        assert f"include cycle: {main} -> {main}" in probs[0].message

    def test_include_cycle_names_the_chain(self, tmp_path):
        write(tmp_path / "a.ini", "[uwsgi]\ninclude = b.ini\n")
        write(tmp_path / "b.ini", "[uwsgi]\nx = 1\ninclude = a.ini\n")
        probs = errors(tmp_path, args=["a.ini"])
        assert len(probs) == 1
        assert f"{tmp_path}/a.ini -> {tmp_path}/b.ini -> {tmp_path}/a.ini" in probs[0].message
        assert probs[0].origin == Origin(f"{tmp_path}/b.ini", 3)

    def test_include_depth_limit(self, tmp_path):
        for i in range(40):
            write(tmp_path / f"f{i}.ini", f"[uwsgi]\ninclude = f{i + 1}.ini\n")
        write(tmp_path / "f40.ini", "[uwsgi]\nx = 1\n")
        probs = errors(tmp_path, args=["f0.ini"])
        assert len(probs) == 1 and "nested deeper than 32" in probs[0].message

    def test_missing_include_names_file_and_errno(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\ninclude = nope.ini\n")
        assert probs[0].origin == Origin(str(tmp_path / "main.ini"), 2)
        assert f"{tmp_path}/nope.ini" in probs[0].message
        assert "No such file or directory" in probs[0].message

    def test_missing_top_level_file(self, tmp_path):
        probs = errors(tmp_path, args=["missing.ini"])
        assert "missing.ini" in str(probs[0]) and "No such file or directory" in str(probs[0])

    def test_directory_is_an_error(self, tmp_path):
        (tmp_path / "dir.ini").mkdir()
        probs = errors(tmp_path, args=["dir.ini"])
        assert "Is a directory" in probs[0].message

    def test_permission_denied(self, tmp_path, monkeypatch):
        write(tmp_path / "main.ini", "[uwsgi]\na = 1\n")

        def fake_open(path, *a, **kw):
            raise PermissionError(13, "Permission denied", path)
        monkeypatch.setattr(ini, "open", fake_open, raising=False)
        probs = errors(tmp_path)
        assert "Permission denied" in probs[0].message and "main.ini" in probs[0].message

    def test_percent_paren_in_include_warns(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nbase = x\ninclude = %(base).ini\n")
        assert "x.ini" not in messages(probs)
        assert "%(base).ini" in probs[0].message

    def test_warning_q_c3_for_include(self, tmp_path):
        write(tmp_path / "$(X).ini", "[uwsgi]\na = 1\n")
        r = load(tmp_path, "[uwsgi]\ninclude = $(X).ini\n", environ={"X": "y"})
        assert kv(r) == [("a", "1")]
        assert "is not expanded" in r.warnings[0].message and r.warnings[0].key == "include"

    def test_magic_in_include_path(self, tmp_path):
        write(tmp_path / "conf" / "main-extra.ini", "[uwsgi]\nx = 1\n")
        write(tmp_path / "conf" / "main.ini", "[uwsgi]\ninclude = %d%n-extra.ini\n")
        assert kv(load(tmp_path, args=["conf/main.ini"])) == [("x", "1")]

    def test_several_config_args_in_order(self, tmp_path):
        write(tmp_path / "a.ini", "[uwsgi]\na = 1\n")
        write(tmp_path / "b.ini", "[uwsgi]\nb = 2\n")
        r = load(tmp_path, args=["a.ini", "b.ini"])
        assert kv(r) == [("a", "1"), ("b", "2")]
        assert r.files == [f"{tmp_path}/a.ini", f"{tmp_path}/b.ini"]


# --------------------------------------------------------------------------- set / set-ph


class TestSet:
    def test_set_adds_an_expanded_entry(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nset = chdir=$(HOME)/app\nset = foo = bar\n",
                 environ={"HOME": "/h"})
        assert kv(r) == [("chdir", "/h/app"), ("foo", "bar")]

    def test_set_of_an_immediate_key_executes_it(self, tmp_path):
        write(tmp_path / "x.ini", "[uwsgi]\nx = 1\n")
        assert kv(load(tmp_path, "[uwsgi]\nset = include=x.ini\n")) == [("x", "1")]

    def test_set_without_equal_is_an_error(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nset = novalue\n")
        assert probs[0].key == "set" and "expected set = name=value" in probs[0].message

    def test_set_placeholder_is_raw(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nset-ph = home=$(HOME)/%(app)\napp = a\n"
                           "set-placeholder = p2=@(nofile)\nx = %(home)\n",
                 environ={"HOME": "/h"})
        assert kv(r) == [("home", "$(HOME)/%(app)"), ("app", "a"), ("p2", "@(nofile)"),
                         ("x", "$(HOME)/a")]
        assert {"home", "p2", "app"} <= r.placeholders
        assert {w.key for w in r.warnings} == {"set-ph", "set-placeholder"}

    def test_set_placeholder_on_an_option_is_an_error_naming_it(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nset-ph = chdir=/x\n")
        # Q-C6: the message names the offending name
        assert probs[0].key == "set-ph"
        assert "you cannot use 'chdir' as a placeholder" in probs[0].message

    def test_plain_placeholder_is_expanded_before_use(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nbase = $(HOME)\nchdir = %(base)/app\n",
                 environ={"HOME": "/h"})
        assert kv(r) == [("base", "/h"), ("chdir", "/h/app")]
        assert r.placeholders == {"base"}


# --------------------------------------------------------------------------- logic blocks


class TestFor:
    def test_two_line_body_yields_line_by_line(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nfor = a b  c\nx = %(_)1\ny = <%(_)>\nendfor\nz = 1\n")
        assert kv(r) == [("x", "a1"), ("x", "b1"), ("x", "c1"),
                         ("y", "<a>"), ("y", "<b>"), ("y", "<c>"), ("z", "1")]
        assert [e.origin.line for e in r.entries] == [3, 3, 3, 4, 4, 4, 6]

    def test_for_times(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nfor-times = 3\nw = worker%(_)\nend-for\n")
        assert r.values("w") == ["worker1", "worker2", "worker3"]

    def test_for_times_zero(self, tmp_path):
        assert kv(load(tmp_path, "[uwsgi]\nfor-times = 0\nw = x\nendfor\n")) == []

    def test_for_times_not_a_number(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nfor-times = three\nw = x\nendfor\n")
        assert probs[0].key == "for-times" and "not a number" in probs[0].message

    def test_for_times_huge_fails_fast(self, tmp_path):
        t0 = time.monotonic()
        probs = errors(tmp_path, "[uwsgi]\nfor-times = 1000000000\nw = x\nendfor\n")
        assert "limit" in probs[0].message
        assert time.monotonic() - t0 < 2

    def test_for_glob(self, tmp_path):
        for name in ("b.conf", "a.conf", "x.txt"):
            write(tmp_path / "d" / name, "")
        (tmp_path / "d" / "sub.conf").mkdir()
        r = load(tmp_path, "[uwsgi]\nfor-glob = d/*.conf\nf = %(_)\nendfor\n")
        assert r.values("f") == ["d/a.conf", "d/b.conf", "d/sub.conf/"]

    def test_for_glob_absolute(self, tmp_path):
        write(tmp_path / "d" / "a.conf", "")
        r = load(tmp_path, f"[uwsgi]\nfor-glob = {tmp_path}/d/*.conf\nf = %(_)\nendfor\n")
        assert r.values("f") == [f"{tmp_path}/d/a.conf"]

    def test_for_glob_no_match_gives_pattern(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nfor-glob = nothing/*.x\nf = %(_)\nendfor\n")
        assert r.values("f") == ["nothing/*.x"]

    def test_for_readline(self, tmp_path):
        write(tmp_path / "list.txt", "one\r\ntwo\n\nthree")
        r = load(tmp_path, "[uwsgi]\nfor-readline = list.txt\nl = [%(_)]\nendfor\n")
        assert r.values("l") == ["[one]", "[two]", "[]", "[three]"]

    def test_for_readline_missing_file(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nfor-readline = nope.txt\nl = %(_)\nendfor\n")
        assert probs[0].key == "for-readline" and "No such file" in probs[0].message

    def test_include_inside_for(self, tmp_path):
        for n in ("a", "b"):
            write(tmp_path / f"{n}.ini", f"[uwsgi]\nname = {n}\n")
        r = load(tmp_path, "[uwsgi]\nfor = a b\ninclude = %(_).ini\nendfor\n")
        assert r.values("name") == ["a", "b"]

    def test_set_inside_for(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nfor = a b\nset = k_%(_)=%(_)!\nendfor\n")
        assert kv(r) == [("k_a", "a!"), ("k_b", "b!")]

    def test_item_is_placeholder_expanded_later(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nbase = /srv\nfor = x y\nd = %(base)/%(_)\nendfor\n")
        assert r.values("d") == ["/srv/x", "/srv/y"]

    def test_key_is_not_substituted(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nfor = a\nk%(_) = v\nendfor\n")
        assert kv(r) == [("k%(_)", "v")]

    def test_loop_expansion_limit(self, tmp_path, monkeypatch):
        monkeypatch.setattr(ini, "MAX_ADDS", 50)
        probs = errors(tmp_path, "[uwsgi]\nfor-times = 30\na = 1\nb = 2\nendfor\n")
        assert len(probs) == 1 and "more than 50 configuration entries" in probs[0].message


class TestIf:
    @pytest.mark.parametrize("key", ["if-env", "ifenv"])
    def test_if_env_true(self, tmp_path, key):
        r = load(tmp_path, f"[uwsgi]\n{key} = PORT\nsocket = :%(_)\nendif\n",
                 environ={"PORT": "81"})
        assert kv(r) == [("socket", ":81")]

    def test_if_env_false(self, tmp_path):
        assert kv(load(tmp_path, "[uwsgi]\nif-env = PORT\nsocket = x\nendif\na = 1\n")) == \
            [("a", "1")]

    def test_if_env_with_value(self, tmp_path):
        text = "[uwsgi]\nif-env = MODE=prod\nm = %(_)\nend\n"
        assert kv(load(tmp_path, text, environ={"MODE": "prod"})) == [("m", "prod")]
        assert kv(load(tmp_path, text, environ={"MODE": "dev"})) == []

    def test_if_env_empty_value_is_set(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nif-env = E\nm = [%(_)]\nend\n", environ={"E": ""})
        assert kv(r) == [("m", "[]")]

    def test_if_not_env(self, tmp_path):
        text = "[uwsgi]\nif-not-env = MODE=prod\nm = 1\nendif\n"
        assert kv(load(tmp_path, text, environ={"MODE": "dev"})) == [("m", "1")]
        assert kv(load(tmp_path, text, environ={"MODE": "prod"})) == []
        assert kv(load(tmp_path, text)) == [("m", "1")]

    @pytest.mark.parametrize("key", ["if-exists", "ifexists"])
    def test_if_exists(self, tmp_path, key):
        write(tmp_path / "here", "")
        r = load(tmp_path, f"[uwsgi]\n{key} = here\nf = %(_)\nendif\n{key} = gone\ng = 1\n"
                           "endif\n")
        assert kv(r) == [("f", "here")]

    def test_if_not_exists(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nif-not-exists = gone\nf = %(_)\nendif\n")
        assert kv(r) == [("f", "gone")]

    def test_if_file_and_dir(self, tmp_path):
        write(tmp_path / "f", "")
        (tmp_path / "d").mkdir()
        r = load(tmp_path, "[uwsgi]\nif-file = f\na = 1\nendif\nif-file = d\nb = 1\nendif\n"
                           "if-dir = d\nc = %(_)\nendif\nifdir = f\nd = 1\nendif\n"
                           "if-directory = d\ne = 1\nendif\nif-not-dir = f\ng = 1\nendif\n"
                           "if-not-file = d\nh = 1\nendif\n")
        assert kv(r) == [("a", "1"), ("c", "d"), ("e", "1"), ("g", "1"), ("h", "1")]

    def test_if_opt(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nif-opt = master\nx = before\nendif\nmaster = yes\n"
                           "if-opt = master\ny = %(_)\nendif\nif-opt = master=no\nz = 1\nendif\n"
                           "if-opt = master=yes\nw = 1\nendif\nif-not-opt = socket\nv = 1\n"
                           "endif\nif-not-opt = master\nu = 1\nendif\n")
        assert kv(r) == [("master", "yes"), ("y", "yes"), ("w", "1"), ("v", "1")]

    def test_if_opt_sees_placeholders_and_first_value(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nbase = /a\nbase = /b\nif-opt = base\nx = %(_)\nendif\n")
        assert r.values("x") == ["/a"]

    def test_if_opt_is_evaluated_per_line(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nif-not-opt = foo\nfoo = 1\nbar = 2\nendif\n")
        assert kv(r) == [("foo", "1")]

    def test_if_hostname(self, tmp_path):
        text = ("[uwsgi]\nif-hostname = web1\na = %(_)\nendif\nif-not-hostname = web1\nb = 1\n"
                "endif\nif-hostname-match = ^web[0-9]$\nc = 1\nendif\n")
        assert kv(load(tmp_path, text, hostname="web1")) == [("a", "web1"), ("c", "1")]
        assert kv(load(tmp_path, text, hostname="db1")) == [("b", "1")]

    def test_if_hostname_match_bad_regex(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nif-hostname-match = web[\na = 1\nendif\n")
        assert len(probs) == 1 and "invalid regular expression 'web['" in probs[0].message

    def test_if_reload(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nif-reload\na = 1\nendif\nif-not-reload\nb = %(_)\nendif\n")
        assert kv(r) == [("b", "%(_)")]

    def test_if_plugin(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nif-plugin = python\na = 1\nendif\n"
                           "if-not-plugin = python\nb = 1\nendif\n")
        assert kv(r) == [("b", "1")]

    def test_any_closing_key_closes_any_block(self, tmp_path):
        r = load(tmp_path, "[uwsgi]\nfor = a\nx = %(_)\nendif\nif-env = NO\ny = 1\nend-for\n"
                           "for = b\nz = %(_)\nend\nw = 1\n")
        assert kv(r) == [("x", "a"), ("z", "b"), ("w", "1")]

    def test_else(self, tmp_path):
        text = "[uwsgi]\nif-env = PROD\nmode = prod\nelse\nmode = dev\ndebug = %(_)\nendif\n"
        assert kv(load(tmp_path, text, environ={"PROD": "1"})) == [("mode", "prod")]
        assert kv(load(tmp_path, text)) == [("mode", "dev"), ("debug", "%(_)")]

    def test_else_without_body_in_if(self, tmp_path):
        text = "[uwsgi]\nif-exists = nothing\nelse\nmode = dev\nendif\n"
        assert kv(load(tmp_path, text)) == [("mode", "dev")]

    def test_else_errors(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nelse\nfor = a\nelse\nendfor\nif-env = X\nelse\n"
                                 "else\nendif\n")
        msgs = [(p.origin.line, p.message) for p in probs]
        assert msgs[0] == (2, "'else' without an open if-block")
        assert msgs[1][0] == 4 and "only valid in an if-block" in msgs[1][1]
        assert msgs[2][0] == 8 and "only valid in an if-block" in msgs[2][1]
        assert len(msgs) == 3

    def test_block_argument_is_raw_but_magic_works(self, tmp_path):
        write(tmp_path / "sub" / "flag", "")
        write(tmp_path / "sub" / "main.ini",
              "[uwsgi]\nbase = %d\nif-exists = %(base)flag\na = 1\nendif\n"
              "if-exists = %dflag\nb = 1\nendif\n")
        r = load(tmp_path, args=["sub/main.ini"])
        assert kv(r) == [("base", f"{tmp_path}/sub/"), ("b", "1")]
        assert len(r.warnings) == 1
        assert r.warnings[0].key == "if-exists" and r.warnings[0].origin.line == 3
        assert "%()" in r.warnings[0].message


class TestLogicErrors:
    def test_nesting_is_an_error(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nfor = a b\nif-env = X\nx = 1\nendif\nendfor\n")
        assert len(probs) == 1
        assert probs[0].origin.line == 3 and probs[0].key == "if-env"
        assert "recursive logic in options is not supported (option = if-env)" in \
            probs[0].message

    def test_nested_block_is_reported_once(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nfor = a b\nif-env = X\nx = 1\nendif\ny = %(_)\n"
                                 "endfor\nz = 1\nendif\n")
        assert [(p.origin.line, p.key) for p in probs] == [(3, "if-env"), (9, "endif")]

    def test_nesting_is_an_error_even_when_condition_is_false(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nif-env = NOPE\nfor = a\nendfor\n")
        assert "recursive logic" in probs[0].message

    def test_logic_in_file_included_from_block(self, tmp_path):
        write(tmp_path / "inner.ini", "[uwsgi]\nif-env = X\ny = 1\nendif\n")
        probs = errors(tmp_path, "[uwsgi]\nfor = a\ninclude = inner.ini\nendfor\n")
        assert "recursive logic" in probs[0].message
        assert probs[0].origin == Origin(f"{tmp_path}/inner.ini", 2)

    def test_unclosed_block(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nx = 0\nif-env = X\nx = 1\n")
        assert probs[0].origin.line == 3 and probs[0].key == "if-env"
        assert "never closed" in probs[0].message and "endif" in probs[0].message

    def test_unclosed_block_in_included_file(self, tmp_path):
        write(tmp_path / "inc.ini", "[uwsgi]\nfor = a\nx = %(_)\n")
        probs = errors(tmp_path, "[uwsgi]\ninclude = inc.ini\nendfor\n")
        assert [(p.origin.file.rsplit("/", 1)[1], p.origin.line) for p in probs] == \
            [("inc.ini", 2), ("main.ini", 3)]

    def test_closing_key_without_block(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\nendif\na = 1\nend-for\n")
        assert [(p.origin.line, p.key) for p in probs] == [(2, "endif"), (4, "end-for")]
        assert "without an open logic block" in probs[0].message

    def test_closing_key_in_a_non_selected_section_is_ignored(self, tmp_path):
        assert kv(load(tmp_path, "[other]\nendif\n[uwsgi]\na = 1\n")) == [("a", "1")]


# --------------------------------------------------------------------------- command line


class TestCommandLine:
    def test_entries_after_files(self, tmp_path):
        write(tmp_path / "main.ini", "[uwsgi]\nchdir = /srv\n")
        r = load(tmp_path, cli=[("pidfile", "%(chdir)/x.pid", 3), ("master", "", 5)])
        assert kv(r) == [("chdir", "/srv"), ("pidfile", "/srv/x.pid"), ("master", "")]
        assert r.entries[1].origin == Origin(COMMAND_LINE, 3)

    def test_only_command_line(self, tmp_path):
        r = load(tmp_path, args=[], cli=[("a", "$(X)", 1)], environ={"X": "y"})
        assert kv(r) == [("a", "y")] and r.files == []

    def test_command_line_ini_is_relative_to_cwd(self, tmp_path):
        write(tmp_path / "d" / "x.ini", "[uwsgi]\nx = %n\n")
        r = load(tmp_path, args=[], cli=[("ini", "d/x.ini", 2), ("y", "1", 4)])
        assert kv(r) == [("x", "x"), ("y", "1")]

    def test_command_line_logic_and_set_ph(self, tmp_path):
        r = load(tmp_path, args=[], cli=[("set-ph", "p=v", 1), ("for", "a b", 3),
                                         ("w", "%(p)%(_)", 5), ("endfor", "", 7)])
        assert kv(r) == [("p", "v"), ("w", "va"), ("w", "vb")]
        assert "p" in r.placeholders

    def test_command_line_unclosed_block(self, tmp_path):
        probs = errors(tmp_path, args=[], cli=[("if-env", "X", 1)])
        assert probs[0].origin == Origin(COMMAND_LINE, 1)
        assert "end of the command line" in probs[0].message

    def test_set_ph_option_collision_on_command_line(self, tmp_path):
        probs = errors(tmp_path, args=[], cli=[("set-ph", "master=1", 1)])
        assert "'master'" in probs[0].message


# --------------------------------------------------------------------------- robustness


class TestRobustness:
    def test_nul_byte(self, tmp_path):
        (tmp_path / "main.ini").write_bytes(b"[uwsgi]\na = 1\nb = \x00\n")
        probs = errors(tmp_path)
        assert probs[0].origin == Origin(str(tmp_path / "main.ini"), 3)
        assert "NUL" in probs[0].message

    def test_not_utf8(self, tmp_path):
        (tmp_path / "main.ini").write_bytes(b"[uwsgi]\n\na = caf\xe9\n")
        probs = errors(tmp_path)
        assert probs[0].origin.line == 3 and "UTF-8" in probs[0].message

    def test_long_line(self, tmp_path):
        write(tmp_path / "main.ini", "[uwsgi]\na = " + "x" * 70000 + "\n")
        probs = errors(tmp_path)
        assert probs[0].origin.line == 2 and "longer than 65536" in probs[0].message

    def test_long_line_after_magic(self, tmp_path):
        write(tmp_path / "main.ini", "[uwsgi]\na = " + "%d" * 30000 + "\n")
        probs = errors(tmp_path)
        assert "after magic variables" in probs[0].message

    def test_huge_file(self, tmp_path):
        p = tmp_path / "main.ini"
        with open(p, "wb") as f:
            f.truncate(17 << 20)
        probs = errors(tmp_path)
        assert "larger than" in probs[0].message

    def test_all_errors_collected(self, tmp_path):
        probs = errors(tmp_path, "[uwsgi]\ninclude = gone.ini\nset = bad\n= x\nendfor\n"
                                 "a = %(a)\nb = @(nofile)\n")
        assert [p.origin.line for p in probs] == [2, 3, 4, 5, 6, 7]
        text = str(ConfigError(probs))
        assert f"{tmp_path}/main.ini:2: include: cannot read config file" in text

    def test_error_string_format(self, tmp_path):
        with pytest.raises(ConfigError) as ei:
            load(tmp_path, "[uwsgi]\nx = %(x)\n")
        assert str(ei.value).startswith(f"{tmp_path}/main.ini:2: x: placeholder reference cycle")

    def test_defaults_for_environment(self, tmp_path, monkeypatch):
        write(tmp_path / "main.ini", "[uwsgi]\nh = %h\nv = %v\ne = $(NSATTACH_TEST_VAR)\n")
        monkeypatch.setenv("NSATTACH_TEST_VAR", "val")
        monkeypatch.chdir(tmp_path)
        r = load_raw(["main.ini"], is_option=is_option)
        assert dict(kv(r)) == {"h": socket.gethostname(), "v": str(tmp_path), "e": "val"}


# --------------------------------------------------------------------------- seed examples


def seed_blocks() -> list[str]:
    text = SEED.read_text()
    blocks = []
    for chunk in text.split("[uwsgi]\n")[1:]:
        lines = []
        for line in chunk.split("\n"):
            if not line.strip():
                break
            lines.append(line)
        blocks.append("[uwsgi]\n" + "\n".join(lines) + "\n")
    return blocks


class TestSeed:
    def test_seed_has_blocks(self):
        assert len(seed_blocks()) == 9

    def test_all_seed_blocks_load(self, tmp_path):
        for i, block in enumerate(seed_blocks()):
            r = load(tmp_path, block, name=f"seed{i}.ini")
            assert len(r.entries) == block.count("\n") - 1
            assert r.warnings == []

    def test_delayed_job_chdir(self, tmp_path):
        block = next(b for b in seed_blocks() if "delayed_job" in b)
        r = load(tmp_path, block)
        assert r.values("smart-attach-daemon") == [
            "/var/apps/foobar/tmp/pids/delayed_job.pid /var/apps/foobar/script/delayed_job start"]
        assert r.values("env") == ["RAILS_ENV=production"]
        assert "chdir" in r.placeholders

    def test_memcached_and_legion(self, tmp_path):
        blocks = seed_blocks()
        r = load(tmp_path, blocks[0])
        assert kv(r) == [("master", "true"), ("socket", ":3031"),
                         ("attach-daemon", "memcached -p 11311 -u roberto")]
        r = load(tmp_path, next(b for b in blocks if "legion" in b))
        assert r.values("legion-mcast") == ["mylegion 225.1.1.1:9191 90 bf-cbc:mysecret"]
        r = load(tmp_path, blocks[-1])
        assert r.values("attach-daemon2") == [
            "cmd=my_daemon.sh,pidfile=/tmp/my.pid,uid=33,gid=33,stopsignal=3"]


# --------------------------------------------------------------------------- fuzzing


_WORKDIR = tempfile.mkdtemp(prefix="nsattach-ini-fuzz-")
atexit.register(shutil.rmtree, _WORKDIR, True)

_KEYS = ["a", "b", "chdir", "master", "for", "for-times", "for-glob", "endfor", "end", "if-env",
         "if-opt", "if-not-opt", "if-exists", "else", "endif", "set", "set-ph", "include", "ini",
         "inherit", "", "[uwsgi", "%", ";"]
_FRAGS = ["%(a)", "%(b)", "%(chdir)", "%(_)", "$(HOME)", "$(A:-x)", "@(fuzz.ini)", "@(nope)",
          "%d", "%n", "%Y", "%", "%%", "(", ")", "x", " ", "=", "a=b", "fuzz.ini", "2", "*",
          "+", "%(a + b)", "\t", "\r", "[", "]"]


def _load_text(data: bytes) -> object:
    path = os.path.join(_WORKDIR, "fuzz.ini")
    with open(path, "wb") as f:
        f.write(data)
    try:
        return load_raw([path], is_option=is_option, environ={"HOME": "/h", "A": ""},
                        cwd=_WORKDIR, hostname="fuzz")
    except ConfigError as e:
        assert e.problems and all(str(p) for p in e.problems)
        return e


_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.text())
def test_fuzz_text(text):
    for data in (text.encode("utf-8", "surrogatepass"),
                 ("[uwsgi]\n" + text).encode("utf-8", "surrogatepass")):
        assert isinstance(_load_text(data), (RawConfig, ConfigError))


@_FUZZ
@given(st.binary())
def test_fuzz_binary(data):
    assert isinstance(_load_text(data), (RawConfig, ConfigError))
    assert isinstance(_load_text(b"[uwsgi]\n" + data), (RawConfig, ConfigError))


@_FUZZ
@given(st.lists(st.tuples(st.sampled_from(_KEYS),
                          st.lists(st.sampled_from(_FRAGS), max_size=6).map("".join)),
                max_size=25))
def test_fuzz_structured(lines):
    text = "[uwsgi]\n" + "".join(f"{k} = {v}\n" for k, v in lines)
    result = _load_text(text.encode())
    assert isinstance(result, (RawConfig, ConfigError))


def test_builtin_open_untouched():
    # the permission test patches ini.open; make sure it was restored
    assert not hasattr(ini, "open") or ini.open is builtins.open
