"""Reads valgrind's XML report and fails on every error that involves the
extension: a frame of its shared object or of its C sources, in the error's
own stack or in an auxiliary one (where a block was allocated or freed).

CPython itself (a pyenv or distribution build without valgrind support)
gives memcheck reports of its own -- uninitialised values in the small-int
cache, 32-byte over-reads of wmemcmp/AVX2 and "leaks" of interned objects at
exit -- none of which involve this package; a suppression file for them
would have to follow every CPython patch release, so they are filtered here
instead: only reports touching our code count.

Usage: python valgrind_check.py valgrind.xml
"""
import glob
import os
import sys
import xml.etree.ElementTree as ET

# Every C file of the extension (erlang_module/*.c).
OUR_FILES = {os.path.basename(p) for p in glob.glob(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "erlang_module", "*.c"))}

# Known and deliberate, reported but not counted: (kind, function that
# allocated, why).  Remove an entry once the code no longer needs it.
KNOWN = []


def known(err):
    kind = err.findtext("kind") or ""
    fns = [fr.findtext("fn") or "" for st in err.findall("stack") for fr in st.findall("frame")]
    for k, fn, why in KNOWN:
        if kind == k and fn in fns:
            return why
    return None


def ours(frame):
    obj = frame.findtext("obj") or ""
    fn = frame.findtext("fn") or ""
    src = frame.findtext("file") or ""
    # A source file counts by its directory too where valgrind gives one:
    # a bare name may also be one of CPython's (frame.c, for one).
    d = frame.findtext("dir") or ""
    if src in OUR_FILES and d and not d.rstrip("/").endswith("erlang_module"):
        return "/erlang/_erlang" in obj or fn.startswith("erpy_")
    return ("/erlang/_erlang" in obj or src in OUR_FILES or fn.startswith("erpy_"))


def describe(err):
    lines = [err.findtext("kind") or "?", (err.findtext("what")
                                            or err.findtext("xwhat/text") or "").strip()]
    for stack in err.findall("stack"):
        for fr in stack.findall("frame")[:12]:
            lines.append("    %s %s:%s (%s)" % (fr.findtext("fn") or "?", fr.findtext("file") or "",
                                                  fr.findtext("line") or "",
                                                  (fr.findtext("obj") or "").rsplit("/", 1)[-1]))
        lines.append("  --")
    return "\n".join(lines)


def main(path):
    tree = ET.parse(path)
    errors = tree.getroot().findall("error")
    bad = []
    for err in errors:
        kind = err.findtext("kind") or ""
        if kind.startswith("Leak_") and kind != "Leak_DefinitelyLost":
            continue
        if any(ours(fr) for st in err.findall("stack") for fr in st.findall("frame")):
            why = known(err)
            if why:
                print("valgrind: known, not counted: %s: %s" % (kind, why))
                continue
            bad.append(err)
    print("valgrind: %d error records in all, %d involving the extension" % (len(errors), len(bad)))
    for err in bad:
        print(describe(err))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
