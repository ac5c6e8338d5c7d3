/*
 * What the established connection answers to every record that is not plain application data:
 * one table for both versions, the alert sent and the code the application gets. See alert.c.
 */
#ifndef KTLA_ALERT_H
#define KTLA_ALERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Alert descriptions (RFC 8446 section 6, RFC 5246 section 7.2). */
enum ktla_alert_desc {
    KTLA_AD_CLOSE_NOTIFY = 0,
    KTLA_AD_UNEXPECTED_MESSAGE = 10,
    KTLA_AD_BAD_RECORD_MAC = 20,
    KTLA_AD_RECORD_OVERFLOW = 22,
    KTLA_AD_ILLEGAL_PARAMETER = 47,
    KTLA_AD_DECODE_ERROR = 50,
    KTLA_AD_PROTOCOL_VERSION = 70,
    KTLA_AD_USER_CANCELED = 90,
    KTLA_AD_NO_RENEGOTIATION = 100,
};

/* Post-handshake events, as the kernel-mode receive path meets them. */
enum ktla_event {
    KTLA_EV_BAD_MAC,            /* the kernel failed to authenticate a record (EBADMSG) */
    KTLA_EV_OVERFLOW,           /* a record over the size limit (EMSGSIZE) */
    KTLA_EV_BAD_VERSION,        /* a record header the kernel refused (EINVAL) */
    KTLA_EV_CCS,                /* ChangeCipherSpec after the handshake */
    KTLA_EV_UNKNOWN_TYPE,       /* a content type that is none of TLS's */
    KTLA_EV_ALERT_EMPTY,        /* an alert record with nothing in it */
    KTLA_EV_ALERT_MALFORMED,    /* an alert record of 1 byte or more than 2 */
    KTLA_EV_ALERT_CLOSE_NOTIFY, /* close_notify */
    KTLA_EV_ALERT_USER_CANCELED,
    KTLA_EV_ALERT_WARNING,      /* any other warning-level alert */
    KTLA_EV_ALERT_FATAL,        /* a fatal alert, or (TLS 1.3) any other alert */
    KTLA_EV_HS_EMPTY,           /* a handshake record with nothing in it */
    KTLA_EV_HS_INTERLEAVED,     /* another record type inside a fragmented handshake message */
    KTLA_EV_CLIENT_HELLO,       /* renegotiation (1.2), or a second ClientHello (1.3) */
    KTLA_EV_HELLO_REQUEST,      /* only servers send it */
    KTLA_EV_KEY_UPDATE,         /* a well-formed KeyUpdate at a record boundary */
    KTLA_EV_KEY_UPDATE_PARAM,   /* request_update neither 0 nor 1 */
    KTLA_EV_KEY_UPDATE_LENGTH,  /* a KeyUpdate whose body is not 1 byte */
    KTLA_EV_KEY_UPDATE_BOUNDARY, /* more handshake bytes after a KeyUpdate in its record */
    KTLA_EV_HS_OTHER,           /* any other handshake message from a client */
    KTLA_EV_RX_STOPPED,         /* the kernel stopped receiving (EKEYEXPIRED) and cannot go on */
    KTLA_EV_COUNT
};

/* The answer: alert_level 0 sends nothing; `code` is what the application's receive gets, 0
 * for "carry on" (the record is consumed and the receive continues), except close_notify,
 * which ends the stream with 0 (see `ends`). */
struct ktla_event_answer {
    uint8_t alert_level; /* 0, 1 (warning) or 2 (fatal) */
    uint8_t alert_desc;
    bool ends;           /* the connection cannot go on */
    int code;            /* the receive's result when it ends: 0 or a KTLA_E* code */
};

/* The answer for `version` (KTLA_TLS1_2 or KTLA_TLS1_3). Never NULL. */
const struct ktla_event_answer *ktla_event_answer(uint16_t version, enum ktla_event ev);

/* A handshake message arriving in pieces, record by record (RFC 8446 section 5.1, RFC 5246
 * section 6.2.1 allow fragmenting); only the few bytes acted on are kept. */
struct ktla_hs_reader {
    uint8_t hdr[4];
    uint8_t hdr_len;
    uint32_t left;     /* body bytes of the current message still to come */
    uint8_t body[1];   /* a KeyUpdate's request_update */
    uint8_t body_len;
};

/*
 * Feeds the bytes of one handshake record (n may be 0). Returns how many it consumed and sets *ev
 * to the event of the message those bytes completed (with a KeyUpdate's request_update in
 * *request_update), or to KTLA_EV_COUNT when they were all consumed without completing one (more
 * is to come in the next records). After an event that does not end the connection, feed the
 * rest of the record again.
 */
size_t ktla_hs_reader_feed(struct ktla_hs_reader *r, const uint8_t *p, size_t n,
                           enum ktla_event *ev, uint8_t *request_update);

/* Whether a handshake message is partly received. */
static inline bool ktla_hs_reader_busy(const struct ktla_hs_reader *r)
{
    return r->hdr_len || r->left;
}

#endif
