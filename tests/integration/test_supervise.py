#!/usr/bin/python3
"""spice-broker --supervise: kill -9 of the broker process without a
disconnect (issue 10 items 7 and 9).

A broker under its keeper (native and browser ports, embedded store) serves a
spice-gtk session on the echo guest, typing a key every 0.2 s and watching
the display, while a loop connects to the native port and fetches a page
from the browser port without a pause. The broker process (status's pid, the
keeper's child) is killed with SIGKILL twice, 4 s apart:
  - the keeper starts a new broker each time (a new pid in status) and hands
    it the session (its log: 1 resumed, 0 not);
  - no channel of the session closes; the display updates again within 1 s
    of each kill; every key typed is echoed exactly once, in order (across all three);
  - no connection is refused and every page is served meanwhile (the keeper
    holds the listening sockets; what arrives during the restart waits in
    their queues);
  - a session opened after the kills is served, and SIGTERM to the keeper
    stops the broker and the keeper (exit 0).
Then spice-html5 in Chromium on the browser port, typing, through two kills:
no WebSocket closes, every scancode reaches the guest once, in order, the
canvas keeps changing. Then a live migration under the keeper, and the
broker killed after it: the destination legs are the ones held (display back
within 1 s, keys echoed once by the destination). Then a broker under a keeper
that cannot start (its port taken) exits with
the broker's status instead of restarting it in a loop.
"""
import os
import signal
import socket
import sys
import time

from harness import (Broker, MigSession, Qemu, Target, check, check_echo, free_port,
                     good_session, log, run, token, wait_until)
from html5 import Html5Client, auto_url, ensure_node_modules, key_bytes
from test_upgrade import ConnectLoop

KEYS = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1E, 0x1F,
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x2C, 0x2D, 0x2E, 0x2F, 0x30]
KEY_INTERVAL = 0.2       # 48 key events over ~9.6 s: the kills and the upgrade fall inside
CLIENT_SECONDS = 14.0
BACK_WITHIN = 1.0        # the display updates again within this of a kill
MKEYS = KEYS[:6]          # typed after the migration, across the kill
TYPED = "keptthroughkill"  # typed in the page, 250 ms apart: both kills fall inside


def kill_broker(b):
    """SIGKILL the keeper's broker process; returns (its pid, the time)."""
    pid = b.status()["pid"]
    check(pid != b.proc.pid, "status names the keeper (%d), not its broker" % pid)
    t = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return pid, t


def new_broker(b, old):
    def serving():
        try:
            p = b.status()["pid"]
        except Exception:
            return None
        return p if p != old else None
    return wait_until(serving, 10, what="a new broker process after pid %d" % old)


def test_kill(env, q, q2):
    web_port = free_port()
    b = Broker(env, link_timeout=2, backend_timeout=2,
               extra=["--supervise", "--web-listen", "127.0.0.1:%d" % web_port]).start()
    loop = None
    try:
        tok = token("sup")
        b.token_add(tok, "127.0.0.1", q.spice_port)
        base = len(q.serial_bytes())
        c = Target(env, b, q, tok).client(seconds=CLIENT_SECONDS, smartcard=False,
                                          inval_timestamps=True, keys=KEYS, keys_start=0.5,
                                          key_interval=KEY_INTERVAL).start()
        c.wait_ready(15)
        sid = b.sessions()[0]["id"]
        loop = ConnectLoop(b.port, web_port)
        loop.start()
        kills = []
        time.sleep(2.0)
        for n in range(2):
            pid, t = kill_broker(b)
            new = new_broker(b, pid)
            log("kill -9 of broker pid %d: pid %d serves %.0f ms later" % (
                pid, new, (time.monotonic() - t) * 1000))
            kills.append((pid, t))
            check(sid in [x["id"] for x in b.sessions()],
                  "the new broker (pid %d) does not list session %08x" % (new, sid))
            time.sleep(2.5)
        # spice-brokerctl upgrade under the keeper: answered at once, then the
        # keeper replaces the broker the same way
        pid = b.status()["pid"]
        t = time.monotonic()
        rc, out, err = b.ctl("upgrade", timeout=20)
        check(out.startswith("upgrading: the keeper"), "upgrade answered %r" % out)
        new = new_broker(b, pid)
        log("upgrade under the keeper: pid %d replaced by pid %d %.0f ms after the request" % (
            pid, new, (time.monotonic() - t) * 1000))
        kills.append((pid, t))
        time.sleep(1.0)
        loop.stop.set()
        loop.join(10)
        log("connect loop: %d native connects, %d pages, %d failures" % (
            loop.n_native, loop.n_pages, len(loop.failures)))
        check(not loop.failures, "connections failed around the kills: %s" % loop.failures[:5])
        check(loop.n_native > 50 and loop.n_pages > 50, "the connect loop hardly ran")

        r = c.finish()
        check(r["main_opened"], "main channel never opened: %s" % r["errors"])
        check(not r["errors"], "channels closed or failed across the kills: %s" % r["errors"])
        closed = [k for k, v in r["channels"].items()
                  if v.get("closed_t") is not None and v["closed_t"] < r["duration"] - 0.5]
        check(not closed, "channels closed before the client's end: %s" % closed)
        ts = r["invalidate"]["timestamps"] or []
        mono0 = r["mono0"]
        for pid, t in kills:
            kt = t - mono0
            after = [x for x in ts if x > kt]
            check(after, "no display update after the kill of pid %d" % pid)
            log("display: first update %.0f ms after the kill (or upgrade request) of pid %d" % (
                (after[0] - kt) * 1000, pid))
            check(after[0] - kt < BACK_WITHIN, "the display came back %.3f s after the kill "
                  "of pid %d" % (after[0] - kt, pid))
        gaps = [(ts[i + 1] - ts[i], ts[i]) for i in range(len(ts) - 1)]
        gap, at = max(gaps)
        log("display: %d updates, largest gap %.3f s at t=%.2f" % (len(ts), gap, at))
        check(gap < BACK_WITHIN, "the display stalled %.3f s at t=%.2f" % (gap, at))
        sent = r["keys"]["sent"]
        check(r["keys"]["dropped"] == 0 and len(sent) == 2 * len(KEYS),
              "the client could not send every key (sent %d, dropped %d)" % (
                  len(sent), r["keys"]["dropped"]))
        check(sent[0][0] < kills[0][1] - mono0 and kills[-1][1] - mono0 < sent[-1][0],
              "the kills are not inside the typing")
        want = check_echo(q, base, sent)
        log("every one of %d key events echoed once, in order, across 2 kills and an upgrade" %
            len(want))
        text = b.log_text()
        resumed = text.count("1 sessions resumed in broker pid")
        check(resumed == 3, "the keeper's log shows %d resumptions, not 3" % resumed)

        tok2 = token("sup2")
        b.token_add(tok2, "127.0.0.1", q2.spice_port)
        good_session(env, "127.0.0.1", b.port, tok2, what="after the kills")
    finally:
        if loop is not None:
            loop.stop.set()
    keeper = b.proc
    keeper.send_signal(signal.SIGTERM)
    try:
        rc = keeper.wait(10)
    except Exception:
        rc = None
    check(rc == 0, "the keeper did not stop cleanly on SIGTERM (exit %r)" % rc)
    log("SIGTERM: broker and keeper stopped, exit 0")
    b.stop()


def test_browser(env, q):
    """spice-html5 in Chromium on the browser port through two kills."""
    ensure_node_modules()
    wport = free_port()
    b = Broker(env, name="supweb", link_timeout=2, backend_timeout=2,
               extra=["--supervise", "--web-listen", "127.0.0.1:%d" % wport]).start()
    try:
        tok = token("supweb")
        b.token_add(tok, "127.0.0.1", q.spice_port)
        base_serial = len(q.serial_bytes())
        url = auto_url("http://127.0.0.1:%d" % wport, path="websockify", token=tok)
        h = Html5Client(env, url, seconds=16, keys=TYPED, out_name="html5-supervise",
                        key_delay_ms=250, load_timeout=40)
        h.start()
        wait_until(lambda: b.sessions() or None, 45, what="the browser's session")
        time.sleep(2.0)
        for n in range(2):
            pid, t = kill_broker(b)
            new = new_broker(b, pid)
            log("browser: kill -9 of broker pid %d, pid %d serves %.0f ms later" % (
                pid, new, (time.monotonic() - t) * 1000))
            time.sleep(1.5)
        r = h.finish()
        sm = r["summary"]
        log("page: canvas %s, %s colours, websockets %s, authed %s, close codes %s" % (
            sm.get("canvas_size"), sm.get("distinct_colors"), sm.get("websockets"),
            sm.get("channels_authed"), sm.get("close_codes")))
        check(sm.get("canvas") and (sm.get("distinct_colors") or 0) > 1,
              "no canvas, or one colour\n%s" % h.describe())
        check(not sm.get("close_codes"), "websockets closed across the kills: %s" %
              sm.get("close_codes"))
        samples = r.get("samples") or []
        tail_hashes = {x[1] for x in samples[-20:]}
        check(len(tail_hashes) > 5, "the display did not change after the kills: %d distinct "
              "top rows in the last 2 s" % len(tail_hashes))
        sent = key_bytes(r)
        check(len(sent) == 2 * len(TYPED), "spice-html5 sent %d scancode bytes for %d keys" % (
            len(sent), len(TYPED)))
        echo = q.serial_bytes()[base_serial:]
        check(list(echo) == list(sent), "guest echo %s != sent %s" % (
            " ".join("%02X" % x for x in echo), " ".join("%02X" % x for x in sent)))
        resumed = b.log_text().count("1 sessions resumed in broker pid")
        check(resumed == 2, "the keeper's log shows %d resumptions, not 2" % resumed)
        log("browser: %d scancodes typed across 2 kills reached the guest exactly, no "
            "WebSocket closed, the display went on" % len(sent))
    finally:
        b.stop()


def test_migrate_then_kill(env):
    """A live migration under the keeper, then kill -9: the channels' new
    backend legs are the ones the keeper holds (held again at the switch)."""
    src = Qemu(env, name="msrc", all_devices=False).start()
    dst = Qemu.dest_like(src, "mdst").start()
    b = Broker(env, name="supmig", link_timeout=2, backend_timeout=2,
               extra=["--supervise"]).start()
    try:
        t0 = time.monotonic()
        ms = MigSession(env, src, tag="supmig", broker=b, client_seconds=14, keys=MKEYS,
                        keys_start=7.0, key_interval=0.2)
        ms.migrate_prepared(src, dst)
        log("migrated under the keeper (%.1f s after the client's start)" % (
            time.monotonic() - t0))
        base = len(dst.serial_bytes())
        time.sleep(max(0.0, 7.8 - (time.monotonic() - t0)))
        pid, t = kill_broker(b)
        new = new_broker(b, pid)
        log("after the migration: kill -9 of broker pid %d, pid %d serves %.0f ms later" % (
            pid, new, (time.monotonic() - t) * 1000))
        r = ms.client.finish()
        check(not r["errors"], "channels closed or failed: %s" % r["errors"])
        ts = r["invalidate"]["timestamps"] or []
        kt = t - r["mono0"]
        after = [x for x in ts if x > kt]
        check(after and after[0] - kt < BACK_WITHIN, "the display came back %s after the kill" % (
            "%.3f s" % (after[0] - kt) if after else "never"))
        sent = r["keys"]["sent"]
        check(sent and sent[0][0] < kt < sent[-1][0], "the kill is not inside the typing")
        want = check_echo(dst, base, sent, what="the destination")
        text = b.log_text()
        check("1 sessions resumed in broker pid" in text and "not resumed" not in text,
              "the keeper did not resume the migrated session")
        log("a session migrated under the keeper, then its broker killed: display back %.0f ms "
            "after, %d key events echoed once by the destination" % (
                (after[0] - kt) * 1000, len(want)))
    finally:
        b.stop()


def test_no_start(env):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    b = Broker(env, name="taken", extra=["--supervise"])
    b.port = port
    argv = b.argv()
    import subprocess
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
        s.close()
    check(p.returncode not in (0, None), "a broker that cannot listen exited %r" % p.returncode)
    check("before it served: not restarted" in err, "the keeper did not say why: %s" % err[-500:])
    log("a keeper whose broker cannot listen: exit %d, not restarted" % p.returncode)


def test(env):
    q = Qemu(env, all_devices=False).start()
    q2 = Qemu(env, name="qemu2", all_devices=False).start()
    test_kill(env, q, q2)
    q2.stop()
    test_browser(env, q)
    test_migrate_then_kill(env)
    test_no_start(env)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
