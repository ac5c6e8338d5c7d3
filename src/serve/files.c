/*
 * From request target to an open regular file beneath DIR, and what the response says about it:
 * media type, validators, the byte range. Path safety rests on two independent layers: the
 * target is decoded and any ".." segment refused here, and the kernel (openat2 with
 * RESOLVE_BENEATH) refuses any path, symbolic links included, that would leave DIR.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "serve.h"

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int files_target_to_path(const char *target, size_t len, char *out, size_t cap,
                         bool *trailing_slash)
{
    struct http_parser_url u;
    char dec[HTTP_URL_MAX + 1];
    size_t dlen = 0, olen = 0;

    http_parser_url_init(&u);
    if (len == 0 || http_parser_parse_url(target, len, 0, &u) != 0 ||
        !(u.field_set & (1 << UF_PATH)))
        return 400;
    const char *p = target + u.field_data[UF_PATH].off;
    size_t plen = u.field_data[UF_PATH].len;
    if (plen == 0 || p[0] != '/' || plen > HTTP_URL_MAX)
        return 400;

    bool nul = false;
    for (size_t i = 0; i < plen; i++) {
        int c = (unsigned char)p[i];
        if (c == '%') {
            int hi = i + 2 < plen ? hexval(p[i + 1]) : -1;
            int lo = i + 2 < plen ? hexval(p[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return 400;
            c = hi << 4 | lo;
            i += 2;
        }
        if (c == 0)
            nul = true;
        dec[dlen++] = (char)c;
    }
    dec[dlen] = '\0';
    *trailing_slash = dec[dlen - 1] == '/';

    /* Decoded first, then split: "%2e%2e%2f" is a ".." segment like any other. */
    for (size_t i = 0; i < dlen;) {
        size_t j = i;
        while (j < dlen && dec[j] != '/')
            j++;
        size_t seg = j - i;
        if (seg == 2 && dec[i] == '.' && dec[i + 1] == '.')
            return 403;
        if (seg > 0 && !(seg == 1 && dec[i] == '.')) {
            if (olen + seg + 2 > cap)
                return 400;
            if (olen)
                out[olen++] = '/';
            memcpy(out + olen, dec + i, seg);
            olen += seg;
        }
        i = j + 1;
    }
    if (nul)
        return 404;
    if (olen == 0) {
        if (cap < 2)
            return 400;
        out[olen++] = '.';
    }
    out[olen] = '\0';
    return 0;
}

static int openat2_beneath(int root_fd, const char *rel, int flags)
{
    struct open_how how = {
        .flags = (uint64_t)flags,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    long fd = syscall(SYS_openat2, root_fd, rel, &how, sizeof(how));
    return fd < 0 ? -errno : (int)fd;
}

int files_probe(int root_fd)
{
    int fd = openat2_beneath(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

int files_open_beneath(int root_fd, const char *rel)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused after fstat). */
    int fd = openat2_beneath(root_fd, rel, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0)
        return fd;
    switch (fd) {
    case -ENOENT:
    case -ENOTDIR:
    case -ENAMETOOLONG:
        return -404;
    default: /* EXDEV: the path leaves DIR; EACCES, ELOOP, ... */
        return -403;
    }
}

void files_etag(const struct stat *st, char *buf, size_t cap)
{
    snprintf(buf, cap, "\"%llx-%llx-%llx\"", (unsigned long long)st->st_ino,
             (unsigned long long)st->st_size,
             (unsigned long long)st->st_mtim.tv_sec * 1000000000ull +
                 (unsigned long long)st->st_mtim.tv_nsec);
}

/* The opaque part of an entity tag, W/ dropped: weak comparison (RFC 9110 8.8.3.2). */
static size_t tag_core(const char *s, size_t len, const char **core)
{
    if (len >= 2 && s[0] == 'W' && s[1] == '/') {
        s += 2;
        len -= 2;
    }
    *core = s;
    return len;
}

int files_etag_match(const char *list, const char *etag)
{
    const char *want;
    size_t wlen = tag_core(etag, strlen(etag), &want);

    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *start = p;
        if (*p == '*')
            return 1;
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        if (*p != '"') {
            while (*p && *p != ',')
                p++;
            continue;
        }
        const char *end = strchr(p + 1, '"');
        if (!end)
            return 0;
        const char *core;
        size_t clen = tag_core(start, (size_t)(end + 1 - start), &core);
        if (clen == wlen && !memcmp(core, want, wlen))
            return 1;
        p = end + 1;
    }
    return 0;
}

/* Digits to a number that saturates instead of wrapping. Returns the count of digits. */
static size_t parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = 0;
    for (; isdigit((unsigned char)s[i]); i++) {
        unsigned d = (unsigned)(s[i] - '0');
        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
    }
    *out = v;
    return i;
}

int files_parse_range(const char *value, uint64_t size, uint64_t *first, uint64_t *last)
{
    const char *p = value;
    uint64_t a = 0, b;
    bool suffix = false;
    size_t n;

    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "bytes", 5))
        return 0;
    p += 5;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p++ != '=')
        return 0;
    if (strchr(p, ','))
        return 0; /* several ranges: the whole file instead (RFC 9110 14.2 allows it) */
    while (*p == ' ' || *p == '\t')
        p++;

    if (*p == '-') {
        n = parse_u64(p + 1, &b);
        if (n == 0)
            return 0;
        p += 1 + n;
        suffix = true;
    } else {
        n = parse_u64(p, &a);
        if (n == 0 || p[n] != '-')
            return 0;
        p += n + 1;
        n = parse_u64(p, &b);
        if (n == 0)
            b = UINT64_MAX;
        p += n;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p)
        return 0;

    if (suffix) {
        if (b == 0 || size == 0)
            return -1;
        *first = b >= size ? 0 : size - b;
        *last = size - 1;
        return 1;
    }
    if (b < a)
        return 0; /* an invalid range-spec: the field is ignored */
    if (a >= size)
        return -1;
    *first = a;
    *last = b >= size ? size - 1 : b;
    return 1;
}

/* ---- media types */

static int entry_cmp(const void *x, const void *y)
{
    return strcmp(((const struct mime_entry *)x)->ext, ((const struct mime_entry *)y)->ext);
}

int mime_load_string(struct mime_table *t, const char *text)
{
    size_t cap = 0;
    const char *line = text;

    t->v = NULL;
    t->n = 0;
    while (*line) {
        const char *eol = strchr(line, '\n');
        size_t llen = eol ? (size_t)(eol - line) : strlen(line);
        char buf[1024], *save = NULL;
        if (llen < sizeof(buf) && line[0] != '#') {
            memcpy(buf, line, llen);
            buf[llen] = '\0';
            char *type = strtok_r(buf, " \t\r", &save);
            for (char *ext; type && (ext = strtok_r(NULL, " \t\r", &save));) {
                if (t->n == cap) {
                    size_t ncap = cap ? cap * 2 : 256;
                    struct mime_entry *v = realloc(t->v, ncap * sizeof(*v));
                    if (!v)
                        goto err_free;
                    t->v = v;
                    cap = ncap;
                }
                struct mime_entry *e = &t->v[t->n];
                e->ext = strdup(ext);
                e->type = strdup(type);
                if (!e->ext || !e->type) {
                    free(e->ext);
                    free(e->type);
                    goto err_free;
                }
                for (char *c = e->ext; *c; c++)
                    *c = (char)tolower((unsigned char)*c);
                t->n++;
            }
        }
        if (!eol)
            break;
        line = eol + 1;
    }
    /* Stable enough: for an extension listed twice, bsearch finds one of them. */
    if (t->n)
        qsort(t->v, t->n, sizeof(*t->v), entry_cmp);
    return 0;

err_free:
    mime_free(t);
    return -ENOMEM;
}

int mime_load(struct mime_table *t, const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    char *text = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&text, &len);
    int ret = -ENOMEM;
    if (!m)
        goto err_close;
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        fwrite(buf, 1, n, m);
    if (fclose(m) != 0)
        goto err_text;
    ret = mime_load_string(t, text);
err_text:
    free(text);
err_close:
    fclose(f);
    return ret;
}

void mime_free(struct mime_table *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->v[i].ext);
        free(t->v[i].type);
    }
    free(t->v);
    t->v = NULL;
    t->n = 0;
}

const char *mime_lookup(const struct mime_table *t, const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *dot = strrchr(base, '.');
    char ext[64];

    if (!dot || dot == base || strlen(dot + 1) >= sizeof(ext) || !t->n)
        return "application/octet-stream";
    size_t i = 0;
    for (const char *c = dot + 1; *c; c++)
        ext[i++] = (char)tolower((unsigned char)*c);
    ext[i] = '\0';
    struct mime_entry key = {.ext = ext};
    const struct mime_entry *e = bsearch(&key, t->v, t->n, sizeof(*t->v), entry_cmp);
    return e ? e->type : "application/octet-stream";
}
