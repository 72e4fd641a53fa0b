/*
 * fuzz_proto.c: libFuzzer target for the wire protocol (src/proto.c).
 *
 * One input is used four ways:
 *
 *  1. Framing as a connection sees it.  The first FUZZ_HDR bytes choose
 *     max_line and the sizes of the chunks the rest arrives in; the rest is
 *     fed chunk by chunk through proto_frame_next() with the partial line
 *     carried between chunks the way conn.c does.  The events (a line's
 *     bytes, or line_too_long) must be exactly those of a whole-input
 *     reference framer, whatever the chunking.
 *  2. Every line goes through proto_parse_request() with small limits, then
 *     proto_request_own() and proto_request_free().  A line the fast pub
 *     parser takes must give the same request through the general one.  Each line is copied
 *     into a buffer of its exact size, so reading past it is an ASan error.
 *     A parsed request must satisfy the contract (names valid, data valid
 *     JSON within max_payload, ...); a rejected one must carry a known
 *     error code, and the reply encoded for either must be one JSON line.
 *  3. proto_json_valid() on the input after the header, cross-checked against
 *     jansson's json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL).  Known
 *     differences are allowed (see fuzz_json_known_difference()); any other
 *     disagreement aborts.
 *  4. proto_put_string() and proto_encode_delivery() with the input bytes
 *     as type/source (and as data when they are valid JSON): the output
 *     must be one line of valid JSON that jansson reads back.
 *
 * Build: `make fuzz` (tests/fuzz/build/fuzz_proto).  With
 * -DFUZZ_SKIP_KNOWN the checks for bugs already reported (tests/fuzz/README)
 * are skipped, so that a long campaign can look for new ones.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "config.h"
#include "proto.h"
#include "proto_same.h"

#define FUZZ_HDR     4
#define FUZZ_PAYLOAD 64		/* max_payload of the parse step */
#define FUZZ_BATCH   4		/* max_batch of the parse step */

#define FUZZ_CHECK(cond, ...) do {					\
	if (!(cond)) {							\
		fprintf(stderr, "fuzz_proto: check failed: %s: ", #cond);	\
		fprintf(stderr, __VA_ARGS__);				\
		fputc('\n', stderr);					\
		abort();						\
	}								\
} while (0)

/* ---- framing: events of one input ---- */

struct fuzz_events {
	size_t n;		/* events so far */
	uint64_t hash;		/* of their kinds and bytes, in order */
};

static void
fuzz_event(struct fuzz_events *e, int kind, const char *line, size_t len)
{
	uint64_t h = e->hash ^ (uint64_t)(kind + 1) * 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)line[i]) * 0x100000001b3ull;
	e->hash = (h ^ len) * 0x100000001b3ull;
	e->n++;
}

/* The contract of protocol.md, whole input at once: lines end at '\n', one
 * '\r' before it is dropped, empty lines are nothing, a line longer than
 * max_line is one line_too_long.  A last line without '\n' is not a line
 * yet, unless it is already over max_line + 1 bytes (room for the '\r'). */
static void
fuzz_reference(const char *buf, size_t len, size_t max_line, struct fuzz_events *e)
{
	size_t start = 0;

	while (start < len) {
		const char *nl = memchr(buf + start, '\n', len - start);
		size_t l;
		if (nl == NULL) {
			if (len - start > max_line + 1)
				fuzz_event(e, PROTO_FRAME_TOO_LONG, NULL, 0);
			return;
		}
		l = (size_t)(nl - (buf + start));
		if (l > 0 && buf[start + l - 1] == '\r')
			l--;
		if (l > max_line)
			fuzz_event(e, PROTO_FRAME_TOO_LONG, NULL, 0);
		else if (l > 0)
			fuzz_event(e, PROTO_FRAME_LINE, buf + start, l);
		start = (size_t)(nl - buf) + 1;
	}
}

/* ---- JSON helpers ---- */

static void
fuzz_check_one_line(const char *what, const char *text, size_t len)
{
	json_error_t jerr;
	json_t *v;

	FUZZ_CHECK(len >= 2 && text[len - 1] == '\n', "%s: not a line", what);
	FUZZ_CHECK(memchr(text, '\n', len - 1) == NULL,
	    "%s: a '\\n' inside the line: %.*s", what, (int)(len > 300 ? 300 : len), text);
	FUZZ_CHECK(proto_json_valid(text, len - 1), "%s: not valid JSON: %.*s", what,
	    (int)(len > 300 ? 300 : len), text);
	v = json_loadb(text, len - 1, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
	/* jansson refuses some valid JSON (see below): only replies, whose
	 * fields we build, must always load. */
	if (v == NULL)
		FUZZ_CHECK(strstr(jerr.text, "too big") != NULL ||
		    strstr(jerr.text, "overflow") != NULL ||
		    strstr(jerr.text, "NUL byte in object key") != NULL,
		    "%s: jansson cannot read it: %s: %.*s", what, jerr.text,
		    (int)(len > 300 ? 300 : len), text);
	json_decref(v);
}

/* Drains out into a malloc'd buffer; returns its length. */
static size_t
fuzz_take(struct evbuffer *out, char **text)
{
	size_t len = evbuffer_get_length(out);

	*text = malloc(len + 1);
	FUZZ_CHECK(*text != NULL, "out of memory");
	evbuffer_remove(out, *text, len);
	(*text)[len] = '\0';
	return len;
}

static void
fuzz_check_buffer(const char *what, struct evbuffer *out)
{
	char *text;
	size_t len = fuzz_take(out, &text);

	fuzz_check_one_line(what, text, len);
	free(text);
}

/*
 * Where proto_json_valid() (strict RFC 8259) and jansson may differ by
 * design: jansson refuses numbers it cannot hold (the daemon stores data as
 * written, so huge numbers are valid data) and object keys containing
 * \u0000 (reported: such data is stored, and consumers using jansson cannot
 * read its deliveries; see tests/fuzz/README).  The other way round,
 * jansson silently skips a raw NUL byte that follows a number or a literal
 * ("[1\0]" loads as [1]); that is jansson's leniency, not ours, but the
 * daemon must not inherit it (see the data check in fuzz_request()).
 */
static int
fuzz_json_known_difference(int ours, const char *data, size_t size, const json_error_t *jerr)
{
	if (!ours)	/* jansson skips a raw NUL byte after a number or literal */
		return memchr(data, '\0', size) != NULL;
	if (strstr(jerr->text, "too big") != NULL || strstr(jerr->text, "overflow") != NULL)
		return 1;
	return strstr(jerr->text, "NUL byte in object key") != NULL;
}

/* ---- step 2: one request line ---- */

static const char *const fuzz_codes[] = {
	"bad_json", "bad_request", "unknown_op", "too_large", "overloaded", "internal",
};

/* The fast pub parser against the general one, on a line it takes. */
static void
fuzz_fast_vs_general(const char *line, size_t len, const struct proto_limits *lim)
{
	struct proto_request f, g;
	struct proto_error err;
	char why[64];

	memset(&f, 0, sizeof(f));
	if (proto_parse_fast(line, len, lim, &f)) {
		FUZZ_CHECK(proto_parse_general(line, len, lim, &g, &err) == 0,
		    "the general parser rejects a line the fast one took: %s", err.message);
		FUZZ_CHECK(proto_same_request(&f, &g, why, sizeof(why)), "fast parser: %s", why);
		proto_request_free(&g);
	}
	proto_request_free(&f);
}

static void
fuzz_request(const char *line0, size_t len, struct evbuffer *out)
{
	struct proto_limits lim = { FUZZ_PAYLOAD, FUZZ_BATCH };
	struct proto_request req;
	struct proto_error err;
	char *line = malloc(len ? len : 1);	/* exact size: no NUL after it */
	int rc, known = 0;

	FUZZ_CHECK(line != NULL, "out of memory");
	memcpy(line, line0, len);
	fuzz_fast_vs_general(line, len, &lim);
	rc = proto_parse_request(line, len, &lim, &req, &err);
	if (rc != 0) {
		for (size_t i = 0; i < sizeof(fuzz_codes) / sizeof(fuzz_codes[0]); i++)
			known |= err.code != NULL && strcmp(err.code, fuzz_codes[i]) == 0;
		FUZZ_CHECK(known, "unknown error code %s", err.code ? err.code : "(null)");
		FUZZ_CHECK(memchr(err.message, '\0', sizeof(err.message)) != NULL,
		    "message not terminated");
		FUZZ_CHECK(err.rid == NULL || json_is_string(err.rid) || json_is_integer(err.rid),
		    "rid of the wrong type");
		FUZZ_CHECK(strcmp(err.code, "internal") != 0, "internal error: %s", err.message);
		proto_reply_error(out, err.rid, err.code, err.message);
		fuzz_check_buffer("error reply", out);
		proto_request_free(&req);
		free(line);
		return;
	}
	FUZZ_CHECK(req.op < OP__COUNT, "op %d", (int)req.op);
	FUZZ_CHECK(req.rid == NULL || json_is_string(req.rid) || json_is_integer(req.rid),
	    "rid of the wrong type");
	if (req.stream != NULL)
		FUZZ_CHECK(config_valid_stream_name(req.stream, strlen(req.stream)),
		    "stream %s", req.stream);
	if (req.op == OP_PUB) {
		FUZZ_CHECK(req.stream != NULL, "pub without stream");
		FUZZ_CHECK(req.nmsgs >= 1 && req.nmsgs <= (req.batch ? FUZZ_BATCH : 1),
		    "pub with %zu messages", req.nmsgs);
	}
	if (req.op == OP_SUB)
		FUZZ_CHECK(req.group != NULL && config_valid_stream_name(req.group,
		    strlen(req.group)), "sub group");
	if (req.op == OP_ACK || req.op == OP_NACK || req.op == OP_TOUCH) {
		FUZZ_CHECK(req.nids >= 1 && req.nids <= PROTO_MAX_IDS, "%zu ids", req.nids);
		for (size_t i = 0; i < req.nids; i++) {
			uint64_t ms, seq;
			FUZZ_CHECK(proto_parse_id(req.ids[i], &ms, &seq) == 0, "id %s", req.ids[i]);
		}
	}
	FUZZ_CHECK(proto_request_own(&req) == 0, "proto_request_own failed");
	/* The line may go away once the request is owned. */
	memset(line, 'X', len);
	free(line);
	for (size_t i = 0; i < req.nmsgs; i++) {
		const struct proto_msg *m = &req.msgs[i];
		FUZZ_CHECK(m->data != NULL && m->data_len <= FUZZ_PAYLOAD,
		    "data of %zu bytes", m->data_len);
		/* stored as written: it must be one JSON value, and one line */
#ifdef FUZZ_SKIP_KNOWN
		if (memchr(m->data, '\0', m->data_len) == NULL)
#endif
		FUZZ_CHECK(proto_json_valid(m->data, m->data_len), "data not valid JSON: %.*s",
		    (int)m->data_len, m->data);
		if (m->type != NULL)
			FUZZ_CHECK(strlen(m->type) <= PROTO_MAX_NAME, "type too long");
		if (m->msgid != NULL)
			FUZZ_CHECK(*m->msgid != '\0' && strlen(m->msgid) <= PROTO_MAX_NAME, "msgid");
	}
	proto_ok_begin(out, req.rid);
	proto_end(out);
	fuzz_check_buffer("ok reply", out);
	proto_request_free(&req);
}

/* ---- step 1: framing over chunks ---- */

static void
fuzz_frame(const uint8_t *hdr, const char *body, size_t len, struct evbuffer *out)
{
	size_t max_line = 8 + 4 * (size_t)hdr[0];	/* 8..1028 */
	struct proto_framer framer = { 0 };
	struct fuzz_events got = { 0 }, want = { 0 };
	char *pending = NULL;			/* the partial line kept, as conn.c */
	size_t plen = 0, off = 0, k = 0;

	fuzz_reference(body, len, max_line, &want);
	while (off < len) {
		/* chunk sizes cycle through hdr[1..3]: 1..256 bytes */
		size_t n = (size_t)hdr[1 + k++ % 3] + 1, pos = 0, linelen, used;
		char *buf;
		if (n > len - off)
			n = len - off;
		buf = malloc(plen + n);
		FUZZ_CHECK(buf != NULL, "out of memory");
		if (plen > 0)
			memcpy(buf, pending, plen);
		memcpy(buf + plen, body + off, n);
		free(pending);
		pending = NULL;
		plen += n;
		off += n;
		while (pos < plen) {
			enum proto_frame f = proto_frame_next(&framer, buf + pos, plen - pos,
			    max_line, &linelen, &used);
			FUZZ_CHECK(used <= plen - pos, "consumed %zu of %zu", used, plen - pos);
			if (f == PROTO_FRAME_NEED_MORE) {
				FUZZ_CHECK(used == 0 && plen - pos <= max_line + 1,
				    "need more with %zu bytes kept", plen - pos);
				break;
			}
			FUZZ_CHECK(used > 0, "no progress (frame %d)", (int)f);
			if (f == PROTO_FRAME_LINE) {
				FUZZ_CHECK(linelen <= max_line && linelen < used, "line of %zu", linelen);
				FUZZ_CHECK(memchr(buf + pos, '\n', linelen) == NULL, "newline in line");
				if (linelen > 0) {
					fuzz_event(&got, PROTO_FRAME_LINE, buf + pos, linelen);
					fuzz_request(buf + pos, linelen, out);
				}
			} else if (f == PROTO_FRAME_TOO_LONG)
				fuzz_event(&got, PROTO_FRAME_TOO_LONG, NULL, 0);
			else
				FUZZ_CHECK(f == PROTO_FRAME_SKIPPED, "frame %d", (int)f);
			pos += used;
		}
		if (pos < plen) {
			pending = malloc(plen - pos);
			FUZZ_CHECK(pending != NULL, "out of memory");
			memcpy(pending, buf + pos, plen - pos);
		}
		plen -= pos;
		free(buf);
	}
	free(pending);
	FUZZ_CHECK(got.n == want.n && got.hash == want.hash,
	    "chunked framing gave %zu events, the whole input %zu (max_line %zu)",
	    got.n, want.n, max_line);
}

/* ---- step 3: the validator against jansson ---- */

static void
fuzz_json(const char *data, size_t size)
{
	json_error_t jerr;
	json_t *v = json_loadb(data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
	int ours = proto_json_valid(data, size), theirs = v != NULL;

	json_decref(v);
	if (ours == theirs)
		return;
	if (fuzz_json_known_difference(ours, data, size, &jerr))
		return;
	fprintf(stderr, "fuzz_proto: proto_json_valid says %d, jansson says %d (%s)\n",
	    ours, theirs, theirs ? "ok" : jerr.text);
	abort();
}

/* ---- step 4: encoders ---- */

static void
fuzz_encode(const char *data, size_t size, struct evbuffer *out)
{
	struct proto_delivery d = { 0 };
	char *text;
	size_t len;
	json_t *v;

	/* a bare string, with an arbitrary and a valid UTF-8 length */
	proto_put_string(out, data, size);
	evbuffer_add(out, "\n", 1);
	len = fuzz_take(out, &text);
	fuzz_check_one_line("proto_put_string", text, len);
	v = json_loadb(text, len - 1, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	FUZZ_CHECK(json_is_string(v), "proto_put_string: not a JSON string");
	json_decref(v);
	free(text);

	d.sub = size;
	d.stream = "market_data";
	d.group = "g-1";
	d.id = "1732550000000-18446744073709551615";
	d.attempt = 1;
	d.ts = 1732550000000LL;
	d.type = data;
	d.type_len = size;
	d.source = data;
	d.source_len = size / 2;
	if (proto_json_valid(data, size)
#ifdef FUZZ_SKIP_KNOWN
	    && memchr(data, '\n', size) == NULL
#endif
	    ) {
		d.data_json = data;
		d.data_len = size;
	} else {
		d.data_json = "null";
		d.data_len = 4;
	}
	proto_encode_delivery(out, &d);
	fuzz_check_buffer("proto_encode_delivery", out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t dflt[FUZZ_HDR] = { 62, 255, 6, 63 };
	struct evbuffer *out = evbuffer_new();
	const uint8_t *hdr = size >= FUZZ_HDR ? data : dflt;
	const char *body = (const char *)data + (size >= FUZZ_HDR ? FUZZ_HDR : 0);
	size_t blen = size >= FUZZ_HDR ? size - FUZZ_HDR : size;

	FUZZ_CHECK(out != NULL, "out of memory");
	fuzz_frame(hdr, body, blen, out);
	fuzz_json(body, blen);
	fuzz_encode(body, blen, out);
	evbuffer_free(out);
	return 0;
}
