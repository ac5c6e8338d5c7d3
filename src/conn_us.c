/*
 * The established connection in userspace mode: OpenSSL's state from the handshake carries on,
 * reading from a memory BIO and writing its records straight into the send buffer through a BIO
 * of ktla's own; ciphertext and file reads still move through io_uring.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>

#include "conn.h"
#include "context.h"

#define RAW_CAP (KTLA_RECORD_MAX) /* userspace receive buffer: one whole record */

/* ---- the write BIO: OpenSSL's records straight into c->enc
 *
 * A memory BIO copied every record twice more (into its buffer, zeroing the room first, then
 * out to c->enc): about 6% of a download's user time. This one appends to c->enc itself, which
 * io_uring then sends. While a send from c->enc is in flight the kernel may still read it, so
 * what OpenSSL writes meanwhile (an alert written while reading: OpenSSL 3.0 answers a KeyUpdate
 * only with its next write) waits in c->side and joins c->enc, after what is there, when the
 * send completes: the order on the wire is the order OpenSSL wrote in. */

static bool enc_in_flight(const struct ktla_conn *c)
{
    return c->enc_sending && c->state == KTLA_CONN_ESTABLISHED;
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap * 2; /* appends (alerts) double it; a reserved step gets what it asked */
    if (n < need)
        n = need;
    uint8_t *p = realloc(*buf, n);
    if (!p)
        return -ENOMEM;
    *buf = p;
    *cap = n;
    return 0;
}

/* Room for n more bytes at the end of c->enc; an emptied c->enc starts over. Not while a send
 * from it is in flight. */
static int enc_reserve(struct ktla_conn *c, size_t n)
{
    if (c->enc_off >= c->enc_len)
        c->enc_off = c->enc_len = 0;
    return grow(&c->enc, &c->enc_cap, c->enc_len + n);
}

static int out_write(BIO *b, const char *data, int len)
{
    struct ktla_conn *c = BIO_get_data(b);
    size_t n = len > 0 ? (size_t)len : 0;
    if (enc_in_flight(c) || c->side_len) { /* (side_len: not joined yet, out of memory) */
        if (grow(&c->side, &c->side_cap, c->side_len + n) < 0)
            return -1;
        memcpy(c->side + c->side_len, data, n);
        c->side_len += n;
        return len;
    }
    if (enc_reserve(c, n) < 0)
        return -1;
    memcpy(c->enc + c->enc_len, data, n);
    c->enc_len += n;
    return len;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct ktla_conn *c = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
    case BIO_CTRL_WPENDING:
        return (long)(c->enc_len - c->enc_off + c->side_len);
    default:
        return 0;
    }
}

static int out_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *out_method;
static pthread_once_t out_once = PTHREAD_ONCE_INIT;

static void out_method_make(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ktla enc");
    if (m && BIO_meth_set_write(m, out_write) && BIO_meth_set_ctrl(m, out_ctrl) &&
        BIO_meth_set_create(m, out_create)) {
        out_method = m;
        return;
    }
    BIO_meth_free(m);
}

__attribute__((destructor)) static void out_method_free(void)
{
    BIO_meth_free(out_method);
}

int uconn_adopt(struct ktla_conn *c)
{
    pthread_once(&out_once, out_method_make);
    BIO *b = out_method ? BIO_new_ex(ktla_ssl_libctx(c->ssl), out_method) : NULL;
    if (!b)
        return -ENOMEM;
    BIO_set_data(b, c);
    /* What the handshake's BIO still holds goes first (its flights are normally all sent). */
    BIO *old = SSL_get_wbio(c->ssl);
    size_t pending = BIO_ctrl_pending(old);
    if (pending) {
        if (enc_reserve(c, pending) < 0) {
            BIO_free(b);
            return -ENOMEM;
        }
        c->enc_len += (size_t)BIO_read(old, c->enc + c->enc_len, (int)pending);
    }
    SSL_set0_wbio(c->ssl, b); /* frees the old one */
    return 0;
}

/* Sends what c->enc holds. */
bool uconn_submit_enc(struct ktla_conn *c)
{
    if (!conn_submit_send(c, c->enc + c->enc_off, c->enc_len - c->enc_off))
        return false;
    c->enc_sending = true;
    return true;
}

/* What waited in c->side joins c->enc, after what is there. Not while a send from c->enc is in
 * flight. */
static int join_side(struct ktla_conn *c)
{
    if (!c->side_len)
        return 0;
    if (enc_reserve(c, c->side_len) < 0)
        return -ENOMEM;
    memcpy(c->enc + c->enc_len, c->side, c->side_len);
    c->enc_len += c->side_len;
    c->side_len = 0;
    return 0;
}

/* A send from c->enc completed (res bytes of it taken, or failed): what waited in c->side
 * follows. */
void uconn_sent(struct ktla_conn *c, int res)
{
    c->enc_sending = false;
    if (res < 0)
        return;
    c->enc_off += (size_t)res;
    (void)join_side(c); /* out of memory: uconn_encrypt tries again */
}

/*
 * Userspace mode: what OpenSSL wrote while reading goes out now. That is an alert: the warning
 * no_renegotiation for a TLS 1.2 ClientHello, after which the connection goes on (the client
 * waits for it), or a fatal one before the connection ends. A few bytes into a socket whose
 * sends are all complete; while a send is in progress they wait in c->enc (or c->side) and go
 * with it, in order. With the transmit side in the kernel, OpenSSL's write state is not the one
 * on the wire, and nothing is sent.
 */
static void us_flush_alerts(struct ktla_conn *c)
{
    if (c->sbusy || c->info.tx_mode != KTLA_MODE_USERSPACE)
        return;
    (void)uconn_send_now(c); /* what is left goes before the next send's records */
}

int uconn_send_now(struct ktla_conn *c)
{
    while (c->enc_off < c->enc_len) {
        ssize_t n =
            send(c->fd, c->enc + c->enc_off, c->enc_len - c->enc_off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            c->enc_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && errno == EAGAIN ? 0 : n < 0 ? -errno : 1;
    }
    return 1;
}

/* Userspace mode: hands out what OpenSSL can decrypt, else asks the socket for ciphertext. */
void uconn_recv_step(struct ktla_conn *c)
{
    int n = SSL_read(c->ssl, c->rbuf, (int)(c->rlen > INT32_MAX ? INT32_MAX : c->rlen));
    if (n <= 0)
        us_flush_alerts(c);
    if (n > 0)
        return conn_recv_done(c, n);
    switch (SSL_get_error(c->ssl, n)) {
    case SSL_ERROR_WANT_READ:
        break;
    case SSL_ERROR_ZERO_RETURN:
        c->peer_closed = true;
        return conn_recv_done(c, 0);
    default: {
        /* A fatal alert from the peer shows up as an SSL error whose reason is the alert. */
        unsigned long e = ERR_peek_last_error();
        ERR_clear_error();
        return conn_recv_done(c,
                              ERR_GET_REASON(e) >= SSL_AD_REASON_OFFSET ? KTLA_EALERT : KTLA_ETLS);
    }
    }
    int ret = uconn_recv_submit_raw(c);
    if (ret < 0)
        conn_recv_done(c, ret);
}

bool uconn_has_pending(struct ktla_conn *c)
{
    return SSL_has_pending(c->ssl) || BIO_ctrl_pending(SSL_get_rbio(c->ssl)) > 0;
}

int uconn_recv_submit_raw(struct ktla_conn *c)
{
    if (!c->raw) {
        c->raw = malloc(RAW_CAP);
        if (!c->raw)
            return -ENOMEM;
        c->raw_cap = RAW_CAP;
    }
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_recv(sqe, c->fd, c->raw, c->raw_cap, 0);
    conn_submit(c, sqe, &c->rop, KTLA_OP_RAW_RECV);
    return 0;
}

void uconn_on_raw_recv(struct ktla_conn *c, int res)
{
    if (c->state != KTLA_CONN_ESTABLISHED) {
        c->rbusy = false;
        return;
    }
    if (res <= 0)
        return conn_recv_done(c, res == 0 ? KTLA_ETRUNCATED : res);
    if (BIO_write(SSL_get_rbio(c->ssl), c->raw, res) != res)
        return conn_recv_done(c, -ENOMEM);
    uconn_recv_step(c);
}

/*
 * Userspace mode, a connection gone idle (ktla_conn_trim): gives back the buffers the last
 * requests used (the receive buffer, the ciphertext and file buffers, and the read BIO, which
 * only ever grows), up to hundreds of kilobytes per connection. Each comes back when it is
 * needed.
 */
void uconn_trim(struct ktla_conn *c)
{
    free(c->raw);
    c->raw = NULL;
    c->raw_cap = 0;
    if (c->sbusy || !c->ssl)
        return;
    if (c->enc_off >= c->enc_len) {
        free(c->enc);
        c->enc = NULL;
        c->enc_cap = c->enc_len = c->enc_off = 0;
    }
    if (!c->side_len) {
        free(c->side);
        c->side = NULL;
        c->side_cap = 0;
    }
    free(c->chunk); /* file contents, no secret (see ktla_conn_destroy) */
    c->chunk = NULL;
    c->chunk_cap = 0;
    if (BIO_ctrl_pending(SSL_get_rbio(c->ssl)) == 0) {
        BIO *r = BIO_new_ex(ktla_ssl_libctx(c->ssl), BIO_s_mem());
        if (r) {
            BIO_set_mem_eof_return(r, -1); /* empty means "more later", as in the handshake */
            SSL_set0_rbio(c->ssl, r);      /* frees the old one */
        }
    }
    /* With the transmit side in the kernel what OpenSSL writes is never sent (us_flush_alerts):
     * its memory BIO is dropped with whatever it kept. */
    if (c->info.tx_mode != KTLA_MODE_USERSPACE) {
        BIO *w = BIO_new_ex(ktla_ssl_libctx(c->ssl), BIO_s_mem());
        if (w)
            SSL_set0_wbio(c->ssl, w);
    }
}

/* Userspace mode: plaintext to ciphertext, appended to c->enc by the write BIO. Not while a
 * send from c->enc is in flight. */
int uconn_encrypt(struct ktla_conn *c, const void *p, size_t n)
{
    /* Room for the records first (a header, a tag and a type byte or explicit nonce each, well
     * under 64 bytes), so that the BIO does not reallocate record by record. */
    if (join_side(c) < 0 || enc_reserve(c, n + (n / 16384 + 1) * 64) < 0)
        return -ENOMEM;
    if (SSL_write(c->ssl, p, (int)n) != (int)n) {
        ERR_clear_error();
        return KTLA_ETLS;
    }
    return 0;
}

/*
 * Userspace mode: a buffer for the next n bytes of a file, n cut to what it holds. A small file
 * gets a buffer of its size, not of a step's: the pages a 64 KiB buffer touched for a 1 KiB
 * response stayed resident in the heap after ktla_conn_trim freed it, about 1.5 KB per idle
 * connection.
 */
static uint8_t *us_chunk(struct ktla_conn *c, size_t want, size_t *n)
{
    size_t cap = want > US_CHUNK ? US_CHUNK_MAX : want;
    if (c->chunk_cap < cap) {
        free(c->chunk); /* nothing in it: no read is in flight between sends */
        c->chunk = malloc(cap);
        c->chunk_cap = c->chunk ? cap : 0;
        if (!c->chunk)
            return NULL;
    }
    *n = want < c->chunk_cap ? want : c->chunk_cap;
    return c->chunk;
}

size_t uconn_step(size_t remaining)
{
    return remaining < US_CHUNK_MAX ? remaining : US_CHUNK_MAX;
}

int uconn_read_file(struct ktla_conn *c, const void *head, size_t head_len)
{
    size_t n;
    if (!us_chunk(c, head_len + (c->slen - c->sdone), &n))
        return -ENOMEM;
    if (head_len)
        memcpy(c->chunk, head, head_len);
    struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_read(sqe, c->file_fd, c->chunk + head_len, (unsigned)(n - head_len),
                       c->file_off + c->sdone);
    conn_submit(c, sqe, &c->wop, KTLA_OP_FILE_READ);
    return 0;
}

/* Userspace mode: send what is encrypted, else encrypt the next piece (from memory or file). */
void uconn_send_step(struct ktla_conn *c)
{
    if (c->enc_off < c->enc_len) {
        if (!uconn_submit_enc(c))
            conn_send_done(c, -EBUSY);
        return;
    }
    c->info.bytes_sent += c->enc_plain;
    c->enc_plain = 0;
    if (c->sdone == c->slen)
        return conn_send_done(c, (ssize_t)c->slen);
    if (c->file_fd >= 0) {
        int ret = uconn_read_file(c, NULL, 0);
        if (ret < 0)
            conn_send_done(c, ret);
        return;
    }
    size_t n = uconn_step(c->slen - c->sdone);
    int ret = uconn_encrypt(c, c->sbuf + c->sdone, n);
    if (ret < 0)
        return conn_send_done(c, ret);
    conn_encrypted(c, n);
    uconn_send_step(c);
}

void uconn_on_file_read(struct ktla_conn *c, int res)
{
    if (res <= 0)
        return conn_send_done(c, res == 0 ? -ENODATA : res);
    /* The first piece after a head (ktla_conn_sendfile_head) is encrypted with it: one record
     * for a small response instead of two. */
    int ret = uconn_encrypt(c, c->chunk, c->us_head + (size_t)res);
    if (ret < 0)
        return conn_send_done(c, ret);
    c->enc_plain += c->us_head;
    c->us_head = 0;
    conn_encrypted(c, (size_t)res);
    uconn_send_step(c);
}
