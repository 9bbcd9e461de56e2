#!/usr/bin/python3
"""Nova as the broker's token source: console tokens Nova issued, with nothing
added to the broker.

Part 1, the STAND-IN (nova_standin.py: Keystone v3 + Nova's console token API
at 2.99, which no Debian package serves), and real QEMU and spice-gtk:
 - a token only Nova knows opens every channel; the broker asked Keystone once
   (password, project scope), read the versions, asked for the token at
   microversion 2.99 on the catalog's internal endpoint (valid_interfaces);
 - the same token again: no new question to Nova (the answer is kept);
 - Nova drops the token (as at the end of a live migration): the token still
   reconnects within the grace period;
 - an unknown token: refused fast, "unknown token (Nova)" logged, never the
   token; asked again at once: Nova is not asked twice (refusals kept briefly);
 - Keystone's token revoked under the broker (Nova answers 401 once): renewed,
   the client never notices;
 - Nova slower than the link timeout, Nova answering HTML, Nova dropping the
   connection: each client refused within its link timeout with a log line
   naming the endpoint, the broker alive, the next client served.
Part 2, the REAL Keystone 22 and nova-api 26 of Debian 12 (openstack.py): a
console token authorised through Nova's own objects resolves through the
broker (microversion 2.93, the highest Zed offers) and spice-gtk reaches the
guest. Skipped, with the reason, when python3-keystone / python3-nova are
missing.
"""
import os
import sys
import time

import openstack as osk
from harness import (ALL_CHANNELS, Broker, Qemu, SpiceClient, TestSkip, check, good_session,
                     log, no_direct, run, token, wait_until)
from nova_standin import StandIn

LINK_TIMEOUT = 4


def nova_conf(env, name, auth_url, user, password, interfaces="internal,public", timeout=3):
    path = env.path(name + ".conf")
    with open(path, "w") as f:
        f.write("[broker]\ntoken-sources = store,file,nova\n\n"
                "[nova]\nauth_url = %s\nauth_type = password\nusername = %s\n"
                "password = %s\nuser_domain_name = Default\nproject_name = service\n"
                "project_domain_name = Default\nvalid_interfaces = %s\ntimeout = %d\n"
                % (auth_url, user, password, interfaces, timeout))
    return path


def refused(env, b, tok, what, within=LINK_TIMEOUT + 1.0):
    c = SpiceClient(env, "127.0.0.1", b.port, tok, seconds=LINK_TIMEOUT + 6)
    r = c.run()
    check(not r["main_opened"], "%s: the main channel opened" % what)
    t = r["first_terminal_t"]
    check(t is not None and t < within, "%s: the client's error came after %s s" % (what, t))
    b.check_alive("after " + what)
    log("%s: refused after %.2f s" % (what, t))


def nova_gets(s):
    return [p for m, p, h in s.requests if m == "GET" and "/os-console-auth-tokens/" in p]


def standin_part(env, q):
    s = StandIn(max_version="2.99").start()
    try:
        s.add_user("nova", "nova-pw", project="service")
        b = Broker(env, link_timeout=LINK_TIMEOUT,
                   extra=["--config", nova_conf(env, "standin", s.auth_url, "nova",
                                                "nova-pw")]).start()
        tok = token("nova")
        s.add_console_token(tok, host="127.0.0.1", port=q.spice_port,
                            console_type="spice-html5")
        r = good_session(env, "127.0.0.1", b.port, tok, expect=ALL_CHANNELS,
                         what="a token only Nova knows")
        log("Nova's token through the broker: %s" % ", ".join(sorted(r["opened"])))
        auths = [p for m, p, h in s.requests if m == "POST" and p.endswith("/auth/tokens")]
        gets = nova_gets(s)
        check(len(auths) == 1 and len(gets) == 1,
              "Keystone asked %d times, Nova %d times" % (len(auths), len(gets)))
        hdrs = [h for m, p, h in s.requests if "/os-console-auth-tokens/" in p][0]
        mv = {k.lower(): v for k, v in hdrs.items()}.get("openstack-api-version")
        check(mv == "compute 2.99", "Nova asked with %r" % mv)
        check(gets[0].startswith("/internal/"), "Nova asked on %s, not the internal endpoint"
              % gets[0].split("/os-console")[0])

        good_session(env, "127.0.0.1", b.port, tok, what="the same token again")
        check(len(nova_gets(s)) == 1, "Nova asked again for a token it answered")

        # Nova deletes an instance's tokens when its live migration ends.
        with s._lock:
            del s.consoles[tok]
        good_session(env, "127.0.0.1", b.port, tok, what="a token Nova has dropped (grace)")

        bad = token("nonova")
        refused(env, b, bad, "a token Nova does not know")
        refused(env, b, bad, "the same unknown token at once")
        check(len([p for p in nova_gets(s) if bad in p]) == 1,
              "Nova asked twice about one unknown token within the refusal time")
        check("unknown token (Nova" in b.log_text(), "no 'unknown token (Nova)' line")

        # Keystone's token revoked: Nova says 401 once, the broker renews.
        tok2 = token("renew")
        s.add_console_token(tok2, host="127.0.0.1", port=q.spice_port)
        s.expire_tokens()
        good_session(env, "127.0.0.1", b.port, tok2, what="after Keystone's token was revoked")
        auths = [p for m, p, h in s.requests if m == "POST" and p.endswith("/auth/tokens")]
        check(len(auths) == 2, "Keystone asked %d times (want a renewal)" % len(auths))

        # Nova in trouble: each client refused within its link timeout.
        for kind, arg, what in (("delay", LINK_TIMEOUT + 2, "Nova slower than the link timeout"),
                                ("non_json", None, "Nova answering HTML"),
                                ("close", None, "Nova dropping the connection")):
            t = token("fault")
            s.add_console_token(t, host="127.0.0.1", port=q.spice_port)
            # (a dropped connection every time: libcurl rightly retries a
            # request whose reused connection died before any reply)
            s.fault("nova", kind, arg, persistent=kind == "close")
            refused(env, b, t, what)
            s.clear_faults()
        text = b.log_text()
        check("nova: GET %s" % s.compute_internal in text,
              "no log line names Nova's endpoint:\n%s" % "\n".join(
                  ln for ln in text.splitlines() if "nova" in ln)[-2000:])
        for t in (tok, tok2, bad):
            check(t not in text, "a token in the broker log")
        tok3 = token("after")
        s.add_console_token(tok3, host="127.0.0.1", port=q.spice_port)
        good_session(env, "127.0.0.1", b.port, tok3, what="a client after Nova's troubles")
        b.stop()
    finally:
        s.stop()


def real_part(env, q):
    why = osk.have_openstack()
    if why:
        raise TestSkip("the stand-in part passed; the real Keystone + nova-api part: " + why)
    t0 = time.monotonic()
    ks = osk.Keystone(env)
    nova = osk.NovaApi(env, ks)
    nova.setup_db()
    ks.start()
    ks.register_nova(nova)
    nova.start()
    log("real keystone + nova-api ready in %.1f s" % (time.monotonic() - t0))
    tok, iu = nova.create_console_token("127.0.0.1", q.spice_port)
    # (nova-api's first answer validates the broker's Keystone token with
    # Keystone, on SQLite, on a loaded 2-core VM: seconds; give it time)
    b = Broker(env, name="broker-real", link_timeout=25,
               extra=["--config", nova_conf(env, "real", ks.url, nova.service_user,
                                            nova.service_password, timeout=12)]).start()
    r = good_session(env, "127.0.0.1", b.port, tok, expect=ALL_CHANNELS, timeout=30,
                     what="a token the real Nova issued")
    log("real Nova's token through the broker: %s" % ", ".join(sorted(r["opened"])))
    text = b.log_text()
    check("microversion 2.93" in text, "the broker did not settle on 2.93 with Zed's nova-api")
    check(iu in text, "the session does not name the instance %s" % iu)
    check(tok not in text and nova.service_password not in text, "a secret in the broker log")


def test(env):
    no_direct(env)
    q = Qemu(env).start()
    standin_part(env, q)
    real_part(env, q)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
