"""Python classes for the Erlang terms that have no built-in Python twin.

The codec (erlang_module/codec.c) maps:

* ``Atom`` (a ``str`` subclass) <-> atom.  ``true``/``false``/``undefined``
  decode to ``True``/``False``/``None``; every other atom to an ``Atom``.
* ``ImproperList(items, tail)`` <-> improper list ``[I1, I2 | Tail]``.
* ``BitString(data, bits)`` <-> bitstring whose size is not a whole number of
  bytes.  ``BitString(b"ab", 16)`` encodes to the binary ``<<"ab">>`` (in
  Erlang a bitstring of whole bytes *is* a binary), which decodes to ``"ab"``.
* ``Pid``, ``Reference``, ``Port``, ``Fun``: opaque.  ``raw`` holds the term's
  exact external-term-format bytes (tag included, no 131 version byte); they
  are sent back unchanged, so a pid received from Erlang can be used in a
  later call.  Equal and hashable by (class, raw).
"""
from __future__ import annotations

import operator

__all__ = ["Atom", "BitString", "Fun", "ImproperList", "Pid", "Port", "Reference"]


class _SignatureOf:
    """The ``__signature__`` of a class built on a builtin type's constructor
    (str, TimeoutError), for which inspect finds none: the signature of
    ``like``, made on first use, so that importing erlang does not import
    inspect."""

    def __init__(self, like):
        self.like = like

    def __get__(self, obj, owner=None):
        import inspect

        return inspect.signature(self.like)


class Atom(str):
    """An Erlang atom: a ``str`` that is sent as an atom, not as a binary.

    ``Atom("ok") == "ok"``.  Names have at most 255 characters (checked when
    the atom is encoded).
    """

    __slots__ = ()
    __signature__ = _SignatureOf(lambda object="": None)   # str's, for inspect

    def __repr__(self) -> str:
        return "Atom(%s)" % str.__repr__(self)


class ImproperList:
    """An Erlang improper list ``[items... | tail]``: ``tail`` is not a list.

    ``ImproperList([1, 2], 3)`` is ``[1, 2 | 3]``.  A tail that is itself an
    ``ImproperList`` is flattened into this one.
    """

    __slots__ = ("items", "tail")

    def __init__(self, items, tail):
        items = list(items)
        if isinstance(tail, ImproperList):
            items.extend(tail.items)
            tail = tail.tail
        if isinstance(tail, list):
            raise ValueError(
                "the tail of an ImproperList cannot be a list: "
                "[a | [b, c]] is the proper list [a, b, c]"
            )
        if not items:
            raise ValueError("an ImproperList needs at least one item")
        self.items = items
        self.tail = tail

    def __eq__(self, other):
        if type(other) is not ImproperList:
            return NotImplemented
        return self.items == other.items and self.tail == other.tail

    __hash__ = None  # mutable, like list

    def __repr__(self) -> str:
        return "ImproperList(%r, %r)" % (self.items, self.tail)


class BitString:
    """An Erlang bitstring of ``bits`` bits (the total, not the last byte's).

    ``data`` holds ``ceil(bits / 8)`` bytes, the bits from the most significant
    one of the first byte; the unused low bits of the last byte are set to 0.
    ``BitString(b"\\xa0", 3)`` is ``<<5:3>>``.  Immutable and hashable.
    """

    __slots__ = ("data", "bits")

    def __init__(self, data, bits):
        data = bytes(data)
        bits = operator.index(bits)
        if bits < 0:
            raise ValueError("BitString bits must be >= 0, not %d" % bits)
        if len(data) != (bits + 7) // 8:
            raise ValueError(
                "BitString of %d bits needs %d bytes of data, not %d"
                % (bits, (bits + 7) // 8, len(data))
            )
        rem = bits % 8
        if rem and data[-1] & (0xFF >> rem):
            data = data[:-1] + bytes([data[-1] & (0xFF << (8 - rem)) & 0xFF])
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "bits", bits)

    def __setattr__(self, name, value):
        raise AttributeError("BitString is immutable")

    def __delattr__(self, name):
        raise AttributeError("BitString is immutable")

    def __eq__(self, other):
        if type(other) is not BitString:
            return NotImplemented
        return self.bits == other.bits and self.data == other.data

    def __hash__(self):
        return hash((BitString, self.data, self.bits))

    def __repr__(self) -> str:
        return "BitString(%r, %d)" % (self.data, self.bits)

    def __reduce__(self):
        return (BitString, (self.data, self.bits))


# ------------------------------------------------------------------ opaque


class _Opaque:
    """Base of Pid, Reference, Port and Fun: the term's raw ETF bytes."""

    __slots__ = ("raw",)
    _tags = b""
    _kind = ""

    def __init__(self, raw):
        raw = bytes(raw)
        if not raw or raw[0] not in self._tags:
            hint = ""
            if raw[:1] == b"\x83":
                hint = " (leave out the 131 version byte)"
            raise ValueError(
                "%s(raw): raw must hold the external term format of a %s%s"
                % (type(self).__name__, self._kind, hint)
            )
        object.__setattr__(self, "raw", raw)

    def __setattr__(self, name, value):
        raise AttributeError("%s is immutable" % type(self).__name__)

    def __delattr__(self, name):
        raise AttributeError("%s is immutable" % type(self).__name__)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.raw == other.raw

    def __hash__(self):
        return hash((type(self), self.raw))

    def __reduce__(self):
        return (type(self), (self.raw,))

    def _parse(self):
        """(text as Erlang prints it, node name or None); may raise."""
        raise NotImplementedError

    def __repr__(self) -> str:
        name = type(self).__name__
        try:
            text, node = self._parse()
        except Exception:  # a repr never fails, whatever raw holds
            return "%s(raw=%r)" % (name, self.raw)
        if node is None:
            return "%s(%r)" % (name, text)
        return "%s(%r, node=%r)" % (name, text, node)


class _OnNode(_Opaque):
    """A pid, reference or port: it names the node it belongs to."""

    __slots__ = ()

    @property
    def node(self):
        """The name of the node this term belongs to, an Atom."""
        return Atom(self._parse()[1])


def _atom_at(raw, i):
    """The atom at raw[i]: (name, index after it)."""
    tag = raw[i]
    if tag in (100, 118):  # ATOM_EXT, ATOM_UTF8_EXT
        n = int.from_bytes(raw[i + 1:i + 3], "big")
        start = i + 3
    elif tag in (115, 119):  # SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
        n = raw[i + 1]
        start = i + 2
    else:
        raise ValueError("not an atom")
    if start + n > len(raw):
        raise ValueError("truncated atom")
    enc = "latin-1" if tag in (100, 115) else "utf-8"
    return raw[start:start + n].decode(enc, "replace"), start + n


def _u32(raw, i):
    if i + 4 > len(raw):
        raise ValueError("truncated")
    return int.from_bytes(raw[i:i + 4], "big")


def _int_at(raw, i):
    """The integer term at raw[i] (small or 32-bit): (value, next index)."""
    if raw[i] == 97:
        return raw[i + 1], i + 2
    if raw[i] == 98:
        return int.from_bytes(raw[i + 1:i + 5], "big", signed=True), i + 5
    if raw[i] in (110, 111):  # SMALL_BIG_EXT, LARGE_BIG_EXT
        if raw[i] == 110:
            n, start = raw[i + 1], i + 3
        else:
            n, start = _u32(raw, i + 1), i + 6
        v = int.from_bytes(raw[start:start + n], "little")
        return (-v if raw[start - 1] else v), start + n
    raise ValueError("not an integer")


class Pid(_OnNode):
    """An Erlang pid, opaque: ``Pid(raw)`` with raw its ETF bytes."""

    __slots__ = ()
    _tags = b"gX"  # PID_EXT, NEW_PID_EXT
    _kind = "pid"

    def _parse(self):
        raw = self.raw
        node, i = _atom_at(raw, 1)
        num, serial = _u32(raw, i), _u32(raw, i + 4)
        return "<0.%d.%d>" % (num, serial), node


class Reference(_OnNode):
    """An Erlang reference, opaque: ``Reference(raw)``."""

    __slots__ = ()
    _tags = b"erZ"  # REFERENCE_EXT, NEW_REFERENCE_EXT, NEWER_REFERENCE_EXT
    _kind = "reference"

    def _parse(self):
        raw = self.raw
        if raw[0] == 101:
            node, i = _atom_at(raw, 1)
            words = [_u32(raw, i)]
        else:
            n = int.from_bytes(raw[1:3], "big")
            node, i = _atom_at(raw, 3)
            i += 1 if raw[0] == 114 else 4  # creation
            words = [_u32(raw, i + 4 * k) for k in range(n)]
        return "#Ref<0.%s>" % ".".join(str(w) for w in reversed(words)), node


class Port(_OnNode):
    """An Erlang port, opaque: ``Port(raw)``."""

    __slots__ = ()
    _tags = b"fYx"  # PORT_EXT, NEW_PORT_EXT, V4_PORT_EXT
    _kind = "port"

    def _parse(self):
        raw = self.raw
        node, i = _atom_at(raw, 1)
        if raw[0] == 120:
            num = (_u32(raw, i) << 32) | _u32(raw, i + 4)
        else:
            num = _u32(raw, i)
        return "#Port<0.%d>" % num, node


class Fun(_Opaque):
    """An Erlang fun, opaque: ``Fun(raw)``."""

    __slots__ = ()
    _tags = b"pqu"  # NEW_FUN_EXT, EXPORT_EXT, FUN_EXT
    _kind = "fun"

    def _parse(self):
        raw = self.raw
        if raw[0] == 113:  # EXPORT_EXT: fun M:F/A
            mod, i = _atom_at(raw, 1)
            fun, i = _atom_at(raw, i)
            arity, _ = _int_at(raw, i)
            return "fun %s:%s/%d" % (mod, fun, arity), None
        if raw[0] == 112:  # NEW_FUN_EXT
            mod, i = _atom_at(raw, 30)
            index, i = _int_at(raw, i)
            uniq, i = _int_at(raw, i)
        else:  # FUN_EXT: NumFree, Pid, Module, Index, Uniq
            _, i = _atom_at(raw, 6)
            i += 9 if raw[5] == 103 else 12
            mod, i = _atom_at(raw, i)
            index, i = _int_at(raw, i)
            uniq, i = _int_at(raw, i)
        return "#Fun<%s.%d.%d>" % (mod, index, uniq), None
