/*
 * redis.h: one Redis connection ("link") over hiredis async on the loop,
 * with its own handshake (AUTH, SELECT, PING), reconnection with capped
 * exponential backoff and jitter, and an inflight count.  hiredis 0.14 does
 * not reconnect: a lost link answers every pending command with a NULL reply
 * and is rebuilt from scratch.
 */
#ifndef REDIS_H
#define REDIS_H

#include <stddef.h>
#include <hiredis/hiredis.h>

#include "config.h"

struct event_base;
struct redis_link;

/* reply is NULL when the link was lost before Redis answered. */
typedef void redis_cb(redisReply *reply, void *arg);
typedef void redis_state_cb(struct redis_link *link, int up, void *arg);
/* Cluster: the link that serves slot at host:port (ask: for one command
 * only, while the slot migrates), or NULL. */
typedef struct redis_link *redis_redirect_cb(struct redis_link *from, int slot,
    const char *host, int port, int ask);

enum redis_state { REDIS_DOWN, REDIS_CONNECTING, REDIS_HANDSHAKE, REDIS_UP, REDIS_CLOSED };

struct redis_link *redis_link_new(struct event_base *base, const char *name,
    redis_state_cb *on_state, void *arg);
/* Connect (or reconnect) with the current settings. */
void redis_link_start(struct redis_link *l);
/* Drop the connection; pending commands get NULL; reconnects later. */
void redis_link_reset(struct redis_link *l, const char *why);
/* Close for good: pending commands get NULL, no reconnect, then free. */
void redis_link_free(struct redis_link *l);
/* Disconnect and stay down until redis_link_start or a new address. */
void redis_link_stop(struct redis_link *l);
/* Connect to this server instead of the shared one (reconnects if needed). */
void redis_link_set_addr(struct redis_link *l, const char *host, int port);
int redis_link_same_server(const struct redis_link *a, const struct redis_link *b);
/* Commands answered MOVED or ASK go on to the link where() names: each
 * command is kept until answered. */
void redis_link_redirects(struct redis_link *l, redis_redirect_cb *where);

/* Both take NULL (not up, nothing in flight). */
int redis_link_up(const struct redis_link *l);
size_t redis_link_inflight(const struct redis_link *l);
const char *redis_link_name(const struct redis_link *l);

/* -1 when the link is NULL or not up (nothing sent). */
int redis_cmd_argv(struct redis_link *l, redis_cb *cb, void *arg, int argc,
    const char **argv, const size_t *argvlen);
int redis_cmd(struct redis_link *l, redis_cb *cb, void *arg, const char *fmt, ...);
/* The same for a command whose order matters (a pub): one answered
 * TRYAGAIN is not retried, so that none sent after it overtakes it. */
int redis_cmd_argv_ordered(struct redis_link *l, redis_cb *cb, void *arg, int argc,
    const char **argv, const size_t *argvlen);

/* A command in RESP, as redisFormatCommandArgv() makes it (argvlen NULL:
 * NUL-terminated arguments): its length and *out (free()), or -1. */
int  redis_format_argv(char **out, int argc, const char **argv, const size_t *argvlen);

/* Where to connect and how to log in; applies to links started after. */
void redis_configure(const struct config *cfg);
/* A new password (or none) for the links that connect from now on. */
void redis_set_password(const char *password);
/* Sentinel's answer: reconnect every link to this master. */
void redis_set_master(const char *host, int port);
/* Number of links connected or connecting. */
int redis_link_count(void);
void redis_cleanup(void);

/* Reply helpers. */
int redis_reply_is_error(const redisReply *r);
int redis_reply_error_is(const redisReply *r, const char *prefix);
/* An error of Redis in motion (failover, slot migration, loading, a read
 * ended by a moved key): the same command later will likely work. */
int redis_reply_transient(const redisReply *r);

#endif
