/* Calls in flight without a thread: wakers (a queue of finished calls and a
 * pipe), the pending-call table of a helper (keyed by Seq on the async
 * channel), and submitting and withdrawing async calls (see transport.h). */
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>

#include "transport_int.h"

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
int
erpy_waker_push(erpy_pending *p)
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
     * queue taken now; one finished after it writes a new byte.  (Not in a
     * forked child: the pipe's bytes are the parent's.) */
    if (!k->forked)
        erpy_drain_fd(k->fd_r);
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

/* Bucket of seq.  Lock held; b->pcap > 0. */
static inline erpy_pending **
ptab_slot(erpy_helper *b, uint32_t seq)
{
    ERPY_ASSERT_LOCKED(&b->lock);
    return &b->ptab[seq & (b->pcap - 1)];
}

/* Inserts p, growing the table when it is fuller than one entry a bucket.
 * Lock held.  Returns 0 or ENOMEM. */
static int
ptab_insert(erpy_helper *b, erpy_pending *p)
{
    ERPY_ASSERT_LOCKED(&b->lock);
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
erpy_pending *
erpy_ptab_remove(erpy_helper *b, uint32_t seq)
{
    ERPY_ASSERT_LOCKED(&b->lock);
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

/* Finishes every pending call of b as dead (the helper died).  Lock held. */
void
erpy_pending_fail_all(erpy_helper *b)
{
    ERPY_ASSERT_LOCKED(&b->lock);
    for (size_t i = 0; i < b->pcap; i++) {
        for (erpy_pending *p = b->ptab[i], *n; p; p = n) {
            n = p->hnext;
            p->hnext = NULL;
            p->dead = 1;
            erpy_wake_fd(erpy_waker_push(p));
        }
        b->ptab[i] = NULL;
    }
    b->n_pending = 0;
}

int
erpy_async_submit(erpy_helper *b, erpy_waker *k, void *ctx, char *buf, size_t len,
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
    /* One Seq space for every helper of the process: a Seq withdrawn late
     * can never name a call of the helper started after its own died. */
    static uint32_t last_seq;
    uint32_t seq = __atomic_add_fetch(&last_seq, 1, __ATOMIC_RELAXED);
    if (seq == 0)
        seq = __atomic_add_fetch(&last_seq, 1, __ATOMIC_RELAXED);
    p->seq = seq;
    p->helper = b;
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
        rc = erpy_oq_append_locked(b, buf, len, 0, 0);   /* behind what waits */
    pthread_mutex_unlock(&b->lock);
    if (direct) {
        if (pthread_mutex_trylock(&b->wlock) == 0) {
            pthread_mutex_lock(&b->lock);
            int empty = b->oq == NULL;   /* nothing half written before us */
            pthread_mutex_unlock(&b->lock);
            size_t off = 0;
            int err = 0;
            if (empty && b->to_fd >= 0)
                off = erpy_write_some(b, buf, len, &err);
            if (off < len && (err == 0 || err == EAGAIN)) {
                pthread_mutex_lock(&b->lock);
                rc = erpy_oq_append_locked(b, buf, len, off, off > 0);
                pthread_mutex_unlock(&b->lock);
            }
            /* Any other error: the helper is gone; the reader will see it
             * and finish this call as dead. */
            pthread_mutex_unlock(&b->wlock);
        } else {
            pthread_mutex_lock(&b->lock);
            rc = erpy_oq_append_locked(b, buf, len, 0, 0);
            pthread_mutex_unlock(&b->lock);
        }
    }
    if (rc != 0) {
        /* Never written: withdraw it (it may have been finished as dead
         * meanwhile, then the reader owns it). */
        pthread_mutex_lock(&b->lock);
        erpy_pending *x = erpy_ptab_remove(b, seq);
        pthread_mutex_unlock(&b->lock);
        if (x != NULL) {
            free(x);
            return ENOMEM;
        }
    }
    if (wake_bg)
        erpy_wake_fd(b->bg_pipe[1]);
    erpy_oq_kick(b);
    *seq_out = seq;
    return 0;
}

erpy_pending *
erpy_async_withdraw(erpy_helper *b, uint32_t seq)
{
    pthread_mutex_lock(&b->lock);
    erpy_pending *p = erpy_ptab_remove(b, seq);
    pthread_mutex_unlock(&b->lock);
    if (p != NULL)
        erpy_helper_cancel(b, ERPY_ASYNC_WORKER, seq);
    return p;
}

erpy_pending *
erpy_async_withdraw_all(erpy_helper *b, erpy_waker *k)
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
        erpy_helper_cancel(b, ERPY_ASYNC_WORKER, p->seq);
    return list;
}

/* In a forked child: the async calls pending on the parent's helper will
 * never be answered here.  Each is finished as dead on its waker (whose
 * lock a thread of the parent may have held, and whose pipe is the
 * parent's: the child only takes its queue, never reads the pipe), so that
 * the child's futures and maps fail with HelperExited instead of waiting
 * for ever.  Only async-signal-safe calls (and the child is single-threaded
 * now). */
void
erpy_async_after_fork(erpy_helper *b)
{
    for (size_t i = 0; i < b->pcap; i++) {
        for (erpy_pending *p = b->ptab[i], *n; p; p = n) {
            n = p->hnext;
            erpy_waker *k = p->waker;
            if (!k->forked) {
                pthread_mutex_init(&k->lock, NULL);
                k->forked = 1;
            }
            p->hnext = NULL;
            p->dead = 1;
            p->dnext = NULL;
            if (k->done_tail)
                k->done_tail->dnext = p;
            else
                k->done = p;
            k->done_tail = p;
        }
        b->ptab[i] = NULL;
    }
    b->n_pending = 0;
}
