/* Frame queues filled by the reader and emptied by a Python thread: the
 * output queue (helper output that no waiting call claims: background
 * processes, async calls, LOG events, and the helper's raw stderr; taken by
 * the output pump) and the callback queue (CALLBACK frames not addressed to
 * a waiting thread: py:call_python from any other Erlang process and
 * py:cast_python, taken by the python_workers pool).  The output queue is
 * bounded: past OUTPUT_QUEUE_MAX bytes nobody is printing, and new output is
 * dropped.  The callback queue is not: every frame in it is a call an Erlang
 * process waits on (or a cast it made), and dropping one would hang it. */
#include <stdint.h>
#include <stdlib.h>

#include "transport_int.h"

#define OUTPUT_QUEUE_MAX (8u << 20)     /* bytes of unclaimed output kept at most */

typedef struct fqueue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    erpy_frame *head, *tail;
    size_t bytes, max;
    uint64_t dropped;
    unsigned wakes;
} fqueue;

#define FQUEUE_INIT(m) {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, (m), 0, 0}

static fqueue out_q = FQUEUE_INIT(OUTPUT_QUEUE_MAX);
static fqueue cb_q = FQUEUE_INIT(SIZE_MAX);

static void
fq_push(fqueue *q, erpy_frame *f)
{
    pthread_mutex_lock(&q->lock);
    if (q->bytes + f->blen > q->max) {
        q->dropped += f->blen;   /* nobody is taking them: keep memory bounded */
        free(f);
    } else {
        f->next = NULL;
        if (q->tail)
            q->tail->next = f;
        else
            q->head = f;
        q->tail = f;
        q->bytes += f->blen;
        pthread_cond_signal(&q->cond);
    }
    pthread_mutex_unlock(&q->lock);
}

static erpy_frame *
fq_next(fqueue *q, int timeout_ms)
{
    struct timespec ts = erpy_abs_time_ms(timeout_ms);
    pthread_mutex_lock(&q->lock);
    unsigned wakes = q->wakes;
    while (q->head == NULL && wakes == q->wakes) {
        if (pthread_cond_timedwait(&q->cond, &q->lock, &ts) == ETIMEDOUT)
            break;
    }
    erpy_frame *f = q->head;
    if (f) {
        q->head = f->next;
        if (q->head == NULL)
            q->tail = NULL;
        q->bytes -= f->blen;
        f->next = NULL;
    }
    pthread_mutex_unlock(&q->lock);
    return f;
}

static void
fq_wake(fqueue *q)
{
    pthread_mutex_lock(&q->lock);
    q->wakes++;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* In a forked child: a fresh lock; the frames are the parent's business
 * (leaked: the child cannot know whether another thread held the lock). */
static void
fq_after_fork(fqueue *q)
{
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->head = q->tail = NULL;
    q->bytes = 0;
}

void
erpy_output_push(erpy_frame *f)
{
    fq_push(&out_q, f);
}

erpy_frame *
erpy_output_next(int timeout_ms)
{
    return fq_next(&out_q, timeout_ms);
}

void
erpy_output_wake(void)
{
    fq_wake(&out_q);
}

void
erpy_callback_push(erpy_frame *f)
{
    fq_push(&cb_q, f);
}

erpy_frame *
erpy_callback_next(int timeout_ms)
{
    return fq_next(&cb_q, timeout_ms);
}

void
erpy_callback_wake(void)
{
    fq_wake(&cb_q);
}

void
erpy_output_after_fork(void)
{
    fq_after_fork(&out_q);
    fq_after_fork(&cb_q);
}
