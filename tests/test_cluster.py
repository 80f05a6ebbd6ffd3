"""The helper in a cluster: erlang.start(node=...), node(), nodes(),
connect(), disconnect(), rpc(), rpc_async(), erlang.asyncio.rpc() and
NodeDown, against real `erl` nodes on loopback started by the tests.

Every name carries this process's pid and a counter, so that test runs on
the same host never meet in epmd; every node started here is killed in
its fixture's teardown.
"""
import asyncio
import itertools
import logging
import os
import pickle
import secrets
import signal
import socket
import subprocess
import threading
import time

import pytest

import erlang
import erlang.asyncio
from conftest import register_functions, result_lines, run_python, start_default_helper

_seq = itertools.count(1)


def unique(prefix):
    return "%s_%d_%d" % (prefix, os.getpid(), next(_seq))


def start_node(sname, cookie):
    """A plain erl node on loopback (the cookie in its own argv is fine: it
    is the test's node, not the helper)."""
    return subprocess.Popen(
        ["erl", "-noshell", "-noinput", "-sname", sname, "-setcookie", cookie,
         "-kernel", "inet_dist_use_interface", "{127,0,0,1}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def kill(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def wait_connected(node, timeout=30.0):
    """Polls erlang.connect(node) until it is True (the node needs a moment
    to start and register with epmd)."""
    deadline = time.monotonic() + timeout
    while not erlang.connect(node):
        if time.monotonic() > deadline:
            pytest.fail("node %s did not answer within %g s" % (node, timeout))
        time.sleep(0.1)


def epmd_names():
    """The names epmd knows, as the helper's erl_epmd:names/0 gives them."""
    ok, names = erlang.apply("erl_epmd", "names", [])
    assert ok == "ok"
    return {n if isinstance(n, str) else "".join(map(chr, n)) for n, _port in names}


class Cluster:
    def __init__(self):
        self.cookie = secrets.token_hex(16)
        self.name = unique("py")
        self.procs = []
        self.host = socket.gethostname().split(".")[0]

    def spawn(self, prefix="w", cookie=None):
        """Starts a node and returns (its name as a str, its Popen)."""
        sname = unique(prefix)
        proc = start_node(sname, cookie or self.cookie)
        self.procs.append(proc)
        return "%s@%s" % (sname, self.host), proc

    def spawn_connected(self, prefix="w"):
        node, proc = self.spawn(prefix)
        wait_connected(node)
        return node, proc

    def kill_all(self):
        for p in self.procs:
            kill(p)
        self.procs.clear()


@pytest.fixture(scope="module")
def cluster():
    """The helper as node py_<pid>_<n> on loopback, and two worker nodes
    w1, w2 connected to it.  Afterwards the nodes are killed and the
    suite's default helper is back."""
    c = Cluster()
    erlang.stop()
    erlang.start(node=c.name, cookie=c.cookie, on_start=register_functions)
    try:
        c.w1, c.p1 = c.spawn("w1")
        c.w2, c.p2 = c.spawn("w2")
        wait_connected(c.w1)
        wait_connected(c.w2)
        yield c
    finally:
        c.kill_all()
        start_default_helper()


@pytest.fixture
def nodes_of_test(cluster):
    """Nodes a test starts (and may kill): gone after the test."""
    c = Cluster.__new__(Cluster)
    c.__dict__.update(cookie=cluster.cookie, name=cluster.name, procs=[], host=cluster.host)
    yield c
    c.kill_all()


# ------------------------------------------------------------------ options

@pytest.mark.parametrize("options, error", [
    ({"node": 5}, TypeError),
    ({"node": b"py"}, TypeError),
    ({"node": ""}, ValueError),
    ({"node": "bad name"}, ValueError),
    ({"node": "py@"}, ValueError),
    ({"node": "@host"}, ValueError),
    ({"node": "py@host@x"}, ValueError),
    ({"node": "py", "args": ["-sname", "other"]}, ValueError),
    ({"node": "py", "args": ["-setcookie", "c"]}, ValueError),
    ({"node": "py", "cookie": 5}, TypeError),
    ({"node": "py", "cookie": ""}, ValueError),
    ({"node": "py", "cookie": "has space"}, ValueError),
    ({"node": "py", "cookie": "x" * 256}, ValueError),
    ({"node": "py", "dist": "everywhere"}, ValueError),
    ({"node": "py", "hidden": 1}, TypeError),
    ({"node": "py", "net_ticktime": 0}, ValueError),
    ({"node": "py", "net_ticktime": 1.5}, TypeError),
    ({"node": "py", "net_ticktime": True}, TypeError),
])
def test_bad_distribution_options_are_refused_before_anything_starts(options, error):
    pid = erlang.info()["os_pid"]
    with pytest.raises(error):
        erlang.start(**options)
    # The running helper is untouched.
    assert erlang.info()["os_pid"] == pid and erlang.node() == "nonode@nohost"


def test_node_name_forms():
    from erlang._helper import node_name
    assert node_name("py") == ("py", "shortnames")
    assert node_name("py@vm") == ("py@vm", "shortnames")
    assert node_name("py@host.example.com") == ("py@host.example.com", "longnames")
    assert node_name("py-1_a@127.0.0.1") == ("py-1_a@127.0.0.1", "longnames")


def test_without_node_there_is_no_distribution():
    assert erlang.node() == erlang.Atom("nonode@nohost")
    assert isinstance(erlang.node(), erlang.Atom)
    assert erlang.nodes() == []
    assert erlang.info()["node"] == "nonode@nohost"
    assert erlang.connect("anyone@localhost") is False
    with pytest.raises(erlang.NodeDown):
        erlang.rpc("anyone@localhost", "erlang", "node")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """Local addresses (as 'a.b.c.d') of IPv4 sockets listening on port."""
    found = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, _remote, state = line.split()[1:4]
            ip, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                found.append(socket.inet_ntoa(bytes.fromhex(ip)[::-1]))
    return found


def test_a_plain_start_starts_no_epmd_and_a_node_start_starts_it_on_loopback():
    # An epmd port nobody uses: what the package starts there is its own.
    port = free_port()
    env = {"ERL_EPMD_PORT": str(port)}
    code = """
        import erlang, socket, sys
        port = int(sys.argv[1])
        erlang.start()
        print("RESULT plain", erlang.node(), erlang.eval("1 + 1."))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            print("RESULT epmd up")
        except OSError:
            print("RESULT epmd down")
        erlang.stop()
        erlang.start(node=sys.argv[2])
        print("RESULT node", erlang.node())
    """
    name = unique("py")
    try:
        proc = run_python(code, port, name, env=env)
        lines = result_lines(proc)
        assert lines[:2] == ["plain nonode@nohost 2", "epmd down"], proc.stderr
        assert lines[2].startswith("node %s@" % name), proc.stderr
        # The epmd it started is left running, as erl leaves it, and
        # listens on 127.0.0.1 only.
        assert listening(port) == ["127.0.0.1"]
    finally:
        subprocess.run(["epmd", "-kill"], env=dict(os.environ, **env),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)


def test_a_name_epmd_already_has_fails_the_start_clearly(cluster):
    code = """
        import erlang, sys
        try:
            erlang.start(node=sys.argv[1])
        except erlang.HelperExited as e:
            print("RESULT", type(e).__name__, e)
        print("RESULT running", erlang.is_running())
    """
    proc = run_python(code, cluster.w1.split("@")[0])
    lines = result_lines(proc)
    assert lines[0].startswith("HelperExited cannot start distribution as"), proc.stderr
    assert "epmd already has a node named" in lines[0]
    assert lines[1] == "running False"


def test_hidden_node_and_net_ticktime(cluster):
    code = """
        import erlang, sys, time
        erlang.start(node=sys.argv[1], cookie=sys.argv[2], hidden=True, net_ticktime=7)
        w1 = sys.argv[3]
        deadline = time.monotonic() + 20
        while not erlang.connect(w1) and time.monotonic() < deadline:
            time.sleep(0.1)
        print("RESULT", erlang.nodes() == [w1])
        print("RESULT", erlang.node() in erlang.rpc(w1, "erlang", "nodes", [[erlang.Atom("hidden")]]))
        print("RESULT", erlang.node() in erlang.rpc(w1, "erlang", "nodes", []))
        print("RESULT", erlang.apply("net_kernel", "get_net_ticktime", []))
    """
    proc = run_python(code, unique("py"), cluster.cookie, cluster.w1)
    assert result_lines(proc) == ["True", "True", "False", "7"], proc.stderr


# ------------------------------------------------------------------ security

def test_the_cookie_is_in_neither_argv_nor_environment(cluster):
    pid = erlang.info()["os_pid"]
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        cmdline = f.read()
    with open("/proc/%d/environ" % pid, "rb") as f:
        environ = f.read()
    assert cluster.cookie.encode() not in cmdline
    assert cluster.cookie.encode() not in environ
    assert b"-setcookie" not in cmdline and b"-sname" not in cmdline
    # ... yet the helper has it.
    assert erlang.apply("erlang", "get_cookie", []) == cluster.cookie


def test_without_a_cookie_the_node_uses_erls_cookie_file(tmp_path):
    # As erl does: $HOME/.erlang.cookie, made (20 letters, mode 0400) when
    # there is none.  HOME is a directory of the test's own, shared with a
    # plain erl node started without -setcookie, which connects.
    home = str(tmp_path)
    worker = unique("homew")
    code = """
        import erlang, os, socket, stat, subprocess, sys, time
        home, worker = sys.argv[1], sys.argv[2]
        erlang.start(node=sys.argv[3], env={"HOME": home})
        path = os.path.join(home, ".erlang.cookie")
        with open(path) as f:
            text = f.read()
        print("RESULT", erlang.apply("erlang", "get_cookie", []) == text,
              len(text) == 20 and text.isalpha(), oct(stat.S_IMODE(os.stat(path).st_mode)))
        pid = erlang.info()["os_pid"]
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            print("RESULT", text.encode() not in f.read())
        node = "%s@%s" % (worker, socket.gethostname().split(".")[0])
        proc = subprocess.Popen(["erl", "-noshell", "-noinput", "-sname", worker,
                                 "-kernel", "inet_dist_use_interface", "{127,0,0,1}"],
                                env=dict(os.environ, HOME=home), stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not erlang.connect(node) and time.monotonic() < deadline:
                time.sleep(0.1)
            print("RESULT", erlang.rpc(node, "erlang", "get_cookie") == text)
            # A helper started again reads the same file.
            erlang.stop()
            erlang.start(node=sys.argv[4], env={"HOME": home})
            print("RESULT", erlang.apply("erlang", "get_cookie", []) == text,
                  erlang.connect(node))
        finally:
            proc.kill()
    """
    proc = run_python(code, home, worker, unique("py"), unique("py"))
    assert result_lines(proc) == ["True True 0o400", "True", "True", "True True"], \
        proc.stdout + proc.stderr


def test_a_cookie_file_that_cannot_be_made_fails_the_start_clearly(tmp_path):
    # ... and with cookie= given, the file is neither needed nor made.
    code = """
        import erlang, os, sys
        try:
            erlang.start(node=sys.argv[1], env={"HOME": "/nonexistent/home"})
        except erlang.HelperExited as e:
            print("RESULT", "~/.erlang.cookie" in str(e), "/nonexistent/home" in str(e),
                  "cookie=" in str(e))
        print("RESULT", erlang.is_running())
        erlang.start(node=sys.argv[2], cookie="given", env={"HOME": "/nonexistent/home"})
        print("RESULT", erlang.apply("erlang", "get_cookie", []))
        erlang.stop()
        erlang.start(node=sys.argv[3], cookie="given2", env={"HOME": sys.argv[4]})
        print("RESULT", erlang.apply("erlang", "get_cookie", []), os.listdir(sys.argv[4]))
    """
    proc = run_python(code, unique("py"), unique("py"), unique("py"), tmp_path)
    assert result_lines(proc) == ["True True True", "False", "given", "given2 []"], \
        proc.stdout + proc.stderr


def helper_listening_addresses(pid):
    """(address, port) of every TCP socket the process listens on, v4 and v6."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            ip, port = cols[1].split(":")
            if cols[3] == "0A" and cols[9] in inodes:
                if len(ip) == 8:
                    addr = socket.inet_ntoa(bytes.fromhex(ip)[::-1])
                else:
                    addr = socket.inet_ntop(socket.AF_INET6, b"".join(
                        bytes.fromhex(ip[i:i + 8])[::-1] for i in range(0, 32, 8)))
                found.append((addr, int(port, 16)))
    return found


def test_distribution_listens_on_loopback_only(cluster):
    found = helper_listening_addresses(erlang.info()["os_pid"])
    assert found, "the helper listens on nothing"
    assert {addr for addr, _port in found} == {"127.0.0.1"}


def test_dist_all_listens_on_every_interface():
    code = """
        import erlang, sys
        sys.path.insert(0, sys.argv[2])
        from test_cluster import helper_listening_addresses
        erlang.start(node=sys.argv[1], dist="all")
        found = helper_listening_addresses(erlang.info()["os_pid"])
        print("RESULT", sorted({addr for addr, _port in found}))
    """
    proc = run_python(code, unique("py"), os.path.dirname(os.path.abspath(__file__)))
    lines = result_lines(proc)
    assert lines and lines[0] in ("['0.0.0.0']", "['::']", "['0.0.0.0', '::']"), proc.stderr


def test_a_node_with_another_cookie_cannot_connect(nodes_of_test):
    node, _proc = nodes_of_test.spawn("bad", cookie=secrets.token_hex(16))
    deadline = time.monotonic() + 30
    while node.split("@")[0] not in epmd_names():
        assert time.monotonic() < deadline, "the node never registered with epmd"
        time.sleep(0.1)
    assert erlang.connect(node) is False
    assert node not in erlang.nodes()
    with pytest.raises(erlang.NodeDown):
        erlang.rpc(node, "erlang", "node", timeout=10)


def test_a_connection_with_a_wrong_cookie_is_refused_and_logged(cluster, caplog):
    # The node pings the helper with another cookie: the helper refuses the
    # handshake, and its kernel's report reaches Python's logging.
    caplog.set_level(logging.WARNING, logger="erlang")
    bad = unique("badping")
    r = subprocess.run(
        ["erl", "-noshell", "-noinput", "-sname", bad, "-setcookie", secrets.token_hex(16),
         "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
         "-eval", "io:format(\"~p~n\", [net_adm:ping('%s')]), halt()." % erlang.node()],
        capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "pang"
    deadline = time.monotonic() + 10
    while not any(bad in rec.getMessage() and "rejected" in rec.getMessage()
                  for rec in caplog.records):
        assert time.monotonic() < deadline, [rec.getMessage() for rec in caplog.records]
        time.sleep(0.05)
    rec = next(rec for rec in caplog.records if bad in rec.getMessage())
    assert rec.name.startswith("erlang") and rec.levelno >= logging.WARNING
    assert not any(n.startswith(bad) for n in map(str, erlang.nodes()))


# ------------------------------------------------------------------ calls

def test_node_and_nodes(cluster):
    me = erlang.node()
    assert isinstance(me, erlang.Atom)
    assert me == "%s@%s" % (cluster.name, cluster.host)
    assert erlang.info()["node"] == me
    connected = erlang.nodes()
    assert all(isinstance(n, erlang.Atom) for n in connected)
    assert {cluster.w1, cluster.w2} <= set(connected)


def test_rpc_both_ways(cluster):
    assert erlang.rpc(cluster.w1, "erlang", "node") == cluster.w1
    assert erlang.rpc(erlang.Atom(cluster.w2), "erlang", "node", ()) == cluster.w2
    assert erlang.rpc(cluster.w1, "lists", "reverse", [[1, 2, 3]]) == [3, 2, 1]
    # w1 calls back into the helper: a registered function of the helper's.
    me = erlang.node()
    A = erlang.Atom
    assert erlang.rpc(cluster.w1, "erpc", "call", [me, A("erlang"), A("node"), []]) == me
    assert erlang.rpc(cluster.w1, "erpc", "call",
                      [me, A("py"), A("call"), [A("double_it"), [21]]]) == 42


def test_messages_both_ways_with_a_remote_process(cluster):
    # A process on w1, registered there, echoes what Python sends it, by
    # name and by pid, to the mailbox the message names.
    name = unique("echo")
    pid = erlang.eval(
        "spawn('%s', fun() -> register('%s', self()), Loop = fun(L) -> receive "
        "{From, M} -> From ! {echoed, node(), M}, L(L) end end, Loop(Loop) end)."
        % (cluster.w1, name))
    assert isinstance(pid, erlang.Pid)
    with erlang.Mailbox() as mb:
        deadline = time.monotonic() + 10
        while erlang.rpc(cluster.w1, "erlang", "whereis", [erlang.Atom(name)]) != pid:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        erlang.send((name, cluster.w1), (mb.pid, "by name"))
        erlang.send((erlang.Atom(name), erlang.Atom(cluster.w1)), (mb.pid, ("as", "atoms")))
        erlang.send(pid, (mb.pid, [1, 2, 3]))
        got = [mb.receive(timeout=10) for _ in range(3)]
        assert got == [("echoed", cluster.w1, "by name"), ("echoed", cluster.w1, ("as", "atoms")),
                       ("echoed", cluster.w1, [1, 2, 3])]
        # A name nobody holds on the remote node: the message is dropped
        # there, as with `!`; nothing arrives and nothing raises.
        erlang.send((unique("nobody"), cluster.w1), (mb.pid, "lost"))
        erlang.send(pid, (mb.pid, "after"))
        assert mb.receive(timeout=10) == ("echoed", cluster.w1, "after")
    erlang.rpc(cluster.w1, "erlang", "exit", [pid, erlang.Atom("kill")])


def test_a_remote_exception_is_an_error_not_nodedown(cluster):
    with pytest.raises(erlang.Error) as e:
        erlang.rpc(cluster.w1, "erlang", "error", ["boom"])
    assert not isinstance(e.value, erlang.NodeDown)
    assert e.value.reason[0] == "exception" and e.value.reason[1] == "boom"
    with pytest.raises(erlang.Error) as e:
        erlang.rpc(cluster.w1, "no_such_module", "f", [])
    assert e.value.reason[:2] == ("exception", "undef")


def test_bad_node_names_raise_before_sending(cluster):
    for bad in (5, b"w1@host", None, ("w1", "host")):
        with pytest.raises(TypeError):
            erlang.rpc(bad, "erlang", "node")
        with pytest.raises(TypeError):
            erlang.connect(bad)
        with pytest.raises(TypeError):
            erlang.disconnect(bad)
        with pytest.raises(TypeError):
            erlang.rpc_async(bad, "erlang", "node")
    with pytest.raises(ValueError):
        erlang.rpc("no_at_sign", "erlang", "node")


def test_rpc_timeout_is_a_calltimeout(cluster):
    t0 = time.monotonic()
    with pytest.raises(erlang.CallTimeout):
        erlang.rpc(cluster.w1, "timer", "sleep", [10000], timeout=0.5)
    assert time.monotonic() - t0 < 3
    # The helper and the connection are fine afterwards.
    assert erlang.rpc(cluster.w1, "erlang", "node", timeout=10) == cluster.w1


def test_an_unknown_node_raises_nodedown(cluster):
    nobody = "%s@%s" % (unique("nobody"), cluster.host)
    t0 = time.monotonic()
    with pytest.raises(erlang.NodeDown) as e:
        erlang.rpc(nobody, "erlang", "node")
    assert time.monotonic() - t0 < 5
    assert e.value.node == nobody and isinstance(e.value.node, erlang.Atom)
    assert isinstance(e.value, ConnectionError)
    assert nobody in str(e.value)
    with pytest.raises(erlang.NodeDown):
        erlang.rpc_async(nobody, "erlang", "node").result(timeout=10)
    assert erlang.connect(nobody) is False
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is erlang.NodeDown
    assert (again.node, str(again)) == (e.value.node, str(e.value))


def test_a_node_killed_during_an_rpc_raises_nodedown(nodes_of_test):
    node, proc = nodes_of_test.spawn_connected("victim")
    killer = threading.Timer(0.5, proc.send_signal, (signal.SIGKILL,))
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(erlang.NodeDown) as e:
            erlang.rpc(node, "timer", "sleep", [30000])
    finally:
        killer.cancel()
    assert e.value.node == node
    assert time.monotonic() - t0 < 0.5 + 2.0
    assert node not in erlang.nodes()


def test_rpc_async_fanout_with_a_node_killed_mid_run(nodes_of_test):
    a, _pa = nodes_of_test.spawn_connected("fa")
    b, pb = nodes_of_test.spawn_connected("fb")
    n = 200
    futs = []
    for i in range(n):
        node = a if i % 2 == 0 else b
        # Each call sleeps 1.5 s, so b's are all pending when b dies.
        futs.append((node, erlang.rpc_async(node, "timer", "sleep", [1500])))
    time.sleep(0.5)
    pb.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    down_at = []
    for node, fut in futs:
        if node == b:
            with pytest.raises(erlang.NodeDown) as e:
                fut.result(timeout=10)
            assert e.value.node == b
            down_at.append(time.monotonic())
        else:
            assert fut.result(timeout=10) == "ok"
    assert len(down_at) == n // 2
    # b's calls failed soon after the kill (a's, 1.5 s long, were waited for
    # first in the loop only when they came before; take the first failure).
    assert min(down_at) - killed_at < 2.0
    assert b not in erlang.nodes() and a in erlang.nodes()


def test_rpc_async_futures_fail_promptly_when_their_node_dies(nodes_of_test):
    node, proc = nodes_of_test.spawn_connected("prompt")
    futs = [erlang.rpc_async(node, "timer", "sleep", [30000]) for _ in range(50)]
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    for f in futs:
        assert isinstance(f.exception(timeout=10), erlang.NodeDown)
    assert time.monotonic() - t0 < 2.0


def test_asyncio_rpc(cluster):
    nobody = "%s@%s" % (unique("nobody"), cluster.host)

    async def main():
        here = await erlang.asyncio.rpc(cluster.w1, "erlang", "node")
        both = await asyncio.gather(
            erlang.asyncio.rpc(cluster.w1, "lists", "sum", [[1, 2, 3]]),
            erlang.asyncio.rpc(cluster.w2, "erlang", "node"))
        with pytest.raises(erlang.NodeDown):
            await erlang.asyncio.rpc(nobody, "erlang", "node")
        with pytest.raises(erlang.CallTimeout):
            await erlang.asyncio.rpc(cluster.w1, "timer", "sleep", [10000], timeout=0.3)
        return here, both

    assert asyncio.run(main()) == (cluster.w1, [6, cluster.w2])


def test_disconnect_and_connect_again(nodes_of_test):
    node, _proc = nodes_of_test.spawn_connected("dc")
    assert node in erlang.nodes()
    assert erlang.disconnect(node) is True
    assert node not in erlang.nodes()
    assert erlang.disconnect(node) is False
    assert erlang.connect(node) is True
    assert node in erlang.nodes()


def test_a_helper_that_died_comes_back_as_the_same_node(cluster):
    old = erlang.info()["os_pid"]
    me = erlang.node()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while erlang.is_running():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # The next call starts a new helper with the same options: the same
    # node name (epmd has let go of the old one), the same cookie.
    assert erlang.node() == me
    assert erlang.info()["os_pid"] != old
    assert erlang.rpc(cluster.w1, "erlang", "node", timeout=10) == cluster.w1
    assert erlang.rpc(cluster.w1, "erpc", "call",
                      [me, erlang.Atom("erlang"), erlang.Atom("node"), []]) == me
