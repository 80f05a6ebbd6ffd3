/* Reading and waiting (leader/followers).  Exactly one thread at a time reads
 * the helper's stdout: the *leader*.  A thread waiting for a reply becomes the
 * leader when nobody else is, so a lone caller reads its own reply and pays
 * no hand-over.  The leader splits every chunk it reads into frames and puts
 * each one in the inbox of the worker it is addressed to, waking that worker
 * through its pipe; replies whose Seq is not the one their worker waits for
 * are stale and are dropped.  When the leader has its own reply it steps down
 * and wakes one waiting follower, which becomes the next leader.  A
 * background thread (helper.c) takes the role when nobody has waited for a
 * few milliseconds, so output of background Erlang processes and the
 * helper's death are noticed even when no call is in flight.  The leader
 * never blocks on another worker: wake-up pipes are non-blocking and one
 * byte is enough.
 *
 * Async calls are not a thread's: each is an entry of the helper's pending
 * table (async.c), and its reply goes to the entry's waker.  While any is
 * pending, the background thread reads whenever no waiting thread does. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport_int.h"

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

/* Picks one waiting worker other than `except` that still needs a reply, to
 * take the leader's role, and returns its wake-up fd (or -1): the caller
 * writes to it after releasing the lock, so that the woken thread does not
 * find the lock still held.  A worker whose reply is already in its inbox is
 * about to leave and would not lead: waking it instead would leave the
 * others with no reader.  Lock held; b->leader is NULL. */
int
erpy_promote(erpy_helper *b, erpy_worker *except)
{
    ERPY_ASSERT_LOCKED(&b->lock);
    ERPY_ASSERT(b->leader == NULL);
    for (erpy_worker *x = b->waiting; x; x = x->wnext) {
        if (x != except && !x->has_reply && !x->in_callback)
            return x->pipe_w;
    }
    /* No thread to lead, but async calls wait for replies: the background
     * thread reads for them. */
    return b->n_pending > 0 ? b->bg_pipe[1] : -1;
}

/* Removes w from the waiting list and steps it down if it leads.  Lock held. */
static void
deregister(erpy_helper *b, erpy_worker *w)
{
    ERPY_ASSERT_LOCKED(&b->lock);
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
    w->wait_helper = NULL;
    w->has_reply = 0;
    b->n_waiting--;
    b->last_activity_ns = erpy_now_ns();
    /* Stepping down only; whoever leaves the wait promotes a successor
     * (wait_locked's exit, erpy_wait_abandon), so it happens once. */
    if (b->leader == w)
        b->leader = NULL;
}

/* Marks the helper dead and wakes everyone who waits on it.  Lock held. */
static void
mark_dead(erpy_helper *b, int status, const char *why)
{
    ERPY_ASSERT_LOCKED(&b->lock);
    if (b->dead)
        return;
    b->dead = 1;
    b->exit_status = status;
    if (why == NULL && b->stopping)
        why = "the Erlang helper was stopped (erlang.stop() or interpreter exit)";
    if (why)
        snprintf(b->why, sizeof b->why, "%s", why);
    for (erpy_worker *x = b->waiting; x; x = x->wnext)
        erpy_wake_fd(x->pipe_w);
    /* Every async call of this helper fails now, and every mailbox learns
     * that nothing more will come. */
    erpy_pending_fail_all(b);
    erpy_mbox_fail_all(b);
    erpy_wake_fd(b->bg_pipe[1]);
    pthread_cond_broadcast(&b->cond);
}

/* Puts one complete frame where it belongs.  Lock held.  `self` is the
 * thread's own worker when a worker leads (no wake-up needed for it).
 * Returns the wake-up fd of the worker to wake once the lock is released,
 * or -1. */
static int
dispatch(erpy_helper *b, erpy_frame *f, erpy_worker *self)
{
    ERPY_ASSERT_LOCKED(&b->lock);
    f->next = NULL;
    if (f->worker == 0) {
        if (f->kind == ERPY_K_HELLO && b->hello == NULL) {
            b->hello = f;
            pthread_cond_broadcast(&b->cond);
        } else if (f->kind == ERPY_K_OUTPUT || f->kind == ERPY_K_LOG) {
            erpy_output_push(f);   /* the output pump prints it or hands it to logging */
        } else if (f->kind == ERPY_K_CALLBACK) {
            erpy_callback_push(f);   /* for the python_workers pool */
        } else if (f->kind == ERPY_K_MESSAGE || f->kind == ERPY_K_MAILBOX_DOWN) {
            return erpy_mbox_deliver(b, f);
        } else {
            free(f);
        }
        return -1;
    }
    if (f->worker == ERPY_ASYNC_WORKER) {
        /* Output of an async call is shown as it comes; a reply finishes
         * its call, unless it was withdrawn (timed out, cancelled). */
        if (f->kind == ERPY_K_OUTPUT) {
            erpy_output_push(f);
            return -1;
        }
        erpy_pending *p = erpy_ptab_remove(b, f->seq);
        if (p == NULL) {
            free(f);
            return -1;
        }
        p->reply = f;
        return erpy_waker_push(p);
    }
    erpy_worker *w = erpy_worker_by_id(f->worker);
    if (w == NULL || w->wait_helper != b || w->wait_seq != f->seq || w->has_reply) {
        /* Stale (timed out, cancelled, or duplicate) or unknown worker.
         * Output is still shown; anything else is dropped (a CALLBACK
         * too: the call it came from was cancelled, which killed the
         * process waiting for its answer). */
        if (f->kind == ERPY_K_OUTPUT)
            erpy_output_push(f);
        else
            free(f);
        return -1;
    }
    if (w->inbox_tail)
        w->inbox_tail->next = f;
    else
        w->inbox = f;
    w->inbox_tail = f;
    /* OK, ERROR, or a kind we do not know ends the call; OUTPUT and a
     * CALLBACK (py:call_python from the call's own process, which the
     * waiting thread runs) come before its end. */
    if (f->kind != ERPY_K_OUTPUT && f->kind != ERPY_K_CALLBACK)
        w->has_reply = 1;
    return w != self ? w->pipe_w : -1;
}

enum { READ_EOF = -1, READ_ERROR = -2, READ_PROTOCOL = -3, READ_AGAIN = -4 };

/* Reads what is available on from_fd (non-blocking) and splits it into
 * frames, appended to *list.  *more is set when the read filled the space it
 * was given (so more may be waiting).  Called by the leader only, without the
 * lock.  Returns the number of complete frames (maybe 0), or a negative
 * READ_* code. */
static int
read_frames(erpy_helper *b, erpy_frame **list, erpy_frame **tail, int *more)
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
        erpy_frame_parse_header(f);
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
    ssize_t used = erpy_split_frames(b->rbuf + b->rstart, b->rend - b->rstart, list, tail,
                                &nframes, &need);
    if (used < 0)
        return READ_PROTOCOL;
    b->rstart += (size_t)used;
    if (need > b->rcap) {
        /* Larger than the chunk buffer (its header is checked): read the
         * rest straight into the frame. */
        size_t have = b->rend - b->rstart - 4;
        erpy_frame *f = erpy_frame_new(need - 4);
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

/* One round of leading: waits up to timeout_ms for from_fd (and extra_fd,
 * if >= 0) to be readable, reads and dispatches.  Called by the leader
 * without the lock.  Returns ERPY_LEAD_FRAMES, ERPY_LEAD_IDLE (timeout, or
 * only extra_fd was readable), ERPY_LEAD_EINTR, or ERPY_LEAD_DEAD when the
 * helper died. */
int
erpy_lead_once(erpy_helper *b, erpy_worker *self, int timeout_ms, int extra_fd)
{
    /* The background thread (self NULL) also finishes the outbound queue
     * when the pipe has room again.  poll() skips negative fds. */
    int out_fd = self == NULL && __atomic_load_n(&b->oq_bytes, __ATOMIC_SEQ_CST) > 0
                 ? b->to_fd : -1;
    struct pollfd pf[3] = {{b->from_fd, POLLIN, 0}, {extra_fd, POLLIN, 0}, {out_fd, POLLOUT, 0}};
    /* The slots not in use are left out: the lone caller's poll() is one fd. */
    int r = poll(pf, out_fd >= 0 ? 3 : extra_fd >= 0 ? 2 : 1, timeout_ms);
    if (r < 0)
        return errno == EINTR ? ERPY_LEAD_EINTR : ERPY_LEAD_IDLE;
    if (r == 0)
        return ERPY_LEAD_IDLE;
    if (extra_fd >= 0 && (pf[1].revents & POLLIN))
        erpy_drain_fd(extra_fd);
    if (pf[2].revents != 0)
        erpy_oq_kick(b);
    if (pf[0].revents == 0)
        return ERPY_LEAD_IDLE;
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
            erpy_wake_fd(wake[i]);
    }
    if (rc >= 0 || rc == READ_AGAIN)
        return got > 0 ? ERPY_LEAD_FRAMES : ERPY_LEAD_IDLE;
    const char *why = rc == READ_EOF ? NULL
                      : rc == READ_ERROR ? "error reading from the helper"
                                         : "protocol error: bad frame from the helper (killed it)";
    pthread_mutex_lock(&b->lock);
    int booting = b->hello == NULL;
    pthread_mutex_unlock(&b->lock);
    if (rc == READ_EOF && booting && (b->rend > b->rstart || b->big != NULL)) {
        /* Died before its HELLO, having written what is no frame and too
         * short to be seen as none (less than a header, or a "length" and
         * then nothing more): those bytes are its last words too. */
        erpy_drain_dying_words(b);
    } else if (rc == READ_PROTOCOL) {
        if (booting) {
            /* Not a frame, and no HELLO yet: the helper is dying before it
             * could speak the protocol, and the emulator prints its last
             * words ("Kernel pid terminated", "init terminating in
             * do_boot") on fd 1.  They are the reason for the failure:
             * keep them with its stderr and let it exit with its own
             * status, instead of killing it as a broken channel. */
            erpy_drain_dying_words(b);
            why = NULL;
        } else if (b->pid > 0) {
            kill(b->pid, SIGKILL);
        }
    }
    /* A helper that closed its stdout is exiting; 900 ms leaves time for a
     * loaded machine while keeping "HelperExited within a second".  One
     * that dies before its HELLO fails a start, which waits anyway: its own
     * exit status is the report, so it gets 5 s: on a busy machine (or
     * under valgrind) an emulator halting on "Kernel pid terminated" can
     * take longer than 900 ms, and the start would report signal 9. */
    int status = erpy_reap(b, booting ? 5000 : 900);
    pthread_mutex_lock(&b->lock);
    mark_dead(b, status, why);
    pthread_mutex_unlock(&b->lock);
    return ERPY_LEAD_DEAD;
}

/* Adds w to b's waiting list for seq.  Lock held; b not dead. */
static void
register_locked(erpy_helper *b, erpy_worker *w, uint32_t seq)
{
    ERPY_ASSERT_LOCKED(&b->lock);
    ERPY_ASSERT(!b->dead);
    w->wait_helper = b;
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

/* The waiting loop; lock held on entry and exit.  *frames gets w's inbox
 * when the result is ERPY_W_REPLY or ERPY_W_OUTPUT.  *wake is set to the
 * wake-up fd of a successor to the leader's role (or -1), for the caller to
 * write to once it released the lock. */
static int
wait_locked(erpy_helper *b, erpy_worker *w, uint64_t deadline_ns, uint64_t slice_end,
            erpy_frame **frames, int *wake)
{
    ERPY_ASSERT_LOCKED(&b->lock);
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
        int ms = erpy_ms_until(until, now);
        if (b->leader == NULL)
            b->leader = w;
        else if (b->leader == ERPY_BG)
            erpy_wake_fd(b->bg_pipe[1]);   /* ask the background reader to step down */
        if (b->leader == w) {
            pthread_mutex_unlock(&b->lock);
            int r = erpy_lead_once(b, w, ms, -1);
            pthread_mutex_lock(&b->lock);
            if (r == ERPY_LEAD_EINTR && !w->has_reply && !w->inbox && !b->dead) {
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
        *wake = erpy_promote(b, w);
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
wait_taking_lock(erpy_helper *b, erpy_worker *w, uint64_t deadline_ns, uint64_t slice_end,
              erpy_frame **frames)
{
    int wake;
    pthread_mutex_lock(&b->lock);
    int r = wait_locked(b, w, deadline_ns, slice_end, frames, &wake);
    pthread_mutex_unlock(&b->lock);
    erpy_wake_fd(wake);
    return r;
}

int
erpy_call(erpy_helper *b, erpy_worker *w, uint32_t seq, const char *buf, size_t len,
          uint64_t deadline_ns, int slice_ms, erpy_frame **frames)
{
    uint64_t slice_end = slice_end_of(slice_ms);
    *frames = NULL;
    pthread_mutex_lock(&b->lock);
    if (b->dead) {
        pthread_mutex_unlock(&b->lock);
        return ERPY_W_DEAD_BEFORE_SEND;
    }
    /* Registered before the request is written, so the reply cannot come
     * before anyone expects it. */
    register_locked(b, w, seq);
    if (b->leader == NULL)
        b->leader = w;
    else if (b->leader == ERPY_BG)
        erpy_wake_fd(b->bg_pipe[1]);   /* ask the background reader to step down */
    int leading = b->leader == w;
    pthread_mutex_unlock(&b->lock);
    /* Another call's long write may hold the channel: wait for it no longer
     * than the deadline or slice, then report that nothing was sent.  A
     * failed write means the helper is gone: the reader sees EOF and the
     * wait reports it. */
    uint64_t wuntil = deadline_ns && deadline_ns < slice_end ? deadline_ns : slice_end;
    if (erpy_helper_write(b, buf, len, wuntil) == ETIMEDOUT) {
        erpy_wait_abandon(b, w);
        return ERPY_W_WRITE_BUSY;
    }
    if (leading) {
        /* The common case of a lone caller: read the reply straight away,
         * without taking the lock just to find out that it is not there. */
        uint64_t now = erpy_now_ns();
        uint64_t until = deadline_ns && deadline_ns < slice_end ? deadline_ns : slice_end;
        if (now < until)
            (void)erpy_lead_once(b, w, erpy_ms_until(until, now), -1);
    }
    return wait_taking_lock(b, w, deadline_ns, slice_end, frames);
}

int
erpy_wait(erpy_helper *b, erpy_worker *w, uint64_t deadline_ns, int slice_ms,
          erpy_frame **frames)
{
    return wait_taking_lock(b, w, deadline_ns, slice_end_of(slice_ms), frames);
}

void
erpy_wait_abandon(erpy_helper *b, erpy_worker *w)
{
    int wake = -1;
    pthread_mutex_lock(&b->lock);
    deregister(b, w);
    if (b->leader == NULL)
        wake = erpy_promote(b, w);
    erpy_frame *f = w->inbox;
    w->inbox = w->inbox_tail = NULL;
    pthread_mutex_unlock(&b->lock);
    erpy_wake_fd(wake);
    erpy_frames_free(f);
    /* A wake-up byte may be left over (or still come from a leader that
     * dispatched before the deregistration): harmless, the next wait sees
     * a stale wake-up and checks again. */
}

void
erpy_worker_callback_begin(erpy_helper *b, erpy_worker *w)
{
    pthread_mutex_lock(&b->lock);
    w->in_callback = 1;
    pthread_mutex_unlock(&b->lock);
}

void
erpy_worker_callback_end(erpy_helper *b, erpy_worker *w)
{
    pthread_mutex_lock(&b->lock);
    w->in_callback = 0;
    pthread_mutex_unlock(&b->lock);
}
