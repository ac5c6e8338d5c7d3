/*
 * An echo server on the ktla acceptor, running its own ring on a thread, and a TLS client that
 * drives OpenSSL over memory BIOs on a plain socket so a test controls exactly which bytes leave
 * in which write (the client's Finished and its first request in one segment, for instance).
 */
#ifndef KTLA_ECHO_H
#define KTLA_ECHO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#include "ktla.h"

struct echo_opts {
    uint16_t min_version, max_version; /* 0: ktla's defaults */
    int tickets;                       /* TLS 1.3 tickets; -1: default */
    enum ktla_ktls_policy ktls;
    unsigned timeout_ms, max_handshakes; /* 0: ktla's defaults */
    const char *file; /* a request starting with "FILE" is answered with this file's bytes */
    size_t file_extra; /* ...asking ktla_conn_sendfile for this many bytes more than it has */
    enum ktla_file_path file_path;
    bool ready_first; /* wait with ktla_conn_recv_ready before each receive */
    bool shared_ring; /* the server thread owns the ring, shares it with ktla, and puts a
                         timeout of its own on it every turn (see echo_app_completions) */
    /* After answering a FILE request: 0 reads on; ECHO_END_SHUTDOWN ends the connection with
     * ktla_conn_shutdown (linger 5 s), ECHO_END_CLOSE with ktla_conn_close, without reading. */
    int file_end;
    const char *plain_reply; /* ktla_acceptor_set_plain_reply, when not NULL */
    const char *file_head;   /* FILE answered with ktla_conn_sendfile_head(file_head, file) */
    /* While a FILE is being sent, keep receiving (what comes is counted, not answered), as an
     * HTTP/2 server does: OpenSSL reads, and may write, while a send is in flight. */
    bool recv_during_file;
    /* The client's close_notify is answered with ktla_conn_shutdown (linger 5 s), as ktla-serve
     * does, rather than ktla_conn_close. */
    bool shutdown_at_close_notify;
    /* ktla_acceptor_set_openssl_context(KTLA_OPENSSL_SHARED): OpenSSL's default library
     * context and the ktla_ctx's SSL_CTX rather than the acceptor's own. */
    bool shared_openssl;
    /* ktla_acceptor_set_openssl_context(KTLA_OPENSSL_OWN): its own context made at once,
     * rather than at the first connection. */
    bool own_openssl;
    /* Another server's TLS context (echo_ctx), shared: the same certificate and ticket keys. */
    struct ktla_ctx *ctx;
    /* With shared_ring: a second listening socket and acceptor on the same ring (echo_port2,
     * echo_acceptor2), answered alike. */
    bool second_acceptor;
};

enum { ECHO_END_SHUTDOWN = 1, ECHO_END_CLOSE = 2 };

/* What the server saw of one established connection. */
struct echo_conn {
    struct ktla_conn_info info;
    char cipher_name[64];
    int readback_tx, readback_rx;  /* ktla_ktls_get on the server socket: 0 or the code */
    uint64_t readback_tx_seq, readback_rx_seq;
    ssize_t last_result;           /* how the connection ended, from the server's side */
    uint32_t key_updates_rx, key_updates_tx; /* KeyUpdates followed in kernel mode, at the end */
    uint64_t bytes_sent;                     /* info.bytes_sent at the end */
    uint64_t cold_sends;                     /* info.cold_sends at the end */
    bool ended;
    bool shut;        /* ended with ktla_conn_shutdown: close_result is its callback's result */
    int close_result;
    uint64_t read_during_file; /* with recv_during_file: bytes received while sending */
};

struct echo_server;

struct echo_server *echo_start(const struct echo_opts *o);
uint16_t echo_port(const struct echo_server *s);
struct ktla_ctx *echo_ctx(const struct echo_server *s);
struct ktla_acceptor *echo_acceptor(const struct echo_server *s);
uint16_t echo_port2(const struct echo_server *s);
struct ktla_acceptor *echo_acceptor2(const struct echo_server *s);
/* Copies of the connections so far (up to max) and how many there were. */
int echo_conns(struct echo_server *s, struct echo_conn *out, int max);
/* Failed handshakes so far, and the code of the last one. */
int echo_failures(struct echo_server *s, int *last_code);
void echo_stats(struct echo_server *s, struct ktla_acceptor_stats *out);
/* With shared_ring: completions of the application's own submissions that reached it (not
 * ktla), and ktla completions wrongly handed to it (must stay 0). */
void echo_app_completions(struct echo_server *s, int *own, int *foreign);
/* Waits up to ms for `n` connections to have ended on the server side. */
bool echo_wait_ended(struct echo_server *s, int n, int ms);
bool echo_wait_failures(struct echo_server *s, int n, int ms);
void echo_stop(struct echo_server *s);

/* How the server's connections and acceptor ended (echo_stop_life): every connection is closed
 * with ktla_conn_close_then and the acceptor freed with ktla_acceptor_free_then. */
struct echo_life {
    int closed;       /* ktla_conn_close_then calls */
    int gone;         /* their callbacks */
    int gone_inside;  /* ...that ran inside the close call (must be 0) */
    int gone_result;  /* ...whose result was not -ECANCELED (must be 0) */
    bool acc_gone;    /* the acceptor's end-of-life callback ran */
    bool acc_gone_inside; /* ...inside ktla_acceptor_free_then (must not, on a shared ring) */
};

/* echo_stop, reporting how everything ended into *out. */
void echo_stop_life(struct echo_server *s, struct echo_life *out);

struct tc {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    /* How the last tc_read_to_close_notify ended, for a failing test to say: the bytes it had,
     * OpenSSL's error, and read(2)'s result and errno when the socket ended it. */
    size_t end_got;
    int end_ssl_error;
    ssize_t end_read;
    int end_errno;
};

/* "N bytes, then <how it ended>" from the fields above. */
const char *tc_end_text(const struct tc *c, char *buf, size_t cap);


struct tc_opts {
    uint16_t version;     /* 0: either */
    int cipher;           /* enum ktla_cipher, or -1: any */
    SSL_SESSION *session; /* resume this session */
    SSL_CTX *ctx;         /* reuse this client context (the one the session came from) */
    size_t big_hello;     /* pad the ClientHello with an unknown extension of this many bytes */
    const char *sni;
    /* With `first`: this many KeyUpdates back to back (first_update_type:
     * SSL_KEY_UPDATE_NOT_REQUESTED, the default, or SSL_KEY_UPDATE_REQUESTED) before it, all in
     * the Finished's write. */
    unsigned first_updates;
    int first_update_type;
    int rcvbuf; /* SO_RCVBUF before connecting, when not 0 */
};

/* The client context tc_connect would make for these options; the caller frees it. */
SSL_CTX *tc_ctx_new(const struct tc_opts *o);

/*
 * Connects to 127.0.0.1:port and handshakes. With `first`, that request is encrypted right after
 * the client's Finished and both leave in one write(2). 0, or -1 (the test decides).
 */
int tc_connect(struct tc *c, uint16_t port, const struct tc_opts *o, const void *first,
               size_t first_len);
/* A KeyUpdate of `type` (SSL_KEY_UPDATE_*) into the client's output, which the next tc_write
 * sends along with its data. 0 or -1. */
int tc_key_update(struct tc *c, int type);
/* Writes all of buf as application data. 0 or -1. */
int tc_write(struct tc *c, const void *buf, size_t len);
/* Reads exactly len bytes of application data. 0, or -1 on error or end of stream. */
int tc_read_full(struct tc *c, void *buf, size_t len);
/* After a read: the session to resume with (tickets seen), or NULL. Caller frees. */
SSL_SESSION *tc_session(struct tc *c);
/* Sends close_notify when asked, closes the socket, frees everything. */
void tc_close(struct tc *c, bool close_notify);
/* close_notify and a TCP FIN, the socket staying open for reading. 0 or -1. */
int tc_half_close(struct tc *c);
/* close_notify alone: no FIN, the socket stays open both ways. 0 or -1. */
int tc_close_notify(struct tc *c);
/* Reads application data into buf until the server's close_notify (returns the bytes read), or
 * -1 on any other end (a reset, a FIN without close_notify, an error) or more than cap bytes. */
ssize_t tc_read_to_close_notify(struct tc *c, void *buf, size_t cap);

/* The number of open file descriptors of this process. */
int tu_fd_count(void);

#endif
