/* The access-log line and the self-signed certificate. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

Test(log, common_log_format_then_tls_fields)
{
    char buf[512];
    setenv("TZ", "UTC", 1);
    struct log_entry e = {.peer = "[::1]:4444",
                          .when = 784111777,
                          .method = "GET",
                          .target = "/a b\"\n",
                          .target_len = 6,
                          .major = 1,
                          .minor = 1,
                          .status = 200,
                          .body_bytes = 10,
                          .total_bytes = 210,
                          .tls_version = "TLSv1.3",
                          .cipher = "TLS_AES_128_GCM_SHA256",
                          .mode = "kernel",
                          .duration_ns = 1500000};
    size_t n = log_format(buf, sizeof(buf), &e);
    cr_assert_eq(n, strlen(buf));
    cr_assert_str_eq(buf,
                     "::1 - - [06/Nov/1994:08:49:37 +0000] \"GET /a b\\x22\\x0a HTTP/1.1\" 200 "
                     "10 TLSv1.3 TLS_AES_128_GCM_SHA256 kernel 210 0.001500 ok\n");
    e.peer = "10.0.0.1:5";
    e.method = NULL;
    e.status = 400;
    log_format(buf, sizeof(buf), &e);
    cr_assert(strncmp(buf, "10.0.0.1 - - [", 14) == 0, "%s", buf);
    cr_assert(strstr(buf, "] \"-\" 400 "), "%s", buf);
}

Test(log, a_response_cut_short_says_how_and_what_went_out)
{
    char buf[512];
    struct log_entry e = {.peer = "127.0.0.1:9",
                          .method = "GET",
                          .target = "/big",
                          .target_len = 4,
                          .major = 1,
                          .minor = 1,
                          .status = 200,
                          .body_bytes = 65536,
                          .total_bytes = 65736,
                          .tls_version = "TLSv1.2",
                          .cipher = "ECDHE-ECDSA-AES128-GCM-SHA256",
                          .mode = "userspace",
                          .end = "client-gone"};
    log_format(buf, sizeof(buf), &e);
    cr_assert(strstr(buf, "\" 200 65536 TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256 userspace 65736 "),
              "%s", buf);
    size_t n = strlen(buf);
    cr_assert(n > 13 && strcmp(buf + n - 13, " client-gone\n") == 0, "%s", buf);
}

Test(cert, self_signed_certificate_has_a_fingerprint)
{
    struct cert_pem p;
    char err[256], fp[128];
    cr_assert_eq(cert_self_signed(&p, err, sizeof(err)), 0, "%s", err);
    cr_assert(strstr(p.cert, "BEGIN CERTIFICATE"));
    cr_assert(strstr(p.key, "PRIVATE KEY"));
    cr_assert_eq(cert_fingerprint(p.cert, NULL, fp, sizeof(fp)), 0);
    cr_assert_eq(strlen(fp), 32 * 3 - 1);
    cr_assert_eq(cert_fingerprint("not pem", NULL, fp, sizeof(fp)), -1);
    cert_pem_free(&p);
}
