#!/usr/bin/python3
"""(e) Bad link inputs with raw sockets against the broker (no gi needed for
the probes; spice-gtk is only the "is everything else still fine" check).

Broker started with --link-timeout 3. Cases (each followed by: broker alive,
and a well-behaved spice-gtk session through the same broker opens every
channel):
  token:    wrong / expired (--ttl 1, used >= 2 s later) / revoked token ->
            link reply OK, then after the RSA-OAEP ticket (built here with the
            stdlib) a u32 link result == PERMISSION_DENIED (7); the broker log
            gains a "permission denied" line and never contains the token.
            A valid token the same way -> result OK (0) (sanity of the ticket).
  protocol: bad magic; wrong major version (1, 3); size > 4096; size < 18;
            caps count past the body; caps offset past the body;
            num_common_caps = 1000 with one word sent; 1000 + 1000 caps words
            really sent (> 4096 bytes); truncated link (half, then close);
            garbage instead of the ticket (200 bytes after the reply);
            non-main link (display) with an unknown connection id ->
            spice-server: BAD_CONNECTION_ID (8) in the link reply or as the
            link result; the broker (issue 9): link reply OK, then
            PERMISSION_DENIED (7) after the ticket, as for a wrong ticket, so
            a link does not tell which session ids live.
            A refusal must come promptly (< 1.5 s, well under the link
            timeout): the connection closes; any bytes sent back must be a
            link reply / link result with a non-zero error.
  slowloris: 5 bytes then silence, and a full link then silence (no ticket):
            closed by the broker within link-timeout + 3 s; 40 such stalled
            connections at once do not stop a good session from working.
With --direct the protocol cases run against QEMU itself (spice-server's
behaviour, with a QEMU password in place of tokens); slowloris and log checks
are skipped there.
"""
import random
import struct
import sys
import threading
import time

from harness import (ALL_CHANNELS, CH_DISPLAY, ERR_BAD_CONNECTION_ID, ERR_OK,
                     ERR_PERMISSION_DENIED, LINK_ERR, Broker, LinkConn, Qemu, TestFailure,
                     check, check_not_logged, good_session, link_header, link_mess,
                     link_packet, log, raw_login, run, run_cases, token, wait_until)

LINK_TIMEOUT = 3
PROMPT = 1.5           # a refusal decidable from the bytes sent must come this fast


class Ctx:
    def __init__(self, env, q, b):
        self.env, self.q, self.b = env, q, b
        self.direct = env.direct
        self.port = q.spice_port if env.direct else b.port
        self.good = "rawpw" if env.direct else token("rawok")
        self.refused = []          # tokens that must never be logged

    def denied_count(self):
        if self.direct:
            return 0
        return self.b.log_text().lower().count("permission denied")


def send_quiet(c, data):
    try:
        c.send(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def refusal_error(data, after_reply=False):
    """(error code or None, complaint or None) for what a refusing peer sent.
    Before the reply: a link header + SpiceLinkReply with error != 0. After
    the reply: a u32 link result != 0, or (spice-server does this for a bad
    auth mechanism) another header + reply with error != 0."""
    if not data:
        return None, None
    if len(data) >= 20 and data[:4] == b"REDQ":
        err = struct.unpack("<I", data[16:20])[0]
        return err, None if err != ERR_OK else "a link reply with error OK (%r)" % data[:24]
    if after_reply and len(data) >= 4:
        err = struct.unpack("<I", data[:4])[0]
        return err, None if err != ERR_OK else "a link result OK (%r)" % data[:8]
    return None, "bytes that are not a link %s: %r" % (
        "result" if after_reply else "reply", data[:32])


def expect_refused(c, what, after_reply=False, timeout=PROMPT):
    closed, t, data = c.wait_closed(timeout)
    c.close()
    check(closed, "%s: connection still open %.1f s after the bad input (received %d "
          "bytes: %r)" % (what, t, len(data), data[:40]))
    err, bad = refusal_error(data, after_reply)
    check(bad is None, "%s: peer closed but first sent %s" % (what, bad))
    return t, err


def describe_err(err):
    return "closed, no bytes" if err is None else "error %d %s" % (err, LINK_ERR.get(err, "?"))


# ------------------------------------------------------------------ cases
def case_token(ctx, tok, what):
    before = ctx.denied_count()
    reply, result, c = raw_login(ctx.port, tok)
    c.close()
    check(reply is not None, "%s: connection closed before the link reply" % what)
    check(reply.error == ERR_OK, "%s: link reply error %s (the token is only checked after "
          "the ticket: expected OK)" % (what, reply.error))
    check(result == ERR_PERMISSION_DENIED, "%s: link result %s, want %d PERMISSION_DENIED"
          % (what, result if result is None else "%d %s" % (result, LINK_ERR.get(result)),
             ERR_PERMISSION_DENIED))
    if not ctx.direct:
        try:
            wait_until(lambda: ctx.denied_count() > before, 2,
                       what="a new 'permission denied' line in the broker log")
        except TestFailure as e:
            raise TestFailure("%s: %s" % (what, e))
    return "link result %d PERMISSION_DENIED" % result


def case_wrong_token(ctx):
    tok = "wrong-password" if ctx.direct else token("wrong")
    ctx.refused.append(tok)
    return case_token(ctx, tok, "wrong token")


def case_expired_token(ctx):
    wait_until(lambda: time.monotonic() >= ctx.expired_usable_at, 5, what="ttl expiry")
    ctx.refused.append(ctx.expired)
    return case_token(ctx, ctx.expired, "expired token")


def case_revoked_token(ctx):
    tok = token("revoked")
    ctx.b.token_add(tok, "127.0.0.1", ctx.q.spice_port)
    ctx.b.token_revoke(tok)
    ctx.refused.append(tok)
    return case_token(ctx, tok, "revoked token")


def case_valid_raw(ctx):
    reply, result, c = raw_login(ctx.port, ctx.good)
    c.close()
    check(reply is not None and reply.error == ERR_OK, "valid token, raw: reply %r" % reply)
    check(result == ERR_OK, "valid token, raw link + RSA-OAEP ticket: link result %s, want 0"
          % result)
    return "link result 0 (ticket built by the test is accepted)"


def case_bad_magic(ctx):
    c = LinkConn(ctx.port)
    m = link_mess()
    c.send(link_header(len(m), magic=b"XXXX") + m)
    t, err = expect_refused(c, "bad magic")
    return "%s after %.2f s" % (describe_err(err), t)


def case_major(ctx, major):
    c = LinkConn(ctx.port)
    m = link_mess()
    c.send(link_header(len(m), major=major) + m)
    t, err = expect_refused(c, "major version %d" % major)
    return "%s after %.2f s" % (describe_err(err), t)


def case_size_big(ctx):
    c = LinkConn(ctx.port)
    m = link_mess()
    send_quiet(c, link_header(0x100000) + m)
    t, err = expect_refused(c, "size 0x100000 (> 4096)")
    return "%s after %.2f s" % (describe_err(err), t)


def case_size_small(ctx):
    c = LinkConn(ctx.port)
    m = link_mess()
    send_quiet(c, link_header(10) + m[:10])
    t, err = expect_refused(c, "size 10 (< 18)")
    return "%s after %.2f s" % (describe_err(err), t)


def case_caps_past_body(ctx):
    c = LinkConn(ctx.port)
    m = link_mess(num_common=3)           # one caps word present, three claimed
    c.send(link_header(len(m)) + m)
    t, err = expect_refused(c, "num_common_caps 3 with one word in the body")
    return "%s after %.2f s" % (describe_err(err), t)


def case_caps_offset_past_body(ctx):
    c = LinkConn(ctx.port)
    m = link_mess(caps_offset=2000)
    c.send(link_header(len(m)) + m)
    t, err = expect_refused(c, "caps_offset 2000 in a 22-byte body")
    return "%s after %.2f s" % (describe_err(err), t)


def case_caps_1000_lie(ctx):
    c = LinkConn(ctx.port)
    m = link_mess(num_common=1000)
    c.send(link_header(len(m)) + m)
    t, err = expect_refused(c, "num_common_caps 1000 with one word in the body")
    return "%s after %.2f s" % (describe_err(err), t)


def case_caps_2000_sent(ctx):
    c = LinkConn(ctx.port)
    m = link_mess(common_caps=range(0, 32000, 32), channel_caps=range(0, 32000, 32))
    send_quiet(c, link_header(len(m)) + m)      # 1000 + 1000 words: 8018 > 4096
    t, err = expect_refused(c, "1000 + 1000 caps words (size %d > 4096)" % len(m))
    return "%s after %.2f s" % (describe_err(err), t)


def case_truncated(ctx):
    c = LinkConn(ctx.port)
    p = link_packet()
    c.send(p[:len(p) // 2])
    time.sleep(0.1)
    c.close()
    return "sent %d of %d bytes, closed" % (len(p) // 2, len(p))


def case_garbage_ticket(ctx):
    c = LinkConn(ctx.port)
    c.send(link_packet())
    reply = c.read_reply()
    check(reply is not None and reply.error == ERR_OK,
          "garbage ticket: expected a link reply OK first, got %r" % reply)
    rnd = random.Random(1234)
    junk = struct.pack("<I", 0xDEADBEEF) + bytes(rnd.getrandbits(8) for _ in range(196))
    send_quiet(c, junk)
    t, err = expect_refused(c, "200 random bytes instead of auth mechanism + ticket",
                            after_reply=True)
    return "%s after %.2f s" % (describe_err(err), t)


def case_unknown_connection_id(ctx):
    c = LinkConn(ctx.port)
    c.send(link_packet(connection_id=0x1234ABCD, channel_type=CH_DISPLAY))
    reply = c.read_reply()
    want = ERR_BAD_CONNECTION_ID if ctx.direct else ERR_PERMISSION_DENIED
    check(reply is not None, "display link with unknown connection id: closed without a "
          "link reply (want %s)" % describe_err(want))
    if ctx.direct and reply.error == ERR_BAD_CONNECTION_ID:
        c.close()
        return "link reply error 8 BAD_CONNECTION_ID"
    check(reply.error == ERR_OK, "display link with unknown connection id: link reply error "
          "%s %s (want OK, then %s as the link result)" % (
              reply.error, LINK_ERR.get(reply.error), describe_err(want)))
    c.send_ticket(reply, ctx.good)
    result = c.read_result()
    c.close()
    check(result == want, "display link with unknown connection id and a valid ticket: link "
          "result %s, want %s" % (result, describe_err(want)))
    return "link reply OK, link result %s" % describe_err(want)


# ------------------------------------------------------------------ slowloris
class Stall(threading.Thread):
    """Open n connections, send `prefix` (or a full link) and go silent;
    record when each gets closed by the peer."""

    def __init__(self, port, n, full_link=False):
        super().__init__(daemon=True)
        self.port, self.n, self.full_link = port, n, full_link
        self.results = []       # (closed?, seconds)
        self.error = None
        self.conns = []

    def open(self):
        for _ in range(self.n):
            c = LinkConn(self.port)
            if self.full_link:
                c.send(link_packet())
                r = c.read_reply()
                if r is None or r.error != ERR_OK:
                    raise TestFailure("slowloris(full link): reply %r" % r)
            else:
                c.send(link_packet()[:5])
            self.conns.append(c)

    def run(self):
        try:
            for c in self.conns:
                closed, t, data = c.wait_closed(LINK_TIMEOUT + 3 - (time.monotonic() - c.t0))
                self.results.append((closed, time.monotonic() - c.t0, data))
                c.close()
        except Exception as e:     # reported by the main thread
            self.error = e


def test(env):
    q = Qemu(env, password="rawpw" if env.direct else None).start()
    b = None
    if not env.direct:
        b = Broker(env, link_timeout=LINK_TIMEOUT).start()
    ctx = Ctx(env, q, b)
    if not env.direct:
        b.token_add(ctx.good, "127.0.0.1", q.spice_port)
        ctx.expired = token("expired")
        b.token_add(ctx.expired, "127.0.0.1", q.spice_port, ttl=1)
        ctx.expired_usable_at = time.monotonic() + 2.0

    def good(what):
        good_session(env, "127.0.0.1", ctx.port, ctx.good, expect=ALL_CHANNELS)

    good_session(env, "127.0.0.1", ctx.port, ctx.good, expect=ALL_CHANNELS,
                 what="at startup")
    stalls = []
    if not env.direct:
        # slowloris: one short prefix, one full link without a ticket, and a
        # crowd of 40; they run in the background while the other cases go on
        for n, full in ((1, False), (1, True), (40, False)):
            s = Stall(ctx.port, n, full)
            s.open()
            s.start()
            stalls.append(s)
        log("slowloris: 42 stalled connections open")

    cases = [("valid token (raw)", case_valid_raw),
             ("wrong token", case_wrong_token),
             ("bad magic", case_bad_magic),
             ("major version 1", lambda c: case_major(c, 1)),
             ("major version 3", lambda c: case_major(c, 3)),
             ("size > 4096", case_size_big),
             ("size < 18", case_size_small),
             ("caps count past body", case_caps_past_body),
             ("caps offset past body", case_caps_offset_past_body),
             ("num_common_caps 1000 (lie)", case_caps_1000_lie),
             ("2000 caps words sent", case_caps_2000_sent),
             ("truncated link", case_truncated),
             ("garbage instead of ticket", case_garbage_ticket),
             ("display link, unknown connection id", case_unknown_connection_id)]
    if not env.direct:
        cases[2:2] = [("revoked token", case_revoked_token),
                      ("expired token", case_expired_token)]
    failures = run_cases(env, b, [(n, (lambda f=f: f(ctx))) for n, f in cases], good)

    for s in stalls:
        s.join(timeout=LINK_TIMEOUT + 5)
        if s.error:
            failures.append("slowloris: %s" % s.error)
            continue
        what = "slowloris (%s, %d conn)" % ("full link, no ticket" if s.full_link
                                            else "5 bytes", s.n)
        still = [round(t, 1) for closed, t, _ in s.results if not closed]
        if still or len(s.results) < s.n:
            failures.append("%s: %d connections still open after %.0f s (link-timeout %d)"
                            % (what, s.n - len(s.results) + len(still), LINK_TIMEOUT + 3,
                               LINK_TIMEOUT))
        else:
            ts = [t for _, t, _ in s.results]
            log("ok   %-38s closed after %.2f-%.2f s" % (what, min(ts), max(ts)))
    if stalls and b and b.alive():
        try:
            good("slowloris")
        except TestFailure as e:
            failures.append("a good session after the slowloris connections: %s" % e)

    if b:
        failures += check_not_logged(b, ctx.refused, "refused token")
        if not b.alive():
            failures.append("broker not running at the end (rc=%s)" % b.proc.returncode)
    check(not failures, "%d problem(s):\n  - %s" % (len(failures), "\n  - ".join(failures)))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
