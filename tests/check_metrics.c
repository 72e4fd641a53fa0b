/*
 * check_metrics.c: unit tests of src/metrics.c (histogram buckets, the
 * Prometheus text rendering of every family daemon.md requires, label
 * escaping, promtool when installed) and of src/util.c's containers
 * (idmap, idset).
 *
 * Run from the repository root.  SB_TEST_KNOWN_BUGS=1 adds the test case
 * "known_bugs": tests of defects reported but not fixed yet.
 */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <check.h>
#include <event2/buffer.h>

#include "metrics.h"
#include "util.h"

/* The bucket bounds metrics.c promises (seconds). */
static const double t_bounds[METRICS_NBUCKETS] = {
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
};

/* ------------------------------------------------------------ helpers */

static char *
t_render(const struct metrics_stream *streams)
{
	struct evbuffer *b = evbuffer_new();
	size_t len;
	char *s;

	ck_assert_ptr_nonnull(b);
	metrics_render(b, streams);
	len = evbuffer_get_length(b);
	s = malloc(len + 1);
	ck_assert_ptr_nonnull(s);
	ck_assert_int_eq(evbuffer_remove(b, s, len), (int)len);
	s[len] = '\0';
	evbuffer_free(b);
	return s;
}

/* Lines of text that start with prefix. */
static int
t_count_prefix(const char *text, const char *prefix)
{
	size_t n = strlen(prefix);
	int count = 0;

	for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, prefix, n) == 0)
			count++;
	return count;
}

/* The value of the sample whose series (name and labels, as rendered)
 * is exactly series; asserts there is exactly one. */
static double
t_sample(const char *text, const char *series)
{
	size_t n = strlen(series);
	const char *found = NULL;
	char *end;
	double v;

	for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (strncmp(p, series, n) == 0 && p[n] == ' ') {
			ck_assert_msg(found == NULL, "series %s rendered twice", series);
			found = p + n + 1;
		}
	}
	ck_assert_msg(found != NULL, "series %s missing", series);
	v = strtod(found, &end);
	ck_assert_msg(end != found && *end == '\n', "bad value for %s", series);
	return v;
}

/* The exact text of the sample line (without \n) must be present. */
static void
t_has_line(const char *text, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, line, n) == 0 && p[n] == '\n')
			return;
	ck_abort_msg("line missing: %s", line);
}

static void
t_hist_zero(struct metrics_hist *h)
{
	memset(h, 0, sizeof(*h));
}

/* A fixture: two streams, the first with two groups. */
struct t_world {
	struct metrics_stream s1, s2;
	struct metrics_group g1, g2;
};

static void
t_world_init(struct t_world *w)
{
	memset(w, 0, sizeof(*w));
	w->s1.name = "market_data";
	w->s2.name = "risk_alert";
	w->s1.next = &w->s2;
	w->g1.name = "risk";
	w->g2.name = "audit\"grp\\x\ny";	/* hostile label value */
	w->s1.groups = &w->g1;
	w->g1.next = &w->g2;
	w->s1.published = 42;
	w->s2.published = 7;
	w->s1.trimmed_unread = 2;
	w->s1.pub_errors[METRICS_PE_unavailable] = 3;
	w->s1.pub_errors[METRICS_PE_too_large] = 1;
	w->g1.consumed = 40;
	w->g1.delivered = 45;
	w->g1.redelivered = 5;
	w->g1.dead_lettered = 1;
	w->g1.lag = 11;
	w->g1.pending = 4;
	w->g1.active_consumers = 2;
	w->g1.paused_consumers = 1;
	w->g2.delivered = 9;
	metrics_observe(&w->s1.publish, 0.0003);
	metrics_observe(&w->s1.publish, 0.002);
	metrics_observe(&w->s1.publish, 20);
	metrics_observe(&w->g1.processing, 0.5);
	metrics.connections = 3;
	metrics.redis_up = 1;
	metrics.requests = 1000;
}

/* ------------------------------------------------------------ histograms */

START_TEST(test_observe_buckets)
{
	struct metrics_hist h;

	for (int i = 0; i < METRICS_NBUCKETS; i++) {
		/* On the bound: that bucket (le is "less or equal"). */
		t_hist_zero(&h);
		metrics_observe(&h, t_bounds[i]);
		for (int j = 0; j < METRICS_NBUCKETS; j++)
			ck_assert_msg(h.bucket[j] == (j == i), "%g: bucket %d = %llu", t_bounds[i],
			    j, (unsigned long long)h.bucket[j]);
		ck_assert_uint_eq(h.count, 1);
		ck_assert_double_eq(h.sum, t_bounds[i]);
		/* Just above it: the next bucket, or only +Inf after the last. */
		t_hist_zero(&h);
		metrics_observe(&h, nextafter(t_bounds[i], INFINITY));
		for (int j = 0; j < METRICS_NBUCKETS; j++)
			ck_assert_msg(h.bucket[j] == (j == i + 1), "above %g: bucket %d = %llu",
			    t_bounds[i], j, (unsigned long long)h.bucket[j]);
		ck_assert_uint_eq(h.count, 1);
	}
	t_hist_zero(&h);
	metrics_observe(&h, 0);
	metrics_observe(&h, 0.3);
	metrics_observe(&h, 0.3);
	metrics_observe(&h, 3600);
	ck_assert_uint_eq(h.bucket[0], 1);
	ck_assert_uint_eq(h.bucket[12], 2);	/* le 0.5 */
	ck_assert_uint_eq(h.count, 4);
	ck_assert_double_eq_tol(h.sum, 3600.6, 1e-9);
	{
		uint64_t total = 0;
		for (int j = 0; j < METRICS_NBUCKETS; j++)
			total += h.bucket[j];
		ck_assert_uint_eq(total, 3);	/* 3600 s only in +Inf */
	}
}
END_TEST

START_TEST(test_render_histogram)
{
	static const double values[] = {
		0.00001, 0.00005, 0.00007, 0.0002, 0.0002, 0.003, 0.04, 0.04, 0.04, 0.7, 1, 9.99, 11, 500,
	};
	/* Expected cumulative counts per bound for values[]. */
	static const unsigned expect_cum[METRICS_NBUCKETS] = {
		2, 3, 5, 5, 5, 5, 6, 6, 6, 9, 9, 9, 9, 11, 11, 12,
	};
	struct metrics_stream s;
	char *text, series[256];
	double sum = 0, prev_le = -1, prev = -1;

	memset(&s, 0, sizeof(s));
	s.name = "s";
	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		metrics_observe(&s.publish, values[i]);
		sum += values[i];
	}
	metrics_init();
	text = t_render(&s);
	ck_assert_int_eq(t_count_prefix(text, "streams_publish_duration_seconds_bucket{stream=\"s\",le="),
	    METRICS_NBUCKETS + 1);
	for (int i = 0; i < METRICS_NBUCKETS; i++) {
		char le[32];
		double v;
		snprintf(le, sizeof(le), "%g", t_bounds[i]);
		ck_assert_double_gt(strtod(le, NULL), prev_le);	/* le increasing */
		prev_le = strtod(le, NULL);
		snprintf(series, sizeof(series),
		    "streams_publish_duration_seconds_bucket{stream=\"s\",le=\"%s\"}", le);
		v = t_sample(text, series);
		ck_assert_msg(v == expect_cum[i], "le=%s: %g, want %u", le, v, expect_cum[i]);
		ck_assert_double_ge(v, prev);				/* cumulative */
		prev = v;
	}
	ck_assert_double_eq(t_sample(text,
	    "streams_publish_duration_seconds_bucket{stream=\"s\",le=\"+Inf\"}"), 14);
	ck_assert_double_eq(t_sample(text, "streams_publish_duration_seconds_count{stream=\"s\"}"), 14);
	ck_assert_double_eq_tol(t_sample(text, "streams_publish_duration_seconds_sum{stream=\"s\"}"),
	    sum, 1e-6);
	/* Bucket lines in order, then _sum, then _count. */
	{
		const char *a = strstr(text, "streams_publish_duration_seconds_bucket{stream=\"s\",le=\"5e-05\"}");
		const char *b = strstr(text, "streams_publish_duration_seconds_bucket{stream=\"s\",le=\"10\"}");
		const char *c = strstr(text, "streams_publish_duration_seconds_bucket{stream=\"s\",le=\"+Inf\"}");
		const char *d = strstr(text, "streams_publish_duration_seconds_sum{stream=\"s\"}");
		const char *e = strstr(text, "streams_publish_duration_seconds_count{stream=\"s\"}");
		ck_assert(a != NULL && a < b && b < c && c < d && d < e);
	}
	free(text);
}
END_TEST

/* ------------------------------------------------------------ labels */

START_TEST(test_label_escaping)
{
	struct evbuffer *b = evbuffer_new();
	char out[128];
	size_t n;

#define T_LABEL(in, expect) do { \
	metrics_put_label(b, (in)); \
	n = evbuffer_get_length(b); \
	ck_assert_uint_lt(n, sizeof(out)); \
	evbuffer_remove(b, out, n); \
	out[n] = '\0'; \
	ck_assert_str_eq(out, (expect)); \
} while (0)
	T_LABEL("", "\"\"");
	T_LABEL("plain", "\"plain\"");
	T_LABEL("a\\b", "\"a\\\\b\"");
	T_LABEL("a\"b", "\"a\\\"b\"");
	T_LABEL("a\nb", "\"a\\nb\"");
	T_LABEL("\\\"\n", "\"\\\\\\\"\\n\"");
	T_LABEL("tab\there \xc3\xa9", "\"tab\there \xc3\xa9\"");
#undef T_LABEL
	evbuffer_free(b);
}
END_TEST

/* ------------------------------------------------------------ families */

struct t_family {
	const char *name, *type;
};

/* Every family of daemon.md with its type. */
static const struct t_family t_required[] = {
	{ "streams_messages_published_total", "counter" },
	{ "streams_messages_consumed_total", "counter" },
	{ "streams_messages_delivered_total", "counter" },
	{ "streams_messages_redelivered_total", "counter" },
	{ "streams_messages_dead_lettered_total", "counter" },
	{ "streams_publish_errors_total", "counter" },
	{ "streams_publish_duration_seconds", "histogram" },
	{ "streams_processing_duration_seconds", "histogram" },
	{ "streams_lag", "gauge" },
	{ "streams_pending", "gauge" },
	{ "streams_active_consumers", "gauge" },
	{ "streambus_connections", "gauge" },
	{ "streambus_redis_up", "gauge" },
	{ "process_resident_memory_bytes", "gauge" },
	{ "process_cpu_seconds_total", "counter" },
	{ "process_open_fds", "gauge" },
	{ "process_start_time_seconds", "gauge" },
};

/*
 * Structure of the whole exposition: every "# HELP" and "# TYPE" once per
 * family, TYPE right after HELP, every sample belongs to the family
 * declared last before it (so families are contiguous), histograms only
 * have _bucket/_sum/_count samples.  Returns the number of families.
 */
static int
t_check_structure(const char *text)
{
	char names[128][128], type[32], cur[128] = "", curtype[32] = "";
	int nfam = 0;
	const char *p = text;

	ck_assert_msg(text[0] != '\0' && text[strlen(text) - 1] == '\n', "must end with a newline");
	while (*p != '\0') {
		const char *eol = strchr(p, '\n');
		char line[1024], name[128];
		size_t len = (size_t)(eol - p);

		ck_assert_ptr_nonnull(eol);
		ck_assert_uint_lt(len, sizeof(line));
		memcpy(line, p, len);
		line[len] = '\0';
		p = eol + 1;
		ck_assert_msg(len > 0, "empty line in the exposition");
		if (strncmp(line, "# HELP ", 7) == 0) {
			char help[512];
			ck_assert_int_eq(sscanf(line, "# HELP %127s %511[^\n]", name, help), 2);
			for (int i = 0; i < nfam; i++)
				ck_assert_msg(strcmp(names[i], name) != 0, "HELP %s twice", name);
			ck_assert_int_lt(nfam, 128);
			snprintf(names[nfam++], sizeof(names[0]), "%s", name);
			/* The TYPE line follows. */
			eol = strchr(p, '\n');
			ck_assert_ptr_nonnull(eol);
			len = (size_t)(eol - p);
			ck_assert_uint_lt(len, sizeof(line));
			memcpy(line, p, len);
			line[len] = '\0';
			p = eol + 1;
			ck_assert_int_eq(sscanf(line, "# TYPE %127s %31s", cur, type), 2);
			ck_assert_str_eq(cur, name);
			ck_assert_msg(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
			    strcmp(type, "histogram") == 0, "type %s", type);
			snprintf(curtype, sizeof(curtype), "%s", type);
			continue;
		}
		ck_assert_msg(line[0] != '#', "stray comment: %s", line);
		ck_assert_msg(cur[0] != '\0', "sample before any family: %s", line);
		ck_assert_int_eq(sscanf(line, "%127[a-zA-Z0-9_:]", name), 1);
		if (strcmp(curtype, "histogram") == 0) {
			size_t cl = strlen(cur);
			ck_assert_msg(strncmp(name, cur, cl) == 0 &&
			    (strcmp(name + cl, "_bucket") == 0 || strcmp(name + cl, "_sum") == 0 ||
			    strcmp(name + cl, "_count") == 0), "%s outside its family %s", name, cur);
		} else
			ck_assert_msg(strcmp(name, cur) == 0, "sample %s inside family %s", name, cur);
		/* The value parses as a float. */
		{
			const char *v = strrchr(line, ' ');
			char *end;
			ck_assert_ptr_nonnull(v);
			strtod(v + 1, &end);
			ck_assert_msg(end != v + 1 && *end == '\0', "bad value: %s", line);
		}
	}
	return nfam;
}

START_TEST(test_render_families)
{
	struct t_world w;
	char *text, prefix[160];

	metrics_init();
	t_world_init(&w);
	text = t_render(&w.s1);
	ck_assert_int_ge(t_check_structure(text), (int)(sizeof(t_required) / sizeof(t_required[0])));
	for (size_t i = 0; i < sizeof(t_required) / sizeof(t_required[0]); i++) {
		snprintf(prefix, sizeof(prefix), "# HELP %s ", t_required[i].name);
		ck_assert_msg(t_count_prefix(text, prefix) == 1, "HELP of %s", t_required[i].name);
		snprintf(prefix, sizeof(prefix), "# TYPE %s %s\n", t_required[i].name, t_required[i].type);
		ck_assert_msg(strstr(text, prefix) != NULL, "TYPE of %s", t_required[i].name);
		snprintf(prefix, sizeof(prefix), "# TYPE %s ", t_required[i].name);
		ck_assert_int_eq(t_count_prefix(text, prefix), 1);
	}

	/* Values and labels, as daemon.md lists them. */
	t_has_line(text, "streams_messages_published_total{stream=\"market_data\"} 42");
	t_has_line(text, "streams_messages_published_total{stream=\"risk_alert\"} 7");
	t_has_line(text, "streams_messages_consumed_total{stream=\"market_data\",group=\"risk\"} 40");
	t_has_line(text, "streams_messages_delivered_total{stream=\"market_data\",group=\"risk\"} 45");
	t_has_line(text, "streams_messages_redelivered_total{stream=\"market_data\",group=\"risk\"} 5");
	t_has_line(text, "streams_messages_dead_lettered_total{stream=\"market_data\",group=\"risk\"} 1");
	t_has_line(text, "streams_lag{stream=\"market_data\",group=\"risk\"} 11");
	t_has_line(text, "streams_pending{stream=\"market_data\",group=\"risk\"} 4");
	t_has_line(text, "streams_active_consumers{stream=\"market_data\",group=\"risk\"} 2");
	t_has_line(text, "streams_publish_errors_total{stream=\"market_data\",error=\"unavailable\"} 3");
	t_has_line(text, "streams_publish_errors_total{stream=\"market_data\",error=\"too_large\"} 1");
	t_has_line(text, "streams_publish_errors_total{stream=\"risk_alert\",error=\"indeterminate\"} 0");
	t_has_line(text, "streams_publish_duration_seconds_count{stream=\"market_data\"} 3");
	t_has_line(text, "streams_publish_duration_seconds_bucket{stream=\"market_data\",le=\"0.00025\"} 0");
	t_has_line(text, "streams_publish_duration_seconds_bucket{stream=\"market_data\",le=\"0.0005\"} 1");
	t_has_line(text, "streams_publish_duration_seconds_bucket{stream=\"market_data\",le=\"0.0025\"} 2");
	t_has_line(text, "streams_publish_duration_seconds_bucket{stream=\"market_data\",le=\"10\"} 2");
	t_has_line(text, "streams_publish_duration_seconds_bucket{stream=\"market_data\",le=\"+Inf\"} 3");
	t_has_line(text, "streams_publish_duration_seconds_count{stream=\"risk_alert\"} 0");
	t_has_line(text, "streams_processing_duration_seconds_bucket{stream=\"market_data\",group=\"risk\",le=\"0.5\"} 1");
	t_has_line(text, "streams_processing_duration_seconds_count{stream=\"market_data\",group=\"risk\"} 1");
	t_has_line(text, "streams_processing_duration_seconds_sum{stream=\"market_data\",group=\"risk\"} 0.5");
	t_has_line(text, "streambus_connections 3");
	t_has_line(text, "streambus_redis_up 1");
	/* The hostile group name, escaped. */
	t_has_line(text, "streams_messages_delivered_total{stream=\"market_data\","
	    "group=\"audit\\\"grp\\\\x\\ny\"} 9");
	/* Every pub error code for every stream. */
	ck_assert_int_eq(t_count_prefix(text, "streams_publish_errors_total{stream=\"market_data\",error="),
	    METRICS_PE__COUNT);
	ck_assert_int_eq(t_count_prefix(text, "streams_publish_errors_total{stream=\"risk_alert\",error="),
	    METRICS_PE__COUNT);
	/* A stream without groups has no group series. */
	ck_assert_int_eq(t_count_prefix(text, "streams_lag{stream=\"risk_alert\""), 0);
	ck_assert_int_eq(t_count_prefix(text, "streams_lag{"), 2);
	free(text);

	/* No streams at all: still every family, once. */
	text = t_render(NULL);
	t_check_structure(text);
	for (size_t i = 0; i < sizeof(t_required) / sizeof(t_required[0]); i++) {
		snprintf(prefix, sizeof(prefix), "# TYPE %s %s\n", t_required[i].name, t_required[i].type);
		ck_assert_msg(strstr(text, prefix) != NULL, "TYPE of %s", t_required[i].name);
	}
	ck_assert_int_eq(t_count_prefix(text, "streams_messages_published_total{"), 0);
	t_has_line(text, "streambus_connections 3");
	free(text);
}
END_TEST

/* Open descriptors: the entries of /proc/self/fd except the one of the
 * directory stream reading it (valgrind's own descriptors show there too,
 * for metrics.c as for this count). */
static int
t_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.' && atoi(de->d_name) != dirfd(d))
			n++;
	closedir(d);
	return n;
}

START_TEST(test_process_metrics)
{
	struct timeval before, after;
	char *text;
	double fds1, fds2, start;
	int extra[3];

	gettimeofday(&before, NULL);
	metrics_init();
	gettimeofday(&after, NULL);
	ck_assert_uint_eq(metrics.connections, 0);
	text = t_render(NULL);
	start = t_sample(text, "process_start_time_seconds");
	ck_assert_double_ge(start, before.tv_sec + before.tv_usec / 1e6 - 0.001);
	ck_assert_double_le(start, after.tv_sec + after.tv_usec / 1e6 + 0.001);
	ck_assert_double_gt(t_sample(text, "process_resident_memory_bytes"), 0);
	ck_assert_double_ge(t_sample(text, "process_cpu_seconds_total"), 0);
	fds1 = t_sample(text, "process_open_fds");
	ck_assert_double_eq(fds1, t_count_fds());
	free(text);
	for (int i = 0; i < 3; i++) {
		extra[i] = open("/dev/null", O_RDONLY);
		ck_assert_int_ge(extra[i], 0);
	}
	text = t_render(NULL);
	fds2 = t_sample(text, "process_open_fds");
	free(text);
	for (int i = 0; i < 3; i++)
		close(extra[i]);
	ck_assert_double_eq(fds2, fds1 + 3);
}
END_TEST

START_TEST(test_pub_error_names)
{
	static const char *const names[] = {
		"bad_request", "too_large", "unauthorized", "unavailable", "overloaded",
		"indeterminate", "internal",
	};

	ck_assert_int_eq(METRICS_PE__COUNT, 7);
	for (int i = 0; i < METRICS_PE__COUNT; i++) {
		ck_assert_str_eq(metrics_pub_error_name((enum metrics_pub_error)i), names[i]);
		ck_assert_int_eq(metrics_pub_error_index(names[i]), i);
	}
	ck_assert_str_eq(metrics_pub_error_name(METRICS_PE__COUNT), "internal");
	ck_assert_int_eq(metrics_pub_error_index("bad_json"), -1);
	ck_assert_int_eq(metrics_pub_error_index("no_such_sub"), -1);
	ck_assert_int_eq(metrics_pub_error_index(""), -1);
	ck_assert_int_eq(metrics_pub_error_index("unavailablex"), -1);
}
END_TEST

/* ------------------------------------------------------------ promtool */

static int
t_on_path(const char *prog)
{
	const char *path = getenv("PATH");
	char *copy, *dir, *save = NULL, full[4096];
	int found = 0;

	if (path == NULL)
		return 0;
	copy = strdup(path);
	ck_assert_ptr_nonnull(copy);
	for (dir = strtok_r(copy, ":", &save); dir != NULL && !found; dir = strtok_r(NULL, ":", &save)) {
		snprintf(full, sizeof(full), "%s/%s", *dir ? dir : ".", prog);
		found = access(full, X_OK) == 0;
	}
	free(copy);
	return found;
}

/* promtool check metrics reads stdin; exit status and output returned. */
static int
t_promtool(const char *text, char **output)
{
	char path[] = "/tmp/check_metrics_XXXXXX", cmd[256], buf[4096];
	size_t len = strlen(text), got = 0;
	FILE *p;
	int fd, status;

	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
	close(fd);
	snprintf(cmd, sizeof(cmd), "promtool check metrics < %s 2>&1", path);
	p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	while (got < sizeof(buf) - 1) {
		size_t n = fread(buf + got, 1, sizeof(buf) - 1 - got, p);
		if (n == 0)
			break;
		got += n;
	}
	buf[got] = '\0';
	status = pclose(p);
	unlink(path);
	*output = strdup(buf);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

START_TEST(test_promtool)
{
	struct t_world w;
	char *text, *out;
	int rc;

	if (!t_on_path("promtool")) {
		fprintf(stderr, "check_metrics: promtool not on PATH, test_promtool skipped\n");
		return;
	}
	metrics_init();
	t_world_init(&w);
	text = t_render(&w.s1);
	rc = t_promtool(text, &out);
	ck_assert_msg(rc == 0, "promtool check metrics: exit %d:\n%s", rc, out);
	free(out);
	free(text);
	/* The check itself can fail: a broken exposition is refused. */
	rc = t_promtool("# TYPE x counter\nx{a=\"b} 1\n", &out);
	ck_assert_int_ne(rc, 0);
	free(out);
	text = t_render(NULL);
	rc = t_promtool(text, &out);
	ck_assert_msg(rc == 0, "promtool check metrics (no streams): exit %d:\n%s", rc, out);
	free(out);
	free(text);
}
END_TEST

/* ------------------------------------------------------------ idmap */

START_TEST(test_idmap)
{
	struct idmap m;
	static int objs[3];
	const uint64_t n = 20000;

	ck_assert_int_eq(idmap_init(&m, 64), 0);
	ck_assert_uint_eq(m.count, 0);
	ck_assert_ptr_null(idmap_get(&m, 1));
	idmap_del(&m, 1);			/* absent: no-op */
	ck_assert_uint_eq(m.count, 0);

	ck_assert_int_eq(idmap_put(&m, 0, &objs[0]), 0);
	ck_assert_int_eq(idmap_put(&m, UINT64_MAX, &objs[1]), 0);
	ck_assert_ptr_eq(idmap_get(&m, 0), &objs[0]);
	ck_assert_ptr_eq(idmap_get(&m, UINT64_MAX), &objs[1]);
	ck_assert_uint_eq(m.count, 2);
	idmap_del(&m, 0);
	ck_assert_ptr_null(idmap_get(&m, 0));
	ck_assert_ptr_eq(idmap_get(&m, UINT64_MAX), &objs[1]);
	ck_assert_uint_eq(m.count, 1);
	idmap_del(&m, UINT64_MAX);
	ck_assert_uint_eq(m.count, 0);

	/* Many entries in few buckets (long chains). */
	for (uint64_t id = 1; id <= n; id++)
		ck_assert_int_eq(idmap_put(&m, id * 7919, (void *)(uintptr_t)(id * 2)), 0);
	ck_assert_uint_eq(m.count, n);
	for (uint64_t id = 1; id <= n; id++)
		ck_assert_ptr_eq(idmap_get(&m, id * 7919), (void *)(uintptr_t)(id * 2));
	ck_assert_ptr_null(idmap_get(&m, 7918));
	/* Delete the odd ones; the even ones stay findable. */
	for (uint64_t id = 1; id <= n; id += 2)
		idmap_del(&m, id * 7919);
	ck_assert_uint_eq(m.count, n / 2);
	for (uint64_t id = 1; id <= n; id++) {
		void *p = idmap_get(&m, id * 7919);
		if (id % 2)
			ck_assert_ptr_null(p);
		else
			ck_assert_ptr_eq(p, (void *)(uintptr_t)(id * 2));
	}
	/* A deleted id can come back. */
	ck_assert_int_eq(idmap_put(&m, 7919, &objs[2]), 0);
	ck_assert_ptr_eq(idmap_get(&m, 7919), &objs[2]);
	ck_assert_uint_eq(m.count, n / 2 + 1);
	idmap_free(&m);
	ck_assert_ptr_null(m.buckets);
	ck_assert_uint_eq(m.count, 0);

	/* One bucket: everything in one chain. */
	ck_assert_int_eq(idmap_init(&m, 1), 0);
	for (uint64_t id = 1; id <= 100; id++)
		ck_assert_int_eq(idmap_put(&m, id, (void *)(uintptr_t)id), 0);
	idmap_del(&m, 50);
	idmap_del(&m, 1);
	idmap_del(&m, 100);
	ck_assert_uint_eq(m.count, 97);
	for (uint64_t id = 1; id <= 100; id++)
		ck_assert_ptr_eq(idmap_get(&m, id),
		    (id == 50 || id == 1 || id == 100) ? NULL : (void *)(uintptr_t)id);
	idmap_free(&m);
}
END_TEST

/* ------------------------------------------------------------ idset */

START_TEST(test_idset_basic)
{
	struct idset s;
	uint64_t at;
	uint32_t attempt;
	size_t i = 0;

	idset_init(&s);
	ck_assert_uint_eq(s.count, 0);
	ck_assert_int_eq(idset_has(&s, 1, 0), 0);
	ck_assert_int_eq(idset_take(&s, 1, 0, &at, &attempt), -1);
	ck_assert_ptr_null(idset_next(&s, &i));

	ck_assert_int_eq(idset_add(&s, 1732550000000ull, 0, 111, 1), 0);
	ck_assert_int_eq(idset_add(&s, 1732550000000ull, 1, 222, 2), 0);
	ck_assert_int_eq(idset_add(&s, 0, 0, 333, 3), 0);
	ck_assert_uint_eq(s.count, 3);
	ck_assert_int_eq(idset_has(&s, 1732550000000ull, 0), 1);
	ck_assert_int_eq(idset_has(&s, 1732550000000ull, 1), 1);
	ck_assert_int_eq(idset_has(&s, 0, 0), 1);
	ck_assert_int_eq(idset_has(&s, 1732550000000ull, 2), 0);
	ck_assert_int_eq(idset_has(&s, 1, 0), 0);

	/* Adding again updates the values, not the count. */
	ck_assert_int_eq(idset_add(&s, 1732550000000ull, 1, 999, 5), 0);
	ck_assert_uint_eq(s.count, 3);

	ck_assert_int_eq(idset_take(&s, 1732550000000ull, 1, &at, &attempt), 0);
	ck_assert(at == 999);
	ck_assert_uint_eq(attempt, 5);
	ck_assert_uint_eq(s.count, 2);
	ck_assert_int_eq(idset_has(&s, 1732550000000ull, 1), 0);
	ck_assert_int_eq(idset_take(&s, 1732550000000ull, 1, &at, &attempt), -1);
	ck_assert_int_eq(idset_take(&s, 0, 0, &at, &attempt), 0);
	ck_assert(at == 333);
	ck_assert_uint_eq(attempt, 3);
	/* Re-adding a taken id. */
	ck_assert_int_eq(idset_add(&s, 0, 0, 444, 4), 0);
	ck_assert_int_eq(idset_has(&s, 0, 0), 1);
	ck_assert_uint_eq(s.count, 2);
	idset_free(&s);
	ck_assert_ptr_null(s.slots);
	ck_assert_uint_eq(s.count, 0);
	ck_assert_uint_eq(s.cap, 0);
}
END_TEST

START_TEST(test_idset_many)
{
	const uint64_t n = 50000;
	struct idset s;
	const struct idset_slot *sl;
	unsigned char *seen;
	uint64_t at;
	uint32_t attempt;
	size_t i, visited;

	idset_init(&s);
	/* ids as a consumer sees them: increasing ms, a few seqs each. */
	for (uint64_t k = 0; k < n; k++)
		ck_assert_int_eq(idset_add(&s, 1732550000000ull + k / 4, k % 4, k * 10, (uint32_t)(k % 9 + 1)), 0);
	ck_assert_uint_eq(s.count, n);
	ck_assert_uint_ge(s.cap, n);
	ck_assert_uint_eq(s.cap & (s.cap - 1), 0);	/* a power of two */
	ck_assert_uint_le(s.used * 4, s.cap * 3);		/* load factor kept */
	for (uint64_t k = 0; k < n; k++)
		ck_assert_int_eq(idset_has(&s, 1732550000000ull + k / 4, k % 4), 1);
	ck_assert_int_eq(idset_has(&s, 1732550000000ull + n, 0), 0);

	/* Take every third: tombstones must not break other probe chains. */
	for (uint64_t k = 0; k < n; k += 3) {
		ck_assert_int_eq(idset_take(&s, 1732550000000ull + k / 4, k % 4, &at, &attempt), 0);
		ck_assert(at == k * 10);
		ck_assert_uint_eq(attempt, k % 9 + 1);
	}
	ck_assert_uint_eq(s.count, n - (n + 2) / 3);
	for (uint64_t k = 0; k < n; k++)
		ck_assert_int_eq(idset_has(&s, 1732550000000ull + k / 4, k % 4), k % 3 != 0);

	/* Iteration: each live entry exactly once, no tombstones. */
	seen = calloc(n, 1);
	ck_assert_ptr_nonnull(seen);
	visited = 0;
	for (i = 0; (sl = idset_next(&s, &i)) != NULL;) {
		uint64_t k = (sl->ms - 1732550000000ull) * 4 + sl->seq;
		ck_assert_uint_lt(k, n);
		ck_assert_msg(k % 3 != 0, "iterated a taken id %llu", (unsigned long long)k);
		ck_assert_int_eq(seen[k], 0);
		seen[k] = 1;
		ck_assert(sl->at_ns == k * 10);
		visited++;
	}
	ck_assert_uint_eq(visited, s.count);
	free(seen);
	idset_free(&s);
}
END_TEST

/* Add/take churn with a small live set: tombstones are recycled by
 * rehashing, the table does not grow without bound. */
START_TEST(test_idset_churn)
{
	struct idset s;
	uint64_t at;
	uint32_t attempt;

	idset_init(&s);
	for (uint64_t k = 0; k < 200000; k++) {
		ck_assert_int_eq(idset_add(&s, k, 7, k, 1), 0);
		if (k >= 10)
			ck_assert_int_eq(idset_take(&s, k - 10, 7, &at, &attempt), 0);
		ck_assert_uint_le(s.used * 4, s.cap * 3);
	}
	ck_assert_uint_eq(s.count, 10);
	ck_assert_uint_le(s.cap, 64);
	for (uint64_t k = 200000 - 10; k < 200000; k++)
		ck_assert_int_eq(idset_has(&s, k, 7), 1);
	ck_assert_int_eq(idset_has(&s, 200000 - 11, 7), 0);
	idset_free(&s);
}
END_TEST

/* ------------------------------------------------------------ known bugs */

/* idset uses in-band markers: seq == UINT64_MAX means an empty slot and
 * ms == UINT64_MAX (with seq 0) a tombstone, yet proto_parse_id accepts
 * both values and Redis allows explicit ids like 5-18446744073709551615. */
START_TEST(test_bug_idset_marker_ids)
{
	struct idset s;
	uint64_t at;
	uint32_t attempt;

	idset_init(&s);
	ck_assert_int_eq(idset_add(&s, 5, UINT64_MAX, 1, 1), 0);
	ck_assert_int_eq(idset_has(&s, 5, UINT64_MAX), 1);
	idset_free(&s);

	idset_init(&s);
	ck_assert_int_eq(idset_add(&s, UINT64_MAX, 0, 1, 1), 0);
	ck_assert_int_eq(idset_has(&s, UINT64_MAX, 0), 1);
	idset_free(&s);

	/* A tombstone must not be found as the id UINT64_MAX-0. */
	idset_init(&s);
	for (uint64_t k = 0; k < 12; k++)
		ck_assert_int_eq(idset_add(&s, k, 0, 1, 1), 0);
	for (uint64_t k = 0; k < 12; k++)
		ck_assert_int_eq(idset_take(&s, k, 0, &at, &attempt), 0);
	ck_assert_int_eq(idset_has(&s, UINT64_MAX, 0), 0);
	ck_assert_uint_eq(s.count, 0);
	idset_free(&s);
}
END_TEST

static Suite *
metrics_suite(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc;

	tc = tcase_create("metrics");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_observe_buckets);
	tcase_add_test(tc, test_render_histogram);
	tcase_add_test(tc, test_label_escaping);
	tcase_add_test(tc, test_render_families);
	tcase_add_test(tc, test_process_metrics);
	tcase_add_test(tc, test_pub_error_names);
	tcase_add_test(tc, test_promtool);
	suite_add_tcase(s, tc);

	tc = tcase_create("util");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_idmap);
	tcase_add_test(tc, test_idset_basic);
	tcase_add_test(tc, test_idset_many);
	tcase_add_test(tc, test_idset_churn);
	suite_add_tcase(s, tc);

	if (getenv("SB_TEST_KNOWN_BUGS") != NULL) {
		tc = tcase_create("known_bugs");
		tcase_add_test(tc, test_bug_idset_marker_ids);
		suite_add_tcase(s, tc);
	}
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(metrics_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
