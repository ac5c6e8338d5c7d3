/*
 * Key derivation against real OpenSSL handshakes in memory. Derived keys are proven the only way
 * that counts: records OpenSSL wrote open under them, and records sealed under them are accepted
 * by OpenSSL, through the reference record layer in tests/support. The sequence numbers to
 * install with are measured here from the wire, not assumed.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <string.h>

#include "keys.h"
#include "memtls.h"
#include "testutil.h"

#define MSG_MAX 1024
#define REC_MAX (MSG_MAX + 64)

/* Handshake message types (RFC 8446 §4). */
enum { HS_NEW_SESSION_TICKET = 4, HS_KEY_UPDATE = 24 };

struct wire_count {
    uint64_t records; /* records that opened under the key: the next one's sequence number */
    size_t tickets;   /* NewSessionTicket messages in them */
};

/*
 * Walks every record on a wire and counts those that open under `k` at consecutive sequence
 * numbers from 0. Records under other keys (plaintext, TLS 1.3 handshake keys) do not open, so
 * the count is exactly the number of records the writer protected with this key so far.
 */
static struct wire_count count_under(const struct ktla_key *k, const struct memtls_wire *w)
{
    struct wire_count c = {0};
    struct ktla_key next = *k;
    uint8_t out[17 * 1024], type;
    size_t off = 0, len;

    next.seq = 0;
    for (; (len = memtls_record_len(w->data + off, w->len - off)) > 0; off += len) {
        struct ktla_key attempt = next;
        ssize_t n = tu_record_open(&attempt, w->data + off, len, out, &type);
        if (n < 0)
            continue;
        next = attempt;
        c.records++;
        if (type != KTLA_RT_HANDSHAKE)
            continue;
        for (size_t i = 0; i + 4 <= (size_t)n;
             i += 4 + ((size_t)out[i + 1] << 16 | (size_t)out[i + 2] << 8 | out[i + 3]))
            c.tickets += out[i] == HS_NEW_SESSION_TICKET;
    }
    cr_assert_eq(off, w->len, "the wire does not end on a record boundary");
    ktla_key_wipe(&next);
    return c;
}

/* Delivers what the server wrote last (TLS 1.3 tickets) and lets the client process all of it. */
static void client_catches_up(struct memtls_pair *p)
{
    uint8_t buf[64];

    memtls_pump(p);
    int r = SSL_read(p->client, buf, sizeof(buf));
    cr_assert_eq(r, -1, "no application data was sent, yet SSL_read returned %d", r);
    cr_assert_eq(SSL_get_error(p->client, r), SSL_ERROR_WANT_READ);
}

/* The client's next application record opens under `rx` at exactly rx->seq. */
static void client_record_opens(struct memtls_pair *p, const struct ktla_key *rx, uint32_t seed)
{
    uint8_t msg[MSG_MAX], rec[REC_MAX], out[REC_MAX], type;
    struct ktla_key k = *rx;

    tu_pattern(msg, sizeof(msg), seed);
    cr_assert_eq(SSL_write(p->client, msg, sizeof(msg)), (int)sizeof(msg));
    size_t len = memtls_take(p->client, rec, sizeof(rec));
    cr_assert_eq(memtls_record_len(rec, len), len, "the client wrote more than one record");

    /* One off in either direction must not open: the sequence number is really checked. */
    k.seq = rx->seq + 1;
    cr_assert_eq(tu_record_open(&k, rec, len, out, &type), -1);
    k.seq = rx->seq;
    cr_assert_eq(tu_record_open(&k, rec, len, out, &type), (ssize_t)sizeof(msg),
                 "the client's record does not open with the derived rx key at seq %llu",
                 (unsigned long long)rx->seq);
    cr_assert_eq(type, KTLA_RT_APPLICATION_DATA);
    cr_assert(memcmp(out, msg, sizeof(msg)) == 0);
    ktla_key_wipe(&k);
}

/* A record sealed under `tx` at tx->seq is accepted by the client's SSL_read. */
static void client_accepts_record(struct memtls_pair *p, const struct ktla_key *tx, uint32_t seed)
{
    uint8_t msg[MSG_MAX], rec[REC_MAX], out[REC_MAX];
    struct ktla_key k = *tx;

    tu_pattern(msg, sizeof(msg), seed);
    size_t len = tu_record_seal(&k, KTLA_RT_APPLICATION_DATA, msg, sizeof(msg), rec);
    memtls_give(p->client, rec, len);
    int r = SSL_read(p->client, out, sizeof(out));
    cr_assert_eq(r, (int)sizeof(msg),
                 "the client refused a record sealed with the derived tx "
                 "key at seq %llu (SSL_get_error %d)",
                 (unsigned long long)tx->seq, SSL_get_error(p->client, r));
    cr_assert(memcmp(out, msg, sizeof(msg)) == 0);
    ktla_key_wipe(&k);
}

/*
 * The server's derived keys, proven both ways at the sequence numbers the wire shows, which must
 * be the ones the project installs with: TLS 1.2 one record (Finished) each way; TLS 1.3 as many
 * records to the client as NewSessionTickets (`tickets`), none from it.
 */
static void prove_server_keys(struct memtls_pair *p, const struct tu_variant *v, size_t tickets)
{
    struct ktla_key tx, rx;

    cr_assert_eq(ktla_keys_derive(p->server, &tx, &rx), 0);
    cr_assert_eq(tx.version, v->version);
    cr_assert_eq(rx.version, v->version);
    cr_assert_eq(tx.cipher, v->cipher);
    cr_assert_eq(rx.cipher, v->cipher);
    cr_assert_eq(tx.seq, 0);
    cr_assert_eq(rx.seq, 0);

    client_catches_up(p);
    struct wire_count sent = count_under(&tx, &p->to_client);
    struct wire_count received = count_under(&rx, &p->to_server);
    if (v->version == KTLA_TLS1_2) {
        cr_assert_eq(sent.records, 1, "TLS 1.2 server records under tx: %llu",
                     (unsigned long long)sent.records);
        cr_assert_eq(received.records, 1, "TLS 1.2 client records under rx: %llu",
                     (unsigned long long)received.records);
    } else {
        cr_assert_eq(sent.tickets, tickets, "NewSessionTickets: %zu, expected %zu", sent.tickets,
                     tickets);
        cr_assert_eq(sent.records, tickets, "TLS 1.3 server records under tx: %llu, tickets %zu",
                     (unsigned long long)sent.records, tickets);
        cr_assert_eq(received.records, 0, "TLS 1.3 client records under rx: %llu",
                     (unsigned long long)received.records);
    }
    tx.seq = sent.records;
    rx.seq = received.records;

    client_record_opens(p, &rx, 1);
    client_accepts_record(p, &tx, 2);
    ktla_key_wipe(&tx);
    ktla_key_wipe(&rx);
}

struct ticket_case {
    struct tu_variant v;
    int tickets;
};

/* TLS 1.2 does not send tickets after Finished; TLS 1.3 with 0, 1, 2 and 4 of them. */
static struct ticket_case ticket_cases[] = {
    {{KTLA_TLS1_2, KTLA_CIPHER_AES_128_GCM}, 2},
    {{KTLA_TLS1_2, KTLA_CIPHER_AES_256_GCM}, 2},
    {{KTLA_TLS1_2, KTLA_CIPHER_CHACHA20_POLY1305}, 2},
    {{KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM}, 0},
    {{KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM}, 1},
    {{KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM}, 2},
    {{KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM}, 4},
    {{KTLA_TLS1_3, KTLA_CIPHER_AES_256_GCM}, 0},
    {{KTLA_TLS1_3, KTLA_CIPHER_AES_256_GCM}, 1},
    {{KTLA_TLS1_3, KTLA_CIPHER_AES_256_GCM}, 2},
    {{KTLA_TLS1_3, KTLA_CIPHER_AES_256_GCM}, 4},
    {{KTLA_TLS1_3, KTLA_CIPHER_CHACHA20_POLY1305}, 0},
    {{KTLA_TLS1_3, KTLA_CIPHER_CHACHA20_POLY1305}, 1},
    {{KTLA_TLS1_3, KTLA_CIPHER_CHACHA20_POLY1305}, 2},
    {{KTLA_TLS1_3, KTLA_CIPHER_CHACHA20_POLY1305}, 4},
};

ParameterizedTestParameters(keys, server_keys_carry_records_both_ways_at_measured_sequence)
{
    return cr_make_param_array(struct ticket_case, ticket_cases,
                               sizeof(ticket_cases) / sizeof(ticket_cases[0]));
}

ParameterizedTest(struct ticket_case *c, keys,
                  server_keys_carry_records_both_ways_at_measured_sequence)
{
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(c->v.version, c->v.cipher, c->tickets, &sctx, &cctx);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    memtls_pair_init(&p, cctx, sctx);
    cr_assert_eq(memtls_handshake(&p), 0, "%s: handshake failed", tu_variant_name(&c->v));

    prove_server_keys(&p, &c->v, (size_t)c->tickets);

    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

ParameterizedTestParameters(keys, resumed_handshake_derives_working_keys)
{
    return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);
}

ParameterizedTest(struct tu_variant *v, keys, resumed_handshake_derives_working_keys)
{
    struct memtls_pair first, second;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(v->version, v->cipher, 4, &sctx, &cctx);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    memtls_pair_init(&first, cctx, sctx);
    cr_assert_eq(memtls_handshake(&first), 0);
    /* A TLS 1.3 client has a resumable session only once it read a ticket. */
    client_catches_up(&first);
    SSL_SESSION *sess = SSL_get1_session(first.client);
    cr_assert(sess && SSL_SESSION_is_resumable(sess));

    memtls_pair_init(&second, cctx, sctx);
    cr_assert_eq(SSL_set_session(second.client, sess), 1);
    cr_assert_eq(memtls_handshake(&second), 0);
    cr_assert(SSL_session_reused(second.server), "%s: not resumed", tu_variant_name(v));
    cr_assert(SSL_session_reused(second.client));

    /*
     * OpenSSL issues at most one ticket after a TLS 1.3 resumption, whatever num_tickets says
     * (4 here): the transmit sequence number must be counted, never taken from the setting.
     */
    prove_server_keys(&second, v, 1);

    SSL_SESSION_free(sess);
    memtls_pair_free(&second);
    memtls_pair_free(&first);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

ParameterizedTestParameters(keys, client_keys_mirror_server_keys)
{
    return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);
}

ParameterizedTest(struct tu_variant *v, keys, client_keys_mirror_server_keys)
{
    struct ktla_key stx, srx, ctx_, crx;
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(v->version, v->cipher, 0, &sctx, &cctx);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    cr_assert_eq(ktla_keys_init_ctx(cctx), 0);
    memtls_pair_init(&p, cctx, sctx);
    cr_assert_eq(memtls_handshake(&p), 0);

    cr_assert_eq(ktla_keys_derive(p.server, &stx, &srx), 0);
    cr_assert_eq(ktla_keys_derive(p.client, &ctx_, &crx), 0);
    cr_assert(memcmp(&stx, &crx, sizeof(stx)) == 0, "server tx differs from client rx");
    cr_assert(memcmp(&srx, &ctx_, sizeof(srx)) == 0, "server rx differs from client tx");
    cr_assert(memcmp(stx.key, srx.key, sizeof(stx.key)) != 0, "both directions share a key");

    ktla_key_wipe(&stx);
    ktla_key_wipe(&srx);
    ktla_key_wipe(&ctx_);
    ktla_key_wipe(&crx);
    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static struct tu_variant tls13_variants[] = {
    {KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM},
    {KTLA_TLS1_3, KTLA_CIPHER_AES_256_GCM},
    {KTLA_TLS1_3, KTLA_CIPHER_CHACHA20_POLY1305},
};

ParameterizedTestParameters(keys, key_update_follows_openssl_both_ways)
{
    return cr_make_param_array(struct tu_variant, tls13_variants, 3);
}

/* The next generation of one direction: from the SSL, or from the copy exported before the
 * SSL's own secrets were forgotten (how a kernel connection keeps them). */
static void next_key(SSL *ssl, struct ktla_secrets *exported, enum ktla_dir dir, struct ktla_key *k)
{
    if (exported)
        cr_assert_eq(ktla_secrets_update(exported, dir, k), 0);
    else
        cr_assert_eq(ktla_keys_update(ssl, dir, k), 0);
}

/*
 * The client updates its key twice (SSL_key_update, then a write); each KeyUpdate record opens
 * under the current rx key and the data after it under the key ktla derived. Then the server side
 * does the same towards the client, which must accept it.
 */
static void key_update_both_ways(struct tu_variant *v, bool export)
{
    static const uint8_t key_update[] = {HS_KEY_UPDATE, 0, 0, 1, SSL_KEY_UPDATE_NOT_REQUESTED};
    uint8_t msg[MSG_MAX], rec[2 * REC_MAX], out[REC_MAX], type;
    struct ktla_key tx, rx, next;
    struct ktla_secrets sec, *exported = NULL;
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(v->version, v->cipher, 0, &sctx, &cctx);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    memtls_pair_init(&p, cctx, sctx);
    cr_assert_eq(memtls_handshake(&p), 0);
    cr_assert_eq(ktla_keys_derive(p.server, &tx, &rx), 0);
    if (export) {
        cr_assert_eq(ktla_keys_export(p.server, &sec), 0);
        cr_assert_eq(sec.len, v->cipher == KTLA_CIPHER_AES_256_GCM ? 48 : 32);
        ktla_keys_forget(p.server); /* from now on only the copy can follow */
        exported = &sec;
    }
    client_catches_up(&p);

    for (int gen = 1; gen <= 2; gen++) {
        tu_pattern(msg, sizeof(msg), (uint32_t)gen);
        cr_assert_eq(SSL_key_update(p.client, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
        cr_assert_eq(SSL_write(p.client, msg, sizeof(msg)), (int)sizeof(msg));
        size_t len = memtls_take(p.client, rec, sizeof(rec));
        size_t first = memtls_record_len(rec, len);
        cr_assert(first > 0 && memtls_record_len(rec + first, len - first) == len - first);

        cr_assert_eq(tu_record_open(&rx, rec, first, out, &type), (ssize_t)sizeof(key_update));
        cr_assert_eq(type, KTLA_RT_HANDSHAKE);
        cr_assert(memcmp(out, key_update, sizeof(key_update)) == 0);

        next_key(p.server, exported, KTLA_DIR_RX, &next);
        cr_assert_eq(next.seq, 0);
        cr_assert_eq(next.version, KTLA_TLS1_3);
        cr_assert_eq(next.cipher, v->cipher);
        cr_assert_eq(tu_record_open(&next, rec + first, len - first, out, &type),
                     (ssize_t)sizeof(msg), "generation %d: the client's data does not open", gen);
        cr_assert(memcmp(out, msg, sizeof(msg)) == 0);
        rx = next;
    }

    for (int gen = 1; gen <= 2; gen++) {
        size_t len = tu_record_seal(&tx, KTLA_RT_HANDSHAKE, key_update, sizeof(key_update), rec);
        next_key(p.server, exported, KTLA_DIR_TX, &next);
        memtls_give(p.client, rec, len);
        client_accepts_record(&p, &next, 10 + (uint32_t)gen);
        next.seq++;
        tx = next;
    }

    if (exported) {
        ktla_secrets_wipe(exported);
        cr_assert_eq(ktla_secrets_update(exported, KTLA_DIR_RX, &next), KTLA_EINVAL,
                     "wiped secrets must not derive");
    }
    ktla_key_wipe(&next);
    ktla_key_wipe(&tx);
    ktla_key_wipe(&rx);
    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

ParameterizedTest(struct tu_variant *v, keys, key_update_follows_openssl_both_ways)
{
    key_update_both_ways(v, false);
}

ParameterizedTestParameters(keys, exported_secrets_follow_openssl_key_updates)
{
    return cr_make_param_array(struct tu_variant, tls13_variants, 3);
}

ParameterizedTest(struct tu_variant *v, keys, exported_secrets_follow_openssl_key_updates)
{
    key_update_both_ways(v, true);
}

Test(keys, tls12_has_no_secrets_to_export)
{
    struct ktla_secrets sec;
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(KTLA_TLS1_2, KTLA_CIPHER_AES_128_GCM, 0, &sctx, &cctx);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    memtls_pair_init(&p, cctx, sctx);
    cr_assert_eq(memtls_handshake(&p), 0);
    cr_assert_eq(ktla_keys_export(p.server, &sec), KTLA_EINVAL);
    cr_assert_eq(sec.len, 0);
    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static bool all_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        if (p[i] != 0)
            return false;
    return true;
}

/* A finished handshake whose server's derive result is returned; tx and rx start as garbage. */
static int derive_after(struct memtls_pair *p, SSL_CTX *sctx, SSL_CTX *cctx, struct ktla_key *tx,
                        struct ktla_key *rx)
{
    memtls_pair_init(p, cctx, sctx);
    cr_assert_eq(memtls_handshake(p), 0);
    memset(tx, 0xa5, sizeof(*tx));
    memset(rx, 0xa5, sizeof(*rx));
    return ktla_keys_derive(p->server, tx, rx);
}

Test(keys, tls13_without_init_ctx_is_einval_and_wipes_keys)
{
    struct ktla_key tx, rx;
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM, 0, &sctx, &cctx);
    cr_assert_eq(derive_after(&p, sctx, cctx, &tx, &rx), KTLA_EINVAL);
    cr_assert(all_zero(&tx, sizeof(tx)) && all_zero(&rx, sizeof(rx)));
    cr_assert_eq(ktla_keys_update(p.server, KTLA_DIR_TX, &tx), KTLA_EINVAL);

    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

Test(keys, tls12_needs_no_keylog)
{
    struct ktla_key tx, rx;
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(KTLA_TLS1_2, KTLA_CIPHER_AES_256_GCM, 0, &sctx, &cctx);
    cr_assert_eq(derive_after(&p, sctx, cctx, &tx, &rx), 0);
    /* The 4-byte GCM salt is all of TLS 1.2's IV: the rest stays zero. */
    cr_assert(all_zero(tx.iv + 4, 8) && all_zero(rx.iv + 4, 8));
    cr_assert_eq(ktla_keys_update(p.server, KTLA_DIR_TX, &tx), KTLA_EINVAL,
                 "TLS 1.2 has no KeyUpdate");

    ktla_key_wipe(&tx);
    ktla_key_wipe(&rx);
    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

Test(keys, forget_drops_secrets_and_is_idempotent)
{
    struct ktla_key tx, rx;
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(KTLA_TLS1_3, KTLA_CIPHER_CHACHA20_POLY1305, 0, &sctx, &cctx);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    cr_assert_eq(derive_after(&p, sctx, cctx, &tx, &rx), 0);
    ktla_keys_forget(p.server);
    ktla_keys_forget(p.server);
    ktla_keys_forget(p.client); /* never had any */
    cr_assert_eq(ktla_keys_derive(p.server, &tx, &rx), KTLA_EINVAL);
    cr_assert(all_zero(&tx, sizeof(tx)) && all_zero(&rx, sizeof(rx)));
    cr_assert_eq(ktla_keys_update(p.server, KTLA_DIR_RX, &rx), KTLA_EINVAL);

    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

Test(keys, update_rejects_a_bad_direction_and_keeps_the_secret)
{
    struct ktla_key tx, rx, next;
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(KTLA_TLS1_3, KTLA_CIPHER_AES_256_GCM, 0, &sctx, &cctx);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    cr_assert_eq(derive_after(&p, sctx, cctx, &tx, &rx), 0);
    cr_assert_eq(ktla_keys_update(p.server, (enum ktla_dir)0, &next), KTLA_EINVAL);
    cr_assert(all_zero(&next, sizeof(next)));
    /* Still the first generation: the failed call did not advance anything. */
    struct ktla_key again_tx, again_rx;
    cr_assert_eq(ktla_keys_derive(p.server, &again_tx, &again_rx), 0);
    cr_assert(memcmp(&again_tx, &tx, sizeof(tx)) == 0 && memcmp(&again_rx, &rx, sizeof(rx)) == 0);

    ktla_key_wipe(&again_tx);
    ktla_key_wipe(&again_rx);
    ktla_key_wipe(&tx);
    ktla_key_wipe(&rx);
    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

Test(keys, suites_the_kernel_cannot_carry_are_enocipher)
{
    static const struct {
        uint16_t version;
        const char *suite;
    } cases[] = {
        {KTLA_TLS1_3, "TLS_AES_128_CCM_SHA256"},
        {KTLA_TLS1_2, "ECDHE-ECDSA-AES128-SHA256"},
        {KTLA_TLS1_2, "ECDHE-ECDSA-AES128-CCM"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ktla_key tx, rx;
        struct memtls_pair p;
        SSL_CTX *sctx, *cctx;

        memtls_ctx_pair(cases[i].version, KTLA_CIPHER_AES_128_GCM, 0, &sctx, &cctx);
        for (SSL_CTX *c = sctx; c; c = c == sctx ? cctx : NULL) {
            if (cases[i].version == KTLA_TLS1_3)
                cr_assert_eq(SSL_CTX_set_ciphersuites(c, cases[i].suite), 1);
            else
                cr_assert_eq(SSL_CTX_set_cipher_list(c, cases[i].suite), 1);
        }
        cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
        cr_assert_eq(derive_after(&p, sctx, cctx, &tx, &rx), KTLA_ENOCIPHER, "%s", cases[i].suite);
        cr_assert(all_zero(&tx, sizeof(tx)) && all_zero(&rx, sizeof(rx)));

        memtls_pair_free(&p);
        SSL_CTX_free(cctx);
        SSL_CTX_free(sctx);
    }
}

Test(keys, derive_before_the_handshake_completes_is_einval)
{
    struct ktla_key tx, rx;
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM, 0, &sctx, &cctx);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    memtls_pair_init(&p, cctx, sctx);
    cr_assert_eq(ktla_keys_derive(p.server, &tx, &rx), KTLA_EINVAL);
    cr_assert_eq(SSL_do_handshake(p.client), -1);
    memtls_pump(&p);
    cr_assert_eq(SSL_do_handshake(p.server), -1);
    cr_assert_eq(ktla_keys_derive(p.server, &tx, &rx), KTLA_EINVAL);
    cr_assert(all_zero(&tx, sizeof(tx)) && all_zero(&rx, sizeof(rx)));

    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static int app_traffic_lines;
static int app_lines;

static void app_keylog(const SSL *ssl, const char *line)
{
    (void)ssl;
    app_lines++;
    if (strstr(line, "_TRAFFIC_SECRET_0 "))
        app_traffic_lines++;
}

Test(keys, init_ctx_chains_to_the_application_keylog_callback_once)
{
    struct ktla_key tx, rx;
    struct memtls_pair p;
    SSL_CTX *sctx, *cctx;

    memtls_ctx_pair(KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM, 0, &sctx, &cctx);
    SSL_CTX_set_keylog_callback(sctx, app_keylog);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    cr_assert_eq(ktla_keys_init_ctx(sctx), 0);
    cr_assert_eq(derive_after(&p, sctx, cctx, &tx, &rx), 0);
    /* Every line once (TLS 1.3 logs five secrets per side), the traffic secrets among them. */
    cr_assert_eq(app_lines, 5);
    cr_assert_eq(app_traffic_lines, 2);

    ktla_key_wipe(&tx);
    ktla_key_wipe(&rx);
    memtls_pair_free(&p);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}
