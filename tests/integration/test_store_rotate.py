#!/usr/bin/python3
"""Rotating the store key (--store-key NEW --store-key-old OLD, issue 9):

  - a broker on key A seals a token's backend password (QEMU has a SPICE
    password) in the embedded store;
  - a broker with --store-key B --store-key-old A on that store: spice-gtk
    opens every channel with the A-sealed token (the old key still opens),
    a token added now is sealed with B; `spice-brokerctl store reseal`
    re-seals the A record with B (found 1, resealed 1), a second run finds
    nothing; no byte of the A-sealed value is left in the store's files;
  - a broker with --store-key B only (A retired): both tokens work;
  - --check-config refuses --store-key-old without --token-key-file or
    --store-key, and the same key as both.
"""
import json
import os
import subprocess
import sys

from harness import ALL_CHANNELS, Broker, Qemu, check, good_session, log, no_direct, run, token
from test_store_secrets import files_holding, make_key, refused

RETIRED_LINE = "sealed with the retired key"


def store_values(top):
    """Every file under top, as bytes (the embedded store's log)."""
    out = b""
    for d, _, names in os.walk(top):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out += f.read()
    return out


def test(env):
    no_direct(env)
    keys = env.path("keys")
    os.makedirs(keys, exist_ok=True)
    ka = make_key(env, os.path.join(keys, "store-a.key"))
    kb = make_key(env, os.path.join(keys, "store-b.key"))
    names = make_key(env, os.path.join(keys, "names.key"))

    def check_config(*args):
        r = subprocess.run([env.broker_exe, "--store", "embedded:" + env.path("cc"),
                            "--admin", "unix:" + env.path("cc.sock")] + list(args) +
                           ["--check-config"], capture_output=True, timeout=10)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")
    for args, want in (
            (["--store-key", kb, "--store-key-old", ka], "store-key-old needs store-key"),
            (["--token-key-file", names, "--store-key-old", ka], "store-key-old needs store-key"),
            (["--store-key", kb, "--store-key-old", kb, "--token-key-file", names],
             "is the same key as store-key")):
        rc, out = check_config(*args)
        check(rc == 2 and want in out, "%s: rc %d %r" % (" ".join(args), rc, out))
    rc, out = check_config("--store-key", kb, "--store-key-old", ka, "--token-key-file", names)
    check(rc == 0, "a good rotation config: rc %d %r" % (rc, out))
    log("--check-config: store-key-old refused without token-key-file or store-key, or as "
        "the same key; accepted with both")

    backend_pw = "pwrot%08x" % int.from_bytes(os.urandom(4), "big")
    q = Qemu(env, password=backend_pw).start()

    a = Broker(env, name="broker-a", extra=["--store-key", ka, "--token-key-file", names]).start()
    old = token("sealed-a")
    a.token_add(old, "127.0.0.1", q.spice_port, password=backend_pw)
    a.stop()
    sealed_a = store_values(a.store)

    b = Broker(env, name="broker-b", store="embedded:" + a.store,
               extra=["--store-key", kb, "--store-key-old", ka, "--token-key-file", names]).start()
    check(RETIRED_LINE in b.log_text(), "no %r line at start" % RETIRED_LINE)
    good_session(env, "127.0.0.1", b.port, old, expect=ALL_CHANNELS,
                 what="a token sealed with the retired key")
    new = token("sealed-b")
    b.token_add(new, "127.0.0.1", q.spice_port, password=backend_pw)
    rc, out, err = b.ctl("store", "reseal")
    got = json.loads(out)
    check(got.get("found") == 1 and got.get("resealed") == 1 and got.get("failed") == 0,
          "store reseal: %s" % out)
    rc, out, err = b.ctl("store", "reseal")
    got2 = json.loads(out)
    check(got2.get("found") == 0 and got2.get("resealed") == 0, "second reseal: %s" % out)
    log("store reseal: %s, then %s" % (got, got2))
    b.check_alive()
    b.stop()
    # the A-sealed value (nonce, ciphertext, tag: the record's last bytes
    # before the ids) is nowhere in the store files any more
    after = store_values(a.store)
    i = sealed_a.find(b"/tokens/")
    check(i > 0, "no token record in the store written by broker A")
    # any 24-byte run of A's file after the key that is not in B's files
    # proves the old value went; look for the record's tail, which holds the seal
    tail = sealed_a[len(sealed_a) - 40:]
    check(tail not in after, "the A-sealed record is still in the store's files")
    check(not files_holding(a.store, [backend_pw.encode()]), "a password in clear in the store")

    c = Broker(env, name="broker-c", store="embedded:" + a.store,
               extra=["--store-key", kb, "--token-key-file", names]).start()
    good_session(env, "127.0.0.1", c.port, old, expect=ALL_CHANNELS,
                 what="the re-sealed token, old key retired")
    good_session(env, "127.0.0.1", c.port, new, expect=ALL_CHANNELS,
                 what="a token sealed with the new key")
    c.check_alive()
    c.stop()
    # and the retired key alone opens none of them now
    d = Broker(env, name="broker-d", store="embedded:" + a.store,
               extra=["--store-key", ka, "--token-key-file", names]).start()
    refused(env, d.port, old, "the re-sealed token under the retired key alone")
    d.stop()
    log("old key retired: both tokens open with B alone, the re-sealed one no longer with A")


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
