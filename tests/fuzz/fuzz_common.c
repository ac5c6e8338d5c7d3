#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "context.h"

void fuzz_fail(const char *what)
{
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
}

static char *pem_of(int (*write)(BIO *, void *), void *obj)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *out;
    if (!b || !write(b, obj))
        fuzz_fail("PEM encoding");
    long n = BIO_get_mem_data(b, &data);
    out = malloc((size_t)n + 1);
    memcpy(out, data, (size_t)n);
    out[n] = 0;
    BIO_free(b);
    return out;
}

static int write_cert(BIO *b, void *x)
{
    return PEM_write_bio_X509(b, x);
}

static int write_key(BIO *b, void *k)
{
    return PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
}

SSL_CTX *fuzz_server_ssl_ctx(void)
{
    static SSL_CTX *sctx;
    if (sctx)
        return sctx;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!key || !x)
        fuzz_fail("key generation");
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_set_pubkey(x, key);
    if (!X509_sign(x, key, EVP_sha256()))
        fuzz_fail("self-signing");
    char *cert_pem = pem_of(write_cert, x), *key_pem = pem_of(write_key, key);
    struct ktla_cert_config cc = {.cert_pem = cert_pem, .key_pem = key_pem};
    struct ktla_ctx_config cfg = {.certs = &cc, .ncerts = 1};
    struct ktla_ctx *ctx;
    if (ktla_ctx_new(&cfg, &ctx) != 0)
        fuzz_fail("ktla_ctx_new");
    sctx = ktla_ctx_ssl_ctx(ctx); /* kept for the life of the process */
    ktla_ctx_free(ctx);
    free(cert_pem);
    free(key_pem);
    X509_free(x);
    EVP_PKEY_free(key);
    return sctx;
}

size_t fuzz_feed(struct ktla_hs *hs, const uint8_t *data, size_t len, const uint8_t *splits,
                 size_t nsplits, BIO *to_client)
{
    size_t off = 0, i = 0;
    while (off < len && hs->state != KTLA_HS_FAILED) {
        size_t room;
        uint8_t *buf = ktla_hs_read_buf(hs, &room);
        if (!buf || room == 0)
            break; /* done and on a record boundary: the rest is the kernel's */
        size_t n = nsplits ? (size_t)splits[i++ % nsplits] + 1 : len - off;
        if (n > room)
            n = room;
        if (n > len - off)
            n = len - off;
        memcpy(buf, data + off, n);
        off += n;
        ktla_hs_input(hs, n);
        if (hs->out_len) {
            if (to_client)
                BIO_write(to_client, hs->out, (int)hs->out_len);
            ktla_hs_output_sent(hs, hs->out_len);
        }
        if (hs->in_len > 2 * KTLA_RECORD_MAX)
            fuzz_fail("input buffer grew past two records");
    }
    return off;
}
