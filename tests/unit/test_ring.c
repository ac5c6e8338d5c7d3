/* ktla_submit_if_late: holds what a short turn queues, submits once the turn has run long. */
#include <criterion/criterion.h>
#include <liburing.h>
#include <time.h>

#include "ktla.h"

static void queue_nop(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    cr_assert(sqe);
    io_uring_prep_nop(sqe);
}

static void spin_us(long us)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do
        clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

Test(ring, submit_if_late_waits_for_a_long_turn)
{
    struct io_uring ring;
    uint64_t mark = 0;

    cr_assert_eq(io_uring_queue_init(8, &ring, 0), 0);
    ktla_submit_if_late(&ring, &mark); /* the turn starts; nothing queued */
    cr_assert_neq(mark, 0);
    queue_nop(&ring);
    ktla_submit_if_late(&ring, &mark);
    cr_assert_eq(io_uring_sq_ready(&ring), 1, "submitted although the turn had just begun");
    spin_us(200);
    ktla_submit_if_late(&ring, &mark);
    cr_assert_eq(io_uring_sq_ready(&ring), 0, "still held after 200 us of turn");
    struct io_uring_cqe *cqe;
    cr_assert_eq(io_uring_wait_cqe(&ring, &cqe), 0);
    io_uring_cqe_seen(&ring, cqe);

    /* An empty queue restarts the clock: what is queued next waits from then. */
    spin_us(200);
    ktla_submit_if_late(&ring, &mark);
    queue_nop(&ring);
    ktla_submit_if_late(&ring, &mark);
    cr_assert_eq(io_uring_sq_ready(&ring), 1, "an entry queued just now went at once");
    io_uring_queue_exit(&ring);
}
