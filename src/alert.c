/*
 * The alert table: every post-handshake event, what is sent for it and what the application's
 * receive gets, for TLS 1.2 and TLS 1.3, with the RFC section that decides it.
 *
 * Kernel mode runs this table: the kernel decrypts, and hands ktla every record that is not
 * application data (and its errors) to act on. Userspace mode is OpenSSL's record layer, which
 * answers the same events the same way (tests/conformance checks both modes against one list);
 * ktla's only part there is to send what OpenSSL wrote at once (a no_renegotiation warning is
 * written while reading, and would otherwise wait for the next response).
 *
 * Where the kernel keeps ktla from the RFC's answer, the row says so:
 * - the kernel reports every record it cannot open as EBADMSG, whatever the reason: a bad tag,
 *   and also a TLS 1.3 record whose inner plaintext has no content type (RFC 8446 section 5.4
 *   wants unexpected_message) or whose outer type is not application_data. ktla can only answer
 *   bad_record_mac for all of them; OpenSSL (userspace mode) tells them apart.
 * - the kernel refuses a record whose legacy_record_version is not 0x0303 (EINVAL), which RFC
 *   8446 section 5.1 says to ignore; OpenSSL refuses it too (decode_error), and so does ktla in
 *   kernel mode, with the same alert.
 * - after EBADMSG the kernel keeps the error on the socket and refuses every send while it is
 *   set; ktla reads SO_ERROR, which clears it, and the alert then goes out (conn.c,
 *   kernel_alert).
 */
#include "alert.h"

#include "ktla.h"

#define FATAL(desc, err) {2, KTLA_AD_##desc, true, err}
#define WARN(desc) {1, KTLA_AD_##desc, false, 0}
#define GOES_ON {0, 0, false, 0}
#define ENDS_WITH(err) {0, 0, true, err}

static const struct ktla_event_answer tls12[KTLA_EV_COUNT] = {
    /* RFC 5246 6.2.3.3, 7.2.2: authentication failure is bad_record_mac, fatal */
    [KTLA_EV_BAD_MAC] = FATAL(BAD_RECORD_MAC, KTLA_EBADMAC),
    /* 6.2.1-6.2.3, 7.2.2: over 2^14 plaintext or 2^14 + 2048 ciphertext */
    [KTLA_EV_OVERFLOW] = FATAL(RECORD_OVERFLOW, KTLA_ERECORD_OVERFLOW),
    /* 6.2.1 prescribes no alert for a wrong version; protocol_version is OpenSSL's answer */
    [KTLA_EV_BAD_VERSION] = FATAL(PROTOCOL_VERSION, KTLA_EBADVERSION),
    /* 7.1: ChangeCipherSpec only within a handshake; 7.2.2 unexpected_message */
    [KTLA_EV_CCS] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* 6: "If a TLS implementation receives an unexpected record type, it MUST send an
     * unexpected_message alert" */
    [KTLA_EV_UNKNOWN_TYPE] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* 6.2.1: no zero-length alert fragments; 7.2 an alert is two bytes */
    [KTLA_EV_ALERT_EMPTY] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    [KTLA_EV_ALERT_MALFORMED] = FATAL(DECODE_ERROR, KTLA_EUNEXPECTED),
    /* 7.2.1: the peer writes no more; its receive stream ends, ours may go on */
    [KTLA_EV_ALERT_CLOSE_NOTIFY] = ENDS_WITH(0),
    /* 7.2: warnings other than close_notify leave the connection usable */
    [KTLA_EV_ALERT_USER_CANCELED] = GOES_ON,
    [KTLA_EV_ALERT_WARNING] = GOES_ON,
    /* 7.2.2: after a fatal alert the connection is over, and nothing is owed in reply */
    [KTLA_EV_ALERT_FATAL] = ENDS_WITH(KTLA_EALERT),
    /* 6.2.1: no zero-length handshake fragments */
    [KTLA_EV_HS_EMPTY] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    [KTLA_EV_HS_INTERLEAVED] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* 7.4.1.2 with RFC 5746 4.4 and 7.2.2: renegotiation refused with a warning
     * no_renegotiation, and the connection goes on (what OpenSSL and nginx do) */
    [KTLA_EV_CLIENT_HELLO] = WARN(NO_RENEGOTIATION),
    /* 7.4.1.1: HelloRequest goes from server to client only */
    [KTLA_EV_HELLO_REQUEST] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* no KeyUpdate in TLS 1.2: an unexpected handshake message */
    [KTLA_EV_KEY_UPDATE] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    [KTLA_EV_KEY_UPDATE_PARAM] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    [KTLA_EV_KEY_UPDATE_LENGTH] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    [KTLA_EV_KEY_UPDATE_BOUNDARY] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    [KTLA_EV_HS_OTHER] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* Kernels from 6.14 stop receiving after any handshake record that begins with 24 (they
     * take it for a TLS 1.3 KeyUpdate) and take no second TLS 1.2 key to go on: a renegotiation
     * ClientHello cut into such records cannot get its warning, only this. A deviation forced
     * by the kernel; no client renegotiates in pieces like that. */
    [KTLA_EV_RX_STOPPED] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
};

static const struct ktla_event_answer tls13[KTLA_EV_COUNT] = {
    /* RFC 8446 5.2: "If the decryption fails, the receiver MUST terminate the connection with a
     * bad_record_mac alert" (in kernel mode also the rows of the comment above) */
    [KTLA_EV_BAD_MAC] = FATAL(BAD_RECORD_MAC, KTLA_EBADMAC),
    /* 5.2, 5.4: over 2^14 + 256 ciphertext or 2^14 + 1 inner plaintext: record_overflow */
    [KTLA_EV_OVERFLOW] = FATAL(RECORD_OVERFLOW, KTLA_ERECORD_OVERFLOW),
    /* 5.1 says to ignore legacy_record_version; the kernel cannot (see above). decode_error,
     * OpenSSL's answer, so that both modes agree */
    [KTLA_EV_BAD_VERSION] = FATAL(DECODE_ERROR, KTLA_EBADVERSION),
    /* 5: a change_cipher_spec after the peer's Finished is an unexpected record type */
    [KTLA_EV_CCS] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* 5: "If a TLS implementation receives an unexpected record type, it MUST terminate the
     * connection with an unexpected_message alert" */
    [KTLA_EV_UNKNOWN_TYPE] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* 5.4: zero-length Alert (and Handshake) content MUST be answered with unexpected_message */
    [KTLA_EV_ALERT_EMPTY] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* 5.1: alerts are not fragmented nor coalesced: anything but two bytes cannot be decoded */
    [KTLA_EV_ALERT_MALFORMED] = FATAL(DECODE_ERROR, KTLA_EUNEXPECTED),
    /* 6.1: close_notify closes the peer's writing side only; ours may finish (half-close) */
    [KTLA_EV_ALERT_CLOSE_NOTIFY] = ENDS_WITH(0),
    /* 6.1: user_canceled is a closure alert, not an error; a close_notify should follow */
    [KTLA_EV_ALERT_USER_CANCELED] = GOES_ON,
    /* 6: every other alert is an error whatever its level, and unknown ones too; 6.2: the
     * connection ends, nothing is owed in reply */
    [KTLA_EV_ALERT_WARNING] = ENDS_WITH(KTLA_EALERT),
    [KTLA_EV_ALERT_FATAL] = ENDS_WITH(KTLA_EALERT),
    /* 5.4 */
    [KTLA_EV_HS_EMPTY] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* 5.1: "Handshake messages MUST NOT be interleaved with other record types" */
    [KTLA_EV_HS_INTERLEAVED] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* 4.1.2, 4.6: after the handshake a client sends KeyUpdate only */
    [KTLA_EV_CLIENT_HELLO] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    [KTLA_EV_HELLO_REQUEST] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* 4.6.3: followed (new receive key; ours too if requested) */
    [KTLA_EV_KEY_UPDATE] = GOES_ON,
    /* 4.6.3: "If an implementation receives any other value [than 0 or 1], it MUST terminate
     * the connection with an illegal_parameter alert" */
    [KTLA_EV_KEY_UPDATE_PARAM] = FATAL(ILLEGAL_PARAMETER, KTLA_EUNEXPECTED),
    /* 4: a message whose length does not match its type cannot be decoded */
    [KTLA_EV_KEY_UPDATE_LENGTH] = FATAL(DECODE_ERROR, KTLA_EUNEXPECTED),
    /* 5.1: a KeyUpdate must end its record: "If they [are not at a record boundary], the
     * implementation MUST terminate the connection with an unexpected_message alert" */
    [KTLA_EV_KEY_UPDATE_BOUNDARY] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    [KTLA_EV_HS_OTHER] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
    /* Where the secrets are kept the same key is set again and nothing stops (conn_kernel.c);
     * otherwise (a kernel that cannot rekey never stops) this cannot happen in TLS 1.3. */
    [KTLA_EV_RX_STOPPED] = FATAL(UNEXPECTED_MESSAGE, KTLA_EUNEXPECTED),
};

const struct ktla_event_answer *ktla_event_answer(uint16_t version, enum ktla_event ev)
{
    static const struct ktla_event_answer none = ENDS_WITH(KTLA_EUNEXPECTED);
    if ((unsigned)ev >= KTLA_EV_COUNT)
        return &none;
    return version == KTLA_TLS1_3 ? &tls13[ev] : &tls12[ev];
}

enum { HS_HELLO_REQUEST = 0, HS_CLIENT_HELLO = 1, HS_KEY_UPDATE = 24 };

size_t ktla_hs_reader_feed(struct ktla_hs_reader *r, const uint8_t *p, size_t n,
                           enum ktla_event *ev, uint8_t *request_update)
{
    size_t used = 0;

    *ev = KTLA_EV_COUNT;
    if (n == 0 && !ktla_hs_reader_busy(r)) {
        *ev = KTLA_EV_HS_EMPTY;
        return 0;
    }
    while (used < n) {
        if (!r->left && r->hdr_len < 4) {
            r->hdr[r->hdr_len++] = p[used++];
            if (r->hdr_len < 4)
                continue;
            r->left = (uint32_t)r->hdr[1] << 16 | (uint32_t)r->hdr[2] << 8 | r->hdr[3];
            r->body_len = 0;
            /* Decided by the header alone: nothing in the body would change the answer. */
            if (r->hdr[0] == HS_KEY_UPDATE && r->left != 1) {
                *ev = KTLA_EV_KEY_UPDATE_LENGTH;
                return used;
            }
            if (r->hdr[0] != HS_KEY_UPDATE && r->hdr[0] != HS_CLIENT_HELLO &&
                r->hdr[0] != HS_HELLO_REQUEST) {
                *ev = KTLA_EV_HS_OTHER;
                return used;
            }
        } else if (r->left) {
            size_t take = n - used < r->left ? n - used : r->left;
            if (r->hdr[0] == HS_KEY_UPDATE && r->body_len < sizeof(r->body))
                r->body[r->body_len++] = p[used];
            used += take;
            r->left -= (uint32_t)take;
        }
        if (r->hdr_len == 4 && !r->left) {
            /* A whole message. */
            uint8_t type = r->hdr[0];
            r->hdr_len = 0;
            if (type == HS_CLIENT_HELLO) {
                *ev = KTLA_EV_CLIENT_HELLO;
            } else if (type == HS_HELLO_REQUEST) {
                *ev = KTLA_EV_HELLO_REQUEST;
            } else {
                *request_update = r->body[0];
                *ev = used < n           ? KTLA_EV_KEY_UPDATE_BOUNDARY
                      : r->body[0] <= 1 ? KTLA_EV_KEY_UPDATE
                                         : KTLA_EV_KEY_UPDATE_PARAM;
            }
            return used;
        }
    }
    return used;
}
