/*
 * The established connection in kernel mode: the kernel encrypts and decrypts, and ktla acts on
 * what is not application data (alert.c's table), follows TLS 1.3 KeyUpdates where the kernel
 * can, and moves files into the socket with sendfile(2), or io_uring splice (a configured path,
 * and every range not in the page cache).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "conn.h"
#include "ktls.h"

#define SENDFILE_SLICE (1u << 20) /* bytes sent before yielding to other connections */
#define SPLICE_PIPE (256u << 10)  /* splice path: pipe size asked for, bytes per step */

#ifndef __NR_cachestat
#define __NR_cachestat 451 /* Linux 6.5 */
#endif
static atomic_bool no_cachestat;

/*
 * Kernel mode: an alert now, without waiting (a few bytes; a socket too full to take them loses
 * them, and the connection ends all the same). After the kernel failed to open a record it sets
 * the socket's error (EBADMSG, EMSGSIZE...), and kernel TLS refuses every send while it is set;
 * reading SO_ERROR clears it, and the transmit side, which never failed, sends the alert. With
 * the transmit side in userspace (one direction only in the kernel) OpenSSL has no call that
 * sends an arbitrary alert: none is sent.
 */
static void kernel_alert(struct ktla_conn *c, uint8_t level, uint8_t desc)
{
    const uint8_t alert[2] = {level, desc};

    if (c->info.tx_mode != KTLA_MODE_KERNEL || c->fatal_sent)
        return;
    for (int i = 0; i < 2; i++) {
        ssize_t n = ktla_ktls_send_record(c->fd, KTLA_RT_ALERT, alert, sizeof(alert), MSG_DONTWAIT);
        if (n == (ssize_t)sizeof(alert) || n == -EAGAIN)
            break;
        int err;
        socklen_t len = sizeof(err);
        ktla_sys.getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    }
    if (level == 2) {
        c->fatal_sent = true;
        /* The FIN right behind it: the client learns the end from the alert, not from the
         * reset that closing over the unread bad record may cause. */
        shutdown(c->fd, SHUT_WR);
    }
}

/* Acts on one row of the alert table (alert.c): true when the connection goes on, and then the
 * caller carries on receiving; false when the receive ended with the row's code. */
bool kconn_event(struct ktla_conn *c, enum ktla_event ev)
{
    const struct ktla_event_answer *a = ktla_event_answer(c->info.version, ev);

    if (a->alert_level)
        kernel_alert(c, a->alert_level, a->alert_desc);
    if (!a->ends)
        return true;
    if (ev == KTLA_EV_ALERT_CLOSE_NOTIFY)
        c->peer_closed = true;
    conn_recv_done(c, a->code);
    return false;
}

/* Kernel mode: a receive failed; the errors that are the peer's records get their alert. */
/*
 * Kernels from 6.14 stop decrypting after any handshake record whose first byte is 24 (a
 * KeyUpdate's type) until a new receive key is set, taking it for a KeyUpdate. A handshake
 * message may arrive in pieces (RFC 8446 section 5.1), and then that byte may begin a piece that
 * is not a KeyUpdate at all, or only the first piece of one: the keys have not changed. Setting
 * the current key again, at the kernel's current record number, lets it go on. Only where the
 * connection keeps its TLS 1.3 secrets (a kernel that can rekey); true if it went on.
 */
static bool kernel_resume_same_key(struct ktla_conn *c)
{
    struct ktla_key k;
    uint16_t version;
    enum ktla_cipher cipher;
    uint64_t seq;

    if (!c->rk || !ktla_hs_reader_busy(&c->hsr) ||
        ktla_ktls_get(c->fd, KTLA_DIR_RX, &version, &cipher, &seq) < 0)
        return false;
    int ret = ktla_secrets_current(&c->rk->sec, KTLA_DIR_RX, &k);
    k.seq = seq;
    if (ret == 0)
        ret = ktla_ktls_install(c->fd, KTLA_DIR_RX, &k);
    ktla_key_wipe(&k);
    return ret == 0;
}

static void kernel_recv_again(struct ktla_conn *c);

void kconn_rx_error(struct ktla_conn *c, int code)
{
    switch (code) {
    case KTLA_EKEYEXPIRED:
        if (kernel_resume_same_key(c))
            return kernel_recv_again(c);
        kconn_event(c, KTLA_EV_RX_STOPPED);
        return;
    case KTLA_EBADMAC:
        kconn_event(c, KTLA_EV_BAD_MAC);
        return;
    case KTLA_ERECORD_OVERFLOW:
        kconn_event(c, KTLA_EV_OVERFLOW);
        return;
    case KTLA_EBADVERSION:
        kconn_event(c, KTLA_EV_BAD_VERSION);
        return;
    default:
        conn_recv_done(c, code);
    }
}

static void kernel_recv_again(struct ktla_conn *c)
{
    if (conn_recv_submit_socket(c, c->rbuf, c->rlen) < 0)
        conn_recv_done(c, -EBUSY);
}

/*
 * A TLS 1.3 KeyUpdate from the peer in kernel mode (RFC 8446 §4.6.3). Kernels from 6.14 stop
 * decrypting after it until they get the next receive key; older ones cannot take one, and the
 * connection cannot go on. The update is invisible to the application: its receive continues.
 */
static void kernel_key_update(struct ktla_conn *c, uint8_t request_update)
{
    struct ktla_rekey *rk = c->rk;
    struct ktla_key k;
    int ret;

    if (!rk)
        return conn_recv_done(c, KTLA_ENOREKEY);
    uint64_t now = ktla_now_ns();
    if (now - rk->window_start_ns > KTLA_REKEY_WINDOW_NS) {
        rk->window_start_ns = now;
        rk->window_count = 0;
    }
    rk->window_count++;
    rk->in_a_row++;
    if (rk->window_count > KTLA_REKEY_MAX_PER_WINDOW || rk->in_a_row > KTLA_REKEY_MAX_IN_A_ROW)
        return conn_recv_done(c, KTLA_EREKEY_LIMIT);
    ret = ktla_secrets_update(&rk->sec, KTLA_DIR_RX, &k);
    if (ret == 0)
        ret = ktla_ktls_install(c->fd, KTLA_DIR_RX, &k);
    ktla_key_wipe(&k);
    if (ret < 0)
        return conn_recv_done(c, ret == KTLA_EALREADY ? KTLA_ENOREKEY : ret);
    c->info.key_updates_rx++;
    if (request_update == 1) { /* update_requested: ours goes out before anything else we send */
        rk->tx_due = true;
        kconn_rekey_tx(c);
    }
    kernel_recv_again(c);
}

/* Kernel mode, a handshake record: its messages in turn (they may also arrive in pieces). */
static void kernel_handshake_record(struct ktla_conn *c, const uint8_t *p, size_t n)
{
    size_t off = 0;
    do {
        enum ktla_event ev;
        uint8_t request_update = 0;
        off += ktla_hs_reader_feed(&c->hsr, p + off, n - off, &ev, &request_update);
        if (ev == KTLA_EV_COUNT)
            break; /* the message goes on in the next record */
        /* A KeyUpdate ends its record (the reader checked), so nothing follows it here. */
        if (ev == KTLA_EV_KEY_UPDATE && c->info.version == KTLA_TLS1_3)
            return kernel_key_update(c, request_update);
        if (!kconn_event(c, ev))
            return;
    } while (off < n);
    kernel_recv_again(c);
}

/* Kernel mode: the next record is not data. Read it with its type and act on it. */
void kconn_control_record(struct ktla_conn *c)
{
    uint8_t buf[KTLA_RECORD_MAX], type;
    ssize_t n = ktla_ktls_recv_record(c->fd, buf, sizeof(buf), &type, MSG_DONTWAIT);
    enum ktla_event ev;

    if (n == -EAGAIN) /* zero-length records only, consumed: nothing to act on yet */
        return kernel_recv_again(c);
    if (n < 0)
        return kconn_rx_error(c, (int)n);
    if (n == 0 && type == 0) /* no record at all: the end of the stream */
        return conn_recv_done(c, c->peer_closed ? 0 : KTLA_ETRUNCATED);
    /* RFC 8446 §5.1: no other record inside a handshake message that arrives in pieces. */
    if (ktla_hs_reader_busy(&c->hsr) && type != KTLA_RT_HANDSHAKE) {
        kconn_event(c, KTLA_EV_HS_INTERLEAVED);
        return;
    }
    switch (type) {
    case KTLA_RT_HANDSHAKE:
        return kernel_handshake_record(c, buf, (size_t)n);
    case KTLA_RT_ALERT:
        if (n == 0)
            ev = KTLA_EV_ALERT_EMPTY;
        else if (n != 2)
            ev = KTLA_EV_ALERT_MALFORMED;
        else if (buf[1] == KTLA_AD_CLOSE_NOTIFY)
            ev = KTLA_EV_ALERT_CLOSE_NOTIFY;
        else if (buf[1] == KTLA_AD_USER_CANCELED && (buf[0] == 1 || c->info.version == KTLA_TLS1_3))
            ev = KTLA_EV_ALERT_USER_CANCELED;
        else
            ev = buf[0] == 1 ? KTLA_EV_ALERT_WARNING : KTLA_EV_ALERT_FATAL;
        break;
    case KTLA_RT_CHANGE_CIPHER_SPEC:
        ev = KTLA_EV_CCS;
        break;
    case KTLA_RT_APPLICATION_DATA:
        /* A plain receive said the next record was not data; should the kernel still hand
         * data here, it goes where the receive wanted it. */
        if (n == 0) /* a zero-length record: allowed, and nothing to deliver */
            return kernel_recv_again(c);
        if ((size_t)n > c->rlen)
            return conn_recv_done(c, KTLA_EUNEXPECTED);
        memcpy(c->rbuf, buf, (size_t)n);
        return conn_recv_done(c, n);
    default:
        ev = KTLA_EV_UNKNOWN_TYPE;
        break;
    }
    if (kconn_event(c, ev))
        kernel_recv_again(c);
}

/*
 * Whether the file's bytes [off, off + len) are all in the page cache. sendfile(2) reads what
 * is not synchronously, on the ring's thread, even on a non-blocking socket: one file on a slow
 * disk would stall every connection and handshake of that thread. cachestat(2) says it in one
 * call (Linux 6.5+); before it, mincore(2) over a mapping of the range (mapping reads nothing).
 * When the answer is unknown, the range counts as cached: sendfile as before.
 */
static bool range_cached(int fd, uint64_t off, size_t len)
{
    long page = sysconf(_SC_PAGESIZE);
    uint64_t start = off & ~(uint64_t)(page - 1);
    size_t span = (size_t)(off + len - start), pages = (span + (size_t)page - 1) / (size_t)page;

    if (!atomic_load_explicit(&no_cachestat, memory_order_relaxed)) {
        struct {
            uint64_t off, len;
        } range = {start, span};
        struct {
            uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
        } cs;
        if (syscall(__NR_cachestat, fd, &range, &cs, 0) == 0)
            return cs.nr_cache >= pages;
        if (errno != ENOSYS)
            return true;
        atomic_store_explicit(&no_cachestat, true, memory_order_relaxed);
    }
    void *m = mmap(NULL, span, PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (m == MAP_FAILED)
        return true;
    unsigned char vec[SENDFILE_SLICE / 4096 + 2];
    bool cached = pages <= sizeof(vec) && mincore(m, span, vec) == 0;
    for (size_t i = 0; cached && i < pages; i++)
        cached = vec[i] & 1;
    munmap(m, span);
    return cached || pages > sizeof(vec);
}

/* Whether [off, off + len) of the file being sent is in the page cache, remembering what was
 * found. A send that continues where the previous one on the same descriptor stopped, inside
 * what was found cached, needs no new check; one that continues past it has a window of up to
 * RESIDENT_WINDOW checked at once (HTTP/2 sends a file as many 16 KiB frames, each its own
 * sendfile: one check per MiB rather than per frame). Only a continuation counts, so a
 * descriptor number reused for another file (which starts elsewhere) is checked afresh. */
#define RESIDENT_WINDOW (1u << 20)
static bool send_range_cached(struct ktla_conn *c, uint64_t off, size_t len)
{
    bool continues = c->resident_fd == c->file_fd && off == c->resident_next;
    if (continues && off + len <= c->resident_end)
        return true;
    uint64_t end = off + len;
    struct stat st;
    if (continues && len < RESIDENT_WINDOW && fstat(c->file_fd, &st) == 0 &&
        (uint64_t)st.st_size > end)
        end = (uint64_t)st.st_size - off > RESIDENT_WINDOW ? off + RESIDENT_WINDOW
                                                           : (uint64_t)st.st_size;
    if (!range_cached(c->file_fd, off, (size_t)(end - off))) {
        /* The window is not all cached: this send's own range may still be. */
        if (end == off + len || !range_cached(c->file_fd, off, len)) {
            c->resident_fd = -1;
            return false;
        }
        end = off + len;
    }
    c->resident_fd = c->file_fd;
    c->resident_next = off;
    c->resident_end = end;
    return true;
}

/* Kernel mode: sendfile(2) into the TLS socket until it is full, then wait for room. A range
 * not in the page cache goes through the splice path instead, whose file reads run on the
 * kernel's io-wq threads: a cold file then costs that connection time, not its worker. */
void kconn_sendfile_step(struct ktla_conn *c)
{
    size_t slice = 0;

    while (c->sdone < c->slen) {
        off_t off = (off_t)(c->file_off + c->sdone);
        size_t left = c->slen - c->sdone;
        size_t next = left < SENDFILE_SLICE ? left : SENDFILE_SLICE;
        if (!send_range_cached(c, (uint64_t)off, next) && kconn_splice_pipe(c)) {
            c->via_pipe = true;
            c->info.cold_sends++;
            return kconn_splice_step(c);
        }
        ssize_t n = sendfile(c->fd, c->file_fd, &off, next);
        if (n > 0) {
            if (c->resident_fd == c->file_fd)
                c->resident_next = (uint64_t)off; /* sendfile moved off past what it sent */
            conn_sent(c, (size_t)n);
            slice += (size_t)n;
            /* Yield now and then, so one large file does not starve other connections. */
            if (slice >= SENDFILE_SLICE && c->sdone < c->slen) {
                if (!conn_submit_pollout(c))
                    conn_send_done(c, -EBUSY);
                return;
            }
            continue;
        }
        if (n == 0) /* the file is shorter than promised */
            return conn_send_done(c, -ENODATA);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            if (!conn_submit_pollout(c))
                conn_send_done(c, -EBUSY);
            return;
        }
        return conn_send_done(c, ktla_ktls_error(errno, KTLA_OP_IO));
    }
    conn_send_done(c, (ssize_t)c->slen);
}

/*
 * Kernel mode, splice path: each step moves up to a pipe's worth, file -> pipe -> socket, as two
 * linked io_uring splices, so the ring's thread only submits and the kernel's io-wq threads read
 * the file and encrypt. The step ends when both have completed (in either order); a short read
 * breaks the link and cancels the second, and what it left in the pipe goes out in the next step.
 */
struct ktla_splice *kconn_splice_pipe(struct ktla_conn *c)
{
    if (c->sp)
        return c->sp;
    struct ktla_splice *sp = calloc(1, sizeof(*sp));
    int p[2];
    if (!sp)
        return NULL;
    /* Non-blocking: a splice that would wait on the pipe fails instead of holding a worker. */
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(sp);
        return NULL;
    }
    /* A bigger pipe means fewer steps; the system's limit (fs.pipe-max-size) may refuse it. */
    int cap = fcntl(p[1], F_SETPIPE_SZ, SPLICE_PIPE);
    if (cap < 0)
        cap = fcntl(p[1], F_GETPIPE_SZ);
    sp->r = p[0];
    sp->w = p[1];
    sp->cap = cap > 0 ? (size_t)cap : 65536;
    sp->in_op.conn = c;
    c->sp = sp;
    return sp;
}

void kconn_splice_step(struct ktla_conn *c)
{
    struct ktla_splice *sp = c->sp;
    size_t left = c->slen - c->sdone;

    if (!left)
        return conn_send_done(c, (ssize_t)c->slen);
    /* Both splices in one submission: flushed apart, the link would not hold. */
    if (io_uring_sq_space_left(c->ring) < 2 && io_uring_submit(c->ring) < 0)
        return conn_send_done(c, -EBUSY);
    struct io_uring_sqe *in = NULL, *out;
    size_t n = sp->fill;
    if (!n) {
        n = left < sp->cap ? left : sp->cap;
        in = io_uring_get_sqe(c->ring);
        io_uring_prep_splice(in, c->file_fd, (int64_t)(c->file_off + c->sdone), sp->w, -1,
                             (unsigned)n, 0);
        in->flags |= IOSQE_IO_LINK;
        conn_submit(c, in, &sp->in_op, KTLA_OP_SPLICE_IN);
    }
    out = io_uring_get_sqe(c->ring); /* there is room: checked above */
    /* MORE while the file goes on: the kernel then fills whole records across steps. */
    io_uring_prep_splice(out, sp->r, -1, c->fd, -1, (unsigned)n, n < left ? SPLICE_F_MORE : 0);
    conn_submit(c, out, &c->wop, KTLA_OP_SPLICE_OUT);
    sp->pending = in ? 2 : 1;
    sp->in_res = 0;
    sp->out_res = 0;
}

void kconn_on_splice(struct ktla_conn *c, enum ktla_op_kind kind, int res)
{
    struct ktla_splice *sp = c->sp;

    if (kind == KTLA_OP_SPLICE_IN)
        sp->in_res = res;
    else
        sp->out_res = res;
    if (--sp->pending)
        return;
    if (sp->in_res > 0)
        sp->fill += (size_t)sp->in_res;
    if (sp->in_res < 0)
        return conn_send_done(c, sp->in_res);
    if (sp->out_res > 0) {
        sp->fill -= (size_t)sp->out_res;
        conn_sent(c, (size_t)sp->out_res);
    } else if (sp->out_res == -EAGAIN) {
        /* The socket is full: wait for room, then the pipe's bytes go out first. */
        if (!conn_submit_pollout(c))
            conn_send_done(c, -EBUSY);
        return;
    } else if (sp->out_res == -ECANCELED && !sp->fill) {
        /* The read got nothing: the file is shorter than promised. */
        return conn_send_done(c, -ENODATA);
    } else if (sp->out_res == 0) {
        /* Nothing moved from a pipe that has bytes: never expected; stop rather than spin. */
        return conn_send_done(c, -EIO);
    } else if (sp->out_res < 0 && sp->out_res != -ECANCELED) {
        return conn_send_done(c, ktla_ktls_error(-sp->out_res, KTLA_OP_IO));
    }
    kconn_splice_step(c);
}

/* Kernel mode: starts (or resumes) the send described by sbuf/file_fd, slen and sdone. */
bool kconn_send_start(struct ktla_conn *c)
{
    if (c->head_off < c->head_len)
        return conn_submit_send_flags(c, c->head + c->head_off, c->head_len - c->head_off,
                                      MSG_MORE);
    if (c->file_fd >= 0 && c->via_pipe) {
        kconn_splice_step(c);
        return true;
    }
    if (c->file_fd >= 0)
        return conn_submit_pollout(c);
    return conn_submit_send(c, c->sbuf + c->sdone, c->slen - c->sdone);
}

/*
 * Our KeyUpdate (update_not_requested) under the current key, then the next transmit key: the
 * peer asked for it. Only while none of our sends is in flight, so that every byte after the
 * KeyUpdate goes under the new key; an application send that arrives while the KeyUpdate waits
 * for room is queued behind it.
 */
void kconn_rekey_tx(struct ktla_conn *c)
{
    static const uint8_t key_update[5] = {24, 0, 0, 1, 0};
    struct ktla_rekey *rk = c->rk;
    struct ktla_key k;
    ssize_t ret;

    if (!rk->tx_due || rk->tx_wait || (c->sbusy && !rk->send_queued))
        return;
    ret = ktla_ktls_send_record(c->fd, KTLA_RT_HANDSHAKE, key_update, sizeof(key_update),
                                MSG_DONTWAIT);
    if (ret == -EAGAIN) {
        struct io_uring_sqe *sqe = ktla_ring_sqe(c->ring);
        if (sqe) {
            io_uring_prep_poll_add(sqe, c->fd, POLLOUT);
            conn_submit(c, sqe, &c->wop, KTLA_OP_REKEY_POLLOUT);
            rk->tx_wait = true;
            return;
        }
        ret = -EBUSY;
    }
    if (ret == (ssize_t)sizeof(key_update)) {
        ret = ktla_secrets_update(&rk->sec, KTLA_DIR_TX, &k);
        if (ret == 0)
            ret = ktla_ktls_install(c->fd, KTLA_DIR_TX, &k);
        ktla_key_wipe(&k);
    } else if (ret >= 0) {
        ret = -EIO;
    }
    rk->tx_due = false;
    if (ret == 0)
        c->info.key_updates_tx++;
    else /* the peer now expects our next key, or never got our update: the stream is over */
        shutdown(c->fd, SHUT_RDWR);
    if (rk->send_queued) {
        rk->send_queued = false;
        if (ret < 0)
            conn_send_done(c, ret);
        else if (!kconn_send_start(c))
            conn_send_done(c, -EBUSY);
    }
}
