#!/usr/bin/python3
"""spice-html5 in headless Chromium through the broker's browser port
(--web-listen), the nova-spicehtml5proxy drop-in.

The broker serves spice-html5's files and the WebSockets on one port; the
page is opened as Nova opens it, `spice_auto.html?token=TOKEN` (plus
path=websockify, spice_auto.html's default), so the token travels in the
`token` cookie of each WebSocket upgrade, never in the SPICE ticket:
  - good token: the canvas appears, shows more than one colour and keeps
    changing (the guest repaints), every WebSocket (main, display, cursor,
    inputs at least) logs in with subprotocol binary, and the keys typed in
    the page reach the guest exactly (its serial echo);
  - the session shows in `session list` with the browser's address;
  - the guest migrates (prepared, seamless) while the page is open: no
    WebSocket closes, the display keeps changing after the source QEMU is
    stopped (spice-html5 implements no migration at all);
  - wrong token: refused with 403 before the WebSocket opens (issue 9; the
    SPICE link would refuse it too), the broker log says so (permission
    denied) and never shows the token;
  - static files: spice_auto.html and main.js are served with the right
    types, an unknown file is 404, a traversal attempt is 404.
"""
import http.client
import sys
import time

from harness import (Broker, MigSession, Qemu, check, check_not_logged, free_port,
                     log, no_direct, run, token, wait_until)
from html5 import Html5Client, auto_url, ensure_node_modules, key_bytes

TYPED = "spicebroker"


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        c.close()


def test(env):
    no_direct(env)
    ensure_node_modules()
    wport = free_port()
    b = Broker(env, extra=["--web-listen", "127.0.0.1:%d" % wport]).start()
    base = "http://127.0.0.1:%d" % wport

    # static files
    st, ct, body = get(wport, "/spice_auto.html")
    check(st == 200 and ct.startswith("text/html") and b"spice" in body.lower(),
          "spice_auto.html: %s %s" % (st, ct))
    st, ct, _ = get(wport, "/main.js")
    check(st == 200 and ct.startswith("text/javascript"), "main.js: %s %s" % (st, ct))
    for bad in ("/nope.js", "/%2e%2e/%2e%2e/etc/passwd", "/thirdparty/../../etc/passwd"):
        st, _, _ = get(wport, bad)
        check(st == 404, "%s: %s (want 404)" % (bad, st))
    log("static files: spice_auto.html, main.js served; unknown and traversal paths 404")

    # a browser session, keys, then a migration under it
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    ms = MigSession(env, src, tag="html5", broker=b, client_seconds=3)
    ms.client.stop()                 # only for the token and instance: the page takes over
    wait_until(lambda: ms.session() is None, 5, what="the spice-gtk session gone")
    url = auto_url(base, path="websockify", token=ms.token)
    base_serial = len(src.serial_bytes())
    h = Html5Client(env, url, seconds=14, keys=TYPED, out_name="html5-good")
    h.start()
    s = wait_until(lambda: ms.session(), 15, what="the browser's session in session list")
    log("session list: %s via %s, client %s" % ("%08x" % s["id"], s["backend"], s["client"]))
    time.sleep(4.0)                  # page up, keys typed
    ms.migrate_prepared(src, dst)
    log("migrated under the browser; source stopped")
    r = h.finish()
    sm = r["summary"]
    log("page: canvas %s at %.2f s, %s colours, %d top-row hashes over %d samples, "
        "websockets %s (%s), authed %s, close codes %s, errors %s" % (
            sm.get("canvas_size"), sm.get("canvas_appeared_t") or -1, sm.get("distinct_colors"),
            sm.get("distinct_top_hashes") or 0, sm.get("samples") or 0, sm.get("websockets"),
            sm.get("protocols"), sm.get("channels_authed"), sm.get("close_codes"),
            sm.get("errors")))
    check(sm.get("canvas"), "no canvas\n%s" % h.describe())
    check((sm.get("distinct_colors") or 0) > 1, "the canvas has one colour\n%s" % h.describe())
    check((sm.get("websockets") or 0) >= 4 and set(sm.get("protocols") or []) == {"binary"},
          "websockets %s protocols %s" % (sm.get("websockets"), sm.get("protocols")))
    check(len(sm.get("channels_authed") or []) >= 4 and not sm.get("auth_failures"),
          "logins: %s authed, failures %s" % (sm.get("channels_authed"), sm.get("auth_failures")))
    check(not sm.get("close_codes"), "websockets closed during the session: %s"
          % sm.get("close_codes"))
    # display alive after the migration: the top row keeps changing
    samples = r.get("samples") or []
    tail_hashes = {x[1] for x in samples[-20:]}
    check(len(tail_hashes) > 5, "the display did not change in the last 2 s (after the "
          "migration): %d distinct hashes" % len(tail_hashes))
    # keys
    sent = key_bytes(r)
    check(sent, "spice-html5 sent no keys\n%s" % h.describe())
    echo = src.serial_bytes()[base_serial:] + dst.serial_bytes()
    check(list(echo) == list(sent), "guest echo %s != sent %s" % (
        " ".join("%02X" % x for x in echo), " ".join("%02X" % x for x in sent)))
    log("%d scancodes typed in the page reached the guest exactly; the display kept "
        "changing after the migration (%d distinct top rows in the last 2 s)" % (
            len(sent), len(tail_hashes)))

    # wrong token
    bad = token("html5bad")
    hb = Html5Client(env, auto_url(base, path="websockify", token=bad), seconds=4,
                     out_name="html5-bad", canvas_timeout=3)
    rb = hb.run()
    smb = rb["summary"]
    # refused before the WebSocket opens (403, no 101: issue 9), or, for a
    # token that fails only at link time, by the SPICE link
    before_101 = b.log_text().count("websocket refused before the upgrade")
    check(not smb.get("canvas") and not smb.get("channels_authed") and
          (smb.get("auth_failures") or before_101),
          "wrong token: canvas %s, authed %s, failures %s, refused before the upgrade %d" % (
              smb.get("canvas"), smb.get("channels_authed"), smb.get("auth_failures"),
              before_101))
    check("permission denied" in b.log_text().lower(), "no 'permission denied' in the log")
    fails = check_not_logged(b, [bad, ms.token], "token")
    check(not fails, "; ".join(fails))
    log("wrong token: refused (%d login failures, %d upgrades refused with 403), not logged" % (
        len(smb.get("auth_failures") or []), before_101))
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
