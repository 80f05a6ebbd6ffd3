"""Elixir mode (start option elixir): Elixir's libraries in the helper, nil
as None, Elixir exceptions with Elixir's messages."""
import os
import shutil

import pytest

import erlang
from erlang import Atom
from conftest import register_functions, start_default_helper

ELIXIR = shutil.which("elixir")

# In CI Elixir is installed (.ci/run), so these tests must run there.
pytestmark = pytest.mark.skipif(
    ELIXIR is None and not os.environ.get("CI"),
    reason="`elixir` is not on PATH (Debian/Ubuntu: apt-get install -y elixir)")


def start_elixir(**options):
    erlang.stop()
    erlang.start(elixir=options.pop("elixir", True), on_start=register_functions, **options)


@pytest.fixture(scope="module", autouse=True)
def elixir_helper():
    start_elixir()
    yield
    start_default_helper()


@pytest.fixture
def restart_elixir():
    """For tests that stop the helper or fail a start: afterwards the
    module's Elixir helper is back."""
    yield
    start_elixir()


# ------------------------------------------------------------------ calls

def test_elixir_functions_are_callable():
    assert erlang.apply("Elixir.String", "upcase", ["h\u00e9llo"]) == "H\u00c9LLO"
    assert erlang.apply("Elixir.Enum", "sum", [[1, 2, 3]]) == 6
    assert erlang.apply("Elixir.Code", "eval_string", ["1 + 2"]) == (3, [])


def test_the_elixir_application_is_started():
    apps = erlang.eval("[A || {A, _, _} <- application:which_applications()].")
    assert "elixir" in apps and "py" in apps
    # Registered functions and eval work as in the default mode.
    assert erlang.call("double_it", 21) == 42


# ------------------------------------------------------------------- nil

def test_nil_decodes_to_none_and_none_encodes_as_nil():
    assert erlang.eval("nil.") is None
    assert erlang.apply("Elixir.Map", "get", [{}, Atom("k")]) is None
    assert erlang.apply("erlang", "atom_to_binary", [None]) == "nil"
    assert erlang.eval("undefined.") == Atom("undefined")
    assert type(erlang.eval("undefined.")) is Atom
    value = [None, {"k": None}, (None, Atom("undefined"))]
    assert erlang.call("echo", value) == value
    # The standalone codec keeps the default table: nil is an Atom there.
    assert erlang.binary_to_term(erlang.apply("erlang", "term_to_binary", [None])) == "nil"


def test_none_and_atom_nil_are_one_key_in_elixir_mode():
    with pytest.raises(ValueError):
        erlang.call("echo", {None: 1, Atom("nil"): 2})
    # undefined is a key of its own here.
    assert erlang.call("echo", {None: 1, Atom("undefined"): 2}) == {None: 1, Atom("undefined"): 2}


def test_the_codec_alone_keeps_the_default_table():
    assert erlang.term_to_binary(None) == b"\x83w\x09undefined"
    assert erlang.binary_to_term(b"\x83w\x03nil") == Atom("nil")


# ------------------------------------------------------------- exceptions

def test_erlang_error_in_elixir_code_has_elixirs_message():
    with pytest.raises(erlang.Error) as ei:
        erlang.apply("Elixir.String", "to_integer", ["x"])
    e = ei.value
    assert (e.kind, e.reason) == ("error", "badarg")     # the reason raised
    text = str(e)
    assert text.startswith("Erlang error in erlang:binary_to_integer/1: "), text
    assert "(ArgumentError)" in text
    assert "not a textual representation of an integer" in text
    assert "String.to_integer/1" in text                  # Elixir's stack line
    assert "py_handler" not in text


def test_raised_elixir_exception_has_its_message_and_struct():
    with pytest.raises(erlang.Error) as ei:
        erlang.apply("Elixir.Code", "eval_string", ['raise "boom"'])
    e = ei.value
    assert e.kind == "error"
    assert e.reason[Atom("__struct__")] == "Elixir.RuntimeError"
    assert e.reason[Atom("message")] == "boom"
    assert e.reason[Atom("__exception__")] is True
    assert "** (RuntimeError) boom" in str(e)


def test_elixir_exception_raised_from_erlang_code():
    with pytest.raises(erlang.Error) as ei:
        erlang.eval("erlang:error('Elixir.RuntimeError':exception(<<\"boom\">>)).")
    assert str(ei.value).startswith("Erlang error: ** (RuntimeError) boom"), str(ei.value)
    assert "erl_eval" not in str(ei.value) and "py:" not in str(ei.value)


def test_elixir_exception_with_a_huge_message_gives_a_short_text():
    with pytest.raises(erlang.Error) as ei:
        erlang.apply("Elixir.Code", "eval_string",
                     ['raise String.duplicate("x", 1_000_000)'])
    assert len(ei.value.reason[Atom("message")]) == 1_000_000
    assert len(str(ei.value)) < 5000


def test_throw_and_exit_keep_erlangs_text():
    with pytest.raises(erlang.Error) as ei:
        erlang.eval("throw(nil).")
    assert (ei.value.kind, ei.value.reason) == ("throw", None)
    assert str(ei.value) == "Erlang throw: nil"


def test_undefined_elixir_module_says_it_is_not_on_the_code_path():
    with pytest.raises(erlang.UndefinedFunction) as ei:
        erlang.apply("Elixir.NoSuchModuleHere", "f", [1])
    assert "module 'Elixir.NoSuchModuleHere' is not available: not on the code path" \
        in str(ei.value)


# ---------------------------------------------------------------- option

def test_elixir_option_takes_the_path_of_elixir_or_of_its_root(restart_elixir):
    real = os.path.realpath(ELIXIR)
    for where in (ELIXIR, os.path.dirname(os.path.dirname(real))):
        start_elixir(elixir=where)
        assert erlang.apply("Elixir.String", "upcase", ["ok"]) == "OK"
        assert erlang.eval("nil.") is None


@pytest.mark.parametrize("value, exc", [
    (1, TypeError), ([], TypeError), ("", ValueError),
])
def test_bad_elixir_option_raises_before_anything_starts(value, exc):
    pid = erlang._erlang._helper_pid()
    with pytest.raises(exc):
        erlang.start(elixir=value)
    assert erlang._erlang._helper_pid() == pid


def test_no_elixir_on_path_raises_file_not_found_saying_how_to_install(
        restart_elixir, monkeypatch, tmp_path):
    erl = shutil.which("erl")
    erlang.stop()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError) as ei:
        erlang.start(erl=erl, elixir=True)
    assert "apt-get install -y elixir" in str(ei.value)
    assert "elixir='/path/to/elixir'" in str(ei.value)
    assert not erlang.is_running()


def test_a_path_that_is_no_elixir_installation_raises_file_not_found(
        restart_elixir, tmp_path):
    fake = tmp_path / "bin" / "elixir"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    erlang.stop()
    with pytest.raises(FileNotFoundError) as ei:
        erlang.start(elixir=str(fake))
    assert str(tmp_path / "lib" / "elixir" / "ebin") in str(ei.value)
    assert not erlang.is_running()


def test_default_mode_after_elixir_mode_has_undefined_as_none_again(restart_elixir):
    start_default_helper()
    assert erlang.eval("undefined.") is None
    assert erlang.eval("nil.") == Atom("nil")
    assert erlang.apply("erlang", "atom_to_binary", [None]) == "undefined"
    with pytest.raises(erlang.UndefinedFunction):
        erlang.apply("Elixir.String", "upcase", ["x"])
