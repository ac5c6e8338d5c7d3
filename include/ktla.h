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
#include <sys/types.h>

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
    X(KTLA_ETRUNCATED, -4015, "the peer closed the TCP connection without a TLS close_notify")  \
    X(KTLA_ECERT, -4016, "a certificate or private key could not be loaded, or they do not match") \
    X(KTLA_ETICKETKEY, -4017,                                                                      \
      "the session ticket key file is unreadable or not a whole number of 80-byte keys")          \
    X(KTLA_ETLS, -4018, "the TLS handshake failed (protocol error or unacceptable client offer)")  \
    X(KTLA_ETIMEDOUT, -4019, "the TLS handshake did not finish before its deadline")               \
    X(KTLA_ENOCIPHER, -4020, "the negotiated cipher suite cannot be carried by kernel TLS")        \
    X(KTLA_EBUSY, -4021, "another operation of this kind is already in progress on this connection") \
    X(KTLA_EDISABLED, -4022, "kernel TLS is turned off by configuration")                          \
    X(KTLA_ENOTTLS, -4024, "the client does not speak TLS (plain HTTP sent to a TLS port?)")     \
    X(KTLA_ENOREKEY, -4025,                                                                        \
      "the peer updated its TLS 1.3 traffic key (KeyUpdate), which kernel TLS here cannot follow "  \
      "(rekeying needs Linux 6.14); the connection cannot continue")                              \
    X(KTLA_EUNEXPECTED, -4026,                                                                     \
      "the peer sent a handshake message or ChangeCipherSpec after the handshake; answered with "  \
      "an unexpected_message alert")                                                               \
    X(KTLA_EREKEY_LIMIT, -4027,                                                                    \
      "the peer sent more TLS 1.3 KeyUpdates than allowed (32 in a row, or 128 in 10 seconds)")   \
    X(KTLA_ELINGER, -4028,                                                                         \
      "the peer kept sending after the connection was shut down: cut at the linger limit")

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
    int rekey; /* 0 when the kernel takes a second TLS 1.3 transmit key on a socket (Linux 6.14+:
                  TLS 1.3 KeyUpdate can be followed in kernel mode), else KTLA_ENOREKEY */
};

/*
 * Probes the running kernel by opening a loopback TCP connection and trying to enable kernel TLS
 * on it. Returns 0 when kernel TLS works for at least one cipher, otherwise the reason (the same
 * code as out->ulp, or the first cipher's). `out` may be NULL. Takes a few hundred microseconds;
 * may be called at any time, from any thread. The result can change (a module may be loaded), so
 * callers that want a stable answer keep the first one.
 */
KTLA_API int ktla_kernel_probe(struct ktla_kernel_support *out);

/* ---------------------------------------------------------------------------------------------
 * TLS context: certificates, SNI, ALPN, session tickets. One context may serve any number of
 * acceptors, on any threads; it is reference-counted internally, so it can be freed while
 * acceptors still use it.
 */

struct ktla_ctx;

/*
 * One certificate chain and its private key (ECDSA or RSA), as PEM: from files (`cert_file`,
 * `key_file`) or from memory (`cert_pem`, `key_pem`, NUL-terminated); files win when both are
 * given. The chain's leaf comes first.
 */
struct ktla_cert_config {
    const char *cert_file;
    const char *key_file;
    const char *cert_pem;
    const char *key_pem;
};

struct ktla_ctx_config {
    /* Certificates; the first is the default, the others are chosen by SNI against their
     * subjectAltName DNS names (wildcards of one label allowed). At least one. */
    const struct ktla_cert_config *certs;
    size_t ncerts;
    /* ALPN protocols in the server's order of preference ("h2", "http/1.1"), or none. A client
     * that offers ALPN but none of these is still accepted, without ALPN. */
    const char *const *alpn;
    size_t nalpn;
    /* KTLA_TLS1_2 or KTLA_TLS1_3; 0 means TLS 1.2 and TLS 1.3 respectively. */
    uint16_t min_version;
    uint16_t max_version;
    /* TLS 1.3 session tickets sent after each full handshake. 0: the default (2), so that a
     * zero-initialised config resumes; -1: none. A resumed handshake gets at most one. */
    int tls13_tickets;
    /* Session ticket keys shared across processes and hosts (see ktla_ctx_load_ticket_keys);
     * NULL: a random key made at start-up, good for this process only. */
    const char *ticket_key_file;
    /* Turns session tickets (and so resumption) off entirely. */
    int no_tickets;
};

/*
 * Builds a context. Only what kernel TLS can carry is offered: AES-128-GCM, AES-256-GCM and
 * ChaCha20-Poly1305 with ECDHE (X25519, P-256, P-384), TLS 1.2 and 1.3; 0-RTT, renegotiation and
 * compression are off. Returns 0 and *out, or KTLA_EINVAL (bad config), KTLA_ECERT (a certificate
 * or key that cannot be loaded or does not match), KTLA_ETICKETKEY, -ENOMEM.
 */
KTLA_API int ktla_ctx_new(const struct ktla_ctx_config *cfg, struct ktla_ctx **out);

/* Drops the caller's reference; NULL is a no-op. */
KTLA_API void ktla_ctx_free(struct ktla_ctx *ctx);

/*
 * Loads session ticket keys from `path` and makes them current, replacing the previous set.
 * The file is a whole number of 80-byte keys (16-byte name, 32-byte HMAC-SHA256 key, 32-byte
 * AES-256 key; `openssl rand 80 > FILE` makes one); the first key issues new tickets, all of them
 * open tickets, so appending the old key behind a new one rotates without losing sessions.
 * Safe to call at any time from any thread (e.g. on SIGHUP). 0, KTLA_ETICKETKEY, or -errno.
 */
KTLA_API int ktla_ctx_load_ticket_keys(struct ktla_ctx *ctx, const char *path);

/*
 * Replaces certificates for new handshakes (e.g. on SIGHUP); handshakes in flight finish with the
 * old ones. Same rules and codes as ktla_ctx_new for `certs`.
 */
KTLA_API int ktla_ctx_reload_certs(struct ktla_ctx *ctx, const struct ktla_cert_config *certs,
                                   size_t ncerts);

/* ---------------------------------------------------------------------------------------------
 * Acceptor: accepts on a listening socket and runs handshakes over io_uring, many at once on one
 * thread. When a handshake completes it installs the keys in the kernel (where it can) and hands
 * the established connection to the application.
 */

struct io_uring;
struct io_uring_cqe;
struct ktla_acceptor;
struct ktla_conn;

/* What happens when kernel TLS cannot take a connection. */
enum ktla_ktls_policy {
    KTLA_KTLS_AUTO = 0, /* use kernel TLS where possible, else userspace; logged once, counted */
    KTLA_KTLS_REQUIRE,  /* a connection the kernel cannot take fails its handshake */
    KTLA_KTLS_OFF,      /* never use kernel TLS */
};

/* How ktla_conn_sendfile moves a file into a kernel-TLS socket (userspace mode always reads and
 * encrypts). Both are zero-copy in userspace: the kernel encrypts from the page cache. */
enum ktla_file_path {
    KTLA_FILE_DEFAULT = 0,  /* the one measured faster (bench/README.md): sendfile */
    KTLA_FILE_SENDFILE,     /* sendfile(2) on the ring's thread, non-blocking, POLLOUT to wait */
    KTLA_FILE_SPLICE,       /* io_uring splice file -> pipe -> socket: the ring's thread only
                               submits; the kernel's io-wq threads read and encrypt. Costs a pipe
                               (two descriptors) per connection that ever sent a file. */
};

/* Who carries one direction of an established connection's record layer. */
enum ktla_mode { KTLA_MODE_KERNEL = 0, KTLA_MODE_USERSPACE = 1 };

/* What the application learns about an established connection. Valid until ktla_conn_close. */
struct ktla_conn_info {
    int fd;
    uint16_t version;         /* KTLA_TLS1_2 or KTLA_TLS1_3 */
    enum ktla_cipher cipher;  /* negotiated AEAD */
    const char *cipher_name;  /* the suite's IANA name, e.g. "TLS_AES_128_GCM_SHA256" */
    const char *alpn;         /* negotiated ALPN protocol or NULL */
    const char *sni;          /* server name the client asked for, or NULL */
    int resumed;              /* 1 when the session was resumed from a ticket */
    enum ktla_mode tx_mode;   /* transmit direction */
    enum ktla_mode rx_mode;   /* receive direction */
    int tx_reason;            /* when tx_mode is userspace: why (a ktla code), else 0 */
    int rx_reason;            /* likewise for rx */
    size_t early_plaintext;   /* bytes of application data that arrived with the handshake; the
                                 first ktla_conn_recv calls return them before anything else */
    uint64_t handshake_ns;    /* accept to hand-over */
    uint32_t key_updates_rx;  /* TLS 1.3 KeyUpdates followed in kernel mode (counting those
                                 that came with the peer's Finished): the peer's, */
    uint32_t key_updates_tx;  /* and ours (sent because the peer asked) */
    char peer[64];            /* "ADDR:PORT" of the client */
    uint64_t cold_sends;      /* kernel mode: file ranges ktla_conn_sendfile found outside the
                                 page cache and sent through io_uring splice, whose reads do
                                 not block the ring's thread, instead of sendfile(2) */
    uint64_t bytes_sent;      /* application bytes sent so far: taken by the socket (kernel
                                 mode), or encrypted and their ciphertext taken (userspace).
                                 It moves while one long send or sendfile is under way, so an
                                 idle timeout can tell a slow reader from a stalled one. */
};

/* Called for each established connection; the application owns `conn` from then on and must
 * eventually ktla_conn_close it. */
typedef void (*ktla_conn_cb)(struct ktla_conn *conn, void *arg);

/* Called for each connection whose handshake failed (optional): its peer and the reason. The
 * connection is already closed. */
typedef void (*ktla_fail_cb)(const char *peer, int code, const char *detail, void *arg);

/* Where ktla's one-line operator messages go (optional; default: stderr). */
typedef void (*ktla_log_cb)(const char *line, void *arg);

struct ktla_acceptor_config {
    int listen_fd;             /* a listening TCP socket; the acceptor does not close it */
    struct ktla_ctx *ctx;      /* referenced for the acceptor's lifetime */
    struct io_uring *ring;     /* the application's ring, or NULL for an own one */
    enum ktla_ktls_policy ktls;
    unsigned max_handshakes;   /* handshakes in flight; 0: 1024. Beyond it, new connections wait
                                  in the listen backlog. */
    unsigned handshake_timeout_ms; /* 0: 10000 */
    enum ktla_file_path file_path; /* for the connections this acceptor hands over */
    ktla_conn_cb on_conn;      /* required */
    ktla_fail_cb on_fail;
    ktla_log_cb log;
    void *arg;                 /* passed to every callback */
};

/* Counters, for operators and tests. */
struct ktla_acceptor_stats {
    uint64_t accepted;           /* TCP connections accepted */
    uint64_t handshakes_done;    /* handed to the application */
    uint64_t handshakes_failed;  /* including timeouts */
    uint64_t timeouts;
    uint64_t ktls_both;          /* connections with kernel TX and RX */
    uint64_t ktls_fallbacks;     /* connections with at least one direction in userspace */
    uint64_t early_data_bytes;   /* plaintext that arrived with the client's Finished */
    unsigned in_flight;          /* handshakes in flight now */
};

/*
 * Creates an acceptor and arms its accepts on the ring. With an own ring (cfg->ring NULL), drive
 * it with ktla_acceptor_run. With the application's ring, the application submits and reaps as it
 * likes and passes every completion to ktla_dispatch. Returns 0 and *out, or KTLA_EINVAL, -ENOMEM,
 * or a negative io_uring setup error.
 */
KTLA_API int ktla_acceptor_new(const struct ktla_acceptor_config *cfg,
                               struct ktla_acceptor **out);

/*
 * Bytes to send, unencrypted, to a client that sent a plain-text request line (an uppercase
 * word and a space, as in "GET / HTTP/1.1") where a TLS ClientHello was expected, before its
 * connection closes (it still fails with KTLA_ENOTTLS). An HTTP server sets a short 400 response
 * saying to use https://, as nginx does; anything else that is not TLS still gets nothing. The
 * bytes are copied; len 0 turns it off (the default). Call it before the acceptor's ring runs,
 * or from its thread. 0, KTLA_EINVAL (NULL with len, or len over 4096), -ENOMEM.
 */
KTLA_API int ktla_acceptor_set_plain_reply(struct ktla_acceptor *acc, const void *reply,
                                           size_t len);

/*
 * Which OpenSSL library context an acceptor's handshakes run in. OpenSSL 3.0 takes a lock of the
 * library context for each algorithm it looks up, hundreds of times per handshake, so acceptors
 * on several threads sharing OpenSSL's default context all write the same few cache lines.
 * KTLA_OPENSSL_OWN, the default: at its first connection (or when asked for with
 * KTLA_OPENSSL_OWN below, at once), each acceptor makes a library context of its own (OpenSSL's "default" provider, and "base" where the
 * default context has it) and SSL_CTXs in it from the ktla_ctx's certificates and settings,
 * rebuilt at its next handshake after ktla_ctx_reload_certs; tickets open across acceptors as
 * before. Acceptors of one ktla_ctx on one ring (one thread) share one. It costs about 300 KB
 * each, and a process has at most 128 (OpenSSL 3.0 takes two thread-specific keys for each).
 * Where OpenSSL's default context cannot be copied (FIPS mode, or a provider other than
 * "default" and "base", such as one an application loaded for keys in hardware) or no context
 * can be had, the acceptor shares the default context, and says why once per process through its
 * log callback. KTLA_OPENSSL_SHARED asks for the default context and the ktla_ctx's SSL_CTX.
 */
enum ktla_openssl_context {
    KTLA_OPENSSL_OWN = 0,
    KTLA_OPENSSL_SHARED = 1,
};

/*
 * Chooses the library context before the acceptor's first connection (call it before its ring
 * runs, or from its thread before a connection arrives), once. KTLA_OPENSSL_OWN makes it now, so
 * that its cost and any fallback belong to start-up. 0; KTLA_EINVAL for NULL, another value, a
 * second call or a connection already accepted; for KTLA_OPENSSL_OWN, KTLA_EINVAL or -ENOMEM
 * when the acceptor cannot have its own (it then shares, and its log callback said why).
 */
KTLA_API int ktla_acceptor_set_openssl_context(struct ktla_acceptor *acc,
                                               enum ktla_openssl_context which);

/*
 * With an own ring: submits what is queued, waits up to timeout_ms (-1: forever) for completions
 * and handles them, calling the callbacks. Returns the number of completions handled, or -errno.
 */
KTLA_API int ktla_acceptor_run(struct ktla_acceptor *acc, int timeout_ms);

/* The acceptor's ring (its own or the application's). An own ring's completions are all handled
 * by ktla_acceptor_run; an application that wants to mix its own work in shares its ring instead
 * (cfg->ring) and routes completions with ktla_dispatch. */
KTLA_API struct io_uring *ktla_acceptor_ring(struct ktla_acceptor *acc);

/*
 * Routes one completion from a ring ktla shares with the application. ktla marks its own
 * submissions by setting bit 0 of user_data; an application that shares the ring keeps bit 0 of
 * its own user_data clear (any pointer does). Returns 1 when the completion was ktla's (it is
 * handled; the caller still io_uring_cqe_seen()s it), 0 when it is the application's.
 */
KTLA_API int ktla_dispatch(struct io_uring_cqe *cqe);

/*
 * For an application that runs a shared ring: call after handling each completion, with a mark
 * set to 0 at the start of each turn (each wait for completions), and handle only the
 * completions that were ready when the turn began (io_uring_cq_ready), so that what these
 * submissions complete waits for the next turn. Submits what is queued once the turn has been
 * going for 50 us. A handshake step costs most of a millisecond of OpenSSL, so without this a
 * turn of many steps holds every flight until its end, and clients and server take turns at
 * being idle (measured on 2 CPUs, full handshakes/s: 4 clients 609-658 without, 675-807 with;
 * 32 clients 659-797 without, 900-1,240 with). Cheap: a clock read, and a submission only when
 * it is due.
 */
KTLA_API void ktla_submit_if_late(struct io_uring *ring, uint64_t *mark_ns);

/*
 * Stops accepting, and only that: the accepts armed on the listening socket are cancelled (the
 * application may close the socket afterwards), while the handshakes in flight go on and end in
 * on_conn or on_fail as usual (ktla_acceptor_get_stats' in_flight counts them). For a graceful
 * drain: stop, close the listening socket, let the handshakes finish and serve what arrives,
 * then ktla_acceptor_free. A connection the kernel had accepted before the cancellation is still
 * handed over. NULL or a second call is a no-op.
 */
KTLA_API void ktla_acceptor_stop(struct ktla_acceptor *acc);

/* Stops accepting, aborts handshakes in flight (their on_fail is called with KTLA_ECLOSED) and
 * frees the acceptor once its ring has nothing of it left in flight. Established connections
 * are the application's and stay open, but they run on the acceptor's ring: with an own ring,
 * close them (and let ktla_acceptor_run reap them) before this call, which ends the ring.
 * NULL is a no-op. */
KTLA_API void ktla_acceptor_free(struct ktla_acceptor *acc);

/* The end of an acceptor freed with ktla_acceptor_free_then: nothing of it is in flight any
 * more, so the application may tear its ring down. */
typedef void (*ktla_done_cb)(void *arg);

/* ktla_acceptor_free with an end-of-life callback (libuv's uv_close is the model). On the
 * application's ring, cb runs once from ktla_dispatch, never inside this call, when the last
 * operation of the acceptor has come back: the signal an application waits for before
 * io_uring_queue_exit, instead of guessing with a quiet period. With an own ring everything is
 * drained before this returns, and cb runs just before it does. cb may be NULL. */
KTLA_API void ktla_acceptor_free_then(struct ktla_acceptor *acc, ktla_done_cb cb, void *arg);

KTLA_API void ktla_acceptor_get_stats(const struct ktla_acceptor *acc,
                                      struct ktla_acceptor_stats *out);

/* ---------------------------------------------------------------------------------------------
 * Established connections: the same calls whether the kernel or userspace carries the records.
 * Each call queues one operation on the acceptor's ring and returns at once; its callback runs
 * from ktla_acceptor_run / ktla_dispatch. At most one receive and one send (or sendfile) may be
 * in flight per connection; a second gets KTLA_EBUSY. When a call returns an error its callback
 * is never called.
 */

/* result: bytes transferred (> 0), 0 at end of stream (recv only: close_notify or a clean TCP
 * close after it), or a negative code (KTLA_EALERT, KTLA_ETRUNCATED, KTLA_EBADMAC, -ECONNRESET...). */
typedef void (*ktla_io_cb)(struct ktla_conn *conn, ssize_t result, void *arg);

KTLA_API const struct ktla_conn_info *ktla_conn_get_info(const struct ktla_conn *conn);

/* Receives up to len bytes of plaintext into buf (which must stay valid until the callback).
 * Plaintext that arrived with the handshake comes first. 0 or KTLA_EBUSY, KTLA_ECLOSED. */
KTLA_API int ktla_conn_recv(struct ktla_conn *conn, void *buf, size_t len, ktla_io_cb cb, void *arg);

/* Waits until a ktla_conn_recv would not wait (plaintext, end of stream or an error is there),
 * without holding a buffer: the callback gets 1, or a negative code. An idle connection then costs
 * no receive buffer, which with thousands of them is most of their memory. Takes the receive's
 * place: 0 or KTLA_EBUSY, KTLA_ECLOSED, -EBUSY. */
KTLA_API int ktla_conn_recv_ready(struct ktla_conn *conn, ktla_io_cb cb, void *arg);

/* Gives back what a connection in userspace mode holds between requests: its ciphertext and
 * plaintext buffers and OpenSSL's read BIO, up to about 520 KB after a long file. For connections that have gone idle
 * (ktla-serve: at the next tick of its timer): doing it after every request would make the next
 * one allocate it all again. Does nothing in kernel mode, or while a send or a receive into a
 * buffer is in flight. */
KTLA_API void ktla_conn_trim(struct ktla_conn *conn);

/* Sends all of buf (valid until the callback); the callback gets len or an error. */
KTLA_API int ktla_conn_send(struct ktla_conn *conn, const void *buf, size_t len, ktla_io_cb cb,
                            void *arg);

/* Sends count bytes of file_fd from offset: in kernel mode through kernel TLS with no copy in
 * userspace (sendfile(2) or io_uring splice, as the acceptor's file_path says), read + encrypt in
 * userspace mode. The callback gets count or an error.
 * sendfile(2) cannot be told MSG_NOSIGNAL: a process using this ignores SIGPIPE (as servers do),
 * and then sees -EPIPE in the callback instead. */
KTLA_API int ktla_conn_sendfile(struct ktla_conn *conn, int file_fd, uint64_t offset, size_t count,
                                ktla_io_cb cb, void *arg);

/* The end of a connection shut down with ktla_conn_shutdown: result is 0 when the peer closed
 * its side (its close_notify read, or its FIN) within the linger time, after our close_notify
 * and FIN; otherwise why the socket was
 * closed without that (-ETIMEDOUT: the linger time passed; KTLA_ELINGER: the peer kept sending;
 * -ECONNRESET, KTLA_EBADMAC...). conn may be read (ktla_conn_get_info) during the callback and is
 * freed when it returns: nothing of it is in flight any more. */
typedef void (*ktla_close_cb)(struct ktla_conn *conn, int result, void *arg);

/*
 * Ends the connection gracefully, the same in kernel and userspace mode: sends close_notify,
 * shuts down the sending side (TCP FIN after every byte already queued), then reads and drops
 * whatever the peer still sends (its close_notify, stray requests, its FIN) until it closes its
 * side, linger_ms pass without progress (a slow reader still taking what the response left
 * queued is waited for, up to ten times linger_ms in all) or 256 KiB have been dropped, and only
 * then closes the socket. Closing a
 * socket whose receive queue holds unread bytes makes the kernel answer with a reset, which
 * destroys the response still queued on both sides (the client's kernel drops what its
 * application has not read yet): this is how a server avoids that, and what nginx's
 * lingering_close does. A peer that only half-closed (TLS 1.3 allows it: RFC 8446 section 6.1)
 * still receives everything already sent and then our close_notify: its FIN does not end the
 * wait for room to send that. A peer whose close_notify has been read sends nothing more: once
 * ours is out the socket is closed at once, without waiting for its FIN.
 *
 * Call it when no send is in flight (a response is finished); a receive in flight is cancelled
 * (its callback never runs, and its buffer is not touched after this returns, as with
 * ktla_conn_close). Afterwards the application makes no other call on conn: cb (optional) runs
 * once, from the ring and never inside this call, when the connection is gone. ktla_conn_close
 * during the linger cuts it short without calling cb. Returns 0, or KTLA_EINVAL, KTLA_ECLOSED
 * (already closed), KTLA_EBUSY (a send in flight), -EBUSY (the ring is full); on error nothing
 * changed and cb will not run.
 */
KTLA_API int ktla_conn_shutdown(struct ktla_conn *conn, unsigned linger_ms, ktla_close_cb cb,
                                void *arg);

/* The longest head ktla_conn_sendfile_head takes. */
#define KTLA_SENDFILE_HEAD_MAX 16384

/* ktla_conn_sendfile with `head` (head_len bytes, valid until the callback) sent first, in the
 * same stream: in kernel mode with MSG_MORE, so that the kernel puts the head and the file's first
 * bytes in one record; in userspace mode encrypted together. A small response (an HTTP head and
 * a body of a few KiB) is then one record, one encryption and one write instead of two. The
 * callback gets head_len + count, or an error. 0, KTLA_EINVAL (head_len 0 or over
 * KTLA_SENDFILE_HEAD_MAX, count 0), KTLA_EBUSY, KTLA_ECLOSED, -ENOMEM, -EBUSY. */
KTLA_API int ktla_conn_sendfile_head(struct ktla_conn *conn, const void *head, size_t head_len,
                                     int file_fd, uint64_t offset, size_t count, ktla_io_cb cb,
                                     void *arg);

/* Sends close_notify, closes the socket and frees the connection once nothing of it is in
 * flight: an abortive close, for errors and clients that stopped reading. Unread input makes
 * the kernel reset the connection; ktla_conn_shutdown is the graceful end. No callback of this
 * connection runs after this call, and (on Linux 6.0 and later, where io_uring can cancel
 * synchronously) no buffer the application passed is touched after it returns. Never fails;
 * conn is gone. */
KTLA_API void ktla_conn_close(struct ktla_conn *conn);

/* ktla_conn_close with an end-of-life callback (libuv's uv_close is the model): cb runs once,
 * from the ring and never inside this call, when nothing of conn is in flight any more, with
 * result -ECANCELED (the application ended it); conn may be read (ktla_conn_get_info) during it and is freed when it
 * returns. From then on no buffer the application passed is touched, on every kernel (Linux
 * before 6.0 cannot cancel synchronously, so ktla_conn_close alone cannot promise it): the
 * moment to free them. No other callback of conn runs after this call. On a connection in a
 * graceful shutdown, the shutdown is cut short and cb runs instead of its callback. */
KTLA_API void ktla_conn_close_then(struct ktla_conn *conn, ktla_close_cb cb, void *arg);

/* Opaque per-connection pointer for the application. */
KTLA_API void ktla_conn_set_data(struct ktla_conn *conn, void *data);
KTLA_API void *ktla_conn_get_data(const struct ktla_conn *conn);

#ifdef __cplusplus
}
#endif
#endif
