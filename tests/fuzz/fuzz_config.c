/*
 * fuzz_config.c: libFuzzer target for the configuration parser
 * (src/config.c): config_load_string() on the input as a NUL-terminated
 * string, then config_free().  A config that loads must hold values within
 * the ranges of the key table; a config that does not must say where, as
 * "NAME:LINE: message" in a terminated buffer.
 *
 * Build: `make fuzz` (tests/fuzz/build/fuzz_config).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define FUZZ_CHECK(cond, ...) do {					\
	if (!(cond)) {							\
		fprintf(stderr, "fuzz_config: check failed: %s: ", #cond);	\
		fprintf(stderr, __VA_ARGS__);				\
		fputc('\n', stderr);					\
		abort();						\
	}								\
} while (0)

static void
fuzz_check_stream(const struct stream_conf *sc)
{
	FUZZ_CHECK(sc->ack_timeout_ms >= 100 && sc->ack_timeout_ms <= 86400000, "ack_timeout_ms");
	FUZZ_CHECK(sc->max_attempts >= 1 && sc->max_attempts <= 1000, "max_attempts");
	FUZZ_CHECK(sc->prefetch >= 1 && sc->prefetch <= 10000, "prefetch");
	FUZZ_CHECK(sc->maxlen >= 0, "maxlen");
	FUZZ_CHECK(sc->replicas >= 0 && sc->replicas <= 100, "replicas");
	if (sc->name != NULL)
		FUZZ_CHECK(config_valid_stream_name(sc->name, strlen(sc->name)),
		    "stream name %s", sc->name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1), err[CONFIG_ERR_LEN];
	struct config *cfg = config_new();
	int rc;

	FUZZ_CHECK(text != NULL && cfg != NULL, "out of memory");
	memcpy(text, data, size);
	text[size] = '\0';
	memset(err, 'E', sizeof(err));
	rc = config_load_string(cfg, text, "fuzz.conf", err, sizeof(err));
	if (rc != 0) {
		FUZZ_CHECK(rc == -1, "rc %d", rc);
		FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL, "error not terminated");
		FUZZ_CHECK(strncmp(err, "fuzz.conf:", 10) == 0, "error without place: %s", err);
	} else {
		size_t n = 0;
		FUZZ_CHECK(cfg->max_clients >= 1 && cfg->max_line >= 256 &&
		    cfg->max_payload >= 16 && cfg->output_buffer_limit >= 65536,
		    "server limits");
		FUZZ_CHECK(cfg->listen != NULL && cfg->redis_url_text != NULL &&
		    cfg->redis.host != NULL && cfg->redis.port > 0, "addresses");
		fuzz_check_stream(&cfg->defaults);
		for (const struct stream_conf *sc = cfg->streams; sc != NULL; sc = sc->next) {
			FUZZ_CHECK(++n < 100000, "stream list loops");
			fuzz_check_stream(sc);
			FUZZ_CHECK(config_stream(cfg, sc->name) != NULL, "lookup");
		}
	}
	config_free(cfg);
	free(text);
	return 0;
}
