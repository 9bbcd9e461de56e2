/* common/byteq.c: the transports' byte queue (see byteq.h). */
#include "common/byteq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int byteq_append(struct byteq *q, const void *data, size_t n)
{
    if (q->off == q->len)
        q->off = q->len = 0;
    if (q->len + n > q->cap) {
        if (q->off > 0) {
            memmove(q->p, q->p + q->off, q->len - q->off);
            q->len -= q->off;
            q->off = 0;
        }
        size_t nc = q->cap ? q->cap : 4096;
        while (nc < q->len + n)
            nc *= 2;
        if (nc > q->cap) {
            uint8_t *np = realloc(q->p, nc);
            if (np == NULL)
                return -1;
            q->p = np;
            q->cap = nc;
        }
    }
    memcpy(q->p + q->len, data, n);
    q->len += n;
    return 0;
}

int byteq_reserve(struct byteq *q, size_t n)
{
    if (q->off == q->len)
        q->off = q->len = 0;
    if (q->len + n <= q->cap)
        return 0;
    uint8_t *np = realloc(q->p, q->len + n);
    if (np == NULL)
        return -1;
    q->p = np;
    q->cap = q->len + n;
    return 0;
}

int byteq_send(struct byteq *q, int fd)
{
    while (q->off < q->len) {
        ssize_t w = send(fd, q->p + q->off, q->len - q->off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        q->off += (size_t)w;
    }
    q->off = q->len = 0;
    return 1;
}

void byteq_free(struct byteq *q)
{
    free(q->p);
    q->p = NULL;
    q->off = q->len = q->cap = 0;
}
