/* The helper process and its channel: start (spawn.c does the spawning),
 * stop, free, kill; reaping it and keeping its last words; the background
 * thread (leads when nobody waits, finishes the outbound queue) and the
 * stderr thread; which helper is current. */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "transport_int.h"

#define RBUF_SIZE (256 * 1024)
#define BG_IDLE_NS (5 * 1000000ULL)      /* bg thread leads after 5 ms without callers */
#define STALL_NS (50 * 1000000ULL)      /* waiters without a leader this long: rescued */

static void capture_err(erpy_helper *b, const char *buf, size_t n);

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static erpy_helper *current;

void
erpy_helper_after_fork(void)
{
    pthread_mutex_init(&current_lock, NULL);
    erpy_helper *b = current;
    current = NULL;
    if (b != NULL) {
        pthread_mutex_init(&b->lock, NULL);
        pthread_mutex_init(&b->tail_lock, NULL);
        b->dead = 1;
        b->exit_status = -1;
        static const char forked[] = "this process is a fork: the calls it had in flight "
                                     "belong to the parent's Erlang helper";
        _Static_assert(sizeof forked <= sizeof b->why, "fits in why");
        memcpy(b->why, forked, sizeof forked);
        erpy_async_after_fork(b);
        int fds[] = {b->to_fd, b->from_fd, b->err_fd, b->bg_pipe[0], b->bg_pipe[1]};
        for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
            if (fds[i] >= 0)
                close(fds[i]);
    }
}

erpy_helper *
erpy_helper_current(void)
{
    /* On every call's path: an atomic load, no lock.  Writers hold
     * current_lock and store with release ordering. */
    return __atomic_load_n(&current, __ATOMIC_ACQUIRE);
}

/* Reaps the helper after its stdout closed: waits up to wait_ms for it to
 * exit (it normally has already), then kills it.  Returns the wait status,
 * or -1.  Called by the one thread that saw EOF, without the lock. */
int
erpy_reap(erpy_helper *b, int wait_ms)
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

/* Reads the helper's stdout to its end (for at most 5 s, then kills the
 * helper) and records all of it, and what the reader had buffered, with its
 * stderr.  Only before HELLO, by the leader, without the lock. */
void
erpy_drain_dying_words(erpy_helper *b)
{
    static const char label[] = "\n(written to stdout:)\n";
    capture_err(b, label, sizeof label - 1);
    if (b->rend > b->rstart)
        capture_err(b, b->rbuf + b->rstart, b->rend - b->rstart);
    b->rstart = b->rend = 0;
    if (b->big != NULL) {
        /* A "frame" being read into a buffer of its own: its length bytes
         * and what came after them were text too. */
        char len[4];
        erpy_put_be32(len, (uint32_t)b->big->blen);
        capture_err(b, len, sizeof len);
        capture_err(b, b->big->body, b->big_have);
        erpy_frames_free(b->big);
        b->big = NULL;
    }
    uint64_t end = erpy_now_ns() + 5000ULL * 1000000ULL;
    char buf[4096];
    for (;;) {
        uint64_t now = erpy_now_ns();
        if (now >= end) {
            if (b->pid > 0)
                kill(b->pid, SIGKILL);
            break;
        }
        struct pollfd pf = {b->from_fd, POLLIN, 0};
        int r = poll(&pf, 1, erpy_ms_until(end, now));
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

static uint64_t stall_rescues;

uint64_t
erpy_stall_rescues(void)
{
    return __atomic_load_n(&stall_rescues, __ATOMIC_RELAXED);
}

static void *
bg_main(void *arg)
{
    erpy_helper *b = arg;
    erpy_block_all_signals();
    pthread_mutex_lock(&b->lock);
    while (!b->dead) {
        uint64_t now = erpy_now_ns();
        uint64_t idle = now - b->last_activity_ns;
        if (b->leader == NULL && b->n_waiting == 0 &&
            (idle >= BG_IDLE_NS || b->hello == NULL || b->n_pending > 0)) {
            b->leader = ERPY_BG;
            pthread_mutex_unlock(&b->lock);
            int r = erpy_lead_once(b, NULL, 200, b->bg_pipe[0]);
            pthread_mutex_lock(&b->lock);
            if (r == ERPY_LEAD_DEAD)
                break;
            if (b->leader == ERPY_BG) {
                b->leader = NULL;
                if (b->n_waiting > 0)
                    erpy_wake_fd(erpy_promote(b, NULL));   /* rare: under the lock */
            }
            continue;
        }
        if (b->leader == NULL && b->n_waiting > 0 && idle >= STALL_NS) {
            /* A safety net: whoever leaves the leader's role promotes a
             * successor, so waiters should never be left without one.
             * Counted, so that tests can tell that it never had to act. */
            int fd = erpy_promote(b, NULL);
            if (fd >= 0) {
                __atomic_fetch_add(&stall_rescues, 1, __ATOMIC_RELAXED);
                erpy_wake_fd(fd);
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
                erpy_drain_fd(b->bg_pipe[0]);
            if (pf[1].revents)
                erpy_oq_kick(b);
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
capture_err(erpy_helper *b, const char *buf, size_t n)
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
    erpy_helper *b = arg;
    erpy_block_all_signals();
    char buf[4096];
    for (;;) {
        ssize_t n = read(b->err_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        capture_err(b, buf, (size_t)n);
        erpy_frame *f = erpy_frame_new((size_t)n);
        if (f) {
            memcpy(f->body, buf, (size_t)n);
            f->kind = ERPY_K_RAW_STDERR;
            f->worker = f->seq = 0;
            f->payload = f->body;
            f->plen = (size_t)n;
            erpy_output_push(f);
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
erpy_helper_stderr_text(erpy_helper *b, char *dst, size_t cap)
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

erpy_helper *
erpy_helper_start(char *const argv[], char *const envp[], int *err)
{
    erpy_helper *b = calloc(1, sizeof *b);
    if (b == NULL) {
        *err = ENOMEM;
        return NULL;
    }
    b->rbuf = malloc(RBUF_SIZE);
    b->rcap = RBUF_SIZE;
    b->refs = 1;   /* the current-helper slot's */
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
        erpy_helper_kill(b);
        close(b->to_fd);
        close(b->from_fd);
        close(b->err_fd);
        goto fail;
    }
    if ((*err = start_thread(&b->bg_thread, bg_main, b)) != 0) {
        /* The stderr thread ends on its own when the helper dies. */
        b->threads_running = 1;
        erpy_helper_kill(b);
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
erpy_helper_wait_hello(erpy_helper *b, int slice_ms)
{
    struct timespec ts = erpy_abs_time_ms(slice_ms);
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
erpy_helper_kill(erpy_helper *b)
{
    if (b->pid > 0)
        kill(b->pid, SIGKILL);
}

int
erpy_helper_stop(erpy_helper *b, int timeout_ms)
{
    pthread_mutex_lock(&b->lock);
    b->stopping = 1;
    pthread_mutex_unlock(&b->lock);
    /* A write in progress to a helper that does not read (stopped, or
     * swamped) could hold wlock for ever: after timeout_ms, kill the helper,
     * which ends that write with EPIPE. */
    uint64_t until = erpy_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ULL;
    if (erpy_wlock_until(b, until) != 0) {
        erpy_helper_kill(b);
        pthread_mutex_lock(&b->wlock);
    }
    if (b->to_fd >= 0) {
        close(b->to_fd);     /* stdin EOF: the helper halts at once */
        b->to_fd = -1;
    }
    pthread_mutex_unlock(&b->wlock);
    pthread_mutex_lock(&b->lock);
    erpy_wake_fd(b->bg_pipe[1]);
    struct timespec ts = erpy_abs_time_ms(timeout_ms);
    while (!b->dead) {
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
            break;
    }
    if (!b->dead) {
        /* Did not halt in time (or nobody reads its stdout): kill it; the
         * reader then sees EOF and reaps it. */
        erpy_helper_kill(b);
        ts = erpy_abs_time_ms(2000);
        while (!b->dead) {
            if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
                break;
        }
    }
    /* Let the threads finish so that nothing of ours still runs after stop. */
    ts = erpy_abs_time_ms(1000);
    while (b->threads_running > 0) {
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
            break;
    }
    if (b->dead && b->threads_running == 0 && !b->closed) {
        /* Nobody reads these any more (a dead helper has no leader). */
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
        erpy_oq_drop_locked(b);
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
erpy_helper_free(erpy_helper *b)
{
    erpy_frames_free(b->hello);
    erpy_frames_free(b->big);
    free(b->rbuf);
    erpy_oq_drop_locked(b);
    free(b->ptab);   /* empty: a dead helper's calls went to their wakers */
    free(b->mtab);   /* empty too (erpy_mbox_fail_all) */
    pthread_mutex_destroy(&b->wlock);
    pthread_mutex_destroy(&b->lock);
    pthread_mutex_destroy(&b->tail_lock);
    pthread_cond_destroy(&b->cond);
    free(b);
}
