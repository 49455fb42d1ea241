/*
 * soak.c - a bounded load-and-soak run of libvram_ops on the host backend, through the public
 * C API only. Plain C11 + pthreads; runs as built and under ASan+UBSan (native/sanitize.sh).
 *
 *     vram_soak [threads [operations]]        threads 1..1024 (default 16), operations in
 *                                             all (default 1,000,000), split over the threads
 *
 * Each thread draws operations from a weighted table (OPS below: one row per kind, so a new
 * operation of the library is one more row) with its own seeded generator, and checks every
 * return code against what the call must return: allocations into its own slots (fresh
 * random bytes written and read back), frees (the whole allocation checked against a shadow
 * copy first), sub-range round trips at interior pointers, copies one byte past the end (6,
 * nothing written), unknown, NULL, zero-length and wrapping arguments (5 or 2, with their
 * reason), interior and wrong-generation frees (7, 2), stale generations (0, nothing freed),
 * freed pointers (copies 5 freed_pointer, a second free 0 without a driver call), get_info,
 * device switches, and the wipe policy, global and per allocation.
 *
 * Two emulated devices of a small capacity (VRAMOBS_HOST_DEVICES, VRAMOBS_HOST_CAPACITY;
 * default 2 and 1 MiB, set here unless the caller set them) make out-of-memory frequent.
 * Every out-of-memory is checked to be real: the thread's own books show the device full at
 * some moment of the call (the reservation word below), the error is the backend's
 * out-of-memory and *ptr is NULL. Allocations larger than the device are injected
 * out-of-memory and must fail every time.
 *
 * Exclusive sections: the freed-pointer probes and the global wipe policy changes hold a gate
 * that every allocation holds shared, so no address freed by a probe is handed out again
 * before the probe ends, and every allocation knows the policy it was made under. Hence the
 * number of wipes is known exactly.
 *
 * At the end every allocation is freed and: live_count, live_bytes, the per-tag totals 0;
 * allocs_total == frees_total == the allocations made; repeated frees as counted here;
 * nothing lost or evicted; every device's free == total (its baseline); and, per operation,
 * calls, calls by status, refusals by reason and bytes equal to what the threads booked (the
 * soak is the library's only caller), with sum(by_status) == calls.
 *
 * The last line is one machine-readable summary: "SOAK ok key=value ..." (or "SOAK FAIL").
 * Exit status 0 when every check held, 1 otherwise, 3 when the watchdog fired.
 * Environment: VRAMOBS_TEST_SEED=<n> replays the operation sequence of each thread (not the
 * interleaving); VRAMOBS_SOAK_TIMEOUT (seconds, default 600) before the watchdog calls the
 * run hung.
 */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np: a writer-preferring gate */

#include <inttypes.h>
#include <pthread.h>
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

/* ---------------------------------------------------------------------------------------- */
/* Harness                                                                                   */
/* ---------------------------------------------------------------------------------------- */

#define MAX_REPORTED 25
#define HOST_ERROR_OUT_OF_MEMORY 2 /* backend_host.c's driver code, as vram_last_error has it */

static atomic_long g_failures;

static void failf(const char *file, int line, const char *fmt, ...) {
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

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void on_timeout(int sig) {
    (void)sig;
    static const char msg[] = "SOAK FAIL: still running after VRAMOBS_SOAK_TIMEOUT: hung?\n";
    ssize_t ignored = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    _exit(3);
}

/* xorshift64* (Vigna). */
typedef struct rng {
    uint64_t s;
} rng;

static uint64_t next(rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

static size_t below(rng *r, size_t n) { return (size_t)(next(r) % n); }

/* Fresh pseudo-random bytes, none zero, so that untouched (zeroed) memory never passes. */
static void fill(rng *r, unsigned char *p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = next(r) | 0x0101010101010101ull;
        memcpy(p + i, &v, 8);
    }
    uint64_t v = next(r) | 0x0101010101010101ull;
    if (i < n) memcpy(p + i, &v, n - i);
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration and shared state                                                            */
/* ---------------------------------------------------------------------------------------- */

#define SLOTS 8
#define MAX_ALLOC ((size_t)512 << 10)
#define STALE 16

static int g_threads = 16;
static long g_ops = 1000000;
static uint64_t g_seed;
static int g_devices;
static uint64_t g_capacity;

/* Where a new allocation could land only once nobody probes freed addresses or changes the
 * global wipe policy: allocations hold it shared, those two exclusive. */
static pthread_rwlock_t g_gate;

/* Per device, one word: the low 40 bits are the footprint of the allocations the threads hold
 * or are making (added before vram_malloc, removed after it fails or after vram_free returns,
 * so the library's own count of used bytes never exceeds it); the high 24 bits count the
 * additions that left it above the capacity. One word, so that an out-of-memory can be
 * checked against what happened during its call. */
#define RESERVED_MASK ((UINT64_C(1) << 40) - 1)
#define OVER_ONE (UINT64_C(1) << 40)
static _Atomic uint64_t g_reserved[VRAM_MAX_DEVICES];

static size_t footprint(size_t bytes) { /* the host backend's: whole 256-byte units */
    return (bytes + (VRAM_ALIGNMENT - 1)) & ~(size_t)(VRAM_ALIGNMENT - 1);
}

/* Add need to a device's reservation; true when the result is above the capacity. */
static bool reserve(int device, uint64_t need, uint64_t *word_after) {
    uint64_t old = atomic_load(&g_reserved[device]), word;
    bool over;
    do {
        uint64_t bytes = (old & RESERVED_MASK) + need;
        over = bytes > g_capacity;
        word = (old & ~RESERVED_MASK) + (over ? OVER_ONE : 0) + bytes;
    } while (!atomic_compare_exchange_weak(&g_reserved[device], &old, word));
    *word_after = word;
    return over;
}

static void unreserve(int device, uint64_t need) { atomic_fetch_sub(&g_reserved[device], need); }

/* Static memory no allocation can ever occupy: a pointer the registry never saw. */
static unsigned char g_not_device[4096];

/* ---------------------------------------------------------------------------------------- */
/* Per-thread state and books                                                                */
/* ---------------------------------------------------------------------------------------- */

/* What the library must have counted for the calls of one thread. */
typedef struct books {
    uint64_t calls[VRAM_OP_CAPACITY];
    uint64_t by_status[VRAM_OP_CAPACITY][VRAM_STATUS_CAPACITY];
    uint64_t refused[VRAM_OP_CAPACITY][VRAM_REASON_CAPACITY];
    uint64_t bytes_ok[VRAM_OP_CAPACITY];
    uint64_t allocs, frees, repeated_frees;
    uint64_t ooms_full, ooms_injected, refusals, verified_bytes;
} books;

typedef struct slot {
    unsigned char *p; /* NULL when empty */
    uint64_t generation; /* 0 when made by vram_malloc (freed by vram_free) */
    size_t size;
    int device;
    bool wipe;
    unsigned char *shadow; /* what the allocation must hold */
} slot;

typedef struct stale {
    void *p;
    uint64_t generation;
} stale;

typedef struct soak_thread {
    pthread_t thread;
    int index;
    long ops;
    rng r;
    int device;
    uint64_t last_generation;
    slot slots[SLOTS];
    stale stale[STALE];
    size_t stale_next;
    unsigned char *src, *dst;
    books b;
    uint64_t ran[32]; /* operations run, per row of OPS */
} soak_thread;

/* Book a call the library counts as operation op, as the library books it. */
static void book(soak_thread *t, vram_op op, int rc, size_t bytes) {
    t->b.calls[op]++;
    if (rc >= 0 && rc < VRAM_STATUS_CAPACITY) t->b.by_status[op][rc]++;
    if (rc == VRAM_SUCCESS) {
        t->b.bytes_ok[op] += bytes;
        return;
    }
    vram_error_info e;
    vram_last_error(&e);
    CHECK(e.status == rc && e.op == (int)op, "%s: last error status %d op %d, call returned %d",
          vram_op_name((int)op), e.status, e.op, rc);
    if (e.reason > 0 && e.reason < VRAM_REASON_CAPACITY) {
        t->b.refused[op][e.reason]++;
        t->b.refusals++;
    }
}

/* Check a call's code, and for a refusal its reason. */
static void expect(int rc, int want, int want_reason, const char *what) {
    CHECK(rc == want, "%s: got %d (%s), want %d (%s)", what, rc, vram_status_name(rc), want,
          vram_status_name(want));
    if (rc != VRAM_SUCCESS && want_reason >= 0) {
        vram_error_info e;
        vram_last_error(&e);
        CHECK(e.reason == want_reason, "%s: reason %s, want %s", what, vram_reason_name(e.reason),
              vram_reason_name(want_reason));
    }
}

/* The calls, booked. */
static int h2d(soak_thread *t, void *dst, const void *src, size_t n) {
    int rc = vram_memcpy_h2d(dst, src, n);
    book(t, VRAM_OP_MEMCPY_H2D, rc, n);
    return rc;
}

static int d2h(soak_thread *t, void *dst, const void *src, size_t n) {
    int rc = vram_memcpy_d2h(dst, src, n);
    book(t, VRAM_OP_MEMCPY_D2H, rc, n);
    return rc;
}

static int free_plain(soak_thread *t, void *p, size_t bytes_if_released) {
    int rc = vram_free(p);
    book(t, VRAM_OP_FREE, rc, bytes_if_released);
    return rc;
}

static int free_gen(soak_thread *t, void *p, uint64_t generation, size_t bytes_if_released) {
    int rc = vram_free_ex(p, generation);
    book(t, VRAM_OP_FREE, rc, bytes_if_released);
    return rc;
}

static slot *any_slot(soak_thread *t, bool occupied) {
    size_t start = below(&t->r, SLOTS);
    for (size_t i = 0; i < SLOTS; i++) {
        slot *s = &t->slots[(start + i) % SLOTS];
        if ((s->p != NULL) == occupied) return s;
    }
    return NULL;
}

static size_t random_size(rng *r) {
    size_t roll = below(r, 100);
    if (roll < 60) return 1 + below(r, 4096);
    if (roll < 97) return 4097 + below(r, 65536 - 4096);
    return 65537 + below(r, MAX_ALLOC - 65536);
}

/* The whole allocation must hold its shadow. */
static void verify(soak_thread *t, slot *s) {
    memset(t->dst, 0, s->size);
    int rc = d2h(t, t->dst, s->p, s->size);
    expect(rc, VRAM_SUCCESS, -1, "d2h of a whole live allocation");
    if (rc == VRAM_SUCCESS) {
        CHECK(memcmp(t->dst, s->shadow, s->size) == 0, "allocation %p (%zu B) changed behind its back",
              (void *)s->p, s->size);
        t->b.verified_bytes += s->size;
    }
}

/* Free slot s (already verified), by generation or plainly; books the wipe it implies. */
static void release(soak_thread *t, slot *s) {
    int rc = s->generation && below(&t->r, 4) != 0 ? free_gen(t, s->p, s->generation, s->size)
                                                   : free_plain(t, s->p, s->size);
    expect(rc, VRAM_SUCCESS, -1, "free of a live allocation");
    if (rc != VRAM_SUCCESS) return; /* left for the end-of-run checks to report */
    t->b.frees++;
    if (s->wipe) {
        t->b.calls[VRAM_OP_WIPE]++;
        t->b.by_status[VRAM_OP_WIPE][VRAM_SUCCESS]++;
        t->b.bytes_ok[VRAM_OP_WIPE] += s->size;
    }
    unreserve(s->device, footprint(s->size));
    if (s->generation) {
        t->stale[t->stale_next] = (stale){s->p, s->generation};
        t->stale_next = (t->stale_next + 1) % STALE;
    }
    s->p = NULL;
    s->size = 0;
    s->generation = 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The operations                                                                            */
/* ---------------------------------------------------------------------------------------- */

static void op_free(soak_thread *t);

/* An allocation into an empty slot (none empty: a free), written whole and read back. */
static void op_malloc(soak_thread *t) {
    slot *s = any_slot(t, false);
    if (!s) {
        op_free(t);
        return;
    }
    size_t size = random_size(&t->r);
    uint32_t tag = (uint32_t)below(&t->r, VRAM_MAX_TAGS);
    bool with_generation = below(&t->r, 4) != 0;
    uint64_t need = footprint(size), word = 0;
    void *p = (void *)&g_not_device; /* must be overwritten */
    uint64_t generation = 1;

    pthread_rwlock_rdlock(&g_gate);
    int policy = -1;
    expect(vram_get_wipe_policy(&policy), VRAM_SUCCESS, -1, "vram_get_wipe_policy");
    bool full_at_start = reserve(t->device, need, &word);
    uint64_t over_before = word & ~RESERVED_MASK;
    int rc = with_generation ? vram_malloc_ex(&p, size, tag, &generation) : vram_malloc(&p, size);
    pthread_rwlock_unlock(&g_gate);
    book(t, VRAM_OP_MALLOC, rc, size);

    if (rc == VRAM_ERR_ALLOCATION_FAILED) {
        uint64_t over_after = atomic_load(&g_reserved[t->device]) & ~RESERVED_MASK;
        unreserve(t->device, need);
        CHECK(full_at_start || over_after != over_before,
              "out of memory for %zu B on device %d, which was never full during the call", size,
              t->device);
        CHECK(p == NULL && (!with_generation || generation == 0),
              "a failed malloc left *ptr %p generation %" PRIu64, p, generation);
        vram_error_info e;
        vram_last_error(&e);
        CHECK(e.driver_error == HOST_ERROR_OUT_OF_MEMORY && e.reason == VRAM_REASON_NONE,
              "out of memory with driver error %d (%s), reason %s", e.driver_error,
              vram_driver_error_name(e.driver_error), vram_reason_name(e.reason));
        t->b.ooms_full++;
        return;
    }
    expect(rc, VRAM_SUCCESS, -1, "malloc");
    if (rc != VRAM_SUCCESS) {
        unreserve(t->device, need);
        return;
    }
    CHECK(p != NULL && p != (void *)&g_not_device, "malloc succeeded with pointer %p", p);
    if (with_generation) {
        CHECK(generation > t->last_generation, "generation %" PRIu64 " after %" PRIu64, generation,
              t->last_generation);
        t->last_generation = generation;
    }
    t->b.allocs++;
    *s = (slot){p, with_generation ? generation : 0, size, t->device, policy == VRAM_WIPE_ON_FREE,
                s->shadow};
    fill(&t->r, s->shadow, size);
    expect(h2d(t, p, s->shadow, size), VRAM_SUCCESS, -1, "h2d of a fresh allocation");
    verify(t, s);
}

/* More than the whole device: an injected out-of-memory, every time. */
static void op_malloc_oversize(soak_thread *t) {
    size_t size = below(&t->r, 2) ? (size_t)g_capacity + 1 + below(&t->r, 1 << 20)
                                   : SIZE_MAX - (VRAM_ALIGNMENT - 1); /* the largest accepted */
    void *p = (void *)&g_not_device;
    uint64_t generation = 1;
    int rc = vram_malloc_ex(&p, size, 1, &generation);
    book(t, VRAM_OP_MALLOC, rc, size);
    expect(rc, VRAM_ERR_ALLOCATION_FAILED, VRAM_REASON_NONE, "malloc larger than the device");
    CHECK(p == NULL && generation == 0, "a failed malloc left *ptr %p generation %" PRIu64, p,
          generation);
    t->b.ooms_injected++;
}

/* Arguments refused before the driver, each with its reason. */
static void op_malloc_invalid(soak_thread *t) {
    void *p = (void *)&g_not_device;
    uint64_t generation = 1;
    int rc;
    switch (below(&t->r, 4)) {
    case 0:
        rc = vram_malloc(NULL, 64);
        book(t, VRAM_OP_MALLOC, rc, 0);
        expect(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, "malloc(NULL)");
        return;
    case 1:
        rc = vram_malloc_ex(&p, 0, 0, &generation);
        book(t, VRAM_OP_MALLOC, rc, 0);
        expect(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE, "malloc of 0 bytes");
        break;
    case 2:
        rc = vram_malloc_ex(&p, SIZE_MAX - below(&t->r, VRAM_ALIGNMENT - 1), 0, &generation);
        book(t, VRAM_OP_MALLOC, rc, 0);
        expect(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_SIZE_OVERFLOW, "malloc that overflows");
        break;
    default:
        rc = vram_malloc_ex(&p, 64, VRAM_MAX_TAGS + (uint32_t)below(&t->r, 1000), &generation);
        book(t, VRAM_OP_MALLOC, rc, 0);
        expect(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_TAG, "malloc with a bad tag");
        break;
    }
    CHECK(p == NULL && generation == 0, "a refused malloc left *ptr %p generation %" PRIu64, p,
          generation);
}

static void op_free(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s) {
        op_malloc(t);
        return;
    }
    verify(t, s);
    release(t, s);
}

/* A generation freed already (its address possibly someone else's by now): 0, nothing freed. */
static void op_free_stale(soak_thread *t) {
    stale *st = &t->stale[below(&t->r, STALE)];
    if (!st->p) {
        op_free(t);
        return;
    }
    expect(free_gen(t, st->p, st->generation, 0), VRAM_SUCCESS, -1, "free_ex of a stale generation");
    t->b.repeated_frees++;
    int rc = vram_set_allocation_wipe(st->p, st->generation, VRAM_WIPE_ON_FREE);
    expect(rc, VRAM_ERR_UNKNOWN_POINTER, -1, "set_allocation_wipe of a stale generation");
}

/* Frees that must free nothing: interior, unknown, wrong or zero generation. */
static void op_free_refused(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s || s->size < 2) {
        expect(free_plain(t, g_not_device + 256 * below(&t->r, 16), 0), VRAM_ERR_UNKNOWN_POINTER,
               VRAM_REASON_UNKNOWN_POINTER, "free of a pointer never returned");
        return;
    }
    switch (below(&t->r, 4)) {
    case 0:
        expect(free_plain(t, s->p + 1 + below(&t->r, s->size - 1), 0), VRAM_ERR_INTERIOR_POINTER,
               VRAM_REASON_INTERIOR_POINTER, "free of an interior pointer");
        break;
    case 1:
        expect(free_gen(t, s->p, 0, 0), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_GENERATION,
               "free_ex with generation 0");
        break;
    case 2:
        expect(free_gen(t, s->p, UINT64_MAX - below(&t->r, 1000), 0), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_INVALID_GENERATION, "free_ex of a generation never handed out");
        break;
    default: {
        /* Another live allocation's generation, at this one's address. */
        const slot *other = NULL;
        for (int i = 0; i < SLOTS && !other; i++)
            if (&t->slots[i] != s && t->slots[i].p && t->slots[i].generation) other = &t->slots[i];
        if (!other) {
            expect(free_plain(t, g_not_device, 0), VRAM_ERR_UNKNOWN_POINTER,
                   VRAM_REASON_UNKNOWN_POINTER, "free of a pointer never returned");
            break;
        }
        expect(free_gen(t, s->p, other->generation, 0), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_INVALID_GENERATION, "free_ex of another allocation's generation");
        break;
    }
    }
}

/* A random sub-range, at an interior pointer, written with fresh bytes and read back. */
static void op_round_trip(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s) {
        op_malloc(t);
        return;
    }
    size_t off = below(&t->r, s->size);
    size_t room = s->size - off;
    size_t len = 1 + below(&t->r, below(&t->r, 8) ? (room < 4096 ? room : 4096) : room);
    fill(&t->r, t->src, len);
    int rc = h2d(t, s->p + off, t->src, len);
    expect(rc, VRAM_SUCCESS, -1, "h2d of a sub-range");
    if (rc == VRAM_SUCCESS) memcpy(s->shadow + off, t->src, len);
    memset(t->dst, 0, len);
    rc = d2h(t, t->dst, s->p + off, len);
    expect(rc, VRAM_SUCCESS, -1, "d2h of a sub-range");
    CHECK(rc != VRAM_SUCCESS || memcmp(t->dst, s->shadow + off, len) == 0,
          "sub-range [%zu, +%zu) of %p read back wrong", off, len, (void *)s->p);
    t->b.verified_bytes += len;
}

/* One byte (or more) past the end: 6, and nothing written (the shadow checks it later). */
static void op_copy_out_of_bounds(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s) {
        op_malloc(t);
        return;
    }
    size_t off = below(&t->r, s->size);
    size_t len = s->size - off + 1 + below(&t->r, 64);
    fill(&t->r, t->src, len);
    expect(h2d(t, s->p + off, t->src, len), VRAM_ERR_OUT_OF_BOUNDS, VRAM_REASON_OUT_OF_BOUNDS,
           "h2d past the end");
    memset(t->dst, 0, len);
    expect(d2h(t, t->dst, s->p + off, len), VRAM_ERR_OUT_OF_BOUNDS, VRAM_REASON_OUT_OF_BOUNDS,
           "d2h past the end");
    unsigned char zero[64] = {0};
    CHECK(memcmp(t->dst, zero, len < sizeof zero ? len : sizeof zero) == 0,
          "a refused d2h wrote into host memory");
}

/* Copies refused before the registry or by it: unknown, NULL, zero length, wrapping ranges. */
static void op_copy_refused(soak_thread *t) {
    slot *s = any_slot(t, true);
    unsigned char *live = s ? s->p : NULL;
    size_t n = 1 + below(&t->r, 256);
    bool to_device = below(&t->r, 2);
    int (*copy)(soak_thread *, void *, const void *, size_t) = to_device ? h2d : d2h;
    switch (below(&t->r, 5)) {
    case 0: /* a device pointer the registry never saw */
        if (to_device)
            expect(h2d(t, g_not_device, t->src, n), VRAM_ERR_UNKNOWN_POINTER,
                   VRAM_REASON_UNKNOWN_POINTER, "h2d to an unknown pointer");
        else
            expect(d2h(t, t->dst, g_not_device, n), VRAM_ERR_UNKNOWN_POINTER,
                   VRAM_REASON_UNKNOWN_POINTER, "d2h from an unknown pointer");
        break;
    case 1:
        expect(copy(t, NULL, t->src, n), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER,
               "copy with a NULL destination");
        break;
    case 2:
        expect(copy(t, t->dst, NULL, n), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER,
               "copy with a NULL source");
        break;
    case 3:
        if (to_device)
            expect(h2d(t, live ? live : g_not_device, t->src, 0), VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_ZERO_SIZE, "h2d of 0 bytes");
        else
            expect(d2h(t, t->dst, live ? live : g_not_device, 0), VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_ZERO_SIZE, "d2h of 0 bytes");
        break;
    default: { /* a range that wraps the address space, on the device side or the host side */
        void *high = (void *)(UINTPTR_MAX - below(&t->r, 64));
        void *device = below(&t->r, 2) || !live ? high : live;
        void *hostp = device == high ? t->src : high;
        if (to_device)
            expect(h2d(t, device, hostp, 64 + n), VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_RANGE_WRAP, "h2d of a wrapping range");
        else
            expect(d2h(t, hostp, device, 64 + n), VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_RANGE_WRAP, "d2h of a wrapping range");
        break;
    }
    }
}

/* A free, then the freed pointer, while no allocation can take its address: copies at its
 * start 5 freed_pointer, inside it 5, a second free 0 without freeing anything. */
static void op_freed_probe(soak_thread *t) {
    pthread_rwlock_wrlock(&g_gate);
    slot *s = any_slot(t, true);
    if (!s) {
        pthread_rwlock_unlock(&g_gate);
        op_malloc(t);
        return;
    }
    unsigned char *p = s->p;
    size_t size = s->size;
    uint64_t generation = s->generation;
    verify(t, s);
    release(t, s);
    size_t n = 1 + below(&t->r, size);
    expect(h2d(t, p, t->src, n), VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_FREED_POINTER,
           "h2d to a freed pointer");
    expect(d2h(t, t->dst, p, n), VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_FREED_POINTER,
           "d2h from a freed pointer");
    if (size > 1) { /* freed_pointer where an older allocation started and was freed */
        expect(d2h(t, t->dst, p + 1 + below(&t->r, size - 1), 1), VRAM_ERR_UNKNOWN_POINTER, -1,
               "d2h from inside a freed allocation");
        vram_error_info e;
        vram_last_error(&e);
        CHECK(e.reason == VRAM_REASON_UNKNOWN_POINTER || e.reason == VRAM_REASON_FREED_POINTER,
              "d2h from inside a freed allocation: reason %s", vram_reason_name(e.reason));
    }
    expect(free_plain(t, p, 0), VRAM_SUCCESS, -1, "second free of a freed pointer");
    t->b.repeated_frees++;
    if (generation) {
        expect(free_gen(t, p, generation, 0), VRAM_SUCCESS, -1, "free_ex of a freed generation");
        t->b.repeated_frees++;
    }
    pthread_rwlock_unlock(&g_gate);
}

static void op_get_info(soak_thread *t) {
    size_t f = 1, total = 1;
    int rc;
    if (below(&t->r, 8) == 0) {
        bool null_free = below(&t->r, 2);
        rc = vram_get_info(null_free ? NULL : &f, null_free ? &total : NULL);
        book(t, VRAM_OP_GET_INFO, rc, 0);
        expect(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, "get_info with NULL");
        CHECK((null_free ? total : f) == 0, "get_info with NULL left the other output set");
        return;
    }
    rc = vram_get_info(&f, &total);
    book(t, VRAM_OP_GET_INFO, rc, 0);
    expect(rc, VRAM_SUCCESS, -1, "get_info");
    CHECK(total == g_capacity && f <= total,
          "get_info on device %d: free %zu total %zu", t->device, f, total);
}

static void op_set_device(soak_thread *t) {
    if (below(&t->r, 4) == 0) {
        int bad = below(&t->r, 2) ? -1 - (int)below(&t->r, 100) : g_devices + (int)below(&t->r, 100);
        expect(vram_set_device(bad), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE,
               "set_device of a device that does not exist");
    } else {
        int d = (int)below(&t->r, (size_t)g_devices);
        expect(vram_set_device(d), VRAM_SUCCESS, -1, "set_device");
        t->device = d;
    }
    int got = -1;
    expect(vram_get_device(&got), VRAM_SUCCESS, -1, "get_device");
    CHECK(got == t->device, "get_device %d, set %d", got, t->device);
}

/* The global policy changes only while no allocation is being made (see the gate). */
static void op_wipe_policy(soak_thread *t) {
    int policy = (int)below(&t->r, 2), got = -1;
    pthread_rwlock_wrlock(&g_gate);
    expect(vram_set_wipe_policy(policy), VRAM_SUCCESS, -1, "set_wipe_policy");
    expect(vram_get_wipe_policy(&got), VRAM_SUCCESS, -1, "get_wipe_policy");
    pthread_rwlock_unlock(&g_gate);
    CHECK(got == policy, "wipe policy %d after setting %d", got, policy);
    expect(vram_set_wipe_policy(2 + (int)below(&t->r, 100)), VRAM_ERR_INVALID_PARAMETERS, -1,
           "set_wipe_policy of an unknown policy");
}

static void op_allocation_wipe(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s || !s->generation) {
        op_malloc(t);
        return;
    }
    bool wipe = below(&t->r, 2);
    expect(vram_set_allocation_wipe(s->p, s->generation, wipe ? VRAM_WIPE_ON_FREE : VRAM_WIPE_OFF),
           VRAM_SUCCESS, -1, "set_allocation_wipe");
    s->wipe = wipe;
    if (s->size > 1)
        expect(vram_set_allocation_wipe(s->p + 1, s->generation, VRAM_WIPE_ON_FREE),
               VRAM_ERR_UNKNOWN_POINTER, -1, "set_allocation_wipe at an interior pointer");
}

/* The mix. A new operation of the library is one more row (and its function above). */
typedef struct op_kind {
    const char *name;
    unsigned weight;
    void (*run)(soak_thread *t);
} op_kind;

static const op_kind OPS[] = {
    {"malloc", 16, op_malloc},
    {"malloc_oversize", 1, op_malloc_oversize},
    {"malloc_invalid", 1, op_malloc_invalid},
    {"free", 12, op_free},
    {"free_stale", 2, op_free_stale},
    {"free_refused", 3, op_free_refused},
    {"round_trip", 40, op_round_trip},
    {"copy_out_of_bounds", 4, op_copy_out_of_bounds},
    {"copy_refused", 4, op_copy_refused},
    {"freed_probe", 2, op_freed_probe},
    {"get_info", 8, op_get_info},
    {"set_device", 3, op_set_device},
    {"wipe_policy", 1, op_wipe_policy},
    {"allocation_wipe", 3, op_allocation_wipe},
};
#define OP_KINDS (sizeof OPS / sizeof OPS[0])
_Static_assert(OP_KINDS <= 32, "soak_thread.ran has room for 32 kinds");

static unsigned g_weight_total;

static const op_kind *draw(soak_thread *t) {
    unsigned roll = (unsigned)below(&t->r, g_weight_total);
    for (size_t i = 0; i < OP_KINDS; i++) {
        if (roll < OPS[i].weight) {
            t->ran[i]++;
            return &OPS[i];
        }
        roll -= OPS[i].weight;
    }
    t->ran[OP_KINDS - 1]++;
    return &OPS[OP_KINDS - 1];
}

static void *soak_main(void *arg) {
    soak_thread *t = arg;
    expect(vram_set_device(t->device), VRAM_SUCCESS, -1, "set_device");
    for (long i = 0; i < t->ops; i++) draw(t)->run(t);
    for (int i = 0; i < SLOTS; i++) /* leave nothing behind */
        if (t->slots[i].p) {
            verify(t, &t->slots[i]);
            release(t, &t->slots[i]);
        }
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* The end: the library's books against the threads'                                         */
/* ---------------------------------------------------------------------------------------- */

static void add_books(books *to, const books *from) {
    const uint64_t *a = (const uint64_t *)from;
    uint64_t *b = (uint64_t *)to;
    for (size_t i = 0; i < sizeof *to / sizeof(uint64_t); i++) b[i] += a[i];
}
_Static_assert(sizeof(books) % sizeof(uint64_t) == 0, "books must be flat");

static void check_op_stats(const books *want) {
    vram_stats st;
    expect(vram_stats_get(-1, &st, sizeof st), VRAM_SUCCESS, -1, "vram_stats_get");
    for (int op = 0; op < VRAM_OP_COUNT_; op++) {
        const vram_op_stats *s = &st.ops[op];
        const char *name = vram_op_name(op);
        uint64_t by_status = 0, latency = 0;
        for (int k = 0; k < VRAM_STATUS_CAPACITY; k++) {
            by_status += s->by_status[k];
            CHECK(s->by_status[k] == want->by_status[op][k], "%s: %" PRIu64 " calls with %s, booked %" PRIu64,
                  name, s->by_status[k], vram_status_name(k), want->by_status[op][k]);
        }
        for (int k = 0; k < VRAM_REASON_CAPACITY; k++)
            CHECK(s->refused_by_reason[k] == want->refused[op][k],
                  "%s: %" PRIu64 " refused as %s, booked %" PRIu64, name, s->refused_by_reason[k],
                  vram_reason_name(k), want->refused[op][k]);
        for (int k = 0; k < VRAM_LATENCY_BUCKETS; k++) latency += s->latency_ok[k] + s->latency_error[k];
        CHECK(s->calls == want->calls[op] && by_status == s->calls && latency == s->calls,
              "%s: %" PRIu64 " calls (booked %" PRIu64 "), %" PRIu64 " by status, %" PRIu64 " timed",
              name, s->calls, want->calls[op], by_status, latency);
        CHECK(s->bytes_ok == want->bytes_ok[op], "%s: bytes_ok %" PRIu64 ", booked %" PRIu64, name,
              s->bytes_ok, want->bytes_ok[op]);
    }
}

/* Registry and devices back at the baseline; returns the bytes still held. */
static uint64_t check_registry(const books *want, const size_t *baseline, size_t *free_after) {
    vram_registry_stats s;
    expect(vram_registry_stats_get(-1, &s, sizeof s), VRAM_SUCCESS, -1, "vram_registry_stats_get");
    CHECK(s.live_count == 0 && s.live_bytes == 0 && s.live_rounded_bytes == 0 && s.oldest_alloc_ns == 0,
          "at the end: live_count %" PRIu64 " live_bytes %" PRIu64 " rounded %" PRIu64, s.live_count,
          s.live_bytes, s.live_rounded_bytes);
    for (int tag = 0; tag < VRAM_MAX_TAGS; tag++)
        CHECK(s.tag_live_count[tag] == 0 && s.tag_live_bytes[tag] == 0, "tag %d holds %" PRIu64 " B",
              tag, s.tag_live_bytes[tag]);
    CHECK(s.allocs_total == want->allocs && s.frees_total == want->frees &&
              s.allocs_total - s.frees_total == 0,
          "allocs_total %" PRIu64 " (made %" PRIu64 "), frees_total %" PRIu64 " (freed %" PRIu64 ")",
          s.allocs_total, want->allocs, s.frees_total, want->frees);
    CHECK(s.repeated_frees_total == want->repeated_frees,
          "repeated_frees_total %" PRIu64 ", booked %" PRIu64, s.repeated_frees_total,
          want->repeated_frees);
    CHECK(s.lost_total == 0 && s.stale_evicted_total == 0, "lost %" PRIu64 ", stale evicted %" PRIu64,
          s.lost_total, s.stale_evicted_total);
    size_t count = 1;
    expect(vram_registry_list(-1, NULL, 0, &count), VRAM_SUCCESS, -1, "vram_registry_list");
    CHECK(count == 0, "vram_registry_list counts %zu live", count);
    uint64_t held = s.live_bytes;
    for (int d = 0; d < g_devices; d++) {
        size_t total = 0;
        expect(vram_set_device(d), VRAM_SUCCESS, -1, "set_device");
        expect(vram_get_info(&free_after[d], &total), VRAM_SUCCESS, -1, "get_info at the end");
        CHECK(free_after[d] == baseline[d] && free_after[d] == total,
              "device %d: free %zu at the end, %zu before, total %zu", d, free_after[d], baseline[d], total);
        held += total - free_after[d];
        CHECK((atomic_load(&g_reserved[d]) & RESERVED_MASK) == 0, "device %d: reservation left", d);
    }
    return held;
}

/* ---------------------------------------------------------------------------------------- */

static void set_default_env(const char *name, const char *value) {
    const char *v = getenv(name);
    if (!v || !*v) setenv(name, value, 1);
}

int main(int argc, char **argv) {
    if (argc > 1) g_threads = atoi(argv[1]);
    if (argc > 2) g_ops = atol(argv[2]);
    if (argc > 3 || g_threads < 1 || g_threads > 1024 || g_ops < 1) {
        fprintf(stderr, "usage: %s [threads 1..1024 [operations >= 1]]\n", argv[0]);
        return 2;
    }
    const char *seed = getenv("VRAMOBS_TEST_SEED");
    g_seed = seed && *seed ? strtoull(seed, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    const char *timeout = getenv("VRAMOBS_SOAK_TIMEOUT");
    unsigned timeout_s = timeout && *timeout ? (unsigned)strtoul(timeout, NULL, 10) : 600;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_timeout;
    sigaction(SIGALRM, &sa, NULL);
    alarm(timeout_s);

    /* Read by the library at its first use of the host backend. */
    set_default_env("VRAMOBS_HOST_DEVICES", "2");
    set_default_env("VRAMOBS_HOST_CAPACITY", "1048576");
    expect(vram_select_backend("host"), VRAM_SUCCESS, -1, "vram_select_backend(\"host\")");
    expect(vram_device_count(&g_devices), VRAM_SUCCESS, -1, "vram_device_count");
    if (atomic_load(&g_failures) || g_devices < 1 || g_devices > VRAM_MAX_DEVICES) {
        printf("SOAK FAIL: no host backend (%s)\n", vram_backend_diagnostic());
        return 1;
    }
    soak_thread probe; /* books the main thread's calls */
    memset(&probe, 0, sizeof probe);
    size_t baseline[VRAM_MAX_DEVICES] = {0}, free_after[VRAM_MAX_DEVICES] = {0};
    for (int d = 0; d < g_devices; d++) {
        size_t total = 0;
        expect(vram_set_device(d), VRAM_SUCCESS, -1, "set_device");
        int rc = vram_get_info(&baseline[d], &total);
        book(&probe, VRAM_OP_GET_INFO, rc, 0);
        expect(rc, VRAM_SUCCESS, -1, "get_info before the run");
        CHECK(baseline[d] == total, "device %d: free %zu of %zu before the run", d, baseline[d], total);
        g_capacity = total;
    }
    for (size_t i = 0; i < OP_KINDS; i++) g_weight_total += OPS[i].weight;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&g_gate, &attr);
    pthread_rwlockattr_destroy(&attr);

    printf("vram_soak: host backend, %d devices of %" PRIu64 " B, %d threads, %ld operations, "
           "VRAMOBS_TEST_SEED=%" PRIu64 ", library %s\n",
           g_devices, g_capacity, g_threads, g_ops, g_seed, vram_version_string());
    fflush(stdout);

    soak_thread *threads = calloc((size_t)g_threads, sizeof *threads);
    bool ok = threads != NULL;
    for (int i = 0; ok && i < g_threads; i++) {
        soak_thread *t = &threads[i];
        t->index = i;
        t->ops = g_ops / g_threads + (i < g_ops % g_threads ? 1 : 0);
        t->r.s = (g_seed ^ ((uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull)) | 1;
        t->device = i % g_devices;
        t->src = malloc(MAX_ALLOC + 64);
        t->dst = malloc(MAX_ALLOC + 64);
        ok = t->src && t->dst;
        for (int k = 0; ok && k < SLOTS; k++) ok = (t->slots[k].shadow = malloc(MAX_ALLOC)) != NULL;
    }
    if (!ok) {
        printf("SOAK FAIL: out of host memory\n");
        return 1;
    }
    double t0 = now_s();
    int started = 0;
    for (; started < g_threads; started++)
        if (pthread_create(&threads[started].thread, NULL, soak_main, &threads[started]) != 0) {
            CHECK(0, "pthread_create failed at thread %d", started);
            break;
        }
    for (int i = 0; i < started; i++) pthread_join(threads[i].thread, NULL);
    double seconds = now_s() - t0;

    books all = probe.b;
    uint64_t ran[32] = {0};
    long ops_run = 0;
    for (int i = 0; i < started; i++) {
        add_books(&all, &threads[i].b);
        for (size_t k = 0; k < OP_KINDS; k++) {
            ran[k] += threads[i].ran[k];
            ops_run += (long)threads[i].ran[k];
        }
    }
    CHECK(ops_run == g_ops, "%ld operations ran, %ld asked", ops_run, g_ops);
    for (int d = 0; d < g_devices; d++) { /* counted like the threads' calls */
        all.calls[VRAM_OP_GET_INFO]++;
        all.by_status[VRAM_OP_GET_INFO][VRAM_SUCCESS]++;
    }
    uint64_t held = check_registry(&all, baseline, free_after);
    check_op_stats(&all);
    if (g_ops >= 100000 && g_threads >= 8) { /* a run this long must have met each case */
        CHECK(all.ooms_full > 0 && all.ooms_injected > 0,
              "no out-of-memory: %" PRIu64 " full, %" PRIu64 " injected", all.ooms_full,
              all.ooms_injected);
        CHECK(all.calls[VRAM_OP_WIPE] > 0, "no allocation was wiped");
    }

    printf("%-20s %10s\n", "operation", "ran");
    for (size_t k = 0; k < OP_KINDS; k++) printf("%-20s %10" PRIu64 "\n", OPS[k].name, ran[k]);
    uint64_t api_calls = 0;
    for (int op = 0; op < VRAM_OP_COUNT_; op++) api_calls += all.calls[op];
    uint64_t before = 0, after = 0;
    for (int d = 0; d < g_devices; d++) {
        before += baseline[d];
        after += free_after[d];
    }
    long failures = atomic_load(&g_failures);
    printf("SOAK %s threads=%d ops=%ld calls=%" PRIu64 " seconds=%.2f ops_per_s=%.0f allocs=%" PRIu64
           " ooms=%" PRIu64 " injected_ooms=%" PRIu64 " refusals=%" PRIu64 " wipes=%" PRIu64
           " verified_bytes=%" PRIu64 " leaked_bytes=%" PRIu64 " free_before=%" PRIu64
           " free_after=%" PRIu64 " failed_checks=%ld\n",
           failures ? "FAIL" : "ok", g_threads, ops_run, api_calls, seconds,
           seconds > 0 ? (double)ops_run / seconds : 0.0, all.allocs, all.ooms_full,
           all.ooms_injected, all.refusals, all.calls[VRAM_OP_WIPE], all.verified_bytes, held,
           before, after, failures);
    for (int i = 0; i < g_threads; i++) {
        free(threads[i].src);
        free(threads[i].dst);
        for (int k = 0; k < SLOTS; k++) free(threads[i].slots[k].shadow);
    }
    free(threads);
    pthread_rwlock_destroy(&g_gate);
    return failures ? 1 : 0;
}
