"""Messages between Erlang processes and Python: mailboxes, send, whereis.

A :class:`Mailbox` is a real Erlang process in the helper (``py_mailbox``):
whatever it receives it forwards to Python as a MESSAGE frame, in order.
The C core puts those frames on the mailbox's waker (a queue and a pipe),
and :meth:`Mailbox.receive` takes them from there.

Flow control: the mailbox process sends at most MAILBOX_WINDOW_MSGS
messages (and, past MAILBOX_WINDOW_BYTES of them, no more) that Python has
not credited back; Python credits a batch back as it takes messages out of
the C queue, and only takes more when everything taken so far has been
received or skipped.  So a consumer that falls behind holds at most two
windows on the Python side (what the C queue holds, and what a receive
took and has not delivered yet, plus messages a ``match=`` skips, which
stay queued as in Erlang), and the rest waits in the Erlang process.
"""
import collections
import os
import threading
import time

from . import _erlang
from ._errors import Error
from ._types import Atom, Pid, Reference

__all__ = ["Mailbox", "MailboxClosed", "send", "whereis"]

_K_SEND = _erlang.K_SEND
_K_CREDIT = _erlang.K_CREDIT
WINDOW_MSGS = _erlang.MAILBOX_WINDOW_MSGS
WINDOW_BYTES = _erlang.MAILBOX_WINDOW_BYTES
_UNDEFINED = Atom("undefined")
_PY = Atom("py")


def _py(function, args, timeout=None):
    """py:function(args...) in the helper (the mailbox requests)."""
    return _erlang._request(_erlang.K_APPLY, (_PY, Atom(function), args), timeout)


class MailboxClosed(RuntimeError):
    """The mailbox was closed (:meth:`Mailbox.close`) or its Erlang process
    exited (``exit(Pid, kill)`` from Erlang, for instance); ``reason`` is
    the process's exit reason (``'closed'`` after close()).  Raised by
    receive once the messages that came before are all taken."""

    def __init__(self, reason, message=None):
        self.reason = reason
        super().__init__(message or "the mailbox's process exited: %r" % (reason,))


def _name_of(name, what="name"):
    if isinstance(name, Atom):
        return name
    if isinstance(name, str):
        if not name:
            raise ValueError("%s must not be empty" % what)
        return Atom(name)
    raise TypeError("%s must be a str or Atom, not %s" % (what, type(name).__name__))


def _timeout_of(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError("timeout must be a number or None, not %s" % type(timeout).__name__)
    if not timeout >= 0:
        raise ValueError("timeout must be >= 0 (or None)")
    return float(timeout)


class Mailbox:
    """A Python mailbox: an Erlang process in the helper stands for it.

    ``Mailbox(name=None)``: with ``name`` (str or Atom) the process is
    registered under it, so Erlang code can send ``name ! Msg``
    (``Error`` with reason ``badarg`` if the name is taken).  ``pid`` is
    the process's :class:`Pid`: Erlang code can send to it, link to it,
    monitor it.  The first mailbox starts the helper if none runs.

    Messages arrive in order per sender, none lost, none duplicated;
    ``receive()`` takes the next one.  Use as a context manager, or call
    :meth:`close` (the process exits; later receives raise
    :class:`MailboxClosed`).

    >>> with erlang.Mailbox() as mb:
    ...     erlang.send(mb.pid, ("hello", 1))
    ...     mb.receive(timeout=5)
    ('hello', 1)
    """

    def __init__(self, name=None):
        reg = _UNDEFINED if name is None else str(_name_of(name))   # a binary
        self._waker = _erlang.Waker()
        self._lock = threading.Lock()
        self._items = collections.deque()   # (tag, value, nbytes) taken from the C queue
        self._credit = [0, 0]               # taken and not yet credited back: messages, bytes
        self._end = None                    # the exception every later receive raises
        self._closed = False
        self._waiters = 0                   # receives waiting (threads and tasks)
        self._filled = 0                    # _fill()s that brought something
        self._loop_waiters = {}             # event loop -> futures of areceives waiting
        self._owner_pid = os.getpid()
        self.name = None if name is None else str(name)
        try:
            self._id, self._helper = _erlang._mbox_open(self._waker)
        except BaseException:
            self._waker.close()
            raise
        try:
            self.pid = _py("open_mailbox", [self._id, reg])
        except BaseException:
            _erlang._mbox_close(self._helper, self._id)
            self._waker.close()
            raise

    def __repr__(self):
        state = " closed" if self._closed else ""
        return "<erlang.Mailbox %r%s%s>" % (getattr(self, "pid", None),
                                            " %s" % self.name if self.name else "", state)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self._closed and os.getpid() == self._owner_pid:
                self.close()
        except Exception:
            pass

    # ----------------------------------------------------------- taking

    def _fill(self):
        """Moves what reached the C queue into self._items; credits it
        back.  Lock held."""
        if self._end is not None or self._closed:
            return
        got = _erlang._mbox_take(self._waker)
        if not got:
            return
        n = b = 0
        for item in got:
            if item[0] <= 1:
                n += 1
                b += item[2]
        self._items.extend(got)
        self._filled += 1
        if n:
            self._credit[0] += n
            self._credit[1] += b
            if self._credit[0] >= WINDOW_MSGS // 2 or self._credit[1] >= WINDOW_BYTES // 2:
                msgs, nbytes = self._credit
                self._credit = [0, 0]
                _erlang._post_frame(_K_CREDIT, self._id, _erlang.term_to_binary((msgs, nbytes)))

    def _next(self, match):
        """The next deliverable item, removed; or None.  Lock held.  Raises
        the ValueError of an undecodable message, MailboxClosed or
        HelperExited once everything before it was taken."""
        if self._end is not None:
            raise self._end
        if self._closed:
            raise MailboxClosed(Atom("closed"), "the mailbox is closed")
        if os.getpid() != self._owner_pid:
            from ._errors import HelperExited
            raise HelperExited("this mailbox belongs to the parent process (it was made "
                               "before the fork), whose helper does not serve this one")
        for _ in range(2):
            items = self._items
            for i, (tag, value, _n) in enumerate(items):
                if tag == 0:
                    if match is not None and not match(value):
                        continue
                elif tag == 1:
                    if match is not None:
                        continue       # selective receive leaves it where it is
                else:
                    # The process exited, or the helper died: after every
                    # message that came before.
                    if tag == 2:
                        self._end = MailboxClosed(value)
                    else:
                        self._end = value
                    del items[i]
                    raise self._end
                del items[i]
                if tag == 1:
                    if isinstance(value, ValueError):
                        raise value
                    raise ValueError("a message that cannot be decoded: %s" % (value,)) from value
                return (value,)
            self._fill()
        return None

    def _take(self, match):
        """_next, and a wake-up for the other receives waiting when what
        is left may be theirs (the pipe was drained by this one).  Lock
        held."""
        filled = self._filled
        try:
            return self._next(match)
        finally:
            if self._waiters and self._filled != filled:
                self._waker.kick()

    def _attempt(self, match, deadline, timeout):
        """One try of a receive: ((msg,), None) when a message is there,
        else (None, seconds left to wait or None); TimeoutError past the
        deadline."""
        with self._lock:
            got = self._take(match)
        if got is not None:
            return got, None
        wait = None
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError("no message within %g s" % timeout)
        return None, wait

    def _deadline(self, timeout):
        t = _timeout_of(timeout)
        return None if t is None else time.monotonic() + t

    def receive(self, timeout=None, match=None):
        """Returns the next message (with ``match``: the first one for which
        ``match(msg)`` is true; the others stay queued, in order).  Waits
        up to ``timeout`` seconds (None: for ever), with the GIL released,
        then raises ``TimeoutError``; Ctrl-C interrupts it in the main
        thread.

        A message that cannot be decoded raises ``ValueError`` when it is
        reached (the next receive goes on with the rest);
        :class:`MailboxClosed` once the mailbox is closed or its process
        exited; :class:`HelperExited` when the helper died.
        """
        if match is not None and not callable(match):
            raise TypeError("match must be callable")
        deadline = self._deadline(timeout)
        while True:
            got, wait = self._attempt(match, deadline, timeout)
            if got is not None:
                return got[0]
            self._waiters += 1
            try:
                self._waker.wait(wait)
            finally:
                self._waiters -= 1

    async def areceive(self, timeout=None, match=None):
        """``receive`` for asyncio: waits on the running loop (the mailbox's
        pipe is watched with ``add_reader``), never blocking it."""
        if match is not None and not callable(match):
            raise TypeError("match must be callable")
        import asyncio   # here: `import erlang` does not pay for it
        loop = asyncio.get_running_loop()
        deadline = self._deadline(timeout)
        fd = self._waker.fileno()
        while True:
            got, wait = self._attempt(match, deadline, timeout)
            if got is not None:
                return got[0]
            ready = loop.create_future()
            self._watch(loop, fd, ready)
            self._waiters += 1
            try:
                await asyncio.wait_for(ready, wait)
            except asyncio.TimeoutError:
                pass
            finally:
                self._waiters -= 1
                self._unwatch(loop, fd, ready)

    def _watch(self, loop, fd, fut):
        """Adds fut to the futures the pipe's reader on loop wakes (one
        reader per loop, however many tasks wait: add_reader keeps only
        one callback per fd)."""
        futs = self._loop_waiters.get(loop)
        if futs is None:
            futs = self._loop_waiters[loop] = set()

            def readable():
                for f in list(futs):
                    if not f.done():
                        f.set_result(None)

            loop.add_reader(fd, readable)
        futs.add(fut)

    def _unwatch(self, loop, fd, fut):
        futs = self._loop_waiters.get(loop)
        if futs is None:
            return
        futs.discard(fut)
        if not futs:
            del self._loop_waiters[loop]
            if not loop.is_closed():
                loop.remove_reader(fd)

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.areceive()
        except MailboxClosed:
            raise StopAsyncIteration from None

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.receive()
        except MailboxClosed:
            raise StopIteration from None

    # ---------------------------------------------------------- control

    def monitor(self, target):
        """Monitors ``target`` (a :class:`Pid`, or a registered name as str
        or Atom) from the mailbox's process; returns the monitor's
        :class:`Reference`.  When the target exits (or does not exist), the
        message ``('DOWN', Ref, 'process', Object, Reason)`` arrives in this
        mailbox."""
        if isinstance(target, Pid):
            t = target
        elif isinstance(target, tuple) and len(target) == 2:
            t = (_name_of(target[0]), _name_of(target[1], "node"))
        else:
            t = str(_name_of(target, "target")).encode("utf-8")
        return self._control("mailbox_monitor", t)

    def monitor_node(self, node):
        """Monitors the Erlang node ``node`` (``str`` or :class:`Atom`,
        ``name@host``) from the mailbox's process, with
        ``erlang:monitor_node(Node, true)``: when the helper's connection to
        it is lost (the node stops or dies, or cannot be reached at all),
        the message ``('nodedown', Node)`` arrives in this mailbox.  The
        helper connects to the node first if need be, so this may take
        as long as :func:`erlang.connect`.  Each call adds a monitor, and
        each gives its own 'nodedown'.

        Raises ``TypeError``/``ValueError`` for a bad node name,
        :class:`Error` with reason ``notalive`` when the helper is not a
        node (no ``node`` start option), :class:`MailboxClosed` once the
        mailbox is closed.

        >>> mb.monitor_node("w1@myhost")
        >>> mb.receive()                  # after w1 went down
        ('nodedown', Atom('w1@myhost'))
        """
        from ._dist import _node   # the same checks as rpc()'s
        self._control("mailbox_monitor_node", _node(node))

    def demonitor_node(self, node):
        """Removes one monitor of ``node`` (``str`` or :class:`Atom`) made by
        :meth:`monitor_node`, with ``erlang:monitor_node(Node, false)`` in
        the mailbox's process: after two monitor_node calls and one
        demonitor_node, one 'nodedown' still comes.  With no monitor of
        ``node`` left it does nothing.  A ``('nodedown', Node)`` that
        already arrived (the node went down before this call) is not taken
        back: it is still received.  One still on its way is not: right
        after monitor_node of a node that cannot be reached, the helper
        may still be trying to connect, and then no 'nodedown' comes.

        Raises as :meth:`monitor_node` does: ``TypeError``/``ValueError``
        for a bad node name, :class:`Error` with reason ``notalive`` when
        the helper is not a node (as ``erlang:monitor_node/2`` raises on a
        node that is not alive), :class:`MailboxClosed` once the mailbox is
        closed.

        >>> mb.monitor_node("w1@myhost")
        >>> mb.demonitor_node("w1@myhost")   # no 'nodedown' when w1 goes
        """
        from ._dist import _node
        self._control("mailbox_demonitor_node", _node(node))

    def demonitor(self, ref):
        """Removes a monitor made by :meth:`monitor` (its 'DOWN' message, if
        it is still in the Erlang process, is dropped)."""
        if not isinstance(ref, Reference):
            raise TypeError("demonitor() needs a Reference, not %s" % type(ref).__name__)
        self._control("mailbox_demonitor", ref)

    def _control(self, fn, arg):
        if self._closed:
            raise MailboxClosed(Atom("closed"), "the mailbox is closed")
        return _py(fn, [self.pid, arg])

    def close(self):
        """Closes the mailbox: its Erlang process exits (reason ``closed``)
        and the messages not received yet are dropped.  Receives waiting in
        other threads raise :class:`MailboxClosed`.  Closing again does
        nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._items.clear()
        try:
            if _erlang.is_running() and self._end is None:
                _py("close_mailbox", [self.pid], 10.0)
        except Exception:
            pass     # the helper is gone: so is the process
        finally:
            _erlang._mbox_close(self._helper, self._id)
            self._waker.kick()


def send(dest, message):
    """Sends ``message`` to ``dest``: a :class:`Pid`, a registered name (str
    or Atom), a ``(name, node)`` tuple, or a :class:`Reference` alias.

    As Erlang's ``!``: sending to a Pid or a ``(name, node)`` never fails
    (a message to a dead process is dropped) and does not wait for the
    helper; sending to a name nobody has registered raises :class:`Error`
    with reason ``badarg``.  Messages from one Python thread arrive in the
    order sent.  The first send starts the helper if none runs.
    ``TypeError``/``ValueError`` for a message that cannot be encoded."""
    if isinstance(dest, (Pid, Reference)):
        return _send_async(dest, message)
    if isinstance(dest, tuple):
        if len(dest) != 2:
            raise TypeError("a (name, node) destination has two elements")
        return _send_async((_name_of(dest[0]), _name_of(dest[1], "node")), message)
    name = str(_name_of(dest, "dest")).encode("utf-8")
    _erlang._request(_K_SEND, (name, message), None)


def _send_async(dest, message):
    payload = _erlang.term_to_binary((dest, message))
    if not _erlang._write_frame(_K_SEND, 0, 0, payload):
        # No helper running: start one as a call would, then send.
        from . import _helper
        _helper.autostart(None)
        _erlang._write_frame(_K_SEND, 0, 0, payload)


def whereis(name):
    """The :class:`Pid` registered under ``name`` (str or Atom) in the
    helper, or None.  Never creates an atom."""
    key = str(_name_of(name)).encode("utf-8")
    r = _py("whereis", [key])
    return r if isinstance(r, Pid) else None
