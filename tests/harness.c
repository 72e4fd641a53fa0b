/*
 * harness.c: real redis-server + real streambusd for the integration tests.
 * See harness.h for the rules (free ports, bounded waits, cleanup by pid).
 */
#include "harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

h_env H;

static char  base_dir[256];
static pid_t base_owner;             /* the process that made base_dir */
static char  daemon_bin[PATH_MAX];
static redisContext *rc;             /* cached Redis connection */
static pid_t rc_owner;

/* ------------------------------------------------------------------ misc */

long long h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void h_sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

char *h_fmt(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    ck_assert_msg(s != NULL, "out of memory");
    return s;
}

char *h_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (int i = 0; buf && i < 100000; i++) {
        if (len + 4096 + 1 > cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

int h_id_valid(const char *id)
{
    if (!id || !isdigit((unsigned char)*id))
        return 0;
    const char *p = id;
    while (isdigit((unsigned char)*p)) p++;
    if (*p++ != '-' || !isdigit((unsigned char)*p))
        return 0;
    while (isdigit((unsigned char)*p)) p++;
    return *p == '\0';
}

int h_id_cmp(const char *a, const char *b)
{
    unsigned long long am = 0, as = 0, bm = 0, bs = 0;
    sscanf(a, "%llu-%llu", &am, &as);
    sscanf(b, "%llu-%llu", &bm, &bs);
    if (am != bm) return am < bm ? -1 : 1;
    if (as != bs) return as < bs ? -1 : 1;
    return 0;
}

/* ------------------------------------------------------------ processes */

int h_free_port(void)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
        struct sockaddr_in sa = { .sin_family = AF_INET };
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = 0;
        socklen_t sl = sizeof sa;
        int port = -1;
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
            getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
            port = ntohs(sa.sin_port);
        close(fd);
        /* Keep clear of the Redis Cluster bus range (port + 10000). */
        if (port > 0 && port < 55535)
            return port;
    }
    ck_abort_msg("no free port found");
    return -1;
}

pid_t h_spawn(char *const argv[], const char *log, h_proc *p)
{
    pid_t parent = getpid();
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    ck_assert_msg(fd >= 0, "open %s: %s", log, strerror(errno));
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* Dies with the test process, whatever happens to it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) { dup2(nul, 0); close(nul); }
        dup2(fd, 1);
        dup2(fd, 2);
        for (int i = 3; i < 4096; i++)
            close(i);
        execvp(argv[0], argv);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fd);
    if (p) {
        memset(p, 0, sizeof *p);
        p->pid = pid;
        snprintf(p->log, sizeof p->log, "%s", log);
    }
    return pid;
}

int h_alive(h_proc *p)
{
    if (!p->pid || p->reaped)
        return 0;
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid) {
        p->status = st;
        p->reaped = 1;
        return 0;
    }
    return 1;
}

int h_wait_exit(h_proc *p, int timeout_ms)
{
    long long end = mono_ms() + timeout_ms;
    for (int i = 0; i < 100000; i++) {
        if (!h_alive(p))
            return 1;
        if (mono_ms() >= end)
            return 0;
        h_sleep_ms(5);
    }
    return 0;
}

int h_stop(h_proc *p, int sig, int timeout_ms)
{
    if (!p->pid)
        return -1;
    if (h_alive(p)) {
        kill(p->pid, sig);
        if (!h_wait_exit(p, timeout_ms)) {
            kill(p->pid, SIGKILL);
            h_wait_exit(p, 3000);
        }
    }
    int st = p->reaped ? p->status : -1;
    p->pid = 0;
    return st;
}

int h_run(char *const argv[], char **out, int timeout_ms)
{
    static int seq;
    char log[700];
    const char *dir = H.dir[0] ? H.dir : base_dir;
    snprintf(log, sizeof log, "%s/run.%d.%d.out", dir, (int)getpid(), ++seq);
    unlink(log);
    h_proc p;
    h_spawn(argv, log, &p);
    int done = h_wait_exit(&p, timeout_ms);
    if (!done) {
        kill(p.pid, SIGKILL);
        h_wait_exit(&p, 3000);
    }
    if (out)
        *out = h_read_file(log);
    if (!done)
        return -1;
    if (WIFEXITED(p.status))
        return WEXITSTATUS(p.status);
    if (WIFSIGNALED(p.status))
        return 128 + WTERMSIG(p.status);
    return -1;
}

/* ----------------------------------------------------------- global */

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

void h_reap_orphans(void)
{
    /* Only the runner: it is the subreaper that orphans (the servers of a
     * test child that failed) are reparented to. */
    if (getpid() != base_owner)
        return;
    /* Between test cases every child left is an orphan being killed (by
     * PDEATHSIG or Check's killpg): give them up to 2 s to go. */
    long long end = mono_ms() + 2000;
    for (int i = 0; i < 10000; i++) {
        pid_t r = waitpid(-1, NULL, WNOHANG);
        if (r < 0)
            break;                  /* ECHILD: none left */
        if (r == 0) {
            if (mono_ms() >= end)
                break;
            h_sleep_ms(5);
        }
    }
}

static void global_cleanup(void)
{
    /* Children forked by Check inherit this handler: only the owner acts. */
    if (getpid() != base_owner || !base_dir[0])
        return;
    h_reap_orphans();
    const char *keep = getenv("SB_TEST_KEEP");
    if (keep && *keep && strcmp(keep, "0") != 0) {
        fprintf(stderr, "harness: kept %s\n", base_dir);
        return;
    }
    nftw(base_dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void procs_cleanup(void)
{
    /* CK_FORK=no: the fixtures may be skipped after a failure. */
    if (rc_owner == getpid() && rc) {
        redisFree(rc);
        rc = NULL;
    }
    if (H.daemon.pid && !H.daemon.reaped)
        h_stop(&H.daemon, SIGKILL, 2000);
    for (int i = 0; i < 2; i++)
        if (H.extra[i].pid && !H.extra[i].reaped)
            h_stop(&H.extra[i], SIGKILL, 2000);
    if (H.redis.pid && !H.redis.reaped)
        h_stop(&H.redis, SIGKILL, 2000);
}

void h_global_init(void)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    snprintf(base_dir, sizeof base_dir, "%s/sbtest.XXXXXX", tmp);
    if (!mkdtemp(base_dir)) {
        perror("mkdtemp");
        exit(2);
    }
    base_owner = getpid();
    /* Servers of a failed test (killed by PDEATHSIG or Check's killpg) are
     * reparented here and reaped by h_reap_orphans(), not left as zombies. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    /* The scale test holds 500+ sockets here and in the daemon. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4096 && rl.rlim_max > rl.rlim_cur) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    atexit(global_cleanup);
    atexit(procs_cleanup);
    signal(SIGPIPE, SIG_IGN);

    const char *env = getenv("SB_DAEMON");
    const char *cands[] = { env, "src/streambusd", "../src/streambusd" };
    daemon_bin[0] = '\0';
    for (size_t i = 0; i < sizeof cands / sizeof *cands; i++) {
        if (cands[i] && *cands[i] && access(cands[i], X_OK) == 0) {
            if (!realpath(cands[i], daemon_bin))
                snprintf(daemon_bin, sizeof daemon_bin, "%s", cands[i]);
            break;
        }
    }
    if (!daemon_bin[0])
        snprintf(daemon_bin, sizeof daemon_bin, "%s",
                 env && *env ? env : "src/streambusd");
}

const char *h_daemon_path(void)
{
    return daemon_bin;
}

/* -------------------------------------------------------------- Redis */

int h_redis_ping(int port, int timeout_ms)
{
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    int ok = 0;
    if (c && !c->err) {
        redisSetTimeout(c, tv);
        redisReply *r = redisCommand(c, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r)
            freeReplyObject(r);
    }
    if (c)
        redisFree(c);
    return ok;
}

int h_redis_start(void)
{
    char port[16], log[700];
    snprintf(port, sizeof port, "%d", H.redis_port);
    snprintf(log, sizeof log, "%s/redis.log", H.dir);
    char *argv[] = { "redis-server", "--port", port, "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", H.dir,
                     "--daemonize", "no", NULL };
    h_spawn(argv, log, &H.redis);
    long long end = mono_ms() + H_WAIT_MS;
    for (int i = 0; i < 1000 && mono_ms() < end; i++) {
        if (!h_alive(&H.redis))
            break;
        if (h_redis_ping(H.redis_port, 200))
            return 0;
        h_sleep_ms(10);
    }
    h_stop(&H.redis, SIGKILL, 1000);
    return -1;
}

void h_redis_forget(void)
{
    if (rc && rc_owner == getpid())
        redisFree(rc);
    rc = NULL;
}

void h_redis_kill(int sig)
{
    h_redis_forget();
    h_stop(&H.redis, sig, 3000);
}

static redisContext *redis_ctx(void)
{
    if (rc && rc_owner != getpid())
        rc = NULL;               /* inherited over fork: not ours */
    if (rc && rc->err) {
        redisFree(rc);
        rc = NULL;
    }
    if (!rc) {
        struct timeval tv = { 2, 0 };
        rc = redisConnectWithTimeout("127.0.0.1", H.redis_port, tv);
        ck_assert_msg(rc && !rc->err, "redis connect to port %d: %s",
                      H.redis_port, rc ? rc->errstr : "alloc");
        struct timeval ctv = { 5, 0 };
        redisSetTimeout(rc, ctv);
        rc_owner = getpid();
    }
    return rc;
}

redisReply *h_redis(const char *fmt, ...)
{
    redisContext *c = redis_ctx();
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    ck_assert_msg(r != NULL, "redis command '%s' failed: %s", fmt, c->errstr);
    return r;
}

redisReply *h_redis_argv(int argc, const char **argv)
{
    redisContext *c = redis_ctx();
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    ck_assert_msg(r != NULL, "redis command %s failed: %s", argv[0], c->errstr);
    return r;
}

long long h_redis_int(const char *fmt, ...)
{
    redisContext *c = redis_ctx();
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    ck_assert_msg(r != NULL, "redis command '%s' failed: %s", fmt, c->errstr);
    ck_assert_msg(r->type == REDIS_REPLY_INTEGER, "redis '%s': not an integer (type %d: %s)",
                  fmt, r->type, r->str ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

long long h_info_clients(void)
{
    redisReply *r = h_redis("INFO clients");
    ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
    const char *p = strstr(r->str, "connected_clients:");
    ck_assert_msg(p != NULL, "no connected_clients in INFO");
    long long v = atoll(p + strlen("connected_clients:"));
    freeReplyObject(r);
    return v;
}

long long h_client_list_count(void)
{
    redisReply *r = h_redis("CLIENT LIST");
    ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
    long long n = 0;
    for (const char *p = r->str; *p; p++)
        if (*p == '\n')
            n++;
    freeReplyObject(r);
    return n;
}

redisContext *h_redis_open(int port, int reply_ms)
{
    struct timeval tv = { 1, 0 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    struct timeval rtv = { reply_ms / 1000, (reply_ms % 1000) * 1000 };
    redisSetTimeout(c, rtv);
    return c;
}

redisReply *h_redis_at_argv(int port, int argc, const char **argv)
{
    redisContext *c = h_redis_open(port, 5000);
    if (!c)
        return NULL;
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    redisFree(c);
    return r;
}

static redisReply *redis_at_va(int port, const char *fmt, va_list ap)
{
    redisContext *c = h_redis_open(port, 5000);
    if (!c)
        return NULL;
    redisReply *r = redisvCommand(c, fmt, ap);
    redisFree(c);
    return r;
}

redisReply *h_redis_at(int port, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redis_at_va(port, fmt, ap);
    va_end(ap);
    return r;
}

long long h_redis_int_at(int port, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redis_at_va(port, fmt, ap);
    va_end(ap);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r)
        freeReplyObject(r);
    return v;
}

redisReply *h_redis_words(int port, const char *cmd)
{
    char buf[256];
    const char *argv[16];
    int argc = 0;
    snprintf(buf, sizeof buf, "%s", cmd);
    char *save = NULL;
    for (char *w = strtok_r(buf, " ", &save); w && argc < 16; w = strtok_r(NULL, " ", &save))
        argv[argc++] = w;
    return h_redis_at_argv(port, argc, argv);
}

int h_redis_str_has(int port, const char *cmd, const char *needle)
{
    redisReply *r = h_redis_words(port, cmd);
    int has = r && r->type == REDIS_REPLY_STRING && strstr(r->str, needle) != NULL;
    if (r)
        freeReplyObject(r);
    return has;
}

long long h_redis_str_num(int port, const char *cmd, const char *name)
{
    redisReply *r = h_redis_words(port, cmd);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_STRING) {
        char *want = h_fmt("%s:", name);
        for (const char *p = strstr(r->str, want); p; p = strstr(p + 1, want))
            if (p == r->str || p[-1] == '\n') {
                v = atoll(p + strlen(want));
                break;
            }
        free(want);
    }
    if (r)
        freeReplyObject(r);
    return v;
}

int h_replica_online(int port, int rport)
{
    char *needle = h_fmt("port=%d,state=online", rport);
    int has = h_redis_str_has(port, "INFO replication", needle);
    free(needle);
    return has;
}

int h_redis_has_entry(int port, const char *key, const char *id)
{
    redisContext *c = h_redis_open(port, 5000);
    if (!c)
        return 0;
    /* Lets a cluster replica answer; an error elsewhere, and harmless. */
    redisReply *r = redisCommand(c, "READONLY");
    if (r)
        freeReplyObject(r);
    r = redisCommand(c, "XRANGE %s %s %s", key, id, id);
    int has = r && r->type == REDIS_REPLY_ARRAY && r->elements == 1;
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return has;
}

const char *h_entry_field(const redisReply *entry, const char *field)
{
    if (!entry || entry->type != REDIS_REPLY_ARRAY || entry->elements != 2)
        return NULL;
    const redisReply *kv = entry->element[1];
    if (!kv || kv->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < kv->elements; i += 2)
        if (kv->element[i]->str && strcmp(kv->element[i]->str, field) == 0)
            return kv->element[i + 1]->str;
    return NULL;
}

/* ------------------------------------------------------------- fixtures */

void h_setup_dir(void)
{
    memset(&H, 0, sizeof H);
    ck_assert_msg(base_dir[0], "h_global_init() not called");
    snprintf(H.dir, sizeof H.dir, "%s/t.XXXXXX", base_dir);
    ck_assert_msg(mkdtemp(H.dir) != NULL, "mkdtemp: %s", strerror(errno));
    rc = NULL;
}

void h_setup(void)
{
    h_setup_dir();
    for (int attempt = 0; attempt < 3; attempt++) {
        H.redis_port = h_free_port();
        if (h_redis_start() == 0)
            return;
    }
    char log[700];
    snprintf(log, sizeof log, "%s/redis.log", H.dir);
    char *txt = h_read_file(log);
    ck_abort_msg("redis-server did not start: %s", txt ? txt : "(no log)");
}

void h_teardown(void)
{
    int daemon_died = 0;
    int st = 0;
    h_redis_forget();
    if (H.daemon.pid) {
        if (!h_alive(&H.daemon) && !H.daemon_expected_dead) {
            daemon_died = 1;
            st = H.daemon.status;
        }
        h_stop(&H.daemon, SIGTERM, 3000);
    }
    for (int i = 0; i < 2; i++)
        if (H.extra[i].pid)
            h_stop(&H.extra[i], SIGTERM, 3000);
    h_stop(&H.redis, SIGTERM, 3000);
    if (daemon_died) {
        char *log = h_daemon_log();
        ck_abort_msg("streambusd died during the test (status 0x%x); log:\n%s",
                     st, log ? log : "");
    }
}

/* ---------------------------------------------------------------- suites */

static const char *suite_prog = "test";
static void (*suite_stop_all)(void);

void h_on_fail(const char *prog, void (*stop_all)(void))
{
    suite_prog = prog;
    suite_stop_all = stop_all;
}

const char *h_prog(void)
{
    return suite_prog;
}

char *h_log_tail(const char *name, size_t max)
{
    char *path = h_fmt("%s/%s", H.dir, name);
    char *txt = h_read_file(path);
    free(path);
    if (!txt)
        return strdup("(no log)");
    size_t len = strlen(txt);
    if (len > max)
        memmove(txt, txt + len - max, max + 1);
    return txt;
}

char *h_fail_stop(const char *why)
{
    if (suite_stop_all)
        suite_stop_all();
    /* Check's messages are short: the whole message goes to stderr too. */
    fprintf(stderr, "%s: FAILED: %s\n", suite_prog, why);
    return h_log_tail("daemon.log", 1500);
}

void h_teardown_all(void)
{
    int died = 0, st = 0;
    if (H.daemon.pid && !h_alive(&H.daemon) && !H.daemon_expected_dead) {
        died = 1;
        st = H.daemon.status;
    }
    if (suite_stop_all)
        suite_stop_all();
    h_teardown();
    if (died) {
        char *log = h_log_tail("daemon.log", 8000);
        ck_abort_msg("streambusd died during the test (status 0x%x); log:\n%s", st, log);
    }
}

int h_main_init(const char *prog, void (*stop_all)(void))
{
    h_global_init();
    h_on_fail(prog, stop_all);
    if (access(h_daemon_path(), X_OK) != 0) {
        fprintf(stderr, "%s: %s not built (make src/streambusd)\n", prog, h_daemon_path());
        return 1;
    }
    return 0;
}

TCase *h_tcase(Suite *s, const char *name, int timeout_s, void (*setup)(void),
               void (*teardown)(void))
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_unchecked_fixture(tc, NULL, h_reap_orphans);
    tcase_set_timeout(tc, timeout_s);
    suite_add_tcase(s, tc);
    return tc;
}

int h_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);   /* CK_VERBOSITY=verbose lists every test */
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

int h_main(const char *prog, const char *suite, void (*setup)(void), void (*stop_all)(void),
           const h_case *cases, size_t ncases)
{
    if (h_main_init(prog, stop_all) != 0)
        return 1;
    Suite *s = suite_create(suite);
    for (size_t i = 0; i < ncases; i++)
        tcase_add_test(h_tcase(s, cases[i].name, cases[i].timeout_s, setup, h_teardown_all),
                       cases[i].test);
    return h_run_suite(s);
}

/* ---------------------------------------------------------- configuration */

/* The Redis of the daemons: H.redis_url, or redis_port and db 0. */
static void h_daemon_url(char *out, size_t outlen)
{
    if (H.redis_url[0])
        snprintf(out, outlen, "%s", H.redis_url);
    else
        snprintf(out, outlen, "redis://127.0.0.1:%d/0", H.redis_port);
}

void h_write_conf(const char *path)
{
    char url[256];
    h_daemon_url(url, sizeof url);
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "fopen %s: %s", path, strerror(errno));
    fprintf(f,
            "; written by tests/harness.c\n"
            "[server]\n"
            "listen = 127.0.0.1:%d\n"
            "shutdown_timeout_ms = 3000\n"
            "%s\n"
            "[metrics]\n"
            "listen = 127.0.0.1:%d\n"
            "\n"
            "[redis]\n"
            "url = %s\n"
            "%s\n"
            "[defaults]\n"
            "%s\n"
            "%s\n",
            H.port, H.conf_server, H.metrics_port, url,
            H.conf_redis, H.conf_defaults, H.conf_extra);
    ck_assert_int_eq(fclose(f), 0);
}

void h_conf(const char *server, const char *defaults, const char *extra)
{
    if (server)
        snprintf(H.conf_server, sizeof H.conf_server, "%s", server);
    if (defaults)
        snprintf(H.conf_defaults, sizeof H.conf_defaults, "%s", defaults);
    if (extra)
        snprintf(H.conf_extra, sizeof H.conf_extra, "%s", extra);
    if (h_daemon_running())
        h_daemon_restart();
}

void h_conf_redis(const char *redis_lines)
{
    snprintf(H.conf_redis, sizeof H.conf_redis, "%s", redis_lines ? redis_lines : "");
    if (h_daemon_running())
        h_daemon_restart();
}

/* ---------------------------------------------------------------- daemon */

static int tcp_connect(int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno != EINPROGRESS) {
            close(fd);
            return -1;
        }
        struct pollfd pfd = { fd, POLLOUT, 0 };
        int err = 0;
        socklen_t el = sizeof err;
        if (poll(&pfd, 1, timeout_ms) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            close(fd);
            return -1;
        }
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

int h_daemon_running(void)
{
    return H.daemon.pid && h_alive(&H.daemon);
}

/* The daemon answers ping itself, also before its Redis link is up: ready
 * means ping answers and then (stats_too) a stats request gets through to
 * Redis.  With a token file both answer "unauthorized", which will do. */
static int ping_ready(const char *addr, int stats_too)
{
    char err[256];
    sb_client *c = sb_connect(addr, err, sizeof err);
    if (!c)
        return 0;
    const char *ops[2] = { "ping", "stats" };
    int ok = 1;
    for (int i = 0; i < 1 + !!stats_too && ok; i++) {
        json_t *req = json_pack("{s:s}", "op", ops[i]);
        json_t *r = sb_request(c, req, 500);
        json_decref(req);
        const char *e = json_string_value(json_object_get(r, "error"));
        ok = r && (json_is_true(json_object_get(r, "ok")) ||
                   (e && strcmp(e, "unauthorized") == 0));
        json_decref(r);
    }
    sb_close(c);
    return ok;
}

static int daemon_ready(void)
{
    if (!ping_ready(H.addr, H.metrics_off))
        return 0;
    if (H.metrics_off)
        return 1;
    return h_http_get(H.metrics_port, "/health", NULL, NULL) == 200;
}

static int daemon_spawn_once(void)
{
    char listen[64], metrics[64], redis[256], log[700];
    snprintf(H.addr, sizeof H.addr, "127.0.0.1:%d", H.port);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", H.port);
    snprintf(metrics, sizeof metrics, "127.0.0.1:%d", H.metrics_port);
    h_daemon_url(redis, sizeof redis);
    snprintf(H.conf_path, sizeof H.conf_path, "%s/streambus.conf", H.dir);
    snprintf(log, sizeof log, "%s/daemon.log", H.dir);
    h_write_conf(H.conf_path);
    char *argv[] = { daemon_bin, "-c", H.conf_path, "--listen", listen,
                     "--metrics", H.metrics_off ? "off" : metrics, "--redis", redis, NULL };
    h_spawn(argv, log, &H.daemon);
    H.daemon_starts++;
    H.daemon_expected_dead = 0;
    long long end = mono_ms() + H_WAIT_MS;
    for (int i = 0; i < 1000 && mono_ms() < end; i++) {
        if (!h_alive(&H.daemon))
            return -1;
        if (daemon_ready())
            return 0;
        h_sleep_ms(10);
    }
    h_stop(&H.daemon, SIGKILL, 1000);
    return -1;
}

int h_daemon_try_start(void)
{
    if (h_daemon_running())
        return 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        /* Keep the previous ports on a restart when we can. */
        if (attempt > 0 || !H.port) {
            H.port = h_free_port();
            do {
                H.metrics_port = h_free_port();
            } while (H.metrics_port == H.port);
        }
        if (daemon_spawn_once() == 0)
            return 0;
    }
    return -1;
}

int h_daemon_start(void)
{
    if (h_daemon_try_start() == 0)
        return 0;
    char *log = h_daemon_log();
    ck_abort_msg("streambusd (%s) did not start; log:\n%s", daemon_bin,
                 log ? log : "(none)");
    return -1;
}

int h_daemon_stop(int sig, int timeout_ms)
{
    H.daemon_expected_dead = 1;
    return h_stop(&H.daemon, sig, timeout_ms);
}

void h_daemon_restart(void)
{
    if (H.daemon.pid)
        h_daemon_stop(SIGTERM, 5000);
    h_daemon_start();
}

void h_extra_start(int i)
{
    ck_assert(i >= 0 && i < 2);
    if (!H.conf_path[0]) {
        snprintf(H.conf_path, sizeof H.conf_path, "%s/streambus.conf", H.dir);
        h_write_conf(H.conf_path);
    }
    if (H.extra[i].pid)
        h_stop(&H.extra[i], SIGTERM, 5000);
    for (int attempt = 0; attempt < 3; attempt++) {
        if (attempt > 0 || !H.extra_port[i])
            H.extra_port[i] = h_free_port();
        char listen[64], redis[256], log[700];
        snprintf(H.extra_addr[i], sizeof H.extra_addr[i], "127.0.0.1:%d", H.extra_port[i]);
        snprintf(listen, sizeof listen, "127.0.0.1:%d", H.extra_port[i]);
        h_daemon_url(redis, sizeof redis);
        snprintf(log, sizeof log, "%s/daemon-extra%d.log", H.dir, i);
        char *argv[] = { daemon_bin, "-c", H.conf_path, "--listen", listen,
                         "--metrics", "off", "--redis", redis, NULL };
        h_spawn(argv, log, &H.extra[i]);
        long long end = mono_ms() + H_WAIT_MS;
        for (int k = 0; k < 1000 && mono_ms() < end && h_alive(&H.extra[i]); k++) {
            if (ping_ready(H.extra_addr[i], 1))
                return;
            h_sleep_ms(10);
        }
        h_stop(&H.extra[i], SIGKILL, 1000);
    }
    char log[700];
    snprintf(log, sizeof log, "%s/daemon-extra%d.log", H.dir, i);
    char *txt = h_read_file(log);
    ck_abort_msg("extra streambusd %d did not start; log:\n%s", i, txt ? txt : "");
}

sb_client *h_connect_extra(int i)
{
    char err[256];
    sb_client *c = sb_connect(H.extra_addr[i], err, sizeof err);
    ck_assert_msg(c != NULL, "sb_connect %s: %s", H.extra_addr[i], err);
    return c;
}

char *h_daemon_log(void)
{
    char log[700];
    snprintf(log, sizeof log, "%s/daemon.log", H.dir);
    return h_read_file(log);
}

/* ------------------------------------------------------------------ HTTP */

int h_http_get(int port, const char *path, char **body, char **headers)
{
    if (body) *body = NULL;
    if (headers) *headers = NULL;
    int fd = tcp_connect(port, 2000);
    if (fd < 0)
        return -1;
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n",
                     path, port);
    if (write(fd, req, n) != n) {
        close(fd);
        return -1;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    long long end = mono_ms() + H_WAIT_MS;
    for (int i = 0; buf && i < 100000; i++) {
        int left = (int)(end - mono_ms());
        if (left <= 0)
            break;
        struct pollfd pfd = { fd, POLLIN, 0 };
        if (poll(&pfd, 1, left) != 1)
            break;
        if (len + 4096 + 1 > cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) break;
            buf = nb;
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            break;
        len += r;
    }
    close(fd);
    if (!buf)
        return -1;
    buf[len] = '\0';
    int status = -1;
    if (sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1) {
        free(buf);
        return -1;
    }
    char *sep = strstr(buf, "\r\n\r\n");
    if (body)
        *body = strdup(sep ? sep + 4 : "");
    if (headers) {
        if (sep) *sep = '\0';
        *headers = strdup(buf);
    }
    free(buf);
    return status;
}

/* -------------------------------------------------------------- clients */

sb_client *h_try_connect(void)
{
    if (!h_daemon_running())
        return NULL;
    char err[256];
    return sb_connect(H.addr, err, sizeof err);
}

sb_client *h_connect(void)
{
    if (!h_daemon_running())
        h_daemon_start();
    char err[256];
    sb_client *c = sb_connect(H.addr, err, sizeof err);
    ck_assert_msg(c != NULL, "sb_connect %s: %s", H.addr, err);
    return c;
}

static char *vquote(const char *fmt, va_list ap)
{
    char *s = NULL;
    ck_assert_msg(vasprintf(&s, fmt, ap) >= 0, "out of memory");
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    return s;
}

json_t *h_req_json(sb_client *c, json_t *req)
{
    json_t *r = sb_request(c, req, H_REPLY_MS);
    if (!r) {
        char *txt = json_dumps(req, JSON_COMPACT);
        ck_abort_msg("no reply within %d ms to %.300s", H_REPLY_MS, txt ? txt : "?");
    }
    json_decref(req);
    return r;
}

json_t *h_req(sb_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = vquote(fmt, ap);
    va_end(ap);
    json_error_t jerr;
    json_t *req = json_loads(s, JSON_DECODE_ANY, &jerr);
    ck_assert_msg(req != NULL, "test bug: bad JSON %.300s: %s", s, jerr.text);
    free(s);
    return h_req_json(c, req);
}

void h_send_raw(sb_client *c, const char *bytes, size_t len)
{
    ck_assert_int_eq(sb_send_line(c, bytes, len), 0);
    ck_assert_int_eq(sb_flush(c), 0);
}

void h_send(sb_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = vquote(fmt, ap);
    va_end(ap);
    h_send_raw(c, s, strlen(s));
    free(s);
}

json_t *h_read(sb_client *c, int timeout_ms)
{
    json_t *j = sb_read_json(c, timeout_ms);
    ck_assert_msg(j != NULL, "no line within %d ms (%s)", timeout_ms, strerror(errno));
    return j;
}

json_t *h_event(sb_client *c, int timeout_ms)
{
    return sb_next_event(c, timeout_ms);
}

json_t *h_msg(sb_client *c, int timeout_ms)
{
    json_t *e = sb_next_event(c, timeout_ms);
    ck_assert_msg(e != NULL, "no delivery within %d ms", timeout_ms);
    const char *op = json_string_value(json_object_get(e, "op"));
    if (!op || strcmp(op, "msg") != 0) {
        char *t = json_dumps(e, JSON_COMPACT);
        ck_abort_msg("expected a delivery, got %s", t ? t : "?");
    }
    return e;
}

void h_no_msg(sb_client *c, int ms)
{
    json_t *e = sb_next_event(c, ms);
    if (e) {
        char *t = json_dumps(e, JSON_COMPACT);
        ck_abort_msg("expected no delivery within %d ms, got %s", ms, t ? t : "?");
    }
}

json_t *h_ok(json_t *r)
{
    ck_assert_ptr_nonnull(r);
    if (!json_is_true(json_object_get(r, "ok"))) {
        char *t = json_dumps(r, JSON_COMPACT);
        ck_abort_msg("expected ok:true, got %s", t ? t : "?");
    }
    return r;
}

json_t *h_err(json_t *r, const char *code)
{
    ck_assert_ptr_nonnull(r);
    const char *e = json_string_value(json_object_get(r, "error"));
    if (!json_is_false(json_object_get(r, "ok")) || !e || strcmp(e, code) != 0 ||
        !json_is_string(json_object_get(r, "message"))) {
        char *t = json_dumps(r, JSON_COMPACT);
        ck_abort_msg("expected ok:false error %s with a message, got %s", code, t ? t : "?");
    }
    return r;
}

json_t *h_bad(json_t *r, const char *field)
{
    h_err(r, "bad_request");
    const char *m = json_string_value(json_object_get(r, "message"));
    if (!m || !strstr(m, field)) {
        char *t = json_dumps(r, JSON_COMPACT);
        ck_abort_msg("bad_request message should name '%s': %s", field, t ? t : "?");
    }
    return r;
}

const char *h_str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s) {
        char *t = json_dumps(o, JSON_COMPACT);
        ck_abort_msg("expected string field '%s' in %s", key, t ? t : "?");
    }
    return s;
}

json_t *h_find_named(json_t *arr, const char *key, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        const char *n = json_string_value(json_object_get(v, key));
        if (n && strcmp(n, name) == 0)
            return v;
    }
    return NULL;
}

long long h_int(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) {
        char *t = json_dumps(o, JSON_COMPACT);
        ck_abort_msg("expected integer field '%s' in %s", key, t ? t : "?");
    }
    return json_integer_value(v);
}

char *h_pub(sb_client *c, const char *stream, const char *data_json)
{
    json_error_t jerr;
    json_t *data = json_loads(data_json, JSON_DECODE_ANY, &jerr);
    ck_assert_msg(data != NULL, "test bug: bad JSON %s", data_json);
    json_t *req = json_pack("{s:s,s:s,s:o}", "op", "pub", "stream", stream, "data", data);
    json_t *r = h_ok(h_req_json(c, req));
    const char *id = h_str(r, "id");
    ck_assert_msg(h_id_valid(id), "bad id %s", id);
    char *out = strdup(id);
    json_decref(r);
    return out;
}

long long h_sub(sb_client *c, const char *stream, const char *group,
                const char *consumer, int prefetch, const char *from)
{
    json_t *req = json_pack("{s:s,s:s,s:s}", "op", "sub", "stream", stream, "group", group);
    if (consumer)
        json_object_set_new(req, "consumer", json_string(consumer));
    if (prefetch > 0)
        json_object_set_new(req, "prefetch", json_integer(prefetch));
    if (from)
        json_object_set_new(req, "from", json_string(from));
    json_t *r = h_ok(h_req_json(c, req));
    long long sub = h_int(r, "sub");
    json_decref(r);
    return sub;
}

long long h_ack(sb_client *c, long long sub, const char *id)
{
    json_t *r = h_ok(h_req(c, "{'op':'ack','sub':%lld,'ids':['%s']}", sub, id));
    long long n = h_int(r, "acked");
    json_decref(r);
    return n;
}

/* ------------------------------------------------------------ Prometheus */

/* Parses "k=v,k=v" into parallel arrays (in place in buf). */
static int split_labels(char *buf, char **keys, char **vals, int max)
{
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok && n < max;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq)
            continue;
        *eq = '\0';
        keys[n] = tok;
        vals[n] = eq + 1;
        n++;
    }
    return n;
}

double h_metric_now(const char *name, const char *labels)
{
    char *body = NULL;
    double v = -1;
    ck_assert_int_eq(h_http_get(H.metrics_port, "/metrics", &body, NULL), 200);
    ck_assert_msg(h_metric(body, name, labels, &v), "no metric %s{%s}", name, labels);
    free(body);
    return v;
}

int h_metric(const char *body, const char *name, const char *labels, double *val)
{
    char want[512];
    snprintf(want, sizeof want, "%s", labels ? labels : "");
    char *wk[16], *wv[16];
    int wn = split_labels(want, wk, wv, 16);
    size_t nlen = strlen(name);
    const char *line = body;
    for (int guard = 0; line && *line && guard < 1000000; guard++) {
        const char *eol = strchr(line, '\n');
        size_t llen = eol ? (size_t)(eol - line) : strlen(line);
        if (line[0] != '#' && llen > nlen && strncmp(line, name, nlen) == 0 &&
            (line[nlen] == '{' || line[nlen] == ' ')) {
            const char *p = line + nlen;
            char gk[16][128], gv[16][256];
            int gn = 0, bad = 0;
            if (*p == '{') {
                p++;
                while (*p && *p != '}' && gn < 16) {
                    size_t k = 0;
                    while (*p && *p != '=' && k < 127) gk[gn][k++] = *p++;
                    gk[gn][k] = '\0';
                    if (*p++ != '=' || *p++ != '"') { bad = 1; break; }
                    size_t v = 0;
                    while (*p && *p != '"' && v < 255) {
                        if (*p == '\\' && p[1]) {
                            p++;
                            gv[gn][v++] = *p == 'n' ? '\n' : *p;
                            p++;
                        } else {
                            gv[gn][v++] = *p++;
                        }
                    }
                    gv[gn][v] = '\0';
                    if (*p++ != '"') { bad = 1; break; }
                    gn++;
                    if (*p == ',') p++;
                }
                if (*p != '}')
                    bad = 1;
                else
                    p++;
            }
            if (!bad && gn == wn) {
                int match = 1;
                for (int i = 0; i < wn && match; i++) {
                    int found = 0;
                    for (int j = 0; j < gn; j++)
                        if (strcmp(wk[i], gk[j]) == 0 && strcmp(wv[i], gv[j]) == 0)
                            found = 1;
                    match = found;
                }
                if (match) {
                    while (*p == ' ') p++;
                    char *end;
                    double d = strtod(p, &end);
                    if (end != p) {
                        if (val) *val = d;
                        return 1;
                    }
                }
            }
        }
        line = eol ? eol + 1 : NULL;
    }
    return 0;
}

int h_metric_type(const char *body, const char *name, const char *type)
{
    char want[300];
    snprintf(want, sizeof want, "# TYPE %s %s", name, type);
    size_t wl = strlen(want);
    for (const char *p = strstr(body, want); p; p = strstr(p + 1, want)) {
        if ((p == body || p[-1] == '\n') && (p[wl] == '\n' || p[wl] == '\0' || p[wl] == '\r'))
            return 1;
    }
    return 0;
}
