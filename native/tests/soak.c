/*
 * soak.c - a bounded load-and-soak run of libvram_ops on the host backend, through the public
 * C API only. Plain C11 + pthreads; runs as built and under ASan+UBSan and TSan
 * (native/sanitize.sh).
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
 * device switches, and the wipe policy, global and per allocation; d2d copies between its
 * own allocations (within one, across devices; overlapping and out-of-bounds ones refused),
 * migrations to another device (or its own: unchanged) with their refusals, batches (some
 * refused, some failing part-way on an element larger than the device), pinned blocks
 * (clean when handed out) and registered ranges as the host side of copies, and pool trims
 * and bound changes. A migration is counted as the library counts it: the new allocation's
 * malloc, the copy under its path (p2p, or staged with VRAMOBS_HOST_PEER=0), the free of the
 * source (and its wipe), the migration.
 *
 * The pool is on for the last device, caching at most POOL_BOUND: its allocations reserve the
 * pool's block size, and its cache may hold that much more than the reservations (g_slack).
 *
 * Two emulated devices of a small capacity (VRAMOBS_HOST_DEVICES, VRAMOBS_HOST_CAPACITY;
 * default 2 and 1 MiB, set here unless the caller set them) make out-of-memory frequent.
 * Every out-of-memory is checked to be real: the thread's own books show the device full at
 * some moment of the call (the reservation word below), the error is the backend's
 * out-of-memory and *ptr is NULL. Allocations larger than the device are injected
 * out-of-memory and must fail every time.
 *
 * Exclusive sections: the freed-pointer probes, the global wipe policy changes, the batches
 * and the pool operations hold a gate that every allocation and free holds shared, so no
 * address freed by a probe is handed out again before the probe ends, every allocation knows
 * the policy it was made under (hence the number of wipes is known exactly), a batch sized to
 * the room the books leave can fail only where it was made to, and a trim releases exactly
 * what the pool's stats said it cached.
 *
 * At the end every allocation is freed, the pool trimmed (counted) and turned off, pinned
 * blocks trimmed: nothing cached, handed out or registered; live_count, live_bytes, the per-tag totals 0;
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
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "vram_ops.h"

#define HOST_ERROR_OUT_OF_MEMORY 2 /* backend_host.c's driver code, as vram_last_error has it */

static void on_timeout(int sig) {
    (void)sig;
    write_str("SOAK FAIL: still running after VRAMOBS_SOAK_TIMEOUT: hung?\n");
    _exit(3);
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration and shared state                                                            */
/* ---------------------------------------------------------------------------------------- */

#define SLOTS 8
#define MAX_ALLOC ((size_t)512 << 10)
#define STALE 16

static int g_threads = 16;
static long g_ops = 1000000;
static int g_devices;
static uint64_t g_capacity;

/* Where a new allocation could land only once nobody probes freed addresses or changes the
 * global wipe policy, and where the pool's cache changes only while no pool operation or batch
 * runs: allocations and frees hold it shared, those exclusive. */
static pthread_rwlock_t g_gate;

/* The pool is on for the last device, caching at most POOL_BOUND: that much device memory may
 * be held by no allocation of the threads (g_slack), and its allocations take the pool's block
 * sizes. op_pool trims it and turns it off and on. */
#define POOL_BOUND ((uint64_t)128 << 10)
static int g_pool_device;
static uint64_t g_slack[VRAM_MAX_DEVICES];
/* The operation that counts a copy between two devices (vram_copy_path_get). */
static vram_op g_path_op[VRAM_MAX_DEVICES][VRAM_MAX_DEVICES];

/* Per device, one word: the low 40 bits are the footprint of the allocations the threads hold
 * or are making (added before vram_malloc, removed after it fails or after vram_free returns,
 * so the library's own count of used bytes never exceeds it plus g_slack); the high 24 bits
 * count the additions that left it above the capacity less the slack. One word, so that an
 * out-of-memory can be checked against what happened during its call. */
#define RESERVED_MASK ((UINT64_C(1) << 40) - 1)
#define OVER_ONE (UINT64_C(1) << 40)
static _Atomic uint64_t g_reserved[VRAM_MAX_DEVICES];

static size_t footprint(size_t bytes) { /* the host backend's: whole 256-byte units */
    return (bytes + (VRAM_ALIGNMENT - 1)) & ~(size_t)(VRAM_ALIGNMENT - 1);
}

/* The pool's block for a request, as vram_ops.h gives its classes: up to 1 MiB, four per power
 * of two, 256 B-granular; above, whole 2 MiB pages. */
static size_t pool_class(size_t bytes) {
    if (bytes <= 1024) return footprint(bytes);
    if (bytes > ((size_t)1 << 20)) return (bytes + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
    size_t base = 1024;
    while (base * 2 < bytes) base *= 2; /* base < bytes <= 2 base */
    size_t step = base / 4;
    return base + (bytes - base + step - 1) / step * step;
}

/* What an allocation of bytes may take on a device: a pool block where the pool may be on. */
static uint64_t reservation(int device, size_t bytes) {
    return device == g_pool_device ? pool_class(bytes) : footprint(bytes);
}

/* Add need to a device's reservation; true when the result is above the capacity. */
static bool reserve(int device, uint64_t need, uint64_t *word_after) {
    uint64_t old = atomic_load(&g_reserved[device]), word;
    bool over;
    do {
        uint64_t bytes = (old & RESERVED_MASK) + need;
        over = bytes > g_capacity - g_slack[device];
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
    uint64_t reserved; /* its part of g_reserved[device] */
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
    uint64_t pool_trims, batches, migrations, host_blocks, d2d_copies;
} soak_thread;

/* Book a call the library counts as operation op, with its outcome. */
static void book_as(soak_thread *t, vram_op op, int rc, size_t bytes, int reason) {
    t->b.calls[op]++;
    if (rc >= 0 && rc < VRAM_STATUS_CAPACITY) t->b.by_status[op][rc]++;
    if (rc == VRAM_SUCCESS) t->b.bytes_ok[op] += bytes;
    if (rc != VRAM_SUCCESS && reason > 0 && reason < VRAM_REASON_CAPACITY) {
        t->b.refused[op][reason]++;
        t->b.refusals++;
    }
}

/* Book the call just made, which the library counts as op: a failure's reason is in the
 * thread's last error. */
static void book(soak_thread *t, vram_op op, int rc, size_t bytes) {
    vram_error_info e = {0, 0, 0, 0};
    if (rc != VRAM_SUCCESS) {
        vram_last_error(&e);
        CHECK(e.status == rc && e.op == (int)op, "%s: last error status %d op %d, call returned %d",
              vram_op_name((int)op), e.status, e.op, rc);
    }
    book_as(t, op, rc, bytes, e.reason);
}

/* A free that released an allocation of size bytes: the wipe it implies. */
static void book_wipe(soak_thread *t, bool wipe, size_t size) {
    if (wipe) book_as(t, VRAM_OP_WIPE, VRAM_SUCCESS, size, 0);
}

/* An out-of-memory of the backend must be real: the device was full (the thread's books say)
 * at some moment of the call. */
static void check_oom(soak_thread *t, int device, bool full_at_start, uint64_t over_before,
                      size_t size, const char *what) {
    uint64_t over_after = atomic_load(&g_reserved[device]) & ~RESERVED_MASK;
    CHECK(full_at_start || over_after != over_before,
          "%s: out of memory for %zu B on device %d, which was never full during the call", what,
          size, device);
    vram_error_info e;
    vram_last_error(&e);
    CHECK(e.driver_error == HOST_ERROR_OUT_OF_MEMORY && e.reason == VRAM_REASON_NONE,
          "%s: out of memory with driver error %d (%s), reason %s", what, e.driver_error,
          vram_driver_error_name(e.driver_error), vram_reason_name(e.reason));
    t->b.ooms_full++;
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
    EXPECT(rc, VRAM_SUCCESS, -1, "d2h of a whole live allocation");
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
    EXPECT(rc, VRAM_SUCCESS, -1, "free of a live allocation");
    if (rc != VRAM_SUCCESS) return; /* left for the end-of-run checks to report */
    t->b.frees++;
    book_wipe(t, s->wipe, s->size);
    unreserve(s->device, s->reserved);
    if (s->generation) {
        t->stale[t->stale_next] = (stale){s->p, s->generation};
        t->stale_next = (t->stale_next + 1) % STALE;
    }
    s->p = NULL;
    s->size = 0;
    s->generation = 0;
}

/* release(), holding the gate shared (outside an exclusive section). */
static void release_shared(soak_thread *t, slot *s) {
    pthread_rwlock_rdlock(&g_gate);
    release(t, s);
    pthread_rwlock_unlock(&g_gate);
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
    uint64_t need = reservation(t->device, size), word = 0;
    void *p = (void *)&g_not_device; /* must be overwritten */
    uint64_t generation = 1;

    pthread_rwlock_rdlock(&g_gate);
    int policy = -1;
    EXPECT(vram_get_wipe_policy(&policy), VRAM_SUCCESS, -1, "vram_get_wipe_policy");
    bool full_at_start = reserve(t->device, need, &word);
    uint64_t over_before = word & ~RESERVED_MASK;
    int rc = with_generation ? vram_malloc_ex(&p, size, tag, &generation) : vram_malloc(&p, size);
    pthread_rwlock_unlock(&g_gate);
    book(t, VRAM_OP_MALLOC, rc, size);

    if (rc == VRAM_ERR_ALLOCATION_FAILED) {
        check_oom(t, t->device, full_at_start, over_before, size, "malloc");
        unreserve(t->device, need);
        CHECK(p == NULL && (!with_generation || generation == 0),
              "a failed malloc left *ptr %p generation %" PRIu64, p, generation);
        return;
    }
    EXPECT(rc, VRAM_SUCCESS, -1, "malloc");
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
    *s = (slot){p, with_generation ? generation : 0, size, need, t->device,
                policy == VRAM_WIPE_ON_FREE, s->shadow};
    fill(&t->r, s->shadow, size);
    EXPECT(h2d(t, p, s->shadow, size), VRAM_SUCCESS, -1, "h2d of a fresh allocation");
    verify(t, s);
}

/* More than the whole device: an injected out-of-memory, every time. */
static void op_malloc_oversize(soak_thread *t) {
    size_t size = below(&t->r, 2) ? (size_t)g_capacity + 1 + below(&t->r, 1 << 20)
                                   : SIZE_MAX - (VRAM_ALIGNMENT - 1); /* the largest accepted */
    void *p = (void *)&g_not_device;
    uint64_t generation = 1;
    pthread_rwlock_rdlock(&g_gate); /* on the pool's device its out-of-memory empties the cache */
    int rc = vram_malloc_ex(&p, size, 1, &generation);
    pthread_rwlock_unlock(&g_gate);
    book(t, VRAM_OP_MALLOC, rc, size);
    EXPECT(rc, VRAM_ERR_ALLOCATION_FAILED, VRAM_REASON_NONE, "malloc larger than the device");
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
        EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, "malloc(NULL)");
        return;
    case 1:
        rc = vram_malloc_ex(&p, 0, 0, &generation);
        book(t, VRAM_OP_MALLOC, rc, 0);
        EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE, "malloc of 0 bytes");
        break;
    case 2:
        rc = vram_malloc_ex(&p, SIZE_MAX - below(&t->r, VRAM_ALIGNMENT - 1), 0, &generation);
        book(t, VRAM_OP_MALLOC, rc, 0);
        EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_SIZE_OVERFLOW, "malloc that overflows");
        break;
    default:
        rc = vram_malloc_ex(&p, 64, VRAM_MAX_TAGS + (uint32_t)below(&t->r, 1000), &generation);
        book(t, VRAM_OP_MALLOC, rc, 0);
        EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_TAG, "malloc with a bad tag");
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
    release_shared(t, s);
}

/* A generation freed already (its address possibly someone else's by now): 0, nothing freed. */
static void op_free_stale(soak_thread *t) {
    stale *st = &t->stale[below(&t->r, STALE)];
    if (!st->p) {
        op_free(t);
        return;
    }
    EXPECT(free_gen(t, st->p, st->generation, 0), VRAM_SUCCESS, -1, "free_ex of a stale generation");
    t->b.repeated_frees++;
    int rc = vram_set_allocation_wipe(st->p, st->generation, VRAM_WIPE_ON_FREE);
    EXPECT(rc, VRAM_ERR_UNKNOWN_POINTER, -1, "set_allocation_wipe of a stale generation");
}

/* Frees that must free nothing: interior, unknown, wrong or zero generation. */
static void op_free_refused(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s || s->size < 2) {
        EXPECT(free_plain(t, g_not_device + 256 * below(&t->r, 16), 0), VRAM_ERR_UNKNOWN_POINTER,
               VRAM_REASON_UNKNOWN_POINTER, "free of a pointer never returned");
        return;
    }
    switch (below(&t->r, 4)) {
    case 0:
        EXPECT(free_plain(t, s->p + 1 + below(&t->r, s->size - 1), 0), VRAM_ERR_INTERIOR_POINTER,
               VRAM_REASON_INTERIOR_POINTER, "free of an interior pointer");
        break;
    case 1:
        EXPECT(free_gen(t, s->p, 0, 0), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_GENERATION,
               "free_ex with generation 0");
        break;
    case 2:
        EXPECT(free_gen(t, s->p, UINT64_MAX - below(&t->r, 1000), 0), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_INVALID_GENERATION, "free_ex of a generation never handed out");
        break;
    default: {
        /* Another live allocation's generation, at this one's address. */
        const slot *other = NULL;
        for (int i = 0; i < SLOTS && !other; i++)
            if (&t->slots[i] != s && t->slots[i].p && t->slots[i].generation) other = &t->slots[i];
        if (!other) {
            EXPECT(free_plain(t, g_not_device, 0), VRAM_ERR_UNKNOWN_POINTER,
                   VRAM_REASON_UNKNOWN_POINTER, "free of a pointer never returned");
            break;
        }
        EXPECT(free_gen(t, s->p, other->generation, 0), VRAM_ERR_INVALID_PARAMETERS,
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
    EXPECT(rc, VRAM_SUCCESS, -1, "h2d of a sub-range");
    if (rc == VRAM_SUCCESS) memcpy(s->shadow + off, t->src, len);
    memset(t->dst, 0, len);
    rc = d2h(t, t->dst, s->p + off, len);
    EXPECT(rc, VRAM_SUCCESS, -1, "d2h of a sub-range");
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
    EXPECT(h2d(t, s->p + off, t->src, len), VRAM_ERR_OUT_OF_BOUNDS, VRAM_REASON_OUT_OF_BOUNDS,
           "h2d past the end");
    memset(t->dst, 0, len);
    EXPECT(d2h(t, t->dst, s->p + off, len), VRAM_ERR_OUT_OF_BOUNDS, VRAM_REASON_OUT_OF_BOUNDS,
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
            EXPECT(h2d(t, g_not_device, t->src, n), VRAM_ERR_UNKNOWN_POINTER,
                   VRAM_REASON_UNKNOWN_POINTER, "h2d to an unknown pointer");
        else
            EXPECT(d2h(t, t->dst, g_not_device, n), VRAM_ERR_UNKNOWN_POINTER,
                   VRAM_REASON_UNKNOWN_POINTER, "d2h from an unknown pointer");
        break;
    case 1:
        EXPECT(copy(t, NULL, t->src, n), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER,
               "copy with a NULL destination");
        break;
    case 2:
        EXPECT(copy(t, t->dst, NULL, n), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER,
               "copy with a NULL source");
        break;
    case 3:
        if (to_device)
            EXPECT(h2d(t, live ? live : g_not_device, t->src, 0), VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_ZERO_SIZE, "h2d of 0 bytes");
        else
            EXPECT(d2h(t, t->dst, live ? live : g_not_device, 0), VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_ZERO_SIZE, "d2h of 0 bytes");
        break;
    default: { /* a range that wraps the address space, on the device side or the host side */
        void *high = (void *)(UINTPTR_MAX - below(&t->r, 64));
        void *device = below(&t->r, 2) || !live ? high : live;
        void *hostp = device == high ? t->src : high;
        if (to_device)
            EXPECT(h2d(t, device, hostp, 64 + n), VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_RANGE_WRAP, "h2d of a wrapping range");
        else
            EXPECT(d2h(t, hostp, device, 64 + n), VRAM_ERR_INVALID_PARAMETERS,
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
    EXPECT(h2d(t, p, t->src, n), VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_FREED_POINTER,
           "h2d to a freed pointer");
    EXPECT(d2h(t, t->dst, p, n), VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_FREED_POINTER,
           "d2h from a freed pointer");
    if (size > 1) { /* freed_pointer where an older allocation started and was freed */
        EXPECT(d2h(t, t->dst, p + 1 + below(&t->r, size - 1), 1), VRAM_ERR_UNKNOWN_POINTER, -1,
               "d2h from inside a freed allocation");
        vram_error_info e;
        vram_last_error(&e);
        CHECK(e.reason == VRAM_REASON_UNKNOWN_POINTER || e.reason == VRAM_REASON_FREED_POINTER,
              "d2h from inside a freed allocation: reason %s", vram_reason_name(e.reason));
    }
    EXPECT(free_plain(t, p, 0), VRAM_SUCCESS, -1, "second free of a freed pointer");
    t->b.repeated_frees++;
    if (generation) {
        EXPECT(free_gen(t, p, generation, 0), VRAM_SUCCESS, -1, "free_ex of a freed generation");
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
        EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, "get_info with NULL");
        CHECK((null_free ? total : f) == 0, "get_info with NULL left the other output set");
        return;
    }
    rc = vram_get_info(&f, &total);
    book(t, VRAM_OP_GET_INFO, rc, 0);
    EXPECT(rc, VRAM_SUCCESS, -1, "get_info");
    CHECK(total == g_capacity && f <= total,
          "get_info on device %d: free %zu total %zu", t->device, f, total);
}

static void op_set_device(soak_thread *t) {
    if (below(&t->r, 4) == 0) {
        int bad = below(&t->r, 2) ? -1 - (int)below(&t->r, 100) : g_devices + (int)below(&t->r, 100);
        EXPECT(vram_set_device(bad), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE,
               "set_device of a device that does not exist");
    } else {
        int d = (int)below(&t->r, (size_t)g_devices);
        EXPECT(vram_set_device(d), VRAM_SUCCESS, -1, "set_device");
        t->device = d;
    }
    int got = -1;
    EXPECT(vram_get_device(&got), VRAM_SUCCESS, -1, "get_device");
    CHECK(got == t->device, "get_device %d, set %d", got, t->device);
}

/* The global policy changes only while no allocation is being made (see the gate). */
static void op_wipe_policy(soak_thread *t) {
    int policy = (int)below(&t->r, 2), got = -1;
    pthread_rwlock_wrlock(&g_gate);
    EXPECT(vram_set_wipe_policy(policy), VRAM_SUCCESS, -1, "set_wipe_policy");
    EXPECT(vram_get_wipe_policy(&got), VRAM_SUCCESS, -1, "get_wipe_policy");
    pthread_rwlock_unlock(&g_gate);
    CHECK(got == policy, "wipe policy %d after setting %d", got, policy);
    EXPECT(vram_set_wipe_policy(2 + (int)below(&t->r, 100)), VRAM_ERR_INVALID_PARAMETERS, -1,
           "set_wipe_policy of an unknown policy");
}

static void op_allocation_wipe(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s || !s->generation) {
        op_malloc(t);
        return;
    }
    bool wipe = below(&t->r, 2);
    EXPECT(vram_set_allocation_wipe(s->p, s->generation, wipe ? VRAM_WIPE_ON_FREE : VRAM_WIPE_OFF),
           VRAM_SUCCESS, -1, "set_allocation_wipe");
    s->wipe = wipe;
    if (s->size > 1)
        EXPECT(vram_set_allocation_wipe(s->p + 1, s->generation, VRAM_WIPE_ON_FREE),
               VRAM_ERR_UNKNOWN_POINTER, -1, "set_allocation_wipe at an interior pointer");
}

/* ---- copies between allocations, migration, batches, pinned memory, the pool ---- */

/* A d2d between the thread's own allocations (same device, or across through the path of
 * the pair), a range of the destination checked against its shadow after. */
static void op_d2d(soak_thread *t) {
    slot *s = any_slot(t, true), *d = any_slot(t, true);
    if (!s) {
        op_malloc(t);
        return;
    }
    size_t roll = below(&t->r, 8);
    if (roll == 0) { /* overlapping ranges of one allocation: refused */
        size_t half = s->size / 2, len = 2 + below(&t->r, half > 1 ? half - 1 : 1);
        size_t shift = 1 + below(&t->r, len - 1);
        if (len + shift <= s->size) {
            size_t off = below(&t->r, s->size - len - shift + 1);
            int rc = vram_memcpy_d2d(s->p + off + shift, s->p + off, len);
            book(t, VRAM_OP_MEMCPY_D2D, rc, 0);
            EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_OVERLAP, "d2d of overlapping ranges");
        }
        return;
    }
    if (roll == 1) { /* past the end of the source (or overlapping, should they touch) */
        size_t off = below(&t->r, s->size), len = s->size - off + 1 + below(&t->r, 64);
        /* into the host scratch (no allocation: refused too) where there is one slot only */
        unsigned char *dst = d == s ? t->dst : d->p, *src = s->p + off;
        if (len > d->size && d != s) len = d->size + 1;
        bool overlap = (uintptr_t)dst < (uintptr_t)src + len && (uintptr_t)src < (uintptr_t)dst + len;
        int rc = vram_memcpy_d2d(dst, src, len);
        book(t, VRAM_OP_MEMCPY_D2D, rc, 0);
        EXPECT(rc, overlap ? VRAM_ERR_INVALID_PARAMETERS : VRAM_ERR_OUT_OF_BOUNDS,
               overlap ? VRAM_REASON_OVERLAP : VRAM_REASON_OUT_OF_BOUNDS, "d2d past the end");
        return;
    }
    if (roll == 2) { /* from memory the registry never saw */
        int rc = vram_memcpy_d2d(s->p, g_not_device + 1024, 1 + below(&t->r, 256));
        book(t, VRAM_OP_MEMCPY_D2D, rc, 0);
        EXPECT(rc, VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER, "d2d from an unknown pointer");
        return;
    }
    size_t s_off, d_off, len;
    if (d == s) { /* one half into the other */
        if (s->size < 2) return;
        size_t half = s->size / 2;
        len = 1 + below(&t->r, half);
        size_t a = below(&t->r, half - len + 1), b = half + below(&t->r, s->size - half - len + 1);
        bool up = below(&t->r, 2);
        s_off = up ? a : b;
        d_off = up ? b : a;
    } else {
        size_t most = s->size < d->size ? s->size : d->size;
        len = 1 + below(&t->r, most);
        s_off = below(&t->r, s->size - len + 1);
        d_off = below(&t->r, d->size - len + 1);
    }
    int rc = vram_memcpy_d2d(d->p + d_off, s->p + s_off, len);
    book(t, g_path_op[s->device][d->device], rc, len);
    EXPECT(rc, VRAM_SUCCESS, -1, "d2d between own allocations");
    if (rc != VRAM_SUCCESS) return;
    memmove(d->shadow + d_off, s->shadow + s_off, len);
    t->d2d_copies++;
    memset(t->dst, 0, len);
    rc = d2h(t, t->dst, d->p + d_off, len);
    EXPECT(rc, VRAM_SUCCESS, -1, "d2h after a d2d");
    CHECK(rc != VRAM_SUCCESS || memcmp(t->dst, d->shadow + d_off, len) == 0,
          "a d2d of %zu B read back wrong", len);
    t->b.verified_bytes += len;
}

/* Migration of an own allocation to another device (its own: unchanged), or refused. Books
 * what the library counts: the new allocation's malloc, the copy under its path, the free of
 * the source (and its wipe), the migration. Out of memory on the target must be real. */
static void op_migrate(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s || !s->generation) {
        op_malloc(t);
        return;
    }
    void *np = (void *)&g_not_device;
    uint64_t ng = 1;
    int rc;
    if (below(&t->r, 8) == 0) {
        switch (below(&t->r, 4)) {
        case 0:
            rc = vram_migrate(s->p, 0, s->device, &np, &ng);
            book(t, VRAM_OP_MIGRATE, rc, 0);
            EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_GENERATION, "migrate of generation 0");
            break;
        case 1:
            rc = vram_migrate(s->p, s->generation, g_devices + (int)below(&t->r, 8), &np, &ng);
            book(t, VRAM_OP_MIGRATE, rc, 0);
            EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE, "migrate to no device");
            break;
        case 2:
            rc = vram_migrate(s->p, s->generation, s->device, NULL, &ng);
            book(t, VRAM_OP_MIGRATE, rc, 0);
            EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, "migrate without new_ptr");
            np = NULL; /* not passed */
            break;
        default:
            rc = vram_migrate(s->p + 1, s->generation, s->device, &np, &ng);
            book(t, VRAM_OP_MIGRATE, rc, 0);
            EXPECT(rc, VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER, "migrate of an interior pointer");
            break;
        }
        CHECK(ng == 0 && np == NULL, "a refused migration left %p generation %" PRIu64, np, ng);
        return;
    }
    int target = g_devices > 1 && below(&t->r, 4) != 0
                     ? (s->device + 1 + (int)below(&t->r, (size_t)g_devices - 1)) % g_devices
                     : s->device;
    if (target == s->device) {
        rc = vram_migrate(s->p, s->generation, target, &np, &ng);
        book(t, VRAM_OP_MIGRATE, rc, 0);
        EXPECT(rc, VRAM_SUCCESS, -1, "migrate to the allocation's own device");
        CHECK(np == s->p && ng == s->generation, "a migration to its own device moved %p to %p",
              (void *)s->p, np);
        return;
    }
    uint64_t need = reservation(target, s->size), word = 0;
    pthread_rwlock_rdlock(&g_gate);
    bool full_at_start = reserve(target, need, &word);
    rc = vram_migrate(s->p, s->generation, target, &np, &ng);
    pthread_rwlock_unlock(&g_gate);
    if (rc == VRAM_ERR_ALLOCATION_FAILED) {
        book_as(t, VRAM_OP_MALLOC, rc, 0, VRAM_REASON_NONE);
        book(t, VRAM_OP_MIGRATE, rc, 0);
        check_oom(t, target, full_at_start, word & ~RESERVED_MASK, s->size, "migrate");
        unreserve(target, need);
        CHECK(np == NULL && ng == 0, "a failed migration left %p generation %" PRIu64, np, ng);
        verify(t, s); /* the source is intact */
        return;
    }
    EXPECT(rc, VRAM_SUCCESS, -1, "migrate");
    if (rc != VRAM_SUCCESS) {
        book(t, VRAM_OP_MIGRATE, rc, 0);
        unreserve(target, need);
        return;
    }
    book_as(t, VRAM_OP_MALLOC, VRAM_SUCCESS, s->size, 0);
    book_as(t, g_path_op[s->device][target], VRAM_SUCCESS, s->size, 0);
    book_as(t, VRAM_OP_FREE, VRAM_SUCCESS, s->size, 0);
    book_wipe(t, s->wipe, s->size);
    book_as(t, VRAM_OP_MIGRATE, VRAM_SUCCESS, s->size, 0);
    t->b.allocs++;
    t->b.frees++;
    t->migrations++;
    CHECK(np != NULL && np != s->p && ng > t->last_generation,
          "migrated to %p generation %" PRIu64 " (from %p, last generation %" PRIu64 ")", np, ng,
          (void *)s->p, t->last_generation);
    t->last_generation = ng;
    t->stale[t->stale_next] = (stale){s->p, s->generation};
    t->stale_next = (t->stale_next + 1) % STALE;
    unreserve(s->device, s->reserved);
    s->p = np;
    s->generation = ng;
    s->device = target;
    s->reserved = need;
    verify(t, s);
}

/* A batch into empty slots, all or nothing, made while nothing else allocates or frees (the
 * exclusive gate) and sized to fit what the threads' books leave free: so a failure can only
 * be the element made to fail, and the library's counts of it are known exactly. */
static void op_malloc_batch(soak_thread *t) {
    slot *empty[SLOTS];
    size_t free_slots = 0;
    for (size_t i = 0, start = below(&t->r, SLOTS); i < SLOTS; i++)
        if (!t->slots[(start + i) % SLOTS].p) empty[free_slots++] = &t->slots[(start + i) % SLOTS];
    if (free_slots == 0) {
        op_free(t);
        return;
    }
    void *ptrs[SLOTS];
    size_t sizes[SLOTS];
    uint64_t generations[SLOTS], need[SLOTS], total = 0;
    uint32_t tag = (uint32_t)below(&t->r, VRAM_MAX_TAGS);
    bool with_generations = below(&t->r, 2);
    int rc;
    if (below(&t->r, 16) == 0) { /* refused before anything is made: one refused malloc */
        sizes[0] = 64;
        switch (below(&t->r, 3)) {
        case 0:
            rc = vram_malloc_batch(NULL, sizes, 1, tag, NULL);
            book(t, VRAM_OP_MALLOC, rc, 0);
            EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, "batch without ptrs");
            break;
        case 1:
            rc = vram_malloc_batch(ptrs, sizes, 0, tag, NULL);
            book(t, VRAM_OP_MALLOC, rc, 0);
            EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE, "batch of 0");
            break;
        default:
            rc = vram_malloc_batch(ptrs, sizes, 1, VRAM_MAX_TAGS, NULL);
            book(t, VRAM_OP_MALLOC, rc, 0);
            EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_TAG, "batch with a bad tag");
            break;
        }
        return;
    }
    pthread_rwlock_wrlock(&g_gate);
    int policy = -1;
    EXPECT(vram_get_wipe_policy(&policy), VRAM_SUCCESS, -1, "vram_get_wipe_policy");
    uint64_t held = atomic_load(&g_reserved[t->device]) & RESERVED_MASK;
    uint64_t room = g_capacity - g_slack[t->device] > held ? g_capacity - g_slack[t->device] - held : 0;
    size_t count = 0, want = 1 + below(&t->r, free_slots < 4 ? free_slots : 4);
    while (count < want) {
        size_t size = random_size(&t->r);
        uint64_t n = reservation(t->device, size);
        if (total + n > room) break;
        sizes[count] = size;
        need[count++] = n;
        total += n;
    }
    size_t failing = below(&t->r, 4), bad = count;
    if (count == 0 || failing < 2) { /* one more element, made to fail */
        bad = below(&t->r, count + 1);
        memmove(&sizes[bad + 1], &sizes[bad], (count - bad) * sizeof *sizes);
        memmove(&need[bad + 1], &need[bad], (count - bad) * sizeof *need);
        sizes[bad] = failing == 1 ? 0 : (size_t)g_capacity + 1 + below(&t->r, 4096);
        need[bad] = 0; /* never made */
        count++;
        failing = sizes[bad] == 0 ? 1 : 0;
    } else {
        failing = 2;
    }
    for (size_t i = 0; i < count; i++) {
        ptrs[i] = (void *)&g_not_device; /* must be overwritten */
        generations[i] = 1;
    }
    uint64_t word = 0;
    bool over = total > 0 && reserve(t->device, total, &word);
    rc = vram_malloc_batch(ptrs, sizes, count, tag, with_generations ? generations : NULL);
    pthread_rwlock_unlock(&g_gate);
    CHECK(!over, "a batch reserved %" PRIu64 " B past the room it measured", total);
    t->batches++;
    if (failing == 1) { /* a zero size: refused before anything is made */
        book(t, VRAM_OP_MALLOC, rc, 0);
        EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE, "batch with a zero size");
    } else if (failing == 0) { /* bad elements made, the next out of memory, the bad undone */
        EXPECT(rc, VRAM_ERR_ALLOCATION_FAILED, VRAM_REASON_NONE, "batch with an element larger than the device");
        for (size_t i = 0; i < bad; i++) {
            book_as(t, VRAM_OP_MALLOC, VRAM_SUCCESS, sizes[i], 0);
            book_as(t, VRAM_OP_FREE, VRAM_SUCCESS, sizes[i], 0);
            book_wipe(t, policy == VRAM_WIPE_ON_FREE, sizes[i]);
        }
        book(t, VRAM_OP_MALLOC, rc, 0);
        t->b.allocs += bad;
        t->b.frees += bad;
        t->b.ooms_injected++;
    } else {
        EXPECT(rc, VRAM_SUCCESS, -1, "batch");
    }
    if (rc != VRAM_SUCCESS) {
        unreserve(t->device, total);
        for (size_t i = 0; i < count; i++)
            CHECK(ptrs[i] == NULL && (!with_generations || generations[i] == 0),
                  "a failed batch left element %zu at %p generation %" PRIu64, i, ptrs[i], generations[i]);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        book_as(t, VRAM_OP_MALLOC, VRAM_SUCCESS, sizes[i], 0);
        t->b.allocs++;
        slot *s = empty[i];
        CHECK(ptrs[i] != NULL && ptrs[i] != (void *)&g_not_device, "batch element %zu at %p", i, ptrs[i]);
        if (with_generations) {
            CHECK(generations[i] > t->last_generation, "batch generation %" PRIu64 " after %" PRIu64,
                  generations[i], t->last_generation);
            t->last_generation = generations[i];
        }
        *s = (slot){ptrs[i], with_generations ? generations[i] : 0, sizes[i], need[i], t->device,
                    policy == VRAM_WIPE_ON_FREE, s->shadow};
        fill(&t->r, s->shadow, s->size);
        EXPECT(h2d(t, s->p, s->shadow, s->size), VRAM_SUCCESS, -1, "h2d of a batch element");
        verify(t, s);
    }
}

/* A pinned block (fresh or from the cache: clean either way) as the host side of a round trip
 * through an own allocation, refused frees, then freed. */
static void op_host_round_trip(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s) {
        op_malloc(t);
        return;
    }
    void *p = (void *)&g_not_device;
    int rc;
    if (below(&t->r, 8) == 0) { /* refused, or nothing to do */
        switch (below(&t->r, 4)) {
        case 0:
            rc = vram_host_alloc(&p, 0);
            book(t, VRAM_OP_HOST_ALLOC, rc, 0);
            EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE, "host_alloc of 0 bytes");
            CHECK(p == NULL, "a refused host_alloc left *ptr %p", p);
            break;
        case 1:
            rc = vram_host_alloc(NULL, 64);
            book(t, VRAM_OP_HOST_ALLOC, rc, 0);
            EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, "host_alloc(NULL)");
            break;
        case 2:
            rc = vram_host_free(g_not_device + 2048);
            book(t, VRAM_OP_HOST_FREE, rc, 0);
            EXPECT(rc, VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER, "host_free of unknown memory");
            break;
        default:
            rc = vram_host_free(NULL);
            book(t, VRAM_OP_HOST_FREE, rc, 0);
            EXPECT(rc, VRAM_SUCCESS, -1, "host_free(NULL)");
            break;
        }
        return;
    }
    size_t off = below(&t->r, s->size), room = s->size - off;
    size_t len = 1 + below(&t->r, room < 65536 ? room : 65536);
    rc = vram_host_alloc(&p, len);
    book(t, VRAM_OP_HOST_ALLOC, rc, len);
    EXPECT(rc, VRAM_SUCCESS, -1, "host_alloc");
    if (rc != VRAM_SUCCESS) return;
    unsigned char *h = p;
    t->host_blocks++;
    CHECK(all_zero(h, len), "a pinned block of %zu B at %p is not clean", len, p);
    fill(&t->r, h, len);
    rc = h2d(t, s->p + off, h, len);
    EXPECT(rc, VRAM_SUCCESS, -1, "h2d from a pinned block");
    if (rc == VRAM_SUCCESS) memcpy(s->shadow + off, h, len);
    memset(h, 0, len);
    rc = d2h(t, h, s->p + off, len);
    EXPECT(rc, VRAM_SUCCESS, -1, "d2h into a pinned block");
    CHECK(rc != VRAM_SUCCESS || memcmp(h, s->shadow + off, len) == 0,
          "a round trip through a pinned block read back wrong");
    t->b.verified_bytes += len;
    rc = vram_host_free(h + 1 + below(&t->r, len > 1 ? len - 1 : 1));
    book(t, VRAM_OP_HOST_FREE, rc, 0);
    EXPECT(rc, VRAM_ERR_INTERIOR_POINTER, VRAM_REASON_INTERIOR_POINTER, "host_free of an interior pointer");
    rc = vram_host_free(h);
    book(t, VRAM_OP_HOST_FREE, rc, len);
    EXPECT(rc, VRAM_SUCCESS, -1, "host_free");
    if (below(&t->r, 32) == 0) EXPECT(vram_host_trim(0), VRAM_SUCCESS, -1, "host_trim");
}

/* The thread's scratch registered (page-locked as far as copies care), refused where it
 * overlaps, used for a round trip, and unregistered. */
static void op_host_register(soak_thread *t) {
    slot *s = any_slot(t, true);
    if (!s) {
        op_malloc(t);
        return;
    }
    size_t off = below(&t->r, s->size), room = s->size - off;
    size_t len = 1 + below(&t->r, room < 65536 ? room : 65536), at = below(&t->r, 64);
    unsigned char *h = t->src + at;
    EXPECT(vram_host_register(h, len), VRAM_SUCCESS, -1, "host_register");
    size_t inner = below(&t->r, len);
    EXPECT(vram_host_register(h + inner, len - inner), VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_OVERLAP,
           "host_register of a registered range");
    fill(&t->r, h, len);
    int rc = h2d(t, s->p + off, h, len);
    EXPECT(rc, VRAM_SUCCESS, -1, "h2d from a registered range");
    if (rc == VRAM_SUCCESS) memcpy(s->shadow + off, h, len);
    memset(h, 0, len);
    rc = d2h(t, h, s->p + off, len);
    EXPECT(rc, VRAM_SUCCESS, -1, "d2h into a registered range");
    CHECK(rc != VRAM_SUCCESS || memcmp(h, s->shadow + off, len) == 0,
          "a round trip through a registered range read back wrong");
    EXPECT(vram_host_unregister(h), VRAM_SUCCESS, -1, "host_unregister");
    EXPECT(vram_host_unregister(h), VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER,
           "host_unregister of a range no longer registered");
}

/* The pool's device cache changes only under the gate held shared, so here (exclusive) a trim
 * releases exactly what the stats say it held over keep, which the library must count. */
static vram_pool_stats pool_stats_of(int device) {
    vram_pool_stats s;
    memset(&s, 0, sizeof s);
    EXPECT(vram_pool_stats_get(device, &s, sizeof s), VRAM_SUCCESS, -1, "vram_pool_stats_get");
    CHECK(s.cached_bytes <= s.max_cached_bytes || device < 0, "pool of device %d caches %" PRIu64
          " B over its bound %" PRIu64, device, s.cached_bytes, s.max_cached_bytes);
    return s;
}

/* Trim (keep bytes), counted once per device trimmed, with the bytes released. */
static void pool_trim_booked(soak_thread *t, int device, uint64_t keep) {
    vram_pool_stats before = pool_stats_of(device);
    int rc = vram_pool_trim(device, keep);
    vram_pool_stats after = pool_stats_of(device);
    EXPECT(rc, VRAM_SUCCESS, -1, "pool_trim");
    uint64_t released = before.cached_bytes - after.cached_bytes;
    CHECK(after.released_bytes_total - before.released_bytes_total == released &&
              (device < 0 || after.cached_bytes <= keep),
          "pool_trim(%d, %" PRIu64 "): %" PRIu64 " B cached after, %" PRIu64 " released, %" PRIu64
          " counted", device, keep, after.cached_bytes, released,
          after.released_bytes_total - before.released_bytes_total);
    int trimmed = device < 0 ? g_devices : 1;
    for (int d = 0; d < trimmed; d++) book_as(t, VRAM_OP_POOL_TRIM, rc, d == 0 ? released : 0, 0);
    t->pool_trims += (uint64_t)trimmed;
}

static void op_pool(soak_thread *t) {
    static const uint64_t bounds[] = {0, POOL_BOUND / 2, POOL_BOUND};
    pthread_rwlock_wrlock(&g_gate);
    switch (below(&t->r, 4)) {
    case 0:
        pool_trim_booked(t, g_pool_device, below(&t->r, 2) ? 0 : POOL_BOUND / 4);
        break;
    case 1:
        pool_trim_booked(t, -1, below(&t->r, 2) ? 0 : POOL_BOUND / 4);
        break;
    case 2: { /* a bound below what is cached releases the rest, counted as a trim */
        uint64_t bound = bounds[below(&t->r, 3)];
        vram_pool_stats before = pool_stats_of(g_pool_device);
        int rc = vram_pool_set(g_pool_device, bound);
        vram_pool_stats after = pool_stats_of(g_pool_device);
        EXPECT(rc, VRAM_SUCCESS, -1, "pool_set");
        CHECK(after.enabled == (bound > 0) && after.max_cached_bytes == bound && after.cached_bytes <= bound,
              "pool_set(%" PRIu64 "): enabled %u, bound %" PRIu64 ", %" PRIu64 " B cached", bound,
              after.enabled, after.max_cached_bytes, after.cached_bytes);
        if (before.cached_bytes > bound) {
            book_as(t, VRAM_OP_POOL_TRIM, rc, before.cached_bytes - after.cached_bytes, 0);
            t->pool_trims++;
        }
        break;
    }
    default: { /* a device that does not exist: a refused trim; a setting is no operation */
        int rc = vram_pool_trim(g_devices + (int)below(&t->r, 8), 0);
        book(t, VRAM_OP_POOL_TRIM, rc, 0);
        EXPECT(rc, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE, "pool_trim of no device");
        EXPECT(vram_pool_set(g_devices, POOL_BOUND), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_INVALID_DEVICE, "pool_set of no device");
        break;
    }
    }
    pthread_rwlock_unlock(&g_gate);
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
    {"d2d", 6, op_d2d},
    {"migrate", 3, op_migrate},
    {"malloc_batch", 2, op_malloc_batch},
    {"host_round_trip", 3, op_host_round_trip},
    {"host_register", 1, op_host_register},
    {"pool", 1, op_pool},
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
    EXPECT(vram_set_device(t->device), VRAM_SUCCESS, -1, "set_device");
    for (long i = 0; i < t->ops; i++) draw(t)->run(t);
    for (int i = 0; i < SLOTS; i++) /* leave nothing behind */
        if (t->slots[i].p) {
            verify(t, &t->slots[i]);
            release_shared(t, &t->slots[i]);
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
    EXPECT(vram_stats_get(-1, &st, sizeof st), VRAM_SUCCESS, -1, "vram_stats_get");
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
    EXPECT(vram_registry_stats_get(-1, &s, sizeof s), VRAM_SUCCESS, -1, "vram_registry_stats_get");
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
    EXPECT(vram_registry_list(-1, NULL, 0, &count), VRAM_SUCCESS, -1, "vram_registry_list");
    CHECK(count == 0, "vram_registry_list counts %zu live", count);
    uint64_t held = s.live_bytes;
    for (int d = 0; d < g_devices; d++) {
        size_t total = 0;
        EXPECT(vram_set_device(d), VRAM_SUCCESS, -1, "set_device");
        EXPECT(vram_get_info(&free_after[d], &total), VRAM_SUCCESS, -1, "get_info at the end");
        CHECK(free_after[d] == baseline[d] && free_after[d] == total,
              "device %d: free %zu at the end, %zu before, total %zu", d, free_after[d], baseline[d], total);
        held += total - free_after[d];
        CHECK((atomic_load(&g_reserved[d]) & RESERVED_MASK) == 0, "device %d: reservation left", d);
    }
    return held;
}

/* ---------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc > 1) g_threads = atoi(argv[1]);
    if (argc > 2) g_ops = atol(argv[2]);
    if (argc > 3 || g_threads < 1 || g_threads > 1024 || g_ops < 1) {
        fprintf(stderr, "usage: %s [threads 1..1024 [operations >= 1]]\n", argv[0]);
        return 2;
    }
    seed_from_env();
    const char *timeout = getenv("VRAMOBS_SOAK_TIMEOUT");
    unsigned timeout_s = timeout && *timeout ? (unsigned)strtoul(timeout, NULL, 10) : 600;
    watchdog_arm(on_timeout, timeout_s);

    /* Read by the library at its first use of the host backend. */
    set_default_env("VRAMOBS_HOST_DEVICES", "2");
    set_default_env("VRAMOBS_HOST_CAPACITY", "1048576");
    EXPECT(vram_select_backend("host"), VRAM_SUCCESS, -1, "vram_select_backend(\"host\")");
    EXPECT(vram_device_count(&g_devices), VRAM_SUCCESS, -1, "vram_device_count");
    if (atomic_load(&g_failures) || g_devices < 1 || g_devices > VRAM_MAX_DEVICES) {
        printf("SOAK FAIL: no host backend (%s)\n", vram_backend_diagnostic());
        return 1;
    }
    soak_thread probe; /* books the main thread's calls */
    memset(&probe, 0, sizeof probe);
    size_t baseline[VRAM_MAX_DEVICES] = {0}, free_after[VRAM_MAX_DEVICES] = {0};
    for (int d = 0; d < g_devices; d++) {
        size_t total = 0;
        EXPECT(vram_set_device(d), VRAM_SUCCESS, -1, "set_device");
        int rc = vram_get_info(&baseline[d], &total);
        book(&probe, VRAM_OP_GET_INFO, rc, 0);
        EXPECT(rc, VRAM_SUCCESS, -1, "get_info before the run");
        CHECK(baseline[d] == total, "device %d: free %zu of %zu before the run", d, baseline[d], total);
        g_capacity = total;
    }
    /* The pool on the last device; the operation each pair of devices copies with. */
    g_pool_device = g_devices - 1;
    g_slack[g_pool_device] = POOL_BOUND;
    EXPECT(vram_pool_set(g_pool_device, POOL_BOUND), VRAM_SUCCESS, -1, "pool_set");
    for (int from = 0; from < g_devices; from++)
        for (int to = 0; to < g_devices; to++) {
            int path = -1;
            EXPECT(vram_copy_path_get(from, to, &path), VRAM_SUCCESS, -1, "copy_path_get");
            g_path_op[from][to] = path == VRAM_PATH_DEVICE ? VRAM_OP_MEMCPY_D2D
                                  : path == VRAM_PATH_PEER ? VRAM_OP_MEMCPY_P2P
                                                           : VRAM_OP_MEMCPY_STAGED;
        }
    for (size_t i = 0; i < OP_KINDS; i++) g_weight_total += OPS[i].weight;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&g_gate, &attr);
    pthread_rwlockattr_destroy(&attr);

    printf("vram_soak: host backend, %d devices of %" PRIu64 " B (pool on device %d, copies between "
           "devices: %s), %d threads, %ld operations, VRAMOBS_TEST_SEED=%" PRIu64 ", library %s\n",
           g_devices, g_capacity, g_pool_device,
           g_devices > 1 ? vram_op_name(g_path_op[0][1]) : "none", g_threads, g_ops, g_seed,
           vram_version_string());
    fflush(stdout);

    soak_thread *threads = calloc((size_t)g_threads, sizeof *threads);
    bool ok = threads != NULL;
    for (int i = 0; ok && i < g_threads; i++) {
        soak_thread *t = &threads[i];
        t->index = i;
        t->ops = g_ops / g_threads + (i < g_ops % g_threads ? 1 : 0);
        t->r = rng_for((uint64_t)i + 1);
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

    /* The pool's cache back to the driver (counted), pinned blocks too: then every device is
     * free and the host books are empty. */
    vram_pool_stats pool_end = pool_stats_of(g_pool_device);
    pool_trim_booked(&probe, -1, 0);
    EXPECT(vram_pool_set(g_pool_device, 0), VRAM_SUCCESS, -1, "pool_set(0)");
    vram_pool_stats pool = pool_stats_of(-1);
    CHECK(pool.cached_bytes == 0 && pool.cached_blocks == 0 && pool.live_blocks == 0 &&
              pool.slack_bytes == 0 && pool.enabled == 0 && pool.dropped_bytes_total == 0,
          "pool at the end: %" PRIu64 " B in %" PRIu64 " blocks cached, %" PRIu64 " out, %u on",
          pool.cached_bytes, pool.cached_blocks, pool.live_blocks, pool.enabled);
    EXPECT(vram_host_trim(0), VRAM_SUCCESS, -1, "host_trim(0)");
    vram_host_stats host;
    EXPECT(vram_host_stats_get(&host, sizeof host), VRAM_SUCCESS, -1, "host_stats_get");
    CHECK(host.live_count == 0 && host.live_bytes == 0 && host.cached_bytes == 0 &&
              host.registered_count == 0 && host.registered_bytes == 0,
          "pinned memory at the end: %" PRIu64 " blocks (%" PRIu64 " B), %" PRIu64 " B cached, %" PRIu64
          " ranges registered", host.live_count, host.live_bytes, host.cached_bytes,
          host.registered_count);

    books all = probe.b;
    uint64_t pool_trims = probe.pool_trims, batches = 0, migrations = 0, host_blocks = 0, d2d_copies = 0;
    uint64_t ran[32] = {0};
    long ops_run = 0;
    for (int i = 0; i < started; i++) {
        add_books(&all, &threads[i].b);
        pool_trims += threads[i].pool_trims;
        batches += threads[i].batches;
        migrations += threads[i].migrations;
        host_blocks += threads[i].host_blocks;
        d2d_copies += threads[i].d2d_copies;
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
        CHECK(d2d_copies > 0 && (g_devices < 2 || migrations > 0) && batches > 0 && host_blocks > 0 &&
                  pool_trims > 0 && pool_end.hits_total > 0,
              "not every kind ran: %" PRIu64 " d2d, %" PRIu64 " migrations, %" PRIu64 " batches, %" PRIu64
              " pinned blocks, %" PRIu64 " trims, %" PRIu64 " pool hits", d2d_copies, migrations, batches,
              host_blocks, pool_trims, pool_end.hits_total);
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
           " verified_bytes=%" PRIu64 " d2d=%" PRIu64 " migrations=%" PRIu64 " batches=%" PRIu64
           " pinned_blocks=%" PRIu64 " pool_hits=%" PRIu64 " pool_trims=%" PRIu64
           " leaked_bytes=%" PRIu64 " free_before=%" PRIu64 " free_after=%" PRIu64 " failed_checks=%ld\n",
           failures ? "FAIL" : "ok", g_threads, ops_run, api_calls, seconds,
           seconds > 0 ? (double)ops_run / seconds : 0.0, all.allocs, all.ooms_full,
           all.ooms_injected, all.refusals, all.calls[VRAM_OP_WIPE], all.verified_bytes, d2d_copies,
           migrations, batches, host_blocks, pool_end.hits_total, pool_trims, held, before, after,
           failures);
    for (int i = 0; i < g_threads; i++) {
        free(threads[i].src);
        free(threads[i].dst);
        for (int k = 0; k < SLOTS; k++) free(threads[i].slots[k].shadow);
    }
    free(threads);
    pthread_rwlock_destroy(&g_gate);
    return failures ? 1 : 0;
}
