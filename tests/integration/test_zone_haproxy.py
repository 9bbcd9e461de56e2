#!/usr/bin/python3
"""Any channel, any broker (issue 10 item 2): Debian's HAProxy in front of
two brokers sharing one etcd, round-robin per connection, `mode tcp` for the
native port and `mode http` for the browser port.

Two brokers (A, B) with --peer-listen and one --zone-secret register in a
real etcd (B advertises its peer port by name, localhost:PORT); HAProxy, started by the test with a generated config, spreads
connections over both. A channel that lands on the broker not holding its
session is carried to the one that does over the authenticated peer link,
and that broker's migration engine switches it like its own:
  - spice-gtk through HAProxy (mode tcp): every channel opens although they
    land on both brokers (the non-owner logs and counts channels forwarded
    out, the owner channels forwarded in); keys typed through the inputs
    channel reach the guest exactly once, in order, while the guest
    live-migrates (prepared) under the session; the client sees nothing of
    the migration (test_migrate_seamless's checks), its display updates
    after the source QEMU stopped, and every channel's peer stays HAProxy;
  - spice-html5 in headless Chromium through HAProxy (mode http): its
    WebSockets spread over both brokers, the canvas draws, keys typed in the
    page reach the guest, and a migration under the page closes no WebSocket;
  - a wrong token for the live session (at its broker or the other) and an
    id no session has are refused alike: PERMISSION_DENIED 1 s after the
    ticket (no session-id oracle);
  - a stranger on a peer port gets nothing but the challenge: a wrong
    secret, garbage, and silence are each closed (silence at the handshake
    timeout, 3 s), each with a log line and a count in /metrics;
  - the broker holding a spread session is killed (-9): the other broker
    closes the client's channels it forwarded, one line each, and lives on.
"""
import hashlib
import hmac
import os
import signal
import socket
import sys
import time

from harness import (CH_DISPLAY, ERR_PERMISSION_DENIED, Broker, Etcd, LinkConn, MigSession,
                     Migration, Qemu, check, client_end_t, echo_across, free_port, link_packet,
                     log, log_wall_time, no_direct, run, seamless_failures, source_paused_at,
                     tail, token, wait_until)
from html5 import Html5Client, auto_url, ensure_node_modules, key_bytes
from limitsutil import metrics
from test_migrate_keys import align

HAPROXY = "/usr/sbin/haproxy"
N_KEYS = 120
INTERVAL = 0.02
TYPED = "zonekeys"
MAGIC = b"SBPEER\x00\x01"


def zone_secret(env):
    path = env.path("zone.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return path


class HAProxy:
    """HAProxy in the foreground (-db) with a generated config: round-robin
    per connection, mode tcp for the native ports, mode http for the
    browser ports. Killed by PID with the test's other processes."""

    def __init__(self, env, native, web):
        self.env = env
        self.port, self.web_port = free_port(), free_port()
        self.cfg = env.path("haproxy.cfg")
        self.log_path = env.path("haproxy.log")
        lines = ["global", "    maxconn 2000", "defaults", "    timeout connect 5s",
                 "    timeout client 1h", "    timeout server 1h", "    timeout tunnel 1h",
                 "frontend native", "    bind 127.0.0.1:%d" % self.port, "    mode tcp",
                 "    default_backend brokers_native", "backend brokers_native", "    mode tcp",
                 "    balance roundrobin"]
        lines += ["    server n%d 127.0.0.1:%d" % (i, p) for i, p in enumerate(native)]
        lines += ["frontend web", "    bind 127.0.0.1:%d" % self.web_port, "    mode http",
                  "    default_backend brokers_web", "backend brokers_web", "    mode http",
                  "    balance roundrobin"]
        lines += ["    server w%d 127.0.0.1:%d" % (i, p) for i, p in enumerate(web)]
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self, timeout=10.0):
        self.proc = self.env.spawn("haproxy", [HAPROXY, "-db", "-f", self.cfg], self.log_path)

        def up():
            check(self.proc.poll() is None, "haproxy exited rc=%s:\n%s" % (
                self.proc.returncode, tail(self.log_path)))
            for p in (self.port, self.web_port):
                s = socket.socket()
                s.settimeout(0.5)
                try:
                    s.connect(("127.0.0.1", p))
                except OSError:
                    return False
                finally:
                    s.close()
            return True
        wait_until(up, timeout, what="haproxy listening")
        log("haproxy up: pid %d, native 127.0.0.1:%d (mode tcp), browser 127.0.0.1:%d "
            "(mode http), round-robin" % (self.proc.pid, self.port, self.web_port))
        return self


def zone_broker(env, name, etcd, secret, advertise_name=False, **kw):
    """advertise_name: the registration names the peer port as localhost:PORT
    (the forwarder resolves it)."""
    peer, web = free_port(), free_port()
    extra = ["--peer-listen", "127.0.0.1:%d" % peer, "--zone-secret", secret,
             "--web-listen", "127.0.0.1:%d" % web]
    if advertise_name:
        extra += ["--peer-advertise", "localhost:%d" % peer]
    b = Broker(env, name=name, store=etcd.store_spec(), broker_id=name, extra=extra, **kw)
    b.peer_port, b.web_port = peer, web
    return b.start()


def counts(b):
    m = metrics(b)
    return (int(m.get('spice_broker_channels_forwarded_total{direction="out"}', 0)),
            int(m.get('spice_broker_channels_forwarded_total{direction="in"}', 0)))


def owner_of(brokers, instance):
    for b in brokers:
        if b.session_of(instance):
            return b
    return None


def refused_after(port, sid, password, source):
    """A display link naming session sid with password as its ticket, from
    source: (the link result, seconds from the ticket to the result)."""
    c = LinkConn(port, source=source)
    try:
        c.send(link_packet(connection_id=sid, channel_type=CH_DISPLAY))
        reply = c.read_reply()
        check(reply is not None and reply.error == 0, "display link to %d: no reply" % port)
        t = time.monotonic()
        c.send_ticket(reply, password)
        return c.read_result(timeout=5), time.monotonic() - t
    finally:
        c.close()


def refusals_alike(owner, other, sid):
    """A wrong token for the live session (on its broker, on the other one) and
    an id no session has: the same PERMISSION_DENIED after the same wait."""
    bad = token("zbad")
    cases = [("wrong token, session on this broker", owner.port, sid, "127.0.0.21"),
             ("wrong token, session on the other broker", other.port, sid, "127.0.0.22"),
             ("no such session", other.port, sid ^ 0x5a5a5a5a, "127.0.0.23")]
    seen = []
    for what, port, s, src in cases:
        res, dt = refused_after(port, s, bad, src)
        check(res == ERR_PERMISSION_DENIED, "%s: link result %s" % (what, res))
        check(0.85 <= dt <= 1.6, "%s: refused after %.3f s (want the zone's 1 s)" % (what, dt))
        seen.append("%s %.0f ms" % (what, dt * 1000))
    log("refused alike (PERMISSION_DENIED): %s" % "; ".join(seen))


def native_session(env, brokers, hp, src, dst):
    """spice-gtk through HAProxy, keys typed across a prepared migration."""
    keys = [0x10 + (i % 10) for i in range(N_KEYS)]
    go = env.path("keys.go")
    ms = MigSession(env, src, tag="zone", broker=brokers[0], client_port=hp.port,
                    keys=keys, keys_start=0.0, key_interval=INTERVAL, keys_go_file=go)
    c = ms.client
    owner = wait_until(lambda: owner_of(brokers, ms.instance), 5, what="the session's broker")
    other = brokers[1] if owner is brokers[0] else brokers[0]
    ms.broker = owner
    log("the main channel reached %s: it holds the session; channels %s" % (
        owner.name, ", ".join(ms.channels)))
    out_o, in_o = counts(other)
    out_w, in_w = counts(owner)
    log("forwarded channels: %s out %d (in %d), %s in %d (out %d)" % (
        other.name, out_o, in_o, owner.name, in_w, out_w))
    check(out_o >= 1 and in_w >= 1 and in_w == out_o,
          "channels did not spread: %s forwarded out %d, %s took in %d" % (
              other.name, out_o, owner.name, in_w))
    fwd_lines = [ln for ln in other.log_text().splitlines()
                 if "forwarded to the session's broker" in ln]
    check(len(fwd_lines) == out_o, "%s logged %d forwarded channels, counted %d" % (
        other.name, len(fwd_lines), out_o))
    refusals_alike(owner, other, ms.session()["id"])
    mode = ms.mouse_mode()
    ms.prepare(dst)
    base = len(src.serial_bytes())
    open(go, "w").close()
    c.wait_event(lambda e: e["ev"] == "keys-start", 3, what="typing started")
    time.sleep(0.8)
    m = Migration(src, dst).start()
    m.wait(("completed",), timeout=30)
    log("migration under the spread session: %s" % m.summary())
    ms.wait_backend(dst, 1)
    wait_until(lambda: dst.status() == "running", 5, what="destination running")
    c.wait_event(lambda e: e["ev"] == "keys-done", 2 * N_KEYS * INTERVAL + 10,
                 what="typing finished")
    paused_at = source_paused_at(src, m)  # before src goes
    time.sleep(0.5)
    t_stop = time.monotonic()
    src.stop()
    c.wait_display(t_stop + 0.2, timeout=3, what="display update after the source stopped")
    time.sleep(1.5)
    r = c.stop()
    sent = r["keys"]["sent"]
    want = [sc if what == "press" else sc | 0x80 for _, sc, what in sent]
    check(r["keys"]["dropped"] == 0 and len(sent) == 2 * N_KEYS,
          "client could not send every key (sent %d, dropped %d)" % (
              len(sent), r["keys"]["dropped"]))
    echo = echo_across(src, dst, base)
    if echo != want:
        # The few ms while the source VM is paused, until the broker switches
        # inputs: QEMU drops input for any client (test_migrate_keys). A loss
        # typed in that window is a note; anything else fails.
        missing, extra = align(want, echo)
        t_pause = c.wall_to_client_t(paused_at) if paused_at else None
        sw = [ln for ln in owner.log_text().splitlines()
              if "inputs:0 switched to the destination" in ln]
        t_switch = c.wall_to_client_t(log_wall_time(sw[0])) if sw else None
        lost = [(i, sent[i][0]) for i in missing]
        outside = [(i, t) for i, t in lost if t_pause is None or t_switch is None or
                   not t_pause - 0.05 <= t <= t_switch + 0.01]
        check(not extra and not outside,
              "guest echo differs from what was typed: lost %s (outside QEMU's paused window "
              "%s..%s: %s), extra %s" % (lost, t_pause, t_switch, outside, extra))
        log("note: %d scancode(s) typed while the source VM was paused were dropped by QEMU "
            "(any client loses them): %s" % (len(lost), lost))
    else:
        log("all %d scancodes arrived exactly once, in order, across the migration" % len(want))
    t_done = c.to_client_t(m.steps["completed"])
    fails = seamless_failures(r, c, hp.port, t_done, client_end_t(c, r), mouse_mode=mode,
                              t_start=c.to_client_t(m.steps["migrate"]))
    if sorted(r["opened"]) != sorted(ms.channels):
        fails.append("channels opened %s, expected %s" % (r["opened"], ms.channels))
    migrated, blackouts = owner.migration_log()
    if len(migrated) != 1 or migrated[0][2] != "prepared":
        fails.append("%s: expected one prepared migration, got %s" % (
            owner.name, [x[3] for x in migrated]))
    # the owner measures the blackout on display:0 and gates input on it,
    # wherever the client's display channel landed
    if not blackouts:
        fails.append("%s measured no blackout (display:0 not seen as the probe)" % owner.name)
    check(not fails, "not seamless:\n  " + "\n  ".join(fails))
    disp = "display:0 forwarded" in other.log_text()
    log("hidden from the client; %s: migration #1 blackout %.1f ms (display:0 %s)" % (
        owner.name, blackouts[0][1], "forwarded from " + other.name if disp else "direct"))
    return ms


def browser_session(env, brokers, hp, src, dst):
    """spice-html5 through HAProxy mode http: WebSockets over both brokers."""
    before = {b.name: counts(b) for b in brokers}
    ms = MigSession(env, src, tag="zweb", broker=brokers[0], client_port=hp.port,
                    client_seconds=3)
    ms.client.stop()                 # for the token and instance only: the page takes over
    wait_until(lambda: owner_of(brokers, ms.instance) is None, 5,
               what="the spice-gtk session gone")
    url = auto_url("http://127.0.0.1:%d" % hp.web_port, path="websockify", token=ms.token)
    base_serial = len(src.serial_bytes())
    # Chromium's start is slow on a loaded machine: generous, bounded waits
    h = Html5Client(env, url, seconds=12, keys=TYPED, out_name="html5-zone", load_timeout=40)
    h.start()
    owner = wait_until(lambda: owner_of(brokers, ms.instance), 45,
                       what="the browser's session on a broker")
    ms.broker = owner
    time.sleep(4.0)
    ms.migrate_prepared(src, dst)
    log("migrated under the browser (session on %s); source stopped" % owner.name)
    r = h.finish()
    sm = r["summary"]
    log("page: canvas %s, %s colours, websockets %s, authed %s, close codes %s" % (
        sm.get("canvas_size"), sm.get("distinct_colors"), sm.get("websockets"),
        sm.get("channels_authed"), sm.get("close_codes")))
    check(sm.get("canvas") and (sm.get("distinct_colors") or 0) > 1,
          "no canvas, or one colour\n%s" % h.describe())
    check(len(sm.get("channels_authed") or []) >= 4 and not sm.get("auth_failures"),
          "logins: %s authed, failures %s" % (sm.get("channels_authed"), sm.get("auth_failures")))
    check(not sm.get("close_codes"), "websockets closed: %s" % sm.get("close_codes"))
    samples = r.get("samples") or []
    check(len({x[1] for x in samples[-20:]}) > 5, "the display did not change after the "
          "migration")
    sent = key_bytes(r)
    echo = echo_across(src, dst, base_serial)
    check(sent and list(echo) == list(sent), "guest echo %s != sent %s" % (
        " ".join("%02X" % x for x in echo), " ".join("%02X" % x for x in sent)))
    after = {b.name: counts(b) for b in brokers}
    spread = {n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in after}
    log("browser channels forwarded (out, in) per broker: %s" % spread)
    check(sum(v[0] for v in spread.values()) == sum(v[1] for v in spread.values()),
          "channels forwarded out and in differ: %s" % spread)
    # (only the page uses the browser port in this test)
    web_in = [ln for ln in owner.log_text().splitlines()
              if "carried in from the zone (web port there)" in ln]
    check(web_in, "none of the browser's WebSockets reached %s through the other broker: "
          "%s" % (owner.name, spread))
    log("%d of the page's WebSockets came to %s through the other broker" % (
        len(web_in), owner.name))
    log("%d scancodes typed in the page reached the guest exactly" % len(sent))


def strangers(env, b):
    """Wrong secret, garbage, silence on b's peer port: closed, logged, counted."""
    m0 = metrics(b)

    def conn():
        s = socket.create_connection(("127.0.0.1", b.peer_port), timeout=5)
        ch = b""
        while len(ch) < 40:
            got = s.recv(40 - len(ch))
            check(got, "peer port closed before its challenge")
            ch += got
        check(ch[:8] == MAGIC, "peer challenge magic %r" % ch[:8])
        return s, ch[8:]

    def closed_within(s, limit):
        t = time.monotonic()
        s.settimeout(limit + 2)
        data = b""
        try:
            while True:
                got = s.recv(4096)
                if not got:
                    break
                data += got
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError("not closed within %.1f s" % (limit + 2))
        s.close()
        return time.monotonic() - t, data

    s, nonce_o = conn()
    nonce_f = os.urandom(32)
    wrong = os.urandom(32)
    mac = hmac.new(wrong, b"spice-broker peer client\x00" + nonce_o + nonce_f,
                   hashlib.sha256).digest()
    s.sendall(MAGIC + nonce_f + mac)
    dt, data = closed_within(s, 1)
    check(data == b"", "a wrong secret got %d bytes back" % len(data))
    log("wrong zone secret: closed after %.0f ms, nothing sent back" % (dt * 1000))

    s, _ = conn()
    s.sendall(os.urandom(72))
    dt, data = closed_within(s, 1)
    check(data == b"", "garbage got %d bytes back" % len(data))
    log("garbage: closed after %.0f ms, nothing sent back" % (dt * 1000))

    s, _ = conn()
    dt, data = closed_within(s, 3.0)
    check(data == b"" and 2.5 <= dt <= 4.5, "silence: closed after %.2f s with %d bytes" % (
        dt, len(data)))
    log("silence: closed after %.2f s (the handshake timeout)" % dt)

    m1 = metrics(b)
    key = 'spice_broker_peer_auth_failures_total{side="listener",reason="%s"}'
    refused = m1.get(key % "refused", 0) - m0.get(key % "refused", 0)
    timed = m1.get(key % "timeout", 0) - m0.get(key % "timeout", 0)
    check(refused == 2 and timed == 1, "peer auth failures counted: refused %d, timeout %d" % (
        refused, timed))
    lines = [ln for ln in b.log_text().splitlines() if "peer: 127.0.0.1:" in ln and
             "refused" in ln]
    check(len(lines) >= 3, "expected a log line per stranger, got %s" % lines)
    log("strangers counted in /metrics (refused %d, timeout %d) and logged: %s" % (
        refused, timed, [ln.split("peer: ", 1)[1] for ln in lines[-3:]]))


def owner_killed(env, brokers, hp, qemu):
    """The broker holding a spread session is killed (-9): the other broker
    closes the client's forwarded channels with a line each, and lives on."""
    ms = MigSession(env, qemu, tag="zkill", broker=brokers[0], client_port=hp.port)
    owner = wait_until(lambda: owner_of(brokers, ms.instance), 5, what="the session's broker")
    other = brokers[1] if owner is brokers[0] else brokers[0]
    sid = "sid=%08x" % owner.session_of(ms.instance)["id"]
    fwd = [ln for ln in other.log_text().splitlines()
           if sid in ln and "forwarded to the session's broker" in ln]
    check(fwd, "no channel of %s went through %s" % (sid, other.name))
    t = time.monotonic()
    owner.proc.send_signal(signal.SIGKILL)
    owner.proc.wait(timeout=5)
    r = ms.client.finish(timeout=10)
    check(r["exit_reason"] == "all-channels-closed", "client: exit reason %r" % r["exit_reason"])
    closed = wait_until(lambda: [ln for ln in other.log_text().splitlines()
                                 if sid in ln and "forwarded channel closed" in ln], 5,
                        what="the forwarded channels' close lines")
    check(len(closed) == len(fwd), "%d channels forwarded, %d close lines: %s" % (
        len(fwd), len(closed), closed))
    log("%s killed: the client's %d channels through %s closed within %.2f s: %s" % (
        owner.name, len(closed), other.name, time.monotonic() - t,
        closed[0].split("closed: ", 1)[-1]))
    other.check_alive()


def test(env):
    no_direct(env)
    check(os.access(HAPROXY, os.X_OK), "%s is missing (apt-get install haproxy)" % HAPROXY)
    ensure_node_modules()
    etcd = Etcd(env).start()
    secret = zone_secret(env)
    a = zone_broker(env, "a", etcd, secret)
    b = zone_broker(env, "b", etcd, secret, advertise_name=True)
    brokers = [a, b]
    # each broker's registration (its peer address) is in etcd before a client comes
    for x in brokers:
        wait_until(lambda: etcd.get("/spice-broker/default/brokers/%s" % x.name), 10,
                   what="broker %s registered" % x.name)
    hp = HAProxy(env, [a.port, b.port], [a.web_port, b.web_port]).start()

    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    native_session(env, brokers, hp, src, dst)

    src2 = Qemu(env, name="src2", all_devices=False).start()
    dst2 = Qemu.dest_like(src2, "dst2").start()
    browser_session(env, brokers, hp, src2, dst2)

    strangers(env, a)
    for x in brokers:
        x.check_alive()
    owner_killed(env, brokers, hp, dst2)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
