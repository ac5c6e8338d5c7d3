/*
 * HTTP/2 (RFC 9113) on a ktla connection. Debian's libnghttp2 does the protocol: framing, HPACK,
 * flow control, stream states, and the checks RFC 9113 section 8 asks of a request. This file
 * moves bytes between it and the connection, and answers each request with the same stage as
 * HTTP/1.1 (files_answer, http_response_fields), so that both protocols give one answer.
 *
 * Bodies keep the zero copy that is the reason for ktla: nghttp2 is told NGHTTP2_DATA_FLAG_NO_COPY
 * and hands each DATA frame to send_data(), which sends the frame's 9-byte header (behind
 * whatever frames are waiting) and then the payload straight from the file with
 * ktla_conn_sendfile_head: in kernel mode the head goes with MSG_MORE and the payload with
 * sendfile(2), so the kernel puts both in one TLS record and encrypts from the page cache; in
 * userspace mode the same call reads and encrypts them together. Frames are sized to end on a
 * record boundary (16384 * k - 9 payload bytes), so no short record sits between two frames.
 *
 * One send and one receive are in flight per connection, both through the worker's io_uring.
 * While a send is in flight nghttp2 keeps making frames into `out` (up to OUT_MAX), which go
 * with the next send; a DATA frame waits for the socket (NGHTTP2_ERR_WOULDBLOCK: nghttp2 offers
 * it again). A connection whose client does not read stops being read once half of OUT_MAX is
 * waiting, so a flood of frames that each ask for an answer (PING, SETTINGS) cannot grow our
 * memory.
 *
 * Abuse is bounded per connection, in the style of the HTTP/1.1 limits: header lists over
 * HTTP_HEAD_MAX get 431 (HPACK bombs included: decoded bytes are counted), more than 100
 * concurrent streams are refused (nghttp2: REFUSED_STREAM while our SETTINGS are not yet
 * acknowledged, a connection error after), and more than RESET_LIMIT streams
 * reset by the client (rapid reset, CVE-2023-44487) or CONTROL_LIMIT SETTINGS/PING/PRIORITY
 * frames within WINDOW_NS end the connection with GOAWAY ENHANCE_YOUR_CALM and a log line, as
 * do nghttp2's own flood and CONTINUATION limits. A stream that makes no progress (a client that
 * never opens its window) holds the connection only until the idle timeout.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "h2.h"
#include "worker.h"

#define NS 1000000000ull
#define OUT_MAX (64u << 10)      /* frames waiting for the socket; beyond: no more reading */
#define MAX_STREAMS 100          /* SETTINGS_MAX_CONCURRENT_STREAMS */
#define RECORD 16384             /* a TLS record's plaintext */
#define FRAME_MAX (16u * RECORD) /* the largest DATA frame we make, if the peer allows it */
#define WINDOW_NS (10 * NS)      /* the window the flood limits count in */
#define RESET_LIMIT 200          /* streams the client resets per window */
#define CONTROL_LIMIT 1000       /* SETTINGS, PING and PRIORITY frames per window */

const char *const h2_alpn[2] = {"h2", "http/1.1"};

struct h2stream {
    struct h2conn *c;
    struct h2stream *prev, *next;
    int32_t id;
    struct http_request req;
    size_t header_bytes; /* decoded, as RFC 9113 6.5.2 counts them */
    int status;
    bool answered, closed, reset_by_peer;
    unsigned frames; /* DATA frames made by read_file() whose send has not completed */
    struct warm *warm;   /* its cold path being looked up (worker_warm) */
    uint8_t cold_rounds;
    int fd;
    uint64_t off, left;   /* the next byte of the file to frame, and how many are left */
    uint64_t frame_off;   /* where the DATA frame being sent starts in the file */
    uint64_t head_bytes, body_sent;
    uint64_t start_ns;
    const char *end; /* how it ended, for the log, once closed */
    char text[64];   /* an error's body */
    size_t text_len, text_off;
};

struct h2conn {
    struct worker *w;
    struct ktla_conn *kc;
    struct h2conn *prev, *next;
    struct h2stream *streams;
    nghttp2_session *s;
    uint8_t *out, *sending; /* frames being gathered; the buffer of the send in flight */
    size_t out_len, out_cap, sending_len;
    struct h2stream *data_st; /* the stream whose DATA frame is in flight */
    size_t data_len;
    bool recv_pending, send_pending, ending, eof, drain_final;
    uint64_t last_req_ns, progress_ns, seen_sent, window_ns, notice_ns;
    unsigned resets, controls;
    uint8_t *in; /* RECORD bytes while something is being received; NULL while idle */
    bool idle_wait; /* the receive in flight is ktla_conn_recv_ready's, holding no buffer */
};

static uint64_t now_ns(void)
{
    return worker_now_ns();
}

static void conn_pump(struct h2conn *c);

/* ---- streams */

/* The stream's line in the access log, then its memory. `end` as in log.c. */
static void stream_free(struct h2stream *st, const char *end)
{
    struct h2conn *c = st->c;
    worker_warm_forget(st->warm);
    if (st->answered)
        worker_log(c->w, ktla_conn_get_info(c->kc), &st->req, st->status, st->head_bytes,
                   st->body_sent, st->start_ns, end);
    if (st->fd >= 0)
        close(st->fd);
    http_request_release(&st->req);
    if (st->prev)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    free(st);
}

static struct h2stream *stream_get(struct h2conn *c, int32_t id)
{
    return nghttp2_session_get_stream_user_data(c->s, id);
}

/* ---- answering a request: files_answer, as for HTTP/1.1 */

static ssize_t read_file(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *arg)
{
    struct h2stream *st = src->ptr;
    (void)s;
    (void)id;
    (void)buf;
    (void)arg;
    size_t n = st->left < len ? (size_t)st->left : len;
    /* From here until the frame's send completes the stream must outlive a reset: nghttp2 hands
     * a frame it has made to send_data() even when its stream closed meanwhile. */
    st->frames++;
    st->frame_off = st->off;
    st->off += n;
    st->left -= n;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY; /* send_data() sends it from the file */
    if (!st->left)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static ssize_t read_text(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *arg)
{
    struct h2stream *st = src->ptr;
    (void)s;
    (void)id;
    (void)arg;
    size_t n = st->text_len - st->text_off;
    if (n > len)
        n = len;
    memcpy(buf, st->text + st->text_off, n);
    st->text_off += n;
    st->body_sent += n;
    if (st->text_off == st->text_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void on_warm(void *owner, uint32_t id);

static void answer(struct h2conn *c, struct h2stream *st)
{
    struct worker *w = c->w;
    struct http_request *q = &st->req;
    struct http_response resp = {.now = time(NULL)};
    struct files_body fb;

    st->answered = true;
    c->progress_ns = now_ns();
    q->major = 2;
    q->minor = 0;
    q->keep_alive = true;
    if (!q->status && !q->known_method)
        q->status = 501; /* a method token we do not know (nghttp2 checked it is one) */
    if (!q->status && !q->target)
        q->status = 400;
    /* A cold path is looked up by io_uring and the stream answered when that is over (see
     * worker_warm): the other streams, and the other connections, go on meanwhile. */
    w->scratch.cached_only = w->cached_lookups && st->cold_rounds < WORKER_COLD_ROUNDS;
    int status = files_answer(w->cfg->root_fd, &w->cfg->mime, q, &w->scratch, &resp, &fb);
    if (status == FILES_COLD) {
        st->cold_rounds++;
        if ((st->warm = worker_warm(w, w->scratch.cold, on_warm, c, (uint32_t)st->id))) {
            st->answered = false;
            return;
        }
        w->scratch.cached_only = false;
        status = files_answer(w->cfg->root_fd, &w->cfg->mime, q, &w->scratch, &resp, &fb);
    }
    st->status = resp.status = status;
    st->fd = fb.fd;
    st->off = fb.off;
    st->left = fb.len;
    bool head_only = q->method == HTTP_HEAD && !q->status;
    if (status >= 300 && status != 304) {
        st->text_len = (size_t)snprintf(st->text, sizeof(st->text), "%d %s\n", status,
                                        http_reason(status));
        resp.content_type = "text/plain; charset=utf-8";
        resp.has_length = true;
        resp.content_length = st->text_len;
    }
    if (head_only) {
        st->text_len = 0;
        st->left = 0;
    }
    if (!st->left && st->fd >= 0) {
        close(st->fd);
        st->fd = -1;
    }

    struct http_field f[HTTP_FIELDS_MAX];
    char values[2048], names[1024], code[4];
    int nf = http_response_fields(&resp, f, HTTP_FIELDS_MAX, values, sizeof(values));
    if (nf < 0) {
        nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    nghttp2_nv nv[HTTP_FIELDS_MAX + 1];
    snprintf(code, sizeof(code), "%d", status);
    nv[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE};
    /* HTTP/2 field names are lower case (RFC 9113 8.2.1); --header's keep theirs in HTTP/1.1. */
    size_t used = 0;
    for (int i = 0; i < nf; i++) {
        if (used + f[i].name_len > sizeof(names)) {
            nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
            return;
        }
        for (size_t k = 0; k < f[i].name_len; k++) {
            char ch = f[i].name[k];
            names[used + k] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        nv[i + 1] = (nghttp2_nv){(uint8_t *)names + used, (uint8_t *)f[i].value, f[i].name_len,
                                 f[i].value_len, NGHTTP2_NV_FLAG_NONE};
        used += f[i].name_len;
    }
    nghttp2_data_provider body = {.source.ptr = st};
    body.read_callback = st->left ? read_file : read_text;
    bool has_body = st->left || st->text_len;
    if (nghttp2_submit_response(c->s, st->id, nv, (size_t)nf + 1, has_body ? &body : NULL))
        nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* The cold path of a stream's request has been looked up: it is answered now. */
static void on_warm(void *owner, uint32_t id)
{
    struct h2conn *c = owner;
    struct h2stream *st = stream_get(c, (int32_t)id);
    if (!st)
        return;
    st->warm = NULL;
    if (c->ending || st->closed)
        return;
    answer(c, st);
    conn_pump(c);
}

/* ---- nghttp2's callbacks */

/* Frames other than DATA payloads: gathered in `out` until the next send. */
static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *arg)
{
    struct h2conn *c = arg;
    (void)s;
    (void)flags;
    if (c->out_len >= OUT_MAX)
        return NGHTTP2_ERR_WOULDBLOCK;
    if (len > OUT_MAX - c->out_len)
        len = OUT_MAX - c->out_len;
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len)
            cap *= 2;
        uint8_t *out = realloc(c->out, cap);
        if (!out)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        c->out = out;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return (ssize_t)len;
}

static void on_data_sent(struct ktla_conn *kc, ssize_t n, void *arg);

/* A DATA frame: the frames gathered so far and its header as the head, then its payload from
 * the file, in one ktla_conn_sendfile_head. */
static int send_data(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
                     size_t len, nghttp2_data_source *src, void *arg)
{
    struct h2conn *c = arg;
    struct h2stream *st = src->ptr;
    (void)s;
    if (frame->data.padlen) /* we never ask for padding */
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (c->send_pending || c->out_len + 9 > KTLA_SENDFILE_HEAD_MAX)
        return NGHTTP2_ERR_WOULDBLOCK; /* offered again once the socket has taken the rest */
    if (on_send(s, framehd, 9, 0, c) != 9)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (!len) { /* never made by read_file(), which frames at least a byte: but all the same */
        if (!--st->frames && st->closed)
            stream_free(st, st->end);
        return 0;
    }
    c->sending = c->out;
    c->sending_len = c->out_len;
    c->out = NULL;
    c->out_len = c->out_cap = 0;
    int ret = ktla_conn_sendfile_head(c->kc, c->sending, c->sending_len, st->fd, st->frame_off,
                                      len, on_data_sent, c);
    if (ret < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    c->send_pending = true;
    c->data_st = st;
    c->data_len = len;
    return 0;
}

/* DATA payloads end on a TLS record boundary: 16375 bytes with the default frame size, so that
 * header and payload fill one record exactly. */
static ssize_t frame_length(nghttp2_session *s, uint8_t type, int32_t id, int32_t session_window,
                            int32_t stream_window, uint32_t max_frame, void *arg)
{
    (void)s;
    (void)type;
    (void)id;
    (void)session_window;
    (void)stream_window;
    (void)arg;
    size_t want = max_frame < FRAME_MAX ? max_frame : FRAME_MAX;
    if (want >= RECORD)
        want = want / RECORD * RECORD - 9;
    return (ssize_t)want;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    struct h2conn *c = arg;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2stream *st = calloc(1, sizeof(*st));
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* this stream is reset, not the rest */
    st->c = c;
    st->id = frame->hd.stream_id;
    st->fd = -1;
    st->start_ns = c->last_req_ns = now_ns();
    st->next = c->streams;
    if (c->streams)
        c->streams->prev = st;
    c->streams = st;
    nghttp2_session_set_stream_user_data(s, st->id, st);
    return 0;
}

static bool name_is(const uint8_t *name, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(name, want, len) == 0;
}

/* Keeps a field's value (several fields of one name are joined with ", "). 0 or the status. */
static int keep(char **dst, const uint8_t *value, size_t len, size_t max)
{
    size_t had = *dst ? strlen(*dst) : 0, add = had ? len + 2 : len;
    if (had + add > max)
        return 431;
    char *v = realloc(*dst, had + add + 1);
    if (!v)
        return 500;
    if (had)
        memcpy(v + had, ", ", 2);
    memcpy(v + had + (had ? 2 : 0), value, len);
    v[had + add] = '\0';
    *dst = v;
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *arg)
{
    struct h2conn *c = arg;
    struct h2stream *st = stream_get(c, frame->hd.stream_id);
    struct http_request *q = st ? &st->req : NULL;
    (void)s;
    (void)flags;
    if (!st || frame->hd.type != NGHTTP2_HEADERS || st->answered)
        return 0;
    /* Every decoded field counts, with RFC 9113's 32 bytes each: an HPACK bomb (a big field
     * referenced over and over by one byte) is a huge list, not a small one. */
    st->header_bytes += nlen + vlen + 32;
    if (st->header_bytes > HTTP_HEAD_MAX && !q->status)
        q->status = 431;
    if (q->status)
        return 0;
    int status = 0;
    if (name_is(name, nlen, ":method")) {
        for (int m = 0; m <= HTTP_SOURCE; m++) {
            const char *str = http_method_str((enum http_method)m);
            if (strlen(str) == vlen && memcmp(str, value, vlen) == 0) {
                q->method = (enum http_method)m;
                q->known_method = 1;
                break;
            }
        }
    } else if (name_is(name, nlen, ":path")) {
        if (vlen > HTTP_URL_MAX)
            status = 414;
        else if (!q->target && (q->target = strndup((const char *)value, vlen)))
            q->target_len = vlen;
        else if (!q->target)
            status = 500;
    } else if (name_is(name, nlen, ":authority") || name_is(name, nlen, "host")) {
        q->hosts = 1;
    } else {
        int i = http_field_index((const char *)name, nlen);
        if (i >= 0)
            status = keep(http_request_field(q, i), value, vlen, HTTP_VALUE_MAX);
    }
    q->status = status;
    return 0;
}

/* The flood limits: too many of one kind of frame within WINDOW_NS ends the connection. */
static bool over_limit(struct h2conn *c, unsigned *count, unsigned limit, const char *what)
{
    uint64_t now = now_ns();
    if (now - c->window_ns >= WINDOW_NS) {
        c->window_ns = now;
        c->resets = c->controls = 0;
    }
    if (++*count <= limit)
        return false;
    fprintf(stderr,
            "ktla-serve: %s: HTTP/2 %s: more than %u in %llu s, connection ended "
            "(GOAWAY ENHANCE_YOUR_CALM)\n",
            ktla_conn_get_info(c->kc)->peer, what, limit, WINDOW_NS / NS);
    nghttp2_session_terminate_session(c->s, NGHTTP2_ENHANCE_YOUR_CALM);
    return true;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    struct h2conn *c = arg;
    struct h2stream *st;
    (void)s;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        st = stream_get(c, frame->hd.stream_id);
        if (st && !st->answered && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
            answer(c, st);
        break;
    case NGHTTP2_DATA:
        /* No request here has a body: answered (413) at its first byte, as HTTP/1.1 does;
         * nghttp2 then resets the rest of the upload with NO_ERROR (RFC 9113 8.1). */
        st = stream_get(c, frame->hd.stream_id);
        if (st && !st->answered && frame->hd.length)
            st->req.has_body = true;
        if (st && !st->answered &&
            (frame->hd.length || (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)))
            answer(c, st);
        break;
    case NGHTTP2_RST_STREAM:
        if ((st = stream_get(c, frame->hd.stream_id)))
            st->reset_by_peer = true;
        over_limit(c, &c->resets, RESET_LIMIT, "streams reset by the client (rapid reset)");
        break;
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK))
            over_limit(c, &c->controls, CONTROL_LIMIT, "SETTINGS, PING and PRIORITY frames");
        break;
    case NGHTTP2_PRIORITY:
        over_limit(c, &c->controls, CONTROL_LIMIT, "SETTINGS, PING and PRIORITY frames");
        break;
    default:
        break;
    }
    return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    struct h2conn *c = arg;
    (void)s;
    if (frame->hd.type == NGHTTP2_HEADERS) {
        struct h2stream *st = stream_get(c, frame->hd.stream_id);
        if (st)
            st->head_bytes += frame->hd.length + 9;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t error, void *arg)
{
    struct h2conn *c = arg;
    struct h2stream *st = stream_get(c, id);
    (void)s;
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(c->s, id, NULL);
    st->closed = true;
    st->end = error == NGHTTP2_NO_ERROR ? "ok" : st->reset_by_peer ? "client-gone" : "error";
    /* Its last DATA frame may still be on its way: it goes when that send completes. */
    if (!st->frames)
        stream_free(st, st->end);
    return 0;
}

/* ---- the connection */

static void on_closed(struct ktla_conn *kc, int result, void *arg);
static void on_gone(struct ktla_conn *kc, int result, void *arg);

static void conn_unlink(struct h2conn *c)
{
    struct worker *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->h2 = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    metric_add(&w->metrics.closed, 1);
}

static void conn_free(struct h2conn *c, const char *why)
{
    while (c->streams)
        stream_free(c->streams, why);
    nghttp2_session_del(c->s);
    free(c->in);
    free(c->out);
    free(c->sending);
    free(c);
}

/* The graceful end: close_notify, FIN, the client's last bytes dropped (ktla_conn_shutdown).
 * Only with no send in flight; the connection stays listed until ktla says it is gone. */
static void conn_end(struct h2conn *c)
{
    c->ending = true;
    if (ktla_conn_shutdown(c->kc, WORKER_LINGER_MS, on_closed, c) < 0) {
        conn_unlink(c);
        c->w->dying++;
        ktla_conn_close_then(c->kc, on_gone, c);
    }
}

/* The abortive end: errors, clients that stopped reading, the drain's deadline. */
static void conn_abort(struct h2conn *c, const char *why)
{
    conn_unlink(c);
    c->w->dying++;
    c->ending = true;
    /* The streams cut short are logged with the reason now; their files close once nothing is
     * in flight (on_gone). */
    for (struct h2stream *st = c->streams; st; st = st->next) {
        if (!st->answered)
            continue;
        worker_log(c->w, ktla_conn_get_info(c->kc), &st->req, st->status, st->head_bytes,
                   st->body_sent, st->start_ns, why);
        st->answered = false;
    }
    ktla_conn_close_then(c->kc, on_gone, c);
}

static void on_closed(struct ktla_conn *kc, int result, void *arg)
{
    struct h2conn *c = arg;
    (void)kc;
    (void)result;
    conn_unlink(c);
    conn_free(c, "client-gone");
}

static void on_gone(struct ktla_conn *kc, int result, void *arg)
{
    struct h2conn *c = arg;
    (void)kc;
    (void)result;
    c->w->dying--;
    conn_free(c, "error");
}

static void on_recv(struct ktla_conn *kc, ssize_t n, void *arg);

static void on_ready(struct ktla_conn *kc, ssize_t n, void *arg);

/* The next receive. A connection with no stream open and nothing to send (browsers keep them
 * for minutes) waits without a buffer, as HTTP/1.1's idle connections do, and gets one when
 * input is there. */
static void post_recv(struct h2conn *c)
{
    if (c->recv_pending || c->eof || c->ending || c->out_len >= OUT_MAX / 2 ||
        !nghttp2_session_want_read(c->s))
        return;
    if (!c->streams && !c->send_pending && !c->out_len) {
        free(c->in);
        c->in = NULL;
        if (ktla_conn_recv_ready(c->kc, on_ready, c) < 0)
            return conn_abort(c, "error");
        c->recv_pending = c->idle_wait = true;
        return;
    }
    if (!c->in && !(c->in = malloc(RECORD)))
        return conn_abort(c, "error");
    if (ktla_conn_recv(c->kc, c->in, RECORD, on_recv, c) < 0)
        return conn_abort(c, "error");
    c->recv_pending = true;
    c->idle_wait = false;
}

static void on_ready(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct h2conn *c = arg;
    c->recv_pending = c->idle_wait = false;
    if (c->ending)
        return;
    if (n < 0) /* the end of the stream, or an error: the receive says which */
        return on_recv(kc, n == KTLA_ETRUNCATED ? 0 : n, arg);
    if (!c->in && !(c->in = malloc(RECORD)))
        return conn_abort(c, "error");
    if (ktla_conn_recv(c->kc, c->in, RECORD, on_recv, c) < 0)
        return conn_abort(c, "error");
    c->recv_pending = true;
}

static void on_sent(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct h2conn *c = arg;
    (void)kc;
    c->send_pending = false;
    free(c->sending);
    c->sending = NULL;
    if (n < 0)
        return conn_abort(c, "client-gone");
    c->progress_ns = now_ns();
    conn_pump(c);
}

static void on_data_sent(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct h2conn *c = arg;
    struct h2stream *st = c->data_st;
    (void)kc;
    c->send_pending = false;
    c->data_st = NULL;
    st->frames--;
    size_t head = c->sending_len;
    free(c->sending);
    c->sending = NULL;
    if (n < (ssize_t)(head + c->data_len))
        return conn_abort(c, n == -ENODATA ? "file-error" : "client-gone");
    st->body_sent += c->data_len;
    c->progress_ns = now_ns();
    if (st->closed && !st->frames)
        stream_free(st, st->end);
    conn_pump(c);
}

/* Lets nghttp2 make what it has to send, sends it, and reads on or ends the connection. */
static void conn_pump(struct h2conn *c)
{
    if (c->ending)
        return;
    int rv = nghttp2_session_send(c->s);
    if (rv) {
        fprintf(stderr, "ktla-serve: %s: HTTP/2: %s\n", ktla_conn_get_info(c->kc)->peer,
                nghttp2_strerror(rv));
        return conn_abort(c, "error");
    }
    if (!c->send_pending && c->out_len) {
        c->sending = c->out;
        c->sending_len = c->out_len;
        c->out = NULL;
        c->out_len = c->out_cap = 0;
        if (ktla_conn_send(c->kc, c->sending, c->sending_len, on_sent, c) < 0)
            return conn_abort(c, "error");
        c->send_pending = true;
    }
    if (c->send_pending)
        return post_recv(c);
    /* Everything is out: nghttp2 has nothing more to do after a GOAWAY (ours or the client's)
     * once the streams are done, and the client sent no more. */
    if (c->eof || (!nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s))) {
        if (c->recv_pending)
            c->recv_pending = false; /* ktla_conn_shutdown cancels it */
        return conn_end(c);
    }
    post_recv(c);
}

static void on_recv(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct h2conn *c = arg;
    c->recv_pending = false;
    if (c->ending)
        return;
    if (n <= 0) {
        /* close_notify or FIN: nothing more comes, and nothing sent now would be read. */
        if (n < 0 && n != KTLA_ETRUNCATED && n != -ECONNRESET && n != KTLA_EALERT)
            fprintf(stderr, "ktla-serve: %s: connection ended: %s (%s)\n",
                    ktla_conn_get_info(kc)->peer, ktla_strerror((int)n), ktla_err_name((int)n));
        c->eof = true;
        if (n < 0 && n != KTLA_ETRUNCATED)
            return conn_abort(c, "client-gone");
        return conn_pump(c);
    }
    ssize_t rv = nghttp2_session_mem_recv(c->s, c->in, (size_t)n);
    if (rv < 0) {
        /* A fatal protocol error (a flood nghttp2 counted, too many CONTINUATION frames, a bad
         * preface): nghttp2 has queued its GOAWAY where it could; nothing more is read. */
        fprintf(stderr, "ktla-serve: %s: HTTP/2: %s, connection ended\n",
                ktla_conn_get_info(kc)->peer, nghttp2_strerror((int)rv));
        nghttp2_session_terminate_session(
            c->s, rv == NGHTTP2_ERR_FLOODED ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR);
        c->eof = true;
    }
    conn_pump(c);
}

/* The same for every connection of every worker: made once. */
static nghttp2_session_callbacks *callbacks;
static nghttp2_option *options;
static pthread_once_t setup_once = PTHREAD_ONCE_INIT;

static void setup(void)
{
    nghttp2_session_callbacks *cb;
    nghttp2_option *o;
    if (nghttp2_session_callbacks_new(&cb))
        return;
    if (nghttp2_option_new(&o)) {
        nghttp2_session_callbacks_del(cb);
        return;
    }
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data);
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, frame_length);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    /* Priorities are not used: no closed streams are kept for them. */
    nghttp2_option_set_no_closed_streams(o, 1);
    nghttp2_option_set_max_settings(o, 32);
    nghttp2_option_set_max_outbound_ack(o, 1000);
    nghttp2_option_set_max_continuations(o, 8);
    /* nghttp2's own rapid-reset limit, looser than ours (RESET_LIMIT), which answers first. */
    nghttp2_option_set_stream_reset_rate_limit(o, 1000, 33);
    callbacks = cb;
    options = o;
}

int h2_start(struct worker *w, struct ktla_conn *kc, bool refuse)
{
    pthread_once(&setup_once, setup);
    if (!callbacks)
        return -ENOMEM;
    struct h2conn *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    if (nghttp2_session_server_new2(&c->s, callbacks, c, options)) {
        free(c);
        return -ENOMEM;
    }
    c->w = w;
    c->kc = kc;
    c->last_req_ns = c->progress_ns = c->window_ns = now_ns();
    c->next = w->h2;
    if (w->h2)
        w->h2->prev = c;
    w->h2 = c;
    w->nconns++;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, HTTP_HEAD_MAX},
    };
    nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    if (refuse) {
        nghttp2_submit_goaway(c->s, NGHTTP2_FLAG_NONE, 0, NGHTTP2_REFUSED_STREAM, NULL, 0);
    } else if (w->draining) {
        /* Opened as the drain began: its first requests are still answered, as HTTP/1.1's are,
         * until the second GOAWAY (h2_tick). */
        nghttp2_submit_shutdown_notice(c->s);
        c->notice_ns = c->last_req_ns;
    }
    conn_pump(c);
    return 0;
}

void h2_tick(struct worker *w, uint64_t now)
{
    uint64_t idle = (uint64_t)w->cfg->idle_timeout_s * NS;
    for (struct h2conn *c = w->h2, *next; c; c = next) {
        next = c->next;
        if (c->ending)
            continue;
        uint64_t sent = ktla_conn_get_info(c->kc)->bytes_sent;
        if (sent != c->seen_sent && c->send_pending)
            c->progress_ns = now; /* a DATA frame to a slow reader is still moving */
        c->seen_sent = sent;
        if (w->draining && now >= w->drain_deadline_ns) {
            conn_abort(c, "shutdown");
            continue;
        }
        if (w->draining && !c->drain_final && now - c->notice_ns >= NS) {
            /* The second GOAWAY, a tick after the first: streams the client opened before it
             * saw the first are still answered (RFC 9113 6.8). */
            c->drain_final = true;
            nghttp2_submit_goaway(c->s, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(c->s), NGHTTP2_NO_ERROR,
                                  NULL, 0);
            conn_pump(c);
            continue;
        }
        if (c->idle_wait)
            ktla_conn_trim(c->kc); /* idle: its TLS buffers go too (userspace mode) */
        if (c->streams || c->send_pending) {
            uint64_t last = c->progress_ns > c->last_req_ns ? c->progress_ns : c->last_req_ns;
            if (now - last >= idle)
                conn_abort(c, "timeout"); /* its client stopped reading, or opening its window */
        } else if (now - c->last_req_ns >= idle) {
            nghttp2_submit_goaway(c->s, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(c->s), NGHTTP2_NO_ERROR,
                                  NULL, 0);
            c->eof = true; /* nothing more is read: the GOAWAY goes, then the end */
            conn_pump(c);
        }
    }
}

void h2_drain(struct worker *w)
{
    for (struct h2conn *c = w->h2, *next; c; c = next) {
        next = c->next;
        if (c->ending)
            continue;
        nghttp2_submit_shutdown_notice(c->s);
        c->notice_ns = now_ns();
        conn_pump(c);
    }
}

void h2_abort_all(struct worker *w)
{
    for (struct h2conn *c = w->h2, *next; c; c = next) {
        next = c->next;
        if (c->ending) {
            /* Lingering: ktla_conn_close_then cuts it, and its callback frees it. */
            conn_unlink(c);
            c->w->dying++;
            ktla_conn_close_then(c->kc, on_gone, c);
        } else {
            conn_abort(c, "shutdown");
        }
    }
}
