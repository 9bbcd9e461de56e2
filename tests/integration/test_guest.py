#!/usr/bin/python3
"""The test guest itself (no broker needed): it boots, repaints row 0 on
every PIT tick (a direct spice-gtk client sees display updates several times a
second), echoes every keystroke QMP send-key injects to COM1 exactly once and
in order, and enables the vmmouse so QEMU offers CLIENT mouse mode."""
import sys

from harness import Qemu, SpiceClient, check, log, run, wait_until


def test(env):
    q = Qemu(env, all_devices=False).start()
    mice = q.qmp("query-mice")
    cur = [m for m in mice if m.get("current")]
    check(cur and cur[0].get("absolute") and cur[0].get("name") == "vmmouse",
          "guest did not make the vmmouse the current absolute pointer: %s" % mice)

    # keys: 'a' alone, then shift+b together
    q.send_keys(["a"])
    q.send_keys(["shift", "b"])
    want = [0x1E, 0x9E, 0x2A, 0x30, 0xB0, 0xAA]
    try:
        wait_until(lambda: len(q.serial_bytes()) >= len(want), 5, what="key echo")
    except Exception:
        pass
    got = q.serial_bytes()
    check(got == want, "COM1 echo after send-key a, shift-b: got %s, want %s (serial %r)" % (
        ["%02X" % x for x in got], ["%02X" % x for x in want], q.serial_text()[-200:]))
    log("keys echoed: %s" % " ".join("%02X" % x for x in got))

    # display keeps changing, and spice-gtk can switch to client mouse mode
    c = SpiceClient(env, "127.0.0.1", q.spice_port, seconds=3, smartcard=False)
    r = c.run()
    inv = r["invalidate"]
    log("display: %d invalidates, %.1f Hz, max gap %s" % (inv["count"], inv["rate_hz"] or 0,
                                                         inv["max_gap"]))
    check(r["main_opened"], "direct client did not connect\n%s" % c.describe())
    check(inv["count"] > 20 and inv["max_gap"] is not None and inv["max_gap"] < 0.5,
          "guest display not updating steadily: %s" % inv)
    modes = [m for _, m in r["mouse"]["updates"]]
    check("client" in modes, "CLIENT mouse mode never offered/entered: updates %s" % modes)
    check(q.serial_bytes() == want, "stray bytes on COM1 after the client session: %s" %
          q.serial_bytes())
    q.stop()


if __name__ == "__main__":
    sys.exit(run(test, __doc__, needs_broker=False))
