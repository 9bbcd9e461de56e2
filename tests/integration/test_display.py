#!/usr/bin/python3
"""(b) The display keeps updating through the broker.

The guest repaints text row 0 on every PIT tick (~18 Hz). A spice-gtk client
connected through the broker for ~6 s must see display-invalidate events the
whole time: from the first update to the end of the run, with the largest gap
(including the tail up to the end of the run) well under 1 s.
"""
import sys

from harness import Broker, Qemu, Target, check, log, run, token

SECONDS = 6.0
MAX_GAP = 0.5        # direct to QEMU: ~0.06-0.1 s on 2 TCG cores


def test(env):
    q = Qemu(env, all_devices=False).start()
    b = None
    tok = None
    if not env.direct:
        b = Broker(env).start()
        tok = token("disp")
        b.token_add(tok, "127.0.0.1", q.spice_port)
    t = Target(env, b, q, tok)
    c = t.client(seconds=SECONDS, smartcard=False, inval_timestamps=True)
    r = c.run()
    check(r["main_opened"], "main channel never opened: %s\n%s" % (r["errors"], c.describe()))
    check("display#0" in r["opened"], "display channel never opened: %s" % r["opened"])
    ts = r["invalidate"]["timestamps"] or []
    check(len(ts) > 20, "only %d display-invalidate events in %.0f s" % (len(ts), SECONDS))
    end = next((e["t"] for e in c.events() if e["ev"] == "quit"), r["duration"])
    gaps = [(ts[i + 1] - ts[i], ts[i]) for i in range(len(ts) - 1)] + [(end - ts[-1], ts[-1])]
    gap, at = max(gaps)
    span = ts[-1] - ts[0]
    log("display: %d invalidates over %.2f s (%.0f Hz), max gap %.3f s at t=%.2f" % (
        len(ts), span, len(ts) / span if span else 0, gap, at))
    check(span > SECONDS - 1.5, "updates stopped: first %.2f last %.2f (run %.2f s)" % (
        ts[0], ts[-1], end))
    check(gap < MAX_GAP, "largest display gap %.3f s at t=%.2f (limit %.1f s)" % (
        gap, at, MAX_GAP))
    check(not r["errors"], "channel errors: %s" % r["errors"])
    if b:
        b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
