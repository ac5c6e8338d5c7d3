/*
 * The run's figures, three ways: a table for people, and JSON or CSV for scripts
 * (scripts/bench-compare.sh reads the JSON). The machine-readable forms come from one list of
 * fields, so they always carry the same names.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

static const char *const err_names[ERR_KINDS] = {"connect", "tls",     "http",
                                                 "closed",  "timeout", "io"};

const char *err_name(enum bench_err e)
{
    return e < ERR_KINDS ? err_names[e] : "?";
}

const char *mode_name(const struct bench_config *cfg)
{
    switch (cfg->mode) {
    case MODE_HANDSHAKE:
        return cfg->resume ? "handshake-resumed" : "handshake-full";
    case MODE_GET:
        return "get";
    case MODE_DOWNLOAD:
        return "download";
    case MODE_IDLE:
        return "idle";
    }
    return "?";
}

struct field {
    char name[40];
    const char *str; /* a string, or NULL for a number */
    double num;      /* NAN: not measured (null in JSON, empty in CSV) */
};

#define MAX_FIELDS 48

struct fields {
    struct field f[MAX_FIELDS];
    int n;
};

static void add_num(struct fields *fs, const char *name, double v)
{
    struct field *f = &fs->f[fs->n++];
    snprintf(f->name, sizeof(f->name), "%s", name);
    f->str = NULL;
    f->num = v;
}

static void add_str(struct fields *fs, const char *name, const char *v)
{
    struct field *f = &fs->f[fs->n++];
    snprintf(f->name, sizeof(f->name), "%s", name);
    f->str = v ? v : "";
}

static double per(double a, double b)
{
    return b > 0 ? a / b : NAN;
}

static uint64_t total_errors(const struct bench_counts *c)
{
    uint64_t n = 0;
    for (int k = 0; k < ERR_KINDS; k++)
        n += c->errors[k];
    return n;
}

static void collect(const struct bench_config *cfg, const struct bench_shared *sh,
                    const struct bench_result *r, struct fields *fs)
{
    const struct bench_counts *c = &r->counts;
    double cpu_us = r->have_server ? r->server_cpu_s * 1e6 : NAN;
    double mib = (double)c->bytes / (1024.0 * 1024.0);
    static char url[800];
    snprintf(url, sizeof(url), "https://%s:%u%s", cfg->host, cfg->port, cfg->path);

    add_str(fs, "label", cfg->label);
    add_str(fs, "mode", mode_name(cfg));
    add_str(fs, "url", url);
    add_str(fs, "tls_version", sh->version_seen);
    add_str(fs, "cipher", sh->cipher_seen);
    add_str(fs, "group", sh->group_seen);
    add_num(fs, "threads", cfg->threads);
    add_num(fs, "connections", cfg->connections);
    add_num(fs, "seconds", r->seconds);
    add_num(fs, "requests", (double)c->requests);
    add_num(fs, "requests_per_s", per((double)c->requests, r->seconds));
    add_num(fs, "handshakes", (double)c->handshakes);
    add_num(fs, "handshakes_per_s", per((double)c->handshakes, r->seconds));
    add_num(fs, "resumed", (double)c->resumed);
    add_num(fs, "bytes", (double)c->bytes);
    add_num(fs, "bytes_per_s", per((double)c->bytes, r->seconds));
    add_num(fs, "errors", (double)total_errors(c));
    for (int k = 0; k < ERR_KINDS; k++) {
        char name[40];
        snprintf(name, sizeof(name), "errors_%s", err_names[k]);
        add_num(fs, name, (double)c->errors[k]);
    }
    const double qs[] = {0.5, 0.9, 0.99, 0.999};
    const char *qn[] = {"latency_p50_us", "latency_p90_us", "latency_p99_us", "latency_p999_us"};
    for (int i = 0; i < 4; i++)
        add_num(fs, qn[i],
                c->latency.count ? (double)hist_quantile(&c->latency, qs[i]) / 1e3 : NAN);
    add_num(fs, "latency_max_us", c->latency.count ? (double)c->latency.max / 1e3 : NAN);
    add_num(fs, "server_pid", cfg->server_pid ? cfg->server_pid : NAN);
    add_num(fs, "server_cpu_s", r->have_server ? r->server_cpu_s : NAN);
    add_num(fs, "server_cpu_us_per_request", per(cpu_us, (double)c->requests));
    add_num(fs, "server_cpu_us_per_handshake", per(cpu_us, (double)c->handshakes));
    add_num(fs, "server_cpu_ms_per_mib", per(cpu_us / 1e3, mib));
    /* User and kernel time apart: where a server spends its kernel time (system calls, ring
     * operations, page faults) is a different lever from its user time (TLS, parsing). */
    double user_us = r->have_server ? r->server_user_s * 1e6 : NAN;
    double sys_us = r->have_server ? r->server_sys_s * 1e6 : NAN;
    add_num(fs, "server_user_us_per_request", per(user_us, (double)c->requests));
    add_num(fs, "server_sys_us_per_request", per(sys_us, (double)c->requests));
    add_num(fs, "server_user_us_per_handshake", per(user_us, (double)c->handshakes));
    add_num(fs, "server_sys_us_per_handshake", per(sys_us, (double)c->handshakes));
    add_num(fs, "server_user_ms_per_mib", per(user_us / 1e3, mib));
    add_num(fs, "server_sys_ms_per_mib", per(sys_us / 1e3, mib));
    add_num(fs, "server_rss_kib_before", r->have_rss ? r->rss_before_kib : NAN);
    add_num(fs, "server_rss_kib_after", r->have_rss ? r->rss_after_kib : NAN);
    add_num(fs, "established", cfg->mode == MODE_IDLE ? r->established : NAN);
    bool marked = cfg->mode == MODE_IDLE && r->have_rss && r->established_mark &&
                  r->established > r->established_mark;
    add_num(fs, "server_rss_kib_mark", marked ? r->rss_mark_kib : NAN);
    add_num(fs, "established_mark", marked ? r->established_mark : NAN);
    /* Each further connection's cost: growth from the mark to the end. */
    add_num(fs, "server_rss_bytes_per_conn",
            marked ? per((r->rss_after_kib - r->rss_mark_kib) * 1024.0,
                         (double)(r->established - r->established_mark))
                   : NAN);
    /* Everything since start-up, divided by the connections. */
    add_num(fs, "server_rss_bytes_per_conn_total",
            cfg->mode == MODE_IDLE && r->have_rss
                ? per((r->rss_after_kib - r->rss_before_kib) * 1024.0, r->established)
                : NAN);
}

static void print_num(FILE *f, double v, const char *null)
{
    if (isnan(v))
        fputs(null, f);
    else if (v == floor(v) && fabs(v) < 1e15)
        fprintf(f, "%.0f", v);
    else
        fprintf(f, "%.6g", v);
}

/* Strings here are labels, URLs and OpenSSL's names: only quotes and backslashes need care. */
static void print_quoted(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void write_json(FILE *f, const struct fields *fs)
{
    fputs("{", f);
    for (int i = 0; i < fs->n; i++) {
        fprintf(f, "%s\"%s\": ", i ? ", " : "", fs->f[i].name);
        if (fs->f[i].str)
            print_quoted(f, fs->f[i].str);
        else
            print_num(f, fs->f[i].num, "null");
    }
    fputs("}\n", f);
}

static void write_csv(FILE *f, const struct fields *fs)
{
    for (int i = 0; i < fs->n; i++)
        fprintf(f, "%s%s", i ? "," : "", fs->f[i].name);
    fputc('\n', f);
    for (int i = 0; i < fs->n; i++) {
        if (i)
            fputc(',', f);
        if (fs->f[i].str)
            print_quoted(f, fs->f[i].str);
        else
            print_num(f, fs->f[i].num, "");
    }
    fputc('\n', f);
}

static int write_file(const char *path, const struct fields *fs,
                      void (*writer)(FILE *, const struct fields *))
{
    if (!path)
        return 0;
    FILE *f = strcmp(path, "-") ? fopen(path, "w") : stdout;
    if (!f) {
        fprintf(stderr, "ktla-bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    writer(f, fs);
    if (f == stdout)
        return fflush(f) ? -1 : 0;
    if (fclose(f)) {
        fprintf(stderr, "ktla-bench: writing %s failed: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static const char *rate(double v, char *buf, size_t len)
{
    if (isnan(v))
        return "-";
    snprintf(buf, len, "%.1f/s", v);
    return buf;
}

/* Prints `before`, then the time in a readable unit. */
static void human_us(FILE *out, const char *before, double us)
{
    if (isnan(us))
        fprintf(out, "%s-", before);
    else if (us >= 1000)
        fprintf(out, "%s%.2f ms", before, us / 1e3);
    else
        fprintf(out, "%s%.0f us", before, us);
}

static double field(const struct fields *fs, const char *name)
{
    for (int i = 0; i < fs->n; i++)
        if (!strcmp(fs->f[i].name, name))
            return fs->f[i].num;
    return NAN;
}

static void write_table(FILE *out, const struct bench_config *cfg, const struct bench_shared *sh,
                        const struct bench_result *r, const struct fields *fs)
{
    const struct bench_counts *c = &r->counts;
    char b1[64];
    fprintf(out, "ktla-bench %s https://%s:%u%s  %s %s %s\n", mode_name(cfg), cfg->host, cfg->port,
            cfg->path, sh->version_seen ? sh->version_seen : "(no handshake)",
            sh->cipher_seen ? sh->cipher_seen : "", sh->group_seen ? sh->group_seen : "");
    fprintf(out, "  %u thread(s), %u connection(s), warm-up %.1f s, measured %.2f s\n",
            cfg->threads, cfg->connections, cfg->warmup_s, r->seconds);
    fprintf(out, "  %-12s %12llu  %s\n", "requests", (unsigned long long)c->requests,
            rate(field(fs, "requests_per_s"), b1, sizeof(b1)));
    fprintf(out, "  %-12s %12llu  %s  (resumed %llu)\n", "handshakes",
            (unsigned long long)c->handshakes, rate(field(fs, "handshakes_per_s"), b1, sizeof(b1)),
            (unsigned long long)c->resumed);
    fprintf(out, "  %-12s %12llu  %.2f MiB/s\n", "bytes", (unsigned long long)c->bytes,
            field(fs, "bytes_per_s") / (1024.0 * 1024.0));
    fprintf(out, "  %-12s %12llu ", "errors", (unsigned long long)total_errors(c));
    for (int k = 0; k < ERR_KINDS; k++)
        if (c->errors[k])
            fprintf(out, " %s %llu", err_names[k], (unsigned long long)c->errors[k]);
    fprintf(out, "\n  %-12s", "latency");
    human_us(out, " p50 ", field(fs, "latency_p50_us"));
    human_us(out, "  p90 ", field(fs, "latency_p90_us"));
    human_us(out, "  p99 ", field(fs, "latency_p99_us"));
    human_us(out, "  p99.9 ", field(fs, "latency_p999_us"));
    human_us(out, "  max ", field(fs, "latency_max_us"));
    fputc('\n', out);
    if (r->have_server) {
        fprintf(out, "  %-12s %.2f s (%.0f%% of one core):", "server CPU", r->server_cpu_s,
                100.0 * r->server_cpu_s / r->seconds);
        human_us(out, " ", field(fs, "server_cpu_us_per_request"));
        fputs("/request", out);
        if (c->handshakes) {
            human_us(out, ", ", field(fs, "server_cpu_us_per_handshake"));
            fputs("/handshake", out);
        }
        if (cfg->mode == MODE_GET || cfg->mode == MODE_DOWNLOAD)
            fprintf(out, ", %.2f ms/MiB", field(fs, "server_cpu_ms_per_mib"));
        fputc('\n', out);
    }
    if (cfg->mode == MODE_IDLE && r->have_rss)
        fprintf(out,
                "  %-12s %u established; server RSS %.0f -> %.0f KiB at %u -> %.0f KiB at %u: "
                "%.0f bytes per further connection (%.0f per connection since start-up)\n",
                "idle", r->established, r->rss_before_kib, r->rss_mark_kib, r->established_mark,
                r->rss_after_kib, r->established, field(fs, "server_rss_bytes_per_conn"),
                r->established ? field(fs, "server_rss_bytes_per_conn_total") : 0.0);
    else if (cfg->mode == MODE_IDLE)
        fprintf(out, "  %-12s %u established (no --server-pid: no memory figure)\n", "idle",
                r->established);
}

int report(const struct bench_config *cfg, const struct bench_shared *sh,
           const struct bench_result *r, FILE *out)
{
    struct fields fs = {.n = 0};
    collect(cfg, sh, r, &fs);
    write_table(out, cfg, sh, r, &fs);
    fflush(out);
    int ret = write_file(cfg->json_out, &fs, write_json);
    if (write_file(cfg->csv_out, &fs, write_csv) < 0)
        ret = -1;
    return ret;
}
