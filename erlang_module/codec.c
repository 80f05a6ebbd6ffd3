/* codec.c: Python objects <-> Erlang external term format (ETF), with ei.
 *
 * The type table this implements is in DESIGN.md ("Types") and in the README.
 *
 * What ei does.  The items of a term are written and read by OTP's ei
 * (erl_interface, libei.a linked statically):
 *   integers    ei_encode_longlong, ei_encode_ulonglong (2^63 to 2^64 - 1),
 *               ei_decode_long, ei_decode_longlong, ei_decode_ulonglong
 *   bignums     ei_encode_big / ei_decode_big on an erlang_big (16-bit digits;
 *               the magnitude comes from int.to_bytes, goes back through
 *               int.from_bytes).  ei's GMP functions, ei_encode_bignum and
 *               ei_decode_bignum, are not available: Debian's libei is built
 *               without GMP.
 *   floats      ei_encode_double / ei_decode_double (NEW_FLOAT_EXT)
 *   atoms       ei_encode_atom_len_as / ei_decode_atom_as, UTF-8 to UTF-8 (ei
 *               converts the old Latin-1 forms and says whether it is ASCII)
 *   binaries    ei_encode_binary / ei_decode_binary; bitstrings
 *               ei_encode_bitstring / ei_decode_bitstring; charlists
 *               ei_decode_string
 *   containers  ei_encode_ / ei_decode_tuple_header, _list_header,
 *               _map_header, ei_encode_empty_list
 *   pids, references, ports, funs: kept as their exact bytes (the class gets
 *               them: erlang.Pid(raw) etc.), checked with ei_skip_term.
 * ei_get_type is not used: the decoder switches on the tag byte it has just
 * bounds-checked; asking ei again would be a second dispatch per item.
 *
 * How ei is called.
 *   - ei's encoders write unchecked: every item first reserves its largest
 *     size in the growable erpy_buf, then ei writes at the write position
 *     with its int index starting at 0.  The size of the form the item must
 *     take is known from the value; ei must have written exactly that.
 *   - ei's decoders take no buffer length and trust every length field: the
 *     header fields of an item (a length, an arity) are read here and the
 *     whole item is checked against the input BEFORE ei is called on it;
 *     afterwards ei's index and results must agree with what was checked.
 *     Lengths and arities are checked against the bytes left before
 *     anything is allocated for them (every element takes at least one
 *     byte), so a hostile term can make the decoder allocate at most a small
 *     multiple of its own size.
 *   - ei's index is an int, but it only ever spans one item, so the limit is
 *     2 GiB per item (a binary's bytes, a list's elements), not per buffer;
 *     larger items raise ValueError (frames are capped at 2 GiB anyway).
 *   - Calling ei costs a few ns per item.  So that this is all it costs,
 *     enc_term and dec_term are plain dispatchers that save no registers,
 *     and positions advance by the size checked, not by ei's index read
 *     back from memory.  Measured with benchmarks/bench_codec_quick.py:
 *     lists of numbers and maps of atoms take 5-30% longer than with the
 *     bytes written inline, and are still 1.2x (encoding floats) to 15x
 *     (decoding) faster than erlpack.
 *
 * What is written here, and why.
 *   - SMALL_INTEGER_EXT (0..255) and INTEGER_EXT (32-bit) are decoded
 *     inline: the most frequent items, and the ones where the ei call costs
 *     most against the work (+30% on a list of 1000 ints; ei reads every
 *     other integer).
 *   - INTEGER_EXT for 2^27 <= |v| < 2^31: ei writes INTEGER_EXT only for
 *     28-bit values (the old fixnum range) and SMALL_BIG_EXT above, while
 *     term_to_binary writes INTEGER_EXT for all 32-bit values.  The bytes
 *     written here are term_to_binary's (the tests compare them with erl's),
 *     except atoms, which are always written in the UTF-8 forms.
 *   - The old text FLOAT_EXT: ei_decode_double reads it with sscanf("%lf"),
 *     which runs on past the 31 bytes when they hold no NUL and follows
 *     LC_NUMERIC; it is parsed with PyOS_string_to_double.
 *   - Pids, references, ports, funs: ei has no length-checked way to walk
 *     them, so a bounds-checked skip here checks their structure and
 *     nesting (list tails included: ei_skip_term recurses into them); the
 *     bytes are then copied into a bytes object, whose trailing NUL stops
 *     that sscanf inside it, and ei_skip_term must end exactly at its end.
 *   - Compressed terms: inflated with Python's zlib.  Binaries: str when
 *     valid UTF-8 (checked here, with a wide ASCII copy for the common
 *     case), else bytes.  Atoms: shared through a bounded cache.
 *
 * Exact built-in types are tried first, by pointer comparison of the type,
 * before any subclass or protocol check.
 *
 * Nesting: every container goes through Py_EnterRecursiveCall, a hard
 * depth cap, ERPY_MAX_DEPTH, and a check of the C stack actually left
 * (erpy_stack_check: frame sizes vary with the build, stacks with the
 * thread), in both directions; each raises RecursionError.
 */
#include "erpy.h"

#include <ei.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#define ERPY_X86_64 1
#include <immintrin.h>   /* SSE2 (always there), AVX2 (after a CPU check) */
#endif

#if defined(__GNUC__)
#define ERPY_LIKELY(x) __builtin_expect(!!(x), 1)
#define ERPY_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define ERPY_NOINLINE __attribute__((noinline))
#else
#define ERPY_LIKELY(x) (x)
#define ERPY_UNLIKELY(x) (x)
#define ERPY_NOINLINE
#endif

/* ETF tags: ei.h's ERL_*_EXT constants, and the ones ei.h lacks. */
enum {
    T_NEW_FLOAT = NEW_FLOAT_EXT,                /* 70 */
    T_BIT_BINARY = ERL_BIT_BINARY_EXT,          /* 77 */
    T_COMPRESSED = 'P',                         /* 80 */
    T_NEW_PID = ERL_NEW_PID_EXT,                /* 88 */
    T_NEW_PORT = ERL_NEW_PORT_EXT,              /* 89 */
    T_NEWER_REFERENCE = ERL_NEWER_REFERENCE_EXT, /* 90 */
    T_SMALL_INTEGER = ERL_SMALL_INTEGER_EXT,    /* 97 */
    T_INTEGER = ERL_INTEGER_EXT,                /* 98 */
    T_FLOAT = ERL_FLOAT_EXT,                    /* 99: the old text form */
    T_ATOM = ERL_ATOM_EXT,                      /* 100: Latin-1 */
    T_REFERENCE = ERL_REFERENCE_EXT,            /* 101 */
    T_PORT = ERL_PORT_EXT,                      /* 102 */
    T_PID = ERL_PID_EXT,                        /* 103 */
    T_SMALL_TUPLE = ERL_SMALL_TUPLE_EXT,        /* 104 */
    T_LARGE_TUPLE = ERL_LARGE_TUPLE_EXT,        /* 105 */
    T_NIL = ERL_NIL_EXT,                        /* 106 */
    T_STRING = ERL_STRING_EXT,                  /* 107 */
    T_LIST = ERL_LIST_EXT,                      /* 108 */
    T_BINARY = ERL_BINARY_EXT,                  /* 109 */
    T_SMALL_BIG = ERL_SMALL_BIG_EXT,            /* 110 */
    T_LARGE_BIG = ERL_LARGE_BIG_EXT,            /* 111 */
    T_NEW_FUN = ERL_NEW_FUN_EXT,                /* 112 */
    T_EXPORT = ERL_EXPORT_EXT,                  /* 113 */
    T_NEW_REFERENCE = ERL_NEW_REFERENCE_EXT,    /* 114 */
    T_SMALL_ATOM = ERL_SMALL_ATOM_EXT,          /* 115: Latin-1 */
    T_MAP = ERL_MAP_EXT,                        /* 116 */
    T_FUN = ERL_FUN_EXT,                        /* 117 */
    T_ATOM_UTF8 = ERL_ATOM_UTF8_EXT,            /* 118 */
    T_SMALL_ATOM_UTF8 = ERL_SMALL_ATOM_UTF8_EXT, /* 119 */
    T_V4_PORT = 'x',                            /* 120: OTP 24+, no constant in ei.h 5.3 (ei reads it) */
};

#define ERPY_ATOM_CACHE_MAX 4096

_Static_assert(ERPY_ETF_SMALL_TUPLE == ERL_SMALL_TUPLE_EXT, "SMALL_TUPLE_EXT");
_Static_assert(ERPY_ETF_NIL == ERL_NIL_EXT, "NIL_EXT");
_Static_assert(ERPY_ETF_LIST == ERL_LIST_EXT, "LIST_EXT");
_Static_assert(ERPY_ETF_BINARY == ERL_BINARY_EXT, "BINARY_EXT");

/* The largest item handed to ei, in bytes or elements: its index is an int. */
#define ERPY_EI_MAX ((size_t)INT_MAX)

/* ei's INTEGER_EXT range (the old 28-bit fixnums); see the top comment. */
#define ERPY_EI_INTEGER_MIN (-(1LL << 27))
#define ERPY_EI_INTEGER_MAX ((1LL << 27) - 1)

/* ------------------------------------------------------------ C stack */

__thread uintptr_t erpy_stack_limit;

void
erpy_stack_init(void)
{
    /* Keep a quarter of the stack, at most 256 KiB, for what runs on top of
     * the deepest level (Python allocations, sanitizer runtimes). */
    pthread_attr_t a;
    void *lo = NULL;
    size_t size = 0;
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    if (pthread_getattr_np(pthread_self(), &a) == 0) {
        pthread_attr_getstack(&a, &lo, &size);
        pthread_attr_destroy(&a);
    }
    if (lo == NULL || size == 0 || here < (uintptr_t)lo || here > (uintptr_t)lo + size) {
        erpy_stack_limit = 1;   /* unknown: rely on the depth cap alone */
        return;
    }
    size_t margin = size / 4 < (256u << 10) ? size / 4 : (256u << 10);
    erpy_stack_limit = (uintptr_t)lo + margin;
}

/* ---------------------------------------------------------------- buffers */

/* erpy_buf_reserve: erpy_buf_reserve_nogil (buf.c) with MemoryError. */
int
erpy_buf_reserve(erpy_buf *b, size_t extra)
{
    if (erpy_buf_reserve_nogil(b, extra) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Room for n more bytes: the inline check of every encoded item.
 * Returns -1 with MemoryError set. */
static inline int
enc_reserve(erpy_buf *b, size_t n)
{
    if (ERPY_LIKELY(n <= b->cap - b->len))
        return 0;
    return erpy_buf_reserve(b, n);
}

static inline uint32_t
get16be(const unsigned char *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}


/* ================================================================ encoding */

typedef struct {
    erpy_codec *c;
    erpy_buf *b;
    int depth;
    int none_as_nil;
} erpy_enc;

static int enc_term(erpy_enc *e, PyObject *obj);

/* An ei encoder call is
 *     char *w = enc_ei_at(b, max);      room for its largest output
 *     int i = 0;                        ei's index, relative to w
 *     int rc = ei_encode_...(w, &i, ...);
 *     return enc_ei_done(b, rc, i, size, what);
 * where size is the size of the form that the item must take (known from
 * the value): ei must have written exactly that, and the buffer advances by
 * size, not by i, so that the position of the next item does not wait for
 * ei's index to come back through memory (measured: ~10% on lists of
 * numbers). */

/* Reserves max bytes for an ei encoder, which writes unchecked.  Returns the
 * write position (ei's index 0), or NULL with MemoryError set. */
static inline char *
enc_ei_at(erpy_buf *b, size_t max)
{
    if (enc_reserve(b, max) < 0)
        return NULL;
    return b->data + b->len;
}

/* Returns -1 with ValueError set. */
static int
enc_ei_refused(const char *what)
{
    PyErr_Format(PyExc_ValueError, "ei could not encode %s", what);
    return -1;
}

/* Commits the size bytes an ei encoder wrote (rc: its result, i: its
 * index).  Returns 0, or -1 with ValueError set when ei refused the item or
 * wrote another size (the checks made before the call leave no such case). */
static inline int
enc_ei_done(erpy_buf *b, int rc, int i, size_t size, const char *what)
{
    if (ERPY_UNLIKELY(rc < 0 || (size_t)i != size))
        return enc_ei_refused(what);
    b->len += size;
    return 0;
}

/* Enters one container level.  Returns -1 with RecursionError set. */
static inline int
enc_enter(erpy_enc *e)
{
    if (ERPY_UNLIKELY(e->depth >= ERPY_MAX_DEPTH)) {
        PyErr_Format(PyExc_RecursionError,
                     "maximum nesting depth (%d) exceeded while encoding an Erlang term",
                     ERPY_MAX_DEPTH);
        return -1;
    }
    if (Py_EnterRecursiveCall(" while encoding an Erlang term"))
        return -1;
    if (ERPY_UNLIKELY(erpy_stack_check("encoding") < 0)) {
        Py_LeaveRecursiveCall();
        return -1;
    }
    e->depth++;
    return 0;
}

static inline void
enc_leave(erpy_enc *e)
{
    e->depth--;
    Py_LeaveRecursiveCall();
}

/* Returns -1 with TypeError set. */
static int
enc_unsupported(PyObject *obj)
{
    PyErr_Format(PyExc_TypeError,
                 "cannot encode an object of type %.200s as an Erlang term",
                 Py_TYPE(obj)->tp_name);
    return -1;
}

/* Returns -1 with ValueError set when an item of n bytes or elements is past
 * what ei can encode (its index is an int). */
static int
enc_check_size(size_t n, const char *what)
{
    if (ERPY_UNLIKELY(n > ERPY_EI_MAX - 16)) {
        PyErr_Format(PyExc_ValueError,
                     "%s of %zu bytes or elements is too large to encode "
                     "(at most 2 GiB per item)", what, n);
        return -1;
    }
    return 0;
}

/* Integer in the C long long range, as term_to_binary writes it:
 * SMALL_INTEGER_EXT, INTEGER_EXT or an up-to-8-byte SMALL_BIG_EXT. */
static inline int
enc_longlong(erpy_buf *b, long long v)
{
    char *w = enc_ei_at(b, 11);
    if (w == NULL)
        return -1;
    size_t size = 0;   /* 0: SMALL_BIG_EXT, 3 + 4 to 8 bytes, ei's index */
    if (v >= 0 && v <= 255) {
        size = 2;
    }
    else if (v >= ERPY_EI_INTEGER_MIN && v <= ERPY_EI_INTEGER_MAX) {
        size = 5;
    }
    else if (v >= INT32_MIN && v <= INT32_MAX) {
        /* term_to_binary's INTEGER_EXT where ei would write a SMALL_BIG_EXT
         * (see the top comment). */
        w[0] = (char)T_INTEGER;
        erpy_put_be32((unsigned char *)w + 1, (uint32_t)(int32_t)v);
        b->len += 5;
        return 0;
    }
    int i = 0;
    int rc = ei_encode_longlong(w, &i, v);
    return enc_ei_done(b, rc, i, size ? size : (size_t)i, "an integer");
}

/* The largest integer magnitude, in bytes, that the 64-bit emulator
 * accepts: (2^19 - 1) 64-bit words (measured with binary_to_term on OTP 25:
 * 4,194,296 bytes decode, one more is badarg). */
#define ERPY_ERLANG_BIG_MAX_BYTES 4194296

/* An int outside the 64-bit ranges: SMALL_BIG_EXT / LARGE_BIG_EXT by
 * ei_encode_big, the magnitude from int.to_bytes (no private _PyLong API).
 * Returns -1 with an exception set. */
static int
enc_bigint(erpy_enc *e, PyObject *obj, int negative)
{
    PyObject *mag = NULL, *nbits = NULL, *bytes = NULL;
    unsigned short *digits = NULL;
    int rc = -1;
    /* int.__abs__ itself: an exact int even for subclasses that override it. */
    mag = PyLong_Type.tp_as_number->nb_absolute(obj);
    if (mag == NULL)
        goto error;
    nbits = PyObject_CallMethod(mag, "bit_length", NULL);
    if (nbits == NULL)
        goto error;
    size_t bits = PyLong_AsSize_t(nbits);
    if (bits == (size_t)-1 && PyErr_Occurred())
        goto error;
    size_t n = (bits + 7) / 8;
    if (n > ERPY_ERLANG_BIG_MAX_BYTES) {
        /* binary_to_term would fail with badarg after the call was sent */
        PyErr_Format(PyExc_ValueError,
                     "int of %zu bits is too large for Erlang (at most %d bits)",
                     bits, ERPY_ERLANG_BIG_MAX_BYTES * 8);
        goto error;
    }
    /* An even number of bytes: erlang_big's digits are 16-bit. */
    size_t ndigits = (n + 1) / 2;
    bytes = PyObject_CallMethod(mag, "to_bytes", "ns", (Py_ssize_t)(2 * ndigits),
                                "little");
    if (bytes == NULL)
        goto error;
    digits = PyMem_Malloc(ndigits * sizeof *digits);
    if (digits == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    const unsigned char *m = (const unsigned char *)PyBytes_AS_STRING(bytes);
    for (size_t k = 0; k < ndigits; k++)
        digits[k] = (unsigned short)(m[2 * k] | (m[2 * k + 1] << 8));
    erlang_big big = {(unsigned int)n, negative, digits};
    char *w = enc_ei_at(e->b, 6 + n);
    if (w == NULL)
        goto error;
    int i = 0;
    int erc = ei_encode_big(w, &i, &big);
    rc = enc_ei_done(e->b, erc, i, (n <= 255 ? 3 : 6) + n, "an integer");
error:
    PyMem_Free(digits);
    Py_XDECREF(mag);
    Py_XDECREF(nbits);
    Py_XDECREF(bytes);
    return rc;
}

/* int and int subclasses (the value, never __index__).
 * Returns -1 with an exception set. */
ERPY_NOINLINE static int
enc_long(erpy_enc *e, PyObject *obj)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (ERPY_LIKELY(overflow == 0)) {
        if (ERPY_UNLIKELY(v == -1 && PyErr_Occurred()))
            return -1;
        return enc_longlong(e->b, v);
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(obj);
        if (u != (unsigned long long)-1 || !PyErr_Occurred()) {
            char *w = enc_ei_at(e->b, 11);
            if (w == NULL)
                return -1;
            int i = 0;
            int rc = ei_encode_ulonglong(w, &i, u);   /* 2^63 and up: 8 bytes */
            return enc_ei_done(e->b, rc, i, 11, "an integer");
        }
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
    }
    return enc_bigint(e, obj, overflow < 0);
}

/* NEW_FLOAT_EXT (bit-exact, -0.0 kept).
 * Returns -1 with ValueError set for NaN and infinities. */
static inline int
enc_double(erpy_enc *e, PyObject *obj, double v)
{
    if (ERPY_UNLIKELY(!isfinite(v))) {
        PyErr_Format(PyExc_ValueError,
                     "cannot encode %R: Erlang floats must be finite", obj);
        return -1;
    }
    char *w = enc_ei_at(e->b, 9);
    if (w == NULL)
        return -1;
    int i = 0;
    int rc = ei_encode_double(w, &i, v);
    return enc_ei_done(e->b, rc, i, 9, "a float");
}

/* BINARY_EXT.  Returns -1 with an exception set. */
static inline int
enc_binary(erpy_buf *b, const void *data, Py_ssize_t n)
{
    if (enc_check_size((size_t)n, "binary") < 0)
        return -1;
    char *w = enc_ei_at(b, 5 + (size_t)n);
    if (w == NULL)
        return -1;
    int i = 0;
    int rc = ei_encode_binary(w, &i, data, (long)n);
    return enc_ei_done(b, rc, i, 5 + (size_t)n, "a binary");
}

/* str (and str subclasses other than Atom) as a UTF-8 binary.
 * Returns -1 with UnicodeEncodeError set for lone surrogates. */
ERPY_NOINLINE static int
enc_str(erpy_enc *e, PyObject *obj)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
    if (s == NULL)
        return -1;
    return enc_binary(e->b, s, n);
}

/* An atom from its UTF-8 name of at most 255 characters (so 1020 bytes):
 * SMALL_ATOM_UTF8_EXT, or ATOM_UTF8_EXT from 256 bytes on. */
static inline int
enc_atom_utf8(erpy_buf *b, const char *s, size_t n)
{
    char *w = enc_ei_at(b, 3 + n);
    if (w == NULL)
        return -1;
    int i = 0;
    int rc = ei_encode_atom_len_as(w, &i, s, (int)n, ERLANG_UTF8, ERLANG_UTF8);
    return enc_ei_done(b, rc, i, (n <= 255 ? 2 : 3) + n, "an atom");
}

/* erlang.Atom.  Returns -1 with ValueError set for more than 255
 * characters, UnicodeEncodeError for lone surrogates. */
ERPY_NOINLINE static int
enc_atom(erpy_enc *e, PyObject *obj)
{
    Py_ssize_t nchars = PyUnicode_GetLength(obj);
    if (nchars < 0)
        return -1;
    if (nchars > 255) {
        PyErr_Format(PyExc_ValueError,
                     "atom of %zd characters: Erlang atoms have at most 255 "
                     "(%.40R...)", nchars, obj);
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
    if (s == NULL)
        return -1;
    return enc_atom_utf8(e->b, s, (size_t)n);
}

/* Headers.  Each returns -1 with an exception set. */
static inline int
enc_list_header(erpy_buf *b, Py_ssize_t n)
{
    if (enc_check_size((size_t)n, "list") < 0)
        return -1;
    char *w = enc_ei_at(b, 5);
    if (w == NULL)
        return -1;
    int i = 0;
    int rc = ei_encode_list_header(w, &i, (int)n);
    return enc_ei_done(b, rc, i, 5, "a list");
}

static inline int
enc_nil(erpy_buf *b)
{
    char *w = enc_ei_at(b, 1);
    if (w == NULL)
        return -1;
    int i = 0;
    int rc = ei_encode_empty_list(w, &i);
    return enc_ei_done(b, rc, i, 1, "a list");
}

static inline int
enc_tuple_header(erpy_buf *b, Py_ssize_t n)
{
    if (enc_check_size((size_t)n, "tuple") < 0)
        return -1;
    char *w = enc_ei_at(b, 5);
    if (w == NULL)
        return -1;
    int i = 0;
    int rc = ei_encode_tuple_header(w, &i, (int)n);
    return enc_ei_done(b, rc, i, n <= 255 ? 2 : 5, "a tuple");
}

static inline int
enc_map_header(erpy_buf *b, Py_ssize_t n)
{
    if (enc_check_size((size_t)n, "dict") < 0)
        return -1;
    char *w = enc_ei_at(b, 5);
    if (w == NULL)
        return -1;
    int i = 0;
    int rc = ei_encode_map_header(w, &i, (int)n);
    return enc_ei_done(b, rc, i, 5, "a map");
}

/* The elements of a list (or list subclass) after its LIST_EXT header.  Each
 * item is held while it is encoded, and a size change (only possible from
 * Python code run by a user subclass) is an error, not a crash. */
static int
enc_list_items(erpy_enc *e, PyObject *list, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (ERPY_UNLIKELY(PyList_GET_SIZE(list) != n)) {
            PyErr_SetString(PyExc_RuntimeError, "list changed size during encoding");
            return -1;
        }
        PyObject *item = PyList_GET_ITEM(list, i);
        Py_INCREF(item);
        int rc = enc_term(e, item);
        Py_DECREF(item);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* list -> LIST_EXT ... NIL_EXT, or NIL_EXT when empty. */
ERPY_NOINLINE static int
enc_list(erpy_enc *e, PyObject *obj)
{
    Py_ssize_t n = PyList_GET_SIZE(obj);
    if (n == 0)
        return enc_nil(e->b);
    if (enc_list_header(e->b, n) < 0)
        return -1;
    if (enc_enter(e) < 0)
        return -1;
    int rc = enc_list_items(e, obj, n);
    enc_leave(e);
    if (rc < 0)
        return -1;
    return enc_nil(e->b);
}

/* tuple -> SMALL_TUPLE_EXT / LARGE_TUPLE_EXT. */
ERPY_NOINLINE static int
enc_tuple(erpy_enc *e, PyObject *obj)
{
    Py_ssize_t n = PyTuple_GET_SIZE(obj);
    if (enc_tuple_header(e->b, n) < 0)
        return -1;
    if (n == 0)
        return 0;
    if (enc_enter(e) < 0)
        return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((rc = enc_term(e, PyTuple_GET_ITEM(obj, i))) < 0)
            break;
    }
    enc_leave(e);
    return rc;
}

/* Keys distinct in Python can be one term in Erlang: 'a' and b'a' (both
 * <<"a">>), None and Atom('undefined') (Atom('nil') in Elixir mode), ('a',)
 * and (b'a',).  Erlang refuses a map with a repeated key, so such a dict
 * must fail here, before sending.
 * While encoding, each key's type is noted (a few pointer compares); only
 * when the types seen can collide (str with bytes, atoms with None/bool,
 * anything but those and int/float) are the keys encoded again, apart, and
 * their bytes compared.  Nearly all dicts skip that. */
enum { K_STR = 1, K_BYTES = 2, K_ATOM = 4, K_SINGLETON = 8, K_OTHER = 16 };

static inline int
key_kind(erpy_enc *e, PyObject *k)
{
    PyTypeObject *t = Py_TYPE(k);
    if (t == &PyUnicode_Type)
        return K_STR;
    if (t == (PyTypeObject *)e->c->Atom)
        return K_ATOM;
    if (t == &PyLong_Type || t == &PyFloat_Type)
        return 0;
    if (t == &PyBytes_Type)
        return K_BYTES;
    if (k == Py_None || t == &PyBool_Type)
        return K_SINGLETON;
    return K_OTHER;
}

static inline int
kinds_may_collide(int seen)
{
    return (seen & K_OTHER) || (seen & (K_STR | K_BYTES)) == (K_STR | K_BYTES) ||
           (seen & (K_ATOM | K_SINGLETON)) == (K_ATOM | K_SINGLETON);
}

static uint64_t
span_hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

/* Raises ValueError naming keys a and b.  Returns -1. */
static int
keys_collide(PyObject *a, PyObject *b)
{
    PyErr_Format(PyExc_ValueError,
                 "dict keys %.200R and %.200R are the same Erlang term; "
                 "a map cannot hold both", a, b);
    return -1;
}

/* Encodes the n keys of obj again, into a buffer of their own, and raises
 * ValueError if two of them are the same bytes, i.e. the same term. */
static int
check_distinct_keys(erpy_enc *e, PyObject *obj, Py_ssize_t n)
{
    erpy_buf tmp = {0};
    erpy_enc te = {e->c, &tmp, e->depth, e->none_as_nil};
    size_t *off = PyMem_Malloc((2 * (size_t)n + 1) * sizeof *off);
    PyObject **keys = PyMem_Malloc((size_t)n * sizeof *keys);
    size_t cap = 16;
    while (cap < 2 * (size_t)n)
        cap *= 2;
    Py_ssize_t *slot = PyMem_Malloc(cap * sizeof *slot);
    int rc = -1;
    Py_ssize_t got = 0;
    if (off == NULL || keys == NULL || slot == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (got < n && PyDict_Next(obj, &pos, &k, &v)) {
        Py_INCREF(k);
        keys[got] = k;
        off[got] = tmp.len;
        got++;
        if (enc_term(&te, k) < 0)
            goto done;
    }
    off[got] = tmp.len;
    for (size_t i = 0; i < cap; i++)
        slot[i] = -1;
    for (Py_ssize_t i = 0; i < got; i++) {
        size_t len = off[i + 1] - off[i];
        size_t h = (size_t)span_hash(tmp.data + off[i], len) & (cap - 1);
        for (;; h = (h + 1) & (cap - 1)) {
            Py_ssize_t j = slot[h];
            if (j < 0) {
                slot[h] = i;
                break;
            }
            if (off[j + 1] - off[j] == len && memcmp(tmp.data + off[j], tmp.data + off[i], len) == 0) {
                keys_collide(keys[j], keys[i]);
                goto done;
            }
        }
    }
    rc = 0;
done:
    for (Py_ssize_t i = 0; i < got; i++)
        Py_DECREF(keys[i]);
    PyMem_Free(slot);
    PyMem_Free(keys);
    PyMem_Free(off);
    erpy_buf_free(&tmp);
    return rc;
}

/* dict -> MAP_EXT: arity, then key/value pairs. */
ERPY_NOINLINE static int
enc_dict(erpy_enc *e, PyObject *obj)
{
    Py_ssize_t n = PyDict_GET_SIZE(obj);
    if (enc_map_header(e->b, n) < 0)
        return -1;
    if (n == 0)
        return 0;
    if (enc_enter(e) < 0)
        return -1;
    Py_ssize_t pos = 0, count = 0;
    PyObject *k, *v;
    int rc = 0, seen = 0;
    while (PyDict_Next(obj, &pos, &k, &v)) {
        if (++count > n)
            break;
        seen |= key_kind(e, k);
        Py_INCREF(k);
        Py_INCREF(v);
        rc = enc_term(e, k);
        if (rc == 0)
            rc = enc_term(e, v);
        Py_DECREF(k);
        Py_DECREF(v);
        if (rc < 0)
            break;
    }
    if (rc == 0 && (count != n || PyDict_GET_SIZE(obj) != n)) {
        PyErr_SetString(PyExc_RuntimeError, "dict changed size during encoding");
        rc = -1;
    }
    if (rc == 0 && n > 1 && kinds_may_collide(seen))
        rc = check_distinct_keys(e, obj, n);
    enc_leave(e);
    return rc;
}

/* Any C-contiguous buffer (memoryview, array.array, ...) as a binary. */
static int
enc_buffer(erpy_enc *e, PyObject *obj)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "cannot encode a non-C-contiguous %.200s as an Erlang binary",
                         Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    int rc = enc_binary(e->b, view.buf, view.len);
    PyBuffer_Release(&view);
    return rc;
}

/* erlang.ImproperList(items, tail) -> LIST_EXT with the tail instead of NIL. */
static int
enc_improper(erpy_enc *e, PyObject *obj)
{
    PyObject *items = NULL, *tail = NULL;
    int rc = -1;
    items = PyObject_GetAttrString(obj, "items");
    if (items == NULL)
        goto error;
    tail = PyObject_GetAttrString(obj, "tail");
    if (tail == NULL)
        goto error;
    if (!PyList_Check(items)) {
        PyErr_Format(PyExc_TypeError, "ImproperList.items must be a list, not %.200s",
                     Py_TYPE(items)->tp_name);
        goto error;
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "ImproperList needs at least one item");
        goto error;
    }
    if (enc_list_header(e->b, n) < 0)
        goto error;
    if (enc_enter(e) < 0)
        goto error;
    rc = enc_list_items(e, items, n);
    if (rc == 0)
        rc = enc_term(e, tail);
    enc_leave(e);
error:
    Py_XDECREF(items);
    Py_XDECREF(tail);
    return rc;
}

/* erlang.BitString(data, bits) -> BIT_BINARY_EXT (bits % 8 != 0, unused low
 * bits of the last byte zeroed) or BINARY_EXT (a whole number of bytes is a
 * binary in Erlang): both are ei_encode_bitstring's. */
static int
enc_bitstring(erpy_enc *e, PyObject *obj)
{
    PyObject *data = NULL, *bitsobj = NULL;
    int rc = -1;
    data = PyObject_GetAttrString(obj, "data");
    if (data == NULL)
        goto error;
    bitsobj = PyObject_GetAttrString(obj, "bits");
    if (bitsobj == NULL)
        goto error;
    if (!PyBytes_Check(data)) {
        PyErr_Format(PyExc_TypeError, "BitString.data must be bytes, not %.200s",
                     Py_TYPE(data)->tp_name);
        goto error;
    }
    Py_ssize_t bits = PyNumber_AsSsize_t(bitsobj, PyExc_OverflowError);
    if (bits == -1 && PyErr_Occurred())
        goto error;
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (bits < 0 || (bits + 7) / 8 != n) {
        PyErr_Format(PyExc_ValueError,
                     "bad BitString: %zd bits need %zd bytes of data, not %zd",
                     bits, bits < 0 ? (Py_ssize_t)0 : (bits + 7) / 8, n);
        goto error;
    }
    if (enc_check_size((size_t)n, "BitString") < 0)
        goto error;
    char *w = enc_ei_at(e->b, 6 + (size_t)n);
    if (w == NULL)
        goto error;
    int i = 0;
    int erc = ei_encode_bitstring(w, &i, PyBytes_AS_STRING(data), 0, (size_t)bits);
    rc = enc_ei_done(e->b, erc, i, (bits % 8 ? 6 : 5) + (size_t)n, "a bitstring");
error:
    Py_XDECREF(data);
    Py_XDECREF(bitsobj);
    return rc;
}

typedef struct {
    const unsigned char *start, *p, *end;
    int depth;
} erpy_skipper;

static int skip_term(erpy_skipper *s);
static int opaque_ei_agrees(PyObject *raw);

/* Pid / Reference / Port / Fun: their raw bytes, unchanged, after checking
 * that they hold exactly one term of the class's kind (tags), by the
 * bounds-checked skip and by ei_skip_term. */
static int
enc_opaque(erpy_enc *e, PyObject *obj, const char *tags)
{
    PyObject *raw = PyObject_GetAttrString(obj, "raw");
    int rc = -1;
    if (raw == NULL)
        return -1;
    if (!PyBytes_Check(raw)) {
        PyErr_Format(PyExc_TypeError, "%.200s.raw must be bytes, not %.200s",
                     Py_TYPE(obj)->tp_name, Py_TYPE(raw)->tp_name);
        goto error;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    erpy_skipper s = {p, p, p + n, 0};
    if (n < 1 || memchr(tags, p[0], strlen(tags)) == NULL || skip_term(&s) < 0 ||
        s.p != s.end || !opaque_ei_agrees(raw)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "%.200s.raw does not hold one external-term-format term of its kind",
                     Py_TYPE(obj)->tp_name);
        goto error;
    }
    if (enc_reserve(e->b, (size_t)n) < 0)
        goto error;
    memcpy(e->b->data + e->b->len, p, (size_t)n);
    e->b->len += (size_t)n;
    rc = 0;
error:
    Py_DECREF(raw);
    return rc;
}

static const char erpy_pid_tags[] = {T_PID, T_NEW_PID, 0};
static const char erpy_ref_tags[] = {T_REFERENCE, T_NEW_REFERENCE, T_NEWER_REFERENCE, 0};
static const char erpy_port_tags[] = {T_PORT, T_NEW_PORT, T_V4_PORT, 0};
static const char erpy_fun_tags[] = {T_NEW_FUN, T_EXPORT, T_FUN, 0};

/* Everything that is not an exact built-in type: subclasses, the classes of
 * erlang._types, buffers.  Returns -1 with TypeError for anything else. */
ERPY_NOINLINE static int
enc_other(erpy_enc *e, PyObject *obj)
{
    erpy_codec *c = e->c;
    if (PyObject_TypeCheck(obj, (PyTypeObject *)c->Atom))
        return enc_atom(e, obj);
    if (PyLong_Check(obj))
        return enc_long(e, obj);
    if (PyFloat_Check(obj))
        return enc_double(e, obj, PyFloat_AS_DOUBLE(obj));
    if (PyUnicode_Check(obj))
        return enc_str(e, obj);
    if (PyBytes_Check(obj))
        return enc_binary(e->b, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    if (PyByteArray_Check(obj))
        return enc_binary(e->b, PyByteArray_AS_STRING(obj), PyByteArray_GET_SIZE(obj));
    if (PyList_Check(obj))
        return enc_list(e, obj);
    if (PyTuple_Check(obj))
        return enc_tuple(e, obj);
    if (PyDict_Check(obj))
        return enc_dict(e, obj);
    if (PyObject_TypeCheck(obj, (PyTypeObject *)c->ImproperList))
        return enc_improper(e, obj);
    if (PyObject_TypeCheck(obj, (PyTypeObject *)c->BitString))
        return enc_bitstring(e, obj);
    if (PyObject_TypeCheck(obj, (PyTypeObject *)c->Pid))
        return enc_opaque(e, obj, erpy_pid_tags);
    if (PyObject_TypeCheck(obj, (PyTypeObject *)c->Reference))
        return enc_opaque(e, obj, erpy_ref_tags);
    if (PyObject_TypeCheck(obj, (PyTypeObject *)c->Port))
        return enc_opaque(e, obj, erpy_port_tags);
    if (PyObject_TypeCheck(obj, (PyTypeObject *)c->Fun))
        return enc_opaque(e, obj, erpy_fun_tags);
    if (PyObject_CheckBuffer(obj))
        return enc_buffer(e, obj);
    return enc_unsupported(obj);
}

/* float, bytes, None/True/False: out of line, like the other encoders, so
 * that enc_term is a plain dispatch that saves no registers (see
 * dec_term). */
ERPY_NOINLINE static int
enc_float(erpy_enc *e, PyObject *obj)
{
    return enc_double(e, obj, PyFloat_AS_DOUBLE(obj));
}

ERPY_NOINLINE static int
enc_bytes(erpy_enc *e, PyObject *obj)
{
    return enc_binary(e->b, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
}

ERPY_NOINLINE static int
enc_singleton(erpy_enc *e, PyObject *obj)
{
    if (obj == Py_None)
        return e->none_as_nil ? enc_atom_utf8(e->b, "nil", 3)
                              : enc_atom_utf8(e->b, "undefined", 9);
    if (obj == Py_True)
        return enc_atom_utf8(e->b, "true", 4);
    return enc_atom_utf8(e->b, "false", 5);
}

/* One term: exact built-in types first, by type pointer. */
static int
enc_term(erpy_enc *e, PyObject *obj)
{
    PyTypeObject *t = Py_TYPE(obj);
    if (t == &PyUnicode_Type)
        return enc_str(e, obj);
    if (t == &PyLong_Type)
        return enc_long(e, obj);
    if (t == (PyTypeObject *)e->c->Atom)
        return enc_atom(e, obj);
    if (t == &PyList_Type)
        return enc_list(e, obj);
    if (t == &PyTuple_Type)
        return enc_tuple(e, obj);
    if (t == &PyDict_Type)
        return enc_dict(e, obj);
    if (t == &PyFloat_Type)
        return enc_float(e, obj);
    if (obj == Py_None || t == &PyBool_Type)
        return enc_singleton(e, obj);
    if (t == &PyBytes_Type)
        return enc_bytes(e, obj);
    return enc_other(e, obj);
}

PyObject *
erpy_term_to_binary_big(PyObject *obj, int *handled)
{
    const char *data;
    Py_ssize_t n;
    *handled = 0;
    if (PyBytes_CheckExact(obj)) {
        data = PyBytes_AS_STRING(obj);
        n = PyBytes_GET_SIZE(obj);
    } else if (PyByteArray_CheckExact(obj)) {
        data = PyByteArray_AS_STRING(obj);
        n = PyByteArray_GET_SIZE(obj);
    } else if (PyUnicode_CheckExact(obj) && PyUnicode_GET_LENGTH(obj) >= ERPY_BIG_BINARY) {
        data = PyUnicode_AsUTF8AndSize(obj, &n);
        if (data == NULL) {
            PyErr_Clear();   /* lone surrogates: erpy_encode reports them */
            return NULL;
        }
    } else {
        return NULL;
    }
    if (n < ERPY_BIG_BINARY || (size_t)n > ERPY_EI_MAX - 16)
        return NULL;   /* small: the scratch buffer is faster; huge: erpy_encode raises */
    *handled = 1;
    PyObject *res = PyBytes_FromStringAndSize(NULL, 6 + n);
    if (res == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(res);
    w[0] = (char)131;
    int i = 1;
    if (ei_encode_binary(w, &i, data, (long)n) < 0 || i != 6 + n) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_SystemError, "ei_encode_binary failed");
        return NULL;
    }
    return res;
}

int
erpy_encode(erpy_codec *c, const erpy_encode_opts *o, erpy_buf *b, PyObject *obj)
{
    erpy_enc e = {c, b, 0, o != NULL && o->none_as_nil};
    return enc_term(&e, obj);
}

/* ================================================================ decoding */

/* Sets ValueError("malformed term: ...") with the byte offset of p in the
 * input.  Returns -1. */
static int
malformed_at(const unsigned char *start, const unsigned char *p, const char *what)
{
    PyErr_Format(PyExc_ValueError, "malformed term: %s (at byte %zd)",
                 what, (Py_ssize_t)(p - start));
    return -1;
}

/* -------------------------------------------------- bounds-checked skipping */

/* s->p must have n more bytes.  Returns -1 with ValueError set. */
#define SKIP_NEED(s, n)                                                        \
    do {                                                                       \
        if ((size_t)((s)->end - (s)->p) < (size_t)(n))                         \
            return malformed_at((s)->start, (s)->p, "truncated");              \
    } while (0)

/* Skips an atom (any of the four atom forms).  Returns -1 with ValueError. */
static int
skip_atom(erpy_skipper *s)
{
    SKIP_NEED(s, 2);
    const unsigned char *p = s->p;
    size_t n;
    if (p[0] == T_SMALL_ATOM_UTF8 || p[0] == T_SMALL_ATOM) {
        n = 2 + (size_t)p[1];
    }
    else if (p[0] == T_ATOM_UTF8 || p[0] == T_ATOM) {
        SKIP_NEED(s, 3);
        n = 3 + (size_t)get16be(p + 1);
    }
    else {
        return malformed_at(s->start, p, "expected an atom");
    }
    SKIP_NEED(s, n);
    s->p += n;
    return 0;
}

/* Skips an integer (small, 32-bit or big).  Returns -1 with ValueError. */
static int
skip_integer(erpy_skipper *s)
{
    SKIP_NEED(s, 1);
    unsigned char tag = s->p[0];
    if (tag != T_SMALL_INTEGER && tag != T_INTEGER && tag != T_SMALL_BIG &&
        tag != T_LARGE_BIG)
        return malformed_at(s->start, s->p, "expected an integer");
    return skip_term(s);
}

/* Skips a pid.  Returns -1 with ValueError. */
static int
skip_pid(erpy_skipper *s)
{
    SKIP_NEED(s, 1);
    if (s->p[0] != T_PID && s->p[0] != T_NEW_PID)
        return malformed_at(s->start, s->p, "expected a pid");
    return skip_term(s);
}

/* Skips n terms.  Returns -1 with an exception set. */
static int
skip_n(erpy_skipper *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (skip_term(s) < 0)
            return -1;
    }
    return 0;
}

/* Returns -1 with RecursionError set. */
static int
skip_too_deep(void)
{
    PyErr_Format(PyExc_RecursionError,
                 "maximum nesting depth (%d) exceeded while decoding an Erlang term",
                 ERPY_MAX_DEPTH);
    return -1;
}

/* Skips one term of any kind, checking every length against the input and
 * the structure of pids, references, ports and funs.  List tails are
 * followed in a loop but count as nesting like elements do, because
 * ei_skip_term, run on the same bytes afterwards, recurses into them;
 * nesting is capped at ERPY_MAX_DEPTH.  Returns -1 with ValueError (or
 * RecursionError) set. */
static int
skip_term(erpy_skipper *s)
{
    int rc = -1;
    int entered = 1;   /* levels to leave at the end: this term and its tails */
    if (s->depth >= ERPY_MAX_DEPTH)
        return skip_too_deep();
    if (erpy_stack_check("decoding") < 0)
        return -1;
    s->depth++;
    for (;;) {
        if (s->p >= s->end) {
            malformed_at(s->start, s->p, "truncated");
            goto done;
        }
        const unsigned char *p = s->p;
        size_t left = (size_t)(s->end - p);
        size_t n;   /* the term's size when it is known from its header */
#define NEED(k) do { if (left < (size_t)(k)) { malformed_at(s->start, p, "truncated"); goto done; } } while (0)
        switch (p[0]) {
        case T_SMALL_INTEGER: n = 2; break;
        case T_INTEGER: n = 5; break;
        case T_NEW_FLOAT: n = 9; break;
        case T_FLOAT: n = 32; break;
        case T_NIL: n = 1; break;
        case T_SMALL_ATOM:
        case T_SMALL_ATOM_UTF8:
            NEED(2);
            n = 2 + (size_t)p[1];
            break;
        case T_ATOM:
        case T_ATOM_UTF8:
        case T_STRING:
            NEED(3);
            n = 3 + (size_t)get16be(p + 1);
            break;
        case T_BINARY:
            NEED(5);
            n = 5 + (size_t)erpy_get_be32(p + 1);
            break;
        case T_BIT_BINARY:
            NEED(6);
            n = 6 + (size_t)erpy_get_be32(p + 1);
            break;
        case T_SMALL_BIG:
            NEED(3);
            n = 3 + (size_t)p[1];
            break;
        case T_LARGE_BIG:
            NEED(6);
            n = 6 + (size_t)erpy_get_be32(p + 1);
            break;
        case T_SMALL_TUPLE:
            NEED(2);
            s->p += 2;
            rc = skip_n(s, p[1]);
            goto done;
        case T_LARGE_TUPLE:
            NEED(5);
            s->p += 5;
            rc = skip_n(s, erpy_get_be32(p + 1));
            goto done;
        case T_MAP:
            NEED(5);
            s->p += 5;
            if (skip_n(s, erpy_get_be32(p + 1)) < 0 || skip_n(s, erpy_get_be32(p + 1)) < 0)
                goto done;
            rc = 0;
            goto done;
        case T_LIST:
            NEED(5);
            s->p += 5;
            if (skip_n(s, erpy_get_be32(p + 1)) < 0)
                goto done;
            if (s->depth >= ERPY_MAX_DEPTH) {
                skip_too_deep();
                goto done;
            }
            s->depth++;
            entered++;
            continue;   /* the tail */
        case T_PID:
        case T_NEW_PID:
            s->p += 1;
            if (skip_atom(s) < 0)
                goto done;
            n = p[0] == T_PID ? 9 : 12;
            p = s->p;
            left = (size_t)(s->end - p);
            break;
        case T_PORT:
        case T_REFERENCE:
        case T_NEW_PORT:
        case T_V4_PORT:
            s->p += 1;
            if (skip_atom(s) < 0)
                goto done;
            n = p[0] == T_V4_PORT ? 12 : p[0] == T_NEW_PORT ? 8 : 5;
            p = s->p;
            left = (size_t)(s->end - p);
            break;
        case T_NEW_REFERENCE:
        case T_NEWER_REFERENCE: {
            NEED(3);
            size_t words = get16be(p + 1);
            s->p += 3;
            if (skip_atom(s) < 0)
                goto done;
            n = (p[0] == T_NEW_REFERENCE ? 1 : 4) + 4 * words;
            p = s->p;
            left = (size_t)(s->end - p);
            break;
        }
        case T_EXPORT:
            s->p += 1;
            if (skip_atom(s) < 0 || skip_atom(s) < 0)
                goto done;
            p = s->p;
            left = (size_t)(s->end - p);
            NEED(2);
            if (p[0] != T_SMALL_INTEGER) {
                malformed_at(s->start, p, "export arity is not a small integer");
                goto done;
            }
            n = 2;
            break;
        case T_NEW_FUN: {
            /* Size(4) Arity(1) Uniq(16) Index(4) NumFree(4) Module OldIndex
             * OldUniq Pid FreeVars...; Size counts itself and what follows. */
            NEED(30);
            size_t size = erpy_get_be32(p + 1);
            uint32_t nfree = erpy_get_be32(p + 26);
            s->p += 30;
            if (skip_atom(s) < 0 || skip_integer(s) < 0 || skip_integer(s) < 0 ||
                skip_pid(s) < 0 || skip_n(s, nfree) < 0)
                goto done;
            if ((size_t)(s->p - p) != 1 + size) {
                malformed_at(s->start, p, "fun size does not match its contents");
                goto done;
            }
            rc = 0;
            goto done;
        }
        case T_FUN: {
            /* NumFree(4) Pid Module Index Uniq FreeVars... */
            NEED(5);
            uint32_t nfree = erpy_get_be32(p + 1);
            s->p += 5;
            if (skip_pid(s) < 0 || skip_atom(s) < 0 || skip_integer(s) < 0 ||
                skip_integer(s) < 0 || skip_n(s, nfree) < 0)
                goto done;
            rc = 0;
            goto done;
        }
        default:
            malformed_at(s->start, p, "unknown tag");
            goto done;
        }
        NEED(n);
        s->p = p + n;
        rc = 0;
        goto done;
#undef NEED
    }
done:
    s->depth -= entered;
    return rc;
}

/* 1 when ei_skip_term reads the term in raw (a bytes object that the skip
 * above has accepted) as exactly its whole length, else 0 (no exception).
 * ei is run on raw rather than on the input because a bytes object ends with
 * a NUL: ei_decode_double reads an old FLOAT_EXT (inside a fun's free
 * variables) with sscanf, which would otherwise run on past the term. */
static int
opaque_ei_agrees(PyObject *raw)
{
    size_t n = (size_t)PyBytes_GET_SIZE(raw);
    if (n > ERPY_EI_MAX)
        return 0;
    int i = 0;
    return ei_skip_term(PyBytes_AS_STRING(raw), &i) == 0 && (size_t)i == n;
}

/* ------------------------------------------------------------ the decoder */

typedef struct {
    erpy_codec *c;
    int as_bytes;
    int nil_as_none;
    const unsigned char *start, *p, *end;
    int depth;
} erpy_dec;

static PyObject *dec_term(erpy_dec *d);

/* Returns NULL with ValueError("malformed term: ...") set. */
static PyObject *
dec_malformed(erpy_dec *d, const unsigned char *at, const char *what)
{
    malformed_at(d->start, at, what);
    return NULL;
}

#define DEC_LEFT(d) ((size_t)((d)->end - (d)->p))
/* In a function returning PyObject*: the input must hold k more bytes. */
#define DEC_NEED(d, k)                                                         \
    do {                                                                       \
        if (ERPY_UNLIKELY(DEC_LEFT(d) < (size_t)(k)))                          \
            return dec_malformed((d), (d)->p, "truncated");                    \
    } while (0)

/* The item at `at`, `size` bytes that are known to be inside the input, is
 * too large for ei's int index.  Returns NULL with ValueError set. */
static PyObject *
dec_too_large(erpy_dec *d, const unsigned char *at, size_t size)
{
    PyErr_Format(PyExc_ValueError,
                 "term too large: an item of %zu bytes or elements at byte %zd "
                 "(at most 2 GiB per item)", size, (Py_ssize_t)(at - d->start));
    return NULL;
}

/* After an ei decoder ran on the item at `at` whose `size` bytes were
 * checked to be inside the input: rc and i are ei's result and index.
 * Returns 0 when ei read exactly those bytes, else -1 with ValueError set. */
static inline int
dec_ei_check(erpy_dec *d, const unsigned char *at, int rc, int i, size_t size)
{
    if (ERPY_LIKELY(rc == 0 && (size_t)i == size))
        return 0;
    malformed_at(d->start, at, "ei could not decode the term");
    return -1;
}

/* Returns -1 with RecursionError set. */
static inline int
dec_enter(erpy_dec *d)
{
    if (ERPY_UNLIKELY(d->depth >= ERPY_MAX_DEPTH)) {
        PyErr_Format(PyExc_RecursionError,
                     "maximum nesting depth (%d) exceeded while decoding an Erlang term",
                     ERPY_MAX_DEPTH);
        return -1;
    }
    if (Py_EnterRecursiveCall(" while decoding an Erlang term"))
        return -1;
    if (ERPY_UNLIKELY(erpy_stack_check("decoding") < 0)) {
        Py_LeaveRecursiveCall();
        return -1;
    }
    d->depth++;
    return 0;
}

static inline void
dec_leave(erpy_dec *d)
{
    d->depth--;
    Py_LeaveRecursiveCall();
}

/* 1 when s[0..n) is all ASCII. */
static inline int
erpy_is_ascii(const unsigned char *s, size_t n)
{
    const uint64_t high = 0x8080808080808080ULL;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & high)
            return 0;
    }
    unsigned char acc = 0;
    for (; i < n; i++)
        acc |= s[i];
    return acc < 0x80;
}

/* erpy_copy_ascii from byte i on, a byte at a time. */
static inline size_t
erpy_copy_ascii_tail(unsigned char *dst, const unsigned char *s, size_t i, size_t n)
{
    for (; i < n; i++) {
        if (s[i] & 0x80)
            return i;
        dst[i] = s[i];
    }
    return n;
}

#if defined(ERPY_X86_64)
/* erpy_copy_ascii with 32-byte loads and stores, on CPUs with AVX2. */
__attribute__((target("avx2"))) static size_t
erpy_copy_ascii_avx2(unsigned char *dst, const unsigned char *s, size_t n)
{
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + i + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(s + i + 96));
        if (_mm256_movemask_epi8(_mm256_or_si256(_mm256_or_si256(a, b),
                                                 _mm256_or_si256(c, e))))
            break;
        _mm256_storeu_si256((__m256i *)(dst + i), a);
        _mm256_storeu_si256((__m256i *)(dst + i + 32), b);
        _mm256_storeu_si256((__m256i *)(dst + i + 64), c);
        _mm256_storeu_si256((__m256i *)(dst + i + 96), e);
    }
    return erpy_copy_ascii_tail(dst, s, i, n);
}
#endif

/* Copies s[0..n) to dst as long as it is ASCII.  Returns the number of
 * bytes copied: n when all of s is ASCII, else the offset of the first byte
 * that is not.  One pass, as wide as the CPU allows: a scan and then a copy,
 * or 16-byte stores, take twice as long as a memcpy of 64 KiB (measured),
 * and then decoding text is slower than erlpack's decoding it to bytes. */
static size_t
erpy_copy_ascii(unsigned char *dst, const unsigned char *s, size_t n)
{
    size_t i = 0;
#if defined(ERPY_X86_64)
    if (n >= 256 && __builtin_cpu_supports("avx2"))
        return erpy_copy_ascii_avx2(dst, s, n);
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
        if (_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, e))))
            break;
        _mm_storeu_si128((__m128i *)(dst + i), a);
        _mm_storeu_si128((__m128i *)(dst + i + 16), b);
        _mm_storeu_si128((__m128i *)(dst + i + 32), c);
        _mm_storeu_si128((__m128i *)(dst + i + 48), e);
    }
#else
    const uint64_t high = 0x8080808080808080ULL;
    for (; i + 64 <= n; i += 64) {
        uint64_t w[8];
        memcpy(w, s + i, 64);
        if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) & high)
            break;
        memcpy(dst + i, w, 64);
    }
#endif
    return erpy_copy_ascii_tail(dst, s, i, n);
}

/* 1 when s[0..n) is valid UTF-8 as Python's strict decoder sees it (no
 * overlong forms, no surrogates, nothing past U+10FFFF). */
static int
erpy_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c < 0xC2)
            return 0;
        if (c < 0xE0) {
            if (n - i < 2 || (s[i + 1] & 0xC0) != 0x80)
                return 0;
            i += 2;
            continue;
        }
        if (c < 0xF0) {
            if (n - i < 3)
                return 0;
            unsigned char c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80)
                return 0;
            if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F))
                return 0;
            i += 3;
            continue;
        }
        if (c < 0xF5) {
            if (n - i < 4)
                return 0;
            unsigned char c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80)
                return 0;
            if ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 > 0x8F))
                return 0;
            i += 4;
            continue;
        }
        return 0;
    }
    return 1;
}

/* A str from bytes known to be valid UTF-8.  Returns a new reference. */
static PyObject *
dec_utf8_str(const unsigned char *s, size_t n, int ascii)
{
    if (ascii) {
        PyObject *u = PyUnicode_New((Py_ssize_t)n, 127);
        if (u != NULL)
            memcpy(PyUnicode_1BYTE_DATA(u), s, n);
        return u;
    }
    return PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, NULL);
}

/* A binary's bytes: str when valid UTF-8 (unless binaries_as_bytes), else
 * bytes.  Returns a new reference. */
static PyObject *
dec_binary(erpy_dec *d, const unsigned char *s, size_t n)
{
    if (!d->as_bytes) {
        size_t k = 0;
        /* Text usually starts with ASCII and is often all ASCII: then the
         * str is made at once and checked while the bytes are copied in.
         * Other data usually has a byte >= 0x80 among its first 16. */
        if (erpy_is_ascii(s, n < 16 ? n : 16)) {
            PyObject *u = PyUnicode_New((Py_ssize_t)n, 127);
            if (u == NULL)
                return NULL;
            k = erpy_copy_ascii(PyUnicode_1BYTE_DATA(u), s, n);
            if (k == n)
                return u;
            Py_DECREF(u);
        }
        /* s[0..k) is ASCII, so s + k is at a character boundary. */
        if (erpy_utf8_valid(s + k, n - k))
            return PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, NULL);
    }
    return PyBytes_FromStringAndSize((const char *)s, (Py_ssize_t)n);
}

/* An atom of `size` bytes at `at` (inside the input), any of the four forms,
 * read by ei_decode_atom_as as UTF-8.  true/false/undefined (nil in Elixir
 * mode) are the Python singletons; other names are erlang.Atom instances, shared through the
 * bounded atom_cache (keyed by the UTF-8 name).  Returns a new reference. */
ERPY_NOINLINE static PyObject *
dec_atom(erpy_dec *d, const unsigned char *at, size_t size)
{
    char name[MAXATOMLEN_UTF8];   /* 255 characters of up to 4 bytes, and a NUL */
    erlang_char_encoding res = ERLANG_UTF8;
    int i = 0;
    /* With the bytes inside the input, ei fails only for a name that does
     * not fit: over 1020 bytes of UTF-8, so over 255 characters. */
    if (ei_decode_atom_as((const char *)at, &i, name, (int)sizeof name, ERLANG_UTF8,
                          NULL, &res) < 0)
        return dec_malformed(d, at, "atom longer than 255 characters");
    if (dec_ei_check(d, at, 0, i, size) < 0)
        return NULL;
    d->p = at + size;
    size_t hdr = (at[0] == T_SMALL_ATOM || at[0] == T_SMALL_ATOM_UTF8) ? 2 : 3;
    size_t n = size - hdr;
    int ascii = res == ERLANG_ASCII;
    if (!ascii && (at[0] == T_ATOM || at[0] == T_SMALL_ATOM)) {
        /* ei wrote each Latin-1 byte >= 0x80 as two UTF-8 bytes. */
        for (size_t k = hdr; k < size; k++)
            n += at[k] >> 7;
    }
    const unsigned char *s = (const unsigned char *)name;
    PyObject *key = NULL, *str = NULL, *atom = NULL;
    /* The name that is None: undefined, or nil in Elixir mode (where
     * undefined stays an Atom).  Tested only for names of that length. */
    switch (n) {
    case 3:
        if (d->nil_as_none && memcmp(s, "nil", 3) == 0)
            Py_RETURN_NONE;
        break;
    case 4:
        if (memcmp(s, "true", 4) == 0)
            Py_RETURN_TRUE;
        break;
    case 5:
        if (memcmp(s, "false", 5) == 0)
            Py_RETURN_FALSE;
        break;
    case 9:
        if (!d->nil_as_none && memcmp(s, "undefined", 9) == 0)
            Py_RETURN_NONE;
        break;
    }
    PyObject *cache = d->c->atom_cache;
    key = PyBytes_FromStringAndSize(name, (Py_ssize_t)n);
    if (key == NULL)
        return NULL;
    atom = PyDict_GetItemWithError(cache, key);
    if (atom != NULL) {
        Py_INCREF(atom);
        Py_DECREF(key);
        return atom;
    }
    if (PyErr_Occurred())
        goto error;
    if (!ascii && !erpy_utf8_valid(s, n)) {
        dec_malformed(d, at, "atom name is not valid UTF-8");
        goto error;
    }
    str = dec_utf8_str(s, n, ascii);
    if (str == NULL)
        goto error;
    if (PyUnicode_GET_LENGTH(str) > 255) {
        dec_malformed(d, at, "atom longer than 255 characters");
        goto error;
    }
    atom = PyObject_CallOneArg(d->c->Atom, str);
    if (atom == NULL)
        goto error;
    if (PyDict_GET_SIZE(cache) >= ERPY_ATOM_CACHE_MAX)
        PyDict_Clear(cache);
    if (PyDict_SetItem(cache, key, atom) < 0)
        goto error;
    Py_DECREF(key);
    Py_DECREF(str);
    return atom;
error:
    Py_XDECREF(key);
    Py_XDECREF(str);
    Py_XDECREF(atom);
    return NULL;
}

/* SMALL_BIG_EXT / LARGE_BIG_EXT at `at`: hdr header bytes, n magnitude bytes
 * (inside the input), sign already checked.  Values that fit 64 bits go
 * through ei_decode_longlong / ei_decode_ulonglong, the rest through
 * ei_decode_big and int.from_bytes.  Returns a new reference. */
ERPY_NOINLINE static PyObject *
dec_bigint(erpy_dec *d, const unsigned char *at, size_t hdr, size_t n)
{
    const char *p = (const char *)at;
    size_t size = hdr + n;
    size_t m = n;   /* without high zero bytes (non-canonical, but valid) */
    while (m > 0 && at[hdr + m - 1] == 0)
        m--;
    int i = 0;
    if (m <= 8) {
        long long v;
        if (ei_decode_longlong(p, &i, &v) == 0) {
            if (dec_ei_check(d, at, 0, i, size) < 0)
                return NULL;
            d->p = at + size;
            return PyLong_FromLongLong(v);
        }
        unsigned long long u;
        i = 0;
        if (at[hdr - 1] == 0 && ei_decode_ulonglong(p, &i, &u) == 0) {
            if (dec_ei_check(d, at, 0, i, size) < 0)
                return NULL;
            d->p = at + size;
            return PyLong_FromUnsignedLongLong(u);
        }
        /* A negative magnitude from 2^63 + 1 to 2^64 - 1: as below. */
    }
    PyObject *bytes = NULL, *pos = NULL, *r = NULL;
    size_t ndigits = (n + 1) / 2;
    unsigned short *digits = PyMem_Malloc(ndigits * sizeof *digits);
    if (digits == NULL)
        return PyErr_NoMemory();
    erlang_big big = {(unsigned int)n, 0, digits};
    i = 0;
    int rc = ei_decode_big(p, &i, &big);
    if (dec_ei_check(d, at, rc, i, size) < 0)
        goto error;
    d->p = at + size;
    bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(2 * ndigits));
    if (bytes == NULL)
        goto error;
    unsigned char *b = (unsigned char *)PyBytes_AS_STRING(bytes);
    for (size_t k = 0; k < ndigits; k++) {
        b[2 * k] = (unsigned char)digits[k];
        b[2 * k + 1] = (unsigned char)(digits[k] >> 8);
    }
    pos = PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "Os",
                              bytes, "little");
    if (pos == NULL)
        goto error;
    if (!big.is_neg) {
        r = pos;
        pos = NULL;
    }
    else {
        r = PyNumber_Negative(pos);
    }
error:
    PyMem_Free(digits);
    Py_XDECREF(bytes);
    Py_XDECREF(pos);
    return r;
}

/* The old text FLOAT_EXT: 31 bytes of "%.20e" padded with NULs.  d->p is
 * past the tag.  Hand-written: see the top comment.  Returns a new
 * reference. */
ERPY_NOINLINE static PyObject *
dec_old_float(erpy_dec *d, const unsigned char *at)
{
    char text[32];
    memcpy(text, d->p, 31);
    text[31] = '\0';
    char *endp = NULL;
    double v = PyOS_string_to_double(text, &endp, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return dec_malformed(d, at, "unreadable FLOAT_EXT");
    }
    for (const char *q = endp; *q; q++) {
        if (*q != ' ')
            return dec_malformed(d, at, "unreadable FLOAT_EXT");
    }
    if (!isfinite(v))
        return dec_malformed(d, at, "float is not finite");
    d->p += 31;
    return PyFloat_FromDouble(v);
}

/* NIL_EXT at d->p (checked to be inside the input), by
 * ei_decode_list_header.  Returns 0, or -1 with ValueError set. */
static int
dec_nil(erpy_dec *d)
{
    int i = 0, arity = -1;
    int rc = ei_decode_list_header((const char *)d->p, &i, &arity);
    if (dec_ei_check(d, d->p, rc || arity != 0, i, 1) < 0)
        return -1;
    d->p += 1;
    return 0;
}

/* LIST_EXT (d->p at the tag), its tail followed in a loop: a proper list
 * gives list, anything else erlang.ImproperList.  A list whose tail is
 * itself a list (LIST_EXT or STRING_EXT) is one longer list, as in Erlang.
 * Returns a new reference. */
ERPY_NOINLINE static PyObject *
dec_list(erpy_dec *d)
{
    PyObject *list = NULL, *tail = NULL, *res = NULL;
    if (dec_enter(d) < 0)
        return NULL;
    for (;;) {
        const unsigned char *at = d->p;
        if (DEC_LEFT(d) < 5) {
            dec_malformed(d, at, "truncated");
            goto error;
        }
        size_t n = erpy_get_be32(at + 1);
        if (n >= DEC_LEFT(d) - 5) {   /* n elements and a tail: n + 1 bytes at least */
            dec_malformed(d, at, "list length exceeds the input");
            goto error;
        }
        if (n > ERPY_EI_MAX) {
            dec_too_large(d, at, n);
            goto error;
        }
        int i = 0, arity = -1;
        int rc = ei_decode_list_header((const char *)at, &i, &arity);
        if (dec_ei_check(d, at, rc || (size_t)arity != n, i, 5) < 0)
            goto error;
        d->p += 5;
        if (list == NULL) {
            list = PyList_New((Py_ssize_t)n);
            if (list == NULL)
                goto error;
            for (size_t k = 0; k < n; k++) {
                PyObject *item = dec_term(d);
                if (item == NULL)
                    goto error;
                PyList_SET_ITEM(list, (Py_ssize_t)k, item);
            }
        }
        else {
            for (size_t k = 0; k < n; k++) {
                PyObject *item = dec_term(d);
                if (item == NULL)
                    goto error;
                int arc = PyList_Append(list, item);
                Py_DECREF(item);
                if (arc < 0)
                    goto error;
            }
        }
        if (d->p >= d->end) {
            dec_malformed(d, d->p, "truncated");
            goto error;
        }
        unsigned char tag = *d->p;
        if (tag == T_NIL) {
            if (dec_nil(d) < 0)
                goto error;
            break;
        }
        if (tag == T_LIST)
            continue;
        tail = dec_term(d);
        if (tail == NULL)
            goto error;
        if (tag == T_STRING) {   /* a charlist tail: a proper list */
            Py_ssize_t k = PyList_GET_SIZE(list);
            if (PyList_SetSlice(list, k, k, tail) < 0)
                goto error;
            Py_CLEAR(tail);
        }
        break;
    }
    if (tail == NULL) {
        res = list;
        list = NULL;
    }
    else if (PyList_GET_SIZE(list) == 0) {
        /* [ | T] with no elements is T itself (Erlang reads it so). */
        res = tail;
        tail = NULL;
    }
    else {
        res = PyObject_CallFunctionObjArgs(d->c->ImproperList, list, tail, NULL);
    }
error:
    dec_leave(d);
    Py_XDECREF(list);
    Py_XDECREF(tail);
    return res;
}

/* SMALL_TUPLE_EXT / LARGE_TUPLE_EXT at d->p, whose hdr header bytes are
 * inside the input.  Returns a new reference. */
ERPY_NOINLINE static PyObject *
dec_tuple(erpy_dec *d, size_t hdr)
{
    const unsigned char *at = d->p;
    size_t n = hdr == 2 ? at[1] : erpy_get_be32(at + 1);
    if (n > DEC_LEFT(d) - hdr)
        return dec_malformed(d, at, "tuple arity exceeds the input");
    if (n > ERPY_EI_MAX)
        return dec_too_large(d, at, n);
    int i = 0, arity = -1;
    int rc = ei_decode_tuple_header((const char *)at, &i, &arity);
    if (dec_ei_check(d, at, rc || (size_t)arity != n, i, hdr) < 0)
        return NULL;
    d->p += hdr;
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (t == NULL || n == 0)
        return t;
    if (dec_enter(d) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    for (size_t k = 0; k < n; k++) {
        PyObject *item = dec_term(d);
        if (item == NULL) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)k, item);
    }
    dec_leave(d);
    return t;
}

/* Replaces the pending exception of a failed map insert, when it is the
 * TypeError of an unhashable key, with one that names the key's type. */
static void
dec_unhashable_key(PyObject *key)
{
    if (!PyErr_ExceptionMatches(PyExc_TypeError))
        return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    PyErr_Format(PyExc_TypeError, "Erlang map key decodes to an unhashable %.200s (%S)",
                 Py_TYPE(key)->tp_name, ev);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(tb);
}

/* MAP_EXT at d->p, whose 5 header bytes are inside the input.  Returns a new
 * reference. */
ERPY_NOINLINE static PyObject *
dec_map(erpy_dec *d)
{
    const unsigned char *at = d->p;
    size_t n = erpy_get_be32(at + 1);
    if (n > (DEC_LEFT(d) - 5) / 2)
        return dec_malformed(d, at, "map arity exceeds the input");
    if (n > ERPY_EI_MAX)
        return dec_too_large(d, at, n);
    int i = 0, arity = -1;
    int rc = ei_decode_map_header((const char *)at, &i, &arity);
    if (dec_ei_check(d, at, rc || (size_t)arity != n, i, 5) < 0)
        return NULL;
    d->p += 5;
    PyObject *dict = PyDict_New();
    if (dict == NULL || n == 0)
        return dict;
    if (dec_enter(d) < 0) {
        Py_DECREF(dict);
        return NULL;
    }
    for (size_t k = 0; k < n; k++) {
        PyObject *key = dec_term(d);
        if (key == NULL)
            goto error;
        PyObject *v = dec_term(d);
        if (v == NULL) {
            Py_DECREF(key);
            goto error;
        }
        int src = PyDict_SetItem(dict, key, v);
        Py_DECREF(v);
        if (src < 0) {
            dec_unhashable_key(key);
            Py_DECREF(key);
            goto error;
        }
        if ((size_t)PyDict_GET_SIZE(dict) != k + 1) {
            PyErr_Format(PyExc_ValueError,
                         "Erlang map has two keys that are equal in Python, %.200R "
                         "(such as 1 and 1.0, or an atom and a binary)", key);
            Py_DECREF(key);
            goto error;
        }
        Py_DECREF(key);
    }
    dec_leave(d);
    return dict;
error:
    dec_leave(d);
    Py_DECREF(dict);
    return NULL;
}

/* Pid / Reference / Port / Fun: the term's exact bytes, checked by the
 * bounds-checked skip and then by ei_skip_term, handed to the class.
 * Returns a new reference. */
ERPY_NOINLINE static PyObject *
dec_opaque(erpy_dec *d, PyObject *cls)
{
    const unsigned char *at = d->p;
    erpy_skipper s = {d->start, d->p, d->end, d->depth};
    if (skip_term(&s) < 0)
        return NULL;
    PyObject *raw = PyBytes_FromStringAndSize((const char *)at, s.p - at);
    if (raw == NULL)
        return NULL;
    if (!opaque_ei_agrees(raw)) {
        Py_DECREF(raw);
        return dec_malformed(d, at, "ei could not decode the term");
    }
    d->p = s.p;
    PyObject *r = PyObject_CallOneArg(cls, raw);
    Py_DECREF(raw);
    return r;
}

/* STRING_EXT (a charlist) at `at`, of `size` bytes inside the input: ei
 * checks its form and length, the characters are read from the input as
 * they are (ei would only copy them).  Returns a new reference: a list of
 * ints. */
ERPY_NOINLINE static PyObject *
dec_string(erpy_dec *d, const unsigned char *at, size_t size)
{
    int i = 0;
    int rc = ei_decode_string((const char *)at, &i, NULL);
    if (dec_ei_check(d, at, rc, i, size) < 0)
        return NULL;
    d->p = at + size;
    size_t n = size - 3;
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL)
        return NULL;
    for (size_t k = 0; k < n; k++)   /* cached small ints */
        PyList_SET_ITEM(list, (Py_ssize_t)k, PyLong_FromLong(at[3 + k]));
    return list;
}

/* The items of dec_term, each at d->p, each checking that its bytes are
 * inside the input before ei reads them.  They are kept out of dec_term
 * (ERPY_NOINLINE) so that dec_term is a plain dispatch that saves no
 * registers, and an element of a list costs little more than its ei call
 * (measured: ~10% faster on lists of numbers than with everything inlined
 * into one large dec_term).  Each returns a new reference. */

/* INTEGER_EXT: a tag and a big-endian signed 32-bit value, read here rather
 * than through ei_decode_long, like SMALL_INTEGER_EXT in dec_term and for
 * the same reason: the call costs as much as the work.  Decoding a list of
 * the 10,000 ints 0..9999 (benchmarks/run.sh) took 122 us through ei, 19x
 * faster than erlang_py where the target is 20x. */
ERPY_NOINLINE static PyObject *
dec_integer_ext(erpy_dec *d)
{
    DEC_NEED(d, 5);
    uint32_t u = erpy_get_be32(d->p + 1);
    d->p += 5;
    return PyLong_FromLong((long)(int32_t)u);
}

ERPY_NOINLINE static PyObject *
dec_new_float_ext(erpy_dec *d)
{
    DEC_NEED(d, 9);
    double v;
    int i = 0;
    int rc = ei_decode_double((const char *)d->p, &i, &v);
    if (dec_ei_check(d, d->p, rc, i, 9) < 0)
        return NULL;
    if (!isfinite(v))
        return dec_malformed(d, d->p, "float is not finite");
    d->p += 9;
    return PyFloat_FromDouble(v);
}

/* Any of the four atom forms. */
ERPY_NOINLINE static PyObject *
dec_atom_ext(erpy_dec *d)
{
    const unsigned char *p = d->p;
    size_t n;
    if (p[0] == T_SMALL_ATOM_UTF8 || p[0] == T_SMALL_ATOM) {
        DEC_NEED(d, 2);
        n = 2 + (size_t)p[1];
    }
    else {
        DEC_NEED(d, 3);
        n = 3 + (size_t)get16be(p + 1);
    }
    DEC_NEED(d, n);
    return dec_atom(d, p, n);
}

ERPY_NOINLINE static PyObject *
dec_binary_ext(erpy_dec *d)
{
    const unsigned char *p = d->p;
    DEC_NEED(d, 5);
    size_t n = erpy_get_be32(p + 1);
    DEC_NEED(d, 5 + n);
    if (n > ERPY_EI_MAX - 5)
        return dec_too_large(d, p, n);
    long len = -1;
    int i = 0;
    int rc = ei_decode_binary((const char *)p, &i, NULL, &len);
    if (dec_ei_check(d, p, rc || (size_t)len != n, i, 5 + n) < 0)
        return NULL;
    d->p += 5 + n;
    return dec_binary(d, p + 5, n);
}

ERPY_NOINLINE static PyObject *
dec_nil_ext(erpy_dec *d)
{
    if (dec_nil(d) < 0)
        return NULL;
    return PyList_New(0);
}

ERPY_NOINLINE static PyObject *
dec_string_ext(erpy_dec *d)
{
    DEC_NEED(d, 3);
    size_t n = 3 + (size_t)get16be(d->p + 1);
    DEC_NEED(d, n);
    return dec_string(d, d->p, n);
}

ERPY_NOINLINE static PyObject *
dec_big_ext(erpy_dec *d)
{
    const unsigned char *p = d->p;
    size_t hdr = p[0] == T_SMALL_BIG ? 3 : 6;
    DEC_NEED(d, hdr);
    size_t n = p[0] == T_SMALL_BIG ? p[1] : erpy_get_be32(p + 1);
    if (p[hdr - 1] > 1)
        return dec_malformed(d, p, "bad integer sign");
    DEC_NEED(d, hdr + n);
    if (n > ERPY_EI_MAX - hdr)
        return dec_too_large(d, p, n);
    return dec_bigint(d, p, hdr, n);
}

ERPY_NOINLINE static PyObject *
dec_bit_binary_ext(erpy_dec *d)
{
    const unsigned char *p = d->p;
    DEC_NEED(d, 6);
    size_t n = erpy_get_be32(p + 1);
    unsigned char last = p[5];
    if (n == 0 || last < 1 || last > 8)
        return dec_malformed(d, p, "bad bitstring length");
    DEC_NEED(d, 6 + n);
    if (n > ERPY_EI_MAX - 6)
        return dec_too_large(d, p, n);
    const char *data = NULL;
    unsigned int offs = 1;
    size_t bits = 0;
    int i = 0;
    int rc = ei_decode_bitstring((const char *)p, &i, &data, &offs, &bits);
    if (dec_ei_check(d, p, rc || offs != 0 || data != (const char *)p + 6, i, 6 + n) < 0)
        return NULL;
    d->p += 6 + n;
    if (bits % 8 == 0)
        return dec_binary(d, p + 6, n);
    return PyObject_CallFunction(d->c->BitString, "y#n", data, (Py_ssize_t)n,
                                 (Py_ssize_t)bits);
}

ERPY_NOINLINE static PyObject *
dec_unknown_tag(erpy_dec *d)
{
    if (d->p[0] == T_COMPRESSED)
        return dec_malformed(d, d->p, "a compressed term can only be the whole term");
    char what[48];
    snprintf(what, sizeof what, "unknown tag %u", (unsigned)d->p[0]);
    return dec_malformed(d, d->p, what);
}

/* One term at d->p.  Returns a new reference. */
static PyObject *
dec_term(erpy_dec *d)
{
    DEC_NEED(d, 1);
    const unsigned char *p = d->p;
    switch (p[0]) {
    case T_SMALL_INTEGER:
        /* Fast path: SMALL_INTEGER_EXT, a tag and one byte, is the most
         * frequent item of all, and the one where calling ei costs most
         * against the work: through ei_decode_long, decoding the 1000 ints
         * of benchmarks/bench_codec_quick.py took 30% longer than before ei,
         * with this ~20%.  ei_decode_long reads every other integer.  (On
         * the encoding side the ei call costs less, +5-15%: no fast path.) */
        DEC_NEED(d, 2);
        d->p += 2;
        return PyLong_FromLong(p[1]);
    case T_INTEGER:
        return dec_integer_ext(d);
    case T_NEW_FLOAT:
        return dec_new_float_ext(d);
    case T_SMALL_ATOM_UTF8:
    case T_SMALL_ATOM:
    case T_ATOM_UTF8:
    case T_ATOM:
        return dec_atom_ext(d);
    case T_BINARY:
        return dec_binary_ext(d);
    case T_NIL:
        return dec_nil_ext(d);
    case T_LIST:
        return dec_list(d);
    case T_SMALL_TUPLE:
        DEC_NEED(d, 2);
        return dec_tuple(d, 2);
    case T_LARGE_TUPLE:
        DEC_NEED(d, 5);
        return dec_tuple(d, 5);
    case T_MAP:
        DEC_NEED(d, 5);
        return dec_map(d);
    case T_FLOAT:
        DEC_NEED(d, 32);
        d->p += 1;
        return dec_old_float(d, p);
    case T_STRING:
        return dec_string_ext(d);
    case T_SMALL_BIG:
    case T_LARGE_BIG:
        return dec_big_ext(d);
    case T_BIT_BINARY:
        return dec_bit_binary_ext(d);
    case T_PID:
    case T_NEW_PID:
        return dec_opaque(d, d->c->Pid);
    case T_REFERENCE:
    case T_NEW_REFERENCE:
    case T_NEWER_REFERENCE:
        return dec_opaque(d, d->c->Reference);
    case T_PORT:
    case T_NEW_PORT:
    case T_V4_PORT:
        return dec_opaque(d, d->c->Port);
    case T_NEW_FUN:
    case T_EXPORT:
    case T_FUN:
        return dec_opaque(d, d->c->Fun);
    default:
        return dec_unknown_tag(d);
    }
}

/* A compressed term (term_to_binary(T, [compressed])): 'P', the size of the
 * uncompressed term, zlib data to the end of the term.  Inflated with
 * Python's zlib module, never past the announced size.  Returns a new
 * reference. */
static PyObject *
dec_compressed(erpy_dec *d)
{
    PyObject *zlib = NULL, *dobj = NULL, *in = NULL, *out = NULL, *rest = NULL;
    PyObject *res = NULL;
    const unsigned char *at = d->p;
    if (DEC_LEFT(d) < 5)
        return dec_malformed(d, at, "truncated");
    size_t usize = erpy_get_be32(at + 1);
    if (usize == 0)   /* also: decompress(max_length=0) would not stop */
        return dec_malformed(d, at, "compressed term of size 0");
    d->p += 5;
    zlib = PyImport_ImportModule("zlib");
    if (zlib == NULL)
        goto error;
    dobj = PyObject_CallMethod(zlib, "decompressobj", NULL);
    if (dobj == NULL)
        goto error;
    in = PyMemoryView_FromMemory((char *)d->p, (Py_ssize_t)DEC_LEFT(d), PyBUF_READ);
    if (in == NULL)
        goto error;
    out = PyObject_CallMethod(dobj, "decompress", "On", in, (Py_ssize_t)usize);
    if (out == NULL) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *zerr = PyObject_GetAttrString(zlib, "error");
        if (zerr != NULL && PyErr_GivenExceptionMatches(et, zerr)) {
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
            dec_malformed(d, at, "bad compressed data");
        }
        else {
            PyErr_Restore(et, ev, tb);
        }
        Py_XDECREF(zerr);
        goto error;
    }
    PyObject *eof = PyObject_GetAttrString(dobj, "eof");
    if (eof == NULL)
        goto error;
    int done = PyObject_IsTrue(eof);
    Py_DECREF(eof);
    rest = PyObject_GetAttrString(dobj, "unused_data");
    if (done < 0 || rest == NULL)
        goto error;
    if (!done || !PyBytes_Check(out) || (size_t)PyBytes_GET_SIZE(out) != usize ||
        !PyBytes_Check(rest)) {
        dec_malformed(d, at, "compressed data does not match its size");
        goto error;
    }
    const unsigned char *u = (const unsigned char *)PyBytes_AS_STRING(out);
    erpy_dec inner = {d->c, d->as_bytes, d->nil_as_none, u, u, u + usize, d->depth};
    res = dec_term(&inner);
    if (res != NULL && inner.p != inner.end) {
        Py_CLEAR(res);
        dec_malformed(d, at, "compressed term has trailing bytes");
        goto error;
    }
    if (res != NULL)
        d->p = d->end - PyBytes_GET_SIZE(rest);
error:
    Py_XDECREF(zlib);
    Py_XDECREF(dobj);
    Py_XDECREF(in);
    Py_XDECREF(out);
    Py_XDECREF(rest);
    return res;
}

PyObject *
erpy_decode(erpy_codec *c, const erpy_decode_opts *o, const char *buf, size_t len,
            size_t *index)
{
    const unsigned char *start = (const unsigned char *)buf;
    if (*index >= len) {
        malformed_at(start, start + len, "truncated");
        return NULL;
    }
    erpy_dec d = {c, o != NULL && o->binaries_as_bytes, o != NULL && o->nil_as_none,
                  start, start + *index, start + len, 0};
    PyObject *r = *d.p == T_COMPRESSED ? dec_compressed(&d) : dec_term(&d);
    if (r != NULL)
        *index = (size_t)(d.p - start);
    return r;
}
