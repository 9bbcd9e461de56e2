#!/usr/bin/python3
"""Throw-away TLS material for the integration tests (stdlib + openssl CLI).

  make_cert(dirpath, cn="127.0.0.1", ip="127.0.0.1")
      -> {"dir", "ca_cert", "ca_key", "server_cert", "server_key"}

Creates in dirpath (made if missing):
  ca-cert.pem, ca-key.pem          a self-signed CA (CN "spice-broker test CA",
                                   basicConstraints CA:TRUE, keyCertSign)
  server-cert.pem, server-key.pem  a server certificate signed by that CA:
                                   CN=cn, subjectAltName IP:ip + DNS:localhost,
                                   serverAuth, valid 1 day
These are exactly the names QEMU's `-spice x509-dir=DIR` reads (ca-cert.pem,
server-cert.pem, server-key.pem; no DH file needed), so the same directory
serves QEMU and the broker; a client gets ca-cert.pem as its CA file.

Keys are unencrypted (mode 0600). key_type="rsa" (2048, default) or "ec"
(P-256). Every openssl call is bounded (timeout) and a failure raises
TLSError carrying the command and openssl's stderr. Nothing is written outside
dirpath; the openssl configuration is generated there (the system openssl.cnf
is not used, so no default extensions sneak in).

Command line (by hand): tlsutil.py DIR [CN [IP]]  prints the paths as JSON.
"""
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys

OPENSSL = os.environ.get("OPENSSL", "openssl")
CA_CN = "spice-broker test CA"
TIMEOUT = 60.0


class TLSError(Exception):
    pass


def _run(argv, cwd, timeout=TIMEOUT):
    exe = shutil.which(argv[0])
    if exe is None:
        raise TLSError("%s not found in PATH (Debian: apt-get install openssl)" % argv[0])
    try:
        p = subprocess.run([exe] + argv[1:], cwd=cwd, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TLSError("timed out after %.0f s: %s" % (timeout, " ".join(argv)))
    if p.returncode != 0:
        raise TLSError("rc=%d: %s\n%s" % (p.returncode, " ".join(argv),
                                          p.stderr.decode(errors="replace").strip()))
    return p.stdout.decode(errors="replace")


def _keygen_args(key_type):
    if key_type == "rsa":
        return ["-newkey", "rsa:2048"]
    if key_type == "ec":
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    raise ValueError("key_type must be 'rsa' or 'ec', not %r" % (key_type,))


def _cnf_escape(s):
    # a value in an openssl config: no newlines, quote the rest
    if any(c in s for c in "\r\n\0"):
        raise ValueError("bad character in %r" % (s,))
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def make_cert(dirpath, cn="127.0.0.1", ip="127.0.0.1", dns=("localhost",), days=1,
              key_type="rsa", ca_from=None, client_auth=False):
    """CA + server certificate in dirpath (see the module docstring).

    ip=None leaves out the IP SAN, dns=() the DNS SANs (to test hostname
    verification); with neither, the certificate has no subjectAltName.
    ca_from: another make_cert result whose CA signs this certificate too
    (copied here, so dirpath is a complete x509-dir).
    client_auth: the server certificate may also serve as a client's
    (extendedKeyUsage serverAuth,clientAuth: etcd's JSON gateway dials its own
    gRPC port with it, which --client-cert-auth checks).
    Returns {"dir", "ca_cert", "ca_key", "server_cert", "server_key"}."""
    dirpath = os.path.abspath(dirpath)
    os.makedirs(dirpath, exist_ok=True)
    sans = []
    if ip is not None:
        sans.append("IP:%s" % ipaddress.ip_address(ip))     # ValueError if not an IP
    for d in dns:
        if not d or any(c in d for c in ", \t\r\n\"\\"):
            raise ValueError("bad DNS name %r" % (d,))
        sans.append("DNS:%s" % d)
    paths = {"dir": dirpath,
             "ca_cert": os.path.join(dirpath, "ca-cert.pem"),
             "ca_key": os.path.join(dirpath, "ca-key.pem"),
             "server_cert": os.path.join(dirpath, "server-cert.pem"),
             "server_key": os.path.join(dirpath, "server-key.pem")}
    cnf = os.path.join(dirpath, "tlsutil-openssl.cnf")
    csr = os.path.join(dirpath, "server.csr")
    ext = ["[ req ]", "distinguished_name = dn", "prompt = no",
           "[ dn ]", "CN = %s" % _cnf_escape(CA_CN),
           "[ server_dn ]", "CN = %s" % _cnf_escape(cn),
           "[ v3_ca ]",
           "basicConstraints = critical,CA:TRUE",
           "keyUsage = critical,keyCertSign,cRLSign",
           "subjectKeyIdentifier = hash",
           "[ v3_server ]",
           "basicConstraints = critical,CA:FALSE",
           "keyUsage = critical,digitalSignature,keyEncipherment",
           "extendedKeyUsage = serverAuth" + (",clientAuth" if client_auth else ""),
           "subjectKeyIdentifier = hash",
           "authorityKeyIdentifier = keyid"]
    if sans:
        ext.append("subjectAltName = %s" % ",".join(sans))
    with open(cnf, "w") as f:
        f.write("\n".join(ext) + "\n")
    old_umask = os.umask(0o077)              # keys: 0600 from creation on
    try:
        for p in paths.values():
            if p != dirpath and os.path.exists(p):
                os.unlink(p)
        # 1. the CA: self-signed, its own key (or another directory's)
        if ca_from is not None:
            shutil.copyfile(ca_from["ca_cert"], paths["ca_cert"])
            shutil.copyfile(ca_from["ca_key"], paths["ca_key"])
        else:
            _run([OPENSSL, "req", "-x509", "-config", cnf, "-extensions", "v3_ca"]
                 + _keygen_args(key_type)
                 + ["-noenc", "-keyout", paths["ca_key"], "-out", paths["ca_cert"],
                    "-days", str(days), "-sha256",
                    "-set_serial", "0x%s" % secrets.token_hex(8)], dirpath)
        # 2. the server key + CSR (subject from [server_dn])
        with open(cnf, "a") as f:
            f.write("[ req_server ]\ndistinguished_name = server_dn\nprompt = no\n")
        _run([OPENSSL, "req", "-new", "-config", cnf, "-section", "req_server"]
             + _keygen_args(key_type)
             + ["-noenc", "-keyout", paths["server_key"], "-out", csr], dirpath)
        # 3. the CA signs it, extensions from [v3_server]
        _run([OPENSSL, "x509", "-req", "-in", csr, "-CA", paths["ca_cert"],
              "-CAkey", paths["ca_key"], "-set_serial", "0x%s" % secrets.token_hex(8),
              "-days", str(days), "-sha256", "-extfile", cnf, "-extensions", "v3_server",
              "-out", paths["server_cert"]], dirpath)
    finally:
        os.umask(old_umask)
    for p in (paths["ca_cert"], paths["server_cert"]):
        os.chmod(p, 0o644)
    try:
        os.unlink(csr)
    except OSError:
        pass
    # sanity: the chain verifies (openssl's own check, not spice-gtk's)
    out = _run([OPENSSL, "verify", "-CAfile", paths["ca_cert"], paths["server_cert"]],
               dirpath)
    if "OK" not in out:
        raise TLSError("openssl verify of %s: %s" % (paths["server_cert"], out.strip()))
    return paths


def cert_text(path):
    """openssl x509 -text of a certificate (for logs)."""
    return _run([OPENSSL, "x509", "-noout", "-text", "-in", path], os.path.dirname(path))


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 4:
        sys.exit("usage: tlsutil.py DIR [CN [IP]]")
    print(json.dumps(make_cert(*sys.argv[1:]), indent=1))


def make_client_cert(ca, name="client", cn="spice-broker", days=1, key_type="rsa"):
    """A client certificate (extendedKeyUsage clientAuth) signed by the CA of
    ca (a make_cert result), in ca's directory as NAME-cert.pem and
    NAME-key.pem; cn=None: no CommonName (subject O=spice-broker; etcd's
    JSON gateway refuses a client certificate with a CommonName once v3 auth
    is on). Returns {"cert", "key"}."""
    d = ca["dir"]
    cert, key = os.path.join(d, name + "-cert.pem"), os.path.join(d, name + "-key.pem")
    cnf, csr = os.path.join(d, name + "-openssl.cnf"), os.path.join(d, name + ".csr")
    with open(cnf, "w") as f:
        f.write("\n".join(["[ req ]", "distinguished_name = dn", "prompt = no",
                           "[ dn ]", ("CN = %s" % _cnf_escape(cn)) if cn else "O = spice-broker",
                           "[ v3_client ]", "basicConstraints = critical,CA:FALSE",
                           "keyUsage = critical,digitalSignature,keyEncipherment",
                           "extendedKeyUsage = clientAuth",
                           "subjectKeyIdentifier = hash",
                           "authorityKeyIdentifier = keyid"]) + "\n")
    old_umask = os.umask(0o077)
    try:
        _run([OPENSSL, "req", "-new", "-config", cnf] + _keygen_args(key_type)
             + ["-noenc", "-keyout", key, "-out", csr], d)
        _run([OPENSSL, "x509", "-req", "-in", csr, "-CA", ca["ca_cert"], "-CAkey", ca["ca_key"],
              "-set_serial", "0x%s" % secrets.token_hex(8), "-days", str(days), "-sha256",
              "-extfile", cnf, "-extensions", "v3_client", "-out", cert], d)
    finally:
        os.umask(old_umask)
    os.chmod(cert, 0o644)
    try:
        os.unlink(csr)
    except OSError:
        pass
    return {"cert": cert, "key": key}
