/*
 * The handshake core: OpenSSL's SSL_accept over memory BIOs, with no I/O of its own. The caller
 * (the acceptor) puts socket bytes in, takes bytes to send out, and learns when the handshake is
 * done and exactly where the kernel can take over.
 *
 * Why it feeds OpenSSL one whole record at a time: a client may send its first request in the same
 * segment as its Finished. Had OpenSSL been given those bytes, they would be inside OpenSSL, not in
 * the socket, when the kernel takes over receiving. Feeding record by record leaves everything
 * after the Finished here, where it is decrypted in userspace (counted, so the kernel's receive
 * sequence number starts after it) and handed to the application first.
 */
#ifndef KTLA_HANDSHAKE_H
#define KTLA_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "ktls.h"

/* The largest TLS record: 2^14 plaintext + 2048 expansion (TLS 1.2's bound, above 1.3's). */
#define KTLA_RECORD_MAX (5 + 16384 + 2048)

enum ktla_hs_state {
    KTLA_HS_RUNNING = 0, /* needs more input (or has output to send) */
    KTLA_HS_DONE,        /* handshake complete; see ktla_hs_tail_need */
    KTLA_HS_FAILED,
};

struct ktla_hs {
    SSL *ssl;
    BIO *rbio, *wbio;
    enum ktla_hs_state state;
    int error;                /* with KTLA_HS_FAILED: the code */
    unsigned long ssl_error;  /* OpenSSL's error, for the failure detail */

    uint8_t *in;              /* socket bytes not yet given to OpenSSL */
    size_t in_len, in_cap;

    uint8_t *out;             /* bytes OpenSSL wrote, not yet sent */
    size_t out_len, out_cap;

    /* Records counted for the kernel's sequence numbers. */
    uint64_t tx_records_after; /* written under the application keys during the handshake */
    uint64_t rx_records_after; /* read under the application keys after it, in userspace */
    /* TLS 1.3 KeyUpdates in the records that followed the Finished: the client's, which OpenSSL
     * followed, and ours, which OpenSSL wrote when asked. The kernel's first keys are the updated
     * ones, and the record counts above restart after each. */
    unsigned rx_updates, tx_updates;
    unsigned rx_in_a_row; /* the client's KeyUpdates since its last application data */

    uint8_t *plain;           /* application data that came with the handshake */
    size_t plain_len, plain_cap;
    bool peer_closed;         /* a close_notify came with it */
};

/* Prepares a server handshake on `ssl_ctx` (the SSL is created here). 0 or -ENOMEM. */
int ktla_hs_init(struct ktla_hs *hs, SSL_CTX *ssl_ctx);

/* Frees everything, wiping buffers that held plaintext. The SSL too unless taken (hs->ssl NULL). */
void ktla_hs_release(struct ktla_hs *hs);

/*
 * Where to put the next socket bytes, and how many may be read. While the handshake runs that is
 * as much as fits; once it is done, exactly what completes the record in progress (0 when input
 * ends on a record boundary), so nothing beyond it leaves the socket.
 */
uint8_t *ktla_hs_read_buf(struct ktla_hs *hs, size_t *room);

/*
 * Takes `n` bytes just read into the read buffer and advances: runs the handshake over every
 * whole record, and once it is done decrypts whole records that followed. Returns the state;
 * output may be waiting in hs->out either way (an alert on failure; after DONE, our KeyUpdate
 * when a client's in those records asked for one). More KeyUpdates there than keys.h allows fail
 * it with KTLA_EREKEY_LIMIT.
 */
enum ktla_hs_state ktla_hs_input(struct ktla_hs *hs, size_t n);

/* Drops `n` bytes from the front of hs->out once they are sent. */
void ktla_hs_output_sent(struct ktla_hs *hs, size_t n);

/* After DONE: bytes still to read to reach a record boundary (0: the kernel can take over). */
size_t ktla_hs_tail_need(const struct ktla_hs *hs);

/*
 * After DONE with nothing left to send and no tail to read: the keys for each direction with the
 * record sequence numbers at which the kernel takes over. 0, or a code from ktla_keys_derive.
 */
int ktla_hs_keys(struct ktla_hs *hs, struct ktla_key *tx, struct ktla_key *rx);

/* Maps an enum ktla_cipher from the negotiated suite; -1 when kernel TLS cannot carry it. */
int ktla_hs_cipher(const SSL *ssl);

#endif
