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
