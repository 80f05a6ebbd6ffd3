"""The exceptions of the erlang package (see the README's error table)."""

from ._types import _SignatureOf

__all__ = ["Error", "UndefinedFunction", "CallTimeout", "HelperExited"]


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
_MACHINERY_FUNS = frozenset([("py", "eval"), ("py", "eval_sequences"), ("py", "load_source")])


class Error(RuntimeError):
    """An Erlang function raised: ``kind`` is ``'error'``, ``'throw'`` or
    ``'exit'``, ``reason`` the decoded reason, ``stacktrace`` the decoded
    Erlang stack trace (a list of ``(Module, Function, ArityOrArgs,
    Location)`` tuples, possibly empty)."""

    def __init__(self, kind, reason, stacktrace=()):
        self.kind = kind
        self.reason = reason
        self.stacktrace = stacktrace
        super().__init__(self._message())

    def _message(self):
        where = ""
        for frame in self.stacktrace or ():
            if isinstance(frame, tuple) and len(frame) == 4:
                mod, fun, arity, _loc = frame
                if mod in _MACHINERY or (mod, fun) in _MACHINERY_FUNS:
                    continue
                if isinstance(arity, list):
                    arity = len(arity)
                where = " in " + _mfa(mod, fun, arity)
                break
        return "Erlang %s%s: %s" % (self.kind, where, _short(self.reason))

    def __reduce__(self):
        return (type(self), (self.kind, self.reason, self.stacktrace))


class UndefinedFunction(Error):
    """No function is registered under that name, or ``apply`` named a
    function that does not exist (``error:undef``)."""

    def _message(self):
        r = self.reason
        if isinstance(r, tuple) and len(r) == 2 and r[0] == "undefined_function":
            return "no Erlang function registered as %s" % _short(r[1], 100)
        for frame in self.stacktrace or ():
            if isinstance(frame, tuple) and len(frame) == 4:
                mod, fun, args, _loc = frame
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


def make_error(kind, reason, stacktrace):
    """Builds the exception for an ERROR reply (called from C)."""
    if kind == "error" and (
        reason == "undef"
        or (isinstance(reason, tuple) and len(reason) == 2 and reason[0] == "undefined_function")
    ):
        return UndefinedFunction(kind, reason, stacktrace)
    return Error(kind, reason, stacktrace)


def make_exited(wait_status, why, stderr_tail):
    """Builds HelperExited from a waitpid status (-1: unknown), a reason text
    and the helper's stderr tail (called from C)."""
    import os

    tail = stderr_tail.decode("utf-8", "replace") if isinstance(stderr_tail, bytes) else stderr_tail
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
    lines = [ln for ln in tail.strip().splitlines() if ln.strip()]
    if lines:
        msg += "; its stderr ends with:\n" + "\n".join(lines[-10:])
    return HelperExited(msg, status, tail)
