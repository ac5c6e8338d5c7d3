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
#include <grp.h>
#include <ini.h>
#include <limits.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "metrics.h"
#include "redirect.h"
#include "h2.h"
#include "worker.h"

#define DEFAULT_LISTEN "127.0.0.1:8443"
#define MIME_TYPES "/etc/mime.types"

/* What a server without /etc/mime.types still gets right. */
static const char builtin_mime[] = "text/html html htm\ntext/css css\ntext/javascript js mjs\n"
                                   "text/plain txt\napplication/json json\nimage/png png\n"
                                   "image/jpeg jpg jpeg\nimage/gif gif\nimage/svg+xml svg\n"
                                   "image/webp webp\napplication/pdf pdf\nfont/woff2 woff2\n";

#define MAX_CERTS 16
#define MAX_LISTEN WORKER_LISTEN_MAX
#define MAX_HEADERS 16
/* The response head is formatted in a fixed buffer (worker.h) that must still hold the longest
 * head of our own (a 301 with a 1 KiB Location): what --header adds stays within this. */
#define EXTRA_HEADERS_MAX 512

/* Where --listen said to listen. */
struct listen_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    bool dual_stack; /* ":PORT": [::] with IPV6_V6ONLY off, IPv4 arriving as ::ffff:a.b.c.d */
};

struct options {
    const char *dir;
    /* Every --listen, in order; the first names the server in the banner and is the port
     * --redirect-http sends clients to. */
    const char *listen[MAX_LISTEN];
    struct listen_addr addr[MAX_LISTEN];
    unsigned nlisten;
    /* The i-th --cert goes with the i-th --key; the first pair is the default (no SNI, or a
     * name no certificate has). */
    const char *cert[MAX_CERTS], *key[MAX_CERTS];
    unsigned ncert, nkey;
    const char *tickets;
    const char *charset; /* NULL: none (--charset off) */
    bool allow_dotfiles;
    bool http2;
    char headers[EXTRA_HEADERS_MAX + 1]; /* "Name: value\r\n" for each --header */
    size_t headers_len;
    const char *access_log;
    enum ktla_ktls_policy ktls;
    enum ktla_file_path file_path;
    bool shared_openssl; /* --openssl-context shared */
    unsigned workers;
    unsigned handshake_timeout_s, idle_timeout_s, drain_timeout_s;
    unsigned max_connections;
    unsigned sndbuf;  /* 0: the kernel's autotuning */
    const char *user; /* --user: drop root to it once the sockets and keys are in hand */
    uid_t uid;
    gid_t gid;
    bool allow_root;
    bool takeover; /* share the port with a running server, which is to be stopped */
    const char *pid_file;
    const char *redirect; /* --redirect-http HOST:PORT, or NULL */
    struct listen_addr raddr;
    const char *metrics; /* --metrics HOST:PORT, or NULL */
    struct listen_addr maddr;
    const char *config; /* --config FILE, or NULL */
    bool check_config;  /* --check-config: validate, say so, exit */
    /* While the command line is read (after the file): its first --listen, --cert/--key or
     * --header replaces the file's list rather than adding to it. */
    bool from_cli, cli_listen, cli_certs, cli_headers;
};

static unsigned sockaddr_port(const struct sockaddr_storage *ss);

static void usage(FILE *f, const char *argv0)
{
    fprintf(
        f,
        "usage: %s [options] [DIR]\n"
        "Serves the regular files beneath DIR (default: .) over HTTPS/1.1, with kernel TLS\n"
        "where the kernel has it.\n\n"
        "  --listen HOST:PORT          address to listen on (default " DEFAULT_LISTEN
        "; [::1]:8443 for IPv6;\n"
        "                              :8443 for every IPv4 and IPv6 address; port 0 picks a\n"
        "                              free one); repeatable, up to 16 addresses\n"
        "  --cert FILE --key FILE      certificate chain and private key (PEM); without them a\n"
        "                              self-signed ECDSA P-256 certificate is made at start-up.\n"
        "                              Repeat the pair for several certificates, chosen by SNI\n"
        "                              (the names in each one's subjectAltName); the first is\n"
        "                              the default\n"
        "  --ktls auto|require|off     kernel TLS: where possible (default), mandatory, never\n"
        "  --file-io sendfile|splice   how bodies enter a kernel-TLS socket: sendfile(2) from the\n"
        "                              worker (default, measured faster), or io_uring splice\n"
        "  --workers N                 threads, each with its own io_uring and listening socket\n"
        "                              (default: the number of CPUs)\n"
        "  --openssl-context worker|shared\n"
        "                              OpenSSL library context: one per worker (default; OpenSSL\n"
        "                              3.0 makes threads sharing one contend on its locks), or\n"
        "                              OpenSSL's default one shared by all\n"
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
        "  --charset NAME|off          charset parameter of text/* types and of JavaScript, JSON\n"
        "                              and XML (default utf-8); off: none\n"
        "  --allow-dotfiles            serve paths with a segment starting with '.' (default:\n"
        "                              404, except beneath /.well-known/)\n"
        "  --http2 on|off              offer HTTP/2 (ALPN h2, preferred) beside HTTP/1.1\n"
        "                              (default on)\n"
        "  --header 'NAME: VALUE'      a field added to every response (e.g. Strict-Transport-\n"
        "                              Security); repeatable, at most 512 bytes in all\n"
        "  --redirect-http HOST:PORT   also listen for plain HTTP there, answering each request\n"
        "                              with a 301 to the same path on https:// and the port of\n"
        "                              --listen (e.g. --redirect-http :80)\n"
        "  --metrics HOST:PORT         serve Prometheus text on plain HTTP at /metrics there\n"
        "                              (e.g. --metrics 127.0.0.1:9100): connections, handshakes,\n"
        "                              kernel TLS, bytes, responses, request durations, per\n"
        "                              worker. No TLS, no authentication: keep it private\n"
        "  --user NAME                 once the sockets are bound and the keys loaded, drop root\n"
        "                              for NAME's user, group and supplementary groups. Started\n"
        "                              as root on a port below 1024, it refuses to run without\n"
        "                              --user or --allow-root\n"
        "  --allow-root                keep root on a port below 1024 (not advised)\n"
        "  --pid-file FILE             write the process id to FILE, locked while running (a\n"
        "                              second server on it refuses to start); removed at exit\n"
        "  --takeover                  start on a port a running ktla-serve listens on (SO_REUSEPORT),\n"
        "                              to replace it: SIGTERM the old one once this one is up\n"
        "  --config FILE               options from FILE, one 'key = value' a line: the long\n"
        "                              options without '--' (listen, cert, key and header\n"
        "                              repeatable; allow-dotfiles = true...) and dir = DIR;\n"
        "                              the command line overrides it\n"
        "  --check-config              check the options (and --config FILE) and the files they\n"
        "                              name, say so, exit: 0 when good, else 2\n"
        "  -h, --help, --version\n\n"
        "Signals: SIGTERM/SIGINT close the listening sockets, finish responses in flight, then\n"
        "exit 0; SIGHUP reloads the certificate, the ticket keys and the access log without\n"
        "dropping connections.\n\n"
        "Under systemd: listening sockets passed by socket activation (LISTEN_FDS) replace\n"
        "--listen, and where NOTIFY_SOCKET is set it says READY=1, RELOADING=1 and STOPPING=1\n"
        "(Type=notify or Type=notify-reload).\n",
        argv0);
}

/* Where the option being read came from: "" for the command line, "FILE:LINE: " for a line of
 * --config, so that every complaint about a value names its line. */
static char where[PATH_MAX + 32];

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "ktla-serve: %s", where);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static int parse_uint(const char *opt, const char *s, unsigned min, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v < min || v > UINT_MAX / 2 || s[0] == '-') {
        say("%s wants a whole number of at least %u, not '%s'\n", opt, min,
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

/* --header 'Name: value': checked now, so that no response ever carries a broken head. */
static int add_header(struct options *o, const char *spec)
{
    const char *why = http_header_invalid(spec);
    if (why) {
        say("--header '%s': %s\n", spec, why);
        return -1;
    }
    const char *colon = strchr(spec, ':'), *value = colon + 1;
    size_t vlen = strlen(value);
    while (*value == ' ' || *value == '\t')
        value++, vlen--;
    while (vlen && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
        vlen--;
    size_t cap = sizeof(o->headers) - o->headers_len;
    int n = snprintf(o->headers + o->headers_len, cap, "%.*s: %.*s\r\n", (int)(colon - spec), spec,
                     (int)vlen, value);
    if (n < 0 || (size_t)n >= cap) {
        o->headers[o->headers_len] = '\0';
        say("--header: at most %d bytes of added fields in all\n",
                EXTRA_HEADERS_MAX);
        return -1;
    }
    o->headers_len += (size_t)n;
    return 0;
}

/* --user NAME: looked up now, so that a name that does not resolve is a usage error before
 * anything is bound. */
static int lookup_user(struct options *o, const char *name)
{
    errno = 0;
    struct passwd *pw = getpwnam(name);
    if (!pw) {
        say("--user %s: %s\n", name,
                errno ? strerror(errno) : "no such user");
        return -1;
    }
    if (pw->pw_uid == 0) {
        say("--user %s is root, which --user is there to leave; "
                "--allow-root keeps root deliberately\n",
                name);
        return -1;
    }
    o->user = name;
    o->uid = pw->pw_uid;
    o->gid = pw->pw_gid;
    return 0;
}

/*
 * HOST:PORT, [V6]:PORT, or :PORT (every address, IPv4 and IPv6). The port is read here rather
 * than by getaddrinfo, which takes 99999 and wraps it to 34463.
 */
static int resolve(const char *opt, const char *spec, struct listen_addr *la)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof(host)) {
        say("%s wants HOST:PORT ([V6]:PORT for IPv6, :PORT for every "
                "address), not '%s'\n",
                opt, spec);
        return -1;
    }
    const char *p = colon + 1;
    unsigned long port = 0;
    size_t digits = strspn(p, "0123456789");
    if (digits == 0 || p[digits] != '\0' || digits > 5 || (port = strtoul(p, NULL, 10)) > 65535) {
        say("%s %s: the port is a number from 0 to 65535, not '%s'\n", opt,
                spec, p);
        return -1;
    }
    size_t hlen = (size_t)(colon - spec);
    memcpy(host, spec, hlen);
    host[hlen] = '\0';
    char *h = host;
    bool bracketed = hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']';
    if (bracketed) {
        h[hlen - 1] = '\0';
        h++;
    } else if (strpbrk(h, "[]:")) {
        say("%s %s: an IPv6 address goes in brackets: [::1]:8443\n", opt,
                spec);
        return -1;
    }
    *la = (struct listen_addr){0};
    if (*h == '\0' && !bracketed) {
        /* Every address: one IPv6 socket that takes IPv4 too, where the host has IPv6 at all. */
        int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            close(fd);
            struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&la->ss;
            a6->sin6_family = AF_INET6;
            a6->sin6_addr = in6addr_any;
            a6->sin6_port = htons((uint16_t)port);
            la->len = sizeof(*a6);
            la->dual_stack = true;
        } else {
            struct sockaddr_in *a4 = (struct sockaddr_in *)&la->ss;
            a4->sin_family = AF_INET;
            a4->sin_addr.s_addr = htonl(INADDR_ANY);
            a4->sin_port = htons((uint16_t)port);
            la->len = sizeof(*a4);
        }
        return 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    if (bracketed) {
        hints.ai_family = AF_INET6;
        hints.ai_flags |= AI_NUMERICHOST;
    }
    int ret = getaddrinfo(h, p, &hints, &res);
    if (ret) {
        say("%s %s: %s: %s\n", opt, spec,
                bracketed ? "not an IPv6 address" : "no such address", gai_strerror(ret));
        return -1;
    }
    memcpy(&la->ss, res->ai_addr, res->ai_addrlen);
    la->len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static const struct option longopts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"cert", required_argument, NULL, 'c'},
    {"key", required_argument, NULL, 'k'},
    {"ktls", required_argument, NULL, 'K'},
    {"file-io", required_argument, NULL, 'F'},
    {"openssl-context", required_argument, NULL, 'O'},
    {"workers", required_argument, NULL, 'w'},
    {"tickets", required_argument, NULL, 't'},
    {"handshake-timeout", required_argument, NULL, 'H'},
    {"idle-timeout", required_argument, NULL, 'i'},
    {"drain-timeout", required_argument, NULL, 'd'},
    {"max-connections", required_argument, NULL, 'm'},
    {"access-log", required_argument, NULL, 'a'},
    {"sndbuf", required_argument, NULL, 'S'},
    {"charset", required_argument, NULL, 'C'},
    {"allow-dotfiles", no_argument, NULL, 'D'},
    {"http2", required_argument, NULL, 'J'},
    {"header", required_argument, NULL, 'R'},
    {"user", required_argument, NULL, 'u'},
    {"allow-root", no_argument, NULL, 'A'},
    {"takeover", no_argument, NULL, 'T'},
    {"pid-file", required_argument, NULL, 'P'},
    {"redirect-http", required_argument, NULL, 'r'},
    {"metrics", required_argument, NULL, 'M'},
    {"config", required_argument, NULL, 'f'},
    {"check-config", no_argument, NULL, 'X'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {0},
};

/* An option without an argument (allow-dotfiles...): set on the command line; in --config,
 * "true", "yes", "on" or "1", and "false", "no", "off" or "0". */
static int parse_bool(const char *arg, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                "off", "0"};
    if (!arg) {
        *out = true;
        return 0;
    }
    for (unsigned i = 0; i < 4; i++) {
        if (!strcmp(arg, yes[i]) || !strcmp(arg, no[i])) {
            *out = !strcmp(arg, yes[i]);
            return 0;
        }
    }
    say("wants true or false, not '%s'\n", arg);
    return -1;
}

/* One option, from the command line or a line of --config (arg NULL: an option without an
 * argument given on the command line). 0 or -1 with the reason printed. */
static int apply_option(struct options *o, int c, const char *arg)
{
    int ret = 0;
    switch (c) {
    case 'l':
        if (o->from_cli && !o->cli_listen) {
            o->nlisten = 0; /* the command line's replace the file's */
            o->cli_listen = true;
        }
        if (o->nlisten == MAX_LISTEN) {
            say("at most %d --listen addresses\n", MAX_LISTEN);
            ret = -1;
        } else if ((ret = resolve("--listen", arg, &o->addr[o->nlisten])) == 0) {
            o->listen[o->nlisten++] = arg;
        }
        break;
    case 'c':
    case 'k':
        if (o->from_cli && !o->cli_certs) {
            o->ncert = o->nkey = 0;
            o->cli_certs = true;
        }
        if ((c == 'c' ? o->ncert : o->nkey) == MAX_CERTS) {
            say("at most %d --cert/--key pairs\n", MAX_CERTS);
            ret = -1;
        } else if (c == 'c') {
            o->cert[o->ncert++] = arg;
        } else {
            o->key[o->nkey++] = arg;
        }
        break;
    case 'K':
        if (!strcmp(arg, "auto"))
            o->ktls = KTLA_KTLS_AUTO;
        else if (!strcmp(arg, "require"))
            o->ktls = KTLA_KTLS_REQUIRE;
        else if (!strcmp(arg, "off"))
            o->ktls = KTLA_KTLS_OFF;
        else {
            say("--ktls is auto, require or off, not '%s'\n", arg);
            ret = -1;
        }
        break;
    case 'F':
        if (!strcmp(arg, "sendfile"))
            o->file_path = KTLA_FILE_SENDFILE;
        else if (!strcmp(arg, "splice"))
            o->file_path = KTLA_FILE_SPLICE;
        else {
            say("--file-io is sendfile or splice, not '%s'\n", arg);
            ret = -1;
        }
        break;
    case 'O':
        if (!strcmp(arg, "worker"))
            o->shared_openssl = false;
        else if (!strcmp(arg, "shared"))
            o->shared_openssl = true;
        else {
            say("--openssl-context is worker or shared, not '%s'\n", arg);
            ret = -1;
        }
        break;
    case 'w':
        ret = parse_uint("--workers", arg, 1, &o->workers);
        break;
    case 't':
        o->tickets = arg;
        break;
    case 'H':
        ret = parse_uint("--handshake-timeout", arg, 1, &o->handshake_timeout_s);
        break;
    case 'i':
        ret = parse_uint("--idle-timeout", arg, 1, &o->idle_timeout_s);
        break;
    case 'd':
        ret = parse_uint("--drain-timeout", arg, 0, &o->drain_timeout_s);
        break;
    case 'm':
        ret = parse_uint("--max-connections", arg, 1, &o->max_connections);
        break;
    case 'a':
        o->access_log = arg;
        break;
    case 'S':
        ret = parse_uint("--sndbuf", arg, 4096, &o->sndbuf);
        break;
    case 'C':
        if (!strcmp(arg, "off")) {
            o->charset = NULL;
        } else if (http_is_token(arg)) {
            o->charset = arg;
        } else {
            say("--charset wants a charset name or off, not '%s'\n",
                    arg);
            ret = -1;
        }
        break;
    case 'D':
        ret = parse_bool(arg, &o->allow_dotfiles);
        break;
    case 'J':
        ret = parse_bool(arg, &o->http2);
        break;
    case 'R':
        if (o->from_cli && !o->cli_headers) {
            o->headers_len = 0;
            o->headers[0] = '\0';
            o->cli_headers = true;
        }
        ret = add_header(o, arg);
        break;
    case 'u':
        ret = lookup_user(o, arg);
        break;
    case 'A':
        ret = parse_bool(arg, &o->allow_root);
        break;
    case 'T':
        ret = parse_bool(arg, &o->takeover);
        break;
    case 'P':
        o->pid_file = arg;
        break;
    case 'r':
        o->redirect = arg;
        ret = resolve("--redirect-http", arg, &o->raddr);
        break;
    case 'M':
        o->metrics = arg;
        ret = resolve("--metrics", arg, &o->maddr);
        break;
    default:
        ret = -1;
        break;
    }
    return ret;
}

/* ---- --config FILE: "key = value" lines, each key an option's long name (or dir) */

/* The values read from the file, which the options point into until exit. */
static char **config_strings;
static size_t nconfig_strings;

static void config_free(void)
{
    for (size_t i = 0; i < nconfig_strings; i++)
        free(config_strings[i]);
    free(config_strings);
    config_strings = NULL;
    nconfig_strings = 0;
}

static const char *config_keep(const char *value)
{
    char **more = realloc(config_strings, (nconfig_strings + 1) * sizeof(*more));
    char *copy = strdup(value);
    if (more)
        config_strings = more;
    if (!more || !copy) {
        free(copy);
        return NULL;
    }
    config_strings[nconfig_strings++] = copy;
    return copy;
}

struct config_reader {
    FILE *f;
    struct options *o;
    const char *path;
    unsigned line;
    int max_line;
    bool failed;   /* a value was refused, and said so */
    bool too_long; /* a line did not fit inih's buffer */
};

/* inih's reader, one line a call: counted here, since inih tells the handler no line number,
 * and a line too long for its buffer stopped rather than read as two. */
static char *config_line(char *str, int num, void *stream)
{
    struct config_reader *r = stream;
    if (!fgets(str, num, r->f))
        return NULL;
    r->line++;
    size_t len = strlen(str);
    if (len && str[len - 1] != '\n' && !feof(r->f)) {
        r->too_long = true;
        r->max_line = num - 2;
        return NULL;
    }
    return str;
}

static int config_key(void *user, const char *section, const char *name, const char *value)
{
    struct config_reader *r = user;
    const char *kept;
    int ret = -1;

    if (r->failed)
        return 0; /* the first mistake is the one reported */
    snprintf(where, sizeof(where), "%s:%u: ", r->path, r->line);
    if (*section) {
        say("[%s]: no sections here: every line is 'key = value'\n", section);
    } else if (!(kept = config_keep(value))) {
        say("out of memory\n");
    } else if (!strcmp(name, "dir")) {
        r->o->dir = kept;
        ret = 0;
    } else {
        const struct option *opt = longopts;
        while (opt->name && strcmp(opt->name, name))
            opt++;
        if (!opt->name || strchr("fXhV", opt->val))
            say("unknown key '%s' (the keys are the long options, without '--', and dir)\n",
                name);
        else
            ret = apply_option(r->o, opt->val, kept);
    }
    where[0] = '\0';
    r->failed = ret < 0;
    return ret == 0;
}

/* Reads FILE into o, each value checked as its option is. 0, or -1 with the reason printed, the
 * file and line named. */
static int load_config(struct options *o, const char *path)
{
    struct config_reader r = {.o = o, .path = path};
    r.f = fopen(path, "re");
    if (!r.f) {
        say("--config %s: %s\n", path, strerror(errno));
        return -1;
    }
    int ret = ini_parse_stream(config_line, &r, config_key, &r);
    fclose(r.f);
    if (r.failed)
        return -1;
    if (r.too_long) {
        say("%s:%u: a line of more than %d bytes\n", path, r.line, r.max_line);
        return -1;
    }
    if (ret != 0) {
        say("%s:%d: not a 'key = value' line, a '# comment' or blank\n", path, ret);
        return -1;
    }
    return 0;
}

/* 0, 1 (exit 0: --help/--version), or -1 (exit 2). */
static int parse_options(int argc, char **argv, struct options *o)
{
    *o = (struct options){
        .dir = ".",
        .workers = cpu_count(),
        .handshake_timeout_s = 10,
        .idle_timeout_s = 30,
        .drain_timeout_s = 10,
        .max_connections = 4096,
        .charset = "utf-8",
        .http2 = true,
    };
    int c;
    /* The file first, the command line over it: --config is looked for before anything else. */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1)
        if (c == 'f')
            o->config = optarg;
    opterr = 1;
    optind = 0; /* GNU getopt: start again from the beginning */
    if (o->config && load_config(o, o->config) < 0)
        return -1;
    o->from_cli = true;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int ret = 0;
        switch (c) {
        case 'f':
            break;
        case 'X':
            o->check_config = true;
            break;
        case 'D':
        case 'A':
        case 'T':
            ret = apply_option(o, c, NULL);
            break;
        case 'h':
            usage(stdout, argv[0]);
            return 1;
        case 'V':
            printf("ktla-serve %s (http_parser %lu.%lu.%lu)\n", ktla_version(),
                   http_parser_version() >> 16, (http_parser_version() >> 8) & 255,
                   http_parser_version() & 255);
            return 1;
        case '?':
            ret = -1;
            break;
        default:
            ret = apply_option(o, c, optarg);
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
        say("one DIR only ('%s' is extra)\nTry '%s --help'.\n",
                argv[optind], argv[0]);
        return -1;
    }
    if (o->ncert != o->nkey) {
        say("--cert and --key go together, one --key for each --cert (%u --cert, "
                "%u --key)\n",
                o->ncert, o->nkey);
        return -1;
    }
    if (o->handshake_timeout_s > 3600 || o->workers > 1024) {
        say("--handshake-timeout is at most 3600, --workers 1024\n");
        return -1;
    }
    /* Every address was resolved as it was read: a --listen that names no address is as much a
     * usage error as any other bad option, and one in --config is reported with its line. */
    if (!o->nlisten && resolve("--listen", DEFAULT_LISTEN, &o->addr[0]) == 0)
        o->listen[o->nlisten++] = DEFAULT_LISTEN;
    for (unsigned i = 0; i < o->nlisten; i++) {
        /* The same address twice would bind (SO_REUSEPORT) and serve nothing more. */
        for (unsigned j = 0; j < i; j++) {
            if (o->addr[j].len == o->addr[i].len && sockaddr_port(&o->addr[i].ss) &&
                !memcmp(&o->addr[j].ss, &o->addr[i].ss, o->addr[i].len)) {
                say("--listen %s: the same address as --listen %s\n",
                        o->listen[i], o->listen[j]);
                return -1;
            }
        }
    }
    return 0;
}

/* Said rather than left to net.ipv6.bindv6only, which some systems set to 1. */
static int set_dual_stack(int fd, const struct listen_addr *la)
{
    if (!la->dual_stack)
        return 0;
    return setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &(int){0}, sizeof(int));
}

/*
 * The workers' sockets share the port with SO_REUSEPORT, which would as readily let them share it
 * with another server of the same user (a second ktla-serve on the same address, forgotten in
 * the background), the kernel then dealing connections between the two without a word. A socket
 * bound without SO_REUSEPORT first makes such a port fail with EADDRINUSE, as for any server.
 * Port 0 is left alone: the first worker's socket picks a free one.
 */
static int check_port_free(const struct listen_addr *la)
{
    int one = 1, ret = 0, fd = socket(la->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        set_dual_stack(fd, la) < 0 || bind(fd, (const struct sockaddr *)&la->ss, la->len) < 0)
        ret = -errno;
    close(fd);
    return ret;
}

/* The --redirect-http socket: one, for one thread, so no SO_REUSEPORT (a second server on the
 * port is refused as for any server). -errno on failure. */
static int open_plain_listener(const struct listen_addr *la)
{
    int one = 1, fd = socket(la->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        set_dual_stack(fd, la) < 0 || bind(fd, (const struct sockaddr *)&la->ss, la->len) < 0 ||
        listen(fd, 128) < 0) {
        int ret = -errno;
        close(fd);
        return ret;
    }
    return fd;
}

static int open_listener(struct listen_addr *la, unsigned sndbuf)
{
    struct sockaddr_storage *ss = &la->ss;
    socklen_t len = la->len;
    int one = 1, fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto err;
    /* Set on the listening socket, the size is inherited by every accepted one. */
    if (sndbuf && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int){(int)sndbuf}, sizeof(int)) < 0)
        goto err_close;
    /* One socket per worker on the same address: the kernel spreads connections over them. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        set_dual_stack(fd, la) < 0 || bind(fd, (struct sockaddr *)ss, len) < 0 ||
        listen(fd, 1024) < 0)
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

/* ---- running as a service: socket activation, dropping root, the pid file, sd_notify */

#define LISTEN_FDS_START 3 /* sd_listen_fds(3): the first passed descriptor */
#define MAX_INHERITED 64

/*
 * Sockets passed by systemd (or systemd-socket-activate), read by the documented protocol of
 * sd_listen_fds(3) rather than through libsystemd, for three environment variables: LISTEN_PID
 * must be this process (the variables may have been meant for a parent and inherited by
 * mistake: then they are not ours and are left alone), LISTEN_FDS sockets start at descriptor 3,
 * LISTEN_FDNAMES names them (colon-separated; printed, not needed). Each must be a listening TCP
 * socket: Accept=yes (one connection per process) and datagram sockets are refused.
 * Returns the number of sockets (0: not socket-activated), or -1 with the reason printed.
 */
static int inherited_sockets(int *fds, unsigned max)
{
    const char *pid_s = getenv("LISTEN_PID"), *fds_s = getenv("LISTEN_FDS");
    char *end;
    if (!pid_s || !fds_s)
        return 0;
    errno = 0;
    unsigned long pid = strtoul(pid_s, &end, 10);
    if (errno || end == pid_s || *end || pid != (unsigned long)getpid())
        return 0;
    unsigned long n = strtoul(fds_s, &end, 10);
    if (errno || end == fds_s || *end || n > max) {
        fprintf(stderr, "ktla-serve: LISTEN_FDS=%s: want a number of sockets up to %u\n", fds_s,
                max);
        return -1;
    }
    /* Children of ours (none today) must not take them for their own. */
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    for (unsigned i = 0; i < n; i++) {
        int fd = LISTEN_FDS_START + (int)i, type = 0, listening = 0;
        socklen_t tl = sizeof(type), ll = sizeof(listening);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) < 0 ||
            getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
            fprintf(stderr, "ktla-serve: socket activation: descriptor %d is not a socket: %s\n",
                    fd, strerror(errno));
            return -1;
        }
        if (type != SOCK_STREAM || !listening ||
            (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
            fprintf(stderr,
                    "ktla-serve: socket activation: descriptor %d is not a listening TCP socket "
                    "(the .socket unit wants ListenStream= and Accept=no)\n",
                    fd);
            return -1;
        }
        fds[i] = fd;
    }
    if (n == 0) {
        fprintf(stderr, "ktla-serve: socket activation: LISTEN_FDS=0, no socket to serve on\n");
        return -1;
    }
    return (int)n;
}

static unsigned sockaddr_port(const struct sockaddr_storage *ss)
{
    return ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
                                           : ((const struct sockaddr_in *)ss)->sin_port);
}

/*
 * root is how a server gets a port below 1024 (without systemd or CAP_NET_BIND_SERVICE), and once
 * it is bound root serves no purpose: a flaw in TLS or HTTP code would hand an attacker the whole
 * machine. So there, root without --user is refused, unless --allow-root says it is meant. On a
 * high port nothing needed root and running as root is a developer's or a container's
 * (CI's, the test suites'), and is left alone.
 */
static int refuse_root(const struct options *o, unsigned port)
{
    if (geteuid() != 0 || o->user || o->allow_root || port == 0 || port >= 1024)
        return 0;
    fprintf(stderr,
            "ktla-serve: refusing to serve port %u as root: give --user NAME to drop root once "
            "the port is bound and the keys loaded (or --allow-root to keep it)\n",
            port);
    return -1;
}

/*
 * Opened without O_TRUNC and locked before it is written, so that a second server given the same
 * file finds the first one's pid in it rather than clobbering it. The descriptor stays open (the
 * lock with it) until exit. Returns it, or -1 with the reason printed.
 */
static int pid_file_open(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "ktla-serve: --pid-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        char other[32] = "";
        ssize_t len = pread(fd, other, sizeof(other) - 1, 0);
        other[len > 0 ? len : 0] = '\0';
        other[strcspn(other, "\n")] = '\0';
        fprintf(stderr, "ktla-serve: --pid-file %s: %s (pid %s holds it)\n", path,
                errno == EWOULDBLOCK ? "another ktla-serve is running" : strerror(errno),
                *other ? other : "?");
        close(fd);
        return -1;
    }
    char buf[32];
    int len = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)len, 0) != len) {
        fprintf(stderr, "ktla-serve: --pid-file %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* After --user, the directory of a root's pid file is no longer ours to unlink in: then it is
 * emptied through the descriptor still open for writing, which every reader takes as stale. */
static void pid_file_remove(const char *path, int fd)
{
    if (fd < 0)
        return;
    if (unlink(path) < 0)
        (void)!ftruncate(fd, 0);
    close(fd);
}

/*
 * sd_notify(3)'s protocol without libsystemd: one datagram to the AF_UNIX socket NOTIFY_SOCKET
 * names (a path, or '@' for the abstract namespace). Connected before root is dropped, so that a
 * socket only root may write to still takes our messages afterwards. -1: nothing to tell.
 */
static int notify_fd = -1;

static void notify_open(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof(sa.sun_path)) {
        fprintf(stderr,
                "ktla-serve: NOTIFY_SOCKET=%s: not an AF_UNIX socket path; systemd will "
                "not hear that the server is ready\n",
                path);
        return;
    }
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 ||
        connect(fd, (struct sockaddr *)&sa,
                (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/'))) < 0) {
        fprintf(stderr,
                "ktla-serve: NOTIFY_SOCKET=%s: %s; systemd will not hear that the "
                "server is ready\n",
                path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    notify_fd = fd;
}

static void notify(const char *msg)
{
    /* Never blocks: systemd not reading its socket must not stop the server. */
    if (notify_fd >= 0)
        (void)!send(notify_fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL);
}

/* Type=notify-reload wants RELOADING=1 with the CLOCK_MONOTONIC time of the reload. */
static void notify_reloading(void)
{
    struct timespec ts;
    char msg[64];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    notify(msg);
}

/*
 * Root to --user for good: supplementary groups first (they need root), then the group, then the
 * user (setuid from root sets the real, effective and saved ids, and clears the capabilities).
 * Then checked rather than trusted: every id is the user's, and a way back to root fails.
 * no_new_privs closes the last one (a set-user-ID program run by a later exec). 0 or -1.
 */
static int drop_root(const struct options *o)
{
    if (geteuid() != 0) {
        if (geteuid() == o->uid && getegid() == o->gid)
            return 0; /* already that user (systemd's User= with --user too) */
        fprintf(stderr,
                "ktla-serve: --user %s: only root can become another user (running as "
                "uid %u)\n",
                o->user, (unsigned)geteuid());
        return -1;
    }
    if (initgroups(o->user, o->gid) < 0 || setgid(o->gid) < 0 || setuid(o->uid) < 0) {
        fprintf(stderr, "ktla-serve: --user %s: cannot become that user: %s\n", o->user,
                strerror(errno));
        return -1;
    }
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0 || ru != o->uid ||
        eu != o->uid || su != o->uid || rg != o->gid || eg != o->gid || sg != o->gid ||
        setuid(0) == 0 || seteuid(0) == 0 || (o->gid != 0 && (setgid(0) == 0 || setegid(0) == 0))) {
        fprintf(stderr, "ktla-serve: --user %s: root was not dropped for good; stopping\n",
                o->user);
        return -1;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        fprintf(stderr, "ktla-serve: --user %s: PR_SET_NO_NEW_PRIVS: %s\n", o->user,
                strerror(errno));
        return -1;
    }
    return 0;
}

static void print_url(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char host[NI_MAXHOST], port[NI_MAXSERV];
    getnameinfo((const struct sockaddr *)ss, sizeof(*ss), host, sizeof(host), port, sizeof(port),
                NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(out, cap, ss->ss_family == AF_INET6 ? "https://[%s]:%s/" : "https://%s:%s/", host,
             port);
}

/* The URL of the "try:" line: one a client on this machine can connect to. A wildcard address
 * (0.0.0.0, [::]) is where the server listens, not where anyone connects: the loopback address of
 * the family that the socket takes is named instead, 127.0.0.1 where the [::] socket also takes
 * IPv4 (IPV6_V6ONLY off: --listen :PORT), [::1] where it takes IPv6 only. */
static void print_try_url(const struct sockaddr_storage *ss, int fd, char *out, size_t cap)
{
    struct sockaddr_storage t = *ss;
    if (t.ss_family == AF_INET) {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&t;
        if (a4->sin_addr.s_addr == htonl(INADDR_ANY))
            a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (t.ss_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&t;
        int v6only = 1;
        socklen_t len = sizeof(v6only);
        if (IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr)) {
            if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len) == 0 && !v6only) {
                in_port_t port = a6->sin6_port;
                struct sockaddr_in *a4 = (struct sockaddr_in *)&t;
                memset(&t, 0, sizeof(t));
                a4->sin_family = AF_INET;
                a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                a4->sin_port = port;
            } else {
                a6->sin6_addr = in6addr_loopback;
            }
        }
    }
    print_url(&t, out, cap);
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

/* Each pair checked by cert_check: 0, or -1 with the reason printed after `what`. */
static int check_certs(const struct options *o, const char *what)
{
    char err[512];
    for (unsigned i = 0; i < o->ncert; i++) {
        if (cert_check(o->cert[i], o->key[i], err, sizeof(err)) < 0) {
            fprintf(stderr, "ktla-serve: %s%s\n", what, err);
            return -1;
        }
    }
    return 0;
}

static void reload(const struct options *o, struct serve_config *cfg)
{
    if (o->ncert) {
        struct ktla_cert_config cc[MAX_CERTS];
        for (unsigned i = 0; i < o->ncert; i++)
            cc[i] = (struct ktla_cert_config){.cert_file = o->cert[i], .key_file = o->key[i]};
        int ret = check_certs(o, "SIGHUP: certificates NOT reloaded, keeping the old ones: ");
        if (ret == 0) {
            ret = ktla_ctx_reload_certs(cfg->ctx, cc, o->ncert);
            if (ret < 0)
                fprintf(stderr,
                        "ktla-serve: SIGHUP: certificates NOT reloaded, keeping the old ones: "
                        "%s\n",
                        ktla_strerror(ret));
        }
        for (unsigned i = 0; ret == 0 && i < o->ncert; i++) {
            char fp[128] = "?";
            cert_fingerprint(NULL, o->cert[i], fp, sizeof(fp));
            fprintf(stderr, "ktla-serve: SIGHUP: certificate reloaded from %s (SHA-256 %s)\n",
                    o->cert[i], fp);
        }
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

/* --check-config: what start-up would refuse, short of binding and running. 0 (said on standard
 * output) or 2. */
static int check_config(const struct options *o)
{
    if (check_certs(o, "") < 0)
        return 2;
    if (o->tickets && access(o->tickets, R_OK) < 0) {
        fprintf(stderr, "ktla-serve: --tickets %s: cannot read it: %s\n", o->tickets,
                strerror(errno));
        return 2;
    }
    int fd = open(o->dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "ktla-serve: cannot serve '%s': %s\n", o->dir, strerror(errno));
        return 2;
    }
    close(fd);
    printf("ktla-serve: %s%s: good (%u address%s, %u certificate%s, serving %s)\n",
           o->config ? o->config : "the options", o->config ? " with the options" : "",
           o->nlisten, o->nlisten == 1 ? "" : "es", o->ncert, o->ncert == 1 ? "" : "s", o->dir);
    return 0;
}

/* DIR must be readable by whoever serves it: checked at start-up, and again after --user. */
static int check_dir(const char *dir, int root_fd)
{
    int ret = files_probe(root_fd);
    if (ret == -EACCES || ret == -EPERM) {
        /* O_PATH above needs no permission on DIR itself; reading it does. */
        struct passwd *pw = getpwuid(geteuid());
        fprintf(stderr,
                "ktla-serve: cannot read '%s': %s (ktla-serve runs as user %s, uid %u): give "
                "that user read and search permission on it\n",
                dir, strerror(-ret), pw ? pw->pw_name : "?", (unsigned)geteuid());
        return -1;
    } else if (ret == -ENOSYS) {
        fprintf(stderr,
                "ktla-serve: this kernel lacks openat2(RESOLVE_BENEATH) (%s), which keeps every "
                "path beneath DIR; Linux 5.6 or later is needed\n",
                strerror(-ret));
        return -1;
    } else if (ret < 0) {
        fprintf(stderr, "ktla-serve: cannot open '%s' with openat2(RESOLVE_BENEATH): %s\n", dir,
                strerror(-ret));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct options o;
    struct serve_config cfg = {.log_fd = -1};
    struct cert_pem pem = {0};
    struct worker *workers = NULL;
    unsigned nworkers, nstarted = 0, ninit = 0;
    int inherited[MAX_INHERITED], ninherited, pid_fd = -1, redirect_fd = -1, metrics_fd = -1;
    struct redirect *redirect = NULL;
    struct metrics_server *metrics = NULL;
    struct worker_metrics **mv = NULL;
    bool redirect_failed = false;
    char fp[128], err[256];
    int status = 1, ret;

    ret = parse_options(argc, argv, &o);
    if (ret) {
        config_free();
        return ret > 0 ? 0 : 2;
    }
    if (o.check_config) {
        ret = check_config(&o);
        config_free();
        return ret;
    }
    /* sendfile(2) cannot be told MSG_NOSIGNAL: a client that goes away must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    /*
     * Each connection's memory (OpenSSL's state and buffers, ours) is freed when it ends, and
     * glibc then gives the top of the worker's heap back to the kernel as soon as 128 KiB are
     * free there; the next connections fault the same pages in again, zeroed. Measured with
     * bench/syscalls.sh (full handshakes, one worker): 1.7-2.2 page faults and about 8 us of
     * kernel time per connection, gone with a higher threshold. Freed memory is kept up to
     * 32 MiB per heap instead, and buffers below 1 MiB come from the heap rather than a mmap
     * each. An operator's GLIBC_TUNABLES decides instead where set.
     */
    if (!getenv("GLIBC_TUNABLES")) {
        mallopt(M_TRIM_THRESHOLD, 32 << 20);
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
    }

    ninherited = inherited_sockets(inherited, MAX_INHERITED);
    if (ninherited < 0)
        return 1;
    for (int i = 0; i < ninherited; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        getsockname(inherited[i], (struct sockaddr *)&ss, &sl);
        if (refuse_root(&o, sockaddr_port(&ss)) < 0)
            return 2;
    }
    for (unsigned i = 0; !ninherited && i < o.nlisten; i++)
        if (refuse_root(&o, sockaddr_port(&o.addr[i].ss)) < 0)
            return 2;
    if ((o.redirect && refuse_root(&o, sockaddr_port(&o.raddr.ss)) < 0) ||
        (o.metrics && refuse_root(&o, sockaddr_port(&o.maddr.ss)) < 0))
        return 2;

    cfg.root_fd = open(o.dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cfg.root_fd < 0) {
        fprintf(stderr, "ktla-serve: cannot serve '%s': %s\n", o.dir, strerror(errno));
        return 1;
    }
    if (check_dir(o.dir, cfg.root_fd) < 0)
        goto err_root;
    if (mime_load(&cfg.mime, MIME_TYPES) < 0) {
        fprintf(stderr,
                "ktla-serve: no %s (Debian's media-types package): using a few built-in "
                "types\n",
                MIME_TYPES);
        if (mime_load_string(&cfg.mime, builtin_mime) < 0)
            goto err_root;
    }
    if (mime_set_charset(&cfg.mime, o.charset) < 0) {
        fprintf(stderr, "ktla-serve: out of memory\n");
        goto err_mime;
    }
    cfg.mime.allow_dotfiles = o.allow_dotfiles;
    cfg.mime.extra_headers = o.headers_len ? o.headers : NULL;

    struct ktla_cert_config cc[MAX_CERTS] = {{0}};
    unsigned ncc = o.ncert ? o.ncert : 1;
    for (unsigned i = 0; i < o.ncert; i++)
        cc[i] = (struct ktla_cert_config){.cert_file = o.cert[i], .key_file = o.key[i]};
    if (!o.ncert) {
        if (cert_self_signed(&pem, err, sizeof(err)) < 0) {
            fprintf(stderr, "ktla-serve: %s\n", err);
            goto err_mime;
        }
        cc[0].cert_pem = pem.cert;
        cc[0].key_pem = pem.key;
    } else if (check_certs(&o, "") < 0) {
        goto err_mime;
    }
    /* HTTP/2 first when offered: the client's choice among what both speak is ours to make. */
    struct ktla_ctx_config cc_ctx = {
        .certs = cc,
        .ncerts = ncc,
        .alpn = o.http2 ? h2_alpn : h2_alpn + 1,
        .nalpn = o.http2 ? 2 : 1,
    };
    ret = ktla_ctx_new(&cc_ctx, &cfg.ctx);
    if (ret < 0) {
        fprintf(stderr, "ktla-serve: %s: %s\n", o.ncert ? "--cert/--key" : "the certificate",
                ktla_strerror(ret));
        goto err_pem;
    }
    /* Loaded apart from ktla_ctx_new so that a failure names this file, not the certificate. */
    if (o.tickets) {
        int tfd = open(o.tickets, O_RDONLY | O_CLOEXEC);
        if (tfd < 0) {
            fprintf(stderr, "ktla-serve: --tickets %s: cannot read it: %s\n", o.tickets,
                    strerror(errno));
            goto err_ctx;
        }
        close(tfd);
        ret = ktla_ctx_load_ticket_keys(cfg.ctx, o.tickets);
        if (ret < 0) {
            fprintf(stderr, "ktla-serve: --tickets %s: %s\n", o.tickets, ktla_strerror(ret));
            goto err_ctx;
        }
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
    cfg.shared_openssl = o.shared_openssl;
    cfg.handshake_timeout_ms = o.handshake_timeout_s * 1000;
    cfg.idle_timeout_s = o.idle_timeout_s;
    cfg.drain_timeout_s = o.drain_timeout_s;
    /* With socket activation every worker accepts on a duplicate of a passed socket (several
     * workers on one socket take turns from its queue): SO_REUSEPORT cannot be set on a socket
     * bound by someone else, and systemd passes one socket per address. */
    nworkers = o.workers > (unsigned)ninherited ? o.workers : (unsigned)ninherited;
    cfg.max_conns = (o.max_connections + nworkers - 1) / nworkers;

    struct sockaddr_storage *ss = &o.addr[0].ss;
    /* --takeover: the port is meant to be in use, by the server this one replaces. */
    for (unsigned i = 0; !ninherited && !o.takeover && i < o.nlisten; i++) {
        ret = sockaddr_port(&o.addr[i].ss) ? check_port_free(&o.addr[i]) : 0;
        if (ret < 0) {
            fprintf(stderr, "ktla-serve: cannot listen on %s: %s\n", o.listen[i],
                    strerror(-ret));
            goto err_log;
        }
    }
    for (int i = 0; i < ninherited; i++) {
        if (o.sndbuf &&
            setsockopt(inherited[i], SOL_SOCKET, SO_SNDBUF, &(int){(int)o.sndbuf}, sizeof(int))) {
            fprintf(stderr, "ktla-serve: --sndbuf on the socket from systemd: %s\n",
                    strerror(errno));
            goto err_log;
        }
    }
    workers = calloc(nworkers, sizeof(*workers));
    mv = calloc(nworkers, sizeof(*mv));
    if (!workers || !mv)
        goto err_workers;
    for (unsigned i = 0; i < nworkers; i++)
        for (unsigned j = 0; j < MAX_LISTEN; j++)
            workers[i].listen_fd[j] = -1;
    for (unsigned i = 0; i < nworkers; i++) {
        struct worker *w = &workers[i];
        w->cfg = &cfg;
        w->stop = &cfg.stop;
        w->index = (int)i;
        mv[i] = &w->metrics;
        if (ninherited) {
            w->nlisten = 1;
            w->listen_fd[0] = fcntl(inherited[i % (unsigned)ninherited], F_DUPFD_CLOEXEC, 0);
            if (w->listen_fd[0] < 0) {
                fprintf(stderr, "ktla-serve: cannot duplicate the socket from systemd: %s\n",
                        strerror(errno));
                goto err_workers;
            }
            continue;
        }
        /* Each worker its own socket on every address: SO_REUSEPORT deals each address's
         * connections over the workers. */
        w->nlisten = o.nlisten;
        for (unsigned j = 0; j < o.nlisten; j++) {
            w->listen_fd[j] = open_listener(&o.addr[j], o.sndbuf);
            if (w->listen_fd[j] < 0) {
                fprintf(stderr, "ktla-serve: cannot listen on %s: %s\n", o.listen[j],
                        strerror(-w->listen_fd[j]));
                goto err_workers;
            }
        }
    }

    if (o.redirect) {
        redirect_fd = open_plain_listener(&o.raddr);
        if (redirect_fd < 0) {
            fprintf(stderr, "ktla-serve: cannot listen on --redirect-http %s: %s\n", o.redirect,
                    strerror(-redirect_fd));
            goto err_workers;
        }
    }
    if (o.metrics) {
        metrics_fd = open_plain_listener(&o.maddr);
        if (metrics_fd < 0) {
            fprintf(stderr, "ktla-serve: cannot listen on --metrics %s: %s\n", o.metrics,
                    strerror(-metrics_fd));
            goto err_workers;
        }
    }

    /* Everything root was needed for is in hand: the sockets, the keys, the access log. The pid
     * file too (it is written as root, in a directory only root may write to). */
    if (o.pid_file) {
        pid_fd = pid_file_open(o.pid_file);
        if (pid_fd < 0)
            goto err_workers;
    }
    notify_open();
    if (o.user && (drop_root(&o) < 0 || check_dir(o.dir, cfg.root_fd) < 0))
        goto err_workers;
    /* The rings are made as the user that runs them. */
    for (; ninit < nworkers; ninit++) {
        if (worker_init(&workers[ninit]) < 0) {
            if (workers[ninit].failed)
                ninit++; /* made in part: run down below like the others */
            goto err_workers;
        }
    }

    char url[NI_MAXHOST + 32], dir[PATH_MAX];
    if (ninherited) {
        socklen_t sl = sizeof(*ss);
        getsockname(inherited[0], (struct sockaddr *)ss, &sl);
    }
    print_url(ss, url, sizeof(url));
    if (!realpath(o.dir, dir))
        snprintf(dir, sizeof(dir), "%s", o.dir);
    printf("ktla-serve %s: serving %s at %s%s\n", ktla_version(), dir, url,
           ninherited             ? " (socket from systemd)"
           : o.addr[0].dual_stack ? " (every IPv4 and IPv6 address)"
                                  : "");
    for (unsigned i = 1; !ninherited && i < o.nlisten; i++) {
        char more[NI_MAXHOST + 32];
        print_url(&o.addr[i].ss, more, sizeof(more));
        printf("  and:         %s%s\n", more,
               o.addr[i].dual_stack ? " (every IPv4 and IPv6 address)" : "");
    }
    for (int i = 1; i < ninherited; i++) {
        struct sockaddr_storage other;
        socklen_t sl = sizeof(other);
        char more[NI_MAXHOST + 32];
        getsockname(inherited[i], (struct sockaddr *)&other, &sl);
        print_url(&other, more, sizeof(more));
        printf("  and:         %s (socket from systemd)\n", more);
    }
    for (unsigned i = 0; i < o.ncert; i++) {
        if (cert_fingerprint(NULL, o.cert[i], fp, sizeof(fp)) < 0)
            snprintf(fp, sizeof(fp), "(cannot read the certificate)");
        printf("  %s %s, SHA-256 %s%s\n", i ? "            " : "certificate:", o.cert[i], fp,
               o.ncert < 2 ? ""
               : i         ? " (by SNI)"
                           : " (the default)");
    }
    if (!o.ncert) {
        if (cert_fingerprint(pem.cert, NULL, fp, sizeof(fp)) < 0)
            snprintf(fp, sizeof(fp), "(cannot read the certificate)");
        printf("  certificate: self-signed ECDSA P-256 for localhost, 127.0.0.1, ::1 (made now, in "
               "memory), SHA-256 %s\n",
               fp);
    }
    report_ktls(o.ktls, o.file_path, probe, &ks);
    printf("  protocols:   %s\n", o.http2 ? "HTTP/2 (ALPN h2, preferred) and HTTP/1.1"
                                           : "HTTP/1.1 (--http2 off)");
    if (ninherited)
        printf("  workers:     %u (one io_uring each, sharing the %d socket%s systemd passed), up "
               "to %u connections\n",
               nworkers, ninherited, ninherited > 1 ? "s" : "", cfg.max_conns * nworkers);
    else
        printf("  workers:     %u (one io_uring and one SO_REUSEPORT socket%s each), up to %u "
               "connections\n",
               nworkers, o.nlisten > 1 ? " per address" : "",
               cfg.max_conns * nworkers);
    if (o.redirect) {
        struct sockaddr_storage rss;
        socklen_t sl = sizeof(rss);
        char rurl[NI_MAXHOST + 32];
        getsockname(redirect_fd, (struct sockaddr *)&rss, &sl);
        print_url(&rss, rurl, sizeof(rurl));
        printf("  redirect:    http%s: 301 to https on port %u\n", rurl + 5, sockaddr_port(ss));
    }
    if (o.metrics) {
        struct sockaddr_storage mss;
        socklen_t sl = sizeof(mss);
        char murl[NI_MAXHOST + 32];
        getsockname(metrics_fd, (struct sockaddr *)&mss, &sl);
        print_url(&mss, murl, sizeof(murl));
        printf("  metrics:     http%smetrics (Prometheus text, plain HTTP: keep it private)\n",
               murl + 5);
    }
    if (o.user)
        printf("  user:        %s (uid %u, gid %u): root dropped after binding and loading keys\n",
               o.user, (unsigned)o.uid, (unsigned)o.gid);
    if (!o.ncert) {
        char try_url[NI_MAXHOST + 32];
        print_try_url(ss, workers[0].listen_fd[0], try_url, sizeof(try_url));
        printf("  try:         curl --insecure %s\n", try_url);
    }
    fflush(stdout);

    /* Signals go to this thread only (sigwait below); the workers inherit the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    for (; nstarted < nworkers; nstarted++) {
        ret = worker_start(&workers[nstarted]);
        if (ret < 0) {
            fprintf(stderr, "ktla-serve: cannot start a worker thread: %s\n", strerror(-ret));
            atomic_store(&cfg.stop, 2);
            break;
        }
    }
    if (nstarted == nworkers && redirect_fd >= 0) {
        /* The thread owns the socket from here, whatever happens. */
        ret = redirect_start(redirect_fd, sockaddr_port(ss), &redirect);
        redirect_fd = -1;
        if (ret < 0) {
            fprintf(stderr, "ktla-serve: cannot start the --redirect-http thread: %s\n",
                    strerror(-ret));
            atomic_store(&cfg.stop, 2);
            redirect_failed = true;
        }
    }
    if (nstarted == nworkers && !redirect_failed && metrics_fd >= 0) {
        /* The thread owns the socket from here, whatever happens. */
        ret = metrics_start(metrics_fd, mv, nworkers, &metrics);
        metrics_fd = -1;
        if (ret < 0) {
            fprintf(stderr, "ktla-serve: cannot start the --metrics thread: %s\n",
                    strerror(-ret));
            atomic_store(&cfg.stop, 2);
            redirect_failed = true;
        }
    }
    if (nstarted == nworkers && !redirect_failed) {
        char msg[NI_MAXHOST + PATH_MAX + 64];
        snprintf(msg, sizeof(msg), "READY=1\nSTATUS=serving %s at %s", dir, url);
        notify(msg);
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
            notify_reloading();
            reload(&o, &cfg);
            notify("READY=1");
        } else if (sig == SIGTERM || sig == SIGINT) {
            int was = atomic_load(&cfg.stop);
            /* Nothing more is redirected to a server on its way out. */
            redirect_stop(redirect);
            redirect = NULL;
            if (!was)
                notify("STOPPING=1\nSTATUS=finishing responses in flight");
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
    status = nstarted < nworkers || redirect_failed ? 1 : 0;
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

    redirect_stop(redirect);
    /* Kept up through the drain: its figures are the drain's too. */
    metrics_stop(metrics);
err_workers:
    if (redirect_fd >= 0)
        close(redirect_fd);
    if (metrics_fd >= 0)
        close(metrics_fd);
    /* Workers made but never started drain (nothing) on this thread, so nothing leaks. */
    atomic_store(&cfg.stop, 2);
    for (unsigned i = nstarted; i < ninit; i++)
        worker_run(&workers[i]);
    for (unsigned i = 0; i < ninit; i++) {
        if (i < nstarted)
            worker_join(&workers[i]);
        else
            worker_release(&workers[i]);
    }
    for (unsigned i = 0; workers && i < nworkers; i++)
        for (unsigned j = 0; j < MAX_LISTEN; j++)
            if (workers[i].listen_fd[j] >= 0)
                close(workers[i].listen_fd[j]);
    free(workers);
    free(mv);
    if (o.pid_file)
        pid_file_remove(o.pid_file, pid_fd);
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
    for (int i = 0; i < ninherited; i++)
        close(inherited[i]);
    if (notify_fd >= 0)
        close(notify_fd);
    config_free();
    return status;
}
