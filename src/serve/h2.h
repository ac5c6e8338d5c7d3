/* ktla-serve's HTTP/2 connections (h2.c), for worker.c. */
#ifndef KTLA_SERVE_H2_H
#define KTLA_SERVE_H2_H

#include <stdbool.h>
#include <stdint.h>

#include <ktla.h>

struct worker;
struct h2conn;

/* The ALPN list ktla-serve offers, in its order of preference. */
extern const char *const h2_alpn[2];

/* Serves kc (whose ALPN is "h2") with HTTP/2 from now on; refuse: over --max-connections, it
 * only gets a GOAWAY. 0, or -ENOMEM (then the caller closes kc). */
int h2_start(struct worker *w, struct ktla_conn *kc, bool refuse);

/* Once a second: timeouts (a connection idle between requests ends with GOAWAY, one whose
 * streams made no progress is cut), the drain's second GOAWAY and its deadline. */
void h2_tick(struct worker *w, uint64_t now_ns);

/* The drain begins: GOAWAY to every connection; the streams in flight finish. */
void h2_drain(struct worker *w);

/* Everything ends now (a second SIGTERM). */
void h2_abort_all(struct worker *w);

#endif
