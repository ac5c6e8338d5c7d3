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
#include <time.h>
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

bool files_path_hidden(const char *rel)
{
    bool first = true;
    for (const char *seg = rel; *seg;) {
        size_t len = strcspn(seg, "/");
        /* "." alone is the root (files_target_to_path drops "." segments elsewhere). */
        if (seg[0] == '.' && len > 1 && !(first && len == 11 && !strncmp(seg, ".well-known", 11)))
            return true;
        first = false;
        seg += len;
        if (*seg == '/')
            seg++;
    }
    return false;
}

static int openat2_resolve(int root_fd, const char *rel, int flags, uint64_t resolve)
{
    struct open_how how = {
        .flags = (uint64_t)flags,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | resolve,
    };
    long fd = syscall(SYS_openat2, root_fd, rel, &how, sizeof(how));
    return fd < 0 ? -errno : (int)fd;
}

static int openat2_beneath(int root_fd, const char *rel, int flags)
{
    return openat2_resolve(root_fd, rel, flags, 0);
}

bool files_can_resolve_cached(int root_fd)
{
    int fd = openat2_resolve(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, RESOLVE_CACHED);
    if (fd >= 0)
        close(fd);
    return fd >= 0 || fd == -EAGAIN;
}

int files_probe(int root_fd)
{
    int fd = openat2_beneath(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

/* files_open_beneath's errors, as statuses. */
static int open_status(int fd)
{
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

int files_open_beneath(int root_fd, const char *rel)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused after fstat). */
    return open_status(openat2_beneath(root_fd, rel, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
}

#define OPEN_COLD (-1) /* open_in: the lookup needs the disk (cached_only); never a status */

/* files_open_beneath, or with s->cached_only from the dentry cache alone: OPEN_COLD (the path
 * in s->cold) where that would need the disk. */
static int open_in(struct files_scratch *s, int root_fd, const char *rel)
{
    if (!s->cached_only)
        return files_open_beneath(root_fd, rel);
    int fd = openat2_resolve(root_fd, rel, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY,
                             RESOLVE_CACHED);
    if (fd == -EAGAIN) {
        snprintf(s->cold, sizeof(s->cold), "%s", rel);
        return OPEN_COLD;
    }
    return open_status(fd);
}

void files_etag(const struct stat *st, char *buf, size_t cap)
{
    snprintf(buf, cap, "\"%llx-%llx-%llx\"", (unsigned long long)st->st_ino,
             (unsigned long long)st->st_size,
             (unsigned long long)st->st_mtim.tv_sec * 1000000000ull +
                 (unsigned long long)st->st_mtim.tv_nsec);
}

/* A qvalue, "0" to "1" with at most three decimals (RFC 9110 12.4.2), in thousandths; -1 when
 * malformed. */
static int qvalue(const char *v, size_t len)
{
    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (len == 0 || (v[0] != '0' && v[0] != '1') || (len > 1 && (v[1] != '.' || len > 5)))
        return -1;
    int q = (v[0] - '0') * 1000;
    for (size_t i = 2, scale = 100; i < len; i++, scale /= 10) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        q += (v[i] - '0') * (int)scale;
    }
    return q > 1000 ? -1 : q;
}

int files_coding_q(const char *accept, const char *coding)
{
    int star = 0, named = -1;
    for (const char *e = accept;; e++) {
        const char *end = e + strcspn(e, ",");
        const char *name = e + strspn(e, " \t");
        size_t nlen = strcspn(name, ";, \t");
        int q = 1000;
        for (const char *p = name + nlen; p < end && q >= 0;) {
            p += strspn(p, " \t;");
            size_t plen = strcspn(p, ";,");
            if (plen >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=')
                q = qvalue(p + 2, plen - 2);
            p += plen;
        }
        if (nlen && q >= 0) {
            if (nlen == 1 && name[0] == '*')
                star = q;
            else if ((nlen == strlen(coding) && !strncasecmp(name, coding, nlen)) ||
                     (!strcmp(coding, "gzip") && nlen == 6 && !strncasecmp(name, "x-gzip", 6)))
                named = named > q ? named : q;
        }
        if (!*end)
            break;
        e = end;
    }
    return named >= 0 ? named : star;
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

    *t = (struct mime_table){0};
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

bool mime_is_textual(const char *type)
{
    static const char *const textual[] = {
        "application/javascript", "application/ecmascript", "application/json",
        "application/xml",        "application/xhtml+xml",  "image/svg+xml",
    };
    size_t len = strcspn(type, ";");
    if (len > 5 && !strncasecmp(type, "text/", 5))
        return true;
    for (size_t i = 0; i < sizeof(textual) / sizeof(textual[0]); i++)
        if (strlen(textual[i]) == len && !strncasecmp(type, textual[i], len))
            return true;
    return (len > 5 && !strncasecmp(type + len - 5, "+json", 5)) ||
           (len > 4 && !strncasecmp(type + len - 4, "+xml", 4));
}

int mime_set_charset(struct mime_table *t, const char *charset)
{
    if (!charset)
        return 0;
    for (size_t i = 0; i < t->n; i++) {
        char *type = t->v[i].type;
        if (!mime_is_textual(type) || strchr(type, ';'))
            continue;
        char *with;
        if (asprintf(&with, "%s; charset=%s", type, charset) < 0)
            return -ENOMEM;
        free(type);
        t->v[i].type = with;
    }
    return 0;
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

/* ---- the answer to a request */

/* "/" + the resolved path, percent-encoded where a path segment needs it, + "/". -1 when it
 * does not fit cap bytes (with the NUL). */
static int location_of(const char *path, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;

    out[n++] = '/';
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if (n + 4 > cap)
            return -1;
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~!$&'()*+,;=:@/", *p)) {
            out[n++] = (char)*p;
        } else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    if (n + 2 > cap)
        return -1;
    out[n++] = '/';
    out[n] = 0;
    return 0;
}

/* Precompressed siblings, in the order a tie between q-values goes. */
static const struct coding {
    const char *name, *ext;
} codings[] = {{"br", ".br"}, {"gzip", ".gz"}};

static uint64_t coarse_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* FNV-1a, never 0 (an empty slot). */
static uint64_t path_hash(const char *p)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    return h ? h : 1;
}

/* The absent-sibling slot for this hash, and whether it says the path was missing lately. */
static struct files_absent *absent_slot(struct files_scratch *s, uint64_t h, uint64_t now,
                                        bool *absent)
{
    struct files_absent *a = &s->absent[h % FILES_ABSENT_SLOTS];
    *absent = a->hash == h && now < a->until_ns;
    return a;
}

/*
 * path (a regular file, open as *fd with *st) may have siblings path.br and path.gz. Says in
 * resp whether it has any (Vary), and when the request accepts one, puts it in *fd and *st
 * instead and returns its coding; NULL when the file itself is the answer. A sibling is looked
 * up beneath DIR as the file was, so a link out of DIR is no sibling. path has room for the
 * extension and is left as it was.
 */
static const struct coding *pick_sibling(struct files_scratch *s, int root_fd, const char *accept,
                                         char *path, int *fd, struct stat *st,
                                         struct http_response *resp, bool *cold)
{
    size_t len = strlen(path);
    const struct coding *best = NULL;
    int best_q = 0;
    uint64_t now = coarse_now_ns();
    for (size_t i = 0; i < sizeof(codings) / sizeof(codings[0]); i++) {
        struct stat sst;
        bool absent;
        strcpy(path + len, codings[i].ext);
        uint64_t h = path_hash(path);
        struct files_absent *slot = absent_slot(s, h, now, &absent);
        int sfd = absent ? -404 : open_in(s, root_fd, path);
        path[len] = '\0';
        if (sfd == OPEN_COLD) {
            *cold = true;
            return NULL;
        }
        if (sfd == -404 && !absent) {
            slot->hash = h;
            slot->until_ns = now + FILES_ABSENT_NS;
        }
        if (sfd < 0)
            continue;
        if (fstat(sfd, &sst) < 0 || !S_ISREG(sst.st_mode)) {
            close(sfd);
            continue;
        }
        resp->vary_encoding = true;
        int qv = accept ? files_coding_q(accept, codings[i].name) : 0;
        if (qv <= best_q) {
            close(sfd);
            continue;
        }
        close(*fd);
        *fd = sfd;
        *st = sst;
        best = &codings[i];
        best_q = qv;
    }
    return best;
}

/* The file (or a directory's index.html) for a GET or HEAD. */
static int answer_file(int root_fd, const struct mime_table *mime, const struct http_request *q,
                       struct files_scratch *s, struct http_response *resp,
                       struct files_body *body)
{
    char *path = s->path, *etag = s->etag;
    /* Absent and empty fields mean the same. */
    const char *range = q->range ? q->range : "";
    const char *if_range = q->if_range ? q->if_range : "";
    const char *if_none_match = q->if_none_match ? q->if_none_match : "";
    const char *if_modified_since = q->if_modified_since ? q->if_modified_since : "";
    bool slash;
    struct stat st;

    int status = files_target_to_path(q->target ? q->target : "", q->target_len, path,
                                      sizeof(s->path) - 16, &slash);
    if (status)
        return status;
    /* 404 rather than 403: a hidden file is not there for a client, so its existence is not
     * told either. */
    if (!mime->allow_dotfiles && files_path_hidden(path))
        return 404;
    int fd = open_in(s, root_fd, path);
    if (fd == OPEN_COLD)
        return FILES_COLD;
    if (fd < 0)
        return -fd;
    if (fstat(fd, &st) < 0)
        goto err_close;
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        if (!slash) {
            /* Relative links in its index.html resolve against the directory only with the
             * slash. Built from the resolved path, never the raw target: "//host" or an
             * absolute-form target would send the client to another host. */
            if (location_of(path, s->location, sizeof(s->location)) < 0)
                return 414; /* the redirect would not fit a response head */
            resp->location = s->location;
            return 301;
        }
        if (strcmp(path, "."))
            strcat(path, "/index.html");
        else
            strcpy(path, "index.html");
        fd = open_in(s, root_fd, path);
        if (fd == OPEN_COLD)
            return FILES_COLD;
        if (fd < 0)
            return -fd; /* no index.html: no listing either */
        if (fstat(fd, &st) < 0)
            goto err_close;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return 403;
    }
    /* Without Accept-Encoding only the file itself: RFC 9110 would allow any coding then, but
     * a client that sent nothing may well not decode one (nginx's gzip_static agrees). */
    bool cold = false;
    const struct coding *coding =
        pick_sibling(s, root_fd, q->accept_encoding, path, &fd, &st, resp, &cold);
    if (cold) {
        close(fd);
        return FILES_COLD;
    }
    /* Blocking reads from now on: sendfile(2) and io_uring reads want a plain file. */
    fcntl(fd, F_SETFL, 0);

    files_etag(&st, etag, sizeof(s->etag));
    if (coding) {
        /* Distinct from the file's own even if the sibling were a hard link to it: a cache
         * must never take one representation for the other. */
        size_t elen = strlen(etag);
        snprintf(etag + elen - 1, sizeof(s->etag) - (elen - 1), "-%s\"", coding->ext + 1);
        resp->content_encoding = coding->name;
    }
    resp->etag = etag;
    resp->last_modified = st.st_mtim.tv_sec;
    resp->content_type = mime_lookup(mime, path);
    resp->accept_ranges = true;
    resp->has_length = true;
    uint64_t size = (uint64_t)st.st_size;

    /* RFC 9110 13.2.2: If-None-Match first; If-Modified-Since only without it. */
    time_t ims;
    if (if_none_match[0] ? files_etag_match(if_none_match, etag)
                         : if_modified_since[0] && !http_date_parse(if_modified_since, &ims) &&
                               st.st_mtim.tv_sec <= ims) {
        close(fd);
        resp->content_type = NULL;
        resp->content_encoding = NULL;
        resp->has_length = false;
        return 304;
    }

    uint64_t first = 0, last = size ? size - 1 : 0;
    int satisfiable = 0;
    if (range[0] && q->method == HTTP_GET) {
        time_t ir;
        bool if_range_ok = !if_range[0] || (if_range[0] == '"' ? !strcmp(if_range, etag)
                                                               : !http_date_parse(if_range, &ir) &&
                                                                     ir == st.st_mtim.tv_sec);
        if (if_range_ok)
            satisfiable = files_parse_range(range, size, &first, &last);
    }
    if (satisfiable < 0) {
        close(fd);
        resp->content_encoding = NULL;
        resp->unsatisfied = true;
        resp->total = size;
        return 416;
    }
    body->fd = fd;
    body->off = first;
    body->len = size ? last - first + 1 : 0;
    resp->content_length = body->len;
    if (satisfiable > 0) {
        resp->has_range = true;
        resp->first = first;
        resp->last = last;
        resp->total = size;
        return 206;
    }
    return 200;

err_close:
    close(fd);
    return 500;
}

int files_answer(int root_fd, const struct mime_table *mime, const struct http_request *q,
                 struct files_scratch *s, struct http_response *resp, struct files_body *body)
{
    *body = (struct files_body){.fd = -1};
    resp->extra = mime->extra_headers;
    if (q->status)
        return q->status;
    if (q->method != HTTP_GET && q->method != HTTP_HEAD) {
        resp->allow = "GET, HEAD";
        return 405;
    }
    if (q->has_body)
        return 413;
    return answer_file(root_fd, mime, q, s, resp, body);
}
