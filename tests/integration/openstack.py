#!/usr/bin/python3
"""OpenStack side of the integration tests: Debian 12's REAL Keystone
(python3-keystone 22.0, Zed) and nova-api (python3-nova 26.2, Zed) on
127.0.0.1, started by the test by PID, plus the urllib clients a test needs to
check what the broker does with them.

  have_openstack()            None, or why the services cannot run here
  Keystone(env).start()       keystone-manage db_sync / fernet_setup /
                              credential_setup / bootstrap (admin, RegionOne,
                              identity endpoint) on SQLite in the test dir,
                              then keystone-wsgi-public (wsgiref) on a free port
  Keystone.register_nova(nova)
                              project "service", user "nova" with the admin
                              role there, service "compute" and its public and
                              internal endpoints at nova.url
  Keystone.app_credential(...)
                              an application credential (id, secret)
  NovaApi(env, keystone)      nova.conf + api-paste.ini in the test dir, API
    .setup_db()               DB + cell0 + cell1 on SQLite (nova-manage's own
                              command classes, one process, runs in the
                              background while Keystone starts)
    .start()                  Nova's osapi_compute WSGI app under wsgiref
    .create_console_token(...)
                              a console token made as nova-compute makes it
                              (a minimal instance record, then
                              objects.ConsoleAuthToken(...).authorize(ttl)),
                              returns the plaintext token
  keystone_token(url, ...)    POST /v3/auth/tokens (password or application
                              credential) -> (token, body)
  compute_endpoint(body, ...) the compute URL from a token's catalog
  console_auth_token(nova_url, keystone_token, token, microversion)
                              GET /os-console-auth-tokens/{token}
                              -> (status, headers, parsed JSON or raw bytes)
  nova_versions(nova_url)     GET / of the compute endpoint -> (min, max)

No message queue is involved: GET /os-console-auth-tokens/{token} reads the
cell databases (ConsoleAuthToken.validate through scatter_gather_skip_cell0),
so transport_url = fake:// (oslo.messaging's in-process driver) is enough.
Nova Zed stops at microversion 2.93; what 2.99 adds (tls_port, spice-direct)
comes from the stand-in in nova_standin.py.

Only the Python packages are needed (python3-keystone, python3-nova): the
service packages (keystone, nova-api, nova-common) would pull systemd, uwsgi,
dbconfig-common and friends and run postinst scripts, and nothing here uses
them: keystone-manage and keystone-wsgi-public come with python3-keystone,
nova-manage's commands and the osapi_compute WSGI app are called through
/usr/bin/python3, and the paste pipeline below is written here (Nova's
etc/nova/api-paste.ini, reduced to the compute API).
"""
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from harness import TestFailure, TestSkip, free_port, kill_proc, log, tail

PY = "/usr/bin/python3"          # Debian's, where python3-keystone/-nova live
KEYSTONE_MANAGE = "/usr/bin/keystone-manage"
KEYSTONE_WSGI = "/usr/bin/keystone-wsgi-public"
DIST = "/usr/lib/python3/dist-packages"
REGION = "RegionOne"
PACKAGES = "python3-keystone python3-nova"


def have_openstack():
    """None if Keystone and Nova can run here, else the reason (for TestSkip)."""
    missing = [p for p in (PY, KEYSTONE_MANAGE, KEYSTONE_WSGI,
                           os.path.join(DIST, "keystone", "server", "wsgi.py"),
                           os.path.join(DIST, "nova", "api", "openstack", "compute",
                                        "console_auth_tokens.py"))
               if not os.path.exists(p)]
    if missing:
        return ("Debian's Keystone/Nova not installed (apt-get install %s): missing %s"
                % (PACKAGES, ", ".join(missing)))
    return None


def require_openstack():
    why = have_openstack()
    if why:
        raise TestSkip(why)


# ------------------------------------------------------------ HTTP clients
def http(method, url, body=None, headers=None, timeout=10.0):
    """One request -> (status, headers dict (lower-case names), parsed JSON or
    raw bytes). HTTP errors are returned, not raised; connection errors raise."""
    data = None
    h = {"Accept": "application/json"}
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    hd = {k.lower(): v for k, v in hdrs.items()}
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw
    return status, hd, parsed


def password_auth(user, password, project, domain="Default"):
    return {"auth": {
        "identity": {"methods": ["password"],
                     "password": {"user": {"name": user, "domain": {"name": domain},
                                           "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": domain}}}}}


def app_credential_auth(cred_id, secret):
    return {"auth": {"identity": {
        "methods": ["application_credential"],
        "application_credential": {"id": cred_id, "secret": secret}}}}


def keystone_token(auth_url, user=None, password=None, project=None, domain="Default",
                   app_cred_id=None, app_cred_secret=None, timeout=10.0):
    """POST {auth_url}/auth/tokens (auth_url ends in /v3) with a password or an
    application credential -> (X-Subject-Token, token body incl. catalog)."""
    if app_cred_id:
        body = app_credential_auth(app_cred_id, app_cred_secret)
    else:
        body = password_auth(user, password, project, domain)
    st, hd, js = http("POST", auth_url.rstrip("/") + "/auth/tokens", body, timeout=timeout)
    if st != 201 or "x-subject-token" not in hd:
        raise TestFailure("keystone token at %s: HTTP %d %r" % (auth_url, st, js))
    return hd["x-subject-token"], js


def compute_endpoint(token_body, interface="public", region=REGION):
    """The compute endpoint URL of that interface/region in a token's catalog."""
    for svc in token_body["token"].get("catalog", []):
        if svc.get("type") != "compute":
            continue
        for ep in svc.get("endpoints", []):
            if ep.get("interface") == interface and (
                    region is None or region in (ep.get("region_id"), ep.get("region"))):
                return ep["url"]
    raise TestFailure("no %s compute endpoint in %s in the catalog" % (interface, region))


def console_auth_token(nova_url, ktoken, token, microversion="2.31", timeout=10.0):
    """GET {nova_url}/os-console-auth-tokens/{token} with
    OpenStack-API-Version: compute <microversion> -> (status, headers, body)."""
    h = {"X-Auth-Token": ktoken}
    if microversion:
        h["OpenStack-API-Version"] = "compute %s" % microversion
    return http("GET", "%s/os-console-auth-tokens/%s" % (nova_url.rstrip("/"), token),
                headers=h, timeout=timeout)


def nova_versions(nova_url, timeout=10.0):
    """(min_version, version) of v2.1 from the compute endpoint's GET /."""
    root = nova_url.rstrip("/")
    if root.endswith("/v2.1"):
        root = root[:-len("/v2.1")]
    st, _, js = http("GET", root + "/", timeout=timeout)
    if st not in (200, 300) or not isinstance(js, dict):
        raise TestFailure("GET %s/: HTTP %d %r" % (root, st, js))
    for v in js.get("versions", []):
        if v.get("id") == "v2.1":
            return v["min_version"], v["version"]
    raise TestFailure("no v2.1 in %r" % js)


def _mv(s):
    a, b = s.split(".")
    return int(a), int(b)


def _wait_http(proc, url, name, log_path, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise TestFailure("%s exited rc=%s at startup:\n%s" % (
                name, proc.returncode, tail(log_path)))
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except urllib.error.HTTPError:
            return                  # it answers
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TestFailure("%s not answering %s after %.0f s:\n%s" % (
                name, url, timeout, tail(log_path)))
        time.sleep(0.2)


def sqlite_wal(path):
    """Switch an SQLite DB to WAL (it stays so): readers then no longer block
    a writer's commit. Without it Keystone (single-threaded wsgiref) failed
    POST /v3/services right after a role assignment with "database is
    locked" at commit, 5 s later (another of its connections, it seems,
    still holding a read lock)."""
    import sqlite3
    c = sqlite3.connect(path, timeout=10)
    try:
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        c.close()
    if mode.lower() != "wal":
        raise TestFailure("%s: journal_mode %s, not wal" % (path, mode))


def _run_logged(argv, log_path, what, timeout, env=None):
    with open(log_path, "ab") as f:
        f.write(("\n$ %s\n" % " ".join(argv)).encode())
        f.flush()
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f,
                               stderr=subprocess.STDOUT, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise TestFailure("%s timed out after %.0f s:\n%s" % (what, timeout, tail(log_path)))
    if r.returncode != 0:
        raise TestFailure("%s failed rc=%d:\n%s" % (what, r.returncode, tail(log_path)))


# ---------------------------------------------------------------- Keystone
class Keystone:
    """Keystone (Debian's python3-keystone) on 127.0.0.1:<free port>: SQLite,
    fernet tokens, keys and logs under env.path(name); the WSGI app under
    wsgiref (keystone-wsgi-public's own test server), killed by PID."""

    def __init__(self, env, name="keystone"):
        require_openstack()
        self.env, self.name = env, name
        self.port = free_port()
        self.dir = env.path(name)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "keystone.conf")
        self.log_path = os.path.join(self.dir, "keystone.log")
        self.manage_log = os.path.join(self.dir, "keystone-manage.log")
        self.url = "http://127.0.0.1:%d/v3" % self.port
        self.admin_password = "admin-" + secrets.token_hex(8)
        self.proc = None
        self._admin = None

    def write_conf(self):
        d = self.dir
        with open(self.conf, "w") as f:
            f.write("[DEFAULT]\nuse_stderr = true\n"
                    "[database]\nconnection = sqlite:///%s/keystone.sqlite\n"
                    "[token]\nprovider = fernet\n"
                    "[fernet_tokens]\nkey_repository = %s/fernet-keys\n"
                    "[fernet_receipts]\nkey_repository = %s/fernet-keys\n"
                    "[credential]\nkey_repository = %s/credential-keys\n"
                    "[cache]\nenabled = false\n" % (d, d, d, d))

    def manage(self, *args, timeout=120):
        _run_logged([PY, KEYSTONE_MANAGE, "--config-file", self.conf] + list(args),
                    self.manage_log, "keystone-manage %s" % args[0], timeout)

    def bootstrap(self):
        t0 = time.monotonic()
        self.write_conf()
        owner = ["--keystone-user", "root", "--keystone-group", "root"] \
            if os.getuid() == 0 else []
        self.manage("db_sync")
        sqlite_wal(os.path.join(self.dir, "keystone.sqlite"))
        self.manage("fernet_setup", *owner)
        self.manage("credential_setup", *owner)
        self.manage("bootstrap", "--bootstrap-password", self.admin_password,
                    "--bootstrap-username", "admin",
                    "--bootstrap-project-name", "admin",
                    "--bootstrap-role-name", "admin",
                    "--bootstrap-service-name", "keystone",
                    "--bootstrap-region-id", REGION,
                    "--bootstrap-admin-url", self.url,
                    "--bootstrap-public-url", self.url,
                    "--bootstrap-internal-url", self.url)
        log("%s bootstrapped in %.1f s" % (self.name, time.monotonic() - t0))

    def start(self, timeout=60.0):
        if not os.path.exists(self.conf):
            self.bootstrap()
        t0 = time.monotonic()
        env = dict(os.environ, OS_KEYSTONE_CONFIG_FILES=self.conf)
        self.proc = self.env.spawn(self.name, [PY, KEYSTONE_WSGI, "--host", "127.0.0.1",
                                               "--port", str(self.port)],
                                   self.log_path, env=env)
        _wait_http(self.proc, self.url, self.name, self.log_path, timeout)
        log("%s up in %.1f s: pid %d, %s" % (self.name, time.monotonic() - t0,
                                             self.proc.pid, self.url))
        return self

    def stop(self):
        if self.proc is not None:
            kill_proc(self.proc, term_wait=5.0)
            self.proc = None
            log("%s stopped" % self.name)

    # -- admin API (as admin in project admin)
    def admin_token(self):
        if self._admin is None:
            self._admin = keystone_token(self.url, "admin", self.admin_password, "admin")
        return self._admin[0]

    def api(self, method, path, body=None, expect=(200, 201, 204)):
        st, _, js = http(method, self.url + path, body,
                         headers={"X-Auth-Token": self.admin_token()})
        if st not in expect:
            raise TestFailure("keystone %s %s: HTTP %d %r" % (method, path, st, js))
        return js

    def find_id(self, kind, name):
        js = self.api("GET", "/%s?name=%s" % (kind, name))
        items = js[kind]
        return items[0]["id"] if items else None

    def project(self, name):
        pid = self.find_id("projects", name)
        if pid:
            return pid
        return self.api("POST", "/projects", {"project": {
            "name": name, "domain_id": "default", "enabled": True}})["project"]["id"]

    def user(self, name, password, project, role="admin"):
        """A user with `role` on `project` (created if missing) -> user id."""
        pid = self.project(project)
        uid = self.api("POST", "/users", {"user": {
            "name": name, "password": password, "domain_id": "default",
            "default_project_id": pid, "enabled": True}})["user"]["id"]
        rid = self.find_id("roles", role)
        self.api("PUT", "/projects/%s/users/%s/roles/%s" % (pid, uid, rid))
        return uid

    def service(self, name, type_, urls):
        """A catalog service with endpoints {interface: url} in RegionOne."""
        sid = self.api("POST", "/services", {"service": {
            "name": name, "type": type_, "enabled": True}})["service"]["id"]
        for iface, url in urls.items():
            self.api("POST", "/endpoints", {"endpoint": {
                "service_id": sid, "interface": iface, "url": url,
                "region_id": REGION, "enabled": True}})
        return sid

    def register_nova(self, nova, interfaces=("public", "internal")):
        """What a deployment does for Nova: project service, user nova (admin
        role there, nova's [keystone_authtoken] and the broker's credentials),
        service compute with its endpoints at nova.url."""
        nova.user_id = self.user(nova.service_user, nova.service_password, "service")
        self.service("nova", "compute", {i: nova.url for i in interfaces})

    def app_credential(self, user, password, project="service", name=None, roles=None):
        """An application credential of user (authenticating as it) -> (id, secret)."""
        tok, body = keystone_token(self.url, user, password, project)
        uid = body["token"]["user"]["id"]
        req = {"name": name or "sb-" + secrets.token_hex(4)}
        if roles:
            req["roles"] = [{"name": r} for r in roles]
        st, _, js = http("POST", "%s/users/%s/application_credentials" % (self.url, uid),
                         {"application_credential": req}, headers={"X-Auth-Token": tok})
        if st != 201:
            raise TestFailure("application credential: HTTP %d %r" % (st, js))
        ac = js["application_credential"]
        return ac["id"], ac["secret"]


# ------------------------------------------------------------------ Nova
# Nova's etc/nova/api-paste.ini, only the compute API (/, /v2.1, /v2.1/+)
# with keystone auth; cors, http_proxy_to_wsgi, sizelimit and osprofiler left
# out (no effect on a GET here).
API_PASTE = """\
[composite:osapi_compute]
use = call:nova.api.openstack.urlmap:urlmap_factory
/: oscomputeversions
/v2.1: oscomputeversion_v2
/v2.1/+: openstack_compute_api_v21

[composite:openstack_compute_api_v21]
use = call:nova.api.auth:pipeline_factory_v21
keystone = compute_req_id faultwrap request_log authtoken keystonecontext osapi_compute_app_v21

[pipeline:oscomputeversions]
pipeline = faultwrap request_log oscomputeversionapp

[pipeline:oscomputeversion_v2]
pipeline = compute_req_id faultwrap request_log oscomputeversionapp_v2

[filter:request_log]
paste.filter_factory = nova.api.openstack.requestlog:RequestLog.factory

[filter:compute_req_id]
paste.filter_factory = nova.api.compute_req_id:ComputeReqIdMiddleware.factory

[filter:faultwrap]
paste.filter_factory = nova.api.openstack:FaultWrapper.factory

[filter:keystonecontext]
paste.filter_factory = nova.api.auth:NovaKeystoneContext.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory

[app:osapi_compute_app_v21]
paste.app_factory = nova.api.openstack.compute:APIRouterV21.factory

[app:oscomputeversionapp]
paste.app_factory = nova.api.openstack.compute.versions:Versions.factory

[app:oscomputeversionapp_v2]
paste.app_factory = nova.api.openstack.compute.versions:VersionsV2.factory
"""

# nova-manage api_db sync; cell_v2 map_cell0; cell_v2 create_cell; db sync;
# in one interpreter (each nova-manage run pays ~4 s of imports).
_NOVA_DB_SETUP = r"""
import sys
from nova.cmd import manage
from nova import config, objects
conf, cell0, cell1 = sys.argv[1:4]
config.parse_args(["nova-manage", "--config-file", conf])
objects.register_all()
steps = [("api_db sync", lambda: manage.ApiDbCommands().sync()),
         ("cell_v2 map_cell0",
          lambda: manage.CellV2Commands().map_cell0(database_connection=cell0)),
         ("cell_v2 create_cell", lambda: manage.CellV2Commands().create_cell(
             name="cell1", database_connection=cell1, transport_url="fake://")),
         ("db sync", lambda: manage.DbCommands().sync())]
for what, fn in steps:
    rc = fn()
    print("nova-manage %s: %r" % (what, rc), flush=True)
    if rc not in (None, 0):
        sys.exit(1)
"""

# What nova-compute does for a console (get_spice_console & co): an
# authorization stored hashed in the instance's cell DB. The instance must
# exist in the cell (console_auth_token_create checks it), so a minimal
# instance record is created first when missing.
_NOVA_MAKE_TOKEN = r"""
import json, sys
from nova import config, context, exception, objects
a = json.loads(sys.argv[2])
config.parse_args(["nova-console-token", "--config-file", sys.argv[1]])
objects.register_all()
ctx = context.get_admin_context()
cell = [c for c in objects.CellMappingList.get_all(ctx) if not c.is_cell0()][0]
with context.target_cell(ctx, cell) as cctx:
    try:
        objects.Instance.get_by_uuid(cctx, a["instance_uuid"])
    except exception.InstanceNotFound:
        objects.Instance(cctx, uuid=a["instance_uuid"], project_id=a["project_id"],
                         user_id=a["user_id"], host=a["compute_host"],
                         node=a["compute_host"], vm_state="active",
                         power_state=1, display_name="sb-it").create()
    cat = objects.ConsoleAuthToken(
        cctx, console_type=a["console_type"], host=a["host"], port=a["port"],
        internal_access_path=a["internal_access_path"],
        instance_uuid=a["instance_uuid"], access_url_base=a["access_url_base"])
    token = cat.authorize(a["ttl"])
print(json.dumps({"token": token}), flush=True)
"""

# Nova's osapi_compute WSGI app (nova-api-wsgi's init_application) under
# wsgiref; importing nova.api.openstack monkey-patches with eventlet first.
_NOVA_API_RUN = r"""
import os, sys
port, confdir = int(sys.argv[1]), sys.argv[2]
os.environ["OS_NOVA_CONFIG_DIR"] = confdir
sys.argv = ["nova-api"]
from nova.api.openstack.compute import wsgi as nova_wsgi
from wsgiref import simple_server
app = nova_wsgi.init_application()
srv = simple_server.make_server("127.0.0.1", port, app)
print("nova-api listening on 127.0.0.1:%d" % port, flush=True)
srv.serve_forever()
"""


class NovaApi:
    """nova-api (Debian's python3-nova) on 127.0.0.1:<free port>: API DB,
    cell0 and cell1 on SQLite under env.path(name), transport_url fake://,
    keystonemiddleware against `keystone` as user nova of project service.
    keystone.register_nova(self) must run before start()."""

    def __init__(self, env, keystone, name="nova"):
        require_openstack()
        self.env, self.keystone, self.name = env, keystone, name
        self.port = free_port()
        self.dir = env.path(name)
        os.makedirs(os.path.join(self.dir, "lock"), exist_ok=True)
        self.conf = os.path.join(self.dir, "nova.conf")
        self.paste = os.path.join(self.dir, "api-paste.ini")
        self.log_path = os.path.join(self.dir, "nova-api.log")
        self.manage_log = os.path.join(self.dir, "nova-manage.log")
        self.token_log = os.path.join(self.dir, "nova-token.log")
        self.root_url = "http://127.0.0.1:%d" % self.port
        self.url = self.root_url + "/v2.1"
        self.service_user = "nova"
        self.service_password = "nova-" + secrets.token_hex(8)
        self.user_id = None
        self.proc = None
        self._setup = None

    def db_url(self, which):
        return "sqlite:///%s/%s.sqlite" % (self.dir, which)

    def write_conf(self):
        k = self.keystone.url
        with open(self.conf, "w") as f:
            f.write("[DEFAULT]\ntransport_url = fake://\nhost = sb-it-nova\n"
                    "state_path = %s\nuse_stderr = true\n" % self.dir)
            f.write("[api]\nauth_strategy = keystone\n")
            f.write("[api_database]\nconnection = %s\n" % self.db_url("nova_api"))
            f.write("[database]\nconnection = %s\n" % self.db_url("nova_cell1"))
            f.write("[wsgi]\napi_paste_config = %s\n" % self.paste)
            f.write("[oslo_concurrency]\nlock_path = %s/lock\n" % self.dir)
            f.write("[keystone_authtoken]\nwww_authenticate_uri = %s\nauth_url = %s\n"
                    "auth_type = password\nproject_domain_name = Default\n"
                    "user_domain_name = Default\nproject_name = service\n"
                    "username = %s\npassword = %s\nregion_name = %s\n"
                    % (k, k, self.service_user, self.service_password, REGION))
        with open(self.paste, "w") as f:
            f.write(API_PASTE)

    def setup_db(self):
        """Start the DB setup in the background (joined by start())."""
        self.write_conf()
        self._setup_t0 = time.monotonic()
        self._setup = self.env.spawn(
            self.name + "-manage",
            [PY, "-c", _NOVA_DB_SETUP, self.conf, self.db_url("nova_cell0"),
             self.db_url("nova_cell1")], self.manage_log)
        return self

    def _join_setup(self, timeout):
        if self._setup is None:
            self.setup_db()
        try:
            rc = self._setup.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_proc(self._setup)
            raise TestFailure("nova DB setup timed out after %.0f s:\n%s" % (
                timeout, tail(self.manage_log)))
        if rc != 0:
            raise TestFailure("nova DB setup failed rc=%d:\n%s" % (rc, tail(self.manage_log)))
        log("%s DB setup (api_db sync, map_cell0, create_cell, db sync) done in %.1f s"
            % (self.name, time.monotonic() - self._setup_t0))

    def start(self, timeout=60.0, setup_timeout=180.0):
        self._join_setup(setup_timeout)
        t0 = time.monotonic()
        self.proc = self.env.spawn(self.name, [PY, "-c", _NOVA_API_RUN, str(self.port),
                                               self.dir], self.log_path)
        _wait_http(self.proc, self.root_url + "/", self.name, self.log_path, timeout)
        log("%s up in %.1f s: pid %d, %s" % (self.name, time.monotonic() - t0,
                                             self.proc.pid, self.url))
        return self

    def stop(self):
        if self.proc is not None:
            kill_proc(self.proc, term_wait=5.0)
            self.proc = None
            log("%s stopped" % self.name)

    def create_console_token(self, host, port, instance_uuid=None,
                             console_type="spice-html5", internal_access_path=None,
                             access_url_base="http://127.0.0.1:6082/spice_auto.html",
                             ttl=600, compute_host="sb-it-compute", timeout=60.0):
        """A console token as nova-compute creates it -> (token, instance_uuid)."""
        iu = instance_uuid or str(uuid.uuid4())
        args = {"instance_uuid": iu, "host": host, "port": port,
                "console_type": console_type, "internal_access_path": internal_access_path,
                "access_url_base": access_url_base, "ttl": ttl,
                "project_id": uuid.uuid4().hex, "user_id": uuid.uuid4().hex,
                "compute_host": compute_host}
        with open(self.token_log, "ab") as f:
            try:
                r = subprocess.run([PY, "-c", _NOVA_MAKE_TOKEN, self.conf, json.dumps(args)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=f, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise TestFailure("console token creation timed out:\n%s" % tail(self.token_log))
        if r.returncode != 0:
            raise TestFailure("console token creation failed rc=%d:\n%s" % (
                r.returncode, tail(self.token_log)))
        token = json.loads(r.stdout.decode().strip().splitlines()[-1])["token"]
        return token, iu
