"""Every public name of `erlang`, used the way users use it.

tests/test_typing.py type-checks this file with `mypy --strict` against the
package's stubs (erlang/__init__.pyi), and also runs it, so that every use
the stubs accept here is one the runtime accepts too.
"""
import os
import pathlib
import shutil
import tempfile
from typing import Any, Optional

import erlang
from erlang import (Atom, BitString, CallTimeout, Error, Fun, HelperExited, ImproperList,
                    NodeDown, Pid, Port, Reference, UndefinedFunction)


def start_and_stop() -> None:
    erl = shutil.which("erl")
    assert erl is not None
    erlang.stop()
    # Paths as str, bytes or path objects; Literal options; numbers as int or float.
    erlang.start(erl=pathlib.Path(erl), args=["+A", b"1"], code_path=[pathlib.Path("/tmp")],
                 timeout=30, call_timeout=None, binaries="bytes", env={"A": "1"},
                 after_fork="error", on_start=lambda: None)
    assert erlang.is_running()
    assert erlang.eval("<<\"b\">>.") == b"b"
    stopped: bool = erlang.stop(timeout=2)
    assert stopped
    erlang.start(erl=os.fsencode(erl), binaries="str", after_fork="restart", timeout=10.5,
                 call_timeout=60)


def calls() -> None:
    erlang.eval("py:register_function(echo, fun([X]) -> X end).")
    assert erlang.call("echo", 1) == 1
    assert erlang.call(Atom("echo"), "x", timeout=5) == "x"
    assert erlang.call(b"echo", [1], timeout=2.5) == [1]
    assert erlang.apply("lists", "reverse", [[1, 2]]) == [2, 1]
    assert erlang.apply(Atom("erlang"), "abs", (-1,), timeout=None) == 1
    assert erlang.apply("erlang", "node") == Atom("nonode@nohost")
    assert erlang.eval("1 + 1.") == 2
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "typing_check.erl"
        path.write_text("-module(typing_check).\n-export([f/0]).\nf() -> 1.\n")
        name: Atom = erlang.load_module(path)
        assert name == "typing_check"
        assert erlang.load_module(str(path), timeout=30) == name
    assert erlang.load_module("-module(typing_check2). -export([g/0]). g() -> 2.") == "typing_check2"


def errors() -> None:
    try:
        erlang.call("no_such_function_registered")
    except UndefinedFunction as e:
        assert isinstance(e, Error)
    try:
        erlang.eval("erlang:error(oops).")
    except Error as e:
        kind: str = e.kind
        reason: Any = e.reason
        assert kind == "error" and reason == "oops"
        assert len(e.stacktrace) >= 0
    try:
        erlang.eval("timer:sleep(1000).", timeout=0.01)
    except CallTimeout as e:
        assert isinstance(e, TimeoutError)
    exited = HelperExited("gone", status=1, stderr="why")
    status: Optional[int] = exited.status
    assert status == 1 and exited.stderr == "why"
    assert isinstance(exited, ConnectionError)
    assert str(Error("exit", "normal")).startswith("Erlang exit")


def codec() -> None:
    data: bytes = erlang.term_to_binary((1, "a", [Atom("b")]))
    assert erlang.binary_to_term(data) == (1, "a", ["b"])
    assert erlang.binary_to_term(bytearray(data), binaries="bytes") == (1, b"a", ["b"])
    assert erlang.binary_to_term(memoryview(data), "str") == (1, "a", ["b"])
    il = ImproperList([1, 2], 3)
    assert il.items == [1, 2] and il.tail == 3
    bs = BitString(b"\xa0", 3)
    bits: int = bs.bits
    assert bits == 3 and bs.data == b"\xa0"
    pid = erlang.eval("self().")
    assert isinstance(pid, Pid)
    node: Atom = pid.node
    raw: bytes = pid.raw
    assert Pid(raw) == pid and node == "nonode@nohost"
    assert isinstance(erlang.eval("make_ref()."), Reference)
    assert isinstance(erlang.eval("hd(erlang:ports())."), Port)
    assert isinstance(erlang.eval("fun() -> ok end."), Fun)
    assert Fun(erlang.term_to_binary(erlang.eval("fun erlang:abs/1."))[1:]).raw[0] == 113


def many_in_flight() -> None:
    import asyncio
    from concurrent.futures import Future

    import erlang.asyncio

    erlang.eval("py:register_function(echo, fun([X]) -> X end).")
    fut: Future[Any] = erlang.call_async("echo", 1, timeout=5)
    assert fut.result(10) == 1
    assert erlang.apply_async("lists", "reverse", [[1, 2]]).result(10) == [2, 1]
    assert list(erlang.map("echo", range(3), in_flight=2, timeout=30)) == [0, 1, 2]

    async def main() -> None:
        assert await erlang.asyncio.call("echo", 2, timeout=5) == 2
        assert await erlang.asyncio.apply("erlang", "abs", [-3]) == 3
        assert await erlang.asyncio.eval("1 + 2.") == 3

    asyncio.run(main())


def info() -> None:
    i = erlang.info()
    assert i is not None
    release: str = i["otp_release"]
    started: float = i["started_at"]
    pid: int = i["os_pid"]
    assert release and started > 0 and pid > 0
    assert i["erl"] and i["erts_version"] and i["node"] and i["version"] == erlang.__version__
    assert i["protocol"] >= 1 and i["start_seconds"] > 0
    erlang.stop()
    assert erlang.info() is None


def both_directions() -> None:
    @erlang.export
    def area(w: int, h: int) -> int:
        return w * h

    def neg(x: int) -> int:
        return -x

    assert erlang.export(neg, name="neg") is neg
    assert erlang.export(name="neg2")(neg) is neg
    assert "area" in erlang.exported()
    assert erlang.eval('py:call_python(<<"area">>, [2, 3]).') == 6
    assert erlang.unexport("neg") and erlang.unexport("neg2")
    with erlang.Mailbox(name="check_api_box") as mb:
        pid: erlang.Pid = mb.pid
        assert erlang.whereis("check_api_box") == pid
        erlang.send(pid, 1)
        erlang.send("check_api_box", 2)
        assert mb.receive(timeout=5) == 1
        assert mb.receive(timeout=5, match=lambda m: m == 2) == 2
        ref: erlang.Reference = mb.monitor(pid)
        mb.demonitor(ref)
    try:
        mb.receive(timeout=0)
    except erlang.MailboxClosed as e:
        assert e.reason == "closed"


def cluster() -> None:
    import asyncio
    from concurrent.futures import Future

    import erlang.asyncio

    erlang.stop()
    erlang.start(node="check_api_%d" % os.getpid(), cookie="check-api-cookie",
                 dist="loopback", hidden=False, net_ticktime=None, tls=None)
    me: Atom = erlang.node()
    connected: list[Atom] = erlang.nodes()
    assert connected == []
    assert erlang.connect(me) and erlang.connect(Atom(me))
    assert erlang.rpc(me, "erlang", "node") == me
    assert erlang.rpc(Atom(me), "lists", "sum", [[1, 2]], timeout=10) == 3
    fut: Future[Any] = erlang.rpc_async(me, "erlang", "abs", (-1,), timeout=None)
    assert fut.result(10) == 1
    nobody = "nobody_%d@%s" % (os.getpid(), me.split("@")[1])
    assert erlang.disconnect(nobody) is False
    try:
        erlang.rpc(nobody, "erlang", "node", timeout=10)
    except NodeDown as e:
        down: str = e.node
        assert down == nobody and isinstance(e, ConnectionError)
    with erlang.Mailbox() as mb:
        mb.monitor_node(nobody)
        assert mb.receive(timeout=10) == ("nodedown", nobody)
        mb.demonitor_node(Atom(nobody))

    async def main() -> None:
        assert await erlang.asyncio.rpc(me, "erlang", "node", timeout=5) == me

    asyncio.run(main())
    erlang.stop()


if __name__ == "__main__":
    start_and_stop()
    both_directions()
    calls()
    errors()
    codec()
    many_in_flight()
    info()
    cluster()
    print("check_api: ok")
