/* libFuzzer target: random sequences of every operation of libvram_ops on the host backend,
 * checked against a shadow model.
 *
 * The input is read as a stream of operations (see the OP_ enum); each one draws its
 * arguments from the following bytes: sizes over 0..SIZE_MAX, device pointers that are a
 * live allocation's base plus an offset (inside, at the end, past it, wrapping), freed
 * bases, NULL, random and near-UINTPTR_MAX values; host pointers that are a buffer of the
 * fuzzer, NULL or bogus (replaced by a buffer only when the model predicts a copy that
 * succeeds); tags 0..70; generations that are right, 0, stale, never issued or another's.
 *
 * After every operation the target checks, and aborts on a mismatch:
 *  - the return code, and on failure vram_last_error() (status, reason, op, driver error);
 *  - the registry: live count, live and rounded bytes, per-tag counts, peak, allocation,
 *    free and repeated-free totals, nothing evicted or lost;
 *  - content: successful reads return what the model says was written (first 64 KiB of
 *    each allocation), refused copies write nothing (host buffer and device content
 *    unchanged), copies that succeed are exactly as long as asked (ASan guards the
 *    buffers).
 * At the end of an input it frees everything, checks that nothing is live and that the
 * per-operation aggregates of vram_stats_get() (calls, codes, reasons, bytes) equal the
 * model's.
 *
 * The library keeps state across inputs (freed addresses remembered for idempotent free,
 * the generation counter): the model mirrors it for the whole process, including the ring
 * of VRAM_FREED_MEMORY remembered frees, so its predictions are exact however long the
 * fuzzer runs and whatever addresses the allocator reuses. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

/* ---------------------------------------------------------------------------------------
 * Freed addresses the library remembers (registry.c: a ring of VRAM_FREED_MEMORY
 * tombstones, the oldest forgotten first; a tombstone is replaced when its address is
 * freed again). Since eb06b80 a new allocation no longer forgets the freed starts inside
 * it: lookups prefer live allocations, so a tombstone matters only for an address no live
 * allocation holds. Mirrored by a ring of the same size indexed by a treap (an ordered map
 * of its own, not the library's AVL tree).
 * ------------------------------------------------------------------------------------- */
#define RING VRAM_FREED_MEMORY

typedef struct tomb {
    uintptr_t key;
    uint32_t prio;
    int32_t left, right;
    bool used;
} tomb;

static tomb g_ring[RING];
static size_t g_ring_next;
static int32_t g_root = -1;
static uint64_t g_prio_state = UINT64_C(0x9e3779b97f4a7c15);

/* Split t into keys < key (*lo) and keys >= key (*hi). */
static void treap_split(int32_t t, uintptr_t key, int32_t *lo, int32_t *hi) {
    if (t < 0) {
        *lo = *hi = -1;
    } else if (g_ring[t].key < key) {
        treap_split(g_ring[t].right, key, &g_ring[t].right, hi);
        *lo = t;
    } else {
        treap_split(g_ring[t].left, key, lo, &g_ring[t].left);
        *hi = t;
    }
}

static int32_t treap_merge(int32_t a, int32_t b) {
    if (a < 0) return b;
    if (b < 0) return a;
    if (g_ring[a].prio > g_ring[b].prio) {
        g_ring[a].right = treap_merge(g_ring[a].right, b);
        return a;
    }
    g_ring[b].left = treap_merge(a, g_ring[b].left);
    return b;
}

static void treap_drop(int32_t t) {
    if (t < 0) return;
    treap_drop(g_ring[t].left);
    treap_drop(g_ring[t].right);
    g_ring[t].used = false;
    g_ring[t].left = g_ring[t].right = -1;
}

static bool tomb_find(uintptr_t key) {
    int32_t t = g_root;
    while (t >= 0 && g_ring[t].key != key) t = key < g_ring[t].key ? g_ring[t].left : g_ring[t].right;
    return t >= 0;
}

/* Forget the tombstones with keys in [lo, lo + n), n >= 1. */
static void tomb_forget_range(uintptr_t lo, size_t n) {
    int32_t a, b, mid, c;
    treap_split(g_root, lo, &a, &b);
    if (fuzz_wraps(lo, n)) {
        mid = b;
        c = -1;
    } else {
        treap_split(b, lo + n, &mid, &c);
    }
    treap_drop(mid);
    g_root = treap_merge(a, c);
}

static void tomb_remember(uintptr_t key) {
    tomb_forget_range(key, 1);
    size_t i = g_ring_next;
    g_ring_next = (g_ring_next + 1) % RING;
    if (g_ring[i].used) tomb_forget_range(g_ring[i].key, 1);
    g_ring[i].key = key;
    g_ring[i].prio = (uint32_t)(fuzz_rng(&g_prio_state) >> 32);
    g_ring[i].left = g_ring[i].right = -1;
    g_ring[i].used = true;
    int32_t lo, hi;
    treap_split(g_root, key, &lo, &hi);
    g_root = treap_merge(treap_merge(lo, (int32_t)i), hi);
}

/* ---------------------------------------------------------------------------------------
 * The model: live allocations of the current input, plus process-wide books.
 * ------------------------------------------------------------------------------------- */
static model g_m;
static uint64_t g_next_gen = 1;
static uint64_t g_peak_bytes, g_allocs, g_frees, g_repeats;

typedef struct op_books {
    uint64_t calls, bytes_ok;
    uint64_t by_status[VRAM_STATUS_CAPACITY];
    uint64_t by_reason[VRAM_REASON_CAPACITY];
} op_books;
static op_books g_ops[VRAM_OP_COUNT_];
static vram_stats g_stats_base; /* the aggregates when the model started */

/* Counts of what the fuzzer exercised, printed at exit with VRAMOBS_FUZZ_STATS=1. */
static uint64_t g_inputs, g_calls, g_by_code[VRAM_STATUS_CAPACITY], g_reused_addresses,
    g_repeat_hits, g_bytes_checked;

static const char *g_what = "";   /* the operation under way, for messages */
static char g_args[160];          /* its arguments */
static uint64_t g_op_index;

static int g_trace; /* VRAMOBS_FUZZ_TRACE=1: print every checked call */

/* Check a call's code against the model, then its last error, then count it. */
static void expect(int op, int got, int want, int reason, int driver_error) {
    if (g_trace)
        fprintf(stderr, "op #%llu %s(%s) -> %d (%s)\n", (unsigned long long)g_op_index, g_what,
                g_args, got, got ? vram_reason_name(reason) : "ok");
    FUZZ_CHECK(got == want, "op #%llu %s(%s): returned %d (%s), model expects %d (%s)",
               (unsigned long long)g_op_index, g_what, g_args, got, vram_status_name(got), want,
               vram_status_name(want));
    if (got != VRAM_SUCCESS) {
        vram_error_info e;
        vram_last_error(&e);
        FUZZ_CHECK(e.status == got && e.reason == reason && e.op == op &&
                       e.driver_error == driver_error,
                   "op #%llu %s: last error {status %d, reason %d (%s), op %d, driver %d}, model "
                   "expects {%d, %d (%s), %d, %d}",
                   (unsigned long long)g_op_index, g_what, e.status, e.reason,
                   vram_reason_name(e.reason), e.op, e.driver_error, got, reason,
                   vram_reason_name(reason), op, driver_error);
    }
    g_calls++;
    if (got >= 0 && got < VRAM_STATUS_CAPACITY) g_by_code[got]++;
    if (op >= 0 && op < VRAM_OP_COUNT_) {
        g_ops[op].calls++;
        g_ops[op].by_status[want]++;
        if (want != VRAM_SUCCESS && reason != VRAM_REASON_NONE) g_ops[op].by_reason[reason]++;
    }
}

FUZZ_NO_COVERAGE static void check_registry(int device) {
    vram_registry_stats s;
    int rc = vram_registry_stats_get(device, &s, sizeof s);
    FUZZ_CHECK(rc == VRAM_SUCCESS, "vram_registry_stats_get: %d", rc);
    FUZZ_CHECK(s.live_count == (uint64_t)g_m.n_live && s.live_bytes == g_m.live_bytes &&
                   s.live_rounded_bytes == g_m.live_rounded,
               "after op #%llu %s: registry live %llu allocations, %llu bytes (%llu rounded); "
               "model %d, %llu (%llu)",
               (unsigned long long)g_op_index, g_what, (unsigned long long)s.live_count,
               (unsigned long long)s.live_bytes, (unsigned long long)s.live_rounded_bytes,
               g_m.n_live, (unsigned long long)g_m.live_bytes,
               (unsigned long long)g_m.live_rounded);
    FUZZ_CHECK(s.allocs_total == g_allocs && s.frees_total == g_frees &&
                   s.repeated_frees_total == g_repeats && s.peak_bytes == g_peak_bytes,
               "after op #%llu %s: registry allocs %llu frees %llu repeated %llu peak %llu; "
               "model %llu %llu %llu %llu",
               (unsigned long long)g_op_index, g_what, (unsigned long long)s.allocs_total,
               (unsigned long long)s.frees_total, (unsigned long long)s.repeated_frees_total,
               (unsigned long long)s.peak_bytes, (unsigned long long)g_allocs,
               (unsigned long long)g_frees, (unsigned long long)g_repeats,
               (unsigned long long)g_peak_bytes);
    FUZZ_CHECK(s.lost_total == 0 && s.stale_evicted_total == 0,
               "after op #%llu %s: %llu lost, %llu evicted as stale", (unsigned long long)g_op_index,
               g_what, (unsigned long long)s.lost_total, (unsigned long long)s.stale_evicted_total);
    FUZZ_CHECK((s.oldest_alloc_ns == 0) == (g_m.n_live == 0), "oldest_alloc_ns %llu with %d live",
               (unsigned long long)s.oldest_alloc_ns, g_m.n_live);
    for (int t = 0; t < VRAM_MAX_TAGS; t++)
        FUZZ_CHECK(s.tag_live_count[t] == g_m.tag_count[t] && s.tag_live_bytes[t] == g_m.tag_bytes[t],
                   "after op #%llu %s: tag %d: %llu live, %llu bytes; model %llu, %llu",
                   (unsigned long long)g_op_index, g_what, t,
                   (unsigned long long)s.tag_live_count[t], (unsigned long long)s.tag_live_bytes[t],
                   (unsigned long long)g_m.tag_count[t], (unsigned long long)g_m.tag_bytes[t]);
}

FUZZ_NO_COVERAGE static void check_aggregates(void) {
    vram_stats s;
    int rc = vram_stats_get(-1, &s, sizeof s);
    FUZZ_CHECK(rc == VRAM_SUCCESS, "vram_stats_get: %d", rc);
    for (int op = 0; op < VRAM_OP_COUNT_; op++) {
        const vram_op_stats *got = &s.ops[op], *base = &g_stats_base.ops[op];
        const op_books *want = &g_ops[op];
        FUZZ_CHECK(got->calls - base->calls == want->calls &&
                       got->bytes_ok - base->bytes_ok == want->bytes_ok,
                   "%s: %llu calls, %llu bytes ok; model %llu, %llu", vram_op_name(op),
                   (unsigned long long)(got->calls - base->calls),
                   (unsigned long long)(got->bytes_ok - base->bytes_ok),
                   (unsigned long long)want->calls, (unsigned long long)want->bytes_ok);
        for (int i = 0; i < VRAM_STATUS_CAPACITY; i++)
            FUZZ_CHECK(got->by_status[i] - base->by_status[i] == want->by_status[i],
                       "%s: %llu calls returned %d; model %llu", vram_op_name(op),
                       (unsigned long long)(got->by_status[i] - base->by_status[i]), i,
                       (unsigned long long)want->by_status[i]);
        for (int i = 0; i < VRAM_REASON_CAPACITY; i++)
            FUZZ_CHECK(got->refused_by_reason[i] - base->refused_by_reason[i] == want->by_reason[i],
                       "%s: %llu refusals for %s; model %llu", vram_op_name(op),
                       (unsigned long long)(got->refused_by_reason[i] - base->refused_by_reason[i]),
                       vram_reason_name(i), (unsigned long long)want->by_reason[i]);
    }
}

/* ---------------------------------------------------------------------------------------
 * Operations.
 * ------------------------------------------------------------------------------------- */
enum {
    OP_MALLOC,
    OP_MALLOC_EX,
    OP_FREE,
    OP_FREE_EX,
    OP_H2D,
    OP_D2H,
    OP_GET_INFO,
    OP_VERIFY,
    OP_LIST,
    OP_SELECT_BACKEND,
    OP_SET_DEVICE,
    OP_STATS_ARGS,
    OP_MALLOC_SMALL, /* more allocations, so that the other operations have targets */
    OP_KINDS
};

static void op_malloc(fuzz_reader *r, bool ex, bool small) {
    size_t remaining = FUZZ_CAPACITY - g_m.live_rounded;
    size_t bytes = small ? (size_t)fr_u16(r) % 8192 + 1 : pick_alloc_size(r, remaining);
    uint32_t tag = ex ? fr_u8(r) % 71 : 0; /* 0..70: 64..70 are invalid */
    uint8_t flags = fr_u8(r);
    bool null_ptr = (flags & 31) == 31;
    bool want_gen = ex && (flags & 32);
    g_what = ex ? "vram_malloc_ex" : "vram_malloc";

    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, driver = 0;
    if (null_ptr) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    } else if (bytes == 0) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_ZERO_SIZE;
    } else if (bytes > SIZE_MAX - (VRAM_ALIGNMENT - 1)) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_SIZE_OVERFLOW;
    } else if (tag >= VRAM_MAX_TAGS) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_TAG;
    } else if (fuzz_rounded(bytes) > FUZZ_CAPACITY - g_m.live_rounded) {
        want = VRAM_ERR_ALLOCATION_FAILED, driver = 2; /* the host backend's out of memory */
    }
    if (want == VRAM_SUCCESS && g_m.n_live == M_MAX_LIVE) return; /* the model is full */

    snprintf(g_args, sizeof g_args, "%s, %zu bytes, tag %u, %s", null_ptr ? "NULL" : "&p", bytes,
             tag, want_gen ? "&generation" : "NULL");
    void *p = (void *)(uintptr_t)0xbad0;
    uint64_t g = 0xbad1;
    int got;
    if (ex)
        got = vram_malloc_ex(null_ptr ? NULL : &p, bytes, tag, want_gen ? &g : NULL);
    else
        got = vram_malloc(null_ptr ? NULL : &p, bytes);
    expect(VRAM_OP_MALLOC, got, want, reason, driver);
    if (want != VRAM_SUCCESS) {
        if (!null_ptr) FUZZ_CHECK(p == NULL, "failed allocation left *ptr = %p", p);
        if (!null_ptr && want_gen) FUZZ_CHECK(g == 0, "failed allocation left generation %llu",
                                              (unsigned long long)g);
        return;
    }
    uint64_t gen = g_next_gen++;
    if (want_gen)
        FUZZ_CHECK(g == gen, "generation %llu, model expects %llu", (unsigned long long)g,
                   (unsigned long long)gen);
    uintptr_t base = (uintptr_t)p;
    if (tomb_find(base)) g_reused_addresses++;
    model_add(&g_m, base, bytes, gen, tag); /* tombstones inside it stay remembered */
    g_allocs++;
    if (g_m.live_bytes > g_peak_bytes) g_peak_bytes = g_m.live_bytes;
    g_ops[VRAM_OP_MALLOC].bytes_ok += bytes;
}

/* A pointer to free or copy at: *idx is the live allocation it was derived from, or -1. */
static uintptr_t pick_pointer(fuzz_reader *r, int *idx) {
    *idx = -1;
    unsigned kind = fr_u8(r) % 12;
    if (kind <= 5 && g_m.n_live > 0) {
        int i = fr_u8(r) % g_m.n_live;
        const m_alloc *a = &g_m.live[i];
        *idx = i;
        switch (kind) {
        case 0: case 1: case 2: return a->base;
        case 3: return a->base + (a->size > 1 ? 1 + fr_u32(r) % (a->size - 1) : 1); /* interior */
        case 4: return a->base + a->size;                  /* at the end */
        default: return a->base + pick_offset(r, a->size); /* anywhere around it */
        }
    }
    if (kind <= 7 && g_m.n_freed > 0) return g_m.freed[fr_u8(r) % g_m.n_freed].base;
    switch (kind) {
    case 8: return 0;
    case 9: return UINTPTR_MAX - fr_u8(r);
    case 10: return (uintptr_t)fr_u16(r); /* small: never mapped */
    default: return (uintptr_t)fr_u64(r);
    }
}

/* vram_free and vram_free_ex share the work of a free the model expects to release idx. */
static void released(int idx) {
    m_alloc *a = &g_m.live[idx];
    g_ops[VRAM_OP_FREE].bytes_ok += a->size;
    g_frees++;
    tomb_remember(a->base);
    model_remove(&g_m, idx);
}

static void verify_in_place(const m_alloc *a) {
    size_t bad = shadow_check_in_place(a);
    FUZZ_CHECK(bad == SIZE_MAX,
               "op #%llu %s: device byte %zu of the allocation of %zu bytes at %#lx changed",
               (unsigned long long)g_op_index, g_what, bad, a->size, (unsigned long)a->base);
}

static void op_free(fuzz_reader *r) {
    int hint;
    uintptr_t p = pick_pointer(r, &hint);
    g_what = "vram_free";
    int live = p ? model_find_base(&g_m, p) : -1;
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE;
    bool repeat = false;
    if (!p || live >= 0) {
    } else if (model_find(&g_m, p) >= 0) {
        want = VRAM_ERR_INTERIOR_POINTER, reason = VRAM_REASON_INTERIOR_POINTER;
    } else if (tomb_find(p)) {
        repeat = true;
    } else {
        want = VRAM_ERR_UNKNOWN_POINTER, reason = VRAM_REASON_UNKNOWN_POINTER;
    }
    if (live >= 0) verify_in_place(&g_m.live[live]);
    snprintf(g_args, sizeof g_args, "%#lx", (unsigned long)p);
    expect(VRAM_OP_FREE, vram_free((void *)p), want, reason, 0);
    if (repeat) g_repeats++, g_repeat_hits++;
    if (live >= 0) released(live);
}

static void op_free_ex(fuzz_reader *r) {
    int hint;
    uintptr_t p = pick_pointer(r, &hint);
    uint64_t g;
    switch (fr_u8(r) % 9) {
    case 0: case 1: case 2: /* the right one, when p is a live base */
        g = hint >= 0 ? g_m.live[hint].gen : g_next_gen - 1;
        break;
    case 3: g = 0; break;
    case 4: g = g_m.n_freed ? g_m.freed[fr_u8(r) % g_m.n_freed].gen : 1; break; /* stale */
    case 5: g = g_next_gen + fr_u8(r); break; /* never issued */
    case 6: g = g_m.n_live ? g_m.live[fr_u8(r) % g_m.n_live].gen : g_next_gen; break;
    case 7: g = UINT64_MAX - fr_u8(r); break;
    default: g = fr_u64(r); break;
    }
    g_what = "vram_free_ex";
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, release = -1;
    bool repeat = false;
    if (g == 0) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
    } else if (!p) {
    } else if (g >= g_next_gen) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
    } else {
        int i = model_find_gen(&g_m, g);
        if (i < 0) {
            repeat = true; /* no longer live, whoever freed it */
        } else if (g_m.live[i].base != p) {
            want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
        } else {
            release = i;
        }
    }
    if (release >= 0) verify_in_place(&g_m.live[release]);
    snprintf(g_args, sizeof g_args, "%#lx, generation %llu", (unsigned long)p,
             (unsigned long long)g);
    expect(VRAM_OP_FREE, vram_free_ex((void *)p, g), want, reason, 0);
    if (repeat) g_repeats++;
    if (release >= 0) released(release);
}

static void op_copy(fuzz_reader *r, bool h2d) {
    int hint;
    uintptr_t dev = pick_pointer(r, &hint);
    int holder = model_find(&g_m, dev);
    size_t remaining = 0, padding_left = 0;
    if (holder >= 0) {
        const m_alloc *a = &g_m.live[holder];
        remaining = a->size - (dev - a->base);
        padding_left = fuzz_rounded(a->size) - (dev - a->base);
    }
    size_t n = pick_copy_size(r, remaining, padding_left);
    uint8_t host_kind = fr_u8(r);
    uint64_t seed = fr_u64(r);
    g_what = h2d ? "vram_memcpy_h2d" : "vram_memcpy_d2h";
    copy_call c = copy_prepare(&g_m, h2d, dev, n, host_kind, seed, r, tomb_find);
    int op = h2d ? VRAM_OP_MEMCPY_H2D : VRAM_OP_MEMCPY_D2H;
    snprintf(g_args, sizeof g_args, "device %#lx, host %#lx, %zu bytes", (unsigned long)c.dev,
             (unsigned long)c.host, c.n);
    expect(op, copy_run(&c), c.pred.status, c.pred.reason, 0);
    if (c.pred.status == VRAM_SUCCESS) g_ops[op].bytes_ok += c.n;
    g_bytes_checked += copy_finish(&g_m, &c);
}

/* Read back the shadowed window of an allocation through the library. */
static void verify_through_library(m_alloc *a) {
    g_what = "vram_memcpy_d2h (verify)";
    snprintf(g_args, sizeof g_args, "host, %#lx, %zu bytes", (unsigned long)a->base, a->shadow_len);
    uint8_t *buf = malloc(a->shadow_len);
    FUZZ_CHECK(buf, "out of host memory");
    int got = vram_memcpy_d2h(buf, (const void *)a->base, a->shadow_len);
    expect(VRAM_OP_MEMCPY_D2H, got, VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    g_ops[VRAM_OP_MEMCPY_D2H].bytes_ok += a->shadow_len;
    size_t bad = shadow_read(a, 0, buf, a->shadow_len);
    FUZZ_CHECK(bad == SIZE_MAX, "op #%llu verify: byte %zu of the allocation of %zu bytes differs",
               (unsigned long long)g_op_index, bad, a->size);
    g_bytes_checked += a->shadow_len;
    free(buf);
}

static void op_get_info(fuzz_reader *r) {
    unsigned kind = fr_u8(r) % 6;
    size_t f = 7, t = 7;
    size_t *fp = kind == 1 || kind == 3 ? NULL : &f;
    size_t *tp = kind == 2 || kind == 3 ? NULL : &t;
    g_what = "vram_get_info";
    snprintf(g_args, sizeof g_args, "%s, %s", fp ? "&free" : "NULL", tp ? "&total" : "NULL");
    bool ok = fp && tp;
    expect(VRAM_OP_GET_INFO, vram_get_info(fp, tp), ok ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS,
           ok ? VRAM_REASON_NONE : VRAM_REASON_NULL_POINTER, 0);
    if (ok) {
        FUZZ_CHECK(t == FUZZ_CAPACITY && f == FUZZ_CAPACITY - g_m.live_rounded,
                   "vram_get_info: free %zu total %zu; model %zu %zu", f, t,
                   (size_t)(FUZZ_CAPACITY - g_m.live_rounded), FUZZ_CAPACITY);
    } else {
        FUZZ_CHECK((!fp || f == 0) && (!tp || t == 0), "failed vram_get_info left outputs set");
    }
}

static void op_list(fuzz_reader *r) {
    static const int devices[] = {-1, 0, 0, -1, 1, 31, 32, -2};
    int device = devices[fr_u8(r) % 8];
    unsigned kind = fr_u8(r) % 4;
    size_t capacity = kind == 0 ? 0 : (size_t)fr_u8(r) % (M_MAX_LIVE + 2);
    vram_alloc_record recs[M_MAX_LIVE + 2];
    vram_alloc_record *out = kind == 1 ? NULL : recs;
    size_t count = 12345;
    bool bad = device < -1 || device >= VRAM_MAX_DEVICES || kind == 2 || (!out && capacity);
    g_what = "vram_registry_list";
    snprintf(g_args, sizeof g_args, "%d, %s, %zu, %s", device, out ? "records" : "NULL", capacity,
             kind == 2 ? "NULL" : "&count");
    int got = vram_registry_list(device, out, capacity, kind == 2 ? NULL : &count);
    expect(VRAM_OP_NONE, got, bad ? VRAM_ERR_INVALID_PARAMETERS : VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    if (bad) return;
    size_t live = device <= 0 ? (size_t)g_m.n_live : 0;
    FUZZ_CHECK(count == live, "vram_registry_list(%d): count %zu, model %zu", device, count, live);
    for (size_t i = 0; i < capacity && i < live; i++) {
        const m_alloc *a = &g_m.live[i];
        FUZZ_CHECK(recs[i].address == a->base && recs[i].bytes == a->size &&
                       recs[i].generation == a->gen && recs[i].tag == a->tag && recs[i].device == 0,
                   "vram_registry_list: record %zu is {%#llx, %llu, gen %llu, tag %u}, model "
                   "{%#lx, %zu, gen %llu, tag %u}",
                   i, (unsigned long long)recs[i].address, (unsigned long long)recs[i].bytes,
                   (unsigned long long)recs[i].generation, recs[i].tag, (unsigned long)a->base,
                   a->size, (unsigned long long)a->gen, a->tag);
    }
}

static void op_select_backend(fuzz_reader *r) {
    static const char *names[] = {"host", "cuda", "bogus", NULL, "", "HOST"};
    const char *name = names[fr_u8(r) % 6];
    /* Switching to cuda for real (nothing live) would load a driver: ask only when busy. */
    if (name && strcmp(name, "cuda") == 0 && g_m.n_live == 0) name = "host";
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE;
    if (!name || (strcmp(name, "host") != 0 && strcmp(name, "cuda") != 0))
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_BACKEND;
    else if (strcmp(name, "cuda") == 0)
        want = VRAM_ERR_BUSY;
    g_what = "vram_select_backend";
    snprintf(g_args, sizeof g_args, "%s", name ? name : "NULL");
    expect(VRAM_OP_NONE, vram_select_backend(name), want, reason, 0);
    FUZZ_CHECK(strcmp(vram_backend_name(), "host") == 0, "backend is now %s", vram_backend_name());
}

static void op_set_device(fuzz_reader *r) {
    static const int devices[] = {0, 1, 31, 32, -1, INT32_MIN, INT32_MAX, 0};
    int device = devices[fr_u8(r) % 8];
    g_what = "vram_set_device";
    snprintf(g_args, sizeof g_args, "%d", device);
    expect(VRAM_OP_NONE, vram_set_device(device),
           device == 0 ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS,
           device == 0 ? VRAM_REASON_NONE : VRAM_REASON_INVALID_DEVICE, 0);
    int now = -1;
    expect(VRAM_OP_NONE, vram_get_device(&now), VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    FUZZ_CHECK(now == 0, "thread device is %d", now);
}

static void op_stats_args(fuzz_reader *r) {
    static const int devices[] = {-1, 0, 31, 32, -2, INT32_MIN};
    int device = devices[fr_u8(r) % 6];
    unsigned kind = fr_u8(r) % 4;
    g_what = "vram_stats_get / vram_registry_stats_get arguments";
    union {
        vram_stats s;
        vram_registry_stats rs;
    } u;
    bool registry = kind & 1;
    size_t size = registry ? sizeof u.rs : sizeof u.s;
    if (kind & 2) size -= 1 + fr_u8(r) % 8;
    bool bad = device < -1 || device >= VRAM_MAX_DEVICES || (kind & 2);
    snprintf(g_args, sizeof g_args, "%s, device %d, size %zu", registry ? "registry" : "ops",
             device, size);
    int got = registry ? vram_registry_stats_get(device, &u.rs, size) : vram_stats_get(device, &u.s, size);
    expect(VRAM_OP_NONE, got, bad ? VRAM_ERR_INVALID_PARAMETERS : VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    got = registry ? vram_registry_stats_get(device, NULL, size) : vram_stats_get(device, NULL, size);
    expect(VRAM_OP_NONE, got, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NONE, 0);
}

/* ---------------------------------------------------------------------------------------
 * libFuzzer entry points.
 * ------------------------------------------------------------------------------------- */
static void print_summary(void) {
    if (!getenv("VRAMOBS_FUZZ_STATS")) return;
    fprintf(stderr,
            "vramobs fuzz_api_sequence: %llu inputs, %llu checked calls (0:%llu 1:%llu 2:%llu "
            "5:%llu 6:%llu 7:%llu 10:%llu), %llu allocations, %llu on a remembered freed "
            "address, %llu repeated frees of remembered addresses, %llu device bytes compared\n",
            (unsigned long long)g_inputs, (unsigned long long)g_calls,
            (unsigned long long)g_by_code[0], (unsigned long long)g_by_code[1],
            (unsigned long long)g_by_code[2], (unsigned long long)g_by_code[5],
            (unsigned long long)g_by_code[6], (unsigned long long)g_by_code[7],
            (unsigned long long)g_by_code[10], (unsigned long long)g_allocs,
            (unsigned long long)g_reused_addresses, (unsigned long long)g_repeat_hits,
            (unsigned long long)g_bytes_checked);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fuzz_select_host_backend();
    size_t f = 0, t = 0;
    FUZZ_CHECK(vram_get_info(&f, &t) == VRAM_SUCCESS && f == FUZZ_CAPACITY && t == FUZZ_CAPACITY,
               "host backend capacity %zu free %zu, expected %zu", t, f, FUZZ_CAPACITY);
    FUZZ_CHECK(vram_stats_get(-1, &g_stats_base, sizeof g_stats_base) == VRAM_SUCCESS, "stats");
    for (size_t i = 0; i < RING; i++) g_ring[i].left = g_ring[i].right = -1;
    model_init(&g_m);
    atexit(print_summary);
    g_trace = getenv("VRAMOBS_FUZZ_TRACE") != NULL;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_reader r = {data, size};
    g_inputs++;
    g_op_index = 0;
    while (!fr_empty(&r)) {
        g_op_index++;
        g_args[0] = '\0';
        switch (fr_u8(&r) % OP_KINDS) {
        case OP_MALLOC: op_malloc(&r, false, false); break;
        case OP_MALLOC_EX: op_malloc(&r, true, false); break;
        case OP_MALLOC_SMALL: op_malloc(&r, fr_u8(&r) & 1, true); break;
        case OP_FREE: op_free(&r); break;
        case OP_FREE_EX: op_free_ex(&r); break;
        case OP_H2D: op_copy(&r, true); break;
        case OP_D2H: op_copy(&r, false); break;
        case OP_GET_INFO: op_get_info(&r); break;
        case OP_VERIFY:
            if (g_m.n_live) verify_through_library(&g_m.live[fr_u8(&r) % g_m.n_live]);
            break;
        case OP_LIST: op_list(&r); break;
        case OP_SELECT_BACKEND: op_select_backend(&r); break;
        case OP_SET_DEVICE: op_set_device(&r); break;
        case OP_STATS_ARGS: op_stats_args(&r); break;
        }
        check_registry(0);
    }

    /* Free everything, oldest first, after checking its content both ways. */
    g_op_index++;
    for (int i = 0; g_m.n_live > 0; i++) {
        m_alloc *a = &g_m.live[0];
        g_what = "final check";
        verify_in_place(a);
        verify_through_library(a);
        g_what = "final free";
        snprintf(g_args, sizeof g_args, "%#lx", (unsigned long)a->base);
        if (i & 1)
            expect(VRAM_OP_FREE, vram_free_ex((void *)a->base, a->gen), VRAM_SUCCESS, 0, 0);
        else
            expect(VRAM_OP_FREE, vram_free((void *)a->base), VRAM_SUCCESS, 0, 0);
        released(0);
    }
    check_registry(-1);
    vram_registry_stats s;
    vram_registry_stats_get(-1, &s, sizeof s);
    FUZZ_CHECK(s.live_count == 0 && s.live_bytes == 0, "live after the input: %llu",
               (unsigned long long)s.live_count);
    size_t f = 0, t = 0;
    FUZZ_CHECK(vram_get_info(&f, &t) == VRAM_SUCCESS && f == FUZZ_CAPACITY,
               "capacity not returned after the input: free %zu of %zu", f, t);
    g_ops[VRAM_OP_GET_INFO].calls++;
    g_ops[VRAM_OP_GET_INFO].by_status[0]++;
    check_aggregates();
    model_clear(&g_m);
    return 0;
}
