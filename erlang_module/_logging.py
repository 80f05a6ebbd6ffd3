"""The helper's logger events, handed to Python's ``logging``.

The helper's logger handler (``erl_side/py_log_h.erl``) sends each event as
a LOG frame; the output pump calls :func:`handle` with its payload,
``#{level, msg, meta}``.  The record goes to the logger ``"erlang"``, or
``"erlang.<domain>"`` for an event with a domain (``[otp, sasl]`` ->
``"erlang.otp.sasl"``), so ``logging.getLogger("erlang")`` configures them
all.

Levels: emergency, alert, critical -> CRITICAL; error -> ERROR; warning ->
WARNING; notice and info -> INFO; debug -> DEBUG.  The Erlang level itself
is kept in ``record.erlang_level``.

Fields of the record: ``msg`` is the event formatted on one line by
Erlang's logger_formatter; ``pathname``/``lineno`` are the event's file and
line when it has them; ``funcName`` is the function of its mfa;
``created`` is the time the event was logged in the helper.  Extra fields:
``erlang_level`` (str), ``erlang_pid`` (str, ``"<0.91.0>"``, or None),
``erlang_mfa`` (str, ``"mod:fun/arity"``, or None), ``erlang_domain``
(tuple of str, possibly empty) and ``erlang_meta`` (dict of the event's
other metadata: numbers, atoms as str, binaries, else the term as text).
"""
import logging

from . import _erlang

LEVELS = {
    "emergency": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "notice": logging.INFO,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

ROOT = "erlang"


def _text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _logger_name(domain):
    parts = [_text(d) for d in domain if d]
    return ".".join([ROOT] + parts) if parts else ROOT


def handle(payload):
    """Hands one LOG frame's payload (ETF bytes) to ``logging``.  A payload
    of the wrong shape is dropped: it must not stop the output pump."""
    event = _erlang.binary_to_term(payload)
    if not isinstance(event, dict):
        return
    meta = event.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    erlang_level = _text(event.get("level", "notice"))
    levelno = LEVELS.get(erlang_level, logging.INFO)
    domain = meta.get("domain")
    domain = tuple(_text(d) for d in domain) if isinstance(domain, list) else ()
    logger = logging.getLogger(_logger_name(domain))
    if not logger.isEnabledFor(levelno):
        return
    mfa = meta.get("mfa")
    func = None
    erlang_mfa = None
    if isinstance(mfa, tuple) and len(mfa) == 3:
        func = _text(mfa[1])
        erlang_mfa = "%s:%s/%s" % (_text(mfa[0]), func, mfa[2])
    pid = meta.get("pid")
    user = meta.get("user")
    extra = {
        "erlang_level": erlang_level,
        "erlang_pid": _text(pid) if pid is not None else None,
        "erlang_mfa": erlang_mfa,
        "erlang_domain": domain,
        "erlang_meta": {_text(k): v for k, v in user.items()} if isinstance(user, dict) else {},
    }
    file = meta.get("file")
    line = meta.get("line")
    record = logger.makeRecord(
        logger.name, levelno,
        _text(file) if file is not None else "(unknown file)",
        line if isinstance(line, int) else 0,
        _text(event.get("msg", "")), None, None, func=func, extra=extra)
    t = meta.get("time")
    if isinstance(t, int):
        # The time the event happened in the helper, not when the pump got
        # to it.
        record.created = t / 1e6
        record.msecs = (t % 1000000) // 1000 + 0.0
        start = getattr(logging, "_startTime", None)
        if start is not None:
            record.relativeCreated = (record.created - start) * 1000
    logger.handle(record)
