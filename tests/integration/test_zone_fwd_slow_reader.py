#!/usr/bin/python3
"""A forwarded channel behind a client that stops reading costs the
forwarding broker no CPU (regression test for 5ad30b3, session/fwd.c
pump_dir/pipe_arm: a source armed for reading and not read spun the
forwarding worker at 100%).

Two brokers (A, B) on one etcd with --peer-listen and --zone-secret (as in
test_zone_haproxy). spice_peer's synthetic SPICE server is the backend: its
display channel streams without end under the ACK window. spice_peer's
throughput client links its main channel to A (the owner) and its display
channel straight to B (--display-connect), which carries it to A over the
peer link. While the display streams, the client turns into a slow reader
(a 4 KiB socket buffer; stopped with SIGSTOP, reading 5 ms every 250 ms):
the stream backs up through B. Over those 3 s, B's CPU time (utime + stime
from /proc/PID/stat) stays under 0.5 s. Skipped when spice_peer is not built.

Then `spice-brokerctl upgrade` of B under the streaming forwarded channel:
a forwarded pipe is not carried by the hand-over, so B's old process must
serve it on past the drain's settle time (link + backend timeouts, 4 s
here) instead of exiting as if it had nothing left (it counted sessions
only, and closed the pipe with it): the old process is alive 5 s after the
new one serves, the display still streams to the client through it, and
once the client is gone the old process exits.

Not a proven guard of 5ad30b3: run against the build before it
(9863913), it passes too (0.01-0.02 s CPU). The spin needed B's source
readable while its sink is blocked with a part-full buffer; here the
owner stops the stream at its ACK window toward the stalled client before
that happens. A client that acks while reading slowly (spice-gtk under
load) would be needed; spice_peer acks as it reads.
"""
import os
import signal
import subprocess
import sys
import time

from harness import (Etcd, TestSkip, check, log, no_direct, run, spice_peer_server, token,
                     wait_until)
from limitsutil import metrics
from test_upgrade import kill_pid
from test_zone_haproxy import counts, zone_broker, zone_secret

CPU_WINDOW = 3.0
CPU_MAX = 0.5
STOP_S, RUN_S = 0.25, 0.005
RCVBUF = 4096     # the client's socket buffer: the display's ACK window outruns it


def to_client(b):
    return int(metrics(b).get('spice_broker_bytes_total{direction="to_client"}', 0))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test(env):
    no_direct(env)
    exe = os.environ.get("SPICE_PEER") or os.path.join(env.build_dir or "",
                                                        "tests/bench/spice_peer")
    if not os.access(exe, os.X_OK):
        raise TestSkip("tests/bench/spice_peer not built")
    etcd = Etcd(env).start()
    secret = zone_secret(env)
    a = zone_broker(env, "a", etcd, secret)
    b = zone_broker(env, "b", etcd, secret, link_timeout=2, backend_timeout=2)
    _, peer_port = spice_peer_server(env, exe=exe)
    cl = None
    new_pid = None
    try:
        tok = token("fwd")
        a.token_add(tok, "127.0.0.1", peer_port)
        cl = subprocess.Popen([exe, "client", "--connect", "127.0.0.1:%d" % a.port,
                               "--display-connect", "127.0.0.1:%d" % b.port, "--password", tok,
                               "--rcvbuf", str(RCVBUF),
                               "throughput", "--seconds", "40"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        env.procs.append(("spice_peer client", cl))
        wait_until(lambda: counts(b)[0] >= 1 and counts(a)[1] >= 1, 10,
                   what="the display channel forwarded from B to A")
        sess = wait_until(lambda: a.sessions(), 5, what="the session at A")
        check(not b.sessions(), "B holds a session")
        bpid = b.proc.pid
        c0, m0 = cpu_seconds(bpid), to_client(a)
        time.sleep(1.5)
        streaming, moved = cpu_seconds(bpid) - c0, to_client(a) - m0
        log("display streaming through B (forwarded out %d, into A %d): %.0f MB in 1.5 s, B "
            "used %.2f s CPU; session %08x at A" % (counts(b)[0], counts(a)[1], moved / 1e6,
                                                   streaming, sess[0]["id"]))
        check(moved > 10e6, "the display hardly streamed: %d bytes in 1.5 s" % moved)
        check(cl.poll() is None, "the client ended early")
        # A slow reader: stopped, with a short burst of reading now and then
        # (the sink unblocks, the buffer empties, the next read from the peer
        # link may leave it part full: the case that spun).
        c1, t1 = cpu_seconds(bpid), time.monotonic()
        while time.monotonic() - t1 < CPU_WINDOW:
            os.kill(cl.pid, signal.SIGSTOP)
            time.sleep(STOP_S)
            os.kill(cl.pid, signal.SIGCONT)
            time.sleep(RUN_S)
        os.kill(cl.pid, signal.SIGSTOP)
        used, took = cpu_seconds(bpid) - c1, time.monotonic() - t1
        log("slow client (stopped %.0f ms, reading %.0f ms, in turn): B (the forwarder) used "
            "%.3f s CPU in %.1f s (bound %.1f s)" % (STOP_S * 1000, RUN_S * 1000, used, took,
                                                    CPU_MAX))
        check(used < CPU_MAX, "the forwarding broker spun behind the stopped client: %.2f s "
              "CPU in %.1f s" % (used, took))
        check(b.alive() and a.alive(), "a broker died")
        os.kill(cl.pid, signal.SIGCONT)

        # B handed over to a new process: the forwarded pipe stays in the old one
        rc, out, err = b.ctl("upgrade", timeout=45)
        check(rc == 0, "upgrade of B: rc=%d %s %s" % (rc, out, err))
        new_pid = b.status()["pid"]
        check(new_pid != bpid, "B's status pid did not change")
        m1 = to_client(a)
        time.sleep(5.0)
        moved = to_client(a) - m1
        check(b.alive(), "B's old process (pid %d) exited while its forwarded channel lived:\n%s"
              % (bpid, b.log_text()[-2000:]))
        check(cl.poll() is None and moved > 1e6,
              "the display stopped streaming through B's old process (%d bytes in 5 s)" % moved)
        log("upgrade of B: pid %d serves, pid %d still relays the forwarded display (%.0f MB "
            "in 5 s)" % (new_pid, bpid, moved / 1e6))
        cl.kill()
        cl.wait(timeout=5)
        wait_until(lambda: not b.alive(), 10, what="B's old process exiting after its pipe ended")
        log("B's old process exited once the client was gone")
    finally:
        if cl is not None and cl.poll() is None:
            os.kill(cl.pid, signal.SIGCONT)
            cl.kill()
        a.stop()
        b.stop()
        kill_pid(new_pid)
        etcd.stop()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
