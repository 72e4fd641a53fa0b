/*
 * redis.c: Redis links over hiredis async + libevent.  Each link runs its
 * own handshake before it counts as up; every command callback goes through
 * redis_reply_cb, which keeps the inflight count and passes NULL replies on
 * so callers can tell "not stored" from "unknown".
 */
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "log.h"
#include "metrics.h"
#include "redis.h"

#define REDIS_BACKOFF_MIN_MS 100
#define REDIS_BACKOFF_MAX_MS 5000
#define REDIS_MAX_HOPS       5	/* MOVED/ASK redirections of one command */
#define REDIS_TRYAGAIN_MS    50	/* TRYAGAIN: a slot's keys are mid-migration */
#define REDIS_TRYAGAIN_MAX   40	/* so about 2 s of retries */

struct redis_link {
	struct redis_link *next;	/* every link, for a switch of master */
	char               name[64];
	struct event_base *base;
	redisAsyncContext *ac;
	enum redis_state   state;
	size_t             inflight;
	int                failures;	/* consecutive, for backoff */
	struct event      *timer;	/* reconnect or connect timeout */
	redis_state_cb    *on_state;
	void              *arg;
	char               host[256];	/* own address; "" = the shared one */
	int                port;
	redis_redirect_cb *redirect;	/* cluster: where MOVED/ASK lead */
	struct redis_call *retry, **retry_tail;	/* answered TRYAGAIN, waiting */
	struct event      *retry_ev;
};

struct redis_call {
	struct redis_link *link;
	redis_cb          *cb;
	void              *arg;
	char              *cmd;		/* kept for a redirection, or NULL */
	size_t             cmd_len;
	int                hops, tries;
	int                asking;	/* sent after ASKING (an ASK answer) */
	int                ordered;	/* never retried: later ones would overtake it */
	struct redis_call *next;	/* in its link's retry list */
};

static struct redis_settings {
	char  host[256];
	int   port;
	char *user, *password;
	int   db;
	long  connect_timeout_ms;
} redis_settings = { "127.0.0.1", 6379, NULL, NULL, 0, 2000 };

static int redis_nlinks;
static struct redis_link *redis_links;

/* Every command needs a call record: keep freed ones for reuse (bounded). */
#define REDIS_CALL_CACHE 4096
static struct redis_call *redis_call_cache[REDIS_CALL_CACHE];
static size_t redis_ncached;

static struct redis_call *
redis_call_new(struct redis_link *l, redis_cb *cb, void *arg)
{
	struct redis_call *call = redis_ncached > 0 ? redis_call_cache[--redis_ncached] :
	    malloc(sizeof(*call));

	if (call != NULL)
		*call = (struct redis_call){ .link = l, .cb = cb, .arg = arg };
	return call;
}

static void
redis_call_free(struct redis_call *call)
{
	redisFreeCommand(call->cmd);
	if (redis_ncached < REDIS_CALL_CACHE)
		redis_call_cache[redis_ncached++] = call;
	else
		free(call);
}

static void redis_schedule(struct redis_link *l, long ms);
static void redis_disconnect(struct redis_link *l, const char *why, int deliberate);

static void
redis_lost(struct redis_link *l, const char *why)
{
	redis_disconnect(l, why, 0);
}

/* Where l connects: its own address, else the shared one. */
static const char *
redis_host(const struct redis_link *l)
{
	return l->host[0] != '\0' ? l->host : redis_settings.host;
}

static int
redis_port(const struct redis_link *l)
{
	return l->host[0] != '\0' ? l->port : redis_settings.port;
}

void
redis_configure(const struct config *cfg)
{
	/* With Sentinel the master is unknown until a sentinel names it; on a
	 * cluster each link gets its node's address. */
	snprintf(redis_settings.host, sizeof(redis_settings.host), "%s",
	    cfg->sentinels != NULL || cfg->cluster != NULL ? "" : cfg->redis.host);
	redis_settings.port = cfg->redis.port;
	free(redis_settings.user);
	redis_settings.user = cfg->redis.user ? strdup(cfg->redis.user) : NULL;
	redis_set_password(cfg->redis.password);
	redis_settings.db = cfg->redis.db;
	redis_settings.connect_timeout_ms = cfg->connect_timeout_ms;
}

void
redis_set_password(const char *password)
{
	free(redis_settings.password);
	redis_settings.password = password ? strdup(password) : NULL;
}

/* At exit: give the cached call records back. */
void
redis_cleanup(void)
{
	while (redis_ncached > 0)
		free(redis_call_cache[--redis_ncached]);
	free(redis_settings.user);
	free(redis_settings.password);
	redis_settings.user = redis_settings.password = NULL;
}

int
redis_link_count(void)
{
	return redis_nlinks;
}

int
redis_reply_is_error(const redisReply *r)
{
	return r == NULL || r->type == REDIS_REPLY_ERROR;
}

int
redis_reply_error_is(const redisReply *r, const char *prefix)
{
	return r != NULL && r->type == REDIS_REPLY_ERROR &&
	    strncmp(r->str, prefix, strlen(prefix)) == 0;
}

int
redis_reply_transient(const redisReply *r)
{
	static const char *const moving[] = { "TRYAGAIN", "CLUSTERDOWN", "MOVED ", "ASK ",
	    "LOADING", "MASTERDOWN", "READONLY", "UNBLOCKED" };

	for (size_t i = 0; i < sizeof(moving) / sizeof(moving[0]); i++)
		if (redis_reply_error_is(r, moving[i]))
			return 1;
	return 0;
}

static void
redis_set_state(struct redis_link *l, enum redis_state st)
{
	int was_up = l->state == REDIS_UP, counted = l->state == REDIS_CONNECTING ||
	    l->state == REDIS_HANDSHAKE || l->state == REDIS_UP;
	int counts = st == REDIS_CONNECTING || st == REDIS_HANDSHAKE || st == REDIS_UP;

	redis_nlinks += counts - counted;
	l->state = st;
	if (was_up != (st == REDIS_UP) && l->on_state != NULL)
		l->on_state(l, st == REDIS_UP, l->arg);
}

static int redis_follow(struct redis_call *call, const redisReply *r);
static int redis_try_again(struct redis_call *call, const redisReply *r);

/* Commands sent and not yet answered (retries waiting count too, so that
 * a graceful stop waits for them). */
static void
redis_inflight(struct redis_link *l, int more)
{
	if (more) {
		l->inflight++;
		metrics.redis_inflight++;
	} else {
		l->inflight--;
		metrics.redis_inflight--;
	}
}

static void
redis_answer(struct redis_call *call, redisReply *r)
{
	redis_inflight(call->link, 0);
	if (call->cb != NULL)
		call->cb(r, call->arg);
	redis_call_free(call);
}

static void
redis_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
	struct redis_call *call = privdata;

	(void)ac;
	if (call->cmd != NULL && (redis_follow(call, r) == 0 || redis_try_again(call, r) == 0))
		return;		/* sent on to the node that has the slot, or later */
	redis_answer(call, r);
}

/* Decimal digits of v at p (p may be NULL: only counted). */
static size_t
redis_put_uint(char *p, size_t v)
{
	char tmp[24];
	size_t n = 0;

	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	for (size_t i = 0; p != NULL && i < n; i++)
		p[i] = tmp[n - 1 - i];
	return n;
}

/* "*N\r\n" or "$N\r\n" at p (NULL: only counted). */
static size_t
redis_put_header(char *p, char kind, size_t n)
{
	size_t len = redis_put_uint(p != NULL ? p + 1 : NULL, n);

	if (p != NULL) {
		p[0] = kind;
		p[len + 1] = '\r';
		p[len + 2] = '\n';
	}
	return len + 3;
}

/* The hot path's formatter, the same bytes as hiredis'
 * redisFormatCommandArgv() without its printf per argument: one pass to
 * size, one to write. */
int
redis_format_argv(char **out, int argc, const char **argv, const size_t *argvlen)
{
	size_t total, at;
	char *cmd;

	*out = NULL;
	if (argc < 0)
		return -1;
	total = redis_put_header(NULL, '*', (size_t)argc);
	for (int i = 0; i < argc; i++) {
		size_t len = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
		total += redis_put_header(NULL, '$', len) + len + 2;
	}
	if (total > INT_MAX || (cmd = malloc(total + 1)) == NULL)
		return -1;
	at = redis_put_header(cmd, '*', (size_t)argc);
	for (int i = 0; i < argc; i++) {
		size_t len = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
		at += redis_put_header(cmd + at, '$', len);
		memcpy(cmd + at, argv[i], len);
		at += len;
		cmd[at++] = '\r';
		cmd[at++] = '\n';
	}
	cmd[at] = '\0';
	*out = cmd;
	return (int)total;
}

/* Queue a formatted command on l; the call is answered through
 * redis_reply_cb. */
static int
redis_send_formatted(struct redis_link *l, struct redis_call *call, const char *cmd,
    size_t len)
{
	if (redisAsyncFormattedCommand(l->ac, redis_reply_cb, call, cmd, len) != REDIS_OK)
		return -1;
	call->link = l;
	redis_inflight(l, 1);
	return 0;
}

/* Send cmd (len bytes, or len < 0: formatting failed) for call.  A link
 * that follows redirections keeps the command until it is answered;
 * hiredis has its own copy otherwise. */
static int
redis_queue(struct redis_link *l, struct redis_call *call, char *cmd, int len)
{
	int rc = -1;

	if (len >= 0 && l->redirect != NULL) {
		call->cmd = cmd;
		call->cmd_len = (size_t)len;
		cmd = NULL;
	}
	if (len >= 0)
		rc = redis_send_formatted(l, call, call->cmd != NULL ? call->cmd : cmd,
		    (size_t)len);
	redisFreeCommand(cmd);
	if (rc != 0)
		redis_call_free(call);
	return rc;
}

/* Also during the handshake: callers check the state. */
static int
redis_send(struct redis_link *l, redis_cb *cb, void *arg, int argc,
    const char **argv, const size_t *argvlen, int ordered)
{
	struct redis_call *call;
	char *cmd = NULL;
	int len;

	if (l->ac == NULL || (call = redis_call_new(l, cb, arg)) == NULL)
		return -1;
	call->ordered = ordered;
	len = redis_format_argv(&cmd, argc, argv, argvlen);
	return redis_queue(l, call, cmd, len);
}

int
redis_cmd_argv(struct redis_link *l, redis_cb *cb, void *arg, int argc,
    const char **argv, const size_t *argvlen)
{
	if (!redis_link_up(l))
		return -1;
	return redis_send(l, cb, arg, argc, argv, argvlen, 0);
}

int
redis_cmd_argv_ordered(struct redis_link *l, redis_cb *cb, void *arg, int argc,
    const char **argv, const size_t *argvlen)
{
	if (!redis_link_up(l))
		return -1;
	return redis_send(l, cb, arg, argc, argv, argvlen, 1);
}

int
redis_cmd(struct redis_link *l, redis_cb *cb, void *arg, const char *fmt, ...)
{
	struct redis_call *call;
	char *cmd = NULL;
	va_list ap;
	int len;

	if (l == NULL || l->state != REDIS_UP || (call = redis_call_new(l, cb, arg)) == NULL)
		return -1;
	va_start(ap, fmt);
	len = redisvFormatCommand(&cmd, fmt, ap);
	va_end(ap);
	return redis_queue(l, call, cmd, len);
}

/* "MOVED 3999 127.0.0.1:6381" or "ASK 3999 127.0.0.1:6381": the slot and
 * the node that serves it. */
static int
redis_parse_redirect(const redisReply *r, int *ask, int *slot, char *host,
    size_t hostlen, int *port)
{
	const char *p, *colon;
	char *end;
	long n;

	if (redis_reply_error_is(r, "MOVED "))
		*ask = 0;
	else if (redis_reply_error_is(r, "ASK "))
		*ask = 1;
	else
		return -1;
	p = strchr(r->str, ' ') + 1;
	n = strtol(p, &end, 10);
	if (end == p || *end != ' ' || n < 0 || n > 16383)
		return -1;
	*slot = (int)n;
	p = end + 1;
	if ((colon = strrchr(p, ':')) == NULL || colon == p || (size_t)(colon - p) >= hostlen)
		return -1;	/* no host (unknown endpoint): follow the next map instead */
	memcpy(host, p, (size_t)(colon - p));
	host[colon - p] = '\0';
	n = strtol(colon + 1, &end, 10);
	if (*end != '\0' || n <= 0 || n > 65535)
		return -1;
	*port = (int)n;
	return 0;
}

/* ASKING holds for the next command on that connection only. */
static int
redis_send_asking(struct redis_link *l)
{
	static const char asking[] = "*1\r\n$6\r\nASKING\r\n";

	return redisAsyncFormattedCommand(l->ac, NULL, NULL, asking, sizeof(asking) - 1) ==
	    REDIS_OK ? 0 : -1;
}

/* A retry that cannot be sent is answered as Redis last answered it:
 * nothing was done. */
static void
redis_answer_tryagain(struct redis_call *call)
{
	static char msg[] = "TRYAGAIN the slot's keys are still split between two nodes";
	redisReply r = { .type = REDIS_REPLY_ERROR, .str = msg, .len = sizeof(msg) - 1 };

	redis_answer(call, &r);
}

/* The TRYAGAIN wait is over: send again, in the order they were answered,
 * where they were sent. */
static void
redis_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct redis_link *l = arg;
	struct redis_call *call, *list = l->retry;

	(void)fd;
	(void)what;
	l->retry = NULL;
	l->retry_tail = &l->retry;
	while ((call = list) != NULL) {
		list = call->next;
		call->next = NULL;
		if (l->state != REDIS_UP || (call->asking && redis_send_asking(l) != 0) ||
		    redisAsyncFormattedCommand(l->ac, redis_reply_cb, call, call->cmd,
		    call->cmd_len) != REDIS_OK)
			redis_answer_tryagain(call);
	}
}

/* Retries still waiting when their link closes for good. */
static void
redis_retry_cancel(struct redis_link *l)
{
	struct redis_call *call;

	event_del(l->retry_ev);
	while ((call = l->retry) != NULL) {
		l->retry = call->next;
		redis_answer_tryagain(call);
	}
	l->retry_tail = &l->retry;
}

/* TRYAGAIN: a multi-key command while its slot migrates and its keys are
 * split between the nodes.  Nothing was done; wait for the move to end,
 * unless the command is ordered (a pub: one sent after it would be stored
 * first). */
static int
redis_try_again(struct redis_call *call, const redisReply *r)
{
	struct redis_link *l = call->link;
	struct timeval tv = { 0, REDIS_TRYAGAIN_MS * 1000 };

	if (!redis_reply_error_is(r, "TRYAGAIN") || call->ordered ||
	    call->tries >= REDIS_TRYAGAIN_MAX)
		return -1;
	if (!event_pending(l->retry_ev, EV_TIMEOUT, NULL) && event_add(l->retry_ev, &tv) != 0)
		return -1;
	call->tries++;
	*l->retry_tail = call;
	l->retry_tail = &call->next;
	return 0;	/* still counted in flight */
}

/* Send a command that was answered MOVED or ASK to the node named; 0 when
 * it went (the caller hears the final answer), -1 to answer the error. */
static int
redis_follow(struct redis_call *call, const redisReply *r)
{
	struct redis_link *from = call->link, *to;
	char host[256];
	int ask, slot, port;

	if (r == NULL || r->type != REDIS_REPLY_ERROR || call->hops >= REDIS_MAX_HOPS ||
	    from->redirect == NULL ||
	    redis_parse_redirect(r, &ask, &slot, host, sizeof(host), &port) != 0)
		return -1;
	to = from->redirect(from, slot, host, port, ask);
	if (to == NULL || to->state != REDIS_UP)
		return -1;
	if (ask && redis_send_asking(to) != 0)
		return -1;
	if (redis_send_formatted(to, call, call->cmd, call->cmd_len) != 0)
		return -1;
	redis_inflight(from, 0);	/* counted on to now */
	call->asking = ask;
	call->hops++;
	metrics.redis_redirects++;
	log_debug("redis", 0, "%s: %s slot %d to %s:%d", from->name, ask ? "ASK" : "MOVED",
	    slot, host, port);
	return 0;
}

/* The handshake's last reply: PING answered means the server serves. */
static void
redis_handshake_done(redisReply *r, void *arg)
{
	struct redis_link *l = arg;

	if (r == NULL || l->state != REDIS_HANDSHAKE)
		return;
	if (redis_reply_is_error(r)) {
		redis_lost(l, r->str);
		return;
	}
	event_del(l->timer);
	l->failures = 0;
	log_info("redis", 0, "%s: connected to %s:%d", l->name, redis_host(l), redis_port(l));
	redis_set_state(l, REDIS_UP);
}

static void
redis_handshake_step(redisReply *r, void *arg)
{
	struct redis_link *l = arg;

	if (r != NULL && redis_reply_is_error(r) && l->state == REDIS_HANDSHAKE)
		redis_lost(l, r->str);
}

static void
redis_connected(const redisAsyncContext *ac, int status)
{
	struct redis_link *l = ac->data;
	char db[16];

	if (status != REDIS_OK) {
		/* hiredis frees the context after this callback. */
		l->ac = NULL;
		redis_lost(l, ac->errstr);
		return;
	}
	redis_set_state(l, REDIS_HANDSHAKE);
	if (redis_settings.password != NULL) {
		const char *argv[3] = { "AUTH", redis_settings.user, redis_settings.password };
		if (redis_settings.user != NULL)
			redis_send(l, redis_handshake_step, l, 3, argv, NULL, 0);
		else {
			argv[1] = redis_settings.password;
			redis_send(l, redis_handshake_step, l, 2, argv, NULL, 0);
		}
	}
	if (redis_settings.db != 0) {
		const char *argv[2] = { "SELECT", db };
		snprintf(db, sizeof(db), "%d", redis_settings.db);
		redis_send(l, redis_handshake_step, l, 2, argv, NULL, 0);
	}
	{
		const char *argv[1] = { "PING" };
		redis_send(l, redis_handshake_done, l, 1, argv, NULL, 0);
	}
}

static void
redis_disconnected(const redisAsyncContext *ac, int status)
{
	struct redis_link *l = ac->data;

	(void)status;
	l->ac = NULL;	/* hiredis frees it */
	if (l->state != REDIS_CLOSED)
		redis_lost(l, ac->errstr[0] ? ac->errstr : "connection closed");
}

static void
redis_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct redis_link *l = arg;

	(void)fd;
	(void)what;
	if (l->state == REDIS_CONNECTING || l->state == REDIS_HANDSHAKE)
		redis_lost(l, "connect timeout");
	else if (l->state == REDIS_DOWN)
		redis_link_start(l);
}

/* Backoff: 100 ms doubling to 5 s, with up to 50% random jitter so that
 * many links (and daemons) do not reconnect in lockstep. */
static long
redis_backoff_ms(int failures)
{
	long ms = REDIS_BACKOFF_MIN_MS;

	for (int i = 1; i < failures && ms < REDIS_BACKOFF_MAX_MS; i++)
		ms *= 2;
	if (ms > REDIS_BACKOFF_MAX_MS)
		ms = REDIS_BACKOFF_MAX_MS;
	return ms / 2 + random() % (ms / 2 + 1);
}

/* Drop the connection and reconnect later; deliberate: our doing (a new
 * address, a stop), not a failure. */
static void
redis_disconnect(struct redis_link *l, const char *why, int deliberate)
{
	redisAsyncContext *ac = l->ac;

	if (l->state == REDIS_CLOSED || l->state == REDIS_DOWN)
		return;
	if (deliberate)
		log_info("redis", 0, "%s: disconnecting: %s", l->name, why);
	else if (l->state == REDIS_UP || l->failures == 0)
		log_warn("redis", 0, "%s: connection lost: %s", l->name, why ? why : "?");
	else
		log_debug("redis", 0, "%s: connect failed: %s", l->name, why ? why : "?");
	l->failures++;
	redis_set_state(l, REDIS_DOWN);
	if (ac != NULL) {
		l->ac = NULL;
		ac->onDisconnect = NULL;
		redisAsyncFree(ac);	/* pending callbacks get NULL */
	}
	redis_schedule(l, redis_backoff_ms(l->failures));
}

static void
redis_schedule(struct redis_link *l, long ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	if (event_add(l->timer, &tv) != 0)
		log_err("redis", 0, "%s: cannot arm timer", l->name);
}

struct redis_link *
redis_link_new(struct event_base *base, const char *name, redis_state_cb *on_state,
    void *arg)
{
	struct redis_link *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return NULL;
	snprintf(l->name, sizeof(l->name), "%s", name);
	l->base = base;
	l->on_state = on_state;
	l->arg = arg;
	l->state = REDIS_DOWN;
	l->timer = evtimer_new(base, redis_timer_cb, l);
	l->retry_ev = evtimer_new(base, redis_retry_cb, l);
	l->retry_tail = &l->retry;
	if (l->timer == NULL || l->retry_ev == NULL) {
		if (l->timer != NULL)
			event_free(l->timer);
		if (l->retry_ev != NULL)
			event_free(l->retry_ev);
		free(l);
		return NULL;
	}
	l->next = redis_links;
	redis_links = l;
	return l;
}

void
redis_link_start(struct redis_link *l)
{
	redisAsyncContext *ac;

	if (l->state != REDIS_DOWN || redis_host(l)[0] == '\0')
		return;		/* or waiting for Sentinel: redis_set_master starts it */
	if (l->failures > 0)
		metrics.redis_reconnects++;
	log_debug("redis", 0, "%s: connecting to %s:%d (attempt %d)", l->name, redis_host(l),
	    redis_port(l), l->failures + 1);
	ac = redisAsyncConnect(redis_host(l), redis_port(l));
	if (ac == NULL || ac->err) {
		log_warn("redis", 0, "%s: connect: %s", l->name, ac ? ac->errstr : "out of memory");
		if (ac != NULL)
			redisAsyncFree(ac);
		l->failures++;
		redis_schedule(l, redis_backoff_ms(l->failures));
		return;
	}
	ac->data = l;
	l->ac = ac;
	redisLibeventAttach(ac, l->base);
	redisAsyncSetConnectCallback(ac, redis_connected);
	redisAsyncSetDisconnectCallback(ac, redis_disconnected);
	redis_set_state(l, REDIS_CONNECTING);
	redis_schedule(l, redis_settings.connect_timeout_ms);
}

void
redis_link_reset(struct redis_link *l, const char *why)
{
	redis_disconnect(l, why, 1);
}

void
redis_link_set_addr(struct redis_link *l, const char *host, int port)
{
	if (strcmp(l->host, host) == 0 && l->port == port)
		return;
	snprintf(l->host, sizeof(l->host), "%s", host);
	l->port = port;
	l->failures = 0;
	if (l->state == REDIS_DOWN)
		redis_schedule(l, 0);
	else if (l->state != REDIS_CLOSED)
		redis_disconnect(l, "moving to another server", 1);
}

int
redis_link_same_server(const struct redis_link *a, const struct redis_link *b)
{
	return a != NULL && b != NULL && redis_port(a) == redis_port(b) &&
	    strcmp(redis_host(a), redis_host(b)) == 0;
}

void
redis_link_redirects(struct redis_link *l, redis_redirect_cb *where)
{
	l->redirect = where;
}

void
redis_link_stop(struct redis_link *l)
{
	if (l->state == REDIS_CLOSED || l->state == REDIS_DOWN) {
		event_del(l->timer);
		return;
	}
	redis_disconnect(l, "no longer needed", 1);
	event_del(l->timer);
	l->failures = 0;
}

static void
redis_link_destroy(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	free(arg);
}

void
redis_link_free(struct redis_link *l)
{
	redisAsyncContext *ac;

	if (l == NULL)
		return;
	ac = l->ac;
	l->on_state = NULL;
	for (struct redis_link **pp = &redis_links; *pp != NULL; pp = &(*pp)->next)
		if (*pp == l) {
			*pp = l->next;
			break;
		}
	redis_set_state(l, REDIS_CLOSED);
	l->ac = NULL;
	if (ac != NULL) {
		ac->onDisconnect = NULL;
		redisAsyncFree(ac);
	}
	redis_retry_cancel(l);
	event_free(l->retry_ev);
	event_free(l->timer);
	l->timer = NULL;
	/* hiredis defers the free when called from one of its callbacks, and
	 * then answers the pending commands later: free the link after. */
	if (event_base_once(l->base, -1, EV_TIMEOUT, redis_link_destroy, l, NULL) != 0)
		free(l);
}

/* Sentinel named a (new) master: every link reconnects there.  Commands
 * in flight on the old one are answered NULL (indeterminate). */
void
redis_set_master(const char *host, int port)
{
	if (strcmp(host, redis_settings.host) == 0 && port == redis_settings.port)
		return;
	if (redis_settings.host[0] == '\0')
		log_info("redis", 0, "master is %s:%d", host, port);
	else
		log_warn("redis", 0, "master is now %s:%d (was %s:%d)", host, port,
		    redis_settings.host, redis_settings.port);
	snprintf(redis_settings.host, sizeof(redis_settings.host), "%s", host);
	redis_settings.port = port;
	for (struct redis_link *l = redis_links; l != NULL; l = l->next) {
		if (l->state == REDIS_DOWN) {
			l->failures = 0;
			redis_schedule(l, 0);
		} else
			redis_disconnect(l, "master changed", 1);
	}
}

int
redis_link_up(const struct redis_link *l)
{
	return l != NULL && l->state == REDIS_UP;
}

size_t
redis_link_inflight(const struct redis_link *l)
{
	return l != NULL ? l->inflight : 0;
}

const char *
redis_link_name(const struct redis_link *l)
{
	return l->name;
}
