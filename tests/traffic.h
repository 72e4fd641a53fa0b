/*
 * traffic.h: numbered publish/consume traffic on one stream for the tests
 * that break Redis under it (check_sentinel, check_cluster), and the count
 * at the end.
 *
 * A publisher keeps TR_WINDOW pubs in flight on one connection (replies
 * matched by rid = n), so that a crash or a migration catches several at
 * once.  Data n, msgid m<n>.  A slot of the window holds one n until it is
 * answered ok; a failed try (unavailable, overloaded, indeterminate, no
 * reply, a broken connection) is sent again after TR_RETRY_MS with the same
 * msgid.  A consumer (group g, consumer c1, from "all") acks every delivery
 * without waiting for the reply.
 *
 * The test's fault runs between the rounds of traffic_run(); afterwards
 * traffic_count() consumes until every n answered ok is delivered and counts
 * the stream's entries against what was answered ok.  Failures stop every
 * process first (H_CHECK, h_on_fail()).
 */
#ifndef TRAFFIC_H
#define TRAFFIC_H

#include "harness.h"

#define TR_MAXN      100000    /* most events a traffic test publishes */
#define TR_WINDOW    8         /* pubs in flight */
#define TR_PUB_MS    5000      /* a pub's reply (WAIT timeouts are 2 s) */
#define TR_RETRY_MS  100       /* backoff before a pub is retried */
#define TR_GIVEUP_MS 30000     /* one pub retried longer than this: fail */
#define TR_PHASE_MS  60000     /* bound of traffic_run() */

enum { TR_SLOT_FREE, TR_SLOT_FLIGHT, TR_SLOT_RETRY };

typedef struct tr_pubwin {
    sb_client *c;
    const char *stream;
    struct {
        long n;
        int state;
        long long sent_at, retry_at, failing_since;
        int uncertain;          /* a try was indeterminate or unanswered */
    } s[TR_WINDOW];
    long next;                  /* the next new n */
    unsigned char *okd;         /* okd[n] = 1 once answered ok */
    long ok, dups, indeterminate, unavailable, overloaded, noreply, connects;
    long fails;                 /* all failed tries */
    long false_refusals;        /* dup:true after only unavailable/overloaded */
    char refused_list[256];
    char why[3][160];           /* the first message of each error code seen */
    long long max_reply_ms;     /* slowest reply seen */
    long long mark, back;       /* back: first ok of a pub sent after mark */
} tr_pubwin;

typedef struct tr_consumer {
    sb_client *c;
    const char *stream;
    long long sub;
    unsigned short *seen;       /* deliveries per n */
    long distinct, deliveries, redeliveries, subs, breaks, bad;
} tr_consumer;

typedef struct traffic {
    tr_pubwin w;
    tr_consumer k;
    long long t0;               /* traffic_run() started */
    long long t_fault;          /* set by the fault when it strikes */
    long long t_first_fail;     /* the first failed try after t_fault */
    char note[200];             /* the fault's progress, for a timeout */
    long published;             /* n answered ok */
    long entries, bad, lost, undelivered, stream_dups, extra, twice, dlq;
    char lost_list[512], undel_list[512];
} traffic;

/* The test's fault, called between two rounds of traffic (now: the time
 * after the round).  It sets t->t_fault when it strikes, and may set
 * t->w.mark itself (back = the first ok of a pub sent after the mark). */
typedef void (*traffic_fault)(traffic *t, void *ctx, long long now);

/* A publisher and a subscribed consumer on stream (fails if the consumer
 * cannot subscribe). */
void  traffic_open(traffic *t, const char *stream);
/* One round of both: (re)sends what is due, new numbers too while more,
 * takes the replies and deliveries.  Returns the pubs still open. */
int   traffic_step(traffic *t, int more);
/* Rounds until 3 s after the daemon works again (w.back), then until every
 * pub still open is ok; fault between the rounds.  After t_fault, the first
 * failed try sets the mark (replies to pubs stored before the fault may
 * come after that failure).  Fails unless the daemon works again within
 * TR_PHASE_MS; name is for the messages. */
void  traffic_run(traffic *t, const char *name, traffic_fault fault, void *ctx);
/* kill -9 of p with pubs in flight: the free slots of the window are filled
 * and sent, and p dies 1 ms later, while the daemon has them at Redis. */
void  traffic_kill(traffic *t, h_proc *p);
/* Consumes until every n answered ok is delivered (or 20 s), then counts
 * the entries of stream key on port (an audit group that never reads keeps
 * them all) and the length of key:dlq. */
void  traffic_count(traffic *t, int port, const char *key);
/* The figures, for the test's line on stderr (malloc'd). */
char *traffic_figures(const traffic *t);
/* Fails unless something was published and every n answered ok is stored
 * (on where) and delivered, with no unexpected data. */
void  traffic_verdict(traffic *t, const char *where);
/* Fails if a pub answered unavailable or overloaded ("not stored") was
 * stored: its retry got dup:true. */
void  traffic_verdict_refusals(traffic *t);
void  traffic_close(traffic *t);

/* Counts the entries of stream key on port by their data (an integer):
 * counts[n]++ for each, *bad for other data.  Returns the number of
 * entries, or -1 if the server does not answer (or answers an error:
 * MOVED, ...). */
long  tr_stream_counts(int port, const char *key, unsigned short *counts, long max, long *bad);

#endif
