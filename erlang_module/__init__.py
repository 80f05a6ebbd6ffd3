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
from ._errors import CallTimeout, Error, HelperExited, UndefinedFunction
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

# Request kinds (erlang_module/protocol.h)
_K_APPLY = 2
_K_EVAL = 3


def apply(module, function, args=(), timeout=None):
    """Calls ``Module:Function(Args...)`` in the helper and returns its value.

    ``module`` and ``function`` are names (str or Atom); ``args`` a list or
    tuple.  An undefined function raises :class:`UndefinedFunction`."""
    for what, v in (("module", module), ("function", function)):
        if not isinstance(v, str):
            raise TypeError("%s must be a str, not %s" % (what, type(v).__name__))
    if not isinstance(args, (list, tuple)):
        raise TypeError("args must be a list or tuple, not %s" % type(args).__name__)
    return _erlang._request(_K_APPLY, (Atom(module), Atom(function), list(args)), timeout)


def eval(source, timeout=None):
    """Evaluates Erlang expressions (``"X = 1, X + 1."``) in the helper and
    returns the value of the last one.  The trailing dot is optional; each
    call starts with no variables bound."""
    if not isinstance(source, str):
        raise TypeError("source must be a str, not %s" % type(source).__name__)
    return _erlang._request(_K_EVAL, source, timeout)


def load_module(path_or_source, timeout=None):
    """Compiles an Erlang module and loads it into the helper; returns the
    module's name as an :class:`Atom`.

    Takes the path of an ``.erl`` file, or the source text itself.  Compile
    errors raise :class:`Error` with reason ``('compile_error', Messages)``.
    Modules loaded this way are gone when the helper restarts: load them
    again from the ``on_start`` start option (or pass them as ``modules``)."""
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


def start(**options):
    """Starts the helper explicitly (the first call otherwise starts it with
    the defaults).  Options:

    ``erl``           path of ``erl`` (default: ``$ERL``, then ``erl`` on PATH)
    ``args``          extra ``erl`` flags, e.g. ``["-sname", "py"]``
    ``code_path``     directories added with ``-pa``
    ``modules``       ``.erl`` files compiled and loaded at every start
    ``timeout``       seconds to wait for the helper's hello (default 30)
    ``call_timeout``  default ``timeout`` of every call (default None: none)
    ``binaries``      ``"str"`` (default) or ``"bytes"``: how binaries decode
    ``on_start``      callable run after every start (re-register functions)
    ``env``           extra environment variables for the helper
    ``after_fork``    ``"restart"`` (default): a forked child's first call
                      starts a helper of its own; ``"error"``: it raises
                      HelperExited until the child calls start()

    After the helper dies, the next call starts a new one with the same
    options."""
    _helper.start(**options)


def stop(timeout=5.0):
    """Stops the helper (it halts when its stdin closes; killed after
    ``timeout`` seconds).  Returns True if one was running."""
    return _helper.stop(timeout)


# The public classes are erlang.X wherever they are defined: tracebacks and
# reprs show the name users import (pickle finds them there too).
for _cls in (Atom, BitString, Fun, ImproperList, Pid, Port, Reference,
             CallTimeout, Error, HelperExited, UndefinedFunction):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "Atom", "BitString", "CallTimeout", "Error", "Fun", "HelperExited",
    "ImproperList", "Pid", "Port", "Reference", "UndefinedFunction",
    "apply", "binary_to_term", "call", "eval", "is_running", "load_module",
    "start", "stop", "term_to_binary",
]
