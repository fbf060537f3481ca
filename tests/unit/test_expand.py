"""The $( ), @( ) and %( ) expansion passes (nsattach.config.expand)."""

from __future__ import annotations

import pytest

from nsattach.config import expand
from nsattach.config.expand import (
    MAX_VALUE_SIZE,
    expand_entries,
    expand_env,
    expand_files,
    scan_tokens,
    split_quoted,
    strtoll,
)
from nsattach.config.raw import Entry
from nsattach.errors import Origin


def entries(*pairs: tuple[str, str]) -> list[Entry]:
    return [Entry(k, v, Origin("t.ini", i + 1)) for i, (k, v) in enumerate(pairs)]


def run(*pairs, raw=(), environ=None, cwd="/"):
    res = expand_entries(entries(*pairs), raw=raw, environ=environ or {}, cwd=cwd)
    return res


def values(*pairs, **kw) -> list[str]:
    res = run(*pairs, **kw)
    assert res.errors == []
    return [e.value for e in res.entries]


# --------------------------------------------------------------------------- scanner


class TestScanner:
    def test_simple_tokens(self):
        assert list(scan_tokens("a %(x) b %(yy)", "%")) == [(2, 6, "x"), (9, 14, "yy")]

    def test_nested_parentheses_are_part_of_the_token(self):
        assert list(scan_tokens("$(echo $(id -u))!", "$")) == [(0, 16, "echo $(id -u)")]

    def test_unterminated_token_stops_the_scan(self):
        assert list(scan_tokens("%(a %(b)", "%")) == []
        assert list(scan_tokens("%(a) %(b", "%")) == [(0, 4, "a")]

    def test_empty_token_is_reported_with_empty_content(self):
        assert list(scan_tokens("%()", "%")) == [(0, 3, "")]

    def test_other_symbols_are_not_tokens(self):
        assert list(scan_tokens("$(A) @(b) %(c)", "@")) == [(5, 9, "b")]

    def test_double_symbol_still_opens_a_token(self):
        # uWSGI: '%%(' -> the second '%' starts a token
        assert list(scan_tokens("%%(a)", "%")) == [(1, 5, "a")]


# --------------------------------------------------------------------------- $( )


class TestEnv:
    def test_known_variable(self):
        assert expand_env("home=$(HOME)/x", {"HOME": "/root"}) == "home=/root/x"

    def test_unknown_variable_is_left_literally(self):
        assert expand_env("x=$(NOPE)", {}) == "x=$(NOPE)"

    def test_shell_substitution_survives(self):
        env = {"id": "BAD", "u": "BAD"}
        assert expand_env("chown $(id -u) f", env) == "chown $(id -u) f"
        assert expand_env("kill $(cat /run/x.pid)", env) == "kill $(cat /run/x.pid)"

    def test_inner_token_of_a_skipped_token_is_not_expanded(self):
        assert expand_env("$(echo $(HOME))", {"HOME": "/h"}) == "$(echo $(HOME))"

    def test_shell_variable_forms_are_left_alone(self):
        assert expand_env("$$ $HOME ${HOME}", {"HOME": "/h"}) == "$$ $HOME ${HOME}"

    def test_default_used_when_unset(self):
        assert expand_env("$(PORT:-8080)", {}) == "8080"

    def test_default_used_when_empty(self):
        assert expand_env("$(PORT:-8080)", {"PORT": ""}) == "8080"

    def test_default_ignored_when_set(self):
        assert expand_env("$(PORT:-8080)", {"PORT": "1"}) == "1"

    def test_default_may_contain_dash_and_colon(self):
        # uWSGI 2.1 would give "dflt" and "a" here (Q-C2)
        assert expand_env("$(NOPE:-dflt-x)", {}) == "dflt-x"
        assert expand_env("$(NOPE:-a-b:c:-d)", {}) == "a-b:c:-d"

    def test_empty_default(self):
        assert expand_env("[$(NOPE:-)]", {}) == "[]"

    def test_dash_form_of_21_is_not_supported(self):
        assert expand_env("$(NOPE-x)", {"NOPE": "v"}) == "$(NOPE-x)"

    def test_default_is_expanded_too(self):
        assert expand_env("$(A:-$(B))", {"B": "bee"}) == "bee"

    def test_value_is_expanded_again(self):
        assert expand_env("$(A)", {"A": "<$(B)>", "B": "b"}) == "<b>"

    def test_cycle_is_an_error(self):
        with pytest.raises(expand.ExpandError, match=r"cycle: \$\(A -> B -> A\)"):
            expand_env("$(A)", {"A": "$(B)", "B": "$(A)"})

    def test_self_reference_is_an_error(self):
        with pytest.raises(expand.ExpandError, match="cycle"):
            expand_env("$(A)", {"A": "x$(A)"})

    def test_several_tokens(self):
        assert expand_env("$(A)-$(B)-$(C)", {"A": "1", "B": "2"}) == "1-2-$(C)"


# --------------------------------------------------------------------------- @( )


class TestFiles:
    def test_contents_with_one_trailing_newline_removed(self, tmp_path):
        (tmp_path / "v").write_text("secret\n\n")
        assert expand_files("x=@(v)", str(tmp_path)) == "x=secret\n"

    def test_trailing_carriage_return_removed(self, tmp_path):
        (tmp_path / "v").write_bytes(b"abc\r")
        assert expand_files("@(v)", str(tmp_path)) == "abc"

    def test_no_trailing_newline(self, tmp_path):
        (tmp_path / "v").write_text("abc")
        assert expand_files("<@(v)>", str(tmp_path)) == "<abc>"

    def test_absolute_path(self, tmp_path):
        (tmp_path / "v").write_text("abs\n")
        assert expand_files(f"@({tmp_path}/v)", "/") == "abs"

    def test_missing_file_is_an_error_naming_it(self, tmp_path):
        with pytest.raises(expand.ExpandError) as ei:
            expand_files("@(nope.txt)", str(tmp_path))
        assert f"{tmp_path}/nope.txt" in str(ei.value)
        assert "No such file or directory" in str(ei.value)

    def test_exec_scheme_is_unsupported(self):
        with pytest.raises(expand.ExpandError, match="exec:// scheme is not supported"):
            expand_files("@(exec://hostname)", "/")

    def test_nested_file_reference(self, tmp_path):
        (tmp_path / "a").write_text("[@(b)]\n")
        (tmp_path / "b").write_text("bee\n")
        assert expand_files("@(a)", str(tmp_path)) == "[bee]"

    def test_file_cycle_is_an_error(self, tmp_path):
        (tmp_path / "a").write_text("@(b)")
        (tmp_path / "b").write_text("@(a)")
        with pytest.raises(expand.ExpandError, match="cycle"):
            expand_files("@(a)", str(tmp_path))

    def test_directory_is_an_error(self, tmp_path):
        (tmp_path / "d").mkdir()
        with pytest.raises(expand.ExpandError, match="Is a directory"):
            expand_files("@(d)", str(tmp_path))

    def test_binary_file_is_an_error(self, tmp_path):
        (tmp_path / "b").write_bytes(b"\xff\xfe")
        with pytest.raises(expand.ExpandError, match="not valid UTF-8"):
            expand_files("@(b)", str(tmp_path))

    def test_empty_token_is_ignored(self):
        assert expand_files("a @() b", "/") == "a @() b"


# --------------------------------------------------------------------------- %( )


class TestPlaceholders:
    def test_first_definition_wins(self):
        assert values(("a", "1"), ("a", "2"), ("x", "%(a)")) == ["1", "2", "1"]

    def test_options_count(self):
        v = values(("chdir", "/srv"), ("pidfile", "%(chdir)/run.pid"), ("chdir", "/other"))
        assert v[1] == "/srv/run.pid"

    def test_forward_reference(self):
        assert values(("x", "%(base)/x"), ("base", "/srv")) == ["/srv/x", "/srv"]

    def test_nested_references(self):
        v = values(("a", "%(b)!"), ("b", "%(c)%(c)"), ("c", "z"))
        assert v == ["zz!", "zz", "z"]

    def test_unknown_is_left_literally(self):
        res = run(("x", "%(nope) %(_)"))
        assert res.entries[0].value == "%(nope) %(_)"
        assert res.placeholders == {"nope"}

    def test_placeholders_recorded(self):
        res = run(("a", "1"), ("x", "%(a)%(b)"))
        assert res.placeholders == {"a", "b"}

    def test_later_definition_of_same_key_can_use_the_first(self):
        assert values(("a", "1"), ("a", "%(a)2")) == ["1", "12"]

    def test_self_reference_is_an_error(self):
        res = run(("a", "x%(a)"))
        assert len(res.errors) == 1
        err = res.errors[0]
        assert err.origin == Origin("t.ini", 1) and err.key == "a"
        assert "cycle: %(a -> a)" in err.message

    def test_cycle_is_reported_once_naming_it(self):
        res = run(("a", "%(b)"), ("b", "%(c)"), ("c", "%(a)"), ("d", "%(a)"))
        assert [e.message for e in res.errors] == [
            "placeholder reference cycle: %(a -> b -> c -> a); a value cannot (indirectly) "
            "refer to itself"]
        assert res.entries[3].value == "%(a)"      # unchanged

    def test_exponential_growth_is_an_error(self):
        pairs = [("p0", "xxxxxxxxxxxxxxxx")]
        for i in range(1, 40):
            pairs.append((f"p{i}", f"%(p{i - 1})%(p{i - 1})"))
        res = run(*pairs)
        assert res.errors
        assert any(f"beyond {MAX_VALUE_SIZE}" in e.message for e in res.errors)

    def test_deep_chain_is_an_error_not_a_crash(self):
        pairs = [(f"k{i}", f"%(k{i + 1})") for i in range(500)] + [("k500", "end")]
        res = run(*pairs)
        assert res.errors and "nested deeper" in res.errors[0].message

    def test_moderate_chain_works(self):
        pairs = [(f"k{i}", f"%(k{i + 1})") for i in range(40)] + [("k40", "end")]
        assert set(values(*pairs)) == {"end"}

    def test_raw_entries_are_not_expanded_but_used(self):
        res = run(("ph", "$(HOME)/%(a)"), ("a", "A"), ("x", "%(ph)"),
                  raw={0}, environ={"HOME": "/h"})
        assert [e.value for e in res.entries] == ["$(HOME)/%(a)", "A", "$(HOME)/A"]

    def test_origin_and_key_preserved(self):
        res = run(("a", "1"), ("b", "%(a)"))
        assert res.entries[1] == Entry("b", "1", Origin("t.ini", 2))

    def test_empty_token_ignored(self):
        assert values(("a", "%()")) == ["%()"]


class TestMath:
    @pytest.mark.parametrize("expr, result", [
        ("%(a + b)", "7"),
        ("%(a - b)", "-1"),
        ("%(a * b)", "12"),
        ("%(b / a)", "1"),
        ("%(a / 0)", "0"),
        ("%(a + b + 3 * 2)", "20"),          # ((3+4)+3)*2, left to right
        ("%(a b)", "34"),                    # default operation: concatenation
        ("%(a ++)", "4"),
        ("%(a -- --)", "1"),
        ("%(a + 10)", "13"),
        ("%(1 2 3)", "123"),
        ("%(s + 1)", "1"),                   # strtoll("abc") == 0
        ("%(a missing b)", "34"),            # unknown names are ""
        ("%(n / b)", "-1"),                  # C division truncates toward zero
        ("%(c + 1)", "43"),                  # strtoll("42abc") == 42
    ])
    def test_math(self, expr, result):
        v = values(("a", "3"), ("b", "4"), ("s", "abc"), ("n", "-7"), ("c", "42abc"),
                   ("x", expr))
        assert v[-1] == result

    def test_operands_are_expanded(self):
        assert values(("a", "%(b)"), ("b", "5"), ("x", "%(a * 2)"))[2] == "10"

    def test_math_records_placeholders(self):
        res = run(("a", "1"), ("x", "%(a + zz)"))
        assert res.placeholders == {"a", "zz"}

    def test_overflow_wraps(self):
        v = values(("a", "9223372036854775807"), ("x", "%(a + 1)"))
        assert v[1] == "-9223372036854775808"

    def test_only_operators_gives_nothing(self):
        assert values(("x", "%(+ -)"))[0] == "%(+ -)"


class TestPasses:
    def test_env_result_goes_through_placeholder_pass(self):
        assert values(("b", "bee"), ("a", "$(X)"), environ={"X": "%(b)"}) == ["bee", "bee"]

    def test_placeholder_result_does_not_go_through_env_pass(self):
        # the $( ) pass ran before: a raw set-placeholder value keeps its $( )
        res = run(("p", "$(X)"), ("a", "%(p)"), raw={0}, environ={"X": "ex"})
        assert [e.value for e in res.entries] == ["$(X)", "$(X)"]

    def test_plain_entry_is_env_expanded_before_use(self):
        assert values(("p", "$(X)"), ("a", "%(p)"), environ={"X": "ex"}) == ["ex", "ex"]

    def test_file_pass_then_placeholder(self, tmp_path):
        (tmp_path / "f").write_text("%(b)\n")
        assert values(("a", "@(f)"), ("b", "B"), cwd=str(tmp_path)) == ["B", "B"]

    def test_error_keeps_entry_and_reports_origin(self, tmp_path):
        res = run(("ok", "1"), ("bad", "@(missing)"), cwd=str(tmp_path))
        assert [e.value for e in res.entries] == ["1", "@(missing)"]
        assert res.errors[0].origin == Origin("t.ini", 2)
        assert res.errors[0].key == "bad"

    def test_many_errors_collected(self, tmp_path):
        res = run(("a", "@(m1)"), ("b", "@(m2)"), ("c", "%(c)"), cwd=str(tmp_path))
        assert [e.key for e in res.errors] == ["a", "b", "c"]


class TestHelpers:
    @pytest.mark.parametrize("s, n", [("12", 12), ("  -5x", -5), ("+7", 7), ("x", 0), ("", 0),
                                      ("99999999999999999999", 2**63 - 1)])
    def test_strtoll(self, s, n):
        assert strtoll(s) == n

    def test_split_quoted(self):
        assert split_quoted("a  'b c'\t\"d\" ''") == ["a", "b c", "d", ""]
