/*
 * A latency histogram with log-linear buckets (the HdrHistogram layout): exact below 256 ns,
 * then 128 linear sub-buckets per power of two, so every recorded value is known to within 0.8%
 * whatever its magnitude, in a fixed 59 KiB with no allocation while recording.
 */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 7
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) << HIST_SUB_BITS)

struct hist {
    uint64_t count;
    uint64_t max;
    uint64_t buckets[HIST_BUCKETS];
};

/* Records one value (nanoseconds, or any unit: the histogram does not care). */
void hist_record(struct hist *h, uint64_t value);

/* Adds every count of src into dst (threads keep their own and are merged at the end). */
void hist_merge(struct hist *dst, const struct hist *src);

/* The value at quantile q (0 < q <= 1): the middle of the bucket holding the ceil(q * count)-th
 * smallest value, capped at the largest recorded; 0 for an empty histogram. */
uint64_t hist_quantile(const struct hist *h, double q);

#endif
