#!/usr/bin/python3
"""spice-brokerctl upgrade on the embedded store: a token added around the
upgrade, by whichever process answered, is known to the new process.

For a moment both processes accept on the admin socket, and the new process
has loaded the store directory (its own map) while the old one still
writes its files. A broker in front of spice_peer's synthetic SPICE server;
`spice-brokerctl token add` runs in a loop from before `upgrade` until after
it answered; then each token the broker said it added must open a session
on the new process (spice_peer's idle client, one session: PERMISSION_DENIED
would mean the new process does not know it). Before this fix the tokens
the old process wrote after the new one loaded were unknown to it until
its next restart. Skipped when spice_peer is not built.
"""
import json
import subprocess
import sys
import threading
import time

from harness import Broker, TestSkip, check, log, run, spice_peer_server, token
from test_upgrade import kill_pid


class TokenLoop(threading.Thread):
    def __init__(self, b, port):
        super().__init__(daemon=True)
        self.b, self.port = b, port
        self.stop = threading.Event()
        self.added, self.failed = [], []

    def run(self):
        i = 0
        while not self.stop.is_set():
            tok = token("st%03d" % i)
            i += 1
            rc, out, err = self.b.ctl("token", "add", tok, "--host", "127.0.0.1", "--port",
                                      self.port, check_rc=False)
            (self.added if rc == 0 else self.failed).append((tok, err.strip()))


def links(exe, port, tok):
    r = subprocess.run([exe, "client", "--connect", "127.0.0.1:%d" % port, "--password", tok,
                        "idle", "--sessions", "1", "--hold", "0"], capture_output=True,
                       text=True, timeout=20)
    try:
        return json.loads(r.stdout.splitlines()[0])
    except (ValueError, IndexError):
        return {"error": "no output: %r" % r.stderr[-200:]}


def test(env):
    env.require_broker()
    exe, peer_port = spice_peer_server(env)
    if exe is None:
        raise TestSkip("tests/bench/spice_peer not built")
    b = Broker(env).start()
    new_pid = None
    loop = TokenLoop(b, peer_port)
    try:
        loop.start()
        time.sleep(1.0)
        rc, out, err = b.ctl("upgrade", timeout=45)
        new_pid = b.status()["pid"]
        time.sleep(1.0)
        loop.stop.set()
        loop.join(20)
        log("%s; %d tokens added around it (%d refused: %s)" % (
            out.strip(), len(loop.added), len(loop.failed),
            sorted(set(e for _, e in loop.failed))[:3]))
        check(len(loop.added) >= 5, "the token loop hardly ran")
        unknown = []
        for tok, _ in loop.added:
            r = links(exe, b.port, tok)
            if r.get("linked") != 1:
                unknown.append((tok, r.get("error")))
        log("%d of %d tokens open a session on the new process" % (
            len(loop.added) - len(unknown), len(loop.added)))
        check(not unknown, "tokens the broker said it added are unknown to the new process: "
              "%d, e.g. %s" % (len(unknown), unknown[:3]))
        text = b.log_text()
        check("store: reloaded" in text, "the new process did not load the store again")
    finally:
        loop.stop.set()
        kill_pid(new_pid)
        b.stop()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
