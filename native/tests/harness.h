/*
 * harness.h - what the native test programs (stress.c, soak.c) share: failed-check reporting,
 * the clock, the watchdog's async-signal-safe output, the seeded generator and fresh random
 * bytes. Static functions, for one translation unit per program; the includer defines its
 * feature macros (_POSIX_C_SOURCE or _GNU_SOURCE) first.
 */
#ifndef VRAM_TESTS_HARNESS_H
#define VRAM_TESTS_HARNESS_H

#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vram_ops.h"

/* ---- failed checks ------------------------------------------------------------------------ */

#define MAX_REPORTED 25

static atomic_long g_failures; /* failed checks (of the running test, where a program resets it) */

__attribute__((format(printf, 3, 4))) static inline void failf(const char *file, int line,
                                                              const char *fmt, ...) {
    long n = atomic_fetch_add(&g_failures, 1) + 1;
    if (n > MAX_REPORTED) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "  check failed (%s:%d): %s\n", file, line, msg);
    if (n == MAX_REPORTED) fprintf(stderr, "  (further failures not shown)\n");
}

#define CHECK(cond, ...)                                     \
    do {                                                     \
        if (!(cond)) failf(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

/* A call's code, and for a refusal its reason (want_reason < 0: any reason). */
static inline void expect_at(const char *file, int line, int rc, int want, int want_reason,
                             const char *what) {
    if (rc != want)
        failf(file, line, "%s: got %d (%s), want %d (%s)", what, rc, vram_status_name(rc), want,
              vram_status_name(want));
    if (rc != VRAM_SUCCESS && want_reason >= 0) {
        vram_error_info e;
        vram_last_error(&e);
        if (e.reason != want_reason)
            failf(file, line, "%s: reason %s, want %s", what, vram_reason_name(e.reason),
                  vram_reason_name(want_reason));
    }
}

#define EXPECT(rc, want, want_reason, what) \
    expect_at(__FILE__, __LINE__, (rc), (want), (want_reason), (what))

static inline int last_reason(void) {
    vram_error_info e;
    vram_last_error(&e);
    return e.reason;
}

/* ---- time, environment, the watchdog ------------------------------------------------------ */

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Set an environment variable the library reads at first use, unless the caller set it. */
static inline void set_default_env(const char *name, const char *value) {
    const char *v = getenv(name);
    if (!v || !*v) setenv(name, value, 1);
}

/* For a SIGALRM handler: only write() and _exit() are async-signal-safe. */
static inline void write_str(const char *s) {
    ssize_t ignored = write(STDOUT_FILENO, s, strlen(s));
    (void)ignored;
}

static inline void write_int(int v) {
    char buf[16];
    int i = (int)sizeof buf;
    buf[--i] = '\0';
    do buf[--i] = (char)('0' + v % 10); while ((v /= 10) > 0 && i > 0);
    write_str(buf + i);
}

/* Install the program's watchdog handler and arm it (seconds 0: disarmed). */
static inline void watchdog_arm(void (*handler)(int), unsigned seconds) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigaction(SIGALRM, &sa, NULL);
    alarm(seconds);
}

/* ---- the generator ------------------------------------------------------------------------ */

static uint64_t g_seed; /* VRAMOBS_TEST_SEED, printed first, replays a run's random choices */

static inline void seed_from_env(void) {
    const char *seed = getenv("VRAMOBS_TEST_SEED");
    g_seed = seed && *seed ? strtoull(seed, NULL, 0)
                           : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)clock();
}

/* xorshift64* (Vigna). */
typedef struct rng {
    uint64_t s;
} rng;

/* An independent stream of the run's seed. */
static inline rng rng_for(uint64_t stream) {
    rng r = {g_seed ^ (stream * 0x9E3779B97F4A7C15ull)};
    if (r.s == 0) r.s = 0x2545F4914F6CDD1Dull;
    return r;
}

static inline uint64_t next(rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

static inline size_t below(rng *r, size_t n) { return (size_t)(next(r) % n); }

/* Fresh pseudo-random bytes, none zero, so that untouched (zeroed) memory never passes. */
static inline void fill(rng *r, unsigned char *p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = next(r) | 0x0101010101010101ull;
        memcpy(p + i, &v, 8);
    }
    uint64_t v = next(r) | 0x0101010101010101ull;
    if (i < n) memcpy(p + i, &v, n - i);
}

/* Whether n bytes are all zero. */
static inline int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

#endif /* VRAM_TESTS_HARNESS_H */
