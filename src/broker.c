/*
 * broker.c: streams, consumer groups and subscriptions on Redis Streams.
 *
 * Design.  One libevent loop owns everything here.  Redis connections are
 * bounded by groups, never by clients:
 *  - one pipelined "command" link carries every publish, ack, claim, release
 *    and stats query, in order;
 *  - each consumer group has one "reader" link for its blocking XREADGROUP
 *    (a blocked read holds its connection, so it cannot share the command
 *    link).  The reader serves the group's subscriptions one read at a
 *    time, the least-served first (fair shares), COUNT sized to its free
 *    prefetch, the group's backlog and the room left in its output;
 *  - streams with durability = replicas:N publish over a "durable" link,
 *    one WAIT confirming the publishes of each loop iteration.
 * Every client consumer is a Redis consumer of the same name, so Redis' PEL
 * (owner, idle time, delivery count) is the source of truth: it survives
 * reconnects and daemon restarts, and another daemon sharing the Redis sees
 * the same state.  Redelivery is one mechanism: a per-group claim sweep
 * (broker.lua "claim", every BROKER_TICK_MS) takes entries idle longer than
 * the ack deadline, dead-letters those at max_attempts and XCLAIMs the rest
 * to a subscription with free prefetch.  Releasing entries (unsub,
 * disconnect, nack) sets their idle time far past any deadline so the next
 * sweep of any daemon hands them on; a nack delay parks them in a sorted set
 * the sweep honours.
 *
 * Several daemons share a Redis through a liveness key each and a
 * consumer -> daemon ownership hash per group ("own"/"reap" in broker.lua).
 * Retention trims what every group has acknowledged ("retain").
 *
 * Callbacks never hold pointers to connections or subscriptions: they carry
 * ids and look them up, so a client that left meanwhile is simply not found.
 * Streams and groups live until the daemon exits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "broker.h"
#include "cluster.h"
#include "conn.h"
#include "log.h"
#include "redis.h"

#include "broker_lua.h"

#define BROKER_TICK_MS        250	/* claim sweeps */
#define BROKER_POLL_MS        2000	/* gauges from XINFO */
#define BROKER_RETAIN_MS      1000	/* trimming of acknowledged entries */
#define BROKER_LIVE_MS        1000	/* liveness record refresh and reaping */
#define BROKER_LIVE_TTL_MS    3000	/* expiry of the liveness record */
#define BROKER_GRACE_MS       5000	/* after a restart: our old consumers may return */
#define BROKER_IDLE_CONSUMER_MS 600000	/* unowned consumers with nothing pending */
#define BROKER_READ_BLOCK_MS  2000	/* XREADGROUP BLOCK */
#define BROKER_READ_MAX       256	/* entries per read */
#define BROKER_CLAIM_MAX      128	/* entries per claim sweep */
#define BROKER_CLAIM_SCAN     512	/* pending entries looked at per sweep */
#define BROKER_RELEASE_CHUNK  500	/* ids per release script call */
#define BROKER_KEY_MAX        (CONFIG_MAX_STREAM + 64)

struct group {
	struct stream      *stream;
	char               *name;
	char               *delay_key;	/* nack delays: id -> due ms */
	char               *owners_key;	/* consumer -> daemon holding it */
	char               *fails_key;	/* entry -> times and causes of failures */
	struct redis_link  *reader;
	int                 reading;
	uint64_t            read_uid;	/* sub the running read is for */
	long                read_count;	/* COUNT of the running read */
	char                claim_from[48];	/* where the next sweep scans from */
	int                 backlog;	/* the last read came back full */
	size_t              avg_bytes;	/* recent delivery size, for read sizes */
	long long           reader_id;	/* CLIENT ID of the reader link */
	char               *read_consumer;
	int                 sweeping;
	struct sub         *subs, *rr;	/* rr: next to serve */
	int                 nsubs;
	struct metrics_group m;
	struct group       *next;
};

struct stream {
	char               *name;
	char               *key, *dlq_key;
	char               *dedup_key, *dedup_exp_key;	/* recent msgids */
	unsigned            slot;		/* Redis Cluster hash slot of every key */
	char               *live_prefix;	/* cluster: liveness keys in that slot */
	struct stream_conf  conf;
	struct group       *groups;
	struct metrics_stream m;
	int                 over_maxlen;	/* warned that groups lag */
	struct stream      *next;
};

/* A pub that arrived while Redis was down, waiting up to pub_wait_ms. */
struct parked {
	uint64_t       conn_id, seq;
	uint64_t       deadline_ns;
	struct proto_request req;	/* moved here from the caller */
	struct parked *next;
};

/* A request waiting for Redis. */
struct pending {
	uint64_t       conn_id, seq, sub_uid;
	json_t        *rid;
	struct stream *stream;
	struct group  *group;
	uint64_t       start_ns;
	size_t         n;
	int            batch;
	/* stats */
	json_t        *result;
	int            waiting;
	int            failed;
	int            listing;		/* range: 1 oldest first, 2 newest (reversed) */
	char          *text;		/* a reply kept until WAIT confirms */
	size_t         text_len;
};

static struct broker {
	struct event_base   *base;
	const struct config *cfg;
	struct redis_link   *cmd;
	struct redis_link   *durable;	/* pubs of replicas:N streams, then WAIT */
	struct wait_batch   *waits;	/* pubs the next WAITs confirm */
	struct wait_batch   *waits_sent;	/* WAITs in flight, one per link */
	struct event        *wait_ev;
	struct event        *unpark_ev;	/* parked pubs go after a map change */
	struct stream       *streams;
	struct idmap         subs;
	uint64_t             next_uid;
	char                 sha[41];
	struct event        *tick;
	uint64_t             last_poll_ns, last_retain_ns, last_live_ns, start_ns;
	char                 me[320];		/* this daemon: host:listen */
	char                *live_prefix;	/* <prefix>daemon: (not on a cluster) */
	struct evbuffer     *scratch;
	struct evbuffer     *foreign;	/* data of entries others wrote */
	int                  stopping;
	struct parked       *parked, **parked_tail;
	size_t               nparked;
} B;

static void group_fetch(struct group *g);
static void broker_ensure_durable(const struct config *cfg);
static void group_sweep(struct group *g);
static void sub_free(struct sub *s);
static struct redis_link *stream_cmd(const struct stream *s);
static void stream_live_set(const struct stream *s);

/* ---- small helpers ---- */

/* One per request waiting for Redis: freed ones are kept for reuse. */
#define BROKER_PENDING_CACHE 4096
static struct pending *pending_cache[BROKER_PENDING_CACHE];
static size_t pending_ncached;

static struct pending *
pending_new(struct conn *c, uint64_t seq, json_t *rid)
{
	struct pending *p = pending_ncached > 0 ? pending_cache[--pending_ncached] :
	    malloc(sizeof(*p));

	if (p == NULL)
		return NULL;
	memset(p, 0, sizeof(*p));
	p->conn_id = c ? c->id : 0;
	p->seq = seq;
	p->rid = json_incref(rid);
	p->start_ns = util_now_ns();
	return p;
}

static void
pending_free(struct pending *p)
{
	json_decref(p->rid);
	json_decref(p->result);
	free(p->text);
	if (pending_ncached < BROKER_PENDING_CACHE)
		pending_cache[pending_ncached++] = p;
	else
		free(p);
}

static void
reply_error(struct conn *c, uint64_t seq, const json_t *rid, const char *code,
    const char *msg)
{
	proto_reply_error(B.scratch, rid, code, msg);
	conn_reply(c, seq, B.scratch);
}

static void
reply_ok(struct conn *c, uint64_t seq, const json_t *rid)
{
	proto_reply_ok(B.scratch, rid);
	conn_reply(c, seq, B.scratch);
}

/* The connection a pending reply belongs to, if it is still there. */
static struct conn *
pending_conn(const struct pending *p)
{
	return conn_find(p->conn_id);
}

static void
pending_error(struct pending *p, const char *code, const char *msg)
{
	struct conn *c = pending_conn(p);

	if (c != NULL)
		reply_error(c, p->seq, p->rid, code, msg);
}

static void
pending_ok(struct pending *p)
{
	struct conn *c = pending_conn(p);

	if (c != NULL)
		reply_ok(c, p->seq, p->rid);
}

/* Run broker.lua on link l: EVALSHA once its SHA is known, EVAL before.
 * ordered: a pub (see redis_cmd_argv_ordered). */
static int
broker_script_on(struct redis_link *l, int ordered, redis_cb *cb, void *arg, int nkeys,
    int argc, const char **argv, const size_t *argvlen)
{
	char nk[16];
	int rc;
	const char **av = malloc((argc + 3) * sizeof(*av));
	size_t *al = malloc((argc + 3) * sizeof(*al));

	if (av == NULL || al == NULL) {
		free(av);
		free(al);
		return -1;
	}
	snprintf(nk, sizeof(nk), "%d", nkeys);
	av[0] = B.sha[0] ? "EVALSHA" : "EVAL";
	av[1] = B.sha[0] ? B.sha : broker_lua;
	av[2] = nk;
	for (int i = 0; i < 3; i++)
		al[i] = strlen(av[i]);
	for (int i = 0; i < argc; i++) {
		av[i + 3] = argv[i];
		al[i + 3] = argvlen ? argvlen[i] : strlen(argv[i]);
	}
	rc = ordered ? redis_cmd_argv_ordered(l, cb, arg, argc + 3, av, al) :
	    redis_cmd_argv(l, cb, arg, argc + 3, av, al);
	free(av);
	free(al);
	return rc;
}

static int
broker_script(const struct stream *s, redis_cb *cb, void *arg, int nkeys, int argc,
    const char **argv, const size_t *argvlen)
{
	return broker_script_on(stream_cmd(s), 0, cb, arg, nkeys, argc, argv, argvlen);
}

static void
broker_script_loaded(redisReply *r, void *arg)
{
	(void)arg;
	if (r != NULL && r->type == REDIS_REPLY_STRING && r->len == 40)
		memcpy(B.sha, r->str, 41);
	else if (r != NULL)
		log_err("broker", 0, "SCRIPT LOAD failed: %s", r->type == REDIS_REPLY_ERROR ? r->str : "?");
}

static void
broker_load_script(struct redis_link *l, void *arg)
{
	(void)arg;
	redis_cmd(l, broker_script_loaded, NULL, "SCRIPT LOAD %s", broker_lua);
}

/* A script reply: NOSCRIPT means Redis lost its script cache under us. */
static void
broker_check_noscript(const redisReply *r)
{
	if (!redis_reply_error_is(r, "NOSCRIPT"))
		return;
	B.sha[0] = '\0';
	if (cluster_enabled())
		cluster_foreach(CLUSTER_CMD, broker_load_script, NULL);
	else
		broker_load_script(B.cmd, NULL);
}

/* An error of periodic work (read, sweep, reap, retention), which the
 * next tick retries: a warning, unless Redis is only moving (failover,
 * slot migration). */
static void
broker_work_error(const struct stream *s, const struct group *g, const char *what,
    const redisReply *r)
{
	enum log_level level = redis_reply_transient(r) ? LOG_DEBUG : LOG_WARN;

	if (r == NULL || !log_enabled(level))
		return;
	log_msg(level, "broker", 0, "%s%s%s: %s: %s", s->name, g ? "/" : "", g ? g->name : "",
	    what, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
}

/* ---- streams and groups ---- */

/* <prefix>S<suffix>; on a cluster <prefix>{S}<suffix>, so that every key
 * of a stream hashes to the stream's slot. */
static char *
broker_key(const char *name, const char *suffix)
{
	char *k;

	if (asprintf(&k, cluster_enabled() ? "%s{%s}%s" : "%s%s%s", B.cfg->prefix, name,
	    suffix) < 0)
		return NULL;
	return k;
}

/* The command link for the keys of stream name: the one Redis, or the
 * master of their slot, whose hash tag is the name (NULL while unknown). */
static struct redis_link *
broker_link_for(const char *name)
{
	if (!cluster_enabled())
		return B.cmd;
	return cluster_link(cluster_key_slot(name, strlen(name)), CLUSTER_CMD);
}

static struct redis_link *
stream_cmd(const struct stream *s)
{
	return cluster_enabled() ? cluster_link(s->slot, CLUSTER_CMD) : B.cmd;
}

static struct redis_link *
stream_durable(const struct stream *s)
{
	return cluster_enabled() ? cluster_link(s->slot, CLUSTER_DURABLE) : B.durable;
}

/* Where the liveness keys of daemons owning consumers of s live. */
static const char *
stream_live_prefix(const struct stream *s)
{
	return s->live_prefix != NULL ? s->live_prefix : B.live_prefix;
}

static struct stream *
stream_find(const char *name)
{
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		if (strcmp(s->name, name) == 0)
			return s;
	return NULL;
}

static void
stream_free(struct stream *s)
{
	free(s->name);
	free(s->key);
	free(s->dlq_key);
	free(s->dedup_key);
	free(s->dedup_exp_key);
	free(s->live_prefix);
	free(s);
}

static struct stream *
stream_get(const char *name)
{
	struct stream *s = stream_find(name), **tail;

	if (s != NULL)
		return s;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return NULL;
	s->name = strdup(name);
	s->key = broker_key(name, "");
	s->dlq_key = broker_key(name, ":dlq");
	s->dedup_key = broker_key(name, ":dedup");
	s->dedup_exp_key = broker_key(name, ":dedup:exp");
	if (cluster_enabled())
		s->live_prefix = broker_key(name, ":daemon:");
	if (s->name == NULL || s->key == NULL || s->dlq_key == NULL || s->dedup_key == NULL ||
	    s->dedup_exp_key == NULL || (cluster_enabled() && s->live_prefix == NULL)) {
		stream_free(s);
		return NULL;
	}
	s->slot = cluster_key_slot(name, strlen(name));	/* = its keys' slot */
	s->conf = *config_stream(B.cfg, name);
	s->conf.next = NULL;
	s->m.name = s->name;
	/* Keep declaration order stable for stats and metrics. */
	for (tail = &B.streams; *tail != NULL; tail = &(*tail)->next)
		;
	*tail = s;
	return s;
}

static void
broker_link_metrics(void)
{
	struct metrics_stream **mt = NULL;
	struct stream *s;

	for (s = B.streams; s != NULL; s = s->next) {
		if (mt != NULL)
			*mt = &s->m;
		mt = &s->m.next;
		s->m.next = NULL;
	}
}

const struct metrics_stream *
broker_metrics(void)
{
	broker_link_metrics();
	return B.streams ? &B.streams->m : NULL;
}

static void reader_state(struct redis_link *l, int up, void *arg);

static struct group *
group_find(struct stream *s, const char *name)
{
	for (struct group *g = s->groups; g != NULL; g = g->next)
		if (strcmp(g->name, name) == 0)
			return g;
	return NULL;
}

static void
group_free(struct group *g)
{
	free(g->name);
	free(g->delay_key);
	free(g->owners_key);
	free(g->fails_key);
	free(g->read_consumer);
	free(g);
}

static struct group *
group_get(struct stream *s, const char *name)
{
	struct group *g = group_find(s, name), **tail;
	char suffix[PROTO_MAX_NAME + 16];

	if (g != NULL)
		return g;
	if ((g = calloc(1, sizeof(*g))) == NULL)
		return NULL;
	g->stream = s;
	g->name = strdup(name);
	snprintf(suffix, sizeof(suffix), ":delay:%s", name);
	g->delay_key = broker_key(s->name, suffix);
	snprintf(suffix, sizeof(suffix), ":owners:%s", name);
	g->owners_key = broker_key(s->name, suffix);
	snprintf(suffix, sizeof(suffix), ":fails:%s", name);
	g->fails_key = broker_key(s->name, suffix);
	if (g->name == NULL || g->delay_key == NULL || g->owners_key == NULL ||
	    g->fails_key == NULL) {
		group_free(g);
		return NULL;
	}
	g->m.name = g->name;
	for (tail = &s->groups; *tail != NULL; tail = &(*tail)->next)
		;
	*tail = g;
	/* metrics walk groups through m.next */
	{
		struct metrics_group **mt = &s->m.groups;
		while (*mt != NULL)
			mt = &(*mt)->next;
		*mt = &g->m;
	}
	return g;
}

/* On a cluster the reader connects to its stream's master, wherever the
 * slot map says that is now. */
static void
group_reader_follow(struct group *g)
{
	char host[256];
	int port;

	if (g->reader != NULL && cluster_slot_addr(g->stream->slot, host, sizeof(host),
	    &port) == 0)
		redis_link_set_addr(g->reader, host, port);
}

/* The reader link exists while the group has subscriptions. */
static int
group_ensure_reader(struct group *g)
{
	char name[64];

	if (g->reader != NULL)
		return 0;
	snprintf(name, sizeof(name), "reader:%.40s", g->name);
	g->reader = redis_link_new(B.base, name, reader_state, g);
	if (g->reader == NULL)
		return -1;
	if (cluster_enabled())
		group_reader_follow(g);	/* or once a master is known */
	else
		redis_link_start(g->reader);
	return 0;
}

/* CLIENT UNBLOCK of the running read, sent where the reader is connected
 * (a client id means nothing on another server). */
static void
group_end_read(struct group *g)
{
	struct redis_link *l = stream_cmd(g->stream);

	if (g->reader_id > 0 && redis_link_same_server(l, g->reader))
		redis_cmd(l, NULL, NULL, "CLIENT UNBLOCK %lld", g->reader_id);
}

static void
reader_id_done(redisReply *r, void *arg)
{
	struct group *g = arg;

	if (r != NULL && r->type == REDIS_REPLY_INTEGER)
		g->reader_id = r->integer;
}

static void
reader_state(struct redis_link *l, int up, void *arg)
{
	struct group *g = arg;

	g->reader_id = 0;
	if (!up) {
		g->reading = 0;
		return;
	}
	redis_cmd(l, reader_id_done, g, "CLIENT ID");
	group_fetch(g);
}

/* The sub a blocked read waits for is leaving: end the read now, so that
 * entries arriving meanwhile are not read for a consumer that is gone. */
static void
group_unblock(struct group *g, const struct sub *s)
{
	if (g->reading && g->read_uid == s->uid)
		group_end_read(g);
}

/* ---- subscriptions ---- */

static long
sub_credit(const struct sub *s)
{
	return s->prefetch - (long)s->inflight.count;
}

/* Whether the sub can take deliveries now; keeps the paused gauge. */
static int
sub_can_take(struct sub *s)
{
	int ok = s->ready && !s->recovering && s->conn != NULL &&
	    s->conn->state == CONN_OPEN && !B.stopping;
	int paused = ok && (sub_credit(s) <= 0 || conn_output_full(s->conn));

	if (paused != s->paused) {
		s->paused = paused;
		if (paused)
			s->group->m.paused_consumers++;
		else
			s->group->m.paused_consumers--;
	}
	return ok && !paused;
}

static struct sub *
sub_lookup(uint64_t uid)
{
	return idmap_get(&B.subs, uid);
}

/* Next sub to serve: of those that can take entries, the one served
 * least so far (reads come back with varying numbers of entries, and this
 * evens them out); ties go round-robin from after the last one served. */
static struct sub *
group_next_sub(struct group *g)
{
	struct sub *s = g->rr ? g->rr : g->subs, *best = NULL, *best_next = NULL;

	for (int i = 0; i < g->nsubs && s != NULL; i++) {
		struct sub *cur = s;
		s = s->group_next ? s->group_next : g->subs;
		if (sub_can_take(cur) && (best == NULL || cur->served < best->served)) {
			best = cur;
			best_next = s;
		}
	}
	if (best != NULL)
		g->rr = best_next;
	return best;
}

/* A newcomer starts level with the least served, not at zero (it would
 * take every read until it caught up). */
static uint64_t
group_min_served(const struct group *g)
{
	uint64_t min = UINT64_MAX;

	for (const struct sub *x = g->subs; x != NULL; x = x->group_next)
		if (x->served < min)
			min = x->served;
	return min == UINT64_MAX ? 0 : min;
}

/* 0, or -1 when delivering closed the connection (over its output limit)
 * and so freed s. */
static int
sub_deliver(struct sub *s, const char *id, long attempt, const redisReply *fields)
{
	struct group *g = s->group;
	struct proto_delivery d = { 0 };
	uint64_t ms = 0, seq = 0, uid = s->uid;

	if (proto_parse_id(id, &ms, &seq) != 0)
		return 0;
	d.sub = s->id;
	d.stream = g->stream->name;
	d.group = g->name;
	d.id = id;
	d.attempt = attempt;
	d.ts = (long long)ms;
	for (size_t i = 0; fields != NULL && i + 1 < fields->elements; i += 2) {
		const redisReply *k = fields->element[i], *v = fields->element[i + 1];
		if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
			continue;
		if (strcmp(k->str, "data") == 0) {
			d.data_json = v->str;
			d.data_len = v->len;
		} else if (strcmp(k->str, "type") == 0) {
			d.type = v->str;
			d.type_len = v->len;
		} else if (strcmp(k->str, "source") == 0) {
			d.source = v->str;
			d.source_len = v->len;
		}
	}
	/* Entries others wrote: data must still be JSON on the wire (a string
	 * if it is not JSON, an object of all fields if absent; invalid
	 * UTF-8 becomes U+FFFD). */
	if (d.data_json != NULL && !proto_json_valid(d.data_json, d.data_len))
		proto_put_string(B.foreign, d.data_json, d.data_len);
	else if (d.data_json == NULL) {
		evbuffer_add(B.foreign, "{", 1);
		for (size_t i = 0; fields != NULL && i + 1 < fields->elements; i += 2) {
			const redisReply *k = fields->element[i], *v = fields->element[i + 1];
			if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
				continue;
			if (evbuffer_get_length(B.foreign) > 1)
				evbuffer_add(B.foreign, ",", 1);
			proto_put_string(B.foreign, k->str, k->len);
			evbuffer_add(B.foreign, ":", 1);
			proto_put_string(B.foreign, v->str, v->len);
		}
		evbuffer_add(B.foreign, "}", 1);
	}
	if (evbuffer_get_length(B.foreign) > 0) {
		d.data_len = evbuffer_get_length(B.foreign);
		d.data_json = (const char *)evbuffer_pullup(B.foreign, -1);
	}
	proto_encode_delivery(B.scratch, &d);
	evbuffer_drain(B.foreign, evbuffer_get_length(B.foreign));
	g->avg_bytes = (g->avg_bytes * 7 + evbuffer_get_length(B.scratch)) / 8;
	/* Counted before it is written: conn_write may close the connection,
	 * which releases the sub's in-flight entries and frees the sub. */
	idset_add(&s->inflight, ms, seq, util_now_ns(), (uint32_t)attempt);
	s->served++;
	g->m.delivered++;
	if (attempt > 1)
		g->m.redelivered++;
	conn_write(s->conn, B.scratch);
	return sub_lookup(uid) != NULL ? 0 : -1;
}

/* Release ids held by consumer (chunked: Lua's unpack has a limit).  p is
 * the request to answer when done, or NULL. */
static void release_done(redisReply *r, void *arg);

static void
broker_release(struct group *g, const char *consumer, const char **ids, size_t n,
    int64_t due_ms, const char *retry, const char *why, struct pending *p)
{
	char due[24];
	const char **argv;

	if (p == NULL && (p = pending_new(NULL, 0, NULL)) == NULL)
		return;
	argv = malloc((BROKER_RELEASE_CHUNK + 10) * sizeof(*argv));
	if (argv == NULL) {
		pending_error(p, "overloaded", "out of memory");
		pending_free(p);
		return;
	}
	p->group = g;
	p->waiting = (int)((n + BROKER_RELEASE_CHUNK - 1) / BROKER_RELEASE_CHUNK);
	snprintf(due, sizeof(due), "%lld", (long long)due_ms);
	for (size_t off = 0; off < n; off += BROKER_RELEASE_CHUNK) {
		size_t k = n - off < BROKER_RELEASE_CHUNK ? n - off : BROKER_RELEASE_CHUNK;
		int argc = 0;
		argv[argc++] = g->stream->key;
		argv[argc++] = g->stream->dlq_key;
		argv[argc++] = g->delay_key;
		argv[argc++] = g->fails_key;
		argv[argc++] = "release";
		argv[argc++] = g->name;
		argv[argc++] = consumer;
		argv[argc++] = due;
		argv[argc++] = retry;
		argv[argc++] = why;
		for (size_t i = 0; i < k; i++)
			argv[argc++] = ids[off + i];
		if (broker_script(g->stream, release_done, p, 4, argc, argv, NULL) != 0)
			release_done(NULL, p);
	}
	free(argv);
}

static void
release_done(redisReply *r, void *arg)
{
	struct pending *p = arg;
	struct group *g = p->group;

	broker_check_noscript(r);
	if (r == NULL || redis_reply_is_error(r)) {
		log_warn("broker", p->conn_id, "%s/%s: release failed (%s); the entries "
		    "return after the ack deadline", g->stream->name, g->name,
		    r ? r->str : "Redis not reachable");
		p->failed = 1;
	}
	if (--p->waiting > 0)
		return;
	if (p->failed)
		pending_error(p, "unavailable", "Redis is not reachable");
	else
		pending_ok(p);
	pending_free(p);
	group_sweep(g);
}

/* Ids of all deliveries a sub still holds, as strings in one block. */
#define BROKER_ID_LEN 44
static size_t
sub_inflight_ids(struct sub *s, char **block, const char ***ids)
{
	size_t n = s->inflight.count, i = 0, k = 0;
	const struct idset_slot *sl;

	*block = malloc(n * BROKER_ID_LEN + 1);
	*ids = malloc((n + 1) * sizeof(**ids));
	if (*block == NULL || *ids == NULL) {
		free(*block);
		free(*ids);
		*block = NULL;
		*ids = NULL;
		return 0;
	}
	while ((sl = idset_next(&s->inflight, &i)) != NULL && k < n) {
		char *p = *block + k * BROKER_ID_LEN;
		snprintf(p, BROKER_ID_LEN, "%llu-%llu", (unsigned long long)sl->ms,
		    (unsigned long long)sl->seq);
		(*ids)[k++] = p;
	}
	return k;
}

/* Unlink and free; its unacknowledged entries go back to the group.  why
 * is noted in their failure log. */
static void
sub_close(struct sub *s, struct pending *p, const char *why)
{
	struct group *g = s->group;
	char *block = NULL;
	const char **ids = NULL;
	size_t n = sub_inflight_ids(s, &block, &ids);

	if (n > 0)
		broker_release(g, s->consumer, ids, n, 0, "", why, p);
	else if (p != NULL) {
		pending_ok(p);
		pending_free(p);
	}
	if (s->ready)
		redis_cmd(stream_cmd(g->stream), NULL, NULL, "HDEL %s %s", g->owners_key,
		    s->consumer);
	group_unblock(g, s);
	free(block);
	free(ids);
	sub_free(s);
}

static void
group_drop_reader(struct group *g)
{
	if (g->reader != NULL) {
		redis_link_free(g->reader);
		g->reader = NULL;
	}
	g->reading = 0;
}

static void
sub_free(struct sub *s)
{
	struct group *g = s->group;
	struct conn *c = s->conn;

	if (s->paused)
		g->m.paused_consumers--;
	if (s->group_prev)
		s->group_prev->group_next = s->group_next;
	else
		g->subs = s->group_next;
	if (s->group_next)
		s->group_next->group_prev = s->group_prev;
	if (g->rr == s)
		g->rr = s->group_next;
	g->nsubs--;
	g->m.active_consumers--;
	if (c != NULL) {
		struct sub **pp = &c->subs;
		while (*pp != NULL && *pp != s)
			pp = &(*pp)->conn_next;
		if (*pp == s)
			*pp = s->conn_next;
		c->nsubs--;
	}
	idmap_del(&B.subs, s->uid);
	idset_free(&s->inflight);
	free(s->consumer);
	free(s);
	/* An idle group gives its connection back; a running read ends
	 * within BROKER_READ_BLOCK_MS and read_done drops it then. */
	if (g->nsubs == 0 && !g->reading)
		group_drop_reader(g);
}

/* ---- reading new entries ---- */

/* Entries Redis handed to consumer that will not reach it: back to the
 * group, with the delivery count they had before (they were not
 * delivered, so the next delivery shows the right attempt). */
static void
group_give_back(struct group *g, const char *consumer, const char **ids,
    const long *attempts, size_t n)
{
	char retry[24];
	size_t i = 0;

	while (i < n) {	/* one release per run of equal attempts */
		size_t j = i + 1;
		while (j < n && attempts[j] == attempts[i])
			j++;
		snprintf(retry, sizeof(retry), "%ld", attempts[i] - 1);
		broker_release(g, consumer, ids + i, j - i, 0, retry, "", NULL);
		i = j;
	}
}

/* Deliver one XREADGROUP/claim batch to sub.  What cannot go to it goes
 * back to the group: all of it when the sub left while Redis was
 * answering, and whatever is beyond its prefetch (a read and a claim for
 * the same sub may both have been out).  entries: [[id, fields], ...], or
 * [[id, attempt, fields], ...] when claimed. */
static void
group_hand_out(struct group *g, uint64_t uid, const char *consumer,
    const redisReply *entries, int claimed)
{
	struct sub *s = sub_lookup(uid);
	const char **back = calloc(entries->elements + 1, sizeof(*back));
	long *attempts = calloc(entries->elements + 1, sizeof(*attempts));
	size_t nback = 0;

	if (back == NULL || attempts == NULL) {
		free(back);
		free(attempts);
		log_err("broker", 0, "%s/%s: out of memory handing out entries; they return "
		    "after the ack deadline", g->stream->name, g->name);
		return;
	}
	if (s != NULL && s->conn != NULL && s->conn->state == CONN_OPEN &&
	    conn_over_limit(s->conn)) {
		/* it did not take the last batch: no more for it */
		metrics.slow_consumer_closes++;
		conn_close(s->conn, "slow_consumer", 0);
		s = sub_lookup(uid);
	}
	if (s != NULL && (s->conn == NULL || s->conn->state != CONN_OPEN || B.stopping))
		s = NULL;
	for (size_t i = 0; i < entries->elements; i++) {
		const redisReply *e = entries->element[i];
		long attempt = 1;
		if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
		    e->element[0]->type != REDIS_REPLY_STRING)
			continue;
		if (claimed) {	/* [id, attempt, fields] */
			if (e->elements < 3 || e->element[1]->type != REDIS_REPLY_INTEGER)
				continue;
			attempt = (long)e->element[1]->integer;
		}
		if (s == NULL || sub_credit(s) <= 0) {
			back[nback] = e->element[0]->str;
			attempts[nback++] = attempt;
		} else if (sub_deliver(s, e->element[0]->str, attempt,
		    e->element[claimed ? 2 : 1]) != 0)
			s = NULL;	/* its connection closed: the rest go back */
	}
	if (nback > 0)
		group_give_back(g, consumer, back, attempts, nback);
	free(back);
	free(attempts);
}

static void
read_done(redisReply *r, void *arg)
{
	struct group *g = arg;
	char *consumer = g->read_consumer;

	g->reading = 0;
	g->read_consumer = NULL;
	if (r == NULL) {
		free(consumer);
		return;		/* reader lost: reader_state resumes it */
	}
	if (redis_reply_is_error(r)) {
		broker_work_error(g->stream, g, "read", r);
		if (redis_reply_error_is(r, "NOGROUP"))
			redis_cmd(stream_cmd(g->stream), NULL, NULL, "XGROUP CREATE %s %s 0 MKSTREAM",
			    g->stream->key, g->name);
		else	/* MOVED, ASK, CLUSTERDOWN: the slot moves or has no master */
			cluster_refresh_soon();
		free(consumer);
		if (g->nsubs == 0 || B.stopping)
			group_drop_reader(g);
		return;		/* the next tick reads again: no loop of errors */
	} else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
	    r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements >= 2 &&
	    r->element[0]->element[1]->type == REDIS_REPLY_ARRAY) {
		g->backlog = (long)r->element[0]->element[1]->elements >= g->read_count;
		group_hand_out(g, g->read_uid, consumer, r->element[0]->element[1], 0);
	} else
		g->backlog = 0;	/* the BLOCK timed out: nothing waits */
	free(consumer);
	if (g->nsubs == 0 || B.stopping) {
		group_drop_reader(g);
		return;
	}
	group_fetch(g);
}

static void
group_fetch(struct group *g)
{
	struct sub *s;
	char count[24], block[24];
	long n;

	if (g->reading || g->reader == NULL || !redis_link_up(g->reader) || B.stopping)
		return;
	if ((s = group_next_sub(g)) == NULL)
		return;
	/* Fair and fast: while entries wait (the last read came back full)
	 * each turn takes what its prefetch allows, the same for everyone;
	 * when reads keep up, small shares spread what trickles in. */
	n = sub_credit(s);
	if (n > BROKER_READ_MAX)
		n = BROKER_READ_MAX;
	if (!g->backlog && n > BROKER_READ_MAX / g->nsubs)
		n = BROKER_READ_MAX / g->nsubs > 0 ? BROKER_READ_MAX / g->nsubs : 1;
	/* and no more than fits the output it may still fill (large
	 * entries): a read's entries all go out, whatever their size */
	if (g->avg_bytes > 0) {
		long room = (long)(conn_output_room(s->conn) / g->avg_bytes);
		if (n > room)
			n = room > 0 ? room : 1;
	}
	g->read_count = n;
	snprintf(count, sizeof(count), "%ld", n);
	snprintf(block, sizeof(block), "%d", BROKER_READ_BLOCK_MS);
	g->read_consumer = strdup(s->consumer);
	if (g->read_consumer == NULL)
		return;
	{
		const char *argv[] = { "XREADGROUP", "GROUP", g->name, s->consumer,
		    "COUNT", count, "BLOCK", block, "STREAMS", g->stream->key, ">" };
		if (redis_cmd_argv(g->reader, read_done, g, 11, argv, NULL) != 0) {
			free(g->read_consumer);
			g->read_consumer = NULL;
			return;
		}
	}
	g->reading = 1;
	g->read_uid = s->uid;
}

/* ---- the claim sweep: deadlines, releases, dead letters, recovery ---- */

static void
claim_done(redisReply *r, void *arg)
{
	struct pending *p = arg;
	struct group *g = p->group;
	struct sub *s;
	int more = 0;

	g->sweeping = 0;
	broker_check_noscript(r);
	if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
	    r->element[0]->type == REDIS_REPLY_ARRAY) {
		const redisReply *out = r->element[0], *last = r->element[3];
		long long scanned = r->element[2]->integer;
		g->m.dead_lettered += (uint64_t)r->element[1]->integer;
		group_hand_out(g, p->sub_uid, json_string_value(p->result), out, 1);
		/* after: handing out may have closed its connection */
		s = sub_lookup(p->sub_uid);
		/* Entries came back: there may be more right now. */
		more = out->elements > 0 || r->element[1]->integer > 0;
		/* Sweeps go on through the pending list from where the last one
		 * stopped, so entries held back by a nack delay cannot hide the
		 * rest; a short scan means the end: from the start next time. */
		if (!p->n) {
			if (scanned < BROKER_CLAIM_SCAN || last->type != REDIS_REPLY_STRING ||
			    last->len == 0)
				strcpy(g->claim_from, "-");
			else {
				snprintf(g->claim_from, sizeof(g->claim_from), "(%s", last->str);
				more = 1;
			}
		}
		if (s != NULL && s->recovering && p->n) {
			/* One pass over its own pending list, never twice:
			 * on from the last entry looked at, until none is left. */
			if (scanned == 0 || last->type != REDIS_REPLY_STRING || last->len == 0) {
				s->recovering = 0;
				group_fetch(g);
			} else
				snprintf(s->recover_from, sizeof(s->recover_from), "(%s", last->str);
			more = 1;	/* next recovering sub, or the rest */
		}
	} else
		broker_work_error(g->stream, g, "claim", r);
	pending_free(p);
	if (more)
		group_sweep(g);
}

/* Sweep for the next subscription that can take entries: its own pending
 * entries first while it recovers, else anything past its deadline. */
static void
group_sweep(struct group *g)
{
	struct sub *s = NULL;
	struct pending *p;
	char min_idle[24], count[24], maxatt[24], now[24], scan[24];

	if (g->sweeping || B.stopping || !redis_link_up(stream_cmd(g->stream)))
		return;
	for (struct sub *x = g->subs; x != NULL; x = x->group_next)
		if (x->recovering && x->ready && sub_credit(x) > 0) {
			s = x;
			break;
		}
	if (s == NULL) {
		s = group_next_sub(g);
		if (s == NULL)
			return;
	}
	if ((p = pending_new(NULL, 0, NULL)) == NULL)
		return;
	p->group = g;
	p->sub_uid = s->uid;
	p->n = (size_t)s->recovering;	/* this sweep is the sub's recovery */
	p->result = json_string(s->consumer);
	snprintf(min_idle, sizeof(min_idle), "%ld", s->recovering ? 0 : g->stream->conf.ack_timeout_ms);
	snprintf(count, sizeof(count), "%ld", sub_credit(s) < BROKER_CLAIM_MAX ?
	    sub_credit(s) : BROKER_CLAIM_MAX);
	snprintf(maxatt, sizeof(maxatt), "%ld", g->stream->conf.max_attempts);
	snprintf(now, sizeof(now), "%lld", (long long)util_wall_ms());
	snprintf(scan, sizeof(scan), "%d", BROKER_CLAIM_SCAN);
	{
		const char *argv[] = { g->stream->key, g->stream->dlq_key, g->delay_key,
		    g->fails_key, "claim", g->name, s->consumer, min_idle, count, maxatt, now,
		    s->recovering ? s->consumer : "", scan,
		    s->recovering ? s->recover_from : g->claim_from[0] ? g->claim_from : "-" };
		if (broker_script(g->stream, claim_done, p, 4, 14, argv, NULL) != 0) {
			pending_free(p);
			return;
		}
	}
	g->sweeping = 1;
}

/* ---- publish ---- */

static void
pub_count_error(struct stream *s, const char *code)
{
	int e = metrics_pub_error_index(code);

	if (s != NULL && e >= 0)
		s->m.pub_errors[e]++;
}

/* Only streams already known: refused requests must not make new ones
 * (a client could otherwise grow the daemon at will). */
void
broker_pub_rejected(const char *stream, const char *code)
{
	pub_count_error(stream_find(stream), code);
}

static void
pub_fail(struct pending *p, const char *code, const char *msg)
{
	pub_count_error(p->stream, code);
	pending_error(p, code, msg);
	pending_free(p);
}

/* A pub reply that is no "stored": answer it (1) or go on (0). */
static int
pub_failed(struct pending *p, const redisReply *r)
{
	broker_check_noscript(r);
	if (r == NULL) {
		pub_count_error(p->stream, "indeterminate");
		pending_error(p, "indeterminate", "the connection to Redis broke before it "
		    "answered; retry with the same msgid");
		return 1;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		if (redis_reply_transient(r))
			cluster_refresh_soon();	/* the durable link does not follow MOVED */
		pub_count_error(p->stream, "unavailable");
		pending_error(p, "unavailable", redis_reply_error_is(r, "TRYAGAIN") ?
		    "the stream's hash slot is moving between Redis Cluster nodes; nothing "
		    "was stored; retry" : r->str);
		return 1;
	}
	return 0;
}

/* The ok reply of a stored pub into B.scratch: an id, or ids of a batch
 * (script replies are [id, dup] pairs). */
static void
pub_format(struct pending *p, const redisReply *r)
{
	proto_ok_begin(B.scratch, p->rid);
	if (r->type == REDIS_REPLY_STRING) {		/* plain XADD */
		evbuffer_add(B.scratch, ",\"id\":\"", 7);
		evbuffer_add(B.scratch, r->str, r->len);
		evbuffer_add(B.scratch, "\"", 1);
	} else if (r->type == REDIS_REPLY_ARRAY && !p->batch && r->elements == 1) {
		const redisReply *e = r->element[0];
		evbuffer_add_printf(B.scratch, ",\"id\":\"%s\"%s", e->element[0]->str,
		    e->element[1]->integer ? ",\"dup\":true" : "");
	} else if (r->type == REDIS_REPLY_ARRAY) {
		int dups = 0;
		evbuffer_add(B.scratch, ",\"ids\":[", 8);
		for (size_t i = 0; i < r->elements; i++) {
			const redisReply *e = r->element[i];
			evbuffer_add_printf(B.scratch, "%s\"%s\"", i ? "," : "", e->element[0]->str);
			dups += e->element[1]->integer != 0;
		}
		evbuffer_add(B.scratch, "]", 1);
		if (dups > 0) {
			evbuffer_add(B.scratch, ",\"dups\":[", 9);
			for (size_t i = 0, k = 0; i < r->elements; i++)
				if (r->element[i]->element[1]->integer)
					evbuffer_add_printf(B.scratch, "%s%zu", k++ ? "," : "", i);
			evbuffer_add(B.scratch, "]", 1);
		}
	}
	proto_end(B.scratch);
}

static void
pub_confirmed(struct pending *p)
{
	struct conn *c = pending_conn(p);

	p->stream->m.published += p->n;
	metrics_observe(&p->stream->m.publish, (util_now_ns() - p->start_ns) / 1e9);
	if (c != NULL)
		conn_reply(c, p->seq, B.scratch);
	else
		evbuffer_drain(B.scratch, evbuffer_get_length(B.scratch));
}

/* durability = redis: stored is confirmed. */
static void
pub_done(redisReply *r, void *arg)
{
	struct pending *p = arg;

	if (!pub_failed(p, r)) {
		pub_format(p, r);
		pub_confirmed(p);
	}
	pending_free(p);
}

/* durability = replicas:N: stored, now wait for WAIT's answer.  The reply
 * text waits in p->text. */
static void
pub_stored(redisReply *r, void *arg)
{
	struct pending *p = arg;
	size_t len;

	if (pub_failed(p, r)) {
		p->failed = 1;
		return;
	}
	pub_format(p, r);
	len = evbuffer_get_length(B.scratch);
	if ((p->text = malloc(len)) != NULL) {
		evbuffer_remove(B.scratch, p->text, len);
		p->text_len = len;
	} else
		evbuffer_drain(B.scratch, len);
}

static void
pub_replicated(redisReply *r, void *arg)
{
	struct pending *p = arg;
	char msg[160];

	if (p->failed || p->text == NULL) {
		if (!p->failed)
			pending_error(p, "indeterminate", "stored, but out of memory confirming it");
		pending_free(p);
		return;
	}
	if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer >= p->stream->conf.replicas) {
		evbuffer_add(B.scratch, p->text, p->text_len);
		pub_confirmed(p);
	} else {
		/* On the master but not confirmed by enough replicas: a
		 * failover could lose it, so it is not "ok"; it was stored, so
		 * it is not "unavailable" either. */
		if (r != NULL && r->type == REDIS_REPLY_INTEGER)
			snprintf(msg, sizeof(msg), "stored on the master but only %lld of %ld "
			    "replicas confirmed within %ld ms; retry with the same msgid",
			    r->integer, p->stream->conf.replicas, p->stream->conf.replicas_timeout_ms);
		else
			snprintf(msg, sizeof(msg), "stored on the master, but replicas could not "
			    "confirm it (%.60s); retry with the same msgid", r == NULL ?
			    "connection lost" : r->type == REDIS_REPLY_ERROR ? r->str : "no count");
		pub_count_error(p->stream, "indeterminate");
		pending_error(p, "indeterminate", msg);
	}
	pending_free(p);
}

/*
 * One WAIT confirms every write made before it on its connection, and a
 * WAIT holds the connection until it returns: whatever is sent behind it
 * waits in Redis.  So a durable link has at most one WAIT in flight, and
 * the replicas:N pubs sent meanwhile gather in one batch for the next:
 * a pub waits at most about two timeouts, however many loop iterations it
 * took to arrive.  Queued WAITs would each wait in turn while the replicas
 * are away.  A batch is bounded by max_inflight, as its pubs are commands
 * in flight behind the WAIT.
 */
#define BROKER_WAIT_BATCH_MIN 64

struct wait_batch {
	struct wait_batch *next;
	struct redis_link *link;	/* the durable link the pubs went on */
	size_t          n, cap;
	long            replicas, timeout_ms;
	struct pending **p;
};

static int
wait_inflight(const struct redis_link *l)
{
	for (const struct wait_batch *w = B.waits_sent; w != NULL; w = w->next)
		if (w->link == l)
			return 1;
	return 0;
}

static void
wait_done(redisReply *r, void *arg)
{
	struct wait_batch *w = arg, **wp;

	for (wp = &B.waits_sent; *wp != NULL && *wp != w; wp = &(*wp)->next)
		;
	if (*wp == w)
		*wp = w->next;
	if (B.waits != NULL && B.wait_ev != NULL)
		event_active(B.wait_ev, EV_TIMEOUT, 0);	/* a batch may be free to go */
	for (size_t i = 0; i < w->n; i++)
		pub_replicated(r, w->p[i]);
	free(w->p);
	free(w);
}

static void
wait_send(struct wait_batch *w)
{
	w->next = B.waits_sent;
	B.waits_sent = w;
	if (redis_cmd(w->link, wait_done, w, "WAIT %ld %ld", w->replicas, w->timeout_ms) != 0)
		wait_done(NULL, w);	/* link gone: each is indeterminate */
}

/* Sends the WAIT of each batch whose link has none in flight (of every
 * batch when stopping: the links go next and answer them all).  A failed
 * send answers its pubs at once, which may take more requests of a paused
 * connection and so add batches meanwhile: those go in front of the ones
 * kept. */
static void
wait_flush(evutil_socket_t fd, short what, void *arg)
{
	struct wait_batch *w, *list = B.waits, *kept = NULL, **tail = &kept;

	(void)fd;
	(void)what;
	(void)arg;
	B.waits = NULL;
	while ((w = list) != NULL) {
		list = w->next;
		if (!B.stopping && wait_inflight(w->link)) {
			w->next = NULL;
			*tail = w;
			tail = &w->next;
		} else
			wait_send(w);
	}
	*tail = B.waits;
	B.waits = kept;
}

/* p's entries were sent on durable link l: confirm them with the next
 * WAIT there.  -1 when out of memory. */
static int
wait_enqueue(struct pending *p, struct redis_link *l)
{
	const struct stream_conf *sc = &p->stream->conf;
	struct wait_batch *w = B.waits;

	while (w != NULL && w->link != l)
		w = w->next;
	if (w == NULL) {
		if ((w = calloc(1, sizeof(*w))) == NULL ||
		    (w->p = calloc(BROKER_WAIT_BATCH_MIN, sizeof(*w->p))) == NULL) {
			free(w);
			return -1;
		}
		w->cap = BROKER_WAIT_BATCH_MIN;
		w->link = l;
		w->next = B.waits;
		B.waits = w;
		if (!wait_inflight(l))
			event_active(B.wait_ev, EV_TIMEOUT, 0);
	}
	if (w->n == w->cap) {
		size_t cap = w->cap * 2;
		struct pending **np = realloc(w->p, cap * sizeof(*np));
		if (np == NULL)
			return -1;
		w->p = np;
		w->cap = cap;
	}
	if (sc->replicas > w->replicas)
		w->replicas = sc->replicas;
	if (sc->replicas_timeout_ms > w->timeout_ms)
		w->timeout_ms = sc->replicas_timeout_ms;
	w->p[w->n++] = p;
	return 0;
}

/* Fields of one entry: data, then type and source when known. */
static int
pub_fields(const struct conn *c, const struct proto_msg *m, const char **argv,
    size_t *argvlen)
{
	int n = 0;

	argv[n] = "data"; argvlen[n++] = 4;
	argv[n] = m->data; argvlen[n++] = m->data_len;
	if (m->type != NULL) {
		argv[n] = "type"; argvlen[n++] = 4;
		argv[n] = m->type; argvlen[n++] = strlen(m->type);
	}
	if (c->name[0] != '\0') {
		argv[n] = "source"; argvlen[n++] = 6;
		argv[n] = c->name; argvlen[n++] = strlen(c->name);
	}
	return n;
}

static int
pub_send_xadd(struct redis_link *l, redis_cb *cb, struct conn *c, struct stream *s,
    const struct proto_msg *m, struct pending *p)
{
	const char *argv[9];
	size_t argvlen[9];
	int n = 0;

	argv[n] = "XADD"; argvlen[n++] = 4;
	argv[n] = s->key; argvlen[n++] = strlen(s->key);
	argv[n] = "*"; argvlen[n++] = 1;
	n += pub_fields(c, m, argv + n, argvlen + n);
	return redis_cmd_argv_ordered(l, cb, p, n, argv, argvlen);
}

/* Batches and msgid dedup: one atomic script call. */
static int
pub_send_script(struct redis_link *l, redis_cb *cb, struct conn *c, struct stream *s,
    const struct proto_request *req, struct pending *p)
{
	size_t max = 6 + req->nmsgs * 9, argc = 0;
	const char **argv = malloc(max * sizeof(*argv));
	size_t *argvlen = malloc(max * sizeof(*argvlen));
	char window[24], nbuf[24];
	char (*nfs)[4] = malloc(req->nmsgs * 4);
	int rc = -1;

	if (argv == NULL || argvlen == NULL || nfs == NULL)
		goto out;
	argv[argc] = s->key; argvlen[argc++] = strlen(s->key);
	argv[argc] = s->dedup_key; argvlen[argc++] = strlen(s->dedup_key);
	argv[argc] = s->dedup_exp_key; argvlen[argc++] = strlen(s->dedup_exp_key);
	snprintf(window, sizeof(window), "%ld", s->conf.dedup_window_ms);
	snprintf(nbuf, sizeof(nbuf), "%zu", req->nmsgs);
	argv[argc] = "pub"; argvlen[argc++] = 3;
	argv[argc] = window; argvlen[argc++] = strlen(window);
	argv[argc] = nbuf; argvlen[argc++] = strlen(nbuf);
	for (size_t i = 0; i < req->nmsgs; i++) {
		const struct proto_msg *m = &req->msgs[i];
		size_t at;
		int k;
		argv[argc] = m->msgid ? m->msgid : "";
		argvlen[argc] = strlen(argv[argc]);
		argc++;
		at = argc++;
		k = pub_fields(c, m, argv + argc, argvlen + argc);
		snprintf(nfs[i], sizeof(nfs[i]), "%d", k);
		argv[at] = nfs[i]; argvlen[at] = strlen(nfs[i]);
		argc += k;
	}
	rc = broker_script_on(l, 1, cb, p, 3, (int)argc, argv, argvlen);
out:
	free(argv);
	free(argvlen);
	free(nfs);
	return rc;
}

static void broker_pub(struct conn *c, uint64_t seq, struct proto_request *req);

/* Keep a pub for when Redis is back (0), or refuse (-1).  Bounded by
 * max_inflight like the commands in flight. */
static int
pub_park(struct conn *c, uint64_t seq, struct proto_request *req)
{
	struct parked *pk;

	if (B.cfg->pub_wait_ms <= 0 || B.stopping ||
	    B.nparked >= (size_t)B.cfg->max_inflight || proto_request_own(req) != 0 ||
	    (pk = calloc(1, sizeof(*pk))) == NULL)
		return -1;
	pk->conn_id = c->id;
	pk->seq = seq;
	pk->deadline_ns = util_now_ns() + (uint64_t)B.cfg->pub_wait_ms * 1000000ull;
	pk->req = *req;
	memset(req, 0, sizeof(*req));	/* the caller's free is now a no-op */
	if (B.parked == NULL)
		B.parked_tail = &B.parked;
	*B.parked_tail = pk;
	B.parked_tail = &pk->next;
	B.nparked++;
	return 0;
}

enum unpark { UNPARK_SEND, UNPARK_EXPIRED, UNPARK_ALL };

/* Send parked pubs in arrival order (Redis is back), or refuse those past
 * their wait, or all of them (stopping). */
static void
pub_unpark(enum unpark how)
{
	uint64_t now = util_now_ns();
	struct parked *list = B.parked, *pk;

	if (how == UNPARK_SEND) {
		/* Detach first: a pub whose link is still down parks again. */
		B.parked = NULL;
		B.nparked = 0;
	}
	while ((pk = how == UNPARK_SEND ? list : B.parked) != NULL) {
		struct conn *c = conn_find(pk->conn_id);
		if (how == UNPARK_EXPIRED && pk->deadline_ns > now)
			break;	/* FIFO: the rest expire later */
		if (how == UNPARK_SEND)
			list = pk->next;
		else {
			B.parked = pk->next;
			B.nparked--;
		}
		if (c != NULL && how == UNPARK_SEND)
			broker_pub(c, pk->seq, &pk->req);
		else if (c != NULL) {
			pub_count_error(stream_get(pk->req.stream), "unavailable");
			reply_error(c, pk->seq, pk->req.rid, "unavailable",
			    "Redis did not come back within pub_wait_ms; nothing was stored");
		}
		proto_request_free(&pk->req);
		free(pk);
	}
}

static void
broker_pub(struct conn *c, uint64_t seq, struct proto_request *req)
{
	struct stream *s = stream_get(req->stream);
	struct redis_link *l;
	redis_cb *cb = pub_done;
	struct pending *p;
	int rc;

	if (s == NULL || (p = pending_new(c, seq, req->rid)) == NULL) {
		reply_error(c, seq, req->rid, "overloaded", "out of memory");
		return;
	}
	p->stream = s;
	p->n = req->nmsgs;
	p->batch = req->batch;
	l = stream_cmd(s);
	if (s->conf.replicas > 0) {
		l = stream_durable(s);
		cb = pub_stored;
	}
	if ((l == NULL || !redis_link_up(l)) && pub_park(c, seq, req) == 0) {
		pending_free(p);
		return;
	}
	if (l == NULL || !redis_link_up(l)) {
		pub_fail(p, "unavailable", "Redis is not reachable; nothing was stored");
		return;
	}
	if (redis_link_inflight(l) >= (size_t)B.cfg->max_inflight) {
		pub_fail(p, "overloaded", "too many commands waiting for Redis; nothing was stored");
		return;
	}
	if (!req->batch && req->msgs[0].msgid == NULL)
		rc = pub_send_xadd(l, cb, c, s, &req->msgs[0], p);
	else
		rc = pub_send_script(l, cb, c, s, req, p);
	if (rc == 0 && cb == pub_stored && wait_enqueue(p, l) != 0 &&
	    redis_cmd(l, pub_replicated, p, "WAIT %ld %ld", s->conf.replicas,
	    s->conf.replicas_timeout_ms) != 0)
		log_err("broker", c->id, "%s: a replicas pub cannot be confirmed", s->name);
	if (rc != 0)
		pub_fail(p, "unavailable", "could not send to Redis; nothing was stored");
}

/* ---- subscribe ---- */

/* Create the group if needed and take the consumer name (broker.lua own). */
static int
broker_own(struct group *g, const char *consumer, const char *from, redis_cb *cb,
    void *arg)
{
	const char *argv[] = { g->stream->key, g->owners_key, "own", g->name, consumer,
	    B.me, from, stream_live_prefix(g->stream) };

	/* A stream new to us has no liveness key of ours yet: set it before
	 * the name is ours, or another daemon would take us for dead. */
	if (cluster_enabled())
		stream_live_set(g->stream);
	return broker_script(g->stream, cb, arg, 2, 8, argv, NULL);
}

static struct sub *
conn_sub(struct conn *c, long id)
{
	for (struct sub *s = c->subs; s != NULL; s = s->conn_next)
		if (s->id == id)
			return s;
	return NULL;
}

static int
group_consumer_live(const struct group *g, const char *consumer)
{
	for (const struct sub *s = g->subs; s != NULL; s = s->group_next)
		if (strcmp(s->consumer, consumer) == 0)
			return 1;
	return 0;
}

/* The group exists and the consumer name is ours (broker.lua "own").  The
 * reply goes last: conn_reply may close the connection or handle lines
 * already buffered (an unsub of this very sub), freeing s. */
static void
sub_created(redisReply *r, void *arg)
{
	struct pending *p = arg;
	struct sub *s = sub_lookup(p->sub_uid);
	struct conn *c;
	const char *code = NULL, *msg = NULL, *consumer = json_string_value(p->result);
	long id = (long)p->n;

	if (consumer == NULL)
		consumer = "";

	broker_check_noscript(r);
	if (r == NULL || redis_reply_is_error(r)) {
		code = r == NULL || !redis_reply_error_is(r, "ERR") ? "unavailable" : "bad_request";
		msg = r ? r->str : "Redis connection lost";
	} else if ((r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
	    strcmp(r->str, "in_use") == 0) {
		code = "consumer_in_use";
		msg = "that consumer is subscribed to this stream and group through another streambusd";
	}
	if (s != NULL && code != NULL)
		sub_free(s);
	else if (s != NULL) {
		s->ready = 1;
		s->recovering = 1;	/* its own pending entries first */
		strcpy(s->recover_from, "-");
		if (group_ensure_reader(s->group) != 0)
			log_err("broker", p->conn_id, "cannot create a reader for %s", s->group->name);
		group_sweep(s->group);
	} else if (code == NULL)	/* unsubscribed or gone meanwhile: give the name back */
		redis_cmd(stream_cmd(p->group->stream), NULL, NULL, "HDEL %s %s",
		    p->group->owners_key, consumer);
	if ((c = pending_conn(p)) != NULL) {
		if (code != NULL)
			reply_error(c, p->seq, p->rid, code, msg);
		else {
			proto_ok_begin(B.scratch, p->rid);
			evbuffer_add_printf(B.scratch, ",\"sub\":%ld,\"consumer\":", id);
			proto_put_string(B.scratch, consumer, strlen(consumer));
			proto_end(B.scratch);
			conn_reply(c, p->seq, B.scratch);
		}
	}
	pending_free(p);
}

static void
broker_sub(struct conn *c, uint64_t seq, struct proto_request *req)
{
	struct stream *st;
	struct group *g;
	struct sub *s;
	struct pending *p;
	char defname[PROTO_MAX_NAME + 32];
	const char *consumer = req->consumer, *from = "$";

	if (c->nsubs >= B.cfg->max_subs_per_conn) {
		metrics.subs_refused++;
		reply_error(c, seq, req->rid, "overloaded", "too many subscriptions on this connection");
		return;
	}
	if (consumer == NULL) {
		snprintf(defname, sizeof(defname), "%s-%llu", c->name[0] ? c->name : "client",
		    (unsigned long long)c->id);
		consumer = defname;
	}
	if (!redis_link_up(broker_link_for(req->stream))) {
		reply_error(c, seq, req->rid, "unavailable", "Redis is not reachable");
		return;
	}
	if ((st = stream_get(req->stream)) == NULL || (g = group_get(st, req->group)) == NULL) {
		reply_error(c, seq, req->rid, "overloaded", "out of memory");
		return;
	}
	if (group_consumer_live(g, consumer)) {
		reply_error(c, seq, req->rid, "consumer_in_use",
		    "that consumer is subscribed to this stream and group on a live connection");
		return;
	}
	if ((s = calloc(1, sizeof(*s))) == NULL || (s->consumer = strdup(consumer)) == NULL ||
	    (p = pending_new(c, seq, req->rid)) == NULL) {
		if (s != NULL)
			free(s->consumer);
		free(s);
		reply_error(c, seq, req->rid, "overloaded", "out of memory");
		return;
	}
	s->uid = ++B.next_uid;
	s->id = ++c->next_sub_id;
	s->conn_id = c->id;
	s->conn = c;
	s->group = g;
	s->prefetch = req->prefetch > 0 ? req->prefetch : st->conf.prefetch;
	s->served = group_min_served(g);
	idset_init(&s->inflight);
	idmap_put(&B.subs, s->uid, s);
	s->conn_next = c->subs;
	c->subs = s;
	c->nsubs++;
	s->group_next = g->subs;
	if (g->subs)
		g->subs->group_prev = s;
	g->subs = s;
	g->nsubs++;
	g->m.active_consumers++;
	p->sub_uid = s->uid;
	p->group = g;
	p->n = (size_t)s->id;
	p->result = json_string(s->consumer);
	if (req->from != NULL)
		from = strcmp(req->from, "all") == 0 ? "0" : strcmp(req->from, "new") == 0 ?
		    "$" : req->from;
	if (broker_own(g, s->consumer, from, sub_created, p) != 0)
		sub_created(NULL, p);
}

/* ---- ack, nack, touch, unsub ---- */

static void
ack_done(redisReply *r, void *arg)
{
	struct pending *p = arg;
	struct conn *c = pending_conn(p);

	if (r != NULL && r->type == REDIS_REPLY_INTEGER) {
		p->group->m.consumed += (uint64_t)r->integer;
		if (c != NULL) {
			proto_ok_begin(B.scratch, p->rid);
			evbuffer_add_printf(B.scratch, ",\"acked\":%lld", r->integer);
			proto_end(B.scratch);
			conn_reply(c, p->seq, B.scratch);
		}
	} else
		pending_error(p, "unavailable", r ? r->str : "Redis connection lost; "
		    "the entries stay pending until acknowledged again");
	pending_free(p);
}

/* Take acknowledged ids out of the sub's in-flight set (frees prefetch
 * credit).  Returns how many of them may have a failure log: those seen
 * at a later attempt, or not known here; they are moved to the front. */
static size_t
sub_forget(struct sub *s, const char **ids, size_t n)
{
	uint64_t now = util_now_ns();
	size_t logged = 0;

	for (size_t i = 0; i < n; i++) {
		uint64_t ms, seq, at;
		uint32_t attempt = 0;
		if (proto_parse_id(ids[i], &ms, &seq) == 0 &&
		    idset_take(&s->inflight, ms, seq, &at, &attempt) == 0)
			metrics_observe(&s->group->m.processing, (now - at) / 1e9);
		if (attempt != 1) {
			const char *t = ids[logged];
			ids[logged++] = ids[i];
			ids[i] = t;
		}
	}
	return logged;
}

static void
sub_touch(struct sub *s, const char *const *ids, size_t n)
{
	uint64_t now = util_now_ns();

	for (size_t i = 0; i < n; i++) {
		uint64_t ms, seq, at;
		uint32_t attempt;
		if (proto_parse_id(ids[i], &ms, &seq) == 0 &&
		    idset_take(&s->inflight, ms, seq, &at, &attempt) == 0)
			idset_add(&s->inflight, ms, seq, now, attempt);
	}
}

static void
sub_kick(struct sub *s)
{
	if (s->recovering)
		group_sweep(s->group);
	group_fetch(s->group);
	sub_can_take(s);
}

/* HEAD... IDS... TAIL... on link l. */
static int
broker_cmd_ids(struct redis_link *l, redis_cb *cb, void *arg, const char **head, int nhead,
    const char **ids, size_t n, const char **tail, int ntail)
{
	const char **argv = malloc((n + (size_t)nhead + (size_t)ntail) * sizeof(*argv));
	int argc = 0, rc;

	if (argv == NULL)
		return -1;
	for (int i = 0; i < nhead; i++)
		argv[argc++] = head[i];
	for (size_t i = 0; i < n; i++)
		argv[argc++] = ids[i];
	for (int i = 0; i < ntail; i++)
		argv[argc++] = tail[i];
	rc = redis_cmd_argv(l, cb, arg, argc, argv, NULL);
	free(argv);
	return rc;
}

static void
touch_done(redisReply *r, void *arg)
{
	struct pending *p = arg;

	if (r != NULL && r->type == REDIS_REPLY_ARRAY)
		pending_ok(p);
	else
		pending_error(p, "unavailable", r ? r->str : "Redis connection lost");
	pending_free(p);
}

static void
dead_done(redisReply *r, void *arg)
{
	struct pending *p = arg;

	broker_check_noscript(r);
	if (r != NULL && r->type == REDIS_REPLY_INTEGER) {
		p->group->m.dead_lettered += (uint64_t)r->integer;
		pending_ok(p);
	} else
		pending_error(p, "unavailable", r ? r->str : "Redis connection lost");
	pending_free(p);
}

/* Default nack delay: retry_delay_ms doubled per attempt, capped. */
static int64_t
nack_delay_ms(const struct stream_conf *sc, uint32_t attempt)
{
	int64_t d = sc->retry_delay_ms;

	for (uint32_t i = 1; i < attempt && d < sc->retry_max_ms; i++)
		d *= 2;
	return d < sc->retry_max_ms ? d : sc->retry_max_ms;
}

static void
broker_nack(struct conn *c, struct sub *s, struct pending *p, struct proto_request *req)
{
	struct stream *st = s->group->stream;
	uint32_t attempt = 1;
	int64_t delay = req->delay_ms;

	for (size_t i = 0; i < req->nids; i++) {
		uint64_t ms, seq, at;
		uint32_t a;
		if (proto_parse_id(req->ids[i], &ms, &seq) == 0 &&
		    idset_take(&s->inflight, ms, seq, &at, &a) == 0 && a > attempt)
			attempt = a;
	}
	if (req->dead) {
		char now[24];
		const char **argv = malloc((req->nids + 8) * sizeof(*argv));
		int argc = 0;
		if (argv == NULL) {
			pending_error(p, "overloaded", "out of memory");
			pending_free(p);
			return;
		}
		snprintf(now, sizeof(now), "%lld", (long long)util_wall_ms());
		argv[argc++] = st->key;
		argv[argc++] = st->dlq_key;
		argv[argc++] = s->group->delay_key;
		argv[argc++] = s->group->fails_key;
		argv[argc++] = "dead";
		argv[argc++] = s->group->name;
		argv[argc++] = req->reason ? req->reason : "nack";
		argv[argc++] = now;
		for (size_t i = 0; i < req->nids; i++)
			argv[argc++] = req->ids[i];
		if (broker_script(st, dead_done, p, 4, argc, argv, NULL) != 0)
			dead_done(NULL, p);
		free(argv);
	} else {
		if (delay < 0)
			delay = nack_delay_ms(&st->conf, attempt);
		char why[PROTO_MAX_REASON + 8];
		snprintf(why, sizeof(why), "nack%s%s", req->reason ? " " : "",
		    req->reason ? req->reason : "");
		for (char *q = why; *q; q++)	/* the log separates with ',' */
			if (*q == ',')
				*q = ';';
		broker_release(s->group, s->consumer, req->ids, req->nids,
		    delay > 0 ? util_wall_ms() + delay : 0, "", why, p);
	}
	(void)c;
	sub_kick(s);
}

static void
broker_sub_op(struct conn *c, uint64_t seq, struct proto_request *req)
{
	struct sub *s = conn_sub(c, req->sub);
	struct pending *p;
	static const char *justid[] = { "JUSTID" };
	struct redis_link *l = s != NULL ? stream_cmd(s->group->stream) : NULL;
	size_t nlog;
	const char *xack[] = { "XACK", s ? s->group->stream->key : "", s ? s->group->name : "" };
	const char *hdel[] = { "HDEL", s ? s->group->fails_key : "" };
	const char *xclaim[] = { "XCLAIM", s ? s->group->stream->key : "",
	    s ? s->group->name : "", s ? s->consumer : "", "0" };

	if (s == NULL) {
		reply_error(c, seq, req->rid, "no_such_sub", "no live subscription with that number");
		return;
	}
	if ((p = pending_new(c, seq, req->rid)) == NULL) {
		reply_error(c, seq, req->rid, "overloaded", "out of memory");
		return;
	}
	p->group = s->group;
	p->sub_uid = s->uid;
	if (req->op == OP_UNSUB) {
		sub_close(s, p, "unsub");
		return;
	}
	if (!redis_link_up(l)) {
		pending_error(p, "unavailable", "Redis is not reachable");
		pending_free(p);
		return;
	}
	switch (req->op) {
	case OP_ACK:
		nlog = sub_forget(s, req->ids, req->nids);
		if (broker_cmd_ids(l, ack_done, p, xack, 3, req->ids, req->nids, NULL, 0) != 0)
			ack_done(NULL, p);
		else if (nlog > 0)	/* acknowledged entries need no failure log */
			broker_cmd_ids(l, NULL, NULL, hdel, 2, req->ids, nlog, NULL, 0);
		sub_kick(s);
		break;
	case OP_TOUCH:
		sub_touch(s, req->ids, req->nids);
		if (broker_cmd_ids(l, touch_done, p, xclaim, 5, req->ids, req->nids, justid, 1) != 0)
			touch_done(NULL, p);
		break;
	case OP_NACK:
		broker_nack(c, s, p, req);
		break;
	default:
		pending_free(p);
		break;
	}
}

/* ---- stats ---- */

static json_t *
stats_group_json(const redisReply *info)
{
	json_t *o = json_object();

	for (size_t i = 0; i + 1 < info->elements; i += 2) {
		const redisReply *k = info->element[i], *v = info->element[i + 1];
		if (k->type != REDIS_REPLY_STRING)
			continue;
		if (strcmp(k->str, "name") == 0 && v->type == REDIS_REPLY_STRING)
			json_object_set_new(o, "group", json_stringn(v->str, v->len));
		else if (strcmp(k->str, "consumers") == 0)
			json_object_set_new(o, "consumers", json_integer(v->integer));
		else if (strcmp(k->str, "pending") == 0)
			json_object_set_new(o, "pending", json_integer(v->integer));
		else if (strcmp(k->str, "lag") == 0)
			json_object_set_new(o, "lag", v->type == REDIS_REPLY_INTEGER ?
			    json_integer(v->integer) : json_null());
	}
	return o;
}

/* Gauges of the groups this daemon knows, from one XINFO GROUPS reply. */
static void
stats_update_gauges(struct stream *st, const redisReply *groups)
{
	for (size_t i = 0; i < groups->elements; i++) {
		json_t *o = stats_group_json(groups->element[i]);
		struct group *g = group_find(st, json_string_value(json_object_get(o, "group")) ?
		    json_string_value(json_object_get(o, "group")) : "");
		if (g != NULL) {
			g->m.pending = (uint64_t)json_integer_value(json_object_get(o, "pending"));
			g->m.lag = (uint64_t)json_integer_value(json_object_get(o, "lag"));
		}
		json_decref(o);
	}
}

struct stats_part {
	struct pending *p;
	json_t         *entry;		/* the stream's object in the reply */
	struct stream  *stream;		/* NULL for streams not known here */
	int             field;		/* 0 length, 1 dlq_length, 2 groups */
};

static void
stats_finish(struct pending *p)
{
	struct conn *c;

	if (--p->waiting > 0)
		return;
	if ((c = pending_conn(p)) != NULL) {
		if (p->failed)
			reply_error(c, p->seq, p->rid, "unavailable", "Redis is not reachable");
		else {
			proto_ok_begin(B.scratch, p->rid);
			evbuffer_add(B.scratch, ",\"streams\":", 11);
			proto_put_json(B.scratch, p->result);
			proto_end(B.scratch);
			conn_reply(c, p->seq, B.scratch);
		}
	}
	pending_free(p);
}

static void
stats_done(redisReply *r, void *arg)
{
	struct stats_part *sp = arg;
	json_t *groups;

	if (r == NULL)
		sp->p->failed = 1;
	else if (sp->field < 2)
		json_object_set_new(sp->entry, sp->field ? "dlq_length" : "length",
		    json_integer(r->type == REDIS_REPLY_INTEGER ? r->integer : 0));
	else {
		groups = json_array();
		if (r->type == REDIS_REPLY_ARRAY) {
			for (size_t i = 0; i < r->elements; i++) {
				json_t *o = stats_group_json(r->element[i]);
				const char *gname = json_string_value(json_object_get(o, "group"));
				struct group *g = sp->stream && gname ? group_find(sp->stream, gname) : NULL;
				/* backpressure on this daemon: subscriptions not fed */
				if (g != NULL)
					json_object_set_new(o, "paused",
					    json_integer((json_int_t)g->m.paused_consumers));
				json_array_append_new(groups, o);
			}
			if (sp->stream != NULL)
				stats_update_gauges(sp->stream, r);
		}
		json_object_set_new(sp->entry, "groups", groups);
	}
	stats_finish(sp->p);
	free(sp);
}

static int
stats_query(struct pending *p, const char *name)
{
	json_t *entry = json_object();
	char *key = broker_key(name, ""), *dlq = broker_key(name, ":dlq");
	const char *cmds[3][4] = {
		{ "XLEN", key }, { "XLEN", dlq }, { "XINFO", "GROUPS", key },
	};
	int argcs[3] = { 2, 2, 3 }, rc = 0;

	json_object_set_new(entry, "stream", json_string(name));
	json_array_append_new(p->result, entry);
	for (int f = 0; f < 3; f++) {
		struct stats_part *sp = calloc(1, sizeof(*sp));
		if (sp == NULL) {
			rc = -1;
			break;
		}
		*sp = (struct stats_part){ p, entry, stream_find(name), f };
		p->waiting++;
		if (redis_cmd_argv(broker_link_for(name), stats_done, sp, argcs[f], cmds[f],
		    NULL) != 0) {
			p->waiting--;
			free(sp);
			rc = -1;
			break;
		}
	}
	free(key);
	free(dlq);
	return rc;
}

static void
broker_stats(struct conn *c, uint64_t seq, struct proto_request *req)
{
	struct pending *p = pending_new(c, seq, req->rid);
	int rc = 0;

	if (p == NULL || (p->result = json_array()) == NULL) {
		if (p != NULL)
			pending_free(p);
		reply_error(c, seq, req->rid, "overloaded", "out of memory");
		return;
	}
	if (!broker_redis_up()) {
		pending_error(p, "unavailable", "Redis is not reachable");
		pending_free(p);
		return;
	}
	p->waiting = 1;		/* held until every query is sent */
	if (req->stream != NULL)
		rc = stats_query(p, req->stream);
	else
		for (struct stream *s = B.streams; s != NULL && rc == 0; s = s->next)
			rc = stats_query(p, s->name);
	if (rc != 0)
		p->failed = 1;
	stats_finish(p);
}

/* Periodic gauges: XINFO GROUPS of every stream with groups here. */
static void
gauges_done(redisReply *r, void *arg)
{
	struct stream *st = arg;

	if (r != NULL && r->type == REDIS_REPLY_ARRAY)
		stats_update_gauges(st, r);
}

void
broker_poll_gauges(void)
{
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		if (s->groups != NULL)
			redis_cmd(stream_cmd(s), gauges_done, s, "XINFO GROUPS %s", s->key);
}

/* ---- retention ---- */

static void
retain_done(redisReply *r, void *arg)
{
	struct stream *st = arg;

	broker_check_noscript(r);
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
		if (r != NULL && r->type == REDIS_REPLY_ERROR)
			broker_work_error(st, NULL, "retention", r);
		return;
	}
	if (r->element[1]->integer > 0) {
		st->m.trimmed_unread += (uint64_t)r->element[1]->integer;
		log_warn("broker", 0, "%s: maxlen_hard: maxlen %ld removed %lld entries not yet "
		    "acknowledged by every group", st->name, st->conf.maxlen,
		    r->element[1]->integer);
	} else if (st->conf.maxlen > 0 && r->element[0]->integer > st->conf.maxlen * 2 &&
	    !st->over_maxlen) {
		/* Said once per episode: groups lag, the stream keeps growing. */
		st->over_maxlen = 1;
		log_warn("broker", 0, "%s: %lld entries, over twice maxlen %ld: groups are not "
		    "acknowledging; nothing they need is trimmed (see maxlen_hard)", st->name,
		    r->element[0]->integer, st->conf.maxlen);
	} else if (r->element[0]->integer <= st->conf.maxlen)
		st->over_maxlen = 0;
}

/* Trim acknowledged entries of every stream (broker.lua "retain"). */
static void
broker_retain(void)
{
	char maxlen[24];

	for (struct stream *s = B.streams; s != NULL; s = s->next) {
		const char *argv[] = { s->key, "retain", "-", maxlen,
		    s->conf.maxlen_hard ? "1" : "0" };
		snprintf(maxlen, sizeof(maxlen), "%ld", s->conf.maxlen);
		broker_script(s, retain_done, s, 1, 5, argv, NULL);
	}
}

/* ---- several daemons: liveness and reaping ---- */

static void
reap_done(redisReply *r, void *arg)
{
	struct group *g = arg;

	broker_check_noscript(r);
	if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
		log_info("broker", 0, "%s/%s: released %lld entries of consumers whose daemon "
		    "is gone", g->stream->name, g->name, r->integer);
		group_sweep(g);
	} else if (r != NULL && r->type == REDIS_REPLY_ERROR)
		broker_work_error(g->stream, g, "reap", r);
}

static void
group_reap(struct group *g, int grace_over)
{
	char idle[24];
	const char **argv = malloc((g->nsubs + 9) * sizeof(*argv));
	int argc = 0;

	if (argv == NULL)
		return;
	snprintf(idle, sizeof(idle), "%d", BROKER_IDLE_CONSUMER_MS);
	argv[argc++] = g->stream->key;
	argv[argc++] = g->owners_key;
	argv[argc++] = "reap";
	argv[argc++] = g->name;
	argv[argc++] = B.me;
	argv[argc++] = stream_live_prefix(g->stream);
	argv[argc++] = grace_over ? "1" : "0";
	argv[argc++] = idle;
	for (struct sub *x = g->subs; x != NULL; x = x->group_next)
		argv[argc++] = x->consumer;
	broker_script(g->stream, reap_done, g, 2, argc, argv, NULL);
	free(argv);
}

/* Our liveness record where the owners of s's consumers are checked: the
 * one key (s NULL), or on a cluster the key in s's slot (scripts touch only
 * that slot). */
static void
stream_live_set(const struct stream *s)
{
	redis_cmd(s != NULL ? stream_cmd(s) : B.cmd, NULL, NULL, "SET %s%s %d PX %d",
	    s != NULL ? s->live_prefix : B.live_prefix, B.me, (int)getpid(),
	    BROKER_LIVE_TTL_MS);
}

static int
stream_has_subs(const struct stream *s)
{
	for (const struct group *g = s->groups; g != NULL; g = g->next)
		if (g->nsubs > 0)
			return 1;
	return 0;
}

/* Our liveness records: the one key, or on a cluster one per stream we
 * hold consumers of, whose master is l (every master: l NULL). */
static void
broker_live_set(struct redis_link *l)
{
	if (!cluster_enabled()) {
		stream_live_set(NULL);
		return;
	}
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		if ((l == NULL || stream_cmd(s) == l) && stream_has_subs(s))
			stream_live_set(s);
}

/* Our liveness records, then the consumers of daemons without one. */
static void
broker_live(uint64_t now)
{
	int grace_over = now - B.start_ns > BROKER_GRACE_MS * 1000000ull;

	broker_live_set(NULL);
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		for (struct group *g = s->groups; g != NULL; g = g->next)
			group_reap(g, grace_over);
}

static void
broker_live_del(struct redis_link *l, const char *prefix)
{
	redis_cmd(l, NULL, NULL, "DEL %s%s", prefix, B.me);
}

void
broker_goodbye(void)
{
	if (!cluster_enabled()) {
		broker_live_del(B.cmd, B.live_prefix);
		return;
	}
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		broker_live_del(stream_cmd(s), s->live_prefix);
}

/* ---- dead letters: list and replay ---- */

static int
broker_is_digits(const char *s, size_t len)
{
	if (len == 0 || len > 18)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (s[i] < '0' || s[i] > '9')
			return 0;
	return 1;
}

/* One dead letter as a JSON object: data as the JSON it is, counts and
 * times as numbers, the rest as strings. */
static void
dlq_entry_json(struct evbuffer *out, const redisReply *e)
{
	const redisReply *f = e->element[1];

	evbuffer_add(out, "{\"id\":", 6);
	proto_put_string(out, e->element[0]->str, e->element[0]->len);
	for (size_t i = 0; f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2) {
		const redisReply *k = f->element[i], *v = f->element[i + 1];
		int raw;
		if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
		    strcmp(k->str, "id") == 0)
			continue;
		raw = strcmp(k->str, "data") == 0 ? proto_json_valid(v->str, v->len) :
		    (strcmp(k->str, "attempts") == 0 || strcmp(k->str, "dead_at") == 0) &&
		    broker_is_digits(v->str, v->len);
		evbuffer_add(out, ",", 1);
		proto_put_string(out, k->str, k->len);
		evbuffer_add(out, ":", 1);
		if (raw)
			evbuffer_add(out, v->str, v->len);
		else
			proto_put_string(out, v->str, v->len);
	}
	evbuffer_add(out, "}", 1);
}

static void
dlq_done(redisReply *r, void *arg)
{
	struct pending *p = arg;
	struct conn *c = pending_conn(p);

	if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
		pending_error(p, "unavailable", r && r->type == REDIS_REPLY_ERROR ? r->str :
		    "Redis connection lost");
		pending_free(p);
		return;
	}
	if (c != NULL) {
		proto_ok_begin(B.scratch, p->rid);
		evbuffer_add(B.scratch, ",\"entries\":[", 12);
		for (size_t i = 0, n = 0; i < r->elements; i++) {
			/* XREVRANGE answers newest first: oldest first on the wire */
			const redisReply *e = r->element[p->listing == 2 ? r->elements - 1 - i : i];
			if (e->type != REDIS_REPLY_ARRAY || e->elements < 2)
				continue;
			if (n++ > 0)
				evbuffer_add(B.scratch, ",", 1);
			dlq_entry_json(B.scratch, e);
		}
		evbuffer_add(B.scratch, "]", 1);
		/* a full page (or any range): where the next one starts */
		if (r->elements > 0 && (r->elements == p->n || p->listing)) {
			const redisReply *last = r->element[p->listing == 2 ? 0 :
			    r->elements - 1]->element[0];
			evbuffer_add(B.scratch, ",\"next\":\"", 9);
			evbuffer_add(B.scratch, last->str, last->len);
			evbuffer_add(B.scratch, "\"", 1);
		}
		proto_end(B.scratch);
		conn_reply(c, p->seq, B.scratch);
	}
	pending_free(p);
}

static void
replay_done(redisReply *r, void *arg)
{
	struct pending *p = arg;
	struct conn *c = pending_conn(p);

	broker_check_noscript(r);
	if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
		pending_error(p, "unavailable", r && r->type == REDIS_REPLY_ERROR ? r->str :
		    "Redis connection lost; retry to be sure: a replay is done once");
		pending_free(p);
		return;
	}
	log_info("broker", p->conn_id, "%s: replayed %zu dead letters",
	    json_string_value(p->result), r->elements);
	if (c != NULL) {
		proto_ok_begin(B.scratch, p->rid);
		evbuffer_add_printf(B.scratch, ",\"replayed\":%zu,\"ids\":[", r->elements);
		for (size_t i = 0; i < r->elements; i++) {
			if (i > 0)
				evbuffer_add(B.scratch, ",", 1);
			proto_put_string(B.scratch, r->element[i]->str, r->element[i]->len);
		}
		evbuffer_add(B.scratch, "]", 1);
		proto_end(B.scratch);
		conn_reply(c, p->seq, B.scratch);
	}
	pending_free(p);
}

/* dlq, replay and range (entries of the stream itself, for a live view
 * without a group: streambus-cli tail).  Asking about a stream does not make it known here (a
 * typo must not become a stream in stats and metrics): keys are built for
 * the request. */
static void
broker_dead_letters(struct conn *c, uint64_t seq, struct proto_request *req)
{
	struct pending *p;
	char count[24], limit[24], now[24];
	char *key = broker_key(req->stream, ""), *dlq_key = broker_key(req->stream, ":dlq");
	struct { const char *key, *dlq_key; } keys = { key, dlq_key }, *st = &keys;
	struct redis_link *l = broker_link_for(req->stream);
	int rc;

	if (key == NULL || dlq_key == NULL || (p = pending_new(c, seq, req->rid)) == NULL) {
		free(key);
		free(dlq_key);
		reply_error(c, seq, req->rid, "overloaded", "out of memory");
		return;
	}
	p->result = json_string(req->stream);
	p->n = (size_t)req->count;
	if (!redis_link_up(l)) {
		pending_error(p, "unavailable", "Redis is not reachable");
		pending_free(p);
		free(key);
		free(dlq_key);
		return;
	}
	if (req->op == OP_RANGE && req->last > 0) {
		const char *argv[] = { "XREVRANGE", st->key, "+", "-", "COUNT", count };
		snprintf(count, sizeof(count), "%ld", req->last);
		p->listing = 2;
		rc = redis_cmd_argv(l, dlq_done, p, 6, argv, NULL);
	} else if (req->op == OP_DLQ || req->op == OP_RANGE) {
		/* from: the "next" of the page before; entries after it */
		char from[64];
		const char *argv[] = { "XRANGE", req->op == OP_DLQ ? st->dlq_key : st->key, from,
		    "+", "COUNT", count };
		snprintf(from, sizeof(from), "%s%s", req->from ? "(" : "", req->from ? req->from : "-");
		snprintf(count, sizeof(count), "%ld", req->count);
		p->listing = req->op == OP_RANGE;
		rc = redis_cmd_argv(l, dlq_done, p, 6, argv, NULL);
	} else {
		const char *head[] = { "EVALSHA", B.sha, "2", st->key, st->dlq_key, "replay", "-",
		    now, req->all ? "1" : "0", limit };
		snprintf(now, sizeof(now), "%lld", (long long)util_wall_ms());
		snprintf(limit, sizeof(limit), "%d", PROTO_MAX_IDS);
		if (B.sha[0] == '\0') {
			head[0] = "EVAL";
			head[1] = broker_lua;
		}
		rc = broker_cmd_ids(l, replay_done, p, head, 10, req->ids, req->nids, NULL, 0);
	}
	if (rc != 0) {
		pending_error(p, "unavailable", "Redis is not reachable");
		pending_free(p);
	}
	free(key);
	free(dlq_key);
}

/* ---- dispatch ---- */

static void
broker_hello(struct conn *c, uint64_t seq, struct proto_request *req)
{
	if (req->name != NULL)
		snprintf(c->name, sizeof(c->name), "%s", req->name);
	proto_ok_begin(B.scratch, req->rid);
	evbuffer_add_printf(B.scratch, ",\"server\":\"streambusd\",\"version\":\"%s\","
	    "\"proto\":%d,\"max_line\":%ld,\"max_payload\":%ld", STREAMBUS_VERSION,
	    PROTO_VERSION, B.cfg->max_line, B.cfg->max_payload);
	proto_end(B.scratch);
	conn_reply(c, seq, B.scratch);
}

void
broker_handle(struct conn *c, uint64_t seq, struct proto_request *req)
{
	switch (req->op) {
	case OP_HELLO:
		broker_hello(c, seq, req);
		break;
	case OP_PING:
		reply_ok(c, seq, req->rid);
		break;
	case OP_PUB:
		broker_pub(c, seq, req);
		break;
	case OP_SUB:
		broker_sub(c, seq, req);
		break;
	case OP_ACK:
	case OP_NACK:
	case OP_TOUCH:
	case OP_UNSUB:
		broker_sub_op(c, seq, req);
		break;
	case OP_STATS:
		broker_stats(c, seq, req);
		break;
	case OP_DLQ:
	case OP_REPLAY:
	case OP_RANGE:
		broker_dead_letters(c, seq, req);
		break;
	case OP_BYE:
		reply_ok(c, seq, req->rid);
		conn_finish(c);
		break;
	case OP__COUNT:
		reply_error(c, seq, req->rid, "internal", "unhandled op");
		break;
	}
}

void
broker_conn_closed(struct conn *c)
{
	while (c->subs != NULL)
		sub_close(c->subs, NULL, B.stopping ? "shutdown" : "disconnect");
}

void
broker_conn_writable(struct conn *c)
{
	for (struct sub *s = c->subs; s != NULL; s = s->conn_next)
		if (sub_can_take(s)) {
			group_fetch(s->group);
			group_sweep(s->group);
		}
}

/* ---- life cycle ---- */

static void
cmd_state(struct redis_link *l, int up, void *arg)
{
	(void)arg;
	metrics.redis_up = broker_redis_up();
	if (!up) {
		B.sha[0] = '\0';
		return;
	}
	/* First on the connection, so every EVALSHA after it finds the script. */
	broker_load_script(l, NULL);
	pub_unpark(UNPARK_SEND);
	broker_live_set(l);
	/* Groups may have vanished with the data: recreate, then resume. */
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		for (struct group *g = s->groups; g != NULL; g = g->next) {
			if (g->nsubs == 0 || stream_cmd(s) != l)
				continue;
			for (struct sub *x = g->subs; x != NULL; x = x->group_next) {
				broker_own(g, x->consumer, "0", NULL, NULL);
				x->recovering = x->ready;
				strcpy(x->recover_from, "-");
			}
			group_sweep(g);
			group_fetch(g);
		}
}

/* Deliveries past their ack deadline belong to the claim sweep now: stop
 * counting them against the subscription's prefetch. */
static void
sub_expire(struct sub *s, uint64_t now)
{
	uint64_t deadline = (uint64_t)s->group->stream->conf.ack_timeout_ms * 1000000ull;
	const struct idset_slot *sl;
	size_t i = 0;
	int expired = 0;

	while ((sl = idset_next(&s->inflight, &i)) != NULL)
		if (now - sl->at_ns > deadline) {
			uint64_t at;
			uint32_t attempt;
			idset_take(&s->inflight, sl->ms, sl->seq, &at, &attempt);
			expired = 1;
		}
	if (expired)
		sub_can_take(s);
}

static void
broker_tick(evutil_socket_t fd, short what, void *arg)
{
	uint64_t now = util_now_ns();

	(void)fd;
	(void)what;
	(void)arg;
	metrics.redis_links = (uint64_t)redis_link_count();
	metrics.redis_up = broker_redis_up();
	pub_unpark(UNPARK_EXPIRED);
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		for (struct group *g = s->groups; g != NULL; g = g->next) {
			for (struct sub *x = g->subs; x != NULL; x = x->group_next)
				sub_expire(x, now);
			if (g->nsubs > 0) {
				group_sweep(g);
				group_fetch(g);
			}
		}
	if (now - B.last_poll_ns >= BROKER_POLL_MS * 1000000ull) {
		B.last_poll_ns = now;
		broker_poll_gauges();
	}
	/* Commands for a master that is down are not sent: no test first. */
	if (now - B.last_live_ns >= BROKER_LIVE_MS * 1000000ull && !B.stopping) {
		B.last_live_ns = now;
		broker_live(now);
	}
	if (now - B.last_retain_ns >= BROKER_RETAIN_MS * 1000000ull && !B.stopping) {
		B.last_retain_ns = now;
		broker_retain();
	}
}

static void
broker_unpark_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	pub_unpark(UNPARK_SEND);
}

/* Slots moved (failover, resharding): readers follow their stream's
 * master, and pubs parked for want of a master may go, after the loop
 * turn: a command being redirected right now was sent before them. */
static void
broker_map_changed(void)
{
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		for (struct group *g = s->groups; g != NULL; g = g->next)
			group_reader_follow(g);
	if (B.parked != NULL)
		event_active(B.unpark_ev, EV_TIMEOUT, 0);
}

static void durable_state(struct redis_link *l, int up, void *arg);

static const struct cluster_hooks broker_cluster_hooks = {
	cmd_state, durable_state, broker_map_changed
};

int
broker_init(struct event_base *base, const struct config *cfg)
{
	struct timeval tv = { 0, BROKER_TICK_MS * 1000 };

	memset(&B, 0, sizeof(B));
	B.base = base;
	B.cfg = cfg;
	redis_configure(cfg);
	if (idmap_init(&B.subs, 4096) != 0 || (B.scratch = evbuffer_new()) == NULL ||
	    (B.foreign = evbuffer_new()) == NULL)
		return -1;
	B.start_ns = util_now_ns();
	{
		char host[256] = "localhost";
		gethostname(host, sizeof(host) - 1);
		snprintf(B.me, sizeof(B.me), "%s/%s", host, cfg->listen);
	}
	if (asprintf(&B.live_prefix, "%sdaemon:", cfg->prefix) < 0) {
		B.live_prefix = NULL;
		return -1;
	}
	/* Before any stream: the key names depend on it. */
	if (cfg->cluster != NULL && cluster_start(base, cfg, &broker_cluster_hooks) != 0)
		return -1;
	if (!cluster_enabled() &&
	    (B.cmd = redis_link_new(base, "command", cmd_state, NULL)) == NULL)
		return -1;
	B.tick = event_new(base, -1, EV_PERSIST, broker_tick, NULL);
	B.wait_ev = event_new(base, -1, 0, wait_flush, NULL);
	B.unpark_ev = event_new(base, -1, 0, broker_unpark_cb, NULL);
	if (B.wait_ev == NULL || B.unpark_ev == NULL || B.tick == NULL ||
	    event_add(B.tick, &tv) != 0)
		return -1;
	/* Declared streams exist from the start (stats, metrics). */
	for (const struct stream_conf *sc = cfg->streams; sc != NULL; sc = sc->next)
		stream_get(sc->name);
	broker_ensure_durable(cfg);
	if (B.cmd != NULL)
		redis_link_start(B.cmd);
	return 0;
}

/* Pubs of replicas:N streams parked while the durable link was down. */
static void
durable_state(struct redis_link *l, int up, void *arg)
{
	(void)l;
	(void)arg;
	if (up)
		pub_unpark(UNPARK_SEND);
}

/* The durable link exists once any stream wants replicas. */
static void
broker_ensure_durable(const struct config *cfg)
{
	int need = cfg->defaults.replicas > 0;

	for (const struct stream_conf *sc = cfg->streams; sc != NULL && !need; sc = sc->next)
		need = sc->replicas > 0;
	if (need && cluster_enabled())
		cluster_want_durable();
	else if (need && B.durable == NULL &&
	    (B.durable = redis_link_new(B.base, "durable", durable_state, NULL)) != NULL)
		redis_link_start(B.durable);
}

void
broker_reconfigure(const struct config *cfg)
{
	B.cfg = cfg;
	for (struct stream *s = B.streams; s != NULL; s = s->next) {
		s->conf = *config_stream(cfg, s->name);
		s->conf.next = NULL;
	}
	for (const struct stream_conf *sc = cfg->streams; sc != NULL; sc = sc->next)
		stream_get(sc->name);
	broker_ensure_durable(cfg);
}

int
broker_redis_up(void)
{
	return cluster_enabled() ? cluster_up() : redis_link_up(B.cmd);
}

/* Running reads are ended (CLIENT UNBLOCK), not cut: entries Redis is
 * handing out right now come back and are released (read_done), instead
 * of waiting for their ack deadline under a consumer that is leaving. */
void
broker_stop_delivering(void)
{
	B.stopping = 1;
	pub_unpark(UNPARK_ALL);
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		for (struct group *g = s->groups; g != NULL; g = g->next) {
			if (g->reading && g->reader_id > 0)
				group_end_read(g);
			else
				group_drop_reader(g);
		}
}

int
broker_idle(void)
{
	for (struct stream *s = B.streams; s != NULL; s = s->next)
		for (struct group *g = s->groups; g != NULL; g = g->next)
			if (g->reading)
				return 0;
	return redis_link_inflight(B.cmd) == 0 && redis_link_inflight(B.durable) == 0 &&
	    cluster_inflight() == 0;
}

void
broker_free(void)
{
	struct stream *s, *sn;
	struct group *g, *gn;

	if (B.tick != NULL)
		event_free(B.tick);
	B.stopping = 1;
	wait_flush(-1, 0, NULL);	/* answers what still waits (link freed below) */
	if (B.wait_ev != NULL)
		event_free(B.wait_ev);
	B.wait_ev = NULL;
	if (B.unpark_ev != NULL)
		event_free(B.unpark_ev);
	for (s = B.streams; s != NULL; s = s->next)
		for (g = s->groups; g != NULL; g = g->next)
			group_drop_reader(g);
	pub_unpark(UNPARK_ALL);
	redis_link_free(B.cmd);
	redis_link_free(B.durable);
	B.cmd = B.durable = NULL;
	cluster_stop();
	for (s = B.streams; s != NULL; s = sn) {
		sn = s->next;
		for (g = s->groups; g != NULL; g = gn) {
			gn = g->next;
			group_free(g);
		}
		stream_free(s);
	}
	idmap_free(&B.subs);
	while (pending_ncached > 0)
		free(pending_cache[--pending_ncached]);
	free(B.live_prefix);
	if (B.scratch != NULL)
		evbuffer_free(B.scratch);
	if (B.foreign != NULL)
		evbuffer_free(B.foreign);
	memset(&B, 0, sizeof(B));
}
