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

#include "erpy.h"

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

struct erpy_bridge;

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
    /* Under the owning bridge's lock. */
    struct erpy_bridge *wait_bridge;
    uint32_t wait_seq;            /* 0: not waiting */
    int has_reply;
    erpy_frame *inbox, *inbox_tail;
    struct erpy_worker *wnext, *wprev;   /* the bridge's waiting list */
    /* Under the pool lock. */
    int in_use;
    struct erpy_worker *free_next;
} erpy_worker;

typedef struct erpy_bridge {
    pid_t pid;                    /* 0 after reaping or in a forked child */
    int to_fd, from_fd, err_fd;
    pthread_mutex_t wlock;        /* serialises writes to to_fd (non-blocking) */
    pthread_mutex_t lock;         /* everything below unless said otherwise */
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
    int ready;                    /* start-up (modules, on_start) finished */
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
    /* CANCEL frames (worker, seq) that found the write lock taken: written
     * by whoever holds it next.  Under lock; n_cancels also read without. */
    uint32_t cancels[64][2];
    int n_cancels;
} erpy_bridge;

#define ERPY_BG ((erpy_worker *)1)

/* --- spawn.c */
int erpy_spawn(char *const argv[], char *const envp[], pid_t *pid,
               int *to_fd, int *from_fd, int *err_fd);

/* --- transport.c (no GIL anywhere) */

/* Global set-up (pool key, fork handlers).  Returns 0 or an errno value. */
int erpy_transport_init(void);

/* The calling thread's worker, taken from the pool on first use.  NULL when
 * out of memory, descriptors or ids (errno set). */
erpy_worker *erpy_worker_get(void);

/* Starts a helper and its threads.  Returns the new bridge (it becomes the
 * current one), or NULL with *err set to an errno value. */
erpy_bridge *erpy_bridge_start(char *const argv[], char *const envp[], int *err);

/* The current bridge, or NULL (valid while the GIL is held: module.c frees
 * bridges only with the GIL, once closed and unreferenced). */
erpy_bridge *erpy_bridge_current(void);

/* Waits until the helper's HELLO arrived (1), it died (0), or timeout_ms
 * elapsed / slice ended (-1).  Never longer than slice_ms. */
int erpy_bridge_wait_hello(erpy_bridge *b, int slice_ms);

/* Closes the helper's stdin; the helper halts.  Waits up to timeout_ms for it
 * to exit, then kills it.  Returns when dead: 1 if this call made b stop
 * being the current bridge, else 0. */
int erpy_bridge_stop(erpy_bridge *b, int timeout_ms);

/* Frees a bridge that erpy_bridge_stop closed and nobody references. */
void erpy_bridge_free(erpy_bridge *b);

/* Kills the helper (SIGKILL) without waiting. */
void erpy_bridge_kill(erpy_bridge *b);

/* Copies what the helper wrote to stderr into dst (NUL-terminated): all of
 * it when it fits in ERPY_ERR_HEAD + ERPY_ERR_TAIL bytes, else its head, a
 * line saying how much was left out, and its tail.  cap must be at least
 * ERPY_ERR_TEXT_MAX.  Returns the length. */
#define ERPY_ERR_TEXT_MAX (ERPY_ERR_HEAD + ERPY_ERR_TAIL + 128)
size_t erpy_bridge_stderr_text(erpy_bridge *b, char *dst, size_t cap);

/* Writes buf (a complete frame) to the helper, if the write lock can be had
 * before until_ns (CLOCK_MONOTONIC; UINT64_MAX: no limit).  A frame once
 * begun is always finished.  Returns 0, ETIMEDOUT (nothing written) or an
 * errno value (EPIPE when the helper is gone). */
int erpy_bridge_write(erpy_bridge *b, const char *buf, size_t len, uint64_t until_ns);

/* Sends CANCEL for (worker, seq) without ever blocking: when the write lock
 * is taken, or the pipe is full, the frame waits for the next writer. */
void erpy_bridge_cancel(erpy_bridge *b, uint32_t worker, uint32_t seq);

/* Results of erpy_call and erpy_wait. */
enum {
    ERPY_W_REPLY = 1,     /* *frames holds the reply (maybe after OUTPUT frames); deregistered */
    ERPY_W_OUTPUT,        /* *frames holds OUTPUT frames, no reply yet; still registered */
    ERPY_W_DEAD,          /* the helper died; deregistered */
    ERPY_W_TIMEOUT,       /* deadline passed; deregistered, late replies will be dropped */
    ERPY_W_SLICE,         /* slice_ms passed (or EINTR): check signals, then erpy_wait again */
    ERPY_W_NOT_SENT,      /* b was already dead: nothing written, not registered */
    ERPY_W_UNSENT,        /* another call's write held the channel past the deadline or
                           * slice: nothing written, deregistered; check signals, retry */
};

/* Registers w as waiting for (b, seq), writes the request frame buf (header
 * included), and waits as erpy_wait does.  deadline_ns: CLOCK_MONOTONIC, 0
 * for none.  Returns after at most about slice_ms (< 0: no slice; a wait
 * without deadline then sleeps until something happens). */
int erpy_call(erpy_bridge *b, erpy_worker *w, uint32_t seq, const char *buf, size_t len,
              uint64_t deadline_ns, int slice_ms, erpy_frame **frames);

/* Waits more for w's current call (after ERPY_W_OUTPUT or ERPY_W_SLICE).
 * The caller frees *frames with erpy_frames_free. */
int erpy_wait(erpy_bridge *b, erpy_worker *w, uint64_t deadline_ns, int slice_ms,
              erpy_frame **frames);

/* Abandons w's current call (deregisters; drops whatever arrived). */
void erpy_wait_abandon(erpy_bridge *b, erpy_worker *w);
void erpy_frames_free(erpy_frame *f);

/* Output queue (helper output not tied to a waiting call, and raw stderr).
 * Waits up to timeout_ms; returns a frame (the caller frees it) or NULL. */
erpy_frame *erpy_output_next(int timeout_ms);
/* Wakes erpy_output_next waiters (for shutdown). */
void erpy_output_wake(void);

uint64_t erpy_now_ns(void);

/* How many times the background thread found waiting threads without a
 * leader for 50 ms and promoted one (a safety net; 0 unless there is a bug). */
uint64_t erpy_stall_rescues(void);

/* The reader's frame splitting on a buffer (for tests and fuzzing): returns
 * the bytes consumed with the complete frames in *list, or -1 on a protocol
 * error.  Worker ids above the number of workers ever made are errors. */
ssize_t erpy_parse_frames(const char *buf, size_t len, erpy_frame **list);

#endif
