/*
 * --metrics: the workers' figures as Prometheus text (exposition format 0.0.4) on plain HTTP.
 * Like --redirect-http it is kept apart from the workers' rings, on its own thread with poll(2)
 * and bounded in every way a client could stretch it: one request per connection, a head of at
 * most METRICS_HEAD_MAX bytes, METRICS_TIMEOUT_S from accept to answer, METRICS_CONNS_MAX at
 * once. It only reads the workers' counters (metrics.h), so a slow scraper never slows a worker.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ktla.h>

#include "metrics.h"

#define LINGER_MS 2000 /* after the answer, what the client still sends is read for this long */

/* ---- what the workers count */

static const int reason_codes[] = {
#define REASON_CODE(name, value, msg) value,
    KTLA_ERRORS(REASON_CODE)
#undef REASON_CODE
    -ECONNRESET, -EPIPE, -ETIMEDOUT, -ECONNABORTED, -ENOMEM, -ECANCELED, -EIO,
};
#define NREASON_CODES (sizeof(reason_codes) / sizeof(reason_codes[0]))
_Static_assert(NREASON_CODES < METRICS_REASONS, "room for every reason and \"other\"");

unsigned metrics_reason_index(int code)
{
    for (unsigned i = 0; i < NREASON_CODES; i++)
        if (reason_codes[i] == code)
            return i;
    return METRICS_REASONS - 1;
}

static const char *reason_name(unsigned i)
{
    return i < NREASON_CODES ? ktla_err_name(reason_codes[i]) : "other";
}

/* Upper bounds of the duration buckets: from a cached small file to a download cut by the drain
 * (microseconds, and as the le label says them). */
static const uint64_t bucket_us[METRICS_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000, 30000000,
};
static const char *const bucket_le[METRICS_BUCKETS + 1] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25",   "0.5",   "1",      "2.5",   "5",    "10",    "30",   "+Inf",
};

void metrics_response(struct worker_metrics *m, int status, uint64_t duration_ns, uint64_t bytes)
{
    unsigned b = 0;
    while (b < METRICS_BUCKETS && duration_ns > bucket_us[b] * 1000)
        b++;
    metric_add(&m->duration_bucket[b], 1);
    metric_add(&m->duration_ns, duration_ns);
    metric_add(&m->bytes, bytes);
    if (status >= METRICS_STATUS_MIN && status <= METRICS_STATUS_MAX)
        metric_add(&m->status[status - METRICS_STATUS_MIN], 1);
}

/* ---- the exposition */

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

#define EACH_WORKER for (unsigned w = 0; w < n; w++)

char *metrics_format(struct worker_metrics *const *mv, unsigned n, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f)
        return NULL;
    static const char *const mode_names[MODE_COUNT] = {"kernel", "userspace", "kernel-tx",
                                                       "kernel-rx"};

    family(f, "ktla_serve_connections_accepted_total", "counter",
           "TCP connections accepted (before the TLS handshake).");
    EACH_WORKER fprintf(f, "ktla_serve_connections_accepted_total{worker=\"%u\"} %llu\n", w,
                        (unsigned long long)metric_get(&mv[w]->accepted));
    /* Closed first: read in this order, open can never come out negative. */
    family(f, "ktla_serve_connections_open", "gauge",
           "Established connections now, those still shutting down included.");
    EACH_WORKER {
        uint64_t closed = metric_get(&mv[w]->closed);
        fprintf(f, "ktla_serve_connections_open{worker=\"%u\"} %llu\n", w,
                (unsigned long long)(metric_get(&mv[w]->established) - closed));
    }
    family(f, "ktla_serve_connections_closed_total", "counter",
           "Established connections that are gone.");
    EACH_WORKER fprintf(f, "ktla_serve_connections_closed_total{worker=\"%u\"} %llu\n", w,
                        (unsigned long long)metric_get(&mv[w]->closed));
    family(f, "ktla_serve_handshakes_total", "counter",
           "TLS handshakes completed: full, or resumed from a session ticket.");
    EACH_WORKER {
        uint64_t resumed = metric_get(&mv[w]->resumed);
        fprintf(f, "ktla_serve_handshakes_total{worker=\"%u\",kind=\"full\"} %llu\n", w,
                (unsigned long long)(metric_get(&mv[w]->established) - resumed));
        fprintf(f, "ktla_serve_handshakes_total{worker=\"%u\",kind=\"resumed\"} %llu\n", w,
                (unsigned long long)resumed);
    }
    family(f, "ktla_serve_handshake_failures_total", "counter",
           "TLS handshakes that failed, by the ktla code of the failure (reasons seen only).");
    EACH_WORKER for (unsigned r = 0; r < METRICS_REASONS; r++) {
        uint64_t v = metric_get(&mv[w]->failed[r]);
        if (v)
            fprintf(f, "ktla_serve_handshake_failures_total{worker=\"%u\",reason=\"%s\"} %llu\n",
                    w, reason_name(r), (unsigned long long)v);
    }
    family(f, "ktla_serve_connections_tls_total", "counter",
           "Established connections by who carries the record layer: kernel, userspace, or the "
           "kernel one way only.");
    EACH_WORKER for (unsigned i = 0; i < MODE_COUNT; i++)
        fprintf(f, "ktla_serve_connections_tls_total{worker=\"%u\",mode=\"%s\"} %llu\n", w,
                mode_names[i], (unsigned long long)metric_get(&mv[w]->mode[i]));
    family(f, "ktla_serve_ktls_fallbacks_total", "counter",
           "Directions of established connections left in userspace, by the reason kernel TLS "
           "did not take them (reasons seen only).");
    EACH_WORKER for (unsigned d = 0; d < 2; d++) for (unsigned r = 0; r < METRICS_REASONS; r++) {
        uint64_t v = metric_get(&mv[w]->fallback[d][r]);
        if (v)
            fprintf(f,
                    "ktla_serve_ktls_fallbacks_total{worker=\"%u\",direction=\"%s\","
                    "reason=\"%s\"} %llu\n",
                    w, d ? "rx" : "tx", reason_name(r), (unsigned long long)v);
    }
    family(f, "ktla_serve_sent_bytes_total", "counter",
           "Response bytes sent, heads and bodies (what left of responses cut short).");
    EACH_WORKER fprintf(f, "ktla_serve_sent_bytes_total{worker=\"%u\"} %llu\n", w,
                        (unsigned long long)metric_get(&mv[w]->bytes));
    family(f, "ktla_serve_cold_lookups_total", "counter",
           "Request paths not in the kernel's dentry cache, looked up by io_uring rather than "
           "by the worker (a cold directory holds its request, not the worker).");
    EACH_WORKER fprintf(f, "ktla_serve_cold_lookups_total{worker=\"%u\"} %llu\n", w,
                        (unsigned long long)metric_get(&mv[w]->cold_lookups));
    family(f, "ktla_serve_responses_total", "counter",
           "Responses begun, by status code (codes seen only).");
    EACH_WORKER for (int s = METRICS_STATUS_MIN; s <= METRICS_STATUS_MAX; s++) {
        uint64_t v = metric_get(&mv[w]->status[s - METRICS_STATUS_MIN]);
        if (v)
            fprintf(f, "ktla_serve_responses_total{worker=\"%u\",code=\"%d\"} %llu\n", w, s,
                    (unsigned long long)v);
    }
    family(f, "ktla_serve_request_duration_seconds", "histogram",
           "From a request's first byte to its response handed to the socket (or cut).");
    EACH_WORKER {
        /* _count is the +Inf bucket as read, so the two always agree. */
        uint64_t cum = 0;
        for (unsigned b = 0; b <= METRICS_BUCKETS; b++) {
            cum += metric_get(&mv[w]->duration_bucket[b]);
            fprintf(f, "ktla_serve_request_duration_seconds_bucket{worker=\"%u\",le=\"%s\"} %llu\n",
                    w, bucket_le[b], (unsigned long long)cum);
        }
        uint64_t ns = metric_get(&mv[w]->duration_ns);
        fprintf(f, "ktla_serve_request_duration_seconds_sum{worker=\"%u\"} %llu.%09llu\n", w,
                (unsigned long long)(ns / 1000000000u), (unsigned long long)(ns % 1000000000u));
        fprintf(f, "ktla_serve_request_duration_seconds_count{worker=\"%u\"} %llu\n", w,
                (unsigned long long)cum);
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---- the thread */

struct mconn {
    int fd;
    enum { M_READ, M_WRITE, M_LINGER } state;
    uint64_t deadline_ms;
    size_t in_len, out_len, out_off;
    char *out;
    char in[METRICS_HEAD_MAX];
};

struct metrics_server {
    int listen_fd, wake_fd;
    struct worker_metrics *const *metrics;
    unsigned nmetrics;
    pthread_t thread;
    struct mconn *conns[METRICS_CONNS_MAX];
    unsigned nconns;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The whole answer into c->out: a head, and for 200 the figures. -1 when out of memory. */
static int answer(struct metrics_server *s, struct mconn *c, int status, bool head_only)
{
    static const char *const reasons[] = {
        [200] = "OK", [400] = "Bad Request", [404] = "Not Found",
        [405] = "Method Not Allowed", [431] = "Request Header Fields Too Large",
        [500] = "Internal Server Error",
    };
    size_t body_len = 0;
    char *body = NULL, text[64];
    const char *type = "text/plain; charset=utf-8";
    if (status == 200 && !(body = metrics_format(s->metrics, s->nmetrics, &body_len)))
        status = 500;
    if (status == 200) {
        type = "text/plain; version=0.0.4; charset=utf-8";
    } else {
        body_len = (size_t)snprintf(text, sizeof(text), "%d %s\n", status, reasons[status]);
        body = text;
    }
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: ktla-serve\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\n%sConnection: close\r\n\r\n",
                     status, reasons[status], type, body_len,
                     status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (head_only)
        body_len = 0;
    c->out = malloc((size_t)n + body_len);
    if (c->out) {
        memcpy(c->out, head, (size_t)n);
        memcpy(c->out + n, body, body_len);
        c->out_len = (size_t)n + body_len;
    }
    if (body != text)
        free(body);
    return c->out ? 0 : -1;
}

/* The status for a request line "METHOD TARGET HTTP/1.x": only GET and HEAD of /metrics (a
 * query string allowed, as Prometheus may add one) answer with the figures. */
static int route(const char *line, size_t len, bool *head_only)
{
    const char *sp = memchr(line, ' ', len);
    if (!sp)
        return 400;
    const char *target = sp + 1, *sp2 = memchr(target, ' ', len - (size_t)(target - line));
    if (!sp2 || sp2 == target || (size_t)(line + len - sp2) < 9 || memcmp(sp2 + 1, "HTTP/1.", 7))
        return 400;
    size_t mlen = (size_t)(sp - line), tlen = (size_t)(sp2 - target);
    bool get = mlen == 3 && !memcmp(line, "GET", 3);
    *head_only = mlen == 4 && !memcmp(line, "HEAD", 4);
    size_t plen = strcspn(target, "? ");
    if (plen > tlen)
        plen = tlen;
    if (plen != 8 || memcmp(target, "/metrics", 8))
        return 404;
    return get || *head_only ? 200 : 405;
}

static void conn_close(struct metrics_server *s, unsigned i)
{
    close(s->conns[i]->fd);
    free(s->conns[i]->out);
    free(s->conns[i]);
    s->conns[i] = s->conns[--s->nconns];
}

/* 0: keep the connection; -1: close it. */
static int on_readable(struct metrics_server *s, struct mconn *c)
{
    if (c->state == M_LINGER) {
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
    /* The head ends at its blank line; only the request line matters. */
    bool complete = false;
    for (size_t i = 0; i + 1 < c->in_len && !complete; i++)
        complete = c->in[i] == '\n' &&
                   (c->in[i + 1] == '\n' ||
                    (i + 2 < c->in_len && c->in[i + 1] == '\r' && c->in[i + 2] == '\n'));
    int status = 0;
    bool head_only = false;
    if (complete) {
        size_t line = strcspn(c->in, "\r\n"); /* stops at the newline found above at most */
        status = route(c->in, line, &head_only);
    } else if (c->in_len == sizeof(c->in)) {
        status = 431;
    }
    if (!status)
        return 0;
    c->state = M_WRITE;
    return answer(s, c, status, head_only);
}

static int on_writable(struct mconn *c)
{
    ssize_t n =
        send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    c->out_off += (size_t)n;
    if (c->out_off == c->out_len) {
        /* Our FIN, then the client's remaining input read and dropped for a while: closing
         * with unread input would reset the connection, and the answer with it. */
        shutdown(c->fd, SHUT_WR);
        c->state = M_LINGER;
        c->deadline_ms = now_ms() + LINGER_MS;
    }
    return 0;
}

static void accept_some(struct metrics_server *s)
{
    while (s->nconns < METRICS_CONNS_MAX) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or an error of that one connection (ECONNABORTED, EMFILE...) */
        struct mconn *c = malloc(sizeof(*c));
        if (!c) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->state = M_READ;
        c->in_len = c->out_len = c->out_off = 0;
        c->out = NULL;
        c->deadline_ms = now_ms() + METRICS_TIMEOUT_S * 1000;
        s->conns[s->nconns++] = c;
    }
}

static void *metrics_main(void *arg)
{
    struct metrics_server *s = arg;
    struct pollfd pfd[2 + METRICS_CONNS_MAX];

    for (;;) {
        uint64_t now = now_ms();
        int timeout = -1;
        for (unsigned i = 0; i < s->nconns;) {
            if (now >= s->conns[i]->deadline_ms) {
                conn_close(s, i);
                continue;
            }
            uint64_t left = s->conns[i]->deadline_ms - now;
            if (timeout < 0 || left < (uint64_t)timeout)
                timeout = (int)left;
            i++;
        }
        pfd[0] = (struct pollfd){.fd = s->wake_fd, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = s->nconns < METRICS_CONNS_MAX ? s->listen_fd : -1,
                                 .events = POLLIN};
        for (unsigned i = 0; i < s->nconns; i++)
            pfd[2 + i] = (struct pollfd){
                .fd = s->conns[i]->fd,
                .events = s->conns[i]->state == M_WRITE ? POLLOUT : POLLIN,
            };
        int n = poll(pfd, 2 + s->nconns, timeout);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        if (pfd[0].revents)
            break;
        /* Backwards: closing swaps the last connection into the slot, which was done. */
        for (unsigned i = s->nconns; i-- > 0;) {
            struct mconn *c = s->conns[i];
            short ev = pfd[2 + i].revents;
            if (!ev)
                continue;
            int ret;
            if (c->state == M_WRITE)
                ret = ev & (POLLERR | POLLHUP) ? -1 : on_writable(c);
            else
                ret = on_readable(s, c);
            if (ret == 0 && c->state == M_WRITE)
                ret = on_writable(c); /* usually the whole answer goes out at once */
            if (ret < 0)
                conn_close(s, i);
        }
        if (pfd[1].revents)
            accept_some(s);
    }
    while (s->nconns)
        conn_close(s, 0);
    return NULL;
}

int metrics_start(int listen_fd, struct worker_metrics *const *metrics, unsigned n,
                  struct metrics_server **out)
{
    struct metrics_server *s = calloc(1, sizeof(*s));
    int ret;
    if (!s) {
        ret = -ENOMEM;
        goto err_listen;
    }
    s->listen_fd = listen_fd;
    s->metrics = metrics;
    s->nmetrics = n;
    /* A connection that goes away between poll and accept must not block the thread. */
    int fl = fcntl(listen_fd, F_GETFL);
    if (fl < 0 || fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        ret = -errno;
        goto err_free;
    }
    s->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (s->wake_fd < 0) {
        ret = -errno;
        goto err_free;
    }
    ret = -pthread_create(&s->thread, NULL, metrics_main, s);
    if (ret)
        goto err_wake;
    *out = s;
    return 0;

err_wake:
    close(s->wake_fd);
err_free:
    free(s);
err_listen:
    close(listen_fd);
    return ret;
}

void metrics_stop(struct metrics_server *s)
{
    if (!s)
        return;
    (void)!write(s->wake_fd, &(uint64_t){1}, sizeof(uint64_t));
    pthread_join(s->thread, NULL);
    close(s->wake_fd);
    close(s->listen_fd);
    free(s);
}
