#!/usr/bin/python3
"""tests/bench/peer_handshake_bench.py: what mutual TLS costs a forwarded
channel on the peer link. Starts one spice-broker (embedded store, one
worker) with --peer-listen and a zone secret, once plain and once with
--peer-ca/--peer-cert/--peer-key (test certificates from
tests/integration/tlsutil.py: RSA-2048 and P-256), and times N connections
from a client holding the zone's certificate: connect until the owner's
40-byte challenge is read (with TLS: the whole TLS 1.3 handshake, both
certificates verified, first). Prints one line per mode; nothing is
asserted. Every process it starts is stopped by PID; its files live in one
temp dir, removed at the end.

  tests/bench/peer_handshake_bench.py --build-dir BUILD [--count 100]
"""
import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import tlsutil  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run_mode(exe, tmp, name, secret, pki, count):
    d = os.path.join(tmp, name)
    os.makedirs(os.path.join(d, "store"), mode=0o700)
    peer = free_port()
    argv = [exe, "--listen", "127.0.0.1:%d" % free_port(), "--admin",
            "unix:" + os.path.join(d, "admin.sock"), "--store", "embedded:" + d + "/store",
            "--journal", os.path.join(d, "journal"), "--workers", "1", "--broker-id", name,
            "--peer-listen", "127.0.0.1:%d" % peer, "--zone-secret", secret]
    if pki:
        argv += ["--peer-ca", pki["ca_cert"], "--peer-cert", pki["server_cert"],
                 "--peer-key", pki["server_key"]]
    with open(os.path.join(d, "broker.log"), "wb") as logf:
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", peer), timeout=0.5).close()
                break
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("%s: the broker did not start (see %s)" % (name, d))
                time.sleep(0.05)
        time.sleep(3.2)   # the probe connection above times out first
        ctx = None
        if pki:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.check_hostname = False
            ctx.load_verify_locations(pki["ca_cert"])
            ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
        ts = []
        for _ in range(count):
            t = time.perf_counter()
            s = socket.create_connection(("127.0.0.1", peer), timeout=5)
            if ctx is not None:
                s = ctx.wrap_socket(s)
            got = b""
            while len(got) < 40:
                b = s.recv(40 - len(got))
                if not b:
                    raise SystemExit("%s: closed before the challenge" % name)
                got += b
            ts.append((time.perf_counter() - t) * 1000)
            s.close()
        ts.sort()
        print("%-18s connect -> challenge, %d connections: median %.2f ms, p90 %.2f ms, "
              "max %.2f ms" % (name, count, statistics.median(ts), ts[int(0.9 * count) - 1],
                                ts[-1]))
    finally:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--count", type=int, default=100)
    a = ap.parse_args()
    exe = os.path.join(a.build_dir, "broker", "spice-broker")
    tmp = tempfile.mkdtemp(prefix="sb-peerbench-")
    try:
        secret = os.path.join(tmp, "zone.key")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        rsa = tlsutil.make_cert(os.path.join(tmp, "pki-rsa"), client_auth=True)
        ec = tlsutil.make_cert(os.path.join(tmp, "pki-ec"), client_auth=True, key_type="ec")
        run_mode(exe, tmp, "plain", secret, None, a.count)
        run_mode(exe, tmp, "tls13-rsa2048", secret, rsa, a.count)
        run_mode(exe, tmp, "tls13-p256", secret, ec, a.count)
        print("load average: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
