#include "echo.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <liburing.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>

#include "context.h"
#include "ktls.h"
#include "memtls.h"
#include "testutil.h"

#define MAX_CONNS 4096

struct echo_server {
    struct echo_opts opts;
    struct ktla_ctx *ctx;
    struct ktla_acceptor *acc, *acc2; /* acc2: second_acceptor */
    int lfd, lfd2, file_fd;
    uint16_t port2;
    bool acc2_gone;
    size_t file_extra;
    bool ready_first;
    uint16_t port;
    pthread_t thread;
    volatile bool stop;
    pthread_mutex_t lock;
    struct echo_conn conns[MAX_CONNS];
    int nconns, nended, nfail, last_fail;
    struct ktla_conn *live[MAX_CONNS]; /* open on the server side, closed by echo_stop */
    struct ktla_acceptor_stats stats;
    struct io_uring ring; /* with shared_ring */
    int app_own, app_foreign;
    struct echo_life life;
    bool in_close, in_free;
};

/* The application's own timeout: an even user_data, as the library asks. */
static struct __kernel_timespec app_tick = {.tv_nsec = 5000000};
static uint64_t app_tag;

static void *shared_ring_main(struct echo_server *s)
{
    struct io_uring_cqe *cqe;
    bool armed = false;
    while (!s->stop) {
        if (!armed) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
            io_uring_prep_timeout(sqe, &app_tick, 0, 0);
            io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&app_tag);
            armed = true;
        }
        io_uring_submit_and_wait(&s->ring, 1);
        while (io_uring_peek_cqe(&s->ring, &cqe) == 0) {
            struct io_uring_cqe copy = *cqe;
            io_uring_cqe_seen(&s->ring, cqe);
            if (ktla_dispatch(&copy))
                continue;
            pthread_mutex_lock(&s->lock);
            if (copy.user_data == (uint64_t)(uintptr_t)&app_tag) {
                s->app_own++;
                armed = false;
            } else {
                s->app_foreign++;
            }
            pthread_mutex_unlock(&s->lock);
        }
        pthread_mutex_lock(&s->lock);
        ktla_acceptor_get_stats(s->acc, &s->stats);
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

void echo_app_completions(struct echo_server *s, int *own, int *foreign)
{
    pthread_mutex_lock(&s->lock);
    *own = s->app_own;
    *foreign = s->app_foreign;
    pthread_mutex_unlock(&s->lock);
}

struct echo_state {
    struct echo_server *srv;
    int idx;
    uint8_t buf[16384];
    bool closing;
    bool sending;            /* recv_during_file: a FILE send in progress */
    bool recv_ended;         /* ...and the receive beside it ended, with this result */
    ssize_t recv_result;
    uint8_t side[16384];
};

/* The state (and the receive buffer in it) goes when ktla says nothing of the connection is in
 * flight any more: the end-of-life callback, which must come from the ring. */
static void on_gone(struct ktla_conn *conn, int result, void *arg)
{
    struct echo_state *st = arg;
    struct echo_server *s = st->srv;
    (void)conn;
    s->life.gone++;
    s->life.gone_inside += s->in_close;
    s->life.gone_result += result != -ECANCELED;
    free(st);
}

static void echo_close(struct echo_server *s, struct ktla_conn *conn, struct echo_state *st)
{
    s->life.closed++;
    s->in_close = true;
    ktla_conn_close_then(conn, on_gone, st);
    s->in_close = false;
}

static void echo_end(struct ktla_conn *conn, struct echo_state *st, ssize_t result)
{
    struct echo_server *s = st->srv;
    pthread_mutex_lock(&s->lock);
    s->live[st->idx] = NULL;
    s->conns[st->idx].last_result = result;
    s->conns[st->idx].key_updates_rx = ktla_conn_get_info(conn)->key_updates_rx;
    s->conns[st->idx].key_updates_tx = ktla_conn_get_info(conn)->key_updates_tx;
    s->conns[st->idx].bytes_sent = ktla_conn_get_info(conn)->bytes_sent;
    s->conns[st->idx].cold_sends = ktla_conn_get_info(conn)->cold_sends;
    s->conns[st->idx].ended = true;
    s->nended++;
    pthread_mutex_unlock(&s->lock);
    echo_close(s, conn, st);
}

static void on_recv(struct ktla_conn *conn, ssize_t n, void *arg);

static void on_shut(struct ktla_conn *conn, int result, void *arg)
{
    struct echo_state *st = arg;
    struct echo_server *s = st->srv;
    pthread_mutex_lock(&s->lock);
    s->live[st->idx] = NULL;
    s->conns[st->idx].last_result = 0;
    s->conns[st->idx].bytes_sent = ktla_conn_get_info(conn)->bytes_sent;
    s->conns[st->idx].cold_sends = ktla_conn_get_info(conn)->cold_sends;
    s->conns[st->idx].shut = true;
    s->conns[st->idx].close_result = result;
    s->conns[st->idx].ended = true;
    s->nended++;
    pthread_mutex_unlock(&s->lock);
    free(st);
}

static void on_ready(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct echo_state *st = arg;
    if (n != 1) /* anything but "ready" ends it, and the test sees the value */
        return echo_end(conn, st, n < 0 ? n : -1000 - n);
    int ret = ktla_conn_recv(conn, st->buf, sizeof(st->buf), on_recv, st);
    if (ret < 0)
        echo_end(conn, st, ret);
}

/* The next receive: straight away, or after ktla_conn_recv_ready with ready_first, which also
 * trims the connection each time it waits (an application would wait until it is idle): every
 * following receive and send must then work from fresh buffers and memory BIOs. */
static void next_recv(struct ktla_conn *conn, struct echo_state *st)
{
    int ret = 0;
    if (st->srv->ready_first) {
        ret = ktla_conn_recv_ready(conn, on_ready, st);
        ktla_conn_trim(conn);
    } else {
        ret = ktla_conn_recv(conn, st->buf, sizeof(st->buf), on_recv, st);
    }
    if (ret < 0)
        echo_end(conn, st, ret);
}

static void on_file_sent(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct echo_state *st = arg;
    struct echo_server *s = st->srv;
    if (n < 0 || s->opts.file_end == ECHO_END_CLOSE)
        return echo_end(conn, st, n < 0 ? n : 0);
    /* Held in the live list until its callback: echo_stop must not close it meanwhile. */
    int ret = ktla_conn_shutdown(conn, 5000, on_shut, st);
    if (ret < 0)
        echo_end(conn, st, ret);
}

static void on_sent(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct echo_state *st = arg;
    if (st->sending) { /* recv_during_file: the receive beside the send goes on */
        st->sending = false;
        if (n < 0)
            return echo_end(conn, st, n);
        if (st->recv_ended)
            return echo_end(conn, st, st->recv_result);
        return;
    }
    if (n < 0)
        return echo_end(conn, st, n);
    next_recv(conn, st);
}

/* recv_during_file: what arrives while the file goes out is counted; the end of the stream ends
 * the connection once the send is over. */
static void on_side_recv(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct echo_state *st = arg;
    if (n > 0) {
        pthread_mutex_lock(&st->srv->lock);
        st->srv->conns[st->idx].read_during_file += (uint64_t)n;
        pthread_mutex_unlock(&st->srv->lock);
        int ret = ktla_conn_recv(conn, st->side, sizeof(st->side), on_side_recv, st);
        if (ret >= 0)
            return;
        n = ret;
    }
    if (!st->sending)
        return echo_end(conn, st, n);
    st->recv_ended = true;
    st->recv_result = n;
}

static void on_recv(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct echo_state *st = arg;
    int ret;
    if (n == 0 && st->srv->opts.shutdown_at_close_notify) {
        /* Held in the live list until its callback: echo_stop must not close it meanwhile. */
        ret = ktla_conn_shutdown(conn, 5000, on_shut, st);
        if (ret < 0)
            echo_end(conn, st, ret);
        return;
    }
    if (n <= 0)
        return echo_end(conn, st, n);
    if (st->srv->file_fd >= 0 && n >= 4 && memcmp(st->buf, "FILE", 4) == 0) {
        struct stat sb;
        fstat(st->srv->file_fd, &sb);
        ktla_io_cb done = st->srv->opts.file_end ? on_file_sent : on_sent;
        size_t count = (size_t)sb.st_size + st->srv->file_extra;
        const char *head = st->srv->opts.file_head;
        if (head)
            ret = ktla_conn_sendfile_head(conn, head, strlen(head), st->srv->file_fd, 0, count,
                                          done, st);
        else
            ret = ktla_conn_sendfile(conn, st->srv->file_fd, 0, count, done, st);
        if (ret == 0 && st->srv->opts.recv_during_file) {
            st->sending = true;
            ret = ktla_conn_recv(conn, st->side, sizeof(st->side), on_side_recv, st);
            if (ret < 0)
                st->sending = false; /* ends it now; the send's completion still comes */
        }
    } else {
        ret = ktla_conn_send(conn, st->buf, (size_t)n, on_sent, st);
    }
    if (ret < 0)
        echo_end(conn, st, ret);
}

static void on_conn(struct ktla_conn *conn, void *arg)
{
    struct echo_server *s = arg;
    const struct ktla_conn_info *info = ktla_conn_get_info(conn);
    struct echo_state *st = calloc(1, sizeof(*st));
    uint16_t v;
    enum ktla_cipher c;

    pthread_mutex_lock(&s->lock);
    int idx = s->nconns < MAX_CONNS ? s->nconns++ : MAX_CONNS - 1;
    struct echo_conn *ec = &s->conns[idx];
    memset(ec, 0, sizeof(*ec));
    ec->info = *info;
    snprintf(ec->cipher_name, sizeof(ec->cipher_name), "%s", info->cipher_name);
    ec->info.cipher_name = ec->cipher_name;
    ec->info.alpn = ec->info.sni = NULL;
    ec->readback_tx = ktla_ktls_get(info->fd, KTLA_DIR_TX, &v, &c, &ec->readback_tx_seq);
    ec->readback_rx = ktla_ktls_get(info->fd, KTLA_DIR_RX, &v, &c, &ec->readback_rx_seq);
    s->live[idx] = conn;
    pthread_mutex_unlock(&s->lock);

    st->srv = s;
    st->idx = idx;
    ktla_conn_set_data(conn, st);
    next_recv(conn, st);
}

static void on_fail(const char *peer, int code, const char *detail, void *arg)
{
    struct echo_server *s = arg;
    (void)peer;
    (void)detail;
    pthread_mutex_lock(&s->lock);
    s->nfail++;
    s->last_fail = code;
    pthread_mutex_unlock(&s->lock);
}

static void quiet_log(const char *line, void *arg)
{
    (void)arg;
    cr_log_info("%s", line);
}

static void *server_main(void *arg)
{
    struct echo_server *s = arg;
    if (s->opts.shared_ring)
        return shared_ring_main(s);
    while (!s->stop) {
        ktla_acceptor_run(s->acc, 20);
        pthread_mutex_lock(&s->lock);
        ktla_acceptor_get_stats(s->acc, &s->stats);
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

struct echo_server *echo_start(const struct echo_opts *o)
{
    struct echo_server *s = calloc(1, sizeof(*s));
    char *cert, *key;

    cr_assert(s);
    s->opts = *o;
    pthread_mutex_init(&s->lock, NULL);
    int ret;
    if (o->ctx) {
        ktla_ctx_ref(o->ctx);
        s->ctx = o->ctx;
    } else {
        tu_selfsigned_pem(&cert, &key);
        struct ktla_cert_config cc = {.cert_pem = cert, .key_pem = key};
        struct ktla_ctx_config cfg = {
            .certs = &cc,
            .ncerts = 1,
            .min_version = o->min_version,
            .max_version = o->max_version,
            /* echo_opts counts plainly (-1 default, 0 none); the library's 0 is its default. */
            .tls13_tickets = o->tickets < 0 ? 0 : o->tickets == 0 ? -1 : o->tickets,
        };
        ret = ktla_ctx_new(&cfg, &s->ctx);
        free(cert);
        free(key);
        cr_assert_eq(ret, 0, "ktla_ctx_new: %s", ktla_strerror(ret));
    }
    s->lfd = tu_listen(&s->port);
    s->file_fd = o->file ? open(o->file, O_RDONLY | O_CLOEXEC) : -1;
    s->file_extra = o->file_extra;
    s->ready_first = o->ready_first;
    if (o->shared_ring)
        cr_assert_eq(io_uring_queue_init(256, &s->ring, 0), 0);
    struct ktla_acceptor_config ac = {
        .ring = o->shared_ring ? &s->ring : NULL,
        .listen_fd = s->lfd,
        .ctx = s->ctx,
        .ktls = o->ktls,
        .max_handshakes = o->max_handshakes,
        .handshake_timeout_ms = o->timeout_ms,
        .file_path = o->file_path,
        .on_conn = on_conn,
        .on_fail = on_fail,
        .log = quiet_log,
        .arg = s,
    };
    ret = ktla_acceptor_new(&ac, &s->acc);
    cr_assert_eq(ret, 0, "ktla_acceptor_new: %s", ktla_strerror(ret));
    if (o->plain_reply)
        cr_assert_eq(ktla_acceptor_set_plain_reply(s->acc, o->plain_reply, strlen(o->plain_reply)),
                     0);
    if (o->shared_openssl)
        cr_assert_eq(ktla_acceptor_set_openssl_context(s->acc, KTLA_OPENSSL_SHARED), 0);
    if (o->own_openssl)
        cr_assert_eq(ktla_acceptor_set_openssl_context(s->acc, KTLA_OPENSSL_OWN), 0);
    s->lfd2 = -1;
    if (o->second_acceptor) {
        cr_assert(o->shared_ring, "a second acceptor shares the application's ring");
        s->lfd2 = tu_listen(&s->port2);
        ac.listen_fd = s->lfd2;
        ret = ktla_acceptor_new(&ac, &s->acc2);
        cr_assert_eq(ret, 0, "ktla_acceptor_new: %s", ktla_strerror(ret));
    }
    cr_assert_eq(pthread_create(&s->thread, NULL, server_main, s), 0);
    return s;
}

uint16_t echo_port(const struct echo_server *s)
{
    return s->port;
}

struct ktla_ctx *echo_ctx(const struct echo_server *s)
{
    return s->ctx;
}

struct ktla_acceptor *echo_acceptor(const struct echo_server *s)
{
    return s->acc;
}

uint16_t echo_port2(const struct echo_server *s)
{
    return s->port2;
}

struct ktla_acceptor *echo_acceptor2(const struct echo_server *s)
{
    return s->acc2;
}

int echo_conns(struct echo_server *s, struct echo_conn *out, int max)
{
    pthread_mutex_lock(&s->lock);
    int n = s->nconns < max ? s->nconns : max;
    memcpy(out, s->conns, (size_t)n * sizeof(*out));
    n = s->nconns;
    pthread_mutex_unlock(&s->lock);
    return n;
}

int echo_failures(struct echo_server *s, int *last_code)
{
    pthread_mutex_lock(&s->lock);
    int n = s->nfail;
    if (last_code)
        *last_code = s->last_fail;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void echo_stats(struct echo_server *s, struct ktla_acceptor_stats *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->stats;
    pthread_mutex_unlock(&s->lock);
}

static bool wait_count(struct echo_server *s, int *field, int n, int ms)
{
    for (int waited = 0; waited <= ms; waited += 5) {
        pthread_mutex_lock(&s->lock);
        int v = *field;
        pthread_mutex_unlock(&s->lock);
        if (v >= n)
            return true;
        usleep(5000);
    }
    return false;
}

bool echo_wait_ended(struct echo_server *s, int n, int ms)
{
    return wait_count(s, &s->nended, n, ms);
}

bool echo_wait_failures(struct echo_server *s, int n, int ms)
{
    return wait_count(s, &s->nfail, n, ms);
}

static void on_acceptor_gone(void *arg)
{
    struct echo_server *s = arg;
    s->life.acc_gone = true;
    s->life.acc_gone_inside = s->in_free;
}

static void on_acceptor2_gone(void *arg)
{
    ((struct echo_server *)arg)->acc2_gone = true;
}

/* Runs the ring until `done` (a flag or a count reaching its goal) or 10 s. */
static void run_until(struct echo_server *s, const int *count, const int *goal, const bool *flag)
{
    for (int i = 0; i < 1000 && (flag ? !*flag : *count < *goal); i++) {
        if (!s->opts.shared_ring) {
            ktla_acceptor_run(s->acc, 10);
            continue;
        }
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_nsec = 10000000};
        io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, &ts, NULL);
        while (io_uring_peek_cqe(&s->ring, &cqe) == 0) {
            struct io_uring_cqe copy = *cqe;
            io_uring_cqe_seen(&s->ring, cqe);
            ktla_dispatch(&copy);
        }
    }
}

void echo_stop(struct echo_server *s)
{
    echo_stop_life(s, NULL);
}

void echo_stop_life(struct echo_server *s, struct echo_life *out)
{
    s->stop = true;
    pthread_join(s->thread, NULL);
    /* Connections the client left open (or whose end the server has not seen yet) are closed
     * here, and the ring run until ktla says each is gone, before the ring they share goes. */
    for (int i = 0; i < s->nconns && i < MAX_CONNS; i++) {
        if (!s->live[i])
            continue;
        echo_close(s, s->live[i], ktla_conn_get_data(s->live[i]));
        s->live[i] = NULL;
    }
    run_until(s, &s->life.gone, &s->life.closed, NULL);
    /* An own ring is drained inside the call; on the application's ring the acceptor goes once
     * its last completion is routed, which its callback says. */
    s->in_free = true;
    ktla_acceptor_free_then(s->acc, on_acceptor_gone, s);
    s->in_free = false;
    if (s->acc2)
        ktla_acceptor_free_then(s->acc2, on_acceptor2_gone, s);
    if (s->opts.shared_ring) {
        run_until(s, NULL, NULL, &s->life.acc_gone);
        if (s->acc2)
            run_until(s, NULL, NULL, &s->acc2_gone);
        io_uring_queue_exit(&s->ring);
    }
    if (s->lfd2 >= 0)
        close(s->lfd2);
    if (out)
        *out = s->life;
    ktla_ctx_free(s->ctx);
    close(s->lfd);
    if (s->file_fd >= 0)
        close(s->file_fd);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- the client */

static const char *tls12_suite(int cipher)
{
    switch (cipher) {
    case KTLA_CIPHER_AES_128_GCM:
        return "ECDHE-ECDSA-AES128-GCM-SHA256";
    case KTLA_CIPHER_AES_256_GCM:
        return "ECDHE-ECDSA-AES256-GCM-SHA384";
    case KTLA_CIPHER_CHACHA20_POLY1305:
        return "ECDHE-ECDSA-CHACHA20-POLY1305";
    default:
        return "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
               "ECDHE-ECDSA-CHACHA20-POLY1305";
    }
}

static const char *tls13_suite(int cipher)
{
    switch (cipher) {
    case KTLA_CIPHER_AES_128_GCM:
        return "TLS_AES_128_GCM_SHA256";
    case KTLA_CIPHER_AES_256_GCM:
        return "TLS_AES_256_GCM_SHA384";
    case KTLA_CIPHER_CHACHA20_POLY1305:
        return "TLS_CHACHA20_POLY1305_SHA256";
    default:
        return "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
    }
}

static int flush_out(struct tc *c)
{
    char *data;
    BIO *wbio = SSL_get_wbio(c->ssl);
    long n = BIO_get_mem_data(wbio, &data);
    for (long done = 0; done < n;) {
        ssize_t w = write(c->fd, data + done, (size_t)(n - done));
        if (w <= 0)
            return -1;
        done += w;
    }
    (void)BIO_reset(wbio);
    return 0;
}

static int fill_in(struct tc *c)
{
    uint8_t buf[16384];
    ssize_t n = read(c->fd, buf, sizeof(buf));
    if (n <= 0) {
        c->end_read = n;
        c->end_errno = n < 0 ? errno : 0;
        return -1;
    }
    BIO_write(SSL_get_rbio(c->ssl), buf, (int)n);
    return 0;
}

/* An extension no server knows, to make a ClientHello as large as a test wants. */
static int big_ext_add(SSL *s, unsigned int type, const unsigned char **out, size_t *outlen,
                       int *al, void *arg)
{
    (void)s;
    (void)type;
    (void)al;
    size_t len = *(size_t *)arg;
    unsigned char *p = calloc(1, len);
    if (!p)
        return -1;
    *out = p;
    *outlen = len;
    return 1;
}

static void big_ext_free(SSL *s, unsigned int type, const unsigned char *out, void *arg)
{
    (void)s;
    (void)type;
    (void)arg;
    free((void *)out);
}

SSL_CTX *tc_ctx_new(const struct tc_opts *o)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    cr_assert(ctx);
    SSL_CTX_set_min_proto_version(ctx, o->version ? o->version : TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, o->version ? o->version : TLS1_3_VERSION);
    cr_assert(SSL_CTX_set_cipher_list(ctx, tls12_suite(o->cipher)) == 1);
    cr_assert(SSL_CTX_set_ciphersuites(ctx, tls13_suite(o->cipher)) == 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
    if (o->big_hello)
        cr_assert(SSL_CTX_add_client_custom_ext(ctx, 0xfe0d, big_ext_add, big_ext_free,
                                                (void *)&o->big_hello, NULL, NULL) == 1);
    return ctx;
}

int tc_connect(struct tc *c, uint16_t port, const struct tc_opts *o, const void *first,
               size_t first_len)
{
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                               .sin_port = htons(port)};
    int one = 1;

    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(c->fd >= 0);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (o->rcvbuf)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &o->rcvbuf, sizeof(o->rcvbuf));
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return -1;
    if (o->ctx) {
        SSL_CTX_up_ref(o->ctx);
        c->ctx = o->ctx;
    } else {
        c->ctx = tc_ctx_new(o);
    }
    c->ssl = SSL_new(c->ctx);
    cr_assert(c->ssl);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(rbio, -1);
    SSL_set_bio(c->ssl, rbio, wbio);
    SSL_set_connect_state(c->ssl);
    SSL_set_tlsext_host_name(c->ssl, (char *)(o->sni ? o->sni : "localhost"));
    if (o->session)
        SSL_set_session(c->ssl, o->session);
    for (;;) {
        int r = SSL_do_handshake(c->ssl);
        if (r == 1) {
            /* The request rides with the Finished still in the write BIO: one write(2). */
            for (unsigned i = 0; first && i < o->first_updates; i++) {
                if (tc_key_update(c, o->first_update_type) != 0)
                    return -1;
            }
            if (first && SSL_write(c->ssl, first, (int)first_len) != (int)first_len)
                return -1;
            return flush_out(c);
        }
        if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ)
            return -1;
        if (flush_out(c) < 0 || fill_in(c) < 0)
            return -1;
    }
}

int tc_key_update(struct tc *c, int type)
{
    /* SSL_do_handshake writes it now rather than in front of the next application data. */
    if (SSL_key_update(c->ssl, type) != 1 || SSL_do_handshake(c->ssl) != 1)
        return -1;
    return 0;
}

int tc_write(struct tc *c, const void *buf, size_t len)
{
    for (size_t done = 0; done < len;) {
        size_t n = len - done > 16384 ? 16384 : len - done;
        if (SSL_write(c->ssl, (const uint8_t *)buf + done, (int)n) != (int)n)
            return -1;
        if (flush_out(c) < 0)
            return -1;
        done += n;
    }
    return 0;
}

int tc_read_full(struct tc *c, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        int n = SSL_read(c->ssl, (uint8_t *)buf + got, (int)(len - got));
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (SSL_get_error(c->ssl, n) != SSL_ERROR_WANT_READ)
            return -1;
        if (flush_out(c) < 0 || fill_in(c) < 0)
            return -1;
    }
    return 0;
}

SSL_SESSION *tc_session(struct tc *c)
{
    SSL_SESSION *s = SSL_get1_session(c->ssl);
    if (s && !SSL_SESSION_is_resumable(s)) {
        SSL_SESSION_free(s);
        return NULL;
    }
    return s;
}

int tc_close_notify(struct tc *c)
{
    SSL_shutdown(c->ssl);
    ERR_clear_error();
    return flush_out(c);
}

int tc_half_close(struct tc *c)
{
    if (tc_close_notify(c) < 0)
        return -1;
    return shutdown(c->fd, SHUT_WR);
}

ssize_t tc_read_to_close_notify(struct tc *c, void *buf, size_t cap)
{
    size_t got = 0;
    c->end_ssl_error = c->end_errno = 0;
    c->end_read = 1;
    for (;;) {
        int n = SSL_read(c->ssl, (uint8_t *)buf + got, (int)(cap - got > 65536 ? 65536 : cap - got));
        if (n > 0) {
            got += (size_t)n;
            c->end_got = got;
            if (got == cap)
                return -1;
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        ERR_clear_error();
        if (err == SSL_ERROR_ZERO_RETURN)
            return (ssize_t)got;
        c->end_ssl_error = err;
        if (err != SSL_ERROR_WANT_READ || fill_in(c) < 0)
            return -1;
    }
}

const char *tc_end_text(const struct tc *c, char *buf, size_t cap)
{
    if (c->end_ssl_error != SSL_ERROR_WANT_READ)
        snprintf(buf, cap, "%zu bytes, then OpenSSL error %d", c->end_got, c->end_ssl_error);
    else if (c->end_read == 0)
        snprintf(buf, cap, "%zu bytes, then a FIN without close_notify", c->end_got);
    else
        snprintf(buf, cap, "%zu bytes, then read: %s", c->end_got, strerror(c->end_errno));
    return buf;
}

void tc_close(struct tc *c, bool close_notify)
{
    if (c->ssl && close_notify) {
        SSL_shutdown(c->ssl);
        flush_out(c);
    }
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    ERR_clear_error();
}

int tu_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    cr_assert(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the directory's own descriptor */
}
