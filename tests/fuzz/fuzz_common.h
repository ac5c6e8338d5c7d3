/* Shared set-up for the libFuzzer harnesses: a server context made once per process. */
#ifndef KTLA_FUZZ_COMMON_H
#define KTLA_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "handshake.h"
#include "ktla.h"

/* The server's SSL_CTX, as the acceptor would get it from a ktla_ctx (ECDSA P-256, defaults). */
SSL_CTX *fuzz_server_ssl_ctx(void);

/* Aborts with a message: a broken invariant is what the fuzzer is looking for. */
void fuzz_fail(const char *what);

/* Feeds `len` bytes to the handshake core in chunks whose sizes come from `splits` (cycled),
 * respecting the room it offers, as the acceptor's receives would. What the core writes goes to
 * `to_client` (a memory BIO) when given, else nowhere. Stops early on failure. Returns the bytes
 * consumed. */
size_t fuzz_feed(struct ktla_hs *hs, const uint8_t *data, size_t len, const uint8_t *splits,
                 size_t nsplits, BIO *to_client);

#endif
