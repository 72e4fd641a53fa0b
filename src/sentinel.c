/*
 * sentinel.c: the master's address comes from Redis Sentinel.  A query
 * connection asks one sentinel (rotating through the list on failure)
 * "SENTINEL get-master-addr-by-name" at start and every
 * SENTINEL_QUERY_MS; a watch connection stays subscribed to
 * +switch-master so a failover is followed at once.  Either answer goes to
 * redis_set_master(), which moves every Redis link to the new master.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "config.h"
#include "log.h"
#include "redis.h"
#include "sentinel.h"

#define SENTINEL_QUERY_MS   5000	/* re-ask, in case a message was missed */
#define SENTINEL_RETRY_MS   500		/* next sentinel after a failure */

static struct {
	struct event_base *base;
	struct config_hostport addr[CONFIG_MAX_HOSTS];
	int                n, cur;
	char              *master;
	redisAsyncContext *query, *watch;
	int                query_answered;
	struct event      *timer;
} S;

static void sentinel_schedule(long ms);

static redisAsyncContext *
sentinel_connect(redisDisconnectCallback *on_disconnect)
{
	redisAsyncContext *ac = redisAsyncConnect(S.addr[S.cur].host, S.addr[S.cur].port);

	if (ac == NULL || ac->err) {
		if (ac != NULL)
			redisAsyncFree(ac);
		return NULL;
	}
	redisLibeventAttach(ac, S.base);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	return ac;
}

static void
sentinel_next(const char *why)
{
	log_warn("sentinel", 0, "%s:%d: %s; trying the next sentinel", S.addr[S.cur].host,
	    S.addr[S.cur].port, why);
	S.cur = (S.cur + 1) % S.n;
}

static void
sentinel_watch_gone(const redisAsyncContext *ac, int status)
{
	(void)ac;
	(void)status;
	S.watch = NULL;		/* the next timer tick subscribes again */
}

/* ["message", "+switch-master", "NAME OLDIP OLDPORT NEWIP NEWPORT"] */
static void
sentinel_message(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *m = r;
	char name[256], oldip[256], newip[256];
	int oldport, newport;

	(void)ac;
	(void)privdata;
	if (m == NULL || m->type != REDIS_REPLY_ARRAY || m->elements != 3 ||
	    m->element[2]->type != REDIS_REPLY_STRING)
		return;
	if (sscanf(m->element[2]->str, "%255s %255s %d %255s %d", name, oldip, &oldport,
	    newip, &newport) == 5 && strcmp(name, S.master) == 0) {
		log_info("sentinel", 0, "+switch-master: %s from %s:%d to %s:%d", name, oldip,
		    oldport, newip, newport);
		redis_set_master(newip, newport);
	}
}

static void
sentinel_query_gone(const redisAsyncContext *ac, int status)
{
	(void)ac;
	(void)status;
	S.query = NULL;
}

static void
sentinel_answer(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *a = r;

	(void)privdata;
	if (a != NULL && a->type == REDIS_REPLY_ARRAY && a->elements == 2 &&
	    a->element[0]->type == REDIS_REPLY_STRING &&
	    a->element[1]->type == REDIS_REPLY_STRING) {
		S.query_answered = 1;
		redis_set_master(a->element[0]->str, atoi(a->element[1]->str));
		if (S.watch == NULL && (S.watch = sentinel_connect(sentinel_watch_gone)) != NULL)
			redisAsyncCommand(S.watch, sentinel_message, NULL, "SUBSCRIBE +switch-master");
	} else if (a != NULL)
		sentinel_next(a->type == REDIS_REPLY_ERROR ? a->str : "does not know the master");
	if (a != NULL)
		redisAsyncDisconnect(ac);
}

static void
sentinel_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (S.query != NULL) {		/* no answer in time */
		redisAsyncFree(S.query);
		S.query = NULL;
		sentinel_next("no answer");
	}
	S.query_answered = 0;
	if ((S.query = sentinel_connect(sentinel_query_gone)) == NULL ||
	    redisAsyncCommand(S.query, sentinel_answer, NULL,
	    "SENTINEL get-master-addr-by-name %s", S.master) != REDIS_OK) {
		sentinel_next("cannot connect");
		sentinel_schedule(SENTINEL_RETRY_MS);
		return;
	}
	sentinel_schedule(SENTINEL_QUERY_MS);
}

static void
sentinel_schedule(long ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	event_add(S.timer, &tv);
}

int
sentinel_start(struct event_base *base, const struct config *cfg)
{
	if (cfg->sentinels == NULL)
		return 0;
	memset(&S, 0, sizeof(S));
	S.base = base;
	if ((S.n = config_parse_hostlist(cfg->sentinels, S.addr, CONFIG_MAX_HOSTS)) < 0) {
		log_err("sentinel", 0, "bad sentinel list %s", cfg->sentinels);
		return -1;
	}
	if ((S.master = strdup(cfg->master_name)) == NULL || (S.timer = evtimer_new(base, sentinel_tick, NULL)) == NULL)
		return -1;
	log_info("sentinel", 0, "asking %d sentinels for master %s", S.n, S.master);
	sentinel_tick(-1, 0, NULL);
	return 0;
}

void
sentinel_stop(void)
{
	if (S.timer == NULL)
		return;
	event_free(S.timer);
	if (S.query != NULL)
		redisAsyncFree(S.query);
	if (S.watch != NULL)
		redisAsyncFree(S.watch);
	free(S.master);
	memset(&S, 0, sizeof(S));
}
