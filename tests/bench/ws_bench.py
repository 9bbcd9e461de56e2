#!/usr/bin/env python3
"""tests/bench/ws_bench.py: the browser-port (WebSocket) benchmark.

Starts one synthetic SPICE server (spice_peer server), spice-broker with its
browser port (--web-listen) and websockify (nova-spicehtml5proxy's engine) in
front of the same server, and measures in one run, paths taking turns:

  ws-broker   WebSocket to the broker's web port (?token=bench in the URL)
  websockify  WebSocket to websockify, which pipes bytes to the server
  native      plain SPICE to the broker's --listen port (token as the ticket)
  direct      plain SPICE straight to the server
  ws-broker-w1  as ws-broker, a second broker with --workers 1 (native-w1 too)
  native-c, direct-c   the same two with spice_peer's C client (calibration:
              shows how far the Python client is from a C one)

For each: display-stream throughput (server -> client, big messages as fast
as the ACK window allows), the proxy's CPU seconds per GB (utime + stime of
the process tree from /proc, streaming phase only) and, for the Python paths,
64-byte round trips on the inputs channel (p50/p99). All four Python paths
use the same in-process client: a minimal raw-socket WebSocket client (masked
client frames, 1 MiB reads) under a SPICE client that links, ACKs and answers
pings like spice_peer's client. Prints a table, the ratios and one JSON line.
Figures are printed, never asserted; not a meson test. Standard library only.

    tests/bench/ws_bench.py --build-dir build
"""
import argparse
import base64
import hashlib
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "integration"))
from harness import rsa_oaep_encrypt  # noqa: E402
from relay_bench import (CLK_TCK, Procs, Skip, cpu_seconds, fmt, free_port,  # noqa: E402
                         log, proc_tree, tail, wait_port)
import relay_bench  # noqa: E402


def ticket(spki, password):
    """What spice-gtk sends: the password and its NUL, RSA-OAEP(SHA-1)."""
    return rsa_oaep_encrypt(spki, password.encode() + b"\0")

TOKEN = "bench"

# spice-protocol numbers (spice/enums.h, spice/protocol.h)
CH_MAIN, CH_DISPLAY, CH_INPUTS = 1, 2, 3
MSG_SET_ACK, MSG_PING = 3, 4
MSGC_ACK_SYNC, MSGC_ACK, MSGC_PONG = 1, 2, 3
MSG_MAIN_INIT = 103
MSGC_INPUTS_MOUSE_MOTION = MSG_INPUTS_MOUSE_MOTION_ACK = 111
CAP_AUTH_SELECTION, CAP_AUTH_SPICE, CAP_MINI_HEADER = 0, 1, 3
CHANNEL_CAPS = {CH_MAIN: 0b1111,     # SEMI_SEAMLESS, NAME_AND_UUID, AGENT_TOKENS, SEAMLESS
                CH_DISPLAY: 0b11111,  # SIZED_STREAM .. STREAM_REPORT (as spice_peer)
                CH_INPUTS: 0b1}       # KEY_SCANCODE
LINK_REPLY_FIXED = 178
HDR = struct.Struct("<HI")


class LinkError(Exception):
    pass


def _xor(data, mask):
    """data XOR mask (mask repeated to data's length), as big integers: fast in CPython."""
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(data), "big")


def thread_cpu(pid):
    """{tid: utime+stime seconds} of one process's threads."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                data = f.read()
            fl = data[data.rindex(")") + 2:].split()
            out[t] = (int(fl[11]) + int(fl[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            pass
    return out


def busy_threads(before, after):
    """Threads that did at least a fifth of the process's work between two samples."""
    d = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
    total = sum(d)
    return sum(1 for x in d if total > 0 and x >= 0.2 * total)


# ---------------------------------------------------------------- the client

class Chan:
    """One SPICE channel over TCP or over a WebSocket (ws_path set).

    Bytes flow recv_into(1 MiB) -> [WebSocket frame decoder] -> SPICE framer.
    The framer only copies message bodies it needs (control messages, MAIN_INIT,
    echoes); display bodies are skipped by arithmetic."""

    def __init__(self, port, ws_path=None, timeout=5.0, capture=()):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws = ws_path is not None
        self.rbuf = bytearray(1 << 20)
        self.rmv = memoryview(self.rbuf)
        self.pend = bytearray()      # link phase: decoded bytes not yet read
        self.linked = False
        self.raw_bytes = 0           # bytes off the TCP socket (WebSocket framing included)
        self.nbytes = 0              # SPICE bytes after link (goodput)
        # WebSocket decoder
        self.ws_left = 0
        self.ws_hdr = bytearray()
        self.ws_ctl = None           # payload of a control frame being read
        self.ws_op = 0
        # SPICE framer and ACK state (spice-gtk's channel-base.c)
        self.sp_left = 0
        self.sp_hdr = bytearray()
        self.sp_type = 0
        self.sp_body = None
        self.capture = set(capture)
        self.ack_window = self.ack_left = 0
        self.msgs = 0
        self.got = []                # (type, body) of captured channel messages
        if self.ws:
            self._handshake(port, ws_path)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # ---- WebSocket
    def _handshake(self, port, path):
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: binary\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk or len(head) > 16384:
                raise LinkError(f"no WebSocket upgrade: {head[:80]!r}")
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            raise LinkError(f"upgrade refused: {lines[0]}")
        want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                             .encode()).digest()).decode()
        hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip()
                for l in lines[1:] if ":" in l}
        if hdrs.get("sec-websocket-accept") != want:
            raise LinkError("bad Sec-WebSocket-Accept")
        if rest:
            self.raw_bytes += len(rest)
            self._ws_feed(memoryview(rest), 0, len(rest))

    @staticmethod
    def _frame(op, data):
        n = len(data)
        if n < 126:
            h = bytes((0x80 | op, 0x80 | n))
        elif n < 65536:
            h = bytes((0x80 | op, 0x80 | 126)) + struct.pack(">H", n)
        else:
            h = bytes((0x80 | op, 0x80 | 127)) + struct.pack(">Q", n)
        mask = os.urandom(4)
        m = (mask * (n // 4 + 1))[:n]
        return h + mask + (_xor(data, m) if n else b"")

    def _ws_start(self, h):
        op, ln = h[0] & 0x0F, h[1] & 0x7F
        if h[1] & 0x80:
            raise LinkError("masked frame from the server")
        if ln == 126:
            ln = struct.unpack_from(">H", h, 2)[0]
        elif ln == 127:
            ln = struct.unpack_from(">Q", h, 2)[0]
        self.ws_op = op
        self.ws_ctl = bytearray() if op >= 8 else None
        self.ws_left = ln
        if ln == 0 and op >= 8:
            self._ws_control()

    def _ws_control(self):
        op, data, self.ws_ctl = self.ws_op, bytes(self.ws_ctl), None
        if op == 8:
            raise EOFError("WebSocket closed by the server")
        if op == 9:
            self.sock.sendall(self._frame(10, data))

    def _ws_feed(self, buf, i, n):
        while i < n:
            left = self.ws_left
            if left:
                k = left if left <= n - i else n - i
                if self.ws_ctl is None:
                    self._payload(buf, i, i + k)
                else:
                    self.ws_ctl += buf[i:i + k]
                i += k
                self.ws_left = left - k
                if self.ws_left == 0 and self.ws_ctl is not None:
                    self._ws_control()
                continue
            h = self.ws_hdr
            if not h and n - i >= 2:   # fast path: the whole header is here
                b1 = buf[i + 1] & 0x7F
                hl = 2 + (2 if b1 == 126 else 8 if b1 == 127 else 0) + (4 if buf[i + 1] & 0x80 else 0)
                if n - i >= hl:
                    self._ws_start(bytes(buf[i:i + hl]))
                    i += hl
                    continue
            h += buf[i:i + 1]
            i += 1
            if len(h) >= 2:
                b1 = h[1] & 0x7F
                hl = 2 + (2 if b1 == 126 else 8 if b1 == 127 else 0) + (4 if h[1] & 0x80 else 0)
                if len(h) == hl:
                    self._ws_start(bytes(h))
                    h.clear()

    # ---- bytes in
    def _payload(self, buf, a, b):
        if self.linked:
            self._spice_feed(buf, a, b)
        else:
            self.pend += buf[a:b]

    def pump(self):
        """One recv; feeds everything it got. Returns the raw byte count."""
        n = self.sock.recv_into(self.rmv)
        if n == 0:
            raise EOFError("connection closed")
        self.raw_bytes += n
        if self.ws:
            self._ws_feed(self.rmv, 0, n)
        elif self.linked:
            self._spice_feed(self.rmv, 0, n)
        else:
            self.pend += self.rmv[:n]
        return n

    def read_exact(self, n):
        while len(self.pend) < n:
            self.pump()
        out = bytes(self.pend[:n])
        del self.pend[:n]
        return out

    # ---- bytes out
    def send(self, data):
        self.sock.sendall(self._frame(2, data) if self.ws else data)

    def send_msg(self, t, body=b""):
        self.send(HDR.pack(t, len(body)) + body)

    # ---- SPICE
    def link(self, conn_id, chan_type, password):
        mess = struct.pack("<IBBIII", conn_id, chan_type, 0, 1, 1, 18) + \
            struct.pack("<II", (1 << CAP_AUTH_SELECTION) | (1 << CAP_MINI_HEADER), CHANNEL_CAPS[chan_type])
        self.send(b"REDQ" + struct.pack("<III", 2, 2, len(mess)) + mess)
        rh = self.read_exact(16)
        size = struct.unpack_from("<I", rh, 12)[0]
        if rh[:4] != b"REDQ" or not LINK_REPLY_FIXED <= size <= 4096:
            raise LinkError("bad link reply header")
        body = self.read_exact(size)
        err = struct.unpack_from("<I", body, 0)[0]
        if err:
            raise LinkError(f"link refused ({err})")
        nc, _, off = struct.unpack_from("<III", body, 166)
        scommon = struct.unpack_from("<I", body, off)[0] if nc and off + 4 <= size else 0
        if not scommon & (1 << CAP_MINI_HEADER):
            raise LinkError("server lacks MINI_HEADER")
        out = struct.pack("<I", CAP_AUTH_SPICE) if scommon & (1 << CAP_AUTH_SELECTION) else b""
        self.send(out + ticket(body[4:166], password))
        res = struct.unpack("<I", self.read_exact(4))[0]
        if res != 0:
            raise LinkError(f"link result {res}")
        self.linked = True
        if self.pend:
            rest, self.pend = self.pend, bytearray()
            self._spice_feed(memoryview(rest), 0, len(rest))

    def _spice_feed(self, buf, a, b):
        self.nbytes += b - a
        while a < b:
            left = self.sp_left
            if left:
                k = left if left <= b - a else b - a
                if self.sp_body is not None:
                    self.sp_body += buf[a:a + k]
                a += k
                self.sp_left = left - k
                if self.sp_left == 0:
                    self._msg_done(self.sp_type, self.sp_body)
                continue
            h = self.sp_hdr
            if not h and b - a >= 6:
                t, s = HDR.unpack_from(buf, a)
                a += 6
            else:
                k = min(6 - len(h), b - a)
                h += buf[a:a + k]
                a += k
                if len(h) < 6:
                    break
                t, s = HDR.unpack(h)
                h.clear()
            self.sp_type = t
            self.sp_body = bytearray() if (t < 101 or t in self.capture) and s <= 65536 else None
            self.sp_left = s
            if s == 0:
                self._msg_done(t, self.sp_body)

    def _msg_done(self, t, body):
        if t == MSG_SET_ACK and body is not None and len(body) >= 8:
            gen, win = struct.unpack_from("<II", body)
            self.ack_window = self.ack_left = win
            self.send_msg(MSGC_ACK_SYNC, struct.pack("<I", gen))
            return
        self.msgs += 1
        if t == MSG_PING and body is not None and len(body) >= 12:
            self.send_msg(MSGC_PONG, bytes(body[:12]))
        if t in self.capture:
            self.got.append((t, body))
        if self.ack_window:
            self.ack_left -= 1
            if self.ack_left == 0:
                self.ack_left = self.ack_window
                self.send_msg(MSGC_ACK)

    def next_captured(self):
        while not self.got:
            self.pump()
        return self.got.pop(0)


def open_session(path, chan_type, timeout=5.0, capture=()):
    """Links main (waits for MAIN_INIT) and then one channel of the session."""
    m = Chan(path["port"], path.get("ws"), timeout, capture=(MSG_MAIN_INIT,))
    try:
        m.link(0, CH_MAIN, TOKEN)
        _, body = m.next_captured()
        sid = struct.unpack_from("<I", body, 0)[0]
        m.capture = set()
        c = Chan(path["port"], path.get("ws"), timeout, capture=capture)
        try:
            c.link(sid, chan_type, TOKEN)
        except BaseException:
            c.close()
            raise
    except BaseException:
        m.close()
        raise
    return m, c


# ---------------------------------------------------------------- workloads

class Bench:
    def __init__(self, a):
        self.a = a
        self.deadline = time.monotonic() + a.budget

    def left(self):
        return self.deadline - time.monotonic()

    def py_throughput(self, pa):
        secs = self.a.seconds
        m, d = open_session(pa, CH_DISPLAY)
        try:
            d.sock.settimeout(3.0)   # a stalled stream ends the run, it does not hang it
            pids = pa["pids"]()      # after the links: websockify's per-connection children exist
            cpu0, me0 = cpu_seconds(pids), time.process_time()
            th0 = thread_cpu(pa["threads_of"]) if pa.get("threads_of") else None
            raw0, n0 = d.raw_bytes, d.nbytes
            t0 = time.perf_counter()
            end = t0 + secs
            pump = d.pump
            while True:
                pump()
                now = time.perf_counter()
                if now >= end:
                    break
            cpu1, me1 = cpu_seconds(pids), time.process_time()
            th = busy_threads(th0, thread_cpu(pa["threads_of"])) if th0 is not None else None
        finally:
            d.close()
            m.close()
        wall = now - t0
        nb = d.nbytes - n0
        return {"bytes": nb, "raw_bytes": d.raw_bytes - raw0, "seconds": wall, "messages": d.msgs,
                "gbps": nb * 8 / 1e9 / wall, "proxy_cpu_s": cpu1 - cpu0, "client_cpu_s": me1 - me0,
                "busy_threads": th}

    def c_throughput(self, pa):
        secs = self.a.seconds
        pids = pa["pids"]()
        cpu0 = cpu_seconds(pids)
        th0 = thread_cpu(pa["threads_of"]) if pa.get("threads_of") else None
        argv = [self.a.peer, "client", "--connect", f"127.0.0.1:{pa['port']}", "--password", TOKEN,
                "throughput", "--seconds", str(secs)]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 20)
        except subprocess.TimeoutExpired:
            raise LinkError("C client timed out")
        cpu1 = cpu_seconds(pids)
        th = busy_threads(th0, thread_cpu(pa["threads_of"])) if th0 is not None else None
        lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
        res = json.loads(lines[-1]) if lines else {"error": f"rc={r.returncode}: {r.stderr.strip()[-200:]}"}
        if "error" in res:
            raise LinkError(res["error"])
        return {"bytes": res["bytes"], "seconds": res["seconds"], "messages": res["messages"],
                "gbps": res["gbps"], "proxy_cpu_s": cpu1 - cpu0, "busy_threads": th}

    def py_latency(self, pa):
        a = self.a
        body = bytes(range(58))
        m, c = open_session(pa, CH_INPUTS, capture=(MSG_INPUTS_MOUSE_MOTION_ACK,))
        rtt = []
        try:
            c.sock.settimeout(3.0)
            warm = min(200, a.latency_count // 10)
            frame = HDR.pack(MSGC_INPUTS_MOUSE_MOTION, len(body)) + body
            clock = time.perf_counter_ns
            for i in range(warm + a.latency_count):
                t0 = clock()
                c.send(frame)
                while True:
                    t, b = c.next_captured()
                    if t == MSG_INPUTS_MOUSE_MOTION_ACK and b is not None and len(b) == len(body):
                        break
                if i >= warm:
                    rtt.append(clock() - t0)
        finally:
            c.close()
            m.close()
        rtt.sort()
        return {"p50_us": rtt[len(rtt) // 2] / 1e3, "p99_us": rtt[len(rtt) * 99 // 100] / 1e3}

    def throughput(self, paths):
        """Paths take turns run by run (the order rotates each run); median of runs."""
        a = self.a
        for run in range(a.runs):
            k = run % len(paths)
            for pa in paths[k:] + paths[:k]:
                res = pa["res"]
                if "error" in res or self.left() < a.seconds + 15:
                    continue
                try:
                    r = self.c_throughput(pa) if pa.get("c") else self.py_throughput(pa)
                except (OSError, EOFError, LinkError, ValueError) as e:
                    res["error"] = f"throughput: {type(e).__name__}: {e}"
                    continue
                res.setdefault("gbps_runs", []).append(round(r["gbps"], 3))
                if r.get("busy_threads") is not None:
                    res.setdefault("busy_threads_runs", []).append(r["busy_threads"])
                res["bytes"] = res.get("bytes", 0) + r["bytes"]
                res["wall_s"] = res.get("wall_s", 0) + r["seconds"]
                if "raw_bytes" in r:
                    res["raw_bytes"] = res.get("raw_bytes", 0) + r["raw_bytes"]
                if "client_cpu_s" in r:
                    res["client_cpu_s"] = res.get("client_cpu_s", 0) + r["client_cpu_s"]
                if pa["has_proxy"]:
                    res["proxy_cpu_s"] = res.get("proxy_cpu_s", 0) + r["proxy_cpu_s"]
                    res.setdefault("cpu_s_per_gb_runs", []).append(
                        round(r["proxy_cpu_s"] / (r["bytes"] / 1e9), 3) if r["bytes"] else None)
                time.sleep(0.2)
        for pa in paths:
            res = pa["res"]
            if not res.get("gbps_runs"):
                continue
            res["gbps"] = statistics.median(res["gbps_runs"])
            gb = res["bytes"] / 1e9
            if "proxy_cpu_s" in res and gb:
                res["cpu_s_per_gb"] = round(res["proxy_cpu_s"] / gb, 3)
                res["proxy_busy"] = round(res["proxy_cpu_s"] / res["wall_s"], 3)
                res["proxy_cpu_s"] = round(res["proxy_cpu_s"], 2)
            if "client_cpu_s" in res:
                res["client_busy"] = round(res["client_cpu_s"] / res["wall_s"], 3)
                res["client_cpu_s_per_gb"] = round(res["client_cpu_s"] / gb, 3) if gb else None
                res["client_cpu_s"] = round(res["client_cpu_s"], 2)
            if res.get("raw_bytes") and res["bytes"]:
                res["framing_overhead"] = round(res["raw_bytes"] / res["bytes"] - 1, 5)
            res["wall_s"] = round(res["wall_s"], 2)

    def latency(self, paths):
        """Python paths only; paths take turns run by run; best run per percentile."""
        a = self.a
        py = [pa for pa in paths if not pa.get("c")]
        for run in range(a.latency_runs):
            k = run % len(py) if py else 0
            for pa in py[k:] + py[:k]:
                res = pa["res"]
                if "latency_error" in res or self.left() < 20:
                    continue
                try:
                    r = self.py_latency(pa)
                except (OSError, EOFError, LinkError, ValueError) as e:
                    res["latency_error"] = f"{type(e).__name__}: {e}"
                    continue
                res.setdefault("p50_us_runs", []).append(round(r["p50_us"], 1))
                res.setdefault("p99_us_runs", []).append(round(r["p99_us"], 1))
        for pa in py:
            res = pa["res"]
            if res.get("p50_us_runs"):
                res["p50_us"] = min(res["p50_us_runs"])
                res["p99_us"] = min(res["p99_us_runs"])
                res["p50_us_median"] = statistics.median(res["p50_us_runs"])
                res["p99_us_median"] = statistics.median(res["p99_us_runs"])


# ---------------------------------------------------------------- proxies

def start_broker(a, procs, tmp, server_port, workers, name="broker", extra=()):
    """relay_bench's broker, with the browser port on too (extra: more
    options): (proc, port, web port)."""
    wport = free_port()
    root = os.path.join(tmp, "webroot")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("<html><body>ws_bench</body></html>\n")
    p, port = relay_bench.start_broker(a, procs, tmp, server_port, name=name, workers=workers,
                                       extra=["--web-listen", f"127.0.0.1:{wport}",
                                              "--web-root", root] + list(extra))
    if not wait_port(wport, 5, p):
        raise Skip(f"no browser port (rc={p.poll()}): {tail(os.path.join(tmp, name, name + '.err'))}")
    return p, port, wport


def start_websockify(a, procs, tmp, server_port):
    exe = a.websockify or shutil.which("websockify") or "/usr/bin/websockify"
    if not os.access(exe, os.X_OK):
        raise Skip("websockify not installed (apt-get install websockify)")
    port = free_port()
    p = procs.start("websockify", [exe, f"127.0.0.1:{port}", f"127.0.0.1:{server_port}"], tmp)
    if not wait_port(port, 10, p):
        raise Skip(f"did not start: {tail(os.path.join(tmp, 'websockify.err'))}")
    return p, port


def websockify_version(exe):
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "websockify"],
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ---------------------------------------------------------------- report

def ratio(x, y):
    return round(x / y, 3) if x is not None and y else None


def report(results, meta):
    by = {r["path"]: r for r in results}
    cols = ["path", "Gbps", "runs", "threads", "x direct", "proxy cpu s/GB", "proxy busy",
            "client busy", "p50 us", "p99 us"]
    rows = []
    d = by.get("direct", {}).get("gbps")
    for r in results:
        if "skipped" in r:
            rows.append([r["path"], "skipped: " + r["skipped"]])
            continue
        rows.append([r["path"], fmt(r.get("gbps"), ".2f"),
                     "/".join(fmt(x, ".2f") for x in r.get("gbps_runs", [])) or "-",
                     "/".join(str(x) for x in r.get("busy_threads_runs", [])) or "-",
                     fmt(ratio(r.get("gbps"), d), ".3f"), fmt(r.get("cpu_s_per_gb"), ".3f"),
                     fmt(r.get("proxy_busy"), ".2f"), fmt(r.get("client_busy"), ".2f"),
                     fmt(r.get("p50_us"), ".1f"), fmt(r.get("p99_us"), ".1f")])
    full = [x for x in rows if len(x) == len(cols)]
    widths = [max(len(str(row[i])) for row in [cols] + full) for i in range(len(cols))]
    print(f"ws benchmark: {meta['cpus']} CPUs, load {meta['loadavg']} -> {meta['loadavg_end']}, "
          f"{meta['runs']}x{meta['seconds']}s throughput per path, {meta['latency_runs']}x"
          f"{meta['latency_count']} round trips, broker --workers {meta['workers']}, "
          f"websockify {meta['websockify']}")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in rows:
        if len(row) == 2:
            print(f"{row[0].rjust(widths[0])}  {row[1]}")
        else:
            print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    g = lambda p, k: by.get(p, {}).get(k)  # noqa: E731
    ratios = {
        "ws_broker_over_websockify_gbps": ratio(g("ws-broker", "gbps"), g("websockify", "gbps")),
        "ws_broker_over_native_gbps": ratio(g("ws-broker", "gbps"), g("native", "gbps")),
        "websockify_over_direct_gbps": ratio(g("websockify", "gbps"), g("direct", "gbps")),
        "native_over_direct_gbps": ratio(g("native", "gbps"), g("direct", "gbps")),
        "ws_broker_over_websockify_cpu_per_gb": ratio(g("ws-broker", "cpu_s_per_gb"),
                                                      g("websockify", "cpu_s_per_gb")),
        "ws_broker_over_native_cpu_per_gb": ratio(g("ws-broker", "cpu_s_per_gb"), g("native", "cpu_s_per_gb")),
        "python_over_c_direct_gbps": ratio(g("direct", "gbps"), g("direct-c", "gbps")),
        "ws_broker_w1_over_websockify_gbps": ratio(g("ws-broker-w1", "gbps"), g("websockify", "gbps")),
        "ws_broker_w1_over_websockify_cpu_per_gb": ratio(g("ws-broker-w1", "cpu_s_per_gb"),
                                                         g("websockify", "cpu_s_per_gb")),
    }
    print(f"ws-broker / websockify: throughput x{fmt(ratios['ws_broker_over_websockify_gbps'], '.3f')}, "
          f"CPU s/GB {fmt(g('ws-broker', 'cpu_s_per_gb'), '.3f')} vs {fmt(g('websockify', 'cpu_s_per_gb'), '.3f')} "
          f"(x{fmt(ratios['ws_broker_over_websockify_cpu_per_gb'], '.3f')})")
    print(f"ws-broker / native broker: throughput x{fmt(ratios['ws_broker_over_native_gbps'], '.3f')}, "
          f"CPU s/GB {fmt(g('ws-broker', 'cpu_s_per_gb'), '.3f')} vs {fmt(g('native', 'cpu_s_per_gb'), '.3f')} "
          f"(x{fmt(ratios['ws_broker_over_native_cpu_per_gb'], '.3f')})")
    if g("ws-broker-w1", "gbps") is not None:
        print(f"ws-broker-w1 (--workers 1) / websockify: throughput "
              f"x{fmt(ratios['ws_broker_w1_over_websockify_gbps'], '.3f')}, CPU s/GB "
              f"{fmt(g('ws-broker-w1', 'cpu_s_per_gb'), '.3f')} vs {fmt(g('websockify', 'cpu_s_per_gb'), '.3f')} "
              f"(x{fmt(ratios['ws_broker_w1_over_websockify_cpu_per_gb'], '.3f')})")
    if g("ws-broker", "p50_us") is not None and g("websockify", "p50_us") is not None:
        print(f"round trip p50/p99 us: ws-broker {g('ws-broker', 'p50_us')}/{g('ws-broker', 'p99_us')}, "
              f"websockify {g('websockify', 'p50_us')}/{g('websockify', 'p99_us')}, "
              f"native {g('native', 'p50_us')}/{g('native', 'p99_us')}, "
              f"direct {g('direct', 'p50_us')}/{g('direct', 'p99_us')}")
    print(f"Python client / C client, direct: x{fmt(ratios['python_over_c_direct_gbps'], '.3f')}")
    for name in ("ws-broker", "ws-broker-w1"):
        r = by.get(name, {})
        runs, th = r.get("gbps_runs", []), r.get("busy_threads_runs", [])
        if runs and len(th) == len(runs) and len(set(th)) > 1:
            split = {k: statistics.median([g for g, t in zip(runs, th) if t == k]) for k in sorted(set(th))}
            r["gbps_by_busy_threads"] = split
            print(f"{name} by busy broker threads: " +
                  ", ".join(f"{k} thread{'s' if k > 1 else ''}: {v:.2f} Gbps" for k, v in split.items()))
    relay_bench.print_errors(results)
    return ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    relay_bench.add_common_args(ap)
    ap.add_argument("--websockify", help="websockify executable (default: from PATH)")
    ap.add_argument("--workers", type=int, default=2, help="broker --workers (not the -w1 paths)")
    ap.add_argument("--paths", default="ws-broker,websockify,native,direct,ws-broker-w1,native-c,direct-c",
                    help="of ws-broker, websockify, native, direct, native-c, direct-c and the "
                         "same broker paths of a second broker with --workers 1: ws-broker-w1, "
                         "native-w1, native-c-w1")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--latency-count", type=int, default=2000)
    ap.add_argument("--latency-runs", type=int, default=3, help="0 = no round trips")
    ap.add_argument("--budget", type=float, default=200, help="whole-run time bound, seconds")
    a = ap.parse_args()
    relay_bench.find_peer(a, "ws_bench")
    a.runs = max(1, min(a.runs, 20))
    a.seconds = max(0.5, min(a.seconds, 20))
    a.latency_runs = max(0, min(a.latency_runs, 10))
    a.latency_count = max(100, min(a.latency_count, 100000))

    meta = {"cpus": os.cpu_count(), "loadavg": "%.2f" % os.getloadavg()[0], "runs": a.runs,
            "seconds": a.seconds, "latency_count": a.latency_count, "latency_runs": a.latency_runs,
            "workers": a.workers, "python": sys.version.split()[0]}
    tmp = tempfile.mkdtemp(prefix="spice-wsbench-")
    procs = Procs()
    results, paths = [], []
    wsk = None
    try:
        sport = relay_bench.start_peer_server(procs, a.peer, tmp, a.budget + 30, "ws_bench")
        names = [p.strip() for p in a.paths.split(",") if p.strip()]
        known = {"ws-broker", "websockify", "native", "direct", "native-c", "direct-c",
                 "ws-broker-w1", "native-w1", "native-c-w1"}
        for n in names:
            if n not in known:
                sys.exit(f"ws_bench: unknown path {n} (known: {', '.join(sorted(known))})")
        brokers = {}   # suffix -> (proc, native port, web port) or why it is missing
        for suffix, workers in (("", a.workers), ("-w1", 1)):
            if not {"ws-broker" + suffix, "native" + suffix, "native-c" + suffix} & set(names):
                continue
            try:
                brokers[suffix] = start_broker(a, procs, tmp, sport, workers, "broker" + suffix)
            except Skip as e:
                brokers[suffix] = str(e)
        wsport = None
        if "websockify" in names:
            try:
                wsk, wsport = start_websockify(a, procs, tmp, sport)
            except Skip as e:
                wsk = str(e)
        meta["websockify"] = websockify_version(a.websockify)
        for n in names:
            res = {"path": n}
            results.append(res)
            if n in ("direct", "direct-c"):
                paths.append({"res": res, "port": sport, "pids": lambda: [], "has_proxy": False,
                              "c": n == "direct-c"})
            elif n == "websockify":
                if isinstance(wsk, str):
                    res["skipped"] = wsk
                    continue
                paths.append({"res": res, "port": wsport, "ws": "/", "has_proxy": True,
                              "pids": lambda pid=wsk.pid: proc_tree(pid), "proc": wsk})
            else:
                b = brokers["-w1" if n.endswith("-w1") else ""]
                if isinstance(b, str):
                    res["skipped"] = b
                    continue
                broker, bport, wport = b
                pa = {"res": res, "has_proxy": True, "pids": lambda pid=broker.pid: proc_tree(pid),
                      "proc": broker, "c": n.startswith("native-c"), "threads_of": broker.pid}
                if n.startswith("ws-broker"):
                    pa.update(port=wport, ws=f"/?token={TOKEN}")
                else:
                    pa.update(port=bport)
                paths.append(pa)
        bench = Bench(a)
        time.sleep(0.5)
        if a.latency_runs:
            log("ws_bench: round trips")
            bench.latency(paths)
        log("ws_bench: throughput")
        bench.throughput(paths)
        for pa in paths:
            p = pa.get("proc")
            if p is not None and p.poll() is not None:
                pa["res"]["exited"] = p.returncode
        meta["loadavg_end"] = "%.2f" % os.getloadavg()[0]
        ratios = report(results, meta)
        print(json.dumps({"bench": "ws", "meta": meta, "ratios": ratios,
                          "paths": {r["path"]: r for r in results}}, sort_keys=True))
    finally:
        if wsk is not None and not isinstance(wsk, str) and wsk.poll() is None:
            # websockify forks one process per connection: stop those by PID too
            for pid in proc_tree(wsk.pid):
                if pid != wsk.pid:
                    procs.extra.add(pid)
        procs.stop_all()
        relay_bench.remove_tmp("ws_bench", tmp)


if __name__ == "__main__":
    main()
