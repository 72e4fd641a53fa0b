/* http.c: the metrics endpoint (see http.h). */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <microhttpd.h>

#include "broker.h"
#include "cluster.h"
#include "config.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "metrics.h"

static struct {
	struct MHD_Daemon *d;
	struct event      *io, *timer;
} H;

static void http_rearm(void);

static enum MHD_Result
http_send(struct MHD_Connection *mc, unsigned status, const char *type,
    struct evbuffer *body)
{
	size_t len = evbuffer_get_length(body);
	char *text = malloc(len + 1);
	struct MHD_Response *r;
	enum MHD_Result rc;

	if (text == NULL)
		return MHD_NO;
	evbuffer_remove(body, text, len);
	r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (r == NULL) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", type);
	rc = MHD_queue_response(mc, status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result
http_handler(void *cls, struct MHD_Connection *mc, const char *url,
    const char *method, const char *version, const char *upload_data,
    size_t *upload_size, void **state)
{
	struct evbuffer *body = evbuffer_new();
	enum MHD_Result rc;
	unsigned status = MHD_HTTP_OK;
	const char *type = "text/plain; charset=utf-8";

	(void)cls;
	(void)version;
	(void)upload_data;
	(void)upload_size;
	(void)state;
	if (body == NULL)
		return MHD_NO;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
		evbuffer_add_printf(body, "method not allowed\n");
	} else if (strcmp(url, "/metrics") == 0) {
		type = "text/plain; version=0.0.4; charset=utf-8";
		metrics_render(body, broker_metrics());
	} else if (strcmp(url, "/health") == 0) {
		int up = broker_redis_up();
		type = "application/json";
		status = up ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
		evbuffer_add_printf(body, "{\"status\":\"%s\",\"redis\":\"%s\",\"version\":\"%s\","
		    "\"connections\":%zu", up ? "ok" : "unavailable", up ? "up" : "down",
		    STREAMBUS_VERSION, conn_count());
		if (cluster_enabled())
			evbuffer_add_printf(body, ",\"cluster_masters\":%llu",
			    (unsigned long long)metrics.cluster_nodes);
		evbuffer_add(body, "}\n", 2);
	} else {
		status = MHD_HTTP_NOT_FOUND;
		evbuffer_add_printf(body, "not found; try /metrics or /health\n");
	}
	rc = http_send(mc, status, type, body);
	evbuffer_free(body);
	return rc;
}

static void
http_run(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	MHD_run(H.d);
	http_rearm();
}

/* MHD tells how long it may wait (connection timeouts). */
static void
http_rearm(void)
{
	MHD_UNSIGNED_LONG_LONG ms;

	if (MHD_get_timeout(H.d, &ms) == MHD_YES) {
		struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
		event_add(H.timer, &tv);
	} else
		event_del(H.timer);
}

int
http_start(struct event_base *base, const char *addr)
{
	char host[256], port[16];
	struct addrinfo hints = { 0 }, *res = NULL;
	const union MHD_DaemonInfo *info;
	unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
	int p;

	if (config_split_hostport(addr, host, sizeof(host), &p) != 0) {
		log_err("http", 0, "bad metrics address %s", addr);
		return -1;
	}
	snprintf(port, sizeof(port), "%d", p);
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if (getaddrinfo(host, port, &hints, &res) != 0) {
		log_err("http", 0, "cannot resolve metrics address %s", addr);
		return -1;
	}
	if (res->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	H.d = MHD_start_daemon(flags, (uint16_t)p, NULL, NULL, http_handler, NULL,
	    MHD_OPTION_SOCK_ADDR, res->ai_addr, MHD_OPTION_CONNECTION_LIMIT, 64u,
	    MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
	freeaddrinfo(res);
	if (H.d == NULL) {
		log_err("http", 0, "cannot listen on %s", addr);
		return -1;
	}
	info = MHD_get_daemon_info(H.d, MHD_DAEMON_INFO_EPOLL_FD);
	H.io = event_new(base, info->epoll_fd, EV_READ | EV_PERSIST, http_run, NULL);
	H.timer = evtimer_new(base, http_run, NULL);
	if (H.io == NULL || H.timer == NULL || event_add(H.io, NULL) != 0) {
		http_stop();
		return -1;
	}
	log_info("http", 0, "metrics on http://%s/metrics", addr);
	return 0;
}

void
http_stop(void)
{
	if (H.io != NULL)
		event_free(H.io);
	if (H.timer != NULL)
		event_free(H.timer);
	if (H.d != NULL)
		MHD_stop_daemon(H.d);
	memset(&H, 0, sizeof(H));
}
