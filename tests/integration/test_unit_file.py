#!/usr/bin/python3
"""deploy/spice-broker.service passes `systemd-analyze verify`.

The unit names /usr/sbin/spice-broker, which a build tree does not install,
and verify fails on a missing ExecStart binary: the test checks a copy whose
/usr/sbin/spice-broker is the built broker (nothing else changed). Any line
verify prints about the unit (unknown keys, bad values) is a failure. The
test also checks what the rest of the project relies on: Type=notify, a
TimeoutStopSec= above the broker's stop bound, and ExecReload= sending
SIGHUP to the main process (the broker re-reads its TLS certificates on
SIGHUP, tests/integration/test_web_tls.py). Skipped where systemd-analyze is not installed.
"""
import os
import re
import shutil
import subprocess
import sys

from harness import SRC_ROOT, TestSkip, check, log, run

UNIT = os.path.join(SRC_ROOT, "deploy", "spice-broker.service")
STOP_BOUND_S = 2        # STOP_FLUSH_MS in broker/main.c


def settings(text):
    kv = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            kv.setdefault(m.group(1), []).append(m.group(2))
    return kv


def test(env):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        raise TestSkip("systemd-analyze not installed")
    env.require_broker()
    with open(UNIT) as f:
        text = f.read()
    check("/usr/sbin/spice-broker " in text, "the unit no longer runs /usr/sbin/spice-broker")
    copy = env.path("spice-broker.service")
    with open(copy, "w") as f:
        f.write(text.replace("/usr/sbin/spice-broker ", os.path.abspath(env.broker_exe) + " "))
    r = subprocess.run([analyze, "verify", copy], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    out = (r.stdout + r.stderr).strip()
    log("systemd-analyze verify: rc %d%s" % (r.returncode, (": " + out) if out else ""))
    check(r.returncode == 0, "systemd-analyze verify failed (rc %d):\n%s" % (r.returncode, out))
    about = [ln for ln in out.splitlines() if "spice-broker.service" in ln]
    check(not about, "systemd-analyze verify complains:\n%s" % "\n".join(about))

    kv = settings(text)
    check(kv.get("Type") == ["notify"], "Type=%r, not notify" % kv.get("Type"))
    stop = kv.get("TimeoutStopSec", ["90"])[-1]
    check(stop.isdigit() and int(stop) > STOP_BOUND_S,
          "TimeoutStopSec=%s is not above the broker's %d s stop bound" % (stop, STOP_BOUND_S))
    check(kv.get("ExecReload") == ["/bin/kill -HUP $MAINPID"],
          "ExecReload=%r, not /bin/kill -HUP $MAINPID (SIGHUP reloads the certificates)"
          % kv.get("ExecReload"))


if __name__ == "__main__":
    sys.exit(run(test, __doc__, needs_qemu=False))
