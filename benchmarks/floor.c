/* floor: the C baseline of the benchmark suite.
 *
 * A small C client that speaks the package's frame format to the very same
 * helper the package starts (same erl argv, same environment, same
 * coordinator -> per-worker handler -> port_command path), so that what
 * erlang.call costs can be set against what the pipes, the thread wake-ups
 * and the BEAM cost by themselves.
 *
 *   floor serve ERL ARGS...   start the helper (argv as given, environment
 *                             inherited), read HELLO, register `echo` with an
 *                             EVAL frame, then run commands read from stdin,
 *                             one per line, answering each with a JSON line:
 *
 *     seq N HEX          (a) N sequential CALLs of payload HEX (the ETF of
 *                            {<<"echo">>, [Args]}, hex), the calling thread
 *                            reading its own reply with a blocking read()
 *     threads K N HEX    (b) K calling threads, N calls each; one reader
 *                            thread reads the helper's stdout, splits frames,
 *                            routes each by worker id and wakes its thread
 *                            through that thread's pipe (one byte)
 *     pipeline D N HEX   (c) one thread keeps D requests in flight on D
 *                            workers (a new one is written for every reply)
 *                            until N replies came back
 *     apipeline D N HEX  (c async) the same with CALL_ASYNC frames on the
 *                            async channel: a process per call in the BEAM
 *     pingpong N         raw pipe ping-pong between two threads (1 byte)
 *     pingpong_proc N    the same between two processes
 *     quit
 *
 *   floor hello ERL ARGS...   start the helper, print the time from spawn to
 *                             its HELLO frame as JSON, and exit.
 *
 * Frames: <<Len:32, Kind:8, Worker:32, Seq:32, Payload>> (erlang_module/
 * protocol.h).  Latencies are per call, clock_gettime(CLOCK_MONOTONIC).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The wire protocol's kinds and header size: the extension's own. */
#include "../erlang_module/protocol.h"

extern char **environ;

static int to_fd = -1, from_fd = -1;
static pid_t helper_pid;

static void
die(const char *what)
{
    fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
    exit(2);
}

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint32_t
be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}

static void
put32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static void
write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

/* ------------------------------------------------------------ spawning */

/* Same as erlang_module/spawn.c: pipes on fds 0/1, own process group,
 * default signal mask and dispositions.  stderr is inherited. */
static void
spawn_helper(char **argv)
{
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
        die("pipe2");
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);
    int rc = posix_spawn(&helper_pid, argv[0], &fa, &at, argv, environ);
    if (rc != 0) {
        errno = rc;
        die("posix_spawn");
    }
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(in[0]);
    close(out[1]);
    to_fd = in[1];
    from_fd = out[0];
}

/* ------------------------------------------------ own-read frame reader */

typedef struct {
    char *d;
    size_t start, end, cap;
} rbuf;

static rbuf rb;

/* Blocking: returns the next frame's body (valid until the next call). */
static char *
read_frame(rbuf *b, int fd, uint32_t *blen)
{
    for (;;) {
        size_t have = b->end - b->start;
        if (have >= 4) {
            uint32_t n = be32(b->d + b->start);
            if (have - 4 >= n) {
                char *body = b->d + b->start + 4;
                b->start += 4 + (size_t)n;
                if (b->start == b->end)
                    b->start = b->end = 0;
                *blen = n;
                return body;
            }
            if (4 + (size_t)n > b->cap - b->start) {
                if (b->start > 0) {
                    memmove(b->d, b->d + b->start, have);
                    b->end = have;
                    b->start = 0;
                }
                if (4 + (size_t)n > b->cap) {
                    b->cap = 4 + (size_t)n;
                    b->d = realloc(b->d, b->cap);
                    if (!b->d)
                        die("realloc");
                }
            }
        } else if (b->cap - b->end < 4) {
            memmove(b->d, b->d + b->start, have);
            b->end = have;
            b->start = 0;
        }
        ssize_t r = read(fd, b->d + b->end, b->cap - b->end);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die("read");
        if (r == 0) {
            fprintf(stderr, "floor: helper closed its stdout\n");
            exit(2);
        }
        b->end += (size_t)r;
    }
}

/* A request frame for `worker`: the payload once, the Seq patched per call. */
typedef struct {
    char *d;
    size_t len;
} frame;

static frame
make_frame(int kind, uint32_t worker, const char *payload, size_t plen)
{
    frame f;
    f.len = 4 + ERPY_HEADER_SIZE + plen;
    f.d = malloc(f.len);
    if (!f.d)
        die("malloc");
    put32(f.d, (uint32_t)(ERPY_HEADER_SIZE + plen));
    f.d[4] = (char)kind;
    put32(f.d + 5, worker);
    put32(f.d + 9, 0);
    memcpy(f.d + 13, payload, plen);
    return f;
}

static void
check_reply(const char *body, uint32_t blen, uint32_t worker, uint32_t seq)
{
    if (blen < ERPY_HEADER_SIZE || body[0] != ERPY_K_OK || be32(body + 1) != worker || be32(body + 5) != seq) {
        fprintf(stderr, "floor: unexpected reply kind=%d worker=%u seq=%u (want %u/%u)\n",
                blen ? body[0] : -1, blen >= 5 ? be32(body + 1) : 0,
                blen >= ERPY_HEADER_SIZE ? be32(body + 5) : 0, worker, seq);
        exit(2);
    }
}

static uint32_t seqs[1 << 12];   /* per worker id */

/* ---------------------------------------------------------- statistics */

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Resource usage of this process (all its threads, finished ones too) at
 * the start of the current command. */
static struct rusage ru0;

static double
tv_s(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

static void
print_stats(const char *mode, int k, long n, uint64_t *s, long ns, uint64_t wall_ns, size_t plen)
{
    if (ns > 0)
        qsort(s, (size_t)ns, sizeof *s, cmp_u64);
    double sum = 0;
    for (long i = 0; i < ns; i++)
        sum += (double)s[i];
    double med = ns ? (ns % 2 ? (double)s[ns / 2] : ((double)s[ns / 2 - 1] + (double)s[ns / 2]) / 2) : 0;
    double p99 = ns ? (double)s[(long)((double)(ns - 1) * 0.99)] : 0;
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    printf("{\"mode\": \"%s\", \"threads\": %d, \"calls\": %ld, \"payload_bytes\": %zu, "
           "\"median_us\": %.3f, \"p99_us\": %.3f, \"mean_us\": %.3f, \"wall_s\": %.6f, "
           "\"calls_per_s\": %.1f, \"user_s\": %.6f, \"sys_s\": %.6f, \"vcsw\": %ld, "
           "\"ivcsw\": %ld, \"minflt\": %ld}\n",
           mode, k, n, plen, med / 1e3, p99 / 1e3, ns ? sum / (double)ns / 1e3 : 0.0,
           (double)wall_ns / 1e9, wall_ns ? (double)n * 1e9 / (double)wall_ns : 0.0,
           tv_s(&ru1.ru_utime) - tv_s(&ru0.ru_utime), tv_s(&ru1.ru_stime) - tv_s(&ru0.ru_stime),
           ru1.ru_nvcsw - ru0.ru_nvcsw, ru1.ru_nivcsw - ru0.ru_nivcsw, ru1.ru_minflt - ru0.ru_minflt);
    fflush(stdout);
}

/* ---------------------------------------------------- (a) sequential */

static void
run_seq(long n, const char *payload, size_t plen)
{
    const uint32_t worker = 1;
    frame f = make_frame(ERPY_K_CALL, worker, payload, plen);
    uint64_t *s = malloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    uint64_t t_start = now_ns();
    for (long i = 0; i < n; i++) {
        uint32_t seq = ++seqs[worker];
        put32(f.d + 9, seq);
        uint64_t t0 = now_ns();
        write_all(to_fd, f.d, f.len);
        uint32_t blen;
        char *body = read_frame(&rb, from_fd, &blen);
        uint64_t t1 = now_ns();
        check_reply(body, blen, worker, seq);
        s[i] = t1 - t0;
    }
    uint64_t wall = now_ns() - t_start;
    print_stats("seq", 1, n, s, n, wall, plen);
    free(s);
    free(f.d);
}

/* ------------------------------ (b) K threads + reader + per-thread pipes */

typedef struct {
    uint32_t worker;
    int pipe_r, pipe_w;
    long n;
    frame req;
    char *reply;          /* filled by the reader */
    size_t reply_len, reply_cap;
    uint64_t *samples;
} caller;

static pthread_mutex_t wlock = PTHREAD_MUTEX_INITIALIZER;
static caller *callers;
static int n_callers;
static uint32_t first_worker;
static long reader_expect;

static void *
reader_main(void *arg)
{
    (void)arg;
    size_t cap = 256 * 1024, start = 0, end = 0;
    char *buf = malloc(cap);
    long got = 0;
    while (got < reader_expect) {
        if (start > 0 && cap - end < 65536) {
            memmove(buf, buf + start, end - start);
            end -= start;
            start = 0;
        }
        if (end == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t r = read(from_fd, buf + end, cap - end);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            die("reader read");
        end += (size_t)r;
        while (end - start >= 4) {
            uint32_t blen = be32(buf + start);
            if (end - start - 4 < blen) {
                if (4 + (size_t)blen > cap) {
                    memmove(buf, buf + start, end - start);
                    end -= start;
                    start = 0;
                    cap = 4 + (size_t)blen;
                    buf = realloc(buf, cap);
                }
                break;
            }
            const char *body = buf + start + 4;
            uint32_t w = blen >= ERPY_HEADER_SIZE ? be32(body + 1) : 0;
            if (w < first_worker || w >= first_worker + (uint32_t)n_callers) {
                fprintf(stderr, "floor: reply for unknown worker %u\n", w);
                exit(2);
            }
            caller *c = &callers[w - first_worker];
            /* Like the package: the frame is copied out of the chunk buffer
             * and the owner woken through its pipe. */
            if (c->reply_cap < blen) {
                c->reply_cap = blen;
                c->reply = realloc(c->reply, blen);
            }
            memcpy(c->reply, body, blen);
            c->reply_len = blen;
            __atomic_thread_fence(__ATOMIC_RELEASE);
            if (write(c->pipe_w, "x", 1) != 1)
                die("wake");
            start += 4 + (size_t)blen;
            got++;
        }
        if (start == end)
            start = end = 0;
    }
    free(buf);
    return NULL;
}

static void *
caller_main(void *arg)
{
    caller *c = arg;
    char x;
    for (long i = 0; i < c->n; i++) {
        uint32_t seq = ++seqs[c->worker];
        put32(c->req.d + 9, seq);
        uint64_t t0 = now_ns();
        pthread_mutex_lock(&wlock);
        write_all(to_fd, c->req.d, c->req.len);
        pthread_mutex_unlock(&wlock);
        ssize_t r;
        do {
            r = read(c->pipe_r, &x, 1);
        } while (r < 0 && errno == EINTR);
        if (r != 1)
            die("caller read");
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        uint64_t t1 = now_ns();
        check_reply(c->reply, (uint32_t)c->reply_len, c->worker, seq);
        c->samples[i] = t1 - t0;
    }
    return NULL;
}

static void
run_threads(int k, long n, const char *payload, size_t plen)
{
    first_worker = 101;
    n_callers = k;
    callers = calloc((size_t)k, sizeof *callers);
    reader_expect = (long)k * n;
    for (int i = 0; i < k; i++) {
        caller *c = &callers[i];
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
            die("pipe2");
        c->pipe_r = p[0];
        c->pipe_w = p[1];
        c->worker = first_worker + (uint32_t)i;
        c->n = n;
        c->req = make_frame(ERPY_K_CALL, c->worker, payload, plen);
        c->samples = malloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    }
    pthread_t rt, *ts = calloc((size_t)k, sizeof *ts);
    uint64_t t_start = now_ns();
    pthread_create(&rt, NULL, reader_main, NULL);
    for (int i = 0; i < k; i++)
        pthread_create(&ts[i], NULL, caller_main, &callers[i]);
    for (int i = 0; i < k; i++)
        pthread_join(ts[i], NULL);
    pthread_join(rt, NULL);
    uint64_t wall = now_ns() - t_start;
    long total = (long)k * n;
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)(total > 0 ? total : 1));
    long m = 0;
    for (int i = 0; i < k; i++) {
        caller *c = &callers[i];
        memcpy(all + m, c->samples, sizeof(uint64_t) * (size_t)n);
        m += n;
        close(c->pipe_r);
        close(c->pipe_w);
        free(c->samples);
        free(c->req.d);
        free(c->reply);
    }
    print_stats("threads", k, (long)k * n, all, m, wall, plen);
    free(all);
    free(ts);
    free(callers);
}

/* ------------------------------------------------------ (c) pipelined */

/* Async calls of every pipelined run: Seq counts on, so that no two calls
 * of the helper's lifetime share one. */
static uint32_t async_seq;

/* (c): one thread keeps `depth` calls in flight.  Synchronous: CALLs on
 * `depth` workers, each worker's next call written when its reply comes.
 * Async (apipeline): CALL_ASYNC frames on the async channel, the helper
 * running each in a process of its own; slot i's calls get the Seqs
 * i+1, i+1+depth, ... counted from async_seq, so a reply's Seq names its
 * slot. */
static void
run_pipeline(int depth, long n, const char *payload, size_t plen, int async)
{
    const uint32_t first = 201;
    frame *req = calloc((size_t)depth, sizeof *req);
    uint32_t *want = calloc((size_t)depth, sizeof *want);
    size_t flen = 4 + ERPY_HEADER_SIZE + plen;
    char *batch = malloc(flen * (size_t)depth);
    size_t blen_out = 0;
    long sent = 0, got = 0;
    uint32_t base = async_seq;
    uint64_t t_start = now_ns();
    for (int i = 0; i < depth && sent < n; i++) {
        if (async) {
            req[i] = make_frame(ERPY_K_CALL_ASYNC, ERPY_ASYNC_WORKER, payload, plen);
            want[i] = base + (uint32_t)i + 1;
        } else {
            req[i] = make_frame(ERPY_K_CALL, first + (uint32_t)i, payload, plen);
            want[i] = ++seqs[first + i];
        }
        put32(req[i].d + 9, want[i]);
        memcpy(batch + blen_out, req[i].d, flen);
        blen_out += flen;
        sent++;
    }
    write_all(to_fd, batch, blen_out);
    while (got < n) {
        /* Read one frame blocking, then every frame already buffered; answer
         * them all with one write. */
        blen_out = 0;
        do {
            uint32_t blen;
            char *body = read_frame(&rb, from_fd, &blen);
            uint32_t w = be32(body + 1);
            int i = async ? (int)((be32(body + 5) - base - 1) % (uint32_t)depth) : (int)(w - first);
            if (i < 0 || i >= depth) {
                fprintf(stderr, "floor: reply for no call (worker %u)\n", w);
                exit(2);
            }
            check_reply(body, blen, async ? ERPY_ASYNC_WORKER : first + (uint32_t)i, want[i]);
            got++;
            if (sent < n) {
                want[i] = async ? want[i] + (uint32_t)depth : ++seqs[w];
                put32(req[i].d + 9, want[i]);
                memcpy(batch + blen_out, req[i].d, flen);
                blen_out += flen;
                sent++;
            }
        } while (rb.end - rb.start >= 4 && rb.end - rb.start - 4 >= be32(rb.d + rb.start) &&
                 blen_out + flen <= flen * (size_t)depth);
        if (blen_out)
            write_all(to_fd, batch, blen_out);
    }
    if (async)
        async_seq = base + (uint32_t)(n + depth);
    uint64_t wall = now_ns() - t_start;
    print_stats(async ? "apipeline" : "pipeline", depth, n, NULL, 0, wall, plen);
    for (int i = 0; i < depth; i++)
        free(req[i].d);
    free(want);
    free(req);
    free(batch);
}

/* ------------------------------------------------- raw pipe ping-pong */

static int pp_a[2], pp_b[2];
static long pp_n;

static void
pong_loop(void)
{
    char x;
    for (long i = 0; i < pp_n; i++) {
        if (read(pp_a[0], &x, 1) != 1 || write(pp_b[1], &x, 1) != 1)
            die("pong");
    }
}

static void *
pong_main(void *arg)
{
    (void)arg;
    pong_loop();
    return NULL;
}

static void
run_pingpong(long n, int procs)
{
    if (pipe(pp_a) < 0 || pipe(pp_b) < 0)
        die("pipe");
    pp_n = n;
    pthread_t t;
    pid_t pid = -1;
    if (procs) {
        fflush(stdout);
        pid = fork();
        if (pid == 0) {
            pong_loop();
            _exit(0);
        }
    } else {
        pthread_create(&t, NULL, pong_main, NULL);
    }
    uint64_t *s = malloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    char x = 'x';
    uint64_t t_start = now_ns();
    for (long i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        if (write(pp_a[1], &x, 1) != 1 || read(pp_b[0], &x, 1) != 1)
            die("ping");
        s[i] = now_ns() - t0;
    }
    uint64_t wall = now_ns() - t_start;
    if (procs)
        waitpid(pid, NULL, 0);
    else
        pthread_join(t, NULL);
    close(pp_a[0]);
    close(pp_a[1]);
    close(pp_b[0]);
    close(pp_b[1]);
    print_stats(procs ? "pingpong_proc" : "pingpong", procs ? 2 : 1, n, s, n, wall, 1);
    free(s);
}

/* -------------------------------------------------------------- setup */

static void
expect_hello(void)
{
    uint32_t blen;
    char *body = read_frame(&rb, from_fd, &blen);
    if (blen < ERPY_HEADER_SIZE || body[0] != ERPY_K_HELLO) {
        fprintf(stderr, "floor: first frame is not HELLO (kind %d)\n", blen ? body[0] : -1);
        exit(2);
    }
}

static void
register_echo(void)
{
    static const char src[] = "py:register_function(echo, fun([X]) -> X end).";
    size_t sl = sizeof src - 1;
    char *p = malloc(6 + sl);
    p[0] = (char)ERPY_ETF_VERSION;
    p[1] = ERPY_ETF_BINARY;
    put32(p + 2, (uint32_t)sl);
    memcpy(p + 6, src, sl);
    const uint32_t worker = 1000;
    frame f = make_frame(ERPY_K_EVAL, worker, p, 6 + sl);
    put32(f.d + 9, ++seqs[worker]);
    write_all(to_fd, f.d, f.len);
    uint32_t blen;
    char *body = read_frame(&rb, from_fd, &blen);
    check_reply(body, blen, worker, seqs[worker]);
    free(p);
    free(f.d);
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    fprintf(stderr, "floor: bad hex\n");
    exit(2);
}

static char *
unhex(const char *h, size_t *len)
{
    size_t n = strlen(h) / 2;
    char *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)(hexval(h[2 * i]) << 4 | hexval(h[2 * i + 1]));
    *len = n;
    return p;
}

int
main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "serve") != 0 && strcmp(argv[1], "hello") != 0)) {
        fprintf(stderr, "usage: floor serve|hello ERL [ARGS...]  (commands on stdin)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    rb.cap = 256 * 1024;
    rb.d = malloc(rb.cap);
    uint64_t t0 = now_ns();
    spawn_helper(argv + 2);
    expect_hello();
    if (strcmp(argv[1], "hello") == 0) {
        uint64_t t1 = now_ns();
        printf("{\"mode\": \"hello\", \"spawn_to_hello_s\": %.6f}\n", (double)(t1 - t0) / 1e9);
        close(to_fd);
        waitpid(helper_pid, NULL, 0);
        return 0;
    }
    register_echo();
    printf("{\"mode\": \"ready\", \"helper_pid\": %d}\n", (int)helper_pid);
    fflush(stdout);

    size_t lcap = 0;
    char *line = NULL;
    ssize_t ll;
    while ((ll = getline(&line, &lcap, stdin)) > 0) {
        char cmd[32], *rest;
        long a = 0, b = 0;
        if (sscanf(line, "%31s", cmd) != 1)
            continue;
        rest = line + strlen(cmd);
        getrusage(RUSAGE_SELF, &ru0);
        if (strcmp(cmd, "quit") == 0)
            break;
        if (strcmp(cmd, "pingpong") == 0 || strcmp(cmd, "pingpong_proc") == 0) {
            run_pingpong(strtol(rest, NULL, 10), cmd[8] == '_');
            continue;
        }
        char *hex = malloc((size_t)ll + 1);
        size_t plen;
        char *payload;
        if (strcmp(cmd, "seq") == 0 && sscanf(rest, "%ld %s", &a, hex) == 2) {
            payload = unhex(hex, &plen);
            run_seq(a, payload, plen);
        } else if (strcmp(cmd, "threads") == 0 && sscanf(rest, "%ld %ld %s", &a, &b, hex) == 3) {
            payload = unhex(hex, &plen);
            run_threads((int)a, b, payload, plen);
        } else if ((strcmp(cmd, "pipeline") == 0 || strcmp(cmd, "apipeline") == 0) &&
                   sscanf(rest, "%ld %ld %s", &a, &b, hex) == 3) {
            payload = unhex(hex, &plen);
            run_pipeline((int)a, b, payload, plen, cmd[0] == 'a');
        } else {
            fprintf(stderr, "floor: bad command: %s", line);
            printf("{\"error\": \"bad command\"}\n");
            fflush(stdout);
            free(hex);
            continue;
        }
        free(payload);
        free(hex);
    }
    free(line);
    close(to_fd);   /* stdin EOF: the helper halts */
    waitpid(helper_pid, NULL, 0);
    return 0;
}
