/*
 * redis_sentinel.c: a real Redis Sentinel setup for the tests.  See
 * redis_sentinel.h.
 */
#include "redis_sentinel.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

sn_env SN;

h_proc *sn_node(int i)
{
    return i == 0 ? &H.redis : &SN.node1;
}

void sn_stop_all(void)
{
    if (H.daemon.pid)
        h_stop(&H.daemon, SIGTERM, 3000);
    for (int k = 0; k < SN_NSENT; k++)
        if (SN.sent[k].pid)
            h_stop(&SN.sent[k], SIGKILL, 2000);
    if (SN.node1.pid)
        h_stop(&SN.node1, SIGKILL, 2000);
    h_redis_kill(SIGKILL);
}

int sn_free_port(void)
{
    for (int attempt = 0; attempt < 50; attempt++) {
        int p = h_free_port(), used = p == H.redis_port || p == H.port ||
                                      p == H.metrics_port;
        for (int i = 0; i < 2; i++)
            used |= p == SN.port[i];
        for (int k = 0; k < SN_NSENT; k++)
            used |= p == SN.sport[k];
        if (!used)
            return p;
    }
    ck_abort_msg("no unused free port");
    return -1;
}

void sn_node_start(int i, int master_port)
{
    char port[16], mport[16];
    char *dir = h_fmt("%s/node%d", H.dir, i);
    char *log = h_fmt("%s/node%d.log", H.dir, i);
    mkdir(dir, 0755);
    snprintf(port, sizeof port, "%d", SN.port[i]);
    snprintf(mport, sizeof mport, "%d", master_port);
    /* Without a master the list ends before --replicaof. */
    char *argv[] = { "redis-server", "--port", port, "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", dir,
                     "--daemonize", "no", "--repl-diskless-sync-delay", "0",
                     master_port ? "--replicaof" : NULL, "127.0.0.1", mport, NULL };
    h_spawn(argv, log, sn_node(i));
    long long end = h_now_ms() + H_WAIT_MS;
    int up = 0;
    for (int k = 0; k < 1000 && !up && h_now_ms() < end && h_alive(sn_node(i)); k++) {
        up = h_redis_ping(SN.port[i], 1000);
        if (!up)
            h_sleep_ms(20);
    }
    char *txt = h_log_tail(strrchr(log, '/') + 1, 2000);
    H_CHECK(up, "redis-server node %d on port %d did not start:\n%s", i, SN.port[i], txt);
    free(txt);
    free(dir);
    free(log);
}

void sn_node_kill(int i)
{
    if (i == 0)
        h_redis_kill(SIGKILL);
    else
        h_stop(&SN.node1, SIGKILL, 2000);
}

/* down-after-milliseconds is 2000, not 1000: with 1000 the sentinels now
 * and then take the replica they just promoted for down (no PONG in time
 * on the links they reset at +switch-master; redis/redis#8607) and fail
 * over again, in the kill test to the old master that came back empty:
 * everything is lost, the daemon following correctly.  Seen once in ~10
 * runs under ASan. */
static void sentinel_start(int k)
{
    char *conf = h_fmt("%s/sentinel%d.conf", H.dir, k);
    char *log = h_fmt("%s/sentinel%d.log", H.dir, k);
    FILE *f = fopen(conf, "w");
    ck_assert_msg(f != NULL, "fopen %s: %s", conf, strerror(errno));
    fprintf(f,
            "port %d\n"
            "bind 127.0.0.1\n"
            "daemonize no\n"
            "dir %s\n"
            "sentinel monitor " SN_MASTER_NAME " 127.0.0.1 %d 2\n"
            "sentinel down-after-milliseconds " SN_MASTER_NAME " 2000\n"
            "sentinel failover-timeout " SN_MASTER_NAME " 5000\n",
            SN.sport[k], H.dir, SN.port[0]);
    ck_assert_int_eq(fclose(f), 0);
    char *argv[] = { "redis-server", conf, "--sentinel", NULL };
    h_spawn(argv, log, &SN.sent[k]);
    free(conf);
    free(log);
}

int sn_master(int k)
{
    redisReply *r = h_redis_at(SN.sport[k], "SENTINEL get-master-addr-by-name %s",
                               SN_MASTER_NAME);
    int port = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING)
        port = atoi(r->element[1]->str);
    if (r)
        freeReplyObject(r);
    return port;
}

int sn_agree(void)
{
    int port = sn_master(0);
    for (int k = 1; k < SN_NSENT && port > 0; k++)
        if (sn_master(k) != port)
            port = -1;
    return port;
}

/* A field of SENTINEL MASTER as sentinel k sees it (copied to out). */
static int sentinel_field(int k, const char *field, char *out, size_t outlen)
{
    redisReply *r = h_redis_at(SN.sport[k], "SENTINEL MASTER %s", SN_MASTER_NAME);
    int found = 0;
    if (r && r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i + 1 < r->elements && !found; i += 2)
            if (r->element[i]->str && strcmp(r->element[i]->str, field) == 0 &&
                r->element[i + 1]->str) {
                snprintf(out, outlen, "%s", r->element[i + 1]->str);
                found = 1;
            }
    if (r)
        freeReplyObject(r);
    return found;
}

/* 1 when sentinel k knows the master, its replica and both other sentinels. */
static int sentinel_ready(int k)
{
    char slaves[32], others[32];
    return sn_master(k) == SN.port[0] &&
           sentinel_field(k, "num-slaves", slaves, sizeof slaves) && atoi(slaves) == 1 &&
           sentinel_field(k, "num-other-sentinels", others, sizeof others) &&
           atoi(others) == SN_NSENT - 1;
}

void sn_setup(void)
{
    h_setup();
    memset(&SN, 0, sizeof SN);
    SN.port[0] = H.redis_port;
    redisReply *r = h_redis_at(SN.port[0], "CONFIG SET repl-diskless-sync-delay 0");
    ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "CONFIG SET on node 0 failed");
    freeReplyObject(r);
    SN.port[1] = sn_free_port();
    sn_node_start(1, SN.port[0]);
    long long end = h_now_ms() + SN_WAIT_MS;
    int online = 0;
    for (int i = 0; i < 1000 && !online && h_now_ms() < end; i++) {
        online = h_replica_online(SN.port[0], SN.port[1]);
        if (!online)
            h_sleep_ms(50);
    }
    H_CHECK(online, "replica on port %d not online within %d ms", SN.port[1], SN_WAIT_MS);

    char *p = SN.sentinels;
    for (int k = 0; k < SN_NSENT; k++) {
        SN.sport[k] = sn_free_port();
        sentinel_start(k);
        p += snprintf(p, sizeof SN.sentinels - (size_t)(p - SN.sentinels), "%s127.0.0.1:%d",
                      k ? "," : "", SN.sport[k]);
    }
    /* Sentinels find the replica in the master's INFO and each other
     * through hello messages (every 2 s). */
    int ready = 0;
    for (int i = 0; i < 1000 && !ready && h_now_ms() < end; i++) {
        ready = 1;
        for (int k = 0; k < SN_NSENT && ready; k++) {
            H_CHECK(h_alive(&SN.sent[k]), "sentinel %d died", k);
            ready = sentinel_ready(k);
        }
        if (!ready)
            h_sleep_ms(100);
    }
    char *txt = h_log_tail("sentinel0.log", 2000);
    H_CHECK(ready, "sentinels did not converge within %d ms; sentinel0.log:\n%s",
            SN_WAIT_MS, txt);
    free(txt);
}

char *sn_conf_redis(void)
{
    return h_fmt("sentinels = %s\nmaster_name = " SN_MASTER_NAME "\n", SN.sentinels);
}
