"""The error model: Erlang exceptions, unknown functions, timeouts,
unencodable arguments, a missing erl."""
import json
import pickle
import stat
import threading
import time
import uuid

import pytest

import erlang
from conftest import helper_pid, result_lines, run_python


# -------------------------------------------------- exceptions from Erlang

@pytest.mark.parametrize("fn, kind", [
    ("raise_error", "error"),
    ("raise_throw", "throw"),
    ("raise_exit", "exit"),
])
def test_erlang_exception_raises_error_with_kind_and_decoded_reason(fn, kind):
    reason = ("my_reason", 1, [2.5, None], {"k": b"\xff"})
    with pytest.raises(erlang.Error) as ei:
        erlang.call(fn, reason)
    e = ei.value
    assert type(e) is erlang.Error
    assert isinstance(e, RuntimeError)
    assert e.kind == kind
    assert e.reason == reason
    assert isinstance(e.stacktrace, (list, tuple))
    assert kind in str(e)


def test_erlang_atom_reason_decodes_as_atom():
    with pytest.raises(erlang.Error) as ei:
        erlang.apply("erlang", "/", [1, 0])
    assert ei.value.kind == "error"
    assert ei.value.reason == "badarith"
    assert isinstance(ei.value.reason, erlang.Atom)


def test_erlang_error_stacktrace_names_the_failing_function():
    src = "-module(st_mod).\n-export([f/1]).\nf(X) -> erlang:error({bad, X}).\n"
    erlang.load_module(src)
    with pytest.raises(erlang.Error) as ei:
        erlang.apply("st_mod", "f", [5])
    e = ei.value
    assert e.reason == ("bad", 5)
    frames = [f for f in e.stacktrace if isinstance(f, tuple) and len(f) == 4]
    assert ("st_mod", "f") in [(f[0], f[1]) for f in frames]


def test_error_from_a_thread_reaches_that_thread_only():
    results = {}
    barrier = threading.Barrier(8)

    def body(i):
        barrier.wait()
        try:
            results[i] = ("ok", erlang.call("maybe_fail", i))
        except erlang.Error as e:
            results[i] = ("error", e.reason)

    ts = [threading.Thread(target=body, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(8):
        if i % 2 == 0:
            assert results[i] == ("error", ("even", i))
        else:
            assert results[i] == ("ok", ("ok", i))


def test_erlang_error_pickles_with_its_fields():
    with pytest.raises(erlang.Error) as ei:
        erlang.call("raise_throw", ("t", 1))
    e2 = pickle.loads(pickle.dumps(ei.value))
    assert type(e2) is erlang.Error
    assert (e2.kind, e2.reason) == ("throw", ("t", 1))


def test_public_classes_are_named_as_users_import_them():
    for cls in (erlang.Error, erlang.UndefinedFunction, erlang.CallTimeout,
                erlang.HelperExited, erlang.NodeDown, erlang.Atom, erlang.Pid,
                erlang.ImproperList):
        assert cls.__module__ == "erlang"
        assert getattr(erlang, cls.__name__) is cls
    assert repr(erlang.CallTimeout) == "<class 'erlang.CallTimeout'>"


@pytest.mark.parametrize("call, where", [
    (lambda: erlang.apply("erlang", "/", [1, 0]), " in erlang:'/'/2: "),
    (lambda: erlang.apply("erlang", "and", [1, 2]), " in erlang:'and'/2: "),
    (lambda: erlang.apply("lists", "nth", [5, [1]]), " in lists:nth/2: "),
    (lambda: erlang.eval("X + 1."), ": "),
], ids=["operator", "reserved-word", "plain", "eval-internals"])
def test_error_message_names_the_failing_function_as_erlang_writes_it(call, where):
    with pytest.raises(erlang.Error) as ei:
        call()
    text = str(ei.value)
    assert text.startswith("Erlang error" + where), text
    assert "py:" not in text and "eval_sequences" not in text


# ------------------------------------------- messages as Erlang prints them

def test_message_has_erlangs_extended_error_info():
    with pytest.raises(erlang.Error) as ei:
        erlang.apply("ets", "lookup", [erlang.Atom("nosuchtable"), 1])
    e = ei.value
    assert (e.kind, e.reason) == ("error", "badarg")
    assert str(e) == (
        "Erlang error in ets:lookup/2: bad argument\n"
        "  in function  ets:lookup/2\n"
        "     called as ets:lookup(nosuchtable,1)\n"
        "     *** argument 1: the table identifier does not refer to an existing ETS table")


@pytest.mark.parametrize("call", [
    lambda: erlang.eval("X = 1, X + a"),
    lambda: erlang.apply("erlang", "+", [1, erlang.Atom("a")]),
], ids=["eval", "apply"])
def test_badarith_message_names_the_operator_and_operands(call):
    with pytest.raises(erlang.Error) as ei:
        call()
    text = str(ei.value)
    assert text.startswith("Erlang error in erlang:'+'/2: an error occurred when "
                           "evaluating an arithmetic expression\n"), text
    assert "in operator  +/2" in text and "called as 1 + a" in text
    # The helper's frames and the evaluator's are not in the text.
    for machinery in ("py_handler", "erl_eval", "py:", "eval_sequences"):
        assert machinery not in text


def test_message_of_an_error_in_eval_keeps_the_users_frames_only():
    with pytest.raises(erlang.Error) as ei:
        erlang.eval("lists:map(fun(X) -> X + 1 end, [1, a]).")
    text = str(ei.value)
    assert "called as a + 1" in text
    assert "in call from lists:map/2" in text
    assert "erl_eval" not in text and "py:" not in text


@pytest.mark.parametrize("args, hint", [
    ([1], "(lists:seq/2, lists:seq/3 exist)"),
    ([1, 2, 3, 4], "(lists:seq/2, lists:seq/3 exist)"),
], ids=["too-few", "too-many"])
def test_undefined_arity_says_which_arities_exist(args, hint):
    with pytest.raises(erlang.UndefinedFunction) as ei:
        erlang.apply("lists", "seq", args)
    assert (ei.value.kind, ei.value.reason) == ("error", "undef")
    assert str(ei.value) == "Erlang error: undefined function lists:seq/%d %s" % (
        len(args), hint)


def test_undefined_arity_with_one_other_arity_says_it_exists():
    with pytest.raises(erlang.UndefinedFunction) as ei:
        erlang.apply("lists", "nth", [1])
    assert str(ei.value).endswith("undefined function lists:nth/1 (lists:nth/2 exists)")


def test_undefined_module_says_it_is_not_on_the_code_path():
    with pytest.raises(erlang.UndefinedFunction) as ei:
        erlang.apply("Elixir.Foo", "bar", [1])
    assert str(ei.value) == (
        "Erlang error: undefined function 'Elixir.Foo':bar/1 "
        "(module 'Elixir.Foo' is not available: not on the code path)")


def test_undefined_function_of_a_loaded_module_names_its_caller():
    erlang.load_module("-module(calls_undef).\n-export([f/0]).\n"
                       "f() -> {ok, lists:no_such_fun(1)}.\n")   # not a tail call
    with pytest.raises(erlang.UndefinedFunction) as ei:
        erlang.apply("calls_undef", "f", [])
    text = str(ei.value)
    assert text.startswith("Erlang error in calls_undef:f/0: undefined function "
                           "lists:no_such_fun/1\n"), text


def test_stack_frames_carry_file_names_as_str_and_line_numbers(tmp_path):
    path = tmp_path / "st_file.erl"
    path.write_text("-module(st_file).\n-export([f/1]).\n\nf(X) -> erlang:error({bad, X}).\n")
    erlang.load_module(path)
    with pytest.raises(erlang.Error) as ei:
        erlang.apply("st_file", "f", [1])
    (frame,) = [f for f in ei.value.stacktrace if f[:2] == ("st_file", "f")]
    location = dict(frame[3])
    assert location["file"] == str(path)
    assert location["line"] == 4
    assert "in function  st_file:f/1 (%s, line 4)" % path in str(ei.value)


def test_huge_reason_gives_a_short_message_and_the_whole_reason():
    big = [list(range(100)) for _ in range(1000)]
    with pytest.raises(erlang.Error) as ei:
        erlang.call("raise_error", big)
    assert ei.value.reason == big
    text = str(ei.value)
    assert len(text) < 5000 and "..." in text
    with pytest.raises(erlang.Error) as ei:
        erlang.call("raise_throw", "x" * 10_000_000)
    assert len(ei.value.reason) == 10_000_000
    assert len(str(ei.value)) < 5000


def test_a_reason_erlang_cannot_format_falls_back_to_the_plain_message():
    # erl_error crashes on a location with a file that is not a string; the
    # handler still replies, with the message worded on the Python side.
    pid = helper_pid()
    with pytest.raises(erlang.Error) as ei:
        erlang.eval("erlang:raise(error, foo, [{m, f, 0, [{file, 123}, {line, x}]}]).")
    assert str(ei.value) == "Erlang error in m:f/0: Atom('foo')"
    assert ei.value.stacktrace == [("m", "f", 0, [("file", 123), ("line", "x")])]
    assert erlang.call("echo", "after") == "after"
    assert helper_pid() == pid


@pytest.mark.parametrize("source, text", [
    ("1 + .", "Erlang error: 1: syntax error before: '.'"),
    ("Y + 1.", "Erlang error: variable 'Y' is unbound"),
], ids=["syntax", "unbound"])
def test_eval_errors_are_worded_as_erlang_words_them(source, text):
    with pytest.raises(erlang.Error) as ei:
        erlang.eval(source)
    assert str(ei.value) == text


def test_message_survives_pickling():
    with pytest.raises(erlang.Error) as ei:
        erlang.apply("ets", "lookup", [erlang.Atom("nosuchtable"), 1])
    e2 = pickle.loads(pickle.dumps(ei.value))
    assert str(e2) == str(ei.value)
    assert e2.stacktrace == ei.value.stacktrace


def test_an_error_without_erlangs_text_gets_the_plain_message():
    # The coordinator reports a handler that died mid-call with no text.
    with pytest.raises(erlang.Error) as ei:
        erlang.eval("exit(self(), kill).")
    assert (ei.value.kind, ei.value.reason) == ("exit", "killed")
    assert str(ei.value) == "Erlang exit: Atom('killed')"
    assert erlang.Error("error", "r", [], None).args == ("Erlang error: 'r'",)


def test_messages_about_very_long_names_stay_short():
    name = "n" * 100_000
    with pytest.raises(erlang.UndefinedFunction) as ei:
        erlang.call(name)
    assert len(str(ei.value)) < 200
    assert ei.value.reason[1] == name          # the whole name is still there
    with pytest.raises(erlang.UndefinedFunction) as ei:
        erlang.apply("m" * 200, "f", [])
    # Erlang's line names the module in full once (atoms have at most 255
    # characters); the note on why it is undefined names it cut short.
    text = str(ei.value)
    assert len(text) < 350, text
    assert text.count("m" * 200) == 1 and "not on the code path" in text


# ------------------------------------------------------- undefined functions

def test_unknown_registered_name_raises_undefined_function():
    with pytest.raises(erlang.UndefinedFunction) as ei:
        erlang.call("no_such_function", 1)
    e = ei.value
    assert isinstance(e, erlang.Error)
    assert isinstance(e, RuntimeError)
    assert e.kind == "error"
    assert e.reason[0] == "undefined_function"
    assert e.reason[1] in ("no_such_function", b"no_such_function")
    assert "no_such_function" in str(e)


def test_calling_an_unknown_name_creates_no_atom():
    name = "never_an_atom_%s" % uuid.uuid4().hex
    with pytest.raises(erlang.UndefinedFunction):
        erlang.call(name)
    r = erlang.eval('catch list_to_existing_atom("%s").' % name)
    assert isinstance(r, tuple) and r[0] == "EXIT" and r[1][0] == "badarg"


def test_unregistered_function_is_undefined_again():
    erlang.eval("py:register_function(short_lived, fun([]) -> here end).")
    assert erlang.call("short_lived") == "here"
    erlang.eval("py:unregister_function(short_lived).")
    with pytest.raises(erlang.UndefinedFunction):
        erlang.call("short_lived")


def test_function_registered_with_module_and_function_is_callable():
    erlang.eval("py:register_function(mf_reverse, lists, reverse).")
    # Module:Function(Args): the argument list itself.
    assert erlang.call("mf_reverse", 1, 2, 3) == [3, 2, 1]


def test_apply_of_an_undefined_function_raises_undefined_function():
    with pytest.raises(erlang.UndefinedFunction) as ei:
        erlang.apply("lists", "no_such_function", [1])
    assert ei.value.kind == "error"
    assert ei.value.reason == "undef"
    assert isinstance(ei.value, RuntimeError)
    with pytest.raises(erlang.UndefinedFunction):
        erlang.apply("no_such_module_xyz", "f", [])


def test_undef_raised_inside_a_registered_function_is_undefined_function():
    erlang.eval("py:register_function(calls_missing, fun([]) -> no_such_module_q:f() end).")
    with pytest.raises(erlang.UndefinedFunction):
        erlang.call("calls_missing")


# --------------------------------------------------------------- timeouts

def test_timeout_raises_call_timeout_promptly():
    t0 = time.monotonic()
    with pytest.raises(erlang.CallTimeout) as ei:
        erlang.call("sleep_ms", 5000, timeout=0.2)
    took = time.monotonic() - t0
    assert isinstance(ei.value, TimeoutError)
    assert 0.19 <= took < 1.0


def test_next_call_after_a_timeout_gets_its_own_result():
    with pytest.raises(erlang.CallTimeout):
        erlang.call("sleep_echo", 300, "late", timeout=0.05)
    # The late reply ("late") must not reach these calls.
    t0 = time.monotonic()
    assert erlang.call("sleep_echo", 400, "second") == "second"
    assert erlang.call("echo", "third") == "third"
    took = time.monotonic() - t0
    assert took < 1.0
    time.sleep(0.3)
    assert [erlang.call("echo", i) for i in range(20)] == list(range(20))


def test_replies_racing_their_timeout_never_reach_a_later_call():
    # Timeouts close to the function's duration: some replies are already on
    # their way when the call gives up.  A call either times out or returns
    # its own value; a stale reply is never taken for a later call's.
    timed_out = returned = 0
    for k in range(60):
        timeout = 0.010 + (k % 5) * 0.002
        try:
            r = erlang.call("sleep_echo", 12, ("first", k), timeout=timeout)
        except erlang.CallTimeout:
            timed_out += 1
        else:
            assert r == ("first", k)
            returned += 1
        assert erlang.call("echo", ("next", k)) == ("next", k)
    print("racing timeouts: %d timed out, %d returned" % (timed_out, returned))
    assert timed_out + returned == 60


def test_timeouts_in_one_thread_do_not_disturb_other_threads():
    stop = threading.Event()
    wrong = []
    n = [0]

    def steady():
        i = 0
        while not stop.is_set():
            if erlang.call("echo", ("steady", i)) != ("steady", i):
                wrong.append(i)
            i += 1
        n[0] = i

    t = threading.Thread(target=steady)
    t.start()
    try:
        for k in range(5):
            with pytest.raises(erlang.CallTimeout):
                erlang.call("sleep_echo", 200, ("late", k), timeout=0.02)
            assert erlang.call("echo", ("mine", k)) == ("mine", k)
    finally:
        stop.set()
        t.join()
    assert wrong == []
    assert n[0] > 0


def test_timeout_cancels_the_erlang_side_of_the_call():
    # The handler running the abandoned call is killed: the side effect
    # scheduled after its sleep never happens.
    erlang.eval(
        "py:register_function(slow_mark, fun([Ms]) -> timer:sleep(Ms),"
        " persistent_term:put(py_test_slow_mark, done), done end)."
    )
    erlang.eval("persistent_term:erase(py_test_slow_mark).")
    with pytest.raises(erlang.CallTimeout):
        erlang.call("slow_mark", 300, timeout=0.05)
    time.sleep(0.5)
    assert erlang.eval("persistent_term:get(py_test_slow_mark, not_done).") == "not_done"


# --------------------------------------------------- unencodable arguments

@pytest.mark.parametrize("bad, exc", [
    (set(), TypeError),
    (object(), TypeError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    ([1, {"k": {1, 2}}], TypeError),
])
def test_unencodable_argument_raises_before_sending_and_helper_keeps_serving(bad, exc):
    pid = helper_pid()
    with pytest.raises(exc):
        erlang.call("echo", bad)
    with pytest.raises(exc):
        erlang.apply("erlang", "display", [bad])
    # Nothing half-written reached the helper: same helper, right answers.
    assert erlang.call("echo", "after") == "after"
    assert erlang.call("double_it", 21) == 42
    assert helper_pid() == pid


def test_unencodable_argument_error_names_the_type():
    class Custom:
        pass

    with pytest.raises(TypeError) as ei:
        erlang.call("echo", Custom())
    assert "Custom" in str(ei.value)


# ----------------------------------------------------------- erl missing

MISSING_ERL = """
import erlang
try:
    {action}
except erlang.HelperExited as e:
    print("RESULT " + json.dumps({{"type": type(e).__name__, "msg": str(e),
                                   "conn": isinstance(e, ConnectionError)}}))
else:
    print("RESULT no exception")
"""


@pytest.mark.parametrize("action, env", [
    ("erlang.start(erl='/nonexistent/erl')", None),
    ("erlang.call('double_it', 1)", {"ERL": "/nonexistent/erl"}),
    ("erlang.eval('1.')", {"ERL": "/nonexistent/erl"}),
], ids=["start-option", "ERL-env-call", "ERL-env-eval"])
def test_missing_erl_raises_helper_exited_that_says_how_to_install(action, env):
    proc = run_python("import json\n" + MISSING_ERL.format(action=action), env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    (line,) = result_lines(proc)
    res = json.loads(line)
    assert res["type"] == "HelperExited"
    assert res["conn"] is True
    assert "apt-get install" in res["msg"] and "erlang" in res["msg"].lower()
    assert "/nonexistent/erl" in res["msg"]


FAILING_ERL = """
import json, sys
import erlang
for attempt in range(2):
    try:
        erlang.start(erl=sys.argv[1], timeout=10)
    except erlang.HelperExited as e:
        print("RESULT " + json.dumps({"status": e.status, "stderr": e.stderr, "msg": str(e),
                                       "running": erlang.is_running()}))
"""


def test_erl_that_exits_at_once_raises_helper_exited_with_status_and_stderr(tmp_path):
    fake = tmp_path / "erl"
    fake.write_text("#!/bin/sh\necho 'fake erl: cannot start' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    proc = run_python(FAILING_ERL, fake, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = result_lines(proc)
    assert len(lines) == 2          # failing again is a clean failure too
    for line in lines:
        res = json.loads(line)
        assert res["status"] == 3
        assert "fake erl: cannot start" in res["stderr"]
        assert "fake erl: cannot start" in res["msg"]
        assert res["running"] is False


def test_helper_exited_is_a_connection_error():
    assert issubclass(erlang.HelperExited, ConnectionError)
    assert issubclass(erlang.CallTimeout, TimeoutError)
    assert issubclass(erlang.UndefinedFunction, erlang.Error)
    assert issubclass(erlang.Error, RuntimeError)
    e = pickle.loads(pickle.dumps(erlang.HelperExited("gone", -9, "tail")))
    assert (str(e), e.status, e.stderr) == ("gone", -9, "tail")
