/*
 * log.h: one line per event on stderr: level, subsystem, connection id.
 * Under systemd (JOURNAL_STREAM set) each line starts with the sd-daemon(3)
 * priority prefix "<N>" so journald keeps the level.
 */
#ifndef LOG_H
#define LOG_H

enum log_level { LOG_ERR = 3, LOG_WARN = 4, LOG_INFO = 6, LOG_DEBUG = 7 };

void log_init(void);
void log_set_level(enum log_level level);
int  log_parse_level(const char *name, enum log_level *out);
int  log_enabled(enum log_level level);

/* conn_id 0 means "not about one connection". */
void log_msg(enum log_level level, const char *subsys, unsigned long long conn_id,
             const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define log_err(sub, id, ...)   log_msg(LOG_ERR, sub, id, __VA_ARGS__)
#define log_warn(sub, id, ...)  log_msg(LOG_WARN, sub, id, __VA_ARGS__)
#define log_info(sub, id, ...)  log_msg(LOG_INFO, sub, id, __VA_ARGS__)
#define log_debug(sub, id, ...) \
	do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, sub, id, __VA_ARGS__); } while (0)

#endif
