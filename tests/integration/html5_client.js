#!/usr/bin/env node
// html5_client.js: the integration tests' browser client. Runs Debian's
// spice-html5 (/usr/share/spice-html5, 0.3.0) in headless Chromium
// (/usr/lib/chromium/chromium, driven by playwright-core; never downloads a
// browser) and prints ONE JSON object on stdout describing what happened.
//
//   node html5_client.js URL [--seconds 8] [--load-timeout 15] [--canvas-timeout S]
//        [--type STRING] [--press KEY,KEY,...] [--key-delay-ms 60] [--key-hold-ms 20]
//        [--keys-after-ms 300] [--sample-ms 100] [--sample-rows 16]
//        [--screenshot OUT.png] [--prompt-answer TEXT] [--chromium PATH]
//        [--viewport 1024x768] [--max-frames-logged 0] [--chromium-arg ARG]...
//
// --chromium-arg adds one Chromium switch (repeatable), e.g.
// --ignore-certificate-errors-spki-list=BASE64 to trust a test certificate's
// key for https:// and wss:// pages.
//
// Exit 0 whenever the JSON was produced (even if the page failed: the caller
// judges); 2 = usage error; 3 = driver error (playwright-core missing, browser
// did not launch, hard timeout, signal); a JSON object with "driver_error" is
// still printed when possible. Every wait is bounded; the browser is closed in
// all cases and, on SIGTERM/SIGINT/SIGHUP or a hard timeout, its process group
// is SIGKILLed (Chromium runs in its own process group, started by this node).
//
// ---------------------------------------------------------------------------
// spice_auto.html URL forms (spice-html5 0.3.0, read from spice_auto.html):
//
//   http://H:P/spice_auto.html?host=WSHOST&port=WSPORT&path=PATH&token=TOK&password=PW
//
//   host      WebSocket host; default: the page's host (location.hostname)
//   port      WebSocket port; default: the page's port (80/443 if none)
//   path      WebSocket path; default "websockify"; a leading "/" is optional
//   token     NOT put in the WebSocket URL: the page sets the cookie
//             "token=TOK; expires=<now+1 day>; path=/" (document.cookie, for
//             websockify's/nova's token plugin). The browser sends it with the
//             WebSocket handshake only if the WebSocket host matches the page's
//             host (cookies are per host, not per port: 127.0.0.1:8080 page ->
//             ws://127.0.0.1:5959 gets it; a "localhost" page -> ws://127.0.0.1 not).
//   password  SPICE ticket, sent inside the SPICE link (RSA-OAEP), default ""
//   title     only shown in the side bar
// Values are URL-decoded ("+" = space); "?" parsing is a plain regex on
// location.search, so a parameter name must not be the suffix of another.
// Resulting WebSocket URL: ws://WSHOST:WSPORT/PATH ("wss://" if the page is
// https), one WebSocket per SPICE channel (main first, then display, inputs,
// cursor, ... as the main channel announces them), each created with
// new WebSocket(url, 'binary') -> Sec-WebSocket-Protocol: binary; the server
// must echo "binary" (or no protocol) or Chromium fails the handshake.
// The page need not come from the WebSocket's host:port (host/port params),
// but if it does, host and port can be omitted: the minimal URL is
//   http://BROKER:PORT/spice_auto.html?path=PATH&token=TOK
// ---------------------------------------------------------------------------
//
// Output (times t in seconds from navigation start):
//   url, driver {node, playwright_core, browser_version, launch_s, browser_pids},
//   options, load {ok, status, error, t}, canvas {appeared_t, wait_error?,
//   final {id, width, height, distinct_colors, top_colors [[#rrggbb, n]], focused},
//   canvases [...]}, websockets [{index, url, channel (from the SPICE link
//   message: main/display/inputs/cursor/...), channel_type, channel_id,
//   requested_protocols, protocol (negotiated), extensions, created_t, open_t,
//   error_t, close_t, close_code, close_reason, was_clean, cdp_close_t,
//   socket_error, sent/received {frames, bytes}, first/last_received_t,
//   link_error (SpiceLinkReply.error), auth_result (0 = ok, 7 = permission
//   denied), authed_t, inputs_sent {counts {key_down, ...}, keys [[t,
//   down|up, scancode]]} (inputs channel only)}], page_websockets_unmatched,
//   console [{t, type, text}], page_errors [{t, error}], dialogs [{t, type,
//   message, answered}] (alert/prompt: dismissed, or --prompt-answer),
//   http_errors [{t, url, status|failure}], messages [{level, text}] (the
//   #message-div lines), cookies [{name, value, domain, path, ...}],
//   samples [[t, top_rows_hash, full_hash, canvas_id]] (every --sample-ms
//   from the canvas on), keys {typed, inputs_ready_t, start_t, end_t,
//   sent [[t, key]], error}, screenshot {path, of}, summary {...},
//   duration_s, driver_error (null unless exit 3), error (unexpected page
//   API error).
//
// playwright-core is resolved from this directory's node_modules
// (npm ci --prefix tests/integration), else $PLAYWRIGHT_CORE, else normal
// resolution.
'use strict';
const fs = require('fs');
const path = require('path');

const CHANNELS = { 1: 'main', 2: 'display', 3: 'inputs', 4: 'cursor', 5: 'playback',
  6: 'record', 7: 'tunnel', 8: 'smartcard', 9: 'usbredir', 10: 'port', 11: 'webdav' };
const INPUTS_MSGC = { 1: 'ack_sync', 2: 'ack', 3: 'pong', 6: 'disconnecting', 101: 'key_down', 102: 'key_up', 103: 'key_modifiers',
  111: 'mouse_motion', 112: 'mouse_position', 113: 'mouse_press', 114: 'mouse_release' };
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage'];
const CANVAS_SEL = '#spice-screen canvas[id^="spice_surface_"]';
const LOG_CAP = 500;

function usage(msg) {
  if (msg) process.stderr.write('html5_client.js: ' + msg + '\n');
  process.stderr.write('usage: node html5_client.js URL [--seconds N] [--load-timeout S] ' +
    '[--canvas-timeout S] [--type STR] [--press K,K] [--key-delay-ms MS] [--key-hold-ms MS] ' +
    '[--keys-after-ms MS] [--sample-ms MS] [--sample-rows N] [--screenshot PNG] ' +
    '[--prompt-answer TEXT] [--chromium PATH] [--viewport WxH] [--max-frames-logged N] ' +
    '[--chromium-arg ARG]...\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = { url: null, seconds: 8, loadTimeout: 15, canvasTimeout: null, type: null,
    press: null, keyDelayMs: 60, keyHoldMs: 20, keysAfterMs: 300, sampleMs: 100,
    sampleRows: 16, screenshot: null, promptAnswer: null,
    chromium: process.env.CHROMIUM || '/usr/lib/chromium/chromium',
    viewport: { width: 1024, height: 768 }, maxFramesLogged: 0, chromiumArgs: [] };
  const num = (v, lo, hi, name) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < lo || n > hi) usage('bad ' + name + ' ' + v);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) usage(a + ' needs a value'); return argv[++i]; };
    switch (a) {
      case '--seconds': o.seconds = num(val(), 0.5, 600, a); break;
      case '--load-timeout': o.loadTimeout = num(val(), 1, 120, a); break;
      case '--canvas-timeout': o.canvasTimeout = num(val(), 0, 600, a); break;
      case '--type': o.type = val(); break;
      case '--press': o.press = val().split(',').filter(Boolean); break;
      case '--key-delay-ms': o.keyDelayMs = num(val(), 0, 5000, a); break;
      case '--key-hold-ms': o.keyHoldMs = num(val(), 0, 5000, a); break;
      case '--keys-after-ms': o.keysAfterMs = num(val(), 0, 60000, a); break;
      case '--sample-ms': o.sampleMs = num(val(), 10, 10000, a); break;
      case '--sample-rows': o.sampleRows = num(val(), 1, 10000, a); break;
      case '--screenshot': o.screenshot = val(); break;
      case '--prompt-answer': o.promptAnswer = val(); break;
      case '--chromium': o.chromium = val(); break;
      case '--chromium-arg': o.chromiumArgs.push(val()); break;
      case '--viewport': {
        const m = /^(\d+)x(\d+)$/.exec(val());
        if (!m) usage('bad --viewport');
        o.viewport = { width: +m[1], height: +m[2] };
        break;
      }
      case '--max-frames-logged': o.maxFramesLogged = num(val(), 0, 100000, a); break;
      case '-h': case '--help': usage();
      default:
        if (a.startsWith('--') || o.url) usage('unexpected argument ' + a);
        o.url = a;
    }
  }
  if (!o.url) usage('URL missing');
  if (o.canvasTimeout === null) o.canvasTimeout = o.seconds;
  return o;
}

function loadPlaywright() {
  const cands = [path.join(__dirname, 'node_modules', 'playwright-core'),
    process.env.PLAYWRIGHT_CORE, 'playwright-core'].filter(Boolean);
  const errs = [];
  for (const c of cands) {
    try { return require(c); } catch (e) { errs.push(c + ': ' + e.code); }
  }
  throw new Error('playwright-core not found (npm ci --prefix tests/integration): ' + errs.join('; '));
}

// ------------------------------------------------------------------ browser pids
// Chromium is spawned by playwright (a child of this node, in its own process
// group). Find our direct children from /proc so they can be SIGKILLed even if
// playwright cannot close them.
function childPids() {
  const out = [];
  let ents = [];
  try { ents = fs.readdirSync('/proc'); } catch (e) { return out; }
  for (const d of ents) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync('/proc/' + d + '/stat', 'utf8');
      const rest = st.slice(st.lastIndexOf(')') + 2).split(' ');
      if (+rest[1] === process.pid && rest[0] !== 'Z') out.push(+d);
    } catch (e) { /* gone */ }
  }
  return out;
}

function killBrowserProcs(pids) {
  for (const pid of pids) {
    try { process.kill(-pid, 'SIGKILL'); } catch (e) {
      try { process.kill(pid, 'SIGKILL'); } catch (e2) { /* gone */ }
    }
  }
}

// ------------------------------------------------------------------ in-page code
// Installed before any page script: wraps WebSocket to record the negotiated
// subprotocol, open/close times and close codes (CDP/playwright does not
// expose those).
function pageInit(T0) {
  const Orig = window.WebSocket;
  const recs = [];
  window.__h5ws = recs;
  const now = () => (Date.now() - T0) / 1000;
  class W extends Orig {
    constructor(url, protocols) {
      const r = { url: String(url), requested_protocols: protocols === undefined ? null : protocols,
        created_t: now(), open_t: null, protocol: null, extensions: null, error_t: null,
        close_t: null, close_code: null, close_reason: null, was_clean: null,
        constructor_error: null };
      recs.push(r);
      try {
        if (protocols === undefined) super(url); else super(url, protocols);
      } catch (e) {
        r.constructor_error = String(e);
        throw e;
      }
      this.addEventListener('open', () => {
        r.open_t = now(); r.protocol = this.protocol; r.extensions = this.extensions;
      });
      this.addEventListener('error', () => { if (r.error_t === null) r.error_t = now(); });
      this.addEventListener('close', (e) => {
        r.close_t = now(); r.close_code = e.code; r.close_reason = e.reason; r.was_clean = e.wasClean;
      });
    }
  }
  window.WebSocket = W;
}

// Started once the canvas exists: every sampleMs, the primary canvas's id,
// size, FNV-1a hash of its top `rows` rows and of the whole canvas.
function pageStartSampler(a) {
  const samples = [];
  window.__h5samples = samples;
  const fnv = (d) => {
    let h = 0x811c9dc5;
    for (let i = 0; i < d.length; i++) { h ^= d[i]; h = Math.imul(h, 0x01000193); }
    return (h >>> 0).toString(16).padStart(8, '0');
  };
  // read through a private canvas (willReadFrequently) so that spice-html5's
  // own canvas is never read back (and Chromium does not warn about it)
  const copy = document.createElement('canvas');
  const cctx = copy.getContext('2d', { willReadFrequently: true });
  window.__h5copy = (c) => {
    if (copy.width !== c.width || copy.height !== c.height) { copy.width = c.width; copy.height = c.height; }
    cctx.drawImage(c, 0, 0);
    return cctx;
  };
  const tick = () => {
    const t = (Date.now() - a.T0) / 1000;
    const c = document.querySelector(a.sel);
    if (!c || !c.width || !c.height) { samples.push([+t.toFixed(3), null, null, null]); return; }
    try {
      const ctx = window.__h5copy(c);
      const top = ctx.getImageData(0, 0, c.width, Math.min(a.rows, c.height)).data;
      const all = ctx.getImageData(0, 0, c.width, c.height).data;
      samples.push([+t.toFixed(3), fnv(top), fnv(all), c.id]);
    } catch (e) {
      samples.push([+t.toFixed(3), null, null, 'error: ' + e]);
    }
  };
  tick();
  window.__h5timer = setInterval(tick, a.ms);
}

function pageCanvasInfo(sel) {
  const c = document.querySelector(sel);
  const all = Array.from(document.querySelectorAll('canvas')).map(x => ({ id: x.id, width: x.width,
    height: x.height, in_screen: !!x.closest('#spice-screen') }));
  if (!c) return { primary: null, canvases: all };
  let ctx;
  if (window.__h5copy) ctx = window.__h5copy(c);
  else {
    const copy = document.createElement('canvas');
    copy.width = c.width; copy.height = c.height;
    ctx = copy.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(c, 0, 0);
  }
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const counts = new Map();
  for (let i = 0; i < d.length; i += 4) {
    const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
    counts.set(k, (counts.get(k) || 0) + 1);
  }
  const top = Array.from(counts.entries()).sort((x, y) => y[1] - x[1]).slice(0, 8)
    .map(([k, n]) => ['#' + k.toString(16).padStart(6, '0'), n]);
  return { primary: { id: c.id, width: c.width, height: c.height, distinct_colors: counts.size,
    top_colors: top, focused: document.activeElement === c }, canvases: all };
}

function pageMessages() {
  const m = document.getElementById('message-div');
  if (!m) return null;
  return Array.from(m.children).map(p => ({
    level: /error/.test(p.className) ? 'error' : /warning/.test(p.className) ? 'warning' : 'info',
    text: p.textContent }));
}

// ------------------------------------------------------------------ frame parsing
function u32(b, o) { return b.readUInt32LE(o); }

class WsTrack {
  constructor(idx, ws, now, maxFramesLogged) {
    this.r = { index: idx, url: ws.url(), cdp_created_t: now(), cdp_close_t: null,
      socket_error: null, sent: { frames: 0, bytes: 0 }, received: { frames: 0, bytes: 0 },
      first_received_t: null, last_received_t: null,
      channel: null, channel_type: null, channel_id: null, link_error: null, auth_result: null,
      authed_t: null, inputs_sent: null };
    this.rx = Buffer.alloc(0);   // first received bytes, until the auth result
    this.linkDone = false;
    this.now = now;
    this.maxLog = maxFramesLogged;
    this.frames = [];
  }
  onSent(payload) {
    const b = typeof payload === 'string' ? Buffer.from(payload) : payload;
    const r = this.r;
    r.sent.frames++; r.sent.bytes += b.length;
    if (this.frames.length < this.maxLog) this.frames.push(['tx', +this.now().toFixed(3), b.length]);
    if (r.sent.frames === 1) {
      // SpiceLinkHeader (16) + SpiceLinkMess: connection_id u32, channel_type u8, channel_id u8
      if (b.length >= 22 && b.toString('latin1', 0, 4) === 'REDQ') {
        r.channel_type = b[20]; r.channel_id = b[21];
        r.channel = CHANNELS[b[20]] || ('type' + b[20]);
        if (r.channel === 'inputs') r.inputs_sent = { counts: {}, keys: [] };
      }
      return;
    }
    if (r.inputs_sent && this.linkDone) {
      // mini headers: type u16, size u32, payload
      let o = 0;
      while (o + 6 <= b.length) {
        const type = b.readUInt16LE(o), size = u32(b, o + 2);
        const name = INPUTS_MSGC[type] || String(type);
        r.inputs_sent.counts[name] = (r.inputs_sent.counts[name] || 0) + 1;
        if ((type === 101 || type === 102) && size >= 4 && o + 10 <= b.length && r.inputs_sent.keys.length < 2000)
          r.inputs_sent.keys.push([+this.now().toFixed(3), type === 101 ? 'down' : 'up', u32(b, o + 6)]);
        o += 6 + size;
      }
    }
  }
  onReceived(payload) {
    const b = typeof payload === 'string' ? Buffer.from(payload) : payload;
    const r = this.r;
    const t = this.now();
    r.received.frames++; r.received.bytes += b.length;
    if (r.first_received_t === null) r.first_received_t = +t.toFixed(3);
    r.last_received_t = +t.toFixed(3);
    if (this.frames.length < this.maxLog) this.frames.push(['rx', +t.toFixed(3), b.length]);
    if (this.linkDone) return;
    this.rx = Buffer.concat([this.rx, b]);
    if (this.rx.length >= 16 && this.rx.toString('latin1', 0, 4) !== 'REDQ') {
      r.link_error = 'bad magic'; this.linkDone = true; return;
    }
    if (this.rx.length >= 20 && r.link_error === null) r.link_error = u32(this.rx, 16);
    if (this.rx.length >= 16) {
      const need = 16 + u32(this.rx, 12) + 4;
      if (this.rx.length >= need) {
        r.auth_result = u32(this.rx, need - 4);
        if (r.auth_result === 0) r.authed_t = +t.toFixed(3);
        this.linkDone = true;
        this.afterAuth = this.rx.length - need;   // bytes of real messages already here
        this.framesAtAuth = r.received.frames;
        this.rx = null;
      }
    }
  }
  // true once the channel is authenticated and has received a message after
  // that (spice-html5's state is then "ready")
  ready() {
    return this.linkDone && this.r.auth_result === 0 &&
      (this.afterAuth > 0 || this.r.received.frames > this.framesAtAuth);
  }
}

// ------------------------------------------------------------------ main
async function main() {
  const opt = parseArgs(process.argv.slice(2));
  // t = 0: navigation start (reset after the browser launched)
  let T0 = Date.now();
  const now = () => (Date.now() - T0) / 1000;
  const res = {
    url: opt.url, driver: { node: process.version, playwright_core: null, chromium: opt.chromium,
      browser_version: null, launch_s: null },
    options: { seconds: opt.seconds, load_timeout: opt.loadTimeout, canvas_timeout: opt.canvasTimeout,
      type: opt.type, press: opt.press, sample_ms: opt.sampleMs, sample_rows: opt.sampleRows },
    load: { ok: false, status: null, error: null, t: null },
    canvas: { appeared_t: null, final: null, canvases: [] },
    websockets: [], console: [], page_errors: [], dialogs: [], http_errors: [],
    messages: null, cookies: null, samples: [], keys: null, screenshot: null, summary: null,
    duration_s: null, driver_error: null,
  };
  let browser = null;
  let pids = [];
  let finished = false;
  const tracks = [];

  const emit = () => {
    res.duration_s = +now().toFixed(3);
    process.stdout.write(JSON.stringify(res) + '\n');
  };
  const abort = (why, code) => {
    if (finished) return;
    finished = true;
    res.driver_error = why;
    killBrowserProcs(pids.concat(childPids()));
    try { finalizeWs(); } catch (e) { /* partial */ }
    try { emit(); } catch (e) { /* stdout gone */ }
    process.exit(code);
  };
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'])
    process.on(sig, () => abort('terminated by ' + sig, 3));
  const typingBudget = ((opt.type ? opt.type.length : 0) + (opt.press ? opt.press.length : 0)) *
    (opt.keyDelayMs + opt.keyHoldMs + 50) / 1000;
  const hardMs = (40 + opt.loadTimeout + Math.max(opt.seconds, opt.canvasTimeout) + typingBudget) * 1000;
  const hard = setTimeout(() => abort('hard timeout after ' + (hardMs / 1000) + ' s', 3), hardMs);

  function finalizeWs() {
    res.websockets = tracks.map(t => Object.assign({}, t.r,
      t.frames.length ? { frames: t.frames } : {}));
  }

  let pw;
  try {
    pw = loadPlaywright();
    try { res.driver.playwright_core = require(path.join(path.dirname(require.resolve(
      path.join(__dirname, 'node_modules', 'playwright-core'))), 'package.json')).version; } catch (e) { /* other path */ }
  } catch (e) {
    res.driver_error = String(e.message || e);
    finished = true; clearTimeout(hard); emit(); process.exit(3);
  }

  let pageTimelineOk = false;
  try {
    if (!fs.existsSync(opt.chromium)) throw new Error('chromium not found at ' + opt.chromium);
    const tl = Date.now();
    browser = await pw.chromium.launch({ executablePath: opt.chromium, headless: true,
      args: CHROMIUM_ARGS.concat(opt.chromiumArgs), timeout: 30000, handleSIGINT: false, handleSIGTERM: false,
      handleSIGHUP: false });
    pids = childPids();
    // for the caller's last-resort cleanup if this node is SIGKILLed
    process.stderr.write('html5_client: browser pids ' + pids.join(' ') + '\n');
    res.driver.launch_s = (Date.now() - tl) / 1000;
    res.driver.browser_version = browser.version();
    res.driver.browser_pids = pids;
    const ctx = await browser.newContext({ viewport: opt.viewport });
    const page = await ctx.newPage();
    T0 = Date.now();
    pageTimelineOk = true;
    page.setDefaultTimeout(10000);
    await page.addInitScript(pageInit, T0);

    page.on('console', m => {
      if (res.console.length < LOG_CAP)
        res.console.push({ t: +now().toFixed(3), type: m.type(), text: m.text() });
    });
    page.on('pageerror', e => {
      if (res.page_errors.length < LOG_CAP) res.page_errors.push({ t: +now().toFixed(3), error: String(e) });
    });
    page.on('dialog', d => {
      const rec = { t: +now().toFixed(3), type: d.type(), message: d.message(), answered: null };
      if (res.dialogs.length < LOG_CAP) res.dialogs.push(rec);
      const p = (d.type() === 'prompt' && opt.promptAnswer !== null)
        ? (rec.answered = opt.promptAnswer, d.accept(opt.promptAnswer)) : d.dismiss();
      p.catch(() => {});
    });
    page.on('response', r => {
      if (r.status() >= 400 && res.http_errors.length < LOG_CAP)
        res.http_errors.push({ t: +now().toFixed(3), url: r.url(), status: r.status() });
    });
    page.on('requestfailed', r => {
      if (res.http_errors.length < LOG_CAP)
        res.http_errors.push({ t: +now().toFixed(3), url: r.url(), failure: (r.failure() || {}).errorText || null });
    });
    page.on('websocket', ws => {
      const tr = new WsTrack(tracks.length, ws, now, opt.maxFramesLogged);
      tracks.push(tr);
      ws.on('framesent', f => tr.onSent(f.payload));
      ws.on('framereceived', f => tr.onReceived(f.payload));
      ws.on('socketerror', e => { tr.r.socket_error = String(e); });
      ws.on('close', () => { tr.r.cdp_close_t = +now().toFixed(3); });
    });

    const end = T0 + opt.seconds * 1000;
    const remaining = () => Math.max(0, end - Date.now());

    // 1. load the page
    try {
      const resp = await page.goto(opt.url, { waitUntil: 'load', timeout: opt.loadTimeout * 1000 });
      res.load.status = resp ? resp.status() : null;
      res.load.ok = !!resp && resp.ok();
    } catch (e) {
      res.load.error = String(e.message || e).split('\n')[0];
    }
    res.load.t = +now().toFixed(3);

    // 2. the canvas (bounded)
    if (res.load.status !== null) {
      try {
        await page.waitForSelector(CANVAS_SEL, { state: 'attached',
          timeout: Math.max(1, opt.canvasTimeout * 1000 - (Date.now() - T0)) });
        res.canvas.appeared_t = +now().toFixed(3);
        await page.evaluate(pageStartSampler, { T0, sel: CANVAS_SEL, rows: opt.sampleRows, ms: opt.sampleMs });
      } catch (e) {
        res.canvas.wait_error = String(e.message || e).split('\n')[0];
      }
    }

    // 3. keys: once the inputs channel is ready (authenticated + its first message)
    if (opt.type || opt.press)
      res.keys = { requested_type: opt.type, requested_press: opt.press, typed: false,
        inputs_ready_t: null, start_t: null, end_t: null, sent: [], error: 'no canvas' };
    if (res.canvas.appeared_t !== null && (opt.type || opt.press)) {
      res.keys.error = null;
      const kDeadline = Date.now() + Math.max(remaining(), 5000);
      let inputs = null;
      while (Date.now() < kDeadline) {
        inputs = tracks.find(t => t.r.channel === 'inputs' && t.ready());
        if (inputs) break;
        await page.waitForTimeout(50);
      }
      if (!inputs) {
        res.keys.error = 'inputs channel not ready';
      } else {
        res.keys.inputs_ready_t = +now().toFixed(3);
        await page.waitForTimeout(opt.keysAfterMs);
        try {
          // spice-html5 listens for keydown/keyup on the primary canvas
          // (hook_events focuses it; focus it again to be sure)
          await page.focus(CANVAS_SEL);
          res.keys.start_t = +now().toFixed(3);
          const seq = [];
          if (opt.type) for (const ch of opt.type) seq.push(ch);
          if (opt.press) for (const k of opt.press) seq.push(k);
          for (const k of seq) {
            await page.keyboard.press(k, { delay: opt.keyHoldMs });
            res.keys.sent.push([+now().toFixed(3), k]);
            if (opt.keyDelayMs) await page.waitForTimeout(opt.keyDelayMs);
          }
          res.keys.typed = true;
          res.keys.end_t = +now().toFixed(3);
        } catch (e) {
          res.keys.error = String(e.message || e).split('\n')[0];
        }
      }
    }

    // 4. observe until the end of the window
    if (remaining() > 0) await page.waitForTimeout(remaining());

    // 5. collect
    const grab = async (fn, arg) => {
      try { return await page.evaluate(fn, arg); } catch (e) { return { error: String(e.message || e).split('\n')[0] }; }
    };
    await grab(() => { if (window.__h5timer) clearInterval(window.__h5timer); });
    const samples = await grab(() => window.__h5samples || []);
    res.samples = Array.isArray(samples) ? samples : [];
    const ci = await grab(pageCanvasInfo, CANVAS_SEL);
    res.canvas.final = ci.primary || null;
    res.canvas.canvases = ci.canvases || [];
    if (ci.error) res.canvas.info_error = ci.error;
    res.messages = await grab(pageMessages);
    try {
      res.cookies = (await ctx.cookies()).map(c => ({ name: c.name, value: c.value, domain: c.domain,
        path: c.path, expires: c.expires, sameSite: c.sameSite }));
    } catch (e) { res.cookies = { error: String(e.message || e) }; }
    const pws = await grab(() => window.__h5ws || []);
    res.page_websockets = Array.isArray(pws) ? pws : [];
    if (opt.screenshot) {
      try {
        const el = await page.$(CANVAS_SEL);
        if (el) await el.screenshot({ path: opt.screenshot, timeout: 10000 });
        else await page.screenshot({ path: opt.screenshot, timeout: 10000 });
        res.screenshot = { path: opt.screenshot, of: el ? 'canvas' : 'page' };
      } catch (e) {
        res.screenshot = { path: opt.screenshot, error: String(e.message || e).split('\n')[0] };
      }
    }
  } catch (e) {
    if (!pageTimelineOk) res.driver_error = 'browser: ' + String(e.message || e).split('\n')[0];
    else res.error = String(e.stack || e).split('\n').slice(0, 3).join(' | ');
  } finally {
    if (browser) {
      await Promise.race([browser.close().catch(() => {}),
        new Promise(r => setTimeout(r, 10000))]);
    }
    killBrowserProcs(pids.concat(childPids()));
  }
  if (finished) return;
  finished = true;
  clearTimeout(hard);
  finalizeWs();
  mergePageWs(res);
  res.summary = summarize(res);
  emit();
  process.exit(res.driver_error ? 3 : 0);
}

// page-side records (protocol, open/close, close codes) -> websockets[] by order
function mergePageWs(res) {
  const pws = res.page_websockets || [];
  const used = new Set();
  for (const w of res.websockets) {
    const j = pws.findIndex((p, k) => !used.has(k) && p.url === w.url);
    if (j < 0) continue;
    used.add(j);
    const p = pws[j];
    Object.assign(w, { requested_protocols: p.requested_protocols, protocol: p.protocol,
      extensions: p.extensions, created_t: +p.created_t.toFixed(3),
      open_t: p.open_t === null ? null : +p.open_t.toFixed(3), error_t: p.error_t === null ? null : +p.error_t.toFixed(3),
      close_t: p.close_t === null ? null : +p.close_t.toFixed(3), close_code: p.close_code,
      close_reason: p.close_reason, was_clean: p.was_clean });
  }
  // sockets the page created but CDP never reported (e.g. constructor threw)
  res.page_websockets_unmatched = pws.filter((p, k) => !used.has(k));
  delete res.page_websockets;
}

function summarize(res) {
  const s = res.samples.filter(x => x[1] !== null);
  let topChanges = 0, fullChanges = 0;
  for (let i = 1; i < s.length; i++) {
    if (s[i][1] !== s[i - 1][1]) topChanges++;
    if (s[i][2] !== s[i - 1][2]) fullChanges++;
  }
  let maxGap = null;   // longest time the top rows stayed unchanged
  if (s.length > 1) {
    let since = s[0][0];
    maxGap = 0;
    for (let i = 1; i < s.length; i++) {
      if (s[i][1] !== s[i - 1][1]) { maxGap = Math.max(maxGap, s[i][0] - since); since = s[i][0]; }
    }
    maxGap = +Math.max(maxGap, s[s.length - 1][0] - since).toFixed(3);
  }
  const ws = res.websockets;
  const msgs = res.messages || [];
  const keyEvents = [];
  for (const w of ws) if (w.inputs_sent) for (const k of w.inputs_sent.keys) keyEvents.push(k);
  // the bytes a set-1 PS/2 guest gets: each scancode's non-zero bytes, low first
  const scanBytes = [];
  for (const [, , code] of keyEvents) {
    let c = code;
    do { scanBytes.push(c & 0xff); c >>>= 8; } while (c);
  }
  return {
    page_loaded: res.load.ok,
    canvas: res.canvas.appeared_t !== null,
    canvas_appeared_t: res.canvas.appeared_t,
    canvas_size: res.canvas.final ? [res.canvas.final.width, res.canvas.final.height] : null,
    distinct_colors: res.canvas.final ? res.canvas.final.distinct_colors : 0,
    samples: s.length,
    distinct_top_hashes: new Set(s.map(x => x[1])).size,
    top_hash_changes: topChanges,
    full_hash_changes: fullChanges,
    max_top_unchanged_s: maxGap,
    websockets: ws.length,
    websockets_open: ws.filter(w => w.open_t !== null && w.open_t !== undefined).length,
    websockets_closed: ws.filter(w => w.close_t !== null && w.close_t !== undefined).length,
    protocols: Array.from(new Set(ws.map(w => w.protocol))),
    channels: ws.map(w => w.channel),
    channels_authed: ws.filter(w => w.auth_result === 0).map(w => w.channel),
    link_errors: ws.filter(w => w.link_error !== null && w.link_error !== 0).map(w => [w.channel, w.link_error]),
    auth_failures: ws.filter(w => w.auth_result !== null && w.auth_result !== 0).map(w => [w.channel, w.auth_result]),
    close_codes: ws.filter(w => w.close_code !== null && w.close_code !== undefined).map(w => [w.channel, w.close_code]),
    bytes_received: ws.reduce((a, w) => a + w.received.bytes, 0),
    key_events_sent: keyEvents.length,
    key_scancode_bytes: scanBytes,
    errors: msgs.filter(m => m.level === 'error').map(m => m.text),
    unimplemented: msgs.filter(m => /^Unimplemented function/.test(m.text)).map(m => m.text.replace(/ \[ further notices suppressed \]$/, '')),
    page_errors: res.page_errors.length,
    dialogs: res.dialogs.length,
  };
}

main().catch(e => {
  process.stdout.write(JSON.stringify({ driver_error: 'unexpected: ' + String(e.stack || e) }) + '\n');
  killBrowserProcs(childPids());
  process.exit(3);
});
