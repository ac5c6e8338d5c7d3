/*
 * The load generator's worker: one thread, one io_uring, many client connections. Each connection
 * is an OpenSSL client over memory BIOs, so OpenSSL never touches the socket: bytes the ring
 * received go into the read BIO, bytes OpenSSL wrote come out of the write BIO into a send. That
 * keeps thousands of handshakes in flight on one thread without a syscall per TLS step.
 *
 * A connection's life: connect -> handshake -> request -> response -> (next request | close and
 * start over | hold, by mode). A receive is always posted while the connection is open, so the
 * server's bytes (session tickets, responses, close_notify) are taken whenever they come.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/provider.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define RBUF_SIZE (16384 + 64)
#define HDR_MAX 4096
#define SCRATCH_SIZE 65536
#define BACKOFF_NS 10000000 /* after a failed connection, so a dead server is not spun on */

/* Completion kinds, in the low bits of user_data next to the (8-byte aligned) connection. */
enum op { OP_NONE = 0, OP_CONNECT = 1, OP_RECV = 2, OP_SEND = 3, OP_TIMER = 4, OP_MASK = 7 };

enum conn_state {
    C_FREE,       /* no socket */
    C_CONNECTING, /* TCP connect in flight */
    C_HANDSHAKE,
    C_RESPONSE, /* request written, response being read */
    C_IDLE,     /* idle mode: request done, held open */
    C_CLOSING,  /* waiting for its operations in flight to finish, then the socket is closed */
};

struct conn {
    struct worker *w;
    int fd;
    enum conn_state state;
    bool recv_inflight, send_inflight, connect_inflight, timer_inflight;
    SSL *ssl;
    BIO *rbio, *wbio;
    uint8_t *sbuf;
    size_t slen, soff, scap;
    /* the response being read */
    char hdr[HDR_MAX];
    size_t hlen;
    bool in_body, until_close;
    uint64_t body_left, resp_bytes;
    uint64_t t_conn, t_req, t_last; /* ns: connect started, request written, last progress */
    struct __kernel_timespec backoff;
    uint8_t rbuf[RBUF_SIZE];
} __attribute__((aligned(8)));

struct worker {
    pthread_t thread;
    unsigned id;
    struct bench_shared *sh;
    const struct bench_config *cfg;
    struct io_uring ring;
    struct conn *conns;
    unsigned nconns;
    unsigned max_connecting; /* idle mode: connections between connect and their response */
    unsigned connecting, opened;
    bool stopping;
    unsigned live; /* connections not C_FREE */
    SSL_SESSION *ticket;
    OSSL_LIB_CTX *lib; /* the thread's own (see bench_client_ctx) */
    OSSL_PROVIDER *prov;
    SSL_CTX *ssl_ctx;
    char req[16384];
    size_t reqlen;
    struct bench_counts counts;
    uint8_t scratch[SCRATCH_SIZE];
};

static int ex_conn_index = -1;
static pthread_once_t ex_once = PTHREAD_ONCE_INIT;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool measuring(const struct worker *w)
{
    return atomic_load_explicit(&w->sh->phase, memory_order_relaxed) == PHASE_MEASURE;
}

static struct io_uring_sqe *get_sqe(struct worker *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (!sqe) {
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
    }
    return sqe; /* never NULL after a submit: the ring has room for at least one */
}

static void conn_open(struct conn *c);
static void conn_progress(struct conn *c);

/* The first error of each kind is said once, with its detail, so a failing run explains itself
 * instead of only counting. */
static void count_error(struct conn *c, enum bench_err kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void count_error(struct conn *c, enum bench_err kind, const char *fmt, ...)
{
    struct worker *w = c->w;
    if (measuring(w))
        w->counts.errors[kind]++;
    atomic_fetch_add_explicit(&w->sh->progress_errors, 1, memory_order_relaxed);
    int bit = 1 << kind;
    if (!(atomic_fetch_or(&w->sh->first_error_logged, bit) & bit)) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        unsigned long e = ERR_peek_last_error();
        fprintf(stderr, "ktla-bench: first %s error: %s%s%s\n", err_name(kind), msg, e ? ": " : "",
                e ? ERR_reason_error_string(e) : "");
    }
    ERR_clear_error();
}

/* Closes the socket and frees the TLS state once nothing of the connection is in flight, then
 * starts the next connection unless the run is stopping. */
static void conn_maybe_finish(struct conn *c)
{
    struct worker *w = c->w;
    if (c->state != C_CLOSING || c->recv_inflight || c->send_inflight || c->connect_inflight ||
        c->timer_inflight)
        return;
    close(c->fd);
    c->fd = -1;
    SSL_free(c->ssl); /* frees both BIOs too */
    c->ssl = NULL;
    c->state = C_FREE;
    w->live--;
    if (!w->stopping)
        conn_open(c);
}

/* Ends a connection: operations in flight are cancelled, and conn_maybe_finish closes it when
 * their completions are in. `backoff` delays the next connection. */
static void conn_teardown(struct conn *c, bool backoff)
{
    struct worker *w = c->w;
    if (c->state == C_CLOSING || c->state == C_FREE)
        return;
    if (w->cfg->mode == MODE_IDLE) {
        /* The slot is opened again (unless stopping), so it counts as not yet opened. */
        w->opened--;
        if (c->state == C_IDLE)
            atomic_fetch_sub(&w->sh->established, 1);
        else
            w->connecting--;
    }
    c->state = C_CLOSING;
    if (c->recv_inflight || c->send_inflight || c->connect_inflight) {
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, OP_NONE);
    }
    if (backoff && !w->stopping) {
        /* conn_maybe_finish waits for the timer, so the next connect comes after it. */
        c->timer_inflight = true;
        c->backoff = (struct __kernel_timespec){.tv_nsec = BACKOFF_NS};
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_timeout(sqe, &c->backoff, 0, 0);
        io_uring_sqe_set_data64(sqe, (uintptr_t)c | OP_TIMER);
    }
    conn_maybe_finish(c);
}

static void conn_fail(struct conn *c, enum bench_err kind, const char *what)
{
    if (c->state == C_CLOSING)
        return;
    count_error(c, kind, "%s", what);
    conn_teardown(c, true);
}

static void post_recv(struct conn *c)
{
    if (c->recv_inflight || c->state == C_CLOSING)
        return;
    struct io_uring_sqe *sqe = get_sqe(c->w);
    io_uring_prep_recv(sqe, c->fd, c->rbuf, sizeof(c->rbuf), 0);
    io_uring_sqe_set_data64(sqe, (uintptr_t)c | OP_RECV);
    c->recv_inflight = true;
}

/* Moves what OpenSSL wrote into a send; one send at a time, the rest waits in the BIO. */
static void flush(struct conn *c)
{
    if (c->send_inflight || c->state == C_CLOSING)
        return;
    size_t pending = BIO_ctrl_pending(c->wbio);
    if (pending == 0)
        return;
    if (pending > c->scap) {
        uint8_t *p = realloc(c->sbuf, pending);
        if (!p)
            return conn_fail(c, ERR_IO, "out of memory for a send buffer");
        c->sbuf = p;
        c->scap = pending;
    }
    c->slen = (size_t)BIO_read(c->wbio, c->sbuf, (int)pending);
    c->soff = 0;
    struct io_uring_sqe *sqe = get_sqe(c->w);
    io_uring_prep_send(sqe, c->fd, c->sbuf, c->slen, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uintptr_t)c | OP_SEND);
    c->send_inflight = true;
}

static void send_request(struct conn *c)
{
    struct worker *w = c->w;
    c->hlen = 0;
    c->in_body = c->until_close = false;
    c->body_left = c->resp_bytes = 0;
    c->t_req = now_ns();
    c->state = C_RESPONSE;
    if (SSL_write(c->ssl, w->req, (int)w->reqlen) != (int)w->reqlen)
        return conn_fail(c, ERR_TLS, "SSL_write of the request failed");
}

static void on_connected(struct conn *c)
{
    struct worker *w = c->w;
    c->state = C_HANDSHAKE;
    c->ssl = SSL_new(w->ssl_ctx);
    c->rbio = BIO_new_ex(w->lib, BIO_s_mem());
    c->wbio = BIO_new_ex(w->lib, BIO_s_mem());
    if (!c->ssl || !c->rbio || !c->wbio) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        return conn_fail(c, ERR_TLS, "out of memory for a TLS connection");
    }
    /* An empty read BIO means "wait for the next receive", not end of stream. */
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_connect_state(c->ssl);
    SSL_set_ex_data(c->ssl, ex_conn_index, c);
    if (w->cfg->sni)
        SSL_set_tlsext_host_name(c->ssl, w->cfg->sni);
    if (w->cfg->resume && w->ticket) {
        /* OpenSSL's client spends a TLS 1.3 ticket once it resumed with it (marks it not
         * resumable). Browsers do the same and count on the server sending a fresh ticket with
         * every resumption; a copy per connection keeps measuring resumption even against a
         * server that does not, and the run's "resumed" count stays the honest figure. */
        SSL_SESSION *copy = SSL_SESSION_dup(w->ticket);
        if (copy) {
            SSL_set_session(c->ssl, copy);
            SSL_SESSION_free(copy);
        }
    }
    post_recv(c);
    conn_progress(c);
}

static void conn_open(struct conn *c)
{
    struct worker *w = c->w;
    if (w->cfg->mode == MODE_IDLE) {
        if (w->opened >= w->nconns || w->connecting >= w->max_connecting)
            return; /* the next one starts when one of those in flight is done */
        w->opened++;
        w->connecting++;
    }
    c->fd = socket(w->cfg->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    c->state = C_CONNECTING;
    w->live++;
    c->t_conn = c->t_last = now_ns();
    if (c->fd < 0) {
        count_error(c, ERR_CONNECT, "socket: %s", strerror(errno));
        return conn_teardown(c, true);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&w->cfg->addr, w->cfg->addrlen);
    io_uring_sqe_set_data64(sqe, (uintptr_t)c | OP_CONNECT);
    c->connect_inflight = true;
}

/* In idle mode a connection that got its response stays open; the next one may start. */
static void start_more_idle(struct worker *w)
{
    for (unsigned i = 0; i < w->nconns && !w->stopping; i++) {
        if (w->opened >= w->nconns || w->connecting >= w->max_connecting)
            return;
        if (w->conns[i].state == C_FREE)
            conn_open(&w->conns[i]);
    }
}

/* A whole response arrived: count it and go on as the mode says. */
static void on_response(struct conn *c)
{
    struct worker *w = c->w;
    uint64_t t = now_ns();
    atomic_fetch_add_explicit(&w->sh->progress_requests, 1, memory_order_relaxed);
    if (measuring(w)) {
        w->counts.requests++;
        bool per_conn = w->cfg->mode == MODE_HANDSHAKE || w->cfg->mode == MODE_IDLE;
        hist_record(&w->counts.latency, t - (per_conn ? c->t_conn : c->t_req));
        atomic_fetch_add_explicit(&w->sh->measured_requests, 1, memory_order_relaxed);
    }
    switch (w->cfg->mode) {
    case MODE_GET:
    case MODE_DOWNLOAD:
        if (!w->stopping)
            send_request(c);
        break;
    case MODE_IDLE:
        c->state = C_IDLE;
        w->connecting--;
        atomic_fetch_add(&w->sh->established, 1);
        start_more_idle(w);
        break;
    case MODE_HANDSHAKE: {
        /* close_notify goes out at once, beside the ring: it is the last thing this connection
         * sends and nothing waits for it. */
        SSL_shutdown(c->ssl);
        if (!c->send_inflight) {
            int n = BIO_read(c->wbio, w->scratch, sizeof(w->scratch));
            if (n > 0)
                (void)!send(c->fd, w->scratch, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        conn_teardown(c, false);
        break;
    }
    }
}

/* Header names are matched without case, as HTTP says. */
static const char *find_header(const char *hdr, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = strstr(hdr, "\r\n"); p; p = strstr(p + 2, "\r\n"))
        if (!strncasecmp(p + 2, name, n) && p[2 + n] == ':')
            return p + 3 + n;
    return NULL;
}

/* Takes plaintext of the response: 1 when it is complete, 0 for more, -1 on a bad response. */
static int response_feed(struct conn *c, const uint8_t *data, size_t n)
{
    c->resp_bytes += n;
    if (c->w->cfg->echo_bytes) {
        if (c->resp_bytes > c->w->reqlen)
            return count_error(c, ERR_HTTP, "the echo is longer than the request"), -1;
        return c->resp_bytes == c->w->reqlen;
    }
    if (!c->in_body) {
        size_t take = n < HDR_MAX - 1 - c->hlen ? n : HDR_MAX - 1 - c->hlen;
        size_t old = c->hlen;
        memcpy(c->hdr + c->hlen, data, take);
        c->hlen += take;
        c->hdr[c->hlen] = 0;
        char *end = strstr(c->hdr, "\r\n\r\n");
        if (!end) {
            if (c->hlen == HDR_MAX - 1)
                return count_error(c, ERR_HTTP, "response headers longer than %d bytes", HDR_MAX),
                       -1;
            return 0;
        }
        end[2] = 0; /* keep the last header's CRLF for find_header */
        size_t header_len = (size_t)(end + 4 - c->hdr);
        int status = 0;
        if (sscanf(c->hdr, "HTTP/1.%*d %d", &status) != 1 || status != 200)
            return count_error(c, ERR_HTTP, "response status %d for %s (%.60s)", status,
                               c->w->cfg->path, c->hdr),
                   -1;
        const char *cl = find_header(c->hdr, "Content-Length");
        const char *te = find_header(c->hdr, "Transfer-Encoding");
        if (te)
            return count_error(c, ERR_HTTP, "chunked responses are not supported"), -1;
        c->in_body = true;
        c->until_close = !cl;
        c->body_left = cl ? strtoull(cl, NULL, 10) : 0;
        size_t body = n - (header_len - old);
        if (body > c->body_left && !c->until_close)
            return count_error(c, ERR_HTTP, "%zu bytes after the response", body - c->body_left),
                   -1;
        c->body_left -= c->until_close ? 0 : body;
    } else if (!c->until_close) {
        if (n > c->body_left)
            return count_error(c, ERR_HTTP, "%zu bytes after the response", n - c->body_left), -1;
        c->body_left -= n;
    }
    return !c->until_close && c->body_left == 0;
}

static void on_handshake_done(struct conn *c)
{
    struct worker *w = c->w;
    struct bench_shared *sh = w->sh;
    if (measuring(w)) {
        w->counts.handshakes++;
        w->counts.resumed += SSL_session_reused(c->ssl) == 1;
    }
    if (!sh->cipher_seen && w->id == 0) {
        sh->version_seen = SSL_get_version(c->ssl);
        sh->cipher_seen = SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl));
        int nid = SSL_get_negotiated_group(c->ssl);
        sh->group_seen = nid > 0 ? OBJ_nid2sn(nid) : "?";
    }
    send_request(c);
}

/* Runs OpenSSL on whatever arrived, then sends whatever it wrote. */
static void conn_progress(struct conn *c)
{
    struct worker *w = c->w;
    if (c->state == C_HANDSHAKE) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ)
                return conn_fail(c, ERR_TLS, "handshake");
            return flush(c);
        }
        on_handshake_done(c);
    }
    while (c->state == C_RESPONSE || c->state == C_IDLE) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, w->scratch, sizeof(w->scratch));
        if (n > 0) {
            /* Bytes count as they arrive: a download longer than the measured window still
             * gives its rate. */
            if (measuring(w))
                w->counts.bytes += (uint64_t)n;
            if (c->state == C_IDLE)
                return conn_fail(c, ERR_HTTP, "data from the server on an idle connection");
            int done = response_feed(c, w->scratch, (size_t)n);
            if (done < 0)
                return conn_teardown(c, true);
            if (done)
                on_response(c);
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_ZERO_RETURN && c->state == C_RESPONSE && c->until_close) {
            on_response(c);
            if (c->state != C_CLOSING)
                conn_teardown(c, false);
            return;
        }
        if (e == SSL_ERROR_ZERO_RETURN)
            return conn_fail(c, ERR_CLOSED, "the server sent close_notify before the response");
        return conn_fail(c, ERR_TLS, "reading a record");
    }
    flush(c);
}

static void on_recv(struct conn *c, int res)
{
    c->recv_inflight = false;
    if (c->state == C_CLOSING)
        return conn_maybe_finish(c);
    c->t_last = now_ns();
    if (res == 0 && c->state == C_RESPONSE && c->until_close && c->in_body) {
        on_response(c);
        if (c->state != C_CLOSING)
            conn_teardown(c, false);
        return;
    }
    if (res == 0)
        return conn_fail(c, ERR_CLOSED, "the server closed the connection");
    if (res < 0) {
        char what[96];
        snprintf(what, sizeof(what), "recv: %s", strerror(-res));
        return conn_fail(c, ERR_IO, what);
    }
    BIO_write(c->rbio, c->rbuf, res);
    post_recv(c);
    conn_progress(c);
}

static void on_send(struct conn *c, int res)
{
    c->send_inflight = false;
    if (c->state == C_CLOSING)
        return conn_maybe_finish(c);
    if (res <= 0) {
        char what[96];
        snprintf(what, sizeof(what), "send: %s", res ? strerror(-res) : "nothing sent");
        return conn_fail(c, ERR_IO, what);
    }
    c->soff += (size_t)res;
    if (c->soff < c->slen) {
        struct io_uring_sqe *sqe = get_sqe(c->w);
        io_uring_prep_send(sqe, c->fd, c->sbuf + c->soff, c->slen - c->soff, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, (uintptr_t)c | OP_SEND);
        c->send_inflight = true;
        return;
    }
    flush(c);
}

static void on_connect(struct conn *c, int res)
{
    c->connect_inflight = false;
    if (c->state == C_CLOSING)
        return conn_maybe_finish(c);
    if (res < 0) {
        char what[384];
        snprintf(what, sizeof(what), "connect to %s:%u: %s%s", c->w->cfg->host, c->w->cfg->port,
                 strerror(-res),
                 res == -EADDRNOTAVAIL ? " (local ports exhausted: too many in TIME_WAIT?)" : "");
        count_error(c, ERR_CONNECT, "%s", what);
        return conn_teardown(c, true);
    }
    c->t_last = now_ns();
    on_connected(c);
}

static void on_timer(struct conn *c)
{
    c->timer_inflight = false;
    conn_maybe_finish(c);
}

static void handle_cqe(struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    struct conn *c = (struct conn *)(uintptr_t)(ud & ~(uint64_t)OP_MASK);
    switch ((enum op)(ud & OP_MASK)) {
    case OP_CONNECT:
        return on_connect(c, cqe->res);
    case OP_RECV:
        return on_recv(c, cqe->res);
    case OP_SEND:
        return on_send(c, cqe->res);
    case OP_TIMER:
        return on_timer(c);
    default:
        return;
    }
}

/* Connections that made no progress for the configured time are errors, so a stuck server shows
 * up as timeouts instead of a hang. */
static void check_timeouts(struct worker *w, uint64_t now)
{
    uint64_t limit = (uint64_t)w->cfg->timeout_ms * 1000000u;
    for (unsigned i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if ((c->state == C_CONNECTING || c->state == C_HANDSHAKE || c->state == C_RESPONSE) &&
            now - c->t_last > limit)
            conn_fail(c, ERR_TIMEOUT, "no progress within the timeout");
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint64_t last_scan = now_ns();

    for (unsigned i = 0; i < w->nconns; i++)
        conn_open(&w->conns[i]);
    for (;;) {
        if (!w->stopping && atomic_load(&w->sh->phase) == PHASE_STOP) {
            w->stopping = true;
            for (unsigned i = 0; i < w->nconns; i++)
                conn_teardown(&w->conns[i], false);
        }
        if (w->stopping && w->live == 0)
            break;
        struct __kernel_timespec ts = {.tv_nsec = 50000000};
        struct io_uring_cqe *cqe;
        io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
        /* This turn's completions only, so that the stop and the timeouts are looked at even
         * while every answer completes at once. */
        for (unsigned n = io_uring_cq_ready(&w->ring); n && io_uring_peek_cqe(&w->ring, &cqe) == 0;
             n--) {
            struct io_uring_cqe copy = *cqe;
            io_uring_cqe_seen(&w->ring, cqe);
            handle_cqe(&copy);
            /* What a completion queued goes out now, as each of many independent clients would
             * send it. Held to the end of the turn (a turn of several handshake steps lasts a
             * millisecond or more), it made the server wait for the slowest of them and then
             * answer them in a burst: a 2-CPU run of resumed handshakes found ktla-serve idle a
             * quarter of the time and 20% below the rate it reaches with this. */
            if (io_uring_sq_ready(&w->ring))
                io_uring_submit(&w->ring);
        }
        uint64_t now = now_ns();
        if (now - last_scan > 250000000u) {
            check_timeouts(w, now);
            last_scan = now;
        }
    }
    return NULL;
}

/* A new ticket replaces the thread's last one: the next resumed handshake uses the newest. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct conn *c = SSL_get_ex_data(ssl, ex_conn_index);
    if (!c)
        return 0;
    SSL_SESSION_free(c->w->ticket);
    c->w->ticket = sess;
    return 1; /* we keep the reference */
}

static void ex_init(void)
{
    ex_conn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

void loadgen_setup_ctx(SSL_CTX *ctx)
{
    pthread_once(&ex_once, ex_init);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
}

/*
 * After the thread ended (its exit ran OpenSSL's thread-exit handlers for the context) or before
 * it began. This thread drew random numbers from the context when it made the SSL_CTX: freeing
 * the context runs the calling thread's handlers for it, so none is left to use it later.
 */
static void free_lib(struct worker *w)
{
    SSL_CTX_free(w->ssl_ctx);
    w->ssl_ctx = NULL;
    if (w->prov)
        OSSL_PROVIDER_unload(w->prov);
    w->prov = NULL;
    OSSL_LIB_CTX_free(w->lib);
    w->lib = NULL;
}

int worker_start(struct bench_shared *sh, unsigned id, unsigned nconns, unsigned max_connecting,
                 struct worker **out)
{
    const struct bench_config *cfg = sh->cfg;
    struct worker *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->conns = calloc(nconns, sizeof(*w->conns));
    if (!w->conns) {
        free(w);
        return -ENOMEM;
    }
    w->id = id;
    w->sh = sh;
    w->cfg = cfg;
    w->nconns = nconns;
    w->max_connecting = max_connecting ? max_connecting : nconns;
    for (unsigned i = 0; i < nconns; i++) {
        w->conns[i].w = w;
        w->conns[i].fd = -1;
    }
    if (cfg->echo_bytes) {
        w->reqlen = cfg->echo_bytes; /* ktla-bench.c keeps it within sizeof(w->req) */
        memset(w->req, 'e', w->reqlen);
    } else {
        w->reqlen = (size_t)snprintf(
            w->req, sizeof(w->req), "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ktla-bench\r\n\r\n",
            cfg->path, cfg->sni ? cfg->sni : cfg->host);
    }

    /* Every connection has a receive and maybe a send in flight: room for all completions. */
    struct io_uring_params p = {.flags = IORING_SETUP_CQSIZE};
    p.cq_entries = 4 * nconns + 64;
    unsigned entries = 2 * nconns + 16 < 4096 ? 2 * nconns + 16 : 4096;
    int ret = -ENOMEM;
    w->lib = OSSL_LIB_CTX_new();
    if (!w->lib || !(w->prov = OSSL_PROVIDER_load(w->lib, "default")) ||
        !(w->ssl_ctx = bench_client_ctx(cfg, w->lib)))
        goto free_lib;
    ret = io_uring_queue_init_params(entries, &w->ring, &p);
    if (ret < 0)
        goto free_lib;
    ret = -pthread_create(&w->thread, NULL, worker_main, w);
    if (ret < 0)
        goto exit_ring;
    *out = w;
    return 0;

exit_ring:
    io_uring_queue_exit(&w->ring);
free_lib:
    free_lib(w);
    free(w->conns);
    free(w);
    return ret;
}

void worker_join(struct worker *w, struct bench_counts *total)
{
    pthread_join(w->thread, NULL);
    total->requests += w->counts.requests;
    total->handshakes += w->counts.handshakes;
    total->resumed += w->counts.resumed;
    total->bytes += w->counts.bytes;
    for (int k = 0; k < ERR_KINDS; k++)
        total->errors[k] += w->counts.errors[k];
    hist_merge(&total->latency, &w->counts.latency);
    for (unsigned i = 0; i < w->nconns; i++)
        free(w->conns[i].sbuf);
    SSL_SESSION_free(w->ticket);
    free_lib(w);
    io_uring_queue_exit(&w->ring);
    free(w->conns);
    free(w);
}
