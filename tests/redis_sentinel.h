/*
 * redis_sentinel.h: a real Redis Sentinel setup for the tests
 * (check_sentinel, chaos): a master, one replica (--replicaof) and three
 * sentinels (redis-server CONF --sentinel, quorum 2,
 * down-after-milliseconds 2000, failover-timeout 5000) on free loopback
 * ports, monitoring the master as SN_MASTER_NAME.
 *
 * Node 0 is the harness's Redis (H.redis from h_setup(), made the first
 * master), node 1 its replica; after a failover either may be the master.
 * Nodes have no persistence: a killed node restarts empty and is made a
 * replica again by the sentinels.  Logs: node<i>.log, sentinel<k>.log in
 * the test's directory.  Failures stop every process by pid first
 * (H_CHECK): register sn_stop_all with h_on_fail().  Every wait is bounded.
 */
#ifndef REDIS_SENTINEL_H
#define REDIS_SENTINEL_H

#include "harness.h"

#define SN_NSENT       3
#define SN_MASTER_NAME "mm"
#define SN_WAIT_MS     20000    /* sentinel convergence, a failover */

typedef struct sn_env {
    int    port[2];             /* node 0 (H.redis) and node 1 */
    h_proc node1;
    int    sport[SN_NSENT];
    h_proc sent[SN_NSENT];
    char   sentinels[256];      /* "127.0.0.1:p,127.0.0.1:q,..." */
} sn_env;

extern sn_env SN;

/* Fixture: h_setup(), node 1 an online replica of node 0, three sentinels
 * that know both nodes and each other.  The teardown is h_teardown_all(). */
void    sn_setup(void);
/* Stops every process of the test by pid: the daemon first (gracefully,
 * while its Redis is still there), then the sentinels, then both nodes. */
void    sn_stop_all(void);

h_proc *sn_node(int i);
/* A free port that none of the processes of the test uses yet. */
int     sn_free_port(void);
/* Starts node i on its port: an empty master, or a replica of master_port. */
void    sn_node_start(int i, int master_port);
/* kill -9 of node i (a crash; node 0 through h_redis_kill). */
void    sn_node_kill(int i);
/* The master port sentinel k names, or -1. */
int     sn_master(int k);
/* The master port when every sentinel names the same, else -1. */
int     sn_agree(void);
/* The [redis] lines that name the sentinels and the master. */
char   *sn_conf_redis(void);

#endif
