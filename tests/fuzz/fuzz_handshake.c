/*
 * Fuzzes the handshake core with arbitrary client bytes in arbitrary splits, memory only. The
 * first byte says how many of the next bytes are split sizes; the rest is the client's stream.
 * Whatever arrives, the core must fail cleanly or carry on, never read or write out of bounds,
 * never buffer without bound, and never leak (ASan/LSan).
 */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ktla_hs hs;
    if (size < 1)
        return 0;
    size_t nsplits = data[0] % 16;
    if (size < 1 + nsplits)
        return 0;
    if (ktla_hs_init(&hs, fuzz_server_ssl_ctx()) != 0)
        return 0;
    fuzz_feed(&hs, data + 1 + nsplits, size - 1 - nsplits, data + 1, nsplits, NULL);
    if (hs.state == KTLA_HS_FAILED && hs.error == 0)
        fuzz_fail("failed without a code");
    ktla_hs_release(&hs);
    return 0;
}
