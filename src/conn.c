/*
 * conn.c: client connections on the loop.
 *
 * Input is read into one shared scratch buffer; only the partial line left
 * at the end of a read is copied into the connection (so 10,000 idle
 * connections hold no input memory).  Each complete line is parsed and
 * handed to the broker with a reply sequence number; replies leave in
 * sequence order (see conn.h).  Reading stops while a connection has
 * max_pending_requests replies outstanding or its output is over the limit,
 * so a client that pipelines without reading cannot grow our buffers.
 * Write interest is registered only while output is queued.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "auth.h"
#include "broker.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define CONN_ACCEPT_BACKOFF_MS 100	/* after EMFILE/ENFILE */
#define CONN_DRAIN_TIMEOUT_MS  2000	/* flushing "bye" before close */
#define CONN_MAX_LISTENERS     2
#define CONN_IDLE_CHECK_MS     1000

struct listener {
	int           fd;
	struct event *ev;
	struct event *backoff;
};

static struct {
	struct event_base   *base;
	const struct config *cfg;
	struct listener      listeners[CONN_MAX_LISTENERS];
	int                  nlisteners;
	struct idmap         byid;
	struct conn         *all;
	size_t               count;
	uint64_t             next_id;
	const struct auth_table *auth;	/* NULL: no authentication */
	struct event        *idle_timer;
	char                *unix_path;	/* the socket we bound, to unlink */
	char                 scratch[CONN_READ_CHUNK];
	struct evbuffer     *tmp;
} C;

static void conn_read_cb(evutil_socket_t fd, short what, void *arg);
static void conn_write_cb(evutil_socket_t fd, short what, void *arg);
static void conn_process(struct conn *c, const char *buf, size_t len);
static void conn_update_read(struct conn *c);
static void conn_process_kept(struct conn *c);

/* Once a second.  idle_timeout_ms: a connection that sent nothing for that
 * long and holds no subscription (a consumer may wait quietly for rare
 * events) is closed with bye "idle".  slow_consumer_timeout_ms: one whose
 * output is over half of output_buffer_limit (it is fed no more) and has
 * not moved for that long has stopped reading; it is closed, and what it
 * held unacknowledged goes back to its groups now, not at the deadline. */
static void
conn_timeouts_check(evutil_socket_t fd, short what, void *arg)
{
	uint64_t now = util_now_ns(), idle, slow;
	struct conn *c, *next;

	(void)fd;
	(void)what;
	(void)arg;
	if (C.cfg == NULL)
		return;
	idle = (uint64_t)C.cfg->idle_timeout_ms * 1000000ull;
	slow = (uint64_t)C.cfg->slow_consumer_timeout_ms * 1000000ull;
	for (c = C.all; c != NULL; c = next) {
		next = c->next;
		if (c->state != CONN_OPEN)
			continue;
		if (slow > 0 && conn_output_full(c) && now - c->out_moved_ns > slow) {
			metrics.slow_consumer_closes++;
			conn_close(c, "slow_consumer", 0);
		} else if (idle > 0 && c->subs == NULL && conn_pending_replies(c) == 0 &&
		    now - c->last_active_ns > idle) {
			metrics.idle_closes++;
			conn_close(c, "idle", 1);
		}
	}
}

int
conn_init(struct event_base *base)
{
	struct timeval tv = { CONN_IDLE_CHECK_MS / 1000, 0 };

	memset(&C, 0, sizeof(C));
	C.base = base;
	if (idmap_init(&C.byid, 16384) != 0 || (C.tmp = evbuffer_new()) == NULL)
		return -1;
	/* Connection numbers name default consumers ("client-N"): start at a
	 * random million so that daemons sharing a Redis do not collide. */
	C.next_id = (uint64_t)(random() % 1000000) * 1000000;
	C.idle_timer = event_new(base, -1, EV_PERSIST, conn_timeouts_check, NULL);
	if (C.idle_timer == NULL || event_add(C.idle_timer, &tv) != 0)
		return -1;
	return 0;
}

void
conn_set_config(const struct config *cfg)
{
	C.cfg = cfg;
}

size_t
conn_count(void)
{
	return C.count;
}

struct conn *
conn_find(uint64_t id)
{
	struct conn *c = idmap_get(&C.byid, id);

	return c != NULL && c->state != CONN_CLOSED ? c : NULL;
}

struct conn *
conn_first(void)
{
	return C.all;
}

size_t
conn_pending_replies(const struct conn *c)
{
	return (size_t)(c->next_seq - c->head_seq);
}

int
conn_over_limit(const struct conn *c)
{
	return evbuffer_get_length(c->out) > (size_t)C.cfg->output_buffer_limit;
}

/* Bytes a connection may still queue before it counts as full. */
size_t
conn_output_room(const struct conn *c)
{
	size_t used = evbuffer_get_length(c->out), soft = (size_t)C.cfg->output_buffer_limit / 2;

	return used < soft ? soft - used : 0;
}

int
conn_output_full(const struct conn *c)
{
	return evbuffer_get_length(c->out) >= (size_t)C.cfg->output_buffer_limit / 2;
}

/* ---- output ---- */

/* Output about to be queued: from empty, it starts moving now (see
 * slow_consumer_timeout_ms). */
static void
conn_output_begins(struct conn *c)
{
	if (evbuffer_get_length(c->out) == 0)
		c->out_moved_ns = util_now_ns();
}

static void
conn_want_write(struct conn *c)
{
	if (c->state != CONN_CLOSED && evbuffer_get_length(c->out) > 0 &&
	    event_add(c->wev, NULL) != 0)
		log_err("conn", c->id, "cannot register write interest");
}

void
conn_write(struct conn *c, struct evbuffer *data)
{
	if (c->state == CONN_CLOSED) {
		evbuffer_drain(data, evbuffer_get_length(data));
		return;
	}
	/* No limit here: the broker checks conn_over_limit() once before the
	 * entries of one read, which go out whole. */
	conn_output_begins(c);
	evbuffer_add_buffer(c->out, data);
	conn_want_write(c);
}

uint64_t
conn_next_seq(struct conn *c)
{
	size_t need = conn_pending_replies(c) + 1;

	if (need > c->nslots) {
		/* Grow the ring, keeping slots at seq % nslots. */
		size_t n = c->nslots ? c->nslots * 2 : 8;
		struct conn_slot *ns = calloc(n, sizeof(*ns));
		if (ns == NULL)
			return UINT64_MAX;
		for (uint64_t s = c->head_seq; s < c->next_seq; s++)
			ns[s % n] = c->slots[s % c->nslots];
		free(c->slots);
		c->slots = ns;
		c->nslots = n;
	}
	c->slots[c->next_seq % c->nslots] = (struct conn_slot){ NULL, 0, 0 };
	return c->next_seq++;
}

void
conn_reply(struct conn *c, uint64_t seq, struct evbuffer *reply)
{
	struct conn_slot *sl;

	if (c->state == CONN_CLOSED || seq < c->head_seq || seq >= c->next_seq) {
		evbuffer_drain(reply, evbuffer_get_length(reply));
		return;
	}
	if (seq != c->head_seq) {
		sl = &c->slots[seq % c->nslots];
		sl->len = evbuffer_get_length(reply);
		sl->text = malloc(sl->len ? sl->len : 1);
		if (sl->text != NULL)
			evbuffer_remove(reply, sl->text, sl->len);
		else {
			evbuffer_drain(reply, sl->len);
			sl->len = 0;
		}
		sl->done = 1;
		return;
	}
	conn_output_begins(c);
	evbuffer_add_buffer(c->out, reply);
	c->head_seq++;
	while (c->head_seq < c->next_seq &&
	    (sl = &c->slots[c->head_seq % c->nslots])->done) {
		evbuffer_add(c->out, sl->text, sl->len);
		free(sl->text);
		*sl = (struct conn_slot){ NULL, 0, 0 };
		c->head_seq++;
	}
	conn_want_write(c);
	if (c->finishing && conn_pending_replies(c) == 0)
		conn_close(c, "client bye", CONN_FLUSH);
	else if (c->read_paused)
		conn_update_read(c);
}

/* The client said bye: read nothing more, close once every reply it is
 * owed has been written. */
void
conn_finish(struct conn *c)
{
	if (c->state != CONN_OPEN)
		return;
	c->finishing = 1;
	event_del(c->rev);
	c->read_paused = 1;
	if (conn_pending_replies(c) == 0)
		conn_close(c, "client bye", CONN_FLUSH);
}

/* ---- close ---- */

static void
conn_free(struct conn *c)
{
	for (uint64_t s = c->head_seq; s < c->next_seq && c->nslots; s++)
		free(c->slots[s % c->nslots].text);
	free(c->slots);
	free(c->inbuf);
	evbuffer_free(c->out);
	event_free(c->rev);
	event_free(c->wev);
	free(c);
}

static void
conn_free_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_free(arg);
}

/* The only teardown path.  notify: send {"op":"bye","reason":..}; with
 * CONN_FLUSH (or notify) the output is flushed first (bounded by
 * CONN_DRAIN_TIMEOUT_MS). */
void
conn_close(struct conn *c, const char *reason, int notify)
{
	if (c->state == CONN_CLOSED)
		return;
	if (notify && c->state == CONN_OPEN) {
		struct timeval tv = { CONN_DRAIN_TIMEOUT_MS / 1000,
		    (CONN_DRAIN_TIMEOUT_MS % 1000) * 1000 };
		log_info("conn", c->id, "closing: %s", reason);
		c->state = CONN_DRAINING;
		broker_conn_closed(c);
		event_del(c->rev);
		if (notify != CONN_FLUSH)
			proto_notice_bye(c->out, reason);
		event_add(c->wev, &tv);
		return;
	}
	if (c->state == CONN_OPEN)
		log_info("conn", c->id, "closed: %s", reason);
	c->state = CONN_CLOSED;
	broker_conn_closed(c);
	event_del(c->rev);
	event_del(c->wev);
	close(c->fd);
	c->fd = -1;
	idmap_del(&C.byid, c->id);
	if (c->prev)
		c->prev->next = c->next;
	else
		C.all = c->next;
	if (c->next)
		c->next->prev = c->prev;
	C.count--;
	metrics.connections = C.count;
	/* Callers up the stack may still look at c: free it from the loop. */
	if (event_base_once(C.base, -1, EV_TIMEOUT, conn_free_cb, c, NULL) != 0)
		log_err("conn", c->id, "cannot schedule free; leaking");
}

static void
conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	int n;

	if (what & EV_TIMEOUT) {
		conn_close(c, "bye not read in time", 0);
		return;
	}
	n = evbuffer_write_atmost(c->out, fd, CONN_WRITE_CHUNK);
	if (n < 0 && errno != EAGAIN && errno != EINTR) {
		conn_close(c, strerror(errno), 0);
		return;
	}
	if (n > 0)
		c->out_moved_ns = util_now_ns();
	if (evbuffer_get_length(c->out) > 0)
		return;		/* EV_PERSIST keeps write interest */
	if (c->state == CONN_DRAINING) {
		conn_close(c, "bye sent", 0);
		return;
	}
	event_del(c->wev);
	if (c->read_paused)
		conn_update_read(c);
	if (c->output_blocked || c->subs != NULL)
		broker_conn_writable(c);
}

/* ---- input ---- */

static int
conn_should_pause(const struct conn *c)
{
	return conn_pending_replies(c) >= (size_t)C.cfg->max_pending_requests ||
	    evbuffer_get_length(c->out) >= (size_t)C.cfg->output_buffer_limit / 2;
}

static void
conn_update_read(struct conn *c)
{
	if (c->state != CONN_OPEN || c->finishing)
		return;
	if (conn_should_pause(c)) {
		if (!c->read_paused) {
			event_del(c->rev);
			metrics.read_pauses++;
		}
		c->read_paused = 1;
		return;
	}
	if (c->read_paused) {
		c->read_paused = 0;
		/* Lines already buffered go first. */
		if (c->inlen > 0) {
			conn_process_kept(c);
			if (c->state != CONN_OPEN || c->read_paused)
				return;
		}
		if (event_add(c->rev, NULL) != 0)
			log_err("conn", c->id, "cannot register read interest");
	}
}

/* Token checks: a hello must name a known token, and with a token file
 * nothing else is served before one; pub and sub need a matching glob. */
static const char *
conn_refusal(struct conn *c, const struct proto_request *req)
{
	if (C.auth == NULL)
		return NULL;
	if (req->op == OP_HELLO) {
		const struct auth_token *tok = req->token ? auth_find(C.auth, req->token) : NULL;
		if (tok == NULL)
			return "unknown or missing token";
		c->token = tok;
		c->authed = 1;
		return NULL;
	}
	if (!c->authed)
		return "authenticate with hello and a token first";
	if (!auth_allows(c->token, req->op, req->stream))
		return req->op == OP_PUB || req->op == OP_REPLAY ?
		    "this token may not publish to that stream" :
		    "this token may not subscribe to that stream";
	return NULL;
}

void
conn_set_auth(const struct auth_table *auth)
{
	struct conn *c, *next;

	/* Connections keep working under the new file unless their token
	 * is gone from it. */
	for (c = C.all; c != NULL; c = next) {
		next = c->next;
		if (c->token == NULL)
			continue;
		c->token = auth ? auth_find(auth, c->token->secret) : NULL;
		if (auth != NULL && c->token == NULL) {
			c->authed = 0;
			conn_close(c, "revoked", 1);
		}
	}
	C.auth = auth;
}

static void
conn_handle_line(struct conn *c, const char *line, size_t len)
{
	const char *refusal;
	struct proto_request req;
	struct proto_error err;
	struct proto_limits lim = { (size_t)C.cfg->max_payload, (size_t)C.cfg->max_batch };
	uint64_t seq = conn_next_seq(c);

	if (seq == UINT64_MAX) {
		conn_close(c, "out of memory", 0);
		return;
	}
	metrics.requests++;
	if (proto_parse_request(line, len, &lim, &req, &err) != 0) {
		log_debug("conn", c->id, "bad request: %s: %s", err.code, err.message);
		if (err.limit != NULL && strcmp(err.limit, "max_batch") == 0)
			metrics.batches_refused++;
		if (req.op == OP_PUB && req.stream != NULL)
			broker_pub_rejected(req.stream, err.code);
		proto_reply_error(C.tmp, err.rid, err.code, err.message);
		conn_reply(c, seq, C.tmp);
	} else if ((refusal = conn_refusal(c, &req)) != NULL) {
		if (req.op == OP_PUB)
			broker_pub_rejected(req.stream, "unauthorized");
		proto_reply_error(C.tmp, req.rid, "unauthorized", refusal);
		conn_reply(c, seq, C.tmp);
	} else
		broker_handle(c, seq, &req);
	proto_request_free(&req);
}

static void
conn_reply_too_long(struct conn *c)
{
	char msg[96];
	uint64_t seq = conn_next_seq(c);

	metrics.lines_too_long++;
	snprintf(msg, sizeof(msg), "line longer than max_line (%ld bytes); skipped",
	    C.cfg->max_line);
	proto_reply_error(C.tmp, NULL, "line_too_long", msg);
	conn_reply(c, seq, C.tmp);
}

/* Keep buf[0..len) for later, bounded by max_line (the framer drops the
 * rest of an over-long line). */
static int
conn_keep(struct conn *c, const char *buf, size_t len)
{
	if (len == 0)
		return 0;
	if (c->inlen + len > c->incap) {
		size_t cap = c->incap ? c->incap : 256;
		char *n;
		while (cap < c->inlen + len)
			cap *= 2;
		if ((n = realloc(c->inbuf, cap)) == NULL)
			return -1;
		c->inbuf = n;
		c->incap = cap;
	}
	memcpy(c->inbuf + c->inlen, buf, len);
	c->inlen += len;
	return 0;
}

/* Frame and handle lines of buf; what is left is kept in c->inbuf. */
static void
conn_process(struct conn *c, const char *buf, size_t len)
{
	size_t off = 0, linelen, used;

	while (off < len && c->state == CONN_OPEN && !c->read_paused) {
		enum proto_frame f = proto_frame_next(&c->framer, buf + off, len - off,
		    (size_t)C.cfg->max_line, &linelen, &used);
		if (f == PROTO_FRAME_NEED_MORE)
			break;
		if (f == PROTO_FRAME_TOO_LONG)
			conn_reply_too_long(c);
		else if (f == PROTO_FRAME_LINE && linelen > 0)
			conn_handle_line(c, buf + off, linelen);
		off += used;
		if (conn_should_pause(c))
			conn_update_read(c);
	}
	if (c->state == CONN_OPEN && conn_keep(c, buf + off, len - off) != 0)
		conn_close(c, "out of memory", 0);
}

/* Frame what was kept from earlier reads (it may leave a new partial). */
static void
conn_process_kept(struct conn *c)
{
	char *buf = c->inbuf;
	size_t len = c->inlen;

	c->inbuf = NULL;
	c->inlen = c->incap = 0;
	conn_process(c, buf, len);
	free(buf);
}

static void
conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	ssize_t n;

	(void)what;
	n = read(fd, C.scratch, sizeof(C.scratch));
	if (n == 0) {
		conn_close(c, "client closed", 0);
		return;
	}
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			conn_close(c, strerror(errno), 0);
		return;
	}
	c->last_active_ns = util_now_ns();
	/* More of a partial line, still no end and within max_line: keep it
	 * without framing the whole again (a line that trickles in would
	 * cost its length squared). */
	if (c->inlen > 0 && memchr(C.scratch, '\n', (size_t)n) == NULL &&
	    c->inlen + (size_t)n <= (size_t)C.cfg->max_line + 1) {
		if (conn_keep(c, C.scratch, (size_t)n) != 0)
			conn_close(c, "out of memory", 0);
		return;
	}
	if (c->inlen == 0) {
		conn_process(c, C.scratch, (size_t)n);
		return;
	}
	/* A partial line was waiting: append, then frame the whole. */
	if (conn_keep(c, C.scratch, (size_t)n) != 0) {
		conn_close(c, "out of memory", 0);
		return;
	}
	conn_process_kept(c);
}

/* ---- accept ---- */

static void
conn_accept_resume(evutil_socket_t fd, short what, void *arg)
{
	struct listener *l = arg;

	(void)fd;
	(void)what;
	if (event_add(l->ev, NULL) != 0)
		log_err("conn", 0, "cannot resume accepting");
}

static void
conn_new(int fd)
{
	struct conn *c = calloc(1, sizeof(*c));
	int one = 1;

	if (c == NULL) {
		close(fd);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->id = ++C.next_id;
	c->out = evbuffer_new();
	c->rev = event_new(C.base, fd, EV_READ | EV_PERSIST, conn_read_cb, c);
	c->wev = event_new(C.base, fd, EV_WRITE | EV_PERSIST, conn_write_cb, c);
	if (c->out == NULL || c->rev == NULL || c->wev == NULL ||
	    idmap_put(&C.byid, c->id, c) != 0 || event_add(c->rev, NULL) != 0) {
		log_err("conn", c->id, "cannot set up connection");
		if (c->out) evbuffer_free(c->out);
		if (c->rev) event_free(c->rev);
		if (c->wev) event_free(c->wev);
		idmap_del(&C.byid, c->id);
		close(fd);
		free(c);
		return;
	}
	c->last_active_ns = util_now_ns();
	c->next = C.all;
	if (C.all)
		C.all->prev = c;
	C.all = c;
	C.count++;
	metrics.connections = C.count;
	metrics.connections_total++;
	log_debug("conn", c->id, "accepted");
}

/* Refuse a client over max_clients: a bye it can read, then close. */
static void
conn_refuse(int fd)
{
	static const char bye[] = "{\"op\":\"bye\",\"reason\":\"max_clients\"}\n";

	metrics.connections_rejected++;
	if (write(fd, bye, sizeof(bye) - 1) < 0)
		log_debug("conn", 0, "refused client did not take its bye");
	close(fd);
}

static void
conn_accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct listener *l = arg;

	(void)what;
	for (int i = 0; i < 64; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				struct timeval tv = { 0, CONN_ACCEPT_BACKOFF_MS * 1000 };
				log_warn("conn", 0, "accept: %s; pausing %d ms", strerror(errno),
				    CONN_ACCEPT_BACKOFF_MS);
				metrics.accept_pauses++;
				event_del(l->ev);
				event_add(l->backoff, &tv);
			}
			return;
		}
		if (C.count >= (size_t)C.cfg->max_clients)
			conn_refuse(fd);
		else
			conn_new(fd);
	}
}

static int
conn_add_listener(int fd)
{
	struct listener *l = &C.listeners[C.nlisteners];

	l->fd = fd;
	l->ev = event_new(C.base, fd, EV_READ | EV_PERSIST, conn_accept_cb, l);
	l->backoff = evtimer_new(C.base, conn_accept_resume, l);
	if (l->ev == NULL || l->backoff == NULL || event_add(l->ev, NULL) != 0)
		return -1;
	C.nlisteners++;
	return 0;
}

static int
conn_listen_tcp(const char *addr)
{
	char host[256], portstr[16];
	struct addrinfo hints = { 0 }, *res = NULL;
	int port, fd = -1, one = 1, rc;

	if (config_split_hostport(addr, host, sizeof(host), &port) != 0) {
		log_err("conn", 0, "bad listen address %s", addr);
		return -1;
	}
	snprintf(portstr, sizeof(portstr), "%d", port);
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((rc = getaddrinfo(host, portstr, &hints, &res)) != 0) {
		log_err("conn", 0, "listen %s: %s", addr, gai_strerror(rc));
		return -1;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
		log_err("conn", 0, "listen %s: %s", addr, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	if (strcmp(host, "127.0.0.1") != 0 && strcmp(host, "::1") != 0 &&
	    strcmp(host, "localhost") != 0 && C.cfg->auth_tokens == NULL)
		log_warn("conn", 0, "listening on %s without auth_tokens: anyone who can "
		    "reach it may publish and consume", addr);
	log_info("conn", 0, "listening on %s", addr);
	return conn_add_listener(fd);
}

static int
conn_listen_unix(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	mode_t old_mask;
	int fd, rc;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		log_err("conn", 0, "unix socket path too long: %s", path);
		return -1;
	}
	strcpy(sun.sun_path, path);
	unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* The file is created with unix_socket_mode: never connectable by
	 * more users than that, not even between bind() and a chmod(). */
	old_mask = umask(~(mode_t)C.cfg->unix_socket_mode & 0777);
	rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old_mask);
	if (rc != 0 || listen(fd, 1024) != 0) {
		log_err("conn", 0, "listen %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	log_info("conn", 0, "listening on %s (mode %04lo)", path, C.cfg->unix_socket_mode);
	free(C.unix_path);
	C.unix_path = strdup(path);
	return conn_add_listener(fd);
}

int
conn_listen(const char *addr, const char *unix_path)
{
	if (addr != NULL && conn_listen_tcp(addr) != 0)
		return -1;
	if (unix_path != NULL && conn_listen_unix(unix_path) != 0)
		return -1;
	return 0;
}

void
conn_stop_listening(void)
{
	for (int i = 0; i < C.nlisteners; i++) {
		struct listener *l = &C.listeners[i];
		event_free(l->ev);
		event_free(l->backoff);
		close(l->fd);
	}
	C.nlisteners = 0;
	if (C.unix_path != NULL)
		unlink(C.unix_path);
	free(C.unix_path);
	C.unix_path = NULL;
}

/* Graceful stop, first step: read nothing more; requests already read
 * still get their replies. */
void
conn_pause_all(void)
{
	for (struct conn *c = C.all; c != NULL; c = c->next)
		if (c->state == CONN_OPEN && !c->read_paused) {
			event_del(c->rev);
			c->read_paused = 1;
			c->inlen = 0;	/* a partial line is not a request */
		}
}

/* Replies still owed to some client. */
int
conn_busy(void)
{
	for (struct conn *c = C.all; c != NULL; c = c->next)
		if (c->state == CONN_OPEN && conn_pending_replies(c) > 0)
			return 1;
	return 0;
}

/* Last step: "bye" with reason to every client, then close. */
void
conn_shutdown_all(const char *reason)
{
	struct conn *c, *next;

	for (c = C.all; c != NULL; c = next) {
		next = c->next;
		conn_close(c, reason, 1);
	}
}

void
conn_free_all(void)
{
	while (C.all != NULL)
		conn_close(C.all, "exit", 0);
	idmap_free(&C.byid);
	if (C.tmp != NULL)
		evbuffer_free(C.tmp);
	C.tmp = NULL;
	if (C.idle_timer != NULL)
		event_free(C.idle_timer);
	C.idle_timer = NULL;
}
