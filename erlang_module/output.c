/* The output queue: helper output that no waiting call claims (background
 * processes, async calls, LOG events) and the helper's raw stderr, taken by
 * the output pump (erpy_output_next).  Bounded: past OUTPUT_QUEUE_MAX bytes
 * nobody is printing, and new output is dropped. */
#include <stdlib.h>

#include "transport_int.h"

#define OUTPUT_QUEUE_MAX (8u << 20)     /* bytes of unclaimed output kept at most */

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t out_cond = PTHREAD_COND_INITIALIZER;
static erpy_frame *out_head, *out_tail;
static size_t out_bytes;
static uint64_t out_dropped;
static unsigned out_wakes;

void
erpy_output_push(erpy_frame *f)
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
    struct timespec ts = erpy_abs_time_ms(timeout_ms);
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

void
erpy_output_after_fork(void)
{
    pthread_mutex_init(&out_lock, NULL);
    pthread_cond_init(&out_cond, NULL);
    out_head = out_tail = NULL;
    out_bytes = 0;
}
