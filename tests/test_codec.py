"""The codec: Python values <-> Erlang external term format (DESIGN.md "Types").

Only the public names are used: erlang.term_to_binary, erlang.binary_to_term
and the types.  Fixtures from a real `erl` (term_to_binary outputs, and erl's
verdict on our encodings) are made at test time; those tests are skipped when
`erl` is missing.
"""
import array
import collections
import enum
import itertools
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import erlang
from erlang import Atom, BitString, Fun, ImproperList, Pid, Port, Reference

t2b = erlang.term_to_binary
b2t = erlang.binary_to_term


# ------------------------------------------------------------------ helpers


def strict_eq(a, b):
    """Equality that also compares types (Atom vs str, True vs 1, bytes vs
    str) and float bits (-0.0 vs 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(strict_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        bkeys = {k: k for k in b}
        for k, v in a.items():
            if k not in b or not strict_eq(k, bkeys[k]) or not strict_eq(v, b[k]):
                return False
        return True
    if isinstance(a, ImproperList):
        return strict_eq(a.items, b.items) and strict_eq(a.tail, b.tail)
    return a == b


def roundtrip(v, **kw):
    return b2t(t2b(v), **kw)


def atom_ext(name):
    b = name.encode()
    return (b"w" + bytes([len(b)]) if len(b) < 256 else b"v" + len(b).to_bytes(2, "big")) + b


def u32(n):
    return n.to_bytes(4, "big")


def pid_raw(node="py@host", num=85, serial=0, creation=1):
    return b"X" + atom_ext(node) + u32(num) + u32(serial) + u32(creation)


def old_pid_raw(node="py@host", num=7, serial=1, creation=2):
    return b"g" + atom_ext(node) + u32(num) + u32(serial) + bytes([creation])


def newer_ref_raw(node="py@host", words=(192285, 2887778305, 3617432346), creation=3):
    return (b"Z" + len(words).to_bytes(2, "big") + atom_ext(node) + u32(creation)
            + b"".join(u32(w) for w in words))


def new_ref_raw(node="py@host", words=(1, 2, 3), creation=1):
    return (b"r" + len(words).to_bytes(2, "big") + atom_ext(node) + bytes([creation])
            + b"".join(u32(w) for w in words))


def old_ref_raw(node="py@host", num=42, creation=1):
    return b"e" + atom_ext(node) + u32(num) + bytes([creation])


def new_port_raw(node="py@host", num=5, creation=1):
    return b"Y" + atom_ext(node) + u32(num) + u32(creation)


def old_port_raw(node="py@host", num=6, creation=1):
    return b"f" + atom_ext(node) + u32(num) + bytes([creation])


def v4_port_raw(node="py@host", num=2**40 + 3, creation=1):
    return b"x" + atom_ext(node) + num.to_bytes(8, "big") + u32(creation)


def export_raw(mod="lists", fun="map", arity=2):
    return b"q" + atom_ext(mod) + atom_ext(fun) + b"a" + bytes([arity])


def new_fun_raw(mod="m", index=7, uniq=1234, free=()):
    body = (bytes([1]) + bytes(range(16)) + u32(index) + u32(len(free))
            + atom_ext(mod) + b"a" + bytes([index]) + b"b" + u32(uniq) + pid_raw()
            + b"".join(t2b(v)[1:] for v in free))
    return b"p" + u32(len(body) + 4) + body


def old_fun_raw(mod="m", index=3, uniq=99, free=()):
    return (b"u" + u32(len(free)) + pid_raw() + atom_ext(mod) + b"a" + bytes([index])
            + b"a" + bytes([uniq]) + b"".join(t2b(v)[1:] for v in free))


OPAQUE_SAMPLES = [
    Pid(pid_raw()), Pid(old_pid_raw()), Pid(pid_raw("other@node", 1, 2, 3)),
    Reference(newer_ref_raw()), Reference(new_ref_raw()), Reference(old_ref_raw()),
    Port(new_port_raw()), Port(old_port_raw()), Port(v4_port_raw()),
    Fun(export_raw()), Fun(new_fun_raw()), Fun(new_fun_raw(free=[1, "x", (Atom("a"),)])),
    Fun(old_fun_raw()), Fun(old_fun_raw(free=[[1, 2]])),
]


# ------------------------------------------------------- the type table


@pytest.mark.parametrize("value", [None, True, False])
def test_none_true_false_round_trip_as_themselves(value):
    assert roundtrip(value) is value


def test_none_true_false_are_the_atoms_undefined_true_false():
    assert t2b(None) == b"\x83w\x09undefined"
    assert t2b(True) == b"\x83w\x04true"
    assert t2b(False) == b"\x83w\x05false"
    assert b2t(b"\x83d\x00\x04true") is True
    assert b2t(b"\x83s\x05false") is False
    assert b2t(b"\x83v\x00\x09undefined") is None


@pytest.mark.parametrize("name", ["ok", "", "hello world", "héllo", "😀" * 3, "a" * 255,
                                  "é" * 255, "😀" * 255, "Δx"])
def test_atom_round_trips_as_atom(name):
    out = roundtrip(Atom(name))
    assert type(out) is Atom and out == name


def test_atom_equals_its_str_and_reprs_as_atom():
    assert Atom("ok") == "ok" and hash(Atom("ok")) == hash("ok")
    assert repr(Atom("ok")) == "Atom('ok')"


def test_atoms_are_written_in_utf8_forms():
    assert t2b(Atom("ok")) == b"\x83w\x02ok"
    big = Atom("é" * 200)
    assert t2b(big)[:4] == b"\x83v\x01\x90"


def test_atom_named_true_decodes_to_bool():
    assert roundtrip(Atom("true")) is True
    assert roundtrip(Atom("undefined")) is None


def test_decoded_atoms_are_shared_from_the_cache():
    a, b = b2t(t2b([Atom("cached_atom"), Atom("cached_atom")]))
    assert a is b


def test_many_distinct_atoms_decode_past_the_cache_bound():
    names = [Atom("atom_%d" % i) for i in range(10000)]
    assert b2t(t2b(names)) == names
    assert all(type(a) is Atom for a in b2t(t2b(names)))


@pytest.mark.parametrize("value", [
    0, 1, 255, 256, -1, -255, -256, 2**27, 2**31 - 1, -2**31, 2**31, -2**31 - 1,
    2**32, 2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**64 - 1, 2**64, -2**64,
    2**2039, 2**2040 - 1, 2**2040, -2**2040, 10**100, -10**100,
    10**5000 + 12345, -(10**5000 + 12345), 2**100000 - 1,
], ids=lambda v: "%s%d-bits" % ("-" if v < 0 else "", v.bit_length()))
def test_int_round_trips(value):
    out = roundtrip(value)
    assert type(out) is int and out == value


def test_int_forms_match_erlang():
    assert t2b(5) == b"\x83a\x05"
    assert t2b(256) == b"\x83b\x00\x00\x01\x00"
    assert t2b(-1) == b"\x83b\xff\xff\xff\xff"
    assert t2b(2**31) == b"\x83n\x04\x00\x00\x00\x00\x80"
    assert t2b(-2**64) == b"\x83n\x09\x01" + b"\x00" * 8 + b"\x01"
    assert t2b(2**2040)[:7] == b"\x83o\x00\x00\x01\x00\x00"   # 256 bytes: LARGE_BIG_EXT


def test_int_subclasses_encode_as_integers():
    class Color(enum.IntEnum):
        RED = 1
        BIG = 2**70

    class MyInt(int):
        def __abs__(self):
            raise AssertionError("the codec must not call __abs__")

    assert t2b(Color.RED) == t2b(1)
    assert t2b(Color.BIG) == t2b(2**70)
    assert t2b(MyInt(-2**80)) == t2b(-2**80)
    assert type(roundtrip(Color.RED)) is int


def test_bool_is_an_atom_not_an_int():
    assert t2b(True) != t2b(1)
    assert roundtrip([True, 1, False, 0]) == [True, 1, False, 0]
    assert [type(x) for x in roundtrip([True, 1])] == [bool, int]


def test_noncanonical_bignums_decode():
    assert b2t(b"\x83n\x00\x00") == 0
    assert b2t(b"\x83n\x00\x01") == 0
    assert b2t(b"\x83n\x03\x01\x05\x00\x00") == -5
    assert b2t(b"\x83o\x00\x00\x00\x09\x00" + b"\x00" * 8 + b"\x01") == 2**64
    assert b2t(b"\x83n\x08\x01" + b"\x00" * 7 + b"\x80") == -2**63


@pytest.mark.parametrize("value", [
    0.0, -0.0, 1.5, -2.5e-10, 0.1, 1 / 3, 5e-324, -5e-324, 2.2250738585072014e-308,
    1.7976931348623157e308, -1.7976931348623157e308, 123456789.125,
])
def test_float_round_trips_bit_exact(value):
    out = roundtrip(value)
    assert type(out) is float
    assert struct.pack(">d", out) == struct.pack(">d", value)


def test_float_is_new_float_ext():
    assert t2b(1.5) == b"\x83F" + struct.pack(">d", 1.5)
    assert t2b(-0.0) == b"\x83F\x80" + b"\x00" * 7


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_float_raises_value_error(value):
    with pytest.raises(ValueError, match="finite"):
        t2b(value)
    with pytest.raises(ValueError):
        t2b([1, {"k": (value,)}])


def test_float_subclass_encodes_as_float():
    class F(float):
        pass

    assert t2b(F(2.5)) == t2b(2.5)


def test_old_text_float_ext_decodes():
    text = b"%.20e" % 1.5
    assert b2t(b"\x83c" + text.ljust(31, b"\x00")) == 1.5
    assert b2t(b"\x83c" + (b"%.20e" % -0.1).ljust(31, b"\x00")) == -0.1


@pytest.mark.parametrize("bad", [b"nan", b"inf", b"hello", b"", b"1.0e+00garbage"])
def test_bad_old_text_float_is_malformed(bad):
    with pytest.raises(ValueError, match="malformed"):
        b2t(b"\x83c" + bad.ljust(31, b"\x00"))


def test_nonfinite_new_float_is_malformed():
    with pytest.raises(ValueError, match="malformed"):
        b2t(b"\x83F" + struct.pack(">d", math.inf))


@pytest.mark.parametrize("value", ["", "abc", "héllo wörld", "😀 emoji", "\x00\x01", "x" * 100000,
                                   "ü" * 100001])
def test_str_round_trips_as_utf8_binary(value):
    data = t2b(value)
    raw = value.encode()
    assert data == b"\x83m" + len(raw).to_bytes(4, "big") + raw
    out = b2t(data)
    assert type(out) is str and out == value


def test_str_with_lone_surrogate_raises_unicode_encode_error():
    with pytest.raises(UnicodeEncodeError):
        t2b("a\ud800b")
    with pytest.raises(ValueError):   # UnicodeEncodeError is a ValueError
        t2b(["ok", {"k": "\udfff"}])


def test_str_subclass_encodes_as_binary():
    class S(str):
        pass

    assert t2b(S("abc")) == t2b("abc")
    assert type(roundtrip(S("abc"))) is str


@pytest.mark.parametrize("value", [b"", b"\xff\xfe", b"\x80abc", bytes(range(256)),
                                   b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80",
                                   os.urandom(10000)])
def test_binary_that_is_not_utf8_decodes_to_bytes(value):
    if value == b"":
        assert roundtrip(value) == ""
        return
    out = roundtrip(value)
    assert type(out) is bytes and out == value


def test_binary_that_is_utf8_decodes_to_str():
    assert roundtrip(b"abc") == "abc"
    assert roundtrip("é😀".encode()) == "é😀"


def test_binaries_bytes_option_gives_bytes():
    data = t2b(["abc", b"\xff", {"k": "é"}, ("x",)])
    assert b2t(data, binaries="bytes") == [b"abc", b"\xff", {b"k": "é".encode()}, (b"x",)]
    assert b2t(data, binaries="str") == ["abc", b"\xff", {"k": "é"}, ("x",)]
    assert b2t(data) == b2t(data, "str")


def test_bad_binaries_option_raises_value_error():
    with pytest.raises(ValueError):
        b2t(t2b("x"), binaries="text")


@pytest.mark.parametrize("make", [
    bytearray, memoryview, lambda b: memoryview(bytearray(b)),
    lambda b: array.array("B", b), lambda b: memoryview(b)[0:len(b)],
])
def test_bytes_like_objects_encode_as_binary(make):
    assert t2b(make(b"\xffabc")) == t2b(b"\xffabc")


def test_multibyte_items_buffer_encodes_its_raw_bytes():
    a = array.array("i", [1, 2, 3])
    assert t2b(a) == t2b(a.tobytes())


def test_non_contiguous_memoryview_raises_type_error():
    with pytest.raises(TypeError, match="contiguous"):
        t2b(memoryview(b"abcdef")[::2])


@pytest.mark.parametrize("value", [
    [], [1], [1, "two", 3.0, [4, [5, []]]], list(range(1000)), [[]] * 10,
    (), (1,), (1, (2, (3,))), tuple(range(300)), ("a",) * 256,
])
def test_lists_and_tuples_round_trip(value):
    assert strict_eq(roundtrip(value), value)


def test_list_and_tuple_forms_match_erlang():
    assert t2b([]) == b"\x83j"
    assert t2b([1]) == b"\x83l\x00\x00\x00\x01a\x01j"
    assert t2b(()) == b"\x83h\x00"
    assert t2b(tuple(range(256)))[:6] == b"\x83i\x00\x00\x01\x00"


def test_string_ext_decodes_to_list_of_ints():
    assert b2t(b"\x83k\x00\x03abc") == [97, 98, 99]
    assert b2t(b"\x83k\x00\x00") == []


def test_list_whose_tail_is_a_list_is_one_list():
    # [1 | [2, 3]] and [1 | "ab"], as another encoder may write them.
    assert b2t(b"\x83l\x00\x00\x00\x01a\x01l\x00\x00\x00\x02a\x02a\x03j") == [1, 2, 3]
    assert b2t(b"\x83l\x00\x00\x00\x01a\x01k\x00\x02ab") == [1, 97, 98]
    assert b2t(b"\x83l\x00\x00\x00\x01a\x01l\x00\x00\x00\x01a\x02a\x03") == ImproperList([1, 2], 3)


def test_empty_list_ext_with_tail_is_the_tail():
    assert b2t(b"\x83l\x00\x00\x00\x00a\x05") == 5
    assert b2t(b"\x83l\x00\x00\x00\x00j") == []


@pytest.mark.parametrize("value", [
    {}, {"a": 1}, {Atom("k"): [1, 2], 3: (4,), (5, 6): {"n": None}},
    {i: i * 2 for i in range(100)}, {b"\xff": 1, "x": 2.5, None: True},
    {Pid(pid_raw()): 1}, {BitString(b"\x80", 1): "bit"},
])
def test_dicts_round_trip_as_maps(value):
    assert strict_eq(roundtrip(value), value)


def test_dict_is_map_ext_with_arity_then_pairs():
    assert t2b({1: 2}) == b"\x83t\x00\x00\x00\x01a\x01a\x02"


def test_dict_subclasses_and_list_subclasses_encode():
    od = collections.OrderedDict([("a", 1)])
    dd = collections.defaultdict(list, {"b": [2]})
    assert roundtrip(od) == {"a": 1} and type(roundtrip(od)) is dict
    assert roundtrip(dd) == {"b": [2]}

    class L(list):
        pass

    P = collections.namedtuple("P", "x y")
    assert roundtrip(L([1, 2])) == [1, 2]
    assert strict_eq(roundtrip(P(1, 2)), (1, 2))


def test_map_key_that_is_unhashable_raises_clear_type_error():
    data = b"\x83t\x00\x00\x00\x01" + t2b([1])[1:] + t2b(2)[1:]
    with pytest.raises(TypeError, match="Erlang map key decodes to an unhashable list"):
        b2t(data)
    data = b"\x83t\x00\x00\x00\x01" + t2b({})[1:] + t2b(2)[1:]
    with pytest.raises(TypeError, match="unhashable dict"):
        b2t(data)
    data = b"\x83t\x00\x00\x00\x01" + t2b((1, [2]))[1:] + t2b(2)[1:]
    with pytest.raises(TypeError, match="unhashable tuple"):
        b2t(data)
    data = b"\x83t\x00\x00\x00\x01" + t2b(ImproperList([1], 2))[1:] + t2b(2)[1:]
    with pytest.raises(TypeError, match="unhashable ImproperList"):
        b2t(data)


def test_map_keys_that_collide_in_python_raise_value_error():
    # #{<<"a">> => 1, a => 2}: distinct in Erlang, equal in Python.
    data = b"\x83t\x00\x00\x00\x02" + t2b("a")[1:] + b"a\x01" + t2b(Atom("a"))[1:] + b"a\x02"
    with pytest.raises(ValueError, match="equal in Python"):
        b2t(data)
    data = b"\x83t\x00\x00\x00\x02a\x01a\x01" + t2b(1.0)[1:] + b"a\x02"
    with pytest.raises(ValueError, match="equal in Python"):
        b2t(data)


@pytest.mark.parametrize("d", [
    {b"a": 1, "a": 2},
    {"a": 1, BitString(b"a", 8): 2},
    {memoryview(b"ab"): 1, "ab": 2},
    {None: 1, Atom("undefined"): 2},
    {True: 1, Atom("true"): 2},
    {("a", 1): 1, (b"a", 1): 2},
    {"k": 0, type("S", (str,), {})("k2"): 1, b"k2": 2},
], ids=["str-bytes", "str-bitstring", "memoryview-str", "none-undefined", "true-atom",
        "tuples", "str-subclass"])
def test_dict_keys_that_are_one_erlang_term_raise_value_error(d):
    # Distinct in Python, equal in Erlang: no map can hold both.
    with pytest.raises(ValueError, match="same Erlang term"):
        t2b(d)
    with pytest.raises(ValueError, match="same Erlang term"):
        t2b([1, {"nested": d}])


def test_dict_keys_of_mixed_types_that_stay_distinct_encode_as_erlang_does():
    d = {"a": 1, b"b": 2, None: 3, Atom("x"): 4, (1, "t"): 5, 1.5: 6, 7: 7, True: 8}
    out = b2t(t2b(d), binaries="bytes")
    assert out == {b"a": 1, b"b": 2, None: 3, "x": 4, (1, b"t"): 5, 1.5: 6, 7: 7, True: 8}
    # Erlang agrees that the map is well formed and has 8 keys.
    assert erlang.apply("erlang", "map_size", [d]) == 8
    big = {("k", i): i for i in range(5000)}
    big.update({(b"j", i): -i for i in range(5000)})
    assert len(b2t(t2b(big))) == 10000


# ----------------------------------------------------- ImproperList, BitString


@pytest.mark.parametrize("value", [
    ImproperList([1], 2), ImproperList([1, "a", [3]], Atom("tail")),
    ImproperList([()], {"k": 1}), ImproperList([1], "binary tail"), ImproperList([1], None),
])
def test_improper_list_round_trips(value):
    out = roundtrip(value)
    assert type(out) is ImproperList and strict_eq(out, value)


def test_improper_list_encodes_its_tail_instead_of_nil():
    assert t2b(ImproperList([1, 2], 3)) == b"\x83l\x00\x00\x00\x02a\x01a\x02a\x03"


def test_improper_list_rejects_list_tails_and_no_items():
    with pytest.raises(ValueError):
        ImproperList([1], [2])
    with pytest.raises(ValueError):
        ImproperList([1], [])
    with pytest.raises(ValueError):
        ImproperList([], 1)
    assert ImproperList([1], ImproperList([2], 3)) == ImproperList([1, 2], 3)
    assert repr(ImproperList([1], 2)) == "ImproperList([1], 2)"


def test_improper_list_mutated_into_bad_shape_raises_on_encode():
    il = ImproperList([1], 2)
    il.items = (1,)
    with pytest.raises(TypeError):
        t2b(il)
    il.items = []
    with pytest.raises(ValueError):
        t2b(il)


@pytest.mark.parametrize("data,bits", [
    (b"\x80", 1), (b"\xe0", 3), (b"\xfe", 7), (b"\xff\x80", 9), (b"\x01" * 1000 + b"\xc0", 8002),
])
def test_bitstring_round_trips(data, bits):
    out = roundtrip(BitString(data, bits))
    assert type(out) is BitString and out == BitString(data, bits)
    assert out.data == data and out.bits == bits


def test_bitstring_is_bit_binary_ext_with_total_bits():
    assert t2b(BitString(b"\xff\x80", 9)) == b"\x83M\x00\x00\x00\x02\x01\xff\x80"


def test_bitstring_zeroes_unused_low_bits():
    assert BitString(b"\xff", 3).data == b"\xe0"
    assert BitString(b"\xff", 3) == BitString(b"\xe0", 3)
    assert hash(BitString(b"\xff", 3)) == hash(BitString(b"\xe0", 3))
    assert b2t(b"\x83M\x00\x00\x00\x01\x03\xff") == BitString(b"\xe0", 3)


def test_bitstring_of_whole_bytes_is_a_binary():
    assert t2b(BitString(b"ab", 16)) == t2b(b"ab")
    assert roundtrip(BitString(b"ab", 16)) == "ab"
    assert t2b(BitString(b"", 0)) == t2b(b"")
    assert b2t(b"\x83M\x00\x00\x00\x02\x08ab") == "ab"


@pytest.mark.parametrize("data,bits", [(b"", 1), (b"ab", 3), (b"a", 0), (b"a", -1), (b"a", 9)])
def test_bitstring_with_wrong_length_raises_value_error(data, bits):
    with pytest.raises(ValueError):
        BitString(data, bits)


def test_bitstring_is_immutable():
    b = BitString(b"\x80", 1)
    with pytest.raises(AttributeError):
        b.bits = 2
    assert repr(b) == "BitString(b'\\x80', 1)"


@pytest.mark.parametrize("data", [b"\x83M\x00\x00\x00\x00\x03", b"\x83M\x00\x00\x00\x01\x00\xff",
                                  b"\x83M\x00\x00\x00\x01\x09\xff"])
def test_bad_bit_binary_is_malformed(data):
    with pytest.raises(ValueError, match="malformed"):
        b2t(data)


# ---------------------------------------------------------------- opaque


@pytest.mark.parametrize("obj", OPAQUE_SAMPLES, ids=lambda o: "%s-%s" % (type(o).__name__, chr(o.raw[0])))
def test_opaque_terms_round_trip_exact_bytes(obj):
    data = t2b(obj)
    assert data == b"\x83" + obj.raw
    out = b2t(data)
    assert type(out) is type(obj) and out == obj and out.raw == obj.raw
    assert hash(out) == hash(obj)
    assert strict_eq(roundtrip([obj, (obj,), {obj: obj}]), [obj, (obj,), {obj: obj}])


def test_opaque_equality_is_by_class_and_raw():
    assert Pid(pid_raw()) == Pid(pid_raw())
    assert Pid(pid_raw()) != Pid(pid_raw(num=86))
    assert len({Pid(pid_raw()), Pid(pid_raw()), Reference(newer_ref_raw())}) == 2
    assert Pid(pid_raw()) != pid_raw()


def test_opaque_reprs_read_like_erlang():
    assert repr(Pid(pid_raw())) == "Pid('<0.85.0>', node='py@host')"
    assert repr(Pid(old_pid_raw())) == "Pid('<0.7.1>', node='py@host')"
    assert Pid(pid_raw()).node == "py@host" and type(Pid(pid_raw()).node) is Atom
    assert repr(Reference(newer_ref_raw())) == \
        "Reference('#Ref<0.3617432346.2887778305.192285>', node='py@host')"
    assert repr(Reference(old_ref_raw())) == "Reference('#Ref<0.42>', node='py@host')"
    assert repr(Port(new_port_raw())) == "Port('#Port<0.5>', node='py@host')"
    assert repr(Port(v4_port_raw())) == "Port('#Port<0.%d>', node='py@host')" % (2**40 + 3)
    assert repr(Fun(export_raw())) == "Fun('fun lists:map/2')"
    assert repr(Fun(new_fun_raw())) == "Fun('#Fun<m.7.1234>')"
    assert repr(Fun(old_fun_raw())) == "Fun('#Fun<m.3.99>')"


@pytest.mark.parametrize("cls,raw", [
    (Pid, b"X"), (Pid, b"X\x77\xff"), (Reference, b"Z\xff\xff"), (Port, b"x"),
    (Fun, b"p\x00"), (Fun, b"q" + b"\xff" * 40), (Pid, pid_raw()[:-1]),
])
def test_opaque_repr_never_fails_and_bad_raw_fails_on_encode(cls, raw):
    obj = cls(raw)
    assert repr(obj).startswith(cls.__name__ + "(")
    with pytest.raises(ValueError):
        t2b(obj)
    with pytest.raises(ValueError):
        t2b([1, obj])


@pytest.mark.parametrize("cls,raw", [
    (Pid, b""), (Pid, b"\x83" + pid_raw()), (Pid, newer_ref_raw()), (Reference, pid_raw()),
    (Port, export_raw()), (Fun, new_port_raw()),
])
def test_opaque_constructor_checks_the_tag(cls, raw):
    with pytest.raises(ValueError):
        cls(raw)


def test_opaque_raw_with_trailing_bytes_fails_on_encode():
    with pytest.raises(ValueError):
        t2b(Pid(pid_raw() + b"j"))


def test_opaque_is_immutable():
    p = Pid(pid_raw())
    with pytest.raises(AttributeError):
        p.raw = b"X"


def test_new_fun_with_wrong_size_is_malformed():
    raw = bytearray(new_fun_raw())
    raw[4] += 1
    with pytest.raises(ValueError, match="malformed"):
        b2t(b"\x83" + bytes(raw))


# ---------------------------------------------------------- unencodable


class Custom:
    pass


@pytest.mark.parametrize("value,name", [
    ({1, 2}, "set"), (frozenset(), "frozenset"), (object(), "object"), (1j, "complex"),
    (Custom(), "Custom"), (len, "builtin_function_or_method"), (int, "type"),
    (Ellipsis, "ellipsis"), (range(3), "range"), (iter([]), "list_iterator"),
])
def test_unsupported_type_raises_type_error_naming_it(value, name):
    with pytest.raises(TypeError, match=name):
        t2b(value)
    with pytest.raises(TypeError, match=name):
        t2b({"deep": [1, (2, value)]})
    with pytest.raises(TypeError, match=name):
        t2b(ImproperList([1], value))


def test_atom_over_255_characters_raises_value_error():
    with pytest.raises(ValueError, match="255"):
        t2b(Atom("a" * 256))
    with pytest.raises(ValueError):
        t2b([Atom("😀" * 256)])


def test_atom_with_lone_surrogate_raises_unicode_encode_error():
    with pytest.raises(UnicodeEncodeError):
        t2b(Atom("\ud800"))


# ---------------------------------------------------------------- nesting


def _subprocess(code):
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(erlang.__file__)))
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_deep_nesting_raises_recursion_error_on_encode_even_with_raised_limit():
    r = _subprocess("""
        import sys, erlang
        sys.setrecursionlimit(10**6)
        for wrap in (lambda x: [x], lambda x: (x,), lambda x: {1: x},
                     lambda x: erlang.ImproperList([x], 1)):
            x = 0
            for _ in range(100000):
                x = wrap(x)
            try:
                erlang.term_to_binary(x)
            except RecursionError:
                print("RecursionError")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["RecursionError"] * 4


def test_deep_nesting_raises_recursion_error_on_encode():
    x = []
    for _ in range(100000):
        x = [x]
    with pytest.raises(RecursionError):
        t2b(x)


def _nested_etf(depth, kind):
    if kind == "list":
        return b"\x83" + b"l\x00\x00\x00\x01" * depth + b"j" + b"j" * depth
    if kind == "tuple":
        return b"\x83" + b"h\x01" * depth + b"j"
    if kind == "map":
        return b"\x83" + b"t\x00\x00\x00\x01a\x01" * depth + b"j"
    if kind == "fun":   # a fun whose free variable nests deeply: skipped, not decoded
        free = b"h\x01" * depth + b"j"
        body = (bytes([1]) + bytes(16) + u32(0) + u32(1) + atom_ext("m") + b"a\x00a\x00"
                + pid_raw() + free)
        return b"\x83p" + u32(len(body) + 4) + body
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["list", "tuple", "map", "fun"])
def test_deep_nesting_raises_recursion_error_on_decode(kind):
    with pytest.raises(RecursionError):
        b2t(_nested_etf(100000, kind))


def test_deep_decode_nesting_raises_recursion_error_even_with_raised_limit():
    r = _subprocess("""
        import sys, erlang
        sys.setrecursionlimit(10**6)
        for etf in (b"\\x83" + b"l\\x00\\x00\\x00\\x01" * 200000 + b"j" * 200001,
                    b"\\x83" + b"h\\x01" * 200000 + b"j"):
            try:
                erlang.binary_to_term(etf)
            except RecursionError:
                print("RecursionError")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["RecursionError"] * 2


def test_moderate_nesting_works_both_ways():
    x = "leaf"
    for i in range(300):
        x = [x] if i % 3 == 0 else (x, i) if i % 3 == 1 else {"k": x}
    assert roundtrip(x) == x
    assert b2t(_nested_etf(300, "fun")).raw == _nested_etf(300, "fun")[1:]


# -------------------------------------------------------- malformed input


@pytest.mark.parametrize("data", [
    b"", b"\x82a\x01", b"\x83", b"\x83a", b"\x83b\x00\x00", b"\x83m\x00\x00\x00\x05abc",
    b"\x83l\x00\x00\x00\x02a\x01", b"\x83h\x02a\x01", b"\x83t\x00\x00\x00\x01a\x01",
    b"\x83w\x05ab", b"\x83v\x00", b"\x83n\x05\x00\x01", b"\x83o\xff\xff\xff\xff\x00",
    b"\x83n\x01\x02\x01", b"\x83F\x00", b"\x83c1.0", b"\x83k\x00\x05ab", b"\x83X", b"\x83Xw\x01a",
    b"\x83Z\x00\x03w\x01a\x00\x00\x00\x01", b"\x83q\x61\x01", b"\x83\xff", b"\x83\x00",
    b"\x83D", b"\x83R\x00", b"\x83a\x01a\x02", b"\x83w\x02\xff\xfe", b"\x83v\x01\x00" + b"a" * 256,
    b"\x83d\x01\x00" + b"\xe9" * 256, b"\x83P\x00\x00\x00\x00", b"\x83P\x00\x00\x00\x10xyz",
    b"\x83l\x00\x00\x00\x01P\x00\x00\x00\x01x\x9c", b"\x83l\x00\x00\x00\x01a\x01",
])
def test_malformed_input_raises_value_error(data):
    with pytest.raises(ValueError, match="malformed"):
        b2t(data)


@pytest.mark.parametrize("header", [
    b"l\xff\xff\xff\xff", b"i\xff\xff\xff\xff", b"t\xff\xff\xff\xff", b"m\xff\xff\xff\xff",
    b"o\xff\xff\xff\xff\x00", b"M\xff\xff\xff\xff\x01", b"l\x7f\xff\xff\xff",
])
def test_huge_declared_sizes_are_rejected_before_allocating(header):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="malformed"):
            b2t(b"\x83" + header + b"a\x01" * 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_input_may_be_any_bytes_like():
    data = t2b([1, "a"])
    assert b2t(bytearray(data)) == [1, "a"]
    assert b2t(memoryview(data)) == [1, "a"]


def _fuzz_corpus():
    values = [
        None, True, 0, 255, -1, 2**40, -2**200, 10**300, 1.5, -0.0, "abc", "é😀", b"\xff\x00",
        Atom("ok"), Atom("é"), [1, [2, [3, []]]], (1, ("a", (b"b",))), {"k": [1, {2: (3,)}]},
        ImproperList([1, 2], Atom("t")), BitString(b"\xa0", 3), list(range(300)),
        {Atom("a"): 1, "b": [1.5, None], (1, 2): {}}, tuple(range(260)),
    ] + OPAQUE_SAMPLES
    corpus = [t2b(v) for v in values]
    corpus.append(t2b([v for v in values]))
    corpus.append(b"\x83k\x00\x05hello")
    corpus.append(b"\x83c" + (b"%.20e" % 2.5).ljust(31, b"\x00"))
    corpus.append(b"\x83d\x00\x02h\xe9")
    corpus.append(_nested_etf(50, "fun"))
    return corpus


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        i = rng.randrange(len(data)) if data else 0
        if op == 0 and data:
            data[i] = rng.randrange(256)
        elif op == 1 and data:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 2:
            del data[rng.randrange(len(data) + 1):]
        elif op == 3:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 4 and data:
            del data[i:i + rng.randint(1, 8)]
        elif op == 5 and len(data) > 4:
            data[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                                        b"\x00\x00\x00\x00", b"\x00\x01\x00\x00",
                                        bytes(rng.randrange(256) for _ in range(4))])
        elif op == 6 and data:
            j = rng.randrange(len(data))
            data[i:i] = data[min(i, j):max(i, j)][:64]
        else:
            data[i:i + 1] = bytes([rng.choice(b"abcdFhijklmnopqrstuvwxXYZegfMPc")])
    return bytes(data)


def _random_etf(rng, depth=0):
    """Random term bytes from the ETF grammar, every kind of term, with a
    length or arity now and then a little (or very) wrong."""
    def count(n, size):
        if rng.random() < 0.05:
            n = rng.choice([n - 1, n + 1, n + 1000, 2**31, 2**(8 * size) - 1])
        return (n % 2**(8 * size)).to_bytes(size, "big")

    def blob(k):
        return bytes(rng.randrange(256) for _ in range(k))

    def name():
        return rng.choice([b"ok", b"", "é😀".encode(), blob(rng.randrange(6)), b"x" * 255])

    def atom():
        s = name()
        tag = rng.choice(b"wsvd")
        return bytes([tag]) + (count(len(s), 1) if tag in b"ws" else count(len(s), 2)) + s

    def term():
        return _random_etf(rng, depth + 1)

    def terms(k):
        return b"".join(term() for _ in range(k))

    leaf = depth >= 4
    kind = rng.randrange(12 if leaf else 20)
    if kind == 0:
        return b"a" + blob(1)
    if kind == 1:
        return b"b" + blob(4)
    if kind == 2:
        return b"F" + rng.choice([struct.pack(">d", rng.uniform(-1e9, 1e9)), blob(8)])
    if kind == 3:
        return b"c" + (b"%.20e" % rng.uniform(-1e9, 1e9)).ljust(31, b"\x00")
    if kind == 4:
        return atom()
    if kind == 5:
        s = rng.choice([b"abc", "é".encode(), blob(rng.randrange(20))])
        return b"m" + count(len(s), 4) + s
    if kind == 6:
        s = blob(rng.randrange(1, 5))
        return b"M" + count(len(s), 4) + bytes([rng.randrange(10)]) + s
    if kind == 7:
        s = blob(rng.randrange(10))
        return b"k" + count(len(s), 2) + s
    if kind == 8:
        s = blob(rng.randrange(12))
        if rng.random() < 0.5:
            return b"n" + count(len(s), 1) + bytes([rng.randrange(3)]) + s
        return b"o" + count(len(s), 4) + bytes([rng.randrange(3)]) + s
    if kind == 9:
        return b"j"
    if kind == 10:
        return rng.choice([b"X" + atom() + blob(12), b"g" + atom() + blob(9),
                           b"Y" + atom() + blob(8), b"f" + atom() + blob(5),
                           b"x" + atom() + blob(12), b"e" + atom() + blob(5)])
    if kind == 11:
        k = rng.randrange(4)
        tag = rng.choice(b"rZ")
        return (bytes([tag]) + count(k, 2) + atom() + blob(1 if tag == ord("r") else 4)
                + blob(4 * k))
    if kind in (12, 13):
        k = rng.randrange(5)
        tail = rng.choice([b"j", b"j", term()])
        return b"l" + count(k, 4) + terms(k) + tail
    if kind in (14, 15):
        k = rng.randrange(5)
        return (b"h" + count(k, 1) if rng.random() < 0.8 else b"i" + count(k, 4)) + terms(k)
    if kind in (16, 17):
        k = rng.randrange(4)
        return b"t" + count(k, 4) + terms(2 * k)
    if kind == 18:
        k = rng.randrange(3)
        pid = b"X" + atom() + blob(12)
        body = (blob(1) + blob(16) + blob(4) + count(k, 4) + atom() + b"a" + blob(1)
                + b"b" + blob(4) + pid + terms(k))
        return b"p" + count(len(body) + 4, 4) + body
    k = rng.randrange(3)
    return rng.choice([b"q" + atom() + atom() + b"a" + blob(1),
                       b"u" + count(k, 4) + b"X" + atom() + blob(12) + atom() + b"a" + blob(1)
                       + b"a" + blob(1) + terms(k)])


def _fuzz(seed, iterations):
    print("codec fuzz seed: %d (set ERLANG_FUZZ_SEED to replay)" % seed)
    rng = random.Random(seed)
    corpus = _fuzz_corpus()
    for n in range(iterations):
        if rng.random() < 0.5:
            data = _mutate(rng, rng.choice(corpus))
        else:
            data = b"\x83" + _random_etf(rng)
            if rng.random() < 0.3:
                data = _mutate(rng, data)
        for kw in ({}, {"binaries": "bytes"}):
            try:
                out = b2t(data, **kw)
            except (ValueError, TypeError, RecursionError):
                continue
            except BaseException as e:   # noqa: B902 - anything else is a bug
                raise AssertionError("seed %d, iteration %d, input %r: %r"
                                     % (seed, n, data, e)) from e
            try:   # what decodes must encode again (it may differ: str/bytes etc.)
                t2b(out)
            except (ValueError, TypeError) as e:
                raise AssertionError("seed %d, iteration %d, input %r: decoded %r "
                                     "does not encode: %r" % (seed, n, data, out, e)) from e


def test_fuzzed_input_only_raises_value_type_or_recursion_error():
    seed = int(os.environ.get("ERLANG_FUZZ_SEED", random.randrange(2**32)))
    _fuzz(seed, 20000)


@pytest.mark.slow
def test_fuzzed_input_long_run():
    seed = int(os.environ.get("ERLANG_FUZZ_SEED", random.randrange(2**32)))
    _fuzz(seed, 1000000)


def test_truncations_of_valid_terms_raise_value_error():
    for data in _fuzz_corpus():
        for k in range(len(data)):
            with pytest.raises(ValueError):
                b2t(data[:k])


# ------------------------------------------------------------- hypothesis

leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**3000, max_value=2**3000),
    st.floats(allow_nan=False, allow_infinity=False), st.text(), st.binary(),
    st.text(max_size=30).map(Atom),
    st.builds(lambda d, extra: BitString(d, max(0, len(d) * 8 - extra)),
              st.binary(max_size=10), st.integers(0, 7)),
    st.sampled_from(OPAQUE_SAMPLES),
)
hashable = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=8)
terms = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=6).map(tuple),
        st.dictionaries(hashable, inner, max_size=5),
        st.builds(ImproperList, st.lists(inner, min_size=1, max_size=4),
                  leaf.filter(lambda t: not isinstance(t, list))),
    ),
    max_leaves=40,
)


class _Collision(Exception):
    pass


def expected(v):
    """What v decodes back to: valid UTF-8 binaries become str, the atoms
    true/false/undefined the Python singletons, whole-byte BitStrings
    binaries, subclasses their base types."""
    if isinstance(v, Atom):
        return {"true": True, "false": False, "undefined": None}.get(v, v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b
    if isinstance(v, BitString) and v.bits % 8 == 0:
        return expected(v.data)
    if isinstance(v, list):
        return [expected(x) for x in v]
    if isinstance(v, tuple):
        return tuple(expected(x) for x in v)
    if isinstance(v, dict):
        d = {expected(k): expected(x) for k, x in v.items()}
        if len(d) != len(v):
            raise _Collision
        return d
    if isinstance(v, ImproperList):
        return ImproperList(expected(v.items), expected(v.tail))
    return v


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms)
def test_generated_terms_round_trip(value):
    try:
        data = t2b(value)
    except ValueError as e:
        # A dict holding both "x" and b"x" (the same Erlang binary) as keys
        # is refused by the encoder: a map cannot hold both.
        assert "are the same Erlang term" in str(e), e
        return
    assert data[0] == 131
    try:
        want = expected(value)
    except _Collision:
        with pytest.raises(ValueError, match="equal in Python"):
            b2t(data)
        return
    got = b2t(data)
    assert strict_eq(got, want), (value, got, want)
    assert t2b(got) == t2b(want)


@settings(max_examples=200, deadline=None)
@given(terms)
def test_generated_terms_with_bytes_option_have_no_str(value):
    def walk(x):
        assert not (type(x) is str)
        if isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for k, y in x.items():
                walk(k)
                walk(y)
        elif isinstance(x, ImproperList):
            walk(x.items)
            walk(x.tail)

    try:
        got = b2t(t2b(value), binaries="bytes")
    except ValueError:   # keys like b"a" and Atom("a")... cannot collide here, but
        return           # Atom("true") and True can
    walk(got)


def test_every_one_and_two_byte_binary_decodes_like_python_utf8():
    for b in itertools.chain((bytes([x]) for x in range(256)),
                             (bytes([x, y]) for x in range(0x80, 256) for y in range(256)),
                             (b"ascii prefix of 32 bytes.......!" + bytes([0xE0 | x, y, z])
                              for x in (0, 0xD, 0x10, 0x14, 0x15) for y in range(0x70, 0xD0, 7)
                              for z in (0x7F, 0x80, 0xBF, 0xC0))):
        out = b2t(t2b(b))
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            assert type(out) is bytes and out == b
        else:
            assert type(out) is str and out == s


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_binary_decodes_to_str_exactly_when_python_accepts_its_utf8(b):
    out = b2t(t2b(b))
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        assert type(out) is bytes and out == b
    else:
        assert type(out) is str and out == s


# ------------------------------------------------------------ against erl

A = Atom
OPAQUE = object()   # the value is checked by class, repr and exact bytes instead

# (Erlang expression, expected Python value, our encoding is byte-identical)
ERL_CASES = [
    ("ok", A("ok"), False),
    ("true", True, False),
    ("false", False, False),
    ("undefined", None, False),
    ("'hello world'", A("hello world"), False),
    ("list_to_atom([104, 233, 108, 108, 111])", A("héllo"), False),   # ATOM_EXT, Latin-1
    ("list_to_atom([16#1F600, $a])", A("😀a"), False),
    ("list_to_atom(lists:duplicate(255, $a))", A("a" * 255), False),
    ("list_to_atom(lists:duplicate(255, 16#1F600))", A("😀" * 255), False),
    ("0", 0, True), ("255", 255, True), ("256", 256, True), ("-1", -1, True),
    ("2147483647", 2**31 - 1, True), ("-2147483648", -2**31, True),
    ("2147483648", 2**31, True), ("-2147483649", -2**31 - 1, True),
    ("1 bsl 59", 2**59, True), ("9223372036854775807", 2**63 - 1, True),
    ("-9223372036854775808", -2**63, True), ("1 bsl 64", 2**64, True),
    ("1 bsl 2039", 2**2039, True), ("1 bsl 2040", 2**2040, True), ("-(1 bsl 5000)", -2**5000, True),
    ("binary_to_integer(<<\"-\", (binary:copy(<<\"9\">>, 3000))/binary>>)", -(10**3000 - 1), True),
    ("1.5", 1.5, True), ("0.1", 0.1, True), ("-2.5e-10", -2.5e-10, True),
    ("5.0e-324", 5e-324, True), ("1.7976931348623157e308", 1.7976931348623157e308, True),
    ("<<\"abc\">>", "abc", True), ("<<>>", "", True), ("<<255, 0, 1>>", b"\xff\x00\x01", True),
    ("unicode:characters_to_binary([104, 233, 16#1F600])", "hé😀", True),
    ("<<1:3>>", BitString(b"\x20", 3), True), ("<<255, 1:1>>", BitString(b"\xff\x80", 9), True),
    ("[]", [], True), ("[1, 2, 3]", [1, 2, 3], False), ("\"abc\"", [97, 98, 99], False),
    ("[1000, -1, ok, <<\"b\">>]", [1000, -1, A("ok"), "b"], False),
    ("[[], [[]]]", [[], [[]]], True), ("lists:seq(1, 300)", list(range(1, 301)), True),
    ("[1 | 2]", ImproperList([1], 2), True),
    ("[1, 2 | <<\"t\">>]", ImproperList([1, 2], "t"), True),
    ("{}", (), True), ("{1, {2.5, <<\"x\">>}}", (1, (2.5, "x")), True),
    ("list_to_tuple(lists:seq(1, 300))", tuple(range(1, 301)), True),
    ("#{}", {}, True), ("#{a => 1, <<\"b\">> => [2.0]}", {A("a"): 1, "b": [2.0]}, False),
    ("maps:from_list([{I, I * 2} || I <- lists:seq(1, 100)])",
     {i: i * 2 for i in range(1, 101)}, False),
    # the key [] cannot be a Python dict key: decoding raises TypeError
    ("#{{1, 2} => #{x => []}, [] => nil}", TypeError, None),
    ("#{{1, 2} => #{x => []}, {} => undefined}", {(1, 2): {A("x"): []}, (): None}, False),
    ("self()", OPAQUE, None), ("make_ref()", OPAQUE, None), ("hd(erlang:ports())", OPAQUE, None),
    ("fun lists:map/2", OPAQUE, None), ("fun(X) -> X + 1 end", OPAQUE, None),
    ("begin Y = {5, self()}, fun(X) -> {X, Y} end end", OPAQUE, None),
    ("{self(), [make_ref()], #{k => hd(erlang:ports())}}", OPAQUE, None),
    ("term_to_binary(lists:duplicate(100, hello), [compressed])", OPAQUE, None),
]

ERL_SCRIPT = r"""
[File] = init:get_plain_arguments(),
{ok, Cases} = file:consult(File),
Out = [begin
    {ok, Toks, _} = erl_scan:string(Src ++ ". "),
    {ok, Exprs} = erl_parse:parse_exprs(Toks),
    {value, V, _} = erl_eval:exprs(Exprs, []),
    Same = try binary_to_term(binary:decode_hex(OurHex)) =:= V catch _:_ -> badarg end,
    [binary:encode_hex(term_to_binary(V)), " ", atom_to_list(Same), "\n"]
  end || {Src, OurHex} <- Cases],
io:put_chars(Out),
halt().
"""


@pytest.fixture(scope="module")
def erl_results(tmp_path_factory):
    erl = os.environ.get("ERL") or shutil.which("erl")
    if not erl:
        pytest.skip("erl not found")
    lines = []
    for src, value, _ in ERL_CASES:
        ours = "" if value is OPAQUE or value is TypeError else t2b(value).hex()
        lines.append('{"%s", <<"%s">>}.\n' % (src.replace("\\", "\\\\").replace('"', '\\"'), ours))
    path = tmp_path_factory.mktemp("erl") / "cases.txt"
    path.write_text("".join(lines))
    r = subprocess.run([erl, "-noshell", "-noinput", "-eval", ERL_SCRIPT, "-extra", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("\n")[:len(ERL_CASES)]
    assert len(out) == len(ERL_CASES), r.stdout
    return {src: (bytes.fromhex(line.split()[0]), line.split()[1])
            for (src, _, _), line in zip(ERL_CASES, out)}


@pytest.mark.parametrize("src,value,identical",
                         [c for c in ERL_CASES if c[1] is not OPAQUE and c[1] is not TypeError],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_erl_term_to_binary_decodes_and_erl_reads_our_encoding(erl_results, src, value, identical):
    erl_bytes, same = erl_results[src]
    assert strict_eq(b2t(erl_bytes), value)
    assert same == "true", "erl read our encoding of %r as another term" % (value,)
    if identical:
        assert t2b(value) == erl_bytes


def test_erl_map_with_list_key_raises_type_error(erl_results):
    erl_bytes, _ = erl_results["#{{1, 2} => #{x => []}, [] => nil}"]
    with pytest.raises(TypeError, match="unhashable list"):
        b2t(erl_bytes)


@pytest.mark.parametrize("src,cls,text", [
    ("self()", Pid, "Pid('<0."), ("make_ref()", Reference, "Reference('#Ref<0."),
    ("hd(erlang:ports())", Port, "Port('#Port<0."), ("fun lists:map/2", Fun, "Fun('fun lists:map/2')"),
    ("fun(X) -> X + 1 end", Fun, "Fun('#Fun<erl_eval."),
    ("begin Y = {5, self()}, fun(X) -> {X, Y} end end", Fun, "Fun('#Fun<erl_eval."),
])
def test_erl_pids_refs_ports_funs_decode_opaque_and_encode_back_unchanged(erl_results, src, cls, text):
    erl_bytes, _ = erl_results[src]
    obj = b2t(erl_bytes)
    assert type(obj) is cls
    assert obj.raw == erl_bytes[1:]
    assert t2b(obj) == erl_bytes
    assert repr(obj).startswith(text)
    if cls is not Fun:
        assert obj.node == "nonode@nohost"


def test_erl_container_of_opaque_terms_round_trips_exactly(erl_results):
    erl_bytes, _ = erl_results["{self(), [make_ref()], #{k => hd(erlang:ports())}}"]
    pid, refs, m = b2t(erl_bytes)
    assert type(pid) is Pid and type(refs[0]) is Reference and type(m[Atom("k")]) is Port
    for obj in (pid, refs[0], m[Atom("k")]):
        assert t2b(obj)[1:] in erl_bytes
    assert b2t(t2b((pid, refs, m))) == (pid, refs, m)   # (the atom k is written as UTF-8)


def test_erl_compressed_term_decodes(erl_results):
    erl_bytes, _ = erl_results["term_to_binary(lists:duplicate(100, hello), [compressed])"]
    compressed = b2t(erl_bytes)
    assert type(compressed) is bytes and compressed[1:2] == b"P"
    assert b2t(compressed) == [Atom("hello")] * 100
    with pytest.raises(ValueError, match="malformed"):
        b2t(compressed[:-3])


def test_deep_nesting_in_a_small_thread_stack_raises_recursion_error_not_a_crash():
    # Found by the fuzzer: with the recursion limit raised, a depth count
    # alone let the decoder overflow the C stack (frames are much larger in
    # sanitizer builds, and threads may have small stacks).  The codec checks
    # the stack actually left, so this raises RecursionError in a 256 KiB
    # thread, in both directions, and the interpreter survives.
    code = r"""
import sys, threading, erlang
sys.setrecursionlimit(100000)
threading.stack_size(256 * 1024)
depth = 20000
deep_etf = b"\x83" + b"h\x01" * depth + b"j"
nested = []
for _ in range(depth):
    nested = [nested]
out = {}
def work():
    for name, fn, arg in (("decode", erlang.binary_to_term, deep_etf),
                          ("encode", erlang.term_to_binary, nested)):
        try:
            fn(arg)
            out[name] = "no error"
        except RecursionError as e:
            out[name] = "RecursionError"
t = threading.Thread(target=work)
t.start(); t.join()
print(out["decode"], out["encode"])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["RecursionError", "RecursionError"]


# --- large binaries at the top level are written straight into the result

@pytest.mark.parametrize("size", [64 * 1024 - 1, 64 * 1024, 1_000_003])
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "str", "non-ascii str"])
def test_large_top_level_binary_encodes_as_inside_a_term(kind, size):
    raw = os.urandom(size)
    value = {"bytes": raw, "bytearray": bytearray(raw), "str": "a" * size,
             "non-ascii str": ("é" * size)[: size // 2]}[kind]
    data = value.encode() if isinstance(value, str) else bytes(value)
    top = erlang.term_to_binary(value)
    # The same bytes as the general path gives it inside a tuple.
    inner = erlang.term_to_binary((value,))
    assert top == b"\x83m" + struct.pack(">I", len(data)) + data
    assert inner[:3] == b"\x83h\x01" and inner[3:] == top[1:]
    back = erlang.binary_to_term(top, binaries="bytes")
    assert back == data


def test_large_str_with_lone_surrogate_still_raises_unicode_encode_error():
    with pytest.raises(UnicodeEncodeError):
        erlang.term_to_binary("a" * 100_000 + "\ud800")


def test_large_binary_subclass_takes_the_general_path_with_the_same_bytes():
    class B(bytes):
        pass

    raw = os.urandom(200_000)
    assert erlang.term_to_binary(B(raw)) == erlang.term_to_binary(raw)
