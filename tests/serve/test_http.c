/*
 * Request heads through http_reader and response heads, in memory: every status the reader can
 * earn, pipelining, and heads that arrive a byte at a time.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

static struct http_reader *reader_new(void)
{
    struct http_reader *r = http_reader_new();
    cr_assert(r);
    return r;
}

/* Feeds all of s at once; returns the bytes consumed. */
static size_t feed(struct http_reader *r, const char *s)
{
    return http_reader_feed(r, s, strlen(s));
}

Test(http, simple_get_is_read_with_its_fields)
{
    struct http_reader *r = reader_new();
    const char *s = "GET /a/b.txt?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-9\r\n"
                    "If-None-Match: \"abc\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                    "X-Other: y\r\n\r\n";
    cr_assert_eq(feed(r, s), strlen(s));
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 0);
    cr_assert_eq(r->req.method, HTTP_GET);
    cr_assert_str_eq(r->req.target, "/a/b.txt?x=1");
    cr_assert_str_eq(r->req.range, "bytes=0-9");
    cr_assert_str_eq(r->req.if_none_match, "\"abc\"");
    cr_assert_str_eq(r->req.if_modified_since, "Sun, 06 Nov 1994 08:49:37 GMT");
    cr_assert(r->req.keep_alive);
    cr_assert_eq(r->req.minor, 1);
    http_reader_free(r);
}

Test(http, pipelined_requests_stop_at_the_first_end)
{
    struct http_reader *r = reader_new();
    const char *one = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n";
    char both[128];
    snprintf(both, sizeof(both), "%sHEAD /2 HTTP/1.1\r\nHost: h\r\n\r\n", one);
    size_t n = feed(r, both);
    cr_assert_eq(n, strlen(one));
    cr_assert(r->complete);
    cr_assert_str_eq(r->req.target, "/1");
    http_reader_start(r);
    cr_assert_eq(feed(r, both + n), strlen(both) - n);
    cr_assert(r->done);
    cr_assert_eq(r->req.method, HTTP_HEAD);
    cr_assert_str_eq(r->req.target, "/2");
    http_reader_free(r);
}

Test(http, a_head_in_single_bytes_reads_the_same)
{
    struct http_reader *r = reader_new();
    const char *s = "GET /slow HTTP/1.1\r\nHost: h\r\nIf-Range: \"x\"\r\nRange: bytes=-5\r\n\r\n";
    for (size_t i = 0; s[i]; i++) {
        cr_assert(!r->done);
        cr_assert_eq(http_reader_feed(r, s + i, 1), 1);
    }
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 0);
    cr_assert_str_eq(r->req.target, "/slow");
    cr_assert_str_eq(r->req.range, "bytes=-5");
    cr_assert_str_eq(r->req.if_range, "\"x\"");
    http_reader_free(r);
}

static int status_of(const char *s)
{
    struct http_reader *r = reader_new();
    feed(r, s);
    int st = r->done ? r->req.status : -1;
    http_reader_free(r);
    return st;
}

Test(http, every_error_status)
{
    cr_assert_eq(status_of("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
    cr_assert_eq(status_of("GET / HTTP/1.1\r\n\r\n"), 400, "HTTP/1.1 without Host");
    cr_assert_eq(status_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    cr_assert_eq(status_of("GET / HTTP/1.0\r\n\r\n"), 0, "HTTP/1.0 needs no Host");
    cr_assert_eq(status_of("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcde"), 413);
    cr_assert_eq(status_of("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"), 413);
    cr_assert_eq(status_of("BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n"), 501);
    cr_assert_eq(status_of("\x01\x02garbage\r\n\r\n"), 400);
    cr_assert_eq(status_of("GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
    cr_assert_eq(status_of("GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
}

Test(http, delete_is_parsed_for_a_405_by_the_caller)
{
    struct http_reader *r = reader_new();
    feed(r, "DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n");
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 0);
    cr_assert_eq(r->req.method, HTTP_DELETE);
    http_reader_free(r);
}

Test(http, a_request_with_a_body_is_not_complete)
{
    struct http_reader *r = reader_new();
    feed(r, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab");
    cr_assert(r->done);
    cr_assert(!r->complete, "its body is still to come: the connection must linger, then close");
    http_reader_free(r);
}

Test(http, long_target_gives_414)
{
    struct http_reader *r = reader_new();
    char *s = malloc(HTTP_URL_MAX + 64);
    strcpy(s, "GET /");
    memset(s + 5, 'a', HTTP_URL_MAX);
    strcpy(s + 5 + HTTP_URL_MAX, " HTTP/1.1\r\n\r\n");
    feed(r, s);
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 414);
    cr_assert(!r->req.keep_alive);
    free(s);
    http_reader_free(r);
}

Test(http, head_over_the_limit_gives_431_even_in_pieces)
{
    struct http_reader *r = reader_new();
    const char *start = "GET / HTTP/1.1\r\nHost: h\r\n";
    http_reader_feed(r, start, strlen(start));
    char line[1000];
    memset(line, 'v', sizeof(line));
    memcpy(line, "X-Pad: ", 7);
    memcpy(line + sizeof(line) - 2, "\r\n", 2);
    for (int i = 0; i < 20 && !r->done; i++)
        http_reader_feed(r, line, sizeof(line));
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 431);
    http_reader_free(r);
}

Test(http, head_just_under_the_limit_is_fine)
{
    struct http_reader *r = reader_new();
    char *s = malloc(HTTP_HEAD_MAX + 1);
    const char *start = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ";
    size_t len = HTTP_HEAD_MAX;
    strcpy(s, start);
    memset(s + strlen(start), 'p', len - strlen(start) - 4);
    memcpy(s + len - 4, "\r\n\r\n", 5);
    cr_assert_eq(http_reader_feed(r, s, len), len);
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 0);
    free(s);
    http_reader_free(r);
}

Test(http, oversized_range_value_gives_431)
{
    struct http_reader *r = reader_new();
    char s[4096];
    int n = snprintf(s, sizeof(s), "GET / HTTP/1.1\r\nHost: h\r\nRange: bytes=");
    memset(s + n, '1', 2000);
    strcpy(s + n + 2000, "-\r\n\r\n");
    feed(r, s);
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 431);
    http_reader_free(r);
}

Test(http, target_at_the_limit_is_kept_whole)
{
    struct http_reader *r = reader_new();
    char *s = malloc(HTTP_URL_MAX + 64);
    s[0] = '/';
    memset(s + 1, 'a', HTTP_URL_MAX - 1);
    s[HTTP_URL_MAX] = '\0';
    /* In pieces, so that the string grows several times. */
    feed(r, "GET ");
    for (size_t i = 0; i < HTTP_URL_MAX; i += 100)
        http_reader_feed(r, s + i, HTTP_URL_MAX - i < 100 ? HTTP_URL_MAX - i : 100);
    feed(r, " HTTP/1.1\r\nHost: h\r\n\r\n");
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 0);
    cr_assert_eq(r->req.target_len, HTTP_URL_MAX);
    cr_assert_str_eq(r->req.target, s);
    free(s);
    http_reader_free(r);
}

Test(http, absent_fields_are_null_and_repeated_ones_join)
{
    struct http_reader *r = reader_new();
    feed(r, "GET / HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\n");
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 0);
    cr_assert_str_eq(r->req.if_none_match, "\"a\",\"b\"");
    cr_assert_null(r->req.range);
    cr_assert_null(r->req.if_modified_since);
    cr_assert_null(r->req.if_range);
    http_reader_start(r);
    cr_assert_null(r->req.target, "the next request starts with nothing of the last");
    cr_assert_null(r->req.if_none_match);
    http_reader_free(r);
}

Test(http, receive_buffer_grows_by_powers_of_two_up_to_the_head_limit)
{
    cr_assert_eq(http_inbuf_grow(300), 512);
    cr_assert_eq(http_inbuf_grow(512), 1024);
    cr_assert_eq(http_inbuf_grow(8192), 16384);
    cr_assert_eq(http_inbuf_grow(10000), HTTP_HEAD_MAX);
    cr_assert_eq(http_inbuf_grow(HTTP_HEAD_MAX), HTTP_HEAD_MAX, "never past the head limit");
    size_t cap = 304, steps = 0;
    while (cap < HTTP_HEAD_MAX && steps++ < 20)
        cap = http_inbuf_grow(cap);
    cr_assert_eq(cap, HTTP_HEAD_MAX);
    cr_assert_leq(steps, 6);
}

Test(http, connection_close_and_http10_end_keep_alive)
{
    struct http_reader *r = reader_new();
    feed(r, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    cr_assert(!r->req.keep_alive);
    http_reader_start(r);
    feed(r, "GET / HTTP/1.0\r\n\r\n");
    cr_assert(!r->req.keep_alive);
    http_reader_start(r);
    feed(r, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    cr_assert(r->req.keep_alive);
    http_reader_free(r);
}

Test(http, response_head_has_what_was_asked)
{
    char buf[1024];
    struct http_response resp = {.status = 206,
                                 .content_type = "text/plain",
                                 .has_length = true,
                                 .content_length = 10,
                                 .last_modified = 784111777,
                                 .etag = "\"e\"",
                                 .accept_ranges = true,
                                 .has_range = true,
                                 .first = 5,
                                 .last = 14,
                                 .total = 100,
                                 .connection = -1,
                                 .now = 784111777};
    int n = http_format_head(buf, sizeof(buf), &resp);
    cr_assert_gt(n, 0);
    cr_assert_eq((size_t)n, strlen(buf));
    cr_assert(strstr(buf, "HTTP/1.1 206 Partial Content\r\n") == buf);
    cr_assert(strstr(buf, "Content-Length: 10\r\n"));
    cr_assert(strstr(buf, "Content-Range: bytes 5-14/100\r\n"));
    cr_assert(strstr(buf, "Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
    cr_assert(strstr(buf, "ETag: \"e\"\r\n"));
    cr_assert(strstr(buf, "Connection: close\r\n"));
    cr_assert(strstr(buf, "\r\n\r\n") == buf + n - 4);
    cr_assert_eq(http_format_head(buf, 40, &resp), -1, "too small a buffer is refused");
}

Test(http, dates_round_trip_in_all_three_forms)
{
    time_t t;
    char buf[32];
    cr_assert_eq(http_date_parse("Sun, 06 Nov 1994 08:49:37 GMT", &t), 0);
    cr_assert_eq(t, 784111777);
    cr_assert_eq(http_date_parse("Sunday, 06-Nov-94 08:49:37 GMT", &t), 0);
    cr_assert_eq(t, 784111777);
    cr_assert_eq(http_date_parse("Sun Nov  6 08:49:37 1994", &t), 0);
    cr_assert_eq(t, 784111777);
    http_date_format(784111777, buf, sizeof(buf));
    cr_assert_str_eq(buf, "Sun, 06 Nov 1994 08:49:37 GMT");
    cr_assert_eq(http_date_parse("yesterday", &t), -1);
    cr_assert_eq(http_date_parse("Sun, 06 Foo 1994 08:49:37 GMT", &t), -1);
    cr_assert_eq(http_date_parse("Sun, 06 Nov 1994 08:49:37 GMT trailing", &t), -1);
}

/* Issue 12 (16): what --header accepts, and that the head carries it. */
Test(http, header_option_refuses_broken_and_reserved_fields)
{
    cr_assert_null(http_header_invalid("Strict-Transport-Security: max-age=63072000"));
    cr_assert_null(http_header_invalid("X-A:b"));
    cr_assert_null(http_header_invalid("Cache-Control: public,\tmax-age=60"));
    cr_assert_not_null(http_header_invalid("X-A: b\r\nX-B: c"), "CR LF");
    cr_assert_not_null(http_header_invalid("X-A: b\n"), "LF");
    cr_assert_not_null(http_header_invalid("X-A: b\x7f"), "DEL");
    cr_assert_not_null(http_header_invalid("No colon"));
    cr_assert_not_null(http_header_invalid(": v"), "no name");
    cr_assert_not_null(http_header_invalid("Bad Name: v"), "a space in the name");
    cr_assert_not_null(http_header_invalid("X-A:  "), "empty value");
    cr_assert_not_null(http_header_invalid("content-length: 5"), "framing is ours");
    cr_assert_not_null(http_header_invalid("Transfer-Encoding: chunked"));
    cr_assert_not_null(http_header_invalid("Connection: close"));
    cr_assert(http_is_token("utf-8"));
    cr_assert_not(http_is_token("utf 8"));
    cr_assert_not(http_is_token(""));

    char buf[512];
    struct http_response resp = {.status = 200, .now = 0, .extra = "X-A: b\r\n", .connection = -1};
    int n = http_format_head(buf, sizeof(buf), &resp);
    cr_assert_gt(n, 0);
    buf[n] = '\0';
    cr_assert_not_null(strstr(buf, "\r\nX-A: b\r\nConnection: close\r\n\r\n"), "%s", buf);
}

Test(http, accept_encoding_is_read_and_repeated_fields_join)
{
    struct http_reader *r = reader_new();
    feed(r,
         "GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\naccept-encoding: br;q=0\r\n\r\n");
    cr_assert(r->done);
    cr_assert_eq(r->req.status, 0);
    cr_assert_str_eq(r->req.accept_encoding, "gzip,br;q=0");
    http_reader_start(r);
    feed(r, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    cr_assert_null(r->req.accept_encoding);
    http_reader_free(r);
}

Test(http, response_head_says_content_encoding_and_vary)
{
    char buf[1024];
    struct http_response resp = {.status = 200,
                                 .content_type = "text/css",
                                 .content_encoding = "br",
                                 .vary_encoding = true,
                                 .now = 1};
    cr_assert_gt(http_format_head(buf, sizeof(buf), &resp), 0);
    cr_assert(strstr(buf, "\r\nContent-Type: text/css\r\nContent-Encoding: br\r\n"));
    cr_assert(strstr(buf, "\r\nVary: Accept-Encoding\r\n"));
    resp.content_encoding = NULL;
    resp.vary_encoding = false;
    cr_assert_gt(http_format_head(buf, sizeof(buf), &resp), 0);
    cr_assert(!strstr(buf, "Content-Encoding") && !strstr(buf, "Vary"));
}
