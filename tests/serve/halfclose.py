#!/usr/bin/env python3
"""Clients that end their side of a connection early, for tests/serve/halfclose.sh.

fetch:   sends one GET, then its close_notify and a TCP FIN (at once, or --pause seconds later),
         waits --delay seconds, then reads the whole response slowly and prints
         "BODY_LEN SHA256 END", END being how the stream ended: close_notify (the server's),
         eof (a FIN without close_notify), or reset.
stall:   sends one GET and a FIN and never reads; holds the socket for --hold seconds.
abandon: sends one GET, reads --after bytes of the response, then resets the connection.

Python's ssl over memory BIOs, so that every byte goes out exactly when this script says.
"""
import argparse
import hashlib
import socket
import ssl
import struct
import sys
import time


def connect(port, version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")

    def flush():
        data = out.read()
        if data:
            sock.sendall(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            data = sock.recv(65536)
            if not data:
                sys.exit("the server closed during the handshake")
            inc.write(data)
    flush()
    return sock, tls, inc, flush


def request(path, keepalive):
    conn = b"" if keepalive else b"Connection: close\r\n"
    return b"GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (path.encode(), conn)


def read_all(sock, tls, inc, step, limit=None):
    """Plaintext until the stream ends (or limit bytes); returns (bytes, how it ended)."""
    buf = bytearray()
    while limit is None or len(buf) < limit:
        try:
            data = tls.read(65536)
            if not data:
                return bytes(buf), "close_notify"
            buf += data
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            return bytes(buf), "close_notify"
        except ssl.SSLError as e:
            return bytes(buf), "tls-error:" + e.reason if e.reason else "tls-error"
        if step:
            time.sleep(step)
        try:
            data = sock.recv(16384)
        except ConnectionResetError:
            return bytes(buf), "reset"
        if not data:
            return bytes(buf), "eof"
        inc.write(data)
    return bytes(buf), "limit"


def body_of(response):
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200"):
        return None
    return body


def fetch(a):
    sock, tls, inc, flush = connect(a.port, a.version)
    tls.write(request(a.path, a.keepalive))
    if a.pause:
        flush()
        time.sleep(a.pause)
    try:
        tls.unwrap()  # our close_notify; the server's comes later
    except ssl.SSLWantReadError:
        pass
    try:
        flush()
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server already reset the connection: what did arrive is still read below
    time.sleep(a.delay)
    response, end = read_all(sock, tls, inc, a.step)
    body = body_of(response)
    if body is None:
        print("-1 - %s %r" % (end, response[:80]))
        return 1
    print(len(body), hashlib.sha256(body).hexdigest(), end)
    return 0


def stall(a):
    sock, tls, inc, flush = connect(a.port, a.version)
    tls.write(request(a.path, False))
    flush()
    sock.shutdown(socket.SHUT_WR)
    print("stalled", flush=True)
    time.sleep(a.hold)
    return 0


def abandon(a):
    sock, tls, inc, flush = connect(a.port, a.version)
    tls.write(request(a.path, True))
    flush()
    got, _ = read_all(sock, tls, inc, 0, limit=a.after)
    # SO_LINGER 0: close() resets, as a browser cancelling a download does.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    print("abandoned after", len(got))
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["fetch", "stall", "abandon"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--version", choices=["1.2", "1.3"], default="1.3")
    p.add_argument("--pause", type=float, default=0.0, help="request, then close_notify later")
    p.add_argument("--delay", type=float, default=0.3, help="before the first read")
    p.add_argument("--step", type=float, default=0.0, help="sleep before each 16 KiB recv")
    p.add_argument("--keepalive", action="store_true")
    p.add_argument("--hold", type=float, default=10.0)
    p.add_argument("--after", type=int, default=65536)
    a = p.parse_args()
    return {"fetch": fetch, "stall": stall, "abandon": abandon}[a.what](a)


if __name__ == "__main__":
    sys.exit(main())
