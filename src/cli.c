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
#define CLI_TABLE_MAX_COLS     8
#define CLI_DLQ_COLS           7
#define CLI_DLQ_PAGE           1000    /* dead letters per dlq request (server max) */
#define CLI_DLQ_CELL_MAX       40      /* characters of reason and data shown */
#define CLI_REPLAY_BATCH       1000    /* ids per replay request */
#define CLI_BENCH              "streambus-bench"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

struct cli_global {
    const char *addr;
    const char *token;
    const char *name;
    int         timeout_ms;
    const char *self;          /* argv[0] */
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
"  tail STREAM [--last N] [--json]\n"
"                           print the last N messages (default 10), then\n"
"                           new ones as they come, without a group (no\n"
"                           acks, nothing taken from consumers) until SIGINT\n"
"  dlq ls STREAM [--count N] [--json]\n"
"                           list the dead letters of STREAM, oldest first\n"
"  dlq replay STREAM ID...|--all\n"
"                           put dead letters back into STREAM as new\n"
"                           messages; print their new ids\n"
"  bench [ARGS]             run streambus-bench against the server\n"
"                           (--addr from -s; 'bench --help' lists ARGS)\n"
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

/* A server line as JSON.  data may hold NULs or integers beyond 64 bits
 * (then every number of the line comes as a real, hence json_number_value
 * where a number is read). */
static json_t *
cli_parse_line(const char *line, size_t len)
{
    json_t *j = json_loadb(line, len, JSON_ALLOW_NUL, NULL);

    if (j == NULL)
        j = json_loadb(line, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, NULL);
    return j;
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
    json_t *j = cli_parse_line(line, len);

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

/* Text width of a table cell: UTF-8 characters, not bytes. */
static int
cli_text_width(const char *s)
{
    int w = 0;

    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

/* A table printed in columns as wide as their widest cell.  Rows may be
 * flushed in parts (dlq ls prints page by page): columns only widen, and
 * the header is printed once, with the first part. */
struct cli_table {
    int                ncols;
    const char *const *head;
    const int         *numeric;       /* right-aligned columns */
    char             **cells;         /* rows * ncols, owned */
    size_t             rows, cap;
    int                width[CLI_TABLE_MAX_COLS];
    int                head_done;
};

/* Takes the ncols cells of row (freeing them on failure); -1 when one of
 * them is NULL or out of memory. */
static int
cli_table_add(struct cli_table *t, char **row)
{
    int ok = 1;

    for (int i = 0; i < t->ncols; i++)
        ok &= row[i] != NULL;
    if (ok && t->rows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **p = realloc(t->cells, cap * (size_t)t->ncols * sizeof *p);
        if (p) {
            t->cells = p;
            t->cap = cap;
        }
        ok = p != NULL;
    }
    if (!ok) {
        for (int i = 0; i < t->ncols; i++)
            free(row[i]);
        return -1;
    }
    memcpy(t->cells + t->rows * (size_t)t->ncols, row, (size_t)t->ncols * sizeof *row);
    t->rows++;
    return 0;
}

static void
cli_table_row(const struct cli_table *t, const char *const *row)
{
    for (int i = 0; i < t->ncols; i++) {
        int pad = t->width[i] - cli_text_width(row[i]);
        if (i)
            fputs("  ", stdout);
        if (t->numeric[i] && pad > 0)
            printf("%*s", pad, "");
        fputs(row[i], stdout);
        if (!t->numeric[i] && i < t->ncols - 1 && pad > 0)
            printf("%*s", pad, "");
    }
    putchar('\n');
}

/* Prints the rows added so far (after the header, the first time) and
 * frees them. */
static void
cli_table_flush(struct cli_table *t)
{
    size_t n = t->rows * (size_t)t->ncols;

    for (int i = 0; i < t->ncols && !t->head_done; i++)
        if (cli_text_width(t->head[i]) > t->width[i])
            t->width[i] = cli_text_width(t->head[i]);
    for (size_t r = 0; r < n; r++) {
        int w = cli_text_width(t->cells[r]);
        if (w > t->width[r % t->ncols])
            t->width[r % t->ncols] = w;
    }
    if (!t->head_done)
        cli_table_row(t, t->head);
    t->head_done = 1;
    for (size_t r = 0; r < t->rows; r++)
        cli_table_row(t, (const char *const *)t->cells + r * t->ncols);
    for (size_t r = 0; r < n; r++)
        free(t->cells[r]);
    t->rows = 0;
}

static void
cli_table_free(struct cli_table *t)
{
    for (size_t r = 0; r < t->rows * (size_t)t->ncols; r++)
        free(t->cells[r]);
    free(t->cells);
}

static const char *const cli_stats_head[CLI_STATS_COLS] = {
    "STREAM", "LENGTH", "DLQ", "GROUP", "CONSUMERS", "PENDING", "LAG"
};
static const int cli_stats_numeric[CLI_STATS_COLS] = { 0, 1, 1, 0, 1, 1, 1 };

static int
cli_stats_add(struct cli_table *t, const json_t *st, const json_t *grp)
{
    const json_t *vals[CLI_STATS_COLS] = {
        json_object_get(st, "stream"), json_object_get(st, "length"),
        json_object_get(st, "dlq_length"), json_object_get(grp, "group"),
        json_object_get(grp, "consumers"), json_object_get(grp, "pending"),
        json_object_get(grp, "lag"),
    };
    char *row[CLI_STATS_COLS];

    for (int i = 0; i < CLI_STATS_COLS; i++)
        row[i] = cli_cell(vals[i]);
    return cli_table_add(t, row);
}

static int
cli_stats_table(const json_t *reply)
{
    struct cli_table t = { .ncols = CLI_STATS_COLS, .head = cli_stats_head,
                           .numeric = cli_stats_numeric };
    const json_t *streams = json_object_get(reply, "streams");
    size_t i, k;
    json_t *st, *grp;
    int rc = CLI_OK;

    json_array_foreach(streams, i, st) {
        const json_t *groups = json_object_get(st, "groups");
        if (json_array_size(groups) == 0 && cli_stats_add(&t, st, NULL) < 0)
            rc = CLI_FAIL;
        json_array_foreach(groups, k, grp) {
            if (cli_stats_add(&t, st, grp) < 0)
                rc = CLI_FAIL;
        }
    }
    if (rc == CLI_OK)
        cli_table_flush(&t);
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

/* ---- dlq: the server's text ------------------------------------------- */

/* dlq ls shows data as the server wrote it, so that it keeps its bytes
 * (numbers their digits, also beyond 64 bits), and --json each entry as
 * the server wrote it, as sub --json does.  These find them in the reply
 * line, which has already been parsed as JSON: they only skip, they do not
 * check. */

static const char *
cli_json_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Just past the string that starts at p, or NULL. */
static const char *
cli_json_string_end(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\' && ++p == end)
            break;
        if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* Just past the value that starts at p, or NULL. */
static const char *
cli_json_value_end(const char *p, const char *end)
{
    int depth = 0;

    if (p < end && *p == '"')
        return cli_json_string_end(p, end);
    if (p < end && *p != '{' && *p != '[') {
        while (p < end && !memchr(",}] \t\r\n", *p, 7))
            p++;
        return p;
    }
    while (p < end) {
        if (*p == '"') {
            if ((p = cli_json_string_end(p, end)) == NULL)
                return NULL;
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if ((*p == '}' || *p == ']') && --depth == 0)
            return p + 1;
        p++;
    }
    return NULL;
}

/* The value of member name of the object at p: its start, and its end
 * in *vend; NULL when the object has no such member.  The first one when
 * the name repeats (the server repeats none that we look for). */
static const char *
cli_json_member(const char *p, const char *end, const char *name, const char **vend)
{
    size_t n = strlen(name);

    p = cli_json_ws(p, end);
    if (p == end || *p++ != '{')
        return NULL;
    for (p = cli_json_ws(p, end); p < end && *p == '"';) {
        const char *key = p;
        if ((p = cli_json_string_end(p, end)) == NULL)
            return NULL;
        int match = (size_t)(p - key) == n + 2 && memcmp(key + 1, name, n) == 0;
        p = cli_json_ws(p, end);
        if (p == end || *p++ != ':')
            return NULL;
        p = cli_json_ws(p, end);
        if ((*vend = cli_json_value_end(p, end)) == NULL)
            return NULL;
        if (match)
            return p;
        p = cli_json_ws(*vend, end);
        if (p < end && *p == ',')
            p = cli_json_ws(p + 1, end);
    }
    return NULL;
}

/* Calls fn with the text of each element of the array p..end. */
static int
cli_json_each(const char *p, const char *end,
              int (*fn)(void *, const char *, size_t), void *arg)
{
    if (p == end || *p++ != '[')
        return -1;
    for (p = cli_json_ws(p, end); p < end && *p != ']';) {
        const char *e = cli_json_value_end(p, end);
        if (e == NULL || fn(arg, p, (size_t)(e - p)) < 0)
            return -1;
        p = cli_json_ws(e, end);
        if (p < end && *p == ',')
            p = cli_json_ws(p + 1, end);
    }
    return p < end ? 0 : -1;
}

/* ---- dlq ls -------------------------------------------------------------- */

static const char *const cli_dlq_head[CLI_DLQ_COLS] = {
    "ID", "ORIGIN_ID", "GROUP", "ATTEMPTS", "REASON", "DEAD_AT", "DATA"
};
static const int cli_dlq_numeric[CLI_DLQ_COLS] = { 0, 0, 0, 1, 0, 0, 0 };

struct cli_dlq_ls {
    const char      *stream;
    long             count;        /* 0: every dead letter */
    int              json;
    long             listed;
    char            *from;         /* "next" of the page before */
    struct cli_table table;
};

/* Sends req and reads up to its reply, returned parsed, with its text in
 * *line (valid until the next read on c).  NULL, the error printed, on
 * failure or when the server says bye first. */
static json_t *
cli_request_line(sb_client *c, const struct cli_global *g, const json_t *req,
                 const char *what, const char **line, size_t *len)
{
    if (sb_send_json(c, req) < 0 || sb_flush(c) < 0) {
        cli_err("%s: %s", what, sb_strerror(c));
        return NULL;
    }
    for (;;) {
        *line = sb_read_line(c, len, g->timeout_ms);
        if (!*line) {
            cli_err("%s: %s", what, sb_strerror(c));
            return NULL;
        }
        json_t *j = cli_parse_line(*line, *len);
        if (json_is_object(j) && json_object_get(j, "ok"))
            return j;
        const char *op = json_string_value(json_object_get(j, "op"));
        if (op && strcmp(op, "bye") == 0) {
            const char *why = json_string_value(json_object_get(j, "reason"));
            cli_err("server is closing the connection: %s", why ? why : "?");
            json_decref(j);
            return NULL;
        }
        json_decref(j);
    }
}

/* A copy of s for a table cell: white space as ' ', other control
 * characters as '?', at most max characters (UTF-8 sequences kept whole),
 * "..." marking a cut. */
static char *
cli_clip(const char *s, int max)
{
    size_t cut = strlen(s);

    if (cli_text_width(s) > max) {
        int chars = 0;
        for (cut = 0; s[cut]; cut++)
            if (((unsigned char)s[cut] & 0xC0) != 0x80 && chars++ == max - 3)
                break;
    }
    char *out = malloc(cut + 4);
    if (!out)
        return NULL;
    memcpy(out, s, cut);
    strcpy(out + cut, s[cut] ? "..." : "");
    for (char *p = out; *p; p++) {
        if (*p == '\t' || *p == '\r' || *p == '\n')
            *p = ' ';
        else if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    }
    return out;
}

/* Milliseconds since the epoch as UTC ISO 8601 (2026-11-25T21:59:05.123Z);
 * anything else as cli_cell shows it. */
static char *
cli_iso_ms(const json_t *v)
{
    char buf[64];
    struct tm tm;
    double ms = json_number_value(v);

    if (!json_is_number(v) || ms < 0 || ms > 253402300799999.0)   /* year 9999 */
        return cli_cell(v);
    long long t = (long long)ms;
    time_t sec = (time_t)(t / 1000);
    if (!gmtime_r(&sec, &tm))
        return cli_cell(v);
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof buf - n, ".%03dZ", (int)(t % 1000));
    return strdup(buf);
}

/* One entry (its text in the reply) as a table row. */
static int
cli_dlq_add(void *arg, const char *text, size_t len)
{
    struct cli_dlq_ls *ls = arg;
    const char *dend, *data = cli_json_member(text, text + len, "data", &dend);
    char *raw = data ? strndup(data, (size_t)(dend - data)) : NULL;
    json_t *e = cli_parse_line(text, len);
    const char *reason = json_string_value(json_object_get(e, "reason"));
    char *row[CLI_DLQ_COLS] = {
        cli_cell(json_object_get(e, "id")),
        cli_cell(json_object_get(e, "origin_id")),
        cli_cell(json_object_get(e, "group")),
        cli_cell(json_object_get(e, "attempts")),
        cli_clip(reason ? reason : "-", CLI_DLQ_CELL_MAX),
        cli_iso_ms(json_object_get(e, "dead_at")),
        cli_clip(raw ? raw : "-", CLI_DLQ_CELL_MAX),
    };

    free(raw);
    json_decref(e);
    if (cli_table_add(&ls->table, row) == 0)
        return 0;
    cli_err("out of memory");
    return -1;
}

static int
cli_dlq_print_raw(void *arg, const char *text, size_t len)
{
    (void)arg;
    fwrite(text, 1, len, stdout);
    putchar('\n');
    return 0;
}

/* Prints the entries of the reply line of one page: as table rows, or as
 * the server wrote them. */
static int
cli_dlq_print(struct cli_dlq_ls *ls, const char *line, size_t len)
{
    const char *end, *entries = cli_json_member(line, line + len, "entries", &end);

    if (!entries ||
        cli_json_each(entries, end, ls->json ? cli_dlq_print_raw : cli_dlq_add, ls) < 0) {
        cli_err("dlq: unexpected reply: %.*s", (int)(len < 200 ? len : 200), line);
        return -1;
    }
    if (!ls->json)
        cli_table_flush(&ls->table);
    return 0;
}

/* One dlq request, its entries printed: 1 when there are more to ask
 * for, 0 when done, -1 on failure. */
static int
cli_dlq_page(sb_client *c, const struct cli_global *g, struct cli_dlq_ls *ls)
{
    long want = CLI_DLQ_PAGE;
    const char *line;
    size_t len;

    if (ls->count > 0 && ls->count - ls->listed < want)
        want = ls->count - ls->listed;
    json_t *req = json_pack("{s:s, s:s, s:I}", "op", "dlq", "stream", ls->stream,
                            "count", (json_int_t)want);
    if (ls->from)
        json_object_set_new(req, "from", json_string(ls->from));
    json_t *reply = cli_request_line(c, g, req, "dlq", &line, &len);
    json_decref(req);
    if (!reply)
        return -1;
    int rc = -1;
    if (cli_reply_failed(reply, NULL) == 0 && cli_dlq_print(ls, line, len) == 0) {
        const char *next = json_string_value(json_object_get(reply, "next"));
        size_t n = json_array_size(json_object_get(reply, "entries"));
        ls->listed += (long)n;
        rc = 0;
        if (next && n > 0 && (ls->count == 0 || ls->listed < ls->count)) {
            free(ls->from);
            ls->from = strdup(next);
            rc = ls->from ? 1 : -1;
        }
    }
    json_decref(reply);
    return rc;
}

static int
cli_dlq_ls_run(const struct cli_global *g, struct cli_dlq_ls *ls)
{
    sb_client *c = cli_open(g);
    if (!c)
        return CLI_FAIL;
    int r;
    while ((r = cli_dlq_page(c, g, ls)) > 0)
        ;
    fflush(stdout);
    sb_close(c);
    cli_table_free(&ls->table);
    free(ls->from);
    return r < 0 ? CLI_FAIL : CLI_OK;
}

static int
cli_dlq_ls(const struct cli_global *g, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "count", required_argument, NULL, 'n' },
        { "json",  no_argument,       NULL, 'j' },
        { "help",  no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    struct cli_dlq_ls ls = {
        .table = { .ncols = CLI_DLQ_COLS, .head = cli_dlq_head,
                   .numeric = cli_dlq_numeric },
    };
    int ch;

    optind = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'j': ls.json = 1; break;
        case 'n':
            if (cli_parse_long(optarg, 1, LONG_MAX, &ls.count) < 0)
                return cli_usage_error("--count: expected a positive number, got '%s'", optarg);
            break;
        case 'h': fputs(cli_usage_text, stdout); return CLI_OK;
        default:  return cli_bad_option(ch, argv);
        }
    }
    if (argc - optind != 1)
        return cli_usage_error("usage: dlq ls STREAM [--count N] [--json]");
    ls.stream = argv[optind];
    return cli_dlq_ls_run(g, &ls);
}

/* ---- dlq replay ---------------------------------------------------------- */

/* One replay request, of ids or (ids NULL) of all; prints the new ids.
 * Returns how many dead letters it replayed, -1 on failure. */
static long
cli_replay_call(sb_client *c, const struct cli_global *g, const char *stream, json_t *ids)
{
    json_t *req = json_pack("{s:s, s:s}", "op", "replay", "stream", stream);
    if (ids)
        json_object_set(req, "ids", ids);
    else
        json_object_set_new(req, "all", json_true());
    json_t *reply = sb_request(c, req, g->timeout_ms);
    json_decref(req);
    long n = -1;
    if (!reply)
        cli_err("replay: no reply (dead letters may or may not have been replayed): %s",
                sb_strerror(c));
    else if (cli_reply_failed(reply, "replay") == 0) {
        json_t *fresh = json_object_get(reply, "ids"), *v;
        size_t i;
        json_array_foreach(fresh, i, v) {
            const char *id = json_string_value(v);
            printf("%s\n", id ? id : "?");
        }
        n = (long)json_array_size(fresh);
    }
    json_decref(reply);
    return n;
}

static int
cli_replay_ids(sb_client *c, const struct cli_global *g, const char *stream,
               char **ids, int nids, long *total)
{
    for (int off = 0; off < nids; off += CLI_REPLAY_BATCH) {
        json_t *arr = json_array();
        for (int i = off; i < nids && i < off + CLI_REPLAY_BATCH; i++)
            json_array_append_new(arr, json_string(ids[i]));
        long n = cli_replay_call(c, g, stream, arr);
        json_decref(arr);
        if (n < 0)
            return -1;
        *total += n;
    }
    return 0;
}

/* The length of the stream's dead-letter stream (stats), -1 on failure. */
static long
cli_dlq_length(sb_client *c, const struct cli_global *g, const char *stream)
{
    json_t *req = json_pack("{s:s, s:s}", "op", "stats", "stream", stream);
    json_t *reply = sb_request(c, req, g->timeout_ms);
    json_decref(req);
    long n = -1;
    if (!reply)
        cli_err("stats: %s", sb_strerror(c));
    else if (cli_reply_failed(reply, "stats") == 0) {
        json_t *st = json_array_get(json_object_get(reply, "streams"), 0);
        json_t *len = json_object_get(st, "dlq_length");
        if (json_is_integer(len))
            n = (long)json_integer_value(len);
        else
            cli_err("stats: no dlq_length for %s", stream);
    }
    json_decref(reply);
    return n;
}

/* Replays what the dead-letter stream held when it started, a call at a
 * time (each takes the oldest, up to the server's limit), so that entries
 * that die again meanwhile cannot keep it going. */
static int
cli_replay_all(sb_client *c, const struct cli_global *g, const char *stream, long *total)
{
    long before = cli_dlq_length(c, g, stream);

    if (before < 0)
        return -1;
    while (*total < before) {
        long n = cli_replay_call(c, g, stream, NULL);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        *total += n;
    }
    return 0;
}

/* The server's id syntax, MS-SEQ, so that a typo is a usage error. */
static int
cli_is_id(const char *s)
{
    size_t ms = strspn(s, "0123456789");

    return ms > 0 && s[ms] == '-' && s[ms + 1] != '\0' &&
           strspn(s + ms + 1, "0123456789") == strlen(s + ms + 1);
}

static int
cli_dlq_replay(const struct cli_global *g, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "all",  no_argument, NULL, 'a' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    int ch, all = 0;

    optind = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'a': all = 1; break;
        case 'h': fputs(cli_usage_text, stdout); return CLI_OK;
        default:  return cli_bad_option(ch, argv);
        }
    }
    int nids = argc - optind - 1;
    if (nids < 0 || (nids == 0) == !all)
        return cli_usage_error("usage: dlq replay STREAM ID...|--all");
    for (int i = 0; i < nids; i++)
        if (!cli_is_id(argv[optind + 1 + i]))
            return cli_usage_error("'%s' is not an entry id like 1732550000000-0",
                                   argv[optind + 1 + i]);
    const char *stream = argv[optind];
    sb_client *c = cli_open(g);
    if (!c)
        return CLI_FAIL;

    long total = 0;
    int r = all ? cli_replay_all(c, g, stream, &total)
                : cli_replay_ids(c, g, stream, argv + optind + 1, nids, &total);
    fflush(stdout);
    if (r == 0 && !all && total < nids)
        fprintf(stderr, "replayed %ld of %d dead letters; the others are not in the "
                "dead-letter stream\n", total, nids);
    else if (r == 0)
        fprintf(stderr, "replayed %ld dead letter%s\n", total, total == 1 ? "" : "s");
    sb_close(c);
    return r < 0 ? CLI_FAIL : CLI_OK;
}

static int
cli_cmd_dlq(const struct cli_global *g, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : NULL;

    if (sub && strcmp(sub, "ls") == 0)
        return cli_dlq_ls(g, argc - 1, argv + 1);
    if (sub && strcmp(sub, "replay") == 0)
        return cli_dlq_replay(g, argc - 1, argv + 1);
    if (sub && (strcmp(sub, "-h") == 0 || strcmp(sub, "--help") == 0)) {
        fputs(cli_usage_text, stdout);
        return CLI_OK;
    }
    if (!sub)
        return cli_usage_error("dlq: give ls or replay");
    return cli_usage_error("dlq: unknown subcommand '%s'", sub);
}

/* ---- bench ------------------------------------------------------------- */

/* The benchmark of the build tree, ../perf/streambus-bench from this
 * program's directory, when it is there; NULL otherwise. */
static char *
cli_bench_path(const struct cli_global *g)
{
    char self[PATH_MAX], *path;
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);

    if (n > 0)
        self[n] = '\0';
    else if (g->self && strchr(g->self, '/'))
        snprintf(self, sizeof self, "%s", g->self);
    else
        return NULL;
    *strrchr(self, '/') = '\0';
    if (asprintf(&path, "%s/../perf/" CLI_BENCH, self) < 0)
        return NULL;
    if (access(path, X_OK) == 0)
        return path;
    free(path);
    return NULL;
}

/* Runs streambus-bench --addr ADDR ARGS...: our address first, so that an
 * --addr among ARGS wins. */
static int
cli_cmd_bench(const struct cli_global *g, int argc, char **argv)
{
    char **args = calloc((size_t)argc + 3, sizeof *args);
    char *path = cli_bench_path(g);

    if (!args) {
        cli_err("out of memory");
        free(path);
        return CLI_FAIL;
    }
    args[0] = path ? path : CLI_BENCH;
    args[1] = "--addr";
    args[2] = (char *)g->addr;
    memcpy(args + 3, argv + 1, (size_t)(argc - 1) * sizeof *args);
    fflush(stdout);
    if (path)
        execv(path, args);
    else
        execvp(CLI_BENCH, args);
    if (path)
        cli_err("cannot run %s: %s", path, strerror(errno));
    else
        cli_err("cannot run " CLI_BENCH " (not at ../perf/ from " CLI_NAME
                ", nor in PATH): %s", strerror(errno));
    free(path);
    free(args);
    return CLI_FAIL;
}

/* ---- tail -------------------------------------------------------------- */

#define CLI_TAIL_POLL_MS 200	/* a live view, not a consumer: it polls */

struct cli_tail {
    int   json;
    char *next;        /* id of the last entry printed */
};

static int
cli_tail_print(void *arg, const char *text, size_t len)
{
    struct cli_tail *t = arg;
    const char *dend, *data = cli_json_member(text, text + len, "data", &dend);
    json_t *e = cli_parse_line(text, len);
    const char *id = json_string_value(json_object_get(e, "id"));
    const char *type = json_string_value(json_object_get(e, "type"));

    if (t->json) {
        fwrite(text, 1, len, stdout);
        putchar('\n');
    } else {
        printf("%s", id ? id : "?");
        if (type)
            printf(" type=%s", type);
        printf(" data=%.*s\n", data ? (int)(dend - data) : 4, data ? data : "null");
    }
    json_decref(e);
    return 0;
}

/* One range request ({"last":N} first, then {"from":next}): 0 or -1. */
static int
cli_tail_poll(sb_client *c, const struct cli_global *g, const char *stream, long last,
              struct cli_tail *t)
{
    const char *line, *end, *entries;
    size_t len;
    json_t *req = json_pack("{s:s, s:s}", "op", "range", "stream", stream);

    if (t->next)
        json_object_set_new(req, "from", json_string(t->next));
    else
        json_object_set_new(req, "last", json_integer(last));
    json_t *reply = cli_request_line(c, g, req, "tail", &line, &len);
    json_decref(req);
    if (!reply)
        return -1;
    int rc = -1;
    if (cli_reply_failed(reply, NULL) == 0 &&
        (entries = cli_json_member(line, line + len, "entries", &end)) != NULL &&
        cli_json_each(entries, end, cli_tail_print, t) == 0) {
        const char *next = json_string_value(json_object_get(reply, "next"));
        rc = 0;
        if (next) {
            free(t->next);
            t->next = strdup(next);
        }
        fflush(stdout);
    }
    json_decref(reply);
    return rc;
}

static int
cli_cmd_tail(const struct cli_global *g, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "last", required_argument, NULL, 'l' },
        { "json", no_argument,       NULL, 'j' },
        { "help", no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    struct cli_tail t = { 0, NULL };
    long last = 10;
    int ch;

    optind = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (ch == 'l' && cli_parse_long(optarg, 1, 1000, &last) == 0)
            continue;
        if (ch == 'j') {
            t.json = 1;
            continue;
        }
        return ch == 'h' ? (puts("usage: tail STREAM [--last N] [--json]"), CLI_OK) :
               cli_usage_error("usage: tail STREAM [--last N] [--json]");
    }
    if (argc - optind != 1)
        return cli_usage_error("usage: tail STREAM [--last N] [--json]");
    sb_client *c = cli_open(g);
    if (!c)
        return CLI_FAIL;
    cli_catch_signals();
    int rc = CLI_OK;
    while (!cli_interrupted) {
        if (cli_tail_poll(c, g, argv[optind], last, &t) < 0) {
            rc = CLI_FAIL;
            break;
        }
        poll(NULL, 0, CLI_TAIL_POLL_MS);
    }
    free(t.next);
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
    { "tail",  cli_cmd_tail },
    { "dlq",   cli_cmd_dlq },
    { "bench", cli_cmd_bench },
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
        .self = argv[0],
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
