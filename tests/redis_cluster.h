/*
 * redis_cluster.h: a real Redis Cluster for the tests (check_cluster, chaos):
 * six cluster-enabled redis-servers on free loopback ports (each port P
 * below 55535 with P + 10000, the cluster bus, free too), made into three
 * masters with one replica each by `redis-cli --cluster create
 * --cluster-replicas 1`.
 *
 * Every node: appendonly yes, appendfsync always (a kill -9 loses nothing
 * a node answered), cluster-node-timeout 2000 (a failover in ~3 s),
 * repl-diskless-sync-delay 0, its own directory node<i>/ (AOF and
 * nodes-<port>.conf) and log node<i>.log in the test's directory.
 *
 * Nodes are indexes 0..CL_NODES-1; a port is CL.port[i].  Failures stop
 * every process by pid first (H_CHECK): register cl_stop_all with
 * h_on_fail().  Every wait is bounded.
 */
#ifndef REDIS_CLUSTER_H
#define REDIS_CLUSTER_H

#include "harness.h"

#define CL_NODES   6
#define CL_NSLOTS  16384
#define CL_WAIT_MS 30000        /* cluster creation, convergence, failover */

typedef struct cl_env {
    int    port[CL_NODES];
    h_proc node[CL_NODES];
    char   id[CL_NODES][48];    /* node ids, from CLUSTER NODES */
    int    master[CL_NODES];    /* a replica's master (index); -1 for a master */
    char   seeds[CL_NODES * 24]; /* "127.0.0.1:p,127.0.0.1:q,..." */
} cl_env;

extern cl_env CL;

/* Fixture: h_setup_dir(), six nodes, a cluster of three masters with a
 * replica each, all slots ok on every node, every replica online.
 * H.redis_port is node 0 (only for the url line the harness writes: the
 * cluster takes precedence).  The teardown is h_teardown_all(). */
void cl_setup(void);
/* Stops every process of the test by pid: the daemon first (gracefully,
 * while the cluster is still there), then every node. */
void cl_stop_all(void);

int  cl_node_up(int i);
int  cl_idx_of_port(int port);          /* -1 if no node has it */
int  cl_keyslot(const char *key);       /* CLUSTER KEYSLOT; fails if none answers */
/* The port of the master of slot when every node up agrees, else -1. */
int  cl_owner(int slot);
/* Index of the master of slot (every node agreeing); fails otherwise. */
int  cl_owner_idx(int slot);
/* Index of the replica of master m (as last read), or -1. */
int  cl_replica_of(int m);
/* Reads ids and roles (CL.id, CL.master) from every node up; 1 when each
 * lists all nodes, three masters holding slots and one replica for each. */
int  cl_topology(void);
/* Waits (bounded) until every node up says cluster_state:ok with all
 * slots assigned and none failing; returns the ms it took or -1. */
long long cl_wait_ok(int ms);
/* Error replies of a kind (ASK, MOVED, TRYAGAIN) the node on port gave,
 * from INFO errorstats; 0 when not listed. */
long long cl_errorstat(int port, const char *kind);
/* Restarts node i on the same port and directory (its AOF and nodes.conf). */
void cl_node_restart(int i);

/* Starts streambusd with redis.cluster = every node, log_level debug, plus
 * the stream sections given; waits until ping, stats and /health answer. */
void  cl_daemon_start(const char *streams);
/* The Redis key of stream s in a cluster: sb:{s}<suffix> (malloc'd). */
char *cl_key(const char *s, const char *suffix);
/* XGROUP CREATE audit (from 0, MKSTREAM) on the stream's master: a group
 * that never reads keeps every entry for the count at the end (the daemon
 * trims what every group has acknowledged). */
void  cl_audit_group(const char *stream);

/* Moves one slot from master src to master dst by hand, one step per
 * cl_migrate_step() call when due, so that traffic runs between the calls:
 * 0 dst IMPORTING, 1 src MIGRATING, 2 every key of the slot but the stream
 * key in batches, 3 the stream key alone, 4 whatever is left, 5 SETSLOT NODE
 * on dst, src and the third master.  Pauses: pause_ms between two batches,
 * 3 times that after MIGRATING, 5 times after the stream key. */
typedef struct cl_migration {
    int src, dst, slot;
    const char *key;            /* the stream key, moved on its own */
    int batch;                  /* keys per MIGRATE */
    int pause_ms;
    int step;
    long long due;
    long keys, batches;
    long long t_start, t_key, t_done;
} cl_migration;

/* One step if due; returns 1 once the slot is the destination's. */
int cl_migrate_step(cl_migration *m, long long now);

#endif
