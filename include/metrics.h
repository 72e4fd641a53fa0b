/*
 * metrics.h: counters and histograms of streams and groups, rendered on
 * demand in the Prometheus text format (version 0.0.4).  Each counter is
 * declared once in the X-macro lists below; the broker embeds the structs
 * in its streams and groups and bumps the fields.
 */
#ifndef METRICS_H
#define METRICS_H

#include <stdint.h>

struct evbuffer;

#define METRICS_NBUCKETS 16

struct metrics_hist {
	uint64_t bucket[METRICS_NBUCKETS];	/* not cumulative; +Inf = count */
	uint64_t count;
	double   sum;
};

/* X(field, metric name, help) */
#define METRICS_GROUP_COUNTERS(X) \
	X(consumed, "streams_messages_consumed_total", "Entries acknowledged by consumers of the group.") \
	X(delivered, "streams_messages_delivered_total", "Deliveries to consumers of the group, first and repeated.") \
	X(redelivered, "streams_messages_redelivered_total", "Deliveries with attempt greater than 1.") \
	X(dead_lettered, "streams_messages_dead_lettered_total", "Entries moved to the dead-letter stream.")

#define METRICS_GROUP_GAUGES(X) \
	X(lag, "streams_lag", "Entries not yet delivered to the group (as of the last poll).") \
	X(pending, "streams_pending", "Entries delivered to the group and not acknowledged (as of the last poll).") \
	X(active_consumers, "streams_active_consumers", "Consumers of the group subscribed on this daemon.") \
	X(paused_consumers, "streambus_paused_consumers", "Subscriptions of the group not fed: prefetch reached or output buffer full.")

#define METRICS_STREAM_COUNTERS(X) \
	X(published, "streams_messages_published_total", "Messages stored by pub.") \
	X(trimmed_unread, "streambus_trimmed_unread_total", "Entries removed by the maxlen cap before every group acknowledged them.")

/* Error codes a pub can be answered with, for streams_publish_errors_total. */
#define METRICS_PUB_ERRORS(X) \
	X(bad_request) X(too_large) X(unauthorized) X(unavailable) X(overloaded) \
	X(indeterminate) X(internal)

enum metrics_pub_error {
#define METRICS_PE_ENUM(e) METRICS_PE_##e,
	METRICS_PUB_ERRORS(METRICS_PE_ENUM)
#undef METRICS_PE_ENUM
	METRICS_PE__COUNT
};

#define METRICS_FIELD(f, name, help) uint64_t f;

struct metrics_group {
	const char *name;
	METRICS_GROUP_COUNTERS(METRICS_FIELD)
	METRICS_GROUP_GAUGES(METRICS_FIELD)
	struct metrics_hist processing;		/* delivery -> ack */
	struct metrics_group *next;
};

struct metrics_stream {
	const char *name;
	METRICS_STREAM_COUNTERS(METRICS_FIELD)
	uint64_t pub_errors[METRICS_PE__COUNT];
	struct metrics_hist publish;		/* request read -> Redis confirmed */
	struct metrics_group *groups;
	struct metrics_stream *next;
};

/* Daemon-wide values. */
#define METRICS_GLOBAL_GAUGES(X) \
	X(connections, "streambus_connections", "Client connections open.") \
	X(redis_up, "streambus_redis_up", "1 when the daemon's Redis command connection answers.") \
	X(redis_links, "streambus_redis_connections", "Redis connections the daemon holds open.") \
	X(cluster_nodes, "streambus_cluster_nodes", "Redis Cluster masters in the slot map (0 without a cluster).") \
	X(redis_inflight, "streambus_redis_inflight", "Redis commands sent and not yet answered.")

#define METRICS_GLOBAL_COUNTERS(X) \
	X(connections_total, "streambus_connections_accepted_total", "Client connections accepted.") \
	X(connections_rejected, "streambus_connections_rejected_total", "Connections refused at max_clients.") \
	X(slow_consumer_closes, "streambus_slow_consumer_disconnects_total", "Connections closed as slow consumers: output over output_buffer_limit, or over half of it and stalled for slow_consumer_timeout_ms.") \
	X(requests, "streambus_requests_total", "Request lines handled.") \
	X(idle_closes, "streambus_idle_disconnects_total", "Connections closed after idle_timeout_ms.") \
	X(lines_too_long, "streambus_lines_too_long_total", "Request lines longer than max_line, skipped.") \
	X(read_pauses, "streambus_read_pauses_total", "Times a connection stopped being read: max_pending_requests or output_buffer_limit reached.") \
	X(subs_refused, "streambus_subscriptions_refused_total", "Subscriptions refused at max_subs_per_conn.") \
	X(batches_refused, "streambus_batches_refused_total", "Pub batches refused for more than max_batch entries.") \
	X(accept_pauses, "streambus_accept_pauses_total", "Times accepting connections paused for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM).") \
	X(redis_reconnects, "streambus_redis_reconnects_total", "Redis connection attempts after a loss.") \
	X(redis_redirects, "streambus_redis_redirects_total", "Redis Cluster commands answered MOVED or ASK and sent on to the node named.") \
	X(cluster_refreshes, "streambus_cluster_slot_refreshes_total", "Redis Cluster slot maps read (CLUSTER SLOTS).")

struct metrics_global {
	METRICS_GLOBAL_GAUGES(METRICS_FIELD)
	METRICS_GLOBAL_COUNTERS(METRICS_FIELD)
	double start_time;			/* seconds since the epoch */
};

extern struct metrics_global metrics;

void metrics_init(void);
void metrics_observe(struct metrics_hist *h, double seconds);
const char *metrics_pub_error_name(enum metrics_pub_error e);
int  metrics_pub_error_index(const char *code);	/* -1 if not a pub error */
void metrics_render(struct evbuffer *out, const struct metrics_stream *streams);
/* Escape a label value: \\ \" \n. */
void metrics_put_label(struct evbuffer *out, const char *value);

#endif
