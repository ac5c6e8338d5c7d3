/*
 * The acceptor: a few single-shot accepts, then per connection the handshake core driven by
 * io_uring receives and sends, a deadline, and at the end the keys into the kernel and the
 * connection to the application. Nothing here blocks; every socket read and write is an io_uring
 * submission.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "conn.h"
#include "context.h"
#include "internal.h"
#include "keys.h"
#include "ktls.h"

#define DEFAULT_MAX_HANDSHAKES 1024
#define DEFAULT_HANDSHAKE_TIMEOUT_MS 10000
#define OWN_RING_ENTRIES 256
#define OWN_RING_CQ_ENTRIES 8192

/* The fallback to userspace is said once per process, not once per connection or worker. */
static atomic_bool fallback_logged;
/* So is sharing OpenSSL's default library context for want of one's own. */
static atomic_bool shared_openssl_logged;

static void arm_accept(struct ktla_acceptor *acc);
static void hs_progress(struct ktla_conn *c);
static int use_own_openssl_context(struct ktla_acceptor *acc);

void ktla_acceptor_log(struct ktla_acceptor *acc, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (acc->cfg.log)
        acc->cfg.log(line, acc->cfg.arg);
    else
        fprintf(stderr, "%s\n", line);
}

/* ---- the deadline list: every handshake has the same timeout, so start order is deadline order */

static void dl_append(struct ktla_acceptor *acc, struct ktla_conn *c)
{
    c->dl_prev = acc->dl_tail;
    c->dl_next = NULL;
    if (acc->dl_tail)
        acc->dl_tail->dl_next = c;
    else
        acc->dl_head = c;
    acc->dl_tail = c;
}

static void dl_remove(struct ktla_acceptor *acc, struct ktla_conn *c)
{
    if (c->dl_prev)
        c->dl_prev->dl_next = c->dl_next;
    else if (acc->dl_head == c)
        acc->dl_head = c->dl_next;
    else
        return; /* not on the list */
    if (c->dl_next)
        c->dl_next->dl_prev = c->dl_prev;
    else
        acc->dl_tail = c->dl_prev;
    c->dl_prev = c->dl_next = NULL;
}

static void arm_timer(struct ktla_acceptor *acc)
{
    if (acc->timer_armed || !acc->dl_head)
        return;
    uint64_t now = ktla_now_ns(), at = acc->dl_head->deadline_ns;
    uint64_t wait = at > now ? at - now : 0;
    /* Wake a little late rather than early: one wake-up then expires a whole batch. */
    wait += 1000000;
    struct io_uring_sqe *sqe = ktla_ring_sqe(acc->ring);
    if (!sqe)
        return;
    acc->timer_ts.tv_sec = (long long)(wait / 1000000000u);
    acc->timer_ts.tv_nsec = (long long)(wait % 1000000000u);
    io_uring_prep_timeout(sqe, &acc->timer_ts, 0, 0);
    ktla_ring_tag(sqe, &acc->timer_op);
    acc->timer_armed = true;
    acc->inflight++;
}

/* ---- ending a handshake */

/* Leaves the handshake phase: off the deadline list, out of the in-flight count. */
static void hs_leave(struct ktla_conn *c)
{
    struct ktla_acceptor *acc = c->acc;
    dl_remove(acc, c);
    acc->stats.in_flight--;
    arm_accept(acc);
}

/* A plain-text request line: an uppercase word and a space, the way HTTP (and most text
 * protocols a TLS port receives by mistake) begins. */
static bool plain_request(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n && i < 16 && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    return i >= 3 && i < n && p[i] == ' ';
}

/*
 * The application's answer to a client that spoke plain text to a TLS port, sent unencrypted
 * before the connection closes (nginx's "plain HTTP request was sent to HTTPS port"). Its
 * request is read and dropped first, as far as it is there: closing over unread bytes would
 * reset the connection, and the client would see the reset instead of the answer.
 */
static void plain_reply(struct ktla_acceptor *acc, struct ktla_conn *c)
{
    if (!acc->plain_reply || !c->hs || !plain_request(c->hs->in, c->hs->in_len))
        return;
    uint8_t drop[4096];
    for (int i = 0; i < 16 && recv(c->fd, drop, sizeof(drop), MSG_DONTWAIT) > 0; i++)
        ;
    (void)!send(c->fd, acc->plain_reply, acc->plain_reply_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    shutdown(c->fd, SHUT_WR);
}

static void hs_fail(struct ktla_conn *c, int code)
{
    struct ktla_acceptor *acc = c->acc;
    char detail[256] = "";

    if (c->hs_failed)
        return;
    c->hs_failed = true;
    if (c->hs && c->hs->ssl_error)
        ERR_error_string_n(c->hs->ssl_error, detail, sizeof(detail));
    acc->stats.handshakes_failed++;
    if (code == KTLA_ETIMEDOUT)
        acc->stats.timeouts++;
    hs_leave(c);
    if (code == KTLA_ENOTTLS)
        plain_reply(acc, c);
    if (acc->cfg.on_fail)
        acc->cfg.on_fail(c->info.peer, code, detail, acc->cfg.arg);
    /* Whatever is still in flight (a receive, the alert being sent) completes promptly once the
     * socket is shut down; the connection is freed after the last completion. */
    c->state = KTLA_CONN_CLOSING;
    if (c->inflight)
        shutdown(c->fd, SHUT_RDWR);
    ktla_conn_reap(c);
}

/* The point of no return: decides each direction's mode, installs kernel keys, hands over. */
static void hs_handover(struct ktla_conn *c)
{
    struct ktla_acceptor *acc = c->acc;
    struct ktla_hs *hs = c->hs;
    SSL *ssl = hs->ssl;
    struct ktla_key tx, rx;
    int reason = 0, ret;
    const unsigned char *alpn;
    unsigned alpn_len;

    memset(&tx, 0, sizeof(tx));
    memset(&rx, 0, sizeof(rx));
    c->info.version = SSL_version(ssl) == TLS1_3_VERSION ? KTLA_TLS1_3 : KTLA_TLS1_2;
    c->info.cipher_name = SSL_CIPHER_standard_name(SSL_get_current_cipher(ssl));
    int cipher = ktla_hs_cipher(ssl);
    c->info.cipher = cipher < 0 ? KTLA_CIPHER_COUNT : (enum ktla_cipher)cipher;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    if (alpn_len && alpn_len < sizeof(c->alpn)) {
        memcpy(c->alpn, alpn, alpn_len);
        c->alpn[alpn_len] = 0;
        c->info.alpn = c->alpn;
    }
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (sni && (c->sni = strdup(sni)))
        c->info.sni = c->sni;
    c->info.resumed = SSL_session_reused(ssl);
    c->info.tx_mode = c->info.rx_mode = KTLA_MODE_USERSPACE;

    if (acc->cfg.ktls == KTLA_KTLS_OFF)
        reason = KTLA_EDISABLED;
    else if (cipher < 0)
        reason = KTLA_ENOCIPHER;
    if (!reason)
        reason = c->ulp;
    if (!reason)
        reason = ktla_hs_keys(hs, &tx, &rx);
    if (!reason)
        reason = ktla_ktls_install(c->fd, KTLA_DIR_TX, &tx);
    if (!reason) {
        c->info.tx_mode = KTLA_MODE_KERNEL;
        ret = ktla_ktls_install(c->fd, KTLA_DIR_RX, &rx);
        if (ret == 0)
            c->info.rx_mode = KTLA_MODE_KERNEL;
        else
            c->info.rx_reason = ret;
        /* Where the kernel can rekey, a KeyUpdate needs the secrets after the SSL is gone; else
         * they are not kept a moment longer than the keys. */
        if (ret == 0 && c->info.version == KTLA_TLS1_3 && ktla_ktls_can_rekey()) {
            c->rk = calloc(1, sizeof(*c->rk));
            if (c->rk && ktla_keys_export(ssl, &c->rk->sec) < 0) {
                OPENSSL_clear_free(c->rk, sizeof(*c->rk));
                c->rk = NULL;
            }
            /* KeyUpdates that came with the Finished count toward the storm limits. */
            if (c->rk && hs->rx_updates) {
                c->rk->window_start_ns = ktla_now_ns();
                c->rk->window_count = hs->rx_updates;
                c->rk->in_a_row = hs->rx_in_a_row;
            }
        }
        if (ret == 0) {
            c->info.key_updates_rx = hs->rx_updates;
            c->info.key_updates_tx = hs->tx_updates;
        }
    } else {
        c->info.tx_reason = c->info.rx_reason = reason;
    }
    ktla_key_wipe(&tx);
    ktla_key_wipe(&rx);
    ktla_keys_forget(ssl);

    int why = c->info.tx_reason ? c->info.tx_reason : c->info.rx_reason;
    if (why) {
        if (acc->cfg.ktls == KTLA_KTLS_REQUIRE) {
            c->hs->ssl_error = 0;
            hs_fail(c, why);
            return;
        }
        acc->stats.ktls_fallbacks++;
        if (why != KTLA_EDISABLED && !atomic_exchange(&fallback_logged, true)) {
            ktla_acceptor_log(acc,
                              "ktla: kernel TLS not used for %s %s: %s (%s); such connections "
                              "continue in userspace (counted in ktls_fallbacks)",
                              c->info.version == KTLA_TLS1_3 ? "TLSv1.3" : "TLSv1.2",
                              c->info.cipher_name, ktla_strerror(why), ktla_err_name(why));
        }
        /* Userspace keeps OpenSSL's state for the directions it carries; its records go
         * straight into the connection's send buffer. */
        c->ssl = ssl;
        hs->ssl = NULL;
        if (c->info.tx_mode == KTLA_MODE_USERSPACE && (ret = uconn_adopt(c)) < 0) {
            hs->ssl_error = 0;
            hs_fail(c, ret);
            return;
        }
    } else {
        acc->stats.ktls_both++;
    }

    /* Plaintext that arrived with the Finished goes to the application first. */
    if (hs->plain_len) {
        c->early = hs->plain;
        c->early_len = hs->plain_len;
        c->info.early_plaintext = hs->plain_len;
        acc->stats.early_data_bytes += hs->plain_len;
        hs->plain = NULL;
        hs->plain_len = hs->plain_cap = 0;
    }
    c->peer_closed = hs->peer_closed;
    ktla_hs_release(hs);
    free(hs);
    c->hs = NULL;

    c->info.fd = c->fd;
    c->info.handshake_ns = ktla_now_ns() - c->start_ns;
    acc->stats.handshakes_done++;
    hs_leave(c);
    c->state = KTLA_CONN_ESTABLISHED;
    c->acc = NULL; /* established connections outlive their acceptor */
    acc->cfg.on_conn(c, acc->cfg.arg);
}

/* ---- driving the handshake core over the ring */

static void hs_submit_recv(struct ktla_conn *c)
{
    size_t room;
    uint8_t *buf = ktla_hs_read_buf(c->hs, &room);

    if (!buf) {
        hs_fail(c, -ENOMEM);
        return;
    }
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe) {
        hs_fail(c, -EBUSY);
        return;
    }
    /* After the handshake only the exact tail is read; WAITALL keeps it one submission. */
    io_uring_prep_recv(sqe, c->fd, buf, room, c->hs->state == KTLA_HS_DONE ? MSG_WAITALL : 0);
    ktla_ring_tag(sqe, &c->rop);
    c->rop.kind = KTLA_OP_HS_RECV;
    c->inflight++;
    c->rbusy = true;
}

/* false: the connection failed, and may be gone. */
static bool hs_submit_send(struct ktla_conn *c)
{
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);

    if (!sqe) {
        hs_fail(c, -EBUSY);
        return false;
    }
    io_uring_prep_send(sqe, c->fd, c->hs->out, c->hs->out_len, MSG_NOSIGNAL);
    ktla_ring_tag(sqe, &c->wop);
    c->wop.kind = KTLA_OP_HS_SEND;
    c->inflight++;
    c->sbusy = true;
    return true;
}

static void hs_progress(struct ktla_conn *c)
{
    struct ktla_hs *hs = c->hs;

    if (c->hs_failed)
        return;
    if (hs->state == KTLA_HS_FAILED) {
        /* The alert OpenSSL wrote goes out now, straight from here: a send submitted to the
         * ring would still be queued when hs_fail shuts the socket down, and the client would
         * see the connection end without being told why. Best effort: it is a few bytes into an
         * empty socket buffer. */
        if (hs->out_len && !c->sbusy)
            (void)!send(c->fd, hs->out, hs->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        hs_fail(c, hs->error);
        return;
    }
    if (hs->out_len && !c->sbusy && !hs_submit_send(c))
        return;
    switch (hs->state) {
    case KTLA_HS_FAILED:
        return;
    case KTLA_HS_RUNNING:
        if (!c->rbusy)
            hs_submit_recv(c);
        return;
    case KTLA_HS_DONE:
        if (ktla_hs_tail_need(hs)) {
            if (!c->rbusy)
                hs_submit_recv(c);
            return;
        }
        /* Every handshake byte sent in full, the receive side on a record boundary. */
        if (!c->sbusy && !c->rbusy && hs->out_len == 0)
            hs_handover(c);
        return;
    }
}

static void hs_start(struct ktla_acceptor *acc, int fd)
{
    struct ktla_conn *c = calloc(1, sizeof(*c));
    struct sockaddr_storage ss;
    socklen_t slen = sizeof(ss);
    SSL_CTX *sctx = NULL;

    acc->stats.accepted++;
    if (!c)
        goto err_close;
    c->hs = calloc(1, sizeof(*c->hs));
    if (!c->hs)
        goto err_free_conn;
    if (!acc->tls_decided) {
        /* Not asked for (ktla_acceptor_set_openssl_context): made here rather than in
         * ktla_acceptor_new, so that an acceptor told to share never makes one. */
        acc->tls_decided = true;
        use_own_openssl_context(acc);
    }
    if (acc->tls) {
        bool failed;
        sctx = ktla_tls_local_ssl_ctx(acc->tls, acc->cfg.ctx, &failed);
        if (failed)
            ktla_acceptor_log(acc, "ktla: the reloaded certificates could not be set up in this "
                                   "acceptor's OpenSSL library context; its handshakes use the "
                                   "shared one until the next reload");
    } else {
        sctx = ktla_ctx_ssl_ctx(acc->cfg.ctx);
    }
    if (!sctx || ktla_hs_init(c->hs, sctx) < 0)
        goto err_free_hs;
    SSL_CTX_free(sctx); /* the SSL holds its own reference */
    c->acc = acc;
    c->ring = acc->ring;
    c->fd = c->info.fd = fd;
    c->file_fd = -1;
    c->resident_fd = -1;
    c->use_splice = acc->cfg.file_path == KTLA_FILE_SPLICE;
    c->rop.conn = c->wop.conn = c;
    c->state = KTLA_CONN_HANDSHAKE;
    c->start_ns = ktla_now_ns();
    c->deadline_ns = c->start_ns + (uint64_t)acc->cfg.handshake_timeout_ms * 1000000u;
    if (getpeername(fd, (struct sockaddr *)&ss, &slen) == 0) {
        char host[INET6_ADDRSTRLEN] = "?";
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
            snprintf(c->info.peer, sizeof(c->info.peer), "%s:%u", host, ntohs(in->sin_port));
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
            snprintf(c->info.peer, sizeof(c->info.peer), "[%s]:%u", host, ntohs(in6->sin6_port));
        }
    }
    /* Responses are usually a head and a body in separate writes: without this, Nagle holds the
     * second until the client's delayed ACK, some 40 ms later. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* The TLS ULP goes on now, not at the hand-over: the kernel takes it only on an ESTABLISHED
     * socket, and a client that sends its request and shuts down its side right after its
     * Finished has put ours in CLOSE_WAIT by then (the keys themselves are taken in any state).
     * Until the keys are set, the ULP passes every read and write straight to TCP. */
    c->ulp = acc->cfg.ktls == KTLA_KTLS_OFF ? KTLA_EDISABLED : ktla_ktls_attach(fd);
    acc->stats.in_flight++;
    dl_append(acc, c);
    arm_timer(acc);
    hs_progress(c);
    return;

err_free_hs:
    if (sctx)
        SSL_CTX_free(sctx);
    free(c->hs);
err_free_conn:
    free(c);
err_close:
    close(fd);
    acc->stats.handshakes_failed++;
    if (acc->cfg.on_fail)
        acc->cfg.on_fail("?", -ENOMEM, "", acc->cfg.arg);
}

/* ---- acceptor-level completions */

/*
 * Accepts are single-shot, at most ACCEPT_DEPTH armed at once and never more than the handshake
 * cap leaves room for. A multishot accept hands over every connection in the backlog before a
 * cancellation can land, so a burst overshot the cap; and a storm of thousands arrived as one
 * batch of completions, each starting a handshake, while the answers to established connections
 * waited behind them. This way a connection over the cap waits in the kernel's listen backlog,
 * and each turn of the loop takes on at most ACCEPT_DEPTH new ones.
 */
#define ACCEPT_DEPTH 16
#define ACCEPT_RETRY_MS 100

static void arm_accept(struct ktla_acceptor *acc)
{
    if (acc->freeing || acc->stopped || acc->accept_stalled || acc->accept_broken)
        return;
    while (acc->accepts_armed < ACCEPT_DEPTH &&
           acc->stats.in_flight + acc->accepts_armed < acc->cfg.max_handshakes) {
        struct io_uring_sqe *sqe = ktla_ring_sqe(acc->ring);
        if (!sqe)
            return; /* the next completion or timer tries again */
        io_uring_prep_accept(sqe, acc->cfg.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        ktla_ring_tag(sqe, &acc->accept_op);
        acc->accepts_armed++;
        acc->inflight++;
    }
}

/* Out of descriptors or memory: no accept until a pause has passed (connections the application
 * closes free descriptors without telling us, so there is nothing better to wait for). Without
 * a timer there is no stall: the next completion re-arms as usual. */
static void stall_accept(struct ktla_acceptor *acc)
{
    if (acc->retry_armed || acc->freeing) {
        acc->accept_stalled = acc->retry_armed;
        return;
    }
    struct io_uring_sqe *sqe = ktla_ring_sqe(acc->ring);
    if (!sqe)
        return;
    acc->accept_stalled = true;
    acc->retry_ts.tv_sec = 0;
    acc->retry_ts.tv_nsec = ACCEPT_RETRY_MS * 1000000LL;
    io_uring_prep_timeout(sqe, &acc->retry_ts, 0, 0);
    ktla_ring_tag(sqe, &acc->retry_op);
    acc->retry_armed = true;
    acc->inflight++;
}

/* At the acceptor's end: every accept still armed is cancelled with one request. */
static void cancel_accepts(struct ktla_acceptor *acc)
{
    if (!acc->accepts_armed || acc->accept_cancelling)
        return;
    struct io_uring_sqe *sqe = ktla_ring_sqe(acc->ring);
    if (!sqe)
        return;
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&acc->accept_op | 1, IORING_ASYNC_CANCEL_ALL);
    ktla_ring_tag(sqe, &acc->cancel_op);
    acc->accept_cancelling = true;
    acc->inflight++;
}

static void maybe_free_acceptor(struct ktla_acceptor *acc);

void ktla_acceptor_complete(struct ktla_op *op, struct io_uring_cqe *cqe)
{
    struct ktla_conn *c = op->conn;

    switch (op->kind) {
    case KTLA_OP_ACCEPT: {
        struct ktla_acceptor *acc = op->acc;
        acc->accepts_armed--;
        acc->inflight--;
        if (cqe->res >= 0) {
            if (acc->freeing)
                close(cqe->res);
            else
                hs_start(acc, cqe->res);
        } else if (cqe->res == -EMFILE || cqe->res == -ENFILE || cqe->res == -ENOMEM ||
                   cqe->res == -ENOBUFS) {
            stall_accept(acc);
        } else if (cqe->res == -EBADF || cqe->res == -EINVAL || cqe->res == -ENOTSOCK ||
                   cqe->res == -EOPNOTSUPP) {
            /* Not a listening socket (any more): retrying would only spin. */
            if (!acc->accept_broken)
                ktla_acceptor_log(acc, "ktla: accept failed, no more connections: %s",
                                  ktla_strerror(cqe->res));
            acc->accept_broken = true;
        } else if (cqe->res != -ECANCELED && cqe->res != -ECONNABORTED && cqe->res != -EINTR &&
                   cqe->res != -EAGAIN) {
            /* A connection that failed on its way in (EPROTO, EPERM from a firewall, ...):
             * the next one may be fine. Said once per pause, not once per connection. */
            if (!acc->accept_stalled)
                ktla_acceptor_log(acc, "ktla: accept failed: %s", ktla_strerror(cqe->res));
            stall_accept(acc);
        }
        arm_accept(acc);
        maybe_free_acceptor(acc);
        return;
    }
    case KTLA_OP_NOP: {
        struct ktla_acceptor *acc = op->acc;
        acc->inflight--;
        maybe_free_acceptor(acc);
        return;
    }
    case KTLA_OP_CANCEL: {
        struct ktla_acceptor *acc = op->acc;
        acc->inflight--;
        acc->accept_cancelling = false;
        maybe_free_acceptor(acc);
        return;
    }
    case KTLA_OP_ACCEPT_RETRY: {
        struct ktla_acceptor *acc = op->acc;
        acc->inflight--;
        acc->retry_armed = false;
        acc->accept_stalled = false;
        arm_accept(acc);
        maybe_free_acceptor(acc);
        return;
    }
    case KTLA_OP_TIMER: {
        struct ktla_acceptor *acc = op->acc;
        uint64_t now = ktla_now_ns();
        acc->inflight--;
        acc->timer_armed = false;
        while (acc->dl_head && acc->dl_head->deadline_ns <= now)
            hs_fail(acc->dl_head, KTLA_ETIMEDOUT);
        arm_timer(acc);
        arm_accept(acc);
        maybe_free_acceptor(acc);
        return;
    }
    case KTLA_OP_HS_RECV:
        c->inflight--;
        c->rbusy = false;
        if (c->state != KTLA_CONN_HANDSHAKE || c->hs_failed) {
            ktla_conn_reap(c);
            return;
        }
        if (cqe->res <= 0) {
            hs_fail(c, cqe->res == 0 ? KTLA_ETRUNCATED : cqe->res);
            return;
        }
        ktla_hs_input(c->hs, (size_t)cqe->res);
        hs_progress(c);
        return;
    case KTLA_OP_HS_SEND:
        c->inflight--;
        c->sbusy = false;
        if (c->state != KTLA_CONN_HANDSHAKE || c->hs_failed) {
            ktla_conn_reap(c);
            return;
        }
        if (cqe->res < 0) {
            hs_fail(c, cqe->res);
            return;
        }
        ktla_hs_output_sent(c->hs, (size_t)cqe->res);
        hs_progress(c);
        return;
    default:
        return;
    }
}

/* ---- OpenSSL's library context */

/*
 * Acceptors on one ring run on one thread, and what a context of one's own saves is contention
 * between threads: they share one (ktla-serve's workers have an acceptor per address). Found by
 * ring and ktla_ctx; an entry lives while an acceptor uses it, so neither pointer is reused
 * while it is listed.
 */
struct ring_tls {
    struct io_uring *ring;
    struct ktla_ctx *ctx;
    struct ktla_tls_local *tls;
    unsigned users;
    struct ring_tls *next;
};
static pthread_mutex_t ring_tls_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ring_tls *ring_tls_list;

static struct ring_tls **ring_tls_find(struct io_uring *ring, struct ktla_ctx *ctx)
{
    struct ring_tls **p = &ring_tls_list;

    while (*p && ((*p)->ring != ring || (*p)->ctx != ctx))
        p = &(*p)->next;
    return p;
}

static int use_own_openssl_context(struct ktla_acceptor *acc)
{
    struct ring_tls *e;
    const char *why;
    int ret;

    pthread_mutex_lock(&ring_tls_lock);
    e = *ring_tls_find(acc->ring, acc->cfg.ctx);
    if (e) {
        e->users++;
        ktla_tls_local_ref(e->tls);
        acc->tls = e->tls;
    }
    pthread_mutex_unlock(&ring_tls_lock);
    if (acc->tls)
        return 0;
    /* Outside the lock (it parses certificates): only this ring's thread makes this entry. */
    ret = ktla_tls_local_new(acc->cfg.ctx, &acc->tls, &why);
    if (ret < 0) {
        if (!atomic_exchange(&shared_openssl_logged, true))
            ktla_acceptor_log(acc,
                              "ktla: %s: acceptors share OpenSSL's default library context "
                              "(threads then contend on its locks)",
                              why);
        return ret;
    }
    e = calloc(1, sizeof(*e));
    if (!e)
        return 0; /* this acceptor keeps its context to itself */
    *e = (struct ring_tls){.ring = acc->ring, .ctx = acc->cfg.ctx, .tls = acc->tls, .users = 1};
    pthread_mutex_lock(&ring_tls_lock);
    e->next = ring_tls_list;
    ring_tls_list = e;
    pthread_mutex_unlock(&ring_tls_lock);
    return 0;
}

/* The acceptor's end: its reference, and its place among the ring's users. */
static void drop_openssl_context(struct ktla_acceptor *acc)
{
    struct ring_tls **p, *e;

    if (!acc->tls)
        return;
    pthread_mutex_lock(&ring_tls_lock);
    p = ring_tls_find(acc->ring, acc->cfg.ctx);
    e = *p;
    if (e && e->tls == acc->tls && --e->users == 0) {
        *p = e->next;
        free(e);
    }
    pthread_mutex_unlock(&ring_tls_lock);
    ktla_tls_local_unref(acc->tls); /* live connections hold their own references */
    acc->tls = NULL;
}

int ktla_acceptor_set_openssl_context(struct ktla_acceptor *acc, enum ktla_openssl_context which)
{
    if (!acc || (which != KTLA_OPENSSL_OWN && which != KTLA_OPENSSL_SHARED))
        return KTLA_EINVAL;
    if (acc->tls_decided) /* chosen already, or handshakes run in one or the other */
        return KTLA_EINVAL;
    acc->tls_decided = true;
    return which == KTLA_OPENSSL_SHARED ? 0 : use_own_openssl_context(acc);
}

/* ---- public */

int ktla_acceptor_new(const struct ktla_acceptor_config *cfg, struct ktla_acceptor **out)
{
    struct ktla_acceptor *acc;
    int ret;

    if (!cfg || !out || !cfg->ctx || !cfg->on_conn || cfg->listen_fd < 0 ||
        cfg->ktls > KTLA_KTLS_OFF)
        return KTLA_EINVAL;
    acc = calloc(1, sizeof(*acc));
    if (!acc)
        return -ENOMEM;
    acc->cfg = *cfg;
    if (!acc->cfg.max_handshakes)
        acc->cfg.max_handshakes = DEFAULT_MAX_HANDSHAKES;
    if (!acc->cfg.handshake_timeout_ms)
        acc->cfg.handshake_timeout_ms = DEFAULT_HANDSHAKE_TIMEOUT_MS;
    if (cfg->ring) {
        acc->ring = cfg->ring;
    } else {
        struct io_uring_params p = {.flags = IORING_SETUP_CQSIZE,
                                    .cq_entries = OWN_RING_CQ_ENTRIES};
        ret = io_uring_queue_init_params(OWN_RING_ENTRIES, &acc->own_ring, &p);
        if (ret < 0)
            goto err_free;
        acc->ring = &acc->own_ring;
    }
    acc->accept_op = (struct ktla_op){.kind = KTLA_OP_ACCEPT, .acc = acc};
    acc->timer_op = (struct ktla_op){.kind = KTLA_OP_TIMER, .acc = acc};
    acc->cancel_op = (struct ktla_op){.kind = KTLA_OP_CANCEL, .acc = acc};
    acc->retry_op = (struct ktla_op){.kind = KTLA_OP_ACCEPT_RETRY, .acc = acc};
    acc->nop_op = (struct ktla_op){.kind = KTLA_OP_NOP, .acc = acc};
    ktla_ctx_ref(cfg->ctx);
    arm_accept(acc);
    *out = acc;
    return 0;

err_free:
    free(acc);
    return ret;
}

struct io_uring *ktla_acceptor_ring(struct ktla_acceptor *acc)
{
    return acc->ring;
}

int ktla_acceptor_run(struct ktla_acceptor *acc, int timeout_ms)
{
    struct io_uring *ring = acc->ring;
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000,
                                   .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
    int ret = io_uring_submit_and_wait_timeout(ring, &cqe, 1, timeout_ms < 0 ? NULL : &ts, NULL);

    if (ret < 0 && ret != -ETIME && ret != -EINTR)
        return ret;
    int handled = 0;
    uint64_t mark = 0;
    /* This turn's completions only: what the submissions made meanwhile complete (a storm's
     * accepts) waits for the next turn, behind what the others have pending. */
    for (unsigned n = io_uring_cq_ready(ring); n && io_uring_peek_cqe(ring, &cqe) == 0; n--) {
        /* Seen before handling: a callback may submit and reap on this ring itself. */
        struct io_uring_cqe copy = *cqe;
        io_uring_cqe_seen(ring, cqe);
        ktla_dispatch(&copy);
        ktla_submit_if_late(ring, &mark);
        handled++;
    }
    io_uring_submit(ring);
    return handled;
}

static void maybe_free_acceptor(struct ktla_acceptor *acc)
{
    if (!acc->freeing || acc->inflight || acc->dl_head || acc->cfg.ring == NULL)
        return;
    /* The application's ring: the last completion frees us. */
    if (acc->done_cb)
        acc->done_cb(acc->done_arg);
    drop_openssl_context(acc);
    ktla_ctx_free(acc->cfg.ctx);
    free(acc->plain_reply);
    free(acc);
}

int ktla_acceptor_set_plain_reply(struct ktla_acceptor *acc, const void *reply, size_t len)
{
    if (!acc || (len && !reply) || len > 4096)
        return KTLA_EINVAL;
    char *copy = NULL;
    if (len && !(copy = malloc(len)))
        return -ENOMEM;
    if (len)
        memcpy(copy, reply, len);
    free(acc->plain_reply);
    acc->plain_reply = copy;
    acc->plain_reply_len = len;
    return 0;
}

void ktla_acceptor_stop(struct ktla_acceptor *acc)
{
    if (!acc || acc->stopped)
        return;
    acc->stopped = true;
    cancel_accepts(acc);
    /* Submitted now: the application may close the listening socket as soon as this returns,
     * and the cancellation should not wait for the end of its loop turn. */
    io_uring_submit(acc->ring);
}

void ktla_acceptor_free(struct ktla_acceptor *acc)
{
    ktla_acceptor_free_then(acc, NULL, NULL);
}

void ktla_acceptor_free_then(struct ktla_acceptor *acc, ktla_done_cb cb, void *arg)
{
    if (!acc)
        return;
    acc->freeing = true;
    acc->done_cb = cb;
    acc->done_arg = arg;
    cancel_accepts(acc);
    if (acc->retry_armed) {
        struct io_uring_sqe *sqe = ktla_ring_sqe(acc->ring);
        if (sqe) {
            io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&acc->retry_op | 1, 0);
            ktla_ring_tag(sqe, &acc->nop_op);
            acc->inflight++; /* its completion may come after the timer's */
        }
    }
    while (acc->dl_head)
        hs_fail(acc->dl_head, KTLA_ECLOSED);
    if (acc->timer_armed) {
        struct io_uring_sqe *sqe = ktla_ring_sqe(acc->ring);
        if (sqe) {
            /* The timer's own completion (-ECANCELED) does the timer's bookkeeping; the
             * removal's is counted too, since it may arrive last. */
            io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&acc->timer_op | 1, 0);
            ktla_ring_tag(sqe, &acc->nop_op);
            acc->inflight++;
        }
    }
    if (acc->cfg.ring) {
        /* The callback comes from the ring: with nothing else in flight, a no-op carries it. */
        struct io_uring_sqe *sqe = cb && !acc->inflight ? ktla_ring_sqe(acc->ring) : NULL;
        if (sqe) {
            io_uring_prep_nop(sqe);
            ktla_ring_tag(sqe, &acc->nop_op);
            acc->inflight++;
        }
        io_uring_submit(acc->ring);
        maybe_free_acceptor(acc);
        return;
    }
    /* An own ring: drain what is ours, then the ring goes with us. */
    while (acc->inflight || acc->dl_head)
        if (ktla_acceptor_run(acc, 100) < 0)
            break;
    io_uring_queue_exit(&acc->own_ring);
    if (cb)
        cb(arg);
    drop_openssl_context(acc);
    ktla_ctx_free(acc->cfg.ctx);
    free(acc->plain_reply);
    free(acc);
}

void ktla_acceptor_get_stats(const struct ktla_acceptor *acc, struct ktla_acceptor_stats *out)
{
    *out = acc->stats;
}
