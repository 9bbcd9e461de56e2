#!/usr/bin/python3
"""The OpenStack services the broker resolves console tokens through, without
the broker: Debian 12's real Keystone 22 and nova-api 26 (Zed) started here
(openstack.py), and the 2.99 stand-in (nova_standin.py).

Real services: Keystone bootstrapped (admin, RegionOne, identity endpoint),
project service + user nova (admin role), compute service with public and
internal endpoints at the nova-api started here; nova-api on SQLite (API DB,
cell0, cell1) with keystonemiddleware against that Keystone. A console token
made as nova-compute makes it (ConsoleAuthToken.authorize) is read back with
GET /os-console-auth-tokens/{token}:
  - password and application-credential tokens, compute endpoint from the
    catalog (public and internal)
  - GET / says v2.1 min 2.1 max 2.93; 2.31 and 2.93 give instance_uuid,
    host, port, internal_access_path and no tls_port; 2.99 is 406 (the
    fallback trigger), 2.30 is 401 (Zed: rdp-html5 only); an unknown or
    expired token 404; a bad Keystone token 401
Stand-in: the same 406 text as the real nova-api at max 2.93; at 2.99 a
spice-direct token has tls_port (shape of Nova's v2.99 API sample), at 2.31
not; 2.30 400; unknown 404; faults (401 once, non-JSON, delay, close).
No QEMU, no broker.
"""
import http.client
import time
import urllib.error
import uuid

from harness import TestFailure, TestSkip, check, log, run
import openstack as osk
from nova_standin import StandIn


def real_services(env):
    osk.require_openstack()
    t0 = time.monotonic()
    ks = osk.Keystone(env)
    nova = osk.NovaApi(env, ks)
    nova.setup_db()                 # in the background, while Keystone boots
    ks.start()
    ks.register_nova(nova)
    nova.start()
    log("keystone + nova-api ready in %.1f s" % (time.monotonic() - t0))

    # what the broker does: a token as nova (password), the compute URL from
    # the catalog
    ktok, body = osk.keystone_token(ks.url, "nova", nova.service_password, "service")
    pub = osk.compute_endpoint(body, "public")
    internal = osk.compute_endpoint(body, "internal")
    check(pub == nova.url and internal == nova.url,
          "catalog compute endpoints %r %r, want %r" % (pub, internal, nova.url))
    mn, mx = osk.nova_versions(pub)
    log("nova-api versions: min %s max %s" % (mn, mx))
    check((mn, mx) == ("2.1", "2.93"), "nova-api Zed versions %s..%s" % (mn, mx))

    iu = str(uuid.uuid4())
    t1 = time.monotonic()
    tok, _ = nova.create_console_token("192.0.2.10", 5901, instance_uuid=iu)
    log("console token created in %.1f s" % (time.monotonic() - t1))
    want = {"instance_uuid": iu, "host": "192.0.2.10", "port": 5901,
            "internal_access_path": None}
    for mv in ("2.31", "2.93"):
        st, hd, js = osk.console_auth_token(pub, ktok, tok, mv)
        check(st == 200 and js == {"console": want},
              "real nova %s: HTTP %d %r" % (mv, st, js))
        check(hd.get("openstack-api-version") == "compute " + mv,
              "real nova %s: OpenStack-API-Version %r" % (mv, hd.get("openstack-api-version")))
    log("real nova-api 2.31/2.93: %r" % want)

    st, _, js_406 = osk.console_auth_token(pub, ktok, tok, "2.99")
    check(st == 406 and "maximum is 2.93" in js_406["computeFault"]["message"],
          "real nova 2.99: HTTP %d %r" % (st, js_406))
    st, _, js = osk.console_auth_token(pub, ktok, tok, "2.30")
    check(st == 401, "real nova 2.30 (spice token): HTTP %d %r" % (st, js))
    st, _, js = osk.console_auth_token(pub, ktok, "no-such-token", "2.31")
    check(st == 404 and js["itemNotFound"]["message"] == "Token not found",
          "real nova unknown token: HTTP %d %r" % (st, js))
    st, _, js = osk.console_auth_token(pub, "not-a-keystone-token", tok, "2.31")
    check(st == 401, "real nova bad keystone token: HTTP %d %r" % (st, js))

    # application credential of nova, through the internal endpoint
    cid, secret = ks.app_credential("nova", nova.service_password)
    atok, abody = osk.keystone_token(ks.url, app_cred_id=cid, app_cred_secret=secret)
    check(osk.compute_endpoint(abody, "internal") == nova.url, "app-cred catalog")
    st, _, js = osk.console_auth_token(internal, atok, tok, "2.31")
    check(st == 200 and js == {"console": want},
          "real nova with an app-credential token: HTTP %d %r" % (st, js))
    try:
        osk.keystone_token(ks.url, app_cred_id=cid, app_cred_secret="wrong")
        raise TestFailure("a wrong application credential secret was accepted")
    except TestFailure as e:
        check("HTTP 401" in str(e), "wrong app-cred secret: %s" % e)

    # internal_access_path kept; an expired token is gone
    tok2, iu2 = nova.create_console_token("192.0.2.11", 5902, internal_access_path="x-path",
                                          ttl=2)
    st, _, js = osk.console_auth_token(pub, ktok, tok2, "2.31")
    check(st == 200 and js["console"]["internal_access_path"] == "x-path"
          and js["console"]["instance_uuid"] == iu2,
          "real nova internal_access_path: HTTP %d %r" % (st, js))
    time.sleep(2.5)
    st, _, js = osk.console_auth_token(pub, ktok, tok2, "2.31")
    check(st == 404, "real nova expired token: HTTP %d %r" % (st, js))
    log("real keystone + nova-api: all checks passed")
    nova.stop()
    ks.stop()
    return js_406


def standin(env, real_406):
    # at Zed's maximum the stand-in refuses 2.99 with the real nova's words
    s = StandIn(max_version="2.93").start()
    try:
        s.add_user("nova", "pw")
        tok = "zed-" + uuid.uuid4().hex
        s.add_console_token(tok, "192.0.2.20", 5900)
        ktok, _ = osk.keystone_token(s.auth_url, "nova", "pw", "service")
        st, _, js = osk.console_auth_token(s.compute_public, ktok, tok, "2.99")
        check(st == 406 and (real_406 is None or js == real_406),
              "stand-in at 2.93, asked 2.99: HTTP %d %r (real: %r)" % (st, js, real_406))
    finally:
        s.stop()

    s = StandIn(max_version="2.99").start()
    try:
        s.add_user("nova", "pw")
        cid, secret = s.add_app_credential("nova")
        tok, iu = "sd-" + uuid.uuid4().hex, str(uuid.uuid4())
        s.add_console_token(tok, "192.0.2.30", 5900, tls_port=5901, instance_uuid=iu,
                            console_type="spice-direct")
        ktok, body = osk.keystone_token(s.auth_url, app_cred_id=cid, app_cred_secret=secret)
        url = osk.compute_endpoint(body, "public")
        check(osk.nova_versions(url) == ("2.1", "2.99"), "stand-in versions")
        st, hd, js = osk.console_auth_token(url, ktok, tok, "2.99")
        check(st == 200 and js == {"console": {
            "instance_uuid": iu, "host": "192.0.2.30", "port": 5900, "tls_port": 5901,
            "internal_access_path": None}}, "stand-in 2.99: HTTP %d %r" % (st, js))
        check(hd.get("openstack-api-version") == "compute 2.99", "stand-in 2.99 header")
        st, _, js = osk.console_auth_token(url, ktok, tok, "2.31")
        check(st == 200 and "tls_port" not in js["console"], "stand-in 2.31: %r" % js)
        for mv, code in (("2.100", 406), ("2.30", 400), ("x", 400)):
            st, _, js = osk.console_auth_token(url, ktok, tok, mv)
            check(st == code, "stand-in %s: HTTP %d %r" % (mv, st, js))
        st, _, _ = osk.console_auth_token(url, ktok, "nope", "2.99")
        check(st == 404, "stand-in unknown token: %d" % st)
        try:
            osk.keystone_token(s.auth_url, "nova", "wrong", "service")
            raise TestFailure("stand-in took a wrong password")
        except TestFailure as e:
            check("HTTP 401" in str(e), "stand-in wrong password: %s" % e)

        # faults
        s.fault("nova", "unauthorized")
        st, _, _ = osk.console_auth_token(url, ktok, tok, "2.99")
        check(st == 401, "fault unauthorized: %d" % st)
        st, _, _ = osk.console_auth_token(url, ktok, tok, "2.99")
        check(st == 200, "after the one-shot 401: %d" % st)
        s.fault("nova", "non_json")
        st, hd, js = osk.console_auth_token(url, ktok, tok, "2.99")
        check(st == 200 and isinstance(js, bytes) and hd["content-type"] == "text/html",
              "fault non_json: %d %r" % (st, js))
        s.fault("nova", "delay", 1.0)
        t0 = time.monotonic()
        st, _, _ = osk.console_auth_token(url, ktok, tok, "2.99")
        check(st == 200 and time.monotonic() - t0 >= 1.0, "fault delay")
        s.fault("nova", "close")
        try:
            osk.console_auth_token(url, ktok, tok, "2.99")
            raise TestFailure("fault close: got a reply")
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError):
            pass
        s.expire_tokens()
        st, _, _ = osk.console_auth_token(url, ktok, tok, "2.99")
        check(st == 401, "expired keystone token: %d" % st)
        log("stand-in: 2.99 with tls_port, 2.31 without, faults as asked")
    finally:
        s.stop()


def test(env):
    why = osk.have_openstack()
    if why:
        standin(env, None)          # the stand-in needs nothing: check it anyway
        raise TestSkip(why + " (the stand-in checks passed)")
    standin(env, real_services(env))


if __name__ == "__main__":
    raise SystemExit(run(test, __doc__, needs_broker=False, needs_qemu=False))
