/*
 * shared-ring: an application that runs its own io_uring and lends it to ktla. Its own work (a
 * one-second timer, and a signalfd that says when to stop) and ktla's (accepts, handshakes,
 * connection I/O) complete on the same ring; ktla_dispatch tells them apart. Each HTTPS request
 * gets a short text answer saying how many connections and ticks the process has seen.
 *
 * usage: shared-ring --cert FILE --key FILE [--port N]       (port 0, the default: a free one)
 *   try: curl --insecure https://127.0.0.1:PORT/
 *
 * The rules for sharing a ring (include/ktla.h, ktla_dispatch(3), ktla_submit_if_late(3)):
 * - the application's user_data keeps bit 0 clear (a pointer to its own struct does): ktla sets
 *   it on its own submissions;
 * - every completion goes to ktla_dispatch first; 1 means it was ktla's and is handled;
 * - one turn handles only the completions ready when it began, and calls ktla_submit_if_late
 *   after each, so that a turn of many handshakes does not hold their answers until its end.
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ktla.h>

/* The application's own operations on the ring: their addresses are the user_data. */
struct op {
    int kind;
};
enum { OP_TICK, OP_SIGNAL, OP_CANCEL };

struct app {
    struct io_uring ring;
    struct ktla_acceptor *acc;
    struct op tick, signal, cancel;
    struct __kernel_timespec second;
    struct signalfd_siginfo si;
    int sfd;
    unsigned own_inflight;
    unsigned ktla_alive; /* the acceptor and closed connections ktla has not said are gone */
    unsigned long ticks, served;
    struct conn *conns; /* open connections, closed when the application stops */
    int stopping;
};

/* One per connection. */
struct conn {
    struct app *app;
    struct ktla_conn *kc;
    struct conn *prev, *next;
    size_t len;
    char buf[4096];
};

/* ktla says nothing of the connection is in flight any more: its buffer may go. */
static void conn_gone(struct ktla_conn *kc, int result, void *arg)
{
    struct conn *c = arg;
    (void)kc;
    (void)result;
    c->app->ktla_alive--;
    free(c);
}

static void conn_done(struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->app->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->app->ktla_alive++;
    ktla_conn_close_then(c->kc, conn_gone, c); /* no other callback of kc after this */
}

static void on_sent(struct ktla_conn *kc, ssize_t n, void *arg)
{
    (void)kc;
    (void)n;
    conn_done(arg);
}

static void on_recv(struct ktla_conn *kc, ssize_t n, void *arg)
{
    struct conn *c = arg;
    if (n <= 0) {
        conn_done(c);
        return;
    }
    c->len += (size_t)n;
    if (!memmem(c->buf, c->len, "\r\n\r\n", 4)) {
        if (c->len == sizeof(c->buf) ||
            ktla_conn_recv(kc, c->buf + c->len, sizeof(c->buf) - c->len, on_recv, c) < 0)
            conn_done(c);
        return;
    }
    char body[256];
    int blen = snprintf(body, sizeof(body), "hello from a shared ring: connection %lu, tick %lu\n",
                        ++c->app->served, c->app->ticks);
    c->len = (size_t)snprintf(c->buf, sizeof(c->buf),
                              "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                              blen, body);
    if (ktla_conn_send(kc, c->buf, c->len, on_sent, c) < 0)
        conn_done(c);
}

static void on_conn(struct ktla_conn *kc, void *arg)
{
    struct app *app = arg;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        ktla_conn_close(kc);
        return;
    }
    c->app = app;
    c->kc = kc;
    c->next = app->conns;
    if (app->conns)
        app->conns->prev = c;
    app->conns = c;
    if (ktla_conn_recv(kc, c->buf, sizeof(c->buf), on_recv, c) < 0)
        conn_done(c);
}

static void on_fail(const char *peer, int code, const char *detail, void *arg)
{
    (void)arg;
    if (code != KTLA_ECLOSED) /* KTLA_ECLOSED: our own ktla_acceptor_free */
        fprintf(stderr, "%s: handshake failed: %s %s\n", peer, ktla_strerror(code), detail);
}

static struct io_uring_sqe *own_sqe(struct app *app, struct op *op)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&app->ring);
    if (!sqe) {
        io_uring_submit(&app->ring);
        sqe = io_uring_get_sqe(&app->ring);
    }
    if (sqe) {
        io_uring_sqe_set_data(sqe, op); /* a pointer: bit 0 clear, so not ktla's */
        app->own_inflight++;
    }
    return sqe;
}

static void arm_tick(struct app *app)
{
    struct io_uring_sqe *sqe = own_sqe(app, &app->tick);
    if (sqe)
        io_uring_prep_timeout(sqe, &app->second, 0, 0);
}

static void arm_signal(struct app *app)
{
    struct io_uring_sqe *sqe = own_sqe(app, &app->signal);
    if (sqe)
        io_uring_prep_read(sqe, app->sfd, &app->si, sizeof(app->si), 0);
}

static void acceptor_gone(void *arg)
{
    struct app *app = arg;
    app->ktla_alive--;
}

static void begin_stop(struct app *app)
{
    struct io_uring_sqe *sqe;
    app->stopping = 1;
    app->ktla_alive++;
    /* Cancels its accepts; it goes once they are back, and says so. */
    ktla_acceptor_free_then(app->acc, acceptor_gone, app);
    while (app->conns)
        conn_done(app->conns);
    if ((sqe = own_sqe(app, &app->cancel)))
        io_uring_prep_timeout_remove(sqe, (__u64)(uintptr_t)&app->tick, 0);
}

static void own_complete(struct app *app, const struct io_uring_cqe *cqe)
{
    struct op *op = io_uring_cqe_get_data(cqe);
    app->own_inflight--;
    if (op == &app->tick) {
        if (cqe->res == -ETIME)
            app->ticks++;
        if (!app->stopping)
            arm_tick(app);
    } else if (op == &app->signal && cqe->res == sizeof(app->si)) {
        printf("signal %u: stopping after %lu connections\n", app->si.ssi_signo, app->served);
        fflush(stdout);
        begin_stop(app);
    }
}

/* One turn: the completions that were ready when it began, ktla's and ours. */
static void handle_completions(struct app *app)
{
    struct io_uring_cqe *cqe;
    uint64_t mark = 0;
    for (unsigned n = io_uring_cq_ready(&app->ring); n && io_uring_peek_cqe(&app->ring, &cqe) == 0;
         n--) {
        /* Marked seen before it is handled: a callback may submit and reap on this ring. */
        struct io_uring_cqe copy = *cqe;
        io_uring_cqe_seen(&app->ring, cqe);
        if (!ktla_dispatch(&copy))
            own_complete(app, &copy);
        ktla_submit_if_late(&app->ring, &mark);
    }
}

static int listen_loopback(int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 512) < 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) < 0) {
        perror("shared-ring: listen");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    printf("listening on https://127.0.0.1:%d/\n", ntohs(addr.sin_port));
    fflush(stdout);
    return fd;
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL;
    int port = 0, status = 1, ret;
    struct app app = {.tick = {OP_TICK}, .signal = {OP_SIGNAL}, .cancel = {OP_CANCEL},
                      .second = {.tv_sec = 1}};

    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--cert"))
            cert = argv[i + 1];
        else if (!strcmp(argv[i], "--key"))
            key = argv[i + 1];
        else if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
    }
    if (!cert || !key) {
        fprintf(stderr, "usage: %s --cert FILE --key FILE [--port N]\n", argv[0]);
        return 2;
    }

    /* SIGINT and SIGTERM arrive as reads on the ring, like everything else. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    app.sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (app.sfd < 0) {
        perror("shared-ring: signalfd");
        return 1;
    }
    ret = io_uring_queue_init(256, &app.ring, 0);
    if (ret < 0) {
        fprintf(stderr, "shared-ring: io_uring_queue_init: %s\n", ktla_strerror(ret));
        goto close_signalfd;
    }

    struct ktla_cert_config cc = {.cert_file = cert, .key_file = key};
    struct ktla_ctx_config cfg = {.certs = &cc, .ncerts = 1};
    struct ktla_ctx *ctx;
    ret = ktla_ctx_new(&cfg, &ctx);
    if (ret < 0) {
        fprintf(stderr, "shared-ring: %s\n", ktla_strerror(ret));
        goto exit_ring;
    }
    int lfd = listen_loopback(port);
    if (lfd < 0)
        goto free_ctx;
    struct ktla_acceptor_config ac = {.listen_fd = lfd,
                                      .ctx = ctx,
                                      .ring = &app.ring, /* ours: ktla only submits to it */
                                      .on_conn = on_conn,
                                      .on_fail = on_fail,
                                      .arg = &app};
    ret = ktla_acceptor_new(&ac, &app.acc);
    if (ret < 0) {
        fprintf(stderr, "shared-ring: %s\n", ktla_strerror(ret));
        goto close_listener;
    }

    arm_tick(&app);
    arm_signal(&app);
    /* Until ours are back (the signal read is not re-armed, the tick was cancelled) and ktla
     * has said that the acceptor and every connection are gone: then the ring may go. */
    while (!app.stopping || app.own_inflight || app.ktla_alive) {
        ret = io_uring_submit_and_wait(&app.ring, 1);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
            fprintf(stderr, "shared-ring: io_uring: %s\n", ktla_strerror(ret));
            break;
        }
        handle_completions(&app);
    }
    status = 0;

close_listener:
    close(lfd);
free_ctx:
    ktla_ctx_free(ctx);
exit_ring:
    io_uring_queue_exit(&app.ring);
close_signalfd:
    close(app.sfd);
    return status;
}
