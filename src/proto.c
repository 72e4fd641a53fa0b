/*
 * proto.c: framing, request validation and encoding of the line-JSON
 * protocol (man/streambus-protocol.7).  Pure: bytes in, structs or bytes
 * out.  Every failure becomes a protocol error code and a message that
 * names the offending field.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "config.h"
#include "proto.h"

static size_t proto_utf8_len(const unsigned char *s, size_t n);

#define PROTO_MASK_MAX 1024	/* batch entries whose data is masked */

static const char *const proto_op_names[OP__COUNT] = {
	[OP_HELLO] = "hello", [OP_PING] = "ping", [OP_PUB] = "pub",
	[OP_SUB] = "sub", [OP_ACK] = "ack", [OP_NACK] = "nack",
	[OP_TOUCH] = "touch", [OP_UNSUB] = "unsub", [OP_STATS] = "stats",
	[OP_BYE] = "bye", [OP_DLQ] = "dlq", [OP_REPLAY] = "replay",
	[OP_RANGE] = "range",
};

const char *
proto_op_name(enum proto_op op)
{
	return op < OP__COUNT ? proto_op_names[op] : "?";
}

enum proto_frame
proto_frame_next(struct proto_framer *f, const char *buf, size_t len,
    size_t max_line, size_t *line_len, size_t *consumed)
{
	const char *nl = memchr(buf, '\n', len);

	*line_len = 0;
	if (f->discarding) {
		*consumed = nl ? (size_t)(nl - buf) + 1 : len;
		if (nl != NULL)
			f->discarding = 0;
		return PROTO_FRAME_SKIPPED;
	}
	if (nl == NULL) {
		*consumed = 0;
		if (len <= max_line + 1)	/* room for a '\r' before '\n' */
			return PROTO_FRAME_NEED_MORE;
		f->discarding = 1;
		*consumed = len;
		return PROTO_FRAME_TOO_LONG;
	}
	*consumed = (size_t)(nl - buf) + 1;
	*line_len = (size_t)(nl - buf);
	if (*line_len > 0 && buf[*line_len - 1] == '\r')
		(*line_len)--;
	if (*line_len > max_line) {
		*line_len = 0;
		return PROTO_FRAME_TOO_LONG;
	}
	return PROTO_FRAME_LINE;
}

static int
proto_fail(struct proto_error *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
proto_fail(struct proto_error *err, const char *code, const char *fmt, ...)
{
	va_list ap;

	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return -1;
}

/* Optional string field: 0 absent, 1 present, -1 wrong type or length. */
static int
proto_opt_string(json_t *obj, const char *key, size_t maxlen, const char **out,
    struct proto_error *err)
{
	json_t *v = json_object_get(obj, key);

	*out = NULL;
	if (v == NULL || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return proto_fail(err, "bad_request", "%s: must be a string", key);
	if (json_string_length(v) > maxlen)
		return proto_fail(err, "bad_request", "%s: longer than %zu bytes", key, maxlen);
	if (strlen(json_string_value(v)) != json_string_length(v))
		return proto_fail(err, "bad_request", "%s: contains a NUL character", key);
	*out = json_string_value(v);
	return 1;
}

/* A name (stream, group, consumer): 1..200 of [A-Za-z0-9_.:-]. */
static int
proto_name(json_t *obj, const char *key, int required, const char **out,
    struct proto_error *err)
{
	int rc = proto_opt_string(obj, key, CONFIG_MAX_STREAM, out, err);

	if (rc < 0)
		return -1;
	if (rc == 0)
		return required ? proto_fail(err, "bad_request", "%s: required", key) : 0;
	if (!config_valid_stream_name(*out, strlen(*out)))
		return proto_fail(err, "bad_request",
		    "%s: must be 1..200 characters of A-Za-z0-9_.:-", key);
	return 0;
}

static int
proto_long(json_t *obj, const char *key, int required, long min, long max,
    long *out, struct proto_error *err)
{
	json_t *v = json_object_get(obj, key);

	if (v == NULL || json_is_null(v))
		return required ? proto_fail(err, "bad_request", "%s: required", key) : 0;
	if (!json_is_integer(v))
		return proto_fail(err, "bad_request", "%s: must be an integer", key);
	if (json_integer_value(v) < min || json_integer_value(v) > max)
		return proto_fail(err, "bad_request", "%s: must be in %ld..%ld", key, min, max);
	*out = (long)json_integer_value(v);
	return 0;
}

int
proto_parse_id(const char *s, uint64_t *ms, uint64_t *seq)
{
	const char *dash = strchr(s, '-');
	char *end;

	if (s[0] < '0' || s[0] > '9' || dash == NULL || dash[1] < '0' || dash[1] > '9')
		return -1;
	errno = 0;
	*ms = strtoull(s, &end, 10);
	if (end != dash || errno != 0)
		return -1;
	*seq = strtoull(dash + 1, &end, 10);
	if (*end != '\0' || errno != 0)
		return -1;
	return 0;
}

static int
proto_valid_id(const char *s)
{
	uint64_t ms, seq;

	return proto_parse_id(s, &ms, &seq) == 0;
}

/*
 * Raw spans.  "data" is stored as the client wrote it (numbers keep their
 * digits, nothing is re-serialised): these find the bytes of a member's
 * value in text jansson has already validated, so they only need to skip,
 * not to check.
 */
static const char *
proto_skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
		p++;
	return p;
}

static const char *
proto_skip_string(const char *p, const char *end)
{
	for (p++; p < end;) {
		const char *q = memchr(p, '"', (size_t)(end - p)), *b;
		if (q == NULL)
			return end;
		/* escaped if preceded by an odd run of backslashes */
		for (b = q; b > p && b[-1] == '\\'; b--)
			;
		if ((q - b) % 2 == 0)
			return q + 1;
		p = q + 1;
	}
	return end;
}

static const char *
proto_skip_value(const char *p, const char *end)
{
	int depth = 0;

	do {
		if (p >= end)
			return end;
		if (*p == '"')
			p = proto_skip_string(p, end);
		else {
			if (*p == '{' || *p == '[')
				depth++;
			else if (*p == '}' || *p == ']')
				depth--;
			p++;
			if (depth == 0)	/* a scalar: up to a delimiter */
				while (p < end && *p != ',' && *p != '}' && *p != ']' &&
				    *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
					p++;
		}
	} while (depth > 0);
	return p;
}

/* In the object at p: the value of member key (no escapes in its name). */
static int
proto_member_span(const char *p, const char *end, const char *key,
    const char **vs, const char **ve)
{
	size_t klen = strlen(key);

	p = proto_skip_ws(p, end);
	if (p >= end || *p != '{')
		return -1;
	for (p++;;) {
		const char *ks, *ke;
		p = proto_skip_ws(p, end);
		if (p >= end || *p != '"')
			return -1;
		ks = p + 1;
		p = proto_skip_string(p, end);
		ke = p - 1;
		p = proto_skip_ws(p, end);
		if (p >= end || *p != ':')
			return -1;
		p = proto_skip_ws(p + 1, end);
		if ((size_t)(ke - ks) == klen && memcmp(ks, key, klen) == 0) {
			*vs = p;
			*ve = proto_skip_value(p, end);
			return 0;
		}
		p = proto_skip_ws(proto_skip_value(p, end), end);
		if (p >= end || *p != ',')
			return -1;
		p++;
	}
}

/* Raw array iteration: *cur starts at the '[' and moves to the ',' or ']'
 * after each element. */
static int
proto_next_element(const char **cur, const char *end, const char **vs, const char **ve)
{
	const char *p = proto_skip_ws(*cur, end);

	if (p >= end || (*p != '[' && *p != ','))
		return -1;
	p = proto_skip_ws(p + 1, end);
	if (p >= end || *p == ']')
		return -1;
	*vs = p;
	*ve = proto_skip_value(p, end);
	*cur = proto_skip_ws(*ve, end);
	return 0;
}

/*
 * A strict JSON validator (RFC 8259, UTF-8 checked, nesting bounded) that
 * builds nothing: pub checks "data" with it instead of building it, and
 * deliveries check entries others wrote.
 */
#define PROTO_MAX_DEPTH 2048

static int
proto_hex4(const unsigned char *p, const unsigned char *end, unsigned *out)
{
	unsigned v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		unsigned c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9') v |= c - '0';
		else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
		else return -1;
	}
	*out = v;
	return 0;
}

/* p at the opening quote; returns just past the closing one, or NULL. */
static const unsigned char *
proto_valid_string(const unsigned char *p, const unsigned char *end)
{
	for (p++; p < end;) {
		unsigned u, lo;
		size_t n;
		if (*p == '"')
			return p + 1;
		if (*p < 0x20)
			return NULL;
		if (*p != '\\') {
			if ((n = proto_utf8_len(p, (size_t)(end - p))) == 0)
				return NULL;
			p += n;
			continue;
		}
		if (++p >= end)
			return NULL;
		if (strchr("\"\\/bfnrt", *p) != NULL && *p != '\0') {
			p++;
			continue;
		}
		if (*p != 'u' || proto_hex4(p + 1, end, &u) != 0)
			return NULL;
		p += 5;
		if (u >= 0xdc00 && u <= 0xdfff)
			return NULL;		/* a lone low surrogate */
		if (u >= 0xd800 && u <= 0xdbff) {	/* needs its low half */
			if (end - p < 6 || p[0] != '\\' || p[1] != 'u' ||
			    proto_hex4(p + 2, end, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
				return NULL;
			p += 6;
		}
	}
	return NULL;
}

static const unsigned char *
proto_valid_number(const unsigned char *p, const unsigned char *end)
{
#define DIGIT(q) ((q) < end && *(q) >= '0' && *(q) <= '9')
	if (p < end && *p == '-')
		p++;
	if (p < end && *p == '0')
		p++;
	else if (DIGIT(p))
		while (DIGIT(p))
			p++;
	else
		return NULL;
	if (p < end && *p == '.') {
		if (!DIGIT(p + 1))
			return NULL;
		for (p++; DIGIT(p); p++)
			;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (!DIGIT(p))
			return NULL;
		while (DIGIT(p))
			p++;
	}
	return p;
#undef DIGIT
}

int
proto_json_valid(const char *text, size_t len)
{
	const unsigned char *p = (const unsigned char *)text, *end = p + len;
	unsigned char in_object[PROTO_MAX_DEPTH / 8];	/* 1 bit per level */
	enum { WANT_VALUE, WANT_KEY, AFTER_VALUE } state = WANT_VALUE;
	int depth = 0;

	for (;;) {
		while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
			p++;
		if (state == AFTER_VALUE) {
			int obj = depth > 0 && (in_object[(depth - 1) / 8] >> ((depth - 1) % 8)) & 1;
			if (depth == 0)
				return p == end;
			if (p >= end)
				return 0;
			if (*p == ',') {
				p++;
				state = obj ? WANT_KEY : WANT_VALUE;
			} else if (*p == (obj ? '}' : ']')) {
				p++;
				depth--;
			} else
				return 0;
			continue;
		}
		if (p >= end)
			return 0;
		if (state == WANT_KEY) {
			if (*p != '"' || (p = proto_valid_string(p, end)) == NULL)
				return 0;
			while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
				p++;
			if (p >= end || *p++ != ':')
				return 0;
			state = WANT_VALUE;
			continue;
		}
		if (*p == '{' || *p == '[') {
			int obj = *p == '{';
			if (depth >= PROTO_MAX_DEPTH)
				return 0;
			if (obj)
				in_object[depth / 8] |= (unsigned char)(1u << (depth % 8));
			else
				in_object[depth / 8] &= (unsigned char)~(1u << (depth % 8));
			depth++;
			p++;
			while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
				p++;
			if (p < end && *p == (obj ? '}' : ']')) {
				p++;
				depth--;
				state = AFTER_VALUE;
			} else
				state = obj ? WANT_KEY : WANT_VALUE;
			continue;
		}
		if (*p == '"')
			p = proto_valid_string(p, end);
		else if (*p == '-' || (*p >= '0' && *p <= '9'))
			p = proto_valid_number(p, end);
		else if (end - p >= 4 && memcmp(p, "true", 4) == 0)
			p += 4;
		else if (end - p >= 5 && memcmp(p, "false", 5) == 0)
			p += 5;
		else if (end - p >= 4 && memcmp(p, "null", 4) == 0)
			p += 4;
		else
			return 0;
		if (p == NULL)
			return 0;
		state = AFTER_VALUE;
	}
}

/*
 * The envelope of a pub is small, its data may be large: before jansson
 * parses a line, every "data" value (top level, or of each batch entry) is
 * checked by proto_json_valid and replaced by 0 in a copy, so jansson
 * builds only the envelope.  Substituting a valid value for a valid value
 * keeps the line valid, and an invalid one is left for jansson to name.
 * Returns the copy (malloc'd) or NULL when there is nothing to mask.
 */
static char *
proto_mask_data(const char *line, size_t len, size_t *mlen)
{
	const char *end = line + len, *spans[2 * PROTO_MASK_MAX], *bs, *be, *cur;
	size_t n = 0, out = 0, prev = 0;
	char *copy;

	if (proto_member_span(line, end, "data", &spans[0], &spans[1]) == 0)
		n = 1;
	else if (proto_member_span(line, end, "batch", &bs, &be) == 0) {
		const char *es, *ee;
		for (cur = bs; n < PROTO_MASK_MAX &&
		    proto_next_element(&cur, be, &es, &ee) == 0; n++)
			if (proto_member_span(es, ee, "data", &spans[2 * n], &spans[2 * n + 1]) != 0)
				return NULL;
		if (n == PROTO_MASK_MAX)
			return NULL;	/* huge batches: jansson parses all */
	}
	if (n == 0)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!proto_json_valid(spans[2 * i], (size_t)(spans[2 * i + 1] - spans[2 * i])))
			return NULL;
	if ((copy = malloc(len + 1)) == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		size_t s = (size_t)(spans[2 * i] - line);
		memcpy(copy + out, line + prev, s - prev);
		out += s - prev;
		copy[out++] = '0';
		prev = (size_t)(spans[2 * i + 1] - line);
	}
	memcpy(copy + out, line + prev, len - prev);
	*mlen = out + len - prev;
	return copy;
}

/* obj_s/obj_e: the raw text of obj, when known. */
static int
proto_message(json_t *obj, const char *obj_s, const char *obj_e, const char *where,
    const struct proto_limits *lim, struct proto_msg *m, struct proto_error *err)
{
	json_t *data = json_object_get(obj, "data");
	const char *vs, *ve;

	if (data == NULL)
		return proto_fail(err, "bad_request", "%sdata: required", where);
	if (proto_opt_string(obj, "type", PROTO_MAX_NAME, &m->type, err) < 0 ||
	    proto_opt_string(obj, "msgid", PROTO_MAX_NAME, &m->msgid, err) < 0)
		return -1;
	if (m->msgid != NULL && *m->msgid == '\0')
		return proto_fail(err, "bad_request", "%smsgid: must not be empty", where);
	if (obj_s != NULL && proto_member_span(obj_s, obj_e, "data", &vs, &ve) == 0) {
		m->data = vs;
		m->data_len = (size_t)(ve - vs);
	} else {
		/* "data" spelled with escapes: fall back to jansson's text */
		m->data_owned = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
		if (m->data_owned == NULL)
			return proto_fail(err, "internal", "out of memory encoding data");
		m->data = m->data_owned;
		m->data_len = strlen(m->data);
	}
	if (m->data_len > lim->max_payload)
		return proto_fail(err, "too_large", "%sdata: %zu bytes, more than max_payload %zu",
		    where, m->data_len, lim->max_payload);
	return 0;
}

static int
proto_parse_pub(struct proto_request *req, const char *line, size_t len,
    const struct proto_limits *lim, struct proto_error *err)
{
	json_t *batch = json_object_get(req->root, "batch");
	const char *end = line + len, *bs = NULL, *be = NULL;
	char where[48];

	if (batch == NULL) {
		req->msgs = calloc(1, sizeof(*req->msgs));
		if (req->msgs == NULL)
			return proto_fail(err, "overloaded", "out of memory");
		req->nmsgs = 1;
		return proto_message(req->root, line, end, "", lim, &req->msgs[0], err);
	}
	if (json_object_get(req->root, "data") != NULL)
		return proto_fail(err, "bad_request", "batch: not allowed together with data");
	if (!json_is_array(batch) || json_array_size(batch) == 0)
		return proto_fail(err, "bad_request", "batch: must be a non-empty array");
	if (json_array_size(batch) > lim->max_batch) {
		err->limit = "max_batch";
		return proto_fail(err, "bad_request", "batch: more than %zu entries", lim->max_batch);
	}
	req->batch = 1;
	req->msgs = calloc(json_array_size(batch), sizeof(*req->msgs));
	if (req->msgs == NULL)
		return proto_fail(err, "overloaded", "out of memory");
	if (proto_member_span(line, end, "batch", &bs, &be) != 0)
		bs = NULL;
	for (size_t i = 0; i < json_array_size(batch); i++) {
		json_t *e = json_array_get(batch, i);
		const char *es = NULL, *ee = NULL;
		req->nmsgs = i + 1;
		snprintf(where, sizeof(where), "batch[%zu].", i);
		if (!json_is_object(e))
			return proto_fail(err, "bad_request", "batch[%zu]: must be an object", i);
		if (bs != NULL && proto_next_element(&bs, be, &es, &ee) != 0)
			bs = es = ee = NULL;
		if (proto_message(e, es, ee, where, lim, &req->msgs[i], err) != 0)
			return -1;
	}
	return 0;
}

static int
proto_parse_sub(struct proto_request *req, struct proto_error *err)
{
	if (proto_name(req->root, "group", 1, &req->group, err) != 0 ||
	    proto_name(req->root, "consumer", 0, &req->consumer, err) != 0 ||
	    proto_long(req->root, "prefetch", 0, 1, PROTO_MAX_PREFETCH, &req->prefetch, err) != 0 ||
	    proto_opt_string(req->root, "from", 64, &req->from, err) < 0)
		return -1;
	if (req->from != NULL && strcmp(req->from, "new") != 0 &&
	    strcmp(req->from, "all") != 0 && !proto_valid_id(req->from))
		return proto_fail(err, "bad_request", "from: must be \"new\", \"all\" or a stream id");
	return 0;
}

/* "ids": [..] or "id": "..". */
static int
proto_parse_ids(struct proto_request *req, struct proto_error *err)
{
	json_t *ids = json_object_get(req->root, "ids");
	json_t *id = json_object_get(req->root, "id");
	size_t n;

	if (ids != NULL && id != NULL)
		return proto_fail(err, "bad_request", "ids: give either id or ids");
	if (ids == NULL && id == NULL)
		return proto_fail(err, "bad_request", "ids: required");
	if (ids != NULL && (!json_is_array(ids) || json_array_size(ids) == 0))
		return proto_fail(err, "bad_request", "ids: must be a non-empty array of ids");
	n = ids != NULL ? json_array_size(ids) : 1;
	if (n > PROTO_MAX_IDS)
		return proto_fail(err, "bad_request", "ids: more than %d", PROTO_MAX_IDS);
	req->ids = calloc(n, sizeof(*req->ids));
	if (req->ids == NULL)
		return proto_fail(err, "overloaded", "out of memory");
	for (size_t i = 0; i < n; i++) {
		json_t *v = ids != NULL ? json_array_get(ids, i) : id;
		if (!json_is_string(v) || !proto_valid_id(json_string_value(v)))
			return proto_fail(err, "bad_request", "%s: must be stream ids like \"1732550000000-0\"",
			    ids != NULL ? "ids" : "id");
		req->ids[i] = json_string_value(v);
	}
	req->nids = n;
	return 0;
}

static int
proto_parse_nack(struct proto_request *req, struct proto_error *err)
{
	json_t *dead = json_object_get(req->root, "dead");

	req->delay_ms = -1;
	if (proto_long(req->root, "delay_ms", 0, 0, 86400000, &req->delay_ms, err) != 0 ||
	    proto_opt_string(req->root, "reason", PROTO_MAX_REASON, &req->reason, err) < 0)
		return -1;
	if (dead != NULL && !json_is_boolean(dead))
		return proto_fail(err, "bad_request", "dead: must be true or false");
	req->dead = dead != NULL && json_is_true(dead);
	return 0;
}

static int
proto_parse_op(struct proto_request *req, const char *line, size_t len,
    const struct proto_limits *lim, struct proto_error *err)
{
	switch (req->op) {
	case OP_HELLO:
		return proto_opt_string(req->root, "name", PROTO_MAX_NAME, &req->name, err) < 0 ||
		    proto_opt_string(req->root, "token", 4096, &req->token, err) < 0 ? -1 : 0;
	case OP_PING:
	case OP_BYE:
		return 0;
	case OP_STATS:
		return proto_name(req->root, "stream", 0, &req->stream, err);
	case OP_RANGE:
		if (proto_long(req->root, "last", 0, 1, PROTO_MAX_DLQ_LIST, &req->last, err) != 0)
			return -1;
		if (req->last > 0 && json_object_get(req->root, "from") != NULL)
			return proto_fail(err, "bad_request", "last: give either from or last");
		/* FALLTHROUGH */
	case OP_DLQ:
		req->count = 100;
		return proto_name(req->root, "stream", 1, &req->stream, err) != 0 ||
		    proto_long(req->root, "count", 0, 1, PROTO_MAX_DLQ_LIST, &req->count, err) != 0 ||
		    proto_opt_string(req->root, "from", 64, &req->from, err) < 0 ? -1 :
		    req->from != NULL && !proto_valid_id(req->from) ?
		    proto_fail(err, "bad_request", "from: must be a stream id") : 0;
	case OP_REPLAY: {
		json_t *all = json_object_get(req->root, "all");
		if (proto_name(req->root, "stream", 1, &req->stream, err) != 0)
			return -1;
		if (all != NULL && !json_is_boolean(all))
			return proto_fail(err, "bad_request", "all: must be true or false");
		req->all = all != NULL && json_is_true(all);
		if (req->all && (json_object_get(req->root, "ids") || json_object_get(req->root, "id")))
			return proto_fail(err, "bad_request", "ids: give either ids or all");
		return req->all ? 0 : proto_parse_ids(req, err);
	}
	case OP_PUB:
		return proto_name(req->root, "stream", 1, &req->stream, err) != 0 ? -1 :
		    proto_parse_pub(req, line, len, lim, err);
	case OP_SUB:
		return proto_name(req->root, "stream", 1, &req->stream, err) != 0 ? -1 :
		    proto_parse_sub(req, err);
	case OP_UNSUB:
		return proto_long(req->root, "sub", 1, 1, LONG_MAX, &req->sub, err);
	case OP_ACK:
	case OP_TOUCH:
		return proto_long(req->root, "sub", 1, 1, LONG_MAX, &req->sub, err) != 0 ? -1 :
		    proto_parse_ids(req, err);
	case OP_NACK:
		return proto_long(req->root, "sub", 1, 1, LONG_MAX, &req->sub, err) != 0 ||
		    proto_parse_ids(req, err) != 0 ? -1 : proto_parse_nack(req, err);
	case OP__COUNT:
		break;
	}
	return proto_fail(err, "internal", "unhandled op");
}

/*
 * The fast path of the hot requests: a single pub, or an ack, whose
 * envelope is plain -- known members once each, ASCII strings without
 * escapes, integers of at most 18 digits, any valid JSON as data -- is read
 * in one pass, without jansson.  Anything else (escapes, other members,
 * duplicates, a batch, an invalid field) is left to the general parser, so
 * that both give the same request and every error comes from one place.
 */
enum { PF_OP, PF_RID, PF_STREAM, PF_DATA, PF_TYPE, PF_MSGID, PF_SUB, PF_IDS, PF_ID,
	PF__COUNT };

static const struct {
	const char *name;
	size_t      len;
} proto_fast_members[PF__COUNT] = {
	[PF_OP] = { "op", 2 }, [PF_RID] = { "rid", 3 }, [PF_STREAM] = { "stream", 6 },
	[PF_DATA] = { "data", 4 }, [PF_TYPE] = { "type", 4 }, [PF_MSGID] = { "msgid", 5 },
	[PF_SUB] = { "sub", 3 }, [PF_IDS] = { "ids", 3 }, [PF_ID] = { "id", 2 },
};

/* The members each op may have on the fast path. */
#define PF_BIT(k)   (1u << (k))
#define PF_PUB_SET  (PF_BIT(PF_OP) | PF_BIT(PF_RID) | PF_BIT(PF_STREAM) | PF_BIT(PF_DATA) | \
		     PF_BIT(PF_TYPE) | PF_BIT(PF_MSGID))
#define PF_ACK_SET  (PF_BIT(PF_OP) | PF_BIT(PF_RID) | PF_BIT(PF_SUB) | PF_BIT(PF_IDS) | \
		     PF_BIT(PF_ID))

struct proto_fast {
	const char *vs[PF__COUNT], *ve[PF__COUNT];	/* value spans; vs NULL: absent */
	size_t      n[PF__COUNT];	/* a string's length without its quotes */
	unsigned    present;
	long long   rid, sub;
	size_t      nids;
};

/* A string of printable ASCII without escapes at p: past its closing
 * quote, or NULL. */
static const char *
proto_plain_string(const char *p, const char *end)
{
	if (p >= end || *p != '"')
		return NULL;
	for (p++; p < end; p++) {
		if (*p == '"')
			return p + 1;
		if (*p < 0x20 || *p > 0x7e || *p == '\\')
			return NULL;
	}
	return NULL;
}

/* A JSON integer of at most 18 digits at p: past it, or NULL. */
static const char *
proto_plain_int(const char *p, const char *end, long long *v)
{
	const char *digits;
	int neg = p < end && *p == '-';

	*v = 0;
	digits = p += neg;
	for (; p < end && *p >= '0' && *p <= '9' && p - digits < 18; p++)
		*v = *v * 10 + (*p - '0');
	if (p == digits || (p < end && (*p == '.' || *p == 'e' || *p == 'E' ||
	    (*p >= '0' && *p <= '9'))) || (*digits == '0' && p - digits > 1))
		return NULL;
	if (neg)
		*v = -*v;
	return p;
}

/* A non-empty array of plain strings at p: past its ']', or NULL. */
static const char *
proto_plain_strings(const char *p, const char *end, size_t *n)
{
	*n = 0;
	if (p >= end || *p != '[')
		return NULL;
	for (p = proto_skip_ws(p + 1, end);; p = proto_skip_ws(p + 1, end)) {
		if ((p = proto_plain_string(p, end)) == NULL)
			return NULL;
		(*n)++;
		p = proto_skip_ws(p, end);
		if (p < end && *p == ']')
			return p + 1;
		if (p >= end || *p != ',')
			return NULL;
	}
}

static const char *
proto_fast_value(int k, const char *p, const char *end, struct proto_fast *f)
{
	switch (k) {
	case PF_DATA:
		return proto_skip_value(p, end);	/* validated later */
	case PF_RID:
		return p < end && *p == '"' ? proto_plain_string(p, end) :
		    proto_plain_int(p, end, &f->rid);
	case PF_SUB:
		return proto_plain_int(p, end, &f->sub);
	case PF_IDS:
		return proto_plain_strings(p, end, &f->nids);
	default:
		return proto_plain_string(p, end);
	}
}

/* The members of a plain envelope. */
static int
proto_fast_scan(const char *p, const char *end, struct proto_fast *f)
{
	p = proto_skip_ws(p, end);
	if (p >= end || *p != '{')
		return -1;
	for (p = proto_skip_ws(p + 1, end);;) {
		const char *ks = p + 1, *ke = proto_plain_string(p, end);
		int k = 0;
		if (ke == NULL)
			return -1;
		while (k < PF__COUNT && ((size_t)(ke - 1 - ks) != proto_fast_members[k].len ||
		    memcmp(ks, proto_fast_members[k].name, proto_fast_members[k].len) != 0))
			k++;
		if (k == PF__COUNT || (f->present & PF_BIT(k)))
			return -1;	/* another member, or a duplicate */
		p = proto_skip_ws(ke, end);
		if (p >= end || *p != ':')
			return -1;
		f->vs[k] = p = proto_skip_ws(p + 1, end);
		if ((f->ve[k] = proto_fast_value(k, p, end, f)) == NULL)
			return -1;
		f->present |= PF_BIT(k);
		if (p < f->ve[k] && *p == '"')
			f->n[k] = (size_t)(f->ve[k] - p) - 2;
		p = proto_skip_ws(f->ve[k], end);
		if (p < end && *p == ',')
			p = proto_skip_ws(p + 1, end);
		else
			return p < end && *p == '}' && proto_skip_ws(p + 1, end) == end ? 0 : -1;
	}
}

/* Member k's string, NUL-terminated at *at (which moves past it). */
static const char *
proto_fast_copy(const struct proto_fast *f, int k, char **at)
{
	char *s = *at;

	memcpy(s, f->vs[k] + 1, f->n[k]);
	s[f->n[k]] = '\0';
	*at += f->n[k] + 1;
	return s;
}

/* A single pub: the stream, type and msgid copied to text. */
static int
proto_fast_pub(struct proto_fast *f, const struct proto_limits *lim,
    struct proto_request *req, char *text)
{
	size_t dlen;
	char *at = text;

	if ((f->present & ~PF_PUB_SET) || !(f->present & PF_BIT(PF_STREAM)) ||
	    !(f->present & PF_BIT(PF_DATA)))
		return 0;
	dlen = (size_t)(f->ve[PF_DATA] - f->vs[PF_DATA]);
	if (!config_valid_stream_name(f->vs[PF_STREAM] + 1, f->n[PF_STREAM]) ||
	    f->n[PF_TYPE] > PROTO_MAX_NAME || f->n[PF_MSGID] > PROTO_MAX_NAME ||
	    ((f->present & PF_BIT(PF_MSGID)) && f->n[PF_MSGID] == 0) ||
	    dlen > lim->max_payload || !proto_json_valid(f->vs[PF_DATA], dlen) ||
	    (req->msgs = calloc(1, sizeof(*req->msgs))) == NULL)
		return 0;
	req->op = OP_PUB;
	req->nmsgs = 1;
	req->stream = proto_fast_copy(f, PF_STREAM, &at);
	if (f->present & PF_BIT(PF_TYPE))
		req->msgs[0].type = proto_fast_copy(f, PF_TYPE, &at);
	if (f->present & PF_BIT(PF_MSGID))
		req->msgs[0].msgid = proto_fast_copy(f, PF_MSGID, &at);
	req->msgs[0].data = f->vs[PF_DATA];
	req->msgs[0].data_len = dlen;
	return 1;
}

/* An ack of "ids" or "id": the ids copied to text. */
static int
proto_fast_ack(struct proto_fast *f, struct proto_request *req, char *text)
{
	int ids = (f->present & PF_BIT(PF_IDS)) != 0;
	size_t n = ids ? f->nids : 1;
	const char *p;

	if ((f->present & ~PF_ACK_SET) || !(f->present & PF_BIT(PF_SUB)) || f->sub < 1 ||
	    ids == ((f->present & PF_BIT(PF_ID)) != 0) || n > PROTO_MAX_IDS ||
	    (req->ids = calloc(n, sizeof(*req->ids))) == NULL)
		return 0;
	req->op = OP_ACK;
	req->sub = (long)f->sub;
	req->nids = n;
	if (!ids) {
		req->ids[0] = proto_fast_copy(f, PF_ID, &text);
		return proto_valid_id(req->ids[0]);
	}
	/* The scan checked the array: n plain strings, quotes around each. */
	p = f->vs[PF_IDS];
	for (size_t i = 0; i < n; i++) {
		const char *open = memchr(p, '"', (size_t)(f->ve[PF_IDS] - p));
		const char *close = memchr(open + 1, '"', (size_t)(f->ve[PF_IDS] - open - 1));
		size_t len = (size_t)(close - open - 1);
		memcpy(text, open + 1, len);
		text[len] = '\0';
		req->ids[i] = text;
		if (!proto_valid_id(text))
			return 0;
		text += len + 1;
		p = close + 1;
	}
	return 1;
}

int
proto_parse_fast(const char *line, size_t len, const struct proto_limits *lim,
    struct proto_request *req)
{
	struct proto_fast f;
	json_t *rid = NULL;
	char *text;
	int ok;

	memset(&f, 0, sizeof(f));
	if (proto_fast_scan(line, line + len, &f) != 0 || !(f.present & PF_BIT(PF_OP)) ||
	    f.n[PF_OP] != 3 || (memcmp(f.vs[PF_OP], "\"pub\"", 5) != 0 &&
	    memcmp(f.vs[PF_OP], "\"ack\"", 5) != 0))
		return 0;
	/* Every string it copies is within the line: len bytes hold them all. */
	if ((text = malloc(len + 1)) == NULL)
		return 0;
	if (f.present & PF_BIT(PF_RID))
		rid = *f.vs[PF_RID] == '"' ? json_stringn(f.vs[PF_RID] + 1, f.n[PF_RID]) :
		    json_integer(f.rid);
	ok = (rid != NULL || !(f.present & PF_BIT(PF_RID))) &&
	    (f.vs[PF_OP][1] == 'p' ? proto_fast_pub(&f, lim, req, text) :
	    proto_fast_ack(&f, req, text));
	if (!ok) {
		json_decref(rid);
		free(text);
		free(req->msgs);
		free(req->ids);
		memset(req, 0, sizeof(*req));
		return 0;
	}
	req->rid = rid;
	req->text = text;
	return 1;
}

int
proto_parse_request(const char *line, size_t len, const struct proto_limits *lim,
    struct proto_request *req, struct proto_error *err)
{
	memset(req, 0, sizeof(*req));
	req->delay_ms = -1;
	err->rid = NULL;
	err->limit = NULL;
	return proto_parse_fast(line, len, lim, req) ? 0 :
	    proto_parse_general(line, len, lim, req, err);
}

int
proto_parse_general(const char *line, size_t len, const struct proto_limits *lim,
    struct proto_request *req, struct proto_error *err)
{
	json_error_t jerr;
	json_t *op, *rid;
	const char *name;
	size_t mlen = 0;
	const char *nul;
	char *masked;

	memset(req, 0, sizeof(*req));
	req->delay_ms = -1;
	err->rid = NULL;
	err->limit = NULL;
	/* jansson skips a raw NUL after a number or literal ("1\0" loads as
	 * 1), and data is stored as written: no NUL byte is valid JSON. */
	if ((nul = memchr(line, '\0', len)) != NULL)
		return proto_fail(err, "bad_json", "invalid JSON at column %zu: a NUL byte",
		    (size_t)(nul - line) + 1);
	masked = proto_mask_data(line, len, &mlen);
	req->root = json_loadb(masked ? masked : line, masked ? mlen : len,
	    JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
	if (req->root == NULL && masked != NULL)	/* name the error in the original */
		req->root = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
	free(masked);
	if (req->root == NULL)
		return proto_fail(err, "bad_json", "invalid JSON at column %d: %s",
		    jerr.column, jerr.text);
	if (!json_is_object(req->root))
		return proto_fail(err, "bad_json", "a request must be a JSON object");
	rid = json_object_get(req->root, "rid");
	if (rid != NULL && !json_is_string(rid) && !json_is_integer(rid))
		return proto_fail(err, "bad_request", "rid: must be a string or an integer");
	req->rid = err->rid = rid;
	op = json_object_get(req->root, "op");
	if (op == NULL)
		return proto_fail(err, "bad_request", "op: required");
	if (!json_is_string(op))
		return proto_fail(err, "bad_request", "op: must be a string");
	name = json_string_value(op);
	if (strlen(name) != json_string_length(op))
		return proto_fail(err, "unknown_op", "unknown op (contains a NUL character)");
	for (req->op = 0; req->op < OP__COUNT; req->op++)
		if (strcmp(name, proto_op_names[req->op]) == 0)
			return proto_parse_op(req, line, len, lim, err);
	return proto_fail(err, "unknown_op", "unknown op \"%.64s\"", name);
}

int
proto_request_own(struct proto_request *req)
{
	for (size_t i = 0; i < req->nmsgs; i++) {
		struct proto_msg *m = &req->msgs[i];
		if (m->data_owned != NULL)
			continue;
		if ((m->data_owned = malloc(m->data_len + 1)) == NULL)
			return -1;
		memcpy(m->data_owned, m->data, m->data_len);
		m->data_owned[m->data_len] = '\0';
		m->data = m->data_owned;
	}
	return 0;
}

void
proto_request_free(struct proto_request *req)
{
	for (size_t i = 0; i < req->nmsgs; i++)
		free(req->msgs[i].data_owned);
	free(req->msgs);
	free(req->ids);
	free(req->text);
	if (req->root == NULL)
		json_decref(req->rid);	/* the fast path's own */
	json_decref(req->root);
	memset(req, 0, sizeof(*req));
}

/* Length of a valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t
proto_utf8_len(const unsigned char *s, size_t n)
{
	size_t need;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if ((s[0] & 0xe0) == 0xc0) { need = 2; cp = s[0] & 0x1f; }
	else if ((s[0] & 0xf0) == 0xe0) { need = 3; cp = s[0] & 0x0f; }
	else if ((s[0] & 0xf8) == 0xf0) { need = 4; cp = s[0] & 0x07; }
	else
		return 0;
	if (need > n)
		return 0;
	for (size_t i = 1; i < need; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((need == 2 && cp < 0x80) || (need == 3 && cp < 0x800) ||
	    (need == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return need;
}

/* A JSON string; invalid UTF-8 (from entries others wrote) becomes U+FFFD. */
void
proto_put_string(struct evbuffer *out, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t run = 0, i = 0;

	evbuffer_add(out, "\"", 1);
	while (i < len) {
		size_t n = proto_utf8_len(p + i, len - i);
		if (n > 0 && p[i] >= 0x20 && p[i] != '"' && p[i] != '\\') {
			i += n;
			run += n;
			continue;
		}
		evbuffer_add(out, p + i - run, run);
		run = 0;
		if (n == 0)
			evbuffer_add(out, "\\ufffd", 6);
		else if (p[i] == '"' || p[i] == '\\') {
			char esc[2] = { '\\', (char)p[i] };
			evbuffer_add(out, esc, 2);
		} else
			evbuffer_add_printf(out, "\\u%04x", p[i]);
		i++;
	}
	evbuffer_add(out, p + i - run, run);
	evbuffer_add(out, "\"", 1);
}

static int
proto_dump_cb(const char *buf, size_t size, void *data)
{
	return evbuffer_add(data, buf, size);
}

void
proto_put_json(struct evbuffer *out, const json_t *v)
{
	json_dump_callback(v, proto_dump_cb, out, JSON_COMPACT | JSON_ENCODE_ANY);
}

void
proto_ok_begin(struct evbuffer *out, const json_t *rid)
{
	if (rid != NULL) {
		evbuffer_add(out, "{\"rid\":", 7);
		proto_put_json(out, rid);
		evbuffer_add(out, ",\"ok\":true", 10);
	} else
		evbuffer_add(out, "{\"ok\":true", 10);
}

void
proto_end(struct evbuffer *out)
{
	evbuffer_add(out, "}\n", 2);
}

void
proto_reply_ok(struct evbuffer *out, const json_t *rid)
{
	proto_ok_begin(out, rid);
	proto_end(out);
}

void
proto_reply_error(struct evbuffer *out, const json_t *rid, const char *code,
    const char *message)
{
	evbuffer_add(out, "{", 1);
	if (rid != NULL) {
		evbuffer_add(out, "\"rid\":", 6);
		proto_put_json(out, rid);
		evbuffer_add(out, ",", 1);
	}
	evbuffer_add_printf(out, "\"ok\":false,\"error\":\"%s\",\"message\":", code);
	proto_put_string(out, message, strlen(message));
	proto_end(out);
}

void
proto_notice_bye(struct evbuffer *out, const char *reason)
{
	evbuffer_add(out, "{\"op\":\"bye\",\"reason\":", 21);
	proto_put_string(out, reason, strlen(reason));
	proto_end(out);
}

/* Decimal digits of v at p; returns the length. */
static size_t
proto_utoa(char *p, unsigned long long v)
{
	char tmp[24];
	size_t n = 0, i;

	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	for (i = 0; i < n; i++)
		p[i] = tmp[n - 1 - i];
	return n;
}

#define PROTO_PUT(lit) (memcpy(h + n, lit, sizeof(lit) - 1), n += sizeof(lit) - 1)

/* The hot path of consumers: one buffer for the fixed part, no printf.
 * Stream and group names are [A-Za-z0-9_.:-] (validated), so they need no
 * escaping; type and source may come from anyone and are escaped. */
void
proto_encode_delivery(struct evbuffer *out, const struct proto_delivery *d)
{
	char h[2 * CONFIG_MAX_STREAM + 200];
	size_t n = 0, sl = strlen(d->stream), gl = strlen(d->group), il = strlen(d->id);

	if (sl > CONFIG_MAX_STREAM || gl > CONFIG_MAX_STREAM || il > 44)
		return;
	PROTO_PUT("{\"op\":\"msg\",\"sub\":");
	n += proto_utoa(h + n, (unsigned long long)d->sub);
	PROTO_PUT(",\"stream\":\"");
	memcpy(h + n, d->stream, sl), n += sl;
	PROTO_PUT("\",\"group\":\"");
	memcpy(h + n, d->group, gl), n += gl;
	PROTO_PUT("\",\"id\":\"");
	memcpy(h + n, d->id, il), n += il;
	PROTO_PUT("\",\"attempt\":");
	n += proto_utoa(h + n, (unsigned long long)d->attempt);
	PROTO_PUT(",\"ts\":");
	n += proto_utoa(h + n, (unsigned long long)d->ts);
	evbuffer_add(out, h, n);
	if (d->type != NULL) {
		evbuffer_add(out, ",\"type\":", 8);
		proto_put_string(out, d->type, d->type_len);
	}
	if (d->source != NULL) {
		evbuffer_add(out, ",\"source\":", 10);
		proto_put_string(out, d->source, d->source_len);
	}
	evbuffer_add(out, ",\"data\":", 8);
	/* Valid JSON holds '\n' only as whitespace (entries others wrote):
	 * a delivery is one line. */
	for (const char *p = d->data_json, *end = p + d->data_len, *nl; p < end; p = nl + 1) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL) {
			evbuffer_add(out, p, (size_t)(end - p));
			break;
		}
		evbuffer_add(out, p, (size_t)(nl - p));
		evbuffer_add(out, " ", 1);
	}
	proto_end(out);
}
