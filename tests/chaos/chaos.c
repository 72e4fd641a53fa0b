/*
 * chaos.c: fault injection against the real streambusd and redis-server
 * ("make chaos", "make chaos-short").
 *
 * Eight scenarios, each a Check test case run in its own forked child with
 * its own streambusd(s) on free loopback ports (tests/harness.c).  The
 * first five have their own redis-server (AOF, appendfsync always, so that
 * a Redis killed with -9 and restarted keeps every write it answered):
 *
 *   consumer_kill  consumers that hold unacknowledged deliveries stop
 *                  acking and are closed abruptly (half of them with a TCP
 *                  reset), then replaced (same name or a new one), while
 *                  publishers run;
 *   daemon_kill9   streambusd is killed with SIGKILL and restarted on the
 *                  same port; consumers come back under the same names;
 *   redis_restart  redis-server is killed with SIGKILL and restarted on the
 *                  same port and AOF directory; clients keep their
 *                  connections;
 *   two_daemons    two daemons share the Redis, each group's consumers
 *                  spread over both; one is killed with SIGKILL and its
 *                  clients move to the survivor under new names;
 *   sigterm        streambusd is stopped with SIGTERM mid-traffic: it must
 *                  exit 0 and send {"op":"bye","reason":"shutdown"} to every
 *                  client, then it is restarted.
 *
 * The sixth has a master, its replica and three sentinels instead
 * (tests/redis_sentinel.c: no persistence, down-after-milliseconds 2000);
 * the daemon names only the sentinels and the master name:
 *
 *   sentinel_failover  the master is killed with SIGKILL; the sentinels
 *                  promote the replica; the killed node is restarted empty
 *                  on its port 2 s after they agree, and the sentinels make
 *                  it a replica of the new master.  The stream has
 *                  durability = replicas:1, as cluster_failover below.
 *
 * The last two have a Redis Cluster of three masters with a replica each
 * instead (tests/redis_cluster.c: AOF, appendfsync always,
 * cluster-node-timeout 2000); the daemon names the six nodes in
 * redis.cluster and the stream's keys are hash-tagged (sb:{S}, sb:{S}:dlq,
 * sb:{S}:dedup, ...):
 *
 *   cluster_failover  the master of the stream's slot is killed with
 *                  SIGKILL; the cluster promotes its replica; the killed
 *                  node is restarted on its port and directory 2 s after the
 *                  promotion and comes back as a replica of the new master.
 *                  The stream has durability = replicas:1: Redis replication
 *                  is asynchronous, and a write the master answered but had
 *                  not sent to its replica when it died is not on the
 *                  promoted replica; WAIT (replicas:1) answers ok only once
 *                  the replica has it.  With durability = redis such a loss
 *                  is the documented failover window, not a bug.  From the
 *                  promotion until the old master is an online replica again,
 *                  replicas:1 pubs are answered indeterminate and retried.
 *   cluster_reshard  the stream's slot is moved under traffic to another
 *                  master, by hand as in check_cluster's reshard (IMPORTING,
 *                  MIGRATING, MIGRATE of the other keys in batches, the stream
 *                  key, the rest, SETSLOT NODE) in about 1.5 s: the daemon
 *                  meets ASK and TRYAGAIN (Redis answers TRYAGAIN to every
 *                  pub with a new msgid from MIGRATING to SETSLOT NODE: its
 *                  dedup key is missing) and maybe MOVED.
 *
 * In both, the accounting reads the slot's master once the cluster is ok
 * again.  The faults of the last three repeat every 15 s of traffic (at
 * least once); the next failover kills the new master.  The time from a fault (the kill; for
 * a reshard, MIGRATING) to the first pub, sent after it, answered ok is
 * reported ("pubs ok again").
 *
 * All clients live in one single-threaded poll() loop over raw sockets.
 * Every event is numbered: data {"n":N}, msgid "m<N>".  Publishers keep a
 * bounded window of unanswered pubs and retry, with the same msgid after a
 * short backoff, every pub answered unavailable, indeterminate, overloaded
 * or not at all (connection lost).  Consumers (two groups) ack every
 * delivery after a small per-consumer delay.
 *
 * The daemons run with ack_timeout_ms 2000 and max_attempts 20 (nothing is
 * dead-lettered in normal flow); two_daemons' stream has a 15 s deadline
 * instead, so that what the killed daemon's consumers held comes back
 * through the dead-daemon release (5 s), not the deadline.  For every
 * delivery a consumer held unacknowledged when its connection closed, the
 * wait until the group gets it again is measured and reported.
 *
 * After the traffic, the retries settle, then the drain waits until no
 * delivery came for DRAIN_QUIET_MS (longer when something is still
 * unaccounted for, always bounded).  Then, per group:
 *   lost       = n answered ok, not dead-lettered for the group, and either
 *                never delivered to a consumer of the group, or delivered
 *                but neither acknowledged (ack reply acked=1) nor cleared
 *                from the group's pending list in Redis;
 *   duplicates = deliveries of an n beyond the first (allowed: at least
 *                once).
 * The dead-letter stream sb:<stream>:dlq is read with hiredis; "stored but
 * never confirmed" comes from the msgid dedup hash sb:<stream>:dedup.  A table is printed and
 * the run exits non-zero when anything was lost or a scenario check failed.
 *
 * Options: --seconds N (traffic per scenario, default 3), --rate R (pubs/s,
 * default 2000), --scenario NAME (only that one), --seed S.
 * SB_TEST_KEEP=1 keeps the temporary directories; the logs of a scenario
 * that lost events are copied to /tmp/streambus-chaos-<scenario>-<pid>/.
 */
#include "harness.h"
#include "redis_cluster.h"
#include "redis_sentinel.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NGROUPS            2
#define MAX_CONNS          24
#define PUB_WINDOW         128     /* unanswered pubs per publisher */
#define PREFETCH           32
#define ACK_DELAY_MAX_MS   30      /* consumers ack after 0..this */
#define CONNECT_MS         300     /* one connect attempt */
#define RECONNECT_MS       100     /* backoff after a failed connect/close */
#define REPLY_STALL_MS     10000   /* a reply later than this: close, note */
#define STARTUP_MS         5000    /* consumers subscribed before traffic */
#define SETTLE_MS          30000   /* retries of unanswered pubs */
#define DRAIN_QUIET_MS     2500    /* quiet enough when all is accounted */
#define DRAIN_QUIET_MAX_MS 9000    /* quiet enough in any case */
#define DRAIN_MAX_MS       30000
#define SUB_IN_USE_MAX_MS  15000   /* then the consumer takes a new name */
#define EXIT_WAIT_MS       10000   /* SIGTERM to exit */
/* Redelivery of what a closed consumer held: "within 1 s" after a
 * disconnect, "within 5 s" after its daemon died; plus a sweep period. */
#define RELEASE_CLOSE_MS   1250
#define RELEASE_DEAD_MS    5500
/* two_daemons: an ack deadline far above 5 s, so that redeliveries after
 * the kill prove the dead daemon's consumers were released, not expired. */
#define TWO_DAEMONS_ACK_TIMEOUT_MS 15000
/* The Sentinel and cluster scenarios: one fault per this much traffic (at
 * least one); the killed master comes back this long after its replica's
 * promotion.
 * A reshard moves the keys of the slot (a dedup key per pub) in about
 * RESHARD_BATCHES MIGRATEs, RESHARD_PAUSE_MS apart, so that it lasts a
 * second or two whatever their number, with traffic between the steps. */
#define HA_FAULT_EVERY_S       15
#define HA_RESTART_MS          2000
#define RESHARD_BATCHES        20
#define RESHARD_PAUSE_MS       50
#define RBUF_MAX           (1u << 20)
#define NOTES_MAX          8192

#define DAEMON_DEFAULTS \
    "ack_timeout_ms = 2000\n" \
    "max_attempts = 20\n" \
    "retry_delay_ms = 200\n" \
    "maxlen = 0\n" \
    "dedup_window_ms = 600000\n"

static int  opt_seconds = 3;
static int  opt_rate = 2000;
static unsigned long long opt_seed;
static char results_path[256];

/* ---------------------------------------------------------------- misc */

static long long mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static unsigned long long rng_state;

static unsigned rnd(unsigned n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return n ? (unsigned)(rng_state % n) : 0;
}

/* "ms-seq" -> packed; 0 on a bad id. */
static int id_parse(const char *s, uint64_t *ms, uint32_t *seq)
{
    unsigned long long a, b;
    if (!s || sscanf(s, "%llu-%llu", &a, &b) != 2)
        return 0;
    *ms = a;
    *seq = (uint32_t)b;
    return 1;
}

/* ---------------------------------------------------------------- state */

enum { S_CONSUMER_KILL, S_DAEMON_KILL9, S_REDIS_RESTART, S_TWO_DAEMONS, S_SIGTERM,
       S_SENTINEL_FAILOVER, S_CLUSTER_FAILOVER, S_CLUSTER_RESHARD, S_COUNT };
#define S_FIRST_SENTINEL S_SENTINEL_FAILOVER    /* Sentinel: this one */
#define S_FIRST_CLUSTER  S_CLUSTER_FAILOVER     /* a cluster: this one and the next */
static const char *scen_names[S_COUNT] = {
    "consumer_kill", "daemon_kill9", "redis_restart", "two_daemons", "sigterm",
    "sentinel_failover", "cluster_failover", "cluster_reshard"
};

enum { R_PUB, R_CONS };
enum { P_HELLO, P_SUB, P_PUB, P_ACK };
enum { ST_NONE, ST_INFLIGHT, ST_OK, ST_RETRY };
enum { PH_STARTUP, PH_TRAFFIC, PH_SETTLE, PH_DRAIN, PH_DONE };

struct pend {
    int       kind;
    long long rid;
    long      n;
    long long t;
};

struct held {
    long      n;
    long long sub;
    long long due;
    char      id[48];
};

struct conn {
    int   role, idx, group;
    int   home, target;          /* daemon index: 0 main, 1 extra */
    int   fd;
    int   gen;                   /* consumer name generation */
    char  hname[48];
    char  cname[96];
    char *rb;  size_t rlen, rcap;
    char *wb;  size_t wlen, wcap;
    struct pend *q; size_t qhead, qlen, qcap;
    long long rid;
    int   npub;                  /* pubs in q */
    int   hello_ok, got_bye, expect_bye;
    int   sub_state;             /* 0 none, 1 sent, 2 ok */
    long long sub, sub_retry_at, in_use_since;
    long long next_connect;
    int   stalled;
    long long kill_at;
    struct held *held; size_t nheld, heldcap;
    int   ack_delay;
    int   opened;                /* ever connected */
};

static struct {
    int  sid;
    const char *name;
    char stream[64];
    char key[96], dlqkey[128];
    int  sentinel;                  /* a Sentinel scenario */
    int  cluster, slot;             /* a cluster scenario; the stream's slot */
    long cap, issued;
    /* per n */
    uint8_t  *st;
    uint16_t *tries;
    uint8_t  *uncertain;   /* an attempt got indeterminate or no reply */
    uint64_t *okid_ms;  uint32_t *okid_seq;
    uint64_t *did_ms;   uint32_t *did_seq;
    long long *retry_at;
    uint16_t *deliv[NGROUPS];
    uint8_t  *acked[NGROUPS], *pending[NGROUPS], *dlq[NGROUPS];
    long long *released[NGROUPS];           /* its consumer went, unacked */
    long     *rq; size_t rq_head, rq_len;   /* retry ring, cap entries */
    long      outstanding;                  /* n in ST_INFLIGHT/ST_RETRY */
    struct conn c[MAX_CONNS];
    int  nconns;
    int  phase;
    long long t_traffic, t_settle, t_drain, last_deliv;
    int  expect_peer_close;
    int  extra_expected_dead;        /* we killed the second daemon */
    int  failed;
    /* counters */
    long pub_sent, pub_ok, pub_dup, retries, err_unavail, err_indet, err_overload,
         err_other, noreply, rid_mismatch, stray_reply, foreign, ack_sent,
         ack_zero, ack_err, ack_unavail, sub_err, in_use, peer_closes, unexpected_closes,
         our_kills, unacked_at_kill, connect_fail, stall_closes, id_changed,
         okid_mismatch, false_not_stored, bye_ok, bye_missing, bye_other, faults, deliveries[NGROUPS];
    long long max_in_use_ms;
    long      rel_count, rel_slow;          /* redeliveries after a close */
    long long rel_max_ms, rel_limit_ms;
    long long fault_mark;                   /* a fault struck, not recovered */
    long      recoveries;                   /* pub ok again after a fault */
    long long recover_max_ms;
    char notes[NOTES_MAX];
    size_t notes_len;
} C;

static struct {
    int planned, done, state;
    long long next_at, t, t2;
    int victim, heir;               /* the failovers: nodes */
    cl_migration mg;                /* cluster_reshard, */
    long long errs[2][3];           /* and its src's and dst's errorstats */
} F;

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stdout, "chaos[%s] %.3fs: %s\n", C.name,
            C.t_traffic ? (mono() - C.t_traffic) / 1000.0 : 0.0, line);
    fflush(stdout);
    if (C.notes_len + strlen(line) + 3 < NOTES_MAX) {
        C.notes_len += (size_t)snprintf(C.notes + C.notes_len, NOTES_MAX - C.notes_len,
                                        "%s%s", C.notes_len ? "; " : "", line);
    }
}

/* Notes that may repeat a lot: the first few only. */
#define NOTE_LIMITED(counter, ...) do { if ((counter) <= 5) note(__VA_ARGS__); } while (0)

/* ------------------------------------------------------------- Redis */

/* redis-server with AOF (appendfsync always) in H.dir on H.redis_port:
 * a restart on the same port and directory keeps every answered write. */
static int chaos_redis_start(void)
{
    char port[16], log[700];
    snprintf(port, sizeof port, "%d", H.redis_port);
    snprintf(log, sizeof log, "%s/redis.log", H.dir);
    char *argv[] = { "redis-server", "--port", port, "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                     "--dir", H.dir, "--daemonize", "no", NULL };
    h_spawn(argv, log, &H.redis);
    long long end = mono() + 10000;
    while (mono() < end) {
        if (!h_alive(&H.redis))
            return -1;
        if (h_redis_ping(H.redis_port, 200))
            return 0;
        h_sleep_ms(10);
    }
    h_stop(&H.redis, SIGKILL, 1000);
    return -1;
}

/* The Redis that holds the stream: the only one, the master the sentinels
 * name, or in a cluster the master of its slot; NULL while none answers
 * (or the sentinels or nodes disagree). */
static redisContext *redis_open(void)
{
    int port = C.cluster ? cl_owner(C.slot) : C.sentinel ? sn_agree() : H.redis_port;
    return port > 0 ? h_redis_open(port, 10000) : NULL;
}

/* Entries pending in group g (XPENDING summary), -1 on error. */
static long long redis_pending_count(int g)
{
    redisContext *c = redis_open();
    if (!c)
        return -1;
    long long n = -1;
    redisReply *r = redisCommand(c, "XPENDING %s g%d", C.key, g + 1);
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER)
        n = r->element[0]->integer;
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return n;
}

/* --------------------------------------------------------- pub states */

static void set_state(long n, int st)
{
    int was = C.st[n] == ST_INFLIGHT || C.st[n] == ST_RETRY;
    int is = st == ST_INFLIGHT || st == ST_RETRY;
    C.outstanding += is - was;
    C.st[n] = (uint8_t)st;
}

static void pub_retry_later(long n)
{
    if (C.st[n] == ST_OK)
        return;
    set_state(n, ST_RETRY);
    int t = C.tries[n] < 4 ? 100 << C.tries[n] : 1000;
    if (t > 1000)
        t = 1000;
    C.retry_at[n] = mono() + t / 2 + rnd((unsigned)t / 2 + 1);
    C.rq[(C.rq_head + C.rq_len) % (size_t)C.cap] = n;
    C.rq_len++;
}

/* ------------------------------------------------------ connections */

static void consumer_name(struct conn *c)
{
    if (c->gen)
        snprintf(c->cname, sizeof c->cname, "%s-g%d-c%d-r%d", C.name, c->group + 1, c->idx, c->gen);
    else
        snprintf(c->cname, sizeof c->cname, "%s-g%d-c%d", C.name, c->group + 1, c->idx);
}

static struct conn *conn_add(int role, int idx, int group, int home)
{
    ck_assert(C.nconns < MAX_CONNS);
    struct conn *c = &C.c[C.nconns++];
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->role = role;
    c->idx = idx;
    c->group = group;
    c->home = c->target = home;
    c->ack_delay = (int)rnd(ACK_DELAY_MAX_MS + 1);
    if (role == R_PUB)
        snprintf(c->hname, sizeof c->hname, "chaos-pub%d", idx);
    else
        snprintf(c->hname, sizeof c->hname, "chaos-g%d-c%d", group + 1, idx);
    consumer_name(c);
    return c;
}

static void wappend(struct conn *c, const char *s, size_t len)
{
    if (c->wlen + len > c->wcap) {
        size_t nc = c->wcap ? c->wcap : 4096;
        while (nc < c->wlen + len)
            nc *= 2;
        c->wb = realloc(c->wb, nc);
        ck_assert(c->wb != NULL);
        c->wcap = nc;
    }
    memcpy(c->wb + c->wlen, s, len);
    c->wlen += len;
}

static void push_pend(struct conn *c, int kind, long n, long long rid)
{
    if (c->qlen == c->qcap) {
        size_t nc = c->qcap ? c->qcap * 2 : 64;
        struct pend *nq = malloc(nc * sizeof *nq);
        ck_assert(nq != NULL);
        for (size_t i = 0; i < c->qlen; i++)
            nq[i] = c->q[(c->qhead + i) % c->qcap];
        free(c->q);
        c->q = nq;
        c->qcap = nc;
        c->qhead = 0;
    }
    struct pend *p = &c->q[(c->qhead + c->qlen) % c->qcap];
    p->kind = kind;
    p->rid = rid;
    p->n = n;
    p->t = mono();
    c->qlen++;
    if (kind == P_PUB)
        c->npub++;
}

/* Queue one request: fmt is the JSON object without its closing brace;
 * the rid is appended. */
static void req(struct conn *c, int kind, long n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void req(struct conn *c, int kind, long n, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ck_assert(len > 0 && len < (int)sizeof line - 40);
    long long rid = ++c->rid;
    len += snprintf(line + len, sizeof line - len, ",\"rid\":%lld}\n", rid);
    wappend(c, line, (size_t)len);
    push_pend(c, kind, n, rid);
}

static void conn_close(struct conn *c, int by_us, const char *why)
{
    long long now = mono();
    if (c->fd < 0)
        return;
    if (c->expect_bye) {
        if (c->got_bye) {
            C.bye_ok++;
        } else {
            C.bye_missing++;
            note("%s: connection closed (%s) without {\"op\":\"bye\",\"reason\":\"shutdown\"}",
                 c->hname, why);
        }
        c->expect_bye = 0;
    }
    if (!by_us) {
        C.peer_closes++;
        if (!C.expect_peer_close) {
            C.unexpected_closes++;
            NOTE_LIMITED(C.unexpected_closes, "%s (%s) closed by the daemon without a fault (%s%s)",
                         c->hname, c->role == R_CONS ? c->cname : "publisher", why,
                         c->got_bye ? ", after a bye" : "");
        }
    }
    for (size_t i = 0; i < c->qlen; i++) {
        struct pend *p = &c->q[(c->qhead + i) % c->qcap];
        if (p->kind == P_PUB && C.st[p->n] == ST_INFLIGHT) {
            C.noreply++;
            C.uncertain[p->n] = 1;
            pub_retry_later(p->n);
        }
    }
    if (c->stalled)
        C.unacked_at_kill += (long)c->nheld;
    /* Deliveries it held unacknowledged: how soon does the group get
     * them again? */
    for (size_t h = 0; h < c->nheld; h++)
        if (!C.released[c->group][c->held[h].n])
            C.released[c->group][c->held[h].n] = now;
    close(c->fd);
    c->fd = -1;
    c->rlen = c->wlen = 0;
    c->qhead = c->qlen = 0;
    c->npub = 0;
    c->nheld = 0;
    c->hello_ok = c->got_bye = 0;
    c->sub_state = 0;
    c->sub = 0;
    c->stalled = 0;
    c->next_connect = now + RECONNECT_MS / 2 + rnd(RECONNECT_MS);
}

/* Abrupt close: half the time with a TCP reset (SO_LINGER 0). */
static void conn_kill(struct conn *c)
{
    if (c->fd < 0)
        return;
    if (rnd(2)) {
        struct linger lg = { 1, 0 };
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    C.our_kills++;
    conn_close(c, 1, "killed by the test");
}

static int daemon_port(int target)
{
    return target == 1 ? H.extra_port[0] : H.port;
}

static int tcp_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno != EINPROGRESS) {
            close(fd);
            return -1;
        }
        struct pollfd pfd = { fd, POLLOUT, 0 };
        int err = 0;
        socklen_t el = sizeof err;
        if (poll(&pfd, 1, CONNECT_MS) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            close(fd);
            return -1;
        }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void conn_open(struct conn *c)
{
    long long now = mono();
    int port = daemon_port(c->target);
    int fd = port > 0 ? tcp_open(port) : -1;
    if (fd < 0) {
        C.connect_fail++;
        c->next_connect = now + RECONNECT_MS / 2 + rnd(RECONNECT_MS);
        return;
    }
    c->fd = fd;
    c->opened = 1;
    c->rlen = c->wlen = 0;
    c->qhead = c->qlen = 0;
    c->npub = 0;
    c->hello_ok = c->got_bye = c->expect_bye = 0;
    c->sub_state = 0;
    c->sub_retry_at = now;
    consumer_name(c);
    req(c, P_HELLO, -1, "{\"op\":\"hello\",\"name\":\"%s\"", c->hname);
}

/* ------------------------------------------------------ line handling */

static void on_pub_reply(struct conn *c, long n, json_t *j)
{
    (void)c;
    if (json_is_true(json_object_get(j, "ok"))) {
        uint64_t ms = 0;
        uint32_t seq = 0;
        if (!id_parse(json_string_value(json_object_get(j, "id")), &ms, &seq)) {
            C.err_other++;
            NOTE_LIMITED(C.err_other, "pub m%ld: ok without a valid id", n);
            pub_retry_later(n);
            return;
        }
        if (json_is_true(json_object_get(j, "dup"))) {
            C.pub_dup++;
            /* Stored by an earlier attempt: one whose answer was lost or
             * indeterminate.  Any other error promised "not stored". */
            if (!C.uncertain[n]) {
                C.false_not_stored++;
                NOTE_LIMITED(C.false_not_stored,
                             "pub m%ld: dup:true after %u attempt(s) none of which was "
                             "indeterminate or unanswered: an error reply said not stored, "
                             "but it was", n, C.tries[n]);
            }
        }
        if (C.st[n] == ST_OK)
            return;             /* cannot happen: one pub per n in flight */
        if (C.okid_ms[n] && (C.okid_ms[n] != ms || C.okid_seq[n] != seq)) {
            C.okid_mismatch++;
            NOTE_LIMITED(C.okid_mismatch, "pub m%ld: two ok replies with different ids", n);
        }
        C.okid_ms[n] = ms;
        C.okid_seq[n] = seq;
        set_state(n, ST_OK);
        C.pub_ok++;
        return;
    }
    const char *e = json_string_value(json_object_get(j, "error"));
    if (e && strcmp(e, "unavailable") == 0)
        C.err_unavail++;
    else if (e && strcmp(e, "indeterminate") == 0) {
        C.err_indet++;
        C.uncertain[n] = 1;
    }
    else if (e && strcmp(e, "overloaded") == 0)
        C.err_overload++;
    else {
        C.err_other++;
        NOTE_LIMITED(C.err_other, "pub m%ld: unexpected error %s (%s)", n, e ? e : "?",
                     json_string_value(json_object_get(j, "message")) ?: "");
    }
    pub_retry_later(n);
}

/* A pub sent at sent was answered ok: the first since the fault struck
 * ends it for the publishers. */
static void fault_recovered(long long sent)
{
    if (!C.fault_mark || sent <= C.fault_mark)
        return;
    long long ms = mono() - C.fault_mark;
    C.fault_mark = 0;
    C.recoveries++;
    if (ms > C.recover_max_ms)
        C.recover_max_ms = ms;
    note("pubs ok again %lld ms after the fault", ms);
}

static void on_sub_reply(struct conn *c, json_t *j)
{
    long long now = mono();
    if (json_is_true(json_object_get(j, "ok"))) {
        c->sub_state = 2;
        c->sub = json_integer_value(json_object_get(j, "sub"));
        if (c->in_use_since) {
            long long w = now - c->in_use_since;
            if (w > C.max_in_use_ms)
                C.max_in_use_ms = w;
            c->in_use_since = 0;
        }
        return;
    }
    const char *e = json_string_value(json_object_get(j, "error"));
    c->sub_state = 0;
    c->sub_retry_at = now + 250;
    if (e && strcmp(e, "consumer_in_use") == 0) {
        C.in_use++;
        if (!c->in_use_since)
            c->in_use_since = now;
        if (now - c->in_use_since > SUB_IN_USE_MAX_MS) {
            note("consumer %s still in use after %d ms: taking a new name",
                 c->cname, SUB_IN_USE_MAX_MS);
            c->gen++;
            consumer_name(c);
            c->in_use_since = 0;
        }
    } else {
        C.sub_err++;
        NOTE_LIMITED(C.sub_err, "sub %s: error %s (%s)", c->cname, e ? e : "?",
                     json_string_value(json_object_get(j, "message")) ?: "");
    }
}

static void on_msg(struct conn *c, json_t *j)
{
    long long now = mono();
    int g = c->group;
    const char *id = json_string_value(json_object_get(j, "id"));
    json_t *nj = json_object_get(json_object_get(j, "data"), "n");
    long n = json_is_integer(nj) ? (long)json_integer_value(nj) : -1;
    C.deliveries[g]++;
    C.last_deliv = now;
    if (c->role != R_CONS || n < 0 || n >= C.issued || !id) {
        C.foreign++;
        NOTE_LIMITED(C.foreign, "%s: unexpected delivery (n %ld, id %s)", c->hname, n, id ? id : "-");
        return;
    }
    if (C.deliv[g][n] < UINT16_MAX)
        C.deliv[g][n]++;
    if (C.released[g][n]) {
        long long lat = now - C.released[g][n];
        C.released[g][n] = 0;
        C.rel_count++;
        if (lat > C.rel_max_ms)
            C.rel_max_ms = lat;
        if (C.rel_limit_ms && lat > C.rel_limit_ms) {
            C.rel_slow++;
            NOTE_LIMITED(C.rel_slow, "g%d n=%ld: redelivered %lld ms after its consumer went "
                         "(want <= %lld)", g + 1, n, lat, C.rel_limit_ms);
        }
    }
    uint64_t ms;
    uint32_t seq;
    if (id_parse(id, &ms, &seq)) {
        if (!C.did_ms[n]) {
            C.did_ms[n] = ms;
            C.did_seq[n] = seq;
        } else if (C.did_ms[n] != ms || C.did_seq[n] != seq) {
            C.id_changed++;
            NOTE_LIMITED(C.id_changed, "n=%ld delivered under two ids %llu-%u and %s: stored twice",
                         n, (unsigned long long)C.did_ms[n], C.did_seq[n], id);
        }
    }
    if (c->nheld == c->heldcap) {
        c->heldcap = c->heldcap ? c->heldcap * 2 : 64;
        c->held = realloc(c->held, c->heldcap * sizeof *c->held);
        ck_assert(c->held != NULL);
    }
    struct held *h = &c->held[c->nheld++];
    h->n = n;
    h->sub = json_integer_value(json_object_get(j, "sub"));
    h->due = c->stalled ? LLONG_MAX : now + c->ack_delay;
    snprintf(h->id, sizeof h->id, "%s", id);
}

static void on_line(struct conn *c, const char *line, size_t len)
{
    if (len == 0)
        return;
    json_error_t jerr;
    json_t *j = json_loadb(line, len, 0, &jerr);
    if (!j || !json_is_object(j)) {
        note("%s: line that is not a JSON object: %.200s", c->hname, line);
        json_decref(j);
        return;
    }
    if (json_object_get(j, "ok")) {
        if (c->qlen == 0) {
            C.stray_reply++;
            NOTE_LIMITED(C.stray_reply, "%s: reply without a request: %.200s", c->hname, line);
            json_decref(j);
            return;
        }
        struct pend p = c->q[c->qhead];
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qlen--;
        json_t *rid = json_object_get(j, "rid");
        if (!json_is_integer(rid) || json_integer_value(rid) != p.rid) {
            C.rid_mismatch++;
            NOTE_LIMITED(C.rid_mismatch, "%s: reply out of order (want rid %lld): %.200s",
                         c->hname, p.rid, line);
        }
        switch (p.kind) {
        case P_HELLO:
            if (json_is_true(json_object_get(j, "ok")))
                c->hello_ok = 1;
            else
                note("%s: hello refused: %.200s", c->hname, line);
            break;
        case P_SUB:
            on_sub_reply(c, j);
            break;
        case P_PUB:
            c->npub--;
            on_pub_reply(c, p.n, j);
            if (json_is_true(json_object_get(j, "ok")))
                fault_recovered(p.t);
            break;
        case P_ACK:
            if (json_is_true(json_object_get(j, "ok"))) {
                if (json_integer_value(json_object_get(j, "acked")) >= 1)
                    C.acked[c->group][p.n] = 1;
                else
                    C.ack_zero++;
            } else {
                /* unavailable while Redis is down: the entry stays
                 * pending and comes back after the ack deadline. */
                const char *e = json_string_value(json_object_get(j, "error"));
                if (e && strcmp(e, "unavailable") == 0) {
                    C.ack_unavail++;
                } else {
                    C.ack_err++;
                    NOTE_LIMITED(C.ack_err, "%s: ack of n=%ld refused: %.200s", c->hname, p.n, line);
                }
            }
            break;
        }
        json_decref(j);
        return;
    }
    const char *op = json_string_value(json_object_get(j, "op"));
    if (op && strcmp(op, "msg") == 0) {
        on_msg(c, j);
    } else if (op && strcmp(op, "bye") == 0) {
        const char *reason = json_string_value(json_object_get(j, "reason"));
        if (reason && strcmp(reason, "shutdown") == 0) {
            c->got_bye = 1;
        } else {
            C.bye_other++;
            NOTE_LIMITED(C.bye_other, "%s: bye with reason %s", c->hname, reason ? reason : "(none)");
        }
    } else {
        note("%s: unexpected line %.200s", c->hname, line);
    }
    json_decref(j);
}

/* Reads what is there; returns -1 once the connection is gone. */
static int conn_read(struct conn *c)
{
    for (int guard = 0; guard < 64; guard++) {
        if (c->rcap - c->rlen < 16384) {
            size_t nc = c->rcap ? c->rcap * 2 : 65536;
            ck_assert_msg(nc <= RBUF_MAX * 2, "%s: line too long", c->hname);
            c->rb = realloc(c->rb, nc);
            ck_assert(c->rb != NULL);
            c->rcap = nc;
        }
        ssize_t r = read(c->fd, c->rb + c->rlen, c->rcap - c->rlen);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (r <= 0) {
            conn_close(c, 0, r == 0 ? "EOF" : strerror(errno));
            return -1;
        }
        c->rlen += (size_t)r;
        size_t start = 0;
        for (size_t i = 0; i < c->rlen; i++) {
            if (c->rb[i] != '\n')
                continue;
            size_t l = i - start;
            if (l > 0 && c->rb[start + l - 1] == '\r')
                l--;
            on_line(c, c->rb + start, l);
            if (c->fd < 0)
                return -1;
            start = i + 1;
        }
        memmove(c->rb, c->rb + start, c->rlen - start);
        c->rlen -= start;
    }
    return 0;
}

static void conn_flush(struct conn *c)
{
    size_t off = 0;
    while (c->fd >= 0 && off < c->wlen) {
        ssize_t w = send(c->fd, c->wb + off, c->wlen - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (w < 0) {
            /* Read what the daemon sent before it went (a bye). */
            if (conn_read(c) == 0)
                conn_close(c, 0, strerror(errno));
            return;
        }
        off += (size_t)w;
    }
    if (c->fd >= 0) {
        memmove(c->wb, c->wb + off, c->wlen - off);
        c->wlen -= off;
    }
}

/* --------------------------------------------------------- traffic */

static void send_pubs(long long now)
{
    long allowed = 0;
    if (C.phase == PH_TRAFFIC) {
        long long want = (long long)opt_rate * (now - C.t_traffic) / 1000;
        allowed = (long)(want - C.issued);
        if (C.issued + allowed > C.cap)
            allowed = C.cap - C.issued;
    }
    if (C.phase != PH_TRAFFIC && C.phase != PH_SETTLE && C.phase != PH_DRAIN)
        return;
    for (int progress = 1; progress;) {
        progress = 0;
        for (int i = 0; i < C.nconns; i++) {
            struct conn *c = &C.c[i];
            if (c->role != R_PUB || c->fd < 0 || c->npub >= PUB_WINDOW)
                continue;
            long n = -1;
            if (C.rq_len && C.retry_at[C.rq[C.rq_head]] <= now) {
                n = C.rq[C.rq_head];
                C.rq_head = (C.rq_head + 1) % (size_t)C.cap;
                C.rq_len--;
                if (C.st[n] != ST_RETRY)
                    continue;
                C.retries++;
            } else if (allowed > 0) {
                n = C.issued++;
                allowed--;
            } else {
                continue;
            }
            set_state(n, ST_INFLIGHT);
            if (C.tries[n] < UINT16_MAX)
                C.tries[n]++;
            C.pub_sent++;
            req(c, P_PUB, n,
                "{\"op\":\"pub\",\"stream\":\"%s\",\"data\":{\"n\":%ld},\"msgid\":\"m%ld\",\"type\":\"CHAOS\"",
                C.stream, n, n);
            progress = 1;
        }
    }
}

static void send_consumer_work(long long now)
{
    for (int i = 0; i < C.nconns; i++) {
        struct conn *c = &C.c[i];
        if (c->role != R_CONS || c->fd < 0)
            continue;
        if (c->sub_state == 0 && now >= c->sub_retry_at) {
            req(c, P_SUB, -1,
                "{\"op\":\"sub\",\"stream\":\"%s\",\"group\":\"g%d\",\"consumer\":\"%s\","
                "\"prefetch\":%d,\"from\":\"all\"",
                C.stream, c->group + 1, c->cname, PREFETCH);
            c->sub_state = 1;
        }
        if (c->stalled)
            continue;
        size_t k = 0;
        for (size_t h = 0; h < c->nheld; h++) {
            struct held *e = &c->held[h];
            if (e->due <= now) {
                req(c, P_ACK, e->n, "{\"op\":\"ack\",\"sub\":%lld,\"id\":\"%s\"", e->sub, e->id);
                C.ack_sent++;
            } else {
                c->held[k++] = *e;
            }
        }
        c->nheld = k;
    }
}

/* ---------------------------------------------------------- faults */

static void restart_main_daemon(const char *why)
{
    if (h_daemon_try_start() != 0) {
        char *log = h_daemon_log();
        note("streambusd did not restart after %s; log tail: %.600s", why,
             log ? log + (strlen(log) > 600 ? strlen(log) - 600 : 0) : "");
        free(log);
        C.failed = 1;
    }
}

static void check_daemons(void)
{
    if (H.daemon.pid && !H.daemon_expected_dead && !h_alive(&H.daemon)) {
        note("streambusd died on its own (status 0x%x)", H.daemon.status);
        C.failed = 1;
        H.daemon_expected_dead = 1;
        restart_main_daemon("dying");
    }
    if (C.sid == S_TWO_DAEMONS && !C.extra_expected_dead && H.extra[0].pid &&
        !h_alive(&H.extra[0])) {
        note("second streambusd died on its own (status 0x%x)", H.extra[0].status);
        C.failed = 1;
        C.extra_expected_dead = 1;
    }
}

static void fault_schedule(void)
{
    long long span = (long long)opt_seconds * 1000;
    F.next_at = C.t_traffic + span * (F.done + 1) / (F.planned + 1);
}

static void fault_init(void)
{
    memset(&F, 0, sizeof F);
    switch (C.sid) {
    case S_CONSUMER_KILL:
        F.planned = INT_MAX;
        F.next_at = C.t_traffic + 200 + rnd(300);
        return;
    case S_DAEMON_KILL9:
    case S_REDIS_RESTART:
        F.planned = opt_seconds / 8 > 1 ? opt_seconds / 8 : 1;
        break;
    case S_SENTINEL_FAILOVER:
    case S_CLUSTER_FAILOVER:
    case S_CLUSTER_RESHARD:
        F.planned = opt_seconds / HA_FAULT_EVERY_S > 1 ? opt_seconds / HA_FAULT_EVERY_S : 1;
        break;
    default:
        F.planned = opt_seconds / 10 > 1 ? opt_seconds / 10 : 1;
        break;
    }
    fault_schedule();
}

/* 1 while a fault is under way (something is down). */
static int fault_busy(void)
{
    return F.state != 0;
}

/* The index of the master of the stream's slot, -1 while the nodes
 * disagree. */
static int slot_master(void)
{
    int port = cl_owner(C.slot);
    return port > 0 ? cl_idx_of_port(port) : -1;
}

static void fault_done(void)
{
    F.state = 0;
    F.done++;
    fault_schedule();
}

/* A fault's wait for the sentinels or the cluster, polled every 200 ms
 * (F.t2: the last poll): 1 once cond holds; SN_WAIT_MS or CL_WAIT_MS after
 * the fault struck (F.t) the scenario fails, and 1 too, so that it goes on. */
static int topology_waited(long long now, int (*cond)(void), const char *what)
{
    int bound = C.cluster ? CL_WAIT_MS : SN_WAIT_MS;
    if (now - F.t2 < 200)
        return 0;
    F.t2 = now;
    if (cond())
        return 1;
    if (now - F.t < bound)
        return 0;
    note("%s: not within %d ms", what, bound);
    C.failed = 1;
    return 1;
}

/* The failovers: the same steps with Sentinel's two nodes or the cluster's
 * six, these telling them apart. */
static int ha_port(int i)
{
    return C.cluster ? CL.port[i] : SN.port[i];
}

/* The index of the stream's master, its replica: -1 while unknown. */
static int ha_master(void)
{
    if (C.cluster)
        return cl_topology() ? slot_master() : -1;
    int port = sn_agree();
    return port == SN.port[0] ? 0 : port == SN.port[1] ? 1 : -1;
}

static int ha_replica_of(int m)
{
    return C.cluster ? cl_replica_of(m) : 1 - m;
}

static void ha_kill(int i)
{
    if (C.cluster)
        h_stop(&CL.node[i], SIGKILL, 2000);
    else
        sn_node_kill(i);
}

/* The killed node back: the cluster's on its port and directory; Sentinel's
 * empty, for the sentinels to make a replica. */
static void ha_restart(int i)
{
    if (C.cluster)
        cl_node_restart(i);
    else
        sn_node_start(i, 0);
}

static int heir_promoted(void)
{
    return (C.cluster ? cl_owner(C.slot) : sn_agree()) == ha_port(F.heir);
}

static int victim_replica_again(void)
{
    return h_replica_online(ha_port(F.heir), ha_port(F.victim));
}

/* 0: at the planned time, SIGKILL to the stream's master (its replica must
 * be online); 1: until the sentinels or the nodes name the replica as the
 * master; 2: HA_RESTART_MS after that (F.t2), the old master restarts on
 * its port; 3: until it is an online replica of the new master. */
static void failover_step(long long now, int traffic)
{
    switch (F.state) {
    case 0:
        if (!traffic || F.done >= F.planned || now < F.next_at)
            return;
        F.victim = ha_master();
        F.heir = F.victim >= 0 ? ha_replica_of(F.victim) : -1;
        if (F.heir < 0 || !h_replica_online(ha_port(F.victim), ha_port(F.heir))) {
            F.next_at = now + 500;      /* the last failover is not over */
            return;
        }
        ha_kill(F.victim);
        C.fault_mark = mono();
        note("the stream's master :%d killed with SIGKILL; its replica is :%d",
             ha_port(F.victim), ha_port(F.heir));
        C.faults++;
        F.state = 1;
        F.t = F.t2 = now;
        break;
    case 1:
        if (topology_waited(now, heir_promoted, "promotion of the replica")) {
            note("replica :%d promoted, %lld ms after the kill", ha_port(F.heir), now - F.t);
            F.state = 2;
        }
        break;
    case 2:
        if (now - F.t2 < HA_RESTART_MS)
            return;
        ha_restart(F.victim);
        note("old master :%d restarted on its port", ha_port(F.victim));
        F.state = 3;
        break;
    case 3:
        if (topology_waited(now, victim_replica_again, "old master a replica again")) {
            note(":%d an online replica of :%d, %lld ms after the kill", ha_port(F.victim),
                 ha_port(F.heir), now - F.t);
            fault_done();
        }
        break;
    }
}

static const char *redir_kinds[3] = { "ASK", "MOVED", "TRYAGAIN" };

/* The error replies of each kind the source and the destination gave
 * (anybody: the daemon, mostly), added with sign to F.errs. */
static void reshard_errorstats(int sign)
{
    for (int k = 0; k < 3; k++) {
        F.errs[0][k] += sign * cl_errorstat(CL.port[F.mg.src], redir_kinds[k]);
        F.errs[1][k] += sign * cl_errorstat(CL.port[F.mg.dst], redir_kinds[k]);
    }
}

/* 0: at the planned time, the slot starts moving to the next master; 1: a
 * migration step when due (cl_migrate_step) until it is the destination's. */
static void cluster_reshard_step(long long now, int traffic)
{
    if (F.state == 0) {
        if (!traffic || F.done >= F.planned || now < F.next_at)
            return;
        int src = slot_master(), dst = -1;
        for (int k = 1; k < CL_NODES && src >= 0 && dst < 0; k++)
            if (CL.master[(src + k) % CL_NODES] < 0)
                dst = (src + k) % CL_NODES;
        if (dst < 0) {
            F.next_at = now + 500;
            return;
        }
        long long keys = h_redis_int_at(CL.port[src], "CLUSTER COUNTKEYSINSLOT %d", C.slot);
        F.mg = (cl_migration){ .src = src, .dst = dst, .slot = C.slot, .key = C.key,
                               .batch = (int)(keys > 0 ? keys / RESHARD_BATCHES + 1 : 1),
                               .pause_ms = RESHARD_PAUSE_MS };
        note("slot %d moving from :%d to :%d (%lld keys)", C.slot, CL.port[src],
             CL.port[dst], keys);
        memset(F.errs, 0, sizeof F.errs);
        reshard_errorstats(-1);
        C.faults++;
        F.state = 1;
        F.t = 0;
    }
    if (F.state != 1)
        return;
    int done = cl_migrate_step(&F.mg, h_now_ms());
    if (F.mg.step >= 2 && !F.t) {
        /* MIGRATING: from now until SETSLOT NODE, a pub with a msgid (a
         * new dedup key) is answered TRYAGAIN by Redis. */
        F.t = now;
        C.fault_mark = mono();
    }
    if (done) {
        cl_migration *m = &F.mg;
        reshard_errorstats(1);
        note("slot %d on :%d: %ld keys in %ld MIGRATEs, the stream key moved after %lld ms, "
             "SETSLOT NODE after %lld ms; replies src ASK %lld MOVED %lld TRYAGAIN %lld, "
             "dst ASK %lld MOVED %lld TRYAGAIN %lld", m->slot, CL.port[m->dst], m->keys,
             m->batches, m->t_key - m->t_start, m->t_done - m->t_start, F.errs[0][0],
             F.errs[0][1], F.errs[0][2], F.errs[1][0], F.errs[1][1], F.errs[1][2]);
        fault_done();
    }
}

static void fault_step(long long now)
{
    int traffic = C.phase == PH_TRAFFIC;
    switch (C.sid) {
    case S_CONSUMER_KILL:
        if (traffic && now >= F.next_at) {
            struct conn *cand[MAX_CONNS];
            int nc = 0;
            for (int i = 0; i < C.nconns; i++)
                if (C.c[i].role == R_CONS && C.c[i].fd >= 0 && C.c[i].sub_state == 2 &&
                    !C.c[i].stalled)
                    cand[nc++] = &C.c[i];
            if (nc) {
                struct conn *v = cand[rnd((unsigned)nc)];
                v->stalled = 1;         /* holds what it gets from now on */
                for (size_t h = 0; h < v->nheld; h++)
                    v->held[h].due = LLONG_MAX;
                v->kill_at = now + 100 + rnd(300);
                C.faults++;
            }
            F.next_at = now + 300 + rnd(400);
        }
        for (int i = 0; i < C.nconns; i++) {
            struct conn *c = &C.c[i];
            if (c->stalled && now >= c->kill_at) {
                conn_kill(c);
                if (rnd(2))
                    c->gen++;           /* replaced under a new name */
                c->next_connect = now + rnd(200);
            }
        }
        break;

    case S_DAEMON_KILL9:
        if (F.state == 0 && traffic && F.done < F.planned && now >= F.next_at) {
            C.expect_peer_close = 1;
            H.daemon_expected_dead = 1;
            kill(H.daemon.pid, SIGKILL);
            h_wait_exit(&H.daemon, 3000);
            note("streambusd killed with SIGKILL");
            C.faults++;
            F.state = 1;
            F.t = now + 300;
        } else if (F.state == 1 && now >= F.t) {
            restart_main_daemon("SIGKILL");
            note("streambusd restarted on port %d", H.port);
            C.expect_peer_close = 0;
            F.state = 0;
            F.done++;
            fault_schedule();
        }
        break;

    case S_REDIS_RESTART:
        if (F.state == 0 && traffic && F.done < F.planned && now >= F.next_at) {
            h_redis_kill(SIGKILL);
            note("redis-server killed with SIGKILL");
            C.faults++;
            F.state = 1;
            F.t = now + 700;
        } else if (F.state == 1 && now >= F.t) {
            if (chaos_redis_start() != 0) {
                note("redis-server did not restart");
                C.failed = 1;
            } else {
                note("redis-server restarted (AOF loaded)");
            }
            F.state = 0;
            F.done++;
            fault_schedule();
        }
        break;

    case S_TWO_DAEMONS:
        if (F.state == 0 && traffic && F.done < F.planned && now >= F.next_at) {
            C.expect_peer_close = 1;
            C.extra_expected_dead = 1;
            kill(H.extra[0].pid, SIGKILL);
            h_wait_exit(&H.extra[0], 3000);
            note("second streambusd killed with SIGKILL; its clients move to the first");
            C.faults++;
            for (int i = 0; i < C.nconns; i++) {
                struct conn *c = &C.c[i];
                if (c->target == 1) {
                    c->target = 0;
                    c->gen++;
                }
            }
            F.done++;
            if (F.done < F.planned) {
                F.state = 1;
                F.t = now + 4000;
            } else {
                F.state = 2;
                F.t = now + 1000;
            }
        } else if (F.state == 1 && now >= F.t) {
            h_extra_start(0);
            C.extra_expected_dead = 0;
            note("second streambusd restarted; its clients go back to it");
            for (int i = 0; i < C.nconns; i++) {
                struct conn *c = &C.c[i];
                if (c->home == 1) {
                    c->target = 1;
                    c->gen++;
                    conn_kill(c);
                }
            }
            C.expect_peer_close = 0;
            F.state = 0;
            fault_schedule();
        } else if (F.state == 2 && now >= F.t) {
            C.expect_peer_close = 0;
            F.state = 0;
        }
        break;

    case S_SIGTERM:
        if (F.state == 0 && traffic && F.done < F.planned && now >= F.next_at) {
            int n = 0;
            for (int i = 0; i < C.nconns; i++) {
                struct conn *c = &C.c[i];
                c->expect_bye = c->fd >= 0 && c->hello_ok;
                n += c->expect_bye;
            }
            C.expect_peer_close = 1;
            H.daemon_expected_dead = 1;
            kill(H.daemon.pid, SIGTERM);
            note("SIGTERM sent to streambusd (%d clients expect a bye)", n);
            C.faults++;
            F.state = 1;
            F.t = now;
        } else if (F.state == 1) {
            if (!h_alive(&H.daemon)) {
                int st = H.daemon.status;
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                    note("streambusd after SIGTERM: status 0x%x, want exit 0", st);
                    C.failed = 1;
                } else {
                    note("streambusd exited 0, %lld ms after SIGTERM", now - F.t);
                }
                F.state = 2;
                F.t2 = now + 200;
            } else if (now - F.t > EXIT_WAIT_MS) {
                note("streambusd did not exit within %d ms of SIGTERM", EXIT_WAIT_MS);
                C.failed = 1;
                kill(H.daemon.pid, SIGKILL);
                h_wait_exit(&H.daemon, 3000);
                F.state = 2;
                F.t2 = now + 200;
            }
        } else if (F.state == 2 && now >= F.t2) {
            restart_main_daemon("SIGTERM");
            note("streambusd restarted on port %d", H.port);
            C.expect_peer_close = 0;
            F.state = 0;
            F.done++;
            fault_schedule();
        }
        break;

    case S_SENTINEL_FAILOVER:
    case S_CLUSTER_FAILOVER:
        failover_step(now, traffic);
        break;

    case S_CLUSTER_RESHARD:
        cluster_reshard_step(now, traffic);
        break;
    }
}

/* ----------------------------------------------------------- the loop */

static void tick(int wait_ms)
{
    static long long last_check;
    long long now = mono();

    for (int i = 0; i < C.nconns; i++) {
        struct conn *c = &C.c[i];
        if (c->fd < 0 && now >= c->next_connect && C.phase != PH_DONE)
            conn_open(c);
    }
    now = mono();
    send_consumer_work(now);
    send_pubs(now);
    for (int i = 0; i < C.nconns; i++)
        if (C.c[i].fd >= 0 && C.c[i].wlen)
            conn_flush(&C.c[i]);

    struct pollfd pfd[MAX_CONNS];
    int map[MAX_CONNS], np = 0;
    for (int i = 0; i < C.nconns; i++) {
        struct conn *c = &C.c[i];
        if (c->fd < 0)
            continue;
        pfd[np].fd = c->fd;
        pfd[np].events = POLLIN | (c->wlen ? POLLOUT : 0);
        pfd[np].revents = 0;
        map[np++] = i;
    }
    if (poll(pfd, (nfds_t)np, wait_ms) > 0) {
        for (int k = 0; k < np; k++) {
            struct conn *c = &C.c[map[k]];
            if (c->fd < 0 || !pfd[k].revents)
                continue;
            if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR))
                conn_read(c);
            if (c->fd >= 0 && (pfd[k].revents & POLLOUT))
                conn_flush(c);
        }
    } else if (np == 0 && wait_ms > 0) {
        h_sleep_ms(wait_ms);
    }

    now = mono();
    for (int i = 0; i < C.nconns; i++) {
        struct conn *c = &C.c[i];
        if (c->fd >= 0 && c->qlen && now - c->q[c->qhead].t > REPLY_STALL_MS) {
            /* conn_close() counts its pubs as unanswered (uncertain). */
            C.stall_closes++;
            note("%s: no reply for %d ms (%zu requests waiting): closing it",
                 c->hname, REPLY_STALL_MS, c->qlen);
            conn_close(c, 1, "no reply");
        }
    }
    if (now - last_check >= 200) {
        last_check = now;
        check_daemons();
    }
    fault_step(now);
}

/* ------------------------------------------------------- accounting */

struct idn { uint64_t ms; uint32_t seq; long n; };

static int idn_cmp(const void *a, const void *b)
{
    const struct idn *x = a, *y = b;
    if (x->ms != y->ms)
        return x->ms < y->ms ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    return 0;
}

static long field_n(const redisReply *entry, const char *field)
{
    const char *s = h_entry_field(entry, field);
    if (!s)
        return -1;
    json_error_t jerr;
    json_t *j = json_loads(s, JSON_DECODE_ANY, &jerr);
    json_t *nj = json_object_get(j, "n");
    long n = json_is_integer(nj) ? (long)json_integer_value(nj) : -1;
    json_decref(j);
    return n;
}

/* Every entry of key as (id, n) in id order; *count set. */
static struct idn *read_stream(redisContext *rc, const char *key, size_t *count,
                               int want_group, uint8_t **dlq_out)
{
    size_t cap = 1024, len = 0;
    struct idn *v = malloc(cap * sizeof *v);
    ck_assert(v != NULL);
    char start[64] = "-";
    for (int guard = 0; guard < 100000; guard++) {
        redisReply *r = redisCommand(rc, "XRANGE %s %s + COUNT 5000", key, start);
        ck_assert_msg(r && r->type == REDIS_REPLY_ARRAY, "XRANGE %s failed", key);
        size_t got = r->elements;
        for (size_t i = 0; i < got; i++) {
            const redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
                continue;
            if (len == cap) {
                cap *= 2;
                v = realloc(v, cap * sizeof *v);
                ck_assert(v != NULL);
            }
            struct idn *x = &v[len++];
            x->ms = 0; x->seq = 0;
            id_parse(e->element[0]->str, &x->ms, &x->seq);
            x->n = field_n(e, "data");
            if (want_group && x->n >= 0 && x->n < C.issued) {
                const char *g = h_entry_field(e, "group");
                int gi = g && g[0] == 'g' ? atoi(g + 1) - 1 : -1;
                if (gi >= 0 && gi < NGROUPS)
                    dlq_out[gi][x->n] = 1;
                else
                    note("DLQ entry %s without a known group", e->element[0]->str);
            }
            if (i + 1 == got)
                snprintf(start, sizeof start, "(%s", e->element[0]->str);
        }
        freeReplyObject(r);
        if (got < 5000)
            break;
    }
    *count = len;
    return v;
}

struct result {
    long pub_ok, delivered, lost[NGROUPS], lost_undelivered[NGROUPS], lost_stuck[NGROUPS],
         dups[NGROUPS], dlq[NGROUPS], dlq_total, stored_unconfirmed, never_confirmed,
         ok_no_dedup, ok_id_differs, ack_cleared[NGROUPS], pending_left[NGROUPS];
};

static void copy_logs(void)
{
    char dest[256];
    snprintf(dest, sizeof dest, "/tmp/streambus-chaos-%s-%d", C.name, (int)getpid());
    char *argv[] = { "cp", "-r", H.dir, dest, NULL };
    if (h_run(argv, NULL, 10000) == 0)
        note("logs kept in %s", dest);
}

static void grep_logs(const char *needle)
{
    const char *files[] = { "daemon.log", "daemon-extra0.log" };
    for (size_t f = 0; f < 2; f++) {
        char path[700];
        snprintf(path, sizeof path, "%s/%s", H.dir, files[f]);
        char *txt = h_read_file(path);
        if (!txt)
            continue;
        int shown = 0;
        for (char *line = txt; line && *line && shown < 5;) {
            char *eol = strchr(line, '\n');
            if (eol)
                *eol = '\0';
            if (strstr(line, needle)) {
                printf("      %s: %s\n", files[f], line);
                shown++;
            }
            line = eol ? eol + 1 : NULL;
        }
        free(txt);
    }
}

static void account(struct result *R)
{
    memset(R, 0, sizeof *R);
    if (C.cluster && cl_wait_ok(CL_WAIT_MS) < 0)
        note("cluster not ok within %d ms for the accounting", CL_WAIT_MS);
    redisContext *rc = redis_open();
    ck_assert_msg(rc != NULL, "redis unreachable for the accounting");

    /* The stream (acknowledged entries may have been trimmed already;
     * pending ones never are): id -> n for the pending lists. */
    size_t ns = 0, nd = 0;
    struct idn *stream = read_stream(rc, C.key, &ns, 0, NULL);
    qsort(stream, ns, sizeof *stream, idn_cmp);
    struct idn *dl = read_stream(rc, C.dlqkey, &nd, 1, C.dlq);
    R->dlq_total = (long)nd;
    free(dl);

    for (int g = 0; g < NGROUPS; g++) {
        redisReply *r = redisCommand(rc, "XPENDING %s g%d - + 1000000", C.key, g + 1);
        ck_assert_msg(r != NULL, "XPENDING failed");
        if (r->type == REDIS_REPLY_ARRAY) {
            R->pending_left[g] = (long)r->elements;
            for (size_t i = 0; i < r->elements; i++) {
                const redisReply *p = r->element[i];
                struct idn key = { 0, 0, 0 };
                if (p->type != REDIS_REPLY_ARRAY || p->elements < 1 ||
                    !id_parse(p->element[0]->str, &key.ms, &key.seq))
                    continue;
                struct idn *hit = bsearch(&key, stream, ns, sizeof *stream, idn_cmp);
                if (hit && hit->n >= 0 && hit->n < C.issued)
                    C.pending[g][hit->n] = 1;
                else
                    note("group g%d: pending entry %s not in the stream", g + 1, p->element[0]->str);
            }
        } else {
            note("XPENDING g%d: %s", g + 1, r->str ? r->str : "error");
        }
        freeReplyObject(r);
    }
    free(stream);

    /* The dedup keys say which n were stored, also those never confirmed. */
    long batch = 2000;
    for (long base = 0; base < C.issued; base += batch) {
        long end = base + batch < C.issued ? base + batch : C.issued;
        for (long n = base; n < end; n++)
            redisAppendCommand(rc, "HGET %s:dedup m%ld", C.key, n);
        for (long n = base; n < end; n++) {
            void *vr = NULL;
            ck_assert_msg(redisGetReply(rc, &vr) == REDIS_OK && vr, "HGET dedup failed");
            redisReply *r = vr;
            uint64_t ms = 0;
            uint32_t seq = 0;
            int stored = r->type == REDIS_REPLY_STRING && id_parse(r->str, &ms, &seq);
            if (C.st[n] == ST_OK) {
                if (!stored)
                    R->ok_no_dedup++;
                else if (ms != C.okid_ms[n] || seq != C.okid_seq[n])
                    R->ok_id_differs++;
            } else {
                R->never_confirmed++;
                if (stored)
                    R->stored_unconfirmed++;
            }
            freeReplyObject(r);
        }
    }
    redisFree(rc);

    R->pub_ok = C.pub_ok;
    R->delivered = C.deliveries[0] + C.deliveries[1];
    int shown = 0;
    for (int g = 0; g < NGROUPS; g++) {
        for (long n = 0; n < C.issued; n++) {
            if (C.deliv[g][n] > 1)
                R->dups[g] += C.deliv[g][n] - 1;
            if (C.dlq[g][n])
                R->dlq[g]++;
            if (C.st[n] != ST_OK || C.dlq[g][n] || C.acked[g][n])
                continue;
            if (C.deliv[g][n] && !C.pending[g][n]) {
                R->ack_cleared[g]++;    /* ack reply lost, but Redis has it acked */
                continue;
            }
            R->lost[g]++;
            if (!C.deliv[g][n])
                R->lost_undelivered[g]++;
            else
                R->lost_stuck[g]++;
            if (shown < 15) {
                char id[48];
                snprintf(id, sizeof id, "%llu-%u", (unsigned long long)C.okid_ms[n], C.okid_seq[n]);
                printf("    LOST g%d n=%ld id=%s tries=%u delivered=%u pending_in_redis=%d\n",
                       g + 1, n, id, C.tries[n], C.deliv[g][n], C.pending[g][n]);
                grep_logs(id);
                shown++;
            }
        }
    }
}

/* ------------------------------------------------------ the scenario */

static void alloc_state(void)
{
    long cap = (long)opt_rate * opt_seconds + opt_rate / 10 + 1000;
    C.cap = cap;
    C.st = calloc((size_t)cap, 1);
    C.tries = calloc((size_t)cap, sizeof *C.tries);
    C.uncertain = calloc((size_t)cap, 1);
    C.okid_ms = calloc((size_t)cap, sizeof *C.okid_ms);
    C.okid_seq = calloc((size_t)cap, sizeof *C.okid_seq);
    C.did_ms = calloc((size_t)cap, sizeof *C.did_ms);
    C.did_seq = calloc((size_t)cap, sizeof *C.did_seq);
    C.retry_at = calloc((size_t)cap, sizeof *C.retry_at);
    C.rq = calloc((size_t)cap, sizeof *C.rq);
    ck_assert(C.st && C.tries && C.uncertain && C.okid_ms && C.okid_seq && C.did_ms && C.did_seq &&
              C.retry_at && C.rq);
    for (int g = 0; g < NGROUPS; g++) {
        C.deliv[g] = calloc((size_t)cap, sizeof *C.deliv[g]);
        C.acked[g] = calloc((size_t)cap, 1);
        C.pending[g] = calloc((size_t)cap, 1);
        C.dlq[g] = calloc((size_t)cap, 1);
        C.released[g] = calloc((size_t)cap, sizeof *C.released[g]);
        ck_assert(C.deliv[g] && C.acked[g] && C.pending[g] && C.dlq[g] && C.released[g]);
    }
}

/* Every ok'd n acknowledged by every group, or delivered with nothing
 * left pending in Redis. */
static int all_accounted(void)
{
    long long pend[NGROUPS];
    int asked = 0;
    for (int g = 0; g < NGROUPS; g++) {
        for (long n = 0; n < C.issued; n++) {
            if (C.st[n] != ST_OK || C.acked[g][n])
                continue;
            if (!C.deliv[g][n])
                return 0;
            if (!asked) {
                for (int k = 0; k < NGROUPS; k++)
                    pend[k] = redis_pending_count(k);
                asked = 1;
            }
            if (pend[g] != 0)
                return 0;
        }
    }
    return 1;
}

static void write_result(const struct result *R, double secs)
{
    FILE *f = fopen(results_path, "a");
    if (!f)
        return;
    fprintf(f, "R|%s|%s|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%lld|%.1f\n",
            C.name, C.failed || R->lost[0] || R->lost[1] ? "FAIL" : "ok",
            R->pub_ok, R->delivered, R->lost[0], R->lost[1], R->dups[0], R->dups[1],
            R->dlq_total, R->stored_unconfirmed, R->never_confirmed, C.retries, C.faults,
            C.rel_count ? C.rel_max_ms : -1, secs);
    if (C.notes_len)
        fprintf(f, "N|%s|%s\n", C.name, C.notes);
    fclose(f);
}

static void scenario(int sid)
{
    long long t_start = mono();
    memset(&C, 0, sizeof C);
    C.sid = sid;
    C.name = scen_names[sid];
    rng_state = opt_seed ^ (0x9E3779B97F4A7C15ull * (unsigned long long)(sid + 1));
    C.sentinel = sid >= S_FIRST_SENTINEL && sid < S_FIRST_CLUSTER;
    C.cluster = sid >= S_FIRST_CLUSTER;
    snprintf(C.stream, sizeof C.stream, "chaos_%s", C.name);
    /* In a cluster every key of the stream is in the slot of its name. */
    snprintf(C.key, sizeof C.key, C.cluster ? "sb:{%s}" : "sb:%s", C.stream);
    snprintf(C.dlqkey, sizeof C.dlqkey, "%s:dlq", C.key);
    alloc_state();

    snprintf(H.conf_defaults, sizeof H.conf_defaults, "%s", DAEMON_DEFAULTS);
    if (sid == S_TWO_DAEMONS)
        snprintf(H.conf_extra, sizeof H.conf_extra, "[stream %s]\nack_timeout_ms = %d\n",
                 C.stream, TWO_DAEMONS_ACK_TIMEOUT_MS);
    /* See the top: what the killed master had not replicated is lost
     * unless a pub waits for its replica. */
    if (sid == S_SENTINEL_FAILOVER || sid == S_CLUSTER_FAILOVER)
        snprintf(H.conf_extra, sizeof H.conf_extra,
                 "[stream %s]\ndurability = replicas:1:2000\n", C.stream);
    if (C.cluster) {
        C.slot = cl_keyslot(C.key);
        snprintf(H.conf_redis, sizeof H.conf_redis, "cluster = %s\n", CL.seeds);
    }
    if (C.sentinel) {
        char *lines = sn_conf_redis();
        snprintf(H.conf_redis, sizeof H.conf_redis, "%s", lines);
        free(lines);
    }
    C.rel_limit_ms = sid == S_CONSUMER_KILL ? RELEASE_CLOSE_MS :
                     sid == S_TWO_DAEMONS ? RELEASE_DEAD_MS : 0;
    h_daemon_start();
    if (sid == S_TWO_DAEMONS)
        h_extra_start(0);

    int daemons = sid == S_TWO_DAEMONS ? 2 : 1;
    int per_group = sid == S_TWO_DAEMONS ? 4 : 3;
    for (int p = 0; p < 2; p++)
        conn_add(R_PUB, p, 0, p % daemons);
    for (int g = 0; g < NGROUPS; g++)
        for (int k = 0; k < per_group; k++)
            conn_add(R_CONS, k, g, k % daemons);

    if (C.cluster)
        printf("chaos[%s]: cluster %s, slot %d on :%d, streambusd :%d, %d s of traffic at "
               "%d/s, seed %llu\n", C.name, CL.seeds, C.slot, cl_owner(C.slot), H.port,
               opt_seconds, opt_rate, opt_seed);
    else if (C.sentinel)
        printf("chaos[%s]: master :%d, replica :%d, sentinels %s, streambusd :%d, %d s of "
               "traffic at %d/s, seed %llu\n", C.name, SN.port[0], SN.port[1], SN.sentinels,
               H.port, opt_seconds, opt_rate, opt_seed);
    else
        printf("chaos[%s]: redis :%d, streambusd :%d%s, %d s of traffic at %d/s, seed %llu\n",
               C.name, H.redis_port, H.port, daemons == 2 ? " and a second one" : "",
               opt_seconds, opt_rate, opt_seed);
    fflush(stdout);

    /* Startup: every consumer subscribed. */
    C.phase = PH_STARTUP;
    long long end = mono() + STARTUP_MS;
    for (;;) {
        int ready = 0, total = 0;
        for (int i = 0; i < C.nconns; i++)
            if (C.c[i].role == R_CONS) {
                total++;
                ready += C.c[i].sub_state == 2;
            }
        if (ready == total)
            break;
        ck_assert_msg(mono() < end, "%s: only %d of %d consumers subscribed within %d ms",
                      C.name, ready, total, STARTUP_MS);
        tick(5);
    }

    C.phase = PH_TRAFFIC;
    C.t_traffic = mono();
    fault_init();
    while (mono() - C.t_traffic < (long long)opt_seconds * 1000)
        tick(2);

    C.phase = PH_SETTLE;
    C.t_settle = mono();
    while ((C.outstanding > 0 || fault_busy()) && mono() - C.t_settle < SETTLE_MS)
        tick(5);
    for (int i = 0; i < C.nconns; i++)      /* stalled consumers left over */
        if (C.c[i].stalled) {
            conn_kill(&C.c[i]);
            C.c[i].next_connect = mono();
        }
    if (C.outstanding > 0)
        note("%ld pubs still unanswered after %d ms of retries", C.outstanding, SETTLE_MS);

    C.phase = PH_DRAIN;
    C.t_drain = mono();
    C.last_deliv = mono();
    long long last_eval = 0;
    int accounted = 0;
    for (;;) {
        long long now = mono();
        long long quiet = now - C.last_deliv;
        if (now - C.t_drain >= DRAIN_MAX_MS) {
            note("drain bound (%d ms) reached", DRAIN_MAX_MS);
            break;
        }
        if (quiet >= DRAIN_QUIET_MAX_MS)
            break;
        if (quiet >= DRAIN_QUIET_MS && now - last_eval >= 500) {
            last_eval = now;
            accounted = all_accounted();
            if (accounted)
                break;
        }
        tick(5);
    }
    double drain_s = (mono() - C.t_drain) / 1000.0;

    C.phase = PH_DONE;
    for (int i = 0; i < C.nconns; i++) {
        struct conn *c = &C.c[i];
        if (c->expect_bye) {
            C.bye_missing++;
            note("%s never saw its connection end after SIGTERM", c->hname);
            c->expect_bye = 0;
        }
        if (c->fd >= 0)
            conn_close(c, 1, "end");
    }

    struct result R;
    printf("chaos[%s]: accounting (%ld published ok, drain %.1f s)\n", C.name, C.pub_ok, drain_s);
    account(&R);
    if (C.pub_ok == 0) {
        note("no pub was answered ok");
        C.failed = 1;
    }
    if (sid == S_SIGTERM && (C.bye_missing || C.bye_ok == 0))
        C.failed = 1;
    if (R.lost[0] || R.lost[1])
        copy_logs();
    double secs = (mono() - t_start) / 1000.0;

    printf("chaos[%s]: pub sent %ld ok %ld (dup replies %ld), retries %ld "
           "[unavailable %ld, indeterminate %ld, overloaded %ld, no reply %ld, other %ld]\n",
           C.name, C.pub_sent, C.pub_ok, C.pub_dup, C.retries, C.err_unavail, C.err_indet,
           C.err_overload, C.noreply, C.err_other);
    for (int g = 0; g < NGROUPS; g++)
        printf("chaos[%s]: g%d deliveries %ld, lost %ld (never delivered %ld, still pending %ld), "
               "duplicates %ld, dlq %ld, ack reply lost but cleared %ld, pending left %ld\n",
               C.name, g + 1, C.deliveries[g], R.lost[g], R.lost_undelivered[g], R.lost_stuck[g],
               R.dups[g], R.dlq[g], R.ack_cleared[g], R.pending_left[g]);
    printf("chaos[%s]: faults %ld, our kills %ld (unacked held at kill %ld), peer closes %ld "
           "(unexpected %ld), connect failures %ld, consumer_in_use %ld (longest %lld ms), "
           "acks sent %ld (acked 0: %ld, unavailable %ld, refused %ld), sub errors %ld, stalled conns %ld, "
           "bye ok %ld missing %ld\n",
           C.name, C.faults, C.our_kills, C.unacked_at_kill, C.peer_closes, C.unexpected_closes,
           C.connect_fail, C.in_use, C.max_in_use_ms, C.ack_sent, C.ack_zero, C.ack_unavail, C.ack_err,
           C.sub_err, C.stall_closes, C.bye_ok, C.bye_missing);
    if (C.recoveries)
        printf("chaos[%s]: pubs ok again after %ld of %ld faults, the longest wait %lld ms\n",
               C.name, C.recoveries, C.faults, C.recover_max_ms);
    printf("chaos[%s]: unacked deliveries of closed consumers redelivered: %ld, longest after "
           "%lld ms", C.name, C.rel_count, C.rel_max_ms);
    if (C.rel_limit_ms)
        printf(", %ld after more than %lld ms", C.rel_slow, C.rel_limit_ms);
    printf("\n");
    printf("chaos[%s]: stored but never confirmed %ld of %ld unconfirmed; ok without dedup key %ld, "
           "ok id differs from dedup %ld, stored twice %ld, two ok ids %ld, error but stored %ld, "
           "rid mismatches %ld; %.1f s\n",
           C.name, R.stored_unconfirmed, R.never_confirmed, R.ok_no_dedup, R.ok_id_differs,
           C.id_changed, C.okid_mismatch, C.false_not_stored, C.rid_mismatch, secs);
    fflush(stdout);
    write_result(&R, secs);

    ck_assert_msg(R.lost[0] == 0 && R.lost[1] == 0, "%s: lost %ld (g1) + %ld (g2) events",
                  C.name, R.lost[0], R.lost[1]);
    ck_assert_msg(!C.failed, "%s: %s", C.name, C.notes);
}

/* ------------------------------------------------------------ fixtures */

static void chaos_setup(void)
{
    h_setup();
    /* h_setup's Redis has no persistence: replace it with an AOF one. */
    h_redis_kill(SIGTERM);
    for (int attempt = 0; attempt < 3; attempt++) {
        if (attempt > 0)
            H.redis_port = h_free_port();
        if (chaos_redis_start() == 0)
            return;
    }
    ck_abort_msg("redis-server with AOF did not start");
}

/* A failure's stop of every process, whatever the fixture. */
static void chaos_stop_all(void)
{
    sn_stop_all();
    cl_stop_all();
}

START_TEST(t_scenario)
{
    scenario(_i);
}
END_TEST

/* ----------------------------------------------------------------- main */

/* The scenarios of first..last within lo..hi, that share a fixture: one
 * test case; none if there are none.  Its timeout: traffic, settle and
 * drain bounds, restarts, and extra_s for the fixture's waits. */
static void add_scenarios(Suite *s, const char *name, int first, int last, int lo, int hi,
                          void (*setup)(void), void (*teardown)(void), int extra_s)
{
    first = first > lo ? first : lo;
    last = last < hi ? last : hi;
    if (first > last)
        return;
    TCase *tc = h_tcase(s, name, opt_seconds + SETTLE_MS / 1000 + DRAIN_MAX_MS / 1000 + 90 +
                        extra_s, setup, teardown);
    tcase_add_loop_test(tc, t_scenario, first, last + 1);
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--seconds N] [--rate PUBS_PER_S] [--scenario NAME] [--seed S]\n"
            "scenarios:", argv0);
    for (int i = 0; i < S_COUNT; i++)
        fprintf(stderr, " %s", scen_names[i]);
    fprintf(stderr, "\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        { "seconds", required_argument, NULL, 's' },
        { "rate", required_argument, NULL, 'r' },
        { "scenario", required_argument, NULL, 'S' },
        { "seed", required_argument, NULL, 'x' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *only = NULL;
    opt_seed = (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 20);
    int ch;
    while ((ch = getopt_long(argc, argv, "s:r:S:x:h", lopts, NULL)) != -1) {
        switch (ch) {
        case 's': opt_seconds = atoi(optarg); break;
        case 'r': opt_rate = atoi(optarg); break;
        case 'S': only = optarg; break;
        case 'x': opt_seed = strtoull(optarg, NULL, 0); break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc || opt_seconds < 1 || opt_seconds > 3600 || opt_rate < 1 ||
        opt_rate > 100000)
        usage(argv[0]);
    if (!opt_seed)
        opt_seed = 1;
    int first = 0, last = S_COUNT - 1;
    if (only) {
        int k = -1;
        for (int i = 0; i < S_COUNT; i++)
            if (strcmp(only, scen_names[i]) == 0)
                k = i;
        if (k < 0)
            usage(argv[0]);
        first = last = k;
    }

    snprintf(results_path, sizeof results_path, "%s/sbchaos.XXXXXX",
             getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int rfd = mkstemp(results_path);
    if (rfd < 0) {
        perror("mkstemp");
        return 2;
    }
    close(rfd);

    h_global_init();
    h_on_fail("chaos", chaos_stop_all);
    Suite *s = suite_create("chaos");
    add_scenarios(s, "chaos", first, last, 0, S_FIRST_SENTINEL - 1, chaos_setup, h_teardown, 0);
    add_scenarios(s, "sentinel", first, last, S_FIRST_SENTINEL, S_FIRST_CLUSTER - 1, sn_setup,
                  h_teardown_all, SN_WAIT_MS / 1000 * 3);
    add_scenarios(s, "cluster", first, last, S_FIRST_CLUSTER, S_COUNT - 1, cl_setup,
                  h_teardown_all, CL_WAIT_MS / 1000 * 3);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);

    /* The table. */
    char *txt = h_read_file(results_path);
    unlink(results_path);
    size_t txt_len = txt ? strlen(txt) : 0;
    int rows = 0, lost_any = 0;
    printf("\nchaos: %d s of traffic per scenario at %d pubs/s, seed %llu\n",
           opt_seconds, opt_rate, opt_seed);
    printf("%-16s | %-6s | %12s | %10s | %11s | %11s | %5s | %11s | %7s | %6s | %9s | %6s\n",
           "scenario", "result", "published ok", "delivered", "lost g1/g2", "dups g1/g2",
           "dlq", "stored unc.", "retries", "faults", "redeliv.", "secs");
    printf("-----------------+--------+--------------+------------+-------------+-------------+"
           "-------+-------------+---------+--------+-----------+-------\n");
    for (char *line = txt; line && *line;) {
        char *eol = strchr(line, '\n');
        if (eol)
            *eol = '\0';
        if (line[0] == 'R' && line[1] == '|') {
            char name[64], res[8];
            long pub, del, l1, l2, d1, d2, dlq, su, nc, retr, faults;
            long long rel;
            double secs;
            if (sscanf(line, "R|%63[^|]|%7[^|]|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%ld|%lld|%lf",
                       name, res, &pub, &del, &l1, &l2, &d1, &d2, &dlq, &su, &nc, &retr,
                       &faults, &rel, &secs) == 15) {
                char lost[32], dups[32], stored[32], rels[32];
                snprintf(lost, sizeof lost, "%ld/%ld", l1, l2);
                snprintf(dups, sizeof dups, "%ld/%ld", d1, d2);
                snprintf(stored, sizeof stored, "%ld/%ld", su, nc);
                if (rel >= 0)
                    snprintf(rels, sizeof rels, "%lld", rel);
                else
                    snprintf(rels, sizeof rels, "-");
                printf("%-16s | %-6s | %12ld | %10ld | %11s | %11s | %5ld | %11s | %7ld | %6ld | %9s | %6.1f\n",
                       name, res, pub, del, lost, dups, dlq, stored, retr, faults, rels, secs);
                rows++;
                lost_any |= l1 > 0 || l2 > 0;
            }
        }
        line = eol ? eol + 1 : NULL;
    }
    printf("(delivered: deliveries to both groups; stored unc.: stored but never confirmed / "
           "never confirmed;\n redeliv.: longest wait, ms, from a consumer's close to the "
           "redelivery of what it held unacked)\n");
    for (char *line = txt; line && line < txt + txt_len; line += strlen(line) + 1)
        if (line[0] == 'N' && line[1] == '|')
            printf("notes %s\n", line + 2);
    free(txt);
    int want = last - first + 1;
    if (rows != want)
        printf("chaos: %d of %d scenarios reported a result\n", rows, want);
    if (failed || lost_any || rows != want) {
        printf("chaos: FAILED\n");
        return 1;
    }
    printf("chaos: ok\n");
    return 0;
}
