/*
 * send-file: the smallest HTTPS server on ktla. Whatever a client asks for, it answers with one
 * file, sent with ktla_conn_sendfile: with kernel TLS the kernel encrypts straight from the page
 * cache (sendfile(2)); without it ktla reads and encrypts in userspace, 16 KiB at a time.
 *
 * usage: send-file --cert FILE --key FILE [--port N] FILE     (port 0, the default: a free one)
 *   try: curl --insecure https://127.0.0.1:PORT/ -o copy
 *
 * One request per connection (Connection: close), no parsing beyond the end of the head: ktla-serve
 * (src/serve/) is the whole HTTP/1.1 server.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ktla.h>

struct file {
    int fd;
    uint64_t size;
};

/* One per connection: the request head as it arrives, then the response head. */
struct request {
    const struct file *file;
    size_t len;
    char head[8192];
};

static void on_head(struct ktla_conn *conn, ssize_t n, void *arg);

static void finish(struct ktla_conn *conn, struct request *r)
{
    ktla_conn_close(conn); /* close_notify, then the socket; no callback of conn after this */
    free(r);
}

static void on_body(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct request *r = arg;
    if (n < 0)
        fprintf(stderr, "%s: sendfile: %s\n", ktla_conn_get_info(conn)->peer, ktla_strerror((int)n));
    finish(conn, r);
}

static void on_response_head(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct request *r = arg;
    if (n < 0 || r->file->size == 0 ||
        ktla_conn_sendfile(conn, r->file->fd, 0, r->file->size, on_body, r) < 0)
        finish(conn, r);
}

static void on_head(struct ktla_conn *conn, ssize_t n, void *arg)
{
    struct request *r = arg;
    if (n <= 0) { /* the client went away (0: close_notify) or an error */
        finish(conn, r);
        return;
    }
    r->len += (size_t)n;
    if (!memmem(r->head, r->len, "\r\n\r\n", 4)) { /* not the whole head yet */
        if (r->len == sizeof(r->head) ||
            ktla_conn_recv(conn, r->head + r->len, sizeof(r->head) - r->len, on_head, r) < 0)
            finish(conn, r);
        return;
    }
    /* The request buffer is free now: it holds the response head until that is sent. */
    r->len = (size_t)snprintf(r->head, sizeof(r->head),
                              "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                              "Content-Length: %llu\r\nConnection: close\r\n\r\n",
                              (unsigned long long)r->file->size);
    if (ktla_conn_send(conn, r->head, r->len, on_response_head, r) < 0)
        finish(conn, r);
}

static void on_conn(struct ktla_conn *conn, void *arg)
{
    const struct ktla_conn_info *i = ktla_conn_get_info(conn);
    struct request *r = calloc(1, sizeof(*r));

    printf("%s %s record layer: tx %s, rx %s\n", i->peer, i->cipher_name,
           i->tx_mode == KTLA_MODE_KERNEL ? "kernel" : "userspace",
           i->rx_mode == KTLA_MODE_KERNEL ? "kernel" : "userspace");
    fflush(stdout);
    if (!r) {
        ktla_conn_close(conn);
        return;
    }
    r->file = arg;
    if (ktla_conn_recv(conn, r->head, sizeof(r->head), on_head, r) < 0)
        finish(conn, r);
}

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL, *path = NULL;
    int port = 0, status = 1;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cert") && i + 1 < argc)
            cert = argv[++i];
        else if (!strcmp(argv[i], "--key") && i + 1 < argc)
            key = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else
            path = argv[i];
    }
    if (!cert || !key || !path) {
        fprintf(stderr, "usage: %s --cert FILE --key FILE [--port N] FILE\n", argv[0]);
        return 2;
    }

    struct stat st;
    struct file file = {.fd = open(path, O_RDONLY | O_CLOEXEC)};
    if (file.fd < 0 || fstat(file.fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "send-file: %s: not a readable regular file\n", path);
        return 1;
    }
    file.size = (uint64_t)st.st_size;

    struct ktla_cert_config cc = {.cert_file = cert, .key_file = key};
    struct ktla_ctx_config cfg = {.certs = &cc, .ncerts = 1, .alpn = (const char *[]){"http/1.1"},
                                  .nalpn = 1};
    struct ktla_ctx *ctx;
    int ret = ktla_ctx_new(&cfg, &ctx);
    if (ret < 0) {
        fprintf(stderr, "send-file: %s\n", ktla_strerror(ret));
        goto close_file;
    }

    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(addr);
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 512) < 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0) {
        perror("send-file: listen");
        goto close_listener;
    }
    printf("serving %s (%llu bytes) on https://127.0.0.1:%d/\n", path,
           (unsigned long long)file.size, ntohs(addr.sin_port));
    fflush(stdout);

    struct ktla_acceptor_config ac = {
        .listen_fd = lfd, .ctx = ctx, .on_conn = on_conn, .arg = &file};
    struct ktla_acceptor *acc;
    ret = ktla_acceptor_new(&ac, &acc);
    if (ret < 0) {
        fprintf(stderr, "send-file: %s\n", ktla_strerror(ret));
        goto close_listener;
    }
    /* sendfile(2) cannot be told MSG_NOSIGNAL: a client that leaves mid-file is -EPIPE in the
     * callback only when SIGPIPE is ignored. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    while (!stop)
        ktla_acceptor_run(acc, 200);
    /* Requests still in flight are cut short with the process: a real server tracks its
     * connections, closes them and lets the ring bring them back first (echo/ does). */
    ktla_acceptor_free(acc);
    status = 0;

close_listener:
    if (lfd >= 0)
        close(lfd);
    ktla_ctx_free(ctx);
close_file:
    close(file.fd);
    return status;
}
