"""Python's ssl, through http.client, as a client for the interoperability suite.

usage: pyclient.py PORT VERSION CIPHER CAFILE PATH...
  VERSION  1.2 or 1.3, the only version offered;
  CIPHER   the only suite offered, by its OpenSSL name: a TLS 1.2 cipher such as
           ECDHE-ECDSA-AES128-GCM-SHA256 or a TLS 1.3 suite such as TLS_AES_128_GCM_SHA256;
  CAFILE   the server's certificate, which must verify for 127.0.0.1.
Downloads https://127.0.0.1:PORT/PATH for each PATH in turn over one HTTP/1.1 keep-alive
connection and prints "body STATUS LENGTH SHA256" for each, then "connections N" and the
negotiated version and suite. Exits 1, saying why, if the handshake negotiated anything but the
version and suite asked for, a body is shorter than its Content-Length, or http.client had to
open a second connection.

Python's ssl restricts TLS 1.2 ciphers (set_ciphers) but has no call for TLS 1.3 suites. OpenSSL
reads those from its configuration file as the library starts, so for TLS 1.3 this program
writes a configuration naming the one suite and points OPENSSL_CONF at it before importing ssl.
The suite negotiated is checked all the same.
"""
import os
import sys
import tempfile

port, version, cipher, cafile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
paths = sys.argv[5:]
conf = None
if version == "1.3":
    with tempfile.NamedTemporaryFile("w", suffix=".cnf", delete=False) as conf:
        conf.write("openssl_conf = interop\n[interop]\nssl_conf = interop_ssl\n"
                   "[interop_ssl]\nsystem_default = interop_tls\n"
                   f"[interop_tls]\nCiphersuites = {cipher}\n")
    os.environ["OPENSSL_CONF"] = conf.name

import hashlib  # noqa: E402  (after OPENSSL_CONF: OpenSSL reads it once, when first used)
import http.client  # noqa: E402
import ssl  # noqa: E402


def fail(why):
    print(f"pyclient: {why}", file=sys.stderr, flush=True)
    sys.exit(1)


try:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    if version == "1.2":
        ctx.set_ciphers(cipher)
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=120, context=ctx)
    conn.connect()
    got = (conn.sock.version(), conn.sock.cipher()[0])
    if got != (f"TLSv{version}", cipher):
        fail(f"negotiated {got[0]} {got[1]}, wanted TLSv{version} {cipher}")
    socks = []
    for path in paths:
        conn.request("GET", "/" + path)
        # http.client reconnects by itself when the server has closed; count the sockets used.
        if conn.sock not in socks:
            socks.append(conn.sock)
        resp = conn.getresponse()
        length = resp.getheader("Content-Length")
        try:
            body = resp.read()
        except http.client.IncompleteRead as e:
            body = e.partial
        print(f"body {resp.status} {len(body)} {hashlib.sha256(body).hexdigest()}", flush=True)
        if length is None or int(length) != len(body):
            fail(f"/{path}: {len(body)} body bytes, Content-Length {length}")
    print(f"connections {len(socks)} {got[0]} {got[1]}", flush=True)
    if len(socks) != 1:
        fail(f"needed {len(socks)} connections for {len(paths)} requests")
    conn.sock.unwrap()  # close_notify, and the server's in reply
    conn.close()
except (OSError, http.client.HTTPException) as e:
    fail(f"{type(e).__name__}: {e}")
finally:
    if conf:
        os.unlink(conf.name)
