/*
 * The TLS context as the rest of the library sees it: where a handshake gets its SSL_CTX.
 * Internal to libktla; the public half (ktla_ctx_new and friends) is in ktla.h.
 */
#ifndef KTLA_CONTEXT_H
#define KTLA_CONTEXT_H

#include <stdbool.h>

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

/*
 * An acceptor's own OpenSSL library context, with SSL_CTXs built in it from the ktla_ctx's
 * current certificates and settings (see context.c for why). KTLA_EINVAL with *why set when
 * OpenSSL's default context cannot be copied or the process has made as many as it may (128),
 * -ENOMEM and *why when making one failed: the acceptor then shares the default one. The caller's reference is dropped with
 * ktla_tls_local_unref(); SSLs made from it (ktla_ssl_new) hold their own.
 */
struct ktla_tls_local;
int ktla_tls_local_new(struct ktla_ctx *ctx, struct ktla_tls_local **out, const char **why);
void ktla_tls_local_ref(struct ktla_tls_local *l);
void ktla_tls_local_unref(struct ktla_tls_local *l);

/*
 * As ktla_ctx_ssl_ctx(), from the local's own SSL_CTXs: a new reference, rebuilt first when the
 * ktla_ctx's certificates were reloaded since. Where that rebuild fails, *failed is set (once per
 * generation) and the shared SSL_CTX is returned. The acceptor's thread only.
 */
SSL_CTX *ktla_tls_local_ssl_ctx(struct ktla_tls_local *l, struct ktla_ctx *ctx, bool *failed);

/* SSL_new() and SSL_free() that keep the SSL's library context alive as long as the SSL. */
SSL *ktla_ssl_new(SSL_CTX *sc);
void ktla_ssl_free(SSL *ssl);

/* The library context the SSL's SSL_CTX was made in; NULL for OpenSSL's default. */
OSSL_LIB_CTX *ktla_ssl_libctx(const SSL *ssl);

#endif
