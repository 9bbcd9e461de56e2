#!/usr/bin/python3
"""Ten migrations back and forth in one session (A -> B -> A -> ...).

One spice-gtk client through the broker. Each round: a fresh QEMU is started
with -incoming on the SPICE port of the one that left in the previous round
(so the session goes A -> B -> A -> B on the same two host:ports), `migration
prepare --wait`, client_migrate_info + migrate (no bandwidth limit), wait for
completed and for session list to show the new backend and the new count,
display updates after the completion, then the source QEMU is stopped. At the
end: zero client disconnects, no migration signal, no channel closed, peers
still the broker, migrations = 10, ten "migrated ... (prepared)" log lines,
display alive at the end.
"""
import statistics
import sys
import time

from harness import (MigSession, Migration, Qemu, check, client_end_t, gaps_in, log,
                     no_direct, run, seamless_failures)

ROUNDS = 10


def test(env):
    no_direct(env)
    cur = Qemu(env, name="q0", all_devices=False).start()
    ports = [cur.spice_port]
    ms = MigSession(env, cur, tag="pp", client_seconds=110)
    c, b = ms.client, ms.broker
    mode = ms.mouse_mode()
    t_first = None
    done_ts = []
    for i in range(1, ROUNDS + 1):
        port = ports[i % 2] if i >= 2 else None   # ports[0] = A, ports[1] = B
        nxt = Qemu(env, name="q%d" % i, all_devices=False, incoming=True,
                   spice_port=port).start()
        if i == 1:
            ports.append(nxt.spice_port)
        ms.prepare(nxt)
        m = Migration(cur, nxt).start()
        if t_first is None:
            t_first = m.steps["migrate"]
        m.wait(("completed",), timeout=30)
        ms.wait_backend(nxt, i)
        c.wait_display(m.steps["completed"], timeout=2,
                       what="display after migration %d" % i)
        done_ts.append(m.steps["completed"])
        log("round %d: %s -> %s done (%s)" % (i, cur.name, nxt.name, m.summary()))
        cur.stop()
        cur = nxt
        time.sleep(0.2)
    time.sleep(1.5)
    s = ms.session()
    check(s and s["migrations"] == ROUNDS and
          s["backend"] == "127.0.0.1:%d" % cur.spice_port,
          "session list at the end: %s" % s)
    r = c.stop()
    t_end = client_end_t(c, r)
    fails = seamless_failures(r, c, b.port, c.to_client_t(done_ts[-1]), t_end,
                              mouse_mode=mode, t_start=c.to_client_t(t_first),
                              max_window_gap=1.0)
    check(r["counts"]["disconnected"] == 0, "client disconnects: %d" %
          r["counts"]["disconnected"])
    migrated, blackouts = b.migration_log()
    kinds = [x[2] for x in migrated]
    if kinds != ["prepared"] * ROUNDS:
        fails.append("broker log: %d 'migrated' lines, kinds %s" % (len(migrated), kinds))
    ts = r["invalidate"]["timestamps"] or []
    gaps = [gaps_in(ts, c.to_client_t(t) - 0.5, c.to_client_t(t) + 1.0)[0][0]
            for t in done_ts]
    log("client gap around each switch (ms): %s; median %.0f" % (
        [round(g * 1000) for g in gaps], statistics.median(gaps) * 1000))
    log("broker blackouts (ms): %s" % [x[1] for x in blackouts])
    b.check_alive()
    check(not fails, "\n  ".join(fails))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
