/*
 * The TLS context: one server SSL_CTX per certificate, all with the same settings, the one to
 * use chosen by SNI; ALPN by server preference; session tickets sealed with keys that several
 * processes can share.
 *
 * Lifetimes. A handshake holds its SSL and the SSL holds its SSL_CTX, nothing else: the ktla_ctx
 * may be freed, or its certificates replaced, while handshakes run. So everything a callback
 * needs hangs off the SSL_CTX as ex_data, owned through it:
 * - every SSL_CTX holds a reference on its ktla_ctx's `struct common` (settings, ALPN list and
 *   the ticket key set), so all of them, across reloads, seal and open tickets with one key set;
 * - a default SSL_CTX owns the `struct sni_set` of the SNI SSL_CTXs built with it, so a handshake
 *   that began before a reload still switches among the certificates of its own generation.
 *
 * OpenSSL library contexts. OpenSSL 3.0 takes a read lock of the library context (its method
 * store, its name map) for every algorithm it looks up, several hundred times per handshake, so
 * threads whose handshakes share one context all write the same few cache lines. Each acceptor
 * therefore builds SSL_CTXs of its own, in an OSSL_LIB_CTX of its own (`struct ktla_tls_local`),
 * from the PEM text the ktla_ctx keeps for every certificate generation (`struct material`): the
 * same certificates and settings, and the same ticket keys through the shared `struct common`.
 * The shared SSL_CTXs, in OpenSSL's default library context, remain for ktla_ctx_ssl_ctx() and
 * for acceptors that share (ktla_acceptor_set_openssl_context, or a default context set up in a
 * way that cannot be copied). A local context must outlive every SSL made in it, so each SSL
 * holds a reference on its local (ktla_ssl_new, ktla_ssl_free), as the acceptor does.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "context.h"
#include "keys.h"
#include "ktls.h"

_Static_assert(KTLA_TLS1_2 == TLS1_2_VERSION && KTLA_TLS1_3 == TLS1_3_VERSION,
               "ktla versions are the wire versions, as OpenSSL's are");

/* Only AEAD suites with ECDHE: what kernel TLS can carry, with forward secrecy. */
#define TLS13_SUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TLS12_SUITES                                                                               \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define GROUPS "X25519:P-256:P-384"
#define DEFAULT_TLS13_TICKETS 2

/*
 * OpenSSL refuses a session whose session ID context differs from the SSL's; one constant for
 * every SSL_CTX and every process keeps a ticket valid across certificates and processes.
 */
static const unsigned char sid_ctx[] = "ktla";

/* SAN DNS names only (the subject CN is legacy), and "*" only as a whole label. */
#define SNI_MATCH_FLAGS (X509_CHECK_FLAG_NEVER_CHECK_SUBJECT | X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)

/* One key of the ticket key file, in the file's layout. */
struct ticket_key {
    unsigned char name[16]; /* OpenSSL's ticket key name length, sent in each ticket */
    unsigned char hmac[32];
    unsigned char aes[32];
};
_Static_assert(sizeof(struct ticket_key) == 80, "the ticket key file is made of 80-byte keys");

struct ticket_keys {
    size_t n;
    struct ticket_key key[]; /* key[0] seals new tickets; all of them open tickets */
};

/* What every SSL_CTX of one ktla_ctx shares, whichever certificate generation it belongs to. */
struct common {
    atomic_int refs;
    int min_version, max_version;
    size_t tls13_tickets;
    bool no_tickets;
    unsigned char *alpn; /* server preference, ALPN wire format; NULL: no ALPN */
    size_t alpn_len;
    EVP_CIPHER *aes_cbc; /* fetched once rather than per ticket */
    /*
     * Held only to copy one key out or to swap the set, never across crypto, so handshakes on
     * many threads and a reload on another never wait long for each other.
     */
    pthread_mutex_t keys_lock;
    struct ticket_keys *keys;
    atomic_ulong keys_gen; /* changes with keys; the local copies compare it, lock-free */
};

/* The SSL_CTXs of one certificate generation, in configuration order. */
struct sni_set {
    size_t n;
    SSL_CTX *ssl_ctx[]; /* [0] is the default, which owns this set, so holds no reference */
};

/*
 * What one certificate generation was built from: each certificate's chain and key as PEM text
 * (files are read once, when the generation is made, so every local context built from it later
 * has the very same certificates), and whether the kernel needs the TLS 1.3 secrets.
 */
struct pem_pair {
    char *cert, *key;
    size_t key_size; /* of the allocation, for wiping */
};
struct material {
    atomic_int refs;
    bool capture_secrets;
    size_t n;
    struct pem_pair pem[];
};

struct ktla_ctx {
    atomic_int refs;
    struct common *common;
    pthread_mutex_t lock;
    SSL_CTX *current;          /* guarded by lock: the default SSL_CTX of the newest generation */
    struct material *material; /* guarded by lock: what `current` was built from */
    atomic_ulong gen;          /* the generation's number: read by the locals without the lock */
};

/*
 * A library context of ktla's own, with its providers. Never freed: OpenSSL 3.0 leaves, in every
 * thread that drew random numbers from a library context, a thread-exit handler that uses that
 * context (it frees the thread's generators), and frees the context without removing them, so a
 * context freed while such a thread lives would be used after its free when the thread ends.
 * One that no acceptor uses any more waits in a pool for the next acceptor instead.
 */
struct lib_slot {
    OSSL_LIB_CTX *lib;
    OSSL_PROVIDER *prov[2];
    EVP_CIPHER *aes_cbc;   /* fetched in lib, for the ticket callback */
    struct lib_slot *next; /* in the pool */
};

/* An acceptor's own library context and the SSL_CTXs it built in it (see the top of the file). */
struct ktla_tls_local {
    atomic_int refs; /* the acceptor's, and one per SSL made from these SSL_CTXs */
    struct lib_slot *slot; /* its library context: slot->lib */
    SSL_CTX *current;  /* the default SSL_CTX of the generation `gen`, or NULL */
    unsigned long gen, failed_gen;
    struct common *common; /* a reference */
    /* Ticket keys copied from common when its keys_gen moves. Only the acceptor's thread runs
     * handshakes, so this lock is never contended; it guards against an SSL used elsewhere. */
    pthread_mutex_t keys_lock;
    unsigned long keys_gen;
    struct ticket_keys *keys;
};

static int common_idx = -1, sni_idx = -1, local_idx = -1;
static pthread_once_t ex_once = PTHREAD_ONCE_INIT;

static void ticket_keys_free(struct ticket_keys *k)
{
    if (!k)
        return;
    OPENSSL_cleanse(k->key, k->n * sizeof(k->key[0]));
    free(k);
}

static void common_unref(struct common *c)
{
    if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    ticket_keys_free(c->keys);
    pthread_mutex_destroy(&c->keys_lock);
    EVP_CIPHER_free(c->aes_cbc);
    free(c->alpn);
    free(c);
}

/* OpenSSL calls these for every SSL_CTX it frees, ours or not: ptr is NULL for the others. */
static void common_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                           void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    common_unref(ptr);
}

static void sni_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    struct sni_set *set = ptr;

    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (!set)
        return;
    for (size_t i = 1; i < set->n; i++)
        SSL_CTX_free(set->ssl_ctx[i]);
    free(set);
}

static void ex_indices_init(void)
{
    common_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, common_ex_free);
    sni_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_ex_free);
    /* No free callback: the local owns its SSL_CTXs, not the other way round. */
    local_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* Key files and PEM keys must never make OpenSSL prompt on the terminal for a passphrase. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * Session tickets
 */

/*
 * Reads a whole key file. Its size is taken from fstat, so a path that is not a regular file
 * (a pipe, /dev/urandom) has size 0 and is refused instead of read without end.
 */
static int ticket_keys_read(const char *path, struct ticket_keys **out)
{
    struct ticket_keys *k;
    struct stat st;
    unsigned char extra;
    size_t size, got = 0;
    ssize_t n;
    int fd, ret = KTLA_ETICKETKEY;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return KTLA_ETICKETKEY;
    if (fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size % sizeof(struct ticket_key) != 0)
        goto close_fd;
    size = (size_t)st.st_size;
    k = malloc(sizeof(*k) + size);
    if (!k) {
        ret = -ENOMEM;
        goto close_fd;
    }
    k->n = size / sizeof(struct ticket_key);
    while (got < size) {
        n = read(fd, (unsigned char *)k->key + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto free_keys;
        got += (size_t)n;
    }
    /* A file still being written (not renamed into place) would give a torn key set. */
    do
        n = read(fd, &extra, 1);
    while (n < 0 && errno == EINTR);
    OPENSSL_cleanse(&extra, sizeof(extra));
    if (n != 0)
        goto free_keys;
    close(fd);
    *out = k;
    return 0;

free_keys:
    ticket_keys_free(k);
close_fd:
    close(fd);
    return ret;
}

/* One key good for this process only: tickets from other processes will not open. */
static int ticket_keys_random(struct ticket_keys **out)
{
    struct ticket_keys *k = malloc(sizeof(*k) + sizeof(k->key[0]));

    if (!k)
        return -ENOMEM;
    k->n = 1;
    if (RAND_bytes(k->key[0].name, sizeof(k->key[0].name)) != 1 ||
        RAND_priv_bytes(k->key[0].hmac, sizeof(k->key[0].hmac)) != 1 ||
        RAND_priv_bytes(k->key[0].aes, sizeof(k->key[0].aes)) != 1) {
        ticket_keys_free(k);
        ERR_clear_error();
        return -EIO; /* the random generator could not be seeded */
    }
    *out = k;
    return 0;
}

static void common_set_keys(struct common *c, struct ticket_keys *keys)
{
    struct ticket_keys *old;

    pthread_mutex_lock(&c->keys_lock);
    old = c->keys;
    c->keys = keys;
    atomic_fetch_add_explicit(&c->keys_gen, 1, memory_order_release);
    pthread_mutex_unlock(&c->keys_lock);
    ticket_keys_free(old);
}

/* A copy of the shared key set, made when the set changed since the last copy; NULL if none. */
static const struct ticket_keys *local_keys(struct ktla_tls_local *l)
{
    struct common *c = l->common;
    unsigned long gen = atomic_load_explicit(&c->keys_gen, memory_order_acquire);
    struct ticket_keys *copy;
    size_t size;

    if (l->keys && l->keys_gen == gen)
        return l->keys;
    pthread_mutex_lock(&c->keys_lock);
    size = sizeof(*copy) + c->keys->n * sizeof(c->keys->key[0]);
    copy = malloc(size);
    if (copy) {
        memcpy(copy, c->keys, size);
        gen = atomic_load_explicit(&c->keys_gen, memory_order_relaxed);
    }
    pthread_mutex_unlock(&c->keys_lock);
    if (!copy)
        return l->keys; /* the older set, if any, still seals and opens */
    ticket_keys_free(l->keys);
    l->keys = copy;
    l->keys_gen = gen;
    return copy;
}

/*
 * OpenSSL's ticket callback (SSL_CTX_set_tlsext_ticket_key_evp_cb): sets up AES-256-CBC and
 * HMAC-SHA256 for one ticket. Sealing uses the first key; opening finds the key by the name at
 * the front of the ticket. Returns 1 (go on), 2 (go on and issue a fresh ticket under the first
 * key: after an older key, and in TLS 1.3), 0 (no such key: full handshake) or -1 (error).
 */
static int ticket_key_cb(SSL *ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                         EVP_CIPHER_CTX *cipher, EVP_MAC_CTX *mac, int enc)
{
    SSL_CTX *sc = SSL_get_SSL_CTX(ssl);
    struct common *c = SSL_CTX_get_ex_data(sc, common_idx);
    struct ktla_tls_local *l = SSL_CTX_get_ex_data(sc, local_idx);
    const struct ticket_keys *keys;
    struct ticket_key key;
    size_t i;
    int ret = 1;

    if (!c)
        return -1;
    if (enc && RAND_bytes_ex(l ? l->slot->lib : NULL, iv, EVP_CIPHER_get_iv_length(c->aes_cbc), 0) != 1)
        return -1;
    /* A local copies the key it needs under its own lock; a shared SSL_CTX under the common one. */
    pthread_mutex_t *lock = l ? &l->keys_lock : &c->keys_lock;
    pthread_mutex_lock(lock);
    keys = l ? local_keys(l) : c->keys;
    if (!keys) {
        pthread_mutex_unlock(lock);
        return -1;
    }
    if (enc) {
        key = keys->key[0];
    } else {
        for (i = 0; i < keys->n; i++)
            if (CRYPTO_memcmp(name, keys->key[i].name, sizeof(key.name)) == 0)
                break;
        if (i < keys->n)
            key = keys->key[i];
        else
            ret = 0;
        /* Renew under the first key when an older one opened the ticket, and always in TLS 1.3:
         * its clients use a ticket once (RFC 8446 C.4), and without renewal OpenSSL sends no
         * ticket after a resumed handshake, so every other connection would be a full one. */
        if (ret)
            ret = i == 0 && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2;
    }
    pthread_mutex_unlock(lock);
    if (ret == 0)
        return 0;
    if (enc)
        memcpy(name, key.name, sizeof(key.name));

    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof(key.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_CTX_set_params(mac, params) != 1 ||
        EVP_CipherInit_ex2(cipher, l ? l->slot->aes_cbc : c->aes_cbc, key.aes, iv, enc, NULL) != 1)
        ret = -1;
    OPENSSL_cleanse(&key, sizeof(key));
    return ret;
}

/* ---------------------------------------------------------------------------------------------
 * SNI and ALPN
 */

/*
 * The default SSL_CTX's servername callback: the first certificate, in configuration order,
 * with a subjectAltName DNS name matching the client's SNI serves the handshake; none, or no
 * SNI, leaves the default. SNI is acknowledged either way, so OpenSSL records it for
 * SSL_get_servername().
 */
static int choose_certificate(SSL *ssl, int *alert, void *arg)
{
    const struct sni_set *set = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

    if (!name)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < set->n; i++) {
        X509 *leaf = SSL_CTX_get0_certificate(set->ssl_ctx[i]);
        if (X509_check_host(leaf, name, 0, SNI_MATCH_FLAGS, NULL) != 1)
            continue;
        if (i > 0 && !SSL_set_SSL_CTX(ssl, set->ssl_ctx[i])) {
            *alert = SSL_AD_INTERNAL_ERROR; /* only allocation fails there */
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        break;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* The first protocol in the server's list that the client offered; none: go on without ALPN. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    const struct common *c = arg;

    (void)ssl;
    for (size_t i = 0; i < c->alpn_len; i += 1 + c->alpn[i]) {
        const unsigned char *want = &c->alpn[i + 1];
        unsigned char want_len = c->alpn[i];
        /* OpenSSL has checked the client's list; the bound only guards against a change there. */
        for (unsigned int j = 0; j < inlen && in[j] < inlen - j; j += 1 + in[j]) {
            if (in[j] == want_len && memcmp(&in[j + 1], want, want_len) == 0) {
                *out = want;
                *outlen = want_len;
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* The server's ALPN list in wire format: each protocol 1 to 255 bytes, length-prefixed. */
static int alpn_wire(const char *const *alpn, size_t nalpn, unsigned char **out, size_t *out_len)
{
    size_t len = 0, off = 0;
    unsigned char *wire;

    *out = NULL;
    *out_len = 0;
    if (nalpn == 0)
        return 0;
    if (!alpn)
        return KTLA_EINVAL;
    for (size_t i = 0; i < nalpn; i++) {
        size_t n = alpn[i] ? strlen(alpn[i]) : 0;
        if (n == 0 || n > 255)
            return KTLA_EINVAL;
        len += 1 + n;
    }
    if (len > 0xffff) /* the extension's own length field */
        return KTLA_EINVAL;
    wire = malloc(len);
    if (!wire)
        return -ENOMEM;
    for (size_t i = 0; i < nalpn; i++) {
        size_t n = strlen(alpn[i]);
        wire[off++] = (unsigned char)n;
        memcpy(&wire[off], alpn[i], n);
        off += n;
    }
    *out = wire;
    *out_len = len;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Certificates and SSL_CTXs
 */

/*
 * A whole PEM file, NUL-terminated. Certificate and key files are small; anything over 16 MiB is
 * not one. `size` is the allocation's, for wiping a key.
 */
#define PEM_FILE_MAX (16u << 20)
static int read_pem_file(const char *path, char **out, size_t *size)
{
    char *buf = NULL, *bigger;
    size_t len = 0, cap = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC), ret = KTLA_ECERT;

    if (fd < 0)
        return KTLA_ECERT;
    for (;;) {
        if (cap - len < 2) {
            if (cap >= PEM_FILE_MAX)
                goto free_buf;
            size_t ncap = cap ? cap * 2 : 8192;
            bigger = malloc(ncap);
            if (!bigger) {
                ret = -ENOMEM;
                goto free_buf;
            }
            if (buf) {
                memcpy(bigger, buf, len);
                OPENSSL_clear_free(buf, cap);
            }
            buf = bigger;
            cap = ncap;
        }
        n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto free_buf;
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    *size = cap;
    return 0;

free_buf:
    if (buf)
        OPENSSL_clear_free(buf, cap);
    close(fd);
    return ret;
}

static void material_unref(struct material *m)
{
    if (!m || atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->pem[i].cert);
        if (m->pem[i].key)
            OPENSSL_clear_free(m->pem[i].key, m->pem[i].key_size);
    }
    free(m);
}

static int dup_text(const char *text, char **out, size_t *size)
{
    size_t n = strlen(text) + 1;

    *out = malloc(n);
    if (!*out)
        return -ENOMEM;
    memcpy(*out, text, n);
    *size = n;
    return 0;
}

/* The PEM text of every certificate and key of a generation, from files or from the config. */
static int material_new(const struct ktla_cert_config *certs, size_t ncerts, bool capture,
                        struct material **out)
{
    struct material *m;
    size_t ignored;
    int ret = 0;

    if (!certs || ncerts == 0)
        return KTLA_EINVAL;
    for (size_t i = 0; i < ncerts; i++)
        if ((!certs[i].cert_file && !certs[i].cert_pem) ||
            (!certs[i].key_file && !certs[i].key_pem))
            return KTLA_EINVAL;
    m = calloc(1, sizeof(*m) + ncerts * sizeof(m->pem[0]));
    if (!m)
        return -ENOMEM;
    atomic_init(&m->refs, 1);
    m->capture_secrets = capture;
    for (size_t i = 0; i < ncerts && ret == 0; i++, m->n++) {
        const struct ktla_cert_config *cc = &certs[i];
        struct pem_pair *pp = &m->pem[i];
        ret = cc->cert_file ? read_pem_file(cc->cert_file, &pp->cert, &ignored)
                            : dup_text(cc->cert_pem, &pp->cert, &ignored);
        if (ret == 0)
            ret = cc->key_file ? read_pem_file(cc->key_file, &pp->key, &pp->key_size)
                               : dup_text(cc->key_pem, &pp->key, &pp->key_size);
    }
    if (ret < 0) {
        material_unref(m);
        return ret;
    }
    *out = m;
    return 0;
}

/*
 * The chain from PEM text, leaf first, parsed in `lib`; the loop ends at the first thing that is
 * no certificate. Each X509 is made in `lib` before it is read into, as OpenSSL 3 asks.
 */
static int use_chain_pem(SSL_CTX *sc, OSSL_LIB_CTX *lib, const char *pem)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509 *x = NULL;
    unsigned long err;
    int ret = KTLA_ECERT;

    if (!bio)
        return -ENOMEM;
    x = X509_new_ex(lib, NULL);
    if (!x) {
        ret = -ENOMEM;
        goto free_bio;
    }
    if (!PEM_read_bio_X509_AUX(bio, &x, no_password, NULL))
        goto free_x509;
    if (SSL_CTX_use_certificate(sc, x) != 1)
        goto free_x509;
    X509_free(x);
    for (;;) {
        x = X509_new_ex(lib, NULL);
        if (!x) {
            ret = -ENOMEM;
            goto free_bio;
        }
        if (!PEM_read_bio_X509(bio, &x, no_password, NULL))
            break;
        if (SSL_CTX_add0_chain_cert(sc, x) != 1)
            goto free_x509;
    }
    /* Running out of text is the normal end; anything else is a broken chain certificate. */
    err = ERR_peek_last_error();
    if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        ret = 0;
    }

free_x509:
    X509_free(x); /* NULL where a failed read freed it */
free_bio:
    BIO_free(bio);
    return ret;
}

static int use_key_pem(SSL_CTX *sc, OSSL_LIB_CTX *lib, const char *pem)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *key;
    int ret = KTLA_ECERT;

    if (!bio)
        return -ENOMEM;
    key = PEM_read_bio_PrivateKey_ex(bio, NULL, no_password, NULL, lib, NULL);
    if (!key)
        goto free_bio;
    if (SSL_CTX_use_PrivateKey(sc, key) == 1)
        ret = 0;
    EVP_PKEY_free(key);
free_bio:
    BIO_free(bio);
    return ret;
}

static int use_certificate(SSL_CTX *sc, OSSL_LIB_CTX *lib, const struct pem_pair *pp)
{
    int ret = use_chain_pem(sc, lib, pp->cert);

    if (ret < 0)
        return ret;
    ret = use_key_pem(sc, lib, pp->key);
    if (ret < 0)
        return ret;
    return SSL_CTX_check_private_key(sc) == 1 ? 0 : KTLA_ECERT;
}

/*
 * Whether this kernel has no TLS at all, in which case every connection stays in userspace and
 * the acceptor decides so before it derives any key: the TLS 1.3 secrets need not be captured.
 * Capturing them is not free: for any keylog callback OpenSSL formats five secrets in hex, about
 * 230,000 instructions per handshake (8% of a full one, 9% of a resumed one). TCP_ULP "tls" on a
 * socket that is not connected fails with ENOENT (KTLA_ENOKTLS) only when the kernel has no such
 * ULP and could not load one; a kernel that has it fails later, with ENOTCONN. Any other answer,
 * a failed socket() included, keeps the capture.
 */
static bool kernel_has_no_tls(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool none;

    if (fd < 0)
        return false;
    none = ktla_ktls_attach(fd) == KTLA_ENOKTLS;
    close(fd);
    return none;
}

/*
 * One server SSL_CTX with the context's settings and one certificate, in library context `lib`
 * (NULL: OpenSSL's default) for `local` (NULL: shared); `capture_secrets`: keep the TLS 1.3
 * traffic secrets for the kernel (ktla_keys_init_ctx).
 */
static int ssl_ctx_new(struct common *c, OSSL_LIB_CTX *lib, struct ktla_tls_local *local,
                       const struct pem_pair *pp, bool capture_secrets, SSL_CTX **out)
{
    SSL_CTX *sc;
    uint64_t options = SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                       SSL_OP_CIPHER_SERVER_PREFERENCE | (c->no_tickets ? SSL_OP_NO_TICKET : 0);
    int ret = -ENOMEM;

    sc = SSL_CTX_new_ex(lib, NULL, TLS_server_method());
    if (!sc)
        return -ENOMEM;
    /* This SSL_CTX's reference: once in its ex_data, SSL_CTX_free drops it (common_ex_free). */
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    if (SSL_CTX_set_ex_data(sc, common_idx, c) != 1) {
        common_unref(c);
        goto free_ssl_ctx;
    }
    if (local && SSL_CTX_set_ex_data(sc, local_idx, local) != 1)
        goto free_ssl_ctx;
    /* The lists are constants OpenSSL knows, so only allocation can make these fail. */
    if (SSL_CTX_set_min_proto_version(sc, c->min_version) != 1 ||
        SSL_CTX_set_max_proto_version(sc, c->max_version) != 1 ||
        SSL_CTX_set_ciphersuites(sc, TLS13_SUITES) != 1 ||
        SSL_CTX_set_cipher_list(sc, TLS12_SUITES) != 1 ||
        SSL_CTX_set1_groups_list(sc, GROUPS) != 1 || SSL_CTX_set_max_early_data(sc, 0) != 1 ||
        SSL_CTX_set_num_tickets(sc, c->no_tickets ? 0 : c->tls13_tickets) != 1 ||
        SSL_CTX_set_session_id_context(sc, sid_ctx, sizeof(sid_ctx) - 1) != 1 ||
        SSL_CTX_set_tlsext_ticket_key_evp_cb(sc, ticket_key_cb) != 1 ||
        /* The kernel needs the TLS 1.3 traffic secrets, which OpenSSL only hands to a keylog
         * callback; every SSL_CTX a handshake may be switched to by SNI must have it. */
        (capture_secrets && ktla_keys_init_ctx(sc) != 0))
        goto free_ssl_ctx;
    SSL_CTX_set_options(sc, options);
    SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
    /* Tickets carry the whole session, so the server keeps no session state to share. */
    SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_OFF);
    if (c->alpn)
        SSL_CTX_set_alpn_select_cb(sc, select_alpn, c);
    SSL_CTX_set_default_passwd_cb(sc, no_password);
    ret = use_certificate(sc, lib, pp);
    if (ret < 0)
        goto free_ssl_ctx;
    *out = sc;
    return 0;

free_ssl_ctx:
    SSL_CTX_free(sc);
    return ret;
}

/* One certificate generation: the default SSL_CTX, owning the SNI ones when there are any. */
static int ssl_ctxs_new(struct common *c, OSSL_LIB_CTX *lib, struct ktla_tls_local *local,
                        const struct material *m, SSL_CTX **out)
{
    struct sni_set *set;
    SSL_CTX *def;
    int ret;

    ret = ssl_ctx_new(c, lib, local, &m->pem[0], m->capture_secrets, &def);
    if (ret < 0)
        goto clear_errors;
    if (m->n > 1) {
        ret = -ENOMEM;
        set = malloc(sizeof(*set) + m->n * sizeof(set->ssl_ctx[0]));
        if (!set)
            goto free_default;
        set->n = 1;
        set->ssl_ctx[0] = def;
        if (SSL_CTX_set_ex_data(def, sni_idx, set) != 1) {
            free(set);
            goto free_default;
        }
        /* From here on, freeing the default frees the set and the SSL_CTXs already in it. */
        for (size_t i = 1; i < m->n; i++) {
            ret = ssl_ctx_new(c, lib, local, &m->pem[i], m->capture_secrets, &set->ssl_ctx[i]);
            if (ret < 0)
                goto free_default;
            set->n++;
        }
        SSL_CTX_set_tlsext_servername_callback(def, choose_certificate);
        SSL_CTX_set_tlsext_servername_arg(def, set);
    }
    *out = def;
    return 0;

free_default:
    SSL_CTX_free(def);
clear_errors:
    /* A stale entry would make the next SSL_get_error() on this thread report SSL_ERROR_SSL. */
    ERR_clear_error();
    return ret;
}

/*
 * A new generation from a configuration: its text, then the shared SSL_CTXs built from it (which
 * checks every certificate and key now, in the caller's thread). The kernel is asked again for
 * each generation, so a reload (SIGHUP in ktla-serve) notices a TLS module loaded since the last.
 */
static int generation_new(struct common *c, const struct ktla_cert_config *certs, size_t ncerts,
                          struct material **m_out, SSL_CTX **out)
{
    struct material *m;
    int ret = material_new(certs, ncerts, !kernel_has_no_tls(), &m);

    if (ret < 0)
        return ret;
    ret = ssl_ctxs_new(c, NULL, NULL, m, out);
    if (ret < 0) {
        material_unref(m);
        return ret;
    }
    *m_out = m;
    return 0;
}

static int common_new(const struct ktla_ctx_config *cfg, struct common **out)
{
    struct common *c;
    int min = cfg->min_version ? cfg->min_version : KTLA_TLS1_2;
    int max = cfg->max_version ? cfg->max_version : KTLA_TLS1_3;
    int ret;

    if ((min != KTLA_TLS1_2 && min != KTLA_TLS1_3) || (max != KTLA_TLS1_2 && max != KTLA_TLS1_3) ||
        min > max || cfg->tls13_tickets < -1)
        return KTLA_EINVAL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    atomic_init(&c->refs, 1);
    c->min_version = min;
    c->max_version = max;
    /* 0 is the default so that a zero-initialised config resumes; -1 asks for none. */
    c->tls13_tickets = cfg->tls13_tickets == 0    ? DEFAULT_TLS13_TICKETS
                       : cfg->tls13_tickets < 0 ? 0
                                                : (size_t)cfg->tls13_tickets;
    c->no_tickets = cfg->no_tickets != 0;
    ret = alpn_wire(cfg->alpn, cfg->nalpn, &c->alpn, &c->alpn_len);
    if (ret < 0)
        goto free_common;
    ret = -ENOMEM;
    c->aes_cbc = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (!c->aes_cbc) {
        ERR_clear_error();
        goto free_alpn;
    }
    ret = -pthread_mutex_init(&c->keys_lock, NULL);
    if (ret < 0)
        goto free_cipher;
    if (cfg->ticket_key_file)
        ret = ticket_keys_read(cfg->ticket_key_file, &c->keys);
    else
        ret = ticket_keys_random(&c->keys);
    if (ret < 0)
        goto destroy_lock;
    *out = c;
    return 0;

destroy_lock:
    pthread_mutex_destroy(&c->keys_lock);
free_cipher:
    EVP_CIPHER_free(c->aes_cbc);
free_alpn:
    free(c->alpn);
free_common:
    free(c);
    return ret;
}

/* ---------------------------------------------------------------------------------------------
 * The public handle
 */

int ktla_ctx_new(const struct ktla_ctx_config *cfg, struct ktla_ctx **out)
{
    struct ktla_ctx *ctx;
    int ret;

    if (!out)
        return KTLA_EINVAL;
    *out = NULL;
    if (!cfg || !cfg->certs || cfg->ncerts == 0)
        return KTLA_EINVAL;
    pthread_once(&ex_once, ex_indices_init);
    if (common_idx < 0 || sni_idx < 0)
        return -ENOMEM;
    ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return -ENOMEM;
    atomic_init(&ctx->refs, 1);
    ret = -pthread_mutex_init(&ctx->lock, NULL);
    if (ret < 0)
        goto free_ctx;
    ret = common_new(cfg, &ctx->common);
    if (ret < 0)
        goto destroy_lock;
    ret = generation_new(ctx->common, cfg->certs, cfg->ncerts, &ctx->material, &ctx->current);
    if (ret < 0)
        goto unref_common;
    atomic_init(&ctx->gen, 1);
    *out = ctx;
    return 0;

unref_common:
    common_unref(ctx->common);
destroy_lock:
    pthread_mutex_destroy(&ctx->lock);
free_ctx:
    free(ctx);
    return ret;
}

void ktla_ctx_ref(struct ktla_ctx *ctx)
{
    atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
}

void ktla_ctx_free(struct ktla_ctx *ctx)
{
    if (!ctx || atomic_fetch_sub_explicit(&ctx->refs, 1, memory_order_acq_rel) != 1)
        return;
    /* SSLs still using it keep their SSL_CTX, and through it the common part, alive. */
    SSL_CTX_free(ctx->current);
    material_unref(ctx->material);
    common_unref(ctx->common);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

SSL_CTX *ktla_ctx_ssl_ctx(struct ktla_ctx *ctx)
{
    SSL_CTX *sc;

    pthread_mutex_lock(&ctx->lock);
    sc = ctx->current;
    SSL_CTX_up_ref(sc);
    pthread_mutex_unlock(&ctx->lock);
    return sc;
}

int ktla_ctx_load_ticket_keys(struct ktla_ctx *ctx, const char *path)
{
    struct ticket_keys *keys;
    int ret;

    if (!ctx || !path)
        return KTLA_EINVAL;
    ret = ticket_keys_read(path, &keys);
    if (ret < 0)
        return ret;
    common_set_keys(ctx->common, keys);
    return 0;
}

int ktla_ctx_reload_certs(struct ktla_ctx *ctx, const struct ktla_cert_config *certs, size_t ncerts)
{
    struct material *m, *old_m;
    SSL_CTX *sc, *old;
    int ret;

    if (!ctx)
        return KTLA_EINVAL;
    ret = generation_new(ctx->common, certs, ncerts, &m, &sc);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&ctx->lock);
    old = ctx->current;
    old_m = ctx->material;
    ctx->current = sc;
    ctx->material = m;
    /* The locals build theirs from the new text at their next handshake. */
    atomic_fetch_add_explicit(&ctx->gen, 1, memory_order_release);
    pthread_mutex_unlock(&ctx->lock);
    /* Handshakes in flight hold their own references to the old generation. */
    SSL_CTX_free(old);
    material_unref(old_m);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Library contexts of the acceptors' own
 */

/*
 * Whether OpenSSL's default library context can be copied into a fresh one: the same providers
 * loaded by name, which holds for the built-in "default" and "base" only. A FIPS setup, or any
 * other provider (legacy, pkcs11, one of the application's), keeps every acceptor on the default
 * context, as does a failure to make one. Decided once per process.
 */
static pthread_once_t copy_once = PTHREAD_ONCE_INIT;
static const char *copy_refusal; /* NULL: copyable */
static char copy_refusal_buf[160];
static bool copy_base; /* the default context has "base" as well as "default" */

static int note_provider(OSSL_PROVIDER *prov, void *arg)
{
    const char *name = OSSL_PROVIDER_get0_name(prov);

    (void)arg;
    if (strcmp(name, "base") == 0) {
        copy_base = true;
    } else if (strcmp(name, "default") != 0 && !copy_refusal) {
        snprintf(copy_refusal_buf, sizeof(copy_refusal_buf),
                 "OpenSSL's default library context has the provider \"%s\", which ktla does "
                 "not copy",
                 name);
        copy_refusal = copy_refusal_buf;
    }
    return 1;
}

static void copy_check(void)
{
    if (EVP_default_properties_is_fips_enabled(NULL)) {
        copy_refusal = "OpenSSL's default library context is in FIPS mode";
        return;
    }
    OSSL_PROVIDER_do_all(NULL, note_provider, NULL);
    ERR_clear_error();
}

/*
 * At most this many contexts per process: OpenSSL 3.0 takes two of the process's 1024
 * thread-specific keys (PTHREAD_KEYS_MAX) for each context that draws random numbers, and the
 * 509th fails; the rest of the process (the application, other libraries, OpenSSL itself) needs
 * keys too. Acceptors beyond it share OpenSSL's default context.
 */
#define LIB_CTX_MAX 128
_Static_assert(LIB_CTX_MAX == 128, "slot_get's message says 128");

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lib_slot *pool;
static unsigned slots_made;

/* A library context from the pool, or a new one; NULL, with *why, if none can be had. */
static struct lib_slot *slot_get(const char **why)
{
    struct lib_slot *sl;
    bool full;

    pthread_mutex_lock(&pool_lock);
    sl = pool;
    if (sl)
        pool = sl->next;
    full = !sl && slots_made >= LIB_CTX_MAX;
    if (!sl && !full)
        slots_made++; /* taken now; given back below if making it fails */
    pthread_mutex_unlock(&pool_lock);
    if (sl)
        return sl;
    *why = full ? "the process already has 128 OpenSSL library contexts of "
                  "ktla's (OpenSSL 3.0 takes two thread-specific keys for each)"
                : "a library context of its own could not be made";
    if (full)
        return NULL;
    sl = calloc(1, sizeof(*sl));
    if (!sl)
        goto fail;
    sl->lib = OSSL_LIB_CTX_new();
    if (!sl->lib)
        goto fail;
    sl->prov[0] = OSSL_PROVIDER_load(sl->lib, "default");
    if (!sl->prov[0] || (copy_base && !(sl->prov[1] = OSSL_PROVIDER_load(sl->lib, "base"))))
        goto fail;
    sl->aes_cbc = EVP_CIPHER_fetch(sl->lib, "AES-256-CBC", NULL);
    if (!sl->aes_cbc)
        goto fail;
    return sl;

fail:
    /* Nothing in it drew random numbers yet, so this context can still be freed. */
    if (sl) {
        for (size_t i = 0; i < 2; i++)
            if (sl->prov[i])
                OSSL_PROVIDER_unload(sl->prov[i]);
        OSSL_LIB_CTX_free(sl->lib);
        free(sl);
    }
    pthread_mutex_lock(&pool_lock);
    slots_made--;
    pthread_mutex_unlock(&pool_lock);
    return NULL;
}

static void slot_put(struct lib_slot *sl)
{
    pthread_mutex_lock(&pool_lock);
    sl->next = pool;
    pool = sl;
    pthread_mutex_unlock(&pool_lock);
}

static void local_free(struct ktla_tls_local *l)
{
    /* Every SSL made in the context is gone (each held a reference): these are the last. */
    SSL_CTX_free(l->current);
    ticket_keys_free(l->keys);
    pthread_mutex_destroy(&l->keys_lock);
    common_unref(l->common);
    if (l->slot)
        slot_put(l->slot);
    free(l);
}

void ktla_tls_local_ref(struct ktla_tls_local *l)
{
    atomic_fetch_add_explicit(&l->refs, 1, memory_order_relaxed);
}

void ktla_tls_local_unref(struct ktla_tls_local *l)
{
    if (l && atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) == 1)
        local_free(l);
}

/* The newest generation, built in the local's context; 0, or negative with the last one kept. */
static int local_rebuild(struct ktla_tls_local *l, struct ktla_ctx *ctx)
{
    struct material *m;
    unsigned long gen;
    SSL_CTX *sc;
    int ret;

    pthread_mutex_lock(&ctx->lock);
    m = ctx->material;
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    gen = atomic_load_explicit(&ctx->gen, memory_order_relaxed);
    pthread_mutex_unlock(&ctx->lock);
    ret = ssl_ctxs_new(l->common, l->slot->lib, l, m, &sc);
    material_unref(m);
    if (ret < 0) {
        l->failed_gen = gen;
        return ret;
    }
    SSL_CTX_free(l->current); /* SSLs of the older generation keep it while they need it */
    l->current = sc;
    l->gen = gen;
    return 0;
}

int ktla_tls_local_new(struct ktla_ctx *ctx, struct ktla_tls_local **out, const char **why)
{
    struct ktla_tls_local *l;
    int ret = -ENOMEM;

    *out = NULL;
    *why = "a library context of its own could not be made";
    pthread_once(&copy_once, copy_check);
    if (copy_refusal) {
        *why = copy_refusal;
        return KTLA_EINVAL;
    }
    l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    atomic_init(&l->refs, 1);
    if (pthread_mutex_init(&l->keys_lock, NULL) != 0) {
        free(l);
        return -ENOMEM;
    }
    l->common = ctx->common;
    atomic_fetch_add_explicit(&l->common->refs, 1, memory_order_relaxed);
    l->slot = slot_get(why);
    if (!l->slot) {
        ret = KTLA_EINVAL;
        goto fail;
    }
    ret = local_rebuild(l, ctx);
    if (ret < 0) {
        *why = "a library context of its own could not be made";
        goto fail;
    }
    *out = l;
    return 0;

fail:
    ERR_clear_error();
    local_free(l);
    return ret;
}

SSL_CTX *ktla_tls_local_ssl_ctx(struct ktla_tls_local *l, struct ktla_ctx *ctx, bool *failed)
{
    unsigned long gen = atomic_load_explicit(&ctx->gen, memory_order_acquire);

    *failed = false;
    if (gen != l->gen && gen != l->failed_gen && local_rebuild(l, ctx) < 0)
        *failed = true;
    if (gen != l->gen) /* this generation failed here: the shared one has it */
        return ktla_ctx_ssl_ctx(ctx);
    SSL_CTX_up_ref(l->current);
    return l->current;
}

SSL *ktla_ssl_new(SSL_CTX *sc)
{
    struct ktla_tls_local *l = local_idx < 0 ? NULL : SSL_CTX_get_ex_data(sc, local_idx);
    SSL *ssl = SSL_new(sc);

    if (ssl && l)
        atomic_fetch_add_explicit(&l->refs, 1, memory_order_relaxed);
    return ssl;
}

void ktla_ssl_free(SSL *ssl)
{
    struct ktla_tls_local *l;

    if (!ssl)
        return;
    /* SNI may have moved the SSL to another SSL_CTX: always one of the same local's. */
    l = local_idx < 0 ? NULL : SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), local_idx);
    SSL_free(ssl);
    ktla_tls_local_unref(l);
}

OSSL_LIB_CTX *ktla_ssl_libctx(const SSL *ssl)
{
    /* Before any ktla_ctx was made (an SSL of the application's own) there is no index yet. */
    struct ktla_tls_local *l =
        local_idx < 0 ? NULL : SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), local_idx);

    return l ? l->slot->lib : NULL;
}
