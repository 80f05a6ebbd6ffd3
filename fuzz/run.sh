#!/usr/bin/env bash
# Bounded fuzzing of the C decoding and frame-splitting code, for CI.
#
#   bash fuzz/run.sh [SECONDS]     each target runs SECONDS (default 60)
#
# Builds the extension with clang, -fsanitize=address,undefined,fuzzer-no-link
# (UBSan in trap mode: no runtime needed beside atheris's ASan+libFuzzer one),
# into its own venv under $FUZZ_WORK (default .fuzz/), with atheris from PyPI.
# Targets: fuzz_codec.py (binary_to_term) and fuzz_frames.py (the reader's
# frame splitter, erlang._erlang._parse_frames).  Seeds come from
# make_seeds.py; the corpus grows in $FUZZ_WORK/corpus-* across runs.
# Exits non-zero when a target finds a crash, a sanitizer report or a broken
# invariant; the input is kept as $FUZZ_WORK/artifacts/crash-*.
#
# Without clang (and when apt-get cannot install it), the extension is built
# with gcc's ASan+UBSan instead: still fuzzed and checked, but libFuzzer then
# sees only Python-level coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-60}
WORK=${FUZZ_WORK:-$ROOT/.fuzz}
PY=${PYTHON:-python3}
mkdir -p "$WORK/artifacts"
log() { echo "== fuzz: $*"; }

if ! command -v clang >/dev/null; then
    log "installing clang"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q clang; } \
        >/dev/null 2>&1 || log "clang could not be installed: gcc build, no C coverage"
fi

VENV=$WORK/venv
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check atheris

SRC=$WORK/src
rm -rf "$SRC"
mkdir -p "$SRC"
tar -C "$ROOT" --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./.fuzz \
    --exclude=./.sanitize --exclude='./*.egg-info' -cf - . | tar -C "$SRC" -xf -
ATHERIS_DIR=$("$VENV/bin/python" -c "import atheris; print(atheris.path())")
if command -v clang >/dev/null; then
    log "building with clang -fsanitize=address,undefined,fuzzer-no-link"
    (cd "$SRC" && CC=clang LDSHARED="clang -shared" CFLAGS="-fsanitize-trap=undefined" \
        ERLANG_SANITIZE=address,undefined,fuzzer-no-link ERLANG_DEBUG=1 \
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps .)
    PRELOAD=$ATHERIS_DIR/asan_with_fuzzer.so
else
    log "building with gcc -fsanitize=address,undefined"
    (cd "$SRC" && ERLANG_SANITIZE=address,undefined ERLANG_DEBUG=1 \
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps .)
    PRELOAD=$(gcc -print-file-name=libasan.so)
fi
[ -f "$PRELOAD" ] || { echo "no ASan runtime to preload ($PRELOAD)" >&2; exit 1; }

export LD_PRELOAD=$PRELOAD
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The helper the harnesses start (seeds, worker ids) must not get the runtime.
cat > "$WORK/erl" <<WRAP
#!/bin/sh
unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS
exec "$(command -v erl || echo erl)" "\$@"
WRAP
chmod +x "$WORK/erl"
export ERL=$WORK/erl

cd "$SRC"    # import the built package, not the source tree
"$VENV/bin/python" "$ROOT/fuzz/make_seeds.py" "$WORK/seeds-codec" "$WORK/seeds-frames"

rc=0
for target in codec frames; do
    corpus=$WORK/corpus-$target
    mkdir -p "$corpus"
    log "$target for $SECS s"
    t0=$(date +%s)
    "$VENV/bin/python" "$ROOT/fuzz/fuzz_$target.py" -max_total_time="$SECS" -timeout=20 \
        -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$WORK/artifacts/$target-" "$corpus" "$WORK/seeds-$target" \
        > "$WORK/$target.log" 2>&1 || { rc=1; log "$target FAILED"; tail -60 "$WORK/$target.log"; }
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov:" "$WORK/$target.log" | tail -3 || true
    log "$target done in $(( $(date +%s) - t0 )) s"
done
exit $rc
