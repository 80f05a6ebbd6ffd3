"""Writes the seed corpora of the fuzz targets:
  make_seeds.py CODEC_DIR FRAMES_DIR
Terms made by Python's encoder, and by the BEAM itself (pids, references,
funs, compressed terms, bitstrings, bignums ...) when `erl` is there."""
import hashlib
import os
import sys

import erlang
from erlang import _erlang

OK, ERROR, HELLO, OUTPUT = _erlang.K_OK, _erlang.K_ERROR, _erlang.K_HELLO, _erlang.K_OUTPUT

PY_VALUES = [
    None, True, False, 0, 1, -1, 255, 256, -(1 << 31), 1 << 31, 1 << 64, -(1 << 200), 1.5, -0.0,
    1e300, "", "text", "ünïcödé 名前", b"", b"\xff\x00", bytearray(b"abc"), [], [1, [2, [3]]],
    (), (1, "two", 3.0), {}, {"a": 1, 2: [3], (4,): {5: 6}}, erlang.Atom("ok"),
    erlang.Atom("ünïcödé"), erlang.ImproperList([1, 2], 3), erlang.BitString(b"\xff\x80", 9),
    [list(range(300))], {"k%d" % i: i for i in range(40)},
]

ERL_TERMS = [
    "self()", "make_ref()", "hd(erlang:ports())", "fun() -> ok end", "fun lists:map/2",
    "term_to_binary(lists:seq(1, 1000), [compressed])",
    "binary_to_term(term_to_binary(lists:duplicate(200, <<\"abc\">>), [compressed]))",
    "<<1:3>>", "<<255, 7:5>>", "1 bsl 1000", "-(1 bsl 70)", "3.14", "\"charlist\"",
    "[a | b]", "#{a => #{b => [1, 2, {c, d}]}}", "list_to_tuple(lists:seq(1, 300))",
    "maps:from_list([{N, N} || N <- lists:seq(1, 100)])", "{[], <<>>, {}, #{}}",
]


def write(d, data):
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame(kind, worker, seq, payload):
    body = bytes([kind]) + worker.to_bytes(4, "big") + seq.to_bytes(4, "big") + payload
    return len(body).to_bytes(4, "big") + body


def main(codec_dir, frames_dir):
    terms = [erlang.term_to_binary(v) for v in PY_VALUES]
    try:
        erlang.start()
        for src in ERL_TERMS:
            terms.append(erlang.eval("term_to_binary(%s)." % src, timeout=30))
            terms.append(erlang.eval("term_to_binary(%s, [compressed])." % src, timeout=30))
        erlang.stop()
    except erlang.HelperExited as e:
        print("make_seeds: no helper (%s); Python-made seeds only" % e, file=sys.stderr)
    for t in terms:
        write(codec_dir, t)
    hello = erlang.term_to_binary({erlang.Atom("protocol"): 1, erlang.Atom("os_pid"): 123})
    output = erlang.term_to_binary((erlang.Atom("stdout"), b"hello\n"))
    write(frames_dir, frame(HELLO, 0, 0, hello))
    write(frames_dir, frame(OUTPUT, 0, 0, output))
    log = erlang.term_to_binary({erlang.Atom("level"): erlang.Atom("warning"), erlang.Atom("msg"): "x",
                                 erlang.Atom("meta"): {}})
    write(frames_dir, frame(_erlang.K_LOG, 0, 0, log))
    # Callbacks (to a waiting worker and to the pool) and mailbox traffic.
    cb = erlang.term_to_binary((erlang.Atom("undefined"), "f", [1, 2]))
    write(frames_dir, frame(_erlang.K_CALLBACK, 0, 0, cb) + frame(_erlang.K_CALLBACK, 1, 3, cb))
    write(frames_dir, frame(_erlang.K_MESSAGE, 0, 7, output)
          + frame(_erlang.K_MAILBOX_DOWN, 0, 7, erlang.term_to_binary(erlang.Atom("killed"))))
    # The async channel: replies by Seq, output, and a cut frame.
    aw = _erlang.ASYNC_WORKER
    write(frames_dir, frame(OK, aw, 5, output) + frame(OUTPUT, aw, 5, output)
          + frame(ERROR, aw, 6, output)[:-1])
    for i, t in enumerate(terms):
        stream = frame(OK, 1 + i % 4, i + 1, t) + frame(OUTPUT, 1 + i % 4, i + 1, output)
        stream += frame(ERROR, 2, 7, erlang.term_to_binary((erlang.Atom("error"), "x", [])))
        write(frames_dir, stream + frame(OK, 3, 9, t)[:-2])       # and a cut last frame


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
