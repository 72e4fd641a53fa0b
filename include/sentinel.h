/*
 * sentinel.h: find the Redis master through Redis Sentinel
 * (redis.sentinels, redis.master_name) and follow +switch-master.
 */
#ifndef SENTINEL_H
#define SENTINEL_H

struct event_base;
struct config;

/* 0 when not configured or started; -1 on a bad sentinel list. */
int  sentinel_start(struct event_base *base, const struct config *cfg);
void sentinel_stop(void);

#endif
