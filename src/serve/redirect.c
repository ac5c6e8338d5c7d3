/*
 * --redirect-http: the plain-HTTP port of an HTTPS server. Browsers try http:// first for an
 * address typed without a scheme; here each such request gets a 301 to the same path over https
 * and the connection closes. It carries no content, so it is kept small and on its own thread
 * with poll(2), apart from the workers' rings: one request per connection, a bounded head, a
 * deadline from accept to answer, a bounded number of connections at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "redirect.h"

#define LINGER_MS 2000 /* after the answer, what the client still sends is read for this long */

struct rconn {
    int fd;
    enum { R_READ, R_WRITE, R_LINGER } state;
    uint64_t deadline_ms;
    size_t in_len, out_len, out_off;
    char in[REDIRECT_HEAD_MAX];
    char out[REDIRECT_HEAD_MAX + 512];
};

struct redirect {
    int listen_fd, wake_fd;
    unsigned https_port;
    pthread_t thread;
    struct rconn *conns[REDIRECT_CONNS_MAX];
    unsigned nconns;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- the answer, from the head alone */

static size_t respond(char *out, size_t cap, int status, const char *location)
{
    static const char text[] = "This is the plain-HTTP port of an HTTPS server: use https://.\n";
    int n;
    if (status == 301)
        n = snprintf(out, cap,
                     "HTTP/1.1 301 Moved Permanently\r\nServer: ktla-serve\r\nLocation: %s\r\n"
                     "Content-Length: 0\r\nConnection: close\r\n\r\n",
                     location);
    else
        n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\nServer: ktla-serve\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, status == 431 ? "Request Header Fields Too Large" : "Bad Request",
                     sizeof(text) - 1, text);
    return n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
}

static bool is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A Host value or absolute-form authority without its port, checked so that nothing but a name
 * or an address ends up in Location: letters, digits, '-', '.', '_', or [an IPv6 address]. Returns
 * the host's length, 0 when it is not one. */
static size_t host_part(const char *h, size_t len)
{
    size_t n;
    if (len && h[0] == '[') {
        n = 1 + strspn(h + 1, "0123456789abcdefABCDEF:.");
        if (n >= len || h[n] != ']')
            return 0;
        n++;
    } else {
        n = strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._");
        if (n > len)
            n = len;
    }
    if (n == 0 || n > 255)
        return 0;
    /* What follows is a port or nothing. */
    if (n < len && (h[n] != ':' || strspn(h + n + 1, "0123456789") != len - n - 1))
        return 0;
    return n;
}

size_t redirect_answer(const char *head, size_t len, unsigned https_port, char *out, size_t cap,
                       int *status)
{
    const char *end = head + len, *p = head, *host = NULL, *path;
    size_t host_len = 0, path_len;
    int hosts = 0;
    bool absolute = false;

    *status = 400;
    /* Request line: method SP target SP HTTP/1.x */
    while (p < end && is_tchar(*p))
        p++;
    if (p == head || p >= end || *p++ != ' ')
        return respond(out, cap, 400, NULL);
    path = p;
    while (p<end && * p> ' ' && *p < 0x7f)
        p++;
    path_len = (size_t)(p - path);
    if (path_len == 0 || p >= end || *p++ != ' ' || end - p < 8 || memcmp(p, "HTTP/1.", 7) ||
        p[7] < '0' || p[7] > '9')
        return respond(out, cap, 400, NULL);
    p += 8;
    if (p < end && *p == '\r')
        p++;
    if (p >= end || *p++ != '\n')
        return respond(out, cap, 400, NULL);
    /* Absolute form (RFC 9112 3.2.2): the authority in it is the host. */
    if (path_len > 7 && !strncasecmp(path, "http://", 7)) {
        host = path + 7;
        const char *slash = memchr(host, '/', path_len - 7);
        host_len = slash ? (size_t)(slash - host) : path_len - 7;
        path = slash ? slash : "/";
        path_len = slash ? path_len - 7 - host_len : 1;
        absolute = true; /* RFC 9112 3.2.2: then Host is ignored */
    } else if (path[0] != '/') {
        return respond(out, cap, 400, NULL);
    }
    /* Fields: only Host matters; each line must still look like a field. */
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            return respond(out, cap, 400, NULL);
        size_t l = (size_t)(eol - p);
        if (l && p[l - 1] == '\r')
            l--;
        if (l == 0)
            break; /* the blank line */
        const char *colon = memchr(p, ':', l);
        if (!colon || colon == p)
            return respond(out, cap, 400, NULL);
        for (const char *c = p; c < colon; c++)
            if (!is_tchar(*c))
                return respond(out, cap, 400, NULL);
        if (colon - p == 4 && !strncasecmp(p, "host", 4)) {
            const char *v = colon + 1, *ve = p + l;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            if (!absolute) {
                host = v;
                host_len = (size_t)(ve - v);
            }
            hosts++;
        }
        p = eol + 1;
    }
    size_t hl = host ? host_part(host, host_len) : 0;
    if ((!absolute && hosts != 1) || hl == 0)
        return respond(out, cap, 400, NULL); /* nowhere to send the client */
    char location[REDIRECT_HEAD_MAX + 300], port[16] = "";
    if (https_port != 443)
        snprintf(port, sizeof(port), ":%u", https_port);
    int n = snprintf(location, sizeof(location), "https://%.*s%s%.*s", (int)hl, host, port,
                     (int)path_len, path);
    if (n < 0 || (size_t)n >= sizeof(location))
        return respond(out, cap, 400, NULL);
    *status = 301;
    return respond(out, cap, 301, location);
}

/* ---- the thread */

static void conn_close(struct redirect *r, unsigned i)
{
    close(r->conns[i]->fd);
    free(r->conns[i]);
    r->conns[i] = r->conns[--r->nconns];
}

/* The head is complete when it has its blank line ("\r\n\r\n", or bare "\n\n"). */
static bool head_complete(const struct rconn *c, size_t *head_len)
{
    for (size_t i = 0; i < c->in_len; i++) {
        if (c->in[i] != '\n')
            continue;
        if (i + 1 < c->in_len && c->in[i + 1] == '\n') {
            *head_len = i + 2;
            return true;
        }
        if (i + 2 < c->in_len && c->in[i + 1] == '\r' && c->in[i + 2] == '\n') {
            *head_len = i + 3;
            return true;
        }
    }
    return false;
}

/* 0: keep the connection; -1: close it. */
static int on_readable(struct redirect *r, struct rconn *c)
{
    if (c->state == R_LINGER) {
        char sink[4096];
        ssize_t n = recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT);
        return n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)) ? 0 : -1;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (n == 0)
        return -1; /* gone before a whole head */
    c->in_len += (size_t)n;
    size_t head_len;
    int status;
    if (head_complete(c, &head_len)) {
        c->out_len =
            redirect_answer(c->in, head_len, r->https_port, c->out, sizeof(c->out), &status);
        c->state = R_WRITE;
    } else if (c->in_len == sizeof(c->in)) {
        c->out_len = respond(c->out, sizeof(c->out), 431, NULL);
        c->state = R_WRITE;
    }
    return 0;
}

static int on_writable(struct rconn *c)
{
    ssize_t n =
        send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    c->out_off += (size_t)n;
    if (c->out_off == c->out_len) {
        /* Our FIN, then whatever the client still sends is read and dropped for a while:
         * closing with unread input would reset the connection, and the answer with it. */
        shutdown(c->fd, SHUT_WR);
        c->state = R_LINGER;
        c->deadline_ms = now_ms() + LINGER_MS;
    }
    return 0;
}

static void accept_some(struct redirect *r)
{
    while (r->nconns < REDIRECT_CONNS_MAX) {
        int fd = accept4(r->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or an error of that one connection (ECONNABORTED, EMFILE...) */
        struct rconn *c = malloc(sizeof(*c));
        if (!c) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->state = R_READ;
        c->in_len = c->out_len = c->out_off = 0;
        c->deadline_ms = now_ms() + REDIRECT_TIMEOUT_S * 1000;
        r->conns[r->nconns++] = c;
    }
}

static void *redirect_main(void *arg)
{
    struct redirect *r = arg;
    struct pollfd pfd[2 + REDIRECT_CONNS_MAX];

    for (;;) {
        uint64_t now = now_ms();
        int timeout = -1;
        /* Past their deadline: closed without a word (a client that sends nothing gets
         * nothing; one that stopped reading gets no more). */
        for (unsigned i = 0; i < r->nconns;) {
            if (now >= r->conns[i]->deadline_ms) {
                conn_close(r, i);
                continue;
            }
            uint64_t left = r->conns[i]->deadline_ms - now;
            if (timeout < 0 || left < (uint64_t)timeout)
                timeout = (int)left;
            i++;
        }
        pfd[0] = (struct pollfd){.fd = r->wake_fd, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = r->nconns < REDIRECT_CONNS_MAX ? r->listen_fd : -1,
                                 .events = POLLIN};
        for (unsigned i = 0; i < r->nconns; i++)
            pfd[2 + i] = (struct pollfd){
                .fd = r->conns[i]->fd,
                .events = r->conns[i]->state == R_WRITE ? POLLOUT : POLLIN,
            };
        int n = poll(pfd, 2 + r->nconns, timeout);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        if (pfd[0].revents)
            break;
        /* Backwards: closing swaps the last connection into the slot, which was done. */
        for (unsigned i = r->nconns; i-- > 0;) {
            struct rconn *c = r->conns[i];
            short ev = pfd[2 + i].revents;
            if (!ev)
                continue;
            int ret = 0;
            if (c->state == R_WRITE)
                ret = ev & (POLLERR | POLLHUP) ? -1 : on_writable(c);
            else
                ret = on_readable(r, c);
            if (ret == 0 && c->state == R_WRITE)
                ret = on_writable(c); /* usually the whole answer goes out at once */
            if (ret < 0)
                conn_close(r, i);
        }
        if (pfd[1].revents)
            accept_some(r);
    }
    while (r->nconns)
        conn_close(r, 0);
    return NULL;
}

int redirect_start(int listen_fd, unsigned https_port, struct redirect **out)
{
    struct redirect *r = calloc(1, sizeof(*r));
    int ret;
    if (!r) {
        ret = -ENOMEM;
        goto err_listen;
    }
    r->listen_fd = listen_fd;
    r->https_port = https_port;
    /* A connection that goes away between poll and accept must not block the thread. */
    int fl = fcntl(listen_fd, F_GETFL);
    if (fl < 0 || fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        ret = -errno;
        goto err_free;
    }
    r->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (r->wake_fd < 0) {
        ret = -errno;
        goto err_free;
    }
    ret = -pthread_create(&r->thread, NULL, redirect_main, r);
    if (ret)
        goto err_wake;
    *out = r;
    return 0;

err_wake:
    close(r->wake_fd);
err_free:
    free(r);
err_listen:
    close(listen_fd);
    return ret;
}

void redirect_stop(struct redirect *r)
{
    if (!r)
        return;
    (void)!write(r->wake_fd, &(uint64_t){1}, sizeof(uint64_t));
    pthread_join(r->thread, NULL);
    close(r->wake_fd);
    close(r->listen_fd);
    free(r);
}
