/*
 * A certificate for trying the server out without making one: a fresh ECDSA P-256 key and a
 * self-signed certificate for localhost, made in memory at start-up and never written to disk.
 * Clients cannot verify it, so its SHA-256 fingerprint is printed for them to compare.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "serve.h"

static char *bio_to_string(BIO *b)
{
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s) {
        memcpy(s, data, (size_t)n);
        s[n] = '\0';
    }
    return s;
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

int cert_self_signed(struct cert_pem *out, char *err, size_t errcap)
{
    EVP_PKEY *pkey = NULL;
    X509 *x = NULL;
    BIO *cb = NULL, *kb = NULL;
    unsigned char serial[16];
    int ret = -1;

    out->cert = out->key = NULL;
    pkey = EVP_EC_gen("P-256");
    if (!pkey)
        goto err;
    x = X509_new();
    if (!x || !X509_set_version(x, 2) || RAND_bytes(serial, sizeof(serial)) != 1)
        goto err_x509;
    serial[0] &= 0x7f; /* a positive serial number */
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x))) {
        BN_free(bn);
        goto err_x509;
    }
    BN_free(bn);
    /* Valid from a minute ago (clock skew between client and server) for 30 days. */
    if (!X509_gmtime_adj(X509_getm_notBefore(x), -60) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 30L * 24 * 3600) || !X509_set_pubkey(x, pkey))
        goto err_x509;
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost",
                                    -1, -1, 0) ||
        !X509_set_issuer_name(x, name))
        goto err_x509;
    if (add_ext(x, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1") < 0 ||
        add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(x, NID_key_usage, "critical,digitalSignature") < 0 ||
        add_ext(x, NID_ext_key_usage, "serverAuth") < 0 || !X509_sign(x, pkey, EVP_sha256()))
        goto err_x509;

    cb = BIO_new(BIO_s_mem());
    kb = BIO_new(BIO_s_mem());
    if (!cb || !kb || !PEM_write_bio_X509(cb, x) ||
        !PEM_write_bio_PrivateKey(kb, pkey, NULL, NULL, 0, NULL, NULL))
        goto err_bio;
    out->cert = bio_to_string(cb);
    out->key = bio_to_string(kb);
    if (!out->cert || !out->key) {
        cert_pem_free(out);
        goto err_bio;
    }
    ret = 0;

err_bio:
    BIO_free(kb);
    BIO_free(cb);
err_x509:
    X509_free(x);
    EVP_PKEY_free(pkey);
err:
    if (ret < 0) {
        unsigned long e = ERR_get_error();
        snprintf(err, errcap, "cannot make a self-signed certificate: %s",
                 e ? ERR_reason_error_string(e) : "out of memory");
        ERR_clear_error();
    }
    return ret;
}

void cert_pem_free(struct cert_pem *p)
{
    if (p->key)
        OPENSSL_cleanse(p->key, strlen(p->key));
    free(p->key);
    free(p->cert);
    p->key = p->cert = NULL;
}

int cert_fingerprint(const char *pem, const char *file, char *out, size_t cap)
{
    BIO *b = file ? BIO_new_file(file, "r") : BIO_new_mem_buf(pem, -1);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    int ret = -1;

    if (x && X509_digest(x, EVP_sha256(), md, &mdlen) && cap >= mdlen * 3) {
        for (unsigned i = 0; i < mdlen; i++)
            snprintf(out + i * 3, cap - i * 3, "%02X%s", md[i], i + 1 < mdlen ? ":" : "");
        ret = 0;
    }
    X509_free(x);
    BIO_free(b);
    ERR_clear_error();
    return ret;
}

/* Called by PEM_read_PrivateKey for an encrypted key: ktla-serve has no one to ask. */
static int no_passphrase(char *buf, int size, int rwflag, void *asked)
{
    (void)buf, (void)size, (void)rwflag;
    *(bool *)asked = true;
    return -1;
}

/* OpenSSL's reason for the last failure, or what the caller says instead. */
static const char *openssl_reason(const char *otherwise)
{
    const char *r = ERR_reason_error_string(ERR_peek_last_error());
    return r ? r : otherwise;
}

static FILE *open_pem(const char *opt, const char *file, char *err, size_t errcap)
{
    FILE *f = fopen(file, "re");
    struct stat st;
    if (f && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        f = NULL;
        errno = EISDIR;
    }
    if (!f)
        snprintf(err, errcap, "%s %s: cannot read it: %s", opt, file, strerror(errno));
    return f;
}

int cert_check(const char *cert_file, const char *key_file, char *err, size_t errcap)
{
    X509 *x = NULL;
    EVP_PKEY *pkey = NULL;
    bool asked = false;
    int ret = -1;

    ERR_clear_error();
    FILE *f = open_pem("--cert", cert_file, err, errcap);
    if (!f)
        goto out;
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x) {
        snprintf(err, errcap, "--cert %s: no PEM certificate in it (OpenSSL: %s)", cert_file,
                 openssl_reason("nothing read"));
        goto out;
    }
    f = open_pem("--key", key_file, err, errcap);
    if (!f)
        goto out;
    pkey = PEM_read_PrivateKey(f, NULL, no_passphrase, &asked);
    fclose(f);
    if (!pkey && asked) {
        snprintf(err, errcap,
                 "--key %s: the private key is encrypted, and ktla-serve asks no passphrase: "
                 "decrypt it with 'openssl pkey -in %s -out NEWFILE' (mode 0600)",
                 key_file, key_file);
        goto out;
    }
    if (!pkey) {
        snprintf(err, errcap, "--key %s: no PEM private key in it (OpenSSL: %s)", key_file,
                 openssl_reason("nothing read"));
        goto out;
    }
    if (X509_check_private_key(x, pkey) != 1) {
        snprintf(err, errcap,
                 "--key %s is not the private key of the certificate in --cert %s (OpenSSL: %s)",
                 key_file, cert_file, openssl_reason("they do not match"));
        goto out;
    }
    ret = 0;
out:
    EVP_PKEY_free(pkey);
    X509_free(x);
    ERR_clear_error();
    return ret;
}
