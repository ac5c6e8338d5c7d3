/*
 * echo: a TLS echo server on ktla. It accepts connections on 127.0.0.1, lets the kernel take the
 * record layer where it can, and sends back whatever each client sends.
 *
 * usage: echo --cert FILE --key FILE [--port N]      (port 0, the default, picks a free one)
 *   try: openssl s_client -connect 127.0.0.1:PORT -quiet
 *
 * The acceptor runs its own io_uring here (ktla_acceptor_run); shared-ring/ shows how an
 * application shares its ring with ktla instead.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ktla.h>

/* One per connection: the buffer a receive fills and the send then sends back, and the links
 * of the list of open connections, which are closed before the acceptor goes. */
struct echo {
    struct ktla_conn *conn;
    struct echo *prev, *next;
    char buf[16384];
};

static struct echo *open_conns;
static unsigned closing; /* closed, until ktla says nothing of them is in flight */

static void on_recv(struct ktla_conn *conn, ssize_t n, void *arg);

/* Nothing of the connection is in flight any more (on every kernel): its buffer may go. */
static void gone(struct ktla_conn *conn, int result, void *arg)
{
    (void)conn;
    (void)result;
    closing--;
    free(arg);
}

static void finish(struct ktla_conn *conn, struct echo *e)
{
    if (!e) {
        ktla_conn_close(conn);
        return;
    }
    if (e->prev)
        e->prev->next = e->next;
    else
        open_conns = e->next;
    if (e->next)
        e->next->prev = e->prev;
    closing++;
    ktla_conn_close_then(conn, gone, e); /* no other callback of conn runs after this */
}

static void on_sent(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct echo *e = arg;
    if (n < 0 || ktla_conn_recv(conn, e->buf, sizeof(e->buf), on_recv, e) < 0)
        finish(conn, e);
}

static void on_recv(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct echo *e = arg;
    /* n == 0: the client sent close_notify; n < 0: an error (ktla_strerror says which). */
    if (n <= 0 || ktla_conn_send(conn, e->buf, (size_t)n, on_sent, e) < 0)
        finish(conn, e);
}

static void on_conn(struct ktla_conn *conn, void *arg)
{
    const struct ktla_conn_info *i = ktla_conn_get_info(conn);
    struct echo *e = calloc(1, sizeof(*e));
    (void)arg;

    printf("%s %s %s tx=%s rx=%s%s%s\n", i->peer, i->version == KTLA_TLS1_3 ? "TLSv1.3" : "TLSv1.2",
           i->cipher_name, i->tx_mode == KTLA_MODE_KERNEL ? "kernel" : "userspace",
           i->rx_mode == KTLA_MODE_KERNEL ? "kernel" : "userspace",
           i->tx_reason ? " because " : "", i->tx_reason ? ktla_strerror(i->tx_reason) : "");
    fflush(stdout);
    if (e) {
        e->conn = conn;
        e->next = open_conns;
        if (open_conns)
            open_conns->prev = e;
        open_conns = e;
    }
    if (!e || ktla_conn_recv(conn, e->buf, sizeof(e->buf), on_recv, e) < 0)
        finish(conn, e);
}

static void on_fail(const char *peer, int code, const char *detail, void *arg)
{
    (void)arg;
    if (code != KTLA_ECLOSED) /* KTLA_ECLOSED: our own ktla_acceptor_free */
        fprintf(stderr, "%s: handshake failed: %s %s\n", peer, ktla_strerror(code), detail);
}

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

/* A listening socket on 127.0.0.1:port; prints the port it got. -1 on failure. */
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
        perror("listen");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    return fd;
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL;
    int port = 0, status = 1;

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

    struct ktla_cert_config cc = {.cert_file = cert, .key_file = key};
    struct ktla_ctx_config cfg = {.certs = &cc, .ncerts = 1};
    struct ktla_ctx *ctx;
    int ret = ktla_ctx_new(&cfg, &ctx);
    if (ret < 0) {
        fprintf(stderr, "echo: %s\n", ktla_strerror(ret));
        return 1;
    }
    int lfd = listen_loopback(port);
    if (lfd < 0)
        goto free_ctx;

    struct ktla_acceptor_config ac = {
        .listen_fd = lfd, .ctx = ctx, .on_conn = on_conn, .on_fail = on_fail};
    struct ktla_acceptor *acc;
    ret = ktla_acceptor_new(&ac, &acc);
    if (ret < 0) {
        fprintf(stderr, "echo: %s\n", ktla_strerror(ret));
        goto close_listener;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    while (!stop)
        ktla_acceptor_run(acc, 200);

    /* Connections run on the acceptor's ring: close them, and run the ring until ktla says each
     * is gone, before ktla_acceptor_free ends it. */
    while (open_conns)
        finish(open_conns->conn, open_conns);
    while (closing && ktla_acceptor_run(acc, 1000) >= 0)
        ;
    ktla_acceptor_free(acc);
    status = 0;

close_listener:
    close(lfd);
free_ctx:
    ktla_ctx_free(ctx); /* the acceptor held its own reference */
    return status;
}
