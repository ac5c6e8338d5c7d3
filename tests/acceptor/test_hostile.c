/*
 * Hostile and broken clients: each costs only its own connection. After each, a well-behaved
 * client must still be served, and the process holds no more descriptors than before.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <unistd.h>

#include "echo.h"
#include "testutil.h"

TestSuite(hostile, .timeout = 120);

static int raw_connect(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons(port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* Descriptors are closed when the server has reaped a connection, a moment after it ended. */
static void fd_count_returns_to(int want)
{
    int now = tu_fd_count();
    for (int i = 0; i < 300 && now != want; i++) {
        usleep(10000);
        now = tu_fd_count();
    }
    cr_assert_eq(now, want, "descriptors leaked: %d before, %d after", want, now);
}

static void good_client_is_served(struct echo_server *s)
{
    struct tc c;
    struct tc_opts co = {.cipher = -1};
    char buf[6];
    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0, "a good client was refused");
    cr_assert_eq(tc_write(&c, "hello", 6), 0);
    cr_assert_eq(tc_read_full(&c, buf, 6), 0);
    cr_assert_str_eq(buf, "hello");
    tc_close(&c, true);
}

static void expect_failure(struct echo_server *s, int n, int code)
{
    int last;
    cr_assert(echo_wait_failures(s, n, 20000), "the bad connection was not dropped");
    echo_failures(s, &last);
    if (code)
        cr_assert_eq(last, code, "dropped with %s, expected %s", ktla_err_name(last),
                     ktla_err_name(code));
}

Test(hostile, garbage_bytes_cost_one_connection)
{
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    int fds = tu_fd_count();
    int fd = raw_connect(echo_port(s));
    uint8_t junk[300];
    tu_pattern(junk, sizeof(junk), 3);
    junk[0] = 0x16; /* looks like a handshake record, then is not */
    cr_assert_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    expect_failure(s, 1, 0);
    close(fd);
    good_client_is_served(s);
    cr_assert(echo_wait_ended(s, 1, 5000));
    fd_count_returns_to(fds);
    echo_stop(s);
}

Test(hostile, plain_http_to_the_tls_port_is_refused)
{
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    int fd = raw_connect(echo_port(s));
    const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(write(fd, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
    expect_failure(s, 1, KTLA_ENOTTLS);
    close(fd);
    good_client_is_served(s);
    echo_stop(s);
}

Test(hostile, truncated_client_hello_then_close)
{
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    int fd = raw_connect(echo_port(s));
    const uint8_t partial[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03};
    cr_assert_eq(write(fd, partial, sizeof(partial)), (ssize_t)sizeof(partial));
    close(fd);
    expect_failure(s, 1, KTLA_ETRUNCATED);
    good_client_is_served(s);
    echo_stop(s);
}

Test(hostile, oversized_record_header_is_refused_without_buffering)
{
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    int fd = raw_connect(echo_port(s));
    const uint8_t hdr[] = {0x16, 0x03, 0x01, 0xff, 0xff};
    cr_assert_eq(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    expect_failure(s, 1, KTLA_ERECORD_OVERFLOW);
    close(fd);
    good_client_is_served(s);
    echo_stop(s);
}

Test(hostile, silent_client_hits_the_deadline)
{
    /* Long enough for the good client's handshake under emulation (the guest runs on TCG). */
    struct echo_opts o = {.tickets = -1, .timeout_ms = 2000};
    struct echo_server *s = echo_start(&o);
    int fd = raw_connect(echo_port(s));
    good_client_is_served(s); /* served while the silent one waits */
    expect_failure(s, 1, KTLA_ETIMEDOUT);
    /* The server thread publishes its counters after each turn of its loop. */
    struct ktla_acceptor_stats st = {0};
    for (int i = 0; i < 200 && st.timeouts == 0; i++) {
        usleep(10000);
        echo_stats(s, &st);
    }
    cr_assert_eq(st.timeouts, 1);
    close(fd);
    echo_stop(s);
}

Test(hostile, a_thousand_connect_and_close_leave_nothing_behind)
{
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    int fds = tu_fd_count();
    for (int i = 0; i < 1000; i++)
        close(raw_connect(echo_port(s)));
    expect_failure(s, 1000, KTLA_ETRUNCATED);
    good_client_is_served(s);
    cr_assert(echo_wait_ended(s, 1, 5000));
    struct ktla_acceptor_stats st = {.in_flight = 1};
    for (int i = 0; i < 200 && st.in_flight; i++) {
        usleep(10000);
        echo_stats(s, &st);
    }
    cr_assert_eq(st.in_flight, 0);
    fd_count_returns_to(fds);
    echo_stop(s);
}

Test(hostile, handshake_cap_makes_new_clients_wait_not_fail)
{
    struct echo_opts o = {.tickets = -1, .timeout_ms = 2000, .max_handshakes = 2};
    struct echo_server *s = echo_start(&o);
    int a = raw_connect(echo_port(s)), b = raw_connect(echo_port(s));
    struct ktla_acceptor_stats st = {0};
    for (int i = 0; i < 500 && st.in_flight < 2; i++) {
        usleep(10000);
        echo_stats(s, &st);
    }
    cr_assert_eq(st.in_flight, 2, "the two silent clients should hold both slots");
    /* This one waits in the backlog until a slot frees (a silent client times out), then
     * completes: the cap delays, it does not refuse. */
    good_client_is_served(s);
    int code;
    cr_assert_geq(echo_failures(s, &code), 1);
    cr_assert_eq(code, KTLA_ETIMEDOUT);
    expect_failure(s, 2, KTLA_ETIMEDOUT);
    close(a);
    close(b);
    echo_stop(s);
}

/* A burst larger than the cap: the connections over it stay in the listen backlog (the test's
 * is 64) rather than being accepted and left waiting for a slot in the acceptor. */
Test(hostile, a_burst_over_the_handshake_cap_is_not_accepted)
{
    enum { CAP = 4, BURST = 48 };
    struct echo_opts o = {.tickets = -1, .timeout_ms = 5000, .max_handshakes = CAP};
    struct echo_server *s = echo_start(&o);
    int fd[BURST];
    for (int i = 0; i < BURST; i++)
        fd[i] = raw_connect(echo_port(s));
    struct ktla_acceptor_stats st = {0};
    for (int i = 0; i < 500 && st.in_flight < CAP; i++) {
        usleep(10000);
        echo_stats(s, &st);
    }
    usleep(300000); /* time for any accept past the cap to have completed */
    echo_stats(s, &st);
    cr_assert_eq(st.in_flight, CAP);
    cr_assert_eq(st.accepted, CAP, "%llu connections accepted for a cap of %d",
                 (unsigned long long)st.accepted, CAP);
    for (int i = 0; i < BURST; i++)
        close(fd[i]);
    /* Each closed client is then accepted in turn and ends at once, not at its deadline. */
    expect_failure(s, BURST, KTLA_ETRUNCATED);
    good_client_is_served(s);
    echo_stats(s, &st);
    cr_assert_eq(st.accepted, BURST + 1);
    echo_stop(s);
}

/* Out of descriptors, accept fails with EMFILE: the acceptor pauses (no spinning, no crash) and
 * takes the waiting connections on once descriptors are free again. */
Test(hostile, out_of_descriptors_pauses_accepting_until_there_are_some)
{
    enum { CLIENTS = 8, FREED = 4 };
    struct rlimit old, low;
    int cl[CLIENTS], filler[512], nfill = 0;

    /* Lowered first: an io_uring accept takes the limit when it is submitted. */
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = (rlim_t)tu_fd_count() + 96;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    struct echo_opts o = {.tickets = -1, .timeout_ms = 3000};
    struct echo_server *s = echo_start(&o);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons(echo_port(s))};

    /* The server settled (its descriptors opened, a connection served and closed) before the
     * last free descriptors are taken. */
    good_client_is_served(s);
    cr_assert(echo_wait_ended(s, 1, 5000));
    usleep(100000);
    for (int i = 0; i < CLIENTS; i++)
        cr_assert((cl[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0);
    /* Every descriptor below the limit taken, gaps included. */
    int f;
    while (nfill < 512 && (f = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
        filler[nfill++] = f;
    cr_assert_eq(errno, EMFILE, "the limit was not reached with %d descriptors", nfill);
    for (int i = 0; i < CLIENTS; i++)
        cr_assert_eq(connect(cl[i], (struct sockaddr *)&a, sizeof(a)), 0);
    usleep(300000);
    struct ktla_acceptor_stats st;
    echo_stats(s, &st);
    cr_assert_eq(st.accepted, 1, "accepted %llu with no descriptor free",
                 (unsigned long long)st.accepted - 1);
    for (int i = 0; i < FREED; i++)
        close(filler[--nfill]);
    for (int i = 0; i < 100 && st.accepted < 1 + FREED; i++) {
        usleep(20000);
        echo_stats(s, &st);
    }
    cr_assert_eq(st.accepted, 1 + FREED, "%llu accepted once %d descriptors were free",
                 (unsigned long long)st.accepted - 1, FREED);
    while (nfill)
        close(filler[--nfill]);
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
    for (int i = 0; i < CLIENTS; i++)
        close(cl[i]);
    expect_failure(s, CLIENTS, KTLA_ETRUNCATED);
    good_client_is_served(s);
    echo_stop(s);
}

/* A ClientHello of 20 KB spans two records: legal, and served. */
Test(hostile, a_client_hello_larger_than_a_record_is_served)
{
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    struct tc c;
    struct tc_opts co = {.cipher = -1, .big_hello = 20000};
    char buf[3];
    cr_assert_eq(tc_connect(&c, echo_port(s), &co, NULL, 0), 0, "the large hello was refused");
    cr_assert_eq(tc_write(&c, "ok", 3), 0);
    cr_assert_eq(tc_read_full(&c, buf, 3), 0);
    cr_assert_str_eq(buf, "ok");
    tc_close(&c, true);
    echo_stop(s);
}

/* An SSLv2-style hello (high bit set in the first byte) is not TLS. */
Test(hostile, sslv2_style_hello_is_refused)
{
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    int fd = raw_connect(echo_port(s));
    const uint8_t v2[] = {0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10};
    cr_assert_eq(write(fd, v2, sizeof(v2)), (ssize_t)sizeof(v2));
    expect_failure(s, 1, KTLA_ENOTTLS);
    close(fd);
    good_client_is_served(s);
    echo_stop(s);
}

/* A client that half-closes after its ClientHello still gets no more than its own failure. */
Test(hostile, half_closed_client_costs_only_itself)
{
    struct echo_opts o = {.tickets = -1};
    struct echo_server *s = echo_start(&o);
    int fd = raw_connect(echo_port(s));
    const uint8_t partial[] = {0x16, 0x03, 0x01, 0x00, 0x30, 0x01};
    cr_assert_eq(write(fd, partial, sizeof(partial)), (ssize_t)sizeof(partial));
    shutdown(fd, SHUT_WR);
    expect_failure(s, 1, KTLA_ETRUNCATED);
    good_client_is_served(s);
    close(fd);
    echo_stop(s);
}
