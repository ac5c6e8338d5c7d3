/*
 * ktla-serve: an HTTPS/1.1 static file server on ktla. This file reads the options, loads the
 * certificate (or makes one), says in its first lines where it listens, with which certificate,
 * and whether the kernel carries TLS (or exactly why not), then starts the workers and turns
 * signals into actions: SIGTERM/SIGINT drain, SIGHUP reloads certificate, ticket keys and the
 * access log.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "worker.h"

#define DEFAULT_LISTEN "127.0.0.1:8443"
#define MIME_TYPES "/etc/mime.types"

/* What a server without /etc/mime.types still gets right. */
static const char builtin_mime[] = "text/html html htm\ntext/css css\ntext/javascript js mjs\n"
                                   "text/plain txt\napplication/json json\nimage/png png\n"
                                   "image/jpeg jpg jpeg\nimage/gif gif\nimage/svg+xml svg\n"
                                   "image/webp webp\napplication/pdf pdf\nfont/woff2 woff2\n";

struct options {
    const char *dir;
    const char *listen;
    const char *cert, *key;
    const char *tickets;
    const char *access_log;
    enum ktla_ktls_policy ktls;
    enum ktla_file_path file_path;
    unsigned workers;
    unsigned handshake_timeout_s, idle_timeout_s, drain_timeout_s;
    unsigned max_connections;
    unsigned sndbuf; /* 0: the kernel's autotuning */
};

static void usage(FILE *f, const char *argv0)
{
    fprintf(
        f,
        "usage: %s [options] [DIR]\n"
        "Serves the regular files beneath DIR (default: .) over HTTPS/1.1, with kernel TLS\n"
        "where the kernel has it.\n\n"
        "  --listen HOST:PORT          address to listen on (default " DEFAULT_LISTEN
        "; [::1]:8443 for IPv6;\n"
        "                              port 0 picks a free one)\n"
        "  --cert FILE --key FILE      certificate chain and private key (PEM); without them a\n"
        "                              self-signed ECDSA P-256 certificate is made at start-up\n"
        "  --ktls auto|require|off     kernel TLS: where possible (default), mandatory, never\n"
        "  --file-io sendfile|splice   how bodies enter a kernel-TLS socket: sendfile(2) from the\n"
        "                              worker (default, measured faster), or io_uring splice\n"
        "  --workers N                 threads, each with its own io_uring and listening socket\n"
        "                              (default: the number of CPUs)\n"
        "  --tickets FILE              session ticket keys shared with other servers (80-byte\n"
        "                              keys, e.g. 'openssl rand 80 > FILE'); reloaded on SIGHUP\n"
        "  --handshake-timeout SECONDS TLS handshake deadline (default 10)\n"
        "  --idle-timeout SECONDS      close a connection without progress this long (default "
        "30)\n"
        "  --drain-timeout SECONDS     on SIGTERM/SIGINT, how long responses in flight may take\n"
        "                              to finish (default 10)\n"
        "  --max-connections N         established connections, spread over the workers\n"
        "                              (default 4096); beyond it: 503\n"
        "  --sndbuf BYTES              socket send buffer of each connection (default: the\n"
        "                              kernel's autotuning; a size turns it off and is capped by\n"
        "                              net.core.wmem_max); smaller holds less kernel memory per\n"
        "                              slow client\n"
        "  --access-log FILE|-         access log (Common Log Format + TLS version, cipher,\n"
        "                              record-layer mode, bytes, seconds); reopened on SIGHUP\n"
        "  --help, --version\n\n"
        "Signals: SIGTERM/SIGINT finish responses in flight, then exit 0; SIGHUP reloads the\n"
        "certificate, the ticket keys and the access log without dropping connections.\n",
        argv0);
}

static int parse_uint(const char *opt, const char *s, unsigned min, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v < min || v > UINT_MAX / 2 || s[0] == '-') {
        fprintf(stderr, "ktla-serve: %s wants a whole number of at least %u, not '%s'\n", opt, min,
                s);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static unsigned cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

/* 0, 1 (exit 0: --help/--version), or -1 (exit 2). */
static int parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"cert", required_argument, NULL, 'c'},
        {"key", required_argument, NULL, 'k'},
        {"ktls", required_argument, NULL, 'K'},
        {"file-io", required_argument, NULL, 'F'},
        {"workers", required_argument, NULL, 'w'},
        {"tickets", required_argument, NULL, 't'},
        {"handshake-timeout", required_argument, NULL, 'H'},
        {"idle-timeout", required_argument, NULL, 'i'},
        {"drain-timeout", required_argument, NULL, 'd'},
        {"max-connections", required_argument, NULL, 'm'},
        {"access-log", required_argument, NULL, 'a'},
        {"sndbuf", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {0},
    };
    *o = (struct options){
        .dir = ".",
        .listen = DEFAULT_LISTEN,
        .workers = cpu_count(),
        .handshake_timeout_s = 10,
        .idle_timeout_s = 30,
        .drain_timeout_s = 10,
        .max_connections = 4096,
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int ret = 0;
        switch (c) {
        case 'l':
            o->listen = optarg;
            break;
        case 'c':
            o->cert = optarg;
            break;
        case 'k':
            o->key = optarg;
            break;
        case 'K':
            if (!strcmp(optarg, "auto"))
                o->ktls = KTLA_KTLS_AUTO;
            else if (!strcmp(optarg, "require"))
                o->ktls = KTLA_KTLS_REQUIRE;
            else if (!strcmp(optarg, "off"))
                o->ktls = KTLA_KTLS_OFF;
            else {
                fprintf(stderr, "ktla-serve: --ktls is auto, require or off, not '%s'\n", optarg);
                ret = -1;
            }
            break;
        case 'F':
            if (!strcmp(optarg, "sendfile"))
                o->file_path = KTLA_FILE_SENDFILE;
            else if (!strcmp(optarg, "splice"))
                o->file_path = KTLA_FILE_SPLICE;
            else {
                fprintf(stderr, "ktla-serve: --file-io is sendfile or splice, not '%s'\n", optarg);
                ret = -1;
            }
            break;
        case 'w':
            ret = parse_uint("--workers", optarg, 1, &o->workers);
            break;
        case 't':
            o->tickets = optarg;
            break;
        case 'H':
            ret = parse_uint("--handshake-timeout", optarg, 1, &o->handshake_timeout_s);
            break;
        case 'i':
            ret = parse_uint("--idle-timeout", optarg, 1, &o->idle_timeout_s);
            break;
        case 'd':
            ret = parse_uint("--drain-timeout", optarg, 0, &o->drain_timeout_s);
            break;
        case 'm':
            ret = parse_uint("--max-connections", optarg, 1, &o->max_connections);
            break;
        case 'a':
            o->access_log = optarg;
            break;
        case 'S':
            ret = parse_uint("--sndbuf", optarg, 4096, &o->sndbuf);
            break;
        case 'h':
            usage(stdout, argv[0]);
            return 1;
        case 'V':
            printf("ktla-serve %s (http_parser %lu.%lu.%lu)\n", ktla_version(),
                   http_parser_version() >> 16, (http_parser_version() >> 8) & 255,
                   http_parser_version() & 255);
            return 1;
        default:
            ret = -1;
            break;
        }
        if (ret < 0) {
            fprintf(stderr, "Try '%s --help'.\n", argv[0]);
            return -1;
        }
    }
    if (optind < argc)
        o->dir = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "ktla-serve: one DIR only ('%s' is extra)\nTry '%s --help'.\n",
                argv[optind], argv[0]);
        return -1;
    }
    if (!o->cert != !o->key) {
        fprintf(stderr, "ktla-serve: --cert and --key go together\n");
        return -1;
    }
    if (o->handshake_timeout_s > 3600 || o->workers > 1024) {
        fprintf(stderr, "ktla-serve: --handshake-timeout is at most 3600, --workers 1024\n");
        return -1;
    }
    return 0;
}

/* HOST:PORT, [V6]:PORT, :PORT (every address). */
static int resolve(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon[1] == '\0' || (size_t)(colon - spec) >= sizeof(host)) {
        fprintf(stderr, "ktla-serve: --listen wants HOST:PORT, not '%s'\n", spec);
        return -1;
    }
    size_t hlen = (size_t)(colon - spec);
    memcpy(host, spec, hlen);
    host[hlen] = '\0';
    char *h = host;
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h[hlen - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *res;
    int ret = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &res);
    if (ret) {
        fprintf(stderr, "ktla-serve: --listen %s: %s\n", spec, gai_strerror(ret));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/*
 * The workers' sockets share the port with SO_REUSEPORT, which would as readily let them share it
 * with another server of the same user (a second ktla-serve on the same address, forgotten in
 * the background), the kernel then dealing connections between the two without a word. A socket
 * bound without SO_REUSEPORT first makes such a port fail with EADDRINUSE, as for any server.
 * Port 0 is left alone: the first worker's socket picks a free one.
 */
static int check_port_free(const struct sockaddr_storage *ss, socklen_t len)
{
    int one = 1, ret = 0, fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)ss, len) < 0)
        ret = -errno;
    close(fd);
    return ret;
}

static int open_listener(struct sockaddr_storage *ss, socklen_t len, unsigned sndbuf)
{
    int one = 1, fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto err;
    /* Set on the listening socket, the size is inherited by every accepted one. */
    if (sndbuf && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int){(int)sndbuf}, sizeof(int)) < 0)
        goto err_close;
    /* One socket per worker on the same address: the kernel spreads connections over them. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)ss, len) < 0 || listen(fd, 1024) < 0)
        goto err_close;
    /* Port 0: the first socket picks the port, the others join it. */
    if (getsockname(fd, (struct sockaddr *)ss, &len) < 0)
        goto err_close;
    return fd;

err_close:
    close(fd);
err:
    return -errno;
}

static void print_url(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char host[NI_MAXHOST], port[NI_MAXSERV];
    getnameinfo((const struct sockaddr *)ss, sizeof(*ss), host, sizeof(host), port, sizeof(port),
                NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(out, cap, ss->ss_family == AF_INET6 ? "https://[%s]:%s/" : "https://%s:%s/", host,
             port);
}

static int open_log(const char *path)
{
    if (!strcmp(path, "-"))
        return dup(STDOUT_FILENO);
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* What the third start-up line says about kernel TLS. */
static void report_ktls(enum ktla_ktls_policy policy, enum ktla_file_path file_path, int probe,
                        const struct ktla_kernel_support *ks)
{
    if (policy == KTLA_KTLS_OFF) {
        printf("  kernel TLS:  off (--ktls off): every connection runs TLS in userspace\n");
        return;
    }
    if (probe == 0) {
        printf("  kernel TLS:  yes: after each handshake the kernel carries the record layer, "
               "files go out with %s%s\n",
               file_path == KTLA_FILE_SPLICE ? "io_uring splice" : "sendfile(2)",
               policy == KTLA_KTLS_REQUIRE ? " (required)" : "");
        if (ks->rekey)
            printf("               TLS 1.3 KeyUpdate ends the connection: %s\n",
                   ktla_strerror(ks->rekey));
        else
            printf("               TLS 1.3 KeyUpdate: followed with new kernel keys\n");
        for (int i = 0; i < KTLA_CIPHER_COUNT; i++)
            if (ks->cipher[i])
                printf("               except %s: %s\n", ktla_cipher_name((enum ktla_cipher)i),
                       ktla_strerror(ks->cipher[i]));
        if (ks->tls13)
            printf("               except TLS 1.3: %s\n", ktla_strerror(ks->tls13));
        return;
    }
    printf("  kernel TLS:  no, because %s (%s).\n"
           "               Connections run TLS in userspace instead (read + encrypt).\n",
           ktla_strerror(probe), ktla_err_name(probe));
}

static void reload(const struct options *o, struct serve_config *cfg)
{
    if (o->cert) {
        struct ktla_cert_config cc = {.cert_file = o->cert, .key_file = o->key};
        int ret = ktla_ctx_reload_certs(cfg->ctx, &cc, 1);
        char fp[128] = "?";
        cert_fingerprint(NULL, o->cert, fp, sizeof(fp));
        if (ret < 0)
            fprintf(stderr,
                    "ktla-serve: SIGHUP: certificate NOT reloaded, keeping the old one: "
                    "%s\n",
                    ktla_strerror(ret));
        else
            fprintf(stderr, "ktla-serve: SIGHUP: certificate reloaded from %s (SHA-256 %s)\n",
                    o->cert, fp);
    }
    if (o->tickets) {
        int ret = ktla_ctx_load_ticket_keys(cfg->ctx, o->tickets);
        if (ret < 0)
            fprintf(stderr, "ktla-serve: SIGHUP: ticket keys NOT reloaded from %s: %s\n",
                    o->tickets, ktla_strerror(ret));
        else
            fprintf(stderr, "ktla-serve: SIGHUP: ticket keys reloaded from %s\n", o->tickets);
    }
    if (o->access_log && strcmp(o->access_log, "-")) {
        /* dup2 swaps the file under the workers' descriptor in one step: no lock needed. */
        int fd = open_log(o->access_log);
        if (fd < 0 || dup2(fd, cfg->log_fd) < 0)
            fprintf(stderr, "ktla-serve: SIGHUP: cannot reopen %s: %s\n", o->access_log,
                    strerror(errno));
        if (fd >= 0)
            close(fd);
    }
}

int main(int argc, char **argv)
{
    struct options o;
    struct serve_config cfg = {.log_fd = -1};
    struct cert_pem pem = {0};
    struct worker *workers = NULL;
    unsigned nstarted = 0, ninit = 0;
    char fp[128], err[256];
    int status = 1, ret;

    ret = parse_options(argc, argv, &o);
    if (ret)
        return ret > 0 ? 0 : 2;
    /* sendfile(2) cannot be told MSG_NOSIGNAL: a client that goes away must not kill us. */
    signal(SIGPIPE, SIG_IGN);

    cfg.root_fd = open(o.dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cfg.root_fd < 0) {
        fprintf(stderr, "ktla-serve: cannot serve '%s': %s\n", o.dir, strerror(errno));
        return 1;
    }
    ret = files_probe(cfg.root_fd);
    if (ret < 0) {
        fprintf(stderr,
                "ktla-serve: this kernel lacks openat2(RESOLVE_BENEATH) (%s), which keeps every "
                "path beneath DIR; Linux 5.6 or later is needed\n",
                strerror(-ret));
        goto err_root;
    }
    if (mime_load(&cfg.mime, MIME_TYPES) < 0) {
        fprintf(stderr,
                "ktla-serve: no %s (Debian's media-types package): using a few built-in "
                "types\n",
                MIME_TYPES);
        if (mime_load_string(&cfg.mime, builtin_mime) < 0)
            goto err_root;
    }

    struct ktla_cert_config cc = {.cert_file = o.cert, .key_file = o.key};
    if (!o.cert) {
        if (cert_self_signed(&pem, err, sizeof(err)) < 0) {
            fprintf(stderr, "ktla-serve: %s\n", err);
            goto err_mime;
        }
        cc.cert_pem = pem.cert;
        cc.key_pem = pem.key;
    }
    if (cert_fingerprint(pem.cert, o.cert, fp, sizeof(fp)) < 0)
        snprintf(fp, sizeof(fp), "(cannot read the certificate)");
    static const char *const alpn[] = {"http/1.1"};
    struct ktla_ctx_config cc_ctx = {
        .certs = &cc,
        .ncerts = 1,
        .alpn = alpn,
        .nalpn = 1,
        .ticket_key_file = o.tickets,
    };
    ret = ktla_ctx_new(&cc_ctx, &cfg.ctx);
    if (ret < 0) {
        fprintf(stderr, "ktla-serve: %s%s%s%s: %s\n", o.cert ? o.cert : "the certificate",
                o.tickets ? " or " : "", o.tickets ? o.tickets : "", "", ktla_strerror(ret));
        goto err_pem;
    }

    struct ktla_kernel_support ks;
    int probe = ktla_kernel_probe(&ks);
    if (o.ktls == KTLA_KTLS_REQUIRE && probe < 0) {
        fprintf(stderr, "ktla-serve: --ktls require, but kernel TLS is unavailable: %s\n",
                ktla_strerror(probe));
        goto err_ctx;
    }

    if (o.access_log) {
        cfg.log_fd = open_log(o.access_log);
        if (cfg.log_fd < 0) {
            fprintf(stderr, "ktla-serve: --access-log %s: %s\n", o.access_log, strerror(errno));
            goto err_ctx;
        }
    }
    cfg.ktls = o.ktls;
    cfg.file_path = o.file_path;
    cfg.handshake_timeout_ms = o.handshake_timeout_s * 1000;
    cfg.idle_timeout_s = o.idle_timeout_s;
    cfg.drain_timeout_s = o.drain_timeout_s;
    cfg.max_conns = (o.max_connections + o.workers - 1) / o.workers;

    struct sockaddr_storage ss;
    socklen_t sslen;
    if (resolve(o.listen, &ss, &sslen) < 0)
        goto err_log;
    in_port_t port = ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port;
    ret = port ? check_port_free(&ss, sslen) : 0;
    if (ret < 0) {
        fprintf(stderr, "ktla-serve: cannot listen on %s: %s\n", o.listen, strerror(-ret));
        goto err_log;
    }
    workers = calloc(o.workers, sizeof(*workers));
    if (!workers)
        goto err_log;
    for (unsigned i = 0; i < o.workers; i++) {
        struct worker *w = &workers[i];
        w->cfg = &cfg;
        w->stop = &cfg.stop;
        w->index = (int)i;
        w->listen_fd = open_listener(&ss, sslen, o.sndbuf);
        if (w->listen_fd < 0) {
            fprintf(stderr, "ktla-serve: cannot listen on %s: %s\n", o.listen,
                    strerror(-w->listen_fd));
            goto err_workers;
        }
        if (worker_init(w) < 0) {
            close(w->listen_fd);
            goto err_workers;
        }
        ninit++;
    }

    char url[NI_MAXHOST + 32], dir[PATH_MAX];
    print_url(&ss, url, sizeof(url));
    if (!realpath(o.dir, dir))
        snprintf(dir, sizeof(dir), "%s", o.dir);
    printf("ktla-serve %s: serving %s at %s\n", ktla_version(), dir, url);
    if (o.cert)
        printf("  certificate: %s, SHA-256 %s\n", o.cert, fp);
    else
        printf("  certificate: self-signed ECDSA P-256 for localhost, 127.0.0.1, ::1 (made now, in "
               "memory), SHA-256 %s\n",
               fp);
    report_ktls(o.ktls, o.file_path, probe, &ks);
    printf("  workers:     %u (one io_uring and one SO_REUSEPORT socket each), up to %u "
           "connections\n",
           o.workers, cfg.max_conns * o.workers);
    if (!o.cert)
        printf("  try:         curl --insecure %s\n", url);
    fflush(stdout);

    /* Signals go to this thread only (sigwait below); the workers inherit the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    for (; nstarted < o.workers; nstarted++) {
        ret = worker_start(&workers[nstarted]);
        if (ret < 0) {
            fprintf(stderr, "ktla-serve: cannot start a worker thread: %s\n", strerror(-ret));
            atomic_store(&cfg.stop, 2);
            break;
        }
    }

    for (;;) {
        unsigned exited = 0;
        for (unsigned i = 0; i < nstarted; i++)
            exited += (unsigned)atomic_load(&workers[i].exited);
        if (exited == nstarted)
            break;
        if (exited && !atomic_load(&cfg.stop))
            atomic_store(&cfg.stop, 2); /* a worker failed: the server cannot stay half up */
        struct timespec ts = {.tv_nsec = 100 * 1000000};
        int sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig == SIGHUP) {
            reload(&o, &cfg);
        } else if (sig == SIGTERM || sig == SIGINT) {
            int was = atomic_load(&cfg.stop);
            atomic_store(&cfg.stop, was ? 2 : 1);
            fprintf(stderr, "ktla-serve: %s: %s\n", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                    was ? "closing every connection now"
                        : "finishing responses in flight, then exiting (again: at once)");
        } else {
            continue;
        }
        for (unsigned i = 0; i < nstarted; i++)
            worker_wake(&workers[i]);
    }
    status = nstarted < o.workers ? 1 : 0;
    for (unsigned i = 0; i < nstarted; i++)
        if (workers[i].failed)
            status = 1;

    uint64_t served = 0, handshakes = 0, kernel = 0, fallbacks = 0;
    for (unsigned i = 0; i < nstarted; i++) {
        served += workers[i].served;
        handshakes += workers[i].stats.handshakes_done;
        kernel += workers[i].stats.ktls_both;
        fallbacks += workers[i].stats.ktls_fallbacks;
    }
    fprintf(stderr,
            "ktla-serve: stopped: %llu connections (%llu with kernel TLS both ways, %llu in "
            "userspace at least one way), %llu responses\n",
            (unsigned long long)handshakes, (unsigned long long)kernel,
            (unsigned long long)fallbacks, (unsigned long long)served);

err_workers:
    /* Workers made but never started drain (nothing) on this thread, so nothing leaks. */
    atomic_store(&cfg.stop, 2);
    for (unsigned i = nstarted; i < ninit; i++)
        worker_run(&workers[i]);
    for (unsigned i = 0; i < ninit; i++) {
        if (i < nstarted)
            worker_join(&workers[i]);
        else
            worker_release(&workers[i]);
        close(workers[i].listen_fd);
    }
    free(workers);
err_log:
    if (cfg.log_fd >= 0)
        close(cfg.log_fd);
err_ctx:
    ktla_ctx_free(cfg.ctx);
err_pem:
    cert_pem_free(&pem);
err_mime:
    mime_free(&cfg.mime);
err_root:
    close(cfg.root_fd);
    return status;
}
