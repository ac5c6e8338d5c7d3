/*
 * Key derivation: from an OpenSSL SSL whose handshake is complete to the struct ktla_key
 * descriptions the kernel layer installs. Internal to libktla. Public OpenSSL API only, so that
 * it works on OpenSSL 3.0 and later: TLS 1.3 secrets come from the keylog callback, TLS 1.2
 * keys from the master secret and the two randoms.
 *
 * Every function leaves no copy of a secret behind on its own stack; the struct ktla_key it
 * fills is the caller's to wipe (ktla_key_wipe).
 */
#ifndef KTLA_KEYS_H
#define KTLA_KEYS_H

#include <openssl/ssl.h>

#include "ktls.h"

/*
 * KeyUpdates from a peer that ktla follows. A legitimate peer updates after hundreds of gigabytes;
 * a storm only costs us CPU (and, when each asks for ours, sends). At most this many in a row
 * with no application data between them (BoringSSL's limit; tlsfuzzer sends 32 that way), and
 * this many in this long whatever lies between.
 */
#define KTLA_REKEY_MAX_IN_A_ROW 32
#define KTLA_REKEY_WINDOW_NS (10ull * 1000000000ull)
#define KTLA_REKEY_MAX_PER_WINDOW 128

/*
 * Installs the keylog callback that captures the TLS 1.3 application traffic secrets of every
 * SSL made from `ctx`, keeping them in the SSL (wiped and freed with it, or earlier by
 * ktla_keys_forget). Call once per SSL_CTX before its first handshake, and for every SSL_CTX an
 * SSL may be switched to (SNI): OpenSSL logs through the SSL's current context. A keylog callback
 * the application set before this call keeps receiving every line; one set after it replaces
 * ours. Calling it again on the same context is harmless: it never chains to itself. 0, or
 * -ENOMEM.
 */
int ktla_keys_init_ctx(SSL_CTX *ctx);

/*
 * After the handshake completed: the local side's write keys in *tx and the peer's in *rx (on a
 * server tx is the server write key, on a client the client write key). Version and cipher are
 * set, seq is 0 in both: the caller sets the record sequence numbers. Returns 0, or
 * KTLA_ENOCIPHER (a suite other than AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305, or a version
 * other than TLS 1.2 and 1.3), KTLA_EINVAL (handshake not complete, or the TLS 1.3 secrets are
 * missing: ktla_keys_init_ctx not called, or ktla_keys_forget already called), -ENOMEM. On
 * failure *tx and *rx are wiped.
 */
int ktla_keys_derive(SSL *ssl, struct ktla_key *tx, struct ktla_key *rx);

/*
 * TLS 1.3 KeyUpdate: advances the stored traffic secret of one direction (KTLA_DIR_TX: our own,
 * KTLA_DIR_RX: the peer's) by one generation (RFC 8446 §7.2) and writes the keys derived from
 * the new secret into *k, with version and cipher set and seq 0. Each call is one KeyUpdate in
 * that direction. Returns 0, or KTLA_EINVAL (not TLS 1.3, secrets missing or forgotten, bad
 * direction), KTLA_ENOCIPHER, -ENOMEM; on failure *k is wiped and the stored secret unchanged.
 */
int ktla_keys_update(SSL *ssl, enum ktla_dir dir, struct ktla_key *k);

/*
 * A TLS 1.3 connection's current traffic secrets, copied out of the SSL so that the SSL can be
 * freed while the connection can still follow KeyUpdates (kernels that can rekey). 48 bytes
 * fit the longest hash of the three suites (SHA-384).
 */
struct ktla_secrets {
    uint8_t tx[48], rx[48]; /* ours, the peer's */
    uint8_t len;            /* 32 or 48; 0: none */
    uint8_t cipher;         /* enum ktla_cipher */
    int md_nid;
};

/* Copies the current TLS 1.3 secrets of a finished handshake into *out. 0, or KTLA_EINVAL (not
 * TLS 1.3, secrets missing or forgotten), KTLA_ENOCIPHER. The copy is the caller's to wipe. */
int ktla_keys_export(SSL *ssl, struct ktla_secrets *out);

/* ktla_keys_update on an exported copy: advances one direction's secret by one generation and
 * writes its keys (seq 0) into *k. 0, or KTLA_EINVAL, -ENOMEM; on failure *k is wiped and the
 * secret unchanged. */
int ktla_secrets_update(struct ktla_secrets *s, enum ktla_dir dir, struct ktla_key *k);
/* The keys (seq 0) of one direction's current secret, without advancing it: for installing the
 * same key again. 0, or KTLA_EINVAL, -ENOMEM; on failure *k is wiped. */
int ktla_secrets_current(const struct ktla_secrets *s, enum ktla_dir dir, struct ktla_key *k);
void ktla_secrets_wipe(struct ktla_secrets *s);

/*
 * Wipes and drops the TLS 1.3 secrets captured for `ssl` now instead of when it is freed: once
 * keys are derived and no KeyUpdate will be followed. Safe to call more than once, and on an SSL
 * that has none.
 */
void ktla_keys_forget(SSL *ssl);

#endif
