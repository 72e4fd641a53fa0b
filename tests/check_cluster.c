/*
 * check_cluster.c: streambusd against a real Redis Cluster.  Each test gets
 * six nodes made into three masters with one replica each
 * (tests/redis_cluster.c: free ports with free bus ports, appendonly yes,
 * appendfsync always, cluster-node-timeout 2000), and a streambusd whose
 * [redis] section names them as seeds (redis.cluster); the daemon reads the
 * slot map by itself.
 *
 *   basic         streams whose slots lie on at least two masters: pubs land
 *                 in sb:{S} on the master owning the slot, every key of a
 *                 stream is on that node, group delivery and acks, msgid
 *                 dedup, max_attempts and nack dead into sb:{S}:dlq on the
 *                 same node, dlq and replay, stats, /health.
 *   failover      kill -9 of the master owning a replicas:1 stream under
 *                 traffic (TR_WINDOW pubs in flight, each retried with its
 *                 msgid until ok; tests/traffic.c): its replica is promoted,
 *                 the old master comes back as a replica, every pub answered
 *                 ok is on the new master and delivered to the group.
 *   reshard       the stream's slot moved to another master under traffic,
 *                 by hand and slowly (SETSLOT IMPORTING/MIGRATING, MIGRATE
 *                 of the other keys in batches, then the stream key, then
 *                 SETSLOT NODE), so that the daemon meets ASK, TRYAGAIN and
 *                 MOVED: nothing lost, the key and new pubs on the new master.
 *   node_restart  kill -9 of a master and restart on the same port and
 *                 directory before a failover can happen (its replica has
 *                 cluster-replica-no-failover): the daemon reconnects, no
 *                 pub answered ok is lost (AOF, fsync always).
 *   pub_order     mid-migration, a msgid pub (keys split: TRYAGAIN) then a
 *                 plain one (ASK) on one connection: the first is refused,
 *                 not retried behind the second's back.
 *
 * The traffic tests print one line of figures to stderr.
 *
 * The teardown stops every process by pid, and so does a failed H_CHECK
 * before it aborts; a failed assertion inside the harness leaves them to
 * PR_SET_PDEATHSIG and Check's killpg (see harness.h).  Every wait is
 * bounded.  Select one test case with CK_RUN_CASE=name; SB_TEST_KEEP=1
 * keeps the logs (daemon.log, node<i>.log, the nodes' directories).
 */
#include "redis_cluster.h"
#include "traffic.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------------------- basic */

#define B_N       20           /* events per stream */
#define B_MAXS    16

static const char *b_names[] = {
    "market_data", "trading_signal", "risk_alert", "strategy_update", "system_event",
    /* more, used only if the five above all hash to one master */
    "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9",
};

/* Every key that mentions stream s, on every master: each must be on the
 * stream's master, in the stream's slot.  Returns how many there are. */
static long keys_of_stream_in_place(const char *s, int owner, int slot)
{
    long found = 0;
    char *pat = h_fmt("*%s*", s);
    for (int i = 0; i < CL_NODES; i++) {
        if (CL.master[i] >= 0 || !cl_node_up(i))
            continue;
        char cursor[32] = "0";
        for (int page = 0; page < 1000; page++) {
            redisReply *r = h_redis_at(CL.port[i], "SCAN %s MATCH %s COUNT 1000", cursor, pat);
            H_CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2,
                    "SCAN on port %d failed", CL.port[i]);
            snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
            for (size_t k = 0; k < r->element[1]->elements; k++) {
                const char *key = r->element[1]->element[k]->str;
                H_CHECK(i == owner, "key %s of stream %s is on port %d, not on its master %d",
                        key, s, CL.port[i], CL.port[owner]);
                int ks = cl_keyslot(key);
                H_CHECK(ks == slot, "key %s is in slot %d, stream %s in slot %d", key, ks, s,
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
    int slot[B_MAXS], owner[B_MAXS], ns = 0, masters_used = 0, used[CL_NODES] = { 0 };
    for (size_t i = 0; i < sizeof b_names / sizeof *b_names && ns < B_MAXS; i++) {
        if (i >= 5 && masters_used >= 2)
            break;
        char *key = cl_key(b_names[i], NULL);
        names[ns] = b_names[i];
        slot[ns] = cl_keyslot(key);
        owner[ns] = cl_owner_idx(slot[ns]);
        char *dlq = cl_key(b_names[i], ":dlq");
        H_CHECK(cl_keyslot(dlq) == slot[ns], "%s and %s in different slots", key, dlq);
        free(dlq);
        free(key);
        if (!used[owner[ns]]++)
            masters_used++;
        ns++;
    }
    H_CHECK(masters_used >= 2, "test bug: every stream tried hashes to one master");
    char layout[512] = "";
    for (int s = 0; s < ns; s++)
        snprintf(layout + strlen(layout), sizeof layout - strlen(layout), " %s:%d@%d",
                 names[s], slot[s], CL.port[owner[s]]);
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
                H_CHECK(0, "pub %d to %s: %s", n, names[s], txt ? txt : "?");
            }
            ids[s][n] = strdup(h_str(r, "id"));
            H_CHECK(h_id_valid(ids[s][n]), "pub to %s: bad id %s", names[s], ids[s][n]);
            json_decref(r);
        }
    }
    for (int s = 0; s < ns; s++) {
        char *key = cl_key(names[s], NULL);
        long long len = h_redis_int_at(CL.port[owner[s]], "XLEN %s", key);
        H_CHECK(len == B_N, "XLEN %s on its master (port %d): %lld, want %d", key,
                CL.port[owner[s]], len, B_N);
        H_CHECK(h_redis_has_entry(CL.port[owner[s]], key, ids[s][0]) &&
                h_redis_has_entry(CL.port[owner[s]], key, ids[s][B_N - 1]),
                "the ids the pubs returned are not in %s on port %d", key,
                CL.port[owner[s]]);
        long keys = keys_of_stream_in_place(names[s], owner[s], slot[s]);
        H_CHECK(keys >= 1, "no key of %s found", names[s]);
        free(key);
    }
    /* replicas:1: the entry is on the replica too when the pub is ok. */
    for (int s = 0; s < ns; s++) {
        if (strcmp(names[s], "trading_signal") != 0)
            continue;
        char *key = cl_key(names[s], NULL);
        int rep = cl_replica_of(owner[s]);
        H_CHECK(rep >= 0 && h_redis_has_entry(CL.port[rep], key, ids[s][B_N - 1]),
                "replicas:1 entry %s not on the replica (port %d) of %s's master",
                ids[s][B_N - 1], rep >= 0 ? CL.port[rep] : -1, names[s]);
        free(key);
    }

    /* Dedup: the same msgid again returns the first id, stores nothing. */
    for (int s = 0; s < ns; s++) {
        json_t *r = h_ok(h_req(p, "{'op':'pub','stream':'%s','data':'again','msgid':'%s-0'}",
                               names[s], names[s]));
        H_CHECK(strcmp(h_str(r, "id"), ids[s][0]) == 0 &&
                json_is_true(json_object_get(r, "dup")),
                "repeated msgid on %s: id %s dup %d, want %s dup true", names[s],
                h_str(r, "id"), json_is_true(json_object_get(r, "dup")), ids[s][0]);
        json_decref(r);
        char *key = cl_key(names[s], NULL);
        long long len = h_redis_int_at(CL.port[owner[s]], "XLEN %s", key);
        H_CHECK(len == B_N, "XLEN %s after a duplicate: %lld, want %d", key, len, B_N);
        free(key);
    }

    /* stats before anyone reads, one stream and all. */
    json_t *r = h_ok(h_req(c, "{'op':'stats'}"));
    for (int s = 0; s < ns; s++) {
        json_t *st = h_find_named(json_object_get(r, "streams"), "stream", names[s]);
        char *txt = json_dumps(r, JSON_COMPACT);
        H_CHECK(st != NULL, "stats lacks %s: %.1000s", names[s], txt ? txt : "?");
        free(txt);
        H_CHECK(h_int(st, "length") == B_N && h_int(st, "dlq_length") == 0,
                "stats %s: length %lld dlq_length %lld", names[s], h_int(st, "length"),
                h_int(st, "dlq_length"));
    }
    json_decref(r);

    /* /health counts the masters of the slot map. */
    char *health = NULL;
    int code = h_http_get(H.metrics_port, "/health", &health, NULL);
    H_CHECK(code == 200 && health && strstr(health, "\"cluster_masters\":3"),
            "/health: %d %s", code, health ? health : "(none)");
    free(health);
    char *body = NULL;
    code = h_http_get(H.metrics_port, "/metrics", &body, NULL);
    H_CHECK(code == 200 && body && strstr(body, "\nstreambus_cluster_nodes 3\n") &&
            strstr(body, "\nstreambus_cluster_slot_refreshes_total ") &&
            strstr(body, "\nstreambus_redis_redirects_total "),
            "/metrics lacks the cluster metrics (%d)", code);
    free(body);

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
        H_CHECK(op && strcmp(op, "msg") == 0, "unexpected event op %s", op ? op : "?");
        const char *stream = h_str(m, "stream"), *id = h_str(m, "id");
        long long n = json_integer_value(json_object_get(json_object_get(m, "data"), "n"));
        int s = 0;
        while (s < ns && strcmp(names[s], stream) != 0)
            s++;
        H_CHECK(s < ns && n >= 0 && n < B_N, "delivery of %s n %lld", stream, n);
        H_CHECK(strcmp(id, ids[s][n]) == 0, "%s n %lld delivered with id %s, published as %s",
                stream, n, id, ids[s][n]);
        H_CHECK(h_int(m, "sub") == subs[s], "%s delivered on sub %lld, want %lld", stream,
                h_int(m, "sub"), subs[s]);
        H_CHECK(got[s][n]++ == 0, "%s n %lld delivered twice", stream, n);
        H_CHECK(h_ack(c, subs[s], id) == 1, "ack of %s %s did not count", stream, id);
        total++;
        json_decref(m);
    }
    H_CHECK(total == ns * B_N, "%ld of %d entries delivered within 10 s", total, ns * B_N);
    h_no_msg(c, 300);
    r = h_ok(h_req(c, "{'op':'stats','stream':'%s'}", names[0]));
    json_t *st = json_array_get(json_object_get(r, "streams"), 0);
    json_t *g = h_find_named(json_object_get(st, "groups"), "group", "g");
    H_CHECK(g && h_int(g, "pending") == 0 && h_int(g, "consumers") == 1,
            "stats of %s after the acks: group g %s", names[0], g ? "pending/consumers" :
            "missing");
    json_decref(r);
    for (int s = 0; s < ns; s++) {
        char *key = cl_key(names[s], NULL);
        redisReply *x = h_redis_at(CL.port[owner[s]], "XPENDING %s g", key);
        H_CHECK(x && x->type == REDIS_REPLY_ARRAY && x->elements >= 1 &&
                x->element[0]->type == REDIS_REPLY_INTEGER && x->element[0]->integer == 0,
                "XPENDING %s g on its master is not 0", key);
        freeReplyObject(x);
        free(key);
    }

    /* Dead letters: past max_attempts (2), and nack dead; both in
     * sb:{dl}:dlq on the master of sb:{dl}. */
    char *dkey = cl_key("dl", NULL), *dlq = cl_key("dl", ":dlq");
    long long dsub = h_sub(c, "dl", "g", "c1", 0, NULL);
    char *id1 = h_pub(p, "dl", "{\"poison\":1}");
    char *id2 = h_pub(p, "dl", "{\"poison\":2}");
    int downer = cl_owner_idx(cl_keyslot(dkey));
    H_CHECK(cl_keyslot(dlq) == cl_keyslot(dkey), "%s not in the slot of %s", dlq, dkey);
    int dead1 = 0, dead2 = 0, deliveries = 0;
    end = h_now_ms() + 10000;
    for (int i = 0; i < 1000 && !(dead1 && dead2) && h_now_ms() < end; i++) {
        json_t *m = h_event(c, 100);
        if (m) {
            const char *id = h_str(m, "id");
            long long attempt = h_int(m, "attempt");
            deliveries++;
            H_CHECK(attempt <= 2, "%s delivered with attempt %lld, max_attempts is 2", id,
                    attempt);
            if (strcmp(id, id1) == 0)       /* nacked until max_attempts */
                json_decref(h_ok(h_req(c, "{'op':'nack','sub':%lld,'ids':['%s'],"
                                          "'delay_ms':0,'reason':'busy'}", dsub, id)));
            else
                json_decref(h_ok(h_req(c, "{'op':'nack','sub':%lld,'ids':['%s'],"
                                          "'dead':true,'reason':'poison'}", dsub, id)));
            json_decref(m);
        }
        redisReply *x = h_redis_at(CL.port[downer], "XRANGE %s - +", dlq);
        for (size_t k = 0; x && x->type == REDIS_REPLY_ARRAY && k < x->elements; k++) {
            const char *o = h_entry_field(x->element[k], "origin_id");
            dead1 |= o && strcmp(o, id1) == 0;
            dead2 |= o && strcmp(o, id2) == 0;
        }
        if (x)
            freeReplyObject(x);
    }
    H_CHECK(dead1 && dead2, "not in %s on its master (port %d) within 10 s: %s%s", dlq,
            CL.port[downer], dead1 ? "" : "the max_attempts one ",
            dead2 ? "" : "the nacked dead one");
    h_no_msg(c, 500);
    H_CHECK(h_redis_int_at(CL.port[downer], "XLEN %s", dlq) == 2, "XLEN %s is not 2", dlq);
    redisReply *x = h_redis_at(CL.port[downer], "XPENDING %s g", dkey);
    H_CHECK(x && x->type == REDIS_REPLY_ARRAY && x->element[0]->integer == 0,
            "dead letters still pending in %s", dkey);
    freeReplyObject(x);
    /* dlq lists them; replay puts them back, on the same node, attempt 1. */
    r = h_ok(h_req(c, "{'op':'dlq','stream':'dl'}"));
    H_CHECK(json_array_size(json_object_get(r, "entries")) == 2, "dlq op: %zu entries",
            json_array_size(json_object_get(r, "entries")));
    json_decref(r);
    r = h_ok(h_req(c, "{'op':'replay','stream':'dl','all':true}"));
    H_CHECK(h_int(r, "replayed") == 2, "replay: replayed %lld", h_int(r, "replayed"));
    json_t *rids = json_object_get(r, "ids");
    for (size_t k = 0; k < json_array_size(rids); k++)
        H_CHECK(h_redis_has_entry(CL.port[downer], dkey,
                                  json_string_value(json_array_get(rids, k))),
                "replayed entry not in %s on port %d", dkey, CL.port[downer]);
    json_decref(r);
    H_CHECK(h_redis_int_at(CL.port[downer], "XLEN %s", dlq) == 0, "%s not empty after replay",
            dlq);
    for (int k = 0; k < 2; k++) {
        json_t *m = h_msg(c, H_WAIT_MS);
        H_CHECK(h_int(m, "attempt") == 1, "replayed entry delivered with attempt %lld",
                h_int(m, "attempt"));
        H_CHECK(h_ack(c, dsub, h_str(m, "id")) == 1, "ack of a replayed entry");
        json_decref(m);
    }
    r = h_ok(h_req(c, "{'op':'stats','stream':'dl'}"));
    st = json_array_get(json_object_get(r, "streams"), 0);
    H_CHECK(st && h_int(st, "dlq_length") == 0, "stats dl: dlq_length not 0");
    json_decref(r);

    fprintf(stderr, "check_cluster: basic: %d streams on %d masters, %d entries each, "
            "delivered and acked; dedup ok; 2 dead letters (%d deliveries) on port %d, "
            "replayed\n", ns, masters_used, B_N, deliveries, CL.port[downer]);
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

/* ------------------------------------------------------------ traffic */

/* The audit group and the daemon with the section of stream (its
 * settings), then its traffic with the test's fault (tests/traffic.c). */
static void run_traffic(traffic *t, const char *stream, const char *settings,
                        traffic_fault fault, void *ctx)
{
    cl_audit_group(stream);
    char *section = h_fmt("[stream %s]\n%s", stream, settings);
    cl_daemon_start(section);
    free(section);
    traffic_open(t, stream);
    traffic_run(t, stream, fault, ctx);
}

/* ------------------------------------------------------------ failover */

/* kill -9 of the slot's master 2 s in.  The old master comes back on its
 * port and directory once every node names its replica (heir) as the
 * slot's master (it turns into a replica of it), so that WAIT can confirm
 * again. */
typedef struct failover {
    int slot, victim, heir;
    long long t_promoted, t_restarted, t_converted, last_check;
} failover;

static void failover_fault(traffic *t, void *ctx, long long now)
{
    failover *f = ctx;
    if (!t->t_fault && now - t->t0 >= 2000) {
        traffic_kill(t, &CL.node[f->victim]);       /* a crash */
        t->t_fault = h_now_ms();
    }
    if (t->t_fault && !f->t_promoted && now - f->last_check >= 200) {
        f->last_check = now;
        if (cl_owner(f->slot) == CL.port[f->heir]) {
            /* Only now: restarted earlier it would be a master again. */
            f->t_promoted = h_now_ms();
            cl_node_restart(f->victim);
            f->t_restarted = h_now_ms();
            snprintf(t->note, sizeof t->note, "promoted %lld ms in", f->t_promoted - t->t0);
        }
    }
    if (f->t_restarted && !f->t_converted && now - f->last_check >= 200) {
        f->last_check = now;
        if (h_replica_online(CL.port[f->heir], CL.port[f->victim]))
            f->t_converted = h_now_ms();
    }
}

/* Every n answered ok on a replicas:1 stream must be on the new master and
 * delivered. */
START_TEST(t_failover)
{
    char *key = cl_key("dur", NULL);
    failover f = { .slot = cl_keyslot(key) };
    f.victim = cl_owner_idx(f.slot);
    f.heir = cl_replica_of(f.victim);
    H_CHECK(f.heir >= 0, "no replica known for the master on port %d", CL.port[f.victim]);
    traffic t;
    run_traffic(&t, "dur", "durability = replicas:1:2000\n"
                           "ack_timeout_ms = 2000\n"
                           "max_attempts = 100\n", failover_fault, &f);
    traffic_count(&t, CL.port[f.heir], key);
    long long ok_ms = cl_wait_ok(CL_WAIT_MS);
    int owner = cl_owner(f.slot);
    char *fig = traffic_figures(&t);
    long long t_kill = t.t_fault;
    fprintf(stderr, "check_cluster: failover: kill of port %d at %lld ms, first failure "
            "+%lld, replica %d promoted +%lld, pubs ok again +%lld (time to recover), old "
            "master a replica again +%lld; %s\n", CL.port[f.victim], t_kill - t.t0,
            t.t_first_fail ? t.t_first_fail - t_kill : -1, CL.port[f.heir],
            f.t_promoted - t_kill, t.w.back - t_kill,
            f.t_converted ? f.t_converted - t_kill : -1, fig);
    free(fig);
    H_CHECK(ok_ms >= 0, "cluster not ok on every node after the failover");
    H_CHECK(owner == CL.port[f.heir], "slot %d is on port %d, want the promoted %d", f.slot,
            owner, CL.port[f.heir]);
    traffic_verdict(&t, "the new master");
    traffic_verdict_refusals(&t);
    traffic_close(&t);
    free(key);
}
END_TEST

/* ------------------------------------------------------------- reshard */

/* The slot moves by hand and slowly, 1.5 s in (see cl_migration). */
typedef struct reshard {
    cl_migration m;
    long n_after;               /* the first n published after the move */
} reshard;

static void reshard_fault(traffic *t, void *ctx, long long now)
{
    reshard *r = ctx;
    if (now - t->t0 >= 1500 && !r->m.t_done && cl_migrate_step(&r->m, h_now_ms())) {
        r->n_after = t->w.next;
        t->w.mark = h_now_ms();
    }
    snprintf(t->note, sizeof t->note, "migration step %d, %ld keys moved", r->m.step,
             r->m.keys);
}

START_TEST(t_reshard)
{
    char *key = cl_key("rs", NULL);
    reshard rs = { .m = { .key = key, .dst = -1, .batch = 50, .pause_ms = 100 } };
    cl_migration *m = &rs.m;
    m->slot = cl_keyslot(key);
    m->src = cl_owner_idx(m->slot);
    for (int i = 0; i < CL_NODES && m->dst < 0; i++)
        if (CL.master[i] < 0 && i != m->src)
            m->dst = i;
    H_CHECK(m->dst >= 0, "no other master");
    const char *kinds[] = { "ASK", "MOVED", "TRYAGAIN" };
    long long before[2][3];
    for (int k = 0; k < 3; k++) {
        before[0][k] = cl_errorstat(CL.port[m->src], kinds[k]);
        before[1][k] = cl_errorstat(CL.port[m->dst], kinds[k]);
    }
    traffic t;
    run_traffic(&t, "rs", "ack_timeout_ms = 2000\n"
                          "max_attempts = 100\n", reshard_fault, &rs);
    H_CHECK(m->t_done, "the migration did not finish");
    long long ok_ms = cl_wait_ok(CL_WAIT_MS);
    int owner = cl_owner(m->slot);
    long long src_keys = h_redis_int_at(CL.port[m->src], "CLUSTER COUNTKEYSINSLOT %d", m->slot);
    long long dst_keys = h_redis_int_at(CL.port[m->dst], "CLUSTER COUNTKEYSINSLOT %d", m->slot);
    traffic_count(&t, CL.port[m->dst], key);
    long after_ok = 0;
    for (long i = rs.n_after; i > 0 && i < t.w.next; i++)
        after_ok += t.w.okd[i];
    long long seen[2][3];
    for (int k = 0; k < 3; k++) {
        seen[0][k] = cl_errorstat(CL.port[m->src], kinds[k]) - before[0][k];
        seen[1][k] = cl_errorstat(CL.port[m->dst], kinds[k]) - before[1][k];
    }
    char *fig = traffic_figures(&t);
    fprintf(stderr, "check_cluster: reshard: slot %d from port %d to %d: started at %lld ms, "
            "%ld keys in %ld MIGRATEs, stream key moved +%lld, SETSLOT NODE +%lld; replies "
            "to the daemon: src ASK %lld MOVED %lld TRYAGAIN %lld, dst ASK %lld MOVED %lld "
            "TRYAGAIN %lld; %ld pubs ok after the move; %s\n", m->slot, CL.port[m->src],
            CL.port[m->dst], m->t_start - t.t0, m->keys, m->batches, m->t_key - m->t_start,
            m->t_done - m->t_start, seen[0][0], seen[0][1], seen[0][2], seen[1][0],
            seen[1][1], seen[1][2], after_ok, fig);
    free(fig);
    H_CHECK(ok_ms >= 0, "cluster not ok on every node after the move");
    H_CHECK(owner == CL.port[m->dst], "slot %d is on port %d, want %d", m->slot, owner,
            CL.port[m->dst]);
    H_CHECK(src_keys == 0 && dst_keys > 0, "keys of slot %d: %lld on the old master, %lld "
            "on the new", m->slot, src_keys, dst_keys);
    H_CHECK(after_ok > 0, "no pub after the move was ok");
    /* The move was met: the old master redirected the daemon. */
    H_CHECK(seen[0][0] + seen[0][1] > 0, "the old master answered no ASK or MOVED");
    H_CHECK(h_metric_now("streambus_redis_redirects_total", "") > 0,
            "streambus_redis_redirects_total did not count the redirections");
    traffic_verdict(&t, "the new master");
    traffic_verdict_refusals(&t);
    traffic_close(&t);
    free(key);
}
END_TEST

/* -------------------------------------------------------- node_restart */

/* kill -9 of the slot's master 2 s in, and its restart on the same port
 * and directory 300 ms later. */
typedef struct restart {
    int victim;
    long long t_restarted;
} restart;

static void restart_fault(traffic *t, void *ctx, long long now)
{
    restart *r = ctx;
    if (r->t_restarted && !t->w.mark)
        t->w.mark = r->t_restarted;   /* no failure seen: back = ok after the restart */
    if (!t->t_fault && now - t->t0 >= 2000) {
        traffic_kill(t, &CL.node[r->victim]);
        t->t_fault = h_now_ms();
    }
    if (t->t_fault && !r->t_restarted && now - t->t_fault >= 300) {
        cl_node_restart(r->victim);
        r->t_restarted = h_now_ms();
        snprintf(t->note, sizeof t->note, "restarted %lld ms in", r->t_restarted - t->t0);
    }
}

/* The master of a stream (durability = redis) killed and restarted before
 * its replica may fail over (cluster-replica-no-failover): the same node,
 * with its AOF (fsync always), serves the slot again. */
START_TEST(t_node_restart)
{
    char *key = cl_key("nr", NULL);
    int slot = cl_keyslot(key);
    restart rt = { .victim = cl_owner_idx(slot) };
    int rep = cl_replica_of(rt.victim);
    H_CHECK(rep >= 0, "no replica known for the master on port %d", CL.port[rt.victim]);
    redisReply *r = h_redis_at(CL.port[rep], "CONFIG SET cluster-replica-no-failover yes");
    H_CHECK(r && r->type == REDIS_REPLY_STATUS, "CONFIG SET on the replica failed");
    freeReplyObject(r);
    traffic t;
    run_traffic(&t, "nr", "ack_timeout_ms = 2000\n"
                          "max_attempts = 100\n", restart_fault, &rt);
    long long ok_ms = cl_wait_ok(CL_WAIT_MS);
    int owner = cl_owner(slot);
    traffic_count(&t, CL.port[rt.victim], key);
    char *fig = traffic_figures(&t);
    long long t_kill = t.t_fault;
    fprintf(stderr, "check_cluster: node_restart: kill of port %d at %lld ms, restarted "
            "+%lld, first failure +%lld, pubs ok again +%lld; slot's master now port %d; "
            "%s\n", CL.port[rt.victim], t_kill - t.t0, rt.t_restarted - t_kill,
            t.t_first_fail ? t.t_first_fail - t_kill : -1, t.w.back - t_kill, owner, fig);
    free(fig);
    H_CHECK(ok_ms >= 0, "cluster not ok on every node after the restart");
    H_CHECK(owner == CL.port[rt.victim], "slot %d is on port %d, want the restarted %d", slot,
            owner, CL.port[rt.victim]);
    traffic_verdict(&t, "the restarted master");
    traffic_verdict_refusals(&t);
    traffic_close(&t);
    free(key);
}
END_TEST

/* ------------------------------------------------------------ pub_order */

/* The slot of stream "po" halfway through a migration: the stream key is
 * on the destination, nothing else yet.  One connection pipelines a pub
 * with a new msgid (its keys are split: TRYAGAIN) and then a plain pub
 * (ASK, stored on the destination).  What one connection publishes to one
 * stream is stored in the order sent: the first may not be stored after
 * the second, so it is refused (unavailable), never held and retried. */
START_TEST(t_pub_order)
{
    char *key = cl_key("po", NULL);
    int slot = cl_keyslot(key), src = cl_owner_idx(slot), dst = -1;
    for (int i = 0; i < CL_NODES && dst < 0; i++)
        if (CL.master[i] < 0 && i != src)
            dst = i;
    H_CHECK(dst >= 0, "no other master");
    cl_daemon_start("");
    sb_client *c = h_connect();
    json_t *r = h_req(c, "{'op':'pub','stream':'po','data':{'n':0}}");
    H_CHECK(json_is_true(json_object_get(r, "ok")), "first pub refused");
    json_decref(r);

    redisReply *x[4];
    x[0] = h_redis_at(CL.port[dst], "CLUSTER SETSLOT %d IMPORTING %s", slot, CL.id[src]);
    x[1] = h_redis_at(CL.port[src], "CLUSTER SETSLOT %d MIGRATING %s", slot, CL.id[dst]);
    x[2] = h_redis_at(CL.port[src], "MIGRATE 127.0.0.1 %d %s 0 5000", CL.port[dst], key);
    for (int i = 0; i < 3; i++) {
        H_CHECK(x[i] && x[i]->type == REDIS_REPLY_STATUS, "migration step %d failed: %s", i,
                x[i] && x[i]->str ? x[i]->str : "no reply");
        freeReplyObject(x[i]);
    }
    h_send(c, "{'op':'pub','stream':'po','data':{'n':1},'msgid':'po-1'}");
    h_send(c, "{'op':'pub','stream':'po','data':{'n':2}}");
    /* The move ends while a daemon that held the first to retry it would
     * still hold it (replies come in request order: read them after). */
    h_sleep_ms(300);
    x[0] = h_redis_at(CL.port[dst], "CLUSTER SETSLOT %d NODE %s", slot, CL.id[dst]);
    x[1] = h_redis_at(CL.port[src], "CLUSTER SETSLOT %d NODE %s", slot, CL.id[dst]);
    for (int i = 0; i < 2; i++)
        freeReplyObject(x[i]);
    json_t *r1 = h_read(c, 10000), *r2 = h_read(c, 10000);
    const char *e1 = json_string_value(json_object_get(r1, "error"));
    H_CHECK(json_is_true(json_object_get(r2, "ok")), "the plain pub was not stored");
    H_CHECK(!json_is_true(json_object_get(r1, "ok")) && e1 && strcmp(e1, "unavailable") == 0,
            "the msgid pub sent first was not refused while its keys were split");

    /* The client retries: stored now, after the other. */
    H_CHECK(cl_wait_ok(CL_WAIT_MS) >= 0, "cluster not ok after the move");
    json_t *r3 = NULL;
    for (int i = 0; i < 50; i++) {
        json_decref(r3);
        r3 = h_req(c, "{'op':'pub','stream':'po','data':{'n':1},'msgid':'po-1'}");
        if (json_is_true(json_object_get(r3, "ok")))
            break;
        h_sleep_ms(100);
    }
    H_CHECK(json_is_true(json_object_get(r3, "ok")), "the retry was never stored");
    x[0] = h_redis_at(CL.port[dst], "XRANGE %s - +", key);
    H_CHECK(x[0] && x[0]->type == REDIS_REPLY_ARRAY && x[0]->elements == 3,
            "want 3 entries on the new master, got %zu", x[0] ? x[0]->elements : 0);
    for (size_t i = 0; i < 3; i++) {
        const char *data = h_entry_field(x[0]->element[i], "data");
        char want[16];
        snprintf(want, sizeof want, "{\"n\":%d}", i == 0 ? 0 : i == 1 ? 2 : 1);
        H_CHECK(data && strcmp(data, want) == 0, "entry %zu is %s, want %s", i,
                data ? data : "(none)", want);
    }
    freeReplyObject(x[0]);
    json_decref(r1);
    json_decref(r2);
    json_decref(r3);
    sb_close(c);
    free(key);
}
END_TEST

/* ---------------------------------------------------------------- main */

int main(void)
{
    const h_case cases[] = {
        { "basic", 90, t_basic },
        { "failover", 150, t_failover },
        { "reshard", 150, t_reshard },
        { "node_restart", 150, t_node_restart },
        { "pub_order", 90, t_pub_order },
    };
    return h_main("check_cluster", "cluster", cl_setup, cl_stop_all, cases, 5);
}
