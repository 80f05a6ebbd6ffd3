/* Writing to the helper.  wlock serialises writes to its stdin.  Frames
 * that must not wait for it (CANCEL, async requests from an event loop) go
 * to the outbound queue, which whoever holds wlock writes first, in order;
 * when the pipe is full the background thread finishes the queue as the
 * pipe drains. */
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "transport_int.h"

/* Takes wlock, waiting until until_ns (CLOCK_MONOTONIC; UINT64_MAX: no
 * limit).  Returns 0, or ETIMEDOUT without it. */
int
erpy_wlock_until(erpy_helper *b, uint64_t until_ns)
{
    if (until_ns == UINT64_MAX)
        return pthread_mutex_lock(&b->wlock);
    struct timespec ts = {(time_t)(until_ns / 1000000000ULL), (long)(until_ns % 1000000000ULL)};
    return pthread_mutex_clocklock(&b->wlock, CLOCK_MONOTONIC, &ts);
}

/* Writes all of buf to the non-blocking to_fd, waiting in poll() while the
 * pipe is full.  wlock held.  Returns 0 or an errno value. */
static int
write_all(erpy_helper *b, const char *buf, size_t len)
{
    ERPY_ASSERT_LOCKED(&b->wlock);
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
int
erpy_oq_append_locked(erpy_helper *b, const char *frame, size_t len, size_t off, int at_head)
{
    ERPY_ASSERT_LOCKED(&b->lock);
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

/* Drops the outbound queue (the helper is gone).  Lock held, or b no longer
 * shared (erpy_helper_free). */
void
erpy_oq_drop_locked(erpy_helper *b)
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
size_t
erpy_write_some(erpy_helper *b, const char *buf, size_t len, int *err)
{
    ERPY_ASSERT_LOCKED(&b->wlock);
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
oq_flush(erpy_helper *b)
{
    ERPY_ASSERT_LOCKED(&b->wlock);
    for (;;) {
        pthread_mutex_lock(&b->lock);
        erpy_obuf *o = b->oq;
        pthread_mutex_unlock(&b->lock);
        if (o == NULL)
            return 0;
        int err = b->to_fd < 0 ? EPIPE : 0;
        if (err == 0)
            o->off += erpy_write_some(b, o->data + o->off, o->len - o->off, &err);
        if (err != 0 && err != EAGAIN) {
            pthread_mutex_lock(&b->lock);
            erpy_oq_drop_locked(b);
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
void
erpy_oq_kick(erpy_helper *b)
{
    while (__atomic_load_n(&b->oq_bytes, __ATOMIC_SEQ_CST) > 0 &&
           pthread_mutex_trylock(&b->wlock) == 0) {
        int r = oq_flush(b);
        pthread_mutex_unlock(&b->wlock);
        if (r == EAGAIN) {
            erpy_wake_fd(b->bg_pipe[1]);
            break;
        }
        if (r != 0)
            break;
    }
}

int
erpy_helper_write(erpy_helper *b, const char *buf, size_t len, uint64_t until_ns)
{
    if (erpy_wlock_until(b, until_ns) != 0)
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
    erpy_oq_kick(b);
    return rc;
}

void
erpy_helper_cancel(erpy_helper *b, uint32_t worker, uint32_t seq)
{
    char f[4 + ERPY_HEADER_SIZE + 2];
    /* Small enough that a write of it is atomic: a CANCEL is never torn. */
    _Static_assert(sizeof f <= PIPE_BUF, "a CANCEL frame fits in PIPE_BUF");
    erpy_put_be32(f, ERPY_HEADER_SIZE + 2);
    f[4] = ERPY_K_CANCEL;
    erpy_put_be32(f + 5, worker);
    erpy_put_be32(f + 9, seq);
    f[13] = (char)ERPY_ETF_VERSION;
    f[14] = ERPY_ETF_NIL;   /* [] */
    pthread_mutex_lock(&b->lock);
    /* Out of memory drops the cancel: the helper then lets that call run
     * to its end, and its late reply is dropped like any other. */
    if (!b->dead)
        (void)erpy_oq_append_locked(b, f, sizeof f, 0, 0);
    pthread_mutex_unlock(&b->lock);
    erpy_oq_kick(b);
}

int
erpy_helper_post(erpy_helper *b, char *buf, size_t len)
{
    int rc;
    pthread_mutex_lock(&b->lock);
    rc = b->dead ? EPIPE : erpy_oq_append_locked(b, buf, len, 0, 0);
    pthread_mutex_unlock(&b->lock);
    if (rc == 0)
        erpy_oq_kick(b);
    return rc;
}
