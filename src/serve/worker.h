/* The worker threads of ktla-serve: what main.c sets up and hands to each of them. */
#ifndef KTLA_SERVE_WORKER_H
#define KTLA_SERVE_WORKER_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>

#include <ktla.h>

#include "metrics.h"
#include "serve.h"

#define WORKER_LISTEN_MAX 16 /* addresses (--listen) each worker accepts on */

/* What every worker reads and none writes, except the atomics. */
struct serve_config {
    int root_fd; /* DIR, O_PATH */
    struct ktla_ctx *ctx;
    enum ktla_ktls_policy ktls;
    enum ktla_file_path file_path;
    bool shared_openssl; /* every acceptor on OpenSSL's default library context */
    unsigned handshake_timeout_ms;
    unsigned idle_timeout_s;
    unsigned drain_timeout_s;
    unsigned max_conns; /* per worker */
    int log_fd;         /* -1: no access log */
    struct mime_table mime;
    atomic_int stop; /* 0: serve; 1: drain (SIGTERM/SIGINT); 2: close everything now */
};

struct sconn;

struct worker {
    const struct serve_config *cfg;
    atomic_int *stop;
    int index;
    /* One listening socket and one acceptor per address, all on the worker's ring. */
    int listen_fd[WORKER_LISTEN_MAX];
    unsigned nlisten;
    int wake_fd; /* eventfd: main.c rings it to make the worker look at `stop` */
    pthread_t thread;
    atomic_int exited;
    bool failed; /* the ring failed: the exit status says so */
    struct io_uring ring;
    struct ktla_acceptor *acc[WORKER_LISTEN_MAX];
    struct ktla_acceptor_stats stats; /* of every acceptor, kept when they go away */
    struct sconn *conns;              /* established connections */
    struct sconn *closing;            /* shutting down gracefully, until ktla says they are gone */
    struct h2conn *h2;                /* HTTP/2 connections (h2.c), until ktla says they are gone */
    unsigned dying;   /* closed, until ktla says nothing of them is in flight (their buffers) */
    unsigned acc_alive; /* acceptors freed whose last operations have not come back yet */
    unsigned nconns;
    bool draining;
    bool winding; /* after the last connection: nothing of ours is re-armed */
    bool ring_disabled; /* created disabled: worker_run enables it on the worker's thread */
    uint64_t drain_deadline_ns;
    /* This worker's own submissions on the shared ring: user_data is the address of one of
     * these (even, so bit 0 stays clear for ktla_dispatch). */
    struct own_op {
        int kind;
    } tick_op, wake_op, cancel_op;
    unsigned own_inflight;
    bool tick_armed, wake_armed;
    bool cached_lookups; /* openat2 RESOLVE_CACHED works here (files_can_resolve_cached) */
    uint64_t wake_val;
    struct __kernel_timespec tick_ts;
    uint64_t served;
    struct worker_metrics metrics; /* written by this worker only, read by --metrics */
    /* Receive buffers lent to connections while a request arrives; an idle connection holds
     * none (it waits with ktla_conn_recv_ready), so 10,000 idle ones cost no buffers. */
    void *in_pool;
    unsigned in_pooled;
    char logbuf[64 * 1024];
    size_t loglen;
    /* Scratch for the one request being answered: used only between a completion and the next
     * return to the ring, never by an operation in flight, so one set serves every connection. */
    struct files_scratch scratch;
    char head[2048];
};

/* A path that files_answer found cold (FILES_COLD), looked up by io_uring's openat2, where the
 * wait for the disk is the kernel's worker threads', not this thread's. done(owner, tag) runs
 * from the ring when the lookup is over (whatever it found: the answer is asked for again, now
 * from the cache). NULL when it could not be submitted: then answer the blocking way. */
struct warm;
struct warm *worker_warm(struct worker *w, const char *rel, void (*done)(void *owner, uint32_t tag),
                         void *owner, uint32_t tag);
/* The owner is gone: the lookup's completion only frees it. */
void worker_warm_forget(struct warm *wm);
/* How many lookups one answer may wait for (the file, index.html, each sibling) before the rest
 * is done the blocking way. */
#define WORKER_COLD_ROUNDS 4

/* A graceful end waits this long at most for the client's own close. */
#define WORKER_LINGER_MS 5000

/* For h2.c: the clock the timeouts use, and one access-log line (and --metrics' figures) for a
 * response; `end` says how it ended ("ok", "client-gone", "timeout", ...). */
uint64_t worker_now_ns(void);
void worker_log(struct worker *w, const struct ktla_conn_info *i, const struct http_request *q,
                int status, uint64_t head_bytes, uint64_t body_bytes, uint64_t start_ns,
                const char *end);

/* Makes the ring and an acceptor on each of w->listen_fd[0..nlisten); 0, or a ktla code with the
 * reason printed. With w->failed set as well, the worker was made in part (some acceptors): run it
 * down with worker_run, then worker_release it. */
int worker_init(struct worker *w);
/* Runs the worker on its own thread until it has drained. 0 or -errno. */
int worker_start(struct worker *w);
/* Runs the worker on the calling thread until it has drained. */
void worker_run(struct worker *w);
/* Makes the worker look at `stop` now. Async-signal-safe. */
void worker_wake(struct worker *w);
/* Waits for the thread, then worker_release. */
void worker_join(struct worker *w);
/* Frees what worker_init made (the listening sockets stay the caller's). */
void worker_release(struct worker *w);

#endif
