/*
 * cli.c: streambus-cli, a command-line client for streambusd built on the
 * blocking client in client.c (streambus.h).
 *
 *   streambus-cli [-s ADDR] [-t TOKEN] [-n NAME] [-w MS] COMMAND ...
 *
 * Exit status: 0 success, 1 runtime failure, 2 usage error.  Results go to
 * stdout; errors, notes and summaries to stderr, prefixed "streambus-cli: ",
 * so the output of pub and sub can be piped.
 */
#include "streambus.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLI_NAME               "streambus-cli"
#define CLI_DEFAULT_ADDR       "127.0.0.1:7070"
#define CLI_DEFAULT_TIMEOUT_MS 10000
#define CLI_PUB_WINDOW         1024    /* pipelined pubs awaiting a reply */
#define CLI_STDIN_INITIAL      (64u * 1024)
#define CLI_STDIN_MAX_LINE     ((size_t)SB_CLIENT_MAX_LINE)
#define CLI_SUB_SLICE_MS       250     /* how often sub looks at SIGINT */
#define CLI_ACK_BATCH          256     /* ids per ack request */
#define CLI_STATS_COLS         7

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

struct cli_global {
    const char *addr;
    const char *token;
    const char *name;
    int         timeout_ms;
};

static volatile sig_atomic_t cli_interrupted;

static const char cli_usage_text[] =
"Usage: " CLI_NAME " [-s ADDR] [-t TOKEN] [-n NAME] [-w MS] COMMAND [ARGS]\n"
"\n"
"Commands:\n"
"  ping                     check the server; print the round-trip time\n"
"  pub STREAM JSON [--type T] [--msgid ID]\n"
"                           publish one message; print its id\n"
"  pub STREAM - [--type T]  publish one JSON value per line of stdin,\n"
"                           pipelined; print each id, then a summary\n"
"  sub STREAM GROUP [--consumer C] [--prefetch N] [--from new|all|ID]\n"
"                   [--ack|--no-ack] [--json] [--count N]\n"
"                           print deliveries (acknowledging each unless\n"
"                           --no-ack) until --count N, SIGINT or server bye\n"
"  stats [STREAM] [--json]  streams with their groups, pending and lag\n"
"\n"
"Options:\n"
"  -s, --server ADDR   HOST:PORT, [IPV6]:PORT or a Unix socket path\n"
"                      (default: $STREAMBUS_ADDR, else " CLI_DEFAULT_ADDR ")\n"
"  -t, --token TOKEN   token sent in hello (default: $STREAMBUS_TOKEN)\n"
"  -n, --name NAME     client name sent in hello (default: " CLI_NAME ")\n"
"  -w, --timeout MS    how long to wait for a reply (default: 10000)\n"
"  -h, --help          show this help\n"
"\n"
"Exit status: 0 success, 1 runtime failure, 2 usage error.\n";

/* ---- messages ---------------------------------------------------------- */

static void
cli_err(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);   /* keep stdout and stderr in order on a terminal */
    fputs(CLI_NAME ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int
cli_usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs(CLI_NAME ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry '" CLI_NAME " --help'.\n", stderr);
    return CLI_USAGE;
}

/* Prints an error reply as "CODE: MESSAGE"; returns -1 for one, 0 for ok. */
static int
cli_reply_failed(const json_t *reply, const char *context)
{
    if (json_is_true(json_object_get(reply, "ok")))
        return 0;
    const char *code = json_string_value(json_object_get(reply, "error"));
    const char *msg = json_string_value(json_object_get(reply, "message"));
    if (context)
        cli_err("%s: %s: %s", context, code ? code : "error", msg ? msg : "");
    else
        cli_err("%s: %s", code ? code : "error", msg ? msg : "");
    return -1;
}

static double
cli_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Parses a whole decimal in [min, max]. */
static int
cli_parse_long(const char *s, long min, long max, long *out)
{
    char *end;

    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Reports a getopt failure (opterr is off so the wording is ours). */
static int
cli_bad_option(int ch, char **argv)
{
    const char *arg = argv[optind - 1];

    if (ch == ':')
        return cli_usage_error("option '%s' needs a value", arg);
    if (optopt && arg[0] == '-' && arg[1] != '-')
        return cli_usage_error("unknown option '-%c'", optopt);
    return cli_usage_error("unknown option '%s'", arg);
}

/* ---- connection -------------------------------------------------------- */

/* Connects and says hello; NULL (error printed) on failure. */
static sb_client *
cli_open(const struct cli_global *g)
{
    char err[256];
    sb_client *c = sb_connect(g->addr, err, sizeof err);

    if (!c) {
        cli_err("cannot connect to %s", err);
        return NULL;
    }
    json_t *req = json_pack("{s:s, s:s}", "op", "hello", "name", g->name);
    if (g->token && *g->token)
        json_object_set_new(req, "token", json_string(g->token));
    json_t *reply = sb_request(c, req, g->timeout_ms);
    json_decref(req);
    if (!reply) {
        cli_err("hello: %s", sb_strerror(c));
        sb_close(c);
        return NULL;
    }
    int failed = cli_reply_failed(reply, "hello");
    json_decref(reply);
    if (failed) {
        sb_close(c);
        return NULL;
    }
    return c;
}

/* ---- ping -------------------------------------------------------------- */

static int
cli_cmd_ping(const struct cli_global *g, int argc, char **argv)
{
    (void)argv;
    if (argc > 1)
        return cli_usage_error("ping takes no arguments");
    sb_client *c = cli_open(g);
    if (!c)
        return CLI_FAIL;

    json_t *req = json_pack("{s:s}", "op", "ping");
    double t0 = cli_now_ms();
    json_t *reply = sb_request(c, req, g->timeout_ms);
    double rtt = cli_now_ms() - t0;
    int rc = CLI_FAIL;
    if (!reply)
        cli_err("no answer to ping: %s", sb_strerror(c));
    else if (cli_reply_failed(reply, NULL) == 0) {
        printf("PONG %.3f ms\n", rtt);
        rc = CLI_OK;
    }
    json_decref(reply);
    json_decref(req);
    sb_close(c);
    return rc;
}

/* ---- pub: one message -------------------------------------------------- */

static int
cli_pub_one(const struct cli_global *g, const char *stream, const char *text,
            const char *type, const char *msgid)
{
    json_error_t jerr;
    json_t *data = json_loads(text, JSON_DECODE_ANY, &jerr);

    if (!data)
        return cli_usage_error("invalid JSON data: %s", jerr.text);
    sb_client *c = cli_open(g);
    if (!c) {
        json_decref(data);
        return CLI_FAIL;
    }
    json_t *req = json_pack("{s:s, s:s, s:o}", "op", "pub", "stream", stream,
                            "data", data);
    if (type)
        json_object_set_new(req, "type", json_string(type));
    if (msgid)
        json_object_set_new(req, "msgid", json_string(msgid));

    json_t *reply = sb_request(c, req, g->timeout_ms);
    int rc = CLI_FAIL;
    if (!reply)
        cli_err("pub: no reply (the message may or may not be stored): %s",
                sb_strerror(c));
    else if (cli_reply_failed(reply, NULL) == 0) {
        const char *id = json_string_value(json_object_get(reply, "id"));
        printf("%s\n", id ? id : "?");
        if (json_is_true(json_object_get(reply, "dup")))
            cli_err("note: msgid already published; not stored again");
        rc = CLI_OK;
    }
    json_decref(reply);
    json_decref(req);
    sb_close(c);
    return rc;
}

/* ---- pub: pipelined from stdin ----------------------------------------- */

/* A bounded line reader over a file descriptor.  Lines longer than
 * CLI_STDIN_MAX_LINE are reported and skipped up to the next '\n'. */
struct cli_lines {
    int    fd;
    char  *buf;
    size_t cap, pos, len, scan;
    int    eof;
    int    skipping;      /* inside an over-long line */
    long   lineno;        /* number of the line last returned */
};

static int
cli_lines_init(struct cli_lines *in, int fd)
{
    memset(in, 0, sizeof *in);
    in->fd = fd;
    in->cap = CLI_STDIN_INITIAL;
    in->buf = malloc(in->cap);
    return in->buf ? 0 : -1;
}

/* 1: a line (NUL-terminated, '\r' removed); 0: need more input (or done
 * at EOF); -1: line in->lineno was too long and is being skipped. */
static int
cli_lines_next(struct cli_lines *in, char **line, size_t *len)
{
    for (;;) {
        char *nl = memchr(in->buf + in->scan, '\n', in->len - in->scan);
        if (!nl && in->skipping) {
            in->pos = in->scan = in->len;
            if (!in->eof)
                return 0;
            in->skipping = 0;          /* the long line ended at EOF */
            continue;
        }
        if (!nl) {
            in->scan = in->len;
            if (in->len - in->pos > CLI_STDIN_MAX_LINE) {
                in->pos = in->scan = in->len;
                in->skipping = 1;
                in->lineno++;
                return -1;
            }
            if (!in->eof || in->pos == in->len)
                return 0;
            nl = in->buf + in->len;    /* a last line without '\n' */
        }
        char *start = in->buf + in->pos;
        size_t n = (size_t)(nl - start);
        in->pos = in->scan = nl < in->buf + in->len ? (size_t)(nl - in->buf) + 1
                                                    : in->len;
        if (in->skipping) {
            in->skipping = 0;
            continue;
        }
        in->lineno++;
        if (n > 0 && start[n - 1] == '\r')
            n--;
        if (n > CLI_STDIN_MAX_LINE) {
            return -1;
        }
        start[n] = '\0';   /* nl or the spare byte kept by cli_lines_fill */
        *line = start;
        *len = n;
        return 1;
    }
}

/* One read(): 1 got bytes, 0 EOF, -1 error. */
static int
cli_lines_fill(struct cli_lines *in)
{
    if (in->pos == in->len)
        in->pos = in->len = in->scan = 0;
    else if (in->pos > 0) {
        memmove(in->buf, in->buf + in->pos, in->len - in->pos);
        in->len -= in->pos;
        in->scan -= in->pos;
        in->pos = 0;
    }
    /* Keep one spare byte to terminate a last line that has no '\n'. */
    if (in->cap - in->len < 2) {
        size_t cap = in->cap * 2;
        char *p = realloc(in->buf, cap);
        if (!p) {
            errno = ENOMEM;
            return -1;
        }
        in->buf = p;
        in->cap = cap;
    }
    for (;;) {
        ssize_t n = read(in->fd, in->buf + in->len, in->cap - in->len - 1);
        if (n > 0) {
            in->len += (size_t)n;
            return 1;
        }
        if (n == 0) {
            in->eof = 1;
            return 0;
        }
        if (errno != EINTR)
            return -1;
    }
}

struct cli_pub {
    const char *stream;
    const char *type;
    long        outstanding;   /* sent, reply not yet read */
    long        ok, dups, failed;
};

static int
cli_blank(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return *s == '\0';
}

/* Queues the pub for one input line; 0 queued or skipped, -1 connection
 * failure. */
static int
cli_pub_send(sb_client *c, struct cli_pub *p, const char *line, size_t len,
             long lineno)
{
    json_error_t jerr;

    if (cli_blank(line))
        return 0;
    json_t *data = json_loadb(line, len, JSON_DECODE_ANY, &jerr);
    if (!data) {
        cli_err("line %ld: invalid JSON: %s", lineno, jerr.text);
        p->failed++;
        return 0;
    }
    /* rid is the input line number, so a reply names its line. */
    json_t *req = json_pack("{s:s, s:I, s:s, s:o}", "op", "pub", "rid",
                            (json_int_t)lineno, "stream", p->stream,
                            "data", data);
    if (p->type)
        json_object_set_new(req, "type", json_string(p->type));
    int r = sb_send_json(c, req);
    json_decref(req);
    if (r < 0)
        return -1;
    p->outstanding++;
    return 0;
}

static void
cli_pub_reply(struct cli_pub *p, json_t *j)
{
    if (!json_is_object(j))
        return;
    if (!json_object_get(j, "ok")) {
        const char *op = json_string_value(json_object_get(j, "op"));
        if (op && strcmp(op, "bye") == 0) {
            const char *why = json_string_value(json_object_get(j, "reason"));
            cli_err("server is closing the connection: %s", why ? why : "?");
        }
        return;
    }
    p->outstanding--;
    json_int_t line = json_integer_value(json_object_get(j, "rid"));
    if (json_is_true(json_object_get(j, "ok"))) {
        const char *id = json_string_value(json_object_get(j, "id"));
        printf("%s\n", id ? id : "?");
        p->ok++;
        if (json_is_true(json_object_get(j, "dup")))
            p->dups++;
        return;
    }
    char context[64];
    snprintf(context, sizeof context, "line %lld", (long long)line);
    cli_reply_failed(j, context);
    p->failed++;
}

/* Reads every reply already available; -1 when the connection failed. */
static int
cli_pub_drain(sb_client *c, struct cli_pub *p)
{
    json_t *j;

    while ((j = sb_read_json(c, 0)) != NULL) {
        cli_pub_reply(p, j);
        json_decref(j);
    }
    return errno == ETIMEDOUT ? 0 : -1;
}

/* Waits for stdin (when want_in) and/or the server; -1 on timeout. */
static int
cli_pub_wait(sb_client *c, struct cli_lines *in, int want_in,
             const struct cli_pub *p, int timeout_ms)
{
    struct pollfd pfd[2];
    int n = 0;

    if (want_in)
        pfd[n++] = (struct pollfd){ .fd = in->fd, .events = POLLIN };
    if (p->outstanding > 0)
        pfd[n++] = (struct pollfd){ .fd = sb_fd(c), .events = POLLIN };
    if (n == 0) {          /* a bug in the caller; never block forever */
        cli_err("internal error: nothing to wait for");
        return -1;
    }
    fflush(stdout);
    int r = poll(pfd, n, p->outstanding > 0 ? timeout_ms : -1);
    if (r < 0 && errno == EINTR)
        return 0;
    if (r < 0) {
        cli_err("poll: %s", strerror(errno));
        return -1;
    }
    if (r == 0) {
        cli_err("no reply from the server for %d ms", timeout_ms);
        return -1;
    }
    if (want_in && pfd[0].revents && cli_lines_fill(in) < 0) {
        cli_err("stdin: %s", strerror(errno));
        in->eof = 1;
        in->pos = in->len;   /* what was read so far is not sent */
        return 1;
    }
    return 0;
}

static int
cli_pub_stdin(const struct cli_global *g, const char *stream, const char *type)
{
    struct cli_pub p = { .stream = stream, .type = type };
    struct cli_lines in;

    if (cli_lines_init(&in, STDIN_FILENO) < 0) {
        cli_err("out of memory");
        return CLI_FAIL;
    }
    sb_client *c = cli_open(g);
    if (!c) {
        free(in.buf);
        return CLI_FAIL;
    }
    int lost = 0, input_failed = 0;   /* lost: 1 connection, 2 timeout */
    for (;;) {
        char *line;
        size_t len;
        int r;
        while (p.outstanding < CLI_PUB_WINDOW &&
               (r = cli_lines_next(&in, &line, &len)) != 0) {
            if (r < 0) {
                cli_err("line %ld: longer than %zu bytes", in.lineno,
                        CLI_STDIN_MAX_LINE);
                p.failed++;
            } else if (cli_pub_send(c, &p, line, len, in.lineno) < 0) {
                lost = 1;
                break;
            }
        }
        /* Stopped by the window, not by a lack of input lines? */
        int more_input = p.outstanding >= CLI_PUB_WINDOW;
        if (lost || sb_flush(c) < 0 || cli_pub_drain(c, &p) < 0) {
            lost = 1;
            break;
        }
        if (more_input && p.outstanding < CLI_PUB_WINDOW)
            continue;          /* replies freed the window: send, don't wait */
        int input_done = in.eof && in.pos == in.len;
        if (input_done && p.outstanding == 0)
            break;
        r = cli_pub_wait(c, &in, !in.eof && p.outstanding < CLI_PUB_WINDOW,
                         &p, g->timeout_ms);
        if (r < 0) {
            lost = 2;
            break;
        }
        input_failed |= r;
    }
    fflush(stdout);
    if (lost) {
        if (lost == 1)
            cli_err("%s", sb_strerror(c));
        if (p.outstanding > 0)
            cli_err("%ld pubs unanswered: they may or may not be stored",
                    p.outstanding);
        p.failed += p.outstanding;
    }
    fprintf(stderr, "published %ld (%ld duplicates), failed %ld\n",
            p.ok, p.dups, p.failed);
    sb_close(c);
    free(in.buf);
    return p.failed || lost || input_failed ? CLI_FAIL : CLI_OK;
}

static int
cli_cmd_pub(const struct cli_global *g, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "type",  required_argument, NULL, 'T' },
        { "msgid", required_argument, NULL, 'M' },
        { "help",  no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char *type = NULL, *msgid = NULL;
    int ch;

    optind = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'T': type = optarg; break;
        case 'M': msgid = optarg; break;
        case 'h': fputs(cli_usage_text, stdout); return CLI_OK;
        default:  return cli_bad_option(ch, argv);
        }
    }
    if (argc - optind != 2)
        return cli_usage_error("usage: pub STREAM JSON|- [--type T] [--msgid ID]");
    const char *stream = argv[optind], *data = argv[optind + 1];
    if (strcmp(data, "-") != 0)
        return cli_pub_one(g, stream, data, type, msgid);
    if (msgid)
        return cli_usage_error("--msgid applies to a single message, not to stdin");
    return cli_pub_stdin(g, stream, type);
}

/* ---- sub --------------------------------------------------------------- */

struct cli_sub {
    const char *stream, *group, *consumer, *from;
    long        prefetch;      /* 0: the server's default */
    long        count;         /* 0: no limit */
    int         ack;
    int         json;

    json_int_t  id;            /* subscription number from the server */
    long        seen;
    json_t     *acks;          /* ids waiting to be acknowledged */
    long        ack_replies;   /* ack requests sent, reply not yet read */
    int         errors;
    int         closing;       /* done printing: ignore further deliveries */
};

static void
cli_on_signal(int sig)
{
    (void)sig;
    cli_interrupted = 1;
}

/* SIGINT/SIGTERM end the loop cleanly; a second one kills (SA_RESETHAND). */
static void
cli_catch_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cli_on_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int
cli_sub_send_acks(sb_client *c, struct cli_sub *s)
{
    if (json_array_size(s->acks) == 0)
        return 0;
    json_t *req = json_pack("{s:s, s:I, s:O}", "op", "ack", "sub", s->id,
                            "ids", s->acks);
    int r = sb_send_json(c, req);
    json_decref(req);
    json_array_clear(s->acks);
    if (r == 0)
        s->ack_replies++;
    return r;
}

static void
cli_sub_print(const struct cli_sub *s, const json_t *msg, const char *raw)
{
    if (s->json) {
        printf("%s\n", raw);
        return;
    }
    const char *id = json_string_value(json_object_get(msg, "id"));
    const char *type = json_string_value(json_object_get(msg, "type"));
    json_t *data = json_object_get(msg, "data");
    char *text = data ? json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;

    printf("%s attempt=%lld", id ? id : "?",
           (long long)json_number_value(json_object_get(msg, "attempt")));
    if (type)
        printf(" type=%s", type);
    printf(" data=%s\n", text ? text : "null");
    free(text);
}

/* Handles one line: 0 go on, 1 the server said bye, -1 bad line. */
static int
cli_sub_line(sb_client *c, struct cli_sub *s, const char *line, size_t len)
{
    /* data may hold NULs or integers beyond 64 bits (then all numbers
     * come as reals, hence json_number_value below) */
    json_t *j = json_loadb(line, len, JSON_ALLOW_NUL, NULL);
    if (j == NULL)
        j = json_loadb(line, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, NULL);

    if (!json_is_object(j)) {
        json_decref(j);
        cli_err("server sent a line that is not a JSON object");
        return -1;
    }
    int rc = 0;
    const char *op = json_string_value(json_object_get(j, "op"));
    if (json_object_get(j, "ok")) {
        s->ack_replies--;
        if (cli_reply_failed(j, "ack") < 0)
            s->errors++;
    } else if (op && strcmp(op, "bye") == 0) {
        const char *why = json_string_value(json_object_get(j, "reason"));
        cli_err("server closed the subscription: %s", why ? why : "?");
        rc = 1;
    } else if (op && strcmp(op, "msg") == 0 &&
               (long long)json_number_value(json_object_get(j, "sub")) == s->id &&
               !s->closing) {
        cli_sub_print(s, j, line);
        s->seen++;
        const char *id = json_string_value(json_object_get(j, "id"));
        if (s->ack && id)
            json_array_append_new(s->acks, json_string(id));
        if (json_array_size(s->acks) >= CLI_ACK_BATCH &&
            cli_sub_send_acks(c, s) < 0)
            rc = -1;
    }
    json_decref(j);
    return rc;
}

/* Delivers until --count, a signal, bye or a failure.  Acks are batched
 * while lines are already buffered and sent before every wait. */
static int
cli_sub_loop(sb_client *c, struct cli_sub *s)
{
    for (;;) {
        if ((s->count > 0 && s->seen >= s->count) || cli_interrupted) {
            s->closing = 1;
            return CLI_OK;
        }
        size_t len;
        const char *line = sb_read_line(c, &len, 0);
        if (!line && errno == ETIMEDOUT) {
            if (cli_sub_send_acks(c, s) < 0 || sb_flush(c) < 0) {
                cli_err("%s", sb_strerror(c));
                return CLI_FAIL;
            }
            fflush(stdout);
            line = sb_read_line(c, &len, CLI_SUB_SLICE_MS);
            if (!line && errno == ETIMEDOUT)
                continue;
        }
        if (!line) {
            cli_err("%s", sb_strerror(c));
            return CLI_FAIL;
        }
        int r = cli_sub_line(c, s, line, len);
        if (r != 0)
            return CLI_FAIL;
    }
}

/* Sends the last acks, waits for their replies, then unsubscribes so that
 * deliveries we did not print go straight back to the group. */
static int
cli_sub_finish(sb_client *c, const struct cli_global *g, struct cli_sub *s)
{
    if (cli_sub_send_acks(c, s) < 0 || sb_flush(c) < 0) {
        cli_err("%s", sb_strerror(c));
        return CLI_FAIL;
    }
    while (s->ack_replies > 0) {
        size_t len;
        const char *line = sb_read_line(c, &len, g->timeout_ms);
        if (!line) {
            cli_err("waiting for ack replies: %s", sb_strerror(c));
            return CLI_FAIL;
        }
        if (cli_sub_line(c, s, line, len) != 0)
            return CLI_FAIL;
    }
    json_t *req = json_pack("{s:s, s:I}", "op", "unsub", "sub", s->id);
    json_t *reply = sb_request(c, req, g->timeout_ms);
    json_decref(req);
    int rc = CLI_OK;
    if (!reply) {
        cli_err("unsub: %s", sb_strerror(c));
        rc = CLI_FAIL;
    } else if (cli_reply_failed(reply, "unsub") < 0)
        rc = CLI_FAIL;
    json_decref(reply);
    return rc;
}

static int
cli_sub_run(const struct cli_global *g, struct cli_sub *s)
{
    sb_client *c = cli_open(g);
    if (!c)
        return CLI_FAIL;

    json_t *req = json_pack("{s:s, s:s, s:s}", "op", "sub", "stream", s->stream,
                            "group", s->group);
    if (s->consumer)
        json_object_set_new(req, "consumer", json_string(s->consumer));
    if (s->from)
        json_object_set_new(req, "from", json_string(s->from));
    /* With --count, never hold more than we will print: extra deliveries
     * would only be released again, each costing an attempt. */
    long prefetch = s->prefetch;
    if (!prefetch && s->count > 0 && s->count < 64)
        prefetch = s->count;
    if (prefetch)
        json_object_set_new(req, "prefetch", json_integer(prefetch));
    json_t *reply = sb_request(c, req, g->timeout_ms);
    json_decref(req);

    int rc = CLI_FAIL;
    if (!reply)
        cli_err("sub: %s", sb_strerror(c));
    else if (cli_reply_failed(reply, NULL) == 0) {
        s->id = json_integer_value(json_object_get(reply, "sub"));
        s->acks = json_array();
        cli_catch_signals();
        rc = cli_sub_loop(c, s);
        if (rc == CLI_OK)
            rc = cli_sub_finish(c, g, s);
        if (s->errors)
            rc = CLI_FAIL;
        json_decref(s->acks);
    }
    json_decref(reply);
    fflush(stdout);
    sb_close(c);
    return rc;
}

static int
cli_cmd_sub(const struct cli_global *g, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "consumer", required_argument, NULL, 'c' },
        { "prefetch", required_argument, NULL, 'p' },
        { "from",     required_argument, NULL, 'f' },
        { "ack",      no_argument,       NULL, 'a' },
        { "no-ack",   no_argument,       NULL, 'A' },
        { "json",     no_argument,       NULL, 'j' },
        { "count",    required_argument, NULL, 'n' },
        { "help",     no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    struct cli_sub s = { .ack = 1 };
    int ch;

    optind = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': s.consumer = optarg; break;
        case 'f': s.from = optarg; break;
        case 'a': s.ack = 1; break;
        case 'A': s.ack = 0; break;
        case 'j': s.json = 1; break;
        case 'p':
            if (cli_parse_long(optarg, 1, 10000, &s.prefetch) < 0)
                return cli_usage_error("--prefetch: expected 1..10000, got '%s'", optarg);
            break;
        case 'n':
            if (cli_parse_long(optarg, 1, LONG_MAX, &s.count) < 0)
                return cli_usage_error("--count: expected a positive number, got '%s'", optarg);
            break;
        case 'h': fputs(cli_usage_text, stdout); return CLI_OK;
        default:  return cli_bad_option(ch, argv);
        }
    }
    if (argc - optind != 2)
        return cli_usage_error("usage: sub STREAM GROUP [--consumer C] [--prefetch N] "
                               "[--from new|all|ID] [--ack|--no-ack] [--json] [--count N]");
    s.stream = argv[optind];
    s.group = argv[optind + 1];
    return cli_sub_run(g, &s);
}

/* ---- stats ------------------------------------------------------------- */

/* One table cell as text: numbers as integers, missing values as "-". */
static char *
cli_cell(const json_t *v)
{
    char buf[64];

    if (json_is_integer(v))
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, sizeof buf, "%g", json_real_value(v));
    else if (json_is_string(v))
        return strdup(json_string_value(v));
    else if (!v || json_is_null(v))
        snprintf(buf, sizeof buf, "-");
    else
        return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    return strdup(buf);
}

struct cli_table {
    char  **cells;             /* rows * CLI_STATS_COLS */
    size_t  rows, cap;
    int     width[CLI_STATS_COLS];
};

static int
cli_table_add(struct cli_table *t, const json_t *st, const json_t *grp)
{
    if (t->rows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **p = realloc(t->cells, cap * CLI_STATS_COLS * sizeof *p);
        if (!p)
            return -1;
        t->cells = p;
        t->cap = cap;
    }
    const json_t *vals[CLI_STATS_COLS] = {
        json_object_get(st, "stream"), json_object_get(st, "length"),
        json_object_get(st, "dlq_length"), json_object_get(grp, "group"),
        json_object_get(grp, "consumers"), json_object_get(grp, "pending"),
        json_object_get(grp, "lag"),
    };
    char **row = t->cells + t->rows * CLI_STATS_COLS;
    for (int i = 0; i < CLI_STATS_COLS; i++) {
        row[i] = cli_cell(vals[i]);
        if (!row[i]) {
            while (i-- > 0)
                free(row[i]);
            return -1;
        }
    }
    t->rows++;
    return 0;
}

static void
cli_table_print(struct cli_table *t)
{
    static const char *head[CLI_STATS_COLS] = {
        "STREAM", "LENGTH", "DLQ", "GROUP", "CONSUMERS", "PENDING", "LAG"
    };
    static const int numeric[CLI_STATS_COLS] = { 0, 1, 1, 0, 1, 1, 1 };

    for (int i = 0; i < CLI_STATS_COLS; i++)
        t->width[i] = (int)strlen(head[i]);
    for (size_t r = 0; r < t->rows * CLI_STATS_COLS; r++) {
        int w = (int)strlen(t->cells[r]);
        if (w > t->width[r % CLI_STATS_COLS])
            t->width[r % CLI_STATS_COLS] = w;
    }
    for (size_t r = 0; r <= t->rows; r++) {
        for (int i = 0; i < CLI_STATS_COLS; i++) {
            const char *cell = r == 0 ? head[i]
                                      : t->cells[(r - 1) * CLI_STATS_COLS + i];
            int w = numeric[i] ? t->width[i] : -t->width[i];
            if (i == CLI_STATS_COLS - 1 && !numeric[i])
                w = 0;
            printf("%s%*s", i ? "  " : "", w, cell);
        }
        putchar('\n');
    }
}

static void
cli_table_free(struct cli_table *t)
{
    for (size_t r = 0; r < t->rows * CLI_STATS_COLS; r++)
        free(t->cells[r]);
    free(t->cells);
}

static int
cli_stats_table(const json_t *reply)
{
    struct cli_table t = { 0 };
    const json_t *streams = json_object_get(reply, "streams");
    size_t i, k;
    json_t *st, *grp;
    int rc = CLI_OK;

    json_array_foreach(streams, i, st) {
        const json_t *groups = json_object_get(st, "groups");
        if (json_array_size(groups) == 0 && cli_table_add(&t, st, NULL) < 0)
            rc = CLI_FAIL;
        json_array_foreach(groups, k, grp) {
            if (cli_table_add(&t, st, grp) < 0)
                rc = CLI_FAIL;
        }
    }
    if (rc == CLI_OK)
        cli_table_print(&t);
    else
        cli_err("out of memory");
    cli_table_free(&t);
    return rc;
}

static int
cli_cmd_stats(const struct cli_global *g, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    int ch, raw = 0;

    optind = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'j': raw = 1; break;
        case 'h': fputs(cli_usage_text, stdout); return CLI_OK;
        default:  return cli_bad_option(ch, argv);
        }
    }
    if (argc - optind > 1)
        return cli_usage_error("usage: stats [STREAM] [--json]");
    sb_client *c = cli_open(g);
    if (!c)
        return CLI_FAIL;

    json_t *req = json_pack("{s:s}", "op", "stats");
    if (optind < argc)
        json_object_set_new(req, "stream", json_string(argv[optind]));
    json_t *reply = sb_request(c, req, g->timeout_ms);
    json_decref(req);
    int rc = CLI_FAIL;
    if (!reply)
        cli_err("stats: %s", sb_strerror(c));
    else if (cli_reply_failed(reply, NULL) == 0) {
        if (raw) {
            char *text = json_dumps(reply, JSON_COMPACT);
            printf("%s\n", text ? text : "");
            free(text);
            rc = text ? CLI_OK : CLI_FAIL;
        } else
            rc = cli_stats_table(reply);
    }
    json_decref(reply);
    sb_close(c);
    return rc;
}

/* ---- main -------------------------------------------------------------- */

static const struct cli_command {
    const char *name;
    int (*run)(const struct cli_global *, int, char **);
} cli_commands[] = {
    { "ping",  cli_cmd_ping },
    { "pub",   cli_cmd_pub },
    { "sub",   cli_cmd_sub },
    { "stats", cli_cmd_stats },
};

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "server",  required_argument, NULL, 's' },
        { "token",   required_argument, NULL, 't' },
        { "name",    required_argument, NULL, 'n' },
        { "timeout", required_argument, NULL, 'w' },
        { "help",    no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    struct cli_global g = {
        .addr = getenv("STREAMBUS_ADDR"),
        .token = getenv("STREAMBUS_TOKEN"),
        .name = CLI_NAME,
        .timeout_ms = CLI_DEFAULT_TIMEOUT_MS,
    };
    long v;
    int ch;

    if (!g.addr || !*g.addr)
        g.addr = CLI_DEFAULT_ADDR;
    opterr = 0;
    /* '+': stop at the command; its own options are parsed after it. */
    while ((ch = getopt_long(argc, argv, "+:s:t:n:w:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 's': g.addr = optarg; break;
        case 't': g.token = optarg; break;
        case 'n': g.name = optarg; break;
        case 'w':
            if (cli_parse_long(optarg, 1, INT32_MAX, &v) < 0)
                return cli_usage_error("--timeout: expected milliseconds, got '%s'", optarg);
            g.timeout_ms = (int)v;
            break;
        case 'h': fputs(cli_usage_text, stdout); return CLI_OK;
        default:  return cli_bad_option(ch, argv);
        }
    }
    if (optind >= argc)
        return cli_usage_error("no command given");
    for (size_t i = 0; i < sizeof cli_commands / sizeof cli_commands[0]; i++) {
        if (strcmp(argv[optind], cli_commands[i].name) == 0)
            return cli_commands[i].run(&g, argc - optind, argv + optind);
    }
    return cli_usage_error("unknown command '%s'", argv[optind]);
}
