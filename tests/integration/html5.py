#!/usr/bin/python3
"""spice-html5 in headless Chromium, for the integration tests (the browser
path: page + WebSocket). Library only, stdlib.

  ensure_node_modules()          node >= 20, npm, Chromium present (else
                                 TestSkip); `npm ci --prefix tests/integration`
                                 (bounded, quiet, locked) if playwright-core is
                                 missing
  Html5Client(env, url, seconds=8, keys=None, out_name="html5", ...)
      .run()                     start + finish: the JSON from html5_client.js
      .start() / .finish() / .stop()
      .describe()                a short text for failure messages
  key_bytes(result)              the set-1 scancode bytes spice-html5 sent on
                                 its inputs channel (what the guest must echo)
  auto_url(base, host, port, path, token, password)
                                 a spice_auto.html URL

The driver (html5_client.js, see its header comment for the URL forms and the
JSON) prints one JSON object and exits 0 even when the page failed: the test
judges. A driver error (no playwright-core, Chromium did not start, hard
timeout) is a TestFailure here. Like every process of a test, node runs in its
own session with PR_SET_PDEATHSIG, is listed in env.procs (Env.cleanup kills
it) and is killed with harness.kill_proc on timeout; node itself SIGKILLs
Chromium's process group on SIGTERM, and as a last resort the browser pids it
announced on stderr are killed here.
"""
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse

import harness
from harness import TestFailure, TestSkip, kill_proc, log, pid_alive, tail

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_JS = os.path.join(HERE, "html5_client.js")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/lib/chromium/chromium")
SPICE_HTML5_DIR = "/usr/share/spice-html5"
NPM_CI_TIMEOUT = 240.0


def _node():
    return os.environ.get("NODE") or shutil.which("node")


def ensure_node_modules(timeout=NPM_CI_TIMEOUT):
    """TestSkip unless node (>= 20), Chromium and spice-html5 are installed;
    runs `npm ci --prefix tests/integration` once if node_modules/playwright-core
    is missing (serialised between parallel tests by a lock file)."""
    node = _node()
    if not node:
        raise TestSkip("node not installed (Node.js >= 20 is needed for the spice-html5 tests)")
    try:
        v = subprocess.run([node, "--version"], capture_output=True, timeout=10,
                           text=True).stdout.strip()
        major = int(v.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise TestSkip("cannot run %s --version: %s" % (node, e))
    if major < 20:
        raise TestSkip("node %s too old (playwright-core needs >= 20)" % v)
    if not os.access(CHROMIUM, os.X_OK):
        raise TestSkip("Chromium not found at %s (apt-get install chromium, or set CHROMIUM)"
                       % CHROMIUM)
    if not os.path.isfile(os.path.join(SPICE_HTML5_DIR, "spice_auto.html")):
        raise TestSkip("spice-html5 not installed (%s/spice_auto.html)" % SPICE_HTML5_DIR)
    marker = os.path.join(HERE, "node_modules", "playwright-core", "package.json")
    if os.path.isfile(marker):
        return
    npm = shutil.which("npm")
    if not npm:
        raise TestSkip("npm not installed and %s missing (run: npm ci --prefix tests/integration)"
                       % os.path.dirname(marker))
    lock_path = os.path.join(tempfile.gettempdir(), "sb-it-npm-%s.lock" %
                             hashlib.sha1(HERE.encode()).hexdigest()[:12])
    with open(lock_path, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:                         # bounded wait for a parallel npm ci
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TestSkip("timed out waiting for another npm ci (%s)" % lock_path)
                time.sleep(0.2)
        try:
            if os.path.isfile(marker):
                return
            log("npm ci --prefix %s (playwright-core for the spice-html5 tests)" % HERE)
            p = subprocess.Popen([npm, "ci", "--prefix", HERE, "--no-audit", "--no-fund",
                                  "--loglevel=error"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=harness._die_with_parent)
            try:
                out, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(p.pid)
                kill_proc(p, term_wait=2)
                raise TestSkip("npm ci --prefix %s took more than %.0f s" % (HERE, timeout))
            if p.returncode != 0 or not os.path.isfile(marker):
                raise TestSkip("npm ci --prefix %s failed (rc=%s): %s" % (
                    HERE, p.returncode, out.decode(errors="replace").strip()[-600:]))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def auto_url(base, host=None, port=None, path=None, token=None, password=None, page="spice_auto.html"):
    """base e.g. "http://127.0.0.1:8080" (no trailing page) -> spice_auto.html
    URL with the given query parameters (None = left out)."""
    q = [(k, str(v)) for k, v in (("host", host), ("port", port), ("path", path),
                                  ("token", token), ("password", password)) if v is not None]
    return "%s/%s%s" % (base.rstrip("/"), page, ("?" + urllib.parse.urlencode(q)) if q else "")


def key_bytes(result):
    """Bytes of the KEY_DOWN/KEY_UP scancodes spice-html5 sent on its inputs
    channel (each u32 code: its non-zero bytes, low byte first), in order:
    what the integration guest echoes to COM1."""
    return list((result.get("summary") or {}).get("key_scancode_bytes") or [])


class Html5Client:
    """tests/integration/html5_client.js as a subprocess (node + Chromium +
    spice-html5). keys: a string typed into the canvas (keyboard.press per
    character) once the inputs channel is ready; press: list of Playwright
    key names ("Enter", "KeyA", ...) pressed after it."""

    _n = 0

    def __init__(self, env, url, seconds=8, keys=None, out_name="html5", press=None,
                 canvas_timeout=None, load_timeout=15, sample_ms=100, sample_rows=16,
                 key_delay_ms=60, key_hold_ms=20, keys_after_ms=300, screenshot=True,
                 prompt_answer=None, extra_args=(), timeout=None):
        Html5Client._n += 1
        self.env = env
        self.name = out_name if out_name else "html5-%d" % Html5Client._n
        self.url = url
        self.seconds = seconds
        self.out_path = env.path(self.name + ".json")
        self.err_path = env.path(self.name + ".stderr")
        self.png_path = env.path(self.name + ".png") if screenshot else None
        a = [_node() or "node", CLIENT_JS, url, "--seconds", str(seconds),
             "--load-timeout", str(load_timeout), "--sample-ms", str(sample_ms),
             "--sample-rows", str(sample_rows), "--key-delay-ms", str(key_delay_ms),
             "--key-hold-ms", str(key_hold_ms), "--keys-after-ms", str(keys_after_ms),
             "--chromium", CHROMIUM]
        if canvas_timeout is not None:
            a += ["--canvas-timeout", str(canvas_timeout)]
        if keys:
            a += ["--type", keys]
        if press:
            a += ["--press", ",".join(press)]
        if self.png_path:
            a += ["--screenshot", self.png_path]
        if prompt_answer is not None:
            a += ["--prompt-answer", prompt_answer]
        a += list(extra_args)
        self.argv = a
        n_keys = len(keys or "") + len(press or [])
        self.timeout = timeout if timeout is not None else (
            60 + load_timeout + max(seconds, canvas_timeout or 0) +
            n_keys * (key_delay_ms + key_hold_ms + 50) / 1000.0)
        self.proc = None
        self.result = None

    def start(self):
        if not os.path.isfile(CLIENT_JS):
            raise TestFailure("%s missing" % CLIENT_JS)
        out = open(self.out_path, "wb")
        err = open(self.err_path, "wb")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, start_new_session=True,
                                         preexec_fn=harness._die_with_parent, cwd=HERE)
        finally:
            out.close()
            err.close()
        self.env.procs.append((self.name, self.proc))
        log("%s: node pid %d -> %s" % (self.name, self.proc.pid, self.url))
        return self

    def _kill_leftovers(self):
        # last resort: the browser pids node announced, if they outlived it
        # (only if they still are Chromium processes)
        try:
            with open(self.err_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return
        for ln in lines:
            if not ln.startswith("html5_client: browser pids"):
                continue
            for tok in ln.split()[3:]:
                pid = int(tok)
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        cmd = f.read()
                except OSError:
                    continue
                if b"chromium" in cmd and pid_alive(pid):
                    _killpg(pid)

    def finish(self, timeout=None):
        """Wait for node (bounded), parse and return its JSON."""
        timeout = self.timeout if timeout is None else timeout
        timed_out = False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_proc(self.proc, term_wait=5)       # node prints partial JSON on SIGTERM
        self._kill_leftovers()
        with open(self.out_path, "rb") as f:
            raw = f.read().decode(errors="replace")
        line = next((ln for ln in reversed(raw.splitlines()) if ln.startswith("{")), None)
        try:
            self.result = json.loads(line) if line else None
        except ValueError:
            self.result = None
        if timed_out:
            raise TestFailure("%s did not exit within %.0f s\n%s" % (
                self.name, timeout, self.describe()))
        if self.result is None:
            raise TestFailure("%s: no JSON from html5_client.js (rc=%s): %r\nstderr:\n%s" % (
                self.name, self.proc.returncode, raw[-500:], tail(self.err_path, 20)))
        if self.proc.returncode != 0 or self.result.get("driver_error"):
            raise TestFailure("%s: driver error (rc=%s): %s\nstderr:\n%s" % (
                self.name, self.proc.returncode, self.result.get("driver_error"),
                tail(self.err_path, 20)))
        return self.result

    def stop(self):
        """SIGTERM now (node kills Chromium, prints a partial JSON with
        driver_error "terminated by SIGTERM"); returns that JSON or None."""
        if self.proc and self.proc.poll() is None:
            kill_proc(self.proc, term_wait=5)
        self._kill_leftovers()
        try:
            with open(self.out_path, "rb") as f:
                raw = f.read().decode(errors="replace")
            line = next((ln for ln in reversed(raw.splitlines()) if ln.startswith("{")), None)
            self.result = json.loads(line) if line else None
        except (OSError, ValueError):
            self.result = None
        return self.result

    def run(self):
        self.start()
        return self.finish()

    def describe(self):
        r = self.result or {}
        s = r.get("summary") or {}
        lines = ["%s: url %s" % (self.name, self.url),
                 "  load %s" % json.dumps(r.get("load")),
                 "  summary %s" % json.dumps({k: v for k, v in s.items()
                                               if k != "key_scancode_bytes"})]
        for w in r.get("websockets") or []:
            lines.append("  ws#%d %s %s proto=%r open=%s close=%s code=%s link=%s auth=%s "
                         "rx=%d/%dB tx=%d/%dB%s" % (
                             w["index"], w.get("channel"), w["url"], w.get("protocol"),
                             w.get("open_t"), w.get("close_t"), w.get("close_code"),
                             w.get("link_error"), w.get("auth_result"),
                             w["received"]["frames"], w["received"]["bytes"],
                             w["sent"]["frames"], w["sent"]["bytes"],
                             " socket_error=%s" % w["socket_error"] if w.get("socket_error") else ""))
        for m in (r.get("messages") or [])[-12:]:
            lines.append("  message %s: %s" % (m["level"], m["text"]))
        for c in (r.get("console") or [])[-12:]:
            lines.append("  console %s: %s" % (c["type"], c["text"][:200]))
        for e in (r.get("page_errors") or [])[-5:]:
            lines.append("  pageerror: %s" % e["error"][:200])
        for h in (r.get("http_errors") or [])[-5:]:
            lines.append("  http: %s" % json.dumps(h))
        if r.get("keys"):
            k = r["keys"]
            lines.append("  keys typed=%s ready_t=%s error=%s" % (
                k.get("typed"), k.get("inputs_ready_t"), k.get("error")))
        lines.append("stderr tail:\n%s" % tail(self.err_path, 10))
        return "\n".join(lines)
