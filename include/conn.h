/*
 * conn.h: client connections.  One struct per connection; one close path
 * (conn_close) that takes a reason.  Replies leave in request order: each
 * request takes a sequence number and a reply slot; a reply that completes
 * out of order waits in its slot until those before it are written.
 */
#ifndef CONN_H
#define CONN_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

struct event_base;
struct evbuffer;
struct sub;
struct auth_token;
struct auth_table;

#define CONN_READ_CHUNK   65536	/* bytes read per wakeup */
#define CONN_WRITE_CHUNK  (1 << 20)	/* bytes written per wakeup */

enum conn_state { CONN_OPEN, CONN_DRAINING, CONN_CLOSED };

struct conn_slot {
	char    *text;	/* reply written while earlier ones were pending */
	size_t   len;
	int      done;
};

struct conn {
	uint64_t          id;
	int               fd;
	enum conn_state   state;
	struct event     *rev, *wev;
	struct evbuffer  *out;
	char             *inbuf;	/* partial line carried between reads */
	size_t            inlen, incap;
	struct proto_framer framer;
	int               read_paused;
	/* reply ordering */
	uint64_t          next_seq, head_seq;
	struct conn_slot *slots;	/* ring, indexed by seq % nslots */
	size_t            nslots;
	/* identity */
	char              name[PROTO_MAX_NAME + 1];
	int               authed;
	const struct auth_token *token;
	/* subscriptions */
	struct sub       *subs;
	int               nsubs;
	long              next_sub_id;
	int               output_blocked;	/* deliveries stopped: output full */
	int               finishing;		/* client said bye */
	uint64_t          last_active_ns;
	uint64_t          out_moved_ns;	/* output last began or moved on */
	struct conn      *next, *prev;		/* all connections */
};

struct config;

int  conn_init(struct event_base *base);
void conn_set_config(const struct config *cfg);
void conn_free_all(void);
/* Switch token files; connections whose token is gone get bye "revoked". */
void conn_set_auth(const struct auth_table *auth);
void conn_pause_all(void);
int  conn_busy(void);
/* Listen on a TCP address and/or Unix socket; -1 with a log line on error. */
int  conn_listen(const char *addr, const char *unix_path);
void conn_stop_listening(void);
void conn_shutdown_all(const char *reason);
size_t conn_count(void);
struct conn *conn_find(uint64_t id);
struct conn *conn_first(void);

/* Reserve the reply slot of the next request. */
uint64_t conn_next_seq(struct conn *c);
/* Complete request seq with the bytes in reply (drained). */
void conn_reply(struct conn *c, uint64_t seq, struct evbuffer *reply);
/* Deliveries and notices go straight to the output. */
void conn_write(struct conn *c, struct evbuffer *data);
/* 1 when the client left more than output_buffer_limit unread. */
int  conn_over_limit(const struct conn *c);
/* Bytes the output may still take before it is full. */
size_t conn_output_room(const struct conn *c);
/* 1 when the output is over the soft limit (no more deliveries). */
int  conn_output_full(const struct conn *c);
/* Close: with notify, "bye" is sent and the output flushed first;
 * CONN_FLUSH flushes without the notice. */
#define CONN_FLUSH 2
void conn_close(struct conn *c, const char *reason, int notify);
/* Close after every reply owed is written (the client's own bye). */
void conn_finish(struct conn *c);
/* Requests whose replies are not yet written. */
size_t conn_pending_replies(const struct conn *c);

#endif
