/*
 * traffic.c: numbered publish/consume traffic and its count, for the tests
 * that break Redis under it.  See traffic.h.
 */
#include "traffic.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------- publisher */

static void pw_close(tr_pubwin *w)
{
    if (w->c)
        sb_close(w->c);
    w->c = NULL;
}

static void pw_failed(tr_pubwin *w, int i, long long now)
{
    w->s[i].state = TR_SLOT_RETRY;
    w->s[i].retry_at = now + TR_RETRY_MS;
    if (!w->s[i].failing_since)
        w->s[i].failing_since = now;
    w->fails++;
    H_CHECK(now - w->s[i].failing_since < TR_GIVEUP_MS,
            "pub m%ld not ok after %d ms of retries (indeterminate %ld, unavailable %ld, "
            "overloaded %ld, no reply %ld)", w->s[i].n, TR_GIVEUP_MS, w->indeterminate,
            w->unavailable, w->overloaded, w->noreply);
}

/* The connection is gone or hangs: every pub in flight counts as not
 * answered and goes again on a new connection. */
static void pw_drop(tr_pubwin *w, long long now)
{
    pw_close(w);
    for (int i = 0; i < TR_WINDOW; i++)
        if (w->s[i].state == TR_SLOT_FLIGHT) {
            w->noreply++;
            w->s[i].uncertain = 1;
            pw_failed(w, i, now);
        }
}

static void pw_send(tr_pubwin *w, int i, long long now)
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
    w->s[i].state = TR_SLOT_FLIGHT;
    w->s[i].sent_at = now;
    if (rc < 0)
        pw_drop(w, now);
}

static void pw_ok(tr_pubwin *w, int i, json_t *r, long long now)
{
    const char *id = json_string_value(json_object_get(r, "id"));
    H_CHECK(id && h_id_valid(id), "pub m%ld: ok without a valid id", w->s[i].n);
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
    w->s[i].state = TR_SLOT_FREE;
}

static void pw_reply(tr_pubwin *w, json_t *r, long long now)
{
    json_t *rid = json_object_get(r, "rid");
    int i = 0;
    while (i < TR_WINDOW && !(w->s[i].state == TR_SLOT_FLIGHT && json_is_integer(rid) &&
                              json_integer_value(rid) == w->s[i].n))
        i++;
    if (i == TR_WINDOW)
        return;                 /* not ours (any more) */
    if (now - w->s[i].sent_at > w->max_reply_ms)
        w->max_reply_ms = now - w->s[i].sent_at;
    if (json_is_true(json_object_get(r, "ok"))) {
        pw_ok(w, i, r, now);
        return;
    }
    const char *e = json_string_value(json_object_get(r, "error"));
    const char *msg = json_string_value(json_object_get(r, "message"));
    int k = !e ? -1 : strcmp(e, "indeterminate") == 0 ? 0 : strcmp(e, "unavailable") == 0 ? 1 :
            strcmp(e, "overloaded") == 0 ? 2 : -1;
    if (k >= 0 && !w->why[k][0])
        snprintf(w->why[k], sizeof w->why[k], "%s", msg ? msg : "(no message)");
    if (k == 0) {
        w->indeterminate++;
        w->s[i].uncertain = 1;
    } else if (k == 1) {
        w->unavailable++;
    } else if (k == 2) {
        w->overloaded++;
    } else {
        char *t = json_dumps(r, JSON_COMPACT);
        H_CHECK(0, "pub m%ld: unexpected reply %s", w->s[i].n, t ? t : "?");
    }
    pw_failed(w, i, now);
}

/* (Re)sends what is due, new numbers too while more is true. */
static void pw_send_due(tr_pubwin *w, int more)
{
    long long now = h_now_ms();
    for (int i = 0; i < TR_WINDOW; i++) {
        if (w->s[i].state == TR_SLOT_FREE && more && w->next < TR_MAXN) {
            w->s[i].n = w->next++;
            w->s[i].failing_since = 0;
            w->s[i].uncertain = 0;
            pw_send(w, i, now);
        } else if (w->s[i].state == TR_SLOT_RETRY && now >= w->s[i].retry_at) {
            pw_send(w, i, now);
        }
    }
    if (w->c && sb_flush(w->c) < 0)
        pw_drop(w, now);
}

/* One round: pw_send_due(), then take the replies that come within a few
 * ms.  Returns the number of pubs still unfinished. */
static int pw_step(tr_pubwin *w, int more)
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
    for (int i = 0; i < TR_WINDOW; i++)
        if (w->s[i].state == TR_SLOT_FLIGHT && now - w->s[i].sent_at > TR_PUB_MS) {
            pw_drop(w, now);    /* no reply in time */
            break;
        }
    int open = 0;
    for (int i = 0; i < TR_WINDOW; i++)
        open += w->s[i].state != TR_SLOT_FREE;
    return open;
}

/* ----------------------------------------------------------- consumer */

static void consumer_break(tr_consumer *k)
{
    sb_close(k->c);
    k->c = NULL;
    k->breaks++;
}

/* (Re)connects and subscribes group g as consumer c1 from "all"; 0 ok. */
static int consumer_sub(tr_consumer *k)
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

/* Counts one delivery and acks it without waiting for the reply. */
static void consumer_take(tr_consumer *k, json_t *e)
{
    json_t *d = json_object_get(e, "data");
    const char *id = json_string_value(json_object_get(e, "id"));
    long n = json_is_integer(d) ? (long)json_integer_value(d) : -1;
    if (n < 1 || n >= TR_MAXN || !id) {
        k->bad++;
    } else {
        if (k->seen[n]++ == 0)
            k->distinct++;
        k->deliveries++;
        k->redeliveries += json_integer_value(json_object_get(e, "attempt")) > 1;
    }
    if (id) {
        json_t *ack = json_pack("{s:s,s:I,s:[s]}", "op", "ack", "sub", (json_int_t)k->sub,
                                "ids", id);
        sb_send_json(k->c, ack);
        json_decref(ack);
    }
}

/* Takes every delivery that arrives within wait_ms (then whatever is
 * already there).  A broken connection is subscribed again on the next
 * call. */
static void consumer_drain(tr_consumer *k, int wait_ms)
{
    if (!k->c && consumer_sub(k) != 0)
        return;
    for (int i = 0; i < 100000; i++) {
        json_t *e = sb_next_event(k->c, i == 0 ? wait_ms : 0);
        if (!e) {
            if (errno != ETIMEDOUT && errno != EPROTO)
                consumer_break(k);
            break;
        }
        const char *op = json_string_value(json_object_get(e, "op"));
        int bye = op && strcmp(op, "bye") == 0;
        if (op && strcmp(op, "msg") == 0)
            consumer_take(k, e);
        json_decref(e);
        if (bye) {
            consumer_break(k);
            return;
        }
    }
    if (k->c && sb_flush(k->c) < 0)
        consumer_break(k);
}

/* ------------------------------------------------------------ traffic */

void traffic_open(traffic *t, const char *stream)
{
    memset(t, 0, sizeof *t);
    t->w.stream = t->k.stream = stream;
    t->w.next = 1;
    t->w.okd = calloc(TR_MAXN, 1);
    t->k.seen = calloc(TR_MAXN, sizeof *t->k.seen);
    ck_assert(t->w.okd && t->k.seen);
    consumer_drain(&t->k, 0);
    H_CHECK(t->k.c != NULL, "consumer could not subscribe to %s", stream);
}

int traffic_step(traffic *t, int more)
{
    int open = pw_step(&t->w, more);
    consumer_drain(&t->k, 0);
    return open;
}

void traffic_run(traffic *t, const char *name, traffic_fault fault, void *ctx)
{
    t->t0 = h_now_ms();
    for (int iter = 0; iter < 1000000; iter++) {
        long long now = h_now_ms();
        H_CHECK(now - t->t0 < TR_PHASE_MS, "%s phase over %d ms (fault %lld ms in, first "
                "failure %lld, back %lld; next n %ld; %s)", name, TR_PHASE_MS,
                t->t_fault ? t->t_fault - t->t0 : -1,
                t->t_first_fail ? t->t_first_fail - t->t0 : -1,
                t->w.back ? t->w.back - t->t0 : -1, t->w.next, t->note);
        int more = !(t->w.back && now - t->w.back >= 3000);
        long fails = t->w.fails;
        int open = traffic_step(t, more);
        now = h_now_ms();
        if (t->t_fault && t->w.fails > fails && !t->t_first_fail)
            t->w.mark = t->t_first_fail = now;
        if (!more && open == 0)
            break;
        fault(t, ctx, now);
        h_sleep_ms(5);
    }
    H_CHECK(t->w.back, "%s: the daemon never worked again after the fault", name);
}

void traffic_kill(traffic *t, h_proc *p)
{
    pw_send_due(&t->w, 1);
    h_sleep_ms(1);
    h_stop(p, SIGKILL, 2000);
}

static void list_add(char *list, size_t size, long n)
{
    size_t len = strlen(list);
    if (len < size - 112)
        snprintf(list + len, size - len, " %ld", n);
}

void traffic_count(traffic *t, int port, const char *key)
{
    pw_close(&t->w);
    t->published = 0;
    for (long i = 1; i < TR_MAXN; i++)
        t->published += t->w.okd[i];
    long long end = h_now_ms() + 20000;
    for (int i = 0; i < 10000 && t->k.distinct < t->published && h_now_ms() < end; i++)
        consumer_drain(&t->k, 200);
    consumer_drain(&t->k, 500);             /* late redeliveries, for the count */

    unsigned short *stored = calloc(TR_MAXN, sizeof *stored);
    ck_assert(stored != NULL);
    t->entries = tr_stream_counts(port, key, stored, TR_MAXN, &t->bad);
    H_CHECK(t->entries >= 0, "XRANGE %s on port %d failed", key, port);
    for (long i = 1; i < TR_MAXN; i++) {
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
    t->dlq = h_redis_int_at(port, "XLEN %s:dlq", key);
}

char *traffic_figures(const traffic *t)
{
    return h_fmt("%ld published ok (%ld dup replies), indeterminate %ld, unavailable %ld, "
                 "no reply %ld, overloaded %ld, slowest reply %lld ms; stream %ld entries "
                 "(%ld duplicate, %ld not ok'd, %ld bad), dlq %ld; group: %ld distinct "
                 "delivered, %ld deliveries (%ld with attempt > 1, %ld n more than once), "
                 "%ld subs; LOST %ld, UNDELIVERED %ld; first messages: indeterminate '%s', "
                 "unavailable '%s', overloaded '%s'",
                 t->published, t->w.dups, t->w.indeterminate, t->w.unavailable,
                 t->w.noreply, t->w.overloaded, t->w.max_reply_ms, t->entries,
                 t->stream_dups, t->extra, t->bad, t->dlq, t->k.distinct, t->k.deliveries,
                 t->k.redeliveries, t->twice, t->k.subs, t->lost, t->undelivered,
                 t->w.why[0], t->w.why[1], t->w.why[2]);
}

void traffic_verdict(traffic *t, const char *where)
{
    H_CHECK(t->published > 0, "no pub answered ok");
    H_CHECK(t->lost == 0, "%ld pubs answered ok are not on %s:%s%s", t->lost, where,
            t->lost_list, t->lost > 40 ? " ..." : "");
    H_CHECK(t->undelivered == 0, "%ld pubs answered ok were never delivered:%s%s",
            t->undelivered, t->undel_list, t->undelivered > 40 ? " ..." : "");
    H_CHECK(t->k.bad == 0 && t->bad == 0, "deliveries or entries with unexpected data");
}

void traffic_verdict_refusals(traffic *t)
{
    H_CHECK(t->w.false_refusals == 0, "%ld pubs answered unavailable or overloaded (\"not "
            "stored\") were stored: their retry got dup:true:%s", t->w.false_refusals,
            t->w.refused_list);
}

void traffic_close(traffic *t)
{
    pw_close(&t->w);
    if (t->k.c)
        sb_close(t->k.c);
    t->k.c = NULL;
    free(t->w.okd);
    free(t->k.seen);
}

/* --------------------------------------------------------------- count */

/* Counts the entries of one XRANGE page; start becomes the id to go on
 * after. */
static void count_page(const redisReply *r, unsigned short *counts, long max, long *bad,
                       char *start, size_t startlen)
{
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const char *data = h_entry_field(e, "data");
        char *end = NULL;
        long n = data ? strtol(data, &end, 10) : -1;
        if (!data || *end || n < 1 || n >= max)
            (*bad)++;
        else if (counts[n] < 65535)
            counts[n]++;
        snprintf(start, startlen, "(%s", e->element[0]->str);
    }
}

long tr_stream_counts(int port, const char *key, unsigned short *counts, long max, long *bad)
{
    redisContext *c = h_redis_open(port, 5000);
    if (!c)
        return -1;
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
        count_page(r, counts, max, bad, start, sizeof start);
        size_t got = r->elements;
        total += (long)got;
        freeReplyObject(r);
        if (got < 1000)
            break;
    }
    redisFree(c);
    return total;
}
