/* log.c: leveled, single-line log records on stderr. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

static enum log_level log_level = LOG_INFO;
static int log_journal;	/* stderr goes to journald: use <N> prefixes */

static const struct { const char *name; enum log_level level; } log_names[] = {
	{ "error", LOG_ERR }, { "warn", LOG_WARN }, { "info", LOG_INFO },
	{ "debug", LOG_DEBUG },
};

void
log_init(void)
{
	log_journal = getenv("JOURNAL_STREAM") != NULL;
}

void
log_set_level(enum log_level level)
{
	log_level = level;
}

int
log_parse_level(const char *name, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++) {
		if (strcmp(name, log_names[i].name) == 0) {
			*out = log_names[i].level;
			return 0;
		}
	}
	return -1;
}

int
log_enabled(enum log_level level)
{
	return level <= log_level;
}

static const char *
log_level_name(enum log_level level)
{
	for (size_t i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++)
		if (log_names[i].level == level)
			return log_names[i].name;
	return "?";
}

void
log_msg(enum log_level level, const char *subsys, unsigned long long conn_id,
    const char *fmt, ...)
{
	char line[1024], stamp[32] = "";
	int n = 0;
	va_list ap;

	if (!log_enabled(level))
		return;
	if (log_journal)
		n = snprintf(line, sizeof(line), "<%d>", (int)level);
	else {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
		n = snprintf(line, sizeof(line), "%s.%03ldZ ", stamp,
		    ts.tv_nsec / 1000000);
	}
	n += snprintf(line + n, sizeof(line) - n, "%s %s", log_level_name(level),
	    subsys);
	if (conn_id != 0 && n < (int)sizeof(line))
		n += snprintf(line + n, sizeof(line) - n, " conn=%llu", conn_id);
	if (n < (int)sizeof(line) - 2) {
		line[n++] = ':';
		line[n++] = ' ';
		va_start(ap, fmt);
		vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		va_end(ap);
	}
	fprintf(stderr, "%s\n", line);
}
