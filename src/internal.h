/* Internal structures shared by the ring, the acceptor and the connection layer. */
#ifndef KTLA_INTERNAL_H
#define KTLA_INTERNAL_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "alert.h"
#include "handshake.h"
#include "keys.h"
#include "ktla.h"

/* What a submission was for; its completion is routed by this. */
enum ktla_op_kind {
    KTLA_OP_ACCEPT,
    KTLA_OP_TIMER,
    KTLA_OP_CANCEL,  /* the cancellation of the accepts still armed, at the acceptor's end */
    KTLA_OP_ACCEPT_RETRY, /* out of descriptors: the accepts are armed again after a pause */
    KTLA_OP_NOP,     /* a completion with nothing to act on */
    KTLA_OP_HS_RECV,
    KTLA_OP_HS_SEND,
    KTLA_OP_RECV,    /* established: receive (also the deferred delivery of early plaintext) */
    KTLA_OP_RECV_READY, /* established: waiting for something to receive, without a buffer */
    KTLA_OP_RAW_RECV, /* established, userspace mode: ciphertext for OpenSSL */
    KTLA_OP_SEND,    /* established: send, or a file chunk's ciphertext in userspace mode */
    KTLA_OP_POLLOUT, /* established, kernel mode: sendfile waits for room */
    KTLA_OP_FILE_READ, /* established, userspace mode: a file chunk to encrypt */
    KTLA_OP_SPLICE_IN,  /* established, kernel mode, splice path: file -> pipe */
    KTLA_OP_SPLICE_OUT, /* established, kernel mode, splice path: pipe -> socket */
    KTLA_OP_REKEY_POLLOUT, /* established, kernel mode: our KeyUpdate waits for room */
    KTLA_OP_LINGER,         /* shutting down: room for close_notify, or input to drop */
    KTLA_OP_LINGER_TIMEOUT, /* shutting down: the linger's deadline, linked to KTLA_OP_LINGER */
};

/* Embedded in whatever owns the operation; user_data = its address | 1 (see ktla_dispatch). */
struct ktla_op {
    enum ktla_op_kind kind;
    struct ktla_acceptor *acc; /* for acceptor-level ops */
    struct ktla_conn *conn;    /* for connection ops */
};

enum ktla_conn_state {
    KTLA_CONN_HANDSHAKE,
    KTLA_CONN_ESTABLISHED,
    KTLA_CONN_LINGER,  /* ktla_conn_shutdown: close_notify, FIN, dropping input until the peer's */
    KTLA_CONN_CLOSING, /* waiting for its operations to finish before it is freed */
};

/* The splice path's pipe, made at a connection's first file and kept for the next ones. */
struct ktla_splice {
    int r, w;
    size_t cap;          /* the pipe's capacity: bytes moved per step */
    size_t fill;         /* bytes in the pipe, read from the file and not yet in the socket */
    unsigned pending;    /* splices of this step still in flight */
    int in_res, out_res; /* their results */
    struct ktla_op in_op; /* file -> pipe; pipe -> socket uses the connection's wop */
};

/* A TLS 1.3 kernel connection on a kernel that can rekey: what following KeyUpdates takes. */
struct ktla_rekey {
    struct ktla_secrets sec;
    uint64_t window_start_ns; /* rate limit: KeyUpdates from the peer in the current window */
    unsigned window_count;
    unsigned in_a_row;        /* ...and since the peer's last application data */
    bool tx_due;      /* the peer asked for our KeyUpdate and it is not sent yet */
    bool tx_wait;     /* ...and it waits for room in the socket (POLLOUT on wop) */
    bool send_queued; /* an application send arrived meanwhile; it starts after our update */
};

struct ktla_conn {
    struct ktla_acceptor *acc;
    struct io_uring *ring;
    enum ktla_conn_state state;
    int fd;
    unsigned inflight; /* submissions whose completion has not come back */
    struct ktla_op rop, wop;
    struct ktla_conn_info info;
    char alpn[32];
    char *sni; /* allocated only when the client sent one: most of a connection's bytes else */
    void *user_data;

    /* Handshake. */
    struct ktla_hs *hs;
    uint64_t start_ns, deadline_ns;
    struct ktla_conn *dl_prev, *dl_next; /* deadline list: handshakes in start order */
    bool hs_failed;
    int ulp; /* TCP_ULP "tls" attached at accept (0), or why not: the reason kernel TLS is off */

    /* Established. */
    SSL *ssl;              /* userspace mode only (one direction or both) */
    uint8_t *early;        /* plaintext that came with the handshake, not yet delivered */
    size_t early_len, early_off;
    bool peer_closed;      /* close_notify seen */
    bool fatal_sent;       /* a fatal alert went out: nothing more may follow it */
    struct ktla_hs_reader hsr; /* kernel mode: a handshake message arriving in pieces */

    void *rbuf;            /* the application's receive in progress */
    size_t rlen;
    ktla_io_cb rcb;
    void *rarg;
    bool rbusy;

    const uint8_t *sbuf;   /* the application's send in progress */
    size_t slen, sdone;
    const uint8_t *head;   /* ktla_conn_sendfile_head, kernel mode: the head, sent first with */
    size_t head_len, head_off; /* MSG_MORE so that it shares its record with the file */
    size_t us_head;        /* ...userspace mode: head bytes at the start of chunk, not yet sent */
    size_t result_extra;   /* the head's length, added to the send's result */
    int file_fd;           /* >= 0: a sendfile in progress */
    uint64_t file_off;
    /* The last residency check that found a window of a file cached: a send that continues
     * where the previous one on that descriptor stopped, within the window, needs no new check
     * (HTTP/2 sends a file as many 16 KiB frames, each its own sendfile). */
    int resident_fd;
    uint64_t resident_next, resident_end;
    bool use_splice;       /* kernel mode: files through io_uring splice, not sendfile(2) */
    bool via_pipe;         /* ...the file being sent goes through the pipe (or a cold range) */
    struct ktla_splice *sp;
    struct ktla_rekey *rk; /* NULL: a KeyUpdate ends the connection (KTLA_ENOREKEY) */
    ktla_io_cb scb;
    void *sarg;
    bool sbusy;

    /* Shutting down (ktla_conn_shutdown). */
    struct ktla_op lop, lto;        /* the linger's poll (or first NOP) and its linked timeout */
    struct __kernel_timespec lts;   /* read when the timeout is submitted */
    uint64_t linger_deadline_ns;    /* extended while what we sent keeps leaving ... */
    uint64_t linger_cap_ns;         /* ... up to this */
    unsigned linger_ms;
    int linger_outq;                /* bytes not yet acknowledged at the last deadline */
    size_t linger_dropped;          /* bytes read and dropped */
    bool cn_made;                   /* userspace mode: close_notify written (into enc) */
    bool cn_sent;                   /* close_notify out (or given up on) and SHUT_WR done */
    bool linger_eof;                /* the peer's FIN read: it may still be reading */
    int cn_error;                   /* with cn_sent: 0, or why close_notify could not go out */
    int close_result;
    ktla_close_cb close_cb;
    void *close_arg;

    uint8_t *raw;          /* userspace mode: ciphertext received (rx) */
    size_t raw_cap;
    uint8_t *enc;          /* userspace mode: ciphertext to send (tx), written by OpenSSL */
    size_t enc_len, enc_off, enc_cap;
    size_t enc_plain;      /* plaintext bytes in enc: counted as sent once enc is on the wire */
    bool enc_sending;      /* a send from enc is in flight: the kernel may read it */
    uint8_t *side;         /* ...meanwhile OpenSSL's writes (alerts) wait here */
    size_t side_len, side_cap;
    uint8_t *chunk;        /* userspace mode: file contents to encrypt */
    size_t chunk_cap;
};

struct ktla_acceptor {
    struct ktla_acceptor_config cfg;
    struct io_uring own_ring;
    struct io_uring *ring;
    struct ktla_op accept_op, timer_op, cancel_op, nop_op, retry_op;
    unsigned accepts_armed; /* single-shot accepts in flight, all tagged with accept_op */
    bool accept_stalled;    /* out of descriptors or memory: no accept until the retry timer */
    bool accept_broken;     /* the listening socket refuses accept for good: none any more */
    bool accept_cancelling, timer_armed, retry_armed, freeing;
    struct __kernel_timespec retry_ts;
    struct __kernel_timespec timer_ts;
    struct ktla_conn *dl_head, *dl_tail;
    struct ktla_acceptor_stats stats;
    unsigned inflight; /* acceptor-level ops in flight */
    bool stopped;      /* ktla_acceptor_stop: no more accepts; handshakes in flight go on */
    char *plain_reply; /* for a client that sent a plain-text request instead of TLS */
    size_t plain_reply_len;
    ktla_done_cb done_cb; /* ktla_acceptor_free_then */
    void *done_arg;
    struct ktla_tls_local *tls; /* its own OpenSSL library context; NULL: the shared one */
    bool tls_decided; /* by ktla_acceptor_set_openssl_context, or else at the first handshake */
};

/* A submission queue entry, flushing the ring once if it is full; NULL only if that failed. */
struct io_uring_sqe *ktla_ring_sqe(struct io_uring *ring);

/* Tags an SQE with `op` so ktla_dispatch can route its completion. */
static inline void ktla_ring_tag(struct io_uring_sqe *sqe, struct ktla_op *op)
{
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op | 1);
}

uint64_t ktla_now_ns(void);

/* acceptor.c */
void ktla_acceptor_complete(struct ktla_op *op, struct io_uring_cqe *cqe);
void ktla_acceptor_log(struct ktla_acceptor *acc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* conn.c: the established connection. */
void ktla_conn_complete(struct ktla_op *op, struct io_uring_cqe *cqe);
/* Frees the connection when it is closing and nothing of it is in flight; true if freed. */
bool ktla_conn_reap(struct ktla_conn *c);
void ktla_conn_destroy(struct ktla_conn *c);

#endif
