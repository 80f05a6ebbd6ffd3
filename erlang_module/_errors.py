"""The exceptions of the erlang package (see the README's error table)."""

from ._types import _SignatureOf

__all__ = ["Error", "UndefinedFunction", "CallTimeout", "HelperExited", "NodeDown"]


def _short(term, limit=300):
    text = repr(term)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_RESERVED = frozenset(
    "after and andalso band begin bnot bor bsl bsr bxor case catch cond div else "
    "end fun if let maybe not of or orelse receive rem try when xor".split())


def _atom(a):
    """An atom as Erlang writes it (quoted unless it is a plain name),
    cut to 100 characters."""
    text = str(a)
    if not (text[:1].isascii() and text[:1].islower() and text not in _RESERVED
            and all(c.isascii() and (c.isalnum() or c in "_@") for c in text)):
        text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text if len(text) <= 100 else text[:97] + "..."


def _mfa(mod, fun, arity):
    return "%s:%s/%s" % (_atom(mod), _atom(fun), arity)


# Frames of the interpreter and of the helper itself say nothing about where
# the user's code failed; messages name the first frame outside them.
_MACHINERY = frozenset(["erl_eval", "py_handler", "py_coordinator"])
_MACHINERY_FUNS = frozenset([("py", "eval"), ("py", "eval_sequences"), ("py", "load_source"),
                             ("py", "call_python"), ("py", "wait_python"),
                             ("py", "python_answer"), ("py", "callback"),
                             ("py", "mailbox_request")])


def _where(frames):
    """" in mod:fun/arity" for the first frame outside the machinery, or ""."""
    for frame in frames or ():
        if isinstance(frame, tuple) and len(frame) == 4:
            mod, fun, arity, _loc = frame
            if mod in _MACHINERY or (mod, fun) in _MACHINERY_FUNS:
                continue
            if isinstance(arity, list):
                arity = len(arity)
            return " in " + _mfa(mod, fun, arity)
    return ""


class Error(RuntimeError):
    """An Erlang function raised: ``kind`` is ``'error'``, ``'throw'`` or
    ``'exit'``, ``reason`` the decoded reason, ``stacktrace`` the decoded
    Erlang stack trace (a list of ``(Module, Function, ArityOrArgs,
    Location)`` tuples, possibly empty; a location's ``file`` is a ``str``).
    The message is the first line ``Erlang <kind> in <mod:fun/arity>: ...``
    followed by the text Erlang itself prints for the exception (the
    helper's ``erl_error:format_exception/4``, or Elixir's own message for
    an Elixir exception)."""

    def __init__(self, kind, reason, stacktrace=(), message=None):
        self.kind = kind
        self.reason = reason
        self.stacktrace = stacktrace
        # Erlang's text, as the helper formatted it (None or "": none came).
        if isinstance(message, (bytes, bytearray)):      # binaries="bytes"
            message = bytes(message).decode("utf-8", "replace")
        self._erlang_text = message if isinstance(message, str) and message else None
        super().__init__(self._message())

    def _text(self):
        """Erlang's text without its "exception error: " lead (the first
        line says the kind already), or None."""
        text = self._erlang_text
        if text is None:
            return None
        lead = "exception %s: " % self.kind
        return text[len(lead):] if text.startswith(lead) else text

    def _message(self):
        text = self._text()
        if text is None:
            text = _short(self.reason)
        return "Erlang %s%s: %s" % (self.kind, _where(self.stacktrace), text)

    def __reduce__(self):
        return (type(self), (self.kind, self.reason, self.stacktrace, self._erlang_text))


class UndefinedFunction(Error):
    """No function is registered under that name, or ``apply`` named a
    function that does not exist (``error:undef``)."""

    def _message(self):
        r = self.reason
        if isinstance(r, tuple) and len(r) == 2 and r[0] == "undefined_function":
            return "no Erlang function registered as %s" % _short(r[1], 100)
        frames = [f for f in self.stacktrace or () if isinstance(f, tuple) and len(f) == 4]
        text = self._text()
        if text is not None:
            # The top frame is the missing function, which Erlang's text
            # names; "in" names its caller.
            return "Erlang error%s: %s" % (_where(frames[1:]), text)
        if frames:
            mod, fun, args, _loc = frames[0]
            n = len(args) if isinstance(args, list) else args
            return "undefined Erlang function " + _mfa(mod, fun, n)
        return "undefined Erlang function"


class CallTimeout(TimeoutError):
    """The call's ``timeout`` (or the ``call_timeout`` start option) elapsed.
    The helper was told to abandon the call; its late reply, if any, is
    dropped and never reaches a later call."""

    __signature__ = _SignatureOf(lambda *args: None)   # TimeoutError's, for inspect


class HelperExited(ConnectionError):
    """The helper BEAM is gone or never started.  ``status`` is its exit
    status (negative: killed by that signal; None: unknown) and ``stderr``
    the last lines it wrote to stderr."""

    def __init__(self, message, status=None, stderr=""):
        self.status = status
        self.stderr = stderr
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.args[0], self.status, self.stderr))


class NodeDown(ConnectionError):
    """Another Erlang node cannot be reached, or went down (or lost its
    connection to the helper) during an :func:`erlang.rpc` to it: erpc
    reported ``noconnection``.  ``node`` is that node's name, an
    :class:`Atom`."""

    def __init__(self, node, message=None):
        self.node = node
        super().__init__(message or "Erlang node %s is down or cannot be reached" % (node,))

    def __reduce__(self):
        return (type(self), (self.node, self.args[0]))


def make_error(kind, reason, stacktrace, message=None):
    """Builds the exception for an ERROR reply (called from C); message is
    Erlang's text for it (a str), or None."""
    if kind == "error" and (
        reason == "undef"
        or (isinstance(reason, tuple) and len(reason) == 2 and reason[0] == "undefined_function")
    ):
        return UndefinedFunction(kind, reason, stacktrace, message)
    return Error(kind, reason, stacktrace, message)


def make_exited(wait_status, why, stderr_text, starting=False):
    """Builds HelperExited from a waitpid status (-1: unknown), a reason text
    and what the helper wrote to stderr (called from C).  ``starting``: the
    helper died before it answered, and the message gives everything it
    wrote (its cause often comes first); otherwise its last lines."""
    import os

    text = (stderr_text.decode("utf-8", "replace") if isinstance(stderr_text, bytes)
            else stderr_text)
    status = None
    if wait_status >= 0:
        if os.WIFEXITED(wait_status):
            status = os.WEXITSTATUS(wait_status)
            how = "exited with status %d" % status
        elif os.WIFSIGNALED(wait_status):
            status = -os.WTERMSIG(wait_status)
            how = "was killed by signal %d" % -status
        else:
            how = "stopped"
    else:
        how = "is gone"
    msg = why or ("the Erlang helper %s" % how)
    if why and wait_status >= 0:
        msg += " (it %s)" % how
    lines = [ln.rstrip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    if lines and starting:
        msg += "; its error output:\n" + "\n".join(lines)
    elif lines:
        msg += "; its stderr ends with:\n" + "\n".join(lines[-_TAIL_LINES:])
    return HelperExited(msg, status, text)


# Lines of the helper's stderr quoted when it dies after start-up (the whole
# text is in HelperExited.stderr).
_TAIL_LINES = 20
