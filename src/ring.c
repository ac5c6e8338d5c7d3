/*
 * io_uring plumbing: submission entries and completion routing. ktla may share a ring with the
 * application, so its completions are told apart by bit 0 of user_data (see ktla_dispatch).
 */
#include <time.h>

#include "internal.h"

struct io_uring_sqe *ktla_ring_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe && io_uring_submit(ring) >= 0)
        sqe = io_uring_get_sqe(ring);
    return sqe;
}

uint64_t ktla_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int ktla_dispatch(struct io_uring_cqe *cqe)
{
    uint64_t data = io_uring_cqe_get_data64(cqe);

    if (!(data & 1))
        return 0;
    struct ktla_op *op = (struct ktla_op *)(uintptr_t)(data & ~(uint64_t)1);
    switch (op->kind) {
    case KTLA_OP_ACCEPT:
    case KTLA_OP_TIMER:
    case KTLA_OP_CANCEL:
    case KTLA_OP_ACCEPT_RETRY:
    case KTLA_OP_NOP:
    case KTLA_OP_HS_RECV:
    case KTLA_OP_HS_SEND:
        ktla_acceptor_complete(op, cqe);
        break;
    default:
        ktla_conn_complete(op, cqe);
        break;
    }
    return 1;
}

/* Long enough that a turn of cheap completions keeps its one submission. */
#define SUBMIT_LATE_NS 50000

void ktla_submit_if_late(struct io_uring *ring, uint64_t *mark_ns)
{
    uint64_t now = ktla_now_ns();

    if (!*mark_ns)
        *mark_ns = now; /* the turn's first completion */
    if (!io_uring_sq_ready(ring)) {
        *mark_ns = now; /* whatever is queued next waits from now */
        return;
    }
    if (now - *mark_ns < SUBMIT_LATE_NS)
        return;
    io_uring_submit(ring);
    *mark_ns = now;
}
