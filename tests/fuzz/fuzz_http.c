/*
 * Fuzzes ktla-serve's request handling as worker.c drives it for one connection, in memory. The
 * client's bytes arrive in receives of the sizes the input chooses, into a buffer that starts as
 * the one inside a connection and grows and shrinks as worker.c's does; http_reader reads each
 * head, pipelined requests wait in the buffer, and every request is answered by files_answer()
 * as worker.c's respond() calls it, against a small tree made once: files, a directory with
 * an index.html and one without, symbolic links that stay inside and ones that lead out, a FIFO.
 * The same bytes are also read in one piece, and both readings must give the same requests and
 * the same answers: how TCP and TLS happen to split a stream must not change what is served.
 *
 * Input: the low four bits of byte 0 say how many of the next bytes are receive sizes (cycled; a
 * size byte s means s + 1 bytes, 0xff all the room there is; none: always all the room); its high
 * four bits how small a buffer each response head is formatted into once more. The rest is what
 * the client sends.
 *
 * What is answered is decided by files_answer, the function worker.c's respond() calls. The
 * reading around it (process_input, read_next, the rest of respond) is modelled here, kept in
 * step by hand: those functions are static in worker.c and drive io_uring.
 */
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "serve.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define IN_SMALL 1024          /* worker.c: IN_BUF, the receive buffer lent to a connection */
#define HEAD_ROOM (2048 - 128) /* worker.c: its head scratch, less room for an error's text */
#define NOW ((time_t)1700000000)
#define MTIME ((time_t)784111777) /* Sun, 06 Nov 1994 08:49:37 GMT: seeds can name it */
#define MAX_INODES 64

/* The tree, made once per process; every inode a response may come from. */
static struct {
    char base[64]; /* holds outside.txt and root/ */
    int root_fd;
    size_t n;
    struct {
        dev_t dev;
        ino_t ino;
    } in[MAX_INODES];
} tree;
static struct mime_table mime;

/* worker.c's scratch, the same sizes, so that ASan sees any write past them. */
static struct files_scratch scratch;
static char head[2048];

/* What one request earned; compared between the two readings. */
struct answer {
    int status;
    int read_status;  /* the reader's: 0, or the fault it found in the head */
    bool close;       /* the connection ends after this answer */
    bool replied;     /* worker.c closes without a word when the head does not fit its scratch */
    uint64_t request; /* digest of the request read; 0 after an error, when it is partial */
    size_t end;       /* stream offset where the next request starts */
};

static void mk(const char *rel, const char *text)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/%s", tree.base, rel);
    FILE *f = fopen(p, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        fuzz_fail("cannot make the tree");
    struct timespec ts[2] = {{.tv_sec = MTIME}, {.tv_sec = MTIME}};
    utimensat(AT_FDCWD, p, ts, 0);
}

static void mkdir_in(const char *rel)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/%s", tree.base, rel);
    if (mkdir(p, 0755) != 0)
        fuzz_fail("cannot make the tree");
}

static void symlink_in(const char *to, const char *rel)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/%s", tree.base, rel);
    if (symlink(to, p) != 0)
        fuzz_fail("cannot make the tree");
}

static int note_inode(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)p, (void)flag, (void)ftw;
    if (tree.n == MAX_INODES)
        fuzz_fail("tree too big");
    tree.in[tree.n].dev = st->st_dev;
    tree.in[tree.n].ino = st->st_ino;
    tree.n++;
    return 0;
}

static int remove_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(p);
    return 0;
}

static void remove_tree(void)
{
    close(tree.root_fd);
    nftw(tree.base, remove_one, 16, FTW_DEPTH | FTW_PHYS);
    mime_free(&mime);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(tree.base, sizeof(tree.base), "%s/ktla-fuzz-http.XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(tree.base))
        fuzz_fail("mkdtemp");
    char abs_outside[128];
    snprintf(abs_outside, sizeof(abs_outside), "%s/outside.txt", tree.base);

    mk("outside.txt", "secret\n");
    mkdir_in("root");
    mk("root/index.html", "<p>home</p>\n");
    mk("root/a.txt", "0123456789abcdefghijklmnopqrstuvwxyz\n");
    mk("root/empty.txt", "");
    mk("root/style.css", "p{}\n");
    mkdir_in("root/sub");
    mk("root/sub/index.html", "<p>sub</p>\n");
    mkdir_in("root/sub/deep");
    mk("root/sub/deep/b.bin", "\x01\x02\x03");
    mkdir_in("root/noindex");
    mk("root/noindex/x.txt", "x\n");
    mkdir_in("root/evil");
    symlink_in("../../outside.txt", "root/evil/index.html");
    symlink_in("a.txt", "root/in");
    symlink_in("sub", "root/dirlink");
    symlink_in("../outside.txt", "root/out");
    symlink_in(abs_outside, "root/abs");
    symlink_in("/", "root/slash");
    char fifo[128];
    snprintf(fifo, sizeof(fifo), "%s/root/fifo", tree.base);
    if (mkfifo(fifo, 0644) != 0)
        fuzz_fail("mkfifo");

    char root[128];
    snprintf(root, sizeof(root), "%s/root", tree.base);
    tree.root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (tree.root_fd < 0 || files_probe(tree.root_fd) != 0)
        fuzz_fail("this kernel has no openat2 RESOLVE_BENEATH");
    /* FTW_PHYS: the links' own inodes, never their targets outside. */
    nftw(root, note_inode, 16, FTW_PHYS);
    if (mime_load_string(&mime, "text/html html htm\ntext/plain txt\ntext/css css\n") != 0)
        fuzz_fail("mime_load_string");
    atexit(remove_tree);
    return 0;
}

/* ---- invariants */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t fnv_str(uint64_t h, const char *s)
{
    return s ? fnv(h, s, strlen(s) + 1) : fnv(h, "\xff", 1);
}

static uint64_t request_digest(const struct http_reader *rd)
{
    const struct http_request *q = &rd->req;
    int v[] = {q->status,     (int)q->method, q->known_method, q->major,    q->minor,
               q->keep_alive, q->has_body,    q->hosts,        rd->complete};
    uint64_t h = fnv(0xcbf29ce484222325ull, v, sizeof(v));
    h = q->target ? fnv(h, q->target, q->target_len) : fnv(h, "\xff", 1);
    h = fnv_str(h, q->range);
    h = fnv_str(h, q->if_none_match);
    h = fnv_str(h, q->if_modified_since);
    return fnv_str(h, q->if_range);
}

static void check_value(const char *s, size_t len)
{
    if (s && (strlen(s) != len || len > HTTP_VALUE_MAX))
        fuzz_fail("a field value longer than its limit or with a NUL inside");
}

/* After http_reader_feed(rd, ..., avail) returned used. */
static void check_feed(struct http_reader *rd, size_t avail, size_t used)
{
    const struct http_request *q = &rd->req;
    if (used > avail)
        fuzz_fail("the reader consumed more than it was given");
    if (!rd->done) {
        if (used != avail)
            fuzz_fail("an unfinished head left bytes unread");
        return;
    }
    static const int allowed[] = {0, 400, 413, 414, 431, 501, 505};
    bool ok = false;
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        ok |= q->status == allowed[i];
    if (!ok)
        fuzz_fail("the reader gave a status outside its set");
    if (q->target && (strlen(q->target) != q->target_len || q->target_len > HTTP_URL_MAX))
        fuzz_fail("target longer than its limit or with a NUL inside");
    const char *values[4] = {q->range, q->if_none_match, q->if_modified_since, q->if_range};
    for (size_t i = 0; i < 4; i++)
        check_value(values[i], rd->value_len[i]);
    if (!q->status) {
        if (!q->target || !q->known_method || q->has_body || !rd->complete)
            fuzz_fail("a request to answer without its target or with a body");
        if (q->major != 1 || (q->minor >= 1 ? q->hosts != 1 : q->hosts > 1))
            fuzz_fail("a request to answer with a bad version or Host count");
        if (rd->head_bytes > HTTP_HEAD_MAX)
            fuzz_fail("a request to answer with a head over the limit");
    }
    if (http_reader_feed(rd, "x", 1) != 0)
        fuzz_fail("a finished reader took more bytes");
}

/* What files_target_to_path promises of a path it returns. */
static void check_path(int status, const char *p, size_t cap)
{
    if (status != 0 && status != 400 && status != 403 && status != 404)
        fuzz_fail("files_target_to_path status outside its set");
    if (status)
        return;
    size_t len = strnlen(p, cap);
    if (len == cap)
        fuzz_fail("path not terminated within its buffer");
    if (!strcmp(p, "."))
        return;
    for (const char *s = p;;) {
        size_t seg = strcspn(s, "/");
        if (seg == 0 || (seg == 1 && s[0] == '.') || (seg == 2 && s[0] == '.' && s[1] == '.'))
            fuzz_fail("path with an empty, \".\" or \"..\" segment");
        if (!s[seg])
            break;
        s += seg + 1;
    }
}

/* An fd from files_open_beneath must be one of the tree's own inodes. */
static void check_open(int fd)
{
    if (fd < 0) {
        if (fd != -403 && fd != -404)
            fuzz_fail("files_open_beneath status outside its set");
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0)
        fuzz_fail("fstat on an opened file");
    for (size_t i = 0; i < tree.n; i++)
        if (tree.in[i].dev == st.st_dev && tree.in[i].ino == st.st_ino)
            return;
    fuzz_fail("opened a file outside the root");
}

/* http_date_parse, and what it parsed formats and parses back to the same instant. */
static int date_parse(const char *s, time_t *t)
{
    if (http_date_parse(s, t) != 0)
        return -1;
    char buf[32];
    time_t again;
    http_date_format(*t, buf, sizeof(buf));
    if (http_date_parse(buf, &again) != 0 || again != *t)
        fuzz_fail("a parsed date does not survive formatting");
    return 0;
}

static bool field_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* A head as http_format_head promises it: a status line, fields, a blank line, all CRLF. */
static void check_head(const char *h, int n, const struct http_response *r)
{
    char line[64];
    int ln = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n", r->status, http_reason(r->status));
    if (n < ln + 2 || h[n] != '\0' || memcmp(h, line, (size_t)ln) != 0)
        fuzz_fail("response head without its status line");
    if (memcmp(h + n - 4, "\r\n\r\n", 4) != 0)
        fuzz_fail("response head does not end in a blank line");
    for (int i = ln; i < n - 2;) {
        const char *eol = memchr(h + i, '\r', (size_t)(n - i));
        if (!eol || eol[1] != '\n')
            fuzz_fail("a field line not ended by CRLF");
        const char *colon = memchr(h + i, ':', (size_t)(eol - (h + i)));
        if (!colon || colon == h + i || colon[1] != ' ')
            fuzz_fail("a field line without a name");
        for (const char *c = colon + 2; c < eol; c++)
            if (!field_byte((unsigned char)*c))
                fuzz_fail("a control character in a field value");
        i = (int)(eol + 2 - h);
    }
}

/* The access-log line for this request stays one line with the request in one quoted string. */
static void check_log(const struct http_request *q, int status)
{
    char *buf = malloc(1024); /* worker.c flushes when less than this is left */
    if (!buf)
        return;
    struct log_entry e = {
        .peer = "[2001:db8::1]:443",
        .when = NOW,
        .method = q->known_method ? http_method_str(q->method) : NULL,
        .target = q->target,
        .target_len = q->target_len,
        .major = q->major,
        .minor = q->minor,
        .status = status,
        .tls_version = "TLSv1.3",
        .cipher = "TLS_AES_128_GCM_SHA256",
        .mode = "kernel",
    };
    size_t n = log_format(buf, 1024, &e);
    if (n == 0 || n > 1024 || buf[n - 1] != '\n')
        fuzz_fail("log line not ended by a newline");
    int quotes = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c < 0x20 || c >= 0x7f)
            fuzz_fail("log line with a control or non-ASCII byte");
        quotes += c == '"';
    }
    if (quotes != 2)
        fuzz_fail("log line whose request string is not one quoted string");
    free(buf);
}

/* ---- worker.c, modelled */

/* files_answer, as respond() calls it, with what it decided checked. */
static int answer(const struct http_request *q, struct http_response *resp, uint64_t *body)
{
    /* The same steps on their own first, so that their results are checked as well. */
    if (!q->status) {
        bool slash;
        int st = files_target_to_path(q->target ? q->target : "", q->target_len, scratch.path,
                                      sizeof(scratch.path) - 16, &slash);
        check_path(st, scratch.path, sizeof(scratch.path) - 16);
        time_t t;
        if (q->if_modified_since)
            date_parse(q->if_modified_since, &t);
        if (q->if_range && q->if_range[0] != '"')
            date_parse(q->if_range, &t);
    }

    struct files_body fb;
    int status = files_answer(tree.root_fd, &mime, q, &scratch, resp, &fb);
    *body = 0;
    if (fb.fd >= 0) {
        check_open(fb.fd); /* nothing outside the root is ever served */
        struct stat st;
        if (fstat(fb.fd, &st) != 0)
            fuzz_fail("fstat on an opened file");
        close(fb.fd); /* the body itself is not read: only which bytes would be sent */
        uint64_t size = (uint64_t)st.st_size;
        *body = fb.len;
        if (fb.len != resp->content_length)
            fuzz_fail("Content-Length disagrees with the body");
        if (status == 206) {
            if (resp->total != size || resp->first > resp->last || resp->last >= size ||
                fb.off != resp->first || fb.len != resp->last - resp->first + 1)
                fuzz_fail("a partial body outside the file or its Content-Range");
        } else if (status != 200 || fb.off != 0 || fb.len != size) {
            fuzz_fail("a file left open for a status other than 200 and 206, or not whole");
        }
    } else if (status == 200 || status == 206) {
        fuzz_fail("a body status without a file");
    }
    if (resp->etag && files_etag_match(resp->etag, resp->etag) != 1)
        fuzz_fail("an entity tag does not match itself");
    if (status == 301) {
        const char *l = resp->location;
        size_t n = l ? strlen(l) : 0;
        /* "//host/" would send the client to another host. */
        if (n < 2 || l[0] != '/' || l[1] == '/' || l[n - 1] != '/')
            fuzz_fail("a redirect that is not a path on this host ending in /");
    }
    if (status == 416 && !resp->unsatisfied)
        fuzz_fail("416 without an unsatisfied Content-Range");
    return status;
}

/* respond: the answer to a finished head, formatted and checked. */
static struct answer respond(const struct http_reader *rd, size_t short_cap)
{
    const struct http_request *q = &rd->req;
    struct http_response resp = {.now = NOW};
    struct answer a = {.request = q->status ? 0 : request_digest(rd)};
    uint64_t body = 0;
    int status = answer(q, &resp, &body);
    /* 500 is for running out of memory or a failing fstat: neither happens here. */
    static const int allowed[] = {200, 206, 301, 304, 400, 403, 404,
                                  405, 413, 414, 416, 431, 501, 505};
    bool ok = false;
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        ok |= status == allowed[i];
    if (!ok || !strcmp(http_reason(status), "Unknown"))
        fuzz_fail("a response status outside the allowed set");
    if (resp.has_range && resp.content_length != resp.last - resp.first + 1)
        fuzz_fail("Content-Length disagrees with Content-Range");

    bool linger = (q->status != 0 && !rd->complete) || q->has_body;
    a.status = status;
    a.read_status = q->status;
    a.close = q->status != 0 || linger || !q->keep_alive;
    resp.status = status;
    resp.connection = a.close ? -1 : q->minor == 0 ? 1 : 0;
    if (status >= 300 && status != 304) {
        char text[128];
        resp.content_type = "text/plain; charset=utf-8";
        resp.has_length = true;
        resp.content_length =
            (size_t)snprintf(text, sizeof(text), "%d %s\n", status, http_reason(status));
    }

    int n = http_format_head(head, HEAD_ROOM, &resp);
    check_log(q, status);
    if (n < 0) {
        a.close = true; /* worker.c: conn_close, no answer at all */
        return a;
    }
    a.replied = true;
    check_head(head, n, &resp);

    /* Once more into a buffer of exactly short_cap bytes: all of it or -1, never past it. */
    char *small = malloc(short_cap);
    if (small) {
        int m = http_format_head(small, short_cap, &resp);
        if (m >= 0 && (m != n || memcmp(small, head, (size_t)n + 1) != 0))
            fuzz_fail("a head formatted into less room came out different");
        if (m < 0 && (size_t)n < short_cap)
            fuzz_fail("a head that fits was refused");
        free(small);
    }
    return a;
}

/* A head with two faults: read in pieces, a limit (414, 431) can be passed before the fault the
 * whole reading reports, since http_parser checks a piece's bytes before handing them on and
 * the whole head reaches the body check (413) only at its end. Limits are never passed later in
 * pieces, so the other way round stays a difference. The two limits together (a target over
 * 8 KiB in a head over 16 KiB) may come out either way: in pieces the target is handed over
 * piece by piece and passes its limit first; whole, http_parser hands it over only at its end
 * and passes its own 16 KiB head limit before. Either answer refuses and closes. */
static bool same_fault(int pieces, int whole)
{
    /* A head that is both malformed and over a limit may be refused for either, depending on
     * which the reader meets first: in pieces the fault can come before the limit is reached
     * (400 at 7 KiB of a 16.4 KiB head: found by this fuzzer), in one piece the size is seen
     * first (431). Any of these refusals closes the connection with an error: both are right. */
    bool head_fault_p = pieces == 400 || pieces == 414 || pieces == 431;
    bool head_fault_w = whole == 400 || whole == 414 || whole == 431;
    return pieces == whole || (head_fault_p && head_fault_w) ||
           ((pieces == 414 || pieces == 431) && whole == 413);
}

static void compare(const struct answer *got, const struct answer *want, size_t nwant, size_t i)
{
    if (i >= nwant)
        fuzz_fail("more answers in pieces than in one piece");
    const struct answer *w = &want[i];
    bool same_status = got->read_status && w->read_status
                           ? same_fault(got->read_status, w->read_status)
                           : got->status == w->status;
    if (!same_status || got->close != w->close || got->replied != w->replied ||
        got->request != w->request || (!got->close && got->end != w->end)) {
        fprintf(stderr, "answer %zu: in pieces %d (end %zu), in one piece %d (end %zu)\n", i,
                got->status, got->end, w->status, w->end);
        fuzz_fail("the same bytes in pieces read differently from in one piece");
    }
}

/* The whole stream handed to the reader at once: the reference reading. */
static size_t read_whole(const uint8_t *s, size_t len, struct answer *out, size_t short_cap)
{
    struct http_reader *rd = http_reader_new();
    size_t off = 0, n = 0;
    if (!rd)
        return 0;
    while (off < len) {
        size_t used = http_reader_feed(rd, (const char *)s + off, len - off);
        check_feed(rd, len - off, used);
        off += used;
        if (!rd->done)
            break;
        out[n] = respond(rd, short_cap);
        out[n].end = off;
        if (!out[n].close && (n ? out[n - 1].end : 0) == off)
            fuzz_fail("a request answered without consuming a byte: worker.c would spin");
        if (out[n++].close)
            break;
        http_reader_start(rd);
    }
    http_reader_free(rd);
    return n;
}

/* The stream as worker.c receives and reads it; every answer compared with the reference. */
static void read_in_pieces(const uint8_t *s, size_t len, const uint8_t *splits, size_t nsplits,
                           const struct answer *want, size_t nwant, size_t short_cap)
{
    size_t cap = IN_SMALL, in_len = 0, in_off = 0, pos = 0, k = 0, nans = 0;
    char *in = malloc(cap);
    struct http_reader *rd = NULL;

    if (!in)
        return;
    for (;;) {
        bool filled = false;
        if (in_len == 0) { /* post_recv, then on_recv */
            if (pos == len)
                break; /* the client has nothing more to say */
            size_t n = cap - in_len;
            if (n == 0)
                fuzz_fail("a receive into no room");
            if (nsplits && splits[k % nsplits] != 0xff && (size_t)splits[k % nsplits] + 1 < n)
                n = (size_t)splits[k % nsplits] + 1;
            k++;
            if (n > len - pos)
                n = len - pos;
            memcpy(in + in_len, s + pos, n);
            in_len += n;
            pos += n;
            filled = in_len == cap;
        }
        /* process_input */
        if (!rd && !(rd = http_reader_new()))
            goto out_of_memory;
        size_t used = http_reader_feed(rd, in + in_off, in_len - in_off);
        check_feed(rd, in_len - in_off, used);
        in_off += used;
        if (in_off == in_len)
            in_off = in_len = 0;
        if (!rd->done) {
            if (filled) { /* grow_in */
                size_t ncap = http_inbuf_grow(cap);
                if (ncap < cap || ncap > HTTP_HEAD_MAX)
                    fuzz_fail("receive buffer grown past the head limit or shrunk");
                if (ncap != cap) {
                    char *bigger = realloc(in, ncap);
                    if (!bigger)
                        goto out_of_memory;
                    in = bigger;
                    cap = ncap;
                }
            }
            continue;
        }
        struct answer a = respond(rd, short_cap);
        a.end = pos - (in_len - in_off);
        compare(&a, want, nwant, nans++);
        if (a.close)
            break; /* what follows is lingered over and dropped */
        http_reader_free(rd);
        rd = NULL;
        /* read_next: pipelined bytes to the front, back to the small buffer if they fit */
        if (in_off) {
            memmove(in, in + in_off, in_len - in_off);
            in_len -= in_off;
            in_off = 0;
        }
        if (cap > IN_SMALL && in_len <= IN_SMALL) {
            char *smaller = realloc(in, IN_SMALL);
            if (!smaller)
                goto out_of_memory;
            in = smaller;
            cap = IN_SMALL;
        }
    }
    if (nans != nwant)
        fuzz_fail("fewer answers in pieces than in one piece");
out_of_memory:
    http_reader_free(rd);
    free(in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t nsplits = data[0] & 15;
    size_t short_cap = (size_t)(data[0] >> 4) * 120 + 1;
    if (size < 1 + nsplits)
        return 0;
    const uint8_t *splits = data + 1, *s = data + 1 + nsplits;
    size_t len = size - 1 - nsplits;

    /* Every answer but a closing one consumes at least a byte (checked): len + 1 bound them. */
    struct answer *want = malloc((len + 1) * sizeof(*want));
    if (!want)
        return 0;
    size_t nwant = read_whole(s, len, want, short_cap);
    read_in_pieces(s, len, splits, nsplits, want, nwant, short_cap);
    free(want);
    return 0;
}
