/* A growable byte buffer, shared by the codec (GIL held) and the transport
 * (no GIL).  Needs no Python.h. */
#ifndef ERPY_BUF_H
#define ERPY_BUF_H

#include <stddef.h>

/* Owned by whoever embeds it; free with erpy_buf_free.  Never shrinks on
 * its own. */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} erpy_buf;

/* Makes room for `extra` more bytes after len.  Returns 0, or -1 when out of
 * memory (no Python exception: callable without the GIL). */
int erpy_buf_reserve_nogil(erpy_buf *b, size_t extra);
/* Frees b's memory (or parks it for the next large encode) and empties it. */
void erpy_buf_free(erpy_buf *b);

#endif
