/*
 * config.c: INI parsing (libinih) into struct config.  Every key is listed
 * once in a table with its type and range; man/streambus.conf.5 documents
 * the same table (tests/check_config cross-checks them).
 */
#include <errno.h>
#include <stdarg.h>
#include <ini.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "log.h"

enum key_type { KEY_LONG, KEY_MODE, KEY_STRING, KEY_ADDR, KEY_URL, KEY_LOGLEVEL, KEY_DURABILITY };

struct config_key {
	const char   *section;		/* "stream" = [defaults] and [stream X] */
	const char   *name;
	enum key_type type;
	size_t        offset;
	long          min, max;
};

#define S(f) offsetof(struct config, f)
#define T(f) offsetof(struct stream_conf, f)
static const struct config_key config_keys[] = {
	{ "server", "listen", KEY_ADDR, S(listen), 0, 0 },
	{ "server", "unix_socket", KEY_STRING, S(unix_socket), 0, 0 },
	{ "server", "unix_socket_mode", KEY_MODE, S(unix_socket_mode), 0, 0777 },
	{ "server", "max_clients", KEY_LONG, S(max_clients), 1, 1000000 },
	{ "server", "max_line", KEY_LONG, S(max_line), 256, 256L << 20 },
	{ "server", "max_payload", KEY_LONG, S(max_payload), 16, 256L << 20 },
	{ "server", "auth_tokens", KEY_STRING, S(auth_tokens), 0, 0 },
	{ "server", "shutdown_timeout_ms", KEY_LONG, S(shutdown_timeout_ms), 0, 3600000 },
	{ "server", "log_level", KEY_LOGLEVEL, S(log_level), 0, 0 },
	{ "server", "max_subs_per_conn", KEY_LONG, S(max_subs_per_conn), 1, 100000 },
	{ "server", "max_batch", KEY_LONG, S(max_batch), 1, 1000000 },
	{ "server", "output_buffer_limit", KEY_LONG, S(output_buffer_limit), 65536, 1L << 32 },
	{ "server", "max_pending_requests", KEY_LONG, S(max_pending_requests), 1, 1000000 },
	{ "server", "idle_timeout_ms", KEY_LONG, S(idle_timeout_ms), 0, 86400000 },
	{ "server", "slow_consumer_timeout_ms", KEY_LONG, S(slow_consumer_timeout_ms), 0, 86400000 },
	{ "metrics", "listen", KEY_ADDR, S(metrics_listen), 0, 0 },
	{ "redis", "url", KEY_URL, S(redis_url_text), 0, 0 },
	{ "redis", "prefix", KEY_STRING, S(prefix), 0, 0 },
	{ "redis", "max_inflight", KEY_LONG, S(max_inflight), 1, 10000000 },
	{ "redis", "connect_timeout_ms", KEY_LONG, S(connect_timeout_ms), 10, 600000 },
	{ "redis", "pub_wait_ms", KEY_LONG, S(pub_wait_ms), 0, 600000 },
	{ "redis", "sentinels", KEY_STRING, S(sentinels), 0, 0 },
	{ "redis", "password_file", KEY_STRING, S(password_file), 0, 0 },
	{ "redis", "master_name", KEY_STRING, S(master_name), 0, 0 },
	{ "redis", "cluster", KEY_STRING, S(cluster), 0, 0 },
	{ "stream", "ack_timeout_ms", KEY_LONG, T(ack_timeout_ms), 100, 86400000 },
	{ "stream", "max_attempts", KEY_LONG, T(max_attempts), 1, 1000 },
	{ "stream", "retry_delay_ms", KEY_LONG, T(retry_delay_ms), 0, 86400000 },
	{ "stream", "retry_max_ms", KEY_LONG, T(retry_max_ms), 0, 86400000 },
	{ "stream", "prefetch", KEY_LONG, T(prefetch), 1, 10000 },
	{ "stream", "maxlen", KEY_LONG, T(maxlen), 0, 1L << 40 },
	{ "stream", "maxlen_hard", KEY_LONG, T(maxlen_hard), 0, 1 },
	{ "stream", "dedup_window_ms", KEY_LONG, T(dedup_window_ms), 1000, 86400000 },
	{ "stream", "durability", KEY_DURABILITY, 0, 0, 0 },
};
#undef S
#undef T
#define CONFIG_NKEYS (sizeof(config_keys) / sizeof(config_keys[0]))

/* libinih (Debian's build) cuts lines at 200 bytes and section names at 50,
 * and keeps going after an error.  So it reads through config_reader, which
 * counts lines, tracks sections itself (stream names run to 200 bytes), and
 * keeps the first error with its line. */
#define CONFIG_INI_LINE 200	/* libinih's INI_MAX_LINE */
#define CONFIG_MAX_LINE 4096

struct config_parse {
	struct config *cfg;
	char          *err;
	size_t         errlen;
	int            line;		/* lines handed to libinih so far */
	int            err_line;	/* line of the first error; 0 = none */
	char           section[CONFIG_MAX_STREAM + 16];
	struct stream_conf *stream;	/* [stream X] being read, else NULL */
	FILE          *f;		/* source: a file ... */
	const char    *text;		/* ... or a string */
};

static void config_fail(struct config_parse *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
stream_conf_defaults(struct stream_conf *sc)
{
	sc->ack_timeout_ms = 30000;
	sc->max_attempts = 3;
	sc->retry_delay_ms = 1000;
	sc->retry_max_ms = 60000;
	sc->prefetch = 64;
	sc->maxlen = 1000000;
	sc->dedup_window_ms = 120000;
	sc->replicas = 0;
	sc->replicas_timeout_ms = 1000;
}

struct config *
config_new(void)
{
	struct config *cfg = calloc(1, sizeof(*cfg));

	if (cfg == NULL)
		return NULL;
	cfg->listen = strdup("127.0.0.1:7070");
	cfg->max_clients = 10000;
	cfg->unix_socket_mode = 0660;
	cfg->slow_consumer_timeout_ms = 10000;
	cfg->max_line = 1048576;
	cfg->max_payload = 1048576;
	cfg->shutdown_timeout_ms = 5000;
	cfg->log_level = LOG_INFO;
	cfg->max_subs_per_conn = 1024;
	cfg->max_batch = 10000;
	cfg->output_buffer_limit = 8L << 20;
	cfg->max_pending_requests = 4096;
	cfg->metrics_listen = strdup("127.0.0.1:8001");
	cfg->redis_url_text = strdup("redis://127.0.0.1:6379/0");
	cfg->prefix = strdup("sb:");
	cfg->max_inflight = 100000;
	cfg->connect_timeout_ms = 2000;
	cfg->pub_wait_ms = 0;
	stream_conf_defaults(&cfg->defaults);
	if (cfg->listen == NULL || cfg->metrics_listen == NULL ||
	    cfg->redis_url_text == NULL || cfg->prefix == NULL ||
	    config_parse_redis_url(cfg->redis_url_text, &cfg->redis, NULL, 0) != 0) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

void
config_free_redis_url(struct redis_url *u)
{
	free(u->host);
	free(u->user);
	free(u->password);
	memset(u, 0, sizeof(*u));
}

void
config_free(struct config *cfg)
{
	struct stream_conf *sc, *next;

	if (cfg == NULL)
		return;
	for (size_t i = 0; i < CONFIG_NKEYS; i++) {
		const struct config_key *k = &config_keys[i];
		if (strcmp(k->section, "stream") != 0 && k->type != KEY_LONG &&
		    k->type != KEY_MODE && k->type != KEY_LOGLEVEL)
			free(*(char **)((char *)cfg + k->offset));
	}
	config_free_redis_url(&cfg->redis);
	for (sc = cfg->streams; sc != NULL; sc = next) {
		next = sc->next;
		free(sc->name);
		free(sc);
	}
	free(cfg->path);
	free(cfg);
}

int
config_valid_stream_name(const char *name, size_t len)
{
	if (len == 0 || len > CONFIG_MAX_STREAM)
		return 0;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ':' ||
		    c == '-'))
			return 0;
	}
	return 1;
}

int
config_split_hostport(const char *addr, char *host, size_t hostlen, int *port)
{
	const char *colon, *hstart = addr;
	size_t hlen;
	char *end;
	long p;

	if (addr[0] == '[') {
		const char *close = strchr(addr, ']');
		if (close == NULL || close[1] != ':')
			return -1;
		hstart = addr + 1;
		hlen = close - hstart;
		colon = close + 1;
	} else {
		colon = strrchr(addr, ':');
		if (colon == NULL)
			return -1;
		hlen = colon - addr;
	}
	if (hlen == 0 || hlen >= hostlen)
		return -1;
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno != 0 || *end != '\0' || end == colon + 1 || p < 0 || p > 65535)
		return -1;
	memcpy(host, hstart, hlen);
	host[hlen] = '\0';
	*port = (int)p;
	return 0;
}

static void
config_error(char *err, size_t errlen, const char *fmt, const char *arg)
{
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, fmt, arg);
}

/* The URL for messages: credentials replaced by "***". */
static void
config_redact_url(const char *text, char *out, size_t outlen)
{
	const char *at = strrchr(text, '@');

	if (at == NULL)
		snprintf(out, outlen, "%s", text);
	else
		snprintf(out, outlen, "redis://***%s", at);
}

/* redis://[[USER]:PASSWORD@]HOST:PORT[/DB], or USER@ alone (the password
 * then comes from redis.password_file). */
int
config_parse_redis_url(const char *text, struct redis_url *out, char *err, size_t errlen)
{
	char shown[320];
	struct redis_url u = { 0 };
	const char *p, *at, *slash;
	char hostport[300], *end;

	config_redact_url(text, shown, sizeof(shown));
	if (strncmp(text, "redis://", 8) != 0) {
		config_error(err, errlen, "redis url must start with redis:// (got \"%s\")", shown);
		return -1;
	}
	p = text + 8;
	at = strrchr(p, '@');
	if (at != NULL) {
		const char *colon = memchr(p, ':', at - p);
		if (colon == NULL && at == p) {
			config_error(err, errlen, "redis url: credentials must be USER, USER:PASSWORD "
			    "or :PASSWORD in \"%s\"", shown);
			return -1;
		}
		if (colon == NULL)
			u.user = strndup(p, at - p);
		else {
			if (colon > p)
				u.user = strndup(p, colon - p);
			u.password = strndup(colon + 1, at - colon - 1);
		}
		p = at + 1;
	}
	slash = strchr(p, '/');
	if ((slash ? (size_t)(slash - p) : strlen(p)) >= sizeof(hostport))
		goto bad;
	snprintf(hostport, sizeof(hostport), "%.*s",
	    (int)(slash ? slash - p : (long)strlen(p)), p);
	u.host = malloc(sizeof(hostport));
	if (u.host == NULL || config_split_hostport(hostport, u.host,
	    sizeof(hostport), &u.port) != 0 || u.port == 0)
		goto bad;
	if (slash != NULL && slash[1] != '\0') {
		long db;
		errno = 0;
		db = strtol(slash + 1, &end, 10);
		if (errno != 0 || *end != '\0' || db < 0 || db > 1000000)
			goto bad;
		u.db = (int)db;
	}
	config_free_redis_url(out);
	*out = u;
	return 0;
bad:
	config_free_redis_url(&u);
	config_error(err, errlen, "bad redis url \"%s\" (want redis://[[USER]:PASSWORD@]HOST:PORT[/DB])", shown);
	return -1;
}

static struct stream_conf *
config_stream_section(struct config *cfg, const char *name)
{
	struct stream_conf *sc;

	for (sc = cfg->streams; sc != NULL; sc = sc->next)
		if (strcmp(sc->name, name) == 0)
			return sc;
	sc = calloc(1, sizeof(*sc));
	if (sc == NULL)
		return NULL;
	sc->name = strdup(name);
	if (sc->name == NULL) {
		free(sc);
		return NULL;
	}
	sc->next = cfg->streams;
	cfg->streams = sc;
	return sc;
}

const struct stream_conf *
config_stream(const struct config *cfg, const char *name)
{
	for (const struct stream_conf *sc = cfg->streams; sc != NULL; sc = sc->next)
		if (strcmp(sc->name, name) == 0)
			return sc;
	return &cfg->defaults;
}

/* "redis" or "replicas:N[:TIMEOUT_MS]" */
static int
config_parse_durability(const char *value, struct stream_conf *sc)
{
	char *end;
	long n, t = 1000;

	if (strcmp(value, "redis") == 0) {
		sc->replicas = 0;
		return 0;
	}
	if (strncmp(value, "replicas:", 9) != 0)
		return -1;
	errno = 0;
	n = strtol(value + 9, &end, 10);
	if (errno != 0 || end == value + 9 || n < 1 || n > 100)
		return -1;
	if (*end == ':') {
		const char *ts = end + 1;
		t = strtol(ts, &end, 10);
		if (errno != 0 || end == ts || t < 1 || t > 600000)
			return -1;
	}
	if (*end != '\0')
		return -1;
	sc->replicas = n;
	sc->replicas_timeout_ms = t;
	return 0;
}

static int
config_parse_number(const char *value, int base, long min, long max, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(value, &end, base);
	if (errno != 0 || end == value || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static int
config_parse_long(const char *value, long min, long max, long *out)
{
	return config_parse_number(value, 10, min, max, out);
}

static int
config_set_string(char **slot, const char *value)
{
	char *copy = strdup(value);

	if (copy == NULL)
		return -1;
	free(*slot);
	*slot = copy;
	return 0;
}

static int
config_check_addr(const char *value)
{
	char host[256];
	int port;

	return config_split_hostport(value, host, sizeof(host), &port);
}

/* The command-line setters write their own message; keep it as the
 * first error. */
static int
config_setter(struct config_parse *p, int (*set)(struct config *, const char *, char *, size_t),
    const char *value)
{
	char msg[CONFIG_ERR_LEN];

	if (set(p->cfg, value, msg, sizeof(msg)) != 0)
		config_fail(p, "%s", msg);
	return 0;
}

/* Stream-level keys fill both [defaults] and [stream X]; the X sections
 * start as copies of [defaults] once the file is read (config_finish). */
static int
config_apply(struct config_parse *p, const struct config_key *k, void *base,
    const char *name, const char *value)
{
	struct config *cfg = p->cfg;
	void *slot = (char *)base + k->offset;

	switch (k->type) {
	case KEY_LONG:
		if (config_parse_long(value, k->min, k->max, slot) != 0) {
			config_fail(p, "%s: want an integer in %ld..%ld, got \"%s\"",
			    name, k->min, k->max, value);
			return 0;
		}
		return 0;
	case KEY_MODE:
		if (strspn(value, "01234567") != strlen(value) ||
		    config_parse_number(value, 8, k->min, k->max, slot) != 0)
			config_fail(p, "%s: want an octal file mode such as 0660, got \"%s\"",
			    name, value);
		return 0;
	case KEY_STRING:
		if (*value == '\0') {
			free(*(char **)slot);
			*(char **)slot = NULL;
			return 0;
		}
		return config_set_string(slot, value);
	case KEY_ADDR:
		if (slot == (void *)&cfg->metrics_listen)
			return config_setter(p, config_set_metrics, value);
		if (config_check_addr(value) != 0) {
			config_fail(p, "%s: want HOST:PORT, got \"%s\"", name, value);
			return 0;
		}
		return config_set_string(slot, value);
	case KEY_URL:
		return config_setter(p, config_set_redis_url, value);
	case KEY_LOGLEVEL: {
		enum log_level lv;
		if (log_parse_level(value, &lv) != 0) {
			config_fail(p, "%s: want error, warn, info or debug, got \"%s\"", name, value);
			return 0;
		}
		*(int *)slot = lv;
		return 0;
	}
	case KEY_DURABILITY:
		if (config_parse_durability(value, base) != 0) {
			config_fail(p, "durability: want redis or replicas:N[:TIMEOUT_MS], got \"%s\"",
			    value);
			return 0;
		}
		return 0;
	}
	return -1;
}

static void
config_fail(struct config_parse *p, const char *fmt, ...)
{
	va_list ap;

	if (p->err_line != 0)
		return;		/* the first error is the one to fix */
	p->err_line = p->line;
	va_start(ap, fmt);
	vsnprintf(p->err, p->errlen, fmt, ap);
	va_end(ap);
}

/* A "[...]" line: which section it opens; [stream X] declares X. */
static void
config_section(struct config_parse *p, const char *line)
{
	const char *close = strchr(line, ']');
	size_t len = close ? (size_t)(close - line - 1) : 0;

	p->stream = NULL;
	p->section[0] = '\0';
	if (close == NULL || len >= sizeof(p->section)) {
		config_fail(p, "bad section header");
		return;
	}
	memcpy(p->section, line + 1, len);
	p->section[len] = '\0';
	if (strcmp(p->section, "defaults") == 0)
		p->stream = &p->cfg->defaults;
	else if (strncmp(p->section, "stream ", 7) == 0) {
		const char *name = p->section + 7;
		while (*name == ' ')
			name++;
		if (!config_valid_stream_name(name, strlen(name)))
			config_fail(p, "[%s]: bad stream name (1..200 of A-Za-z0-9_.:-)", p->section);
		else if ((p->stream = config_stream_section(p->cfg, name)) == NULL)
			config_fail(p, "out of memory");
	} else if (strcmp(p->section, "server") != 0 && strcmp(p->section, "metrics") != 0 &&
	    strcmp(p->section, "redis") != 0)
		config_fail(p, "unknown section [%s]", p->section);
}

static int
config_read_raw(struct config_parse *p, char *buf, size_t size)
{
	if (p->f != NULL)
		return fgets(buf, (int)size, p->f) != NULL ? 0 : -1;
	if (p->text == NULL || *p->text == '\0')
		return -1;
	{
		const char *nl = strchr(p->text, '\n');
		size_t n = nl ? (size_t)(nl - p->text) + 1 : strlen(p->text);
		if (n >= size)
			n = size - 1;
		memcpy(buf, p->text, n);
		buf[n] = '\0';
		p->text += n;
	}
	return 0;
}

static char *
config_reader(char *str, int num, void *stream)
{
	struct config_parse *p = stream;
	char line[CONFIG_MAX_LINE + 2];
	const char *t;
	size_t len;

	if (config_read_raw(p, line, sizeof(line)) != 0)
		return NULL;
	p->line++;
	len = strlen(line);
	if (len > CONFIG_MAX_LINE && line[len - 1] != '\n') {
		config_fail(p, "line longer than %d bytes", CONFIG_MAX_LINE);
		while (line[strlen(line) - 1] != '\n' && config_read_raw(p, line, sizeof(line)) == 0)
			;
		line[0] = '\0';
	}
	for (t = line; *t == ' ' || *t == '\t'; t++)
		;
	if (*t == '[') {
		config_section(p, t);
		snprintf(str, (size_t)num, "[s]\n");	/* the real name is ours */
	} else if (*t == ';' || *t == '#' || *t == '\r' || *t == '\n' || *t == '\0')
		snprintf(str, (size_t)num, "\n");
	else if (strlen(line) >= (size_t)num || strlen(line) >= CONFIG_INI_LINE) {
		config_fail(p, "line longer than %d bytes", CONFIG_INI_LINE - 1);
		snprintf(str, (size_t)num, "\n");
	} else
		snprintf(str, (size_t)num, "%s", line);
	return str;
}

static int
config_handler(void *user, const char *section, const char *name, const char *value)
{
	struct config_parse *p = user;
	const char *sec = p->section;
	int in_stream = p->stream != NULL;

	(void)section;	/* libinih's copy is cut at 50 bytes; ours is whole */
	if (sec[0] == '\0') {
		config_fail(p, "\"%s\" outside of a section", name);
		return 1;
	}
	if (!in_stream && strcmp(sec, "server") != 0 && strcmp(sec, "metrics") != 0 &&
	    strcmp(sec, "redis") != 0)
		return 1;	/* an unknown section, already reported */
	for (size_t i = 0; i < CONFIG_NKEYS; i++) {
		const struct config_key *k = &config_keys[i];
		if (strcmp(k->section, in_stream ? "stream" : sec) != 0 ||
		    strcmp(k->name, name) != 0)
			continue;
		if (in_stream)
			p->stream->set |= 1ull << i;
		if (config_apply(p, k, in_stream ? (void *)p->stream : (void *)p->cfg, name,
		    value) != 0 && p->err_line == 0)
			config_fail(p, "%s: out of memory", name);
		return 1;
	}
	if (strcmp(sec, "server") == 0 || strcmp(sec, "metrics") == 0 ||
	    strcmp(sec, "redis") == 0 || in_stream)
		config_fail(p, "unknown key \"%s\" in [%s]", name, sec);
	return 1;
}

/* [stream X] sections inherit every key they did not set from [defaults]. */
static void
config_finish(struct config *cfg)
{
	/* "prefix =" means no prefix, not none at all */
	if (cfg->prefix == NULL)
		cfg->prefix = strdup("");
	for (struct stream_conf *sc = cfg->streams; sc != NULL; sc = sc->next) {
		for (size_t i = 0; i < CONFIG_NKEYS; i++) {
			const struct config_key *k = &config_keys[i];
			if (strcmp(k->section, "stream") != 0 || (sc->set & (1ull << i)))
				continue;
			if (k->type == KEY_DURABILITY) {
				sc->replicas = cfg->defaults.replicas;
				sc->replicas_timeout_ms = cfg->defaults.replicas_timeout_ms;
			} else
				*(long *)((char *)sc + k->offset) =
				    *(long *)((char *)&cfg->defaults + k->offset);
		}
	}
}

int
config_parse_hostlist(const char *list, struct config_hostport *out, int max)
{
	const char *p = list;
	int n = 0;

	while (*p != '\0') {
		size_t len = strcspn(p, ", ");
		char one[300];
		if (len > 0) {
			if (n == max || len >= sizeof(one))
				return -1;
			memcpy(one, p, len);
			one[len] = '\0';
			if (config_split_hostport(one, out[n].host, sizeof(out[n].host),
			    &out[n].port) != 0)
				return -1;
			n++;
		}
		p += len + (p[len] != '\0');
	}
	return n > 0 ? n : -1;
}

/* The [redis] keys that only make sense together. */
static int
config_check_redis(const struct config *cfg, const char *name, char *err, size_t errlen)
{
	struct config_hostport hp[CONFIG_MAX_HOSTS];

	if ((cfg->sentinels == NULL) != (cfg->master_name == NULL)) {
		snprintf(err, errlen, "%s: redis.sentinels and redis.master_name go together", name);
		return -1;
	}
	if (cfg->sentinels != NULL && config_parse_hostlist(cfg->sentinels, hp, CONFIG_MAX_HOSTS) < 0) {
		snprintf(err, errlen, "%s: redis.sentinels: want host:port,host:port (at most %d)",
		    name, CONFIG_MAX_HOSTS);
		return -1;
	}
	if (cfg->cluster == NULL)
		return 0;
	if (cfg->sentinels != NULL) {
		snprintf(err, errlen, "%s: redis.cluster and redis.sentinels exclude each other", name);
		return -1;
	}
	if (config_parse_hostlist(cfg->cluster, hp, CONFIG_MAX_HOSTS) < 0) {
		snprintf(err, errlen, "%s: redis.cluster: want host:port,host:port (at most %d)",
		    name, CONFIG_MAX_HOSTS);
		return -1;
	}
	if (cfg->redis.db != 0) {
		snprintf(err, errlen, "%s: redis.cluster: a Redis Cluster has only db 0", name);
		return -1;
	}
	/* The hash tag is the stream name: a brace in the prefix would move it. */
	if (cfg->prefix != NULL && strpbrk(cfg->prefix, "{}") != NULL) {
		snprintf(err, errlen, "%s: redis.cluster: redis.prefix must not contain { or }", name);
		return -1;
	}
	return 0;
}

static int
config_parse(struct config *cfg, struct config_parse *p, const char *name,
    char *err, size_t errlen)
{
	int rc = ini_parse_stream(config_reader, p, config_handler, p);

	if (rc < 0) {
		snprintf(err, errlen, "%s: cannot read: %s", name, strerror(errno));
		return -1;
	}
	/* libinih's own complaints (a line without '=') before ours */
	if (rc > 0 && (p->err_line == 0 || rc < p->err_line)) {
		snprintf(err, errlen, "%s:%d: syntax error (want KEY = VALUE or [SECTION])",
		    name, rc);
		return -1;
	}
	if (p->err_line != 0) {
		snprintf(err, errlen, "%s:%d: %s", name, p->err_line, p->err);
		return -1;
	}
	if (config_check_redis(cfg, name, err, errlen) != 0)
		return -1;
	config_finish(cfg);
	return 0;
}

int
config_load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
	char msg[CONFIG_ERR_LEN] = "";
	struct config_parse p = { .cfg = cfg, .err = msg, .errlen = sizeof(msg) };
	int rc;

	if ((p.f = fopen(path, "r")) == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	rc = config_parse(cfg, &p, path, err, errlen);
	fclose(p.f);
	if (rc == 0 && config_set_string(&cfg->path, path) != 0)
		rc = -1;
	return rc;
}

int
config_load_string(struct config *cfg, const char *text, const char *name,
    char *err, size_t errlen)
{
	char msg[CONFIG_ERR_LEN] = "";
	struct config_parse p = { .cfg = cfg, .err = msg, .errlen = sizeof(msg), .text = text };

	return config_parse(cfg, &p, name, err, errlen);
}

int
config_set_listen(struct config *cfg, const char *addr, char *err, size_t errlen)
{
	if (config_check_addr(addr) != 0) {
		config_error(err, errlen, "listen: want HOST:PORT, got \"%s\"", addr);
		return -1;
	}
	return config_set_string(&cfg->listen, addr);
}

int
config_set_metrics(struct config *cfg, const char *addr, char *err, size_t errlen)
{
	if (strcasecmp(addr, "off") == 0 || *addr == '\0') {
		free(cfg->metrics_listen);
		cfg->metrics_listen = NULL;
		return 0;
	}
	if (config_check_addr(addr) != 0) {
		config_error(err, errlen, "metrics: want HOST:PORT or off, got \"%s\"", addr);
		return -1;
	}
	return config_set_string(&cfg->metrics_listen, addr);
}

int
config_set_redis_url(struct config *cfg, const char *url, char *err, size_t errlen)
{
	if (config_parse_redis_url(url, &cfg->redis, err, errlen) != 0)
		return -1;
	if (cfg->cluster != NULL && cfg->redis.db != 0) {
		snprintf(err, errlen, "%s: a Redis Cluster has only db 0", url);
		return -1;
	}
	return config_set_string(&cfg->redis_url_text, url);
}
