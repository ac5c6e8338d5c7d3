/*
 * The handshake core: SSL_accept over memory BIOs, record by record, no I/O. See handshake.h for
 * why records are fed one at a time.
 */
#include "handshake.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "context.h"
#include "keys.h"

#define IN_INITIAL 4096

int ktla_hs_init(struct ktla_hs *hs, SSL_CTX *ssl_ctx)
{
    memset(hs, 0, sizeof(*hs));
    hs->ssl = ktla_ssl_new(ssl_ctx);
    if (!hs->ssl)
        goto err;
    /* Made in the SSL's library context: OpenSSL 3.0 locks the context of each BIO made. */
    hs->rbio = BIO_new_ex(ktla_ssl_libctx(hs->ssl), BIO_s_mem());
    hs->wbio = BIO_new_ex(ktla_ssl_libctx(hs->ssl), BIO_s_mem());
    if (!hs->rbio || !hs->wbio)
        goto err_free_bios;
    /* An empty read BIO means "more later", not end of stream. */
    BIO_set_mem_eof_return(hs->rbio, -1);
    SSL_set_bio(hs->ssl, hs->rbio, hs->wbio);
    SSL_set_accept_state(hs->ssl);
    return 0;

err_free_bios:
    BIO_free(hs->rbio);
    BIO_free(hs->wbio);
    ktla_ssl_free(hs->ssl);
err:
    memset(hs, 0, sizeof(*hs));
    ERR_clear_error();
    return -ENOMEM;
}

void ktla_hs_release(struct ktla_hs *hs)
{
    if (hs->ssl)
        ktla_ssl_free(hs->ssl); /* frees both BIOs */
    if (hs->in)
        OPENSSL_clear_free(hs->in, hs->in_cap);
    free(hs->out);
    if (hs->plain)
        OPENSSL_clear_free(hs->plain, hs->plain_cap);
    memset(hs, 0, sizeof(*hs));
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (*cap >= need)
        return 0;
    size_t n = *cap ? *cap : IN_INITIAL;
    while (n < need)
        n *= 2;
    uint8_t *p = malloc(n);
    if (!p)
        return -ENOMEM;
    if (*buf) {
        memcpy(p, *buf, *cap);
        /* Handshake input and early plaintext are worth wiping; a realloc would leave copies. */
        OPENSSL_clear_free(*buf, *cap);
    }
    *buf = p;
    *cap = n;
    return 0;
}

/*
 * Length of the whole record at the front of buf, 0 if it has not all arrived, or a negative code
 * for a header no TLS peer sends: checked as soon as the header is in, so that plain HTTP or an
 * absurd length fails at once instead of waiting for bytes that never come.
 */
static long whole_record(const uint8_t *buf, size_t len)
{
    if (len >= 1 && (buf[0] < KTLA_RT_CHANGE_CIPHER_SPEC || buf[0] > KTLA_RT_APPLICATION_DATA))
        return KTLA_ENOTTLS;
    if (len >= 2 && buf[1] != 3)
        return KTLA_ENOTTLS;
    if (len < 5)
        return 0;
    size_t body = (size_t)buf[3] << 8 | buf[4];
    if (5 + body > KTLA_RECORD_MAX)
        return KTLA_ERECORD_OVERFLOW;
    return len >= 5 + body ? (long)(5 + body) : 0;
}

uint8_t *ktla_hs_read_buf(struct ktla_hs *hs, size_t *room)
{
    size_t want;

    switch (hs->state) {
    case KTLA_HS_RUNNING:
        /* Room for at least the rest of the record in progress, and never less than a page. */
        want = hs->in_len + IN_INITIAL;
        if (hs->in_len >= 5) {
            size_t rec = 5 + ((size_t)hs->in[3] << 8 | hs->in[4]);
            if (rec > hs->in_len && rec - hs->in_len > IN_INITIAL)
                want = rec;
        }
        break;
    case KTLA_HS_DONE:
        want = hs->in_len + ktla_hs_tail_need(hs);
        break;
    default:
        *room = 0;
        return NULL;
    }
    if (want > 2 * KTLA_RECORD_MAX)
        want = 2 * KTLA_RECORD_MAX;
    if (grow(&hs->in, &hs->in_cap, want) < 0) {
        *room = 0;
        return NULL;
    }
    if (hs->state == KTLA_HS_RUNNING)
        *room = hs->in_cap - hs->in_len;
    else
        *room = want - hs->in_len;
    return hs->in + hs->in_len;
}

static void fail(struct ktla_hs *hs, int code)
{
    hs->state = KTLA_HS_FAILED;
    hs->error = code;
    if (!hs->ssl_error)
        hs->ssl_error = ERR_peek_last_error();
    ERR_clear_error();
}

/* Moves what OpenSSL wrote into hs->out. */
static int drain_output(struct ktla_hs *hs)
{
    char *data;
    long n = BIO_get_mem_data(hs->wbio, &data);

    if (n <= 0)
        return 0;
    if (hs->out_len + (size_t)n > hs->out_cap) {
        size_t cap = hs->out_cap ? hs->out_cap : IN_INITIAL;
        while (cap < hs->out_len + (size_t)n)
            cap *= 2;
        uint8_t *p = realloc(hs->out, cap);
        if (!p)
            return -ENOMEM;
        hs->out = p;
        hs->out_cap = cap;
    }
    memcpy(hs->out + hs->out_len, data, (size_t)n);
    hs->out_len += (size_t)n;
    (void)BIO_reset(hs->wbio);
    return 0;
}

static uint64_t count_records(const uint8_t *p, size_t len)
{
    uint64_t n = 0;
    for (size_t off = 0; off + 5 <= len; n++)
        off += 5 + ((size_t)p[off + 3] << 8 | p[off + 4]);
    return n;
}

/* Takes the whole record at the front of hs->in out of it and gives it to OpenSSL. */
static int feed_record(struct ktla_hs *hs, size_t rec)
{
    if (BIO_write(hs->rbio, hs->in, (int)rec) != (int)rec)
        return -ENOMEM;
    memmove(hs->in, hs->in + rec, hs->in_len - rec);
    hs->in_len -= rec;
    return 0;
}

/* Gives OpenSSL the next whole record: its length, 0 when none has all arrived, or -1 once the
 * handshake has failed (a header no TLS peer sends, or no memory). */
static long take_record(struct ktla_hs *hs)
{
    long rec = whole_record(hs->in, hs->in_len);
    if (rec < 0) {
        fail(hs, (int)rec);
        return -1;
    }
    if (rec > 0 && feed_record(hs, (size_t)rec) < 0) {
        fail(hs, -ENOMEM);
        return -1;
    }
    return rec;
}

static void run_handshake(struct ktla_hs *hs)
{
    while (hs->state == KTLA_HS_RUNNING) {
        if (take_record(hs) <= 0)
            return;
        size_t before = hs->out_len;
        int r = SSL_do_handshake(hs->ssl);
        int err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(hs->ssl, r);
        if (drain_output(hs) < 0)
            return fail(hs, -ENOMEM);
        if (r == 1) {
            hs->state = KTLA_HS_DONE;
            /*
             * TLS 1.3: everything written while processing the client's Finished went out under
             * the application keys (the session tickets), so it counts toward the kernel's first
             * transmit sequence number. (TLS 1.2: see ktla_hs_keys.)
             */
            if (SSL_version(hs->ssl) == TLS1_3_VERSION)
                hs->tx_records_after = count_records(hs->out + before, hs->out_len - before);
            return;
        }
        if (err != SSL_ERROR_WANT_READ)
            return fail(hs, KTLA_ETLS);
    }
}

/* Reads out the plaintext of the record just given to OpenSSL. 0, or -1 once failed. */
static int tail_record(struct ktla_hs *hs, uint8_t *chunk, size_t cap)
{
    for (;;) {
        int n = SSL_read(hs->ssl, chunk, (int)cap);
        if (n > 0) {
            if (grow(&hs->plain, &hs->plain_cap, hs->plain_len + (size_t)n) < 0) {
                fail(hs, -ENOMEM);
                return -1;
            }
            memcpy(hs->plain + hs->plain_len, chunk, (size_t)n);
            hs->plain_len += (size_t)n;
            hs->rx_in_a_row = 0;
            continue;
        }
        int err = SSL_get_error(hs->ssl, n);
        if (err == SSL_ERROR_WANT_READ)
            return 0;
        if (err == SSL_ERROR_ZERO_RETURN) {
            hs->peer_closed = true;
            return 0;
        }
        fail(hs, KTLA_ETLS);
        return -1;
    }
}

/*
 * OpenSSL's message callback, on only while the tail is decrypted: counts the KeyUpdates it reads
 * (the client's) and writes (ours, when the client asked). OpenSSL follows them in its own state,
 * and the keys the kernel gets must be the generation it has reached; no other public API says
 * that a KeyUpdate went by. The SSL_CTX is ktla's own, so no application callback is displaced.
 */
static void tail_msg(int write_p, int version, int content_type, const void *buf, size_t len,
                     SSL *ssl, void *arg)
{
    struct ktla_hs *hs = arg;
    (void)version, (void)ssl;

    if (content_type != SSL3_RT_HANDSHAKE || len < 1 ||
        ((const uint8_t *)buf)[0] != SSL3_MT_KEY_UPDATE)
        return;
    if (write_p) {
        hs->tx_updates++;
    } else {
        hs->rx_updates++;
        hs->rx_in_a_row++;
    }
}

/*
 * A KeyUpdate the client asked for that OpenSSL has not written yet: it writes one while
 * reading, but not always (a second request in a row waits for the next write), and after the
 * hand-over OpenSSL writes nothing. A write of no data makes it write just the KeyUpdate.
 */
static int owe_key_update(struct ktla_hs *hs)
{
    size_t written;

    if (SSL_get_key_update_type(hs->ssl) == SSL_KEY_UPDATE_NONE)
        return 0;
    if (SSL_write_ex(hs->ssl, "", 0, &written) == 1 &&
        SSL_get_key_update_type(hs->ssl) == SSL_KEY_UPDATE_NONE)
        return 0;
    fail(hs, KTLA_ETLS);
    return -1;
}

/*
 * After the handshake: decrypts each whole record that followed the Finished, in userspace. A
 * client may already have updated its keys there (RFC 8446 §4.6.3 lets it, right after its
 * Finished): OpenSSL follows, and writes our own KeyUpdate when asked, which goes out before the
 * hand-over. A KeyUpdate ends its record (OpenSSL refuses one that does not), so the records after
 * it, counted from zero, are the first under the next key.
 */
static void decrypt_tail(struct ktla_hs *hs)
{
    uint8_t chunk[4096];

    if (SSL_version(hs->ssl) == TLS1_3_VERSION) {
        SSL_set_msg_callback(hs->ssl, tail_msg);
        SSL_set_msg_callback_arg(hs->ssl, hs);
    }
    while (hs->state == KTLA_HS_DONE && !hs->peer_closed) {
        unsigned rx_updates = hs->rx_updates, tx_updates = hs->tx_updates;
        size_t out_before = hs->out_len;
        if (take_record(hs) <= 0)
            break;
        hs->rx_records_after++;
        if (tail_record(hs, chunk, sizeof(chunk)) < 0 || owe_key_update(hs) < 0)
            break;
        if (hs->rx_updates != rx_updates)
            hs->rx_records_after = 0;
        if (drain_output(hs) < 0) {
            fail(hs, -ENOMEM);
            break;
        }
        if (hs->tx_updates != tx_updates)
            hs->tx_records_after = 0; /* our KeyUpdate was the last record written */
        else
            hs->tx_records_after += count_records(hs->out + out_before, hs->out_len - out_before);
        if (hs->rx_in_a_row > KTLA_REKEY_MAX_IN_A_ROW ||
            hs->rx_updates > KTLA_REKEY_MAX_PER_WINDOW) {
            fail(hs, KTLA_EREKEY_LIMIT);
            break;
        }
    }
    SSL_set_msg_callback(hs->ssl, NULL);
    OPENSSL_cleanse(chunk, sizeof(chunk));
}

enum ktla_hs_state ktla_hs_input(struct ktla_hs *hs, size_t n)
{
    hs->in_len += n;
    if (hs->state == KTLA_HS_RUNNING)
        run_handshake(hs);
    if (hs->state == KTLA_HS_DONE)
        decrypt_tail(hs);
    if (hs->state == KTLA_HS_FAILED && drain_output(hs) < 0)
        hs->out_len = 0;
    return hs->state;
}

void ktla_hs_output_sent(struct ktla_hs *hs, size_t n)
{
    memmove(hs->out, hs->out + n, hs->out_len - n);
    hs->out_len -= n;
}

size_t ktla_hs_tail_need(const struct ktla_hs *hs)
{
    if (hs->state != KTLA_HS_DONE || hs->in_len == 0 || hs->peer_closed)
        return 0;
    if (hs->in_len < 5)
        return 5 - hs->in_len;
    size_t rec = 5 + ((size_t)hs->in[3] << 8 | hs->in[4]);
    return rec > hs->in_len ? rec - hs->in_len : 0;
}

int ktla_hs_cipher(const SSL *ssl)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);

    switch (c ? SSL_CIPHER_get_cipher_nid(c) : NID_undef) {
    case NID_aes_128_gcm:
        return KTLA_CIPHER_AES_128_GCM;
    case NID_aes_256_gcm:
        return KTLA_CIPHER_AES_256_GCM;
    case NID_chacha20_poly1305:
        return KTLA_CIPHER_CHACHA20_POLY1305;
    default:
        return -1;
    }
}

int ktla_hs_keys(struct ktla_hs *hs, struct ktla_key *tx, struct ktla_key *rx)
{
    int ret = ktla_keys_derive(hs->ssl, tx, rx);

    /* The generation OpenSSL reached in the tail: one step per KeyUpdate each way. */
    for (unsigned i = 0; ret == 0 && i < hs->rx_updates; i++)
        ret = ktla_keys_update(hs->ssl, KTLA_DIR_RX, rx);
    for (unsigned i = 0; ret == 0 && i < hs->tx_updates; i++)
        ret = ktla_keys_update(hs->ssl, KTLA_DIR_TX, tx);
    if (ret < 0) {
        ktla_key_wipe(tx);
        ktla_key_wipe(rx);
        return ret;
    }
    /* TLS 1.2: each side's Finished was the first record under the new keys. */
    uint64_t first = SSL_version(hs->ssl) == TLS1_3_VERSION ? 0 : 1;
    tx->seq = first + hs->tx_records_after;
    rx->seq = first + hs->rx_records_after;
    return 0;
}
