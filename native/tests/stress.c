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
 * FAKECUDA_ASYNC=deferred makes the fake run work on streams only when something waits for it,
 * so an async copy is still in flight when a free or a wait races it (async_streams).
 * Two devices (VRAMOBS_HOST_DEVICES=2, FAKECUDA_DEVICES=2, set here unless the caller set
 * them); copies between them go peer to peer or through host memory as VRAMOBS_HOST_PEER /
 * FAKECUDA_PEER say (d2d_migrate prints the path).
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
 *   select_toggle_race   one thread switches backends back and forth while three others
 *                        call malloc/free/get_info: no allocation lands on a backend switched
 *                        away, every one is freed
 *   pool_churn           the pool on: threads allocate (sizes of every class kind, up to a
 *                        2 MiB page block), write, verify and free, and make batches (some
 *                        failing part-way on an element larger than the device, some refused
 *                        for a zero size: all outputs NULL, nothing left), while a thread
 *                        trims and changes the bound (0: off) and one checks the pool's stats
 *                        (cached <= bound, monotonic totals); then trimmed to 0: nothing
 *                        cached or handed out, nothing live. Then exact, on one thread: a
 *                        block freed under VRAM_WIPE_ON_FREE comes back zeroed to the next
 *                        allocation of its class, bytes past a request stay out of bounds,
 *                        slack as expected, an allocation made with the pool off is not
 *                        cached, lowering the bound releases (largest first) and counts a trim
 *   pinned_churn         threads vram_host_alloc/free (clean blocks on the host backend) and
 *                        register/unregister their own odd-sized buffers (overlaps and
 *                        interior pointers refused), use both as the host side of copies
 *                        (none staged however large), while a thread trims the cache and
 *                        checks the books; at the end nothing live, cached or registered
 *   staged_copies        (over the fake driver only: the host backend does not stage) threads
 *                        copy pageable memory at odd offsets and sizes both ways (bytes around
 *                        each copy untouched, some of VRAM_WIPE_ON_FREE allocations) while a
 *                        thread changes the staging configuration (and invalid ones are
 *                        refused); then exact: async chunk copies only, threads x buffers x
 *                        chunk staging bytes, cleared bytes, small and pinned copies direct,
 *                        everything released when staging is turned off
 *   d2d_migrate          two devices (the second pooled): threads copy (d2d) between shared
 *                        allocations, within one and across devices, migrate them back and
 *                        forth, free and re-make them (a per-allocation lock keeps copies off
 *                        freed pointers), refusals of every kind; each allocation checked
 *                        against its shadow and its device in the per-device registry books.
 *                        Then rounds where readers copy out of one allocation while it is
 *                        migrated, by one thread, by two at once (exactly one may succeed) or
 *                        while another thread frees it
 *   async_streams        threads make streams in the devices' primary contexts through the
 *                        driver (a blocking and a non-blocking one per device; the default
 *                        handles 0, 1, 2 too; on the host backend any value), then in rounds
 *                        allocate a buffer (vram_malloc_ex or vram_malloc_async on the stream,
 *                        the second device pooled) and enqueue on one stream h2d_async from
 *                        host memory (a vram_host_alloc block, a registered or a pageable
 *                        buffer), d2d_async from an allocation on either device and d2h_async of
 *                        the whole buffer; a third of the rounds hand the d2d's source (read by
 *                        a d2h_async too) to another thread, which frees it with the copies in
 *                        flight (the owner waits for that before or after its copies). A round
 *                        ends by waiting, polling (a caller's cuStreamSynchronize when nothing
 *                        forced the copy: done after it), releasing, freeing the buffer first
 *                        (at once or in stream order) or the host memory first: a free drains,
 *                        so every copy it touched is complete when it returns, and every byte
 *                        a complete copy delivered is checked (pageable and staged copies at
 *                        the call). Refusals of every kind (invalid_stream: a stream of the
 *                        other device). Then the books: nothing pending, every enqueued copy
 *                        completed, copies done at the call counted immediate (all of them on
 *                        the host backend), each copy counted once under its operation, copies
 *                        drained by frees (FAKECUDA_ASYNC=deferred), nothing live, pinned or
 *                        registered, no work queued in the fake driver, no stream left, and at
 *                        most 2 x devices x 4 x threads events kept (the library's fence cache)
 *   final_state          live_count == 0, no tag holds bytes, the books balance, no entry
 *                        was evicted or lost, no async copy pending; on the fake driver no fake
 *                        allocation remains and no work is queued
 *
 * Seed: VRAMOBS_TEST_SEED=<n> replays a run's random sizes and data (not its thread
 * interleaving); the seed used is printed first. VRAMOBS_STRESS_ONLY=<test>[,<test>...] runs
 * only those tests (and select_backend, final_state).
 * Watchdog: a test still running after VRAMOBS_STRESS_TIMEOUT seconds (default 120) is a
 * deadlock (a lost wake-up in the registry, say): the program names it and exits 3.
 * The last line is "N passed, M failed"; the exit status is 1 when any test failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "vram_ops.h"

/* ---------------------------------------------------------------------------------------- */
/* Harness (the shared part is harness.h)                                                    */
/* ---------------------------------------------------------------------------------------- */

static int g_threads = 32;
static long g_iterations = 2000;
static const char *g_backend = "host";
static const char *g_other_backend = "cuda";
static int g_passed, g_failed;

#define CHECK_STATUS(got, want, what) EXPECT((got), (want), -1, (what))

/* The watchdog (async-signal-safe: harness.h's write_str and write_int, then _exit). */
static const char *volatile g_current_test = "";
static unsigned g_timeout_s = 120;

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

/* VRAMOBS_STRESS_ONLY=<name>[,<name>...]: run only those tests (select_backend and
 * final_state always run), to replay one with its seed. */
static bool selected(const char *name) {
    const char *only = getenv("VRAMOBS_STRESS_ONLY");
    if (!only || !*only || strcmp(name, "select_backend") == 0 || strcmp(name, "final_state") == 0)
        return true;
    size_t n = strlen(name);
    for (const char *p = only; (p = strstr(p, name)) != NULL; p += n)
        if ((p == only || p[-1] == ',') && (p[n] == '\0' || p[n] == ',')) return true;
    return false;
}

static void run_test(const char *name, void (*fn)(void)) {
    if (!selected(name)) return;
    atomic_store(&g_failures, 0);
    g_current_test = name;
    watchdog_arm(on_timeout, g_timeout_s);
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
/* Helpers of the pool, pinned, staging and multi-device tests                               */
/* ---------------------------------------------------------------------------------------- */

static int device_count(void) {
    int n = 0;
    CHECK_STATUS(vram_device_count(&n), VRAM_SUCCESS, "vram_device_count");
    return n;
}

static int on_host_backend(void) { return strcmp(g_backend, "host") == 0; }

/* A control function of tests/fakecuda, when the CUDA backend runs over it; NULL otherwise. */
static void *fake_symbol(const char *name) {
    const char *driver = getenv("VRAMOBS_CUDA_DRIVER");
    if (on_host_backend() || !driver || !*driver) return NULL;
    void *lib = dlopen(driver, RTLD_NOW | RTLD_NOLOAD);
    if (!lib) return NULL;
    void *fn = dlsym(lib, name);
    dlclose(lib); /* a NOLOAD handle: the library stays loaded by libvram_ops */
    return fn;
}

/* fakecuda_live_streams() and the like; -1 without the fake driver. */
static long fake_count(const char *name) {
    void *fn = fake_symbol(name);
    long (*count)(void) = NULL;
    if (fn) *(void **)&count = fn;
    return count ? count() : -1;
}

/* fakecuda_live_host_bytes() and the like; -1 without the fake driver. */
static long long fake_bytes(const char *name) {
    void *fn = fake_symbol(name);
    unsigned long long (*bytes)(void) = NULL;
    if (fn) *(void **)&bytes = fn;
    return bytes ? (long long)bytes() : -1;
}

/* fakecuda_calls(function); -1 without the fake driver. */
static long fake_calls(const char *function) {
    void *fn = fake_symbol("fakecuda_calls");
    long (*calls)(const char *) = NULL;
    if (fn) *(void **)&calls = fn;
    return calls ? calls(function) : -1;
}

static vram_stats op_stats(void) {
    vram_stats s;
    memset(&s, 0, sizeof s);
    CHECK_STATUS(vram_stats_get(-1, &s, sizeof s), VRAM_SUCCESS, "vram_stats_get");
    return s;
}

static vram_pool_stats pool_stats(int device) {
    vram_pool_stats s;
    memset(&s, 0, sizeof s);
    CHECK_STATUS(vram_pool_stats_get(device, &s, sizeof s), VRAM_SUCCESS, "vram_pool_stats_get");
    return s;
}

static vram_host_stats host_stats(void) {
    vram_host_stats s;
    memset(&s, 0, sizeof s);
    CHECK_STATUS(vram_host_stats_get(&s, sizeof s), VRAM_SUCCESS, "vram_host_stats_get");
    return s;
}

/* The device range p must hold the n bytes of stream seed: nobody else wrote into it. want
 * and got are host scratch of at least n bytes. */
static void device_check(const unsigned char *p, size_t n, uint64_t seed, unsigned char *want,
                         unsigned char *got, const char *what) {
    rng r = rng_for(seed);
    fill(&r, want, n);
    memset(got, 0, n);
    int rc = vram_memcpy_d2h(got, p, n);
    CHECK_STATUS(rc, VRAM_SUCCESS, what);
    if (rc == VRAM_SUCCESS)
        CHECK(memcmp(got, want, n) == 0, "%s: %p (%zu B) does not hold its bytes", what,
              (const void *)p, n);
}

/* Write n bytes of stream seed into the device range p and read them back. */
static void device_write(unsigned char *p, size_t n, uint64_t seed, unsigned char *want,
                         unsigned char *got, const char *what) {
    rng r = rng_for(seed);
    fill(&r, want, n);
    CHECK_STATUS(vram_memcpy_h2d(p, want, n), VRAM_SUCCESS, what);
    device_check(p, n, seed, want, got, what);
}

/* The device range must equal the host bytes want (got: scratch). */
static void device_equals(const unsigned char *p, const unsigned char *want, size_t n,
                          unsigned char *got, const char *what) {
    memset(got, 0, n);
    int rc = vram_memcpy_d2h(got, p, n);
    CHECK_STATUS(rc, VRAM_SUCCESS, what);
    if (rc == VRAM_SUCCESS)
        CHECK(memcmp(got, want, n) == 0, "%s: %p (%zu B) read back wrong", what, (const void *)p, n);
}

/* Nothing live at the end of a test: the registry, and on the fake driver its allocations. */
static void check_nothing_live(const vram_registry_stats *before, const char *test) {
    vram_registry_stats after = registry();
    CHECK(after.live_count == before->live_count && after.live_bytes == before->live_bytes,
          "%s: %llu live (%llu B) after, %llu (%llu B) before", test,
          (unsigned long long)after.live_count, (unsigned long long)after.live_bytes,
          (unsigned long long)before->live_count, (unsigned long long)before->live_bytes);
    CHECK(after.allocs_total - before->allocs_total == after.frees_total - before->frees_total,
          "%s: allocs +%llu, frees +%llu", test,
          (unsigned long long)(after.allocs_total - before->allocs_total),
          (unsigned long long)(after.frees_total - before->frees_total));
    CHECK(after.lost_total == before->lost_total && after.stale_evicted_total == before->stale_evicted_total,
          "%s: %llu lost, %llu evicted as stale", test,
          (unsigned long long)(after.lost_total - before->lost_total),
          (unsigned long long)(after.stale_evicted_total - before->stale_evicted_total));
    long fake = fake_count("fakecuda_live_allocations");
    if (before->live_count == 0 && fake >= 0)
        CHECK(fake == 0, "%s: the fake driver still holds %ld allocations", test, fake);
}

/* ---------------------------------------------------------------------------------------- */
/* pool_churn: the device pool under allocation churn, trims, bound flips and batches        */
/* ---------------------------------------------------------------------------------------- */

#define POOL_SLOTS 4
#define POOL_BATCH 6
#define POOL_MAX_ALLOC (((size_t)5 << 20) / 4) /* 1.25 MiB: a block of the 2 MiB page class */
#define HUGE_REQUEST ((size_t)1 << 40)          /* more than any device has: out of memory */

typedef struct pool_churn {
    int device;
    int workers;
    atomic_int workers_left;
    atomic_long batches_ok, batches_out_of_memory, batches_refused, trims;
} pool_churn;

typedef struct pool_slot {
    unsigned char *p;
    uint64_t generation; /* 0: freed with vram_free */
    size_t size;
    uint64_t seed; /* of its bytes */
} pool_slot;

typedef struct pool_worker {
    rng r;
    uint64_t stream, next_seed;
    pool_slot slots[POOL_SLOTS];
    unsigned char *want, *got;
} pool_worker;

/* Sizes across the pool's classes: 256 B steps, quarter powers of two, 2 MiB pages. */
static size_t pool_size(rng *r) {
    size_t roll = below(r, 32);
    if (roll < 12) return 1 + below(r, 1024);
    if (roll < 24) return 1025 + below(r, (size_t)63 << 10);
    if (roll < 31) return ((size_t)64 << 10) + below(r, (size_t)448 << 10);
    return ((size_t)1 << 20) + 1 + below(r, POOL_MAX_ALLOC - ((size_t)1 << 20));
}

static uint64_t pool_seed(pool_worker *w) { return (w->stream << 32) | w->next_seed++; }

/* A fresh allocation: written whole, read back, and one byte past its request refused
 * whatever the size of the block behind it. */
static void pool_take(pool_worker *w, pool_slot *s, unsigned char *p, uint64_t generation,
                      size_t size) {
    *s = (pool_slot){p, generation, size, pool_seed(w)};
    device_write(p, size, s->seed, w->want, w->got, "write of a pooled allocation");
    CHECK_STATUS(vram_memcpy_h2d(p + size - 1, w->want, 2), VRAM_ERR_OUT_OF_BOUNDS,
                 "h2d one byte past a pooled allocation");
}

static void pool_release_slot(pool_worker *w, pool_slot *s) {
    device_check(s->p, s->size, s->seed, w->want, w->got, "a pooled allocation before its free");
    if (s->generation && below(&w->r, 4) != 0)
        CHECK_STATUS(vram_free_ex(s->p, s->generation), VRAM_SUCCESS, "vram_free_ex (pool on)");
    else
        CHECK_STATUS(vram_free(s->p), VRAM_SUCCESS, "vram_free (pool on)");
    s->p = NULL;
}

static void pool_alloc_slot(pool_worker *w, pool_slot *s) {
    size_t size = pool_size(&w->r);
    void *p = w; /* must be overwritten */
    uint64_t generation = 0;
    bool with_generation = below(&w->r, 2);
    int rc = with_generation ? vram_malloc_ex(&p, size, (uint32_t)below(&w->r, VRAM_MAX_TAGS), &generation)
                             : vram_malloc(&p, size);
    CHECK_STATUS(rc, VRAM_SUCCESS, "malloc (pool on)");
    if (rc != VRAM_SUCCESS) {
        CHECK(p == NULL, "a failed malloc left *ptr %p", p);
        return;
    }
    pool_take(w, s, p, generation, size);
}

/* All or nothing: a batch that fails part-way (an element larger than the device, after
 * others were made) or is refused (a zero size) leaves every output NULL and nothing made. */
static void pool_batch(pool_churn *pc, pool_worker *w) {
    size_t count = 1 + below(&w->r, POOL_BATCH), sizes[POOL_BATCH];
    void *ptrs[POOL_BATCH];
    uint64_t generations[POOL_BATCH];
    for (size_t i = 0; i < count; i++) {
        sizes[i] = pool_size(&w->r);
        ptrs[i] = w; /* must be overwritten */
        generations[i] = 12345;
    }
    size_t failing = below(&w->r, 4), bad = below(&w->r, count);
    if (failing == 0) sizes[bad] = HUGE_REQUEST;
    if (failing == 1) sizes[bad] = 0;
    bool with_generations = below(&w->r, 2);
    int rc = vram_malloc_batch(ptrs, sizes, count, (uint32_t)below(&w->r, VRAM_MAX_TAGS),
                               with_generations ? generations : NULL);
    int want = failing == 0 ? VRAM_ERR_ALLOCATION_FAILED
               : failing == 1 ? VRAM_ERR_INVALID_PARAMETERS : VRAM_SUCCESS;
    CHECK(rc == want, "vram_malloc_batch of %zu (element %zu: %zu B): got %d (%s), want %d", count,
          bad, sizes[bad], rc, vram_status_name(rc), want);
    if (rc != VRAM_SUCCESS) {
        for (size_t i = 0; i < count; i++)
            CHECK(ptrs[i] == NULL && (!with_generations || generations[i] == 0),
                  "a failed batch left element %zu at %p generation %llu", i, ptrs[i],
                  (unsigned long long)generations[i]);
        vram_error_info e;
        vram_last_error(&e);
        CHECK(e.status == rc && e.op == VRAM_OP_MALLOC &&
                  e.reason == (failing == 1 ? VRAM_REASON_ZERO_SIZE : VRAM_REASON_NONE),
              "a failed batch's last error: status %d op %d reason %s", e.status, e.op,
              vram_reason_name(e.reason));
        atomic_fetch_add(rc == VRAM_ERR_ALLOCATION_FAILED ? &pc->batches_out_of_memory
                                                          : &pc->batches_refused, 1);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        CHECK(ptrs[i] != NULL && (!with_generations || generations[i] != 0),
              "batch element %zu: %p generation %llu", i, ptrs[i], (unsigned long long)generations[i]);
        for (size_t j = 0; j < i; j++)
            CHECK(ptrs[j] != ptrs[i] && (!with_generations || generations[j] != generations[i]),
                  "batch elements %zu and %zu are one allocation", j, i);
    }
    pool_slot made[POOL_BATCH];
    for (size_t i = 0; i < count; i++)
        if (ptrs[i]) pool_take(w, &made[i], ptrs[i], with_generations ? generations[i] : 0, sizes[i]);
    for (size_t i = 0; i < count; i++)
        if (ptrs[i]) pool_release_slot(w, &made[i]);
    atomic_fetch_add(&pc->batches_ok, 1);
}

static void pool_worker_run(pool_churn *pc, int index) {
    pool_worker w;
    memset(&w, 0, sizeof w);
    w.stream = 0x600 + (uint64_t)index;
    w.r = rng_for(w.stream);
    w.want = malloc(POOL_MAX_ALLOC + 1);
    w.got = malloc(POOL_MAX_ALLOC + 1);
    CHECK(w.want && w.got, "out of host memory");
    for (long i = 0; w.want && w.got && i < g_iterations / 16; i++) {
        pool_slot *s = &w.slots[below(&w.r, POOL_SLOTS)];
        size_t roll = below(&w.r, 8);
        if (roll == 0)
            pool_batch(pc, &w);
        else if (!s->p)
            pool_alloc_slot(&w, s);
        else if (roll < 3)
            device_check(s->p, s->size, s->seed, w.want, w.got, "a live pooled allocation");
        else
            pool_release_slot(&w, s);
    }
    for (int i = 0; i < POOL_SLOTS; i++)
        if (w.slots[i].p) pool_release_slot(&w, &w.slots[i]);
    free(w.want);
    free(w.got);
}

/* What must hold of any one device's pool at any moment. */
static void check_pool_snapshot(const vram_pool_stats *s, const vram_pool_stats *prev, int workers) {
    CHECK(s->struct_size == sizeof *s, "pool struct_size %u", s->struct_size);
    CHECK(s->enabled == (s->max_cached_bytes > 0), "pool enabled %u with bound %llu", s->enabled,
          (unsigned long long)s->max_cached_bytes);
    CHECK(s->cached_bytes <= s->max_cached_bytes, "pool caches %llu B over its bound %llu",
          (unsigned long long)s->cached_bytes, (unsigned long long)s->max_cached_bytes);
    CHECK((s->cached_blocks == 0) == (s->cached_bytes == 0) &&
              s->cached_bytes >= s->cached_blocks * VRAM_ALIGNMENT,
          "pool caches %llu blocks of %llu B", (unsigned long long)s->cached_blocks,
          (unsigned long long)s->cached_bytes);
    CHECK(s->live_blocks <= (uint64_t)workers * (POOL_SLOTS + POOL_BATCH),
          "%llu pool blocks handed out, at most %d held", (unsigned long long)s->live_blocks,
          workers * (POOL_SLOTS + POOL_BATCH));
    CHECK(s->oom_give_ups_total <= s->oom_retries_total && s->dropped_bytes_total == 0,
          "pool: %llu give-ups of %llu retries, %llu B dropped", (unsigned long long)s->oom_give_ups_total,
          (unsigned long long)s->oom_retries_total, (unsigned long long)s->dropped_bytes_total);
    if (prev)
        CHECK(s->hits_total >= prev->hits_total && s->misses_total >= prev->misses_total &&
                  s->released_bytes_total >= prev->released_bytes_total &&
                  s->oom_retries_total >= prev->oom_retries_total,
              "pool totals went backwards");
}

/* Trims of one device and of all, and bound changes (0 turns the pool off), now and then. */
static void pool_trimmer(pool_churn *pc) {
    static const uint64_t keeps[] = {0, (uint64_t)64 << 10, (uint64_t)1 << 20};
    static const uint64_t bounds[] = {0, (uint64_t)256 << 10, (uint64_t)4 << 20, (uint64_t)32 << 20};
    rng r = rng_for(0x5000);
    int devices = device_count();
    while (atomic_load(&pc->workers_left) > 0) {
        int device = below(&r, 3) == 0 ? -1 : pc->device;
        CHECK_STATUS(vram_pool_trim(device, keeps[below(&r, 3)]), VRAM_SUCCESS, "vram_pool_trim");
        CHECK_STATUS(vram_pool_set(pc->device, bounds[below(&r, 4)]), VRAM_SUCCESS, "vram_pool_set");
        atomic_fetch_add(&pc->trims, 1);
        if (below(&r, 8) == 0) {
            EXPECT(vram_pool_set(devices, 1 << 20), VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_INVALID_DEVICE, "vram_pool_set of a device that does not exist");
            EXPECT(vram_pool_set(-1, 1 << 20), VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_INVALID_DEVICE, "vram_pool_set(-1)");
            EXPECT(vram_pool_trim(-2, 0), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE,
                   "vram_pool_trim(-2)");
        }
        sleep_us(1000 + (long)below(&r, 2000));
    }
}

static void pool_watcher(pool_churn *pc) {
    vram_pool_stats prev, s;
    bool have_prev = false;
    int devices = device_count();
    while (atomic_load(&pc->workers_left) > 0) {
        CHECK_STATUS(vram_pool_stats_get(pc->device, &s, sizeof s), VRAM_SUCCESS, "vram_pool_stats_get");
        check_pool_snapshot(&s, have_prev ? &prev : NULL, pc->workers);
        prev = s;
        have_prev = true;
        vram_pool_stats all;
        CHECK_STATUS(vram_pool_stats_get(-1, &all, sizeof all), VRAM_SUCCESS, "vram_pool_stats_get(-1)");
        CHECK(all.enabled <= (uint32_t)devices, "%u pools on, %d devices", all.enabled, devices);
        CHECK_STATUS(vram_pool_stats_get(pc->device, &s, sizeof s - 1), VRAM_ERR_INVALID_PARAMETERS,
                     "vram_pool_stats_get with a short struct");
        CHECK_STATUS(vram_pool_stats_get(VRAM_MAX_DEVICES, &s, sizeof s), VRAM_ERR_INVALID_PARAMETERS,
                     "vram_pool_stats_get of device VRAM_MAX_DEVICES");
        sched_yield();
    }
}

static void *pool_thread(void *arg) {
    worker *me = arg;
    pool_churn *pc = me->arg;
    if (me->index < pc->workers) {
        pool_worker_run(pc, me->index);
        atomic_fetch_sub(&pc->workers_left, 1);
    } else if (me->index == pc->workers) {
        pool_trimmer(pc);
    } else {
        pool_watcher(pc);
    }
    return NULL;
}

/* One thread, exact: a block freed under the wipe policy is zeroed before it is cached and
 * comes back to the next allocation of its class; bytes past a request stay out of bounds;
 * an allocation made with the pool off is not cached; lowering the bound releases blocks,
 * largest first, counted as pool_trim. */
static void pool_exact(int device) {
    unsigned char want[8192], got[8192];
    CHECK_STATUS(vram_pool_trim(device, 0), VRAM_SUCCESS, "vram_pool_trim to 0");
    CHECK_STATUS(vram_pool_set(device, 0), VRAM_SUCCESS, "vram_pool_set(0): off");
    void *unpooled = NULL;
    uint64_t unpooled_generation = 0;
    CHECK_STATUS(vram_malloc_ex(&unpooled, 4096, 0, &unpooled_generation), VRAM_SUCCESS,
                 "malloc with the pool off");
    CHECK_STATUS(vram_pool_set(device, (uint64_t)1 << 20), VRAM_SUCCESS, "vram_pool_set(1 MiB)");
    CHECK_STATUS(vram_free_ex(unpooled, unpooled_generation), VRAM_SUCCESS, "free of an unpooled allocation");
    vram_pool_stats s = pool_stats(device);
    CHECK(s.cached_bytes == 0, "an allocation made with the pool off was cached (%llu B)",
          (unsigned long long)s.cached_bytes);

    void *p = NULL, *q = NULL, *odd = NULL;
    uint64_t pg = 0, qg = 0, oddg = 0;
    CHECK_STATUS(vram_malloc_ex(&p, 4096, 9, &pg), VRAM_SUCCESS, "malloc of 4096 B");
    if (!p) return;
    device_write(p, 4096, 0x7001, want, got, "write of 4096 B");
    CHECK_STATUS(vram_set_allocation_wipe(p, pg, VRAM_WIPE_ON_FREE), VRAM_SUCCESS, "set_allocation_wipe");
    uint64_t wipes = op_stats().ops[VRAM_OP_WIPE].by_status[VRAM_SUCCESS];
    CHECK_STATUS(vram_free_ex(p, pg), VRAM_SUCCESS, "free of a wiped allocation into the pool");
    s = pool_stats(device);
    CHECK(s.cached_bytes == 4096 && s.cached_blocks == 1, "cached %llu B in %llu blocks, want one of 4096",
          (unsigned long long)s.cached_bytes, (unsigned long long)s.cached_blocks);
    CHECK(op_stats().ops[VRAM_OP_WIPE].by_status[VRAM_SUCCESS] == wipes + 1, "the free did not wipe");
    uint64_t hits = s.hits_total;
    CHECK_STATUS(vram_malloc_ex(&q, 4096, 9, &qg), VRAM_SUCCESS, "malloc of 4096 B from the cache");
    s = pool_stats(device);
    CHECK(q == p && qg != pg && s.hits_total == hits + 1 && s.cached_bytes == 0 && s.live_blocks == 1,
          "the cached block did not serve its class: %p (was %p), hits +%llu, cached %llu B",
          q, p, (unsigned long long)(s.hits_total - hits), (unsigned long long)s.cached_bytes);
    if (q) {
        memset(got, 0xff, 4096);
        CHECK_STATUS(vram_memcpy_d2h(got, q, 4096), VRAM_SUCCESS, "d2h of the reused block");
        CHECK(all_zero(got, 4096), "a block freed under VRAM_WIPE_ON_FREE came back from the pool "
              "holding its bytes");
    }
    /* 5200 B takes the 6144 B class: 768 B past the 5376 B the driver's rounding would take. */
    CHECK_STATUS(vram_malloc_ex(&odd, 5200, 9, &oddg), VRAM_SUCCESS, "malloc of 5200 B");
    s = pool_stats(device);
    CHECK(s.slack_bytes == 768 && s.live_blocks == 2, "slack %llu B (want 768) over %llu blocks",
          (unsigned long long)s.slack_bytes, (unsigned long long)s.live_blocks);
    if (odd) {
        CHECK_STATUS(vram_memcpy_h2d((unsigned char *)odd + 5199, want, 2), VRAM_ERR_OUT_OF_BOUNDS,
                     "h2d past a 5200 B request in a 6144 B block");
        CHECK_STATUS(vram_free_ex(odd, oddg), VRAM_SUCCESS, "free of 5200 B");
    }
    if (q) CHECK_STATUS(vram_free_ex(q, qg), VRAM_SUCCESS, "free of the reused block");
    s = pool_stats(device);
    CHECK(s.cached_bytes == 4096 + 6144 && s.live_blocks == 0 && s.slack_bytes == 0,
          "cached %llu B (want 10240), %llu blocks out, slack %llu", (unsigned long long)s.cached_bytes,
          (unsigned long long)s.live_blocks, (unsigned long long)s.slack_bytes);
    vram_op_stats trims = op_stats().ops[VRAM_OP_POOL_TRIM];
    CHECK_STATUS(vram_pool_set(device, 4096), VRAM_SUCCESS, "lowering the bound to 4096");
    vram_op_stats trims_after = op_stats().ops[VRAM_OP_POOL_TRIM];
    s = pool_stats(device);
    CHECK(s.cached_bytes == 4096 && s.max_cached_bytes == 4096,
          "after lowering the bound: cached %llu B, bound %llu", (unsigned long long)s.cached_bytes,
          (unsigned long long)s.max_cached_bytes);
    CHECK(trims_after.by_status[VRAM_SUCCESS] == trims.by_status[VRAM_SUCCESS] + 1 &&
              trims_after.bytes_ok == trims.bytes_ok + 6144,
          "lowering the bound counted %llu trims of %llu B, want 1 of 6144",
          (unsigned long long)(trims_after.by_status[VRAM_SUCCESS] - trims.by_status[VRAM_SUCCESS]),
          (unsigned long long)(trims_after.bytes_ok - trims.bytes_ok));
    CHECK_STATUS(vram_pool_trim(device, 0), VRAM_SUCCESS, "vram_pool_trim to 0");
    CHECK(op_stats().ops[VRAM_OP_POOL_TRIM].bytes_ok == trims_after.bytes_ok + 4096,
          "the last trim did not count its 4096 B");
}

static void test_pool_churn(void) {
    pool_churn pc;
    memset(&pc, 0, sizeof pc);
    pc.device = 0;
    pc.workers = g_threads - 2;
    atomic_init(&pc.workers_left, pc.workers);
    vram_registry_stats before = registry();
    vram_pool_stats start = pool_stats(pc.device);
    CHECK_STATUS(vram_pool_set(pc.device, (uint64_t)4 << 20), VRAM_SUCCESS, "vram_pool_set(4 MiB)");
    run_threads(g_threads, pool_thread, &pc);

    vram_pool_stats s = pool_stats(pc.device);
    CHECK(s.live_blocks == 0 && s.slack_bytes == 0, "%llu pool blocks still handed out (slack %llu B)",
          (unsigned long long)s.live_blocks, (unsigned long long)s.slack_bytes);
    CHECK(s.hits_total > start.hits_total && s.misses_total > start.misses_total,
          "the pool served nothing: %llu hits, %llu misses",
          (unsigned long long)(s.hits_total - start.hits_total),
          (unsigned long long)(s.misses_total - start.misses_total));
    CHECK(atomic_load(&pc.batches_ok) > 0 && atomic_load(&pc.batches_out_of_memory) > 0 &&
              atomic_load(&pc.batches_refused) > 0,
          "batches: %ld made, %ld out of memory, %ld refused", atomic_load(&pc.batches_ok),
          atomic_load(&pc.batches_out_of_memory), atomic_load(&pc.batches_refused));
    CHECK_STATUS(vram_pool_trim(-1, 0), VRAM_SUCCESS, "vram_pool_trim(-1, 0)");
    vram_pool_stats all = pool_stats(-1);
    CHECK(all.cached_bytes == 0 && all.cached_blocks == 0 && all.live_blocks == 0,
          "after trimming to 0: %llu B in %llu blocks cached, %llu out", (unsigned long long)all.cached_bytes,
          (unsigned long long)all.cached_blocks, (unsigned long long)all.live_blocks);
    check_nothing_live(&before, "pool_churn");
    printf("     %llu hits, %llu misses, %llu B released, %llu out-of-memory retries; batches: "
           "%ld made, %ld out of memory, %ld refused; %ld trims\n",
           (unsigned long long)(s.hits_total - start.hits_total),
           (unsigned long long)(s.misses_total - start.misses_total),
           (unsigned long long)(s.released_bytes_total - start.released_bytes_total),
           (unsigned long long)(s.oom_retries_total - start.oom_retries_total),
           atomic_load(&pc.batches_ok), atomic_load(&pc.batches_out_of_memory),
           atomic_load(&pc.batches_refused), atomic_load(&pc.trims));

    pool_exact(pc.device);
    CHECK_STATUS(vram_pool_set(pc.device, 0), VRAM_SUCCESS, "vram_pool_set(0): off");
    s = pool_stats(pc.device);
    CHECK(s.enabled == 0 && s.max_cached_bytes == 0 && s.cached_bytes == 0,
          "pool left on (%u, bound %llu, %llu B cached)", s.enabled,
          (unsigned long long)s.max_cached_bytes, (unsigned long long)s.cached_bytes);
    check_nothing_live(&before, "pool_churn");
    if (on_host_backend()) {
        size_t f = 0, t = 0;
        CHECK_STATUS(vram_get_info(&f, &t), VRAM_SUCCESS, "vram_get_info");
        CHECK(f == t, "host backend: free %zu of %zu after the pool was trimmed", f, t);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* pinned_churn: pinned blocks and registered buffers as the host side of copies             */
/* ---------------------------------------------------------------------------------------- */

#define PIN_SLOTS 3
#define PIN_MAX ((size_t)320 << 10)
#define PIN_DEVICE_BYTES ((size_t)1 << 20)

typedef struct pinned_churn {
    int workers;
    atomic_int workers_left;
    uint64_t staging_min; /* copies this large would be staged if their host side were pageable */
    atomic_long round_trips, big_round_trips, registrations, trims;
} pinned_churn;

typedef struct pin_block {
    unsigned char *p;
    size_t size;
} pin_block;

typedef struct pin_worker {
    rng r;
    pin_block blocks[PIN_SLOTS];
    unsigned char *device; /* PIN_DEVICE_BYTES of device memory, the other side of copies */
    unsigned char *keep;   /* pageable scratch: what a round trip must bring back */
} pin_worker;

/* Sizes of many classes, some above the staging threshold pinned_churn sets (64 KiB). */
static size_t pinned_size(rng *r) {
    size_t roll = below(r, 16);
    if (roll < 6) return 1 + below(r, 4096);
    if (roll < 12) return 4097 + below(r, (size_t)60 << 10);
    return ((size_t)64 << 10) + below(r, PIN_MAX - ((size_t)64 << 10) + 1);
}

/* Fresh bytes from page-locked host memory to the device and back into it. */
static void pinned_round_trip(pinned_churn *pc, pin_worker *w, unsigned char *host, size_t n) {
    size_t off = below(&w->r, PIN_DEVICE_BYTES - n + 1);
    fill(&w->r, host, n);
    memcpy(w->keep, host, n);
    CHECK_STATUS(vram_memcpy_h2d(w->device + off, host, n), VRAM_SUCCESS, "h2d from pinned memory");
    memset(host, 0, n);
    CHECK_STATUS(vram_memcpy_d2h(host, w->device + off, n), VRAM_SUCCESS, "d2h into pinned memory");
    CHECK(memcmp(host, w->keep, n) == 0, "a round trip of %zu B through pinned memory %p read back wrong",
          n, (void *)host);
    atomic_fetch_add(&pc->round_trips, 1);
    if (n >= pc->staging_min) atomic_fetch_add(&pc->big_round_trips, 1);
}

static void pin_alloc(pinned_churn *pc, pin_worker *w, pin_block *b) {
    size_t size = pinned_size(&w->r);
    void *p = w; /* must be overwritten */
    int rc = vram_host_alloc(&p, size);
    CHECK_STATUS(rc, VRAM_SUCCESS, "vram_host_alloc");
    if (rc != VRAM_SUCCESS) {
        CHECK(p == NULL, "a failed vram_host_alloc left *ptr %p", p);
        return;
    }
    /* Fresh host-backend pages are zeroed, and a freed block is cleared before reuse (the fake
     * driver's cuMemHostAlloc, unlike the real one, hands out uncleared memory). */
    if (on_host_backend())
        CHECK(all_zero(p, size), "a vram_host_alloc block of %zu B at %p is not clean", size, p);
    *b = (pin_block){p, size};
    pinned_round_trip(pc, w, b->p, size);
}

static void pin_free(pin_worker *w, pin_block *b) {
    EXPECT(vram_host_free(b->p + 1 + below(&w->r, b->size)), VRAM_ERR_INTERIOR_POINTER,
           VRAM_REASON_INTERIOR_POINTER, "vram_host_free of an interior pointer");
    CHECK_STATUS(vram_host_free(b->p), VRAM_SUCCESS, "vram_host_free");
    b->p = NULL;
}

/* A caller's buffer (odd address, odd size) registered, refused where it overlaps, used as
 * the host side of copies, and unregistered. */
static void pin_register(pinned_churn *pc, pin_worker *w) {
    size_t n = pinned_size(&w->r), a = below(&w->r, 63);
    unsigned char *buffer = malloc(n + 64);
    if (!buffer) {
        CHECK(0, "out of host memory");
        return;
    }
    unsigned char *p = buffer + a;
    int rc = vram_host_register(p, n);
    CHECK_STATUS(rc, VRAM_SUCCESS, "vram_host_register");
    if (rc != VRAM_SUCCESS) {
        free(buffer);
        return;
    }
    atomic_fetch_add(&pc->registrations, 1);
    EXPECT(vram_host_register(p, n), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_OVERLAP,
           "registering a registered range again");
    size_t inner = below(&w->r, n);
    EXPECT(vram_host_register(p + inner, n - inner + 1), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_OVERLAP, "registering a range overlapping a registered one");
    pinned_round_trip(pc, w, p, n);
    if (n > 1)
        EXPECT(vram_host_unregister(p + 1 + below(&w->r, n - 1)), VRAM_ERR_INTERIOR_POINTER,
               VRAM_REASON_INTERIOR_POINTER, "vram_host_unregister of an interior pointer");
    CHECK_STATUS(vram_host_unregister(p), VRAM_SUCCESS, "vram_host_unregister");
    EXPECT(vram_host_unregister(p), VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER,
           "vram_host_unregister of a range no longer registered");
    free(buffer);
}

static void pin_refusals(pin_worker *w) {
    void *p = w;
    EXPECT(vram_host_alloc(NULL, 64), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER,
           "vram_host_alloc(NULL)");
    EXPECT(vram_host_alloc(&p, 0), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE,
           "vram_host_alloc of 0 bytes");
    CHECK(p == NULL, "a refused vram_host_alloc left *ptr %p", p);
    EXPECT(vram_host_alloc(&p, SIZE_MAX), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_SIZE_OVERFLOW,
           "vram_host_alloc(SIZE_MAX)");
    EXPECT(vram_host_free(w->keep), VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER,
           "vram_host_free of pageable memory");
    CHECK_STATUS(vram_host_free(NULL), VRAM_SUCCESS, "vram_host_free(NULL)");
    EXPECT(vram_host_register(NULL, 64), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER,
           "vram_host_register(NULL)");
    EXPECT(vram_host_register(w->keep, 0), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE,
           "vram_host_register of 0 bytes");
    EXPECT(vram_host_register((void *)(UINTPTR_MAX - 63), 128), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_RANGE_WRAP, "vram_host_register of a wrapping range");
    EXPECT(vram_host_unregister(w->keep), VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER,
           "vram_host_unregister of a range never registered");
    EXPECT(vram_host_unregister(NULL), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER,
           "vram_host_unregister(NULL)");
}

static void pin_worker_run(pinned_churn *pc, int index) {
    pin_worker w;
    memset(&w, 0, sizeof w);
    w.r = rng_for(0x700 + (uint64_t)index);
    w.keep = malloc(PIN_MAX);
    int devices = device_count();
    void *device = NULL;
    CHECK_STATUS(vram_set_device(devices ? index % devices : 0), VRAM_SUCCESS, "vram_set_device");
    CHECK_STATUS(vram_malloc(&device, PIN_DEVICE_BYTES), VRAM_SUCCESS, "malloc of the device side");
    CHECK(w.keep != NULL, "out of host memory");
    w.device = device;
    for (long i = 0; w.keep && w.device && i < g_iterations / 10; i++) {
        pin_block *b = &w.blocks[below(&w.r, PIN_SLOTS)];
        switch (below(&w.r, 8)) {
        case 0: case 1: case 2:
            if (!b->p)
                pin_alloc(pc, &w, b);
            else { /* a sub-range of the block */
                size_t off = below(&w.r, b->size);
                pinned_round_trip(pc, &w, b->p + off, 1 + below(&w.r, b->size - off));
            }
            break;
        case 3:
            if (b->p) pin_free(&w, b);
            break;
        case 4: case 5:
            pin_register(pc, &w);
            break;
        case 6:
            if (b->p) { /* a block in use is no caller's buffer to register */
                size_t inner = below(&w.r, b->size);
                EXPECT(vram_host_register(b->p + inner, 1 + below(&w.r, b->size - inner)),
                       VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_OVERLAP,
                       "registering a range of a vram_host_alloc block");
            }
            break;
        default:
            pin_refusals(&w);
        }
    }
    for (int i = 0; i < PIN_SLOTS; i++)
        if (w.blocks[i].p) pin_free(&w, &w.blocks[i]);
    if (device) CHECK_STATUS(vram_free(device), VRAM_SUCCESS, "free of the device side");
    CHECK_STATUS(vram_set_device(0), VRAM_SUCCESS, "vram_set_device(0)");
    free(w.keep);
}

/* Trims of the cache and snapshots of the books while blocks come and go. */
static void pin_trimmer(pinned_churn *pc) {
    static const size_t keeps[] = {0, (size_t)256 << 10, (size_t)4 << 20};
    rng r = rng_for(0x7100);
    while (atomic_load(&pc->workers_left) > 0) {
        CHECK_STATUS(vram_host_trim(keeps[below(&r, 3)]), VRAM_SUCCESS, "vram_host_trim");
        atomic_fetch_add(&pc->trims, 1);
        vram_host_stats s = host_stats();
        CHECK(s.struct_size == sizeof s, "host stats struct_size %u", s.struct_size);
        CHECK(s.live_bytes >= s.live_count * 4096 && s.live_count <= (uint64_t)pc->workers * PIN_SLOTS,
              "%llu pinned blocks live in %llu B", (unsigned long long)s.live_count,
              (unsigned long long)s.live_bytes);
        CHECK(s.registered_count <= (uint64_t)pc->workers &&
                  (s.registered_count == 0) == (s.registered_bytes == 0) &&
                  s.registered_bytes >= s.registered_count,
              "%llu registered ranges of %llu B", (unsigned long long)s.registered_count,
              (unsigned long long)s.registered_bytes);
        CHECK_STATUS(vram_host_stats_get(&s, sizeof s - 1), VRAM_ERR_INVALID_PARAMETERS,
                     "vram_host_stats_get with a short struct");
        CHECK_STATUS(vram_host_stats_get(NULL, sizeof s), VRAM_ERR_INVALID_PARAMETERS,
                     "vram_host_stats_get(NULL)");
        sleep_us(1000 + (long)below(&r, 2000));
    }
}

static void *pinned_thread(void *arg) {
    worker *me = arg;
    pinned_churn *pc = me->arg;
    if (me->index < pc->workers) {
        pin_worker_run(pc, me->index);
        atomic_fetch_sub(&pc->workers_left, 1);
    } else {
        pin_trimmer(pc);
    }
    return NULL;
}

static void test_pinned_churn(void) {
    pinned_churn pc;
    memset(&pc, 0, sizeof pc);
    pc.workers = g_threads - 1;
    atomic_init(&pc.workers_left, pc.workers);
    /* Staging on, from 64 KiB: pageable copies that large would be staged. */
    vram_staging_config saved, config = {sizeof config, 2, (uint64_t)64 << 10, (uint64_t)64 << 10, 2, 0};
    CHECK_STATUS(vram_staging_get(&saved), VRAM_SUCCESS, "vram_staging_get");
    CHECK_STATUS(vram_staging_set(&config), VRAM_SUCCESS, "vram_staging_set");
    pc.staging_min = config.min_bytes;
    vram_registry_stats before = registry();
    vram_host_stats start = host_stats();
    long streams = fake_count("fakecuda_live_streams");
    run_threads(g_threads, pinned_thread, &pc);

    CHECK_STATUS(vram_host_trim(0), VRAM_SUCCESS, "vram_host_trim(0)");
    vram_host_stats s = host_stats();
    CHECK(s.live_count == 0 && s.live_bytes == 0 && s.cached_bytes == 0 && s.registered_count == 0 &&
              s.registered_bytes == 0,
          "after the churn: %llu blocks live (%llu B), %llu B cached, %llu ranges registered (%llu B)",
          (unsigned long long)s.live_count, (unsigned long long)s.live_bytes,
          (unsigned long long)s.cached_bytes, (unsigned long long)s.registered_count,
          (unsigned long long)s.registered_bytes);
    /* Copies from and to page-locked memory skip staging, however large. */
    CHECK(s.staged_copies_total == start.staged_copies_total,
          "%llu copies of pinned memory were staged",
          (unsigned long long)(s.staged_copies_total - start.staged_copies_total));
    CHECK(atomic_load(&pc.big_round_trips) > 0 && atomic_load(&pc.registrations) > 0,
          "%ld round trips of at least %llu B, %ld registrations: nothing to check",
          atomic_load(&pc.big_round_trips), (unsigned long long)pc.staging_min,
          atomic_load(&pc.registrations));
    CHECK(fake_count("fakecuda_live_streams") == streams, "staging engines were built for pinned copies");
    long registered = fake_count("fakecuda_live_registrations");
    long long host_bytes = fake_bytes("fakecuda_live_host_bytes");
    if (registered >= 0)
        CHECK(registered == 0 && host_bytes == (long long)s.staging_bytes,
              "the fake driver holds %ld registrations and %lld page-locked bytes (staging: %llu)",
              registered, host_bytes, (unsigned long long)s.staging_bytes);
    check_nothing_live(&before, "pinned_churn");
    CHECK_STATUS(vram_staging_set(&saved), VRAM_SUCCESS, "vram_staging_set (restore)");
    printf("     %ld round trips (%ld of at least %llu B, none staged), %ld registrations, %ld trims\n",
           atomic_load(&pc.round_trips), atomic_load(&pc.big_round_trips),
           (unsigned long long)pc.staging_min, atomic_load(&pc.registrations), atomic_load(&pc.trims));
}

/* ---------------------------------------------------------------------------------------- */
/* staged_copies: large pageable copies through the staging engines while they are rebuilt   */
/* ---------------------------------------------------------------------------------------- */

#define STAGE_MAX ((size_t)512 << 10)
#define GUARD 64

typedef struct staged {
    int workers;
    atomic_int workers_left;
    atomic_long copies, sensitive_copies, config_changes;
} staged;

/* Copies at odd offsets and sizes, both ways, checked byte for byte; the host buffers' bytes
 * around each copy must stay untouched, and the whole allocation must match its shadow. */
static void stage_worker_run(staged *st, int index) {
    rng r = rng_for(0x800 + (uint64_t)index);
    int devices = device_count();
    size_t size = (STAGE_MAX / 4 + below(&r, STAGE_MAX * 3 / 4)) | 1;
    unsigned char *src = malloc(size + 2 * GUARD), *dst = malloc(size + 2 * GUARD);
    unsigned char *shadow = malloc(size);
    void *device = NULL;
    uint64_t generation = 0;
    CHECK_STATUS(vram_set_device(devices ? index % devices : 0), VRAM_SUCCESS, "vram_set_device");
    CHECK_STATUS(vram_malloc_ex(&device, size, 11, &generation), VRAM_SUCCESS, "malloc for staged copies");
    CHECK(src && dst && shadow, "out of host memory");
    unsigned char *p = device;
    if (p && src && dst && shadow) {
        fill(&r, shadow, size);
        CHECK_STATUS(vram_memcpy_h2d(p, shadow, size), VRAM_SUCCESS, "h2d of the whole allocation");
    }
    for (long i = 0; p && src && dst && shadow && i < g_iterations / 100 + 4; i++) {
        bool sensitive = below(&r, 4) == 0;
        CHECK_STATUS(vram_set_allocation_wipe(p, generation, sensitive ? VRAM_WIPE_ON_FREE : VRAM_WIPE_OFF),
                     VRAM_SUCCESS, "vram_set_allocation_wipe");
        size_t off = below(&r, size / 2), len = 1 + below(&r, size - off), at = 1 + below(&r, GUARD - 1);
        fill(&r, src + at, len);
        CHECK_STATUS(vram_memcpy_h2d(p + off, src + at, len), VRAM_SUCCESS, "pageable h2d");
        memcpy(shadow + off, src + at, len);
        memset(dst, 0x5a, size + 2 * GUARD);
        CHECK_STATUS(vram_memcpy_d2h(dst + at, p + off, len), VRAM_SUCCESS, "pageable d2h");
        CHECK(memcmp(dst + at, src + at, len) == 0, "a pageable round trip of %zu B at %zu read back wrong",
              len, off);
        bool guards = true;
        for (size_t k = 0; k < at; k++) guards = guards && dst[k] == 0x5a;
        for (size_t k = at + len; k < size + 2 * GUARD; k++) guards = guards && dst[k] == 0x5a;
        CHECK(guards, "a d2h of %zu B wrote outside its host range", len);
        if (below(&r, 4) == 0) { /* nothing else of the allocation changed */
            memset(dst, 0, size);
            CHECK_STATUS(vram_memcpy_d2h(dst, p, size), VRAM_SUCCESS, "d2h of the whole allocation");
            CHECK(memcmp(dst, shadow, size) == 0, "an h2d wrote outside its device range");
        }
        atomic_fetch_add(&st->copies, 2);
        if (sensitive) atomic_fetch_add(&st->sensitive_copies, 2);
    }
    if (p) CHECK_STATUS(vram_free_ex(p, generation), VRAM_SUCCESS, "free after staged copies");
    CHECK_STATUS(vram_set_device(0), VRAM_SUCCESS, "vram_set_device(0)");
    free(src);
    free(dst);
    free(shadow);
}

static int configs_equal(const vram_staging_config *a, const vram_staging_config *b) {
    return a->struct_size == b->struct_size && a->threads == b->threads &&
           a->chunk_bytes == b->chunk_bytes && a->min_bytes == b->min_bytes &&
           a->buffers == b->buffers && a->reserved_ == b->reserved_;
}

/* Changes of the configuration (each waits for staged copies in flight, releases the
 * buffers), and invalid ones refused without a change. */
static void stage_configurer(staged *st) {
    static const uint32_t threads[] = {0, 1, 2, 3, 4};
    static const uint64_t chunks[] = {4096, 65536, 70001, 262144};
    static const uint64_t mins[] = {1, 4096, 65536};
    rng r = rng_for(0x8100);
    while (atomic_load(&st->workers_left) > 0) {
        sleep_us(1000 + (long)below(&r, 3000));
        vram_staging_config c = {sizeof c, threads[below(&r, 5)], chunks[below(&r, 4)],
                                 mins[below(&r, 3)], 1 + (uint32_t)below(&r, 4), 0};
        CHECK_STATUS(vram_staging_set(&c), VRAM_SUCCESS, "vram_staging_set");
        vram_staging_config got;
        CHECK_STATUS(vram_staging_get(&got), VRAM_SUCCESS, "vram_staging_get");
        CHECK(configs_equal(&got, &c), "vram_staging_get does not answer what was set");
        vram_staging_config bad = c;
        switch (below(&r, 6)) {
        case 0: bad.struct_size = sizeof bad - 8; break;
        case 1: bad.threads = 65; break;
        case 2: bad.chunk_bytes = 4095; break;
        case 3: bad.chunk_bytes = ((uint64_t)1 << 30) + 1; break;
        case 4: bad.buffers = below(&r, 2) ? 0 : 17; break;
        default: bad.reserved_ = 1; break;
        }
        EXPECT(vram_staging_set(&bad), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_CONFIG,
               "vram_staging_set of an invalid configuration");
        EXPECT(vram_staging_set(NULL), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER,
               "vram_staging_set(NULL)");
        CHECK_STATUS(vram_staging_get(&got), VRAM_SUCCESS, "vram_staging_get");
        CHECK(configs_equal(&got, &c), "a refused vram_staging_set changed the configuration");
        atomic_fetch_add(&st->config_changes, 1);
    }
}

static void *staged_thread(void *arg) {
    worker *me = arg;
    staged *st = me->arg;
    if (me->index < st->workers) {
        stage_worker_run(st, me->index);
        atomic_fetch_sub(&st->workers_left, 1);
    } else {
        stage_configurer(st);
    }
    return NULL;
}

/* One thread, exact, over the fake driver: a 1 MiB copy goes through the engine in chunks of
 * at most chunk_bytes (async copies only); a sensitive one clears the staging bytes; the
 * engines hold threads x buffers x chunk_bytes per direction; smaller and pinned copies go to
 * the driver directly; turning staging off releases every buffer, stream and event. */
static void staged_exact(void) {
    const size_t n = (size_t)1 << 20;
    vram_staging_config off = {sizeof off, 0, 65536, 4096, 2, 0};
    vram_staging_config on = {sizeof on, 2, 65536, 4096, 2, 0};
    CHECK_STATUS(vram_staging_set(&off), VRAM_SUCCESS, "vram_staging_set(off)");
    vram_host_stats s0 = host_stats();
    bool fake = fake_symbol("fakecuda_calls") != NULL; /* else a real driver: counts unknown */
    long streams = fake_count("fakecuda_live_streams"), events = fake_count("fakecuda_live_events");
    CHECK(s0.staging_bytes == 0, "%llu staging bytes held with staging off",
          (unsigned long long)s0.staging_bytes);
    unsigned char *src = malloc(n), *dst = malloc(n);
    void *p = NULL, *pinned = NULL;
    uint64_t generation = 0;
    CHECK_STATUS(vram_malloc_ex(&p, n, 12, &generation), VRAM_SUCCESS, "malloc of 1 MiB");
    CHECK_STATUS(vram_host_alloc(&pinned, n), VRAM_SUCCESS, "vram_host_alloc of 1 MiB");
    if (!src || !dst || !p || !pinned) {
        CHECK(src && dst, "out of host memory");
        free(src);
        free(dst);
        vram_free(p);
        vram_host_free(pinned);
        return;
    }
    CHECK_STATUS(vram_set_allocation_wipe(p, generation, VRAM_WIPE_ON_FREE), VRAM_SUCCESS,
                 "vram_set_allocation_wipe");
    CHECK_STATUS(vram_staging_set(&on), VRAM_SUCCESS, "vram_staging_set(on)");
    rng r = rng_for(0x8200);
    fill(&r, src, n);
    long htod = fake_calls("cuMemcpyHtoD"), dtoh = fake_calls("cuMemcpyDtoH");
    long htod_async = fake_calls("cuMemcpyHtoDAsync"), dtoh_async = fake_calls("cuMemcpyDtoHAsync");
    CHECK_STATUS(vram_memcpy_h2d(p, src, n), VRAM_SUCCESS, "staged h2d of 1 MiB");
    memset(dst, 0, n);
    CHECK_STATUS(vram_memcpy_d2h(dst, p, n), VRAM_SUCCESS, "staged d2h of 1 MiB");
    CHECK(memcmp(dst, src, n) == 0, "a staged round trip of 1 MiB read back wrong");
    vram_host_stats s1 = host_stats();
    CHECK(s1.staged_copies_total == s0.staged_copies_total + 2, "%llu staged copies, want 2",
          (unsigned long long)(s1.staged_copies_total - s0.staged_copies_total));
    CHECK(s1.staging_bytes == 2 * 2 * 2 * 65536, "%llu staging bytes, want 2 directions x 2 threads "
          "x 2 buffers x 64 KiB", (unsigned long long)s1.staging_bytes);
    CHECK(s1.staging_cleared_bytes_total > s0.staging_cleared_bytes_total,
          "staging bytes of a VRAM_WIPE_ON_FREE allocation were not cleared");
    CHECK(!fake || (fake_calls("cuMemcpyHtoD") == htod && fake_calls("cuMemcpyDtoH") == dtoh &&
              fake_calls("cuMemcpyHtoDAsync") - htod_async >= (long)(n / 65536) &&
              fake_calls("cuMemcpyDtoHAsync") - dtoh_async >= (long)(n / 65536)),
          "staged copies called the driver: %ld HtoD, %ld DtoH, %ld HtoDAsync, %ld DtoHAsync",
          fake_calls("cuMemcpyHtoD") - htod, fake_calls("cuMemcpyDtoH") - dtoh,
          fake_calls("cuMemcpyHtoDAsync") - htod_async, fake_calls("cuMemcpyDtoHAsync") - dtoh_async);
    CHECK(!fake || (fake_count("fakecuda_live_streams") == streams + 4 &&
                    fake_count("fakecuda_live_events") == events + 8),
          "the engines hold %ld streams and %ld events, want 4 and 8",
          fake_count("fakecuda_live_streams") - streams, fake_count("fakecuda_live_events") - events);
    /* Below min_bytes, and pinned: to the driver directly. */
    htod = fake_calls("cuMemcpyHtoD");
    CHECK_STATUS(vram_memcpy_h2d(p, src, 4095), VRAM_SUCCESS, "h2d below min_bytes");
    memcpy(pinned, src, n);
    CHECK_STATUS(vram_memcpy_h2d(p, pinned, n), VRAM_SUCCESS, "h2d of 1 MiB of pinned memory");
    vram_host_stats s2 = host_stats();
    CHECK(s2.staged_copies_total == s1.staged_copies_total && (!fake || fake_calls("cuMemcpyHtoD") == htod + 2),
          "copies below min_bytes or from pinned memory were staged");
    CHECK_STATUS(vram_free_ex(p, generation), VRAM_SUCCESS, "free of 1 MiB");
    CHECK_STATUS(vram_host_free(pinned), VRAM_SUCCESS, "vram_host_free");
    CHECK_STATUS(vram_host_trim(0), VRAM_SUCCESS, "vram_host_trim(0)");
    CHECK_STATUS(vram_staging_set(&off), VRAM_SUCCESS, "vram_staging_set(off)");
    vram_host_stats s3 = host_stats();
    CHECK(s3.staging_bytes == 0 && fake_count("fakecuda_live_streams") == streams &&
              fake_count("fakecuda_live_events") == events,
          "turning staging off left %llu B, %ld streams, %ld events",
          (unsigned long long)s3.staging_bytes, fake_count("fakecuda_live_streams") - streams,
          fake_count("fakecuda_live_events") - events);
    long host_blocks = fake_count("fakecuda_live_host_allocations");
    if (host_blocks >= 0)
        CHECK(host_blocks == 0, "the fake driver holds %ld page-locked blocks with nothing in use",
              host_blocks);
    free(src);
    free(dst);
}

static void test_staged_copies(void) {
    staged st;
    memset(&st, 0, sizeof st);
    st.workers = g_threads - 1;
    atomic_init(&st.workers_left, st.workers);
    vram_staging_config saved, start = {sizeof start, 3, 65536, 4096, 2, 0};
    CHECK_STATUS(vram_staging_get(&saved), VRAM_SUCCESS, "vram_staging_get");
    CHECK_STATUS(vram_staging_set(&start), VRAM_SUCCESS, "vram_staging_set");
    vram_registry_stats before = registry();
    vram_host_stats s0 = host_stats();
    run_threads(g_threads, staged_thread, &st);
    vram_host_stats s1 = host_stats();
    CHECK(s1.staged_copies_total > s0.staged_copies_total, "no copy was staged");
    check_nothing_live(&before, "staged_copies");
    printf("     %ld pageable copies (%ld of VRAM_WIPE_ON_FREE memory), %llu staged, "
           "%ld configuration changes\n",
           atomic_load(&st.copies), atomic_load(&st.sensitive_copies),
           (unsigned long long)(s1.staged_copies_total - s0.staged_copies_total),
           atomic_load(&st.config_changes));
    staged_exact();
    CHECK_STATUS(vram_staging_set(&saved), VRAM_SUCCESS, "vram_staging_set (restore)");
}

/* ---------------------------------------------------------------------------------------- */
/* d2d_migrate: copies between allocations and migrations between two devices               */
/* ---------------------------------------------------------------------------------------- */

#define CELLS 16
#define CELL_MAX ((size_t)192 << 10)
#define RACE_TAG 40
#define RACE_BYTES (((size_t)3 << 19) + 1000) /* 1.5 MiB + 1000: staged where staging applies */

/* A shared allocation: copies from it hold its lock shared; copies into it, migrations and
 * its re-creation exclusive (so that no copy ever uses a pointer freed meanwhile). Its owner
 * tag (1 + index) is its own, to find it in the per-device registry books. */
typedef struct cell {
    pthread_rwlock_t lock;
    unsigned char *p;
    uint64_t generation;
    size_t size;
    int device;
    uint32_t tag;
    unsigned char *shadow;
} cell;

typedef struct own {
    unsigned char *p;
    uint64_t generation;
    int device;
    unsigned char *shadow; /* CELL_MAX */
} own;

typedef struct d2d_churn {
    cell cells[CELLS];
    int devices;
    atomic_long copies, migrations, recreations;
} d2d_churn;

typedef struct d2d_worker {
    rng r;
    own mine[2];
    unsigned char *got; /* CELL_MAX scratch */
} d2d_worker;

static unsigned char g_not_device[256]; /* memory the registry never saw */

static int other_device(int device, int devices) { return (device + 1) % devices; }

/* The cell's allocation must be on its device, under its tag, alone. */
static void check_cell_home(const cell *c, int devices) {
    for (int d = 0; d < devices; d++) {
        vram_registry_stats s;
        CHECK_STATUS(vram_registry_stats_get(d, &s, sizeof s), VRAM_SUCCESS, "vram_registry_stats_get");
        uint64_t want = d == c->device ? 1 : 0;
        CHECK(s.tag_live_count[c->tag] == want && s.tag_live_bytes[c->tag] == want * c->size,
              "tag %u: %llu allocations (%llu B) on device %d, want %llu", c->tag,
              (unsigned long long)s.tag_live_count[c->tag], (unsigned long long)s.tag_live_bytes[c->tag],
              d, (unsigned long long)want);
    }
}

static void cell_make(d2d_churn *dc, cell *c, rng *r, unsigned char *got) {
    c->size = VRAM_ALIGNMENT + below(r, CELL_MAX - VRAM_ALIGNMENT + 1);
    c->device = (int)below(r, (size_t)dc->devices);
    void *p = NULL;
    CHECK_STATUS(vram_set_device(c->device), VRAM_SUCCESS, "vram_set_device");
    CHECK_STATUS(vram_malloc_ex(&p, c->size, c->tag, &c->generation), VRAM_SUCCESS, "malloc of a cell");
    CHECK_STATUS(vram_set_device(0), VRAM_SUCCESS, "vram_set_device(0)");
    c->p = p;
    if (!p) return;
    fill(r, c->shadow, c->size);
    CHECK_STATUS(vram_memcpy_h2d(c->p, c->shadow, c->size), VRAM_SUCCESS, "h2d of a cell");
    device_equals(c->p, c->shadow, c->size, got, "a fresh cell");
}

/* A random range [*off, *off + *len) of a size, at most max bytes long. */
static void pick_range(rng *r, size_t size, size_t max, size_t *off, size_t *len) {
    *off = below(r, size);
    size_t room = size - *off < max ? size - *off : max;
    *len = 1 + below(r, room);
}

static void cell_to_own(d2d_churn *dc, d2d_worker *w, cell *c) {
    own *m = &w->mine[below(&w->r, 2)];
    size_t off, len;
    pthread_rwlock_rdlock(&c->lock);
    pick_range(&w->r, c->size, CELL_MAX, &off, &len);
    size_t at = below(&w->r, CELL_MAX - len + 1);
    CHECK_STATUS(vram_memcpy_d2d(m->p + at, c->p + off, len), VRAM_SUCCESS, "d2d from a cell");
    memcpy(m->shadow + at, c->shadow + off, len);
    pthread_rwlock_unlock(&c->lock);
    device_equals(m->p + at, m->shadow + at, len, w->got, "a d2d from a cell");
    atomic_fetch_add(&dc->copies, 1);
}

static void own_to_cell(d2d_churn *dc, d2d_worker *w, cell *c) {
    own *m = &w->mine[below(&w->r, 2)];
    size_t off, len;
    pthread_rwlock_wrlock(&c->lock);
    pick_range(&w->r, c->size, CELL_MAX, &off, &len);
    size_t at = below(&w->r, CELL_MAX - len + 1);
    CHECK_STATUS(vram_memcpy_d2d(c->p + off, m->p + at, len), VRAM_SUCCESS, "d2d into a cell");
    memcpy(c->shadow + off, m->shadow + at, len);
    device_equals(c->p, c->shadow, c->size, w->got, "a cell after a d2d into it");
    pthread_rwlock_unlock(&c->lock);
    atomic_fetch_add(&dc->copies, 1);
}

/* From one cell into another (locks taken in index order), or within one cell. */
static void cell_to_cell(d2d_churn *dc, d2d_worker *w, size_t from, size_t to) {
    cell *src = &dc->cells[from], *dst = &dc->cells[to];
    if (from == to) {
        pthread_rwlock_wrlock(&dst->lock);
    } else if (from < to) {
        pthread_rwlock_rdlock(&src->lock);
        pthread_rwlock_wrlock(&dst->lock);
    } else {
        pthread_rwlock_wrlock(&dst->lock);
        pthread_rwlock_rdlock(&src->lock);
    }
    size_t half = dst->size / 2;
    if (from == to && half >= 1) { /* one half into the other */
        size_t len = 1 + below(&w->r, half), a = below(&w->r, half - len + 1),
               b = half + below(&w->r, dst->size - half - len + 1);
        size_t s_off = below(&w->r, 2) ? a : b, d_off = s_off == a ? b : a;
        CHECK_STATUS(vram_memcpy_d2d(dst->p + d_off, dst->p + s_off, len), VRAM_SUCCESS,
                     "d2d within a cell");
        memmove(dst->shadow + d_off, dst->shadow + s_off, len);
        size_t shift = len > 1 ? 1 + below(&w->r, len - 1) : 0;
        if (shift && s_off + shift + len <= dst->size) /* overlapping: refused, nothing copied */
            EXPECT(vram_memcpy_d2d(dst->p + s_off + shift, dst->p + s_off, len),
                   VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_OVERLAP, "d2d of overlapping ranges");
    } else if (from != to) {
        size_t off, len;
        pick_range(&w->r, src->size, dst->size, &off, &len);
        size_t at = below(&w->r, dst->size - len + 1);
        CHECK_STATUS(vram_memcpy_d2d(dst->p + at, src->p + off, len), VRAM_SUCCESS, "d2d cell to cell");
        memcpy(dst->shadow + at, src->shadow + off, len);
    }
    device_equals(dst->p, dst->shadow, dst->size, w->got, "a cell after a d2d between cells");
    pthread_rwlock_unlock(&dst->lock);
    if (from != to) pthread_rwlock_unlock(&src->lock);
    atomic_fetch_add(&dc->copies, 1);
}

/* To the other device (or its own: unchanged); the old generation is refused afterwards. */
static void cell_migrate(d2d_churn *dc, d2d_worker *w, cell *c) {
    pthread_rwlock_wrlock(&c->lock);
    int target = below(&w->r, 5) == 0 ? c->device : other_device(c->device, dc->devices);
    void *np = w;
    uint64_t ng = 0;
    int rc = vram_migrate(c->p, c->generation, target, &np, &ng);
    CHECK_STATUS(rc, VRAM_SUCCESS, "vram_migrate of a cell");
    if (rc == VRAM_SUCCESS && target == c->device) {
        CHECK(np == c->p && ng == c->generation, "a migration to the allocation's own device moved it");
    } else if (rc == VRAM_SUCCESS) {
        CHECK(np && np != c->p && ng > c->generation, "migrated to %p generation %llu from %p %llu", np,
              (unsigned long long)ng, (void *)c->p, (unsigned long long)c->generation);
        void *again = w;
        uint64_t again_generation = 1;
        EXPECT(vram_migrate(c->p, c->generation, c->device, &again, &again_generation),
               VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER, "vram_migrate of a moved generation");
        CHECK(again == NULL && again_generation == 0, "a refused migration left %p", again);
        c->p = np;
        c->generation = ng;
        c->device = target;
        atomic_fetch_add(&dc->migrations, 1);
    }
    check_cell_home(c, dc->devices);
    device_equals(c->p, c->shadow, c->size, w->got, "a cell after its migration");
    pthread_rwlock_unlock(&c->lock);
}

static void cell_recreate(d2d_churn *dc, d2d_worker *w, cell *c) {
    pthread_rwlock_wrlock(&c->lock);
    device_equals(c->p, c->shadow, c->size, w->got, "a cell before its free");
    CHECK_STATUS(vram_free_ex(c->p, c->generation), VRAM_SUCCESS, "free of a cell");
    CHECK_STATUS(vram_free_ex(c->p, c->generation), VRAM_SUCCESS, "free of a freed cell's generation");
    cell_make(dc, c, &w->r, w->got);
    check_cell_home(c, dc->devices);
    pthread_rwlock_unlock(&c->lock);
    atomic_fetch_add(&dc->recreations, 1);
}

/* Between the thread's own allocations (across devices), and a migration of one of them. */
static void own_moves(d2d_churn *dc, d2d_worker *w) {
    own *a = &w->mine[0], *b = &w->mine[1];
    size_t off, len;
    pick_range(&w->r, CELL_MAX, CELL_MAX, &off, &len);
    size_t at = below(&w->r, CELL_MAX - len + 1);
    CHECK_STATUS(vram_memcpy_d2d(b->p + at, a->p + off, len), VRAM_SUCCESS, "d2d between own allocations");
    memcpy(b->shadow + at, a->shadow + off, len);
    device_equals(b->p + at, b->shadow + at, len, w->got, "a d2d between own allocations");
    own *m = &w->mine[below(&w->r, 2)];
    int target = other_device(m->device, dc->devices);
    void *np = NULL;
    uint64_t ng = 0;
    int rc = vram_migrate(m->p, m->generation, target, &np, &ng);
    CHECK_STATUS(rc, VRAM_SUCCESS, "vram_migrate of an own allocation");
    if (rc == VRAM_SUCCESS) {
        m->p = np;
        m->generation = ng;
        m->device = target;
        device_equals(m->p, m->shadow, CELL_MAX, w->got, "an own allocation after its migration");
    }
}

/* A d2d running past an allocation's end: 6, or 2 (overlap) should the two ranges touch. */
static void expect_past_end(unsigned char *dst, const unsigned char *src, size_t n, const char *what) {
    bool overlap = (uintptr_t)dst < (uintptr_t)src + n && (uintptr_t)src < (uintptr_t)dst + n;
    EXPECT(vram_memcpy_d2d(dst, src, n), overlap ? VRAM_ERR_INVALID_PARAMETERS : VRAM_ERR_OUT_OF_BOUNDS,
           overlap ? VRAM_REASON_OVERLAP : VRAM_REASON_OUT_OF_BOUNDS, what);
}

/* Refused: out of bounds on either side, unknown, NULL, empty, wrapping, bad migrations. */
static void d2d_refusals(d2d_churn *dc, d2d_worker *w, cell *c) {
    own *m = &w->mine[below(&w->r, 2)];
    pthread_rwlock_rdlock(&c->lock);
    size_t off = below(&w->r, c->size), len = c->size - off + 1;
    expect_past_end(m->p, c->p + off, len, "d2d from past a cell's end");
    size_t moff = below(&w->r, CELL_MAX);
    len = CELL_MAX - moff + 1 < c->size ? CELL_MAX - moff + 1 : c->size + 1;
    expect_past_end(m->p + moff, c->p, len, "d2d past an allocation's end");
    EXPECT(vram_memcpy_d2d(m->p, g_not_device, 16), VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER,
           "d2d from an unknown pointer");
    EXPECT(vram_memcpy_d2d(NULL, c->p, 1), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER,
           "d2d to NULL");
    EXPECT(vram_memcpy_d2d(m->p, c->p, 0), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE,
           "d2d of 0 bytes");
    EXPECT(vram_memcpy_d2d(m->p, (void *)(UINTPTR_MAX - 15), 64), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_RANGE_WRAP, "d2d of a wrapping range");
    void *np = w;
    EXPECT(vram_migrate(c->p, 0, 0, &np, NULL), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_INVALID_GENERATION, "vram_migrate with generation 0");
    CHECK(np == NULL, "a refused migration left %p", np);
    EXPECT(vram_migrate(c->p, c->generation, dc->devices, &np, NULL), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_INVALID_DEVICE, "vram_migrate to a device that does not exist");
    EXPECT(vram_migrate(c->p, c->generation, 0, NULL, NULL), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_NULL_POINTER, "vram_migrate without new_ptr");
    EXPECT(vram_migrate(c->p + 1, c->generation, 0, &np, NULL), VRAM_ERR_UNKNOWN_POINTER,
           VRAM_REASON_UNKNOWN_POINTER, "vram_migrate of an interior pointer");
    pthread_rwlock_unlock(&c->lock);
}

static void *d2d_churn_thread(void *arg) {
    worker *me = arg;
    d2d_churn *dc = me->arg;
    d2d_worker w;
    memset(&w, 0, sizeof w);
    w.r = rng_for(0x900 + (uint64_t)me->index);
    w.got = malloc(CELL_MAX);
    bool ok = w.got != NULL;
    for (int k = 0; k < 2; k++) {
        own *m = &w.mine[k];
        m->device = k % dc->devices;
        m->shadow = malloc(CELL_MAX);
        void *p = NULL;
        CHECK_STATUS(vram_set_device(m->device), VRAM_SUCCESS, "vram_set_device");
        CHECK_STATUS(vram_malloc_ex(&p, CELL_MAX, 0, &m->generation), VRAM_SUCCESS, "malloc of an own allocation");
        m->p = p;
        ok = ok && m->shadow && m->p;
        if (ok) {
            fill(&w.r, m->shadow, CELL_MAX);
            CHECK_STATUS(vram_memcpy_h2d(m->p, m->shadow, CELL_MAX), VRAM_SUCCESS, "h2d of an own allocation");
        }
    }
    CHECK_STATUS(vram_set_device(0), VRAM_SUCCESS, "vram_set_device(0)");
    CHECK(ok, "out of memory");
    for (long i = 0; ok && i < g_iterations / 10; i++) {
        size_t from = below(&w.r, CELLS);
        cell *c = &dc->cells[from];
        switch (below(&w.r, 16)) {
        case 0: case 1: case 2: case 3: case 4: cell_to_own(dc, &w, c); break;
        case 5: case 6: own_to_cell(dc, &w, c); break;
        case 7: case 8: cell_to_cell(dc, &w, from, below(&w.r, 4) ? below(&w.r, CELLS) : from); break;
        case 9: case 10: case 11: cell_migrate(dc, &w, c); break;
        case 12: cell_recreate(dc, &w, c); break;
        case 13: case 14: own_moves(dc, &w); break;
        default: d2d_refusals(dc, &w, c); break;
        }
    }
    for (int k = 0; k < 2; k++) {
        own *m = &w.mine[k];
        if (m->p) {
            device_equals(m->p, m->shadow, CELL_MAX, w.got, "an own allocation before its free");
            CHECK_STATUS(vram_free_ex(m->p, m->generation), VRAM_SUCCESS, "free of an own allocation");
        }
        free(m->shadow);
    }
    free(w.got);
    return NULL;
}

/* Rounds: readers copy (d2d) out of their slices of one allocation while it is migrated to
 * the other device by one thread, or while another thread frees it; or two threads migrate it
 * at once (without readers). Nothing
 * else allocates during a round, so its address is not reused: a copy returns 0 with the
 * right bytes or 5. Two migrations of one allocation cannot both succeed (one allocation
 * would become two); a failed one leaves nothing new. */
typedef struct migrate_race {
    unsigned char *base;
    uint64_t generation;
    int target, readers, variant;
    size_t slice;
    const unsigned char *pattern;
    unsigned char **dst; /* per reader: slice bytes of device memory */
    atomic_long copies_ok;
    atomic_int actors_done, stop;
    long start_after;
    atomic_int actors_ready; /* a spinning start: both actors running when they begin */
    int status[2];
    void *moved[2];
    uint64_t moved_generation[2];
} migrate_race;

static void race_reader(migrate_race *mr, int index) {
    rng r = rng_for(0xa00000 + (uint64_t)index * 977 + (uint64_t)mr->variant);
    unsigned char *got = malloc(mr->slice);
    unsigned char *mine = mr->base + (size_t)index * mr->slice;
    while (got && !atomic_load(&mr->stop)) {
        size_t off, len;
        pick_range(&r, mr->slice, 16384, &off, &len); /* short copies: many pins come and go */
        size_t at = below(&r, mr->slice - len + 1);
        int rc = vram_memcpy_d2d(mr->dst[index] + at, mine + off, len);
        if (rc == VRAM_ERR_UNKNOWN_POINTER) {
            int reason = last_reason();
            CHECK(reason == VRAM_REASON_FREED_POINTER ||
                      (mine + off != mr->base && reason == VRAM_REASON_UNKNOWN_POINTER),
                  "d2d racing a migration: 5 with reason %s", vram_reason_name(reason));
            break;
        }
        CHECK_STATUS(rc, VRAM_SUCCESS, "d2d racing a migration (0 or 5)");
        if (rc != VRAM_SUCCESS) break;
        memset(got, 0, len);
        CHECK_STATUS(vram_memcpy_d2h(got, mr->dst[index] + at, len), VRAM_SUCCESS, "d2h of a reader's copy");
        CHECK(memcmp(got, mr->pattern + (size_t)index * mr->slice + off, len) == 0,
              "a d2d racing a migration copied wrong bytes");
        atomic_fetch_add(&mr->copies_ok, 1);
    }
    free(got);
}

static void race_actor(migrate_race *mr, int actor) {
    for (long spins = 0; spins < 200000 && atomic_load(&mr->copies_ok) < mr->start_after; spins++)
        sched_yield();
    atomic_fetch_add(&mr->actors_ready, 1);
    for (long spins = 1; atomic_load(&mr->actors_ready) < 2; spins++)
        if (spins % 1024 == 0) sched_yield();
    mr->moved[actor] = mr; /* must be overwritten */
    mr->moved_generation[actor] = 1;
    if (actor == 1 && mr->variant == 0) {
        mr->status[actor] = -1; /* only one migration this round */
        mr->moved[actor] = NULL;
        mr->moved_generation[actor] = 0;
    } else if (actor == 1 && mr->variant == 2) {
        mr->status[actor] = vram_free_ex(mr->base, mr->generation);
        mr->moved[actor] = NULL;
        mr->moved_generation[actor] = 0;
    } else {
        mr->status[actor] = vram_migrate(mr->base, mr->generation, mr->target, &mr->moved[actor],
                                         &mr->moved_generation[actor]);
    }
    /* Readers stop at their first 5; should the source stay (no migration), here. */
    if (atomic_fetch_add(&mr->actors_done, 1) == 1) atomic_store(&mr->stop, 1);
}

static void *migrate_race_thread(void *arg) {
    worker *me = arg;
    migrate_race *mr = me->arg;
    if (me->index < mr->readers) {
        race_reader(mr, me->index);
    } else {
        race_actor(mr, me->index - mr->readers);
    }
    return NULL;
}

static void migrate_rounds(int devices) {
    /* Variants by round: one migration, two at once (cheap, and the race needs luck: thrice
     * as often), one racing a free. */
    static const int variants[] = {0, 1, 2, 1, 1};
    long rounds = g_iterations / 100 < 10 ? 10 : g_iterations / 100;
    /* Eight readers: more only starve the migrating thread of the CPU on small machines. */
    int readers = g_threads - 2 < 8 ? g_threads - 2 : 8;
    size_t slice = RACE_BYTES / (size_t)readers;
    unsigned char *pattern = malloc(RACE_BYTES), *got = malloc(RACE_BYTES);
    unsigned char **dst = calloc((size_t)readers, sizeof *dst);
    if (!pattern || !got || !dst) {
        CHECK(0, "out of host memory");
        free(pattern);
        free(got);
        free(dst);
        return;
    }
    rng r = rng_for(0xa000);
    long successes[3] = {0}, copies = 0, both = 0;
    for (long round = 0; round < rounds; round++) {
        migrate_race mr;
        memset(&mr, 0, sizeof mr);
        mr.variant = variants[round % 5];
        /* Two migrations at once run alone: with readers about, on few cores, one of them
         * may be scheduled only once the other is done. */
        mr.readers = mr.variant == 1 ? 0 : readers;
        mr.slice = slice;
        mr.pattern = pattern;
        mr.dst = dst;
        mr.start_after = mr.readers ? (long)below(&r, (size_t)readers * 2) : 0;
        atomic_init(&mr.copies_ok, 0);
        atomic_init(&mr.actors_done, 0);
        atomic_init(&mr.actors_ready, 0);
        atomic_init(&mr.stop, 0);
        int source = (int)below(&r, (size_t)devices);
        mr.target = other_device(source, devices);
        for (int i = 0; i < readers; i++) {
            void *p = NULL;
            CHECK_STATUS(vram_set_device((int)below(&r, (size_t)devices)), VRAM_SUCCESS, "vram_set_device");
            CHECK_STATUS(vram_malloc(&p, slice), VRAM_SUCCESS, "malloc of a reader's buffer");
            dst[i] = p;
        }
        void *base = NULL;
        CHECK_STATUS(vram_set_device(source), VRAM_SUCCESS, "vram_set_device");
        CHECK_STATUS(vram_malloc_ex(&base, RACE_BYTES, RACE_TAG, &mr.generation), VRAM_SUCCESS,
                     "malloc of the raced allocation");
        CHECK_STATUS(vram_set_device(0), VRAM_SUCCESS, "vram_set_device(0)");
        mr.base = base;
        bool ready = base != NULL;
        for (int i = 0; i < readers; i++) ready = ready && dst[i];
        if (ready) {
            fill(&r, pattern, RACE_BYTES);
            CHECK_STATUS(vram_memcpy_h2d(base, pattern, RACE_BYTES), VRAM_SUCCESS, "h2d of the raced allocation");
            run_threads(mr.readers + 2, migrate_race_thread, &mr);
        }
        int migrations = 0;
        for (int a = 0; a < 2; a++) {
            bool migrating = !(a == 1 && mr.variant != 1);
            if (!migrating) continue;
            if (mr.status[a] == VRAM_SUCCESS) {
                migrations++;
                device_equals(mr.moved[a], pattern, RACE_BYTES, got, "a migrated allocation");
                CHECK_STATUS(vram_free_ex(mr.moved[a], mr.moved_generation[a]), VRAM_SUCCESS,
                             "free of a migrated allocation");
            } else {
                CHECK(mr.status[a] == VRAM_ERR_UNKNOWN_POINTER && mr.moved[a] == NULL &&
                          mr.moved_generation[a] == 0,
                      "round %ld: a migration failed with %d (%s), left %p", round, mr.status[a],
                      vram_status_name(mr.status[a]), mr.moved[a]);
            }
        }
        if (mr.variant == 2)
            CHECK_STATUS(mr.status[1], VRAM_SUCCESS, "a free racing a migration");
        if (mr.variant == 1 && migrations == 2) both++;
        CHECK(mr.variant == 2 ? migrations <= 1 : migrations == 1,
              "round %ld (%s): %d migrations of generation %llu succeeded: %p and %p", round,
              mr.variant == 1 ? "two at once" : mr.variant == 2 ? "racing a free" : "one",
              migrations, (unsigned long long)mr.generation, mr.moved[0], mr.moved[1]);
        if (migrations == 0 && mr.variant != 2 && base) /* the source stayed: free it */
            CHECK_STATUS(vram_free_ex(base, mr.generation), VRAM_SUCCESS, "free of an unmoved allocation");
        for (int i = 0; i < readers; i++)
            if (dst[i]) CHECK_STATUS(vram_free(dst[i]), VRAM_SUCCESS, "free of a reader's buffer");
        successes[mr.variant] += migrations;
        copies += atomic_load(&mr.copies_ok);
        vram_registry_stats s;
        CHECK_STATUS(vram_registry_stats_get(-1, &s, sizeof s), VRAM_SUCCESS, "vram_registry_stats_get");
        CHECK(s.tag_live_count[RACE_TAG] == 0, "round %ld: %llu allocations of tag %d left", round,
              (unsigned long long)s.tag_live_count[RACE_TAG], RACE_TAG);
    }
    printf("     %ld rounds: %ld d2d copies racing; migrations that succeeded: %ld alone, %ld of two "
           "at once (%ld rounds both), %ld racing a free\n",
           rounds, copies, successes[0], successes[1], both, successes[2]);
    free(pattern);
    free(got);
    free(dst);
}

static void test_d2d_migrate(void) {
    int devices = device_count();
    CHECK(devices >= 2, "%d devices: this test needs two (VRAMOBS_HOST_DEVICES, FAKECUDA_DEVICES)", devices);
    if (devices < 2) return;
    int path = -1;
    CHECK_STATUS(vram_copy_path_get(0, 1, &path), VRAM_SUCCESS, "vram_copy_path_get");
    vram_op cross = path == VRAM_PATH_PEER ? VRAM_OP_MEMCPY_P2P : VRAM_OP_MEMCPY_STAGED;
    vram_registry_stats before = registry();
    vram_stats ops_before = op_stats();
    /* The last device pools its memory: migrations land in and leave its cache. */
    int pooled = devices - 1;
    CHECK_STATUS(vram_pool_set(pooled, (uint64_t)8 << 20), VRAM_SUCCESS, "vram_pool_set(8 MiB)");

    d2d_churn dc;
    memset(&dc, 0, sizeof dc);
    dc.devices = devices;
    rng r = rng_for(0x9000);
    unsigned char *got = malloc(CELL_MAX);
    bool ok = got != NULL;
    for (size_t i = 0; i < CELLS; i++) {
        cell *c = &dc.cells[i];
        pthread_rwlock_init(&c->lock, NULL);
        c->tag = 1 + (uint32_t)i;
        c->shadow = malloc(CELL_MAX);
        ok = ok && c->shadow;
        if (ok) cell_make(&dc, c, &r, got);
        ok = ok && c->p;
    }
    CHECK(ok, "out of memory");
    double t0 = now_s();
    if (ok) run_threads(g_threads, d2d_churn_thread, &dc);
    for (size_t i = 0; i < CELLS; i++) {
        cell *c = &dc.cells[i];
        if (c->p) {
            check_cell_home(c, devices);
            device_equals(c->p, c->shadow, c->size, got, "a cell at the end");
            CHECK_STATUS(vram_free_ex(c->p, c->generation), VRAM_SUCCESS, "free of a cell");
        }
        free(c->shadow);
        pthread_rwlock_destroy(&c->lock);
    }
    free(got);
    printf("     path between devices: %s; %ld copies, %ld migrations, %ld cells re-made (%.2f s)\n",
           path == VRAM_PATH_PEER ? "peer" : "staged", atomic_load(&dc.copies),
           atomic_load(&dc.migrations), atomic_load(&dc.recreations), now_s() - t0);
    migrate_rounds(devices);

    CHECK_STATUS(vram_pool_trim(-1, 0), VRAM_SUCCESS, "vram_pool_trim(-1, 0)");
    CHECK_STATUS(vram_pool_set(pooled, 0), VRAM_SUCCESS, "vram_pool_set(0)");
    vram_pool_stats pool = pool_stats(-1);
    CHECK(pool.cached_bytes == 0 && pool.live_blocks == 0 && pool.enabled == 0,
          "pool: %llu B cached, %llu blocks out, %u on", (unsigned long long)pool.cached_bytes,
          (unsigned long long)pool.live_blocks, pool.enabled);
    check_nothing_live(&before, "d2d_migrate");
    vram_stats ops = op_stats();
    uint64_t d2d = ops.ops[VRAM_OP_MEMCPY_D2D].by_status[VRAM_SUCCESS] -
                   ops_before.ops[VRAM_OP_MEMCPY_D2D].by_status[VRAM_SUCCESS];
    uint64_t across = ops.ops[cross].by_status[VRAM_SUCCESS] - ops_before.ops[cross].by_status[VRAM_SUCCESS];
    uint64_t migrated = ops.ops[VRAM_OP_MIGRATE].by_status[VRAM_SUCCESS] -
                        ops_before.ops[VRAM_OP_MIGRATE].by_status[VRAM_SUCCESS];
    CHECK(d2d > 0 && across > 0 && migrated >= (uint64_t)atomic_load(&dc.migrations),
          "counted %llu d2d, %llu %s copies, %llu migrations (%ld made)", (unsigned long long)d2d,
          (unsigned long long)across, vram_op_name(cross), (unsigned long long)migrated,
          atomic_load(&dc.migrations));
}

/* ---------------------------------------------------------------------------------------- */
/* async_streams: copies on caller streams racing waits, polls and frees                    */
/* ---------------------------------------------------------------------------------------- */

#define AS_MAX ((size_t)192 << 10) /* largest device buffer of a round: some are staged */
#define AS_EXTRA 4096              /* the source allocation's bytes beyond what a round reads */
#define AS_TAG 50
#define AS_COPIES 4 /* completions a round holds at once */

enum { AS_PINNED, AS_REGISTERED, AS_PAGEABLE, AS_KINDS };
enum { AS_WAIT, AS_POLL, AS_RELEASE, AS_FREE_DEVICE, AS_FREE_HOST, AS_ENDINGS };
static const char *const as_ending_names[AS_ENDINGS] = {"wait", "poll", "release", "free device",
                                                        "free host"};

/* The driver functions a caller uses to make its streams (the library's, loaded: NOLOAD). */
typedef struct cu_api {
    void *lib;
    int (*device_get)(int *device, int ordinal);
    int (*primary_retain)(void **ctx, int device);
    int (*push)(void *ctx);
    int (*pop)(void **ctx);
    int (*stream_create)(void **stream, unsigned flags);
    int (*stream_destroy)(void *stream);
    int (*stream_sync)(void *stream);
    int (*ctx_sync)(void);
    void *ctx[2]; /* the devices' primary contexts */
} cu_api;

_Static_assert(sizeof(void *) == sizeof(int (*)(void)), "dlsym hands back function pointers");

#define CU_STREAM_NON_BLOCKING 1u

static bool cu_load(cu_api *cu, int devices) {
    const char *driver = getenv("VRAMOBS_CUDA_DRIVER");
    cu->lib = dlopen(driver && *driver ? driver : "libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!cu->lib) return false;
    bool ok = true;
#define CU_LOAD(field, name)                             \
    do {                                                 \
        void *sym_ = dlsym(cu->lib, name);               \
        memcpy(&cu->field, &sym_, sizeof sym_);          \
        CHECK(sym_ != NULL, "the driver lacks %s", name); \
        ok = ok && sym_;                                 \
    } while (0)
    CU_LOAD(device_get, "cuDeviceGet");
    CU_LOAD(primary_retain, "cuDevicePrimaryCtxRetain");
    CU_LOAD(push, "cuCtxPushCurrent_v2");
    CU_LOAD(pop, "cuCtxPopCurrent_v2");
    CU_LOAD(stream_create, "cuStreamCreate");
    CU_LOAD(stream_destroy, "cuStreamDestroy_v2");
    CU_LOAD(stream_sync, "cuStreamSynchronize");
    CU_LOAD(ctx_sync, "cuCtxSynchronize");
#undef CU_LOAD
    for (int d = 0; ok && d < devices; d++) {
        int device = -1;
        int r = cu->device_get(&device, d);
        if (r == 0) r = cu->primary_retain(&cu->ctx[d], device);
        CHECK(r == 0 && cu->ctx[d], "primary context of device %d: CUresult %d", d, r);
        ok = ok && r == 0 && cu->ctx[d];
    }
    return ok;
}

static void cu_enter(const cu_api *cu, int device) {
    int r = cu->push(cu->ctx[device]);
    CHECK(r == 0, "cuCtxPushCurrent of device %d: CUresult %d", device, r);
}

static void cu_leave(const cu_api *cu, int device) {
    void *popped = NULL;
    int r = cu->pop(&popped);
    CHECK(r == 0 && popped == cu->ctx[device], "cuCtxPopCurrent: CUresult %d, context %p of %p", r,
          popped, cu->ctx[device]);
}

/* What a caller does to be sure a stream's work is over: cuStreamSynchronize in the device's
 * primary context (where the default handles name its default stream). */
static void cu_stream_sync(const cu_api *cu, int device, uintptr_t stream) {
    cu_enter(cu, device);
    int r = cu->stream_sync((void *)stream);
    CHECK(r == 0, "cuStreamSynchronize(%#llx) on device %d: CUresult %d", (unsigned long long)stream,
          device, r);
    cu_leave(cu, device);
}

/* A device buffer handed to another thread, which frees it while copies from it may be in
 * flight and then sets acked. */
typedef struct as_msg {
    struct as_msg *next;
    unsigned char *p;
    uint64_t generation;
    int device, how;
    atomic_int acked;
} as_msg;

typedef struct as_box {
    pthread_mutex_t lock;
    as_msg *head;
} as_box;

typedef struct async_streams {
    int devices;
    bool cuda, deferred;
    int path[2][2]; /* vram_copy_path_get(src, dst) */
    cu_api cu;
    as_box *boxes; /* one per thread */
    atomic_int workers_left;
    /* What the threads did, to hold the library's books against. */
    atomic_long ok, immediate, h2d, d2h, d2d, p2p, staged, sync_h2d, sync_d2h;
    atomic_long endings[AS_ENDINGS], shared, acked_first, forced_polls, refusals, ordered,
        freed_async;
} async_streams;

typedef struct as_host { /* the host side of copies */
    unsigned char *p;    /* where copies go */
    unsigned char *base; /* malloc'd (registered, pageable) */
    size_t n;
    int kind;
} as_host;

typedef struct as_worker {
    rng r;
    int index;
    long round;
    uintptr_t streams[2][2]; /* per device: a blocking and a non-blocking stream */
    unsigned char *want, *eshadow, *got;
} as_worker;

/* A stream of the device: its blocking or non-blocking one, or a default handle (0, 1, 2). On
 * the host backend, any value. */
static uintptr_t as_stream(const async_streams *ax, as_worker *w, int device) {
    size_t roll = below(&w->r, 8);
    if (roll == 0) return below(&w->r, 3);
    if (!ax->cuda && roll == 1) return (uintptr_t)next(&w->r);
    return w->streams[device][roll < 4 ? 0 : 1];
}

static void as_streams_make(async_streams *ax, as_worker *w) {
    for (int d = 0; d < ax->devices; d++)
        for (int k = 0; k < 2; k++) {
            if (!ax->cuda) {
                w->streams[d][k] = (uintptr_t)next(&w->r) | 8; /* no stream at all */
                continue;
            }
            void *s = NULL;
            cu_enter(&ax->cu, d);
            int r = ax->cu.stream_create(&s, k ? CU_STREAM_NON_BLOCKING : 0);
            cu_leave(&ax->cu, d);
            CHECK(r == 0 && s, "cuStreamCreate on device %d: CUresult %d", d, r);
            w->streams[d][k] = (uintptr_t)s;
        }
}

/* Wait for the streams' work (the stream-ordered frees queued last) and destroy them. */
static void as_streams_destroy(async_streams *ax, as_worker *w) {
    for (int d = 0; ax->cuda && d < ax->devices; d++)
        for (int k = 0; k < 2; k++) {
            if (!w->streams[d][k]) continue;
            cu_stream_sync(&ax->cu, d, w->streams[d][k]);
            int r = ax->cu.stream_destroy((void *)w->streams[d][k]);
            CHECK(r == 0, "cuStreamDestroy: CUresult %d", r);
            w->streams[d][k] = 0;
        }
}

static bool as_host_get(as_worker *w, as_host *h, int kind, size_t n) {
    *h = (as_host){NULL, NULL, n, kind};
    if (kind == AS_PINNED) {
        void *p = NULL;
        int rc = vram_host_alloc(&p, n);
        CHECK_STATUS(rc, VRAM_SUCCESS, "vram_host_alloc");
        h->p = p;
        return p != NULL;
    }
    h->base = malloc(n + 64);
    if (!h->base) {
        CHECK(0, "out of host memory");
        return false;
    }
    h->p = h->base + below(&w->r, 64); /* odd addresses */
    if (kind == AS_REGISTERED) {
        int rc = vram_host_register(h->p, n);
        CHECK_STATUS(rc, VRAM_SUCCESS, "vram_host_register");
        if (rc != VRAM_SUCCESS) {
            free(h->base);
            h->p = h->base = NULL;
            return false;
        }
    }
    return true;
}

/* Give the host memory back to the library (pinned, registered); its bytes stay readable for
 * a registered or pageable buffer until as_host_free. */
static void as_host_release(as_host *h) {
    if (!h->p) return;
    if (h->kind == AS_PINNED) {
        CHECK_STATUS(vram_host_free(h->p), VRAM_SUCCESS, "vram_host_free");
        h->p = NULL;
    } else if (h->kind == AS_REGISTERED) {
        CHECK_STATUS(vram_host_unregister(h->p), VRAM_SUCCESS, "vram_host_unregister");
        h->kind = AS_PAGEABLE;
    }
}

static void as_host_free(as_host *h) {
    as_host_release(h);
    free(h->base);
    h->p = h->base = NULL;
}

/* Count a successful async copy; refusals and failures are the caller's checks. */
static void as_count(async_streams *ax, vram_op op, bool immediate) {
    atomic_fetch_add(&ax->ok, 1);
    if (immediate) atomic_fetch_add(&ax->immediate, 1);
    atomic_long *by_op = op == VRAM_OP_MEMCPY_H2D   ? &ax->h2d
                         : op == VRAM_OP_MEMCPY_D2H ? &ax->d2h
                         : op == VRAM_OP_MEMCPY_D2D ? &ax->d2d
                         : op == VRAM_OP_MEMCPY_P2P ? &ax->p2p
                                                    : &ax->staged;
    atomic_fetch_add(by_op, 1);
}

/* An async call that must succeed; its completion already complete when immediate. */
static void as_started(async_streams *ax, int rc, vram_completion *c, vram_op op, bool immediate,
                       const char *what) {
    CHECK_STATUS(rc, VRAM_SUCCESS, what);
    CHECK((rc == VRAM_SUCCESS) == (c != NULL), "%s: %d with completion %p", what, rc, (void *)c);
    if (rc != VRAM_SUCCESS) return;
    as_count(ax, op, immediate);
    if (immediate) {
        int done = -1;
        CHECK_STATUS(vram_completion_query(c, &done), VRAM_SUCCESS, "vram_completion_query");
        CHECK(done == 1, "%s: done at the call, but its completion says %d", what, done);
    }
}

/* A completion whose copy must be over (its memory was freed, its stream synchronized). */
static void as_expect_done(vram_completion *c, const char *why) {
    if (!c) return;
    int done = -1;
    CHECK_STATUS(vram_completion_query(c, &done), VRAM_SUCCESS, "vram_completion_query");
    CHECK(done == 1, "a copy is not complete after %s", why);
}

static void as_release_all(vram_completion **c) {
    for (int i = 0; i < AS_COPIES; i++)
        if (c[i]) {
            CHECK_STATUS(vram_completion_release(c[i]), VRAM_SUCCESS, "vram_completion_release");
            c[i] = NULL;
        }
}

static void as_bytes(const as_worker *w, const unsigned char *got, const unsigned char *want,
                     size_t n, const char *what) {
    if (memcmp(got, want, n) == 0) return;
    size_t i = 0;
    while (got[i] == want[i]) i++;
    CHECK(0, "thread %d round %ld: %s: %zu B differ from byte %zu on (%02x, want %02x)", w->index,
          w->round, what, n, i, got[i], want[i]);
}

/* Free what other threads handed over, copies in flight or not, and say so. */
static void as_serve(async_streams *ax, as_worker *w) {
    as_box *b = &ax->boxes[w->index];
    pthread_mutex_lock(&b->lock);
    as_msg *m = b->head;
    b->head = NULL;
    pthread_mutex_unlock(&b->lock);
    while (m) {
        as_msg *after = m->next; /* read first: once acked, m is its owner's again */
        int rc;
        if (m->how == 0)
            rc = vram_free(m->p);
        else if (m->how == 1)
            rc = vram_free_ex(m->p, m->generation);
        else
            rc = vram_free_async(m->p, m->generation, as_stream(ax, w, m->device));
        CHECK_STATUS(rc, VRAM_SUCCESS, "a free of another thread's allocation with copies in flight");
        atomic_store(&m->acked, 1);
        m = after;
    }
}

static void as_post(async_streams *ax, int to, as_msg *m) {
    as_box *b = &ax->boxes[to];
    pthread_mutex_lock(&b->lock);
    m->next = b->head;
    b->head = m;
    pthread_mutex_unlock(&b->lock);
}

static void as_await(async_streams *ax, as_worker *w, as_msg *m) {
    for (long spins = 0; !atomic_load(&m->acked); spins++) {
        as_serve(ax, w);
        if (spins < 64) sched_yield(); else sleep_us(50);
    }
}

/* Refused at the call, nothing started: each refusal with its reason. */
static void as_refusals(async_streams *ax, as_worker *w, unsigned char *D, size_t n, int d,
                        uintptr_t s) {
    vram_completion *x = (vram_completion *)w; /* must be overwritten */
    EXPECT(vram_memcpy_h2d_async(D, w->got, 1, s, NULL), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_NULL_POINTER, "h2d_async without a completion");
    EXPECT(vram_memcpy_h2d_async(D + n - 1, w->got, 2, s, &x), VRAM_ERR_OUT_OF_BOUNDS,
           VRAM_REASON_OUT_OF_BOUNDS, "h2d_async one byte past the end");
    CHECK(x == NULL, "a refused async copy left completion %p", (void *)x);
    EXPECT(vram_memcpy_d2h_async(NULL, D, 1, s, &x), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_NULL_POINTER, "d2h_async to NULL");
    EXPECT(vram_memcpy_d2h_async(w->got, D, 0, s, &x), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_ZERO_SIZE, "d2h_async of 0 bytes");
    EXPECT(vram_memcpy_d2h_async(w->got, g_not_device, 16, s, &x), VRAM_ERR_UNKNOWN_POINTER,
           VRAM_REASON_UNKNOWN_POINTER, "d2h_async from an unknown pointer");
    if (n > 2) /* [D + 1, D + n) and [D, D + n - 1) share a byte */
        EXPECT(vram_memcpy_d2d_async(D + 1, D, n - 1, s, &x), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_OVERLAP, "d2d_async of overlapping ranges");
    CHECK(x == NULL, "a refused async copy left completion %p", (void *)x);
    int done = 7;
    CHECK_STATUS(vram_completion_query(NULL, &done), VRAM_ERR_INVALID_PARAMETERS, "query(NULL)");
    CHECK_STATUS(vram_completion_wait(NULL), VRAM_ERR_INVALID_PARAMETERS, "wait(NULL)");
    CHECK_STATUS(vram_completion_release(NULL), VRAM_SUCCESS, "release(NULL)");
    if (ax->cuda && ax->devices > 1) { /* a stream of the other device's context */
        uintptr_t foreign = w->streams[other_device(d, ax->devices)][below(&w->r, 2)];
        EXPECT(vram_memcpy_h2d_async(D, w->got, 1, foreign, &x), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_INVALID_STREAM, "h2d_async on another device's stream");
        CHECK(x == NULL, "a refused async copy left completion %p", (void *)x);
        void *q = w;
        CHECK_STATUS(vram_set_device(d), VRAM_SUCCESS, "vram_set_device");
        EXPECT(vram_malloc_async(&q, 64, AS_TAG, NULL, foreign), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_INVALID_STREAM, "vram_malloc_async on another device's stream");
        CHECK(q == NULL, "a refused vram_malloc_async left %p", q);
    }
    atomic_fetch_add(&ax->refusals, 1);
}

/* Free the round's device buffer: at once, by generation or in stream order. */
static void as_free_device(async_streams *ax, as_worker *w, unsigned char *p, uint64_t generation,
                           int device) {
    size_t how = below(&w->r, 3);
    int rc = how == 0   ? vram_free(p)
             : how == 1 ? vram_free_ex(p, generation)
                        : vram_free_async(p, generation, as_stream(ax, w, device));
    CHECK_STATUS(rc, VRAM_SUCCESS, how == 2 ? "vram_free_async" : "free of a buffer of async copies");
    if (how == 2) atomic_fetch_add(&ax->freed_async, 1);
}

/* One round: a device buffer D on device d gets part A from host memory H1 and part B from
 * an allocation E (device e, perhaps the other), then is read back whole into H2, all on one
 * stream s; when E is shared, it is also read into H3 on a stream of its device and handed to
 * another thread to free. Then the round ends one way (waits, polls, releases, or frees D or
 * the host memory first), and every byte a finished copy delivered is checked. */
static void as_round(async_streams *ax, as_worker *w) {
    rng *r = &w->r;
    as_serve(ax, w);
    int d = (int)below(r, (size_t)ax->devices), e = (int)below(r, (size_t)ax->devices);
    uintptr_t s = as_stream(ax, w, d), se = as_stream(ax, w, e);
    size_t n = 2 + below(r, below(r, 4) == 0 ? AS_MAX - 1 : 16383);
    size_t a = 1 + below(r, n - 1), b = n - a; /* parts A and B */
    size_t m = b + 1 + below(r, AS_EXTRA), off = below(r, m - b + 1);
    size_t off3 = below(r, m), len3 = 1 + below(r, m - off3);
    bool shared = below(r, 3) == 0, ordered = below(r, 4) == 0;
    int ending = (int)below(r, AS_ENDINGS);
    int k1 = (int)below(r, AS_KINDS), k2 = (int)below(r, AS_KINDS), k3 = (int)below(r, AS_KINDS);
    bool host = !ax->cuda;

    unsigned char *D = NULL, *E = NULL;
    uint64_t gD = 0, gE = 0;
    void *p = NULL;
    CHECK_STATUS(vram_set_device(d), VRAM_SUCCESS, "vram_set_device");
    int rc = ordered ? vram_malloc_async(&p, n, AS_TAG, &gD, s) : vram_malloc_ex(&p, n, AS_TAG, &gD);
    CHECK_STATUS(rc, VRAM_SUCCESS, ordered ? "vram_malloc_async" : "vram_malloc_ex");
    D = p;
    if (ordered) atomic_fetch_add(&ax->ordered, 1);
    CHECK_STATUS(vram_set_device(e), VRAM_SUCCESS, "vram_set_device");
    p = NULL;
    CHECK_STATUS(vram_malloc_ex(&p, m, AS_TAG, &gE), VRAM_SUCCESS, "vram_malloc_ex");
    E = p;
    CHECK_STATUS(vram_set_device(0), VRAM_SUCCESS, "vram_set_device(0)");
    as_host h1 = {0}, h2 = {0}, h3 = {0};
    bool ok = D && E && as_host_get(w, &h1, k1, a) && as_host_get(w, &h2, k2, n) &&
              (!shared || as_host_get(w, &h3, k3, len3));
    if (!ok) {
        if (D) CHECK_STATUS(vram_free(D), VRAM_SUCCESS, "vram_free");
        if (E) CHECK_STATUS(vram_free(E), VRAM_SUCCESS, "vram_free");
        as_host_free(&h1);
        as_host_free(&h2);
        as_host_free(&h3);
        return;
    }
    if (below(r, 6) == 0)
        CHECK_STATUS(vram_set_allocation_wipe(D, gD, VRAM_WIPE_ON_FREE), VRAM_SUCCESS,
                     "vram_set_allocation_wipe");
    fill(r, w->eshadow, m);
    CHECK_STATUS(vram_memcpy_h2d(E, w->eshadow, m), VRAM_SUCCESS, "h2d of the source allocation");
    atomic_fetch_add(&ax->sync_h2d, 1);
    fill(r, h1.p, a);
    memcpy(w->want, h1.p, a);
    memcpy(w->want + a, w->eshadow + off, b);
    memset(h2.p, 0, n);
    if (shared) memset(h3.p, 0, len3);

    vram_completion *c[AS_COPIES] = {NULL};
    rc = vram_memcpy_h2d_async(D, h1.p, a, s, &c[0]);
    as_started(ax, rc, c[0], VRAM_OP_MEMCPY_H2D, host || k1 == AS_PAGEABLE, "h2d_async");
    if (k1 == AS_PAGEABLE) fill(r, h1.p, a); /* taken at the call: the buffer is free again */
    int path = ax->path[e][d];
    vram_op cross = path == VRAM_PATH_DEVICE ? VRAM_OP_MEMCPY_D2D
                    : path == VRAM_PATH_PEER ? VRAM_OP_MEMCPY_P2P
                                             : VRAM_OP_MEMCPY_STAGED;
    rc = vram_memcpy_d2d_async(D + a, E + off, b, s, &c[1]);
    as_started(ax, rc, c[1], cross, host || path == VRAM_PATH_STAGED, "d2d_async");
    rc = vram_memcpy_d2h_async(h2.p, D, n, s, &c[2]);
    as_started(ax, rc, c[2], VRAM_OP_MEMCPY_D2H, host || k2 == AS_PAGEABLE, "d2h_async");
    bool h2_checked = false, h3_checked = false;
    if (k2 == AS_PAGEABLE || host) { /* done at the call, after the stream's earlier work */
        as_bytes(w, h2.p, w->want, n, "a d2h_async done at the call");
        h2_checked = true;
    }
    as_msg msg;
    memset(&msg, 0, sizeof msg);
    if (shared) {
        rc = vram_memcpy_d2h_async(h3.p, E + off3, len3, se, &c[3]);
        as_started(ax, rc, c[3], VRAM_OP_MEMCPY_D2H, host || k3 == AS_PAGEABLE, "d2h_async of E");
        if (k3 == AS_PAGEABLE || host) {
            as_bytes(w, h3.p, w->eshadow + off3, len3, "a d2h_async done at the call");
            h3_checked = true;
        }
        msg.p = E;
        msg.generation = gE;
        msg.device = e;
        msg.how = (int)below(r, 3);
        atomic_init(&msg.acked, 0);
        int to = (w->index + 1 + (int)below(r, (size_t)g_threads - 1)) % g_threads;
        as_post(ax, to, &msg);
        atomic_fetch_add(&ax->shared, 1);
        if (below(r, 2) == 0) { /* freed by then: its copies are over, H3 holds its bytes */
            as_await(ax, w, &msg);
            atomic_fetch_add(&ax->acked_first, 1);
            as_expect_done(c[1], "another thread freed its source");
            as_expect_done(c[3], "another thread freed its source");
            as_bytes(w, h3.p, w->eshadow + off3, len3, "a d2h from an allocation another thread freed");
            h3_checked = true;
        }
    }
    if (below(r, 4) == 0) as_refusals(ax, w, D, n, d, s);

    atomic_fetch_add(&ax->endings[ending], 1);
    switch (ending) {
    case AS_WAIT:
        for (int i = AS_COPIES - 1; i >= 0; i--) /* last first: the earlier ones are over too */
            if (c[i]) CHECK_STATUS(vram_completion_wait(c[i]), VRAM_SUCCESS, "vram_completion_wait");
        break;
    case AS_POLL:
        for (int i = 0; i < AS_COPIES; i++) {
            int done = 0;
            for (int k = 0; c[i] && !done && k < 32; k++) {
                CHECK_STATUS(vram_completion_query(c[i], &done), VRAM_SUCCESS, "vram_completion_query");
                CHECK(done || !host, "the host backend's copy is not done at once");
                if (!done) sched_yield();
            }
            if (c[i] && !done) { /* nothing forced it: the caller waits for its stream */
                cu_stream_sync(&ax->cu, i == 3 ? e : d, i == 3 ? se : s);
                int after = -1;
                CHECK_STATUS(vram_completion_query(c[i], &after), VRAM_SUCCESS, "vram_completion_query");
                CHECK(after == 1, "thread %d round %ld: copy %d (%s) not complete after a "
                      "cuStreamSynchronize of its stream (%#llx)%s", w->index, w->round, i,
                      i == 0 ? "h2d" : i == 2 ? "d2h" : i == 1 ? "d2d from E" : "d2h from E",
                      (unsigned long long)(i == 3 ? se : s),
                      shared && (i == 1 || i == 3) ? ", E handed to another thread to free" : "");
                atomic_fetch_add(&ax->forced_polls, 1);
            }
        }
        break;
    case AS_RELEASE:
        break;
    case AS_FREE_DEVICE: /* the free drains the copies from and to D (and E) */
        as_free_device(ax, w, D, gD, d);
        D = NULL;
        if (!shared && below(r, 2) == 0) {
            as_free_device(ax, w, E, gE, e);
            E = NULL;
        }
        for (int i = 0; i < 3; i++) as_expect_done(c[i], "a free of its device memory");
        as_bytes(w, h2.p, w->want, n, "a d2h drained by a free of its source");
        h2_checked = true;
        break;
    case AS_FREE_HOST: { /* releasing the host memory drains the copies that use it */
        bool both = below(r, 2) == 0, first = both || below(r, 2) == 0;
        if (first) {
            as_host_release(&h1);
            as_expect_done(c[0], "its host memory was released");
        }
        if (both || !first) {
            as_host_release(&h2);
            as_expect_done(c[2], "its host memory was released");
            if (h2.p) { /* registered or pageable: ours to read */
                as_bytes(w, h2.p, w->want, n, "a d2h drained by releasing its host memory");
                h2_checked = true;
            }
        }
        break;
    }
    }
    as_release_all(c);
    if (h2.p && !h2_checked) as_bytes(w, h2.p, w->want, n, "a d2h_async");
    if (shared && !h3_checked && h3.p) as_bytes(w, h3.p, w->eshadow + off3, len3, "a d2h_async of E");
    if (shared) as_await(ax, w, &msg);
    if (D) {
        if (ax->cuda && ax->devices > 1 && below(r, 4) == 0) /* refused: D stays live */
            EXPECT(vram_free_async(D, gD, w->streams[other_device(d, ax->devices)][0]),
                   VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_STREAM,
                   "vram_free_async on another device's stream");
        memset(w->got, 0, n);
        CHECK_STATUS(vram_memcpy_d2h(w->got, D, n), VRAM_SUCCESS, "d2h of the round's buffer");
        atomic_fetch_add(&ax->sync_d2h, 1);
        as_bytes(w, w->got, w->want, n, "the device buffer after its copies");
        as_free_device(ax, w, D, gD, d);
    }
    if (E && !shared) as_free_device(ax, w, E, gE, e);
    as_host_free(&h1);
    as_host_free(&h2);
    as_host_free(&h3);
}

static void *async_thread(void *arg) {
    worker *me = arg;
    async_streams *ax = me->arg;
    as_worker w;
    memset(&w, 0, sizeof w);
    w.index = me->index;
    w.r = rng_for(0xb00 + (uint64_t)me->index);
    w.want = malloc(AS_MAX);
    w.eshadow = malloc(AS_MAX + AS_EXTRA);
    w.got = malloc(AS_MAX);
    bool ok = w.want && w.eshadow && w.got;
    CHECK(ok, "out of host memory");
    as_streams_make(ax, &w);
    long rounds = g_iterations / 8 < 10 ? 10 : g_iterations / 8;
    for (w.round = 0; ok && w.round < rounds; w.round++) as_round(ax, &w);
    /* Others may still hand over buffers to free until every thread is done. */
    atomic_fetch_sub(&ax->workers_left, 1);
    while (atomic_load(&ax->workers_left) > 0) {
        as_serve(ax, &w);
        sleep_us(100);
    }
    as_serve(ax, &w);
    as_streams_destroy(ax, &w);
    free(w.want);
    free(w.eshadow);
    free(w.got);
    return NULL;
}

static vram_async_stats async_stats(void) {
    vram_async_stats s;
    memset(&s, 0, sizeof s);
    CHECK_STATUS(vram_async_stats_get(&s, sizeof s), VRAM_SUCCESS, "vram_async_stats_get");
    return s;
}

static uint64_t ops_ok(const vram_stats *after, const vram_stats *before, vram_op op) {
    return after->ops[op].by_status[VRAM_SUCCESS] - before->ops[op].by_status[VRAM_SUCCESS];
}

static void test_async_streams(void) {
    async_streams ax;
    memset(&ax, 0, sizeof ax);
    int devices = device_count();
    ax.devices = devices < 2 ? devices : 2;
    ax.cuda = !on_host_backend();
    const char *mode = getenv("FAKECUDA_ASYNC");
    ax.deferred = ax.cuda && mode && strcmp(mode, "deferred") == 0;
    CHECK(ax.devices >= 1, "no device");
    if (ax.devices < 1) return;
    for (int from = 0; from < ax.devices; from++)
        for (int to = 0; to < ax.devices; to++)
            CHECK_STATUS(vram_copy_path_get(from, to, &ax.path[from][to]), VRAM_SUCCESS,
                         "vram_copy_path_get");
    if (ax.cuda && !cu_load(&ax.cu, ax.devices)) {
        CHECK(0, "the CUDA driver's stream functions are not reachable (VRAMOBS_CUDA_DRIVER)");
        return;
    }
    /* Staging on from 64 KiB (large pageable copies go through it); the baseline of the
     * driver's streams and events is taken with it off (its engines hold some). */
    vram_staging_config saved, off = {sizeof off, 0, 65536, 65536, 2, 0},
                               on = {sizeof on, 2, 65536, 65536, 2, 0};
    CHECK_STATUS(vram_staging_get(&saved), VRAM_SUCCESS, "vram_staging_get");
    CHECK_STATUS(vram_staging_set(&off), VRAM_SUCCESS, "vram_staging_set(off)");
    long streams = fake_count("fakecuda_live_streams"), events = fake_count("fakecuda_live_events");
    CHECK_STATUS(vram_staging_set(&on), VRAM_SUCCESS, "vram_staging_set(on)");
    /* The last device pools: a buffer freed without draining would be handed out again. */
    int pooled = ax.devices - 1;
    CHECK_STATUS(vram_pool_set(pooled, (uint64_t)8 << 20), VRAM_SUCCESS, "vram_pool_set(8 MiB)");
    vram_registry_stats before = registry();
    vram_stats ops_before = op_stats();
    vram_async_stats a0 = async_stats();
    ax.boxes = calloc((size_t)g_threads, sizeof *ax.boxes);
    CHECK(ax.boxes != NULL, "out of host memory");
    if (!ax.boxes) return;
    for (int i = 0; i < g_threads; i++) pthread_mutex_init(&ax.boxes[i].lock, NULL);
    atomic_init(&ax.workers_left, g_threads);

    double t0 = now_s();
    run_threads(g_threads, async_thread, &ax);
    double dt = now_s() - t0;
    for (int d = 0; ax.cuda && d < ax.devices; d++) { /* the default streams' last work */
        cu_enter(&ax.cu, d);
        int r = ax.cu.ctx_sync();
        CHECK(r == 0, "cuCtxSynchronize on device %d: CUresult %d", d, r);
        cu_leave(&ax.cu, d);
    }

    /* The library's books against what the threads did. */
    vram_async_stats a1 = async_stats();
    uint64_t ok = (uint64_t)atomic_load(&ax.ok), immediate = (uint64_t)atomic_load(&ax.immediate);
    uint64_t enqueued = a1.enqueued_total - a0.enqueued_total,
             completed = a1.completed_total - a0.completed_total,
             failed = a1.failed_total - a0.failed_total,
             drained = a1.drained_total - a0.drained_total;
    CHECK(a1.struct_size == sizeof a1 && a1.pending == 0,
          "async stats: struct_size %u, %llu completions pending at the end", a1.struct_size,
          (unsigned long long)a1.pending);
    CHECK(a1.immediate_total - a0.immediate_total == immediate && enqueued == ok - immediate,
          "async stats: %llu immediate and %llu enqueued; the threads made %llu copies, %llu of "
          "them done at the call", (unsigned long long)(a1.immediate_total - a0.immediate_total),
          (unsigned long long)enqueued, (unsigned long long)ok, (unsigned long long)immediate);
    CHECK(completed == enqueued && failed == 0 && a1.enqueued_total == a1.completed_total + a1.failed_total,
          "async stats: %llu enqueued, %llu completed, %llu failed", (unsigned long long)enqueued,
          (unsigned long long)completed, (unsigned long long)failed);
    CHECK(ax.cuda || enqueued == 0, "the host backend enqueued %llu copies", (unsigned long long)enqueued);
    CHECK(!ax.deferred || drained > 0, "deferred driver: no copy was drained by a free");
    vram_stats ops = op_stats();
    uint64_t want[5] = {(uint64_t)(atomic_load(&ax.h2d) + atomic_load(&ax.sync_h2d)),
                        (uint64_t)(atomic_load(&ax.d2h) + atomic_load(&ax.sync_d2h)),
                        (uint64_t)atomic_load(&ax.d2d), (uint64_t)atomic_load(&ax.p2p),
                        (uint64_t)atomic_load(&ax.staged)};
    static const vram_op counted[5] = {VRAM_OP_MEMCPY_H2D, VRAM_OP_MEMCPY_D2H, VRAM_OP_MEMCPY_D2D,
                                       VRAM_OP_MEMCPY_P2P, VRAM_OP_MEMCPY_STAGED};
    for (int i = 0; i < 5; i++)
        CHECK(ops_ok(&ops, &ops_before, counted[i]) == want[i],
              "%s: %llu successful calls counted, the threads made %llu", vram_op_name(counted[i]),
              (unsigned long long)ops_ok(&ops, &ops_before, counted[i]), (unsigned long long)want[i]);

    CHECK_STATUS(vram_pool_trim(-1, 0), VRAM_SUCCESS, "vram_pool_trim(-1, 0)");
    CHECK_STATUS(vram_pool_set(pooled, 0), VRAM_SUCCESS, "vram_pool_set(0)");
    CHECK_STATUS(vram_host_trim(0), VRAM_SUCCESS, "vram_host_trim(0)");
    CHECK_STATUS(vram_staging_set(&off), VRAM_SUCCESS, "vram_staging_set(off)");
    vram_host_stats hs = host_stats();
    CHECK(hs.live_count == 0 && hs.cached_bytes == 0 && hs.registered_count == 0 && hs.staging_bytes == 0,
          "pinned: %llu blocks live, %llu B cached, %llu ranges registered, %llu staging bytes",
          (unsigned long long)hs.live_count, (unsigned long long)hs.cached_bytes,
          (unsigned long long)hs.registered_count, (unsigned long long)hs.staging_bytes);
    check_nothing_live(&before, "async_streams");
    long queued = fake_count("fakecuda_queued");
    CHECK(queued <= 0, "the fake driver still has %ld operations queued", queued);
    long streams_after = fake_count("fakecuda_live_streams"), events_after = fake_count("fakecuda_live_events");
    /* The library keeps its fences (two events each) per device for reuse: at most as many as
     * were in flight at once, AS_COPIES a thread. */
    long event_bound = 2L * ax.devices * AS_COPIES * g_threads;
    CHECK(streams_after == streams, "%ld streams live after the test destroyed its own, %ld before",
          streams_after, streams);
    CHECK(events_after - events >= 0 && events_after - events <= event_bound && (events_after - events) % 2 == 0,
          "%ld events live after the test, %ld before: want at most %ld more (the fence cache)",
          events_after, events, event_bound);
    CHECK_STATUS(vram_staging_set(&saved), VRAM_SUCCESS, "vram_staging_set (restore)");
    for (int i = 0; i < g_threads; i++) pthread_mutex_destroy(&ax.boxes[i].lock);
    free(ax.boxes);

    printf("     %s; %llu async copies (%llu done at the call, %llu enqueued, %llu drained by frees), "
           "%ld stream-ordered buffers, %ld freed in stream order (%.2f s)\n",
           !ax.cuda ? "host backend" : ax.deferred ? "deferred driver" : "immediate driver",
           (unsigned long long)ok, (unsigned long long)immediate, (unsigned long long)enqueued,
           (unsigned long long)drained, atomic_load(&ax.ordered), atomic_load(&ax.freed_async), dt);
    printf("     endings:");
    for (int i = 0; i < AS_ENDINGS; i++) printf(" %s %ld,", as_ending_names[i], atomic_load(&ax.endings[i]));
    printf(" polls forced by a stream sync %ld; %ld shared sources freed by another thread (%ld "
           "before their owner waited); %ld rounds of refusals\n",
           atomic_load(&ax.forced_polls), atomic_load(&ax.shared), atomic_load(&ax.acked_first),
           atomic_load(&ax.refusals));
    if (events >= 0)
        printf("     driver: %ld streams, %ld events (fence cache: +%ld of at most %ld)\n",
               streams_after, events_after, events_after - events, event_bound);
    if (ax.cu.lib) dlclose(ax.cu.lib);
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

    /* Nothing held by the pool or as pinned memory either. */
    vram_pool_stats pool = pool_stats(-1);
    CHECK(pool.cached_bytes == 0 && pool.live_blocks == 0 && pool.enabled == 0,
          "pool: %llu B cached, %llu blocks out, %u on", (unsigned long long)pool.cached_bytes,
          (unsigned long long)pool.live_blocks, pool.enabled);
    CHECK_STATUS(vram_host_trim(0), VRAM_SUCCESS, "vram_host_trim(0)");
    vram_host_stats host = host_stats();
    CHECK(host.live_count == 0 && host.cached_bytes == 0 && host.registered_count == 0,
          "pinned: %llu blocks live, %llu B cached, %llu ranges registered",
          (unsigned long long)host.live_count, (unsigned long long)host.cached_bytes,
          (unsigned long long)host.registered_count);
    int devices = device_count();
    for (int d = 0; on_host_backend() && d < devices; d++) {
        size_t f = 0, t = 0;
        CHECK_STATUS(vram_set_device(d), VRAM_SUCCESS, "vram_set_device");
        CHECK_STATUS(vram_get_info(&f, &t), VRAM_SUCCESS, "vram_get_info");
        CHECK(f == t, "host backend: device %d free %zu of total %zu with nothing live", d, f, t);
    }
    CHECK_STATUS(vram_set_device(0), VRAM_SUCCESS, "vram_set_device(0)");
    vram_async_stats as = async_stats();
    CHECK(as.pending == 0 && as.failed_total == 0 && as.enqueued_total == as.completed_total,
          "async copies: %llu pending, %llu enqueued, %llu completed, %llu failed",
          (unsigned long long)as.pending, (unsigned long long)as.enqueued_total,
          (unsigned long long)as.completed_total, (unsigned long long)as.failed_total);
    /* Over the fake driver: it must hold no allocation either, nor work on a stream. */
    long n = fake_count("fakecuda_live_allocations"), queued = fake_count("fakecuda_queued");
    if (n >= 0) {
        CHECK(n == 0 && queued == 0, "the fake driver still holds %ld allocations, %ld operations "
              "queued", n, queued);
        printf("     fake driver: %ld live allocations, %ld operations queued\n", n, queued);
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
    seed_from_env();
    const char *timeout = getenv("VRAMOBS_STRESS_TIMEOUT");
    if (timeout && *timeout) g_timeout_s = (unsigned)strtoul(timeout, NULL, 10);
    const char *backend = getenv("VRAMOBS_TEST_BACKEND");
    if (backend && strcmp(backend, "cuda") == 0) {
        g_backend = "cuda";
        g_other_backend = "host";
    } else if (backend && *backend && strcmp(backend, "host") != 0) {
        fprintf(stderr, "VRAMOBS_TEST_BACKEND='%s': use 'host' or 'cuda'\n", backend);
        return 2;
    }
    /* Two devices for d2d_migrate, read by the backend at its first use. */
    set_default_env("VRAMOBS_HOST_DEVICES", "2");
    set_default_env("FAKECUDA_DEVICES", "2");
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
        run_test("pool_churn", test_pool_churn);
        run_test("pinned_churn", test_pinned_churn);
        if (on_host_backend() && selected("staged_copies")) /* host: copies direct, no staging */
            printf("     staged_copies: not run on the host backend, which does not stage "
                   "(VRAMOBS_TEST_BACKEND=cuda runs it)\n");
        else
            run_test("staged_copies", test_staged_copies);
        run_test("d2d_migrate", test_d2d_migrate);
        run_test("async_streams", test_async_streams);
        run_test("final_state", test_final_state);
    }
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
