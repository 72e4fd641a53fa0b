/*
 * bench.c: streambus-bench, a load generator and latency meter for
 * streambusd.
 *
 * One thread, one epoll set, non-blocking sockets.  P publisher
 * connections pipeline pubs (single or batched, optionally paced to a total
 * rate); C consumer connections, spread over G groups of one stream, receive
 * deliveries and acknowledge each read burst with one ack carrying all its
 * ids; N idle connections are opened first and held.  Every event carries
 * {"r":run,"q":seq,"t":send_ns,"p":"xx.."} in its data, so each delivery is
 * matched to its publish: end-to-end latency, losses and duplicates are
 * counted per group.  Latencies go to log-linear histograms.
 *
 * Replies arrive in request order (the protocol guarantees it), so each
 * connection keeps a FIFO of what it expects (bench_expect) and needs no
 * rids.  Lines from the server are scanned, not parsed into trees: the
 * scanner (js_*) picks the spans of a few top-level fields.
 *
 * The blocking client (streambus.h) is used for the control connection
 * only: the first hello and the final stats.
 *
 * Phases: setup (idle connections, then consumers and publishers), warmup,
 * measure, drain (no new pubs; wait until every acknowledged pub has reached
 * every group, all replies are in, and every idle connection answered a
 * ping), done.  Throughput and latencies count only what completes during
 * measure; losses and duplicates count the whole run.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <jansson.h>

#include "streambus.h"

#define BENCH_VERSION          "0.1.0"
#define BENCH_MAX_LINE         (16u * 1024 * 1024) /* longest line accepted */
#define BENCH_READ_CHUNK       (64u * 1024)	/* bytes per read() */
#define BENCH_READ_BUDGET      (256u * 1024)	/* bytes per conn per wakeup */
#define BENCH_MAX_OUT          (64u * 1024 * 1024) /* queued output per conn */
#define BENCH_SETUP_WAVE       256	/* connections connecting at once */
#define BENCH_SETUP_TIMEOUT_S  60
#define BENCH_CONTROL_TIMEOUT  10000	/* ms, control connection replies */
#define BENCH_ACK_MAX_IDS      4096	/* ids in one ack */
#define BENCH_MAX_GROUPS       10000
#define BENCH_MAX_BATCH        100000
#define BENCH_MAX_STREAM       200
#define BENCH_SEQ_MEMORY       (2ull << 30) /* bytes for per-event state */
#define BENCH_EPOLL_EVENTS     1024
#define BENCH_MAX_ERRCODES     16
#define BENCH_LOG_LIMIT        20	/* per kind of anomaly */

/* ---- time --------------------------------------------------------------- */

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double
ns_ms(uint64_t ns)
{
	return (double)ns / 1e6;
}

static void
fatal(const char *fmt, ...)
{
	va_list ap;

	fputs("streambus-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void
note(const char *fmt, ...)
{
	va_list ap;

	fputs("streambus-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void *
xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (q == NULL)
		fatal("out of memory (%zu bytes)", n);
	return q;
}

/* ---- histogram ----------------------------------------------------------
 * HDR-style log-linear buckets over nanoseconds: values below 2^(SUB+1) have
 * a bucket each; above, every power of two is split into 2^SUB buckets, so
 * a bucket is at most 1/128 (0.8 %) of its value wide. */

#define HIST_SUB_BITS  7
#define HIST_SUB       (1u << HIST_SUB_BITS)
#define HIST_BUCKETS   (2 * HIST_SUB + (64 - HIST_SUB_BITS - 1) * HIST_SUB)

struct hist {
	uint64_t n, max, sum;
	uint64_t b[HIST_BUCKETS];
};

static unsigned
hist_index(uint64_t v)
{
	unsigned msb, shift;

	if (v < 2 * HIST_SUB)
		return (unsigned)v;
	msb = 63 - (unsigned)__builtin_clzll(v);
	shift = msb - HIST_SUB_BITS;
	return 2 * HIST_SUB + (shift - 1) * HIST_SUB +
	    (unsigned)((v >> shift) - HIST_SUB);
}

/* Highest value that falls in bucket i. */
static uint64_t
hist_upper(unsigned i)
{
	unsigned shift;
	uint64_t mant;

	if (i < 2 * HIST_SUB)
		return i;
	shift = (i - 2 * HIST_SUB) / HIST_SUB + 1;
	mant = (i - 2 * HIST_SUB) % HIST_SUB + HIST_SUB;
	return ((mant + 1) << shift) - 1;
}

static void
hist_add(struct hist *h, uint64_t v)
{
	h->b[hist_index(v)]++;
	h->n++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

static void
hist_reset(struct hist *h)
{
	memset(h, 0, sizeof *h);
}

/* The value below which a fraction q of the samples fall (bucket upper
 * bound, never above the largest sample); 0 without samples. */
static uint64_t
hist_pct(const struct hist *h, double q)
{
	uint64_t want, seen = 0;
	unsigned i;

	if (h->n == 0)
		return 0;
	want = (uint64_t)ceil(q * (double)h->n);
	if (want < 1)
		want = 1;
	for (i = 0; i < HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= want)
			return hist_upper(i) < h->max ? hist_upper(i) : h->max;
	}
	return h->max;
}

/* ---- byte buffers ------------------------------------------------------- */

struct buf {
	char  *p;
	size_t off, len, cap;	/* unconsumed bytes are p[off, len) */
};

static void
buf_reserve(struct buf *b, size_t more)
{
	size_t cap;

	if (b->len + more <= b->cap)
		return;
	if (b->off > 0) {
		memmove(b->p, b->p + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
		if (b->len + more <= b->cap)
			return;
	}
	cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more)
		cap *= 2;
	b->p = xrealloc(b->p, cap);
	b->cap = cap;
}

static void
buf_add(struct buf *b, const void *s, size_t n)
{
	buf_reserve(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void
buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}

static size_t
put_u64(char *dst, uint64_t v)
{
	char tmp[24];
	size_t n = 0, i;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (i = 0; i < n; i++)
		dst[i] = tmp[n - 1 - i];
	return n;
}

#define PUT_LIT(p, s) (memcpy((p), (s), sizeof(s) - 1), (p) += sizeof(s) - 1)

/* ---- JSON scanning ------------------------------------------------------
 * Enough of JSON to find the spans of named top-level fields of an object,
 * skipping nested values; input is the server's, so it is trusted to be
 * valid JSON but checked not to run past the end. */

struct jfield {
	const char *key;
	size_t      klen;
	const char *v;		/* value span, NULL when absent */
	size_t      vn;
};

#define JF(k) { k, sizeof(k) - 1, NULL, 0 }

static const char *
js_ws(const char *p, const char *e)
{
	while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
		p++;
	return p;
}

static const char *
js_string_end(const char *p, const char *e)
{
	for (p++; p < e; p++) {
		if (*p == '\\')
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return NULL;
}

static const char *
js_skip(const char *p, const char *e)
{
	int depth = 0;

	p = js_ws(p, e);
	if (p >= e)
		return NULL;
	if (*p == '"')
		return js_string_end(p, e);
	if (*p != '{' && *p != '[') {
		while (p < e && *p != ',' && *p != '}' && *p != ']' &&
		    *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
			p++;
		return p;
	}
	for (; p < e; p++) {
		if (*p == '"') {
			if ((p = js_string_end(p, e)) == NULL)
				return NULL;
			p--;
		} else if (*p == '{' || *p == '[') {
			depth++;
		} else if (*p == '}' || *p == ']') {
			if (--depth == 0)
				return p + 1;
		}
	}
	return NULL;
}

/* Fills the spans of the wanted fields; false if [p, e) is not an object. */
static bool
js_object(const char *p, const char *e, struct jfield *f, size_t nf)
{
	const char *ks, *q, *vs;
	size_t klen, i;

	p = js_ws(p, e);
	if (p >= e || *p != '{')
		return false;
	p = js_ws(p + 1, e);
	if (p < e && *p == '}')
		return true;
	for (;;) {
		if (p >= e || *p != '"' || (q = js_string_end(p, e)) == NULL)
			return false;
		ks = p + 1;
		klen = (size_t)(q - 1 - ks);
		p = js_ws(q, e);
		if (p >= e || *p != ':')
			return false;
		vs = js_ws(p + 1, e);
		if ((p = js_skip(vs, e)) == NULL)
			return false;
		for (i = 0; i < nf; i++)
			if (f[i].v == NULL && f[i].klen == klen &&
			    memcmp(f[i].key, ks, klen) == 0) {
				f[i].v = vs;
				f[i].vn = (size_t)(p - vs);
			}
		p = js_ws(p, e);
		if (p < e && *p == ',') {
			p = js_ws(p + 1, e);
			continue;
		}
		return p < e && *p == '}';
	}
}

/* Elements of the array span [p, e); -1 if it is not an array. */
static long
js_array_len(const char *p, const char *e)
{
	long n = 0;

	p = js_ws(p, e);
	if (p >= e || *p != '[')
		return -1;
	p = js_ws(p + 1, e);
	if (p < e && *p == ']')
		return 0;
	for (;;) {
		if ((p = js_skip(p, e)) == NULL)
			return -1;
		n++;
		p = js_ws(p, e);
		if (p < e && *p == ',') {
			p++;
			continue;
		}
		return p < e && *p == ']' ? n : -1;
	}
}

static bool
js_is(const struct jfield *f, const char *lit)
{
	size_t n = strlen(lit);

	return f->v != NULL && f->vn == n && memcmp(f->v, lit, n) == 0;
}

/* The text of a string span without its quotes (escapes left as is). */
static void
js_str(const struct jfield *f, char *dst, size_t cap)
{
	size_t n = 0;

	if (f->v != NULL && f->vn >= 2 && f->v[0] == '"')
		n = f->vn - 2 < cap - 1 ? f->vn - 2 : cap - 1;
	if (n)
		memcpy(dst, f->v + 1, n);
	dst[n] = '\0';
}

/* Numbers are followed by a delimiter or the NUL that ends the line. */
static bool
js_u64(const struct jfield *f, uint64_t *out)
{
	char *end;

	if (f->v == NULL || f->vn == 0 || f->v[0] < '0' || f->v[0] > '9')
		return false;
	errno = 0;
	*out = strtoull(f->v, &end, 10);
	return errno == 0 && end == f->v + f->vn;
}

/* ---- options ------------------------------------------------------------ */

static struct opts {
	const char *addr;
	char        host[64];
	int         port;
	int         publishers, consumers, groups;
	const char *stream;
	int         prefetch, payload, batch, pipeline;
	double      rate, duration, warmup, drain;
	bool        no_consume, json;
	long        daemon_pid, redis_pid;
	int         idle;
	uint64_t    max_lag;
} O = {
	.addr = "127.0.0.1:7070",
	.publishers = 4,
	.consumers = 4,
	.groups = 1,
	.prefetch = 256,
	.payload = 100,
	.batch = 1,
	.pipeline = 64,
	.duration = 10,
	.warmup = 2,
	.drain = 10,
};

static void
usage(FILE *f)
{
	fputs(
"usage: streambus-bench [options]\n"
"  --addr HOST:PORT     streambusd address (default 127.0.0.1:7070)\n"
"  --publishers P       publisher connections (default 4)\n"
"  --consumers C        consumer connections (default 4)\n"
"  --groups G           consumer groups of the stream; consumer i joins\n"
"                       group i mod G (default 1)\n"
"  --stream NAME        stream (default bench.<pid>.<time>)\n"
"  --prefetch N         prefetch of each subscription (default 256)\n"
"  --payload BYTES      serialized size of each event's data (default 100)\n"
"  --batch N            events per pub request; 1 = single pubs (default 1)\n"
"  --pipeline N         pub requests outstanding per publisher (default 64)\n"
"  --rate R             total events/s offered; 0 = flat out (default 0)\n"
"  --max-lag N          pause publishing while more than N events are not\n"
"                       yet delivered to the slowest group (default 0 = off)\n"
"  --duration SECONDS   measured time (default 10)\n"
"  --warmup SECONDS     load before measuring (default 2)\n"
"  --drain SECONDS      longest wait for the stragglers after the load\n"
"                       stops, before counting losses (default 10)\n"
"  --no-consume         publish only (no consumer connections)\n"
"  --idle N             open N idle connections first and hold them\n"
"  --daemon-pid PID     sample /proc/PID for the daemon's CPU and RSS\n"
"  --redis-pid PID      sample /proc/PID for Redis' CPU and RSS\n"
"  --json               print the results as JSON\n"
"  -h, --help           this help\n"
"A progress line goes to stderr every second; the results to stdout.\n",
	    f);
}

static double
opt_num(const char *name, const char *s, double lo, double hi)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo && v <= hi)) {
		fprintf(stderr, "streambus-bench: --%s: want a number in "
		    "%g..%g, got '%s'\n", name, lo, hi, s);
		exit(2);
	}
	return v;
}

static bool
stream_name_ok(const char *s)
{
	size_t n = strlen(s), i;

	if (n < 1 || n > BENCH_MAX_STREAM)
		return false;
	for (i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		    (s[i] >= '0' && s[i] <= '9') || strchr("_.:-", s[i])))
			return false;
	return true;
}

static void
opts_parse(int argc, char **argv)
{
	enum { O_ADDR = 256, O_PUB, O_CONS, O_GROUPS, O_STREAM, O_PREFETCH,
	    O_PAYLOAD, O_BATCH, O_PIPELINE, O_RATE, O_DURATION, O_WARMUP,
	    O_DRAIN, O_NOCONS, O_JSON, O_DPID, O_RPID, O_IDLE, O_MAXLAG };
	static const struct option lo[] = {
		{ "addr", required_argument, NULL, O_ADDR },
		{ "publishers", required_argument, NULL, O_PUB },
		{ "consumers", required_argument, NULL, O_CONS },
		{ "groups", required_argument, NULL, O_GROUPS },
		{ "stream", required_argument, NULL, O_STREAM },
		{ "prefetch", required_argument, NULL, O_PREFETCH },
		{ "payload", required_argument, NULL, O_PAYLOAD },
		{ "batch", required_argument, NULL, O_BATCH },
		{ "pipeline", required_argument, NULL, O_PIPELINE },
		{ "rate", required_argument, NULL, O_RATE },
		{ "duration", required_argument, NULL, O_DURATION },
		{ "warmup", required_argument, NULL, O_WARMUP },
		{ "drain", required_argument, NULL, O_DRAIN },
		{ "no-consume", no_argument, NULL, O_NOCONS },
		{ "json", no_argument, NULL, O_JSON },
		{ "daemon-pid", required_argument, NULL, O_DPID },
		{ "redis-pid", required_argument, NULL, O_RPID },
		{ "idle", required_argument, NULL, O_IDLE },
		{ "max-lag", required_argument, NULL, O_MAXLAG },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static char defstream[64];
	const char *colon;
	int ch;

	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (ch) {
		case O_ADDR: O.addr = optarg; break;
		case O_PUB: O.publishers = (int)opt_num("publishers", optarg, 0, 100000); break;
		case O_CONS: O.consumers = (int)opt_num("consumers", optarg, 0, 1000000); break;
		case O_GROUPS: O.groups = (int)opt_num("groups", optarg, 1, BENCH_MAX_GROUPS); break;
		case O_STREAM: O.stream = optarg; break;
		case O_PREFETCH: O.prefetch = (int)opt_num("prefetch", optarg, 1, 10000); break;
		case O_PAYLOAD: O.payload = (int)opt_num("payload", optarg, 0, 256 << 20); break;
		case O_BATCH: O.batch = (int)opt_num("batch", optarg, 1, BENCH_MAX_BATCH); break;
		case O_PIPELINE: O.pipeline = (int)opt_num("pipeline", optarg, 1, 1000000); break;
		case O_RATE: O.rate = opt_num("rate", optarg, 0, 1e9); break;
		case O_DURATION: O.duration = opt_num("duration", optarg, 0.1, 86400); break;
		case O_WARMUP: O.warmup = opt_num("warmup", optarg, 0, 86400); break;
		case O_DRAIN: O.drain = opt_num("drain", optarg, 0, 86400); break;
		case O_NOCONS: O.no_consume = true; break;
		case O_JSON: O.json = true; break;
		case O_DPID: O.daemon_pid = (long)opt_num("daemon-pid", optarg, 1, 1e9); break;
		case O_RPID: O.redis_pid = (long)opt_num("redis-pid", optarg, 1, 1e9); break;
		case O_IDLE: O.idle = (int)opt_num("idle", optarg, 0, 1000000); break;
		case O_MAXLAG: O.max_lag = (uint64_t)opt_num("max-lag", optarg, 0, 1e12); break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "streambus-bench: unexpected argument '%s'\n", argv[optind]);
		exit(2);
	}
	if (O.no_consume)
		O.consumers = 0;
	if (O.consumers > 0 && O.consumers < O.groups) {
		fprintf(stderr, "streambus-bench: %d consumers cannot cover %d groups\n",
		    O.consumers, O.groups);
		exit(2);
	}
	if (O.consumers == 0)
		O.groups = 0;
	if (O.stream == NULL) {
		snprintf(defstream, sizeof defstream, "bench.%ld.%ld",
		    (long)getpid(), (long)time(NULL));
		O.stream = defstream;
	}
	if (!stream_name_ok(O.stream)) {
		fprintf(stderr, "streambus-bench: --stream: 1..200 of [A-Za-z0-9_.:-]\n");
		exit(2);
	}
	colon = strrchr(O.addr, ':');
	if (colon == NULL || (size_t)(colon - O.addr) >= sizeof O.host) {
		fprintf(stderr, "streambus-bench: --addr: want HOST:PORT\n");
		exit(2);
	}
	memcpy(O.host, O.addr, (size_t)(colon - O.addr));
	O.host[colon - O.addr] = '\0';
	if (strcmp(O.host, "localhost") == 0)
		strcpy(O.host, "127.0.0.1");
	O.port = (int)opt_num("addr port", colon + 1, 1, 65535);
}

/* ---- /proc sampling ----------------------------------------------------- */

struct proc_sample {
	bool     ok;
	uint64_t t;		/* when taken, ns */
	uint64_t cpu_ticks;	/* utime + stime */
	uint64_t rss;		/* bytes */
	bool     sched_ok;
	uint64_t runq_ns;	/* time runnable but waiting for a CPU */
};

static struct proc_sample
proc_sample(long pid)
{
	struct proc_sample s = { .t = now_ns() };
	char path[64], data[2048], *p, *tok, *save = NULL;
	unsigned long long utime = 0, stime = 0, rss = 0;
	ssize_t n;
	int fd, i;

	if (pid <= 0)
		return s;
	snprintf(path, sizeof path, "/proc/%ld/stat", pid);
	if ((fd = open(path, O_RDONLY)) < 0)
		return s;
	n = read(fd, data, sizeof data - 1);
	close(fd);
	if (n <= 0)
		return s;
	data[n] = '\0';
	if ((p = strrchr(data, ')')) == NULL)
		return s;
	/* after "pid (comm)": field 3 is token 0; utime, stime, rss are
	 * fields 14, 15, 24 */
	for (i = 0, tok = strtok_r(p + 1, " ", &save); tok != NULL;
	    i++, tok = strtok_r(NULL, " ", &save)) {
		if (i == 11)
			utime = strtoull(tok, NULL, 10);
		else if (i == 12)
			stime = strtoull(tok, NULL, 10);
		else if (i == 21) {
			rss = strtoull(tok, NULL, 10);
			break;
		}
	}
	s.ok = i == 21;
	s.cpu_ticks = utime + stime;
	s.rss = rss * (uint64_t)sysconf(_SC_PAGESIZE);

	/* "run_ns runq_wait_ns timeslices" (needs CONFIG_SCHEDSTATS) */
	snprintf(path, sizeof path, "/proc/%ld/schedstat", pid);
	if ((fd = open(path, O_RDONLY)) < 0)
		return s;
	n = read(fd, data, sizeof data - 1);
	close(fd);
	if (n > 0) {
		unsigned long long run, wait;

		data[n] = '\0';
		s.sched_ok = sscanf(data, "%llu %llu", &run, &wait) == 2;
		s.runq_ns = s.sched_ok ? wait : 0;
	}
	return s;
}

/* Share of the wall time between two samples spent waiting for a CPU
 * while runnable, in %: high values mean the machine, not the process,
 * was the limit.  -1 if unknown. */
static double
proc_runq_pct(struct proc_sample a, struct proc_sample b)
{
	if (!a.sched_ok || !b.sched_ok || b.t <= a.t)
		return -1;
	return (double)(b.runq_ns - a.runq_ns) / (double)(b.t - a.t) * 100.0;
}

/* CPU use between two samples, in % of one core; -1 if unknown. */
static double
proc_cpu_pct(struct proc_sample a, struct proc_sample b)
{
	if (!a.ok || !b.ok || b.t <= a.t)
		return -1;
	return (double)(b.cpu_ticks - a.cpu_ticks) / (double)sysconf(_SC_CLK_TCK) /
	    ((double)(b.t - a.t) / 1e9) * 100.0;
}

static double
mb(uint64_t bytes)
{
	return (double)bytes / (1024.0 * 1024.0);
}

/* ---- connections -------------------------------------------------------- */

enum role { ROLE_PUB, ROLE_CONS, ROLE_IDLE };
static const char *const role_text[] = { "publisher", "consumer", "idle" };

enum cstate { CS_NEW, CS_CONNECTING, CS_SETUP, CS_READY, CS_CLOSED };

enum exp_kind { EXP_HELLO, EXP_SUB, EXP_PUB, EXP_ACK, EXP_PING };

/* A request sent and not yet answered. */
struct bench_expect {
	uint64_t t;		/* send time, ns */
	uint64_t first;		/* EXP_PUB: first seq */
	uint32_t n;		/* EXP_PUB: events; EXP_ACK: ids */
	uint8_t  kind;
};

struct ring {
	struct bench_expect *e;
	uint32_t head, count, cap;	/* cap is a power of two */
};

struct conn {
	int         fd;
	int         idx;	/* within its role */
	enum role   role;
	enum cstate state;
	uint32_t    ev;		/* registered epoll events */
	bool        dirty;	/* output queued since the last flush */
	struct buf  in, out;
	struct ring exp;
	/* publisher */
	uint64_t    pub_sent;	/* events sent */
	/* consumer */
	int         group;
	uint64_t    sub;
	uint64_t    delivered, acked, dups;
	struct buf  ack;	/* "id","id",... of this read burst */
	uint32_t    ack_n;
	bool        alive;	/* idle: answered the final ping */
};

static void
ring_push(struct ring *r, struct bench_expect e)
{
	if (r->count == r->cap) {
		uint32_t cap = r->cap ? r->cap * 2 : 8, i;
		struct bench_expect *n = xrealloc(NULL, cap * sizeof *n);

		for (i = 0; i < r->count; i++)
			n[i] = r->e[(r->head + i) & (r->cap - 1)];
		free(r->e);
		r->e = n;
		r->cap = cap;
		r->head = 0;
	}
	r->e[(r->head + r->count) & (r->cap - 1)] = e;
	r->count++;
}

static bool
ring_pop(struct ring *r, struct bench_expect *e)
{
	if (r->count == 0)
		return false;
	*e = r->e[r->head];
	r->head = (r->head + 1) & (r->cap - 1);
	r->count--;
	return true;
}

/* ---- the run ------------------------------------------------------------ */

enum phase { PH_SETUP, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_DONE };
static const char *const phase_text[] = { "setup", "warmup", "measure", "drain", "done" };

struct group_stats {
	int      consumers;
	uint64_t unique;	/* events delivered at least once */
	uint64_t ok_delivered;	/* ... of those, pubs answered ok */
	uint64_t deliveries;
	uint64_t dups;		/* deliveries of an event already delivered */
	uint64_t redelivered;	/* deliveries with attempt > 1 */
	uint64_t lost;		/* computed at the end */
};

struct errcount {
	char     code[32];
	uint64_t n;
};

static struct {
	int          ep;
	uint32_t     run;		/* tags this run's events */
	enum phase   phase;
	uint64_t     t_start, t_measure, t_end, t_drain_end, t_drain_deadline;
	volatile sig_atomic_t interrupted;

	struct conn *conns;
	int          nconns, npub, ncons, nidle;
	int          setup_next, setup_busy, ready, failed_idle;
	int          lost_conns;

	/* per-event state, indexed by seq */
	uint64_t     next_seq, seq_cap, seq_max;
	uint8_t     *st;		/* SEQ_* */
	uint8_t     *dc;		/* deliveries per group, [seq * G + g] */

	uint64_t     pub_ok, pub_err, pub_reqs_out;
	uint64_t     win_pub_ok, win_acked, win_delivered;
	uint64_t     acked, ack_short, foreign, bad_lines, byes, err_but_delivered;
	uint64_t     id_count_mismatch;
	struct group_stats *gs;
	struct errcount errs[BENCH_MAX_ERRCODES];
	int          nerrs;
	char         first_bye[64];

	struct hist  pub_lat, e2e_lat, tick_pub, tick_e2e;
	uint64_t     tick_t, tick_pub_ok, tick_acked, tick_no;

	char        *pad_buf;
	size_t       pad_len;

	struct proc_sample d_start, d_measure, d_end, r_measure, r_end,
	                   self_measure, self_end, d_idle_before, d_idle_after;
	uint64_t     d_rss_peak;
	json_t      *stats;
	char         server_version[32];
	long         max_payload;
} B;

enum { SEQ_SENT = 0, SEQ_OK = 1, SEQ_ERR = 2 };

static void
on_signal(int sig)
{
	(void)sig;
	B.interrupted++;
}

static void
seq_grow(uint64_t need)
{
	uint64_t cap = B.seq_cap ? B.seq_cap : (1u << 20);
	size_t g = (size_t)(O.groups > 0 ? O.groups : 0);

	while (cap < need)
		cap *= 2;
	if (cap > B.seq_max)
		cap = B.seq_max;
	B.st = xrealloc(B.st, cap);
	memset(B.st + B.seq_cap, 0, cap - B.seq_cap);
	if (g > 0) {
		B.dc = xrealloc(B.dc, cap * g);
		memset(B.dc + B.seq_cap * g, 0, (cap - B.seq_cap) * g);
	}
	B.seq_cap = cap;
}

static void
count_error(const char *code)
{
	int i;

	for (i = 0; i < B.nerrs; i++)
		if (strcmp(B.errs[i].code, code) == 0)
			break;
	if (i == B.nerrs) {
		if (B.nerrs == BENCH_MAX_ERRCODES)
			i = B.nerrs - 1;	/* lumped into the last */
		else
			snprintf(B.errs[B.nerrs++].code, sizeof B.errs[0].code, "%s", code);
	}
	B.errs[i].n++;
}

static bool
in_window(void)
{
	return B.phase == PH_MEASURE;
}

static void conn_close(struct conn *c, const char *reason);

static void
conn_want(struct conn *c, uint32_t ev)
{
	struct epoll_event e = { .events = ev, .data.ptr = c };

	if (c->ev == ev)
		return;
	if (epoll_ctl(B.ep, c->ev ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e) != 0)
		fatal("epoll_ctl: %s", strerror(errno));
	c->ev = ev;
}

static void
conn_flush(struct conn *c)
{
	ssize_t n;

	c->dirty = false;
	if (c->state == CS_CLOSED)
		return;
	while (c->out.len > c->out.off) {
		n = send(c->fd, c->out.p + c->out.off, c->out.len - c->out.off,
		    MSG_NOSIGNAL);
		if (n > 0) {
			c->out.off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			conn_want(c, EPOLLIN | EPOLLOUT);
			return;
		}
		conn_close(c, strerror(errno));
		return;
	}
	c->out.off = c->out.len = 0;
	if (c->state != CS_CONNECTING)
		conn_want(c, EPOLLIN);
}

static void
conn_queue(struct conn *c, const char *s, size_t n)
{
	if (c->out.len - c->out.off + n > BENCH_MAX_OUT)
		fatal("%s %d: output over %u bytes: the server is not reading",
		    role_text[c->role], c->idx, BENCH_MAX_OUT);
	buf_add(&c->out, s, n);
	c->dirty = true;
}

static void setup_continue(void);

/* The single close path. */
static void
conn_close(struct conn *c, const char *reason)
{
	struct bench_expect e;

	if (c->state == CS_CLOSED)
		return;
	if (c->state == CS_READY && B.phase < PH_DONE) {
		B.lost_conns++;
		if (B.lost_conns <= BENCH_LOG_LIMIT)
			note("%s connection %d closed during %s: %s", role_text[c->role],
			    c->idx, phase_text[B.phase], reason);
	}
	if (c->state == CS_CONNECTING || c->state == CS_SETUP) {
		if (c->role != ROLE_IDLE)
			fatal("%s connection %d failed during setup: %s",
			    role_text[c->role], c->idx, reason);
		B.failed_idle++;
		B.setup_busy--;
		if (B.failed_idle <= BENCH_LOG_LIMIT)
			note("idle connection %d failed: %s", c->idx, reason);
	}
	while (ring_pop(&c->exp, &e))
		if (e.kind == EXP_PUB)
			B.pub_reqs_out--;
	if (c->ev)
		epoll_ctl(B.ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->ev = 0;
	c->state = CS_CLOSED;
	buf_free(&c->in);
	buf_free(&c->out);
	buf_free(&c->ack);
	free(c->exp.e);
	memset(&c->exp, 0, sizeof c->exp);
	if (B.phase == PH_SETUP)
		setup_continue();
}

/* ---- publishing --------------------------------------------------------- */

/* Appends the data of one event: {"r":..,"q":..,"t":..,"p":"xx.."} sized
 * to --payload bytes when it can be. */
static char *
put_event(char *p, uint64_t seq, uint64_t t)
{
	char *start = p;
	size_t used, pad;

	PUT_LIT(p, "{\"r\":");
	p += put_u64(p, B.run);
	PUT_LIT(p, ",\"q\":");
	p += put_u64(p, seq);
	PUT_LIT(p, ",\"t\":");
	p += put_u64(p, t);
	PUT_LIT(p, ",\"p\":\"");
	used = (size_t)(p - start) + 2;
	pad = (size_t)O.payload > used ? (size_t)O.payload - used : 0;
	memcpy(p, B.pad_buf, pad);
	p += pad;
	PUT_LIT(p, "\"}");
	return p;
}

static uint64_t
slowest_group_unique(void)
{
	uint64_t m = UINT64_MAX;
	int g;

	for (g = 0; g < O.groups; g++)
		if (B.gs[g].unique < m)
			m = B.gs[g].unique;
	return m;
}

/* Events publisher c may send now under --rate; UINT64_MAX without. */
static uint64_t
pub_due(const struct conn *c, uint64_t now)
{
	double per = O.rate / O.publishers;
	uint64_t due;

	if (O.rate <= 0)
		return UINT64_MAX;
	due = (uint64_t)((double)(now - B.t_start) / 1e9 * per) + 1;
	return due > c->pub_sent ? due - c->pub_sent : 0;
}

/* When publisher c may send its next request under --rate. */
static uint64_t
pub_next_time(const struct conn *c)
{
	double per = O.rate / O.publishers;

	return B.t_start + (uint64_t)((double)(c->pub_sent + (uint64_t)O.batch - 1) /
	    per * 1e9);
}

static void
pub_fill(struct conn *c, uint64_t now)
{
	size_t slen = strlen(O.stream), per = (size_t)O.payload + 96, need;
	uint64_t seq, i, n = (uint64_t)O.batch;
	char *p;

	if (c->state != CS_READY || (B.phase != PH_WARMUP && B.phase != PH_MEASURE))
		return;
	while (c->exp.count < (uint32_t)O.pipeline) {
		if (pub_due(c, now) < n)
			break;
		if (O.max_lag > 0 && O.groups > 0 &&
		    B.next_seq - slowest_group_unique() > O.max_lag)
			break;
		if (B.next_seq + n > B.seq_cap) {
			if (B.next_seq + n > B.seq_max) {
				if (!B.interrupted)
					note("per-event memory limit reached at %" PRIu64
					    " events; ending the load", B.next_seq);
				B.interrupted = 1;
				return;
			}
			seq_grow(B.next_seq + n);
		}
		need = 64 + slen + (size_t)n * per;
		buf_reserve(&c->out, need);
		p = c->out.p + c->out.len;
		seq = B.next_seq;
		PUT_LIT(p, "{\"op\":\"pub\",\"stream\":\"");
		memcpy(p, O.stream, slen);
		p += slen;
		if (n == 1) {
			PUT_LIT(p, "\",\"data\":");
			p = put_event(p, seq, now);
			PUT_LIT(p, "}\n");
		} else {
			PUT_LIT(p, "\",\"batch\":[");
			for (i = 0; i < n; i++) {
				if (i)
					*p++ = ',';
				PUT_LIT(p, "{\"data\":");
				p = put_event(p, seq + i, now);
				*p++ = '}';
			}
			PUT_LIT(p, "]}\n");
		}
		c->out.len = (size_t)(p - c->out.p);
		c->dirty = true;
		ring_push(&c->exp, (struct bench_expect){ .t = now, .first = seq,
		    .n = (uint32_t)n, .kind = EXP_PUB });
		B.next_seq += n;
		c->pub_sent += n;
		B.pub_reqs_out++;
	}
	if (c->dirty)
		conn_flush(c);
}

static void
on_pub_reply(struct conn *c, const struct bench_expect *e, bool ok,
    struct jfield *f_ids, struct jfield *f_id, const char *code, uint64_t now)
{
	uint64_t s;
	int g;

	(void)c;
	B.pub_reqs_out--;
	if (ok) {
		long n = f_ids->v != NULL ? js_array_len(f_ids->v, f_ids->v + f_ids->vn) :
		    f_id->v != NULL ? 1 : -1;

		if (n != (long)e->n && B.id_count_mismatch++ < BENCH_LOG_LIMIT)
			note("pub of %u events answered with %ld ids", e->n, n);
		for (s = e->first; s < e->first + e->n; s++) {
			B.st[s] = SEQ_OK;
			for (g = 0; g < O.groups; g++)
				if (B.dc[s * (uint64_t)O.groups + (uint64_t)g])
					B.gs[g].ok_delivered++;
		}
		B.pub_ok += e->n;
		B.tick_pub_ok += e->n;
		hist_add(&B.tick_pub, now - e->t);
		if (in_window()) {
			B.win_pub_ok += e->n;
			hist_add(&B.pub_lat, now - e->t);
		}
	} else {
		for (s = e->first; s < e->first + e->n; s++)
			B.st[s] = SEQ_ERR;
		B.pub_err += e->n;
		count_error(code);
	}
}

/* ---- consuming ---------------------------------------------------------- */

static void
ack_flush(struct conn *c, uint64_t now)
{
	char head[96], *p = head;

	if (c->ack_n == 0)
		return;
	PUT_LIT(p, "{\"op\":\"ack\",\"sub\":");
	p += put_u64(p, c->sub);
	PUT_LIT(p, ",\"ids\":[");
	conn_queue(c, head, (size_t)(p - head));
	conn_queue(c, c->ack.p + c->ack.off, c->ack.len - c->ack.off);
	conn_queue(c, "]}\n", 3);
	ring_push(&c->exp, (struct bench_expect){ .t = now, .n = c->ack_n,
	    .kind = EXP_ACK });
	c->ack.off = c->ack.len = 0;
	c->ack_n = 0;
}

static void
on_msg(struct conn *c, struct jfield *f_id, struct jfield *f_attempt,
    struct jfield *f_data, uint64_t now)
{
	struct jfield df[] = { JF("r"), JF("q"), JF("t") };
	struct group_stats *gs = &B.gs[c->group];
	uint64_t run, seq, t, attempt = 1;
	uint8_t *d;

	if (c->role != ROLE_CONS || f_id->v == NULL || f_id->v[0] != '"') {
		if (B.bad_lines++ < BENCH_LOG_LIMIT)
			note("%s %d: delivery without an id", role_text[c->role], c->idx);
		return;
	}
	if (c->ack_n > 0)
		buf_add(&c->ack, ",", 1);
	buf_add(&c->ack, f_id->v, f_id->vn);
	if (++c->ack_n == BENCH_ACK_MAX_IDS)
		ack_flush(c, now);

	c->delivered++;
	gs->deliveries++;
	js_u64(f_attempt, &attempt);
	if (attempt > 1)
		gs->redelivered++;
	if (f_data->v == NULL || !js_object(f_data->v, f_data->v + f_data->vn, df, 3) ||
	    !js_u64(&df[0], &run) || !js_u64(&df[1], &seq) || !js_u64(&df[2], &t) ||
	    run != B.run || seq >= B.next_seq) {
		B.foreign++;
		return;
	}
	d = &B.dc[seq * (uint64_t)O.groups + (uint64_t)c->group];
	if (*d == 0) {
		gs->unique++;
		if (B.st[seq] == SEQ_OK)
			gs->ok_delivered++;
		if (now > t) {
			hist_add(&B.tick_e2e, now - t);
			if (in_window())
				hist_add(&B.e2e_lat, now - t);
		}
	} else {
		gs->dups++;
		c->dups++;
	}
	if (*d < UINT8_MAX)
		(*d)++;
	if (in_window())
		B.win_delivered++;
}

/* ---- lines from the server ---------------------------------------------- */

enum { FLD_OK, FLD_OP, FLD_ERROR, FLD_MESSAGE, FLD_SUB, FLD_ID, FLD_IDS, FLD_ATTEMPT,
    FLD_DATA, FLD_ACKED, FLD_REASON, FLD_NFIELDS };

static void
handle_line(struct conn *c, const char *s, size_t len, uint64_t now)
{
	struct jfield f[FLD_NFIELDS] = {
		[FLD_OK] = JF("ok"), [FLD_OP] = JF("op"), [FLD_ERROR] = JF("error"),
		[FLD_MESSAGE] = JF("message"), [FLD_SUB] = JF("sub"), [FLD_ID] = JF("id"),
		[FLD_IDS] = JF("ids"), [FLD_ATTEMPT] = JF("attempt"), [FLD_DATA] = JF("data"),
		[FLD_ACKED] = JF("acked"), [FLD_REASON] = JF("reason"),
	};
	struct bench_expect e;
	char code[32], msg[160];
	uint64_t v;
	bool ok;

	if (!js_object(s, s + len, f, FLD_NFIELDS)) {
		if (B.bad_lines++ < BENCH_LOG_LIMIT)
			note("%s %d: not a JSON object: %.80s", role_text[c->role], c->idx, s);
		return;
	}
	if (f[FLD_OK].v == NULL) {
		if (js_is(&f[FLD_OP], "\"msg\"")) {
			on_msg(c, &f[FLD_ID], &f[FLD_ATTEMPT], &f[FLD_DATA], now);
		} else if (js_is(&f[FLD_OP], "\"bye\"")) {
			js_str(&f[FLD_REASON], code, sizeof code);
			if (B.byes++ == 0)
				snprintf(B.first_bye, sizeof B.first_bye, "%s", code);
			if (B.byes <= BENCH_LOG_LIMIT)
				note("%s %d: bye, reason %s", role_text[c->role], c->idx, code);
		} else if (B.bad_lines++ < BENCH_LOG_LIMIT) {
			note("%s %d: unexpected line: %.80s", role_text[c->role], c->idx, s);
		}
		return;
	}
	ok = js_is(&f[FLD_OK], "true");
	js_str(&f[FLD_ERROR], code, sizeof code);
	if (!ring_pop(&c->exp, &e)) {
		if (B.bad_lines++ < BENCH_LOG_LIMIT)
			note("%s %d: reply to no request: %.80s", role_text[c->role], c->idx, s);
		return;
	}
	switch (e.kind) {
	case EXP_HELLO:
	case EXP_SUB:
	case EXP_PING:
		if (!ok) {
			js_str(&f[FLD_MESSAGE], msg, sizeof msg);
			if (c->role == ROLE_IDLE && B.phase == PH_SETUP) {
				conn_close(c, code);
				return;
			}
			if (B.phase == PH_SETUP)
				fatal("%s %d: %s refused: %s: %s", role_text[c->role], c->idx,
				    e.kind == EXP_SUB ? "sub" : e.kind == EXP_HELLO ?
				    "hello" : "ping", code, msg);
			note("%s %d: ping failed: %s", role_text[c->role], c->idx, code);
			return;
		}
		if (e.kind == EXP_SUB && js_u64(&f[FLD_SUB], &v))
			c->sub = v;
		if (e.kind == EXP_PING && B.phase >= PH_DRAIN)
			c->alive = true;
		if (c->state == CS_SETUP && c->exp.count == 0) {
			c->state = CS_READY;
			B.ready++;
			B.setup_busy--;
			setup_continue();
		}
		break;
	case EXP_PUB:
		on_pub_reply(c, &e, ok, &f[FLD_IDS], &f[FLD_ID], code, now);
		break;
	case EXP_ACK:
		if (!ok) {
			count_error(code);
			B.ack_short += e.n;
			break;
		}
		js_u64(&f[FLD_ACKED], &v);
		if (v < e.n)
			B.ack_short += e.n - v;
		c->acked += v;
		B.acked += v;
		B.tick_acked += v;
		if (in_window())
			B.win_acked += v;
		break;
	}
}

static void
conn_read(struct conn *c, uint64_t now)
{
	size_t budget = BENCH_READ_BUDGET;
	const char *reason = NULL;
	char *s, *nl;
	ssize_t n;

	while (budget > 0) {
		buf_reserve(&c->in, BENCH_READ_CHUNK + 1);
		n = recv(c->fd, c->in.p + c->in.len, BENCH_READ_CHUNK, 0);
		if (n > 0) {
			c->in.len += (size_t)n;
			budget -= (size_t)n < budget ? (size_t)n : budget;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		reason = n == 0 ? "closed by the server" : strerror(errno);
		break;
	}
	while (c->state != CS_CLOSED &&
	    (nl = memchr(c->in.p + c->in.off, '\n', c->in.len - c->in.off)) != NULL) {
		s = c->in.p + c->in.off;
		c->in.off = (size_t)(nl - c->in.p) + 1;
		*nl = '\0';
		if (nl > s && nl[-1] == '\r')
			*--nl = '\0';
		if (nl > s)
			handle_line(c, s, (size_t)(nl - s), now);
	}
	if (c->state == CS_CLOSED)
		return;
	if (c->in.off == c->in.len) {
		c->in.off = c->in.len = 0;
		if (c->role == ROLE_IDLE)
			buf_free(&c->in);
	} else if (c->in.len - c->in.off > BENCH_MAX_LINE) {
		reason = "line from the server over 16 MiB";
	}
	if (c->role == ROLE_CONS)
		ack_flush(c, now);
	if (reason != NULL)
		conn_close(c, reason);
	else if (c->dirty)
		conn_flush(c);
}

/* ---- setup -------------------------------------------------------------- */

static void
conn_start(struct conn *c)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)O.port) };
	int one = 1;

	if (inet_pton(AF_INET, O.host, &sa.sin_addr) != 1)
		fatal("--addr: '%s' is not an IPv4 address", O.host);
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		fatal("socket: %s (raise ulimit -n?)", strerror(errno));
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	B.setup_busy++;
	c->state = CS_CONNECTING;
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
		conn_close(c, strerror(errno));
		return;
	}
	conn_want(c, EPOLLOUT);
}

/* The connection is established: send its setup requests. */
static void
conn_connected(struct conn *c, uint64_t now)
{
	char line[BENCH_MAX_STREAM + 256];
	int n;

	c->state = CS_SETUP;
	switch (c->role) {
	case ROLE_PUB:
		n = snprintf(line, sizeof line,
		    "{\"op\":\"hello\",\"name\":\"bench-p%d\"}\n", c->idx);
		conn_queue(c, line, (size_t)n);
		ring_push(&c->exp, (struct bench_expect){ .t = now, .kind = EXP_HELLO });
		break;
	case ROLE_CONS:
		n = snprintf(line, sizeof line,
		    "{\"op\":\"hello\",\"name\":\"bench-c%d\"}\n"
		    "{\"op\":\"sub\",\"stream\":\"%s\",\"group\":\"g%d\","
		    "\"consumer\":\"bench-%08x-c%d\",\"prefetch\":%d,\"from\":\"new\"}\n",
		    c->idx, O.stream, c->group, B.run, c->idx, O.prefetch);
		conn_queue(c, line, (size_t)n);
		ring_push(&c->exp, (struct bench_expect){ .t = now, .kind = EXP_HELLO });
		ring_push(&c->exp, (struct bench_expect){ .t = now, .kind = EXP_SUB });
		break;
	case ROLE_IDLE:
		conn_queue(c, "{\"op\":\"ping\"}\n", 14);
		ring_push(&c->exp, (struct bench_expect){ .t = now, .kind = EXP_PING });
		break;
	}
	conn_flush(c);
}

/* Starts connections while fewer than a wave are on their way. */
static void
setup_continue(void)
{
	static bool busy;	/* conn_start() may fail and come back here */

	if (busy)
		return;
	busy = true;
	while (B.setup_busy < BENCH_SETUP_WAVE && B.setup_next < B.nconns)
		conn_start(&B.conns[B.setup_next++]);
	busy = false;
}

/* ---- event loop --------------------------------------------------------- */

static void
loop_once(uint64_t deadline)
{
	struct epoll_event ev[BENCH_EPOLL_EVENTS];
	struct timespec ts;
	uint64_t now = now_ns(), wait = deadline > now ? deadline - now : 0;
	int n, i, err;
	socklen_t el;

	ts.tv_sec = (time_t)(wait / 1000000000ull);
	ts.tv_nsec = (long)(wait % 1000000000ull);
	n = epoll_pwait2(B.ep, ev, BENCH_EPOLL_EVENTS, &ts, NULL);
	if (n < 0) {
		if (errno == EINTR)
			return;
		if (errno == ENOSYS) {	/* kernel before 5.11 */
			n = epoll_wait(B.ep, ev, BENCH_EPOLL_EVENTS,
			    (int)((wait + 999999) / 1000000));
			if (n < 0 && errno == EINTR)
				return;
		}
		if (n < 0)
			fatal("epoll: %s", strerror(errno));
	}
	now = now_ns();
	for (i = 0; i < n; i++) {
		struct conn *c = ev[i].data.ptr;

		if (c->state == CS_CLOSED)
			continue;
		if (c->state == CS_CONNECTING) {
			err = 0;
			el = sizeof err;
			getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
			if (err != 0)
				conn_close(c, strerror(err));
			else
				conn_connected(c, now);
			continue;
		}
		if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			conn_read(c, now);
		if (c->state != CS_CLOSED && (ev[i].events & EPOLLOUT))
			conn_flush(c);
	}
}

static void
progress(uint64_t now)
{
	double dt = (double)(now - B.tick_t) / 1e9;
	struct proc_sample d = proc_sample(O.daemon_pid);
	static struct proc_sample last;
	char cpu[48] = "";

	if (d.ok) {
		if (d.rss > B.d_rss_peak)
			B.d_rss_peak = d.rss;
		if (last.ok)
			snprintf(cpu, sizeof cpu, " | daemon cpu %3.0f%% rss %.1f MB",
			    proc_cpu_pct(last, d), mb(d.rss));
		last = d;
	}
	if (dt <= 0)
		dt = 1;
	B.tick_no++;
	fprintf(stderr, "[%3" PRIu64 "s %-7s] pub %7.0f/s e2e %7.0f/s | pub p50 %.3f "
	    "p99 %.3f ms | e2e p50 %.3f p99 %.3f ms | lag %" PRIu64 " | err %" PRIu64
	    "%s\n", B.tick_no, phase_text[B.phase], (double)B.tick_pub_ok / dt,
	    (double)B.tick_acked / dt, ns_ms(hist_pct(&B.tick_pub, 0.5)),
	    ns_ms(hist_pct(&B.tick_pub, 0.99)), ns_ms(hist_pct(&B.tick_e2e, 0.5)),
	    ns_ms(hist_pct(&B.tick_e2e, 0.99)),
	    O.groups > 0 ? B.next_seq - slowest_group_unique() : 0,
	    B.pub_err, cpu);
	hist_reset(&B.tick_pub);
	hist_reset(&B.tick_e2e);
	B.tick_pub_ok = B.tick_acked = 0;
	B.tick_t = now;
}

static bool
drain_complete(void)
{
	int i, g;

	if (B.pub_reqs_out > 0)
		return false;
	for (g = 0; g < O.groups; g++)
		if (B.gs[g].ok_delivered < B.pub_ok)
			return false;
	for (i = 0; i < B.nconns; i++) {
		struct conn *c = &B.conns[i];

		if (c->state == CS_READY && (c->exp.count > 0 || c->ack_n > 0))
			return false;
	}
	return true;
}

/* Whether every publisher and consumer connection is closed. */
static bool
load_gone(void)
{
	int i;

	if (B.npub + B.ncons == 0)
		return false;
	for (i = B.nidle; i < B.nconns; i++)
		if (B.conns[i].state != CS_CLOSED)
			return false;
	return true;
}

static void
drain_start(uint64_t now)
{
	int i;

	B.phase = PH_DRAIN;
	B.t_end = now;
	B.d_end = proc_sample(O.daemon_pid);
	B.r_end = proc_sample(O.redis_pid);
	B.self_end = proc_sample(getpid());
	B.t_drain_deadline = now + (uint64_t)(O.drain * 1e9);
	for (i = 0; i < B.nconns; i++) {
		struct conn *c = &B.conns[i];

		if (c->role == ROLE_IDLE && c->state == CS_READY) {
			conn_queue(c, "{\"op\":\"ping\"}\n", 14);
			ring_push(&c->exp, (struct bench_expect){ .t = now, .kind = EXP_PING });
			conn_flush(c);
		}
	}
}

static void
run(void)
{
	uint64_t now, deadline, t, setup_deadline;
	int i;

	/* idle connections first, so their cost is measured alone */
	setup_deadline = now_ns() + BENCH_SETUP_TIMEOUT_S * 1000000000ull;
	B.d_idle_before = proc_sample(O.daemon_pid);
	B.nconns = B.nidle;
	setup_continue();
	while (B.ready + B.failed_idle < B.nidle) {
		if (now_ns() > setup_deadline)
			fatal("setup: only %d of %d idle connections ready after %d s",
			    B.ready, B.nidle, BENCH_SETUP_TIMEOUT_S);
		loop_once(now_ns() + 100000000ull);
		if (B.interrupted)
			exit(1);
	}
	if (B.nidle > 0) {
		struct timespec settle = { 0, 200000000 };

		nanosleep(&settle, NULL);
		B.d_idle_after = proc_sample(O.daemon_pid);
		note("%d idle connections open (%d failed); daemon RSS %.1f -> %.1f MB",
			    B.nidle - B.failed_idle, B.failed_idle, mb(B.d_idle_before.rss),
			    mb(B.d_idle_after.rss));
	}
	B.nconns = B.nidle + B.ncons + B.npub;
	setup_continue();
	while (B.ready + B.failed_idle < B.nconns) {
		if (now_ns() > setup_deadline)
			fatal("setup: only %d of %d connections ready after %d s",
			    B.ready, B.nconns, BENCH_SETUP_TIMEOUT_S);
		loop_once(now_ns() + 100000000ull);
		if (B.interrupted)
			exit(1);
	}

	now = now_ns();
	B.t_start = B.tick_t = now;
	B.d_start = proc_sample(O.daemon_pid);
	B.phase = O.warmup > 0 ? PH_WARMUP : PH_MEASURE;
	if (B.phase == PH_MEASURE) {
		B.t_measure = now;
		B.d_measure = B.d_start;
		B.r_measure = proc_sample(O.redis_pid);
		B.self_measure = proc_sample(getpid());
	}
	while (B.phase != PH_DONE) {
		now = now_ns();
		if (B.phase == PH_WARMUP &&
		    now >= B.t_start + (uint64_t)(O.warmup * 1e9)) {
			B.phase = PH_MEASURE;
			B.t_measure = now;
			B.d_measure = proc_sample(O.daemon_pid);
			B.r_measure = proc_sample(O.redis_pid);
			B.self_measure = proc_sample(getpid());
		}
		if (B.phase == PH_MEASURE && (B.interrupted || load_gone() ||
		    now >= B.t_measure + (uint64_t)(O.duration * 1e9)))
			drain_start(now);
		if (B.phase == PH_WARMUP && (B.interrupted || load_gone())) {
			B.t_measure = now;
			B.d_measure = proc_sample(O.daemon_pid);
			drain_start(now);
		}
		if (B.phase == PH_DRAIN && (drain_complete() || load_gone() ||
		    now >= B.t_drain_deadline || B.interrupted > 1)) {
			B.phase = PH_DONE;
			B.t_drain_end = now;
			break;
		}
		if (now >= B.tick_t + 1000000000ull)
			progress(now);

		deadline = B.tick_t + 1000000000ull;
		if (B.phase == PH_WARMUP)
			t = B.t_start + (uint64_t)(O.warmup * 1e9);
		else if (B.phase == PH_MEASURE)
			t = B.t_measure + (uint64_t)(O.duration * 1e9);
		else
			t = B.t_drain_deadline;
		if (t < deadline)
			deadline = t;
		if (B.phase == PH_DRAIN && deadline > now + 10000000ull)
			deadline = now + 10000000ull;	/* recheck completion */
		for (i = B.nidle + B.ncons; i < B.nconns; i++) {
			struct conn *c = &B.conns[i];

			pub_fill(c, now);
			if (O.rate > 0 && c->state == CS_READY &&
			    c->exp.count < (uint32_t)O.pipeline &&
			    (B.phase == PH_WARMUP || B.phase == PH_MEASURE)) {
				t = pub_next_time(c);
				if (t < deadline)
					deadline = t;
			}
		}
		if (O.max_lag > 0 && deadline > now + 1000000ull)
			deadline = now + 1000000ull;	/* lag may fall meanwhile */
		loop_once(deadline);
	}
	B.d_rss_peak = B.d_rss_peak > B.d_end.rss ? B.d_rss_peak : B.d_end.rss;
}

/* ---- control connection ------------------------------------------------- */

static json_t *
control_request(sb_client *cl, json_t *req)
{
	json_t *r = sb_request(cl, req, BENCH_CONTROL_TIMEOUT);

	json_decref(req);
	if (r == NULL)
		fatal("control connection: %s", sb_strerror(cl));
	return r;
}

static sb_client *
control_open(void)
{
	char err[256];
	sb_client *cl = sb_connect(O.addr, err, sizeof err);
	json_t *r;

	if (cl == NULL)
		fatal("cannot connect to %s: %s", O.addr, err);
	r = control_request(cl, json_pack("{s:s,s:s}", "op", "hello", "name", "bench-control"));
	if (!json_is_true(json_object_get(r, "ok")))
		fatal("hello refused: %s", json_string_value(json_object_get(r, "error")));
	snprintf(B.server_version, sizeof B.server_version, "%s",
	    json_string_value(json_object_get(r, "version")) ?
	    json_string_value(json_object_get(r, "version")) : "?");
	B.max_payload = (long)json_integer_value(json_object_get(r, "max_payload"));
	json_decref(r);
	return cl;
}

/* ---- results ------------------------------------------------------------ */

struct fairness {
	uint64_t min, max;
	double   mean, min_share, max_share;
};

static struct fairness
group_fairness(int g)
{
	struct fairness f = { .min = UINT64_MAX };
	uint64_t sum = 0;
	int i, n = 0;

	for (i = 0; i < B.nconns; i++) {
		const struct conn *c = &B.conns[i];

		if (c->role != ROLE_CONS || c->group != g)
			continue;
		n++;
		sum += c->delivered;
		if (c->delivered < f.min)
			f.min = c->delivered;
		if (c->delivered > f.max)
			f.max = c->delivered;
	}
	if (n == 0) {
		f.min = 0;
		return f;
	}
	f.mean = (double)sum / n;
	f.min_share = f.mean > 0 ? (double)f.min / f.mean : 0;
	f.max_share = f.mean > 0 ? (double)f.max / f.mean : 0;
	return f;
}

static void
count_losses(uint64_t *unanswered)
{
	uint64_t s, G = (uint64_t)O.groups;
	int g;

	*unanswered = 0;
	for (s = 0; s < B.next_seq; s++) {
		if (B.st[s] == SEQ_SENT)
			(*unanswered)++;
		for (g = 0; g < O.groups; g++) {
			uint8_t d = B.dc[s * G + (uint64_t)g];

			if (B.st[s] == SEQ_OK && d == 0)
				B.gs[g].lost++;
			if (B.st[s] == SEQ_ERR && d > 0)
				B.err_but_delivered++;
		}
	}
}

struct summary {
	double   measured_s, drain_s, pub_rate, e2e_rate, deliver_rate;
	uint64_t unanswered, lost, dups, redelivered, deliveries;
	double   worst_min_share, worst_max_share;
	double   d_cpu, r_cpu, self_cpu, d_runq, r_runq, self_runq;
	bool     drained;
	int      idle_alive, starved;
};

static struct summary
summarize(void)
{
	struct summary S = { .worst_min_share = 1, .worst_max_share = 1 };
	int g, i;

	S.measured_s = (double)(B.t_end - B.t_measure) / 1e9;
	S.drain_s = (double)(B.t_drain_end - B.t_end) / 1e9;
	S.drained = drain_complete();
	if (S.measured_s <= 0)
		S.measured_s = 1e-9;
	S.pub_rate = (double)B.win_pub_ok / S.measured_s;
	S.e2e_rate = (double)B.win_acked / S.measured_s;
	S.deliver_rate = (double)B.win_delivered / S.measured_s;
	count_losses(&S.unanswered);
	for (g = 0; g < O.groups; g++) {
		struct fairness f = group_fairness(g);

		S.lost += B.gs[g].lost;
		S.dups += B.gs[g].dups;
		S.redelivered += B.gs[g].redelivered;
		S.deliveries += B.gs[g].deliveries;
		if (f.min_share < S.worst_min_share)
			S.worst_min_share = f.min_share;
		if (f.max_share > S.worst_max_share)
			S.worst_max_share = f.max_share;
	}
	S.d_cpu = proc_cpu_pct(B.d_measure, B.d_end);
	S.r_cpu = proc_cpu_pct(B.r_measure, B.r_end);
	S.self_cpu = proc_cpu_pct(B.self_measure, B.self_end);
	S.d_runq = proc_runq_pct(B.d_measure, B.d_end);
	S.r_runq = proc_runq_pct(B.r_measure, B.r_end);
	S.self_runq = proc_runq_pct(B.self_measure, B.self_end);
	for (i = 0; i < B.nconns; i++) {
		S.idle_alive += B.conns[i].alive;
		S.starved += B.conns[i].role == ROLE_CONS && B.conns[i].delivered == 0;
	}
	return S;
}

static void
print_lat(const char *name, const struct hist *h)
{
	printf("%-24s p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f ms  (n=%" PRIu64 ")\n",
	    name, ns_ms(hist_pct(h, 0.5)), ns_ms(hist_pct(h, 0.9)),
	    ns_ms(hist_pct(h, 0.99)), ns_ms(hist_pct(h, 0.999)), ns_ms(h->max), h->n);
}

static void
print_table(const struct summary *S)
{
	char rate[32];
	int g, i;

	if (O.rate > 0)
		snprintf(rate, sizeof rate, "%.0f/s", O.rate);
	else
		snprintf(rate, sizeof rate, "flat out");
	printf("streambus-bench %s -> %s (streambusd %s), stream %s, run %08x\n",
	    BENCH_VERSION, O.addr, B.server_version, O.stream, B.run);
	printf("load: %d publishers (batch %d, pipeline %d, payload %d B, rate %s",
	    B.npub, O.batch, O.pipeline, O.payload, rate);
	if (O.max_lag)
		printf(", max lag %" PRIu64, O.max_lag);
	printf("), %d consumers in %d groups (prefetch %d), %d idle\n",
	    B.ncons, O.groups, O.prefetch, B.nidle);
	printf("time: warmup %.1f s, measured %.2f s, drain %.2f s (%s)\n\n",
	    O.warmup, S->measured_s, S->drain_s, S->drained ? "complete" : "INCOMPLETE");

	printf("%-24s %.0f events/s\n", "publish throughput", S->pub_rate);
	if (O.groups > 0) {
		printf("%-24s %.0f deliveries acked/s (delivered %.0f/s)\n",
		    "end-to-end throughput", S->e2e_rate, S->deliver_rate);
	}
	print_lat("publish latency", &B.pub_lat);
	if (O.groups > 0)
		print_lat("end-to-end latency", &B.e2e_lat);
	printf("%-24s ok %" PRIu64 ", errors %" PRIu64 ", unanswered %" PRIu64 "\n",
	    "published", B.pub_ok, B.pub_err, S->unanswered);
	for (i = 0; i < B.nerrs; i++)
		printf("%-24s %s: %" PRIu64 "\n", i == 0 ? "errors" : "", B.errs[i].code,
		    B.errs[i].n);
	if (O.groups > 0) {
		printf("%-24s %" PRIu64 "%s\n", "lost", S->lost,
		    S->drained ? "" : " (drain incomplete: not yet delivered)");
		printf("%-24s %" PRIu64 " (redelivered %" PRIu64 ", foreign %" PRIu64
		    ", acks not counted %" PRIu64 ")\n", "duplicates", S->dups,
		    S->redelivered, B.foreign, B.ack_short);
		printf("%-24s worst min %.3f, max %.3f of the group mean; %d consumers "
		    "got nothing\n", "fairness", S->worst_min_share, S->worst_max_share,
		    S->starved);
		for (g = 0; g < O.groups && g < 64; g++) {
			struct fairness f = group_fairness(g);

			printf("  group g%-4d %4d consumers  delivered %" PRIu64
			    " (unique %" PRIu64 ", lost %" PRIu64 ", dups %" PRIu64
			    ")  per consumer min %" PRIu64 " max %" PRIu64 " mean %.1f"
			    "  share %.3f..%.3f\n", g, B.gs[g].consumers,
			    B.gs[g].deliveries, B.gs[g].unique, B.gs[g].lost, B.gs[g].dups,
			    f.min, f.max, f.mean, f.min_share, f.max_share);
		}
		if (B.ncons <= 16)
			for (i = 0; i < B.nconns; i++)
				if (B.conns[i].role == ROLE_CONS)
					printf("    consumer %d (g%d): delivered %" PRIu64
					    ", acked %" PRIu64 "\n", B.conns[i].idx,
					    B.conns[i].group, B.conns[i].delivered,
					    B.conns[i].acked);
	}
	if (B.d_end.ok)
		printf("%-24s cpu %.1f %%, waiting for a cpu %.1f %%, rss %.1f MB (start %.1f, "
		    "peak %.1f)\n", "daemon", S->d_cpu, S->d_runq, mb(B.d_end.rss),
		    mb(B.d_start.rss), mb(B.d_rss_peak));
	if (B.r_end.ok)
		printf("%-24s cpu %.1f %%, waiting for a cpu %.1f %%, rss %.1f MB\n", "redis",
		    S->r_cpu, S->r_runq, mb(B.r_end.rss));
	printf("%-24s cpu %.1f %%, waiting for a cpu %.1f %%\n", "bench", S->self_cpu,
	    S->self_runq);
	if (B.nidle > 0)
		printf("%-24s %d open, %d failed, %d answered a ping at the end; "
		    "daemon rss %.1f MB before, %.1f MB after\n", "idle connections",
		    B.nidle - B.failed_idle, B.failed_idle, S->idle_alive,
		    mb(B.d_idle_before.rss), mb(B.d_idle_after.rss));
	if (B.lost_conns || B.byes || B.bad_lines || B.err_but_delivered ||
	    B.id_count_mismatch)
		printf("%-24s connections lost %d, byes %" PRIu64 " (first: %s), bad lines %"
		    PRIu64 ", delivered after an error reply %" PRIu64
		    ", wrong id counts %" PRIu64 "\n", "anomalies", B.lost_conns, B.byes,
		    B.first_bye[0] ? B.first_bye : "-", B.bad_lines, B.err_but_delivered,
		    B.id_count_mismatch);
	if (B.stats != NULL) {
		char *s = json_dumps(B.stats, JSON_COMPACT);

		printf("%-24s %s\n", "server stats", s ? s : "?");
		free(s);
	}
}

static json_t *
lat_json(const struct hist *h)
{
	return json_pack("{s:f,s:f,s:f,s:f,s:f,s:I}",
	    "p50", ns_ms(hist_pct(h, 0.5)), "p90", ns_ms(hist_pct(h, 0.9)),
	    "p99", ns_ms(hist_pct(h, 0.99)), "p99_9", ns_ms(hist_pct(h, 0.999)),
	    "max", ns_ms(h->max), "n", (json_int_t)h->n);
}

static void
print_json(const struct summary *S)
{
	json_t *o = json_object(), *groups = json_array(), *errs = json_object();
	int g, i;

#define SETF(k, v) json_object_set_new(o, k, json_real(v))
#define SETI(k, v) json_object_set_new(o, k, json_integer((json_int_t)(v)))
	json_object_set_new(o, "addr", json_string(O.addr));
	json_object_set_new(o, "server_version", json_string(B.server_version));
	json_object_set_new(o, "stream", json_string(O.stream));
	SETI("publishers", B.npub);
	SETI("consumers", B.ncons);
	SETI("groups", O.groups);
	SETI("prefetch", O.prefetch);
	SETI("payload", O.payload);
	SETI("batch", O.batch);
	SETI("pipeline", O.pipeline);
	SETF("rate", O.rate);
	SETI("max_lag", O.max_lag);
	SETF("warmup_s", O.warmup);
	SETF("measured_s", S->measured_s);
	SETF("drain_s", S->drain_s);
	json_object_set_new(o, "drain_complete", json_boolean(S->drained));
	SETF("pub_per_s", S->pub_rate);
	SETF("e2e_per_s", S->e2e_rate);
	SETF("delivered_per_s", S->deliver_rate);
	SETF("pub_p50_ms", ns_ms(hist_pct(&B.pub_lat, 0.5)));
	SETF("pub_p90_ms", ns_ms(hist_pct(&B.pub_lat, 0.9)));
	SETF("pub_p99_ms", ns_ms(hist_pct(&B.pub_lat, 0.99)));
	SETF("pub_p999_ms", ns_ms(hist_pct(&B.pub_lat, 0.999)));
	SETF("pub_max_ms", ns_ms(B.pub_lat.max));
	SETF("e2e_p50_ms", ns_ms(hist_pct(&B.e2e_lat, 0.5)));
	SETF("e2e_p90_ms", ns_ms(hist_pct(&B.e2e_lat, 0.9)));
	SETF("e2e_p99_ms", ns_ms(hist_pct(&B.e2e_lat, 0.99)));
	SETF("e2e_p999_ms", ns_ms(hist_pct(&B.e2e_lat, 0.999)));
	SETF("e2e_max_ms", ns_ms(B.e2e_lat.max));
	SETI("published", B.next_seq);
	SETI("pub_ok", B.pub_ok);
	SETI("pub_errors", B.pub_err);
	SETI("pub_unanswered", S->unanswered);
	SETI("deliveries", S->deliveries);
	SETI("acked", B.acked);
	SETI("lost", S->lost);
	SETI("duplicates", S->dups);
	SETI("redelivered", S->redelivered);
	SETI("foreign", B.foreign);
	SETI("acks_not_counted", B.ack_short);
	SETI("delivered_after_error", B.err_but_delivered);
	SETI("wrong_id_counts", B.id_count_mismatch);
	SETI("conns_lost", B.lost_conns);
	SETI("byes", B.byes);
	SETI("bad_lines", B.bad_lines);
	SETF("fair_min_share", S->worst_min_share);
	SETF("fair_max_share", S->worst_max_share);
	SETI("consumers_starved", S->starved);
	if (B.d_end.ok) {
		SETF("daemon_cpu_pct", S->d_cpu);
		SETF("daemon_runq_pct", S->d_runq);
		SETF("daemon_rss_mb", mb(B.d_end.rss));
		SETF("daemon_rss_start_mb", mb(B.d_start.rss));
		SETF("daemon_rss_peak_mb", mb(B.d_rss_peak));
	}
	if (B.r_end.ok) {
		SETF("redis_cpu_pct", S->r_cpu);
		SETF("redis_runq_pct", S->r_runq);
		SETF("redis_rss_mb", mb(B.r_end.rss));
	}
	SETF("bench_cpu_pct", S->self_cpu);
	SETF("bench_runq_pct", S->self_runq);
	SETI("idle", B.nidle);
	SETI("idle_failed", B.failed_idle);
	SETI("idle_alive", S->idle_alive);
	if (B.d_idle_after.ok) {
		SETF("idle_rss_before_mb", mb(B.d_idle_before.rss));
		SETF("idle_rss_after_mb", mb(B.d_idle_after.rss));
	}
#undef SETF
#undef SETI
	json_object_set_new(o, "pub_latency_ms", lat_json(&B.pub_lat));
	json_object_set_new(o, "e2e_latency_ms", lat_json(&B.e2e_lat));
	for (i = 0; i < B.nerrs; i++)
		json_object_set_new(errs, B.errs[i].code, json_integer((json_int_t)B.errs[i].n));
	json_object_set_new(o, "errors", errs);
	for (g = 0; g < O.groups; g++) {
		struct fairness f = group_fairness(g);
		json_t *per = json_array();
		char name[16];

		for (i = 0; i < B.nconns; i++)
			if (B.conns[i].role == ROLE_CONS && B.conns[i].group == g)
				json_array_append_new(per,
				    json_integer((json_int_t)B.conns[i].delivered));
		snprintf(name, sizeof name, "g%d", g);
		json_array_append_new(groups, json_pack(
		    "{s:s,s:i,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:o}",
		    "group", name, "consumers", B.gs[g].consumers,
		    "deliveries", (json_int_t)B.gs[g].deliveries,
		    "unique", (json_int_t)B.gs[g].unique,
		    "lost", (json_int_t)B.gs[g].lost,
		    "duplicates", (json_int_t)B.gs[g].dups,
		    "redelivered", (json_int_t)B.gs[g].redelivered,
		    "min", (json_int_t)f.min, "max", (json_int_t)f.max,
		    "min_share", f.min_share, "max_share", f.max_share,
		    "per_consumer", per));
	}
	json_object_set_new(o, "group_detail", groups);
	if (B.stats != NULL)
		json_object_set(o, "server_stats", B.stats);
	json_dumpf(o, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
	fputc('\n', stdout);
	json_decref(o);
}

/* ---- main --------------------------------------------------------------- */

int
main(int argc, char **argv)
{
	struct rlimit rl;
	struct sigaction sa;
	struct summary S;
	sb_client *ctl;
	json_t *req, *r;
	uint64_t seed;
	int i, n = 0;

	opts_parse(argc, argv);
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* one descriptor per connection, plus a few */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
	    rl.rlim_cur < (rlim_t)O.idle + (rlim_t)O.publishers + (rlim_t)O.consumers + 16)
		fatal("%d connections need more descriptors than ulimit -n allows (%lu)",
		    O.idle + O.publishers + O.consumers, (unsigned long)rl.rlim_cur);

	seed = now_ns() ^ ((uint64_t)getpid() << 32);
	B.run = (uint32_t)(seed ^ (seed >> 29) ^ (seed >> 47));
	B.pad_len = (size_t)O.payload;
	B.pad_buf = xrealloc(NULL, B.pad_len + 1);
	memset(B.pad_buf, 'x', B.pad_len);
	B.seq_max = BENCH_SEQ_MEMORY / (1 + (uint64_t)O.groups);
	seq_grow(1);
	B.gs = xrealloc(NULL, sizeof *B.gs * (size_t)(O.groups + 1));
	memset(B.gs, 0, sizeof *B.gs * (size_t)(O.groups + 1));

	ctl = control_open();
	if (B.max_payload > 0 && O.payload > B.max_payload)
		fatal("--payload %d is over the server's max_payload %ld", O.payload,
		    B.max_payload);

	if ((B.ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		fatal("epoll_create1: %s", strerror(errno));
	B.nidle = O.idle;
	B.ncons = O.consumers;
	B.npub = O.publishers;
	B.conns = xrealloc(NULL, sizeof *B.conns * (size_t)(B.nidle + B.ncons + B.npub + 1));
	memset(B.conns, 0, sizeof *B.conns * (size_t)(B.nidle + B.ncons + B.npub + 1));
	for (i = 0; i < B.nidle; i++, n++)
		B.conns[n] = (struct conn){ .fd = -1, .idx = i, .role = ROLE_IDLE };
	for (i = 0; i < B.ncons; i++, n++) {
		B.conns[n] = (struct conn){ .fd = -1, .idx = i, .role = ROLE_CONS,
		    .group = i % O.groups };
		B.gs[i % O.groups].consumers++;
	}
	for (i = 0; i < B.npub; i++, n++)
		B.conns[n] = (struct conn){ .fd = -1, .idx = i, .role = ROLE_PUB };

	run();

	/* the daemon's view, before our connections go and release anything */
	req = json_pack("{s:s,s:s}", "op", "stats", "stream", O.stream);
	r = sb_request(ctl, req, BENCH_CONTROL_TIMEOUT);
	json_decref(req);
	if (r == NULL)
		note("final stats: %s", sb_strerror(ctl));
	else if (json_is_true(json_object_get(r, "ok")))
		B.stats = json_incref(json_object_get(r, "streams"));
	json_decref(r);
	sb_close(ctl);

	S = summarize();
	for (i = 0; i < B.nconns; i++)
		if (B.conns[i].state != CS_CLOSED)
			conn_close(&B.conns[i], "done");
	if (O.json)
		print_json(&S);
	else
		print_table(&S);
	fflush(stdout);
	return 0;
}
