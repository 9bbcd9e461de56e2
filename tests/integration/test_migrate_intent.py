#!/usr/bin/python3
"""Migration intents through etcd: the race scenario driven only through the store.

Two brokers (A and B) of one zone share a real etcd. A spice-gtk session runs
through B. The destination is announced with `spice-brokerctl migration
prepare --store etcd:...` (no --admin: neither broker's admin endpoint is
told): the intent lands in /spice-broker/<zone>/migrations/<instance>, B sees
it through its etcd watch and links the destination in advance, A (no session
of the instance) only notes it. Then client_migrate_info and migrate back to
back, unlimited (test_migrate_race): the client must see a seamless,
prepared migration (the same checks). The intent is written again (a hook
run twice): B does not prepare twice.

Then the real libvirt hook (deploy/libvirt-qemu-hook) in store mode
(SPICE_BROKER_STORE, no SPICE_BROKER_ADMIN) writes the intent for a second
instance before its client links; a third broker C starts while that intent
is live, the client links through C, and C prepares the session within its
1 s recheck; the migration is seamless and prepared again.

First, no QEMU: spice-brokerctl's error paths (a refusing endpoint, one that
accepts and never answers: bounded, exit 3, the reason on stderr; an embedded
store: refused, exit 2; --dest-password without --store-key: refused; with
it: written sealed, not in clear in etcd).
"""
import os
import socket
import subprocess
import sys
import time

from harness import (Broker, Etcd, MigSession, Qemu, check, free_port, log, new_instance,
                     no_direct, run, seamless_scenario, wait_until)
from test_hook import HOOK, XML


def ctl_store(env, store, *args, timeout=15):
    """spice-brokerctl migration prepare --store STORE ARGS: (rc, out, err, seconds)."""
    argv = [env.brokerctl_exe, "migration", "prepare", "--store", store] + [str(a) for a in args]
    t0 = time.monotonic()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr, time.monotonic() - t0


def intent_line(instance, port):
    return "migration intent for instance %s -> 127.0.0.1:%d " % (instance, port)


def acted_lines(broker, instance, port):
    return [ln for ln in broker.log_text().splitlines()
            if intent_line(instance, port) in ln and "sessions" in ln]


def wait_acted(broker, instance, port, timeout=10):
    """B's line for the intent: "...: 1 sessions, 1 ready, N ms after the intent arrived"."""
    lines = wait_until(lambda: acted_lines(broker, instance, port), timeout, interval=0.02,
                       what="%s acting on the intent for %s" % (broker.name, instance))
    check(len(lines) == 1 and ": 1 sessions, 1 ready," in lines[0],
          "%s: unexpected intent lines: %s" % (broker.name, lines))
    return lines[0].split(" info ", 1)[-1]


def error_paths(env, etcd):
    inst = "00000000-0000-0000-0000-00000000e770"
    args = ("--instance", inst, "--dest-host", "127.0.0.1", "--dest-port", 5901)
    # nobody listening: refused at once
    rc, out, err, dt = ctl_store(env, "etcd:http://127.0.0.1:%d" % free_port(), *args)
    log("dead etcd (refusing): exit %d after %.2f s: %s" % (rc, dt, err.strip().splitlines()[-1]))
    check(rc == 3 and dt < 3.5 and "was not written" in err and "Couldn't connect" in err,
          "dead etcd: rc %d after %.2f s: %r" % (rc, dt, err))
    # accepts and never answers: bounded by the write's own bound
    deaf = socket.socket()
    deaf.bind(("127.0.0.1", 0))
    deaf.listen(4)
    try:
        rc, out, err, dt = ctl_store(env, "etcd:http://127.0.0.1:%d" % deaf.getsockname()[1],
                                     *args)
    finally:
        deaf.close()
    log("deaf etcd (never answers): exit %d after %.2f s: %s" % (rc, dt, err.strip().splitlines()[-1]))
    check(rc == 3 and dt < 4.0 and "was not written" in err,
          "deaf etcd: rc %d after %.2f s: %r" % (rc, dt, err))
    # an embedded store reaches no broker
    rc, out, err, dt = ctl_store(env, "embedded:" + env.path("nowhere"), *args)
    check(rc == 2 and "reaches no broker" in err, "embedded store: rc %d: %r" % (rc, err))
    check(not os.path.exists(env.path("nowhere")), "an embedded store was created")
    # a password is never written in clear
    rc, out, err, dt = ctl_store(env, etcd.store_spec(), *args, "--dest-password", "pw")
    check(rc == 2 and "--store-key" in err, "--dest-password without a key: rc %d: %r" % (rc, err))
    # with the zone's store key: written, sealed (not in clear in etcd)
    keyfile = env.path("store.key")
    subprocess.run([env.broker_exe, "--make-store-key", keyfile], check=True,
                   capture_output=True, timeout=10)
    rc, out, err, dt = ctl_store(env, etcd.store_spec(), *args, "--zone", "sealed",
                                 "--dest-password", "Dest-Secret-42", "--store-key", keyfile)
    check(rc == 0, "--dest-password with --store-key: rc %d: %r" % (rc, err))
    val = etcd.get("/spice-broker/sealed/migrations/" + inst)
    check(val is not None and b"Dest-Secret-42" not in val and b"127.0.0.1" in val,
          "the sealed intent in etcd: %r" % val)
    rc, out, err, dt = ctl_store(env, etcd.store_spec(), *args, "--wait")
    check(rc == 2, "--store with --wait: rc %d" % rc)
    check(etcd.keys("/spice-broker/default/migrations/") == [],
          "a refused intent reached etcd: %s" % etcd.keys("/spice-broker/"))
    log("error paths: bounded, exit 3 (unreachable) / 2 (refused), nothing written")


def test(env):
    no_direct(env)
    env.require_broker()
    etcd = Etcd(env).start()
    error_paths(env, etcd)

    a = Broker(env, name="broker-a", store=etcd.store_spec(), broker_id="a").start()
    b = Broker(env, name="broker-b", store=etcd.store_spec(), broker_id="b").start()
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    ms = MigSession(env, src, tag="intent", broker=b)
    figures = {}

    def prepare_through_etcd(target, timeout=15):
        rc, out, err, dt = ctl_store(env, etcd.store_spec(), "--instance", ms.instance,
                                     "--dest-host", "127.0.0.1", "--dest-port", target.spice_port)
        check(rc == 0, "migration prepare --store: rc %d: %s %s" % (rc, out, err))
        figures["ctl_s"] = round(dt, 3)
        log("intent written in %.0f ms (spice-brokerctl, whole process): %s" % (dt * 1000,
                                                                                out.strip()))
        check(dt < 1.0, "migration prepare --store took %.2f s" % dt)
        key = "/spice-broker/default/migrations/" + ms.instance
        check(key in etcd.keys("/spice-broker/default/migrations/"), "no %s in etcd" % key)
        line = wait_acted(b, ms.instance, target.spice_port)
        figures["b_line"] = line
        log("broker B: %s" % line)
        # the same intent again (a hook run twice): acted on once
        rc, out, err, dt = ctl_store(env, etcd.store_spec(), "--instance", ms.instance,
                                     "--dest-host", "127.0.0.1", "--dest-port", target.spice_port)
        check(rc == 0, "second put: rc %d" % rc)
        time.sleep(1.5)
        n = len(acted_lines(b, ms.instance, target.spice_port))
        check(n == 1, "broker B acted %d times on one (instance, destination)" % n)
        # A saw the intent, had no session of it, and did nothing
        check(not acted_lines(a, ms.instance, target.spice_port),
              "broker A acted on an intent it has no session of: %s" %
              acted_lines(a, ms.instance, target.spice_port))
        check("%s: no session of it on this broker" % intent_line(ms.instance,
                                                                  target.spice_port).rstrip()
              in a.log_text(), "broker A did not note the intent (no session there)")
        return out

    ms.prepare = prepare_through_etcd
    res = seamless_scenario(env, src, dst, max_bandwidth=None, tag="intent", ms=ms,
                            expect_kind="prepared")
    log("figures: %s" % res)
    for br in (a, b):
        check("migration prepare for instance" not in br.log_text(),
              "%s's admin endpoint was asked to prepare" % br.name)
    a.check_alive()
    dst.stop()

    # The hook in store mode, before the client links; a broker started while
    # the intent is live picks it up.
    src2 = Qemu(env, name="src2", all_devices=False).start()
    dst2 = Qemu.dest_like(src2, "dst2").start()
    inst2 = new_instance()
    xml = XML.format(name="guest2", uuid=inst2, port=dst2.spice_port)
    henv = dict(os.environ, SPICE_BROKERCTL=env.brokerctl_exe,
                SPICE_BROKER_STORE=etcd.store_spec(), SPICE_BROKER_ZONE="default",
                SPICE_HOOK_STATE_DIR=env.path("hookstate"), SPICE_HOOK_TIMEOUT="10",
                SPICE_HOOK_INTENT_TTL="60")
    henv.pop("SPICE_BROKER_ADMIN", None)
    for op in ("migrate", "started"):
        t0 = time.monotonic()
        r = subprocess.run(["/usr/bin/python3", HOOK, "guest2", op, "begin", "-"], input=xml,
                           env=henv, capture_output=True, text=True, timeout=30)
        dt = time.monotonic() - t0
        check(r.returncode == 0, "hook %s exited %d: %s" % (op, r.returncode, r.stderr))
        log("hook %s begin returned in %.0f ms" % (op, dt * 1000))
    figures["hook_started_s"] = round(dt, 3)
    check(dt < 2.0, "the hook's started call took %.2f s" % dt)
    key = "/spice-broker/default/migrations/" + inst2
    wait_until(lambda: key in etcd.keys("/spice-broker/default/migrations/"), 3,
               what="the hook's intent in etcd")
    c = Broker(env, name="broker-c", store=etcd.store_spec(), broker_id="c").start()
    wait_until(lambda: "%s: no session of it on this broker" %
               intent_line(inst2, dst2.spice_port).rstrip() in c.log_text(), 5,
               what="broker C noting the live intent at start")

    ms2 = MigSession(env, src2, tag="intent2", broker=c, instance=inst2)
    line = wait_acted(c, inst2, dst2.spice_port, timeout=10)
    figures["c_line"] = line
    log("broker C (started after the intent, the session linked later): %s" % line)
    res2 = seamless_scenario(env, src2, dst2, prepare=False, ms=ms2, tag="intent-hook",
                             expect_kind="prepared")
    log("figures (hook): %s" % res2)
    log("intent figures: %s" % figures)
    for br in (a, b, c):
        br.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
