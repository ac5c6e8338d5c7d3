/*
 * The kernel-mode connection against a scripted kernel, on any host: every row of the alert
 * table (src/alert.c) driven through the real receive path (src/conn.c), with ktla_sys's
 * recvmsg answering from a script and its sendmsg recording what ktla sends. The guest runs the
 * same rows end to end against a real kernel (tests/conformance); this suite makes a broken row
 * fail here, without it.
 *
 * A connection is made by hand in kernel mode on one end of a socketpair, over a ring that is
 * never submitted: the receive ktla queues stays in the submission queue, and the test hands
 * ktla_conn_complete the completion the kernel would have produced (-EIO: a control record is
 * next; N: N bytes of data). The connection is destroyed directly at the end, so nothing queued
 * ever reaches the kernel.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <linux/tls.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "ktls.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

/* ---- the scripted kernel */

struct rec {
    int err;        /* recvmsg fails with this errno, or 0 */
    uint8_t type;   /* the record's content type */
    uint8_t data[8];
    size_t len;
};

static struct rec script[16];
static int nscript, next_rec;
static uint8_t sent[16][3]; /* type, level, description of each alert sent */
static int nsent;
static int send_failures; /* the next sends fail with EBADMSG (the socket's error after a
                             failed decryption), until SO_ERROR is read */
static int so_error_reads;
static int send_eagain;      /* the next sends find no room (EAGAIN) */
static int send_errno;       /* then, when not 0, every send fails with this */

static ssize_t fake_recvmsg(int fd, struct msghdr *msg, int flags)
{
    (void)fd;
    (void)flags;
    if (next_rec >= nscript) {
        errno = EAGAIN;
        return -1;
    }
    const struct rec *r = &script[next_rec++];
    if (r->err) {
        errno = r->err;
        return -1;
    }
    cr_assert(msg->msg_iovlen == 1 && msg->msg_iov[0].iov_len >= r->len);
    memcpy(msg->msg_iov[0].iov_base, r->data, r->len);
    cr_assert(msg->msg_controllen >= CMSG_SPACE(1));
    struct cmsghdr *c = CMSG_FIRSTHDR(msg);
    c->cmsg_level = SOL_TLS;
    c->cmsg_type = TLS_GET_RECORD_TYPE;
    c->cmsg_len = CMSG_LEN(1);
    *CMSG_DATA(c) = r->type;
    msg->msg_controllen = CMSG_SPACE(1);
    return (ssize_t)r->len;
}

static ssize_t fake_sendmsg(int fd, const struct msghdr *msg, int flags)
{
    (void)fd;
    (void)flags;
    if (send_failures) {
        errno = EBADMSG;
        return -1;
    }
    if (send_eagain || send_errno) {
        errno = send_eagain ? EAGAIN : send_errno;
        send_eagain -= send_eagain > 0;
        return -1;
    }
    uint8_t type = 23;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR((struct msghdr *)msg, c))
        if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_SET_RECORD_TYPE)
            type = *CMSG_DATA(c);
    size_t len = msg->msg_iov[0].iov_len;
    const uint8_t *p = msg->msg_iov[0].iov_base;
    cr_assert(nsent < 16);
    sent[nsent][0] = type;
    sent[nsent][1] = len > 0 ? p[0] : 0xff;
    sent[nsent][2] = len > 1 ? p[1] : 0xff;
    nsent++;
    return (ssize_t)len;
}

static int fake_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    if (level == SOL_SOCKET && name == SO_ERROR) {
        so_error_reads++;
        send_failures = 0; /* reading it clears the socket's error */
        *(int *)val = 0;
        return 0;
    }
    return ktla_sys_libc.getsockopt(fd, level, name, val, len);
}

/* ---- a kernel-mode connection by hand */

static struct io_uring ring;
static struct ktla_conn *conn;
static int peer_fd;
static ssize_t result;
static int calls;
static uint8_t rbuf[64];

static void on_recv(struct ktla_conn *c, ssize_t n, void *arg)
{
    (void)c;
    (void)arg;
    result = n;
    calls++;
}

static void setup_conn(uint16_t version)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    peer_fd = sv[1];
    cr_assert_eq(io_uring_queue_init(64, &ring, 0), 0);
    conn = calloc(1, sizeof(*conn));
    cr_assert(conn);
    conn->ring = &ring;
    conn->fd = sv[0];
    conn->state = KTLA_CONN_ESTABLISHED;
    conn->info.version = version;
    conn->info.tx_mode = conn->info.rx_mode = KTLA_MODE_KERNEL;
    conn->rop.conn = conn->wop.conn = conn;
    conn->file_fd = -1;
    nscript = next_rec = nsent = send_failures = so_error_reads = calls = 0;
    send_eagain = send_errno = 0;
    result = 12345;
    ktla_sys.recvmsg = fake_recvmsg;
    ktla_sys.sendmsg = fake_sendmsg;
    ktla_sys.getsockopt = fake_getsockopt;
    cr_assert_eq(ktla_conn_recv(conn, rbuf, sizeof(rbuf), on_recv, NULL), 0);
}

static void teardown_conn(void)
{
    ktla_sys = ktla_sys_libc;
    if (conn)
        ktla_conn_destroy(conn);
    conn = NULL;
    io_uring_queue_exit(&ring);
    close(peer_fd);
}

/* What the kernel's receive completion would say: -EIO (a control record is next), or data. */
static void complete_recv(int res)
{
    struct io_uring_cqe cqe = {.res = res};
    cr_assert(conn->rbusy, "no receive in flight to complete");
    ktla_conn_complete(&conn->rop, &cqe);
}

static void add(int err, uint8_t type, const void *data, size_t len)
{
    cr_assert(nscript < 16 && len <= sizeof(script[0].data));
    script[nscript].err = err;
    script[nscript].type = type;
    if (len)
        memcpy(script[nscript].data, data, len);
    script[nscript].len = len;
    nscript++;
}

/* Each record in turn: the receive is completed with -EIO, ktla reads the record. */
static void deliver_all(void)
{
    while (next_rec < nscript && conn->rbusy)
        complete_recv(-EIO);
}

#define GOES_ON 1 /* no callback: the receive carries on */

static void expect(const char *what, int want, int level, int desc)
{
    if (want == GOES_ON) {
        cr_assert_eq(calls, 0, "%s: the receive ended with %s", what, ktla_err_name((int)result));
        cr_assert(conn->rbusy, "%s: no receive carries on", what);
        /* ...and it still delivers data: the connection lives. */
        complete_recv(5);
        cr_assert(calls == 1 && result == 5, "%s: data after it was not delivered", what);
    } else {
        cr_assert_eq(calls, 1, "%s: the receive did not end", what);
        cr_assert_eq(result, want, "%s: ended with %s, not %s", what, ktla_err_name((int)result),
                     ktla_err_name(want));
    }
    if (level) {
        cr_assert_eq(nsent, 1, "%s: %d alerts sent, want 1", what, nsent);
        cr_assert(sent[0][0] == 21 && sent[0][1] == level && sent[0][2] == desc,
                  "%s: sent type %u alert %u/%u, want alert %d/%d", what, sent[0][0], sent[0][1],
                  sent[0][2], level, desc);
    } else {
        cr_assert_eq(nsent, 0, "%s: an alert %u/%u was sent, want none", what, sent[0][1],
                     sent[0][2]);
    }
}

TestSuite(kernel_conn, .fini = teardown_conn);

#define V12 KTLA_TLS1_2
#define V13 KTLA_TLS1_3

/* ---- errors of the kernel's receive: RFC 5246 7.2.2, RFC 8446 5.2 */

static void rx_error(uint16_t v, int err, int want, int desc)
{
    setup_conn(v);
    complete_recv(-err);
    expect(strerror(err), want, 2, desc);
    cr_assert(conn->fatal_sent);
}

Test(kernel_conn, bad_mac_is_fatal_bad_record_mac)
{
    rx_error(V12, EBADMSG, KTLA_EBADMAC, 20);
    teardown_conn();
    rx_error(V13, EBADMSG, KTLA_EBADMAC, 20);
}

Test(kernel_conn, oversized_record_is_fatal_record_overflow)
{
    rx_error(V12, EMSGSIZE, KTLA_ERECORD_OVERFLOW, 22);
    teardown_conn();
    rx_error(V13, EMSGSIZE, KTLA_ERECORD_OVERFLOW, 22);
}

Test(kernel_conn, refused_record_header_is_protocol_version_or_decode_error)
{
    rx_error(V12, EINVAL, KTLA_EBADVERSION, 70);
    teardown_conn();
    rx_error(V13, EINVAL, KTLA_EBADVERSION, 50);
}

/* A kernel (6.14+) that stopped receiving after a handshake record beginning with 24, where the
 * connection has no secrets to set the same key again (TLS 1.2): it cannot go on. */
Test(kernel_conn, a_receive_the_kernel_stopped_for_good_is_unexpected_message)
{
    rx_error(V12, EKEYEXPIRED, KTLA_EUNEXPECTED, 10);
}

Test(kernel_conn, the_socket_error_is_cleared_so_the_alert_goes_out)
{
    setup_conn(V13);
    send_failures = 1; /* the kernel left EBADMSG on the socket */
    complete_recv(-EBADMSG);
    expect("EBADMSG with the socket's error set", KTLA_EBADMAC, 2, 20);
    cr_assert_eq(so_error_reads, 1);
}

Test(kernel_conn, a_bad_mac_while_reading_a_control_record_is_answered_too)
{
    setup_conn(V12);
    add(EBADMSG, 0, NULL, 0);
    deliver_all();
    expect("EBADMSG from recvmsg", KTLA_EBADMAC, 2, 20);
}

/* ---- alerts: RFC 5246 7.2, RFC 8446 5.1, 6 */

static void alert(uint16_t v, const uint8_t *a, size_t len, int want, int level, int desc)
{
    setup_conn(v);
    add(0, 21, a, len);
    deliver_all();
    expect("alert", want, level, desc);
}

Test(kernel_conn, close_notify_ends_the_stream_with_nothing_sent)
{
    static const uint8_t cn[2] = {1, 0};
    alert(V12, cn, 2, 0, 0, 0);
    cr_assert(conn->peer_closed);
    teardown_conn();
    alert(V13, cn, 2, 0, 0, 0);
}

Test(kernel_conn, malformed_alerts_are_fatal)
{
    static const uint8_t three[3] = {2, 40, 0};
    alert(V13, NULL, 0, KTLA_EUNEXPECTED, 2, 10);
    teardown_conn();
    alert(V13, three, 3, KTLA_EUNEXPECTED, 2, 50);
    teardown_conn();
    alert(V12, three, 1, KTLA_EUNEXPECTED, 2, 50);
}

Test(kernel_conn, warnings_leave_tls12_usable_and_end_tls13_but_user_canceled)
{
    static const uint8_t warn[2] = {1, 40}, canceled[2] = {1, 90}, fatal[2] = {2, 40};
    alert(V12, warn, 2, GOES_ON, 0, 0);
    teardown_conn();
    alert(V12, canceled, 2, GOES_ON, 0, 0);
    teardown_conn();
    alert(V13, canceled, 2, GOES_ON, 0, 0);
    teardown_conn();
    alert(V13, warn, 2, KTLA_EALERT, 0, 0);
    teardown_conn();
    alert(V12, fatal, 2, KTLA_EALERT, 0, 0);
    teardown_conn();
    alert(V13, fatal, 2, KTLA_EALERT, 0, 0);
}

/* ---- other record types: RFC 5246 6, 7.1; RFC 8446 5 */

Test(kernel_conn, change_cipher_spec_and_unknown_types_are_unexpected)
{
    static const uint8_t one[1] = {1};
    setup_conn(V12);
    add(0, 20, one, 1);
    deliver_all();
    expect("ChangeCipherSpec", KTLA_EUNEXPECTED, 2, 10);
    teardown_conn();
    setup_conn(V13);
    add(0, 25, one, 1);
    deliver_all();
    expect("type 25", KTLA_EUNEXPECTED, 2, 10);
}

/* ---- handshake messages: RFC 5246 7.4, RFC 5746 4.4; RFC 8446 4.6.3, 5.1 */

static void handshake(uint16_t v, const uint8_t *m, size_t len, int want, int level, int desc)
{
    setup_conn(v);
    add(0, 22, m, len);
    deliver_all();
    expect("handshake", want, level, desc);
}

static const uint8_t client_hello[6] = {1, 0, 0, 2, 3, 3};

Test(kernel_conn, renegotiation_gets_a_warning_and_the_connection_goes_on)
{
    handshake(V12, client_hello, sizeof(client_hello), GOES_ON, 1, 100);
}

Test(kernel_conn, renegotiation_in_one_byte_records_is_answered_once_whole)
{
    setup_conn(V12);
    for (size_t i = 0; i < sizeof(client_hello); i++)
        add(0, 22, client_hello + i, 1);
    deliver_all();
    cr_assert_eq(next_rec, nscript, "not every piece was read");
    expect("ClientHello in 1-byte records", GOES_ON, 1, 100);
}

Test(kernel_conn, a_second_client_hello_ends_tls13)
{
    handshake(V13, client_hello, sizeof(client_hello), KTLA_EUNEXPECTED, 2, 10);
}

Test(kernel_conn, hello_request_and_other_messages_from_a_client_are_unexpected)
{
    static const uint8_t hello_request[4] = {0, 0, 0, 0}, ticket[5] = {4, 0, 0, 1, 0},
                         key_update[5] = {24, 0, 0, 1, 0};
    handshake(V12, hello_request, 4, KTLA_EUNEXPECTED, 2, 10);
    teardown_conn();
    handshake(V13, hello_request, 4, KTLA_EUNEXPECTED, 2, 10);
    teardown_conn();
    handshake(V13, ticket, 5, KTLA_EUNEXPECTED, 2, 10);
    teardown_conn();
    handshake(V12, key_update, 5, KTLA_EUNEXPECTED, 2, 10); /* no KeyUpdate in TLS 1.2 */
    teardown_conn();
    handshake(V13, NULL, 0, KTLA_EUNEXPECTED, 2, 10); /* an empty handshake record */
}

Test(kernel_conn, malformed_key_updates_get_their_own_alerts)
{
    static const uint8_t bad_param[5] = {24, 0, 0, 1, 2}, long_body[6] = {24, 0, 0, 2, 0, 0},
                         trailing[6] = {24, 0, 0, 1, 0, 24};
    handshake(V13, bad_param, 5, KTLA_EUNEXPECTED, 2, 47);
    teardown_conn();
    handshake(V13, long_body, 6, KTLA_EUNEXPECTED, 2, 50);
    teardown_conn();
    handshake(V13, trailing, 6, KTLA_EUNEXPECTED, 2, 10); /* not at a record boundary */
}

Test(kernel_conn, a_key_update_this_kernel_cannot_follow_ends_without_an_alert)
{
    static const uint8_t ku[5] = {24, 0, 0, 1, 0};
    handshake(V13, ku, 5, KTLA_ENOREKEY, 0, 0); /* conn->rk NULL: a kernel before 6.14 */
}

Test(kernel_conn, nothing_may_come_between_the_pieces_of_a_handshake_message)
{
    static const uint8_t half[2] = {24, 0}, cn[2] = {1, 0};
    setup_conn(V13);
    add(0, 22, half, 2);
    deliver_all();
    cr_assert(conn->rbusy && calls == 0);
    complete_recv(5); /* application data */
    expect("data inside a KeyUpdate", KTLA_EUNEXPECTED, 2, 10);
    teardown_conn();
    setup_conn(V13);
    add(0, 22, half, 2);
    add(0, 21, cn, 2);
    deliver_all();
    expect("an alert inside a KeyUpdate", KTLA_EUNEXPECTED, 2, 10);
}

/* ---- the graceful end (ktla_conn_shutdown) in kernel mode */

/* Zero-length records are allowed (RFC 8446 5.4, RFC 5246 6.2.1) and are not the peer's end of
 * the stream: the linger reads past them to the real end, or closing would leave input unread
 * (and the kernel would answer it with a reset that can destroy our response on its way). */
Test(kernel_conn, the_linger_reads_past_zero_length_records_to_the_end)
{
    setup_conn(V13);
    add(0, 23, NULL, 0);
    add(0, 21, NULL, 0);
    add(0, 23, "abc", 3);
    add(0, 0, NULL, 0); /* no record at all: the end of the stream */
    cr_assert_eq(ktla_conn_shutdown(conn, 1000, NULL, NULL), 0);
    struct io_uring_cqe cqe = {.res = 0};
    ktla_conn_complete(&conn->lop, &cqe); /* the linger's first step */
    cr_assert_eq(nsent, 1, "%d records sent, want our close_notify", nsent);
    cr_assert(sent[0][0] == 21 && sent[0][1] == 1 && sent[0][2] == 0, "sent %u %u/%u",
              sent[0][0], sent[0][1], sent[0][2]);
    cr_assert_eq(next_rec, nscript, "the linger stopped after %d of %d records", next_rec,
                 nscript);
    cr_assert_eq(conn->linger_dropped, 3u);
    cr_assert_eq(conn->fd, -1, "the socket is still open after the peer's end");
    cr_assert_eq(conn->close_result, 0, "ended with %s", ktla_err_name(conn->close_result));
}

/*
 * A client that half-closed right after its request (close_notify and FIN: `s_client -ign_eof`,
 * a shell pipe) still reads the response. Its FIN read while our close_notify waits for room
 * must not end the linger: the close_notify goes out once there is room, then the socket closes
 * (6.17 guests under load lost it: the client saw a FIN without close_notify).
 */
Test(kernel_conn, a_half_closed_peer_still_gets_our_close_notify)
{
    static const uint8_t their_close_notify[2] = {1, 0};
    setup_conn(V13);
    add(0, 21, their_close_notify, 2);
    add(0, 0, NULL, 0); /* their FIN */
    send_eagain = 1;    /* the response still fills the socket */
    cr_assert_eq(ktla_conn_shutdown(conn, 1000, NULL, NULL), 0);
    struct io_uring_cqe cqe = {.res = 0};
    ktla_conn_complete(&conn->lop, &cqe); /* the linger's first step: no room, their FIN read */
    cr_assert_eq(next_rec, nscript, "the peer's close_notify and FIN were not read");
    cr_assert_neq(conn->fd, -1, "closed after the peer's FIN with our close_notify unsent (%s)",
                  ktla_err_name(conn->close_result));
    cr_assert_eq(nsent, 0);
    struct io_uring_cqe room = {.res = POLLOUT};
    ktla_conn_complete(&conn->lop, &room); /* the poll: room for it now */
    cr_assert_eq(nsent, 1, "%d records sent, want our close_notify", nsent);
    cr_assert(sent[0][0] == 21 && sent[0][1] == 1 && sent[0][2] == 0, "sent %u %u/%u",
              sent[0][0], sent[0][1], sent[0][2]);
    cr_assert_eq(conn->fd, -1, "the socket is still open with both ends closed");
    cr_assert_eq(conn->close_result, 0, "ended with %s", ktla_err_name(conn->close_result));
}

/* ...and when the peer is gone altogether (our send is refused), the linger ends with why. */
Test(kernel_conn, a_peer_gone_while_our_close_notify_waits_ends_with_the_reason)
{
    static const uint8_t their_close_notify[2] = {1, 0};
    setup_conn(V13);
    add(0, 21, their_close_notify, 2);
    add(0, 0, NULL, 0);
    send_eagain = 1;
    cr_assert_eq(ktla_conn_shutdown(conn, 1000, NULL, NULL), 0);
    struct io_uring_cqe cqe = {.res = 0};
    ktla_conn_complete(&conn->lop, &cqe);
    cr_assert_neq(conn->fd, -1);
    send_errno = ECONNRESET; /* its kernel answered our data with a reset */
    struct io_uring_cqe err = {.res = POLLOUT | POLLERR};
    ktla_conn_complete(&conn->lop, &err);
    cr_assert_eq(conn->fd, -1, "the socket is still open after the reset");
    cr_assert_eq(conn->close_result, -ECONNRESET, "ended with %s",
                 ktla_err_name(conn->close_result));
}
