/* auth.c: token file loading and permission checks (see auth.h). */
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "auth.h"

static void
auth_free_list(char **list)
{
	for (size_t i = 0; list != NULL && list[i] != NULL; i++)
		free(list[i]);
	free(list);
}

static void
auth_free_token(struct auth_token *t)
{
	free(t->secret);
	auth_free_list(t->pub);
	auth_free_list(t->sub);
	free(t);
}

void
auth_free(struct auth_table *t)
{
	struct auth_token *k, *next;

	if (t == NULL)
		return;
	for (k = t->tokens; k != NULL; k = next) {
		next = k->next;
		auth_free_token(k);
	}
	free(t);
}

/* "a,b*,c" -> {"a","b*","c",NULL} */
static char **
auth_split_globs(const char *text)
{
	size_t n = 1, i = 0;
	char **list, *copy, *tok, *save;

	for (const char *p = text; *p; p++)
		n += *p == ',';
	if ((list = calloc(n + 1, sizeof(*list))) == NULL || (copy = strdup(text)) == NULL) {
		free(list);
		return NULL;
	}
	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save))
		if ((list[i] = strdup(tok)) != NULL)
			i++;
	free(copy);
	return list;
}

static int
auth_parse_line(struct auth_table *t, char *line, char *err, size_t errlen,
    const char *path, int lineno)
{
	char *save, *word, *hash = strchr(line, '#');
	struct auth_token *k;

	if (hash != NULL)
		*hash = '\0';
	if ((word = strtok_r(line, " \t\r\n", &save)) == NULL)
		return 0;
	if (strlen(word) > AUTH_MAX_TOKEN || (k = calloc(1, sizeof(*k))) == NULL) {
		snprintf(err, errlen, "%s:%d: token too long", path, lineno);
		return -1;
	}
	k->secret = strdup(word);
	while ((word = strtok_r(NULL, " \t\r\n", &save)) != NULL) {
		char ***slot = strncmp(word, "pub=", 4) == 0 ? &k->pub :
		    strncmp(word, "sub=", 4) == 0 ? &k->sub : NULL;
		if (slot == NULL || *slot != NULL) {
			snprintf(err, errlen, "%s:%d: want pub=GLOBS and/or sub=GLOBS, got \"%.64s\"",
			    path, lineno, word);
			auth_free_token(k);
			return -1;
		}
		*slot = auth_split_globs(word + 4);
	}
	k->next = t->tokens;
	t->tokens = k;
	return 0;
}

/* A file of secrets, opened only when no other user can read it (or
 * write it: it could be swapped). */
static FILE *
auth_open_private(const char *path, const char *what, char *err, size_t errlen)
{
	struct stat st;
	FILE *f = fopen(path, "r");

	if (f == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) ||
	    (st.st_mode & (S_IRWXG | S_IRWXO))) {
		snprintf(err, errlen, "%s: %s must be a file that only its owner may read "
		    "or write (chmod 600)", path, what);
		fclose(f);
		return NULL;
	}
	return f;
}

char *
auth_read_secret(const char *path, char *err, size_t errlen)
{
	char line[AUTH_MAX_LINE];
	char *secret = NULL;
	FILE *f = auth_open_private(path, "password file", err, errlen);

	if (f == NULL)
		return NULL;
	setvbuf(f, NULL, _IONBF, 0);	/* no copy of the secret in a stdio buffer */
	if (fgets(line, sizeof(line), f) == NULL)
		line[0] = '\0';
	line[strcspn(line, "\r\n")] = '\0';
	if (line[0] == '\0')
		snprintf(err, errlen, "%s: password file: the first line is empty", path);
	else if (strlen(line) > AUTH_MAX_TOKEN)
		snprintf(err, errlen, "%s: password file: longer than %d bytes", path,
		    AUTH_MAX_TOKEN);
	else if ((secret = strdup(line)) == NULL)
		snprintf(err, errlen, "%s: out of memory", path);
	explicit_bzero(line, sizeof(line));
	fclose(f);
	return secret;
}

struct auth_table *
auth_load(const char *path, char *err, size_t errlen)
{
	struct auth_table *t;
	char line[AUTH_MAX_LINE];
	int lineno = 0;
	FILE *f = auth_open_private(path, "token file", err, errlen);

	if (f == NULL)
		return NULL;
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		fclose(f);
		return NULL;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		if (auth_parse_line(t, line, err, errlen, path, lineno) != 0) {
			auth_free(t);
			fclose(f);
			return NULL;
		}
	}
	fclose(f);
	return t;
}

/* Constant time in the secret's content: every byte of the longer string
 * is looked at whatever matches. */
static int
auth_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), n = la > lb ? la : lb;
	unsigned char diff = la != lb;

	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char)(i < la ? a[i] : 0) ^ (unsigned char)(i < lb ? b[i] : 0);
	return diff == 0;
}

const struct auth_token *
auth_find(const struct auth_table *t, const char *secret)
{
	const struct auth_token *found = NULL;

	for (const struct auth_token *k = t->tokens; k != NULL; k = k->next)
		if (auth_equal(k->secret, secret) && found == NULL)
			found = k;
	return found;
}

static int
auth_match(char *const *globs, const char *stream)
{
	for (size_t i = 0; globs != NULL && globs[i] != NULL; i++)
		if (fnmatch(globs[i], stream, 0) == 0)
			return 1;
	return 0;
}

int
auth_allows(const struct auth_token *tok, enum proto_op op, const char *stream)
{
	if (tok == NULL)
		return 0;
	/* replay publishes again; dlq reads what subscribers failed on */
	if (op == OP_PUB || op == OP_REPLAY)
		return auth_match(tok->pub, stream);
	if (op == OP_SUB || op == OP_DLQ || op == OP_RANGE)
		return auth_match(tok->sub, stream);
	return 1;
}
