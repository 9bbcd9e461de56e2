#!/usr/bin/python3
"""(c) Mouse mode and keyboard through the broker.

Mouse: the guest enables QEMU's vmmouse, so spice-server offers CLIENT mouse
mode and spice-gtk switches to it on connect. The client then requests SERVER
mode, then CLIENT mode; each time main-mouse-update must come back with the
requested mode and QMP query-spice on QEMU must report it ("mouse-mode").
Keys: the client types a sequence of scancodes (press + release each) through
the inputs channel; the guest echoes every byte it gets from the i8042 to
COM1: the echo must equal the sequence, each byte exactly once, in order.
"""
import sys

from harness import Broker, Qemu, Target, check, log, run, token, wait_until

# a..z-ish set-1 make codes: q w e r t y u i o p a s d f g h j k l z x c v b n m
KEYS = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1E, 0x1F,
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x2C, 0x2D, 0x2E, 0x2F, 0x30,
        0x31, 0x32, 0x39, 0x1C]          # ... space, enter
T_SERVER, T_CLIENT = 1.0, 2.5            # seconds after the main channel opened


def test(env):
    q = Qemu(env, all_devices=False).start()
    b = None
    tok = None
    if not env.direct:
        b = Broker(env).start()
        tok = token("inp")
        b.token_add(tok, "127.0.0.1", q.spice_port)
    t = Target(env, b, q, tok)
    base = len(q.serial_bytes())
    c = t.client(seconds=6, smartcard=False,
                 mouse_requests=[(T_SERVER, "server"), (T_CLIENT, "client")],
                 keys=KEYS, keys_start=0.3, key_interval=0.05).start()

    def update_after(mode, req_mode):
        # a main-mouse-update with `mode` after the request for req_mode
        def f():
            evs = c.events()
            req = next((e["t"] for e in evs if e["ev"] == "mouse-request"
                        and e["mode"] == req_mode), None)
            if req is None:
                return None
            return next((e for e in evs if e["ev"] == "main-mouse-update"
                         and e["t"] >= req and e["mode"] == mode), None)
        return f

    def qemu_mode(mode):
        return lambda: q.query_spice().get("mouse-mode") == mode

    for mode in ("server", "client"):
        try:
            ev = wait_until(update_after(mode, mode), 8,
                            what="main-mouse-update(%s) after requesting it" % mode)
        except Exception as e:
            raise type(e)("%s\n%s" % (e, c.describe()))
        log("main-mouse-update %s at t=%.3f" % (mode, ev["t"]))
        wait_until(qemu_mode(mode), 3,
                   what="QEMU query-spice mouse-mode == %s (now %s)" % (
                       mode, q.query_spice().get("mouse-mode")))
        log("QEMU reports mouse-mode %s" % mode)
    r = c.finish()
    check(r["main_opened"], "main channel never opened: %s" % r["errors"])
    log("mouse updates: %s" % r["mouse"]["updates"])

    sent = r["keys"]["sent"]
    check(r["keys"]["dropped"] == 0 and len(sent) == 2 * len(KEYS),
          "client could not send every key (sent %d, dropped %d)" % (
              len(sent), r["keys"]["dropped"]))
    want = []
    for _, sc, what in sent:
        want.append(sc if what == "press" else sc | 0x80)
    try:
        wait_until(lambda: len(q.serial_bytes()) - base >= len(want), 3, what="key echo")
    except Exception:
        pass
    got = q.serial_bytes()[base:]
    if got != want:
        first = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                     min(len(got), len(want)))
        hx = lambda v: " ".join("%02X" % x for x in v)  # noqa: E731
        check(False, "guest key echo differs from what was typed (first difference at "
              "byte %d; %d sent, %d received)\n  sent:     %s\n  received: %s" % (
                  first, len(want), len(got), hx(want), hx(got)))
    log("guest received all %d key events in order" % len(want))
    if b:
        b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
