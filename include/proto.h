/*
 * proto.h: the wire protocol as pure functions over bytes: line framing,
 * request parsing/validation, and reply/delivery encoding.  No sockets and
 * no global state, so tests feed it split and hostile input.
 */
#ifndef PROTO_H
#define PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

struct evbuffer;

#define PROTO_VERSION      1
#define PROTO_MAX_IDS      10000	/* ids in one ack/nack/touch */
#define PROTO_MAX_NAME     200	/* group, consumer, type, msgid, hello name */
#define PROTO_MAX_PREFETCH 10000
#define PROTO_MAX_REASON   1000
#define PROTO_MAX_DLQ_LIST 1000	/* dead letters listed by one dlq */

/* Framing: find the next line in buf[0..len). */
enum proto_frame {
	PROTO_FRAME_NEED_MORE,	/* no complete line; keep the bytes */
	PROTO_FRAME_LINE,	/* *line_len bytes at buf are a line (no \r\n) */
	PROTO_FRAME_TOO_LONG,	/* a line exceeded max_line: reply once */
	PROTO_FRAME_SKIPPED,	/* bytes of an over-long line dropped */
};

struct proto_framer {
	int discarding;		/* inside an over-long line, dropping to \n */
};

/* *consumed is how many bytes of buf the caller drops. */
enum proto_frame proto_frame_next(struct proto_framer *f, const char *buf,
    size_t len, size_t max_line, size_t *line_len, size_t *consumed);

enum proto_op {
	OP_HELLO, OP_PING, OP_PUB, OP_SUB, OP_ACK, OP_NACK, OP_TOUCH, OP_UNSUB,
	OP_STATS, OP_BYE, OP_DLQ, OP_REPLAY, OP_RANGE, OP__COUNT
};

struct proto_msg {
	const char *data;	/* JSON text of "data": the client's own bytes */
	size_t      data_len;
	char       *data_owned;	/* set when data is a copy we must free */
	const char *type;	/* borrowed from the request's JSON, or NULL */
	const char *msgid;
};

struct proto_request {
	enum proto_op op;
	json_t     *root;	/* owns every borrowed string below; NULL from
				 * the fast path, whose text owns them */
	char       *text;
	json_t     *rid;	/* NULL when absent; the request's own without root */
	const char *stream;
	/* hello */
	const char *name, *token;
	/* pub */
	struct proto_msg *msgs;
	size_t      nmsgs;
	int         batch;
	/* sub */
	const char *group, *consumer, *from;
	long        prefetch;	/* 0 = stream default */
	/* ack, nack, touch, unsub */
	long        sub;
	const char **ids;
	size_t      nids;
	long        delay_ms;	/* -1 = stream default */
	const char *reason;
	int         dead;
	/* dlq, replay */
	long        count;
	long        last;	/* range: the newest N entries */
	int         all;
};

struct proto_limits {
	size_t max_payload;
	size_t max_batch;
};

struct proto_error {
	const char *code;	/* protocol error code */
	char        message[256];
	json_t     *rid;	/* borrowed from req->root, NULL for bad_json */
	const char *limit;	/* the limit a refused request went over, or NULL */
};

/* 0 and *req filled, or -1 and *err (with req->root kept for the rid;
 * always call proto_request_free). */
int  proto_parse_request(const char *line, size_t len, const struct proto_limits *lim,
    struct proto_request *req, struct proto_error *err);
void proto_request_free(struct proto_request *req);
/* The two parsers behind proto_parse_request, apart for the tests.  The
 * fast one reads only plain single pubs and acks: 1 and *req filled (which
 * must be zeroed before), or 0 and *req zeroed, for the general one, which
 * reads everything. */
int  proto_parse_fast(const char *line, size_t len, const struct proto_limits *lim,
    struct proto_request *req);
int  proto_parse_general(const char *line, size_t len, const struct proto_limits *lim,
    struct proto_request *req, struct proto_error *err);
/* Make a request independent of the line it was parsed from. */
int  proto_request_own(struct proto_request *req);
const char *proto_op_name(enum proto_op op);

/* Encoding into an evbuffer (used as a growable byte buffer). */
void proto_put_string(struct evbuffer *out, const char *s, size_t len);
void proto_put_json(struct evbuffer *out, const json_t *v);
/* {"rid":..,"ok":true  -- the caller appends fields and proto_end(). */
void proto_ok_begin(struct evbuffer *out, const json_t *rid);
void proto_end(struct evbuffer *out);
void proto_reply_ok(struct evbuffer *out, const json_t *rid);
void proto_reply_error(struct evbuffer *out, const json_t *rid, const char *code,
    const char *message);
void proto_notice_bye(struct evbuffer *out, const char *reason);

/* One delivery line.  data/fields: data_json is JSON text used as is. */
struct proto_delivery {
	long        sub;
	const char *stream, *group, *id;
	long        attempt;
	long long   ts;
	const char *type, *source;
	size_t      type_len, source_len;
	const char *data_json;
	size_t      data_len;
};
void proto_encode_delivery(struct evbuffer *out, const struct proto_delivery *d);

/* 1 when text[0..len) is exactly one valid JSON value. */
int proto_json_valid(const char *text, size_t len);

/* Stream ids "MS-SEQ". */
int proto_parse_id(const char *s, uint64_t *ms, uint64_t *seq);

#endif
