/* The growable byte buffer (buf.h).  Needs no Python: the transport uses it
 * without the GIL, the codec with it. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

/* One parked buffer for the next large encode.  term_to_binary encodes into
 * a fresh buffer and copies the result out.  For a large term, a new block
 * each time costs ~20% of encoding a 64 KiB binary (measured): it is
 * allocated right before the result, and the two copies then run at nearly
 * the same offset within a page, which stalls the CPU's loads behind its
 * stores (4K aliasing).  So a freed buffer of 4 KiB to 1 MiB is parked here
 * (its capacity in its first bytes) and taken by the next buffer that grows
 * past 4 KiB; small encodes never touch it.  Lock-free: buffers are freed
 * with or without the GIL. */
#define ERPY_SPARE_MIN ((size_t)4096)
#define ERPY_SPARE_MAX ((size_t)1 << 20)
static _Atomic(char *) erpy_spare;

int
erpy_buf_reserve_nogil(erpy_buf *b, size_t extra)
{
    if (extra <= b->cap - b->len)
        return 0;
    size_t need = b->len + extra;
    if (need < b->len)
        return -1;
    if (need > ERPY_SPARE_MIN && need <= ERPY_SPARE_MAX &&
        atomic_load_explicit(&erpy_spare, memory_order_relaxed) != NULL) {
        char *spare = atomic_exchange(&erpy_spare, NULL);
        if (spare != NULL) {
            size_t spare_cap;
            memcpy(&spare_cap, spare, sizeof spare_cap);
            if (spare_cap >= need) {
                if (b->len > 0)
                    memcpy(spare, b->data, b->len);
                free(b->data);
                b->data = spare;
                b->cap = spare_cap;
                return 0;
            }
            free(spare);
        }
    }
    /* Doubling, except that one large item (a big binary into a fresh
     * buffer) gets just its size: twice that crosses glibc's mmap threshold
     * (128 KiB) for a 64 KiB binary, and such a block, mmap'd or trimmed off
     * the top of the heap when freed, comes back from the kernel with page
     * faults on every call (measured: two brk calls per term_to_binary, and
     * up to 25x slower). */
    size_t cap = b->cap ? b->cap : 64;
    if (need > cap * 2 && cap <= SIZE_MAX / 2) {
        cap = need;
    }
    else {
        while (cap < need) {
            if (cap > SIZE_MAX / 2) {
                cap = need;
                break;
            }
            cap *= 2;
        }
    }
    char *d = realloc(b->data, cap);
    if (d == NULL)
        return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

void
erpy_buf_free(erpy_buf *b)
{
    if (b->cap >= ERPY_SPARE_MIN && b->cap <= ERPY_SPARE_MAX) {
        memcpy(b->data, &b->cap, sizeof b->cap);
        free(atomic_exchange(&erpy_spare, b->data));
    }
    else {
        free(b->data);
    }
    b->data = NULL;
    b->len = b->cap = 0;
}
