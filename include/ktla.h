/*
 * ktla: accept TLS connections with OpenSSL over io_uring, then hand the record layer to the
 * Linux kernel (kernel TLS), falling back to userspace where the kernel cannot carry it.
 *
 * Conventions, for every function in this header:
 * - A function that can fail returns 0 (or a non-negative count) on success and a negative
 *   ktla error code on failure. Codes are either a negated errno value (-ENOMEM, -EAGAIN, ...)
 *   or one of the KTLA_E* codes below; ktla_strerror() explains both. There is no global error
 *   state: errno is not part of the API.
 * - Handles are opaque and come in _new/_free pairs; the plain structs here are the only things
 *   a caller fills in.
 */
#ifndef KTLA_H
#define KTLA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KTLA_API __attribute__((visibility("default")))

/*
 * Library error codes. They sit below -4000, far from every errno value, so one int can carry
 * either kind. X(name, value, message): the one table that ktla_strerror() and ktla_err_name()
 * are generated from.
 */
#define KTLA_ERRORS(X)                                                                             \
    X(KTLA_EINVAL, -4001, "invalid argument")                                                      \
    X(KTLA_ENOKTLS, -4002,                                                                         \
      "the kernel has no TLS support (CONFIG_TLS): load it with 'modprobe tls' or use a kernel "   \
      "built with it")                                                                             \
    X(KTLA_ENOKTLS_CIPHER, -4003,                                                                  \
      "the kernel's TLS does not support this cipher: load its crypto module (e.g. 'modprobe gcm' " \
      "or 'modprobe chacha20poly1305')")                                                           \
    X(KTLA_EKERNEL_OLD, -4004,                                                                     \
      "the kernel is too old for this kernel TLS feature (TLS 1.3 needs 5.1, ChaCha20-Poly1305 "   \
      "5.11)")                                                                                     \
    X(KTLA_ENOTCONN, -4005,                                                                        \
      "kernel TLS can only be enabled on an established TCP connection")                           \
    X(KTLA_EALREADY, -4006, "kernel TLS is already enabled in this direction on this socket")      \
    X(KTLA_EBADMAC, -4007,                                                                         \
      "a received record failed authentication (wrong key, sequence number or corrupted data); "   \
      "the connection cannot be used any more")                                                    \
    X(KTLA_ERECORD_OVERFLOW, -4008, "a received record is longer than TLS allows")                 \
    X(KTLA_EBADVERSION, -4009, "a received record has an unexpected TLS version or format")        \
    X(KTLA_ECONTROL, -4010,                                                                        \
      "the next record is not application data (alert or handshake message): read it with "       \
      "the record-aware receive call")                                                             \
    X(KTLA_EKEYEXPIRED, -4011,                                                                     \
      "the peer updated its traffic key (TLS 1.3 KeyUpdate); the kernel waits for the new key")    \
    X(KTLA_EVERIFY, -4012,                                                                         \
      "the kernel accepted the TLS configuration but reads back a different one")                  \
    X(KTLA_ECLOSED, -4013, "the peer closed the TLS connection (close_notify)")                    \
    X(KTLA_EALERT, -4014, "the peer sent a fatal TLS alert")                                       \
    X(KTLA_ETRUNCATED, -4015, "the peer closed the TCP connection without a TLS close_notify")

enum ktla_error {
#define KTLA_ERROR_ENUM(name, value, msg) name = (value),
    KTLA_ERRORS(KTLA_ERROR_ENUM)
#undef KTLA_ERROR_ENUM
};

/*
 * A sentence explaining any code a ktla function returns: KTLA_E* codes, negated errno values
 * and 0. Never NULL; the string is static and must not be freed. Unknown codes get a generic text.
 */
KTLA_API const char *ktla_strerror(int code);

/* The symbolic name of a code ("KTLA_EBADMAC", "ENOMEM", "OK"), for logs. Never NULL. */
KTLA_API const char *ktla_err_name(int code);

/* The library version, "MAJOR.MINOR.PATCH". */
KTLA_API const char *ktla_version(void);

/* ---------------------------------------------------------------------------------------------
 * Kernel TLS support
 */

enum ktla_cipher {
    KTLA_CIPHER_AES_128_GCM = 0,
    KTLA_CIPHER_AES_256_GCM = 1,
    KTLA_CIPHER_CHACHA20_POLY1305 = 2,
    KTLA_CIPHER_COUNT
};

/* TLS protocol versions as on the wire. */
#define KTLA_TLS1_2 0x0303
#define KTLA_TLS1_3 0x0304

/* "AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"; "unknown" for anything else. */
KTLA_API const char *ktla_cipher_name(enum ktla_cipher cipher);

/*
 * What the running kernel can offload. `ulp` is 0 when the TLS upper-layer protocol attaches to a
 * TCP socket, otherwise the code saying why not. For each cipher, `cipher[c]` is 0 when the kernel
 * accepted a TLS 1.3 transmit key for it on a test connection, otherwise the reason (for example
 * KTLA_ENOKTLS_CIPHER). `tls13` likewise for TLS 1.3 as a whole.
 */
struct ktla_kernel_support {
    int ulp;
    int tls13;
    int cipher[KTLA_CIPHER_COUNT];
};

/*
 * Probes the running kernel by opening a loopback TCP connection and trying to enable kernel TLS
 * on it. Returns 0 when kernel TLS works for at least one cipher, otherwise the reason (the same
 * code as out->ulp, or the first cipher's). `out` may be NULL. Takes a few hundred microseconds;
 * may be called at any time, from any thread. The result can change (a module may be loaded), so
 * callers that want a stable answer keep the first one.
 */
KTLA_API int ktla_kernel_probe(struct ktla_kernel_support *out);

#ifdef __cplusplus
}
#endif
#endif
