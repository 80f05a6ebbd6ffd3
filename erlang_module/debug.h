/* Checked contracts of the debug build (ERLANG_DEBUG=1 sets ERPY_DEBUG):
 * ERPY_ASSERT(cond) aborts with the condition, file and line when cond is
 * false; in other builds it is not evaluated at all.  Needs no Python.h. */
#ifndef ERPY_DEBUG_H
#define ERPY_DEBUG_H

#ifdef ERPY_DEBUG
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static inline void
erpy_assert_failed(const char *cond, const char *file, int line)
{
    fprintf(stderr, "erlang._erlang: assertion failed: %s (%s:%d)\n", cond, file, line);
    abort();
}

#define ERPY_ASSERT(cond) ((cond) ? (void)0 : erpy_assert_failed(#cond, __FILE__, __LINE__))
/* The mutex is held (by some thread: default mutexes have no owner to ask).
 * When it is free the check takes it and fails, which aborts anyway. */
#define ERPY_ASSERT_LOCKED(m) ERPY_ASSERT(pthread_mutex_trylock(m) == EBUSY)
#else
#define ERPY_ASSERT(cond) ((void)0)
#define ERPY_ASSERT_LOCKED(m) ((void)0)
#endif

#endif
