/* Transport: the helper's channel, the worker pool and the waiting protocol.
 *
 * Nothing declared here touches a PyObject or needs the GIL, except where a
 * comment says so; module.c does all the Python work around it.
 */
#ifndef ERPY_TRANSPORT_H
#define ERPY_TRANSPORT_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "be.h"
#include "buf.h"
#include "protocol.h"

/* One frame read from the helper.  body holds the whole frame body (header
 * included); payload/plen point past the 9-byte header. */
typedef struct erpy_frame {
    struct erpy_frame *next;
    uint8_t kind;
    uint32_t worker;
    uint32_t seq;
    size_t blen;            /* body length */
    char *payload;          /* body + ERPY_HEADER_SIZE */
    size_t plen;
    char body[];
} erpy_frame;

/* kind of a queued chunk of the helper's raw stderr (never on the wire) */
#define ERPY_K_RAW_STDERR 255

struct erpy_helper;

#define ERPY_ERR_HEAD (16 * 1024)
#define ERPY_ERR_TAIL (8 * 1024)

/* A pool entry, owned by one thread at a time (kept in a pthread key slot). */
typedef struct erpy_worker {
    uint32_t id;                  /* >= 1; 0 is the control channel */
    int pipe_r, pipe_w;           /* wake-up pipe: only the owner reads pipe_r (blocking);
                                     pipe_w is non-blocking */
    /* Owned by the thread holding the worker. */
    uint32_t seq;                 /* last Seq sent */
    int busy;                     /* in a call: a nested call (signal handler,
                                     __del__, output writer) is refused */
    erpy_buf out;                 /* reusable encode buffer: frame header + payload */
    /* Under the owning helper's lock. */
    struct erpy_helper *wait_helper;
    uint32_t wait_seq;            /* 0: not waiting */
    int has_reply;
    erpy_frame *inbox, *inbox_tail;
    struct erpy_worker *wnext, *wprev;   /* the helper's waiting list */
    int in_callback;              /* its thread runs a CALLBACK of this wait: it is
                                     not sleeping on its pipe, so never promoted */
    /* Owned by the thread: the worker of calls made from inside a callback
     * this worker's wait runs (one per nesting level, made on first use,
     * back to the pool with this one). */
    struct erpy_worker *nested;
    /* Under the pool lock. */
    int in_use;
    struct erpy_worker *free_next;
} erpy_worker;

typedef struct erpy_helper {
    pid_t pid;                    /* 0 after reaping or in a forked child */
    int to_fd, from_fd, err_fd;
    pthread_mutex_t wlock;        /* serialises writes to to_fd (non-blocking) */
    pthread_mutex_t lock;         /* everything below unless said otherwise (the
                                     locks, their order and the lock-free reads:
                                     transport_int.h) */
    pthread_cond_t cond;          /* hello / dead / threads done */
    erpy_worker *leader;          /* who reads from_fd now: a worker, ERPY_BG or NULL */
    erpy_worker *waiting;         /* list of workers waiting for a reply */
    int n_waiting;
    uint64_t last_activity_ns;
    int dead;                     /* set once; never cleared */
    int exit_status;              /* waitpid status, or -1 if unknown */
    char why[200];                /* why it is dead, when not a plain exit */
    erpy_frame *hello;
    int stopping;
    int ready;                    /* start-up (modules, on_start) finished; module.c's,
                                     only touched with the GIL */
    int closed;                   /* descriptors closed, threads gone: freeable */
    long refs;                    /* module.c's references; only touched with the GIL */
    /* The reader's buffers belong to the current leader (handed over under lock). */
    char *rbuf;
    size_t rcap, rstart, rend;
    erpy_frame *big;              /* a frame too large for rbuf, being filled */
    size_t big_have;
    /* Background reader (leads when nobody waits) and stderr thread. */
    pthread_t bg_thread, err_thread;
    int bg_pipe[2];
    int threads_running;          /* counts bg + err threads still running */
    /* What the helper wrote to stderr (and, before HELLO, raw bytes on its
     * stdout): the first ERPY_ERR_HEAD bytes and the last ERPY_ERR_TAIL, so
     * that an error message has both the cause (often first) and the end.
     * Under tail_lock. */
    pthread_mutex_t tail_lock;
    char head[ERPY_ERR_HEAD];
    size_t head_len;
    char tail[ERPY_ERR_TAIL];
    size_t tail_len;
    uint64_t err_total;           /* bytes captured in all */
    int err_eof;
    /* Outbound queue: frames written by whoever holds wlock next (never
     * blocking a caller that must not block: event loops, CANCEL).  The
     * list is under lock, its bytes are written under wlock; oq_bytes is
     * also read without the lock (atomic). */
    struct erpy_obuf *oq, *oq_tail;
    size_t oq_bytes;
    /* Pending async calls, by Seq: open hash, power-of-two buckets. */
    struct erpy_pending **ptab;
    size_t pcap, n_pending;
    /* Open mailboxes, by id (mailbox.c). */
    struct erpy_mbox **mtab;
    size_t mcap, n_mbox;
} erpy_helper;

#define ERPY_BG ((erpy_worker *)1)

/* --- calls in flight without a thread: the pending-call table
 *
 * An async call (CALL_ASYNC, APPLY_ASYNC, EVAL_ASYNC) is not tied to a
 * thread: it is an erpy_pending in its helper's table, keyed by its Seq on
 * the async channel (worker id erpy_async_worker_id()).  Its reply is
 * routed by that key and handed to the call's *waker*: a queue of finished
 * calls plus a pipe that is written once when the queue becomes non-empty.
 * The waker's owner watches the pipe (a thread in poll, or an event loop's
 * add_reader) and takes the finished calls in batches.  When the helper
 * dies, every pending call of its helper is finished with dead = 1. */
typedef struct erpy_waker {
    int fd_r, fd_w;               /* both non-blocking, close-on-exec */
    pthread_mutex_t lock;         /* the done queue and `signalled` */
    struct erpy_pending *done, *done_tail;
    int signalled;                /* a byte was written since the owner last took the queue */
    int forked;                   /* inherited by a forked child: its pipe is the parent's */
} erpy_waker;

typedef struct erpy_pending {
    struct erpy_pending *hnext;   /* hash chain (helper lock) */
    struct erpy_pending *dnext;   /* done queue (waker lock) */
    struct erpy_helper *helper;
    erpy_waker *waker;
    uint32_t seq;
    int dead;                     /* finished because the helper died */
    erpy_frame *reply;            /* OK / ERROR frame, once finished */
    void *ctx;                    /* the caller's (a PyObject *: module.c, GIL) */
} erpy_pending;

/* A frame waiting in a helper's outbound queue (partly written when it is
 * the head and off > 0). */
typedef struct erpy_obuf {
    struct erpy_obuf *next;
    size_t len, off;
    char data[];
} erpy_obuf;

/* --- spawn.c */
int erpy_spawn(char *const argv[], char *const envp[], pid_t *pid,
               int *to_fd, int *from_fd, int *err_fd);

/* --- the transport (pool.c, helper.c, outq.c, wait.c; no GIL anywhere) */

/* Global set-up (pool key, fork handlers).  Returns 0 or an errno value. */
int erpy_transport_init(void);

/* The calling thread's worker, taken from the pool on first use.  NULL when
 * out of memory, descriptors or ids (errno set). */
erpy_worker *erpy_worker_get(void);

/* Starts a helper and its threads.  Returns the new helper (it becomes the
 * current one), or NULL with *err set to an errno value. */
erpy_helper *erpy_helper_start(char *const argv[], char *const envp[], int *err);

/* The current helper, or NULL (valid while the GIL is held: module.c frees
 * helpers only with the GIL, once closed and unreferenced). */
erpy_helper *erpy_helper_current(void);

/* Waits until the helper's HELLO arrived (1), it died (0), or timeout_ms
 * elapsed / slice ended (-1).  Never longer than slice_ms. */
int erpy_helper_wait_hello(erpy_helper *b, int slice_ms);

/* Closes the helper's stdin; the helper halts.  Waits up to timeout_ms for it
 * to exit, then kills it.  Returns when dead: 1 if this call made b stop
 * being the current helper, else 0. */
int erpy_helper_stop(erpy_helper *b, int timeout_ms);

/* Frees a helper that erpy_helper_stop closed and nobody references. */
void erpy_helper_free(erpy_helper *b);

/* Kills the helper (SIGKILL) without waiting. */
void erpy_helper_kill(erpy_helper *b);

/* Copies what the helper wrote to stderr into dst (NUL-terminated): all of
 * it when it fits in ERPY_ERR_HEAD + ERPY_ERR_TAIL bytes, else its head, a
 * line saying how much was left out, and its tail.  cap must be at least
 * ERPY_ERR_TEXT_MAX.  Returns the length. */
#define ERPY_ERR_TEXT_MAX (ERPY_ERR_HEAD + ERPY_ERR_TAIL + 128)
size_t erpy_helper_stderr_text(erpy_helper *b, char *dst, size_t cap);

/* Writes buf (a complete frame) to the helper, if the write lock can be had
 * before until_ns (CLOCK_MONOTONIC; UINT64_MAX: no limit).  A frame once
 * begun is always finished.  Returns 0, ETIMEDOUT (nothing written) or an
 * errno value (EPIPE when the helper is gone). */
int erpy_helper_write(erpy_helper *b, const char *buf, size_t len, uint64_t until_ns);

/* Sends CANCEL for (worker, seq) without ever blocking: when the write lock
 * is taken, or the pipe is full, the frame waits for the next writer. */
void erpy_helper_cancel(erpy_helper *b, uint32_t worker, uint32_t seq);

/* --- async calls (async.c; no GIL) */

/* The worker id of the async channel (a pool id of its own, >= 1). */
uint32_t erpy_async_worker_id(void);

/* A new waker, or NULL with errno set. */
erpy_waker *erpy_waker_new(void);
/* Frees a waker whose calls have all been taken or withdrawn. */
void erpy_waker_free(erpy_waker *k);
/* Takes the finished calls (oldest first) and consumes the wake-up byte. */
erpy_pending *erpy_waker_take(erpy_waker *k);
/* Waits up to timeout_ms (< 0: no limit) for the waker's pipe.  Returns > 0
 * when readable, 0 on timeout, -1 with errno (EINTR). */
int erpy_waker_wait(erpy_waker *k, int timeout_ms);

/* Bytes in the outbound queue past which async calls wait for room. */
#define ERPY_OUTQ_MAX ((size_t)32 << 20)

/* Registers an async call of ctx on waker k and queues its request (buf: a
 * whole frame whose Worker and Seq fields this fills in).  Never blocks.
 * Returns 0 with *seq and *pending set, EPIPE when b is dead (nothing
 * sent), EAGAIN when the outbound queue is full (nothing sent: wait for
 * room), or ENOMEM. */
int erpy_async_submit(erpy_helper *b, erpy_waker *k, void *ctx, char *buf, size_t len,
                      uint32_t *seq);

/* Withdraws the pending call seq of b: removed from the table (its late
 * reply will be dropped) and a CANCEL queued.  Returns the call (the caller
 * frees it with erpy_pending_free) or NULL when it is no longer pending. */
erpy_pending *erpy_async_withdraw(erpy_helper *b, uint32_t seq);

/* Withdraws every pending call of waker k in b (the waker's owner is going
 * away).  Returns them as a dnext list. */
erpy_pending *erpy_async_withdraw_all(erpy_helper *b, erpy_waker *k);

void erpy_pending_free(erpy_pending *p);

/* Results of erpy_call and erpy_wait. */
enum {
    ERPY_W_REPLY = 1,     /* *frames holds the reply (maybe after OUTPUT frames); deregistered */
    ERPY_W_OUTPUT,        /* *frames holds OUTPUT frames, no reply yet; still registered */
    ERPY_W_DEAD,          /* the helper died; deregistered */
    ERPY_W_TIMEOUT,       /* deadline passed; deregistered, late replies will be dropped */
    ERPY_W_SLICE,         /* slice_ms passed (or EINTR): check signals, then erpy_wait again */
    ERPY_W_DEAD_BEFORE_SEND,      /* b was already dead: nothing written, not registered */
    ERPY_W_WRITE_BUSY,        /* another call's write held the channel past the deadline or
                           * slice: nothing written, deregistered; check signals, retry */
};

/* Registers w as waiting for (b, seq), writes the request frame buf (header
 * included), and waits as erpy_wait does.  deadline_ns: CLOCK_MONOTONIC, 0
 * for none.  Returns after at most about slice_ms (< 0: no slice; a wait
 * without deadline then sleeps until something happens). */
int erpy_call(erpy_helper *b, erpy_worker *w, uint32_t seq, const char *buf, size_t len,
              uint64_t deadline_ns, int slice_ms, erpy_frame **frames);

/* Waits more for w's current call (after ERPY_W_OUTPUT or ERPY_W_SLICE).
 * The caller frees *frames with erpy_frames_free. */
int erpy_wait(erpy_helper *b, erpy_worker *w, uint64_t deadline_ns, int slice_ms,
              erpy_frame **frames);

/* Abandons w's current call (deregisters; drops whatever arrived). */
void erpy_wait_abandon(erpy_helper *b, erpy_worker *w);
void erpy_frames_free(erpy_frame *f);

/* Runs a CALLBACK from w's inbox: while in_callback is set, w stays
 * registered for its call (its reply, should it come meanwhile, waits in
 * the inbox) but is never asked to lead. */
void erpy_worker_callback_begin(erpy_helper *b, erpy_worker *w);
void erpy_worker_callback_end(erpy_helper *b, erpy_worker *w);

/* The worker for calls made from inside a callback that w's wait runs
 * (w->nested, taken from the pool on first use).  NULL with errno set. */
erpy_worker *erpy_worker_nested(erpy_worker *w);

/* --- mailboxes (mailbox.c)
 *
 * A Python mailbox is a waker in its helper's mailbox table, under an id
 * that the helper's MESSAGE and MAILBOX_DOWN frames carry as their Seq.
 * Each such frame becomes an erpy_pending (seq = the id, reply = the frame)
 * on that waker's done queue; when the helper dies, every mailbox gets one
 * with dead = 1 and the table is emptied. */
typedef struct erpy_mbox {
    struct erpy_mbox *hnext;
    uint32_t id;
    erpy_waker *waker;
} erpy_mbox;

/* Adds a mailbox to b's table.  Returns its id (never 0), or 0 with errno
 * set (ENOMEM; EPIPE: b is dead). */
uint32_t erpy_mbox_open(erpy_helper *b, erpy_waker *k);
/* Removes mailbox id from b's table (nothing if it is not there). */
void erpy_mbox_close(erpy_helper *b, uint32_t id);
/* Removes every mailbox of waker k (the waker is being freed: whatever
 * still names it must not reach it). */
void erpy_mbox_forget_waker(erpy_helper *b, erpy_waker *k);

/* Writes a frame of kind with Worker 0 and Seq seq (buf holds the frame,
 * header included, its header filled here) without ever blocking: through
 * the outbound queue when the pipe is busy.  Returns 0, ENOMEM or EPIPE. */
int erpy_helper_post(erpy_helper *b, char *buf, size_t len);

/* Output queue (helper output not tied to a waiting call, and raw stderr).
 * Waits up to timeout_ms; returns a frame (the caller frees it) or NULL. */
erpy_frame *erpy_output_next(int timeout_ms);
/* Wakes erpy_output_next waiters (for shutdown). */
void erpy_output_wake(void);

/* The next CALLBACK frame for the python_workers pool (py:call_python from
 * a process that is not running a call of a waiting thread, and
 * py:cast_python), or NULL after timeout_ms or erpy_callback_wake. */
erpy_frame *erpy_callback_next(int timeout_ms);
void erpy_callback_wake(void);

/* CLOCK_MONOTONIC in nanoseconds. */
static inline uint64_t
erpy_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* How many times the background thread found waiting threads without a
 * leader for 50 ms and promoted one (a safety net; 0 unless there is a bug). */
uint64_t erpy_stall_rescues(void);

/* The reader's frame splitting on a buffer (for tests and fuzzing): returns
 * the bytes consumed with the complete frames in *list, or -1 on a protocol
 * error.  Worker ids above the number of workers ever made are errors. */
ssize_t erpy_parse_frames(const char *buf, size_t len, erpy_frame **list);

#endif
