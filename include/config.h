/*
 * config.h: the INI configuration of daemon.md plus the keys streambusd adds
 * (see man/streambus.conf.5).  A config is built whole, validated, and only
 * then swapped in, so a bad reload changes nothing.
 */
#ifndef CONFIG_H
#define CONFIG_H

#include <stddef.h>

#define STREAMBUS_VERSION    "0.1.0"
#define CONFIG_DEFAULT_PATH  "/etc/streambus/streambus.conf"
#define CONFIG_MAX_STREAM    200	/* longest stream name (protocol.md) */
#define CONFIG_ERR_LEN       512

/* Per-stream settings: [defaults] and [stream NAME]. */
struct stream_conf {
	char   *name;			/* NULL for [defaults] */
	long    ack_timeout_ms;
	long    max_attempts;
	long    retry_delay_ms;
	long    retry_max_ms;
	long    prefetch;
	long    maxlen;			/* 0 = no cap */
	long    maxlen_hard;		/* 1: maxlen may trim entries groups need */
	long    dedup_window_ms;
	long    replicas;		/* durability: 0 = confirmed by Redis */
	long    replicas_timeout_ms;
	unsigned long long set;		/* bitmask of keys given in the section */
	struct stream_conf *next;
};

struct redis_url {
	char *host;
	int   port;
	char *user;
	char *password;
	int   db;
};

struct config {
	char   *path;			/* NULL: built-in defaults */
	/* [server] */
	char   *listen;
	char   *unix_socket;
	long    unix_socket_mode;	/* permissions of the socket file */
	long    max_clients;
	long    max_line;
	long    max_payload;
	char   *auth_tokens;
	long    shutdown_timeout_ms;
	int     log_level;
	long    max_subs_per_conn;
	long    max_batch;
	long    output_buffer_limit;
	long    max_pending_requests;
	long    idle_timeout_ms;	/* 0 = never */
	long    slow_consumer_timeout_ms;	/* 0 = never */
	/* [metrics] */
	char   *metrics_listen;		/* NULL = off */
	/* [redis] */
	char   *redis_url_text;
	struct redis_url redis;
	char   *prefix;
	long    max_inflight;
	long    connect_timeout_ms;
	long    pub_wait_ms;
	char   *sentinels;		/* "host:port,host:port", or NULL */
	char   *master_name;
	char   *cluster;		/* "host:port,host:port" seeds, or NULL */
	char   *password_file;	/* the Redis password, read at start and reload */
	/* [defaults] and [stream NAME] */
	struct stream_conf defaults;
	struct stream_conf *streams;
};

struct config *config_new(void);
void config_free(struct config *cfg);

/* Parse a file / a string into cfg.  On error returns -1 and writes
 * "FILE:LINE: message" into err. */
int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen);
int config_load_string(struct config *cfg, const char *text, const char *name,
    char *err, size_t errlen);

/* Command-line overrides; "off" for metrics disables it. */
int config_set_listen(struct config *cfg, const char *addr, char *err, size_t errlen);
int config_set_metrics(struct config *cfg, const char *addr, char *err, size_t errlen);
int config_set_redis_url(struct config *cfg, const char *url, char *err, size_t errlen);

/* Settings for a stream: its own section, else [defaults]. */
const struct stream_conf *config_stream(const struct config *cfg, const char *name);

int config_parse_redis_url(const char *text, struct redis_url *out, char *err, size_t errlen);
void config_free_redis_url(struct redis_url *u);

/* "host:port" / "[v6]:port"; host is written to out (size outlen). */
int config_split_hostport(const char *addr, char *host, size_t hostlen, int *port);

/* "host:port,host:port" (commas or spaces): the number of addresses, or
 * -1 (none, one bad, more than max). */
#define CONFIG_MAX_HOSTS 16
struct config_hostport {
	char host[256];
	int  port;
};
int config_parse_hostlist(const char *list, struct config_hostport *out, int max);

/* Stream names: 1..200 of [A-Za-z0-9_.:-]. */
int config_valid_stream_name(const char *name, size_t len);

#endif
