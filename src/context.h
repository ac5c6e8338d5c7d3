/*
 * The TLS context as the rest of the library sees it: where a handshake gets its SSL_CTX.
 * Internal to libktla; the public half (ktla_ctx_new and friends) is in ktla.h.
 */
#ifndef KTLA_CONTEXT_H
#define KTLA_CONTEXT_H

#include <openssl/ssl.h>

#include "ktla.h"

/*
 * A new reference on the current SSL_CTX: the one for the default certificate, whose servername
 * callback switches a handshake to another certificate's SSL_CTX by SNI (SSL_set_SSL_CTX), after
 * which SSL_get_servername() on the SSL tells which name the client asked for. The caller
 * SSL_new()s from it and SSL_CTX_free()s it when done; an SSL made from it stays valid after a
 * certificate reload and after the last ktla_ctx_free(). Never NULL. Any thread.
 */
SSL_CTX *ktla_ctx_ssl_ctx(struct ktla_ctx *ctx);

/* Takes another reference on `ctx`; ktla_ctx_free() drops one. Any thread. */
void ktla_ctx_ref(struct ktla_ctx *ctx);

#endif
