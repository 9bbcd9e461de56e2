#!/usr/bin/python3
"""Issue 9: a captured SPICE ticket logs in nowhere else, and a non-main link
reaches the backend only once its ticket is checked.

A real spice-gtk client connects to the broker through a small TCP man in the
middle (this script), which records what the client sends: for each
connection, its link message and the auth mechanism + 128-byte RSA-OAEP
ticket that follow our link reply. The broker's token record points at a
counting TCP relay in front of QEMU, so every backend link the broker opens is
seen (and its channel type read from its link message).

While that session runs:
  replay:    each captured (link, ticket) is sent again on a new connection:
             main, and a non-main channel naming the live session -> link
             reply OK (a fresh key), then PERMISSION_DENIED (7); one broker
             log line per replay says "replayed ticket" (the worker whose key
             it was) or "bad ticket" (another worker's key); the backend relay
             sees no new link.
  ordering:  a display link naming the live session with a wrong token, and
             one naming an unknown session id -> the same answer (7) and no
             backend link for either.
  still fine: the spice-gtk session keeps getting display updates, all its
             channels stay open, and the broker never logged the token.
Then, other broker: a second broker (its own store, the same token) gets the
             captured main ticket -> 7; a fresh raw ticket for the same token
             -> 0 (so the 7 is the key, not the token).
"""
import struct
import sys
import threading
import time

from harness import (ALL_CHANNELS, CH_DISPLAY, CH_MAIN, ERR_OK, ERR_PERMISSION_DENIED, Broker,
                     LinkConn, Qemu, SpiceClient, TcpRelay, TestFailure, check, check_not_logged,
                     link_packet, log, no_direct, raw_login, run, token, wait_until)
from limitsutil import metrics

CAP_AUTH_SELECTION = 0   # SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION


class Relay(TcpRelay):
    """127.0.0.1:<free port> -> target. With capture, records each
    connection's first client bytes: (link bytes, channel type, connection
    id, auth bytes). Counts connections and the channel types they link."""

    def __init__(self, target_port, capture=False):
        super().__init__(lambda n: target_port, self._taps)
        self.capture = capture
        self.lock = threading.Lock()
        self.links = []        # channel type of each connection's link message
        self.captured = []     # (link bytes, type, connection id, auth bytes)

    def _taps(self, n):
        buf = bytearray()
        done = [False]

        def tap(b):
            if done[0]:
                return
            buf.extend(b)
            if len(buf) < 16:
                return
            size = struct.unpack("<I", buf[12:16])[0]
            if len(buf) < 16 + size:
                return
            link = bytes(buf[:16 + size])
            conn_id, ctype = struct.unpack("<IB", link[16:21])
            ncommon = struct.unpack("<I", link[22:26])[0]
            off = struct.unpack("<I", link[30:34])[0]
            common = struct.unpack("<I", link[16 + off:20 + off])[0] if ncommon else 0
            auth_len = (4 if common & (1 << CAP_AUTH_SELECTION) else 0) + 128
            if not self.capture:
                done[0] = True
                with self.lock:
                    self.links.append(ctype)
                return
            if len(buf) < len(link) + auth_len:
                return
            done[0] = True
            with self.lock:
                self.links.append(ctype)
                self.captured.append((link, ctype, conn_id,
                                      bytes(buf[len(link):len(link) + auth_len])))

        return tap, None

    def n_links(self):
        with self.lock:
            return len(self.links)


ATTACKER = "127.0.0.3"
THROTTLE_LOGGED = 5   # session/throttle.h: a source's first wrong tokens each get a line

def replay(port, link, auth):
    """The captured link and auth bytes on a new connection, from another
    address than the legitimate client's (wrong tickets are throttled per
    source): (reply error, link result)."""
    c = LinkConn(port, source=ATTACKER, timeout=10.0)
    try:
        c.send(link)
        reply = c.read_reply()
        check(reply is not None, "replay: the broker closed without a link reply")
        if reply.error != ERR_OK:
            return reply.error, None
        c.send(auth)
        return ERR_OK, c.read_result()
    finally:
        c.close()


def test(env):
    no_direct(env)
    q = Qemu(env).start()
    backend = Relay(q.spice_port)
    backend.start()
    b = Broker(env, link_timeout=5).start()
    tok = token("replay")
    b.token_add(tok, "127.0.0.1", backend.port)
    mitm = Relay(b.port, capture=True)
    mitm.start()
    failures = []

    c = SpiceClient(env, "127.0.0.1", mitm.port, tok, seconds=25, smartcard=False).start()
    opened = c.wait_ready()
    log("spice-gtk through the man in the middle: %s" % sorted(opened))
    wait_until(lambda: len(mitm.captured) >= len(opened), 10, what="every ticket captured")
    links0 = backend.n_links()
    check(links0 == len(opened), "backend links: %d for %d channels" % (links0, len(opened)))
    main = [x for x in mitm.captured if x[1] == CH_MAIN]
    other = [x for x in mitm.captured if x[1] != CH_MAIN and x[2] != 0]
    check(main and other, "captured: %s" % [(t, hex(i)) for _, t, i, _ in mitm.captured])
    sid = other[0][2]
    log("captured %d tickets; session id %08x" % (len(mitm.captured), sid))

    # replay: main, and every non-main channel's own ticket, on new connections
    def refusals():
        # a replay landing on the worker whose key it was made for is a
        # "replayed ticket"; on another worker (another key) a "bad ticket"
        t = b.log_text()
        return t.count("permission denied (replayed ticket)") + t.count(
            "permission denied (bad ticket)")
    denied0 = refusals()
    nfail = len(failures)
    for link, ctype, conn_id, auth in main + other:
        err, res = replay(b.port, link, auth)
        if err != ERR_OK or res != ERR_PERMISSION_DENIED:
            failures.append("replayed ticket of channel type %d: reply %s result %s, want 0 "
                            "then 7" % (ctype, err, res))
    n = len(main) + len(other)
    # One line each for a source's first few wrong tickets; then the throttle
    # sums them up (session/throttle.h), so at least that many lines.
    lines = min(n, THROTTLE_LOGGED)
    try:
        wait_until(lambda: refusals() - denied0 >= lines, 5,
                   what="%d 'replayed ticket' / 'bad ticket' log lines" % lines)
    except TestFailure as e:
        failures.append(str(e))
    check(len(failures) == nfail, "replays:\n  - " + "\n  - ".join(failures[nfail:]))
    log("ok   %d captured tickets replayed: each refused with 7" % n)
    # /metrics counts them: a replay on the worker whose key it was is a
    # replay (one on the other worker is a bad ticket, not counted there)
    m = metrics(b)
    replays = m.get('spice_broker_tickets_refused_total{reason="replay"}', -1)
    lines = b.log_text().count("permission denied (replayed ticket)")
    if not (lines <= replays <= n and
            m.get('spice_broker_tickets_refused_total{reason="expired_key"}') == 0 and
            m.get("spice_broker_link_keys_generated_total", 0) >= 2):
        failures.append("/metrics link keys: replays %s (%d lines, %d replayed), %s" % (
            replays, lines, n, {k: v for k, v in m.items() if "key" in k or "ticket" in k}))
    log("ok   /metrics: %d replays counted, %d link keys generated" % (
        replays, m.get("spice_broker_link_keys_generated_total", 0)))

    # ordering: no backend link before a valid ticket; unknown id looks alike
    links1 = backend.n_links()
    check(links1 == links0, "backend links after the replays: %d, want %d" % (links1, links0))
    answers = []
    for conn_id, pw in ((sid, "not-the-token"), (sid ^ 0x5a5a5a5a, tok)):
        lc = LinkConn(b.port, source="127.0.0.4", timeout=10.0)
        lc.send(link_packet(connection_id=conn_id, channel_type=CH_DISPLAY, channel_id=1))
        reply = lc.read_reply()
        check(reply is not None and reply.error == ERR_OK,
              "display link for %08x: reply %s" % (conn_id, reply and reply.error))
        lc.send_ticket(reply, pw)
        answers.append(lc.read_result())
        lc.close()
    time.sleep(0.5)
    if answers != [ERR_PERMISSION_DENIED, ERR_PERMISSION_DENIED]:
        failures.append("wrong ticket / unknown session: results %s, want [7, 7]" % answers)
    if backend.n_links() != links1:
        failures.append("%d backend link(s) opened for unauthenticated display links"
                        % (backend.n_links() - links1))
    log("ok   wrong ticket and unknown session id: %s, no backend link" % answers)

    # the legitimate session is unharmed
    try:
        c.wait_display(time.monotonic(), timeout=5, what="display update after the replays")
    except TestFailure as e:
        failures.append(str(e))
    sess = [s for s in b.sessions() if s.get("id") == sid]
    if not sess or len(sess[0].get("channels", [])) != len(opened):
        failures.append("the session after the replays: %s" % sess)
    r = c.stop()
    if r.get("errors"):
        failures.append("spice-gtk errors: %s" % r["errors"])
    log("ok   the spice-gtk session kept all %d channels and its display" % len(opened))

    # another broker of the zone: its own keys
    b2 = Broker(env, name="broker2").start()
    b2.token_add(tok, "127.0.0.1", backend.port)
    err, res = replay(b2.port, main[0][0], main[0][3])
    if (err, res) != (ERR_OK, ERR_PERMISSION_DENIED):
        failures.append("main ticket replayed on another broker: reply %s result %s, want 0 "
                        "then 7" % (err, res))
    # (a main link of its own: QEMU then drops the first client's session,
    # which is why this comes last)
    _, res, conn = raw_login(b2.port, tok)
    conn.close()
    if res != ERR_OK:
        failures.append("a fresh ticket for the same token on the other broker: %s, want 0" % res)
    b2.stop()
    log("ok   the other broker refuses the captured ticket, takes a fresh one")

    failures += check_not_logged(b, [tok], "token")
    if not b.alive():
        failures.append("broker not running at the end")
    mitm.close()
    backend.close()
    check(not failures, "%d problem(s):\n  - %s" % (len(failures), "\n  - ".join(failures)))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
