/*
 * cluster.h: Redis Cluster.  The slot map (CLUSTER SLOTS) says which
 * master serves each of the 16384 hash slots; every master gets one
 * pipelined command link, which follows MOVED and ASK on its own, and
 * when wanted a durable link (writes confirmed by WAIT on that master).
 */
#ifndef CLUSTER_H
#define CLUSTER_H

#include <stddef.h>

#include "redis.h"

#define CLUSTER_SLOTS 16384

struct event_base;
struct config;

enum cluster_role { CLUSTER_CMD, CLUSTER_DURABLE };

struct cluster_hooks {
	redis_state_cb *cmd_state;	/* a master's command link up or down */
	redis_state_cb *durable_state;
	void          (*map_changed)(void);	/* some slot has a new master */
};

/* With cfg->cluster set: read the map from the seeds and keep it. */
int  cluster_start(struct event_base *base, const struct config *cfg,
    const struct cluster_hooks *hooks);
void cluster_stop(void);
int  cluster_enabled(void);

/* The hash slot of a key: CRC16 of its {hash tag}, or of all of it. */
unsigned cluster_key_slot(const char *key, size_t len);

/* The link to the master of slot, or NULL while no master is known. */
struct redis_link *cluster_link(unsigned slot, enum cluster_role role);
/* That master's address; -1 while unknown. */
int  cluster_slot_addr(unsigned slot, char *host, size_t hostlen, int *port);

/* Durable links from now on, for every master. */
void cluster_want_durable(void);
/* The map is known and every master's command link is up. */
int  cluster_up(void);
size_t cluster_inflight(void);
void cluster_foreach(enum cluster_role role, void (*fn)(struct redis_link *, void *),
    void *arg);
/* Read the map again soon (something suggests it changed). */
void cluster_refresh_soon(void);

#endif
