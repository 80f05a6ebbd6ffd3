"""State made in a call belongs to the thread's handler process, which a
cancelled call kills: that is never silent (a warning through logging names
what went), and py:keep/1 gives state a home no cancel reaches."""
import logging
import threading

import pytest

import erlang

from test_logging import records  # noqa: F401 (the fixture)

LOST = "cancelled call's handler"

SERVER = """
-module(state_srv).
-behaviour(gen_server).
-export([start_link/1, init/1, handle_call/3, handle_cast/2]).

start_link(Name) -> gen_server:start_link({local, Name}, ?MODULE, [], []).

init([]) -> {ok, 0}.
handle_call(bump, _From, N) -> {reply, N + 1, N + 1};
handle_call(crash, _From, _N) -> erlang:error(state_srv_crashed).
handle_cast(_, N) -> {noreply, N}.
"""


@pytest.fixture
def state_srv(tmp_path):
    src = tmp_path / "state_srv.erl"
    src.write_text(SERVER)
    erlang.load_module(str(src))


def cancel_a_call():
    """A call on this thread that times out: its handler is killed."""
    with pytest.raises(erlang.CallTimeout):
        erlang.eval("timer:sleep(5000)", timeout=0.2)


def lost_warnings(records, marker):
    """The lost-state warnings logged before `marker` (a record logged after
    the cancel: the coordinator logs the warning before it reads the next
    frame, so any warning comes first)."""
    erlang.eval('logger:warning("%s"), ok' % marker)
    assert records.wait_for(lambda r: r.getMessage() == marker) is not None
    return records.matching(lambda r: LOST in r.getMessage())


def test_cancel_warns_about_a_table_the_call_made(records):
    erlang.eval("ets:new(state_cache_1, [named_table, public]), "
                "ets:insert(state_cache_1, {k, v})")
    cancel_a_call()
    r = records.wait_for(lambda r: LOST in r.getMessage())
    assert r is not None
    assert r.levelno == logging.WARNING
    assert r.name == "erlang.py"
    assert "ETS tables deleted: state_cache_1" in r.getMessage()
    assert "py:keep/1" in r.getMessage()
    assert "\n" not in r.getMessage()
    # ...and it really is gone
    assert erlang.eval("ets:info(state_cache_1)") is None


def test_cancel_warns_about_an_unnamed_table_with_its_id(records):
    erlang.eval("ets:new(state_unnamed, [])")
    cancel_a_call()
    r = records.wait_for(lambda r: LOST in r.getMessage())
    assert r is not None
    assert "state_unnamed #Ref<" in r.getMessage()


def test_cancel_warns_about_a_start_linked_server(records, state_srv):
    pid = erlang.eval("{ok, P} = state_srv:start_link(state_srv_1), pid_to_list(P)")
    pid = "".join(map(chr, pid))
    cancel_a_call()
    r = records.wait_for(lambda r: LOST in r.getMessage())
    assert r is not None
    assert r.levelno == logging.WARNING
    assert ("linked processes sent exit signal killed: %s state_srv_1 (state_srv:init/1)"
            % pid) in r.getMessage()
    assert erlang.eval("whereis(state_srv_1)") is None


def test_no_warning_when_the_handler_owned_nothing(records):
    erlang.eval("ok")
    cancel_a_call()
    assert lost_warnings(records, "marker after an empty cancel") == []


def test_a_table_of_another_thread_is_not_touched(records):
    done = []

    def make():
        done.append(erlang.eval("ets:new(state_other_thread, [named_table, public]), "
                                "ets:insert(state_other_thread, {k, 1})"))

    t = threading.Thread(target=make)
    t.start()
    t.join()
    assert done == [True]
    try:
        cancel_a_call()
        assert lost_warnings(records, "marker after another thread's cancel") == []
        assert erlang.eval("ets:lookup(state_other_thread, k)") == [("k", 1)]
    finally:
        erlang.eval("ets:delete(state_other_thread)")


def test_a_table_made_through_keep_survives_the_cancel(records):
    erlang.eval("py:keep(fun() -> ets:new(state_kept, [named_table, public]) end), "
                "ets:insert(state_kept, {k, 42})")
    try:
        cancel_a_call()
        assert lost_warnings(records, "marker after a kept table") == []
        assert erlang.eval("ets:lookup(state_kept, k)") == [("k", 42)]
        assert erlang.eval("ets:info(state_kept, owner) =:= whereis(py_keeper)") is True
    finally:
        erlang.eval("ets:delete(state_kept)")


def test_a_server_started_through_keep_survives_the_cancel_and_its_crash_spares_the_keeper(
        records, state_srv):
    keeper = erlang.eval("whereis(py_keeper)")
    erlang.eval("{ok, _} = py:keep(fun() -> state_srv:start_link(state_srv_kept) end), ok")
    assert erlang.eval("gen_server:call(state_srv_kept, bump)") == 1
    cancel_a_call()
    assert lost_warnings(records, "marker after a kept server") == []
    assert erlang.eval("gen_server:call(state_srv_kept, bump)") == 2
    with pytest.raises(erlang.Error):
        erlang.eval("gen_server:call(state_srv_kept, crash)")
    assert records.wait_for(lambda r: "state_srv_crashed" in r.getMessage()) is not None
    assert erlang.eval("whereis(py_keeper)") == keeper
    assert erlang.eval("py:keep(fun() -> still_here end)") == "still_here"


def test_a_table_with_an_heir_passes_to_it_without_a_warning(records):
    erlang.eval("ets:new(state_heir, [named_table, public, {heir, whereis(py_keeper), none}]), "
                "ets:insert(state_heir, {k, 7})")
    try:
        cancel_a_call()
        assert lost_warnings(records, "marker after a table with an heir") == []
        assert erlang.eval("ets:lookup(state_heir, k)") == [("k", 7)]
    finally:
        erlang.eval("ets:delete(state_heir)")


def test_keep_returns_the_value_and_raises_what_fun_raised():
    assert erlang.eval("py:keep(fun() -> {kept, self() =:= whereis(py_keeper)} end)") \
        == ("kept", True)
    with pytest.raises(erlang.Error) as info:
        erlang.eval("py:keep(fun() -> erlang:error(kept_oops) end)")
    assert info.value.kind == "error"
    assert info.value.reason == "kept_oops"
    with pytest.raises(erlang.Error) as info:
        erlang.eval("py:keep(fun() -> throw(kept_ball) end)")
    assert (info.value.kind, info.value.reason) == ("throw", "kept_ball")
    assert erlang.eval("py:keep(fun() -> 1 + 1 end)") == 2
