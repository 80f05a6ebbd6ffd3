"""Messages between Erlang processes and Python: Mailbox, send, whereis
(real helper)."""
import _thread
import asyncio
import os
import threading
import time

import pytest

import erlang
from erlang import Atom, Pid

SENDERS = r"""
py:register_function(send_n, fun([Dest, N]) ->
    [Dest ! {self(), I} || I <- lists:seq(1, N)], ok end),
py:register_function(spawn_senders, fun([Dests, K, N]) ->
    [spawn(fun() -> [[D ! {S, I} || D <- Dests] || I <- lists:seq(1, N)] end)
     || S <- lists:seq(1, K)], ok end),
py:register_function(alive, fun([P]) -> is_process_alive(P) end),
py:register_function(kill, fun([P]) -> exit(P, kill), ok end),
py:register_function(mailbox_state, fun([P]) ->
    {message_queue_len, L} = process_info(P, message_queue_len), L end),
ok.
"""


@pytest.fixture(autouse=True)
def senders():
    assert erlang.eval(SENDERS) == "ok"


def test_send_and_receive_both_ways():
    with erlang.Mailbox() as mb:
        assert isinstance(mb.pid, Pid)
        erlang.send(mb.pid, ("hello", 1, [2.5]))
        assert mb.receive(timeout=5) == ("hello", 1, [2.5])
        assert erlang.call("send_n", mb.pid, 3) == Atom("ok")
        got = [mb.receive(timeout=5) for _ in range(3)]
        assert [i for _, i in got] == [1, 2, 3]
        assert all(isinstance(p, Pid) for p, _ in got)


def test_receive_timeout_and_bad_arguments():
    with erlang.Mailbox() as mb:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            mb.receive(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2
        with pytest.raises(TimeoutError):
            mb.receive(timeout=0)
        with pytest.raises(TypeError):
            mb.receive(timeout="1")
        with pytest.raises(ValueError):
            mb.receive(timeout=-1)
        with pytest.raises(TypeError):
            mb.receive(match=3)


def test_named_mailbox_whereis_and_name_taken():
    name = "pybox_%d" % os.getpid()
    with erlang.Mailbox(name=name) as mb:
        assert erlang.whereis(name) == mb.pid
        erlang.eval("%s ! {hi, 1}." % name)
        assert mb.receive(timeout=5) == (Atom("hi"), 1)
        erlang.send(name, "by name")
        assert mb.receive(timeout=5) == "by name"
        with pytest.raises(erlang.Error) as ei:
            erlang.Mailbox(name=name)
        assert ei.value.reason == Atom("badarg")
    assert erlang.whereis(name) is None


def test_send_to_missing_name_and_dead_pid():
    name = "nobody_here_%d_%d" % (os.getpid(), time.monotonic_ns())
    with pytest.raises(erlang.Error) as ei:
        erlang.send(name, 1)
    assert ei.value.reason == Atom("badarg")
    assert erlang.whereis(name) is None
    # Neither created the atom.
    with pytest.raises(erlang.Error):
        erlang.eval('binary_to_existing_atom(<<"%s">>, utf8).' % name)
    dead = erlang.eval("P = spawn(fun() -> ok end), timer:sleep(50), P.")
    erlang.send(dead, "dropped")       # silently, as Erlang's !
    with pytest.raises(TypeError):
        erlang.send(3, "x")


def test_selective_receive_keeps_the_rest_in_order():
    with erlang.Mailbox() as mb:
        for m in [1, "a", 2, "b", 3]:
            erlang.send(mb.pid, m)
        assert mb.receive(timeout=5, match=lambda m: isinstance(m, str)) == "a"
        assert mb.receive(timeout=5, match=lambda m: m == "b") == "b"
        assert [mb.receive(timeout=5) for _ in range(3)] == [1, 2, 3]
        with pytest.raises(TimeoutError):
            mb.receive(timeout=0.1, match=lambda m: True)


def test_order_per_sender_and_exact_count_many_senders_many_mailboxes():
    boxes = [erlang.Mailbox() for _ in range(4)]
    try:
        k, n = 16, 2000
        erlang.call("spawn_senders", [b.pid for b in boxes], k, n)
        for b in boxes:
            last = {}
            for _ in range(k * n):
                s, i = b.receive(timeout=30)
                assert i == last.get(s, 0) + 1
                last[s] = i
            assert len(last) == k and all(v == n for v in last.values())
            with pytest.raises(TimeoutError):
                b.receive(timeout=0.05)
    finally:
        for b in boxes:
            b.close()


def test_a_slow_consumer_is_held_back_by_the_window():
    with erlang.Mailbox() as mb:
        n = 20000
        erlang.call("send_n", mb.pid, n)
        time.sleep(0.5)
        # What Python may hold is one window; the rest waits in Erlang.
        with mb._lock:
            mb._fill()
            held = len(mb._items)
        assert held <= erlang._mailbox.WINDOW_MSGS
        got = [mb.receive(timeout=30)[1] for _ in range(n)]
        assert got == list(range(1, n + 1))


def test_close_with_messages_queued():
    mb = erlang.Mailbox()
    pid = mb.pid
    for i in range(10):
        erlang.send(pid, i)
    time.sleep(0.1)
    mb.close()
    mb.close()                       # again: nothing
    assert erlang.call("alive", pid) is False
    with pytest.raises(erlang.MailboxClosed):
        mb.receive(timeout=1)
    assert erlang.call("double_it", 2) == 4


def test_a_mailbox_dropped_without_close_while_messages_come():
    import gc
    mb = erlang.Mailbox()
    pid = mb.pid
    erlang.eval("py:register_function(trickle, fun([P]) -> spawn(fun() -> "
                "[begin P ! I, timer:sleep(1) end || I <- lists:seq(1, 200)] end), ok end).")
    erlang.call("trickle", pid)
    time.sleep(0.05)
    del mb
    gc.collect()
    time.sleep(0.3)
    assert erlang.call("alive", pid) is False     # closed by its finalizer
    assert erlang.call("double_it", 21) == 42


def test_killed_from_erlang():
    mb = erlang.Mailbox()
    erlang.send(mb.pid, "before")
    erlang.call("kill", mb.pid)
    assert mb.receive(timeout=5) == "before"     # what came first is still there
    with pytest.raises(erlang.MailboxClosed) as ei:
        mb.receive(timeout=5)
    assert ei.value.reason == Atom("killed")
    with pytest.raises(erlang.MailboxClosed):
        mb.receive(timeout=0)
    mb.close()
    assert erlang.call("double_it", 3) == 6


def test_monitor_and_demonitor():
    with erlang.Mailbox() as mb:
        p = erlang.eval("spawn(fun() -> receive stop -> ok end end).")
        ref = mb.monitor(p)
        erlang.send(p, Atom("stop"))
        msg = mb.receive(timeout=5)
        assert msg[0] == "DOWN" and msg[1] == ref and msg[3] == p
        assert msg[4] == Atom("normal")
        q = erlang.eval("spawn(fun() -> receive stop -> ok end end).")
        ref2 = mb.monitor(q)
        mb.demonitor(ref2)
        erlang.send(q, Atom("stop"))
        with pytest.raises(TimeoutError):
            mb.receive(timeout=0.3)
        ref3 = mb.monitor("no_such_registered_name_xyz")
        msg = mb.receive(timeout=5)
        assert msg[0] == "DOWN" and msg[1] == ref3 and msg[4] == Atom("noproc")


def test_an_undecodable_message_raises_and_the_rest_stay():
    erlang.eval("py:register_function(deep_to, fun([P]) -> "
                "P ! lists:foldl(fun(_, A) -> [A] end, [], lists:seq(1, 200000)), ok end).")
    with erlang.Mailbox() as mb:
        erlang.send(mb.pid, "first")
        erlang.call("deep_to", mb.pid)      # nested deeper than the decoder goes
        erlang.send(mb.pid, "last")
        assert mb.receive(timeout=5) == "first"
        with pytest.raises(ValueError):
            mb.receive(timeout=5)
        assert mb.receive(timeout=5) == "last"


def test_huge_message():
    with erlang.Mailbox() as mb:
        erlang.eval("py:register_function(big_to, fun([P, N]) -> "
                    "P ! binary:copy(<<\"a\">>, N), ok end).")
        erlang.call("big_to", mb.pid, 64 << 20)
        msg = mb.receive(timeout=60)
        assert len(msg) == 64 << 20 and msg[:3] == "aaa"


def test_areceive_and_async_for():
    async def main():
        mb = erlang.Mailbox()
        erlang.call("send_n", mb.pid, 5)
        first = await mb.areceive(timeout=5)
        rest = []
        async def consume():
            async for m in mb:
                rest.append(m[1])
        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        with pytest.raises(TimeoutError):
            await mb.areceive(timeout=0.1, match=lambda m: False)
        erlang.call("kill", mb.pid)
        await asyncio.wait_for(task, 5)      # MailboxClosed ends the async for
        mb.close()
        return first[1], rest

    assert asyncio.run(main()) == (1, [2, 3, 4, 5])


def test_ctrl_c_interrupts_receive_in_the_main_thread():
    with erlang.Mailbox() as mb:
        threading.Timer(0.3, _thread.interrupt_main).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            mb.receive(timeout=10)
        assert time.monotonic() - t0 < 3
        erlang.send(mb.pid, 1)
        assert mb.receive(timeout=5) == 1


def test_helper_death_wakes_receivers_with_helper_exited():
    mb = erlang.Mailbox()
    box = {}

    def run():
        try:
            mb.receive(timeout=20)
        except BaseException as e:
            box["exc"] = e
            box["t"] = time.monotonic()

    ts = [threading.Thread(target=run) for _ in range(3)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    t_kill = time.monotonic()
    os.kill(erlang.info()["os_pid"], 9)
    for t in ts:
        t.join(10)
    assert isinstance(box.get("exc"), erlang.HelperExited), box
    assert box["t"] - t_kill < 1.5
    mb.close()
    assert erlang.call("double_it", 3) == 6


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.slow
def test_a_million_messages_16_senders_4_mailboxes_order_count_and_bounded_memory():
    boxes = [erlang.Mailbox() for _ in range(4)]
    try:
        k, n = 16, 15_625        # 16 senders x 15,625 x 4 mailboxes = 1,000,000 messages
        payload = "x" * 200
        erlang.eval("py:register_function(spawn_senders_p, fun([Dests, K, N, P]) ->"
                    " [spawn(fun() -> [[D ! {S, I, P} || D <- Dests] || I <- lists:seq(1, N)]"
                    " end) || S <- lists:seq(1, K)], ok end).")
        rss0 = _rss_kib()
        erlang.call("spawn_senders_p", [b.pid for b in boxes], k, n, payload)
        # The consumer sleeps: the senders' messages pile up in Erlang, not here.
        time.sleep(3)
        for b in boxes:
            with b._lock:
                b._fill()
                assert len(b._items) <= erlang._mailbox.WINDOW_MSGS
        grown = _rss_kib() - rss0
        # Four windows of ~250-byte messages are a few MiB; the 64,000,000
        # bytes of payload sent are elsewhere (in the helper).
        assert grown < 40 * 1024, grown
        total = 0
        for b in boxes:
            last = {}
            for _ in range(k * n):
                s, i, p = b.receive(timeout=60)
                assert i == last.get(s, 0) + 1 and p == payload
                last[s] = i
            assert len(last) == k and all(v == n for v in last.values())
            total += k * n
        assert total == 4 * k * n == 1_000_000
    finally:
        for b in boxes:
            b.close()
