"""Helpers of the limits tests (test_limits, test_slowloris, test_ws_limits):
the broker's /metrics and RSS, sockets bound to a chosen loopback source.
Library only, stdlib."""
import errno
import os
import resource
import socket

from harness import unix_exchange


def raise_fd_limit(want=8192):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def metrics(b):
    """/metrics of broker b as {name{labels}: float}."""
    data = unix_exchange(b.admin, b"GET /metrics HTTP/1.0\r\n\r\n")
    out = {}
    for ln in data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").splitlines():
        if ln and not ln.startswith("#"):
            k, _, v = ln.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def connect_from(src, port, timeout=5.0):
    """A TCP connection to 127.0.0.1:port from address src (e.g. 127.0.0.2)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def is_closed(s):
    """True if the peer closed (or reset) s; never blocks."""
    s.setblocking(False)  # a socket with a timeout would wait for it first
    if hasattr(s, "pending"):  # TLS: peek at the TCP stream under it
        s = socket.fromfd(s.fileno(), s.family, s.type)  # a dup of the descriptor
        try:
            return is_closed(s)
        finally:
            s.close()
    try:
        b = s.recv(65536, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError as e:
        return e.errno in (errno.ECONNRESET, errno.EPIPE)
    if b:
        try:  # bytes (a refusal) then maybe the close: drain and look again
            s.recv(65536, socket.MSG_DONTWAIT)
        except OSError:
            return True
        return is_closed(s)
    return True


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def sanitized(pid):
    """True if the process runs under AddressSanitizer (its quarantine and
    redzones make RSS figures meaningless: tests print them, bound loosely)."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            return "libasan" in f.read()
    except OSError:
        return False
