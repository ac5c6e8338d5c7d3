"""Splits what a raw TLS client printed into the HTTP/1.1 responses it received.

usage: httpsplit.py FILE

openssl s_client (-quiet) and gnutls-cli (--logfile) write exactly the bytes the server sent to
standard output; the interoperability suite sends them pipelined GET requests and saves that
output in FILE. This reads FILE as a sequence of responses, each body delimited by its
Content-Length, and prints "body STATUS LENGTH SHA256" for each, in order. Exits 1, saying why on
standard error, if FILE is anything else: a head that does not parse, no Content-Length, a body
cut short (its line is printed first, with the length that arrived) or bytes after the last one.
"""
import hashlib
import re
import sys


def fail(why):
    print(f"httpsplit: {why}", file=sys.stderr)
    sys.exit(1)


with open(sys.argv[1], "rb") as f:
    data = f.read()
pos = 0
while pos < len(data):
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        fail(f"incomplete response head at byte {pos}: {data[pos:pos + 60]!r}")
    lines = data[pos:end].decode("latin-1").split("\r\n")
    status = re.fullmatch(r"HTTP/1\.[01] (\d{3})(?: .*)?", lines[0])
    if not status:
        fail(f"not a status line at byte {pos}: {lines[0][:60]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                fail(f"bad Content-Length {value.strip()!r}")
            length = int(value.strip())
    if length is None:
        fail(f"response at byte {pos} ({lines[0]}) has no Content-Length")
    body = data[end + 4:end + 4 + length]
    print(f"body {status.group(1)} {len(body)} {hashlib.sha256(body).hexdigest()}")
    if len(body) < length:
        fail(f"body cut short: {len(body)} of {length} bytes arrived")
    pos = end + 4 + length
