#!/usr/bin/python3
"""Integration-test harness: real QEMU + real spice-gtk around spice-broker.

Library only (stdlib; spice_client.py, run as a subprocess, is the gi part).

  free_port()                         a free TCP port on 127.0.0.1
  Env(args)                           one test run: temp dir, binaries, every
                                      process started, cleanup
  Qemu(env, ...)                      QEMU with SPICE on 127.0.0.1:<free port>,
                                      QMP, the test guest, every SPICE channel;
                                      incoming=True: a migration destination
                                      (-incoming tcp:127.0.0.1:<free port>)
  Qemu.dest_like(src)                 a destination QEMU matching src (same guest,
                                      password, devices), not started yet
  Migration(src, dst, ...)            QMP side of one live migration (what
                                      libvirt does): client_migrate_info, migrate,
                                      query-migrate polling with timestamps
  QMP(path)                           small QMP client
  Broker(env, ...)                    spice-broker + spice-brokerctl wrapper
                                      (token add --instance, migration prepare,
                                      session list, migration log lines)
  SpiceClient(env, host, port, ...)   headless spice-gtk client (subprocess)
  MigSession(env, src)                broker + token --instance + client, prepare(),
                                      session(), wait_backend(), mouse_mode()
  seamless_failures(), switch_gap(),  what a client of a hidden migration must not
  seamless_scenario()                 see; the blackout; one checked migration
  read_ppm(), image_diff()            pixels: QMP screendump / client snapshots
                                      (Qemu.screendump, SpiceClient.snapshot)
  raw SPICE link helpers              link_header(), link_mess(), LinkConn,
                                      rsa_oaep_encrypt() (ticket, stdlib only)
  run(test_fn, ...)                   standard main(): --build-dir, --direct,
                                      --keep; exit 0 pass / 1 fail / 77 skip

Every wait is bounded, every process is killed by PID at the end, everything
listens on 127.0.0.1 only and all state lives in one tempfile.mkdtemp() dir.
"""
import argparse
import base64
import calendar
import ctypes
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_ROOT = os.path.dirname(os.path.dirname(HERE))
GI_PYTHON = "/usr/bin/python3"
QEMU_BIN = os.environ.get("QEMU", "qemu-system-x86_64")
SKIP = 77

# SPICE constants (spice-protocol enums.h)
SPICE_MAGIC = b"REDQ"
LINK_ERR = {0: "OK", 1: "ERROR", 2: "INVALID_MAGIC", 3: "INVALID_DATA",
            4: "VERSION_MISMATCH", 5: "NEED_SECURED", 6: "NEED_UNSECURED",
            7: "PERMISSION_DENIED", 8: "BAD_CONNECTION_ID",
            9: "CHANNEL_NOT_AVAILABLE"}
ERR_OK, ERR_PERMISSION_DENIED, ERR_BAD_CONNECTION_ID = 0, 7, 8
CH_MAIN, CH_DISPLAY, CH_INPUTS = 1, 2, 3
CAP_AUTH_SELECTION, CAP_AUTH_SPICE, CAP_AUTH_SASL, CAP_MINI_HEADER = 0, 1, 2, 3


class TestFailure(Exception):
    pass


class TestSkip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def log(msg):
    print("[%7.2f] %s" % (time.monotonic() - _T0, msg), flush=True)


_T0 = time.monotonic()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until truthy (returned) or timeout (TestFailure)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TestFailure("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def port_accepts(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unix_exchange(path, request, timeout=5.0):
    """Sends request (bytes) on a new connection to the unix socket path and
    returns everything read until the other side closes."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(request)
        data = b""
        while True:
            got = s.recv(65536)
            if not got:
                return data
            data += got
    finally:
        s.close()


def relay_pump(src, dst, tap=None):
    """Copies src to dst until either ends (tap, if given, sees every chunk),
    then shuts both down."""
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            if tap is not None:
                tap(b)
            dst.sendall(b)
    except OSError:
        pass
    for s in (dst, src):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class TcpRelay(threading.Thread):
    """A TCP relay on 127.0.0.1:<free port> (self.port): the n-th connection
    (n = 0, 1, ...) goes to 127.0.0.1:target(n); taps(n), if given, returns
    (up, down): callables that see every chunk toward the target and back
    (either may be None). self.n counts the connections relayed."""

    def __init__(self, target, taps=None):
        super().__init__(daemon=True)
        self.target, self.taps = target, taps
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.n = 0

    def run(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target(self.n)), timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            up, down = self.taps(self.n) if self.taps is not None else (None, None)
            self.n += 1
            threading.Thread(target=relay_pump, args=(c, u, up), daemon=True).start()
            threading.Thread(target=relay_pump, args=(u, c, down), daemon=True).start()

    def close(self):
        self.lsock.close()


def spice_peer_server(env, max_seconds=120, exe=None):
    """Starts spice_peer (exe, default the build's tests/bench/spice_peer) as a
    synthetic SPICE server on a free 127.0.0.1 port (killed with the test):
    (executable, port), or (None, None) when it is not built."""
    exe = exe or os.path.join(env.build_dir or "", "tests/bench/spice_peer")
    if not os.access(exe, os.X_OK):
        return None, None
    p = subprocess.Popen([exe, "server", "--listen", "127.0.0.1:0", "--max-seconds",
                          str(max_seconds)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    env.procs.append(("spice_peer server", p))
    line = p.stdout.readline()
    check(line.startswith("listening "), "spice_peer server: %r" % line)
    return exe, int(line.split(":")[-1])


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------- Env
class Env:
    """One test run: temp dir, resolved binaries, processes to clean up."""

    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="sb-it-")
        self.procs = []            # (name, Popen) started by this run
        self.build_dir = os.path.abspath(args.build_dir) if args.build_dir else None
        self.direct = args.direct
        self.broker_exe = self._resolve("SPICE_BROKER", "broker/spice-broker")
        self.brokerctl_exe = self._resolve("SPICE_BROKERCTL", "broker/spice-brokerctl")
        self._guest = None

    def _resolve(self, var, rel):
        v = os.environ.get(var)
        if v:
            return v
        if self.build_dir:
            return os.path.join(self.build_dir, rel)
        return None

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def require_broker(self):
        """Skip (77) unless the broker binaries exist (or --direct)."""
        if self.direct:
            return
        for var, exe in (("SPICE_BROKER", self.broker_exe),
                         ("SPICE_BROKERCTL", self.brokerctl_exe)):
            if not exe or not os.path.isfile(exe) or not os.access(exe, os.X_OK):
                raise TestSkip("%s not built (%s=%r)" % (os.path.basename(exe or var),
                                                         var, exe))

    def guest_img(self):
        """GUEST_IMG, else BUILD/tests/guest/guest.img, else assemble it here."""
        if self._guest:
            return self._guest
        cands = [os.environ.get("GUEST_IMG")]
        if self.build_dir:
            cands.append(os.path.join(self.build_dir, "tests", "guest", "guest.img"))
        for c in cands:
            if c and os.path.isfile(c):
                self._guest = c
                return c
        nasm = shutil.which("nasm")
        if not nasm:
            raise TestSkip("no guest image and no nasm to build one")
        out = self.path("guest.img")
        subprocess.run([nasm, "-f", "bin", "-o", out,
                        os.path.join(SRC_ROOT, "tests", "guest", "guest.asm")],
                       check=True, timeout=30)
        self._guest = out
        return out

    def spawn(self, name, argv, log_path, **kw):
        logf = open(log_path, "wb")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=_die_with_parent, **kw)
        finally:
            logf.close()
        self.procs.append((name, p))
        return p

    def cleanup(self, keep=False):
        for name, p in reversed(self.procs):
            kill_proc(p, term_wait=2.0)
        if keep:
            print("kept test dir: %s" % self.dir, flush=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # in the child, before exec: SIGKILL it if the test process dies, so that
    # not even a SIGKILLed test leaves QEMUs or brokers behind
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def kill_proc(p, term_wait=5.0):
    """SIGTERM, then SIGKILL after term_wait seconds; reaps. Returns rc."""
    if p.poll() is not None:
        return p.returncode
    try:
        p.send_signal(signal.SIGTERM)
        return p.wait(timeout=term_wait)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        pass
    try:
        p.kill()
    except ProcessLookupError:
        pass
    try:
        return p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def tail(path, n=40):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return "(%s)" % e


# --------------------------------------------------------------------- QMP
class QMPError(Exception):
    pass


class QMP:
    """Minimal QMP client over a unix socket; every read bounded by timeout."""

    def __init__(self, path, timeout=5.0):
        self.timeout = timeout
        self.events = []
        self._buf = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError("bad QMP greeting %r" % greeting)
        self.cmd("qmp_capabilities")

    def _read(self):
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            if time.monotonic() > deadline:
                raise QMPError("QMP read timeout")
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise QMPError("QMP read timeout")
            if not chunk:
                raise QMPError("QMP socket closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            r = self._read()
            if "event" in r:
                self.events.append(r)
            elif "error" in r:
                raise QMPError("%s: %s" % (name, r["error"]))
            elif "return" in r:
                return r["return"]
        raise QMPError("no reply to %s" % name)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------- QEMU
# Devices that make QEMU 7.2 (Debian 12) offer every SPICE channel that
# spice-gtk 0.42 opens: main, display, cursor, inputs (always), playback and
# record (spice audiodev + HDA duplex codec), usbredir, port, webdav,
# smartcard (usb-ccid + ccid-card-passthru; the client needs
# enable-smartcard). The vdagent port rides on the main channel (no channel
# of its own; with no agent in the guest it stays disconnected). usb-tablet is
# accepted but stays inactive without a guest USB driver: the guest enables
# QEMU's vmmouse instead, which is what makes CLIENT mouse mode available.
ALL_DEVICES = [
    "-audiodev", "spice,id=snd0",
    "-device", "ich9-intel-hda", "-device", "hda-duplex,audiodev=snd0",
    "-device", "qemu-xhci",
    "-chardev", "spicevmc,name=usbredir,id=usbredir0",
    "-device", "usb-redir,chardev=usbredir0",
    "-device", "virtio-serial-pci",
    "-chardev", "spiceport,name=org.spice.broker.test,id=port0",
    "-device", "virtserialport,chardev=port0,name=org.spice.broker.test",
    "-chardev", "spiceport,name=org.spice-space.webdav.0,id=webdav0",
    "-device", "virtserialport,chardev=webdav0,name=org.spice-space.webdav.0",
    "-device", "usb-ccid",
    "-chardev", "spicevmc,id=ccid,name=smartcard",
    "-device", "ccid-card-passthru,chardev=ccid",
    "-device", "usb-tablet",
    "-chardev", "spicevmc,name=vdagent,id=vdagent",
    "-device", "virtserialport,chardev=vdagent,name=com.redhat.spice.0",
]
# what spice-gtk opens against a QEMU started with ALL_DEVICES (checked)
ALL_CHANNELS = ["cursor#0", "display#0", "inputs#0", "main#0", "playback#0",
                "port#0", "record#0", "smartcard#0", "usbredir#0", "webdav#0"]
BASIC_CHANNELS = ["cursor#0", "display#0", "inputs#0", "main#0"]


class Qemu:
    """QEMU (TCG, 64 MB, QXL) running the test guest with SPICE on 127.0.0.1."""

    def __init__(self, env, name="qemu", password=None, all_devices=True,
                 spice_port=None, extra=None, incoming=False, tls_dir=None,
                 cert_subject=None):
        self.env, self.name = env, name
        # tls_dir: secure SPICE only, as Nova's [spice] require_secure makes
        # it: a tls-port (spice_port is then that port), no plain port, every
        # channel secure; QEMU reads ca-cert.pem, server-cert.pem and
        # server-key.pem there (tlsutil.make_cert). cert_subject: what a
        # source tells its clients to expect of this one's certificate.
        self.tls_dir = tls_dir
        self.cert_subject = cert_subject
        # a migration destination: -incoming tcp:127.0.0.1:<mig_port>; its
        # guest does not boot (it arrives by migration, without a READY line)
        self.mig_port = free_port() if incoming else None
        self.password = password
        self.all_devices = all_devices
        self.spice_port = spice_port or free_port()
        self.extra = extra or []
        self.qmp_path = env.path(name + ".qmp")
        self.serial_path = env.path(name + ".serial")
        self.log_path = env.path(name + ".log")
        self.proc = None
        self._qmp = None

    def argv(self):
        if self.tls_dir is not None:
            spice = ("tls-port=%d,addr=127.0.0.1,x509-dir=%s,tls-channel=default,"
                     "seamless-migration=on" % (self.spice_port, self.tls_dir))
        else:
            spice = "port=%d,addr=127.0.0.1,seamless-migration=on" % self.spice_port
        a = [QEMU_BIN, "-machine", "pc,accel=tcg", "-m", "64", "-nodefaults",
             "-vga", "qxl", "-display", "none", "-name", "sb-it-" + self.name,
             "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
             "-drive", "file=%s,format=raw,if=floppy,readonly=on" % self.env.guest_img(),
             "-serial", "file:%s" % self.serial_path]
        if self.password is not None:
            a += ["-object", "secret,id=spicepw,data=%s" % self.password]
            spice += ",password-secret=spicepw"
        else:
            spice += ",disable-ticketing=on"
        a += ["-spice", spice]
        if self.all_devices:
            a += ALL_DEVICES
        if self.mig_port is not None:
            a += ["-incoming", "tcp:127.0.0.1:%d" % self.mig_port]
        return a + self.extra

    @classmethod
    def dest_like(cls, src, name, tls_dir=None, cert_subject=None):
        """A migration destination for src: same guest image, password and
        devices, its own SPICE port, -incoming on a free port. Not started.
        TLS as src unless tls_dir names its own certificates."""
        return cls(src.env, name=name, password=src.password,
                   all_devices=src.all_devices, extra=list(src.extra), incoming=True,
                   tls_dir=tls_dir or src.tls_dir, cert_subject=cert_subject)

    def ports(self):
        """(port, tls_port) as a token or a prepare names them."""
        return (0, self.spice_port) if self.tls_dir is not None else (self.spice_port, 0)

    def start(self, timeout=20.0):
        self.proc = self.env.spawn(self.name, self.argv(), self.log_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise TestFailure("%s exited rc=%s:\n%s" % (self.name, self.proc.returncode,
                                                            tail(self.log_path)))
            if os.path.exists(self.qmp_path):
                try:
                    self._qmp = QMP(self.qmp_path)
                    break
                except (OSError, QMPError):
                    pass
            if time.monotonic() > deadline:
                raise TestFailure("%s: QMP not up in %.0f s:\n%s" % (
                    self.name, timeout, tail(self.log_path)))
            time.sleep(0.05)
        if self.mig_port is None:
            wait_until(lambda: "GUEST READY" in self.serial_text(),
                       max(1.0, deadline - time.monotonic()),
                       what="%s guest boot" % self.name)
        else:
            wait_until(lambda: self.status() == "inmigrate",
                       max(1.0, deadline - time.monotonic()),
                       what="%s in state inmigrate" % self.name)
        wait_until(lambda: port_accepts(self.spice_port),
                   max(1.0, deadline - time.monotonic()), what="%s SPICE port" % self.name)
        log("%s up: pid %d, SPICE 127.0.0.1:%d%s%s" % (
            self.name, self.proc.pid, self.spice_port,
            " (password)" if self.password is not None else "",
            ", incoming on :%d" % self.mig_port if self.mig_port is not None else ""))
        return self

    def status(self):
        """QMP query-status "status" (running, inmigrate, paused, ...)."""
        return self.qmp("query-status")["status"]

    def query_migrate(self):
        return self.qmp("query-migrate")

    def qmp_events(self, name=None):
        """QMP events received so far (after one query-status to collect what
        is pending), optionally only those named name. Each has QEMU's
        "timestamp" {"seconds", "microseconds"} (wall clock)."""
        if self.alive():
            try:
                self.qmp("query-status")
            except (OSError, QMPError):
                pass
        evs = self._qmp.events if self._qmp else []
        return [e for e in evs if name is None or e.get("event") == name]

    def set_migration(self, max_bandwidth=None, pause_before_switchover=None):
        """migrate-set-parameters / migrate-set-capabilities (events always on)."""
        if max_bandwidth is not None:
            self.qmp("migrate-set-parameters", **{"max-bandwidth": int(max_bandwidth)})
        caps = [{"capability": "events", "state": True}]
        if pause_before_switchover is not None:
            caps.append({"capability": "pause-before-switchover",
                         "state": bool(pause_before_switchover)})
        self.qmp("migrate-set-capabilities", capabilities=caps)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def qmp(self, name, **args):
        if self._qmp is None:
            self._qmp = QMP(self.qmp_path)
        return self._qmp.cmd(name, **args)

    def query_spice(self):
        return self.qmp("query-spice")

    def screendump(self, path):
        """QMP screendump (PPM P6) of the guest's console as QEMU renders it;
        returns time.monotonic() right after the reply (the file is written)."""
        self.qmp("screendump", filename=path)
        return time.monotonic()

    def send_keys(self, qcodes):
        """QMP send-key: press all qcodes together, then release them."""
        return self.qmp("send-key", keys=[{"type": "qcode", "data": k} for k in qcodes])

    def serial_text(self):
        try:
            with open(self.serial_path, "rb") as f:
                return f.read().decode("ascii", errors="replace")
        except OSError:
            return ""

    def serial_bytes(self):
        """Scancode bytes the guest echoed after its READY line. A migration
        destination's guest never prints READY (it booted on the source):
        there every byte of the file is echo."""
        txt = self.serial_text()
        i = txt.find("GUEST READY\r\n")
        if i < 0:
            if self.mig_port is None:
                return []
            return [int(x, 16) for x in txt.split() if len(x) == 2]
        return [int(x, 16) for x in txt[i + len("GUEST READY\r\n"):].split()]

    def kill(self):
        """SIGKILL now (chaos)."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._close_qmp()

    def _close_qmp(self):
        if self._qmp:
            self._qmp.close()
            self._qmp = None

    def stop(self):
        """QMP quit, then SIGTERM/SIGKILL; bounded."""
        if not self.alive():
            return
        try:
            self.qmp("quit")
            self.proc.wait(timeout=3)
        except (OSError, QMPError, subprocess.TimeoutExpired):
            pass
        self._close_qmp()
        kill_proc(self.proc, term_wait=3)


# --------------------------------------------------------------------- migration
class Migration:
    """The QMP side of one live migration src -> dst, as libvirt drives it.

    steps: status name -> time.monotonic() when first seen (plus
    "client_migrate_info", "migrate"); CLOCK_MONOTONIC is shared with the
    client (SpiceClient.to_client_t)."""

    def __init__(self, src, dst, max_bandwidth=None, pause_before_switchover=False,
                 client_host="127.0.0.1", client_port=None):
        self.src, self.dst = src, dst
        self.max_bandwidth = max_bandwidth
        self.pause = pause_before_switchover
        self.client_host = client_host
        self.client_port = client_port if client_port is not None else dst.spice_port
        self.steps = {}
        self.last = None
        self.info = None

    def setup(self):
        """Parameters on the source (0 = unlimited bandwidth), capabilities on both."""
        self.src.set_migration(max_bandwidth=self.max_bandwidth or 0,
                               pause_before_switchover=self.pause)
        if self.pause and self.dst.alive():
            try:
                self.dst.set_migration(pause_before_switchover=True)
            except (OSError, QMPError):
                pass
        return self

    def client_migrate_info(self):
        self.steps["client_migrate_info"] = time.monotonic()
        args = {"protocol": "spice", "hostname": self.client_host}
        if self.dst.tls_dir is not None and self.client_port == self.dst.spice_port:
            args["tls-port"] = self.client_port
            if self.dst.cert_subject:
                args["cert-subject"] = self.dst.cert_subject
        else:
            args["port"] = self.client_port
        self.src.qmp("client_migrate_info", **args)

    def migrate(self):
        self.steps["migrate"] = time.monotonic()
        self.src.qmp("migrate", uri="tcp:127.0.0.1:%d" % self.dst.mig_port)

    def start(self, client_info=True):
        self.setup()
        if client_info:
            self.client_migrate_info()
        self.migrate()
        return self

    def poll(self):
        """One query-migrate; records the first time each status is seen."""
        info = self.src.query_migrate()
        st = info.get("status")
        if st != self.last:
            self.steps.setdefault(st, time.monotonic())
            self.last = st
        self.info = info
        return st

    def wait(self, statuses=("completed", "failed", "cancelled"), timeout=60.0,
             interval=0.02):
        """Poll until the status is one of statuses; returns it (TestFailure on
        timeout, or if it ends in another final state)."""
        statuses = tuple(statuses)
        final = ("completed", "failed", "cancelled")

        def done():
            st = self.poll()
            if st in statuses:
                return st
            if st in final:
                raise TestFailure("migration %s -> %s ended %r while waiting for %s: %s" % (
                    self.src.name, self.dst.name, st, statuses, self.info))
            return None
        return wait_until(done, timeout, interval=interval,
                          what="migration %s -> %s status in %s (now %r)" % (
                              self.src.name, self.dst.name, statuses, self.last))

    def run(self, timeout=60.0, client_info=True):
        """start(), continue past pre-switchover, wait for completed."""
        self.start(client_info=client_info)
        while True:
            st = self.wait(("completed", "pre-switchover"), timeout)
            if st == "completed":
                break
            self.src.qmp("migrate-continue", state="pre-switchover")
            wait_until(lambda: self.poll() != "pre-switchover", 10, interval=0.02,
                       what="leaving pre-switchover")
        return self

    def summary(self):
        t0 = self.steps.get("client_migrate_info", self.steps.get("migrate"))
        out = {k: round(v - t0, 3) for k, v in sorted(self.steps.items(),
                                                        key=lambda kv: kv[1])} if t0 else {}
        if self.info:
            for k in ("total-time", "downtime", "setup-time"):
                if k in self.info:
                    out[k + "-ms"] = self.info[k]
        return out


def echo_across(src, dst, base=0):
    """The scancode bytes the guest echoed on src after its READY line, from
    the base-th on, then on dst (src's migration destination), read as one
    text: the guest may be migrated between the two hex digits of one echo
    (src's file then ends in "1", dst's starts with "2 ")."""
    txt = src.serial_text()
    i = txt.find("GUEST READY\r\n")
    txt = (txt[i + len("GUEST READY\r\n"):] if i >= 0 else "") + dst.serial_text()
    return [int(x, 16) for x in txt.split()][base:]


def source_paused_at(src, mig):
    """The epoch time the source QEMU stopped taking input for mig's final
    pause, or None: the earlier of its STOP event and its completed MIGRATION
    event minus the downtime QEMU reports. STOP is sent only once the vCPUs
    have stopped and spice's display worker has flushed (do_vm_stop); on a
    loaded host that is up to ~90 ms after the run state left "running",
    from when QEMU drops input. The downtime counts from before the run state
    changes (migration_completion). Call while src runs (after completion)."""
    def ts(e):
        return e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6
    stop = [ts(e) for e in src.qmp_events("STOP") if e.get("timestamp")]
    done = [ts(e) for e in src.qmp_events("MIGRATION")
            if e.get("timestamp") and (e.get("data") or {}).get("status") == "completed"]
    down = None
    try:
        if mig.poll() == "completed":
            down = mig.info.get("downtime")
    except (OSError, QMPError):
        pass
    times = stop[:1] + ([done[0] - down / 1000.0] if done and down else [])
    return min(times) if times else None


def log_wall_time(line):
    """The epoch time of a broker log line ("2026-01-02T03:04:05.678Z ...")."""
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?Z", line)
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
    return calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0)) + float(m.group(7) or 0)


def migration_log(broker_log):
    """The broker's per-migration lines: (migrated, blackouts) with
    migrated = [(from, to, "prepared"|"unprepared"|"reattach", line)] (from is
    None for "reattached to B in X ms (fresh backend session ...)"),
    blackouts = [(n, ms, line)]."""
    migrated, blackouts = [], []
    for ln in broker_log.splitlines():
        m = re.search(r"migrated (\S+) -> (\S+) \((prepared|unprepared)\)", ln)
        if m:
            migrated.append((m.group(1), m.group(2), m.group(3), ln.strip()))
        m = re.search(r"reattached to (\S+) in [0-9.]+ ms", ln)
        if m:
            migrated.append((None, m.group(1), "reattach", ln.strip()))
        m = re.search(r"migration #(\d+) blackout ([0-9.]+) ms", ln)
        if m:
            blackouts.append((int(m.group(1)), float(m.group(2)), ln.strip()))
    return migrated, blackouts


def new_instance():
    """A fresh instance UUID (what libvirt calls the domain UUID)."""
    return str(uuid.uuid4())


def gaps_in(ts, a, b):
    """Gaps between consecutive timestamps that overlap [a, b], largest
    first, as (gap, from_t); a window with no update after its last one
    counts up to b (open gap). ts must be sorted."""
    out = []
    for i in range(len(ts) - 1):
        if ts[i + 1] >= a and ts[i] <= b:
            out.append((round(ts[i + 1] - ts[i], 4), ts[i]))
    last = [t for t in ts if t <= b]
    if last and not [t for t in ts if t > b]:
        out.append((round(b - last[-1], 4), last[-1]))
    elif not last:
        out.append((round(b - a, 4), a))
    return sorted(out, reverse=True)


def client_end_t(client, r):
    """The client time at which it was told to quit (or its duration)."""
    return next((e["t"] for e in client.events() if e["ev"] == "quit"), r["duration"])


def seamless_failures(r, client, broker_port, t_done, t_end, mouse_mode=None,
                      alive_after=1.0, max_window_gap=1.0, t_start=None):
    """What a client of a hidden migration must (not) have seen, as a list of
    failure strings (empty = seamless). r: the client's summary; t_done: the
    client time at which the migration completed; t_end: the end of the
    observation (client time); t_start: when the migration started."""
    f = []
    if r["counts"].get("migration-started"):
        f.append("spice-gtk saw migration-started %d time(s): %s" % (
            r["counts"]["migration-started"], r["migration"]["started"]))
    states = [st for _, st in r["migration"]["states"] if st != "none"]
    if states:
        f.append("migration-state left none: %s" % r["migration"]["states"])
    if r["counts"].get("disconnected"):
        f.append("session disconnected signal (%d)" % r["counts"]["disconnected"])
    closed = {k: v["events"] for k, v in r["channels"].items()
              if v["closed_t"] is not None or v.get("destroyed")
              or any(ev in ("closed", "switching") or ev.startswith("error")
                     for _, ev in v["events"])}
    if closed:
        f.append("channels closed/errored/switched: %s" % closed)
    want = "127.0.0.1:%d" % broker_port
    bad = {k: p for k, p in r["final_peers"].items() if p != want}
    if bad:
        f.append("channel peers are not the broker (%s): %s" % (want, bad))
    changes = [e for e in client.events() if e["ev"] == "peer-change"]
    if changes:
        f.append("peer changes: %s" % changes)
    ts = r["invalidate"]["timestamps"] or []
    after = [t for t in ts if t_done < t <= t_done + alive_after]
    if not after:
        f.append("no display update within %.1f s after completion (t=%.2f; last "
                 "update t=%s)" % (alive_after, t_done, ts[-1] if ts else None))
    if not [t for t in ts if t > t_end - alive_after]:
        f.append("display not alive at the end (last update t=%s, end t=%.2f)" % (
            ts[-1] if ts else None, t_end))
    if t_start is not None:
        g = gaps_in(ts, t_start, t_done + alive_after)
        if g and g[0][0] > max_window_gap:
            f.append("display gap %.3f s at t=%.2f in the migration window" % g[0])
    if mouse_mode is not None:
        # The destination QEMU re-announces its pointer when its VM starts:
        # spice-gtk gets MOUSE_MODE server then client within a few ms, with a
        # direct connection just the same. "Unchanged" = every other mode is
        # back to mouse_mode within 0.5 s, and the last one is mouse_mode.
        ups = [(t, m) for t, m in r["mouse"]["updates"]
               if t_start is None or t >= t_start]
        for i, (t, m) in enumerate(ups):
            if m == mouse_mode:
                continue
            back = next((t2 for t2, m2 in ups[i + 1:] if m2 == mouse_mode), None)
            if back is None or back - t > 0.5:
                f.append("mouse mode changed from %s to %s at t=%.3f (updates %s)" % (
                    mouse_mode, m, t, r["mouse"]["updates"]))
                break
    return f


def switch_gap(r, t_done, before=0.5, after=1.0):
    """The client-visible blackout: the largest gap between display updates in
    [t_done - before, t_done + after] (seconds, and where it starts)."""
    g = gaps_in(r["invalidate"]["timestamps"] or [], t_done - before, t_done + after)
    return g[0] if g else (None, None)


# --------------------------------------------------------------------- broker
ETCD_BIN = "/usr/bin/etcd"


class Etcd:
    """A single-node etcd on 127.0.0.1 with free ports and a data dir under
    the test dir (Debian's etcd-server); stop()/start() keep the data, so a
    restart is the same cluster. Killed by PID with the test."""

    def __init__(self, env, name="etcd", tls=None, client=None, extra=None):
        """tls: a tlsutil.make_cert result: the client URL is https:// with its
        server certificate, and clients must show a certificate its CA
        signed (--client-cert-auth); client: a make_client_cert result the
        harness itself (healthy(), api()) shows. extra: more etcd flags."""
        if not os.access(ETCD_BIN, os.X_OK):
            raise TestSkip("%s not installed (Debian package etcd-server)" % ETCD_BIN)
        self.env, self.name = env, name
        self.client_port, self.peer_port = free_port(), free_port()
        self.dir = env.path(name)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "etcd.log")
        self.tls, self.client, self.extra = tls, client, extra or []
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.client_port)
        self.auth_token = None      # api() sends it once set
        self.proc = None

    def argv(self):
        peer = "http://127.0.0.1:%d" % self.peer_port
        return [ETCD_BIN, "--name", self.name, "--data-dir", os.path.join(self.dir, "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "%s=%s" % (self.name, peer),
                "--initial-cluster-state", "new", "--initial-cluster-token", "sbtest"] + (
                    ["--cert-file", self.tls["server_cert"], "--key-file", self.tls["server_key"],
                     "--trusted-ca-file", self.tls["ca_cert"], "--client-cert-auth"]
                    if self.tls else []) + self.extra

    def _ssl(self):
        if not self.tls:
            return None
        import ssl
        ctx = ssl.create_default_context(cafile=self.tls["ca_cert"])
        if self.client:
            ctx.load_cert_chain(self.client["cert"], self.client["key"])
        return ctx

    def healthy(self):
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1,
                                        context=self._ssl()) as r:
                return b'"true"' in r.read()
        except (OSError, ValueError):
            return False

    def api(self, path, body, check_ok=True, timeout=5):
        """POSTs body (a dict) to the v3 JSON gateway; (status, reply dict)."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        if self.auth_token:
            req.add_header("Authorization", self.auth_token)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl()) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        try:
            reply = json.loads(data or b"{}")
        except ValueError:
            reply = {"error": data.decode(errors="replace")}
        if check_ok and status != 200:
            raise TestFailure("etcd %s -> HTTP %d: %r" % (path, status, reply))
        return status, reply

    def get(self, key):
        """The value of key (bytes) straight from etcd, or None."""
        _, r = self.api("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
        kvs = r.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def keys(self, prefix):
        """The keys under prefix, straight from etcd."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        _, r = self.api("/v3/kv/range", {"key": base64.b64encode(prefix.encode()).decode(),
                                         "range_end": base64.b64encode(end.encode()).decode(),
                                         "keys_only": True})
        return [base64.b64decode(kv["key"]).decode() for kv in r.get("kvs") or []]

    def enable_auth(self, user, password, prefix="/spice-broker/"):
        """etcd v3 auth on, through the gateway (what etcdctl user add, role
        add, role grant-permission, user grant-role and auth enable do): root
        (password too) and user, whose role may read and write prefix. Later
        api() calls authenticate as root."""
        b64 = lambda s: base64.b64encode(s.encode()).decode()
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        self.api("/v3/auth/user/add", {"name": "root", "password": password})
        self.api("/v3/auth/role/add", {"name": "root"})
        self.api("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.api("/v3/auth/user/add", {"name": user, "password": password})
        self.api("/v3/auth/role/add", {"name": user})
        self.api("/v3/auth/role/grant", {"name": user, "perm": {
            "permType": "READWRITE", "key": b64(prefix), "range_end": b64(end)}})
        self.api("/v3/auth/user/grant", {"user": user, "role": user})
        self.api("/v3/auth/enable", {})
        _, r = self.api("/v3/auth/authenticate", {"name": "root", "password": password})
        self.auth_token = r["token"]
        log("%s: auth enabled (users root and %s)" % (self.name, user))

    def start(self, timeout=10.0):
        self.proc = self.env.spawn(self.name, self.argv(), self.log_path)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                raise TestFailure("etcd exited rc=%s at startup:\n%s" % (
                    self.proc.returncode, tail(self.log_path)))
            if time.monotonic() > deadline:
                raise TestFailure("etcd not healthy after %.0f s:\n%s" % (
                    timeout, tail(self.log_path)))
            time.sleep(0.1)
        log("%s up: pid %d, %s" % (self.name, self.proc.pid, self.url))
        return self

    def stop(self):
        if self.proc is not None:
            kill_proc(self.proc, term_wait=5.0)
            log("%s stopped" % self.name)

    def store_spec(self):
        return "etcd:" + self.url


class Broker:
    """spice-broker on 127.0.0.1:<free port>, admin socket, embedded store
    (or the store spec given, e.g. Etcd.store_spec())."""

    def __init__(self, env, name="broker", workers=2, token_file=None,
                 link_timeout=None, backend_timeout=None, extra=None, store=None,
                 broker_id=None):
        self.env, self.name = env, name
        self.exe, self.ctl_exe = env.broker_exe, env.brokerctl_exe
        self.port = free_port()
        self.dir = env.path(name)
        os.makedirs(self.dir, exist_ok=True)
        self.admin = os.path.join(self.dir, "admin.sock")
        self.store = os.path.join(self.dir, "store")
        self.journal = os.path.join(self.dir, "journal")
        self.log_path = os.path.join(self.dir, "broker.log")
        self.workers = workers
        self.token_file = token_file
        self.link_timeout = link_timeout
        self.backend_timeout = backend_timeout
        self.extra = extra or []
        self.store_spec = store or "embedded:" + self.store
        self.broker_id = broker_id
        self.proc = None

    def argv(self):
        a = [self.exe, "--listen", "127.0.0.1:%d" % self.port,
             "--admin", "unix:" + self.admin, "--store", self.store_spec,
             "--journal", self.journal,
             "--workers", str(self.workers), "--log-level", "debug"]
        if self.broker_id:
            a += ["--broker-id", self.broker_id]
        if self.token_file:
            a += ["--token-file", self.token_file]
        if self.link_timeout is not None:
            a += ["--link-timeout", str(self.link_timeout)]
        if self.backend_timeout is not None:
            a += ["--backend-timeout", str(self.backend_timeout)]
        return a + self.extra

    def start(self, timeout=10.0):
        self.proc = self.env.spawn(self.name, self.argv(), self.log_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise TestFailure("broker exited rc=%s at startup; argv=%s; log:\n%s" % (
                    self.proc.returncode, " ".join(self.argv()), tail(self.log_path)))
            if os.path.exists(self.admin) and port_accepts(self.port):
                break
            if time.monotonic() > deadline:
                raise TestFailure("broker not listening on 127.0.0.1:%d with admin %s "
                                  "after %.0f s; log:\n%s" % (self.port, self.admin,
                                                              timeout, tail(self.log_path)))
            time.sleep(0.05)
        log("broker up: pid %d, listen 127.0.0.1:%d" % (self.proc.pid, self.port))
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self, when=""):
        check(self.alive(), "broker died%s (rc=%s); log tail:\n%s" % (
            " " + when if when else "", self.proc.returncode if self.proc else None,
            tail(self.log_path)))
        # A leg (backend or client side) moved through a state its setter does
        # not allow: a bug of ours.
        bugs = [ln for ln in self.log_text().splitlines() if "is not a legal move (a bug)" in ln]
        check(not bugs, "broker logged illegal leg moves:\n%s" % "\n".join(bugs[:5]))

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        """SIGTERM, SIGKILL after 5 s. Returns the exit status."""
        if self.proc is None:
            return None
        return kill_proc(self.proc, term_wait=5.0)

    # ---- spice-brokerctl
    def status(self):
        """`spice-brokerctl status --json`, decoded."""
        return json.loads(self.ctl("status", "--json")[1])

    def ctl(self, *args, check_rc=True, timeout=10):
        argv = [self.ctl_exe, "--admin", "unix:" + self.admin] + [str(a) for a in args]
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TestFailure("brokerctl timed out after %d s: %s" % (timeout, " ".join(argv)))
        out = r.stdout.decode(errors="replace")
        err = r.stderr.decode(errors="replace")
        if check_rc and r.returncode != 0:
            raise TestFailure("brokerctl %s -> rc %d\nstdout: %s\nstderr: %s" % (
                " ".join(str(a) for a in args), r.returncode, out, err))
        return r.returncode, out, err

    def token_add(self, token, host, port, password=None, ttl=None, instance=None,
                  tls_port=None):
        a = ["token", "add", token, "--host", host, "--port", port]
        if tls_port:
            a += ["--tls-port", tls_port]
        if password is not None:
            a += ["--password", password]
        if ttl is not None:
            a += ["--ttl", ttl]
        if instance is not None:
            a += ["--instance", instance]
        return self.ctl(*a)

    def token_revoke(self, token):
        return self.ctl("token", "revoke", token)

    def sessions(self):
        rc, out, err = self.ctl("session", "list", "--json")
        try:
            v = json.loads(out)
        except ValueError as e:
            raise TestFailure("session list --json: not JSON (%s): %r" % (e, out[:500]))
        check(isinstance(v, list), "session list --json: not a JSON array: %r" % out[:500])
        return v

    def history(self):
        """Ended sessions still in the store (spice-brokerctl session history --json)."""
        rc, out, err = self.ctl("session", "history", "--json")
        try:
            v = json.loads(out)
        except ValueError as e:
            raise TestFailure("session history --json: not JSON (%s): %r" % (e, out[:500]))
        check(isinstance(v, list), "session history --json: not a JSON array: %r" % out[:500])
        return v

    def ended_session(self, sid):
        """The ended record of session id sid (an int), or None."""
        ss = [x for x in self.history() if x.get("id") == sid]
        return ss[-1] if ss else None

    def session_kill(self, sid):
        return self.ctl("session", "kill", sid)

    def session_of(self, instance):
        """The one live session of an instance (None if there is none)."""
        ss = [x for x in self.sessions() if x.get("instance") == instance]
        check(len(ss) <= 1, "%d sessions for instance %s: %s" % (len(ss), instance, ss))
        return ss[0] if ss else None

    def prepare(self, instance, host, port, password=None, wait=True, timeout=15,
                check_rc=True, tls_port=None):
        """migration prepare [--wait]: links the instance's sessions to the
        destination in advance. Returns (rc, stdout, stderr)."""
        a = ["migration", "prepare", "--instance", instance, "--dest-host", host,
             "--dest-port", port, "--timeout", int(timeout)]
        if tls_port:
            a += ["--dest-tls-port", tls_port]
        if password is not None:
            a += ["--dest-password", password]
        if wait:
            a.append("--wait")
        return self.ctl(*a, check_rc=check_rc, timeout=timeout + 10)

    def migration_log(self):
        return migration_log(self.log_text())


# --------------------------------------------------------------------- client
class SpiceClient:
    """tests/integration/spice_client.py as a subprocess (real spice-gtk)."""

    _n = 0

    def __init__(self, env, host, port, password=None, seconds=10.0, name=None,
                 smartcard=True, mouse_requests=(), keys=None, keys_start=0.5,
                 key_interval=0.05, exit_when_ready=False, stay=False,
                 inval_timestamps=False, keys_go_file=None, peer_poll_ms=None,
                 snapshots=False, tls_port=None, ca_file=None, host_subject=None):
        SpiceClient._n += 1
        self.env = env
        self.name = name or "client%d" % SpiceClient._n
        self.host, self.port, self.password = host, port, password
        self.seconds = seconds
        self.events_path = env.path(self.name + ".events")
        self.ready_path = env.path(self.name + ".ready")
        self.out_path = env.path(self.name + ".json")
        self.err_path = env.path(self.name + ".stderr")
        a = [GI_PYTHON, os.path.join(HERE, "spice_client.py"), host, str(port or 0),
             "--seconds", str(seconds), "--events-file", self.events_path,
             "--ready-file", self.ready_path]
        # tls_port: every channel over TLS to that port (port may then be None)
        if tls_port is not None:
            a += ["--tls-port", str(tls_port)]
        if ca_file is not None:
            a += ["--ca-file", ca_file]
        if host_subject is not None:
            a += ["--host-subject", host_subject]
        if password is not None:
            a += ["--password", password]
        if smartcard:
            a.append("--smartcard")
        for t, mode in mouse_requests:
            a += ["--mouse-request", "%g:%s" % (t, mode)]
        if keys:
            a += ["--keys", ",".join("%x" % k for k in keys),
                  "--keys-start", str(keys_start), "--key-interval", str(key_interval)]
        if keys_go_file:
            a += ["--keys-go-file", keys_go_file]
        if peer_poll_ms is not None:
            a += ["--peer-poll-ms", str(int(peer_poll_ms))]
        if exit_when_ready:
            a.append("--exit-when-ready")
        if stay:
            a.append("--stay")
        if inval_timestamps:
            a.append("--inval-timestamps")
        # snapshots=True: the client writes display#0 as PPM on request (snapshot())
        self.snap_dir = env.path(self.name + ".snaps") if snapshots else None
        if self.snap_dir:
            os.makedirs(self.snap_dir, exist_ok=True)
            a += ["--snap-dir", self.snap_dir]
        self.argv = a
        self.proc = None
        self.result = None
        self.t_start = None

    def start(self):
        self.t_start = time.monotonic()
        out = open(self.out_path, "wb")
        err = open(self.err_path, "wb")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, start_new_session=True,
                                         preexec_fn=_die_with_parent,
                                         env=dict(os.environ, GDK_BACKEND="none"))
        finally:
            out.close()
            err.close()
        self.env.procs.append((self.name, self.proc))
        return self

    def events(self):
        try:
            with open(self.events_path) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except OSError:
            return []

    def wait_ready(self, timeout=15.0):
        """Wait until every announced channel opened; returns channel list."""
        def ready():
            if os.path.exists(self.ready_path):
                with open(self.ready_path) as f:
                    return json.load(f)
            if self.proc.poll() is not None:
                raise TestFailure("%s exited before all channels opened:\n%s" % (
                    self.name, self.describe()))
            return None
        try:
            return wait_until(ready, timeout, what="%s: all channels opened" % self.name)
        except TestFailure as e:
            raise TestFailure("%s\n%s" % (e, self.describe()))

    def mono0(self):
        """time.monotonic() of the client's t = 0 (None before it connected)."""
        for e in self.events():
            if e["ev"] == "session-connect" and "mono0" in e:
                return e["mono0"]
        return None

    def last_inval_t(self):
        """Client time of the latest logged display update (spice_client.py
        logs an "inval" event at most every 250 ms), or None."""
        t = None
        for e in self.events():
            if e["ev"] == "inval":
                t = e["t"]
        return t

    def wait_display(self, after_mono, timeout=3.0, what="display update"):
        """Wait until a display update is logged after time.monotonic() value
        after_mono; returns its client time."""
        t_after = self.to_client_t(after_mono)

        def f():
            t = self.last_inval_t()
            return t if t is not None and t > t_after else None
        try:
            return wait_until(f, timeout, interval=0.05, what="%s: %s" % (self.name, what))
        except TestFailure as e:
            raise TestFailure("%s\n%s" % (e, self.describe()))

    def wall_to_client_t(self, wall):
        """A time.time() (epoch) value on the client's t axis."""
        return self.to_client_t(wall - (time.time() - time.monotonic()))

    def to_client_t(self, mono):
        """A time.monotonic() value of this process on the client's t axis."""
        m0 = self.mono0()
        check(m0 is not None, "%s: no session-connect event yet" % self.name)
        return mono - m0

    def wait_event(self, pred, timeout, what="client event"):
        def find():
            for e in self.events():
                if pred(e):
                    return e
            return None
        return wait_until(find, timeout, what=what)

    def request_snapshot(self, name):
        """Ask the client (snapshots=True) for a snapshot of display#0 named
        name; returns at once (the client polls every 10 ms): see snapshot()."""
        check(self.snap_dir is not None, "%s: started without snapshots=True" % self.name)
        for ext in (".ppm", ".json"):
            try:
                os.unlink(os.path.join(self.snap_dir, name + ext))
            except OSError:
                pass
        with open(os.path.join(self.snap_dir, name + ".req"), "w"):
            pass

    def wait_snapshot(self, name, timeout=5.0):
        """The snapshot requested as name: (ppm path, metadata dict with "mono",
        "width", "height", ...). TestFailure if it fails or takes too long."""
        meta_path = os.path.join(self.snap_dir, name + ".json")

        def f():
            if os.path.exists(meta_path):
                with open(meta_path) as fh:
                    return json.load(fh)
            if self.proc.poll() is not None:
                raise TestFailure("%s exited before snapshot %s:\n%s" % (
                    self.name, name, self.describe()))
            return None
        meta = wait_until(f, timeout, interval=0.01, what="%s: snapshot %s" % (self.name, name))
        check(meta.get("ok"), "%s: snapshot %s failed: %s" % (self.name, name, meta))
        return os.path.join(self.snap_dir, name + ".ppm"), meta

    def snapshot(self, name, timeout=5.0):
        self.request_snapshot(name)
        return self.wait_snapshot(name, timeout)

    def finish(self, timeout=None):
        """Wait for exit (bounded), parse and return the JSON summary."""
        if timeout is None:
            timeout = self.seconds + 20
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_proc(self.proc, term_wait=3)
            raise TestFailure("%s did not exit within %.0f s\n%s" % (
                self.name, timeout, self.describe()))
        with open(self.out_path, "rb") as f:
            raw = f.read().decode(errors="replace")
        try:
            self.result = json.loads(raw)
        except ValueError:
            raise TestFailure("%s: no JSON summary (rc=%s): %r\nstderr:\n%s" % (
                self.name, self.proc.returncode, raw[-500:], tail(self.err_path, 20)))
        return self.result

    def stop(self):
        """SIGTERM (the client quits cleanly and prints its summary)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout=10)

    def run(self):
        self.start()
        return self.finish()

    def describe(self):
        evs = [e for e in self.events() if e["ev"] not in ("display-primary-create", "inval")]
        return "%s events (%d):\n  %s\nstderr tail:\n%s" % (
            self.name, len(evs), "\n  ".join(json.dumps(e) for e in evs[-30:]),
            tail(self.err_path, 10))


def no_direct(env):
    """Migration tests only make sense through the broker."""
    if env.direct:
        raise TestSkip("no --direct mode: a direct spice-gtk client sees the migration "
                       "(the lab's scenarios.py covers that)")


# --------------------------------------------------------------------- migration session
class MigSession:
    """A broker and one spice-gtk client on a fresh instance whose backend is
    src (token add --instance, QEMU password passed on): what the migration
    tests share (broker: reuse a running one; instance: a UUID chosen before,
    else a new one). The client runs until stop() (at most client_seconds)."""

    def __init__(self, env, src, client_seconds=100, tag="mig", smartcard=None,
                 broker=None, instance=None, client_port=None, **client_kw):
        self.env, self.src = env, src
        if broker is None:
            name = "broker"
            if os.path.exists(env.path(name)):      # a second broker in one test
                name = "broker-" + tag
            broker = Broker(env, name=name).start()
        self.broker = broker
        self.instance = instance or new_instance()
        self.token = token(tag)
        port, tls_port = src.ports()
        self.broker.token_add(self.token, "127.0.0.1", port, tls_port=tls_port,
                              password=src.password, instance=self.instance)
        if smartcard is None:
            smartcard = src.all_devices
        # client_port: where the client connects instead (a load balancer)
        self.client = SpiceClient(env, "127.0.0.1", client_port or self.broker.port, self.token,
                                  seconds=client_seconds, smartcard=smartcard,
                                  inval_timestamps=True, **client_kw).start()
        self.channels = self.client.wait_ready()
        log("client ready through the broker: %s" % ", ".join(self.channels))

    def prepare(self, dst, timeout=15):
        """migration prepare --wait toward dst; must report 1 linked session."""
        t = time.monotonic()
        port, tls_port = dst.ports()
        rc, out, err = self.broker.prepare(self.instance, "127.0.0.1", port, tls_port=tls_port,
                                           password=dst.password, timeout=timeout)
        check("1 session(s) linked" in out, "prepare: unexpected answer %r %r" % (out, err))
        log("prepared %s in %.0f ms: %s" % (dst.name, (time.monotonic() - t) * 1000,
                                            out.strip()))
        return out

    def session(self):
        return self.broker.session_of(self.instance)

    def migrate_prepared(self, src, dst, migrations=1):
        """prepare --wait toward dst, migrate src -> dst (no limit), wait for
        completion, session list backend = dst with `migrations`, dst running;
        then stop src (as libvirt does). Returns the Migration."""
        self.prepare(dst)
        m = Migration(src, dst).start()
        m.wait(("completed",), timeout=30)
        self.wait_backend(dst, migrations)
        wait_until(lambda: dst.status() == "running", 5, what="destination running")
        src.stop()
        return m

    def wait_backend(self, qemu, migrations, timeout=10.0):
        """Wait for session list: backend = qemu's SPICE port, migrations = n."""
        want = "127.0.0.1:%d" % qemu.spice_port
        last = [None]

        def f():
            s = self.session()
            last[0] = s
            return s if s and s.get("backend") == want and \
                s.get("migrations") == migrations else None
        try:
            return wait_until(f, timeout, interval=0.1,
                              what="session backend %s, migrations %d" % (want, migrations))
        except TestFailure as e:
            raise TestFailure("%s; last session list entry: %s" % (
                e, json.dumps({k: v for k, v in (last[0] or {}).items() if k != "channels"})))

    def mouse_mode(self, timeout=5.0):
        """The client's mouse mode once QEMU and the client agree on it."""
        def f():
            ups = [e for e in self.client.events() if e["ev"] == "main-mouse-update"]
            if not ups:
                return None
            m = ups[-1]["mode"]
            return m if self.src.query_spice().get("mouse-mode") == m else None
        return wait_until(f, timeout, what="initial mouse mode")


def seamless_scenario(env, src, dst, max_bandwidth=None, tag="mig", min_total=None,
                      after=2.0, prepare=True, ms=None, client_info=True,
                      expect_kind="prepared", stop_source_first=False, settled=None):
    """One prepared migration src -> dst through the broker, checked end to end
    (what test_migrate_seamless/_race/_password share):
    prepare --wait; client_migrate_info + migrate back to back (max_bandwidth
    bytes/s if given); completed; session list backend = dst, migrations = 1;
    dst running, src postmigrate; a display update after the completion; src
    stopped; display still updating `after` s later; then the client's whole
    view (seamless_failures), the channel set, dst mouse mode, the broker's
    "migrated A -> B (expect_kind)" line (any kind if None; "reattach" also
    accepts "reattached to B"). prepare=False: no prepare; client_info=False:
    no client_migrate_info; stop_source_first: stop the source 0.5 s after
    completion (as libvirt does) before waiting for the session to move;
    settled(ms): called once the `after` s have passed, the client still
    running (e.g. a pixel comparison). Returns figures."""
    ms = ms or MigSession(env, src, tag=tag)
    c, b = ms.client, ms.broker
    mode = ms.mouse_mode()
    log("mouse mode before migration: %s" % mode)
    s0 = ms.session()
    check(s0 and s0["backend"] == "127.0.0.1:%d" % src.spice_port and s0["migrations"] == 0,
          "session list before migration: %s" % s0)
    if prepare:
        ms.prepare(dst)
    m = Migration(src, dst, max_bandwidth=max_bandwidth)
    m.start(client_info=client_info)
    m.wait(("completed",), timeout=30)
    log("migration: %s" % m.summary())
    total = m.steps["completed"] - m.steps["migrate"]
    if min_total is not None:
        check(total > min_total, "migration took only %.2f s: bandwidth limit not "
              "applied?" % total)
    if stop_source_first:
        # query-migrate can say "completed" a moment before the runstate
        # leaves finish-migrate.
        wait_until(lambda: src.status() == "postmigrate", 3, what="source postmigrate")
        time.sleep(0.5)
        t_stop = time.monotonic()
        src.stop()
        log("source QEMU stopped 0.5 s after completion")
    s1 = ms.wait_backend(dst, 1)
    log("session list: backend %s, migrations %d" % (s1["backend"], s1["migrations"]))
    wait_until(lambda: dst.status() == "running", 5, what="destination running")
    if not stop_source_first:
        wait_until(lambda: src.status() == "postmigrate", 3, what="source postmigrate")
        c.wait_display(m.steps["completed"], timeout=1.5,
                       what="display update after completion")
        time.sleep(0.5)
        t_stop = time.monotonic()
        src.stop()
        log("source QEMU stopped")
    c.wait_display(t_stop + 0.2, timeout=3, what="display update after the source stopped")
    time.sleep(after)
    if settled is not None:
        settled(ms)
    dmode = dst.query_spice().get("mouse-mode")
    check(dmode == mode, "destination mouse mode %r, was %r" % (dmode, mode))
    s2 = ms.session()
    check(s2 and s2["backend"] == "127.0.0.1:%d" % dst.spice_port and s2["migrations"] == 1,
          "session list at the end: %s" % s2)
    r = c.stop()
    t_done = c.to_client_t(m.steps["completed"])
    fails = seamless_failures(r, c, b.port, t_done, client_end_t(c, r), mouse_mode=mode,
                              t_start=c.to_client_t(m.steps["migrate"]))
    if sorted(r["opened"]) != sorted(ms.channels):
        fails.append("channels opened %s, expected %s" % (r["opened"], ms.channels))
    ts = r["invalidate"]["timestamps"] or []
    after_stop = [t for t in ts if t > c.to_client_t(t_stop) + 0.2]
    if len(after_stop) < 10:
        fails.append("only %d display updates after the source stopped" % len(after_stop))
    migrated, blackouts = b.migration_log()
    want = ("127.0.0.1:%d" % src.spice_port, "127.0.0.1:%d" % dst.spice_port)
    ok = len(migrated) == 1 and migrated[0][1] == want[1] and \
        migrated[0][0] in (want[0], None) and \
        (expect_kind is None or migrated[0][2] == expect_kind)
    if not ok:
        fails.append("broker log: expected one 'migrated %s -> %s (%s)', got %s" % (
            want + (expect_kind or "any", [x[3] for x in migrated])))
    gap, at = switch_gap(r, t_done)
    log("client blackout around the switch: %s ms; broker: %s ms" % (
        "%.0f" % (gap * 1000) if gap is not None else "?", [x[1] for x in blackouts]))
    b.check_alive()
    check(not fails, "not seamless:\n  " + "\n  ".join(fails))
    return {"total_s": round(total, 3), "client_gap_s": gap,
            "broker_blackout_ms": [x[1] for x in blackouts], "migration": m.summary()}


# --------------------------------------------------------------------- pixels
def read_ppm(path):
    """A binary PPM (P6, maxval 255) -> (width, height, RGB bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    tok, i = [], 0
    while len(tok) < 4:
        while i < len(data) and data[i:i + 1].isspace():
            i += 1
        if data[i:i + 1] == b"#":
            while i < len(data) and data[i:i + 1] != b"\n":
                i += 1
            continue
        j = i
        while j < len(data) and not data[j:j + 1].isspace():
            j += 1
        check(j > i, "%s: truncated PPM header" % path)
        tok.append(data[i:j])
        i = j
    i += 1                                   # the one whitespace after maxval
    check(tok[0] == b"P6" and tok[3] == b"255", "%s: not a P6/255 PPM: %r" % (path, tok))
    w, h = int(tok[1]), int(tok[2])
    px = data[i:i + w * h * 3]
    check(len(px) == w * h * 3, "%s: %d pixel bytes, want %d" % (path, len(px), w * h * 3))
    return w, h, px


def image_diff(a, b, skip_rows=0, cell=(9, 16)):
    """Pixels differing between two (w, h, rgb) images, ignoring the first
    skip_rows pixel rows. Returns {"size", "n", "bbox" (x0, y0, x1, y1
    inclusive) or None, "cells": {(col, row): n} of cell-sized blocks (VGA
    text: 9x16), "sample": a few [x, y, rgb_a, rgb_b]} ("size" mismatch:
    n = -1)."""
    (wa, ha, pa), (wb, hb, pb) = a, b
    if (wa, ha) != (wb, hb):
        return {"size": [(wa, ha), (wb, hb)], "n": -1, "bbox": None, "cells": {},
                "sample": []}
    n, bbox, cells, sample = 0, None, {}, []
    rowlen = wa * 3
    for y in range(skip_rows, ha):
        ra, rb = pa[y * rowlen:(y + 1) * rowlen], pb[y * rowlen:(y + 1) * rowlen]
        if ra == rb:
            continue
        for x in range(wa):
            ca, cb = ra[x * 3:x * 3 + 3], rb[x * 3:x * 3 + 3]
            if ca == cb:
                continue
            n += 1
            if bbox is None:
                bbox = [x, y, x, y]
            else:
                bbox = [min(bbox[0], x), min(bbox[1], y), max(bbox[2], x), max(bbox[3], y)]
            k = (x // cell[0], y // cell[1])
            cells[k] = cells.get(k, 0) + 1
            if len(sample) < 5:
                sample.append([x, y, ca.hex(), cb.hex()])
    return {"size": (wa, ha), "n": n, "bbox": bbox, "cells": cells, "sample": sample}


# --------------------------------------------------------------------- raw link
def caps_words(bits):
    if not bits:
        return []
    words = [0] * (max(bits) // 32 + 1)
    for b in bits:
        words[b // 32] |= 1 << (b % 32)
    return words


def link_header(size, magic=SPICE_MAGIC, major=2, minor=2):
    return magic + struct.pack("<III", major, minor, size)


def link_mess(connection_id=0, channel_type=CH_MAIN, channel_id=0,
              common_caps=(CAP_AUTH_SELECTION, CAP_AUTH_SPICE, CAP_MINI_HEADER),
              channel_caps=(), num_common=None, num_channel=None, caps_offset=18):
    """SpiceLinkMess + caps (no header). num_* override the counts (lies)."""
    cw, chw = caps_words(list(common_caps)), caps_words(list(channel_caps))
    body = struct.pack("<IBBIII", connection_id, channel_type, channel_id,
                       len(cw) if num_common is None else num_common,
                       len(chw) if num_channel is None else num_channel, caps_offset)
    return body + b"".join(struct.pack("<I", w) for w in cw + chw)


def link_packet(**kw):
    m = link_mess(**kw)
    return link_header(len(m)) + m


class LinkReply:
    def __init__(self, raw_header, body):
        self.magic = raw_header[:4]
        self.major, self.minor, self.size = struct.unpack("<III", raw_header[4:16])
        self.body = body
        self.error = struct.unpack("<I", body[:4])[0] if len(body) >= 4 else None
        self.pub_key = body[4:166] if len(body) >= 166 else b""
        if len(body) >= 178:
            nc, nch, off = struct.unpack("<III", body[166:178])
            words = [struct.unpack("<I", body[off + 4 * i:off + 4 * i + 4])[0]
                     for i in range(nc + nch) if off + 4 * i + 4 <= len(body)]
            self.common_caps, self.channel_caps = words[:nc], words[nc:]
        else:
            self.common_caps, self.channel_caps = [], []

    def has_common_cap(self, n):
        w = n // 32
        return w < len(self.common_caps) and bool(self.common_caps[w] & (1 << (n % 32)))

    def __repr__(self):
        return "LinkReply(error=%s %s, size=%d, common=%s, channel=%s)" % (
            self.error, LINK_ERR.get(self.error, "?"), self.size,
            ["%#x" % w for w in self.common_caps], ["%#x" % w for w in self.channel_caps])


class LinkConn:
    """A raw TCP connection speaking the SPICE link handshake by hand."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, source=None):
        """source: the local address to connect from (e.g. 127.0.0.3: the
        broker throttles wrong tokens per source address)."""
        self.t0 = time.monotonic()
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.settimeout(timeout)

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n, timeout=5.0):
        """n bytes, or fewer if the peer closed; TestFailure on timeout."""
        buf = b""
        deadline = time.monotonic() + timeout
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestFailure("timed out after %.1f s waiting for %d bytes (got %d: %r)" % (
                    timeout, n, len(buf), buf[:64]))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
        return buf

    def read_reply(self, timeout=5.0):
        """Header + SpiceLinkReply; None if the peer closed first."""
        h = self.recv_exact(16, timeout)
        if len(h) < 16:
            return None if not h else LinkReply(h + b"\0" * (16 - len(h)), b"")
        size = struct.unpack("<I", h[12:16])[0]
        if size > 65536:
            raise TestFailure("link reply claims size %d: %r" % (size, h))
        body = self.recv_exact(size, timeout)
        return LinkReply(h, body)

    def send_ticket(self, reply, password, auth_mechanism=True):
        """Auth mechanism (SPICE ticket) if both sides have AUTH_SELECTION,
        then the RSA-OAEP encrypted password (with its NUL)."""
        if auth_mechanism and reply.has_common_cap(CAP_AUTH_SELECTION):
            self.send(struct.pack("<I", CAP_AUTH_SPICE))
        self.send(rsa_oaep_encrypt(reply.pub_key, password.encode() + b"\0"))

    def read_result(self, timeout=5.0):
        """The u32 link result; None if the peer closed first."""
        b = self.recv_exact(4, timeout)
        return struct.unpack("<I", b)[0] if len(b) == 4 else None

    def wait_closed(self, timeout):
        """Read (and collect) until EOF; returns (closed?, seconds, data)."""
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, time.monotonic() - self.t0, data
            self.sock.settimeout(min(left, 0.5))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return True, time.monotonic() - self.t0, data
            if not chunk:
                return True, time.monotonic() - self.t0, data
            data += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---- RSA-OAEP (SHA-1, MGF1-SHA1, empty label) with the stdlib, as spice-gtk
def _der(buf, i):
    tag = buf[i]
    ln = buf[i + 1]
    i += 2
    if ln & 0x80:
        n = ln & 0x7F
        ln = int.from_bytes(buf[i:i + n], "big")
        i += n
    return tag, buf[i:i + ln], i + ln


def rsa_pubkey_from_spki(der):
    """(n, e) from a DER SubjectPublicKeyInfo (what SpiceLinkReply.pub_key holds)."""
    tag, spki, _ = _der(der, 0)
    check(tag == 0x30, "pub_key is not a DER SEQUENCE: %r" % der[:8])
    _, _, i = _der(spki, 0)                 # AlgorithmIdentifier
    tag, bits, _ = _der(spki, i)            # BIT STRING
    check(tag == 0x03, "pub_key: no BIT STRING")
    tag, seq, _ = _der(bits[1:], 0)         # skip unused-bits byte
    _, n, j = _der(seq, 0)
    _, e, _ = _der(seq, j)
    return int.from_bytes(n, "big"), int.from_bytes(e, "big")


def _mgf1(seed, length):
    out = b""
    c = 0
    while len(out) < length:
        out += hashlib.sha1(seed + struct.pack(">I", c)).digest()
        c += 1
    return out[:length]


def rsa_oaep_encrypt(pub_key_der, msg, rng=None):
    n, e = rsa_pubkey_from_spki(pub_key_der)
    k = (n.bit_length() + 7) // 8
    hlen = 20
    check(len(msg) <= k - 2 * hlen - 2, "message too long for OAEP")
    rng = rng or random.SystemRandom()
    db = hashlib.sha1(b"").digest() + b"\0" * (k - len(msg) - 2 * hlen - 2) + b"\x01" + msg
    seed = bytes(rng.getrandbits(8) for _ in range(hlen))
    masked_db = bytes(a ^ b for a, b in zip(db, _mgf1(seed, k - hlen - 1)))
    masked_seed = bytes(a ^ b for a, b in zip(seed, _mgf1(masked_db, hlen)))
    em = b"\0" + masked_seed + masked_db
    return pow(int.from_bytes(em, "big"), e, n).to_bytes(k, "big")


def raw_login(port, password, channel_type=CH_MAIN, connection_id=0, timeout=5.0):
    """Full raw link + ticket; returns (reply, result, conn). conn left open."""
    c = LinkConn(port, timeout=timeout)
    c.send(link_packet(connection_id=connection_id, channel_type=channel_type))
    reply = c.read_reply(timeout)
    if reply is None or reply.error != ERR_OK:
        return reply, None, c
    c.send_ticket(reply, password)
    return reply, c.read_result(timeout), c


# --------------------------------------------------------------------- main
def token(tag):
    """A distinctive random token (easy to grep for in logs)."""
    return "tk%s%s" % (tag, "".join(random.choice("0123456789abcdef") for _ in range(20)))


class Target:
    """Where a client connects: the broker (token as password) or, with
    --direct, the QEMU itself (its own password): lets the same test body
    validate the QEMU/spice-gtk side before the broker exists."""

    def __init__(self, env, broker, qemu, tok=None):
        self.env, self.broker, self.qemu, self.token = env, broker, qemu, tok
        if env.direct:
            self.host, self.port, self.password = "127.0.0.1", qemu.spice_port, qemu.password
        else:
            self.host, self.port, self.password = "127.0.0.1", broker.port, tok

    def client(self, **kw):
        return SpiceClient(self.env, self.host, self.port, self.password, **kw)


def check_echo(qemu, base, sent, what=""):
    """The key events a SpiceClient sent (its result's keys.sent) echoed by
    qemu's guest since serial offset base, each once, in order (the last
    waited for at most 3 s). Returns the events."""
    want = [sc if kind == "press" else sc | 0x80 for _, sc, kind in sent]
    try:
        wait_until(lambda: len(qemu.serial_bytes()) - base >= len(want), 3, what="key echo")
    except Exception:
        pass
    got = qemu.serial_bytes()[base:]
    check(got == want, "%skey echo differs: sent %d events, echoed %d\n  sent %s\n  got  %s" % (
        what + ": " if what else "", len(want), len(got), want, got))
    return want


def good_session(env, host, port, password, expect=None, timeout=15.0, what=""):
    """A well-behaved spice-gtk session: every announced channel opens (and,
    if given, exactly the channel set `expect`); then it disconnects."""
    c = SpiceClient(env, host, port, password, seconds=timeout, exit_when_ready=True)
    r = c.run()
    check(r["main_opened"], "good session%s: main channel never opened; errors=%s\n%s" % (
        " " + what if what else "", r["errors"], c.describe()))
    not_open = sorted(set(r["channels"]) - set(r["opened"]))
    check(not not_open, "good session%s: channels never opened: %s\n%s" % (
        " " + what if what else "", not_open, c.describe()))
    if expect is not None:
        check(sorted(r["opened"]) == sorted(expect),
              "good session%s: opened %s, expected %s" % (
                  " " + what if what else "", r["opened"], sorted(expect)))
    return r


def run(test_fn, description, needs_broker=True, needs_qemu=True):
    """Standard test main. test_fn(env) raises TestFailure / TestSkip."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--build-dir", default=os.environ.get("MESON_BUILD_ROOT"),
                    help="meson build dir (finds broker/spice-broker, tests/guest/guest.img)")
    ap.add_argument("--direct", action="store_true",
                    help="no broker: run the QEMU/spice-gtk side of the test directly")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    def on_term(signum, frame):
        raise TestFailure("terminated by signal %d (test timeout?)" % signum)
    signal.signal(signal.SIGTERM, on_term)
    env = Env(args)
    name = os.path.basename(sys.argv[0])
    rc = 1
    try:
        if needs_broker:
            env.require_broker()
        if needs_qemu and shutil.which(QEMU_BIN) is None:
            raise TestSkip("%s not installed" % QEMU_BIN)
        if not os.path.exists(GI_PYTHON):
            raise TestSkip("%s missing" % GI_PYTHON)
        test_fn(env)
        print("PASS %s%s" % (name, " (direct)" if env.direct else ""), flush=True)
        rc = 0
    except TestSkip as e:
        print("SKIP %s: %s" % (name, e), flush=True)
        rc = SKIP
    except TestFailure as e:
        print("FAIL %s: %s" % (name, e), flush=True)
        _dump_broker_logs(env)
        rc = 1
    except Exception:
        print("FAIL %s: unexpected error:\n%s" % (name, traceback.format_exc()), flush=True)
        _dump_broker_logs(env)
        rc = 1
    finally:
        env.cleanup(keep=args.keep)
    return rc


def _dump_broker_logs(env):
    for name, p in env.procs:
        if name.startswith("broker"):
            path = env.path(name, "broker.log")
            print("---- %s log tail (%s, rc=%s) ----\n%s" % (
                name, path, p.poll(), tail(path, 60)), flush=True)


def run_cases(env, broker, cases, good, width=38):
    """Run (name, fn) cases; after each: the broker must still be alive and
    good(name) (a well-behaved session) must work. Failures are collected so
    one run reports every broken case; stops early only if the broker died.
    Returns the list of failure strings."""
    failures = []

    def died():
        # a crash may close our sockets a moment before the process is reaped
        if broker is None:
            return False
        try:
            wait_until(lambda: not broker.alive(), 0.3, interval=0.05)
        except TestFailure:
            return False
        return True

    for name, fn in cases:
        try:
            res = fn()
            log("ok   %-*s %s" % (width, name, res or ""))
        except TestFailure as e:
            log("FAIL %-*s %s" % (width, name, e))
            failures.append("%s: %s" % (name, e))
        if died():
            failures.append("broker died (rc=%s) during/after case %r" % (
                broker.proc.returncode, name))
            break
        try:
            good(name)
        except TestFailure as e:
            if died():
                failures.append("broker died (rc=%s) after case %r" % (
                    broker.proc.returncode, name))
                break
            failures.append("a good session after case %r failed: %s" % (name, e))
    return failures


def check_not_logged(broker, secrets, what):
    """Failure strings for every secret found in the broker log."""
    out = []
    text = broker.log_text()
    for s in secrets:
        line = next((ln for ln in text.splitlines() if s in ln), None)
        if line is not None:
            out.append("%s %r appears in the broker log: %s" % (what, s, line.strip()))
    return out
