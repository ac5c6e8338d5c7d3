/*
 * The kernel suite: the kernel TLS layer against a real kernel, in the spirit of the kernel's
 * tools/testing/selftests/net/tls.c. Every test runs for each TLS version x cipher. Where the
 * running kernel has no TLS, each test skips with the probe's reason; with KTLA_REQUIRE_KTLS=1
 * (set inside the guest kernel) that becomes a failure.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/tls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ktls.h"
#include "testutil.h"

/* One test per TLS version x cipher. */
TestSuite(ktls, .timeout = 120);

#define KTLS_TEST(name)                                                                            \
    ParameterizedTestParameters(ktls, name)                                                        \
    {                                                                                              \
        return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);                     \
    }                                                                                              \
    ParameterizedTest(struct tu_variant *v, ktls, name)

/* A loopback pair with kernel TLS on both ends: client TX -> server RX with one key, and server
 * TX -> client RX with another. */
struct pair {
    int client, server;
};

static struct pair ktls_pair(const struct tu_variant *v, uint64_t seq)
{
    struct pair p;
    struct ktla_key up, down;
    int ret;

    tu_require_ktls(v->version, v->cipher);
    tu_tcp_pair(&p.client, &p.server);
    tu_key(&up, v->version, v->cipher, 1, seq);
    tu_key(&down, v->version, v->cipher, 2, seq);
    cr_assert_eq(ktla_ktls_attach(p.client), 0);
    cr_assert_eq(ktla_ktls_attach(p.server), 0);
    ret = ktla_ktls_install(p.client, KTLA_DIR_TX, &up);
    cr_assert_eq(ret, 0, "%s: client TX: %s", tu_variant_name(v), ktla_strerror(ret));
    ret = ktla_ktls_install(p.server, KTLA_DIR_RX, &up);
    cr_assert_eq(ret, 0, "%s: server RX: %s", tu_variant_name(v), ktla_strerror(ret));
    ret = ktla_ktls_install(p.server, KTLA_DIR_TX, &down);
    cr_assert_eq(ret, 0, "%s: server TX: %s", tu_variant_name(v), ktla_strerror(ret));
    ret = ktla_ktls_install(p.client, KTLA_DIR_RX, &down);
    cr_assert_eq(ret, 0, "%s: client RX: %s", tu_variant_name(v), ktla_strerror(ret));
    ktla_key_wipe(&up);
    ktla_key_wipe(&down);
    return p;
}

static void send_and_check(int tx, int rx, size_t len, uint32_t seed)
{
    uint8_t *out = malloc(len), *in = malloc(len);
    cr_assert(out && in);
    tu_pattern(out, len, seed);
    struct tu_writer *w = tu_writer_start(tx, out, len);
    tu_read_full(rx, in, len);
    cr_assert_eq(tu_writer_join(w), 0);
    cr_assert(memcmp(out, in, len) == 0, "%zu bytes came back different", len);
    free(out);
    free(in);
}

KTLS_TEST(small_and_large_messages_round_trip)
{
    static const size_t sizes[] = {1, 2, 100, 16383, 16384, 16385, 65536, 1 << 20};
    struct pair p = ktls_pair(v, 0);

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        send_and_check(p.client, p.server, sizes[i], (uint32_t)i);
        send_and_check(p.server, p.client, sizes[i], (uint32_t)i + 100);
    }
    close(p.client);
    close(p.server);
}

/*
 * A kernel-to-kernel round trip cannot see a mistake both directions share (a salt taken from the
 * wrong bytes, a sequence number off by one): the other end of these connections is the
 * reference record layer, which reads the key description the way the RFCs define it.
 */
KTLS_TEST(records_match_the_reference_record_layer)
{
    const uint64_t seq = 7;
    struct ktla_key kk, ref;
    int client, server, ret;
    uint8_t msg[3000], rec[4096], plain[4096], type;

    tu_require_ktls(v->version, v->cipher);
    tu_tcp_pair(&client, &server);
    tu_key(&kk, v->version, v->cipher, 3, seq);
    cr_assert_eq(ktla_ktls_attach(server), 0);
    ret = ktla_ktls_install(server, KTLA_DIR_TX, &kk);
    cr_assert_eq(ret, 0, "%s", ktla_strerror(ret));
    ret = ktla_ktls_install(server, KTLA_DIR_RX, &kk);
    cr_assert_eq(ret, 0, "%s", ktla_strerror(ret));

    /* Kernel TX -> raw bytes -> reference open, for three records in a row. */
    ref = kk;
    for (int i = 0; i < 3; i++) {
        tu_pattern(msg, sizeof(msg), (uint32_t)i);
        cr_assert_eq(write(server, msg, sizeof(msg)), (ssize_t)sizeof(msg));
        tu_read_full(client, rec, 5);
        size_t body = (size_t)rec[3] << 8 | rec[4];
        cr_assert(body < sizeof(rec) - 5);
        tu_read_full(client, rec + 5, body);
        cr_assert_eq(rec[0], KTLA_RT_APPLICATION_DATA);
        if (v->version == KTLA_TLS1_2 && v->cipher != KTLA_CIPHER_CHACHA20_POLY1305) {
            /* TLS 1.2 GCM carries its explicit nonce: it must be the record sequence number. */
            uint64_t explicit_nonce = 0;
            for (int b = 0; b < 8; b++)
                explicit_nonce = explicit_nonce << 8 | rec[5 + b];
            cr_assert_eq(explicit_nonce, seq + (uint64_t)i);
        }
        ssize_t n = tu_record_open(&ref, rec, 5 + body, plain, &type);
        cr_assert_eq(n, (ssize_t)sizeof(msg), "%s: record %d did not open with the reference",
                     tu_variant_name(v), i);
        cr_assert_eq(type, KTLA_RT_APPLICATION_DATA);
        cr_assert(memcmp(plain, msg, sizeof(msg)) == 0);
    }

    /* Reference seal -> kernel RX, continuing from the same starting sequence number. */
    ref = kk;
    for (int i = 0; i < 3; i++) {
        tu_pattern(msg, sizeof(msg), (uint32_t)i + 50);
        size_t len = tu_record_seal(&ref, KTLA_RT_APPLICATION_DATA, msg, sizeof(msg), rec);
        cr_assert_eq(write(client, rec, len), (ssize_t)len);
        tu_read_full(server, plain, sizeof(msg));
        cr_assert(memcmp(plain, msg, sizeof(msg)) == 0);
    }
    ktla_key_wipe(&kk);
    ktla_key_wipe(&ref);
    close(client);
    close(server);
}

KTLS_TEST(sendfile_in_chunks_arrives_intact)
{
    static const size_t chunks[] = {1, 4095, 4096, 16383, 16384, 16385, 1 << 20};
    const size_t file_len = (1 << 20) + 16385 + 4097;
    char path[] = "/tmp/ktla-sendfile-XXXXXX";
    uint8_t *data = malloc(file_len), *in = malloc(file_len);
    struct pair p = ktls_pair(v, 0);
    int fd = mkstemp(path);

    cr_assert(fd >= 0 && data && in);
    unlink(path);
    tu_pattern(data, file_len, 42);
    cr_assert_eq(write(fd, data, file_len), (ssize_t)file_len);

    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        /*
         * Three chunks and a bit from an odd offset, so records and pages never line up; with
         * 1-byte chunks that is still thousands of one-byte records. A child sends, since
         * sendfile blocks until the receiver here drains the socket.
         */
        const off_t start = 4097;
        size_t len = chunks[c] == 1 ? 3001 : 3 * chunks[c] + 7;
        if (len > file_len - (size_t)start)
            len = file_len - (size_t)start;
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            off_t off = start;
            while ((size_t)(off - start) < len) {
                size_t left = len - (size_t)(off - start);
                if (sendfile(p.server, fd, &off, left < chunks[c] ? left : chunks[c]) <= 0)
                    _exit(1);
            }
            _exit(0);
        }
        memset(in, 0, len);
        tu_read_full(p.client, in, len);
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sendfile failed, chunk %zu",
                  chunks[c]);
        cr_assert(memcmp(in, data + start, len) == 0, "%s: file differs with %zu-byte chunks",
                  tu_variant_name(v), chunks[c]);
    }
    close(fd);
    free(data);
    free(in);
    close(p.client);
    close(p.server);
}

KTLS_TEST(alert_between_data_records_arrives_in_order)
{
    struct pair p = ktls_pair(v, 0);
    const uint8_t alert[2] = {2, 40}; /* fatal handshake_failure: any alert will do */
    uint8_t buf[64], type;
    ssize_t n;

    cr_assert_eq(ktla_ktls_send_record(p.server, KTLA_RT_APPLICATION_DATA, "one", 3, 0), 3);
    cr_assert_eq(ktla_ktls_send_record(p.server, KTLA_RT_ALERT, alert, 2, 0), 2);
    cr_assert_eq(ktla_ktls_send_record(p.server, KTLA_RT_APPLICATION_DATA, "two", 3, 0), 3);

    n = ktla_ktls_recv_record(p.client, buf, sizeof(buf), &type, 0);
    cr_assert_eq(n, 3);
    cr_assert_eq(type, KTLA_RT_APPLICATION_DATA);
    cr_assert(memcmp(buf, "one", 3) == 0);

    /* A plain read must not hand the alert out as data. */
    n = read(p.client, buf, sizeof(buf));
    cr_assert_eq(n, -1);
    cr_assert_eq(ktla_ktls_error(errno, KTLA_OP_IO), KTLA_ECONTROL, "read gave %s",
                 strerror(errno));

    n = ktla_ktls_recv_record(p.client, buf, sizeof(buf), &type, 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(type, KTLA_RT_ALERT);
    cr_assert(memcmp(buf, alert, 2) == 0);

    n = ktla_ktls_recv_record(p.client, buf, sizeof(buf), &type, 0);
    cr_assert_eq(n, 3);
    cr_assert_eq(type, KTLA_RT_APPLICATION_DATA);
    cr_assert(memcmp(buf, "two", 3) == 0);
    close(p.client);
    close(p.server);
}

static void expect_rejected(const struct tu_variant *v, struct ktla_key *rx_key)
{
    struct ktla_key tx_key;
    int client, server;
    uint8_t buf[256], type;
    const char secret[] = "this plaintext must never be returned";

    tu_tcp_pair(&client, &server);
    tu_key(&tx_key, v->version, v->cipher, 5, 0);
    cr_assert_eq(ktla_ktls_attach(client), 0);
    cr_assert_eq(ktla_ktls_attach(server), 0);
    cr_assert_eq(ktla_ktls_install(client, KTLA_DIR_TX, &tx_key), 0);
    cr_assert_eq(ktla_ktls_install(server, KTLA_DIR_RX, rx_key), 0);
    cr_assert_eq(write(client, secret, sizeof(secret)), (ssize_t)sizeof(secret));
    memset(buf, 0, sizeof(buf));
    ssize_t n = ktla_ktls_recv_record(server, buf, sizeof(buf), &type, 0);
    cr_assert_eq(n, KTLA_EBADMAC, "%s: got %zd (%s) instead of an authentication error",
                 tu_variant_name(v), n, n < 0 ? ktla_strerror((int)n) : "data");
    cr_assert(memmem(buf, sizeof(buf), "plaintext", 9) == NULL);
    /* The failure is permanent: the kernel never resynchronises on a bad record. */
    n = ktla_ktls_recv_record(server, buf, sizeof(buf), &type, MSG_DONTWAIT);
    cr_assert(n < 0);
    ktla_key_wipe(&tx_key);
    close(client);
    close(server);
}

KTLS_TEST(wrong_rx_key_is_an_authentication_error)
{
    struct ktla_key k;
    tu_require_ktls(v->version, v->cipher);
    tu_key(&k, v->version, v->cipher, 5, 0);
    k.key[0] ^= 1;
    expect_rejected(v, &k);
}

KTLS_TEST(off_by_one_sequence_is_an_authentication_error)
{
    struct ktla_key k;
    tu_require_ktls(v->version, v->cipher);
    tu_key(&k, v->version, v->cipher, 5, 1);
    expect_rejected(v, &k);
}

KTLS_TEST(readback_reports_version_cipher_and_sequence)
{
    struct pair p = ktls_pair(v, 1000);
    uint16_t version;
    enum ktla_cipher cipher;
    uint64_t seq;
    uint8_t buf[8];

    cr_assert_eq(ktla_ktls_get(p.server, KTLA_DIR_TX, &version, &cipher, &seq), 0);
    cr_assert_eq(version, v->version);
    cr_assert_eq(cipher, v->cipher);
    cr_assert_eq(seq, 1000);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(write(p.server, "abcd", 4), 4);
        tu_read_full(p.client, buf, 4);
    }
    cr_assert_eq(ktla_ktls_get(p.server, KTLA_DIR_TX, &version, &cipher, &seq), 0);
    cr_assert_eq(seq, 1004, "TX sequence after four records: %llu", (unsigned long long)seq);
    cr_assert_eq(ktla_ktls_get(p.client, KTLA_DIR_RX, &version, &cipher, &seq), 0);
    cr_assert_eq(seq, 1004, "RX sequence after four records: %llu", (unsigned long long)seq);
    close(p.client);
    close(p.server);
}

/*
 * A second key in one direction: TLS 1.2 never takes one; TLS 1.3 takes it on kernels that can
 * rekey (6.14+), as a KeyUpdate needs, and refuses it on the others (6.1).
 */
KTLS_TEST(second_install_is_a_rekey_in_tls13_or_refused)
{
    struct pair p = ktls_pair(v, 0);
    struct ktla_key k;
    tu_key(&k, v->version, v->cipher, 9, 0);
    if (v->version == KTLA_TLS1_3 && ktla_ktls_can_rekey()) {
        cr_assert_eq(ktla_ktls_install(p.server, KTLA_DIR_TX, &k), 0);
        cr_assert_eq(ktla_ktls_install(p.client, KTLA_DIR_RX, &k), 0);
        send_and_check(p.server, p.client, 20000, 4); /* under the new key, from seq 0 */
    } else {
        cr_assert_eq(ktla_ktls_install(p.server, KTLA_DIR_TX, &k), KTLA_EALREADY);
    }
    cr_assert_eq(ktla_ktls_attach(p.server), KTLA_EALREADY);
    ktla_key_wipe(&k);
    close(p.client);
    close(p.server);
}

/*
 * The whole KeyUpdate on kernels that can rekey: data, the KeyUpdate record under the old key,
 * then data under the new one. The receiver reads the data, meets the control record, and then
 * the kernel holds further reads (KTLA_EKEYEXPIRED) until the new key is installed.
 */
Test(ktls, key_update_pauses_reads_until_the_new_key)
{
    static const uint8_t key_update[5] = {24, 0, 0, 1, 0};
    const struct tu_variant v = {KTLA_TLS1_3, KTLA_CIPHER_CHACHA20_POLY1305};
    struct pair p = ktls_pair(&v, 0);
    struct ktla_key k;
    uint8_t buf[64], type;

    if (!ktla_ktls_can_rekey()) {
        /* 6.1: the kernel cannot take the next key, which is why ktla ends such connections. */
        tu_key(&k, v.version, v.cipher, 9, 0);
        cr_assert_eq(ktla_ktls_install(p.client, KTLA_DIR_RX, &k), KTLA_EALREADY);
        goto out;
    }
    cr_assert_eq(write(p.server, "before", 6), 6);
    cr_assert_eq(ktla_ktls_send_record(p.server, KTLA_RT_HANDSHAKE, key_update, 5, 0), 5);
    tu_key(&k, v.version, v.cipher, 9, 0);
    cr_assert_eq(ktla_ktls_install(p.server, KTLA_DIR_TX, &k), 0);
    cr_assert_eq(write(p.server, "after", 5), 5);

    tu_read_full(p.client, buf, 6);
    cr_assert(memcmp(buf, "before", 6) == 0);
    ssize_t n = read(p.client, buf, sizeof(buf));
    cr_assert(n < 0 && ktla_ktls_error(errno, KTLA_OP_IO) == KTLA_ECONTROL);
    cr_assert_eq(ktla_ktls_recv_record(p.client, buf, sizeof(buf), &type, 0), 5);
    cr_assert_eq(type, KTLA_RT_HANDSHAKE);
    cr_assert(memcmp(buf, key_update, 5) == 0);
    n = recv(p.client, buf, sizeof(buf), MSG_DONTWAIT);
    cr_assert(n < 0 && ktla_ktls_error(errno, KTLA_OP_IO) == KTLA_EKEYEXPIRED,
              "a read before the new key: %zd, %s", n, strerror(errno));
    cr_assert_eq(ktla_ktls_install(p.client, KTLA_DIR_RX, &k), 0);
    tu_read_full(p.client, buf, 5);
    cr_assert(memcmp(buf, "after", 5) == 0);
out:
    ktla_key_wipe(&k);
    close(p.client);
    close(p.server);
}

Test(ktls, ulp_on_a_listening_socket_is_refused)
{
    uint16_t port;
    tu_require_ktls(KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM);
    int lfd = tu_listen(&port);
    int ret = ktla_ktls_attach(lfd);
    cr_assert_eq(ret, KTLA_ENOTCONN, "got %s", ktla_err_name(ret));
    close(lfd);
}

Test(ktls, install_without_the_ulp_is_refused)
{
    int client, server;
    struct ktla_key k;
    tu_require_ktls(KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM);
    tu_tcp_pair(&client, &server);
    tu_key(&k, KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM, 1, 0);
    int ret = ktla_ktls_install(server, KTLA_DIR_TX, &k);
    cr_assert_eq(ret, KTLA_ENOKTLS, "got %s", ktla_err_name(ret));
    close(client);
    close(server);
}

Test(ktls, probe_reports_every_cipher_usable)
{
    struct ktla_kernel_support s;
    tu_require_ktls(KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM);
    cr_assert_eq(ktla_kernel_probe(&s), 0);
    cr_assert_eq(s.ulp, 0);
    cr_assert_eq(s.tls13, 0);
    for (int c = 0; c < KTLA_CIPHER_COUNT; c++)
        cr_assert_eq(s.cipher[c], 0, "%s: %s", ktla_cipher_name(c), ktla_strerror(s.cipher[c]));
}

/* Rekeying came with Linux 6.14: the probe must say so exactly where the release says so. */
Test(ktls, probe_reports_rekeying_by_kernel_release)
{
    struct ktla_kernel_support s;
    struct utsname u;
    unsigned major = 0, minor = 0;

    tu_require_ktls(KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM);
    cr_assert_eq(uname(&u), 0);
    cr_assert_eq(sscanf(u.release, "%u.%u", &major, &minor), 2, "release %s", u.release);
    ktla_kernel_probe(&s);
    bool can = major > 6 || (major == 6 && minor >= 14);
    cr_assert_eq(s.rekey, can ? 0 : KTLA_ENOREKEY, "kernel %s: rekey probe says %s", u.release,
                 ktla_err_name(s.rekey));
    cr_assert_eq(ktla_ktls_can_rekey(), can);
}
