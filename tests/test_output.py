"""Output of the helper: io:format in a registered function reaches Python's
sys.stdout before the call returns, and never the channel."""
import threading
import time

import erlang
from conftest import REGISTER_LITERAL, result_lines, run_python


def test_io_format_in_a_function_is_printed_before_the_call_returns(capsys):
    assert erlang.call("say", "hello from erlang", 7) == 7
    # No waiting: the text is already on sys.stdout.
    assert "hello from erlang\n" in capsys.readouterr().out


def test_erlang_output_keeps_its_place_among_python_prints(capsys):
    print("before")
    assert erlang.call("say", "middle", 1) == 1
    print("after")
    assert erlang.call("say", "last", 2) == 2
    assert capsys.readouterr().out == "before\nmiddle\nafter\nlast\n"


def test_unicode_output_arrives_intact(capsys):
    assert erlang.call("say", "héllo ✓ 日本", None) is None
    assert "héllo ✓ 日本\n" in capsys.readouterr().out


def test_output_of_many_lines_in_one_call_arrives_in_order(capsys):
    erlang.eval(
        "py:register_function(count_lines, fun([N]) ->"
        " [io:format(\"line ~b~n\", [I]) || I <- lists:seq(1, N)], N end)."
    )
    assert erlang.call("count_lines", 500) == 500
    out = capsys.readouterr().out
    assert out.splitlines() == ["line %d" % i for i in range(1, 501)]


def test_output_from_a_thread_is_printed_before_its_call_returns(capsys):
    got = []

    def worker():
        got.append(erlang.call("say", "from a thread", "r"))
        got.append("line seen" if "from a thread" in capsys.readouterr().out else "missing")

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert got == ["r", "line seen"]


def test_many_threads_printing_while_others_call_all_get_their_results(capsys):
    n_print, n_call, n_each = 6, 6, 150
    barrier = threading.Barrier(n_print + n_call)
    wrong = []
    lock = threading.Lock()

    def check(what, fn, arg, expected):
        try:
            r = erlang.call(fn, *arg)
        except Exception as e:  # reported by the main thread
            r = e
        if r != expected:
            with lock:
                wrong.append((what, arg, repr(r)))

    def printer(tid):
        barrier.wait()
        for i in range(n_each):
            check("say", "say", ("out %d %d" % (tid, i), [tid, i]), [tid, i])

    def caller(tid):
        barrier.wait()
        for i in range(n_each * 4):
            check("echo", "echo", ((tid, i),), (tid, i))

    ts = [threading.Thread(target=printer, args=(i,)) for i in range(n_print)]
    ts += [threading.Thread(target=caller, args=(i,)) for i in range(n_call)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts)
    assert wrong[:5] == [] and len(wrong) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = sorted("out %d %d" % (t, i) for t in range(n_print) for i in range(n_each))
    assert sorted(ln for ln in lines if ln.startswith("out ")) == expected


def test_output_of_a_process_spawned_by_a_call_reaches_stdout_later(capsys):
    # Printed after the call returned: forwarded by the output pump.
    assert erlang.eval(
        'spawn(fun() -> timer:sleep(100), io:format("spawned says hi~n") end), ok.'
    ) == "ok"
    deadline = time.monotonic() + 5
    seen = ""
    while time.monotonic() < deadline:
        seen += capsys.readouterr().out
        if "spawned says hi" in seen:
            break
        time.sleep(0.05)
    assert "spawned says hi\n" in seen
    assert erlang.call("double_it", 2) == 4


def test_output_to_standard_error_reaches_stderr(capfd):
    erlang.eval(
        "py:register_function(warn, fun([T]) -> io:format(standard_error, \"~ts~n\", [T]), warned end)."
    )
    assert erlang.call("warn", "a warning line") == "warned"
    deadline = time.monotonic() + 5
    err = ""
    while time.monotonic() < deadline:
        err += capfd.readouterr().err
        if "a warning line" in err:
            break
        time.sleep(0.05)
    assert "a warning line" in err


OUTPUT_IN_SUBPROCESS = """
import erlang
erlang.eval(%s)
print("py 1", flush=True)
r = erlang.call("say", "erl 1", 10)
print("py", r, flush=True)
r = erlang.call("say", "erl 2", 20)
print("py", r, flush=True)
""" % REGISTER_LITERAL


def test_output_reaches_the_real_stdout_of_a_program():
    proc = run_python(OUTPUT_IN_SUBPROCESS, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["py 1", "erl 1", "py 10", "erl 2", "py 20"]
    assert result_lines(proc) == []


def test_logger_output_goes_to_logging_not_stdout_nor_the_channel(capfd, caplog):
    # (tests/test_logging.py has the details)
    assert erlang.eval('logger:error("logged from erlang ~p", [42]), ok.') == "ok"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "logged from erlang 42" in caplog.messages:
            break
        time.sleep(0.05)
    assert [r.name for r in caplog.records if r.getMessage() == "logged from erlang 42"] == ["erlang"]
    assert "logged from erlang 42" not in capfd.readouterr().out
    assert erlang.call("echo", "channel intact") == "channel intact"
