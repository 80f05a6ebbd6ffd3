/* What the transport's files share; not for module.c (transport.h is its
 * interface).  Nothing here touches a PyObject or needs the GIL.
 *
 *   framing.c frame splitting and header checks: pure, no I/O, no locks
 *   pool.c    the worker pool, its pthread key, the fork handler
 *   output.c  the output and callback queues (frames for Python threads:
 *             output no waiting call claims, CALLBACKs for the pool)
 *   wait.c    leader/followers reading, dispatch by header, waiting
 *   outq.c    writing: wlock, the outbound queue, CANCEL
 *   async.c   wakers, the pending-call table, async submit/withdraw
 *   mailbox.c the mailbox table: MESSAGE frames to their mailbox's waker
 *   helper.c  the helper: start/stop/free, reaping, its last words, the
 *             background and stderr threads, the current helper
 *   spawn.c   posix_spawn of the helper process
 *
 * Locks, and what each guards:
 *   helper->lock      the leader, the waiting list, workers' wait state and
 *                     inboxes, the pending table, the mailbox table, the outbound queue's list,
 *                     hello, ready, stopping, dead/exit_status/why,
 *                     threads_running, closed
 *   helper->wlock     writes to the helper's stdin, and to_fd itself (closed
 *                     and set to -1 under it by erpy_helper_stop)
 *   helper->tail_lock the captured stderr (head, tail, err_total, err_eof)
 *   pool_lock         the pool's free list and growing it (pool.c)
 *   a queue's lock    the output queue, the callback queue (output.c)
 *   current_lock      serialises writers of the current-helper pointer
 *                     (helper.c); readers load it atomically
 *   a waker's lock    its done queue and `signalled` (async.c)
 *
 * Nestings (the first taken first; there are no others):
 *   wlock -> helper->lock        oq_flush and erpy_async_submit, writing the
 *                                outbound queue (also reached from
 *                                erpy_oq_kick: erpy_helper_write,
 *                                erpy_helper_cancel, the background thread)
 *   helper->lock -> a queue lock dispatch -> erpy_output_push,
 *                                erpy_callback_push (output.c)
 *   helper->lock -> waker lock   dispatch and mark_dead -> erpy_waker_push
 * tail_lock, pool_lock and current_lock are leaves: nothing is taken while
 * one is held, and none is taken under another lock.  Nobody takes wlock
 * while holding helper->lock (erpy_helper_cancel queues under the lock and
 * writes after releasing it).
 *
 * Read without a lock, and why that is safe:
 *   oq_bytes          atomic (a hint: "the queue may hold something")
 *   w->wait_seq       stored atomically; worker_release reads it at thread
 *                     exit to leave a worker that is still registered
 *   erpy_n_workers, current   atomic, published with release ordering
 *   to_fd             read by the background thread to poll for POLLOUT: a
 *                     stale value only makes it flush, and the flush checks
 *                     to_fd again under wlock
 *   pid               written by erpy_helper_start before any thread runs,
 *                     then set to 0 once by the thread that reaps (erpy_reap,
 *                     the only waitpid); kill() from another thread (stop,
 *                     kill) may race with that reap
 *   refs, ready       module.c's, only with the GIL
 *   dead              set once, never cleared: module.c reads it with the
 *                     GIL to fail fast; a stale 0 is caught under the lock
 *                     (erpy_call returns ERPY_W_DEAD_BEFORE_SEND).  exit_status and
 *                     why are written before dead under the lock and read
 *                     by module.c only once it saw dead (or stop returned)
 *   closed            set under the lock by erpy_helper_stop; module.c reads
 *                     it with the GIL, in the thread that ran the stop or
 *                     after it (a stale 0 only delays the free to the last
 *                     reference's drop)
 *   rbuf, big, ...    the reader's buffers: only the current leader uses
 *                     them, and leadership changes hands under the lock
 */
#ifndef ERPY_TRANSPORT_INT_H
#define ERPY_TRANSPORT_INT_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "debug.h"
#include "transport.h"

/* The transport runs without the GIL and never touches a PyObject: the
 * compiler checks that no file of it even sees Python.h. */
#ifdef Py_PYTHON_H
#error "transport files must not include Python.h (or erpy.h)"
#endif

#define ERPY_MAX_FRAME ((size_t)INT32_MAX)

/* ---------------------------------------------------- small helpers */

/* The CLOCK_REALTIME time ms milliseconds from now, for
 * pthread_cond_timedwait. */
static inline struct timespec
erpy_abs_time_ms(int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec +
                  (uint64_t)ms * 1000000ULL;
    ts.tv_sec = (time_t)(ns / 1000000000ULL);
    ts.tv_nsec = (long)(ns % 1000000000ULL);
    return ts;
}

static inline void
erpy_wake_fd(int fd)
{
    if (fd < 0)
        return;
    ssize_t r;
    do {
        r = write(fd, "x", 1);
    } while (r < 0 && errno == EINTR);
    /* EAGAIN: a byte is already pending, which is all a wake-up needs. */
}

static inline void
erpy_drain_fd(int fd)
{
    char junk[64];
    ssize_t r;
    do {
        r = read(fd, junk, sizeof junk);
    } while (r == (ssize_t)sizeof junk || (r < 0 && errno == EINTR));
}

/* Blocks every signal in the calling thread (threads we create must never
 * take SIGINT away from the thread Python expects it on). */
static inline void
erpy_block_all_signals(void)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
}

/* Milliseconds from now until `until` (rounded up), for poll(); -1 (no
 * limit) when until is UINT64_MAX. */
static inline int
erpy_ms_until(uint64_t until, uint64_t now)
{
    if (until == UINT64_MAX)
        return -1;
    uint64_t ms = (until - now + 999999ULL) / 1000000ULL;
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

/* ------------------------------------------------------------ framing.c */

/* A frame with room for a body of blen bytes (header fields unset), or
 * NULL when out of memory. */
erpy_frame *erpy_frame_new(size_t blen);
/* Fills kind, worker, seq, payload and plen from the body. */
void erpy_frame_parse_header(erpy_frame *f);
/* Splits the complete frames at the start of buf[0..len) (see framing.c). */
ssize_t erpy_split_frames(const char *buf, size_t len, erpy_frame **list, erpy_frame **tail,
                          int *nframes, size_t *need);

/* ------------------------------------------------------------- pool.c */

#define ERPY_CHUNK_BITS 8
#define ERPY_CHUNK_SIZE (1u << ERPY_CHUNK_BITS)
#define ERPY_MAX_CHUNKS 256                  /* 65,536 workers */

/* Workers live in chunks that are never freed; erpy_n_workers is published
 * with release ordering after the worker it counts is set up. */
extern erpy_worker *erpy_chunks[ERPY_MAX_CHUNKS];
extern uint32_t erpy_n_workers;

/* How many workers were ever made (ids 1..n). */
static inline uint32_t
erpy_worker_count(void)
{
    return __atomic_load_n(&erpy_n_workers, __ATOMIC_ACQUIRE);
}

static inline erpy_worker *
erpy_worker_by_id(uint32_t id)
{
    uint32_t n = erpy_worker_count();
    if (id == 0 || id > n)
        return NULL;
    uint32_t i = id - 1;
    return &erpy_chunks[i >> ERPY_CHUNK_BITS][i & (ERPY_CHUNK_SIZE - 1)];
}

/* ----------------------------------------------------------- output.c */

/* Queues f for the output pump (or drops it when the queue is full). */
void erpy_output_push(erpy_frame *f);
/* Queues a CALLBACK frame for the python_workers pool (never dropped). */
void erpy_callback_push(erpy_frame *f);
/* In a forked child: empty queues (output and callbacks), fresh locks. */
void erpy_output_after_fork(void);

/* ------------------------------------------------------------- wait.c */

/* One round of leading (see wait.c). */
enum { ERPY_LEAD_FRAMES = 1, ERPY_LEAD_IDLE = 0, ERPY_LEAD_EINTR = -1, ERPY_LEAD_DEAD = -2 };
int erpy_lead_once(erpy_helper *b, erpy_worker *self, int timeout_ms, int extra_fd);
/* The wake-up fd of a waiting worker other than except to lead (or of the
 * background thread), or -1.  Lock held; b->leader is NULL. */
int erpy_promote(erpy_helper *b, erpy_worker *except);

/* ------------------------------------------------------------- outq.c */

int erpy_wlock_until(erpy_helper *b, uint64_t until_ns);
size_t erpy_write_some(erpy_helper *b, const char *buf, size_t len, int *err);
int erpy_oq_append_locked(erpy_helper *b, const char *frame, size_t len, size_t off,
                          int at_head);
void erpy_oq_drop_locked(erpy_helper *b);
void erpy_oq_kick(erpy_helper *b);

/* ------------------------------------------------------------ async.c */

int erpy_waker_push(erpy_pending *p);
erpy_pending *erpy_ptab_remove(erpy_helper *b, uint32_t seq);
/* Finishes every pending call of b as dead (the helper died).  Lock held. */
void erpy_pending_fail_all(erpy_helper *b);

/* ---------------------------------------------------------- mailbox.c */

int erpy_mbox_deliver(erpy_helper *b, erpy_frame *f);
void erpy_mbox_fail_all(erpy_helper *b);

/* ----------------------------------------------------------- helper.c */

int erpy_reap(erpy_helper *b, int wait_ms);
void erpy_drain_dying_words(erpy_helper *b);
/* In a forked child: forgets the parent's helper (closing our copies of its
 * descriptors).  Async-signal-safe. */
void erpy_helper_after_fork(void);
void erpy_async_after_fork(erpy_helper *b);

#endif
