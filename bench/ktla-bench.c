/*
 * ktla-bench: a TLS load generator for HTTPS/1.1 servers (ktla-serve, nginx, anything).
 *
 * The main thread parses the command line, starts the workers (loadgen.c), runs the clock
 * (warm-up, then the measured window), samples the server's CPU time and memory at the edges of
 * that window (server.c), and prints the result (report.c).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <openssl/err.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

static const char usage[] =
    "usage: ktla-bench [options] https://HOST:PORT/PATH   (HOST: a name, IPv4, or [IPv6])\n"
    "  -m, --mode MODE          handshake | get | download | idle (default: get)\n"
    "                             handshake: a new connection per request (full, or --resume)\n"
    "                             get:       keep-alive requests of PATH\n"
    "                             download:  the same for large bodies (bytes/s, CPU per MiB)\n"
    "                             idle:      open -c connections, one request each, hold them\n"
    "  -r, --resume             handshake mode: resume with the thread's latest session ticket\n"
    "  -c, --connections N      concurrent connections in all (default 16)\n"
    "  -t, --threads N          worker threads, each with its own io_uring (default 1)\n"
    "  -d, --duration S         measured seconds (default 10; idle: how long to hold, default 1)\n"
    "  -n, --requests N         stop after N measured requests instead\n"
    "  -w, --warmup S           unmeasured seconds first (default 1; idle mode has none)\n"
    "      --tls 1.2|1.3        offer only this TLS version\n"
    "      --ciphers LIST       TLS 1.3 suites, or a TLS 1.2 cipher list with --tls 1.2\n"
    "      --groups LIST        key exchange groups, e.g. X25519\n"
    "      --sni NAME           server name to send (also the Host header)\n"
    "      --max-connecting N   idle mode: handshakes in flight at once (default 1000)\n"
    "      --timeout-ms N       a connection without progress this long fails (default 10000)\n"
    "      --max-time S         with --requests or idle: cap on the run (default 300)\n"
    "      --echo BYTES         not HTTP: each request is BYTES bytes (at most 16384) that the\n"
    "                           server sends back, as ktla-echo does; PATH is ignored\n"
    "      --server-pid PID     the server's CPU time per operation and memory, from /proc\n"
    "                           (PID and its child processes: give nginx's master)\n"
    "      --json FILE|-        the result as one JSON object\n"
    "      --csv FILE|-         the result as CSV (a header line and one row)\n"
    "      --label TEXT         carried into the JSON and CSV\n"
    "  -q, --quiet              no progress line\n"
    "Exit status: 0 when requests completed without errors, 1 otherwise, 2 for bad usage.\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "ktla-bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", usage);
    return 2;
}

/*
 * https://HOST:PORT/PATH, HOST a name, an IPv4 address or a bracketed IPv6 one, resolved here
 * once, so that connections never wait on a resolver. Of a name's addresses the first that
 * accepts a connection now is taken: "localhost" gives ::1 first, where a server may listen on
 * 127.0.0.1 only. 0, or -1 (the resolver's reason printed).
 */
static int parse_url(struct bench_config *cfg, const char *url)
{
    const char *h = url + 8, *end;
    if (strncmp(url, "https://", 8))
        return -1;
    if (*h == '[') {
        end = strchr(h, ']');
        if (!end++)
            return -1;
    } else {
        end = h + strcspn(h, ":/");
    }
    if (end == h || *end != ':' || (size_t)(end - h) >= sizeof(cfg->host))
        return -1;
    const char *p = end + 1;
    size_t digits = strspn(p, "0123456789");
    unsigned long port = digits && digits <= 5 ? strtoul(p, NULL, 10) : 0;
    if (port == 0 || port > 65535 || (p[digits] != '/' && p[digits] != '\0'))
        return -1;
    snprintf(cfg->host, sizeof(cfg->host), "%.*s", (int)(end - h), h);
    cfg->port = (uint16_t)port;
    snprintf(cfg->path, sizeof(cfg->path), "%s", p[digits] ? p + digits : "/");

    char name[sizeof(cfg->host)], service[8];
    bool v6 = cfg->host[0] == '[';
    snprintf(name, sizeof(name), "%.*s", (int)strlen(cfg->host) - (v6 ? 2 : 0), cfg->host + v6);
    snprintf(service, sizeof(service), "%u", cfg->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | (v6 ? AI_NUMERICHOST : 0),
                             .ai_family = v6 ? AF_INET6 : AF_UNSPEC},
                    *res;
    int ret = getaddrinfo(name, service, &hints, &res);
    if (ret) {
        fprintf(stderr, "ktla-bench: %s: %s\n", name, gai_strerror(ret));
        return -1;
    }
    const struct addrinfo *pick = res;
    for (const struct addrinfo *a = res; a && res->ai_next; a = a->ai_next) {
        int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool up = fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) == 0;
        if (fd >= 0)
            close(fd);
        if (up) {
            pick = a;
            break;
        }
    }
    memcpy(&cfg->addr, pick->ai_addr, pick->ai_addrlen);
    cfg->addrlen = pick->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static double parse_num(const char *s, bool *ok)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v < 0 || isnan(v))
        *ok = false;
    return v;
}

/* 0, or the exit status for bad usage. */
static int parse_args(int argc, char **argv, struct bench_config *cfg)
{
    enum {
        O_TLS = 256,
        O_CIPHERS,
        O_GROUPS,
        O_SNI,
        O_MAXCONN,
        O_TIMEOUT,
        O_MAXTIME,
        O_PID,
        O_JSON,
        O_CSV,
        O_LABEL,
        O_ECHO
    };
    static const struct option opts[] = {
        {"mode", required_argument, NULL, 'm'},
        {"resume", no_argument, NULL, 'r'},
        {"connections", required_argument, NULL, 'c'},
        {"threads", required_argument, NULL, 't'},
        {"duration", required_argument, NULL, 'd'},
        {"requests", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, 'w'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"tls", required_argument, NULL, O_TLS},
        {"ciphers", required_argument, NULL, O_CIPHERS},
        {"groups", required_argument, NULL, O_GROUPS},
        {"sni", required_argument, NULL, O_SNI},
        {"max-connecting", required_argument, NULL, O_MAXCONN},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"max-time", required_argument, NULL, O_MAXTIME},
        {"server-pid", required_argument, NULL, O_PID},
        {"json", required_argument, NULL, O_JSON},
        {"csv", required_argument, NULL, O_CSV},
        {"label", required_argument, NULL, O_LABEL},
        {"echo", required_argument, NULL, O_ECHO},
        {0},
    };
    bool ok = true, duration_set = false, warmup_set = false;
    int o;

    *cfg = (struct bench_config){.mode = MODE_GET,
                                 .threads = 1,
                                 .connections = 16,
                                 .max_connecting = 1000,
                                 .duration_s = 10,
                                 .warmup_s = 1,
                                 .max_time_s = 300,
                                 .timeout_ms = 10000,
                                 .label = ""};
    while ((o = getopt_long(argc, argv, "m:rc:t:d:n:w:qh", opts, NULL)) != -1) {
        switch (o) {
        case 'm': {
            static const char *const names[] = {[MODE_HANDSHAKE] = "handshake",
                                                [MODE_GET] = "get",
                                                [MODE_DOWNLOAD] = "download",
                                                [MODE_IDLE] = "idle"};
            unsigned m = 0;
            while (m < 4 && strcmp(optarg, names[m]))
                m++;
            if (m == 4)
                return bad_usage("unknown mode '%s'", optarg);
            cfg->mode = (enum bench_mode)m;
            break;
        }
        case 'r':
            cfg->resume = true;
            break;
        case 'c':
            cfg->connections = (unsigned)parse_num(optarg, &ok);
            break;
        case 't':
            cfg->threads = (unsigned)parse_num(optarg, &ok);
            break;
        case 'd':
            cfg->duration_s = parse_num(optarg, &ok);
            duration_set = true;
            break;
        case 'n':
            cfg->requests = (uint64_t)parse_num(optarg, &ok);
            break;
        case 'w':
            cfg->warmup_s = parse_num(optarg, &ok);
            warmup_set = true;
            break;
        case 'q':
            cfg->quiet = true;
            break;
        case 'h':
            fputs(usage, stdout);
            exit(0);
        case O_TLS:
            if (!strcmp(optarg, "1.2"))
                cfg->tls_version = TLS1_2_VERSION;
            else if (!strcmp(optarg, "1.3"))
                cfg->tls_version = TLS1_3_VERSION;
            else
                return bad_usage("--tls takes 1.2 or 1.3, not '%s'", optarg);
            break;
        case O_CIPHERS:
            cfg->ciphers = optarg;
            break;
        case O_GROUPS:
            cfg->groups = optarg;
            break;
        case O_SNI:
            cfg->sni = optarg;
            break;
        case O_MAXCONN:
            cfg->max_connecting = (unsigned)parse_num(optarg, &ok);
            break;
        case O_TIMEOUT:
            cfg->timeout_ms = (unsigned)parse_num(optarg, &ok);
            break;
        case O_MAXTIME:
            cfg->max_time_s = parse_num(optarg, &ok);
            break;
        case O_PID:
            cfg->server_pid = (int)parse_num(optarg, &ok);
            break;
        case O_JSON:
            cfg->json_out = optarg;
            break;
        case O_CSV:
            cfg->csv_out = optarg;
            break;
        case O_LABEL:
            cfg->label = optarg;
            break;
        case O_ECHO:
            cfg->echo_bytes = (unsigned)parse_num(optarg, &ok);
            if (ok && (cfg->echo_bytes == 0 || cfg->echo_bytes > 16384))
                return bad_usage("--echo takes 1 to 16384 bytes, not '%s'", optarg);
            break;
        default:
            fputs(usage, stderr);
            return 2;
        }
        if (!ok)
            return bad_usage("not a number: '%s'", optarg);
    }
    if (optind != argc - 1)
        return bad_usage("%s", "one URL, https://HOST:PORT/PATH, is required");
    if (parse_url(cfg, argv[optind]) < 0)
        return bad_usage("cannot read '%s': give https://HOST:PORT/PATH (HOST: a name, IPv4, "
                         "or [IPv6])",
                         argv[optind]);
    if (cfg->threads == 0 || cfg->connections == 0 || cfg->threads > cfg->connections)
        return bad_usage("%s", "need at least one connection per thread");
    if (cfg->resume && cfg->mode != MODE_HANDSHAKE)
        return bad_usage("%s", "--resume belongs to --mode handshake");
    if (cfg->mode == MODE_IDLE) {
        if (!duration_set)
            cfg->duration_s = 1;
        if (warmup_set && cfg->warmup_s > 0)
            return bad_usage("%s",
                             "idle mode has no warm-up: it measures from the first connection");
        cfg->warmup_s = 0;
    }
    return 0;
}

SSL_CTX *bench_client_ctx(const struct bench_config *cfg, OSSL_LIB_CTX *lib)
{
    SSL_CTX *ctx = SSL_CTX_new_ex(lib, NULL, TLS_client_method());
    if (!ctx)
        return NULL;
    /* A load generator measures the server, not certificate checking: the peer is not verified. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (cfg->tls_version) {
        SSL_CTX_set_min_proto_version(ctx, cfg->tls_version);
        SSL_CTX_set_max_proto_version(ctx, cfg->tls_version);
    }
    if (cfg->ciphers &&
        !(cfg->tls_version == TLS1_2_VERSION ? SSL_CTX_set_cipher_list(ctx, cfg->ciphers)
                                             : SSL_CTX_set_ciphersuites(ctx, cfg->ciphers))) {
        fprintf(stderr, "ktla-bench: OpenSSL does not accept the ciphers '%s'\n", cfg->ciphers);
        goto free_ctx;
    }
    if (cfg->groups && !SSL_CTX_set1_groups_list(ctx, cfg->groups)) {
        fprintf(stderr, "ktla-bench: OpenSSL does not accept the groups '%s'\n", cfg->groups);
        goto free_ctx;
    }
    if (cfg->mode == MODE_IDLE)
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* thousands of idle clients */
    loadgen_setup_ctx(ctx);
    return ctx;

free_ctx:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Every connection is a socket: raise the soft limit to the hard one, and say so if even that is
 * not enough rather than fail on the thousandth connect. */
static int raise_nofile(unsigned need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
        fprintf(stderr,
                "ktla-bench: %u connections need about %u file descriptors, but the limit is "
                "%llu (raise it with 'ulimit -Hn' as root)\n",
                need - 64, need, (unsigned long long)rl.rlim_cur);
        return -1;
    }
    return 0;
}

struct progress {
    bool on, tty;
    double last_t, start_t;
    uint64_t last_requests;
};

static void progress_tick(struct progress *p, const struct bench_shared *sh, const char *phase,
                          double total_s)
{
    double t = now_s();
    double every = p->tty ? 1 : 5;
    if (!p->on || t - p->last_t < every)
        return;
    uint64_t req = atomic_load(&sh->progress_requests);
    double rate = (double)(req - p->last_requests) / (t - p->last_t);
    if (sh->cfg->mode == MODE_IDLE)
        fprintf(stderr, "%sktla-bench: [%s %.0f s] %u/%u established, errors %llu%s",
                p->tty ? "\r" : "", phase, t - p->start_t, atomic_load(&sh->established),
                sh->cfg->connections, (unsigned long long)atomic_load(&sh->progress_errors),
                p->tty ? "   " : "\n");
    else
        fprintf(stderr, "%sktla-bench: [%s %.0f/%.0f s] %.0f req/s, errors %llu%s",
                p->tty ? "\r" : "", phase, t - p->start_t, total_s, rate,
                (unsigned long long)atomic_load(&sh->progress_errors), p->tty ? "   " : "\n");
    p->last_t = t;
    p->last_requests = req;
}

static void progress_end(struct progress *p)
{
    if (p->on && p->tty)
        fputc('\n', stderr);
}

static struct server_sample sample_server(const struct bench_config *cfg)
{
    return cfg->server_pid ? server_sample(cfg->server_pid) : (struct server_sample){0};
}

/* CPU time from `start` to `end`; memory at `start` and at `mem`. */
static void server_figures(struct bench_result *r, struct server_sample start,
                           struct server_sample mem, struct server_sample end)
{
    if (!start.ok || !mem.ok || !end.ok)
        return;
    r->have_server = true;
    double hz = (double)sysconf(_SC_CLK_TCK);
    r->server_cpu_s = (double)(end.cpu_ticks - start.cpu_ticks) / hz;
    r->server_user_s = (double)(end.user_ticks - start.user_ticks) / hz;
    r->server_sys_s = (double)(end.sys_ticks - start.sys_ticks) / hz;
    r->have_rss = true;
    r->rss_before_kib = (double)start.rss_kib;
    r->rss_after_kib = (double)mem.rss_kib;
}

static void nap(void)
{
    nanosleep(&(struct timespec){.tv_nsec = 20000000}, NULL);
}

/* Runs the clock for the keep-alive and handshake modes: warm-up, then the measured window, with
 * the server's CPU time sampled at both of its edges. */
static void run_timed(struct bench_shared *sh, struct bench_result *r, struct progress *pg)
{
    const struct bench_config *cfg = sh->cfg;
    double t = now_s(), total = cfg->warmup_s + (cfg->requests ? 0 : cfg->duration_s);
    pg->start_t = pg->last_t = t;
    while (!interrupted && now_s() - t < cfg->warmup_s) {
        progress_tick(pg, sh, "warm-up", total);
        nap();
    }
    struct server_sample s0 = sample_server(cfg);
    double t0 = now_s();
    atomic_store(&sh->phase, PHASE_MEASURE);
    for (;;) {
        double el = now_s() - t0;
        if (interrupted || (!cfg->requests && el >= cfg->duration_s) || el >= cfg->max_time_s ||
            (cfg->requests && atomic_load(&sh->measured_requests) >= cfg->requests))
            break;
        progress_tick(pg, sh, "measure", total);
        nap();
    }
    struct server_sample s1 = sample_server(cfg);
    atomic_store(&sh->phase, PHASE_STOP);
    r->seconds = now_s() - t0;
    server_figures(r, s0, s1, s1);
}

/* Idle mode: opens the connections (a bounded number of handshakes at a time), waits for all of
 * them, lets the server settle, and takes its memory before and after. */
static void run_idle(struct bench_shared *sh, struct bench_result *r, struct progress *pg,
                     struct server_sample s0)
{
    const struct bench_config *cfg = sh->cfg;
    double t0 = now_s();
    unsigned mark = cfg->connections / 5 ? cfg->connections / 5 : 1;
    pg->start_t = pg->last_t = t0;
    while (!interrupted && atomic_load(&sh->established) < cfg->connections &&
           now_s() - t0 < cfg->max_time_s) {
        unsigned n = atomic_load(&sh->established);
        if (!r->established_mark && n >= mark) {
            struct server_sample m = sample_server(cfg);
            if (m.ok) {
                r->rss_mark_kib = (double)m.rss_kib;
                r->established_mark = n;
            }
        }
        progress_tick(pg, sh, "connect", 0);
        nap();
    }
    /* A second for the server to free what the handshakes needed before memory is read. */
    for (double t1 = now_s(); !interrupted && now_s() - t1 < 1;)
        nap();
    r->established = atomic_load(&sh->established);
    struct server_sample s1 = sample_server(cfg);
    for (double t1 = now_s(); !interrupted && now_s() - t1 < cfg->duration_s;) {
        progress_tick(pg, sh, "hold", 0);
        nap();
    }
    struct server_sample s2 = sample_server(cfg);
    atomic_store(&sh->phase, PHASE_STOP);
    r->seconds = now_s() - t0;
    server_figures(r, s0, s1, s2);
}

int main(int argc, char **argv)
{
    struct bench_config cfg;
    int ret = parse_args(argc, argv, &cfg);
    if (ret)
        return ret;
    if (raise_nofile(cfg.connections + 64) < 0)
        return 1;
    SSL_CTX *check = bench_client_ctx(&cfg, NULL); /* the settings, said once, before threads */
    if (!check)
        return 1;
    SSL_CTX_free(check);
    if (cfg.server_pid && !server_sample(cfg.server_pid).ok) {
        fprintf(stderr, "ktla-bench: no process %d to measure (--server-pid)\n", cfg.server_pid);
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);

    struct bench_shared sh = {.cfg = &cfg};
    atomic_init(&sh.phase, cfg.mode == MODE_IDLE ? PHASE_MEASURE : PHASE_WARMUP);
    struct server_sample before = sample_server(&cfg);
    struct worker **workers = calloc(cfg.threads, sizeof(*workers));
    unsigned started = 0;
    for (; workers && started < cfg.threads; started++) {
        unsigned share =
            cfg.connections / cfg.threads + (started < cfg.connections % cfg.threads ? 1 : 0);
        unsigned connecting = cfg.max_connecting / cfg.threads;
        ret = worker_start(&sh, started, share, connecting ? connecting : 1, &workers[started]);
        if (ret < 0) {
            fprintf(stderr, "ktla-bench: cannot start worker %u: %s\n", started, strerror(-ret));
            break;
        }
    }

    struct bench_result r = {0};
    struct progress pg = {.on = !cfg.quiet && cfg.warmup_s + cfg.duration_s > 3,
                          .tty = isatty(STDERR_FILENO)};
    if (started == cfg.threads) {
        if (cfg.mode == MODE_IDLE)
            run_idle(&sh, &r, &pg, before);
        else
            run_timed(&sh, &r, &pg);
    }
    atomic_store(&sh.phase, PHASE_STOP);
    for (unsigned i = 0; i < started; i++)
        worker_join(workers[i], &r.counts);
    progress_end(&pg);
    free(workers);

    ret = report(&cfg, &sh, &r, cfg.json_out && !strcmp(cfg.json_out, "-") ? stderr : stdout);
    uint64_t errors = 0;
    for (int k = 0; k < ERR_KINDS; k++)
        errors += r.counts.errors[k];
    bool complete = cfg.mode != MODE_IDLE || r.established == cfg.connections;
    return ret == 0 && started == cfg.threads &&
                   (r.counts.requests > 0 || (cfg.mode == MODE_DOWNLOAD && r.counts.bytes > 0)) &&
                   errors == 0 && complete
               ? 0
               : 1;
}
