/*
 * proto_same.h: whether two parsed requests say the same, for the tests
 * that hold the fast parser to the general one (check_proto, fuzz_proto).
 * Compares what a pub or an ack carries.
 */
#ifndef PROTO_SAME_H
#define PROTO_SAME_H

#include <stdio.h>
#include <string.h>

#include "proto.h"

static int
proto_same_str(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* 1 when a and b are the same pub or ack; else 0 and why. */
static int
proto_same_request(const struct proto_request *a, const struct proto_request *b,
    char *why, size_t whylen)
{
	const char *what = NULL;

	if (a->op != b->op || a->batch != b->batch || a->nmsgs != b->nmsgs)
		what = "op, batch or message count";
	else if (!proto_same_str(a->stream, b->stream))
		what = "stream";
	else if ((a->rid == NULL) != (b->rid == NULL) ||
	    (a->rid != NULL && !json_equal(a->rid, b->rid)))
		what = "rid";
	else if (a->sub != b->sub || a->nids != b->nids)
		what = "sub or id count";
	for (size_t i = 0; what == NULL && i < a->nids; i++)
		if (!proto_same_str(a->ids[i], b->ids[i]))
			what = "ids";
	for (size_t i = 0; what == NULL && i < a->nmsgs; i++) {
		const struct proto_msg *x = &a->msgs[i], *y = &b->msgs[i];
		if (x->data_len != y->data_len || memcmp(x->data, y->data, x->data_len) != 0)
			what = "data";
		else if (!proto_same_str(x->type, y->type))
			what = "type";
		else if (!proto_same_str(x->msgid, y->msgid))
			what = "msgid";
	}
	if (what != NULL)
		snprintf(why, whylen, "%s differs", what);
	return what == NULL;
}

#endif
