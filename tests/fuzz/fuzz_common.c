#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "serve.h"

void fuzz_fail(const char *what)
{
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
}

SSL_CTX *fuzz_server_ssl_ctx(void)
{
    static SSL_CTX *sctx;
    struct cert_pem pem;
    char err[256];

    if (sctx)
        return sctx;
    /* ktla-serve's own self-signed certificate: the same one a newcomer's server presents. */
    if (cert_self_signed(&pem, err, sizeof(err)) != 0)
        fuzz_fail(err);
    struct ktla_cert_config cc = {.cert_pem = pem.cert, .key_pem = pem.key};
    struct ktla_ctx_config cfg = {.certs = &cc, .ncerts = 1};
    struct ktla_ctx *ctx;
    if (ktla_ctx_new(&cfg, &ctx) != 0)
        fuzz_fail("ktla_ctx_new");
    sctx = ktla_ctx_ssl_ctx(ctx); /* kept for the life of the process */
    ktla_ctx_free(ctx);
    cert_pem_free(&pem);
    return sctx;
}

size_t fuzz_feed(struct ktla_hs *hs, const uint8_t *data, size_t len, const uint8_t *splits,
                 size_t nsplits, BIO *to_client)
{
    size_t off = 0, i = 0;
    while (off < len && hs->state != KTLA_HS_FAILED) {
        size_t room;
        uint8_t *buf = ktla_hs_read_buf(hs, &room);
        if (!buf || room == 0)
            break; /* done and on a record boundary: the rest is the kernel's */
        size_t n = nsplits ? (size_t)splits[i++ % nsplits] + 1 : len - off;
        if (n > room)
            n = room;
        if (n > len - off)
            n = len - off;
        memcpy(buf, data + off, n);
        off += n;
        ktla_hs_input(hs, n);
        if (hs->out_len) {
            if (to_client)
                BIO_write(to_client, hs->out, (int)hs->out_len);
            ktla_hs_output_sent(hs, hs->out_len);
        }
        if (hs->in_len > 2 * KTLA_RECORD_MAX)
            fuzz_fail("input buffer grew past two records");
    }
    return off;
}
