/*
 * ktla-serve's figures (--metrics): what each worker counts, and the thread that serves them as
 * Prometheus text on plain HTTP.
 *
 * Each worker owns one struct worker_metrics and is its only writer; the metrics thread only
 * reads. So a worker never waits for anything: its updates are relaxed atomic loads and stores
 * (no locked instruction, since nobody else writes), and a scrape sees each figure whole, though
 * not all of them at one instant.
 */
#ifndef KTLA_SERVE_METRICS_H
#define KTLA_SERVE_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Why a handshake failed or a direction fell back to userspace: every ktla code, the errno
 * values a handshake ends with in practice, and "other", so that the label set stays bounded
 * whatever a client does. */
#define METRICS_REASONS 40
/* Request durations: upper bounds in microseconds of each bucket but the last (+Inf). */
#define METRICS_BUCKETS 15
#define METRICS_STATUS_MIN 100
#define METRICS_STATUS_MAX 599

enum metrics_mode { MODE_KERNEL, MODE_USERSPACE, MODE_KERNEL_TX, MODE_KERNEL_RX, MODE_COUNT };

typedef _Atomic uint64_t metric_t;

struct worker_metrics {
    metric_t accepted;    /* TCP connections taken by the acceptors (published each turn) */
    metric_t established; /* handshakes done, handed to the server */
    metric_t closed;      /* established connections gone (open = established - closed) */
    metric_t resumed;     /* of the established: abbreviated handshakes (session tickets) */
    metric_t failed[METRICS_REASONS]; /* handshakes that failed, by reason */
    metric_t mode[MODE_COUNT];
    metric_t fallback[2][METRICS_REASONS]; /* [0]: transmit, [1]: receive */
    metric_t bytes;                        /* response heads and bodies sent */
    metric_t status[METRICS_STATUS_MAX - METRICS_STATUS_MIN + 1];
    metric_t duration_bucket[METRICS_BUCKETS + 1]; /* not cumulative: the scrape adds them up */
    metric_t duration_ns;
    metric_t cold_lookups; /* paths not in the dentry cache, looked up by io_uring (worker_warm) */
};

/* The one writer's update: a plain add, made visible to the reader whole. */
static inline void metric_add(metric_t *m, uint64_t n)
{
    atomic_store_explicit(m, atomic_load_explicit(m, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void metric_set(metric_t *m, uint64_t v)
{
    atomic_store_explicit(m, v, memory_order_relaxed);
}

static inline uint64_t metric_get(const metric_t *m)
{
    return atomic_load_explicit((metric_t *)m, memory_order_relaxed);
}

/* The slot of a ktla code or -errno in the reason tables (the last one: "other"). */
unsigned metrics_reason_index(int code);
/* Counts a response of this status that took duration_ns, with bytes sent in all. */
void metrics_response(struct worker_metrics *m, int status, uint64_t duration_ns, uint64_t bytes);

/*
 * Formats every worker's figures (metrics[i] is worker i's) in the Prometheus text exposition
 * format 0.0.4 into a buffer of *len bytes, malloc'ed: the caller frees it. NULL when out of
 * memory.
 */
char *metrics_format(struct worker_metrics *const *metrics, unsigned n, size_t *len);

#define METRICS_HEAD_MAX 4096 /* a request head longer than this gets 431 */
#define METRICS_CONNS_MAX 16  /* scrapers at once; beyond it, the listen backlog */
#define METRICS_TIMEOUT_S 5   /* from accept to the answer sent; then the connection closes */

struct metrics_server;

/* Starts the thread that answers GET /metrics on listen_fd (bound and listening; owned by the
 * thread from now on, even on failure). metrics[] must outlive metrics_stop. 0 and *out, or
 * -errno. */
int metrics_start(int listen_fd, struct worker_metrics *const *metrics, unsigned n,
                  struct metrics_server **out);
/* Stops the thread, closes its sockets, frees s. NULL: a no-op. */
void metrics_stop(struct metrics_server *s);

#endif
