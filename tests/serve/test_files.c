/*
 * Request targets to paths beneath DIR, opening without escaping it (a real directory tree with
 * symbolic links in a temporary directory), validators, ranges and media types.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serve.h"

static int path_of(const char *target, char *out)
{
    bool slash;
    return files_target_to_path(target, strlen(target), out, HTTP_URL_MAX, &slash);
}

Test(files, targets_become_clean_relative_paths)
{
    char p[HTTP_URL_MAX];
    cr_assert_eq(path_of("/", p), 0);
    cr_assert_str_eq(p, ".");
    cr_assert_eq(path_of("/a//b/./c.txt?q=1#f", p), 0);
    cr_assert_str_eq(p, "a/b/c.txt");
    cr_assert_eq(path_of("/with%20space%2Fslash", p), 0);
    cr_assert_str_eq(p, "with space/slash");
    cr_assert_eq(path_of("https://example.com/abs/form", p), 0);
    cr_assert_str_eq(p, "abs/form");
    cr_assert_eq(path_of("/..hidden/x..y", p), 0, "dots inside a name are fine");
    cr_assert_str_eq(p, "..hidden/x..y");
}

Test(files, every_escape_attempt_is_refused)
{
    char p[HTTP_URL_MAX];
    cr_assert_eq(path_of("/../etc/passwd", p), 403);
    cr_assert_eq(path_of("/a/../../etc/passwd", p), 403);
    cr_assert_eq(path_of("/%2e%2e/etc/passwd", p), 403);
    cr_assert_eq(path_of("/%2E%2e%2fetc/passwd", p), 403);
    cr_assert_eq(path_of("/a/..", p), 403);
    cr_assert_eq(path_of("/a%00.html", p), 404);
    cr_assert_eq(path_of("/bad%zz", p), 400);
    cr_assert_eq(path_of("/trunc%2", p), 400);
    cr_assert_eq(path_of("*", p), 400);
}

/* A tree: root/{f.txt, d/index.html, empty/, in -> f.txt, out -> ../outside.txt, abs ->
 * /etc/passwd, fifo} beside outside.txt. */
static char tmp[64];
static int root_fd;

static void mk(const char *rel, const char *text)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", tmp, rel);
    FILE *f = fopen(p, "w");
    cr_assert(f, "%s", p);
    fputs(text, f);
    fclose(f);
}

static void setup_tree(void)
{
    char p[256], q[256];
    strcpy(tmp, "/tmp/ktla-serve-test-XXXXXX");
    cr_assert(mkdtemp(tmp));
    snprintf(p, sizeof(p), "%s/root", tmp);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/root/d", tmp);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/root/empty", tmp);
    cr_assert_eq(mkdir(p, 0755), 0);
    mk("root/f.txt", "file");
    mk("root/d/index.html", "<p>");
    mk("outside.txt", "secret");
    snprintf(p, sizeof(p), "%s/root/in", tmp);
    cr_assert_eq(symlink("f.txt", p), 0);
    snprintf(p, sizeof(p), "%s/root/out", tmp);
    cr_assert_eq(symlink("../outside.txt", p), 0);
    snprintf(p, sizeof(p), "%s/root/abs", tmp);
    snprintf(q, sizeof(q), "%s/outside.txt", tmp);
    cr_assert_eq(symlink(q, p), 0);
    snprintf(p, sizeof(p), "%s/root/fifo", tmp);
    cr_assert_eq(mkfifo(p, 0644), 0);
    snprintf(p, sizeof(p), "%s/root", tmp);
    root_fd = open(p, O_PATH | O_DIRECTORY);
    cr_assert_geq(root_fd, 0);
}

static void teardown_tree(void)
{
    char cmd[128];
    close(root_fd);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmp);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(files_open, .init = setup_tree, .fini = teardown_tree);

Test(files_open, only_files_beneath_dir_open)
{
    cr_assert_eq(files_probe(root_fd), 0, "openat2 RESOLVE_BENEATH is needed");
    int fd = files_open_beneath(root_fd, "f.txt");
    cr_assert_geq(fd, 0);
    close(fd);
    fd = files_open_beneath(root_fd, "in");
    cr_assert_geq(fd, 0, "a link that stays inside is followed");
    close(fd);
    cr_assert_eq(files_open_beneath(root_fd, "out"), -403);
    cr_assert_eq(files_open_beneath(root_fd, "abs"), -403);
    cr_assert_eq(files_open_beneath(root_fd, "../outside.txt"), -403);
    cr_assert_eq(files_open_beneath(root_fd, "/etc/passwd"), -403);
    cr_assert_eq(files_open_beneath(root_fd, "missing"), -404);
    cr_assert_eq(files_open_beneath(root_fd, "f.txt/x"), -404);
}

Test(files_open, a_fifo_opens_without_blocking_and_is_not_regular)
{
    int fd = files_open_beneath(root_fd, "fifo");
    cr_assert_geq(fd, 0);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    cr_assert(!S_ISREG(st.st_mode));
    close(fd);
}

/* files_answer: the status, the head's fields and the body for a request, as ktla-serve sends. */
static int answer_q(const struct http_request *req, struct http_response *resp,
                    struct files_body *body)
{
    static struct files_scratch s;
    static struct mime_table mime;
    static bool loaded;
    if (!loaded)
        cr_assert_eq(mime_load_string(&mime, "text/css css\napplication/gzip gz\n"), 0);
    loaded = true;
    struct http_request q = *req;
    q.target_len = strlen(q.target);
    *resp = (struct http_response){0};
    int status = files_answer(root_fd, &mime, &q, &s, resp, body);
    if (body->fd >= 0)
        close(body->fd);
    return status;
}

static int answer(enum http_method m, const char *target, const char *range,
                  struct http_response *resp, struct files_body *body)
{
    static struct files_scratch s;
    static struct mime_table mime;
    struct http_request q = {.method = m, .target = (char *)target,
                             .target_len = strlen(target), .range = (char *)range};
    *resp = (struct http_response){0};
    int status = files_answer(root_fd, &mime, &q, &s, resp, body);
    if (body->fd >= 0)
        close(body->fd);
    return status;
}

Test(files_open, the_answer_to_a_request)
{
    struct http_response r;
    struct files_body b;

    cr_assert_eq(answer(HTTP_GET, "/f.txt", NULL, &r, &b), 200);
    cr_assert(b.fd >= 0 && b.off == 0 && b.len == 4 && r.content_length == 4 && r.etag);
    cr_assert_eq(answer(HTTP_GET, "/f.txt", "bytes=1-", &r, &b), 206);
    cr_assert(b.off == 1 && b.len == 3 && r.first == 1 && r.last == 3 && r.total == 4);
    cr_assert_eq(answer(HTTP_HEAD, "/f.txt", "bytes=1-", &r, &b), 200, "HEAD ignores Range");
    cr_assert_eq(answer(HTTP_GET, "/f.txt", "bytes=9-", &r, &b), 416);
    cr_assert(b.fd < 0 && r.unsatisfied && r.total == 4);
    cr_assert_eq(answer(HTTP_POST, "/f.txt", NULL, &r, &b), 405);
    cr_assert_str_eq(r.allow, "GET, HEAD");
    cr_assert_eq(answer(HTTP_GET, "/d/", NULL, &r, &b), 200, "a directory's index.html");
    cr_assert_eq(b.len, 3);
    /* The redirect is built from the resolved path: never "//host/", whatever the target. */
    cr_assert_eq(answer(HTTP_GET, "/d", NULL, &r, &b), 301);
    cr_assert_str_eq(r.location, "/d/");
    cr_assert_eq(answer(HTTP_GET, "//d", NULL, &r, &b), 301);
    cr_assert_str_eq(r.location, "/d/");
    cr_assert_eq(answer(HTTP_GET, "/empty/", NULL, &r, &b), 404, "no index.html, no listing");
    cr_assert_eq(answer(HTTP_GET, "/fifo", NULL, &r, &b), 403);
    cr_assert_eq(answer(HTTP_GET, "/out", NULL, &r, &b), 403);
    cr_assert_eq(b.fd, -1);
}

Test(files, etag_and_if_none_match)
{
    struct stat st = {.st_ino = 0x1234, .st_size = 99, .st_mtim = {.tv_sec = 5, .tv_nsec = 7}};
    char tag[64];
    files_etag(&st, tag, sizeof(tag));
    cr_assert_str_eq(tag, "\"1234-63-12a05f207\"");
    cr_assert(files_etag_match(tag, tag));
    cr_assert(files_etag_match("*", tag));
    cr_assert(files_etag_match("\"x\", W/\"1234-63-12a05f207\"", tag), "weak comparison");
    cr_assert(!files_etag_match("\"x\", \"y\"", tag));
    cr_assert(!files_etag_match("\"1234-63-12a05f20\"", tag));
    cr_assert(!files_etag_match("", tag));
    cr_assert(!files_etag_match("\"unterminated", tag));
}

Test(files, ranges)
{
    uint64_t a, b;
    cr_assert_eq(files_parse_range("bytes=0-0", 100, &a, &b), 1);
    cr_assert(a == 0 && b == 0);
    cr_assert_eq(files_parse_range("bytes=10-19", 100, &a, &b), 1);
    cr_assert(a == 10 && b == 19);
    cr_assert_eq(files_parse_range("bytes=99-", 100, &a, &b), 1);
    cr_assert(a == 99 && b == 99);
    cr_assert_eq(files_parse_range("bytes=50-1000", 100, &a, &b), 1);
    cr_assert(a == 50 && b == 99);
    cr_assert_eq(files_parse_range("bytes=-10", 100, &a, &b), 1);
    cr_assert(a == 90 && b == 99);
    cr_assert_eq(files_parse_range("bytes=-1000", 100, &a, &b), 1);
    cr_assert(a == 0 && b == 99);
    cr_assert_eq(files_parse_range(" Bytes = 1-2 ", 100, &a, &b), 1);
    cr_assert_eq(files_parse_range("bytes=100-", 100, &a, &b), -1);
    cr_assert_eq(files_parse_range("bytes=100-200", 100, &a, &b), -1);
    cr_assert_eq(files_parse_range("bytes=-0", 100, &a, &b), -1);
    cr_assert_eq(files_parse_range("bytes=0-", 0, &a, &b), -1);
    cr_assert_eq(files_parse_range("bytes=99999999999999999999999-", 100, &a, &b), -1);
    cr_assert_eq(files_parse_range("bytes=0-99999999999999999999999", 100, &a, &b), 1);
    cr_assert(a == 0 && b == 99);
    /* Ignored: the whole file. */
    cr_assert_eq(files_parse_range("bytes=5-2", 100, &a, &b), 0);
    cr_assert_eq(files_parse_range("bytes=0-1,5-6", 100, &a, &b), 0);
    cr_assert_eq(files_parse_range("items=0-1", 100, &a, &b), 0);
    cr_assert_eq(files_parse_range("bytes=x-1", 100, &a, &b), 0);
    cr_assert_eq(files_parse_range("bytes=-", 100, &a, &b), 0);
    cr_assert_eq(files_parse_range("bytes=1-2x", 100, &a, &b), 0);
}

Test(files, media_types_from_a_mime_types_file)
{
    struct mime_table t;
    cr_assert_eq(mime_load_string(&t, "# comment\ntext/html html htm\n\nimage/png png\n"
                                      "application/x-empty\n"),
                 0);
    cr_assert_str_eq(mime_lookup(&t, "a/index.HTML"), "text/html");
    cr_assert_str_eq(mime_lookup(&t, "x.htm"), "text/html");
    cr_assert_str_eq(mime_lookup(&t, "x.png"), "image/png");
    cr_assert_str_eq(mime_lookup(&t, "x.unknown"), "application/octet-stream");
    cr_assert_str_eq(mime_lookup(&t, "noext"), "application/octet-stream");
    cr_assert_str_eq(mime_lookup(&t, "dir.html/file"), "application/octet-stream");
    cr_assert_str_eq(mime_lookup(&t, ".html"), "application/octet-stream", "a dotfile");
    mime_free(&t);
}

Test(files, debians_mime_types_knows_the_usual_types)
{
    struct mime_table t;
    if (mime_load(&t, "/etc/mime.types") < 0)
        cr_skip_test("no /etc/mime.types (Debian's media-types package)");
    cr_assert_str_eq(mime_lookup(&t, "a.html"), "text/html");
    cr_assert_str_eq(mime_lookup(&t, "a.css"), "text/css");
    cr_assert_str_eq(mime_lookup(&t, "a.png"), "image/png");
    cr_assert_str_eq(mime_lookup(&t, "a.json"), "application/json");
    mime_free(&t);
}

/* Issue 12 (14): dot-files are hidden by default, /.well-known/ is not. */
Test(files, dot_segments_are_hidden_except_well_known)
{
    cr_assert(files_path_hidden(".env"));
    cr_assert(files_path_hidden(".git/config"));
    cr_assert(files_path_hidden("sub/.htpasswd"));
    cr_assert(files_path_hidden("a/b/.c/d"));
    cr_assert(files_path_hidden(".well-known/.secret"), "deeper dot segments stay hidden");
    cr_assert(files_path_hidden("sub/.well-known/x"), "only DIR's own .well-known is open");
    cr_assert_not(files_path_hidden("."), "the root");
    cr_assert_not(files_path_hidden(".well-known/acme-challenge/tok"));
    cr_assert_not(files_path_hidden("index.html"));
    cr_assert_not(files_path_hidden("a.b/c.d"));
}

/* Issue 12 (5): charset=NAME on text types only, and only where asked. */
Test(files, charset_is_added_to_textual_types_only)
{
    struct mime_table t;
    cr_assert_eq(mime_load_string(&t, "text/plain txt\ntext/html html\napplication/json json\n"
                                      "application/javascript js\nimage/svg+xml svg\n"
                                      "application/ld+json jsonld\nimage/png png\n"),
                 0);
    cr_assert_eq(mime_set_charset(&t, "utf-8"), 0);
    cr_assert_str_eq(mime_lookup(&t, "a.txt"), "text/plain; charset=utf-8");
    cr_assert_str_eq(mime_lookup(&t, "a.html"), "text/html; charset=utf-8");
    cr_assert_str_eq(mime_lookup(&t, "a.json"), "application/json; charset=utf-8");
    cr_assert_str_eq(mime_lookup(&t, "a.js"), "application/javascript; charset=utf-8");
    cr_assert_str_eq(mime_lookup(&t, "a.svg"), "image/svg+xml; charset=utf-8");
    cr_assert_str_eq(mime_lookup(&t, "a.jsonld"), "application/ld+json; charset=utf-8");
    cr_assert_str_eq(mime_lookup(&t, "a.png"), "image/png");
    cr_assert_str_eq(mime_lookup(&t, "a.bin"), "application/octet-stream");
    mime_free(&t);

    cr_assert_eq(mime_load_string(&t, "text/plain txt\n"), 0);
    cr_assert_eq(mime_set_charset(&t, NULL), 0);
    cr_assert_str_eq(mime_lookup(&t, "a.txt"), "text/plain", "--charset off");
    mime_free(&t);
}

Test(files, accept_encoding_q_values)
{
    cr_assert_eq(files_coding_q("gzip, deflate, br", "br"), 1000);
    cr_assert_eq(files_coding_q("gzip, deflate, br", "gzip"), 1000);
    cr_assert_eq(files_coding_q("gzip", "br"), 0, "not listed, no *");
    cr_assert_eq(files_coding_q("", "gzip"), 0);
    cr_assert_eq(files_coding_q("br;q=0, gzip", "br"), 0, "q=0: not acceptable");
    cr_assert_eq(files_coding_q("br ; q=0.5 ,gzip;q=0.25", "br"), 500);
    cr_assert_eq(files_coding_q("br ; q=0.5 ,gzip;q=0.25", "gzip"), 250);
    cr_assert_eq(files_coding_q("GZIP;Q=1.000", "gzip"), 1000, "names and q without case");
    cr_assert_eq(files_coding_q("x-gzip", "gzip"), 1000, "x-gzip is gzip");
    cr_assert_eq(files_coding_q("*", "br"), 1000);
    cr_assert_eq(files_coding_q("*;q=0.1, br;q=0", "br"), 0, "a name beats *");
    cr_assert_eq(files_coding_q("*;q=0.1, br;q=0", "gzip"), 100);
    cr_assert_eq(files_coding_q("br;q=2", "br"), 0, "malformed q: as if absent");
    cr_assert_eq(files_coding_q("br;q=0.1234", "br"), 0);
    cr_assert_eq(files_coding_q("br;q=", "br"), 0);
    cr_assert_eq(files_coding_q("brotli, gzipx", "br"), 0, "whole names only");
    cr_assert_eq(files_coding_q("brotli, gzipx", "gzip"), 0);
    cr_assert_eq(files_coding_q(",,, br;level=5 ,", "br"), 1000, "empty elements, other params");
}

/* x.css (identity, 10 bytes) beside x.css.br (3) and x.css.gz (5); y.css.gz without y.css;
 * z.css alone; a.css with a.css.gz a directory. */
Test(files_open, precompressed_siblings_by_accept_encoding)
{
    char p[256];
    mk("root/x.css", "0123456789");
    mk("root/x.css.br", "BRR");
    mk("root/x.css.gz", "GZIPP");
    mk("root/y.css.gz", "lonely");
    mk("root/z.css", "plain");
    mk("root/a.css", "aaa");
    snprintf(p, sizeof(p), "%s/root/a.css.gz", tmp);
    cr_assert_eq(mkdir(p, 0755), 0);
    struct http_response r;
    struct files_body b;
    struct http_request q = {.method = HTTP_GET, .target = "/x.css"};
    char identity[64], br[64], gz[64];

    cr_assert_eq(answer_q(&q, &r, &b), 200, "no Accept-Encoding: the file itself");
    cr_assert(b.len == 10 && !r.content_encoding && r.vary_encoding);
    cr_assert_str_eq(r.content_type, "text/css");
    strcpy(identity, r.etag);

    q.accept_encoding = "gzip, deflate, br";
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(b.len == 3 && r.content_length == 3 && r.vary_encoding, "br preferred");
    cr_assert_str_eq(r.content_encoding, "br");
    cr_assert_str_eq(r.content_type, "text/css", "the type of what was asked for");
    strcpy(br, r.etag);
    cr_assert(strstr(br, "-br\"") && strcmp(br, identity));

    q.accept_encoding = "gzip, br;q=0";
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(b.len == 5 && r.content_encoding && !strcmp(r.content_encoding, "gzip"));
    strcpy(gz, r.etag);
    cr_assert(strstr(gz, "-gz\"") && strcmp(gz, identity) && strcmp(gz, br));

    q.accept_encoding = "br;q=0.5, gzip;q=0.8";
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert_str_eq(r.content_encoding, "gzip", "the higher q wins over br's preference");

    q.accept_encoding = "gzip;q=0, br;q=0, identity";
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(b.len == 10 && !r.content_encoding && r.vary_encoding);

    /* Ranges count the encoded bytes; validators are the encoded file's. */
    q.accept_encoding = "gzip";
    q.range = "bytes=1-";
    cr_assert_eq(answer_q(&q, &r, &b), 206);
    cr_assert(b.off == 1 && b.len == 4 && r.total == 5 && r.vary_encoding);
    cr_assert_str_eq(r.content_encoding, "gzip");
    q.range = "bytes=7-";
    cr_assert_eq(answer_q(&q, &r, &b), 416, "7 is inside the file, not inside the .gz");
    cr_assert(r.total == 5 && r.vary_encoding);
    q.range = NULL;
    q.if_none_match = gz;
    cr_assert_eq(answer_q(&q, &r, &b), 304);
    cr_assert(r.vary_encoding && !r.content_encoding);
    q.if_none_match = identity;
    cr_assert_eq(answer_q(&q, &r, &b), 200, "the identity ETag does not match the gzip one");
    q.if_none_match = NULL;
    q.method = HTTP_HEAD;
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(r.content_length == 5 && r.content_encoding);

    /* Only beside a file that is there; a directory is no sibling. */
    q = (struct http_request){.method = HTTP_GET, .target = "/y.css", .accept_encoding = "gzip"};
    cr_assert_eq(answer_q(&q, &r, &b), 404);
    q.target = "/z.css";
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(!r.content_encoding && !r.vary_encoding, "no sibling: no Vary");
    q.target = "/a.css";
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(b.len == 3 && !r.content_encoding && !r.vary_encoding);
    /* The sibling asked for by name is a file like any other. */
    q.target = "/x.css.gz";
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(b.len == 5 && !r.content_encoding);
    cr_assert_str_eq(r.content_type, "application/gzip");
}

/* A sibling found missing is not looked for again for FILES_ABSENT_NS (one second): one added
 * meanwhile is served once that has passed; the missing one's lookup is not repeated before. */
Test(files_open, a_missing_sibling_is_looked_for_again_after_a_second)
{
    struct http_response r;
    struct files_body b;
    struct http_request q = {.method = HTTP_GET, .target = "/late.css", .accept_encoding = "gzip"};

    mk("root/late.css", "late!");
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(b.len == 5 && !r.content_encoding && !r.vary_encoding);
    mk("root/late.css.gz", "GZ");
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(b.len == 5 && !r.content_encoding, "looked up again within the second");
    usleep(FILES_ABSENT_NS / 1000 + 100000);
    cr_assert_eq(answer_q(&q, &r, &b), 200);
    cr_assert(b.len == 2 && r.vary_encoding && r.content_encoding, "the new sibling not served");
    cr_assert_str_eq(r.content_encoding, "gzip");
}

/* cached_only: an answer that needs nothing from the disk is the same answer; a lookup that would
 * need it is not made (FILES_COLD, the path in `cold`, nothing left open), and once the path has
 * been looked up the ordinary way, the answer comes from the cache. Whether a lookup is cached is
 * the kernel's business, so each step says which of the two outcomes it accepts. */
Test(files_open, cached_only_answers_from_the_cache_or_says_which_path_is_cold)
{
    static struct files_scratch s;
    struct mime_table mime = {0};
    struct http_response r = {0}, plain = {0};
    struct files_body b, pb;
    cr_assert(files_can_resolve_cached(root_fd), "openat2 RESOLVE_CACHED (Linux 5.12) is missing");

    struct http_request q = {.method = HTTP_GET, .target = "/f.txt", .target_len = 6};
    int want = files_answer(root_fd, &mime, &q, &s, &plain, &pb); /* warms it */
    cr_assert_eq(want, 200);
    close(pb.fd);
    s.cached_only = true;
    int got = files_answer(root_fd, &mime, &q, &s, &r, &b);
    cr_assert_eq(got, 200, "a path just looked up is in the cache: %d", got);
    cr_assert_eq(r.content_length, plain.content_length);
    close(b.fd);

    /* A name never looked up: either its absence is cached already (404) or it is cold. */
    int fds = 0;
    for (int fd = 0; fd < 256; fd++)
        fds += fcntl(fd, F_GETFD) >= 0;
    struct http_request miss = {.method = HTTP_GET, .target = "/d/nothing-here.txt",
                                .target_len = 19};
    memset(&r, 0, sizeof(r));
    got = files_answer(root_fd, &mime, &miss, &s, &r, &b);
    cr_assert(got == 404 || got == FILES_COLD, "%d", got);
    if (got == FILES_COLD)
        cr_assert_str_eq(s.cold, "d/nothing-here.txt");
    int fds_after = 0;
    for (int fd = 0; fd < 256; fd++)
        fds_after += fcntl(fd, F_GETFD) >= 0;
    cr_assert_eq(fds_after, fds, "FILES_COLD left a descriptor open");
    /* Looked up the ordinary way (what io_uring's openat2 does for ktla-serve), it is cached. */
    s.cached_only = false;
    cr_assert_eq(files_answer(root_fd, &mime, &miss, &s, &r, &b), 404);
    s.cached_only = true;
    cr_assert_eq(files_answer(root_fd, &mime, &miss, &s, &r, &b), 404);
}
