/* libFuzzer target: the registry under concurrency, on the host backend with two emulated
 * devices (copies between them through host memory unless VRAMOBS_HOST_PEER=1).
 *
 * The input is split into FUZZ_THREADS operation streams run at once by as many threads,
 * each on its own shadow model (it allocates, frees, copies, migrates and batches only its own
 * allocations, on the device it chose, so every code it gets is predictable), while all of
 * them also read and free one shared allocation S made before they start: d2h and d2d copies
 * from S race its free (a copy pins S, so it either reads S's bytes or is refused with 5,
 * never touches freed memory: ASan watches), and several threads free S with its generation
 * (exactly one releases it, the others get 0 as a repeated free). Threads also turn the
 * device pools on and off, trim them and read their stats, so that frees cache blocks that
 * other threads' allocations take, and mark their own allocations for wiping; they take pinned
 * blocks from the shared cache and give them back while others trim it, register buffers of
 * their own, copy through both, and call the 0.3.0 async twins (copies, malloc_async,
 * free_async: done at the call on the host backend, their completions released at once).
 *
 * What a thread does is chosen so that no other thread can change its outcome: pointers
 * stay within its own allocations' blocks (base .. base + rounded size), foreign addresses
 * are kernel-half values that can never be allocated, and freed pointers are freed again
 * only with their generation (a C-API free of a stale pointer could free another thread's
 * allocation at the reused address, which the header documents). Allocation sizes are
 * either small (always fit: FUZZ_THREADS x T_MAX_LIVE x 64 KiB plus the pools' bound of
 * 16 MiB is far below a device's capacity) or larger than the whole capacity (always fail
 * with 1; in a batch, after the buffers before it were made, which it frees again).
 *
 * Checked: every code (and reason, from the thread's last error) against the thread's
 * model; content of each thread's allocations, moved by d2d and migrate; pool stats that are
 * consistent whenever read (cached within the bound, on iff bounded); after the streams, with
 * all threads parked at a barrier, the registry's live count, bytes and per-tag counts, in all
 * and per device, against the sum of the models; after the threads free everything and the
 * pools are turned off and the pinned cache trimmed, nothing live, cached, pinned or
 * registered, both devices' capacity back, every async call done at its call, the allocation,
 * free and repeated-free totals, and the per-operation aggregates of vram_stats_get() against
 * the sum of what every thread observed (pool_trim within the trims pool_set may add; the
 * copies between allocations in all where a d2d from S ran after a free of S began, so that
 * its source may have been a reuse of S's address on either device). */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#define FUZZ_THREADS 4
#define T_MAX_LIVE 16
#define T_MAX_OPS 512
#define T_SMALL_MAX ((size_t)64 << 10)
#define T_BATCH_MAX 4
#define T_HOST_MAX 4 /* pinned blocks, and registered buffers, a thread keeps */

typedef struct counts {
    uint64_t calls[VRAM_OP_COUNT_];
    uint64_t by_status[VRAM_OP_COUNT_][VRAM_STATUS_CAPACITY];
    uint64_t by_reason[VRAM_OP_COUNT_][VRAM_REASON_CAPACITY];
    uint64_t bytes_ok[VRAM_OP_COUNT_];
    uint64_t allocs, frees, repeats; /* registry books */
    uint64_t pool_sets;   /* successful vram_pool_set calls: each may count a pool_trim */
    uint64_t copies_unknown, copies_unknown_bytes; /* d2d from a reused S: path unknown */
    uint64_t immediate; /* async calls done when they returned */
} counts;

typedef struct host_range { /* a pinned block, or a registered buffer of the thread's */
    uint8_t *p;
    size_t bytes;
} host_range;

typedef struct worker {
    pthread_t thread;
    int id;
    int device; /* the thread's, for its allocations */
    fuzz_reader r;
    model m;
    uint64_t last_gen;
    bool freed_shared;
    uint64_t excuses; /* outcomes on S that only a reuse of S's address explains */
    host_range blocks[T_HOST_MAX], regs[T_HOST_MAX];
    int n_blocks, n_regs;
    counts c;
} worker;

/* The shared allocation, on device 0. */
static struct {
    uintptr_t base;
    size_t size;
    uint64_t gen;
    uint8_t content[T_SMALL_MAX];
} g_s;
static int g_s_reused;     /* atomic: a thread's allocation overlapped S's block */
static int g_s_free_calls; /* atomic: frees of S started */

static pthread_barrier_t g_start, g_parked, g_resume;
static worker g_workers[FUZZ_THREADS];
static counts g_main;
static bool g_peer;

static uint64_t g_inputs, g_thread_ops, g_migrations, g_batches, g_d2d_ok;

/* Count a call as observed (code and reason from this thread's last error). */
FUZZ_NO_COVERAGE static void observe(counts *c, int op, int got) {
    if (op < 0) return; /* not an operation: not counted */
    c->calls[op]++;
    if (got >= 0 && got < VRAM_STATUS_CAPACITY) c->by_status[op][got]++;
    if (got != VRAM_SUCCESS) {
        vram_error_info e;
        vram_last_error(&e);
        if (e.reason > 0 && e.reason < VRAM_REASON_CAPACITY) c->by_reason[op][e.reason]++;
    }
}

/* Count a successful call made inside another one (migrate's malloc, copy and free). */
static void count_ok(counts *c, int op, uint64_t bytes) {
    c->calls[op]++;
    c->by_status[op][VRAM_SUCCESS]++;
    c->bytes_ok[op] += bytes;
}

static int g_trace; /* VRAMOBS_FUZZ_TRACE=1: print every checked call */

/* The code must be want; on failure the last error must say so, with one of the reasons. */
static void expect(worker *w, const char *what, int op, int got, int want, int reason,
                   int alt_reason) {
    if (g_trace) fprintf(stderr, "thread %d %s -> %d\n", w->id, what, got);
    FUZZ_CHECK(got == want, "thread %d %s: returned %d (%s), model expects %d (%s)", w->id, what,
               got, vram_status_name(got), want, vram_status_name(want));
    if (got != VRAM_SUCCESS) {
        vram_error_info e;
        vram_last_error(&e);
        FUZZ_CHECK(e.status == got && (e.reason == reason || e.reason == alt_reason) && e.op == op,
                   "thread %d %s: last error {status %d, reason %s, op %d}, model expects "
                   "{%d, %s, %d}",
                   w->id, what, e.status, vram_reason_name(e.reason), e.op, want,
                   vram_reason_name(reason), op);
    }
    observe(&w->c, op, got);
}

static int path_op(int src_device, int dst_device) {
    if (src_device == dst_device) return VRAM_OP_MEMCPY_D2D;
    return g_peer ? VRAM_OP_MEMCPY_P2P : VRAM_OP_MEMCPY_STAGED;
}

/* An async call's stream (the host backend has none: any value) and its completion, released
 * at once: done, with the call's status. */
static uintptr_t t_stream(worker *w) {
    uint8_t k = fr_u8(&w->r);
    return (k & 3) == 3 ? (uintptr_t)fr_u64(&w->r) : (uintptr_t)(k & 3);
}

static void t_completion(worker *w, vram_completion *c, int got) {
    if (got != VRAM_SUCCESS) {
        FUZZ_CHECK(c == NULL, "thread %d: refused async call left a completion", w->id);
        return;
    }
    int done = 0;
    FUZZ_CHECK(c && vram_completion_query(c, &done) == VRAM_SUCCESS && done == 1 &&
                   vram_completion_release(c) == VRAM_SUCCESS,
               "thread %d: completion of an async call not done", w->id);
    w->c.immediate++;
}

static size_t pick_size(fuzz_reader *r, int *want, int *reason) {
    *want = VRAM_SUCCESS;
    *reason = VRAM_REASON_NONE;
    switch (fr_u8(r) % 10) {
    case 0:
        *want = VRAM_ERR_INVALID_PARAMETERS, *reason = VRAM_REASON_ZERO_SIZE;
        return 0;
    case 1: /* larger than the whole capacity: no interleaving can make it fit */
        *want = VRAM_ERR_ALLOCATION_FAILED;
        return FUZZ_CAPACITY + 1 + fr_u32(r);
    case 2:
        *want = VRAM_ERR_ALLOCATION_FAILED;
        return SIZE_MAX - 255;
    case 3:
        *want = VRAM_ERR_INVALID_PARAMETERS, *reason = VRAM_REASON_SIZE_OVERFLOW;
        return SIZE_MAX - fr_u8(r) % 255;
    case 4: return (size_t)fr_u8(r) + 1;
    case 5: return 256 * ((size_t)fr_u8(r) % 64 + 1);
    default: return (size_t)fr_u16(r) % T_SMALL_MAX + 1;
    }
}

/* A new allocation of this thread: in its model, and noted if it took S's address. */
static m_alloc *note_alloc(worker *w, uintptr_t base, size_t bytes, uint64_t gen, uint32_t tag,
                           int device) {
    if (gen) {
        FUZZ_CHECK(gen > w->last_gen, "thread %d: generation %llu after %llu", w->id,
                   (unsigned long long)gen, (unsigned long long)w->last_gen);
        w->last_gen = gen;
    }
    if (base < g_s.base + fuzz_rounded(g_s.size) && g_s.base < base + fuzz_rounded(bytes))
        __atomic_store_n(&g_s_reused, 1, __ATOMIC_SEQ_CST);
    w->c.allocs++;
    return model_add(&w->m, base, bytes, gen, tag, device);
}

static void t_malloc(worker *w, bool ex, bool async) {
    uintptr_t stream = async ? t_stream(w) : 0;
    int want, reason;
    size_t bytes = pick_size(&w->r, &want, &reason);
    uint32_t tag = ex ? fr_u8(&w->r) % 71 : 0;
    /* Checked after the size, before the capacity. */
    if ((want == VRAM_SUCCESS || want == VRAM_ERR_ALLOCATION_FAILED) && tag >= VRAM_MAX_TAGS)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_TAG;
    if (want == VRAM_SUCCESS && w->m.n_live >= T_MAX_LIVE) return;
    void *p = (void *)(uintptr_t)0xbad0;
    uint64_t g = 0xbad1;
    int got = async ? vram_malloc_async(&p, bytes, tag, &g, stream)
              : ex  ? vram_malloc_ex(&p, bytes, tag, &g)
                    : vram_malloc(&p, bytes);
    expect(w, async ? "vram_malloc_async" : ex ? "vram_malloc_ex" : "vram_malloc", VRAM_OP_MALLOC, got,
           want, reason, reason);
    if (want != VRAM_SUCCESS) {
        FUZZ_CHECK(p == NULL && (!ex || g == 0), "thread %d: failed allocation left outputs set",
                   w->id);
        return;
    }
    note_alloc(w, (uintptr_t)p, bytes, ex ? g : 0, tag, w->device);
    w->c.bytes_ok[VRAM_OP_MALLOC] += bytes;
}

/* An address within one of this thread's blocks, or one nobody can own. *idx: the
 * allocation it was taken from, or -1. */
static uintptr_t t_pointer(worker *w, int *idx) {
    fuzz_reader *r = &w->r;
    unsigned kind = fr_u8(r) % 10;
    *idx = -1;
    if (kind < 7 && w->m.n_live) {
        int i = fr_u8(r) % w->m.n_live;
        const m_alloc *a = &w->m.live[i];
        size_t need = fuzz_rounded(a->size);
        *idx = i;
        switch (kind) {
        case 0: case 1: case 2: return a->base;
        case 3: return a->base + (a->size > 1 ? 1 + fr_u32(r) % (a->size - 1) : 0);
        case 4: return a->base + a->size - 1;
        case 5: return a->base + a->size; /* the end, inside the block or at its end */
        default: return a->base + a->size + (need > a->size ? fr_u16(r) % (need - a->size + 1) : 0);
        }
    }
    switch (kind % 3) {
    case 0: return 0;
    case 1: return KERNEL_HALF | (uintptr_t)fr_u64(r);
    default: return (uintptr_t)fr_u16(r) % 4096; /* the unmapped first page */
    }
}

/* A generation for one of this thread's pointers: idx's, 0, stale, another live one's,
 * never issued. */
static uint64_t t_generation(worker *w, int idx) {
    fuzz_reader *r = &w->r;
    switch (fr_u8(r) % 6) {
    case 0: case 1: return idx >= 0 ? w->m.live[idx].gen : 0;
    case 2: return 0;
    case 3: return w->m.n_freed ? w->m.freed[fr_u8(r) % w->m.n_freed].gen : 0; /* stale */
    case 4: return w->m.n_live ? w->m.live[fr_u8(r) % w->m.n_live].gen : 0;
    default: return UINT64_MAX - fr_u8(r); /* never issued */
    }
}

/* One of this thread's allocations went: its wipe (when marked) and books. */
static void released(worker *w, int i) {
    const m_alloc *a = &w->m.live[i];
    if (a->wipe) count_ok(&w->c, VRAM_OP_WIPE, a->size);
    w->c.frees++;
    w->c.bytes_ok[VRAM_OP_FREE] += a->size;
    model_remove(&w->m, i);
}

static void check_content(worker *w, const m_alloc *a) {
    size_t bad = shadow_check_in_place(a);
    FUZZ_CHECK(bad == SIZE_MAX, "thread %d: device byte %zu of %#lx changed", w->id, bad,
               (unsigned long)a->base);
}

static void t_free(worker *w) {
    int idx;
    uintptr_t p = t_pointer(w, &idx);
    int live = p ? model_find_base(&w->m, p) : -1;
    if (live >= 0) check_content(w, &w->m.live[live]); /* before it goes */
    int got = vram_free((void *)p);
    if (!p || live >= 0) {
        expect(w, "vram_free", VRAM_OP_FREE, got, VRAM_SUCCESS, 0, 0);
        if (live >= 0) released(w, live);
    } else if (model_find(&w->m, p) >= 0) {
        expect(w, "vram_free", VRAM_OP_FREE, got, VRAM_ERR_INTERIOR_POINTER,
               VRAM_REASON_INTERIOR_POINTER, VRAM_REASON_INTERIOR_POINTER);
    } else if (idx >= 0 && got == VRAM_SUCCESS) {
        /* The end of an own block: never live, but may be an old freed start (mmap reuse). */
        expect(w, "vram_free(end)", VRAM_OP_FREE, got, VRAM_SUCCESS, 0, 0);
        w->c.repeats++;
    } else {
        expect(w, "vram_free", VRAM_OP_FREE, got, VRAM_ERR_UNKNOWN_POINTER,
               VRAM_REASON_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER);
    }
}

static void t_free_ex(worker *w, bool async) {
    uintptr_t stream = async ? t_stream(w) : 0;
    int idx;
    uintptr_t p = t_pointer(w, &idx);
    uint64_t g = t_generation(w, idx);
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, release = -1;
    bool repeat = false;
    if (g == 0) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
    } else if (!p) {
    } else if (g > UINT64_MAX - 256) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
    } else {
        int i = model_find_gen(&w->m, g);
        if (i < 0)
            repeat = true; /* one of this thread's, freed */
        else if (w->m.live[i].base != p)
            want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
        else
            release = i;
    }
    if (release >= 0) check_content(w, &w->m.live[release]);
    expect(w, async ? "vram_free_async" : "vram_free_ex", VRAM_OP_FREE,
           async ? vram_free_async((void *)p, g, stream) : vram_free_ex((void *)p, g), want,
           reason, reason);
    if (repeat) w->c.repeats++;
    if (release >= 0) released(w, release);
}

/* h2d / d2h between an own range and a host buffer, or (async) the same on a stream. */
static void t_copy(worker *w, bool h2d, bool async) {
    uintptr_t stream = async ? t_stream(w) : 0;
    int idx;
    uintptr_t dev = t_pointer(w, &idx);
    fuzz_reader *r = &w->r;
    size_t remaining = 0, padding_left = 0;
    int holder = model_find(&w->m, dev);
    if (holder >= 0) {
        const m_alloc *a = &w->m.live[holder];
        remaining = a->size - (dev - a->base);
        padding_left = fuzz_rounded(a->size) - (dev - a->base);
    }
    size_t n = pick_copy_size(r, remaining, padding_left);
    uint8_t host_kind = fr_u8(r);
    uint64_t seed = fr_u64(r);
    copy_call c = copy_prepare(&w->m, h2d, dev, n, host_kind, seed, r, NULL);
    int op = h2d ? VRAM_OP_MEMCPY_H2D : VRAM_OP_MEMCPY_D2H;
    vram_completion *done = NULL;
    int got = !async ? copy_run(&c)
              : h2d  ? vram_memcpy_h2d_async((void *)c.dev, (const void *)c.host, c.n, stream, &done)
                     : vram_memcpy_d2h_async((void *)c.host, (const void *)c.dev, c.n, stream, &done);
    /* 5 for an address outside every live allocation: freed_pointer where an old freed start
     * sits there (mmap reuse), else unknown_pointer. */
    expect(w, h2d ? "vram_memcpy_h2d" : "vram_memcpy_d2h", op, got, c.pred.status,
           c.pred.reason,
           c.pred.status == VRAM_ERR_UNKNOWN_POINTER ? VRAM_REASON_FREED_POINTER : c.pred.reason);
    if (async) t_completion(w, done, got);
    if (c.pred.status == VRAM_SUCCESS) w->c.bytes_ok[op] += c.n;
    copy_finish(&w->m, &c);
}

/* A d2d between this thread's own ranges (or addresses nobody owns), or its async twin. */
static void t_d2d(worker *w, bool async) {
    uintptr_t stream = async ? t_stream(w) : 0;
    fuzz_reader *r = &w->r;
    int si, di;
    uintptr_t s = t_pointer(w, &si), d;
    int sh = model_find(&w->m, s);
    if ((fr_u8(r) & 3) == 3 && si >= 0) { /* within the source's block: overlapping or not */
        const m_alloc *a = &w->m.live[si];
        d = a->base + fr_u32(r) % (fuzz_rounded(a->size) + 1);
    } else {
        d = t_pointer(w, &di);
    }
    int dh = model_find(&w->m, d);
    size_t remaining = 0, padding_left = 0;
    if (sh >= 0) {
        remaining = w->m.live[sh].size - (s - w->m.live[sh].base);
        padding_left = fuzz_rounded(w->m.live[sh].size) - (s - w->m.live[sh].base);
    }
    if (dh >= 0 && w->m.live[dh].size - (d - w->m.live[dh].base) < remaining)
        remaining = w->m.live[dh].size - (d - w->m.live[dh].base);
    size_t n = pick_copy_size(r, remaining, padding_left);
    if (device_side_ok(&w->m, s, n) && device_side_ok(&w->m, d, n) && n > FUZZ_COPY_MAX)
        n = FUZZ_COPY_MAX;
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, op = VRAM_OP_MEMCPY_D2D;
    if (!d || !s) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    } else if (n == 0) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_ZERO_SIZE;
    } else if (fuzz_wraps(d, n) || fuzz_wraps(s, n)) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_RANGE_WRAP;
    } else if (d < s + n && s < d + n) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_OVERLAP;
    } else {
        /* Source first, then destination: 5 where no own allocation holds it, 6 past one. */
        uintptr_t side[2] = {s, d};
        int holder[2] = {sh, dh};
        for (int k = 0; k < 2 && want == VRAM_SUCCESS; k++) {
            if (holder[k] < 0)
                want = VRAM_ERR_UNKNOWN_POINTER, reason = VRAM_REASON_UNKNOWN_POINTER;
            else if (n > w->m.live[holder[k]].size - (side[k] - w->m.live[holder[k]].base))
                want = VRAM_ERR_OUT_OF_BOUNDS, reason = VRAM_REASON_OUT_OF_BOUNDS;
        }
        if (want == VRAM_SUCCESS) op = path_op(w->m.live[sh].device, w->m.live[dh].device);
    }
    vram_completion *done = NULL;
    int got = async ? vram_memcpy_d2d_async((void *)d, (const void *)s, n, stream, &done)
                    : vram_memcpy_d2d((void *)d, (const void *)s, n);
    expect(w, "vram_memcpy_d2d", op, got, want, reason,
           want == VRAM_ERR_UNKNOWN_POINTER ? VRAM_REASON_FREED_POINTER : reason);
    if (async) t_completion(w, done, got);
    if (want != VRAM_SUCCESS) {
        if (sh >= 0) check_content(w, &w->m.live[sh]);
        if (dh >= 0) check_content(w, &w->m.live[dh]);
        return;
    }
    w->c.bytes_ok[op] += n;
    shadow_copy(&w->m.live[dh], d - w->m.live[dh].base, &w->m.live[sh], s - w->m.live[sh].base, n);
    FUZZ_CHECK(memcmp((const void *)d, (const void *)s, n) == 0,
               "thread %d: d2d of %zu bytes: the ranges differ after the copy", w->id, n);
    check_content(w, &w->m.live[dh]);
    __atomic_fetch_add(&g_d2d_ok, 1, __ATOMIC_RELAXED);
}

/* A d2d from S into one of this thread's allocations, racing S's free. */
static void t_d2d_shared(worker *w) {
    fuzz_reader *r = &w->r;
    size_t soff = fr_u16(r) % g_s.size;
    if (!w->m.n_live) return;
    m_alloc *a = &w->m.live[fr_u8(r) % w->m.n_live];
    size_t doff = fr_u16(r) % a->size;
    size_t room = g_s.size - soff < a->size - doff ? g_s.size - soff : a->size - doff;
    size_t n = 1 + fr_u16(r) % room;
    uintptr_t dst = a->base + doff;
    int got = vram_memcpy_d2d((void *)dst, (const void *)(g_s.base + soff), n);
    if (g_trace) fprintf(stderr, "thread %d d2d from S +%zu, %zu bytes -> %d\n", w->id, soff, n, got);
    if (got == VRAM_SUCCESS) {
        /* No free of S begun by now: S was live all along, the copy read it. */
        bool s_live = __atomic_load_n(&g_s_free_calls, __ATOMIC_SEQ_CST) == 0;
        bool same = memcmp((const void *)dst, g_s.content + soff, n) == 0;
        if (s_live) {
            FUZZ_CHECK(same, "thread %d: d2d of %zu bytes from the live shared allocation "
                       "copied other bytes", w->id, n);
            observe(&w->c, path_op(0, a->device), got);
            w->c.bytes_ok[path_op(0, a->device)] += n;
        } else { /* S, or whoever took its address since, on a device the thread cannot know */
            w->excuses += !same;
            w->c.copies_unknown++;
            w->c.copies_unknown_bytes += n;
        }
        shadow_write(a, doff, (const uint8_t *)dst, n); /* what it holds now */
        return;
    }
    observe(&w->c, VRAM_OP_MEMCPY_D2D, got);
    if (got == VRAM_ERR_UNKNOWN_POINTER) {
        FUZZ_CHECK(__atomic_load_n(&g_s_free_calls, __ATOMIC_SEQ_CST) > 0,
                   "thread %d: d2d from the live shared allocation refused with 5", w->id);
    } else if (got == VRAM_ERR_OUT_OF_BOUNDS || got == VRAM_ERR_INVALID_PARAMETERS) {
        w->excuses++; /* S's address taken by a smaller allocation, or by this one (overlap) */
    } else {
        FUZZ_FAIL("thread %d: d2d of %zu bytes from offset %zu of the shared allocation: %d (%s)",
                  w->id, n, soff, got, vram_status_name(got));
    }
    check_content(w, a);
}

static void t_migrate(worker *w) {
    static const int devices[] = {0, 1, 1, 0, 2, -1, 32, 1};
    int idx;
    uintptr_t p = t_pointer(w, &idx);
    uint64_t g = t_generation(w, idx);
    uint8_t k = fr_u8(&w->r);
    int device = (k & 8) && idx >= 0 ? 1 - w->m.live[idx].device : devices[k % 8];
    bool null_new = (k & 0x70) == 0x70;
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, i = -1;
    if (!p || null_new)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    else if (g == 0)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
    else if (device < 0 || device >= FUZZ_DEVICES)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_DEVICE;
    else if ((i = model_find_gen(&w->m, g)) < 0 || w->m.live[i].base != p)
        want = VRAM_ERR_UNKNOWN_POINTER, reason = VRAM_REASON_UNKNOWN_POINTER, i = -1;
    void *np = (void *)(uintptr_t)0xbad0;
    uint64_t ng = 0xbad1;
    int got = vram_migrate((void *)p, g, device, null_new ? NULL : &np, &ng);
    expect(w, "vram_migrate", VRAM_OP_MIGRATE, got, want, reason, reason);
    if (want != VRAM_SUCCESS) {
        FUZZ_CHECK((null_new || np == NULL) && ng == 0, "thread %d: failed vram_migrate left "
                   "outputs set", w->id);
        if (i >= 0) check_content(w, &w->m.live[i]);
        return;
    }
    m_alloc *old = &w->m.live[i];
    if (old->device == device) {
        FUZZ_CHECK((uintptr_t)np == p && ng == g, "thread %d: vram_migrate to its own device moved "
                   "it", w->id);
        return;
    }
    /* A malloc on the other device, a copy, a free of the source. */
    count_ok(&w->c, VRAM_OP_MALLOC, old->size);
    count_ok(&w->c, path_op(old->device, device), old->size);
    count_ok(&w->c, VRAM_OP_FREE, 0);
    w->c.bytes_ok[VRAM_OP_MIGRATE] += old->size;
    m_alloc *na = note_alloc(w, (uintptr_t)np, old->size, ng, old->tag, device);
    na->wipe = old->wipe;
    memcpy(na->shadow, old->shadow, old->shadow_len);
    memcpy(na->known, old->known, old->shadow_len);
    check_content(w, na);
    released(w, i);
    __atomic_fetch_add(&g_migrations, 1, __ATOMIC_RELAXED);
}

/* vram_malloc_batch of small buffers; one larger than the capacity fails after the buffers
 * before it were made, and they are freed. */
static void t_batch(worker *w) {
    fuzz_reader *r = &w->r;
    size_t n = 1 + fr_u8(r) % T_BATCH_MAX, sizes[T_BATCH_MAX];
    size_t fails_at = n;
    int reason = VRAM_REASON_NONE;
    for (size_t i = 0; i < n; i++) {
        switch (fr_u8(r) % 8) {
        case 0: sizes[i] = 0; break;
        case 1: sizes[i] = SIZE_MAX - fr_u8(r) % 255; break;
        case 2: sizes[i] = FUZZ_CAPACITY + 1 + fr_u16(r); break;
        default: sizes[i] = (size_t)fr_u16(r) % T_SMALL_MAX + 1; break;
        }
    }
    uint32_t tag = fr_u8(r) % 70;
    uint8_t f = fr_u8(r);
    size_t count = f % 8 == 0 ? 0 : f % 8 == 1 ? SIZE_MAX / 8 + 1 : n;
    bool null_ptrs = f % 8 == 2, null_sizes = f % 8 == 3, with_gens = f & 8;
    void *ptrs[T_BATCH_MAX];
    uint64_t gens[T_BATCH_MAX];
    if (null_ptrs || null_sizes)
        reason = VRAM_REASON_NULL_POINTER;
    else if (count == 0)
        reason = VRAM_REASON_ZERO_SIZE;
    else if (count > n)
        reason = VRAM_REASON_SIZE_OVERFLOW; /* the arrays would wrap */
    else if (tag >= VRAM_MAX_TAGS)
        reason = VRAM_REASON_INVALID_TAG;
    for (size_t i = 0; reason == VRAM_REASON_NONE && i < n; i++) {
        if (sizes[i] == 0) reason = VRAM_REASON_ZERO_SIZE;
        else if (sizes[i] > SIZE_MAX - (VRAM_ALIGNMENT - 1)) reason = VRAM_REASON_SIZE_OVERFLOW;
    }
    for (size_t i = 0; reason == VRAM_REASON_NONE && i < n && fails_at == n; i++)
        if (sizes[i] > FUZZ_CAPACITY) fails_at = i;
    if (reason == VRAM_REASON_NONE && w->m.n_live + (int)n > T_MAX_LIVE) return;
    for (size_t i = 0; i < n; i++) ptrs[i] = (void *)(uintptr_t)0xbad0, gens[i] = 0xbad1;
    int got = vram_malloc_batch(null_ptrs ? NULL : ptrs, null_sizes ? NULL : sizes, count, tag,
                                with_gens ? gens : NULL);
    int want = reason != VRAM_REASON_NONE ? VRAM_ERR_INVALID_PARAMETERS
               : fails_at < n             ? VRAM_ERR_ALLOCATION_FAILED
                                          : VRAM_SUCCESS;
    if (g_trace) fprintf(stderr, "thread %d vram_malloc_batch(%zu) -> %d\n", w->id, count, got);
    FUZZ_CHECK(got == want, "thread %d vram_malloc_batch of %zu (count %zu): returned %d, model "
               "expects %d", w->id, n, count, got, want);
    vram_error_info e;
    vram_last_error(&e);
    FUZZ_CHECK(got == VRAM_SUCCESS || (e.status == got && e.reason == reason &&
                                       e.op == VRAM_OP_MALLOC),
               "thread %d vram_malloc_batch: last error {%d, %s, %d}", w->id, e.status,
               vram_reason_name(e.reason), e.op);
    bool written = !null_ptrs && count == n;
    for (size_t i = 0; i < n && got != VRAM_SUCCESS; i++)
        FUZZ_CHECK(ptrs[i] == (written ? NULL : (void *)(uintptr_t)0xbad0) &&
                       gens[i] == (written && with_gens ? 0 : 0xbad1),
                   "thread %d: failed vram_malloc_batch left output %zu set", w->id, i);
    if (reason != VRAM_REASON_NONE) { /* one refused malloc */
        observe(&w->c, VRAM_OP_MALLOC, got);
        return;
    }
    for (size_t i = 0; i < fails_at; i++) {
        count_ok(&w->c, VRAM_OP_MALLOC, sizes[i]);
        if (got == VRAM_SUCCESS) {
            note_alloc(w, (uintptr_t)ptrs[i], sizes[i], with_gens ? gens[i] : 0, tag, w->device);
        } else { /* made, then freed by the batch */
            count_ok(&w->c, VRAM_OP_FREE, sizes[i]);
            w->c.allocs++;
            w->c.frees++;
        }
    }
    if (got != VRAM_SUCCESS) observe(&w->c, VRAM_OP_MALLOC, got);
    __atomic_fetch_add(&g_batches, 1, __ATOMIC_RELAXED);
}

/* The pools: set, trim, stats, on devices that exist and ones that do not. */
static void t_pool(worker *w) {
    static const int devices[] = {0, 1, -1, 2, 32, 0, 1, -1};
    static const uint64_t bounds[] = {0, (uint64_t)1 << 20, (uint64_t)4 << 20, (uint64_t)16 << 20};
    fuzz_reader *r = &w->r;
    unsigned kind = fr_u8(r) % 3;
    int d = devices[fr_u8(r) % 8];
    uint64_t bytes = bounds[fr_u8(r) % 4];
    bool exists = d >= 0 && d < FUZZ_DEVICES;
    if (kind == 0) {
        expect(w, "vram_pool_set", VRAM_OP_NONE, vram_pool_set(d, bytes),
               exists ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS,
               exists ? VRAM_REASON_NONE : VRAM_REASON_INVALID_DEVICE,
               exists ? VRAM_REASON_NONE : VRAM_REASON_INVALID_DEVICE);
        w->c.pool_sets += exists;
    } else if (kind == 1) {
        bool ok = exists || d == -1;
        int got = vram_pool_trim(d, bytes == 0 ? 0 : bytes == ((uint64_t)16 << 20) ? UINT64_MAX : bytes);
        if (!ok) {
            expect(w, "vram_pool_trim", VRAM_OP_POOL_TRIM, got, VRAM_ERR_INVALID_PARAMETERS,
                   VRAM_REASON_INVALID_DEVICE, VRAM_REASON_INVALID_DEVICE);
            return;
        }
        FUZZ_CHECK(got == VRAM_SUCCESS, "thread %d: vram_pool_trim(%d): %d", w->id, d, got);
        for (int i = 0; i < FUZZ_DEVICES; i++) /* -1: one trim per device */
            if (d < 0 || i == d) count_ok(&w->c, VRAM_OP_POOL_TRIM, 0);
    } else {
        vram_pool_stats s;
        bool ok = d >= -1 && d < VRAM_MAX_DEVICES;
        expect(w, "vram_pool_stats_get", VRAM_OP_NONE, vram_pool_stats_get(d, &s, sizeof s),
               ok ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NONE, VRAM_REASON_NONE);
        if (!ok) return;
        FUZZ_CHECK(s.cached_bytes <= s.max_cached_bytes && (s.cached_blocks == 0) == (s.cached_bytes == 0) &&
                       s.dropped_bytes_total == 0 && s.oom_give_ups_total <= s.oom_retries_total &&
                       (d < 0 || (s.enabled != 0) == (s.max_cached_bytes != 0)),
                   "thread %d: pool stats of device %d: enabled %u max %llu cached %llu in %llu",
                   w->id, d, s.enabled, (unsigned long long)s.max_cached_bytes,
                   (unsigned long long)s.cached_bytes, (unsigned long long)s.cached_blocks);
    }
}

static void t_set_device(worker *w) {
    static const int devices[] = {0, 1, 1, 0, 2, -1};
    int d = devices[fr_u8(&w->r) % 6];
    bool ok = d >= 0 && d < FUZZ_DEVICES;
    expect(w, "vram_set_device", VRAM_OP_NONE, vram_set_device(d),
           ok ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS,
           ok ? VRAM_REASON_NONE : VRAM_REASON_INVALID_DEVICE,
           ok ? VRAM_REASON_NONE : VRAM_REASON_INVALID_DEVICE);
    if (ok) w->device = d;
}

static void t_alloc_wipe(worker *w) {
    int idx;
    uintptr_t p = t_pointer(w, &idx);
    uint64_t g = t_generation(w, idx);
    int policy = (int)(fr_u8(&w->r) % 3); /* 2 is no policy */
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, i = -1;
    if (!p || policy > VRAM_WIPE_ON_FREE)
        want = VRAM_ERR_INVALID_PARAMETERS;
    else if ((i = model_find_gen(&w->m, g)) < 0 || w->m.live[i].base != p || g == 0)
        want = VRAM_ERR_UNKNOWN_POINTER, reason = VRAM_REASON_UNKNOWN_POINTER;
    expect(w, "vram_set_allocation_wipe", VRAM_OP_NONE, vram_set_allocation_wipe((void *)p, g, policy),
           want, reason, reason);
    if (want == VRAM_SUCCESS) w->m.live[i].wipe = policy == VRAM_WIPE_ON_FREE;
}

/* Pinned host memory of this thread's own: blocks from the shared cache (which other threads'
 * frees fill and trims empty at any time), registrations of its own buffers, copies through
 * them, racing everyone's trims and stats. */
static void t_host(worker *w) {
    fuzz_reader *r = &w->r;
    unsigned kind = fr_u8(r) % 9;
    int b = w->n_blocks ? fr_u8(r) % w->n_blocks : -1, g = w->n_regs ? fr_u8(r) % w->n_regs : -1;
    if (kind == 0) {
        size_t bytes = (size_t)fr_u16(r) % ((size_t)64 << 10); /* 0 is refused */
        if (bytes && w->n_blocks == T_HOST_MAX) return;
        void *p = (void *)(uintptr_t)0xbad0;
        expect(w, "vram_host_alloc", VRAM_OP_HOST_ALLOC, vram_host_alloc(&p, bytes),
               bytes ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS,
               bytes ? VRAM_REASON_NONE : VRAM_REASON_ZERO_SIZE,
               bytes ? VRAM_REASON_NONE : VRAM_REASON_ZERO_SIZE);
        if (!bytes) return;
        for (size_t i = 0; i < bytes; i++)
            FUZZ_CHECK(((uint8_t *)p)[i] == 0, "thread %d: vram_host_alloc(%zu): byte %zu set",
                       w->id, bytes, i);
        w->blocks[w->n_blocks++] = (host_range){p, bytes};
        w->c.bytes_ok[VRAM_OP_HOST_ALLOC] += bytes;
    } else if (kind == 1) {
        uint8_t k = fr_u8(r);
        if (b >= 0 && k % 4 != 3) { /* its base, or inside it */
            host_range *h = &w->blocks[b];
            bool inside = k % 4 == 2;
            expect(w, "vram_host_free", VRAM_OP_HOST_FREE,
                   vram_host_free(h->p + (inside ? 1 + k % 64 : 0)),
                   inside ? VRAM_ERR_INTERIOR_POINTER : VRAM_SUCCESS,
                   inside ? VRAM_REASON_INTERIOR_POINTER : VRAM_REASON_NONE,
                   inside ? VRAM_REASON_INTERIOR_POINTER : VRAM_REASON_NONE);
            if (inside) return;
            w->c.bytes_ok[VRAM_OP_HOST_FREE] += h->bytes;
            *h = w->blocks[--w->n_blocks];
        } else { /* nobody's */
            expect(w, "vram_host_free", VRAM_OP_HOST_FREE,
                   vram_host_free((void *)(KERNEL_HALF | (uintptr_t)k << 12)),
                   VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER,
                   VRAM_REASON_UNKNOWN_POINTER);
        }
    } else if (kind == 2) {
        static const size_t keep[] = {0, (size_t)1 << 20, SIZE_MAX, 4096};
        expect(w, "vram_host_trim", VRAM_OP_NONE, vram_host_trim(keep[fr_u8(r) % 4]), 0, 0, 0);
    } else if (kind == 3) {
        size_t bytes = 1 + (size_t)fr_u16(r) % ((size_t)16 << 10);
        if (w->n_regs == T_HOST_MAX) return;
        uint8_t *p = malloc(bytes);
        FUZZ_CHECK(p, "out of host memory");
        memset(p, 0, bytes);
        expect(w, "vram_host_register", VRAM_OP_NONE, vram_host_register(p, bytes), 0, 0, 0);
        w->regs[w->n_regs++] = (host_range){p, bytes};
    } else if (kind == 4) { /* over one of its registrations or blocks, or NULL */
        uint8_t k = fr_u8(r);
        const host_range *h = k & 1 ? (g >= 0 ? &w->regs[g] : NULL) : (b >= 0 ? &w->blocks[b] : NULL);
        expect(w, "vram_host_register", VRAM_OP_NONE,
               vram_host_register(h ? h->p + k % h->bytes : NULL, 1 + k),
               VRAM_ERR_INVALID_PARAMETERS, h ? VRAM_REASON_OVERLAP : VRAM_REASON_NULL_POINTER,
               h ? VRAM_REASON_OVERLAP : VRAM_REASON_NULL_POINTER);
    } else if (kind == 5) {
        uint8_t k = fr_u8(r);
        if (g < 0) return;
        host_range *h = &w->regs[g];
        bool inside = k & 1 && h->bytes > 1;
        int want = inside ? VRAM_ERR_INTERIOR_POINTER : VRAM_SUCCESS;
        int reason = inside ? VRAM_REASON_INTERIOR_POINTER : VRAM_REASON_NONE;
        expect(w, "vram_host_unregister", VRAM_OP_NONE, vram_host_unregister(h->p + inside),
               want, reason, reason);
        if (inside) return;
        free(h->p);
        *h = w->regs[--w->n_regs];
    } else if (kind == 6) {
        vram_host_stats s;
        expect(w, "vram_host_stats_get", VRAM_OP_NONE, vram_host_stats_get(&s, sizeof s), 0, 0, 0);
        FUZZ_CHECK(s.live_count >= (uint64_t)w->n_blocks && s.registered_count >= (uint64_t)w->n_regs &&
                       s.live_bytes >= 4096 * s.live_count && s.cached_bytes % 4096 == 0 &&
                       s.staging_bytes == 0 && s.staged_copies_total == 0,
                   "thread %d: host stats: %llu blocks of %llu bytes, %llu cached, %llu "
                   "registered; the thread holds %d and %d", w->id,
                   (unsigned long long)s.live_count, (unsigned long long)s.live_bytes,
                   (unsigned long long)s.cached_bytes, (unsigned long long)s.registered_count,
                   w->n_blocks, w->n_regs);
    } else { /* a copy between an own allocation and own pinned memory, maybe async */
        bool h2d = kind == 7, async = fr_u8(r) & 1;
        const host_range *h = fr_u8(r) & 1 ? (g >= 0 ? &w->regs[g] : NULL) : (b >= 0 ? &w->blocks[b] : NULL);
        if (!h || !w->m.n_live) return;
        m_alloc *a = &w->m.live[fr_u8(r) % w->m.n_live];
        size_t off = fr_u16(r) % a->size, hoff = fr_u16(r) % h->bytes;
        size_t room = a->size - off < h->bytes - hoff ? a->size - off : h->bytes - hoff;
        size_t n = 1 + fr_u16(r) % room;
        if (fr_u8(r) % 4 == 0 && n == room && n < h->bytes - hoff) n++; /* one past the allocation */
        int want = n > a->size - off ? VRAM_ERR_OUT_OF_BOUNDS : VRAM_SUCCESS;
        int reason = want ? VRAM_REASON_OUT_OF_BOUNDS : VRAM_REASON_NONE;
        uint8_t *host = h->p + hoff;
        if (h2d) fuzz_fill(host, n, (uint64_t)w->id << 32 | n);
        vram_completion *done = NULL;
        void *dev = (void *)(a->base + off);
        int got = h2d ? (async ? vram_memcpy_h2d_async(dev, host, n, 0, &done) : vram_memcpy_h2d(dev, host, n))
                      : (async ? vram_memcpy_d2h_async(host, dev, n, 0, &done) : vram_memcpy_d2h(host, dev, n));
        int op = h2d ? VRAM_OP_MEMCPY_H2D : VRAM_OP_MEMCPY_D2H;
        expect(w, h2d ? "vram_memcpy_h2d (pinned)" : "vram_memcpy_d2h (pinned)", op, got, want,
               reason, reason);
        if (async) t_completion(w, done, got);
        if (want != VRAM_SUCCESS) {
            check_content(w, a);
            return;
        }
        w->c.bytes_ok[op] += n;
        if (h2d) {
            shadow_write(a, off, host, n);
            check_content(w, a);
        } else {
            size_t bad = shadow_read(a, off, host, n);
            FUZZ_CHECK(bad == SIZE_MAX, "thread %d: pinned d2h: byte %zu differs", w->id, bad);
        }
    }
}

/* Give back this thread's pinned memory. */
static void t_host_release(worker *w) {
    while (w->n_blocks) {
        host_range *h = &w->blocks[--w->n_blocks];
        expect(w, "final vram_host_free", VRAM_OP_HOST_FREE, vram_host_free(h->p), 0, 0, 0);
        w->c.bytes_ok[VRAM_OP_HOST_FREE] += h->bytes;
    }
    while (w->n_regs) {
        host_range *h = &w->regs[--w->n_regs];
        expect(w, "final vram_host_unregister", VRAM_OP_NONE, vram_host_unregister(h->p), 0, 0, 0);
        free(h->p);
    }
}

static void t_read_shared(worker *w) {
    fuzz_reader *r = &w->r;
    size_t off = fr_u16(r) % g_s.size;
    size_t n = 1 + fr_u16(r) % (g_s.size - off);
    uint8_t *buf = malloc(n);
    FUZZ_CHECK(buf, "out of host memory");
    int got = vram_memcpy_d2h(buf, (const void *)(g_s.base + off), n);
    if (g_trace) fprintf(stderr, "thread %d d2h from S +%zu, %zu bytes -> %d\n", w->id, off, n, got);
    observe(&w->c, VRAM_OP_MEMCPY_D2H, got);
    if (got == VRAM_SUCCESS) {
        w->c.bytes_ok[VRAM_OP_MEMCPY_D2H] += n;
        if (w->freed_shared || memcmp(buf, g_s.content + off, n) != 0) w->excuses++;
    } else if (got == VRAM_ERR_UNKNOWN_POINTER) {
        /* Refused as freed: a free of S must have begun before this copy. */
        FUZZ_CHECK(__atomic_load_n(&g_s_free_calls, __ATOMIC_SEQ_CST) > 0,
                   "thread %d: d2h from the live shared allocation refused with 5", w->id);
        vram_error_info e;
        vram_last_error(&e);
        FUZZ_CHECK(e.reason == VRAM_REASON_FREED_POINTER || e.reason == VRAM_REASON_UNKNOWN_POINTER,
                   "thread %d: d2h from S refused for %s", w->id, vram_reason_name(e.reason));
    } else if (got == VRAM_ERR_OUT_OF_BOUNDS) {
        w->excuses++;
    } else {
        FUZZ_FAIL("thread %d: d2h of %zu bytes at offset %zu of the shared allocation: %d (%s)",
                  w->id, n, off, got, vram_status_name(got));
    }
    free(buf);
}

static void t_free_shared(worker *w) {
    __atomic_fetch_add(&g_s_free_calls, 1, __ATOMIC_SEQ_CST);
    int got = vram_free_ex((void *)g_s.base, g_s.gen);
    expect(w, "vram_free_ex(shared)", VRAM_OP_FREE, got, VRAM_SUCCESS, 0, 0);
    w->freed_shared = true;
}

static void t_get_info(worker *w) {
    unsigned kind = fr_u8(&w->r) % 5;
    size_t f = 7, t = 7;
    size_t *fp = kind == 1 || kind == 3 ? NULL : &f;
    size_t *tp = kind == 2 || kind == 3 ? NULL : &t;
    bool ok = fp && tp;
    expect(w, "vram_get_info", VRAM_OP_GET_INFO, vram_get_info(fp, tp),
           ok ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS,
           ok ? VRAM_REASON_NONE : VRAM_REASON_NULL_POINTER,
           ok ? VRAM_REASON_NONE : VRAM_REASON_NULL_POINTER);
    uint64_t own = w->m.dev_rounded[w->device];
    if (ok)
        FUZZ_CHECK(t == FUZZ_CAPACITY && f <= t - own,
                   "thread %d: vram_get_info free %zu total %zu with %llu of its own live on "
                   "device %d", w->id, f, t, (unsigned long long)own, w->device);
}

static void t_verify(worker *w) {
    if (!w->m.n_live) return;
    m_alloc *a = &w->m.live[fr_u8(&w->r) % w->m.n_live];
    uint8_t *buf = malloc(a->shadow_len);
    FUZZ_CHECK(buf, "out of host memory");
    expect(w, "vram_memcpy_d2h (verify)", VRAM_OP_MEMCPY_D2H,
           vram_memcpy_d2h(buf, (const void *)a->base, a->shadow_len), VRAM_SUCCESS, 0, 0);
    w->c.bytes_ok[VRAM_OP_MEMCPY_D2H] += a->shadow_len;
    size_t bad = shadow_read(a, 0, buf, a->shadow_len);
    FUZZ_CHECK(bad == SIZE_MAX, "thread %d: verify: byte %zu differs", w->id, bad);
    free(buf);
}

static void *run_worker(void *arg) {
    worker *w = arg;
    pthread_barrier_wait(&g_start);
    for (int ops = 0; ops < T_MAX_OPS && !fr_empty(&w->r); ops++) {
        switch (fr_u8(&w->r) % 24) {
        case 0: case 1: t_malloc(w, false, false); break;
        case 2: t_malloc(w, true, false); break;
        case 3: t_free(w); break;
        case 4: t_free_ex(w, false); break;
        case 5: t_copy(w, true, false); break;
        case 6: t_copy(w, false, false); break;
        case 7: case 8: t_read_shared(w); break;
        case 9: t_free_shared(w); break;
        case 10: t_get_info(w); break;
        case 11: t_verify(w); break;
        case 12: t_d2d(w, false); break;
        case 13: t_d2d_shared(w); break;
        case 14: t_migrate(w); break;
        case 15: t_batch(w); break;
        case 16: t_pool(w); break;
        case 17: t_set_device(w); break;
        case 18: t_alloc_wipe(w); break;
        case 19: t_host(w); break;
        case 20: t_copy(w, fr_u8(&w->r) & 1, true); break;
        case 21: t_d2d(w, true); break;
        case 22: t_malloc(w, true, true); break;
        default: t_free_ex(w, true); break;
        }
        __atomic_fetch_add(&g_thread_ops, 1, __ATOMIC_RELAXED);
    }
    pthread_barrier_wait(&g_parked); /* the main thread checks the registry */
    pthread_barrier_wait(&g_resume);
    t_host_release(w);
    while (w->m.n_live) { /* free everything, concurrently with the others */
        m_alloc *a = &w->m.live[0];
        check_content(w, a);
        expect(w, "final vram_free_ex", VRAM_OP_FREE, vram_free_ex((void *)a->base, a->gen ? a->gen : 0),
               a->gen ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_GENERATION,
               VRAM_REASON_INVALID_GENERATION);
        if (!a->gen) expect(w, "final vram_free", VRAM_OP_FREE, vram_free((void *)a->base), 0, 0, 0);
        released(w, 0);
    }
    return NULL;
}

static void registry(int device, vram_registry_stats *s) {
    FUZZ_CHECK(vram_registry_stats_get(device, s, sizeof *s) == VRAM_SUCCESS, "registry stats");
}

static void print_summary(void) {
    if (!getenv("VRAMOBS_FUZZ_STATS")) return;
    fprintf(stderr, "vramobs fuzz_registry_threads: %llu inputs, %llu thread operations, %llu "
            "device-to-device copies, %llu migrations, %llu batches (%s between devices)\n",
            (unsigned long long)g_inputs, (unsigned long long)g_thread_ops,
            (unsigned long long)g_d2d_ok, (unsigned long long)g_migrations,
            (unsigned long long)g_batches, g_peer ? "peer to peer" : "staged");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_peer = fuzz_select_host_backend("0");
    atexit(print_summary);
    g_trace = getenv("VRAMOBS_FUZZ_TRACE") != NULL;
    return 0;
}

/* Everything observed in this input: the main thread's calls and every worker's. */
static counts sum_counts(uint64_t *excuses) {
    counts sum = g_main;
    *excuses = 0;
    for (int i = 0; i < FUZZ_THREADS; i++) {
        const counts *c = &g_workers[i].c;
        *excuses += g_workers[i].excuses;
        sum.allocs += c->allocs;
        sum.frees += c->frees;
        sum.repeats += c->repeats;
        sum.pool_sets += c->pool_sets;
        sum.copies_unknown += c->copies_unknown;
        sum.copies_unknown_bytes += c->copies_unknown_bytes;
        sum.immediate += c->immediate;
        for (int op = 0; op < VRAM_OP_COUNT_; op++) {
            sum.calls[op] += c->calls[op];
            sum.bytes_ok[op] += c->bytes_ok[op];
            for (int k = 0; k < VRAM_STATUS_CAPACITY; k++) sum.by_status[op][k] += c->by_status[op][k];
            for (int k = 0; k < VRAM_REASON_CAPACITY; k++) sum.by_reason[op][k] += c->by_reason[op][k];
        }
    }
    return sum;
}

/* The aggregates of this input against what was observed. pool_trim: each successful
 * pool_set may have counted one, of bytes nobody observed. Copies from S after a free of it
 * began: counted under a path the thread cannot know, so the three copies between
 * allocations are compared in all. */
FUZZ_NO_COVERAGE static void check_aggregates(const vram_stats *before, const counts *sum) {
    vram_stats after;
    FUZZ_CHECK(vram_stats_get(-1, &after, sizeof after) == VRAM_SUCCESS, "stats");
    uint64_t copies[3] = {0, 0, 0}; /* calls, successes, bytes of the three, observed */
    for (int op = 0; op < VRAM_OP_COUNT_; op++) {
        const vram_op_stats *a = &after.ops[op], *b = &before->ops[op];
        uint64_t calls = a->calls - b->calls, ok = a->by_status[0] - b->by_status[0],
                 bytes = a->bytes_ok - b->bytes_ok;
        bool copy = op == VRAM_OP_MEMCPY_D2D || op == VRAM_OP_MEMCPY_P2P || op == VRAM_OP_MEMCPY_STAGED;
        if (op == VRAM_OP_POOL_TRIM) {
            FUZZ_CHECK(calls >= sum->calls[op] && calls - sum->calls[op] <= sum->pool_sets &&
                           ok - sum->by_status[op][0] == calls - sum->calls[op],
                       "pool_trim: %llu calls (%llu ok) in this input; observed %llu (%llu ok) "
                       "and %llu pool_set calls", (unsigned long long)calls,
                       (unsigned long long)ok, (unsigned long long)sum->calls[op],
                       (unsigned long long)sum->by_status[op][0],
                       (unsigned long long)sum->pool_sets);
        } else if (copy && sum->copies_unknown) {
            FUZZ_CHECK(calls >= sum->calls[op] && ok >= sum->by_status[op][0] &&
                           bytes >= sum->bytes_ok[op],
                       "%s: %llu calls, %llu bytes ok; observed at least %llu, %llu",
                       vram_op_name(op), (unsigned long long)calls, (unsigned long long)bytes,
                       (unsigned long long)sum->calls[op], (unsigned long long)sum->bytes_ok[op]);
            copies[0] += calls - sum->calls[op];
            copies[1] += ok - sum->by_status[op][0];
            copies[2] += bytes - sum->bytes_ok[op];
        } else {
            FUZZ_CHECK(calls == sum->calls[op] && bytes == sum->bytes_ok[op],
                       "%s: %llu calls, %llu bytes ok in this input; observed %llu, %llu",
                       vram_op_name(op), (unsigned long long)calls, (unsigned long long)bytes,
                       (unsigned long long)sum->calls[op], (unsigned long long)sum->bytes_ok[op]);
        }
        for (int k = 1; k < VRAM_STATUS_CAPACITY; k++)
            FUZZ_CHECK(a->by_status[k] - b->by_status[k] == sum->by_status[op][k],
                       "%s: %llu calls returned %d; observed %llu", vram_op_name(op),
                       (unsigned long long)(a->by_status[k] - b->by_status[k]), k,
                       (unsigned long long)sum->by_status[op][k]);
        if (!copy || !sum->copies_unknown)
            FUZZ_CHECK(ok == sum->by_status[op][0] || op == VRAM_OP_POOL_TRIM,
                       "%s: %llu calls succeeded; observed %llu", vram_op_name(op),
                       (unsigned long long)ok, (unsigned long long)sum->by_status[op][0]);
        for (int k = 0; k < VRAM_REASON_CAPACITY; k++)
            FUZZ_CHECK(a->refused_by_reason[k] - b->refused_by_reason[k] == sum->by_reason[op][k],
                       "%s: %llu refusals for %s; observed %llu", vram_op_name(op),
                       (unsigned long long)(a->refused_by_reason[k] - b->refused_by_reason[k]),
                       vram_reason_name(k), (unsigned long long)sum->by_reason[op][k]);
    }
    FUZZ_CHECK(copies[0] == sum->copies_unknown && copies[1] == sum->copies_unknown &&
                   copies[2] == sum->copies_unknown_bytes,
               "copies between allocations: %llu calls, %llu ok, %llu bytes unaccounted for; "
               "%llu copies from a reused shared address of %llu bytes",
               (unsigned long long)copies[0], (unsigned long long)copies[1],
               (unsigned long long)copies[2], (unsigned long long)sum->copies_unknown,
               (unsigned long long)sum->copies_unknown_bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_reader r = {data, size};
    g_inputs++;
    memset(&g_main, 0, sizeof g_main);
    vram_stats before;
    vram_registry_stats rb, rs;
    vram_async_stats ab, as;
    FUZZ_CHECK(vram_stats_get(-1, &before, sizeof before) == VRAM_SUCCESS, "stats");
    FUZZ_CHECK(vram_async_stats_get(&ab, sizeof ab) == VRAM_SUCCESS, "async stats");
    registry(-1, &rb);
    FUZZ_CHECK(rb.live_count == 0, "%llu live before the input", (unsigned long long)rb.live_count);

    /* The shared allocation, filled with a known pattern. */
    g_s.size = (size_t)fr_u16(&r) % T_SMALL_MAX + 1;
    uint32_t tag = fr_u8(&r) % VRAM_MAX_TAGS;
    fuzz_fill(g_s.content, g_s.size, fr_u64(&r));
    void *p = NULL;
    int got = vram_malloc_ex(&p, g_s.size, tag, &g_s.gen);
    FUZZ_CHECK(got == VRAM_SUCCESS, "shared allocation: %d", got);
    observe(&g_main, VRAM_OP_MALLOC, got);
    g_main.allocs++;
    g_main.bytes_ok[VRAM_OP_MALLOC] += g_s.size;
    g_s.base = (uintptr_t)p;
    got = vram_memcpy_h2d(p, g_s.content, g_s.size);
    FUZZ_CHECK(got == VRAM_SUCCESS, "shared allocation h2d: %d", got);
    observe(&g_main, VRAM_OP_MEMCPY_H2D, got);
    g_main.bytes_ok[VRAM_OP_MEMCPY_H2D] += g_s.size;
    __atomic_store_n(&g_s_reused, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_s_free_calls, 0, __ATOMIC_SEQ_CST);

    /* The rest, in FUZZ_THREADS equal streams. */
    size_t share = r.n / FUZZ_THREADS;
    for (int i = 0; i < FUZZ_THREADS; i++) {
        worker *w = &g_workers[i];
        memset(w, 0, sizeof *w);
        w->id = i;
        w->r.p = r.p + (size_t)i * share;
        w->r.n = i == FUZZ_THREADS - 1 ? r.n - (size_t)i * share : share;
        model_init(&w->m);
    }
    for (int i = 0; i < FUZZ_THREADS; i++)
        FUZZ_CHECK(pthread_create(&g_workers[i].thread, NULL, run_worker, &g_workers[i]) == 0,
                   "pthread_create");
    pthread_barrier_wait(&g_start);
    pthread_barrier_wait(&g_parked);

    /* Everyone is parked: the registry holds exactly the models' allocations (and S unless
     * some thread freed it), in all and per device. */
    uint64_t count = 0, bytes = 0, tag_count[VRAM_MAX_TAGS] = {0}, tag_bytes[VRAM_MAX_TAGS] = {0};
    uint64_t dev_count[FUZZ_DEVICES] = {0}, dev_bytes[FUZZ_DEVICES] = {0};
    for (int i = 0; i < FUZZ_THREADS; i++) {
        const model *m = &g_workers[i].m;
        count += (uint64_t)m->n_live;
        bytes += m->live_bytes;
        for (int t = 0; t < VRAM_MAX_TAGS; t++) {
            tag_count[t] += m->tag_count[t];
            tag_bytes[t] += m->tag_bytes[t];
        }
        for (int d = 0; d < FUZZ_DEVICES; d++) {
            dev_count[d] += m->dev_count[d];
            dev_bytes[d] += m->dev_bytes[d];
        }
    }
    bool s_live = __atomic_load_n(&g_s_free_calls, __ATOMIC_SEQ_CST) == 0;
    if (s_live) {
        count++;
        bytes += g_s.size;
        tag_count[tag]++;
        tag_bytes[tag] += g_s.size;
        dev_count[0]++;
        dev_bytes[0] += g_s.size;
    }
    registry(-1, &rs);
    FUZZ_CHECK(rs.live_count == count && rs.live_bytes == bytes,
               "parked: registry %llu live, %llu bytes; models %llu, %llu",
               (unsigned long long)rs.live_count, (unsigned long long)rs.live_bytes,
               (unsigned long long)count, (unsigned long long)bytes);
    for (int t = 0; t < VRAM_MAX_TAGS; t++)
        FUZZ_CHECK(rs.tag_live_count[t] == tag_count[t] && rs.tag_live_bytes[t] == tag_bytes[t],
                   "parked: tag %d: registry %llu live, %llu bytes; models %llu, %llu", t,
                   (unsigned long long)rs.tag_live_count[t], (unsigned long long)rs.tag_live_bytes[t],
                   (unsigned long long)tag_count[t], (unsigned long long)tag_bytes[t]);
    for (int d = 0; d < FUZZ_DEVICES; d++) {
        registry(d, &rs);
        FUZZ_CHECK(rs.live_count == dev_count[d] && rs.live_bytes == dev_bytes[d],
                   "parked: device %d: registry %llu live, %llu bytes; models %llu, %llu", d,
                   (unsigned long long)rs.live_count, (unsigned long long)rs.live_bytes,
                   (unsigned long long)dev_count[d], (unsigned long long)dev_bytes[d]);
    }
    pthread_barrier_wait(&g_resume);
    for (int i = 0; i < FUZZ_THREADS; i++) pthread_join(g_workers[i].thread, NULL);

    /* S: freed by exactly one call, the others (and this one, if a thread freed it first)
     * are repeated frees. */
    got = vram_free_ex((void *)g_s.base, g_s.gen);
    FUZZ_CHECK(got == VRAM_SUCCESS, "final free of the shared allocation: %d", got);
    observe(&g_main, VRAM_OP_FREE, got);
    g_main.frees++;
    g_main.bytes_ok[VRAM_OP_FREE] += g_s.size;
    uint64_t s_calls = (uint64_t)__atomic_load_n(&g_s_free_calls, __ATOMIC_SEQ_CST) + 1;
    g_main.repeats += s_calls - 1;

    /* The pools off (a trim each, where blocks are cached): nothing cached, nothing handed
     * out, and every device's capacity back. */
    for (int d = 0; d < FUZZ_DEVICES; d++) {
        FUZZ_CHECK(vram_pool_set(d, 0) == VRAM_SUCCESS, "vram_pool_set(%d, 0)", d);
        g_main.pool_sets++;
    }
    vram_pool_stats ps;
    FUZZ_CHECK(vram_pool_stats_get(-1, &ps, sizeof ps) == VRAM_SUCCESS, "pool stats");
    FUZZ_CHECK(ps.enabled == 0 && ps.cached_bytes == 0 && ps.cached_blocks == 0 &&
                   ps.live_blocks == 0 && ps.slack_bytes == 0,
               "after the input: %u pools on, %llu bytes cached in %llu blocks, %llu handed out, "
               "slack %llu", ps.enabled, (unsigned long long)ps.cached_bytes,
               (unsigned long long)ps.cached_blocks, (unsigned long long)ps.live_blocks,
               (unsigned long long)ps.slack_bytes);
    /* Pinned memory: every block freed and every buffer unregistered by its thread; the cache
     * trimmed, nothing is left. Async calls: all done at their call. */
    FUZZ_CHECK(vram_host_trim(0) == VRAM_SUCCESS, "vram_host_trim(0)");
    vram_host_stats hs;
    FUZZ_CHECK(vram_host_stats_get(&hs, sizeof hs) == VRAM_SUCCESS, "host stats");
    FUZZ_CHECK(hs.live_count == 0 && hs.live_bytes == 0 && hs.cached_bytes == 0 &&
                   hs.registered_count == 0 && hs.registered_bytes == 0,
               "after the input: %llu pinned blocks (%llu bytes), %llu cached, %llu registered "
               "(%llu bytes)", (unsigned long long)hs.live_count,
               (unsigned long long)hs.live_bytes, (unsigned long long)hs.cached_bytes,
               (unsigned long long)hs.registered_count, (unsigned long long)hs.registered_bytes);
    for (int d = FUZZ_DEVICES - 1; d >= 0; d--) {
        size_t f = 0, t = 0;
        FUZZ_CHECK(vram_set_device(d) == VRAM_SUCCESS, "vram_set_device(%d)", d);
        got = vram_get_info(&f, &t);
        observe(&g_main, VRAM_OP_GET_INFO, got);
        FUZZ_CHECK(got == VRAM_SUCCESS && f == FUZZ_CAPACITY && t == FUZZ_CAPACITY,
                   "after the input: device %d has %zu of %zu bytes free", d, f, t);
    }

    uint64_t excuses;
    counts sum = sum_counts(&excuses);
    FUZZ_CHECK(excuses == 0 || __atomic_load_n(&g_s_reused, __ATOMIC_SEQ_CST),
               "%llu reads of the shared allocation returned other bytes or 6 though its address "
               "was never reused", (unsigned long long)excuses);

    registry(-1, &rs);
    FUZZ_CHECK(rs.live_count == 0 && rs.live_bytes == 0 && rs.live_rounded_bytes == 0,
               "after the input: %llu live, %llu bytes", (unsigned long long)rs.live_count,
               (unsigned long long)rs.live_bytes);
    FUZZ_CHECK(rs.allocs_total - rb.allocs_total == sum.allocs &&
                   rs.frees_total - rb.frees_total == sum.frees &&
                   rs.repeated_frees_total - rb.repeated_frees_total == sum.repeats,
               "registry: %llu allocations, %llu frees, %llu repeated frees in this input; "
               "observed %llu, %llu, %llu",
               (unsigned long long)(rs.allocs_total - rb.allocs_total),
               (unsigned long long)(rs.frees_total - rb.frees_total),
               (unsigned long long)(rs.repeated_frees_total - rb.repeated_frees_total),
               (unsigned long long)sum.allocs, (unsigned long long)sum.frees,
               (unsigned long long)sum.repeats);
    FUZZ_CHECK(rs.lost_total == 0 && rs.stale_evicted_total == 0, "lost %llu, evicted %llu",
               (unsigned long long)rs.lost_total, (unsigned long long)rs.stale_evicted_total);
    FUZZ_CHECK(vram_async_stats_get(&as, sizeof as) == VRAM_SUCCESS, "async stats");
    FUZZ_CHECK(as.pending == 0 && as.enqueued_total == ab.enqueued_total &&
                   as.immediate_total - ab.immediate_total == sum.immediate &&
                   as.drained_total == ab.drained_total,
               "async: %llu pending, %llu enqueued, %llu done at the call in this input; "
               "observed %llu done at the call", (unsigned long long)as.pending,
               (unsigned long long)(as.enqueued_total - ab.enqueued_total),
               (unsigned long long)(as.immediate_total - ab.immediate_total),
               (unsigned long long)sum.immediate);
    check_aggregates(&before, &sum);
    for (int i = 0; i < FUZZ_THREADS; i++) model_clear(&g_workers[i].m);
    return 0;
}

__attribute__((constructor)) static void init_barriers(void) {
    pthread_barrier_init(&g_start, NULL, FUZZ_THREADS + 1);
    pthread_barrier_init(&g_parked, NULL, FUZZ_THREADS + 1);
    pthread_barrier_init(&g_resume, NULL, FUZZ_THREADS + 1);
}
