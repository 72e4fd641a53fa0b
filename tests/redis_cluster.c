/*
 * redis_cluster.c: a real Redis Cluster for the tests.  See redis_cluster.h.
 */
#include "redis_cluster.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

cl_env CL;

void cl_stop_all(void)
{
    if (H.daemon.pid)
        h_stop(&H.daemon, SIGTERM, 3000);
    for (int i = 0; i < CL_NODES; i++)
        if (CL.node[i].pid)
            h_stop(&CL.node[i], SIGKILL, 2000);
}

int cl_node_up(int i)
{
    return CL.node[i].pid && h_alive(&CL.node[i]);
}

int cl_idx_of_port(int port)
{
    for (int i = 0; i < CL_NODES; i++)
        if (CL.port[i] == port)
            return i;
    return -1;
}

/* ----------------------------------------------------------- topology */

int cl_keyslot(const char *key)
{
    for (int i = 0; i < CL_NODES; i++) {
        if (!cl_node_up(i))
            continue;
        long long s = h_redis_int_at(CL.port[i], "CLUSTER KEYSLOT %s", key);
        if (s >= 0)
            return (int)s;
    }
    H_CHECK(0, "no node answers CLUSTER KEYSLOT %s", key);
    return -1;
}

/* The port of the master serving slot according to the node on port
 * (CLUSTER SLOTS), or -1. */
static int owner_at(int port, int slot)
{
    redisReply *r = h_redis_at(port, "CLUSTER SLOTS");
    int owner = -1;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER ||
            e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2 ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
            continue;
        if (slot >= e->element[0]->integer && slot <= e->element[1]->integer)
            owner = (int)e->element[2]->element[1]->integer;
    }
    if (r)
        freeReplyObject(r);
    return owner;
}

int cl_owner(int slot)
{
    int owner = -1;
    for (int i = 0; i < CL_NODES; i++) {
        if (!cl_node_up(i))
            continue;
        int o = owner_at(CL.port[i], slot);
        if (o < 0 || (owner >= 0 && o != owner))
            return -1;
        owner = o;
    }
    return owner;
}

int cl_owner_idx(int slot)
{
    int port = cl_owner(slot);
    int i = port > 0 ? cl_idx_of_port(port) : -1;
    H_CHECK(i >= 0, "the nodes do not agree on the master of slot %d", slot);
    return i;
}

int cl_replica_of(int m)
{
    for (int i = 0; i < CL_NODES; i++)
        if (CL.master[i] == m)
            return i;
    return -1;
}

/* A node's view, from one line of CLUSTER NODES. */
typedef struct node_view {
    char id[48], master_id[48];
    int is_master, has_slots;
} node_view;

/* Parses the line into v[i] for the node it names; the node's index or -1. */
static int parse_node_line(const char *line, node_view *v)
{
    char id[48], addr[128], flags[128], master[48];
    if (sscanf(line, "%47s %127s %127s %47s", id, addr, flags, master) != 4)
        return -1;
    /* addr is ip:port@cport[,hostname]. */
    char *colon = strchr(addr, ':');
    int i = colon ? cl_idx_of_port(atoi(colon + 1)) : -1;
    if (i < 0)
        return -1;
    snprintf(v[i].id, sizeof v[i].id, "%s", id);
    snprintf(v[i].master_id, sizeof v[i].master_id, "%s", master);
    v[i].is_master = strstr(flags, "master") != NULL;
    /* Slots follow the 8 fixed fields. */
    int fields = 0;
    for (const char *p = line; *p; p++)
        if (*p == ' ' && p[1] && p[1] != ' ')
            fields++;
    v[i].has_slots = fields >= 8;
    return i;
}

_Static_assert(sizeof CL.id[0] == sizeof ((node_view *)0)->id, "node ids copied whole");

/* Sets CL.id and CL.master from the views; 1 if three masters hold slots
 * and each has exactly one replica. */
static int topology_apply(const node_view *v)
{
    int masters = 0;
    for (int i = 0; i < CL_NODES; i++) {
        memcpy(CL.id[i], v[i].id, sizeof CL.id[i]);
        CL.master[i] = -1;
        if (v[i].is_master) {
            masters += v[i].has_slots;
            continue;
        }
        for (int j = 0; j < CL_NODES; j++)
            if (v[j].is_master && strcmp(v[i].master_id, v[j].id) == 0)
                CL.master[i] = j;
    }
    if (masters != 3)
        return 0;
    for (int m = 0; m < CL_NODES; m++) {
        if (CL.master[m] >= 0)
            continue;
        int n = 0;
        for (int i = 0; i < CL_NODES; i++)
            n += CL.master[i] == m;
        if (n != 1)
            return 0;
    }
    return 1;
}

/* cl_topology() as the node on port sees it. */
static int topology_at(int port)
{
    redisReply *r = h_redis_at(port, "CLUSTER NODES");
    if (!r || r->type != REDIS_REPLY_STRING) {
        if (r)
            freeReplyObject(r);
        return 0;
    }
    node_view v[CL_NODES];
    memset(v, 0, sizeof v);
    int seen = 0;
    char *save = NULL;
    for (char *line = strtok_r(r->str, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        seen += parse_node_line(line, v) >= 0;
    freeReplyObject(r);
    return seen == CL_NODES && topology_apply(v);
}

int cl_topology(void)
{
    int ok = 1;
    for (int k = 0; k < CL_NODES && ok; k++)
        if (cl_node_up(k))
            ok = topology_at(CL.port[k]);
    return ok;
}

/* 1 when every node up says cluster_state:ok with all slots assigned and
 * none failing. */
static int all_ok(void)
{
    for (int i = 0; i < CL_NODES; i++) {
        if (!cl_node_up(i))
            continue;
        if (!h_redis_str_has(CL.port[i], "CLUSTER INFO", "cluster_state:ok") ||
            h_redis_str_num(CL.port[i], "CLUSTER INFO", "cluster_slots_assigned") != CL_NSLOTS ||
            h_redis_str_num(CL.port[i], "CLUSTER INFO", "cluster_slots_ok") != CL_NSLOTS)
            return 0;
    }
    return 1;
}

long long cl_wait_ok(int ms)
{
    long long t0 = h_now_ms();
    for (int i = 0; i < 10000 && h_now_ms() - t0 < ms; i++) {
        if (all_ok())
            return h_now_ms() - t0;
        h_sleep_ms(100);
    }
    return -1;
}

long long cl_errorstat(int port, const char *kind)
{
    char *want = h_fmt("errorstat_%s:count=", kind);
    redisReply *r = h_redis_at(port, "INFO errorstats");
    long long v = 0;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, want);
        if (p)
            v = atoll(p + strlen(want));
    }
    if (r)
        freeReplyObject(r);
    free(want);
    return v;
}

/* ------------------------------------------------------------- nodes */

/* 1 if a listening socket could take 127.0.0.1:port now (as Redis binds:
 * SO_REUSEADDR). */
static int port_bindable(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* 1 if p is a port (or bus port) of this test already. */
static int port_used(int p)
{
    if (p == H.port || p == H.metrics_port)
        return 1;
    for (int i = 0; i < CL_NODES; i++)
        if (CL.port[i] && (p == CL.port[i] || p == CL.port[i] + 10000))
            return 1;
    return 0;
}

/* A free port P < 55535 whose cluster bus port P + 10000 is free too, and
 * neither used by this test yet. */
static int free_port(void)
{
    for (int attempt = 0; attempt < 200; attempt++) {
        int p = h_free_port();
        if (p + 10000 > 65535 || port_used(p) || port_used(p + 10000) ||
            !port_bindable(p + 10000))
            continue;
        return p;
    }
    H_CHECK(0, "no free port with a free cluster bus port");
    return -1;
}

static void node_write_conf(int i)
{
    char *dir = h_fmt("%s/node%d", H.dir, i);
    char *conf = h_fmt("%s/node%d.conf", H.dir, i);
    mkdir(dir, 0755);
    FILE *f = fopen(conf, "w");
    H_CHECK(f != NULL, "fopen %s: %s", conf, strerror(errno));
    fprintf(f,
            "# written by tests/redis_cluster.c\n"
            "port %d\n"
            "bind 127.0.0.1\n"
            "dir %s\n"
            "cluster-enabled yes\n"
            "cluster-config-file nodes-%d.conf\n"
            "cluster-node-timeout 2000\n"
            "appendonly yes\n"
            "appendfsync always\n"
            "save \"\"\n"
            "daemonize no\n"
            "logfile %s/node%d.log\n"
            "repl-diskless-sync-delay 0\n",
            CL.port[i], dir, CL.port[i], H.dir, i);
    H_CHECK(fclose(f) == 0, "fclose %s", conf);
    free(dir);
    free(conf);
}

/* Spawns node i on its port with its configuration; waits (bounded) for
 * PING.  0 ok, -1 if it did not come up (it is stopped then). */
static int node_spawn(int i)
{
    char *conf = h_fmt("%s/node%d.conf", H.dir, i);
    char *out = h_fmt("%s/node%d.out", H.dir, i);
    char *argv[] = { "redis-server", conf, NULL };
    h_spawn(argv, out, &CL.node[i]);
    free(conf);
    free(out);
    long long end = h_now_ms() + H_WAIT_MS;
    for (int k = 0; k < 1000 && h_now_ms() < end && h_alive(&CL.node[i]); k++) {
        if (h_redis_ping(CL.port[i], 1000))
            return 0;
        h_sleep_ms(20);
    }
    h_stop(&CL.node[i], SIGKILL, 2000);
    return -1;
}

/* Fails with the tail of node i's log. */
static void node_failed(int i, const char *what)
{
    char *name = h_fmt("node%d.log", i);
    char *txt = h_log_tail(name, 2000);
    H_CHECK(0, "redis-server node %d %s (port %d):\n%s", i, what, CL.port[i], txt);
}

/* Starts node i for the first time, on a new port if one is taken meanwhile. */
static void node_start(int i)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        CL.port[i] = 0;
        CL.port[i] = free_port();
        node_write_conf(i);
        if (node_spawn(i) == 0)
            return;
    }
    node_failed(i, "did not start");
}

/* A few tries, since its ports may be taken for a moment by some client's
 * ephemeral port. */
void cl_node_restart(int i)
{
    for (int attempt = 0; attempt < 10; attempt++) {
        if (node_spawn(i) == 0)
            return;
        h_sleep_ms(300);
    }
    node_failed(i, "did not restart on its port");
}

/* redis-cli --cluster create of the six nodes, one replica per master. */
static void cluster_create(void)
{
    char *argv[CL_NODES + 8];
    int argc = 0;
    argv[argc++] = "redis-cli";
    argv[argc++] = "--cluster";
    argv[argc++] = "create";
    for (int i = 0; i < CL_NODES; i++)
        argv[argc++] = h_fmt("127.0.0.1:%d", CL.port[i]);
    argv[argc++] = "--cluster-replicas";
    argv[argc++] = "1";
    argv[argc++] = "--cluster-yes";
    argv[argc] = NULL;
    char *out = NULL;
    int st = h_run(argv, &out, 60000);
    H_CHECK(st == 0, "redis-cli --cluster create: status %d:\n%.2000s", st,
            out ? out : "(no output)");
    free(out);
    for (int i = 0; i < CL_NODES; i++)
        free(argv[3 + i]);
}

/* Waits (bounded, until end) for every node to show the topology and every
 * replica to be online. */
static void wait_topology(long long end)
{
    int topo = 0;
    for (int i = 0; i < 1000 && !topo && h_now_ms() < end; i++) {
        topo = cl_topology();
        if (!topo)
            h_sleep_ms(100);
    }
    H_CHECK(topo, "CLUSTER NODES does not show 3 masters with one replica each");
    int online = 0;
    for (int i = 0; i < 1000 && !online && h_now_ms() < end; i++) {
        online = 1;
        for (int k = 0; k < CL_NODES && online; k++)
            if (CL.master[k] >= 0)
                online = h_replica_online(CL.port[CL.master[k]], CL.port[k]);
        if (!online)
            h_sleep_ms(100);
    }
    H_CHECK(online, "replicas not online within %d ms", CL_WAIT_MS);
}

void cl_setup(void)
{
    h_setup_dir();
    memset(&CL, 0, sizeof CL);
    for (int i = 0; i < CL_NODES; i++)
        CL.master[i] = -1;
    for (int i = 0; i < CL_NODES; i++)
        node_start(i);
    char *p = CL.seeds;
    for (int i = 0; i < CL_NODES; i++)
        p += snprintf(p, sizeof CL.seeds - (size_t)(p - CL.seeds), "%s127.0.0.1:%d",
                      i ? "," : "", CL.port[i]);
    /* H.redis_port only fills the url line the harness writes (the cluster
     * takes precedence over it); nothing of the harness talks to it. */
    H.redis_port = CL.port[0];

    long long t0 = h_now_ms();
    cluster_create();
    long long ok_ms = cl_wait_ok(CL_WAIT_MS);
    H_CHECK(ok_ms >= 0, "cluster not ok on every node within %d ms", CL_WAIT_MS);
    wait_topology(h_now_ms() + CL_WAIT_MS);
    char roles[256] = "";
    for (int k = 0; k < CL_NODES; k++)
        if (CL.master[k] >= 0)
            snprintf(roles + strlen(roles), sizeof roles - strlen(roles), " %d<-%d",
                     CL.port[CL.master[k]], CL.port[k]);
    fprintf(stderr, "%s: cluster up in %lld ms (master<-replica:%s)\n", h_prog(),
            h_now_ms() - t0, roles);
}

/* ------------------------------------------------------------- daemon */

void cl_daemon_start(const char *streams)
{
    char *lines = h_fmt("cluster = %s\n", CL.seeds);
    h_conf_redis(lines);
    free(lines);
    h_conf("log_level = debug\n", NULL, streams);
    if (h_daemon_try_start() != 0) {
        char *log = h_log_tail("daemon.log", 3000);
        H_CHECK(0, "streambusd (%s) did not start against the cluster; log:\n%s",
                h_daemon_path(), log);
    }
}

char *cl_key(const char *s, const char *suffix)
{
    return h_fmt("sb:{%s}%s", s, suffix ? suffix : "");
}

void cl_audit_group(const char *stream)
{
    char *key = cl_key(stream, NULL);
    int owner = cl_owner_idx(cl_keyslot(key));
    redisReply *r = h_redis_at(CL.port[owner], "XGROUP CREATE %s audit 0 MKSTREAM", key);
    H_CHECK(r && r->type == REDIS_REPLY_STATUS, "XGROUP CREATE %s audit on port %d: %s",
            key, CL.port[owner], r && r->str ? r->str : "no reply");
    freeReplyObject(r);
    free(key);
}

/* ---------------------------------------------------------- migration */

/* MIGRATE of keys (n of them) from src to dst; fails on any error. */
static void mg_migrate(cl_migration *m, char **keys, size_t n)
{
    char port[16];
    snprintf(port, sizeof port, "%d", CL.port[m->dst]);
    const char **argv = calloc(n + 8, sizeof *argv);
    ck_assert(argv != NULL);
    int argc = 0;
    argv[argc++] = "MIGRATE";
    argv[argc++] = "127.0.0.1";
    argv[argc++] = port;
    argv[argc++] = "";
    argv[argc++] = "0";
    argv[argc++] = "5000";
    argv[argc++] = "KEYS";
    for (size_t i = 0; i < n; i++)
        argv[argc++] = keys[i];
    redisReply *r = h_redis_at_argv(CL.port[m->src], argc, argv);
    H_CHECK(r && r->type == REDIS_REPLY_STATUS, "MIGRATE of %zu keys (first %s) to %d: %s", n,
            keys[0], CL.port[m->dst], r && r->str ? r->str : "no reply");
    freeReplyObject(r);
    free(argv);
    m->keys += (long)n;
    m->batches++;
}

/* MIGRATE of up to m->batch keys of the slot on src, without the stream key
 * unless with_stream.  Returns how many keys it moved. */
static size_t mg_batch(cl_migration *m, int with_stream)
{
    redisReply *r = h_redis_at(CL.port[m->src], "CLUSTER GETKEYSINSLOT %d %d", m->slot,
                               m->batch + 1);
    H_CHECK(r && r->type == REDIS_REPLY_ARRAY, "CLUSTER GETKEYSINSLOT on port %d failed",
            CL.port[m->src]);
    char **keys = calloc((size_t)m->batch, sizeof *keys);
    ck_assert(keys != NULL);
    size_t n = 0;
    for (size_t i = 0; i < r->elements && n < (size_t)m->batch; i++)
        if (with_stream || strcmp(r->element[i]->str, m->key) != 0)
            keys[n++] = r->element[i]->str;
    if (n)
        mg_migrate(m, keys, n);
    free(keys);
    freeReplyObject(r);
    return n;
}

static void mg_setslot(int node, const char *how, cl_migration *m)
{
    redisReply *r = h_redis_at(CL.port[node], "CLUSTER SETSLOT %d %s %s", m->slot, how,
                               CL.id[strcmp(how, "IMPORTING") == 0 ? m->src : m->dst]);
    H_CHECK(r && r->type == REDIS_REPLY_STATUS, "CLUSTER SETSLOT %d %s on port %d: %s",
            m->slot, how, CL.port[node], r && r->str ? r->str : "no reply");
    freeReplyObject(r);
}

int cl_migrate_step(cl_migration *m, long long now)
{
    if (m->t_done)
        return 1;
    if (now < m->due)
        return 0;
    switch (m->step) {
    case 0:
        m->t_start = now;
        mg_setslot(m->dst, "IMPORTING", m);
        m->step = 1;
        break;
    case 1:
        mg_setslot(m->src, "MIGRATING", m);
        m->step = 2;
        m->due = now + 3 * m->pause_ms;
        break;
    case 2:
    case 4:
        if (mg_batch(m, m->step == 4) == 0)
            m->step++;
        else
            m->due = now + m->pause_ms;
        break;
    case 3: {
        char *key = (char *)m->key;
        mg_migrate(m, &key, 1);
        m->t_key = now;
        m->step = 4;
        m->due = now + 5 * m->pause_ms;
        break;
    }
    case 5:
        mg_setslot(m->dst, "NODE", m);
        mg_setslot(m->src, "NODE", m);
        for (int i = 0; i < CL_NODES; i++)
            if (CL.master[i] < 0 && i != m->src && i != m->dst && cl_node_up(i))
                mg_setslot(i, "NODE", m);
        m->t_done = h_now_ms();
        return 1;
    }
    return 0;
}
