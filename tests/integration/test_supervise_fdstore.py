#!/usr/bin/python3
"""spice-broker --supervise under systemd's file-descriptor store: the keeper
and its broker killed together (as systemd kills a service's cgroup), then
started again with the stored descriptors, without a disconnect (issue 10
item 7).

systemd is not PID 1 in CI, so a stand-in plays its part of the protocol
(sd_notify(3), sd_listen_fds_with_names(3)): a NOTIFY_SOCKET that takes
FDSTORE=1/FDNAME= (with the descriptor beside it, SCM_RIGHTS) and
FDSTOREREMOVE=1, and a restart that passes what it holds as LISTEN_FDS,
LISTEN_FDNAMES and LISTEN_PID, from descriptor 3 on. The real parts: QEMU
with the echo guest, spice-gtk typing a key every 0.2 s and watching the
display, the broker.
  - while the session runs, the store holds the keep region, the listening
    sockets and both sockets of each of the session's channels (named
    chan-GEN-WORKER-SLOT-c/b), and none of a channel that ended;
  - SIGKILL to the keeper and the broker together; the stand-in starts
    `spice-broker --supervise` again at once with the store's descriptors;
  - the new keeper resumes the session in a new broker: no channel closes,
    the display updates again within 1.5 s of the kill, every key typed is
    echoed exactly once, in order; the store then names the new broker's
    generation only.
"""
import array
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from harness import Broker, Qemu, Target, check, check_echo, log, run, token, wait_until

KEYS = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1E, 0x1F,
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x2C, 0x2D, 0x2E, 0x2F, 0x30]
KEY_INTERVAL = 0.2
CLIENT_SECONDS = 12.0
BACK_WITHIN = 1.5


class FdStore(threading.Thread):
    """Stand-in for systemd's side of NOTIFY_SOCKET: the fd store."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.lock = threading.Lock()
        self.fds = []          # [(name, fd)] in the order stored
        self.ready = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                msg, fds, _, _ = socket.recv_fds(self.sock, 4096, 16)
            except socket.timeout:
                continue
            except OSError:
                return
            kv = dict(ln.split("=", 1) for ln in msg.decode(errors="replace").splitlines()
                      if "=" in ln)
            with self.lock:
                if kv.get("READY") == "1":
                    self.ready += 1
                if kv.get("FDSTORE") == "1":
                    name = kv.get("FDNAME", "stored")
                    self.fds += [(name, fd) for fd in fds]
                    fds = []
                if kv.get("FDSTOREREMOVE") == "1":
                    name = kv.get("FDNAME")
                    for n, fd in [x for x in self.fds if x[0] == name]:
                        os.close(fd)
                    self.fds = [x for x in self.fds if x[0] != name]
            for fd in fds:
                os.close(fd)

    def names(self):
        with self.lock:
            return [n for n, _ in self.fds]

    def close(self):
        self.stop.set()
        self.join(2)
        with self.lock:
            for _, fd in self.fds:
                os.close(fd)
            self.fds = []
        self.sock.close()


def restart(b, store):
    """Start the broker again as systemd would: the stored fds from 3 on."""
    with store.lock:
        entries = list(store.fds)
    n = len(entries)
    names = ":".join(x[0] for x in entries)
    src = [x[1] for x in entries]

    def place():
        # every source above the targets first, then into 3..3+n-1
        high = [os.dup(fd) for fd in src]
        moved = []
        for fd in high:
            moved.append(fcntl_dup_above(fd, 3 + n + 64))
            os.close(fd)
        for i, fd in enumerate(moved):
            os.dup2(fd, 3 + i, inheritable=True)
            os.close(fd)
    env = dict(os.environ, LISTEN_FDS=str(n), LISTEN_FDNAMES=names, NOTIFY_SOCKET=store.path)
    argv = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"'] + b.argv()
    err = open(b.log_path, "ab")
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                         preexec_fn=place, pass_fds=list(range(3, 3 + n)))
    err.close()
    b.env.procs.append((b.name + "-restarted", p))
    return p


def fcntl_dup_above(fd, lowest):
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)


def test(env):
    q = Qemu(env, all_devices=False).start()
    store = FdStore(env.path("notify.sock"))
    store.start()
    os.environ["NOTIFY_SOCKET"] = store.path
    try:
        b = Broker(env, link_timeout=2, backend_timeout=2, extra=["--supervise"]).start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        wait_until(lambda: store.ready > 0, 10, what="READY=1")
        tok = token("fds")
        b.token_add(tok, "127.0.0.1", q.spice_port)
        base = len(q.serial_bytes())
        c = Target(env, b, q, tok).client(seconds=CLIENT_SECONDS, smartcard=False,
                                          inval_timestamps=True, keys=KEYS, keys_start=0.5,
                                          key_interval=KEY_INTERVAL).start()
        c.wait_ready(15)
        sid = b.sessions()[0]["id"]
        time.sleep(2.5)
        names = store.names()
        chans = sorted(n for n in names if n.startswith("chan-"))
        log("fd store: %d descriptors: keep-region %s, %d listening, %d channel sockets" % (
            len(names), "keep-region" in names, sum(n.startswith("listen-") for n in names),
            len(chans)))
        check("keep-region" in names, "the keep region is not in the store: %s" % names)
        check(any(n.startswith("listen-") for n in names), "no listening socket stored")
        n_chans = len(b.sessions()[0].get("channels") or []) or 4
        check(len(chans) == 2 * n_chans, "%d channel sockets stored for %d channels: %s" % (
            len(chans), n_chans, chans))

        keeper, child = b.proc.pid, b.status()["pid"]
        t_kill = time.monotonic()
        os.kill(child, signal.SIGKILL)
        os.kill(keeper, signal.SIGKILL)
        b.proc.wait(5)
        time.sleep(0.2)   # the last datagrams of the dead reach the stand-in
        b.proc = restart(b, store)
        new = wait_until(lambda: (lambda p: p if p not in (child, keeper) else None)(
            b.status()["pid"]), 15, what="a broker under the new keeper")
        log("keeper %d and broker %d killed; keeper %d, broker %d serve %.0f ms later" % (
            keeper, child, b.proc.pid, new, (time.monotonic() - t_kill) * 1000))
        check(sid in [x["id"] for x in b.sessions()], "session %08x not resumed" % sid)

        r = c.finish()
        check(r["main_opened"], "main channel never opened: %s" % r["errors"])
        check(not r["errors"], "channels closed or failed across the restart: %s" % r["errors"])
        closed = [k for k, v in r["channels"].items()
                  if v.get("closed_t") is not None and v["closed_t"] < r["duration"] - 0.5]
        check(not closed, "channels closed before the client's end: %s" % closed)
        ts = r["invalidate"]["timestamps"] or []
        kt = t_kill - r["mono0"]
        after = [x for x in ts if x > kt]
        check(after and after[0] - kt < BACK_WITHIN, "the display came back %s s after the "
              "kill" % ("%.3f" % (after[0] - kt) if after else "never"))
        log("display: first update %.0f ms after the kill" % ((after[0] - kt) * 1000))
        sent = r["keys"]["sent"]
        check(r["keys"]["dropped"] == 0 and len(sent) == 2 * len(KEYS),
              "the client could not send every key (sent %d, dropped %d)" % (
                  len(sent), r["keys"]["dropped"]))
        want = check_echo(q, base, sent)
        log("every one of %d key events echoed once, in order, across the restart" % len(want))
        text = b.log_text()
        check("started by systemd with its fd store" in text and
              "1 sessions resumed in broker pid" in text, "the new keeper's log lacks its "
              "resumption")
        # the session ended with the client: its channels left the store, the
        # old generation's names too
        wait_until(lambda: not any(n.startswith("chan-") for n in store.names()), 10,
                   what="the ended session's sockets out of the store")
        log("fd store after the session: %s" % sorted(set(store.names())))
    finally:
        b.stop()
        store.close()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
