"""Quick encode/decode timings of erlang's codec, against erlpack (C) and
erlang_py (pure Python, PyPI `erlang-py`) when they are installed.

    python3 benchmarks/bench_codec_quick.py [--repeat N]

erlang-py installs a top-level module named `erlang`, which clashes with this
package: install it aside (`pip install --target DIR erlang-py`) and point
ERLANG_PY_DIR at DIR; it is then loaded under another name.

Each payload is encoded by every library from the same Python value and
decoded from that library's own encoding.  The numbers are best-of-N times
per operation (µs); not a test.
"""
import argparse
import importlib.util
import os
import sys
import timeit

import erlang


def payloads():
    user = {
        erlang.Atom("id"): 123456,
        erlang.Atom("name"): "Ada Lovelace",
        erlang.Atom("email"): "ada@example.com",
        erlang.Atom("score"): 98.25,
        erlang.Atom("active"): True,
        erlang.Atom("tags"): ["admin", "math", "poet"],
        erlang.Atom("pos"): (12, -7),
    }
    return {
        "small int": 42,
        "short str": "hello world",
        "atom tuple": (erlang.Atom("ok"), 1),
        "1000 ints": list(range(1000)),
        "1000 floats": [i * 0.5 for i in range(1000)],
        "100 users (maps)": [dict(user) for _ in range(100)],
        "bytes 64 KiB": os.urandom(65536),
        "str 64 KiB": "x" * 65536,
        "nested 50": [[[i, (i, "a")] for i in range(10)] for _ in range(50)],
    }


def load_erlang_py():
    d = os.environ.get("ERLANG_PY_DIR")
    if not d:
        return None
    path = os.path.join(d, "erlang.py")
    spec = importlib.util.spec_from_file_location("erlang_py", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def libraries():
    libs = [("erlang", erlang.term_to_binary, erlang.binary_to_term, lambda v: v)]
    try:
        import erlpack

        def to_erlpack(v):
            if isinstance(v, erlang.Atom):
                return erlpack.Atom(str(v))
            if isinstance(v, dict):
                return {to_erlpack(k): to_erlpack(x) for k, x in v.items()}
            if isinstance(v, list):
                return [to_erlpack(x) for x in v]
            if isinstance(v, tuple):
                return tuple(to_erlpack(x) for x in v)
            return v

        libs.append(("erlpack", erlpack.pack, erlpack.unpack, to_erlpack))
    except ImportError:
        pass
    ep = load_erlang_py()
    if ep is not None:

        def to_ep(v):
            if isinstance(v, erlang.Atom):
                return ep.OtpErlangAtom(str(v))
            if isinstance(v, str):
                return ep.OtpErlangBinary(v.encode())
            if isinstance(v, bytes):
                return ep.OtpErlangBinary(v)
            if isinstance(v, dict):
                return {to_ep(k): to_ep(x) for k, x in v.items()}
            if isinstance(v, list):
                return [to_ep(x) for x in v]
            if isinstance(v, tuple):
                return tuple(to_ep(x) for x in v)
            return v

        libs.append(("erlang_py", ep.term_to_binary, ep.binary_to_term, to_ep))
    return libs


def best(fn, repeat):
    t = timeit.Timer(fn)
    n, _ = t.autorange()
    return min(t.repeat(repeat, n)) / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    libs = libraries()
    names = [name for name, *_ in libs]
    print("%-18s %-6s " % ("payload", "op") + " ".join("%12s" % n for n in names))
    for pname, value in payloads().items():
        enc_row, dec_row = [], []
        for _, enc, dec, conv in libs:
            v = conv(value)
            data = enc(v)
            enc_row.append(best(lambda: enc(v), args.repeat))
            dec_row.append(best(lambda: dec(data), args.repeat))
        for op, row in (("encode", enc_row), ("decode", dec_row)):
            print("%-18s %-6s " % (pname, op) + " ".join("%10.2fus" % t for t in row))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
