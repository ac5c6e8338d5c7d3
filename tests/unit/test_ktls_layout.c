/*
 * The kernel layer without a kernel: the byte layout handed to setsockopt(SOL_TLS) and the
 * errno mapping. These run on machines without kernel TLS; the kernel suite proves the same
 * layout against a real kernel.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <linux/tls.h>
#include <string.h>

#include "ktls.h"
#include "testutil.h"

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

Test(ktls_layout, aes_gcm_128_tls13_splits_the_iv_into_salt_and_iv)
{
    uint8_t buf[KTLA_CRYPTO_INFO_MAX];
    struct ktla_key k;
    tu_key(&k, KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM, 1, 0x0102030405060708ull);
    int len = ktla_ktls_crypto_info(&k, buf);
    const struct tls12_crypto_info_aes_gcm_128 *ci = (const void *)buf;

    cr_assert_eq(len, (int)sizeof(*ci));
    cr_assert_eq(ci->info.version, TLS_1_3_VERSION);
    cr_assert_eq(ci->info.cipher_type, TLS_CIPHER_AES_GCM_128);
    cr_assert(memcmp(ci->key, k.key, 16) == 0);
    cr_assert(memcmp(ci->salt, k.iv, 4) == 0);
    cr_assert(memcmp(ci->iv, k.iv + 4, 8) == 0);
    cr_assert_eq(be64(ci->rec_seq), 0x0102030405060708ull);
}

Test(ktls_layout, aes_gcm_256_tls12_starts_the_explicit_nonce_at_the_sequence)
{
    uint8_t buf[KTLA_CRYPTO_INFO_MAX];
    struct ktla_key k;
    tu_key(&k, KTLA_TLS1_2, KTLA_CIPHER_AES_256_GCM, 2, 1);
    int len = ktla_ktls_crypto_info(&k, buf);
    const struct tls12_crypto_info_aes_gcm_256 *ci = (const void *)buf;

    cr_assert_eq(len, (int)sizeof(*ci));
    cr_assert_eq(ci->info.version, TLS_1_2_VERSION);
    cr_assert_eq(ci->info.cipher_type, TLS_CIPHER_AES_GCM_256);
    cr_assert(memcmp(ci->key, k.key, 32) == 0);
    cr_assert(memcmp(ci->salt, k.iv, 4) == 0);
    cr_assert_eq(be64(ci->iv), 1);
    cr_assert_eq(be64(ci->rec_seq), 1);
}

Test(ktls_layout, chacha20_poly1305_takes_the_whole_iv)
{
    uint8_t buf[KTLA_CRYPTO_INFO_MAX];
    for (int v = 0; v < 2; v++) {
        struct ktla_key k;
        tu_key(&k, v ? KTLA_TLS1_3 : KTLA_TLS1_2, KTLA_CIPHER_CHACHA20_POLY1305, 3, 5);
        int len = ktla_ktls_crypto_info(&k, buf);
        const struct tls12_crypto_info_chacha20_poly1305 *ci = (const void *)buf;
        cr_assert_eq(len, (int)sizeof(*ci));
        cr_assert_eq(ci->info.cipher_type, TLS_CIPHER_CHACHA20_POLY1305);
        cr_assert(memcmp(ci->key, k.key, 32) == 0);
        cr_assert(memcmp(ci->iv, k.iv, 12) == 0);
        cr_assert_eq(be64(ci->rec_seq), 5);
    }
}

Test(ktls_layout, unknown_version_or_cipher_is_rejected_before_the_kernel)
{
    uint8_t buf[KTLA_CRYPTO_INFO_MAX];
    struct ktla_key k;
    tu_key(&k, 0x0302, KTLA_CIPHER_AES_128_GCM, 1, 0);
    cr_assert_eq(ktla_ktls_crypto_info(&k, buf), KTLA_EINVAL);
    tu_key(&k, KTLA_TLS1_3, KTLA_CIPHER_COUNT, 1, 0);
    cr_assert_eq(ktla_ktls_crypto_info(&k, buf), KTLA_EINVAL);
    cr_assert_eq(ktla_ktls_install(-1, KTLA_DIR_TX, &k), KTLA_EINVAL);
}

Test(ktls_layout, kernel_errors_map_to_library_codes)
{
    cr_assert_eq(ktla_ktls_error(ENOENT, KTLA_OP_ATTACH), KTLA_ENOKTLS);
    cr_assert_eq(ktla_ktls_error(ENOTCONN, KTLA_OP_ATTACH), KTLA_ENOTCONN);
    cr_assert_eq(ktla_ktls_error(EEXIST, KTLA_OP_ATTACH), KTLA_EALREADY);
    cr_assert_eq(ktla_ktls_error(ENOPROTOOPT, KTLA_OP_ATTACH), KTLA_EKERNEL_OLD);
    cr_assert_eq(ktla_ktls_error(ENOENT, KTLA_OP_INSTALL), KTLA_ENOKTLS_CIPHER);
    cr_assert_eq(ktla_ktls_error(EINVAL, KTLA_OP_INSTALL), KTLA_EKERNEL_OLD);
    cr_assert_eq(ktla_ktls_error(EBUSY, KTLA_OP_INSTALL), KTLA_EALREADY);
    cr_assert_eq(ktla_ktls_error(ENOPROTOOPT, KTLA_OP_INSTALL), KTLA_ENOKTLS);
    cr_assert_eq(ktla_ktls_error(EBADMSG, KTLA_OP_IO), KTLA_EBADMAC);
    cr_assert_eq(ktla_ktls_error(EMSGSIZE, KTLA_OP_IO), KTLA_ERECORD_OVERFLOW);
    cr_assert_eq(ktla_ktls_error(EINVAL, KTLA_OP_IO), KTLA_EBADVERSION);
    cr_assert_eq(ktla_ktls_error(EIO, KTLA_OP_IO), KTLA_ECONTROL);
    cr_assert_eq(ktla_ktls_error(EKEYEXPIRED, KTLA_OP_IO), KTLA_EKEYEXPIRED);
    cr_assert_eq(ktla_ktls_error(EAGAIN, KTLA_OP_IO), -EAGAIN);
}

/* On any kernel the probe must end in a verdict a person can act on. */
Test(ktls_layout, probe_gives_an_actionable_reason_or_success)
{
    struct ktla_kernel_support s;
    int ret = ktla_kernel_probe(&s);
    if (ret == 0) {
        cr_assert_eq(s.ulp, 0);
        return;
    }
    cr_assert(ret < -4000, "probe returned %s, not a library code", ktla_err_name(ret));
    cr_assert_str_neq(ktla_err_name(ret), "UNKNOWN");
    cr_log_info("kernel TLS unavailable here: %s", ktla_strerror(ret));
}
