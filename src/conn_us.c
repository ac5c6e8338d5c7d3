/*
 * The established connection in userspace mode: OpenSSL's state from the handshake carries on
 * over memory BIOs; ciphertext and file reads still move through io_uring.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>

#include "conn.h"

#define RAW_CAP (KTLA_RECORD_MAX) /* userspace receive buffer: one whole record */

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
 * requests used (the receive buffer, the ciphertext and file buffers, and the memory BIOs, which
 * only ever grow), tens of kilobytes per connection. Each comes back when it is needed.
 */
void uconn_trim(struct ktla_conn *c)
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

/* Userspace mode: plaintext to ciphertext in c->enc. */
int uconn_encrypt(struct ktla_conn *c, const void *p, size_t n)
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
void uconn_send_step(struct ktla_conn *c)
{
    if (c->enc_off < c->enc_len) {
        if (!conn_submit_send(c, c->enc + c->enc_off, c->enc_len - c->enc_off))
            conn_send_done(c, -EBUSY);
        return;
    }
    c->info.bytes_sent += c->enc_plain;
    c->enc_plain = 0;
    c->enc_off = c->enc_len = 0;
    if (c->sdone == c->slen)
        return conn_send_done(c, (ssize_t)c->slen);
    size_t n = c->slen - c->sdone;
    if (n > US_CHUNK)
        n = US_CHUNK;
    if (c->file_fd >= 0) {
        if (!c->chunk && !(c->chunk = malloc(US_CHUNK)))
            return conn_send_done(c, -ENOMEM);
        struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
        if (!sqe)
            return conn_send_done(c, -EBUSY);
        io_uring_prep_read(sqe, c->file_fd, c->chunk, (unsigned)n, c->file_off + c->sdone);
        conn_submit(c, sqe, &c->wop, KTLA_OP_FILE_READ);
        return;
    }
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
