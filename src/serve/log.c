/*
 * The access log line. Common Log Format first, so existing tools read it, then what this server
 * adds: TLS version, cipher, who carries the record layer, bytes sent in all, duration, and how
 * the response ended (a download cut short says so, with the bytes that did go out). The
 * request target comes from the client, so anything but printable ASCII is escaped: a log line
 * can never be split or forged.
 */
#include <stdio.h>
#include <string.h>

#include "serve.h"

/* The peer's address without its port: "1.2.3.4:5" -> "1.2.3.4", "[::1]:5" -> "::1". */
static void peer_host(const char *peer, char *out, size_t cap)
{
    const char *colon = strrchr(peer, ':');
    size_t len = colon ? (size_t)(colon - peer) : strlen(peer);
    if (len >= 2 && peer[0] == '[' && peer[len - 1] == ']') {
        peer++;
        len -= 2;
    }
    if (len >= cap)
        len = cap - 1;
    memcpy(out, peer, len);
    out[len] = '\0';
}

size_t log_format(char *buf, size_t cap, const struct log_entry *e)
{
    char host[64], when[40], target[512];
    struct tm tm;
    size_t t = 0;

    peer_host(e->peer, host, sizeof(host));
    localtime_r(&e->when, &tm);
    strftime(when, sizeof(when), "%d/%b/%Y:%H:%M:%S %z", &tm);
    for (size_t i = 0; i < e->target_len && t + 5 < sizeof(target); i++) {
        unsigned char c = (unsigned char)e->target[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            t += (size_t)snprintf(target + t, sizeof(target) - t, "\\x%02x", c);
        else
            target[t++] = (char)c;
    }
    target[t] = '\0';

    const char *end = e->end ? e->end : "ok";
    int n;
    if (e->method)
        n = snprintf(buf, cap, "%s - - [%s] \"%s %s HTTP/%u.%u\" %d %llu %s %s %s %llu %.6f %s\n",
                     host, when, e->method, target, e->major, e->minor, e->status,
                     (unsigned long long)e->body_bytes, e->tls_version, e->cipher, e->mode,
                     (unsigned long long)e->total_bytes, (double)e->duration_ns / 1e9, end);
    else /* no request line could be read: CLF's "-" */
        n = snprintf(buf, cap, "%s - - [%s] \"-\" %d %llu %s %s %s %llu %.6f %s\n", host, when,
                     e->status, (unsigned long long)e->body_bytes, e->tls_version, e->cipher,
                     e->mode, (unsigned long long)e->total_bytes, (double)e->duration_ns / 1e9,
                     end);
    if (n < 0)
        return 0;
    if ((size_t)n >= cap) {
        if (cap == 0)
            return 0;
        buf[cap - 1] = '\n';
        return cap;
    }
    return (size_t)n;
}
