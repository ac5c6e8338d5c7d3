/*
 * Fuzzes the record-boundary logic against a real OpenSSL client: the input chooses the TLS
 * version and cipher, how many application records the client sends right behind its Finished
 * (and how long each is), and how the bytes are split into socket reads. Whatever the choice,
 * the handshake must complete, every byte of application data must come out of the handshake
 * core in order, and the count of records decrypted in userspace (which sets the kernel's
 * receive sequence number) must equal the number of records sent.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static SSL_CTX *client_ctx(unsigned variant)
{
    static SSL_CTX *ctxs[6];
    static const char *suites13[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                     "TLS_CHACHA20_POLY1305_SHA256"};
    static const char *suites12[] = {"ECDHE-ECDSA-AES128-GCM-SHA256",
                                     "ECDHE-ECDSA-AES256-GCM-SHA384",
                                     "ECDHE-ECDSA-CHACHA20-POLY1305"};
    if (ctxs[variant])
        return ctxs[variant];
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    int v13 = variant >= 3;
    SSL_CTX_set_min_proto_version(c, v13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(c, v13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_ciphersuites(c, suites13[variant % 3]);
    SSL_CTX_set_cipher_list(c, suites12[variant % 3]);
    return ctxs[variant] = c;
}

/* Moves what `from` wrote into a flat buffer. */
static size_t take(BIO *wbio, uint8_t **buf)
{
    char *p;
    long n = BIO_get_mem_data(wbio, &p);
    *buf = malloc(n > 0 ? (size_t)n : 1);
    if (n > 0)
        memcpy(*buf, p, (size_t)n);
    (void)BIO_reset(wbio);
    return n > 0 ? (size_t)n : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    unsigned variant = data[0] % 6;
    unsigned nrecs = data[1] % 8;
    if (size < 2 + nrecs)
        return 0;
    const uint8_t *lens = data + 2, *splits = data + 2 + nrecs;
    size_t nsplits = size - 2 - nrecs;
    if (nsplits > 64)
        nsplits = 64;

    struct ktla_hs hs;
    if (ktla_hs_init(&hs, fuzz_server_ssl_ctx()) != 0)
        return 0;
    SSL *cl = SSL_new(client_ctx(variant));
    BIO *crb = BIO_new(BIO_s_mem()), *cwb = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(crb, -1);
    SSL_set_bio(cl, crb, cwb);
    SSL_set_connect_state(cl);

    size_t total = 0, sent_recs = 0, rec_len[8];
    uint8_t *expect = NULL, *left = NULL;
    size_t left_len = 0;
    int client_done = 0;
    for (int round = 0; round < 16 && hs.state != KTLA_HS_FAILED; round++) {
        if (!client_done && SSL_do_handshake(cl) == 1) {
            client_done = 1;
            /* The application data rides behind the Finished when the client finishes last. */
            for (unsigned r = 0; r < nrecs; r++) {
                size_t n = (size_t)lens[r] * 61 + 1;
                expect = realloc(expect, total + n);
                for (size_t i = 0; i < n; i++)
                    expect[total + i] = (uint8_t)(r * 31 + i);
                if (SSL_write(cl, expect + total, (int)n) != (int)n)
                    fuzz_fail("client write");
                rec_len[sent_recs++] = n;
                total += n;
            }
        }
        uint8_t *wire;
        size_t n = take(cwb, &wire);
        size_t fed = fuzz_feed(&hs, wire, n, splits, nsplits, crb);
        if (fed < n) { /* the core stopped at a record boundary: the rest is the kernel's */
            left = realloc(left, left_len + n - fed);
            memcpy(left + left_len, wire + fed, n - fed);
            left_len += n - fed;
        }
        free(wire);
        if (client_done && hs.state == KTLA_HS_DONE && n == 0)
            break;
    }
    if (hs.state != KTLA_HS_DONE)
        fuzz_fail("an honest client's handshake did not complete");
    if (ktla_hs_tail_need(&hs) != 0)
        fuzz_fail("bytes owed to a record after everything was delivered");
    if (hs.rx_records_after > sent_recs)
        fuzz_fail("more records decrypted than sent");
    size_t core = 0;
    for (size_t r = 0; r < hs.rx_records_after; r++)
        core += rec_len[r];
    if (hs.plain_len != core || (core && memcmp(hs.plain, expect, core) != 0))
        fuzz_fail("application data lost, reordered or altered");
    size_t off = 0, recs = 0;
    while (off + 5 <= left_len) {
        off += 5 + ((size_t)left[off + 3] << 8 | left[off + 4]);
        recs++;
    }
    if (off != left_len || recs != sent_recs - hs.rx_records_after)
        fuzz_fail("what was left for the kernel is not the remaining whole records");
    free(left);
    free(expect);
    SSL_free(cl);
    ktla_hs_release(&hs);
    ERR_clear_error();
    return 0;
}
