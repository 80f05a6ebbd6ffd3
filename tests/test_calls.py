"""Calling Erlang: the usage examples of the threading user story, apply,
eval and load_module."""
import pathlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import erlang
from conftest import helper_pid


# ------------------------------------------------- the user story's examples

def test_plain_thread_gets_the_result_of_its_call():
    # "With threading.Thread": erlang.call('my_function', arg1, arg2)
    got = []

    def worker():
        result = erlang.call("my_function", "arg1", 2)
        got.append(result)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert got == [("arg1", 2)]


def test_thread_pool_doubles_every_number():
    # "With ThreadPoolExecutor"
    def call_erlang(x):
        return erlang.call("double_it", x)

    with ThreadPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(call_erlang, range(10)))
    assert results == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_chained_calls_from_one_thread_return_3():
    # "Multiple Calls from Same Thread"
    got = []

    def worker():
        x = erlang.call("add_one", 0)
        x = erlang.call("add_one", x)
        x = erlang.call("add_one", x)
        got.append(x)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert got == [3]


def test_functions_registered_from_erlang_source_are_callable_from_threads():
    # "Registering Erlang Functions", then ten threads calling double_it.
    assert erlang.eval("py:register_function(story_double, fun([X]) -> X * 2 end).") == "ok"
    assert erlang.eval("py:register_function(story_add_one, fun([X]) -> X + 1 end).") == "ok"
    results = {}

    def worker(n):
        results[n] = (erlang.call("story_double", n), erlang.call("story_add_one", n))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: (2 * i, i + 1) for i in range(10)}


def test_erlang_error_in_a_thread_is_caught_as_runtime_error():
    # "Error Handling": except RuntimeError
    caught = []

    def worker():
        try:
            erlang.call("maybe_fail", 42)
        except RuntimeError as e:
            caught.append(e)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(caught) == 1
    e = caught[0]
    assert isinstance(e, erlang.Error)
    assert e.kind == "error"
    assert e.reason == ("even", 42)
    assert "even" in str(e)
    # The same function succeeds for other input.
    assert erlang.call("maybe_fail", 7) == ("ok", 7)


# ------------------------------------------------------------------ call

def test_call_passes_every_argument_in_order():
    assert erlang.call("echo_args") == []
    assert erlang.call("echo_args", 1) == [1]
    assert erlang.call("echo_args", 1, "two", [3.5], (4,), None) == [1, "two", [3.5], (4,), None]


def test_call_accepts_an_atom_or_bytes_as_the_name():
    assert erlang.call(erlang.Atom("double_it"), 5) == 10
    assert erlang.call(b"double_it", 6) == 12


def test_call_returns_atoms_as_atom_equal_to_their_text():
    r = erlang.call("maybe_fail", 3)
    assert r == ("ok", 3)
    assert isinstance(r[0], erlang.Atom)


def test_call_accepts_a_timeout_keyword():
    assert erlang.call("double_it", 4, timeout=5) == 8
    assert erlang.call("double_it", 4, timeout=2.5) == 8
    assert erlang.call("double_it", 4, timeout=None) == 8


def test_call_rejects_unknown_keywords_and_a_missing_name():
    with pytest.raises(TypeError):
        erlang.call("double_it", 4, tiemout=5)
    with pytest.raises(TypeError):
        erlang.call()
    with pytest.raises(TypeError):
        erlang.call(42)
    assert erlang.call("double_it", 4) == 8


def test_values_round_trip_through_a_registered_function():
    values = [
        None, True, False, 0, -1, 2 ** 100, -(2 ** 70), 1.5, -0.0, "text", "héllo ✓",
        b"\x00\xff", [1, [2, [3]]], (1, "a"), {"k": [1, 2], 3: (4,)}, [], (), {},
    ]
    for v in values:
        assert erlang.call("echo", v) == v


# ------------------------------------------------------------------ apply

def test_apply_calls_a_module_function():
    assert erlang.apply("lists", "reverse", [[1, 2, 3]]) == [3, 2, 1]
    assert erlang.apply("erlang", "+", [1, 2]) == 3
    assert erlang.apply(erlang.Atom("lists"), erlang.Atom("seq"), (1, 5)) == [1, 2, 3, 4, 5]


def test_apply_with_no_arguments():
    node = erlang.apply("erlang", "node", [])
    assert isinstance(node, erlang.Atom)
    assert erlang.apply("erlang", "node") == node


def test_apply_accepts_a_timeout_keyword():
    assert erlang.apply("lists", "sum", [[1, 2, 3]], timeout=5) == 6


def test_apply_rejects_bad_argument_types():
    with pytest.raises(TypeError):
        erlang.apply(1, "f", [])
    with pytest.raises(TypeError):
        erlang.apply("lists", "reverse", "abc")


# ------------------------------------------------------------------- eval

def test_eval_returns_the_value_of_the_last_expression():
    assert erlang.eval("1, 2, 3.") == 3
    assert erlang.eval("X = 20, Y = 22, X + Y.") == 42
    assert erlang.eval("lists:map(fun(X) -> X * X end, [1, 2, 3]).") == [1, 4, 9]


def test_eval_trailing_dot_is_optional():
    assert erlang.eval("1 + 1") == 2
    assert erlang.eval("1 + 1.") == 2
    assert erlang.eval("  6 * 7 .  \n") == 42


def test_eval_returns_atoms_and_tuples():
    r = erlang.eval("{ok, <<\"bin\">>, [a, b]}.")
    assert r == ("ok", "bin", ["a", "b"])
    assert isinstance(r[0], erlang.Atom)


def test_eval_starts_with_no_variables_bound():
    assert erlang.eval("Unbound1 = 5.") == 5
    with pytest.raises(erlang.Error):
        erlang.eval("Unbound1 + 1.")


def test_eval_syntax_error_raises_erlang_error():
    with pytest.raises(erlang.Error) as ei:
        erlang.eval("1 + .")
    assert isinstance(ei.value, RuntimeError)
    with pytest.raises(erlang.Error):
        erlang.eval("foo(")
    # The helper still evaluates afterwards.
    assert erlang.eval("2 + 2.") == 4


def test_eval_runtime_error_raises_erlang_error_with_reason():
    with pytest.raises(erlang.Error) as ei:
        erlang.eval("erlang:error(my_reason).")
    assert ei.value.kind == "error"
    assert ei.value.reason == "my_reason"


def test_eval_accepts_a_timeout_and_rejects_non_text():
    assert erlang.eval("ok.", timeout=5) == "ok"
    with pytest.raises(TypeError):
        erlang.eval(b"ok.")


# ------------------------------------------------------------ load_module

MYMATH = """\
-module(mymath_file).
-export([square/1, register/0]).

square(X) -> X * X.

%% Registers square/1 for erlang.call.
register() ->
    py:register_function(mymath_square, fun([X]) -> square(X) end).
"""


def test_load_module_from_a_file_then_apply_and_call(tmp_path):
    path = tmp_path / "mymath_file.erl"
    path.write_text(MYMATH)
    mod = erlang.load_module(str(path))
    assert mod == "mymath_file"
    assert isinstance(mod, erlang.Atom)
    assert erlang.apply("mymath_file", "square", [7]) == 49
    assert erlang.apply("mymath_file", "register", []) == "ok"
    assert erlang.call("mymath_square", 9) == 81


def test_load_module_accepts_a_path_object(tmp_path):
    path = tmp_path / "mymath_file.erl"
    path.write_text(MYMATH)
    assert erlang.load_module(pathlib.Path(path)) == "mymath_file"
    assert erlang.apply("mymath_file", "square", [-3]) == 9


def test_load_module_from_source_text_registers_functions():
    src = """
        -module(greeter_src).
        -export([init/0, greet/1]).
        greet(Name) -> <<"hello ", Name/binary>>.
        init() -> py:register_function(greet, fun([N]) -> greet(N) end).
    """
    assert erlang.load_module(src) == "greeter_src"
    assert erlang.apply("greeter_src", "greet", ["bob"]) == "hello bob"
    assert erlang.apply("greeter_src", "init", []) == "ok"
    with ThreadPoolExecutor(max_workers=4) as ex:
        names = ["n%d" % i for i in range(40)]
        assert list(ex.map(lambda n: erlang.call("greet", n), names)) == ["hello " + n for n in names]


def test_load_module_reloads_a_changed_module():
    erlang.load_module("-module(reload_me).\n-export([v/0]).\nv() -> 1.\n")
    assert erlang.apply("reload_me", "v", []) == 1
    erlang.load_module("-module(reload_me).\n-export([v/0]).\nv() -> 2.\n")
    assert erlang.apply("reload_me", "v", []) == 2


def test_load_module_compile_error_raises_erlang_error():
    with pytest.raises(erlang.Error) as ei:
        erlang.load_module("-module(broken_mod).\n-export([f/0]).\nf() -> .\n")
    reason = ei.value.reason
    assert isinstance(reason, tuple) and reason[0] == "compile_error"
    assert erlang.eval("1 + 1.") == 2


def test_load_module_reads_a_file_as_erlc_does_utf8_or_latin1(tmp_path):
    # A file's bytes go to the compiler as they are: UTF-8 by default,
    # latin-1 under a coding comment.
    (tmp_path / "enc_utf8.erl").write_bytes(
        "-module(enc_utf8).\n-export([s/0]).\ns() -> <<\"caf\u00e9 \u263a\"/utf8>>.\n".encode())
    (tmp_path / "enc_latin1.erl").write_bytes(
        b"%% -*- coding: latin-1 -*-\n-module(enc_latin1).\n-export([s/0]).\n"
        b"s() -> \"caf\xe9\".\n")
    assert erlang.load_module(tmp_path / "enc_utf8.erl") == "enc_utf8"
    assert erlang.apply("enc_utf8", "s", []) == "caf\u00e9 \u263a"
    assert erlang.load_module(tmp_path / "enc_latin1.erl") == "enc_latin1"
    assert erlang.apply("enc_latin1", "s", []) == [ord(c) for c in "caf\u00e9"]


@pytest.mark.parametrize("name", ["py", "py_handler", "py_coordinator"])
def test_load_module_refuses_the_helpers_own_module_names(name):
    pid = helper_pid()
    with pytest.raises(erlang.Error) as ei:
        erlang.load_module("-module(%s).\n-export([h/0]).\nh() -> 1.\n" % name)
    assert ei.value.reason == ("reserved_module", name)
    # The helper is untouched: eval and load_module still work.
    assert erlang.eval("1 + 1.") == 2
    assert erlang.load_module("-module(after_reserved).\n") == "after_reserved"
    assert erlang.call("echo", "still") == "still"
    assert helper_pid() == pid


def test_load_module_of_a_missing_file_raises_os_error(tmp_path):
    with pytest.raises(OSError):
        erlang.load_module(str(tmp_path / "nope.erl"))
