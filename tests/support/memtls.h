/*
 * Real OpenSSL handshakes in memory, for tests: a client SSL and a server SSL, each on a pair of
 * memory BIOs, with the test moving the bytes between them. Nothing touches a socket, and every
 * byte on the "wire" can be read, held back or replaced. Setup failures fail the test.
 */
#ifndef KTLA_MEMTLS_H
#define KTLA_MEMTLS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "ktls.h"

/*
 * A self-signed ECDSA P-256 certificate (CN and DNS subjectAltName "localhost", valid from an
 * hour ago for a day) and its private key, as NUL-terminated PEM strings; free both with free().
 * A new key every call.
 */
void tu_selfsigned_pem(char **cert_pem, char **key_pem);

/*
 * A server context with a fresh self-signed certificate and a client context (no certificate
 * verification), both limited to `version` (KTLA_TLS1_2 or KTLA_TLS1_3) and to the one suite for
 * `cipher` (ECDHE-ECDSA for TLS 1.2). `tickets` is the server's number of TLS 1.3 session tickets
 * per handshake (SSL_CTX_set_num_tickets); -1 keeps OpenSSL's default (2). Free with SSL_CTX_free.
 */
void memtls_ctx_pair(uint16_t version, enum ktla_cipher cipher, int tickets, SSL_CTX **sctx,
                     SSL_CTX **cctx);

/* Everything memtls_pump delivered in one direction, in order: the wire as a peer saw it. */
struct memtls_wire {
    uint8_t *data;
    size_t len, cap;
};

struct memtls_pair {
    SSL *client, *server;
    struct memtls_wire to_server, to_client;
};

/* A new client and server SSL from these contexts, connected through memory BIOs. */
void memtls_pair_init(struct memtls_pair *p, SSL_CTX *cctx, SSL_CTX *sctx);

/* Frees both SSLs and the wire transcripts. */
void memtls_pair_free(struct memtls_pair *p);

/*
 * Delivers everything each side has written and the other not yet received, appending it to the
 * transcripts. Returns the number of bytes moved.
 */
size_t memtls_pump(struct memtls_pair *p);

/*
 * Runs SSL_do_handshake on both sides, pumping between them, until both returned 1. It stops
 * right there: what the side that finished last wrote in its final call (a TLS 1.3 server's
 * NewSessionTickets, since it writes them while processing the client's Finished) is left
 * undelivered, for the caller to memtls_pump or memtls_take. Returns 0, or -1 when either side
 * failed (OpenSSL's error queue says why) or the handshake did not finish in 32 rounds.
 */
int memtls_handshake(struct memtls_pair *p);

/*
 * Takes up to `cap` bytes that `from` wrote and that were not delivered, instead of delivering
 * them (they do not enter a transcript). Returns the number of bytes taken.
 */
size_t memtls_take(SSL *from, uint8_t *buf, size_t cap);

/* Hands raw bytes to `to` as if its peer had sent them (they do not enter a transcript). */
void memtls_give(SSL *to, const void *buf, size_t len);

/*
 * The length of the whole TLS record (header included) at the start of buf, or 0 when fewer than
 * a whole record's bytes are there.
 */
size_t memtls_record_len(const uint8_t *buf, size_t len);

#endif
