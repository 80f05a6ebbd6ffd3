/* Frames from the helper: splitting a byte stream into frames and checking
 * each header before its length is trusted.  Pure: no I/O, no locks (the
 * worker count is one atomic load).  Used by the reader (wait.c) and by the
 * fuzzer's entry point erpy_parse_frames. */
#include <stdlib.h>
#include <string.h>

#include "transport_int.h"

void
erpy_frames_free(erpy_frame *f)
{
    while (f) {
        erpy_frame *n = f->next;
        free(f);
        f = n;
    }
}

/* Turns a complete frame body of length blen at src into a frame.  Returns
 * NULL when out of memory. */
erpy_frame *
erpy_frame_new(size_t blen)
{
    erpy_frame *f = malloc(sizeof(erpy_frame) + blen);
    if (f == NULL)
        return NULL;
    f->next = NULL;
    f->blen = blen;
    return f;
}

void
erpy_frame_parse_header(erpy_frame *f)
{
    if (f->blen >= ERPY_HEADER_SIZE) {
        f->kind = (uint8_t)f->body[0];
        f->worker = erpy_get_be32(f->body + 1);
        f->seq = erpy_get_be32(f->body + 5);
        f->payload = f->body + ERPY_HEADER_SIZE;
        f->plen = f->blen - ERPY_HEADER_SIZE;
    } else {
        /* Too short to carry a header: unroutable, dropped by dispatch. */
        f->kind = 0;
        f->worker = 0;
        f->seq = 0;
        f->payload = f->body + f->blen;
        f->plen = 0;
    }
}

/* Whether a frame header (9 bytes: kind, worker, seq) can come from the
 * helper.  Checked before a frame's length is trusted: if the stream ever got
 * out of step (raw bytes written to the emulator's fd 1), what is read as a
 * length is garbage, and waiting for that many bytes would swallow every
 * later reply.  A header that is not one of ours means the channel is
 * broken: the helper is killed and callers get HelperExited. */
static int
header_ok(const char *h)
{
    uint8_t kind = (uint8_t)h[0];
    uint32_t worker = erpy_get_be32(h + 1);
    if (worker == 0)
        return kind == ERPY_K_HELLO || kind == ERPY_K_OUTPUT || kind == ERPY_K_LOG ||
               kind == ERPY_K_CALLBACK || kind == ERPY_K_MESSAGE || kind == ERPY_K_MAILBOX_DOWN;
    if (worker == ERPY_ASYNC_WORKER)
        return kind == ERPY_K_OK || kind == ERPY_K_ERROR || kind == ERPY_K_OUTPUT;
    if (worker > __atomic_load_n(&erpy_n_workers, __ATOMIC_ACQUIRE))
        return 0;
    return kind == ERPY_K_OK || kind == ERPY_K_ERROR || kind == ERPY_K_OUTPUT ||
           kind == ERPY_K_CALLBACK;
}

/* Splits the complete frames at the start of buf[0..len) into new frames
 * appended to the list (*list, *tail; count added to *nframes).  Returns the bytes
 * consumed, or -1 on a protocol error (bad length or header; out of memory).
 * *need is set to the whole size (4 + Len) of an incomplete frame left at the
 * end once its header has been checked, else 0.  Pure: no I/O, no locks. */
ssize_t
erpy_split_frames(const char *buf, size_t len, erpy_frame **list, erpy_frame **tail,
             int *nframes, size_t *need)
{
    size_t pos = 0;
    *need = 0;
    while (len - pos >= 4) {
        size_t blen = erpy_get_be32(buf + pos);
        size_t have = len - pos - 4;
        if (blen < ERPY_HEADER_SIZE || blen > ERPY_MAX_FRAME)
            return -1;
        if (have < ERPY_HEADER_SIZE)
            break;
        if (!header_ok(buf + pos + 4))
            return -1;
        if (have < blen) {
            *need = 4 + blen;
            break;
        }
        erpy_frame *f = erpy_frame_new(blen);
        if (f == NULL)
            return -1;
        memcpy(f->body, buf + pos + 4, blen);
        erpy_frame_parse_header(f);
        *tail ? ((*tail)->next = f) : (*list = f);
        *tail = f;
        (*nframes)++;
        pos += 4 + blen;
    }
    return (ssize_t)pos;
}

ssize_t
erpy_parse_frames(const char *buf, size_t len, erpy_frame **list)
{
    erpy_frame *tail = NULL;
    int n = 0;
    size_t need;
    *list = NULL;
    ssize_t r = erpy_split_frames(buf, len, list, &tail, &n, &need);
    if (r < 0) {
        erpy_frames_free(*list);
        *list = NULL;
    }
    return r;
}
