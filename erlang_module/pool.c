/* The worker pool: one erpy_worker per thread that calls, kept in a pthread
 * key slot and returned to the pool when the thread exits; and the fork
 * handler, which resets the pool (and the rest of the transport's global
 * state) in a child. */
#include <fcntl.h>
#include <stdlib.h>

#include "transport_int.h"

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
erpy_worker *erpy_chunks[ERPY_MAX_CHUNKS];
uint32_t erpy_n_workers;              /* published with release ordering */
static erpy_worker *free_list;
static pthread_key_t worker_key;

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

/* pthread key destructor: the thread is exiting, its worker goes back to the
 * pool.  A worker still registered as waiting (its thread was ended in the
 * middle of a call at interpreter shutdown) is left out of the pool. */
static void
worker_release(void *p)
{
    erpy_worker *w = p;
    if (__atomic_load_n(&w->wait_seq, __ATOMIC_ACQUIRE) != 0)
        return;
    if (w->nested != NULL) {
        worker_release(w->nested);
        w->nested = NULL;
    }
    if (w->out.cap > 1 << 20)
        erpy_buf_free(&w->out);
    pthread_mutex_lock(&pool_lock);
    w->in_use = 0;
    w->free_next = free_list;
    free_list = w;
    pthread_mutex_unlock(&pool_lock);
}

/* A worker from the free list, or a new one; with its pipe.  NULL with
 * errno set. */
static erpy_worker *
worker_take(void)
{
    erpy_worker *w;
    pthread_mutex_lock(&pool_lock);
    w = free_list;
    if (w != NULL) {
        free_list = w->free_next;
    } else {
        uint32_t n = erpy_n_workers;
        if (n >= ERPY_MAX_CHUNKS * ERPY_CHUNK_SIZE) {
            pthread_mutex_unlock(&pool_lock);
            errno = EMFILE;
            return NULL;
        }
        if (erpy_chunks[n >> ERPY_CHUNK_BITS] == NULL) {
            erpy_worker *c = calloc(ERPY_CHUNK_SIZE, sizeof(erpy_worker));
            if (c == NULL) {
                pthread_mutex_unlock(&pool_lock);
                errno = ENOMEM;
                return NULL;
            }
            for (uint32_t i = 0; i < ERPY_CHUNK_SIZE; i++) {
                c[i].id = (n & ~(ERPY_CHUNK_SIZE - 1)) + i + 1;
                c[i].pipe_r = c[i].pipe_w = -1;
            }
            erpy_chunks[n >> ERPY_CHUNK_BITS] = c;
        }
        w = &erpy_chunks[n >> ERPY_CHUNK_BITS][n & (ERPY_CHUNK_SIZE - 1)];
        __atomic_store_n(&erpy_n_workers, n + 1, __ATOMIC_RELEASE);
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
    return w;
}

erpy_worker *
erpy_worker_get(void)
{
    erpy_worker *w = pthread_getspecific(worker_key);
    if (w != NULL)
        return w;
    if ((w = worker_take()) == NULL)
        return NULL;
    if (pthread_setspecific(worker_key, w) != 0) {
        worker_release(w);
        errno = ENOMEM;
        return NULL;
    }
    return w;
}

erpy_worker *
erpy_worker_nested(erpy_worker *w)
{
    if (w->nested == NULL)
        w->nested = worker_take();
    return w->nested;
}

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
    erpy_helper_after_fork();
    erpy_output_after_fork();
    erpy_worker *mine = pthread_getspecific(worker_key);
    free_list = NULL;
    uint32_t n = erpy_n_workers;
    for (uint32_t i = 0; i < n; i++) {
        erpy_worker *w = &erpy_chunks[i >> ERPY_CHUNK_BITS][i & (ERPY_CHUNK_SIZE - 1)];
        if (w->pipe_r >= 0) {
            close(w->pipe_r);
            close(w->pipe_w);
            w->pipe_r = w->pipe_w = -1;
        }
        w->wait_helper = NULL;
        w->wait_seq = 0;
        w->has_reply = 0;
        w->inbox = w->inbox_tail = NULL;   /* leaked: a few frames at most */
        w->wnext = w->wprev = NULL;
        w->in_callback = 0;
        w->nested = NULL;   /* a forking callback's nested workers: free in the child */
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

