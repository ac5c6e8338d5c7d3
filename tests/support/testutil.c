#include "testutil.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>

const struct tu_variant tu_variants[6] = {
    {KTLA_TLS1_2, KTLA_CIPHER_AES_128_GCM},       {KTLA_TLS1_2, KTLA_CIPHER_AES_256_GCM},
    {KTLA_TLS1_2, KTLA_CIPHER_CHACHA20_POLY1305}, {KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM},
    {KTLA_TLS1_3, KTLA_CIPHER_AES_256_GCM},       {KTLA_TLS1_3, KTLA_CIPHER_CHACHA20_POLY1305},
};

const char *tu_variant_name(const struct tu_variant *v)
{
    static char name[48];
    snprintf(name, sizeof(name), "TLS%s/%s", v->version == KTLA_TLS1_3 ? "1.3" : "1.2",
             ktla_cipher_name(v->cipher));
    return name;
}

int tu_listen(uint16_t *port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    cr_assert(fd >= 0, "socket: %s", strerror(errno));
    cr_assert(bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0, "bind: %s", strerror(errno));
    cr_assert(listen(fd, 64) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *)&addr, &alen) == 0);
    *port = ntohs(addr.sin_port);
    return fd;
}

void tu_tcp_pair(int *client, int *server)
{
    uint16_t port;
    int lfd = tu_listen(&port);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                               .sin_port = htons(port)};

    *client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(*client >= 0);
    cr_assert(connect(*client, (struct sockaddr *)&addr, sizeof(addr)) == 0, "connect: %s",
              strerror(errno));
    *server = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    cr_assert(*server >= 0, "accept: %s", strerror(errno));
    close(lfd);
}

void tu_pattern(void *buf, size_t len, uint32_t seed)
{
    uint8_t *p = buf;
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
}

void tu_read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (uint8_t *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert(n > 0, "read after %zu of %zu bytes: %s", got, len,
                  n == 0 ? "end of stream" : ktla_strerror(ktla_ktls_error(errno, KTLA_OP_IO)));
        got += (size_t)n;
    }
}

struct tu_writer {
    pthread_t thread;
    int fd;
    const uint8_t *buf;
    size_t len;
    int status;
};

static void *writer_main(void *arg)
{
    struct tu_writer *w = arg;
    size_t done = 0;
    while (done < w->len) {
        ssize_t n = write(w->fd, w->buf + done, w->len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            w->status = -errno;
            return NULL;
        }
        done += (size_t)n;
    }
    return NULL;
}

struct tu_writer *tu_writer_start(int fd, const void *buf, size_t len)
{
    struct tu_writer *w = calloc(1, sizeof(*w));
    cr_assert(w);
    w->fd = fd;
    w->buf = buf;
    w->len = len;
    cr_assert(pthread_create(&w->thread, NULL, writer_main, w) == 0);
    return w;
}

int tu_writer_join(struct tu_writer *w)
{
    pthread_join(w->thread, NULL);
    int status = w->status;
    free(w);
    return status;
}

void tu_require_ktls(uint16_t version, enum ktla_cipher cipher)
{
    struct ktla_kernel_support s;
    int ret = ktla_kernel_probe(&s);
    int why = ret;

    if (ret == 0) {
        why = s.cipher[cipher];
        if (why == 0 && version == KTLA_TLS1_3)
            why = s.tls13;
    }
    if (why == 0)
        return;
    const char *req = getenv("KTLA_REQUIRE_KTLS");
    if (req && strcmp(req, "1") == 0)
        cr_assert_fail("kernel TLS is required here (KTLA_REQUIRE_KTLS=1) but unavailable: %s (%s)",
                 ktla_strerror(why), ktla_err_name(why));
    cr_skip_test("kernel TLS unavailable: %s (%s)", ktla_strerror(why), ktla_err_name(why));
}

void tu_key(struct ktla_key *k, uint16_t version, enum ktla_cipher cipher, uint8_t seed,
            uint64_t seq)
{
    memset(k, 0, sizeof(*k));
    k->version = version;
    k->cipher = cipher;
    for (size_t i = 0; i < sizeof(k->key); i++)
        k->key[i] = (uint8_t)(seed * 31 + i);
    for (size_t i = 0; i < sizeof(k->iv); i++)
        k->iv[i] = (uint8_t)(seed * 17 + 0x80 + i);
    k->seq = seq;
}

static const EVP_CIPHER *evp_cipher(enum ktla_cipher c)
{
    switch (c) {
    case KTLA_CIPHER_AES_128_GCM:
        return EVP_aes_128_gcm();
    case KTLA_CIPHER_AES_256_GCM:
        return EVP_aes_256_gcm();
    case KTLA_CIPHER_CHACHA20_POLY1305:
        return EVP_chacha20_poly1305();
    default:
        return NULL;
    }
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* The per-record nonce: salt || explicit for TLS 1.2 GCM, else iv XOR the padded sequence. */
static void record_nonce(const struct ktla_key *k, const uint8_t *explicit_nonce, uint8_t n[12])
{
    if (k->version == KTLA_TLS1_2 && k->cipher != KTLA_CIPHER_CHACHA20_POLY1305) {
        memcpy(n, k->iv, 4);
        memcpy(n + 4, explicit_nonce, 8);
        return;
    }
    uint8_t s[8];
    put_be(s, k->seq, 8);
    memcpy(n, k->iv, 12);
    for (int i = 0; i < 8; i++)
        n[4 + i] ^= s[i];
}

static int aead(const struct ktla_key *k, int enc, const uint8_t nonce[12], const uint8_t *aad,
                size_t aad_len, const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int ok = 0, n;

    if (!c)
        return 0;
    if (EVP_CipherInit_ex(c, evp_cipher(k->cipher), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL) != 1 ||
        EVP_CipherInit_ex(c, NULL, NULL, k->key, nonce, enc) != 1)
        goto out;
    if (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, 16, tag) != 1)
        goto out;
    if (EVP_CipherUpdate(c, NULL, &n, aad, (int)aad_len) != 1)
        goto out;
    if (len && EVP_CipherUpdate(c, out, &n, in, (int)len) != 1)
        goto out;
    if (EVP_CipherFinal_ex(c, out + len, &n) != 1)
        goto out;
    if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1)
        goto out;
    ok = 1;
out:
    EVP_CIPHER_CTX_free(c);
    return ok;
}

size_t tu_record_seal(struct ktla_key *k, uint8_t type, const void *in, size_t len, uint8_t *out)
{
    uint8_t nonce[12], aad[13];
    size_t aad_len, body;
    uint8_t *p;

    if (k->version == KTLA_TLS1_3) {
        /* inner plaintext = content || type; the outer record claims application data. */
        body = len + 1 + 16;
        out[0] = KTLA_RT_APPLICATION_DATA;
        put_be(out + 1, 0x0303, 2);
        put_be(out + 3, body, 2);
        memcpy(aad, out, 5);
        aad_len = 5;
        p = out + 5;
        memcpy(p, in, len);
        p[len] = type;
        record_nonce(k, NULL, nonce);
        cr_assert(aead(k, 1, nonce, aad, aad_len, p, len + 1, p, p + len + 1));
    } else {
        bool explicit_nonce = k->cipher != KTLA_CIPHER_CHACHA20_POLY1305;
        size_t pre = explicit_nonce ? 8 : 0;
        body = pre + len + 16;
        out[0] = type;
        put_be(out + 1, 0x0303, 2);
        put_be(out + 3, body, 2);
        put_be(aad, k->seq, 8);
        aad[8] = type;
        put_be(aad + 9, 0x0303, 2);
        put_be(aad + 11, len, 2);
        aad_len = 13;
        p = out + 5;
        if (explicit_nonce)
            put_be(p, k->seq, 8);
        record_nonce(k, p, nonce);
        memcpy(p + pre, in, len);
        cr_assert(aead(k, 1, nonce, aad, aad_len, p + pre, len, p + pre, p + pre + len));
    }
    k->seq++;
    return 5 + body;
}

ssize_t tu_record_open(struct ktla_key *k, const uint8_t *rec, size_t rec_len, uint8_t *out,
                       uint8_t *type)
{
    uint8_t nonce[12], aad[13], tag[16];
    size_t body = (size_t)rec[3] << 8 | rec[4];

    if (rec_len < 5 + 16 || body != rec_len - 5)
        return -1;
    if (k->version == KTLA_TLS1_3) {
        size_t clen = body - 16;
        memcpy(tag, rec + 5 + clen, 16);
        record_nonce(k, NULL, nonce);
        if (!aead(k, 0, nonce, rec, 5, rec + 5, clen, out, tag))
            return -1;
        while (clen > 0 && out[clen - 1] == 0)
            clen--;
        if (clen == 0)
            return -1;
        *type = out[clen - 1];
        k->seq++;
        return (ssize_t)(clen - 1);
    }
    bool explicit_nonce = k->cipher != KTLA_CIPHER_CHACHA20_POLY1305;
    size_t pre = explicit_nonce ? 8 : 0;
    if (body < pre + 16)
        return -1;
    size_t len = body - pre - 16;
    put_be(aad, k->seq, 8);
    aad[8] = rec[0];
    put_be(aad + 9, 0x0303, 2);
    put_be(aad + 11, len, 2);
    record_nonce(k, rec + 5, nonce);
    memcpy(tag, rec + 5 + pre + len, 16);
    if (!aead(k, 0, nonce, aad, 13, rec + 5 + pre, len, out, tag))
        return -1;
    *type = rec[0];
    k->seq++;
    return (ssize_t)len;
}
