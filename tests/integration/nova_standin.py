#!/usr/bin/python3
"""STAND-IN for Keystone v3 + Nova's console-auth-token API: NOT OpenStack.

A small stdlib http.server that speaks just enough of both APIs for the parts
no Debian package provides, and for fault tests the real services cannot be
made to produce on demand:

  - Nova microversions above Zed's 2.93, i.e. 2.99 (Epoxy), where
    GET /os-console-auth-tokens/{token} of a spice-direct console also returns
    tls_port. Reply shapes follow Nova's API samples
    doc/api_samples/os-console-auth-tokens/v2.31/get-console-connect-info-get-resp.json
    and v2.99/get-console-connect-info-get-resp.json, the version documents
    doc/api_samples/versions/versions-get-resp.json and v21-version-get-resp.json,
    and the error bodies the real nova-api sends (406 "Version X is not
    supported by the API. Minimum is A and maximum is B.", 404 "Token not
    found"); below 2.31 it answers 400 as Nova does since Caracal.
  - Keystone v3 POST /v3/auth/tokens with a password (user name + domain,
    project scope) or an application credential (id, or name + user), 201 with
    X-Subject-Token and a catalog whose compute service has public and
    internal endpoints (the internal one under /internal, so a test sees which
    one a client used); 401 with Keystone's error body otherwise.
  - Faults, one-shot or persistent: a delay before replying, a given status,
    a non-JSON body, a dropped connection, an expired Keystone token (401 on
    the next Nova call).

Tests check the real Keystone 22 / nova-api 26 behaviour with openstack.py;
whatever this stand-in says about 2.99 comes from the samples above.

    s = StandIn(max_version="2.99").start()      # thread, 127.0.0.1:<free port>
    s.add_user("nova", "secret", project="service")
    cred_id, secret = s.add_app_credential("nova")
    s.add_console_token("tok", host="192.0.2.10", port=5900, tls_port=5901,
                        console_type="spice-direct")
    s.fault("nova", "delay", 3.0)                # next Nova request waits 3 s
    s.fault("nova", "unauthorized")              # next Nova request: 401
    s.fault("keystone", "non_json", persistent=True)
    s.requests                                   # [(method, path, headers)]
    s.stop()

Also runs alone (for poking at it, or from a C test):
    /usr/bin/python3 tests/integration/nova_standin.py [--port N]
        [--user NAME:PASSWORD] [--token TOKEN:HOST:PORT[:TLS_PORT[:UUID]]]
        [--max-version 2.99]
prints "auth_url=... compute_url=..." then serves until killed.
"""
import argparse
import json
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REGION = "RegionOne"
MIN_VERSION = "2.1"
TOKEN_TTL = 3600


def parse_mv(s):
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", s or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2))


def fmt_mv(v):
    return "%d.%d" % v


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StandIn:
    """Keystone v3 + Nova console-auth-token stand-in on 127.0.0.1."""

    def __init__(self, port=0, max_version="2.99", min_version=MIN_VERSION,
                 region=REGION, domain="Default"):
        self.max_version = parse_mv(max_version)
        self.min_version = parse_mv(min_version)
        self.region, self.domain = region, domain
        self.users = {}            # name -> {"id", "password", "project"}
        self.app_creds = {}        # id -> {"name", "secret", "user"}
        self.tokens = {}           # X-Subject-Token -> (user name, expiry)
        self.consoles = {}         # console token -> dict
        self.requests = []         # (method, path, headers dict)
        self._faults = []          # [service, kind, arg, persistent]
        self._lock = threading.Lock()
        self._srv = _Server(("127.0.0.1", port), self._handler_class())
        self.port = self._srv.server_address[1]
        self.base = "http://127.0.0.1:%d" % self.port
        self.auth_url = self.base + "/v3"
        self.compute_public = self.base + "/v2.1"
        self.compute_internal = self.base + "/internal/v2.1"
        self._thread = None
        self._stopping = threading.Event()

    # -- set-up
    def start(self):
        self._thread = threading.Thread(target=self._srv.serve_forever,
                                        name="nova-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        self._srv.shutdown()
        self._srv.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def add_user(self, name, password, project="service"):
        with self._lock:
            self.users[name] = {"id": uuid.uuid4().hex, "password": password,
                                "project": project}
        return self.users[name]["id"]

    def add_app_credential(self, user, name=None, secret=None):
        cid = uuid.uuid4().hex
        with self._lock:
            self.app_creds[cid] = {"name": name or "sb-" + cid[:6],
                                   "secret": secret or secrets.token_urlsafe(24),
                                   "user": user}
        return cid, self.app_creds[cid]["secret"]

    def add_console_token(self, token, host, port, tls_port=None, instance_uuid=None,
                          internal_access_path=None, console_type="spice-direct"):
        with self._lock:
            self.consoles[token] = {
                "instance_uuid": instance_uuid or str(uuid.uuid4()), "host": host,
                "port": port, "tls_port": tls_port, "console_type": console_type,
                "internal_access_path": internal_access_path}
        return self.consoles[token]["instance_uuid"]

    def expire_tokens(self):
        """Every Keystone token issued so far becomes invalid (Nova says 401)."""
        with self._lock:
            self.tokens.clear()

    def fault(self, service, kind, arg=None, persistent=False):
        """service "keystone" | "nova" | "any"; kind:
          delay SECONDS   reply normally, after a delay
          status CODE     reply CODE with an error body of that service
          unauthorized    401 (nova: as for an expired token)
          non_json        200 with an HTML body
          bad_json        200 with truncated JSON
          close           drop the connection without a reply
          hang            accept, read the request, never reply (until stop)
        One-shot unless persistent; faults apply in the order added."""
        with self._lock:
            self._faults.append([service, kind, arg, persistent])

    def clear_faults(self):
        with self._lock:
            self._faults.clear()

    def _take_fault(self, service):
        with self._lock:
            for f in self._faults:
                if f[0] in (service, "any"):
                    if not f[3]:
                        self._faults.remove(f)
                    return f[1], f[2]
        return None, None

    # -- documents
    def catalog(self):
        eps = [{"id": uuid.uuid4().hex, "interface": i, "region_id": self.region,
                "region": self.region, "url": u}
               for i, u in (("public", self.compute_public),
                            ("internal", self.compute_internal))]
        ident = [{"id": uuid.uuid4().hex, "interface": i, "region_id": self.region,
                  "region": self.region, "url": self.auth_url}
                 for i in ("public", "internal", "admin")]
        return [{"type": "compute", "name": "nova", "id": uuid.uuid4().hex,
                 "endpoints": eps},
                {"type": "identity", "name": "keystone", "id": uuid.uuid4().hex,
                 "endpoints": ident}]

    def versions_doc(self, href):
        # doc/api_samples/versions/versions-get-resp.json
        return {"versions": [
            {"id": "v2.0", "links": [{"href": href + "/v2/", "rel": "self"}],
             "status": "DEPRECATED", "version": "", "min_version": "",
             "updated": "2025-07-04T12:00:00Z"},
            {"id": "v2.1", "links": [{"href": href + "/v2.1/", "rel": "self"}],
             "status": "CURRENT", "version": fmt_mv(self.max_version),
             "min_version": fmt_mv(self.min_version),
             "updated": "2013-07-23T11:33:21Z"}]}

    def _handler_class(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes
            server_version = "nova-standin/1"

            def log_message(self, fmt, *args):
                pass

            # ---- plumbing
            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n > 0 else b""

            def _send(self, code, obj=None, headers=None, raw=None,
                      ctype="application/json"):
                data = raw if raw is not None else (
                    json.dumps(obj).encode() if obj is not None else b"")
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if data or code not in (204, 304):
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _fault(self, service):
                """Apply a pending fault; True if the reply has been dealt with."""
                kind, arg = standin._take_fault(service)
                if kind is None:
                    return False
                if kind == "delay":
                    time.sleep(float(arg))
                    return False
                if kind == "close":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return True
                if kind == "hang":
                    self.close_connection = True
                    standin._stopping.wait()
                    return True
                if kind == "non_json":
                    self._send(200, raw=b"<html><body>502 Bad Gateway</body></html>\n",
                               ctype="text/html")
                    return True
                if kind == "bad_json":
                    self._send(200, raw=b'{"console": {"host": "192.0.2.1", "po')
                    return True
                if kind == "unauthorized":
                    self._unauthorized(service)
                    return True
                if kind == "status":
                    code = int(arg)
                    if service == "keystone":
                        self._keystone_error(code, "stand-in fault")
                    else:
                        self._nova_error(code, "stand-in fault")
                    return True
                raise ValueError("unknown fault %r" % kind)

            def _unauthorized(self, service):
                if service == "keystone":
                    self._keystone_error(401, "The request you have made requires "
                                              "authentication.")
                else:
                    self._send(401, {"error": {
                        "code": 401, "title": "Unauthorized",
                        "message": "The request you have made requires authentication."}},
                        headers={"WWW-Authenticate":
                                 'Keystone uri="%s"' % standin.auth_url})

            def _keystone_error(self, code, msg):
                title = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                         500: "Internal Server Error", 503: "Service Unavailable"}
                self._send(code, {"error": {"code": code, "message": msg,
                                            "title": title.get(code, "Error")}})

            def _nova_error(self, code, msg, headers=None):
                key = {400: "badRequest", 401: "unauthorized", 403: "forbidden",
                       404: "itemNotFound", 406: "computeFault"}.get(code, "computeFault")
                self._send(code, {key: {"code": code, "message": msg}}, headers=headers)

            def _record(self):
                with standin._lock:
                    standin.requests.append((self.command, self.path,
                                             {k.lower(): v for k, v in self.headers.items()}))

            # ---- routing
            def do_GET(self):
                self._record()
                path = self.path.split("?", 1)[0]
                if path in ("/v3", "/v3/"):
                    if self._fault("keystone"):
                        return
                    return self._send(200, {"version": {
                        "id": "v3.14", "status": "stable",
                        "updated": "2020-04-07T00:00:00Z",
                        "links": [{"rel": "self", "href": standin.auth_url + "/"}],
                        "media-types": [{"base": "application/json",
                                         "type": "application/vnd.openstack.identity-v3+json"}]}})
                if path.startswith("/internal/"):
                    path = path[len("/internal"):]
                if self._fault("nova"):
                    return
                if path == "/":
                    return self._send(300, standin.versions_doc(standin.base))
                if path in ("/v2.1", "/v2.1/"):
                    v = standin.versions_doc(standin.base)["versions"][1]
                    return self._send(200, {"version": v})
                m = re.fullmatch(r"/v2\.1/os-console-auth-tokens/([^/]*)", path)
                if m:
                    return self._console(m.group(1))
                self._nova_error(404, "Not found")

            def do_POST(self):
                self._record()
                body = self._body()
                path = self.path.split("?", 1)[0]
                if path.rstrip("/") != "/v3/auth/tokens":
                    return self._send(404, {"error": {"code": 404, "message": "Not found",
                                                      "title": "Not Found"}})
                if self._fault("keystone"):
                    return
                try:
                    req = json.loads(body)["auth"]
                    ident = req["identity"]
                    methods = ident["methods"]
                except (ValueError, KeyError, TypeError):
                    return self._keystone_error(400, "Expecting to find auth in request body.")
                user = self._authenticate(ident, methods)
                if user is None:
                    return self._unauthorized("keystone")
                tok = "gAAAAA" + secrets.token_urlsafe(48)
                expires = time.time() + TOKEN_TTL
                with standin._lock:
                    standin.tokens[tok] = (user, expires)
                u = standin.users[user]
                body = {"token": {
                    "methods": methods,
                    "user": {"id": u["id"], "name": user,
                             "domain": {"id": "default", "name": standin.domain},
                             "password_expires_at": None},
                    "audit_ids": [secrets.token_urlsafe(16)],
                    "expires_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z",
                                                time.gmtime(expires)),
                    "issued_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                    "project": {"id": uuid.uuid5(uuid.NAMESPACE_OID, u["project"]).hex,
                                "name": u["project"],
                                "domain": {"id": "default", "name": standin.domain}},
                    "is_domain": False,
                    "roles": [{"id": uuid.uuid5(uuid.NAMESPACE_OID, "admin").hex,
                               "name": "admin"}],
                    "catalog": standin.catalog()}}
                self._send(201, body, headers={"X-Subject-Token": tok,
                                               "Vary": "X-Auth-Token"})

            def _authenticate(self, ident, methods):
                try:
                    if methods == ["password"]:
                        pu = ident["password"]["user"]
                        u = standin.users.get(pu.get("name"))
                        if u and pu.get("password") == u["password"]:
                            return pu["name"]
                    elif methods == ["application_credential"]:
                        ac = ident["application_credential"]
                        cred = standin.app_creds.get(ac.get("id"))
                        if cred is None and "name" in ac:
                            un = (ac.get("user") or {}).get("name")
                            for c in standin.app_creds.values():
                                if c["name"] == ac["name"] and c["user"] == un:
                                    cred = c
                        if cred and ac.get("secret") == cred["secret"]:
                            return cred["user"]
                except (KeyError, TypeError, AttributeError):
                    pass
                return None

            def _console(self, token):
                tok = self.headers.get("X-Auth-Token")
                with standin._lock:
                    t = standin.tokens.get(tok)
                if not t or t[1] < time.time():
                    return self._unauthorized("nova")
                hdr = self.headers.get("OpenStack-API-Version")
                want = None
                if hdr:
                    m = re.fullmatch(r"\s*compute\s+(\S+)\s*", hdr)
                    want = m.group(1) if m else None
                elif self.headers.get("X-OpenStack-Nova-API-Version"):
                    want = self.headers.get("X-OpenStack-Nova-API-Version").strip()
                if want is None:
                    v = standin.min_version
                elif want == "latest":
                    v = standin.max_version
                else:
                    v = parse_mv(want)
                    if v is None:
                        return self._nova_error(
                            400, "API Version String %s is of invalid format. Must be "
                                 "of format MajorNum.MinorNum." % want)
                vh = {"OpenStack-API-Version": "compute %s" % fmt_mv(v),
                      "X-OpenStack-Nova-API-Version": fmt_mv(v),
                      "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"}
                if not standin.min_version <= v <= standin.max_version:
                    return self._nova_error(
                        406, "Version %s is not supported by the API. Minimum is %s and "
                             "maximum is %s." % (fmt_mv(v), fmt_mv(standin.min_version),
                                                 fmt_mv(standin.max_version)), headers=vh)
                if v < (2, 31):
                    return self._nova_error(400, "Bad Request", headers=vh)
                c = standin.consoles.get(token)
                if c is None:
                    return self._nova_error(404, "Token not found", headers=vh)
                out = {"instance_uuid": c["instance_uuid"], "host": c["host"],
                       "port": c["port"], "internal_access_path": c["internal_access_path"]}
                if v >= (2, 99) and c["console_type"] == "spice-direct":
                    out["tls_port"] = c["tls_port"]
                self._send(200, {"console": out}, headers=vh)

        return Handler


def main():
    ap = argparse.ArgumentParser(description="Keystone v3 + Nova console-auth-token "
                                             "STAND-IN (not OpenStack)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-version", default="2.99")
    ap.add_argument("--user", action="append", default=[], help="NAME:PASSWORD")
    ap.add_argument("--token", action="append", default=[],
                    help="TOKEN:HOST:PORT[:TLS_PORT[:INSTANCE_UUID]] (spice-direct)")
    a = ap.parse_args()
    s = StandIn(port=a.port, max_version=a.max_version)
    for u in a.user:
        name, pw = u.split(":", 1)
        s.add_user(name, pw)
    for t in a.token:
        f = t.split(":")
        s.add_console_token(f[0], f[1], int(f[2]),
                            tls_port=int(f[3]) if len(f) > 3 and f[3] else None,
                            instance_uuid=f[4] if len(f) > 4 else None)
    s.start()
    print("auth_url=%s compute_url=%s" % (s.auth_url, s.compute_public), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
