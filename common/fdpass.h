/* common/fdpass.h: one datagram on a unix socket with descriptors beside it
 * (SCM_RIGHTS): the live hand-over (broker/upgrade.c), the keeper's socket
 * (broker/keeper.c, session/keep.c). */
#ifndef SB_FDPASS_H
#define SB_FDPASS_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/* At most this many descriptors in one message (the kernel's SCM_MAX_FD). */
#define FDPASS_MAX 253

/* Sends iov[0..n) and fds[0..n_fds) (n_fds <= FDPASS_MAX) in one sendmsg
 * (MSG_NOSIGNAL | flags, EINTR retried): the bytes sent, or -1 (errno). */
ssize_t fdpass_send(int sock, const struct iovec *iov, int n, const int *fds, size_t n_fds,
                    int flags);
/* Receives one datagram into iov[0..n) (flags | MSG_CMSG_CLOEXEC, EINTR
 * retried): the bytes, 0 at the end, or -1 (errno). The descriptors beside
 * it go to fds (at most cap, *n_fds of them; any more are closed), its
 * msg_flags to *msg_flags (MSG_TRUNC, MSG_CTRUNC), if not NULL. */
ssize_t fdpass_recv(int sock, struct iovec *iov, int n, int *fds, size_t cap, size_t *n_fds,
                    int flags, int *msg_flags);

#endif
