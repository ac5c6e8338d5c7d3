/*
 * ktla-echo: the smallest whole program on ktla. It accepts TLS connections, lets the kernel take
 * the record layer where it can, and echoes whatever each client sends.
 *
 * usage: ktla-echo --cert FILE --key FILE [--port N] [--ktls auto|require|off]
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

struct echo {
    char buf[16384];
};

static void on_recv(struct ktla_conn *conn, ssize_t n, void *arg);

static void on_sent(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct echo *e = arg;
    if (n < 0 || ktla_conn_recv(conn, e->buf, sizeof(e->buf), on_recv, e) < 0) {
        ktla_conn_close(conn);
        free(e);
    }
}

static void on_recv(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct echo *e = arg;
    /* n == 0: the client said close_notify; n < 0: an error (ktla_strerror says which). */
    if (n <= 0 || ktla_conn_send(conn, e->buf, (size_t)n, on_sent, e) < 0) {
        ktla_conn_close(conn);
        free(e);
    }
}

static void on_conn(struct ktla_conn *conn, void *arg)
{
    const struct ktla_conn_info *i = ktla_conn_get_info(conn);
    struct echo *e = malloc(sizeof(*e));
    (void)arg;

    printf("%s %s %s tx=%s rx=%s%s%s\n", i->peer, i->version == KTLA_TLS1_3 ? "TLSv1.3" : "TLSv1.2",
           i->cipher_name, i->tx_mode == KTLA_MODE_KERNEL ? "kernel" : "userspace",
           i->rx_mode == KTLA_MODE_KERNEL ? "kernel" : "userspace", i->tx_reason ? " because " : "",
           i->tx_reason ? ktla_strerror(i->tx_reason) : "");
    fflush(stdout);
    if (!e || ktla_conn_recv(conn, e->buf, sizeof(e->buf), on_recv, e) < 0) {
        ktla_conn_close(conn);
        free(e);
    }
}

static void on_fail(const char *peer, int code, const char *detail, void *arg)
{
    (void)arg;
    fprintf(stderr, "%s: handshake failed: %s %s\n", peer, ktla_strerror(code), detail);
}

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL, *policy = "auto";
    int port = 8443;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--cert"))
            cert = argv[i + 1];
        else if (!strcmp(argv[i], "--key"))
            key = argv[i + 1];
        else if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ktls"))
            policy = argv[i + 1];
    }
    if (!cert || !key) {
        fprintf(stderr, "usage: %s --cert FILE --key FILE [--port N] [--ktls auto|require|off]\n",
                argv[0]);
        return 2;
    }

    struct ktla_cert_config cc = {.cert_file = cert, .key_file = key};
    struct ktla_ctx_config cfg = {.certs = &cc, .ncerts = 1};
    struct ktla_ctx *ctx;
    int ret = ktla_ctx_new(&cfg, &ctx);
    if (ret < 0) {
        fprintf(stderr, "ktla-echo: %s\n", ktla_strerror(ret));
        return 1;
    }

    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        listen(lfd, 512) < 0) {
        perror("ktla-echo: listen");
        goto err_close;
    }

    struct ktla_acceptor_config ac = {
        .listen_fd = lfd,
        .ctx = ctx,
        .ktls = !strcmp(policy, "require") ? KTLA_KTLS_REQUIRE
                : !strcmp(policy, "off")   ? KTLA_KTLS_OFF
                                           : KTLA_KTLS_AUTO,
        .on_conn = on_conn,
        .on_fail = on_fail,
    };
    struct ktla_acceptor *acc;
    ret = ktla_acceptor_new(&ac, &acc);
    if (ret < 0) {
        fprintf(stderr, "ktla-echo: %s\n", ktla_strerror(ret));
        goto err_close;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);
    while (!stop)
        ktla_acceptor_run(acc, 200);

    ktla_acceptor_free(acc);
    ktla_ctx_free(ctx);
    close(lfd);
    return 0;

err_close:
    if (lfd >= 0)
        close(lfd);
    ktla_ctx_free(ctx);
    return 1;
}
