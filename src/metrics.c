/*
 * metrics.c: Prometheus text exposition of the counters declared in
 * metrics.h plus the process collector's standard families.
 */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "metrics.h"

struct metrics_global metrics;

/* Upper bounds in seconds: 50us .. 10s. */
static const double metrics_bounds[METRICS_NBUCKETS] = {
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
};

static const char *const metrics_pe_names[METRICS_PE__COUNT] = {
#define METRICS_PE_NAME(e) #e,
	METRICS_PUB_ERRORS(METRICS_PE_NAME)
#undef METRICS_PE_NAME
};

void
metrics_init(void)
{
	struct timeval tv;

	memset(&metrics, 0, sizeof(metrics));
	gettimeofday(&tv, NULL);
	metrics.start_time = tv.tv_sec + tv.tv_usec / 1e6;
}

void
metrics_observe(struct metrics_hist *h, double seconds)
{
	for (int i = 0; i < METRICS_NBUCKETS; i++) {
		if (seconds <= metrics_bounds[i]) {
			h->bucket[i]++;
			break;
		}
	}
	h->count++;
	h->sum += seconds;
}

const char *
metrics_pub_error_name(enum metrics_pub_error e)
{
	return e < METRICS_PE__COUNT ? metrics_pe_names[e] : "internal";
}

int
metrics_pub_error_index(const char *code)
{
	for (int i = 0; i < METRICS_PE__COUNT; i++)
		if (strcmp(code, metrics_pe_names[i]) == 0)
			return i;
	return -1;
}

void
metrics_put_label(struct evbuffer *out, const char *value)
{
	const char *p = value;

	evbuffer_add(out, "\"", 1);
	for (; *p != '\0'; p++) {
		if (*p == '\\')
			evbuffer_add(out, "\\\\", 2);
		else if (*p == '"')
			evbuffer_add(out, "\\\"", 2);
		else if (*p == '\n')
			evbuffer_add(out, "\\n", 2);
		else
			evbuffer_add(out, p, 1);
	}
	evbuffer_add(out, "\"", 1);
}

static void
metrics_family(struct evbuffer *out, const char *name, const char *type,
    const char *help)
{
	evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{stream="s"[,group="g"][,extra]} */
static void
metrics_labels(struct evbuffer *out, const char *name, const char *suffix,
    const char *stream, const char *group)
{
	evbuffer_add_printf(out, "%s%s{stream=", name, suffix);
	metrics_put_label(out, stream);
	if (group != NULL) {
		evbuffer_add(out, ",group=", 7);
		metrics_put_label(out, group);
	}
}

static void
metrics_hist(struct evbuffer *out, const char *name, const char *stream,
    const char *group, const struct metrics_hist *h)
{
	uint64_t cum = 0;

	for (int i = 0; i < METRICS_NBUCKETS; i++) {
		cum += h->bucket[i];
		metrics_labels(out, name, "_bucket", stream, group);
		evbuffer_add_printf(out, ",le=\"%g\"} %llu\n", metrics_bounds[i],
		    (unsigned long long)cum);
	}
	metrics_labels(out, name, "_bucket", stream, group);
	evbuffer_add_printf(out, ",le=\"+Inf\"} %llu\n", (unsigned long long)h->count);
	metrics_labels(out, name, "_sum", stream, group);
	evbuffer_add_printf(out, "} %.9g\n", h->sum);
	metrics_labels(out, name, "_count", stream, group);
	evbuffer_add_printf(out, "} %llu\n", (unsigned long long)h->count);
}

static void
metrics_render_streams(struct evbuffer *out, const struct metrics_stream *streams)
{
	const struct metrics_stream *s;
	const struct metrics_group *g;

#define METRICS_STREAM_RENDER(f, mname, help) \
	metrics_family(out, mname, "counter", help); \
	for (s = streams; s != NULL; s = s->next) { \
		metrics_labels(out, mname, "", s->name, NULL); \
		evbuffer_add_printf(out, "} %llu\n", (unsigned long long)s->f); \
	}
	METRICS_STREAM_COUNTERS(METRICS_STREAM_RENDER)
#undef METRICS_STREAM_RENDER

	metrics_family(out, "streams_publish_errors_total", "counter",
	    "Publishes answered with an error, by error code.");
	for (s = streams; s != NULL; s = s->next)
		for (int e = 0; e < METRICS_PE__COUNT; e++) {
			metrics_labels(out, "streams_publish_errors_total", "", s->name, NULL);
			evbuffer_add_printf(out, ",error=\"%s\"} %llu\n", metrics_pe_names[e],
			    (unsigned long long)s->pub_errors[e]);
		}

	metrics_family(out, "streams_publish_duration_seconds", "histogram",
	    "Time from reading a pub request to Redis confirming it.");
	for (s = streams; s != NULL; s = s->next)
		metrics_hist(out, "streams_publish_duration_seconds", s->name, NULL, &s->publish);

#define METRICS_GROUP_RENDER(f, mname, help, type) \
	metrics_family(out, mname, type, help); \
	for (s = streams; s != NULL; s = s->next) \
		for (g = s->groups; g != NULL; g = g->next) { \
			metrics_labels(out, mname, "", s->name, g->name); \
			evbuffer_add_printf(out, "} %llu\n", (unsigned long long)g->f); \
		}
#define METRICS_GROUP_COUNTER(f, mname, help) METRICS_GROUP_RENDER(f, mname, help, "counter")
#define METRICS_GROUP_GAUGE(f, mname, help) METRICS_GROUP_RENDER(f, mname, help, "gauge")
	METRICS_GROUP_COUNTERS(METRICS_GROUP_COUNTER)
	METRICS_GROUP_GAUGES(METRICS_GROUP_GAUGE)
#undef METRICS_GROUP_COUNTER
#undef METRICS_GROUP_GAUGE
#undef METRICS_GROUP_RENDER

	metrics_family(out, "streams_processing_duration_seconds", "histogram",
	    "Time from a delivery to its acknowledgement.");
	for (s = streams; s != NULL; s = s->next)
		for (g = s->groups; g != NULL; g = g->next)
			metrics_hist(out, "streams_processing_duration_seconds", s->name,
			    g->name, &g->processing);
}

static int
metrics_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;	/* the directory's own descriptor */
}

static void
metrics_render_process(struct evbuffer *out)
{
	unsigned long utime = 0, stime = 0;
	long rss_pages = 0, ticks = sysconf(_SC_CLK_TCK);
	char buf[1024];
	FILE *f;

	if ((f = fopen("/proc/self/stat", "r")) != NULL) {
		if (fgets(buf, sizeof(buf), f) != NULL) {
			const char *p = strrchr(buf, ')');
			if (p != NULL)
				sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
				    &utime, &stime);
		}
		fclose(f);
	}
	if ((f = fopen("/proc/self/statm", "r")) != NULL) {
		if (fscanf(f, "%*d %ld", &rss_pages) != 1)
			rss_pages = 0;
		fclose(f);
	}
	metrics_family(out, "process_cpu_seconds_total", "counter",
	    "Total user and system CPU time spent in seconds.");
	evbuffer_add_printf(out, "process_cpu_seconds_total %.2f\n",
	    (double)(utime + stime) / (ticks > 0 ? ticks : 100));
	metrics_family(out, "process_resident_memory_bytes", "gauge",
	    "Resident memory size in bytes.");
	evbuffer_add_printf(out, "process_resident_memory_bytes %ld\n",
	    rss_pages * sysconf(_SC_PAGESIZE));
	metrics_family(out, "process_open_fds", "gauge", "Number of open file descriptors.");
	evbuffer_add_printf(out, "process_open_fds %d\n", metrics_count_fds());
	metrics_family(out, "process_start_time_seconds", "gauge",
	    "Start time of the process since unix epoch in seconds.");
	evbuffer_add_printf(out, "process_start_time_seconds %.3f\n", metrics.start_time);
}

void
metrics_render(struct evbuffer *out, const struct metrics_stream *streams)
{
#define METRICS_GLOBAL_RENDER(f, mname, help, type) \
	metrics_family(out, mname, type, help); \
	evbuffer_add_printf(out, "%s %llu\n", mname, (unsigned long long)metrics.f);
#define METRICS_GLOBAL_GAUGE(f, mname, help) METRICS_GLOBAL_RENDER(f, mname, help, "gauge")
#define METRICS_GLOBAL_COUNTER(f, mname, help) METRICS_GLOBAL_RENDER(f, mname, help, "counter")
	METRICS_GLOBAL_GAUGES(METRICS_GLOBAL_GAUGE)
	METRICS_GLOBAL_COUNTERS(METRICS_GLOBAL_COUNTER)
#undef METRICS_GLOBAL_GAUGE
#undef METRICS_GLOBAL_COUNTER
#undef METRICS_GLOBAL_RENDER
	metrics_render_streams(out, streams);
	metrics_render_process(out);
}
