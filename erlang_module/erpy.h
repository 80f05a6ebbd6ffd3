/* Internal interface between the C files of the extension.
 *
 *   codec.c      Python object <-> external term format (ei + bounds checks)
 *   buf.c        the growable byte buffer (buf.h; no Python)
 *   transport.h  the helper's channel, worker pool and waiting (no GIL):
 *                framing.c pool.c output.c wait.c outq.c async.c helper.c,
 *                sharing transport_int.h
 *   spawn.c      starting the helper process, its stderr, reaping
 *   module.c     the Python module `erlang._erlang`: glue and entry points
 *
 * erpy_helper is one helper process and its channel (pipes, reader state,
 * threads).
 *
 * Conventions: every internal symbol starts with erpy_ (ei_ is libei's).
 * Functions returning int return 0 on success, -1 with a Python exception set
 * (when they are called with the GIL held) unless their comment says otherwise.
 * Comments on functions that run without the GIL say so: those never touch a
 * PyObject.
 */
#ifndef ERPY_H
#define ERPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#include "be.h"
#include "buf.h"
#include "debug.h"
#include "protocol.h"

/* ---------------------------------------------------------------- buffers */

/* erpy_buf_reserve_nogil with MemoryError set on failure (GIL held; codec.c). */
int erpy_buf_reserve(erpy_buf *b, size_t extra);

/* ------------------------------------------------------------------ codec */

/* What the codec needs from Python: the classes of the type table and the
 * decoding options.  Filled by module.c from erlang/_types.py; all strong
 * references. */
typedef struct {
    PyObject *Atom;          /* str subclass */
    PyObject *Pid;           /* opaque: constructed as Pid(raw_bytes) */
    PyObject *Reference;
    PyObject *Port;
    PyObject *Fun;
    PyObject *ImproperList;  /* ImproperList(items: list, tail) */
    PyObject *BitString;     /* BitString(data: bytes, bits: int) */
    PyObject *atom_cache;    /* dict: bytes (UTF-8 name) -> Atom, bounded */
} erpy_codec;

/* Decoding options (per call, from the helper's start options). */
typedef struct {
    int binaries_as_bytes;   /* 1: every binary decodes to bytes */
    int nil_as_none;         /* 1 (Elixir mode): the atom nil decodes to None and
                                undefined to an Atom; 0: undefined is None */
} erpy_decode_opts;

/* Encoding options (from the helper's start options). */
typedef struct {
    int none_as_nil;         /* 1 (Elixir mode): None encodes as nil, not undefined */
} erpy_encode_opts;

/* Appends the external-term-format encoding of obj to b, WITHOUT the leading
 * version byte (131); o may be NULL (the default table).  On error b->len is unspecified (callers reset it) and
 * an exception is set: TypeError for unsupported types (naming the type),
 * ValueError for NaN/inf floats, atoms over 255 characters, bad BitString,
 * UnicodeEncodeError for str with lone surrogates, RecursionError for nesting
 * deeper than the recursion limit (or ERPY_MAX_DEPTH, whichever is lower). */
int erpy_encode(erpy_codec *c, const erpy_encode_opts *o, erpy_buf *b, PyObject *obj);

/* term_to_binary of a large binary (exact bytes, bytearray or str of at
 * least ERPY_BIG_BINARY bytes), written straight into the result: one copy
 * of the data instead of two (into a buffer, then into the bytes object).
 * *handled is 0 when obj is not such a binary (NULL returned, no exception:
 * use erpy_encode); else the result, or NULL with an exception set. */
#define ERPY_BIG_BINARY (64 * 1024)
PyObject *erpy_term_to_binary_big(PyObject *obj, int *handled);

/* Decodes one term starting at buf[*index] (after any version byte), never
 * reading outside buf[0..len).  Advances *index past the term.  Returns a new
 * reference, or NULL with an exception set: ValueError("malformed ...") for
 * bad or truncated input, TypeError for a map key that Python cannot hash,
 * RecursionError for nesting too deep. */
PyObject *erpy_decode(erpy_codec *c, const erpy_decode_opts *o,
                      const char *buf, size_t len, size_t *index);

/* Hard cap on container nesting, on top of Py_EnterRecursiveCall. */
#define ERPY_MAX_DEPTH 10000

/* The real guard against C stack overflow in the recursive codec: a depth
 * count cannot know how large a frame is (an ASan -O0 build used ~3.5 KiB a
 * level and overflowed 8 MiB near depth 2,300 with the recursion limit
 * raised) nor how small a thread's stack is (threading.stack_size).  So each
 * container level checks the stack actually left.  The lowest usable address
 * of the thread's stack is found once per thread (pthread_getattr_np). */
extern __thread uintptr_t erpy_stack_limit;   /* 0: not known yet */
void erpy_stack_init(void);

/* Returns 0, or -1 with RecursionError set when less than a safety margin of
 * C stack is left.  GIL held. */
static inline int
erpy_stack_check(const char *what)
{
    /* The frame address, not a local's: under ASan a local may live on a
     * "fake stack" on the heap, which says nothing about the real one. */
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    if (__builtin_expect(erpy_stack_limit == 0, 0))
        erpy_stack_init();
    if (__builtin_expect(here < erpy_stack_limit, 0)) {
        PyErr_Format(PyExc_RecursionError,
                     "nesting too deep for the C stack while %s an Erlang term", what);
        return -1;
    }
    return 0;
}

#endif
