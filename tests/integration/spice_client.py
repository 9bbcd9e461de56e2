#!/usr/bin/python3
# Must run under Debian's /usr/bin/python3 (python3-gi); stdlib + gi only.
"""Headless spice-gtk client for the integration tests.

    spice_client.py HOST PORT [--password PW] [--seconds N] [--smartcard]
        [--tls-port N]                 SPICE over TLS (see "TLS" below); PORT 0 (or
                                       left out) = no plaintext port
        [--ca-file F]                  PEM CA certificate(s) for the server's
                                       certificate (SpiceSession "ca-file")
        [--secure-channels LIST]       "all" (default with --tls-port), "none", or
                                       e.g. main,display: channels opened with TLS
        [--host-subject S]             expected certificate subject ("C=..,CN=..")
        [--verify FLAGS]               comma list of hostname|pubkey|subject|none
                                       (spice-gtk's default: hostname)
        [--mouse-request T:MODE ...]   MODE = server|client; T = seconds after the
                                       main channel opened
        [--keys HEX,HEX,...]           scancodes (set 1; 0x1xx = E0-prefixed) to
                                       press+release through the inputs channel
        [--keys-start T]               seconds after the inputs channel opened (0.5)
        [--key-interval S]             seconds between two key events (0.05)
        [--keys-go-file F]             type only once F exists (and keys-start has
                                       passed): lets a test open the typing window
        [--peer-poll-ms N]             poll every channel's TCP peer each N ms and
                                       log "peer-change" (100; 0 = off)
        [--inval-log-ms N]             log an "inval" event {n} at most every N ms
                                       while display updates come (250; 0 = off):
                                       lets a test see the display live
        [--events-file F]              every event as a JSON line, as it happens
        [--ready-file F]               created once every channel the server
                                       announced has opened
        [--exit-when-ready]            quit 0.2 s after that
        [--stay]                       do not exit early when every channel has
                                       closed/failed (default: exit 0.3 s later)
        [--no-events]
        [--snap-dir D]                 pixel snapshots on request: when D/NAME.req
                                       appears (polled every 10 ms), write the
                                       display#0 primary surface as D/NAME.ppm
                                       (P6, RGB) and D/NAME.json (metadata), both
                                       by rename, then remove D/NAME.req

TLS (spice-gtk 0.42, OpenSSL): a channel goes to the SpiceSession "tls-port"
with TLS when its type is in "secure-channels" ("all" = every channel), when
"port" is unset (no plaintext port to try), or when the plaintext link is
answered SPICE_LINK_ERR_NEED_SECURED (reconnect to tls-port). --tls-port sets
"tls-port" and, unless --secure-channels none, secure-channels=["all"]; "port"
is set only when PORT > 0. The server certificate is checked against
"ca-file" (--ca-file; unset = OpenSSL's default paths) per "verify":
hostname = session host against the subjectAltName (DNS and IP entries; CN
only without SAN), subject = "cert-subject" (--host-subject), pubkey = the
"pubkey" property (not exposed here). A failed handshake or verification is
the channel event error_tls. spice-gtk does not expose a per-channel TLS flag:
with --tls-port each channel gets "tls": true when its TCP peer port is the
tls-port (and differs from PORT), and the summary has a "tls" object.

Connects the session, then every channel the server announces (the probe calls
channel.connect() from channel-new, like a real viewer). Runs until --seconds
elapse, SIGTERM/SIGINT, or (unless --stay) every channel is closed/failed.
Prints ONE JSON object on stdout:

  {"spice_gtk", "host", "port", "duration", "main_opened", "exit_reason",
   "channels": {"main#0": {"type","id","opened_t","peer","local",
                           "events":[[t,ev],..],
                           "closed_t"}, ...},
   "opened": ["cursor#0", ...], "errors": [[t,"main#0","error_auth"], ...],
   "first_terminal_t": t of the first closed/error event or null,
   "counts": {...}, "invalidate": {"count","first_t","last_t","max_gap",
   "max_gap_at", "rate_hz"},
   "mouse": {"requests": [[t,mode]], "updates": [[t,mode]]},
   "keys": {"sent": [[t,scancode,"press"|"release"]], "dropped": n},
   "migration": {"started": [[t,host,port]], "states": [[t,state]]},
   "final_peers": {"main#0": "127.0.0.1:5900", ...}, "mono0": m,
   "events": [...]}
  with --tls-port also: "tls": {"tls_port", "ca_file", "secure_channels",
   "verify", "host_subject", "channels_tls": {"main#0": true, ...},
   "all_tls": bool (every opened channel on the tls-port),
   "error_tls": ["display#0", ...], "warnings": [[t, domain, message], ...]
   (spice-gtk's g_warning/critical lines: why a handshake failed)} and per
   channel "tls": bool|null

t = seconds since start (monotonic); mono0 = time.monotonic() at t = 0
(CLOCK_MONOTONIC is system-wide: a test converts its own timestamps with it;
also in the "session-connect" event). Migration is observed, never acted on:
"migration-started" (main channel signal) and "migration-state" (session
property) are logged and counted. Exit 0 if the main channel opened, else 1.
"""
import argparse
import ctypes
import json
import os
import signal
import sys
import time

import gi

gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, GObject  # noqa: E402
from gi.repository import SpiceClientGLib as Spice  # noqa: E402

CHAN_NAMES = {1: "main", 2: "display", 3: "inputs", 4: "cursor", 5: "playback",
              6: "record", 7: "tunnel", 8: "smartcard", 9: "usbredir", 10: "port",
              11: "webdav"}
CH_EVENTS = {int(getattr(Spice.ChannelEvent, n)): n.lower() for n in
             ("NONE", "OPENED", "SWITCHING", "CLOSED", "ERROR_CONNECT", "ERROR_TLS",
              "ERROR_LINK", "ERROR_AUTH", "ERROR_IO")}
TERMINAL = {"closed", "error_connect", "error_tls", "error_link", "error_auth",
            "error_io"}
MOUSE_MODES = {"server": 1, "client": 2}
MOUSE_NAMES = {1: "server", 2: "client"}
MIG_STATES = {}
for _n in ("NONE", "SWITCHING", "MIGRATING", "CONNECTING"):
    if hasattr(Spice.SessionMigration, _n):
        MIG_STATES[int(getattr(Spice.SessionMigration, _n))] = _n.lower()
MAX_INVAL = 200000


class _Primary(ctypes.Structure):
    # SpiceDisplayPrimary (spice-gtk channel-display.h)
    _fields_ = [("format", ctypes.c_int), ("width", ctypes.c_int),
                ("height", ctypes.c_int), ("stride", ctypes.c_int),
                ("shmid", ctypes.c_int), ("data", ctypes.c_void_p),
                ("marked", ctypes.c_int)]


_GET_PRIMARY = []


def _get_primary():
    """spice_display_channel_get_primary(SpiceChannel *, guint32, SpiceDisplayPrimary *)."""
    if not _GET_PRIMARY:
        lib = ctypes.CDLL("libspice-client-glib-2.0.so.8")
        fn = lib.spice_display_channel_get_primary
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(_Primary)]
        _GET_PRIMARY.append(fn)
    return _GET_PRIMARY[0]


def _gobject_ptr(obj):
    """The C GObject* behind a pygobject wrapper (its __gpointer__ capsule)."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get(obj.__gpointer__, None)


def gconnect(obj, sig, cb, *extra):
    # SpiceSession/SpiceChannel.connect() open connections and shadow
    # GObject.connect(): call the GObject one explicitly.
    return GObject.Object.connect(obj, sig, cb, *extra)


def peer_of(ch, local=False):
    try:
        sock = ch.get_property("socket")
        if sock is None:
            return None
        addr = sock.get_local_address() if local else sock.get_remote_address()
        return "%s:%d" % (addr.get_address().to_string(), addr.get_port())
    except Exception:
        return None


class Client:
    def __init__(self, a):
        self.a = a
        self.t0 = time.monotonic()
        self.events = []
        self.chans = {}          # key "type#id" -> info dict
        self.objs = {}           # id(obj) -> key
        self.keep = {}           # key -> channel object: keeps the Python wrapper
        #                          alive so id(obj) stays stable across signals
        self.inval = []
        self.inval_logged = -1.0
        self.counts = {"display-invalidate": 0, "display-primary-create": 0,
                       "main-mouse-update": 0, "main-agent-update": 0,
                       "channel-opened": 0, "disconnected": 0,
                       "migration-started": 0, "migration-state": 0, "peer-change": 0}
        self.mig_started = []
        self.mig_states = []
        self.mouse_requests = []
        self.mouse_updates = []
        self.keys_sent = []
        self.keys_dropped = 0
        self.main = None
        self.inputs = None
        self.display = None
        self.snaps = []
        self.main_opened = False
        self.exit_reason = None
        self.first_terminal = None
        self.ready_written = False
        self.quitting = False
        self.loop = GLib.MainLoop()
        self.evf = open(a.events_file, "w") if a.events_file else None
        self.glog = []           # --tls-port: [t, domain, message] warnings

    def now(self):
        return round(time.monotonic() - self.t0, 4)

    def log(self, ev, **kw):
        rec = {"t": self.now(), "ev": ev}
        rec.update(kw)
        self.events.append(rec)
        if self.evf:
            self.evf.write(json.dumps(rec) + "\n")
            self.evf.flush()

    def quit(self, reason, delay_ms=0):
        if self.quitting:
            return
        self.quitting = True
        self.exit_reason = reason
        self.log("quit", reason=reason)
        GLib.timeout_add(delay_ms, lambda: (self.loop.quit(), False)[1])

    # ------------------------------------------------------------ session
    def on_glog(self, domain, level, message, _data=None):
        """--tls-port: keep spice-gtk's warnings (the reason of an error_tls,
        e.g. "ssl: hostname '127.0.0.1' verification failed" or "Error in
        certificate chain verification: ...") for the summary; stderr still
        gets them (GLib's default handler)."""
        if len(self.glog) < 200:
            self.glog.append([self.now(), domain, str(message)])
        try:
            GLib.log_default_handler(domain, level, message, None)
        except Exception:
            pass

    def start(self):
        if self.a.tls_port is not None:
            lv = (GLib.LogLevelFlags.LEVEL_WARNING | GLib.LogLevelFlags.LEVEL_CRITICAL
                  | GLib.LogLevelFlags.FLAG_FATAL | GLib.LogLevelFlags.FLAG_RECURSION)
            for dom in ("Spice", "GSpice"):
                GLib.log_set_handler(dom, lv, self.on_glog, None)
        s = Spice.Session()
        s.set_property("host", self.a.host)
        if self.a.port > 0 or self.a.tls_port is None:
            s.set_property("port", str(self.a.port))
        if self.a.tls_port is not None:
            s.set_property("tls-port", str(self.a.tls_port))
            s.set_property("secure-channels", self.a.secure_channels)
            if self.a.ca_file is not None:
                s.set_property("ca-file", self.a.ca_file)
            if self.a.host_subject is not None:
                s.set_property("cert-subject", self.a.host_subject)
            if self.a.verify is not None:
                s.set_property("verify", self.a.verify)
        if self.a.password is not None:
            s.set_property("password", self.a.password)
        s.set_property("enable-smartcard", bool(self.a.smartcard))
        self.session = s
        gconnect(s, "channel-new", self.on_channel_new)
        gconnect(s, "channel-destroy", self.on_channel_destroy)
        gconnect(s, "disconnected", self.on_disconnected)
        gconnect(s, "notify::migration-state", self.on_mig_state)
        ok = Spice.Session.connect(s)
        self.log("session-connect", host=self.a.host, port=self.a.port, ok=bool(ok),
                 mono0=self.t0)
        if self.a.peer_poll_ms > 0:
            GLib.timeout_add(self.a.peer_poll_ms, self.poll_peers)
        if self.a.snap_dir:
            GLib.timeout_add(10, self.poll_snaps)
        GLib.timeout_add(int(self.a.seconds * 1000), self.on_timeout)
        for sig in (signal.SIGINT, signal.SIGTERM):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, self.on_signal, sig)

    def on_timeout(self):
        self.quit("timeout")
        return False

    def on_signal(self, sig):
        self.quit("signal")
        return False

    def on_mig_state(self, s, pspec):
        st = int(s.get_property("migration-state"))
        name = MIG_STATES.get(st, str(st))
        self.counts["migration-state"] += 1
        self.mig_states.append([self.now(), name])
        self.log("migration-state", state=name)

    def on_migration_started(self, ch, mig_session):
        self.counts["migration-started"] += 1
        host = port = None
        try:
            host = mig_session.get_property("host")
            port = mig_session.get_property("port")
        except Exception:
            pass
        self.mig_started.append([self.now(), host, port])
        self.log("migration-started", dest_host=host, dest_port=port)

    def poll_peers(self):
        if self.quitting:
            return False
        for key, ch in list(self.keep.items()):
            info = self.chans.get(key)
            if info is None or info["opened_t"] is None:
                continue
            p = peer_of(ch)
            if p is not None and p != info["peer"]:
                self.counts["peer-change"] += 1
                self.log("peer-change", ch=key, old=info["peer"], new=p)
                info["peer"] = p
        return True

    def on_disconnected(self, s):
        self.counts["disconnected"] += 1
        self.log("disconnected")

    # ------------------------------------------------------------ channels
    def on_channel_new(self, s, ch):
        ctype = ch.get_property("channel-type")
        cid = ch.get_property("channel-id")
        name = CHAN_NAMES.get(ctype, str(ctype))
        key = "%s#%d" % (name, cid)
        self.log("channel-new", ch=key)
        self.chans[key] = {"type": name, "id": cid, "opened_t": None, "peer": None,
                           "local": None,
                           "events": [], "closed_t": None, "state": "new"}
        self.objs[id(ch)] = key
        self.keep[key] = ch
        gconnect(ch, "channel-event", self.on_channel_event)
        if isinstance(ch, Spice.MainChannel):
            self.main = ch
            gconnect(ch, "main-mouse-update", self.on_mouse_update)
            gconnect(ch, "main-agent-update", self.on_agent_update)
            gconnect(ch, "migration-started", self.on_migration_started)
        else:
            if isinstance(ch, Spice.DisplayChannel):
                if cid == 0:
                    self.display = ch
                gconnect(ch, "display-primary-create", self.on_primary_create)
                gconnect(ch, "display-invalidate", self.on_invalidate)
            elif isinstance(ch, Spice.InputsChannel):
                self.inputs = ch
            Spice.Channel.connect(ch)

    def on_channel_destroy(self, s, ch):
        key = self.objs.pop(id(ch), "?")
        self.keep.pop(key, None)
        self.log("channel-destroy", ch=key)
        if key in self.chans:
            self.chans[key]["destroyed"] = True
            if self.chans[key]["state"] not in TERMINAL:
                self.chans[key]["state"] = "closed"
        self.check_all_closed()

    def on_channel_event(self, ch, event):
        key = self.objs.get(id(ch), "?")
        ev = CH_EVENTS.get(int(event), str(int(event)))
        peer = peer_of(ch)
        t = self.now()
        self.log("channel-event", ch=key, event=ev, peer=peer)
        info = self.chans.get(key)
        if info is None:
            return
        info["events"].append([t, ev])
        info["state"] = ev
        if ev == "opened":
            self.counts["channel-opened"] += 1
            info["opened_t"] = t
            info["peer"] = peer
            info["local"] = peer_of(ch, local=True)
            if self.a.tls_port is not None:
                info["tls"] = self.peer_is_tls(peer)
            if info["type"] == "main":
                self.main_opened = True
                for spec in self.a.mouse_request:
                    when, mode = spec
                    GLib.timeout_add(int(when * 1000), self.do_mouse_request, mode)
            if info["type"] == "inputs" and self.a.keys:
                GLib.timeout_add(int(self.a.keys_start * 1000), self.start_keys)
            self.check_ready()
        elif ev in TERMINAL:
            if info["closed_t"] is None:
                info["closed_t"] = t
            if self.first_terminal is None:
                self.first_terminal = t
            self.check_all_closed()

    def peer_is_tls(self, peer):
        """spice-gtk picks the port by TLS: tls-port <=> TLS (None: unknown)."""
        if peer is None or self.a.tls_port == self.a.port:
            return None
        try:
            port = int(peer.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return None
        return port == self.a.tls_port

    def check_ready(self):
        if self.ready_written or not self.main_opened:
            return
        # main opens before CHANNELS_LIST arrives: wait for other channels
        if len(self.chans) > 1 and all(c["opened_t"] is not None
                                       for c in self.chans.values()):
            self.ready_written = True
            if self.a.ready_file:
                with open(self.a.ready_file + ".tmp", "w") as f:
                    json.dump(sorted(self.chans), f)
                os.rename(self.a.ready_file + ".tmp", self.a.ready_file)
            self.log("ready", channels=sorted(self.chans))
            if self.a.exit_when_ready:
                self.quit("ready", 200)

    def check_all_closed(self):
        if self.a.stay or not self.chans:
            return
        if all(c["state"] in TERMINAL for c in self.chans.values()):
            self.quit("all-channels-closed", 300)

    # ------------------------------------------------------------ main
    def on_mouse_update(self, ch):
        self.counts["main-mouse-update"] += 1
        mode = int(ch.get_property("mouse-mode"))
        name = MOUSE_NAMES.get(mode, str(mode))
        self.mouse_updates.append([self.now(), name])
        self.log("main-mouse-update", mode=name)

    def on_agent_update(self, ch):
        self.counts["main-agent-update"] += 1
        self.log("main-agent-update")

    def do_mouse_request(self, mode):
        self.mouse_requests.append([self.now(), mode])
        self.log("mouse-request", mode=mode)
        if self.main is not None:
            self.main.request_mouse_mode(MOUSE_MODES[mode])
        return False

    # ------------------------------------------------------------ inputs
    def start_keys(self):
        if self.a.keys_go_file and not os.path.exists(self.a.keys_go_file):
            if self.quitting:
                return False
            GLib.timeout_add(10, self.start_keys)
            return False
        self.log("keys-start", n=len(self.a.keys))
        seq = []
        for sc in self.a.keys:
            seq.append((sc, "press"))
            seq.append((sc, "release"))
        self.key_seq = seq
        self.send_next_key()
        return False

    def send_next_key(self):
        if not self.key_seq:
            self.log("keys-done", n=len(self.keys_sent))
            return False
        sc, what = self.key_seq.pop(0)
        info = self.chans.get("inputs#0")
        if self.inputs is None or info is None or info["state"] != "opened":
            self.keys_dropped += 1
        else:
            if what == "press":
                self.inputs.key_press(sc)
            else:
                self.inputs.key_release(sc)
            self.keys_sent.append([self.now(), sc, what])
        GLib.timeout_add(int(self.a.key_interval * 1000), self.send_next_key)
        return False

    # ------------------------------------------------------------ display
    def on_primary_create(self, ch, fmt, w, h, stride, shmid, data):
        self.counts["display-primary-create"] += 1
        self.log("display-primary-create", width=w, height=h)

    def on_invalidate(self, ch, x, y, w, h):
        self.counts["display-invalidate"] += 1
        t = self.now()
        if len(self.inval) < MAX_INVAL:
            self.inval.append(t)
        if self.a.inval_log_ms > 0 and (t - self.inval_logged) * 1000 >= self.a.inval_log_ms:
            self.inval_logged = t
            self.log("inval", n=self.counts["display-invalidate"])

    # ------------------------------------------------------------ snapshots
    def poll_snaps(self):
        if self.quitting:
            return False
        try:
            names = sorted(n[:-4] for n in os.listdir(self.a.snap_dir) if n.endswith(".req"))
        except OSError:
            return True
        for name in names:
            meta = self.snapshot(os.path.join(self.a.snap_dir, name))
            self.snaps.append(meta)
            self.log("snapshot", name=name, ok=meta["ok"], error=meta.get("error"))
            try:
                os.unlink(os.path.join(self.a.snap_dir, name + ".req"))
            except OSError:
                pass
        return True

    def snapshot(self, base):
        """display#0's primary surface -> base.ppm (P6 RGB) + base.json. The
        surface is only written by the display channel in this main loop, so
        the copy is consistent."""
        meta = {"t": self.now(), "mono": time.monotonic(), "ok": False,
                "invalidates": self.counts["display-invalidate"],
                "last_inval_t": self.inval[-1] if self.inval else None,
                "primary_creates": self.counts["display-primary-create"]}
        try:
            if self.display is None:
                raise RuntimeError("no display#0 channel")
            # spice_display_channel_get_primary() through ctypes: the gi
            # wrapper of SpiceDisplayPrimary reads its fields at wrong offsets
            # (format comes back as format | width << 32), so the C struct is
            # declared here as spice-gtk's channel-display.h has it.
            prim = _Primary()
            if not _get_primary()(_gobject_ptr(self.display), 0, ctypes.byref(prim)):
                raise RuntimeError("no primary surface")
            w, h, stride, fmt = prim.width, prim.height, prim.stride, int(prim.format)
            meta.update(width=w, height=h, stride=stride, format=fmt)
            # SPICE_SURFACE_FMT_32_xRGB (32) / 32_ARGB (96): B,G,R,X bytes
            if fmt not in (32, 96):
                raise RuntimeError("surface format %d not supported" % fmt)
            if not (0 < w <= 8192 and 0 < h <= 8192 and stride >= w * 4):
                raise RuntimeError("bad primary %dx%d stride %d" % (w, h, stride))
            if not prim.data:
                raise RuntimeError("primary surface without data")
            raw = ctypes.string_at(prim.data, stride * h)
            out = bytearray(w * h * 3)
            for y in range(h):
                row = raw[y * stride:y * stride + w * 4]
                o = y * w * 3
                out[o:o + w * 3:3] = row[2::4]
                out[o + 1:o + w * 3:3] = row[1::4]
                out[o + 2:o + w * 3:3] = row[0::4]
            with open(base + ".ppm.tmp", "wb") as f:
                f.write(b"P6\n%d %d\n255\n" % (w, h))
                f.write(out)
            os.rename(base + ".ppm.tmp", base + ".ppm")
            meta["ok"] = True
        except Exception as e:     # reported to the test, never fatal here
            meta["error"] = "%s: %s" % (type(e).__name__, e)
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".json.tmp", base + ".json")
        return meta

    # ------------------------------------------------------------ summary
    def summary(self):
        ts = self.inval
        gap, gap_at = None, None
        for i in range(len(ts) - 1):
            g = ts[i + 1] - ts[i]
            if gap is None or g > gap:
                gap, gap_at = g, ts[i]
        out = {
            "spice_gtk": Spice.util_get_version_string(),
            "host": self.a.host, "port": self.a.port,
            "duration": self.now(), "main_opened": self.main_opened,
            "exit_reason": self.exit_reason,
            "channels": self.chans,
            "opened": sorted(k for k, v in self.chans.items() if v["opened_t"] is not None),
            "errors": [[t, k, ev] for k, v in self.chans.items() for t, ev in v["events"]
                       if ev.startswith("error")],
            "first_terminal_t": self.first_terminal,
            "counts": self.counts,
            "invalidate": {
                "count": len(ts), "first_t": ts[0] if ts else None,
                "last_t": ts[-1] if ts else None,
                "max_gap": round(gap, 4) if gap is not None else None,
                "max_gap_at": gap_at,
                "rate_hz": round(len(ts) / (ts[-1] - ts[0]), 2)
                if len(ts) > 1 and ts[-1] > ts[0] else None,
                "timestamps": ts if self.a.inval_timestamps else None,
            },
            "mouse": {"requests": self.mouse_requests, "updates": self.mouse_updates},
            "keys": {"sent": self.keys_sent, "dropped": self.keys_dropped},
            "migration": {"started": self.mig_started, "states": self.mig_states},
            "final_peers": {k: v["peer"] for k, v in self.chans.items()},
            "mono0": self.t0,
        }
        if self.a.snap_dir:
            out["snapshots"] = self.snaps
        if self.a.tls_port is not None:
            ctls = {k: v.get("tls") for k, v in self.chans.items()
                    if v["opened_t"] is not None}
            out["tls"] = {
                "tls_port": self.a.tls_port, "ca_file": self.a.ca_file,
                "secure_channels": self.a.secure_channels,
                "verify": self.a.verify_names, "host_subject": self.a.host_subject,
                "channels_tls": ctls,
                "all_tls": bool(ctls) and all(x is True for x in ctls.values()),
                "error_tls": sorted({k for k, v in self.chans.items()
                                     for _, ev in v["events"] if ev == "error_tls"}),
                "warnings": self.glog,
            }
        if not self.a.no_events:
            out["events"] = self.events
        return out


def parse_mouse(spec):
    t, _, mode = spec.partition(":")
    if mode not in MOUSE_MODES:
        raise argparse.ArgumentTypeError("mode must be server or client")
    return (float(t), mode)


def parse_keys(spec):
    return [int(x, 16) for x in spec.split(",") if x]


VERIFY_FLAGS = {"hostname": "HOSTNAME", "pubkey": "PUBKEY", "subject": "SUBJECT"}


def parse_verify(spec):
    names = [x.strip().lower() for x in spec.split(",") if x.strip()]
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in VERIFY_FLAGS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            "comma list of %s, or none" % "|".join(sorted(VERIFY_FLAGS)))
    return sorted(set(names))


def parse_secure(spec):
    names = [x.strip() for x in spec.split(",") if x.strip()]
    if names == ["none"]:
        return []
    known = set(CHAN_NAMES.values()) | {"all"}
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError("all, none or a comma list of %s" % (
            ",".join(sorted(CHAN_NAMES.values()))))
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host")
    ap.add_argument("port", type=int, nargs="?", default=0,
                    help="plaintext port; 0 or left out: none (needs --tls-port)")
    ap.add_argument("--password", default=None)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--smartcard", action="store_true")
    ap.add_argument("--mouse-request", type=parse_mouse, action="append", default=[])
    ap.add_argument("--keys", type=parse_keys, default=[])
    ap.add_argument("--keys-start", type=float, default=0.5)
    ap.add_argument("--key-interval", type=float, default=0.05)
    ap.add_argument("--keys-go-file", default=None)
    ap.add_argument("--peer-poll-ms", type=int, default=100)
    ap.add_argument("--inval-log-ms", type=int, default=250)
    ap.add_argument("--events-file", default=None)
    ap.add_argument("--ready-file", default=None)
    ap.add_argument("--stay", action="store_true")
    ap.add_argument("--exit-when-ready", action="store_true",
                    help="quit 0.2 s after every announced channel opened")
    ap.add_argument("--no-events", action="store_true")
    ap.add_argument("--inval-timestamps", action="store_true")
    ap.add_argument("--snap-dir", default=None,
                    help="write display#0 snapshots when D/NAME.req appears")
    ap.add_argument("--tls-port", type=int, default=None,
                    help="SPICE over TLS on this port (SpiceSession tls-port)")
    ap.add_argument("--ca-file", default=None,
                    help="PEM CA file for the server certificate (ca-file)")
    ap.add_argument("--secure-channels", type=parse_secure, default=["all"],
                    help="with --tls-port: all (default), none, or a comma list")
    ap.add_argument("--host-subject", default=None,
                    help="expected server certificate subject (cert-subject)")
    ap.add_argument("--verify", type=parse_verify, default=None,
                    help="comma list of hostname|pubkey|subject, or none "
                    "(default: spice-gtk's, hostname)")
    a = ap.parse_args()
    if a.tls_port is None:
        for opt in ("ca_file", "host_subject", "verify"):
            if getattr(a, opt) is not None:
                ap.error("--%s needs --tls-port" % opt.replace("_", "-"))
    elif not 0 < a.tls_port < 65536:
        ap.error("--tls-port must be in 1..65535")
    if not 0 <= a.port < 65536:
        ap.error("PORT must be in 0..65535")
    if a.port == 0 and a.tls_port is None:
        ap.error("PORT is required without --tls-port")
    a.verify_names = a.verify
    if a.verify is not None:
        flags = 0
        for n in a.verify:
            flags |= int(getattr(Spice.SessionVerify, VERIFY_FLAGS[n]))
        a.verify = Spice.SessionVerify(flags)
    if not 0 < a.seconds <= 600:
        ap.error("--seconds must be in (0, 600]")
    os.environ.setdefault("GDK_BACKEND", "none")
    c = Client(a)
    c.start()
    c.loop.run()
    try:
        Spice.Session.disconnect(c.session)
    except Exception:
        pass
    print(json.dumps(c.summary()), flush=True)
    return 0 if c.main_opened else 1


if __name__ == "__main__":
    sys.exit(main())
