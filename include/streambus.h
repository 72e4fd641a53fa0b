/*
 * streambus.h: a small blocking client for the streambus line-JSON protocol
 * (see man/streambus-protocol.7).  Used by streambus-cli, the benchmark and
 * the tests.  One sb_client is one TCP connection; it is not thread-safe.
 *
 * Replies and deliveries arrive interleaved on one connection: sb_request()
 * returns the next *reply* (a line with "ok") and keeps any deliveries or
 * notices it reads meanwhile in a bounded queue that sb_next_event() drains.
 */
#ifndef STREAMBUS_H
#define STREAMBUS_H

#include <stddef.h>
#include <jansson.h>

#define SB_CLIENT_MAX_LINE   (16u * 1024 * 1024)  /* longest line accepted */
#define SB_CLIENT_MAX_EVENTS 100000               /* queued msg/bye lines */

typedef struct sb_client sb_client;

/* "host:port", "[v6]:port" or a Unix socket path (contains '/').
 * NULL on failure with a message in err. */
sb_client *sb_connect(const char *addr, char *err, size_t errlen);
void       sb_close(sb_client *c);
int        sb_fd(const sb_client *c);

/* Queue raw bytes (a '\n' is appended when missing) / a JSON object as one
 * line.  Data is written by sb_flush() or once the write buffer is large. */
int  sb_send_line(sb_client *c, const char *line, size_t len);
int  sb_send_json(sb_client *c, const json_t *obj);
int  sb_flush(sb_client *c);

/* Next complete line, without its '\n'; valid until the next read call.
 * Returns NULL on timeout (errno = ETIMEDOUT) or EOF/error.  timeout_ms < 0
 * waits forever.  Lines queued by sb_request() come first. */
const char *sb_read_line(sb_client *c, size_t *len, int timeout_ms);

/* Next line parsed as JSON (caller owns the reference); NULL as above. */
json_t *sb_read_json(sb_client *c, int timeout_ms);

/* Sends obj, flushes, and returns the next reply line parsed (caller owns
 * it); deliveries and notices read meanwhile are queued.  NULL on
 * timeout/EOF. */
json_t *sb_request(sb_client *c, const json_t *obj, int timeout_ms);

/* Next queued or incoming delivery/notice ("op":"msg" or "op":"bye");
 * replies read meanwhile are dropped.  NULL on timeout/EOF. */
json_t *sb_next_event(sb_client *c, int timeout_ms);

/* Errors: calls that fail set errno (ETIMEDOUT on a timeout, ECONNRESET
 * once the server closed, EMSGSIZE for a line over SB_CLIENT_MAX_LINE,
 * EPROTO for a line that is not JSON, ENOBUFS when sb_request() would queue
 * more than SB_CLIENT_MAX_EVENTS events).  All but timeouts and a bad line
 * from sb_read_json()/sb_next_event() are sticky: the connection is
 * unusable and every later call fails.  A reply that comes after
 * sb_request() timed out is the next reply read: close or resync by rid.
 * sb_close() discards unflushed output. */

/* Text describing the last failure on c ("no error" if none). */
const char *sb_strerror(const sb_client *c);

/* How long a flush may make no progress before it fails (sticky, since a
 * line may be half written); default 30000 ms, < 0 waits forever. */
void   sb_set_write_timeout(sb_client *c, int timeout_ms);

/* Deliveries/notices queued by sb_request() and not yet read. */
size_t sb_queued_events(const sb_client *c);

#endif
