#!/usr/bin/python3
"""One live spice-gtk session carried from one broker host to another (issue
10 item 8): the client's TCP connections and the broker's connections to QEMU
moved with TCP_REPAIR (as CRIU does), the service address moved after them.

The test makes six network namespaces of its own, joined by a bridge (in the
"switch" one) over veth pairs, on 10.77.0.0/24:
  hostA  10.77.0.1 + the service address 10.77.0.10/32 (the broker's
         connections to QEMU leave from it too: a route with src 10.77.0.10)
  hostB  10.77.0.2
  hostC  no address (no route to the peers)
  client 10.77.0.3   spice-gtk (spice_client.py), typing a key every 0.6 s
  qemu   10.77.0.20  QEMU with the echo guest
First the failure path: a broker in hostA, a session through 10.77.0.10, the
address off hostA, `upgrade --binary` to hostC: the new process cannot
rebuild the connections there (connect() in repair mode: ENETUNREACH), takes
every socket out of repair mode and lets the session go back with the
reason; the old process resumes it, the address comes back to hostA, and the
checks below hold for that session (12 keys).
Then the move: a broker in hostA (listening on 0.0.0.0), a session through
10.77.0.10, then, as the README's design note says:
  1. the service address leaves hostA (`ip addr del`): nothing reaches the
     old sockets any more (a socket in repair mode still takes in and
     acknowledges what reaches it: this is CRIU's "network lock");
  2. `spice-brokerctl upgrade --binary W`, W a root-owned wrapper running
     `ip netns exec hostB spice-broker "$@"`: the new process starts in hostB,
     opens its listeners there (those handed over are of hostA: closed), and
     takes the session's snapshot; its sockets, of hostA's namespace, are
     written down in repair mode and rebuilt in hostB's (session/repair.c);
     the old ones close in repair mode (no FIN, no RST);
  3. the address is added on hostB (and the route from it; at least 1 s
     after it left hostA, so that keys are typed while it is on neither
     host), the neighbour caches of the client and QEMU flushed (so that they
     ask again: hostB answers); the peers' retransmissions reach hostB.
Checked: the new process runs in hostB's namespace and says how many
connections it moved; the old one exits; every key typed before, during and
after the move is echoed exactly once, in order; no channel closes or
errors; the display updates after the move and at the end; every channel's
peer is still 10.77.0.10. The client's pause (the largest gap between
display updates around the move) is logged. Needs root, iproute2's `ip` and
a kernel that lets root use TCP_REPAIR: skipped (77) with the reason
otherwise.
"""
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from harness import (Broker, Etcd, Qemu, SpiceClient, TestSkip, check, log, no_direct, run,
                     token, wait_until)
from test_zone_haproxy import zone_secret
from test_upgrade import kill_pid
from test_upgrade_sessions import keys_echoed

IP = shutil.which("ip") or "/usr/sbin/ip"
NET = "10.77.0"
SERVICE = NET + ".10"
HOSTS = {"hostA": NET + ".1", "hostB": NET + ".2", "client": NET + ".3",
         "qemu": NET + ".20"}
KEYS = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1E, 0x1F,
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x2C, 0x2D, 0x2E, 0x2F, 0x30]
# QEMU's PS/2 keyboard keeps 16 bytes: keys that wait out the move in the
# client's TCP queue arrive together, so at most 8 (16 bytes) may wait: an
# outage under 4.8 s (1-1.7 s here, 2.5 s under ASan on a loaded machine).
KEY_INTERVAL = 0.6
PEER_PORT = 7444         # each broker host's peer port, on its own address
OUTAGE_MIN = 1.0         # the service address is on neither host for at least this
TCP_REPAIR = 19
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class Namespaces:
    """The test's network namespaces (names unique to this run), the bridge
    and the veth pairs. remove() deletes every one it made."""

    def __init__(self):
        tag = "%d" % (os.getpid() % 100000)
        self.names = {role: "sb%s%s" % (role[:5], tag) for role in
                      ["switch", "hostC"] + list(HOSTS)}
        self.made = []

    def __getitem__(self, role):
        return self.names[role]

    def ip(self, role, *args, check_rc=True):
        argv = [IP, "-n", self.names[role]] + list(args)
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        if check_rc and r.returncode != 0:
            raise RuntimeError("%s: %s" % (" ".join(argv), r.stderr.decode(errors="replace")))
        return r

    def create(self):
        for role, name in self.names.items():
            r = subprocess.run([IP, "netns", "add", name], capture_output=True, timeout=10)
            if r.returncode != 0:
                raise TestSkip("cannot create a network namespace (ip netns add %s: %s)" % (
                    name, r.stderr.decode(errors="replace").strip()))
            self.made.append(name)
            self.ip(role, "link", "set", "lo", "up")
        self.ip("switch", "link", "add", "br0", "type", "bridge")
        self.ip("switch", "link", "set", "br0", "up")
        for i, role in enumerate(list(HOSTS) + ["hostC"]):
            port = "p%d" % i
            self.ip("switch", "link", "add", port, "type", "veth", "peer", "name", "eth0",
                    "netns", self.names[role])
            self.ip("switch", "link", "set", port, "master", "br0")
            self.ip("switch", "link", "set", port, "up")
            self.ip(role, "link", "set", "eth0", "up")
            if role in HOSTS:
                self.ip(role, "addr", "add", HOSTS[role] + "/24", "dev", "eth0")
        self.add_service("hostA")

    def add_service(self, role):
        """The service address on role's host, and the route to QEMU from it."""
        self.ip(role, "addr", "add", SERVICE + "/32", "dev", "eth0")
        self.ip(role, "route", "replace", HOSTS["qemu"] + "/32", "dev", "eth0", "src", SERVICE)

    def remove(self):
        for name in reversed(self.made):
            subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=10)
        self.made = []

    def inode(self, role):
        return os.stat("/run/netns/" + self.names[role]).st_ino


@contextlib.contextmanager
def in_netns(ns, role):
    """This thread (and what it starts) in role's namespace, then back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open("/run/netns/" + ns[role], os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise TestSkip("setns(%s): %s" % (ns[role], os.strerror(e)))
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def tcp_repair_refused(ns):
    """Why root may not use TCP_REPAIR in hostA's namespace, or None."""
    with in_netns(ns, "hostA"):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        c = socket.create_connection(ls.getsockname(), timeout=5)
        s, _ = ls.accept()
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
            return None
        except OSError as e:
            return "setsockopt(TCP_REPAIR, 1) on an established socket: %s" % e
        finally:
            for x in (s, c, ls):
                x.close()


class NsQemu(Qemu):
    """QEMU whose SPICE port listens on every address of its namespace."""

    def argv(self):
        return [a.replace("addr=127.0.0.1", "addr=0.0.0.0") for a in super().argv()]


class NsBroker(Broker):
    """A broker listening on 0.0.0.0 (the service address comes and goes)."""

    def argv(self):
        a = super().argv()
        i = a.index("--listen")
        a[i + 1] = "0.0.0.0:%d" % self.port
        return a


def netns_of(pid):
    return os.stat("/proc/%d/ns/net" % pid).st_ino


def wrapper_for(env, ns, role):
    """A root-owned script running the broker in role's namespace (for
    upgrade --binary, which refuses files others could write)."""
    d = env.path("bin-" + role)
    os.makedirs(d, mode=0o755)
    path = os.path.join(d, "spice-broker-on-" + role)
    with open(path, "w") as f:
        f.write('#!/bin/sh\n# the broker on %s: the test\'s namespace\nexec %s netns exec %s '
                '%s "$@"\n' % (role, IP, ns[role], os.path.abspath(env.broker_exe)))
    os.chmod(path, 0o755)
    return path


def start_session(env, ns, b, q, tag, keys):
    """A spice-gtk client in the client namespace through the service
    address, typing keys; returns (client, session id, serial offset)."""
    tok = token(tag)
    b.token_add(tok, HOSTS["qemu"], q.spice_port)
    base = len(q.serial_bytes())
    with in_netns(ns, "client"):
        c = SpiceClient(env, SERVICE, b.port, tok, seconds=40, smartcard=False,
                        inval_timestamps=True, keys=keys, keys_start=0.5,
                        key_interval=KEY_INTERVAL).start()
    chans = c.wait_ready(20)
    log("client ready in %s through %s:%d: %s" % (ns["client"], SERVICE, b.port,
                                                  ", ".join(chans)))
    return c, b.sessions()[0]["id"], base


def carried_on(c, q, base, b, keys, t_lock, t_addr, what):
    """After the typing: every key echoed once, in order (some typed while the
    address was on no host), no channel closed, every peer the service
    address, the display alive after the address came back. Returns the
    client's pause (s)."""
    c.wait_event(lambda e: e["ev"] == "keys-done", 2 * len(keys) * KEY_INTERVAL + 15,
                 what="typing finished")
    t_keys_done = time.monotonic()
    time.sleep(1.0)
    r = c.stop()
    keys_echoed(r, lambda: q.serial_bytes()[base:], what, n_keys=len(keys))
    sent = r["keys"]["sent"]
    lock_t, addr_t = c.to_client_t(t_lock), c.to_client_t(t_addr)
    check(sent[0][0] < lock_t and addr_t < sent[-1][0],
          "the move (t=%.2f..%.2f) is not inside the typing (%.2f..%.2f)" % (
              lock_t, addr_t, sent[0][0], sent[-1][0]))
    during = [k for k in sent if lock_t <= k[0] <= addr_t]
    check(during, "no key typed while the address was on no host (t=%.2f..%.2f)" % (
        lock_t, addr_t))
    log("%d key events typed while the address was on no host, echoed once" % len(during))
    check(not r["errors"], "channels closed or failed: %s" % r["errors"])
    check(not r["counts"].get("disconnected"), "the session was disconnected")
    closed = {k: v["events"] for k, v in r["channels"].items()
              if v["closed_t"] is not None or v.get("destroyed")}
    check(not closed, "channels closed: %s" % closed)
    want = "%s:%d" % (SERVICE, b.port)
    bad = {k: p for k, p in r["final_peers"].items() if p != want}
    check(not bad, "channel peers are not %s: %s" % (want, bad))
    ts = r["invalidate"]["timestamps"] or []
    after = [t for t in ts if t > addr_t]
    check(len(after) > 5, "the display did not update after the move (%d updates after "
          "t=%.2f)" % (len(after), addr_t))
    end_t = c.to_client_t(t_keys_done)
    check([t for t in ts if t > end_t - 1.0], "the display is not alive at the end")
    before = [t for t in ts if t <= lock_t]
    gap = after[0] - (before[-1] if before else lock_t)
    log("display: %d updates, %d after the address came back; the client's pause: %.0f ms "
        "from the last update before the lock to the first after (address on no host for "
        "%.0f ms)" % (len(ts), len(after), gap * 1000, (t_addr - t_lock) * 1000))
    return gap


def unlock(ns, role, t_lock):
    """The service address on role's host, not before OUTAGE_MIN after the
    lock (so that keys are typed while nothing reaches either host: they wait
    in the client's TCP queue), and the peers' neighbour caches flushed (so
    that they ask again: role's host answers)."""
    time.sleep(max(0.0, t_lock + OUTAGE_MIN - time.monotonic()))
    ns.add_service(role)
    for peer in ("client", "qemu"):
        ns.ip(peer, "neigh", "flush", "dev", "eth0")
    return time.monotonic()


def test_move(env, ns, q):
    with in_netns(ns, "hostA"):
        b = NsBroker(env, link_timeout=2, backend_timeout=2).start()
    old_pid, new_pid = b.proc.pid, None
    wrapper = wrapper_for(env, ns, "hostB")
    try:
        check(netns_of(old_pid) == ns.inode("hostA"), "the broker does not run in hostA")
        c, sid, base = start_session(env, ns, b, q, "hostmove", KEYS)
        time.sleep(3.0)

        # 1. the network lock: the service address leaves hostA
        t_lock = time.monotonic()
        ns.ip("hostA", "addr", "del", SERVICE + "/32", "dev", "eth0")
        # 2. the broker process to hostB, the session with it
        rc, out, err = b.ctl("upgrade", "--binary", wrapper, timeout=45)
        t_up = time.monotonic()
        new_pid = b.status()["pid"]
        check(new_pid != old_pid, "status pid is still the old process's (%d)" % old_pid)
        text = wait_until(lambda: (lambda t: t if "sid=%08x carried in from pid %d" % (
            sid, old_pid) in t else None)(b.log_text()), 10,
            what="the session carried in (log:\n%s)" % b.log_text()[-3000:])
        t_in = time.monotonic()
        # 3. the address reaches hostB only now (before, hostB's kernel would
        # answer the peers' segments with a RST)
        t_addr = unlock(ns, "hostB", t_lock)
        log("moved: address off hostA, upgrade answered after %.0f ms (%s), session carried "
            "in after %.0f ms, address on hostB after %.0f ms" % (
                (t_up - t_lock) * 1000, out.strip(), (t_in - t_lock) * 1000,
                (t_addr - t_lock) * 1000))
        moved = [ln for ln in text.splitlines() if "sid=%08x upgrade:" % sid in ln and
                 "moved into this host's network namespace with TCP_REPAIR" in ln]
        check(moved, "the new process did not move the connections with TCP_REPAIR:\n%s" % (
            "\n".join(ln for ln in text.splitlines() if "%08x" % sid in ln)))
        log("new process: %s" % moved[0].split("]", 1)[-1].strip())
        check("listens in another network namespace" in text,
              "the new process did not open its own listeners")
        check(netns_of(new_pid) == ns.inode("hostB"),
              "the new process (pid %d) does not run in hostB's namespace" % new_pid)
        ss = [x["id"] for x in b.sessions()]
        check(sid in ss, "the new process does not list the session: %s" % ss)
        wait_until(lambda: not b.alive(), 15, what="the old process's exit")
        log("the old process (pid %d) exited" % old_pid)
        carried_on(c, q, base, b, KEYS, t_lock, t_addr, "across the move to hostB")
        check(b.status()["pid"] == new_pid, "the new process stopped serving")
    finally:
        kill_pid(new_pid)
        b.stop()


def test_refused(env, ns, q):
    """A host whose connections cannot be rebuilt (hostC: no address, no
    route to the peers: connect() in repair mode fails): the new process
    there lets the session go back, every socket out of repair mode; the old
    process resumes it, and once the address is back on hostA the session
    goes on as if nothing happened."""
    with in_netns(ns, "hostA"):
        b = NsBroker(env, name="broker-refused", link_timeout=2, backend_timeout=2).start()
    old_pid, new_pid = b.proc.pid, None
    wrapper = wrapper_for(env, ns, "hostC")
    keys = KEYS[:12]
    try:
        c, sid, base = start_session(env, ns, b, q, "refused", keys)
        time.sleep(2.0)
        t_lock = time.monotonic()
        ns.ip("hostA", "addr", "del", SERVICE + "/32", "dev", "eth0")
        b.ctl("upgrade", "--binary", wrapper, timeout=45)
        new_pid = b.status()["pid"]
        stays = "sid=%08x stays in this process (pid %d) until it ends: the new process did " \
                "not take it (" % (sid, old_pid)
        text = wait_until(lambda: (lambda t: t if stays in t else None)(b.log_text()), 10,
                          what="the session back in the old process")
        line = [ln for ln in text.splitlines() if stays in ln][0]
        log("old process: %s" % line.split("]", 1)[-1].strip())
        check("connect() in repair mode: Network is unreachable" in line,
              "the refusal does not say why: %r" % line)
        check("sid=%08x upgrade: its connections cannot move to this host" % sid in text,
              "the new process did not log why it let the session go")
        t_addr = unlock(ns, "hostA", t_lock)
        check(b.alive() and sid not in [x["id"] for x in b.sessions()],
              "the old process exited, or the new one lists the session it let go")
        carried_on(c, q, base, b, keys, t_lock, t_addr,
                   "in the old process after the move was refused")
    finally:
        kill_pid(new_pid)
        b.stop()
        # the address back where test_move wants it
        ns.ip("hostA", "addr", "add", SERVICE + "/32", "dev", "eth0", check_rc=False)
        ns.ip("hostA", "route", "replace", HOSTS["qemu"] + "/32", "dev", "eth0", "src",
              SERVICE, check_rc=False)


class NsEtcd(Etcd):
    """etcd on QEMU's host address (10.77.0.20), reachable from both broker
    hosts over the bridge."""

    def __init__(self, env):
        super().__init__(env, name="etcd-hostmove")
        self.url = "http://%s:%d" % (HOSTS["qemu"], self.client_port)


def zone_broker(env, ns, role, name, port, etcd, secret, supervise=False):
    """A broker of zone "hm" in role's namespace on the service port, its
    peer port on the host's own address."""
    with in_netns(ns, role):
        b = NsBroker(env, name=name, store=etcd.store_spec(), broker_id=name, link_timeout=2,
                     backend_timeout=2, extra=["--zone", "hm", "--peer-listen", "%s:%d" % (
                         HOSTS[role], PEER_PORT), "--zone-secret", secret] + (
                             ["--supervise"] if supervise else []))
        if port is not None:
            b.port = port
        return b.start()


def test_carry(env, ns, q):
    """The carry between two machines: two broker processes, one per host,
    of one zone (etcd on QEMU's host), and `spice-brokerctl move --to
    hostB's peer port` on hostA. Nothing crosses between them but the peer
    link: the session's snapshot and each connection written down in repair
    mode (sequence numbers, queues, options, window), sealed under the zone
    handshake's keys; hostB rebuilds the connections with TCP_REPAIR, takes
    the session (its record in etcd changes owner by compare-and-swap) and
    only then is the address moved. hostB runs under --supervise: its broker
    process is killed -9 after the carry, and its keeper carries the session
    (which it took from the carry) into the next one. Before that, the refusal: hostB drains,
    answers `left`, and hostA resumes the session on its own sockets (out of
    repair mode) until the second move."""
    # the service address back on hostA (test_move left it on hostB)
    ns.ip("hostB", "addr", "del", SERVICE + "/32", "dev", "eth0", check_rc=False)
    ns.add_service("hostA")
    for peer in ("client", "qemu"):
        ns.ip(peer, "neigh", "flush", "dev", "eth0")
    secret = zone_secret(env)
    with in_netns(ns, "qemu"):
        etcd = NsEtcd(env).start()
    a = b = None
    try:
        a = zone_broker(env, ns, "hostA", "bhostA", None, etcd, secret)
        b = zone_broker(env, ns, "hostB", "bhostB", a.port, etcd, secret, supervise=True)
        keys = KEYS[:12]
        c, sid, base = start_session(env, ns, a, q, "carry", keys)
        time.sleep(2.0)
        key = "/spice-broker/hm/sessions/%08x" % sid
        with in_netns(ns, "qemu"):
            rec = etcd.get(key) or b""
        check(b"bhostA" in rec, "the session record does not name hostA's broker: %r" % rec)
        t_lock = time.monotonic()
        ns.ip("hostA", "addr", "del", SERVICE + "/32", "dev", "eth0")
        to = "%s:%d" % (HOSTS["hostB"], PEER_PORT)
        # refused first: B drains, so it does not take the session; A takes
        # the connections out of repair mode and resumes it (a second move
        # may offer it again)
        b.ctl("drain")
        rc, out, err = a.ctl("move", "--to", to, "--timeout", "60", timeout=70)
        check(rc == 0 and "moved: 0 sessions carried" in out and "1 stay here" in out,
              "move to a draining broker: rc=%d out=%r err=%r" % (rc, out, err))
        back = "sid=%08x move: resumed here: %s did not take it: this broker is draining" % (
            sid, to)
        check(back in a.log_text(), "hostA's broker did not say why it kept the session:\n%s" %
              a.log_text()[-2000:])
        check(sid in [x["id"] for x in a.sessions()], "hostA's broker lost the session")
        log("refused while hostB drains: %s" % out.strip())
        b.ctl("serve")
        rc, out, err = a.ctl("move", "--to", to, "--timeout", "60", timeout=70)
        t_moved = time.monotonic()
        check(rc == 0 and "moved: 1 sessions carried" in out,
              "move: rc=%d out=%r err=%r\nA's log:\n%s" % (rc, out, err, a.log_text()[-3000:]))
        t_addr = unlock(ns, "hostB", t_lock)
        # hostB runs under --supervise: its keeper holds the carried session
        # too (kill -9 of its broker, as in test_supervise)
        time.sleep(0.5)
        child = b.status()["pid"]
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: (lambda p: p if p and p != child else None)(b.status()["pid"]), 10,
                   what="a new broker process under hostB's keeper")
        log("hostB's broker process %d killed -9 after the carry: pid %d serves" % (
            child, b.status()["pid"]))
        log("carried: address off hostA, move answered after %.0f ms (%s), address on hostB "
            "after %.0f ms" % ((t_moved - t_lock) * 1000, out.strip(), (t_addr - t_lock) * 1000))
        text = b.log_text()
        rebuilt = [ln for ln in text.splitlines() if "sid=%08x move:" % sid in ln and
                   "rebuilt in this host's network namespace with TCP_REPAIR" in ln]
        check(rebuilt, "hostB's broker did not rebuild the connections:\n%s" % text[-3000:])
        log("hostB: %s" % rebuilt[0].split("]", 1)[-1].strip())
        check("sid=%08x carried in from broker bhostA" % sid in text,
              "hostB did not resume the session")
        text = wait_until(lambda: (lambda t: t if "sid=%08x carried in from pid %d" % (
            sid, b.proc.pid) in t else None)(b.log_text()), 10,
            what="the carried session taken back from hostB's keeper after the kill")
        check(sid in [x["id"] for x in b.sessions()], "hostB's broker does not list the session")
        check(sid not in [x["id"] for x in a.sessions()], "hostA's broker still lists it")
        check(netns_of(b.proc.pid) == ns.inode("hostB") and
              netns_of(a.proc.pid) == ns.inode("hostA"), "the brokers are not on their hosts")
        with in_netns(ns, "qemu"):
            rec = wait_until(lambda: (lambda r: r if r and b"bhostB" in r else None)(
                etcd.get(key)), 10, what="the session record naming hostB's broker")
        check("broker bhostA hands it over (host move)" in text,
              "hostB's record write did not take the session over from hostA's")
        log("etcd: the session record names bhostB now")
        carried_on(c, q, base, b, keys, t_lock, t_addr, "across the carry to hostB's broker")
        for what, x in (("hostA", a), ("hostB", b)):
            for ln in x.log_text().splitlines():
                if "move:" in ln or "carried in from" in ln or "hands it over" in ln:
                    log("%s: %s" % (what, ln.split(" ", 1)[-1]))
        check(a.alive() and b.alive(), "a broker exited")
    finally:
        for x in (a, b):
            if x is not None:
                x.stop()
        with in_netns(ns, "qemu"):
            etcd.stop()


def test(env):
    no_direct(env)
    env.require_broker()
    if os.geteuid() != 0:
        raise TestSkip("needs root (network namespaces, TCP_REPAIR)")
    if not os.access(IP, os.X_OK):
        raise TestSkip("no ip (iproute2)")
    ns = Namespaces()
    try:
        ns.create()
        why = tcp_repair_refused(ns)
        if why is not None:
            raise TestSkip("the kernel refuses TCP_REPAIR: %s" % why)
        with in_netns(ns, "qemu"):
            q = NsQemu(env, name="q", all_devices=False).start()
        try:
            test_refused(env, ns, q)
            test_move(env, ns, q)
            test_carry(env, ns, q)
        finally:
            q.stop()
    finally:
        ns.remove()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
