/*
 * check_sentinel.c: streambusd behind Redis Sentinel, against real
 * redis-servers.  Each test gets a master, one replica and three sentinels
 * on free loopback ports (tests/redis_sentinel.c), and a streambusd whose
 * [redis] section names only the sentinels and the master (no url, no
 * --redis: it must find the master by itself).
 *
 *   discovery  the daemon finds the master through the sentinels.
 *   failover   kill -9 of the master under traffic (8 pubs in flight) on a
 *              replicas:1 stream: every pub answered ok is on the promoted
 *              replica and is delivered to a consumer group; nothing is lost.
 *   manual     SENTINEL FAILOVER: the daemon follows within seconds; no
 *              replicas:1 pub answered ok is lost.
 *
 * The failover tests print one line of figures to stderr; the traffic of
 * the kill test is tests/traffic.c.
 *
 * Node 0 is the harness's Redis, made the first master, node 1 its
 * replica.  The teardown stops every process by pid,
 * and so does a failed H_CHECK before it aborts; a failed assertion inside
 * the harness leaves them to PR_SET_PDEATHSIG and Check's killpg (see
 * harness.h).  Every wait is bounded.  Select one test case with
 * CK_RUN_CASE=name; SB_TEST_KEEP=1 keeps the logs (daemon.log, node*.log,
 * sentinel*.log).
 */
#include "redis_sentinel.h"
#include "traffic.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------- daemon */

static int daemon_pings(void)
{
    char err[256];
    sb_client *c = sb_connect(H.addr, err, sizeof err);
    if (!c)
        return 0;
    json_t *req = json_pack("{s:s}", "op", "ping");
    json_t *r = sb_request(c, req, 500);
    int ok = r && json_is_true(json_object_get(r, "ok"));
    json_decref(req);
    json_decref(r);
    sb_close(c);
    return ok;
}

/* Starts streambusd with only sentinels/master_name in [redis], plus the
 * stream sections given; waits until it answers ping (not for Redis). */
static void sn_daemon_start(const char *streams)
{
    snprintf(H.conf_path, sizeof H.conf_path, "%s/streambus.conf", H.dir);
    char *log = h_fmt("%s/daemon.log", H.dir);
    for (int attempt = 0; attempt < 3; attempt++) {
        H.port = sn_free_port();
        H.metrics_port = sn_free_port();
        snprintf(H.addr, sizeof H.addr, "127.0.0.1:%d", H.port);
        FILE *f = fopen(H.conf_path, "w");
        ck_assert_msg(f != NULL, "fopen %s: %s", H.conf_path, strerror(errno));
        fprintf(f,
                "; written by tests/check_sentinel.c\n"
                "[server]\n"
                "listen = 127.0.0.1:%d\n"
                "shutdown_timeout_ms = 2000\n"
                "log_level = debug\n"
                "[metrics]\n"
                "listen = 127.0.0.1:%d\n"
                "[redis]\n"
                "sentinels = %s\n"
                "master_name = " SN_MASTER_NAME "\n"
                "%s\n",
                H.port, H.metrics_port, SN.sentinels, streams);
        ck_assert_int_eq(fclose(f), 0);
        char *argv[] = { (char *)h_daemon_path(), "-c", H.conf_path, NULL };
        h_spawn(argv, log, &H.daemon);
        H.daemon_starts++;
        H.daemon_expected_dead = 0;
        long long end = h_now_ms() + H_WAIT_MS;
        for (int i = 0; i < 1000 && h_now_ms() < end && h_alive(&H.daemon); i++) {
            if (daemon_pings()) {
                free(log);
                return;
            }
            h_sleep_ms(20);
        }
        h_stop(&H.daemon, SIGKILL, 1000);   /* a port taken meanwhile: again */
    }
    free(log);
    H_CHECK(0, "streambusd (%s) did not start", h_daemon_path());
}

/* Waits (bounded) for /health 200; returns its status. */
static int wait_health(int ms)
{
    long long end = h_now_ms() + ms;
    int st = -1;
    for (int i = 0; i < 1000 && h_now_ms() < end; i++) {
        st = h_http_get(H.metrics_port, "/health", NULL, NULL);
        if (st == 200)
            break;
        h_sleep_ms(50);
    }
    return st;
}

/* 1 if the daemon's log contains needle. */
static int daemon_log_has(const char *needle)
{
    char *txt = h_daemon_log();
    int has = txt && strstr(txt, needle) != NULL;
    free(txt);
    return has;
}

/* ---------------------------------------------------------- publisher */

enum { PUB_OK, PUB_RETRY, PUB_NOREPLY };

typedef struct pubber {
    sb_client *c;
    const char *stream;
    long ok, dups, indeterminate, unavailable, overloaded, noreply, connects;
} pubber;

/* One pub of data n with msgid m<n>.  The id of an ok reply goes to id.
 * No reply in time: the connection is dropped (a late reply would be
 * taken for the next one) and the next try connects again. */
static int pub_try(pubber *p, long n, char *id, size_t idlen)
{
    char err[256], msgid[32];
    if (!p->c) {
        p->c = sb_connect(H.addr, err, sizeof err);
        p->connects++;
        if (!p->c) {
            p->noreply++;
            return PUB_NOREPLY;
        }
    }
    snprintf(msgid, sizeof msgid, "m%ld", n);
    json_t *req = json_pack("{s:s,s:s,s:I,s:s}", "op", "pub", "stream", p->stream,
                            "data", (json_int_t)n, "msgid", msgid);
    json_t *r = sb_request(p->c, req, TR_PUB_MS);
    json_decref(req);
    if (!r) {
        sb_close(p->c);
        p->c = NULL;
        p->noreply++;
        return PUB_NOREPLY;
    }
    int rc = PUB_RETRY;
    const char *e = json_string_value(json_object_get(r, "error"));
    if (json_is_true(json_object_get(r, "ok"))) {
        const char *s = json_string_value(json_object_get(r, "id"));
        H_CHECK(s && h_id_valid(s), "pub m%ld: ok without a valid id", n);
        snprintf(id, idlen, "%s", s);
        p->ok++;
        p->dups += json_is_true(json_object_get(r, "dup"));
        rc = PUB_OK;
    } else if (e && strcmp(e, "indeterminate") == 0) {
        p->indeterminate++;
    } else if (e && strcmp(e, "unavailable") == 0) {
        p->unavailable++;
    } else if (e && strcmp(e, "overloaded") == 0) {
        p->overloaded++;
    } else {
        char *t = json_dumps(r, JSON_COMPACT);
        H_CHECK(0, "pub m%ld: unexpected reply %s", n, t ? t : "?");
    }
    json_decref(r);
    return rc;
}

/* Publishes n until ok (backoff TR_RETRY_MS), at most for give_up_ms. */
static int pub_until_ok(pubber *p, long n, char *id, size_t idlen, int give_up_ms)
{
    long long end = h_now_ms() + give_up_ms;
    for (int i = 0; i < 100000; i++) {
        if (pub_try(p, n, id, idlen) == PUB_OK)
            return 0;
        if (h_now_ms() >= end)
            break;
        h_sleep_ms(TR_RETRY_MS);
    }
    return -1;
}

static void pub_close(pubber *p)
{
    if (p->c)
        sb_close(p->c);
    p->c = NULL;
}

/* -------------------------------------------------------------- tests */

/* The daemon finds the master through the sentinels: a pub is stored on
 * the master, a replicas:1 pub is confirmed by the replica, /health is 200. */
START_TEST(t_discovery)
{
    sn_daemon_start("[stream d]\ndurability = replicas:1:2000\n");
    pubber p = { .stream = "plain" };
    char id[64];
    H_CHECK(pub_until_ok(&p, 1, id, sizeof id, 10000) == 0,
            "no pub ok within 10 s (indeterminate %ld, unavailable %ld, no reply %ld)",
            p.indeterminate, p.unavailable, p.noreply);
    H_CHECK(h_redis_has_entry(SN.port[0], "sb:plain", id), "entry %s not on the master", id);

    pubber pd = { .stream = "d" };
    H_CHECK(pub_until_ok(&pd, 1, id, sizeof id, 5000) == 0,
            "replicas:1 pub not ok within 5 s (indeterminate %ld)", pd.indeterminate);
    H_CHECK(h_redis_has_entry(SN.port[0], "sb:d", id), "entry %s not on the master", id);
    H_CHECK(h_redis_has_entry(SN.port[1], "sb:d", id), "replicas:1 entry %s not on the replica", id);

    char *body = NULL;
    int st = h_http_get(H.metrics_port, "/health", &body, NULL);
    H_CHECK(st == 200 && body && strstr(body, "\"redis\":\"up\""), "/health: %d %s", st,
            body ? body : "");
    free(body);
    char *want = h_fmt("master is 127.0.0.1:%d", SN.port[0]);
    H_CHECK(daemon_log_has(want), "daemon log lacks '%s'", want);
    free(want);
    pub_close(&p);
    pub_close(&pd);
}
END_TEST
/* kill -9 of the master 2 s in.  The old master comes back on its port
 * once the sentinels agree on the new one (it restarts empty: sentinels
 * turn it into a replica), so that WAIT can confirm again. */
typedef struct kill9 {
    long long t_agree, t_converted, last_check;
} kill9;

static void kill9_fault(traffic *t, void *ctx, long long now)
{
    kill9 *f = ctx;
    if (!t->t_fault && now - t->t0 >= 2000) {
        sn_node_kill(0);                /* the master: a crash */
        t->t_fault = h_now_ms();
    }
    if (t->t_fault && !f->t_agree && now - f->last_check >= 200) {
        f->last_check = now;
        if (sn_agree() == SN.port[1]) {
            /* Only now: restarted earlier, the empty node would be taken
             * for the master by a sentinel that did not switch yet. */
            f->t_agree = h_now_ms();
            sn_node_start(0, 0);
            snprintf(t->note, sizeof t->note, "sentinels agreed %lld ms in",
                     f->t_agree - t->t0);
        }
    }
    if (f->t_agree && !f->t_converted && now - f->last_check >= 200) {
        f->last_check = now;
        if (h_replica_online(SN.port[1], SN.port[0]))
            f->t_converted = h_now_ms();
    }
}

/* kill -9 of the master under traffic on a replicas:1 stream (tests/
 * traffic.c: TR_WINDOW pubs in flight, each retried with the same msgid
 * until ok; a consumer group reads from "all" and acks).  Then every n
 * answered ok must be on the new master and delivered. */
START_TEST(t_failover_kill)
{
    /* The daemon trims what every group has acked: a group that never reads
     * keeps every entry for the count at the end. */
    redisReply *ar = h_redis_at(SN.port[0], "XGROUP CREATE sb:dur audit 0 MKSTREAM");
    H_CHECK(ar && ar->type == REDIS_REPLY_STATUS, "XGROUP CREATE audit failed");
    freeReplyObject(ar);
    sn_daemon_start("[stream dur]\n"
                    "durability = replicas:1:2000\n"
                    "ack_timeout_ms = 2000\n"
                    "max_attempts = 100\n");
    H_CHECK(wait_health(10000) == 200, "/health not 200 within 10 s");

    traffic t;
    kill9 f = { 0 };
    traffic_open(&t, "dur");
    traffic_run(&t, "failover", kill9_fault, &f);
    int master = sn_agree();
    H_CHECK(master == SN.port[1], "sentinels name port %d, want the promoted %d", master,
            SN.port[1]);
    /* Redeliveries of what the crash swallowed come after ack_timeout_ms
     * (2 s) at the latest. */
    traffic_count(&t, master, "sb:dur");
    char *fig = traffic_figures(&t);
    long long t_kill = t.t_fault;
    fprintf(stderr, "check_sentinel: failover: kill at %lld ms, first failure +%lld, "
            "sentinels agreed +%lld, back +%lld, old master a replica again +%lld; %s\n",
            t_kill - t.t0, t.t_first_fail ? t.t_first_fail - t_kill : -1,
            f.t_agree - t_kill, t.w.back - t_kill,
            f.t_converted ? f.t_converted - t_kill : -1, fig);
    free(fig);
    traffic_verdict(&t, "the new master");
    traffic_close(&t);
}
END_TEST

/* SENTINEL FAILOVER: the old master stays up (and writable: sentinels
 * turn it into a replica only some 10 s later), so a pub that followed is
 * one whose entry is on the new master and not on the old.  Stream "man"
 * has durability = redis: pubs answered ok on the old master after the
 * promotion and before +switch-master are lost; that is the documented
 * window, so it is only reported.  Stream "mand" (replicas:1) gets one try
 * per round meanwhile: none of its pubs answered ok may be lost. */
START_TEST(t_failover_manual)
{
    sn_daemon_start("[stream mand]\ndurability = replicas:1:100\n");
    H_CHECK(wait_health(10000) == 200, "/health not 200 within 10 s");
    pubber p = { .stream = "man" }, pd = { .stream = "mand" };
    enum { MAXIDS = 1000 };
    char (*ids)[64] = calloc(MAXIDS, 64);
    char (*dids)[64] = calloc(MAXIDS, 64);
    ck_assert(ids && dids);
    long dn = 1;
    H_CHECK(pub_until_ok(&p, 1, ids[1], 64, 5000) == 0, "first pub not ok");
    H_CHECK(h_redis_has_entry(SN.port[0], "sb:man", ids[1]), "first entry not on the master");

    redisReply *r = h_redis_at(SN.sport[0], "SENTINEL FAILOVER %s", SN_MASTER_NAME);
    H_CHECK(r && r->type == REDIS_REPLY_STATUS, "SENTINEL FAILOVER: %s",
            r && r->str ? r->str : "no reply");
    freeReplyObject(r);
    long long t0 = h_now_ms(), t_follow = 0;

    /* A pub every 50 ms, each until ok, until one lands on node 1 only. */
    long n = 2;
    for (int i = 0; i < 10000 && n < MAXIDS && !t_follow; i++) {
        H_CHECK(h_now_ms() - t0 < 20000, "no pub ok on the new master within 20 s "
                "(indeterminate %ld, unavailable %ld, no reply %ld)", p.indeterminate,
                p.unavailable, p.noreply);
        H_CHECK(pub_until_ok(&p, n, ids[n], 64, 10000) == 0, "pub m%ld not ok in 10 s", n);
        if (h_redis_has_entry(SN.port[1], "sb:man", ids[n]) &&
            !h_redis_has_entry(SN.port[0], "sb:man", ids[n]))
            t_follow = h_now_ms();
        n++;
        if (dn < MAXIDS && pub_try(&pd, dn, dids[dn], 64) == PUB_OK)
            dn++;
        h_sleep_ms(50);
    }
    H_CHECK(t_follow, "no pub reached the new master");
    int agreed = sn_agree();
    char *want = h_fmt("master is now 127.0.0.1:%d", SN.port[1]);
    H_CHECK(daemon_log_has(want), "daemon log lacks '%s'", want);
    free(want);
    /* Followed by the sentinels' message, not only by the 5 s poll. */
    want = h_fmt("+switch-master: " SN_MASTER_NAME " from 127.0.0.1:%d to 127.0.0.1:%d",
                 SN.port[0], SN.port[1]);
    H_CHECK(daemon_log_has(want), "daemon log lacks '%s'", want);
    free(want);

    long lost = 0, dlost = 0;
    for (long i = 1; i < n; i++)
        lost += !h_redis_has_entry(SN.port[1], "sb:man", ids[i]);
    for (long i = 1; i < dn; i++)
        dlost += !h_redis_has_entry(SN.port[1], "sb:mand", dids[i]);
    fprintf(stderr, "check_sentinel: manual: pub ok on the new master %lld ms after SENTINEL "
            "FAILOVER; %ld pubs ok, indeterminate %ld, unavailable %ld, no reply %ld; "
            "sentinels agree on %d; %ld ok'd pubs not on the new master (durability = redis: "
            "written to the old master in the switch); replicas:1: %ld ok, indeterminate "
            "%ld, unavailable %ld, lost %ld\n", t_follow - t0, n - 1,
            p.indeterminate, p.unavailable, p.noreply, agreed, lost, dn - 1,
            pd.indeterminate, pd.unavailable, dlost);
    H_CHECK(t_follow - t0 < 10000, "daemon followed only after %lld ms", t_follow - t0);
    H_CHECK(h_redis_has_entry(SN.port[1], "sb:man", ids[1]), "the entry from before the failover "
            "is not on the new master");
    H_CHECK(dn > 1, "no replicas:1 pub was ok");
    H_CHECK(dlost == 0, "%ld replicas:1 pubs answered ok are not on the new master", dlost);
    pub_close(&p);
    pub_close(&pd);
    free(ids);
    free(dids);
}
END_TEST

/* ---------------------------------------------------------------- main */

int main(void)
{
    const h_case cases[] = {
        { "discovery", 40, t_discovery },
        { "failover", 100, t_failover_kill },
        { "manual", 60, t_failover_manual },
    };
    return h_main("check_sentinel", "sentinel", sn_setup, sn_stop_all, cases, 3);
}
