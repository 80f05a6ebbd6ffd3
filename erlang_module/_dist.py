"""The helper in a cluster: Erlang distribution from Python.

``erlang.start(node="py")`` makes the helper an Erlang node.  Distribution
is started at run time, after the helper's hello (``py_dist:start/6``), so
that the cookie travels over the channel and never appears in the helper's
argv or environment.  epmd is started first if none answers, as ``erl
-sname`` would (on 127.0.0.1 for ``dist="loopback"``), and left running.

The functions here are ordinary APPLY calls: ``erlang.rpc`` runs
``erpc:call/5`` in the helper, and erpc's ``noconnection`` becomes
:class:`NodeDown`.
"""
import math
import shutil
import subprocess
import time

from . import _async, _erlang
from ._errors import CallTimeout, Error, HelperExited, NodeDown, UndefinedFunction
from ._types import Atom

_K_APPLY = _erlang.K_APPLY

# erpc's largest timeout (ms): erpc:call/5 refuses more; longer is no limit.
_ERPC_TIMEOUT_MAX = 4294967295
# How much longer than erpc's own timeout the helper call waits: erpc
# answers {erpc, timeout} first, which names the node's silence.
_MARGIN = 1.0
# How long a start waits for an epmd it started to answer.
_EPMD_WAIT = 5.0


# ------------------------------------------------------------------ start

def _epmd_port(env):
    try:
        return int(env.get("ERL_EPMD_PORT") or 4369)
    except ValueError:
        return 4369


def _epmd_answers(port):
    try:
        import socket   # here: only a distributed start needs it
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _ensure_epmd(options, env):
    """Starts `epmd -daemon` when no epmd answers on this host, as erl does
    for -sname (net_kernel:start/2 does not): on 127.0.0.1 only for
    dist="loopback".  It is left running, shared by every node of the host,
    as erl leaves it."""
    port = _epmd_port(env)
    if _epmd_answers(port):
        return
    path = _call("py_dist", "epmd_path", [])
    path = path.decode() if isinstance(path, bytes) else path
    if not path:
        path = shutil.which("epmd")
    if not path:
        raise HelperExited("distribution needs epmd, and no epmd runs on this host nor was "
                           "found next to erl or on PATH")
    epmd_env = dict(env)
    if options.get("dist", "loopback") == "loopback":
        epmd_env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
    try:
        subprocess.run([path, "-daemon"], env=epmd_env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise HelperExited("could not start epmd (%s): %s" % (path, e)) from None
    deadline = time.monotonic() + _EPMD_WAIT
    while not _epmd_answers(port):
        if time.monotonic() > deadline:
            raise HelperExited("started %s -daemon, but no epmd answers on 127.0.0.1:%d "
                               "after %g s" % (path, port, _EPMD_WAIT))
        time.sleep(0.05)


def start_distribution(options, env):
    """Makes the just-started helper the node of the `node` start option
    (called by _helper before `modules` and `on_start`); returns the node's
    name as an Atom.  Raises HelperExited when distribution cannot start,
    e.g. when epmd already knows a node of that name."""
    from ._helper import node_name

    name, domain = node_name(options["node"])
    if options.get("tls") is not None and \
            _call("code", "which", [Atom("inet_tls_dist")]) == "non_existing":
        raise HelperExited("start option 'tls': distribution over TLS needs Erlang's ssl "
                           "application, which this Erlang does not have (Debian/Ubuntu: "
                           "apt-get install -y erlang-ssl)")
    _ensure_epmd(options, env)
    cookie = options.get("cookie")
    tick = options.get("net_ticktime")
    # No cookie given: erl's, which kernel's auth reads from ~/.erlang.cookie
    # (making one if there is none) when distribution starts.
    r = _call("py_dist", "start", [
        Atom(name), Atom(domain), options.get("dist", "loopback") == "loopback",
        bool(options.get("hidden", False)), Atom("default") if tick is None else tick,
        Atom("default") if cookie is None else cookie.encode("ascii")])
    if isinstance(r, tuple) and len(r) == 2 and r[0] == "error":
        why = r[1]
        if isinstance(why, tuple) and len(why) == 2 and why[0] == "name_in_use":
            raise HelperExited("cannot start distribution as %s: epmd already has a node "
                               "named %r on this host (pick another node name, or stop "
                               "that node)" % (name, str(why[1]).partition("@")[0]))
        cookie_file = _cookie_file_error(why)
        if cookie_file is not None:
            raise HelperExited("cannot start distribution as %s: without cookie=, the node "
                               "uses ~/.erlang.cookie as erl does, and %s (give cookie=, "
                               "or set HOME through the env start option)"
                               % (name, cookie_file))
        raise HelperExited("cannot start distribution as %s: net_kernel:start/2 returned "
                           "{error, %r}" % (name, why))
    return r


def _cookie_file_error(why):
    """auth's text when net_kernel:start/2 failed because kernel's auth
    could not read or create the cookie file, else None:
    {{shutdown, {failed_to_start_child, auth, {Text, Stack}}}, _}."""
    try:
        child = why[0][1]
        if child[0] == "failed_to_start_child" and child[1] == "auth":
            text = child[2][0]
            if isinstance(text, list):
                text = "".join(map(chr, text))
            return text[0].lower() + text[1:] if isinstance(text, str) and text else None
    except (TypeError, IndexError, KeyError, ValueError):
        pass
    return None


# ------------------------------------------------------------------ helpers

def _call(module, function, args, timeout=None):
    return _erlang._request(_K_APPLY, (Atom(module), Atom(function), list(args)), timeout)


def _node(node):
    """A node name as an Atom: str or Atom, holding an @."""
    if not isinstance(node, str):
        raise TypeError("a node name must be a str or Atom, not %s" % type(node).__name__)
    if "@" not in node:
        raise ValueError("%r is not a node name (name@host)" % node)
    return Atom(node)


def rpc_request(node, module, function, args, timeout):
    """The APPLY payload of erpc:call/5 for an rpc, and what translate()
    needs: (payload, node, seconds, own, helper_timeout)."""
    n = _node(node)
    m, f, a = _async.apply_payload(module, function, args)
    seconds, own = _async.limit(timeout)
    if seconds is None:
        ms, helper_timeout = Atom("infinity"), None
    else:
        ms = min(int(math.ceil(seconds * 1000)), _ERPC_TIMEOUT_MAX)
        helper_timeout = seconds + _MARGIN
    return (Atom("erpc"), Atom("call"), [n, m, f, a, ms]), n, seconds, own, helper_timeout


def translate(exc, node, seconds, own):
    """The exception an rpc raises for `exc`, an error of erpc:call/5:
    {erpc, noconnection} is NodeDown, {erpc, timeout} CallTimeout; anything
    else (what the remote function raised) stays as it is."""
    if isinstance(exc, Error) and not isinstance(exc, UndefinedFunction) \
            and exc.kind == "error":
        if exc.reason == ("erpc", "noconnection"):
            return NodeDown(node, "Erlang node %s is down or cannot be reached "
                                  "(erpc: noconnection)" % node)
        if exc.reason == ("erpc", "timeout") and seconds is not None:
            return CallTimeout("no reply from node %s within %s=%g s"
                               % (node, "timeout" if own else "call_timeout", seconds))
    return exc


class _RpcFuture(_async._CallFuture):
    """The future of rpc_async: erpc's errors become NodeDown/CallTimeout."""

    _rpc = None            # (node, seconds, own)

    def set_exception(self, exception):
        if self._rpc is not None:
            exception = translate(exception, *self._rpc)
        super().set_exception(exception)


# ------------------------------------------------------------------ API

def node():
    """Returns the helper's node name, an :class:`Atom`:
    ``nonode@nohost`` when it was started without the ``node`` start
    option.  The first call starts the helper.  Raises
    :class:`HelperExited` when the helper cannot start.

    >>> erlang.start(node="py")
    >>> erlang.node()
    Atom('py@myhost')
    """
    return _call("erlang", "node", [])


def nodes():
    """Returns the names (:class:`Atom`) of the nodes the helper is
    connected to, visible and hidden ones, as a list (empty without
    distribution).  Raises :class:`HelperExited` when the helper cannot
    start.

    >>> erlang.connect("w1@myhost")
    True
    >>> erlang.nodes()
    [Atom('w1@myhost')]
    """
    return _call("erlang", "nodes", [[Atom("visible"), Atom("hidden")]])


def connect(node):
    """Connects the helper to ``node`` (a ``str`` or :class:`Atom`,
    ``name@host``) with ``net_kernel:connect_node/1``; returns True when
    connected (or already), False when the node cannot be reached, refuses
    the connection (another cookie) or the helper is not distributed.  It
    may take several seconds for a host that does not answer (OTP's
    ``net_setuptime``).

    Raises ``TypeError`` for a node name that is not a str,
    ``ValueError`` for one without an ``@``, :class:`HelperExited` when
    the helper cannot start.

    >>> erlang.connect("w1@myhost")
    True
    """
    return _call("net_kernel", "connect_node", [_node(node)]) is True


def disconnect(node):
    """Disconnects the helper from ``node`` (``str`` or :class:`Atom`) with
    ``erlang:disconnect_node/1``; returns True if it was connected (and now
    is not), False otherwise.  Raises ``TypeError``/``ValueError`` for a bad
    node name, :class:`HelperExited` when the helper cannot start.

    >>> erlang.disconnect("w1@myhost")
    True
    """
    return _call("erlang", "disconnect_node", [_node(node)]) is True


def rpc(node, module, function, args=(), timeout=None):
    """Calls ``module:function(args...)`` on another Erlang node and returns
    its value: ``erpc:call/5`` run in the helper, which connects to ``node``
    first if need be.  ``node`` is a ``str`` or :class:`Atom`
    (``name@host``); ``module`` and ``function`` are names, ``args`` a list
    or tuple.  ``timeout`` (seconds; None: the ``call_timeout`` start
    option, by default no limit) is also erpc's own.

    Raises :class:`NodeDown` when the node cannot be reached or goes down
    (or its connection is lost) during the call; :class:`Error` when the
    remote function raises (erpc reports it as ``{exception, Reason,
    Stack}`` for an error, or passes on a throw or exit); :class:`CallTimeout`
    when ``timeout`` elapses; ``TypeError``/``ValueError`` for a bad node
    name or arguments (nothing is sent); :class:`HelperExited`.

    >>> erlang.rpc("w1@myhost", "erlang", "node")
    Atom('w1@myhost')
    """
    payload, n, seconds, own, helper_timeout = rpc_request(node, module, function, args,
                                                           timeout)
    try:
        return _erlang._request(_K_APPLY, payload, helper_timeout)
    except Error as e:
        t = translate(e, n, seconds, own)
        if t is e:
            raise
        raise t from None


def rpc_async(node, module, function, args=(), timeout=None):
    """Calls ``module:function(args...)`` on ``node`` like :func:`rpc`
    (``timeout`` as there), but returns a :class:`concurrent.futures.Future`
    at once; the call runs in an Erlang process of its own in the helper, so
    many run at the same time (see :func:`erlang.apply_async` for
    cancelling).  ``fut.result()`` returns the value or raises what
    :func:`rpc` would: :class:`NodeDown`, :class:`Error`,
    :class:`CallTimeout`, :class:`HelperExited`.  A bad node name or
    arguments raise ``TypeError``/``ValueError`` here, before anything is
    sent.

    >>> futs = [erlang.rpc_async(n, "erlang", "node") for n in ("w1@myhost", "w2@myhost")]
    >>> [f.result() for f in futs]
    [Atom('w1@myhost'), Atom('w2@myhost')]
    """
    payload, n, seconds, own, helper_timeout = rpc_request(node, module, function, args,
                                                           timeout)
    fut = _RpcFuture()
    fut._rpc = (n, seconds, own)
    return _async._submit_future(lambda w, f: _erlang._submit(w, f, _K_APPLY, payload),
                                 helper_timeout, fut)

