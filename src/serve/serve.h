/*
 * ktla-serve: an HTTPS static file server on ktla, HTTP/2 and HTTP/1.1. The stages, one file each:
 *   main.c    options, start-up report, signals, worker threads
 *   worker.c  one io_uring + acceptor per thread, the HTTP/1.1 connection state machine
 *   h2.c      HTTP/2 connections over nghttp2, answered by the same stages
 *   http.c    request heads through http_parser, response heads
 *   files.c   request target to a file beneath DIR, MIME types, validators, ranges
 *   log.c     the access log
 *   cert.c    the in-memory self-signed certificate, fingerprints
 * Everything in http.c and files.c (and the formatting in log.c) is pure: bytes and file
 * descriptors in, values out, so tests/serve/ checks it in memory.
 */
#ifndef KTLA_SERVE_H
#define KTLA_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include <http_parser.h>

/* ---- http.c */

#define HTTP_HEAD_MAX 16384 /* request line + fields + blank line; beyond: 431 */
#define HTTP_URL_MAX 8192   /* request target; beyond: 414 */
#define HTTP_VALUE_MAX 1024 /* each field this server reads (Range, If-*); beyond: 431 */

/* The request strings live on the heap, sized to what arrived (an idle connection holds none):
 * NUL-terminated, NULL until the head has the field (target: the request line). */
struct http_request {
    enum http_method method;
    int known_method; /* http_parser recognised the method */
    unsigned short major, minor;
    bool keep_alive;
    bool has_body;
    int hosts; /* Host fields seen: HTTP/1.1 needs exactly one */
    char *target;
    size_t target_len;
    char *range;
    char *if_none_match;
    char *if_modified_since;
    char *if_range;
    char *accept_encoding; /* NULL: none sent (then only the files themselves are served) */
    /* 0: a request to answer; otherwise the error status the head earned (400, 405 is not here:
     * the method is checked by the caller; 413, 414, 431, 500 when memory ran out, 501, 505). */
    int status;
};

/* Incremental reader of one request head; fields are copied out, so the caller's buffer may be
 * reused as soon as http_reader_feed returns, and a head may arrive in any number of pieces. */
struct http_reader {
    http_parser parser;
    struct http_request req;
    size_t head_bytes; /* consumed so far for this request */
    bool done;
    bool complete; /* the whole head was read: nothing of this request is left unread */
    bool in_value;
    char field[32];
    size_t field_len;
    char **dst; /* where the current field's value goes, or NULL: not a field we read */
    size_t *dst_len, *dst_cap;
    size_t target_cap;
    size_t value_len[5]; /* of range, if_none_match, if_modified_since, if_range,
                            accept_encoding */
    size_t value_cap[5];
    /* The request's leading capital letters (at most 32) and the byte after them, -1 until it
     * arrives: 501 or 400 for a method http_parser does not know, in whatever pieces it came. */
    int method_len, method_end;
    bool method_pending; /* http_parser refused the method before that byte arrived */
};

/* A reader ready for the first request; NULL when out of memory. Free with http_reader_free. */
struct http_reader *http_reader_new(void);
/* Starts the next request on r, freeing the previous one's strings. */
void http_reader_start(struct http_reader *r);
/* Frees r and its strings; NULL is a no-op. */
void http_reader_free(struct http_reader *r);
/* The request fields this server reads (Range, If-None-Match, If-Modified-Since, If-Range,
 * Accept-Encoding): the index of a field name in any case, or -1 when it reads no such field;
 * and where that field's value is kept in q. HTTP/2 fills its requests with these too. */
int http_field_index(const char *name, size_t len);
char **http_request_field(struct http_request *q, int index);

/* Frees a request's strings (HTTP/2 builds its requests without a reader). */
void http_request_release(struct http_request *q);

/* Feeds len bytes; returns how many were consumed (fewer than len only once the request head is
 * complete: the rest belongs to the next, pipelined request). r->done says whether the request is
 * complete; then r->req.status is 0 or the error to answer with. */
size_t http_reader_feed(struct http_reader *r, const char *data, size_t len);

/* The next capacity of a connection's receive buffer after a receive filled all cap bytes of it
 * while a head was still incomplete: the next power of two, at most HTTP_HEAD_MAX (cap itself
 * once there). Heads are parsed as they arrive, so this only saves receives, never decides a
 * limit. */
size_t http_inbuf_grow(size_t cap);

const char *http_reason(int status);

/* Whether s is a non-empty RFC 9110 token (a field name, a charset name). */
bool http_is_token(const char *s);

/* Checks a field for every response, "Name: value": NULL when it may be sent, else why not (a
 * name that is not a token, a control character such as CR or LF anywhere, or a field that
 * frames the message and so is this server's alone: Content-Length, Transfer-Encoding,
 * Connection, ...). */
const char *http_header_invalid(const char *spec);

/* What a response head says; zero fields are left out. */
struct http_response {
    int status;
    const char *content_type;
    const char *content_encoding; /* "br", "gzip": a precompressed sibling is the body */
    bool vary_encoding;           /* Vary: Accept-Encoding (the file has such a sibling) */
    bool has_length;
    uint64_t content_length;
    time_t last_modified; /* 0: none */
    const char *etag;
    bool accept_ranges;
    bool has_range; /* Content-Range: bytes first-last/total */
    uint64_t first, last, total;
    bool unsatisfied; /* Content-Range: bytes * / total (416) */
    const char *allow;
    const char *location;
    int connection; /* 0: say nothing, 1: keep-alive, -1: close */
    time_t now;
    const char *extra; /* "Name: value\r\n"... from --header, after our own fields; or NULL */
};

/* One field of a response head, not NUL-terminated (names as HTTP/1.1 writes them: HTTP/2
 * sends them in lower case). */
struct http_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

#define HTTP_FIELDS_MAX 128 /* our own fields (16) and --header's (512 bytes: at most 86) */

/* The fields a response head carries, the same for both protocols (everything but the status
 * and Connection, which HTTP/2 does not have): at most max into f, values formatted into buf.
 * Returns how many, or -1 when f or buf is too small. */
int http_response_fields(const struct http_response *r, struct http_field *f, size_t max,
                         char *buf, size_t cap);

/* Formats the HTTP/1.1 head (status line, fields, blank line) into buf. Returns its length, or
 * -1 when cap is too small. */
int http_format_head(char *buf, size_t cap, const struct http_response *r);

/* IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"); buf needs 30 bytes. */
void http_date_format(time_t t, char *buf, size_t cap);
/* Parses an IMF-fixdate, RFC 850 or asctime date. 0 and *out, or -1. */
int http_date_parse(const char *s, time_t *out);

/* ---- files.c */

/*
 * Turns a request target (origin or absolute form) into a path relative to DIR: query dropped,
 * percent-decoding applied, empty and "." segments dropped. Returns 0 and out ("." for the root),
 * 400 for a malformed target, 403 for a ".." segment, 404 for a NUL byte (no file has one).
 * *trailing_slash says whether the path ended in '/'.
 */
int files_target_to_path(const char *target, size_t len, char *out, size_t cap,
                         bool *trailing_slash);

/* Opens rel beneath root_fd without leaving it (openat2 RESOLVE_BENEATH: "..", absolute and
 * symbolic links that lead outside all fail). Returns an fd, or -status (403, 404). */
int files_open_beneath(int root_fd, const char *rel);

/* Whether a path relative to DIR is hidden: a segment starting with '.' (".env", ".git/config"),
 * except a first segment ".well-known" (RFC 8615: ACME challenges, security.txt), beneath which
 * only deeper dot segments are hidden. */
bool files_path_hidden(const char *rel);

/* Checks once whether this kernel has openat2 with RESOLVE_BENEATH. 0 or -errno. */
int files_probe(int root_fd);

/*
 * How much an Accept-Encoding field value wants a content coding ("br", "gzip"): its q-value in
 * thousandths, 0 (not acceptable: absent from the list without a "*", or q=0) to 1000. Names
 * compare without case, "x-gzip" is "gzip" (RFC 9110 12.5.3), "*" stands for every coding the
 * list does not name, and an element with a malformed q-value counts as absent.
 */
int files_coding_q(const char *accept, const char *coding);

/* Strong validator from inode, size and modification time, quoted; buf needs 64 bytes. */
void files_etag(const struct stat *st, char *buf, size_t cap);

/* If-None-Match: 1 when the list ("*", or comma-separated entity tags, weak or strong) matches
 * etag by weak comparison. */
int files_etag_match(const char *list, const char *etag);

/*
 * A Range field against a file of size bytes. Returns 1 and [*first, *last] for one satisfiable
 * range (206), -1 when it cannot be satisfied (416), 0 when it is to be ignored (not bytes,
 * malformed, several ranges: the whole file, 200).
 */
int files_parse_range(const char *value, uint64_t size, uint64_t *first, uint64_t *last);

struct mime_table;

#define FILES_LOCATION_MAX 1024 /* a redirect longer than this is refused (414) */

/* Scratch for answering one request: what resp's strings point into. */
#define FILES_ABSENT_SLOTS 512
#define FILES_ABSENT_NS 1000000000ull

struct files_scratch {
    char path[HTTP_URL_MAX + 16];
    char location[FILES_LOCATION_MAX];
    char etag[64];
    /* Set by the caller: a path lookup that is not all in the kernel's dentry cache (a cold
     * directory: reading it from disk would block the thread) is not done; files_answer then
     * returns FILES_COLD with the path it wanted in `cold`, for the caller to look up where
     * waiting is harmless (ktla-serve: io_uring's openat2) and ask again. */
    bool cached_only;
    char cold[HTTP_URL_MAX + 16];
    /* Precompressed siblings found missing, each remembered for FILES_ABSENT_NS: most files
     * have none, and looking both up again for every request was two of its three path
     * lookups. A sibling added to DIR is served within that time. Zero means empty. */
    struct files_absent {
        uint64_t hash, until_ns;
    } absent[FILES_ABSENT_SLOTS];
};

/* files_answer's "not without the disk" (see files_scratch.cached_only): never an HTTP status. */
#define FILES_COLD 1

/* Whether this kernel can look a path up from the dentry cache alone (openat2 RESOLVE_CACHED,
 * Linux 5.12). */
bool files_can_resolve_cached(int root_fd);

/* What is sent after the head: for 200 and 206, `len` bytes of `fd` from `off`; else fd -1. */
struct files_body {
    int fd; /* open, blocking; the caller closes it */
    uint64_t off, len;
};

/*
 * The answer to a complete request head, decided from the request and the tree beneath root_fd
 * alone. A file with a precompressed sibling beside it (x.css.br, x.css.gz: made ahead of time,
 * never compressed here) is answered with the sibling when Accept-Encoding accepts its coding
 * (the higher q-value; br on a tie), with Content-Encoding, the sibling's own validators (the
 * ETag marked -br or -gz) and ranges counted in its bytes; every answer about such a file says
 * Vary: Accept-Encoding. Returns the status (a reading error in q->status as it is; 405, 413; what
 * the file gives), or FILES_COLD (nothing opened, nothing to close), and fills resp's fields for it (validators, type, range, Location, Allow; not the
 * connection and not an error's text) and *body. ktla-serve answers with it, and the HTTP
 * fuzzer checks it: one function, so the fuzzer never tests a copy that has drifted.
 */
int files_answer(int root_fd, const struct mime_table *mime, const struct http_request *q,
                 struct files_scratch *s, struct http_response *resp, struct files_body *body);

/*
 * /etc/mime.types: extension to media type. It also carries the start-up choices that shape
 * every answer beyond the media type, because worker.c hands files_answer this table and
 * nothing else of the configuration.
 */
struct mime_table {
    struct mime_entry {
        char *ext;
        char *type;
    } * v;
    size_t n;
    bool allow_dotfiles;       /* --allow-dotfiles: serve segments starting with '.' */
    const char *extra_headers; /* --header fields, "Name: value\r\n"..., or NULL */
};

/* Loads a mime.types file (0 or -errno); an empty table answers application/octet-stream. */
int mime_load(struct mime_table *t, const char *path);
/* Loads from a string in mime.types format (for tests and the built-in fallback). */
int mime_load_string(struct mime_table *t, const char *text);
void mime_free(struct mime_table *t);
/* Adds "; charset=NAME" to every textual type in t: text/ types, JavaScript, JSON, XML and the
 * +json and +xml types (charset NULL: nothing). Call once, after loading. 0 or -ENOMEM (t unchanged
 * for the types not yet done, still consistent). */
int mime_set_charset(struct mime_table *t, const char *charset);
/* Whether a media type is text a charset applies to (see mime_set_charset). */
bool mime_is_textual(const char *type);
const char *mime_lookup(const struct mime_table *t, const char *path);

/* ---- log.c */

struct log_entry {
    const char *peer; /* "ADDR:PORT" or "[ADDR]:PORT" */
    time_t when;
    const char *method;
    const char *target;
    size_t target_len;
    unsigned major, minor;
    int status;
    uint64_t body_bytes;  /* sent */
    uint64_t total_bytes; /* head + body sent */
    const char *tls_version;
    const char *cipher;
    const char *mode; /* kernel, userspace, or which direction */
    uint64_t duration_ns;
    const char *end; /* how the response ended: "ok" (all of it handed to the socket), or why
                        it was cut ("client-gone", "timeout", "shutdown", "file-error"...) */
};

/* One access-log line: Common Log Format, then TLS version, cipher, record-layer mode, bytes
 * sent in all, duration in seconds, how the response ended; a newline at the end. Returns its
 * length (truncated to cap). */
size_t log_format(char *buf, size_t cap, const struct log_entry *e);

/* ---- cert.c */

struct cert_pem {
    char *cert;
    char *key;
};

/* A fresh ECDSA P-256 key and a self-signed certificate for localhost, 127.0.0.1 and ::1, valid
 * for 30 days, as PEM. 0, or -1 with the reason in err. */
int cert_self_signed(struct cert_pem *out, char *err, size_t errcap);
void cert_pem_free(struct cert_pem *p);

/*
 * Reads cert_file's first certificate and key_file's private key as ktla_ctx_new will, and
 * checks that they belong together, so that a failure can name the file and the cause (errno's,
 * or OpenSSL's reason), where the library has one code for all of them. 0, or -1 with a
 * sentence in err that starts with the option ("--key FILE: ...").
 */
int cert_check(const char *cert_file, const char *key_file, char *err, size_t errcap);

/* SHA-256 of the DER certificate as AA:BB:..., from PEM in memory or a file. 0 or -1. */
int cert_fingerprint(const char *pem, const char *file, char *out, size_t cap);

#endif
