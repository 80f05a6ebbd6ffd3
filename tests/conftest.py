"""Shared fixtures of the test suite.

Every test talks to a real helper BEAM.  The functions the tests call are
registered in the helper from ``REGISTER`` (Erlang source run with
``erlang.eval``).  The session starts the helper with
``on_start=register_functions``, so a helper that a test killed is started
again by the next call *with* the registrations; the autouse fixture
``helper`` also re-registers when a test left a helper started with other
options, and restores the default start options afterwards.

Crash and lifecycle cases that can kill or hang the interpreter run in a
subprocess through ``run_python``, always with a timeout.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

import erlang

# Functions every test may call.  Each fun receives the argument list.
REGISTER = r"""
py:register_function(double_it, fun([X]) -> X * 2 end),
py:register_function(add_one, fun([X]) -> X + 1 end),
py:register_function(echo, fun([X]) -> X end),
py:register_function(echo_args, fun(Args) -> Args end),
py:register_function(my_function, fun([A, B]) -> {A, B} end),
py:register_function(maybe_fail,
    fun([X]) when is_integer(X), X rem 2 =:= 0 -> erlang:error({even, X});
       ([X]) -> {ok, X} end),
py:register_function(sleep_ms, fun([Ms]) -> timer:sleep(Ms), Ms end),
py:register_function(sleep_echo, fun([Ms, X]) -> timer:sleep(Ms), X end),
py:register_function(raise_error, fun([R]) -> erlang:error(R) end),
py:register_function(raise_throw, fun([R]) -> erlang:throw(R) end),
py:register_function(raise_exit, fun([R]) -> erlang:exit(R) end),
py:register_function(whoami, fun([]) -> self() end),
py:register_function(say, fun([Text, Value]) -> io:format("~ts~n", [Text]), Value end),
ok.
"""

# The same source as a Python literal, for scripts run in a subprocess.
REGISTER_LITERAL = repr(REGISTER)


def register_functions():
    """Registers the test functions in the running helper (also the
    ``on_start`` of the session's helper)."""
    assert erlang.eval(REGISTER) == "ok"


def start_default_helper():
    """(Re)starts the helper with the suite's default options."""
    erlang.stop()
    erlang.start(on_start=register_functions)
    assert erlang.is_running()


def helper_pid():
    return erlang._erlang._helper_pid()


def functions_registered():
    """Whether the running helper knows the test functions."""
    try:
        return erlang.call("echo", "probe", timeout=10) == "probe"
    except erlang.UndefinedFunction:
        return False


@pytest.fixture(scope="session", autouse=True)
def session_helper():
    start_default_helper()
    yield
    erlang.stop()


@pytest.fixture(autouse=True)
def helper(session_helper):
    """A running helper with the test functions registered, before every test."""
    if not erlang.is_running() or not functions_registered():
        start_default_helper()
    yield


@pytest.fixture
def restore_helper():
    """For tests that start the helper with their own options: afterwards the
    default helper (with the session's on_start) is back."""
    yield
    start_default_helper()


# ------------------------------------------------------------ subprocesses

def run_python(code, *args, timeout=60, env=None, cwd=None, **kw):
    """Runs ``code`` (dedented) with this interpreter in a fresh process,
    with ``args`` as its sys.argv[1:].
    Returns the CompletedProcess (text mode); fails the test on a hang."""
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)] + [str(a) for a in args],
            capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd, **kw
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail("subprocess hung for %s s; stdout: %r; stderr: %r"
                    % (timeout, e.stdout, e.stderr))


def result_lines(proc, prefix="RESULT "):
    """The lines that a subprocess printed with ``prefix``, prefix removed."""
    return [ln[len(prefix):] for ln in proc.stdout.splitlines() if ln.startswith(prefix)]


# --------------------------------------------------------------- /proc

def proc_state(pid):
    """The state letter of process ``pid`` ('R', 'S', 'Z', ...) or None when
    no such process exists."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def proc_gone(pid):
    """True when ``pid`` no longer runs (gone, or a zombie no one reaps: an
    orphan's reaper is init, which is no concern of the package)."""
    return proc_state(pid) in (None, "Z", "X")


def wait_gone(pid, timeout):
    """Waits until ``pid`` is gone; returns the seconds it took, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc_gone(pid):
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def processes():
    """(pid, comm, state, ppid) of every process alive (not a zombie)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] not in ("Z", "X"):
            yield int(name), comm, fields[0], int(fields[1])


def children_of(pid):
    """(pid, comm) of the processes whose parent is ``pid``."""
    return [(p, comm) for p, comm, _state, ppid in processes() if ppid == pid]


def erlang_process_count():
    return erlang.eval("erlang:system_info(process_count).")


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def wait_until(pred, timeout=5.0):
    """Polls pred() until it is true or timeout seconds passed; returns its
    last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# park_as(Name): the calling process registers as Name and waits for ever,
# so that a test can watch it being killed (erlang:whereis/1).
PARK_AS = r"""
py:register_function(park_as, fun([Name]) -> register(binary_to_atom(Name), self()),
                                             receive never -> ok end end),
ok.
"""


@pytest.fixture
def park_as():
    assert erlang.eval(PARK_AS) == "ok"
