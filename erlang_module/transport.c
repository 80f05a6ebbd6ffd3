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
 * Async calls are not a thread's: each is an entry of the bridge's pending
 * table, keyed by its Seq on the async channel, and its reply goes to the
 * entry's waker (see transport.h).  While any is pending, the background
 * thread reads whenever no waiting thread does.
 *
 * Writing.  wlock serialises writes to the helper's stdin.  Frames that
 * must not wait for it (CANCEL, async requests from an event loop) go to
 * the outbound queue, which whoever holds wlock writes first, in order;
 * when the pipe is full the background thread finishes the queue as the
 * pipe drains.
 *
 * Locks: bridge->lock guards the leader, the waiting list, inboxes, the
 * pending table, the outbound queue's list and the dead state;
 * bridge->wlock serialises writes; pool_lock guards the free list;
 * out_lock guards the output queue; a waker's lock its done queue.  The
 * only nestings: wlock then bridge->lock (writing the outbound queue), and
 * bridge->lock then out_lock or a waker's lock (dispatch).
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

/* ------------------------------------------------------------------ wakers */

erpy_waker *
erpy_waker_new(void)
{
    erpy_waker *k = calloc(1, sizeof *k);
    int p[2];
    if (k == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
        int e = errno;
        free(k);
        errno = e;
        return NULL;
    }
    k->fd_r = p[0];
    k->fd_w = p[1];
    pthread_mutex_init(&k->lock, NULL);
    return k;
}

void
erpy_waker_free(erpy_waker *k)
{
    close(k->fd_r);
    close(k->fd_w);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

/* Adds a finished call to its waker's queue.  Returns the fd to write a
 * wake-up byte to once the caller's locks are released (or -1: a byte is
 * already on its way and the owner has not taken the queue since). */
static int
waker_push(erpy_pending *p)
{
    erpy_waker *k = p->waker;
    int fd = -1;
    p->dnext = NULL;
    pthread_mutex_lock(&k->lock);
    if (k->done_tail)
        k->done_tail->dnext = p;
    else
        k->done = p;
    k->done_tail = p;
    if (!k->signalled) {
        k->signalled = 1;
        fd = k->fd_w;
    }
    pthread_mutex_unlock(&k->lock);
    return fd;
}

erpy_pending *
erpy_waker_take(erpy_waker *k)
{
    /* The pipe first, then the queue: a call finished in between is in the
     * queue taken now; one finished after it writes a new byte. */
    drain_fd(k->fd_r);
    pthread_mutex_lock(&k->lock);
    erpy_pending *p = k->done;
    k->done = k->done_tail = NULL;
    k->signalled = 0;
    pthread_mutex_unlock(&k->lock);
    return p;
}

int
erpy_waker_wait(erpy_waker *k, int timeout_ms)
{
    struct pollfd pf = {k->fd_r, POLLIN, 0};
    return poll(&pf, 1, timeout_ms);
}

void
erpy_pending_free(erpy_pending *p)
{
    erpy_frames_free(p->reply);
    free(p);
}

uint32_t
erpy_async_worker_id(void)
{
    return ERPY_ASYNC_WORKER;
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
    /* No thread to lead, but async calls wait for replies: the background
     * thread reads for them. */
    return b->n_pending > 0 ? b->bg_pipe[1] : -1;
}

/* ------------------------------------------------------ pending async calls */

/* Bucket of seq.  Lock held; b->pcap > 0. */
static inline erpy_pending **
ptab_slot(erpy_bridge *b, uint32_t seq)
{
    return &b->ptab[seq & (b->pcap - 1)];
}

/* Inserts p, growing the table when it is fuller than one entry a bucket.
 * Lock held.  Returns 0 or ENOMEM. */
static int
ptab_insert(erpy_bridge *b, erpy_pending *p)
{
    if (b->n_pending >= b->pcap) {
        size_t ncap = b->pcap ? b->pcap * 2 : 64;
        erpy_pending **nt = calloc(ncap, sizeof *nt);
        if (nt == NULL)
            return ENOMEM;
        for (size_t i = 0; i < b->pcap; i++) {
            for (erpy_pending *x = b->ptab[i], *n; x; x = n) {
                n = x->hnext;
                x->hnext = nt[x->seq & (ncap - 1)];
                nt[x->seq & (ncap - 1)] = x;
            }
        }
        free(b->ptab);
        b->ptab = nt;
        b->pcap = ncap;
    }
    erpy_pending **slot = ptab_slot(b, p->seq);
    p->hnext = *slot;
    *slot = p;
    b->n_pending++;
    return 0;
}

/* Removes and returns the pending call seq, or NULL.  Lock held. */
static erpy_pending *
ptab_remove(erpy_bridge *b, uint32_t seq)
{
    if (b->pcap == 0)
        return NULL;
    for (erpy_pending **pp = ptab_slot(b, seq); *pp; pp = &(*pp)->hnext) {
        erpy_pending *p = *pp;
        if (p->seq == seq) {
            *pp = p->hnext;
            p->hnext = NULL;
            b->n_pending--;
            return p;
        }
    }
    return NULL;
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
    /* Every async call of this helper fails now. */
    for (size_t i = 0; i < b->pcap; i++) {
        for (erpy_pending *p = b->ptab[i], *n; p; p = n) {
            n = p->hnext;
            p->hnext = NULL;
            p->dead = 1;
            wake_fd(waker_push(p));
        }
        b->ptab[i] = NULL;
    }
    b->n_pending = 0;
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
    if (f->worker == ERPY_ASYNC_WORKER) {
        /* Output of an async call is shown as it comes; a reply finishes
         * its call, unless it was withdrawn (timed out, cancelled). */
        if (f->kind == ERPY_K_OUTPUT) {
            output_push(f);
            return -1;
        }
        erpy_pending *p = ptab_remove(b, f->seq);
        if (p == NULL) {
            free(f);
            return -1;
        }
        p->reply = f;
        return waker_push(p);
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
    if (worker == ERPY_ASYNC_WORKER)
        return kind == ERPY_K_OK || kind == ERPY_K_ERROR || kind == ERPY_K_OUTPUT;
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

static void capture_err(erpy_bridge *b, const char *buf, size_t n);
static void oq_kick(erpy_bridge *b);
static void oq_drop_locked(erpy_bridge *b);
static int ms_until(uint64_t until, uint64_t now);

/* Reads the helper's stdout to its end (for at most 2 s, then kills the
 * helper) and records all of it, and what the reader had buffered, with its
 * stderr.  Only before HELLO, by the leader, without the lock. */
static void
drain_dying_words(erpy_bridge *b)
{
    static const char label[] = "\n(written to stdout:)\n";
    capture_err(b, label, sizeof label - 1);
    if (b->rend > b->rstart)
        capture_err(b, b->rbuf + b->rstart, b->rend - b->rstart);
    b->rstart = b->rend = 0;
    uint64_t end = erpy_now_ns() + 2000ULL * 1000000ULL;
    char buf[4096];
    for (;;) {
        uint64_t now = erpy_now_ns();
        if (now >= end) {
            if (b->pid > 0)
                kill(b->pid, SIGKILL);
            break;
        }
        struct pollfd pf = {b->from_fd, POLLIN, 0};
        int r = poll(&pf, 1, ms_until(end, now));
        if (r < 0 && errno != EINTR)
            break;
        if (r <= 0)
            continue;
        ssize_t n = read(b->from_fd, buf, sizeof buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            break;
        capture_err(b, buf, (size_t)n);
    }
}

/* One round of leading: waits up to timeout_ms for from_fd (and extra_fd,
 * if >= 0) to be readable, reads and dispatches.  Called by the leader
 * without the lock.  Returns LEAD_FRAMES, LEAD_IDLE (timeout, or only
 * extra_fd was readable), LEAD_EINTR, or LEAD_DEAD when the bridge died. */
enum { LEAD_FRAMES = 1, LEAD_IDLE = 0, LEAD_EINTR = -1, LEAD_DEAD = -2 };

static int
lead_once(erpy_bridge *b, erpy_worker *self, int timeout_ms, int extra_fd)
{
    /* The background thread (self NULL) also finishes the outbound queue
     * when the pipe has room again.  poll() skips negative fds. */
    int out_fd = self == NULL && __atomic_load_n(&b->oq_bytes, __ATOMIC_SEQ_CST) > 0
                 ? b->to_fd : -1;
    struct pollfd pf[3] = {{b->from_fd, POLLIN, 0}, {extra_fd, POLLIN, 0}, {out_fd, POLLOUT, 0}};
    int r = poll(pf, 3, timeout_ms);
    if (r < 0)
        return errno == EINTR ? LEAD_EINTR : LEAD_IDLE;
    if (r == 0)
        return LEAD_IDLE;
    if (extra_fd >= 0 && (pf[1].revents & POLLIN))
        drain_fd(extra_fd);
    if (pf[2].revents != 0)
        oq_kick(b);
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
    if (rc == READ_PROTOCOL) {
        pthread_mutex_lock(&b->lock);
        int booting = b->hello == NULL;
        pthread_mutex_unlock(&b->lock);
        if (booting) {
            /* Not a frame, and no HELLO yet: the helper is dying before it
             * could speak the protocol, and the emulator prints its last
             * words ("Kernel pid terminated", "init terminating in
             * do_boot") on fd 1.  They are the reason for the failure:
             * keep them with its stderr and let it exit with its own
             * status, instead of killing it as a broken channel. */
            drain_dying_words(b);
            why = NULL;
        } else if (b->pid > 0) {
            kill(b->pid, SIGKILL);
        }
    }
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
        if (b->leader == NULL && b->n_waiting == 0 &&
            (idle >= BG_IDLE_NS || b->hello == NULL || b->n_pending > 0)) {
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
        int out_fd = __atomic_load_n(&b->oq_bytes, __ATOMIC_SEQ_CST) > 0 ? b->to_fd : -1;
        pthread_mutex_unlock(&b->lock);
        struct pollfd pf[2] = {{b->bg_pipe[0], POLLIN, 0}, {out_fd, POLLOUT, 0}};
        if (poll(pf, 2, ms) > 0) {
            if (pf[0].revents)
                drain_fd(b->bg_pipe[0]);
            if (pf[1].revents)
                oq_kick(b);
        }
        pthread_mutex_lock(&b->lock);
    }
    b->threads_running--;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

/* Records n bytes the helper wrote (to stderr, or raw to stdout before its
 * HELLO) for error messages: the first ERPY_ERR_HEAD bytes stay, and so do
 * the last ERPY_ERR_TAIL of the rest. */
static void
capture_err(erpy_bridge *b, const char *buf, size_t n)
{
    pthread_mutex_lock(&b->tail_lock);
    b->err_total += n;
    size_t h = ERPY_ERR_HEAD - b->head_len;
    if (h > n)
        h = n;
    memcpy(b->head + b->head_len, buf, h);
    b->head_len += h;
    buf += h;
    n -= h;
    const size_t keep = sizeof b->tail;
    if (n >= keep) {
        memcpy(b->tail, buf + n - keep, keep);
        b->tail_len = keep;
    } else if (n > 0) {
        if (b->tail_len + n > keep) {
            size_t drop = b->tail_len + n - keep;
            memmove(b->tail, b->tail + drop, b->tail_len - drop);
            b->tail_len -= drop;
        }
        memcpy(b->tail + b->tail_len, buf, n);
        b->tail_len += n;
    }
    pthread_mutex_unlock(&b->tail_lock);
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
        capture_err(b, buf, (size_t)n);
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
erpy_bridge_stderr_text(erpy_bridge *b, char *dst, size_t cap)
{
    pthread_mutex_lock(&b->tail_lock);
    size_t n = 0;
    if (cap >= ERPY_ERR_TEXT_MAX) {
        memcpy(dst, b->head, b->head_len);
        n = b->head_len;
        uint64_t left_out = b->err_total - b->head_len - b->tail_len;
        if (left_out > 0)
            n += (size_t)snprintf(dst + n, cap - n, "\n[... %llu bytes left out ...]\n",
                                  (unsigned long long)left_out);
        memcpy(dst + n, b->tail, b->tail_len);
        n += b->tail_len;
    }
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
        oq_drop_locked(b);
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
    oq_drop_locked(b);
    free(b->ptab);   /* empty: a dead bridge's calls went to their wakers */
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

/* Appends a copy of frame[off..len) to the outbound queue (at its head: the
 * unwritten rest of a frame begun under wlock).  Lock held.  Returns 0 or
 * ENOMEM. */
static int
oq_append_locked(erpy_bridge *b, const char *frame, size_t len, size_t off, int at_head)
{
    erpy_obuf *o = malloc(sizeof *o + (len - off));
    if (o == NULL)
        return ENOMEM;
    memcpy(o->data, frame + off, len - off);
    o->len = len - off;
    o->off = 0;
    o->next = NULL;
    if (at_head) {
        o->next = b->oq;
        b->oq = o;
        if (b->oq_tail == NULL)
            b->oq_tail = o;
    } else {
        if (b->oq_tail)
            b->oq_tail->next = o;
        else
            b->oq = o;
        b->oq_tail = o;
    }
    __atomic_add_fetch(&b->oq_bytes, o->len, __ATOMIC_SEQ_CST);
    return 0;
}

/* Drops the outbound queue (the helper is gone).  Lock held. */
static void
oq_drop_locked(erpy_bridge *b)
{
    for (erpy_obuf *o = b->oq, *n; o; o = n) {
        n = o->next;
        free(o);
    }
    b->oq = b->oq_tail = NULL;
    __atomic_store_n(&b->oq_bytes, 0, __ATOMIC_SEQ_CST);
}

/* Writes what the pipe takes of buf[0..len) without blocking.  wlock held.
 * Returns the bytes written; *err is 0, EAGAIN (pipe full) or an errno. */
static size_t
write_some(erpy_bridge *b, const char *buf, size_t len, int *err)
{
    size_t done = 0;
    *err = 0;
    while (done < len) {
        ssize_t n = write(b->to_fd, buf + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *err = errno == EWOULDBLOCK ? EAGAIN : errno;
            break;
        }
        done += (size_t)n;
    }
    return done;
}

/* Writes queued frames, oldest first, while the pipe takes them.  Only the
 * holder of wlock removes from the queue, so its head stays valid without
 * the lock.  wlock held.  Returns 0 (queue empty), EAGAIN (pipe full) or
 * an errno value (the helper is gone: the queue is dropped). */
static int
oq_flush(erpy_bridge *b)
{
    for (;;) {
        pthread_mutex_lock(&b->lock);
        erpy_obuf *o = b->oq;
        pthread_mutex_unlock(&b->lock);
        if (o == NULL)
            return 0;
        int err = b->to_fd < 0 ? EPIPE : 0;
        if (err == 0)
            o->off += write_some(b, o->data + o->off, o->len - o->off, &err);
        if (err != 0 && err != EAGAIN) {
            pthread_mutex_lock(&b->lock);
            oq_drop_locked(b);
            pthread_mutex_unlock(&b->lock);
            return err;
        }
        if (o->off < o->len)
            return EAGAIN;
        pthread_mutex_lock(&b->lock);
        b->oq = o->next;
        if (b->oq == NULL)
            b->oq_tail = NULL;
        __atomic_sub_fetch(&b->oq_bytes, o->len, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&b->lock);
        free(o);
    }
}

/* Without wlock: writes the outbound queue if wlock is free now.  When the
 * pipe is full the background thread finishes it as the pipe drains; when
 * another thread holds wlock, that thread writes it on its way out.  (The
 * emptiness check after each unlock closes the window in which a frame is
 * queued while the holder is leaving.) */
static void
oq_kick(erpy_bridge *b)
{
    while (__atomic_load_n(&b->oq_bytes, __ATOMIC_SEQ_CST) > 0 &&
           pthread_mutex_trylock(&b->wlock) == 0) {
        int r = oq_flush(b);
        pthread_mutex_unlock(&b->wlock);
        if (r == EAGAIN) {
            wake_fd(b->bg_pipe[1]);
            break;
        }
        if (r != 0)
            break;
    }
}

int
erpy_bridge_write(erpy_bridge *b, const char *buf, size_t len, uint64_t until_ns)
{
    if (wlock_until(b, until_ns) != 0)
        return ETIMEDOUT;
    int rc = 0;
    if (b->to_fd < 0) {
        rc = EPIPE;
    } else {
        /* Queued frames first, in order (the head may be half written). */
        while (__atomic_load_n(&b->oq_bytes, __ATOMIC_SEQ_CST) > 0 &&
               (rc = oq_flush(b)) == EAGAIN) {
            struct pollfd p = {b->to_fd, POLLOUT, 0};
            if (poll(&p, 1, -1) < 0 && errno != EINTR) {
                rc = errno;
                break;
            }
            rc = 0;
        }
        if (rc == 0)
            rc = write_all(b, buf, len);
    }
    pthread_mutex_unlock(&b->wlock);
    oq_kick(b);
    return rc;
}

void
erpy_bridge_cancel(erpy_bridge *b, uint32_t worker, uint32_t seq)
{
    char f[4 + ERPY_HEADER_SIZE + 2];
    erpy_put_be32(f, ERPY_HEADER_SIZE + 2);
    f[4] = ERPY_K_CANCEL;
    erpy_put_be32(f + 5, worker);
    erpy_put_be32(f + 9, seq);
    f[13] = (char)131;
    f[14] = 106;   /* NIL_EXT: [] */
    pthread_mutex_lock(&b->lock);
    /* Out of memory drops the cancel: the helper then lets that call run
     * to its end, and its late reply is dropped like any other. */
    if (!b->dead)
        (void)oq_append_locked(b, f, sizeof f, 0, 0);
    pthread_mutex_unlock(&b->lock);
    oq_kick(b);
}

/* ------------------------------------------------------------ async calls */

int
erpy_async_submit(erpy_bridge *b, erpy_waker *k, void *ctx, char *buf, size_t len,
                  uint32_t *seq_out)
{
    erpy_pending *p = calloc(1, sizeof *p);
    if (p == NULL)
        return ENOMEM;
    pthread_mutex_lock(&b->lock);
    if (b->dead || b->stopping) {
        pthread_mutex_unlock(&b->lock);
        free(p);
        return EPIPE;
    }
    size_t queued = __atomic_load_n(&b->oq_bytes, __ATOMIC_SEQ_CST);
    if (queued > 0 && queued + len > ERPY_OUTQ_MAX) {
        pthread_mutex_unlock(&b->lock);
        free(p);
        return EAGAIN;
    }
    /* One Seq space for every bridge of the process: a Seq withdrawn late
     * can never name a call of the helper started after its own died. */
    static uint32_t last_seq;
    uint32_t seq = __atomic_add_fetch(&last_seq, 1, __ATOMIC_RELAXED);
    if (seq == 0)
        seq = __atomic_add_fetch(&last_seq, 1, __ATOMIC_RELAXED);
    p->seq = seq;
    p->bridge = b;
    p->waker = k;
    p->ctx = ctx;
    if (ptab_insert(b, p) != 0) {
        pthread_mutex_unlock(&b->lock);
        free(p);
        return ENOMEM;
    }
    erpy_put_be32(buf + 5, ERPY_ASYNC_WORKER);
    erpy_put_be32(buf + 9, seq);
    /* Nobody reads the channel: the background thread leads from now on. */
    int wake_bg = b->leader == NULL && b->n_waiting == 0;
    int rc = 0, direct = b->oq == NULL;
    if (!direct)
        rc = oq_append_locked(b, buf, len, 0, 0);   /* behind what waits */
    pthread_mutex_unlock(&b->lock);
    if (direct) {
        if (pthread_mutex_trylock(&b->wlock) == 0) {
            pthread_mutex_lock(&b->lock);
            int empty = b->oq == NULL;   /* nothing half written before us */
            pthread_mutex_unlock(&b->lock);
            size_t off = 0;
            int err = 0;
            if (empty && b->to_fd >= 0)
                off = write_some(b, buf, len, &err);
            if (off < len && (err == 0 || err == EAGAIN)) {
                pthread_mutex_lock(&b->lock);
                rc = oq_append_locked(b, buf, len, off, off > 0);
                pthread_mutex_unlock(&b->lock);
            }
            /* Any other error: the helper is gone; the reader will see it
             * and finish this call as dead. */
            pthread_mutex_unlock(&b->wlock);
        } else {
            pthread_mutex_lock(&b->lock);
            rc = oq_append_locked(b, buf, len, 0, 0);
            pthread_mutex_unlock(&b->lock);
        }
    }
    if (rc != 0) {
        /* Never written: withdraw it (it may have been finished as dead
         * meanwhile, then the reader owns it). */
        pthread_mutex_lock(&b->lock);
        erpy_pending *x = ptab_remove(b, seq);
        pthread_mutex_unlock(&b->lock);
        if (x != NULL) {
            free(x);
            return ENOMEM;
        }
    }
    if (wake_bg)
        wake_fd(b->bg_pipe[1]);
    oq_kick(b);
    *seq_out = seq;
    return 0;
}

erpy_pending *
erpy_async_withdraw(erpy_bridge *b, uint32_t seq)
{
    pthread_mutex_lock(&b->lock);
    erpy_pending *p = ptab_remove(b, seq);
    pthread_mutex_unlock(&b->lock);
    if (p != NULL)
        erpy_bridge_cancel(b, ERPY_ASYNC_WORKER, seq);
    return p;
}

erpy_pending *
erpy_async_withdraw_all(erpy_bridge *b, erpy_waker *k)
{
    erpy_pending *list = NULL;
    pthread_mutex_lock(&b->lock);
    for (size_t i = 0; i < b->pcap; i++) {
        for (erpy_pending **pp = &b->ptab[i]; *pp;) {
            erpy_pending *p = *pp;
            if (p->waker == k) {
                *pp = p->hnext;
                b->n_pending--;
                p->hnext = NULL;
                p->dnext = list;
                list = p;
            } else {
                pp = &p->hnext;
            }
        }
    }
    pthread_mutex_unlock(&b->lock);
    for (erpy_pending *p = list; p; p = p->dnext)
        erpy_bridge_cancel(b, ERPY_ASYNC_WORKER, p->seq);
    return list;
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
