/* The reference record layer the kernel suite checks the kernel against must itself hold up. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <string.h>

#include "testutil.h"

ParameterizedTestParameters(record, seal_then_open_round_trips_and_detects_tampering)
{
    return cr_make_param_array(struct tu_variant, (void *)tu_variants, 6);
}

ParameterizedTest(struct tu_variant *v, record, seal_then_open_round_trips_and_detects_tampering)
{
    struct ktla_key tx, rx;
    uint8_t msg[1000], rec[1100], out[1100], type;

    tu_pattern(msg, sizeof(msg), 1);
    tu_key(&tx, v->version, v->cipher, 4, 9);
    rx = tx;
    size_t len = tu_record_seal(&tx, KTLA_RT_HANDSHAKE, msg, sizeof(msg), rec);
    cr_assert_eq(tx.seq, 10);
    cr_assert_eq(tu_record_open(&rx, rec, len, out, &type), (ssize_t)sizeof(msg));
    cr_assert_eq(type, KTLA_RT_HANDSHAKE);
    cr_assert(memcmp(out, msg, sizeof(msg)) == 0);

    /* The next record does not open under the previous sequence number. */
    struct ktla_key stale = rx;
    stale.seq--;
    len = tu_record_seal(&tx, KTLA_RT_APPLICATION_DATA, msg, sizeof(msg), rec);
    cr_assert_eq(tu_record_open(&stale, rec, len, out, &type), -1);

    rec[len - 1] ^= 1;
    cr_assert_eq(tu_record_open(&rx, rec, len, out, &type), -1);
    rec[len - 1] ^= 1;
    cr_assert_eq(tu_record_open(&rx, rec, len, out, &type), (ssize_t)sizeof(msg));
}
