/*
 * check_config.c: unit tests of src/config.c: the defaults of daemon.md,
 * the example file of daemon.md, [stream X] inheritance, "FILE:LINE:
 * message" errors, Redis URLs, command-line overrides, the shipped
 * etc/streambus.conf, and a cross-check of the key table against
 * man/streambus.conf.5.
 *
 * Run from the repository root.  SB_TEST_KNOWN_BUGS=1 adds the test case
 * "known_bugs": tests of defects reported but not fixed yet.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "cluster.h"
#include "config.h"
#include "log.h"

/* The example configuration of daemon.md, verbatim. */
static const char daemon_md_example[] =
    "[server]\n"
    "listen = 127.0.0.1:7070\n"
    "unix_socket =                  ; optional path\n"
    "max_clients = 10000\n"
    "max_line = 1048576\n"
    "max_payload = 1048576\n"
    "auth_tokens =                  ; optional path to a token file; empty = no auth\n"
    "shutdown_timeout_ms = 5000     ; graceful stop: longest wait for in-flight work\n"
    "\n"
    "[metrics]\n"
    "listen = 127.0.0.1:8001        ; \"off\" disables\n"
    "\n"
    "[redis]\n"
    "url = redis://127.0.0.1:6379/0\n"
    "prefix = sb:                   ; every Redis key the daemon writes starts with it\n"
    "\n"
    "[defaults]                     ; every stream, unless its own section says otherwise\n"
    "ack_timeout_ms = 30000\n"
    "max_attempts = 3\n"
    "retry_delay_ms = 1000          ; first retry; doubles per attempt\n"
    "prefetch = 64\n"
    "maxlen = 1000000               ; approximate cap on stream length; 0 = none\n"
    "\n"
    "[stream market_data]           ; one section per stream that needs its own settings\n"
    "maxlen = 5000000\n";

/* ------------------------------------------------------------ helpers */

static struct config *
t_new(void)
{
	struct config *cfg = config_new();

	ck_assert_ptr_nonnull(cfg);
	return cfg;
}

/* Load text as "t.conf" into a fresh config; returns it (caller frees). */
static struct config *
t_load_ok(const char *text)
{
	struct config *cfg = t_new();
	char err[CONFIG_ERR_LEN + 64] = "";

	ck_assert_msg(config_load_string(cfg, text, "t.conf", err, sizeof(err)) == 0,
	    "rejected: %s\n--- config:\n%s", err, text);
	return cfg;
}

/* text must be rejected with exactly expect. */
#define ck_load_err(text, expect) do { \
	struct config *t_c_ = t_new(); \
	char t_err_[CONFIG_ERR_LEN + 64] = ""; \
	int t_rc_ = config_load_string(t_c_, (text), "t.conf", t_err_, sizeof(t_err_)); \
	ck_assert_msg(t_rc_ == -1, "accepted:\n%s", (text)); \
	ck_assert_str_eq(t_err_, (expect)); \
	config_free(t_c_); \
} while (0)

static void
t_check_stream_defaults(const struct stream_conf *sc)
{
	ck_assert_int_eq(sc->ack_timeout_ms, 30000);
	ck_assert_int_eq(sc->max_attempts, 3);
	ck_assert_int_eq(sc->retry_delay_ms, 1000);
	ck_assert_int_eq(sc->retry_max_ms, 60000);
	ck_assert_int_eq(sc->prefetch, 64);
	ck_assert_int_eq(sc->maxlen, 1000000);
	ck_assert_int_eq(sc->dedup_window_ms, 120000);
	ck_assert_int_eq(sc->replicas, 0);
}

static const struct stream_conf *
t_find_stream(const struct config *cfg, const char *name)
{
	for (const struct stream_conf *sc = cfg->streams; sc != NULL; sc = sc->next)
		if (strcmp(sc->name, name) == 0)
			return sc;
	return NULL;
}

static int
t_count_streams(const struct config *cfg)
{
	int n = 0;

	for (const struct stream_conf *sc = cfg->streams; sc != NULL; sc = sc->next)
		n++;
	return n;
}

static char *
t_read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	if (f == NULL)
		return NULL;
	ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	ck_assert_int_ge(n, 0);
	rewind(f);
	buf = malloc((size_t)n + 1);
	ck_assert_ptr_nonnull(buf);
	ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* ------------------------------------------------------------ defaults */

START_TEST(test_defaults)
{
	struct config *cfg = t_new();

	ck_assert_ptr_null(cfg->path);
	ck_assert_str_eq(cfg->listen, "127.0.0.1:7070");
	ck_assert_ptr_null(cfg->unix_socket);
	ck_assert_int_eq(cfg->unix_socket_mode, 0660);
	ck_assert_int_eq(cfg->max_clients, 10000);
	ck_assert_int_eq(cfg->max_line, 1048576);
	ck_assert_int_eq(cfg->max_payload, 1048576);
	ck_assert_ptr_null(cfg->auth_tokens);
	ck_assert_int_eq(cfg->shutdown_timeout_ms, 5000);
	ck_assert_int_eq(cfg->log_level, LOG_INFO);
	ck_assert_str_eq(cfg->metrics_listen, "127.0.0.1:8001");
	ck_assert_str_eq(cfg->redis_url_text, "redis://127.0.0.1:6379/0");
	ck_assert_str_eq(cfg->redis.host, "127.0.0.1");
	ck_assert_int_eq(cfg->redis.port, 6379);
	ck_assert_int_eq(cfg->redis.db, 0);
	ck_assert_ptr_null(cfg->redis.user);
	ck_assert_ptr_null(cfg->redis.password);
	ck_assert_str_eq(cfg->prefix, "sb:");
	ck_assert_ptr_null(cfg->defaults.name);
	t_check_stream_defaults(&cfg->defaults);
	ck_assert_ptr_null(cfg->streams);
	/* A stream not declared works with [defaults]. */
	ck_assert_ptr_eq(config_stream(cfg, "anything"), &cfg->defaults);
	config_free(cfg);
	config_free(NULL);
}
END_TEST

/* ------------------------------------------------------------ parsing */

START_TEST(test_daemon_md_example)
{
	struct config *cfg = t_load_ok(daemon_md_example);
	const struct stream_conf *md;

	ck_assert_str_eq(cfg->listen, "127.0.0.1:7070");
	ck_assert_ptr_null(cfg->unix_socket);	/* empty value + inline comment */
	ck_assert_int_eq(cfg->max_clients, 10000);
	ck_assert_int_eq(cfg->max_line, 1048576);
	ck_assert_int_eq(cfg->max_payload, 1048576);
	ck_assert_ptr_null(cfg->auth_tokens);
	ck_assert_int_eq(cfg->shutdown_timeout_ms, 5000);
	ck_assert_str_eq(cfg->metrics_listen, "127.0.0.1:8001");
	ck_assert_str_eq(cfg->redis_url_text, "redis://127.0.0.1:6379/0");
	ck_assert_str_eq(cfg->redis.host, "127.0.0.1");
	ck_assert_int_eq(cfg->redis.port, 6379);
	ck_assert_str_eq(cfg->prefix, "sb:");
	t_check_stream_defaults(&cfg->defaults);

	ck_assert_int_eq(t_count_streams(cfg), 1);
	md = config_stream(cfg, "market_data");
	ck_assert_ptr_ne(md, &cfg->defaults);
	ck_assert_str_eq(md->name, "market_data");
	ck_assert_int_eq(md->maxlen, 5000000);
	/* everything else from [defaults] */
	ck_assert_int_eq(md->ack_timeout_ms, 30000);
	ck_assert_int_eq(md->max_attempts, 3);
	ck_assert_int_eq(md->retry_delay_ms, 1000);
	ck_assert_int_eq(md->prefetch, 64);
	ck_assert_int_eq(md->dedup_window_ms, 120000);
	ck_assert_ptr_eq(config_stream(cfg, "risk_alert"), &cfg->defaults);
	config_free(cfg);
}
END_TEST

START_TEST(test_every_key)
{
	struct config *cfg = t_load_ok(
	    "# comment\n"
	    "; comment\n"
	    "[server]\n"
	    "listen = [::1]:7071\n"
	    "unix_socket = /run/streambus.sock\n"
	    "unix_socket_mode = 600\n"
	    "max_clients = 1\n"
	    "max_line = 256\n"
	    "max_payload = 16\n"
	    "auth_tokens = /etc/streambus/tokens\n"
	    "shutdown_timeout_ms = 0\n"
	    "log_level = debug\n"
	    "max_subs_per_conn = 100000\n"
	    "max_batch = 1000000\n"
	    "output_buffer_limit = 65536\n"
	    "max_pending_requests = 7\n"
	    "[metrics]\n"
	    "listen = 0.0.0.0:9100\n"
	    "[redis]\n"
	    "url = redis://u:p@10.0.0.1:6380/3\n"
	    "password_file = /etc/streambus/redis-password\n"
	    "prefix = app:\n"
	    "max_inflight = 10000000\n"
	    "connect_timeout_ms = 10\n"
	    "pub_wait_ms = 600000\n"
	    "[defaults]\n"
	    "ack_timeout_ms = 100\n"
	    "max_attempts = 1000\n"
	    "retry_delay_ms = 0\n"
	    "retry_max_ms = 86400000\n"
	    "prefetch = 10000\n"
	    "maxlen = 0\n"
	    "dedup_window_ms = 1000\n"
	    "durability = replicas:2:250\n");

	ck_assert_str_eq(cfg->listen, "[::1]:7071");
	ck_assert_str_eq(cfg->unix_socket, "/run/streambus.sock");
	ck_assert_int_eq(cfg->unix_socket_mode, 0600);
	ck_assert_int_eq(cfg->max_clients, 1);
	ck_assert_int_eq(cfg->max_line, 256);
	ck_assert_int_eq(cfg->max_payload, 16);
	ck_assert_str_eq(cfg->auth_tokens, "/etc/streambus/tokens");
	ck_assert_int_eq(cfg->shutdown_timeout_ms, 0);
	ck_assert_int_eq(cfg->log_level, LOG_DEBUG);
	ck_assert_int_eq(cfg->max_subs_per_conn, 100000);
	ck_assert_int_eq(cfg->max_batch, 1000000);
	ck_assert_int_eq(cfg->output_buffer_limit, 65536);
	ck_assert_int_eq(cfg->max_pending_requests, 7);
	ck_assert_str_eq(cfg->metrics_listen, "0.0.0.0:9100");
	ck_assert_str_eq(cfg->redis_url_text, "redis://u:p@10.0.0.1:6380/3");
	ck_assert_str_eq(cfg->redis.host, "10.0.0.1");
	ck_assert_int_eq(cfg->redis.port, 6380);
	ck_assert_int_eq(cfg->redis.db, 3);
	ck_assert_str_eq(cfg->redis.user, "u");
	ck_assert_str_eq(cfg->redis.password, "p");
	/* read by the daemon, which refuses it with a password in the url */
	ck_assert_str_eq(cfg->password_file, "/etc/streambus/redis-password");
	ck_assert_str_eq(cfg->prefix, "app:");
	ck_assert_int_eq(cfg->max_inflight, 10000000);
	ck_assert_int_eq(cfg->connect_timeout_ms, 10);
	ck_assert_int_eq(cfg->pub_wait_ms, 600000);
	ck_assert_int_eq(cfg->defaults.ack_timeout_ms, 100);
	ck_assert_int_eq(cfg->defaults.max_attempts, 1000);
	ck_assert_int_eq(cfg->defaults.retry_delay_ms, 0);
	ck_assert_int_eq(cfg->defaults.retry_max_ms, 86400000);
	ck_assert_int_eq(cfg->defaults.prefetch, 10000);
	ck_assert_int_eq(cfg->defaults.maxlen, 0);
	ck_assert_int_eq(cfg->defaults.dedup_window_ms, 1000);
	ck_assert_int_eq(cfg->defaults.replicas, 2);
	ck_assert_int_eq(cfg->defaults.replicas_timeout_ms, 250);
	config_free(cfg);

	/* Empty values unset optional strings; log levels. */
	cfg = t_load_ok("[server]\nunix_socket = /x\nunix_socket =\nlog_level = error\n");
	ck_assert_ptr_null(cfg->unix_socket);
	ck_assert_int_eq(cfg->log_level, LOG_ERR);
	config_free(cfg);
	cfg = t_load_ok("[server]\nlog_level = warn\n[redis]\nprefix =\n");
	ck_assert_int_eq(cfg->log_level, LOG_WARN);
	ck_assert_str_eq(cfg->prefix, "");	/* no prefix, not a NULL one */
	config_free(cfg);
	/* A key given twice: the last one wins (and nothing leaks). */
	cfg = t_load_ok("[server]\nlisten = 127.0.0.1:1\nlisten = 127.0.0.1:2\n"
	    "[redis]\nurl = redis://a:1\nurl = redis://b:2/4\n");
	ck_assert_str_eq(cfg->listen, "127.0.0.1:2");
	ck_assert_str_eq(cfg->redis.host, "b");
	ck_assert_int_eq(cfg->redis.port, 2);
	ck_assert_int_eq(cfg->redis.db, 4);
	config_free(cfg);
}
END_TEST

START_TEST(test_durability)
{
	static const char *const bad[] = {
		"Redis", "replicas", "replicas:", "replicas:0", "replicas:101", "replicas:x",
		"replicas:2x", "replicas:2:", "replicas:2:0", "replicas:2:600001",
		"replicas:2:5:6", "replicas:-1", "sync",
	};
	struct config *cfg;
	char text[256], expect[256];

	cfg = t_load_ok("[defaults]\ndurability = replicas:1\n");
	ck_assert_int_eq(cfg->defaults.replicas, 1);
	ck_assert_int_eq(cfg->defaults.replicas_timeout_ms, 1000);
	config_free(cfg);
	cfg = t_load_ok("[defaults]\ndurability = replicas:100:600000\n");
	ck_assert_int_eq(cfg->defaults.replicas, 100);
	ck_assert_int_eq(cfg->defaults.replicas_timeout_ms, 600000);
	config_free(cfg);
	cfg = t_load_ok("[defaults]\ndurability = replicas:3\ndurability = redis\n");
	ck_assert_int_eq(cfg->defaults.replicas, 0);
	config_free(cfg);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text), "[stream s]\n\ndurability = %s\n", bad[i]);
		snprintf(expect, sizeof(expect),
		    "t.conf:3: durability: want redis or replicas:N[:TIMEOUT_MS], got \"%s\"", bad[i]);
		ck_load_err(text, expect);
	}
}
END_TEST

START_TEST(test_stream_inheritance)
{
	struct config *cfg;
	const struct stream_conf *a, *b;

	/* [defaults] after the stream sections still applies to them. */
	cfg = t_load_ok(
	    "[stream a]\n"
	    "maxlen = 5\n"
	    "[stream b]\n"
	    "prefetch = 2\n"
	    "durability = redis\n"
	    "[defaults]\n"
	    "prefetch = 7\n"
	    "max_attempts = 9\n"
	    "durability = replicas:2:300\n"
	    "[stream a]\n"
	    "ack_timeout_ms = 1500\n");
	ck_assert_int_eq(t_count_streams(cfg), 2);
	a = config_stream(cfg, "a");
	b = config_stream(cfg, "b");
	ck_assert_str_eq(a->name, "a");
	ck_assert_str_eq(b->name, "b");
	ck_assert_int_eq(a->maxlen, 5);
	ck_assert_int_eq(a->ack_timeout_ms, 1500);	/* the section reopened */
	ck_assert_int_eq(a->prefetch, 7);
	ck_assert_int_eq(a->max_attempts, 9);
	ck_assert_int_eq(a->retry_delay_ms, 1000);
	ck_assert_int_eq(a->replicas, 2);
	ck_assert_int_eq(a->replicas_timeout_ms, 300);
	ck_assert_int_eq(b->prefetch, 2);
	ck_assert_int_eq(b->max_attempts, 9);
	ck_assert_int_eq(b->maxlen, 1000000);
	ck_assert_int_eq(b->ack_timeout_ms, 30000);
	ck_assert_int_eq(b->replicas, 0);	/* its own durability */
	ck_assert_int_eq(cfg->defaults.prefetch, 7);
	ck_assert_int_eq(cfg->defaults.maxlen, 1000000);
	ck_assert_ptr_eq(config_stream(cfg, "c"), &cfg->defaults);
	config_free(cfg);

	/* Stream names: every allowed character; spaces after "stream" are not
	 * part of the name.  (libinih cuts section names at 49 bytes: see
	 * test_bug_long_section_names.) */
	{
		char name[41], text[300];
		memset(name, 'n', 40);
		name[40] = '\0';
		snprintf(text, sizeof(text), "[stream  Az09_.:-]\nprefetch = 3\n[stream %s]\nmaxlen=1\n", name);
		cfg = t_load_ok(text);
		ck_assert_int_eq(config_stream(cfg, "Az09_.:-")->prefetch, 3);
		ck_assert_int_eq(config_stream(cfg, name)->maxlen, 1);
		config_free(cfg);
	}
}
END_TEST

START_TEST(test_errors)
{
	/* Unknown keys and sections. */
	ck_load_err("[server]\nbogus = 1\n", "t.conf:2: unknown key \"bogus\" in [server]");
	ck_load_err("\n[metrics]\nport = 1\n", "t.conf:3: unknown key \"port\" in [metrics]");
	ck_load_err("[redis]\nhost = x\n", "t.conf:2: unknown key \"host\" in [redis]");
	ck_load_err("[defaults]\nlisten = 1.2.3.4:5\n", "t.conf:2: unknown key \"listen\" in [defaults]");
	ck_load_err("[stream a]\nmax_clients = 5\n",
	    "t.conf:2: unknown key \"max_clients\" in [stream a]");
	ck_load_err("[server]\nprefetch = 5\n", "t.conf:2: unknown key \"prefetch\" in [server]");
	ck_load_err("[bogus]\nx = 1\n", "t.conf:1: unknown section [bogus]");
	ck_load_err("[Server]\nlisten = 1.2.3.4:5\n", "t.conf:1: unknown section [Server]");
	ck_load_err("listen = 1.2.3.4:5\n", "t.conf:1: \"listen\" outside of a section");
	/* Malformed lines. */
	ck_load_err("[server]\nlisten\n", "t.conf:2: syntax error (want KEY = VALUE or [SECTION])");

	/* Bad integers and ranges. */
	ck_load_err("[server]\nmax_clients = abc\n",
	    "t.conf:2: max_clients: want an integer in 1..1000000, got \"abc\"");
	ck_load_err("[server]\nmax_clients = 10k\n",
	    "t.conf:2: max_clients: want an integer in 1..1000000, got \"10k\"");
	ck_load_err("[server]\nmax_clients = 0x10\n",
	    "t.conf:2: max_clients: want an integer in 1..1000000, got \"0x10\"");
	ck_load_err("[server]\nmax_clients = 1.5\n",
	    "t.conf:2: max_clients: want an integer in 1..1000000, got \"1.5\"");
	ck_load_err("[server]\nmax_clients =\n",
	    "t.conf:2: max_clients: want an integer in 1..1000000, got \"\"");
	ck_load_err("[server]\nmax_clients = 0\n",
	    "t.conf:2: max_clients: want an integer in 1..1000000, got \"0\"");
	ck_load_err("[server]\nmax_clients = 1000001\n",
	    "t.conf:2: max_clients: want an integer in 1..1000000, got \"1000001\"");
	ck_load_err("[server]\nmax_clients = -1\n",
	    "t.conf:2: max_clients: want an integer in 1..1000000, got \"-1\"");
	ck_load_err("[server]\nmax_clients = 99999999999999999999999\n",
	    "t.conf:2: max_clients: want an integer in 1..1000000, got \"99999999999999999999999\"");
	ck_load_err("[server]\nmax_line = 255\n",
	    "t.conf:2: max_line: want an integer in 256..268435456, got \"255\"");
	ck_load_err("[server]\nmax_payload = 268435457\n",
	    "t.conf:2: max_payload: want an integer in 16..268435456, got \"268435457\"");
	ck_load_err("[defaults]\nprefetch = 10001\n",
	    "t.conf:2: prefetch: want an integer in 1..10000, got \"10001\"");
	ck_load_err("[stream x]\nprefetch = 0\n",
	    "t.conf:2: prefetch: want an integer in 1..10000, got \"0\"");
	ck_load_err("[defaults]\nack_timeout_ms = 99\n",
	    "t.conf:2: ack_timeout_ms: want an integer in 100..86400000, got \"99\"");
	ck_load_err("[defaults]\nmax_attempts = 0\n",
	    "t.conf:2: max_attempts: want an integer in 1..1000, got \"0\"");
	ck_load_err("[defaults]\nmaxlen = -1\n",
	    "t.conf:2: maxlen: want an integer in 0..1099511627776, got \"-1\"");
	ck_load_err("[defaults]\ndedup_window_ms = 999\n",
	    "t.conf:2: dedup_window_ms: want an integer in 1000..86400000, got \"999\"");

	/* Other value types. */
	ck_load_err("[server]\nlog_level = verbose\n",
	    "t.conf:2: log_level: want error, warn, info or debug, got \"verbose\"");
	ck_load_err("[server]\nlisten = 7070\n", "t.conf:2: listen: want HOST:PORT, got \"7070\"");
	ck_load_err("[server]\nlisten = host:65536\n",
	    "t.conf:2: listen: want HOST:PORT, got \"host:65536\"");
	ck_load_err("[server]\nlisten = [::1:80\n",
	    "t.conf:2: listen: want HOST:PORT, got \"[::1:80\"");
	ck_load_err("[metrics]\nlisten = nowhere\n",
	    "t.conf:2: metrics: want HOST:PORT or off, got \"nowhere\"");
	ck_load_err("[redis]\nurl = http://127.0.0.1:6379\n",
	    "t.conf:2: redis url must start with redis:// (got \"http://127.0.0.1:6379\")");
	ck_load_err("[redis]\nurl = redis://127.0.0.1\n",
	    "t.conf:2: bad redis url \"redis://127.0.0.1\" "
	    "(want redis://[[USER]:PASSWORD@]HOST:PORT[/DB])");
	ck_load_err("[redis]\nurl = redis://@h:1\n",
	    "t.conf:2: redis url: credentials must be USER, USER:PASSWORD or :PASSWORD in "
	    "\"redis://***@h:1\"");
	ck_load_err("[server]\nunix_socket_mode = 0999\n",
	    "t.conf:2: unix_socket_mode: want an octal file mode such as 0660, got \"0999\"");
	ck_load_err("[server]\nunix_socket_mode = 01000\n",
	    "t.conf:2: unix_socket_mode: want an octal file mode such as 0660, got \"01000\"");
	ck_load_err("[server]\nunix_socket_mode = -600\n",
	    "t.conf:2: unix_socket_mode: want an octal file mode such as 0660, got \"-600\"");
	ck_load_err("[stream bad!name]\nmaxlen = 1\n",
	    "t.conf:1: [stream bad!name]: bad stream name (1..200 of A-Za-z0-9_.:-)");
	ck_load_err("[stream a/b]\nmaxlen = 1\n",
	    "t.conf:1: [stream a/b]: bad stream name (1..200 of A-Za-z0-9_.:-)");
	ck_load_err("[stream a b]\nmaxlen = 1\n",
	    "t.conf:1: [stream a b]: bad stream name (1..200 of A-Za-z0-9_.:-)");
	/* The line number counts every line, comments and blanks too. */
	ck_load_err("; c\n# c\n\n[server]\n\n  ; indented comment\nmax_clients = 5\nmax_line = 1\n",
	    "t.conf:8: max_line: want an integer in 256..268435456, got \"1\"");
}
END_TEST

START_TEST(test_load_file)
{
	char path[] = "/tmp/check_config_XXXXXX";
	char err[CONFIG_ERR_LEN + 64], expect[CONFIG_ERR_LEN + 64];
	struct config *cfg;
	FILE *f;
	int fd;

	cfg = t_new();
	ck_assert_int_eq(config_load_file(cfg, "/nonexistent/streambus.conf", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "/nonexistent/streambus.conf: No such file or directory");
	config_free(cfg);

	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	f = fdopen(fd, "w");
	ck_assert_ptr_nonnull(f);
	fputs("[server]\r\nmax_clients = 12\r\n[stream s1]\r\nprefetch = 5\r\n", f);
	fclose(f);
	cfg = t_new();
	ck_assert_msg(config_load_file(cfg, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(cfg->path, path);
	ck_assert_int_eq(cfg->max_clients, 12);
	ck_assert_int_eq(config_stream(cfg, "s1")->prefetch, 5);
	config_free(cfg);

	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs("[server]\nmax_clients = 12\n\nmax_payload = 8\n", f);
	fclose(f);
	cfg = t_new();
	ck_assert_int_eq(config_load_file(cfg, path, err, sizeof(err)), -1);
	snprintf(expect, sizeof(expect),
	    "%s:4: max_payload: want an integer in 16..268435456, got \"8\"", path);
	ck_assert_str_eq(err, expect);
	config_free(cfg);
	ck_assert_int_eq(unlink(path), 0);
}
END_TEST

/* ------------------------------------------------------------ redis url */

START_TEST(test_redis_url)
{
	struct redis_url u = { 0 };
	char err[512];

	ck_assert_int_eq(config_parse_redis_url("redis://127.0.0.1:6379/0", &u, err, sizeof(err)), 0);
	ck_assert_str_eq(u.host, "127.0.0.1");
	ck_assert_int_eq(u.port, 6379);
	ck_assert_int_eq(u.db, 0);
	ck_assert_ptr_null(u.user);
	ck_assert_ptr_null(u.password);

	/* Password only. */
	ck_assert_int_eq(config_parse_redis_url("redis://:s3cret@redis.local:6380/5", &u, err, sizeof(err)), 0);
	ck_assert_str_eq(u.host, "redis.local");
	ck_assert_int_eq(u.port, 6380);
	ck_assert_int_eq(u.db, 5);
	ck_assert_ptr_null(u.user);
	ck_assert_str_eq(u.password, "s3cret");

	/* User and password; the password may hold ':' and '@'. */
	ck_assert_int_eq(config_parse_redis_url("redis://alice:p:a@ss@h:1", &u, err, sizeof(err)), 0);
	ck_assert_str_eq(u.user, "alice");
	ck_assert_str_eq(u.password, "p:a@ss");
	ck_assert_str_eq(u.host, "h");
	ck_assert_int_eq(u.port, 1);
	ck_assert_int_eq(u.db, 0);

	/* Empty password. */
	ck_assert_int_eq(config_parse_redis_url("redis://bob:@h:2", &u, err, sizeof(err)), 0);
	ck_assert_str_eq(u.user, "bob");
	ck_assert_str_eq(u.password, "");

	/* IPv6. */
	ck_assert_int_eq(config_parse_redis_url("redis://[::1]:6379/3", &u, err, sizeof(err)), 0);
	ck_assert_str_eq(u.host, "::1");
	ck_assert_int_eq(u.port, 6379);
	ck_assert_int_eq(u.db, 3);
	ck_assert_ptr_null(u.user);
	ck_assert_ptr_null(u.password);
	ck_assert_int_eq(config_parse_redis_url("redis://u:p@[fe80::1:2]:65535", &u, err, sizeof(err)), 0);
	ck_assert_str_eq(u.host, "fe80::1:2");
	ck_assert_int_eq(u.port, 65535);
	ck_assert_str_eq(u.user, "u");
	ck_assert_str_eq(u.password, "p");

	/* Trailing slash, biggest db. */
	ck_assert_int_eq(config_parse_redis_url("redis://h:7/", &u, err, sizeof(err)), 0);
	ck_assert_int_eq(u.db, 0);
	ck_assert_int_eq(config_parse_redis_url("redis://h:7/1000000", &u, err, sizeof(err)), 0);
	ck_assert_int_eq(u.db, 1000000);

	/* Failures leave *out as it was. */
	{
		static const char *const bad[] = {
			"redis://h", "redis://h:0", "redis://h:65536", "redis://h:x", "redis://h:",
			"redis://:1", "redis://h:1/-1", "redis://h:1/x", "redis://h:1/1000001",
			"redis://[::1]6379", "redis://[::1:6379", "redis://", "redis://h:1/2/3",
		};
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			char expect[512];
			err[0] = '\0';
			ck_assert_msg(config_parse_redis_url(bad[i], &u, err, sizeof(err)) == -1,
			    "accepted %s", bad[i]);
			snprintf(expect, sizeof(expect),
			    "bad redis url \"%s\" (want redis://[[USER]:PASSWORD@]HOST:PORT[/DB])", bad[i]);
			ck_assert_str_eq(err, expect);
			ck_assert_str_eq(u.host, "h");
			ck_assert_int_eq(u.port, 7);
			ck_assert_int_eq(u.db, 1000000);
		}
	}
	ck_assert_int_eq(config_parse_redis_url("rediss://h:1", &u, err, sizeof(err)), -1);
	ck_assert_str_eq(err, "redis url must start with redis:// (got \"rediss://h:1\")");
	ck_assert_int_eq(config_parse_redis_url("redis://@h:1", &u, err, sizeof(err)), -1);
	ck_assert_str_eq(err, "redis url: credentials must be USER, USER:PASSWORD or :PASSWORD "
	    "in \"redis://***@h:1\"");
	/* A user alone: the password is in redis.password_file. */
	ck_assert_int_eq(config_parse_redis_url("redis://carol@h:1/2", &u, err, sizeof(err)), 0);
	ck_assert_str_eq(u.user, "carol");
	ck_assert_ptr_null(u.password);
	ck_assert_int_eq(u.db, 2);
	/* err may be NULL. */
	ck_assert_int_eq(config_parse_redis_url("x", &u, NULL, 0), -1);
	ck_assert_str_eq(u.host, "h");
	config_free_redis_url(&u);
	ck_assert_ptr_null(u.host);
}
END_TEST

START_TEST(test_split_hostport)
{
	char host[16];
	int port = -1;

	ck_assert_int_eq(config_split_hostport("127.0.0.1:7070", host, sizeof(host), &port), 0);
	ck_assert_str_eq(host, "127.0.0.1");
	ck_assert_int_eq(port, 7070);
	ck_assert_int_eq(config_split_hostport("[::1]:0", host, sizeof(host), &port), 0);
	ck_assert_str_eq(host, "::1");
	ck_assert_int_eq(port, 0);
	ck_assert_int_eq(config_split_hostport("localhost:65535", host, sizeof(host), &port), 0);
	ck_assert_str_eq(host, "localhost");
	ck_assert_int_eq(port, 65535);
	ck_assert_int_eq(config_split_hostport("123456789012345:1", host, sizeof(host), &port), 0);
	ck_assert_str_eq(host, "123456789012345");
	/* host does not fit */
	ck_assert_int_eq(config_split_hostport("1234567890123456:1", host, sizeof(host), &port), -1);
	ck_assert_int_eq(config_split_hostport("host", host, sizeof(host), &port), -1);
	ck_assert_int_eq(config_split_hostport(":80", host, sizeof(host), &port), -1);
	ck_assert_int_eq(config_split_hostport("[]:80", host, sizeof(host), &port), -1);
	ck_assert_int_eq(config_split_hostport("h:", host, sizeof(host), &port), -1);
	ck_assert_int_eq(config_split_hostport("h:-1", host, sizeof(host), &port), -1);
	ck_assert_int_eq(config_split_hostport("h:65536", host, sizeof(host), &port), -1);
	ck_assert_int_eq(config_split_hostport("h:80x", host, sizeof(host), &port), -1);
	ck_assert_int_eq(config_split_hostport("[::1]80", host, sizeof(host), &port), -1);
	ck_assert_int_eq(config_split_hostport("[::1", host, sizeof(host), &port), -1);
}
END_TEST

START_TEST(test_stream_names)
{
	char name[202];

	ck_assert_int_eq(config_valid_stream_name("market_data", 11), 1);
	ck_assert_int_eq(config_valid_stream_name("AZaz09_.:-", 10), 1);
	ck_assert_int_eq(config_valid_stream_name("", 0), 0);
	ck_assert_int_eq(config_valid_stream_name("a b", 3), 0);
	ck_assert_int_eq(config_valid_stream_name("a/b", 3), 0);
	ck_assert_int_eq(config_valid_stream_name("a{b}", 4), 0);
	ck_assert_int_eq(config_valid_stream_name("\xc3\xa9", 2), 0);
	ck_assert_int_eq(config_valid_stream_name("ab\0c", 4), 0);
	ck_assert_int_eq(config_valid_stream_name("ab*", 2), 1);	/* only len bytes */
	memset(name, 'x', sizeof(name));
	ck_assert_int_eq(config_valid_stream_name(name, 200), 1);
	ck_assert_int_eq(config_valid_stream_name(name, 201), 0);
}
END_TEST

/* ------------------------------------------------------------ overrides */

START_TEST(test_overrides)
{
	struct config *cfg = t_new();
	char err[512];

	ck_assert_int_eq(config_set_metrics(cfg, "off", err, sizeof(err)), 0);
	ck_assert_ptr_null(cfg->metrics_listen);
	ck_assert_int_eq(config_set_metrics(cfg, "127.0.0.1:9", err, sizeof(err)), 0);
	ck_assert_str_eq(cfg->metrics_listen, "127.0.0.1:9");
	ck_assert_int_eq(config_set_metrics(cfg, "OFF", err, sizeof(err)), 0);
	ck_assert_ptr_null(cfg->metrics_listen);
	ck_assert_int_eq(config_set_metrics(cfg, "[::]:8001", err, sizeof(err)), 0);
	ck_assert_str_eq(cfg->metrics_listen, "[::]:8001");
	ck_assert_int_eq(config_set_metrics(cfg, "bad", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "metrics: want HOST:PORT or off, got \"bad\"");
	ck_assert_str_eq(cfg->metrics_listen, "[::]:8001");
	ck_assert_int_eq(config_set_metrics(cfg, "", err, sizeof(err)), 0);
	ck_assert_ptr_null(cfg->metrics_listen);

	ck_assert_int_eq(config_set_listen(cfg, "0.0.0.0:1234", err, sizeof(err)), 0);
	ck_assert_str_eq(cfg->listen, "0.0.0.0:1234");
	ck_assert_int_eq(config_set_listen(cfg, "1234", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "listen: want HOST:PORT, got \"1234\"");
	ck_assert_str_eq(cfg->listen, "0.0.0.0:1234");

	ck_assert_int_eq(config_set_redis_url(cfg, "redis://:pw@[::1]:7000/2", err, sizeof(err)), 0);
	ck_assert_str_eq(cfg->redis_url_text, "redis://:pw@[::1]:7000/2");
	ck_assert_str_eq(cfg->redis.host, "::1");
	ck_assert_int_eq(cfg->redis.port, 7000);
	ck_assert_int_eq(cfg->redis.db, 2);
	ck_assert_str_eq(cfg->redis.password, "pw");
	ck_assert_int_eq(config_set_redis_url(cfg, "redis://x", err, sizeof(err)), -1);
	ck_assert_str_eq(cfg->redis_url_text, "redis://:pw@[::1]:7000/2");
	ck_assert_str_eq(cfg->redis.host, "::1");
	config_free(cfg);

	/* "off" in the file too. */
	cfg = t_load_ok("[metrics]\nlisten = off\n");
	ck_assert_ptr_null(cfg->metrics_listen);
	config_free(cfg);
	cfg = t_load_ok("[metrics]\nlisten = off\nlisten = 127.0.0.1:1\n");
	ck_assert_str_eq(cfg->metrics_listen, "127.0.0.1:1");
	config_free(cfg);
}
END_TEST

/* ------------------------------------------------------------ shipped file */

START_TEST(test_shipped_conf)
{
	static const char *const five[] = {
		"market_data", "trading_signal", "risk_alert", "strategy_update", "system_event",
	};
	const char *path = "etc/streambus.conf";
	char err[CONFIG_ERR_LEN + 64];
	struct config *cfg;

	if (access(path, F_OK) != 0) {
		fprintf(stderr, "check_config: %s absent, test_shipped_conf skipped\n", path);
		return;
	}
	cfg = t_new();
	ck_assert_msg(config_load_file(cfg, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(t_count_streams(cfg), 5);
	for (size_t i = 0; i < 5; i++) {
		const struct stream_conf *sc = t_find_stream(cfg, five[i]);
		ck_assert_msg(sc != NULL, "%s does not declare [stream %s]", path, five[i]);
		ck_assert_ptr_eq(config_stream(cfg, five[i]), sc);
	}
	config_free(cfg);
}
END_TEST

/* ------------------------------------------------------------ man page */

struct t_key {
	char section[32];
	char name[64];
};

/* The keys of src/config.c's config_keys[] table, read as text. */
static size_t
t_code_keys(struct t_key *keys, size_t max)
{
	char *src = t_read_file("src/config.c"), *p, *end;
	size_t n = 0;

	ck_assert_msg(src != NULL, "cannot read src/config.c (run from the repository root)");
	p = strstr(src, "config_keys[] = {");
	ck_assert_ptr_nonnull(p);
	end = strstr(p, "\n};");
	ck_assert_ptr_nonnull(end);
	*end = '\0';
	while ((p = strchr(p, '\n')) != NULL) {
		p++;
		if (sscanf(p, " { \"%31[^\"]\", \"%63[^\"]\",", keys[n].section, keys[n].name) == 2) {
			ck_assert_uint_lt(n + 1, max);
			n++;
		}
	}
	free(src);
	return n;
}

/* ".It Cm KEY" lines of man/streambus.conf.5, with the section of the
 * enclosing ".Ss [section]" ([defaults] and [stream name] as "stream"). */
static size_t
t_man_keys(struct t_key *keys, size_t max)
{
	char *man = t_read_file("man/streambus.conf.5"), *line, *save = NULL;
	char section[32] = "";
	size_t n = 0;

	ck_assert_msg(man != NULL, "cannot read man/streambus.conf.5");
	for (line = strtok_r(man, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, ".Sh ", 4) == 0)
			section[0] = '\0';
		else if (strncmp(line, ".Ss [", 5) == 0) {
			if (strncmp(line, ".Ss [defaults]", 14) == 0 || strncmp(line, ".Ss [stream", 11) == 0)
				snprintf(section, sizeof(section), "stream");
			else if (sscanf(line, ".Ss [%31[^]]]", section) != 1)
				section[0] = '\0';
		} else if (strncmp(line, ".It Cm ", 7) == 0 && section[0] != '\0') {
			ck_assert_uint_lt(n + 1, max);
			snprintf(keys[n].section, sizeof(keys[n].section), "%s", section);
			if (sscanf(line + 7, "%63s", keys[n].name) == 1)
				n++;
		}
	}
	free(man);
	return n;
}

static int
t_has_key(const struct t_key *keys, size_t n, const char *section, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
			return 1;
	return 0;
}

START_TEST(test_man_page_keys)
{
	struct t_key code[128], man[128];
	size_t ncode = t_code_keys(code, 128), nman = t_man_keys(man, 128);

	/* The scans found the tables (26 keys when this test was written). */
	ck_assert_uint_ge(ncode, 26);
	ck_assert_uint_ge(nman, 20);
	ck_assert(t_has_key(code, ncode, "server", "listen"));
	ck_assert(t_has_key(code, ncode, "stream", "durability"));
	for (size_t i = 0; i < ncode; i++)
		ck_assert_msg(t_has_key(man, nman, code[i].section, code[i].name),
		    "key %s.%s of src/config.c is not documented in man/streambus.conf.5",
		    code[i].section, code[i].name);
	for (size_t i = 0; i < nman; i++)
		ck_assert_msg(t_has_key(code, ncode, man[i].section, man[i].name),
		    "man/streambus.conf.5 documents %s.%s, which src/config.c does not know",
		    man[i].section, man[i].name);
}
END_TEST

/* ------------------------------------------------------------ known bugs */

/* A section named just [stream] matched the "stream" keys with the struct
 * config as base: stream_conf offsets written into struct config
 * (prefetch lands on max_payload; ack_timeout_ms on the listen pointer,
 * a crash in config_free). */
/* redis.sentinels and redis.cluster: lists of addresses, and what may
 * not go with them. */
START_TEST(test_redis_topology)
{
	struct config_hostport hp[CONFIG_MAX_HOSTS];
	struct config *cfg;
	char err[CONFIG_ERR_LEN + 64] = "";

	cfg = t_load_ok("[redis]\ncluster = 127.0.0.1:7000, [::1]:7001,localhost:7002\n");
	ck_assert_str_eq(cfg->cluster, "127.0.0.1:7000, [::1]:7001,localhost:7002");
	ck_assert_int_eq(config_parse_hostlist(cfg->cluster, hp, CONFIG_MAX_HOSTS), 3);
	ck_assert_str_eq(hp[1].host, "::1");
	ck_assert_int_eq(hp[1].port, 7001);
	ck_assert_str_eq(hp[2].host, "localhost");
	/* --redis may still give a user and password, not a db */
	ck_assert_int_eq(config_set_redis_url(cfg, "redis://u:p@h:1", err, sizeof(err)), 0);
	ck_assert_int_eq(config_set_redis_url(cfg, "redis://h:1/2", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "redis://h:1/2: a Redis Cluster has only db 0");
	config_free(cfg);

	ck_assert_int_eq(config_parse_hostlist("a:1,,b:2 ", hp, CONFIG_MAX_HOSTS), 2);
	ck_assert_int_eq(config_parse_hostlist("a:1,b", hp, CONFIG_MAX_HOSTS), -1);
	ck_assert_int_eq(config_parse_hostlist(" , ", hp, CONFIG_MAX_HOSTS), -1);
	ck_assert_int_eq(config_parse_hostlist("a:1,b:2,c:3", hp, 2), -1);

	ck_load_err("[redis]\ncluster = 127.0.0.1\n",
	    "t.conf: redis.cluster: want host:port,host:port (at most 16)");
	ck_load_err("[redis]\ncluster = a:1\nsentinels = b:2\nmaster_name = m\n",
	    "t.conf: redis.cluster and redis.sentinels exclude each other");
	ck_load_err("[redis]\ncluster = a:1\nurl = redis://h:1/3\n",
	    "t.conf:3: redis://h:1/3: a Redis Cluster has only db 0");
	ck_load_err("[redis]\nurl = redis://h:1/3\ncluster = a:1\n",
	    "t.conf: redis.cluster: a Redis Cluster has only db 0");
	ck_load_err("[redis]\ncluster = a:1\nprefix = x{y}:\n",
	    "t.conf: redis.cluster: redis.prefix must not contain { or }");
	ck_load_err("[redis]\nsentinels = a:1,b\nmaster_name = m\n",
	    "t.conf: redis.sentinels: want host:port,host:port (at most 16)");
}
END_TEST

/* Key slots as Redis Cluster computes them (CLUSTER KEYSLOT, and the
 * hash tag rules of the cluster specification). */
START_TEST(test_cluster_key_slot)
{
#define SLOT(k) cluster_key_slot((k), strlen(k))
	ck_assert_uint_eq(SLOT("123456789"), 0x31C3 & 16383);	/* the CRC16 check value */
	ck_assert_uint_eq(SLOT("foo"), 12182);
	ck_assert_uint_eq(SLOT("bar"), 5061);
	ck_assert_uint_eq(SLOT(""), 0);
	ck_assert_uint_eq(SLOT("{user1000}.following"), SLOT("{user1000}.followers"));
	ck_assert_uint_eq(SLOT("{user1000}.following"), SLOT("user1000"));
	ck_assert_uint_eq(SLOT("foo{}{bar}"), SLOT("foo{}{bar}"));
	ck_assert_uint_ne(SLOT("foo{}{bar}"), SLOT("bar"));	/* empty tag: the whole key */
	ck_assert_uint_eq(SLOT("foo{{bar}}zap"), SLOT("{bar"));
	ck_assert_uint_eq(SLOT("foo{bar}{zap}"), SLOT("bar"));
	ck_assert_uint_eq(SLOT("foo{bar"), SLOT("foo{bar"));
	ck_assert_uint_ne(SLOT("foo{bar"), SLOT("bar"));	/* no closing brace */
	/* A stream's keys share its slot. */
	ck_assert_uint_eq(SLOT("sb:{market_data}"), SLOT("sb:{market_data}:dlq"));
	ck_assert_uint_eq(SLOT("sb:{market_data}"), SLOT("sb:{market_data}:dedup:exp"));
	ck_assert_uint_eq(SLOT("sb:{market_data}"), SLOT("market_data"));
#undef SLOT
}
END_TEST

START_TEST(test_bug_bare_stream_section)
{
	ck_load_err("[stream]\nprefetch = 5\n", "t.conf:1: unknown section [stream]");
	ck_load_err("[server]\n[stream]\nmax_attempts = 5\n", "t.conf:2: unknown section [stream]");
}
END_TEST

/* The message must belong to the line reported: the first error. */
START_TEST(test_bug_first_error_wins)
{
	ck_load_err("[server]\nfoo = 1\nmax_clients = 5\nbar = 2\n",
	    "t.conf:2: unknown key \"foo\" in [server]");
	ck_load_err("[server]\nnot a key line\nbar = 2\n", "t.conf:2: syntax error (want KEY = VALUE or [SECTION])");
	ck_load_err("[server\nlisten = 1.2.3.4:5\n", "t.conf:1: bad section header");
}
END_TEST

/* A section without keys is still a section: an unknown one is an error,
 * and [stream X] declares X (broker_init creates declared streams). */
START_TEST(test_bug_empty_sections)
{
	struct config *cfg;

	ck_load_err("[server]\nmax_clients = 5\n[bogus]\n", "t.conf:3: unknown section [bogus]");
	ck_load_err("[stream bad!name]\n",
	    "t.conf:1: [stream bad!name]: bad stream name (1..200 of A-Za-z0-9_.:-)");
	cfg = t_load_ok("[stream declared_only]\n; all defaults\n");
	ck_assert_ptr_nonnull(t_find_stream(cfg, "declared_only"));
	config_free(cfg);
}
END_TEST

/* libinih keeps 49 bytes of a section name: [stream <100 characters>]
 * configured a stream named by the first 42 of them, silently. */
START_TEST(test_bug_long_section_names)
{
	char name[101], text[300], err[CONFIG_ERR_LEN + 64];
	struct config *cfg = t_new();

	memset(name, 'n', 100);
	name[100] = '\0';
	snprintf(text, sizeof(text), "[stream %s]\nmaxlen = 1\n", name);
	if (config_load_string(cfg, text, "t.conf", err, sizeof(err)) == 0) {
		ck_assert_int_eq(t_count_streams(cfg), 1);
		ck_assert_str_eq(cfg->streams->name, name);
	} else
		ck_assert_msg(strncmp(err, "t.conf:1: ", 10) == 0, "reported as %s", err);
	config_free(cfg);
}
END_TEST

/* libinih's 200-byte line buffer splits longer lines: the tail is parsed
 * as a line of its own (with the wrong line number). */
START_TEST(test_bug_long_lines)
{
	char text[1024], comment[301], value[301], err[CONFIG_ERR_LEN + 64];
	struct config *cfg;
	int rc;

	memset(comment, 'c', 300);
	comment[300] = '\0';
	memset(value, 'v', 300);
	value[300] = '\0';
	snprintf(text, sizeof(text), "[server]\n; %s\nmax_clients = 5\n", comment);
	cfg = t_load_ok(text);
	ck_assert_int_eq(cfg->max_clients, 5);
	config_free(cfg);
	/* A long value: accepted whole, or refused on its own line. */
	snprintf(text, sizeof(text), "[redis]\nprefix = %s\n[server]\nmax_clients = 5\n", value);
	cfg = t_new();
	rc = config_load_string(cfg, text, "t.conf", err, sizeof(err));
	if (rc == 0)
		ck_assert_str_eq(cfg->prefix, value);
	else
		ck_assert_msg(strncmp(err, "t.conf:2: ", 10) == 0 && strstr(err, "syntax error") == NULL,
		    "long line reported as: %s", err);
	config_free(cfg);
	/* A stream name of 200 characters (allowed) in its section header. */
	memset(value, 'n', 200);
	value[200] = '\0';
	snprintf(text, sizeof(text), "[stream %s]\nmaxlen = 1\n", value);
	cfg = t_load_ok(text);
	ck_assert_int_eq(config_stream(cfg, value)->maxlen, 1);
	config_free(cfg);
}
END_TEST

static Suite *
config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc;

	tc = tcase_create("config");
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_daemon_md_example);
	tcase_add_test(tc, test_every_key);
	tcase_add_test(tc, test_durability);
	tcase_add_test(tc, test_stream_inheritance);
	tcase_add_test(tc, test_errors);
	tcase_add_test(tc, test_load_file);
	tcase_add_test(tc, test_redis_url);
	tcase_add_test(tc, test_split_hostport);
	tcase_add_test(tc, test_stream_names);
	tcase_add_test(tc, test_overrides);
	tcase_add_test(tc, test_shipped_conf);
	tcase_add_test(tc, test_man_page_keys);
	tcase_add_test(tc, test_redis_topology);
	tcase_add_test(tc, test_cluster_key_slot);
	tcase_add_test(tc, test_bug_bare_stream_section);
	tcase_add_test(tc, test_bug_first_error_wins);
	tcase_add_test(tc, test_bug_empty_sections);
	tcase_add_test(tc, test_bug_long_section_names);
	tcase_add_test(tc, test_bug_long_lines);
	suite_add_tcase(s, tc);

	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(config_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
