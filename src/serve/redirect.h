/* ktla-serve's plain-HTTP listener (--redirect-http): every request gets a 301 to https. */
#ifndef KTLA_SERVE_REDIRECT_H
#define KTLA_SERVE_REDIRECT_H

#include <stddef.h>

#define REDIRECT_HEAD_MAX 8192 /* a request head longer than this gets 431 */
#define REDIRECT_CONNS_MAX 256 /* beyond it, connections wait in the listen backlog */
#define REDIRECT_TIMEOUT_S 10  /* from accept to the answer sent; then the connection closes */

struct redirect;

/*
 * Starts a thread that answers on listen_fd (bound and listening; the thread owns it from now
 * on, even on failure): one request per connection, a 301 to https://HOST[:https_port]/path
 * (HOST from the request, the port left out when it is 443), a 400 for anything else, then
 * the connection closes. 0 and *out, or -errno.
 */
int redirect_start(int listen_fd, unsigned https_port, struct redirect **out);

/* Stops the thread, closes its listening socket and connections, frees r. NULL: a no-op. */
void redirect_stop(struct redirect *r);

/*
 * The answer to one request head (len bytes, up to and including its blank line): the whole
 * response, at most cap bytes, into out. Returns its length and the status in *status.
 */
size_t redirect_answer(const char *head, size_t len, unsigned https_port, char *out, size_t cap,
                       int *status);

#endif
