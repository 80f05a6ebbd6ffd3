"""Erlang calls Python: exports, and where a callback runs.

``py:call_python(Name, Args)`` in the helper sends a CALLBACK frame.  When
the Erlang process calling it is running a call of a Python thread that
waits for it (a synchronous ``erlang.call`` and friends), that thread runs
the function itself (the C core calls :func:`run` from its wait) and then
goes on waiting: calls the function makes go out on a worker of the next
nesting level, so Python -> Erlang -> Python -> ... nests as deep as the
stacks allow.  From any other Erlang process (a spawned one, a timer, an
async call's process, ``py:cast_python``) the function runs on the
``python_workers`` pool: threads started with the helper that take
CALLBACK frames from the C core's queue.

An ``async def`` export runs on the event loop that was running when it
was exported (from a pool thread: the thread waits for it there); one
exported with no loop running runs in a fresh loop of its own
(``asyncio.run``) on the pool thread.
"""
import logging
import threading
import traceback

# asyncio and inspect are imported when first needed: `import erlang` must
# stay cheap (asyncio alone is about 50 ms).

from . import _erlang
from ._types import Atom

_log = logging.getLogger("erlang.callbacks")

_exports = {}           # name -> (function, loop or None)
_lock = threading.Lock()
_OK, _ERROR = Atom("ok"), Atom("error")
_UNDEFINED = Atom("undefined")
_PYTHON = Atom("python")
_UNDEFINED_FUNCTION = Atom("undefined_python_function")
_K_CALLBACK_REPLY = _erlang.K_CALLBACK_REPLY
_MAX_TEXT = 8000


def _check_name(name):
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("an export's name must be UTF-8 text") from None
    if not isinstance(name, str):
        raise TypeError("an export's name must be a str, not %s" % type(name).__name__)
    if not name:
        raise ValueError("an export's name must not be empty")
    return str(name)


def export(fn=None, /, *, name=None):
    """Makes ``fn`` callable from Erlang as ``py:call_python(Name, Args)``
    (``Args`` a list: ``fn(*Args)``) and ``py:cast_python(Name, Args)``.

    Use as ``@erlang.export``, ``@erlang.export(name="area")`` or
    ``erlang.export(fn, name="area")``; the name defaults to
    ``fn.__name__``.  Returns ``fn``.  Exporting a name again replaces the
    function.  An ``async def`` function runs on the event loop running
    now (none running: a fresh loop for each call).

    ``TypeError`` when ``fn`` is not callable or ``name`` not a str;
    ``ValueError`` for an empty name.

    >>> @erlang.export
    ... def area(w, h):
    ...     return w * h
    >>> erlang.eval('py:call_python(<<"area">>, [3, 4]).')
    12
    """
    if fn is None:
        return lambda f: export(f, name=name)
    if not callable(fn):
        raise TypeError("export() needs a callable, not %s" % type(fn).__name__)
    if name is None:
        name = getattr(fn, "__name__", None)
        if not isinstance(name, str) or name == "<lambda>":
            raise TypeError("export() of %r needs name=..." % (fn,))
    key = _check_name(name)
    import asyncio
    import inspect
    loop = None
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
    with _lock:
        _exports[key] = (fn, loop, inspect.iscoroutinefunction(fn) or loop is not None)
    return fn


def unexport(name):
    """Removes the export ``name``; returns whether there was one.

    >>> erlang.unexport("area")
    True
    """
    key = _check_name(name)
    with _lock:
        return _exports.pop(key, None) is not None


def exported():
    """The exported names, sorted.

    >>> erlang.exported()
    ['area']
    """
    with _lock:
        return sorted(_exports)


def _text(s):
    s = str(s)
    return s if len(s) <= _MAX_TEXT else s[:_MAX_TEXT] + "... (%d characters)" % len(s)


def _python_error(exc):
    """{python, Type, Message, Traceback} for an exception (binaries)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (_PYTHON, type(exc).__qualname__, _text(exc), _text(tb))


def _invoke(fn, loop, is_async, args):
    if not is_async:
        return fn(*args)
    import asyncio
    import inspect
    coro = fn(*args)
    if not inspect.isawaitable(coro):
        return coro
    if loop is not None and not loop.is_closed():
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("an async export cannot run on its event loop from that "
                               "loop's own thread while it waits in a call")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
    return asyncio.run(coro)


def run(alias, name, args):
    """Runs one CALLBACK; returns the CALLBACK_REPLY payload (bytes), or None
    for a cast (``alias`` is ``undefined``).  Exceptions become
    ``{python, Type, Message, Traceback}``; only KeyboardInterrupt and
    SystemExit get through (after the reply is built: the caller decides)."""
    cast = alias == _UNDEFINED
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    entry = _exports.get(name) if isinstance(name, str) else None
    if entry is None:
        if cast:
            _log.warning("py:cast_python of %r: no such export", name)
            return None
        return _erlang.term_to_binary((alias, _ERROR, (_UNDEFINED_FUNCTION, name)))
    fn, loop, is_async = entry
    try:
        value = _invoke(fn, loop, is_async, args if isinstance(args, list) else list(args))
    except Exception as e:
        if cast:
            _log.error("py:cast_python of %r raised", name, exc_info=True)
            return None
        return _erlang.term_to_binary((alias, _ERROR, _python_error(e)))
    if cast:
        return None
    try:
        return _erlang.term_to_binary((alias, _OK, value))
    except Exception as e:
        err = TypeError("the value %s returned cannot be sent to Erlang: %s" % (name, e))
        return _erlang.term_to_binary((alias, _ERROR, _python_error(err)))


_erlang._set_callback_runner(run)


# ------------------------------------------------------------ the pool

_pool = []                 # threads of the python_workers pool
_pool_stop = False


def _pool_main():
    while not _pool_stop:
        try:
            item = _erlang._next_callback(1.0)
        except Exception:
            _log.exception("malformed CALLBACK from the helper")
            continue
        if item is None:
            continue
        worker, seq, alias, name, args = item
        try:
            reply = run(alias, name, args)
        except BaseException:   # KeyboardInterrupt/SystemExit in a pool thread
            _log.exception("callback %r interrupted", name)
            continue
        if reply is not None:
            _erlang._write_frame(_K_CALLBACK_REPLY, worker, seq, reply)


def ensure_pool(n):
    """Starts the pool's threads up to n (they live as long as the process)."""
    with _lock:
        while len(_pool) < n:
            t = threading.Thread(target=_pool_main, name="erlang-python-worker-%d" % len(_pool),
                                 daemon=True)
            t.start()
            _pool.append(t)


def _after_fork_in_child():
    global _pool, _lock
    _pool = []
    _lock = threading.Lock()


import os as _os  # noqa: E402

_os.register_at_fork(after_in_child=_after_fork_in_child)
