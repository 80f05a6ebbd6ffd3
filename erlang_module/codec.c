/* codec.c: Python objects <-> Erlang external term format (ETF).
 *
 * The type table this implements is in DESIGN.md ("Types") and in the README.
 *
 * Encoding appends to one growable erpy_buf: every item makes a single
 * "reserve" check for its largest possible size and then writes its bytes
 * directly.  Exact built-in types are tried first, by pointer comparison of
 * the type, before any subclass or protocol check.  The ETF forms written are
 * the ones OTP's term_to_binary writes (the tests compare bytes with erl's),
 * except atoms, which are always written in the UTF-8 forms.
 *
 * Why the items are written here and not with ei_encode_*: each item is a tag
 * and a few big-endian fields, ei's `int *index` caps a buffer at 2 GiB, and
 * a call per item costs ~10-20% on lists of numbers (measured with
 * benchmarks/bench_codec_quick.py).  The tag values are ei.h's.
 *
 * Decoding walks [p, end) and checks, before every read, that the bytes it
 * reads are inside the input.  ei's decoders take no buffer length (and
 * ei_decode_double's old-float branch runs sscanf on unterminated input), so
 * none of them is used.  Lengths and arities are
 * checked against the bytes left before anything is allocated for them (every
 * element takes at least one byte), so a hostile term can make the decoder
 * allocate at most a small multiple of its own size.  Pids, references, ports
 * and funs are not decoded: their bytes are checked by a bounds-checked skip
 * and kept as they are (erlang.Pid(raw) etc.).
 *
 * Nesting: every container goes through Py_EnterRecursiveCall and a hard
 * depth cap, ERPY_MAX_DEPTH, in both directions; either raises RecursionError.
 */
#include "erpy.h"

#include <ei.h>
#include <math.h>
#include <string.h>

#if defined(__GNUC__)
#define ERPY_LIKELY(x) __builtin_expect(!!(x), 1)
#define ERPY_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define ERPY_LIKELY(x) (x)
#define ERPY_UNLIKELY(x) (x)
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
    T_V4_PORT = 'x',                            /* 120: OTP 24+, not in ei 5.3 */
};

#define ERPY_U32_MAX 0xFFFFFFFFu
#define ERPY_ATOM_CACHE_MAX 4096

/* ---------------------------------------------------------------- buffers */

int
erpy_buf_reserve_nogil(erpy_buf *b, size_t extra)
{
    if (extra <= b->cap - b->len)
        return 0;
    size_t need = b->len + extra;
    if (need < b->len)
        return -1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *d = realloc(b->data, cap);
    if (d == NULL)
        return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

int
erpy_buf_reserve(erpy_buf *b, size_t extra)
{
    if (erpy_buf_reserve_nogil(b, extra) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

void
erpy_buf_free(erpy_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
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

static inline unsigned char *
buf_end(erpy_buf *b)
{
    return (unsigned char *)b->data + b->len;
}

static inline void
put16be(unsigned char *w, uint32_t v)
{
    w[0] = (unsigned char)(v >> 8);
    w[1] = (unsigned char)v;
}

static inline void
put32be(unsigned char *w, uint32_t v)
{
    w[0] = (unsigned char)(v >> 24);
    w[1] = (unsigned char)(v >> 16);
    w[2] = (unsigned char)(v >> 8);
    w[3] = (unsigned char)v;
}

static inline uint32_t
get16be(const unsigned char *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

static inline uint32_t
get32be(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | p[3];
}

/* ================================================================ encoding */

typedef struct {
    erpy_codec *c;
    erpy_buf *b;
    int depth;
} erpy_enc;

static int enc_term(erpy_enc *e, PyObject *obj);

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

/* A 5-byte header: tag and a 32-bit big-endian count. */
static inline int
enc_header32(erpy_buf *b, unsigned char tag, uint32_t n)
{
    if (enc_reserve(b, 5) < 0)
        return -1;
    unsigned char *w = buf_end(b);
    w[0] = tag;
    put32be(w + 1, n);
    b->len += 5;
    return 0;
}

static inline int
enc_byte(erpy_buf *b, unsigned char tag)
{
    if (enc_reserve(b, 1) < 0)
        return -1;
    b->data[b->len++] = (char)tag;
    return 0;
}

/* Integer in the C long long range: SMALL_INTEGER_EXT, INTEGER_EXT or an
 * up-to-8-byte SMALL_BIG_EXT, as term_to_binary writes them. */
static int
enc_longlong(erpy_buf *b, long long v)
{
    if (enc_reserve(b, 11) < 0)
        return -1;
    unsigned char *w = buf_end(b);
    if (v >= 0 && v <= 255) {
        w[0] = T_SMALL_INTEGER;
        w[1] = (unsigned char)v;
        b->len += 2;
    }
    else if (v >= INT32_MIN && v <= INT32_MAX) {
        w[0] = T_INTEGER;
        put32be(w + 1, (uint32_t)(int32_t)v);
        b->len += 5;
    }
    else {
        unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v
                                     : (unsigned long long)v;
        int n = 0;
        w[0] = T_SMALL_BIG;
        w[2] = v < 0;
        while (u) {
            w[3 + n++] = (unsigned char)(u & 0xff);
            u >>= 8;
        }
        w[1] = (unsigned char)n;
        b->len += 3 + (size_t)n;
    }
    return 0;
}

/* An int outside the long long range: SMALL_BIG_EXT / LARGE_BIG_EXT, the
 * magnitude from int.to_bytes (no private _PyLong API). */
static int
enc_bigint(erpy_enc *e, PyObject *obj, int negative)
{
    PyObject *mag = NULL, *nbits = NULL, *bytes = NULL;
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
    if (n > ERPY_U32_MAX) {
        PyErr_SetString(PyExc_ValueError,
                        "int too large for the external term format");
        goto error;
    }
    bytes = PyObject_CallMethod(mag, "to_bytes", "ns", (Py_ssize_t)n, "little");
    if (bytes == NULL)
        goto error;
    if (enc_reserve(e->b, 6 + n) < 0)
        goto error;
    unsigned char *w = buf_end(e->b);
    if (n <= 255) {
        w[0] = T_SMALL_BIG;
        w[1] = (unsigned char)n;
        w[2] = (unsigned char)negative;
        w += 3;
    }
    else {
        w[0] = T_LARGE_BIG;
        put32be(w + 1, (uint32_t)n);
        w[5] = (unsigned char)negative;
        w += 6;
    }
    memcpy(w, PyBytes_AS_STRING(bytes), n);
    e->b->len = (size_t)(w - (unsigned char *)e->b->data) + n;
    rc = 0;
error:
    Py_XDECREF(mag);
    Py_XDECREF(nbits);
    Py_XDECREF(bytes);
    return rc;
}

/* int and int subclasses (the value, never __index__).
 * Returns -1 with an exception set. */
static int
enc_long(erpy_enc *e, PyObject *obj)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (ERPY_LIKELY(overflow == 0)) {
        if (ERPY_UNLIKELY(v == -1 && PyErr_Occurred()))
            return -1;
        return enc_longlong(e->b, v);
    }
    return enc_bigint(e, obj, overflow < 0);
}

/* NEW_FLOAT_EXT through ei_encode_double (bit-exact, -0.0 kept).
 * Returns -1 with ValueError set for NaN and infinities. */
static int
enc_double(erpy_enc *e, PyObject *obj, double v)
{
    if (ERPY_UNLIKELY(!isfinite(v))) {
        PyErr_Format(PyExc_ValueError,
                     "cannot encode %R: Erlang floats must be finite", obj);
        return -1;
    }
    if (enc_reserve(e->b, 9) < 0)
        return -1;
    /* The bytes ei_encode_double writes (tag, IEEE 754 bits big-endian),
     * written inline: a call per float costs ~10% on float lists. */
    uint64_t bits;
    memcpy(&bits, &v, 8);
    unsigned char *w = buf_end(e->b);
    w[0] = T_NEW_FLOAT;
    put32be(w + 1, (uint32_t)(bits >> 32));
    put32be(w + 5, (uint32_t)bits);
    e->b->len += 9;
    return 0;
}

/* BINARY_EXT.  Returns -1 with an exception set. */
static int
enc_binary(erpy_buf *b, const void *data, Py_ssize_t n)
{
    if (ERPY_UNLIKELY((size_t)n > ERPY_U32_MAX)) {
        PyErr_Format(PyExc_ValueError,
                     "binary of %zd bytes is too large for the external term "
                     "format (at most 4 GiB - 1)", n);
        return -1;
    }
    if (enc_reserve(b, 5 + (size_t)n) < 0)
        return -1;
    unsigned char *w = buf_end(b);
    w[0] = T_BINARY;
    put32be(w + 1, (uint32_t)n);
    memcpy(w + 5, data, (size_t)n);
    b->len += 5 + (size_t)n;
    return 0;
}

/* str (and str subclasses other than Atom) as a UTF-8 binary.
 * Returns -1 with UnicodeEncodeError set for lone surrogates. */
static int
enc_str(erpy_enc *e, PyObject *obj)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
    if (s == NULL)
        return -1;
    return enc_binary(e->b, s, n);
}

/* An atom from its UTF-8 name (at most 255 characters, so 1020 bytes). */
static int
enc_atom_utf8(erpy_buf *b, const char *s, size_t n)
{
    if (enc_reserve(b, 3 + n) < 0)
        return -1;
    unsigned char *w = buf_end(b);
    if (n <= 255) {
        w[0] = T_SMALL_ATOM_UTF8;
        w[1] = (unsigned char)n;
        w += 2;
    }
    else {
        w[0] = T_ATOM_UTF8;
        put16be(w + 1, (uint32_t)n);
        w += 3;
    }
    memcpy(w, s, n);
    b->len = (size_t)(w - (unsigned char *)b->data) + n;
    return 0;
}

/* erlang.Atom.  Returns -1 with ValueError set for more than 255
 * characters, UnicodeEncodeError for lone surrogates. */
static int
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

/* Returns -1 with ValueError set when n does not fit an ETF count. */
static int
enc_check_count(Py_ssize_t n, const char *what)
{
    if ((size_t)n > ERPY_U32_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "%s of %zd elements is too large for the external term format",
                     what, n);
        return -1;
    }
    return 0;
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
static int
enc_list(erpy_enc *e, PyObject *obj)
{
    Py_ssize_t n = PyList_GET_SIZE(obj);
    if (n == 0)
        return enc_byte(e->b, T_NIL);
    if (enc_check_count(n, "list") < 0 || enc_header32(e->b, T_LIST, (uint32_t)n) < 0)
        return -1;
    if (enc_enter(e) < 0)
        return -1;
    int rc = enc_list_items(e, obj, n);
    enc_leave(e);
    if (rc < 0)
        return -1;
    return enc_byte(e->b, T_NIL);
}

/* tuple -> SMALL_TUPLE_EXT / LARGE_TUPLE_EXT. */
static int
enc_tuple(erpy_enc *e, PyObject *obj)
{
    Py_ssize_t n = PyTuple_GET_SIZE(obj);
    if (n <= 255) {
        if (enc_reserve(e->b, 2) < 0)
            return -1;
        unsigned char *w = buf_end(e->b);
        w[0] = T_SMALL_TUPLE;
        w[1] = (unsigned char)n;
        e->b->len += 2;
    }
    else if (enc_check_count(n, "tuple") < 0 ||
             enc_header32(e->b, T_LARGE_TUPLE, (uint32_t)n) < 0) {
        return -1;
    }
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

/* dict -> MAP_EXT: arity, then key/value pairs. */
static int
enc_dict(erpy_enc *e, PyObject *obj)
{
    Py_ssize_t n = PyDict_GET_SIZE(obj);
    if (enc_check_count(n, "dict") < 0 || enc_header32(e->b, T_MAP, (uint32_t)n) < 0)
        return -1;
    if (n == 0)
        return 0;
    if (enc_enter(e) < 0)
        return -1;
    Py_ssize_t pos = 0, count = 0;
    PyObject *k, *v;
    int rc = 0;
    while (PyDict_Next(obj, &pos, &k, &v)) {
        if (++count > n)
            break;
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
    enc_leave(e);
    if (rc == 0 && (count != n || PyDict_GET_SIZE(obj) != n)) {
        PyErr_SetString(PyExc_RuntimeError, "dict changed size during encoding");
        rc = -1;
    }
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
    if (enc_check_count(n, "list") < 0 || enc_header32(e->b, T_LIST, (uint32_t)n) < 0)
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

/* erlang.BitString(data, bits) -> BIT_BINARY_EXT (bits % 8 != 0) or
 * BINARY_EXT (a whole number of bytes is a binary in Erlang). */
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
    int last = (int)(bits % 8);
    if (last == 0) {
        rc = enc_binary(e->b, PyBytes_AS_STRING(data), n);
        goto error;
    }
    if ((size_t)n > ERPY_U32_MAX) {
        PyErr_SetString(PyExc_ValueError,
                        "BitString too large for the external term format");
        goto error;
    }
    if (enc_reserve(e->b, 6 + (size_t)n) < 0)
        goto error;
    unsigned char *w = buf_end(e->b);
    w[0] = T_BIT_BINARY;
    put32be(w + 1, (uint32_t)n);
    w[5] = (unsigned char)last;
    memcpy(w + 6, PyBytes_AS_STRING(data), (size_t)n);
    w[5 + n] &= (unsigned char)(0xFF << (8 - last));
    e->b->len += 6 + (size_t)n;
    rc = 0;
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

/* Pid / Reference / Port / Fun: their raw bytes, unchanged, after checking
 * that they hold exactly one term of the class's kind (tags). */
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
        s.p != s.end) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "%.200s.raw does not hold one external-term-format term of its kind",
                     Py_TYPE(obj)->tp_name);
        goto error;
    }
    if (enc_reserve(e->b, (size_t)n) < 0)
        goto error;
    memcpy(buf_end(e->b), p, (size_t)n);
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
static int
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
        return enc_double(e, obj, PyFloat_AS_DOUBLE(obj));
    if (obj == Py_None)
        return enc_atom_utf8(e->b, "undefined", 9);
    if (obj == Py_True)
        return enc_atom_utf8(e->b, "true", 4);
    if (obj == Py_False)
        return enc_atom_utf8(e->b, "false", 5);
    if (t == &PyBytes_Type)
        return enc_binary(e->b, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    return enc_other(e, obj);
}

int
erpy_encode(erpy_codec *c, erpy_buf *b, PyObject *obj)
{
    erpy_enc e = {c, b, 0};
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

/* Skips one term of any kind, checking every length against the input and
 * the structure of pids, references, ports and funs.  List tails are
 * followed in a loop; nesting counts against ERPY_MAX_DEPTH.  Returns -1
 * with ValueError (or RecursionError) set. */
static int
skip_term(erpy_skipper *s)
{
    int rc = -1;
    if (s->depth >= ERPY_MAX_DEPTH) {
        PyErr_Format(PyExc_RecursionError,
                     "maximum nesting depth (%d) exceeded while decoding an Erlang term",
                     ERPY_MAX_DEPTH);
        return -1;
    }
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
            n = 5 + (size_t)get32be(p + 1);
            break;
        case T_BIT_BINARY:
            NEED(6);
            n = 6 + (size_t)get32be(p + 1);
            break;
        case T_SMALL_BIG:
            NEED(3);
            n = 3 + (size_t)p[1];
            break;
        case T_LARGE_BIG:
            NEED(6);
            n = 6 + (size_t)get32be(p + 1);
            break;
        case T_SMALL_TUPLE:
            NEED(2);
            s->p += 2;
            rc = skip_n(s, p[1]);
            goto done;
        case T_LARGE_TUPLE:
            NEED(5);
            s->p += 5;
            rc = skip_n(s, get32be(p + 1));
            goto done;
        case T_MAP:
            NEED(5);
            s->p += 5;
            if (skip_n(s, get32be(p + 1)) < 0 || skip_n(s, get32be(p + 1)) < 0)
                goto done;
            rc = 0;
            goto done;
        case T_LIST:
            NEED(5);
            s->p += 5;
            if (skip_n(s, get32be(p + 1)) < 0)
                goto done;
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
            size_t size = get32be(p + 1);
            uint32_t nfree = get32be(p + 26);
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
            uint32_t nfree = get32be(p + 1);
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
    s->depth--;
    return rc;
}

/* ------------------------------------------------------------ the decoder */

typedef struct {
    erpy_codec *c;
    int as_bytes;
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
    for (; i + 32 <= n; i += 32) {
        uint64_t w[4];
        memcpy(w, s + i, 32);
        if ((w[0] | w[1] | w[2] | w[3]) & high)
            return 0;
    }
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

/* A binary: str when valid UTF-8 (unless binaries_as_bytes), else bytes.
 * Returns a new reference. */
static PyObject *
dec_binary(erpy_dec *d, const unsigned char *s, size_t n)
{
    if (!d->as_bytes) {
        int ascii = erpy_is_ascii(s, n);
        if (ascii || erpy_utf8_valid(s, n))
            return dec_utf8_str(s, n, ascii);
    }
    return PyBytes_FromStringAndSize((const char *)s, (Py_ssize_t)n);
}

/* An atom from its name.  true/false/undefined are the Python singletons;
 * other names are erlang.Atom instances, shared through the bounded
 * atom_cache (keyed by the UTF-8 name).  Returns a new reference. */
static PyObject *
dec_atom(erpy_dec *d, const unsigned char *at, const unsigned char *s, size_t n,
         int latin1)
{
    PyObject *key = NULL, *name = NULL, *atom = NULL;
    switch (n) {
    case 4:
        if (memcmp(s, "true", 4) == 0)
            Py_RETURN_TRUE;
        break;
    case 5:
        if (memcmp(s, "false", 5) == 0)
            Py_RETURN_FALSE;
        break;
    case 9:
        if (memcmp(s, "undefined", 9) == 0)
            Py_RETURN_NONE;
        break;
    }
    int ascii = erpy_is_ascii(s, n);
    if (latin1 && !ascii) {
        /* The old Latin-1 forms: the bytes are not the UTF-8 name, so they
         * are not looked up in the cache (rare: OTP writes UTF-8 atoms for
         * anything outside ASCII). */
        if (n > 255)
            return dec_malformed(d, at, "atom longer than 255 characters");
        name = PyUnicode_DecodeLatin1((const char *)s, (Py_ssize_t)n, NULL);
        if (name == NULL)
            return NULL;
        atom = PyObject_CallOneArg(d->c->Atom, name);
        Py_DECREF(name);
        return atom;
    }
    PyObject *cache = d->c->atom_cache;
    key = PyBytes_FromStringAndSize((const char *)s, (Py_ssize_t)n);
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
    name = dec_utf8_str(s, n, ascii);
    if (name == NULL)
        goto error;
    if (PyUnicode_GET_LENGTH(name) > 255) {
        dec_malformed(d, at, "atom longer than 255 characters");
        goto error;
    }
    atom = PyObject_CallOneArg(d->c->Atom, name);
    if (atom == NULL)
        goto error;
    if (PyDict_GET_SIZE(cache) >= ERPY_ATOM_CACHE_MAX)
        PyDict_Clear(cache);
    if (PyDict_SetItem(cache, key, atom) < 0)
        goto error;
    Py_DECREF(key);
    Py_DECREF(name);
    return atom;
error:
    Py_XDECREF(key);
    Py_XDECREF(name);
    Py_XDECREF(atom);
    return NULL;
}

/* SMALL_BIG_EXT / LARGE_BIG_EXT magnitude (little-endian bytes) and sign.
 * Returns a new reference. */
static PyObject *
dec_bigint(const unsigned char *digits, size_t n, int negative)
{
    while (n > 0 && digits[n - 1] == 0)
        n--;
    if (n <= 8) {
        unsigned long long u = 0;
        for (size_t i = n; i-- > 0;)
            u = (u << 8) | digits[i];
        if (!negative)
            return PyLong_FromUnsignedLongLong(u);
        if (u <= (1ULL << 63))
            return PyLong_FromLongLong(u == 0 ? 0 : -(long long)(u - 1) - 1);
        PyObject *pos = PyLong_FromUnsignedLongLong(u);
        if (pos == NULL)
            return NULL;
        PyObject *r = PyNumber_Negative(pos);
        Py_DECREF(pos);
        return r;
    }
    PyObject *bytes = NULL, *pos = NULL, *r = NULL;
    bytes = PyBytes_FromStringAndSize((const char *)digits, (Py_ssize_t)n);
    if (bytes == NULL)
        goto error;
    pos = PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "Os",
                              bytes, "little");
    if (pos == NULL)
        goto error;
    if (!negative) {
        r = pos;
        pos = NULL;
    }
    else {
        r = PyNumber_Negative(pos);
    }
error:
    Py_XDECREF(bytes);
    Py_XDECREF(pos);
    return r;
}

/* The old text FLOAT_EXT: 31 bytes of "%.20e" padded with NULs.  d->p is
 * past the tag.  Returns a new reference. */
static PyObject *
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

/* LIST_EXT (d->p at the tag), its tail followed in a loop: a proper list
 * gives list, anything else erlang.ImproperList.  A list whose tail is
 * itself a list (LIST_EXT or STRING_EXT) is one longer list, as in Erlang.
 * Returns a new reference. */
static PyObject *
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
        size_t n = get32be(at + 1);
        d->p += 5;
        if (n >= DEC_LEFT(d)) {   /* n elements and a tail: n + 1 bytes at least */
            dec_malformed(d, at, "list length exceeds the input");
            goto error;
        }
        if (list == NULL) {
            list = PyList_New((Py_ssize_t)n);
            if (list == NULL)
                goto error;
            for (size_t i = 0; i < n; i++) {
                PyObject *item = dec_term(d);
                if (item == NULL)
                    goto error;
                PyList_SET_ITEM(list, (Py_ssize_t)i, item);
            }
        }
        else {
            for (size_t i = 0; i < n; i++) {
                PyObject *item = dec_term(d);
                if (item == NULL)
                    goto error;
                int rc = PyList_Append(list, item);
                Py_DECREF(item);
                if (rc < 0)
                    goto error;
            }
        }
        if (d->p >= d->end) {
            dec_malformed(d, d->p, "truncated");
            goto error;
        }
        unsigned char tag = *d->p;
        if (tag == T_NIL) {
            d->p++;
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

/* n elements of a tuple, d->p after its header.  Returns a new reference. */
static PyObject *
dec_tuple(erpy_dec *d, const unsigned char *at, size_t n)
{
    if (n > DEC_LEFT(d))
        return dec_malformed(d, at, "tuple arity exceeds the input");
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (t == NULL || n == 0)
        return t;
    if (dec_enter(d) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *item = dec_term(d);
        if (item == NULL) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, item);
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

/* MAP_EXT, d->p after its header.  Returns a new reference. */
static PyObject *
dec_map(erpy_dec *d, const unsigned char *at, size_t n)
{
    if (n > DEC_LEFT(d) / 2)
        return dec_malformed(d, at, "map arity exceeds the input");
    PyObject *dict = PyDict_New();
    if (dict == NULL || n == 0)
        return dict;
    if (dec_enter(d) < 0) {
        Py_DECREF(dict);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *k = dec_term(d);
        if (k == NULL)
            goto error;
        PyObject *v = dec_term(d);
        if (v == NULL) {
            Py_DECREF(k);
            goto error;
        }
        int rc = PyDict_SetItem(dict, k, v);
        Py_DECREF(v);
        if (rc < 0) {
            dec_unhashable_key(k);
            Py_DECREF(k);
            goto error;
        }
        if ((size_t)PyDict_GET_SIZE(dict) != i + 1) {
            PyErr_Format(PyExc_ValueError,
                         "Erlang map has two keys that are equal in Python, %.200R "
                         "(such as 1 and 1.0, or an atom and a binary)", k);
            Py_DECREF(k);
            goto error;
        }
        Py_DECREF(k);
    }
    dec_leave(d);
    return dict;
error:
    dec_leave(d);
    Py_DECREF(dict);
    return NULL;
}

/* Pid / Reference / Port / Fun: the term's exact bytes, checked by a skip,
 * handed to the class.  Returns a new reference. */
static PyObject *
dec_opaque(erpy_dec *d, PyObject *cls)
{
    const unsigned char *at = d->p;
    erpy_skipper s = {d->start, d->p, d->end, d->depth};
    if (skip_term(&s) < 0)
        return NULL;
    d->p = s.p;
    PyObject *raw = PyBytes_FromStringAndSize((const char *)at, d->p - at);
    if (raw == NULL)
        return NULL;
    PyObject *r = PyObject_CallOneArg(cls, raw);
    Py_DECREF(raw);
    return r;
}

/* STRING_EXT (a charlist): list of ints. */
static PyObject *
dec_string(erpy_dec *d, const unsigned char *s, size_t n)
{
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        PyList_SET_ITEM(list, (Py_ssize_t)i, PyLong_FromLong(s[i]));  /* cached small ints */
    return list;
}

/* One term at d->p.  Returns a new reference. */
static PyObject *
dec_term(erpy_dec *d)
{
    DEC_NEED(d, 1);
    const unsigned char *p = d->p;
    size_t n;
    switch (p[0]) {
    case T_SMALL_INTEGER:
        DEC_NEED(d, 2);
        d->p += 2;
        return PyLong_FromLong(p[1]);
    case T_INTEGER:
        DEC_NEED(d, 5);
        d->p += 5;
        return PyLong_FromLong((int32_t)get32be(p + 1));
    case T_SMALL_ATOM_UTF8:
    case T_SMALL_ATOM:
        DEC_NEED(d, 2);
        n = p[1];
        DEC_NEED(d, 2 + n);
        d->p += 2 + n;
        return dec_atom(d, p, p + 2, n, p[0] == T_SMALL_ATOM);
    case T_ATOM_UTF8:
    case T_ATOM:
        DEC_NEED(d, 3);
        n = get16be(p + 1);
        DEC_NEED(d, 3 + n);
        d->p += 3 + n;
        return dec_atom(d, p, p + 3, n, p[0] == T_ATOM);
    case T_BINARY:
        DEC_NEED(d, 5);
        n = get32be(p + 1);
        DEC_NEED(d, 5 + n);
        d->p += 5 + n;
        return dec_binary(d, p + 5, n);
    case T_NIL:
        d->p += 1;
        return PyList_New(0);
    case T_LIST:
        return dec_list(d);
    case T_SMALL_TUPLE:
        DEC_NEED(d, 2);
        d->p += 2;
        return dec_tuple(d, p, p[1]);
    case T_LARGE_TUPLE:
        DEC_NEED(d, 5);
        d->p += 5;
        return dec_tuple(d, p, get32be(p + 1));
    case T_MAP:
        DEC_NEED(d, 5);
        d->p += 5;
        return dec_map(d, p, get32be(p + 1));
    case T_NEW_FLOAT: {
        DEC_NEED(d, 9);
        uint64_t bits = ((uint64_t)get32be(p + 1) << 32) | get32be(p + 5);
        double v;
        memcpy(&v, &bits, 8);
        if (!isfinite(v))
            return dec_malformed(d, p, "float is not finite");
        d->p += 9;
        return PyFloat_FromDouble(v);
    }
    case T_FLOAT:
        DEC_NEED(d, 32);
        d->p += 1;
        return dec_old_float(d, p);
    case T_STRING:
        DEC_NEED(d, 3);
        n = get16be(p + 1);
        DEC_NEED(d, 3 + n);
        d->p += 3 + n;
        return dec_string(d, p + 3, n);
    case T_SMALL_BIG:
    case T_LARGE_BIG: {
        size_t hdr = p[0] == T_SMALL_BIG ? 3 : 6;
        DEC_NEED(d, hdr);
        n = p[0] == T_SMALL_BIG ? p[1] : get32be(p + 1);
        unsigned char sign = p[hdr - 1];
        if (sign > 1)
            return dec_malformed(d, p, "bad integer sign");
        DEC_NEED(d, hdr + n);
        d->p += hdr + n;
        return dec_bigint(p + hdr, n, sign);
    }
    case T_BIT_BINARY: {
        DEC_NEED(d, 6);
        n = get32be(p + 1);
        unsigned char last = p[5];
        if (n == 0 || last < 1 || last > 8)
            return dec_malformed(d, p, "bad bitstring length");
        DEC_NEED(d, 6 + n);
        d->p += 6 + n;
        if (last == 8)
            return dec_binary(d, p + 6, n);
        return PyObject_CallFunction(d->c->BitString, "y#n", (const char *)(p + 6),
                                     (Py_ssize_t)n, (Py_ssize_t)((n - 1) * 8 + last));
    }
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
    case T_COMPRESSED:
        return dec_malformed(d, p, "a compressed term can only be the whole term");
    default: {
        char what[48];
        snprintf(what, sizeof what, "unknown tag %u", (unsigned)p[0]);
        return dec_malformed(d, p, what);
    }
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
    size_t usize = get32be(at + 1);
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
    erpy_dec inner = {d->c, d->as_bytes, u, u, u + usize, d->depth};
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
    erpy_dec d = {c, o != NULL && o->binaries_as_bytes, start, start + *index,
                  start + len, 0};
    PyObject *r = *d.p == T_COMPRESSED ? dec_compressed(&d) : dec_term(&d);
    if (r != NULL)
        *index = (size_t)(d.p - start);
    return r;
}
