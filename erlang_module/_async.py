"""Many calls in flight: futures and erlang.map.

An async call is not a thread's: the C core submits it without blocking and
hands its reply to a *waker* (``_erlang.Waker``), a queue of finished calls
with a descriptor that turns readable when the queue fills.  In the helper
each async call runs in a process of its own, so any number run at once,
and withdrawing a call (a timeout, ``Future.cancel()``) kills exactly that
process.

* ``call_async``/``apply_async`` return ``concurrent.futures.Future``s; one
  daemon thread, ``erlang-futures``, waits on their common waker and
  completes them, and expires their timeouts.
* ``map`` runs in the consuming thread with a waker of its own: no Future
  objects, no hand-over to another Python thread.
* ``erlang.asyncio`` gives each event loop a waker it watches with
  ``add_reader``.
"""
import heapq
import math
import threading
import time
from concurrent.futures import Future, InvalidStateError

from . import _erlang, _helper
from ._errors import CallTimeout
from ._types import Atom

# Request kinds (erlang_module/protocol.h)
K_APPLY = _erlang.K_APPLY
K_EVAL = _erlang.K_EVAL

# Timeouts longer than this (about 31 years) mean no limit, as for call().
_TIMEOUT_MAX = 1e9


def limit(timeout):
    """The time limit of a call in seconds (None: none), from its timeout
    argument (None: the call_timeout start option), checked as call() checks
    it.  0 means no time to wait: the call is not sent."""
    if timeout is None:
        timeout = _helper._options.get("call_timeout")
        if timeout is None:
            return None, False
        own = False
    else:
        own = True
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError("timeout must be a number or None, not %s" % type(timeout).__name__)
    try:
        t = float(timeout)
    except OverflowError:
        t = math.inf if timeout > 0 else -1.0
    if not t >= 0:
        raise ValueError("timeout must be >= 0 (or None)")
    return (None if t > _TIMEOUT_MAX else t), own


def timeout_error(seconds, own, sent=True):
    name = "timeout" if own else "call_timeout"
    if not sent:
        return CallTimeout("%s=%g s leaves no time for a reply: the call was not sent"
                           % (name, seconds))
    return CallTimeout("no reply within %s=%g s" % (name, seconds))


def apply_payload(module, function, args):
    for what, v in (("module", module), ("function", function)):
        if not isinstance(v, str):
            raise TypeError("%s must be a str, not %s" % (what, type(v).__name__))
    if not isinstance(args, (list, tuple)):
        raise TypeError("args must be a list or tuple, not %s" % type(args).__name__)
    return (Atom(module), Atom(function), list(args))


def eval_payload(source):
    if not isinstance(source, str):
        raise TypeError("source must be a str, not %s" % type(source).__name__)
    return source


# ------------------------------------------------------------------ futures

class _CallFuture(Future):
    """A Future whose cancel() also cancels the call in the helper."""

    _seq = None

    def cancel(self):
        if not super().cancel():
            return False
        if self._seq is not None:
            _erlang._withdraw(self._seq)
        return True

    # A thread that waits for one of these futures completes them itself
    # while it waits (the futures thread steps aside meanwhile): no hand-over
    # to another thread per reply.  It is also what lets a done-callback,
    # which runs in the futures thread, wait for another of these futures.
    def result(self, timeout=None):
        if not self.done():
            _help_until_done(self, timeout)
        return super().result(timeout)

    def exception(self, timeout=None):
        if not self.done():
            _help_until_done(self, timeout)
        return super().exception(timeout)


def _help_until_done(fut, timeout):
    """Waits for fut, completing futures meanwhile: the thread waiting here
    becomes the one that takes replies from the waker (the *pump*) if no
    thread is; otherwise it sleeps until the pump has completed a batch."""
    r = _runner
    if r is None:
        return
    me = threading.get_ident()
    end = None if timeout is None else time.monotonic() + timeout
    cond = r.cond
    with cond:
        r.waiting += 1
        try:
            while not fut.done():
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return
                if r.pump == me:
                    # A done-callback of ours waits for another future.
                    cond.release()
                    try:
                        r.run_once(left)
                    finally:
                        cond.acquire()
                elif r.pump is None:
                    r.pump = me
                    cond.release()
                    try:
                        r.run_once(left)
                    finally:
                        cond.acquire()
                        r.pump = None
                        cond.notify_all()
                else:
                    cond.wait(left)
        finally:
            r.waiting -= 1
            cond.notify_all()


class _Runner:
    """Completes call_async/apply_async futures.  One thread at a time takes
    the replies from the waker and completes their futures (the pump): a
    thread waiting in result() when there is one, else the futures thread.
    Every other waiting thread sleeps on `cond` until a batch is done."""

    def __init__(self):
        self.waker = _erlang.Waker()
        self.lock = threading.Lock()          # the deadlines
        self.cond = threading.Condition(threading.Lock())
        self.pump = None           # ident of the thread taking replies, or None
        self.waiting = 0           # threads waiting in result()
        self.deadlines = []        # heap of (deadline, n, future, seconds, own)
        self.n = 0
        self.thread = threading.Thread(target=self._main, name="erlang-futures", daemon=True)
        self.thread.start()

    def add_deadline(self, fut, seconds, own):
        with self.lock:
            self.n += 1
            entry = (time.monotonic() + seconds, self.n, fut, seconds, own)
            first = not self.deadlines or entry < self.deadlines[0]
            heapq.heappush(self.deadlines, entry)
        if first:
            self.waker.kick()      # the pump recomputes how long it waits

    def _main(self):
        cond = self.cond
        me = threading.get_ident()
        while True:
            with cond:
                # Threads waiting in result() pump for themselves.
                while self.pump is not None or self.waiting:
                    cond.wait()
                self.pump = me
            try:
                self.run_once(None)
            finally:
                with cond:
                    self.pump = None
                    cond.notify_all()

    def run_once(self, limit):
        """Waits (at most `limit` seconds, or until the next deadline) for
        finished calls, and completes them and the expired ones.  By the
        pump only."""
        with self.lock:
            wait = (max(0.0, self.deadlines[0][0] - time.monotonic())
                    if self.deadlines else None)
        if limit is not None:
            wait = limit if wait is None else min(wait, limit)
        if self.waker.wait(wait):
            finished = self.waker.take()
            for fut, ok, value in finished:
                _settle(fut, ok, value)
            if finished and self.waiting:
                with self.cond:
                    self.cond.notify_all()
        if self.deadlines:
            self._expire()

    def _expire(self):
        now = time.monotonic()
        while True:
            with self.lock:
                if not self.deadlines or self.deadlines[0][0] > now:
                    return
                _, _, fut, seconds, own = heapq.heappop(self.deadlines)
            if not fut.done() and _erlang._withdraw(fut._seq) is not None:
                _settle(fut, False, timeout_error(seconds, own))


def _settle(fut, ok, value):
    try:
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    except InvalidStateError:
        pass                       # cancelled meanwhile


_runner = None
_runner_lock = threading.Lock()


def _the_runner():
    global _runner
    r = _runner
    if r is None:
        with _runner_lock:
            if _runner is None:
                _runner = _Runner()
            r = _runner
    return r


def _submit_future(submit, timeout, fut=None):
    """Submits a call and returns its future: `fut` (a _CallFuture not yet
    used), or a new _CallFuture."""
    seconds, own = limit(timeout)
    if fut is None:
        fut = _CallFuture()
    if seconds == 0:
        fut.set_exception(timeout_error(0, own, sent=False))
        return fut
    runner = _the_runner()
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        seq = submit(runner.waker, fut)
        if seq is not None:
            break
        # The outbound queue is full (the helper is not reading): wait for
        # room, the timeout counting.
        if deadline is not None and time.monotonic() >= deadline:
            fut.set_exception(CallTimeout(
                "%s=%g s passed while the outbound queue was full: the call was not sent"
                % ("timeout" if own else "call_timeout", seconds)))
            return fut
        time.sleep(0.001)
    fut._seq = seq
    if seconds is not None:
        runner.add_deadline(fut, seconds, own)
    return fut


def call_async(name, /, *args, timeout=None):
    """Calls the Erlang function registered as ``name`` with ``args``, like
    :func:`erlang.call`, but returns a :class:`concurrent.futures.Future` at
    once: no thread waits for the reply, and the call runs in an Erlang
    process of its own, so any number run at the same time.

    ``fut.cancel()`` while the call runs kills that Erlang process; its late
    reply is dropped.  ``timeout`` (seconds; None: the ``call_timeout`` start
    option) makes the future fail with :class:`CallTimeout` and likewise
    kills the call; 0 fails it at once without sending.

    ``fut.result()`` returns the value or raises what :func:`erlang.call`
    would: :class:`Error`, :class:`UndefinedFunction`, :class:`CallTimeout`,
    :class:`HelperExited` (the helper died: every pending future fails).
    Arguments that cannot be encoded raise ``TypeError``/``ValueError`` here,
    before anything is sent.  Done-callbacks run in the ``erlang-futures``
    thread.

    >>> erlang.call_async("double_it", 21).result()
    42
    """
    return _submit_future(lambda w, f: _erlang._submit_call(w, f, name, *args), timeout)


def apply_async(module, function, args=(), timeout=None):
    """Calls ``module:function(args...)`` like :func:`erlang.apply`, returning
    a :class:`concurrent.futures.Future` at once (see :func:`call_async` for
    cancelling, ``timeout`` and what ``fut.result()`` raises: :class:`Error`,
    :class:`UndefinedFunction`, :class:`CallTimeout`, :class:`HelperExited`).
    A ``module`` or ``function`` that is not a str, or ``args`` that is not a
    list or tuple, raises ``TypeError`` here.

    >>> erlang.apply_async("lists", "reverse", [[1, 2, 3]]).result()
    [3, 2, 1]
    """
    payload = apply_payload(module, function, args)
    return _submit_future(lambda w, f: _erlang._submit(w, f, K_APPLY, payload), timeout)


# ---------------------------------------------------------------------- map

def map(name, /, *iterables, timeout=None, in_flight=64):
    """Calls the Erlang function registered as ``name`` once for each item of
    ``iterables`` (``name(a, b, ...)`` for each tuple of zipped items, as
    :meth:`concurrent.futures.Executor.map` does), keeping up to
    ``in_flight`` calls running at once, and yields the results in input
    order.  The calls run concurrently in the helper; the consuming thread
    waits for them without any Future objects or other threads.

    The inputs are read lazily, as room for more calls frees up.  An Erlang
    exception (:class:`Error`, :class:`UndefinedFunction`), an input that
    cannot be encoded (``TypeError``/``ValueError``) or an exception raised
    by the iterable itself is raised when its item is reached; the calls
    still in flight are then cancelled, as they are when the generator is
    closed.  ``timeout`` (seconds; None: the ``call_timeout`` start option)
    counts from this call, as in ``Executor.map``: an item not there by then
    raises :class:`CallTimeout`.  :class:`HelperExited` if the helper dies.

    >>> results = erlang.map("double_it", range(5), in_flight=64)
    >>> list(results)
    [0, 2, 4, 6, 8]
    """
    if not isinstance(name, (str, bytes)):
        raise TypeError("function name must be str or bytes, not %s" % type(name).__name__)
    if isinstance(in_flight, bool) or not isinstance(in_flight, int):
        raise TypeError("in_flight must be an int, not %s" % type(in_flight).__name__)
    if in_flight < 1:
        raise ValueError("in_flight must be >= 1")
    seconds, own = limit(timeout)
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    items = zip(*iterables)
    deadline = None if seconds is None else time.monotonic() + seconds
    return _map(name, items, seconds, own, deadline, in_flight)


def _map(name, items, seconds, own, deadline, in_flight):
    waker = _erlang.Waker()
    submit = _erlang._submit_call
    done = {}                  # index -> (ok, value), finished out of order
    seqs = {}                  # index -> Seq, still pending
    failed = {}                # index -> exception raised before sending
    sent = taken = 0           # items read from the input; results yielded
    source_error = None
    try:
        while True:
            while source_error is None and sent - taken < in_flight:
                try:
                    args = next(items)
                except StopIteration:
                    source_error = StopIteration
                    break
                except BaseException as e:
                    source_error = e
                    break
                if seconds == 0:
                    failed[sent] = timeout_error(0, own, sent=False)
                else:
                    try:
                        seq = submit(waker, sent, name, *args)
                        while seq is None:      # outbound queue full
                            if deadline is not None and time.monotonic() >= deadline:
                                raise timeout_error(seconds, own, sent=False)
                            time.sleep(0.001)
                            seq = submit(waker, sent, name, *args)
                        seqs[sent] = seq
                    except Exception as e:
                        failed[sent] = e
                sent += 1
            if taken == sent:
                if source_error is not StopIteration and source_error is not None:
                    raise source_error
                return
            if taken in failed:
                raise failed.pop(taken)
            while taken not in done:
                wait = None
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        raise timeout_error(seconds, own)
                if waker.wait(wait):
                    for i, ok, value in waker.take():
                        done[i] = (ok, value)
            ok, value = done.pop(taken)
            del seqs[taken]
            taken += 1
            if not ok:
                raise value
            yield value
    finally:
        for seq in seqs.values():
            _erlang._withdraw(seq)
        waker.close()


def _after_fork_in_child():
    # The runner thread and its waker belong to the parent.  The futures
    # that were pending there fail here (the C core finished them as dead:
    # the parent's helper will never answer the child).
    global _runner, _runner_lock
    old, _runner = _runner, None
    _runner_lock = threading.Lock()
    if old is not None:
        for fut, ok, value in old.waker.take():
            _settle(fut, ok, value)
        old.waker.close()


import os as _os  # noqa: E402

_os.register_at_fork(after_in_child=_after_fork_in_child)
