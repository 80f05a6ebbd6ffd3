/* Big-endian 32-bit fields: frame headers and ETF lengths.  Needs no
 * Python.h. */
#ifndef ERPY_BE_H
#define ERPY_BE_H

#include <stdint.h>

static inline void
erpy_put_be32(void *p, uint32_t v)
{
    unsigned char *u = p;
    u[0] = (unsigned char)(v >> 24);
    u[1] = (unsigned char)(v >> 16);
    u[2] = (unsigned char)(v >> 8);
    u[3] = (unsigned char)v;
}

static inline uint32_t
erpy_get_be32(const void *p)
{
    const unsigned char *u = p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}

#endif
