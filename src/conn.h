/*
 * The established connection's modules (conn.c, conn_kernel.c, conn_us.c): what they share.
 * Internal to the library.
 */
#ifndef KTLA_CONN_H
#define KTLA_CONN_H

#include <sys/types.h>

#include "internal.h"

/* Userspace mode: plaintext taken per step. One file read, one SSL_write and one send per step
 * rather than per 16 KiB record: the ring's per-operation cost, paid once per record, was a good
 * part of what a download cost beyond the encryption itself; and each send wakes the client.
 * Bodies up to US_CHUNK go in one step from a buffer of that size; larger ones in steps of
 * US_CHUNK_MAX (sixteen records), about 9% less CPU per MiB than 64 KiB steps, for 384 KiB more
 * per connection while it sends (given back when it goes idle: ktla_conn_trim). */
#define US_CHUNK 65536
#define US_CHUNK_MAX 262144

/* Kernel mode: bytes of the send in progress taken by the socket, counted for the application as
 * well (info.bytes_sent). */
static inline void conn_sent(struct ktla_conn *c, size_t n)
{
    c->sdone += n;
    c->info.bytes_sent += n;
}

/* Userspace mode: plaintext of the send in progress encrypted into c->enc. It counts as sent
 * (info.bytes_sent) only once its ciphertext is on the wire, so that an application that logs
 * what was delivered when a connection breaks does not count what never left. */
static inline void conn_encrypted(struct ktla_conn *c, size_t n)
{
    c->sdone += n;
    c->enc_plain += n;
}

/* conn.c: submissions and the ends of the receive and send in progress. */
bool conn_submit(struct ktla_conn *c, struct io_uring_sqe *sqe, struct ktla_op *op,
                 enum ktla_op_kind kind);
void conn_recv_done(struct ktla_conn *c, ssize_t result);
int conn_recv_submit_socket(struct ktla_conn *c, void *buf, size_t len);
void conn_send_done(struct ktla_conn *c, ssize_t result);
bool conn_submit_send_flags(struct ktla_conn *c, const void *buf, size_t len, int flags);
bool conn_submit_send(struct ktla_conn *c, const void *buf, size_t len);
bool conn_submit_pollout(struct ktla_conn *c);

/* conn_kernel.c: kernel mode. */
/* The next record is not data: reads it with its type and acts on it (alert.c's table). */
void kconn_control_record(struct ktla_conn *c);
/* One row of the alert table: true when the connection goes on. */
bool kconn_event(struct ktla_conn *c, enum ktla_event ev);
/* A receive failed: the errors that are the peer's records get their alert. */
void kconn_rx_error(struct ktla_conn *c, int code);
void kconn_sendfile_step(struct ktla_conn *c);
struct ktla_splice *kconn_splice_pipe(struct ktla_conn *c);
void kconn_splice_step(struct ktla_conn *c);
void kconn_on_splice(struct ktla_conn *c, enum ktla_op_kind kind, int res);
/* Starts (or resumes) the send described by head, sbuf/file_fd, slen and sdone. */
bool kconn_send_start(struct ktla_conn *c);
void kconn_rekey_tx(struct ktla_conn *c);

/* conn_us.c: userspace mode. */
void uconn_recv_step(struct ktla_conn *c);
/* Userspace mode: true when OpenSSL holds input (decrypted or not) or its read BIO does, so that
 * a receive may be answered without the socket. */
bool uconn_has_pending(struct ktla_conn *c);
/* Userspace mode: the socket read for ciphertext into the connection's record buffer. 0, or
 * -ENOMEM, -EBUSY; on success the completion goes to uconn_on_raw_recv. */
int uconn_recv_submit_raw(struct ktla_conn *c);
void uconn_on_raw_recv(struct ktla_conn *c, int res);
void uconn_trim(struct ktla_conn *c);
int uconn_encrypt(struct ktla_conn *c, const void *p, size_t n);
/* The write BIO over c->enc replaces the handshake's memory BIO (tx in userspace). */
int uconn_adopt(struct ktla_conn *c);
bool uconn_submit_enc(struct ktla_conn *c);
/* Sends what c->enc holds at once, without waiting (no send from it in flight): 1 when all of
 * it is out, 0 when the socket has no room, or a negative errno. */
int uconn_send_now(struct ktla_conn *c);
void uconn_sent(struct ktla_conn *c, int res);
/* Plaintext per step: a send of remaining bytes takes this many now. */
size_t uconn_step(size_t remaining);
/* Reads the file's next piece into c->chunk, after head (head_len bytes, copied first). */
int uconn_read_file(struct ktla_conn *c, const void *head, size_t head_len);
void uconn_send_step(struct ktla_conn *c);
void uconn_on_file_read(struct ktla_conn *c, int res);

#endif
