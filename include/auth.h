/*
 * auth.h: the token file of server.auth_tokens.  One token per line, then
 * "pub=" and "sub=" lists of globs over stream names; '#' starts a comment.
 * Tokens are compared in constant time.  Also the password file of
 * redis.password_file.  Both files are refused when other users can read
 * them.
 */
#ifndef AUTH_H
#define AUTH_H

#include <stddef.h>

#include "proto.h"

#define AUTH_MAX_TOKEN   4096
#define AUTH_MAX_LINE    8192

struct auth_token {
	char  *secret;
	char **pub, **sub;	/* NULL-terminated glob lists */
	struct auth_token *next;
};

struct auth_table {
	struct auth_token *tokens;
};

/* Refuses a file that group or other users can read. */
struct auth_table *auth_load(const char *path, char *err, size_t errlen);
void auth_free(struct auth_table *t);
/* The first line of a password file, without its line end (malloc'd), or
 * NULL and *err. */
char *auth_read_secret(const char *path, char *err, size_t errlen);
const struct auth_token *auth_find(const struct auth_table *t, const char *secret);
/* May this token do op (pub/sub need a matching glob)? */
int  auth_allows(const struct auth_token *tok, enum proto_op op, const char *stream);

#endif
