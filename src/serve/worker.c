/*
 * One worker: its own io_uring, its own listening socket per address (SO_REUSEPORT spreads
 * connections over the workers) and its own ktla acceptor for each on that ring, so nothing on
 * the request path is shared between threads but the TLS context, which ktla makes thread-safe.
 * ktla's completions and this file's own (a one-second tick for timeouts, an eventfd for signals)
 * come out of the same ring and are told apart by ktla_dispatch.
 *
 * A connection goes READ (request head into `in`, through http_reader) -> WRITE (head with
 * ktla_conn_send, body in slices with ktla_conn_sendfile) -> READ again for the next request,
 * pipelined bytes first. A connection ends gracefully (ktla_conn_shutdown: close_notify, FIN,
 * then the client's remaining input read and dropped until it closes too, for at most LINGER_MS)
 * whenever the client may still be reading what we sent, so that closing never resets a
 * connection whose answer is still on its way; abortively (ktla_conn_close) only on errors and
 * for clients that stopped reading. A connection being shut down still counts against
 * --max-connections until ktla says it is gone.
 *
 * Memory: an idle keep-alive connection is one small block (struct sconn, with a receive buffer
 * inside it), since most servers' connections are idle most of the time. The reader and its
 * strings exist from a request's first byte until its response is out; the response head from
 * formatting until its send completes; what is needed only while one request is answered
 * (paths, the Location, the head being formatted) is the worker's scratch. http_reader copies
 * what it keeps, so the receive buffer never has to hold a whole head: it grows only to take a
 * long head in fewer receives, and shrinks when the connection goes idle.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "h2.h"
#include "worker.h"

#define BODY_SLICE (1u << 20) /* sendfile per call: progress for the idle timeout, fairness */
#define LINGER_MS WORKER_LINGER_MS
#define NS 1000000000ull

enum { OWN_TICK = 1, OWN_WAKE, OWN_CANCEL, OWN_WARM };

enum sconn_state { S_READ, S_WRITE };

/* Receive buffers are lent to a connection only while a request arrives. 1 KiB holds the heads
 * of curl, wget and load generators; a browser's takes a second receive into a grown buffer. */
#define IN_BUF 1024      /* a lent receive buffer: most request heads fit it */
#define IN_POOL_MAX 1024 /* free buffers a worker keeps for the next ones */
#define SCONN_BYTES 184

struct sconn {
    struct worker *w;
    struct ktla_conn *kc;
    struct sconn *prev, *next;
    struct http_reader *rd; /* the request being read or answered; NULL while idle */
    char *in;               /* NULL while idle with nothing buffered; IN_BUF from the worker's
                               pool, or bigger on the heap while a long head arrives */
    char *out;              /* the response head while its send is in flight, else NULL */
    enum sconn_state state;
    bool recv_pending, send_pending; /* an operation in flight that uses our buffers */
    bool ready_pending;              /* waiting for input, holding no buffer */
    bool trimmed;                    /* ...and ktla's userspace buffers given back */
    bool close_after, head_only;
    bool fresh; /* no request answered yet: the drain lets it send its first */
    int file_fd;
    int status;
    unsigned in_len, in_off, in_cap; /* at most HTTP_HEAD_MAX */
    unsigned inline_body;            /* an error's text, sent with the head */
    unsigned out_len;
    uint64_t active_ns, req_start_ns;
    uint64_t body_off, body_left, body_sent;
    uint64_t sent_base; /* ktla's bytes_sent when this response began */
    unsigned head_len;
    uint64_t seen_sent; /* ktla's bytes_sent at the last tick: a body slice still moving */
    struct warm *warm;  /* a cold path being looked up for this request (worker_warm) */
    uint8_t cold_rounds;
};

_Static_assert(sizeof(struct sconn) <= SCONN_BYTES, "an idle connection fits one 192-byte chunk");

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static struct io_uring_sqe *own_sqe(struct worker *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (!sqe && io_uring_submit(&w->ring) >= 0)
        sqe = io_uring_get_sqe(&w->ring);
    return sqe;
}

static void arm_tick(struct worker *w)
{
    struct io_uring_sqe *sqe = own_sqe(w);
    if (!sqe)
        return; /* the next completion batch tries again (see worker_run) */
    io_uring_prep_timeout(sqe, &w->tick_ts, 0, 0);
    io_uring_sqe_set_data(sqe, &w->tick_op);
    w->tick_armed = true;
    w->own_inflight++;
}

static void arm_wake(struct worker *w)
{
    struct io_uring_sqe *sqe = own_sqe(w);
    if (!sqe)
        return;
    io_uring_prep_read(sqe, w->wake_fd, &w->wake_val, sizeof(w->wake_val), 0);
    io_uring_sqe_set_data(sqe, &w->wake_op);
    w->wake_armed = true;
    w->own_inflight++;
}

/* ---- the access log: one buffer per worker, written with one write(2) per completion batch
 * to an O_APPEND file, so workers never wait for each other. */

static void log_flush(struct worker *w)
{
    size_t off = 0;
    while (off < w->loglen) {
        ssize_t n = write(w->cfg->log_fd, w->logbuf + off, w->loglen - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* a full disk loses log lines, never requests */
        off += (size_t)n;
    }
    w->loglen = 0;
}

static const char *mode_name(const struct ktla_conn_info *i)
{
    if (i->tx_mode == KTLA_MODE_KERNEL && i->rx_mode == KTLA_MODE_KERNEL)
        return "kernel";
    if (i->tx_mode == KTLA_MODE_USERSPACE && i->rx_mode == KTLA_MODE_USERSPACE)
        return "userspace";
    return i->tx_mode == KTLA_MODE_KERNEL ? "kernel-tx" : "kernel-rx";
}

uint64_t worker_now_ns(void)
{
    return now_ns();
}

void worker_log(struct worker *w, const struct ktla_conn_info *i, const struct http_request *q,
                int status, uint64_t head_bytes, uint64_t body_bytes, uint64_t start_ns,
                const char *end)
{
    uint64_t duration_ns = now_ns() - start_ns;
    w->served++;
    metrics_response(&w->metrics, status, duration_ns, head_bytes + body_bytes);
    if (w->cfg->log_fd < 0)
        return;
    struct log_entry e = {
        .peer = i->peer,
        .when = time(NULL),
        .method = q->known_method ? http_method_str(q->method) : NULL,
        .target = q->target,
        .target_len = q->target_len,
        .major = q->major,
        .minor = q->minor,
        .status = status,
        .body_bytes = body_bytes,
        .total_bytes = head_bytes + body_bytes,
        .tls_version = i->version == KTLA_TLS1_3 ? "TLSv1.3" : "TLSv1.2",
        .cipher = i->cipher_name,
        .mode = mode_name(i),
        .duration_ns = duration_ns,
        .end = end,
    };
    if (sizeof(w->logbuf) - w->loglen < 1024)
        log_flush(w);
    w->loglen += log_format(w->logbuf + w->loglen, sizeof(w->logbuf) - w->loglen, &e);
}

/* One line per response that was begun: `end` says how it ended ("ok": handed to the socket
 * whole). */
static void log_request(struct sconn *c, const char *end)
{
    worker_log(c->w, ktla_conn_get_info(c->kc), &c->rd->req, c->status, c->head_len,
               c->body_sent, c->req_start_ns, end);
}

/* ---- connection lifetime */

/* A receive buffer of IN_BUF bytes, from the pool when it has one. */
static char *in_get(struct worker *w)
{
    void *b = w->in_pool;
    if (!b)
        return malloc(IN_BUF);
    memcpy(&w->in_pool, b, sizeof(void *));
    w->in_pooled--;
    return b;
}

/* Gives a connection's buffer back: an IN_BUF one to the pool (up to its limit), others freed. */
static void in_put(struct sconn *c)
{
    struct worker *w = c->w;
    if (c->in && c->in_cap == IN_BUF && w->in_pooled < IN_POOL_MAX) {
        memcpy(c->in, &w->in_pool, sizeof(void *));
        w->in_pool = c->in;
        w->in_pooled++;
    } else {
        free(c->in);
    }
    c->in = NULL;
    c->in_cap = c->in_len = c->in_off = 0;
}

/* What may still be in use by an operation in flight goes with the connection itself. */
static void sconn_free(struct sconn *c)
{
    in_put(c);
    free(c->out);
    http_reader_free(c->rd);
    free(c);
}

/* Back to a pool buffer once what is buffered fits one, or to none when nothing is buffered.
 * Only while no receive is in flight. */
static void shrink_in(struct sconn *c)
{
    if (!c->in || c->in_len > IN_BUF || (c->in_cap == IN_BUF && c->in_len))
        return;
    if (!c->in_len)
        return in_put(c);
    char *in = in_get(c->w);
    if (!in)
        return; /* keeps the big one: it works */
    memcpy(in, c->in, c->in_len);
    free(c->in);
    c->in = in;
    c->in_cap = IN_BUF;
}

/* After a receive filled the buffer and the head goes on: a bigger one, so that a long head
 * takes fewer receives. Keeps what is buffered; on failure the buffer stays as it is (which
 * works, only in more receives). Only while no receive is in flight. */
static void grow_in(struct sconn *c)
{
    size_t cap = http_inbuf_grow(c->in_cap);
    if (cap == c->in_cap)
        return;
    char *in = malloc(cap);
    if (!in)
        return;
    memcpy(in, c->in, c->in_len);
    unsigned len = c->in_len;
    in_put(c);
    c->in = in;
    c->in_len = len;
    c->in_cap = (unsigned)cap;
}

/* Off the worker's list of connections that read and answer requests. */
static void conn_unlink(struct sconn *c)
{
    struct worker *w = c->w;

    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->file_fd >= 0)
        close(c->file_fd);
    c->file_fd = -1;
}

/* What went out of a response cut short: ktla counts what left, whatever the slice. */
static void log_cut(struct sconn *c, const char *why)
{
    if (c->state != S_WRITE || !c->rd)
        return;
    uint64_t total = ktla_conn_get_info(c->kc)->bytes_sent - c->sent_base;
    uint64_t head = c->head_len ? c->head_len : c->out_len - c->inline_body;
    if (head > total)
        head = total;
    c->head_len = (unsigned)head;
    c->body_sent = total - head;
    log_request(c, why);
}

/* The abortive end: errors, clients that stopped reading, the drain's deadline. `why` is the
 * access log's word for a response this cuts short. */
/* A receive or send that was in flight may use the connection's buffers until ktla says
 * nothing of it is left (at once on Linux 6.0+, after the completions on older kernels). */
static void on_gone(struct ktla_conn *kc, int result, void *arg)
{
    struct sconn *c = arg;
    (void)kc;
    (void)result;
    c->w->dying--;
    sconn_free(c);
}

static void conn_abort(struct sconn *c)
{
    c->w->dying++;
    ktla_conn_close_then(c->kc, on_gone, c);
}

static void conn_close(struct sconn *c, const char *why)
{
    struct worker *w = c->w;

    worker_warm_forget(c->warm);
    c->warm = NULL;
    log_cut(c, why);
    conn_unlink(c);
    w->nconns--;
    metric_add(&w->metrics.closed, 1);
    http_reader_free(c->rd);
    c->rd = NULL;
    conn_abort(c);
}

static void on_closed(struct ktla_conn *kc, int result, void *arg)
{
    struct sconn *c = arg;
    struct worker *w = c->w;
    (void)kc;
    (void)result;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->closing = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    metric_add(&w->metrics.closed, 1);
    sconn_free(c);
}

/* The graceful end (see the top of this file). Only when no send of ours is in flight; a
 * receive in flight is cancelled by ktla, and its buffer free once on_closed runs. */
static void conn_end(struct sconn *c)
{
    struct worker *w = c->w;

    worker_warm_forget(c->warm);
    c->warm = NULL;
    if (ktla_conn_shutdown(c->kc, LINGER_MS, on_closed, c) < 0)
        return conn_close(c, "error");
    conn_unlink(c);
    http_reader_free(c->rd);
    c->rd = NULL;
    c->recv_pending = c->ready_pending = false;
    c->next = w->closing;
    if (w->closing)
        w->closing->prev = c;
    w->closing = c;
}

static void read_next(struct sconn *c);
static void on_recv(struct ktla_conn *kc, ssize_t n, void *arg);

static void on_ready(struct ktla_conn *kc, ssize_t n, void *arg);

/* The next receive: into the buffer when something is buffered, else first a wait that holds
 * no buffer (an idle keep-alive connection), and a buffer only once input is there. */
static void post_recv(struct sconn *c)
{
    int ret;
    if (!c->in) {
        ret = ktla_conn_recv_ready(c->kc, on_ready, c);
        if (ret < 0)
            return conn_close(c, "error");
        c->ready_pending = true;
        c->trimmed = false; /* trimmed at the next tick if still idle then */
        return;
    }
    ret = ktla_conn_recv(c->kc, c->in + c->in_len, c->in_cap - c->in_len, on_recv, c);
    if (ret < 0)
        return conn_close(c, "error");
    c->recv_pending = true;
}

/* How a receive ended, for the operator when it is not an ordinary end: 0 is close_notify; a
 * reset or a close without close_notify is how many clients end a connection. Anything else
 * (a KeyUpdate this kernel cannot follow, a KeyUpdate storm, a record that fails
 * authentication...) is worth a line. */
static void report_end(struct ktla_conn *kc, ssize_t n)
{
    if (n < 0 && n != KTLA_ETRUNCATED && n != KTLA_EALERT && n != -ECONNRESET && n != -EPIPE)
        fprintf(stderr, "ktla-serve: %s: connection ended: %s (%s)\n",
                ktla_conn_get_info(kc)->peer, ktla_strerror((int)n), ktla_err_name((int)n));
}

static void on_ready(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct sconn *c = arg;
    c->ready_pending = false;
    report_end(kc, n);
    if (n < 0)
        return conn_close(c, "error");
    if (!(c->in = in_get(c->w)))
        return conn_close(c, "error");
    c->in_cap = IN_BUF;
    c->in_len = c->in_off = 0;
    post_recv(c);
}

/* The word for the access log when a send failed. */
static const char *send_failure(ssize_t n)
{
    if (n == -EPIPE || n == -ECONNRESET || n == KTLA_ETRUNCATED)
        return "client-gone";
    return n == -ENODATA ? "file-error" : "error";
}

static void finish_response(struct sconn *c)
{
    log_request(c, "ok");
    http_reader_free(c->rd);
    c->rd = NULL;
    if (c->file_fd >= 0)
        close(c->file_fd);
    c->file_fd = -1;
    if (c->w->draining)
        c->close_after = true;
    if (!c->close_after)
        return read_next(c);
    /* Unread input (a body we refused, a head we could not read whole) is dropped by the
     * graceful end too, so the client sees this answer rather than a reset. */
    conn_end(c);
}

static void on_body_sent(struct ktla_conn *kc, ssize_t n, void *arg);

static void send_body_slice(struct sconn *c)
{
    size_t count = c->body_left > BODY_SLICE ? BODY_SLICE : (size_t)c->body_left;
    int ret = ktla_conn_sendfile(c->kc, c->file_fd, c->body_off, count, on_body_sent, c);
    if (ret < 0)
        return conn_close(c, "error");
    c->send_pending = true;
}

static void on_body_sent(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct sconn *c = arg;
    (void)kc;
    c->send_pending = false;
    if (n <= 0) /* the client went away, or the file shrank under us */
        return conn_close(c, send_failure(n));
    c->active_ns = now_ns();
    c->body_off += (uint64_t)n;
    c->body_left -= (uint64_t)n;
    c->body_sent += (uint64_t)n;
    if (c->body_left)
        return send_body_slice(c);
    finish_response(c);
}

static void on_head_sent(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct sconn *c = arg;
    (void)kc;
    c->send_pending = false;
    free(c->out);
    c->out = NULL;
    if (n < 0)
        return conn_close(c, send_failure(n));
    c->active_ns = now_ns();
    c->head_len = (unsigned)((size_t)n - c->inline_body);
    c->body_sent = c->inline_body;
    if (c->body_left && !c->head_only)
        return send_body_slice(c);
    finish_response(c);
}

/* The head and the body's first slice went out together (ktla_conn_sendfile_head). */
static void on_head_body_sent(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct sconn *c = arg;
    (void)kc;
    c->send_pending = false;
    unsigned out_len = c->out_len;
    free(c->out);
    c->out = NULL;
    if (n < (ssize_t)out_len)
        return conn_close(c, send_failure(n < 0 ? n : -EPIPE));
    c->active_ns = now_ns();
    c->head_len = out_len;
    uint64_t body = (uint64_t)n - out_len;
    c->body_off += body;
    c->body_left -= body;
    c->body_sent = body;
    if (c->body_left)
        return send_body_slice(c);
    finish_response(c);
}

/* ---- answering one request */

static void respond(struct sconn *c);

static void on_warm(void *owner, uint32_t tag)
{
    struct sconn *c = owner;
    (void)tag;
    c->warm = NULL;
    respond(c);
}

static void respond(struct sconn *c)
{
    struct worker *w = c->w;
    const struct http_request *q = &c->rd->req;
    struct http_response resp = {.now = time(NULL)};
    struct files_body fb;

    c->fresh = false;
    c->state = S_WRITE;
    c->body_sent = c->head_len = 0;
    c->out_len = c->inline_body = 0;
    c->sent_base = ktla_conn_get_info(c->kc)->bytes_sent;
    /* A lookup that would wait for the disk is done by io_uring instead, and the answer asked
     * for again once it is over: a cold directory holds this request, not the worker. */
    w->scratch.cached_only = w->cached_lookups && c->cold_rounds < WORKER_COLD_ROUNDS;
    int status = files_answer(w->cfg->root_fd, &w->cfg->mime, q, &w->scratch, &resp, &fb);
    if (status == FILES_COLD) {
        c->cold_rounds++;
        if ((c->warm = worker_warm(w, w->scratch.cold, on_warm, c, 0)))
            return;
        w->scratch.cached_only = false;
        status = files_answer(w->cfg->root_fd, &w->cfg->mime, q, &w->scratch, &resp, &fb);
    }
    c->cold_rounds = 0;
    c->file_fd = fb.fd;
    c->body_off = fb.off;
    c->body_left = fb.len;
    c->status = status;
    c->head_only = q->method == HTTP_HEAD && !q->status;

    /* After an error, or a body left unread, the next request's start is unknown: answer, then
     * close (gracefully: what is still coming is dropped meanwhile). */
    c->close_after = q->status != 0 || q->has_body || !q->keep_alive || c->w->draining;
    resp.status = status;
    resp.connection = c->close_after ? -1 : q->minor == 0 ? 1 : 0;

    char body[128];
    size_t body_len = 0;
    if (status >= 300 && status != 304) {
        body_len = (size_t)snprintf(body, sizeof(body), "%d %s\n", status, http_reason(status));
        resp.content_type = "text/plain; charset=utf-8";
        resp.has_length = true;
        resp.content_length = body_len;
        if (c->head_only)
            body_len = 0;
    }
    /* Formatted in scratch, sent from a copy of its own size: the send outlives this call. */
    char *head = c->w->head;
    int n = http_format_head(head, sizeof(c->w->head) - sizeof(body), &resp);
    if (n < 0)
        return conn_close(c, "error");
    memcpy(head + n, body, body_len);
    c->inline_body = (unsigned)body_len;
    c->out_len = (unsigned)n + (unsigned)body_len;
    c->out = malloc(c->out_len);
    if (!c->out)
        return conn_close(c, "error");
    memcpy(c->out, head, c->out_len);
    int ret;
    if (c->body_left && !c->head_only && c->out_len <= KTLA_SENDFILE_HEAD_MAX) {
        /* Head and body in one stream: a small response is one TLS record, not two. */
        size_t count = c->body_left > BODY_SLICE ? BODY_SLICE : (size_t)c->body_left;
        ret = ktla_conn_sendfile_head(c->kc, c->out, c->out_len, c->file_fd, c->body_off, count,
                                      on_head_body_sent, c);
    } else {
        ret = ktla_conn_send(c->kc, c->out, c->out_len, on_head_sent, c);
    }
    if (ret < 0) {
        free(c->out);
        c->out = NULL;
        return conn_close(c, "error");
    }
    c->send_pending = true;
}

/* Parses what is buffered; answers a complete request or asks for more. `filled`: the last
 * receive took all the room there was. */
static void process_input(struct sconn *c, bool filled)
{
    if (!c->rd && !(c->rd = http_reader_new()))
        return conn_close(c, "error");
    size_t n = http_reader_feed(c->rd, c->in + c->in_off, c->in_len - c->in_off);
    c->in_off += (unsigned)n;
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    if (c->rd->done)
        return respond(c);
    if (c->w->draining && c->rd->head_bytes == 0 && !c->fresh)
        return conn_end(c);
    if (filled)
        grow_in(c);
    post_recv(c);
}

static void read_next(struct sconn *c)
{
    c->state = S_READ;
    c->req_start_ns = 0;
    /* Pipelined requests wait in the buffer: move them to its start. */
    if (c->in_off) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    shrink_in(c);
    if (c->in_len) {
        c->req_start_ns = now_ns();
        return process_input(c, false);
    }
    if (c->w->draining && !c->fresh)
        return conn_end(c);
    post_recv(c);
}

static void on_recv(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct sconn *c = arg;
    c->recv_pending = false;
    report_end(kc, n);
    /* The client's close_notify, or its FIN: it sends no more, and we answer in kind. */
    if (n == 0 || n == KTLA_ETRUNCATED)
        return conn_end(c);
    if (n < 0)
        return conn_close(c, "error");
    c->active_ns = now_ns();
    if (!c->req_start_ns)
        c->req_start_ns = c->active_ns;
    c->in_len += (unsigned)n;
    process_input(c, c->in_len == c->in_cap);
}

/* What --metrics says of each established connection: resumed or not, and who carries TLS. */
static void count_conn(struct worker *w, const struct ktla_conn_info *i)
{
    struct worker_metrics *m = &w->metrics;
    bool tx = i->tx_mode == KTLA_MODE_KERNEL, rx = i->rx_mode == KTLA_MODE_KERNEL;
    metric_add(&m->established, 1);
    if (i->resumed)
        metric_add(&m->resumed, 1);
    metric_add(&m->mode[tx && rx ? MODE_KERNEL : tx ? MODE_KERNEL_TX : rx ? MODE_KERNEL_RX
                                                                        : MODE_USERSPACE],
               1);
    if (!tx)
        metric_add(&m->fallback[0][metrics_reason_index(i->tx_reason)], 1);
    if (!rx)
        metric_add(&m->fallback[1][metrics_reason_index(i->rx_reason)], 1);
}

static void on_conn(struct ktla_conn *kc, void *arg)
{
    struct worker *w = arg;
    struct sconn *c = malloc(sizeof(*c));

    count_conn(w, ktla_conn_get_info(kc));
    const char *alpn = ktla_conn_get_info(kc)->alpn;
    if (alpn && strcmp(alpn, "h2") == 0) {
        free(c);
        if (h2_start(w, kc, w->nconns >= w->cfg->max_conns) < 0) {
            ktla_conn_close(kc);
            metric_add(&w->metrics.closed, 1);
        }
        return;
    }
    if (!c) {
        ktla_conn_close(kc);
        metric_add(&w->metrics.closed, 1);
        return;
    }
    c->w = w;
    c->kc = kc;
    c->prev = NULL;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    c->recv_pending = c->send_pending = c->ready_pending = false;
    c->state = S_READ;
    c->req_start_ns = 0;
    c->file_fd = -1;
    c->rd = NULL;
    c->out = NULL;
    c->in = NULL;
    c->in_cap = 0;
    c->in_len = c->in_off = 0;
    c->seen_sent = 0;
    c->warm = NULL;
    c->cold_rounds = 0;
    c->fresh = true;
    c->active_ns = now_ns();
    if (w->nconns > w->cfg->max_conns) {
        /* Over the limit: a short answer rather than a silent reset. */
        if (!(c->rd = http_reader_new()))
            return conn_close(c, "error");
        c->rd->done = true;
        c->rd->req.status = 503;
        c->req_start_ns = c->active_ns;
        return respond(c);
    }
    read_next(c);
}

static void on_fail(const char *peer, int code, const char *detail, void *arg)
{
    struct worker *w = arg;
    if (code == KTLA_ECLOSED)
        return; /* our own shutdown */
    metric_add(&w->metrics.failed[metrics_reason_index(code)], 1);
    fprintf(stderr, "ktla-serve: %s: handshake failed: %s%s%s\n", peer, ktla_strerror(code),
            detail && *detail ? ": " : "", detail ? detail : "");
}

/* ---- the worker's own events */

/* The acceptors' figures, summed into w->stats, and the accepted count for --metrics: after
 * each turn, so that a scrape is at most one turn behind. Once the acceptors are gone w->stats
 * keeps their last figures. */
static void publish_stats(struct worker *w)
{
    struct ktla_acceptor_stats sum = {0}, one;
    bool any = false;
    for (unsigned i = 0; i < w->nlisten; i++) {
        if (!w->acc[i])
            continue;
        ktla_acceptor_get_stats(w->acc[i], &one);
        sum.accepted += one.accepted;
        sum.handshakes_done += one.handshakes_done;
        sum.handshakes_failed += one.handshakes_failed;
        sum.timeouts += one.timeouts;
        sum.ktls_both += one.ktls_both;
        sum.ktls_fallbacks += one.ktls_fallbacks;
        sum.early_data_bytes += one.early_data_bytes;
        sum.in_flight += one.in_flight;
        any = true;
    }
    if (!any)
        return;
    w->stats = sum;
    metric_set(&w->metrics.accepted, sum.accepted);
}

/* The acceptors go, their figures kept in w->stats; handshakes still in flight are aborted. */
static void on_acceptor_gone(void *arg)
{
    struct worker *w = arg;
    w->acc_alive--;
}

static void free_acceptors(struct worker *w)
{
    publish_stats(w);
    for (unsigned i = 0; i < w->nlisten; i++) {
        if (!w->acc[i])
            continue;
        w->acc_alive++;
        ktla_acceptor_free_then(w->acc[i], on_acceptor_gone, w);
        w->acc[i] = NULL;
    }
    w->stats.in_flight = 0;
}

static void begin_drain(struct worker *w)
{
    w->draining = true;
    w->drain_deadline_ns = now_ns() + (uint64_t)w->cfg->drain_timeout_s * NS;
    publish_stats(w);
    for (unsigned i = 0; i < w->nlisten; i++) {
        /* No more accepts; handshakes in flight finish (a client that connected a moment ago
         * gets its answer, with Connection: close), then the acceptor goes (worker_run). */
        if (w->acc[i])
            ktla_acceptor_stop(w->acc[i]);
        /* Every listening socket goes now, not at exit: clients then find the port closed (or a
         * server that took it over: --takeover) instead of connecting to a server that will
         * never accept them. A socket from systemd is a copy: systemd's own stays open. */
        if (w->listen_fd[i] >= 0) {
            close(w->listen_fd[i]);
            w->listen_fd[i] = -1;
        }
    }
    h2_drain(w);
    /* Idle keep-alive connections go now; the others once their response is out. A connection
     * that has not sent its first request yet was just opened to send one: it may, and gets
     * its answer with Connection: close (or the drain's deadline). */
    for (struct sconn *c = w->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == S_READ && !c->fresh && (!c->rd || c->rd->head_bytes == 0) &&
            c->in_len == 0)
            conn_end(c);
        else
            c->close_after = true;
    }
}

static void tick(struct worker *w)
{
    uint64_t now = now_ns(), idle = (uint64_t)w->cfg->idle_timeout_s * NS;

    if (w->draining && now >= w->drain_deadline_ns)
        free_acceptors(w); /* handshakes still in flight at the drain's deadline are cut */

    for (struct sconn *c = w->conns, *next; c; c = next) {
        next = c->next;
        /* A body slice (1 MiB) to a slow reader can take longer than the idle timeout: each
         * byte the socket took since the last tick is progress too, as nginx's send_timeout
         * counts between two writes, not two responses. */
        if (c->ready_pending && !c->trimmed) {
            ktla_conn_trim(c->kc); /* idle: its TLS buffers go, not after every request */
            c->trimmed = true;
        }
        uint64_t sent = ktla_conn_get_info(c->kc)->bytes_sent;
        if (sent != c->seen_sent) {
            c->seen_sent = sent; /* kept current between responses too */
            if (c->send_pending)
                c->active_ns = now;
        }
        /* A request head must arrive whole within the idle timeout of its first byte, or a
         * byte every few seconds would hold a connection for ever (HTTP slowloris). */
        bool expired = now - c->active_ns >= idle ||
                       (c->state == S_READ && c->req_start_ns && now - c->req_start_ns >= idle);
        if (w->draining && now >= w->drain_deadline_ns)
            conn_close(c, "shutdown");
        else if (expired && c->state == S_WRITE)
            conn_close(c, "timeout"); /* it stopped reading: nothing graceful would get out */
        else if (expired)
            conn_end(c);
    }
    h2_tick(w, now);
}

struct warm {
    struct own_op op; /* first: its address is the user_data */
    void (*done)(void *owner, uint32_t tag);
    void *owner; /* NULL once forgotten */
    uint32_t tag;
    struct open_how how;
};

struct warm *worker_warm(struct worker *w, const char *rel, void (*done)(void *owner, uint32_t tag),
                         void *owner, uint32_t tag)
{
    struct warm *wm = malloc(sizeof(*wm));
    if (!wm)
        return NULL;
    struct io_uring_sqe *sqe = own_sqe(w);
    if (!sqe) {
        free(wm);
        return NULL;
    }
    *wm = (struct warm){.op.kind = OWN_WARM, .done = done, .owner = owner, .tag = tag};
    /* The same lookup as files_answer's, beneath DIR; only its side effect counts (the dentries
     * and directory blocks it brings into memory). O_PATH: no FIFO waits, nothing is read. */
    wm->how = (struct open_how){.flags = O_PATH | O_CLOEXEC,
                                .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
    io_uring_prep_openat2(sqe, w->cfg->root_fd, rel, &wm->how);
    io_uring_sqe_set_data(sqe, &wm->op);
    w->own_inflight++;
    /* Submitted now: the kernel copies the path and `how` at submission, so the caller's
     * scratch may change as soon as this returns. */
    io_uring_submit(&w->ring);
    metric_add(&w->metrics.cold_lookups, 1);
    return wm;
}

void worker_warm_forget(struct warm *wm)
{
    if (wm)
        wm->owner = NULL;
}

static void own_complete(struct worker *w, struct io_uring_cqe *cqe)
{
    struct own_op *op = io_uring_cqe_get_data(cqe);

    w->own_inflight--;
    if (op->kind == OWN_WARM) {
        struct warm *wm = (struct warm *)op;
        if (cqe->res >= 0)
            close(cqe->res);
        if (wm->owner)
            wm->done(wm->owner, wm->tag);
        free(wm);
        return;
    }
    if (op == &w->tick_op) {
        w->tick_armed = false;
        tick(w);
        if (!w->winding)
            arm_tick(w);
    } else if (op == &w->wake_op) {
        w->wake_armed = false;
        if (cqe->res > 0 && !w->winding)
            arm_wake(w);
    }
}

static void handle_completions(struct worker *w)
{
    struct io_uring_cqe *cqe;
    uint64_t mark = 0;
    /* This turn's completions only: what ktla_submit_if_late's submissions complete meanwhile
     * waits for the next turn, so a storm's accepts cannot keep one turn going (and the stop
     * flag, the tick and the log unlooked at). */
    for (unsigned n = io_uring_cq_ready(&w->ring); n && io_uring_peek_cqe(&w->ring, &cqe) == 0;
         n--) {
        /* Seen before it is handled: a callback may submit and reap on this ring. */
        struct io_uring_cqe copy = *cqe;
        io_uring_cqe_seen(&w->ring, cqe);
        if (!ktla_dispatch(&copy))
            own_complete(w, &copy);
        ktla_submit_if_late(&w->ring, &mark); /* a long turn does not hold early answers */
    }
}

static void look_at_stop(struct worker *w)
{
    int stop = atomic_load(w->stop);
    if (stop && !w->draining)
        begin_drain(w);
    if (stop >= 2 && w->draining) {
        w->drain_deadline_ns = 0;
        free_acceptors(w);
        for (struct sconn *c = w->conns, *next; c; c = next) {
            next = c->next;
            conn_close(c, "shutdown");
        }
        h2_abort_all(w);
        /* Graceful ends still lingering are cut too. */
        while (w->closing) {
            struct sconn *c = w->closing;
            w->closing = c->next;
            w->nconns--;
            metric_add(&w->metrics.closed, 1);
            conn_abort(c);
        }
    }
}

/* After the last connection: cancel the tick and the wake read, and run the ring until every
 * operation of ours and ktla's has come back, so nothing outlives the ring. */
static void wind_down(struct worker *w)
{
    struct io_uring_sqe *sqe;
    w->winding = true;
    if (w->tick_armed && (sqe = own_sqe(w))) {
        io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&w->tick_op, 0);
        io_uring_sqe_set_data(sqe, &w->cancel_op);
        w->own_inflight++;
    }
    if (w->wake_armed && (sqe = own_sqe(w))) {
        io_uring_prep_cancel(sqe, &w->wake_op, 0);
        io_uring_sqe_set_data(sqe, &w->cancel_op);
        w->own_inflight++;
    }
    io_uring_submit(&w->ring);
    /* Until ours are back, and ktla has said that the acceptors and the closed connections are
     * gone (their end-of-life callbacks). The bound only guards against a bug of ours: it
     * says so rather than hang the exit. */
    uint64_t give_up = now_ns() + 30 * NS;
    while (w->own_inflight || w->dying || w->acc_alive) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 1};
        int ret = io_uring_wait_cqe_timeout(&w->ring, &cqe, &ts);
        if ((ret < 0 && ret != -ETIME && ret != -EINTR) || now_ns() >= give_up) {
            fprintf(stderr,
                    "ktla-serve: worker %d: exiting with operations in flight (%u of ours, %u "
                    "connections, %u acceptors): %s\n",
                    w->index, w->own_inflight, w->dying, w->acc_alive,
                    ret < 0 && ret != -ETIME ? ktla_strerror(ret) : "not back after 30 s");
            break;
        }
        handle_completions(w);
        io_uring_submit(&w->ring);
    }
    while (w->in_pool) {
        void *b = w->in_pool;
        memcpy(&w->in_pool, b, sizeof(void *));
        free(b);
    }
    w->in_pooled = 0;
}

void worker_run(struct worker *w)
{
    if (w->ring_disabled) {
        /* liburing 2.3 declares io_uring_enable_rings but does not export it: the register
         * call itself. */
        int ret = (int)syscall(__NR_io_uring_register, w->ring.ring_fd,
                               IORING_REGISTER_ENABLE_RINGS, NULL, 0);
        if (ret < 0)
            ret = -errno;
        if (ret < 0) {
            fprintf(stderr, "ktla-serve: worker %d: io_uring: %s\n", w->index, ktla_strerror(ret));
            w->failed = true;
            atomic_store(w->stop, 2);
        }
        w->ring_disabled = false;
    }
    /* Every io_uring_enter then finds the ring by index instead of looking its descriptor up
     * (and, with several workers sharing one descriptor table, taking a reference every other
     * core's lookups contend on). Per thread, so registered here; kernels before 5.18 refuse it
     * and the descriptor serves as before. */
    (void)io_uring_register_ring_fd(&w->ring);
    for (;;) {
        int ret = io_uring_submit_and_wait(&w->ring, 1);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
            fprintf(stderr, "ktla-serve: worker %d: io_uring: %s\n", w->index, ktla_strerror(ret));
            w->failed = true;
            atomic_store(w->stop, 2);
        }
        handle_completions(w);
        publish_stats(w);
        look_at_stop(w);
        if (!w->tick_armed)
            arm_tick(w);
        if (w->cfg->log_fd >= 0 && w->loglen)
            log_flush(w);
        if (w->draining && !w->conns && !w->closing && !w->h2 && !w->stats.in_flight)
            break;
    }
    free_acceptors(w);
    wind_down(w);
    atomic_store(&w->exited, 1);
}

static void *worker_main(void *arg)
{
    worker_run(arg);
    return NULL;
}

/* ---- set-up */

int worker_init(struct worker *w)
{
    /* One thread submits and reaps (SINGLE_ISSUER), so the kernel may run completion work
     * only when the worker asks for completions (DEFER_TASKRUN, Linux 6.1+) instead of
     * interrupting it whenever an operation finishes. The ring is created here but used by the
     * worker's thread: created disabled, enabled by that thread (worker_run), which makes it the
     * ring's one submitter. Older kernels refuse the flags: a plain ring then. */
    struct io_uring_params p = {.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER |
                                         IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
                                .cq_entries = 8192};
    int ret = io_uring_queue_init_params(512, &w->ring, &p);
    w->ring_disabled = ret == 0;
    if (ret == -EINVAL) {
        p = (struct io_uring_params){.flags = IORING_SETUP_CQSIZE, .cq_entries = 8192};
        ret = io_uring_queue_init_params(512, &w->ring, &p);
    }
    if (ret < 0) {
        fprintf(stderr, "ktla-serve: io_uring_queue_init: %s\n", ktla_strerror(ret));
        return ret;
    }
    w->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (w->wake_fd < 0) {
        ret = -errno;
        fprintf(stderr, "ktla-serve: eventfd: %s\n", ktla_strerror(ret));
        goto err_ring;
    }
    struct ktla_acceptor_config ac = {
        .ctx = w->cfg->ctx,
        .ring = &w->ring,
        .ktls = w->cfg->ktls,
        .file_path = w->cfg->file_path,
        .handshake_timeout_ms = w->cfg->handshake_timeout_ms,
        .on_conn = on_conn,
        .on_fail = on_fail,
        .arg = w,
    };
    /* A browser pointed at http:// on this port reads why instead of an empty reply (what
     * nginx answers with its 400 "plain HTTP request was sent to HTTPS port"). */
    static const char plain_400[] = "HTTP/1.1 400 Bad Request\r\n"
                                    "Content-Type: text/plain; charset=utf-8\r\n"
                                    "Content-Length: 57\r\n"
                                    "Connection: close\r\n\r\n"
                                    "This port speaks HTTPS: use an https:// URL to reach it.\n";
    /* ktla_dispatch routes each completion to its own acceptor, so they share the ring. */
    for (unsigned i = 0; i < w->nlisten; i++) {
        ac.listen_fd = w->listen_fd[i];
        ret = ktla_acceptor_new(&ac, &w->acc[i]);
        if (ret < 0) {
            fprintf(stderr, "ktla-serve: cannot start accepting: %s\n", ktla_strerror(ret));
            if (i == 0)
                goto err_eventfd;
            /* The acceptors made have accepts queued on the ring: only running it down (which
             * the caller does for a worker marked failed) gives them back. */
            w->nlisten = i;
            w->failed = true;
            goto arm;
        }
        ktla_acceptor_set_plain_reply(w->acc[i], plain_400, sizeof(plain_400) - 1);
        /* Now, not at each worker's first connection: its cost (certificates parsed, about
         * 300 KB) belongs to start-up, and a fallback is said there. Failing shares, said. */
        ktla_acceptor_set_openssl_context(w->acc[i], w->cfg->shared_openssl ? KTLA_OPENSSL_SHARED
                                                                            : KTLA_OPENSSL_OWN);
    }
arm:
    w->cached_lookups = files_can_resolve_cached(w->cfg->root_fd);
    w->tick_op.kind = OWN_TICK;
    w->wake_op.kind = OWN_WAKE;
    w->cancel_op.kind = OWN_CANCEL;
    w->tick_ts = (struct __kernel_timespec){.tv_sec = 1};
    arm_tick(w);
    arm_wake(w);
    return w->failed ? ret : 0;

err_eventfd:
    close(w->wake_fd);
err_ring:
    io_uring_queue_exit(&w->ring);
    return ret;
}

int worker_start(struct worker *w)
{
    int ret = pthread_create(&w->thread, NULL, worker_main, w);
    return -ret;
}

void worker_wake(struct worker *w)
{
    uint64_t one = 1;
    (void)!write(w->wake_fd, &one, sizeof(one));
}

void worker_release(struct worker *w)
{
    io_uring_queue_exit(&w->ring);
    close(w->wake_fd);
}

void worker_join(struct worker *w)
{
    pthread_join(w->thread, NULL);
    worker_release(w);
}
