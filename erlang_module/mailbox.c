/* Mailboxes: each open mailbox is a waker in its helper's table, keyed by
 * the id its MESSAGE and MAILBOX_DOWN frames carry as their Seq (see
 * transport.h).  The table is an open hash of power-of-two buckets under
 * the helper's lock, like the pending-call table. */
#include <stdlib.h>

#include "transport_int.h"

static inline erpy_mbox **
mtab_slot(erpy_helper *b, uint32_t id)
{
    return &b->mtab[id & (b->mcap - 1)];
}

uint32_t
erpy_mbox_open(erpy_helper *b, erpy_waker *k)
{
    /* One id space for the process, as for async calls' Seqs: a frame of a
     * dead helper's mailbox can never name a later one. */
    static uint32_t last_id;
    erpy_mbox *m = calloc(1, sizeof *m);
    if (m == NULL) {
        errno = ENOMEM;
        return 0;
    }
    uint32_t id = __atomic_add_fetch(&last_id, 1, __ATOMIC_RELAXED);
    if (id == 0)
        id = __atomic_add_fetch(&last_id, 1, __ATOMIC_RELAXED);
    m->id = id;
    m->waker = k;
    pthread_mutex_lock(&b->lock);
    if (b->dead) {
        pthread_mutex_unlock(&b->lock);
        free(m);
        errno = EPIPE;
        return 0;
    }
    if (b->n_mbox >= b->mcap) {
        size_t ncap = b->mcap ? b->mcap * 2 : 16;
        erpy_mbox **nt = calloc(ncap, sizeof *nt);
        if (nt == NULL) {
            pthread_mutex_unlock(&b->lock);
            free(m);
            errno = ENOMEM;
            return 0;
        }
        for (size_t i = 0; i < b->mcap; i++) {
            for (erpy_mbox *x = b->mtab[i], *n; x; x = n) {
                n = x->hnext;
                x->hnext = nt[x->id & (ncap - 1)];
                nt[x->id & (ncap - 1)] = x;
            }
        }
        free(b->mtab);
        b->mtab = nt;
        b->mcap = ncap;
    }
    erpy_mbox **slot = mtab_slot(b, id);
    m->hnext = *slot;
    *slot = m;
    b->n_mbox++;
    pthread_mutex_unlock(&b->lock);
    return id;
}

void
erpy_mbox_close(erpy_helper *b, uint32_t id)
{
    erpy_mbox *found = NULL;
    pthread_mutex_lock(&b->lock);
    if (b->mcap > 0) {
        for (erpy_mbox **pp = mtab_slot(b, id); *pp; pp = &(*pp)->hnext) {
            if ((*pp)->id == id) {
                found = *pp;
                *pp = found->hnext;
                b->n_mbox--;
                break;
            }
        }
    }
    pthread_mutex_unlock(&b->lock);
    free(found);
}

void
erpy_mbox_forget_waker(erpy_helper *b, erpy_waker *k)
{
    pthread_mutex_lock(&b->lock);
    for (size_t i = 0; i < b->mcap; i++) {
        for (erpy_mbox **pp = &b->mtab[i]; *pp;) {
            erpy_mbox *m = *pp;
            if (m->waker == k) {
                *pp = m->hnext;
                b->n_mbox--;
                free(m);
            } else {
                pp = &m->hnext;
            }
        }
    }
    pthread_mutex_unlock(&b->lock);
}

/* Hands a MESSAGE or MAILBOX_DOWN frame to its mailbox's waker.  Consumes
 * f.  Returns the fd to wake once the lock is released, or -1.  Lock held. */
int
erpy_mbox_deliver(erpy_helper *b, erpy_frame *f)
{
    ERPY_ASSERT_LOCKED(&b->lock);
    erpy_mbox *m = NULL;
    if (b->mcap > 0) {
        for (m = *mtab_slot(b, f->seq); m && m->id != f->seq; m = m->hnext)
            ;
    }
    erpy_pending *p = m ? calloc(1, sizeof *p) : NULL;
    if (p == NULL) {
        /* A closed mailbox (its late messages are dropped, as Erlang drops
         * messages to a dead process), or out of memory. */
        free(f);
        return -1;
    }
    p->seq = f->seq;
    p->helper = b;
    p->waker = m->waker;
    p->reply = f;
    return erpy_waker_push(p);
}

/* The helper died: each mailbox gets a dead entry, and the table is
 * emptied (nothing will be delivered any more).  Lock held. */
void
erpy_mbox_fail_all(erpy_helper *b)
{
    ERPY_ASSERT_LOCKED(&b->lock);
    for (size_t i = 0; i < b->mcap; i++) {
        for (erpy_mbox *m = b->mtab[i], *n; m; m = n) {
            n = m->hnext;
            erpy_pending *p = calloc(1, sizeof *p);
            if (p != NULL) {
                p->seq = m->id;
                p->helper = b;
                p->waker = m->waker;
                p->dead = 1;
                erpy_wake_fd(erpy_waker_push(p));
            }
            free(m);
        }
        b->mtab[i] = NULL;
    }
    b->n_mbox = 0;
}
