#!/usr/bin/python3
"""--token-file (websockify's format: lines `TOKEN: HOST:PORT`).

The broker starts with a token file naming one QEMU (plus a comment and a
blank line): spice-gtk with that token opens every channel; an unknown token
gets PERMISSION_DENIED. A token appended to the file later works once the
broker has re-read the file (polled with raw logins for up to 10 s), and a
token removed from the file stops working the same way.

Issue 9: a line longer than the reader's buffer (1023 bytes) whose tail
looks like an entry is skipped whole, with a log line: the tail's token
does not work.
"""
import os
import sys
import time

from harness import (ALL_CHANNELS, ERR_OK, ERR_PERMISSION_DENIED, Broker, Qemu, TestFailure,
                     TestSkip, check, good_session, log, raw_login, run, token, wait_until)


def login_result(port, tok):
    reply, result, c = raw_login(port, tok)
    c.close()
    if reply is None:
        return "closed before the link reply"
    return result if reply.error == ERR_OK else "reply error %d" % reply.error


def write(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.rename(tmp, path)


def test(env):
    if env.direct:
        raise TestSkip("broker-only test")
    q = Qemu(env).start()
    path = env.path("tokens.cfg")
    t1, t2 = token("file1"), token("file2")
    t3 = token("tail")
    long_line = "#" + "x" * 1022 + "%s: 127.0.0.1:%d" % (t3, q.spice_port)
    lines = ["# console tokens", "", long_line, "%s: 127.0.0.1:%d" % (t1, q.spice_port)]
    write(path, lines)
    b = Broker(env, token_file=path).start()

    good_session(env, "127.0.0.1", b.port, t1, expect=ALL_CHANNELS, what="token from the file")
    res = login_result(b.port, token("notinfile"))
    check(res == ERR_PERMISSION_DENIED, "token not in the file: link result %s, want 7" % res)
    log("token from the file works; unknown token denied")
    res = login_result(b.port, t3)
    check(res == ERR_PERMISSION_DENIED, "the tail of a too-long line became an entry: link "
          "result %s, want 7" % res)
    check("line longer than" in b.log_text(), "no log line about the too-long line")
    log("a too-long line is skipped whole, with a log line")

    time.sleep(1.1)      # make sure the file's mtime changes even on coarse clocks
    write(path, lines + ["%s: 127.0.0.1:%d" % (t2, q.spice_port)])
    try:
        wait_until(lambda: login_result(b.port, t2) == ERR_OK, 10, interval=0.5,
                   what="a token appended to --token-file to be accepted")
    except TestFailure as e:
        raise TestFailure("%s (last result %s)" % (e, login_result(b.port, t2)))
    good_session(env, "127.0.0.1", b.port, t2, expect=ALL_CHANNELS, what="appended token")
    log("appended token accepted after the re-read")

    time.sleep(1.1)
    write(path, ["%s: 127.0.0.1:%d" % (t2, q.spice_port)])
    wait_until(lambda: login_result(b.port, t1) == ERR_PERMISSION_DENIED, 10, interval=0.5,
               what="a token removed from --token-file to be refused")
    log("removed token refused after the re-read")
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
