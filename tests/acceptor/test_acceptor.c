/*
 * The acceptor end to end over loopback: an OpenSSL client, the ktla acceptor with an echo
 * application. The same tests run on the host (no kernel TLS: every connection must carry on in
 * userspace, with the probe's reason) and inside the guest kernel with KTLA_REQUIRE_KTLS=1 (every
 * connection must be in the kernel, both directions, verified with getsockopt).
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "echo.h"
#include "internal.h"
#include "ktls.h"
#include "testutil.h"

TestSuite(acceptor, .timeout = 120);

/* The mode every connection must end up in here, and the reason when it is userspace. */
static int expected_reason(void)
{
    int ret = ktla_kernel_probe(NULL);
    const char *req = getenv("KTLA_REQUIRE_KTLS");
    if (req && strcmp(req, "1") == 0)
        cr_assert_eq(ret, 0, "kernel TLS required here but: %s", ktla_strerror(ret));
    return ret;
}

static void check_modes(const struct echo_conn *ec, int reason)
{
    if (reason == 0) {
        cr_assert_eq(ec->info.tx_mode, KTLA_MODE_KERNEL, "tx in userspace: %s",
                     ktla_strerror(ec->info.tx_reason));
        cr_assert_eq(ec->info.rx_mode, KTLA_MODE_KERNEL, "rx in userspace: %s",
                     ktla_strerror(ec->info.rx_reason));
        cr_assert_eq(ec->readback_tx, 0, "getsockopt(TLS_TX): %s", ktla_strerror(ec->readback_tx));
        cr_assert_eq(ec->readback_rx, 0, "getsockopt(TLS_RX): %s", ktla_strerror(ec->readback_rx));
    } else {
        cr_assert_eq(ec->info.tx_mode, KTLA_MODE_USERSPACE);
        cr_assert_eq(ec->info.rx_mode, KTLA_MODE_USERSPACE);
        cr_assert_eq(ec->info.tx_reason, reason, "reason %s, probe says %s",
                     ktla_err_name(ec->info.tx_reason), ktla_err_name(reason));
    }
}

static void echo_round(struct tc *c, size_t len, uint32_t seed)
{
    uint8_t *out = malloc(len), *in = malloc(len);
    cr_assert(out && in);
    tu_pattern(out, len, seed);
    cr_assert_eq(tc_write(c, out, len), 0);
    cr_assert_eq(tc_read_full(c, in, len), 0, "echo of %zu bytes did not come back", len);
    cr_assert(memcmp(in, out, len) == 0, "echo of %zu bytes differs", len);
    free(out);
    free(in);
}

static struct echo_conn *last_conn(struct echo_server *s, struct echo_conn *buf, int max)
{
    int n = echo_conns(s, buf, max);
    cr_assert(n > 0 && n <= max, "%d connections", n);
    return &buf[n - 1];
}

ParameterizedTestParameters(acceptor, every_version_and_cipher_echoes_both_ways)
{
    return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);
}

ParameterizedTest(struct tu_variant *v, acceptor, every_version_and_cipher_echoes_both_ways)
{
    int reason = expected_reason();
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = v->version, .cipher = (int)v->cipher};
    struct echo_conn conns[4];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0, "%s: handshake failed",
                 tu_variant_name(v));
    echo_round(&c, 5, 1);
    echo_round(&c, 100000, 2);
    echo_round(&c, 1, 3);
    tc_close(&c, true);
    cr_assert(echo_wait_ended(s, 1, 5000));
    struct echo_conn *ec = last_conn(s, conns, 4);
    cr_assert_eq(ec->info.version, v->version);
    cr_assert_eq(ec->info.cipher, v->cipher);
    check_modes(ec, reason);
    cr_assert_eq(ec->last_result, 0, "close_notify should end the stream cleanly, got %s",
                 ktla_strerror((int)ec->last_result));
    echo_stop(s);
}

/* The client's first request leaves in the same write as its Finished. */
ParameterizedTestParameters(acceptor, request_in_the_finished_segment_is_answered)
{
    return cr_make_param_array(struct tu_variant, (void *)(tu_variants + 3), 3);
}

ParameterizedTest(struct tu_variant *v, acceptor, request_in_the_finished_segment_is_answered)
{
    int reason = expected_reason();
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = v->version, .cipher = (int)v->cipher};
    const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    char back[sizeof(req)];
    struct echo_conn conns[4];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, req, sizeof(req)), 0);
    cr_assert_eq(tc_read_full(&c, back, sizeof(back)), 0, "the pipelined request was lost");
    cr_assert(memcmp(back, req, sizeof(req)) == 0);
    echo_round(&c, 40000, 9); /* and the stream carries on in order after it */
    tc_close(&c, true);
    cr_assert(echo_wait_ended(s, 1, 5000));
    struct echo_conn *ec = last_conn(s, conns, 4);
    cr_assert_eq(ec->info.early_plaintext, sizeof(req),
                 "the request should have arrived with the handshake (%zu bytes seen)",
                 ec->info.early_plaintext);
    check_modes(ec, reason);
    echo_stop(s);
}

ParameterizedTestParameters(acceptor, recv_ready_waits_without_a_buffer)
{
    return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);
}

/* The server waits with ktla_conn_recv_ready before every receive: data that came with the
 * handshake, data that comes later, and the close_notify at the end are each reported ready. */
ParameterizedTest(struct tu_variant *v, acceptor, recv_ready_waits_without_a_buffer)
{
    int reason = expected_reason();
    struct echo_opts o = {.tickets = -1, .ready_first = true};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = v->version, .cipher = (int)v->cipher};
    const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    char back[sizeof(req)];
    struct echo_conn conns[4];

    /* TLS 1.2 clients finish first in a full handshake, so only TLS 1.3 pipelines here. */
    bool pipe = v->version == KTLA_TLS1_3;
    cr_assert_eq(tc_connect(&c, echo_port(s), &co, pipe ? req : NULL, pipe ? sizeof(req) : 0), 0);
    if (pipe) {
        cr_assert_eq(tc_read_full(&c, back, sizeof(back)), 0);
        cr_assert(memcmp(back, req, sizeof(req)) == 0);
    }
    usleep(50000); /* the server is now waiting, with no data in sight */
    echo_round(&c, 7, 1);
    echo_round(&c, 70000, 2);
    tc_close(&c, true);
    cr_assert(echo_wait_ended(s, 1, 5000));
    struct echo_conn *ec = last_conn(s, conns, 4);
    cr_assert_eq(ec->last_result, 0, "ended with %zd", ec->last_result);
    check_modes(ec, reason);
    echo_stop(s);
}

/*
 * Both OpenSSL library contexts an acceptor can run its handshakes in (its own, the default; or
 * OpenSSL's shared one) give the same connections: TLS 1.3 and 1.2, kernel mode where the kernel
 * has TLS (the keys are derived in the SSL's context), and a ticket from one resumes on the other
 * (same ktla_ctx, same keys). The choice cannot change once connections came.
 */
Test(acceptor, own_and_shared_openssl_contexts_serve_alike)
{
    int reason = expected_reason();
    struct echo_opts own = {.tickets = -1}, shared = {.tickets = -1, .shared_openssl = true};
    struct echo_server *s[2] = {echo_start(&own), NULL};
    struct echo_conn conns[4];
    struct tc c;

    shared.ctx = echo_ctx(s[0]); /* the same ktla_ctx, so the same ticket keys */
    s[1] = echo_start(&shared);
    static const uint16_t versions[] = {KTLA_TLS1_3, KTLA_TLS1_2};
    for (int v = 0; v < 2; v++) {
        struct tc_opts co = {.version = versions[v], .cipher = -1};
        co.ctx = tc_ctx_new(&co);
        for (int i = 0; i < 2; i++) {
            cr_assert_eq(tc_connect(&c, echo_port(s[i]), &co, NULL, 0), 0);
            cr_assert_eq(SSL_session_reused(c.ssl), co.session != NULL,
                         "server %d, version %x: a ticket of the other server did not resume", i,
                         versions[v]);
            echo_round(&c, 20000, (uint8_t)(10 * v + i));
            SSL_SESSION_free(co.session);
            co.session = tc_session(&c);
            cr_assert(co.session);
            tc_close(&c, true);
            cr_assert(echo_wait_ended(s[i], v + 1, 5000));
            check_modes(last_conn(s[i], conns, 4), reason);
        }
        SSL_SESSION_free(co.session);
        SSL_CTX_free(co.ctx);
    }
    /* Each made as asked (echo_wait_ended above ordered us after the first connection). */
    cr_assert_not_null(echo_acceptor(s[0])->tls, "no context of its own: fell back to sharing");
    cr_assert_null(echo_acceptor(s[1])->tls);
    /* Chosen once: not after the first connection. */
    for (int i = 0; i < 2; i++)
        cr_assert_eq(ktla_acceptor_set_openssl_context(echo_acceptor(s[i]), KTLA_OPENSSL_OWN),
                     KTLA_EINVAL);
    echo_stop(s[1]);
    echo_stop(s[0]);
}

/*
 * Acceptors on one ring run on one thread, where contexts of their own would save nothing: they
 * share one (ktla-serve's workers have an acceptor per address), made at the first connection,
 * while an acceptor on another ring has its own, made at once when asked for.
 */
Test(acceptor, acceptors_on_one_ring_share_one_openssl_context)
{
    struct echo_opts two = {.tickets = -1, .shared_ring = true, .second_acceptor = true};
    struct echo_server *s = echo_start(&two);
    struct echo_opts other = {.tickets = -1, .ctx = echo_ctx(s), .own_openssl = true};
    struct echo_server *o = echo_start(&other);
    /* Asked for explicitly, it is made at once, before any connection. */
    cr_assert_not_null(echo_acceptor(o)->tls);
    cr_assert_null(echo_acceptor(s)->tls, "made before the first connection without being asked");
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};
    const uint16_t ports[] = {echo_port(s), echo_port2(s), echo_port(o)};
    struct tc c;

    for (int i = 0; i < 3; i++) {
        cr_assert_eq(tc_connect(&c, ports[i], &co, NULL, 0), 0);
        echo_round(&c, 1000, (uint8_t)(40 + i));
        tc_close(&c, true);
    }
    cr_assert(echo_wait_ended(s, 2, 5000));
    cr_assert(echo_wait_ended(o, 1, 5000));
    struct ktla_tls_local *a = echo_acceptor(s)->tls, *b = echo_acceptor2(s)->tls;
    cr_assert(a && b, "an acceptor without a context of its own");
    cr_assert_eq(a, b, "two acceptors on one ring made two contexts");
    cr_assert_not_null(echo_acceptor(o)->tls);
    cr_assert_neq(echo_acceptor(o)->tls, a, "an acceptor on another ring shared the context");
    echo_stop(o);
    echo_stop(s);
}

ParameterizedTestParameters(acceptor, tls13_ticket_counts_keep_the_sequence_right)
{
    static int counts[] = {0, 1, 2, 4};
    return cr_make_param_array(int, counts, 4);
}

ParameterizedTest(int *tickets, acceptor, tls13_ticket_counts_keep_the_sequence_right)
{
    int reason = expected_reason();
    struct echo_opts o = {.tickets = *tickets};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};
    struct echo_conn conns[4];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    echo_round(&c, 3000, 4);
    struct echo_conn *ec = last_conn(s, conns, 4);
    if (reason == 0)
        cr_assert_eq(ec->readback_tx_seq, (uint64_t)*tickets,
                     "kernel TX starts at record %llu with %d tickets",
                     (unsigned long long)ec->readback_tx_seq, *tickets);
    check_modes(ec, reason);
    tc_close(&c, true);
    echo_stop(s);
}

static void resume(uint16_t version, bool pipelined)
{
    int reason = expected_reason();
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = version, .cipher = -1};
    struct echo_conn conns[4];

    co.ctx = tc_ctx_new(&co);
    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    echo_round(&c, 100, 5);
    co.session = tc_session(&c);
    cr_assert(co.session, "no resumable session after the first connection");
    tc_close(&c, true);

    const char req[] = "again";
    cr_assert_eq(tc_connect(&c, echo_port(s), &co, pipelined ? req : NULL,
                            pipelined ? sizeof(req) : 0),
                 0);
    cr_assert(SSL_session_reused(c.ssl), "the client did not resume");
    if (pipelined) {
        char back[sizeof(req)];
        cr_assert_eq(tc_read_full(&c, back, sizeof(back)), 0);
        cr_assert(memcmp(back, req, sizeof(req)) == 0);
    }
    echo_round(&c, 20000, 6);
    if (version == KTLA_TLS1_3) {
        /* A TLS 1.3 client uses a ticket once: the resumed handshake must bring a fresh one. */
        SSL_SESSION *fresh = tc_session(&c);
        const unsigned char *t1, *t2;
        size_t l1, l2;
        cr_assert(fresh, "no resumable session after the resumed handshake");
        SSL_SESSION_get0_ticket(co.session, &t1, &l1);
        SSL_SESSION_get0_ticket(fresh, &t2, &l2);
        cr_assert(l2 > 0 && (l1 != l2 || memcmp(t1, t2, l1) != 0),
                  "no new ticket after a resumed TLS 1.3 handshake");
        SSL_SESSION_free(fresh);
    }
    tc_close(&c, true);
    cr_assert(echo_wait_ended(s, 2, 5000));
    struct echo_conn *ec = last_conn(s, conns, 4);
    cr_assert_eq(ec->info.resumed, 1);
    check_modes(ec, reason);
    SSL_SESSION_free(co.session);
    SSL_CTX_free(co.ctx);
    echo_stop(s);
}

Test(acceptor, tls13_resumed_handshake_goes_to_the_kernel_too)
{
    resume(KTLA_TLS1_3, false);
}

Test(acceptor, tls12_resumed_handshake_with_a_pipelined_request)
{
    /* In an abbreviated TLS 1.2 handshake the client finishes last, so it can pipeline. */
    resume(KTLA_TLS1_2, true);
}

/* A file of len bytes (a pattern from seed), opened by a server with the given file path; the
 * file is unlinked at once (the server holds it open). */
/* An echo server with options o answering FILE with a file of len bytes (pattern `seed`, also
 * put in data), which is unlinked once the server has it open. */
static struct echo_server *server_with_file(uint8_t *data, size_t len, uint32_t seed,
                                            struct echo_opts o)
{
    char name[] = "/tmp/ktla-accept-file-XXXXXX";
    int fd = mkstemp(name);

    cr_assert(fd >= 0);
    tu_pattern(data, len, seed);
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
    o.file = name;
    struct echo_server *s = echo_start(&o);
    unlink(name);
    return s;
}

static struct echo_server *file_server(uint8_t *data, size_t len, enum ktla_file_path path,
                                       size_t extra)
{
    struct echo_opts o = {.tickets = -1, .file_path = path, .file_extra = extra};
    return server_with_file(data, len, 77, o);
}

/* Asks for the file `times` times on one connection; each copy must arrive intact. With
 * slow_reader the client waits before reading, so the server's socket fills up and the send has
 * to wait for room (POLLOUT) halfway. */
static void file_round_trip(struct tu_variant *v, enum ktla_file_path path, size_t len, int times,
                            bool slow_reader)
{
    int reason = expected_reason();
    uint8_t *data = malloc(len), *in = malloc(len);
    cr_assert(data && in);
    struct echo_server *s = file_server(data, len, path, 0);
    struct tc c;
    struct tc_opts co = {.version = v->version, .cipher = (int)v->cipher};
    struct echo_conn conns[4];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    for (int i = 0; i < times; i++) {
        cr_assert_eq(tc_write(&c, "FILE", 4), 0);
        if (slow_reader)
            usleep(300 * 1000);
        memset(in, 0, len);
        cr_assert_eq(tc_read_full(&c, in, len), 0);
        cr_assert(memcmp(in, data, len) == 0, "%s: copy %d of the file arrived different",
                  tu_variant_name(v), i + 1);
    }
    echo_round(&c, 10, 1); /* the connection is still in step afterwards */
    tc_close(&c, true);
    cr_assert(echo_wait_ended(s, 1, 10000), "the connection did not end");
    struct echo_conn *ec = last_conn(s, conns, 4);
    check_modes(ec, reason);
    /* Every file byte and the 10 echoed, counted as they went (ktla-serve's idle timeout). */
    cr_assert_eq(ec->bytes_sent, (uint64_t)len * (uint64_t)times + 10, "%llu bytes sent, not %zu",
                 (unsigned long long)ec->bytes_sent, len * (size_t)times + 10);
    free(data);
    free(in);
    echo_stop(s);
}

ParameterizedTestParameters(acceptor, sendfile_delivers_the_file_intact)
{
    return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);
}

ParameterizedTest(struct tu_variant *v, acceptor, sendfile_delivers_the_file_intact)
{
    file_round_trip(v, KTLA_FILE_SENDFILE, (1 << 20) + 16385, 1, false);
}

ParameterizedTestParameters(acceptor, splice_delivers_the_file_intact)
{
    return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);
}

/* Several pipe-fulls per file, and the same pipe again for the second and third copy. */
ParameterizedTest(struct tu_variant *v, acceptor, splice_delivers_the_file_intact)
{
    file_round_trip(v, KTLA_FILE_SPLICE, (1 << 20) + 16385, 3, false);
}

Test(acceptor, splice_waits_for_a_slow_reader)
{
    struct tu_variant v = {KTLA_TLS1_3, KTLA_CIPHER_AES_256_GCM};
    file_round_trip(&v, KTLA_FILE_SPLICE, 8 << 20, 2, true);
}

Test(acceptor, sendfile_waits_for_a_slow_reader)
{
    struct tu_variant v = {KTLA_TLS1_2, KTLA_CIPHER_AES_128_GCM};
    file_round_trip(&v, KTLA_FILE_SENDFILE, 8 << 20, 2, true);
}

/* A file shorter than the count asked for: the send fails with -ENODATA after the bytes there
 * are, on either path, and the connection ends instead of hanging. */
static void short_file(enum ktla_file_path path)
{
    const size_t len = 300000;
    uint8_t *data = malloc(len), *in = malloc(len);
    cr_assert(data && in);
    struct echo_server *s = file_server(data, len, path, 5000);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};
    struct echo_conn conns[4];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    cr_assert_eq(tc_write(&c, "FILE", 4), 0);
    cr_assert_eq(tc_read_full(&c, in, len), 0);
    cr_assert(memcmp(in, data, len) == 0);
    cr_assert(echo_wait_ended(s, 1, 5000), "the connection did not end");
    cr_assert_eq(last_conn(s, conns, 4)->last_result, -ENODATA);
    cr_assert_eq(last_conn(s, conns, 4)->bytes_sent, len, "the bytes there were count as sent");
    tc_close(&c, false);
    free(data);
    free(in);
    echo_stop(s);
}

Test(acceptor, splice_of_a_short_file_fails_cleanly)
{
    short_file(KTLA_FILE_SPLICE);
}

Test(acceptor, sendfile_of_a_short_file_fails_cleanly)
{
    short_file(KTLA_FILE_SENDFILE);
}

Test(acceptor, require_policy_fails_only_where_the_kernel_cannot)
{
    int reason = expected_reason();
    struct echo_opts o = {.tickets = -1, .ktls = KTLA_KTLS_REQUIRE};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};
    int code = 0;

    int ret = tc_connect(&c, echo_port(s), &co, NULL, 0);
    if (reason == 0) {
        cr_assert_eq(ret, 0);
        echo_round(&c, 10, 1);
        cr_assert_eq(echo_failures(s, NULL), 0);
    } else {
        /* The handshake itself completes on the client; the server then closes. */
        char b;
        if (ret == 0)
            cr_assert_neq(tc_read_full(&c, &b, 1), 0, "data flowed despite the require policy");
        cr_assert(echo_wait_failures(s, 1, 5000));
        echo_failures(s, &code);
        cr_assert_eq(code, reason, "failed with %s, the probe said %s", ktla_err_name(code),
                     ktla_err_name(reason));
    }
    tc_close(&c, false);
    echo_stop(s);
}

/* The application runs the ring and its own submissions share it with ktla's. */
/* Finished, a request and a FIN in one burst: the FIN can reach the server before it hands the
 * socket to the kernel, and the kernel takes its TLS ULP only on an ESTABLISHED socket, not in
 * CLOSE_WAIT. Where kernel TLS works it is required here, so a late attach fails the test. */
Test(acceptor, a_client_half_closing_right_after_its_finished_is_answered)
{
    int reason = expected_reason();
    const uint16_t versions[] = {KTLA_TLS1_3, KTLA_TLS1_2};

    for (int i = 0; i < 2; i++) {
        struct echo_opts o = {.tickets = -1,
                              .ktls = reason == 0 ? KTLA_KTLS_REQUIRE : KTLA_KTLS_AUTO};
        struct echo_server *s = echo_start(&o);
        struct tc c;
        struct tc_opts co = {.version = versions[i], .cipher = -1};
        struct echo_conn conns[2];
        char buf[6] = {0};

        cr_assert_eq(tc_connect(&c, echo_port(s), &co, "hello", 6), 0);
        cr_assert_eq(shutdown(c.fd, SHUT_WR), 0);
        cr_assert_eq(tc_read_full(&c, buf, 6), 0, "TLS 1.%d: no answer after the half-close",
                     versions[i] == KTLA_TLS1_3 ? 3 : 2);
        cr_assert_str_eq(buf, "hello");
        cr_assert(echo_wait_ended(s, 1, 10000), "the connection did not end");
        cr_assert_eq(echo_failures(s, NULL), 0);
        check_modes(last_conn(s, conns, 2), reason);
        tc_close(&c, false);
        echo_stop(s);
    }
}

/*
 * A client's close_notify answered with ktla_conn_shutdown: ours goes out with our FIN, and with
 * both streams complete the shutdown ends at once, though the client's FIN has not come (RFC 8446
 * §6.1: nothing follows a close_notify). Holding the connection until that FIN or the 5 s linger
 * cost two more operations per connection, and a descriptor for as long as the client waits.
 */
Test(acceptor, a_shutdown_after_the_clients_close_notify_does_not_wait_for_its_fin)
{
    int reason = expected_reason();
    struct echo_opts o = {.tickets = -1, .shutdown_at_close_notify = true};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};
    struct echo_conn conns[2];
    char buf[16], why[128];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    echo_round(&c, 3000, 4);
    cr_assert_eq(tc_close_notify(&c), 0);
    cr_assert_eq(tc_read_to_close_notify(&c, buf, sizeof(buf)), 0, "no close_notify back: %s",
                 tc_end_text(&c, why, sizeof(why)));
    cr_assert(echo_wait_ended(s, 1, 2000), "the shutdown waited for the client's FIN");
    struct echo_conn *ec = last_conn(s, conns, 2);
    cr_assert(ec->shut);
    cr_assert_eq(ec->close_result, 0, "the shutdown ended with %s",
                 ktla_err_name(ec->close_result));
    check_modes(ec, reason);
    char end;
    cr_assert_eq(read(c.fd, &end, 1), 0, "no FIN after the close_notify");
    tc_close(&c, false);
    echo_stop(s);
}

Test(acceptor, a_shared_ring_routes_each_completion_to_its_owner)
{
    int reason = expected_reason();
    struct echo_opts o = {.tickets = -1, .shared_ring = true};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};
    struct echo_conn conns[4];
    int own, foreign;

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    echo_round(&c, 30000, 8);
    tc_close(&c, true);
    cr_assert(echo_wait_ended(s, 1, 5000));
    check_modes(last_conn(s, conns, 4), reason);
    usleep(20000);
    echo_app_completions(s, &own, &foreign);
    cr_assert_gt(own, 0, "the application's own timeouts never came back to it");
    cr_assert_eq(foreign, 0, "%d completions reached the application that were not its own",
                 foreign);
    echo_stop(s);
}

/* The end-of-life callbacks (ktla_conn_close_then, ktla_acceptor_free_then): each runs once,
 * from the ring and never inside the call, for connections closed at their end of stream and
 * with a receive in flight; then every descriptor is back. What lets an application free its
 * buffers and its ring without guessing how long ktla may still touch them. */
static void end_of_life(bool shared)
{
    int before = tu_fd_count();
    struct echo_opts o = {.tickets = -1, .shared_ring = shared};
    struct echo_server *s = echo_start(&o);
    struct tc c[3];
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};
    struct echo_life life;

    for (int i = 0; i < 3; i++) {
        cr_assert_eq(tc_connect(&c[i], echo_port(s), &co, NULL, 0), 0);
        echo_round(&c[i], 1000, (uint32_t)i);
    }
    tc_close(&c[0], true); /* ended by the server at the close_notify */
    cr_assert(echo_wait_ended(s, 1, 5000));
    /* The two others have a receive in flight when echo_stop closes them. */
    echo_stop_life(s, &life);
    tc_close(&c[1], false);
    tc_close(&c[2], false);
    cr_assert_eq(life.closed, 3, "%d connections closed, want 3", life.closed);
    cr_assert_eq(life.gone, 3, "%d of 3 end-of-life callbacks ran", life.gone);
    cr_assert_eq(life.gone_inside, 0, "%d callbacks ran inside ktla_conn_close_then",
                 life.gone_inside);
    cr_assert_eq(life.gone_result, 0, "%d callbacks had a result other than -ECANCELED",
                 life.gone_result);
    cr_assert(life.acc_gone, "the acceptor's end-of-life callback never ran");
    if (shared)
        cr_assert(!life.acc_gone_inside, "on a shared ring the acceptor's callback ran inside "
                                         "ktla_acceptor_free_then");
    cr_assert_eq(tu_fd_count(), before, "descriptors left open after every callback ran");
}

Test(acceptor, end_of_life_callbacks_on_the_acceptors_own_ring)
{
    end_of_life(false);
}

Test(acceptor, end_of_life_callbacks_on_a_shared_ring)
{
    end_of_life(true);
}

/* What a TLS 1.3 KeyUpdate meets here: OpenSSL in userspace, a kernel that rekeys (6.14+), or
 * one that cannot (6.1). */
enum rekey_here { REKEY_USERSPACE, REKEY_KERNEL, REKEY_NONE };

static enum rekey_here rekey_here(void)
{
    struct ktla_kernel_support ks;
    if (expected_reason() != 0)
        return REKEY_USERSPACE;
    ktla_kernel_probe(&ks);
    cr_assert(ks.rekey == 0 || ks.rekey == KTLA_ENOREKEY, "rekey probe: %s",
              ktla_err_name(ks.rekey));
    return ks.rekey == 0 ? REKEY_KERNEL : REKEY_NONE;
}

/* The client's KeyUpdate, then data; true if the echo of it came back right. */
static bool update_and_echo(struct tc *c, int type, uint32_t seed)
{
    uint8_t out[3000], in[3000];
    cr_assert_eq(SSL_key_update(c->ssl, type), 1);
    tu_pattern(out, sizeof(out), seed);
    if (tc_write(c, out, sizeof(out)) != 0 || tc_read_full(c, in, sizeof(in)) != 0)
        return false;
    return memcmp(in, out, sizeof(in)) == 0;
}

/*
 * A client's TLS 1.3 KeyUpdates, first without, then with a request for ours: userspace follows
 * them (OpenSSL does), a kernel from 6.14 follows them with new keys installed (the client checks
 * ours: it reads the echo under our new key), and 6.1 cannot, so there the connection must end
 * with the clear KTLA_ENOREKEY, never garbage or a later authentication failure.
 */
Test(acceptor, client_key_update_is_followed_or_ends_the_connection_clearly)
{
    enum rekey_here here = rekey_here();
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};
    struct echo_conn conns[4];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    echo_round(&c, 100, 1);
    if (here == REKEY_NONE) {
        cr_assert_not(update_and_echo(&c, SSL_KEY_UPDATE_NOT_REQUESTED, 2),
                      "data after an unfollowed rekey");
        cr_assert(echo_wait_ended(s, 1, 10000), "the server did not end the connection");
        struct echo_conn *ec = last_conn(s, conns, 4);
        cr_assert_eq(ec->last_result, KTLA_ENOREKEY, "ended with %s",
                     ktla_err_name((int)ec->last_result));
    } else {
        cr_assert(update_and_echo(&c, SSL_KEY_UPDATE_NOT_REQUESTED, 2), "after a KeyUpdate");
        cr_assert(update_and_echo(&c, SSL_KEY_UPDATE_REQUESTED, 3), "after a requested one");
        cr_assert(update_and_echo(&c, SSL_KEY_UPDATE_REQUESTED, 4), "after a second requested one");
        echo_round(&c, 200000, 5);
        tc_close(&c, true);
        cr_assert(echo_wait_ended(s, 1, 10000));
        struct echo_conn *ec = last_conn(s, conns, 4);
        cr_assert_eq(ec->last_result, 0, "ended with %s", ktla_err_name((int)ec->last_result));
        if (here == REKEY_KERNEL) {
            cr_assert_eq(ec->key_updates_rx, 3);
            cr_assert_eq(ec->key_updates_tx, 2);
        }
        echo_stop(s);
        return;
    }
    tc_close(&c, true);
    echo_stop(s);
}

/* `n` KeyUpdates of `type` back to back, then data; true if the echo of it came back right. */
static bool updates_and_echo(struct tc *c, unsigned n, int type, uint32_t seed)
{
    uint8_t out[300], in[300];
    for (unsigned i = 0; i < n; i++)
        cr_assert_eq(tc_key_update(c, type), 0);
    tu_pattern(out, sizeof(out), seed);
    if (tc_write(c, out, sizeof(out)) != 0 || tc_read_full(c, in, sizeof(in)) != 0)
        return false;
    return memcmp(in, out, sizeof(in)) == 0;
}

/*
 * How the server ended a connection whose KeyUpdates it stopped following: in kernel mode
 * (keys.h's limits) with KTLA_EREKEY_LIMIT after `followed` of them, where the kernel cannot
 * rekey with KTLA_ENOREKEY at the first.
 */
static void check_cut_off(struct echo_server *s, enum rekey_here here, int followed, int limit,
                          double secs)
{
    struct echo_conn conns[4];
    /* How the server ended it comes first: when fewer were followed, it says why. */
    cr_assert(echo_wait_ended(s, 1, 10000), "the server did not end the connection (%d "
                                            "followed in %.1f s)", followed, secs);
    struct echo_conn *ec = last_conn(s, conns, 4);
    cr_assert_eq(followed, here == REKEY_KERNEL ? limit : 0,
                 "%d followed in %.1f s; the server ended the connection with %s", followed, secs,
                 ktla_err_name((int)ec->last_result));
    cr_assert_eq(ec->last_result, here == REKEY_KERNEL ? KTLA_EREKEY_LIMIT : KTLA_ENOREKEY,
                 "ended with %s", ktla_err_name((int)ec->last_result));
}

/*
 * A client that updates its keys over and over, with data between, is cut off in kernel mode
 * after 128 in 10 s (userspace: OpenSSL follows every one, its own limits are its business).
 */
Test(acceptor, key_update_storm_is_cut_off)
{
    enum rekey_here here = rekey_here();
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};
    int followed = 0, rounds = 140;

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    /* The updates come after the hand-over: ones that ride with the Finished are the next tests'. */
    echo_round(&c, 100, 99);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < rounds; i++) {
        if (!updates_and_echo(&c, 1, i % 2 ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED,
                              (uint32_t)i))
            break;
        followed++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (here == REKEY_USERSPACE) {
        cr_assert_eq(followed, rounds);
        tc_close(&c, true);
    } else if (here == REKEY_KERNEL && followed > 128) {
        /* A machine so loaded that the updates took longer than the window is allowed more, and
         * that is all this may show. */
        cr_assert(secs >= 10.0, "%d KeyUpdates followed in %.1f s", followed, secs);
        tc_close(&c, true);
    } else {
        check_cut_off(s, here, followed, 128, secs);
        tc_close(&c, false);
    }
    echo_stop(s);
}

/* Counts the KeyUpdates the client reads (the server's), as its SSL's message callback. */
static void count_server_updates(int write_p, int version, int content_type, const void *buf,
                                 size_t len, SSL *ssl, void *arg)
{
    (void)version, (void)ssl;
    if (!write_p && content_type == SSL3_RT_HANDSHAKE && len >= 1 &&
        ((const uint8_t *)buf)[0] == SSL3_MT_KEY_UPDATE)
        ++*(unsigned *)arg;
}

/* The client's message callback (SSL_set_msg_callback). */
typedef void (*tc_msg_cb)(int, int, int, const void *, size_t, SSL *, void *);

/*
 * A userspace-mode server that keeps receiving while it sends a file of len bytes (pattern in
 * data), and a client whose small receive buffer has stalled that send: it asked for the file and
 * read nothing for 300 ms. cb(arg) watches what the client reads.
 */
static struct echo_server *stalled_send(uint8_t *data, size_t len, struct tc *c, tc_msg_cb cb,
                                        void *arg)
{
    struct echo_opts o = {.tickets = -1, .ktls = KTLA_KTLS_OFF, .recv_during_file = true};
    struct echo_server *s = server_with_file(data, len, 92, o);
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1, .rcvbuf = 65536};
    cr_assert_eq(tc_connect(c, echo_port(s), &co, NULL, 0), 0);
    SSL_set_msg_callback(c->ssl, cb);
    SSL_set_msg_callback_arg(c->ssl, arg);
    cr_assert_eq(tc_write(c, "FILE", 4), 0);
    usleep(300 * 1000); /* the sockets fill up: the server's send waits for room */
    return s;
}

/*
 * Userspace mode: a client's requested KeyUpdate, read while a long send waits for room. OpenSSL
 * (3.0) answers it with a KeyUpdate of ours in front of its next records: exactly one arrives, and
 * every byte of the file, before and after it, decrypts.
 */
Test(acceptor, userspace_key_update_answered_during_a_send_follows_it)
{
    const size_t len = 16 << 20;
    uint8_t *data = malloc(len), *in = malloc(len);
    struct tc c;
    struct echo_conn conns[4];
    unsigned answered = 0;

    cr_assert(data && in);
    struct echo_server *s = stalled_send(data, len, &c, count_server_updates, &answered);
    cr_assert_eq(tc_key_update(&c, SSL_KEY_UPDATE_REQUESTED), 0);
    cr_assert_eq(tc_write(&c, "k", 1), 0);
    usleep(100 * 1000); /* read and answered while that send still waits */
    cr_assert_eq(tc_read_full(&c, in, len), 0, "the file broke off");
    cr_assert(memcmp(in, data, len) == 0, "the file arrived different");
    cr_assert_eq(answered, 1, "%u KeyUpdates from the server", answered);
    tc_close(&c, true);
    cr_assert(echo_wait_ended(s, 1, 10000));
    struct echo_conn *ec = last_conn(s, conns, 4);
    cr_assert_eq(ec->info.tx_mode, KTLA_MODE_USERSPACE);
    cr_assert_eq(ec->read_during_file, 1);
    cr_assert_eq(ec->bytes_sent, len);
    cr_assert_eq(ec->last_result, 0, "ended with %s", ktla_err_name((int)ec->last_result));
    free(data);
    free(in);
    echo_stop(s);
}

/* The alert the client reads (level << 8 | description), as its SSL's message callback. */
static void note_alert(int write_p, int version, int content_type, const void *buf, size_t len,
                       SSL *ssl, void *arg)
{
    (void)version, (void)ssl;
    if (!write_p && content_type == SSL3_RT_ALERT && len >= 2)
        *(int *)arg = ((const uint8_t *)buf)[0] << 8 | ((const uint8_t *)buf)[1];
}

/*
 * Userspace mode: a record that fails authentication, read while a long send waits for room.
 * OpenSSL writes its fatal bad_record_mac alert then, into the write BIO while the kernel still
 * sends from c->enc: the alert must wait for that send and go out after it (RFC 8446 §5.2: the
 * connection ends with it), after bytes of the file that all decrypt.
 */
Test(acceptor, userspace_alert_written_during_a_send_follows_it)
{
    const size_t len = 16 << 20;
    uint8_t *data = malloc(len), *in = malloc(len);
    struct tc c;
    struct echo_conn conns[4];
    int alert = 0;
    char why[128];
    /* Application data, 32 bytes of it, under no key the server has. */
    uint8_t forged[5 + 32] = {0x17, 0x03, 0x03, 0x00, 32};

    cr_assert(data && in);
    struct echo_server *s = stalled_send(data, len, &c, note_alert, &alert);
    tu_pattern(forged + 5, 32, 5);
    cr_assert_eq(write(c.fd, forged, sizeof(forged)), (ssize_t)sizeof(forged));
    usleep(100 * 1000); /* read, and the alert written, while that send still waits */
    cr_assert_eq(tc_read_to_close_notify(&c, in, len), -1);
    cr_assert_eq(alert, 2 << 8 | SSL_AD_BAD_RECORD_MAC, "no fatal bad_record_mac: %s (alert %#x)",
                 tc_end_text(&c, why, sizeof(why)), alert);
    cr_assert(c.end_got > 0 && c.end_got < len, "%s", tc_end_text(&c, why, sizeof(why)));
    cr_assert(memcmp(in, data, c.end_got) == 0, "the file arrived different");
    tc_close(&c, false);
    cr_assert(echo_wait_ended(s, 1, 10000));
    struct echo_conn *ec = last_conn(s, conns, 4);
    cr_assert_eq(ec->info.tx_mode, KTLA_MODE_USERSPACE);
    cr_assert_lt(ec->last_result, 0);
    free(data);
    free(in);
    echo_stop(s);
}

/*
 * KeyUpdates back to back with no data between them: 32 in a row are followed and each request
 * answered with a KeyUpdate of ours before the data (tlsfuzzer sends 32 and expects 32 back), in
 * every mode; a 33rd ends the connection in kernel mode.
 */
Test(acceptor, key_updates_in_a_row_are_cut_off_after_32)
{
    enum rekey_here here = rekey_here();
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1};

    unsigned answered = 0;

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    echo_round(&c, 100, 98);
    SSL_set_msg_callback(c.ssl, count_server_updates);
    SSL_set_msg_callback_arg(c.ssl, &answered);
    bool ok = updates_and_echo(&c, 32, SSL_KEY_UPDATE_REQUESTED, 1);
    cr_assert_eq(ok, here != REKEY_NONE, "32 KeyUpdates in a row: %s",
                 ok ? "followed" : "not followed");
    if (ok)
        cr_assert_eq(answered, 32, "32 requests answered with %u KeyUpdates", answered);
    if (here == REKEY_NONE) {
        check_cut_off(s, here, 0, 0, 0);
        tc_close(&c, false);
        echo_stop(s);
        return;
    }
    /* Data came between: the count starts again, and 33 in a row are one too many. */
    ok = updates_and_echo(&c, 33, SSL_KEY_UPDATE_NOT_REQUESTED, 2);
    if (here == REKEY_USERSPACE) {
        cr_assert(ok, "userspace: OpenSSL follows them");
        tc_close(&c, true);
    } else {
        cr_assert_not(ok, "33 KeyUpdates in a row were followed");
        check_cut_off(s, here, 32, 32, 0);
        /* Every request answered with a KeyUpdate of ours (tlsfuzzer expects 32 back). */
        struct echo_conn conns[4];
        struct echo_conn *ec = last_conn(s, conns, 4);
        cr_assert(ec->key_updates_rx == 64 && ec->key_updates_tx == 32,
                  "KeyUpdates followed: %u received (64 expected), %u sent (32 expected)",
                  ec->key_updates_rx, ec->key_updates_tx);
        tc_close(&c, false);
    }
    echo_stop(s);
}

/*
 * KeyUpdates in the same write as the client's Finished (RFC 8446 lets a client update right
 * away; tlsfuzzer does): they reach the server before the kernel has keys, OpenSSL follows them
 * while ktla reads up to the record boundary, and the kernel must start from the generation
 * OpenSSL reached, on every kernel (the first keys installed are already the new ones). Both ask
 * for ours, back to back: the client reads the echo under our second new key. The next KeyUpdate
 * is then the kernel's business.
 */
Test(acceptor, key_updates_with_the_finished_are_followed)
{
    enum rekey_here here = rekey_here();
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3,
                         .cipher = -1,
                         .first_updates = 2,
                         .first_update_type = SSL_KEY_UPDATE_REQUESTED};
    const char req[] = "GET / HTTP/1.1\r\n\r\n";
    char back[sizeof(req)];
    struct echo_conn conns[4];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, req, sizeof(req)), 0);
    cr_assert_eq(tc_read_full(&c, back, sizeof(back)), 0, "the request after the updates was lost");
    cr_assert(memcmp(back, req, sizeof(req)) == 0);
    echo_round(&c, 40000, 17); /* both directions, under the updated keys */
    bool third = updates_and_echo(&c, 1, SSL_KEY_UPDATE_REQUESTED, 18);
    cr_assert_eq(third, here != REKEY_NONE, "a KeyUpdate after the hand-over: %s",
                 third ? "followed" : "not followed");
    tc_close(&c, third);
    cr_assert(echo_wait_ended(s, 1, 10000), "the server did not end the connection");
    struct echo_conn *ec = last_conn(s, conns, 4);
    cr_assert_eq(ec->info.early_plaintext, sizeof(req),
                 "the request should have come with the handshake (%zu bytes)",
                 ec->info.early_plaintext);
    cr_assert_eq(ec->last_result, here == REKEY_NONE ? KTLA_ENOREKEY : 0, "ended with %s",
                 ktla_err_name((int)ec->last_result));
    if (here != REKEY_USERSPACE) {
        unsigned want = here == REKEY_KERNEL ? 3 : 2;
        cr_assert(ec->key_updates_rx == want && ec->key_updates_tx == want,
                  "KeyUpdates followed: %u received, %u sent (%u each expected)",
                  ec->key_updates_rx, ec->key_updates_tx, want);
    }
    echo_stop(s);
}

/* The limit holds for KeyUpdates that ride with the Finished too: 32 in a row are followed, a
 * 33rd ends the handshake with KTLA_EREKEY_LIMIT, in userspace as well (ktla follows these). */
Test(acceptor, key_updates_in_a_row_with_the_finished_are_cut_off_after_32)
{
    const char req[] = "ping";
    for (unsigned n = 32; n <= 33; n++) {
        struct echo_opts o = {.tickets = -1};
        struct echo_server *s = echo_start(&o);
        struct tc c;
        struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = -1, .first_updates = n};
        char back[sizeof(req)];
        int code = 0;

        cr_assert_eq(tc_connect(&c, echo_port(s), &co, req, sizeof(req)), 0);
        int got = tc_read_full(&c, back, sizeof(back));
        if (n == 32) {
            cr_assert_eq(got, 0, "32 KeyUpdates with the Finished were not followed");
            cr_assert_eq(echo_failures(s, &code), 0, "32 KeyUpdates failed the handshake: %s",
                         ktla_err_name(code));
        } else {
            cr_assert_neq(got, 0, "33 KeyUpdates with the Finished were followed");
            cr_assert(echo_wait_failures(s, 1, 10000), "the handshake did not fail");
            echo_failures(s, &code);
            cr_assert_eq(code, KTLA_EREKEY_LIMIT, "failed with %s", ktla_err_name(code));
        }
        tc_close(&c, false);
        echo_stop(s);
    }
}

/*
 * A client that sends its request, its close_notify and a FIN, and reads only later: the server
 * answers with a file and ends the connection without reading any further. Closing the socket
 * with the client's close_notify unread would make the kernel reset the connection and drop the
 * file's tail still queued on both sides (issue 16); ktla_conn_shutdown drops that input and
 * waits for the client's own close instead, so every byte arrives, then the server's
 * close_notify. (With ECHO_END_CLOSE instead, a plain ktla_conn_close, this loses megabytes.)
 */
static void half_closed_client(struct tu_variant *v, enum ktla_file_path path)
{
    /* When the send ends with the queue full, our close_notify waits for room after the
     * client's FIN was read, and must still go out (kernel_conn's unit tests force that case). */
    size_t len = 4 << 20;
    uint8_t *data = malloc(len), *in = malloc(len + 1);
    cr_assert(data && in);
    struct echo_opts o = {.tickets = -1, .file_path = path, .file_end = ECHO_END_SHUTDOWN};
    struct echo_server *s = server_with_file(data, len, 91, o);
    struct tc c;
    struct tc_opts co = {.version = v->version, .cipher = (int)v->cipher};
    struct echo_conn conns[4];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    cr_assert_eq(tc_write(&c, "FILE", 4), 0);
    usleep(50 * 1000); /* the request is read, the answer under way: then the client closes */
    cr_assert_eq(tc_half_close(&c), 0);
    usleep(300 * 1000); /* the server's socket fills up and its send waits for room */
    ssize_t got = tc_read_to_close_notify(&c, in, len + 1);
    char how[128];
    if (got < 0) { /* how the server's side ended helps tell a reset from a lost close_notify */
        echo_wait_ended(s, 1, 10000);
        int n = echo_conns(s, conns, 4);
        cr_assert_fail("%s: %s (of %zu); the server: %s, %s, %llu bytes sent", tu_variant_name(v),
                       tc_end_text(&c, how, sizeof(how)), len,
                       n > 0 && conns[n - 1].ended ? "ended" : "not ended",
                       n > 0 ? ktla_err_name(conns[n - 1].close_result) : "-",
                       n > 0 ? (unsigned long long)conns[n - 1].bytes_sent : 0ull);
    }
    cr_assert_eq(got, (ssize_t)len, "%s: %zd of %zu bytes, then close_notify", tu_variant_name(v),
                 got, len);
    cr_assert(memcmp(in, data, len) == 0, "%s: the file arrived different", tu_variant_name(v));
    tc_close(&c, false); /* the client closes: the server's linger ends */
    cr_assert(echo_wait_ended(s, 1, 10000), "the server did not end the connection");
    struct echo_conn *ec = last_conn(s, conns, 4);
    check_modes(ec, expected_reason());
    cr_assert(ec->shut);
    cr_assert_eq(ec->close_result, 0, "shutdown ended with %s", ktla_err_name(ec->close_result));
    cr_assert_eq(ec->bytes_sent, (uint64_t)len);
    free(data);
    free(in);
    echo_stop(s);
}

ParameterizedTestParameters(shutdown, a_half_closed_client_still_gets_the_whole_file)
{
    return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);
}

ParameterizedTest(struct tu_variant *v, shutdown, a_half_closed_client_still_gets_the_whole_file)
{
    half_closed_client(v, KTLA_FILE_SENDFILE);
}

Test(shutdown, a_half_closed_client_still_gets_the_whole_file_spliced)
{
    struct tu_variant v = {KTLA_TLS1_3, KTLA_CIPHER_AES_128_GCM};
    half_closed_client(&v, KTLA_FILE_SPLICE);
}

/* A client that neither reads nor closes: the shutdown gives up after its linger time, and the
 * connection is gone (its descriptor too) with -ETIMEDOUT. */
Test(shutdown, a_silent_client_is_cut_after_the_linger_time)
{
    size_t len = 16 << 20; /* more than the socket buffers take: our close_notify waits */
    uint8_t *data = malloc(len);
    cr_assert(data);
    char name[] = "/tmp/ktla-accept-shut-XXXXXX";
    int fd = mkstemp(name);
    cr_assert(fd >= 0);
    tu_pattern(data, len, 5);
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
    free(data);
    struct echo_opts o = {.tickets = -1, .file = name, .file_end = ECHO_END_SHUTDOWN};
    struct echo_server *s = echo_start(&o);
    unlink(name);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_2, .cipher = KTLA_CIPHER_AES_128_GCM};
    struct echo_conn conns[4];
    int before = tu_fd_count();

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    cr_assert_eq(tc_write(&c, "FILE", 4), 0);
    /* Most of the file, then silence with the socket open: the rest fits the socket buffers,
     * so the send completes and the shutdown waits for a close that never comes. */
    uint8_t *in = malloc(len);
    cr_assert(in);
    cr_assert_eq(tc_read_full(&c, in, len - (1 << 20)), 0);
    free(in);
    cr_assert(echo_wait_ended(s, 1, 15000), "the shutdown did not give up");
    struct echo_conn *ec = last_conn(s, conns, 4);
    cr_assert(ec->shut);
    cr_assert_eq(ec->close_result, -ETIMEDOUT, "shutdown ended with %s",
                 ktla_err_name(ec->close_result));
    tc_close(&c, false);
    cr_assert_eq(tu_fd_count(), before);
    echo_stop(s);
}

/* Everything the server sends until it ends the connection; false if it reset it. */
static bool read_to_end(int fd, char *buf, size_t cap, size_t *len)
{
    *len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + *len, cap - *len);
        if (n == 0)
            return true;
        if (n < 0)
            return false;
        *len += (size_t)n;
        cr_assert(*len < cap, "more than %zu bytes", cap);
    }
}

/* A client that speaks plain HTTP to the TLS port gets the application's answer, then a clean
 * end (not a reset); other bytes that are not TLS still get nothing. */
Test(acceptor, plain_http_gets_the_plain_reply)
{
    static const char reply[] = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nuse https\n";
    struct echo_opts o = {.tickets = -1, .plain_reply = reply};
    struct echo_server *s = echo_start(&o);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(echo_port(s)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char buf[512];
    size_t len;
    static const char *requests[] = {"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                     "POST /form HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc"};
    for (int i = 0; i < 2; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        cr_assert_eq(write(fd, requests[i], strlen(requests[i])), (ssize_t)strlen(requests[i]));
        cr_assert(read_to_end(fd, buf, sizeof(buf), &len), "request %d: reset", i);
        cr_assert(len == strlen(reply) && memcmp(buf, reply, len) == 0,
                  "request %d: got %zu bytes: %.*s", i, len, (int)len, buf);
        close(fd);
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(write(fd, "\x01\x02garbage", 9), 9);
    read_to_end(fd, buf, sizeof(buf), &len);
    cr_assert_eq(len, 0, "garbage got %zu bytes", len);
    close(fd);
    cr_assert(echo_wait_failures(s, 3, 10000));
    echo_stop(s);
}

/*
 * A file outside the page cache: in kernel mode ktla_conn_sendfile sends its ranges through the
 * io_uring splice path (the disk reads then block an io-wq thread, not the ring's) instead of
 * sendfile(2), and the file arrives whole. KTLA_COLD_DIR names a directory whose files are never
 * cached (the guest's writable 9p share, mounted without a cache: scripts/guest-suites.sh);
 * elsewhere the file's pages are dropped with POSIX_FADV_DONTNEED, which a tmpfs ignores. In the
 * guest, kernel mode and a cold directory are certain, and the cold path must have been taken.
 */
Test(acceptor, a_file_outside_the_page_cache_arrives_whole)
{
    const char *dir = getenv("KTLA_COLD_DIR");
    char name[512];
    size_t len = (3 << 20) + 5;
    uint8_t *data = malloc(len), *in = malloc(len);
    cr_assert(data && in);
    snprintf(name, sizeof(name), "%s/ktla-cold-XXXXXX", dir ? dir : "/tmp");
    int fd = mkstemp(name);
    cr_assert(fd >= 0, "mkstemp in %s: %s", name, strerror(errno));
    tu_pattern(data, len, 42);
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    struct echo_opts o = {.tickets = -1, .file = name};
    struct echo_server *s = echo_start(&o);
    unlink(name);
    struct tc c;
    struct tc_opts co = {.version = KTLA_TLS1_3, .cipher = KTLA_CIPHER_AES_128_GCM};
    struct echo_conn conns[4];

    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
    cr_assert_eq(tc_write(&c, "FILE", 4), 0);
    cr_assert_eq(tc_read_full(&c, in, len), 0);
    cr_assert(memcmp(in, data, len) == 0, "the file arrived different");
    tc_close(&c, true);
    cr_assert(echo_wait_ended(s, 1, 10000));
    struct echo_conn *ec = last_conn(s, conns, 4);
    check_modes(ec, expected_reason());
    if (ec->info.tx_mode == KTLA_MODE_KERNEL && dir)
        cr_assert(ec->cold_sends > 0, "a file in %s went out with sendfile(2) alone", dir);
    if (ec->info.tx_mode != KTLA_MODE_KERNEL)
        cr_assert_eq(ec->cold_sends, 0);
    free(data);
    free(in);
    echo_stop(s);
}

/* Records of application data the client received, counted from their headers. */
static void count_records(int write_p, int version, int content_type, const void *buf, size_t len,
                          SSL *ssl, void *arg)
{
    (void)version;
    (void)ssl;
    if (!write_p && content_type == SSL3_RT_HEADER && len >= 5 &&
        ((const uint8_t *)buf)[0] == SSL3_RT_APPLICATION_DATA)
        (*(int *)arg)++;
}

/*
 * ktla_conn_sendfile_head: a head and a small file arrive as one record (kernel mode: the head
 * sent with MSG_MORE, the file spliced into the same record; userspace: encrypted together), and
 * a large one whole, the callback counting the head too. Without the head in the same record,
 * a small response costs two encryptions and two writes.
 */
ParameterizedTestParameters(acceptor, sendfile_head_shares_the_first_record)
{
    return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);
}

ParameterizedTest(struct tu_variant *v, acceptor, sendfile_head_shares_the_first_record)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    for (int big = 0; big < 2; big++) {
        size_t len = big ? (1 << 20) + 7 : 1000, hl = strlen(head);
        uint8_t *data = malloc(len), *in = malloc(hl + len);
        cr_assert(data && in);
        char name[] = "/tmp/ktla-accept-head-XXXXXX";
        int fd = mkstemp(name);
        cr_assert(fd >= 0);
        tu_pattern(data, len, 17);
        cr_assert_eq(write(fd, data, len), (ssize_t)len);
        close(fd);
        /* No TLS 1.3 tickets: they too arrive as application-data records. */
        struct echo_opts o = {.tickets = 0, .file = name, .file_head = head};
        struct echo_server *s = echo_start(&o);
        unlink(name);
        struct tc c;
        struct tc_opts co = {.version = v->version, .cipher = (int)v->cipher};
        struct echo_conn conns[4];
        int records = 0;

        cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0);
        SSL_set_msg_callback(c.ssl, count_records);
        SSL_set_msg_callback_arg(c.ssl, &records);
        cr_assert_eq(tc_write(&c, "FILE", 4), 0);
        cr_assert_eq(tc_read_full(&c, in, hl + len), 0);
        cr_assert(memcmp(in, head, hl) == 0 && memcmp(in + hl, data, len) == 0,
                  "%s: the head and file arrived different", tu_variant_name(v));
        if (!big)
            cr_assert_eq(records, 1, "%s: %d records for a head and 1000 bytes",
                         tu_variant_name(v), records);
        tc_close(&c, true);
        cr_assert(echo_wait_ended(s, 1, 10000));
        struct echo_conn *ec = last_conn(s, conns, 4);
        check_modes(ec, expected_reason());
        cr_assert_eq(ec->bytes_sent, (uint64_t)(hl + len));
        free(data);
        free(in);
        echo_stop(s);
    }
}
