"""Erlang calls from asyncio: ``await erlang.asyncio.call(...)``.

Each event loop gets a waker whose descriptor it watches (``add_reader``):
replies wake the loop, which completes the calls' futures.  Nothing blocks
the loop: requests are written without blocking (or queued), and a call
that finds the outbound queue full waits for room with ``asyncio.sleep``,
its timeout counting.  Works with any loop that supports ``add_reader``
(the default selector loop, uvloop).

Cancelling the awaiting task (``task.cancel()``, ``asyncio.wait_for``
running out, ``timeout=``) kills the Erlang process running that call; its
late reply is dropped.
"""
import asyncio as _asyncio
import weakref as _weakref

from . import _async, _dist, _erlang, _helper
from ._errors import Error

__all__ = ["call", "apply", "eval", "rpc"]

# loop -> _LoopWaker.  Weak: a loop that is gone takes its waker with it,
# which withdraws the calls still pending on it.
_wakers = _weakref.WeakKeyDictionary()


class _LoopWaker:
    __slots__ = ("waker", "__weakref__")

    def __init__(self, loop):
        self.waker = _erlang.Waker()
        loop.add_reader(self.waker.fileno(), _ready, self.waker)


def _ready(waker):
    try:
        finished = waker.take()
    except ValueError:           # closed under us
        return
    for ref, ok, value in finished:
        fut = ref()
        if fut is None or fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _waker_of(loop):
    w = _wakers.get(loop)
    if w is None:
        # A new loop: the wakers of loops closed meanwhile are no use any
        # more, and may still hold calls (a closed loop kept referenced):
        # withdraw them now.
        for old in [lp for lp in list(_wakers) if lp.is_closed()]:
            dead = _wakers.pop(old, None)
            if dead is not None:
                dead.waker.close()
        w = _wakers[loop] = _LoopWaker(loop)
    return w.waker


async def _started():
    """Starts the helper, if none runs, in a thread: start-up takes a
    tenth of a second or more, and the loop must not wait for it."""
    if not _erlang.is_running() or _helper.starting():
        loop = _asyncio.get_running_loop()
        await loop.run_in_executor(None, _helper.autostart)


def _expire(fut, seq, seconds, own):
    if not fut.done() and _erlang._withdraw(seq) is not None:
        fut.set_exception(_async.timeout_error(seconds, own))


def _submit(waker, ref, kind, what, args):
    if kind is None:
        return _erlang._submit_call(waker, ref, what, *args)
    return _erlang._submit(waker, ref, kind, what)


async def _run(kind, what, args, timeout):
    """Submits one async call (kind None: call `what` with `args`; else APPLY
    or EVAL of the payload `what`) and awaits its reply."""
    seconds, own = _async.limit(timeout)
    if seconds == 0:
        raise _async.timeout_error(0, own, sent=False)
    loop = _asyncio.get_running_loop()
    if not _erlang.is_running() or _helper.starting():
        await _started()
    waker = _waker_of(loop)
    fut = loop.create_future()
    # The pending call holds the future weakly: a task nobody awaits any
    # more does not keep it (nor the loop) alive from C.
    ref = _weakref.ref(fut)
    seq = _submit(waker, ref, kind, what, args)
    if seq is None or seconds is not None:
        deadline = None if seconds is None else loop.time() + seconds
        while seq is None:            # the outbound queue is full: wait for room
            if deadline is not None and loop.time() >= deadline:
                raise _async.timeout_error(seconds, own, sent=False)
            await _asyncio.sleep(0.001)
            seq = _submit(waker, ref, kind, what, args)
        timer = None if deadline is None else loop.call_at(
            deadline, _expire, fut, seq, seconds, own)
    else:
        timer = None
    try:
        return await fut
    except BaseException:
        # Cancelled (or the loop is going away): take the call back.
        if not fut.done() or fut.cancelled():
            _erlang._withdraw(seq)
        raise
    finally:
        if timer is not None:
            timer.cancel()


async def call(name, /, *args, timeout=None):
    """Awaitable :func:`erlang.call`: ``await erlang.asyncio.call("double_it", 21)``."""
    return await _run(None, name, args, timeout)


async def apply(module, function, args=(), timeout=None):
    """Awaitable :func:`erlang.apply`."""
    return await _run(_async.K_APPLY, _async.apply_payload(module, function, args), None, timeout)


async def eval(source, timeout=None):
    """Awaitable :func:`erlang.eval`."""
    return await _run(_async.K_EVAL, _async.eval_payload(source), None, timeout)


async def rpc(node, module, function, args=(), timeout=None):
    """Awaitable :func:`erlang.rpc`: ``await erlang.asyncio.rpc("w1@host",
    "erlang", "node")``; raises what it raises (:class:`erlang.NodeDown`
    when the node cannot be reached or goes down during the call)."""
    payload, n, seconds, own, helper_timeout = _dist.rpc_request(
        node, module, function, args, timeout)
    try:
        return await _run(_async.K_APPLY, payload, None, helper_timeout)
    except Error as e:
        t = _dist.translate(e, n, seconds, own)
        if t is e:
            raise
        raise t from None
