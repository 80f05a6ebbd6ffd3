"""Fuzz target: erlang.binary_to_term, the C decoder of the external term
format (codec.c), with a round-trip check of whatever it accepts.

Run through fuzz/run.sh (atheris, the extension built with
-fsanitize=address,undefined,fuzzer-no-link so that libFuzzer sees the C
code's coverage and ASan/UBSan stop on any memory error or undefined
behaviour).  A malformed term must raise ValueError (RecursionError for
nesting, TypeError for an unhashable map key); anything else -- a crash, a sanitizer report, another exception,
or an accepted term that does not survive term_to_binary/binary_to_term --
is a finding.
"""
import sys

import atheris

with atheris.instrument_imports():
    import erlang

# ValueError: malformed; RecursionError: nested too deep; TypeError: a map
# key that decodes to an unhashable value (documented in the type table).
EXPECTED = (ValueError, RecursionError, TypeError)


def roundtrip_ok(value):
    try:
        again = erlang.term_to_binary(value)
    except (TypeError, ValueError, RecursionError):
        return True          # decodable but not encodable (e.g. a huge atom name in a Pid)
    try:
        back = erlang.binary_to_term(again)
    except RecursionError:
        return True
    return back == value or repr(back) == repr(value)


def TestOneInput(data):
    for binaries in ("str", "bytes"):
        try:
            value = erlang.binary_to_term(data, binaries=binaries)
        except EXPECTED:
            return
        if binaries == "str" and not roundtrip_ok(value):
            raise AssertionError("accepted term does not round-trip: %r from %r"
                                 % (value, data[:200]))


def main():
    sys.setrecursionlimit(10000)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
