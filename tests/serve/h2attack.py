#!/usr/bin/env python3
"""HTTP/2 attacks on ktla-serve, with a small HTTP/2 client of its own.

Used by tests/serve/h2attack.sh; the standard library only. The HTTP/2 framing (RFC 9113) and
HPACK (RFC 7541) are written here: a client framer, an HPACK encoder that writes literals
(without indexing, or with incremental indexing, and indexed references to the dynamic table:
enough for an HPACK bomb; never Huffman), and an HPACK decoder for the server's responses, with
the static and dynamic tables and Huffman decoding (the code table of RFC 7541 Appendix B is
typed in below and checked by `selftest`: a complete canonical prefix code, and the RFC's
examples).

Every scenario is a subcommand that prints result lines for the shell to number:

    ok - WHAT HELD
    not ok - WHAT DID NOT
    #   detail (figures, reasons)

and exits 0. A scenario that crashes prints a traceback and exits non-zero; the shell turns that
into a failure. Times are wall-clock seconds; --slack widens every upper bound, never the lower
ones.

TLS goes through memory BIOs (ssl.SSLObject) over a non-blocking socket this file owns, so a
scenario decides when to read: a flood can be sent without reading a byte of the answers.
"""
import argparse
import hashlib
import os
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time

HOST = "127.0.0.1"
A = None  # the parsed arguments


# ---- output


def result(ok, desc, *details):
    print(("ok - " if ok else "not ok - ") + desc)
    for d in details:
        for line in str(d).splitlines():
            print("#   " + line)
    sys.stdout.flush()


def note(text):
    print("# " + text)
    sys.stdout.flush()


def fmt(seconds):
    return "none" if seconds is None else "%.2f s" % seconds


# ---- HPACK (RFC 7541)

# Appendix B: the code of each symbol 0-255 and EOS (256), as hex code and length in bits.
HUFFMAN_TEXT = """
1ff8:13 7fffd8:23 fffffe2:28 fffffe3:28 fffffe4:28 fffffe5:28 fffffe6:28 fffffe7:28
fffffe8:28 ffffea:24 3ffffffc:30 fffffe9:28 fffffea:28 3ffffffd:30 fffffeb:28 fffffec:28
fffffed:28 fffffee:28 fffffef:28 ffffff0:28 ffffff1:28 ffffff2:28 3ffffffe:30 ffffff3:28
ffffff4:28 ffffff5:28 ffffff6:28 ffffff7:28 ffffff8:28 ffffff9:28 ffffffa:28 ffffffb:28
14:6 3f8:10 3f9:10 ffa:12 1ff9:13 15:6 f8:8 7fa:11
3fa:10 3fb:10 f9:8 7fb:11 fa:8 16:6 17:6 18:6
0:5 1:5 2:5 19:6 1a:6 1b:6 1c:6 1d:6
1e:6 1f:6 5c:7 fb:8 7ffc:15 20:6 ffb:12 3fc:10
1ffa:13 21:6 5d:7 5e:7 5f:7 60:7 61:7 62:7
63:7 64:7 65:7 66:7 67:7 68:7 69:7 6a:7
6b:7 6c:7 6d:7 6e:7 6f:7 70:7 71:7 72:7
fc:8 73:7 fd:8 1ffb:13 7fff0:19 1ffc:13 3ffc:14 22:6
7ffd:15 3:5 23:6 4:5 24:6 5:5 25:6 26:6
27:6 6:5 74:7 75:7 28:6 29:6 2a:6 7:5
2b:6 76:7 2c:6 8:5 9:5 2d:6 77:7 78:7
79:7 7a:7 7b:7 7ffe:15 7fc:11 3ffd:14 1ffd:13 ffffffc:28
fffe6:20 3fffd2:22 fffe7:20 fffe8:20 3fffd3:22 3fffd4:22 3fffd5:22 7fffd9:23
3fffd6:22 7fffda:23 7fffdb:23 7fffdc:23 7fffdd:23 7fffde:23 ffffeb:24 7fffdf:23
ffffec:24 ffffed:24 3fffd7:22 7fffe0:23 ffffee:24 7fffe1:23 7fffe2:23 7fffe3:23
7fffe4:23 1fffdc:21 3fffd8:22 7fffe5:23 3fffd9:22 7fffe6:23 7fffe7:23 ffffef:24
3fffda:22 1fffdd:21 fffe9:20 3fffdb:22 3fffdc:22 7fffe8:23 7fffe9:23 1fffde:21
7fffea:23 3fffdd:22 3fffde:22 fffff0:24 1fffdf:21 3fffdf:22 7fffeb:23 7fffec:23
1fffe0:21 1fffe1:21 3fffe0:22 1fffe2:21 7fffed:23 3fffe1:22 7fffee:23 7fffef:23
fffea:20 3fffe2:22 3fffe3:22 3fffe4:22 7ffff0:23 3fffe5:22 3fffe6:22 7ffff1:23
3ffffe0:26 3ffffe1:26 fffeb:20 7fff1:19 3fffe7:22 7ffff2:23 3fffe8:22 1ffffec:25
3ffffe2:26 3ffffe3:26 3ffffe4:26 7ffffde:27 7ffffdf:27 3ffffe5:26 fffff1:24 1ffffed:25
7fff2:19 1fffe3:21 3ffffe6:26 7ffffe0:27 7ffffe1:27 3ffffe7:26 7ffffe2:27 fffff2:24
1fffe4:21 1fffe5:21 3ffffe8:26 3ffffe9:26 ffffffd:28 7ffffe3:27 7ffffe4:27 7ffffe5:27
fffec:20 fffff3:24 fffed:20 1fffe6:21 3fffe9:22 1fffe7:21 1fffe8:21 7ffff3:23
3fffea:22 3fffeb:22 1ffffee:25 1ffffef:25 fffff4:24 fffff5:24 3ffffea:26 7ffff4:23
3ffffeb:26 7ffffe6:27 3ffffec:26 3ffffed:26 7ffffe7:27 7ffffe8:27 7ffffe9:27 7ffffea:27
7ffffeb:27 ffffffe:28 7ffffec:27 7ffffed:27 7ffffee:27 7ffffef:27 7fffff0:27 3ffffee:26
3fffffff:30
"""
HUFFMAN = [(int(c, 16), int(n)) for c, n in (w.split(":") for w in HUFFMAN_TEXT.split())]
HUFFMAN_DECODE = {(n, c): sym for sym, (c, n) in enumerate(HUFFMAN)}

# Appendix A: the static table, index 1-61 (a name alone has the empty value).
STATIC = [None] + [(e.split("=", 1) + [""])[:2] for e in [
    ":authority", ":method=GET", ":method=POST", ":path=/", ":path=/index.html", ":scheme=http",
    ":scheme=https", ":status=200", ":status=204", ":status=206", ":status=304", ":status=400",
    ":status=404", ":status=500", "accept-charset", "accept-encoding=gzip, deflate",
    "accept-language", "accept-ranges", "accept", "access-control-allow-origin", "age", "allow",
    "authorization", "cache-control", "content-disposition", "content-encoding",
    "content-language", "content-length", "content-location", "content-range", "content-type",
    "cookie", "date", "etag", "expect", "expires", "from", "host", "if-match",
    "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified",
    "link", "location", "max-forwards", "proxy-authenticate", "proxy-authorization", "range",
    "referer", "refresh", "retry-after", "server", "set-cookie", "strict-transport-security",
    "transfer-encoding", "user-agent", "vary", "via", "www-authenticate"]]
STATIC = [None] + [tuple(e) for e in STATIC[1:]]


class HpackError(Exception):
    pass


def huffman_decode(data):
    out = bytearray()
    code = bits = 0
    for byte in data:
        for k in range(7, -1, -1):
            code = code << 1 | (byte >> k & 1)
            bits += 1
            sym = HUFFMAN_DECODE.get((bits, code))
            if sym is not None:
                if sym == 256:
                    raise HpackError("EOS inside a Huffman string")
                out.append(sym)
                code = bits = 0
            elif bits > 30:
                raise HpackError("no Huffman code matches")
    # What is left must be padding: fewer than 8 bits, all ones (a prefix of EOS).
    if bits > 7 or code != (1 << bits) - 1:
        raise HpackError("bad Huffman padding (%d bits: %x)" % (bits, code))
    return bytes(out)


def huffman_encode(data):
    acc = bits = 0
    for byte in data:
        c, n = HUFFMAN[byte]
        acc = acc << n | c
        bits += n
    pad = -bits % 8
    acc = acc << pad | (1 << pad) - 1
    return acc.to_bytes((bits + pad) // 8, "big")


def hp_int(value, prefix, first=0):
    """An HPACK integer with a `prefix`-bit prefix; `first` holds the bits above it."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hp_str(s):
    """A string literal, never Huffman-coded."""
    b = s.encode("latin-1") if isinstance(s, str) else bytes(s)
    return hp_int(len(b), 7) + b


def literal(name, value):
    """Literal header field without indexing, new name (RFC 7541 6.2.2)."""
    return b"\x00" + hp_str(name) + hp_str(value)


def literal_indexed(name, value):
    """Literal header field with incremental indexing, new name (6.2.1): the server's decoder
    adds it to its dynamic table, at index 62 (the newest)."""
    return b"\x40" + hp_str(name) + hp_str(value)


def indexed(index):
    """Indexed header field (6.1): one byte for index < 127."""
    return hp_int(index, 7, 0x80)


def encode_headers(fields):
    return b"".join(literal(n, v) for n, v in fields)


class Decoder:
    """An HPACK decoder; its dynamic table follows the server's encoder across header blocks."""

    def __init__(self, max_size=4096):
        self.dyn = []  # newest first
        self.size = 0
        self.max = self.limit = max_size

    def _int(self, b, i, prefix):
        limit = (1 << prefix) - 1
        v = b[i] & limit
        i += 1
        if v < limit:
            return v, i
        m = 0
        while True:
            if i >= len(b):
                raise HpackError("truncated integer")
            c = b[i]
            i += 1
            v += (c & 0x7F) << m
            m += 7
            if not c & 0x80:
                return v, i
            if m > 28:
                raise HpackError("integer too long")

    def _str(self, b, i):
        if i >= len(b):
            raise HpackError("truncated string")
        huff = b[i] & 0x80
        n, i = self._int(b, i, 7)
        if i + n > len(b):
            raise HpackError("string beyond the block")
        s = b[i:i + n]
        s = huffman_decode(s) if huff else bytes(s)
        return s.decode("latin-1"), i + n

    def _get(self, index):
        if index == 0:
            raise HpackError("index 0")
        if index < len(STATIC):
            return STATIC[index]
        j = index - len(STATIC)
        if j >= len(self.dyn):
            raise HpackError("index %d beyond the dynamic table (%d entries)" % (index, len(self.dyn)))
        return self.dyn[j]

    def _evict(self):
        while self.size > self.max and self.dyn:
            n, v = self.dyn.pop()
            self.size -= 32 + len(n) + len(v)

    def _add(self, name, value):
        self.dyn.insert(0, (name, value))
        self.size += 32 + len(name) + len(value)
        self._evict()

    def decode(self, block):
        out = []
        i = 0
        while i < len(block):
            b = block[i]
            if b & 0x80:
                idx, i = self._int(block, i, 7)
                out.append(self._get(idx))
            elif b & 0x40 or not b & 0x20:
                incremental = bool(b & 0x40)
                idx, i = self._int(block, i, 6 if incremental else 4)
                if idx:
                    name = self._get(idx)[0]
                else:
                    name, i = self._str(block, i)
                value, i = self._str(block, i)
                out.append((name, value))
                if incremental:
                    self._add(name, value)
            else:
                size, i = self._int(block, i, 5)
                if size > self.limit:
                    raise HpackError("table size update %d above %d" % (size, self.limit))
                self.max = size
                self._evict()
        return out


# ---- HTTP/2 frames (RFC 9113)

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
SETTING_NAMES = {1: "HEADER_TABLE_SIZE", 2: "ENABLE_PUSH", 3: "MAX_CONCURRENT_STREAMS",
                 4: "INITIAL_WINDOW_SIZE", 5: "MAX_FRAME_SIZE", 6: "MAX_HEADER_LIST_SIZE",
                 8: "ENABLE_CONNECT_PROTOCOL", 9: "NO_RFC7540_PRIORITIES"}
ERRORS = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
          "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL",
          "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY",
          "HTTP_1_1_REQUIRED"]
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 7, 8, 9, 11
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = (1 << 31) - 1


def err_name(code):
    if code is None:
        return "none"
    return "%s (0x%x)" % (ERRORS[code] if code < len(ERRORS) else "unknown", code)


def frame(typ, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([typ, flags]) + struct.pack(">I", sid) + payload


def settings_frame(pairs=(), ack=False):
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(sid, increment):
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def rst_stream(sid, code):
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def ping_frame(data, ack=False):
    return frame(PING, ACK if ack else 0, 0, data)


def priority_frame(sid, depends_on=0, weight=16, exclusive=False):
    return frame(PRIORITY, 0, sid,
                 struct.pack(">IB", depends_on | (0x80000000 if exclusive else 0), weight - 1))


def goaway_frame(last, code):
    return frame(GOAWAY, 0, 0, struct.pack(">II", last, code))


def header_frames(sid, block, end_stream=True, max_frame=16384):
    """HEADERS, then as many CONTINUATION as the block needs, END_HEADERS on the last."""
    parts = [block[i:i + max_frame] for i in range(0, len(block), max_frame)] or [b""]
    out = []
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        flags = (END_HEADERS if last else 0)
        if k == 0:
            out.append(frame(HEADERS, flags | (END_STREAM if end_stream else 0), sid, part))
        else:
            out.append(frame(CONTINUATION, flags, sid, part))
    return b"".join(out)


def request_fields(path, method="GET", extra=()):
    return [(":method", method), (":scheme", "https"), (":authority", "%s:%d" % (HOST, A.port)),
            (":path", path)] + list(extra)


def request_block(path, method="GET", extra=()):
    return encode_headers(request_fields(path, method, extra))


# ---- an HTTP/2 client connection


class Stream:
    def __init__(self, sid):
        self.sid = sid
        self.status = None     # :status of the response
        self.headers = []      # every header block, decoded, in order
        self.rst = None        # the RST_STREAM error code, if one came
        self.ended = False     # END_STREAM seen
        self.length = 0        # DATA payload bytes (padding excluded)
        self.sha = hashlib.sha256()
        self.body = bytearray()  # kept only when keep_body
        self.keep_body = False
        self.unacked = 0       # flow-controlled bytes not yet given back by WINDOW_UPDATE
        self.opened = time.monotonic()
        self.done_at = None

    def finished(self):
        return self.ended or self.rst is not None


class H2:
    """One HTTP/2 connection over TLS. Frames from the server are parsed as they come, in
    io(); what the server did is in goaways, streams, settings, counts, closed."""

    def __init__(self, port=None, alpn=("h2",), rcvbuf=None, timeout=10.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port or A.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(list(alpn))
        self.inc, self.outg = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.outg, server_side=False)
        self.wbuf = bytearray()  # TLS records not yet sent
        self.rbuf = bytearray()  # plaintext not yet parsed into frames
        self.closed = None       # how the server ended it: eof, close_notify, reset, alert...
        self.closed_at = None
        self.goaways = []        # (last stream id, error code, debug data, time)
        self.streams = {}
        self.settings = {}       # the server's, merged
        self.settings_frames = 0
        self.settings_acks = 0
        self.ping_acks = 0
        self.counts = [0] * 10   # frames received, by type
        self.bytes_in = self.bytes_out = 0
        self.dec = Decoder()
        self.pending_block = None  # (sid, bytearray, end_stream) while a header block continues
        self.auto_ack = True       # answer the server's SETTINGS and PINGs
        self.auto_window = True    # give back what DATA used, connection and stream
        self.conn_unacked = 0
        self.errors = []           # what the framer could not make sense of
        self.next_sid = 1
        self.alpn = None
        self.handshake_done = False

    # -- TLS and the socket

    def handshake(self, limit=10.0):
        end = time.monotonic() + limit
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                raise ConnectionError("TLS handshake: %r" % e) from e
            self.wbuf += self.outg.read()
            if time.monotonic() > end:
                raise TimeoutError("TLS handshake not done in %.0f s" % limit)
            self._io_raw(0.1)
            if self.closed:
                raise ConnectionError("TLS handshake: connection ended (%s)" % self.closed)
        self.wbuf += self.outg.read()
        self.alpn = self.obj.selected_alpn_protocol()
        self.handshake_done = True
        self._decrypt()  # anything that came with the end of the handshake
        return self

    def _end(self, how):
        if self.closed:
            return
        self.closed = how
        self.closed_at = time.monotonic()
        self.wbuf.clear()
        if how.startswith("reset (send") and self.handshake_done:
            # What the server sent before it closed (a GOAWAY, say) may still be waiting.
            self.sock.setblocking(True)
            self.sock.settimeout(0.5)
            data = b""
            try:
                while True:
                    d = self.sock.recv(1 << 18)
                    if not d:
                        break
                    data += d
            except OSError:
                pass
            if data:
                self.bytes_in += len(data)
                self.inc.write(data)
                self.closed = None  # parsed below; the reason stays the reset
                self._decrypt()
                self.closed = how

    def _io_raw(self, timeout, read=True):
        """Waits up to `timeout` s for the socket; sends what it can of wbuf, receives into the
        TLS object. True if something moved."""
        if self.closed:
            return False
        ev = (select.POLLIN if read else 0) | (select.POLLOUT if self.wbuf else 0)
        if not ev:
            time.sleep(max(0.0, timeout))
            return False
        p = select.poll()
        p.register(self.sock, ev)
        got = p.poll(max(0.0, timeout) * 1000)
        if not got:
            return False
        rev = got[0][1]
        if self.wbuf and rev & (select.POLLOUT | select.POLLERR | select.POLLHUP):
            try:
                n = self.sock.send(self.wbuf)
                del self.wbuf[:n]
                self.bytes_out += n
            except BlockingIOError:
                pass
            except OSError as e:
                self._end("reset (send: %s)" % (e.strerror or e))
                return True
        if read and rev & (select.POLLIN | select.POLLERR | select.POLLHUP):
            try:
                data = self.sock.recv(1 << 18)
            except BlockingIOError:
                return True
            except OSError as e:
                self._end("reset (recv: %s)" % (e.strerror or e))
                return True
            self.bytes_in += len(data)
            if data:
                self.inc.write(data)
            else:
                self.inc.write_eof()
            self._decrypt(eof=not data)
        return True

    def _decrypt(self, eof=False):
        if not self.handshake_done:  # handshake() reads the TLS object until then
            if eof:
                self._end("eof during the TLS handshake")
            return
        how = None
        while True:
            try:
                chunk = self.obj.read(1 << 17)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                how = "close_notify"
                break
            except ssl.SSLEOFError:
                how = "eof"
                break
            except ssl.SSLError as e:
                how = "TLS alert or error: %s" % (e.reason or e)
                break
            if not chunk:
                how = "close_notify"
                break
            self.rbuf += chunk
        self.wbuf += self.outg.read()
        self._parse()
        if how:
            self._end(how)
        elif eof:
            self._end("eof")

    # -- frames from the server

    def _parse(self):
        b = self.rbuf
        pos = 0
        while len(b) - pos >= 9:
            length = b[pos] << 16 | b[pos + 1] << 8 | b[pos + 2]
            if len(b) - pos < 9 + length:
                break
            typ, flags = b[pos + 3], b[pos + 4]
            sid = struct.unpack_from(">I", b, pos + 5)[0] & 0x7FFFFFFF
            payload = bytes(b[pos + 9:pos + 9 + length])
            pos += 9 + length
            self._frame(typ, flags, sid, payload)
        if pos:
            del b[:pos]

    def stream(self, sid):
        st = self.streams.get(sid)
        if st is None:
            st = self.streams[sid] = Stream(sid)
        return st

    def _strip_padding(self, flags, payload):
        if flags & PADDED:
            pad = payload[0]
            return payload[1:len(payload) - pad]
        return payload

    def _frame(self, typ, flags, sid, payload):
        if typ < 10:
            self.counts[typ] += 1
        if typ == DATA:
            st = self.stream(sid)
            data = self._strip_padding(flags, payload)
            st.length += len(data)
            st.sha.update(data)
            if st.keep_body:
                st.body += data
            st.unacked += len(payload)
            self.conn_unacked += len(payload)
            if flags & END_STREAM:
                st.ended = True
                st.done_at = time.monotonic()
            if self.auto_window:
                out = b""
                if self.conn_unacked >= 1 << 18:
                    out += window_update(0, self.conn_unacked)
                    self.conn_unacked = 0
                if st.unacked >= 1 << 18 and not st.ended:
                    out += window_update(sid, st.unacked)
                    st.unacked = 0
                if out:
                    self.queue(out)
        elif typ in (HEADERS, PUSH_PROMISE):
            if typ == PUSH_PROMISE:
                self.errors.append("PUSH_PROMISE on stream %d" % sid)
            body = self._strip_padding(flags, payload)
            if typ == HEADERS and flags & PRIORITY_FLAG:
                body = body[5:]
            elif typ == PUSH_PROMISE:
                body = body[4:]
            self.pending_block = (sid, bytearray(body), bool(flags & END_STREAM), typ)
            if flags & END_HEADERS:
                self._block_done()
        elif typ == CONTINUATION:
            if not self.pending_block or self.pending_block[0] != sid:
                self.errors.append("CONTINUATION on stream %d without a HEADERS" % sid)
                return
            self.pending_block[1].extend(payload)
            if flags & END_HEADERS:
                self._block_done()
        elif typ == RST_STREAM:
            st = self.stream(sid)
            st.rst = struct.unpack(">I", payload[:4])[0] if len(payload) >= 4 else -1
            st.done_at = st.done_at or time.monotonic()
        elif typ == SETTINGS:
            if flags & ACK:
                self.settings_acks += 1
            else:
                self.settings_frames += 1
                for k in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack_from(">HI", payload, k)
                    self.settings[key] = value
                if self.auto_ack:
                    self.queue(settings_frame(ack=True))
        elif typ == PING:
            if flags & ACK:
                self.ping_acks += 1
            elif self.auto_ack:
                self.queue(ping_frame(payload, ack=True))
        elif typ == GOAWAY:
            last, code = struct.unpack(">II", payload[:8]) if len(payload) >= 8 else (-1, -1)
            self.goaways.append((last & 0x7FFFFFFF, code, payload[8:], time.monotonic()))

    def _block_done(self):
        sid, block, end_stream, typ = self.pending_block
        self.pending_block = None
        try:
            fields = self.dec.decode(bytes(block))
        except HpackError as e:
            self.errors.append("HPACK on stream %d: %s" % (sid, e))
            return
        if typ == PUSH_PROMISE:
            return
        st = self.stream(sid)
        st.headers.append(fields)
        for n, v in fields:
            if n == ":status" and st.status is None:
                st.status = int(v)
        if end_stream:
            st.ended = True
            st.done_at = time.monotonic()

    # -- sending

    def queue(self, data):
        """Encrypts `data` (frames) for sending; io() sends it."""
        if self.closed:
            return
        self.obj.write(data)
        self.wbuf += self.outg.read()

    def send(self, data):
        """Queues, then sends what the socket takes now (reading what came, too)."""
        self.queue(data)
        self._io_raw(0)

    def io(self, timeout=0.1, read=True):
        return self._io_raw(timeout, read)

    def until(self, cond, limit, tick=None):
        """Runs the connection until cond() holds (True), it ends or `limit` s pass (cond())."""
        end = time.monotonic() + limit
        while not cond():
            if self.closed:
                return cond()
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._io_raw(min(left, 0.05))
            if tick:
                tick()
        return True

    def flush(self, limit=10.0, read=True):
        """Sends everything queued: True if it all went within `limit` s."""
        return self.until(lambda: not self.wbuf, limit) if read else self._flush_noread(limit)

    def _flush_noread(self, limit):
        end = time.monotonic() + limit
        while self.wbuf and not self.closed and time.monotonic() < end:
            self._io_raw(min(0.05, end - time.monotonic()), read=False)
        return not self.wbuf

    def wait_closed(self, limit):
        return self.until(lambda: self.closed is not None, limit)

    # -- the client's side of HTTP/2

    def start(self, settings=((ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, 1 << 24)),
              conn_window=MAX_WINDOW, wait_settings=True, extra=b""):
        """The preface and our SETTINGS (and a connection WINDOW_UPDATE up to conn_window);
        then waits for the server's SETTINGS."""
        out = PREFACE + settings_frame(settings)
        if conn_window > 65535:
            out += window_update(0, conn_window - 65535)
        self.send(out + extra)
        if wait_settings and not self.until(lambda: self.settings_frames > 0, 10):
            raise ConnectionError("no SETTINGS from the server (connection %s, ALPN %r)"
                                  % (self.closed or "open", self.alpn))
        return self

    def new_sid(self):
        sid = self.next_sid
        self.next_sid += 2
        return sid

    def request(self, path, method="GET", extra=(), send=True, keep_body=False):
        sid = self.new_sid()
        st = self.stream(sid)
        st.keep_body = keep_body
        data = header_frames(sid, request_block(path, method, extra))
        if send:
            self.send(data)
        return st

    def goaway_code(self):
        return self.goaways[-1][1] if self.goaways else None

    def describe(self):
        g = ", ".join("GOAWAY %s last stream %d%s" % (err_name(c), last, (" %r" % d[:80]) if d else "")
                      for last, c, d, _ in self.goaways) or "no GOAWAY"
        return "%s; connection %s" % (g, ("ended: " + self.closed) if self.closed else "open")

    def close(self):
        try:
            if not self.closed:
                self.queue(goaway_frame(0, NO_ERROR))
                try:
                    self.obj.unwrap()
                except ssl.SSLError:
                    pass
                self.wbuf += self.outg.read()
                self._flush_noread(1.0)
        except (OSError, ValueError):
            pass
        self.sock.close()


# ---- helpers


def file_sha(name):
    with open(os.path.join(A.root, name), "rb") as f:
        data = f.read()
    return hashlib.sha256(data).hexdigest(), len(data)


def get(path, port=None, limit=30.0, extra=()):
    """A whole new HTTP/2 connection for one GET: (status, length, sha256, seconds, error)."""
    start = time.monotonic()
    c = None
    try:
        c = H2(port).handshake()
        if c.alpn != "h2":
            return None, 0, None, time.monotonic() - start, "ALPN %r, not h2" % c.alpn
        c.start()
        st = c.request(path, extra=extra)
        c.until(st.finished, limit)
        err = None
        if not st.ended:
            err = "stream %s: %s" % ("reset " + err_name(st.rst) if st.rst is not None else
                                     "not finished", c.describe())
        return st.status, st.length, st.sha.hexdigest(), time.monotonic() - start, err
    except Exception as e:
        return None, 0, None, time.monotonic() - start, repr(e)
    finally:
        if c:
            c.close()


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssWatch:
    """Samples the server's VmRSS every 20 ms from start to stop: the peak over the start."""

    def __init__(self, pid):
        self.pid = pid
        self.before = self.peak = rss_kib(pid)
        self.stopping = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopping:
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)

    def stop(self):
        self.stopping = True
        self.t.join()
        self.peak = max(self.peak, rss_kib(self.pid))
        return (self.peak - self.before) // 1024  # MiB

    def check(self, what):
        grown = self.stop()
        result(grown <= A.rss_mb, "%s: the server's VmRSS grew by at most %d MiB during it "
               "(%d KiB before, peak %d KiB: +%d MiB)"
               % (what, A.rss_mb, self.before, self.peak, grown))


class Bystander:
    """A well-behaved client that fetches /small.txt on its own connection while an attack runs,
    after `delay` s."""

    def __init__(self, delay=0.3):
        self.res = None
        self.t = threading.Thread(target=self._run, args=(delay,), daemon=True)
        self.t.start()

    def _run(self, delay):
        time.sleep(delay)
        self.res = get("/small.txt", limit=20)

    def check(self, what):
        self.t.join(30)
        status, _, _, took, err = self.res or (None, 0, None, None, "no result")
        limit = 5 + A.slack
        result(status == 200 and took is not None and took <= limit,
               "%s: meanwhile a normal client on another connection got /small.txt (%s in %s; "
               "limit %.0f s)" % (what, status, fmt(took), limit), *([err] if err else []))


def flood(c, data, limit, chunk=1 << 16, read=False):
    """Sends `data` in pieces without reading (unless `read`), for at most `limit` s, or until
    the connection ends, or nothing could be sent for 3 s (the server stopped reading).
    Returns (bytes of `data` handed to TLS, why it stopped)."""
    end = time.monotonic() + limit
    pos = 0
    last_move = time.monotonic()
    while pos < len(data):
        if c.closed:
            return pos, "the connection ended"
        now = time.monotonic()
        if now > end:
            return pos, "time (%.0f s) ran out" % limit
        if len(c.wbuf) < 1 << 18:
            c.queue(data[pos:pos + chunk])
            pos = min(len(data), pos + chunk)
        before = len(c.wbuf)
        c.io(0.05, read=read)
        if len(c.wbuf) < before or not c.wbuf:
            last_move = time.monotonic()
        elif time.monotonic() - last_move > 3:
            return pos, "the server stopped reading (nothing sent for 3 s)"
    c.flush(max(0.0, end - time.monotonic()), read=read)
    return pos, "all sent" if not c.wbuf else "all queued, %d bytes not yet sent" % len(c.wbuf)


# ---- scenarios


def cmd_selftest():
    """The typed-in Huffman table is a complete prefix code, canonical (RFC 7541's is), and
    gives the RFC's examples (C.4, C.6); the decoder reads C.4.1-C.4.3 and keeps its table."""
    kraft = sum(2 ** (30 - n) for _, n in HUFFMAN)
    canonical = True
    order = sorted(range(257), key=lambda s: (HUFFMAN[s][1], s))
    code, prev = -1, 0
    for s in order:
        c, n = HUFFMAN[s]
        code = (code + 1) << (n - prev) if code >= 0 else 0
        prev = n
        canonical &= c == code
    vectors = {
        b"www.example.com": "f1e3c2e5f23a6ba0ab90f4ff",
        b"no-cache": "a8eb10649cbf",
        b"custom-key": "25a849e95ba97d7f",
        b"custom-value": "25a849e95bb8e8b4bf",
        b"302": "6402",
        b"private": "aec3771a4b",
        b"Mon, 21 Oct 2013 20:13:21 GMT": "d07abe941054d444a8200595040b8166e082a62d1bff",
        b"https://www.example.com": "9d29ad171863c78f0b97c8e9ae82ae43d3",
    }
    bad = [k for k, v in vectors.items() if huffman_encode(k).hex() != v
           or huffman_decode(bytes.fromhex(v)) != k]
    every = bytes(range(256))
    roundtrip = huffman_decode(huffman_encode(every)) == every
    result(len(HUFFMAN) == 257 and kraft == 2 ** 30 and canonical and not bad and roundtrip,
           "HPACK Huffman table: 257 codes, a complete canonical prefix code, the RFC 7541 "
           "examples encode and decode, every byte round-trips",
           *(["Kraft sum %r / 2^30" % kraft] * (kraft != 2 ** 30) + ["not canonical"] * (not canonical)
             + ["vector %r" % b for b in bad]))
    # C.4: three requests with Huffman coding, one decoder.
    d = Decoder()
    blocks = ["828684418cf1e3c2e5f23a6ba0ab90f4ff",
              "828684be5886a8eb10649cbf",
              "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]
    want = [[(":method", "GET"), (":scheme", "http"), (":path", "/"),
             (":authority", "www.example.com")],
            [(":method", "GET"), (":scheme", "http"), (":path", "/"),
             (":authority", "www.example.com"), ("cache-control", "no-cache")],
            [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"),
             (":authority", "www.example.com"), ("custom-key", "custom-value")]]
    got = []
    try:
        got = [d.decode(bytes.fromhex(b)) for b in blocks]
    except HpackError as e:
        got = [repr(e)]
    result(got == want and d.size == 164,
           "HPACK decoder: RFC 7541 C.4.1-C.4.3 (Huffman, dynamic table of %d bytes, 164 expected)"
           % d.size, *([repr(got)] if got != want else []))
    # Our encoder's output, read back by our decoder (and the indexed references).
    e = encode_headers(request_fields("/x")) + literal_indexed("x-bomb", "b" * 10) + indexed(62) * 3
    out = Decoder().decode(e)
    result(out[-4:] == [("x-bomb", "b" * 10)] * 4 and out[3] == (":path", "/x"),
           "HPACK encoder: literals and indexed references read back")


def cmd_basic():
    """HTTP/2 works at all: ALPN, the server's SETTINGS, GET/HEAD/404/206 and PING, and
    http/1.1 still offered."""
    with open(os.path.join(A.root, "small.txt"), "rb") as f:
        want_small = f.read()
    want_mib, mib_len = file_sha("mib.bin")
    c = H2(alpn=("h2", "http/1.1")).handshake()
    result(c.alpn == "h2", "ALPN: offered h2 and http/1.1, the server chose %r" % c.alpn)
    if c.alpn != "h2":
        c.close()
        return
    c.start()
    s = c.settings
    shown = ", ".join("%s=%d" % (SETTING_NAMES.get(k, k), v) for k, v in sorted(s.items()))
    result(s.get(MAX_CONCURRENT_STREAMS) == 100 and s.get(MAX_HEADER_LIST_SIZE) == 16384
           and s.get(INITIAL_WINDOW_SIZE, 65535) >= 65535 and s.get(ENABLE_PUSH, 0) == 0,
           "the server's SETTINGS: MAX_CONCURRENT_STREAMS 100, MAX_HEADER_LIST_SIZE 16384, "
           "INITIAL_WINDOW_SIZE >= 65535, no push (%s)" % shown)
    small = c.request("/small.txt", keep_body=True)
    mib = c.request("/mib.bin")
    head = c.request("/small.txt", method="HEAD")
    missing = c.request("/no-such-file")
    ranged = c.request("/mib.bin", extra=[("range", "bytes=100-199")], keep_body=True)
    c.send(ping_frame(b"h2attack"))
    everything = [small, mib, head, missing, ranged]
    c.until(lambda: all(x.finished() for x in everything) and c.ping_acks and c.settings_acks, 30)
    result(c.settings_acks >= 1, "the server acknowledged our SETTINGS")
    result(small.status == 200 and bytes(small.body) == want_small,
           "GET /small.txt: %s, %d bytes (%d expected)" % (small.status, small.length, len(want_small)))
    result(mib.status == 200 and mib.length == mib_len and mib.sha.hexdigest() == want_mib,
           "GET /mib.bin on the same connection: %s, %d bytes, SHA-256 %s"
           % (mib.status, mib.length, "right" if mib.sha.hexdigest() == want_mib else "wrong"))
    cl = dict(head.headers[0]).get("content-length") if head.headers else None
    result(head.status == 200 and head.length == 0 and head.ended and cl == str(len(want_small)),
           "HEAD /small.txt: %s, content-length %s, %d body bytes" % (head.status, cl, head.length))
    result(missing.status == 404, "GET /no-such-file: %s" % missing.status)
    with open(os.path.join(A.root, "mib.bin"), "rb") as f:
        want_range = f.read()[100:200]
    result(ranged.status == 206 and bytes(ranged.body) == want_range,
           "GET /mib.bin with Range bytes=100-199: %s, %d bytes" % (ranged.status, ranged.length))
    result(c.ping_acks == 1, "PING answered with an ACK (%d)" % c.ping_acks)
    result(not c.errors and not c.goaways and not c.closed,
           "the connection is still open and every frame made sense (%s)" % c.describe(),
           *c.errors[:5])
    c.close()
    # HTTP/1.1 is still served to a client that offers only that.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((HOST, A.port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as t:
            t.sendall(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            resp = b""
            while True:
                d = t.recv(65536)
                if not d:
                    break
                resp += d
            alpn = t.selected_alpn_protocol()
    result(alpn == "http/1.1" and resp.startswith(b"HTTP/1.1 200") and resp.endswith(want_small),
           "ALPN http/1.1 alone: chosen (%r) and a GET answered %r" % (alpn, resp[:15]))


def cmd_warmup():
    """Normal traffic before the baselines: HTTP/2 connections with many requests each, and
    HTTP/1.1 ones, so that the allocator's pools reach their working size first."""
    want, size = file_sha(A.file)
    errs = []

    def one(i):
        try:
            c = H2().handshake()
            c.start()
            streams = [c.request("/" + A.file)] + [c.request("/small.txt") for _ in range(20)]
            streams += [c.request("/mib.bin") for _ in range(4)]
            c.until(lambda: all(s.finished() for s in streams), 60)
            if streams[0].sha.hexdigest() != want or any(s.status != 200 or not s.ended
                                                         for s in streams):
                errs.append("connection %d: %s" % (i, [(s.status, s.rst) for s in streams][:5]))
            c.close()
        except Exception as e:
            errs.append(repr(e))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(A.count)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    result(not errs, "warm-up: %d HTTP/2 connections of 25 requests each (%s, mib.bin, small.txt)"
           % (A.count, A.file), *errs[:5])


def cmd_get():
    """One normal request on a new connection (the check after each attack)."""
    want, size = file_sha(A.file)
    status, n, sha, took, err = get("/" + A.file, limit=30)
    result(status == 200 and n == size and sha == want,
           "%s: a new HTTP/2 connection gets /%s: %s, %d bytes, SHA-256 %s, %s"
           % (A.label, A.file, status, n, "right" if sha == want else "wrong", fmt(took)),
           *([err] if err else []))


def cmd_rapid_reset():
    """CVE-2023-44487: HEADERS (GET of a big file, END_STREAM) and RST_STREAM at once, over and
    over."""
    n = A.count
    watch = RssWatch(A.pid)
    by = Bystander()
    c = H2().handshake()
    c.start()
    block = request_block("/" + A.file)
    t0 = time.monotonic()
    sent = 0
    batch = 100
    while sent < n and not c.closed and time.monotonic() - t0 < 10:
        out = []
        for k in range(sent, min(n, sent + batch)):
            sid = 1 + 2 * k
            out.append(frame(HEADERS, END_STREAM | END_HEADERS, sid, block))
            out.append(rst_stream(sid, CANCEL))
        sent = min(n, sent + batch)
        c.queue(b"".join(out))
        c.io(0)
        if len(c.wbuf) > 1 << 20:
            c.flush(max(0.0, 10 - (time.monotonic() - t0)))
    sent_when_closed = sent
    c.wait_closed(max(0.0, 10 + A.slack - (time.monotonic() - t0)))
    took = (c.closed_at or time.monotonic()) - t0
    code = c.goaway_code()
    last = max((g[0] for g in c.goaways), default=None)
    processed = (last + 1) // 2 if last is not None else None
    answered = sum(1 for st in c.streams.values() if st.status is not None)
    data = sum(st.length for st in c.streams.values())
    note("rapid reset: %d HEADERS + RST_STREAM pairs sent (%d when the end was seen); %s; "
         "%d responses begun, %d DATA bytes, in %.2f s"
         % (sent, sent_when_closed, c.describe(), answered, data, took))
    result(code in (ENHANCE_YOUR_CALM, INTERNAL_ERROR),
           "rapid reset: GOAWAY ENHANCE_YOUR_CALM (or INTERNAL_ERROR, nghttp2's own limiter): "
           "came %s%s" % (err_name(code), " (nghttp2's limiter, not the server's own)"
                          if code == INTERNAL_ERROR else ""))
    result(c.closed is not None and took <= 10 + A.slack,
           "rapid reset: the connection was closed within %.0f s (%s after the first stream)"
           % (10 + A.slack, fmt(took)))
    result(processed is not None and processed <= A.max_streams and answered <= A.max_streams,
           "rapid reset: ended after at most %d streams, not thousands (%s by the GOAWAY's last "
           "stream id %s; %d responses begun)" % (A.max_streams, processed, last, answered))
    c.close()
    by.check("rapid reset")
    watch.check("rapid reset")


def continuation_payload(k, size):
    """Literal header fields worth `size` bytes, for CONTINUATION number k."""
    out = b""
    i = 0
    while len(out) < size - 40:
        value = "c" * min(900, size - 40 - len(out))
        out += literal("x-flood-%d-%d" % (k, i), value)
        i += 1
    return out


def cmd_continuation():
    """The 2024 CONTINUATION flood: HEADERS without END_HEADERS, then CONTINUATION frames without
    end, each carrying header fields."""
    n, size = A.count, 4096
    watch = RssWatch(A.pid)
    by = Bystander()
    c = H2().handshake()
    c.start()
    pieces = [frame(HEADERS, END_STREAM, 1, request_block("/small.txt"))]
    pieces += [frame(CONTINUATION, 0, 1, continuation_payload(k, size)) for k in range(n)]
    data = b"".join(pieces)
    t0 = time.monotonic()
    pos, why = flood(c, data, 10, read=True)
    c.wait_closed(max(0.0, 10 + A.slack - (time.monotonic() - t0)))
    took = (c.closed_at or time.monotonic()) - t0
    frames_sent, acc = 0, 0  # whole frames handed to TLS, HEADERS included
    for p in pieces:
        if acc + len(p) > pos:
            break
        acc += len(p)
        frames_sent += 1
    note("CONTINUATION flood: %d of %d CONTINUATIONs (%d KiB) handed over (%s); %s; %s"
         % (max(0, frames_sent - 1), n, pos >> 10, why, c.describe(),
            "the stream got %s" % (err_name(c.streams[1].rst) if 1 in c.streams and
                                   c.streams[1].rst is not None else "no RST_STREAM")))
    result(c.closed is not None and took <= 10 + A.slack,
           "CONTINUATION flood: the connection was ended within %.0f s (%s: %s)"
           % (10 + A.slack, fmt(took), c.describe()))
    result(c.closed is not None and pos < len(data),
           "CONTINUATION flood: ended after a bounded number of frames, not all %d (%d KiB) "
           "taken (%d were handed over before the end)" % (n, len(data) >> 10, max(0, frames_sent - 1)))
    st = c.streams.get(1)
    result(not st or st.status is None or st.status >= 400,
           "CONTINUATION flood: the request was never answered 2xx (%s)" % (st and st.status))
    c.close()
    by.check("CONTINUATION flood")
    watch.check("CONTINUATION flood")


def cmd_hpack_bomb():
    """One 4000-byte header put in the server's dynamic table, then referenced by index
    (1 byte each) `count` times in the same header block: some 64 MB once decoded."""
    n = A.count
    watch = RssWatch(A.pid)
    c = H2().handshake()
    c.start()
    name, value = "x-bomb", "b" * 4000
    block = request_block("/small.txt") + literal_indexed(name, value) + indexed(62) * n
    t0 = time.monotonic()
    c.send(header_frames(1, block))
    c.flush(10)
    st = c.stream(1)
    c.until(st.finished, 10)
    took = time.monotonic() - t0
    code = c.goaway_code()
    good_end = st.status == 431 or st.rst is not None or \
        code in (COMPRESSION_ERROR, ENHANCE_YOUR_CALM, PROTOCOL_ERROR)
    note("HPACK bomb: %d references to a %d-byte entry (%d MB decoded) in a %d KiB block: "
         "stream %s, %s, after %.2f s" % (n, 32 + len(name) + len(value),
                                          n * (len(name) + len(value)) >> 20, len(block) >> 10,
                                          "status %s" % st.status if st.status else
                                          "RST_STREAM %s" % err_name(st.rst) if st.rst is not None
                                          else "no answer", c.describe(), took))
    result(good_end, "HPACK bomb: the stream is refused (431 or RST_STREAM) or the connection "
           "ended with GOAWAY COMPRESSION_ERROR, ENHANCE_YOUR_CALM or PROTOCOL_ERROR (status %s, "
           "RST_STREAM %s, %s)" % (st.status, err_name(st.rst), c.describe()))
    c.close()
    watch.check("HPACK bomb")


def cmd_big_headers():
    """A plain header list over 16 KiB, all literals (HEADERS + CONTINUATION): 431 or
    RST_STREAM, and the connection goes on."""
    c = H2().handshake()
    c.start()
    extra = [("x-big-%02d" % i, "h" * 1000) for i in range(20)]
    size = sum(32 + len(k) + len(v) for k, v in request_fields("/small.txt", extra=extra))
    st = c.request("/small.txt", extra=extra)
    c.until(st.finished, 10)
    result(st.status == 431 or (st.status is None and st.rst is not None),
           "a %d-byte header list (MAX_HEADER_LIST_SIZE 16384): 431 or RST_STREAM (status %s, "
           "RST_STREAM %s; %s)" % (size, st.status, err_name(st.rst), c.describe()))
    after = c.request("/small.txt")
    c.until(after.finished, 10)
    result(after.status == 200 and after.ended and not c.goaways,
           "after it, stream %d on the same connection gets 200 (%s; %s)"
           % (after.sid, after.status, c.describe()))
    c.close()


def cmd_flood():
    """SETTINGS, PING or PRIORITY frames by the thousand, the answers never read: the server
    must end the connection, in bounded time and memory."""
    kind, n = A.kind, A.count
    watch = RssWatch(A.pid)
    by = Bystander()
    c = H2(rcvbuf=4096).handshake()
    c.start()  # the server's SETTINGS acknowledged, as a client must: then nothing more
    c.flush(5)
    c.auto_ack = False
    if kind == "settings":
        one = settings_frame([(ENABLE_PUSH, 0)])
        data = one * n
    elif kind == "ping":
        data = b"".join(ping_frame(struct.pack(">Q", i)) for i in range(n))
    else:
        data = b"".join(priority_frame(1 + 2 * (i % 100000), depends_on=0, weight=1 + i % 256)
                        for i in range(n))
    size = len(data) // n
    t0 = time.monotonic()
    pos, why = flood(c, data, 10, read=False)
    sent_frames = pos // size
    unsent = len(c.wbuf)
    t_sent = time.monotonic() - t0
    # Now read: the acknowledgements that queued up, and the GOAWAY or the end.
    c.wait_closed(max(1.0, 15 + A.slack - (time.monotonic() - t0)))
    took = (c.closed_at or time.monotonic()) - t0
    acks = c.settings_acks if kind == "settings" else c.ping_acks if kind == "ping" else 0
    note("%s flood: %d of %d frames handed over in %.3f s (%s; %d bytes never left); then %s; "
         "%d ACKs read" % (kind.upper(), sent_frames, n, t_sent, why, unsent, c.describe(), acks))
    code = c.goaway_code()
    result(c.closed is not None and took <= 15 + A.slack,
           "%s flood: the connection was ended within %.0f s (%s; GOAWAY %s, ENHANCE_YOUR_CALM "
           "expected)" % (kind.upper(), 15 + A.slack, fmt(took), err_name(code)))
    c.close()
    by.check("%s flood" % kind.upper())
    watch.check("%s flood" % kind.upper())


def cmd_zero_window():
    """SETTINGS_INITIAL_WINDOW_SIZE 0 and never a WINDOW_UPDATE, for a 10 MiB file: the server
    goes on serving others at full speed and ends the stalled connection at its idle timeout."""
    want, size = file_sha(A.file)
    status, n, sha, base, err = get("/" + A.file)
    result(status == 200 and sha == want,
           "a %d MiB download alone first: %s in %s" % (size >> 20, status, fmt(base)),
           *([err] if err else []))
    c = H2().handshake()
    c.auto_window = False
    t0 = time.monotonic()
    c.start(settings=[(ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, 0)], conn_window=65535)
    st = c.request("/" + A.file)
    c.until(lambda: st.status is not None or st.finished(), 5)
    t_req = time.monotonic()
    result(st.status == 200 and st.length == 0,
           "zero window: the response's HEADERS came (%s), no DATA (%d bytes)" % (st.status, st.length))
    # The other client, while this one is stalled; keep servicing this connection meanwhile.
    res = {}
    th = threading.Thread(target=lambda: res.update(r=get("/" + A.file)))
    th.start()
    while th.is_alive():
        c.io(0.05)
    th.join()
    status, n, sha, took, err = res["r"]
    limit = max(2 * base, base + 1.0) + A.slack
    result(status == 200 and sha == want and took <= limit,
           "zero window: meanwhile another connection downloads %d MiB at full speed (%s in %s; "
           "alone %s; limit %.2f s)" % (size >> 20, status, fmt(took), fmt(base), limit),
           *([err] if err else []))
    lo, hi = A.idle - 0.5, A.idle + 3 + A.slack
    c.wait_closed(hi + 1 - (time.monotonic() - t_req))
    took = (c.closed_at - t_req) if c.closed else None
    result(c.closed is not None and lo <= took <= hi and st.length == 0,
           "zero window: the server ended the stalled connection at its %d s idle timeout (%s "
           "after the request; window %.1f-%.0f s; %s; %d DATA bytes)"
           % (A.idle, fmt(took), lo, hi, c.describe(), st.length))
    c.close()
    note("zero window: stalled connection opened %.2f s before the request" % (t_req - t0))


def cmd_streams():
    """150 requests at once with windows of 0: streams beyond MAX_CONCURRENT_STREAMS (100) are
    refused, the connection survives, and the first 100 complete once the window opens."""
    n = A.count
    want, size = file_sha(A.file)
    c = H2().handshake()
    c.auto_ack = False  # the server's SETTINGS are acknowledged later: see below
    c.auto_window = False
    # Preface, SETTINGS and all the requests in one write, before the server's SETTINGS are
    # acknowledged: a client may open streams before it knows the limit, and a server refuses
    # the excess with REFUSED_STREAM (once acknowledged, exceeding it is a protocol error).
    reqs = b""
    sids = []
    for _ in range(n):
        sid = c.new_sid()
        sids.append(sid)
        c.stream(sid)
        reqs += header_frames(sid, request_block("/" + A.file))
    c.start(settings=[(ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, 0)], conn_window=65535,
            wait_settings=False, extra=reqs)
    streams = [c.streams[s] for s in sids]
    c.until(lambda: all(s.status is not None or s.rst is not None for s in streams), 10)
    answered = [s for s in streams if s.status == 200]
    refused = [s for s in streams if s.rst is not None]
    codes = sorted(set(err_name(s.rst) for s in refused))
    silent = [s.sid for s in streams if s.status is None and s.rst is None]
    result(len(answered) == 100 and len(refused) == n - 100 and
           {s.sid for s in answered} == set(sids[:100]) and
           all(s.rst in (REFUSED_STREAM, PROTOCOL_ERROR) for s in refused),
           "%d streams at once: the first 100 answered 200 (%d), the %d beyond refused with "
           "REFUSED_STREAM or PROTOCOL_ERROR (%d: %s)" % (n, len(answered), n - 100, len(refused),
                                                         ", ".join(codes) or "none"),
           *(["no answer on streams %s" % silent[:10]] * bool(silent)))
    result(not c.goaways and not c.closed, "%d streams at once: the connection survives (%s)"
           % (n, c.describe()))
    # Open the windows: the answered streams must now complete.
    c.auto_window = True
    c.send(settings_frame(ack=True) + settings_frame([(INITIAL_WINDOW_SIZE, 1 << 24)]) +
           window_update(0, MAX_WINDOW - 65535))
    t0 = time.monotonic()
    c.until(lambda: all(s.finished() for s in answered), 60 + A.slack)
    whole = [s for s in answered if s.ended and s.length == size and s.sha.hexdigest() == want]
    result(answered and len(whole) == len(answered),
           "once the window opens, the %d answered streams complete with every byte (%d of them "
           "right, in %s; %s)" % (len(answered), len(whole), fmt(time.monotonic() - t0), c.describe()))
    c.close()


def cmd_goaway():
    """SIGTERM during a paced 10 MiB download on stream 1: GOAWAY NO_ERROR with last stream 1,
    a stream opened after it is not served, stream 1 finishes whole."""
    want, size = file_sha(A.file)
    c = H2().handshake()
    c.auto_window = False
    c.start(settings=[(ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, 65535)], conn_window=65535)
    st = c.request("/" + A.file)
    # The window lets A.rate bytes a second through until the final GOAWAY, and never the last
    # 512 KiB before it (so stream 1 is still open when it comes, however long the server waits
    # after its first notice); once stream 3 is sent, as fast as the server goes.
    t0 = time.monotonic()
    granted = [65535]
    fast = [False]

    def pace():
        if st.finished():
            return
        allowed = size if fast[0] else min(65535 + A.rate * (time.monotonic() - t0), size - (1 << 19))
        if granted[0] - st.length < 1 << 19 or fast[0]:
            inc = int(min(allowed, st.length + (1 << 20)) - granted[0])
            if inc >= 16384 or (fast[0] and inc > 0):
                c.send(window_update(0, inc) + window_update(st.sid, inc))
                granted[0] += inc

    c.until(lambda: st.length >= 1 << 20 or st.finished(), 10, tick=pace)
    progressed = st.length
    t_term = time.monotonic()
    os.kill(A.pid, signal.SIGTERM)
    c.until(lambda: any(g[0] != MAX_WINDOW for g in c.goaways), 5 + A.slack, tick=pace)
    final = [g for g in c.goaways if g[0] != MAX_WINDOW]
    t_goaway = final[0][3] - t_term if final else None
    result(final and final[0][1] == NO_ERROR and final[0][0] == 1 and not st.finished(),
           "SIGTERM with stream 1 at %d of %d KiB: GOAWAY NO_ERROR with last stream 1 (%s after "
           "the signal, stream 1 then at %d KiB; %s)"
           % (progressed >> 10, size >> 10, fmt(t_goaway), st.length >> 10, c.describe()))
    late = c.request("/small.txt")
    fast[0] = True
    c.until(st.finished, 30 + A.slack, tick=pace)
    # Whatever the server would do with stream 3 has been done by the time stream 1 ends.
    c.until(lambda: late.finished() or c.closed, 1)
    result(late.status is None and (late.rst is None or late.rst == REFUSED_STREAM) and st.ended,
           "stream %d opened after the GOAWAY: not served while stream 1 went on (status %s, "
           "RST_STREAM %s; stream 1 %s)" % (late.sid, late.status, err_name(late.rst),
                                          "finished" if st.ended else "did not finish"))
    result(st.status == 200 and st.ended and st.length == size and st.sha.hexdigest() == want,
           "stream 1 finished after the GOAWAY with every byte: %s, %d of %d bytes, SHA-256 %s, "
           "%s after the signal" % (st.status, st.length, size,
                                    "right" if st.sha.hexdigest() == want else "wrong",
                                    fmt((st.done_at or time.monotonic()) - t_term)))
    c.wait_closed(5 + A.slack)
    note("after stream 1: %s" % c.describe())
    c.close()


def main():
    global A
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("scenario", help="one, or several separated by commas (run in turn)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--root", default=".")
    p.add_argument("--file", default="big.bin")
    p.add_argument("--pid", type=int, default=0, help="the server's process id")
    p.add_argument("--idle", type=int, default=2, help="the server's --idle-timeout")
    p.add_argument("--slack", type=float, default=0.0)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--kind", default="ping", help="flood: settings, ping or priority")
    p.add_argument("--max-streams", type=int, default=1100,
                   help="rapid-reset: the most streams the server may take before it ends it")
    p.add_argument("--rss-mb", type=int, default=20, help="the most VmRSS may grow in an attack")
    p.add_argument("--rate", type=int, default=4 << 20, help="goaway: bytes per second let through")
    p.add_argument("--label", default="after")
    A = p.parse_args()
    names = A.scenario.split(",")
    fns = [globals().get("cmd_" + n.replace("-", "_")) for n in names]
    if not all(fns):
        p.error("unknown scenario in " + A.scenario)
    for name, fn in zip(names, fns):
        start = time.monotonic()
        fn()
        if len(names) > 1:
            note("%s: %.1f s" % (name, time.monotonic() - start))


if __name__ == "__main__":
    main()
