/*
 * The kernel TLS layer: everything that talks to SOL_TLS. Internal to libktla; the handshake
 * layer calls it once the keys are known, the connection layer for records after that.
 *
 * Every function that takes key material leaves no copy of it behind on its own stack or in
 * kernel read-backs; the caller's struct ktla_key is the caller's to wipe (ktla_key_wipe).
 */
#ifndef KTLA_KTLS_H
#define KTLA_KTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "ktla.h"

/* TLS record content types (RFC 8446 §5.1). */
enum {
    KTLA_RT_CHANGE_CIPHER_SPEC = 20,
    KTLA_RT_ALERT = 21,
    KTLA_RT_HANDSHAKE = 22,
    KTLA_RT_APPLICATION_DATA = 23,
};

enum ktla_dir { KTLA_DIR_TX = 1, KTLA_DIR_RX = 2 };

/*
 * One direction's traffic protection, independent of cipher: what the handshake layer derives
 * and the kernel (or the userspace record layer) consumes.
 * - key: the first ktla_cipher_key_len(cipher) bytes are used.
 * - iv: the 12-byte nonce base. TLS 1.3 and ChaCha20-Poly1305: the whole write IV, XORed with the
 *   record sequence number per record. TLS 1.2 AES-GCM: bytes 0-3 are the implicit salt from the
 *   key block; bytes 4-11 are ignored, because each record carries its explicit nonce and ktla
 *   uses the record sequence number for it (as OpenSSL does).
 * - seq: how many records were already protected under this key.
 */
struct ktla_key {
    uint16_t version;
    enum ktla_cipher cipher;
    uint8_t key[32];
    uint8_t iv[12];
    uint64_t seq;
};

/* Key length in bytes (16 or 32); 0 for an unknown cipher. */
size_t ktla_cipher_key_len(enum ktla_cipher cipher);

/* Whether this kernel can follow a TLS 1.3 KeyUpdate (a second key on an installed socket:
 * Linux 6.14+). Probed once per process. */
bool ktla_ktls_can_rekey(void);

/* Wipes a key description so no traffic secret outlives its use. */
void ktla_key_wipe(struct ktla_key *k);

/*
 * The exact struct the kernel expects for `k`, written into `buf` (at least
 * KTLA_CRYPTO_INFO_MAX bytes); returns its size, or KTLA_EINVAL for a version or cipher the
 * kernel layer does not know. The caller wipes `buf`. Pure: no system calls.
 */
#define KTLA_CRYPTO_INFO_MAX 64
int ktla_ktls_crypto_info(const struct ktla_key *k, void *buf);

/*
 * Attaches the kernel's TLS upper-layer protocol to an established TCP socket. Must come before
 * ktla_ktls_install and only once per socket. 0, or KTLA_ENOKTLS (no kernel TLS), KTLA_ENOTCONN
 * (not an established connection), KTLA_EALREADY, KTLA_EKERNEL_OLD, or -errno.
 */
int ktla_ktls_attach(int fd);

/*
 * Hands one direction of `fd` to the kernel with the keys in `k`, then reads the configuration
 * back with getsockopt and checks it. This is a point of no return: after a successful TX install
 * every byte written to fd is encrypted by the kernel; after RX, every byte read is decrypted.
 * For TX, every byte of the handshake must already have been sent. Returns 0, or
 * KTLA_ENOKTLS_CIPHER, KTLA_EKERNEL_OLD, KTLA_EALREADY, KTLA_ENOKTLS (not attached), KTLA_EVERIFY,
 * KTLA_EINVAL, or -errno. `k` is not modified; the caller wipes it.
 */
int ktla_ktls_install(int fd, enum ktla_dir dir, const struct ktla_key *k);

/*
 * Reads back the kernel's configuration of one direction: version, cipher and the current
 * record sequence number (the key itself is wiped, never returned). 0 or a code as above.
 */
int ktla_ktls_get(int fd, enum ktla_dir dir, uint16_t *version, enum ktla_cipher *cipher,
                  uint64_t *seq);

/*
 * Sends one record of content type `type` (KTLA_RT_*) carrying `len` bytes through kernel TX,
 * for alerts and post-handshake handshake messages. `flags` are send flags (MSG_DONTWAIT...).
 * Returns the bytes queued or a negative code.
 */
ssize_t ktla_ktls_send_record(int fd, uint8_t type, const void *buf, size_t len, int flags);

/*
 * Receives from a kernel RX socket and reports the content type of what was read in *type.
 * One call never mixes record types. On KTLA_EBADMAC the buffer is wiped: the kernel may have left
 * unauthenticated plaintext in it. Returns bytes read, 0 at end of stream, or a negative code:
 * KTLA_EBADMAC, KTLA_ERECORD_OVERFLOW, KTLA_EBADVERSION, KTLA_EKEYEXPIRED, -EAGAIN, -errno.
 */
ssize_t ktla_ktls_recv_record(int fd, void *buf, size_t len, uint8_t *type, int flags);

/*
 * The system calls made on a kernel TLS socket, by this layer and by the kernel-mode connection,
 * gathered here so that a test can put a scripted kernel behind them (as s2n-tls does for its
 * kTLS I/O): control records, alerts and the kernel's errors then run on any host, in memory.
 * libc's by default; a test swaps them before any connection exists and puts them back after.
 */
struct ktla_sys {
    int (*setsockopt)(int fd, int level, int name, const void *val, socklen_t len);
    int (*getsockopt)(int fd, int level, int name, void *val, socklen_t *len);
    ssize_t (*sendmsg)(int fd, const struct msghdr *msg, int flags);
    ssize_t (*recvmsg)(int fd, struct msghdr *msg, int flags);
};
extern struct ktla_sys ktla_sys;
extern const struct ktla_sys ktla_sys_libc;

/* Which system call a kernel error came from: the same errno means different things. */
enum ktla_ktls_op { KTLA_OP_ATTACH, KTLA_OP_INSTALL, KTLA_OP_IO };

/* Maps an errno value from a kernel TLS operation to the library's code for it. */
int ktla_ktls_error(int err, enum ktla_ktls_op op);

#endif
