/*
 * Fuzzes ktla-serve's HTTP/2 connection (src/serve/h2.c) as it runs, in memory: the real h2.c,
 * nghttp2 and files_answer, with the few ktla connection calls it makes (receive, send, sendfile
 * with a head, shutdown, close) played by this file, which completes them in an order the input
 * chooses, as the ring would. The client's bytes (after the connection preface, which is sent for
 * it unless the input says not to) arrive in receives of the sizes the input chooses; sends
 * complete whole, or fail (the client going away); the idle timeout, the drain and the drain's
 * deadline can strike between two steps.
 *
 * Invariants, beyond ASan/UBSan and the leak check: every DATA payload sent from a file lies
 * within the file (pread gives all of it); the HTTP/2 frames the server writes are well formed
 * (each frame's length matches, as far as they go); the connection always ends, and with it every
 * descriptor the answers opened.
 *
 * Input: byte 0: bit 0 no preface, bit 1 sends may fail, bit 2 the drain may begin, bits 4-7 how
 * many of the next bytes are receive sizes (cycled; s means s + 1 bytes); then the client's bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h2.h"
#include "worker.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_h2: invariant broken: %s\n", what);
    abort();
}

/* ---- the stand-in for the ktla connection calls h2.c makes */

struct ktla_conn {
    struct ktla_conn_info info;
    /* the receive and the send in flight, at most one of each */
    void *rbuf;
    size_t rlen;
    ktla_io_cb rcb, scb;
    void *rarg, *sarg;
    size_t slen;
    bool recv_on, send_on;
    bool ready; /* the receive is ktla_conn_recv_ready's: it completes with 1, taking nothing */
    /* the end: shutdown's or close_then's callback, due at the next step */
    ktla_close_cb ccb;
    void *carg;
    bool closed, ended;
};

static uint64_t clock_ns;
static uint8_t out[1 << 20]; /* what the server wrote, frames checked as they come */
static size_t out_len, out_checked;

uint64_t worker_now_ns(void)
{
    return clock_ns;
}

void worker_log(struct worker *w, const struct ktla_conn_info *i, const struct http_request *q,
                int status, uint64_t head_bytes, uint64_t body_bytes, uint64_t start_ns,
                const char *end)
{
    (void)w, (void)i, (void)q, (void)head_bytes, (void)body_bytes, (void)start_ns;
    if (status < 100 || status > 599 || !end)
        fail("a response logged without a status or an end");
}

/* Cold lookups are the worker's (the harness's worker never has them: cached_lookups is off). */
struct warm *worker_warm(struct worker *w, const char *rel, void (*done)(void *owner, uint32_t tag),
                         void *owner, uint32_t tag)
{
    (void)w, (void)rel, (void)done, (void)owner, (void)tag;
    fail("a cold lookup without cached lookups");
    return NULL;
}

void worker_warm_forget(struct warm *wm)
{
    if (wm)
        fail("a cold lookup to forget that was never made");
}

const char *ktla_strerror(int code)
{
    (void)code;
    return "error";
}

const char *ktla_err_name(int code)
{
    (void)code;
    return "E";
}

const struct ktla_conn_info *ktla_conn_get_info(const struct ktla_conn *c)
{
    return &c->info;
}

int ktla_conn_recv(struct ktla_conn *c, void *buf, size_t len, ktla_io_cb cb, void *arg)
{
    if (c->recv_on || c->closed)
        fail("a second receive, or one after the end");
    if (!buf || !len)
        fail("a receive without a buffer");
    c->rbuf = buf, c->rlen = len, c->rcb = cb, c->rarg = arg, c->recv_on = true;
    c->ready = false;
    return 0;
}

int ktla_conn_recv_ready(struct ktla_conn *c, ktla_io_cb cb, void *arg)
{
    if (c->recv_on || c->closed)
        fail("a second receive, or one after the end");
    c->rbuf = NULL, c->rlen = 0, c->rcb = cb, c->rarg = arg, c->recv_on = true;
    c->ready = true;
    return 0;
}

void ktla_conn_trim(struct ktla_conn *c)
{
    if (!c->ready)
        fail("a connection trimmed while it was receiving into a buffer");
}

/* Keeps what is sent, checking frame headers as whole frames arrive. */
static void sink(const void *p, size_t n)
{
    if (out_len + n > sizeof(out)) { /* enough seen: start over, frame boundaries kept */
        if (out_checked != out_len)
            return;
        out_len = out_checked = 0;
    }
    memcpy(out + out_len, p, n);
    out_len += n;
    while (out_len - out_checked >= 9) {
        size_t flen = (size_t)out[out_checked] << 16 | (size_t)out[out_checked + 1] << 8 |
                      out[out_checked + 2];
        if (flen > (1u << 24) - 1)
            fail("a frame longer than 2^24 - 1");
        if (out_len - out_checked < 9 + flen)
            break;
        out_checked += 9 + flen;
    }
}

int ktla_conn_send(struct ktla_conn *c, const void *buf, size_t len, ktla_io_cb cb, void *arg)
{
    if (c->send_on || c->closed)
        fail("a second send, or one after the end");
    if (!len)
        fail("an empty send");
    sink(buf, len);
    c->scb = cb, c->sarg = arg, c->slen = len, c->send_on = true;
    return 0;
}

int ktla_conn_sendfile_head(struct ktla_conn *c, const void *head, size_t head_len, int fd,
                            uint64_t off, size_t count, ktla_io_cb cb, void *arg)
{
    static uint8_t body[1 << 20];
    if (c->send_on || c->closed)
        fail("a second send, or one after the end");
    if (!head_len || head_len > KTLA_SENDFILE_HEAD_MAX || !count)
        return KTLA_EINVAL;
    sink(head, head_len);
    /* The payload is the file's bytes from off: all of them must be there. */
    for (size_t done = 0; done < count;) {
        size_t n = count - done < sizeof(body) ? count - done : sizeof(body);
        ssize_t got = pread(fd, body, n, (off_t)(off + done));
        if (got != (ssize_t)n)
            fail("a DATA frame reaches past the end of its file");
        sink(body, n);
        done += n;
    }
    c->scb = cb, c->sarg = arg, c->slen = head_len + count, c->send_on = true;
    return 0;
}

int ktla_conn_shutdown(struct ktla_conn *c, unsigned linger_ms, ktla_close_cb cb, void *arg)
{
    (void)linger_ms;
    if (c->send_on)
        return KTLA_EBUSY;
    if (c->closed)
        return KTLA_ECLOSED;
    c->recv_on = false; /* cancelled: its callback never runs */
    c->closed = true, c->ccb = cb, c->carg = arg;
    return 0;
}

void ktla_conn_close_then(struct ktla_conn *c, ktla_close_cb cb, void *arg)
{
    c->recv_on = c->send_on = false; /* no callback of either after this */
    c->closed = true, c->ccb = cb, c->carg = arg;
}

/* ---- the tree, made once */

static char base[64];
static struct serve_config cfg;

static void mk(const char *rel, size_t size)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/%s", base, rel);
    FILE *f = fopen(p, "w");
    if (!f)
        fail("cannot make the tree");
    for (size_t i = 0; i < size; i++)
        fputc((int)(i * 7 % 251), f);
    if (fclose(f) != 0)
        fail("cannot make the tree");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(base, sizeof(base), "%s/ktla-fuzz-h2.XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(base))
        fail("mkdtemp");
    mk("index.html", 40);
    mk("a.txt", 37);
    mk("big.bin", 100000);
    mk("empty", 0);
    mk("s.css", 300);
    mk("s.css.gz", 120);
    char p[128];
    snprintf(p, sizeof(p), "%s/sub", base);
    mkdir(p, 0755);
    mk("sub/index.html", 20);
    cfg.root_fd = open(base, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cfg.root_fd < 0 || mime_load_string(&cfg.mime, "text/html html\ntext/css css\n") != 0)
        fail("set-up");
    cfg.idle_timeout_s = 30;
    cfg.drain_timeout_s = 10;
    cfg.max_conns = 100;
    cfg.log_fd = -1;
    return 0;
}

static int open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct worker w;
    static struct ktla_conn c;
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    size_t nsplits = flags >> 4;
    if (size < 1 + nsplits)
        return 0;
    const uint8_t *splits = data + 1, *in = data + 1 + nsplits;
    size_t in_len = size - 1 - nsplits;
    /* The client's stream: the preface (with an empty SETTINGS), then the input. */
    uint8_t *stream = malloc(sizeof(preface) - 1 + in_len + 1);
    size_t stream_len = 0, pos = 0, step = 0;
    if (!(flags & 1)) {
        memcpy(stream, preface, sizeof(preface) - 1);
        stream_len = sizeof(preface) - 1;
    }
    memcpy(stream + stream_len, in, in_len);
    stream_len += in_len;

    int fds = open_fds();
    memset(&w, 0, sizeof(w));
    memset(&c, 0, sizeof(c));
    w.cfg = &cfg;
    snprintf(c.info.peer, sizeof(c.info.peer), "fuzz");
    c.info.fd = -1;
    out_len = out_checked = 0;
    clock_ns = 1000000000ull;
    if (h2_start(&w, &c, false) != 0)
        fail("h2_start");

    /* Steps until the connection is gone: a receive, a send's completion, or a timer. */
    for (unsigned guard = 0; !c.ended; guard++) {
        if (guard > 100000)
            fail("the connection never ends");
        uint8_t r = pos < stream_len ? stream[pos] : (uint8_t)step;
        step++;
        if (c.ccb || (c.closed && !c.recv_on && !c.send_on)) {
            ktla_close_cb cb = c.ccb;
            void *arg = c.carg;
            c.ended = true;
            if (cb)
                cb(&c, 0, arg);
            break;
        }
        if (c.send_on && (!c.recv_on || r & 1)) {
            c.send_on = false;
            ssize_t n = (flags & 2) && r % 13 == 0 ? -EPIPE : (ssize_t)c.slen;
            c.scb(&c, n, c.sarg);
        } else if (c.recv_on && c.ready) {
            c.recv_on = false;
            c.rcb(&c, 1, c.rarg);
        } else if (c.recv_on) {
            size_t n = nsplits ? (size_t)splits[step % nsplits] + 1 : c.rlen;
            if (n > c.rlen)
                n = c.rlen;
            if (n > stream_len - pos)
                n = stream_len - pos;
            c.recv_on = false;
            memcpy(c.rbuf, stream + pos, n);
            pos += n;
            c.rcb(&c, (ssize_t)n, c.rarg); /* 0 at the end: the client's close_notify */
        } else {
            /* Nothing in flight: only time can move it (a stalled stream, the idle end). */
            clock_ns += 31ull * 1000000000ull;
            if ((flags & 4) && !w.draining) {
                w.draining = true;
                w.drain_deadline_ns = clock_ns + 10ull * 1000000000ull;
                h2_drain(&w);
            } else {
                h2_tick(&w, clock_ns);
            }
        }
    }
    if (w.h2 || w.nconns || w.dying)
        fail("the worker still counts the connection");
    if (open_fds() != fds)
        fail("a descriptor outlived its connection");
    free(stream);
    return 0;
}
