/*
 * The established connection: the API, the same in both modes, and what both share (the
 * receive and send in progress, the graceful shutdown, closing, routing completions). What
 * differs by mode is apart: conn_kernel.c (the socket speaks TLS by itself: control records,
 * alerts, KeyUpdate, sendfile and splice) and conn_us.c (OpenSSL's state from the handshake
 * carries on over BIOs in memory; the ciphertext still moves through io_uring).
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "conn.h"
#include "context.h"
#include "ktls.h"

#define LINGER_DROP_MAX (256u << 10) /* input dropped while shutting down before cutting it */

static const uint8_t close_notify[2] = {1, 0};

bool ktla_conn_reap(struct ktla_conn *c)
{
    if (c->state != KTLA_CONN_CLOSING || c->inflight)
        return false;
    /* The end-of-life callback of a graceful shutdown: nothing of the connection is in flight,
     * so the application may free what it tied to it (and even tear its ring down) from here. */
    ktla_close_cb cb = c->close_cb;
    c->close_cb = NULL;
    if (cb)
        cb(c, c->close_result, c->close_arg);
    ktla_conn_destroy(c);
    return true;
}

void ktla_conn_destroy(struct ktla_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    if (c->hs) {
        ktla_hs_release(c->hs);
        free(c->hs);
    }
    if (c->ssl)
        ktla_ssl_free(c->ssl);
    if (c->early)
        OPENSSL_clear_free(c->early, c->early_len);
    free(c->raw); /* ciphertext only: nothing to wipe */
    free(c->enc);
    free(c->side);
    free(c->sni);
    /* File contents on their way out, no secret: wiping 64 KiB per connection was a tenth of
     * a small download's cost (and faulted in pages never touched). Keys are wiped, not this. */
    free(c->chunk);
    if (c->sp) {
        close(c->sp->r);
        close(c->sp->w);
        free(c->sp);
    }
    if (c->rk)
        OPENSSL_clear_free(c->rk, sizeof(*c->rk));
    free(c);
}

const struct ktla_conn_info *ktla_conn_get_info(const struct ktla_conn *c)
{
    return &c->info;
}

void ktla_conn_set_data(struct ktla_conn *c, void *data)
{
    c->user_data = data;
}

void *ktla_conn_get_data(const struct ktla_conn *c)
{
    return c->user_data;
}

bool conn_submit(struct ktla_conn *c, struct io_uring_sqe *sqe, struct ktla_op *op,
                 enum ktla_op_kind kind)
{
    op->kind = kind;
    ktla_ring_tag(sqe, op);
    c->inflight++;
    return true;
}

/* ---- receiving */

void conn_recv_done(struct ktla_conn *c, ssize_t result)
{
    ktla_io_cb cb = c->rcb;
    c->rbusy = false;
    if (c->state == KTLA_CONN_ESTABLISHED)
        cb(c, result, c->rarg);
}

static int recv_submit_nop(struct ktla_conn *c)
{
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_nop(sqe);
    conn_submit(c, sqe, &c->rop, KTLA_OP_RECV);
    return 0;
}

int conn_recv_submit_socket(struct ktla_conn *c, void *buf, size_t len)
{
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_recv(sqe, c->fd, buf, len, 0);
    conn_submit(c, sqe, &c->rop, KTLA_OP_RECV);
    return 0;
}

static void on_recv(struct ktla_conn *c, int res)
{
    if (c->state != KTLA_CONN_ESTABLISHED) {
        c->rbusy = false;
        return;
    }
    /* Early plaintext and end of stream after close_notify come back through a NOP. */
    if (c->early && c->early_off < c->early_len) {
        size_t n = c->early_len - c->early_off;
        if (n > c->rlen)
            n = c->rlen;
        memcpy(c->rbuf, c->early + c->early_off, n);
        c->early_off += n;
        if (c->early_off == c->early_len) {
            OPENSSL_clear_free(c->early, c->early_len);
            c->early = NULL;
            c->early_len = c->early_off = 0;
        }
        return conn_recv_done(c, (ssize_t)n);
    }
    if (c->peer_closed)
        return conn_recv_done(c, 0);

    if (c->info.rx_mode == KTLA_MODE_USERSPACE)
        return uconn_recv_step(c);
    if (res > 0 && ktla_hs_reader_busy(&c->hsr)) { /* data inside a handshake message */
        kconn_event(c, KTLA_EV_HS_INTERLEAVED);
        return;
    }
    if (res > 0) {
        if (c->rk)
            c->rk->in_a_row = 0; /* application data: KeyUpdates before it were not a storm */
        return conn_recv_done(c, res);
    }
    /* 0 is the end of the stream, or (6.17) only zero-length records consumed before a control
     * record: a read with the record's type tells them apart. */
    if (res == 0)
        return c->peer_closed ? conn_recv_done(c, 0) : kconn_control_record(c);
    if (res == -EIO)
        return kconn_control_record(c);
    kconn_rx_error(c, ktla_ktls_error(-res, KTLA_OP_IO));
}

void ktla_conn_trim(struct ktla_conn *c)
{
    /* A poll (recv_ready) holds no buffer; any other receive may be reading into raw. */
    if (!c || c->state != KTLA_CONN_ESTABLISHED || !c->ssl || c->sbusy ||
        (c->rbusy && c->rop.kind != KTLA_OP_RECV_READY))
        return;
    uconn_trim(c);
}

int ktla_conn_recv_ready(struct ktla_conn *c, ktla_io_cb cb, void *arg)
{
    if (!c || !cb)
        return KTLA_EINVAL;
    if (c->state != KTLA_CONN_ESTABLISHED)
        return KTLA_ECLOSED;
    if (c->rbusy)
        return KTLA_EBUSY;
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return -EBUSY;
    /* Ready now: plaintext from the handshake, end of stream, or ciphertext already read from
     * the socket, in OpenSSL or still in its memory BIO (a poll on the socket would wait for
     * bytes that are already here). */
    if ((c->early && c->early_off < c->early_len) || c->peer_closed ||
        (c->info.rx_mode == KTLA_MODE_USERSPACE && c->ssl &&
         (SSL_has_pending(c->ssl) || BIO_ctrl_pending(SSL_get_rbio(c->ssl)) > 0))) {
        io_uring_prep_nop(sqe);
    } else {
        io_uring_prep_poll_add(sqe, c->fd, POLLIN);
    }
    conn_submit(c, sqe, &c->rop, KTLA_OP_RECV_READY);
    c->rbuf = NULL;
    c->rlen = 0;
    c->rcb = cb;
    c->rarg = arg;
    c->rbusy = true;
    return 0;
}

int ktla_conn_recv(struct ktla_conn *c, void *buf, size_t len, ktla_io_cb cb, void *arg)
{
    if (!c || !buf || !len || !cb)
        return KTLA_EINVAL;
    if (c->state != KTLA_CONN_ESTABLISHED)
        return KTLA_ECLOSED;
    if (c->rbusy)
        return KTLA_EBUSY;
    c->rbuf = buf;
    c->rlen = len;
    c->rcb = cb;
    c->rarg = arg;
    int ret;
    /* Userspace mode with nothing decryptable already here (the usual case: the client has not
     * sent the next request yet) reads the socket straight away, as kernel mode does; a no-op
     * round through the ring first would only come back to submit the same read. */
    if (c->early || c->peer_closed ||
        (c->info.rx_mode == KTLA_MODE_USERSPACE && uconn_has_pending(c)))
        ret = recv_submit_nop(c);
    else if (c->info.rx_mode == KTLA_MODE_USERSPACE)
        ret = uconn_recv_submit_raw(c);
    else
        ret = conn_recv_submit_socket(c, buf, len);
    if (ret < 0)
        return ret;
    c->rbusy = true;
    return 0;
}

/* ---- sending: buffers and files */

void conn_send_done(struct ktla_conn *c, ssize_t result)
{
    ktla_io_cb cb = c->scb;
    c->sbusy = false;
    c->file_fd = -1;
    if (result >= 0)
        result += (ssize_t)c->result_extra;
    c->result_extra = c->head_len = c->head_off = c->us_head = 0;
    if (result < 0 && c->sp && c->sp->fill) {
        /* Bytes of a failed file are still in the pipe: the next file must not follow them. */
        close(c->sp->r);
        close(c->sp->w);
        free(c->sp);
        c->sp = NULL;
    }
    /* A KeyUpdate the peer asked for while this send was going out: now, before any other. */
    if (c->rk && c->rk->tx_due)
        kconn_rekey_tx(c);
    if (c->state == KTLA_CONN_ESTABLISHED)
        cb(c, result, c->sarg);
}

bool conn_submit_send_flags(struct ktla_conn *c, const void *buf, size_t len, int flags)
{
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return false;
    io_uring_prep_send(sqe, c->fd, buf, len, MSG_NOSIGNAL | flags);
    return conn_submit(c, sqe, &c->wop, KTLA_OP_SEND);
}

bool conn_submit_send(struct ktla_conn *c, const void *buf, size_t len)
{
    return conn_submit_send_flags(c, buf, len, 0);
}

bool conn_submit_pollout(struct ktla_conn *c)
{
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return false;
    io_uring_prep_poll_add(sqe, c->fd, POLLOUT);
    return conn_submit(c, sqe, &c->wop, KTLA_OP_POLLOUT);
}

static void on_send(struct ktla_conn *c, int res)
{
    if (c->info.tx_mode == KTLA_MODE_USERSPACE)
        uconn_sent(c, res);
    if (res < 0)
        return conn_send_done(c, res == -EIO ? KTLA_ETLS : res);
    if (c->info.tx_mode == KTLA_MODE_USERSPACE)
        return uconn_send_step(c);
    if (c->head_off < c->head_len) { /* the head of ktla_conn_sendfile_head */
        c->head_off += (size_t)res;
        c->info.bytes_sent += (size_t)res;
        if (c->head_off < c->head_len) {
            if (!kconn_send_start(c))
                conn_send_done(c, -EBUSY);
            return;
        }
        /* Then the file, into the record the head opened: from here, in a completion, the
         * callback may run at once. */
        return c->via_pipe ? kconn_splice_step(c) : kconn_sendfile_step(c);
    }
    conn_sent(c, (size_t)res);
    if (c->sdone < c->slen) {
        if (!conn_submit_send(c, c->sbuf + c->sdone, c->slen - c->sdone))
            conn_send_done(c, -EBUSY);
        return;
    }
    conn_send_done(c, (ssize_t)c->slen);
}

static int start_send(struct ktla_conn *c, ktla_io_cb cb, void *arg)
{
    if (c->state != KTLA_CONN_ESTABLISHED)
        return KTLA_ECLOSED;
    if (c->sbusy)
        return KTLA_EBUSY;
    c->scb = cb;
    c->sarg = arg;
    c->sdone = 0;
    c->enc_plain = 0;
    c->result_extra = c->head_len = c->head_off = c->us_head = 0;
    return 0;
}

int ktla_conn_send(struct ktla_conn *c, const void *buf, size_t len, ktla_io_cb cb, void *arg)
{
    if (!c || !buf || !len || !cb)
        return KTLA_EINVAL;
    int ret = start_send(c, cb, arg);
    if (ret < 0)
        return ret;
    c->sbuf = buf;
    c->slen = len;
    c->file_fd = -1;
    if (c->info.tx_mode == KTLA_MODE_KERNEL) {
        if (c->rk && c->rk->tx_wait)
            c->rk->send_queued = true; /* behind our KeyUpdate */
        else if (!conn_submit_send(c, buf, len))
            return -EBUSY;
        c->sbusy = true;
        return 0;
    }
    /* Encrypting now is fine: only the completion must not run inside this call. */
    size_t n = uconn_step(len);
    ret = uconn_encrypt(c, buf, n);
    if (ret < 0)
        return ret;
    conn_encrypted(c, n);
    if (!uconn_submit_enc(c))
        return -EBUSY;
    c->sbusy = true;
    return 0;
}

int ktla_conn_sendfile(struct ktla_conn *c, int file_fd, uint64_t offset, size_t count,
                       ktla_io_cb cb, void *arg)
{
    if (!c || file_fd < 0 || !count || !cb)
        return KTLA_EINVAL;
    int ret = start_send(c, cb, arg);
    if (ret < 0)
        return ret;
    c->sbuf = NULL;
    c->slen = count;
    c->file_fd = file_fd;
    c->file_off = offset;
    bool ok;
    if (c->info.tx_mode == KTLA_MODE_KERNEL) {
        /* (without a pipe, splice falls back to sendfile(2), which does the same work) */
        c->via_pipe = c->use_splice && kconn_splice_pipe(c);
        if (c->rk && c->rk->tx_wait) {
            c->rk->send_queued = true; /* behind our KeyUpdate */
            ok = true;
        } else if (c->via_pipe) {
            c->sbusy = true; /* before the step: it may end the send at once on a full ring */
            kconn_splice_step(c);
            return 0;
        } else {
            ok = conn_submit_pollout(c);
        }
    } else {
        ret = uconn_read_file(c, NULL, 0);
        if (ret == -ENOMEM) {
            c->file_fd = -1;
            return ret;
        }
        ok = ret == 0;
    }
    if (!ok) {
        c->file_fd = -1;
        return -EBUSY;
    }
    c->sbusy = true;
    return 0;
}

int ktla_conn_sendfile_head(struct ktla_conn *c, const void *head, size_t head_len, int file_fd,
                            uint64_t offset, size_t count, ktla_io_cb cb, void *arg)
{
    if (!c || !head || !head_len || head_len > KTLA_SENDFILE_HEAD_MAX || file_fd < 0 || !count ||
        !cb)
        return KTLA_EINVAL;
    int ret = start_send(c, cb, arg);
    if (ret < 0)
        return ret;
    c->sbuf = NULL;
    c->slen = count;
    c->file_fd = file_fd;
    c->file_off = offset;
    c->result_extra = head_len;
    bool ok;
    if (c->info.tx_mode == KTLA_MODE_KERNEL) {
        /* MSG_MORE keeps the record open: the kernel fills it with the file's first bytes. */
        c->head = head;
        c->head_len = head_len;
        c->via_pipe = c->use_splice && kconn_splice_pipe(c);
        if (c->rk && c->rk->tx_wait) {
            c->rk->send_queued = true; /* behind our KeyUpdate */
            ok = true;
        } else {
            ok = conn_submit_send_flags(c, head, head_len, MSG_MORE);
        }
    } else {
        ret = uconn_read_file(c, head, head_len);
        if (ret == -ENOMEM) {
            c->file_fd = -1;
            c->result_extra = 0;
            return ret;
        }
        ok = ret == 0;
        if (ok)
            c->us_head = head_len;
    }
    if (!ok) {
        c->file_fd = -1;
        c->result_extra = c->head_len = c->us_head = 0;
        return -EBUSY;
    }
    c->sbusy = true;
    return 0;
}

/* ---- closing: the graceful shutdown */

/* Cancels every operation on the socket and waits for the cancellations (Linux 6.0+), so that no
 * buffer of the application is touched once this returns. Their completions still come. */
static void cancel_socket_ops(struct ktla_conn *c)
{
    io_uring_submit(c->ring);
    struct io_uring_sync_cancel_reg reg = {
        .fd = c->fd,
        .flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL,
        .timeout = {.tv_sec = -1, .tv_nsec = -1},
    };
    int ret = io_uring_register_sync_cancel(c->ring, &reg);
    /* Older kernels lack the synchronous cancel; shutting the socket down ends the operations
     * promptly, though not before this returns. */
    if (ret < 0 && ret != -ENOENT)
        shutdown(c->fd, SHUT_RDWR);
    if (c->sp) { /* a file -> pipe splice runs on the pipe, not on the socket */
        reg.fd = c->sp->w;
        io_uring_register_sync_cancel(c->ring, &reg);
    }
}

/*
 * Reads and drops what the peer sent, without waiting: 1 at the peer's end of stream, 0 when
 * nothing more is there now, or a negative code. Kernel receive: records are decrypted and
 * dropped (control records too: recvmsg takes them with their type); userspace receive: the
 * ciphertext is dropped unread, OpenSSL has nothing more to do with it.
 */
static int linger_drop(struct ktla_conn *c)
{
    uint8_t buf[KTLA_RECORD_MAX];

    for (;;) {
        ssize_t n;
        if (c->info.rx_mode == KTLA_MODE_KERNEL) {
            uint8_t type;
            n = ktla_ktls_recv_record(c->fd, buf, sizeof(buf), &type, MSG_DONTWAIT);
            if (n == 0 && type) /* a zero-length record, not the end of the stream: read on */
                continue;
        } else {
            n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (n < 0)
                n = -errno;
        }
        if (n == -EAGAIN)
            return 0;
        if (n == -EINTR)
            continue;
        if (n <= 0)
            return n == 0 ? 1 : (int)n;
        c->linger_dropped += (size_t)n;
        if (c->linger_dropped > LINGER_DROP_MAX)
            return KTLA_ELINGER;
    }
}

/*
 * Our close_notify, without waiting: 1 when it is out (or is not to be sent: then the FIN alone
 * ends the stream), 0 when the socket has no room for it yet, a negative errno when the
 * connection can take nothing more (the peer reset it). Either way what was queued before it
 * goes first: the kernel sends in order.
 */
static int linger_close_notify(struct ktla_conn *c)
{
    if (c->info.tx_mode == KTLA_MODE_KERNEL) {
        if (c->fatal_sent) /* nothing follows a fatal alert */
            return 1;
        ssize_t n = ktla_ktls_send_record(c->fd, KTLA_RT_ALERT, close_notify, sizeof(close_notify),
                                          MSG_DONTWAIT);
        return n == -EAGAIN ? 0 : n < 0 ? (int)n : 1;
    }
    if (!c->ssl)
        return 1;
    if (!c->cn_made) { /* what is still in enc goes first: the alert is written after it */
        c->cn_made = true;
        SSL_shutdown(c->ssl); /* writes the alert into enc (the write BIO); 0 or 1 both do */
        ERR_clear_error();
    }
    return uconn_send_now(c);
}

/* The socket closes now; the callback and the memory follow once nothing is in flight. */
static void linger_end(struct ktla_conn *c, int result)
{
    if (result != 0) {
        /* Whatever arrived meanwhile goes, so that close() has no reason to reset the
         * connection while what we sent is still on its way. */
        (void)linger_drop(c);
    }
    close(c->fd);
    c->fd = -1;
    c->info.fd = -1;
    c->close_result = result;
    c->state = KTLA_CONN_CLOSING;
    ktla_conn_reap(c);
}

/*
 * At the deadline: a client still reading what the response left queued (a slow reader of a
 * large file) has its close_notify still to come, and our FIN with it. As long as the queue
 * goes down between two deadlines the wait goes on, up to ten times linger_ms in all: what
 * bounds a connection is its progress, as with ktla-serve's idle timeout. True if extended.
 */
static bool linger_progress(struct ktla_conn *c, uint64_t now)
{
    int outq = 0;
    if (ioctl(c->fd, SIOCOUTQ, &outq) < 0 || outq <= 0 || outq >= c->linger_outq ||
        now >= c->linger_cap_ns)
        return false;
    c->linger_outq = outq;
    c->linger_deadline_ns = now + (uint64_t)c->linger_ms * 1000000u;
    if (c->linger_deadline_ns > c->linger_cap_ns)
        c->linger_deadline_ns = c->linger_cap_ns;
    return true;
}

static void linger_step(struct ktla_conn *c)
{
    if (!c->cn_sent) {
        int sent = linger_close_notify(c);
        if (sent != 0) {
            c->cn_sent = true;
            c->cn_error = sent < 0 ? sent : 0;
            /* After the peer's close_notify the socket is closed next (below): close() sends
             * the FIN itself. */
            if (!c->peer_closed)
                shutdown(c->fd, SHUT_WR);
        }
    }
    int ret = c->linger_eof ? 1 : linger_drop(c);
    if (ret < 0)
        return linger_end(c, ret);
    /*
     * The peer's FIN ends only its sending: a client that half-closes (close_notify and FIN
     * right after its request, as `openssl s_client -ign_eof` or a shell pipe does) still reads
     * the response. With our close_notify out, the stream is complete both ways; before that,
     * it waits for room like the rest of the response, and only POLLOUT can say anything new.
     */
    if (ret == 1)
        c->linger_eof = true;
    /* After its close_notify the peer sends nothing more (RFC 8446 §6.1, RFC 5246 §7.2.1): with
     * ours out too, both streams are complete and nothing left unread can make close() reset
     * what is still on its way to the peer; its FIN, if still to come, needs no waiting for. */
    if (c->cn_sent && (c->linger_eof || c->peer_closed))
        return linger_end(c, c->cn_error);

    uint64_t now = ktla_now_ns();
    if (now >= c->linger_deadline_ns && !linger_progress(c, now))
        return linger_end(c, -ETIMEDOUT);
    /* A poll and its deadline in one submission: flushed apart, the link would not hold. */
    if (io_uring_sq_space_left(c->ring) < 2 && io_uring_submit(c->ring) < 0)
        return linger_end(c, -EBUSY);
    struct io_uring_sqe *poll = io_uring_get_sqe(c->ring);
    if (!poll)
        return linger_end(c, -EBUSY);
    /* Waiting for room for close_notify, input is dropped meanwhile: a client blocked on
     * sending could otherwise never read what makes room. */
    io_uring_prep_poll_add(poll, c->fd,
                           c->cn_sent ? POLLIN : c->linger_eof ? POLLOUT : POLLIN | POLLOUT);
    poll->flags |= IOSQE_IO_LINK;
    conn_submit(c, poll, &c->lop, KTLA_OP_LINGER);
    uint64_t left = c->linger_deadline_ns - now;
    c->lts.tv_sec = (long long)(left / 1000000000u);
    c->lts.tv_nsec = (long long)(left % 1000000000u);
    struct io_uring_sqe *tmo = io_uring_get_sqe(c->ring); /* there is room: checked above */
    io_uring_prep_link_timeout(tmo, &c->lts, 0);
    conn_submit(c, tmo, &c->lto, KTLA_OP_LINGER_TIMEOUT);
}

static void on_linger(struct ktla_conn *c, int res)
{
    if (res == -ECANCELED) /* the deadline passed: unless what we sent is still leaving */
        return linger_progress(c, ktla_now_ns()) ? linger_step(c) : linger_end(c, -ETIMEDOUT);
    if (res < 0)
        return linger_end(c, res);
    linger_step(c);
}

int ktla_conn_shutdown(struct ktla_conn *c, unsigned linger_ms, ktla_close_cb cb, void *arg)
{
    if (!c)
        return KTLA_EINVAL;
    if (c->state != KTLA_CONN_ESTABLISHED)
        return KTLA_ECLOSED;
    if (c->sbusy)
        return KTLA_EBUSY;
    /* The first step runs from the ring: the callback must never run inside this call. Room
     * for it is made first, and the entry taken only after the cancellation, which submits
     * what is queued (an entry taken before would go out unprepared). */
    if (!io_uring_sq_space_left(c->ring) && io_uring_submit(c->ring) < 0)
        return -EBUSY;
    if (c->inflight) /* a receive, or a KeyUpdate waiting for room: neither matters now */
        cancel_socket_ops(c);
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring); /* there is room: made above */
    c->rbusy = false;
    c->lop.conn = c->lto.conn = c;
    c->close_cb = cb;
    c->close_arg = arg;
    c->close_result = 0;
    c->linger_dropped = 0;
    c->cn_made = c->cn_sent = false;
    c->linger_eof = false;
    c->cn_error = 0;
    c->linger_ms = linger_ms;
    c->linger_deadline_ns = ktla_now_ns() + (uint64_t)linger_ms * 1000000u;
    c->linger_cap_ns = c->linger_deadline_ns + 9ull * linger_ms * 1000000u;
    c->linger_outq = INT_MAX;
    /* What is queued now: progress is less of it. (Not needed when the peer has closed: the
     * socket is closed as soon as our close_notify is out.) */
    if (!c->peer_closed)
        ioctl(c->fd, SIOCOUTQ, &c->linger_outq);
    c->state = KTLA_CONN_LINGER;
    io_uring_prep_nop(sqe);
    conn_submit(c, sqe, &c->lop, KTLA_OP_LINGER);
    return 0;
}

/* ---- closing at once, and routing */

/* The end-of-life callback must come from the ring, never from inside the close: with nothing
 * left in flight, a no-op goes round the ring to carry it. */
static void close_later(struct ktla_conn *c, ktla_close_cb cb, void *arg)
{
    c->close_cb = cb;
    c->close_arg = arg;
    c->close_result = -ECANCELED;
    if (!cb || c->inflight)
        return;
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe) { /* a ring that takes nothing more: better early than never */
        ktla_conn_reap(c);
        return;
    }
    c->lop.conn = c;
    io_uring_prep_nop(sqe);
    conn_submit(c, sqe, &c->lop, KTLA_OP_LINGER);
}

void ktla_conn_close(struct ktla_conn *c)
{
    ktla_conn_close_then(c, NULL, NULL);
}

void ktla_conn_close_then(struct ktla_conn *c, ktla_close_cb cb, void *arg)
{
    if (!c)
        return;
    /* A graceful shutdown in progress, or over and waiting for its last completions: cut short,
     * and its callback never runs (the application may free what it gave as its argument). */
    c->close_cb = NULL;
    if (c->state == KTLA_CONN_LINGER) {
        c->state = KTLA_CONN_CLOSING;
        if (c->inflight)
            cancel_socket_ops(c);
        close_later(c, cb, arg);
        ktla_conn_reap(c);
        return;
    }
    if (c->state == KTLA_CONN_ESTABLISHED) {
        /* close_notify, best effort and without waiting: a peer that reads nothing more must not
         * hold the connection open. */
        if (c->info.tx_mode == KTLA_MODE_KERNEL) {
            if (!c->fatal_sent)
                ktla_ktls_send_record(c->fd, KTLA_RT_ALERT, close_notify, sizeof(close_notify),
                                      MSG_DONTWAIT);
        } else if (c->ssl) {
            /* Behind a send still in flight the alert could only go after it: not sent. */
            bool in_flight = c->enc_sending;
            SSL_shutdown(c->ssl);
            if (!in_flight)
                (void)uconn_send_now(c);
            ERR_clear_error();
        }
    }
    c->state = KTLA_CONN_CLOSING;
    /* The application may free its buffers as soon as this returns, so the kernel must be done
     * with them. (A shutdown that is over has closed its socket and holds none of them.) */
    if (c->inflight && c->fd >= 0)
        cancel_socket_ops(c);
    close_later(c, cb, arg);
    ktla_conn_reap(c);
}

void ktla_conn_complete(struct ktla_op *op, struct io_uring_cqe *cqe)
{
    struct ktla_conn *c = op->conn;

    c->inflight--;
    if (c->state == KTLA_CONN_LINGER) {
        /* Only the linger's own poll moves it on; the linked timeout's completion and those of
         * operations cancelled when it began carry nothing. */
        if (op == &c->lop)
            on_linger(c, cqe->res);
        return;
    }
    if (c->state != KTLA_CONN_ESTABLISHED) {
        ktla_conn_reap(c);
        return;
    }
    switch (op->kind) {
    case KTLA_OP_RECV:
        on_recv(c, cqe->res);
        break;
    case KTLA_OP_RAW_RECV:
        uconn_on_raw_recv(c, cqe->res);
        break;
    case KTLA_OP_RECV_READY:
        conn_recv_done(c, cqe->res < 0 ? cqe->res : 1);
        break;
    case KTLA_OP_SEND:
        on_send(c, cqe->res);
        break;
    case KTLA_OP_POLLOUT:
        if (cqe->res < 0)
            conn_send_done(c, cqe->res);
        else if (c->via_pipe) /* this file goes through the pipe */
            kconn_splice_step(c);
        else
            kconn_sendfile_step(c);
        break;
    case KTLA_OP_SPLICE_IN:
    case KTLA_OP_SPLICE_OUT:
        kconn_on_splice(c, op->kind, cqe->res);
        break;
    case KTLA_OP_REKEY_POLLOUT:
        c->rk->tx_wait = false;
        if (cqe->res < 0) {
            c->rk->tx_due = false;
            shutdown(c->fd, SHUT_RDWR);
            if (c->rk->send_queued) {
                c->rk->send_queued = false;
                conn_send_done(c, cqe->res);
            }
        } else {
            kconn_rekey_tx(c);
        }
        break;
    case KTLA_OP_FILE_READ:
        uconn_on_file_read(c, cqe->res);
        break;
    default:
        break;
    }
}
