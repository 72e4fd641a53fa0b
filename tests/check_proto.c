/*
 * check_proto.c: unit tests of src/proto.c, the wire protocol as pure
 * functions over bytes: line framing over split and hostile input, request
 * validation of every op and every error path, reply/delivery encoding to
 * exact bytes, and stream id parsing.
 *
 * Run from the repository root.  Tests named test_bug_* are regressions of
 * defects found and fixed.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <event2/buffer.h>
#include <jansson.h>

#include "proto.h"
#include "proto_same.h"

/* ------------------------------------------------------------ helpers */

/* A deterministic PRNG (xorshift64*), so chunkings are the same everywhere. */
static uint64_t t_rng_state;

static void
t_srand(uint64_t seed)
{
	t_rng_state = seed ? seed : 1;
}

static uint64_t
t_rand(void)
{
	t_rng_state ^= t_rng_state >> 12;
	t_rng_state ^= t_rng_state << 25;
	t_rng_state ^= t_rng_state >> 27;
	return t_rng_state * 0x2545f4914f6cdd1dull;
}

/* The contents of an evbuffer as a malloc'd NUL-terminated string; drains
 * the buffer. */
static char *
t_take(struct evbuffer *b, size_t *lenp)
{
	size_t len = evbuffer_get_length(b);
	char *s = malloc(len + 1);

	ck_assert_ptr_nonnull(s);
	ck_assert_int_eq(evbuffer_remove(b, s, len), (int)len);
	s[len] = '\0';
	if (lenp != NULL)
		*lenp = len;
	return s;
}

#define ck_assert_buf(b, expect) do { \
	size_t t_len_; \
	char *t_s_ = t_take((b), &t_len_); \
	ck_assert_str_eq(t_s_, (expect)); \
	ck_assert_uint_eq(t_len_, strlen(expect)); \
	free(t_s_); \
} while (0)

/*
 * A model of the daemon's read loop (conn_process): bytes arrive in chunks,
 * a partial line is kept, proto_frame_next is called while bytes remain.
 * Every event is appended to a log: "L<len>:<line>\n" for a line,
 * "T\n" for too long, "S<n>\n" for skipped bytes (merged into one entry per
 * run), so two feeds of the same stream compare as strings.
 */
struct t_feeder {
	struct proto_framer f;
	size_t max_line;
	char  *keep;
	size_t keeplen, keepcap;
	size_t max_kept;	/* high-water mark of kept bytes */
	char  *log;
	size_t loglen, logcap;
	int    too_long, lines, skips;
	size_t skipped;		/* bytes in the current run of SKIPPED */
};

static void
t_log(struct t_feeder *fd, const char *s, size_t n)
{
	if (fd->loglen + n + 1 > fd->logcap) {
		fd->logcap = (fd->loglen + n + 1) * 2;
		fd->log = realloc(fd->log, fd->logcap);
		ck_assert_ptr_nonnull(fd->log);
	}
	memcpy(fd->log + fd->loglen, s, n);
	fd->loglen += n;
	fd->log[fd->loglen] = '\0';
}

static void
t_flush_skip(struct t_feeder *fd)
{
	char tmp[64];

	if (fd->skipped == 0)
		return;
	snprintf(tmp, sizeof(tmp), "S%zu\n", fd->skipped);
	t_log(fd, tmp, strlen(tmp));
	fd->skipped = 0;
}

static void
t_feeder_init(struct t_feeder *fd, size_t max_line)
{
	memset(fd, 0, sizeof(*fd));
	fd->max_line = max_line;
	t_log(fd, "", 0);
}

static void
t_feeder_free(struct t_feeder *fd)
{
	free(fd->keep);
	free(fd->log);
	memset(fd, 0, sizeof(*fd));
}

static void
t_feed(struct t_feeder *fd, const char *chunk, size_t n)
{
	size_t off = 0, len, line_len, used;
	char tmp[64];

	if (fd->keeplen + n > fd->keepcap) {
		fd->keepcap = (fd->keeplen + n) * 2 + 16;
		fd->keep = realloc(fd->keep, fd->keepcap);
		ck_assert_ptr_nonnull(fd->keep);
	}
	memcpy(fd->keep + fd->keeplen, chunk, n);
	len = fd->keeplen + n;
	while (off < len) {
		enum proto_frame r = proto_frame_next(&fd->f, fd->keep + off, len - off,
		    fd->max_line, &line_len, &used);
		ck_assert_uint_le(used, len - off);
		if (r == PROTO_FRAME_NEED_MORE) {
			ck_assert_uint_eq(used, 0);
			break;
		}
		ck_assert_uint_gt(used, 0);	/* progress, or the loop spins */
		switch (r) {
		case PROTO_FRAME_LINE:
			t_flush_skip(fd);
			ck_assert_uint_le(line_len, fd->max_line);
			snprintf(tmp, sizeof(tmp), "L%zu:", line_len);
			t_log(fd, tmp, strlen(tmp));
			t_log(fd, fd->keep + off, line_len);
			t_log(fd, "\n", 1);
			fd->lines++;
			break;
		case PROTO_FRAME_TOO_LONG:
			t_flush_skip(fd);
			ck_assert_uint_eq(line_len, 0);
			t_log(fd, "T\n", 2);
			fd->too_long++;
			break;
		case PROTO_FRAME_SKIPPED:
			ck_assert_uint_eq(line_len, 0);
			fd->skipped += used;
			fd->skips++;
			break;
		default:
			ck_abort_msg("unexpected frame result %d", (int)r);
		}
		off += used;
	}
	memmove(fd->keep, fd->keep + off, len - off);
	fd->keeplen = len - off;
	if (fd->keeplen > fd->max_kept)
		fd->max_kept = fd->keeplen;
}

/* Feed text in chunks of 1..maxchunk bytes (maxchunk 0: all at once). */
static char *
t_feed_all(const char *text, size_t len, size_t max_line, size_t maxchunk,
    int *too_long, size_t *max_kept)
{
	struct t_feeder fd;
	char *log;

	t_feeder_init(&fd, max_line);
	for (size_t off = 0; off < len;) {
		size_t n = maxchunk == 0 ? len - off : 1 + t_rand() % maxchunk;
		if (n > len - off)
			n = len - off;
		t_feed(&fd, text + off, n);
		off += n;
	}
	t_flush_skip(&fd);
	if (too_long != NULL)
		*too_long = fd.too_long;
	if (max_kept != NULL)
		*max_kept = fd.max_kept;
	ck_assert_uint_eq(fd.keeplen, 0);	/* every stream below ends with \n */
	log = fd.log;
	fd.log = NULL;
	t_feeder_free(&fd);
	return log;
}

/* One call of proto_frame_next on a fresh (or given) framer. */
static enum proto_frame
t_frame1(struct proto_framer *f, const char *buf, size_t len, size_t max_line,
    size_t *line_len, size_t *consumed)
{
	*line_len = 12345;
	*consumed = 12345;
	return proto_frame_next(f, buf, len, max_line, line_len, consumed);
}

static const struct proto_limits t_lim = { .max_payload = 64, .max_batch = 4 };

/* Parse a NUL-terminated line with t_lim. */
static int
t_parse(const char *line, struct proto_request *req, struct proto_error *err)
{
	memset(err, 0x5a, sizeof(*err));
	return proto_parse_request(line, strlen(line), &t_lim, req, err);
}

/* The line must fail with code and exactly message. */
#define ck_parse_err(line, ecode, emsg) do { \
	struct proto_request t_r_; \
	struct proto_error t_e_; \
	int t_rc_ = t_parse((line), &t_r_, &t_e_); \
	ck_assert_msg(t_rc_ == -1, "accepted: %s", (line)); \
	ck_assert_str_eq(t_e_.code, (ecode)); \
	ck_assert_str_eq(t_e_.message, (emsg)); \
	proto_request_free(&t_r_); \
} while (0)

/* The line must fail with code and a message starting with prefix. */
#define ck_parse_err_prefix(line, len, ecode, prefix) do { \
	struct proto_request t_r_; \
	struct proto_error t_e_; \
	int t_rc_ = proto_parse_request((line), (len), &t_lim, &t_r_, &t_e_); \
	ck_assert_int_eq(t_rc_, -1); \
	ck_assert_str_eq(t_e_.code, (ecode)); \
	ck_assert_msg(strncmp(t_e_.message, (prefix), strlen(prefix)) == 0, \
	    "message \"%s\" does not start with \"%s\"", t_e_.message, (prefix)); \
	ck_assert_ptr_null(t_e_.rid); \
	proto_request_free(&t_r_); \
} while (0)

#define ck_parse_ok(line, req) do { \
	struct proto_error t_e_; \
	int t_rc_ = t_parse((line), (req), &t_e_); \
	ck_assert_msg(t_rc_ == 0, "rejected %s: %s %s", (line), \
	    t_rc_ ? t_e_.code : "", t_rc_ ? t_e_.message : ""); \
} while (0)

/* A string of n copies of c (malloc'd). */
static char *
t_rep(char c, size_t n)
{
	char *s = malloc(n + 1);

	ck_assert_ptr_nonnull(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* printf into a malloc'd string. */
static char *
t_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *
t_fmt(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	ck_assert_int_ge(vasprintf(&s, fmt, ap), 0);
	va_end(ap);
	return s;
}

/* ------------------------------------------------------------ framing */

/* data is a span of the line, not NUL-terminated. */
#define ck_data_eq(m, want) do { \
	ck_assert_uint_eq((m).data_len, strlen(want)); \
	ck_assert_msg(memcmp((m).data, (want), (m).data_len) == 0, "data is %.*s, want %s", \
	    (int)(m).data_len, (m).data, (want)); \
} while (0)

START_TEST(test_frame_basic)
{
	struct proto_framer f = { 0 };
	size_t ll, used;

	ck_assert_int_eq(t_frame1(&f, "abc\n", 4, 100, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 3);
	ck_assert_uint_eq(used, 4);

	/* Only the first line of a buffer. */
	ck_assert_int_eq(t_frame1(&f, "ab\ncd\n", 6, 100, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 2);
	ck_assert_uint_eq(used, 3);

	/* No newline yet: keep everything. */
	ck_assert_int_eq(t_frame1(&f, "abc", 3, 100, &ll, &used), PROTO_FRAME_NEED_MORE);
	ck_assert_uint_eq(ll, 0);
	ck_assert_uint_eq(used, 0);
	ck_assert_int_eq(t_frame1(&f, "abc\r", 4, 100, &ll, &used), PROTO_FRAME_NEED_MORE);
	ck_assert_uint_eq(used, 0);

	/* \r\n: the \r is not part of the line. */
	ck_assert_int_eq(t_frame1(&f, "abc\r\n", 5, 100, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 3);
	ck_assert_uint_eq(used, 5);

	/* Only one \r before the \n is dropped; a \r elsewhere is data. */
	ck_assert_int_eq(t_frame1(&f, "a\rb\r\r\n", 6, 100, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 4);
	ck_assert_uint_eq(used, 6);

	/* Empty lines are lines of length 0 (the caller ignores them). */
	ck_assert_int_eq(t_frame1(&f, "\n", 1, 100, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 0);
	ck_assert_uint_eq(used, 1);
	ck_assert_int_eq(t_frame1(&f, "\r\nx\n", 4, 100, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 0);
	ck_assert_uint_eq(used, 2);

	/* NUL bytes are just bytes to the framer. */
	ck_assert_int_eq(t_frame1(&f, "a\0b\n", 4, 100, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 3);
	ck_assert_uint_eq(used, 4);
	ck_assert_int_eq(f.discarding, 0);
}
END_TEST

START_TEST(test_frame_max_line)
{
	const size_t max = 16;
	struct proto_framer f = { 0 };
	char buf[64];
	size_t ll, used;

	/* Exactly max_line bytes: a line, with \n or \r\n. */
	memset(buf, 'x', sizeof(buf));
	buf[16] = '\n';
	ck_assert_int_eq(t_frame1(&f, buf, 17, max, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 16);
	ck_assert_uint_eq(used, 17);
	memset(buf, 'x', sizeof(buf));
	buf[16] = '\r';
	buf[17] = '\n';
	ck_assert_int_eq(t_frame1(&f, buf, 18, max, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 16);
	ck_assert_uint_eq(used, 18);
	/* max_line bytes plus \r still waiting for its \n: keep. */
	ck_assert_int_eq(t_frame1(&f, buf, 17, max, &ll, &used), PROTO_FRAME_NEED_MORE);
	ck_assert_uint_eq(used, 0);

	/* max_line + 1 with its \n in the buffer: too long, whole line dropped,
	 * no discarding state left behind. */
	memset(buf, 'x', sizeof(buf));
	buf[17] = '\n';
	ck_assert_int_eq(t_frame1(&f, buf, 18, max, &ll, &used), PROTO_FRAME_TOO_LONG);
	ck_assert_uint_eq(ll, 0);
	ck_assert_uint_eq(used, 18);
	ck_assert_int_eq(f.discarding, 0);
	memcpy(buf, "ok\n", 3);
	ck_assert_int_eq(t_frame1(&f, buf, 3, max, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 2);

	/* max_line + 1 without \n: could still be max_line + \r; wait. */
	memset(buf, 'x', sizeof(buf));
	ck_assert_int_eq(t_frame1(&f, buf, 17, max, &ll, &used), PROTO_FRAME_NEED_MORE);
	ck_assert_uint_eq(used, 0);
	/* max_line + 2 without \n: too long once, all bytes dropped ... */
	ck_assert_int_eq(t_frame1(&f, buf, 18, max, &ll, &used), PROTO_FRAME_TOO_LONG);
	ck_assert_uint_eq(used, 18);
	ck_assert_uint_eq(ll, 0);
	ck_assert_int_eq(f.discarding, 1);
	/* ... then skipped up to and including the next \n ... */
	ck_assert_int_eq(t_frame1(&f, buf, 5, max, &ll, &used), PROTO_FRAME_SKIPPED);
	ck_assert_uint_eq(used, 5);
	ck_assert_uint_eq(ll, 0);
	ck_assert_int_eq(f.discarding, 1);
	memcpy(buf, "yy\r\nok\n", 7);
	ck_assert_int_eq(t_frame1(&f, buf, 7, max, &ll, &used), PROTO_FRAME_SKIPPED);
	ck_assert_uint_eq(used, 4);
	ck_assert_int_eq(f.discarding, 0);
	/* ... then normal lines again. */
	ck_assert_int_eq(t_frame1(&f, buf + 4, 3, max, &ll, &used), PROTO_FRAME_LINE);
	ck_assert_uint_eq(ll, 2);
	ck_assert_uint_eq(used, 3);
	ck_assert_int_eq(memcmp(buf + 4, "ok", 2), 0);

	/* A skipped run ending exactly at a \n at offset 0. */
	f.discarding = 1;
	ck_assert_int_eq(t_frame1(&f, "\nok\n", 4, max, &ll, &used), PROTO_FRAME_SKIPPED);
	ck_assert_uint_eq(used, 1);
	ck_assert_int_eq(f.discarding, 0);
}
END_TEST

/* A stream of varied requests: the same lines come out however it is cut. */
static char *
t_sample_stream(size_t *lenp)
{
	static const char *const reqs[] = {
		"{\"op\":\"hello\",\"name\":\"risk-engine-1\"}\n",
		"{\"op\":\"ping\",\"rid\":1}\r\n",
		"\n",
		"\r\n",
		"{\"op\":\"pub\",\"stream\":\"market_data\",\"data\":{\"px\":101.25,\"qty\":7}}\n",
		"{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"prefetch\":64}\n",
		"not json at all\n",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"1-0\",\"1-1\"]}\r\n",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":\"\\u00e9\xc3\xa9\"}\n",
	};
	size_t len = 0, cap = 1 << 16;
	char *s = malloc(cap);

	ck_assert_ptr_nonnull(s);
	for (int rep = 0; rep < 40; rep++)
		for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
			size_t n = strlen(reqs[i]);
			ck_assert_uint_lt(len + n, cap);
			memcpy(s + len, reqs[i], n);
			len += n;
		}
	*lenp = len;
	return s;
}

START_TEST(test_frame_split_stream)
{
	size_t len;
	char *text = t_sample_stream(&len);
	char *whole, *bytewise, *chunked;
	int too_long;

	t_srand(20241125);
	whole = t_feed_all(text, len, 1024, 0, &too_long, NULL);
	ck_assert_int_eq(too_long, 0);
	/* Spot-check the reference itself. */
	{
		static const char head[] = "L37:{\"op\":\"hello\",\"name\":\"risk-engine-1\"}\n"
		    "L21:{\"op\":\"ping\",\"rid\":1}\nL0:\nL0:\n";
		ck_assert_msg(strncmp(whole, head, sizeof(head) - 1) == 0, "log: %.200s", whole);
	}
	bytewise = t_feed_all(text, len, 1024, 1, &too_long, NULL);
	ck_assert_str_eq(bytewise, whole);
	for (size_t maxchunk = 2; maxchunk <= 4096; maxchunk *= 3) {
		for (int round = 0; round < 5; round++) {
			chunked = t_feed_all(text, len, 1024, maxchunk, &too_long, NULL);
			ck_assert_msg(strcmp(chunked, whole) == 0,
			    "chunk size up to %zu (round %d) framed differently", maxchunk, round);
			ck_assert_int_eq(too_long, 0);
			free(chunked);
		}
	}
	/* 40 repetitions of 9 lines, two of them empty. */
	{
		int n = 0;
		for (const char *p = whole; (p = strstr(p, "\nL")) != NULL; p++)
			n++;
		ck_assert_int_eq(n + 1, 40 * 9);
	}
	free(whole);
	free(bytewise);
	free(text);
}
END_TEST

START_TEST(test_frame_too_long_chunks)
{
	const size_t max = 64;
	size_t len = 0;
	char *text = malloc(20000);
	char *ref, *got;
	int too_long;
	size_t kept;

	ck_assert_ptr_nonnull(text);
	len += sprintf(text + len, "{\"op\":\"ping\",\"rid\":\"before\"}\n");
	memset(text + len, 'z', 10000);	/* one over-long line ... */
	len += 10000;
	len += sprintf(text + len, "\r\n{\"op\":\"ping\",\"rid\":\"after\"}\n");
	memset(text + len, 'q', 65);		/* ... a line of max_line + 1 ... */
	len += 65;
	len += sprintf(text + len, "\n");
	memset(text + len, 'w', 64);		/* ... and one of exactly max_line */
	len += 64;
	len += sprintf(text + len, "\r\n\n");

	t_srand(7);
	ref = t_feed_all(text, len, max, 0, &too_long, &kept);
	ck_assert_str_eq(ref,
	    "L28:{\"op\":\"ping\",\"rid\":\"before\"}\n"
	    "T\n"
	    "L27:{\"op\":\"ping\",\"rid\":\"after\"}\n"
	    "T\n"
	    "L64:wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww\n"
	    "L0:\n");
	ck_assert_int_eq(too_long, 2);
	free(ref);

	/* In small chunks: still exactly one too-long per over-long line, the
	 * rest of it skipped, never more than max_line + 1 bytes kept. */
	for (size_t maxchunk = 1; maxchunk <= 200; maxchunk = maxchunk * 2 + 1) {
		char *p, *q;
		got = t_feed_all(text, len, max, maxchunk, &too_long, &kept);
		ck_assert_int_eq(too_long, 2);
		ck_assert_uint_le(kept, max + 1);
		/* Drop the S entries: they depend on the chunking. */
		for (p = q = got; *p != '\0';) {
			if (*p == 'S') {
				p = strchr(p, '\n') + 1;
				continue;
			}
			while ((*q++ = *p++) != '\n')
				;
		}
		*q = '\0';
		ck_assert_str_eq(got,
		    "L28:{\"op\":\"ping\",\"rid\":\"before\"}\n"
		    "T\n"
		    "L27:{\"op\":\"ping\",\"rid\":\"after\"}\n"
		    "T\n"
		    "L64:wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww\n"
		    "L0:\n");
		free(got);
	}
	free(text);
}
END_TEST

/* A single chunk that holds an over-long line and the next good line. */
START_TEST(test_frame_too_long_then_line_same_chunk)
{
	struct t_feeder fd;
	char buf[200];
	size_t n;

	memset(buf, 'a', 100);
	n = 100 + (size_t)sprintf(buf + 100, "\nok\npartial");
	t_feeder_init(&fd, 10);
	t_feed(&fd, buf, n);
	ck_assert_str_eq(fd.log, "T\nL2:ok\n");
	ck_assert_uint_eq(fd.keeplen, 7);
	t_feed(&fd, "\n", 1);
	ck_assert_str_eq(fd.log, "T\nL2:ok\nL7:partial\n");
	t_feeder_free(&fd);
}
END_TEST

/* ------------------------------------------------------------ hostile input */

START_TEST(test_parse_not_json)
{
	static const char *const bad[] = {
		"", " ", "{", "}", "{\"op\":\"ping\"", "{\"op\":\"ping\",}", "{op:\"ping\"}",
		"{'op':'ping'}", "{\"op\":\"ping\"}}", "{\"op\":\"ping\"} x", "nul",
		"{\"op\":\"ping\",\"x\":tru}", "{\"op\":\"ping\",\"x\":01}",
		"{\"op\":\"ping\",\"x\":\"\\x\"}", "{\"op\":\"ping\",\"x\":\"\\ud800\"}",
		"{\"op\":\"ping\",\"x\":\"tab\there\"}",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_parse_err_prefix(bad[i], strlen(bad[i]), "bad_json", "invalid JSON at column ");

	/* Valid JSON, not an object. */
	ck_parse_err("[]", "bad_json", "a request must be a JSON object");
	ck_parse_err("[{\"op\":\"ping\"}]", "bad_json", "a request must be a JSON object");
	/* Scalars: jansson itself wants '[' or '{' (no JSON_DECODE_ANY). */
	ck_parse_err_prefix("\"ping\"", 6, "bad_json", "invalid JSON at column ");
	ck_parse_err_prefix("42", 2, "bad_json", "invalid JSON at column ");
	ck_parse_err_prefix("null", 4, "bad_json", "invalid JSON at column ");
	ck_parse_err_prefix("true", 4, "bad_json", "invalid JSON at column ");
}
END_TEST

START_TEST(test_parse_hostile)
{
	/* Raw NUL bytes: after the object, inside a string, inside a key. */
	static const char nul1[] = "{\"op\":\"ping\"}\0";
	static const char nul2[] = "{\"op\":\"pi\0ng\"}";
	static const char nul3[] = "{\"o\0p\":\"ping\"}";
	static const char nul4[] = "\0{\"op\":\"ping\"}";
	/* Invalid UTF-8: lone continuation, truncated sequence, overlong,
	 * surrogate, above U+10FFFF, 0xff. */
	static const char *const utf8[] = {
		"{\"op\":\"ping\",\"x\":\"\x80\"}",
		"{\"op\":\"ping\",\"x\":\"\xe2\x82\"}",
		"{\"op\":\"ping\",\"x\":\"\xc0\xaf\"}",
		"{\"op\":\"ping\",\"x\":\"\xed\xa0\x80\"}",
		"{\"op\":\"ping\",\"x\":\"\xf4\x90\x80\x80\"}",
		"{\"op\":\"ping\",\"x\":\"\xff\"}",
		"{\"op\":\"ping\",\"\xfe\":1}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":\"\xc3\x28\"}",
	};
	/* Numbers out of range. */
	static const char *const nums[] = {
		"{\"op\":\"ping\",\"x\":1e999}",
		"{\"op\":\"ping\",\"x\":-1e999}",
		"{\"op\":\"ping\",\"x\":123456789012345678901234567890}",
		"{\"op\":\"unsub\",\"sub\":9223372036854775808}",
		"{\"op\":\"unsub\",\"sub\":-9223372036854775809}",
	};
	/* Duplicate keys, at the top and nested. */
	static const char *const dups[] = {
		"{\"op\":\"ping\",\"op\":\"ping\"}",
		"{\"op\":\"ping\",\"rid\":1,\"rid\":2}",
	};
	/* data is checked for JSON validity and passed through as written: a
	 * number beyond 64 bits or a repeated name inside it is the
	 * publisher's JSON, kept byte for byte. */
	static const char *const passed[][2] = {
		{ "{\"op\":\"pub\",\"stream\":\"s\",\"data\":99999999999999999999}",
		  "99999999999999999999" },
		{ "{\"op\":\"pub\",\"stream\":\"s\",\"data\":{\"a\":1,\"a\":2}}",
		  "{\"a\":1,\"a\":2}" },
	};
	struct proto_request pr;
	size_t depth = 10000;
	char *deep;

	ck_parse_err_prefix(nul1, sizeof(nul1) - 1, "bad_json", "invalid JSON at column ");
	ck_parse_err_prefix(nul2, sizeof(nul2) - 1, "bad_json", "invalid JSON at column ");
	ck_parse_err_prefix(nul3, sizeof(nul3) - 1, "bad_json", "invalid JSON at column ");
	ck_parse_err_prefix(nul4, sizeof(nul4) - 1, "bad_json", "invalid JSON at column ");
	for (size_t i = 0; i < sizeof(utf8) / sizeof(utf8[0]); i++)
		ck_parse_err_prefix(utf8[i], strlen(utf8[i]), "bad_json", "invalid JSON at column ");
	for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++)
		ck_parse_err_prefix(nums[i], strlen(nums[i]), "bad_json", "invalid JSON at column ");
	for (size_t i = 0; i < sizeof(dups) / sizeof(dups[0]); i++)
		ck_parse_err_prefix(dups[i], strlen(dups[i]), "bad_json", "invalid JSON at column ");
	for (size_t i = 0; i < sizeof(passed) / sizeof(passed[0]); i++) {
		ck_parse_ok(passed[i][0], &pr);
		ck_data_eq(pr.msgs[0], passed[i][1]);
		proto_request_free(&pr);
	}

	/* 10,000-deep nesting, unterminated, balanced, and inside data. */
	deep = t_rep('[', depth);
	ck_parse_err_prefix(deep, depth, "bad_json", "invalid JSON at column ");
	free(deep);
	deep = malloc(2 * depth + 1);
	ck_assert_ptr_nonnull(deep);
	memset(deep, '[', depth);
	memset(deep + depth, ']', depth);
	deep[2 * depth] = '\0';
	ck_parse_err_prefix(deep, 2 * depth, "bad_json", "invalid JSON at column ");
	free(deep);
	{
		char *inner = t_rep('{', depth);
		char *line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":%s", inner);
		ck_parse_err_prefix(line, strlen(line), "bad_json", "invalid JSON at column ");
		free(line);
		free(inner);
	}
	{
		char *open = t_rep('[', depth), *close = t_rep(']', depth);
		char *line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":%s%s}", open, close);
		ck_parse_err_prefix(line, strlen(line), "bad_json", "invalid JSON at column ");
		free(line);
		free(open);
		free(close);
	}
	/* Random bytes: never a crash, always a definite answer. */
	t_srand(99);
	for (int i = 0; i < 2000; i++) {
		char buf[64];
		size_t n = 1 + t_rand() % sizeof(buf);
		struct proto_request r;
		struct proto_error e;
		for (size_t j = 0; j < n; j++)
			buf[j] = (char)(t_rand() & 0xff);
		if (i % 2)
			buf[0] = '{';
		if (proto_parse_request(buf, n, &t_lim, &r, &e) != 0)
			ck_assert_msg(strcmp(e.code, "bad_json") == 0 ||
			    strcmp(e.code, "bad_request") == 0 || strcmp(e.code, "unknown_op") == 0,
			    "code %s", e.code);
		proto_request_free(&r);
	}
}
END_TEST

/* ------------------------------------------------------------ envelope */

START_TEST(test_parse_rid_and_op)
{
	struct proto_request r;
	struct proto_error e;

	/* rid as string, as integer, absent. */
	ck_parse_ok("{\"op\":\"ping\",\"rid\":\"abc\\\"d\"}", &r);
	ck_assert_int_eq(r.op, OP_PING);
	ck_assert_ptr_nonnull(r.rid);
	ck_assert_str_eq(json_string_value(r.rid), "abc\"d");
	proto_request_free(&r);
	ck_parse_ok("{\"rid\":-9007199254740993,\"op\":\"ping\"}", &r);
	ck_assert(json_is_integer(r.rid));
	ck_assert(json_integer_value(r.rid) == -9007199254740993LL);
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"ping\"}", &r);
	ck_assert_ptr_null(r.rid);
	proto_request_free(&r);

	/* rid of the wrong type: bad_request, nothing to echo. */
	static const char *const badrid[] = {
		"{\"op\":\"ping\",\"rid\":1.5}", "{\"op\":\"ping\",\"rid\":null}",
		"{\"op\":\"ping\",\"rid\":true}", "{\"op\":\"ping\",\"rid\":[1]}",
		"{\"op\":\"ping\",\"rid\":{\"a\":1}}", "{\"rid\":1e3}",
	};
	for (size_t i = 0; i < sizeof(badrid) / sizeof(badrid[0]); i++) {
		ck_assert_int_eq(t_parse(badrid[i], &r, &e), -1);
		ck_assert_str_eq(e.code, "bad_request");
		ck_assert_str_eq(e.message, "rid: must be a string or an integer");
		ck_assert_ptr_null(e.rid);
		proto_request_free(&r);
	}

	/* Errors after the rid was read echo it (borrowed from req.root). */
	ck_assert_int_eq(t_parse("{\"rid\":\"r1\"}", &r, &e), -1);
	ck_assert_str_eq(e.code, "bad_request");
	ck_assert_str_eq(e.message, "op: required");
	ck_assert_ptr_nonnull(e.rid);
	ck_assert_str_eq(json_string_value(e.rid), "r1");
	proto_request_free(&r);
	ck_assert_int_eq(t_parse("{\"rid\":77,\"op\":\"publish\"}", &r, &e), -1);
	ck_assert_str_eq(e.code, "unknown_op");
	ck_assert_str_eq(e.message, "unknown op \"publish\"");
	ck_assert_int_eq(json_integer_value(e.rid), 77);
	proto_request_free(&r);
	ck_assert_int_eq(t_parse("{\"rid\":5,\"op\":\"unsub\"}", &r, &e), -1);
	ck_assert_str_eq(e.code, "bad_request");
	ck_assert_int_eq(json_integer_value(e.rid), 5);
	proto_request_free(&r);

	ck_parse_err("{\"op\":5}", "bad_request", "op: must be a string");
	ck_parse_err("{\"op\":null}", "bad_request", "op: must be a string");
	ck_parse_err("{\"op\":[\"ping\"]}", "bad_request", "op: must be a string");
	ck_parse_err("{}", "bad_request", "op: required");
	ck_parse_err("{\"op\":\"PING\"}", "unknown_op", "unknown op \"PING\"");
	ck_parse_err("{\"op\":\"\"}", "unknown_op", "unknown op \"\"");
	ck_parse_err("{\"op\":\"msg\"}", "unknown_op", "unknown op \"msg\"");
	{
		/* The echoed op name is cut at 64 characters. */
		char *longop = t_rep('o', 300);
		char *line = t_fmt("{\"op\":\"%s\"}", longop);
		char *msg = t_fmt("unknown op \"%.64s\"", longop);
		ck_parse_err(line, "unknown_op", msg);
		free(msg);
		free(line);
		free(longop);
	}
}
END_TEST

START_TEST(test_op_names)
{
	static const char *const names[OP__COUNT] = {
		"hello", "ping", "pub", "sub", "ack", "nack", "touch", "unsub", "stats", "bye",
		"dlq", "replay", "range",
	};
	struct proto_request r;

	for (int op = 0; op < OP__COUNT; op++) {
		ck_assert_str_eq(proto_op_name((enum proto_op)op), names[op]);
	}
	ck_assert_str_eq(proto_op_name(OP__COUNT), "?");
	/* Every op name parses back to its op (bye is accepted as a request). */
	ck_parse_ok("{\"op\":\"hello\"}", &r); ck_assert_int_eq(r.op, OP_HELLO); proto_request_free(&r);
	ck_parse_ok("{\"op\":\"ping\"}", &r); ck_assert_int_eq(r.op, OP_PING); proto_request_free(&r);
	ck_parse_ok("{\"op\":\"stats\"}", &r); ck_assert_int_eq(r.op, OP_STATS); proto_request_free(&r);
	ck_parse_ok("{\"op\":\"bye\"}", &r); ck_assert_int_eq(r.op, OP_BYE); proto_request_free(&r);
	ck_parse_ok("{\"op\":\"unsub\",\"sub\":1}", &r); ck_assert_int_eq(r.op, OP_UNSUB); proto_request_free(&r);
}
END_TEST

/* ------------------------------------------------------------ ops */

START_TEST(test_parse_hello)
{
	struct proto_request r;
	char *s, *line, *msg;

	ck_parse_ok("{\"op\":\"hello\",\"name\":\"risk-engine-1\",\"token\":\"s3cr3t\"}", &r);
	ck_assert_int_eq(r.op, OP_HELLO);
	ck_assert_str_eq(r.name, "risk-engine-1");
	ck_assert_str_eq(r.token, "s3cr3t");
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"hello\",\"name\":null}", &r);
	ck_assert_ptr_null(r.name);
	ck_assert_ptr_null(r.token);
	proto_request_free(&r);

	ck_parse_err("{\"op\":\"hello\",\"name\":1}", "bad_request", "name: must be a string");
	ck_parse_err("{\"op\":\"hello\",\"token\":{}}", "bad_request", "token: must be a string");
	ck_parse_err("{\"op\":\"hello\",\"name\":\"a\\u0000b\"}", "bad_request",
	    "name: contains a NUL character");

	s = t_rep('n', PROTO_MAX_NAME);
	line = t_fmt("{\"op\":\"hello\",\"name\":\"%s\"}", s);
	ck_parse_ok(line, &r);
	ck_assert_uint_eq(strlen(r.name), PROTO_MAX_NAME);
	proto_request_free(&r);
	free(line);
	free(s);
	s = t_rep('n', PROTO_MAX_NAME + 1);
	line = t_fmt("{\"op\":\"hello\",\"name\":\"%s\"}", s);
	msg = t_fmt("name: longer than %d bytes", PROTO_MAX_NAME);
	ck_parse_err(line, "bad_request", msg);
	free(msg);
	free(line);
	free(s);
	s = t_rep('t', 4097);
	line = t_fmt("{\"op\":\"hello\",\"token\":\"%s\"}", s);
	ck_parse_err(line, "bad_request", "token: longer than 4096 bytes");
	free(line);
	free(s);
}
END_TEST

START_TEST(test_parse_stats)
{
	struct proto_request r;
	char *s, *line;

	ck_parse_ok("{\"op\":\"stats\"}", &r);
	ck_assert_ptr_null(r.stream);
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"stats\",\"stream\":\"market_data\"}", &r);
	ck_assert_str_eq(r.stream, "market_data");
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"stats\",\"stream\":\"A-z_0.9:x\"}", &r);
	ck_assert_str_eq(r.stream, "A-z_0.9:x");
	proto_request_free(&r);

	ck_parse_err("{\"op\":\"stats\",\"stream\":7}", "bad_request", "stream: must be a string");
	ck_parse_err("{\"op\":\"stats\",\"stream\":\"\"}", "bad_request",
	    "stream: must be 1..200 characters of A-Za-z0-9_.:-");
	ck_parse_err("{\"op\":\"stats\",\"stream\":\"a b\"}", "bad_request",
	    "stream: must be 1..200 characters of A-Za-z0-9_.:-");
	ck_parse_err("{\"op\":\"stats\",\"stream\":\"a/b\"}", "bad_request",
	    "stream: must be 1..200 characters of A-Za-z0-9_.:-");
	ck_parse_err("{\"op\":\"stats\",\"stream\":\"\\u00e9\"}", "bad_request",
	    "stream: must be 1..200 characters of A-Za-z0-9_.:-");
	ck_parse_err("{\"op\":\"stats\",\"stream\":\"a\\u0000b\"}", "bad_request",
	    "stream: contains a NUL character");
	s = t_rep('s', 200);
	line = t_fmt("{\"op\":\"stats\",\"stream\":\"%s\"}", s);
	ck_parse_ok(line, &r);
	proto_request_free(&r);
	free(line);
	free(s);
	s = t_rep('s', 201);
	line = t_fmt("{\"op\":\"stats\",\"stream\":\"%s\"}", s);
	ck_parse_err(line, "bad_request", "stream: longer than 200 bytes");
	free(line);
	free(s);
}
END_TEST

START_TEST(test_parse_pub_single)
{
	struct proto_request r;
	char *s, *line;

	ck_parse_ok("{\"op\":\"pub\",\"rid\":\"p1\",\"stream\":\"market_data\","
	    "\"data\": { \"px\" : 101 , \"tags\" : [ true , null , \"x\" ] },"
	    "\"type\":\"MARKET_DATA\",\"msgid\":\"m-1\"}", &r);
	ck_assert_int_eq(r.op, OP_PUB);
	ck_assert_str_eq(r.stream, "market_data");
	ck_assert_int_eq(r.batch, 0);
	ck_assert_uint_eq(r.nmsgs, 1);
	/* data is kept as the client wrote it, spaces and all */
	ck_data_eq(r.msgs[0], "{ \"px\" : 101 , \"tags\" : [ true , null , \"x\" ] }");
	ck_assert_str_eq(r.msgs[0].type, "MARKET_DATA");
	ck_assert_str_eq(r.msgs[0].msgid, "m-1");
	ck_assert_str_eq(json_string_value(r.rid), "p1");
	proto_request_free(&r);

	/* data may be any JSON value, null included; type/msgid optional. */
	ck_parse_ok("{\"op\":\"pub\",\"stream\":\"s\",\"data\":null}", &r);
	ck_data_eq(r.msgs[0], "null");
	ck_assert_ptr_null(r.msgs[0].type);
	ck_assert_ptr_null(r.msgs[0].msgid);
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"pub\",\"stream\":\"s\",\"data\":\"a\\u0000\\n\\u00e9\"}", &r);
	ck_data_eq(r.msgs[0], "\"a\\u0000\\n\\u00e9\"");
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"pub\",\"stream\":\"s\",\"data\":-42,\"type\":\"\"}", &r);
	ck_data_eq(r.msgs[0], "-42");
	ck_assert_str_eq(r.msgs[0].type, "");
	proto_request_free(&r);

	ck_parse_err("{\"op\":\"pub\",\"data\":1}", "bad_request", "stream: required");
	ck_parse_err("{\"op\":\"pub\",\"stream\":null,\"data\":1}", "bad_request", "stream: required");
	ck_parse_err("{\"op\":\"pub\",\"stream\":[],\"data\":1}", "bad_request",
	    "stream: must be a string");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"no spaces\",\"data\":1}", "bad_request",
	    "stream: must be 1..200 characters of A-Za-z0-9_.:-");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\"}", "bad_request", "data: required");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"type\":2}", "bad_request",
	    "type: must be a string");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"msgid\":true}", "bad_request",
	    "msgid: must be a string");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"msgid\":\"\"}", "bad_request",
	    "msgid: must not be empty");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"msgid\":\"a\\u0000\"}",
	    "bad_request", "msgid: contains a NUL character");
	s = t_rep('m', 201);
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"msgid\":\"%s\"}", s);
	ck_parse_err(line, "bad_request", "msgid: longer than 200 bytes");
	free(line);
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"type\":\"%s\"}", s);
	ck_parse_err(line, "bad_request", "type: longer than 200 bytes");
	free(line);
	free(s);
}
END_TEST

/* The fast parser takes line exactly when want_fast, and then gives what
 * the general one gives. */
static void
t_fast_vs_general(const char *line, int want_fast)
{
	struct proto_request f, g;
	struct proto_error e;
	char why[64];
	int took, rc;

	memset(&f, 0, sizeof(f));
	took = proto_parse_fast(line, strlen(line), &t_lim, &f);
	ck_assert_msg(took == want_fast, "fast parser %s %s", took ? "took" : "left", line);
	rc = proto_parse_general(line, strlen(line), &t_lim, &g, &e);
	if (took) {
		ck_assert_msg(rc == 0, "general parser rejects %s: %s", line, e.message);
		ck_assert_msg(proto_same_request(&f, &g, why, sizeof(why)), "%s: %s", line, why);
	}
	proto_request_free(&f);
	proto_request_free(&g);
}

START_TEST(test_parse_pub_fast)
{
	static const char *const taken[] = {
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1}",
		" {\"data\" : {\"a\":[1,2,{\"b\":\"\\u00e9\\n\"}]} , \"stream\":\"md.x:y-z_0\","
		    "\"op\":\"pub\"}\r",
		"{\"op\":\"pub\",\"rid\":7,\"stream\":\"s\",\"data\":\"x\",\"type\":\"T\","
		    "\"msgid\":\"m-1\"}",
		"{\"op\":\"pub\",\"rid\":-0,\"stream\":\"s\",\"data\":null}",
		"{\"op\":\"pub\",\"rid\":999999999999999999,\"stream\":\"s\",\"data\":true}",
		"{\"op\":\"pub\",\"rid\":\"r 1\",\"stream\":\"s\",\"data\":-1.5e3,\"type\":\"\"}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":\"\\\"\\\\\"}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":[]\t}",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"1-0\"]}",
		"{\"op\":\"ack\",\"rid\":\"a\",\"sub\":999999999999999999,"
		    "\"ids\":[ \"1732550000000-0\" , \"1732550000000-12\" ]}",
		"{\"ids\":[\"0-1\",\"18446744073709551615-18446744073709551615\"],"
		    "\"op\":\"ack\",\"sub\":3}",
		"{\"op\":\"ack\",\"sub\":2,\"id\":\"5-5\",\"rid\":-4}",
	};
	static const char *const left[] = {
		/* not a pub, or not a single one */
		"{\"op\":\"ping\"}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"data\":1}]}",
		/* other members, duplicates, escapes, non-ASCII */
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"extra\":1}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"data\":2}",
		"{\"op\":\"pub\",\"op\":\"pub\",\"stream\":\"s\",\"data\":1}",
		"{\"op\":\"p\\u0075b\",\"stream\":\"s\",\"data\":1}",
		"{\"op\":\"pub\",\"st\\u0072eam\":\"s\",\"data\":1}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"type\":\"\xc3\xa9\"}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"msgid\":\"a\\\"b\"}",
		/* rid: not a string or an integer of 18 digits at most */
		"{\"op\":\"pub\",\"rid\":1.0,\"stream\":\"s\",\"data\":1}",
		"{\"op\":\"pub\",\"rid\":1e2,\"stream\":\"s\",\"data\":1}",
		"{\"op\":\"pub\",\"rid\":01,\"stream\":\"s\",\"data\":1}",
		"{\"op\":\"pub\",\"rid\":-,\"stream\":\"s\",\"data\":1}",
		"{\"op\":\"pub\",\"rid\":1000000000000000000,\"stream\":\"s\",\"data\":1}",
		"{\"op\":\"pub\",\"rid\":null,\"stream\":\"s\",\"data\":1}",
		/* invalid or missing fields: the general parser names them */
		"{\"op\":\"pub\",\"stream\":\"no space\",\"data\":1}",
		"{\"op\":\"pub\",\"data\":1}",
		"{\"op\":\"pub\",\"stream\":\"s\"}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"msgid\":\"\"}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"type\":null}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":[1,}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":tru}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1 2}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1}}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1} x",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,}",
		"{\"op\":\"pub\",\"stream\":\"s\",\"data\":\"abc}",
		"{}",
		"",
		"[\"op\",\"pub\"]",
		/* acks the general parser must read or refuse */
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[]}",
		"{\"op\":\"ack\",\"sub\":0,\"ids\":[\"1-0\"]}",
		"{\"op\":\"ack\",\"sub\":-1,\"id\":\"1-0\"}",
		"{\"op\":\"ack\",\"sub\":\"1\",\"id\":\"1-0\"}",
		"{\"op\":\"ack\",\"ids\":[\"1-0\"]}",
		"{\"op\":\"ack\",\"sub\":1}",
		"{\"op\":\"ack\",\"sub\":1,\"id\":\"1-0\",\"ids\":[\"1-0\"]}",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"1-0\",2]}",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"1-0\",]}",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"1-0\" \"2-0\"]}",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"1-0\"}",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"1-x\"]}",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"18446744073709551616-0\"]}",
		"{\"op\":\"ack\",\"sub\":1,\"id\":\"-1-0\"}",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"1-0\"],\"stream\":\"s\"}",
		"{\"op\":\"ack\",\"sub\":1,\"ids\":[\"1-0\"],\"reason\":\"x\"}",
		"{\"op\":\"pub\",\"sub\":1,\"stream\":\"s\",\"data\":1}",
		"{\"op\":\"nack\",\"sub\":1,\"ids\":[\"1-0\"]}",
		"{\"op\":\"ack\",\"sub\":1,\"data\":",
	};
	char *big = t_rep('x', 63), *line;

	for (size_t i = 0; i < sizeof(taken) / sizeof(taken[0]); i++)
		t_fast_vs_general(taken[i], 1);
	for (size_t i = 0; i < sizeof(left) / sizeof(left[0]); i++)
		t_fast_vs_general(left[i], 0);
	/* The limits: data of max_payload bytes, names of 200. */
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":\"%.62s\"}", big);
	t_fast_vs_general(line, 1);
	free(line);
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":\"%s\"}", big);
	t_fast_vs_general(line, 0);
	free(line);
	free(big);
	big = t_rep('n', 200);
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"%s\",\"data\":1,\"type\":\"%s\",\"msgid\":\"%s\"}",
	    big, big, big);
	t_fast_vs_general(line, 1);
	free(line);
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"type\":\"%sn\"}", big);
	t_fast_vs_general(line, 0);
	free(line);
	free(big);
	/* PROTO_MAX_IDS ids in an ack, and one more. */
	for (size_t n = PROTO_MAX_IDS; n <= PROTO_MAX_IDS + 1; n++) {
		size_t cap = 64 + n * 8, at;
		line = malloc(cap);
		ck_assert_ptr_nonnull(line);
		at = (size_t)snprintf(line, cap, "{\"op\":\"ack\",\"sub\":1,\"ids\":[");
		for (size_t i = 0; i < n; i++)
			at += (size_t)snprintf(line + at, cap - at, "%s\"%zu-0\"", i ? "," : "", i % 10);
		snprintf(line + at, cap - at, "]}");
		t_fast_vs_general(line, n == PROTO_MAX_IDS);
		free(line);
	}
}
END_TEST

START_TEST(test_parse_pub_too_large)
{
	struct proto_request r;
	char *s, *line;

	/* max_payload 64: a string of 62 characters serializes to 64 bytes. */
	s = t_rep('d', 62);
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":\"%s\"}", s);
	ck_parse_ok(line, &r);
	ck_assert_uint_eq(r.msgs[0].data_len, 64);
	proto_request_free(&r);
	free(line);
	free(s);
	s = t_rep('d', 63);
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":\"%s\"}", s);
	ck_parse_err(line, "too_large", "data: 65 bytes, more than max_payload 64");
	free(line);
	/* data is stored as sent, so its size on the line counts. */
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"data\":[1,          2,          3,"
	    "          4,          5,          6,          7,          8]}");
	ck_parse_err(line, "too_large", "data: 87 bytes, more than max_payload 64");
	free(line);
	/* In a batch the message names the entry. */
	line = t_fmt("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"data\":1},{\"data\":\"%s\"}]}", s);
	ck_parse_err(line, "too_large", "batch[1].data: 65 bytes, more than max_payload 64");
	free(line);
	free(s);
}
END_TEST

START_TEST(test_parse_pub_batch)
{
	struct proto_request r;

	ck_parse_ok("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"data\":{\"a\":1},\"type\":\"T\"},"
	    "{\"data\":[2],\"msgid\":\"x\"},{\"data\":\"3\"}]}", &r);
	ck_assert_int_eq(r.batch, 1);
	ck_assert_uint_eq(r.nmsgs, 3);
	ck_data_eq(r.msgs[0], "{\"a\":1}");
	ck_assert_str_eq(r.msgs[0].type, "T");
	ck_assert_ptr_null(r.msgs[0].msgid);
	ck_data_eq(r.msgs[1], "[2]");
	ck_assert_ptr_null(r.msgs[1].type);
	ck_assert_str_eq(r.msgs[1].msgid, "x");
	ck_data_eq(r.msgs[2], "\"3\"");
	proto_request_free(&r);

	/* Up to max_batch (4) entries. */
	ck_parse_ok("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"data\":1},{\"data\":2},"
	    "{\"data\":3},{\"data\":4}]}", &r);
	ck_assert_uint_eq(r.nmsgs, 4);
	ck_data_eq(r.msgs[3], "4");
	proto_request_free(&r);
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"data\":1},{\"data\":2},"
	    "{\"data\":3},{\"data\":4},{\"data\":5}]}", "bad_request", "batch: more than 4 entries");

	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[]}", "bad_request",
	    "batch: must be a non-empty array");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":{\"data\":1}}", "bad_request",
	    "batch: must be a non-empty array");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":null}", "bad_request",
	    "batch: must be a non-empty array");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"data\":1,\"batch\":[{\"data\":1}]}",
	    "bad_request", "batch: not allowed together with data");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"data\":1},2]}", "bad_request",
	    "batch[1]: must be an object");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"type\":\"t\"}]}", "bad_request",
	    "batch[0].data: required");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"data\":1},{\"data\":1,\"msgid\":\"\"}]}",
	    "bad_request", "batch[1].msgid: must not be empty");
	ck_parse_err("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"data\":1,\"type\":5}]}",
	    "bad_request", "type: must be a string");
	ck_parse_err("{\"op\":\"pub\",\"batch\":[{\"data\":1}]}", "bad_request", "stream: required");
}
END_TEST

START_TEST(test_parse_sub)
{
	struct proto_request r;

	ck_parse_ok("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"consumer\":\"c1\","
	    "\"prefetch\":64,\"from\":\"new\"}", &r);
	ck_assert_int_eq(r.op, OP_SUB);
	ck_assert_str_eq(r.stream, "s");
	ck_assert_str_eq(r.group, "g");
	ck_assert_str_eq(r.consumer, "c1");
	ck_assert_int_eq(r.prefetch, 64);
	ck_assert_str_eq(r.from, "new");
	proto_request_free(&r);
	/* Defaults: no consumer, prefetch 0 (= stream default), from NULL. */
	ck_parse_ok("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\"}", &r);
	ck_assert_ptr_null(r.consumer);
	ck_assert_int_eq(r.prefetch, 0);
	ck_assert_ptr_null(r.from);
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"from\":\"all\",\"prefetch\":1}", &r);
	ck_assert_str_eq(r.from, "all");
	ck_assert_int_eq(r.prefetch, 1);
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"from\":\"1732550000000-3\","
	    "\"prefetch\":10000}", &r);
	ck_assert_str_eq(r.from, "1732550000000-3");
	ck_assert_int_eq(r.prefetch, 10000);
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"from\":\"0-0\"}", &r);
	proto_request_free(&r);

	ck_parse_err("{\"op\":\"sub\",\"group\":\"g\"}", "bad_request", "stream: required");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\"}", "bad_request", "group: required");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":3}", "bad_request",
	    "group: must be a string");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g g\"}", "bad_request",
	    "group: must be 1..200 characters of A-Za-z0-9_.:-");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"consumer\":\"c*\"}",
	    "bad_request", "consumer: must be 1..200 characters of A-Za-z0-9_.:-");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"consumer\":1}",
	    "bad_request", "consumer: must be a string");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"prefetch\":0}",
	    "bad_request", "prefetch: must be in 1..10000");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"prefetch\":10001}",
	    "bad_request", "prefetch: must be in 1..10000");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"prefetch\":-5}",
	    "bad_request", "prefetch: must be in 1..10000");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"prefetch\":\"64\"}",
	    "bad_request", "prefetch: must be an integer");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"prefetch\":64.0}",
	    "bad_request", "prefetch: must be an integer");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"from\":\"latest\"}",
	    "bad_request", "from: must be \"new\", \"all\" or a stream id");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"from\":\"$\"}",
	    "bad_request", "from: must be \"new\", \"all\" or a stream id");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"from\":\"12\"}",
	    "bad_request", "from: must be \"new\", \"all\" or a stream id");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"from\":\"NEW\"}",
	    "bad_request", "from: must be \"new\", \"all\" or a stream id");
	ck_parse_err("{\"op\":\"sub\",\"stream\":\"s\",\"group\":\"g\",\"from\":0}",
	    "bad_request", "from: must be a string");
}
END_TEST

START_TEST(test_parse_ids)
{
	static const char *const ops[] = { "ack", "nack", "touch" };
	static const enum proto_op opv[] = { OP_ACK, OP_NACK, OP_TOUCH };
	struct proto_request r;
	char *line;

	for (size_t i = 0; i < 3; i++) {
		const char *op = ops[i];

		line = t_fmt("{\"op\":\"%s\",\"sub\":1,\"ids\":[\"1-0\",\"1732550000000-12\"]}", op);
		ck_parse_ok(line, &r);
		ck_assert_int_eq(r.op, opv[i]);
		ck_assert_int_eq(r.sub, 1);
		ck_assert_uint_eq(r.nids, 2);
		ck_assert_str_eq(r.ids[0], "1-0");
		ck_assert_str_eq(r.ids[1], "1732550000000-12");
		proto_request_free(&r);
		free(line);
		line = t_fmt("{\"op\":\"%s\",\"sub\":9223372036854775807,\"id\":\"5-3\"}", op);
		ck_parse_ok(line, &r);
		ck_assert(r.sub == 9223372036854775807L);
		ck_assert_uint_eq(r.nids, 1);
		ck_assert_str_eq(r.ids[0], "5-3");
		proto_request_free(&r);
		free(line);

#define T_IDS_ERR(body, msg) do { \
	line = t_fmt("{\"op\":\"%s\"" body "}", op); \
	ck_parse_err(line, "bad_request", msg); \
	free(line); \
} while (0)
		T_IDS_ERR(",\"ids\":[\"1-0\"]", "sub: required");
		T_IDS_ERR(",\"sub\":0,\"ids\":[\"1-0\"]", "sub: must be in 1..9223372036854775807");
		T_IDS_ERR(",\"sub\":-1,\"ids\":[\"1-0\"]", "sub: must be in 1..9223372036854775807");
		T_IDS_ERR(",\"sub\":\"1\",\"ids\":[\"1-0\"]", "sub: must be an integer");
		T_IDS_ERR(",\"sub\":1.0,\"ids\":[\"1-0\"]", "sub: must be an integer");
		T_IDS_ERR(",\"sub\":1", "ids: required");
		T_IDS_ERR(",\"sub\":1,\"ids\":[\"1-0\"],\"id\":\"1-0\"", "ids: give either id or ids");
		T_IDS_ERR(",\"sub\":1,\"ids\":[]", "ids: must be a non-empty array of ids");
		T_IDS_ERR(",\"sub\":1,\"ids\":\"1-0\"", "ids: must be a non-empty array of ids");
		T_IDS_ERR(",\"sub\":1,\"ids\":[\"1-0\",1]",
		    "ids: must be stream ids like \"1732550000000-0\"");
		T_IDS_ERR(",\"sub\":1,\"ids\":[\"1-0\",\"x\"]",
		    "ids: must be stream ids like \"1732550000000-0\"");
		T_IDS_ERR(",\"sub\":1,\"ids\":[\"1\"]",
		    "ids: must be stream ids like \"1732550000000-0\"");
		T_IDS_ERR(",\"sub\":1,\"id\":\"1-\"",
		    "id: must be stream ids like \"1732550000000-0\"");
		T_IDS_ERR(",\"sub\":1,\"id\":7",
		    "id: must be stream ids like \"1732550000000-0\"");
		T_IDS_ERR(",\"sub\":1,\"id\":null",
		    "id: must be stream ids like \"1732550000000-0\"");
#undef T_IDS_ERR
	}

	/* PROTO_MAX_IDS ids are fine, one more is not. */
	for (int n = PROTO_MAX_IDS; n <= PROTO_MAX_IDS + 1; n++) {
		size_t cap = (size_t)n * 24 + 64, len = 0;
		char *big = malloc(cap);
		ck_assert_ptr_nonnull(big);
		len += (size_t)sprintf(big, "{\"op\":\"ack\",\"sub\":3,\"ids\":[");
		for (int k = 0; k < n; k++)
			len += (size_t)sprintf(big + len, "%s\"%d-%d\"", k ? "," : "", k, k % 7);
		len += (size_t)sprintf(big + len, "]}");
		ck_assert_uint_lt(len, cap);
		if (n == PROTO_MAX_IDS) {
			ck_parse_ok(big, &r);
			ck_assert_uint_eq(r.nids, PROTO_MAX_IDS);
			ck_assert_str_eq(r.ids[0], "0-0");
			ck_assert_str_eq(r.ids[PROTO_MAX_IDS - 1], "9999-3");
			proto_request_free(&r);
		} else
			ck_parse_err(big, "bad_request", "ids: more than 10000");
		free(big);
	}
}
END_TEST

START_TEST(test_parse_nack_unsub)
{
	struct proto_request r;
	char *s, *line;

	ck_parse_ok("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\"}", &r);
	ck_assert_int_eq(r.delay_ms, -1);
	ck_assert_ptr_null(r.reason);
	ck_assert_int_eq(r.dead, 0);
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"nack\",\"sub\":2,\"ids\":[\"1-1\"],\"delay_ms\":0,"
	    "\"reason\":\"bad price\",\"dead\":true}", &r);
	ck_assert_int_eq(r.delay_ms, 0);
	ck_assert_str_eq(r.reason, "bad price");
	ck_assert_int_eq(r.dead, 1);
	proto_request_free(&r);
	ck_parse_ok("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"delay_ms\":86400000,\"dead\":false}", &r);
	ck_assert_int_eq(r.delay_ms, 86400000);
	ck_assert_int_eq(r.dead, 0);
	proto_request_free(&r);

	ck_parse_err("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"delay_ms\":-1}", "bad_request",
	    "delay_ms: must be in 0..86400000");
	ck_parse_err("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"delay_ms\":86400001}", "bad_request",
	    "delay_ms: must be in 0..86400000");
	ck_parse_err("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"delay_ms\":\"5\"}", "bad_request",
	    "delay_ms: must be an integer");
	ck_parse_err("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"reason\":5}", "bad_request",
	    "reason: must be a string");
	ck_parse_err("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"dead\":1}", "bad_request",
	    "dead: must be true or false");
	ck_parse_err("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"dead\":\"true\"}", "bad_request",
	    "dead: must be true or false");
	ck_parse_err("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"dead\":null}", "bad_request",
	    "dead: must be true or false");
	ck_parse_err("{\"op\":\"nack\",\"sub\":2}", "bad_request", "ids: required");
	s = t_rep('r', 1000);
	line = t_fmt("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"reason\":\"%s\"}", s);
	ck_parse_ok(line, &r);
	ck_assert_uint_eq(strlen(r.reason), 1000);
	proto_request_free(&r);
	free(line);
	free(s);
	s = t_rep('r', 1001);
	line = t_fmt("{\"op\":\"nack\",\"sub\":2,\"id\":\"1-1\",\"reason\":\"%s\"}", s);
	ck_parse_err(line, "bad_request", "reason: longer than 1000 bytes");
	free(line);
	free(s);

	ck_parse_ok("{\"op\":\"unsub\",\"sub\":12}", &r);
	ck_assert_int_eq(r.op, OP_UNSUB);
	ck_assert_int_eq(r.sub, 12);
	proto_request_free(&r);
	ck_parse_err("{\"op\":\"unsub\"}", "bad_request", "sub: required");
	ck_parse_err("{\"op\":\"unsub\",\"sub\":0}", "bad_request",
	    "sub: must be in 1..9223372036854775807");
	ck_parse_err("{\"op\":\"unsub\",\"sub\":true}", "bad_request", "sub: must be an integer");
}
END_TEST

/* proto_request_free is safe after every outcome, twice, and on a request
 * that failed before anything was allocated. */
START_TEST(test_request_free)
{
	struct proto_request r;
	struct proto_error e;

	ck_assert_int_eq(t_parse("{", &r, &e), -1);
	ck_assert_ptr_null(r.root);
	proto_request_free(&r);
	proto_request_free(&r);
	ck_assert_int_eq(t_parse("{\"op\":\"pub\",\"stream\":\"s\",\"batch\":[{\"data\":1},3]}", &r, &e), -1);
	ck_assert_uint_eq(r.nmsgs, 2);
	proto_request_free(&r);
	ck_assert_ptr_null(r.msgs);
	ck_assert_uint_eq(r.nmsgs, 0);
	proto_request_free(&r);
}
END_TEST

/* ------------------------------------------------------------ encoding */

START_TEST(test_put_string)
{
	struct evbuffer *b = evbuffer_new();

	ck_assert_ptr_nonnull(b);
	proto_put_string(b, "", 0);
	ck_assert_buf(b, "\"\"");
	proto_put_string(b, "plain text", 10);
	ck_assert_buf(b, "\"plain text\"");
	proto_put_string(b, "a\"b\\c", 5);
	ck_assert_buf(b, "\"a\\\"b\\\\c\"");
	proto_put_string(b, "\"\\", 2);
	ck_assert_buf(b, "\"\\\"\\\\\"");
	proto_put_string(b, "\x01\t\n\r\x1f x\x7f", 8);
	ck_assert_buf(b, "\"\\u0001\\u0009\\u000a\\u000d\\u001f x\x7f\"");
	/* Explicit length: embedded NUL, and bytes after len ignored. */
	proto_put_string(b, "a\0b", 3);
	ck_assert_buf(b, "\"a\\u0000b\"");
	proto_put_string(b, "abcdef", 3);
	ck_assert_buf(b, "\"abc\"");
	/* Valid UTF-8 passes through: 2, 3 and 4 byte sequences. */
	proto_put_string(b, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9);
	ck_assert_buf(b, "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
	proto_put_string(b, "\xef\xbf\xbf\xf4\x8f\xbf\xbf", 7);	/* U+FFFF, U+10FFFF */
	ck_assert_buf(b, "\"\xef\xbf\xbf\xf4\x8f\xbf\xbf\"");
	/* Invalid UTF-8: one U+FFFD per bad byte, the rest kept. */
	proto_put_string(b, "\xff", 1);
	ck_assert_buf(b, "\"\\ufffd\"");
	proto_put_string(b, "a\x80z", 3);
	ck_assert_buf(b, "\"a\\ufffdz\"");
	proto_put_string(b, "\xc3\x28", 2);
	ck_assert_buf(b, "\"\\ufffd(\"");
	proto_put_string(b, "\xe2\x82", 2);	/* truncated at the end */
	ck_assert_buf(b, "\"\\ufffd\\ufffd\"");
	proto_put_string(b, "\xc3\xa9\xc3", 3);
	ck_assert_buf(b, "\"\xc3\xa9\\ufffd\"");
	proto_put_string(b, "\xc0\xaf", 2);	/* overlong '/' */
	ck_assert_buf(b, "\"\\ufffd\\ufffd\"");
	proto_put_string(b, "\xe0\x80\xaf", 3);	/* overlong, 3 bytes */
	ck_assert_buf(b, "\"\\ufffd\\ufffd\\ufffd\"");
	proto_put_string(b, "\xed\xa0\x80", 3);	/* surrogate U+D800 */
	ck_assert_buf(b, "\"\\ufffd\\ufffd\\ufffd\"");
	proto_put_string(b, "\xf4\x90\x80\x80", 4);	/* U+110000 */
	ck_assert_buf(b, "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
	proto_put_string(b, "\xf8\x88\x80\x80\x80", 5);
	ck_assert_buf(b, "\"\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\"");
	proto_put_string(b, "\xe2\x82\"", 3);	/* quote ends a bad sequence */
	ck_assert_buf(b, "\"\\ufffd\\ufffd\\\"\"");
	evbuffer_free(b);
}
END_TEST

/* Whatever the bytes, the output is one valid JSON string, and a valid
 * UTF-8 input without NUL decodes back to itself. */
START_TEST(test_put_string_random)
{
	struct evbuffer *b = evbuffer_new();

	t_srand(4242);
	for (int i = 0; i < 3000; i++) {
		char in[48], *out;
		size_t n = t_rand() % sizeof(in), outlen;
		json_error_t jerr;
		json_t *v;

		for (size_t j = 0; j < n; j++) {
			uint64_t x = t_rand();
			/* Mostly ASCII, specials and UTF-8 pieces (index 13 is the
			 * string's NUL); every third string is random bytes. */
			in[j] = i % 3 == 0 ? (char)(x & 0xff) :
			    " \"\\\x01\n\xc3\xa9\xe2\x82\xac\x80zA"[x % 14];
		}
		proto_put_string(b, in, n);
		out = t_take(b, &outlen);
		v = json_loadb(out, outlen, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
		ck_assert_msg(v != NULL, "invalid JSON %s: %s", out, jerr.text);
		ck_assert(json_is_string(v));
		if (strstr(out, "\\ufffd") == NULL) {
			ck_assert_uint_eq(json_string_length(v), n);
			ck_assert_int_eq(memcmp(json_string_value(v), in, n), 0);
		}
		json_decref(v);
		free(out);
	}
	evbuffer_free(b);
}
END_TEST

START_TEST(test_replies)
{
	struct evbuffer *b = evbuffer_new();
	json_t *rs = json_string("r\"1\n"), *ri = json_integer(42);
	json_t *rbig = json_integer(-9007199254740993LL);

	ck_assert_ptr_nonnull(b);
	proto_reply_ok(b, NULL);
	ck_assert_buf(b, "{\"ok\":true}\n");
	proto_reply_ok(b, ri);
	ck_assert_buf(b, "{\"rid\":42,\"ok\":true}\n");
	proto_reply_ok(b, rs);
	ck_assert_buf(b, "{\"rid\":\"r\\\"1\\n\",\"ok\":true}\n");
	proto_reply_ok(b, rbig);
	ck_assert_buf(b, "{\"rid\":-9007199254740993,\"ok\":true}\n");

	proto_ok_begin(b, ri);
	evbuffer_add_printf(b, ",\"acked\":%d", 3);
	proto_end(b);
	ck_assert_buf(b, "{\"rid\":42,\"ok\":true,\"acked\":3}\n");
	proto_ok_begin(b, NULL);
	evbuffer_add(b, ",\"sub\":1", 8);
	proto_end(b);
	ck_assert_buf(b, "{\"ok\":true,\"sub\":1}\n");

	proto_reply_error(b, NULL, "bad_json", "a request must be a JSON object");
	ck_assert_buf(b, "{\"ok\":false,\"error\":\"bad_json\",\"message\":\"a request must be a JSON object\"}\n");
	proto_reply_error(b, ri, "bad_request", "from: must be \"new\"\n\\");
	ck_assert_buf(b, "{\"rid\":42,\"ok\":false,\"error\":\"bad_request\","
	    "\"message\":\"from: must be \\\"new\\\"\\u000a\\\\\"}\n");
	proto_reply_error(b, rs, "unknown_op", "unknown op \"\xff\"");
	ck_assert_buf(b, "{\"rid\":\"r\\\"1\\n\",\"ok\":false,\"error\":\"unknown_op\","
	    "\"message\":\"unknown op \\\"\\ufffd\\\"\"}\n");
	proto_reply_error(b, NULL, "line_too_long", "");
	ck_assert_buf(b, "{\"ok\":false,\"error\":\"line_too_long\",\"message\":\"\"}\n");

	proto_notice_bye(b, "shutdown");
	ck_assert_buf(b, "{\"op\":\"bye\",\"reason\":\"shutdown\"}\n");
	proto_notice_bye(b, "idle \"x\"");
	ck_assert_buf(b, "{\"op\":\"bye\",\"reason\":\"idle \\\"x\\\"\"}\n");

	/* proto_put_json: compact, any value. */
	{
		json_t *v = json_pack("{s:[i,b,n],s:s}", "a", 1, 1, "b", "x\"");
		proto_put_json(b, v);
		ck_assert_buf(b, "{\"a\":[1,true,null],\"b\":\"x\\\"\"}");
		json_decref(v);
		v = json_string("only");
		proto_put_json(b, v);
		ck_assert_buf(b, "\"only\"");
		json_decref(v);
	}
	json_decref(rs);
	json_decref(ri);
	json_decref(rbig);
	evbuffer_free(b);
}
END_TEST

START_TEST(test_delivery)
{
	struct evbuffer *b = evbuffer_new();
	struct proto_delivery d = {
		.sub = 1, .stream = "market_data", .group = "risk", .id = "1732550000000-0",
		.attempt = 1, .ts = 1732550000000LL,
		.type = "MARKET_DATAxxx", .type_len = 11,
		.source = "feed-1", .source_len = 6,
		.data_json = "{\"px\":101.25}garbage", .data_len = 13,
	};
	char *line;
	size_t len;
	json_t *v;
	json_error_t jerr;

	ck_assert_ptr_nonnull(b);
	proto_encode_delivery(b, &d);
	ck_assert_buf(b, "{\"op\":\"msg\",\"sub\":1,\"stream\":\"market_data\",\"group\":\"risk\","
	    "\"id\":\"1732550000000-0\",\"attempt\":1,\"ts\":1732550000000,"
	    "\"type\":\"MARKET_DATA\",\"source\":\"feed-1\",\"data\":{\"px\":101.25}}\n");

	/* type and source absent; escaping inside them; big numbers. */
	d.sub = 9223372036854775807L;
	d.attempt = 3;
	d.ts = 0;
	d.type = NULL;
	d.source = NULL;
	d.data_json = "null";
	d.data_len = 4;
	proto_encode_delivery(b, &d);
	ck_assert_buf(b, "{\"op\":\"msg\",\"sub\":9223372036854775807,\"stream\":\"market_data\","
	    "\"group\":\"risk\",\"id\":\"1732550000000-0\",\"attempt\":3,\"ts\":0,\"data\":null}\n");
	d.type = "a\"\n\xff";
	d.type_len = 4;
	d.source = "";
	d.source_len = 0;
	proto_encode_delivery(b, &d);
	line = t_take(b, &len);
	ck_assert_str_eq(line, "{\"op\":\"msg\",\"sub\":9223372036854775807,\"stream\":\"market_data\","
	    "\"group\":\"risk\",\"id\":\"1732550000000-0\",\"attempt\":3,\"ts\":0,"
	    "\"type\":\"a\\\"\\u000a\\ufffd\",\"source\":\"\",\"data\":null}\n");
	/* A delivery is one valid JSON object per line, without "ok". */
	v = json_loadb(line, len - 1, 0, &jerr);
	ck_assert_msg(v != NULL, "%s", jerr.text);
	ck_assert_ptr_null(json_object_get(v, "ok"));
	ck_assert_str_eq(json_string_value(json_object_get(v, "type")), "a\"\n\xef\xbf\xbd");
	json_decref(v);
	free(line);
	evbuffer_free(b);
}
END_TEST

/* ------------------------------------------------------------ ids */

START_TEST(test_parse_id)
{
	static const char *const bad[] = {
		"", "-", "1", "1-", "-1", "-1-2", "a-1", "1-a", "1-2x", "1 -2", " 1-2", "1- 2",
		"1-+2", "+1-2", "1--2", "1-2-3", "1.5-2", "0x1-2", "1-0x2",
		"18446744073709551616-0", "1-18446744073709551616",
		"99999999999999999999999-0", "$", ">", "*",
	};
	uint64_t ms, seq;

	ck_assert_int_eq(proto_parse_id("0-0", &ms, &seq), 0);
	ck_assert(ms == 0 && seq == 0);
	ck_assert_int_eq(proto_parse_id("1732550000000-5", &ms, &seq), 0);
	ck_assert(ms == 1732550000000ull && seq == 5);
	ck_assert_int_eq(proto_parse_id("18446744073709551615-18446744073709551615", &ms, &seq), 0);
	ck_assert(ms == UINT64_MAX && seq == UINT64_MAX);
	ck_assert_int_eq(proto_parse_id("7-42", &ms, &seq), 0);
	ck_assert(ms == 7 && seq == 42);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(proto_parse_id(bad[i], &ms, &seq) == -1, "accepted \"%s\"", bad[i]);
}
END_TEST

/* ------------------------------------------------------------ known bugs */

/* An op with an embedded NUL ("ping\u0000junk") must not be taken for
 * "ping": proto_parse_request compares with strcmp. */
START_TEST(test_bug_op_embedded_nul)
{
	ck_parse_err("{\"op\":\"ping\\u0000junk\"}", "unknown_op",
	    "unknown op (contains a NUL character)");
}
END_TEST

/* data is stored as jansson re-serializes it: reals get 17 significant
 * digits, so 1.1 is published as 1.1000000000000001. */
START_TEST(test_bug_data_number_fidelity)
{
	struct proto_request r;

	ck_parse_ok("{\"op\":\"pub\",\"stream\":\"s\",\"data\":{\"px\":1.1,\"q\":0.1}}", &r);
	ck_data_eq(r.msgs[0], "{\"px\":1.1,\"q\":0.1}");
	proto_request_free(&r);
}
END_TEST

static Suite *
proto_suite(void)
{
	Suite *s = suite_create("proto");
	TCase *tc;

	tc = tcase_create("framing");
	tcase_add_test(tc, test_frame_basic);
	tcase_add_test(tc, test_frame_max_line);
	tcase_add_test(tc, test_frame_split_stream);
	tcase_add_test(tc, test_frame_too_long_chunks);
	tcase_add_test(tc, test_frame_too_long_then_line_same_chunk);
	suite_add_tcase(s, tc);

	tc = tcase_create("parse");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_parse_not_json);
	tcase_add_test(tc, test_parse_hostile);
	tcase_add_test(tc, test_parse_rid_and_op);
	tcase_add_test(tc, test_op_names);
	tcase_add_test(tc, test_parse_hello);
	tcase_add_test(tc, test_parse_stats);
	tcase_add_test(tc, test_parse_pub_single);
	tcase_add_test(tc, test_parse_pub_fast);
	tcase_add_test(tc, test_parse_pub_too_large);
	tcase_add_test(tc, test_parse_pub_batch);
	tcase_add_test(tc, test_parse_sub);
	tcase_add_test(tc, test_parse_ids);
	tcase_add_test(tc, test_parse_nack_unsub);
	tcase_add_test(tc, test_request_free);
	suite_add_tcase(s, tc);

	tc = tcase_create("encode");
	tcase_add_test(tc, test_put_string);
	tcase_add_test(tc, test_put_string_random);
	tcase_add_test(tc, test_replies);
	tcase_add_test(tc, test_delivery);
	tcase_add_test(tc, test_parse_id);
	suite_add_tcase(s, tc);

	tc = tcase_create("regressions");
	tcase_add_test(tc, test_bug_op_embedded_nul);
	tcase_add_test(tc, test_bug_data_number_fidelity);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(proto_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
