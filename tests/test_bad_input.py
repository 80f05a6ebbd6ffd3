"""Bad input on both sides of the channel.

Python values that cannot be encoded raise before anything is written;
a reply with a malformed payload gives the caller that got it an exception
(never a crash, never another call's reply); a frame whose header the
helper cannot have sent (unknown kind or worker, shorter than a header), and
raw bytes that break the framing itself, make the Python side kill the
helper, so callers get HelperExited instead of waiting forever; calling
unknown names creates no atom in the helper.

Malformed frames are made by the real helper: a function or eval writes
crafted frames into the channel with ``port_command(py_port, ...)``.  A
call finds its own worker and sequence number under ``'$py_call'`` in its
handler's process dictionary.  Raw bytes that ignore the framing are written
through a second port opened on fd 1 without packet framing.
"""
import json
import threading
import time
import uuid

import pytest

import erlang
from conftest import REGISTER_LITERAL, helper_pid, result_lines, run_python

# Functions of this file.  ``reply_frames`` writes Frames into the channel,
# waits Ms, then returns Result (whose reply comes after them).  A frame is
# {Kind, WorkerDelta, SeqDelta, Payload} relative to the calling worker and
# Seq, {own_seq, Kind, Seq, Payload} with an absolute Seq, or {raw, Body}
# for a whole frame body.
BAD_INPUT_SRC = r"""
Frame = fun({raw, Body}, _, _) -> Body;
           ({own_seq, Kind, Seq, Payload}, W, _) -> [<<Kind, W:32, Seq:32>>, Payload];
           ({Kind, DW, DS, Payload}, W, S) ->
               [<<Kind, (W + DW):32, ((S + DS) band 16#ffffffff):32>>, Payload]
        end,
py:register_function(reply_frames, fun([Frames, Ms, Result]) ->
    {W, S} = get('$py_call'),
    [port_command(py_port, Frame(F, W, S)) || F <- Frames],
    timer:sleep(Ms),
    Result end),
ok.
"""


@pytest.fixture(autouse=True)
def bad_input_registered(helper):
    assert erlang.eval(BAD_INPUT_SRC) == "ok"


def bytes_read_by_helper():
    """Bytes the helper has read from its ports (the channel), as counted
    when this eval's own request had been read."""
    return erlang.eval("element(2, element(1, erlang:statistics(io))).")


class NothingWritten:
    """Checks that the block wrote nothing to the helper: the helper's input
    count grows by exactly one probe eval, as between two probes."""

    def __enter__(self):
        a = bytes_read_by_helper()
        self.before = bytes_read_by_helper()
        self.step = self.before - a
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            after = bytes_read_by_helper()
            assert after - self.before == self.step, \
                "%d bytes reached the helper" % (after - self.before - self.step)
        return False


def deep(make, depth=100_000):
    x = make(None)
    for _ in range(depth):
        x = make(x)
    return x


# ------------------------------------------------------ 7. unencodable values

# The largest integer magnitude of the 64-bit emulator: (2^19 - 1) words.
ERLANG_INT_MAX_BITS = 64 * ((1 << 19) - 1)

UNENCODABLE = [
    ("set", set([1]), TypeError),
    ("object", object(), TypeError),
    ("nan", float("nan"), ValueError),
    ("inf", float("inf"), ValueError),
    ("-inf", float("-inf"), ValueError),
    ("lone-surrogate", "ab\ud800cd", UnicodeEncodeError),
    ("atom-256", erlang.Atom("a" * 256), ValueError),
    ("atom-surrogate", erlang.Atom("\udc80"), UnicodeEncodeError),
    ("dict-set-key", {frozenset([1]): 1}, TypeError),
    ("dict-nan-key", {float("nan"): 1}, ValueError),
    ("dict-surrogate-key", {"\udfff": 1}, UnicodeEncodeError),
    ("improper-tail", erlang.ImproperList([1], {2}), TypeError),
    ("deep-list", deep(lambda x: [x]), RecursionError),
    ("deep-tuple", deep(lambda x: (x,)), RecursionError),
    ("deep-dict", deep(lambda x: {"k": x}), RecursionError),
    ("dict-keys-one-term", {b"a": 1, "a": 2}, ValueError),
    ("dict-none-and-undefined", {None: 1, erlang.Atom("undefined"): 2}, ValueError),
    # past the emulator's integer limit (binary_to_term would say badarg)
    ("int-too-large", 1 << ERLANG_INT_MAX_BITS, ValueError),
    ("negative-int-too-large", -(1 << ERLANG_INT_MAX_BITS), ValueError),
]


@pytest.mark.parametrize("value, exc", [u[1:] for u in UNENCODABLE],
                         ids=[u[0] for u in UNENCODABLE])
def test_unencodable_value_raises_writes_nothing_and_the_helper_keeps_serving(value, exc):
    pid = helper_pid()
    with NothingWritten():
        for attempt in (
            lambda: erlang.call("echo", value),
            lambda: erlang.call("echo_args", 1, "two", [3, {"four": (5, value)}]),
            lambda: erlang.apply("lists", "reverse", [[1, 2, value]]),
            lambda: erlang.term_to_binary(value),
        ):
            with pytest.raises(exc):
                attempt()
    assert erlang.call("echo", ["after", 1]) == ["after", 1]
    assert helper_pid() == pid


def test_the_largest_integers_erlang_has_round_trip_and_one_bit_more_is_refused():
    big = (1 << ERLANG_INT_MAX_BITS) - 1
    for v in (big, -big):
        assert erlang.call("echo", v) == v
    with pytest.raises(ValueError) as ei:
        erlang.term_to_binary(big + 1)
    assert "too large for Erlang" in str(ei.value)
    assert str(ERLANG_INT_MAX_BITS) in str(ei.value)


def test_a_zero_timeout_raises_call_timeout_and_sends_nothing():
    erlang.eval("py:register_function(count_runs, fun([]) ->"
                " N = persistent_term:get(py_test_runs, 0) + 1,"
                " persistent_term:put(py_test_runs, N), N end).")
    before = erlang.call("count_runs")
    with NothingWritten():
        for _ in range(50):
            with pytest.raises(erlang.CallTimeout) as ei:
                erlang.call("count_runs", timeout=0)
    assert "not sent" in str(ei.value) and "timeout=0" in str(ei.value)
    assert erlang.call("count_runs") == before + 1


@pytest.mark.parametrize("name, exc", [
    ("no\ud800name", UnicodeEncodeError),
    (42, TypeError),
    (None, TypeError),
], ids=["surrogate", "int", "none"])
def test_bad_function_name_raises_and_writes_nothing(name, exc):
    with NothingWritten():
        with pytest.raises(exc):
            erlang.call(name, 1)
    assert erlang.call("double_it", 2) == 4


@pytest.mark.parametrize("call", [
    lambda: erlang.eval("\ud800."),
    lambda: erlang.eval(b"1."),
    lambda: erlang.apply("a" * 256, "f", []),
    lambda: erlang.apply("lists", "\udc00", []),
    lambda: erlang.apply("lists", "reverse", {1, 2}),
    lambda: erlang.call("echo", 1, timeout="soon"),
    lambda: erlang.call("echo", 1, no_such_keyword=1),
], ids=["eval-surrogate", "eval-bytes", "apply-long-module", "apply-surrogate-function",
        "apply-set-args", "bad-timeout", "bad-keyword"])
def test_bad_arguments_of_every_call_kind_raise_and_write_nothing(call):
    with NothingWritten():
        with pytest.raises((TypeError, ValueError)):
            call()
    assert erlang.call("double_it", 3) == 6


def test_unencodable_values_from_many_threads_never_disturb_other_calls():
    bad_values = [u[1] for u in UNENCODABLE if not u[0].startswith("deep")]
    wrong = []
    barrier = threading.Barrier(8)

    def body(i):
        barrier.wait()
        for k in range(200):
            if k % 3 == 0:
                try:
                    erlang.call("echo", [i, k, bad_values[(i + k) % len(bad_values)]])
                    wrong.append(("encoded", i, k))
                except (TypeError, ValueError):
                    pass
            elif erlang.call("echo", [i, k]) != [i, k]:
                wrong.append(("mismatch", i, k))

    ts = [threading.Thread(target=body, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)
    assert wrong == []


# ------------------------------------------- 8. malformed frames from the helper

# (id, frames written before the real reply, exception the caller gets).
# The header is right: only the payload is bad, so the channel stays.
# Frames: (Kind, WorkerDelta, SeqDelta, Payload) for the calling worker/seq.
MALFORMED_REPLIES = [
    ("error-bad-etf", [(17, 0, 0, b"\x01\x02\x03")], ValueError),
    ("ok-unknown-tag", [(16, 0, 0, b"\x83\xff")], ValueError),
    ("ok-trailing-bytes", [(16, 0, 0, b"\x83\x6a\x01")], ValueError),
    ("ok-empty-payload", [(16, 0, 0, b"")], ValueError),
    ("ok-truncated", [(16, 0, 0, erlang.term_to_binary(("a", b"\xff" * 100))[:-3])], ValueError),
    ("ok-huge-list-length", [(16, 0, 0, b"\x83\x6c\xff\xff\xff\xff")], ValueError),
    ("ok-huge-binary-length", [(16, 0, 0, b"\x83\x6d\xff\xff\xff\xff")], ValueError),
    ("ok-zip-bomb-header", [(16, 0, 0, b"\x83\x50\xff\xff\xff\xff\x78\x9c\xcb\x02\x00\x00\x6b\x00\x6b")],
     ValueError),
    ("ok-atom-300", [(16, 0, 0, b"\x83\x76\x01\x2c" + b"a" * 300)], ValueError),
    ("ok-nan", [(16, 0, 0, b"\x83\x46\x7f\xf8\x00\x00\x00\x00\x00\x00")], ValueError),
    ("error-not-a-triple", [(17, 0, 0, erlang.term_to_binary(("only", "two")))], ValueError),
]


@pytest.mark.parametrize("frames, exc", [m[1:] for m in MALFORMED_REPLIES],
                         ids=[m[0] for m in MALFORMED_REPLIES])
def test_malformed_reply_gives_that_caller_an_exception_and_the_next_call_works(frames, exc):
    pid = helper_pid()
    t0 = time.monotonic()
    with pytest.raises(exc):
        erlang.call("reply_frames", list(frames), 100, "real reply", timeout=30)
    assert time.monotonic() - t0 < 5
    # The real reply that follows is stale for the next call: dropped.
    assert erlang.call("sleep_echo", 200, ("next", 1)) == ("next", 1)
    assert [erlang.call("echo", i) for i in range(5)] == list(range(5))
    assert helper_pid() == pid


def test_reply_nested_too_deep_gives_recursion_error_and_the_helper_keeps_serving():
    pid = helper_pid()
    with pytest.raises(RecursionError):
        erlang.eval("lists:foldl(fun(_, A) -> [A] end, [], lists:seq(1, 100000)).")
    with pytest.raises(RecursionError):
        erlang.eval("lists:foldl(fun(_, A) -> {A} end, {}, lists:seq(1, 100000)).")
    assert erlang.call("double_it", 5) == 10
    assert helper_pid() == pid


def raw(body):
    """A whole frame body, written as it is."""
    return (erlang.Atom("raw"), body)


def own_seq(kind, seq, payload):
    """A frame for the calling worker with an absolute Seq."""
    return (erlang.Atom("own_seq"), kind, seq, payload)


DROPPED_FRAMES = [
    ("stale-seq", [(16, 0, -1, erlang.term_to_binary("stale")),
                   (17, 0, -1, erlang.term_to_binary(("error", "stale", [])))]),
    ("future-seq", [(16, 0, 1, erlang.term_to_binary("future")), (16, 0, 1000, b"\x83\x6a")]),
    ("seq-0", [own_seq(16, 0, erlang.term_to_binary("seq zero"))]),
    ("hello-again", [raw(b"\x12" + b"\x00" * 8 + erlang.term_to_binary({}))]),
    ("bad-output-own", [(19, 0, 0, b"\x01\x02"), (19, 0, 0, erlang.term_to_binary(42))]),
    ("bad-output-worker-0", [raw(b"\x13" + b"\x00" * 8 + b"\x01\x02"),
                             raw(b"\x13" + b"\x00" * 8 + erlang.term_to_binary(("x", 1)))]),
]


# A malformed OUTPUT frame of a call is reported through sys.unraisablehook.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("frames", [f[1] for f in DROPPED_FRAMES],
                         ids=[f[0] for f in DROPPED_FRAMES])
def test_well_formed_frames_for_no_waiting_call_are_dropped(frames):
    pid = helper_pid()
    assert erlang.call("reply_frames", frames, 0, ("own", 1), timeout=30) == ("own", 1)
    assert erlang.call("reply_frames", frames, 50, ("own", 2), timeout=30) == ("own", 2)
    assert [erlang.call("echo", i) for i in range(5)] == list(range(5))
    assert helper_pid() == pid


def test_reply_for_an_idle_worker_of_another_thread_is_dropped():
    ws = []
    t = threading.Thread(target=lambda: ws.append(erlang.eval("get('$py_call').")))
    t.start()
    t.join()
    ((w, s),) = ws                    # that thread is gone: its worker is idle
    stray = raw(bytes([16]) + w.to_bytes(4, "big") + (s + 1).to_bytes(4, "big")
                + erlang.term_to_binary("for the idle worker"))
    pid = helper_pid()
    assert erlang.call("reply_frames", [stray], 0, "own") == "own"
    # The next thread that takes that worker gets its own reply, not the stray.
    got = []
    t = threading.Thread(target=lambda: got.append(erlang.call("echo", "mine")))
    t.start()
    t.join()
    assert got == ["mine"]
    assert helper_pid() == pid


# Headers no frame of the helper can have: the stream is out of step or the
# helper is broken.  The Python side kills the helper; callers get
# HelperExited and the next call starts a fresh helper.
PROTOCOL_ERRORS = [
    ("unknown-worker", [(16, 1 << 20, 0, b"\x83\x6a")]),
    # (16#FFFFFFFF is the async channel: see test_async_channel_stray_reply...)
    ("worker-max-minus-1", [raw(b"\x10\xff\xff\xff\xfe\x00\x00\x00\x01\x83\x6a")]),
    ("async-channel-hello", [raw(b"\x12\xff\xff\xff\xff\x00\x00\x00\x01\x83\x6a")]),
    ("worker-0-ok", [raw(b"\x10" + b"\x00" * 8 + b"\x83\x6a")]),
    ("worker-0-kind-0", [raw(b"\x00" * 9 + b"\x83\x6a")]),
    ("worker-0-kind-255", [raw(b"\xff" + b"\x00" * 8)]),
    ("empty-frame", [raw(b"")]),
    ("shorter-than-header", [raw(b"\x10\x00\x00")]),
    ("header-only-8-bytes", [raw(b"\x10" + b"\x00" * 7)]),
    ("unknown-kind-own-worker", [(99, 0, 0, b"\x83\x6a")]),
    ("reply-kind-only-python-sends-own-worker", [(33, 0, 0, b"\x83\x6a")]),
    ("cancel-kind-own-worker", [(4, 0, 0, b"\x83\x6a")]),
]


@pytest.mark.parametrize("frames", [f[1] for f in PROTOCOL_ERRORS],
                         ids=[f[0] for f in PROTOCOL_ERRORS])
def test_frame_with_a_header_that_is_not_ours_gives_helper_exited_then_a_fresh_helper(frames):
    old = helper_pid()
    others = [None] * 3

    def other(i):
        try:
            others[i] = erlang.call("sleep_echo", 3000, i, timeout=30)
        except BaseException as e:
            others[i] = type(e).__name__

    ts = [threading.Thread(target=other, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    with pytest.raises(erlang.HelperExited) as ei:
        erlang.call("reply_frames", frames, 2000, "real reply", timeout=30)
    took = time.monotonic() - t0
    for t in ts:
        t.join(30)
    assert took < 2.0
    assert "protocol error" in str(ei.value)
    assert others == ["HelperExited"] * 3
    assert erlang.call("double_it", 21) == 42
    assert helper_pid() not in (None, old)


# ------------------------------------------------ 8. frames that break framing

BREAK_FRAMING = """
import json, sys, threading, time
import erlang
REGISTER = %s
erlang.start(on_start=lambda: erlang.eval(REGISTER))
old = erlang._erlang._helper_pid()
others = [None] * 4

def other(i):
    try:
        others[i] = repr(erlang.call("sleep_echo", 3000, i, timeout=8))
    except BaseException as e:
        others[i] = type(e).__name__

ts = [threading.Thread(target=other, args=(i,)) for i in range(4)]
for t in ts:
    t.start()
time.sleep(0.3)
t0 = time.monotonic()
try:
    # A hang shows up as CallTimeout after 8 s.
    r = erlang.eval(sys.argv[1], timeout=8)
    first, msg = "returned", repr(r)
except BaseException as e:
    first, msg = type(e).__name__, str(e)
took = time.monotonic() - t0
for t in ts:
    t.join(30)
try:
    nxt = erlang.call("double_it", 21, timeout=20)
except BaseException as e:
    nxt = type(e).__name__
print("RESULT " + json.dumps({"first": first, "msg": msg, "took": took, "others": others,
                              "next": nxt, "old": old, "new": erlang._erlang._helper_pid()}))
""" % REGISTER_LITERAL

RAW_PORT = "P = open_port({fd, 0, 1}, [binary, out]), port_command(P, %s), " \
           "receive after 5000 -> not_detected end."


@pytest.mark.parametrize("source", [
    RAW_PORT % "<<255, 255, 255, 255>>",
    RAW_PORT % '<<"hello\\n">>',
    "erlang:display(hello).",
    RAW_PORT % "<<0, 0, 0, 100>>",
], ids=["length-over-2GiB", "text-line", "erlang-display", "dangling-length"])
def test_bytes_that_break_the_framing_give_helper_exited_never_a_hang(source):
    proc = run_python(BREAK_FRAMING, source, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    res = json.loads(line)
    print("framing broken by %s: %s after %.3f s (%s)"
          % (source, res["first"], res["took"], res["msg"][:100]))
    assert res["first"] == "HelperExited", res
    assert res["took"] < 5, res
    assert "protocol error" in res["msg"] or "exited" in res["msg"] or "killed" in res["msg"]
    assert res["others"] == ["HelperExited"] * 4, res
    assert res["next"] == 42
    assert res["new"] not in (None, res["old"])


# ------------------------------------------------- 9. unknown names, no atoms

def atom_count():
    return erlang.eval("erlang:system_info(atom_count).")


def unknown_names(n):
    u = uuid.uuid4().hex
    names = ["fault_unknown_%s_%d" % (u, i) for i in range(n)]
    names += [("fault_bytes_%s_%d" % (u, i)).encode() for i in range(n // 10)]
    names += [erlang.Atom("fault_atom_%s_%d" % (u, i)) for i in range(n // 10)]
    names += ["fault_ünïcödé_名前_%s_%d" % (u, i) for i in range(n // 20)]
    names += ["fault_long_%s_%d_" % (u, i) + "x" * 10_000 for i in range(5)]
    names += [erlang.Atom("fault_long_atom_%s_" % u + "y" * 300)]
    names += ["fault\x00nul_%s" % u, "fault with spaces %s" % u, "%s" % u, ""]
    return names


def test_calling_unknown_names_never_creates_atoms():
    for name in unknown_names(20):          # warm-up: code the path loads once
        with pytest.raises(erlang.UndefinedFunction):
            erlang.call(name)
    names = unknown_names(1000)
    before = atom_count()
    for name in names:
        with pytest.raises(erlang.UndefinedFunction):
            erlang.call(name, 1, "two")
    after = atom_count()
    print("atom_count before %d, after %d calls of unknown names: %d" % (before, len(names), after))
    assert after - before <= 2
    sample = names[0]
    r = erlang.eval('catch list_to_existing_atom("%s").' % sample)
    assert isinstance(r, tuple) and r[0] == "EXIT" and r[1][0] == "badarg"


def test_calling_unknown_names_from_many_threads_never_creates_atoms():
    before = atom_count()
    wrong = []

    def body(i):
        for name in unknown_names(200):
            try:
                erlang.call(name, i)
                wrong.append(name)
            except erlang.UndefinedFunction:
                pass

    ts = [threading.Thread(target=body, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts)
    assert wrong == []
    assert atom_count() - before <= 2


def test_async_channel_stray_replies_are_dropped_and_never_reach_a_pending_call():
    # Replies on the async channel (worker 16#FFFFFFFF) for Seqs that no call
    # waits for, and one for a call still pending: none reaches a future.
    pid = helper_pid()
    pending = erlang.call_async("sleep_echo", 400, "the real one")
    strays = [raw(b"\x10\xff\xff\xff\xff" + seq.to_bytes(4, "big")
                  + erlang.term_to_binary("stray %d" % seq))
              for seq in (1, 2, 0xFFFFFFFF)]
    assert erlang.call("reply_frames", strays, 0, "own") == "own"
    assert pending.result(10) == "the real one"
    assert list(erlang.map("echo", range(20))) == list(range(20))
    assert helper_pid() == pid
