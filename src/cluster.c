/*
 * cluster.c: Redis Cluster.  A control link asks CLUSTER SLOTS at start,
 * every CLUSTER_REFRESH_MS, and soon after any sign of change (a MOVED
 * answer, a master's link lost).  It talks to a seed or a known master,
 * moving on to the next when the one it has does not answer.
 *
 * Nodes and their links are kept until exit (at most CLUSTER_MAX_NODES):
 * the links of a node that serves no slot are stopped, not freed, so that
 * nothing holding one (a WAIT batch) is left with a dangling pointer, and
 * such a node is given the address of a new one when the table is full.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "cluster.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define CLUSTER_MAX_NODES      64
#define CLUSTER_REFRESH_MS     5000	/* map re-read, in case a change went unseen */
#define CLUSTER_SOON_MS        200	/* after a sign of change; also the retry pace */
#define CLUSTER_ASK_TIMEOUT_MS 1000	/* CLUSTER SLOTS unanswered: try another node */

struct cluster_node {
	char               host[256];
	int                port;
	int                in_map;	/* serves at least one slot */
	struct redis_link *cmd, *durable;
};

static struct {
	struct event_base     *base;
	struct cluster_hooks   hooks;
	struct config_hostport seeds[CONFIG_MAX_HOSTS];
	int                    nseeds;
	struct cluster_node    nodes[CLUSTER_MAX_NODES];
	int                    nnodes;
	int16_t                map[CLUSTER_SLOTS];	/* node index, -1 none */
	int                    known;		/* a map was read */
	int                    want_durable;
	struct redis_link     *ctl;		/* asks CLUSTER SLOTS */
	int                    ctl_next;	/* next address to try */
	int                    ctl_misses;	/* ticks the ctl link was down */
	int                    asking;		/* CLUSTER SLOTS in flight */
	uint64_t               asked_ns;
	int                    masters;		/* in the map */
	int                    soon;		/* a refresh is wanted */
	struct event          *timer;
	int                    on;
} C;

/* CRC16-CCITT (XMODEM), as Redis Cluster uses for key slots. */
static uint16_t
cluster_crc16(const unsigned char *p, size_t len)
{
	uint16_t crc = 0;

	while (len-- > 0) {
		crc ^= (uint16_t)(*p++ << 8);
		for (int i = 0; i < 8; i++)
			crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
	}
	return crc;
}

unsigned
cluster_key_slot(const char *key, size_t len)
{
	const char *open = memchr(key, '{', len), *close;

	if (open != NULL) {
		close = memchr(open + 1, '}', len - (size_t)(open + 1 - key));
		if (close != NULL && close > open + 1) {
			key = open + 1;
			len = (size_t)(close - key);
		}
	}
	return cluster_crc16((const unsigned char *)key, len) & (CLUSTER_SLOTS - 1);
}

int
cluster_enabled(void)
{
	return C.on;
}

static void cluster_schedule(long ms);
static struct redis_link *cluster_redirect(struct redis_link *from, int slot,
    const char *host, int port, int ask);

static void
cluster_cmd_state(struct redis_link *l, int up, void *arg)
{
	if (!up)
		cluster_refresh_soon();	/* a failover, maybe */
	if (C.hooks.cmd_state != NULL)
		C.hooks.cmd_state(l, up, arg);
}

static void
cluster_durable_state(struct redis_link *l, int up, void *arg)
{
	if (C.hooks.durable_state != NULL)
		C.hooks.durable_state(l, up, arg);
}

static struct redis_link *
cluster_node_link(struct cluster_node *n, const char *role, redis_state_cb *on_state)
{
	char name[64];
	struct redis_link *l;

	snprintf(name, sizeof(name), "%s:%.30s:%d", role, n->host, n->port);
	if ((l = redis_link_new(C.base, name, on_state, NULL)) == NULL) {
		log_err("cluster", 0, "%s: out of memory", name);
		return NULL;
	}
	redis_link_set_addr(l, n->host, n->port);
	return l;
}

/* Links of a node that serves slots run; the others wait stopped. */
static void
cluster_node_links(struct cluster_node *n)
{
	if (n->cmd == NULL && (n->cmd = cluster_node_link(n, "command", cluster_cmd_state)) != NULL)
		redis_link_redirects(n->cmd, cluster_redirect);
	if (C.want_durable && n->durable == NULL)
		n->durable = cluster_node_link(n, "durable", cluster_durable_state);
	if (n->in_map) {
		redis_link_start(n->cmd);
		if (n->durable != NULL)
			redis_link_start(n->durable);
	} else {
		if (n->cmd != NULL)
			redis_link_stop(n->cmd);
		if (n->durable != NULL)
			redis_link_stop(n->durable);
	}
}

/* A free entry: a new one, or one that serves no slot and has nothing in
 * flight (its links move to the new address); -1 when none. */
static int
cluster_node_free_entry(void)
{
	if (C.nnodes < CLUSTER_MAX_NODES) {
		memset(&C.nodes[C.nnodes], 0, sizeof(C.nodes[0]));
		return C.nnodes++;
	}
	for (int i = 0; i < C.nnodes; i++)
		if (!C.nodes[i].in_map && redis_link_inflight(C.nodes[i].cmd) == 0 &&
		    redis_link_inflight(C.nodes[i].durable) == 0)
			return i;
	return -1;
}

/* The node at host:port, added if new; -1 when it cannot be. */
static int
cluster_node_index(const char *host, int port)
{
	struct cluster_node *n;
	int i;

	for (i = 0; i < C.nnodes; i++)
		if (C.nodes[i].port == port && strcmp(C.nodes[i].host, host) == 0)
			return i;
	if (strlen(host) >= sizeof(n->host)) {
		log_err("cluster", 0, "node address too long: %.64s...; ignored", host);
		return -1;
	}
	if ((i = cluster_node_free_entry()) < 0) {
		log_err("cluster", 0, "%s:%d: %d nodes serve slots already; ignored", host, port,
		    CLUSTER_MAX_NODES);
		return -1;
	}
	n = &C.nodes[i];
	snprintf(n->host, sizeof(n->host), "%s", host);
	n->port = port;
	n->in_map = 1;	/* taken: not reused again before the map is applied */
	if (n->cmd != NULL)
		redis_link_set_addr(n->cmd, host, port);
	if (n->durable != NULL)
		redis_link_set_addr(n->durable, host, port);
	log_info("cluster", 0, "node %s:%d", host, port);
	return i;
}

static struct cluster_node *
cluster_slot_node(unsigned slot)
{
	if (slot >= CLUSTER_SLOTS || C.map[slot] < 0)
		return NULL;
	return &C.nodes[C.map[slot]];
}

struct redis_link *
cluster_link(unsigned slot, enum cluster_role role)
{
	struct cluster_node *n = cluster_slot_node(slot);

	if (n == NULL)
		return NULL;
	return role == CLUSTER_CMD ? n->cmd : n->durable;
}

int
cluster_slot_addr(unsigned slot, char *host, size_t hostlen, int *port)
{
	struct cluster_node *n = cluster_slot_node(slot);

	if (n == NULL)
		return -1;
	snprintf(host, hostlen, "%s", n->host);
	*port = n->port;
	return 0;
}

/* A MOVED answer: the slot is served elsewhere now, so update the map at
 * once (a refresh confirms it).  ASK is for one command and changes
 * nothing. */
static struct redis_link *
cluster_redirect(struct redis_link *from, int slot, const char *host, int port, int ask)
{
	int i = cluster_node_index(host, port);

	(void)from;
	if (i < 0)
		return NULL;
	if (!C.nodes[i].in_map) {
		C.nodes[i].in_map = 1;
		cluster_node_links(&C.nodes[i]);
	}
	if (!ask && C.map[slot] != i) {
		C.map[slot] = (int16_t)i;
		cluster_refresh_soon();
		if (C.hooks.map_changed != NULL)
			C.hooks.map_changed();
	}
	return C.nodes[i].cmd;
}

/* One CLUSTER SLOTS range: [start, end, [host, port, id...], replicas...]. */
static int
cluster_parse_range(const redisReply *e, int16_t *map)
{
	const redisReply *m;
	const char *host;
	long long start, end;
	int i;

	if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
	    e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER)
		return -1;
	m = e->element[2];
	start = e->element[0]->integer;
	end = e->element[1]->integer;
	if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 || m->element[0]->type !=
	    REDIS_REPLY_STRING || m->element[1]->type != REDIS_REPLY_INTEGER ||
	    start < 0 || end >= CLUSTER_SLOTS || start > end)
		return -1;
	host = m->element[0]->str;
	if (host[0] == '\0' || strcmp(host, "?") == 0)
		return -1;	/* the node does not know its address: next time */
	if ((i = cluster_node_index(host, (int)m->element[1]->integer)) < 0)
		return -1;
	for (long long s = start; s <= end; s++)
		map[s] = (int16_t)i;
	return 0;
}

/* The control link's next address: the seeds, then the masters known.
 * Called from the control link's own callbacks too: the reset is
 * deferred by hiredis there. */
static void
cluster_ctl_rotate(void)
{
	int total = C.nseeds + C.nnodes, i = C.ctl_next++ % total;
	const char *host = i < C.nseeds ? C.seeds[i].host : C.nodes[i - C.nseeds].host;
	int port = i < C.nseeds ? C.seeds[i].port : C.nodes[i - C.nseeds].port;

	C.ctl_misses = 0;
	C.asking = 0;
	redis_link_reset(C.ctl, "asking another node for the slot map");
	redis_link_set_addr(C.ctl, host, port);
}

static void
cluster_apply(const int16_t *map)
{
	int changed = memcmp(map, C.map, sizeof(C.map)) != 0, masters = 0;

	memcpy(C.map, map, sizeof(C.map));
	for (int i = 0; i < C.nnodes; i++)
		C.nodes[i].in_map = 0;
	for (int s = 0; s < CLUSTER_SLOTS; s++)
		if (map[s] >= 0)
			C.nodes[map[s]].in_map = 1;
	for (int i = 0; i < C.nnodes; i++) {
		masters += C.nodes[i].in_map;
		cluster_node_links(&C.nodes[i]);
	}
	C.masters = masters;
	metrics.cluster_nodes = (uint64_t)masters;
	if (!C.known)
		log_info("cluster", 0, "slot map read: %d masters", masters);
	else if (changed)
		log_info("cluster", 0, "slot map changed: %d masters", masters);
	C.known = 1;
	if (changed && C.hooks.map_changed != NULL)
		C.hooks.map_changed();
}

static void
cluster_slots_done(redisReply *r, void *arg)
{
	int16_t map[CLUSTER_SLOTS];
	size_t bad = 0;

	(void)arg;
	C.asking = 0;
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
		/* An empty map: a node not (yet) in a cluster.  Ask another. */
		log_warn("cluster", 0, "CLUSTER SLOTS: %s", r == NULL ? "connection lost" :
		    r->type == REDIS_REPLY_ERROR ? r->str : r->type == REDIS_REPLY_ARRAY ?
		    "no slot served" : "unexpected reply");
		if (r != NULL)
			cluster_ctl_rotate();
		return;
	}
	metrics.cluster_refreshes++;
	for (int s = 0; s < CLUSTER_SLOTS; s++)
		map[s] = -1;
	for (size_t i = 0; i < r->elements; i++)
		bad += cluster_parse_range(r->element[i], map) != 0;
	if (bad > 0)
		log_warn("cluster", 0, "CLUSTER SLOTS: %zu ranges unreadable", bad);
	/* A node that is failing over may answer with holes: keep what we
	 * knew for those slots rather than forget a master. */
	for (int s = 0; s < CLUSTER_SLOTS; s++)
		if (map[s] < 0)
			map[s] = C.map[s];
	C.soon = 0;
	cluster_apply(map);
}


static void
cluster_ctl_state(struct redis_link *l, int up, void *arg)
{
	(void)l;
	(void)arg;
	C.asking = 0;
	if (up) {
		C.soon = 1;
		cluster_schedule(0);
	}
}

static void
cluster_tick(evutil_socket_t fd, short what, void *arg)
{
	const char *argv[2] = { "CLUSTER", "SLOTS" };

	(void)fd;
	(void)what;
	(void)arg;
	if (C.asking && util_now_ns() - C.asked_ns > CLUSTER_ASK_TIMEOUT_MS * 1000000ull) {
		log_warn("cluster", 0, "CLUSTER SLOTS unanswered for %d ms", CLUSTER_ASK_TIMEOUT_MS);
		cluster_ctl_rotate();	/* a hung node: the one a failover replaces */
	} else if (redis_link_up(C.ctl)) {
		if (!C.asking && redis_cmd_argv(C.ctl, cluster_slots_done, NULL, 2, argv, NULL) == 0) {
			C.asking = 1;
			C.asked_ns = util_now_ns();
		}
	} else if (++C.ctl_misses >= 3)
		cluster_ctl_rotate();	/* about 600 ms without a connection */
	cluster_schedule(C.soon || !C.known ? CLUSTER_SOON_MS : CLUSTER_REFRESH_MS);
}

static void
cluster_schedule(long ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	if (C.timer != NULL)
		event_add(C.timer, &tv);
}

void
cluster_refresh_soon(void)
{
	if (!C.on || C.soon)
		return;
	C.soon = 1;
	cluster_schedule(CLUSTER_SOON_MS);
}

int
cluster_start(struct event_base *base, const struct config *cfg,
    const struct cluster_hooks *hooks)
{
	if (cfg->cluster == NULL)
		return 0;
	memset(&C, 0, sizeof(C));
	C.base = base;
	C.hooks = *hooks;
	for (int s = 0; s < CLUSTER_SLOTS; s++)
		C.map[s] = -1;
	if ((C.nseeds = config_parse_hostlist(cfg->cluster, C.seeds, CONFIG_MAX_HOSTS)) < 0) {
		log_err("cluster", 0, "bad redis.cluster list %s", cfg->cluster);
		return -1;
	}
	C.ctl = redis_link_new(base, "cluster", cluster_ctl_state, NULL);
	C.timer = evtimer_new(base, cluster_tick, NULL);
	if (C.ctl == NULL || C.timer == NULL) {
		redis_link_free(C.ctl);
		if (C.timer != NULL)
			event_free(C.timer);
		memset(&C, 0, sizeof(C));
		return -1;
	}
	C.on = 1;
	log_info("cluster", 0, "reading the slot map from %d seed nodes", C.nseeds);
	cluster_ctl_rotate();
	cluster_schedule(CLUSTER_SOON_MS);
	return 0;
}

void
cluster_stop(void)
{
	if (!C.on)
		return;
	C.on = 0;	/* NULL answers below must not re-arm the timer */
	event_free(C.timer);
	C.timer = NULL;
	redis_link_free(C.ctl);
	for (int i = 0; i < C.nnodes; i++) {
		redis_link_free(C.nodes[i].cmd);
		redis_link_free(C.nodes[i].durable);
	}
	memset(&C, 0, sizeof(C));
}

void
cluster_want_durable(void)
{
	if (!C.on || C.want_durable)
		return;
	C.want_durable = 1;
	for (int i = 0; i < C.nnodes; i++)
		cluster_node_links(&C.nodes[i]);
}

int
cluster_up(void)
{
	if (!C.known || C.masters == 0)
		return 0;
	for (int i = 0; i < C.nnodes; i++)
		if (C.nodes[i].in_map && !redis_link_up(C.nodes[i].cmd))
			return 0;
	return 1;
}

size_t
cluster_inflight(void)
{
	size_t n = 0;

	for (int i = 0; i < C.nnodes; i++)
		n += redis_link_inflight(C.nodes[i].cmd) + redis_link_inflight(C.nodes[i].durable);
	return n;
}

void
cluster_foreach(enum cluster_role role, void (*fn)(struct redis_link *, void *), void *arg)
{
	for (int i = 0; i < C.nnodes; i++) {
		struct redis_link *l = role == CLUSTER_CMD ? C.nodes[i].cmd : C.nodes[i].durable;
		if (C.nodes[i].in_map && redis_link_up(l))
			fn(l, arg);
	}
}
