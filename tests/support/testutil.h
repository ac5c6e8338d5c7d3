/* Helpers shared by the test suites: sockets, a reference TLS record layer, kernel TLS gating. */
#ifndef KTLA_TESTUTIL_H
#define KTLA_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ktls.h"

/* A connected TCP pair over 127.0.0.1; the server end is the accepted one. Asserts on failure. */
void tu_tcp_pair(int *client, int *server);

/* A listening socket on 127.0.0.1 with an ephemeral port; *port receives it. */
int tu_listen(uint16_t *port);

/* Fills buf with a deterministic pattern that depends on `seed` and the offset. */
void tu_pattern(void *buf, size_t len, uint32_t seed);

/* Reads exactly len bytes (fails the test on error or early end of stream). */
void tu_read_full(int fd, void *buf, size_t len);

/* Writes all of buf from a background thread; tu_writer_join() waits and returns its status. */
struct tu_writer;
struct tu_writer *tu_writer_start(int fd, const void *buf, size_t len);
int tu_writer_join(struct tu_writer *w);

/*
 * Kernel TLS gating. Returns when kernel TLS supports `cipher` for `version`; otherwise skips
 * the test with the probe's reason, or fails it when KTLA_REQUIRE_KTLS=1 (inside the guest).
 */
void tu_require_ktls(uint16_t version, enum ktla_cipher cipher);

/* The test keys: deterministic, different for each `seed`. */
void tu_key(struct ktla_key *k, uint16_t version, enum ktla_cipher cipher, uint8_t seed,
            uint64_t seq);

/*
 * A reference TLS record layer on OpenSSL's EVP AEAD, written from RFC 5246/5288/7905/8446, so
 * that what the kernel produces and accepts is checked against an implementation that does not
 * share the kernel's struct mapping. The key's seq advances by one per record.
 *   seal: writes a whole record (header included) into out; returns its length.
 *   open: takes one whole record; returns the plaintext length and *type, or -1 when
 *         authentication fails.
 */
size_t tu_record_seal(struct ktla_key *k, uint8_t type, const void *in, size_t len, uint8_t *out);
ssize_t tu_record_open(struct ktla_key *k, const uint8_t *rec, size_t rec_len, uint8_t *out,
                       uint8_t *type);

/* Variants: every TLS version x cipher the kernel layer supports. */
struct tu_variant {
    uint16_t version;
    enum ktla_cipher cipher;
};
extern const struct tu_variant tu_variants[6];
const char *tu_variant_name(const struct tu_variant *v);

#endif
