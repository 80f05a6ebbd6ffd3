"""Distribution over TLS: erlang.start(node=..., tls={...}) against real
`erl` nodes on loopback that use TLS too (or not), with certificates this
module makes with `openssl`: a CA, node certificates it signs, and
certificates a second CA signs, that nobody here trusts.

Every node started here is killed in its fixture's teardown; the suite's
default helper is back afterwards.
"""
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

import pytest

import erlang
from conftest import register_functions, start_default_helper
from test_cluster import epmd_names, kill, unique, wait_connected

A = erlang.Atom
OPENSSL = shutil.which("openssl")
HOST = socket.gethostname().split(".")[0]

# In CI openssl and Erlang's ssl are installed (.ci/run): there these tests
# must run, not skip.
pytestmark = pytest.mark.skipif(
    OPENSSL is None and not os.environ.get("CI"),
    reason="needs the openssl command to make certificates")


# ------------------------------------------------------------------ certificates

def openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", name + ".key", "-out", name + ".pem", "-subj", "/CN=" + name, cwd=d)
    return str(d / (name + ".pem"))


def make_cert(d, name, ca, hosts):
    """A certificate for `name` signed by `ca`, naming `hosts` (DNS names;
    127.0.0.1 also as an address); returns (certfile, keyfile)."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key",
            "-out", name + ".csr", "-subj", "/CN=" + name, cwd=d)
    san = ",".join(["DNS:" + h for h in hosts] + ["IP:127.0.0.1"])
    (d / (name + ".ext")).write_text(
        "subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n" % san)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-days", "2", "-out", name + ".pem",
            "-extfile", name + ".ext", cwd=d)
    return str(d / (name + ".pem")), str(d / (name + ".key"))


class Certs:
    pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    c = Certs()
    here = [HOST, "localhost", "127.0.0.1"]
    c.ca = make_ca(d, "ca")
    c.other_ca = make_ca(d, "other_ca")
    c.helper = make_cert(d, "helper", "ca", here)
    c.node = make_cert(d, "node", "ca", here)
    c.stranger = make_cert(d, "stranger", "other_ca", here)
    c.elsewhere = make_cert(d, "elsewhere", "ca", ["elsewhere.example"])
    # certfile and key in one file, as the option allows.
    c.combined = str(d / "combined.pem")
    with open(c.combined, "w") as f:
        f.write(open(c.helper[0]).read() + open(c.helper[1]).read())
    c.dir = d
    return c


def tls_args(cert, ca, client_cert=True):
    """erl flags of a TLS node verifying its peers against `ca`: what the
    helper's tls= option amounts to, written out for a plain erl."""
    certfile, keyfile = cert
    server = ["server_certfile", certfile, "server_keyfile", keyfile,
              "server_cacertfile", ca, "server_verify", "verify_peer",
              "server_fail_if_no_peer_cert", "true"]
    client = ["client_cacertfile", ca, "client_verify", "verify_peer"]
    if client_cert:
        client += ["client_certfile", certfile, "client_keyfile", keyfile]
    return ["-proto_dist", "inet_tls", "-ssl_dist_opt", *server, "-ssl_dist_opt", *client]


def erl_node(sname, cookie, dist_args, eval_=None):
    argv = ["erl", "-noshell", "-noinput", "-sname", sname, "-setcookie", cookie,
            "-kernel", "inet_dist_use_interface", "{127,0,0,1}", *dist_args]
    if eval_ is not None:
        return subprocess.run(argv + ["-eval", eval_], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def ping_helper(sname, cookie, dist_args):
    """What net_adm:ping of the helper gives on a node started with these
    flags: "pong" or "pang"."""
    r = erl_node(sname, cookie, dist_args,
                 "io:format(\"ping=~p~n\", [net_adm:ping('%s')]), halt()." % erlang.node())
    # The node's own reports (a refused handshake) go to its stdout too.
    answers = [l[5:] for l in r.stdout.splitlines() if l.startswith("ping=")]
    assert len(answers) == 1, (r.stdout, r.stderr)
    return answers[0]


def registered(node, timeout=30.0):
    deadline = time.monotonic() + timeout
    while node.split("@")[0] not in epmd_names():
        assert time.monotonic() < deadline, "node %s never registered with epmd" % node
        time.sleep(0.1)


class TlsCluster:
    def __init__(self, certs):
        self.certs = certs
        self.cookie = secrets.token_hex(16)
        self.name = unique("pytls")
        self.procs = []

    def spawn(self, prefix, dist_args, cookie=None):
        sname = unique(prefix)
        self.procs.append(erl_node(sname, cookie or self.cookie, dist_args))
        return "%s@%s" % (sname, HOST), self.procs[-1]

    def kill_all(self):
        for p in self.procs:
            kill(p)
        self.procs.clear()


@pytest.fixture(scope="module")
def tls_cluster(certs):
    """The helper as a TLS node, and a TLS worker node w whose certificate
    the same CA signs, connected to it."""
    c = TlsCluster(certs)
    erlang.stop()
    erlang.start(node=c.name, cookie=c.cookie, on_start=register_functions,
                 tls={"certfile": certs.helper[0], "keyfile": certs.helper[1],
                      "cacertfile": certs.ca})
    try:
        c.w, c.wproc = c.spawn("tlsw", tls_args(certs.node, certs.ca))
        wait_connected(c.w)
        yield c
    finally:
        c.kill_all()
        start_default_helper()


@pytest.fixture
def tls_nodes(tls_cluster):
    """Nodes a test starts: gone after the test."""
    c = TlsCluster(tls_cluster.certs)
    c.cookie = tls_cluster.cookie
    yield c
    c.kill_all()


def protocol_of(node):
    ok, address = erlang.apply("net_kernel", "node_info", [A(node), A("address")])
    assert ok == "ok"
    return address[3]       # #net_address{address, host, protocol, family}


# ------------------------------------------------------------------ options

def test_bad_tls_options_are_refused_before_anything_starts(certs, tmp_path):
    pid = erlang.info()["os_pid"]
    good = {"certfile": certs.helper[0], "keyfile": certs.helper[1], "cacertfile": certs.ca}
    (tmp_path / "empty.pem").write_text("")
    empty = str(tmp_path / "empty.pem")
    cases = [
        ({"tls": good}, ValueError, "needs 'node'"),
        ({"node": "py", "tls": [certs.helper[0]]}, TypeError, "must be a dict"),
        ({"node": "py", "tls": dict(good, verify="none")}, ValueError, "unknown key"),
        ({"node": "py", "tls": {"keyfile": certs.helper[1], "cacertfile": certs.ca}},
         ValueError, "needs 'certfile'"),
        ({"node": "py", "tls": {"certfile": certs.helper[0]}}, ValueError,
         "needs 'cacertfile'"),
        ({"node": "py", "tls": dict(good, certfile=5)}, TypeError, "must be a path"),
        ({"node": "py", "tls": dict(good, cacertfile=str(tmp_path / "missing.pem"))},
         FileNotFoundError, "no such file"),
        ({"node": "py", "tls": dict(good, certfile=str(tmp_path))}, ValueError,
         "is a directory"),
        ({"node": "py", "tls": dict(good, certfile=empty)}, ValueError, "no PEM certificate"),
        # A certificate where the key should be, and the other way round.
        ({"node": "py", "tls": dict(good, keyfile=certs.helper[0])}, ValueError,
         "no PEM private key"),
        ({"node": "py", "tls": dict(good, cacertfile=certs.helper[1])}, ValueError,
         "no PEM certificate"),
        # Without keyfile, the key must be in certfile.
        ({"node": "py", "tls": {"certfile": certs.helper[0], "cacertfile": certs.ca}},
         ValueError, "no PEM private key"),
        ({"node": "py", "tls": good, "args": ["-proto_dist", "inet_tcp"]}, ValueError,
         "both configure"),
    ]
    for options, error, text in cases:
        with pytest.raises(error, match=text):
            erlang.start(**options)
    assert erlang.info()["os_pid"] == pid and erlang.node() == "nonode@nohost"


def test_tls_argv_names_files_and_protocol_only(certs):
    from erlang._helper import command_line
    argv = command_line({"node": "py", "cookie": "sekrit",
                         "tls": {"certfile": certs.helper[0], "keyfile": certs.helper[1],
                                 "cacertfile": certs.ca}})
    assert argv[argv.index("-proto_dist") + 1] == "inet_tls"
    assert "sekrit" not in " ".join(argv)
    # Both sides verify: the server wants a certificate, the client checks it.
    pairs, i = {}, 0
    while "-ssl_dist_opt" in argv[i:]:
        i = argv.index("-ssl_dist_opt", i) + 1
        while i < len(argv) and not argv[i].startswith("-"):
            pairs[argv[i]] = argv[i + 1]
            i += 2
    assert pairs["server_verify"] == "verify_peer"
    assert pairs["server_fail_if_no_peer_cert"] == "true"
    assert pairs["client_verify"] == "verify_peer"
    assert pairs["server_cacertfile"] == pairs["client_cacertfile"] == certs.ca
    assert argv[-3:] == ["-s", "py_boot", "start"]


# ------------------------------------------------------------------ a TLS cluster

def test_tls_nodes_connect_and_call_each_other(tls_cluster):
    c = tls_cluster
    assert erlang.nodes() == [A(c.w)]
    assert protocol_of(c.w) == "tls"
    assert erlang.rpc(c.w, "erlang", "node") == c.w
    # The other way: the worker calls the helper, over the same connection.
    assert erlang.rpc(c.w, "erpc", "call", [erlang.node(), A("erlang"), A("node"), []]) == \
        erlang.node()
    assert erlang.rpc(c.w, "erpc", "call", [erlang.node(), A("py"), A("call"),
                                            [A("double_it"), [21]]]) == 42


def test_a_remote_tls_node_calls_a_python_export_and_sends_to_a_mailbox(tls_cluster):
    c = tls_cluster
    erlang.export(lambda s: s[::-1], name="reverse")
    try:
        assert erlang.rpc(c.w, "erpc", "call",
                          [erlang.node(), A("py"), A("call_python"), [b"reverse", [b"tls"]]]) == "slt"
    finally:
        erlang.unexport("reverse")
    name = unique("tlsbox")
    with erlang.Mailbox(name) as mb:
        erlang.rpc(c.w, "erlang", "send", [(A(name), erlang.node()), ("over", "tls")])
        assert mb.receive(timeout=10) == ("over", "tls")


def test_a_second_tls_node_and_the_combined_certificate_file(tls_nodes):
    # A node started with its certificate and key in one file works too
    # (the helper here keeps its own options; the node uses the file).
    c = tls_nodes
    combined = (c.certs.combined, c.certs.combined)
    node, _ = c.spawn("tlscomb", tls_args(combined, c.certs.ca))
    wait_connected(node)
    assert protocol_of(node) == "tls" and A(node) in erlang.nodes()
    assert erlang.rpc(node, "lists", "sum", [[1, 2, 3]]) == 6


# ------------------------------------------------------------------ refused

def test_a_node_whose_certificate_another_ca_signed_cannot_connect(tls_nodes):
    c = tls_nodes
    # Its certificate is signed by a CA the helper does not trust, and it
    # does not trust the helper's: refused both ways.
    node, _ = c.spawn("stranger", tls_args(c.certs.stranger, c.certs.other_ca))
    registered(node)
    assert erlang.connect(node) is False
    with pytest.raises(erlang.NodeDown):
        erlang.rpc(node, "erlang", "node", timeout=10)
    # Trusting the helper's CA is not enough: its own certificate is refused.
    assert ping_helper(unique("stranger2"), c.cookie,
                       tls_args(c.certs.stranger, c.certs.ca)) == "pang"
    assert not any("stranger" in n for n in erlang.nodes())


def test_a_node_without_a_certificate_cannot_connect(tls_nodes):
    c = tls_nodes
    # TLS, trusting the helper's CA, but presenting no certificate.
    no_cert = tls_args(c.certs.node, c.certs.ca, client_cert=False)
    assert ping_helper(unique("nocert"), c.cookie, no_cert) == "pang"
    # Plain TCP distribution: not even a TLS handshake.
    assert ping_helper(unique("plain"), c.cookie, []) == "pang"
    node, _ = c.spawn("plainw", [])
    registered(node)
    assert erlang.connect(node) is False
    assert [n for n in erlang.nodes() if "nocert" in n or "plain" in n] == []


def test_a_node_whose_certificate_names_another_host_cannot_be_connected_to(tls_nodes):
    # The CA signed it, but for elsewhere.example: the helper, connecting,
    # checks that the certificate names the host it connects to.
    c = tls_nodes
    node, _ = c.spawn("elsewhere", tls_args(c.certs.elsewhere, c.certs.ca))
    registered(node)
    assert erlang.connect(node) is False
    assert A(node) not in erlang.nodes()


def test_a_valid_certificate_with_another_cookie_is_still_refused(tls_nodes):
    c = tls_nodes
    assert ping_helper(unique("tlscookie"), secrets.token_hex(16),
                       tls_args(c.certs.node, c.certs.ca)) == "pang"
    # The right cookie, the same certificate: accepted.
    assert ping_helper(unique("tlsok"), c.cookie, tls_args(c.certs.node, c.certs.ca)) == "pong"


def test_a_refused_tls_connection_reaches_logging(tls_nodes, caplog):
    caplog.set_level(logging.INFO, logger="erlang")
    c = tls_nodes
    assert ping_helper(unique("logged"), c.cookie,
                       tls_args(c.certs.stranger, c.certs.other_ca)) == "pang"
    deadline = time.monotonic() + 10
    while not any("TLS" in r.getMessage() and "Unknown CA" in r.getMessage()
                  for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)
    assert all(r.name.startswith("erlang") for r in caplog.records if "TLS" in r.getMessage())


# ------------------------------------------------------------------ lifecycle

def test_a_helper_that_died_comes_back_as_a_tls_node(tls_cluster):
    c = tls_cluster
    old = erlang.info()["os_pid"]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            assert erlang.call("double_it", 2, timeout=10) == 4
            break
        except erlang.HelperExited:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert erlang.info()["os_pid"] != old
    assert erlang.node() == A("%s@%s" % (c.name, HOST))
    wait_connected(c.w)
    assert protocol_of(c.w) == "tls"
    assert erlang.rpc(c.w, "erlang", "node") == c.w
