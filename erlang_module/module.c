/* erlang._erlang: the module glue.
 *
 * Multi-phase init; the codec's references to the Python classes of the type
 * table live in the module state (set once by erlang/__init__.py through
 * _init_types).  The transport (transport.h) is process-global C state, not
 * module state, because pthread key destructors and fork handlers reach it
 * from places where no module object is at hand.
 */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "erpy.h"
#include "transport.h"

#include <pthread.h>

typedef struct {
    erpy_codec codec;
    /* Set by erlang/__init__.py through _init_runtime; strong references. */
    PyObject *autostart;      /* () -> None: starts the default helper */
    PyObject *make_error;     /* (kind, reason, stacktrace[, message]) -> Error instance */
    PyObject *make_exited;    /* (status, why, stderr_tail) -> HelperExited instance */
    PyObject *write_output;   /* (stream, data) -> None */
    PyObject *CallTimeout;    /* class */
    PyObject *run_callback;   /* (alias, name, args) -> bytes | None: runs an export
                                 (erlang/_callbacks.py), the CALLBACK_REPLY payload */
    PyTypeObject *Waker;      /* heap type of async calls' wakers */
    /* Start options in force (written under the GIL). */
    double call_timeout;      /* seconds; < 0: none */
    unsigned long starter;    /* thread running start-up (modules, on_start), or 0 */
    erpy_decode_opts dopts;
    erpy_encode_opts eopts;
    unsigned long main_thread;
} module_state;

#define MAIN_SLICE_MS 50      /* Ctrl-C latency bound for a waiting main thread */
#define OTHER_SLICE_MS 1000   /* start-up waits of other threads */
#define NO_SLICE (-1)         /* calls in other threads: waiters are woken explicitly */

static struct PyModuleDef erpy_moduledef;

static inline module_state *
get_state(PyObject *module)
{
    return (module_state *)PyModule_GetState(module);
}

/* ------------------------------------------------------------- _init_types */

static PyObject *
m_init_types(PyObject *module, PyObject *args)
{
    module_state *st = get_state(module);
    PyObject *t[7];
    if (!PyArg_ParseTuple(args, "OOOOOOO:_init_types",
                          &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6]))
        return NULL;
    PyObject **slots[7] = {&st->codec.Atom, &st->codec.Pid, &st->codec.Reference,
                           &st->codec.Port, &st->codec.Fun,
                           &st->codec.ImproperList, &st->codec.BitString};
    for (int i = 0; i < 7; i++) {
        if (!PyType_Check(t[i])) {
            PyErr_SetString(PyExc_TypeError, "_init_types takes classes");
            return NULL;
        }
        Py_INCREF(t[i]);
        Py_XSETREF(*slots[i], t[i]);
    }
    Py_RETURN_NONE;
}

static int
codec_ready(module_state *st)
{
    if (st->codec.Atom == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "erlang._erlang used before _init_types");
        return 0;
    }
    return 1;
}

/* ------------------------------------------------ term_to_binary / back */

/* A scratch buffer for term_to_binary, reused while the GIL is held (no
 * malloc per call for small terms).  `scratch_busy` covers re-entry from
 * code the encoder may run (a __del__ during a bignum conversion). */
static erpy_buf scratch;
static int scratch_busy;

static PyObject *
m_term_to_binary(PyObject *module, PyObject *obj)
{
    module_state *st = get_state(module);
    if (!codec_ready(st))
        return NULL;
    int handled;
    PyObject *big = erpy_term_to_binary_big(obj, &handled);
    if (handled)
        return big;
    erpy_buf local = {0};
    erpy_buf *b = scratch_busy ? &local : &scratch;
    PyObject *res = NULL;
    scratch_busy = 1;
    b->len = 0;
    if (erpy_buf_reserve(b, 64) < 0)
        goto done;
    b->data[b->len++] = (char)ERPY_ETF_VERSION;
    if (erpy_encode(&st->codec, NULL, b, obj) < 0)
        goto done;
    res = PyBytes_FromStringAndSize(b->data, (Py_ssize_t)b->len);
done:
    if (b == &scratch) {
        scratch_busy = 0;
        if (scratch.cap > (1 << 20))
            erpy_buf_free(&scratch);   /* do not keep a big term's buffer */
    } else {
        erpy_buf_free(&local);
    }
    return res;
}

/* Parses the `binaries` option: "str" (default) or "bytes".  Returns 0/1, or
 * -1 with ValueError set. */
static int
erpy_parse_binaries_opt(PyObject *v)
{
    if (v == NULL)
        return 0;
    if (PyUnicode_Check(v)) {
        if (PyUnicode_CompareWithASCIIString(v, "str") == 0)
            return 0;
        if (PyUnicode_CompareWithASCIIString(v, "bytes") == 0)
            return 1;
    }
    PyErr_Format(PyExc_ValueError, "binaries must be 'str' or 'bytes', not %R", v);
    return -1;
}

static PyObject *
m_binary_to_term(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    static const char *const kwlist[] = {"data", "binaries", NULL};
    module_state *st = get_state(module);
    if (!codec_ready(st))
        return NULL;
    PyObject *data = NULL, *binaries = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "binary_to_term(data, binaries='str')");
        return NULL;
    }
    data = args[0];
    if (nargs == 2)
        binaries = args[1];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, kwlist[1]) == 0 && binaries == NULL) {
            binaries = args[nargs + i];
        } else {
            PyErr_Format(PyExc_TypeError, "binary_to_term() got an unexpected keyword argument %R", k);
            return NULL;
        }
    }
    erpy_decode_opts o = {0};   /* the default table: no start option applies */
    int bb = erpy_parse_binaries_opt(binaries);
    if (bb < 0)
        return NULL;
    o.binaries_as_bytes = bb;

    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *res = NULL;
    const char *p = view.buf;
    size_t len = (size_t)view.len, idx = 0;
    if (len < 1 || (unsigned char)p[0] != ERPY_ETF_VERSION) {
        PyErr_SetString(PyExc_ValueError,
                        "malformed term: does not start with version byte 131");
        goto done;
    }
    idx = 1;
    res = erpy_decode(&st->codec, &o, p, len, &idx);
    if (res != NULL && idx != len) {
        Py_CLEAR(res);
        PyErr_Format(PyExc_ValueError, "malformed term: %zu trailing bytes", len - idx);
    }
done:
    PyBuffer_Release(&view);
    return res;
}


/* -------------------------------------------------------------- runtime */

static PyObject *
m_init_runtime(PyObject *module, PyObject *args)
{
    module_state *st = get_state(module);
    PyObject *a, *e, *x, *o, *ct;
    unsigned long main_ident;
    if (!PyArg_ParseTuple(args, "OOOOOk:_init_runtime", &a, &e, &x, &o, &ct, &main_ident))
        return NULL;
    int rc = erpy_transport_init();
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_INCREF(a); Py_XSETREF(st->autostart, a);
    Py_INCREF(e); Py_XSETREF(st->make_error, e);
    Py_INCREF(x); Py_XSETREF(st->make_exited, x);
    Py_INCREF(o); Py_XSETREF(st->write_output, o);
    Py_INCREF(ct); Py_XSETREF(st->CallTimeout, ct);
    st->main_thread = main_ident;
    Py_RETURN_NONE;
}

/* Sets HelperExited for a dead (or never started) helper.  `starting`: it
 * died before answering, so the message gives all it wrote, not the end
 * only.  Returns NULL. */
static PyObject *
raise_exited_full(module_state *st, erpy_helper *b, const char *why, int starting)
{
    char *text = NULL;
    size_t n = 0;
    int status = -1;
    if (b != NULL) {
        text = malloc(ERPY_ERR_TEXT_MAX);
        if (text != NULL)
            n = erpy_helper_stderr_text(b, text, ERPY_ERR_TEXT_MAX);
        status = b->exit_status;
        if (why == NULL && b->why[0])
            why = b->why;
    }
    PyObject *exc = PyObject_CallFunction(st->make_exited, "isy#i", status, why ? why : "",
                                          text ? text : "", (Py_ssize_t)n, starting);
    free(text);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
raise_exited(module_state *st, erpy_helper *b, const char *why)
{
    return raise_exited_full(st, b, why, 0);
}

/* Helpers are reference-counted with the GIL held: the current-helper slot
 * holds one reference, and every call in flight (and every stop) another,
 * so a helper is freed only when it is closed and nobody uses it. */
static void
helper_unref(erpy_helper *b)
{
    ERPY_ASSERT(PyGILState_Check());
    if (--b->refs == 0 && b->closed)
        erpy_helper_free(b);
}

/* Stops b, releasing the GIL meanwhile.  The caller may still use b after
 * this only if it holds a reference of its own. */
static void
stop_helper(erpy_helper *b, int timeout_ms)
{
    int was_current;
    ERPY_ASSERT(PyGILState_Check());
    b->refs++;
    Py_BEGIN_ALLOW_THREADS
    was_current = erpy_helper_stop(b, timeout_ms);
    Py_END_ALLOW_THREADS
    if (was_current)
        helper_unref(b);
    helper_unref(b);
}

/* Timeouts longer than this (about 31 years) count as none: a deadline in
 * nanoseconds past it would overflow. */
#define TIMEOUT_MAX_S 1e9

/* A call's time limit, from its timeout argument (None: the call_timeout
 * start option).  deadline: CLOCK_MONOTONIC ns, 0 for none; zero: a timeout
 * of 0, no time to wait (the call raises CallTimeout without sending);
 * seconds and own (timeout= rather than call_timeout) for messages. */
typedef struct {
    uint64_t deadline;
    int zero;
    int own;
    double seconds;
} call_limit;

/* Fills lim from the timeout argument.  Returns 0, or -1 with an exception
 * set for a bad timeout. */
static int
call_limit_of(module_state *st, PyObject *timeout, call_limit *lim)
{
    double t;
    lim->own = timeout != NULL && timeout != Py_None;
    if (!lim->own) {
        t = st->call_timeout;
    } else {
        if (PyBool_Check(timeout)) {
            PyErr_SetString(PyExc_TypeError, "timeout must be a number or None, not bool");
            return -1;
        }
        t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred() && PyLong_Check(timeout) &&
            PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();   /* an int past any float: no limit, or negative */
            PyObject *zero = PyLong_FromLong(0);
            int positive = zero ? PyObject_RichCompareBool(timeout, zero, Py_GT) : -1;
            Py_XDECREF(zero);
            if (positive < 0)
                return -1;
            t = positive ? INFINITY : -1.0;
        }
        if (t == -1.0 && PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "timeout must be a number or None, not %.100s",
                         Py_TYPE(timeout)->tp_name);
            return -1;
        }
        if (!(t >= 0)) {
            PyErr_SetString(PyExc_ValueError, "timeout must be >= 0 (or None)");
            return -1;
        }
    }
    lim->seconds = t;
    lim->zero = t == 0;
    if (t <= 0 || t > TIMEOUT_MAX_S)   /* zero; no call_timeout; inf; huge */
        lim->deadline = 0;
    else
        lim->deadline = erpy_now_ns() + (uint64_t)(t * 1e9) + 1;
    return 0;
}

/* Why a call timed out (TMO_: not the codec's ETF tags). */
enum { TMO_ZERO, TMO_NO_REPLY, TMO_STARTING, TMO_WRITE_BUSY };

/* Raises CallTimeout, naming the limit that elapsed.  Returns NULL. */
static PyObject *
raise_timeout(module_state *st, const call_limit *lim, int why)
{
    static const char *const fmt[] = {
        [TMO_ZERO] = "%s=%g s leaves no time for a reply: the call was not sent",
        [TMO_NO_REPLY] = "no reply within %s=%g s",
        [TMO_STARTING] = "%s=%g s passed while another thread was still starting the "
                       "helper (its modules or on_start had not finished): "
                       "the call was not sent",
        [TMO_WRITE_BUSY] = "%s=%g s passed while another call was still writing a large "
                     "request to the helper: the call was not sent",
    };
    char msg[240];
    snprintf(msg, sizeof msg, fmt[why], lim->own ? "timeout" : "call_timeout", lim->seconds);
    PyErr_SetString(st->CallTimeout, msg);
    return NULL;
}

/* Starts the default helper through Python when there is none.  A thread
 * that finds another one starting it waits for that until the call's
 * deadline (0: none).  Returns the live helper with a reference the caller
 * drops with helper_unref, or NULL with an exception set. */
static erpy_helper *
live_helper(module_state *st, const call_limit *lim)
{
    ERPY_ASSERT(PyGILState_Check() && !PyErr_Occurred());
    erpy_helper *b = erpy_helper_current();
    /* Until start-up (modules, on_start) is over, only the starting thread
     * may call; the others wait for it in autostart. */
    if (b != NULL && !b->dead && (b->ready || st->starter == PyThread_get_thread_ident())) {
        b->refs++;
        return b;
    }
    PyObject *r;
    if (lim->deadline == 0 && !lim->zero) {
        r = PyObject_CallOneArg(st->autostart, Py_None);
    } else {
        uint64_t now = erpy_now_ns();
        double left = lim->deadline > now ? (double)(lim->deadline - now) / 1e9 : 0.0;
        PyObject *wait = PyFloat_FromDouble(left);
        r = wait ? PyObject_CallOneArg(st->autostart, wait) : NULL;
        Py_XDECREF(wait);
    }
    if (r == NULL)
        return NULL;
    int started = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (started <= 0)
        return started < 0 ? NULL : (erpy_helper *)raise_timeout(st, lim, TMO_STARTING);
    b = erpy_helper_current();
    if (b == NULL || b->dead || !(b->ready || st->starter == PyThread_get_thread_ident())) {
        raise_exited(st, b, "the helper is not running");
        return NULL;
    }
    b->refs++;
    return b;
}

/* Sends CANCEL for (w, seq) so the helper kills the handler still running
 * it; never blocks (outq.c queues it behind a write in progress). */
static void
send_cancel(erpy_helper *b, erpy_worker *w, uint32_t seq)
{
    Py_BEGIN_ALLOW_THREADS
    erpy_helper_cancel(b, w->id, seq);
    Py_END_ALLOW_THREADS
}

/* Decodes a whole payload (version byte + one term).  Returns a new
 * reference or NULL with an exception set. */
static PyObject *
decode_payload(module_state *st, const char *p, size_t len)
{
    if (len < 1 || (unsigned char)p[0] != ERPY_ETF_VERSION) {
        PyErr_SetString(PyExc_ValueError, "malformed reply from the helper: no version byte");
        return NULL;
    }
    size_t idx = 1;
    PyObject *v = erpy_decode(&st->codec, &st->dopts, p, len, &idx);
    if (v != NULL && idx != len) {
        Py_DECREF(v);
        PyErr_SetString(PyExc_ValueError, "malformed reply from the helper: trailing bytes");
        return NULL;
    }
    return v;
}

/* Shows an OUTPUT frame through erlang's output writer.  Errors are
 * reported as unraisable: printing must not fail a call. */
static void
show_output(module_state *st, erpy_frame *f)
{
    PyObject *t = decode_payload(st, f->payload, f->plen);
    PyObject *r = NULL;
    if (t != NULL && PyTuple_Check(t) && PyTuple_GET_SIZE(t) == 2)
        r = PyObject_CallFunctionObjArgs(st->write_output, PyTuple_GET_ITEM(t, 0),
                                         PyTuple_GET_ITEM(t, 1), NULL);
    else if (t != NULL)
        PyErr_SetString(PyExc_ValueError, "malformed OUTPUT frame from the helper");
    if (r == NULL)
        PyErr_WriteUnraisable(st->write_output);
    Py_XDECREF(r);
    Py_XDECREF(t);
}

/* The exception an ERROR reply stands for.  Returns a new reference, or
 * NULL with an exception set (a malformed reply). */
static PyObject *
error_of(module_state *st, erpy_frame *reply)
{
    PyObject *t = decode_payload(st, reply->payload, reply->plen);
    if (t == NULL)
        return NULL;
    PyObject *exc = NULL;
    /* {Class, Reason, Stacktrace, Message} from a handler, or
     * {Class, Reason, Stacktrace} (no text: Python words it). */
    Py_ssize_t n = PyTuple_Check(t) ? PyTuple_GET_SIZE(t) : 0;
    if (n == 3 || n == 4)
        exc = PyObject_CallFunctionObjArgs(st->make_error, PyTuple_GET_ITEM(t, 0),
                                           PyTuple_GET_ITEM(t, 1), PyTuple_GET_ITEM(t, 2),
                                           n == 4 ? PyTuple_GET_ITEM(t, 3) : Py_None, NULL);
    else
        PyErr_SetString(PyExc_ValueError, "malformed ERROR reply from the helper");
    Py_DECREF(t);
    return exc;
}

/* Turns the frames of a finished call into its result.  Consumes frames.
 * Returns a new reference or NULL with an exception set. */
static PyObject *
finish(module_state *st, erpy_frame *frames)
{
    PyObject *res = NULL;
    erpy_frame *reply = NULL;
    for (erpy_frame *f = frames; f; f = f->next) {
        if (f->kind == ERPY_K_OUTPUT)
            show_output(st, f);
        else if (f->kind != ERPY_K_CALLBACK)   /* one the call no longer waits for */
            reply = f;
    }
    if (reply == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "internal error: call finished without a reply");
    } else if (reply->kind == ERPY_K_OK) {
        res = decode_payload(st, reply->payload, reply->plen);
    } else if (reply->kind == ERPY_K_ERROR) {
        PyObject *exc = error_of(st, reply);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
    } else {
        PyErr_Format(PyExc_ValueError, "malformed reply from the helper: unknown frame kind %d",
                     (int)reply->kind);
    }
    erpy_frames_free(frames);
    return res;
}

/* Frame header for a request of `kind`, reserved at the start of out (the
 * length, Worker and Seq are filled in when it is sent). */
static int
begin_frame_in(erpy_buf *out, int kind)
{
    out->len = 0;
    if (erpy_buf_reserve(out, 4 + ERPY_HEADER_SIZE + 256) < 0)
        return -1;
    out->data[4] = (char)kind;
    out->len = 4 + ERPY_HEADER_SIZE;
    out->data[out->len++] = (char)ERPY_ETF_VERSION;
    return 0;
}

static inline int
begin_frame(erpy_worker *w, int kind)
{
    return begin_frame_in(&w->out, kind);
}

/* Builds the whole frame (length, header, payload) in out.  Returns 0 or -1
 * with MemoryError set (out is freed by the caller either way). */
static int
build_frame(erpy_buf *out, int kind, uint32_t worker, uint32_t seq, const char *payload,
            size_t plen)
{
    if (erpy_buf_reserve(out, 4 + ERPY_HEADER_SIZE + plen) < 0)
        return -1;
    erpy_put_be32(out->data, (uint32_t)(ERPY_HEADER_SIZE + plen));
    out->data[4] = (char)kind;
    erpy_put_be32(out->data + 5, worker);
    erpy_put_be32(out->data + 9, seq);
    memcpy(out->data + 4 + ERPY_HEADER_SIZE, payload, plen);
    out->len = 4 + ERPY_HEADER_SIZE + plen;
    return 0;
}

/* Writes a frame of kind on (worker, seq) with payload (an ETF term,
 * version byte included), releasing the GIL while it waits for the
 * channel.  Returns 0 or -1 with an exception set (out of memory; a helper
 * that is gone is not an error here: its reader reports it). */
static int
write_frame(erpy_helper *b, int kind, uint32_t worker, uint32_t seq, const char *payload,
            size_t plen)
{
    erpy_buf out = {0};
    if (build_frame(&out, kind, worker, seq, payload, plen) < 0) {
        erpy_buf_free(&out);
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    (void)erpy_helper_write(b, out.data, out.len, UINT64_MAX);
    Py_END_ALLOW_THREADS
    erpy_buf_free(&out);
    return 0;
}

/* Runs the CALLBACK in f for its sender, the process running this thread's
 * call on w: the export runs here, on this thread (st->run_callback), and
 * its CALLBACK_REPLY goes out on (w, f->seq).  Returns 0, or -1 when the
 * callback raised something that must unwind the waiting call as well
 * (run_callback lets only BaseExceptions that are not Exceptions through:
 * KeyboardInterrupt, SystemExit). */
static int
run_callback_frame(module_state *st, erpy_helper *b, erpy_worker *w, erpy_frame *f)
{
    PyObject *t = decode_payload(st, f->payload, f->plen);
    if (t == NULL || !PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3 || st->run_callback == NULL) {
        /* Not a CALLBACK we can answer (the Erlang side always sends a
         * 3-tuple): its sender is left to its timeout. */
        Py_XDECREF(t);
        PyErr_WriteUnraisable(NULL);
        return 0;
    }
    erpy_worker_callback_begin(b, w);
    PyObject *reply = PyObject_CallFunctionObjArgs(st->run_callback, PyTuple_GET_ITEM(t, 0),
                                                   PyTuple_GET_ITEM(t, 1),
                                                   PyTuple_GET_ITEM(t, 2), NULL);
    erpy_worker_callback_end(b, w);
    Py_DECREF(t);
    if (reply == NULL)
        return -1;
    int rc = 0;
    if (PyBytes_Check(reply))
        rc = write_frame(b, ERPY_K_CALLBACK_REPLY, w->id, f->seq, PyBytes_AS_STRING(reply),
                         (size_t)PyBytes_GET_SIZE(reply));
    Py_DECREF(reply);
    return rc;
}

/* The frames of a wait that has not ended (ERPY_W_OUTPUT): output is shown,
 * callbacks are run.  Consumes frames.  Returns 0, or -1 with an exception
 * that must end the call. */
static int
inbox_frames(module_state *st, erpy_helper *b, erpy_worker *w, erpy_frame *frames)
{
    int rc = 0;
    for (erpy_frame *x = frames; x; x = x->next) {
        if (x->kind == ERPY_K_CALLBACK) {
            if (rc == 0 && run_callback_frame(st, b, w, x) < 0)
                rc = -1;
        } else if (x->kind == ERPY_K_OUTPUT) {
            show_output(st, x);
        }
    }
    erpy_frames_free(frames);
    return rc;
}

/* Sends the frame in w->out to b and waits for its reply until the deadline
 * (0: none; zero: raise at once, sending nothing).  Returns the decoded
 * result (new reference) or NULL with an exception set. */
static PyObject *
roundtrip(module_state *st, erpy_helper *b, erpy_worker *w, const call_limit *lim)
{
    uint64_t deadline = lim->deadline;
    if (lim->zero)
        return raise_timeout(st, lim, TMO_ZERO);
    uint32_t seq = ++w->seq;
    if (seq == 0)
        seq = ++w->seq;
    char *d = w->out.data;
    uint32_t blen = (uint32_t)(w->out.len - 4);
    erpy_put_be32(d, blen);
    erpy_put_be32(d + 5, w->id);
    erpy_put_be32(d + 9, seq);
    int slice = PyThread_get_thread_ident() == st->main_thread ? MAIN_SLICE_MS : NO_SLICE;
    erpy_frame *f;
    int r;
    /* One GIL release for sending and the first wait: under contention every
     * release/acquire is a hand-off between threads. */
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = erpy_call(b, w, seq, w->out.data, w->out.len, deadline, slice, &f);
        Py_END_ALLOW_THREADS
        if (r != ERPY_W_WRITE_BUSY)
            break;
        /* Another call's write held the channel: nothing was sent. */
        if (deadline && erpy_now_ns() >= deadline)
            return raise_timeout(st, lim, TMO_WRITE_BUSY);
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
    for (;;) {
        switch (r) {
        case ERPY_W_REPLY:
            return finish(st, f);
        case ERPY_W_OUTPUT:
            if (inbox_frames(st, b, w, f) < 0) {
                /* The callback raised what must unwind this call too
                 * (KeyboardInterrupt, SystemExit): abandon it. */
                erpy_wait_abandon(b, w);
                send_cancel(b, w, seq);
                return NULL;
            }
            break;
        case ERPY_W_DEAD_BEFORE_SEND:
            return raise_exited(st, b, NULL);
        case ERPY_W_DEAD:
            erpy_wait_abandon(b, w);
            return raise_exited(st, b, NULL);
        case ERPY_W_TIMEOUT:
            erpy_wait_abandon(b, w);
            send_cancel(b, w, seq);
            return raise_timeout(st, lim, TMO_NO_REPLY);
        default:
            if (PyErr_CheckSignals() < 0) {
                erpy_wait_abandon(b, w);
                send_cancel(b, w, seq);
                return NULL;
            }
        }
        Py_BEGIN_ALLOW_THREADS
        r = erpy_wait(b, w, deadline, slice, &f);
        Py_END_ALLOW_THREADS
    }
}

/* Appends Python str/bytes `name` as a binary (the registry key).  Returns
 * 0 or -1 with an exception set. */
static int
encode_name(module_state *st, erpy_buf *out, PyObject *name)
{
    if (!PyUnicode_Check(name) && !PyBytes_Check(name)) {
        PyErr_Format(PyExc_TypeError, "function name must be str or bytes, not %.100s",
                     Py_TYPE(name)->tp_name);
        return -1;
    }
    if (PyUnicode_Check(name) && Py_TYPE(name) != &PyUnicode_Type) {
        /* erlang.Atom names a function just as its text does. */
        PyObject *plain = PyUnicode_FromObject(name);
        if (plain == NULL)
            return -1;
        int r = erpy_encode(&st->codec, &st->eopts, out, plain);
        Py_DECREF(plain);
        return r;
    }
    return erpy_encode(&st->codec, &st->eopts, out, name);
}

/* Appends {Name :: binary(), Args :: list()} for call(name, *args): args[0]
 * is the name.  Returns 0 or -1 with an exception set. */
static int
encode_call(module_state *st, erpy_buf *out, PyObject *const *args, Py_ssize_t nargs)
{
    if (erpy_buf_reserve(out, 8) < 0)
        return -1;
    out->data[out->len++] = ERPY_ETF_SMALL_TUPLE;
    out->data[out->len++] = 2;
    if (encode_name(st, out, args[0]) < 0)
        return -1;
    Py_ssize_t n = nargs - 1;
    if (n > 0) {
        if (erpy_buf_reserve(out, 5) < 0)
            return -1;
        char *d = out->data + out->len;
        d[0] = ERPY_ETF_LIST;
        erpy_put_be32(d + 1, (uint32_t)n);
        out->len += 5;
        for (Py_ssize_t i = 1; i < nargs; i++)
            if (erpy_encode(&st->codec, &st->eopts, out, args[i]) < 0)
                return -1;
    }
    if (erpy_buf_reserve(out, 1) < 0)
        return -1;
    out->data[out->len++] = ERPY_ETF_NIL;
    return 0;
}

/* The calling thread's worker, marked busy; NULL with an exception set when
 * there is none or the thread is already in a call (a signal handler, a
 * __del__ or an output writer calling erlang from inside a call).  Pair
 * with release_worker. */
static erpy_worker *
my_worker(void)
{
    erpy_worker *w = erpy_worker_get();
    /* Inside a callback that a wait of this thread runs (py:call_python
     * from the call's own process), calls go out on the next level's
     * worker: the level below still waits for its reply. */
    while (w != NULL && w->busy && w->in_callback)
        w = erpy_worker_nested(w);
    if (w == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    if (w->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "erlang: this thread is already in a call (a call from a signal "
                        "handler, __del__ or output writer inside a call is not allowed)");
        return NULL;
    }
    w->busy = 1;
    return w;
}

static inline PyObject *
release_worker(erpy_worker *w, PyObject *result)
{
    w->busy = 0;
    if (w->out.cap > (4u << 20))
        erpy_buf_free(&w->out);   /* a thread does not keep a big request's buffer */
    return result;
}

/* Parses a trailing timeout= keyword.  Returns 0 or -1. */
static int
parse_timeout_kw(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                 PyObject **timeout, const char *fname)
{
    *timeout = NULL;
    if (kwnames == NULL)
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, "timeout") == 0) {
            *timeout = args[nargs + i];
        } else {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname, k);
            return -1;
        }
    }
    return 0;
}

static PyObject *call_impl(module_state *st, erpy_helper *b, erpy_worker *w,
                           PyObject *const *args, Py_ssize_t nargs, const call_limit *lim);

/* call(name, *args, timeout=None) */
static PyObject *
m_call(PyObject *module, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    module_state *st = get_state(module);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *timeout;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call() missing its first argument, the function name");
        return NULL;
    }
    call_limit lim;
    if (parse_timeout_kw(args, nargs, kwnames, &timeout, "call") < 0 ||
        call_limit_of(st, timeout, &lim) < 0)
        return NULL;
    /* Before the worker is taken: starting may run on_start, which calls. */
    erpy_helper *b = live_helper(st, &lim);
    if (b == NULL)
        return NULL;
    PyObject *res = NULL;
    erpy_worker *w = my_worker();
    if (w != NULL)
        res = release_worker(w, call_impl(st, b, w, args, nargs, &lim));
    helper_unref(b);
    return res;
}

/* Encodes {Name, Args} and makes the round trip. */
static PyObject *
call_impl(module_state *st, erpy_helper *b, erpy_worker *w, PyObject *const *args,
          Py_ssize_t nargs, const call_limit *lim)
{
    if (begin_frame(w, ERPY_K_CALL) < 0 || encode_call(st, &w->out, args, nargs) < 0)
        return NULL;
    return roundtrip(st, b, w, lim);
}

/* _request(kind, payload, timeout): APPLY and EVAL; payload is encoded as is. */
static PyObject *
m_request(PyObject *module, PyObject *args)
{
    module_state *st = get_state(module);
    int kind;
    PyObject *payload, *timeout;
    if (!PyArg_ParseTuple(args, "iOO:_request", &kind, &payload, &timeout))
        return NULL;
    if (kind != ERPY_K_APPLY && kind != ERPY_K_EVAL && kind != ERPY_K_CALL && kind != ERPY_K_SEND) {
        PyErr_SetString(PyExc_ValueError, "bad request kind");
        return NULL;
    }
    call_limit lim;
    if (call_limit_of(st, timeout, &lim) < 0)
        return NULL;
    erpy_helper *b = live_helper(st, &lim);
    if (b == NULL)
        return NULL;
    PyObject *res = NULL;
    erpy_worker *w = my_worker();
    if (w != NULL) {
        if (begin_frame(w, kind) < 0 || erpy_encode(&st->codec, &st->eopts, &w->out, payload) < 0)
            res = release_worker(w, NULL);
        else
            res = release_worker(w, roundtrip(st, b, w, &lim));
    }
    helper_unref(b);
    return res;
}

/* ------------------------------------------------------------ async calls
 *
 * An async call is submitted with the GIL held and returns at once with its
 * Seq; nothing blocks (the request is written if the pipe takes it now,
 * else queued for the background thread).  Its reply reaches the waker it
 * was submitted with: a Python object wrapping an erpy_waker, whose owner
 * watches waker.fileno() (a thread in waker.wait(), an event loop's
 * add_reader) and calls waker.take() for the finished calls, as
 * (ctx, ok, value) tuples: ctx the object passed to the submit (a future),
 * value the result, or the exception when ok is False.  Timeouts and
 * cancelling are the owner's: _withdraw(seq) takes a call back (its
 * process in the helper is killed; a late reply is dropped). */

typedef struct {
    PyObject_HEAD
    erpy_waker *k;      /* NULL once closed */
} WakerObject;

/* The request buffer of submissions, reused under the GIL (the encoder may
 * run Python code that submits again: then a buffer of its own). */
static erpy_buf abuf;
static int abuf_busy;

/* (ctx, ok, value) for a finished call; consumes p's ctx reference and frees
 * p.  `dead` caches the HelperExited of a dead helper for a batch.  Returns
 * a new reference or NULL with an exception set (out of memory). */
static PyObject *
finished_call(module_state *st, erpy_pending *p, PyObject **dead)
{
    ERPY_ASSERT(PyGILState_Check());
    PyObject *value;
    int ok = 0;
    if (p->dead) {
        if (*dead == NULL) {
            raise_exited(st, p->helper, NULL);
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_NormalizeException(&et, &ev, &tb);
            Py_XDECREF(et);
            Py_XDECREF(tb);
            *dead = ev;
        }
        value = *dead;
        Py_XINCREF(value);
    } else if (p->reply->kind == ERPY_K_OK) {
        value = decode_payload(st, p->reply->payload, p->reply->plen);
        ok = value != NULL;
    } else {
        value = error_of(st, p->reply);
    }
    if (value == NULL) {
        /* A malformed reply: the call's own exception. */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyErr_NormalizeException(&et, &ev, &tb);
        if (ev != NULL && tb != NULL)
            PyException_SetTraceback(ev, tb);
        Py_XDECREF(et);
        Py_XDECREF(tb);
        value = ev;
        ok = 0;
    }
    PyObject *ctx = p->ctx;
    helper_unref(p->helper);
    erpy_pending_free(p);
    if (value == NULL) {
        Py_DECREF(ctx);
        return NULL;
    }
    PyObject *t = PyTuple_New(3);
    if (t == NULL) {
        Py_DECREF(ctx);
        Py_DECREF(value);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, ctx);
    PyTuple_SET_ITEM(t, 1, PyBool_FromLong(ok));
    PyTuple_SET_ITEM(t, 2, value);
    return t;
}

/* Drops finished or withdrawn calls nobody will take (a dnext list). */
static void
discard_calls(erpy_pending *p)
{
    while (p) {
        erpy_pending *n = p->dnext;
        if (p->ctx != NULL) {
            /* An async call's (a mailbox's entries hold neither). */
            Py_DECREF((PyObject *)p->ctx);
            helper_unref(p->helper);
        }
        erpy_pending_free(p);
        p = n;
    }
}

static void
waker_close(WakerObject *self)
{
    erpy_waker *k = self->k;
    if (k == NULL)
        return;
    self->k = NULL;
    erpy_helper *b = erpy_helper_current();
    erpy_pending *list = NULL;
    if (b != NULL) {
        Py_BEGIN_ALLOW_THREADS
        list = erpy_async_withdraw_all(b, k);
        erpy_mbox_forget_waker(b, k);   /* a mailbox dropped without close() */
        Py_END_ALLOW_THREADS
    }
    discard_calls(list);
    discard_calls(erpy_waker_take(k));
    erpy_waker_free(k);
}

static PyObject *
Waker_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kw && PyDict_GET_SIZE(kw) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Waker() takes no arguments");
        return NULL;
    }
    WakerObject *self = (WakerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->k = erpy_waker_new();
    if (self->k == NULL) {
        Py_DECREF(self);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return (PyObject *)self;
}

static void
Waker_dealloc(WakerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    waker_close(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
waker_open(WakerObject *self)
{
    if (self->k == NULL) {
        PyErr_SetString(PyExc_ValueError, "the waker is closed");
        return -1;
    }
    return 0;
}

static PyObject *
Waker_fileno(WakerObject *self, PyObject *unused)
{
    if (waker_open(self) < 0)
        return NULL;
    return PyLong_FromLong(self->k->fd_r);
}

/* wait(timeout=None) -> bool: whether calls have finished (the pipe is
 * readable); False after timeout seconds, or early on a signal, after the
 * signal handlers ran. */
static PyObject *
Waker_wait(WakerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    double t = -1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "wait() takes at most one argument");
        return NULL;
    }
    if (nargs == 1 && args[0] != Py_None) {
        t = PyFloat_AsDouble(args[0]);
        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        if (t < 0)
            t = 0;
    }
    if (waker_open(self) < 0)
        return NULL;
    int ms = t < 0 ? -1 : t > 3600 ? 3600000 : (int)(t * 1000 + 0.999);
    erpy_waker *k = self->k;
    module_state *st = PyType_GetModuleState(Py_TYPE(self));
    /* The main thread wakes every MAIN_SLICE_MS to run signal handlers:
     * SIGINT may have been delivered to another thread (as for calls). */
    int main = PyThread_get_thread_ident() == st->main_thread;
    uint64_t end = ms < 0 ? UINT64_MAX : erpy_now_ns() + (uint64_t)ms * 1000000ULL;
    int r;
    for (;;) {
        int slice = ms;
        if (main) {
            uint64_t now = erpy_now_ns();
            uint64_t left = end == UINT64_MAX ? UINT64_MAX : end > now ? (end - now) / 1000000ULL : 0;
            slice = left < MAIN_SLICE_MS ? (int)left : MAIN_SLICE_MS;
        }
        int e;
        Py_BEGIN_ALLOW_THREADS
        r = erpy_waker_wait(k, slice);
        e = errno;
        Py_END_ALLOW_THREADS
        if ((r < 0 && e == EINTR) || main) {
            if (PyErr_CheckSignals() < 0)
                return NULL;
        }
        if (r != 0 || !main || erpy_now_ns() >= end)
            break;
    }
    return PyBool_FromLong(r > 0);
}

/* take() -> [(ctx, ok, value)]: the calls finished since the last take. */
static PyObject *
Waker_take(WakerObject *self, PyObject *unused)
{
    if (waker_open(self) < 0)
        return NULL;
    module_state *st = PyType_GetModuleState(Py_TYPE(self));
    erpy_pending *p;
    Py_BEGIN_ALLOW_THREADS
    p = erpy_waker_take(self->k);
    Py_END_ALLOW_THREADS
    PyObject *res = PyList_New(0), *dead = NULL;
    while (p) {
        erpy_pending *n = p->dnext;
        PyObject *t = finished_call(st, p, &dead);
        if (t == NULL || res == NULL || PyList_Append(res, t) < 0)
            Py_CLEAR(res);
        Py_XDECREF(t);
        p = n;
    }
    Py_XDECREF(dead);
    return res;
}

/* kick(): makes wait() return (for the owner's own reasons: a new
 * deadline). */
static PyObject *
Waker_kick(WakerObject *self, PyObject *unused)
{
    if (waker_open(self) < 0)
        return NULL;
    ssize_t r;
    do {
        r = write(self->k->fd_w, "k", 1);
    } while (r < 0 && errno == EINTR);
    Py_RETURN_NONE;
}

/* close(): withdraws the calls still pending on this waker (their processes
 * in the helper are killed) and drops the finished ones. */
static PyObject *
Waker_close(WakerObject *self, PyObject *unused)
{
    waker_close(self);
    Py_RETURN_NONE;
}

static PyMethodDef Waker_methods[] = {
    {"fileno", (PyCFunction)Waker_fileno, METH_NOARGS,
     "fileno($self, /)\n--\n\nThe descriptor that turns readable when calls finish."},
    {"wait", (PyCFunction)(void (*)(void))Waker_wait, METH_FASTCALL,
     "wait($self, timeout=None, /)\n--\n\nWaits for finished calls; True if there are."},
    {"take", (PyCFunction)Waker_take, METH_NOARGS,
     "take($self, /)\n--\n\nThe finished calls, as (ctx, ok, value) tuples."},
    {"kick", (PyCFunction)Waker_kick, METH_NOARGS,
     "kick($self, /)\n--\n\nMakes wait() return."},
    {"close", (PyCFunction)Waker_close, METH_NOARGS,
     "close($self, /)\n--\n\nWithdraws the calls still pending; drops the finished ones."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Waker_slots[] = {
    {Py_tp_new, Waker_new},
    {Py_tp_dealloc, Waker_dealloc},
    {Py_tp_methods, Waker_methods},
    {Py_tp_doc, "Waker()\n--\n\nWhere async calls' replies arrive (internal)."},
    {0, NULL},
};

static PyType_Spec Waker_spec = {
    .name = "erlang._erlang.Waker",
    .basicsize = sizeof(WakerObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Waker_slots,
};

/* Submits the request in out (a frame begun with begin_frame_in) on waker
 * k with ctx.  Returns the Seq as an int, None when the outbound queue is
 * full (nothing sent: try again later), or NULL with an exception set. */
static PyObject *
submit(module_state *st, erpy_helper *b, WakerObject *waker, PyObject *ctx, erpy_buf *out)
{
    erpy_put_be32(out->data, (uint32_t)(out->len - 4));
    uint32_t seq = 0;
    int rc = erpy_async_submit(b, waker->k, ctx, out->data, out->len, &seq);
    if (rc == EAGAIN)
        Py_RETURN_NONE;
    if (rc == EPIPE)
        return raise_exited(st, b, NULL);
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_INCREF(ctx);      /* the pending call's */
    b->refs++;           /* the pending call's, dropped when it is taken */
    return PyLong_FromUnsignedLong(seq);
}

/* Shared by _submit_call and _submit: checks the waker, finds (or starts)
 * the helper, encodes with `encode` into the submission buffer and submits.
 * Returns as submit() does. */
typedef int (*encoder_fn)(module_state *st, erpy_buf *out, void *arg);

static PyObject *
submit_with(module_state *st, PyObject *waker, PyObject *ctx, int kind, encoder_fn encode,
            void *arg)
{
    if (!PyObject_TypeCheck(waker, st->Waker)) {
        PyErr_SetString(PyExc_TypeError, "expected a Waker");
        return NULL;
    }
    if (waker_open((WakerObject *)waker) < 0)
        return NULL;
    call_limit lim = {0};
    erpy_helper *b = live_helper(st, &lim);
    if (b == NULL)
        return NULL;
    erpy_buf local = {0};
    erpy_buf *out = abuf_busy ? &local : &abuf;
    int mine = out == &abuf;
    abuf_busy = 1;
    PyObject *res = NULL;
    if (begin_frame_in(out, kind) == 0 && encode(st, out, arg) == 0 &&
        waker_open((WakerObject *)waker) == 0)
        res = submit(st, b, (WakerObject *)waker, ctx, out);
    if (mine) {
        abuf_busy = 0;
        if (abuf.cap > (1 << 20))
            erpy_buf_free(&abuf);
    } else {
        erpy_buf_free(&local);
    }
    helper_unref(b);
    return res;
}

typedef struct {
    PyObject *const *args;
    Py_ssize_t nargs;
} call_args;

static int
encode_call_args(module_state *st, erpy_buf *out, void *arg)
{
    call_args *a = arg;
    return encode_call(st, out, a->args, a->nargs);
}

static int
encode_object(module_state *st, erpy_buf *out, void *arg)
{
    return erpy_encode(&st->codec, &st->eopts, out, (PyObject *)arg);
}

/* _submit_call(waker, ctx, name, *args) -> seq | None */
static PyObject *
m_submit_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    module_state *st = get_state(module);
    if (nargs < 3) {
        PyErr_SetString(PyExc_TypeError, "_submit_call(waker, ctx, name, *args)");
        return NULL;
    }
    call_args a = {args + 2, nargs - 2};
    return submit_with(st, args[0], args[1], ERPY_K_CALL_ASYNC, encode_call_args, &a);
}

/* _submit(waker, ctx, kind, payload) -> seq | None: APPLY or EVAL (the sync
 * kind's number), payload encoded as it is. */
static PyObject *
m_submit(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    module_state *st = get_state(module);
    if (nargs != 4 || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "_submit(waker, ctx, kind, payload)");
        return NULL;
    }
    long kind = PyLong_AsLong(args[2]);
    if (kind != ERPY_K_APPLY && kind != ERPY_K_EVAL) {
        PyErr_SetString(PyExc_ValueError, "bad request kind");
        return NULL;
    }
    int akind = kind == ERPY_K_APPLY ? ERPY_K_APPLY_ASYNC : ERPY_K_EVAL_ASYNC;
    return submit_with(st, args[0], args[1], akind, encode_object, args[3]);
}

/* _withdraw(seq) -> ctx | None: takes a pending async call back (its
 * process in the helper is killed, a late reply dropped); None when it has
 * already finished. */
static PyObject *
m_withdraw(PyObject *module, PyObject *arg)
{
    unsigned long seq = PyLong_AsUnsignedLong(arg);
    if (seq == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    erpy_helper *b = erpy_helper_current();
    if (b == NULL || seq == 0 || seq > UINT32_MAX)
        Py_RETURN_NONE;
    erpy_pending *p;
    Py_BEGIN_ALLOW_THREADS
    p = erpy_async_withdraw(b, (uint32_t)seq);
    Py_END_ALLOW_THREADS
    if (p == NULL)
        Py_RETURN_NONE;
    PyObject *ctx = p->ctx;
    helper_unref(p->helper);
    erpy_pending_free(p);
    return ctx;
}

/* Frees a NULL-terminated array of strings made by to_cstrings. */
static void
free_cstrings(char **v)
{
    if (v == NULL)
        return;
    for (char **p = v; *p; p++)
        PyMem_Free(*p);
    PyMem_Free(v);
}

/* Copies a sequence of str/bytes into a NULL-terminated array.  Returns NULL
 * with an exception set on error. */
static char **
to_cstrings(PyObject *seq, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **v = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (v == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *bytes = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(fast, i), &bytes))
            goto error;
        Py_ssize_t len = PyBytes_GET_SIZE(bytes);
        v[i] = PyMem_Malloc((size_t)len + 1);
        if (v[i] == NULL) {
            Py_DECREF(bytes);
            PyErr_NoMemory();
            goto error;
        }
        memcpy(v[i], PyBytes_AS_STRING(bytes), (size_t)len + 1);
        Py_DECREF(bytes);
    }
    Py_DECREF(fast);
    return v;
error:
    Py_DECREF(fast);
    free_cstrings(v);
    return NULL;
}

static PyObject *start_handshake(module_state *st, erpy_helper *b, double timeout);

/* _start(argv, env, timeout, call_timeout, binaries, elixir=False) -> hello dict
 * elixir: nil decodes to None and None encodes as nil (Elixir's null). */
static PyObject *
m_start(PyObject *module, PyObject *args)
{
    module_state *st = get_state(module);
    PyObject *argv_o, *env_o, *binaries;
    double timeout, call_timeout;
    int elixir = 0;
    if (!PyArg_ParseTuple(args, "OOddO|p:_start", &argv_o, &env_o, &timeout, &call_timeout,
                          &binaries, &elixir))
        return NULL;
    int bb = erpy_parse_binaries_opt(binaries);
    if (bb < 0)
        return NULL;
    erpy_helper *old = erpy_helper_current();
    if (old != NULL && !old->dead) {
        PyErr_SetString(PyExc_RuntimeError, "the helper is already running");
        return NULL;
    }
    if (old != NULL)
        stop_helper(old, 0);   /* reap what is left of the dead one */
    char **argv = to_cstrings(argv_o, "argv must be a sequence");
    if (argv == NULL)
        return NULL;
    char **envp = to_cstrings(env_o, "env must be a sequence");
    if (envp == NULL) {
        free_cstrings(argv);
        return NULL;
    }
    int err = 0;
    erpy_helper *b;
    Py_BEGIN_ALLOW_THREADS
    b = erpy_helper_start(argv, envp, &err);
    Py_END_ALLOW_THREADS
    free_cstrings(argv);
    free_cstrings(envp);
    if (b == NULL) {
        char msg[300];
        snprintf(msg, sizeof msg, "could not start the helper: %s", strerror(err));
        return raise_exited(st, NULL, msg);
    }
    b->refs++;   /* ours, for the rest of this function */
    st->call_timeout = call_timeout;
    st->dopts.binaries_as_bytes = bb;
    st->dopts.nil_as_none = elixir;
    st->eopts.none_as_nil = elixir;
    st->starter = PyThread_get_thread_ident();
    PyObject *hello = start_handshake(st, b, timeout);
    helper_unref(b);
    return hello;
}

/* Waits for the HELLO of the just started b.  Returns the decoded hello, or
 * NULL with an exception set after stopping b. */
static PyObject *
start_handshake(module_state *st, erpy_helper *b, double timeout)
{
    uint64_t end = timeout > TIMEOUT_MAX_S ? UINT64_MAX
                                           : erpy_now_ns() + (uint64_t)(timeout * 1e9);
    int slice = PyThread_get_thread_ident() == st->main_thread ? MAIN_SLICE_MS : OTHER_SLICE_MS;
    for (;;) {
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = erpy_helper_wait_hello(b, slice);
        Py_END_ALLOW_THREADS
        if (r == 1)
            break;
        if (r == 0) {
            stop_helper(b, 0);
            return raise_exited_full(st, b, "the Erlang helper exited during start-up", 1);
        }
        int interrupted = PyErr_CheckSignals() < 0;
        if (interrupted || erpy_now_ns() >= end) {
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            erpy_helper_kill(b);
            stop_helper(b, 1000);
            if (interrupted) {
                PyErr_Restore(et, ev, tb);
                return NULL;
            }
            char msg[200];
            snprintf(msg, sizeof msg, "the helper did not answer within %g s of starting",
                     timeout);
            return raise_exited_full(st, b, msg, 1);
        }
    }
    erpy_frame *h = b->hello;
    PyObject *hello = decode_payload(st, h->payload, h->plen);
    if (hello == NULL)
        stop_helper(b, 1000);
    return hello;
}

/* _stop(timeout) -> bool: whether a helper was stopped. */
static PyObject *
m_stop(PyObject *module, PyObject *arg)
{
    double t = PyFloat_AsDouble(arg);
    if (t == -1.0 && PyErr_Occurred())
        return NULL;
    if (!(t >= 0))
        t = 0;
    erpy_helper *b = erpy_helper_current();
    if (b == NULL)
        Py_RETURN_FALSE;
    int was_alive = !b->dead;
    stop_helper(b, t > 3600 ? 3600000 : (int)(t * 1000));
    return PyBool_FromLong(was_alive);
}

/* _set_ready(): start-up is over, every thread may call. */
static PyObject *
m_set_ready(PyObject *module, PyObject *unused)
{
    module_state *st = get_state(module);
    erpy_helper *b = erpy_helper_current();
    if (b != NULL)
        b->ready = 1;
    st->starter = 0;
    Py_RETURN_NONE;
}

static PyObject *
m_is_running(PyObject *module, PyObject *unused)
{
    erpy_helper *b = erpy_helper_current();
    return PyBool_FromLong(b != NULL && !b->dead);
}

/* _helper_pid() -> int | None (the OS pid of the live helper) */
static PyObject *
m_helper_pid(PyObject *module, PyObject *unused)
{
    erpy_helper *b = erpy_helper_current();
    if (b == NULL || b->dead || b->pid <= 0)
        Py_RETURN_NONE;
    return PyLong_FromLong((long)b->pid);
}

/* _stall_rescues() -> int: times waiting threads were found without a
 * reader and rescued by the background thread (for tests: always 0). */
static PyObject *
m_stall_rescues(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(erpy_stall_rescues());
}

/* _next_output(timeout) -> (kind, bytes) | None: helper output not tied to a
 * waiting call (kind 19, an ETF payload) or raw helper stderr (kind 255). */
static PyObject *
m_next_output(PyObject *module, PyObject *arg)
{
    double t = PyFloat_AsDouble(arg);
    if (t == -1.0 && PyErr_Occurred())
        return NULL;
    erpy_frame *f;
    Py_BEGIN_ALLOW_THREADS
    f = erpy_output_next(t <= 0 ? 0 : (int)(t * 1000));
    Py_END_ALLOW_THREADS
    if (f == NULL)
        Py_RETURN_NONE;
    PyObject *r = Py_BuildValue("(iy#)", (int)f->kind, f->payload, (Py_ssize_t)f->plen);
    free(f);
    return r;
}

/* _parse_frames(data) -> [(kind, worker, seq, payload)]: the reader's
 * frame splitting, for tests and the fuzzer.  Trailing bytes of an
 * incomplete frame are ignored; a protocol error raises ValueError. */
static PyObject *
m_parse_frames(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    erpy_frame *list;
    ssize_t used = erpy_parse_frames(view.buf, (size_t)view.len, &list);
    PyBuffer_Release(&view);
    if (used < 0) {
        PyErr_SetString(PyExc_ValueError, "protocol error: bad frame length or header");
        return NULL;
    }
    PyObject *res = PyList_New(0);
    for (erpy_frame *f = list; f && res; f = f->next) {
        PyObject *t = Py_BuildValue("(iIIy#)", (int)f->kind, (unsigned)f->worker,
                                    (unsigned)f->seq, f->payload, (Py_ssize_t)f->plen);
        if (t == NULL || PyList_Append(res, t) < 0)
            Py_CLEAR(res);
        Py_XDECREF(t);
    }
    erpy_frames_free(list);
    return res;
}

static PyObject *
m_wake_output(PyObject *module, PyObject *unused)
{
    erpy_output_wake();
    Py_RETURN_NONE;
}

/* ------------------------------------------------ callbacks and mailboxes */

/* _set_callback_runner(fn): fn(alias, name, args) -> bytes | None runs an
 * export and returns the CALLBACK_REPLY payload (None: a cast, no reply). */
static PyObject *
m_set_callback_runner(PyObject *module, PyObject *fn)
{
    module_state *st = get_state(module);
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "the callback runner must be callable");
        return NULL;
    }
    Py_INCREF(fn);
    Py_XSETREF(st->run_callback, fn);
    Py_RETURN_NONE;
}

/* _next_callback(timeout) -> (worker, seq, alias, name, args) | None: the
 * next CALLBACK for the python_workers pool; None after timeout seconds,
 * or at once after _wake_callbacks().  An undecodable one is skipped (its
 * sender is left to its timeout) with a warning. */
static PyObject *
m_next_callback(PyObject *module, PyObject *arg)
{
    module_state *st = get_state(module);
    double t = PyFloat_AsDouble(arg);
    if (t == -1.0 && PyErr_Occurred())
        return NULL;
    erpy_frame *f;
    Py_BEGIN_ALLOW_THREADS
    f = erpy_callback_next(t <= 0 ? 0 : (int)(t * 1000));
    Py_END_ALLOW_THREADS
    if (f == NULL)
        Py_RETURN_NONE;
    PyObject *v = decode_payload(st, f->payload, f->plen);
    PyObject *r = NULL;
    if (v != NULL && PyTuple_Check(v) && PyTuple_GET_SIZE(v) == 3)
        r = Py_BuildValue("(IIOOO)", (unsigned)f->worker, (unsigned)f->seq,
                          PyTuple_GET_ITEM(v, 0), PyTuple_GET_ITEM(v, 1), PyTuple_GET_ITEM(v, 2));
    else if (v != NULL)
        PyErr_SetString(PyExc_ValueError, "malformed CALLBACK frame from the helper");
    Py_XDECREF(v);
    free(f);
    return r;
}

static PyObject *
m_wake_callbacks(PyObject *module, PyObject *unused)
{
    erpy_callback_wake();
    Py_RETURN_NONE;
}

/* The current helper with a reference, or NULL (none running; no
 * exception set). */
static erpy_helper *
running_helper(void)
{
    erpy_helper *b = erpy_helper_current();
    if (b == NULL || b->dead)
        return NULL;
    b->refs++;
    return b;
}

/* _write_frame(kind, worker, seq, payload: bytes) -> bool: writes a frame to
 * the current helper, waiting (GIL released) while the channel is busy;
 * False when no helper runs.  For CALLBACK_REPLY and SEND. */
static PyObject *
m_write_frame(PyObject *module, PyObject *args)
{
    int kind;
    unsigned worker, seq;
    Py_buffer payload;
    if (!PyArg_ParseTuple(args, "iIIy*:_write_frame", &kind, &worker, &seq, &payload))
        return NULL;
    erpy_helper *b = running_helper();
    int rc = 0;
    if (b != NULL) {
        rc = write_frame(b, kind, worker, seq, payload.buf, (size_t)payload.len);
        helper_unref(b);
    }
    PyBuffer_Release(&payload);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(b != NULL);
}

/* _post_frame(kind, seq, payload: bytes) -> bool: the same on worker 0
 * without ever blocking (the outbound queue), for an event loop (CREDIT). */
static PyObject *
m_post_frame(PyObject *module, PyObject *args)
{
    int kind;
    unsigned seq;
    Py_buffer payload;
    if (!PyArg_ParseTuple(args, "iIy*:_post_frame", &kind, &seq, &payload))
        return NULL;
    erpy_helper *b = running_helper();
    int ok = b != NULL;
    if (b != NULL) {
        erpy_buf frame = {0};
        if (build_frame(&frame, kind, 0, seq, payload.buf, (size_t)payload.len) < 0) {
            erpy_buf_free(&frame);
            helper_unref(b);
            PyBuffer_Release(&payload);
            return NULL;
        }
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = erpy_helper_post(b, frame.data, frame.len);
        Py_END_ALLOW_THREADS
        erpy_buf_free(&frame);
        helper_unref(b);
        if (rc == ENOMEM) {
            PyBuffer_Release(&payload);
            return PyErr_NoMemory();
        }
        ok = rc == 0;
    }
    PyBuffer_Release(&payload);
    return PyBool_FromLong(ok);
}

static erpy_waker *
waker_arg(module_state *st, PyObject *o)
{
    if (!PyObject_TypeCheck(o, st->Waker)) {
        PyErr_SetString(PyExc_TypeError, "expected a Waker");
        return NULL;
    }
    WakerObject *wo = (WakerObject *)o;
    if (wo->k == NULL) {
        PyErr_SetString(PyExc_ValueError, "the waker is closed");
        return NULL;
    }
    return wo->k;
}

/* A mailbox's reference to its helper: valid as long as the mailbox holds
 * the capsule (its dead entry names the helper's exit). */
static void
helper_capsule_free(PyObject *cap)
{
    erpy_helper *b = PyCapsule_GetPointer(cap, "erlang.helper");
    if (b != NULL)
        helper_unref(b);
}

/* _mbox_open(waker) -> (id, helper): a mailbox of the current helper
 * (started if none runs, as a call would start it) whose messages go to
 * waker; `helper` is a capsule holding a reference to that helper, for
 * _mbox_close. */
static PyObject *
m_mbox_open(PyObject *module, PyObject *arg)
{
    module_state *st = get_state(module);
    erpy_waker *k = waker_arg(st, arg);
    if (k == NULL)
        return NULL;
    call_limit lim;
    if (call_limit_of(st, NULL, &lim) < 0)
        return NULL;
    erpy_helper *b = live_helper(st, &lim);
    if (b == NULL)
        return NULL;
    uint32_t id;
    Py_BEGIN_ALLOW_THREADS
    id = erpy_mbox_open(b, k);
    Py_END_ALLOW_THREADS
    if (id == 0) {
        if (errno == EPIPE)
            raise_exited(st, b, NULL);
        else
            PyErr_SetFromErrno(PyExc_OSError);
        helper_unref(b);
        return NULL;
    }
    PyObject *cap = PyCapsule_New(b, "erlang.helper", helper_capsule_free);
    if (cap == NULL) {
        erpy_mbox_close(b, id);
        helper_unref(b);
        return NULL;
    }
    return Py_BuildValue("(kN)", (unsigned long)id, cap);
}

/* _mbox_close(helper, id): nothing more is delivered to mailbox id. */
static PyObject *
m_mbox_close(PyObject *module, PyObject *args)
{
    PyObject *cap;
    unsigned long id;
    if (!PyArg_ParseTuple(args, "Ok:_mbox_close", &cap, &id))
        return NULL;
    erpy_helper *b = PyCapsule_GetPointer(cap, "erlang.helper");
    if (b == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    erpy_mbox_close(b, (uint32_t)id);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* _mbox_take(waker) -> [(tag, value, nbytes)]: what reached a mailbox
 * since the last take, in order: tag 0 a message, 1 a message that could
 * not be decoded (value: the ValueError), 2 the mailbox process exited
 * (value: its reason), 3 the helper died (value: the HelperExited). */
static PyObject *
m_mbox_take(PyObject *module, PyObject *arg)
{
    module_state *st = get_state(module);
    erpy_waker *k = waker_arg(st, arg);
    if (k == NULL)
        return NULL;
    erpy_pending *p;
    Py_BEGIN_ALLOW_THREADS
    p = erpy_waker_take(k);
    Py_END_ALLOW_THREADS
    PyObject *res = PyList_New(0);
    while (p) {
        erpy_pending *n = p->dnext;
        int tag;
        Py_ssize_t nbytes = 0;
        PyObject *value;
        if (p->dead) {
            tag = 3;
            raise_exited(st, p->helper, NULL);
        } else {
            tag = p->reply->kind == ERPY_K_MESSAGE ? 0 : 2;
            nbytes = (Py_ssize_t)p->reply->plen;
            value = decode_payload(st, p->reply->payload, p->reply->plen);
            if (value == NULL && tag == 0)
                tag = 1;
        }
        if (tag == 1 || tag == 3 || (tag == 2 && value == NULL)) {
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_NormalizeException(&et, &ev, &tb);
            Py_XDECREF(et);
            Py_XDECREF(tb);
            value = ev;
        }
        PyObject *t = value ? Py_BuildValue("(iNn)", tag, value, nbytes) : NULL;
        if (t == NULL || res == NULL || PyList_Append(res, t) < 0)
            Py_CLEAR(res);
        Py_XDECREF(t);
        erpy_pending_free(p);
        p = n;
    }
    return res;
}

/* ------------------------------------------------------------------ module */

/* The public functions' docstrings start with a __text_signature__ line
 * ("name($module, ...)\n--\n\n"): inspect.signature() and help() read it. */

PyDoc_STRVAR(erpy_call_doc,
"call($module, name, /, *args, timeout=None)\n"
"--\n"
"\n"
"Calls the Erlang function registered as `name` with `args` and returns\n"
"its value.\n"
"\n"
"`name` is a str, Atom or bytes: the text it was registered under with\n"
"py:register_function/2,3 (calling a name never creates an atom).  The\n"
"registered fun receives the arguments as one list, [Arg1, Arg2, ...].\n"
"`timeout` is in seconds: None means the call_timeout start option (by\n"
"default no limit); 0 raises CallTimeout at once without sending.  The\n"
"first call starts the helper.  Any number of threads may call at once;\n"
"the GIL is released while a call waits.\n"
"\n"
"Raises UndefinedFunction when nothing is registered under `name`, Error\n"
"when the function raises (.kind, .reason, .stacktrace), CallTimeout when\n"
"`timeout` elapses, HelperExited when the helper is gone or cannot start,\n"
"TypeError/ValueError for a name, argument or timeout that cannot be sent\n"
"(nothing is sent then), RuntimeError for a call from inside a call of the\n"
"same thread (a signal handler or __del__).\n"
"\n"
">>> erlang.eval(\"py:register_function(double_it, fun([X]) -> X * 2 end).\")\n"
"'ok'\n"
">>> erlang.call(\"double_it\", 21)\n"
"42");

PyDoc_STRVAR(erpy_term_to_binary_doc,
"term_to_binary($module, obj, /)\n"
"--\n"
"\n"
"Returns the Erlang external term format of `obj` (bytes starting with the\n"
"version byte 131), as erlang:term_to_binary/1 would make it; no helper is\n"
"needed.  See the README's type table for how Python values map.\n"
"\n"
"Raises TypeError for a value with no Erlang twin, ValueError for one out\n"
"of range (an atom over 255 characters, an int over Erlang's limit),\n"
"RecursionError for a term nested too deeply.\n"
"\n"
">>> erlang.term_to_binary((1, \"a\"))\n"
"b'\\x83h\\x02a\\x01m\\x00\\x00\\x00\\x01a'");

PyDoc_STRVAR(erpy_binary_to_term_doc,
"binary_to_term($module, data, /, binaries='str')\n"
"--\n"
"\n"
"Decodes one term in Erlang's external term format (compressed ones\n"
"too); no helper is needed.\n"
"\n"
"`data` is any bytes-like object (bytes, bytearray, memoryview) starting\n"
"with the version byte 131 and holding exactly one term.  `binaries` is\n"
"'str' (the default: a binary decodes to str when it is UTF-8, else to\n"
"bytes) or 'bytes' (every binary decodes to bytes).\n"
"\n"
"Raises ValueError for malformed data (the message gives the byte\n"
"offset) or trailing bytes, TypeError when `data` is not bytes-like,\n"
"RecursionError for a term nested too deeply.\n"
"\n"
">>> erlang.binary_to_term(b'\\x83h\\x02a\\x01m\\x00\\x00\\x00\\x01a')\n"
"(1, 'a')");

PyDoc_STRVAR(erpy_is_running_doc,
"is_running($module, /)\n"
"--\n"
"\n"
"Returns True when a helper is running, False otherwise (it never starts\n"
"one, and raises nothing).  A helper that died is noticed here once its\n"
"channel has closed.\n"
"\n"
">>> erlang.is_running()\n"
"False");

static PyMethodDef erpy_methods[] = {
    {"_init_types", m_init_types, METH_VARARGS,
     "_init_types(Atom, Pid, Reference, Port, Fun, ImproperList, BitString)"},
    {"term_to_binary", m_term_to_binary, METH_O, erpy_term_to_binary_doc},
    {"binary_to_term", (PyCFunction)(void (*)(void))m_binary_to_term,
     METH_FASTCALL | METH_KEYWORDS, erpy_binary_to_term_doc},
    {"_init_runtime", m_init_runtime, METH_VARARGS,
     "_init_runtime(autostart, make_error, make_exited, write_output, CallTimeout, main_ident)"},
    {"call", (PyCFunction)(void (*)(void))m_call, METH_FASTCALL | METH_KEYWORDS,
     erpy_call_doc},
    {"_request", m_request, METH_VARARGS, "_request(kind, payload, timeout)"},
    {"_start", m_start, METH_VARARGS, "_start(argv, env, timeout, call_timeout, binaries, elixir=False)"},
    {"_stop", m_stop, METH_O, "_stop(timeout) -> bool"},
    {"_set_ready", m_set_ready, METH_NOARGS, "_set_ready()"},
    {"is_running", m_is_running, METH_NOARGS, erpy_is_running_doc},
    {"_helper_pid", m_helper_pid, METH_NOARGS, "_helper_pid() -> int | None"},
    {"_stall_rescues", m_stall_rescues, METH_NOARGS, "_stall_rescues() -> int"},
    {"_next_output", m_next_output, METH_O, "_next_output(timeout) -> (kind, bytes) | None"},
    {"_parse_frames", m_parse_frames, METH_O, "_parse_frames(data) -> [(kind, worker, seq, payload)]"},
    {"_wake_output", m_wake_output, METH_NOARGS, "_wake_output()"},
    {"_set_callback_runner", m_set_callback_runner, METH_O, "_set_callback_runner(fn)"},
    {"_next_callback", m_next_callback, METH_O,
     "_next_callback(timeout) -> (worker, seq, alias, name, args) | None"},
    {"_wake_callbacks", m_wake_callbacks, METH_NOARGS, "_wake_callbacks()"},
    {"_write_frame", m_write_frame, METH_VARARGS,
     "_write_frame(kind, worker, seq, payload) -> bool"},
    {"_post_frame", m_post_frame, METH_VARARGS, "_post_frame(kind, seq, payload) -> bool"},
    {"_mbox_open", m_mbox_open, METH_O, "_mbox_open(waker) -> (id, helper)"},
    {"_mbox_close", m_mbox_close, METH_VARARGS, "_mbox_close(helper, id)"},
    {"_mbox_take", m_mbox_take, METH_O, "_mbox_take(waker) -> [(tag, value, nbytes)]"},
    {"_submit_call", (PyCFunction)(void (*)(void))m_submit_call, METH_FASTCALL,
     "_submit_call(waker, ctx, name, *args) -> seq | None"},
    {"_submit", (PyCFunction)(void (*)(void))m_submit, METH_FASTCALL,
     "_submit(waker, ctx, kind, payload) -> seq | None"},
    {"_withdraw", m_withdraw, METH_O, "_withdraw(seq) -> ctx | None"},
    {NULL, NULL, 0, NULL},
};

static int
erpy_traverse(PyObject *m, visitproc visit, void *arg)
{
    module_state *st = get_state(m);
    Py_VISIT(st->codec.Atom);
    Py_VISIT(st->codec.Pid);
    Py_VISIT(st->codec.Reference);
    Py_VISIT(st->codec.Port);
    Py_VISIT(st->codec.Fun);
    Py_VISIT(st->codec.ImproperList);
    Py_VISIT(st->codec.BitString);
    Py_VISIT(st->codec.atom_cache);
    Py_VISIT(st->autostart);
    Py_VISIT(st->make_error);
    Py_VISIT(st->make_exited);
    Py_VISIT(st->write_output);
    Py_VISIT(st->run_callback);
    Py_VISIT(st->CallTimeout);
    Py_VISIT(st->Waker);
    return 0;
}

static int
erpy_clear(PyObject *m)
{
    module_state *st = get_state(m);
    Py_CLEAR(st->codec.Atom);
    Py_CLEAR(st->codec.Pid);
    Py_CLEAR(st->codec.Reference);
    Py_CLEAR(st->codec.Port);
    Py_CLEAR(st->codec.Fun);
    Py_CLEAR(st->codec.ImproperList);
    Py_CLEAR(st->codec.BitString);
    Py_CLEAR(st->codec.atom_cache);
    Py_CLEAR(st->autostart);
    Py_CLEAR(st->make_error);
    Py_CLEAR(st->make_exited);
    Py_CLEAR(st->write_output);
    Py_CLEAR(st->run_callback);
    Py_CLEAR(st->CallTimeout);
    Py_CLEAR(st->Waker);
    return 0;
}

static void
erpy_free(void *m)
{
    erpy_clear((PyObject *)m);
}

static int
erpy_exec(PyObject *m)
{
    module_state *st = get_state(m);
    st->codec.atom_cache = PyDict_New();
    if (st->codec.atom_cache == NULL)
        return -1;
    st->call_timeout = -1;
    st->Waker = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Waker_spec, NULL);
    if (st->Waker == NULL)
        return -1;
    Py_INCREF(st->Waker);
    if (PyModule_AddObject(m, "Waker", (PyObject *)st->Waker) < 0) {
        Py_DECREF(st->Waker);
        return -1;
    }
    /* The protocol's constants (protocol.h), for the Python side. */
    static const struct { const char *name; long value; } consts[] = {
        {"PROTOCOL_VERSION", ERPY_PROTOCOL_VERSION},
        {"HEADER_SIZE", ERPY_HEADER_SIZE},
        {"ASYNC_WORKER", (long)ERPY_ASYNC_WORKER},
        {"K_CALL", ERPY_K_CALL},
        {"K_APPLY", ERPY_K_APPLY},
        {"K_EVAL", ERPY_K_EVAL},
        {"K_CANCEL", ERPY_K_CANCEL},
        {"K_CALL_ASYNC", ERPY_K_CALL_ASYNC},
        {"K_APPLY_ASYNC", ERPY_K_APPLY_ASYNC},
        {"K_EVAL_ASYNC", ERPY_K_EVAL_ASYNC},
        {"K_OK", ERPY_K_OK},
        {"K_ERROR", ERPY_K_ERROR},
        {"K_HELLO", ERPY_K_HELLO},
        {"K_OUTPUT", ERPY_K_OUTPUT},
        {"K_LOG", ERPY_K_LOG},
        {"K_CALLBACK", ERPY_K_CALLBACK},
        {"K_CALLBACK_REPLY", ERPY_K_CALLBACK_REPLY},
        {"K_SEND", ERPY_K_SEND},
        {"K_MESSAGE", ERPY_K_MESSAGE},
        {"K_CREDIT", ERPY_K_CREDIT},
        {"K_MAILBOX_DOWN", ERPY_K_MAILBOX_DOWN},
        {"MAILBOX_WINDOW_MSGS", ERPY_MAILBOX_WINDOW_MSGS},
        {"MAILBOX_WINDOW_BYTES", ERPY_MAILBOX_WINDOW_BYTES},
        {"K_RAW_STDERR", ERPY_K_RAW_STDERR},
    };
    for (size_t i = 0; i < sizeof consts / sizeof consts[0]; i++) {
        if (PyModule_AddIntConstant(m, consts[i].name, consts[i].value) < 0)
            return -1;
    }
    return 0;
}

static PyModuleDef_Slot erpy_slots[] = {
    {Py_mod_exec, erpy_exec},
    {0, NULL},
};

static struct PyModuleDef erpy_moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "erlang._erlang",
    .m_doc = "C core of the erlang package: codec and transport.",
    .m_size = sizeof(module_state),
    .m_methods = erpy_methods,
    .m_slots = erpy_slots,
    .m_traverse = erpy_traverse,
    .m_clear = erpy_clear,
    .m_free = erpy_free,
};

PyMODINIT_FUNC
PyInit__erlang(void)
{
    return PyModuleDef_Init(&erpy_moduledef);
}
