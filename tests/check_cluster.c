/*
 * check_cluster.c: streambusd against a real Redis Cluster.  Each test gets
 * six cluster-enabled redis-servers on free loopback ports (each port P
 * below 55535 with P + 10000, the cluster bus, free too), made into three
 * masters with one replica each by `redis-cli --cluster create
 * --cluster-replicas 1`, and a streambusd whose [redis] section names them
 * as seeds (redis.cluster); the daemon reads the slot map by itself.
 *
 * Every node: appendonly yes, appendfsync always (a kill -9 loses nothing
 * a node answered), cluster-node-timeout 2000 (a failover in ~3 s),
 * repl-diskless-sync-delay 0, its own directory node<i>/ (AOF and
 * nodes-<port>.conf) and log node<i>.log.
 *
 *   basic         streams whose slots lie on at least two masters: pubs land
 *                 in sb:{S} on the master owning the slot, every key of a
 *                 stream is on that node, group delivery and acks, msgid
 *                 dedup, max_attempts and nack dead into sb:{S}:dlq on the
 *                 same node, dlq and replay, stats.
 *   failover      kill -9 of the master owning a replicas:1 stream under
 *                 traffic (CL_WINDOW pubs in flight, each retried with its
 *                 msgid until ok): its replica is promoted, the old master
 *                 comes back as a replica, every pub answered ok is on the new
 *                 master and delivered to the group.
 *   reshard       the stream's slot moved to another master under traffic,
 *                 by hand and slowly (SETSLOT IMPORTING/MIGRATING, MIGRATE
 *                 of the other keys in batches, then the stream key, then
 *                 SETSLOT NODE), so that the daemon meets ASK, TRYAGAIN and
 *                 MOVED: nothing lost, the key and new pubs on the new master.
 *   node_restart  kill -9 of a master and restart on the same port and
 *                 directory before a failover can happen (its replica has
 *                 cluster-replica-no-failover): the daemon reconnects, no
 *                 pub answered ok is lost (AOF, fsync always).
 *
 * The traffic tests print one line of figures to stderr.
 *
 * The teardown stops every process by pid, and so does a failed CL_CHECK
 * before it aborts; a failed assertion inside the harness leaves them to
 * PR_SET_PDEATHSIG and Check's killpg (see harness.h).  Every wait is
 * bounded.  Select one test case with CK_RUN_CASE=name; SB_TEST_KEEP=1
 * keeps the logs (daemon.log, node<i>.log, the nodes' directories).
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define NNODES        6
#define NSLOTS        16384
#define CL_WAIT_MS    30000     /* cluster creation, convergence, failover */
#define CL_PUB_MS     5000      /* a pub's reply (WAIT timeouts are 2 s) */
#define CL_RETRY_MS   100       /* backoff before a pub is retried */
#define CL_GIVEUP_MS  30000     /* one pub retried longer than this: fail */
#define CL_TRAFFIC_MS 60000     /* bound of a traffic test's main loop */
#define CL_MAXN       100000    /* most events a traffic test publishes */
#define CL_WINDOW     8         /* pubs in flight */

static struct {
    int    port[NNODES];
    h_proc node[NNODES];
    char   id[NNODES][48];      /* node ids, from CLUSTER NODES */
    int    master[NNODES];      /* a replica's master (index); -1 for a master */
    char   seeds[NNODES * 24];  /* "127.0.0.1:p,127.0.0.1:q,..." */
} C;

/* ------------------------------------------------------ stop and fail */

/* Stops every process of the test by pid: the daemon first (gracefully,
 * while the cluster is still there), then every node. */
static void cl_stop_all(void)
{
    if (H.daemon.pid)
        h_stop(&H.daemon, SIGTERM, 3000);
    for (int i = 0; i < NNODES; i++)
        if (C.node[i].pid)
            h_stop(&C.node[i], SIGKILL, 2000);
}

/* The last max bytes of a file of the test directory, for failure messages. */
static char *log_tail(const char *name, size_t max)
{
    char *path = h_fmt("%s/%s", H.dir, name);
    char *txt = h_read_file(path);
    free(path);
    if (!txt)
        return strdup("(no log)");
    size_t len = strlen(txt);
    if (len > max)
        memmove(txt, txt + len - max, max + 1);
    return txt;
}

/* Asserts cond; on failure stops every process by pid, then aborts with the
 * message and the daemon's log tail (Check's messages are short: the whole
 * message also goes to stderr). */
#define CL_CHECK(cond, ...)                                                   \
    do {                                                                      \
        if (!(cond)) {                                                        \
            char *why_ = h_fmt(__VA_ARGS__);                                  \
            cl_stop_all();                                                    \
            char *log_ = log_tail("daemon.log", 1500);                        \
            fprintf(stderr, "check_cluster: FAILED: %s\n", why_);             \
            ck_abort_msg("%.1500s\n--- daemon.log (tail) ---\n%s", why_, log_); \
        }                                                                     \
    } while (0)

/* ------------------------------------------------------------ Redis */

static int node_up(int i)
{
    return C.node[i].pid && h_alive(&C.node[i]);
}

static int idx_of_port(int port)
{
    for (int i = 0; i < NNODES; i++)
        if (C.port[i] == port)
            return i;
    return -1;
}

static int r_ping(int port)
{
    redisReply *r = h_redis_at(port, "PING");
    int ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    if (r)
        freeReplyObject(r);
    return ok;
}

/* An integer reply of the node on port, or -1 (no answer, an error). */
static long long r_int(int port, const char *fmt, ...)
{
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, (struct timeval){ 1, 0 });
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return -1;
    }
    redisSetTimeout(c, (struct timeval){ 5, 0 });
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r)
        freeReplyObject(r);
    return v;
}

/* cmd (words separated by single spaces, no quoting) on port. */
static redisReply *r_words(int port, const char *cmd)
{
    char buf[256];
    const char *argv[16];
    int argc = 0;
    snprintf(buf, sizeof buf, "%s", cmd);
    char *save = NULL;
    for (char *w = strtok_r(buf, " ", &save); w && argc < 16; w = strtok_r(NULL, " ", &save))
        argv[argc++] = w;
    return h_redis_at_argv(port, argc, argv);
}

/* 1 if the reply of cmd on port (a string: INFO, CLUSTER INFO) contains needle. */
static int r_str_has(int port, const char *cmd, const char *needle)
{
    redisReply *r = r_words(port, cmd);
    int has = r && r->type == REDIS_REPLY_STRING &&
              strstr(r->str, needle) != NULL;
    if (r)
        freeReplyObject(r);
    return has;
}

/* The value of "name:<number>" in the reply of cmd on port, or -1. */
static long long r_str_num(int port, const char *cmd, const char *name)
{
    redisReply *r = r_words(port, cmd);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_STRING) {
        char *want = h_fmt("%s:", name);
        for (const char *p = strstr(r->str, want); p; p = strstr(p + 1, want))
            if (p == r->str || p[-1] == '\n') {
                v = atoll(p + strlen(want));
                break;
            }
        free(want);
    }
    if (r)
        freeReplyObject(r);
    return v;
}

/* Error replies of a kind (ASK, MOVED, TRYAGAIN) the node on port gave,
 * from INFO errorstats; 0 when not listed. */
static long long r_errorstat(int port, const char *kind)
{
    char *name = h_fmt("errorstat_%s", kind);
    redisReply *r = h_redis_at(port, "INFO errorstats");
    long long v = 0;
    if (r && r->type == REDIS_REPLY_STRING) {
        char *want = h_fmt("%s:count=", name);
        const char *p = strstr(r->str, want);
        if (p)
            v = atoll(p + strlen(want));
        free(want);
    }
    if (r)
        freeReplyObject(r);
    free(name);
    return v;
}

/* 1 once the master on port lists the replica on rport as online. */
static int replica_online(int port, int rport)
{
    char *needle = h_fmt("port=%d,state=online", rport);
    int has = r_str_has(port, "INFO replication", needle);
    free(needle);
    return has;
}

/* 1 if the entry id is in stream key on port (a master or, with READONLY,
 * a replica). */
static int r_has_entry(int port, const char *key, const char *id)
{
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, (struct timeval){ 1, 0 });
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return 0;
    }
    redisSetTimeout(c, (struct timeval){ 5, 0 });
    redisReply *r = redisCommand(c, "READONLY");
    if (r)
        freeReplyObject(r);
    r = redisCommand(c, "XRANGE %s %s %s", key, id, id);
    int has = r && r->type == REDIS_REPLY_ARRAY && r->elements == 1;
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return has;
}

/* Counts the entries of stream key on port by their data (an integer):
 * counts[n]++ for each.  Returns the number of entries, or -1 if the
 * server does not answer (or answers an error: MOVED, ...). */
static long stream_counts(int port, const char *key, unsigned short *counts, long max,
                          long *bad)
{
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, (struct timeval){ 1, 0 });
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return -1;
    }
    redisSetTimeout(c, (struct timeval){ 5, 0 });
    char start[80] = "-";
    long total = 0;
    *bad = 0;
    for (int page = 0; page < 10000; page++) {
        redisReply *r = redisCommand(c, "XRANGE %s %s + COUNT 1000", key, start);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            if (r)
                freeReplyObject(r);
            redisFree(c);
            return -1;
        }
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *e = r->element[i];
            const char *data = h_entry_field(e, "data");
            char *end = NULL;
            long n = data ? strtol(data, &end, 10) : -1;
            if (!data || *end || n < 1 || n >= max)
                (*bad)++;
            else if (counts[n] < 65535)
                counts[n]++;
            total++;
            snprintf(start, sizeof start, "(%s", e->element[0]->str);
        }
        size_t got = r->elements;
        freeReplyObject(r);
        if (got < 1000)
            break;
    }
    redisFree(c);
    return total;
}

/* ----------------------------------------------------------- topology */

/* The slot of key (CLUSTER KEYSLOT, asked of the first node up). */
static int cl_keyslot(const char *key)
{
    for (int i = 0; i < NNODES; i++) {
        if (!node_up(i))
            continue;
        long long s = r_int(C.port[i], "CLUSTER KEYSLOT %s", key);
        if (s >= 0)
            return (int)s;
    }
    CL_CHECK(0, "no node answers CLUSTER KEYSLOT %s", key);
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

/* The port of the master of slot when every node up agrees, else -1. */
static int cl_owner(int slot)
{
    int owner = -1;
    for (int i = 0; i < NNODES; i++) {
        if (!node_up(i))
            continue;
        int o = owner_at(C.port[i], slot);
        if (o < 0 || (owner >= 0 && o != owner))
            return -1;
        owner = o;
    }
    return owner;
}

/* Index of the master of slot (every node agreeing); fails otherwise. */
static int cl_owner_idx(int slot)
{
    int port = cl_owner(slot);
    int i = port > 0 ? idx_of_port(port) : -1;
    CL_CHECK(i >= 0, "the nodes do not agree on the master of slot %d", slot);
    return i;
}

/* Index of the replica of master m (as last read by cl_topology), or -1. */
static int replica_of(int m)
{
    for (int i = 0; i < NNODES; i++)
        if (C.master[i] == m)
            return i;
    return -1;
}

/* Reads ids and roles from CLUSTER NODES of the node on port.  Returns 1
 * when it lists all six nodes, three masters holding slots and one replica
 * for each. */
static int cl_topology(int port)
{
    redisReply *r = h_redis_at(port, "CLUSTER NODES");
    if (!r || r->type != REDIS_REPLY_STRING) {
        if (r)
            freeReplyObject(r);
        return 0;
    }
    char ids[NNODES][48] = { { 0 } }, mids[NNODES][48] = { { 0 } };
    int is_master[NNODES] = { 0 }, has_slots[NNODES] = { 0 }, seen = 0;
    char *save = NULL;
    for (char *line = strtok_r(r->str, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char id[48], addr[128], flags[128], master[48];
        if (sscanf(line, "%47s %127s %127s %47s", id, addr, flags, master) != 4)
            continue;
        /* addr is ip:port@cport[,hostname]. */
        char *colon = strchr(addr, ':');
        int i = colon ? idx_of_port(atoi(colon + 1)) : -1;
        if (i < 0)
            continue;
        seen++;
        snprintf(ids[i], sizeof ids[i], "%s", id);
        is_master[i] = strstr(flags, "master") != NULL;
        snprintf(mids[i], sizeof mids[i], "%s", master);
        /* Slots follow the 8 fixed fields. */
        int fields = 0;
        for (const char *p = line; *p; p++)
            if (*p == ' ' && p[1] && p[1] != ' ')
                fields++;
        has_slots[i] = fields >= 8;
    }
    freeReplyObject(r);
    if (seen != NNODES)
        return 0;
    int masters = 0;
    for (int i = 0; i < NNODES; i++) {
        snprintf(C.id[i], sizeof C.id[i], "%s", ids[i]);
        C.master[i] = -1;
        if (is_master[i]) {
            masters += has_slots[i];
            continue;
        }
        for (int j = 0; j < NNODES; j++)
            if (is_master[j] && strcmp(mids[i], ids[j]) == 0)
                C.master[i] = j;
    }
    if (masters != 3)
        return 0;
    for (int m = 0; m < NNODES; m++) {
        if (C.master[m] >= 0)
            continue;
        int n = 0;
        for (int i = 0; i < NNODES; i++)
            n += C.master[i] == m;
        if (n != 1)
            return 0;
    }
    return 1;
}

/* 1 when every node up says cluster_state:ok with all slots assigned and
 * none failing. */
static int cl_all_ok(void)
{
    for (int i = 0; i < NNODES; i++) {
        if (!node_up(i))
            continue;
        if (!r_str_has(C.port[i], "CLUSTER INFO", "cluster_state:ok") ||
            r_str_num(C.port[i], "CLUSTER INFO", "cluster_slots_assigned") != NSLOTS ||
            r_str_num(C.port[i], "CLUSTER INFO", "cluster_slots_ok") != NSLOTS)
            return 0;
    }
    return 1;
}

/* Waits (bounded) until cl_all_ok(); returns the ms it took or -1. */
static long long cl_wait_ok(int ms)
{
    long long t0 = h_now_ms();
    for (int i = 0; i < 10000 && h_now_ms() - t0 < ms; i++) {
        if (cl_all_ok())
            return h_now_ms() - t0;
        h_sleep_ms(100);
    }
    return -1;
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
    for (int i = 0; i < NNODES; i++)
        if (C.port[i] && (p == C.port[i] || p == C.port[i] + 10000))
            return 1;
    return 0;
}

/* A free port P < 55535 whose cluster bus port P + 10000 is free too, and
 * neither used by this test yet. */
static int cl_free_port(void)
{
    for (int attempt = 0; attempt < 200; attempt++) {
        int p = h_free_port();
        if (p + 10000 > 65535 || port_used(p) || port_used(p + 10000) ||
            !port_bindable(p + 10000))
            continue;
        return p;
    }
    CL_CHECK(0, "no free port with a free cluster bus port");
    return -1;
}

static void node_write_conf(int i)
{
    char *dir = h_fmt("%s/node%d", H.dir, i);
    char *conf = h_fmt("%s/node%d.conf", H.dir, i);
    mkdir(dir, 0755);
    FILE *f = fopen(conf, "w");
    CL_CHECK(f != NULL, "fopen %s: %s", conf, strerror(errno));
    fprintf(f,
            "# written by tests/check_cluster.c\n"
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
            C.port[i], dir, C.port[i], H.dir, i);
    CL_CHECK(fclose(f) == 0, "fclose %s", conf);
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
    h_spawn(argv, out, &C.node[i]);
    free(conf);
    free(out);
    long long end = h_now_ms() + H_WAIT_MS;
    for (int k = 0; k < 1000 && h_now_ms() < end && h_alive(&C.node[i]); k++) {
        if (r_ping(C.port[i]))
            return 0;
        h_sleep_ms(20);
    }
    h_stop(&C.node[i], SIGKILL, 2000);
    return -1;
}

/* Starts node i for the first time, on a new port if one is taken meanwhile. */
static void node_start(int i)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        C.port[i] = 0;
        C.port[i] = cl_free_port();
        node_write_conf(i);
        if (node_spawn(i) == 0)
            return;
    }
    char *name = h_fmt("node%d.log", i);
    char *txt = log_tail(name, 2000);
    CL_CHECK(0, "redis-server node %d did not start (port %d):\n%s", i, C.port[i], txt);
}

/* Restarts node i on the same port and directory (its AOF and nodes.conf):
 * a few tries, since its ports may be taken for a moment by some client's
 * ephemeral port. */
static void node_restart(int i)
{
    for (int attempt = 0; attempt < 10; attempt++) {
        if (node_spawn(i) == 0)
            return;
        h_sleep_ms(300);
    }
    char *name = h_fmt("node%d.log", i);
    char *txt = log_tail(name, 2000);
    CL_CHECK(0, "redis-server node %d did not restart on port %d:\n%s", i, C.port[i], txt);
}

/* Fixture: six nodes, a cluster of three masters with a replica each, all
 * slots ok on every node, every replica online. */
static void cl_setup(void)
{
    h_setup_dir();
    memset(&C, 0, sizeof C);
    for (int i = 0; i < NNODES; i++)
        C.master[i] = -1;
    for (int i = 0; i < NNODES; i++)
        node_start(i);
    char *p = C.seeds;
    for (int i = 0; i < NNODES; i++)
        p += snprintf(p, sizeof C.seeds - (size_t)(p - C.seeds), "%s127.0.0.1:%d",
                      i ? "," : "", C.port[i]);
    /* H.redis_port only fills the url line the harness writes (the cluster
     * takes precedence over it); nothing of the harness talks to it. */
    H.redis_port = C.port[0];

    char *argv[NNODES + 8];
    int argc = 0;
    argv[argc++] = "redis-cli";
    argv[argc++] = "--cluster";
    argv[argc++] = "create";
    for (int i = 0; i < NNODES; i++)
        argv[argc++] = h_fmt("127.0.0.1:%d", C.port[i]);
    argv[argc++] = "--cluster-replicas";
    argv[argc++] = "1";
    argv[argc++] = "--cluster-yes";
    argv[argc] = NULL;
    char *out = NULL;
    long long t0 = h_now_ms();
    int st = h_run(argv, &out, 60000);
    CL_CHECK(st == 0, "redis-cli --cluster create: status %d:\n%.2000s", st,
             out ? out : "(no output)");
    free(out);
    for (int i = 0; i < NNODES; i++)
        free(argv[3 + i]);

    long long ok_ms = cl_wait_ok(CL_WAIT_MS);
    CL_CHECK(ok_ms >= 0, "cluster not ok on every node within %d ms", CL_WAIT_MS);
    int topo = 0;
    long long end = h_now_ms() + CL_WAIT_MS;
    for (int i = 0; i < 1000 && !topo && h_now_ms() < end; i++) {
        topo = 1;
        for (int k = 0; k < NNODES && topo; k++)
            topo = cl_topology(C.port[k]);
        if (!topo)
            h_sleep_ms(100);
    }
    CL_CHECK(topo, "CLUSTER NODES does not show 3 masters with one replica each");
    int online = 0;
    for (int i = 0; i < 1000 && !online && h_now_ms() < end; i++) {
        online = 1;
        for (int k = 0; k < NNODES && online; k++)
            if (C.master[k] >= 0)
                online = replica_online(C.port[C.master[k]], C.port[k]);
        if (!online)
            h_sleep_ms(100);
    }
    CL_CHECK(online, "replicas not online within %d ms", CL_WAIT_MS);
    char roles[256] = "";
    for (int k = 0; k < NNODES; k++)
        if (C.master[k] >= 0)
            snprintf(roles + strlen(roles), sizeof roles - strlen(roles), " %d<-%d",
                     C.port[C.master[k]], C.port[k]);
    fprintf(stderr, "check_cluster: cluster up in %lld ms (master<-replica:%s)\n",
            h_now_ms() - t0, roles);
}

static void cl_teardown(void)
{
    int died = 0, st = 0;
    if (H.daemon.pid && !h_alive(&H.daemon) && !H.daemon_expected_dead) {
        died = 1;
        st = H.daemon.status;
    }
    cl_stop_all();
    h_teardown();
    if (died) {
        char *log = log_tail("daemon.log", 8000);
        ck_abort_msg("streambusd died during the test (status 0x%x); log:\n%s", st, log);
    }
}

/* ------------------------------------------------------------- daemon */

/* Starts streambusd with redis.cluster = every node, plus the stream
 * sections given; waits until ping, stats and /health answer. */
static void cl_daemon_start(const char *streams)
{
    char *lines = h_fmt("cluster = %s\n", C.seeds);
    h_conf_redis(lines);
    free(lines);
    h_conf("log_level = debug\n", NULL, streams);
    if (h_daemon_try_start() != 0) {
        char *log = log_tail("daemon.log", 3000);
        CL_CHECK(0, "streambusd (%s) did not start against the cluster; log:\n%s",
                 h_daemon_path(), log);
    }
}

/* The Redis key of stream s in a cluster. */
static char *skey(const char *s, const char *suffix)
{
    return h_fmt("sb:{%s}%s", s, suffix ? suffix : "");
}

/* An XGROUP CREATE of group (from 0, MKSTREAM) on the stream's master: a
 * group that never reads keeps every entry for the count at the end (the
 * daemon trims what every group has acknowledged). */
static void audit_group(const char *stream)
{
    char *key = skey(stream, NULL);
    int owner = cl_owner_idx(cl_keyslot(key));
    redisReply *r = h_redis_at(C.port[owner], "XGROUP CREATE %s audit 0 MKSTREAM", key);
    CL_CHECK(r && r->type == REDIS_REPLY_STATUS, "XGROUP CREATE %s audit on port %d: %s",
             key, C.port[owner], r && r->str ? r->str : "no reply");
    freeReplyObject(r);
    free(key);
}

/* --------------------------------------------------------- publisher */

/* CL_WINDOW pubs in flight on one connection (replies matched by rid = n),
 * so that a crash or a migration catches several at once.  Data n, msgid
 * m<n>.  A slot holds one n until it is answered ok; a failed try
 * (unavailable, overloaded, indeterminate, no reply, a broken connection)
 * is sent again after CL_RETRY_MS with the same msgid. */
enum { SLOT_FREE, SLOT_FLIGHT, SLOT_RETRY };

typedef struct pubwin {
    sb_client *c;
    const char *stream;
    struct {
        long n;
        int state;
        long long sent_at, retry_at, failing_since;
        int uncertain;          /* a try was indeterminate or unanswered */
    } s[CL_WINDOW];
    long next;                  /* the next new n */
    unsigned char *okd;         /* okd[n] = 1 once answered ok */
    long ok, dups, indeterminate, unavailable, overloaded, noreply, connects;
    long fails;                 /* all failed tries */
    long false_refusals;        /* dup:true after only unavailable/overloaded */
    char refused_list[256];
    char why[3][160];           /* the first message of each error code seen */
    long long max_reply_ms;     /* slowest reply seen */
    long long mark, back;       /* back: first ok of a pub sent after mark */
} pubwin;

static void pw_close(pubwin *w)
{
    if (w->c)
        sb_close(w->c);
    w->c = NULL;
}

static void pw_failed(pubwin *w, int i, long long now)
{
    w->s[i].state = SLOT_RETRY;
    w->s[i].retry_at = now + CL_RETRY_MS;
    if (!w->s[i].failing_since)
        w->s[i].failing_since = now;
    w->fails++;
    CL_CHECK(now - w->s[i].failing_since < CL_GIVEUP_MS,
             "pub m%ld not ok after %d ms of retries (indeterminate %ld, unavailable %ld, "
             "overloaded %ld, no reply %ld)", w->s[i].n, CL_GIVEUP_MS, w->indeterminate,
             w->unavailable, w->overloaded, w->noreply);
}

/* The connection is gone or hangs: every pub in flight counts as not
 * answered and goes again on a new connection. */
static void pw_drop(pubwin *w, long long now)
{
    pw_close(w);
    for (int i = 0; i < CL_WINDOW; i++)
        if (w->s[i].state == SLOT_FLIGHT) {
            w->noreply++;
            w->s[i].uncertain = 1;
            pw_failed(w, i, now);
        }
}

static void pw_send(pubwin *w, int i, long long now)
{
    char err[256], msgid[32];
    if (!w->c) {
        w->connects++;
        if (!(w->c = sb_connect(H.addr, err, sizeof err))) {
            w->noreply++;
            pw_failed(w, i, now);
            return;
        }
    }
    snprintf(msgid, sizeof msgid, "m%ld", w->s[i].n);
    json_t *req = json_pack("{s:s,s:I,s:s,s:I,s:s}", "op", "pub", "rid",
                            (json_int_t)w->s[i].n, "stream", w->stream, "data",
                            (json_int_t)w->s[i].n, "msgid", msgid);
    int rc = sb_send_json(w->c, req);
    json_decref(req);
    w->s[i].state = SLOT_FLIGHT;
    w->s[i].sent_at = now;
    if (rc < 0)
        pw_drop(w, now);
}

static void pw_reply(pubwin *w, json_t *r, long long now)
{
    json_t *rid = json_object_get(r, "rid");
    int i = 0;
    while (i < CL_WINDOW && !(w->s[i].state == SLOT_FLIGHT && json_is_integer(rid) &&
                              json_integer_value(rid) == w->s[i].n))
        i++;
    if (i == CL_WINDOW)
        return;                 /* not ours (any more) */
    if (now - w->s[i].sent_at > w->max_reply_ms)
        w->max_reply_ms = now - w->s[i].sent_at;
    const char *e = json_string_value(json_object_get(r, "error"));
    const char *msg = json_string_value(json_object_get(r, "message"));
    if (json_is_true(json_object_get(r, "ok"))) {
        const char *id = json_string_value(json_object_get(r, "id"));
        CL_CHECK(id && h_id_valid(id), "pub m%ld: ok without a valid id", w->s[i].n);
        w->okd[w->s[i].n] = 1;
        if (w->mark && !w->back && w->s[i].sent_at > w->mark)
            w->back = now;
        w->ok++;
        if (json_is_true(json_object_get(r, "dup"))) {
            w->dups++;
            /* Stored by an earlier try: one the daemon said was not. */
            if (!w->s[i].uncertain) {
                w->false_refusals++;
                size_t len = strlen(w->refused_list);
                if (len < sizeof w->refused_list - 24)
                    snprintf(w->refused_list + len, sizeof w->refused_list - len, " m%ld",
                             w->s[i].n);
            }
        }
        w->s[i].state = SLOT_FREE;
        return;
    }
    int k = !e ? -1 : strcmp(e, "indeterminate") == 0 ? 0 : strcmp(e, "unavailable") == 0 ? 1 :
            strcmp(e, "overloaded") == 0 ? 2 : -1;
    if (k >= 0 && !w->why[k][0])
        snprintf(w->why[k], sizeof w->why[k], "%s", msg ? msg : "(no message)");
    if (k == 0) {
        w->indeterminate++;
        w->s[i].uncertain = 1;
    }
    else if (k == 1)
        w->unavailable++;
    else if (k == 2)
        w->overloaded++;
    else {
        char *t = json_dumps(r, JSON_COMPACT);
        CL_CHECK(0, "pub m%ld: unexpected reply %s", w->s[i].n, t ? t : "?");
    }
    pw_failed(w, i, now);
}

/* (Re)sends what is due, new numbers too while more is true. */
static void pw_send_due(pubwin *w, int more)
{
    long long now = h_now_ms();
    for (int i = 0; i < CL_WINDOW; i++) {
        if (w->s[i].state == SLOT_FREE && more && w->next < CL_MAXN) {
            w->s[i].n = w->next++;
            w->s[i].failing_since = 0;
            w->s[i].uncertain = 0;
            pw_send(w, i, now);
        } else if (w->s[i].state == SLOT_RETRY && now >= w->s[i].retry_at) {
            pw_send(w, i, now);
        }
    }
    if (w->c && sb_flush(w->c) < 0)
        pw_drop(w, now);
}

/* One round: pw_send_due(), then take the replies that come within a few
 * ms.  Returns the number of pubs still unfinished. */
static int pw_step(pubwin *w, int more)
{
    pw_send_due(w, more);
    for (int k = 0; k < 10000 && w->c; k++) {
        json_t *r = sb_read_json(w->c, k == 0 ? 5 : 0);
        if (!r) {
            if (errno != ETIMEDOUT)
                pw_drop(w, h_now_ms());
            break;
        }
        pw_reply(w, r, h_now_ms());
        json_decref(r);
    }
    long long now = h_now_ms();
    for (int i = 0; i < CL_WINDOW; i++)
        if (w->s[i].state == SLOT_FLIGHT && now - w->s[i].sent_at > CL_PUB_MS) {
            pw_drop(w, now);    /* no reply in time */
            break;
        }
    int open = 0;
    for (int i = 0; i < CL_WINDOW; i++)
        open += w->s[i].state != SLOT_FREE;
    return open;
}

/* ----------------------------------------------------------- consumer */

/* Group g, consumer c1, from "all", acking every delivery without waiting
 * for the reply.  A broken connection is subscribed again on the next call. */
typedef struct consumer {
    sb_client *c;
    const char *stream;
    long long sub;
    unsigned short *seen;       /* deliveries per n */
    long distinct, deliveries, redeliveries, subs, breaks, bad;
} consumer;

static int consumer_sub(consumer *k)
{
    char err[256];
    if (!(k->c = sb_connect(H.addr, err, sizeof err)))
        return -1;
    json_t *req = json_pack("{s:s,s:s,s:s,s:s,s:s,s:i}", "op", "sub", "stream", k->stream,
                            "group", "g", "consumer", "c1", "from", "all",
                            "prefetch", 256);
    json_t *r = sb_request(k->c, req, 3000);
    json_decref(req);
    int ok = r && json_is_true(json_object_get(r, "ok")) &&
             json_is_integer(json_object_get(r, "sub"));
    if (ok) {
        k->sub = json_integer_value(json_object_get(r, "sub"));
        k->subs++;
    } else {
        sb_close(k->c);
        k->c = NULL;
    }
    json_decref(r);
    return ok ? 0 : -1;
}

/* Takes every delivery that arrives within wait_ms (then whatever is
 * already there) and acks it. */
static void consumer_drain(consumer *k, int wait_ms)
{
    if (!k->c && consumer_sub(k) != 0)
        return;
    for (int i = 0; i < 100000; i++) {
        json_t *e = sb_next_event(k->c, i == 0 ? wait_ms : 0);
        if (!e) {
            if (errno != ETIMEDOUT && errno != EPROTO) {
                sb_close(k->c);
                k->c = NULL;
                k->breaks++;
            }
            break;
        }
        const char *op = json_string_value(json_object_get(e, "op"));
        if (op && strcmp(op, "msg") == 0) {
            json_t *d = json_object_get(e, "data");
            const char *id = json_string_value(json_object_get(e, "id"));
            long n = json_is_integer(d) ? (long)json_integer_value(d) : -1;
            if (n < 1 || n >= CL_MAXN || !id) {
                k->bad++;
            } else {
                if (k->seen[n]++ == 0)
                    k->distinct++;
                k->deliveries++;
                k->redeliveries += json_integer_value(json_object_get(e, "attempt")) > 1;
            }
            if (id) {
                json_t *ack = json_pack("{s:s,s:I,s:[s]}", "op", "ack", "sub",
                                        (json_int_t)k->sub, "ids", id);
                sb_send_json(k->c, ack);
                json_decref(ack);
            }
        } else if (op && strcmp(op, "bye") == 0) {
            json_decref(e);
            sb_close(k->c);
            k->c = NULL;
            k->breaks++;
            return;
        }
        json_decref(e);
    }
    if (k->c && sb_flush(k->c) < 0) {
        sb_close(k->c);
        k->c = NULL;
        k->breaks++;
    }
}

/* ------------------------------------------------------------ traffic */

/* A publisher and a consumer on one stream, and the count at the end. */
typedef struct traffic {
    pubwin w;
    consumer k;
    long published;             /* n answered ok */
    long entries, bad, lost, undelivered, stream_dups, extra, twice;
    char lost_list[512], undel_list[512];
} traffic;

static void traffic_open(traffic *t, const char *stream)
{
    memset(t, 0, sizeof *t);
    t->w.stream = t->k.stream = stream;
    t->w.next = 1;
    t->w.okd = calloc(CL_MAXN, 1);
    t->k.seen = calloc(CL_MAXN, sizeof *t->k.seen);
    ck_assert(t->w.okd && t->k.seen);
    consumer_drain(&t->k, 0);
    CL_CHECK(t->k.c != NULL, "consumer could not subscribe to %s", stream);
}

/* One round of both; returns the pubs still open. */
static int traffic_step(traffic *t, int more)
{
    int open = pw_step(&t->w, more);
    consumer_drain(&t->k, 0);
    return open;
}

/* kill -9 of node i with pubs in flight: the free slots of the window are
 * filled and sent, and the node dies 1 ms later, while the daemon has them
 * at Redis (fsync always makes each take a while there). */
static void traffic_kill(traffic *t, int i)
{
    pw_send_due(&t->w, 1);
    h_sleep_ms(1);
    h_stop(&C.node[i], SIGKILL, 2000);
}

static void list_add(char *list, size_t size, long n)
{
    size_t len = strlen(list);
    if (len < size - 112)
        snprintf(list + len, size - len, " %ld", n);
}

/* After the traffic: consumes until every n answered ok is delivered (or
 * 20 s), then counts the entries of the stream on port (the audit group
 * keeps them all) against what was answered ok and delivered. */
static void traffic_count(traffic *t, int port, const char *key)
{
    pw_close(&t->w);
    t->published = 0;
    for (long i = 1; i < CL_MAXN; i++)
        t->published += t->w.okd[i];
    long long end = h_now_ms() + 20000;
    for (int i = 0; i < 10000 && t->k.distinct < t->published && h_now_ms() < end; i++)
        consumer_drain(&t->k, 200);
    consumer_drain(&t->k, 500);             /* late redeliveries, for the count */

    unsigned short *stored = calloc(CL_MAXN, sizeof *stored);
    ck_assert(stored != NULL);
    t->entries = stream_counts(port, key, stored, CL_MAXN, &t->bad);
    CL_CHECK(t->entries >= 0, "XRANGE %s on port %d failed", key, port);
    for (long i = 1; i < CL_MAXN; i++) {
        if (t->w.okd[i] && !stored[i]) {
            t->lost++;
            list_add(t->lost_list, sizeof t->lost_list, i);
        }
        if (t->w.okd[i] && !t->k.seen[i]) {
            t->undelivered++;
            list_add(t->undel_list, sizeof t->undel_list, i);
        }
        if (stored[i] > 1)
            t->stream_dups += stored[i] - 1;
        if (stored[i] && !t->w.okd[i])
            t->extra++;
        if (t->k.seen[i] > 1)
            t->twice++;
    }
    free(stored);
}

/* The figures common to the traffic tests, for their line on stderr. */
static char *traffic_figures(const traffic *t)
{
    return h_fmt("%ld published ok (%ld dup replies), indeterminate %ld, unavailable %ld, "
                 "no reply %ld, overloaded %ld, slowest reply %lld ms; stream %ld entries "
                 "(%ld duplicate, %ld not ok'd, %ld bad); group: %ld distinct delivered, %ld "
                 "deliveries (%ld with attempt > 1, %ld n more than once), %ld subs; "
                 "LOST %ld, UNDELIVERED %ld; first messages: indeterminate '%s', "
                 "unavailable '%s', overloaded '%s'",
                 t->published, t->w.dups, t->w.indeterminate, t->w.unavailable,
                 t->w.noreply, t->w.overloaded, t->w.max_reply_ms, t->entries,
                 t->stream_dups, t->extra, t->bad, t->k.distinct, t->k.deliveries,
                 t->k.redeliveries, t->twice, t->k.subs, t->lost, t->undelivered,
                 t->w.why[0], t->w.why[1], t->w.why[2]);
}

static void traffic_verdict(traffic *t, const char *where)
{
    CL_CHECK(t->published > 0, "no pub answered ok");
    CL_CHECK(t->lost == 0, "%ld pubs answered ok are not on %s:%s%s", t->lost, where,
             t->lost_list, t->lost > 40 ? " ..." : "");
    CL_CHECK(t->undelivered == 0, "%ld pubs answered ok were never delivered:%s%s",
             t->undelivered, t->undel_list, t->undelivered > 40 ? " ..." : "");
    CL_CHECK(t->k.bad == 0 && t->bad == 0, "deliveries or entries with unexpected data");
    CL_CHECK(t->w.false_refusals == 0, "%ld pubs answered unavailable or overloaded (\"not "
             "stored\") were stored: their retry got dup:true:%s", t->w.false_refusals,
             t->w.refused_list);
}

static void traffic_close(traffic *t)
{
    pw_close(&t->w);
    if (t->k.c)
        sb_close(t->k.c);
    t->k.c = NULL;
    free(t->w.okd);
    free(t->k.seen);
}

/* -------------------------------------------------------------- basic */

#define B_N       20           /* events per stream */
#define B_MAXS    16

static const char *b_names[] = {
    "market_data", "trading_signal", "risk_alert", "strategy_update", "system_event",
    /* more, used only if the five above all hash to one master */
    "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9",
};

static json_t *find_named(json_t *arr, const char *key, const char *name)
{
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o) {
        const char *s = json_string_value(json_object_get(o, key));
        if (s && strcmp(s, name) == 0)
            return o;
    }
    return NULL;
}

/* Every key that mentions stream s, on every master: each must be on the
 * stream's master, in the stream's slot.  Returns how many there are. */
static long keys_of_stream_in_place(const char *s, int owner, int slot)
{
    long found = 0;
    char *pat = h_fmt("*%s*", s);
    for (int i = 0; i < NNODES; i++) {
        if (C.master[i] >= 0 || !node_up(i))
            continue;
        char cursor[32] = "0";
        for (int page = 0; page < 1000; page++) {
            redisReply *r = h_redis_at(C.port[i], "SCAN %s MATCH %s COUNT 1000", cursor, pat);
            CL_CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2,
                     "SCAN on port %d failed", C.port[i]);
            snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
            for (size_t k = 0; k < r->element[1]->elements; k++) {
                const char *key = r->element[1]->element[k]->str;
                CL_CHECK(i == owner, "key %s of stream %s is on port %d, not on its master %d",
                         key, s, C.port[i], C.port[owner]);
                int ks = cl_keyslot(key);
                CL_CHECK(ks == slot, "key %s is in slot %d, stream %s in slot %d", key, ks, s,
                         slot);
                found++;
            }
            freeReplyObject(r);
            if (strcmp(cursor, "0") == 0)
                break;
        }
    }
    free(pat);
    return found;
}

START_TEST(t_basic)
{
    /* Streams until their slots lie on at least two masters (all five
     * trading streams in any case). */
    const char *names[B_MAXS];
    int slot[B_MAXS], owner[B_MAXS], ns = 0, masters_used = 0, used[NNODES] = { 0 };
    for (size_t i = 0; i < sizeof b_names / sizeof *b_names && ns < B_MAXS; i++) {
        if (i >= 5 && masters_used >= 2)
            break;
        char *key = skey(b_names[i], NULL);
        names[ns] = b_names[i];
        slot[ns] = cl_keyslot(key);
        owner[ns] = cl_owner_idx(slot[ns]);
        char *dlq = skey(b_names[i], ":dlq");
        CL_CHECK(cl_keyslot(dlq) == slot[ns], "%s and %s in different slots", key, dlq);
        free(dlq);
        free(key);
        if (!used[owner[ns]]++)
            masters_used++;
        ns++;
    }
    CL_CHECK(masters_used >= 2, "test bug: every stream tried hashes to one master");
    char layout[512] = "";
    for (int s = 0; s < ns; s++)
        snprintf(layout + strlen(layout), sizeof layout - strlen(layout), " %s:%d@%d",
                 names[s], slot[s], C.port[owner[s]]);
    fprintf(stderr, "check_cluster: basic: streams (slot@master):%s\n", layout);

    cl_daemon_start("[stream trading_signal]\n"
                    "durability = replicas:1:2000\n"
                    "[stream dl]\n"
                    "max_attempts = 2\n"
                    "retry_delay_ms = 100\n");
    sb_client *p = h_connect(), *c = h_connect();

    /* Pubs, each with a msgid; the entries are on the slot's master. */
    char *ids[B_MAXS][B_N];
    for (int s = 0; s < ns; s++) {
        for (int n = 0; n < B_N; n++) {
            json_t *r = h_req(p, "{'op':'pub','stream':'%s','data':{'n':%d},'type':'T',"
                                 "'msgid':'%s-%d'}", names[s], n, names[s], n);
            if (!json_is_true(json_object_get(r, "ok"))) {
                char *txt = json_dumps(r, JSON_COMPACT);
                CL_CHECK(0, "pub %d to %s: %s", n, names[s], txt ? txt : "?");
            }
            ids[s][n] = strdup(h_str(r, "id"));
            CL_CHECK(h_id_valid(ids[s][n]), "pub to %s: bad id %s", names[s], ids[s][n]);
            json_decref(r);
        }
    }
    for (int s = 0; s < ns; s++) {
        char *key = skey(names[s], NULL);
        long long len = r_int(C.port[owner[s]], "XLEN %s", key);
        CL_CHECK(len == B_N, "XLEN %s on its master (port %d): %lld, want %d", key,
                 C.port[owner[s]], len, B_N);
        CL_CHECK(r_has_entry(C.port[owner[s]], key, ids[s][0]) &&
                 r_has_entry(C.port[owner[s]], key, ids[s][B_N - 1]),
                 "the ids the pubs returned are not in %s on port %d", key,
                 C.port[owner[s]]);
        long keys = keys_of_stream_in_place(names[s], owner[s], slot[s]);
        CL_CHECK(keys >= 1, "no key of %s found", names[s]);
        free(key);
    }
    /* replicas:1: the entry is on the replica too when the pub is ok. */
    for (int s = 0; s < ns; s++) {
        if (strcmp(names[s], "trading_signal") != 0)
            continue;
        char *key = skey(names[s], NULL);
        int rep = replica_of(owner[s]);
        CL_CHECK(rep >= 0 && r_has_entry(C.port[rep], key, ids[s][B_N - 1]),
                 "replicas:1 entry %s not on the replica (port %d) of %s's master",
                 ids[s][B_N - 1], rep >= 0 ? C.port[rep] : -1, names[s]);
        free(key);
    }

    /* Dedup: the same msgid again returns the first id, stores nothing. */
    for (int s = 0; s < ns; s++) {
        json_t *r = h_ok(h_req(p, "{'op':'pub','stream':'%s','data':'again','msgid':'%s-0'}",
                               names[s], names[s]));
        CL_CHECK(strcmp(h_str(r, "id"), ids[s][0]) == 0 &&
                 json_is_true(json_object_get(r, "dup")),
                 "repeated msgid on %s: id %s dup %d, want %s dup true", names[s],
                 h_str(r, "id"), json_is_true(json_object_get(r, "dup")), ids[s][0]);
        json_decref(r);
        char *key = skey(names[s], NULL);
        long long len = r_int(C.port[owner[s]], "XLEN %s", key);
        CL_CHECK(len == B_N, "XLEN %s after a duplicate: %lld, want %d", key, len, B_N);
        free(key);
    }

    /* stats before anyone reads, one stream and all. */
    json_t *r = h_ok(h_req(c, "{'op':'stats'}"));
    for (int s = 0; s < ns; s++) {
        json_t *st = find_named(json_object_get(r, "streams"), "stream", names[s]);
        char *txt = json_dumps(r, JSON_COMPACT);
        CL_CHECK(st != NULL, "stats lacks %s: %.1000s", names[s], txt ? txt : "?");
        free(txt);
        CL_CHECK(h_int(st, "length") == B_N && h_int(st, "dlq_length") == 0,
                 "stats %s: length %lld dlq_length %lld", names[s], h_int(st, "length"),
                 h_int(st, "dlq_length"));
    }
    json_decref(r);

    /* One subscription per stream on one connection; every entry once. */
    long long subs[B_MAXS];
    for (int s = 0; s < ns; s++)
        subs[s] = h_sub(c, names[s], "g", "c1", 64, "all");
    int got[B_MAXS][B_N];
    memset(got, 0, sizeof got);
    long total = 0;
    long long end = h_now_ms() + 10000;
    for (int i = 0; i < 100000 && total < ns * B_N && h_now_ms() < end; i++) {
        json_t *m = h_event(c, 200);
        if (!m)
            continue;
        const char *op = json_string_value(json_object_get(m, "op"));
        CL_CHECK(op && strcmp(op, "msg") == 0, "unexpected event op %s", op ? op : "?");
        const char *stream = h_str(m, "stream"), *id = h_str(m, "id");
        long long n = json_integer_value(json_object_get(json_object_get(m, "data"), "n"));
        int s = 0;
        while (s < ns && strcmp(names[s], stream) != 0)
            s++;
        CL_CHECK(s < ns && n >= 0 && n < B_N, "delivery of %s n %lld", stream, n);
        CL_CHECK(strcmp(id, ids[s][n]) == 0, "%s n %lld delivered with id %s, published as %s",
                 stream, n, id, ids[s][n]);
        CL_CHECK(h_int(m, "sub") == subs[s], "%s delivered on sub %lld, want %lld", stream,
                 h_int(m, "sub"), subs[s]);
        CL_CHECK(got[s][n]++ == 0, "%s n %lld delivered twice", stream, n);
        CL_CHECK(h_ack(c, subs[s], id) == 1, "ack of %s %s did not count", stream, id);
        total++;
        json_decref(m);
    }
    CL_CHECK(total == ns * B_N, "%ld of %d entries delivered within 10 s", total, ns * B_N);
    h_no_msg(c, 300);
    r = h_ok(h_req(c, "{'op':'stats','stream':'%s'}", names[0]));
    json_t *st = json_array_get(json_object_get(r, "streams"), 0);
    json_t *g = find_named(json_object_get(st, "groups"), "group", "g");
    CL_CHECK(g && h_int(g, "pending") == 0 && h_int(g, "consumers") == 1,
             "stats of %s after the acks: group g %s", names[0], g ? "pending/consumers" :
             "missing");
    json_decref(r);
    for (int s = 0; s < ns; s++) {
        char *key = skey(names[s], NULL);
        redisReply *x = h_redis_at(C.port[owner[s]], "XPENDING %s g", key);
        CL_CHECK(x && x->type == REDIS_REPLY_ARRAY && x->elements >= 1 &&
                 x->element[0]->type == REDIS_REPLY_INTEGER && x->element[0]->integer == 0,
                 "XPENDING %s g on its master is not 0", key);
        freeReplyObject(x);
        free(key);
    }

    /* Dead letters: past max_attempts (2), and nack dead; both in
     * sb:{dl}:dlq on the master of sb:{dl}. */
    char *dkey = skey("dl", NULL), *dlq = skey("dl", ":dlq");
    long long dsub = h_sub(c, "dl", "g", "c1", 0, NULL);
    char *id1 = h_pub(p, "dl", "{\"poison\":1}");
    char *id2 = h_pub(p, "dl", "{\"poison\":2}");
    int downer = cl_owner_idx(cl_keyslot(dkey));
    CL_CHECK(cl_keyslot(dlq) == cl_keyslot(dkey), "%s not in the slot of %s", dlq, dkey);
    int dead1 = 0, dead2 = 0, deliveries = 0;
    end = h_now_ms() + 10000;
    for (int i = 0; i < 1000 && !(dead1 && dead2) && h_now_ms() < end; i++) {
        json_t *m = h_event(c, 100);
        if (m) {
            const char *id = h_str(m, "id");
            long long attempt = h_int(m, "attempt");
            deliveries++;
            CL_CHECK(attempt <= 2, "%s delivered with attempt %lld, max_attempts is 2", id,
                     attempt);
            if (strcmp(id, id1) == 0)       /* nacked until max_attempts */
                json_decref(h_ok(h_req(c, "{'op':'nack','sub':%lld,'ids':['%s'],"
                                          "'delay_ms':0,'reason':'busy'}", dsub, id)));
            else
                json_decref(h_ok(h_req(c, "{'op':'nack','sub':%lld,'ids':['%s'],"
                                          "'dead':true,'reason':'poison'}", dsub, id)));
            json_decref(m);
        }
        redisReply *x = h_redis_at(C.port[downer], "XRANGE %s - +", dlq);
        for (size_t k = 0; x && x->type == REDIS_REPLY_ARRAY && k < x->elements; k++) {
            const char *o = h_entry_field(x->element[k], "origin_id");
            dead1 |= o && strcmp(o, id1) == 0;
            dead2 |= o && strcmp(o, id2) == 0;
        }
        if (x)
            freeReplyObject(x);
    }
    CL_CHECK(dead1 && dead2, "not in %s on its master (port %d) within 10 s: %s%s", dlq,
             C.port[downer], dead1 ? "" : "the max_attempts one ", dead2 ? "" : "the nacked dead one");
    h_no_msg(c, 500);
    CL_CHECK(r_int(C.port[downer], "XLEN %s", dlq) == 2, "XLEN %s is not 2", dlq);
    redisReply *x = h_redis_at(C.port[downer], "XPENDING %s g", dkey);
    CL_CHECK(x && x->type == REDIS_REPLY_ARRAY && x->element[0]->integer == 0,
             "dead letters still pending in %s", dkey);
    freeReplyObject(x);
    /* dlq lists them; replay puts them back, on the same node, attempt 1. */
    r = h_ok(h_req(c, "{'op':'dlq','stream':'dl'}"));
    CL_CHECK(json_array_size(json_object_get(r, "entries")) == 2, "dlq op: %zu entries",
             json_array_size(json_object_get(r, "entries")));
    json_decref(r);
    r = h_ok(h_req(c, "{'op':'replay','stream':'dl','all':true}"));
    CL_CHECK(h_int(r, "replayed") == 2, "replay: replayed %lld", h_int(r, "replayed"));
    json_t *rids = json_object_get(r, "ids");
    for (size_t k = 0; k < json_array_size(rids); k++)
        CL_CHECK(r_has_entry(C.port[downer], dkey, json_string_value(json_array_get(rids, k))),
                 "replayed entry not in %s on port %d", dkey, C.port[downer]);
    json_decref(r);
    CL_CHECK(r_int(C.port[downer], "XLEN %s", dlq) == 0, "%s not empty after replay", dlq);
    for (int k = 0; k < 2; k++) {
        json_t *m = h_msg(c, H_WAIT_MS);
        CL_CHECK(h_int(m, "attempt") == 1, "replayed entry delivered with attempt %lld",
                 h_int(m, "attempt"));
        CL_CHECK(h_ack(c, dsub, h_str(m, "id")) == 1, "ack of a replayed entry");
        json_decref(m);
    }
    r = h_ok(h_req(c, "{'op':'stats','stream':'dl'}"));
    st = json_array_get(json_object_get(r, "streams"), 0);
    CL_CHECK(st && h_int(st, "dlq_length") == 0, "stats dl: dlq_length not 0");
    json_decref(r);

    fprintf(stderr, "check_cluster: basic: %d streams on %d masters, %d entries each, "
            "delivered and acked; dedup ok; 2 dead letters (%d deliveries) on port %d, "
            "replayed\n", ns, masters_used, B_N, deliveries, C.port[downer]);
    for (int s = 0; s < ns; s++)
        for (int n = 0; n < B_N; n++)
            free(ids[s][n]);
    free(id1);
    free(id2);
    free(dkey);
    free(dlq);
    sb_close(p);
    sb_close(c);
}
END_TEST

/* ------------------------------------------------------------ failover */

/* kill -9 of the master of a replicas:1 stream under traffic.  The old
 * master comes back on its port and directory once every node names its
 * replica as the slot's master (it turns into a replica of it), so that
 * WAIT can confirm again.  Then every n answered ok must be on the new
 * master and delivered. */
START_TEST(t_failover)
{
    char *key = skey("dur", NULL);
    int slot = cl_keyslot(key);
    int victim = cl_owner_idx(slot), heir = replica_of(victim);
    CL_CHECK(heir >= 0, "no replica known for the master on port %d", C.port[victim]);
    audit_group("dur");
    cl_daemon_start("[stream dur]\n"
                    "durability = replicas:1:2000\n"
                    "ack_timeout_ms = 2000\n"
                    "max_attempts = 100\n");

    traffic t;
    traffic_open(&t, "dur");
    long long t0 = h_now_ms(), t_kill = 0, t_promoted = 0, t_restarted = 0;
    long long t_converted = 0, last_check = 0, t_first_fail = 0;
    for (int iter = 0; iter < 1000000; iter++) {
        long long now = h_now_ms();
        CL_CHECK(now - t0 < CL_TRAFFIC_MS, "failover phase over %d ms (killed %lld ms in, "
                 "promoted %lld, back %lld; next n %ld)", CL_TRAFFIC_MS,
                 t_kill ? t_kill - t0 : -1, t_promoted ? t_promoted - t0 : -1,
                 t.w.back ? t.w.back - t0 : -1, t.w.next);
        /* New numbers until 3 s after the daemon works again; then only
         * until every pub still open is ok. */
        int more = !(t.w.back && now - t.w.back >= 3000);
        long fails = t.w.fails;
        int open = traffic_step(&t, more);
        now = h_now_ms();
        /* Back: a pub sent after the first failure is ok (replies to pubs
         * stored before the crash may come after that failure). */
        if (t_kill && t.w.fails > fails && !t_first_fail)
            t.w.mark = t_first_fail = now;
        if (!more && open == 0)
            break;

        if (!t_kill && now - t0 >= 2000) {
            traffic_kill(&t, victim);       /* a crash */
            t_kill = h_now_ms();
        }
        if (t_kill && !t_promoted && now - last_check >= 200) {
            last_check = now;
            if (cl_owner(slot) == C.port[heir]) {
                /* Only now: restarted earlier it would be a master again. */
                t_promoted = h_now_ms();
                node_restart(victim);
                t_restarted = h_now_ms();
            }
        }
        if (t_restarted && !t_converted && now - last_check >= 200) {
            last_check = now;
            if (replica_online(C.port[heir], C.port[victim]))
                t_converted = h_now_ms();
        }
        h_sleep_ms(5);
    }
    CL_CHECK(t.w.back, "the daemon never worked again after the kill");
    traffic_count(&t, C.port[heir], key);
    long long ok_ms = cl_wait_ok(CL_WAIT_MS);
    int owner = cl_owner(slot);
    char *fig = traffic_figures(&t);
    fprintf(stderr, "check_cluster: failover: kill of port %d at %lld ms, first failure "
            "+%lld, replica %d promoted +%lld, pubs ok again +%lld (time to recover), old "
            "master a replica again +%lld; %s\n", C.port[victim], t_kill - t0,
            t_first_fail ? t_first_fail - t_kill : -1, C.port[heir], t_promoted - t_kill,
            t.w.back - t_kill, t_converted ? t_converted - t_kill : -1, fig);
    free(fig);
    CL_CHECK(ok_ms >= 0, "cluster not ok on every node after the failover");
    CL_CHECK(owner == C.port[heir], "slot %d is on port %d, want the promoted %d", slot, owner,
             C.port[heir]);
    traffic_verdict(&t, "the new master");
    traffic_close(&t);
    free(key);
}
END_TEST

/* ------------------------------------------------------------- reshard */

/* Moves one slot from master src to master dst by hand, one step per call
 * when due, with pauses, while the test's traffic runs between the calls:
 * 0 dst IMPORTING, 1 src MIGRATING, 2 every key of the slot but the stream
 * key in batches, 3 the stream key alone, 4 whatever is left, 5 SETSLOT NODE
 * on dst, src and the third master. */
typedef struct migration {
    int src, dst, slot;
    const char *key;            /* the stream key, moved on its own */
    int step;
    long long due;
    long keys, batches;
    long long t_start, t_key, t_done;
} migration;

#define MG_BATCH 50

/* MIGRATE of keys (n of them) from src to dst; fails on any error. */
static void mg_migrate(migration *m, char **keys, size_t n)
{
    char port[16];
    snprintf(port, sizeof port, "%d", C.port[m->dst]);
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
    redisReply *r = h_redis_at_argv(C.port[m->src], argc, argv);
    CL_CHECK(r && r->type == REDIS_REPLY_STATUS, "MIGRATE of %zu keys (first %s) to %d: %s", n,
             keys[0], C.port[m->dst], r && r->str ? r->str : "no reply");
    freeReplyObject(r);
    free(argv);
    m->keys += (long)n;
    m->batches++;
}

/* Up to MG_BATCH keys of the slot on src, without the stream key unless
 * with_stream.  Returns how many (keys malloc'd into out). */
static size_t mg_keys(migration *m, char **out, int with_stream)
{
    redisReply *r = h_redis_at(C.port[m->src], "CLUSTER GETKEYSINSLOT %d %d", m->slot,
                               MG_BATCH + 1);
    CL_CHECK(r && r->type == REDIS_REPLY_ARRAY, "CLUSTER GETKEYSINSLOT on port %d failed",
             C.port[m->src]);
    size_t n = 0;
    for (size_t i = 0; i < r->elements && n < MG_BATCH; i++)
        if (with_stream || strcmp(r->element[i]->str, m->key) != 0)
            out[n++] = strdup(r->element[i]->str);
    freeReplyObject(r);
    return n;
}

static void mg_setslot(int node, const char *how, migration *m)
{
    redisReply *r = h_redis_at(C.port[node], "CLUSTER SETSLOT %d %s %s", m->slot, how,
                               C.id[strcmp(how, "MIGRATING") == 0 ? m->dst :
                                    strcmp(how, "IMPORTING") == 0 ? m->src : m->dst]);
    CL_CHECK(r && r->type == REDIS_REPLY_STATUS, "CLUSTER SETSLOT %d %s on port %d: %s",
             m->slot, how, C.port[node], r && r->str ? r->str : "no reply");
    freeReplyObject(r);
}

/* One step if due; returns 1 once the slot is the destination's. */
static int mg_step(migration *m, long long now)
{
    if (m->t_done)
        return 1;
    if (now < m->due)
        return 0;
    char *keys[MG_BATCH];
    size_t n;
    switch (m->step) {
    case 0:
        m->t_start = now;
        mg_setslot(m->dst, "IMPORTING", m);
        m->step = 1;
        break;
    case 1:
        mg_setslot(m->src, "MIGRATING", m);
        m->step = 2;
        m->due = now + 300;
        break;
    case 2:
        n = mg_keys(m, keys, 0);
        if (n == 0) {
            m->step = 3;
            break;
        }
        mg_migrate(m, keys, n);
        for (size_t i = 0; i < n; i++)
            free(keys[i]);
        m->due = now + 100;
        break;
    case 3:
        keys[0] = strdup(m->key);
        mg_migrate(m, keys, 1);
        free(keys[0]);
        m->t_key = now;
        m->step = 4;
        m->due = now + 500;
        break;
    case 4:
        n = mg_keys(m, keys, 1);
        if (n == 0) {
            m->step = 5;
            break;
        }
        mg_migrate(m, keys, n);
        for (size_t i = 0; i < n; i++)
            free(keys[i]);
        m->due = now + 100;
        break;
    case 5:
        mg_setslot(m->dst, "NODE", m);
        mg_setslot(m->src, "NODE", m);
        for (int i = 0; i < NNODES; i++)
            if (C.master[i] < 0 && i != m->src && i != m->dst && node_up(i))
                mg_setslot(i, "NODE", m);
        m->t_done = h_now_ms();
        return 1;
    }
    return 0;
}

START_TEST(t_reshard)
{
    char *key = skey("rs", NULL);
    migration m = { .key = key, .dst = -1 };
    m.slot = cl_keyslot(key);
    m.src = cl_owner_idx(m.slot);
    for (int i = 0; i < NNODES && m.dst < 0; i++)
        if (C.master[i] < 0 && i != m.src)
            m.dst = i;
    CL_CHECK(m.dst >= 0, "no other master");
    audit_group("rs");
    cl_daemon_start("[stream rs]\n"
                    "ack_timeout_ms = 2000\n"
                    "max_attempts = 100\n");
    const char *kinds[] = { "ASK", "MOVED", "TRYAGAIN" };
    long long before[2][3];
    for (int k = 0; k < 3; k++) {
        before[0][k] = r_errorstat(C.port[m.src], kinds[k]);
        before[1][k] = r_errorstat(C.port[m.dst], kinds[k]);
    }

    traffic t;
    traffic_open(&t, "rs");
    long long t0 = h_now_ms();
    long n_after = 0;           /* the first n published after the move */
    for (int iter = 0; iter < 1000000; iter++) {
        long long now = h_now_ms();
        CL_CHECK(now - t0 < CL_TRAFFIC_MS, "reshard phase over %d ms (migration step %d, %ld "
                 "keys moved; next n %ld)", CL_TRAFFIC_MS, m.step, m.keys, t.w.next);
        /* New numbers until 3 s after the slot moved and the first pub sent
         * after it is ok; then only until every pub still open is ok. */
        int more = !(t.w.back && now - t.w.back >= 3000);
        int open = traffic_step(&t, more);
        if (!more && open == 0)
            break;
        if (now - t0 >= 1500 && !m.t_done && mg_step(&m, h_now_ms())) {
            n_after = t.w.next;
            t.w.mark = h_now_ms();
        }
        h_sleep_ms(5);
    }
    CL_CHECK(m.t_done, "the migration did not finish");
    CL_CHECK(t.w.back, "no pub sent after the move was ok");
    long long ok_ms = cl_wait_ok(CL_WAIT_MS);
    int owner = cl_owner(m.slot);
    long long src_keys = r_int(C.port[m.src], "CLUSTER COUNTKEYSINSLOT %d", m.slot);
    long long dst_keys = r_int(C.port[m.dst], "CLUSTER COUNTKEYSINSLOT %d", m.slot);
    traffic_count(&t, C.port[m.dst], key);
    long after_ok = 0;
    for (long i = n_after; i > 0 && i < t.w.next; i++)
        after_ok += t.w.okd[i];
    long long seen[2][3];
    for (int k = 0; k < 3; k++) {
        seen[0][k] = r_errorstat(C.port[m.src], kinds[k]) - before[0][k];
        seen[1][k] = r_errorstat(C.port[m.dst], kinds[k]) - before[1][k];
    }
    char *fig = traffic_figures(&t);
    fprintf(stderr, "check_cluster: reshard: slot %d from port %d to %d: started at %lld ms, "
            "%ld keys in %ld MIGRATEs, stream key moved +%lld, SETSLOT NODE +%lld; replies "
            "to the daemon: src ASK %lld MOVED %lld TRYAGAIN %lld, dst ASK %lld MOVED %lld "
            "TRYAGAIN %lld; %ld pubs ok after the move; %s\n", m.slot, C.port[m.src],
            C.port[m.dst], m.t_start - t0, m.keys, m.batches, m.t_key - m.t_start,
            m.t_done - m.t_start, seen[0][0], seen[0][1], seen[0][2], seen[1][0],
            seen[1][1], seen[1][2], after_ok, fig);
    free(fig);
    CL_CHECK(ok_ms >= 0, "cluster not ok on every node after the move");
    CL_CHECK(owner == C.port[m.dst], "slot %d is on port %d, want %d", m.slot, owner,
             C.port[m.dst]);
    CL_CHECK(src_keys == 0 && dst_keys > 0, "keys of slot %d: %lld on the old master, %lld "
             "on the new", m.slot, src_keys, dst_keys);
    CL_CHECK(after_ok > 0, "no pub after the move was ok");
    traffic_verdict(&t, "the new master");
    traffic_close(&t);
    free(key);
}
END_TEST

/* -------------------------------------------------------- node_restart */

/* kill -9 of the master of a stream (durability = redis) and its restart
 * on the same port and directory 300 ms later: its replica may not fail
 * over (cluster-replica-no-failover), so the same node, with its AOF
 * (fsync always), serves the slot again. */
START_TEST(t_node_restart)
{
    char *key = skey("nr", NULL);
    int slot = cl_keyslot(key);
    int victim = cl_owner_idx(slot), rep = replica_of(victim);
    CL_CHECK(rep >= 0, "no replica known for the master on port %d", C.port[victim]);
    redisReply *r = h_redis_at(C.port[rep], "CONFIG SET cluster-replica-no-failover yes");
    CL_CHECK(r && r->type == REDIS_REPLY_STATUS, "CONFIG SET on the replica failed");
    freeReplyObject(r);
    audit_group("nr");
    cl_daemon_start("[stream nr]\n"
                    "ack_timeout_ms = 2000\n"
                    "max_attempts = 100\n");

    traffic t;
    traffic_open(&t, "nr");
    long long t0 = h_now_ms(), t_kill = 0, t_restarted = 0, t_first_fail = 0;
    for (int iter = 0; iter < 1000000; iter++) {
        long long now = h_now_ms();
        CL_CHECK(now - t0 < CL_TRAFFIC_MS, "restart phase over %d ms (killed %lld ms in, "
                 "restarted %lld, back %lld; next n %ld)", CL_TRAFFIC_MS,
                 t_kill ? t_kill - t0 : -1, t_restarted ? t_restarted - t0 : -1,
                 t.w.back ? t.w.back - t0 : -1, t.w.next);
        int more = !(t.w.back && now - t.w.back >= 3000);
        long fails = t.w.fails;
        int open = traffic_step(&t, more);
        now = h_now_ms();
        if (t_kill && t.w.fails > fails && !t_first_fail)
            t.w.mark = t_first_fail = now;
        if (t_restarted && !t.w.mark)
            t.w.mark = t_restarted;   /* no failure seen: back = ok after the restart */
        if (!more && open == 0)
            break;
        if (!t_kill && now - t0 >= 2000) {
            traffic_kill(&t, victim);
            t_kill = h_now_ms();
        }
        if (t_kill && !t_restarted && now - t_kill >= 300) {
            node_restart(victim);
            t_restarted = h_now_ms();
        }
        h_sleep_ms(5);
    }
    CL_CHECK(t.w.back, "the daemon never worked again after the restart");
    long long ok_ms = cl_wait_ok(CL_WAIT_MS);
    int owner = cl_owner(slot);
    traffic_count(&t, C.port[victim], key);
    char *fig = traffic_figures(&t);
    fprintf(stderr, "check_cluster: node_restart: kill of port %d at %lld ms, restarted "
            "+%lld, first failure +%lld, pubs ok again +%lld; slot's master now port %d; "
            "%s\n", C.port[victim], t_kill - t0, t_restarted - t_kill,
            t_first_fail ? t_first_fail - t_kill : -1, t.w.back - t_kill, owner, fig);
    free(fig);
    CL_CHECK(ok_ms >= 0, "cluster not ok on every node after the restart");
    CL_CHECK(owner == C.port[victim], "slot %d is on port %d, want the restarted %d", slot,
             owner, C.port[victim]);
    traffic_verdict(&t, "the restarted master");
    traffic_close(&t);
    free(key);
}
END_TEST

/* ---------------------------------------------------------------- main */

static TCase *tcase(Suite *s, const char *name, int timeout)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, cl_setup, cl_teardown);
    tcase_add_unchecked_fixture(tc, NULL, h_reap_orphans);
    tcase_set_timeout(tc, timeout);
    suite_add_tcase(s, tc);
    return tc;
}

int main(void)
{
    h_global_init();
    if (access(h_daemon_path(), X_OK) != 0) {
        fprintf(stderr, "check_cluster: %s not built (make src/streambusd)\n",
                h_daemon_path());
        return 1;
    }
    Suite *s = suite_create("cluster");
    tcase_add_test(tcase(s, "basic", 90), t_basic);
    tcase_add_test(tcase(s, "failover", 150), t_failover);
    tcase_add_test(tcase(s, "reshard", 150), t_reshard);
    tcase_add_test(tcase(s, "node_restart", 150), t_node_restart);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
