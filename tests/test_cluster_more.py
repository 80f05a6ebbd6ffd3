"""More of the helper in a cluster, with test_cluster's nodes: other nodes
call Python's exports and send to its named mailboxes, a mailbox monitors
a node, two Python processes call each other, an Elixir node.

The fixtures are test_cluster's (imported, so this module gets a cluster
of its own); every node started here is killed in a fixture's teardown.
"""
import os
import signal
import time

import pytest

import erlang
from test_cluster import Cluster, cluster, nodes_of_test, unique, wait_connected  # noqa: F401

A = erlang.Atom


# ------------------------------------------------------------------ without distribution

def test_monitor_node_without_distribution_raises_notalive():
    # First in the module: the suite's default helper, no node yet.
    if erlang.node() != "nonode@nohost":
        pytest.skip("the helper is a node already")
    with erlang.Mailbox() as mb:
        with pytest.raises(erlang.Error) as e:
            mb.monitor_node("w1@nohost")
        assert e.value.reason == "notalive"
        with pytest.raises(TypeError):
            mb.monitor_node(5)
        with pytest.raises(ValueError):
            mb.monitor_node("no_at_sign")
        # As erlang:monitor_node(N, false) on a node that is not alive.
        with pytest.raises(erlang.Error) as e:
            mb.demonitor_node(erlang.Atom("w1@nohost"))
        assert e.value.reason == "notalive"
        with pytest.raises(TypeError):
            mb.demonitor_node(5)
        with pytest.raises(ValueError):
            mb.demonitor_node("no_at_sign")


# ------------------------------------------------------------------ reached from other nodes

def test_a_python_export_called_from_a_remote_node(cluster):
    erlang.export(lambda w, h: w * h, name="area")
    try:
        me = erlang.node()
        # erpc:call('py@host', py, call_python, [<<"area">>, [3, 4]]) run on
        # w1: the hop goes w1 -> helper -> Python's thread pool.
        assert erlang.rpc(cluster.w1, "erpc", "call",
                          [me, A("py"), A("call_python"), ["area", [3, 4]]]) == 12
        # The same from code evaluated on w1, the name an atom there.
        expr = "erpc:call('%s', py, call_python, [area, [5, 6]])." % me
        ok, tokens, _ = erlang.rpc(cluster.w1, "erl_scan", "string", [list(map(ord, expr))])
        assert ok == "ok"
        assert erlang.rpc(cluster.w1, "erl_eval", "exprs",
                          [erlang.rpc(cluster.w1, "erl_parse", "parse_exprs", [tokens])[1],
                           []])[1] == 30
    finally:
        erlang.unexport("area")


def test_a_named_mailbox_receives_from_a_remote_node(cluster):
    name = unique("inbox")
    me = erlang.node()
    with erlang.Mailbox(name) as mb:
        # {inbox_x, 'py@host'} ! Msg, sent by a process of w1.
        assert erlang.rpc(cluster.w1, "erlang", "send",
                          [(A(name), me), ("hello", A("from_w1"), [1, 2])]) \
            == ("hello", "from_w1", [1, 2])
        assert mb.receive(timeout=10) == ("hello", "from_w1", [1, 2])


# ------------------------------------------------------------------ monitor_node

def test_monitor_node_gives_nodedown_when_the_node_is_killed(nodes_of_test):
    node, proc = nodes_of_test.spawn_connected("mon")
    with erlang.Mailbox() as mb:
        mb.monitor_node(node)
        mb.monitor_node(erlang.Atom(node))      # a second monitor: a second nodedown
        time.sleep(0.2)
        with pytest.raises(TimeoutError):
            mb.receive(timeout=0)
        proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        assert mb.receive(timeout=5) == ("nodedown", node)
        assert time.monotonic() - t0 < 3
        got = mb.receive(timeout=5)
        assert got == ("nodedown", node) and isinstance(got[1], erlang.Atom)


def test_monitor_node_of_an_unreachable_node_gives_nodedown_at_once(cluster):
    nobody = "%s@%s" % (unique("nobody"), cluster.host)
    with erlang.Mailbox() as mb:
        mb.monitor_node(nobody)
        assert mb.receive(timeout=10) == ("nodedown", nobody)
        mb.close()
        with pytest.raises(erlang.MailboxClosed):
            mb.monitor_node(nobody)


def test_demonitor_node_removes_one_monitor(nodes_of_test):
    node, proc = nodes_of_test.spawn_connected("demon")
    with erlang.Mailbox() as once, erlang.Mailbox() as twice:
        once.monitor_node(node)
        once.demonitor_node(node)
        once.demonitor_node(erlang.Atom(node))     # none left: nothing happens
        twice.monitor_node(node)
        twice.monitor_node(node)
        twice.demonitor_node(erlang.Atom(node))    # one of the two goes
        with pytest.raises(TypeError):
            twice.demonitor_node(b"x@y")
        with pytest.raises(ValueError):
            twice.demonitor_node("no_at_sign")
        proc.send_signal(signal.SIGKILL)
        assert twice.receive(timeout=5) == ("nodedown", node)
        with pytest.raises(TimeoutError):
            twice.receive(timeout=1.0)
        with pytest.raises(TimeoutError):
            once.receive(timeout=1.0)
        once.close()
        with pytest.raises(erlang.MailboxClosed):
            once.demonitor_node(node)


def test_demonitor_node_does_not_take_back_a_nodedown_that_came(nodes_of_test):
    # The node is gone (the helper has dropped it) before demonitor_node:
    # its nodedown is already in the mailbox, and stays there.
    node, proc = nodes_of_test.spawn_connected("late")
    with erlang.Mailbox() as mb:
        mb.monitor_node(node)
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while node in erlang.nodes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
        mb.demonitor_node(node)
        assert mb.receive(timeout=5) == ("nodedown", node)
        with pytest.raises(TimeoutError):
            mb.receive(timeout=0.2)


# ------------------------------------------------------------------ an Elixir node

def test_an_elixir_node_called_from_python(cluster):
    import shutil
    import subprocess
    elixir = shutil.which("elixir")
    if elixir is None:
        # In CI Elixir is installed (.ci/run), so there this must run.
        if os.environ.get("CI"):
            pytest.fail("`elixir` is not on PATH, and CI must run this test")
        pytest.skip("`elixir` is not on PATH (Debian/Ubuntu: apt-get install -y elixir)")
    sname = unique("ex")
    proc = subprocess.Popen(
        [elixir, "--sname", sname, "--cookie", cluster.cookie,
         "--erl", "-kernel inet_dist_use_interface {127,0,0,1}",
         "-e", "Process.sleep(:infinity)"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        node = "%s@%s" % (sname, cluster.host)
        wait_connected(node, timeout=60)
        assert erlang.rpc(node, "Elixir.String", "upcase", ["abc"]) == "ABC"
        assert erlang.rpc(node, "Elixir.Enum", "sum", [[1, 2, 3]]) == 6
    finally:
        # The elixir script may run erl as a child: the whole group goes.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


# ------------------------------------------------------------------ two Python processes

CHILD = """
import sys
import erlang

name, cookie, parent = sys.argv[1:4]
erlang.start(node=name, cookie=cookie)


@erlang.export
def child_mul(a, b):
    return a * b


@erlang.export
def child_calls_parent(x):
    # Back into the parent's Python while the parent waits for this call.
    return 10 * erlang.rpc(parent, "py", "call_python", ["parent_add", [x, 1]])


# The child calls the parent on its own, too.
print("RESULT", erlang.rpc(parent, "py", "call_python", ["parent_add", [40, 2]]), flush=True)
print("READY", erlang.node(), flush=True)
sys.stdin.read()          # until the parent closes stdin
"""


class Lines:
    """The lines of a child's stdout, read by a thread (a select() on a
    buffered pipe misses lines already in the buffer)."""

    def __init__(self, proc):
        import queue
        import threading
        self.proc = proc
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.q.put(line)
        self.q.put(None)

    def next(self, prefix, timeout=60.0):
        """The next line that starts with prefix (the others are skipped),
        prefix removed; fails the test if none comes within timeout."""
        import queue
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("no %r line from the child within %g s" % (prefix, timeout))
            if line is None:
                pytest.fail("the child exited (%s) before a %r line: %s"
                            % (self.proc.wait(), prefix, self.proc.stderr.read()))
            if line.startswith(prefix):
                return line[len(prefix):].strip()


@pytest.fixture
def as_pa(cluster):
    """The helper as node pa_<pid>_<n> with the cluster's cookie; afterwards
    the cluster's helper is back (same node name, same cookie)."""
    from conftest import register_functions
    erlang.stop()
    erlang.start(node=unique("pa"), cookie=cluster.cookie)
    try:
        yield cluster
    finally:
        erlang.stop()
        erlang.start(node=cluster.name, cookie=cluster.cookie, on_start=register_functions)


def test_two_python_processes_call_each_others_exports(as_pa):
    import subprocess
    import sys
    me = erlang.node()
    assert str(me).startswith("pa_")
    calls = []

    def parent_add(a, b):
        calls.append((a, b))
        return a + b

    erlang.export(parent_add)
    child_name = unique("pb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, child_name, as_pa.cookie, str(me)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = Lines(proc)
    try:
        assert lines.next("RESULT ") == "42"
        child = lines.next("READY ")
        assert child == "%s@%s" % (child_name, as_pa.host)
        assert erlang.rpc(child, "py", "call_python", ["child_mul", [6, 7]]) == 42
        # parent -> child -> parent, nested through both helpers.
        assert erlang.rpc(child, "py", "call_python", ["child_calls_parent", [4]]) == 50
        assert calls == [(40, 2), (4, 1)]
        assert child in erlang.nodes()
    finally:
        erlang.unexport("parent_add")
        try:
            proc.stdin.close()
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stderr.close()
    assert proc.returncode == 0
