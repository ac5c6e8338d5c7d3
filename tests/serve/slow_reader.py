#!/usr/bin/env python3
"""A client that reads a download steadily but slowly: GET PATH, then read at RATE bytes/s with a
16 KiB receive buffer. Prints the bytes received (head included) and the seconds taken.

usage: slow_reader.py PORT PATH RATE"""
import socket
import ssl
import sys
import time

port, path, rate = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sock = socket.socket()
# Before connect, so the window it offers stays small and the server's buffers fill early.
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
sock.settimeout(60)
sock.connect(("127.0.0.1", port))
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
tls = ctx.wrap_socket(sock)
tls.sendall(("GET /%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
got, start = 0, time.monotonic()
while True:
    try:
        data = tls.recv(8192)
    except (ConnectionError, ssl.SSLError):
        break
    if not data:
        break
    got += len(data)
    lag = start + got / rate - time.monotonic()
    if lag > 0:
        time.sleep(lag)
print(got, "%.1f" % (time.monotonic() - start))
