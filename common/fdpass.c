/* common/fdpass.c: datagrams with descriptors beside them (fdpass.h). */
#include "common/fdpass.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

ssize_t fdpass_send(int sock, const struct iovec *iov, int n, const int *fds, size_t n_fds,
                    int flags)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * FDPASS_MAX)];
        struct cmsghdr align;
    } cm;
    struct msghdr mh = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n };
    if (n_fds > FDPASS_MAX) {
        errno = EINVAL;
        return -1;
    }
    if (n_fds > 0) {
        memset(cm.buf, 0, CMSG_SPACE(sizeof(int) * n_fds));
        mh.msg_control = cm.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
    }
    ssize_t r;
    do
        r = sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
    while (r < 0 && errno == EINTR);
    return r;
}

ssize_t fdpass_recv(int sock, struct iovec *iov, int n, int *fds, size_t cap, size_t *n_fds,
                    int flags, int *msg_flags)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * FDPASS_MAX)];
        struct cmsghdr align;
    } cm;
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n, .msg_control = cm.buf,
                         .msg_controllen = sizeof(cm.buf) };
    ssize_t r;
    do
        r = recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
    while (r < 0 && errno == EINTR);
    size_t got = 0;
    for (struct cmsghdr *c = r >= 0 ? CMSG_FIRSTHDR(&mh) : NULL; c != NULL;
         c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int f;
            memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (fds != NULL && got < cap)
                fds[got++] = f;
            else
                close(f);
        }
    }
    if (n_fds != NULL)
        *n_fds = got;
    if (msg_flags != NULL)
        *msg_flags = r >= 0 ? mh.msg_flags : 0;
    return r;
}
