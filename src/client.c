/*
 * client.c: the blocking streambus client declared in streambus.h.
 *
 * One sb_client owns one non-blocking socket.  Every wait goes through
 * poll() with a deadline, so a caller's timeout is honoured across EINTR,
 * partial reads and partial writes.  Input is framed in a read buffer that
 * grows only up to one maximal line; output is batched in a write buffer
 * that is flushed once it passes CLIENT_FLUSH_AT.
 *
 * Failures that leave the stream in an unknown state (EOF, I/O errors, a
 * line over the limit, a half-written line, an event queue overflow) are
 * sticky: every later call fails the same way.  A timeout is not sticky.
 */
#include "streambus.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_READ_INITIAL        (64u * 1024)  /* first read buffer size */
/* A maximal line plus its '\r' and '\n' must fit in the read buffer. */
#define CLIENT_READ_MAX            ((size_t)SB_CLIENT_MAX_LINE + 2)
#define CLIENT_FLUSH_AT            (64u * 1024)  /* queued bytes that force a write */
#define CLIENT_WRITE_KEEP          (1024u * 1024) /* larger write buffers shrink after a flush */
#define CLIENT_CONNECT_TIMEOUT_MS  10000
#define CLIENT_WRITE_TIMEOUT_MS    30000         /* default; see sb_set_write_timeout */
#define CLIENT_ERR_LEN             160

/* A delivery or notice that arrived while sb_request() waited for a reply. */
struct client_event {
    struct client_event *next;
    size_t               len;
    char                 line[];   /* NUL-terminated copy */
};

struct sb_client {
    int fd;

    /* Unread input is rbuf[rpos, rlen); the '\n' search resumes at rscan so
     * a long line arriving in pieces is scanned once. */
    char  *rbuf;
    size_t rcap, rpos, rlen, rscan;
    int    eof;

    char  *wbuf;
    size_t wcap, wlen;
    int    write_timeout_ms;

    struct client_event *ev_head, *ev_tail;
    size_t               ev_count;
    struct client_event *ev_current;   /* handed out by sb_read_line() */

    int  broken;                       /* errno of a sticky failure, or 0 */
    char errmsg[CLIENT_ERR_LEN];
};

/* ---- errors and time --------------------------------------------------- */

static void
client_note(sb_client *c, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
    va_end(ap);
    errno = err;
}

/* Marks the connection unusable: its framing can no longer be trusted. */
static void
client_break(sb_client *c, int err, const char *what)
{
    if (!c->broken) {
        c->broken = err;
        snprintf(c->errmsg, sizeof c->errmsg, "%s", what);
    }
    errno = c->broken;
}

static int
client_check(const sb_client *c)
{
    if (c->broken) {
        errno = c->broken;
        return -1;
    }
    return 0;
}

static int64_t
client_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* timeout_ms < 0 means no deadline, encoded as -1. */
static int64_t
client_deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : client_now_ms() + timeout_ms;
}

/* Waits for events on fd until the deadline: 1 ready, 0 timed out, -1
 * error.  EINTR restarts the wait with the time that is left. */
static int
client_wait(int fd, short events, int64_t deadline)
{
    struct pollfd pfd = { .fd = fd, .events = events };

    for (;;) {
        int timeout = -1;
        if (deadline >= 0) {
            int64_t left = deadline - client_now_ms();
            timeout = left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
        }
        int n = poll(&pfd, 1, timeout);
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* ---- connecting -------------------------------------------------------- */

static int
client_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* A blocking connect: a Unix listener with a full backlog makes a
 * non-blocking connect fail with EAGAIN, a blocking one waits. */
static int
client_connect_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };

    if (strlen(path) >= sizeof sun.sun_path) {
        snprintf(err, errlen, "%s: socket path too long", path);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int rc;
    do
        rc = connect(fd, (struct sockaddr *)&sun, sizeof sun);
    while (rc < 0 && errno == EINTR);
    if (rc < 0 || client_set_nonblock(fd) < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Splits "host:port" or "[v6]:port" into its parts (copied into host). */
static int
client_split_addr(const char *addr, char *host, size_t hostlen,
                  const char **port)
{
    const char *h = addr, *end;

    if (*addr == '[') {
        h = addr + 1;
        end = strchr(h, ']');
        if (!end || end[1] != ':')
            return -1;
        *port = end + 2;
    } else {
        end = strrchr(addr, ':');
        if (!end)
            return -1;
        *port = end + 1;
    }
    size_t n = (size_t)(end - h);
    if (n == 0 || n >= hostlen || **port == '\0')
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    return 0;
}

/* Connects one resolved address without blocking past the timeout. */
static int
client_connect_ai(const struct addrinfo *ai, int *errp)
{
    int fd = socket(ai->ai_family,
                    ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0) {
        *errp = errno;
        return -1;
    }
    /* An interrupted connect goes on in the background: wait for it. */
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 &&
        errno != EINPROGRESS && errno != EINTR) {
        *errp = errno;
        close(fd);
        return -1;
    }
    int r = client_wait(fd, POLLOUT, client_deadline(CLIENT_CONNECT_TIMEOUT_MS));
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (r <= 0)
        soerr = r == 0 ? ETIMEDOUT : errno;
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr) {
        *errp = soerr;
        close(fd);
        return -1;
    }
    /* Requests are small and latency matters more than packet count; the
     * write buffer already batches pipelined lines. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int
client_connect_tcp(const char *addr, char *err, size_t errlen)
{
    char host[256];
    const char *port;

    if (client_split_addr(addr, host, sizeof host, &port) < 0) {
        snprintf(err, errlen, "%s: expected HOST:PORT, [IPV6]:PORT or a socket path", addr);
        errno = EINVAL;
        return -1;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "%s: %s", addr, gai_strerror(gai));
        errno = EHOSTUNREACH;
        return -1;
    }
    int fd = -1, e = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = client_connect_ai(ai, &e);
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", addr, strerror(e));
        errno = e;
    }
    return fd;
}

sb_client *
sb_connect(const char *addr, char *err, size_t errlen)
{
    char dummy[1];

    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (!addr || !*addr) {
        snprintf(err, errlen, "empty address");
        errno = EINVAL;
        return NULL;
    }
    int fd = strchr(addr, '/') ? client_connect_unix(addr, err, errlen)
                               : client_connect_tcp(addr, err, errlen);
    if (fd < 0)
        return NULL;

    sb_client *c = calloc(1, sizeof *c);
    if (c)
        c->rbuf = malloc(CLIENT_READ_INITIAL);
    if (!c || !c->rbuf) {
        free(c);
        close(fd);
        snprintf(err, errlen, "out of memory");
        errno = ENOMEM;
        return NULL;
    }
    c->fd = fd;
    c->rcap = CLIENT_READ_INITIAL;
    c->write_timeout_ms = CLIENT_WRITE_TIMEOUT_MS;
    return c;
}

static void
client_drop_current(sb_client *c)
{
    free(c->ev_current);
    c->ev_current = NULL;
}

void
sb_close(sb_client *c)
{
    if (!c)
        return;
    client_drop_current(c);
    while (c->ev_head) {
        struct client_event *ev = c->ev_head;
        c->ev_head = ev->next;
        free(ev);
    }
    if (c->fd >= 0)
        close(c->fd);
    free(c->rbuf);
    free(c->wbuf);
    free(c);
}

int
sb_fd(const sb_client *c)
{
    return c ? c->fd : -1;
}

const char *
sb_strerror(const sb_client *c)
{
    if (!c)
        return "no connection";
    return c->errmsg[0] ? c->errmsg : "no error";
}

void
sb_set_write_timeout(sb_client *c, int timeout_ms)
{
    c->write_timeout_ms = timeout_ms;
}

size_t
sb_queued_events(const sb_client *c)
{
    return c->ev_count;
}

/* ---- writing ----------------------------------------------------------- */

static int
client_wreserve(sb_client *c, size_t more)
{
    if (c->wcap - c->wlen >= more)
        return 0;
    if (more > SIZE_MAX / 2 - c->wlen) {
        client_note(c, ENOMEM, "line too large to queue");
        return -1;
    }
    size_t cap = c->wcap ? c->wcap : CLIENT_FLUSH_AT;
    while (cap - c->wlen < more)
        cap *= 2;
    char *p = realloc(c->wbuf, cap);
    if (!p) {
        client_note(c, ENOMEM, "out of memory queueing a line");
        return -1;
    }
    c->wbuf = p;
    c->wcap = cap;
    return 0;
}

int
sb_flush(sb_client *c)
{
    size_t off = 0;

    if (client_check(c) < 0)
        return -1;
    while (off < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + off, c->wlen - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* The timeout bounds a stall, not the whole flush. */
            int r = client_wait(c->fd, POLLOUT, client_deadline(c->write_timeout_ms));
            if (r > 0)
                continue;
            if (r == 0) {
                client_break(c, ETIMEDOUT, "write timed out: the server is not reading");
                return -1;
            }
        }
        char msg[CLIENT_ERR_LEN];
        snprintf(msg, sizeof msg, "write: %s", strerror(n < 0 ? errno : EPIPE));
        client_break(c, n < 0 ? errno : EPIPE, msg);
        return -1;
    }
    c->wlen = 0;
    /* One huge line should not pin its buffer for the connection's life. */
    if (c->wcap > CLIENT_WRITE_KEEP) {
        free(c->wbuf);
        c->wbuf = NULL;
        c->wcap = 0;
    }
    return 0;
}

static int
client_maybe_flush(sb_client *c)
{
    return c->wlen > CLIENT_FLUSH_AT ? sb_flush(c) : 0;
}

int
sb_send_line(sb_client *c, const char *line, size_t len)
{
    if (client_check(c) < 0)
        return -1;
    int newline = len > 0 && line[len - 1] == '\n';
    if (client_wreserve(c, len + !newline) < 0)
        return -1;
    if (len > 0)
        memcpy(c->wbuf + c->wlen, line, len);
    c->wlen += len;
    if (!newline)
        c->wbuf[c->wlen++] = '\n';
    return client_maybe_flush(c);
}

static int
client_dump_cb(const char *buf, size_t size, void *data)
{
    sb_client *c = data;

    if (client_wreserve(c, size) < 0)
        return -1;
    memcpy(c->wbuf + c->wlen, buf, size);
    c->wlen += size;
    return 0;
}

int
sb_send_json(sb_client *c, const json_t *obj)
{
    if (client_check(c) < 0)
        return -1;
    if (!obj) {
        client_note(c, EINVAL, "no JSON value to send");
        return -1;
    }
    /* Serialize straight into the write buffer; undo a partial dump so a
     * failure never leaves half a line queued.  Compact output never
     * contains a raw newline (strings escape it). */
    size_t mark = c->wlen;
    if (json_dump_callback(obj, client_dump_cb, c,
                           JSON_COMPACT | JSON_ENCODE_ANY) < 0 ||
        client_wreserve(c, 1) < 0) {
        c->wlen = mark;
        if (errno != ENOMEM)
            client_note(c, EINVAL, "JSON value cannot be serialized");
        return -1;
    }
    c->wbuf[c->wlen++] = '\n';
    return client_maybe_flush(c);
}

/* ---- reading ----------------------------------------------------------- */

/* Makes room at the end of the read buffer: reclaims consumed bytes first,
 * grows (up to one maximal line) only when the unread part fills it. */
static int
client_rspace(sb_client *c)
{
    if (c->rpos == c->rlen) {
        c->rpos = c->rlen = c->rscan = 0;
        return 0;
    }
    if (c->rcap - c->rlen >= c->rcap / 4)
        return 0;
    if (c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rscan -= c->rpos;
        c->rpos = 0;
    }
    /* At the cap client_take_line() has already refused a longer line, so
     * some room is left. */
    if (c->rcap - c->rlen >= c->rcap / 4 || c->rcap >= CLIENT_READ_MAX)
        return 0;
    size_t cap = c->rcap * 2 > CLIENT_READ_MAX ? CLIENT_READ_MAX : c->rcap * 2;
    char *p = realloc(c->rbuf, cap);
    if (!p) {
        client_break(c, ENOMEM, "out of memory reading a line");
        return -1;
    }
    c->rbuf = p;
    c->rcap = cap;
    return 0;
}

/* One read from the socket, waiting until the deadline: 1 got bytes,
 * 0 timed out, -1 EOF or error (sticky). */
static int
client_fill(sb_client *c, int64_t deadline)
{
    if (client_rspace(c) < 0)
        return -1;
    for (;;) {
        ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (n > 0) {
            c->rlen += (size_t)n;
            return 1;
        }
        if (n == 0) {
            c->eof = 1;
            client_break(c, ECONNRESET, "connection closed by the server");
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            char msg[CLIENT_ERR_LEN];
            int e = errno;
            snprintf(msg, sizeof msg, "read: %s", strerror(e));
            client_break(c, e, msg);
            return -1;
        }
        int r = client_wait(c->fd, POLLIN, deadline);
        if (r == 0) {
            client_note(c, ETIMEDOUT, "timed out waiting for the server");
            return 0;
        }
        if (r < 0) {
            client_break(c, errno, "poll failed");
            return -1;
        }
    }
}

/* Takes the next complete line out of the buffer: 1 found, 0 need more
 * input, -1 line over the limit (sticky). */
static int
client_take_line(sb_client *c, char **line, size_t *len)
{
    char *nl = memchr(c->rbuf + c->rscan, '\n', c->rlen - c->rscan);

    if (!nl) {
        c->rscan = c->rlen;
        if (c->rlen - c->rpos >= CLIENT_READ_MAX) {
            client_break(c, EMSGSIZE, "line from the server too long");
            return -1;
        }
        return 0;
    }
    char *start = c->rbuf + c->rpos;
    size_t n = (size_t)(nl - start);
    c->rpos = c->rscan = (size_t)(nl - c->rbuf) + 1;
    if (n > 0 && start[n - 1] == '\r')
        n--;
    if (n > SB_CLIENT_MAX_LINE) {
        client_break(c, EMSGSIZE, "line from the server too long");
        return -1;
    }
    start[n] = '\0';
    *line = start;
    *len = n;
    return 1;
}

/* Next non-empty line from the socket (the event queue is not looked at).
 * The line lives in the read buffer until the next read. */
static const char *
client_next_raw(sb_client *c, size_t *len, int64_t deadline)
{
    char *line;

    if (client_check(c) < 0)
        return NULL;
    for (;;) {
        int r = client_take_line(c, &line, len);
        if (r < 0)
            return NULL;
        if (r > 0) {
            if (*len == 0)
                continue;      /* empty lines carry nothing, as on the server */
            return line;
        }
        if (client_fill(c, deadline) <= 0)
            return NULL;
    }
}

static int
client_queue_event(sb_client *c, const char *line, size_t len)
{
    if (c->ev_count >= SB_CLIENT_MAX_EVENTS) {
        client_break(c, ENOBUFS, "event queue full while waiting for a reply");
        return -1;
    }
    struct client_event *ev = malloc(sizeof *ev + len + 1);
    if (!ev) {
        client_break(c, ENOMEM, "out of memory queueing an event");
        return -1;
    }
    ev->next = NULL;
    ev->len = len;
    memcpy(ev->line, line, len + 1);
    if (c->ev_tail)
        c->ev_tail->next = ev;
    else
        c->ev_head = ev;
    c->ev_tail = ev;
    c->ev_count++;
    return 0;
}

static struct client_event *
client_pop_event(sb_client *c)
{
    struct client_event *ev = c->ev_head;

    if (ev) {
        c->ev_head = ev->next;
        if (!c->ev_head)
            c->ev_tail = NULL;
        c->ev_count--;
    }
    return ev;
}

const char *
sb_read_line(sb_client *c, size_t *len, int timeout_ms)
{
    size_t dummy;

    if (!len)
        len = &dummy;
    client_drop_current(c);
    c->ev_current = client_pop_event(c);
    if (c->ev_current) {
        *len = c->ev_current->len;
        return c->ev_current->line;
    }
    return client_next_raw(c, len, client_deadline(timeout_ms));
}

static json_t *
client_parse(sb_client *c, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *j = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);

    /* data may hold integers beyond 64 bits: take them as reals */
    if (!j)
        j = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL |
                       JSON_DECODE_INT_AS_REAL, &jerr);
    if (!j)
        client_note(c, EPROTO, "bad JSON from the server: %s", jerr.text);
    return j;
}

json_t *
sb_read_json(sb_client *c, int timeout_ms)
{
    size_t len;
    const char *line = sb_read_line(c, &len, timeout_ms);

    return line ? client_parse(c, line, len) : NULL;
}

/* Replies carry "ok"; deliveries and notices never do (protocol.md). */
static int
client_is_reply(const json_t *j)
{
    return json_is_object(j) && json_object_get(j, "ok") != NULL;
}

json_t *
sb_request(sb_client *c, const json_t *obj, int timeout_ms)
{
    client_drop_current(c);
    if (sb_send_json(c, obj) < 0 || sb_flush(c) < 0)
        return NULL;

    int64_t deadline = client_deadline(timeout_ms);
    for (;;) {
        size_t len;
        const char *line = client_next_raw(c, &len, deadline);
        if (!line)
            return NULL;
        json_t *j = client_parse(c, line, len);
        if (!j || !json_is_object(j)) {
            /* We cannot tell whether this was our reply: stop trusting the
             * connection rather than mismatch replies later. */
            json_decref(j);
            client_break(c, EPROTO, "server sent a line that is not a JSON object");
            return NULL;
        }
        if (client_is_reply(j))
            return j;
        json_decref(j);
        if (client_queue_event(c, line, len) < 0)
            return NULL;
    }
}

json_t *
sb_next_event(sb_client *c, int timeout_ms)
{
    int64_t deadline = client_deadline(timeout_ms);

    client_drop_current(c);
    struct client_event *ev = client_pop_event(c);
    if (ev) {
        json_t *j = client_parse(c, ev->line, ev->len);
        free(ev);
        return j;
    }
    for (;;) {
        size_t len;
        const char *line = client_next_raw(c, &len, deadline);
        if (!line)
            return NULL;
        json_t *j = client_parse(c, line, len);
        if (!j)
            return NULL;
        if (!client_is_reply(j))
            return j;
        json_decref(j);
    }
}
