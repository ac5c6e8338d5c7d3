#include "memtls.h"

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* A PEM string copied out of a memory BIO, so the caller frees it with plain free(). */
static char *bio_string(BIO *b)
{
    char *data;
    long len = BIO_get_mem_data(b, &data);
    char *s = malloc((size_t)len + 1);

    cr_assert(s);
    memcpy(s, data, (size_t)len);
    s[len] = '\0';
    return s;
}

void tu_selfsigned_pem(char **cert_pem, char **key_pem)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());

    cr_assert(pkey && x && cb && kb, "self-signed certificate: out of memory");
    X509_NAME *name = X509_get_subject_name(x);
    cr_assert(X509_set_version(x, X509_VERSION_3) == 1);
    cr_assert(ASN1_INTEGER_set(X509_get_serialNumber(x), 1) == 1);
    cr_assert(X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL);
    cr_assert(X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600) != NULL);
    cr_assert(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                         (const unsigned char *)"localhost", -1, -1, 0) == 1);
    cr_assert(X509_set_issuer_name(x, name) == 1);
    cr_assert(X509_set_pubkey(x, pkey) == 1);

    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *san = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost");
    cr_assert(san && X509_add_ext(x, san, -1) == 1);
    X509_EXTENSION_free(san);
    cr_assert(X509_sign(x, pkey, EVP_sha256()) > 0);

    cr_assert(PEM_write_bio_X509(cb, x) == 1);
    cr_assert(PEM_write_bio_PrivateKey(kb, pkey, NULL, NULL, 0, NULL, NULL) == 1);
    *cert_pem = bio_string(cb);
    *key_pem = bio_string(kb);

    BIO_free(kb);
    BIO_free(cb);
    X509_free(x);
    EVP_PKEY_free(pkey);
}

static void use_pem_cert(SSL_CTX *ctx)
{
    char *cert_pem, *key_pem;
    tu_selfsigned_pem(&cert_pem, &key_pem);

    BIO *cb = BIO_new_mem_buf(cert_pem, -1), *kb = BIO_new_mem_buf(key_pem, -1);
    cr_assert(cb && kb);
    X509 *x = PEM_read_bio_X509(cb, NULL, NULL, NULL);
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL);
    cr_assert(x && pkey, "the generated PEM does not parse back");
    cr_assert(SSL_CTX_use_certificate(ctx, x) == 1);
    cr_assert(SSL_CTX_use_PrivateKey(ctx, pkey) == 1);
    cr_assert(SSL_CTX_check_private_key(ctx) == 1);

    EVP_PKEY_free(pkey);
    X509_free(x);
    BIO_free(kb);
    BIO_free(cb);
    free(key_pem);
    free(cert_pem);
}

static void limit_ctx(SSL_CTX *ctx, uint16_t version, enum ktla_cipher cipher)
{
    static const char *const tls13[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                        "TLS_CHACHA20_POLY1305_SHA256"};
    static const char *const tls12[] = {"ECDHE-ECDSA-AES128-GCM-SHA256",
                                        "ECDHE-ECDSA-AES256-GCM-SHA384",
                                        "ECDHE-ECDSA-CHACHA20-POLY1305"};

    cr_assert(cipher < KTLA_CIPHER_COUNT);
    cr_assert(SSL_CTX_set_min_proto_version(ctx, version) == 1);
    cr_assert(SSL_CTX_set_max_proto_version(ctx, version) == 1);
    if (version == KTLA_TLS1_3)
        cr_assert(SSL_CTX_set_ciphersuites(ctx, tls13[cipher]) == 1);
    else
        cr_assert(SSL_CTX_set_cipher_list(ctx, tls12[cipher]) == 1);
}

void memtls_ctx_pair(uint16_t version, enum ktla_cipher cipher, int tickets, SSL_CTX **sctx,
                     SSL_CTX **cctx)
{
    *sctx = SSL_CTX_new(TLS_server_method());
    *cctx = SSL_CTX_new(TLS_client_method());
    cr_assert(*sctx && *cctx);
    limit_ctx(*sctx, version, cipher);
    limit_ctx(*cctx, version, cipher);
    use_pem_cert(*sctx);
    if (tickets >= 0)
        cr_assert(SSL_CTX_set_num_tickets(*sctx, (size_t)tickets) == 1);
}

static SSL *new_ssl(SSL_CTX *ctx)
{
    SSL *ssl = SSL_new(ctx);
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());

    cr_assert(ssl && in && out);
    SSL_set_bio(ssl, in, out);
    return ssl;
}

void memtls_pair_init(struct memtls_pair *p, SSL_CTX *cctx, SSL_CTX *sctx)
{
    memset(p, 0, sizeof(*p));
    p->client = new_ssl(cctx);
    p->server = new_ssl(sctx);
    SSL_set_connect_state(p->client);
    SSL_set_accept_state(p->server);
}

void memtls_pair_free(struct memtls_pair *p)
{
    SSL_free(p->client);
    SSL_free(p->server);
    free(p->to_server.data);
    free(p->to_client.data);
    memset(p, 0, sizeof(*p));
}

static void wire_append(struct memtls_wire *w, const uint8_t *buf, size_t len)
{
    if (w->len + len > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + len)
            cap *= 2;
        w->data = realloc(w->data, cap);
        cr_assert(w->data);
        w->cap = cap;
    }
    memcpy(w->data + w->len, buf, len);
    w->len += len;
}

static size_t move(SSL *from, SSL *to, struct memtls_wire *w)
{
    uint8_t buf[4096];
    size_t moved = 0, n;

    while ((n = memtls_take(from, buf, sizeof(buf))) > 0) {
        memtls_give(to, buf, n);
        wire_append(w, buf, n);
        moved += n;
    }
    return moved;
}

size_t memtls_pump(struct memtls_pair *p)
{
    size_t moved = move(p->client, p->server, &p->to_server);
    return moved + move(p->server, p->client, &p->to_client);
}

/* One SSL_do_handshake: 1 when done, 0 when it waits for the peer, -1 on failure. */
static int step(SSL *ssl)
{
    int r = SSL_do_handshake(ssl);
    if (r == 1)
        return 1;
    switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return 0;
    default:
        return -1;
    }
}

int memtls_handshake(struct memtls_pair *p)
{
    bool client_done = false, server_done = false;

    for (int round = 0; round < 32; round++) {
        if (!client_done) {
            int r = step(p->client);
            if (r < 0)
                return -1;
            client_done = r == 1;
        }
        if (!server_done) {
            int r = step(p->server);
            if (r < 0)
                return -1;
            server_done = r == 1;
        }
        if (client_done && server_done)
            return 0;
        memtls_pump(p);
    }
    return -1;
}

size_t memtls_take(SSL *from, uint8_t *buf, size_t cap)
{
    BIO *out = SSL_get_wbio(from);
    size_t got = 0;

    if (BIO_ctrl_pending(out) == 0)
        return 0;
    cr_assert(BIO_read_ex(out, buf, cap, &got) == 1);
    return got;
}

void memtls_give(SSL *to, const void *buf, size_t len)
{
    size_t written = 0;

    if (len == 0)
        return;
    cr_assert(BIO_write_ex(SSL_get_rbio(to), buf, len, &written) == 1 && written == len);
}

size_t memtls_record_len(const uint8_t *buf, size_t len)
{
    if (len < 5)
        return 0;
    size_t rec = 5 + ((size_t)buf[3] << 8 | buf[4]);
    return rec <= len ? rec : 0;
}
