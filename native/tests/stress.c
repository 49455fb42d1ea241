/*
 * stress.c - multi-threaded stress test of libvram_ops, written to run under ASan+UBSan and,
 * separately, TSan (native/sanitize.sh builds and runs it both ways). Plain C11 + pthreads.
 *
 *     vram_stress [threads [iterations]]      threads >= 16 (default 32), iterations
 *                                             per worker thread (default 2000)
 *
 * Backend: the host backend (vram_select_backend("host")), unless VRAMOBS_TEST_BACKEND=cuda:
 * then the CUDA backend, normally over tests/fakecuda (VRAMOBS_CUDA_DRIVER=<libfakecuda.so>).
 * On the host backend device memory is host memory, so a copy that touched a freed allocation
 * is a heap-use-after-free for ASan; on the fake driver it is too (the fake's memory is host
 * memory from posix_memalign, and its memcpy goes through the sanitizer's interceptor).
 *
 * Tests, in order (each prints "ok" or "FAIL" with its failed checks):
 *   select_backend       select the backend under test; refusals of bad names
 *   alloc_copy_free      (a) threads x iterations of malloc_ex / h2d / d2h / free_ex on their
 *                        own allocations; fresh random bytes (never zero) verified on every
 *                        read-back, whole allocations checked against a shadow copy before
 *                        each free; out-of-bounds copies refused (6) and writing nothing;
 *                        stale generations freed again (0) without freeing anyone else's
 *   copy_vs_free         (b) threads copy into / out of their own slice of one shared 1 MiB
 *                        allocation while another thread frees it: every copy returns 0
 *                        (with correct data) or 5, never anything else (reason freed_pointer
 *                        at the allocation's start; inside it, where the registry keeps no
 *                        tombstone, freed_pointer or unknown_pointer)
 *   double_free          (c) threads free one pointer at once (half vram_free, half
 *                        vram_free_ex): all return 0, frees_total rises by exactly 1 and
 *                        repeated_frees_total by threads - 1
 *   snapshots_and_busy   (d)+(e) snapshot threads (vram_stats_get, vram_registry_stats_get,
 *                        vram_registry_list, vram_get_info) check consistency and monotonicity
 *                        while workers allocate, and a selector thread's vram_select_backend
 *                        of the other backend is refused (10) throughout (a sentinel
 *                        allocation stays live)
 *   select_busy          (e) a thread's select of the other backend while the main thread
 *                        holds an allocation: 10; of the backend in use: 0
 *   final_state          live_count == 0, no tag holds bytes, the books balance, no entry
 *                        was evicted or lost; on the fake driver no fake allocation remains
 *   select_toggle_race   one thread switches backends back and forth while three others
 *                        call malloc/free/get_info: no allocation lands on a backend switched
 *                        away, every one is freed
 *
 * Seed: VRAMOBS_TEST_SEED=<n> replays a run's random sizes and data (not its thread
 * interleaving); the seed used is printed first.
 * Watchdog: a test still running after VRAMOBS_STRESS_TIMEOUT seconds (default 120) is a
 * deadlock (a lost wake-up in the registry, say): the program names it and exits 3.
 * The last line is "N passed, M failed"; the exit status is 1 when any test failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vram_ops.h"

/* ---------------------------------------------------------------------------------------- */
/* Harness                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static int g_threads = 32;
static long g_iterations = 2000;
static uint64_t g_seed;
static const char *g_backend = "host";
static const char *g_other_backend = "cuda";

static atomic_long g_failures; /* failed checks of the running test */
static int g_passed, g_failed;

#define MAX_REPORTED 25

static void failf(const char *file, int line, const char *fmt, ...) {
    long n = atomic_fetch_add(&g_failures, 1) + 1;
    if (n > MAX_REPORTED) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "  check failed (%s:%d): %s\n", file, line, msg);
    if (n == MAX_REPORTED) fprintf(stderr, "  (further failures of this test not shown)\n");
}

#define CHECK(cond, ...)                                            \
    do {                                                            \
        if (!(cond)) failf(__FILE__, __LINE__, __VA_ARGS__);        \
    } while (0)

#define CHECK_STATUS(got, want, what)                                                   \
    do {                                                                                \
        int got_ = (got);                                                               \
        if (got_ != (want))                                                             \
            failf(__FILE__, __LINE__, "%s: got %d (%s), want %d (%s)", (what), got_,    \
                  vram_status_name(got_), (want), vram_status_name(want));              \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The watchdog: async-signal-safe, so only write() and _exit(). */
static const char *volatile g_current_test = "";
static unsigned g_timeout_s = 120;

static void write_str(const char *s) {
    ssize_t ignored = write(STDOUT_FILENO, s, strlen(s));
    (void)ignored;
}

static void write_int(int v) {
    char buf[16];
    int i = (int)sizeof buf;
    buf[--i] = '\0';
    do buf[--i] = (char)('0' + v % 10); while ((v /= 10) > 0 && i > 0);
    write_str(buf + i);
}

static void on_timeout(int sig) {
    (void)sig;
    write_str("FAIL ");
    write_str((const char *)g_current_test);
    write_str(": still running after the watchdog's time (VRAMOBS_STRESS_TIMEOUT): deadlock?\n");
    write_int(g_passed);
    write_str(" passed, ");
    write_int(g_failed + 1);
    write_str(" failed\n");
    _exit(3);
}

static void run_test(const char *name, void (*fn)(void)) {
    atomic_store(&g_failures, 0);
    g_current_test = name;
    alarm(g_timeout_s);
    double t0 = now_s();
    fn();
    double dt = now_s() - t0;
    alarm(0);
    long failures = atomic_load(&g_failures);
    if (failures == 0) {
        g_passed++;
        printf("ok   %-20s (%.2f s)\n", name, dt);
    } else {
        g_failed++;
        printf("FAIL %-20s (%.2f s): %ld failed checks\n", name, dt, failures);
    }
    fflush(stdout);
}

/* xorshift64* (Vigna). */
typedef struct rng {
    uint64_t s;
} rng;

static rng rng_for(uint64_t stream) {
    rng r = {g_seed ^ (stream * 0x9E3779B97F4A7C15ull)};
    if (r.s == 0) r.s = 0x2545F4914F6CDD1Dull;
    return r;
}

static uint64_t next(rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

static size_t below(rng *r, size_t n) { return (size_t)(next(r) % n); }

/* Fresh pseudo-random bytes, never zero, so that untouched (zeroed) memory never passes. */
static void fill(rng *r, unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint64_t v = next(r);
        for (int k = 0; k < 8 && i < n; k++, i++, v >>= 8) p[i] = (unsigned char)(1 + (v & 0xff) % 255);
    }
}

/* A size with small, medium and large allocations. */
static size_t random_size(rng *r) {
    switch (below(r, 10)) {
    case 0: case 1: case 2: return 1 + below(r, 256);
    case 3: case 4: case 5: case 6: return 257 + below(r, 4096 - 256);
    default: return 4097 + below(r, 65536 - 4096);
    }
}

static const char *reason_of_last_error(void) {
    vram_error_info e;
    vram_last_error(&e);
    return vram_reason_name(e.reason);
}

static int last_reason(void) {
    vram_error_info e;
    vram_last_error(&e);
    return e.reason;
}

static vram_registry_stats registry(void) {
    vram_registry_stats s;
    int rc = vram_registry_stats_get(-1, &s, sizeof s);
    CHECK_STATUS(rc, VRAM_SUCCESS, "vram_registry_stats_get");
    return s;
}

typedef struct worker {
    pthread_t thread;
    int index;
    int count;
    void *arg;
} worker;

/* Run fn on n threads; each gets its worker (index, count, arg). */
static void run_threads(int n, void *(*fn)(void *), void *arg) {
    worker *w = calloc((size_t)n, sizeof *w);
    if (!w) {
        CHECK(0, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        w[i].index = i;
        w[i].count = n;
        w[i].arg = arg;
        if (pthread_create(&w[i].thread, NULL, fn, &w[i]) != 0) {
            CHECK(0, "pthread_create failed at thread %d", i);
            n = i;
            break;
        }
    }
    for (int i = 0; i < n; i++) pthread_join(w[i].thread, NULL);
    free(w);
}

/* ---------------------------------------------------------------------------------------- */
/* select_backend                                                                            */
/* ---------------------------------------------------------------------------------------- */

static void test_select_backend(void) {
    CHECK_STATUS(vram_select_backend(g_backend), VRAM_SUCCESS, "vram_select_backend(backend under test)");
    CHECK(strcmp(vram_backend_name(), g_backend) == 0, "backend is '%s', want '%s' (%s)",
          vram_backend_name(), g_backend, vram_backend_diagnostic());
    int count = 0;
    CHECK_STATUS(vram_device_count(&count), VRAM_SUCCESS, "vram_device_count");
    CHECK(count >= 1, "device count %d (%s)", count, vram_backend_diagnostic());
    CHECK_STATUS(vram_select_backend(NULL), VRAM_ERR_INVALID_PARAMETERS, "vram_select_backend(NULL)");
    CHECK_STATUS(vram_select_backend("bogus"), VRAM_ERR_INVALID_PARAMETERS,
                 "vram_select_backend(\"bogus\")");
    CHECK(strcmp(vram_backend_name(), g_backend) == 0, "a refused selection changed the backend");
}

/* ---------------------------------------------------------------------------------------- */
/* (a) alloc_copy_free: each thread works on its own allocations                             */
/* ---------------------------------------------------------------------------------------- */

#define SLOTS 4
#define MAX_ALLOC 65536

typedef struct slot {
    unsigned char *p;
    uint64_t generation;
    size_t size;
    unsigned char *shadow; /* what the allocation must hold (0 = never written) */
} slot;

typedef struct worker_state {
    rng r;
    slot slots[SLOTS];
    unsigned char *src, *dst;
} worker_state;

/* Allocate into s, write it whole with fresh bytes and read it back. */
static void slot_alloc(worker_state *w, slot *s) {
    size_t size = random_size(&w->r);
    uint32_t tag = (uint32_t)below(&w->r, VRAM_MAX_TAGS);
    void *p = (void *)(uintptr_t)0x1000; /* must be overwritten */
    uint64_t generation = 0;
    int rc = vram_malloc_ex(&p, size, tag, &generation);
    if (rc != VRAM_SUCCESS) {
        CHECK_STATUS(rc, VRAM_SUCCESS, "vram_malloc_ex");
        CHECK(p == NULL, "failed malloc left *ptr %p", p);
        return;
    }
    CHECK(p != NULL && generation != 0, "malloc_ex gave %p generation %llu", p,
          (unsigned long long)generation);
    s->p = p;
    s->generation = generation;
    s->size = size;
    fill(&w->r, s->shadow, size);
    CHECK_STATUS(vram_memcpy_h2d(p, s->shadow, size), VRAM_SUCCESS, "h2d of a fresh allocation");
    memset(w->dst, 0, size);
    CHECK_STATUS(vram_memcpy_d2h(w->dst, p, size), VRAM_SUCCESS, "d2h of a fresh allocation");
    CHECK(memcmp(w->dst, s->shadow, size) == 0, "fresh allocation %p (%zu B) read back wrong",
          (void *)p, size);
}

/* The whole allocation must still hold its shadow: nobody else wrote into it. */
static void slot_verify(worker_state *w, slot *s) {
    memset(w->dst, 0, s->size);
    int rc = vram_memcpy_d2h(w->dst, s->p, s->size);
    CHECK_STATUS(rc, VRAM_SUCCESS, "d2h of a whole live allocation");
    if (rc == VRAM_SUCCESS)
        CHECK(memcmp(w->dst, s->shadow, s->size) == 0,
              "allocation %p (%zu B) changed behind its owner's back", (void *)s->p, s->size);
}

static void slot_free(worker_state *w, slot *s) {
    slot_verify(w, s);
    if (below(&w->r, 4) == 0)
        CHECK_STATUS(vram_free(s->p), VRAM_SUCCESS, "vram_free of an own allocation");
    else
        CHECK_STATUS(vram_free_ex(s->p, s->generation), VRAM_SUCCESS, "vram_free_ex of an own allocation");
    /* A stale generation frees nothing, even if another thread got the address meanwhile
     * (that thread's shadow check would see its allocation vanish). */
    if (below(&w->r, 4) == 0)
        CHECK_STATUS(vram_free_ex(s->p, s->generation), VRAM_SUCCESS, "vram_free_ex of a stale generation");
    s->p = NULL;
    s->size = 0;
}

static void worker_step(worker_state *w) {
    slot *s = &w->slots[below(&w->r, SLOTS)];
    if (!s->p) {
        slot_alloc(w, s);
        return;
    }
    size_t roll = below(&w->r, 10);
    if (roll < 6) { /* a sub-range round trip at an interior pointer */
        size_t off = below(&w->r, s->size);
        size_t len = 1 + below(&w->r, s->size - off);
        fill(&w->r, w->src, len);
        CHECK_STATUS(vram_memcpy_h2d(s->p + off, w->src, len), VRAM_SUCCESS, "h2d sub-range");
        memcpy(s->shadow + off, w->src, len);
        memset(w->dst, 0, len);
        CHECK_STATUS(vram_memcpy_d2h(w->dst, s->p + off, len), VRAM_SUCCESS, "d2h sub-range");
        CHECK(memcmp(w->dst, w->src, len) == 0, "sub-range [%zu, +%zu) of %p read back wrong", off,
              len, (void *)s->p);
    } else if (roll < 7) { /* one byte past the end: refused, nothing written */
        size_t off = below(&w->r, s->size);
        size_t len = s->size - off + 1;
        fill(&w->r, w->src, len);
        int rc = vram_memcpy_h2d(s->p + off, w->src, len);
        CHECK_STATUS(rc, VRAM_ERR_OUT_OF_BOUNDS, "h2d one byte past the end");
        rc = vram_memcpy_d2h(w->dst, s->p + off, len);
        CHECK_STATUS(rc, VRAM_ERR_OUT_OF_BOUNDS, "d2h one byte past the end");
    } else {
        slot_free(w, s);
    }
}

static int worker_init(worker_state *w, uint64_t stream) {
    memset(w, 0, sizeof *w);
    w->r = rng_for(stream);
    w->src = malloc(MAX_ALLOC + 1);
    w->dst = malloc(MAX_ALLOC + 1);
    int ok = w->src && w->dst;
    for (int i = 0; i < SLOTS; i++) ok = ok && (w->slots[i].shadow = malloc(MAX_ALLOC));
    CHECK(ok, "out of host memory");
    return ok;
}

static void worker_done(worker_state *w) {
    for (int i = 0; i < SLOTS; i++) {
        if (w->slots[i].p) slot_free(w, &w->slots[i]);
        free(w->slots[i].shadow);
    }
    free(w->src);
    free(w->dst);
}

static void *alloc_copy_free_thread(void *arg) {
    worker *me = arg;
    worker_state w;
    if (worker_init(&w, 0x100 + (uint64_t)me->index)) {
        for (long i = 0; i < g_iterations; i++) worker_step(&w);
    }
    worker_done(&w);
    return NULL;
}

static void test_alloc_copy_free(void) {
    vram_registry_stats before = registry();
    run_threads(g_threads, alloc_copy_free_thread, NULL);
    vram_registry_stats after = registry();
    CHECK(after.live_count == before.live_count, "live_count %llu after, %llu before",
          (unsigned long long)after.live_count, (unsigned long long)before.live_count);
    CHECK(after.allocs_total - before.allocs_total == after.frees_total - before.frees_total,
          "allocs +%llu but frees +%llu", (unsigned long long)(after.allocs_total - before.allocs_total),
          (unsigned long long)(after.frees_total - before.frees_total));
    CHECK(after.allocs_total > before.allocs_total, "nothing was allocated");
}

/* ---------------------------------------------------------------------------------------- */
/* (b) copy_vs_free: copies into / out of one shared allocation race its free                */
/* ---------------------------------------------------------------------------------------- */

#define SHARED_BYTES ((size_t)1 << 20)

typedef struct race {
    unsigned char *base;
    uint64_t generation;
    size_t slice; /* copier i owns [i * slice, (i + 1) * slice) */
    int copiers;
    atomic_long copies_ok;
    atomic_int started;
    long free_after; /* successful copies to wait for before freeing */
    int use_free_ex;
    int round;
    int overlapped; /* set by the freer: copies completed while its free ran */
} race;

/* A copy refused because its allocation was freed: the registry remembers freed starts
 * (tombstones), so a copy at the very start says freed_pointer; one at an interior address
 * of the freed allocation finds no tombstone and says unknown_pointer. */
static void check_freed_reason(int at_start, const char *what) {
    int reason = last_reason();
    if (at_start)
        CHECK(reason == VRAM_REASON_FREED_POINTER, "%s racing a free at the start: 5 with reason %s, "
              "want freed_pointer", what, reason_of_last_error());
    else
        CHECK(reason == VRAM_REASON_FREED_POINTER || reason == VRAM_REASON_UNKNOWN_POINTER,
              "%s racing a free: 5 with reason %s", what, reason_of_last_error());
}

static void *copier_thread(void *arg) {
    worker *me = arg;
    race *rc_ = me->arg;
    rng r = rng_for(0x200000 + (uint64_t)rc_->round * 1024 + (uint64_t)me->index);
    unsigned char *src = malloc(rc_->slice), *dst = malloc(rc_->slice);
    if (!src || !dst) {
        CHECK(0, "out of host memory");
        free(src);
        free(dst);
        return NULL;
    }
    unsigned char *mine = rc_->base + (size_t)me->index * rc_->slice;
    atomic_fetch_add(&rc_->started, 1);
    for (;;) {
        size_t off = below(&r, rc_->slice);
        size_t len = 1 + below(&r, rc_->slice - off);
        fill(&r, src, len);
        int rc = vram_memcpy_h2d(mine + off, src, len);
        if (rc == VRAM_ERR_UNKNOWN_POINTER) {
            check_freed_reason(mine + off == rc_->base, "h2d");
            break;
        }
        CHECK_STATUS(rc, VRAM_SUCCESS, "h2d racing a free (0 or 5)");
        if (rc != VRAM_SUCCESS) break;
        memset(dst, 0, len);
        rc = vram_memcpy_d2h(dst, mine + off, len);
        if (rc == VRAM_ERR_UNKNOWN_POINTER) {
            check_freed_reason(mine + off == rc_->base, "d2h");
            break;
        }
        CHECK_STATUS(rc, VRAM_SUCCESS, "d2h racing a free (0 or 5)");
        if (rc != VRAM_SUCCESS) break;
        CHECK(memcmp(dst, src, len) == 0, "copy racing a free read back wrong data");
        atomic_fetch_add(&rc_->copies_ok, 1);
    }
    free(src);
    free(dst);
    return NULL;
}

static void *race_thread(void *arg) {
    worker *me = arg;
    race *rc_ = me->arg;
    if (me->index < rc_->copiers) return copier_thread(arg);
    /* The freer: let some copies succeed first (bounded, in case copiers die early). */
    for (long spins = 0; spins < 200000; spins++) {
        if (atomic_load(&rc_->copies_ok) >= rc_->free_after) break;
        sched_yield();
    }
    long before = atomic_load(&rc_->copies_ok);
    int rc = rc_->use_free_ex ? vram_free_ex(rc_->base, rc_->generation) : vram_free(rc_->base);
    CHECK_STATUS(rc, VRAM_SUCCESS, "the free racing copies");
    /* A copy that completed while the free ran was in flight during it. */
    rc_->overlapped = atomic_load(&rc_->copies_ok) > before;
    /* Idempotent: nothing else allocates during a round, so the address is not reused. */
    CHECK_STATUS(vram_free(rc_->base), VRAM_SUCCESS, "a second free after the race");
    return NULL;
}

static void test_copy_vs_free(void) {
    long rounds = g_iterations / 50 < 4 ? 4 : g_iterations / 50;
    rng r = rng_for(0x300);
    int copiers = g_threads - 1;
    long copies = 0, overlapped = 0;
    for (long round = 0; round < rounds; round++) {
        race rc_ = {0};
        rc_.copiers = copiers;
        rc_.slice = SHARED_BYTES / (size_t)copiers;
        rc_.round = (int)round;
        rc_.free_after = (long)below(&r, (size_t)copiers * 4);
        rc_.use_free_ex = (int)(round & 1);
        atomic_init(&rc_.copies_ok, 0);
        atomic_init(&rc_.started, 0);
        vram_registry_stats before = registry();
        void *p = NULL;
        int rc = vram_malloc_ex(&p, SHARED_BYTES, 7, &rc_.generation);
        CHECK_STATUS(rc, VRAM_SUCCESS, "malloc of the shared 1 MiB");
        if (rc != VRAM_SUCCESS) return;
        rc_.base = p;
        run_threads(copiers + 1, race_thread, &rc_);
        vram_registry_stats after = registry();
        CHECK(after.frees_total - before.frees_total == 1, "round %ld: frees_total +%llu, want +1",
              round, (unsigned long long)(after.frees_total - before.frees_total));
        CHECK(after.live_count == before.live_count, "round %ld: live_count %llu, want %llu", round,
              (unsigned long long)after.live_count, (unsigned long long)before.live_count);
        copies += atomic_load(&rc_.copies_ok);
        overlapped += rc_.overlapped;
    }
    printf("     %ld rounds, %ld successful copy round trips, the free overlapped copies in %ld rounds\n",
           rounds, copies, overlapped);
}

/* ---------------------------------------------------------------------------------------- */
/* (c) double_free: many threads free one pointer at once                                    */
/* ---------------------------------------------------------------------------------------- */

typedef struct double_free {
    void *p;
    uint64_t generation;
    pthread_barrier_t start;
} double_free;

static void *double_free_thread(void *arg) {
    worker *me = arg;
    double_free *d = me->arg;
    pthread_barrier_wait(&d->start);
    int rc = (me->index & 1) ? vram_free_ex(d->p, d->generation) : vram_free(d->p);
    CHECK_STATUS(rc, VRAM_SUCCESS, (me->index & 1) ? "concurrent vram_free_ex" : "concurrent vram_free");
    return NULL;
}

static uint64_t free_calls_ok(void) {
    vram_stats s;
    int rc = vram_stats_get(-1, &s, sizeof s);
    CHECK_STATUS(rc, VRAM_SUCCESS, "vram_stats_get");
    return s.ops[VRAM_OP_FREE].by_status[VRAM_SUCCESS];
}

static void test_double_free(void) {
    long rounds = g_iterations / 100 < 4 ? 4 : g_iterations / 100;
    int n = g_threads;
    for (long round = 0; round < rounds; round++) {
        double_free d;
        memset(&d, 0, sizeof d);
        pthread_barrier_init(&d.start, NULL, (unsigned)n);
        vram_registry_stats before = registry();
        uint64_t ok_before = free_calls_ok();
        int rc = vram_malloc_ex(&d.p, 1000 + (size_t)round, 3, &d.generation);
        CHECK_STATUS(rc, VRAM_SUCCESS, "malloc for the double free");
        if (rc == VRAM_SUCCESS) {
            run_threads(n, double_free_thread, &d);
            vram_registry_stats after = registry();
            uint64_t frees = after.frees_total - before.frees_total;
            uint64_t repeats = after.repeated_frees_total - before.repeated_frees_total;
            CHECK(frees == 1, "round %ld: %d threads freeing one pointer freed it %llu times",
                  round, n, (unsigned long long)frees);
            CHECK(repeats == (uint64_t)(n - 1), "round %ld: repeated_frees_total +%llu, want +%d",
                  round, (unsigned long long)repeats, n - 1);
            CHECK(after.live_count == before.live_count, "round %ld: live_count changed", round);
            CHECK(after.tag_live_count[3] == before.tag_live_count[3], "round %ld: tag 3 still live",
                  round);
            uint64_t ok = free_calls_ok() - ok_before;
            CHECK(ok == (uint64_t)n, "round %ld: free calls counted successful +%llu, want +%d",
                  round, (unsigned long long)ok, n);
        }
        pthread_barrier_destroy(&d.start);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* (d)+(e) snapshots_and_busy: snapshots and refused selections while workers allocate       */
/* ---------------------------------------------------------------------------------------- */

#define SNAPSHOTTERS 4
#define LIST_CAPACITY 64

typedef struct mixed {
    int workers;
    atomic_int workers_left;
    long snapshots;
    long refusals;
    pthread_mutex_t count_lock;
} mixed;

static void check_registry_snapshot(const vram_registry_stats *s, const vram_registry_stats *prev) {
    CHECK(s->struct_size == sizeof *s, "registry struct_size %u", s->struct_size);
    uint64_t tag_count = 0, tag_bytes = 0;
    for (int t = 0; t < VRAM_MAX_TAGS; t++) {
        tag_count += s->tag_live_count[t];
        tag_bytes += s->tag_live_bytes[t];
    }
    CHECK(tag_count == s->live_count, "tags count %llu live, live_count %llu",
          (unsigned long long)tag_count, (unsigned long long)s->live_count);
    CHECK(tag_bytes == s->live_bytes, "tags hold %llu bytes, live_bytes %llu",
          (unsigned long long)tag_bytes, (unsigned long long)s->live_bytes);
    CHECK(s->allocs_total - s->frees_total - s->lost_total - s->stale_evicted_total == s->live_count,
          "books: allocs %llu - frees %llu - lost %llu - stale %llu != live %llu",
          (unsigned long long)s->allocs_total, (unsigned long long)s->frees_total,
          (unsigned long long)s->lost_total, (unsigned long long)s->stale_evicted_total,
          (unsigned long long)s->live_count);
    CHECK(s->live_bytes <= s->peak_bytes, "live_bytes %llu above peak %llu",
          (unsigned long long)s->live_bytes, (unsigned long long)s->peak_bytes);
    CHECK(s->live_rounded_bytes >= s->live_bytes &&
              s->live_rounded_bytes - s->live_bytes < (uint64_t)VRAM_ALIGNMENT * s->live_count + 1,
          "live_rounded_bytes %llu for live_bytes %llu", (unsigned long long)s->live_rounded_bytes,
          (unsigned long long)s->live_bytes);
    CHECK((s->live_count == 0) == (s->oldest_alloc_ns == 0), "oldest_alloc_ns %llu with %llu live",
          (unsigned long long)s->oldest_alloc_ns, (unsigned long long)s->live_count);
    CHECK(s->live_count >= 1, "the sentinel allocation is not live");
    if (prev) {
        CHECK(s->allocs_total >= prev->allocs_total && s->frees_total >= prev->frees_total &&
                  s->repeated_frees_total >= prev->repeated_frees_total &&
                  s->peak_bytes >= prev->peak_bytes,
              "registry totals went backwards");
    }
}

static void check_list_snapshot(const vram_alloc_record *recs, size_t count) {
    size_t n = count < LIST_CAPACITY ? count : LIST_CAPACITY;
    CHECK(count >= 1, "vram_registry_list: nothing live, but the sentinel is");
    for (size_t i = 0; i < n; i++) {
        const vram_alloc_record *r = &recs[i];
        CHECK(r->address != 0 && r->bytes != 0 && r->generation != 0 && r->device == 0 &&
                  r->tag < VRAM_MAX_TAGS && r->alloc_ns != 0,
              "record %zu: address %llx bytes %llu generation %llu device %d tag %u", i,
              (unsigned long long)r->address, (unsigned long long)r->bytes,
              (unsigned long long)r->generation, r->device, r->tag);
        if (i > 0)
            CHECK(recs[i - 1].alloc_ns <= r->alloc_ns, "records %zu and %zu not oldest first", i - 1, i);
        for (size_t j = 0; j < i; j++) {
            const vram_alloc_record *q = &recs[j];
            CHECK(q->address + q->bytes <= r->address || r->address + r->bytes <= q->address,
                  "live records %zu and %zu overlap", j, i);
        }
    }
}

static void *snapshot_thread(void *arg) {
    mixed *m = arg;
    vram_stats prev_ops, ops;
    vram_registry_stats prev_reg, reg;
    vram_alloc_record *recs = calloc(LIST_CAPACITY, sizeof *recs);
    int have_prev = 0;
    long taken = 0;
    CHECK(recs != NULL, "out of host memory");
    while (recs && atomic_load(&m->workers_left) > 0) {
        int rc = vram_stats_get(-1, &ops, sizeof ops);
        CHECK_STATUS(rc, VRAM_SUCCESS, "vram_stats_get(-1)");
        CHECK(ops.struct_size == sizeof ops && ops.op_count == VRAM_OP_COUNT_,
              "vram_stats struct_size %u op_count %u", ops.struct_size, ops.op_count);
        if (have_prev) {
            /* Every counter is monotonic, and each is read atomically. */
            const uint64_t *a = (const uint64_t *)&prev_ops.ops[0], *b = (const uint64_t *)&ops.ops[0];
            size_t words = (sizeof ops.ops) / (sizeof(uint64_t));
            for (size_t i = 0; i < words; i++)
                if (b[i] < a[i]) {
                    CHECK(0, "vram_stats counter %zu went backwards: %llu -> %llu", i,
                          (unsigned long long)a[i], (unsigned long long)b[i]);
                    break;
                }
        }
        vram_stats dev0;
        CHECK_STATUS(vram_stats_get(0, &dev0, sizeof dev0), VRAM_SUCCESS, "vram_stats_get(0)");
        rc = vram_registry_stats_get(-1, &reg, sizeof reg);
        CHECK_STATUS(rc, VRAM_SUCCESS, "vram_registry_stats_get(-1)");
        check_registry_snapshot(&reg, have_prev ? &prev_reg : NULL);
        vram_registry_stats reg0;
        CHECK_STATUS(vram_registry_stats_get(0, &reg0, sizeof reg0), VRAM_SUCCESS,
                     "vram_registry_stats_get(0)");
        size_t count = 0;
        rc = vram_registry_list(-1, recs, LIST_CAPACITY, &count);
        CHECK_STATUS(rc, VRAM_SUCCESS, "vram_registry_list");
        if (rc == VRAM_SUCCESS) check_list_snapshot(recs, count);
        CHECK_STATUS(vram_registry_list(0, NULL, 0, &count), VRAM_SUCCESS, "vram_registry_list(count only)");
        size_t f = 0, t = 0;
        CHECK_STATUS(vram_get_info(&f, &t), VRAM_SUCCESS, "vram_get_info");
        CHECK(f <= t && t > 0, "vram_get_info free %zu total %zu", f, t);
        prev_ops = ops;
        prev_reg = reg;
        have_prev = 1;
        taken++;
    }
    free(recs);
    pthread_mutex_lock(&m->count_lock);
    m->snapshots += taken;
    pthread_mutex_unlock(&m->count_lock);
    return NULL;
}

static void *selector_thread(void *arg) {
    mixed *m = arg;
    long refused = 0;
    while (atomic_load(&m->workers_left) > 0) {
        int rc = vram_select_backend(g_other_backend);
        CHECK_STATUS(rc, VRAM_ERR_BUSY, "select of the other backend while allocations are live");
        if (rc == VRAM_ERR_BUSY) {
            vram_error_info e;
            vram_last_error(&e);
            CHECK(e.status == VRAM_ERR_BUSY && e.op == VRAM_OP_NONE, "last error %d op %d after busy",
                  e.status, e.op);
            refused++;
        }
        CHECK_STATUS(vram_select_backend(g_backend), VRAM_SUCCESS, "select of the backend in use");
        CHECK(strcmp(vram_backend_name(), g_backend) == 0, "backend changed to '%s'", vram_backend_name());
        sched_yield();
    }
    pthread_mutex_lock(&m->count_lock);
    m->refusals += refused;
    pthread_mutex_unlock(&m->count_lock);
    return NULL;
}

static void *mixed_thread(void *arg) {
    worker *me = arg;
    mixed *m = me->arg;
    if (me->index < m->workers) {
        worker_state w;
        if (worker_init(&w, 0x400 + (uint64_t)me->index)) {
            for (long i = 0; i < g_iterations / 2; i++) worker_step(&w);
        }
        worker_done(&w);
        atomic_fetch_sub(&m->workers_left, 1);
        return NULL;
    }
    if (me->index < m->workers + SNAPSHOTTERS) return snapshot_thread(m);
    return selector_thread(m);
}

static void test_snapshots_and_busy(void) {
    mixed m;
    memset(&m, 0, sizeof m);
    m.workers = g_threads - SNAPSHOTTERS - 1;
    atomic_init(&m.workers_left, m.workers);
    pthread_mutex_init(&m.count_lock, NULL);
    void *sentinel = NULL;
    uint64_t generation = 0;
    int rc = vram_malloc_ex(&sentinel, 4096, 63, &generation);
    CHECK_STATUS(rc, VRAM_SUCCESS, "malloc of the sentinel");
    if (rc == VRAM_SUCCESS) {
        run_threads(g_threads, mixed_thread, &m);
        CHECK_STATUS(vram_free_ex(sentinel, generation), VRAM_SUCCESS, "free of the sentinel");
        CHECK(m.snapshots > 0 && m.refusals > 0, "%ld snapshots, %ld refusals: nothing was tested",
              m.snapshots, m.refusals);
        printf("     %ld snapshots, %ld refused selections\n", m.snapshots, m.refusals);
    }
    pthread_mutex_destroy(&m.count_lock);
}

/* ---------------------------------------------------------------------------------------- */
/* (e) select_busy: the simple case, from another thread                                     */
/* ---------------------------------------------------------------------------------------- */

static void *select_other_thread(void *arg) {
    int *statuses = ((worker *)arg)->arg;
    statuses[0] = vram_select_backend(g_other_backend);
    statuses[1] = vram_select_backend(g_backend);
    return NULL;
}

static void test_select_busy(void) {
    void *p = NULL;
    int rc = vram_malloc(&p, 12345);
    CHECK_STATUS(rc, VRAM_SUCCESS, "malloc");
    if (rc != VRAM_SUCCESS) return;
    int statuses[2] = {-1, -1};
    run_threads(1, select_other_thread, statuses);
    CHECK_STATUS(statuses[0], VRAM_ERR_BUSY, "select of the other backend from another thread");
    CHECK_STATUS(statuses[1], VRAM_SUCCESS, "select of the backend in use from another thread");
    CHECK(strcmp(vram_backend_name(), g_backend) == 0, "backend changed to '%s'", vram_backend_name());
    unsigned char byte = 0x5a, back = 0;
    CHECK_STATUS(vram_memcpy_h2d(p, &byte, 1), VRAM_SUCCESS, "h2d after the refused select");
    CHECK_STATUS(vram_memcpy_d2h(&back, p, 1), VRAM_SUCCESS, "d2h after the refused select");
    CHECK(back == byte, "read back %#x", back);
    CHECK_STATUS(vram_free(p), VRAM_SUCCESS, "free");
}

/* ---------------------------------------------------------------------------------------- */
/* select_toggle_race                                                                        */
/* ---------------------------------------------------------------------------------------- */

typedef struct toggle {
    atomic_int stop;
    atomic_long stuck; /* allocations that could not be freed */
} toggle;

static void *toggle_thread(void *arg) {
    worker *me = arg;
    toggle *t = me->arg;
    if (me->index == 0) {
        for (long i = 0; i < g_iterations * 4; i++) {
            vram_select_backend(g_other_backend);
            vram_select_backend(g_backend);
        }
        atomic_store(&t->stop, 1);
        return NULL;
    }
    while (!atomic_load(&t->stop)) {
        void *p = NULL;
        size_t f, total;
        vram_get_info(&f, &total);
        if (vram_malloc(&p, 256) == VRAM_SUCCESS) {
            int rc = vram_free(p);
            if (rc != VRAM_SUCCESS) {
                /* Allocated on one backend, freed through another. */
                atomic_fetch_add(&t->stuck, 1);
                CHECK_STATUS(rc, VRAM_SUCCESS, "free of an allocation made while the backend changed");
                /* Retry once the selection thread has settled on the backend under test. */
                while (!atomic_load(&t->stop)) sched_yield();
                CHECK_STATUS(vram_free(p), VRAM_SUCCESS, "free after the backend settled");
            }
        }
    }
    return NULL;
}

static void test_select_toggle_race(void) {
    toggle t;
    atomic_init(&t.stop, 0);
    atomic_init(&t.stuck, 0);
    run_threads(4, toggle_thread, &t);
    CHECK_STATUS(vram_select_backend(g_backend), VRAM_SUCCESS, "select back the backend under test");
    CHECK(atomic_load(&t.stuck) == 0, "%ld allocations could not be freed",
          (long)atomic_load(&t.stuck));
}

/* ---------------------------------------------------------------------------------------- */
/* final_state                                                                               */
/* ---------------------------------------------------------------------------------------- */

static void test_final_state(void) {
    vram_registry_stats s = registry();
    CHECK(s.live_count == 0 && s.live_bytes == 0 && s.live_rounded_bytes == 0,
          "live_count %llu live_bytes %llu at the end", (unsigned long long)s.live_count,
          (unsigned long long)s.live_bytes);
    for (int t = 0; t < VRAM_MAX_TAGS; t++)
        CHECK(s.tag_live_count[t] == 0 && s.tag_live_bytes[t] == 0, "tag %d still holds %llu", t,
              (unsigned long long)s.tag_live_bytes[t]);
    CHECK(s.allocs_total == s.frees_total, "allocs_total %llu, frees_total %llu",
          (unsigned long long)s.allocs_total, (unsigned long long)s.frees_total);
    CHECK(s.lost_total == 0 && s.stale_evicted_total == 0, "lost %llu, stale evicted %llu",
          (unsigned long long)s.lost_total, (unsigned long long)s.stale_evicted_total);
    CHECK(s.oldest_alloc_ns == 0, "oldest_alloc_ns %llu with nothing live",
          (unsigned long long)s.oldest_alloc_ns);
    size_t count = 1;
    CHECK_STATUS(vram_registry_list(-1, NULL, 0, &count), VRAM_SUCCESS, "vram_registry_list");
    CHECK(count == 0, "vram_registry_list counts %zu live", count);

    if (strcmp(g_backend, "host") == 0) {
        size_t f = 0, t = 0;
        CHECK_STATUS(vram_get_info(&f, &t), VRAM_SUCCESS, "vram_get_info");
        CHECK(f == t, "host backend: free %zu of total %zu with nothing live", f, t);
    }
    /* Over the fake driver: it must hold no allocation either. */
    const char *driver = getenv("VRAMOBS_CUDA_DRIVER");
    if (strcmp(g_backend, "cuda") == 0 && driver && *driver) {
        void *lib = dlopen(driver, RTLD_NOW | RTLD_NOLOAD);
        long (*live)(void) = NULL;
        if (lib) *(void **)&live = dlsym(lib, "fakecuda_live_allocations");
        if (live) {
            long n = live();
            CHECK(n == 0, "the fake driver still holds %ld allocations", n);
            printf("     fake driver: %ld live allocations\n", n);
        }
        if (lib) dlclose(lib);
    }
}

/* ---------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc > 1) g_threads = atoi(argv[1]);
    if (argc > 2) g_iterations = atol(argv[2]);
    if (argc > 3 || g_threads < 16 || g_threads > 1024 || g_iterations < 1) {
        fprintf(stderr, "usage: %s [threads >= 16 [iterations >= 1]]\n", argv[0]);
        return 2;
    }
    const char *seed = getenv("VRAMOBS_TEST_SEED");
    g_seed = seed && *seed ? strtoull(seed, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    const char *timeout = getenv("VRAMOBS_STRESS_TIMEOUT");
    if (timeout && *timeout) g_timeout_s = (unsigned)strtoul(timeout, NULL, 10);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_timeout;
    sigaction(SIGALRM, &sa, NULL);
    const char *backend = getenv("VRAMOBS_TEST_BACKEND");
    if (backend && strcmp(backend, "cuda") == 0) {
        g_backend = "cuda";
        g_other_backend = "host";
    } else if (backend && *backend && strcmp(backend, "host") != 0) {
        fprintf(stderr, "VRAMOBS_TEST_BACKEND='%s': use 'host' or 'cuda'\n", backend);
        return 2;
    }
    printf("vram_stress: backend %s, %d threads, %ld iterations, VRAMOBS_TEST_SEED=%llu, library %s\n",
           g_backend, g_threads, g_iterations, (unsigned long long)g_seed, vram_version_string());
    fflush(stdout);

    run_test("select_backend", test_select_backend);
    if (g_failed == 0) {
        run_test("alloc_copy_free", test_alloc_copy_free);
        run_test("copy_vs_free", test_copy_vs_free);
        run_test("double_free", test_double_free);
        run_test("snapshots_and_busy", test_snapshots_and_busy);
        run_test("select_busy", test_select_busy);
        run_test("select_toggle_race", test_select_toggle_race);
        run_test("final_state", test_final_state);
    }
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
