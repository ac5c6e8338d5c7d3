/*
 * The established connection, the same API in both modes. Kernel mode: the socket speaks TLS by
 * itself, so receives and sends are plain io_uring operations and files go out with sendfile(2).
 * Userspace mode: OpenSSL's state from the handshake carries on over memory BIOs, and the
 * ciphertext still moves through io_uring.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <openssl/err.h>

#include "internal.h"
#include "ktls.h"

/* Userspace mode: plaintext taken per step, four full records. One file read, one SSL_write and
 * one send per 64 KiB rather than per 16 KiB record: the ring's per-operation cost, paid once per
 * record, was a good part of what a download cost beyond the encryption itself. */
#define US_CHUNK 65536
#define RAW_CAP (KTLA_RECORD_MAX)       /* userspace receive buffer: one whole record */
#define SENDFILE_SLICE (1u << 20)       /* bytes sent before yielding to other connections */
#define SPLICE_PIPE (256u << 10)        /* splice path: pipe size asked for, bytes per step */
#define REKEY_WINDOW_NS (10ull * 1000000000ull) /* KeyUpdates from a peer: at most */
#define REKEY_MAX_PER_WINDOW 8                   /* this many in this long */
#define LINGER_DROP_MAX (256u << 10) /* input dropped while shutting down before cutting it */

static const uint8_t close_notify[2] = {1, 0};

/* Kernel mode: bytes of the send in progress taken by the socket, counted for the application as
 * well (info.bytes_sent). */
static inline void sent(struct ktla_conn *c, size_t n)
{
    c->sdone += n;
    c->info.bytes_sent += n;
}

/* Userspace mode: plaintext of the send in progress encrypted into c->enc. It counts as sent
 * (info.bytes_sent) only once its ciphertext is on the wire, so that an application that logs
 * what was delivered when a connection breaks does not count what never left. */
static inline void encrypted(struct ktla_conn *c, size_t n)
{
    c->sdone += n;
    c->enc_plain += n;
}

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
        SSL_free(c->ssl);
    if (c->early)
        OPENSSL_clear_free(c->early, c->early_len);
    free(c->raw); /* ciphertext only: nothing to wipe */
    free(c->enc);
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

static bool submit(struct ktla_conn *c, struct io_uring_sqe *sqe, struct ktla_op *op,
                   enum ktla_op_kind kind)
{
    op->kind = kind;
    ktla_ring_tag(sqe, op);
    c->inflight++;
    return true;
}

/* ---- receiving */

static void recv_done(struct ktla_conn *c, ssize_t result)
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
    submit(c, sqe, &c->rop, KTLA_OP_RECV);
    return 0;
}

static int recv_submit_socket(struct ktla_conn *c, void *buf, size_t len)
{
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_recv(sqe, c->fd, buf, len, 0);
    submit(c, sqe, &c->rop, KTLA_OP_RECV);
    return 0;
}

/*
 * Userspace mode: what OpenSSL wrote while reading goes out now. That is an alert: the warning
 * no_renegotiation for a TLS 1.2 ClientHello, after which the connection goes on (the client
 * waits for it), or a fatal one before the connection ends. A few bytes into a socket whose
 * sends are all complete; while a send is in flight they stay in the memory BIO, and the next
 * encryption takes them along, in order. With the transmit side in the kernel, OpenSSL's write
 * state is not the one on the wire, and nothing is sent.
 */
static void us_flush_alerts(struct ktla_conn *c)
{
    uint8_t buf[256];
    BIO *wbio = SSL_get_wbio(c->ssl);

    if (c->sbusy || c->info.tx_mode != KTLA_MODE_USERSPACE || !BIO_ctrl_pending(wbio))
        return;
    while (BIO_ctrl_pending(wbio)) {
        int n = BIO_read(wbio, buf, sizeof(buf));
        if (n <= 0)
            break;
        (void)!send(c->fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
}

/* Userspace mode: hands out what OpenSSL can decrypt, else asks the socket for ciphertext. */
static void us_recv_step(struct ktla_conn *c)
{
    int n = SSL_read(c->ssl, c->rbuf, (int)(c->rlen > INT32_MAX ? INT32_MAX : c->rlen));
    if (n <= 0)
        us_flush_alerts(c);
    if (n > 0)
        return recv_done(c, n);
    switch (SSL_get_error(c->ssl, n)) {
    case SSL_ERROR_WANT_READ:
        break;
    case SSL_ERROR_ZERO_RETURN:
        c->peer_closed = true;
        return recv_done(c, 0);
    default: {
        /* A fatal alert from the peer shows up as an SSL error whose reason is the alert. */
        unsigned long e = ERR_peek_last_error();
        ERR_clear_error();
        return recv_done(c, ERR_GET_REASON(e) >= SSL_AD_REASON_OFFSET ? KTLA_EALERT : KTLA_ETLS);
    }
    }
    if (!c->raw) {
        c->raw = malloc(RAW_CAP);
        if (!c->raw)
            return recv_done(c, -ENOMEM);
        c->raw_cap = RAW_CAP;
    }
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return recv_done(c, -EBUSY);
    io_uring_prep_recv(sqe, c->fd, c->raw, c->raw_cap, 0);
    submit(c, sqe, &c->rop, KTLA_OP_RAW_RECV);
}

static void on_raw_recv(struct ktla_conn *c, int res)
{
    if (c->state != KTLA_CONN_ESTABLISHED) {
        c->rbusy = false;
        return;
    }
    if (res <= 0)
        return recv_done(c, res == 0 ? KTLA_ETRUNCATED : res);
    if (BIO_write(SSL_get_rbio(c->ssl), c->raw, res) != res)
        return recv_done(c, -ENOMEM);
    us_recv_step(c);
}

static void rekey_tx(struct ktla_conn *c);

/*
 * Kernel mode: an alert now, without waiting (a few bytes; a socket too full to take them loses
 * them, and the connection ends all the same). After the kernel failed to open a record it sets
 * the socket's error (EBADMSG, EMSGSIZE...), and kernel TLS refuses every send while it is set;
 * reading SO_ERROR clears it, and the transmit side, which never failed, sends the alert. With
 * the transmit side in userspace (one direction only in the kernel) OpenSSL has no call that
 * sends an arbitrary alert: none is sent.
 */
static void kernel_alert(struct ktla_conn *c, uint8_t level, uint8_t desc)
{
    const uint8_t alert[2] = {level, desc};

    if (c->info.tx_mode != KTLA_MODE_KERNEL || c->fatal_sent)
        return;
    for (int i = 0; i < 2; i++) {
        ssize_t n = ktla_ktls_send_record(c->fd, KTLA_RT_ALERT, alert, sizeof(alert),
                                          MSG_DONTWAIT);
        if (n == (ssize_t)sizeof(alert) || n == -EAGAIN)
            break;
        int err;
        socklen_t len = sizeof(err);
        ktla_sys.getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    }
    if (level == 2) {
        c->fatal_sent = true;
        /* The FIN right behind it: the client learns the end from the alert, not from the
         * reset that closing over the unread bad record may cause. */
        shutdown(c->fd, SHUT_WR);
    }
}

/* Acts on one row of the alert table (alert.c): true when the connection goes on, and then the
 * caller carries on receiving; false when the receive ended with the row's code. */
static bool kernel_event(struct ktla_conn *c, enum ktla_event ev)
{
    const struct ktla_event_answer *a = ktla_event_answer(c->info.version, ev);

    if (a->alert_level)
        kernel_alert(c, a->alert_level, a->alert_desc);
    if (!a->ends)
        return true;
    if (ev == KTLA_EV_ALERT_CLOSE_NOTIFY)
        c->peer_closed = true;
    recv_done(c, a->code);
    return false;
}

/* Kernel mode: a receive failed; the errors that are the peer's records get their alert. */
static void kernel_rx_error(struct ktla_conn *c, int code)
{
    switch (code) {
    case KTLA_EBADMAC:
        kernel_event(c, KTLA_EV_BAD_MAC);
        return;
    case KTLA_ERECORD_OVERFLOW:
        kernel_event(c, KTLA_EV_OVERFLOW);
        return;
    case KTLA_EBADVERSION:
        kernel_event(c, KTLA_EV_BAD_VERSION);
        return;
    default:
        recv_done(c, code);
    }
}

static void kernel_recv_again(struct ktla_conn *c)
{
    if (recv_submit_socket(c, c->rbuf, c->rlen) < 0)
        recv_done(c, -EBUSY);
}

/*
 * A TLS 1.3 KeyUpdate from the peer in kernel mode (RFC 8446 §4.6.3). Kernels from 6.14 stop
 * decrypting after it until they get the next receive key; older ones cannot take one, and the
 * connection cannot go on. The update is invisible to the application: its receive continues.
 */
static void kernel_key_update(struct ktla_conn *c, uint8_t request_update)
{
    struct ktla_rekey *rk = c->rk;
    struct ktla_key k;
    int ret;

    if (!rk)
        return recv_done(c, KTLA_ENOREKEY);
    /* A legitimate peer updates after hundreds of gigabytes; a storm only costs us CPU. */
    uint64_t now = ktla_now_ns();
    if (now - rk->window_start_ns > REKEY_WINDOW_NS) {
        rk->window_start_ns = now;
        rk->window_count = 0;
    }
    if (++rk->window_count > REKEY_MAX_PER_WINDOW)
        return recv_done(c, KTLA_EREKEY_LIMIT);
    ret = ktla_secrets_update(&rk->sec, KTLA_DIR_RX, &k);
    if (ret == 0)
        ret = ktla_ktls_install(c->fd, KTLA_DIR_RX, &k);
    ktla_key_wipe(&k);
    if (ret < 0)
        return recv_done(c, ret == KTLA_EALREADY ? KTLA_ENOREKEY : ret);
    c->info.key_updates_rx++;
    if (request_update == 1) { /* update_requested: ours goes out before anything else we send */
        rk->tx_due = true;
        rekey_tx(c);
    }
    kernel_recv_again(c);
}

/* Kernel mode, a handshake record: its messages in turn (they may also arrive in pieces). */
static void kernel_handshake_record(struct ktla_conn *c, const uint8_t *p, size_t n)
{
    size_t off = 0;
    do {
        enum ktla_event ev;
        uint8_t request_update = 0;
        off += ktla_hs_reader_feed(&c->hsr, p + off, n - off, &ev, &request_update);
        if (ev == KTLA_EV_COUNT)
            break; /* the message goes on in the next record */
        /* A KeyUpdate ends its record (the reader checked), so nothing follows it here. */
        if (ev == KTLA_EV_KEY_UPDATE && c->info.version == KTLA_TLS1_3)
            return kernel_key_update(c, request_update);
        if (!kernel_event(c, ev))
            return;
    } while (off < n);
    kernel_recv_again(c);
}

/* Kernel mode: the next record is not data. Read it with its type and act on it. */
static void kernel_control_record(struct ktla_conn *c)
{
    uint8_t buf[KTLA_RECORD_MAX], type;
    ssize_t n = ktla_ktls_recv_record(c->fd, buf, sizeof(buf), &type, MSG_DONTWAIT);
    enum ktla_event ev;

    if (n < 0)
        return kernel_rx_error(c, (int)n);
    /* RFC 8446 §5.1: no other record inside a handshake message that arrives in pieces. */
    if (ktla_hs_reader_busy(&c->hsr) && type != KTLA_RT_HANDSHAKE) {
        kernel_event(c, KTLA_EV_HS_INTERLEAVED);
        return;
    }
    switch (type) {
    case KTLA_RT_HANDSHAKE:
        return kernel_handshake_record(c, buf, (size_t)n);
    case KTLA_RT_ALERT:
        if (n == 0)
            ev = KTLA_EV_ALERT_EMPTY;
        else if (n != 2)
            ev = KTLA_EV_ALERT_MALFORMED;
        else if (buf[1] == KTLA_AD_CLOSE_NOTIFY)
            ev = KTLA_EV_ALERT_CLOSE_NOTIFY;
        else if (buf[1] == KTLA_AD_USER_CANCELED && (buf[0] == 1 || c->info.version == KTLA_TLS1_3))
            ev = KTLA_EV_ALERT_USER_CANCELED;
        else
            ev = buf[0] == 1 ? KTLA_EV_ALERT_WARNING : KTLA_EV_ALERT_FATAL;
        break;
    case KTLA_RT_CHANGE_CIPHER_SPEC:
        ev = KTLA_EV_CCS;
        break;
    case KTLA_RT_APPLICATION_DATA:
        /* A plain receive said the next record was not data; should the kernel still hand
         * data here, it goes where the receive wanted it. */
        if ((size_t)n > c->rlen)
            return recv_done(c, KTLA_EUNEXPECTED);
        memcpy(c->rbuf, buf, (size_t)n);
        return recv_done(c, n);
    default:
        ev = KTLA_EV_UNKNOWN_TYPE;
        break;
    }
    if (kernel_event(c, ev))
        kernel_recv_again(c);
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
        return recv_done(c, (ssize_t)n);
    }
    if (c->peer_closed)
        return recv_done(c, 0);

    if (c->info.rx_mode == KTLA_MODE_USERSPACE)
        return us_recv_step(c);
    if (res > 0 && ktla_hs_reader_busy(&c->hsr)) { /* data inside a handshake message */
        kernel_event(c, KTLA_EV_HS_INTERLEAVED);
        return;
    }
    if (res > 0)
        return recv_done(c, res);
    if (res == 0)
        return recv_done(c, c->peer_closed ? 0 : KTLA_ETRUNCATED);
    if (res == -EIO)
        return kernel_control_record(c);
    kernel_rx_error(c, ktla_ktls_error(-res, KTLA_OP_IO));
}

/*
 * Userspace mode, a connection gone idle (ktla_conn_trim): gives back the buffers the last
 * requests used (the receive buffer, the ciphertext and file buffers, and the memory BIOs, which
 * only ever grow), tens of kilobytes per connection. Each comes back when it is needed.
 */
static void us_trim(struct ktla_conn *c)
{
    free(c->raw);
    c->raw = NULL;
    c->raw_cap = 0;
    if (c->sbusy || !c->ssl)
        return;
    free(c->enc);
    c->enc = NULL;
    c->enc_cap = c->enc_len = c->enc_off = 0;
    free(c->chunk); /* file contents, no secret (see ktla_conn_destroy) */
    c->chunk = NULL;
    BIO *rbio = SSL_get_rbio(c->ssl), *wbio = SSL_get_wbio(c->ssl);
    if (BIO_ctrl_pending(rbio) == 0 && BIO_ctrl_pending(wbio) == 0) {
        BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
        if (r && w) {
            BIO_set_mem_eof_return(r, -1); /* empty means "more later", as in the handshake */
            SSL_set_bio(c->ssl, r, w);     /* frees the old pair */
        } else {
            BIO_free(r);
            BIO_free(w);
        }
    }
}

void ktla_conn_trim(struct ktla_conn *c)
{
    /* A poll (recv_ready) holds no buffer; any other receive may be reading into raw. */
    if (!c || c->state != KTLA_CONN_ESTABLISHED || !c->ssl || c->sbusy ||
        (c->rbusy && c->rop.kind != KTLA_OP_RECV_READY))
        return;
    us_trim(c);
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
    submit(c, sqe, &c->rop, KTLA_OP_RECV_READY);
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
    if (c->early || c->peer_closed || c->info.rx_mode == KTLA_MODE_USERSPACE)
        ret = recv_submit_nop(c);
    else
        ret = recv_submit_socket(c, buf, len);
    if (ret < 0)
        return ret;
    c->rbusy = true;
    return 0;
}

/* ---- sending: buffers and files */

static void send_done(struct ktla_conn *c, ssize_t result)
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
        rekey_tx(c);
    if (c->state == KTLA_CONN_ESTABLISHED)
        cb(c, result, c->sarg);
}

static bool submit_send_flags(struct ktla_conn *c, const void *buf, size_t len, int flags)
{
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return false;
    io_uring_prep_send(sqe, c->fd, buf, len, MSG_NOSIGNAL | flags);
    return submit(c, sqe, &c->wop, KTLA_OP_SEND);
}

static bool submit_send(struct ktla_conn *c, const void *buf, size_t len)
{
    return submit_send_flags(c, buf, len, 0);
}

static bool submit_pollout(struct ktla_conn *c)
{
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return false;
    io_uring_prep_poll_add(sqe, c->fd, POLLOUT);
    return submit(c, sqe, &c->wop, KTLA_OP_POLLOUT);
}

static struct ktla_splice *splice_pipe(struct ktla_conn *c);
static void splice_step(struct ktla_conn *c);

#ifndef __NR_cachestat
#define __NR_cachestat 451 /* Linux 6.5 */
#endif
static atomic_bool no_cachestat;

/*
 * Whether the file's bytes [off, off + len) are all in the page cache. sendfile(2) reads what
 * is not synchronously, on the ring's thread, even on a non-blocking socket: one file on a slow
 * disk would stall every connection and handshake of that thread. cachestat(2) says it in one
 * call (Linux 6.5+); before it, mincore(2) over a mapping of the range (mapping reads nothing).
 * When the answer is unknown, the range counts as cached: sendfile as before.
 */
static bool range_cached(int fd, uint64_t off, size_t len)
{
    long page = sysconf(_SC_PAGESIZE);
    uint64_t start = off & ~(uint64_t)(page - 1);
    size_t span = (size_t)(off + len - start), pages = (span + (size_t)page - 1) / (size_t)page;

    if (!atomic_load_explicit(&no_cachestat, memory_order_relaxed)) {
        struct {
            uint64_t off, len;
        } range = {start, span};
        struct {
            uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
        } cs;
        if (syscall(__NR_cachestat, fd, &range, &cs, 0) == 0)
            return cs.nr_cache >= pages;
        if (errno != ENOSYS)
            return true;
        atomic_store_explicit(&no_cachestat, true, memory_order_relaxed);
    }
    void *m = mmap(NULL, span, PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (m == MAP_FAILED)
        return true;
    unsigned char vec[SENDFILE_SLICE / 4096 + 2];
    bool cached = pages <= sizeof(vec) && mincore(m, span, vec) == 0;
    for (size_t i = 0; cached && i < pages; i++)
        cached = vec[i] & 1;
    munmap(m, span);
    return cached || pages > sizeof(vec);
}

/* Kernel mode: sendfile(2) into the TLS socket until it is full, then wait for room. A range
 * not in the page cache goes through the splice path instead, whose file reads run on the
 * kernel's io-wq threads: a cold file then costs that connection time, not its worker. */
static void kernel_sendfile_step(struct ktla_conn *c)
{
    size_t slice = 0;

    while (c->sdone < c->slen) {
        off_t off = (off_t)(c->file_off + c->sdone);
        size_t left = c->slen - c->sdone;
        size_t next = left < SENDFILE_SLICE ? left : SENDFILE_SLICE;
        if (!range_cached(c->file_fd, (uint64_t)off, next) && splice_pipe(c)) {
            c->via_pipe = true;
            c->info.cold_sends++;
            return splice_step(c);
        }
        ssize_t n = sendfile(c->fd, c->file_fd, &off, next);
        if (n > 0) {
            sent(c, (size_t)n);
            slice += (size_t)n;
            /* Yield now and then, so one large file does not starve other connections. */
            if (slice >= SENDFILE_SLICE && c->sdone < c->slen) {
                if (!submit_pollout(c))
                    send_done(c, -EBUSY);
                return;
            }
            continue;
        }
        if (n == 0) /* the file is shorter than promised */
            return send_done(c, -ENODATA);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            if (!submit_pollout(c))
                send_done(c, -EBUSY);
            return;
        }
        return send_done(c, ktla_ktls_error(errno, KTLA_OP_IO));
    }
    send_done(c, (ssize_t)c->slen);
}

/*
 * Kernel mode, splice path: each step moves up to a pipe's worth, file -> pipe -> socket, as two
 * linked io_uring splices, so the ring's thread only submits and the kernel's io-wq threads read
 * the file and encrypt. The step ends when both have completed (in either order); a short read
 * breaks the link and cancels the second, and what it left in the pipe goes out in the next step.
 */
static struct ktla_splice *splice_pipe(struct ktla_conn *c)
{
    if (c->sp)
        return c->sp;
    struct ktla_splice *sp = calloc(1, sizeof(*sp));
    int p[2];
    if (!sp)
        return NULL;
    /* Non-blocking: a splice that would wait on the pipe fails instead of holding a worker. */
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(sp);
        return NULL;
    }
    /* A bigger pipe means fewer steps; the system's limit (fs.pipe-max-size) may refuse it. */
    int cap = fcntl(p[1], F_SETPIPE_SZ, SPLICE_PIPE);
    if (cap < 0)
        cap = fcntl(p[1], F_GETPIPE_SZ);
    sp->r = p[0];
    sp->w = p[1];
    sp->cap = cap > 0 ? (size_t)cap : 65536;
    sp->in_op.conn = c;
    c->sp = sp;
    return sp;
}

static void splice_step(struct ktla_conn *c)
{
    struct ktla_splice *sp = c->sp;
    size_t left = c->slen - c->sdone;

    if (!left)
        return send_done(c, (ssize_t)c->slen);
    /* Both splices in one submission: flushed apart, the link would not hold. */
    if (io_uring_sq_space_left(c->ring) < 2 && io_uring_submit(c->ring) < 0)
        return send_done(c, -EBUSY);
    struct io_uring_sqe *in = NULL, *out;
    size_t n = sp->fill;
    if (!n) {
        n = left < sp->cap ? left : sp->cap;
        in = io_uring_get_sqe(c->ring);
        io_uring_prep_splice(in, c->file_fd, (int64_t)(c->file_off + c->sdone), sp->w, -1,
                             (unsigned)n, 0);
        in->flags |= IOSQE_IO_LINK;
        submit(c, in, &sp->in_op, KTLA_OP_SPLICE_IN);
    }
    out = io_uring_get_sqe(c->ring); /* there is room: checked above */
    /* MORE while the file goes on: the kernel then fills whole records across steps. */
    io_uring_prep_splice(out, sp->r, -1, c->fd, -1, (unsigned)n, n < left ? SPLICE_F_MORE : 0);
    submit(c, out, &c->wop, KTLA_OP_SPLICE_OUT);
    sp->pending = in ? 2 : 1;
    sp->in_res = 0;
    sp->out_res = 0;
}

static void on_splice(struct ktla_conn *c, enum ktla_op_kind kind, int res)
{
    struct ktla_splice *sp = c->sp;

    if (kind == KTLA_OP_SPLICE_IN)
        sp->in_res = res;
    else
        sp->out_res = res;
    if (--sp->pending)
        return;
    if (sp->in_res > 0)
        sp->fill += (size_t)sp->in_res;
    if (sp->in_res < 0)
        return send_done(c, sp->in_res);
    if (sp->out_res > 0) {
        sp->fill -= (size_t)sp->out_res;
        sent(c, (size_t)sp->out_res);
    } else if (sp->out_res == -EAGAIN) {
        /* The socket is full: wait for room, then the pipe's bytes go out first. */
        if (!submit_pollout(c))
            send_done(c, -EBUSY);
        return;
    } else if (sp->out_res == -ECANCELED && !sp->fill) {
        /* The read got nothing: the file is shorter than promised. */
        return send_done(c, -ENODATA);
    } else if (sp->out_res == 0) {
        /* Nothing moved from a pipe that has bytes: never expected; stop rather than spin. */
        return send_done(c, -EIO);
    } else if (sp->out_res < 0 && sp->out_res != -ECANCELED) {
        return send_done(c, ktla_ktls_error(-sp->out_res, KTLA_OP_IO));
    }
    splice_step(c);
}

/* Kernel mode: starts (or resumes) the send described by sbuf/file_fd, slen and sdone. */
static bool kernel_send_start(struct ktla_conn *c)
{
    if (c->head_off < c->head_len)
        return submit_send_flags(c, c->head + c->head_off, c->head_len - c->head_off, MSG_MORE);
    if (c->file_fd >= 0 && c->via_pipe) {
        splice_step(c);
        return true;
    }
    if (c->file_fd >= 0)
        return submit_pollout(c);
    return submit_send(c, c->sbuf + c->sdone, c->slen - c->sdone);
}

/*
 * Our KeyUpdate (update_not_requested) under the current key, then the next transmit key: the
 * peer asked for it. Only while none of our sends is in flight, so that every byte after the
 * KeyUpdate goes under the new key; an application send that arrives while the KeyUpdate waits
 * for room is queued behind it.
 */
static void rekey_tx(struct ktla_conn *c)
{
    static const uint8_t key_update[5] = {24, 0, 0, 1, 0};
    struct ktla_rekey *rk = c->rk;
    struct ktla_key k;
    ssize_t ret;

    if (!rk->tx_due || rk->tx_wait || (c->sbusy && !rk->send_queued))
        return;
    ret = ktla_ktls_send_record(c->fd, KTLA_RT_HANDSHAKE, key_update, sizeof(key_update),
                                MSG_DONTWAIT);
    if (ret == -EAGAIN) {
        struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
        if (sqe) {
            io_uring_prep_poll_add(sqe, c->fd, POLLOUT);
            submit(c, sqe, &c->wop, KTLA_OP_REKEY_POLLOUT);
            rk->tx_wait = true;
            return;
        }
        ret = -EBUSY;
    }
    if (ret == (ssize_t)sizeof(key_update)) {
        ret = ktla_secrets_update(&rk->sec, KTLA_DIR_TX, &k);
        if (ret == 0)
            ret = ktla_ktls_install(c->fd, KTLA_DIR_TX, &k);
        ktla_key_wipe(&k);
    } else if (ret >= 0) {
        ret = -EIO;
    }
    rk->tx_due = false;
    if (ret == 0)
        c->info.key_updates_tx++;
    else /* the peer now expects our next key, or never got our update: the stream is over */
        shutdown(c->fd, SHUT_RDWR);
    if (rk->send_queued) {
        rk->send_queued = false;
        if (ret < 0)
            send_done(c, ret);
        else if (!kernel_send_start(c))
            send_done(c, -EBUSY);
    }
}

/* Userspace mode: plaintext to ciphertext in c->enc. */
static int us_encrypt(struct ktla_conn *c, const void *p, size_t n)
{
    if (SSL_write(c->ssl, p, (int)n) != (int)n) {
        ERR_clear_error();
        return KTLA_ETLS;
    }
    BIO *wbio = SSL_get_wbio(c->ssl);
    size_t pending = BIO_ctrl_pending(wbio);
    if (pending > c->enc_cap) {
        uint8_t *e = realloc(c->enc, pending);
        if (!e)
            return -ENOMEM;
        c->enc = e;
        c->enc_cap = pending;
    }
    c->enc_len = (size_t)BIO_read(wbio, c->enc, (int)pending);
    c->enc_off = 0;
    return 0;
}

/* Userspace mode: send what is encrypted, else encrypt the next piece (from memory or file). */
static void us_send_step(struct ktla_conn *c)
{
    if (c->enc_off < c->enc_len) {
        if (!submit_send(c, c->enc + c->enc_off, c->enc_len - c->enc_off))
            send_done(c, -EBUSY);
        return;
    }
    c->info.bytes_sent += c->enc_plain;
    c->enc_plain = 0;
    c->enc_off = c->enc_len = 0;
    if (c->sdone == c->slen)
        return send_done(c, (ssize_t)c->slen);
    size_t n = c->slen - c->sdone;
    if (n > US_CHUNK)
        n = US_CHUNK;
    if (c->file_fd >= 0) {
        if (!c->chunk && !(c->chunk = malloc(US_CHUNK)))
            return send_done(c, -ENOMEM);
        struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
        if (!sqe)
            return send_done(c, -EBUSY);
        io_uring_prep_read(sqe, c->file_fd, c->chunk, (unsigned)n, c->file_off + c->sdone);
        submit(c, sqe, &c->wop, KTLA_OP_FILE_READ);
        return;
    }
    int ret = us_encrypt(c, c->sbuf + c->sdone, n);
    if (ret < 0)
        return send_done(c, ret);
    encrypted(c, n);
    us_send_step(c);
}

static void on_file_read(struct ktla_conn *c, int res)
{
    if (res <= 0)
        return send_done(c, res == 0 ? -ENODATA : res);
    /* The first piece after a head (ktla_conn_sendfile_head) is encrypted with it: one record
     * for a small response instead of two. */
    int ret = us_encrypt(c, c->chunk, c->us_head + (size_t)res);
    if (ret < 0)
        return send_done(c, ret);
    c->enc_plain += c->us_head;
    c->us_head = 0;
    encrypted(c, (size_t)res);
    us_send_step(c);
}

static void on_send(struct ktla_conn *c, int res)
{
    if (res < 0)
        return send_done(c, res == -EIO ? KTLA_ETLS : res);
    if (c->info.tx_mode == KTLA_MODE_USERSPACE) {
        c->enc_off += (size_t)res;
        return us_send_step(c);
    }
    if (c->head_off < c->head_len) { /* the head of ktla_conn_sendfile_head */
        c->head_off += (size_t)res;
        c->info.bytes_sent += (size_t)res;
        if (c->head_off < c->head_len) {
            if (!kernel_send_start(c))
                send_done(c, -EBUSY);
            return;
        }
        /* Then the file, into the record the head opened: from here, in a completion, the
         * callback may run at once. */
        return c->via_pipe ? splice_step(c) : kernel_sendfile_step(c);
    }
    sent(c, (size_t)res);
    if (c->sdone < c->slen) {
        if (!submit_send(c, c->sbuf + c->sdone, c->slen - c->sdone))
            send_done(c, -EBUSY);
        return;
    }
    send_done(c, (ssize_t)c->slen);
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
        else if (!submit_send(c, buf, len))
            return -EBUSY;
        c->sbusy = true;
        return 0;
    }
    /* Encrypting now is fine: only the completion must not run inside this call. */
    ret = us_encrypt(c, buf, len < US_CHUNK ? len : US_CHUNK);
    if (ret < 0)
        return ret;
    encrypted(c, len < US_CHUNK ? len : US_CHUNK);
    if (!submit_send(c, c->enc, c->enc_len))
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
        c->via_pipe = c->use_splice && splice_pipe(c);
        if (c->rk && c->rk->tx_wait) {
            c->rk->send_queued = true; /* behind our KeyUpdate */
            ok = true;
        } else if (c->via_pipe) {
            c->sbusy = true; /* before the step: it may end the send at once on a full ring */
            splice_step(c);
            return 0;
        } else {
            ok = submit_pollout(c);
        }
    } else {
        if (!c->chunk && !(c->chunk = malloc(US_CHUNK)))
            return -ENOMEM;
        struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
        ok = sqe != NULL;
        if (ok) {
            io_uring_prep_read(sqe, file_fd, c->chunk, (unsigned)(count < US_CHUNK ? count : US_CHUNK),
                               offset);
            submit(c, sqe, &c->wop, KTLA_OP_FILE_READ);
        }
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
        c->via_pipe = c->use_splice && splice_pipe(c);
        if (c->rk && c->rk->tx_wait) {
            c->rk->send_queued = true; /* behind our KeyUpdate */
            ok = true;
        } else {
            ok = submit_send_flags(c, head, head_len, MSG_MORE);
        }
    } else {
        if (!c->chunk && !(c->chunk = malloc(US_CHUNK)))
            return -ENOMEM;
        memcpy(c->chunk, head, head_len);
        c->us_head = head_len;
        size_t n = US_CHUNK - head_len;
        struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
        ok = sqe != NULL;
        if (ok) {
            io_uring_prep_read(sqe, file_fd, c->chunk + head_len, (unsigned)(count < n ? count : n),
                               offset);
            submit(c, sqe, &c->wop, KTLA_OP_FILE_READ);
        }
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
 * Our close_notify, without waiting: 1 when it is out (or cannot be sent: then the FIN alone
 * ends the stream), 0 when the socket has no room for it yet. Either way what was queued before
 * it goes first: the kernel sends in order.
 */
static int linger_close_notify(struct ktla_conn *c)
{
    if (c->info.tx_mode == KTLA_MODE_KERNEL) {
        if (c->fatal_sent) /* nothing follows a fatal alert */
            return 1;
        ssize_t n = ktla_ktls_send_record(c->fd, KTLA_RT_ALERT, close_notify,
                                          sizeof(close_notify), MSG_DONTWAIT);
        return n == -EAGAIN ? 0 : 1;
    }
    if (!c->ssl)
        return 1;
    if (c->enc_off >= c->enc_len) { /* not made yet: every earlier byte is on the wire */
        c->enc_off = c->enc_len = 0;
        SSL_shutdown(c->ssl); /* writes the alert into the memory BIO; 0 or 1 both do */
        ERR_clear_error();
        BIO *wbio = SSL_get_wbio(c->ssl);
        size_t pending = BIO_ctrl_pending(wbio);
        if (!pending)
            return 1; /* OpenSSL would not (a fatal error came first) */
        if (pending > c->enc_cap) {
            uint8_t *e = realloc(c->enc, pending);
            if (!e)
                return 1;
            c->enc = e;
            c->enc_cap = pending;
        }
        c->enc_len = (size_t)BIO_read(wbio, c->enc, (int)pending);
    }
    while (c->enc_off < c->enc_len) {
        ssize_t n = send(c->fd, c->enc + c->enc_off, c->enc_len - c->enc_off,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            c->enc_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && errno == EAGAIN ? 0 : 1;
    }
    return 1;
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

static void linger_step(struct ktla_conn *c)
{
    if (!c->cn_sent && linger_close_notify(c)) {
        c->cn_sent = true;
        shutdown(c->fd, SHUT_WR);
    }
    int ret = linger_drop(c);
    if (ret == 1) /* the peer closed: if our close_notify never got out, it did not wait for it */
        return linger_end(c, c->cn_sent ? 0 : -EPIPE);
    if (ret < 0)
        return linger_end(c, ret);

    uint64_t now = ktla_now_ns();
    if (now >= c->linger_deadline_ns)
        return linger_end(c, -ETIMEDOUT);
    /* A poll and its deadline in one submission: flushed apart, the link would not hold. */
    if (io_uring_sq_space_left(c->ring) < 2 && io_uring_submit(c->ring) < 0)
        return linger_end(c, -EBUSY);
    struct io_uring_sqe *poll = io_uring_get_sqe(c->ring);
    if (!poll)
        return linger_end(c, -EBUSY);
    /* Waiting for room for close_notify, input is dropped meanwhile: a client blocked on
     * sending could otherwise never read what makes room. */
    io_uring_prep_poll_add(poll, c->fd, c->cn_sent ? POLLIN : POLLIN | POLLOUT);
    poll->flags |= IOSQE_IO_LINK;
    submit(c, poll, &c->lop, KTLA_OP_LINGER);
    uint64_t left = c->linger_deadline_ns - now;
    c->lts.tv_sec = (long long)(left / 1000000000u);
    c->lts.tv_nsec = (long long)(left % 1000000000u);
    struct io_uring_sqe *tmo = io_uring_get_sqe(c->ring); /* there is room: checked above */
    io_uring_prep_link_timeout(tmo, &c->lts, 0);
    submit(c, tmo, &c->lto, KTLA_OP_LINGER_TIMEOUT);
}

static void on_linger(struct ktla_conn *c, int res)
{
    if (res == -ECANCELED) /* the linked deadline passed */
        return linger_end(c, -ETIMEDOUT);
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
    c->cn_sent = false;
    c->linger_deadline_ns = ktla_now_ns() + (uint64_t)linger_ms * 1000000u;
    c->state = KTLA_CONN_LINGER;
    io_uring_prep_nop(sqe);
    submit(c, sqe, &c->lop, KTLA_OP_LINGER);
    return 0;
}

/* ---- closing at once, and routing */

void ktla_conn_close(struct ktla_conn *c)
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
            SSL_shutdown(c->ssl);
            char *data;
            long n = BIO_get_mem_data(SSL_get_wbio(c->ssl), &data);
            if (n > 0 && c->enc_off >= c->enc_len)
                (void)!send(c->fd, data, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
            ERR_clear_error();
        }
    }
    c->state = KTLA_CONN_CLOSING;
    /* The application may free its buffers as soon as this returns, so the kernel must be done
     * with them. (A shutdown that is over has closed its socket and holds none of them.) */
    if (c->inflight && c->fd >= 0)
        cancel_socket_ops(c);
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
        on_raw_recv(c, cqe->res);
        break;
    case KTLA_OP_RECV_READY:
        recv_done(c, cqe->res < 0 ? cqe->res : 1);
        break;
    case KTLA_OP_SEND:
        on_send(c, cqe->res);
        break;
    case KTLA_OP_POLLOUT:
        if (cqe->res < 0)
            send_done(c, cqe->res);
        else if (c->via_pipe) /* this file goes through the pipe */
            splice_step(c);
        else
            kernel_sendfile_step(c);
        break;
    case KTLA_OP_SPLICE_IN:
    case KTLA_OP_SPLICE_OUT:
        on_splice(c, op->kind, cqe->res);
        break;
    case KTLA_OP_REKEY_POLLOUT:
        c->rk->tx_wait = false;
        if (cqe->res < 0) {
            c->rk->tx_due = false;
            shutdown(c->fd, SHUT_RDWR);
            if (c->rk->send_queued) {
                c->rk->send_queued = false;
                send_done(c, cqe->res);
            }
        } else {
            rekey_tx(c);
        }
        break;
    case KTLA_OP_FILE_READ:
        on_file_read(c, cqe->res);
        break;
    default:
        break;
    }
}
