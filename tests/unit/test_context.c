/*
 * The TLS context against a real OpenSSL client, in memory: each test makes its certificates,
 * builds a ktla_ctx, and pumps a handshake between a client SSL and a server SSL made from
 * ktla_ctx_ssl_ctx() through a pair of memory BIOs. Files go to a mkdtemp directory that the
 * fixture removes.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "context.h"

/* ---------------------------------------------------------------------------------------------
 * Temporary files: one directory per test, emptied and removed by the fixture.
 */

static char tmp_dir[] = "/tmp/ktla-context-XXXXXX";

static void tmp_init(void)
{
    strcpy(tmp_dir, "/tmp/ktla-context-XXXXXX");
    cr_assert(mkdtemp(tmp_dir), "mkdtemp failed");
}

static void tmp_fini(void)
{
    DIR *d = opendir(tmp_dir);
    struct dirent *e;
    char path[PATH_MAX];

    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", tmp_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(tmp_dir);
}

/* Writes `len` bytes to a file of that name in the test's directory; returns its path. */
static const char *tmp_write(const char *name, const void *data, size_t len)
{
    static char paths[16][PATH_MAX];
    static size_t used;
    char *path = paths[used++ % 16];
    FILE *f;

    snprintf(path, PATH_MAX, "%s/%s", tmp_dir, name);
    f = fopen(path, "wb");
    cr_assert(f, "fopen %s", path);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    return path;
}

static const char *tmp_path(const char *name)
{
    static char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", tmp_dir, name);
    return path;
}

/* A ticket key file of `n` random keys; the keys also land in `keys` when it is not NULL. */
static const char *key_file(const char *name, size_t n, unsigned char *keys)
{
    unsigned char buf[4 * 80];

    cr_assert(n * 80 <= sizeof(buf));
    cr_assert_eq(RAND_bytes(buf, (int)(n * 80)), 1);
    if (keys)
        memcpy(keys, buf, n * 80);
    return tmp_write(name, buf, n * 80);
}

TestSuite(ctx, .init = tmp_init, .fini = tmp_fini);
TestSuite(ctx_handshake, .init = tmp_init, .fini = tmp_fini);
TestSuite(ctx_sni, .init = tmp_init, .fini = tmp_fini);
TestSuite(ctx_alpn, .init = tmp_init, .fini = tmp_fini);
TestSuite(ctx_certs, .init = tmp_init, .fini = tmp_fini);
TestSuite(ctx_tickets, .init = tmp_init, .fini = tmp_fini);
TestSuite(ctx_reload, .init = tmp_init, .fini = tmp_fini);

/* ---------------------------------------------------------------------------------------------
 * Test certificates
 */

enum key_type { KEY_EC, KEY_RSA };

struct test_cert {
    EVP_PKEY *key;
    X509 *x509;
    char *cert_pem; /* this certificate alone */
    char *key_pem;
};

static char *bio_to_string(BIO *bio)
{
    char *data, *s;
    long len = BIO_get_mem_data(bio, &data);

    cr_assert(len > 0);
    s = malloc((size_t)len + 1);
    cr_assert(s);
    memcpy(s, data, (size_t)len);
    s[len] = '\0';
    BIO_free(bio);
    return s;
}

static void add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, v3, nid, value);

    cr_assert(ext, "extension %s", value);
    cr_assert(X509_add_ext(x, ext, -1));
    X509_EXTENSION_free(ext);
}

/*
 * A certificate with subject CN `cn` and subjectAltName `sans` ("DNS:a.test,DNS:*.b.test"; NULL:
 * none), signed by `issuer` or self-signed when it is NULL; a CA certificate when `ca`.
 */
static void cert_make_cn(struct test_cert *c, enum key_type type, const char *cn, const char *sans,
                         const struct test_cert *issuer, bool ca)
{
    static long serial = 1;
    X509V3_CTX v3;
    X509_NAME *name;
    BIO *bio;
    X509 *x;

    c->key = type == KEY_EC ? EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")
                            : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    cr_assert(c->key);
    x = X509_new();
    cr_assert(x);
    cr_assert(X509_set_version(x, X509_VERSION_3));
    cr_assert(ASN1_INTEGER_set(X509_get_serialNumber(x), serial++));
    cr_assert(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
    cr_assert(X509_gmtime_adj(X509_getm_notAfter(x), 86400));
    cr_assert(X509_set_pubkey(x, c->key));
    name = X509_get_subject_name(x);
    cr_assert(
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0));
    cr_assert(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->x509) : name));
    memset(&v3, 0, sizeof(v3));
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer->x509 : x, x, NULL, NULL, 0);
    if (sans)
        add_ext(x, &v3, NID_subject_alt_name, sans);
    if (ca)
        add_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE");
    cr_assert(X509_sign(x, issuer ? issuer->key : c->key, EVP_sha256()) > 0);
    c->x509 = x;

    bio = BIO_new(BIO_s_mem());
    cr_assert(bio && PEM_write_bio_X509(bio, x));
    c->cert_pem = bio_to_string(bio);
    bio = BIO_new(BIO_s_mem());
    cr_assert(bio && PEM_write_bio_PrivateKey(bio, c->key, NULL, NULL, 0, NULL, NULL));
    c->key_pem = bio_to_string(bio);
}

static void cert_make(struct test_cert *c, enum key_type type, const char *sans,
                      const struct test_cert *issuer, bool ca)
{
    cert_make_cn(c, type, ca ? "ktla test CA" : "ktla test", sans, issuer, ca);
}

static void cert_free(struct test_cert *c)
{
    EVP_PKEY_free(c->key);
    X509_free(c->x509);
    free(c->cert_pem);
    free(c->key_pem);
}

static struct ktla_cert_config cert_config(const struct test_cert *c)
{
    return (struct ktla_cert_config){.cert_pem = c->cert_pem, .key_pem = c->key_pem};
}

/* The first DNS subjectAltName of the certificate the client received, "" when none. */
static void peer_san(SSL *client, char *out, size_t len)
{
    X509 *peer = SSL_get0_peer_certificate(client);
    GENERAL_NAMES *names;

    cr_assert(peer, "the client got no certificate");
    out[0] = '\0';
    names = X509_get_ext_d2i(peer, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type == GEN_DNS) {
            snprintf(out, len, "%.*s", ASN1_STRING_length(g->d.dNSName),
                     (const char *)ASN1_STRING_get0_data(g->d.dNSName));
            break;
        }
    }
    GENERAL_NAMES_free(names);
}

/* ---------------------------------------------------------------------------------------------
 * Contexts and in-memory connections
 */

/* What a failing ktla_ctx_new must overwrite with NULL. */
static char not_set_marker;
#define NOT_SET ((struct ktla_ctx *)&not_set_marker)

static struct ktla_ctx *ctx_new(const struct ktla_ctx_config *cfg)
{
    struct ktla_ctx *ctx = NULL;
    int ret = ktla_ctx_new(cfg, &ctx);

    cr_assert_eq(ret, 0, "ktla_ctx_new: %s (%s)", ktla_strerror(ret), ktla_err_name(ret));
    cr_assert(ctx);
    return ctx;
}

/* A context with one certificate and otherwise default settings. */
static struct ktla_ctx *ctx_for(const struct test_cert *c)
{
    struct ktla_cert_config cc = cert_config(c);
    return ctx_new(&(struct ktla_ctx_config){.certs = &cc, .ncerts = 1, .tls13_tickets = 0});
}

/* A client context without certificate verification; `version` 0 allows TLS 1.2 and 1.3. */
static SSL_CTX *client_ctx(uint16_t version)
{
    SSL_CTX *cc = SSL_CTX_new(TLS_client_method());

    cr_assert(cc);
    if (version) {
        cr_assert(SSL_CTX_set_min_proto_version(cc, version));
        cr_assert(SSL_CTX_set_max_proto_version(cc, version));
    }
    return cc;
}

struct conn {
    SSL *client, *server;
};

static void conn_new_from(struct conn *p, SSL_CTX *sctx, SSL_CTX *cctx, const char *sni)
{
    BIO *to_server = BIO_new(BIO_s_mem()), *to_client = BIO_new(BIO_s_mem());

    cr_assert(to_server && to_client);
    /* Empty means "try again", as on a non-blocking socket, not end of stream. */
    BIO_set_mem_eof_return(to_server, -1);
    BIO_set_mem_eof_return(to_client, -1);
    p->client = SSL_new(cctx);
    p->server = SSL_new(sctx);
    cr_assert(p->client && p->server);
    SSL_set_connect_state(p->client);
    SSL_set_accept_state(p->server);
    if (sni)
        cr_assert(SSL_set_tlsext_host_name(p->client, sni));
    /* Each SSL owns one reference on each BIO. */
    cr_assert(BIO_up_ref(to_server) && BIO_up_ref(to_client));
    SSL_set_bio(p->client, to_client, to_server);
    SSL_set_bio(p->server, to_server, to_client);
}

static void conn_new(struct conn *p, struct ktla_ctx *ctx, SSL_CTX *cctx, const char *sni)
{
    SSL_CTX *sctx = ktla_ctx_ssl_ctx(ctx);

    cr_assert(sctx);
    conn_new_from(p, sctx, cctx, sni);
    SSL_CTX_free(sctx);
}

static void conn_free(struct conn *p)
{
    /* OpenSSL's client marks its session not resumable when freed without a close_notify. */
    if (SSL_is_init_finished(p->client))
        SSL_shutdown(p->client);
    SSL_free(p->client);
    SSL_free(p->server);
}

/* Runs both sides until both finished (true) or one failed (false). */
static bool handshake(struct conn *p)
{
    bool client_done = false, server_done = false;

    ERR_clear_error();
    for (int i = 0; i < 64 && !(client_done && server_done); i++) {
        if (!client_done) {
            int r = SSL_do_handshake(p->client);
            if (r == 1)
                client_done = true;
            else if (SSL_get_error(p->client, r) != SSL_ERROR_WANT_READ)
                return false;
        }
        if (!server_done) {
            int r = SSL_do_handshake(p->server);
            if (r == 1)
                server_done = true;
            else if (SSL_get_error(p->server, r) != SSL_ERROR_WANT_READ)
                return false;
        }
    }
    return client_done && server_done;
}

/* Application data both ways; the client also reads the TLS 1.3 tickets sent before it. */
static void exchange(struct conn *p)
{
    char buf[16];

    cr_assert_eq(SSL_write(p->server, "ping", 4), 4);
    cr_assert_eq(SSL_read(p->client, buf, sizeof(buf)), 4);
    cr_assert(memcmp(buf, "ping", 4) == 0);
    cr_assert_eq(SSL_write(p->client, "pong", 4), 4);
    cr_assert_eq(SSL_read(p->server, buf, sizeof(buf)), 4);
    cr_assert(memcmp(buf, "pong", 4) == 0);
}

/*
 * One connection to `ctx`, resuming `resume` when not NULL, that must complete; *next receives
 * the client's session afterwards (with the newest ticket) when not NULL. Returns whether the
 * server resumed, after checking that the client agrees.
 */
static bool connect_once(struct ktla_ctx *ctx, SSL_CTX *cctx, const char *sni, SSL_SESSION *resume,
                         SSL_SESSION **next)
{
    struct conn p;
    bool reused;

    conn_new(&p, ctx, cctx, sni);
    if (resume)
        cr_assert(SSL_set_session(p.client, resume));
    cr_assert(handshake(&p), "handshake failed: %s", ERR_reason_error_string(ERR_peek_error()));
    exchange(&p);
    reused = SSL_session_reused(p.server);
    cr_assert_eq(reused, SSL_session_reused(p.client) == 1);
    if (next) {
        *next = SSL_get1_session(p.client);
        cr_assert(*next);
    }
    conn_free(&p);
    return reused;
}

/* The name of the key that sealed the session's ticket: its first 16 bytes. */
static const unsigned char *ticket_key_name(SSL_SESSION *sess)
{
    const unsigned char *tick;
    size_t len;

    SSL_SESSION_get0_ticket(sess, &tick, &len);
    cr_assert(len > 16, "the session has no ticket (%zu bytes, version %x)", len,
              SSL_SESSION_get_protocol_version(sess));
    return tick;
}

/* ---------------------------------------------------------------------------------------------
 * Configuration
 */

Test(ctx, rejects_bad_configuration_with_einval)
{
    struct test_cert c;
    struct ktla_ctx *ctx = NOT_SET;
    char long_proto[300];

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cc = cert_config(&c);
    struct ktla_cert_config no_key = {.cert_pem = c.cert_pem};
    struct ktla_cert_config no_cert = {.key_pem = c.key_pem};
    memset(long_proto, 'a', sizeof(long_proto) - 1);
    long_proto[sizeof(long_proto) - 1] = '\0';
    const char *empty[] = {""};
    const char *too_long[] = {long_proto};
    const char *null_proto[] = {"h2", NULL};
    const struct ktla_ctx_config bad[] = {
        {.certs = NULL, .ncerts = 1},
        {.certs = &cc, .ncerts = 0},
        {.certs = &no_key, .ncerts = 1},
        {.certs = &no_cert, .ncerts = 1},
        {.certs = &cc, .ncerts = 1, .min_version = 0x0301},
        {.certs = &cc, .ncerts = 1, .min_version = 0x0302},
        {.certs = &cc, .ncerts = 1, .max_version = 0x0305},
        {.certs = &cc, .ncerts = 1, .min_version = KTLA_TLS1_3, .max_version = KTLA_TLS1_2},
        {.certs = &cc, .ncerts = 1, .tls13_tickets = -2},
        {.certs = &cc, .ncerts = 1, .alpn = empty, .nalpn = 1},
        {.certs = &cc, .ncerts = 1, .alpn = too_long, .nalpn = 1},
        {.certs = &cc, .ncerts = 1, .alpn = null_proto, .nalpn = 2},
        {.certs = &cc, .ncerts = 1, .alpn = NULL, .nalpn = 1},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int ret = ktla_ctx_new(&bad[i], &ctx);
        cr_assert_eq(ret, KTLA_EINVAL, "config %zu: %s", i, ktla_err_name(ret));
        cr_assert_null(ctx, "config %zu left a context behind", i);
        ctx = NOT_SET;
    }
    cr_assert_eq(ktla_ctx_new(NULL, &ctx), KTLA_EINVAL);
    cr_assert_eq(ktla_ctx_new(&(struct ktla_ctx_config){.certs = &cc, .ncerts = 1}, NULL),
                 KTLA_EINVAL);
    /* The same certificate with a sound configuration is accepted: the rejections were real. */
    ktla_ctx_free(ctx_new(&(struct ktla_ctx_config){.certs = &cc, .ncerts = 1}));
    ktla_ctx_free(NULL);
    cert_free(&c);
}

/* Every SSL_CTX of a context, the SNI ones too, carries the settings kernel TLS relies on. */
static void assert_settings(SSL_CTX *sc, size_t tickets)
{
    uint64_t must =
        SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE;

    cr_assert_eq(SSL_CTX_get_options(sc) & must, must);
    cr_assert_eq(SSL_CTX_get_options(sc) & SSL_OP_NO_TICKET, 0);
    cr_assert_eq(SSL_CTX_get_max_early_data(sc), 0);
    cr_assert(SSL_CTX_get_mode(sc) & SSL_MODE_RELEASE_BUFFERS);
    cr_assert_eq(SSL_CTX_get_num_tickets(sc), tickets);
    cr_assert_eq(SSL_CTX_get_session_cache_mode(sc), SSL_SESS_CACHE_OFF);
    cr_assert_eq(SSL_CTX_get_min_proto_version(sc), TLS1_2_VERSION);
    cr_assert_eq(SSL_CTX_get_max_proto_version(sc), TLS1_3_VERSION);
    /* Without one, OpenSSL would prompt on the terminal for an encrypted key file's passphrase. */
    cr_assert_not_null(SSL_CTX_get_default_passwd_cb(sc));
}

Test(ctx, compression_renegotiation_and_early_data_are_off)
{
    struct test_cert def, other;
    struct ktla_ctx *ctx;
    SSL_CTX *cc = client_ctx(KTLA_TLS1_2);
    struct conn p;

    cert_make(&def, KEY_EC, "DNS:default.test", NULL, false);
    cert_make(&other, KEY_EC, "DNS:a.example.com", NULL, false);
    struct ktla_cert_config certs[] = {cert_config(&def), cert_config(&other)};
    ctx = ctx_new(&(struct ktla_ctx_config){.certs = certs, .ncerts = 2, .tls13_tickets = 3});

    conn_new(&p, ctx, cc, "a.example.com");
    assert_settings(SSL_get_SSL_CTX(p.server), 3);
    cr_assert(handshake(&p));
    SSL_CTX *sni_ctx = SSL_get_SSL_CTX(p.server);
    SSL_CTX *def_ctx = ktla_ctx_ssl_ctx(ctx);
    cr_assert(sni_ctx != def_ctx, "the handshake did not switch to the SNI certificate");
    assert_settings(sni_ctx, 3);
    SSL_CTX_free(def_ctx);
    cr_assert_eq(SSL_get_options(p.server) & SSL_OP_NO_RENEGOTIATION, SSL_OP_NO_RENEGOTIATION);
    cr_assert_null(SSL_get_current_compression(p.server));
    /* A server asking for renegotiation is refused before anything goes on the wire. */
    cr_assert_eq(SSL_renegotiate(p.server), 0);
    exchange(&p);
    conn_free(&p);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&def);
    cert_free(&other);
}

static int tickets_seen;

static int count_ticket(SSL *ssl, SSL_SESSION *sess)
{
    (void)ssl, (void)sess;
    tickets_seen++;
    return 0; /* the session is not kept */
}

/*
 * A client that counts the TLS 1.3 tickets it receives. Only for counting: OpenSSL's client cache
 * treats a TLS 1.3 ticket as single-use, so sessions from it do not resume twice.
 */
static SSL_CTX *counting_client_ctx(void)
{
    SSL_CTX *cc = client_ctx(KTLA_TLS1_3);

    SSL_CTX_set_session_cache_mode(cc, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(cc, count_ticket);
    return cc;
}

Test(ctx, the_default_is_two_tls13_tickets_and_minus_one_sends_none)
{
    struct test_cert c;
    SSL_CTX *cc = counting_client_ctx();
    SSL_SESSION *sess;

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cc_cert = cert_config(&c);
    const int configured[] = {0, -1, 3};
    const int sent[] = {2, 0, 3};
    for (size_t i = 0; i < 3; i++) {
        struct ktla_ctx *ctx = ctx_new(&(struct ktla_ctx_config){
            .certs = &cc_cert, .ncerts = 1, .tls13_tickets = configured[i]});
        tickets_seen = 0;
        connect_once(ctx, cc, NULL, NULL, &sess);
        cr_assert_eq(tickets_seen, sent[i], "tls13_tickets %d: %d tickets", configured[i],
                     tickets_seen);
        cr_assert_eq(SSL_SESSION_is_resumable(sess), sent[i] > 0);
        SSL_SESSION_free(sess);
        ktla_ctx_free(ctx);
    }
    SSL_CTX_free(cc);
    cert_free(&c);
}

Test(ctx, references_keep_it_alive_and_ssl_outlives_the_last_one)
{
    struct test_cert def, other;
    SSL_CTX *cc = client_ctx(KTLA_TLS1_2);
    SSL_SESSION *sess;
    struct conn sni, resumed;
    char san[64];

    cert_make(&def, KEY_EC, "DNS:default.test", NULL, false);
    cert_make(&other, KEY_EC, "DNS:a.example.com", NULL, false);
    struct ktla_cert_config certs[] = {cert_config(&def), cert_config(&other)};
    struct ktla_ctx *ctx =
        ctx_new(&(struct ktla_ctx_config){.certs = certs, .ncerts = 2, .tls13_tickets = 0});

    ktla_ctx_ref(ctx);
    ktla_ctx_free(ctx);
    cr_assert_not(connect_once(ctx, cc, NULL, NULL, &sess));
    /* The last reference goes before these handshakes run: SNI and tickets must still work. */
    conn_new(&sni, ctx, cc, "a.example.com");
    conn_new(&resumed, ctx, cc, NULL);
    cr_assert(SSL_set_session(resumed.client, sess));
    ktla_ctx_free(ctx);

    cr_assert(handshake(&sni));
    exchange(&sni);
    peer_san(sni.client, san, sizeof(san));
    cr_assert_str_eq(san, "a.example.com");
    cr_assert(handshake(&resumed));
    exchange(&resumed);
    cr_assert(SSL_session_reused(resumed.server));
    conn_free(&sni);
    conn_free(&resumed);
    SSL_SESSION_free(sess);
    SSL_CTX_free(cc);
    cert_free(&def);
    cert_free(&other);
}

/* ---------------------------------------------------------------------------------------------
 * Versions, suites, groups
 */

struct version_key {
    uint16_t version;
    enum key_type key;
    char cipher[40]; /* what the server's preference picks against OpenSSL's default client */
};

static struct version_key version_keys[] = {
    {KTLA_TLS1_2, KEY_EC, "ECDHE-ECDSA-AES128-GCM-SHA256"},
    {KTLA_TLS1_2, KEY_RSA, "ECDHE-RSA-AES128-GCM-SHA256"},
    {KTLA_TLS1_3, KEY_EC, "TLS_AES_128_GCM_SHA256"},
    {KTLA_TLS1_3, KEY_RSA, "TLS_AES_128_GCM_SHA256"},
};

ParameterizedTestParameters(ctx_handshake, completes_with_each_version_and_key_type)
{
    return cr_make_param_array(struct version_key, version_keys,
                               sizeof(version_keys) / sizeof(version_keys[0]));
}

ParameterizedTest(struct version_key *v, ctx_handshake, completes_with_each_version_and_key_type)
{
    struct test_cert c;
    struct ktla_ctx *ctx;
    SSL_CTX *cc = client_ctx(v->version);
    struct conn p;

    cert_make(&c, v->key, "DNS:default.test", NULL, false);
    ctx = ctx_for(&c);
    conn_new(&p, ctx, cc, NULL);
    cr_assert(handshake(&p), "handshake failed: %s", ERR_reason_error_string(ERR_peek_error()));
    exchange(&p);
    cr_assert_eq(SSL_version(p.server), v->version);
    /* OpenSSL's client prefers AES-256: AES-128 means the server's order won. */
    cr_assert_str_eq(SSL_CIPHER_get_name(SSL_get_current_cipher(p.client)), v->cipher);
    cr_assert_eq(SSL_get_negotiated_group(p.server), NID_X25519);
    cr_assert(EVP_PKEY_is_a(X509_get0_pubkey(SSL_get0_peer_certificate(p.client)),
                            v->key == KEY_EC ? "EC" : "RSA"));
    conn_free(&p);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

struct offer {
    uint16_t version;
    enum key_type key;
    char suites[48];
};

static struct offer allowed_offers[] = {
    {KTLA_TLS1_3, KEY_EC, "TLS_AES_128_GCM_SHA256"},
    {KTLA_TLS1_3, KEY_EC, "TLS_AES_256_GCM_SHA384"},
    {KTLA_TLS1_3, KEY_EC, "TLS_CHACHA20_POLY1305_SHA256"},
    {KTLA_TLS1_2, KEY_EC, "ECDHE-ECDSA-AES128-GCM-SHA256"},
    {KTLA_TLS1_2, KEY_EC, "ECDHE-ECDSA-AES256-GCM-SHA384"},
    {KTLA_TLS1_2, KEY_EC, "ECDHE-ECDSA-CHACHA20-POLY1305"},
    {KTLA_TLS1_2, KEY_RSA, "ECDHE-RSA-AES128-GCM-SHA256"},
    {KTLA_TLS1_2, KEY_RSA, "ECDHE-RSA-AES256-GCM-SHA384"},
    {KTLA_TLS1_2, KEY_RSA, "ECDHE-RSA-CHACHA20-POLY1305"},
};

/* Suites kernel TLS cannot carry, or without forward secrecy, each with a certificate that
 * could serve it, so only the server's suite list can be what refuses it. */
static struct offer refused_offers[] = {
    {KTLA_TLS1_2, KEY_RSA, "AES128-SHA"},
    {KTLA_TLS1_2, KEY_RSA, "AES128-GCM-SHA256"},
    {KTLA_TLS1_2, KEY_RSA, "DHE-RSA-AES128-GCM-SHA256"},
    {KTLA_TLS1_2, KEY_RSA, "ECDHE-RSA-AES128-SHA256"},
    {KTLA_TLS1_2, KEY_EC, "ECDHE-ECDSA-AES128-SHA"},
    {KTLA_TLS1_2, KEY_EC, "ECDHE-ECDSA-AES128-CCM"},
    {KTLA_TLS1_3, KEY_EC, "TLS_AES_128_CCM_SHA256"},
};

/* A client offering only `o`'s suite; false when OpenSSL's client does not know it at all. */
static bool offer_client(const struct offer *o, SSL_CTX **out)
{
    SSL_CTX *cc = client_ctx(o->version);
    int ok = o->version == KTLA_TLS1_3 ? SSL_CTX_set_ciphersuites(cc, o->suites)
                                       : SSL_CTX_set_cipher_list(cc, o->suites);
    *out = cc;
    return ok == 1;
}

ParameterizedTestParameters(ctx_handshake, each_allowed_suite_negotiates_alone)
{
    return cr_make_param_array(struct offer, allowed_offers,
                               sizeof(allowed_offers) / sizeof(allowed_offers[0]));
}

ParameterizedTest(struct offer *o, ctx_handshake, each_allowed_suite_negotiates_alone)
{
    struct test_cert c;
    struct ktla_ctx *ctx;
    SSL_CTX *cc;
    struct conn p;

    cr_assert(offer_client(o, &cc), "the client does not know %s", o->suites);
    cert_make(&c, o->key, "DNS:default.test", NULL, false);
    ctx = ctx_for(&c);
    conn_new(&p, ctx, cc, NULL);
    cr_assert(handshake(&p), "%s: %s", o->suites, ERR_reason_error_string(ERR_peek_error()));
    cr_assert_str_eq(SSL_CIPHER_get_name(SSL_get_current_cipher(p.server)), o->suites);
    conn_free(&p);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

ParameterizedTestParameters(ctx_handshake, a_client_offering_only_other_suites_is_refused)
{
    return cr_make_param_array(struct offer, refused_offers,
                               sizeof(refused_offers) / sizeof(refused_offers[0]));
}

ParameterizedTest(struct offer *o, ctx_handshake, a_client_offering_only_other_suites_is_refused)
{
    struct test_cert c;
    struct ktla_ctx *ctx;
    SSL_CTX *cc, *plain;
    struct conn p;

    cr_assert(offer_client(o, &cc), "the client does not know %s", o->suites);
    cert_make(&c, o->key, "DNS:default.test", NULL, false);

    /* A stock OpenSSL server with the same certificate accepts the offer... */
    plain = SSL_CTX_new(TLS_server_method());
    cr_assert(plain);
    SSL_CTX_set_security_level(plain, 0);
    cr_assert(SSL_CTX_set_cipher_list(plain, "ALL:@SECLEVEL=0"));
    SSL_CTX_set_dh_auto(plain, 1);
    if (o->version == KTLA_TLS1_3)
        cr_assert(SSL_CTX_set_ciphersuites(plain, o->suites));
    cr_assert(SSL_CTX_use_certificate(plain, c.x509) && SSL_CTX_use_PrivateKey(plain, c.key));
    conn_new_from(&p, plain, cc, NULL);
    cr_assert(handshake(&p), "%s: the baseline server refused it too", o->suites);
    conn_free(&p);
    SSL_CTX_free(plain);

    /* ...a ktla one does not. */
    ctx = ctx_for(&c);
    conn_new(&p, ctx, cc, NULL);
    cr_assert_not(handshake(&p), "%s was accepted", o->suites);
    conn_free(&p);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

Test(ctx_handshake, a_client_without_x25519_p256_or_p384_is_refused)
{
    struct test_cert c;
    struct ktla_ctx *ctx;
    struct conn p;
    const uint16_t versions[] = {KTLA_TLS1_2, KTLA_TLS1_3};

    /* RSA: in TLS 1.2 an ECDSA certificate's own curve would have to be among the groups. */
    cert_make(&c, KEY_RSA, "DNS:default.test", NULL, false);
    ctx = ctx_for(&c);
    for (size_t i = 0; i < 2; i++) {
        SSL_CTX *cc = client_ctx(versions[i]);
        cr_assert(SSL_CTX_set1_groups_list(cc, "P-384"));
        conn_new(&p, ctx, cc, NULL);
        cr_assert(handshake(&p));
        cr_assert_eq(SSL_get_negotiated_group(p.server), NID_secp384r1);
        conn_free(&p);
        cr_assert(SSL_CTX_set1_groups_list(cc, "P-521:ffdhe2048"));
        conn_new(&p, ctx, cc, NULL);
        cr_assert_not(handshake(&p), "TLS %x: P-521 or ffdhe2048 was accepted", versions[i]);
        conn_free(&p);
        SSL_CTX_free(cc);
    }
    ktla_ctx_free(ctx);
    cert_free(&c);
}

Test(ctx_handshake, the_version_range_is_enforced)
{
    struct test_cert c;
    struct ktla_ctx *only12, *only13;
    SSL_CTX *cc12 = client_ctx(KTLA_TLS1_2), *cc13 = client_ctx(KTLA_TLS1_3);
    struct conn p;

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cc = cert_config(&c);
    only12 = ctx_new(&(struct ktla_ctx_config){
        .certs = &cc, .ncerts = 1, .min_version = KTLA_TLS1_2, .max_version = KTLA_TLS1_2});
    only13 =
        ctx_new(&(struct ktla_ctx_config){.certs = &cc, .ncerts = 1, .min_version = KTLA_TLS1_3});

    conn_new(&p, only12, cc12, NULL);
    cr_assert(handshake(&p));
    conn_free(&p);
    conn_new(&p, only12, cc13, NULL);
    cr_assert_not(handshake(&p));
    conn_free(&p);
    conn_new(&p, only13, cc13, NULL);
    cr_assert(handshake(&p));
    conn_free(&p);
    conn_new(&p, only13, cc12, NULL);
    cr_assert_not(handshake(&p));
    conn_free(&p);

    ktla_ctx_free(only12);
    ktla_ctx_free(only13);
    SSL_CTX_free(cc12);
    SSL_CTX_free(cc13);
    cert_free(&c);
}

/* ---------------------------------------------------------------------------------------------
 * SNI
 */

struct sni_case {
    char sent[32]; /* "" sends no SNI */
    char served[32];
};

static struct sni_case sni_cases[] = {
    {"a.example.com", "a.example.com"},
    {"A.Example.COM", "a.example.com"},
    {"b.example.com", "b.example.com"},
    {"x.wild.test", "a.example.com"},
    {"X.WILD.TEST", "a.example.com"},
    {"a.b.wild.test", "default.test"},
    {"wild.test", "default.test"},
    {"unknown.test", "default.test"},
    {"default.test", "default.test"},
    {"", "default.test"},
    /* "w*" is not a whole label, and a subject CN is not a subjectAltName. */
    {"www.partial.test", "default.test"},
    {"cn-only.test", "default.test"},
};

ParameterizedTestParameters(ctx_sni, serves_the_certificate_whose_san_matches)
{
    return cr_make_param_array(struct sni_case, sni_cases,
                               sizeof(sni_cases) / sizeof(sni_cases[0]));
}

ParameterizedTest(struct sni_case *t, ctx_sni, serves_the_certificate_whose_san_matches)
{
    struct test_cert def, a, b, cn_only;
    struct ktla_ctx *ctx;
    const uint16_t versions[] = {KTLA_TLS1_2, KTLA_TLS1_3};
    struct conn p;
    char san[64];

    cert_make(&def, KEY_EC, "DNS:default.test", NULL, false);
    cert_make(&a, KEY_EC, "DNS:a.example.com,DNS:*.wild.test", NULL, false);
    cert_make(&b, KEY_EC, "DNS:b.example.com,DNS:w*.partial.test", NULL, false);
    cert_make_cn(&cn_only, KEY_EC, "cn-only.test", NULL, NULL, false);
    struct ktla_cert_config certs[] = {cert_config(&def), cert_config(&a), cert_config(&b),
                                       cert_config(&cn_only)};
    ctx = ctx_new(&(struct ktla_ctx_config){.certs = certs, .ncerts = 4});
    for (size_t i = 0; i < 2; i++) {
        SSL_CTX *cc = client_ctx(versions[i]);
        conn_new(&p, ctx, cc, t->sent[0] ? t->sent : NULL);
        cr_assert(handshake(&p));
        exchange(&p);
        peer_san(p.client, san, sizeof(san));
        cr_assert_str_eq(san, t->served, "SNI \"%s\" over TLS %x", t->sent, versions[i]);
        /* The server's code finds the name the client asked for on the SSL. */
        const char *seen = SSL_get_servername(p.server, TLSEXT_NAMETYPE_host_name);
        if (t->sent[0])
            cr_assert_str_eq(seen ? seen : "(none)", t->sent);
        else
            cr_assert_null(seen);
        conn_free(&p);
        SSL_CTX_free(cc);
    }
    ktla_ctx_free(ctx);
    cert_free(&def);
    cert_free(&a);
    cert_free(&b);
    cert_free(&cn_only);
}

/* ---------------------------------------------------------------------------------------------
 * ALPN
 */

/* The protocol both sides agreed on, "" for none; both sides must say the same. */
static void alpn_of(struct conn *p, char *out, size_t len)
{
    const unsigned char *s, *c;
    unsigned int slen, clen;

    SSL_get0_alpn_selected(p->server, &s, &slen);
    SSL_get0_alpn_selected(p->client, &c, &clen);
    cr_assert_eq(slen, clen);
    cr_assert(slen == 0 || memcmp(s, c, slen) == 0);
    snprintf(out, len, "%.*s", (int)slen, (const char *)s);
}

static void alpn_connect(struct ktla_ctx *ctx, SSL_CTX *cc, const char *wire, size_t wire_len,
                         char *selected, size_t len)
{
    struct conn p;

    conn_new(&p, ctx, cc, NULL);
    if (wire)
        cr_assert_eq(
            SSL_set_alpn_protos(p.client, (const unsigned char *)wire, (unsigned int)wire_len), 0);
    cr_assert(handshake(&p), "handshake failed: %s", ERR_reason_error_string(ERR_peek_error()));
    exchange(&p);
    alpn_of(&p, selected, len);
    conn_free(&p);
}

#define WIRE(s) s, sizeof(s) - 1

Test(ctx_alpn, picks_the_servers_first_choice_among_the_clients_offers)
{
    struct test_cert c;
    const char *protos[] = {"h2", "http/1.1"};
    const uint16_t versions[] = {KTLA_TLS1_2, KTLA_TLS1_3};
    char got[32];

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cc = cert_config(&c);
    struct ktla_ctx *ctx =
        ctx_new(&(struct ktla_ctx_config){.certs = &cc, .ncerts = 1, .alpn = protos, .nalpn = 2});
    for (size_t i = 0; i < 2; i++) {
        SSL_CTX *client = client_ctx(versions[i]);
        alpn_connect(ctx, client, WIRE("\x08http/1.1\x02h2"), got, sizeof(got));
        cr_assert_str_eq(got, "h2");
        alpn_connect(ctx, client, WIRE("\x06spdy/3\x08http/1.1"), got, sizeof(got));
        cr_assert_str_eq(got, "http/1.1");
        /* A prefix of a server protocol is a different protocol. */
        alpn_connect(ctx, client, WIRE("\x01h\x05http/"), got, sizeof(got));
        cr_assert_str_eq(got, "");
        SSL_CTX_free(client);
    }
    ktla_ctx_free(ctx);
    cert_free(&c);
}

Test(ctx_alpn, an_offer_without_a_match_continues_without_alpn)
{
    struct test_cert c;
    const char *protos[] = {"h2", "http/1.1"};
    SSL_CTX *client = client_ctx(0);
    char got[32];

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cc = cert_config(&c);
    struct ktla_ctx *with =
        ctx_new(&(struct ktla_ctx_config){.certs = &cc, .ncerts = 1, .alpn = protos, .nalpn = 2});
    struct ktla_ctx *without = ctx_new(&(struct ktla_ctx_config){.certs = &cc, .ncerts = 1});

    alpn_connect(with, client, WIRE("\x06spdy/3\x03h2c"), got, sizeof(got));
    cr_assert_str_eq(got, "");
    alpn_connect(with, client, NULL, 0, got, sizeof(got));
    cr_assert_str_eq(got, "");
    alpn_connect(without, client, WIRE("\x02h2"), got, sizeof(got));
    cr_assert_str_eq(got, "");
    /* The server list is copied at ktla_ctx_new: the caller's array may go. */
    protos[0] = "spdy/3";
    alpn_connect(with, client, WIRE("\x06spdy/3\x02h2"), got, sizeof(got));
    cr_assert_str_eq(got, "h2");

    ktla_ctx_free(with);
    ktla_ctx_free(without);
    SSL_CTX_free(client);
    cert_free(&c);
}

/* ---------------------------------------------------------------------------------------------
 * Certificates
 */

Test(ctx_certs, loads_a_chain_from_files_and_from_memory)
{
    struct test_cert ca, leaf, other;
    SSL_CTX *cc = client_ctx(0);
    struct conn p;
    char chain[8192], san[64];

    cert_make(&ca, KEY_EC, NULL, NULL, true);
    cert_make(&leaf, KEY_RSA, "DNS:leaf.test", &ca, false);
    cert_make(&other, KEY_EC, "DNS:other.test", NULL, false);
    snprintf(chain, sizeof(chain), "%s%s", leaf.cert_pem, ca.cert_pem);
    struct ktla_cert_config from_files = {
        .cert_file = tmp_write("chain.pem", chain, strlen(chain)),
        .key_file = tmp_write("key.pem", leaf.key_pem, strlen(leaf.key_pem)),
        /* Files win over PEM text given alongside them. */
        .cert_pem = other.cert_pem,
        .key_pem = other.key_pem,
    };
    struct ktla_cert_config from_memory = {.cert_pem = chain, .key_pem = leaf.key_pem};
    const struct ktla_cert_config *configs[] = {&from_files, &from_memory};

    for (size_t i = 0; i < 2; i++) {
        ERR_clear_error();
        struct ktla_ctx *ctx = ctx_new(&(struct ktla_ctx_config){.certs = configs[i], .ncerts = 1});
        /* Reading a chain ends on an error OpenSSL records; it must not outlive the load. */
        cr_assert_eq(ERR_peek_error(), 0, "config %zu left an OpenSSL error behind", i);
        conn_new(&p, ctx, cc, NULL);
        cr_assert(handshake(&p));
        peer_san(p.client, san, sizeof(san));
        cr_assert_str_eq(san, "leaf.test");
        STACK_OF(X509) *sent = SSL_get_peer_cert_chain(p.client);
        cr_assert_eq(sk_X509_num(sent), 2, "config %zu: chain of %d", i, sk_X509_num(sent));
        cr_assert_eq(X509_cmp(sk_X509_value(sent, 1), ca.x509), 0);
        conn_free(&p);
        ktla_ctx_free(ctx);
    }
    SSL_CTX_free(cc);
    cert_free(&ca);
    cert_free(&leaf);
    cert_free(&other);
}

static void assert_ecert(const struct ktla_cert_config *cc, const char *what)
{
    struct ktla_ctx *ctx = NULL;
    int ret = ktla_ctx_new(&(struct ktla_ctx_config){.certs = cc, .ncerts = 1}, &ctx);

    cr_assert_eq(ret, KTLA_ECERT, "%s: %s", what, ktla_err_name(ret));
    cr_assert_null(ctx);
    /* A failed load leaves nothing on the thread's OpenSSL error queue to confuse later calls. */
    cr_assert_eq(ERR_peek_error(), 0, "%s left an OpenSSL error behind", what);
}

Test(ctx_certs, unusable_certificates_and_keys_are_ecert)
{
    struct test_cert ec, ec2, rsa;
    char broken_chain[8192], *encrypted;
    BIO *bio;

    cert_make(&ec, KEY_EC, "DNS:a.test", NULL, false);
    cert_make(&ec2, KEY_EC, "DNS:b.test", NULL, false);
    cert_make(&rsa, KEY_RSA, "DNS:c.test", NULL, false);
    const char *cert_file = tmp_write("cert.pem", ec.cert_pem, strlen(ec.cert_pem));
    const char *key_file = tmp_write("key.pem", ec.key_pem, strlen(ec.key_pem));
    const char *other_key = tmp_write("other.pem", ec2.key_pem, strlen(ec2.key_pem));
    /* A second certificate cut short: the chain is broken, not finished. */
    snprintf(broken_chain, sizeof(broken_chain), "%s%.100s", ec.cert_pem, ec2.cert_pem);
    bio = BIO_new(BIO_s_mem());
    cr_assert(PEM_write_bio_PrivateKey(bio, ec.key, EVP_aes_256_cbc(), (unsigned char *)"secret", 6,
                                       NULL, NULL));
    encrypted = bio_to_string(bio);

    /* Sanity: the files and texts used below load when paired correctly. */
    ktla_ctx_free(ctx_new(&(struct ktla_ctx_config){
        .certs = &(struct ktla_cert_config){.cert_file = cert_file, .key_file = key_file},
        .ncerts = 1}));

    assert_ecert(&(struct ktla_cert_config){.cert_pem = ec.cert_pem, .key_pem = ec2.key_pem},
                 "another EC key");
    assert_ecert(&(struct ktla_cert_config){.cert_pem = rsa.cert_pem, .key_pem = ec.key_pem},
                 "an EC key for an RSA certificate");
    assert_ecert(&(struct ktla_cert_config){.cert_file = cert_file, .key_file = other_key},
                 "another key file");
    assert_ecert(
        &(struct ktla_cert_config){.cert_file = tmp_path("missing.pem"), .key_file = key_file},
        "a missing certificate file");
    assert_ecert(
        &(struct ktla_cert_config){.cert_file = cert_file, .key_file = tmp_path("missing.pem")},
        "a missing key file");
    assert_ecert(&(struct ktla_cert_config){.cert_pem = "garbage", .key_pem = ec.key_pem},
                 "garbage for a certificate");
    assert_ecert(&(struct ktla_cert_config){.cert_pem = ec.cert_pem, .key_pem = "garbage"},
                 "garbage for a key");
    assert_ecert(&(struct ktla_cert_config){.cert_pem = broken_chain, .key_pem = ec.key_pem},
                 "a broken chain");
    /* An encrypted key is refused, never prompted for on the terminal. */
    assert_ecert(&(struct ktla_cert_config){.cert_pem = ec.cert_pem, .key_pem = encrypted},
                 "an encrypted key");
    assert_ecert(&(struct ktla_cert_config){.cert_file = cert_file,
                                            .key_file = tmp_write("encrypted.pem", encrypted,
                                                                  strlen(encrypted))},
                 "an encrypted key file");

    free(encrypted);
    cert_free(&ec);
    cert_free(&ec2);
    cert_free(&rsa);
}

/* ---------------------------------------------------------------------------------------------
 * Session tickets
 */

static const uint16_t ticket_versions[] = {KTLA_TLS1_2, KTLA_TLS1_3};

ParameterizedTestParameters(ctx_tickets, a_ticket_resumes_the_session)
{
    return cr_make_param_array(uint16_t, (void *)ticket_versions, 2);
}

ParameterizedTest(uint16_t *version, ctx_tickets, a_ticket_resumes_the_session)
{
    struct test_cert c;
    struct ktla_ctx *ctx;
    SSL_CTX *cc = client_ctx(*version);
    SSL_SESSION *first, *second;

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    ctx = ctx_for(&c);
    cr_assert_not(connect_once(ctx, cc, NULL, NULL, &first));
    cr_assert(SSL_SESSION_is_resumable(first));
    cr_assert(SSL_SESSION_has_ticket(first), "a session ID, not a ticket");
    cr_assert_eq(SSL_SESSION_get_max_early_data(first), 0, "the ticket allows 0-RTT");
    cr_assert(connect_once(ctx, cc, NULL, first, &second), "the ticket did not resume");
    cr_assert(connect_once(ctx, cc, NULL, second, NULL), "the renewed ticket did not resume");
    SSL_SESSION_free(first);
    SSL_SESSION_free(second);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

ParameterizedTestParameters(ctx_tickets, no_tickets_means_no_resumption)
{
    return cr_make_param_array(uint16_t, (void *)ticket_versions, 2);
}

ParameterizedTest(uint16_t *version, ctx_tickets, no_tickets_means_no_resumption)
{
    struct test_cert c;
    SSL_CTX *cc = client_ctx(*version);
    SSL_SESSION *sess;

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cert = cert_config(&c);
    struct ktla_ctx *ctx = ctx_new(&(struct ktla_ctx_config){
        .certs = &cert, .ncerts = 1, .tls13_tickets = 0, .no_tickets = 1});
    SSL_CTX *sc = ktla_ctx_ssl_ctx(ctx);
    cr_assert(SSL_CTX_get_options(sc) & SSL_OP_NO_TICKET);
    SSL_CTX_free(sc);

    cr_assert_not(connect_once(ctx, cc, NULL, NULL, &sess));
    cr_assert_not(SSL_SESSION_has_ticket(sess));
    /* No ticket, and no session ID either: the server keeps no session cache. */
    cr_assert_not(SSL_SESSION_is_resumable(sess));
    cr_assert_not(connect_once(ctx, cc, NULL, sess, NULL));
    SSL_SESSION_free(sess);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

ParameterizedTestParameters(ctx_tickets, a_key_file_shares_tickets_between_contexts)
{
    return cr_make_param_array(uint16_t, (void *)ticket_versions, 2);
}

/* The "several processes" case: two contexts from one key file accept each other's tickets. */
ParameterizedTest(uint16_t *version, ctx_tickets, a_key_file_shares_tickets_between_contexts)
{
    struct test_cert c;
    SSL_CTX *cc = client_ctx(*version);
    SSL_SESSION *sess;

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cert = cert_config(&c);
    struct ktla_ctx_config cfg = {.certs = &cert, .ncerts = 1, .tls13_tickets = 0};
    cfg.ticket_key_file = key_file("shared.key", 1, NULL);
    struct ktla_ctx *one = ctx_new(&cfg), *two = ctx_new(&cfg);
    cfg.ticket_key_file = key_file("other.key", 1, NULL);
    struct ktla_ctx *other = ctx_new(&cfg);
    cfg.ticket_key_file = NULL;
    struct ktla_ctx *random_key = ctx_new(&cfg);

    cr_assert_not(connect_once(one, cc, NULL, NULL, &sess));
    cr_assert(connect_once(two, cc, NULL, sess, NULL), "the same key file did not resume");
    cr_assert_not(connect_once(other, cc, NULL, sess, NULL), "another key resumed");
    cr_assert_not(connect_once(random_key, cc, NULL, sess, NULL), "a random key resumed");
    cr_assert(connect_once(one, cc, NULL, sess, NULL));

    SSL_SESSION_free(sess);
    ktla_ctx_free(one);
    ktla_ctx_free(two);
    ktla_ctx_free(other);
    ktla_ctx_free(random_key);
    SSL_CTX_free(cc);
    cert_free(&c);
}

ParameterizedTestParameters(ctx_tickets,
                            rotation_keeps_old_tickets_and_renews_them_under_the_new_key)
{
    return cr_make_param_array(uint16_t, (void *)ticket_versions, 2);
}

ParameterizedTest(uint16_t *version, ctx_tickets,
                  rotation_keeps_old_tickets_and_renews_them_under_the_new_key)
{
    struct test_cert c;
    SSL_CTX *cc = client_ctx(*version);
    SSL_SESSION *old_ticket, *renewed;
    unsigned char old_key[80], new_keys[240];

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cert = cert_config(&c);
    struct ktla_ctx *ctx =
        ctx_new(&(struct ktla_ctx_config){.certs = &cert,
                                          .ncerts = 1,
                                          .tls13_tickets = 0,
                                          .ticket_key_file = key_file("old.key", 1, old_key)});
    cr_assert_not(connect_once(ctx, cc, NULL, NULL, &old_ticket));
    cr_assert(memcmp(ticket_key_name(old_ticket), old_key, 16) == 0,
              "not sealed by the file's key");

    /*
     * [new, another, old]: the old ticket opens, and the client gets a new one sealed by the new
     * key. The old key is last, so that it is found by its name, not by its place.
     */
    key_file("rotated.key", 2, new_keys);
    memcpy(new_keys + 160, old_key, 80);
    cr_assert_eq(ktla_ctx_load_ticket_keys(ctx, tmp_write("rotated.key", new_keys, 240)), 0);
    cr_assert(connect_once(ctx, cc, NULL, old_ticket, &renewed), "the old ticket did not resume");
    cr_assert(memcmp(ticket_key_name(renewed), new_keys, 16) == 0, "not renewed under the new key");

    /* [new]: the old key is gone, and its tickets with it. */
    cr_assert_eq(ktla_ctx_load_ticket_keys(ctx, tmp_write("new.key", new_keys, 80)), 0);
    cr_assert_not(connect_once(ctx, cc, NULL, old_ticket, NULL), "a retired key still opens");
    cr_assert(connect_once(ctx, cc, NULL, renewed, NULL));

    SSL_SESSION_free(old_ticket);
    SSL_SESSION_free(renewed);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

Test(ctx_tickets, a_bad_key_file_is_eticketkey_and_keeps_the_current_keys)
{
    struct test_cert c;
    SSL_CTX *cc = client_ctx(0);
    SSL_SESSION *sess;
    unsigned char bytes[161] = {0};
    const size_t bad_sizes[] = {79, 81, 161, 0};
    struct ktla_ctx *none = NOT_SET;

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cert = cert_config(&c);
    struct ktla_ctx_config cfg = {.certs = &cert, .ncerts = 1, .tls13_tickets = 0};
    cfg.ticket_key_file = key_file("good.key", 2, NULL);
    struct ktla_ctx *ctx = ctx_new(&cfg);
    cr_assert_not(connect_once(ctx, cc, NULL, NULL, &sess));

    for (size_t i = 0; i < sizeof(bad_sizes) / sizeof(bad_sizes[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "bad%zu.key", bad_sizes[i]);
        cfg.ticket_key_file = tmp_write(name, bytes, bad_sizes[i]);
        cr_assert_eq(ktla_ctx_new(&cfg, &none), KTLA_ETICKETKEY, "%zu bytes", bad_sizes[i]);
        cr_assert_null(none);
        none = NOT_SET;
        cr_assert_eq(ktla_ctx_load_ticket_keys(ctx, cfg.ticket_key_file), KTLA_ETICKETKEY,
                     "%zu bytes", bad_sizes[i]);
    }
    const char *unreadable[] = {tmp_path("missing.key"), tmp_dir, "/dev/zero"};
    for (size_t i = 0; i < 3; i++) {
        cfg.ticket_key_file = unreadable[i];
        cr_assert_eq(ktla_ctx_new(&cfg, &none), KTLA_ETICKETKEY, "%s", unreadable[i]);
        cr_assert_null(none);
        none = NOT_SET;
        cr_assert_eq(ktla_ctx_load_ticket_keys(ctx, unreadable[i]), KTLA_ETICKETKEY, "%s",
                     unreadable[i]);
    }
    cr_assert_eq(ktla_ctx_load_ticket_keys(ctx, NULL), KTLA_EINVAL);
    cr_assert_eq(ktla_ctx_load_ticket_keys(NULL, tmp_path("good.key")), KTLA_EINVAL);
    /* None of the failures replaced the keys the ticket was sealed with. */
    cr_assert(connect_once(ctx, cc, NULL, sess, NULL));

    SSL_SESSION_free(sess);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

ParameterizedTestParameters(ctx_tickets, a_ticket_issued_under_an_sni_certificate_resumes_there)
{
    return cr_make_param_array(uint16_t, (void *)ticket_versions, 2);
}

ParameterizedTest(uint16_t *version, ctx_tickets,
                  a_ticket_issued_under_an_sni_certificate_resumes_there)
{
    struct test_cert def, a;
    SSL_CTX *cc = client_ctx(*version);
    SSL_SESSION *sess;
    unsigned char key[80];

    cert_make(&def, KEY_EC, "DNS:default.test", NULL, false);
    cert_make(&a, KEY_EC, "DNS:a.example.com", NULL, false);
    struct ktla_cert_config certs[] = {cert_config(&def), cert_config(&a)};
    struct ktla_ctx *ctx =
        ctx_new(&(struct ktla_ctx_config){.certs = certs,
                                          .ncerts = 2,
                                          .tls13_tickets = 0,
                                          .ticket_key_file = key_file("k", 1, key)});

    cr_assert_not(connect_once(ctx, cc, "a.example.com", NULL, &sess));
    cr_assert(memcmp(ticket_key_name(sess), key, 16) == 0, "the SNI context has its own key");
    cr_assert(connect_once(ctx, cc, "a.example.com", sess, NULL));

    SSL_SESSION_free(sess);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&def);
    cert_free(&a);
}

/* ---------------------------------------------------------------------------------------------
 * Reloads
 */

Test(ctx_reload, new_handshakes_get_new_certificates_and_started_ones_keep_theirs)
{
    struct test_cert def, a, next;
    SSL_CTX *cc = client_ctx(0);
    SSL_SESSION *sess;
    struct conn before, after;
    char san[64];

    cert_make(&def, KEY_EC, "DNS:default.test", NULL, false);
    cert_make(&a, KEY_EC, "DNS:a.example.com", NULL, false);
    cert_make(&next, KEY_RSA, "DNS:next.test", NULL, false);
    struct ktla_cert_config certs[] = {cert_config(&def), cert_config(&a)};
    struct ktla_cert_config next_cert = cert_config(&next);
    struct ktla_ctx *ctx =
        ctx_new(&(struct ktla_ctx_config){.certs = certs, .ncerts = 2, .tls13_tickets = 0});
    cr_assert_not(connect_once(ctx, cc, NULL, NULL, &sess));

    /* An SSL made before the reload whose SNI is only read after it. */
    conn_new(&before, ctx, cc, "a.example.com");
    cr_assert_eq(ktla_ctx_reload_certs(ctx, &next_cert, 1), 0);
    conn_new(&after, ctx, cc, "a.example.com");

    cr_assert(handshake(&before));
    peer_san(before.client, san, sizeof(san));
    cr_assert_str_eq(san, "a.example.com");
    cr_assert(handshake(&after));
    peer_san(after.client, san, sizeof(san));
    cr_assert_str_eq(san, "next.test");
    conn_free(&before);
    conn_free(&after);

    /* Ticket keys are the context's, not a certificate generation's. */
    cr_assert(connect_once(ctx, cc, NULL, sess, NULL));

    SSL_SESSION_free(sess);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&def);
    cert_free(&a);
    cert_free(&next);
}

Test(ctx_reload, a_failed_reload_keeps_the_current_certificates)
{
    struct test_cert def, other;
    SSL_CTX *cc = client_ctx(0);
    struct conn p;
    char san[64];

    cert_make(&def, KEY_EC, "DNS:default.test", NULL, false);
    cert_make(&other, KEY_EC, "DNS:other.test", NULL, false);
    struct ktla_ctx *ctx = ctx_for(&def);
    struct ktla_cert_config mismatched[] = {
        cert_config(&other),
        {.cert_pem = other.cert_pem, .key_pem = def.key_pem},
    };

    cr_assert_eq(ktla_ctx_reload_certs(ctx, mismatched, 2), KTLA_ECERT);
    cr_assert_eq(ktla_ctx_reload_certs(ctx, mismatched, 0), KTLA_EINVAL);
    cr_assert_eq(ktla_ctx_reload_certs(ctx, NULL, 1), KTLA_EINVAL);
    conn_new(&p, ctx, cc, "other.test");
    cr_assert(handshake(&p));
    peer_san(p.client, san, sizeof(san));
    cr_assert_str_eq(san, "default.test");
    conn_free(&p);

    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&def);
    cert_free(&other);
}

struct reloader {
    pthread_t thread;
    struct ktla_ctx *ctx;
    const char *files[2];
    const struct ktla_cert_config *certs;
    atomic_bool stop;
    int rounds, error;
};

static void *reload_loop(void *arg)
{
    struct reloader *r = arg;

    while (!atomic_load(&r->stop) && r->error == 0) {
        r->error = ktla_ctx_load_ticket_keys(r->ctx, r->files[r->rounds % 2]);
        if (r->error == 0)
            r->error = ktla_ctx_reload_certs(r->ctx, r->certs, 2);
        r->rounds++;
    }
    return NULL;
}

/* Keys and certificates swapped on another thread while handshakes resume on this one. */
Test(ctx_reload, handshakes_resume_while_keys_and_certificates_are_swapped)
{
    struct test_cert def, a;
    SSL_CTX *cc = client_ctx(0);
    SSL_SESSION *sess, *next;
    unsigned char keys[160], swapped[160];
    struct reloader r = {0};
    char san[64];

    cert_make(&def, KEY_EC, "DNS:default.test", NULL, false);
    cert_make(&a, KEY_EC, "DNS:a.example.com", NULL, false);
    struct ktla_cert_config certs[] = {cert_config(&def), cert_config(&a)};
    /* The same two keys in both orders: whichever is current, every ticket opens. */
    r.files[0] = key_file("ab.key", 2, keys);
    memcpy(swapped, keys + 80, 80);
    memcpy(swapped + 80, keys, 80);
    r.files[1] = tmp_write("ba.key", swapped, 160);
    r.ctx = ctx_new(&(struct ktla_ctx_config){
        .certs = certs, .ncerts = 2, .tls13_tickets = 0, .ticket_key_file = r.files[0]});
    r.certs = certs;
    cr_assert_not(connect_once(r.ctx, cc, "a.example.com", NULL, &sess));

    cr_assert_eq(pthread_create(&r.thread, NULL, reload_loop, &r), 0);
    for (int i = 0; i < 40; i++) {
        struct conn p;
        conn_new(&p, r.ctx, cc, "a.example.com");
        cr_assert(SSL_set_session(p.client, sess));
        cr_assert(handshake(&p), "round %d: %s", i, ERR_reason_error_string(ERR_peek_error()));
        exchange(&p);
        cr_assert(SSL_session_reused(p.server), "round %d did not resume", i);
        peer_san(p.client, san, sizeof(san));
        cr_assert_str_eq(san, "a.example.com", "round %d", i);
        next = SSL_get1_session(p.client);
        conn_free(&p);
        SSL_SESSION_free(sess);
        sess = next;
    }
    atomic_store(&r.stop, true);
    pthread_join(r.thread, NULL);
    cr_assert_eq(r.error, 0, "reload: %s", ktla_strerror(r.error));
    cr_assert(r.rounds > 1, "the reloads did not overlap the handshakes");

    SSL_SESSION_free(sess);
    ktla_ctx_free(r.ctx);
    SSL_CTX_free(cc);
    cert_free(&def);
    cert_free(&a);
}

/* ---------------------------------------------------------------------------------------------
 * Library contexts of the acceptors' own (ktla_tls_local)
 */

TestSuite(ctx_local, .init = tmp_init, .fini = tmp_fini);

static struct ktla_tls_local *local_new(struct ktla_ctx *ctx)
{
    struct ktla_tls_local *l = NULL;
    const char *why = NULL;
    int ret = ktla_tls_local_new(ctx, &l, &why);

    cr_assert_eq(ret, 0, "ktla_tls_local_new: %s (%s)", ktla_strerror(ret), why ? why : "");
    cr_assert(l);
    return l;
}

/* A connection whose server SSL comes from the local, as the acceptor makes it. */
static void local_conn_new(struct conn *p, struct ktla_tls_local *l, struct ktla_ctx *ctx,
                           SSL_CTX *cctx, const char *sni)
{
    bool failed = true;
    SSL_CTX *sctx = ktla_tls_local_ssl_ctx(l, ctx, &failed);

    cr_assert(sctx);
    cr_assert_not(failed);
    conn_new_from(p, sctx, cctx, sni);
    /* conn_new_from's plain SSL_new: redone the acceptor's way, holding the local. */
    SSL_free(p->server);
    p->server = ktla_ssl_new(sctx);
    cr_assert(p->server);
    SSL_set_accept_state(p->server);
    BIO *to_server = SSL_get_wbio(p->client), *to_client = SSL_get_rbio(p->client);
    cr_assert(BIO_up_ref(to_server) && BIO_up_ref(to_client));
    SSL_set_bio(p->server, to_server, to_client);
    SSL_CTX_free(sctx);
}

static void local_conn_free(struct conn *p)
{
    if (SSL_is_init_finished(p->client))
        SSL_shutdown(p->client);
    SSL_free(p->client);
    ktla_ssl_free(p->server);
}

static bool local_connect(struct ktla_tls_local *l, struct ktla_ctx *ctx, SSL_CTX *cc,
                          const char *sni, SSL_SESSION *resume, SSL_SESSION **next, char *san,
                          size_t san_len)
{
    struct conn p;
    bool reused;

    local_conn_new(&p, l, ctx, cc, sni);
    if (resume)
        cr_assert(SSL_set_session(p.client, resume));
    cr_assert(handshake(&p), "handshake failed: %s", ERR_reason_error_string(ERR_peek_error()));
    cr_assert_not_null(ktla_ssl_libctx(p.server), "a handshake of the local, not the shared one");
    exchange(&p);
    reused = SSL_session_reused(p.server);
    cr_assert_eq(reused, SSL_session_reused(p.client) == 1);
    if (san)
        peer_san(p.client, san, san_len);
    if (next)
        cr_assert(*next = SSL_get1_session(p.client));
    local_conn_free(&p);
    return reused;
}

Test(ctx_local, each_local_handshakes_in_a_library_context_of_its_own)
{
    struct test_cert c;
    SSL_CTX *cc = client_ctx(0);
    struct conn a, b, shared;

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_ctx *ctx = ctx_for(&c);
    struct ktla_tls_local *la = local_new(ctx), *lb = local_new(ctx);

    local_conn_new(&a, la, ctx, cc, NULL);
    local_conn_new(&b, lb, ctx, cc, NULL);
    conn_new(&shared, ctx, cc, NULL);
    cr_assert_not_null(ktla_ssl_libctx(a.server));
    cr_assert_not_null(ktla_ssl_libctx(b.server));
    cr_assert_neq(ktla_ssl_libctx(a.server), ktla_ssl_libctx(b.server));
    cr_assert_null(ktla_ssl_libctx(shared.server), "the shared SSL_CTX is OpenSSL's default");
    cr_assert_neq(SSL_get_SSL_CTX(a.server), SSL_get_SSL_CTX(b.server));
    cr_assert(handshake(&a));
    cr_assert(handshake(&b));
    exchange(&a);
    exchange(&b);
    /* The same settings as the shared SSL_CTX, whatever context they were made in. */
    assert_settings(SSL_get_SSL_CTX(a.server), 2);
    local_conn_free(&a);
    local_conn_free(&b);
    conn_free(&shared);

    ktla_tls_local_unref(la);
    ktla_tls_local_unref(lb);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

Test(ctx_local, tickets_open_across_locals_and_follow_a_key_reload)
{
    struct test_cert c;
    SSL_CTX *cc = client_ctx(TLS1_3_VERSION);
    SSL_SESSION *s1, *s2, *s3;
    unsigned char first[80], second[80];

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_cert_config cert = cert_config(&c);
    struct ktla_ctx *ctx = ctx_new(&(struct ktla_ctx_config){
        .certs = &cert, .ncerts = 1, .ticket_key_file = key_file("k1.key", 1, first)});
    struct ktla_tls_local *la = local_new(ctx), *lb = local_new(ctx);

    cr_assert_not(local_connect(la, ctx, cc, NULL, NULL, &s1, NULL, 0));
    cr_assert(memcmp(ticket_key_name(s1), first, 16) == 0);
    /* Issued by one acceptor's context, opened by another's and by the shared one. */
    cr_assert(local_connect(lb, ctx, cc, NULL, s1, &s2, NULL, 0));
    cr_assert(connect_once(ctx, cc, NULL, s2, NULL));

    /* New keys reach a local that already sealed tickets under the old ones. */
    const char *path = key_file("k2.key", 1, second);
    cr_assert_eq(ktla_ctx_load_ticket_keys(ctx, path), 0);
    cr_assert_not(local_connect(la, ctx, cc, NULL, s2, &s3, NULL, 0),
                  "a ticket sealed under a key no longer loaded must not resume");
    cr_assert(memcmp(ticket_key_name(s3), second, 16) == 0, "sealed under the old key");
    cr_assert(local_connect(lb, ctx, cc, NULL, s3, NULL, NULL, 0));

    SSL_SESSION_free(s1);
    SSL_SESSION_free(s2);
    SSL_SESSION_free(s3);
    ktla_tls_local_unref(la);
    ktla_tls_local_unref(lb);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

Test(ctx_local, a_local_takes_reloaded_certificates_and_keeps_sni)
{
    struct test_cert def, a, next;
    SSL_CTX *cc = client_ctx(0);
    struct conn before;
    char san[64];

    cert_make(&def, KEY_EC, "DNS:default.test", NULL, false);
    cert_make(&a, KEY_EC, "DNS:a.example.com", NULL, false);
    cert_make(&next, KEY_RSA, "DNS:next.test", NULL, false);
    /* The first pair from files, as ktla-serve gives them: read once, when loaded. */
    struct ktla_cert_config certs[] = {
        {.cert_file = tmp_write("def.pem", def.cert_pem, strlen(def.cert_pem)),
         .key_file = tmp_write("def.key", def.key_pem, strlen(def.key_pem))},
        cert_config(&a)};
    struct ktla_cert_config next_cert = cert_config(&next);
    struct ktla_ctx *ctx =
        ctx_new(&(struct ktla_ctx_config){.certs = certs, .ncerts = 2, .tls13_tickets = 0});
    struct ktla_tls_local *l = local_new(ctx);

    /* Changing the files afterwards changes nothing until a reload. */
    tmp_write("def.pem", next.cert_pem, strlen(next.cert_pem));
    local_connect(l, ctx, cc, NULL, NULL, NULL, san, sizeof(san));
    cr_assert_str_eq(san, "default.test");
    local_connect(l, ctx, cc, "a.example.com", NULL, NULL, san, sizeof(san));
    cr_assert_str_eq(san, "a.example.com");

    /* An SSL made before the reload keeps its generation, SNI included. */
    local_conn_new(&before, l, ctx, cc, "a.example.com");
    cr_assert_eq(ktla_ctx_reload_certs(ctx, &next_cert, 1), 0);
    local_connect(l, ctx, cc, "a.example.com", NULL, NULL, san, sizeof(san));
    cr_assert_str_eq(san, "next.test");
    cr_assert(handshake(&before));
    peer_san(before.client, san, sizeof(san));
    cr_assert_str_eq(san, "a.example.com");
    OSSL_LIB_CTX *lib = ktla_ssl_libctx(before.server);
    local_conn_free(&before);

    /* Every SSL, SNI-switched ones included, gave its reference back: the context is free for
     * the next local (it would not be, had one been kept). */
    ktla_tls_local_unref(l);
    l = local_new(ctx);
    local_conn_new(&before, l, ctx, cc, NULL);
    cr_assert_eq(ktla_ssl_libctx(before.server), lib, "the local outlived its last SSL");
    local_conn_free(&before);
    ktla_tls_local_unref(l);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&def);
    cert_free(&a);
    cert_free(&next);
}

Test(ctx_local, an_ssl_outlives_its_local_and_the_context_is_reused)
{
    struct test_cert c;
    SSL_CTX *cc = client_ctx(0);
    struct conn p;

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    struct ktla_ctx *ctx = ctx_for(&c);
    struct ktla_tls_local *l = local_new(ctx);

    local_conn_new(&p, l, ctx, cc, NULL);
    OSSL_LIB_CTX *lib = ktla_ssl_libctx(p.server);
    ktla_tls_local_unref(l); /* the acceptor is gone; its connection is not */
    ktla_ctx_free(ctx);
    cr_assert(handshake(&p));
    exchange(&p);
    local_conn_free(&p);

    /* The context went back to the pool, not to free(): the next acceptor takes it. */
    ctx = ctx_for(&c);
    l = local_new(ctx);
    local_conn_new(&p, l, ctx, cc, NULL);
    cr_assert_eq(ktla_ssl_libctx(p.server), lib);
    cr_assert(handshake(&p));
    local_conn_free(&p);
    ktla_tls_local_unref(l);
    ktla_ctx_free(ctx);
    SSL_CTX_free(cc);
    cert_free(&c);
}

struct local_thread {
    struct ktla_tls_local *l;
    struct ktla_ctx *ctx;
    SSL_CTX *cc;
    bool ok;
};

static void *local_handshake_thread(void *arg)
{
    struct local_thread *t = arg;
    struct conn p;

    local_conn_new(&p, t->l, t->ctx, t->cc, NULL);
    t->ok = handshake(&p);
    local_conn_free(&p);
    ktla_tls_local_unref(t->l); /* the last reference goes here, not where it was made */
    return NULL;
}

/*
 * OpenSSL 3.0 leaves, in each thread that drew random numbers from a library context, a handler
 * run when the thread ends that uses the context: one freed before then (as the first version of
 * this code did once the last connection went) was used after its free by the process's exit,
 * which hung in OpenSSL's cleanup. Here, in a child that exits the normal way: the local made in
 * one thread, a handshake and the last reference in another, then exit() from the first.
 */
Test(ctx_local, a_process_exits_cleanly_after_its_locals_are_gone, .timeout = 60)
{
    struct test_cert c;

    cert_make(&c, KEY_EC, "DNS:default.test", NULL, false);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct local_thread t = {.cc = client_ctx(0)};
        struct ktla_cert_config cc = cert_config(&c);
        struct ktla_ctx_config cfg = {.certs = &cc, .ncerts = 1};
        pthread_t th;
        const char *why;
        if (ktla_ctx_new(&cfg, &t.ctx) != 0 || ktla_tls_local_new(t.ctx, &t.l, &why) != 0)
            _exit(3);
        if (pthread_create(&th, NULL, local_handshake_thread, &t) != 0)
            _exit(4);
        pthread_join(th, NULL);
        ktla_ctx_free(t.ctx);
        SSL_CTX_free(t.cc);
        exit(t.ok ? 0 : 5); /* atexit: OpenSSL's cleanup runs this thread's handlers */
    }
    int status = 0;
    for (int i = 0; i < 300; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
        usleep(100000);
        if (i == 299) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            cr_assert_fail("the child did not exit within 30 s");
        }
    }
    cr_assert(WIFEXITED(status), "the child died of signal %d", WTERMSIG(status));
    cr_assert_eq(WEXITSTATUS(status), 0);
    cert_free(&c);
}
