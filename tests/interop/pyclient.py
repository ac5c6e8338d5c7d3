"""A third TLS client for the interoperability suite: Python's ssl module.

usage: pyclient.py PORT VERSION CIPHER   (VERSION 1.2 or 1.3; CIPHER an OpenSSL TLS 1.2 name,
ignored for 1.3, whose suites Python cannot restrict). Reads one line from stdin, sends it, and
prints what comes back, like the other clients.
"""
import socket
import ssl
import sys

port, version, cipher = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
ctx.minimum_version = ctx.maximum_version = v
if version == "1.2":
    ctx.set_ciphers(cipher)
with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        line = sys.stdin.readline().encode()
        tls.sendall(line)
        got = b""
        while len(got) < len(line):
            chunk = tls.recv(4096)
            if not chunk:
                break
            got += chunk
        print(got.decode(errors="replace"), tls.version(), tls.cipher()[0], flush=True)
        tls.unwrap()
