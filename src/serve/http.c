/*
 * Request heads through http_parser (Debian's libhttp-parser, fuzzed by OSS-Fuzz) and response
 * heads. The parser is fed whatever arrived and pauses at the end of each message, so pipelined
 * requests stay in the caller's buffer; the few fields this server acts on are copied out, and
 * every limit maps to the status RFC 9110 / RFC 6585 name for it.
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "serve.h"

static struct http_reader *reader(http_parser *p)
{
    return p->data;
}

static int fail(http_parser *p, int status)
{
    reader(p)->req.status = status;
    return -1;
}

/* Appends n bytes to a heap string of at most max bytes, growing it by doubling. 0, -1 when it
 * would pass max, -2 when out of memory. */
static int append(char **s, size_t *len, size_t *cap, size_t max, const char *at, size_t n)
{
    if (*len + n > max)
        return -1;
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 32;
        while (c < *len + n + 1)
            c *= 2;
        if (c > max + 1)
            c = max + 1;
        char *p = realloc(*s, c);
        if (!p)
            return -2;
        *s = p;
        *cap = c;
    }
    memcpy(*s + *len, at, n);
    *len += n;
    (*s)[*len] = '\0';
    return 0;
}

/* The request fields this server reads, in the order of http_reader's value_len/value_cap. */
static const char *const field_names[] = {"range", "if-none-match", "if-modified-since",
                                          "if-range", "accept-encoding"};

int http_field_index(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(field_names) / sizeof(field_names[0]); i++)
        if (strlen(field_names[i]) == len && !strncasecmp(name, field_names[i], len))
            return (int)i;
    return -1;
}

char **http_request_field(struct http_request *q, int index)
{
    char **slots[] = {&q->range, &q->if_none_match, &q->if_modified_since, &q->if_range,
                      &q->accept_encoding};
    return slots[index];
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_reader *r = reader(p);
    struct http_request *q = &r->req;
    int ret = append(&q->target, &q->target_len, &r->target_cap, HTTP_URL_MAX, at, len);
    return ret ? fail(p, ret == -1 ? 414 : 500) : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_reader *r = reader(p);
    if (r->in_value) {
        r->in_value = false;
        r->field_len = 0;
        r->field[0] = '\0';
    }
    if (r->field_len >= sizeof(r->field))
        return 0;
    /* Longer names are none this server reads: remember only that it was long. */
    if (r->field_len + len >= sizeof(r->field)) {
        r->field_len = sizeof(r->field);
        r->field[0] = '\0';
        return 0;
    }
    memcpy(r->field + r->field_len, at, len);
    r->field_len += len;
    r->field[r->field_len] = '\0';
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_reader *r = reader(p);
    struct http_request *q = &r->req;

    /* http_parser lets a NUL through as a value's first byte, and the strings kept here would
     * end at it: a different field from the one sent. RFC 9110 5.5 allows refusing it. */
    if (memchr(at, '\0', len))
        return fail(p, 400);
    if (!r->in_value) {
        r->in_value = true;
        r->dst = NULL;
        if (!strcasecmp(r->field, "host"))
            q->hosts++;
        int i = http_field_index(r->field, strlen(r->field));
        if (i >= 0) {
            r->dst = http_request_field(q, i);
            r->dst_len = &r->value_len[i];
            r->dst_cap = &r->value_cap[i];
            /* A repeated field: the values join as a list, as RFC 9110 5.3 allows. */
            if (*r->dst_len && *r->dst_len + 1 <= HTTP_VALUE_MAX &&
                append(r->dst, r->dst_len, r->dst_cap, HTTP_VALUE_MAX, ",", 1))
                return fail(p, 500);
        }
    }
    if (!r->dst)
        return 0;
    int ret = append(r->dst, r->dst_len, r->dst_cap, HTTP_VALUE_MAX, at, len);
    return ret ? fail(p, ret == -1 ? 431 : 500) : 0;
}

static int on_headers_complete(http_parser *p)
{
    struct http_request *q = &reader(p)->req;
    q->method = (enum http_method)p->method;
    q->known_method = 1;
    q->major = p->http_major;
    q->minor = p->http_minor;
    q->keep_alive = http_should_keep_alive(p);
    q->has_body =
        (p->flags & F_CHUNKED) || (p->content_length != ULLONG_MAX && p->content_length > 0);
    if (q->has_body) {
        /* This server takes no request bodies: stop here rather than read one. */
        q->status = 413;
        http_parser_pause(p, 1);
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

static void reader_init(struct http_reader *r)
{
    memset(r, 0, sizeof(*r));
    http_parser_init(&r->parser, HTTP_REQUEST);
    r->parser.data = r;
    r->in_value = true; /* so that the first field name starts afresh */
    r->method_end = -1;
}

void http_request_release(struct http_request *q)
{
    free(q->target);
    free(q->range);
    free(q->if_none_match);
    free(q->if_modified_since);
    free(q->if_range);
    free(q->accept_encoding);
}

struct http_reader *http_reader_new(void)
{
    struct http_reader *r = malloc(sizeof(*r));
    if (r)
        reader_init(r);
    return r;
}

void http_reader_start(struct http_reader *r)
{
    http_request_release(&r->req);
    reader_init(r);
}

void http_reader_free(struct http_reader *r)
{
    if (!r)
        return;
    http_request_release(&r->req);
    free(r);
}

size_t http_inbuf_grow(size_t cap)
{
    size_t next = 1;
    while (next <= cap && next < HTTP_HEAD_MAX)
        next *= 2;
    return next > cap ? next : cap;
}

/* Follows the request's leading capital letters across pieces, up to the byte after them. */
static void scan_method(struct http_reader *r, const char *data, size_t len)
{
    for (size_t i = 0; i < len && r->method_end < 0; i++) {
        if (r->method_len < 32 && isupper((unsigned char)data[i]))
            r->method_len++;
        else
            r->method_end = (unsigned char)data[i];
    }
}

/* An unknown method that is still a well-formed token is "not implemented", not "bad". */
static int unknown_method_status(const struct http_reader *r)
{
    return r->method_len > 0 && r->method_end == ' ' ? 501 : 400;
}

size_t http_reader_feed(struct http_reader *r, const char *data, size_t len)
{
    struct http_request *q = &r->req;
    if (r->done)
        return 0;
    scan_method(r, data, len);
    if (r->method_pending) {
        r->head_bytes += len;
        if (r->method_end < 0)
            return len;
        q->status = unknown_method_status(r);
        r->done = true;
        return len;
    }
    size_t n = http_parser_execute(&r->parser, &settings, data, len);
    enum http_errno err = HTTP_PARSER_ERRNO(&r->parser);
    r->head_bytes += n;

    switch (err) {
    case HPE_OK:
        if (r->head_bytes > HTTP_HEAD_MAX) {
            q->status = 431;
            r->done = true;
        }
        return n;
    case HPE_PAUSED:
        r->done = true;
        r->complete = !q->has_body;
        if (q->status)
            return n;
        if (r->head_bytes > HTTP_HEAD_MAX)
            q->status = 431;
        else if (q->major != 1)
            q->status = 505;
        else if (q->minor >= 1 ? q->hosts != 1 : q->hosts > 1)
            q->status = 400; /* RFC 9112 3.2: exactly one Host in HTTP/1.1 */
        return n;
    case HPE_CB_url:
    case HPE_CB_header_value:
        break; /* the callback set the status */
    case HPE_HEADER_OVERFLOW:
        q->status = 431;
        break;
    case HPE_INVALID_METHOD:
        if (r->method_end < 0) {
            /* Capitals up to the end of what arrived: the next pieces decide. */
            r->method_pending = true;
            r->head_bytes += len - n;
            return len;
        }
        q->status = unknown_method_status(r);
        break;
    default:
        q->status = 400;
        break;
    }
    if (r->head_bytes > HTTP_HEAD_MAX && q->status == 400)
        q->status = 431;
    r->done = true;
    q->keep_alive = false;
    return n;
}

const char *http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 416:
        return "Range Not Satisfiable";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

static const char wday[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char month[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

void http_date_format(time_t t, char *buf, size_t cap)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, cap, "%s, %02d %s %04d %02d:%02d:%02d GMT", wday[tm.tm_wday], tm.tm_mday,
             month[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int http_date_parse(const char *s, time_t *out)
{
    struct tm tm = {0};
    char mon[4] = "";
    int n = 0;

    /* IMF-fixdate, then the two obsolete forms RFC 9110 5.6.7 says recipients accept. */
    if (sscanf(s, "%*3s, %2d %3s %4d %2d:%2d:%2d GMT%n", &tm.tm_mday, mon, &tm.tm_year, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) == 6 &&
        n > 0) {
    } else if (sscanf(s, "%*[A-Za-z], %2d-%3s-%2d %2d:%2d:%2d GMT%n", &tm.tm_mday, mon, &tm.tm_year,
                      &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) == 6 &&
               n > 0) {
        tm.tm_year += tm.tm_year < 70 ? 2000 : 1900;
    } else if (sscanf(s, "%*3s %3s %2d %2d:%2d:%2d %4d%n", mon, &tm.tm_mday, &tm.tm_hour,
                      &tm.tm_min, &tm.tm_sec, &tm.tm_year, &n) == 6 &&
               n > 0) {
    } else {
        return -1;
    }
    while (s[n] == ' ' || s[n] == '\t')
        n++;
    if (s[n] != '\0')
        return -1;
    tm.tm_mon = -1;
    for (int i = 0; i < 12; i++)
        if (!strcmp(mon, month[i]))
            tm.tm_mon = i;
    if (tm.tm_mon < 0 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
        tm.tm_sec > 60)
        return -1;
    tm.tm_year -= 1900;
    *out = timegm(&tm);
    return 0;
}

bool http_is_token(const char *s)
{
    /* RFC 9110 5.6.2: tchar */
    size_t n = strspn(s, "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         "abcdefghijklmnopqrstuvwxyz");
    return n > 0 && s[n] == '\0';
}

const char *http_header_invalid(const char *spec)
{
    /* Ours alone: they frame the message or the connection, or are always sent already. */
    static const char *const reserved[] = {
        "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
        "Upgrade",        "Content-Range",     "Date",       "Server",
    };
    const char *colon = strchr(spec, ':');
    for (const char *c = spec; *c; c++)
        if ((unsigned char)*c < 0x20 ? *c != '\t' : *c == 0x7f)
            return "no control characters (CR, LF, ...) in a header";
    if (!colon)
        return "wants 'Name: value'";
    size_t nlen = (size_t)(colon - spec);
    char name[64];
    if (nlen == 0 || nlen >= sizeof(name))
        return "the name is 1 to 63 characters before the ':'";
    memcpy(name, spec, nlen);
    name[nlen] = '\0';
    if (!http_is_token(name))
        return "the name is a token: letters, digits and !#$%&'*+-.^_`|~, no spaces";
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
        if (!strcasecmp(name, reserved[i]))
            return "ktla-serve sets this field itself";
    if (colon[1 + strspn(colon + 1, " \t")] == '\0')
        return "the value is empty";
    return NULL;
}

int http_response_fields(const struct http_response *r, struct http_field *f, size_t max,
                         char *buf, size_t cap)
{
    size_t nf = 0, off = 0;
    int n;

    /* FIELD(name, fmt, ...): the value formatted into buf, NUL-terminated. */
#define FIELD(name_, ...)                                                                          \
    do {                                                                                           \
        if (nf == max)                                                                             \
            return -1;                                                                             \
        n = snprintf(buf + off, cap - off, __VA_ARGS__);                                           \
        if (n < 0 || (size_t)n >= cap - off)                                                       \
            return -1;                                                                             \
        f[nf++] = (struct http_field){name_, strlen(name_), buf + off, (size_t)n};                 \
        off += (size_t)n + 1;                                                                      \
    } while (0)

    char date[32];
    http_date_format(r->now, date, sizeof(date));
    FIELD("Server", "ktla-serve");
    FIELD("Date", "%s", date);
    if (r->content_type)
        FIELD("Content-Type", "%s", r->content_type);
    if (r->content_encoding)
        FIELD("Content-Encoding", "%s", r->content_encoding);
    if (r->vary_encoding)
        FIELD("Vary", "Accept-Encoding");
    if (r->has_length)
        FIELD("Content-Length", "%llu", (unsigned long long)r->content_length);
    if (r->last_modified) {
        char lm[32];
        http_date_format(r->last_modified, lm, sizeof(lm));
        FIELD("Last-Modified", "%s", lm);
    }
    if (r->etag)
        FIELD("ETag", "%s", r->etag);
    if (r->accept_ranges)
        FIELD("Accept-Ranges", "bytes");
    if (r->has_range)
        FIELD("Content-Range", "bytes %llu-%llu/%llu", (unsigned long long)r->first,
              (unsigned long long)r->last, (unsigned long long)r->total);
    if (r->unsatisfied)
        FIELD("Content-Range", "bytes */%llu", (unsigned long long)r->total);
    if (r->allow)
        FIELD("Allow", "%s", r->allow);
    if (r->location)
        FIELD("Location", "%s", r->location);
#undef FIELD
    /* --header's "Name: value\r\n" lines, checked at start-up (http_header_invalid). */
    for (const char *p = r->extra; p && *p;) {
        const char *colon = strchr(p, ':'), *eol = strstr(p, "\r\n");
        if (!colon || !eol || colon > eol || nf == max)
            return -1;
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        f[nf++] = (struct http_field){p, (size_t)(colon - p), v, (size_t)(eol - v)};
        p = eol + 2;
    }
    return (int)nf;
}

int http_format_head(char *buf, size_t cap, const struct http_response *r)
{
    struct http_field f[HTTP_FIELDS_MAX];
    char values[2048]; /* a Location of FILES_LOCATION_MAX and the dates */
    size_t off = 0;
    int n, nf = http_response_fields(r, f, HTTP_FIELDS_MAX, values, sizeof(values));

    if (nf < 0)
        return -1;
#define ADD(...)                                                                                   \
    do {                                                                                           \
        n = snprintf(buf + off, cap - off, __VA_ARGS__);                                           \
        if (n < 0 || (size_t)n >= cap - off)                                                       \
            return -1;                                                                             \
        off += (size_t)n;                                                                          \
    } while (0)

    ADD("HTTP/1.1 %d %s\r\n", r->status, http_reason(r->status));
    for (int i = 0; i < nf; i++)
        ADD("%.*s: %.*s\r\n", (int)f[i].name_len, f[i].name, (int)f[i].value_len, f[i].value);
    if (r->connection > 0)
        ADD("Connection: keep-alive\r\n");
    else if (r->connection < 0)
        ADD("Connection: close\r\n");
    ADD("\r\n");
#undef ADD
    return (int)off;
}
