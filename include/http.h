/*
 * http.h: GET /metrics and GET /health over libmicrohttpd, driven by the
 * main loop (MHD's epoll descriptor watched by libevent), so handlers run on
 * the loop's thread and read its state directly: no second thread.
 */
#ifndef HTTP_H
#define HTTP_H

struct event_base;

int  http_start(struct event_base *base, const char *addr);
void http_stop(void);

#endif
