/*
 * main.c: command line, configuration, signals and the life cycle of
 * streambusd: start, serve on one libevent loop, reload on SIGHUP, and stop
 * gracefully on SIGTERM/SIGINT (see man/streambusd.8).
 */
#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <systemd/sd-daemon.h>

#include "auth.h"
#include "broker.h"
#include "config.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "sentinel.h"
#include "util.h"

#define MAIN_STOP_POLL_MS 20

static struct {
	struct event_base *base;
	struct config     *cfg;
	struct auth_table *auth;
	const char        *path;	/* -c, or NULL for the default */
	const char        *listen, *metrics, *redis;	/* overrides */
	struct event      *stop_timer;
	struct event      *notify_timer;	/* systemd: READY, STATUS, WATCHDOG */
	int                ready;
	uint64_t           watchdog_usec;
	uint64_t           stop_deadline_ns;
	int                stop_phase;	/* 0 running, 1 draining, 2 closing */
} M;

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: streambusd [-c FILE] [--listen HOST:PORT] [--metrics HOST:PORT|off]\n"
	    "                  [--redis redis://[[USER]:PASSWORD@]HOST:PORT[/DB]] [-t] [-V] [-h]\n"
	    "  -c, --config FILE     configuration file (default %s)\n"
	    "      --listen ADDR     client address (overrides server.listen)\n"
	    "      --metrics ADDR    HTTP /metrics and /health address, or off\n"
	    "      --redis URL       Redis to use (overrides redis.url)\n"
	    "  -t, --test-config     check the configuration, print ok or the error\n"
	    "  -V, --version         print the version\n"
	    "  -h, --help            this help\n", CONFIG_DEFAULT_PATH);
}

/* The Redis password: from redis.password_file, or in the url (not both);
 * a user needs one. */
static int
main_redis_password(struct config *cfg, char *err, size_t errlen)
{
	if (cfg->password_file != NULL) {
		if (cfg->redis.password != NULL) {
			snprintf(err, errlen, "redis.password_file and a password in the redis url: "
			    "give one of them");
			return -1;
		}
		if ((cfg->redis.password = auth_read_secret(cfg->password_file, err,
		    errlen)) == NULL)
			return -1;
	}
	if (cfg->redis.user != NULL && cfg->redis.password == NULL) {
		snprintf(err, errlen, "the redis url names user \"%.64s\" but no password: give it "
		    "in the url or in redis.password_file", cfg->redis.user);
		return -1;
	}
	return 0;
}

/* Build a config (and its token table) from the file and the overrides. */
static struct config *
main_load_config(struct auth_table **auth, char *err, size_t errlen)
{
	struct config *cfg = config_new();
	const char *path = M.path;

	if (cfg == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (path == NULL && access(CONFIG_DEFAULT_PATH, F_OK) == 0)
		path = CONFIG_DEFAULT_PATH;
	if ((path != NULL && config_load_file(cfg, path, err, errlen) != 0) ||
	    (M.listen && config_set_listen(cfg, M.listen, err, errlen) != 0) ||
	    (M.metrics && config_set_metrics(cfg, M.metrics, err, errlen) != 0) ||
	    (M.redis && config_set_redis_url(cfg, M.redis, err, errlen) != 0) ||
	    main_redis_password(cfg, err, errlen) != 0) {
		config_free(cfg);
		return NULL;
	}
	*auth = NULL;
	if (cfg->auth_tokens != NULL &&
	    (*auth = auth_load(cfg->auth_tokens, err, errlen)) == NULL) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

/* ---- graceful stop ---- */

static void
main_stop_step(evutil_socket_t fd, short what, void *arg)
{
	struct timeval tv = { 0, MAIN_STOP_POLL_MS * 1000 };

	(void)fd;
	(void)what;
	(void)arg;
	if (util_now_ns() >= M.stop_deadline_ns) {
		log_warn("main", 0, "shutdown_timeout_ms reached with work in flight; exiting");
		event_base_loopexit(M.base, NULL);
		return;
	}
	/* 1: every request already read is answered. */
	if (M.stop_phase == 1 && !conn_busy() && broker_idle()) {
		M.stop_phase = 2;
		conn_shutdown_all("shutdown");	/* releases deliveries, sends bye */
		broker_goodbye();
	}
	/* 2: releases confirmed, byes flushed. */
	if (M.stop_phase == 2 && conn_count() == 0 && broker_idle()) {
		event_base_loopexit(M.base, NULL);
		return;
	}
	evtimer_add(M.stop_timer, &tv);
}

static void
main_stop(void)
{
	if (M.stop_phase != 0)
		return;
	log_info("main", 0, "stopping: %zu connections", conn_count());
	sd_notify(0, "STOPPING=1");
	M.stop_phase = 1;
	M.stop_deadline_ns = util_now_ns() + (uint64_t)M.cfg->shutdown_timeout_ms * 1000000ull;
	conn_stop_listening();
	conn_pause_all();
	broker_stop_delivering();
	M.stop_timer = evtimer_new(M.base, main_stop_step, NULL);
	main_stop_step(-1, 0, NULL);
}

/* ---- systemd (sd_notify is a no-op when not run by systemd) ---- */

#define MAIN_NOTIFY_MS 1000

static void
main_notify(evutil_socket_t fd, short what, void *arg)
{
	struct timeval tv = { 0, 250 * 1000 };

	(void)fd;
	(void)what;
	(void)arg;
	/* Ready once listening (done before the loop) and Redis answered. */
	if (!M.ready && broker_redis_up()) {
		M.ready = 1;
		sd_notify(0, "READY=1");
		log_info("main", 0, "ready");
	}
	if (M.ready) {
		sd_notifyf(0, "STATUS=%zu connections, Redis %s, %llu requests",
		    conn_count(), broker_redis_up() ? "up" : "DOWN",
		    (unsigned long long)metrics.requests);
		tv.tv_sec = MAIN_NOTIFY_MS / 1000;
		tv.tv_usec = 0;
	}
	if (M.watchdog_usec > 0)
		sd_notify(0, "WATCHDOG=1");
	if (M.watchdog_usec > 0 && M.watchdog_usec / 2 < (uint64_t)tv.tv_sec * 1000000 +
	    (uint64_t)tv.tv_usec) {
		tv.tv_sec = (time_t)(M.watchdog_usec / 2 / 1000000);
		tv.tv_usec = (suseconds_t)(M.watchdog_usec / 2 % 1000000);
	}
	evtimer_add(M.notify_timer, &tv);
}

/* ---- reload ---- */

/* What the running daemon is bound to stays for a restart: the running
 * values move into ncfg, the new ones go with old (freed next), so that
 * the configuration kept says what is in effect.  The url's user and db
 * stay with it; a password_file's password is the new one.  1 if any of
 * them differed. */
static int
main_keep_bound(struct config *ncfg, struct config *old)
{
	char **keep[][2] = {
		{ &ncfg->listen, &old->listen }, { &ncfg->unix_socket, &old->unix_socket },
		{ &ncfg->metrics_listen, &old->metrics_listen },
		{ &ncfg->redis_url_text, &old->redis_url_text }, { &ncfg->prefix, &old->prefix },
		{ &ncfg->cluster, &old->cluster }, { &ncfg->sentinels, &old->sentinels },
		{ &ncfg->master_name, &old->master_name },
	};
	struct redis_url url = ncfg->redis;
	int changed = ncfg->connect_timeout_ms != old->connect_timeout_ms ||
	    ncfg->unix_socket_mode != old->unix_socket_mode;

	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
		char *v = *keep[i][0];
		changed |= !util_streq(v, *keep[i][1]);
		*keep[i][0] = *keep[i][1];
		*keep[i][1] = v;
	}
	ncfg->connect_timeout_ms = old->connect_timeout_ms;
	ncfg->unix_socket_mode = old->unix_socket_mode;
	ncfg->redis = old->redis;
	old->redis = url;
	if (ncfg->password_file != NULL) {
		char *pw = ncfg->redis.password;
		ncfg->redis.password = old->redis.password;
		old->redis.password = pw;
	}
	return changed;
}

static void
main_reload(void)
{
	char err[CONFIG_ERR_LEN];
	struct auth_table *nauth = NULL;
	struct config *ncfg = main_load_config(&nauth, err, sizeof(err));
	struct config *old = M.cfg;
	const char *running_password;

	sd_notify(0, "RELOADING=1");
	if (ncfg == NULL) {
		sd_notify(0, "READY=1");
		log_err("main", 0, "reload failed, keeping the running configuration: %s", err);
		return;
	}
	/* The password in effect: a rotated password_file serves the next
	 * connections to Redis. */
	running_password = old->redis.password;
	if (main_keep_bound(ncfg, old))
		log_warn("main", 0, "reload: listen, unix_socket, unix_socket_mode, "
		    "metrics.listen, redis.url, redis.prefix, redis.cluster, redis.sentinels, "
		    "redis.master_name and connect_timeout_ms change only on restart; keeping "
		    "the running values");
	if (!util_streq(ncfg->redis.password, running_password)) {
		redis_set_password(ncfg->redis.password);
		log_info("main", 0, "reload: new Redis password; used from the next connection");
	}
	conn_set_auth(nauth);
	auth_free(M.auth);
	M.auth = nauth;
	log_set_level((enum log_level)ncfg->log_level);
	conn_set_config(ncfg);
	broker_reconfigure(ncfg);
	M.cfg = ncfg;
	config_free(old);
	log_info("main", 0, "configuration reloaded");
	sd_notify(0, "READY=1");
}

static void
main_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	if (sig == SIGHUP)
		main_reload();
	else
		main_stop();
}

/* ---- start ---- */

/* max_clients needs as many descriptors (plus Redis links and a margin):
 * raise the soft limit as far as the hard one allows, and say if short. */
static void
main_raise_nofile(long max_clients)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)max_clients + 256;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
		log_warn("main", 0, "open files limited to %llu, below max_clients %ld + 256",
		    (unsigned long long)rl.rlim_cur, max_clients);
}

static int
main_parse_args(int argc, char **argv, int *test)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "listen", required_argument, NULL, 'L' },
		{ "metrics", required_argument, NULL, 'M' },
		{ "redis", required_argument, NULL, 'R' },
		{ "test-config", no_argument, NULL, 't' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	while ((ch = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
		switch (ch) {
		case 'c': M.path = optarg; break;
		case 'L': M.listen = optarg; break;
		case 'M': M.metrics = optarg; break;
		case 'R': M.redis = optarg; break;
		case 't': *test = 1; break;
		case 'V':
			printf("streambusd %s\n", STREAMBUS_VERSION);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "streambusd: unexpected argument: %s\n", argv[optind]);
		usage(stderr);
		return -1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	char err[CONFIG_ERR_LEN];
	struct event *sigs[4];
	static const int signums[4] = { SIGTERM, SIGINT, SIGHUP, 0 };
	int test = 0, rc = 0;

	log_init();
	if (main_parse_args(argc, argv, &test) != 0)
		return 2;
	if ((M.cfg = main_load_config(&M.auth, err, sizeof(err))) == NULL) {
		if (test)
			printf("%s\n", err);
		else
			fprintf(stderr, "streambusd: %s\n", err);
		return 2;
	}
	if (test) {
		printf("ok\n");
		config_free(M.cfg);
		auth_free(M.auth);
		return 0;
	}
	log_set_level((enum log_level)M.cfg->log_level);
	main_raise_nofile(M.cfg->max_clients);
	srandom((unsigned)time(NULL) ^ (unsigned)getpid());
	signal(SIGPIPE, SIG_IGN);
	metrics_init();
	M.base = event_base_new();
	if (M.base == NULL || conn_init(M.base) != 0 || broker_init(M.base, M.cfg) != 0) {
		log_err("main", 0, "cannot initialise");
		return 1;
	}
	conn_set_config(M.cfg);
	conn_set_auth(M.auth);
	if (sentinel_start(M.base, M.cfg) != 0) {
		log_err("main", 0, "cannot start Sentinel discovery");
		rc = 1;
		goto out;
	}
	if (conn_listen(M.cfg->listen, M.cfg->unix_socket) != 0 ||
	    (M.cfg->metrics_listen != NULL && http_start(M.base, M.cfg->metrics_listen) != 0)) {
		rc = 1;
		goto out;
	}
	for (int i = 0; signums[i] != 0; i++) {
		sigs[i] = evsignal_new(M.base, signums[i], main_signal, NULL);
		if (sigs[i] == NULL || event_add(sigs[i], NULL) != 0) {
			log_err("main", 0, "cannot handle signal %d", signums[i]);
			rc = 1;
			goto out;
		}
	}
	log_info("main", 0, "streambusd %s started (pid %d)", STREAMBUS_VERSION, (int)getpid());
	if (sd_watchdog_enabled(0, &M.watchdog_usec) <= 0)
		M.watchdog_usec = 0;
	if ((M.notify_timer = evtimer_new(M.base, main_notify, NULL)) == NULL) {
		rc = 1;
		goto out;
	}
	main_notify(-1, 0, NULL);
	event_base_dispatch(M.base);
	log_info("main", 0, "stopped");
	for (int i = 0; signums[i] != 0; i++)
		event_free(sigs[i]);
out:
	if (M.stop_timer != NULL)
		event_free(M.stop_timer);
	if (M.notify_timer != NULL)
		event_free(M.notify_timer);
	http_stop();
	sentinel_stop();
	conn_stop_listening();
	conn_free_all();
	broker_free();
	/* Run the deferred frees (connections, Redis links). */
	event_base_loop(M.base, EVLOOP_NONBLOCK);
	event_base_free(M.base);
	redis_cleanup();
	config_free(M.cfg);
	auth_free(M.auth);
	return rc;
}
