/* common/byteq.h: a byte queue for the transports (session/transport.c):
 * bytes of their own (a TLS record, a WebSocket control frame) that the
 * socket has not taken yet. Grows by doubling, reuses its space once
 * drained; byteq_free() gives it back. Not thread-safe. */
#ifndef SB_BYTEQ_H
#define SB_BYTEQ_H

#include <stddef.h>
#include <stdint.h>

struct byteq {
    uint8_t *p;
    size_t off, len, cap;   /* waiting bytes are p[off..len) */
};

static inline size_t byteq_size(const struct byteq *q)
{
    return q->len - q->off;
}

/* Appends n bytes; -1 when out of memory. */
int byteq_append(struct byteq *q, const void *data, size_t n);

/* Makes room for n more bytes at once (one allocation instead of several
 * doublings); -1 when out of memory. */
int byteq_reserve(struct byteq *q, size_t n);

/* Sends what it can to fd (non-blocking, MSG_NOSIGNAL). Returns 1 when the
 * queue is empty, 0 when the socket is full (wait for EV_WRITE), -1 when the
 * socket failed. */
int byteq_send(struct byteq *q, int fd);

void byteq_free(struct byteq *q);

#endif
