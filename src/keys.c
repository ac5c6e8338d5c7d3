/*
 * Key derivation (RFC 8446 §7, RFC 5246 §6.3): the traffic keys of a finished handshake, from
 * public OpenSSL API only. OpenSSL gives no public way to read TLS 1.3 traffic secrets except
 * the keylog callback, so that callback is how they are captured; TLS 1.2 needs only the
 * session's master secret and the two randoms.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/ssl.h>

#include "context.h"
#include "keys.h"

#define RANDOM_LEN 32 /* ClientHello.random, ServerHello.random */
#define TLS13_IV_LEN 12
#define TLS12_GCM_SALT_LEN 4 /* the implicit part of the GCM nonce (RFC 5288 §3) */

/* The current application traffic secrets of one TLS 1.3 connection, in the SSL's ex_data. */
struct secrets {
    uint8_t client_random[RANDOM_LEN];
    uint8_t client[EVP_MAX_MD_SIZE];
    uint8_t server[EVP_MAX_MD_SIZE];
    size_t client_len; /* 0 until the keylog line arrived */
    size_t server_len;
};

/* A keylog callback the application had installed before ours, in the SSL_CTX's ex_data. */
struct chained {
    SSL_CTX_keylog_cb_func cb;
};

static pthread_once_t index_once = PTHREAD_ONCE_INIT;
static int ssl_index = -1;
static int ctx_index = -1;

static void secrets_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    OPENSSL_clear_free(ptr, sizeof(struct secrets));
}

/*
 * SSL_dup copies ex_data pointers; two SSLs sharing one struct secrets would free it twice, and
 * a copy has no handshake of its own yet, so it starts without secrets.
 */
static int secrets_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
                       long argl, void *argp)
{
    (void)to, (void)from, (void)idx, (void)argl, (void)argp;
    *from_d = NULL;
    return 1;
}

static void chained_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    OPENSSL_free(ptr);
}

static void make_indexes(void)
{
    ssl_index = SSL_get_ex_new_index(0, NULL, NULL, secrets_dup, secrets_free);
    ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, chained_free);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Decodes the hex field at *p (ending at a space, a newline or the end of the line) into out;
 * returns its length in bytes, or 0 when it is not hex or longer than cap. *p moves past it.
 */
static size_t hex_field(const char **p, uint8_t *out, size_t cap)
{
    const char *s = *p;
    size_t n = 0;

    while (*s != '\0' && *s != ' ' && *s != '\n') {
        int hi = hex_value(s[0]), lo = hi < 0 ? -1 : hex_value(s[1]);
        if (lo < 0 || n == cap)
            return 0;
        out[n++] = (uint8_t)(hi << 4 | lo);
        s += 2;
    }
    *p = s;
    return n;
}

/* Keeps one keylog line if it is an application traffic secret; ignores every other line. */
static void capture(const SSL *ssl, const char *line)
{
    static const char client_label[] = "CLIENT_TRAFFIC_SECRET_0 ";
    static const char server_label[] = "SERVER_TRAFFIC_SECRET_0 ";
    uint8_t random[RANDOM_LEN], secret[EVP_MAX_MD_SIZE];
    /* The callback gets a const SSL; its ex_data is ours to change all the same. */
    SSL *s = (SSL *)ssl;
    struct secrets *sec;
    bool is_client;
    size_t len;

    if (strncmp(line, client_label, sizeof(client_label) - 1) == 0) {
        is_client = true;
        line += sizeof(client_label) - 1;
    } else if (strncmp(line, server_label, sizeof(server_label) - 1) == 0) {
        is_client = false;
        line += sizeof(server_label) - 1;
    } else {
        return;
    }
    if (hex_field(&line, random, sizeof(random)) != sizeof(random) || *line++ != ' ')
        return;
    len = hex_field(&line, secret, sizeof(secret));
    if (len == 0)
        goto wipe_secret;

    sec = SSL_get_ex_data(s, ssl_index);
    if (sec == NULL) {
        /* Left without secrets, ktla_keys_derive reports the failure: a callback cannot. */
        sec = OPENSSL_zalloc(sizeof(*sec));
        if (sec == NULL)
            goto wipe_secret;
        if (!SSL_set_ex_data(s, ssl_index, sec)) {
            OPENSSL_free(sec);
            goto wipe_secret;
        }
    }
    /* A reused SSL (SSL_clear) starts a new handshake: what the last one left is stale. */
    if (memcmp(sec->client_random, random, sizeof(random)) != 0) {
        OPENSSL_cleanse(sec, sizeof(*sec));
        memcpy(sec->client_random, random, sizeof(random));
    }
    if (is_client) {
        memcpy(sec->client, secret, len);
        sec->client_len = len;
    } else {
        memcpy(sec->server, secret, len);
        sec->server_len = len;
    }
wipe_secret:
    OPENSSL_cleanse(secret, sizeof(secret));
}

static void keylog_cb(const SSL *ssl, const char *line)
{
    const struct chained *ch = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_index);

    capture(ssl, line);
    if (ch != NULL && ch->cb != NULL)
        ch->cb(ssl, line);
}

int ktla_keys_init_ctx(SSL_CTX *ctx)
{
    struct chained *old, *ch = NULL;
    SSL_CTX_keylog_cb_func prev;

    if (pthread_once(&index_once, make_indexes) != 0 || ssl_index < 0 || ctx_index < 0)
        return -ENOMEM;
    prev = SSL_CTX_get_keylog_callback(ctx);
    /* Chaining to ourselves would capture every line twice and recurse for ever. */
    if (prev == keylog_cb)
        return 0;
    /* A context already set up once whose callback the application replaced since then. */
    old = SSL_CTX_get_ex_data(ctx, ctx_index);
    if (prev != NULL) {
        ch = OPENSSL_zalloc(sizeof(*ch));
        if (ch == NULL)
            return -ENOMEM;
        ch->cb = prev;
    }
    if (!SSL_CTX_set_ex_data(ctx, ctx_index, ch)) {
        OPENSSL_free(ch);
        return -ENOMEM;
    }
    OPENSSL_free(old);
    SSL_CTX_set_keylog_callback(ctx, keylog_cb);
    return 0;
}

/*
 * The connection's version, cipher (as the kernel layer names them) and hash; KTLA_ENOCIPHER for
 * what the kernel cannot carry, KTLA_EINVAL before a cipher was negotiated.
 */
static int suite_of(const SSL *ssl, uint16_t *version, enum ktla_cipher *cipher, const EVP_MD **md)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    int v = SSL_version(ssl);

    if (v != TLS1_2_VERSION && v != TLS1_3_VERSION)
        return KTLA_ENOCIPHER;
    if (c == NULL)
        return KTLA_EINVAL;
    switch (SSL_CIPHER_get_cipher_nid(c)) {
    case NID_aes_128_gcm:
        *cipher = KTLA_CIPHER_AES_128_GCM;
        break;
    case NID_aes_256_gcm:
        *cipher = KTLA_CIPHER_AES_256_GCM;
        break;
    case NID_chacha20_poly1305:
        *cipher = KTLA_CIPHER_CHACHA20_POLY1305;
        break;
    default:
        return KTLA_ENOCIPHER;
    }
    /* The handshake digest is TLS 1.3's HKDF hash and, for these TLS 1.2 suites, the PRF's. */
    *md = SSL_CIPHER_get_handshake_digest(c);
    if (*md == NULL)
        return KTLA_ENOCIPHER;
    *version = (uint16_t)v;
    return 0;
}

/*
 * Runs one of OpenSSL's KDFs in library context `lib` (the SSL's: see context.c; NULL for
 * OpenSSL's default). Every input was checked by this module, so a failure can only be a failed
 * allocation (or a provider missing its KDF, which is as fatal): -ENOMEM.
 */
static int run_kdf(OSSL_LIB_CTX *lib, const char *name, const OSSL_PARAM *params, uint8_t *out,
                   size_t out_len)
{
    EVP_KDF_CTX *kctx;
    EVP_KDF *kdf;
    int ret = -ENOMEM;

    kdf = EVP_KDF_fetch(lib, name, NULL);
    if (kdf == NULL)
        return ret;
    kctx = EVP_KDF_CTX_new(kdf);
    if (kctx == NULL)
        goto free_kdf;
    if (EVP_KDF_derive(kctx, out, out_len, params) == 1)
        ret = 0;
    EVP_KDF_CTX_free(kctx);
free_kdf:
    EVP_KDF_free(kdf);
    return ret;
}

/* HKDF-Expand-Label(secret, label, "", out_len) (RFC 8446 §7.1). */
static int expand_label(OSSL_LIB_CTX *lib, const EVP_MD *md, const uint8_t *secret,
                        size_t secret_len, const char *label, uint8_t *out, size_t out_len)
{
    static const char prefix[] = "tls13 ";
    uint8_t info[2 + 1 + 255 + 1];
    size_t label_len = strlen(label), info_len = 0;
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;

    info[info_len++] = (uint8_t)(out_len >> 8);
    info[info_len++] = (uint8_t)out_len;
    info[info_len++] = (uint8_t)(sizeof(prefix) - 1 + label_len);
    memcpy(info + info_len, prefix, sizeof(prefix) - 1);
    info_len += sizeof(prefix) - 1;
    memcpy(info + info_len, label, label_len);
    info_len += label_len;
    info[info_len++] = 0; /* empty context */

    const OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)EVP_MD_get0_name(md), 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, info_len),
        OSSL_PARAM_construct_end(),
    };
    return run_kdf(lib, OSSL_KDF_NAME_HKDF, params, out, out_len);
}

/* One TLS 1.3 direction's key and IV from its traffic secret (RFC 8446 §7.3). */
static int tls13_key(OSSL_LIB_CTX *lib, const EVP_MD *md, const uint8_t *secret, size_t secret_len,
                     uint16_t version, enum ktla_cipher cipher, struct ktla_key *k)
{
    int ret;

    memset(k, 0, sizeof(*k));
    k->version = version;
    k->cipher = cipher;
    ret = expand_label(lib, md, secret, secret_len, "key", k->key, ktla_cipher_key_len(cipher));
    if (ret == 0)
        ret = expand_label(lib, md, secret, secret_len, "iv", k->iv, TLS13_IV_LEN);
    if (ret < 0)
        ktla_key_wipe(k);
    return ret;
}

static int tls13_derive(SSL *ssl, const EVP_MD *md, uint16_t version, enum ktla_cipher cipher,
                        struct ktla_key *tx, struct ktla_key *rx)
{
    const struct secrets *sec = ssl_index < 0 ? NULL : SSL_get_ex_data(ssl, ssl_index);
    size_t md_len = (size_t)EVP_MD_get_size(md);
    uint8_t random[RANDOM_LEN];
    int ret;

    if (sec == NULL || sec->client_len != md_len || sec->server_len != md_len)
        return KTLA_EINVAL;
    /* Secrets logged by an earlier handshake of a reused SSL would give wrong keys. */
    if (SSL_get_client_random(ssl, random, sizeof(random)) != sizeof(random) ||
        memcmp(random, sec->client_random, sizeof(random)) != 0)
        return KTLA_EINVAL;

    const uint8_t *own = SSL_is_server(ssl) ? sec->server : sec->client;
    const uint8_t *peer = SSL_is_server(ssl) ? sec->client : sec->server;
    ret = tls13_key(ktla_ssl_libctx(ssl), md, own, md_len, version, cipher, tx);
    if (ret == 0)
        ret = tls13_key(ktla_ssl_libctx(ssl), md, peer, md_len, version, cipher, rx);
    return ret;
}

/* The TLS 1.2 key block, PRF(master_secret, "key expansion", server_random + client_random). */
static int tls12_key_block(SSL *ssl, const EVP_MD *md, uint8_t *out, size_t out_len)
{
    static const char label[] = "key expansion";
    uint8_t master[SSL_MAX_MASTER_KEY_LENGTH];
    uint8_t seed[sizeof(label) - 1 + 2 * RANDOM_LEN];
    uint8_t *server_random = seed + sizeof(label) - 1, *client_random = server_random + RANDOM_LEN;
    SSL_SESSION *sess = SSL_get_session(ssl);
    size_t master_len;
    int ret = KTLA_EINVAL;

    memcpy(seed, label, sizeof(label) - 1);
    if (sess == NULL || SSL_get_server_random(ssl, server_random, RANDOM_LEN) != RANDOM_LEN ||
        SSL_get_client_random(ssl, client_random, RANDOM_LEN) != RANDOM_LEN)
        return ret;
    master_len = SSL_SESSION_get_master_key(sess, master, sizeof(master));
    if (master_len == 0)
        goto wipe_master;

    const OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)EVP_MD_get0_name(md), 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, master, master_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, sizeof(seed)),
        OSSL_PARAM_construct_end(),
    };
    ret = run_kdf(ktla_ssl_libctx(ssl), OSSL_KDF_NAME_TLS1_PRF, params, out, out_len);
wipe_master:
    OPENSSL_cleanse(master, sizeof(master));
    return ret;
}

static int tls12_derive(SSL *ssl, const EVP_MD *md, uint16_t version, enum ktla_cipher cipher,
                        struct ktla_key *tx, struct ktla_key *rx)
{
    /* AEAD suites have no MAC keys: client key, server key, client IV, server IV. */
    size_t key_len = ktla_cipher_key_len(cipher);
    size_t iv_len = cipher == KTLA_CIPHER_CHACHA20_POLY1305 ? TLS13_IV_LEN : TLS12_GCM_SALT_LEN;
    uint8_t block[2 * 32 + 2 * TLS13_IV_LEN];
    int ret;

    ret = tls12_key_block(ssl, md, block, 2 * key_len + 2 * iv_len);
    if (ret < 0)
        goto wipe_block;

    const uint8_t *client_key = block, *server_key = block + key_len;
    const uint8_t *client_iv = block + 2 * key_len, *server_iv = client_iv + iv_len;
    bool server = SSL_is_server(ssl);
    memset(tx, 0, sizeof(*tx));
    memset(rx, 0, sizeof(*rx));
    tx->version = rx->version = version;
    tx->cipher = rx->cipher = cipher;
    memcpy(tx->key, server ? server_key : client_key, key_len);
    memcpy(rx->key, server ? client_key : server_key, key_len);
    memcpy(tx->iv, server ? server_iv : client_iv, iv_len);
    memcpy(rx->iv, server ? client_iv : server_iv, iv_len);
wipe_block:
    OPENSSL_cleanse(block, sizeof(block));
    return ret;
}

int ktla_keys_derive(SSL *ssl, struct ktla_key *tx, struct ktla_key *rx)
{
    enum ktla_cipher cipher;
    const EVP_MD *md;
    uint16_t version;
    int ret;

    if (!SSL_is_init_finished(ssl)) {
        ret = KTLA_EINVAL;
        goto wipe_keys;
    }
    ret = suite_of(ssl, &version, &cipher, &md);
    if (ret < 0)
        goto wipe_keys;
    if (version == KTLA_TLS1_3)
        ret = tls13_derive(ssl, md, version, cipher, tx, rx);
    else
        ret = tls12_derive(ssl, md, version, cipher, tx, rx);
    if (ret == 0)
        return 0;
wipe_keys:
    ktla_key_wipe(tx);
    ktla_key_wipe(rx);
    return ret;
}

/*
 * One KeyUpdate of one direction: secret becomes HKDF-Expand-Label(secret, "traffic upd", "",
 * Hash.length) (RFC 8446 §7.2) and *k the key and IV of the new secret. The secret changes only
 * on success, so that after a failure it still matches the peer's generation.
 */
static int next_generation(OSSL_LIB_CTX *lib, const EVP_MD *md, uint8_t *secret, size_t len,
                           uint16_t version, enum ktla_cipher cipher, struct ktla_key *k)
{
    uint8_t next[EVP_MAX_MD_SIZE];
    int ret = expand_label(lib, md, secret, len, "traffic upd", next, len);
    if (ret == 0)
        ret = tls13_key(lib, md, next, len, version, cipher, k);
    if (ret == 0)
        memcpy(secret, next, len);
    OPENSSL_cleanse(next, sizeof(next));
    return ret;
}

int ktla_keys_update(SSL *ssl, enum ktla_dir dir, struct ktla_key *k)
{
    struct secrets *sec = ssl_index < 0 ? NULL : SSL_get_ex_data(ssl, ssl_index);
    enum ktla_cipher cipher;
    const EVP_MD *md;
    uint16_t version;
    size_t md_len;
    int ret;

    ret = suite_of(ssl, &version, &cipher, &md);
    if (ret < 0)
        goto wipe_key;
    md_len = (size_t)EVP_MD_get_size(md);
    ret = KTLA_EINVAL;
    if (version != KTLA_TLS1_3 || sec == NULL || sec->client_len != md_len ||
        sec->server_len != md_len || (dir != KTLA_DIR_TX && dir != KTLA_DIR_RX))
        goto wipe_key;
    /* TX is our own write direction: the server's secret on a server, the client's on a client. */
    ret = next_generation(ktla_ssl_libctx(ssl), md,
                          (dir == KTLA_DIR_TX) == (SSL_is_server(ssl) == 1) ? sec->server
                                                                            : sec->client,
                          md_len, version, cipher, k);
    if (ret == 0)
        return 0;
wipe_key:
    ktla_key_wipe(k);
    return ret;
}

int ktla_keys_export(SSL *ssl, struct ktla_secrets *out)
{
    const struct secrets *sec = ssl_index < 0 ? NULL : SSL_get_ex_data(ssl, ssl_index);
    enum ktla_cipher cipher;
    const EVP_MD *md;
    uint16_t version;
    size_t md_len;
    int ret;

    memset(out, 0, sizeof(*out));
    ret = suite_of(ssl, &version, &cipher, &md);
    if (ret < 0)
        return ret;
    md_len = (size_t)EVP_MD_get_size(md);
    if (version != KTLA_TLS1_3 || sec == NULL || sec->client_len != md_len ||
        sec->server_len != md_len || md_len > sizeof(out->tx))
        return KTLA_EINVAL;
    bool server = SSL_is_server(ssl) == 1;
    memcpy(out->tx, server ? sec->server : sec->client, md_len);
    memcpy(out->rx, server ? sec->client : sec->server, md_len);
    out->len = (uint8_t)md_len;
    out->cipher = (uint8_t)cipher;
    out->md_nid = EVP_MD_get_type(md);
    return 0;
}

int ktla_secrets_update(struct ktla_secrets *s, enum ktla_dir dir, struct ktla_key *k)
{
    const EVP_MD *md = s->len ? EVP_get_digestbynid(s->md_nid) : NULL;
    int ret = KTLA_EINVAL;

    if (md && (size_t)EVP_MD_get_size(md) == s->len && (dir == KTLA_DIR_TX || dir == KTLA_DIR_RX))
        ret = next_generation(NULL, md, dir == KTLA_DIR_TX ? s->tx : s->rx, s->len, KTLA_TLS1_3,
                              (enum ktla_cipher)s->cipher, k);
    if (ret < 0)
        ktla_key_wipe(k);
    return ret;
}

int ktla_secrets_current(const struct ktla_secrets *s, enum ktla_dir dir, struct ktla_key *k)
{
    const EVP_MD *md = s->len ? EVP_get_digestbynid(s->md_nid) : NULL;
    int ret = KTLA_EINVAL;

    if (md && (size_t)EVP_MD_get_size(md) == s->len && (dir == KTLA_DIR_TX || dir == KTLA_DIR_RX))
        ret = tls13_key(NULL, md, dir == KTLA_DIR_TX ? s->tx : s->rx, s->len, KTLA_TLS1_3,
                        (enum ktla_cipher)s->cipher, k);
    if (ret < 0)
        ktla_key_wipe(k);
    return ret;
}

void ktla_secrets_wipe(struct ktla_secrets *s)
{
    OPENSSL_cleanse(s, sizeof(*s));
}

void ktla_keys_forget(SSL *ssl)
{
    struct secrets *sec;

    if (ssl_index < 0)
        return;
    sec = SSL_get_ex_data(ssl, ssl_index);
    if (sec == NULL)
        return;
    SSL_set_ex_data(ssl, ssl_index, NULL);
    OPENSSL_clear_free(sec, sizeof(*sec));
}
