/* libFuzzer target: the registry under concurrency, on the host backend.
 *
 * The input is split into FUZZ_THREADS operation streams run at once by as many threads,
 * each on its own shadow model (it allocates, frees and copies only its own allocations, so
 * every code it gets is predictable), while all of them also read and free one shared
 * allocation S made before they start: d2h copies from S race its free (a copy pins S, so it
 * either reads S's bytes or is refused with 5, never touches freed memory: ASan watches),
 * and several threads free S with its generation (exactly one releases it, the others get 0
 * as a repeated free).
 *
 * What a thread does is chosen so that no other thread can change its outcome: pointers
 * stay within its own allocations' blocks (base .. base + rounded size), foreign addresses
 * are kernel-half values that can never be allocated, and freed pointers are freed again
 * only with their generation (a C-API free of a stale pointer could free another thread's
 * allocation at the reused address, which the header documents). Allocation sizes are
 * either small (always fit: FUZZ_THREADS x T_MAX_LIVE x 64 KiB is far below the capacity)
 * or larger than the whole capacity (always fail with 1).
 *
 * Checked: every code (and reason, from the thread's last error) against the thread's
 * model; content of each thread's allocations; after the streams, with all threads parked
 * at a barrier, the registry's live count, bytes and per-tag counts against the sum of the
 * models; after the threads free everything, nothing live, the allocation, free and
 * repeated-free totals, and the per-operation aggregates of vram_stats_get() against the
 * sum of what every thread observed. */
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
#define KERNEL_HALF ((uintptr_t)1 << 63) /* never a user-space address on x86-64/arm64 */

typedef struct counts {
    uint64_t calls[VRAM_OP_COUNT_];
    uint64_t by_status[VRAM_OP_COUNT_][VRAM_STATUS_CAPACITY];
    uint64_t by_reason[VRAM_OP_COUNT_][VRAM_REASON_CAPACITY];
    uint64_t bytes_ok[VRAM_OP_COUNT_];
    uint64_t allocs, frees, repeats; /* registry books */
} counts;

typedef struct worker {
    pthread_t thread;
    int id;
    fuzz_reader r;
    model m;
    uint64_t last_gen;
    bool freed_shared;
    uint64_t excuses; /* outcomes on S that only a reuse of S's address explains */
    counts c;
} worker;

/* The shared allocation. */
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

static uint64_t g_inputs, g_thread_ops;

/* Count a call as observed (code and reason from this thread's last error). */
FUZZ_NO_COVERAGE static void observe(counts *c, int op, int got) {
    c->calls[op]++;
    if (got >= 0 && got < VRAM_STATUS_CAPACITY) c->by_status[op][got]++;
    if (got != VRAM_SUCCESS) {
        vram_error_info e;
        vram_last_error(&e);
        if (e.reason > 0 && e.reason < VRAM_REASON_CAPACITY) c->by_reason[op][e.reason]++;
    }
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

static void t_malloc(worker *w, bool ex) {
    int want, reason;
    size_t bytes = pick_size(&w->r, &want, &reason);
    uint32_t tag = ex ? fr_u8(&w->r) % 71 : 0;
    /* Checked after the size, before the capacity. */
    if ((want == VRAM_SUCCESS || want == VRAM_ERR_ALLOCATION_FAILED) && tag >= VRAM_MAX_TAGS)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_TAG;
    if (want == VRAM_SUCCESS && w->m.n_live >= T_MAX_LIVE) return;
    void *p = (void *)(uintptr_t)0xbad0;
    uint64_t g = 0xbad1;
    int got = ex ? vram_malloc_ex(&p, bytes, tag, &g) : vram_malloc(&p, bytes);
    expect(w, ex ? "vram_malloc_ex" : "vram_malloc", VRAM_OP_MALLOC, got, want, reason, reason);
    if (want != VRAM_SUCCESS) {
        FUZZ_CHECK(p == NULL && (!ex || g == 0), "thread %d: failed allocation left outputs set",
                   w->id);
        return;
    }
    if (ex) {
        FUZZ_CHECK(g > w->last_gen, "thread %d: generation %llu after %llu", w->id,
                   (unsigned long long)g, (unsigned long long)w->last_gen);
        w->last_gen = g;
    }
    uintptr_t base = (uintptr_t)p;
    size_t need = fuzz_rounded(bytes);
    if (base < g_s.base + fuzz_rounded(g_s.size) && g_s.base < base + need)
        __atomic_store_n(&g_s_reused, 1, __ATOMIC_SEQ_CST);
    model_add(&w->m, base, bytes, ex ? g : 0, tag);
    w->c.allocs++;
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

static void released(worker *w, int i) {
    w->c.frees++;
    w->c.bytes_ok[VRAM_OP_FREE] += w->m.live[i].size;
    model_remove(&w->m, i);
}

static void t_free(worker *w) {
    int idx;
    uintptr_t p = t_pointer(w, &idx);
    int live = p ? model_find_base(&w->m, p) : -1;
    if (live >= 0) { /* check the content before it goes */
        size_t bad = shadow_check_in_place(&w->m.live[live]);
        FUZZ_CHECK(bad == SIZE_MAX, "thread %d: device byte %zu changed", w->id, bad);
    }
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

static void t_free_ex(worker *w) {
    int idx;
    uintptr_t p = t_pointer(w, &idx);
    fuzz_reader *r = &w->r;
    uint64_t g;
    switch (fr_u8(r) % 6) {
    case 0: case 1: g = idx >= 0 ? w->m.live[idx].gen : 0; break;
    case 2: g = 0; break;
    case 3: g = w->m.n_freed ? w->m.freed[fr_u8(r) % w->m.n_freed].gen : 0; break; /* stale */
    case 4: g = w->m.n_live ? w->m.live[fr_u8(r) % w->m.n_live].gen : 0; break;
    default: g = UINT64_MAX - fr_u8(r); break; /* never issued */
    }
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
    if (release >= 0) {
        size_t bad = shadow_check_in_place(&w->m.live[release]);
        FUZZ_CHECK(bad == SIZE_MAX, "thread %d: device byte %zu changed", w->id, bad);
    }
    expect(w, "vram_free_ex", VRAM_OP_FREE, vram_free_ex((void *)p, g), want, reason, reason);
    if (repeat) w->c.repeats++;
    if (release >= 0) released(w, release);
}

static void t_copy(worker *w, bool h2d) {
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
    /* 5 for an address outside every live allocation: freed_pointer where an old freed start
     * sits there (mmap reuse), else unknown_pointer. */
    expect(w, h2d ? "vram_memcpy_h2d" : "vram_memcpy_d2h", op, copy_run(&c), c.pred.status,
           c.pred.reason,
           c.pred.status == VRAM_ERR_UNKNOWN_POINTER ? VRAM_REASON_FREED_POINTER : c.pred.reason);
    if (c.pred.status == VRAM_SUCCESS) w->c.bytes_ok[op] += c.n;
    copy_finish(&w->m, &c);
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
    if (ok)
        FUZZ_CHECK(t == FUZZ_CAPACITY && f <= t - w->m.live_rounded,
                   "thread %d: vram_get_info free %zu total %zu with %llu of its own live", w->id,
                   f, t, (unsigned long long)w->m.live_rounded);
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
        switch (fr_u8(&w->r) % 12) {
        case 0: case 1: t_malloc(w, false); break;
        case 2: t_malloc(w, true); break;
        case 3: t_free(w); break;
        case 4: t_free_ex(w); break;
        case 5: t_copy(w, true); break;
        case 6: t_copy(w, false); break;
        case 7: case 8: t_read_shared(w); break;
        case 9: t_free_shared(w); break;
        case 10: t_get_info(w); break;
        default: t_verify(w); break;
        }
        __atomic_fetch_add(&g_thread_ops, 1, __ATOMIC_RELAXED);
    }
    pthread_barrier_wait(&g_parked); /* the main thread checks the registry */
    pthread_barrier_wait(&g_resume);
    while (w->m.n_live) { /* free everything, concurrently with the others */
        m_alloc *a = &w->m.live[0];
        size_t bad = shadow_check_in_place(a);
        FUZZ_CHECK(bad == SIZE_MAX, "thread %d: device byte %zu changed", w->id, bad);
        expect(w, "final vram_free_ex", VRAM_OP_FREE, vram_free_ex((void *)a->base, a->gen ? a->gen : 0),
               a->gen ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_GENERATION,
               VRAM_REASON_INVALID_GENERATION);
        if (!a->gen) expect(w, "final vram_free", VRAM_OP_FREE, vram_free((void *)a->base), 0, 0, 0);
        released(w, 0);
    }
    return NULL;
}

static void registry(vram_registry_stats *s) {
    FUZZ_CHECK(vram_registry_stats_get(-1, s, sizeof *s) == VRAM_SUCCESS, "registry stats");
}

static void print_summary(void) {
    if (!getenv("VRAMOBS_FUZZ_STATS")) return;
    fprintf(stderr, "vramobs fuzz_registry_threads: %llu inputs, %llu thread operations\n",
            (unsigned long long)g_inputs, (unsigned long long)g_thread_ops);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fuzz_select_host_backend();
    atexit(print_summary);
    g_trace = getenv("VRAMOBS_FUZZ_TRACE") != NULL;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_reader r = {data, size};
    g_inputs++;
    memset(&g_main, 0, sizeof g_main);
    vram_stats before;
    vram_registry_stats rb, rs;
    FUZZ_CHECK(vram_stats_get(-1, &before, sizeof before) == VRAM_SUCCESS, "stats");
    registry(&rb);
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
     * some thread freed it). */
    uint64_t count = 0, bytes = 0, tag_count[VRAM_MAX_TAGS] = {0}, tag_bytes[VRAM_MAX_TAGS] = {0};
    for (int i = 0; i < FUZZ_THREADS; i++) {
        const model *m = &g_workers[i].m;
        count += (uint64_t)m->n_live;
        bytes += m->live_bytes;
        for (int t = 0; t < VRAM_MAX_TAGS; t++) {
            tag_count[t] += m->tag_count[t];
            tag_bytes[t] += m->tag_bytes[t];
        }
    }
    bool s_live = __atomic_load_n(&g_s_free_calls, __ATOMIC_SEQ_CST) == 0;
    if (s_live) {
        count++;
        bytes += g_s.size;
        tag_count[tag]++;
        tag_bytes[tag] += g_s.size;
    }
    registry(&rs);
    FUZZ_CHECK(rs.live_count == count && rs.live_bytes == bytes,
               "parked: registry %llu live, %llu bytes; models %llu, %llu",
               (unsigned long long)rs.live_count, (unsigned long long)rs.live_bytes,
               (unsigned long long)count, (unsigned long long)bytes);
    for (int t = 0; t < VRAM_MAX_TAGS; t++)
        FUZZ_CHECK(rs.tag_live_count[t] == tag_count[t] && rs.tag_live_bytes[t] == tag_bytes[t],
                   "parked: tag %d: registry %llu live, %llu bytes; models %llu, %llu", t,
                   (unsigned long long)rs.tag_live_count[t], (unsigned long long)rs.tag_live_bytes[t],
                   (unsigned long long)tag_count[t], (unsigned long long)tag_bytes[t]);
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

    uint64_t excuses = 0;
    counts sum = g_main;
    for (int i = 0; i < FUZZ_THREADS; i++) {
        const counts *c = &g_workers[i].c;
        excuses += g_workers[i].excuses;
        sum.allocs += c->allocs;
        sum.frees += c->frees;
        sum.repeats += c->repeats;
        for (int op = 0; op < VRAM_OP_COUNT_; op++) {
            sum.calls[op] += c->calls[op];
            sum.bytes_ok[op] += c->bytes_ok[op];
            for (int k = 0; k < VRAM_STATUS_CAPACITY; k++) sum.by_status[op][k] += c->by_status[op][k];
            for (int k = 0; k < VRAM_REASON_CAPACITY; k++) sum.by_reason[op][k] += c->by_reason[op][k];
        }
    }
    FUZZ_CHECK(excuses == 0 || __atomic_load_n(&g_s_reused, __ATOMIC_SEQ_CST),
               "%llu reads of the shared allocation returned other bytes or 6 though its address "
               "was never reused", (unsigned long long)excuses);

    registry(&rs);
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

    vram_stats after;
    FUZZ_CHECK(vram_stats_get(-1, &after, sizeof after) == VRAM_SUCCESS, "stats");
    for (int op = 0; op < VRAM_OP_COUNT_; op++) {
        const vram_op_stats *a = &after.ops[op], *b = &before.ops[op];
        FUZZ_CHECK(a->calls - b->calls == sum.calls[op] && a->bytes_ok - b->bytes_ok == sum.bytes_ok[op],
                   "%s: %llu calls, %llu bytes ok in this input; observed %llu, %llu",
                   vram_op_name(op), (unsigned long long)(a->calls - b->calls),
                   (unsigned long long)(a->bytes_ok - b->bytes_ok),
                   (unsigned long long)sum.calls[op], (unsigned long long)sum.bytes_ok[op]);
        for (int k = 0; k < VRAM_STATUS_CAPACITY; k++)
            FUZZ_CHECK(a->by_status[k] - b->by_status[k] == sum.by_status[op][k],
                       "%s: %llu calls returned %d; observed %llu", vram_op_name(op),
                       (unsigned long long)(a->by_status[k] - b->by_status[k]), k,
                       (unsigned long long)sum.by_status[op][k]);
        for (int k = 0; k < VRAM_REASON_CAPACITY; k++)
            FUZZ_CHECK(a->refused_by_reason[k] - b->refused_by_reason[k] == sum.by_reason[op][k],
                       "%s: %llu refusals for %s; observed %llu", vram_op_name(op),
                       (unsigned long long)(a->refused_by_reason[k] - b->refused_by_reason[k]),
                       vram_reason_name(k), (unsigned long long)sum.by_reason[op][k]);
    }
    for (int i = 0; i < FUZZ_THREADS; i++) model_clear(&g_workers[i].m);
    return 0;
}

__attribute__((constructor)) static void init_barriers(void) {
    pthread_barrier_init(&g_start, NULL, FUZZ_THREADS + 1);
    pthread_barrier_init(&g_parked, NULL, FUZZ_THREADS + 1);
    pthread_barrier_init(&g_resume, NULL, FUZZ_THREADS + 1);
}
