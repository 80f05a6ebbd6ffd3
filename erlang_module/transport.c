/* Transport: frames to and from the helper, the worker pool, and how threads
 * wait for their replies.  Nothing in this file touches a PyObject or needs
 * the GIL.
 *
 * Reading (leader/followers).  Exactly one thread at a time reads the
 * helper's stdout: the *leader*.  A thread waiting for a reply becomes the
 * leader when nobody else is, so a lone caller reads its own reply and pays
 * no hand-over.  The leader splits every chunk it reads into frames and puts
 * each one in the inbox of the worker it is addressed to, waking that worker
 * through its pipe; replies whose Seq is not the one their worker waits for
 * are stale and are dropped.  When the leader has its own reply it steps down
 * and wakes one waiting follower, which becomes the next leader.  A
 * background thread takes the role when nobody has waited for a few
 * milliseconds, so output of background Erlang processes and the helper's
 * death are noticed even when no call is in flight.  The leader never blocks
 * on another worker: wake-up pipes are non-blocking and one byte is enough.
 *
 * Locks: bridge->lock guards the leader, the waiting list, inboxes and the
 * dead state; bridge->wlock serialises writes; pool_lock guards the free list;
 * out_lock guards the output queue.  Never hold two of them at once except
 * bridge->lock then out_lock (dispatch of output).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "transport.h"

#define RBUF_SIZE (256 * 1024)
#define MAX_FRAME ((size_t)INT32_MAX)
#define BG_IDLE_NS (5 * 1000000ULL)      /* bg thread leads after 5 ms without callers */
#define STALL_NS (50 * 1000000ULL)      /* waiters without a leader this long: rescued */
#define OUTPUT_QUEUE_MAX (8u << 20)     /* bytes of unclaimed output kept at most */
#define CHUNK_BITS 8
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define MAX_CHUNKS 256                  /* 65,536 workers */

/* ------------------------------------------------------------------ util */

uint64_t
erpy_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The CLOCK_REALTIME time ms milliseconds from now, for
 * pthread_cond_timedwait. */
static struct timespec
abs_time_ms(int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec +
                  (uint64_t)ms * 1000000ULL;
    ts.tv_sec = (time_t)(ns / 1000000000ULL);
    ts.tv_nsec = (long)(ns % 1000000000ULL);
    return ts;
}

static void
wake_fd(int fd)
{
    if (fd < 0)
        return;
    ssize_t r;
    do {
        r = write(fd, "x", 1);
    } while (r < 0 && errno == EINTR);
    /* EAGAIN: a byte is already pending, which is all a wake-up needs. */
}

static void
drain_fd(int fd)
{
    char junk[64];
    ssize_t r;
    do {
        r = read(fd, junk, sizeof junk);
    } while (r == (ssize_t)sizeof junk || (r < 0 && errno == EINTR));
}

/* Blocks every signal in the calling thread (threads we create must never
 * take SIGINT away from the thread Python expects it on). */
static void
block_all_signals(void)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
}

void
erpy_frames_free(erpy_frame *f)
{
    while (f) {
        erpy_frame *n = f->next;
        free(f);
        f = n;
    }
}

/* ------------------------------------------------------------ worker pool */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static erpy_worker *chunks[MAX_CHUNKS];
static uint32_t n_workers;              /* published with release ordering */
static erpy_worker *free_list;
static pthread_key_t worker_key;

static erpy_worker *
worker_by_id(uint32_t id)
{
    uint32_t n = __atomic_load_n(&n_workers, __ATOMIC_ACQUIRE);
    if (id == 0 || id > n)
        return NULL;
    uint32_t i = id - 1;
    return &chunks[i >> CHUNK_BITS][i & (CHUNK_SIZE - 1)];
}

/* The read end blocks (only the worker's own thread reads it, and a wait
 * without a time limit is then one read()); the write end does not (the
 * leader never blocks on a worker). */
static int
worker_make_pipe(erpy_worker *w)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    if (fcntl(p[1], F_SETFL, O_NONBLOCK) < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    w->pipe_r = p[0];
    w->pipe_w = p[1];
    return 0;
}

/* Sleeps on w's wake-up pipe for up to ms milliseconds (ms < 0: until
 * woken) and consumes what was written.  Returns > 0 when woken, 0 on
 * timeout, -1 with errno (EINTR).  A wake-up may be stale (meant for an
 * earlier wait): callers check their state. */
static int
worker_sleep(erpy_worker *w, int ms)
{
    char junk[256];
    if (ms >= 0) {
        struct pollfd pf = {w->pipe_r, POLLIN, 0};
        int r = poll(&pf, 1, ms);
        if (r <= 0)
            return r;
        /* Readable, and nobody else reads it: this read does not block. */
    }
    ssize_t n = read(w->pipe_r, junk, sizeof junk);
    return n > 0 ? 1 : n == 0 ? 0 : -1;
}

/* pthread key destructor: the thread is exiting, its worker goes back to the
 * pool.  A worker still registered as waiting (its thread was ended in the
 * middle of a call at interpreter shutdown) is left out of the pool. */
static void
worker_release(void *p)
{
    erpy_worker *w = p;
    if (__atomic_load_n(&w->wait_seq, __ATOMIC_ACQUIRE) != 0)
        return;
    if (w->out.cap > 1 << 20)
        erpy_buf_free(&w->out);
    pthread_mutex_lock(&pool_lock);
    w->in_use = 0;
    w->free_next = free_list;
    free_list = w;
    pthread_mutex_unlock(&pool_lock);
}

erpy_worker *
erpy_worker_get(void)
{
    erpy_worker *w = pthread_getspecific(worker_key);
    if (w != NULL)
        return w;
    pthread_mutex_lock(&pool_lock);
    w = free_list;
    if (w != NULL) {
        free_list = w->free_next;
    } else {
        uint32_t n = n_workers;
        if (n >= MAX_CHUNKS * CHUNK_SIZE) {
            pthread_mutex_unlock(&pool_lock);
            errno = EMFILE;
            return NULL;
        }
        if (chunks[n >> CHUNK_BITS] == NULL) {
            erpy_worker *c = calloc(CHUNK_SIZE, sizeof(erpy_worker));
            if (c == NULL) {
                pthread_mutex_unlock(&pool_lock);
                errno = ENOMEM;
                return NULL;
            }
            for (uint32_t i = 0; i < CHUNK_SIZE; i++) {
                c[i].id = (n & ~(CHUNK_SIZE - 1)) + i + 1;
                c[i].pipe_r = c[i].pipe_w = -1;
            }
            chunks[n >> CHUNK_BITS] = c;
        }
        w = &chunks[n >> CHUNK_BITS][n & (CHUNK_SIZE - 1)];
        __atomic_store_n(&n_workers, n + 1, __ATOMIC_RELEASE);
    }
    w->in_use = 1;
    w->free_next = NULL;
    pthread_mutex_unlock(&pool_lock);
    if (w->pipe_r < 0 && worker_make_pipe(w) < 0) {
        int e = errno;
        worker_release(w);
        errno = e;
        return NULL;
    }
    if (pthread_setspecific(worker_key, w) != 0) {
        worker_release(w);
        errno = ENOMEM;
        return NULL;
    }
    return w;
}

/* ----------------------------------------------------------- output queue */

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t out_cond = PTHREAD_COND_INITIALIZER;
static erpy_frame *out_head, *out_tail;
static size_t out_bytes;
static uint64_t out_dropped;
static unsigned out_wakes;

static void
output_push(erpy_frame *f)
{
    pthread_mutex_lock(&out_lock);
    if (out_bytes + f->blen > OUTPUT_QUEUE_MAX) {
        out_dropped += f->blen;   /* nobody is printing: keep memory bounded */
        free(f);
    } else {
        f->next = NULL;
        if (out_tail)
            out_tail->next = f;
        else
            out_head = f;
        out_tail = f;
        out_bytes += f->blen;
        pthread_cond_signal(&out_cond);
    }
    pthread_mutex_unlock(&out_lock);
}

erpy_frame *
erpy_output_next(int timeout_ms)
{
    struct timespec ts = abs_time_ms(timeout_ms);
    pthread_mutex_lock(&out_lock);
    unsigned wakes = out_wakes;
    while (out_head == NULL && wakes == out_wakes) {
        if (pthread_cond_timedwait(&out_cond, &out_lock, &ts) == ETIMEDOUT)
            break;
    }
    erpy_frame *f = out_head;
    if (f) {
        out_head = f->next;
        if (out_head == NULL)
            out_tail = NULL;
        out_bytes -= f->blen;
        f->next = NULL;
    }
    pthread_mutex_unlock(&out_lock);
    return f;
}

void
erpy_output_wake(void)
{
    pthread_mutex_lock(&out_lock);
    out_wakes++;
    pthread_cond_broadcast(&out_cond);
    pthread_mutex_unlock(&out_lock);
}

/* ---------------------------------------------------------------- bridges */

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static erpy_bridge *current;

erpy_bridge *
erpy_bridge_current(void)
{
    /* On every call's path: an atomic load, no lock.  Writers hold
     * current_lock and store with release ordering. */
    return __atomic_load_n(&current, __ATOMIC_ACQUIRE);
}

/* Picks one waiting worker other than `except` that still needs a reply, to
 * take the leader's role, and returns its wake-up fd (or -1): the caller
 * writes to it after releasing the lock, so that the woken thread does not
 * find the lock still held.  A worker whose reply is already in its inbox is
 * about to leave and would not lead: waking it instead would leave the
 * others with no reader.  Lock held; b->leader is NULL. */
static int
promote(erpy_bridge *b, erpy_worker *except)
{
    for (erpy_worker *x = b->waiting; x; x = x->wnext) {
        if (x != except && !x->has_reply)
            return x->pipe_w;
    }
    return -1;
}

/* Removes w from the waiting list and steps it down if it leads.  Lock held. */
static void
deregister(erpy_bridge *b, erpy_worker *w)
{
    if (w->wait_seq == 0)
        return;
    if (w->wprev)
        w->wprev->wnext = w->wnext;
    else
        b->waiting = w->wnext;
    if (w->wnext)
        w->wnext->wprev = w->wprev;
    w->wnext = w->wprev = NULL;
    __atomic_store_n(&w->wait_seq, 0, __ATOMIC_RELEASE);
    w->wait_bridge = NULL;
    w->has_reply = 0;
    b->n_waiting--;
    b->last_activity_ns = erpy_now_ns();
    /* Stepping down only; whoever leaves the wait promotes a successor
     * (wait_locked's exit, erpy_wait_abandon), so it happens once. */
    if (b->leader == w)
        b->leader = NULL;
}

/* Marks the bridge dead and wakes everyone who waits on it.  Lock held. */
static void
mark_dead(erpy_bridge *b, int status, const char *why)
{
    if (b->dead)
        return;
    b->dead = 1;
    b->exit_status = status;
    if (why == NULL && b->stopping)
        why = "the Erlang helper was stopped (erlang.stop() or interpreter exit)";
    if (why)
        snprintf(b->why, sizeof b->why, "%s", why);
    for (erpy_worker *x = b->waiting; x; x = x->wnext)
        wake_fd(x->pipe_w);
    wake_fd(b->bg_pipe[1]);
    pthread_cond_broadcast(&b->cond);
}

/* Puts one complete frame where it belongs.  Lock held.  `self` is the
 * thread's own worker when a worker leads (no wake-up needed for it).
 * Returns the wake-up fd of the worker to wake once the lock is released,
 * or -1. */
static int
dispatch(erpy_bridge *b, erpy_frame *f, erpy_worker *self)
{
    f->next = NULL;
    if (f->worker == 0) {
        if (f->kind == ERPY_K_HELLO && b->hello == NULL) {
            b->hello = f;
            pthread_cond_broadcast(&b->cond);
        } else if (f->kind == ERPY_K_OUTPUT || f->kind == ERPY_K_LOG) {
            output_push(f);   /* the output pump prints it or hands it to logging */
        } else {
            free(f);
        }
        return -1;
    }
    erpy_worker *w = worker_by_id(f->worker);
    if (w == NULL || w->wait_bridge != b || w->wait_seq != f->seq || w->has_reply) {
        /* Stale (timed out, cancelled, or duplicate) or unknown worker.
         * Output is still shown; anything else is dropped. */
        if (f->kind == ERPY_K_OUTPUT)
            output_push(f);
        else
            free(f);
        return -1;
    }
    if (w->inbox_tail)
        w->inbox_tail->next = f;
    else
        w->inbox = f;
    w->inbox_tail = f;
    if (f->kind != ERPY_K_OUTPUT)
        w->has_reply = 1;   /* OK, ERROR, or a kind we do not know: it ends the call */
    return w != self ? w->pipe_w : -1;
}

/* Turns a complete frame body of length blen at src into a frame.  Returns
 * NULL when out of memory. */
static erpy_frame *
frame_new(size_t blen)
{
    erpy_frame *f = malloc(sizeof(erpy_frame) + blen);
    if (f == NULL)
        return NULL;
    f->next = NULL;
    f->blen = blen;
    return f;
}

static void
frame_parse_header(erpy_frame *f)
{
    if (f->blen >= ERPY_HEADER_SIZE) {
        f->kind = (uint8_t)f->body[0];
        f->worker = erpy_get_be32(f->body + 1);
        f->seq = erpy_get_be32(f->body + 5);
        f->payload = f->body + ERPY_HEADER_SIZE;
        f->plen = f->blen - ERPY_HEADER_SIZE;
    } else {
        /* Too short to carry a header: unroutable, dropped by dispatch. */
        f->kind = 0;
        f->worker = 0;
        f->seq = 0;
        f->payload = f->body + f->blen;
        f->plen = 0;
    }
}

enum { READ_EOF = -1, READ_ERROR = -2, READ_PROTOCOL = -3, READ_AGAIN = -4 };

/* Whether a frame header (9 bytes: kind, worker, seq) can come from the
 * helper.  Checked before a frame's length is trusted: if the stream ever got
 * out of step (raw bytes written to the emulator's fd 1), what is read as a
 * length is garbage, and waiting for that many bytes would swallow every
 * later reply.  A header that is not one of ours means the channel is
 * broken: the helper is killed and callers get HelperExited. */
static int
header_ok(const char *h)
{
    uint8_t kind = (uint8_t)h[0];
    uint32_t worker = erpy_get_be32(h + 1);
    if (worker == 0)
        return kind == ERPY_K_HELLO || kind == ERPY_K_OUTPUT || kind == ERPY_K_LOG;
    if (worker > __atomic_load_n(&n_workers, __ATOMIC_ACQUIRE))
        return 0;
    return kind == ERPY_K_OK || kind == ERPY_K_ERROR || kind == ERPY_K_OUTPUT;
}

/* Splits the complete frames at the start of buf[0..len) into new frames
 * appended to the list (*list, *tail; count added to *nframes).  Returns the bytes
 * consumed, or -1 on a protocol error (bad length or header; out of memory).
 * *need is set to the whole size (4 + Len) of an incomplete frame left at the
 * end once its header has been checked, else 0.  Pure: no I/O, no locks. */
static ssize_t
split_frames(const char *buf, size_t len, erpy_frame **list, erpy_frame **tail,
             int *nframes, size_t *need)
{
    size_t pos = 0;
    *need = 0;
    while (len - pos >= 4) {
        size_t blen = erpy_get_be32(buf + pos);
        size_t have = len - pos - 4;
        if (blen < ERPY_HEADER_SIZE || blen > MAX_FRAME)
            return -1;
        if (have < ERPY_HEADER_SIZE)
            break;
        if (!header_ok(buf + pos + 4))
            return -1;
        if (have < blen) {
            *need = 4 + blen;
            break;
        }
        erpy_frame *f = frame_new(blen);
        if (f == NULL)
            return -1;
        memcpy(f->body, buf + pos + 4, blen);
        frame_parse_header(f);
        *tail ? ((*tail)->next = f) : (*list = f);
        *tail = f;
        (*nframes)++;
        pos += 4 + blen;
    }
    return (ssize_t)pos;
}

ssize_t
erpy_parse_frames(const char *buf, size_t len, erpy_frame **list)
{
    erpy_frame *tail = NULL;
    int n = 0;
    size_t need;
    *list = NULL;
    ssize_t r = split_frames(buf, len, list, &tail, &n, &need);
    if (r < 0) {
        erpy_frames_free(*list);
        *list = NULL;
    }
    return r;
}

/* Reads what is available on from_fd (non-blocking) and splits it into
 * frames, appended to *list.  *more is set when the read filled the space it
 * was given (so more may be waiting).  Called by the leader only, without the
 * lock.  Returns the number of complete frames (maybe 0), or a negative
 * READ_* code. */
static int
read_frames(erpy_bridge *b, erpy_frame **list, erpy_frame **tail, int *more)
{
    size_t want;
    ssize_t n;
    *more = 0;
    if (b->big != NULL) {
        erpy_frame *f = b->big;
        want = f->blen - b->big_have;
        do {
            n = read(b->from_fd, f->body + b->big_have, want);
        } while (n < 0 && errno == EINTR);
        if (n == 0)
            return READ_EOF;
        if (n < 0)
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? READ_AGAIN : READ_ERROR;
        b->big_have += (size_t)n;
        *more = (size_t)n == want;
        if (b->big_have < f->blen)
            return 0;
        frame_parse_header(f);
        b->big = NULL;
        *tail ? ((*tail)->next = f) : (*list = f);
        *tail = f;
        return 1;
    }
    if (b->rstart > 0 && b->rcap - b->rend < 65536) {
        memmove(b->rbuf, b->rbuf + b->rstart, b->rend - b->rstart);
        b->rend -= b->rstart;
        b->rstart = 0;
    }
    want = b->rcap - b->rend;
    if (want == 0)
        return READ_PROTOCOL;   /* cannot happen: a frame that does not fit goes to b->big */
    do {
        n = read(b->from_fd, b->rbuf + b->rend, want);
    } while (n < 0 && errno == EINTR);
    if (n == 0)
        return READ_EOF;
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? READ_AGAIN : READ_ERROR;
    b->rend += (size_t)n;
    *more = (size_t)n == want;
    int nframes = 0;
    size_t need;
    ssize_t used = split_frames(b->rbuf + b->rstart, b->rend - b->rstart, list, tail,
                                &nframes, &need);
    if (used < 0)
        return READ_PROTOCOL;
    b->rstart += (size_t)used;
    if (need > b->rcap) {
        /* Larger than the chunk buffer (its header is checked): read the
         * rest straight into the frame. */
        size_t have = b->rend - b->rstart - 4;
        erpy_frame *f = frame_new(need - 4);
        if (f == NULL)
            return READ_PROTOCOL;
        memcpy(f->body, b->rbuf + b->rstart + 4, have);
        b->big = f;
        b->big_have = have;
        b->rstart = b->rend = 0;
    }
    if (b->rstart == b->rend)
        b->rstart = b->rend = 0;
    return nframes;
}

/* Reaps the helper after its stdout closed: waits up to wait_ms for it to
 * exit (it normally has already), then kills it.  Returns the wait status,
 * or -1.  Called by the one thread that saw EOF, without the lock. */
static int
reap(erpy_bridge *b, int wait_ms)
{
    pid_t pid = b->pid;
    if (pid <= 0)
        return -1;
    int status = -1;
    uint64_t end = erpy_now_ns() + (uint64_t)wait_ms * 1000000ULL;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0) {        /* ECHILD: reaped elsewhere (e.g. os.wait()) */
            status = -1;
            break;
        }
        if (erpy_now_ns() >= end) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            break;
        }
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    b->pid = 0;
    /* Give the stderr thread a moment to read the helper's last words. */
    for (int i = 0; i < 200; i++) {
        pthread_mutex_lock(&b->tail_lock);
        int eof = b->err_eof;
        pthread_mutex_unlock(&b->tail_lock);
        if (eof)
            break;
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    return status;
}

/* One round of leading: waits up to timeout_ms for from_fd (and extra_fd,
 * if >= 0) to be readable, reads and dispatches.  Called by the leader
 * without the lock.  Returns LEAD_FRAMES, LEAD_IDLE (timeout, or only
 * extra_fd was readable), LEAD_EINTR, or LEAD_DEAD when the bridge died. */
enum { LEAD_FRAMES = 1, LEAD_IDLE = 0, LEAD_EINTR = -1, LEAD_DEAD = -2 };

static int
lead_once(erpy_bridge *b, erpy_worker *self, int timeout_ms, int extra_fd)
{
    struct pollfd pf[2] = {{b->from_fd, POLLIN, 0}, {extra_fd, POLLIN, 0}};
    int r = poll(pf, extra_fd >= 0 ? 2 : 1, timeout_ms);
    if (r < 0)
        return errno == EINTR ? LEAD_EINTR : LEAD_IDLE;
    if (r == 0)
        return LEAD_IDLE;
    if (extra_fd >= 0 && (pf[1].revents & POLLIN))
        drain_fd(extra_fd);
    if (pf[0].revents == 0)
        return LEAD_IDLE;
    erpy_frame *list = NULL, *tail = NULL;
    int got = 0, rc, more;
    /* Read while the pipe may hold more, but dispatch at least every 64
     * frames so that others get their replies early.  A short read means the
     * pipe is empty: no extra read() just to see EAGAIN. */
    for (;;) {
        rc = read_frames(b, &list, &tail, &more);
        if (rc < 0)
            break;
        got += rc;
        if (!more || got >= 64)
            break;
    }
    /* Wake-ups are written after the lock is released: a thread woken
     * while the leader still holds it would only block on the lock again
     * (measured: a fifth of the calling process's time at 8 threads went
     * to that contention). */
    while (list != NULL) {
        int wake[64], nw = 0;
        pthread_mutex_lock(&b->lock);
        while (list && nw < 64) {
            erpy_frame *n = list->next;
            int fd = dispatch(b, list, self);
            if (fd >= 0)
                wake[nw++] = fd;
            list = n;
        }
        pthread_mutex_unlock(&b->lock);
        for (int i = 0; i < nw; i++)
            wake_fd(wake[i]);
    }
    if (rc >= 0 || rc == READ_AGAIN)
        return got > 0 ? LEAD_FRAMES : LEAD_IDLE;
    const char *why = rc == READ_EOF ? NULL
                      : rc == READ_ERROR ? "error reading from the helper"
                                         : "protocol error: bad frame from the helper (killed it)";
    if (rc == READ_PROTOCOL && b->pid > 0)
        kill(b->pid, SIGKILL);
    /* A helper that closed its stdout is exiting; 900 ms leaves time for a
     * loaded machine while keeping "HelperExited within a second". */
    int status = reap(b, 900);
    pthread_mutex_lock(&b->lock);
    mark_dead(b, status, why);
    pthread_mutex_unlock(&b->lock);
    return LEAD_DEAD;
}

/* ----------------------------------------------------------- bg + stderr */

static uint64_t stall_rescues;

uint64_t
erpy_stall_rescues(void)
{
    return __atomic_load_n(&stall_rescues, __ATOMIC_RELAXED);
}

static void *
bg_main(void *arg)
{
    erpy_bridge *b = arg;
    block_all_signals();
    pthread_mutex_lock(&b->lock);
    while (!b->dead) {
        uint64_t now = erpy_now_ns();
        uint64_t idle = now - b->last_activity_ns;
        if (b->leader == NULL && b->n_waiting == 0 && (idle >= BG_IDLE_NS || b->hello == NULL)) {
            b->leader = ERPY_BG;
            pthread_mutex_unlock(&b->lock);
            int r = lead_once(b, NULL, 200, b->bg_pipe[0]);
            pthread_mutex_lock(&b->lock);
            if (r == LEAD_DEAD)
                break;
            if (b->leader == ERPY_BG) {
                b->leader = NULL;
                if (b->n_waiting > 0)
                    wake_fd(promote(b, NULL));   /* rare: under the lock */
            }
            continue;
        }
        if (b->leader == NULL && b->n_waiting > 0 && idle >= STALL_NS) {
            /* A safety net: whoever leaves the leader's role promotes a
             * successor, so waiters should never be left without one.
             * Counted, so that tests can tell that it never had to act. */
            int fd = promote(b, NULL);
            if (fd >= 0) {
                __atomic_fetch_add(&stall_rescues, 1, __ATOMIC_RELAXED);
                wake_fd(fd);
            }
        }
        int ms = 200;
        if (b->n_waiting == 0 && idle < BG_IDLE_NS)
            ms = (int)((BG_IDLE_NS - idle) / 1000000ULL) + 1;
        pthread_mutex_unlock(&b->lock);
        struct pollfd pf = {b->bg_pipe[0], POLLIN, 0};
        if (poll(&pf, 1, ms) > 0)
            drain_fd(b->bg_pipe[0]);
        pthread_mutex_lock(&b->lock);
    }
    b->threads_running--;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

static void *
err_main(void *arg)
{
    erpy_bridge *b = arg;
    block_all_signals();
    char buf[4096];
    for (;;) {
        ssize_t n = read(b->err_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        pthread_mutex_lock(&b->tail_lock);
        size_t keep = sizeof b->tail - 1;
        if ((size_t)n >= keep) {
            memcpy(b->tail, buf + n - keep, keep);
            b->tail_len = keep;
        } else {
            if (b->tail_len + (size_t)n > keep) {
                size_t drop = b->tail_len + (size_t)n - keep;
                memmove(b->tail, b->tail + drop, b->tail_len - drop);
                b->tail_len -= drop;
            }
            memcpy(b->tail + b->tail_len, buf, (size_t)n);
            b->tail_len += (size_t)n;
        }
        pthread_mutex_unlock(&b->tail_lock);
        erpy_frame *f = frame_new((size_t)n);
        if (f) {
            memcpy(f->body, buf, (size_t)n);
            f->kind = ERPY_K_RAW_STDERR;
            f->worker = f->seq = 0;
            f->payload = f->body;
            f->plen = (size_t)n;
            output_push(f);
        }
    }
    pthread_mutex_lock(&b->tail_lock);
    b->err_eof = 1;
    pthread_mutex_unlock(&b->tail_lock);
    pthread_mutex_lock(&b->lock);
    b->threads_running--;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

size_t
erpy_bridge_stderr_tail(erpy_bridge *b, char *dst, size_t cap)
{
    pthread_mutex_lock(&b->tail_lock);
    size_t n = b->tail_len < cap - 1 ? b->tail_len : cap - 1;
    memcpy(dst, b->tail + b->tail_len - n, n);
    dst[n] = 0;
    pthread_mutex_unlock(&b->tail_lock);
    return n;
}

static int
start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 256 * 1024);
    int rc = pthread_create(t, &a, fn, arg);
    pthread_attr_destroy(&a);
    return rc;
}

erpy_bridge *
erpy_bridge_start(char *const argv[], char *const envp[], int *err)
{
    erpy_bridge *b = calloc(1, sizeof *b);
    if (b == NULL) {
        *err = ENOMEM;
        return NULL;
    }
    b->rbuf = malloc(RBUF_SIZE);
    b->rcap = RBUF_SIZE;
    b->refs = 1;   /* the current-bridge slot's */
    b->exit_status = -1;
    b->bg_pipe[0] = b->bg_pipe[1] = -1;
    if (b->rbuf == NULL) {
        *err = ENOMEM;
        goto fail;
    }
    if (pipe2(b->bg_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        *err = errno;
        goto fail;
    }
    pthread_mutex_init(&b->wlock, NULL);
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->tail_lock, NULL);
    pthread_cond_init(&b->cond, NULL);
    *err = erpy_spawn(argv, envp, &b->pid, &b->to_fd, &b->from_fd, &b->err_fd);
    if (*err != 0)
        goto fail;
    b->threads_running = 2;
    if ((*err = start_thread(&b->err_thread, err_main, b)) != 0) {
        b->threads_running = 0;
        erpy_bridge_kill(b);
        close(b->to_fd);
        close(b->from_fd);
        close(b->err_fd);
        goto fail;
    }
    if ((*err = start_thread(&b->bg_thread, bg_main, b)) != 0) {
        /* The stderr thread ends on its own when the helper dies. */
        b->threads_running = 1;
        erpy_bridge_kill(b);
        close(b->to_fd);
        b->to_fd = -1;
        return NULL;   /* leaked on purpose: the stderr thread still uses it */
    }
    pthread_mutex_lock(&current_lock);
    __atomic_store_n(&current, b, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&current_lock);
    return b;
fail:
    if (b->bg_pipe[0] >= 0) {
        close(b->bg_pipe[0]);
        close(b->bg_pipe[1]);
    }
    free(b->rbuf);
    free(b);
    return NULL;
}

int
erpy_bridge_wait_hello(erpy_bridge *b, int slice_ms)
{
    struct timespec ts = abs_time_ms(slice_ms);
    pthread_mutex_lock(&b->lock);
    while (b->hello == NULL && !b->dead) {
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
            break;
    }
    int r = b->hello ? 1 : b->dead ? 0 : -1;
    pthread_mutex_unlock(&b->lock);
    return r;
}

void
erpy_bridge_kill(erpy_bridge *b)
{
    if (b->pid > 0)
        kill(b->pid, SIGKILL);
}

/* Takes wlock, waiting until until_ns (CLOCK_MONOTONIC; UINT64_MAX: no
 * limit).  Returns 0, or ETIMEDOUT without it. */
static int
wlock_until(erpy_bridge *b, uint64_t until_ns)
{
    if (until_ns == UINT64_MAX)
        return pthread_mutex_lock(&b->wlock);
    struct timespec ts = {(time_t)(until_ns / 1000000000ULL), (long)(until_ns % 1000000000ULL)};
    return pthread_mutex_clocklock(&b->wlock, CLOCK_MONOTONIC, &ts);
}

int
erpy_bridge_stop(erpy_bridge *b, int timeout_ms)
{
    pthread_mutex_lock(&b->lock);
    b->stopping = 1;
    pthread_mutex_unlock(&b->lock);
    /* A write in progress to a helper that does not read (stopped, or
     * swamped) could hold wlock for ever: after timeout_ms, kill the helper,
     * which ends that write with EPIPE. */
    uint64_t until = erpy_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ULL;
    if (wlock_until(b, until) != 0) {
        erpy_bridge_kill(b);
        pthread_mutex_lock(&b->wlock);
    }
    if (b->to_fd >= 0) {
        close(b->to_fd);     /* stdin EOF: the helper halts at once */
        b->to_fd = -1;
    }
    pthread_mutex_unlock(&b->wlock);
    pthread_mutex_lock(&b->lock);
    wake_fd(b->bg_pipe[1]);
    struct timespec ts = abs_time_ms(timeout_ms);
    while (!b->dead) {
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
            break;
    }
    if (!b->dead) {
        /* Did not halt in time (or nobody reads its stdout): kill it; the
         * reader then sees EOF and reaps it. */
        erpy_bridge_kill(b);
        ts = abs_time_ms(2000);
        while (!b->dead) {
            if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
                break;
        }
    }
    /* Let the threads finish so that nothing of ours still runs after stop. */
    ts = abs_time_ms(1000);
    while (b->threads_running > 0) {
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
            break;
    }
    if (b->dead && b->threads_running == 0 && !b->closed) {
        /* Nobody reads these any more (a dead bridge has no leader). */
        b->closed = 1;
        close(b->from_fd);
        close(b->err_fd);
        close(b->bg_pipe[0]);
        close(b->bg_pipe[1]);
        b->bg_pipe[0] = b->bg_pipe[1] = -1;
        free(b->rbuf);
        b->rbuf = NULL;
        erpy_frames_free(b->big);
        b->big = NULL;
    }
    pthread_mutex_unlock(&b->lock);
    int was_current = 0;
    pthread_mutex_lock(&current_lock);
    if (current == b) {
        __atomic_store_n(&current, NULL, __ATOMIC_RELEASE);
        was_current = 1;
    }
    pthread_mutex_unlock(&current_lock);
    return was_current;
}

void
erpy_bridge_free(erpy_bridge *b)
{
    erpy_frames_free(b->hello);
    erpy_frames_free(b->big);
    free(b->rbuf);
    pthread_mutex_destroy(&b->wlock);
    pthread_mutex_destroy(&b->lock);
    pthread_mutex_destroy(&b->tail_lock);
    pthread_cond_destroy(&b->cond);
    free(b);
}

/* Writes all of buf to the non-blocking to_fd, waiting in poll() while the
 * pipe is full.  wlock held.  Returns 0 or an errno value. */
static int
write_all(erpy_bridge *b, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(b->to_fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return errno;
            struct pollfd p = {b->to_fd, POLLOUT, 0};
            if (poll(&p, 1, -1) < 0 && errno != EINTR)
                return errno;
            continue;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes the pending CANCEL frames if the pipe has room for them now (at
 * most 64 x 15 bytes: under PIPE_BUF, so all or nothing).  wlock held.
 * Returns how many were written. */
static int
flush_cancels(erpy_bridge *b)
{
    char f[64 * (4 + ERPY_HEADER_SIZE + 2)];
    const size_t one = 4 + ERPY_HEADER_SIZE + 2;
    pthread_mutex_lock(&b->lock);
    int n = b->n_cancels;
    for (int i = 0; i < n; i++) {
        char *x = f + (size_t)i * one;
        erpy_put_be32(x, ERPY_HEADER_SIZE + 2);
        x[4] = ERPY_K_CANCEL;
        erpy_put_be32(x + 5, b->cancels[i][0]);
        erpy_put_be32(x + 9, b->cancels[i][1]);
        x[13] = (char)131;
        x[14] = 106;   /* NIL_EXT: [] */
    }
    pthread_mutex_unlock(&b->lock);
    if (n == 0 || b->to_fd < 0)
        return 0;
    ssize_t w;
    do
        w = write(b->to_fd, f, (size_t)n * one);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)((size_t)n * one))
        return 0;   /* EAGAIN: no room yet; the next writer tries again */
    pthread_mutex_lock(&b->lock);
    int left = b->n_cancels - n;   /* others may have queued more meanwhile */
    memmove(b->cancels, b->cancels + n, (size_t)left * sizeof b->cancels[0]);
    __atomic_store_n(&b->n_cancels, left, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&b->lock);
    return n;
}

/* After letting go of wlock: pending cancels queued while it was held are
 * written by whoever can take it now. */
static void
flush_cancels_unlocked(erpy_bridge *b)
{
    while (__atomic_load_n(&b->n_cancels, __ATOMIC_SEQ_CST) > 0 &&
           pthread_mutex_trylock(&b->wlock) == 0) {
        int done = flush_cancels(b);
        pthread_mutex_unlock(&b->wlock);
        if (done == 0)
            break;
    }
}

int
erpy_bridge_write(erpy_bridge *b, const char *buf, size_t len, uint64_t until_ns)
{
    if (wlock_until(b, until_ns) != 0)
        return ETIMEDOUT;
    int rc = b->to_fd < 0 ? EPIPE : write_all(b, buf, len);
    if (rc == 0 && __atomic_load_n(&b->n_cancels, __ATOMIC_SEQ_CST) > 0)
        (void)flush_cancels(b);
    pthread_mutex_unlock(&b->wlock);
    flush_cancels_unlocked(b);
    return rc;
}

void
erpy_bridge_cancel(erpy_bridge *b, uint32_t worker, uint32_t seq)
{
    pthread_mutex_lock(&b->lock);
    /* A full queue drops the cancel: the helper then lets that call run to
     * its end, and its late reply is dropped as stale like any other. */
    int n = b->n_cancels;   /* only changed under lock */
    if (n < (int)(sizeof b->cancels / sizeof b->cancels[0])) {
        b->cancels[n][0] = worker;
        b->cancels[n][1] = seq;
        __atomic_store_n(&b->n_cancels, n + 1, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&b->lock);
    flush_cancels_unlocked(b);
}

/* ---------------------------------------------------------------- waiting */

/* Adds w to b's waiting list for seq.  Lock held; b not dead. */
static void
register_locked(erpy_bridge *b, erpy_worker *w, uint32_t seq)
{
    w->wait_bridge = b;
    __atomic_store_n(&w->wait_seq, seq, __ATOMIC_RELEASE);
    w->has_reply = 0;
    w->wprev = NULL;
    w->wnext = b->waiting;
    if (b->waiting)
        b->waiting->wprev = w;
    b->waiting = w;
    b->n_waiting++;
    b->last_activity_ns = erpy_now_ns();
}

/* The end of a slice of slice_ms from now; no end when slice_ms < 0. */
static uint64_t
slice_end_of(int slice_ms)
{
    return slice_ms < 0 ? UINT64_MAX : erpy_now_ns() + (uint64_t)slice_ms * 1000000ULL;
}

/* Milliseconds from now until `until` (rounded up), for poll(); -1 (no
 * limit) when until is UINT64_MAX. */
static int
ms_until(uint64_t until, uint64_t now)
{
    if (until == UINT64_MAX)
        return -1;
    uint64_t ms = (until - now + 999999ULL) / 1000000ULL;
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

/* The waiting loop; lock held on entry and exit.  *frames gets w's inbox
 * when the result is ERPY_W_REPLY or ERPY_W_OUTPUT.  *wake is set to the
 * wake-up fd of a successor to the leader's role (or -1), for the caller to
 * write to once it released the lock. */
static int
wait_locked(erpy_bridge *b, erpy_worker *w, uint64_t deadline_ns, uint64_t slice_end,
            erpy_frame **frames, int *wake)
{
    int result;
    *frames = NULL;
    *wake = -1;
    for (;;) {
        if (w->has_reply) {
            deregister(b, w);
            result = ERPY_W_REPLY;
            break;
        }
        if (w->inbox) {
            result = ERPY_W_OUTPUT;
            break;
        }
        if (b->dead) {
            deregister(b, w);
            result = ERPY_W_DEAD;
            break;
        }
        uint64_t now = erpy_now_ns();
        if (deadline_ns && now >= deadline_ns) {
            deregister(b, w);
            result = ERPY_W_TIMEOUT;
            break;
        }
        if (now >= slice_end) {
            result = ERPY_W_SLICE;
            break;
        }
        uint64_t until = slice_end;
        if (deadline_ns && deadline_ns < until)
            until = deadline_ns;
        int ms = ms_until(until, now);
        if (b->leader == NULL)
            b->leader = w;
        else if (b->leader == ERPY_BG)
            wake_fd(b->bg_pipe[1]);   /* ask the background reader to step down */
        if (b->leader == w) {
            pthread_mutex_unlock(&b->lock);
            int r = lead_once(b, w, ms, -1);
            pthread_mutex_lock(&b->lock);
            if (r == LEAD_EINTR && !w->has_reply && !w->inbox && !b->dead) {
                result = ERPY_W_SLICE;   /* let the caller check for signals now */
                break;
            }
        } else {
            pthread_mutex_unlock(&b->lock);
            int r = worker_sleep(w, ms);
            int e = errno;
            pthread_mutex_lock(&b->lock);
            if (r < 0 && e == EINTR && !w->has_reply && !w->inbox) {
                result = ERPY_W_SLICE;
                break;
            }
        }
    }
    if (b->leader == w || b->leader == NULL) {
        /* Going back to Python (to print, decode or check signals): let
         * someone else read meanwhile.  Also when nobody leads: this worker
         * may have been the one woken to take over. */
        b->leader = NULL;
        *wake = promote(b, w);
    }
    if (result == ERPY_W_REPLY || result == ERPY_W_OUTPUT) {
        *frames = w->inbox;
        w->inbox = w->inbox_tail = NULL;
    }
    return result;
}

/* wait_locked with the lock taken here, and the successor it picked woken
 * once the lock is released. */
static int
wait_unlocked(erpy_bridge *b, erpy_worker *w, uint64_t deadline_ns, uint64_t slice_end,
              erpy_frame **frames)
{
    int wake;
    pthread_mutex_lock(&b->lock);
    int r = wait_locked(b, w, deadline_ns, slice_end, frames, &wake);
    pthread_mutex_unlock(&b->lock);
    wake_fd(wake);
    return r;
}

int
erpy_call(erpy_bridge *b, erpy_worker *w, uint32_t seq, const char *buf, size_t len,
          uint64_t deadline_ns, int slice_ms, erpy_frame **frames)
{
    uint64_t slice_end = slice_end_of(slice_ms);
    *frames = NULL;
    pthread_mutex_lock(&b->lock);
    if (b->dead) {
        pthread_mutex_unlock(&b->lock);
        return ERPY_W_NOT_SENT;
    }
    /* Registered before the request is written, so the reply cannot come
     * before anyone expects it. */
    register_locked(b, w, seq);
    if (b->leader == NULL)
        b->leader = w;
    else if (b->leader == ERPY_BG)
        wake_fd(b->bg_pipe[1]);   /* ask the background reader to step down */
    int leading = b->leader == w;
    pthread_mutex_unlock(&b->lock);
    /* Another call's long write may hold the channel: wait for it no longer
     * than the deadline or slice, then report that nothing was sent.  A
     * failed write means the helper is gone: the reader sees EOF and the
     * wait reports it. */
    uint64_t wuntil = deadline_ns && deadline_ns < slice_end ? deadline_ns : slice_end;
    if (erpy_bridge_write(b, buf, len, wuntil) == ETIMEDOUT) {
        erpy_wait_abandon(b, w);
        return ERPY_W_UNSENT;
    }
    if (leading) {
        /* The common case of a lone caller: read the reply straight away,
         * without taking the lock just to find out that it is not there. */
        uint64_t now = erpy_now_ns();
        uint64_t until = deadline_ns && deadline_ns < slice_end ? deadline_ns : slice_end;
        if (now < until)
            (void)lead_once(b, w, ms_until(until, now), -1);
    }
    return wait_unlocked(b, w, deadline_ns, slice_end, frames);
}

int
erpy_wait(erpy_bridge *b, erpy_worker *w, uint64_t deadline_ns, int slice_ms,
          erpy_frame **frames)
{
    return wait_unlocked(b, w, deadline_ns, slice_end_of(slice_ms), frames);
}

void
erpy_wait_abandon(erpy_bridge *b, erpy_worker *w)
{
    int wake = -1;
    pthread_mutex_lock(&b->lock);
    deregister(b, w);
    if (b->leader == NULL)
        wake = promote(b, w);
    erpy_frame *f = w->inbox;
    w->inbox = w->inbox_tail = NULL;
    pthread_mutex_unlock(&b->lock);
    wake_fd(wake);
    erpy_frames_free(f);
    /* A wake-up byte may be left over (or still come from a leader that
     * dispatched before the deregistration): harmless, the next wait sees
     * a stale wake-up and checks again. */
}

/* ------------------------------------------------------------------- fork */

/* In a forked child: the parent's helper is not ours.  Forget it (without
 * touching the parent's process), close our copies of its descriptors so
 * the parent's helper still sees EOF when the parent goes, give every worker
 * a fresh wake-up pipe (the old ones are shared with the parent), and reset
 * the locks, which other threads of the parent may have held.  Only
 * async-signal-safe calls. */
static void
atfork_child(void)
{
    pthread_mutex_init(&pool_lock, NULL);
    pthread_mutex_init(&current_lock, NULL);
    pthread_mutex_init(&out_lock, NULL);
    pthread_cond_init(&out_cond, NULL);
    out_head = out_tail = NULL;
    out_bytes = 0;
    erpy_bridge *b = current;
    current = NULL;
    if (b != NULL) {
        int fds[] = {b->to_fd, b->from_fd, b->err_fd, b->bg_pipe[0], b->bg_pipe[1]};
        for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
            if (fds[i] >= 0)
                close(fds[i]);
    }
    erpy_worker *mine = pthread_getspecific(worker_key);
    free_list = NULL;
    uint32_t n = n_workers;
    for (uint32_t i = 0; i < n; i++) {
        erpy_worker *w = &chunks[i >> CHUNK_BITS][i & (CHUNK_SIZE - 1)];
        if (w->pipe_r >= 0) {
            close(w->pipe_r);
            close(w->pipe_w);
            w->pipe_r = w->pipe_w = -1;
        }
        w->wait_bridge = NULL;
        w->wait_seq = 0;
        w->has_reply = 0;
        w->inbox = w->inbox_tail = NULL;   /* leaked: a few frames at most */
        w->wnext = w->wprev = NULL;
        if (w != mine) {
            /* Its thread does not exist in the child, though it may have
             * been in the middle of a call in the parent. */
            w->busy = 0;
            w->in_use = 0;
            w->free_next = free_list;
            free_list = w;
        }
    }
    if (mine != NULL)
        worker_make_pipe(mine);
}

int
erpy_transport_init(void)
{
    static int done;
    if (done)
        return 0;
    int rc = pthread_key_create(&worker_key, worker_release);
    if (rc != 0)
        return rc;
    rc = pthread_atfork(NULL, NULL, atfork_child);
    if (rc != 0)
        return rc;
    done = 1;
    return 0;
}
