"""Erlang logger events reach Python's logging: logger "erlang" (and
"erlang.<domain>"), levels mapped, Erlang metadata on the record, one line
per event; raw emulator stderr still goes to sys.stderr."""
import logging
import re
import threading
import time

import pytest

import erlang

from conftest import run_python

PID = re.compile(r"^<\d+\.\d+\.\d+>$")


class Records(logging.Handler):
    """Collects the records that reach it, for a test to wait on."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []
        self.cond = threading.Condition()

    def emit(self, record):
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout=5.0):
        """The first record that satisfies predicate, or None after timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for r in self.records:
                    if predicate(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def matching(self, predicate):
        with self.cond:
            return [r for r in self.records if predicate(r)]


@pytest.fixture
def records():
    logger = logging.getLogger("erlang")
    handler = Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def text_in(text):
    return lambda r: text in r.getMessage()


CRASHER = """
-module(log_crasher).
-behaviour(gen_server).
-include_lib("kernel/include/logger.hrl").
-export([init/1, handle_call/3, handle_cast/2, warn/1]).

init([]) -> {ok, []}.
handle_call(_, _, S) -> {reply, ok, S}.
handle_cast(crash, _S) -> erlang:error({log_crasher_boom, lists:seq(1, 100000)}).

warn(N) ->
    ?LOG_WARNING("warned from a macro ~p", [N]),
    ok.
"""

SUPERVISOR = """
-module(log_sup).
-behaviour(supervisor).
-export([init/1, start_child/0]).

init([]) ->
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10},
          [#{id => log_sup_child, start => {log_sup, start_child, []},
             restart => temporary}]}}.

start_child() ->
    {ok, spawn_link(fun() -> receive go -> exit(log_sup_child_died) end end)}.
"""


def test_logger_warning_from_eval_is_a_warning_record_with_the_pid(records):
    pid = erlang.eval('logger:warning("hello from erlang ~p", [42]), pid_to_list(self())')
    r = records.wait_for(text_in("hello from erlang 42"))
    assert r is not None
    assert r.name == "erlang"
    assert r.levelno == logging.WARNING
    assert r.getMessage() == "hello from erlang 42"
    assert r.erlang_level == "warning"
    assert PID.match(r.erlang_pid)
    assert r.erlang_pid == "".join(map(chr, pid))
    # logger:warning/2 (a function, not a macro) records no location
    assert r.erlang_mfa is None
    assert r.erlang_domain == ()
    assert abs(r.created - time.time()) < 5


def test_a_logger_macro_gives_mfa_file_and_line(records, tmp_path):
    src = tmp_path / "log_crasher.erl"
    src.write_text(CRASHER)
    erlang.load_module(str(src))
    assert erlang.apply("log_crasher", "warn", [7]) == "ok"
    r = records.wait_for(text_in("warned from a macro 7"))
    assert r is not None
    assert r.levelno == logging.WARNING
    assert r.erlang_mfa == "log_crasher:warn/1"
    assert r.funcName == "warn"
    assert r.pathname == str(src)
    line = [i for i, ln in enumerate(CRASHER.splitlines(), 1) if "?LOG_WARNING" in ln][0]
    assert r.lineno == line
    assert PID.match(r.erlang_pid)


def test_log_event_arrives_within_a_second_of_the_call(records):
    erlang.eval('logger:error("arrives soon"), ok')
    returned = time.monotonic()
    assert records.wait_for(text_in("arrives soon"), timeout=1.0) is not None
    assert time.monotonic() - returned < 1.0


def test_levels_are_mapped(records):
    erlang.eval(
        'logger:set_primary_config(level, debug),'
        '[logger:log(L, "level test ~s", [L]) || L <- [emergency, alert, critical, error,'
        ' warning, notice, info, debug]],'
        'logger:set_primary_config(level, notice)'
    )
    expected = {
        "emergency": logging.CRITICAL, "alert": logging.CRITICAL,
        "critical": logging.CRITICAL, "error": logging.ERROR,
        "warning": logging.WARNING, "notice": logging.INFO,
        "info": logging.INFO, "debug": logging.DEBUG,
    }
    for level, levelno in expected.items():
        r = records.wait_for(lambda r, l=level: r.getMessage() == "level test " + l)
        assert r is not None, level
        assert (r.levelno, r.erlang_level) == (levelno, level)


def test_info_is_dropped_by_erlangs_default_primary_level(records):
    erlang.eval('logger:info("info not shown"), logger:notice("notice shown"), ok')
    assert records.wait_for(text_in("notice shown")) is not None
    assert records.matching(text_in("info not shown")) == []


def test_crashing_gen_server_gives_one_crash_report_on_one_line(records, tmp_path):
    src = tmp_path / "log_crasher.erl"
    src.write_text(CRASHER)
    erlang.load_module(str(src))
    pid = erlang.eval(
        "{ok, P} = gen_server:start(log_crasher, [], []), gen_server:cast(P, crash),"
        "list_to_binary(pid_to_list(P))")
    crash = records.wait_for(lambda r: r.name == "erlang.otp.sasl"
                             and r.erlang_pid == pid)
    terminating = records.wait_for(lambda r: r.name == "erlang.otp"
                                   and r.erlang_pid == pid)
    assert crash is not None and terminating is not None
    time.sleep(0.3)     # anything else about this process would be in by now
    about = records.matching(lambda r: r.erlang_pid == pid)
    assert sorted(r.name for r in about) == ["erlang.otp", "erlang.otp.sasl"]
    for r in about:
        assert r.levelno == logging.ERROR
        assert "\n" not in r.getMessage()
        # a 100,000-element reason is cut to a bounded size
        assert len(r.getMessage()) < 40000
    assert crash.erlang_domain == ("otp", "sasl")
    assert "log_crasher_boom" in crash.getMessage()
    assert "initial call: log_crasher:init/1" in crash.getMessage()
    assert "Generic server" in terminating.getMessage()
    assert "log_crasher_boom" in terminating.getMessage()


def test_supervisor_report(records, tmp_path):
    src = tmp_path / "log_sup.erl"
    src.write_text(SUPERVISOR)
    erlang.load_module(str(src))
    erlang.eval(
        "{ok, S} = supervisor:start_link(log_sup, []), unlink(S),"
        "[{_, C, _, _}] = supervisor:which_children(S), C ! go, ok")
    r = records.wait_for(lambda r: "log_sup_child_died" in r.getMessage()
                         and "child_terminated" in r.getMessage())
    assert r is not None
    assert r.name == "erlang.otp.sasl"
    assert r.levelno == logging.ERROR
    assert "\n" not in r.getMessage()
    assert "log_sup_child" in r.getMessage()
    assert PID.match(r.erlang_pid)


def test_report_without_a_format_string(records):
    erlang.eval('logger:error(#{what => a_report, count => 3}), ok')
    r = records.wait_for(text_in("a_report"))
    assert r is not None
    assert r.levelno == logging.ERROR
    assert r.getMessage() in ("count: 3, what: a_report", "what: a_report, count: 3")


def test_domain_names_a_sub_logger_and_metadata_is_kept(records):
    erlang.eval('logger:warning("with domain", [], #{domain => [myapp, db], request_id => 17,'
                ' tag => blue, big => lists:seq(1, 100000)}), ok')
    r = records.wait_for(text_in("with domain"))
    assert r is not None
    assert r.name == "erlang.myapp.db"
    assert r.erlang_domain == ("myapp", "db")
    assert r.erlang_meta["request_id"] == 17
    assert r.erlang_meta["tag"] == "blue"
    assert len(r.erlang_meta["big"]) < 1000


def test_set_level_on_the_erlang_logger_filters(records):
    logger = logging.getLogger("erlang")
    logger.setLevel(logging.ERROR)
    erlang.eval('logger:warning("filtered warning"), logger:error("passed error"), ok')
    assert records.wait_for(text_in("passed error")) is not None
    # one pump, in order: the warning would have come first
    assert records.matching(text_in("filtered warning")) == []


def test_raw_stderr_still_reaches_sys_stderr_and_logs_never_stdout(records, capfd):
    erlang.eval('io:format(standard_error, "raw stderr line~n", []),'
                'logger:error("logged not printed"), ok')
    assert records.wait_for(text_in("logged not printed")) is not None
    deadline = time.monotonic() + 5
    out = err = ""
    while time.monotonic() < deadline:
        o, e = capfd.readouterr()
        out += o
        err += e
        if "raw stderr line" in err:
            break
        time.sleep(0.05)
    assert "raw stderr line\n" in err
    assert "logged not printed" not in out
    assert "logged not printed" not in err      # pytest's handlers took it
    assert erlang.call("echo", "channel intact") == "channel intact"


def test_a_log_flood_neither_blocks_nor_breaks_the_helper(records):
    # A Python handler slower than the helper logs: events beyond the
    # bounded queues are dropped, calls are not held up, and once Python
    # keeps up again events arrive as before.
    slow = threading.Event()

    class Slow(logging.Handler):
        def emit(self, record):
            if not slow.is_set():
                time.sleep(0.001)

    logger = logging.getLogger("erlang")
    handler = Slow()
    logger.addHandler(handler)
    try:
        t0 = time.monotonic()
        n = erlang.eval('Pad = binary:copy(<<"x">>, 2000),'
                        '[logger:warning("flood ~b ~s", [I, Pad]) || I <- lists:seq(1, 20000)],'
                        'length(lists:seq(1, 20000))', timeout=60)
        assert n == 20000
        assert time.monotonic() - t0 < 30
        assert erlang.call("echo", "after flood") == "after flood"
    finally:
        slow.set()
        logger.removeHandler(handler)
    erlang.eval('logger:warning("after the flood"), ok')
    assert records.wait_for(text_in("after the flood"), timeout=30) is not None
    flood = records.matching(text_in("flood "))
    assert 0 < len(flood) <= 20000


NO_LOGGING_CONFIG = """
import erlang, time
erlang.eval('logger:error("plain error ~p", [1]), ok')
erlang.eval('logger:warning("multi~nline", []), ok')
time.sleep(0.5)
erlang.stop()
print("done")
"""


def test_without_logging_config_errors_show_on_stderr_one_line_each():
    proc = run_python(NO_LOGGING_CONFIG, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    lines = proc.stderr.splitlines()
    assert "plain error 1" in lines
    # logging's last resort handler prints the message; single_line joins
    # the report's lines
    assert "multi, line" in lines


BASIC_CONFIG = """
import erlang, logging, time
logging.basicConfig(level=logging.INFO,
                    format="%(name)s|%(levelname)s|%(erlang_pid)s|%(erlang_mfa)s|%(message)s")
erlang.eval('logger:notice("configured ~s", [yes]), ok')
time.sleep(0.5)
erlang.stop()
"""


def test_basic_config_format_with_erlang_fields():
    proc = run_python(BASIC_CONFIG, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    [line] = [ln for ln in proc.stderr.splitlines() if "configured" in ln]
    name, level, pid, mfa, msg = line.split("|")
    assert (name, level, mfa, msg) == ("erlang", "INFO", "None", "configured yes")
    assert PID.match(pid)


LEVEL_ARG = """
import erlang, logging, time
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
erlang.start(args=["-kernel", "logger_level", "debug"])
erlang.eval('logger:debug("debug from erlang"), ok')
time.sleep(0.5)
erlang.stop()
"""


def test_kernel_logger_level_arg_lets_debug_through_and_boot_reports_stay_off_stdout():
    proc = run_python(LEVEL_ARG, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "erlang DEBUG debug from erlang" in lines
    # progress reports: kernel's and stdlib's while the node boots (on
    # stderr, as Erlang prints them), the helper's own through logging
    assert "application: kernel" in proc.stderr
    assert "erlang.otp.sasl INFO Application: py. Started at: nonode@nohost." in lines
    assert proc.stdout == ""


ON_START_LEVEL = """
import erlang, logging, time
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
erlang.start(on_start=lambda: erlang.eval("logger:set_primary_config(level, info)"))
erlang.eval('logger:info("info from erlang"), ok')
time.sleep(0.5)
erlang.stop()
"""


def test_primary_level_set_in_on_start_lets_info_through():
    proc = run_python(ON_START_LEVEL, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["erlang INFO info from erlang"]
    assert proc.stdout == ""


def test_events_after_the_channel_closed_go_to_stderr_for_helper_exited(restore_helper):
    with pytest.raises(erlang.HelperExited) as info:
        erlang.eval("exit(whereis(py_coordinator), kill), timer:sleep(5000)")
    # the supervisor's report, written to fd 2 once the port was gone
    assert "py_coordinator" in info.value.stderr
    assert "child_terminated" in info.value.stderr


def test_the_handler_survives_a_change_of_its_config_in_erlang(records):
    assert erlang.eval("logger:set_handler_config(py_log, level, error)") == "ok"
    try:
        erlang.eval('logger:warning("handler level drops this"), logger:error("handler level passes"), ok')
        assert records.wait_for(text_in("handler level passes")) is not None
        assert records.matching(text_in("handler level drops this")) == []
    finally:
        assert erlang.eval("logger:set_handler_config(py_log, level, all)") == "ok"
    erlang.eval('logger:warning("back to all"), ok')
    assert records.wait_for(text_in("back to all")) is not None
