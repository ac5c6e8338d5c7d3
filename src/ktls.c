/*
 * The kernel TLS layer (Documentation/networking/tls.rst): attach the ULP, install keys, read
 * the configuration back, and move non-data records with SOL_TLS control messages.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "ktls.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

#define KTLA_SYS_LIBC                                                                              \
    {                                                                                              \
        .setsockopt = setsockopt, .getsockopt = getsockopt, .sendmsg = sendmsg,                    \
        .recvmsg = recvmsg,                                                                        \
    }
const struct ktla_sys ktla_sys_libc = KTLA_SYS_LIBC;
struct ktla_sys ktla_sys = KTLA_SYS_LIBC;

size_t ktla_cipher_key_len(enum ktla_cipher cipher)
{
    switch (cipher) {
    case KTLA_CIPHER_AES_128_GCM:
        return 16;
    case KTLA_CIPHER_AES_256_GCM:
    case KTLA_CIPHER_CHACHA20_POLY1305:
        return 32;
    default:
        return 0;
    }
}

const char *ktla_cipher_name(enum ktla_cipher cipher)
{
    switch (cipher) {
    case KTLA_CIPHER_AES_128_GCM:
        return "AES-128-GCM";
    case KTLA_CIPHER_AES_256_GCM:
        return "AES-256-GCM";
    case KTLA_CIPHER_CHACHA20_POLY1305:
        return "CHACHA20-POLY1305";
    default:
        return "unknown";
    }
}

void ktla_key_wipe(struct ktla_key *k)
{
    OPENSSL_cleanse(k, sizeof(*k));
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* The kernel rejects a struct of any other size, so each cipher fills its own exact type. */
int ktla_ktls_crypto_info(const struct ktla_key *k, void *buf)
{
    _Static_assert(sizeof(struct tls12_crypto_info_aes_gcm_256) <= KTLA_CRYPTO_INFO_MAX,
                   "crypto info buffer too small");
    _Static_assert(sizeof(struct tls12_crypto_info_chacha20_poly1305) <= KTLA_CRYPTO_INFO_MAX,
                   "crypto info buffer too small");
    uint16_t version;

    switch (k->version) {
    case KTLA_TLS1_2:
        version = TLS_1_2_VERSION;
        break;
    case KTLA_TLS1_3:
        version = TLS_1_3_VERSION;
        break;
    default:
        return KTLA_EINVAL;
    }
    /*
     * GCM's nonce is salt || 8-byte iv. In TLS 1.3 the two together are the write IV; in TLS
     * 1.2 the salt is the implicit IV and the iv is the first explicit nonce, which the kernel
     * then increments per record, so starting it at the sequence number keeps it equal to it.
     */
    uint8_t iv8[8];
    if (k->version == KTLA_TLS1_3)
        memcpy(iv8, k->iv + 4, 8);
    else
        put_be64(iv8, k->seq);

    switch (k->cipher) {
    case KTLA_CIPHER_AES_128_GCM: {
        struct tls12_crypto_info_aes_gcm_128 *ci = buf;
        memset(ci, 0, sizeof(*ci));
        ci->info.version = version;
        ci->info.cipher_type = TLS_CIPHER_AES_GCM_128;
        memcpy(ci->key, k->key, sizeof(ci->key));
        memcpy(ci->salt, k->iv, sizeof(ci->salt));
        memcpy(ci->iv, iv8, sizeof(ci->iv));
        put_be64(ci->rec_seq, k->seq);
        return (int)sizeof(*ci);
    }
    case KTLA_CIPHER_AES_256_GCM: {
        struct tls12_crypto_info_aes_gcm_256 *ci = buf;
        memset(ci, 0, sizeof(*ci));
        ci->info.version = version;
        ci->info.cipher_type = TLS_CIPHER_AES_GCM_256;
        memcpy(ci->key, k->key, sizeof(ci->key));
        memcpy(ci->salt, k->iv, sizeof(ci->salt));
        memcpy(ci->iv, iv8, sizeof(ci->iv));
        put_be64(ci->rec_seq, k->seq);
        return (int)sizeof(*ci);
    }
    case KTLA_CIPHER_CHACHA20_POLY1305: {
        /* RFC 7905 and 8446 both XOR the sequence number into the whole 12-byte IV: no salt. */
        struct tls12_crypto_info_chacha20_poly1305 *ci = buf;
        memset(ci, 0, sizeof(*ci));
        ci->info.version = version;
        ci->info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
        memcpy(ci->key, k->key, sizeof(ci->key));
        memcpy(ci->iv, k->iv, sizeof(ci->iv));
        put_be64(ci->rec_seq, k->seq);
        return (int)sizeof(*ci);
    }
    default:
        return KTLA_EINVAL;
    }
}

int ktla_ktls_error(int err, enum ktla_ktls_op op)
{
    switch (op) {
    case KTLA_OP_ATTACH:
        switch (err) {
        case ENOENT: /* no "tls" ULP registered: module missing or CONFIG_TLS=n */
            return KTLA_ENOKTLS;
        case ENOTCONN:
            return KTLA_ENOTCONN;
        case EEXIST:
            return KTLA_EALREADY;
        case ENOPROTOOPT: /* TCP_ULP itself unknown: kernel before 4.13 */
            return KTLA_EKERNEL_OLD;
        }
        break;
    case KTLA_OP_INSTALL:
        switch (err) {
        case ENOENT: /* crypto_alloc_aead found no implementation */
        case ENOPKG:
            return KTLA_ENOKTLS_CIPHER;
        case EINVAL: /* the struct is exact, so the kernel does not know this version or cipher */
            return KTLA_EKERNEL_OLD;
        case EBUSY:
        case EEXIST:
            return KTLA_EALREADY;
        case ENOPROTOOPT: /* SOL_TLS without the ULP attached */
            return KTLA_ENOKTLS;
        }
        break;
    case KTLA_OP_IO:
        switch (err) {
        case EBADMSG:
            return KTLA_EBADMAC;
        case EMSGSIZE:
            return KTLA_ERECORD_OVERFLOW;
        case EINVAL:
            return KTLA_EBADVERSION;
        case EIO: /* a plain read met a record that is not application data */
            return KTLA_ECONTROL;
        case EKEYEXPIRED:
            return KTLA_EKEYEXPIRED;
        }
        break;
    }
    return err > 0 ? -err : KTLA_EINVAL;
}

/* Until when (CLOCK_MONOTONIC_COARSE, ns) attaching is known to fail: a kernel without the TLS
 * module refuses every socket the same way, and a failing setsockopt per connection was kernel
 * time for nothing. Asked again every few seconds, so that a `modprobe tls` is noticed. */
static _Atomic uint64_t ulp_absent_until;
#define ULP_RETRY_NS (5ull * 1000000000ull)

static uint64_t coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int ktla_ktls_attach(int fd)
{
    uint64_t now = coarse_ns();
    if (now < atomic_load_explicit(&ulp_absent_until, memory_order_relaxed))
        return KTLA_ENOKTLS;
    if (ktla_sys.setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls") - 1) < 0) {
        int ret = ktla_ktls_error(errno, KTLA_OP_ATTACH);
        if (ret == KTLA_ENOKTLS)
            atomic_store_explicit(&ulp_absent_until, now + ULP_RETRY_NS, memory_order_relaxed);
        return ret;
    }
    return 0;
}

static int crypto_info_size(uint16_t cipher_type)
{
    switch (cipher_type) {
    case TLS_CIPHER_AES_GCM_128:
        return sizeof(struct tls12_crypto_info_aes_gcm_128);
    case TLS_CIPHER_AES_GCM_256:
        return sizeof(struct tls12_crypto_info_aes_gcm_256);
    case TLS_CIPHER_CHACHA20_POLY1305:
        return sizeof(struct tls12_crypto_info_chacha20_poly1305);
    default:
        return 0;
    }
}

/*
 * Reads back one direction into `buf`; returns the struct size or a negative code. The kernel
 * wants the exact struct size, so the first call reads only the header naming the cipher.
 */
static int ktls_readback(int fd, enum ktla_dir dir, uint8_t buf[KTLA_CRYPTO_INFO_MAX])
{
    int opt = dir == KTLA_DIR_TX ? TLS_TX : TLS_RX;
    socklen_t len = sizeof(struct tls_crypto_info);

    memset(buf, 0, KTLA_CRYPTO_INFO_MAX);
    if (ktla_sys.getsockopt(fd, SOL_TLS, opt, buf, &len) < 0)
        return ktla_ktls_error(errno, KTLA_OP_INSTALL);
    len = (socklen_t)crypto_info_size(((struct tls_crypto_info *)buf)->cipher_type);
    if (len == 0)
        return KTLA_EVERIFY;
    if (ktla_sys.getsockopt(fd, SOL_TLS, opt, buf, &len) < 0)
        return ktla_ktls_error(errno, KTLA_OP_INSTALL);
    return (int)len;
}

static int ktls_parse(const uint8_t *buf, int len, uint16_t *version, enum ktla_cipher *cipher,
                      uint64_t *seq)
{
    const struct tls_crypto_info *info = (const void *)buf;

    if (len < (int)sizeof(*info))
        return KTLA_EVERIFY;
    switch (info->version) {
    case TLS_1_2_VERSION:
        *version = KTLA_TLS1_2;
        break;
    case TLS_1_3_VERSION:
        *version = KTLA_TLS1_3;
        break;
    default:
        return KTLA_EVERIFY;
    }
    switch (info->cipher_type) {
    case TLS_CIPHER_AES_GCM_128:
        if (len != crypto_info_size(info->cipher_type))
            return KTLA_EVERIFY;
        *cipher = KTLA_CIPHER_AES_128_GCM;
        *seq = get_be64(((const struct tls12_crypto_info_aes_gcm_128 *)buf)->rec_seq);
        return 0;
    case TLS_CIPHER_AES_GCM_256:
        if (len != crypto_info_size(info->cipher_type))
            return KTLA_EVERIFY;
        *cipher = KTLA_CIPHER_AES_256_GCM;
        *seq = get_be64(((const struct tls12_crypto_info_aes_gcm_256 *)buf)->rec_seq);
        return 0;
    case TLS_CIPHER_CHACHA20_POLY1305:
        if (len != crypto_info_size(info->cipher_type))
            return KTLA_EVERIFY;
        *cipher = KTLA_CIPHER_CHACHA20_POLY1305;
        *seq = get_be64(((const struct tls12_crypto_info_chacha20_poly1305 *)buf)->rec_seq);
        return 0;
    default:
        return KTLA_EVERIFY;
    }
}

int ktla_ktls_get(int fd, enum ktla_dir dir, uint16_t *version, enum ktla_cipher *cipher,
                  uint64_t *seq)
{
    uint8_t buf[KTLA_CRYPTO_INFO_MAX];
    int len = ktls_readback(fd, dir, buf);
    int ret = len < 0 ? len : ktls_parse(buf, len, version, cipher, seq);

    /* The read-back carries the key too. */
    OPENSSL_cleanse(buf, sizeof(buf));
    return ret;
}

int ktla_ktls_install(int fd, enum ktla_dir dir, const struct ktla_key *k)
{
    uint8_t want[KTLA_CRYPTO_INFO_MAX], got[KTLA_CRYPTO_INFO_MAX];
    int want_len, got_len, ret;

    if (dir != KTLA_DIR_TX && dir != KTLA_DIR_RX)
        return KTLA_EINVAL;
    want_len = ktla_ktls_crypto_info(k, want);
    if (want_len < 0) {
        ret = want_len;
        goto out_wipe_want;
    }
    if (ktla_sys.setsockopt(fd, SOL_TLS, dir == KTLA_DIR_TX ? TLS_TX : TLS_RX, want,
                           (socklen_t)want_len) <
        0) {
        ret = ktla_ktls_error(errno, KTLA_OP_INSTALL);
        goto out_wipe_want;
    }
    /*
     * The kernel echoes the whole struct; it must be what we set. For RX in TLS 1.2 the kernel
     * takes each record's explicit nonce from the wire and does not report the iv it was given,
     * so only the fields that matter in each direction are compared, through the parse.
     */
    got_len = ktls_readback(fd, dir, got);
    if (got_len < 0) {
        ret = got_len;
        goto out_wipe_got;
    }
    uint16_t version;
    enum ktla_cipher cipher;
    uint64_t seq;
    ret = ktls_parse(got, got_len, &version, &cipher, &seq);
    if (ret == 0 && (got_len != want_len || version != k->version || cipher != k->cipher ||
                     seq != k->seq))
        ret = KTLA_EVERIFY;
out_wipe_got:
    OPENSSL_cleanse(got, sizeof(got));
out_wipe_want:
    OPENSSL_cleanse(want, sizeof(want));
    return ret;
}

ssize_t ktla_ktls_send_record(int fd, uint8_t type, const void *buf, size_t len, int flags)
{
    char control[CMSG_SPACE(sizeof(uint8_t))];
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;

    if (type != KTLA_RT_APPLICATION_DATA) {
        memset(control, 0, sizeof(control));
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_TLS;
        cmsg->cmsg_type = TLS_SET_RECORD_TYPE;
        cmsg->cmsg_len = CMSG_LEN(sizeof(uint8_t));
        *CMSG_DATA(cmsg) = type;
    }
    n = ktla_sys.sendmsg(fd, &msg, flags | MSG_NOSIGNAL);
    return n < 0 ? ktla_ktls_error(errno, KTLA_OP_IO) : n;
}

ssize_t ktla_ktls_recv_record(int fd, void *buf, size_t len, uint8_t *type, int flags)
{
    char control[CMSG_SPACE(sizeof(uint8_t))];
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control,
        .msg_controllen = sizeof(control),
    };
    ssize_t n = ktla_sys.recvmsg(fd, &msg, flags);

    if (n < 0) {
        int ret = ktla_ktls_error(errno, KTLA_OP_IO);
        /*
         * The kernel decrypts into the caller's buffer before it checks the tag, so a record that
         * fails authentication can leave unauthenticated plaintext there (seen with TLS 1.2 GCM,
         * whose nonce travels in the record). None of it may reach the application.
         */
        if (ret == KTLA_EBADMAC)
            OPENSSL_cleanse(buf, len);
        return ret;
    }
    /* Every record comes with its type; none at all is the end of the stream (n is 0). */
    *type = n > 0 ? KTLA_RT_APPLICATION_DATA : 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE)
            *type = *CMSG_DATA(c);
    return n;
}

/*
 * Opens a connected TCP pair over IPv4 loopback: the ULP attaches only to an established socket,
 * so the probe needs a real connection. *server_fd is the accepted end.
 */
static int loopback_pair(int *client_fd, int *server_fd)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(addr);
    int lfd, cfd = -1, sfd = -1, ret;

    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return -errno;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 4) < 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0)
        goto err_errno;
    cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (cfd < 0 || connect(cfd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        goto err_errno;
    sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (sfd < 0)
        goto err_errno;
    close(lfd);
    *client_fd = cfd;
    *server_fd = sfd;
    return 0;
err_errno:
    ret = -errno;
    if (cfd >= 0)
        close(cfd);
    close(lfd);
    return ret;
}

/*
 * Attaches and installs a throwaway TX key of `cipher` and `version` on a fresh connection; with
 * `rekey`, then a second, different one, as a KeyUpdate would (only kernels that can rekey take
 * it: Linux 6.14+).
 */
static int probe_one(uint16_t version, enum ktla_cipher cipher, bool rekey)
{
    struct ktla_key k = {.version = version, .cipher = cipher};
    int cfd = -1, sfd = -1, ret;

    ret = loopback_pair(&cfd, &sfd);
    if (ret < 0)
        return ret;
    ret = ktla_ktls_attach(sfd);
    if (ret == 0)
        ret = ktla_ktls_install(sfd, KTLA_DIR_TX, &k);
    if (ret == 0 && rekey) {
        k.key[0] = 1;
        ret = ktla_ktls_install(sfd, KTLA_DIR_TX, &k);
        if (ret == KTLA_EALREADY || ret == KTLA_EKERNEL_OLD)
            ret = KTLA_ENOREKEY;
    }
    ktla_key_wipe(&k);
    close(sfd);
    close(cfd);
    return ret;
}

static int probe_rekey(void)
{
    return probe_one(KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM, true);
}

/* Whether the kernel rekeys: 0 not asked yet, 1 yes, 2 no. Asked once per process (by the probe
 * or the first kernel connection): the answer is the kernel's, and each probe opens a kernel TLS
 * context that /proc/net/tls_stat counts. */
static atomic_int rekey_cached;

bool ktla_ktls_can_rekey(void)
{
    int v = atomic_load(&rekey_cached);
    if (!v) {
        v = probe_rekey() == 0 ? 1 : 2;
        atomic_store(&rekey_cached, v);
    }
    return v == 1;
}

int ktla_kernel_probe(struct ktla_kernel_support *out)
{
    struct ktla_kernel_support s;
    int first = KTLA_ENOKTLS_CIPHER;

    memset(&s, 0, sizeof(s));
    for (int c = 0; c < KTLA_CIPHER_COUNT; c++) {
        s.cipher[c] = probe_one(KTLA_TLS1_3, (enum ktla_cipher)c, false);
        /* A kernel without TLS 1.3 (before 5.1) may still carry the cipher for TLS 1.2. */
        if (s.cipher[c] == KTLA_EKERNEL_OLD) {
            s.tls13 = KTLA_EKERNEL_OLD;
            s.cipher[c] = probe_one(KTLA_TLS1_2, (enum ktla_cipher)c, false);
        }
        if (s.cipher[c] == KTLA_ENOKTLS || s.cipher[c] == KTLA_ENOTCONN ||
            (s.cipher[c] < 0 && s.cipher[c] > -4000 && c == 0)) {
            /* The ULP itself (or the loopback test connection) failed: no point going on. */
            s.ulp = s.cipher[c];
            for (int d = c; d < KTLA_CIPHER_COUNT; d++)
                s.cipher[d] = s.ulp;
            s.tls13 = s.ulp;
            break;
        }
    }
    s.rekey = s.ulp ? s.ulp : probe_rekey();
    if (!s.ulp)
        atomic_store(&rekey_cached, s.rekey == 0 ? 1 : 2);
    if (out)
        *out = s;
    if (s.ulp)
        return s.ulp;
    for (int c = 0; c < KTLA_CIPHER_COUNT; c++) {
        if (s.cipher[c] == 0)
            return 0;
        if (c == 0)
            first = s.cipher[c];
    }
    return first;
}
