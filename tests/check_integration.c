/*
 * check_integration.c: the real streambusd against a real redis-server.
 *
 * Covers protocol.md (every op, every reachable error code, the delivery
 * rules) and daemon.md (command line, metrics, health).  Each test gets a
 * fresh Redis and daemon (see harness.h), so stream names need not differ
 * between tests.  Select one test case with CK_RUN_CASE=name.
 *
 * Not reachable from here: "overloaded" and "indeterminate" (need a Redis
 * that hangs mid-reply), "internal" (a bug by definition).
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <signal.h>
#include <stdarg.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ helpers */

static long long xlen(const char *key)
{
    return h_redis_int("XLEN %s", key);
}

static long long xpending(const char *key, const char *group)
{
    redisReply *r = h_redis("XPENDING %s %s", key, group);
    ck_assert_msg(r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                  r->element[0]->type == REDIS_REPLY_INTEGER,
                  "XPENDING %s %s: unexpected reply type %d (%s)", key, group,
                  r->type, r->str ? r->str : "");
    long long n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

/* Receives exactly n deliveries on c within ms (total); returns them. */
static json_t *collect(sb_client *c, int n, int ms)
{
    json_t *arr = json_array();
    long long end = h_now_ms() + ms;
    for (int i = 0; i < n; i++) {
        long long left = end - h_now_ms();
        ck_assert_msg(left > 0, "only %d of %d deliveries within %d ms", i, n, ms);
        json_t *e = sb_next_event(c, (int)left);
        ck_assert_msg(e != NULL, "only %d of %d deliveries within %d ms", i, n, ms);
        const char *op = json_string_value(json_object_get(e, "op"));
        ck_assert_msg(op && strcmp(op, "msg") == 0, "expected a delivery, got op %s",
                      op ? op : "(none)");
        json_array_append_new(arr, e);
    }
    return arr;
}

/* Milliseconds left until the (h_now_ms) time t, at least 1. */
static int until(long long t)
{
    long long left = t - h_now_ms();
    return left < 1 ? 1 : (int)left;
}

static const char *mid(const json_t *m)
{
    return h_str(m, "id");
}

static int ids_contain(json_t *arr, const char *id)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        const char *s = json_is_string(v) ? json_string_value(v)
                                          : json_string_value(json_object_get(v, "id"));
        if (s && strcmp(s, id) == 0)
            return 1;
    }
    return 0;
}

static void assert_json_eq(const json_t *got, const char *want_json)
{
    json_t *want = json_loads(want_json, JSON_DECODE_ANY, NULL);
    ck_assert_msg(want != NULL, "test bug: bad JSON %s", want_json);
    if (!json_equal((json_t *)got, want)) {
        char *g = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY);
        ck_abort_msg("expected %s, got %s", want_json, g ? g : "(null)");
    }
    json_decref(want);
}

static int is_rid_absent(const json_t *r)
{
    json_t *rid = json_object_get(r, "rid");
    return rid == NULL || json_is_null(rid);
}

static char *repeat(char ch, size_t n)
{
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    memset(s, ch, n);
    s[n] = '\0';
    return s;
}

/* ============================================================ hello/ping */

START_TEST(t_hello)
{
    sb_client *c = h_connect();
    json_t *r = h_ok(h_req(c, "{'op':'hello','name':'t-hello'}"));
    ck_assert_str_eq(h_str(r, "server"), "streambusd");
    const char *v = h_str(r, "version");
    int a, b, d;
    char tail;
    ck_assert_msg(sscanf(v, "%d.%d.%d%c", &a, &b, &d, &tail) == 3,
                  "version '%s' is not X.Y.Z", v);
    ck_assert_int_eq(h_int(r, "proto"), 1);
    ck_assert_int_eq(h_int(r, "max_line"), 1048576);
    ck_assert_int_eq(h_int(r, "max_payload"), 1048576);
    ck_assert_ptr_null(json_object_get(r, "error"));
    json_decref(r);
    sb_close(c);
}
END_TEST

START_TEST(t_hello_limits_from_config)
{
    h_conf("max_line = 4096\nmax_payload = 512\n", NULL, NULL);
    sb_client *c = h_connect();
    json_t *r = h_ok(h_req(c, "{'op':'hello'}"));
    ck_assert_int_eq(h_int(r, "max_line"), 4096);
    ck_assert_int_eq(h_int(r, "max_payload"), 512);
    json_decref(r);
    sb_close(c);
}
END_TEST

START_TEST(t_ping_and_rid)
{
    sb_client *c = h_connect();
    json_t *r = h_ok(h_req(c, "{'op':'ping'}"));
    ck_assert_ptr_null(json_object_get(r, "error"));
    ck_assert(is_rid_absent(r));
    json_decref(r);

    r = h_ok(h_req(c, "{'op':'ping','rid':'abc-1'}"));
    ck_assert_str_eq(h_str(r, "rid"), "abc-1");
    json_decref(r);

    r = h_ok(h_req(c, "{'op':'ping','rid':42}"));
    ck_assert_int_eq(h_int(r, "rid"), 42);
    json_decref(r);

    r = h_ok(h_req(c, "{'op':'hello','name':'x','rid':'h'}"));
    ck_assert_str_eq(h_str(r, "rid"), "h");
    json_decref(r);

    r = h_ok(h_req(c, "{'op':'pub','stream':'s','data':1,'rid':7}"));
    ck_assert_int_eq(h_int(r, "rid"), 7);
    json_decref(r);

    r = h_ok(h_req(c, "{'op':'stats','rid':'st'}"));
    ck_assert_str_eq(h_str(r, "rid"), "st");
    json_decref(r);

    /* Errors echo rid too. */
    r = h_err(h_req(c, "{'op':'frobnicate','rid':99}"), "unknown_op");
    ck_assert_int_eq(h_int(r, "rid"), 99);
    json_decref(r);
    r = h_err(h_req(c, "{'op':'pub','rid':'nostream','data':1}"), "bad_request");
    ck_assert_str_eq(h_str(r, "rid"), "nostream");
    json_decref(r);
    r = h_err(h_req(c, "{'op':'ack','sub':123456,'ids':['1-0'],'rid':'ns'}"), "no_such_sub");
    ck_assert_str_eq(h_str(r, "rid"), "ns");
    json_decref(r);
    sb_close(c);
}
END_TEST

START_TEST(t_unknown_op)
{
    sb_client *c = h_connect();
    json_t *r = h_err(h_req(c, "{'op':'frobnicate','rid':'u'}"), "unknown_op");
    ck_assert_str_eq(h_str(r, "rid"), "u");
    json_decref(r);
    r = h_err(h_req(c, "{'op':'PING'}"), "unknown_op");   /* ops are case-sensitive */
    json_decref(r);
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
    sb_close(c);
}
END_TEST

/* ============================================================ framing */

START_TEST(t_pipeline_mixed)
{
    sb_client *c = h_connect();
    const char *lines =
        "{\"op\":\"ping\",\"rid\":1}\n"
        "this is not json\n"
        "{\"op\":\"pub\",\"stream\":\"pipe\",\"data\":{\"n\":1},\"rid\":2}\n"
        "\n"
        "{\"op\":\"nosuchop\",\"rid\":3}\n"
        "[1,2,3]\n"
        "\r\n"
        "{\"op\":\"pub\",\"stream\":\"pipe\",\"rid\":4}\n"
        "{\"op\":\"stats\",\"rid\":\"st\"}\n"
        "{\"op\":\"ping\",\"rid\":5}\r\n";
    h_send_raw(c, lines, strlen(lines));

    json_t *r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_int_eq(h_int(r, "rid"), 1);
    json_decref(r);
    r = h_err(h_read(c, H_REPLY_MS), "bad_json");
    ck_assert(is_rid_absent(r));
    json_decref(r);
    r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_int_eq(h_int(r, "rid"), 2);
    ck_assert(h_id_valid(h_str(r, "id")));
    json_decref(r);
    r = h_err(h_read(c, H_REPLY_MS), "unknown_op");
    ck_assert_int_eq(h_int(r, "rid"), 3);
    json_decref(r);
    r = h_err(h_read(c, H_REPLY_MS), "bad_json");
    json_decref(r);
    r = h_bad(h_read(c, H_REPLY_MS), "data");
    ck_assert_int_eq(h_int(r, "rid"), 4);
    json_decref(r);
    r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_str_eq(h_str(r, "rid"), "st");
    ck_assert(json_is_array(json_object_get(r, "streams")));
    json_decref(r);
    r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_int_eq(h_int(r, "rid"), 5);
    json_decref(r);

    /* Nothing more was queued for the empty lines: the next reply is ours. */
    r = h_ok(h_req(c, "{'op':'ping','rid':6}"));
    ck_assert_int_eq(h_int(r, "rid"), 6);
    json_decref(r);
    ck_assert_int_eq(xlen("sb:pipe"), 1);
    sb_close(c);
}
END_TEST

START_TEST(t_pipeline_many_in_order)
{
    sb_client *c = h_connect();
    /* 300 pipelined requests in one buffer: pings and pubs alternating. */
    size_t cap = 300 * 80, len = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < 300; i++) {
        if (i % 2)
            len += snprintf(buf + len, cap - len, "{\"op\":\"ping\",\"rid\":%d}\n", i);
        else
            len += snprintf(buf + len, cap - len,
                            "{\"op\":\"pub\",\"stream\":\"ord\",\"data\":%d,\"rid\":%d}\n", i, i);
    }
    h_send_raw(c, buf, len);
    free(buf);
    char prev[64] = "0-0";
    for (int i = 0; i < 300; i++) {
        json_t *r = h_ok(h_read(c, H_REPLY_MS));
        ck_assert_int_eq(h_int(r, "rid"), i);
        if (i % 2 == 0) {
            const char *id = h_str(r, "id");
            ck_assert_msg(h_id_cmp(prev, id) < 0, "ids not increasing: %s then %s", prev, id);
            snprintf(prev, sizeof prev, "%s", id);
        }
        json_decref(r);
    }
    /* Stored in the order sent. */
    redisReply *x = h_redis("XRANGE sb:ord - +");
    ck_assert_int_eq(x->elements, 150);
    for (size_t i = 0; i < x->elements; i++) {
        const char *d = h_entry_field(x->element[i], "data");
        ck_assert_ptr_nonnull(d);
        ck_assert_int_eq(atoi(d), (int)i * 2);
    }
    freeReplyObject(x);
    sb_close(c);
}
END_TEST

START_TEST(t_crlf_and_split_writes)
{
    sb_client *c = h_connect();
    const char *l = "{\"op\":\"ping\",\"rid\":\"cr\"}\r\n";
    h_send_raw(c, l, strlen(l));
    json_t *r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_str_eq(h_str(r, "rid"), "cr");
    json_decref(r);

    /* One request split over several writes, byte by byte at the end. */
    int fd = sb_fd(c);
    const char *part1 = "{\"op\":\"pi";
    const char *part2 = "ng\",\"rid\":\"sp";
    ck_assert_int_eq(write(fd, part1, strlen(part1)), (ssize_t)strlen(part1));
    h_sleep_ms(50);
    ck_assert_int_eq(write(fd, part2, strlen(part2)), (ssize_t)strlen(part2));
    h_sleep_ms(50);
    const char *rest = "lit\"}\r\n";
    for (const char *p = rest; *p; p++) {
        ck_assert_int_eq(write(fd, p, 1), 1);
        h_sleep_ms(5);
    }
    r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_str_eq(h_str(r, "rid"), "split");
    json_decref(r);
    sb_close(c);
}
END_TEST

/* ============================================================ errors */

START_TEST(t_bad_json)
{
    sb_client *c = h_connect();
    const char *bad[] = {
        "this is not json",
        "[1,2]",
        "\"a string\"",
        "42",
        "null",
        "true",
        "{\"op\":\"ping\"",
        "{\"op\":\"ping\"} trailing",
        "{op:ping}",
        "{\"op\":\"ping\",\"rid\":\"\xff\xfe\"}",   /* invalid UTF-8 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        h_send_raw(c, bad[i], strlen(bad[i]));
        json_t *r = h_read(c, H_REPLY_MS);
        const char *e = json_string_value(json_object_get(r, "error"));
        ck_assert_msg(json_is_false(json_object_get(r, "ok")) && e &&
                      strcmp(e, "bad_json") == 0 &&
                      json_is_string(json_object_get(r, "message")),
                      "line %zu (%s): expected bad_json", i, bad[i]);
        ck_assert(is_rid_absent(r));
        json_decref(r);
    }
    json_t *r = h_ok(h_req(c, "{'op':'ping','rid':'still'}"));
    ck_assert_str_eq(h_str(r, "rid"), "still");
    json_decref(r);
    sb_close(c);
}
END_TEST

struct bad_case {
    const char *req;       /* ' becomes " */
    const char *field;     /* must appear in the message */
};

START_TEST(t_bad_request_fields)
{
    sb_client *c = h_connect();
    char *long_name = repeat('x', 201);
    char *ok_name = repeat('y', 200);
    static const struct bad_case cases[] = {
        { "{'op':'pub','data':1}", "stream" },
        { "{'op':'pub','stream':'','data':1}", "stream" },
        { "{'op':'pub','stream':'a b','data':1}", "stream" },
        { "{'op':'pub','stream':'a/b','data':1}", "stream" },
        { "{'op':'pub','stream':'a*','data':1}", "stream" },
        { "{'op':'pub','stream':'\\u00e9t\\u00e9','data':1}", "stream" },
        { "{'op':'pub','stream':5,'data':1}", "stream" },
        { "{'op':'pub','stream':['s'],'data':1}", "stream" },
        { "{'op':'pub','stream':'s'}", "data" },
        { "{'op':'pub','stream':'s','data':1,'type':5}", "type" },
        { "{'op':'pub','stream':'s','data':1,'msgid':5}", "msgid" },
        { "{'op':'pub','stream':'s','batch':5}", "batch" },
        { "{'op':'pub','stream':'s','batch':[{'type':'x'}]}", "data" },
        { "{'op':'pub','stream':'s','batch':[{'data':1},{'data':2,'msgid':3}]}", "msgid" },
        { "{'op':'sub','group':'g'}", "stream" },
        { "{'op':'sub','stream':'s'}", "group" },
        { "{'op':'sub','stream':'s','group':5}", "group" },
        { "{'op':'sub','stream':'bad name','group':'g'}", "stream" },
        { "{'op':'sub','stream':'s','group':'g','prefetch':0}", "prefetch" },
        { "{'op':'sub','stream':'s','group':'g','prefetch':10001}", "prefetch" },
        { "{'op':'sub','stream':'s','group':'g','prefetch':-1}", "prefetch" },
        { "{'op':'sub','stream':'s','group':'g','prefetch':'5'}", "prefetch" },
        { "{'op':'sub','stream':'s','group':'g','prefetch':1.5}", "prefetch" },
        { "{'op':'sub','stream':'s','group':'g','consumer':5}", "consumer" },
        { "{'op':'sub','stream':'s','group':'g','from':'bogus'}", "from" },
        { "{'op':'sub','stream':'s','group':'g','from':5}", "from" },
        { "{'op':'ack','ids':['1-0']}", "sub" },
        { "{'op':'ack','sub':'1','ids':['1-0']}", "sub" },
        { "{'op':'nack','ids':['1-0']}", "sub" },
        { "{'op':'touch','ids':['1-0']}", "sub" },
        { "{'op':'unsub'}", "sub" },
        { "{'op':'unsub','sub':true}", "sub" },
        { "{'op':'stats','stream':'a b'}", "stream" },
        { "{'op':'stats','stream':7}", "stream" },
        { "{'op':'hello','name':5}", "name" },
        { "{'rid':1}", "op" },
        { "{'op':5}", "op" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *r = h_req(c, "%s", cases[i].req);
        const char *e = json_string_value(json_object_get(r, "error"));
        const char *m = json_string_value(json_object_get(r, "message"));
        if (!json_is_false(json_object_get(r, "ok")) || !e || strcmp(e, "bad_request") != 0 ||
            !m || !strstr(m, cases[i].field)) {
            char *t = json_dumps(r, JSON_COMPACT);
            ck_abort_msg("%s: expected bad_request naming '%s', got %s", cases[i].req,
                         cases[i].field, t ? t : "?");
        }
        json_decref(r);
    }
    json_decref(h_bad(h_req(c, "{'op':'pub','stream':'%s','data':1}", long_name), "stream"));
    /* Nothing was stored by any of them. */
    ck_assert_int_eq(h_redis_int("EXISTS sb:s"), 0);

    /* Boundaries that are valid. */
    json_decref(h_ok(h_req(c, "{'op':'pub','stream':'%s','data':1}", ok_name)));
    json_decref(h_ok(h_req(c, "{'op':'pub','stream':'Az09_.:-x','data':1}")));
    ck_assert_int_eq(xlen("sb:Az09_.:-x"), 1);
    char key[300];
    snprintf(key, sizeof key, "sb:%s", ok_name);
    ck_assert_int_eq(xlen(key), 1);
    json_decref(h_ok(h_req(c, "{'op':'sub','stream':'p1','group':'g','prefetch':1}")));
    json_decref(h_ok(h_req(c, "{'op':'sub','stream':'p2','group':'g','prefetch':10000}")));

    /* Fields of ack/nack/touch, on a live subscription. */
    long long sub = h_sub(c, "s2", "g", "c1", 5, NULL);
    struct bad_case subcases[] = {
        { "{'op':'ack','sub':%lld}", "id" },
        { "{'op':'ack','sub':%lld,'ids':5}", "id" },
        { "{'op':'ack','sub':%lld,'ids':[5]}", "id" },
        { "{'op':'ack','sub':%lld,'id':5}", "id" },
        { "{'op':'nack','sub':%lld,'ids':'1-0'}", "id" },
        { "{'op':'nack','sub':%lld,'ids':['1-0'],'delay_ms':-5}", "delay_ms" },
        { "{'op':'nack','sub':%lld,'ids':['1-0'],'delay_ms':'x'}", "delay_ms" },
        { "{'op':'nack','sub':%lld,'ids':['1-0'],'dead':'yes'}", "dead" },
        { "{'op':'nack','sub':%lld,'ids':['1-0'],'reason':5}", "reason" },
        { "{'op':'touch','sub':%lld,'ids':7}", "id" },
        { "{'op':'touch','sub':%lld}", "id" },
    };
    for (size_t i = 0; i < sizeof subcases / sizeof *subcases; i++) {
        char *fmt = h_fmt(subcases[i].req, sub);
        json_t *r = h_req(c, "%s", fmt);
        const char *e = json_string_value(json_object_get(r, "error"));
        const char *m = json_string_value(json_object_get(r, "message"));
        if (!json_is_false(json_object_get(r, "ok")) || !e || strcmp(e, "bad_request") != 0 ||
            !m || !strstr(m, subcases[i].field)) {
            char *t = json_dumps(r, JSON_COMPACT);
            ck_abort_msg("%s: expected bad_request naming '%s', got %s", fmt,
                         subcases[i].field, t ? t : "?");
        }
        json_decref(r);
        free(fmt);
    }
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
    free(long_name);
    free(ok_name);
    sb_close(c);
}
END_TEST

START_TEST(t_line_too_long)
{
    h_conf("max_line = 1024\n", NULL, NULL);
    sb_client *c = h_connect();
    json_t *r = h_ok(h_req(c, "{'op':'hello'}"));
    ck_assert_int_eq(h_int(r, "max_line"), 1024);
    json_decref(r);

    /* Just under the limit: fine. */
    char *pad = repeat('a', 1000 - strlen("{\"op\":\"ping\",\"rid\":\"\"}"));
    char *line = h_fmt("{\"op\":\"ping\",\"rid\":\"%s\"}", pad);
    ck_assert_int_eq(strlen(line), 1000);
    h_send_raw(c, line, strlen(line));
    r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_str_eq(h_str(r, "rid"), pad);
    json_decref(r);
    free(line);
    free(pad);

    /* Over it: line_too_long, and the connection still works. */
    pad = repeat('b', 1100);
    line = h_fmt("{\"op\":\"pub\",\"stream\":\"long\",\"data\":\"%s\"}", pad);
    h_send_raw(c, line, strlen(line));
    r = h_err(h_read(c, H_REPLY_MS), "line_too_long");
    json_decref(r);
    r = h_ok(h_req(c, "{'op':'ping','rid':'after1'}"));
    ck_assert_str_eq(h_str(r, "rid"), "after1");
    json_decref(r);
    free(line);
    free(pad);
    ck_assert_int_eq(h_redis_int("EXISTS sb:long"), 0);

    /* A huge line followed by a ping in the same write: exactly two replies. */
    size_t big = 300 * 1024;
    char *buf = malloc(big + 64);
    memset(buf, 'c', big);
    buf[0] = '{';
    buf[big] = '\n';
    const char *tailreq = "{\"op\":\"ping\",\"rid\":\"after2\"}\n";
    memcpy(buf + big + 1, tailreq, strlen(tailreq));
    h_send_raw(c, buf, big + 1 + strlen(tailreq));
    free(buf);
    r = h_err(h_read(c, H_REPLY_MS), "line_too_long");
    json_decref(r);
    r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_str_eq(h_str(r, "rid"), "after2");
    json_decref(r);

    /* A long line arriving in pieces, slowly. */
    int fd = sb_fd(c);
    char chunk[700];
    memset(chunk, 'd', sizeof chunk);
    chunk[0] = '{';
    ck_assert_int_eq(write(fd, chunk, sizeof chunk), (ssize_t)sizeof chunk);
    h_sleep_ms(50);
    chunk[0] = 'd';
    ck_assert_int_eq(write(fd, chunk, sizeof chunk), (ssize_t)sizeof chunk);
    h_sleep_ms(50);
    ck_assert_int_eq(write(fd, chunk, sizeof chunk), (ssize_t)sizeof chunk);
    const char *end = "\n{\"op\":\"ping\",\"rid\":\"after3\"}\n";
    ck_assert_int_eq(write(fd, end, strlen(end)), (ssize_t)strlen(end));
    r = h_err(h_read(c, H_REPLY_MS), "line_too_long");
    json_decref(r);
    r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_str_eq(h_str(r, "rid"), "after3");
    json_decref(r);
    ck_assert_int_eq((int)h_metric_now("streambus_lines_too_long_total", ""), 3);
    sb_close(c);
}
END_TEST

START_TEST(t_too_large)
{
    h_conf("max_payload = 100\n", NULL, NULL);
    sb_client *c = h_connect();
    char *big = repeat('z', 200);
    char *small = repeat('s', 50);
    json_t *r = h_err(h_req(c, "{'op':'pub','stream':'big','data':'%s','rid':1}", big), "too_large");
    ck_assert_int_eq(h_int(r, "rid"), 1);
    json_decref(r);
    ck_assert_int_eq(h_redis_int("EXISTS sb:big"), 0);

    json_decref(h_ok(h_req(c, "{'op':'pub','stream':'big','data':'%s'}", small)));
    ck_assert_int_eq(xlen("sb:big"), 1);

    /* A batch with one entry too large stores nothing. */
    json_decref(h_err(h_req(c, "{'op':'pub','stream':'big','batch':[{'data':'%s'},{'data':'%s'}]}",
                            small, big), "too_large"));
    ck_assert_int_eq(xlen("sb:big"), 1);
    /* An object payload counts its serialized size. */
    json_decref(h_err(h_req(c, "{'op':'pub','stream':'big','data':{'k':'%s'}}", big), "too_large"));
    ck_assert_int_eq(xlen("sb:big"), 1);
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
    free(big);
    free(small);
    sb_close(c);
}
END_TEST

START_TEST(t_no_such_sub)
{
    sb_client *a = h_connect();
    sb_client *b = h_connect();
    json_decref(h_err(h_req(a, "{'op':'ack','sub':12345,'ids':['1-0']}"), "no_such_sub"));
    json_decref(h_err(h_req(a, "{'op':'ack','sub':12345,'id':'1-0'}"), "no_such_sub"));
    json_decref(h_err(h_req(a, "{'op':'nack','sub':12345,'ids':['1-0']}"), "no_such_sub"));
    json_decref(h_err(h_req(a, "{'op':'touch','sub':12345,'ids':['1-0']}"), "no_such_sub"));
    json_decref(h_err(h_req(a, "{'op':'unsub','sub':12345}"), "no_such_sub"));

    /* Another connection's subscription is not ours. */
    long long sb = h_sub(b, "s", "g", "cb", 0, NULL);
    json_decref(h_err(h_req(a, "{'op':'ack','sub':%lld,'ids':['1-0']}", sb), "no_such_sub"));
    json_decref(h_err(h_req(a, "{'op':'unsub','sub':%lld}", sb), "no_such_sub"));

    /* After unsub it is gone. */
    json_decref(h_ok(h_req(b, "{'op':'unsub','sub':%lld}", sb)));
    json_decref(h_err(h_req(b, "{'op':'ack','sub':%lld,'ids':['1-0']}", sb), "no_such_sub"));
    json_decref(h_err(h_req(b, "{'op':'unsub','sub':%lld}", sb), "no_such_sub"));
    sb_close(a);
    sb_close(b);
}
END_TEST

START_TEST(t_consumer_in_use)
{
    sb_client *a = h_connect();
    sb_client *b = h_connect();
    h_sub(a, "s", "g", "c1", 0, NULL);
    json_t *r = h_err(h_req(b, "{'op':'sub','stream':'s','group':'g','consumer':'c1','rid':'x'}"),
                      "consumer_in_use");
    ck_assert_str_eq(h_str(r, "rid"), "x");
    json_decref(r);
    /* Other names, other groups, other streams are free. */
    h_sub(b, "s", "g", "c2", 0, NULL);
    h_sub(b, "s", "g2", "c1", 0, NULL);
    h_sub(b, "s3", "g", "c1", 0, NULL);
    /* Once a's connection is gone the name is free again. */
    sb_close(a);
    int ok = 0;
    for (int i = 0; i < 30 && !ok; i++) {
        json_t *t = h_req(b, "{'op':'sub','stream':'s','group':'g','consumer':'c1'}");
        ok = json_is_true(json_object_get(t, "ok"));
        if (!ok) {
            h_err(t, "consumer_in_use");
            h_sleep_ms(100);
        }
        json_decref(t);
    }
    ck_assert_msg(ok, "consumer name still in use 3 s after its connection closed");
    sb_close(b);
}
END_TEST

static int health_status(char **body)
{
    return h_http_get(H.metrics_port, "/health", body, NULL);
}

/* Keep Redis busy for a few seconds from another client (background): a
 * script that loops until its time is up (DEBUG SLEEP is disabled in
 * Redis 7 by default). */
static void redis_sleep(int seconds)
{
    char port[16], secs[16];
    snprintf(port, sizeof(port), "%d", H.redis_port);
    snprintf(secs, sizeof(secs), "%d", seconds);
    char *const argv[] = { "redis-cli", "-p", port, "EVAL",
        "local t = redis.call('TIME') "
        "while true do local n = redis.call('TIME') "
        "if n[1] - t[1] >= tonumber(ARGV[1]) then break end end", "0", secs, NULL };
    static h_proc sleeper;
    char *log = h_fmt("%s/redis-sleep.log", H.dir);
    h_spawn(argv, log, &sleeper);
    free(log);
    h_sleep_ms(300);    /* let it reach Redis */
}

START_TEST(t_indeterminate)
{
    /* A pub sent to Redis whose reply is lost with the connection. */
    sb_client *c = h_connect();
    free(h_pub(c, "ind", "1"));
    redis_sleep(3);
    h_send(c, "{'op':'pub','rid':'x','stream':'ind','data':2,'msgid':'m-2'}");
    h_sleep_ms(300);
    h_redis_kill(SIGKILL);
    json_t *r = h_err(h_read(c, H_REPLY_MS), "indeterminate");
    ck_assert_str_eq(h_str(r, "rid"), "x");
    json_decref(r);
    /* ping is the daemon's own: still answered */
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
}
END_TEST

/* WAITs Redis has run (INFO commandstats). */
static long long wait_calls(void)
{
    redisReply *r = h_redis_at(H.redis_port, "INFO commandstats");
    ck_assert_msg(r && r->type == REDIS_REPLY_STRING, "INFO commandstats failed");
    const char *at = strstr(r->str, "cmdstat_wait:calls=");
    long long n = at ? atoll(at + strlen("cmdstat_wait:calls=")) : 0;
    freeReplyObject(r);
    return n;
}

/* durability = replicas:1 and no replica: every WAIT runs to its timeout,
 * and holds the durable link meanwhile.  Pubs arriving one by one while it
 * waits gather for one next WAIT: not a WAIT each, that Redis would run one
 * after another (the last pub answered some N timeouts late). */
START_TEST(t_replicas_one_wait_in_flight)
{
    enum { N = 30, GAP_MS = 30, TIMEOUT_MS = 200 };
    h_conf(NULL, NULL, "[stream rw]\ndurability = replicas:1:200\n");
    sb_client *c = h_connect();
    long long waits0 = wait_calls();
    for (int i = 0; i < N; i++) {
        h_send(c, "{'op':'pub','stream':'rw','data':%d}", i);
        h_sleep_ms(GAP_MS);
    }
    long long t_last = h_now_ms();
    for (int i = 0; i < N; i++)
        json_decref(h_err(h_read(c, 5000), "indeterminate"));
    long long late = h_now_ms() - t_last, waits = wait_calls() - waits0;
    ck_assert_msg(waits < N / 2, "%lld WAITs for %d pubs %d ms apart (timeout %d ms)", waits,
                  N, GAP_MS, TIMEOUT_MS);
    ck_assert_msg(late < 3000, "the last reply %lld ms after the last pub (N timeouts: %d ms)",
                  late, N * TIMEOUT_MS);
    /* ... and each was stored, as "indeterminate" says. */
    ck_assert_int_eq(xlen("sb:rw"), N);
}
END_TEST

START_TEST(t_overloaded)
{
    /* More commands waiting for Redis than max_inflight: refused, not stored. */
    h_conf_redis("max_inflight = 8\n");
    h_conf("max_subs_per_conn = 1\n", NULL, NULL);
    sb_client *c = h_connect();
    /* the daemon's own periodic commands count too: wait for a quiet moment */
    int ready = 0;
    for (int i = 0; i < 50 && !ready; i++) {
        json_t *r = h_req(c, "{'op':'pub','stream':'ov','data':0}");
        ready = json_is_true(json_object_get(r, "ok"));
        json_decref(r);
        if (!ready)
            h_sleep_ms(100);
    }
    ck_assert_msg(ready, "no pub accepted in 5 s");
    redis_sleep(2);
    enum { N = 20 };
    for (int i = 0; i < N; i++)
        h_send(c, "{'op':'pub','rid':%d,'stream':'ov','data':%d}", i, i);
    int overloaded = 0, ok = 0;
    for (int i = 0; i < N; i++) {
        json_t *r = h_read(c, 8000);
        ck_assert_int_eq(h_int(r, "rid"), i);
        if (json_is_true(json_object_get(r, "ok")))
            ok++;
        else {
            ck_assert_str_eq(h_str(r, "error"), "overloaded");
            overloaded++;
        }
        json_decref(r);
    }
    ck_assert_msg(overloaded >= N - 8, "only %d of %d pubs refused with max_inflight 8",
                  overloaded, N);
    h_sleep_ms(500);
    ck_assert_int_eq(h_redis_int("XLEN sb:ov"), 1 + ok);
    /* a second subscription over max_subs_per_conn */
    h_sub(c, "ov", "g", NULL, 1, NULL);
    json_decref(h_err(h_req(c, "{'op':'sub','stream':'ov','group':'g2'}"), "overloaded"));
    ck_assert_int_eq((int)h_metric_now("streambus_subscriptions_refused_total", ""), 1);
}
END_TEST

/* max_batch from the configuration: a bigger batch is refused whole (and
 * counted), one of that size is stored. */
START_TEST(t_max_batch)
{
    h_conf("max_batch = 2\n", NULL, NULL);
    sb_client *c = h_connect();
    json_t *r = h_err(h_req(c, "{'op':'pub','stream':'mb','batch':[{'data':1},{'data':2},"
                               "{'data':3}]}"), "bad_request");
    ck_assert_str_eq(h_str(r, "message"), "batch: more than 2 entries");
    json_decref(r);
    ck_assert_int_eq(h_redis_int("EXISTS sb:mb"), 0);
    json_decref(h_ok(h_req(c, "{'op':'pub','stream':'mb','batch':[{'data':1},{'data':2}]}")));
    ck_assert_int_eq(xlen("sb:mb"), 2);
    ck_assert_int_eq((int)h_metric_now("streambus_batches_refused_total", ""), 1);
}
END_TEST

START_TEST(t_unavailable)
{
    sb_client *c = h_connect();
    char *id = h_pub(c, "s", "1");
    free(id);
    char *body = NULL;
    ck_assert_int_eq(health_status(&body), 200);
    free(body);

    h_redis_kill(SIGKILL);
    int st = 0;
    for (int i = 0; i < 100; i++) {
        st = health_status(&body);
        if (st == 503)
            break;
        free(body);
        body = NULL;
        h_sleep_ms(50);
    }
    ck_assert_msg(st == 503, "/health still %d 5 s after Redis died", st);
    json_t *hj = json_loads(body, 0, NULL);
    ck_assert_msg(hj != NULL, "/health body is not JSON: %s", body);
    ck_assert_str_eq(h_str(hj, "status"), "unavailable");
    ck_assert_str_eq(h_str(hj, "redis"), "down");
    json_decref(hj);
    free(body);

    char *metrics = NULL;
    ck_assert_int_eq(h_http_get(H.metrics_port, "/metrics", &metrics, NULL), 200);
    double v = -1;
    ck_assert_msg(h_metric(metrics, "streambus_redis_up", "", &v), "no streambus_redis_up");
    ck_assert_double_eq(v, 0);
    free(metrics);

    json_decref(h_ok(h_req(c, "{'op':'ping','rid':'p'}")));
    json_t *r = h_err(h_req(c, "{'op':'pub','stream':'s','data':{'lost':true},'rid':'u1'}"),
                      "unavailable");
    ck_assert_str_eq(h_str(r, "rid"), "u1");
    json_decref(r);
    json_decref(h_err(h_req(c, "{'op':'pub','stream':'s','batch':[{'data':1},{'data':2}]}"),
                      "unavailable"));
    json_decref(h_err(h_req(c, "{'op':'stats','stream':'s'}"), "unavailable"));
    /* A fresh connection is still served. */
    sb_client *c2 = h_connect();
    json_decref(h_ok(h_req(c2, "{'op':'ping'}")));
    json_decref(h_err(h_req(c2, "{'op':'pub','stream':'s','data':2}"), "unavailable"));

    /* Redis comes back (empty: no persistence): the daemon reconnects. */
    ck_assert_int_eq(h_redis_start(), 0);
    st = 0;
    for (int i = 0; i < 200; i++) {
        st = health_status(NULL);
        if (st == 200)
            break;
        h_sleep_ms(50);
    }
    ck_assert_msg(st == 200, "/health not 200 10 s after Redis came back (%d)", st);
    json_t *ok = NULL;
    for (int i = 0; i < 50; i++) {
        ok = h_req(c, "{'op':'pub','stream':'s','data':{'after':true}}");
        if (json_is_true(json_object_get(ok, "ok")))
            break;
        json_decref(ok);
        ok = NULL;
        h_sleep_ms(100);
    }
    ck_assert_msg(ok != NULL, "pub still failing 5 s after /health said ok");
    json_decref(ok);
    /* The pubs answered "unavailable" were not stored later either. */
    h_sleep_ms(300);
    ck_assert_int_eq(xlen("sb:s"), 1);
    redisReply *x = h_redis("XRANGE sb:s - +");
    ck_assert_str_eq(h_entry_field(x->element[0], "data"), "{\"after\":true}");
    freeReplyObject(x);
    sb_close(c);
    sb_close(c2);
}
END_TEST

/* ============================================================ pub */

START_TEST(t_pub_single_stored)
{
    sb_client *c = h_connect();
    json_decref(h_ok(h_req(c, "{'op':'hello','name':'prod-1'}")));
    const char *req = "{\"op\": \"pub\", \"stream\": \"orders\", \"type\": \"T1\","
                      " \"data\": {\"a\": 1, \"b\": [true, null, \"x y\"], \"c\": {\"d\": 2.5}}}";
    h_send_raw(c, req, strlen(req));
    json_t *r = h_ok(h_read(c, H_REPLY_MS));
    const char *id = h_str(r, "id");
    ck_assert(h_id_valid(id));
    ck_assert(json_object_get(r, "dup") == NULL || json_is_false(json_object_get(r, "dup")));

    ck_assert_int_eq(xlen("sb:orders"), 1);
    redisReply *x = h_redis("XRANGE sb:orders - +");
    ck_assert_int_eq(x->elements, 1);
    ck_assert_str_eq(x->element[0]->element[0]->str, id);
    /* data is stored exactly as the client wrote it */
    ck_assert_str_eq(h_entry_field(x->element[0], "data"),
                     "{\"a\": 1, \"b\": [true, null, \"x y\"], \"c\": {\"d\": 2.5}}");
    freeReplyObject(x);

    /* Scalars are JSON too. */
    char *id2 = h_pub(c, "orders", "\"text\"");
    char *id3 = h_pub(c, "orders", "12");
    ck_assert(h_id_cmp(id, id2) < 0);
    json_decref(r);     /* id points into r */
    ck_assert(h_id_cmp(id2, id3) < 0);
    x = h_redis("XRANGE sb:orders %s %s", id2, id3);
    ck_assert_int_eq(x->elements, 2);
    ck_assert_str_eq(h_entry_field(x->element[0], "data"), "\"text\"");
    ck_assert_str_eq(h_entry_field(x->element[1], "data"), "12");
    freeReplyObject(x);
    free(id2);
    free(id3);
    sb_close(c);
}
END_TEST

START_TEST(t_pub_batch)
{
    sb_client *c = h_connect();
    json_t *r = h_ok(h_req(c, "{'op':'pub','stream':'b','rid':'bt','batch':["
                              "{'data':1},{'data':'two','type':'T'},{'data':{'three':3}}]}"));
    ck_assert_str_eq(h_str(r, "rid"), "bt");
    json_t *ids = json_object_get(r, "ids");
    ck_assert(json_is_array(ids));
    ck_assert_int_eq(json_array_size(ids), 3);
    const char *want[] = { "1", "\"two\"", "{\"three\":3}" };
    redisReply *x = h_redis("XRANGE sb:b - +");
    ck_assert_int_eq(x->elements, 3);
    for (size_t i = 0; i < 3; i++) {
        const char *id = json_string_value(json_array_get(ids, i));
        ck_assert(h_id_valid(id));
        if (i)
            ck_assert(h_id_cmp(json_string_value(json_array_get(ids, i - 1)), id) < 0);
        ck_assert_str_eq(x->element[i]->element[0]->str, id);
        ck_assert_str_eq(h_entry_field(x->element[i], "data"), want[i]);
    }
    freeReplyObject(x);
    json_decref(r);

    /* A batch with one bad entry stores nothing. */
    json_decref(h_bad(h_req(c, "{'op':'pub','stream':'b','batch':[{'data':1},{'nodata':1}]}"),
                      "data"));
    ck_assert_int_eq(xlen("sb:b"), 3);
    sb_close(c);
}
END_TEST

START_TEST(t_pub_msgid_dedup)
{
    sb_client *c = h_connect();
    json_t *r1 = h_ok(h_req(c, "{'op':'pub','stream':'d','data':1,'msgid':'m1'}"));
    json_t *d1 = json_object_get(r1, "dup");
    ck_assert(d1 == NULL || json_is_false(d1));
    json_t *r2 = h_ok(h_req(c, "{'op':'pub','stream':'d','data':2,'msgid':'m1','rid':'again'}"));
    ck_assert_str_eq(h_str(r2, "id"), h_str(r1, "id"));
    ck_assert(json_is_true(json_object_get(r2, "dup")));
    ck_assert_str_eq(h_str(r2, "rid"), "again");
    ck_assert_int_eq(xlen("sb:d"), 1);
    redisReply *x = h_redis("XRANGE sb:d - +");
    ck_assert_str_eq(h_entry_field(x->element[0], "data"), "1");
    freeReplyObject(x);

    /* Another msgid is new; the same msgid on another stream is new. */
    json_t *r3 = h_ok(h_req(c, "{'op':'pub','stream':'d','data':3,'msgid':'m2'}"));
    ck_assert_str_ne(h_str(r3, "id"), h_str(r1, "id"));
    ck_assert_int_eq(xlen("sb:d"), 2);
    json_t *r4 = h_ok(h_req(c, "{'op':'pub','stream':'d2','data':4,'msgid':'m1'}"));
    ck_assert(json_object_get(r4, "dup") == NULL || json_is_false(json_object_get(r4, "dup")));
    ck_assert_int_eq(xlen("sb:d2"), 1);

    /* From another connection as well. */
    sb_client *c2 = h_connect();
    json_t *r5 = h_ok(h_req(c2, "{'op':'pub','stream':'d','data':5,'msgid':'m1'}"));
    ck_assert_str_eq(h_str(r5, "id"), h_str(r1, "id"));
    ck_assert(json_is_true(json_object_get(r5, "dup")));
    ck_assert_int_eq(xlen("sb:d"), 2);
    json_decref(r1);
    json_decref(r2);
    json_decref(r3);
    json_decref(r4);
    json_decref(r5);
    sb_close(c);
    sb_close(c2);
}
END_TEST

/* A msgid is remembered for dedup_window_ms, no longer: then the same
 * msgid is stored again, and what was remembered is forgotten (one hash
 * and one sorted set per stream, pruned by later pubs, expiring when no
 * msgid comes for a window). */
START_TEST(t_pub_msgid_window)
{
    h_conf(NULL, NULL, "[stream dw]\ndedup_window_ms = 1000\n");
    sb_client *c = h_connect();
    json_t *r1 = h_ok(h_req(c, "{'op':'pub','stream':'dw','data':1,'msgid':'w1'}"));
    json_t *r2 = h_ok(h_req(c, "{'op':'pub','stream':'dw','batch':[{'data':2,'msgid':'w1'},"
                               "{'data':3,'msgid':'w2'},{'data':4}]}"));
    json_t *ids = json_object_get(r2, "ids");
    ck_assert_str_eq(json_string_value(json_array_get(ids, 0)), h_str(r1, "id"));
    ck_assert_int_eq(xlen("sb:dw"), 3);
    ck_assert_int_eq(h_redis_int("HLEN sb:dw:dedup"), 2);
    ck_assert_int_eq(h_redis_int("ZCARD sb:dw:dedup:exp"), 2);
    long long ttl = h_redis_int("PTTL sb:dw:dedup");
    ck_assert_msg(ttl > 0 && ttl <= 1000, "dedup hash PTTL %lld", ttl);

    h_sleep_ms(1100);
    json_t *r3 = h_ok(h_req(c, "{'op':'pub','stream':'dw','data':5,'msgid':'w1'}"));
    ck_assert_str_ne(h_str(r3, "id"), h_str(r1, "id"));
    ck_assert(json_object_get(r3, "dup") == NULL || json_is_false(json_object_get(r3, "dup")));
    ck_assert_int_eq(xlen("sb:dw"), 4);
    /* w2 expired with w1 and was forgotten; w1 is remembered anew. */
    ck_assert_int_eq(h_redis_int("HLEN sb:dw:dedup"), 1);
    ck_assert_int_eq(h_redis_int("ZCARD sb:dw:dedup:exp"), 1);
    h_sleep_ms(1100);
    ck_assert_int_eq(h_redis_int("EXISTS sb:dw:dedup sb:dw:dedup:exp"), 0);
    json_decref(r1);
    json_decref(r2);
    json_decref(r3);
    sb_close(c);
}
END_TEST

START_TEST(t_payload_roundtrip)
{
    /* Big and awkward payloads come back exactly as published. */
    sb_client *s = h_connect(), *p = h_connect();
    h_sub(s, "rt", "g", "c", 0, NULL);
    char *big = repeat('x', 500000);
    json_t *data = json_pack("{s:s,s:s,s:[i,f,b,n]}", "big", big,
                             "odd", "\xc3\xa9 \xe2\x80\xa8 \xf0\x9f\x98\x80 \"q\" \\ \n\t\x01",
                             "mix", 1, 2.5, 1);
    json_t *req = json_pack("{s:s,s:s,s:O}", "op", "pub", "stream", "rt", "data", data);
    json_t *r = h_ok(h_req_json(p, req));
    const char *id = h_str(r, "id");
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert_str_eq(mid(m), id);
    ck_assert_msg(json_equal(json_object_get(m, "data"), data), "payload changed on the way");
    json_decref(m);
    json_decref(r);
    json_decref(data);
    free(big);
    /* Tiny ones too. */
    const char *tiny[] = { "0", "\"\"", "[]", "{}", "false", "-1.5e-7" };
    for (size_t i = 0; i < sizeof tiny / sizeof *tiny; i++) {
        free(h_pub(p, "rt", tiny[i]));
        m = h_msg(s, H_WAIT_MS);
        assert_json_eq(json_object_get(m, "data"), tiny[i]);
        json_decref(m);
    }
}
END_TEST

START_TEST(t_abrupt_clients)
{
    /* Clients that vanish mid-request or mid-stream do not hurt the daemon. */
    sb_client *s = h_connect(), *p = h_connect();
    h_sub(s, "ab", "g", "keep", 0, NULL);
    for (int i = 0; i < 5; i++)
        free(h_pub(p, "ab", "0"));
    for (int k = 0; k < 5; k++) {
        sb_client *c = h_connect();
        char buf[8192];
        size_t len = 0;
        for (int i = 0; i < 50; i++)
            len += snprintf(buf + len, sizeof buf - len,
                            "{\"op\":\"pub\",\"stream\":\"ab\",\"data\":%d}\n", i);
        len += snprintf(buf + len, sizeof buf - len, "{\"op\":\"sub\",\"stream\":\"ab\",\"gro");
        ck_assert_int_eq(write(sb_fd(c), buf, len), (ssize_t)len);
        sb_close(c);
    }
    sb_client *sub = h_connect();
    h_sub(sub, "ab", "g2", "gone", 5, "all");
    json_decref(collect(sub, 5, H_WAIT_MS));
    sb_close(sub);
    h_sleep_ms(300);
    ck_assert_msg(h_daemon_running(), "daemon died");
    sb_client *c = h_connect();
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
    char *id = h_pub(c, "ab", "\"last\"");
    /* The surviving subscriber still gets entries. */
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert(h_id_valid(mid(m)));
    json_decref(m);
    free(id);
}
END_TEST

START_TEST(t_prefix_config)
{
    h_conf_redis("prefix = tst:\n");
    sb_client *c = h_connect();
    free(h_pub(c, "p", "1"));
    ck_assert_int_eq(xlen("tst:p"), 1);
    ck_assert_int_eq(h_redis_int("EXISTS sb:p"), 0);
    sb_close(c);
}
END_TEST

START_TEST(t_type_and_source)
{
    sb_client *s = h_connect();
    sb_client *p = h_connect();
    long long sub = h_sub(s, "ts", "g", "c", 0, NULL);
    json_decref(h_ok(h_req(p, "{'op':'hello','name':'feeder'}")));
    json_decref(h_ok(h_req(p, "{'op':'pub','stream':'ts','type':'TICK','data':{'px':1}}")));
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert_int_eq(h_int(m, "sub"), sub);
    ck_assert_str_eq(h_str(m, "type"), "TICK");
    ck_assert_str_eq(h_str(m, "source"), "feeder");
    json_decref(m);
    /* A batch entry's type as well. */
    json_decref(h_ok(h_req(p, "{'op':'pub','stream':'ts','batch':[{'type':'B1','data':1}]}")));
    m = h_msg(s, H_WAIT_MS);
    ck_assert_str_eq(h_str(m, "type"), "B1");
    ck_assert_str_eq(h_str(m, "source"), "feeder");
    json_decref(m);
    sb_close(s);
    sb_close(p);
}
END_TEST

/* ============================================================ sub */

START_TEST(t_sub_delivery_fields)
{
    sb_client *s = h_connect();
    sb_client *p = h_connect();
    json_t *r = h_ok(h_req(s, "{'op':'sub','stream':'f','group':'g','consumer':'c','rid':'s1'}"));
    ck_assert_str_eq(h_str(r, "rid"), "s1");
    long long sub = h_int(r, "sub");
    json_decref(r);
    long long t0 = h_now_ms();
    char *id = h_pub(p, "f", "{\"k\":\"v\",\"n\":[1,2]}");
    long long t1 = h_now_ms();
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert_ptr_null(json_object_get(m, "ok"));
    ck_assert_str_eq(h_str(m, "op"), "msg");
    ck_assert_int_eq(h_int(m, "sub"), sub);
    ck_assert_str_eq(h_str(m, "stream"), "f");
    ck_assert_str_eq(h_str(m, "group"), "g");
    ck_assert_str_eq(h_str(m, "id"), id);
    ck_assert_int_eq(h_int(m, "attempt"), 1);
    long long ts = h_int(m, "ts");
    ck_assert_msg(ts >= t0 - 1000 && ts <= t1 + 1000, "ts %lld not within [%lld,%lld]", ts, t0, t1);
    assert_json_eq(json_object_get(m, "data"), "{\"k\":\"v\",\"n\":[1,2]}");
    json_decref(m);
    h_no_msg(s, 200);
    free(id);
    sb_close(s);
    sb_close(p);
}
END_TEST

START_TEST(t_sub_from)
{
    sb_client *p = h_connect();
    char *ids[3];
    for (int i = 0; i < 3; i++) {
        char d[8];
        snprintf(d, sizeof d, "%d", i);
        ids[i] = h_pub(p, "fr", d);
    }
    sb_client *all = h_connect(), *new = h_connect(), *dflt = h_connect(), *expl = h_connect();
    h_sub(all, "fr", "gall", "c", 0, "all");
    h_sub(new, "fr", "gnew", "c", 0, "new");
    h_sub(dflt, "fr", "gdef", "c", 0, NULL);
    h_sub(expl, "fr", "gexp", "c", 0, ids[1]);
    json_t *got = collect(all, 3, H_WAIT_MS);
    for (int i = 0; i < 3; i++)
        ck_assert_str_eq(mid(json_array_get(got, i)), ids[i]);
    json_decref(got);
    json_t *m = h_msg(expl, H_WAIT_MS);
    ck_assert_str_eq(mid(m), ids[2]);
    json_decref(m);
    h_no_msg(new, 300);
    h_no_msg(dflt, 1);
    h_no_msg(expl, 1);
    h_no_msg(all, 1);

    char *id4 = h_pub(p, "fr", "4");
    sb_client *each[] = { all, new, dflt, expl };
    for (int i = 0; i < 4; i++) {
        m = h_msg(each[i], H_WAIT_MS);
        ck_assert_str_eq(mid(m), id4);
        json_decref(m);
        h_no_msg(each[i], i == 0 ? 200 : 1);
    }
    for (int i = 0; i < 3; i++)
        free(ids[i]);
    free(id4);
}
END_TEST

START_TEST(t_prefetch)
{
    sb_client *s = h_connect();
    sb_client *p = h_connect();
    long long sub = h_sub(s, "pf", "g", "c", 2, NULL);
    json_t *r = h_ok(h_req(p, "{'op':'pub','stream':'pf','batch':[{'data':0},{'data':1},"
                              "{'data':2},{'data':3},{'data':4},{'data':5},{'data':6},"
                              "{'data':7},{'data':8},{'data':9}]}"));
    json_t *ids = json_object_get(r, "ids");
    json_t *got = collect(s, 2, H_WAIT_MS);
    h_no_msg(s, 500);
    ck_assert_str_eq(mid(json_array_get(got, 0)), json_string_value(json_array_get(ids, 0)));
    ck_assert_str_eq(mid(json_array_get(got, 1)), json_string_value(json_array_get(ids, 1)));
    /* One ack frees one slot: exactly one more. */
    ck_assert_int_eq(h_ack(s, sub, mid(json_array_get(got, 0))), 1);
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert_str_eq(mid(m), json_string_value(json_array_get(ids, 2)));
    json_decref(m);
    h_no_msg(s, 400);
    ck_assert_int_eq(xpending("sb:pf", "g"), 2);
    json_decref(got);
    json_decref(r);
}
END_TEST

START_TEST(t_two_groups_each_get_all)
{
    sb_client *a = h_connect(), *b = h_connect(), *p = h_connect();
    h_sub(a, "tg", "g1", "c", 0, NULL);
    h_sub(b, "tg", "g2", "c", 0, NULL);
    char *ids[5];
    for (int i = 0; i < 5; i++)
        ids[i] = h_pub(p, "tg", "{\"x\":1}");
    json_t *ga = collect(a, 5, H_WAIT_MS);
    json_t *gb = collect(b, 5, H_WAIT_MS);
    for (int i = 0; i < 5; i++) {
        ck_assert_str_eq(mid(json_array_get(ga, i)), ids[i]);
        ck_assert_str_eq(mid(json_array_get(gb, i)), ids[i]);
        ck_assert_str_eq(h_str(json_array_get(ga, i), "group"), "g1");
        ck_assert_str_eq(h_str(json_array_get(gb, i), "group"), "g2");
        free(ids[i]);
    }
    h_no_msg(a, 200);
    h_no_msg(b, 1);
    json_decref(ga);
    json_decref(gb);
}
END_TEST

START_TEST(t_two_consumers_split)
{
    sb_client *a = h_connect(), *b = h_connect(), *p = h_connect();
    long long sa = h_sub(a, "sp", "g", "ca", 5, NULL);
    long long sb = h_sub(b, "sp", "g", "cb", 5, NULL);
    json_t *batch = json_array();
    for (int i = 0; i < 20; i++)
        json_array_append_new(batch, json_pack("{s:i}", "data", i));
    json_t *r = h_ok(h_req_json(p, json_pack("{s:s,s:s,s:o}", "op", "pub", "stream", "sp",
                                             "batch", batch)));
    json_t *ids = json_object_get(r, "ids");
    ck_assert_int_eq(json_array_size(ids), 20);

    /* Without acks: 5 each (prefetch), disjoint. */
    json_t *ga = collect(a, 5, H_WAIT_MS);
    json_t *gb = collect(b, 5, H_WAIT_MS);
    h_no_msg(a, 300);
    h_no_msg(b, 1);
    json_t *seen = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(ga, i, m) {
        ck_assert_msg(!ids_contain(seen, mid(m)), "%s delivered twice", mid(m));
        json_array_append_new(seen, json_string(mid(m)));
    }
    json_array_foreach(gb, i, m) {
        ck_assert_msg(!ids_contain(seen, mid(m)), "%s delivered to both consumers", mid(m));
        json_array_append_new(seen, json_string(mid(m)));
    }
    json_array_foreach(ga, i, m)
        ck_assert_int_eq(h_ack(a, sa, mid(m)), 1);
    json_array_foreach(gb, i, m)
        ck_assert_int_eq(h_ack(b, sb, mid(m)), 1);

    /* Drain the rest, acking as we go; every entry exactly once. */
    long long end = h_now_ms() + H_WAIT_MS;
    for (int guard = 0; guard < 1000 && json_array_size(seen) < 20 && h_now_ms() < end; guard++) {
        sb_client *cs[2] = { a, b };
        long long subs[2] = { sa, sb };
        for (int k = 0; k < 2; k++) {
            json_t *e = h_event(cs[k], 20);
            if (!e)
                continue;
            ck_assert_str_eq(h_str(e, "op"), "msg");
            ck_assert_msg(!ids_contain(seen, mid(e)), "%s delivered twice", mid(e));
            ck_assert_int_eq(h_int(e, "attempt"), 1);
            json_array_append_new(seen, json_string(mid(e)));
            ck_assert_int_eq(h_ack(cs[k], subs[k], mid(e)), 1);
            json_decref(e);
        }
    }
    ck_assert_int_eq(json_array_size(seen), 20);
    json_array_foreach(ids, i, m)
        ck_assert(ids_contain(seen, json_string_value(m)));
    h_no_msg(a, 300);
    h_no_msg(b, 1);
    ck_assert_int_eq(xpending("sb:sp", "g"), 0);
    json_decref(ga);
    json_decref(gb);
    json_decref(seen);
    json_decref(r);
}
END_TEST

START_TEST(t_many_subs_one_connection)
{
    sb_client *s = h_connect(), *p = h_connect();
    long long s1 = h_sub(s, "m1", "g", "c", 0, NULL);
    long long s2 = h_sub(s, "m2", "g", "c", 0, NULL);
    long long s3 = h_sub(s, "m1", "g2", "c", 0, NULL);
    ck_assert(s1 != s2 && s2 != s3 && s1 != s3);
    char *i1 = h_pub(p, "m1", "1");
    char *i2 = h_pub(p, "m2", "2");
    json_t *got = collect(s, 3, H_WAIT_MS);
    int seen1 = 0, seen2 = 0, seen3 = 0;
    size_t i;
    json_t *m;
    json_array_foreach(got, i, m) {
        long long sub = h_int(m, "sub");
        if (sub == s1) {
            seen1++;
            ck_assert_str_eq(h_str(m, "stream"), "m1");
            ck_assert_str_eq(mid(m), i1);
        } else if (sub == s2) {
            seen2++;
            ck_assert_str_eq(h_str(m, "stream"), "m2");
            ck_assert_str_eq(mid(m), i2);
        } else if (sub == s3) {
            seen3++;
            ck_assert_str_eq(h_str(m, "group"), "g2");
            ck_assert_str_eq(mid(m), i1);
        } else {
            ck_abort_msg("delivery for unknown sub %lld", sub);
        }
    }
    ck_assert(seen1 == 1 && seen2 == 1 && seen3 == 1);
    h_no_msg(s, 200);
    /* Acks go to the right subscription (ids of different streams may be
     * equal, so only the subscription decides). */
    ck_assert_int_eq(h_ack(s, s1, i1), 1);
    ck_assert_int_eq(h_ack(s, s1, i1), 0);
    ck_assert_int_eq(xpending("sb:m1", "g2"), 1);
    ck_assert_int_eq(h_ack(s, s2, i2), 1);
    ck_assert_int_eq(h_ack(s, s3, i1), 1);
    ck_assert_int_eq(xpending("sb:m1", "g"), 0);
    ck_assert_int_eq(xpending("sb:m2", "g"), 0);
    ck_assert_int_eq(xpending("sb:m1", "g2"), 0);
    json_decref(got);
    free(i1);
    free(i2);
}
END_TEST

START_TEST(t_many_subscribers_served_promptly)
{
    /* 50 consumers of one group, prefetch 1 each, 50 entries: every
     * consumer gets one at once (new subscriptions are served without
     * waiting for each other). */
    enum { N = 50 };
    sb_client *p = h_connect();
    static sb_client *cs[N];
    for (int i = 0; i < N; i++) {
        cs[i] = h_connect();
        h_send(cs[i], "{'op':'sub','stream':'mp','group':'g','consumer':'c%d','prefetch':1}", i);
    }
    for (int i = 0; i < N; i++)
        json_decref(h_ok(h_read(cs[i], H_WAIT_MS)));
    long long t0 = h_now_ms();
    for (int i = 0; i < N; i++)
        free(h_pub(p, "mp", "1"));
    json_t *seen = json_array();
    int got[N] = { 0 };
    for (int round = 0; round < 10000 && json_array_size(seen) < N && h_now_ms() < t0 + 3000;
         round++) {
        for (int i = 0; i < N; i++) {
            json_t *e;
            while ((e = sb_next_event(cs[i], 0)) != NULL) {
                ck_assert_msg(!ids_contain(seen, mid(e)), "%s delivered twice", mid(e));
                json_array_append_new(seen, json_string(mid(e)));
                got[i]++;
                json_decref(e);
            }
        }
        h_sleep_ms(5);
    }
    int idle = 0;
    for (int i = 0; i < N; i++)
        idle += got[i] == 0;
    ck_assert_msg(json_array_size(seen) == N,
                  "only %zu of %d entries delivered within 3 s (%d of %d consumers got none)",
                  json_array_size(seen), N, idle, N);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(got[i], 1);
    json_decref(seen);
}
END_TEST

START_TEST(t_default_consumer_name)
{
    sb_client *a = h_connect(), *b = h_connect(), *p = h_connect();
    json_decref(h_ok(h_req(a, "{'op':'hello','name':'alpha'}")));
    h_sub(a, "dc", "ga", NULL, 0, NULL);
    h_sub(b, "dc", "gb", NULL, 0, NULL);
    free(h_pub(p, "dc", "1"));
    json_decref(h_msg(a, H_WAIT_MS));
    json_decref(h_msg(b, H_WAIT_MS));
    const char *want[2][2] = { { "ga", "alpha-" }, { "gb", "client-" } };
    for (int k = 0; k < 2; k++) {
        redisReply *r = h_redis("XINFO CONSUMERS sb:dc %s", want[k][0]);
        ck_assert_int_eq(r->type, REDIS_REPLY_ARRAY);
        int found = 0;
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *ci = r->element[i];
            for (size_t j = 0; j + 1 < ci->elements; j += 2) {
                if (strcmp(ci->element[j]->str, "name") != 0)
                    continue;
                const char *name = ci->element[j + 1]->str;
                size_t pl = strlen(want[k][1]);
                if (strncmp(name, want[k][1], pl) == 0 && name[pl] &&
                    strspn(name + pl, "0123456789") == strlen(name + pl))
                    found = 1;
            }
        }
        ck_assert_msg(found, "no consumer named %sN in group %s", want[k][1], want[k][0]);
        freeReplyObject(r);
    }
}
END_TEST

/* ============================================================ ack/nack */

START_TEST(t_ack_counts)
{
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "ak", "g", "c", 10, NULL);
    char *ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = h_pub(p, "ak", "1");
    json_decref(collect(s, 3, H_WAIT_MS));
    ck_assert_int_eq(xpending("sb:ak", "g"), 3);
    json_t *r = h_ok(h_req(s, "{'op':'ack','sub':%lld,'id':'%s','rid':'a1'}", sub, ids[0]));
    ck_assert_int_eq(h_int(r, "acked"), 1);
    ck_assert_str_eq(h_str(r, "rid"), "a1");
    json_decref(r);
    r = h_ok(h_req(s, "{'op':'ack','sub':%lld,'ids':['%s']}", sub, ids[0]));
    ck_assert_int_eq(h_int(r, "acked"), 0);
    json_decref(r);
    r = h_ok(h_req(s, "{'op':'ack','sub':%lld,'ids':['%s','%s','1-1']}", sub, ids[1], ids[2]));
    ck_assert_int_eq(h_int(r, "acked"), 2);
    json_decref(r);
    /* An empty list: nothing acknowledged, or refused naming the field. */
    r = h_req(s, "{'op':'ack','sub':%lld,'ids':[]}", sub);
    if (json_is_true(json_object_get(r, "ok")))
        ck_assert_int_eq(h_int(r, "acked"), 0);
    else
        h_bad(r, "ids");
    json_decref(r);
    ck_assert_int_eq(xpending("sb:ak", "g"), 0);
    h_no_msg(s, 300);
    for (int i = 0; i < 3; i++)
        free(ids[i]);
}
END_TEST

START_TEST(t_nack_redeliver)
{
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "nk", "g", "c", 0, NULL);
    char *id = h_pub(p, "nk", "{\"v\":1}");
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert_int_eq(h_int(m, "attempt"), 1);
    json_decref(m);
    json_t *r = h_ok(h_req(s, "{'op':'nack','sub':%lld,'ids':['%s'],'delay_ms':0,'rid':'n'}",
                           sub, id));
    ck_assert_str_eq(h_str(r, "rid"), "n");
    json_decref(r);
    m = h_msg(s, 2000);
    ck_assert_str_eq(mid(m), id);
    ck_assert_int_eq(h_int(m, "attempt"), 2);
    assert_json_eq(json_object_get(m, "data"), "{\"v\":1}");
    json_decref(m);
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'id':'%s','delay_ms':0}", sub, id)));
    m = h_msg(s, 2000);
    ck_assert_str_eq(mid(m), id);
    ck_assert_int_eq(h_int(m, "attempt"), 3);
    json_decref(m);
    ck_assert_int_eq(h_ack(s, sub, id), 1);
    h_no_msg(s, 300);
    ck_assert_int_eq(xpending("sb:nk", "g"), 0);
    free(id);
}
END_TEST

START_TEST(t_nack_delay_beats_ack_deadline)
{
    /* The nack delay holds even past the (shorter) ack deadline. */
    h_conf(NULL, NULL, "[stream nd]\nack_timeout_ms = 500\nmax_attempts = 10\n");
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "nd", "g", "c", 0, NULL);
    char *id = h_pub(p, "nd", "1");
    json_decref(h_msg(s, H_WAIT_MS));
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'ids':['%s'],'delay_ms':1500}", sub, id)));
    long long t0 = h_now_ms();
    json_t *m = h_msg(s, 4000);
    long long dt = h_now_ms() - t0;
    ck_assert_msg(dt >= 1450, "redelivered %lld ms after a nack with delay_ms 1500", dt);
    ck_assert_str_eq(mid(m), id);
    ck_assert_int_eq(h_int(m, "attempt"), 2);
    json_decref(m);
    ck_assert_int_eq(h_ack(s, sub, id), 1);
    free(id);
}
END_TEST

START_TEST(t_nack_default_backoff)
{
    h_conf(NULL, NULL, "[stream bo]\nretry_delay_ms = 400\nmax_attempts = 10\n");
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "bo", "g", "c", 0, NULL);
    char *id = h_pub(p, "bo", "1");
    json_decref(h_msg(s, H_WAIT_MS));
    /* attempt 1 nacked: retry_delay_ms */
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'ids':['%s']}", sub, id)));
    long long t0 = h_now_ms();
    json_t *m = h_msg(s, 3000);
    long long dt = h_now_ms() - t0;
    ck_assert_msg(dt >= 380, "first retry after %lld ms, want >= 400", dt);
    ck_assert_int_eq(h_int(m, "attempt"), 2);
    json_decref(m);
    /* attempt 2 nacked: doubled */
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'ids':['%s']}", sub, id)));
    t0 = h_now_ms();
    m = h_msg(s, 4000);
    dt = h_now_ms() - t0;
    ck_assert_msg(dt >= 780, "second retry after %lld ms, want >= 800", dt);
    ck_assert_int_eq(h_int(m, "attempt"), 3);
    json_decref(m);
    ck_assert_int_eq(h_ack(s, sub, id), 1);
    free(id);
}
END_TEST

static void assert_dlq_entry(const char *dlq, const char *origin, const char *group,
                             const char *attempts, const char *reason, const char *data)
{
    redisReply *x = h_redis("XRANGE %s - +", dlq);
    ck_assert_int_eq(x->type, REDIS_REPLY_ARRAY);
    ck_assert_int_eq(x->elements, 1);
    const char *f;
    f = h_entry_field(x->element[0], "origin_id");
    ck_assert_msg(f && strcmp(f, origin) == 0, "origin_id %s, want %s", f ? f : "(none)", origin);
    f = h_entry_field(x->element[0], "group");
    ck_assert_msg(f && strcmp(f, group) == 0, "group %s, want %s", f ? f : "(none)", group);
    f = h_entry_field(x->element[0], "attempts");
    ck_assert_msg(f && strcmp(f, attempts) == 0, "attempts %s, want %s", f ? f : "(none)", attempts);
    f = h_entry_field(x->element[0], "reason");
    ck_assert_msg(f && (reason ? strcmp(f, reason) == 0 : *f != '\0'),
                  "reason '%s', want '%s'", f ? f : "(none)", reason ? reason : "(non-empty)");
    f = h_entry_field(x->element[0], "data");
    ck_assert_msg(f && strcmp(f, data) == 0, "data %s, want %s", f ? f : "(none)", data);
    freeReplyObject(x);
}

START_TEST(t_nack_dead)
{
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "dd", "g", "c", 0, NULL);
    char *id = h_pub(p, "dd", "{\"bad\":true}");
    json_decref(h_msg(s, H_WAIT_MS));
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'ids':['%s'],'dead':true,'reason':'poison'}",
                           sub, id)));
    ck_assert_int_eq(xlen("sb:dd:dlq"), 1);
    assert_dlq_entry("sb:dd:dlq", id, "g", "1", "poison", "{\"bad\":true}");
    ck_assert_int_eq(xpending("sb:dd", "g"), 0);
    h_no_msg(s, 500);
    /* Acking it now finds nothing pending. */
    ck_assert_int_eq(h_ack(s, sub, id), 0);
    json_t *r = h_ok(h_req(s, "{'op':'stats','stream':'dd'}"));
    json_t *st = json_array_get(json_object_get(r, "streams"), 0);
    ck_assert_int_eq(h_int(st, "dlq_length"), 1);
    json_decref(r);
    free(id);
}
END_TEST

START_TEST(t_ack_deadline_then_dead_letter)
{
    h_conf(NULL, NULL, "[stream dl]\nack_timeout_ms = 1000\nmax_attempts = 2\n");
    sb_client *s = h_connect(), *p = h_connect();
    h_sub(s, "dl", "g", "c", 0, NULL);
    char *id = h_pub(p, "dl", "{\"n\":7}");
    json_t *m = h_msg(s, H_WAIT_MS);
    long long t1 = h_now_ms();
    ck_assert_int_eq(h_int(m, "attempt"), 1);
    json_decref(m);
    m = h_msg(s, 4000);
    long long dt = h_now_ms() - t1;
    ck_assert_msg(dt >= 900, "redelivered after %lld ms, ack_timeout_ms is 1000", dt);
    ck_assert_str_eq(mid(m), id);
    ck_assert_int_eq(h_int(m, "attempt"), 2);
    json_decref(m);
    /* max_attempts reached: dead-lettered, not delivered a third time. */
    int moved = 0;
    for (int i = 0; i < 100 && !moved; i++) {
        json_t *e = h_event(s, 50);
        if (e) {
            char *t = json_dumps(e, JSON_COMPACT);
            ck_abort_msg("delivered again after max_attempts: %s", t ? t : "?");
        }
        moved = h_redis_int("EXISTS sb:dl:dlq") && xlen("sb:dl:dlq") == 1;
    }
    ck_assert_msg(moved, "not dead-lettered 5 s after the second ack deadline");
    assert_dlq_entry("sb:dl:dlq", id, "g", "2", NULL, "{\"n\":7}");
    ck_assert_int_eq(xpending("sb:dl", "g"), 0);
    h_no_msg(s, 1500);
    ck_assert_int_eq(xlen("sb:dl:dlq"), 1);
    free(id);
}
END_TEST

START_TEST(t_touch_postpones_deadline)
{
    h_conf(NULL, NULL, "[stream tt]\nack_timeout_ms = 1000\nmax_attempts = 5\n");
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "tt", "g", "c", 0, NULL);
    char *id = h_pub(p, "tt", "1");
    json_decref(h_msg(s, H_WAIT_MS));
    long long t0 = h_now_ms();
    for (int k = 1; k <= 3; k++) {
        h_no_msg(s, until(t0 + 500 * k));
        json_t *r = h_ok(h_req(s, "{'op':'touch','sub':%lld,'ids':['%s'],'rid':%d}", sub, id, k));
        ck_assert_int_eq(h_int(r, "rid"), k);
        json_decref(r);
    }
    /* Last touch at ~1500 ms: no redelivery before ~2500 ms. */
    h_no_msg(s, until(t0 + 2350));
    json_t *m = h_msg(s, 4000);
    ck_assert_str_eq(mid(m), id);
    ck_assert_int_eq(h_int(m, "attempt"), 2);
    json_decref(m);
    ck_assert_int_eq(h_ack(s, sub, id), 1);
    free(id);
}
END_TEST

/* ============================================================ release */

static void release_case(int how)
{
    sb_client *a = h_connect(), *b = h_connect(), *p = h_connect();
    long long sa = h_sub(a, "rl", "g", "ca", 10, NULL);
    char *ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = h_pub(p, "rl", "1");
    json_decref(collect(a, 3, H_WAIT_MS));
    h_sub(b, "rl", "g", "cb", 10, NULL);
    h_no_msg(b, 200);
    long long t0 = h_now_ms();
    if (how == 0) {
        json_decref(h_ok(h_req(a, "{'op':'unsub','sub':%lld}", sa)));
    } else {
        sb_close(a);
        a = NULL;
        t0 = h_now_ms();
    }
    json_t *got = collect(b, 3, 1500);
    long long dt = h_now_ms() - t0;
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(ids_contain(got, ids[i]), "entry %s not redelivered", ids[i]);
        json_t *m = json_array_get(got, i);
        ck_assert_int_eq(h_int(m, "attempt"), 2);
        free(ids[i]);
    }
    ck_assert_msg(dt <= 1500, "took %lld ms", dt);
    h_no_msg(b, 200);
    if (a)
        h_no_msg(a, 1);
    json_decref(got);
}

START_TEST(t_unsub_releases)
{
    release_case(0);
}
END_TEST

START_TEST(t_disconnect_releases)
{
    release_case(1);
}
END_TEST

START_TEST(t_reconnect_pending_first)
{
    sb_client *a = h_connect(), *p = h_connect();
    h_sub(a, "rc", "g", "cx", 10, NULL);
    char *old[3], *fresh[2];
    for (int i = 0; i < 3; i++)
        old[i] = h_pub(p, "rc", "1");
    json_decref(collect(a, 3, H_WAIT_MS));
    sb_close(a);
    h_sleep_ms(200);
    for (int i = 0; i < 2; i++)
        fresh[i] = h_pub(p, "rc", "2");
    a = h_connect();
    h_sub(a, "rc", "g", "cx", 10, NULL);
    json_t *got = collect(a, 5, H_WAIT_MS);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < i; j++)
            ck_assert_msg(strcmp(mid(json_array_get(got, i)), mid(json_array_get(got, j))) != 0,
                          "entry %s delivered twice to the reconnected consumer "
                          "(attempts %lld and %lld) without ack, nack or deadline",
                          mid(json_array_get(got, i)), h_int(json_array_get(got, j), "attempt"),
                          h_int(json_array_get(got, i), "attempt"));
    for (int i = 0; i < 3; i++) {
        json_t *m = json_array_get(got, i);
        ck_assert_msg(strcmp(mid(m), old[i]) == 0, "delivery %d is %s, want old entry %s",
                      i, mid(m), old[i]);
        ck_assert_int_eq(h_int(m, "attempt"), 2);
        free(old[i]);
    }
    for (int i = 0; i < 2; i++) {
        json_t *m = json_array_get(got, 3 + i);
        ck_assert_str_eq(mid(m), fresh[i]);
        ck_assert_int_eq(h_int(m, "attempt"), 1);
        free(fresh[i]);
    }
    h_no_msg(a, 300);
    json_decref(got);
}
END_TEST

START_TEST(t_daemon_death_releases)
{
    /* kill -9: a new instance releases the dead one's entries within 5 s,
     * long before the 30 s ack deadline. */
    sb_client *a = h_connect(), *p = h_connect();
    h_sub(a, "dk", "g", "ca", 10, NULL);
    char *ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = h_pub(p, "dk", "1");
    json_decref(collect(a, 3, H_WAIT_MS));
    /* Killed while its consumer is connected: nothing released on the way. */
    h_daemon_stop(SIGKILL, 2000);
    long long t0 = h_now_ms();
    sb_close(a);
    sb_close(p);
    h_daemon_start();
    sb_client *b = h_connect();
    h_sub(b, "dk", "g", "cb", 10, NULL);
    json_t *got = collect(b, 3, until(t0 + 6500));
    for (int i = 0; i < 3; i++) {
        ck_assert(ids_contain(got, ids[i]));
        ck_assert_int_eq(h_int(json_array_get(got, i), "attempt"), 2);
        free(ids[i]);
    }
    json_decref(got);
}
END_TEST

START_TEST(t_release_across_instances)
{
    /* The other consumer is on another streambusd sharing the Redis. */
    sb_client *a = h_connect(), *p = h_connect();
    h_extra_start(0);
    sb_client *b = h_connect_extra(0);
    h_sub(a, "xi", "g", "ca", 10, NULL);
    char *ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = h_pub(p, "xi", "1");
    json_decref(collect(a, 3, H_WAIT_MS));
    h_sub(b, "xi", "g", "cb", 10, NULL);
    h_no_msg(b, 300);
    sb_close(a);
    json_t *got = collect(b, 3, 1500);
    for (int i = 0; i < 3; i++) {
        ck_assert(ids_contain(got, ids[i]));
        ck_assert_int_eq(h_int(json_array_get(got, i), "attempt"), 2);
        free(ids[i]);
    }
    h_no_msg(b, 200);
    /* And new entries flow to b through its own instance. */
    char *id = h_pub(p, "xi", "2");
    json_t *m = h_msg(b, H_WAIT_MS);
    ck_assert_str_eq(mid(m), id);
    json_decref(m);
    free(id);
    json_decref(got);
}
END_TEST

START_TEST(t_death_other_instance)
{
    /* kill -9 of one instance: another one (already running) hands its
     * consumers' entries on within 5 s. */
    sb_client *a = h_connect(), *p = h_connect();
    h_extra_start(0);
    sb_client *b = h_connect_extra(0);
    h_sub(a, "od", "g", "ca", 10, NULL);
    char *ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = h_pub(p, "od", "1");
    json_decref(collect(a, 3, H_WAIT_MS));
    h_sub(b, "od", "g", "cb", 10, NULL);
    h_no_msg(b, 300);
    h_daemon_stop(SIGKILL, 2000);
    long long t0 = h_now_ms();
    json_t *got = collect(b, 3, until(t0 + 6500));
    for (int i = 0; i < 3; i++) {
        ck_assert(ids_contain(got, ids[i]));
        ck_assert_int_eq(h_int(json_array_get(got, i), "attempt"), 2);
        free(ids[i]);
    }
    json_decref(got);
    sb_close(a);
    sb_close(p);
}
END_TEST

START_TEST(t_raw_xadd_fields)
{
    sb_client *s = h_connect();
    h_sub(s, "raw", "g", "c", 0, NULL);
    redisReply *x = h_redis("XADD sb:raw * k1 v1 k2 %s", "v 2");
    ck_assert_int_eq(x->type, REDIS_REPLY_STRING);
    char *id = strdup(x->str);
    freeReplyObject(x);
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert_str_eq(mid(m), id);
    ck_assert_int_eq(h_int(m, "attempt"), 1);
    assert_json_eq(json_object_get(m, "data"), "{\"k1\":\"v1\",\"k2\":\"v 2\"}");
    json_decref(m);
    free(id);
    /* With a data field holding JSON: that JSON. */
    x = h_redis("XADD sb:raw * data %s", "{\"z\":[1]}");
    freeReplyObject(x);
    m = h_msg(s, H_WAIT_MS);
    assert_json_eq(json_object_get(m, "data"), "{\"z\":[1]}");
    json_decref(m);
    /* A data field that is not JSON, with invalid UTF-8: a JSON string,
     * the bad byte as U+FFFD; fields with bad bytes likewise. */
    x = h_redis("XADD sb:raw * data %b", "not json \xff", (size_t)10);
    freeReplyObject(x);
    m = h_msg(s, H_WAIT_MS);
    ck_assert_str_eq(h_str(m, "data"), "not json \xef\xbf\xbd");
    json_decref(m);
    x = h_redis("XADD sb:raw * k %b", "a\xc3", (size_t)2);
    freeReplyObject(x);
    m = h_msg(s, H_WAIT_MS);
    assert_json_eq(json_object_get(m, "data"), "{\"k\":\"a\\ufffd\"}");
    json_decref(m);
}
END_TEST

START_TEST(t_sub_then_unsub_or_bye_at_once)
{
    /* sub and unsub (or bye) in one write, before Redis answered the sub:
     * every line still gets its reply, in order, and nothing breaks. */
    sb_client *c = h_connect();
    const char a[] = "{\"op\":\"sub\",\"stream\":\"su\",\"group\":\"g\",\"rid\":1}\n"
                     "{\"op\":\"unsub\",\"sub\":1,\"rid\":2}\n{\"op\":\"ping\",\"rid\":3}\n";
    h_send_raw(c, a, sizeof(a) - 1);
    for (int i = 1; i <= 3; i++) {
        json_t *r = h_ok(h_read(c, H_REPLY_MS));
        ck_assert_int_eq(h_int(r, "rid"), i);
        json_decref(r);
    }
    sb_client *d = h_connect();
    const char b[] = "{\"op\":\"sub\",\"stream\":\"su\",\"group\":\"g\",\"rid\":1}\n"
                     "{\"op\":\"bye\",\"rid\":2}\n";
    h_send_raw(d, b, sizeof(b) - 1);
    for (int i = 1; i <= 2; i++) {
        json_t *r = h_ok(h_read(d, H_REPLY_MS));
        ck_assert_int_eq(h_int(r, "rid"), i);
        json_decref(r);
    }
    /* a sub refused by Redis (wrong key type), then bye */
    freeReplyObject(h_redis("SET sb:wt x"));
    sb_client *e = h_connect();
    const char w[] = "{\"op\":\"sub\",\"stream\":\"wt\",\"group\":\"g\",\"rid\":1}\n"
                     "{\"op\":\"bye\",\"rid\":2}\n";
    h_send_raw(e, w, sizeof(w) - 1);
    json_t *r = h_read(e, H_REPLY_MS);
    ck_assert(json_is_false(json_object_get(r, "ok")));
    json_decref(r);
    json_decref(h_ok(h_read(e, H_REPLY_MS)));
    /* the daemon is fine */
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
}
END_TEST

START_TEST(t_client_bye)
{
    /* bye is answered like any request (after the replies before it),
     * then the server closes the connection. */
    sb_client *c = h_connect();
    const char two[] = "{\"op\":\"pub\",\"stream\":\"cb\",\"data\":1}\n{\"op\":\"bye\",\"rid\":9}\n";
    h_send_raw(c, two, sizeof(two) - 1);
    json_decref(h_ok(h_read(c, H_REPLY_MS)));
    json_t *r = h_ok(h_read(c, H_REPLY_MS));
    ck_assert_int_eq(h_int(r, "rid"), 9);
    json_decref(r);
    size_t len;
    ck_assert_ptr_null(sb_read_line(c, &len, 2000));
}
END_TEST

START_TEST(t_trim_keeps_unacked)
{
    h_conf(NULL, NULL, "[stream tr]\nmaxlen = 10\n");
    sb_client *s = h_connect(), *p = h_connect();
    h_sub(s, "tr", "g", "c", 1, NULL);
    char *first = NULL;
    for (int b = 0; b < 3; b++) {
        json_t *batch = json_array();
        for (int i = 0; i < 100; i++)
            json_array_append_new(batch, json_pack("{s:i}", "data", b * 100 + i));
        json_t *r = h_ok(h_req_json(p, json_pack("{s:s,s:s,s:o}", "op", "pub", "stream", "tr",
                                                 "batch", batch)));
        if (!first)
            first = strdup(json_string_value(json_array_get(json_object_get(r, "ids"), 0)));
        json_decref(r);
    }
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert_str_eq(mid(m), first);
    json_decref(m);
    for (int i = 0; i < 3; i++)
        free(h_pub(p, "tr", "0"));
    ck_assert_int_eq(xlen("sb:tr"), 303);
    redisReply *x = h_redis("XRANGE sb:tr - + COUNT 1");
    ck_assert_str_eq(x->element[0]->element[0]->str, first);
    freeReplyObject(x);
    free(first);
}
END_TEST

static void pub_batch(sb_client *p, const char *stream, int n)
{
    json_t *batch = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(batch, json_pack("{s:i}", "data", i));
    json_decref(h_ok(h_req_json(p, json_pack("{s:s,s:s,s:o}", "op", "pub", "stream", stream,
                                             "batch", batch))));
}

/* Wait (bounded) until XLEN key satisfies cmp against want. */
static long long xlen_settles(const char *key, long long want, int at_most)
{
    long long n = -1;
    for (int i = 0; i < 40; i++) {
        n = xlen(key);
        if (at_most ? n <= want : n == want)
            break;
        h_sleep_ms(100);
    }
    return n;
}

START_TEST(t_retention)
{
    h_conf(NULL, NULL, "[stream rt]\nmaxlen = 10\n"
                       "[stream rh]\nmaxlen = 10\nmaxlen_hard = 1\n"
                       "[stream ng]\nmaxlen = 10\n");
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "rt", "g", "c", 1000, NULL);
    /* acknowledged entries are trimmed */
    pub_batch(p, "rt", 50);
    json_t *ids = json_array();
    for (int i = 0; i < 50; i++) {
        json_t *m = h_msg(s, H_WAIT_MS);
        json_array_append_new(ids, json_string(mid(m)));
        json_decref(m);
    }
    json_t *r = h_ok(h_req_json(s, json_pack("{s:s,s:I,s:o}", "op", "ack", "sub", sub, "ids", ids)));
    ck_assert_int_eq(h_int(r, "acked"), 50);
    json_decref(r);
    ck_assert_int_eq(xlen_settles("sb:rt", 0, 0), 0);
    /* unacknowledged ones stay, maxlen or not */
    pub_batch(p, "rt", 50);
    h_sleep_ms(1600);
    ck_assert_int_eq(xlen("sb:rt"), 50);
    /* maxlen_hard caps them, and says so */
    h_sub(s, "rh", "g", "c", 1, NULL);
    for (int i = 0; i < 3; i++)
        pub_batch(p, "rh", 100);
    ck_assert_int_le(xlen_settles("sb:rh", 110, 1), 110);
    /* a stream no group reads is capped, and nothing counts as unread */
    for (int i = 0; i < 3; i++)
        pub_batch(p, "ng", 100);
    ck_assert_int_le(xlen_settles("sb:ng", 110, 1), 110);
    char *body = NULL;
    double v = -1;
    ck_assert_int_eq(h_http_get(H.metrics_port, "/metrics", &body, NULL), 200);
    ck_assert(h_metric(body, "streambus_trimmed_unread_total", "stream=rh", &v));
    ck_assert_msg(v >= 190, "trimmed_unread{rh} = %g", v);
    ck_assert(h_metric(body, "streambus_trimmed_unread_total", "stream=ng", &v));
    ck_assert(v == 0);
    ck_assert(h_metric(body, "streambus_trimmed_unread_total", "stream=rt", &v));
    ck_assert(v == 0);
    free(body);
}
END_TEST

START_TEST(t_idle_timeout)
{
    h_conf("idle_timeout_ms = 1000\n", NULL, NULL);
    sb_client *idle = h_connect(), *sub = h_connect();
    h_sub(sub, "it", "g", NULL, 1, NULL);     /* a quiet consumer is not idle */
    json_t *b = h_event(idle, 4000);
    ck_assert_msg(b != NULL, "no bye within 4 s of idling");
    ck_assert_str_eq(h_str(b, "op"), "bye");
    ck_assert_str_eq(h_str(b, "reason"), "idle");
    json_decref(b);
    h_sleep_ms(500);
    json_decref(h_ok(h_req(sub, "{'op':'ping'}")));
    ck_assert_int_eq((int)h_metric_now("streambus_idle_disconnects_total", ""), 1);
}
END_TEST

/* ============================================================ stats */

START_TEST(t_stats)
{
    sb_client *a = h_connect(), *b = h_connect(), *p = h_connect();
    h_sub(a, "st", "g1", "c", 2, NULL);
    long long sb = h_sub(b, "st", "g2", "c", 10, NULL);
    for (int i = 0; i < 5; i++)
        free(h_pub(p, "st", "1"));
    free(h_pub(p, "other", "1"));
    json_decref(collect(a, 2, H_WAIT_MS));
    json_t *gb = collect(b, 5, H_WAIT_MS);
    size_t i;
    json_t *m;
    json_array_foreach(gb, i, m)
        ck_assert_int_eq(h_ack(b, sb, mid(m)), 1);
    json_decref(gb);
    /* One entry dead-lettered elsewhere shows in dlq_length. */
    redisReply *x = h_redis("XADD sb:st:dlq * data 1");
    freeReplyObject(x);

    json_t *r = h_ok(h_req(p, "{'op':'stats','stream':'st','rid':9}"));
    ck_assert_int_eq(h_int(r, "rid"), 9);
    json_t *streams = json_object_get(r, "streams");
    ck_assert_int_eq(json_array_size(streams), 1);
    json_t *st = json_array_get(streams, 0);
    ck_assert_str_eq(h_str(st, "stream"), "st");
    ck_assert_int_eq(h_int(st, "length"), 5);
    ck_assert_int_eq(h_int(st, "dlq_length"), 1);
    json_t *groups = json_object_get(st, "groups");
    ck_assert_int_eq(json_array_size(groups), 2);
    json_t *g1 = h_find_named(groups, "group", "g1");
    json_t *g2 = h_find_named(groups, "group", "g2");
    ck_assert_ptr_nonnull(g1);
    ck_assert_ptr_nonnull(g2);
    ck_assert_int_eq(h_int(g1, "consumers"), 1);
    ck_assert_int_eq(h_int(g1, "pending"), 2);
    ck_assert_int_eq(h_int(g1, "lag"), 3);
    ck_assert_int_eq(h_int(g2, "consumers"), 1);
    ck_assert_int_eq(h_int(g2, "pending"), 0);
    ck_assert_int_eq(h_int(g2, "lag"), 0);
    json_decref(r);

    /* Without a stream: all of them. */
    r = h_ok(h_req(p, "{'op':'stats'}"));
    streams = json_object_get(r, "streams");
    ck_assert(json_is_array(streams));
    st = h_find_named(streams, "stream", "st");
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(h_int(st, "length"), 5);
    json_t *o = h_find_named(streams, "stream", "other");
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(h_int(o, "length"), 1);
    ck_assert_int_eq(h_int(o, "dlq_length"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(o, "groups")), 0);
    json_decref(r);
}
END_TEST

/* ============================================================ shutdown */

START_TEST(t_sigterm_bye)
{
    sb_client *idle = h_connect(), *s = h_connect(), *p = h_connect();
    json_decref(h_ok(h_req(idle, "{'op':'ping'}")));
    h_sub(s, "bye", "g", "ca", 10, NULL);
    char *ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = h_pub(p, "bye", "1");
    json_decref(collect(s, 3, H_WAIT_MS));

    /* 20 pipelined pubs, then SIGTERM: every one answered, then bye. */
    size_t cap = 20 * 80, len = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < 20; i++)
        len += snprintf(buf + len, cap - len,
                        "{\"op\":\"pub\",\"stream\":\"bye\",\"data\":%d,\"rid\":%d}\n", i, i);
    h_send_raw(p, buf, len);
    free(buf);
    h_sleep_ms(100);
    ck_assert_int_eq(kill(H.daemon.pid, SIGTERM), 0);
    H.daemon_expected_dead = 1;
    for (int i = 0; i < 20; i++) {
        json_t *r = h_ok(h_read(p, H_WAIT_MS));
        ck_assert_int_eq(h_int(r, "rid"), i);
        json_decref(r);
    }
    sb_client *cs[3] = { p, idle, s };
    for (int k = 0; k < 3; k++) {
        json_t *e = NULL;
        for (int guard = 0; guard < 100; guard++) {
            e = h_read(cs[k], H_WAIT_MS);
            const char *op = json_string_value(json_object_get(e, "op"));
            if (!json_object_get(e, "ok") && op && strcmp(op, "bye") == 0)
                break;
            ck_assert_msg(!json_object_get(e, "ok"), "unexpected reply before bye");
            json_decref(e);
            e = NULL;
        }
        ck_assert_ptr_nonnull(e);
        ck_assert_str_eq(h_str(e, "reason"), "shutdown");
        ck_assert_ptr_null(json_object_get(e, "ok"));
        json_decref(e);
        size_t l;
        errno = 0;
        const char *more = sb_read_line(cs[k], &l, H_WAIT_MS);
        ck_assert_msg(more == NULL && errno != ETIMEDOUT,
                      "connection %d not closed after bye (%s)", k, more ? more : "timeout");
    }
    ck_assert_msg(h_wait_exit(&H.daemon, 6000), "daemon still running 6 s after SIGTERM");
    ck_assert_msg(WIFEXITED(H.daemon.status) && WEXITSTATUS(H.daemon.status) == 0,
                  "daemon exit status 0x%x, want exit 0", H.daemon.status);
    ck_assert_int_eq(xlen("sb:bye"), 23);

    /* The unacknowledged entries were released: a new consumer gets them
     * promptly from a new instance. */
    H.daemon.pid = 0;
    h_daemon_start();
    sb_client *b = h_connect();
    h_sub(b, "bye", "g", "cb", 50, NULL);
    json_t *got = collect(b, 23, 3000);
    for (int i = 0; i < 3; i++) {
        ck_assert(ids_contain(got, ids[i]));
        free(ids[i]);
    }
    json_decref(got);
}
END_TEST

START_TEST(t_sigint_bye)
{
    sb_client *c = h_connect();
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
    H.daemon_expected_dead = 1;
    ck_assert_int_eq(kill(H.daemon.pid, SIGINT), 0);
    json_t *e = h_event(c, H_WAIT_MS);
    ck_assert_msg(e != NULL, "no bye after SIGINT");
    ck_assert_str_eq(h_str(e, "op"), "bye");
    ck_assert_str_eq(h_str(e, "reason"), "shutdown");
    json_decref(e);
    ck_assert_msg(h_wait_exit(&H.daemon, 6000), "daemon still running 6 s after SIGINT");
    ck_assert_msg(WIFEXITED(H.daemon.status) && WEXITSTATUS(H.daemon.status) == 0,
                  "exit status 0x%x after SIGINT, want exit 0", H.daemon.status);
}
END_TEST

START_TEST(t_sighup_keeps_running)
{
    sb_client *c = h_connect(), *s = h_connect();
    long long sub = h_sub(s, "hup", "g", "c", 0, NULL);
    ck_assert_int_eq(kill(H.daemon.pid, SIGHUP), 0);
    h_sleep_ms(300);
    ck_assert_msg(h_daemon_running(), "daemon died on SIGHUP");
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
    char *id = h_pub(c, "hup", "1");
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert_str_eq(mid(m), id);
    ck_assert_int_eq(h_int(m, "sub"), sub);
    json_decref(m);
    free(id);
}
END_TEST

/* ============================================================ HTTP */

static const char *families[][2] = {
    { "streams_messages_published_total", "counter" },
    { "streams_messages_consumed_total", "counter" },
    { "streams_messages_delivered_total", "counter" },
    { "streams_messages_redelivered_total", "counter" },
    { "streams_messages_dead_lettered_total", "counter" },
    { "streams_publish_errors_total", "counter" },
    { "streams_publish_duration_seconds", "histogram" },
    { "streams_processing_duration_seconds", "histogram" },
    { "streams_lag", "gauge" },
    { "streams_pending", "gauge" },
    { "streams_active_consumers", "gauge" },
    { "streambus_connections", "gauge" },
    { "streambus_redis_up", "gauge" },
    { "process_resident_memory_bytes", "gauge" },
    { "process_cpu_seconds_total", "counter" },
    { "process_open_fds", "gauge" },
    { "process_start_time_seconds", "gauge" },
};

struct want_metric {
    const char *name;
    const char *labels;
    double lo, hi;
};

static int metrics_match(const char *body, const struct want_metric *w, size_t n, char *why,
                         size_t whylen)
{
    for (size_t i = 0; i < n; i++) {
        double v;
        if (!h_metric(body, w[i].name, w[i].labels, &v)) {
            snprintf(why, whylen, "missing %s{%s}", w[i].name, w[i].labels);
            return 0;
        }
        if (v < w[i].lo || v > w[i].hi) {
            snprintf(why, whylen, "%s{%s} = %g, want [%g, %g]", w[i].name, w[i].labels, v,
                     w[i].lo, w[i].hi);
            return 0;
        }
    }
    return 1;
}

START_TEST(t_metrics)
{
    h_conf("max_payload = 1000\n", NULL, NULL);
    long long t_start = h_now_ms() / 1000;
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "m", "g", "c", 0, NULL);
    char *e1 = h_pub(p, "m", "1");
    char *e2 = h_pub(p, "m", "2");
    char *e3 = h_pub(p, "m", "3");
    char *big = repeat('q', 2000);
    json_decref(h_err(h_req(p, "{'op':'pub','stream':'m','data':'%s'}", big), "too_large"));
    free(big);
    json_decref(collect(s, 3, H_WAIT_MS));
    ck_assert_int_eq(h_ack(s, sub, e1), 1);
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'ids':['%s'],'delay_ms':0}", sub, e2)));
    json_t *m = h_msg(s, H_WAIT_MS);
    ck_assert_str_eq(mid(m), e2);
    json_decref(m);
    ck_assert_int_eq(h_ack(s, sub, e2), 1);
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'ids':['%s'],'dead':true}", sub, e3)));

    const struct want_metric want[] = {
        { "streams_messages_published_total", "stream=m", 3, 3 },
        { "streams_messages_consumed_total", "stream=m,group=g", 2, 2 },
        { "streams_messages_delivered_total", "stream=m,group=g", 3, 4 },
        { "streams_messages_redelivered_total", "stream=m,group=g", 1, 1 },
        { "streams_messages_dead_lettered_total", "stream=m,group=g", 1, 1 },
        { "streams_publish_errors_total", "stream=m,error=too_large", 1, 1 },
        { "streams_publish_duration_seconds_count", "stream=m", 3, 3 },
        { "streams_publish_duration_seconds_bucket", "stream=m,le=+Inf", 3, 3 },
        { "streams_publish_duration_seconds_sum", "stream=m", 1e-9, 10 },
        { "streams_processing_duration_seconds_count", "stream=m,group=g", 2, 2 },
        { "streams_processing_duration_seconds_bucket", "stream=m,group=g,le=+Inf", 2, 2 },
        { "streams_processing_duration_seconds_sum", "stream=m,group=g", 0, 60 },
        { "streams_lag", "stream=m,group=g", 0, 0 },
        { "streams_pending", "stream=m,group=g", 0, 0 },
        { "streams_active_consumers", "stream=m,group=g", 1, 1 },
        { "streambus_connections", "", 2, 2 },
        { "streambus_redis_up", "", 1, 1 },
        { "process_resident_memory_bytes", "", 1e5, 1e11 },
        { "process_cpu_seconds_total", "", 0, 1e6 },
        { "process_open_fds", "", 3, 1e6 },
        { "process_start_time_seconds", "", (double)t_start - 5, (double)t_start + 10 },
    };
    char *body = NULL, *headers = NULL, why[512] = "";
    int ok = 0;
    for (int i = 0; i < 40 && !ok; i++) {
        free(body);
        free(headers);
        ck_assert_int_eq(h_http_get(H.metrics_port, "/metrics", &body, &headers), 200);
        ok = metrics_match(body, want, sizeof want / sizeof *want, why, sizeof why);
        if (!ok)
            h_sleep_ms(100);
    }
    ck_assert_msg(ok, "/metrics: %s\n%s", why, body);
    ck_assert_msg(strcasestr(headers, "content-type: text/plain"), "content type: %s", headers);
    for (size_t i = 0; i < sizeof families / sizeof *families; i++)
        ck_assert_msg(h_metric_type(body, families[i][0], families[i][1]),
                      "no '# TYPE %s %s'", families[i][0], families[i][1]);

    /* Histogram buckets are cumulative and end at the count. */
    double prev = -1, v;
    const char *les[] = { "0.001", "0.01", "0.1", "1", "+Inf" };
    int found = 0;
    for (size_t i = 0; i < sizeof les / sizeof *les; i++) {
        char lab[64];
        snprintf(lab, sizeof lab, "stream=m,le=%s", les[i]);
        if (h_metric(body, "streams_publish_duration_seconds_bucket", lab, &v)) {
            ck_assert_msg(v >= prev, "bucket le=%s decreases", les[i]);
            prev = v;
            found++;
        }
    }
    ck_assert_int_ge(found, 1);

    /* promtool, when installed, must accept it. */
    char *path = h_fmt("%s/metrics.txt", H.dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(body, f);
    fclose(f);
    char *cmd = h_fmt("if command -v promtool >/dev/null 2>&1; then "
                      "promtool check metrics < '%s'; else echo 'promtool: not installed'; fi",
                      path);
    char *argv[] = { "sh", "-c", cmd, NULL };
    char *out = NULL;
    int rc = h_run(argv, &out, 20000);
    ck_assert_msg(rc == 0, "promtool check metrics failed (%d):\n%s", rc, out ? out : "");
    if (out && strstr(out, "not installed"))
        fprintf(stderr, "t_metrics: promtool not installed, format check skipped\n");
    free(out);
    free(cmd);
    free(path);
    free(body);
    free(headers);
    free(e1);
    free(e2);
    free(e3);
}
END_TEST

START_TEST(t_health_and_404)
{
    h_daemon_start();
    char *body = NULL, *headers = NULL;
    ck_assert_int_eq(h_http_get(H.metrics_port, "/health", &body, &headers), 200);
    json_t *j = json_loads(body, 0, NULL);
    ck_assert_msg(j != NULL, "/health body is not JSON: %s", body);
    ck_assert_str_eq(h_str(j, "status"), "ok");
    ck_assert_str_eq(h_str(j, "redis"), "up");
    json_decref(j);
    free(body);
    free(headers);
    const char *paths[] = { "/", "/nope", "/metrics/x", "/healthz" };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
        ck_assert_msg(h_http_get(H.metrics_port, paths[i], NULL, NULL) == 404,
                      "GET %s is not 404", paths[i]);
}
END_TEST

START_TEST(t_metrics_off)
{
    H.metrics_off = 1;
    sb_client *c = h_connect();
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
    ck_assert_int_eq(h_http_get(H.metrics_port, "/metrics", NULL, NULL), -1);
}
END_TEST

/* ============================================================ scale */

START_TEST(t_redis_connections_constant)
{
    enum { N = 500, GROUPS = 5, MSGS = 40 };
    sb_client *p = h_connect();
    sb_client *c0 = h_connect();
    h_sub(c0, "cc", "g0", "c0", 1, NULL);
    free(h_pub(p, "cc", "0"));
    json_decref(h_msg(c0, H_WAIT_MS));
    h_sleep_ms(300);
    long long before = h_info_clients();

    static sb_client *cs[N];
    for (int i = 0; i < N; i++) {
        cs[i] = h_connect();
        h_send(cs[i], "{'op':'sub','stream':'cc','group':'g%d','consumer':'c%d'}",
               i % GROUPS, i + 1);
    }
    for (int i = 0; i < N; i++)
        json_decref(h_ok(h_read(cs[i], H_WAIT_MS)));
    h_sleep_ms(300);
    long long during = h_info_clients();
    ck_assert_msg(during <= before + (GROUPS - 1),
                  "Redis clients grew from %lld to %lld with %d subscribers", before, during, N);

    /* They all work: each group gets every new entry exactly once. */
    for (int i = 0; i < MSGS; i++)
        free(h_pub(p, "cc", "1"));
    int per_group[GROUPS] = { 0 };
    long long end = h_now_ms() + H_WAIT_MS;
    int total = 0;
    for (int round = 0; round < 1000 && total < GROUPS * MSGS && h_now_ms() < end; round++) {
        for (int i = 0; i < N; i++) {
            json_t *e;
            while ((e = sb_next_event(cs[i], 0)) != NULL) {
                ck_assert_str_eq(h_str(e, "op"), "msg");
                per_group[i % GROUPS]++;
                total++;
                json_decref(e);
            }
        }
        h_sleep_ms(10);
    }
    /* c0 (g0, prefetch 1) still holds its first entry: it gets none of these. */
    json_t *e0;
    while ((e0 = sb_next_event(c0, 0)) != NULL) {
        per_group[0]++;
        total++;
        json_decref(e0);
    }
    for (int g = 0; g < GROUPS; g++)
        ck_assert_msg(per_group[g] == MSGS, "group g%d got %d deliveries, want %d", g,
                      per_group[g], MSGS);
    long long after = h_info_clients();
    ck_assert_msg(after <= before + (GROUPS - 1), "Redis clients grew from %lld to %lld",
                  before, after);

    double v = -1;
    for (int i = 0; i < 30 && v != N + 2; i++) {
        char *body = NULL;
        ck_assert_int_eq(h_http_get(H.metrics_port, "/metrics", &body, NULL), 200);
        ck_assert(h_metric(body, "streambus_connections", "", &v));
        free(body);
        if (v != N + 2)
            h_sleep_ms(100);
    }
    ck_assert_double_eq(v, N + 2);
    for (int i = 0; i < N; i++)
        sb_close(cs[i]);
    h_sleep_ms(300);
    ck_assert_int_le(h_info_clients(), before + (GROUPS - 1));
    json_decref(h_ok(h_req(p, "{'op':'ping'}")));
}
END_TEST

/* ============================================================ command line */

START_TEST(t_cli_test_config)
{
    H.port = 7070;
    H.metrics_port = 8001;
    char *good = h_fmt("%s/good.conf", H.dir);
    h_write_conf(good);
    char *out = NULL;
    char *argv1[] = { (char *)h_daemon_path(), "-t", "-c", good, NULL };
    int rc = h_run(argv1, &out, 5000);
    ck_assert_msg(rc == 0, "-t on a good config: exit %d, output: %s", rc, out ? out : "");
    ck_assert_msg(out && strstr(out, "ok"), "-t on a good config printed: %s", out ? out : "");
    free(out);

    char *argv1b[] = { (char *)h_daemon_path(), "--test-config", "--config", good, NULL };
    rc = h_run(argv1b, &out, 5000);
    ck_assert_msg(rc == 0, "--test-config: exit %d, output: %s", rc, out ? out : "");
    free(out);

    struct { const char *text; int line; } bad[] = {
        { "[server]\nlisten = 127.0.0.1:7070\nmax_line = banana\n", 3 },
        { "; comment\n[defaults]\nack_timeout_ms = 1000\nmax_attempts = -3\n", 4 },
        { "[server]\nthis line has no equals sign\n", 2 },
        { "[redis]\nurl = redis://127.0.0.1:6379/0\n\n[stream s]\nprefetch = 0\n", 5 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *path = h_fmt("%s/bad%zu.conf", H.dir, i);
        FILE *f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fputs(bad[i].text, f);
        fclose(f);
        char *argv2[] = { (char *)h_daemon_path(), "-t", "-c", path, NULL };
        rc = h_run(argv2, &out, 5000);
        char *where = h_fmt("%s:%d", path, bad[i].line);
        ck_assert_msg(rc == 2, "-t on bad config %zu: exit %d, output: %s", i, rc, out ? out : "");
        ck_assert_msg(out && strstr(out, where), "bad config %zu: output lacks %s: %s", i, where,
                      out ? out : "");
        free(out);
        free(where);
        if (i == 0) {
            /* Starting on it (without -t) is a configuration error too. */
            char *argv3[] = { (char *)h_daemon_path(), "-c", path, NULL };
            rc = h_run(argv3, &out, 5000);
            ck_assert_msg(rc == 2, "start on bad config: exit %d, output: %s", rc, out ? out : "");
            free(out);
        }
        free(path);
    }

    char *argv4[] = { (char *)h_daemon_path(), "--no-such-option", NULL };
    rc = h_run(argv4, &out, 5000);
    ck_assert_msg(rc == 2, "unknown option: exit %d, output: %s", rc, out ? out : "");
    free(out);

    char *missing = h_fmt("%s/does-not-exist.conf", H.dir);
    char *argv5[] = { (char *)h_daemon_path(), "-t", "-c", missing, NULL };
    rc = h_run(argv5, &out, 5000);
    ck_assert_msg(rc == 2, "-c missing file: exit %d, output: %s", rc, out ? out : "");
    free(out);
    free(missing);

    char *argv6[] = { (char *)h_daemon_path(), "-V", NULL };
    rc = h_run(argv6, &out, 5000);
    ck_assert_msg(rc == 0, "-V: exit %d", rc);
    int a, b, d;
    const char *p = out;
    int vfound = 0;
    for (; p && *p && !vfound; p++)
        vfound = sscanf(p, "%d.%d.%d", &a, &b, &d) == 3;
    ck_assert_msg(vfound, "-V printed no X.Y.Z: %s", out ? out : "");
    free(out);
    free(good);
}
END_TEST

START_TEST(t_unix_socket)
{
    char *path = h_fmt("%s/sb.sock", H.dir);
    char *srv = h_fmt("unix_socket = %s\n", path);
    h_conf(srv, NULL, NULL);
    h_daemon_start();
    char err[256];
    sb_client *u = sb_connect(path, err, sizeof err);
    ck_assert_msg(u != NULL, "connect %s: %s", path, err);
    json_decref(h_ok(h_req(u, "{'op':'ping','rid':'unix'}")));
    free(h_pub(u, "ux", "1"));
    ck_assert_int_eq(xlen("sb:ux"), 1);
    sb_close(u);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_msg(S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0660,
                  "socket mode %04o, want the default 0660", st.st_mode & 0777);
    /* Its own mode, whatever the umask. */
    char *srv2 = h_fmt("unix_socket = %s\nunix_socket_mode = 0606\n", path);
    h_conf(srv2, NULL, NULL);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_msg((st.st_mode & 0777) == 0606, "socket mode %04o, want 0606",
                  st.st_mode & 0777);
    u = sb_connect(path, err, sizeof err);
    ck_assert_msg(u != NULL, "connect %s: %s", path, err);
    json_decref(h_ok(h_req(u, "{'op':'ping'}")));
    sb_close(u);
    free(path);
    free(srv);
    free(srv2);
}
END_TEST

/* ============================================================ auth */
/* The token file of daemon.md (server.auth_tokens).  Run only when the
 * daemon accepts the key (see main); until then this case is skipped with
 * a message. */

static char *write_tokens(mode_t mode)
{
    char *path = h_fmt("%s/tokens", H.dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("# token            rights\n"
          "tok-all   pub=* sub=*\n"
          "tok-pub   pub=a*,exact\n"
          "tok-sub   sub=b*\n"
          "\n"
          "tok-none\n", f);
    fclose(f);
    ck_assert_int_eq(chmod(path, mode), 0);
    return path;
}

START_TEST(t_auth_tokens)
{
    char *path = write_tokens(0600);
    char *srv = h_fmt("auth_tokens = %s\n", path);
    h_conf(srv, NULL, NULL);
    h_daemon_start();
    sb_client *c = h_connect();
    json_t *r = h_err(h_req(c, "{'op':'ping','rid':1}"), "unauthorized");
    ck_assert_int_eq(h_int(r, "rid"), 1);
    json_decref(r);
    json_decref(h_err(h_req(c, "{'op':'pub','stream':'abc','data':1}"), "unauthorized"));
    json_decref(h_err(h_req(c, "{'op':'stats'}"), "unauthorized"));
    json_decref(h_err(h_req(c, "{'op':'hello','name':'x'}"), "unauthorized"));
    json_decref(h_err(h_req(c, "{'op':'hello','token':'wrong'}"), "unauthorized"));
    /* The comparison is whole: neither a prefix nor an extension of a token
     * passes (auth_equal runs over the longer of the two). */
    json_decref(h_err(h_req(c, "{'op':'hello','token':'tok-al'}"), "unauthorized"));
    json_decref(h_err(h_req(c, "{'op':'hello','token':'tok-allx'}"), "unauthorized"));
    json_decref(h_err(h_req(c, "{'op':'hello','token':''}"), "unauthorized"));
    json_decref(h_err(h_req(c, "{'op':'ping'}"), "unauthorized"));
    ck_assert_int_eq(h_redis_int("EXISTS sb:abc"), 0);

    json_decref(h_ok(h_req(c, "{'op':'hello','token':'tok-pub'}")));
    json_decref(h_ok(h_req(c, "{'op':'ping'}")));
    json_decref(h_ok(h_req(c, "{'op':'stats'}")));
    json_decref(h_ok(h_req(c, "{'op':'pub','stream':'abc','data':1}")));
    json_decref(h_ok(h_req(c, "{'op':'pub','stream':'exact','data':1}")));
    json_decref(h_err(h_req(c, "{'op':'pub','stream':'exactly','data':1}"), "unauthorized"));
    json_decref(h_err(h_req(c, "{'op':'pub','stream':'xyz','data':1}"), "unauthorized"));
    json_decref(h_err(h_req(c, "{'op':'sub','stream':'abc','group':'g'}"), "unauthorized"));
    ck_assert_int_eq(xlen("sb:abc"), 1);
    ck_assert_int_eq(h_redis_int("EXISTS sb:xyz"), 0);

    sb_client *s = h_connect();
    json_decref(h_ok(h_req(s, "{'op':'hello','token':'tok-sub'}")));
    json_decref(h_ok(h_req(s, "{'op':'sub','stream':'bcd','group':'g'}")));
    json_decref(h_err(h_req(s, "{'op':'sub','stream':'abc','group':'g'}"), "unauthorized"));
    json_decref(h_err(h_req(s, "{'op':'pub','stream':'bcd','data':1}"), "unauthorized"));

    sb_client *n = h_connect();
    json_decref(h_ok(h_req(n, "{'op':'hello','token':'tok-none'}")));
    json_decref(h_ok(h_req(n, "{'op':'ping'}")));
    json_decref(h_err(h_req(n, "{'op':'pub','stream':'abc','data':1}"), "unauthorized"));
    json_decref(h_err(h_req(n, "{'op':'sub','stream':'bcd','group':'g2'}"), "unauthorized"));

    sb_client *a = h_connect();
    json_decref(h_ok(h_req(a, "{'op':'hello','token':'tok-all','name':'ops'}")));
    json_decref(h_ok(h_req(a, "{'op':'pub','stream':'anything','data':1}")));
    json_decref(h_ok(h_req(a, "{'op':'sub','stream':'anything','group':'g'}")));
    free(path);
    free(srv);
}
END_TEST

/* 1 once the daemon's log has needle (waits, bounded). */
static int log_has_soon(const char *needle)
{
    long long end = h_now_ms() + H_WAIT_MS;
    for (int i = 0; i < 500 && h_now_ms() < end; i++) {
        char *log = h_daemon_log();
        int has = log && strstr(log, needle) != NULL;
        free(log);
        if (has)
            return 1;
        h_sleep_ms(20);
    }
    return 0;
}

/* The daemon must refuse to start: exit 2, why in its log. */
static void assert_start_refused(const char *why)
{
    ck_assert_int_eq(h_daemon_try_start(), -1);
    ck_assert_msg(H.daemon.reaped && WIFEXITED(H.daemon.status) &&
                  WEXITSTATUS(H.daemon.status) == 2, "status 0x%x, want exit 2 (%s)",
                  H.daemon.status, why);
    H.daemon_expected_dead = 1;
    char *log = h_daemon_log();
    ck_assert_msg(log && strstr(log, why), "log lacks '%s': %s", why, log ? log : "");
    free(log);
}

/* A password file with mode, holding pw. */
static char *write_password(const char *pw, mode_t mode)
{
    char *path = h_fmt("%s/redis-password", H.dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%s\n", pw);
    fclose(f);
    ck_assert_int_eq(chmod(path, mode), 0);
    return path;
}

/* An integer reply to cmd in db of the harness's Redis. */
static long long redis_int_in_db(int db, const char *cmd)
{
    redisContext *rc = h_redis_open(H.redis_port, 2000);
    ck_assert_ptr_nonnull(rc);
    redisReply *r = redisCommand(rc, "SELECT %d", db);
    ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "SELECT %d failed", db);
    freeReplyObject(r);
    r = redisCommand(rc, cmd);
    ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER, "%s: no integer", cmd);
    long long v = r->integer;
    freeReplyObject(r);
    redisFree(rc);
    return v;
}

/* The Redis connections of user: how many, and how many of them in db. */
static int redis_clients_of(const char *user, int db, int *in_db)
{
    redisReply *r = h_redis_at(H.redis_port, "CLIENT LIST");
    ck_assert_msg(r && r->type == REDIS_REPLY_STRING, "CLIENT LIST failed");
    char *want_user = h_fmt(" user=%s ", user), *want_db = h_fmt(" db=%d ", db);
    int n = 0;
    *in_db = 0;
    for (char *line = strtok(r->str, "\n"); line; line = strtok(NULL, "\n"))
        if (strstr(line, want_user)) {
            n++;
            *in_db += strstr(line, want_db) != NULL;
        }
    free(want_user);
    free(want_db);
    freeReplyObject(r);
    return n;
}

/* A pub retried (Redis reconnecting) until ok, at most ms. */
static int pub_until_ok(sb_client *c, const char *stream, int ms)
{
    long long end = h_now_ms() + ms;
    for (int i = 0; i < 1000 && h_now_ms() < end; i++) {
        json_t *r = h_req(c, "{'op':'pub','stream':'%s','data':1}", stream);
        int ok = json_is_true(json_object_get(r, "ok"));
        json_decref(r);
        if (ok)
            return 1;
        h_sleep_ms(50);
    }
    return 0;
}

/* redis.url with an ACL user and a db, the password in redis.password_file:
 * every connection logs in as that user and selects the db; a rotated
 * password applies after SIGHUP to the next connections. */
START_TEST(t_redis_acl_user_password_file)
{
    redisReply *r = h_redis_at(H.redis_port, "ACL SETUSER sbuser on >first-pw ~* &* +@all");
    ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "ACL SETUSER failed");
    freeReplyObject(r);
    char *pwf = write_password("first-pw", 0600);
    snprintf(H.redis_url, sizeof H.redis_url, "redis://sbuser@127.0.0.1:%d/3", H.redis_port);
    char *lines = h_fmt("password_file = %s\n", pwf);
    h_conf_redis(lines);
    h_daemon_start();
    sb_client *c = h_connect();
    free(h_pub(c, "acl", "1"));
    ck_assert_int_eq(redis_int_in_db(3, "XLEN sb:acl"), 1);
    ck_assert_int_eq(redis_int_in_db(0, "EXISTS sb:acl"), 0);
    int in_db, n = redis_clients_of("sbuser", 3, &in_db);
    ck_assert_msg(n >= 1 && in_db == n, "%d connections of sbuser, %d of them in db 3", n, in_db);

    /* Rotation: Redis and the file get a new password, SIGHUP, then the
     * connections are cut: they come back with the new one. */
    r = h_redis_at(H.redis_port, "ACL SETUSER sbuser resetpass >second-pw");
    ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "ACL SETUSER resetpass failed");
    freeReplyObject(r);
    free(write_password("second-pw", 0600));
    ck_assert_int_eq(kill(H.daemon.pid, SIGHUP), 0);
    ck_assert_msg(log_has_soon("new Redis password"), "no reload of the password");
    r = h_redis_at(H.redis_port, "CLIENT KILL USER sbuser");
    ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER && r->integer >= 1, "CLIENT KILL failed");
    freeReplyObject(r);
    ck_assert_msg(pub_until_ok(c, "acl", 10000), "no pub ok after the password rotation");
    ck_assert_int_eq(redis_int_in_db(3, "XLEN sb:acl"), 2);
    n = redis_clients_of("sbuser", 3, &in_db);
    ck_assert_msg(n >= 1 && in_db == n, "after the rotation: %d connections of sbuser, %d in db 3",
                  n, in_db);

    /* A reload that also changes a restart-only setting (kept, and said
     * so) still takes the file's new password. */
    r = h_redis_at(H.redis_port, "ACL SETUSER sbuser resetpass >third-pw");
    ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "ACL SETUSER resetpass failed");
    freeReplyObject(r);
    free(write_password("third-pw", 0600));
    snprintf(H.conf_redis, sizeof H.conf_redis, "%sprefix = other:\n", lines);
    h_write_conf(H.conf_path);
    ck_assert_int_eq(kill(H.daemon.pid, SIGHUP), 0);
    ck_assert_msg(log_has_soon("change only on restart"), "no warning for the url change");
    ck_assert_msg(log_has_soon("configuration reloaded"), "no reload");
    r = h_redis_at(H.redis_port, "CLIENT KILL USER sbuser");
    ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER && r->integer >= 1, "CLIENT KILL failed");
    freeReplyObject(r);
    ck_assert_msg(pub_until_ok(c, "acl", 10000), "no pub ok after the second rotation");
    ck_assert_int_eq(redis_int_in_db(3, "XLEN sb:acl"), 3);
    ck_assert_int_eq(redis_int_in_db(3, "EXISTS other:acl"), 0);
    free(pwf);
    free(lines);
}
END_TEST

/* Refused at start, exit 2 and a clear message: a password file others can
 * read, or its group write, a password both in the url and the file, a
 * user without one. */
START_TEST(t_redis_password_refused)
{
    char *pwf = write_password("pw", 0644);
    const mode_t mode[4] = { 0644, 0620, 0600, 0600 };
    const char *why[4] = { "only its owner may read or write", "only its owner may read or write",
                           "give one of them", "but no password" };
    const char *user[4] = { "u", "u", "u:pw", "u" };
    char *lines = h_fmt("password_file = %s\n", pwf);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(chmod(pwf, mode[i]), 0);
        snprintf(H.redis_url, sizeof H.redis_url, "redis://%s@127.0.0.1:%d/0", user[i],
                 H.redis_port);
        snprintf(H.conf_redis, sizeof H.conf_redis, "%s", i < 3 ? lines : "");
        assert_start_refused(why[i]);
    }
    free(lines);
    free(pwf);
}
END_TEST

/* SIGHUP reloads the token file: a connection whose token is gone gets a
 * bye and is closed, the others keep going, a new token works; a reload of
 * a file others can read fails and keeps the tokens in force. */
START_TEST(t_auth_reload)
{
    char *path = write_tokens(0600);
    char *srv = h_fmt("auth_tokens = %s\n", path);
    h_conf(srv, NULL, NULL);
    h_daemon_start();
    sb_client *all = h_connect(), *pub = h_connect();
    json_decref(h_ok(h_req(all, "{'op':'hello','token':'tok-all'}")));
    json_decref(h_ok(h_req(pub, "{'op':'hello','token':'tok-pub'}")));

    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("tok-all pub=* sub=*\ntok-new pub=n*\n", f);
    fclose(f);
    ck_assert_int_eq(kill(H.daemon.pid, SIGHUP), 0);
    json_t *e = h_event(pub, H_WAIT_MS);
    ck_assert_msg(e != NULL, "no bye for the connection whose token was removed");
    ck_assert_str_eq(h_str(e, "op"), "bye");
    ck_assert_str_eq(h_str(e, "reason"), "revoked");
    json_decref(e);
    json_decref(h_ok(h_req(all, "{'op':'pub','stream':'still','data':1}")));
    sb_client *n = h_connect();
    json_decref(h_ok(h_req(n, "{'op':'hello','token':'tok-new'}")));
    json_decref(h_ok(h_req(n, "{'op':'pub','stream':'new','data':1}")));
    sb_client *old = h_connect();
    json_decref(h_err(h_req(old, "{'op':'hello','token':'tok-pub'}"), "unauthorized"));

    ck_assert_int_eq(chmod(path, 0644), 0);
    ck_assert_int_eq(kill(H.daemon.pid, SIGHUP), 0);
    ck_assert_msg(log_has_soon("reload failed"), "no failed reload in the log");
    json_decref(h_ok(h_req(all, "{'op':'ping'}")));
    json_decref(h_ok(h_req(n, "{'op':'pub','stream':'new','data':2}")));
    ck_assert_int_eq(xlen("sb:new"), 2);
    free(path);
    free(srv);
}
END_TEST

START_TEST(t_auth_file_readable_refused)
{
    char *path = write_tokens(0644);
    char *srv = h_fmt("auth_tokens = %s\n", path);
    snprintf(H.conf_server, sizeof H.conf_server, "%s", srv);
    assert_start_refused("token file must be a file that only its owner may read or write");
    free(path);
    free(srv);
}
END_TEST

/* ============================================================ main */

/* ============================================================ dead letters */
/* The dlq and replay ops, and streambus-cli dlq (protocol: dlq, replay). */

/* Publishes n messages {"n":i} to stream, receives them on sub (of s) and
 * nacks them dead; returns their ids, a JSON array in publish order. */
static json_t *dead_letters(sb_client *s, long long sub, sb_client *p, const char *stream,
                            int n, const char *reason)
{
    json_t *ids = json_array();
    for (int i = 0; i < n; i++) {
        char *data = h_fmt("{\"n\":%d}", i);
        char *id = h_pub(p, stream, data);
        json_array_append_new(ids, json_string(id));
        free(id);
        free(data);
    }
    json_t *got = collect(s, n, H_WAIT_MS);
    json_decref(got);
    json_t *req = json_pack("{s:s,s:I,s:O,s:b,s:s}", "op", "nack", "sub", (json_int_t)sub,
                            "ids", ids, "dead", 1, "reason", reason);
    json_decref(h_ok(h_req_json(s, req)));
    return ids;
}

/* The ids of a Redis stream, oldest first, as a JSON array. */
static json_t *stream_ids(const char *key)
{
    redisReply *x = h_redis("XRANGE %s - +", key);
    ck_assert_int_eq(x->type, REDIS_REPLY_ARRAY);
    json_t *ids = json_array();
    for (size_t i = 0; i < x->elements; i++)
        json_array_append_new(ids, json_string(x->element[i]->element[0]->str));
    freeReplyObject(x);
    return ids;
}

/* A dlq request; asserts ok.  count 0 and from NULL are left out. */
static json_t *dlq_req(sb_client *c, const char *stream, int count, const char *from)
{
    json_t *req = json_pack("{s:s,s:s}", "op", "dlq", "stream", stream);
    if (count > 0)
        json_object_set_new(req, "count", json_integer(count));
    if (from)
        json_object_set_new(req, "from", json_string(from));
    return h_ok(h_req_json(c, req));
}

/* The ids of the entries of a dlq reply, appended to ids. */
static void entry_ids(const json_t *reply, json_t *ids)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(reply, "entries"), i, e)
        json_array_append_new(ids, json_string(h_str(e, "id")));
}

START_TEST(t_range)
{
    /* range: the stream's own entries, for a live view without a group */
    sb_client *c = h_connect();
    char *ids[5];
    for (int i = 0; i < 5; i++)
        ids[i] = h_pub(c, "rg", h_fmt("{\"n\": %d}", i));
    json_t *r = h_ok(h_req(c, "{'op':'range','stream':'rg','last':2}"));
    json_t *e = json_object_get(r, "entries");
    ck_assert_int_eq(json_array_size(e), 2);
    ck_assert_str_eq(h_str(json_array_get(e, 0), "id"), ids[3]);     /* oldest first */
    ck_assert_str_eq(h_str(json_array_get(e, 1), "id"), ids[4]);
    ck_assert_str_eq(h_str(r, "next"), ids[4]);
    assert_json_eq(json_object_get(json_array_get(e, 1), "data"), "{\"n\":4}");
    json_decref(r);
    r = h_ok(h_req(c, "{'op':'range','stream':'rg','from':'%s','count':2}", ids[1]));
    e = json_object_get(r, "entries");
    ck_assert_int_eq(json_array_size(e), 2);
    ck_assert_str_eq(h_str(json_array_get(e, 0), "id"), ids[2]);
    ck_assert_str_eq(h_str(r, "next"), ids[3]);
    json_decref(r);
    r = h_ok(h_req(c, "{'op':'range','stream':'rg','from':'%s'}", ids[4]));
    ck_assert_int_eq(json_array_size(json_object_get(r, "entries")), 0);
    ck_assert_ptr_null(json_object_get(r, "next"));
    json_decref(r);
    json_decref(h_bad(h_req(c, "{'op':'range','stream':'rg','last':2,'from':'%s'}", ids[0]), "last"));
    json_decref(h_bad(h_req(c, "{'op':'range','stream':'rg','last':0}"), "last"));
    /* a range is no consumer: no group appears */
    ck_assert_int_eq(h_redis_int("XLEN sb:rg"), 5);
    redisReply *x = h_redis("XINFO GROUPS sb:rg");
    ck_assert_int_eq(x->elements, 0);
    freeReplyObject(x);
    /* streambus-cli tail prints the last N, then new ones (SIGINT ends it) */
    char *log = h_fmt("%s/tail.out", H.dir);
    char *const argv[] = { "./src/streambus-cli", "-s", H.addr, "tail", "rg", "--last", "1", NULL };
    h_proc t = { 0 };
    h_spawn(argv, log, &t);
    h_sleep_ms(700);
    char *id5 = h_pub(c, "rg", "{\"n\": 5}");
    h_sleep_ms(700);
    h_stop(&t, SIGINT, 3000);
    char *out = h_read_file(log);
    ck_assert_ptr_nonnull(out);
    ck_assert_msg(strstr(out, ids[4]) && strstr(out, id5) && !strstr(out, ids[3]),
                  "tail printed: %s", out);
    free(out);
    free(log);
    free(id5);
    for (int i = 0; i < 5; i++)
        free(ids[i]);
}
END_TEST

START_TEST(t_dlq_list_fields)
{
    sb_client *s = h_connect(), *p = h_connect(), *q = h_connect();
    json_decref(h_ok(h_req(p, "{'op':'hello','name':'pubber'}")));
    long long sub = h_sub(s, "dq", "g", "c", 0, NULL);
    long long t0 = h_now_ms();
    /* Written by hand: the listing must keep these bytes. */
    const char pub[] = "{\"op\":\"pub\",\"stream\":\"dq\",\"type\":\"T\","
                       "\"data\":{\"px\": 1.50, \"n\": [1e2]}}";
    h_send_raw(p, pub, strlen(pub));
    json_t *r = h_ok(h_read(p, H_REPLY_MS));
    char *id1 = strdup(h_str(r, "id"));
    json_decref(r);
    char *id2 = h_pub(p, "dq", "\"two\"");
    json_decref(collect(s, 2, H_WAIT_MS));
    /* id1 fails once (recorded), comes back, then dies; id2 dies at once. */
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'id':'%s','delay_ms':0,'reason':'busy'}",
                           sub, id1)));
    json_t *m = h_msg(s, 2000);
    ck_assert_str_eq(mid(m), id1);
    json_decref(m);
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'id':'%s','dead':true,'reason':'poison'}",
                           sub, id1)));
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'id':'%s','dead':true}", sub, id2)));
    long long t1 = h_now_ms();
    json_t *dlq = stream_ids("sb:dq:dlq");
    ck_assert_int_eq(json_array_size(dlq), 2);

    /* Read as text first: data as its publisher wrote it. */
    h_send(q, "{'op':'dlq','stream':'dq'}");
    size_t len;
    const char *line = sb_read_line(q, &len, H_REPLY_MS);
    ck_assert_msg(line != NULL, "no dlq reply: %s", sb_strerror(q));
    char *text = strndup(line, len);
    ck_assert_msg(strstr(text, "\"data\":{\"px\": 1.50, \"n\": [1e2]}"),
                  "data not as written: %s", text);
    r = h_ok(json_loads(text, 0, NULL));
    free(text);
    json_t *entries = json_object_get(r, "entries");
    ck_assert_int_eq(json_array_size(entries), 2);
    ck_assert_msg(json_object_get(r, "next") == NULL, "next on a page that is not full");

    json_t *e = json_array_get(entries, 0);
    ck_assert_str_eq(h_str(e, "id"), json_string_value(json_array_get(dlq, 0)));
    assert_json_eq(json_object_get(e, "data"), "{\"px\":1.5,\"n\":[100.0]}");
    ck_assert_str_eq(h_str(e, "type"), "T");
    ck_assert_str_eq(h_str(e, "source"), "pubber");
    ck_assert_str_eq(h_str(e, "origin_id"), id1);
    ck_assert_str_eq(h_str(e, "group"), "g");
    ck_assert_int_eq(h_int(e, "attempts"), 2);
    ck_assert_str_eq(h_str(e, "reason"), "poison");
    long long dead_at = h_int(e, "dead_at");
    ck_assert_msg(dead_at >= t0 && dead_at <= t1, "dead_at %lld not in [%lld, %lld]",
                  dead_at, t0, t1);
    /* failures: one item, MS:CAUSE */
    const char *f = h_str(e, "failures");
    char *colon = strchr(f, ':');
    ck_assert_msg(colon && strcmp(colon, ":nack busy") == 0, "failures '%s'", f);
    ck_assert_msg(atoll(f) >= t0 && atoll(f) <= dead_at, "failure time in '%s'", f);

    e = json_array_get(entries, 1);
    ck_assert_str_eq(h_str(e, "id"), json_string_value(json_array_get(dlq, 1)));
    assert_json_eq(json_object_get(e, "data"), "\"two\"");
    ck_assert_msg(json_object_get(e, "type") == NULL, "type on a message published without");
    ck_assert_str_eq(h_str(e, "origin_id"), id2);
    ck_assert_int_eq(h_int(e, "attempts"), 1);
    ck_assert_str_eq(h_str(e, "reason"), "nack");
    ck_assert_str_eq(h_str(e, "failures"), "");
    ck_assert_int_ge(h_int(e, "dead_at"), dead_at);
    json_decref(r);
    /* Listing takes nothing away. */
    ck_assert_int_eq(xlen("sb:dq:dlq"), 2);
    json_decref(dlq);
    free(id1);
    free(id2);
}
END_TEST

START_TEST(t_dlq_paging)
{
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "pg", "g", "c", 0, NULL);
    json_decref(dead_letters(s, sub, p, "pg", 5, "r"));
    json_t *all = stream_ids("sb:pg:dlq");
    ck_assert_int_eq(json_array_size(all), 5);

    /* Pages of 2: 2, 2, 1; a full page names its last id as next. */
    json_t *seen = json_array();
    char *from = NULL;
    int pages = 0;
    do {
        json_t *r = dlq_req(p, "pg", 2, from);
        size_t n = json_array_size(json_object_get(r, "entries"));
        entry_ids(r, seen);
        const char *next = json_string_value(json_object_get(r, "next"));
        ck_assert_int_eq(n, ++pages < 3 ? 2 : 1);
        if (n == 2)
            ck_assert_str_eq(next ? next : "(none)",
                             json_string_value(json_array_get(seen, json_array_size(seen) - 1)));
        else
            ck_assert_msg(next == NULL, "next on the last page");
        free(from);
        from = next ? strdup(next) : NULL;
        json_decref(r);
    } while (from && pages < 10);
    ck_assert_int_eq(pages, 3);
    ck_assert_msg(json_equal(seen, all), "pages do not add up to the dead-letter stream");

    /* A full page that ends with the last entry has next; after it, nothing. */
    json_t *r = dlq_req(p, "pg", 5, NULL);
    const char *last = json_string_value(json_array_get(all, 4));
    ck_assert_str_eq(h_str(r, "next"), last);
    json_decref(r);
    r = dlq_req(p, "pg", 5, last);
    ck_assert_int_eq(json_array_size(json_object_get(r, "entries")), 0);
    ck_assert_msg(json_object_get(r, "next") == NULL, "next on an empty page");
    json_decref(r);
    /* from is exclusive; the default count takes them all. */
    r = dlq_req(p, "pg", 0, json_string_value(json_array_get(all, 1)));
    json_t *after = json_array();
    entry_ids(r, after);
    ck_assert_int_eq(json_array_size(after), 3);
    ck_assert_str_eq(json_string_value(json_array_get(after, 0)),
                     json_string_value(json_array_get(all, 2)));
    json_decref(r);
    json_decref(after);
    json_decref(seen);
    json_decref(all);
}
END_TEST

START_TEST(t_dlq_replay_one)
{
    sb_client *s = h_connect(), *s2 = h_connect(), *p = h_connect();
    json_decref(h_ok(h_req(p, "{'op':'hello','name':'pubber'}")));
    long long sub = h_sub(s, "rp", "g", "c", 0, NULL);
    long long sub2 = h_sub(s2, "rp", "g2", "c2", 0, NULL);
    json_t *r = h_ok(h_req(p, "{'op':'pub','stream':'rp','type':'T','data':{'k':1}}"));
    char *id = strdup(h_str(r, "id"));
    json_decref(r);
    json_decref(h_msg(s, H_WAIT_MS));
    json_decref(h_msg(s2, H_WAIT_MS));
    ck_assert_int_eq(h_ack(s2, sub2, id), 1);
    json_decref(h_ok(h_req(s, "{'op':'nack','sub':%lld,'id':'%s','dead':true}", sub, id)));
    json_t *dlq = stream_ids("sb:rp:dlq");
    const char *dead = json_string_value(json_array_get(dlq, 0));
    long long t0 = h_now_ms();

    r = h_ok(h_req(p, "{'op':'replay','stream':'rp','ids':['%s'],'rid':9}", dead));
    ck_assert_int_eq(h_int(r, "rid"), 9);
    ck_assert_int_eq(h_int(r, "replayed"), 1);
    json_t *ids = json_object_get(r, "ids");
    ck_assert_int_eq(json_array_size(ids), 1);
    char *fresh = strdup(json_string_value(json_array_get(ids, 0)));
    json_decref(r);
    ck_assert_msg(h_id_cmp(fresh, id) > 0, "replayed as %s, not after %s", fresh, id);

    /* A new entry: every group gets it, as a first attempt. */
    sb_client *subs[] = { s, s2 };
    for (int i = 0; i < 2; i++) {
        json_t *m = h_msg(subs[i], H_WAIT_MS);
        ck_assert_str_eq(mid(m), fresh);
        ck_assert_int_eq(h_int(m, "attempt"), 1);
        assert_json_eq(json_object_get(m, "data"), "{\"k\":1}");
        ck_assert_str_eq(h_str(m, "type"), "T");
        ck_assert_str_eq(h_str(m, "source"), "pubber");
        json_decref(m);
    }
    /* In Redis: the original fields and a record of the replay. */
    redisReply *x = h_redis("XRANGE sb:rp %s %s", fresh, fresh);
    ck_assert_int_eq(x->elements, 1);
    const char *v = h_entry_field(x->element[0], "replay_of");
    ck_assert_str_eq(v ? v : "(none)", id);
    v = h_entry_field(x->element[0], "replayed_at");
    ck_assert_msg(v && atoll(v) >= t0 && atoll(v) <= h_now_ms(), "replayed_at %s", v ? v : "(none)");
    v = h_entry_field(x->element[0], "data");
    ck_assert_str_eq(v ? v : "(none)", "{\"k\":1}");
    const char *gone[] = { "origin_id", "group", "attempts", "reason", "dead_at", "failures" };
    for (size_t i = 0; i < sizeof gone / sizeof *gone; i++)
        ck_assert_msg(h_entry_field(x->element[0], gone[i]) == NULL,
                      "replayed entry kept the dead-letter field %s", gone[i]);
    freeReplyObject(x);

    /* Gone from the dead-letter stream: replaying it again does nothing. */
    ck_assert_int_eq(xlen("sb:rp:dlq"), 0);
    r = h_ok(h_req(p, "{'op':'replay','stream':'rp','id':'%s'}", dead));
    ck_assert_int_eq(h_int(r, "replayed"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(r, "ids")), 0);
    json_decref(r);
    h_no_msg(s, 300);
    h_no_msg(s2, 10);
    json_decref(dlq);
    free(fresh);
    free(id);
}
END_TEST

START_TEST(t_dlq_replay_all)
{
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "ra", "g", "c", 0, NULL);
    json_t *origins = dead_letters(s, sub, p, "ra", 5, "r");
    ck_assert_int_eq(xlen("sb:ra:dlq"), 5);

    json_t *r = h_ok(h_req(p, "{'op':'replay','stream':'ra','all':true}"));
    ck_assert_int_eq(h_int(r, "replayed"), 5);
    json_t *ids = json_object_get(r, "ids");
    ck_assert_int_eq(json_array_size(ids), 5);
    ck_assert_int_eq(xlen("sb:ra:dlq"), 0);
    /* In the order of the dead-letter stream, each recording its origin. */
    for (size_t i = 0; i < 5; i++) {
        const char *fresh = json_string_value(json_array_get(ids, i));
        redisReply *x = h_redis("XRANGE sb:ra %s %s", fresh, fresh);
        ck_assert_int_eq(x->elements, 1);
        const char *v = h_entry_field(x->element[0], "replay_of");
        ck_assert_str_eq(v ? v : "(none)", json_string_value(json_array_get(origins, i)));
        freeReplyObject(x);
    }
    json_t *got = collect(s, 5, H_WAIT_MS);
    size_t i;
    json_t *m;
    json_array_foreach(got, i, m) {
        ck_assert_msg(ids_contain(ids, mid(m)), "delivered %s, not a replayed id", mid(m));
        ck_assert_int_eq(h_int(m, "attempt"), 1);
    }
    json_decref(got);
    json_decref(r);
    r = h_ok(h_req(p, "{'op':'replay','stream':'ra','all':true}"));
    ck_assert_int_eq(h_int(r, "replayed"), 0);
    json_decref(r);
    json_decref(origins);
}
END_TEST

START_TEST(t_dlq_bad_requests)
{
    sb_client *c = h_connect();
    json_decref(h_bad(h_req(c, "{'op':'dlq'}"), "stream"));
    json_decref(h_bad(h_req(c, "{'op':'dlq','stream':'no spaces'}"), "stream"));
    json_decref(h_bad(h_req(c, "{'op':'dlq','stream':'s','count':0}"), "count"));
    json_decref(h_bad(h_req(c, "{'op':'dlq','stream':'s','count':1001}"), "count"));
    json_decref(h_bad(h_req(c, "{'op':'dlq','stream':'s','count':'5'}"), "count"));
    json_decref(h_bad(h_req(c, "{'op':'dlq','stream':'s','from':'yesterday'}"), "from"));
    json_decref(h_bad(h_req(c, "{'op':'replay'}"), "stream"));
    json_decref(h_bad(h_req(c, "{'op':'replay','stream':'s'}"), "ids"));
    json_decref(h_bad(h_req(c, "{'op':'replay','stream':'s','all':false}"), "ids"));
    json_decref(h_bad(h_req(c, "{'op':'replay','stream':'s','ids':['1-0'],'all':true}"), "ids"));
    json_decref(h_bad(h_req(c, "{'op':'replay','stream':'s','id':'1-0','all':true}"), "ids"));
    json_decref(h_bad(h_req(c, "{'op':'replay','stream':'s','ids':[]}"), "ids"));
    json_decref(h_bad(h_req(c, "{'op':'replay','stream':'s','ids':['1']}"), "ids"));
    json_decref(h_bad(h_req(c, "{'op':'replay','stream':'s','all':1}"), "all"));
    /* The bounds themselves are fine; a stream without dead letters has
     * none to list or replay, and gets no keys for asking. */
    json_t *r = dlq_req(c, "s", 1000, NULL);
    ck_assert_int_eq(json_array_size(json_object_get(r, "entries")), 0);
    ck_assert_msg(json_object_get(r, "next") == NULL, "next on an empty page");
    json_decref(r);
    json_decref(dlq_req(c, "s", 1, "0-0"));
    r = h_ok(h_req(c, "{'op':'replay','stream':'s','all':true}"));
    ck_assert_int_eq(h_int(r, "replayed"), 0);
    json_decref(r);
    ck_assert_int_eq(h_redis_int("EXISTS sb:s sb:s:dlq"), 0);
}
END_TEST

START_TEST(t_dlq_auth)
{
    char *path = write_tokens(0600);
    char *srv = h_fmt("auth_tokens = %s\n", path);
    h_conf(srv, NULL, NULL);
    h_daemon_start();
    /* dlq needs the right to subscribe, replay the right to publish. */
    sb_client *sub = h_connect(), *pub = h_connect();
    json_decref(h_err(h_req(sub, "{'op':'dlq','stream':'b1'}"), "unauthorized"));
    json_decref(h_ok(h_req(sub, "{'op':'hello','token':'tok-sub'}")));
    json_decref(h_ok(h_req(pub, "{'op':'hello','token':'tok-pub'}")));
    json_decref(dlq_req(sub, "b1", 0, NULL));
    json_decref(h_err(h_req(sub, "{'op':'dlq','stream':'a1'}"), "unauthorized"));
    json_decref(h_err(h_req(sub, "{'op':'replay','stream':'b1','all':true}"), "unauthorized"));
    json_decref(h_ok(h_req(pub, "{'op':'replay','stream':'a1','all':true}")));
    json_decref(h_err(h_req(pub, "{'op':'dlq','stream':'a1'}"), "unauthorized"));
    json_decref(h_err(h_req(pub, "{'op':'replay','stream':'b1','ids':['1-0']}"), "unauthorized"));
    free(path);
    free(srv);
}
END_TEST

/* The directory of the daemon under test, where streambus-cli is too
 * (src/ when the daemon runs through a wrapper such as
 * tests/valgrind-daemon.sh). */
static char *bin_dir(void)
{
    char *dir = strdup(h_daemon_path());
    char *slash = strrchr(dir, '/');
    ck_assert_ptr_nonnull(slash);
    *slash = '\0';
    char *cli = h_fmt("%s/streambus-cli", dir);
    if (access(cli, X_OK) != 0) {
        free(dir);
        dir = strdup("src");
    }
    free(cli);
    return dir;
}

/* streambus-cli -s ADDR ARGS... (NULL-terminated): exit status, output
 * (stdout and stderr) in *out. */
static int run_cli(char **out, ...)
{
    char *dir = bin_dir();
    char *cli = h_fmt("%s/streambus-cli", dir);
    ck_assert_msg(access(cli, X_OK) == 0, "%s not built (make src/streambus-cli)", cli);
    char *argv[16] = { cli, "-s", H.addr };
    int argc = 3;
    va_list ap;
    va_start(ap, out);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 15;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    int rc = h_run(argv, out, 10000);
    free(cli);
    free(dir);
    return rc;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

START_TEST(t_dlq_cli)
{
    sb_client *s = h_connect(), *p = h_connect();
    long long sub = h_sub(s, "cq", "g", "c", 0, NULL);
    json_t *origins = dead_letters(s, sub, p, "cq", 2, "poison");
    json_t *dlq = stream_ids("sb:cq:dlq");
    char *out = NULL;

    /* ls: a table with a row per dead letter, dead_at as UTC time. */
    int rc = run_cli(&out, "dlq", "ls", "cq", NULL);
    ck_assert_msg(rc == 0, "dlq ls: exit %d: %s", rc, out ? out : "");
    ck_assert_msg(out && strstr(out, "ORIGIN_ID") && strstr(out, "DEAD_AT") &&
                  strstr(out, "poison") && strstr(out, "{\"n\":1}"), "dlq ls printed:\n%s",
                  out ? out : "");
    ck_assert_int_eq(count_lines(out), 3);
    for (size_t i = 0; i < 2; i++) {
        const char *id = json_string_value(json_array_get(dlq, i));
        ck_assert_msg(strstr(out, id) && strstr(out, json_string_value(json_array_get(origins, i))),
                      "dlq ls lacks %s or its origin:\n%s", id, out);
    }
    redisReply *x = h_redis("XRANGE sb:cq:dlq - + COUNT 1");
    long long dead_at = atoll(h_entry_field(x->element[0], "dead_at"));
    freeReplyObject(x);
    time_t sec = (time_t)(dead_at / 1000);
    struct tm tm;
    char iso[64];
    strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%S", gmtime_r(&sec, &tm));
    ck_assert_msg(strstr(out, iso), "dlq ls lacks dead_at as %s:\n%s", iso, out);
    free(out);

    /* --json: a line per entry, as the server sent it; --count limits. */
    rc = run_cli(&out, "dlq", "ls", "cq", "--json", NULL);
    ck_assert_msg(rc == 0 && count_lines(out) == 2, "dlq ls --json: exit %d:\n%s", rc,
                  out ? out : "");
    json_t *e = json_loadb(out, strcspn(out, "\n"), 0, NULL);
    ck_assert_msg(e != NULL, "not JSON: %s", out);
    ck_assert_str_eq(h_str(e, "id"), json_string_value(json_array_get(dlq, 0)));
    assert_json_eq(json_object_get(e, "data"), "{\"n\":0}");
    ck_assert_int_eq(h_int(e, "attempts"), 1);
    json_decref(e);
    free(out);
    rc = run_cli(&out, "dlq", "ls", "cq", "--count", "1", NULL);
    ck_assert_msg(rc == 0 && count_lines(out) == 2, "dlq ls --count 1: exit %d:\n%s", rc,
                  out ? out : "");
    free(out);

    /* replay --all: the new ids and how many; every one delivered again. */
    rc = run_cli(&out, "dlq", "replay", "cq", "--all", NULL);
    ck_assert_msg(rc == 0 && out && strstr(out, "replayed 2 dead letters"),
                  "dlq replay --all: exit %d:\n%s", rc, out ? out : "");
    ck_assert_int_eq(xlen("sb:cq:dlq"), 0);
    json_t *got = collect(s, 2, H_WAIT_MS);
    size_t i;
    json_t *m;
    json_array_foreach(got, i, m) {
        ck_assert_msg(strstr(out, mid(m)), "new id %s not printed:\n%s", mid(m), out);
        ck_assert_int_eq(h_int(m, "attempt"), 1);
    }
    json_decref(got);
    free(out);
    rc = run_cli(&out, "dlq", "ls", "cq", NULL);
    ck_assert_msg(rc == 0 && count_lines(out) == 1, "dlq ls of nothing: exit %d:\n%s", rc,
                  out ? out : "");
    free(out);
    rc = run_cli(&out, "dlq", "replay", "cq", "1-0", NULL);
    ck_assert_msg(rc == 0 && out && strstr(out, "replayed 0 of 1"),
                  "dlq replay of a missing id: exit %d:\n%s", rc, out ? out : "");
    free(out);

    /* Usage errors exit 2, failures 1. */
    const char *usage[][6] = {
        { "dlq", NULL }, { "dlq", "rm", "cq", NULL }, { "dlq", "ls", NULL },
        { "dlq", "ls", "cq", "--count", "0", NULL }, { "dlq", "replay", "cq", NULL },
        { "dlq", "replay", "cq", "1-0", "--all", NULL }, { "dlq", "replay", "cq", "oops", NULL },
    };
    for (size_t k = 0; k < sizeof usage / sizeof *usage; k++) {
        rc = run_cli(&out, usage[k][0], usage[k][1], usage[k][2], usage[k][3], usage[k][4], NULL);
        ck_assert_msg(rc == 2, "usage case %zu: exit %d:\n%s", k, rc, out ? out : "");
        free(out);
    }
    rc = run_cli(&out, "dlq", "ls", "no spaces", NULL);
    ck_assert_msg(rc == 1 && out && strstr(out, "bad_request"), "refused dlq ls: exit %d:\n%s",
                  rc, out ? out : "");
    free(out);
    json_decref(dlq);
    json_decref(origins);
}
END_TEST

START_TEST(t_cli_bench)
{
    /* bench runs ../perf/streambus-bench with --addr from -s. */
    char *dir = bin_dir();
    char *bench = h_fmt("%s/../perf/streambus-bench", dir);
    free(dir);
    if (access(bench, X_OK) != 0) {
        fprintf(stderr, "t_cli_bench: %s not built, skipped\n", bench);
        free(bench);
        return;
    }
    h_daemon_start();
    char *out = NULL;
    int rc = run_cli(&out, "bench", "--duration", "0.2", "--warmup", "0", "--publishers", "1",
                     "--consumers", "1", "--json", NULL);
    ck_assert_msg(rc == 0, "bench: exit %d:\n%s", rc, out ? out : "");
    char *want = h_fmt("\"addr\": \"%s\"", H.addr);
    ck_assert_msg(out && strstr(out, want), "bench did not use %s:\n%s", H.addr, out ? out : "");
    free(want);
    free(out);
    free(bench);
}
END_TEST

static TCase *tcase(Suite *s, const char *name, int timeout)
{
    return h_tcase(s, name, timeout, h_setup, h_teardown);
}

int main(void)
{
    if (h_main_init("check_integration", NULL) != 0)
        return 1;
    Suite *s = suite_create("integration");
    TCase *tc;

    tc = tcase(s, "basics", 20);
    tcase_add_test(tc, t_hello);
    tcase_add_test(tc, t_hello_limits_from_config);
    tcase_add_test(tc, t_ping_and_rid);
    tcase_add_test(tc, t_unknown_op);

    tc = tcase(s, "framing", 20);
    tcase_add_test(tc, t_pipeline_mixed);
    tcase_add_test(tc, t_pipeline_many_in_order);
    tcase_add_test(tc, t_crlf_and_split_writes);
    tcase_add_test(tc, t_line_too_long);

    tc = tcase(s, "errors", 30);
    tcase_add_test(tc, t_bad_json);
    tcase_add_test(tc, t_bad_request_fields);
    tcase_add_test(tc, t_too_large);
    tcase_add_test(tc, t_no_such_sub);
    tcase_add_test(tc, t_consumer_in_use);
    tcase_add_test(tc, t_unavailable);
    tcase_add_test(tc, t_indeterminate);
    tcase_add_test(tc, t_replicas_one_wait_in_flight);
    tcase_add_test(tc, t_overloaded);
    tcase_add_test(tc, t_max_batch);

    tc = tcase(s, "pub", 20);
    tcase_add_test(tc, t_pub_single_stored);
    tcase_add_test(tc, t_pub_batch);
    tcase_add_test(tc, t_pub_msgid_dedup);
    tcase_add_test(tc, t_pub_msgid_window);
    tcase_add_test(tc, t_prefix_config);
    tcase_add_test(tc, t_payload_roundtrip);
    tcase_add_test(tc, t_abrupt_clients);
    tcase_add_test(tc, t_type_and_source);

    tc = tcase(s, "sub", 20);
    tcase_add_test(tc, t_sub_delivery_fields);
    tcase_add_test(tc, t_sub_from);
    tcase_add_test(tc, t_prefetch);
    tcase_add_test(tc, t_two_groups_each_get_all);
    tcase_add_test(tc, t_two_consumers_split);
    tcase_add_test(tc, t_many_subs_one_connection);
    tcase_add_test(tc, t_default_consumer_name);
    tcase_add_test(tc, t_many_subscribers_served_promptly);
    tcase_add_test(tc, t_raw_xadd_fields);
    tcase_add_test(tc, t_client_bye);
    tcase_add_test(tc, t_sub_then_unsub_or_bye_at_once);
    tcase_add_test(tc, t_trim_keeps_unacked);
    tcase_add_test(tc, t_retention);
    tcase_add_test(tc, t_idle_timeout);

    tc = tcase(s, "ack", 30);
    tcase_add_test(tc, t_ack_counts);
    tcase_add_test(tc, t_nack_redeliver);
    tcase_add_test(tc, t_nack_delay_beats_ack_deadline);
    tcase_add_test(tc, t_nack_default_backoff);
    tcase_add_test(tc, t_nack_dead);
    tcase_add_test(tc, t_ack_deadline_then_dead_letter);
    tcase_add_test(tc, t_touch_postpones_deadline);

    tc = tcase(s, "release", 30);
    tcase_add_test(tc, t_unsub_releases);
    tcase_add_test(tc, t_disconnect_releases);
    tcase_add_test(tc, t_reconnect_pending_first);
    tcase_add_test(tc, t_daemon_death_releases);
    tcase_add_test(tc, t_release_across_instances);
    tcase_add_test(tc, t_death_other_instance);

    tc = tcase(s, "stats", 20);
    tcase_add_test(tc, t_stats);

    tc = tcase(s, "shutdown", 30);
    tcase_add_test(tc, t_sigterm_bye);
    tcase_add_test(tc, t_sigint_bye);
    tcase_add_test(tc, t_sighup_keeps_running);

    tc = tcase(s, "http", 30);
    tcase_add_test(tc, t_metrics);
    tcase_add_test(tc, t_health_and_404);
    tcase_add_test(tc, t_metrics_off);

    tc = tcase(s, "scale", 60);
    tcase_add_test(tc, t_redis_connections_constant);

    tc = tcase(s, "cli", 30);
    tcase_add_test(tc, t_cli_test_config);
    tcase_add_test(tc, t_unix_socket);
    tcase_add_test(tc, t_cli_bench);

    tc = tcase(s, "auth", 20);
    tcase_add_test(tc, t_auth_tokens);
    tcase_add_test(tc, t_auth_file_readable_refused);
    tcase_add_test(tc, t_auth_reload);
    tcase_add_test(tc, t_redis_acl_user_password_file);
    tcase_add_test(tc, t_redis_password_refused);

    tc = tcase(s, "dlq", 30);
    tcase_add_test(tc, t_dlq_list_fields);
    tcase_add_test(tc, t_dlq_paging);
    tcase_add_test(tc, t_dlq_replay_one);
    tcase_add_test(tc, t_dlq_replay_all);
    tcase_add_test(tc, t_dlq_bad_requests);
    tcase_add_test(tc, t_dlq_cli);
    tcase_add_test(tc, t_range);
    tcase_add_test(tc, t_dlq_auth);

    return h_run_suite(s);
}
