#!/usr/bin/python3
"""Secrets in the store (issue 9): --store-key, --token-key-file, --token-key-compat.

  - `spice-broker --make-store-key FILE` writes a 0600 key file and refuses to
    overwrite one; a key file others can read is refused at start;
  - a broker with --store-key and a token with a backend password (QEMU with a
    SPICE password): spice-gtk opens every channel; the embedded store's
    files hold neither the password nor the token's bare sha256 (the record
    is named by HMAC);
  - a broker on that store with another --store-key (same --token-key-file,
    so it finds the record) refuses the token: the client gets error_auth
    and the log says "token record sealed with another key";
  - migration: a token a keyless broker wrote (bare sha256 name, password in
    clear) is found by a keyed broker with --token-key-compat only;
  - a broker without --store-key warns once that passwords are in clear;
  - etcd: the sealed record's value and name, read back through etcd's JSON
    gateway, hold neither the password nor the bare sha256 either.
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.request

from harness import (ALL_CHANNELS, Broker, Etcd, Qemu, SpiceClient, TestSkip, check,
                     good_session, log, no_direct, run, token)

SEALED_OTHER = "token record sealed with another key"
CLEAR_WARNING = "passwords are stored in clear"


def make_key(env, path):
    r = subprocess.run([env.broker_exe, "--make-store-key", path], capture_output=True,
                       timeout=10)
    check(r.returncode == 0, "--make-store-key %s -> rc %d: %s" % (path, r.returncode,
                                                                 r.stderr.decode()))
    mode = os.stat(path).st_mode & 0o777
    check(mode == 0o600, "key file mode %o, want 600" % mode)
    with open(path) as f:
        text = f.read()
    check(len(text.strip()) == 64 and all(c in "0123456789abcdef" for c in text.strip()),
          "key file text: %r" % text)
    return path


def refused(env, port, tok, what):
    c = SpiceClient(env, "127.0.0.1", port, tok, seconds=10)
    r = c.run()
    check(not r["main_opened"], "%s: main channel opened" % what)
    auth = [e for e in r["errors"] if e[1] == "main#0" and e[2] == "error_auth"]
    check(auth, "%s: expected error_auth, got %s" % (what, r["errors"]))


def files_holding(top, needles):
    """(path, needle) for every file under top holding one of needles (bytes)."""
    found = []
    for d, _, names in os.walk(top):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                data = f.read()
            found += [(os.path.join(d, n), x) for x in needles if x in data]
    return found


def etcd_range(url, prefix):
    """Every (key, value) under prefix, through etcd's v3 JSON gateway."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                       "range_end": base64.b64encode(end.encode()).decode()}).encode()
    req = urllib.request.Request(url + "/v3/kv/range", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        kvs = json.loads(r.read()).get("kvs", [])
    return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))) for kv in kvs]


def test(env):
    no_direct(env)
    keys = env.path("keys")
    os.makedirs(keys, exist_ok=True)
    k1 = make_key(env, os.path.join(keys, "store-1.key"))
    k2 = make_key(env, os.path.join(keys, "store-2.key"))
    names = make_key(env, os.path.join(keys, "names.key"))
    r = subprocess.run([env.broker_exe, "--make-store-key", k1], capture_output=True, timeout=10)
    check(r.returncode != 0, "--make-store-key overwrote an existing key file")

    # a key file others can read is refused (--check-config loads the keys)
    loose = os.path.join(keys, "loose.key")
    with open(k1) as src, open(loose, "w") as dst:
        dst.write(src.read())
    os.chmod(loose, 0o644)
    r = subprocess.run([env.broker_exe, "--store-key", loose, "--check-config"],
                       capture_output=True, timeout=10)
    err = r.stderr.decode()
    check(r.returncode != 0 and "readable or writable by others" in err,
          "world-readable key file: rc %d, %r" % (r.returncode, err))
    log("key files: 0600, not overwritten; a world-readable one refused: %s" % err.strip())

    backend_pw = "pwseal%08x" % int.from_bytes(os.urandom(4), "big")
    q = Qemu(env, password=backend_pw).start()

    # sealed: the session opens, the store files hold no secret
    a = Broker(env, name="broker-a",
               extra=["--store-key", k1, "--token-key-file", names]).start()
    tok = token("sealed")
    a.token_add(tok, "127.0.0.1", q.spice_port, password=backend_pw)
    good_session(env, "127.0.0.1", a.port, tok, expect=ALL_CHANNELS,
                 what="sealed token with a backend password")
    bare = hashlib.sha256(tok.encode()).hexdigest().encode()
    leaks = files_holding(a.store, [backend_pw.encode(), bare, tok.encode()])
    check(not leaks, "the embedded store holds a secret: %s" % leaks)
    check(files_holding(a.store, [b"/tokens/"]), "no token record in the embedded store")
    text = a.log_text()
    check("backend passwords sealed" in text, "no 'sealed' line in the broker log")
    check(CLEAR_WARNING not in text, "a broker with --store-key warned about clear passwords")
    check(backend_pw not in text, "the backend password is in the broker log")
    log("sealed: spice-gtk opened every channel; the store files hold no password, "
        "no bare sha256")
    a.check_alive()
    a.stop()

    # another store key on the same store: refused, with the line
    b = Broker(env, name="broker-b", store="embedded:" + a.store,
               extra=["--store-key", k2, "--token-key-file", names]).start()
    refused(env, b.port, tok, "another --store-key")
    line = next((ln for ln in b.log_text().splitlines() if SEALED_OTHER in ln), None)
    check(line is not None, "no %r line in broker B's log" % SEALED_OTHER)
    log("another key: refused; B logged: %s" % line.strip())
    b.check_alive("after refusing a record sealed with another key")
    b.stop()

    # migration: a keyless broker's record (bare name, clear password) ...
    c = Broker(env, name="broker-c").start()
    check(sum(CLEAR_WARNING in ln for ln in c.log_text().splitlines()) == 1,
          "a keyless broker did not warn once about clear passwords")
    old = token("legacy")
    c.token_add(old, "127.0.0.1", q.spice_port, password=backend_pw)
    check(files_holding(c.store, [hashlib.sha256(old.encode()).hexdigest().encode()]),
          "the keyless broker's record is not under the bare sha256 name")
    check(files_holding(c.store, [backend_pw.encode()]),
          "the keyless broker's record does not hold the password in clear (is the "
          "store search above blind?)")
    c.stop()
    # ... is unknown to a keyed broker, found with --token-key-compat
    d = Broker(env, name="broker-d", store="embedded:" + c.store,
               extra=["--store-key", k1]).start()
    refused(env, d.port, old, "a legacy token without --token-key-compat")
    d.stop()
    e = Broker(env, name="broker-e", store="embedded:" + c.store,
               extra=["--store-key", k1, "--token-key-compat"]).start()
    good_session(env, "127.0.0.1", e.port, old, expect=ALL_CHANNELS,
                 what="a legacy token with --token-key-compat")
    new = token("new")
    e.token_add(new, "127.0.0.1", q.spice_port, password=backend_pw)
    check(not files_holding(c.store, [hashlib.sha256(new.encode()).hexdigest().encode()]),
          "token add under --token-key-compat wrote the bare name")
    good_session(env, "127.0.0.1", e.port, new, expect=ALL_CHANNELS,
                 what="a token added under --token-key-compat")
    e.token_revoke(old)
    check(not files_holding(c.store, [hashlib.sha256(old.encode()).hexdigest().encode()]),
          "revoke under --token-key-compat left the bare-named record")
    log("compat: a legacy record read with --token-key-compat only; token add writes the "
        "keyed name; revoke removes the bare one")
    e.check_alive()
    e.stop()

    # etcd: the value and the name hold no secret either
    try:
        etcd = Etcd(env).start()
    except TestSkip as ex:
        log("etcd part skipped: %s" % ex)
        return
    f = Broker(env, name="broker-f", store=etcd.store_spec(), extra=["--store-key", k1]).start()
    t3 = token("etcd")
    f.token_add(t3, "127.0.0.1", q.spice_port, password=backend_pw)
    good_session(env, "127.0.0.1", f.port, t3, expect=ALL_CHANNELS, what="sealed, over etcd")
    kvs = [kv for kv in etcd_range(etcd.url, "/spice-broker/") if b"/tokens/" in kv[0]]
    check(kvs, "no token record in etcd")
    bare3 = hashlib.sha256(t3.encode()).hexdigest().encode()
    for k, v in kvs:
        check(bare3 not in k and t3.encode() not in k, "etcd key %r names the token" % k)
        check(backend_pw.encode() not in v, "etcd value of %r holds the password" % k)
    log("etcd: %d token record(s), no password in the value, no bare sha256 in the key"
        % len(kvs))
    f.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
