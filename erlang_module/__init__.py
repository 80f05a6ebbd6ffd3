"""Call Erlang/OTP functions from Python.

``import erlang`` and call a registered Erlang function::

    erlang.eval("py:register_function(double_it, fun([X]) -> X * 2 end).")
    erlang.call("double_it", 21)          # -> 42

The first call starts a helper BEAM (an ``erl`` child process); every Python
thread may call at once, each through its own pipe, with the GIL released
while it waits.  See the README for the API, the type table and the error
model.
"""
import os as _os
import threading as _threading

from ._version import __version__
from ._types import Atom, BitString, Fun, ImproperList, Pid, Port, Reference
from ._errors import CallTimeout, Error, HelperExited, NodeDown, UndefinedFunction
from . import _erlang, _errors, _helper

_erlang._init_types(Atom, Pid, Reference, Port, Fun, ImproperList, BitString)
_erlang._init_runtime(
    _helper.autostart,
    _errors.make_error,
    _errors.make_exited,
    _helper.write_output,
    CallTimeout,
    _threading.main_thread().ident,
)

from ._erlang import binary_to_term, call, is_running, term_to_binary  # noqa: E402
from ._async import apply_async, call_async, map  # noqa: E402
from ._callbacks import export, exported, unexport  # noqa: E402
from ._mailbox import Mailbox, MailboxClosed, send, whereis  # noqa: E402
from ._dist import connect, disconnect, node, nodes, rpc, rpc_async  # noqa: E402

# Request kinds (erlang_module/protocol.h)
_K_APPLY = _erlang.K_APPLY
_K_EVAL = _erlang.K_EVAL


def apply(module, function, args=(), timeout=None):
    """Calls ``module:function(args...)`` in the helper and returns its value.

    ``module`` and ``function`` are names (``str`` or :class:`Atom`);
    ``args`` is a list or tuple of the arguments (its length is the arity).
    ``timeout`` is in seconds (``None``: the ``call_timeout`` start option,
    by default no limit).  The first call starts the helper.

    Raises :class:`UndefinedFunction` when the function does not exist,
    :class:`Error` when it raises (``kind``, ``reason``, ``stacktrace``),
    :class:`CallTimeout` when ``timeout`` elapses, :class:`HelperExited`
    when the helper is gone or cannot start, ``TypeError``/``ValueError``
    for arguments that cannot be sent (nothing is sent then).

    >>> erlang.apply("lists", "reverse", [[1, 2, 3]])
    [3, 2, 1]
    """
    for what, v in (("module", module), ("function", function)):
        if not isinstance(v, str):
            raise TypeError("%s must be a str, not %s" % (what, type(v).__name__))
    if not isinstance(args, (list, tuple)):
        raise TypeError("args must be a list or tuple, not %s" % type(args).__name__)
    return _erlang._request(_K_APPLY, (Atom(module), Atom(function), list(args)), timeout)


def eval(source, timeout=None):
    """Evaluates Erlang expressions in the helper and returns the value of
    the last one.

    ``source`` is Erlang text (``str``), e.g. ``"X = 1, X + 1."``; the
    trailing dot is optional, several dot-separated forms share their
    bindings, and each call starts with no variables bound.  ``timeout`` as
    for :func:`call`.

    Raises :class:`Error` with reason ``('syntax_error', Message)`` for text
    that does not parse, :class:`Error` when evaluation raises,
    :class:`CallTimeout`, :class:`HelperExited`; ``TypeError`` when
    ``source`` is not a ``str``.

    >>> erlang.eval("lists:seq(1, 3).")
    [1, 2, 3]
    """
    if not isinstance(source, str):
        raise TypeError("source must be a str, not %s" % type(source).__name__)
    return _erlang._request(_K_EVAL, source, timeout)


def load_module(path_or_source, timeout=None):
    """Compiles an Erlang module and loads it into the helper; returns the
    module's name as an :class:`Atom`.

    ``path_or_source`` is the path of an ``.erl`` file (``str`` or path
    object), or the source text itself (a ``str`` holding ``-module(`` or a
    newline).  The preprocessor
    runs (``-include`` looks next to the file); loading a module again
    replaces it.  Modules loaded this way are gone when the helper
    restarts: load them from the ``on_start`` start option, or pass them as
    the ``modules`` start option.  ``timeout`` as for :func:`call`.

    Raises :class:`Error` with reason ``('compile_error', Messages)``,
    ``('load_error', Module, Why)`` or ``('reserved_module', Module)`` (a
    name of the helper's own), ``OSError`` when the file cannot be read,
    ``TypeError`` for anything but a path or text, :class:`CallTimeout`,
    :class:`HelperExited`.

    >>> erlang.load_module("-module(m). -export([f/0]). f() -> 42.")
    Atom('m')
    >>> erlang.apply("m", "f", [])
    42
    """
    src = path_or_source
    if isinstance(src, _os.PathLike) or (
        isinstance(src, str) and "\n" not in src and "-module(" not in src
    ):
        fname = _os.fspath(src)
        # The bytes as they are: the compiler reads them as erlc would
        # (UTF-8, or latin-1 under a "coding: latin-1" comment).
        with open(fname, "rb") as f:
            text = f.read()
    elif isinstance(src, str):
        fname, text = "nofile", src
    else:
        raise TypeError("load_module takes a path or source text, not %s" % type(src).__name__)
    return _erlang._request(_K_APPLY, (Atom("py"), Atom("load_source"), [text, fname]), timeout)


def start(*, erl=None, args=(), code_path=(), modules=(), timeout=30.0,
          call_timeout=None, binaries="str", on_start=None, env=None,
          after_fork="restart", elixir=False, python_workers=8, node=None,
          cookie=None, dist="loopback", hidden=False, net_ticktime=None, tls=None):
    """Starts the helper explicitly (otherwise the first call starts it with
    the default options).  Keyword options:

    ``erl``           path of ``erl`` (str, bytes or path object; default:
                      ``$ERL``, then ``erl`` on PATH)
    ``args``          extra ``erl`` flags, e.g. ``["+A", "4"]`` (a node: ``node``)
    ``code_path``     directories added with ``-pa``
    ``modules``       ``.erl`` files compiled and loaded at every start
    ``timeout``       seconds to wait for the helper's hello (default 30)
    ``call_timeout``  default ``timeout`` of every call (default None: none)
    ``binaries``      ``"str"`` (default) or ``"bytes"``: how binaries decode
    ``on_start``      callable run after every start (re-register functions)
    ``env``           extra environment variables for the helper (str: str)
    ``after_fork``    ``"restart"`` (default): a forked child's first call
                      starts a helper of its own; ``"error"``: it raises
                      HelperExited until the child calls start()
    ``elixir``        True: put the Elixir on PATH on the code path and start
                      its ``elixir`` application; or the path of an
                      ``elixir`` executable.  Then ``nil`` decodes to None
                      and None encodes as ``nil`` (``undefined`` stays an
                      Atom), and Elixir exceptions carry Elixir's message.
                      FileNotFoundError if there is no Elixir there.
    ``python_workers`` threads that run Python exports called from Erlang
                      processes other than a waiting call's own (spawned
                      processes, timers, ``py:cast_python``; default 8)
    ``node``          make the helper an Erlang node: ``"py"`` (a short name,
                      py@<this host>), ``"py@host"`` (short), or
                      ``"py@host.domain"`` (a long name); default None: no
                      distribution, and no epmd is started
    ``cookie``        the node's cookie (str), sent over the channel, never
                      put in the helper's argv or environment; default:
                      erl's, from ~/.erlang.cookie (made if missing)
    ``dist``          ``"loopback"`` (default): distribution listens on
                      127.0.0.1 only (and epmd, if the start starts it);
                      ``"all"``: on every interface
    ``hidden``        True: a hidden node (default False)
    ``net_ticktime``  seconds (int) after which a silent peer counts as
                      down (default None: OTP's, 60)
    ``tls``           distribution over TLS: a dict with ``certfile`` (this
                      node's certificate), ``keyfile`` (its private key;
                      default: in certfile) and ``cacertfile`` (the CA that
                      signs every node's certificate).  Peers are verified
                      both ways; a node without a certificate that
                      cacertfile trusts cannot connect (default None: TCP)

    After the helper dies, the next call starts a new one with the same
    options; the options of a start that failed are kept too.

    Raises ``RuntimeError`` when a helper is already running (call
    :func:`stop` first); ``TypeError``/``ValueError`` for a bad option,
    ``FileNotFoundError`` for a missing ``modules`` or ``tls`` file (before
    anything starts); :class:`HelperExited` when ``erl`` is not found, the helper's
    files are missing, or the helper cannot start or sends no hello within
    ``timeout`` (with its exit status and stderr), or distribution cannot
    start (e.g. epmd already has a node of that name); whatever ``on_start`` or
    loading ``modules`` raises (the helper is stopped again).

    >>> erlang.start(node="py", cookie="secret", call_timeout=10)   # py@<host>
    """
    _helper.start(erl=erl, args=args, code_path=code_path, modules=modules,
                  timeout=timeout, call_timeout=call_timeout, binaries=binaries,
                  on_start=on_start, env=env, after_fork=after_fork, elixir=elixir,
                  python_workers=python_workers, node=node, cookie=cookie, dist=dist,
                  hidden=hidden, net_ticktime=net_ticktime, tls=tls)


def stop(timeout=5.0):
    """Stops the helper: closes its stdin, so that it halts, and kills it if
    it has not exited within ``timeout`` seconds.  Returns True if a helper
    was running, False otherwise.  Calls waiting on it raise
    :class:`HelperExited`; the next call starts a new helper.

    Raises ``TypeError``/``ValueError`` for a ``timeout`` that is not a
    number >= 0.

    >>> erlang.stop()
    True
    """
    return _helper.stop(timeout)


def info():
    """Returns a dict describing the running helper, or None when no helper
    runs (it never starts one).  Keys:

    ``otp_release`` (``"25"``), ``erts_version``, ``node`` (an
    :class:`Atom`, ``nonode@nohost`` without distribution), ``os_pid``,
    ``started_at`` (``time.time()`` when the start began),
    ``start_seconds`` (how long until the helper said hello), ``erl`` (the
    path started), ``protocol`` (the channel's protocol version) and
    ``version`` (this package's version).  Raises nothing.

    >>> erlang.info()["otp_release"]
    '25'
    """
    return _helper.info()


# The public classes are erlang.X wherever they are defined: tracebacks and
# reprs show the name users import (pickle finds them there too).
for _cls in (Atom, BitString, Fun, ImproperList, Pid, Port, Reference,
             CallTimeout, Error, HelperExited, NodeDown, UndefinedFunction, Mailbox,
             MailboxClosed):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "Atom", "BitString", "CallTimeout", "Error", "Fun", "HelperExited",
    "ImproperList", "Mailbox", "MailboxClosed", "NodeDown", "Pid", "Port", "Reference",
    "UndefinedFunction",
    "apply", "apply_async", "binary_to_term", "call", "call_async", "connect", "disconnect",
    "eval", "export", "exported", "info", "is_running", "load_module", "map", "node", "nodes",
    "rpc", "rpc_async", "send", "start", "stop", "term_to_binary", "unexport", "whereis",
]
