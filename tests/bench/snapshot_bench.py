#!/usr/bin/python3
"""tests/bench/snapshot_bench.py: how big a carried session's snapshot is
(issue 10 item 10; the goal: at most 256 bytes as sent for an idle
4-channel session), and its store record.

Two measurements, both through tests/bench/snap_size (built by meson; it
links the project's proto library and reads the generated descriptors):

  synthetic  an idle 4-channel session (main, display, inputs, cursor) built
             field by field as session/snapshot.c's write_down builds it
  real       a real one: QEMU (the test guest, a SPICE password) and spice-gtk
             (tests/integration/spice_client.py: main, display, inputs,
             cursor) through the broker, idle for --idle seconds, then
             `spice-brokerctl upgrade` with strace on the broker catching
             every datagram the old process sends (sendmsg); each is decoded
             as a hand-over message (snap_handover_decode) and the snapshot
             of the one that carries the session measured. strace slows the carry; sizes do not depend on it.

Printed for each: the snapshot as sent (stored: the encoding byte + the
packed message or its zstd frame; the real one as the old process sent it,
the synthetic one as this binary sends it to a reader of its own minor),
the same session as sent to a reader of hand-over minor 2 (zstd with the
built-in dictionary, compact form 1; also with its addresses moved off this
host) and of minor 1 (raw or zstd, as before), packed, zstd at levels 1/3/9/19, the
hand-over datagram around it, the session's store record (SessionRecord, as
the broker publishes it), what leaving out what the new process could know
otherwise would save (cumulative steps; not what snap.c writes), and the
packed bytes per field, largest first (summed over the channels; tag and
length bytes included). Figures are
printed, never asserted; not a meson test.

    /usr/bin/python3 tests/bench/snapshot_bench.py --build-dir build [--idle 5] [--no-real]
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402
from harness import (Broker, Env, Qemu, SpiceClient, TestFailure, log, new_instance,  # noqa: E402
                     token, wait_until)

PASSWORD = "Jx8Qm2ZpR4vK7tNw"   # the guest's SPICE password (Nova/libvirt make one)
TOKEN_TTL = 600                 # Nova's console tokens live 10 minutes

SENDMSG_RE = re.compile(r'sendmsg\(\d+, \{msg_name=[^,]*, msg_namelen=\d+, '
                        r'msg_iov=\[\{iov_base="((?:\\x[0-9a-f]{2})*)"')


def snap_size(exe, args):
    r = subprocess.run([exe] + args, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise TestFailure("snap_size %s: rc %d: %s" % (" ".join(args), r.returncode, r.stderr))
    return [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]


def real_snapshots(env, exe, a):
    """The snapshots an upgrade sends of one idle spice-gtk session."""
    q = Qemu(env, name="guest", password=PASSWORD, all_devices=False).start()
    b = Broker(env, link_timeout=2, backend_timeout=2).start()
    old_pid, new_pid, tracer = b.proc.pid, None, None
    try:
        tok = token("snap")
        b.token_add(tok, "127.0.0.1", q.spice_port, password=PASSWORD, ttl=TOKEN_TTL,
                    instance=new_instance())
        c = SpiceClient(env, "127.0.0.1", b.port, tok, seconds=a.idle + 60,
                        smartcard=False).start()
        chans = c.wait_ready(20)
        log("spice-gtk linked: %s; idle for %.0f s" % (", ".join(chans), a.idle))
        time.sleep(a.idle)
        trace = env.path("broker.strace")
        tracer = subprocess.Popen(["strace", "-f", "-p", str(old_pid), "-e", "trace=sendmsg",
                                   "-xx", "-s", "300000", "-o", trace],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        env.procs.append(("strace", tracer))
        # strace says "Process N attached" per thread on stderr once it holds them
        wait_until(lambda: os.path.exists(trace), 10, what="strace attached")
        time.sleep(1.0)
        rc, out, err = b.ctl("upgrade", timeout=60)
        log("upgrade: %s" % out.strip())
        new_pid = b.status()["pid"]
        wait_until(lambda: "carried in from pid %d" % old_pid in b.log_text(), 20,
                   what="the session carried in")
        time.sleep(0.5)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=10)
        line = [ln for ln in b.log_text().splitlines() if "carried in from pid" in ln][-1]
        log("new process: %s" % line.split("]", 1)[-1].strip())
        files = []
        with open(trace) as f:
            for ln in f:
                m = SENDMSG_RE.search(ln)
                if m is None:
                    continue
                data = bytes(int(h, 16) for h in m.group(1).split("\\x")[1:])
                path = env.path("datagram-%d.bin" % len(files))
                with open(path, "wb") as out_f:
                    out_f.write(data)
                files.append(path)
        log("%d hand-over datagrams caught" % len(files))
        if not files:
            raise TestFailure("strace caught no hand-over datagram (%s)" % trace)
        res = snap_size(exe, ["--handover"] + files)
        for r in res:
            r["snapshot"] = "real-idle (spice-gtk: %s)" % ", ".join(chans)
        c.stop()
        return res
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
        if new_pid and new_pid != old_pid and harness.pid_alive(new_pid):
            os.kill(new_pid, signal.SIGTERM)
            try:
                wait_until(lambda: not harness.pid_alive(new_pid), 10, what="new broker gone")
            except TestFailure:
                os.kill(new_pid, signal.SIGKILL)
        b.stop()
        q.stop()


def show(r, top):
    print("\n%s: %d channels" % (r["snapshot"], r["channels"]))
    print("  snapshot as sent   %4d bytes (%s)%s" % (
        r["stored_bytes"], r["encoding"],
        ", in a %d-byte hand-over datagram" % r["datagram_bytes"] if r["datagram_bytes"] else ""))
    print("  to a minor-2 reader %3d bytes (zstd + built-in dictionary 1, compact form 1: "
          "%d packed)" % (r["dict_bytes"], r["compact_packed_bytes"]))
    print("    its addresses off this host (client 198.51.100.23, backend 10.40.12.31): %d bytes"
          % r["dict_bytes_remote"])
    print("  to a minor-1 reader %3d bytes (%s, as before)" % (r["minor1_bytes"],
                                                            r["minor1_encoding"]))
    print("  packed protobuf    %4d bytes (whole)" % r["packed_bytes"])
    print("  zstd of it         %s bytes (level: size)" % ", ".join(
        "%s: %d" % kv for kv in r["zstd_bytes"].items()))
    print("  store record       %4d bytes (%s, SessionRecord)" % (
        r["record_bytes"], r["record_encoding"]))
    print("  what a smaller schema would save (each step keeps the ones above; packed, zstd -3):")
    for label, n, zn in r["what_if"]:
        print("    - %-52s %4d %4d" % (label, n, zn))
    print("  packed bytes per field (over the channels):")
    for path, n, count in r["fields"][:top]:
        print("    %-36s %4d  (%d)" % (path, n, count))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("MESON_BUILD_ROOT"))
    ap.add_argument("--idle", type=float, default=5.0, help="seconds the real session idles")
    ap.add_argument("--no-real", action="store_true", help="the synthetic session only")
    ap.add_argument("--top", type=int, default=16, help="fields shown per snapshot")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    a.direct = False
    env = Env(a)
    exe = os.path.join(os.path.abspath(a.build_dir), "tests/bench/snap_size")
    res = []
    try:
        res += snap_size(exe, [])
        if not a.no_real:
            env.require_broker()
            res += real_snapshots(env, exe, a)
    except harness.TestSkip as e:
        print("SKIP (real session): %s" % e, flush=True)
    except (TestFailure, subprocess.TimeoutExpired, ValueError, OSError) as e:
        print("ERROR: %s" % e, flush=True)
        env.cleanup(keep=a.keep)
        return 1
    env.cleanup(keep=a.keep)
    for r in res:
        show(r, a.top)
    print(json.dumps({"bench": "snapshot", "load": open("/proc/loadavg").read().split()[:3],
                      "results": res}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
