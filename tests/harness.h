/*
 * harness.h: drives a real redis-server and the real src/streambusd for the
 * integration tests (tests/check_integration.c).
 *
 * Every test runs in its own forked Check child with its own temporary
 * directory, its own redis-server and its own streambusd, on free loopback
 * ports.  h_setup() (a checked fixture) starts Redis; the daemon starts on
 * first use (h_daemon_start(), h_connect()) so that a test can first choose
 * its configuration with h_conf().  h_teardown() stops both by pid.
 *
 * Safety nets for failed tests (Check _exit()s the child and skips the
 * teardown): every process we spawn gets PR_SET_PDEATHSIG = SIGKILL and
 * stays in the test child's process group, which Check kills after each
 * test.  The parent removes the base temporary directory at exit unless
 * SB_TEST_KEEP=1.
 *
 * Every wait is bounded (H_WAIT_MS unless said otherwise).
 */
#ifndef HARNESS_H
#define HARNESS_H

#include <stddef.h>
#include <sys/types.h>
#include <check.h>
#include <jansson.h>
#include <hiredis/hiredis.h>
#include "streambus.h"

#define H_WAIT_MS    5000     /* default bound of every wait */
#define H_REPLY_MS   3000     /* how long a request waits for its reply */

typedef struct h_proc {
    pid_t pid;                /* 0 when not running */
    int   status;             /* waitpid status once reaped */
    int   reaped;
    char  log[512];           /* stdout+stderr of the process */
} h_proc;

typedef struct h_env {
    char   dir[512];          /* this test's temporary directory */
    int    redis_port;
    int    port;              /* daemon TCP listen port */
    int    metrics_port;
    char   addr[64];          /* "127.0.0.1:port" */
    char   conf_path[600];
    char   conf_server[4096]; /* extra lines for [server] */
    char   conf_redis[1024];  /* extra lines for [redis] */
    char   redis_url[256];    /* --redis and redis.url; "" = redis_port, db 0 */
    char   conf_defaults[1024];
    char   conf_extra[4096];  /* extra sections, verbatim */
    h_proc redis;
    h_proc daemon;
    int    daemon_expected_dead; /* the test killed it on purpose */
    int    daemon_starts;
    int    metrics_off;       /* start the daemon with --metrics off */
    /* More instances sharing the same Redis and configuration. */
    h_proc extra[2];
    int    extra_port[2];
    char   extra_addr[2][64];
} h_env;

extern h_env H;

/* ---- the run: parent side ---- */
/* Call once from main() before srunner_run_all: makes the base temporary
 * directory and resolves the daemon binary (env SB_DAEMON, default
 * src/streambusd or ../src/streambusd). */
void h_global_init(void);
/* Reaps exited orphans; runner process only (an unchecked fixture). */
void h_reap_orphans(void);
const char *h_daemon_path(void);

/* ---- suites ---- */
/* main()'s start: h_global_init() and h_on_fail(prog, stop_all) (stop_all
 * may be NULL); 1 (with a message) when the daemon is not built, else 0. */
int    h_main_init(const char *prog, void (*stop_all)(void));
/* A test case with a checked fixture and the orphan reaper (Check's
 * boilerplate, once); h_run_suite() runs s (CK_ENV) and returns main()'s
 * exit status. */
TCase *h_tcase(Suite *s, const char *name, int timeout_s, void (*setup)(void),
               void (*teardown)(void));
int    h_run_suite(Suite *s);
/* A suite of one test per test case, all with the same fixture: main() in
 * one call (h_main_init, a test case per row, h_run_suite). */
typedef struct h_case {
    const char  *name;
    int          timeout_s;
    const TTest *test;
} h_case;
int    h_main(const char *prog, const char *suite, void (*setup)(void),
              void (*stop_all)(void), const h_case *cases, size_t ncases);
/* A suite that runs processes of its own (sentinels, cluster nodes) names
 * the function that stops every process of a test by pid, the daemon
 * first: H_CHECK and h_teardown_all() call it.  prog prefixes the lines
 * on stderr. */
void   h_on_fail(const char *prog, void (*stop_all)(void));
const char *h_prog(void);
/* The last max bytes of a file of the test directory (malloc'd). */
char  *h_log_tail(const char *name, size_t max);
/* For H_CHECK: stop_all(), the message to stderr; the daemon log's tail. */
char  *h_fail_stop(const char *why);
/* Checked teardown: stop_all(), h_teardown(); fails the test if the daemon
 * died on its own. */
void   h_teardown_all(void);

/* Asserts cond; on failure stops every process by pid first (h_on_fail),
 * then aborts with the message and the daemon's log tail.  A failed
 * assertion inside the harness leaves the processes to PR_SET_PDEATHSIG and
 * Check's killpg instead. */
#define H_CHECK(cond, ...)                                                    \
    do {                                                                      \
        if (!(cond)) {                                                        \
            char *why_ = h_fmt(__VA_ARGS__);                                  \
            char *log_ = h_fail_stop(why_);                                   \
            ck_abort_msg("%.1500s\n--- daemon.log (tail) ---\n%s", why_, log_); \
        }                                                                     \
    } while (0)

/* ---- fixtures ---- */
void h_setup(void);           /* temp dir + redis; daemon config reset */
void h_setup_dir(void);       /* only the temp dir and the reset (no redis) */
void h_teardown(void);

/* ---- configuration ---- */
/* Replace the extra configuration (any argument may be NULL = unchanged)
 * and restart the daemon if it is running. */
void h_conf(const char *server, const char *defaults, const char *extra);
void h_conf_redis(const char *redis_lines);
void h_write_conf(const char *path); /* the full config file as it would start */

/* ---- processes ---- */
int  h_free_port(void);
/* Spawn argv with stdout+stderr appended to log; no wait. */
pid_t h_spawn(char *const argv[], const char *log, h_proc *p);
/* Wait up to timeout_ms for p to exit; 1 if it exited (status in p). */
int  h_wait_exit(h_proc *p, int timeout_ms);
/* Send sig, wait up to timeout_ms, then SIGKILL.  Returns the waitpid
 * status (or -1 if it was not running). */
int  h_stop(h_proc *p, int sig, int timeout_ms);
int  h_alive(h_proc *p);
/* Run argv to completion (bounded by timeout_ms, killed after); output
 * (stdout+stderr) returned in *out (malloc'd, may be NULL).  Returns the
 * exit status (0..255), 128+signal, or -1 on timeout. */
int  h_run(char *const argv[], char **out, int timeout_ms);

/* 1 when a redis-server on 127.0.0.1:port answers PING within timeout_ms. */
int  h_redis_ping(int port, int timeout_ms);
int  h_redis_start(void);            /* on H.redis_port; 0 ok */
void h_redis_kill(int sig);          /* stop redis (and forget the cached ctx) */
int  h_daemon_start(void);           /* writes the config; 0 ok, waits for ping */
int  h_daemon_try_start(void);       /* same, but no assertion; -1 on failure */
int  h_daemon_stop(int sig, int timeout_ms); /* returns waitpid status */
void h_daemon_restart(void);
char *h_daemon_log(void);            /* malloc'd contents of its stderr log */
int  h_daemon_running(void);
/* Starts (or restarts) extra instance i (0 or 1) on its own ports, same
 * Redis and config file; waits for ping.  Connect with h_connect_extra(). */
void h_extra_start(int i);
sb_client *h_connect_extra(int i);

/* ---- Redis ---- */
redisReply *h_redis(const char *fmt, ...);      /* asserts a reply; caller frees */
redisReply *h_redis_argv(int argc, const char **argv);
long long   h_redis_int(const char *fmt, ...);  /* asserts an integer reply */
long long   h_info_clients(void);               /* INFO clients: connected_clients */
long long   h_client_list_count(void);          /* lines of CLIENT LIST */
void        h_redis_forget(void);               /* drop the cached connection */
/* A connection of its own to 127.0.0.1:port (connect 1 s, replies within
 * reply_ms); NULL when nothing answers.  Caller redisFree()s. */
redisContext *h_redis_open(int port, int reply_ms);
/* One command to the server on 127.0.0.1:port, on a connection of its own
 * (connect 1 s, reply 5 s); NULL when it does not answer.  Caller frees. */
redisReply *h_redis_at(int port, const char *fmt, ...);
redisReply *h_redis_at_argv(int port, int argc, const char **argv);
/* cmd: words separated by single spaces, no quoting ("CLUSTER INFO"). */
redisReply *h_redis_words(int port, const char *cmd);
/* The same, read as: an integer reply, or -1 (no answer, an error); 1 if
 * the string reply (INFO, CLUSTER INFO) contains needle; the number after
 * "name:" at the start of a line of it, or -1. */
long long   h_redis_int_at(int port, const char *fmt, ...);
int         h_redis_str_has(int port, const char *cmd, const char *needle);
long long   h_redis_str_num(int port, const char *cmd, const char *name);
/* 1 once the master on port lists the replica on rport as online. */
int         h_replica_online(int port, int rport);
/* 1 if entry id is in stream key on port (a master, or a replica: READONLY
 * is sent first for a cluster replica). */
int         h_redis_has_entry(int port, const char *key, const char *id);
/* Field value of an entry (array reply [id, [k, v, ...]]), or NULL. */
const char *h_entry_field(const redisReply *entry, const char *field);

/* ---- HTTP ---- */
/* GET http://127.0.0.1:port/path.  Returns the status (or -1); *body and
 * *headers malloc'd (either pointer may be NULL). */
int h_http_get(int port, const char *path, char **body, char **headers);

/* ---- streambus clients ---- */
sb_client *h_connect(void);          /* starts the daemon if needed; asserts */
sb_client *h_try_connect(void);      /* NULL on failure */
/* Format with printf, turn every ' into ", parse, send, wait the reply.
 * Asserts a reply arrived.  Caller decrefs. */
json_t *h_req(sb_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
json_t *h_req_json(sb_client *c, json_t *req); /* steals req */
/* Same formatting, only queued+flushed, no wait. */
void    h_send(sb_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void    h_send_raw(sb_client *c, const char *bytes, size_t len);
/* Next reply/event line as JSON (asserts one arrives within timeout_ms). */
json_t *h_read(sb_client *c, int timeout_ms);
/* Next delivery/notice, or NULL after timeout_ms. */
json_t *h_event(sb_client *c, int timeout_ms);
/* Next delivery; asserts one arrives and that it is "op":"msg". */
json_t *h_msg(sb_client *c, int timeout_ms);
/* Asserts no delivery arrives within ms. */
void    h_no_msg(sb_client *c, int ms);

/* Reply checks: return the reply for chaining (not a new reference). */
json_t *h_ok(json_t *reply);
json_t *h_err(json_t *reply, const char *code);
/* bad_request whose message mentions field. */
json_t *h_bad(json_t *reply, const char *field);

const char *h_str(const json_t *o, const char *key);   /* asserts a string */
/* The object of array arr whose member key is the string name, or NULL. */
json_t     *h_find_named(json_t *arr, const char *key, const char *name);
long long   h_int(const json_t *o, const char *key);   /* asserts an integer */

/* Convenience ops (assert ok). */
char *h_pub(sb_client *c, const char *stream, const char *data_json); /* id, malloc'd */
long long h_sub(sb_client *c, const char *stream, const char *group,
                const char *consumer, int prefetch, const char *from);
long long h_ack(sb_client *c, long long sub, const char *id);

/* ---- misc ---- */
long long h_now_ms(void);
void      h_sleep_ms(int ms);
int       h_id_valid(const char *id);              /* "ms-seq" */
int       h_id_cmp(const char *a, const char *b);  /* stream id order */
char     *h_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char     *h_read_file(const char *path);           /* malloc'd or NULL */

/* Prometheus text: value of the sample name{labels} where labels is
 * "k=v,k=v" (a set; order free; all must match exactly, no other labels).
 * Returns 1 and *val if found. */
int h_metric(const char *body, const char *name, const char *labels, double *val);
/* The daemon's sample name{labels} now, from its /metrics (asserts it is
 * there). */
double h_metric_now(const char *name, const char *labels);
/* 1 if "# TYPE name type" is present. */
int h_metric_type(const char *body, const char *name, const char *type);

#endif
