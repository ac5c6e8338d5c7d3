/*
 * ktla-bench's pieces and what they share: the run's configuration (ktla-bench.c fills it from the
 * command line), the load generator's workers (loadgen.c), the server's CPU and memory as /proc
 * shows them (server.c), and the report (report.c).
 */
#ifndef BENCH_H
#define BENCH_H

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "hist.h"

enum bench_mode {
    MODE_HANDSHAKE, /* a new connection (full or resumed handshake) for each request */
    MODE_GET,       /* keep-alive requests on long-lived connections */
    MODE_DOWNLOAD,  /* the same, but for large bodies: bytes/s and CPU per MiB are the figures */
    MODE_IDLE, /* open N connections, one request each, then hold them: memory per connection */
};

/* Where the run is: workers count only what completes while MEASURE. */
enum bench_phase { PHASE_WARMUP, PHASE_MEASURE, PHASE_STOP };

struct bench_config {
    enum bench_mode mode;
    bool resume;    /* handshake mode: resume with the thread's latest ticket */
    char host[256]; /* as in the URL: a name, an IPv4 address, or [IPv6] (the Host header) */
    uint16_t port;
    struct sockaddr_storage addr; /* host resolved (getaddrinfo's first answer) */
    socklen_t addrlen;
    char path[512];
    unsigned threads;
    unsigned connections;    /* total, spread over the threads */
    unsigned max_connecting; /* idle mode: handshakes in flight at once, total */
    double duration_s;       /* measured window (idle mode: how long to hold the connections) */
    double warmup_s;
    uint64_t requests;   /* stop after this many measured requests (0: by duration) */
    double max_time_s;   /* hard cap on the measured window with --requests */
    unsigned timeout_ms; /* a connection making no progress this long is an error */
    int tls_version;     /* 0 (any), TLS1_2_VERSION or TLS1_3_VERSION */
    const char *ciphers; /* TLS 1.3 suites or TLS 1.2 cipher list, NULL: OpenSSL's */
    const char *groups;
    const char *sni;
    unsigned echo_bytes;  /* not HTTP: send this many bytes, expect them back (ktla-echo) */
    int server_pid;       /* 0: none */
    const char *json_out; /* "-" stdout, NULL: none */
    const char *csv_out;
    const char *label;
    bool quiet; /* no progress line */
};

/*
 * The client SSL_CTX for `cfg`, made in library context `lib` (NULL: OpenSSL's default); NULL,
 * said on stderr, if OpenSSL refuses the settings. Each load thread has a library context and an
 * SSL_CTX of its own: OpenSSL 3.0 makes threads that share one take the same locks hundreds of
 * times per handshake, and the load generator must not be what limits a many-core server.
 */
SSL_CTX *bench_client_ctx(const struct bench_config *cfg, OSSL_LIB_CTX *lib);

/* What went wrong, counted by kind; each is one failed connection or request. */
enum bench_err {
    ERR_CONNECT, /* connect() failed (refused, ports exhausted, ...) */
    ERR_TLS,     /* the handshake or a record failed */
    ERR_HTTP,    /* a status other than 200, or a response that cannot be parsed */
    ERR_CLOSED,  /* the server closed a connection before the response was complete */
    ERR_TIMEOUT, /* no progress for timeout_ms */
    ERR_IO,      /* a socket read or write failed (reset, ...) */
    ERR_KINDS
};

/* One worker's counts, merged into the run's at the end. Only the MEASURE phase counts. */
struct bench_counts {
    uint64_t requests;   /* complete responses */
    uint64_t handshakes; /* completed handshakes */
    uint64_t resumed;    /* of which resumed from a ticket */
    uint64_t bytes;      /* response bytes received (headers and body, plaintext) */
    uint64_t errors[ERR_KINDS];
    struct hist latency; /* ns: request to complete response; connect to response per connection */
};

/* Shared between the main thread and the workers. */
struct bench_shared {
    const struct bench_config *cfg;
    _Atomic int phase;
    _Atomic uint64_t measured_requests; /* for --requests */
    _Atomic uint64_t
        progress_requests; /* every response, warm-up included, for the progress line */
    _Atomic uint64_t progress_errors;
    _Atomic unsigned established; /* idle mode: connections done with their request */
    _Atomic int first_error_logged;
    const char *version_seen; /* negotiated, from the first handshake (static strings) */
    const char *cipher_seen;
    const char *group_seen;
};

struct worker;

/* Sets up the shared client SSL_CTX for the workers: new session tickets go to their thread. */
void loadgen_setup_ctx(SSL_CTX *ctx);

/* Starts a worker thread driving `nconns` connections on its own io_uring. 0 or -errno. */
int worker_start(struct bench_shared *sh, unsigned id, unsigned nconns, unsigned max_connecting,
                 struct worker **out);

/* Waits for the worker to finish (it stops at PHASE_STOP), adds its counts into `total` and frees
 * it. */
void worker_join(struct worker *w, struct bench_counts *total);

/* The server's resources, summed over the process and its children (nginx's master and workers). */
struct server_sample {
    bool ok;
    uint64_t cpu_ticks; /* utime + stime, clock ticks */
    uint64_t user_ticks, sys_ticks; /* the two apart: user and kernel time */
    uint64_t rss_kib;   /* VmRSS */
};

/* Reads /proc/PID/stat and /proc/PID/status of `pid` and its child processes. */
struct server_sample server_sample(int pid);

struct bench_result {
    double seconds; /* measured window */
    struct bench_counts counts;
    bool have_server;
    double server_cpu_s, server_user_s, server_sys_s;
    bool have_rss;
    double rss_before_kib, rss_after_kib;
    unsigned established; /* idle mode */
    /* Idle mode: RSS once a fifth of the connections were established, and how many there were
     * then. Growth from there to the end is the cost of each further connection, without the
     * server's fixed costs (start-up, the working set of the handshakes in flight). */
    double rss_mark_kib;
    unsigned established_mark;
};

/* Prints the readable table (to `out`) and writes the JSON and CSV files the config asks for.
 * 0, or -1 when a file cannot be written (said on stderr). */
int report(const struct bench_config *cfg, const struct bench_shared *sh,
           const struct bench_result *r, FILE *out);

const char *mode_name(const struct bench_config *cfg);
const char *err_name(enum bench_err e);

#endif
