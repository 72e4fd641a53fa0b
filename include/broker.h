/*
 * broker.h: streams, consumer groups and subscriptions on Redis Streams.
 * See the comment at the top of src/broker.c for the design.
 */
#ifndef BROKER_H
#define BROKER_H

#include <stdint.h>

#include "config.h"
#include "metrics.h"
#include "proto.h"
#include "util.h"

struct event_base;
struct conn;
struct evbuffer;

struct stream;
struct group;

struct sub {
	uint64_t      uid;		/* daemon-wide, for lookups from callbacks */
	long          id;		/* the "sub" number the client sees */
	uint64_t      conn_id;
	struct conn  *conn;
	struct group *group;
	char         *consumer;
	long          prefetch;
	uint64_t      served;		/* deliveries so far, for fair turns */
	struct idset  inflight;	/* delivered, not acked/nacked */
	int           ready;		/* group exists; deliveries may start */
	int           recovering;	/* re-sending its own pending entries */
	char          recover_from[48];	/* XPENDING start: "-" or "(ID" */
	int           paused;		/* counted in paused_consumers */
	struct sub   *conn_next;
	struct sub   *group_next, *group_prev;
};

int  broker_init(struct event_base *base, const struct config *cfg);
void broker_reconfigure(const struct config *cfg);
/* Handle one parsed request of connection c, reply slot seq. */
void broker_handle(struct conn *c, uint64_t seq, struct proto_request *req);
/* A pub the parser refused: counted as a publish error of its stream. */
void broker_pub_rejected(const char *stream, const char *code);
/* A connection is going away: release its subscriptions. */
void broker_conn_closed(struct conn *c);
/* A connection's output drained below the soft limit. */
void broker_conn_writable(struct conn *c);
/* Graceful stop: no new deliveries; release everything in flight. */
void broker_stop_delivering(void);
int  broker_idle(void);
/* Last step of a stop: drop our liveness record. */
void broker_goodbye(void);		/* nothing awaits Redis */
void broker_free(void);
int  broker_redis_up(void);
const struct metrics_stream *broker_metrics(void);
/* Refresh per-group gauges now (also done on a timer). */
void broker_poll_gauges(void);

#endif
