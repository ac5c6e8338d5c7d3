/*
 * The I/O-free handshake core (src/handshake.c) against a real OpenSSL client in memory. The
 * server is ktla's own context (ktla_ctx_new: what ktla offers), the client is limited to one
 * version x cipher (memtls_ctx_pair). The test plays the acceptor's part: it asks the core where
 * to put socket bytes (ktla_hs_read_buf), puts the client's bytes there in chunks of a chosen size,
 * and delivers what the core wrote (hs->out) to the client.
 *
 * What every feed checks, whatever the test: the core keeps only the unfinished record at the end
 * of what it was given (every whole record went to OpenSSL, or was decrypted after the handshake),
 * OpenSSL's read BIO is empty after each call, and once the handshake is done the core asks for
 * exactly the bytes that complete the record in progress and not one more.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "context.h"
#include "handshake.h"
#include "keys.h"
#include "memtls.h"
#include "testutil.h"

#define MSG_MAX 1024
#define REC_MAX (MSG_MAX + 64)

struct run {
    struct ktla_ctx *ctx;
    SSL_CTX *cctx;
    SSL *client;
    struct ktla_hs hs;
    bool client_done;
    /* Everything the client wrote (or the test wrote as the client), and how much was fed. */
    uint8_t *wire;
    size_t wire_len, wire_cap, fed;
};

static void wire_add(struct run *r, const void *buf, size_t len)
{
    if (len == 0)
        return;
    if (r->wire_len + len > r->wire_cap) {
        size_t cap = r->wire_cap ? r->wire_cap : 4096;
        while (cap < r->wire_len + len)
            cap *= 2;
        r->wire = realloc(r->wire, cap);
        cr_assert(r->wire);
        r->wire_cap = cap;
    }
    memcpy(r->wire + r->wire_len, buf, len);
    r->wire_len += len;
}

/* Moves what the client SSL wrote onto the wire. */
static void client_flush(struct run *r)
{
    uint8_t buf[4096];
    size_t n;
    while ((n = memtls_take(r->client, buf, sizeof(buf))) > 0)
        wire_add(r, buf, n);
}

/*
 * The core on the context's SSL_CTX. A context made on a kernel without TLS (this host) does not
 * capture the TLS 1.3 secrets, since its acceptor never derives kernel keys; these tests derive
 * them, so they ask for the capture as a kernel with TLS would have it (harmless when already on).
 */
static void server_init(struct run *r)
{
    SSL_CTX *sctx = ktla_ctx_ssl_ctx(r->ctx);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    cr_assert_eq(ktla_hs_init(&r->hs, sctx), 0);
    SSL_CTX_free(sctx);
    cr_assert_eq(r->hs.state, KTLA_HS_RUNNING);
}

/*
 * A server on ktla's context `ctx` (another reference taken), or on a new one with `tickets` (its
 * tls13_tickets) when `ctx` is NULL, and a client for one variant that offers `session` when not
 * NULL.
 */
static void run_init_on(struct run *r, const struct tu_variant *v, struct ktla_ctx *ctx,
                        int tickets, SSL_SESSION *session)
{
    SSL_CTX *unused;

    memset(r, 0, sizeof(*r));
    if (ctx) {
        ktla_ctx_ref(ctx);
        r->ctx = ctx;
    } else {
        char *cert, *key;
        tu_selfsigned_pem(&cert, &key);
        struct ktla_cert_config cc = {.cert_pem = cert, .key_pem = key};
        struct ktla_ctx_config cfg = {.certs = &cc, .ncerts = 1, .tls13_tickets = tickets};
        cr_assert_eq(ktla_ctx_new(&cfg, &r->ctx), 0);
        free(cert);
        free(key);
    }

    memtls_ctx_pair(v->version, v->cipher, -1, &unused, &r->cctx);
    SSL_CTX_free(unused);
    r->client = SSL_new(r->cctx);
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    cr_assert(r->client && in && out);
    SSL_set_bio(r->client, in, out);
    SSL_set_connect_state(r->client);
    if (session)
        cr_assert_eq(SSL_set_session(r->client, session), 1);
    server_init(r);
}

static void run_init(struct run *r, const struct tu_variant *v, int tickets)
{
    run_init_on(r, v, NULL, tickets, NULL);
}

static void run_free(struct run *r)
{
    /* OpenSSL's client marks its session not resumable when freed without a close_notify. */
    if (SSL_is_init_finished(r->client))
        SSL_shutdown(r->client);
    ktla_hs_release(&r->hs);
    SSL_free(r->client);
    SSL_CTX_free(r->cctx);
    ktla_ctx_free(r->ctx);
    free(r->wire);
    memset(r, 0, sizeof(*r));
}

/* Where the last whole record at or before `off` ends in the client's wire. */
static size_t record_floor(const struct run *r, size_t off)
{
    size_t at = 0, len;
    while ((len = memtls_record_len(r->wire + at, off - at)) > 0)
        at += len;
    return at;
}

/* Where the record in progress at `off` ends (off itself when off is on a boundary). */
static size_t record_ceil(const struct run *r, size_t off)
{
    size_t floor = record_floor(r, off);
    if (floor == off)
        return off;
    if (r->wire_len - floor < 5)
        return floor + 5; /* at least the header */
    return floor + 5 + ((size_t)r->wire[floor + 3] << 8 | r->wire[floor + 4]);
}

/* The invariants of one ktla_hs_input, against the wire fed so far. */
static void check_buffering(struct run *r)
{
    struct ktla_hs *hs = &r->hs;

    if (hs->state == KTLA_HS_FAILED || hs->peer_closed)
        return;
    size_t floor = record_floor(r, r->fed);
    cr_assert_eq(hs->in_len, r->fed - floor,
                 "after %zu bytes the core holds %zu, but only %zu are of an unfinished record",
                 r->fed, hs->in_len, r->fed - floor);
    cr_assert_eq(BIO_ctrl_pending(SSL_get_rbio(hs->ssl)), 0,
                 "OpenSSL was given bytes it has not consumed");
    if (hs->state == KTLA_HS_DONE) {
        size_t room;
        cr_assert_eq(ktla_hs_tail_need(hs), record_ceil(r, r->fed) - r->fed);
        uint8_t *buf = ktla_hs_read_buf(hs, &room);
        cr_assert(buf);
        cr_assert_eq(room, ktla_hs_tail_need(hs),
                     "after the handshake it offers %zu bytes, the "
                     "record in progress needs %zu",
                     room, ktla_hs_tail_need(hs));
    }
}

/*
 * Feeds the client's wire to the core, at most `chunk` bytes per ktla_hs_input (0: as much as the
 * core offers) and at most `max` in all, until the wire is empty, the core fails, or it is done on
 * a record boundary (it then offers no room: the rest belongs to the kernel). Returns the bytes
 * fed.
 */
static size_t feed_max(struct run *r, size_t chunk, size_t max)
{
    size_t total = 0;

    while (r->fed < r->wire_len && r->hs.state != KTLA_HS_FAILED && total < max) {
        size_t room;
        uint8_t *buf = ktla_hs_read_buf(&r->hs, &room);
        if (r->hs.state == KTLA_HS_DONE && room == 0)
            break;
        cr_assert(buf && room > 0, "the core offered no room while its handshake runs");
        size_t n = r->wire_len - r->fed;
        if (chunk && n > chunk)
            n = chunk;
        if (n > max - total)
            n = max - total;
        if (n > room)
            n = room;
        memcpy(buf, r->wire + r->fed, n);
        r->fed += n;
        total += n;
        ktla_hs_input(&r->hs, n);
        check_buffering(r);
    }
    return total;
}

static size_t feed(struct run *r, size_t chunk)
{
    return feed_max(r, chunk, SIZE_MAX);
}

/* Exactly one more byte. */
static size_t feed_one(struct run *r)
{
    return feed_max(r, 1, 1);
}

/* Hands what the core wrote to the client. */
static void deliver(struct run *r)
{
    if (r->hs.out_len) {
        memtls_give(r->client, r->hs.out, r->hs.out_len);
        ktla_hs_output_sent(&r->hs, r->hs.out_len);
    }
    cr_assert_eq(r->hs.out_len, 0);
}

/* One client step: 1 when its handshake is done, 0 when it waits, -1 when it failed. */
static int client_step(struct run *r)
{
    if (r->client_done)
        return 1;
    int ret = SSL_do_handshake(r->client);
    client_flush(r);
    if (ret == 1) {
        r->client_done = true;
        return 1;
    }
    int err = SSL_get_error(r->client, ret);
    return err == SSL_ERROR_WANT_READ ? 0 : -1;
}

/* Runs both sides to the end of the handshake, feeding `chunk` bytes at a time. The client's
 * wire is fed up to the point the core reports DONE; what the core wrote last stays in hs->out. */
static void handshake(struct run *r, size_t chunk)
{
    for (int round = 0; round < 16; round++) {
        cr_assert_neq(client_step(r), -1, "the client failed: %s",
                      ERR_reason_error_string(ERR_peek_last_error()));
        feed(r, chunk);
        cr_assert_neq(r->hs.state, KTLA_HS_FAILED, "the core failed: %s, OpenSSL: %s",
                      ktla_err_name(r->hs.error), ERR_reason_error_string(r->hs.ssl_error));
        if (r->hs.state == KTLA_HS_DONE && r->client_done)
            return;
        deliver(r);
    }
    cr_assert_fail("the handshake did not finish in 16 rounds");
}

/* Lets the client process everything the core wrote (TLS 1.3 tickets) without data for it. */
static void client_catches_up(struct run *r)
{
    uint8_t buf[64];
    deliver(r);
    int n = SSL_read(r->client, buf, sizeof(buf));
    cr_assert_eq(n, -1);
    cr_assert_eq(SSL_get_error(r->client, n), SSL_ERROR_WANT_READ);
}

/* The client writes `len` bytes of application data: one record on the wire. */
static void client_write(struct run *r, const void *buf, size_t len)
{
    cr_assert_eq(SSL_write(r->client, buf, (int)len), (int)len);
    client_flush(r);
}

static size_t records_in(const uint8_t *p, size_t len)
{
    size_t n = 0, off = 0, rec;
    while ((rec = memtls_record_len(p + off, len - off)) > 0) {
        off += rec;
        n++;
    }
    cr_assert_eq(off, len, "output does not end on a record boundary");
    return n;
}

/*
 * The keys at the hand-over, proven with the reference record layer: the client accepts a record
 * sealed under tx at its sequence number, and its next record opens under rx at exactly rx.seq
 * (one more must not open).
 */
static void prove_keys(struct run *r, const struct tu_variant *v, uint64_t tx_seq, uint64_t rx_seq)
{
    struct ktla_key tx, rx, k;
    uint8_t msg[MSG_MAX], rec[REC_MAX], out[REC_MAX], type;

    cr_assert_eq(r->hs.out_len, 0, "keys asked for with handshake output unsent");
    cr_assert_eq(ktla_hs_tail_need(&r->hs), 0);
    int ret = ktla_hs_keys(&r->hs, &tx, &rx);
    cr_assert_eq(ret, 0, "ktla_hs_keys: %s", ktla_err_name(ret));
    cr_assert_eq(tx.version, v->version);
    cr_assert_eq(tx.cipher, v->cipher);
    cr_assert_eq(rx.cipher, v->cipher);
    cr_assert_eq(tx.seq, tx_seq, "tx seq %llu", (unsigned long long)tx.seq);
    cr_assert_eq(rx.seq, rx_seq, "rx seq %llu", (unsigned long long)rx.seq);

    tu_pattern(msg, sizeof(msg), 11);
    k = tx;
    size_t len = tu_record_seal(&k, KTLA_RT_APPLICATION_DATA, msg, sizeof(msg), rec);
    memtls_give(r->client, rec, len);
    int n = SSL_read(r->client, out, sizeof(out));
    cr_assert_eq(n, (int)sizeof(msg), "the client refused a record under tx at seq %llu",
                 (unsigned long long)tx.seq);
    cr_assert(memcmp(out, msg, sizeof(msg)) == 0);

    tu_pattern(msg, sizeof(msg), 12);
    cr_assert_eq(SSL_write(r->client, msg, sizeof(msg)), (int)sizeof(msg));
    len = memtls_take(r->client, rec, sizeof(rec));
    cr_assert_eq(memtls_record_len(rec, len), len);
    k = rx;
    k.seq = rx.seq + 1;
    cr_assert_eq(tu_record_open(&k, rec, len, out, &type), -1);
    k.seq = rx.seq;
    cr_assert_eq(tu_record_open(&k, rec, len, out, &type), (ssize_t)sizeof(msg),
                 "the client's record does not open under rx at seq %llu",
                 (unsigned long long)rx.seq);
    cr_assert_eq(type, KTLA_RT_APPLICATION_DATA);
    cr_assert(memcmp(out, msg, sizeof(msg)) == 0);
    ktla_key_wipe(&k);
    ktla_key_wipe(&tx);
    ktla_key_wipe(&rx);
}

/* The state right after a clean handshake with nothing behind the Finished. */
static void check_done(struct run *r, const struct tu_variant *v)
{
    cr_assert_eq(r->hs.state, KTLA_HS_DONE);
    cr_assert_eq(r->fed, r->wire_len, "the core stopped before the client's Finished");
    cr_assert_eq(r->hs.in_len, 0);
    cr_assert_eq(r->hs.plain_len, 0);
    cr_assert_eq(r->hs.rx_records_after, 0);
    cr_assert(!r->hs.peer_closed);
    cr_assert_eq(ktla_hs_tail_need(&r->hs), 0);
    cr_assert_eq(SSL_version(r->hs.ssl), v->version);
    cr_assert_eq(ktla_hs_cipher(r->hs.ssl), (int)v->cipher, "%s negotiated %s", tu_variant_name(v),
                 SSL_CIPHER_get_name(SSL_get_current_cipher(r->hs.ssl)));
    size_t room = 1;
    cr_assert(ktla_hs_read_buf(&r->hs, &room));
    cr_assert_eq(room, 0, "done on a record boundary, yet the core offers %zu bytes", room);
}

#define HS_TEST(name)                                                                              \
    ParameterizedTestParameters(handshake, name)                                                   \
    {                                                                                              \
        return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);                     \
    }                                                                                              \
    ParameterizedTest(struct tu_variant *v, handshake, name)

TestSuite(handshake, .timeout = 60);

/* ---- whole handshakes */

HS_TEST(in_one_piece)
{
    struct run r;
    run_init(&r, v, 0);
    handshake(&r, 0);
    check_done(&r, v);
    /* TLS 1.3: the default two NewSessionTickets, written under the application key while the
     * core processed the client's Finished; each is a record the kernel's TX must count. */
    if (v->version == KTLA_TLS1_3) {
        cr_assert_eq(r.hs.tx_records_after, 2);
        cr_assert_eq(records_in(r.hs.out, r.hs.out_len), 2);
    }
    client_catches_up(&r);
    prove_keys(&r, v, v->version == KTLA_TLS1_3 ? 2 : 1, v->version == KTLA_TLS1_3 ? 0 : 1);
    cr_assert_eq(SSL_session_reused(r.hs.ssl), 0);
    run_free(&r);
}

/*
 * One byte per ktla_hs_input. The core must write nothing until a whole record is in (the
 * server's flight comes out at the byte that completes the ClientHello), keep only the partial
 * record (checked after every byte), and be done exactly at the Finished's last byte.
 */
HS_TEST(byte_by_byte)
{
    struct run r;
    run_init(&r, v, 0);
    cr_assert_eq(client_step(&r), 0);
    size_t hello = memtls_record_len(r.wire, r.wire_len);
    cr_assert(hello > 5 && hello == r.wire_len, "the ClientHello is not one record");
    for (size_t i = 0; i < hello; i++) {
        cr_assert_eq(feed_one(&r), 1);
        if (i + 1 < hello) {
            cr_assert_eq(r.hs.state, KTLA_HS_RUNNING);
            cr_assert_eq(r.hs.out_len, 0, "output after %zu of %zu ClientHello bytes", i + 1,
                         hello);
        }
    }
    cr_assert_eq(r.hs.state, KTLA_HS_RUNNING);
    cr_assert_gt(r.hs.out_len, 0, "no ServerHello after the whole ClientHello");
    cr_assert_eq(r.hs.out[0], KTLA_RT_HANDSHAKE);
    deliver(&r);

    /* The client's second flight, one byte at a time: running until its very last byte. */
    cr_assert_neq(client_step(&r), -1);
    size_t start = r.fed;
    cr_assert_gt(r.wire_len, start);
    while (r.fed < r.wire_len) {
        cr_assert_eq(r.hs.state, KTLA_HS_RUNNING, "done after %zu of %zu bytes", r.fed - start,
                     r.wire_len - start);
        cr_assert_eq(feed_one(&r), 1);
    }
    cr_assert_eq(r.hs.state, KTLA_HS_DONE);
    /* TLS 1.2: the client finishes only on the server's last flight. */
    if (!r.client_done) {
        deliver(&r);
        cr_assert_eq(client_step(&r), 1);
    }
    check_done(&r, v);
    client_catches_up(&r);
    prove_keys(&r, v, v->version == KTLA_TLS1_3 ? 2 : 1, v->version == KTLA_TLS1_3 ? 0 : 1);
    run_free(&r);
}

/* Chunks that cut records everywhere (7 and 300 bytes), and a handshake that needs them all. */
HS_TEST(odd_chunks)
{
    static const size_t chunks[] = {2, 7, 300, 4096};
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        struct run r;
        run_init(&r, v, 0);
        handshake(&r, chunks[i]);
        check_done(&r, v);
        client_catches_up(&r);
        prove_keys(&r, v, v->version == KTLA_TLS1_3 ? 2 : 1, v->version == KTLA_TLS1_3 ? 0 : 1);
        run_free(&r);
    }
}

/* tls13_tickets: -1 none, 3 three; each ticket is one TX record before the hand-over. */
HS_TEST(ticket_count_sets_the_tx_sequence)
{
    static const int cfg[] = {-1, 1, 3};
    static const uint64_t want[] = {0, 1, 3};
    for (size_t i = 0; i < 3; i++) {
        struct run r;
        run_init(&r, v, cfg[i]);
        handshake(&r, 0);
        check_done(&r, v);
        if (v->version == KTLA_TLS1_3) {
            cr_assert_eq(r.hs.tx_records_after, want[i], "tickets %d: %llu records", cfg[i],
                         (unsigned long long)r.hs.tx_records_after);
            cr_assert_eq(records_in(r.hs.out, r.hs.out_len), want[i]);
        }
        client_catches_up(&r);
        prove_keys(&r, v, v->version == KTLA_TLS1_3 ? want[i] : 1,
                   v->version == KTLA_TLS1_3 ? 0 : 1);
        run_free(&r);
    }
}

/* ---- what follows the client's Finished */

/* The client's request sent with its Finished (TLS 1.3: the client is done once it wrote it). */
static void run_to_finished_with(struct run *r, const struct tu_variant *v, const char *req)
{
    run_init(r, v, 0);
    cr_assert_eq(client_step(r), 0);
    feed(r, 0);
    deliver(r);
    cr_assert_eq(client_step(r), 1, "a TLS 1.3 client is done after writing its Finished");
    client_write(r, req, strlen(req));
}

ParameterizedTestParameters(handshake, request_in_the_finished_flight_comes_out_as_plaintext)
{
    /* Only TLS 1.3 lets a full handshake's client write before the server's last flight. */
    return cr_make_param_array(struct tu_variant, (void *)(tu_variants + 3), 3);
}
ParameterizedTest(struct tu_variant *v, handshake,
                  request_in_the_finished_flight_comes_out_as_plaintext)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    struct run r;
    cr_assert_eq(v->version, KTLA_TLS1_3);
    run_to_finished_with(&r, v, req);
    size_t flight = r.wire_len - r.fed;
    cr_assert_eq(feed(&r, 0), flight, "the core did not take the whole flight in one piece");
    cr_assert_eq(r.hs.state, KTLA_HS_DONE);
    cr_assert_eq(r.hs.plain_len, strlen(req), "the request was swallowed: %zu bytes of plaintext",
                 r.hs.plain_len);
    cr_assert(memcmp(r.hs.plain, req, strlen(req)) == 0);
    cr_assert_eq(r.hs.rx_records_after, 1);
    cr_assert_eq(r.hs.in_len, 0);
    cr_assert(!r.hs.peer_closed);
    client_catches_up(&r);
    /* The kernel's RX must start after the record decrypted here. */
    prove_keys(&r, v, 2, 1);
    run_free(&r);
}

ParameterizedTestParameters(handshake, record_cut_after_the_finished_is_completed_exactly)
{
    return cr_make_param_array(struct tu_variant, (void *)(tu_variants + 3), 3);
}
/*
 * Finished, a whole request, then a second request cut anywhere in its header or body: the core
 * decrypts the first, keeps the cut one, and asks for exactly its missing bytes. Nothing after
 * that record may leave the socket: the kernel reads it.
 */
ParameterizedTest(struct tu_variant *v, handshake,
                  record_cut_after_the_finished_is_completed_exactly)
{
    static const char one[] = "first request", two[] = "second request, cut anywhere";
    static const size_t cuts[] = {1, 3, 4, 5, 6, 20};
    for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
        struct run r;
        run_to_finished_with(&r, v, one);
        client_write(&r, two, strlen(two));
        /* Hold back all but `cuts[c]` bytes of the last record. */
        size_t last_start = 0;
        for (size_t at = 0, len; (len = memtls_record_len(r.wire + at, r.wire_len - at)) > 0;
             at += len)
            last_start = at;
        size_t full_len = r.wire_len;
        r.wire_len = last_start + cuts[c];
        feed(&r, 0);
        cr_assert_eq(r.hs.state, KTLA_HS_DONE);
        cr_assert_eq(r.hs.plain_len, strlen(one));
        cr_assert(memcmp(r.hs.plain, one, strlen(one)) == 0);
        cr_assert_eq(r.hs.rx_records_after, 1);
        cr_assert_eq(r.hs.in_len, cuts[c]);
        size_t need = (cuts[c] < 5 ? 5 : full_len - last_start) - cuts[c];
        cr_assert_eq(ktla_hs_tail_need(&r.hs), need, "cut %zu: need %zu, want %zu", cuts[c],
                     ktla_hs_tail_need(&r.hs), need);
        /* The rest, offered in one piece with a third record behind it: the core takes only up
         * to the end of the second record. */
        r.wire_len = full_len;
        client_write(&r, "third", 5);
        size_t third_start = full_len;
        feed(&r, 0);
        cr_assert_eq(r.fed, third_start, "the core read %zu bytes past the second record",
                     r.fed - third_start);
        cr_assert_eq(r.hs.plain_len, strlen(one) + strlen(two));
        cr_assert(memcmp(r.hs.plain + strlen(one), two, strlen(two)) == 0);
        cr_assert_eq(r.hs.rx_records_after, 2);
        cr_assert_eq(ktla_hs_tail_need(&r.hs), 0);
        /* The third record stays on the wire; the kernel's RX starts at it, sequence 2. */
        struct ktla_key tx, rx;
        uint8_t out[64], type;
        deliver(&r);
        cr_assert_eq(ktla_hs_keys(&r.hs, &tx, &rx), 0);
        cr_assert_eq(rx.seq, 2);
        cr_assert_eq(
            tu_record_open(&rx, r.wire + third_start, r.wire_len - third_start, out, &type), 5);
        cr_assert(memcmp(out, "third", 5) == 0);
        ktla_key_wipe(&tx);
        ktla_key_wipe(&rx);
        run_free(&r);
    }
}

ParameterizedTestParameters(handshake, request_read_after_the_finished_is_left_to_the_kernel)
{
    return cr_make_param_array(struct tu_variant, (void *)(tu_variants + 3), 3);
}
/*
 * The same flight arriving one byte per read: the core is done at the Finished's last byte, on a
 * record boundary, and from then on offers no room at all. The two requests stay on the wire
 * (the socket), untouched, for the kernel's RX, which starts at sequence 0.
 */
ParameterizedTest(struct tu_variant *v, handshake,
                  request_read_after_the_finished_is_left_to_the_kernel)
{
    static const char req[] = "GET /byte HTTP/1.1\r\n\r\n";
    struct run r;
    run_to_finished_with(&r, v, req);
    size_t req_start = 0, next_start;
    for (size_t at = 0, len; (len = memtls_record_len(r.wire + at, r.wire_len - at)) > 0; at += len)
        req_start = at;
    client_write(&r, "next", 4);
    next_start = req_start + memtls_record_len(r.wire + req_start, r.wire_len - req_start);
    feed(&r, 1); /* check_buffering asserts the offered room after every byte */
    cr_assert_eq(r.hs.state, KTLA_HS_DONE);
    cr_assert_eq(r.fed, req_start, "the core read %zd bytes past the Finished",
                 (ssize_t)r.fed - (ssize_t)req_start);
    cr_assert_eq(r.hs.plain_len, 0);
    cr_assert_eq(r.hs.rx_records_after, 0);

    struct ktla_key tx, rx;
    uint8_t out[64], type;
    deliver(&r);
    cr_assert_eq(ktla_hs_keys(&r.hs, &tx, &rx), 0);
    cr_assert_eq(rx.seq, 0);
    cr_assert_eq(tu_record_open(&rx, r.wire + req_start, next_start - req_start, out, &type),
                 (ssize_t)strlen(req));
    cr_assert(memcmp(out, req, strlen(req)) == 0);
    cr_assert_eq(tu_record_open(&rx, r.wire + next_start, r.wire_len - next_start, out, &type), 4);
    cr_assert(memcmp(out, "next", 4) == 0);
    ktla_key_wipe(&tx);
    ktla_key_wipe(&rx);
    run_free(&r);
}

ParameterizedTestParameters(handshake, key_updates_with_the_finished_advance_the_kernel_keys)
{
    return cr_make_param_array(struct tu_variant, (void *)(tu_variants + 3), 3);
}
/*
 * KeyUpdates right after the client's Finished, both asking for ours, and records after each:
 * OpenSSL follows them in the core and writes our KeyUpdate both times (the second only because
 * the core makes it: OpenSSL defers a second request in a row to its next write, which never
 * comes once the kernel sends). The keys handed over are the generation reached each way, their
 * sequence numbers counted from the last update.
 */
ParameterizedTest(struct tu_variant *v, handshake,
                  key_updates_with_the_finished_advance_the_kernel_keys)
{
    struct run r;
    run_to_finished_with(&r, v, "one");
    cr_assert_eq(SSL_key_update(r.client, SSL_KEY_UPDATE_REQUESTED), 1);
    client_write(&r, "two", 3);
    cr_assert_eq(SSL_key_update(r.client, SSL_KEY_UPDATE_REQUESTED), 1);
    client_write(&r, "three", 5);
    client_write(&r, "four", 4);
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_DONE);
    cr_assert_eq(r.hs.plain_len, 15);
    cr_assert(memcmp(r.hs.plain, "onetwothreefour", 15) == 0);
    cr_assert_eq(r.hs.rx_updates, 2);
    cr_assert_eq(r.hs.tx_updates, 2, "%u KeyUpdates written for 2 requests", r.hs.tx_updates);
    cr_assert_eq(r.hs.rx_records_after, 2, "records after the last update: %llu",
                 (unsigned long long)r.hs.rx_records_after);
    cr_assert_eq(r.hs.tx_records_after, 0);
    cr_assert_eq(records_in(r.hs.out, r.hs.out_len), 4, "two tickets and two KeyUpdates");
    deliver(&r);
    client_catches_up(&r);
    prove_keys(&r, v, 0, 2);
    run_free(&r);
}

/*
 * KeyUpdates with the Finished and no data between them: 32 are followed, a 33rd fails the
 * handshake with KTLA_EREKEY_LIMIT. With data between each, 40 are followed: the count in a row
 * starts again at every record of data (the limit per 10 s, 128, is far off).
 */
Test(handshake, key_updates_in_a_row_with_the_finished_are_limited)
{
    const struct tu_variant *v = &tu_variants[3];
    static const struct {
        int updates;
        bool data_between;
        bool followed;
    } cases[] = {{32, false, true}, {33, false, false}, {40, true, true}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct run r;
        run_to_finished_with(&r, v, "x");
        for (int i = 0; i < cases[c].updates; i++) {
            cr_assert_eq(SSL_key_update(r.client, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
            if (cases[c].data_between) {
                client_write(&r, "y", 1);
            } else {
                cr_assert_eq(SSL_do_handshake(r.client), 1); /* the KeyUpdate alone, now */
                client_flush(&r);
            }
        }
        client_write(&r, "z", 1);
        feed(&r, 0);
        if (cases[c].followed) {
            cr_assert_eq(r.hs.state, KTLA_HS_DONE, "%d updates: the handshake failed with %s",
                         cases[c].updates, ktla_err_name(r.hs.error));
            cr_assert_eq(r.hs.rx_updates, (unsigned)cases[c].updates);
            cr_assert_eq(r.hs.tx_updates, 0);
            deliver(&r);
            client_catches_up(&r);
            /* After the last update: "z", and before it "y" when data came between. */
            prove_keys(&r, v, 2, cases[c].data_between ? 2 : 1);
        } else {
            cr_assert_eq(r.hs.state, KTLA_HS_FAILED);
            cr_assert_eq(r.hs.error, KTLA_EREKEY_LIMIT, "failed with %s",
                         ktla_err_name(r.hs.error));
        }
        run_free(&r);
    }
}

ParameterizedTestParameters(handshake, close_notify_with_the_finished_ends_reading)
{
    return cr_make_param_array(struct tu_variant, (void *)(tu_variants + 3), 3);
}
/* A client that sends a request and close_notify with its Finished: both seen, nothing after. */
ParameterizedTest(struct tu_variant *v, handshake, close_notify_with_the_finished_ends_reading)
{
    static const char req[] = "GET / HTTP/1.0\r\n\r\n";
    static const uint8_t junk[] = {23, 3, 3, 0, 40};
    struct run r;
    run_to_finished_with(&r, v, req);
    cr_assert_eq(SSL_shutdown(r.client), 0);
    client_flush(&r);
    size_t after_close = r.wire_len;
    wire_add(&r, junk, sizeof(junk)); /* a header whose body never comes */
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_DONE);
    cr_assert(r.hs.peer_closed);
    cr_assert_eq(r.hs.plain_len, strlen(req));
    cr_assert(memcmp(r.hs.plain, req, strlen(req)) == 0);
    cr_assert_eq(ktla_hs_tail_need(&r.hs), 0, "reading goes on after close_notify");
    size_t room = 1;
    ktla_hs_read_buf(&r.hs, &room);
    cr_assert_eq(room, 0);
    cr_assert_leq(r.fed, after_close + sizeof(junk));
    run_free(&r);
}

/* ---- resumption */

/*
 * A full handshake, then the client offers its session back to the same ktla context (its ticket
 * key opens the ticket). In both versions the resuming client writes last, so its first request
 * rides with its Finished.
 */
HS_TEST(resumes_with_a_ticket)
{
    struct run first, r;

    run_init(&first, v, 0);
    handshake(&first, 0);
    client_catches_up(&first);
    SSL_SESSION *s = SSL_get1_session(first.client);
    cr_assert(s && SSL_SESSION_is_resumable(s));

    run_init_on(&r, v, first.ctx, 0, s);
    run_free(&first);

    static const char req[] = "GET /resumed HTTP/1.1\r\n\r\n";
    cr_assert_eq(client_step(&r), 0);
    feed(&r, 0);
    deliver(&r);
    cr_assert_eq(client_step(&r), 1, "an abbreviated handshake's client ends with its Finished");
    client_write(&r, req, strlen(req));
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_DONE);
    cr_assert_eq(SSL_session_reused(r.hs.ssl), 1, "%s: not resumed", tu_variant_name(v));
    cr_assert_eq(SSL_session_reused(r.client), 1);
    cr_assert_eq(ktla_hs_cipher(r.hs.ssl), (int)v->cipher);
    cr_assert_eq(r.hs.plain_len, strlen(req));
    cr_assert(memcmp(r.hs.plain, req, strlen(req)) == 0);
    cr_assert_eq(r.hs.rx_records_after, 1);
    uint64_t tx_seq = 1, rx_seq = 2;
    if (v->version == KTLA_TLS1_3) {
        /* A resumed TLS 1.3 handshake gets one ticket (OpenSSL 3.0, measured here). */
        cr_assert_eq(r.hs.tx_records_after, 1, "%llu tickets after resumption",
                     (unsigned long long)r.hs.tx_records_after);
        tx_seq = 1;
        rx_seq = 1;
    }
    client_catches_up(&r);
    prove_keys(&r, v, tx_seq, rx_seq);
    SSL_SESSION_free(s);
    run_free(&r);
}

/* ---- what is refused */

static void expect_failure(const void *bytes, size_t len, size_t chunk, int code)
{
    struct run r;
    const struct tu_variant v = {KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM};
    run_init(&r, &v, 0);
    wire_add(&r, bytes, len);
    feed(&r, chunk);
    cr_assert_eq(r.hs.state, KTLA_HS_FAILED, "%zu-byte chunks: still %d after %zu bytes", chunk,
                 r.hs.state, r.fed);
    cr_assert_eq(r.hs.error, code, "%s instead of %s", ktla_err_name(r.hs.error),
                 ktla_err_name(code));
    size_t room = 1;
    cr_assert_null(ktla_hs_read_buf(&r.hs, &room));
    cr_assert_eq(room, 0);
    cr_assert_eq(r.hs.out_len, 0, "OpenSSL never saw these bytes, yet %zu were written",
                 r.hs.out_len);
    run_free(&r);
}

Test(handshake, plain_http_is_not_tls_at_its_first_byte)
{
    static const char get[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    expect_failure(get, strlen(get), 0, KTLA_ENOTTLS);
    expect_failure(get, strlen(get), 1, KTLA_ENOTTLS);
    /* One byte is enough to know: the core must not wait for more of a non-TLS stream. */
    expect_failure(get, 1, 1, KTLA_ENOTTLS);
}

Test(handshake, garbage_is_not_tls)
{
    static const uint8_t sslv2[] = {0x80, 0x2e, 0x01, 0x03, 0x01};  /* SSLv2-style hello */
    static const uint8_t badver[] = {0x16, 0x02, 0x00, 0x00, 0x10}; /* major version 2 */
    static const uint8_t type0[] = {0x00, 0x03, 0x01, 0x00, 0x10};  /* content type 0 */
    static const uint8_t type24[] = {0x18, 0x03, 0x03, 0x00, 0x10}; /* heartbeat */
    static const uint8_t crlf[] = {'\r', '\n'};
    expect_failure(sslv2, sizeof(sslv2), 1, KTLA_ENOTTLS);
    expect_failure(badver, sizeof(badver), 1, KTLA_ENOTTLS);
    expect_failure(badver, 2, 0, KTLA_ENOTTLS);
    expect_failure(type0, sizeof(type0), 0, KTLA_ENOTTLS);
    expect_failure(type24, sizeof(type24), 0, KTLA_ENOTTLS);
    expect_failure(crlf, sizeof(crlf), 0, KTLA_ENOTTLS);
}

Test(handshake, oversized_record_header_fails_at_once)
{
    /* 2^14 + 2048 + 1 bytes of body: one over the largest record any TLS version allows. */
    static const uint8_t over[] = {0x16, 0x03, 0x01, 0x48, 0x01};
    static const uint8_t huge[] = {0x16, 0x03, 0x01, 0xff, 0xff};
    expect_failure(over, sizeof(over), 0, KTLA_ERECORD_OVERFLOW);
    expect_failure(over, sizeof(over), 1, KTLA_ERECORD_OVERFLOW);
    expect_failure(huge, sizeof(huge), 0, KTLA_ERECORD_OVERFLOW);
}

Test(handshake, largest_record_header_waits_for_its_body)
{
    /* Exactly 2^14 + 2048: allowed; the core waits for the body and offers room for all of it. */
    static const uint8_t max[] = {0x16, 0x03, 0x01, 0x48, 0x00};
    const struct tu_variant v = {KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM};
    struct run r;
    run_init(&r, &v, 0);
    wire_add(&r, max, sizeof(max));
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_RUNNING);
    cr_assert_eq(r.hs.in_len, 5);
    cr_assert_eq(r.hs.out_len, 0);
    size_t room;
    cr_assert(ktla_hs_read_buf(&r.hs, &room));
    cr_assert_geq(room, 0x4800, "room %zu for a body of %d", room, 0x4800);
    run_free(&r);
}

Test(handshake, malformed_client_hello_fails_with_an_alert)
{
    /* A well-formed record carrying a ClientHello with an empty body: OpenSSL's decode error. */
    static const uint8_t bad[] = {0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00};
    const struct tu_variant v = {KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM};
    struct run r;
    run_init(&r, &v, 0);
    wire_add(&r, bad, sizeof(bad));
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_FAILED);
    cr_assert_eq(r.hs.error, KTLA_ETLS, "%s", ktla_err_name(r.hs.error));
    cr_assert_neq(r.hs.ssl_error, 0, "no OpenSSL error kept for the log");
    /* The alert OpenSSL wrote is left for the acceptor to send: one plaintext fatal alert. */
    cr_assert_eq(r.hs.out_len, 7, "%zu bytes of output", r.hs.out_len);
    cr_assert_eq(r.hs.out[0], KTLA_RT_ALERT);
    cr_assert_eq(r.hs.out[5], 2, "not a fatal alert");
    cr_assert_eq(r.hs.out[6], SSL_AD_DECODE_ERROR, "alert %d", r.hs.out[6]);
    run_free(&r);
}

/* A client that refuses the server's certificate (it verifies, and trusts nothing) and says so
 * with a fatal alert in its second flight: encrypted under the handshake keys in TLS 1.3,
 * plaintext in TLS 1.2. */
HS_TEST(client_alert_mid_handshake_fails_it)
{
    struct run r;
    run_init(&r, v, 0);
    SSL_set_verify(r.client, SSL_VERIFY_PEER, NULL);
    cr_assert_eq(client_step(&r), 0);
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_RUNNING);
    deliver(&r);
    cr_assert_eq(client_step(&r), -1, "the client accepted an untrusted certificate");
    ERR_clear_error();
    size_t before = r.fed;
    cr_assert_gt(r.wire_len, before, "the client sent no alert");
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_FAILED);
    cr_assert_eq(r.hs.error, KTLA_ETLS, "%s", ktla_err_name(r.hs.error));
    cr_assert_eq(ERR_GET_REASON(r.hs.ssl_error), SSL_R_TLSV1_ALERT_UNKNOWN_CA,
                 "OpenSSL's reason: %s", ERR_reason_error_string(r.hs.ssl_error));
    cr_assert_eq(r.hs.out_len, 0, "a fatal alert must not be answered");
    run_free(&r);
}

/* A plaintext fatal alert right after the ClientHello (TLS 1.2, where the server still reads
 * plaintext records): handshake_failure, reported as OpenSSL's reason for it. */
Test(handshake, crafted_alert_after_client_hello)
{
    static const uint8_t alert[] = {KTLA_RT_ALERT, 3, 3, 0, 2, 2, SSL_AD_HANDSHAKE_FAILURE};
    const struct tu_variant v = {KTLA_TLS1_2, KTLA_CIPHER_AES_256_GCM};
    struct run r;
    run_init(&r, &v, 0);
    cr_assert_eq(client_step(&r), 0);
    feed(&r, 1);
    cr_assert_eq(r.hs.state, KTLA_HS_RUNNING);
    deliver(&r);
    wire_add(&r, alert, sizeof(alert));
    feed(&r, 1);
    cr_assert_eq(r.hs.state, KTLA_HS_FAILED);
    cr_assert_eq(r.hs.error, KTLA_ETLS);
    cr_assert_eq(ERR_GET_REASON(r.hs.ssl_error), SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE,
                 "OpenSSL's reason: %s", ERR_reason_error_string(r.hs.ssl_error));
    cr_assert_eq(r.hs.out_len, 0);
    run_free(&r);
}

/*
 * A stream that stops: the core cannot see the end of the stream (the acceptor turns a 0-byte
 * read into KTLA_ETRUNCATED), so what it must do is wait without output, holding only the partial
 * record, at every cut of the ClientHello and of the client's second flight.
 */
HS_TEST(truncated_stream_waits_without_output)
{
    struct run proto;
    run_init(&proto, v, 0);
    cr_assert_eq(client_step(&proto), 0);
    size_t hello = proto.wire_len;
    for (size_t cut = 0; cut < hello; cut += (cut < 16 ? 1 : 37)) {
        struct run r;
        run_init(&r, v, 0);
        wire_add(&r, proto.wire, cut);
        feed(&r, 0);
        cr_assert_eq(r.hs.state, KTLA_HS_RUNNING, "cut at %zu of %zu", cut, hello);
        cr_assert_eq(r.hs.out_len, 0);
        cr_assert_eq(r.hs.in_len, cut);
        size_t room;
        cr_assert(ktla_hs_read_buf(&r.hs, &room) && room >= hello - cut);
        run_free(&r);
    }
    run_free(&proto);

    /* The second flight without its last byte: still running, nothing written, no keys. */
    struct run r;
    run_init(&r, v, 0);
    cr_assert_eq(client_step(&r), 0);
    feed(&r, 0);
    deliver(&r);
    cr_assert_neq(client_step(&r), -1);
    size_t end = r.wire_len;
    r.wire_len = end - 1;
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_RUNNING);
    cr_assert_eq(r.hs.out_len, 0);
    struct ktla_key tx, rx;
    cr_assert_lt(ktla_hs_keys(&r.hs, &tx, &rx), 0, "keys before the handshake is done");
    r.wire_len = end;
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_DONE);
    run_free(&r);
}

/* A TLS 1.3 application-data header over the limit after the Finished fails the tail too. */
Test(handshake, oversized_record_after_the_finished_fails)
{
    static const uint8_t over[] = {KTLA_RT_APPLICATION_DATA, 3, 3, 0x48, 0x01};
    const struct tu_variant v = {KTLA_TLS1_3, KTLA_CIPHER_CHACHA20_POLY1305};
    struct run r;
    run_init(&r, &v, 0);
    cr_assert_eq(client_step(&r), 0);
    feed(&r, 0);
    deliver(&r);
    cr_assert_eq(client_step(&r), 1);
    wire_add(&r, over, sizeof(over));
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_FAILED);
    cr_assert_eq(r.hs.error, KTLA_ERECORD_OVERFLOW);
    run_free(&r);
}

/* A record after the Finished that does not authenticate: the tail fails, nothing is handed on. */
Test(handshake, forged_record_after_the_finished_fails)
{
    const struct tu_variant v = {KTLA_TLS1_3, KTLA_CIPHER_AES_256_GCM};
    struct run r;
    run_to_finished_with(&r, &v, "this will be tampered with");
    r.wire[r.wire_len - 1] ^= 1;
    feed(&r, 0);
    cr_assert_eq(r.hs.state, KTLA_HS_FAILED);
    cr_assert_eq(r.hs.error, KTLA_ETLS, "%s", ktla_err_name(r.hs.error));
    cr_assert_eq(r.hs.plain_len, 0, "unauthenticated plaintext kept");
    run_free(&r);
}
