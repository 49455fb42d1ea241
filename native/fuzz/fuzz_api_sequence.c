/* libFuzzer target: random sequences of every operation of libvram_ops on the host backend,
 * with two emulated devices (copies between them peer to peer unless VRAMOBS_HOST_PEER=0),
 * checked against a shadow model.
 *
 * The input is read as a stream of operations (see the OP_ enum); each one draws its
 * arguments from the following bytes: sizes over 0..SIZE_MAX, device pointers that are a
 * live allocation's base plus an offset (inside, at the end, past it, wrapping), freed
 * bases, NULL, random and near-UINTPTR_MAX values; host pointers that are a buffer of the
 * fuzzer, a vram_host_alloc block or a registered range, NULL or bogus (replaced by a buffer
 * only when the model predicts a copy that succeeds); tags 0..70; generations that are right,
 * 0, stale, never issued or another's; devices 0, 1 and invalid ones.
 *
 * Modelled: malloc, malloc_ex, free, free_ex, memcpy_h2d/d2h, get_info, registry listing,
 * backend selection, the thread's device, stats arguments; memcpy_d2d on one device and
 * between the two (overlap refusal, counted as memcpy_d2d, memcpy_p2p or memcpy_staged by
 * path) and vram_copy_path_get; vram_migrate (generations, same device unchanged, another:
 * new pointer and generation, content kept, the source freed, counted as a malloc, a copy, a
 * free and a migrate); vram_malloc_batch (refusals before anything is written, all or nothing:
 * a size that does not fit frees what the batch made, the addresses of which the fuzzer learns
 * through the sanitizer's malloc hook); the device pool (vram_pool_set / trim / stats: which
 * cached block a malloc of its class gets back, hits, misses, cached and released bytes, slack,
 * the out-of-memory retry, the emulated capacity the blocks hold); pinned host memory
 * (host_alloc / free / register / unregister / trim / stats, blocks zeroed when freed and
 * handed out again from the cache, used as the host side of copies); the staging
 * configuration (get / set, invalid configurations; the host backend never stages); the wipe
 * policy, per allocation too (the wipe counted, cached blocks zeroed); device count, state,
 * properties and NUMA node. From 0.3.0: the async copies (h2d, d2h, d2d on any stream value:
 * the host backend has none, so each is done and counted at its call, its completion done),
 * completions (query, wait, release, NULL), vram_malloc_async (from the driver, never the
 * pool), vram_free_async and vram_async_stats_get.
 *
 * After every operation the target checks, and aborts on a mismatch:
 *  - the return code, and on failure vram_last_error() (status, reason, op, driver error);
 *  - the registry of each device and in all: live count, live and rounded bytes, per-tag
 *    counts, peak, allocation, free and repeated-free totals, nothing evicted or lost;
 *  - the pool of each device (every field of vram_pool_stats), vram_host_stats and
 *    vram_async_stats;
 *  - content: successful reads return what the model says was written (first 64 KiB of
 *    each allocation), refused copies write nothing (host buffer and device content
 *    unchanged), copies that succeed are exactly as long as asked (ASan guards the
 *    buffers), a device-to-device copy leaves both ranges equal.
 * At the end of an input it releases the completions, frees everything, turns the pools off,
 * trims the pinned cache, checks that nothing is live or held (capacity of both devices back)
 * and that the per-operation aggregates of vram_stats_get() (calls, codes, reasons, bytes)
 * equal the model's.
 *
 * The library keeps state across inputs (freed addresses remembered for idempotent free,
 * the generation counter, the pools' and staging's totals): the model mirrors it for the
 * whole process, including the ring of VRAM_FREED_MEMORY remembered frees, so its predictions
 * are exact however long the fuzzer runs and whatever addresses the allocator reuses. */
#include <sanitizer/allocator_interface.h>
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
 * allocation holds. Each remembers its generation and device (a repeated free is counted on
 * that device). Mirrored by a ring of the same size indexed by a treap (an ordered map of its
 * own, not the library's AVL tree).
 * ------------------------------------------------------------------------------------- */
#define RING VRAM_FREED_MEMORY

typedef struct tomb {
    uintptr_t key;
    uint64_t gen;
    int32_t device;
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

/* The tombstone at key, or -1. */
static int32_t tomb_find(uintptr_t key) {
    int32_t t = g_root;
    while (t >= 0 && g_ring[t].key != key) t = key < g_ring[t].key ? g_ring[t].left : g_ring[t].right;
    return t;
}

static bool is_tomb(uintptr_t key) { return tomb_find(key) >= 0; }

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

static void tomb_remember(uintptr_t key, uint64_t gen, int device) {
    tomb_forget_range(key, 1);
    size_t i = g_ring_next;
    g_ring_next = (g_ring_next + 1) % RING;
    if (g_ring[i].used) tomb_forget_range(g_ring[i].key, 1);
    g_ring[i].key = key;
    g_ring[i].gen = gen;
    g_ring[i].device = device;
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
static uint64_t g_peak_bytes; /* highest live bytes over all devices */
static int g_thread_device;
static int g_wipe_policy;
static bool g_peer; /* copies between the devices go peer to peer */

/* A cached pool block (or pinned host block): its address, size and, for a pool block freed
 * under VRAM_WIPE_ON_FREE, how many of its first bytes were wiped. */
typedef struct m_block {
    uintptr_t addr;
    size_t size;
    size_t wiped;
} m_block;

typedef struct m_blocks { /* oldest first */
    m_block *v;
    size_t n, cap;
    uint64_t bytes;
} m_blocks;

/* One emulated device: its capacity in use, its registry books and its pool. */
typedef struct dev_model {
    uint64_t used;
    uint64_t allocs, frees, repeats, peak;
    bool enabled;
    uint64_t max;
    m_blocks cache;
    uint64_t hits, misses, released, live_blocks, slack, oom_retries, give_ups;
} dev_model;
static dev_model g_dev[FUZZ_DEVICES];

/* Pinned host memory: vram_host_alloc blocks in use and registered ranges (size: the block's
 * class, or the registered bytes), the cache of freed blocks, the arena registrations and
 * pageable copies use. */
typedef struct h_range {
    uintptr_t addr;
    size_t bytes, size;
    bool block;
} h_range;
#define H_MAX 16
#define ARENA ((size_t)256 << 10)
static h_range g_hr[2 * H_MAX];
static int g_n_hr, g_n_hblocks, g_n_hregs;
static m_blocks g_hcache;
static uint8_t g_arena[ARENA] __attribute__((aligned(4096)));
static uintptr_t g_last_unregistered;

static vram_staging_config g_staging;

/* Completions of async copies not yet released (the host backend completes every copy before
 * its call returns, so each is done), and the async calls done at once. */
#define C_MAX 8
static vram_completion *g_comps[C_MAX];
static int g_n_comps;
static uint64_t g_immediate;

typedef struct op_books {
    uint64_t calls, bytes_ok;
    uint64_t by_status[VRAM_STATUS_CAPACITY];
    uint64_t by_reason[VRAM_REASON_CAPACITY];
} op_books;
static op_books g_ops[VRAM_OP_COUNT_];
static vram_stats g_stats_base; /* the aggregates when the model started */

/* Counts of what the fuzzer exercised, printed at exit with VRAMOBS_FUZZ_STATS=1. */
static uint64_t g_inputs, g_calls, g_by_code[VRAM_STATUS_CAPACITY], g_reused_addresses,
    g_repeat_hits, g_bytes_checked, g_d2d_ok, g_migrations, g_batches_ok, g_batches_undone,
    g_pool_hits, g_host_reused;

static const char *g_what = "";   /* the operation under way, for messages */
static char g_args[200];          /* its arguments */
static uint64_t g_op_index;

static int g_trace; /* VRAMOBS_FUZZ_TRACE=1: print every checked call */

/* The allocations the library made during a batch, from the sanitizer's malloc and free
 * hooks: a batch that fails frees what it made before returning, and the model must know
 * those addresses (the registry remembers them as freed). Only 256-aligned blocks of a
 * multiple of 256 bytes are recorded, as the host backend's device memory is; whether the
 * call freed them tells them from the library's own tables. */
#define REC_MAX 64
static _Thread_local bool t_recording;
static struct {
    uintptr_t p;
    size_t n;
    bool freed;
} g_rec[REC_MAX];
static int g_n_rec;

static void on_malloc(const volatile void *p, size_t n) {
    if (!t_recording || n % VRAM_ALIGNMENT || (uintptr_t)p % VRAM_ALIGNMENT || g_n_rec >= REC_MAX)
        return;
    g_rec[g_n_rec].p = (uintptr_t)p;
    g_rec[g_n_rec].n = n;
    g_rec[g_n_rec].freed = false;
    g_n_rec++;
}

static void on_free(const volatile void *p) {
    if (!t_recording) return;
    for (int i = 0; i < g_n_rec; i++)
        if (g_rec[i].p == (uintptr_t)p && !g_rec[i].freed) {
            g_rec[i].freed = true;
            return;
        }
}

/* Count one call of op as the library should have. */
static void book(int op, int status, int reason, uint64_t bytes) {
    if (op < 0 || op >= VRAM_OP_COUNT_) return;
    g_ops[op].calls++;
    g_ops[op].by_status[status]++;
    if (status != VRAM_SUCCESS && reason != VRAM_REASON_NONE) g_ops[op].by_reason[reason]++;
    if (status == VRAM_SUCCESS) g_ops[op].bytes_ok += bytes;
}

/* Check a call's code against the model, then its last error. */
static void check_code(int op, int got, int want, int reason, int driver_error) {
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
}

/* check_code, then count the call (its bytes are the caller's to add). */
static void expect(int op, int got, int want, int reason, int driver_error) {
    check_code(op, got, want, reason, driver_error);
    book(op, want, reason, 0);
}

/* The registry of a device (or of all with -1) against the model; adds its per-tag counts
 * to tags. */
FUZZ_NO_COVERAGE static void check_registry(int device, uint64_t tags[2][VRAM_MAX_TAGS]) {
    vram_registry_stats s;
    int rc = vram_registry_stats_get(device, &s, sizeof s);
    FUZZ_CHECK(rc == VRAM_SUCCESS, "vram_registry_stats_get: %d", rc);
    uint64_t count = (uint64_t)g_m.n_live, bytes = g_m.live_bytes, rounded = g_m.live_rounded,
             peak = g_peak_bytes, allocs = 0, frees = 0, repeats = 0;
    for (int d = 0; d < FUZZ_DEVICES; d++) {
        allocs += g_dev[d].allocs;
        frees += g_dev[d].frees;
        repeats += g_dev[d].repeats;
    }
    if (device >= 0) {
        count = g_m.dev_count[device];
        bytes = g_m.dev_bytes[device];
        rounded = g_m.dev_rounded[device];
        peak = g_dev[device].peak;
        allocs = g_dev[device].allocs;
        frees = g_dev[device].frees;
        repeats = g_dev[device].repeats;
    }
    FUZZ_CHECK(s.live_count == count && s.live_bytes == bytes && s.live_rounded_bytes == rounded,
               "after op #%llu %s: registry of device %d: live %llu allocations, %llu bytes "
               "(%llu rounded); model %llu, %llu (%llu)",
               (unsigned long long)g_op_index, g_what, device, (unsigned long long)s.live_count,
               (unsigned long long)s.live_bytes, (unsigned long long)s.live_rounded_bytes,
               (unsigned long long)count, (unsigned long long)bytes, (unsigned long long)rounded);
    FUZZ_CHECK(s.allocs_total == allocs && s.frees_total == frees &&
                   s.repeated_frees_total == repeats && s.peak_bytes == peak,
               "after op #%llu %s: registry of device %d: allocs %llu frees %llu repeated %llu "
               "peak %llu; model %llu %llu %llu %llu",
               (unsigned long long)g_op_index, g_what, device, (unsigned long long)s.allocs_total,
               (unsigned long long)s.frees_total, (unsigned long long)s.repeated_frees_total,
               (unsigned long long)s.peak_bytes, (unsigned long long)allocs,
               (unsigned long long)frees, (unsigned long long)repeats, (unsigned long long)peak);
    FUZZ_CHECK(s.lost_total == 0 && s.stale_evicted_total == 0,
               "after op #%llu %s: %llu lost, %llu evicted as stale", (unsigned long long)g_op_index,
               g_what, (unsigned long long)s.lost_total, (unsigned long long)s.stale_evicted_total);
    FUZZ_CHECK((s.oldest_alloc_ns == 0) == (count == 0), "oldest_alloc_ns %llu with %llu live",
               (unsigned long long)s.oldest_alloc_ns, (unsigned long long)count);
    for (int t = 0; t < VRAM_MAX_TAGS; t++) {
        tags[0][t] += s.tag_live_count[t];
        tags[1][t] += s.tag_live_bytes[t];
    }
}

FUZZ_NO_COVERAGE static void check_tags(uint64_t tags[2][VRAM_MAX_TAGS]) {
    for (int t = 0; t < VRAM_MAX_TAGS; t++)
        FUZZ_CHECK(tags[0][t] == g_m.tag_count[t] && tags[1][t] == g_m.tag_bytes[t],
                   "after op #%llu %s: tag %d: %llu live, %llu bytes; model %llu, %llu",
                   (unsigned long long)g_op_index, g_what, t, (unsigned long long)tags[0][t],
                   (unsigned long long)tags[1][t], (unsigned long long)g_m.tag_count[t],
                   (unsigned long long)g_m.tag_bytes[t]);
}

/* The model's vram_pool_stats of a device (or the sum with -1). */
static vram_pool_stats model_pool_stats(int device) {
    vram_pool_stats w;
    memset(&w, 0, sizeof w);
    w.struct_size = (uint32_t)sizeof w;
    for (int d = 0; d < FUZZ_DEVICES; d++) {
        if (device >= 0 && d != device) continue;
        const dev_model *v = &g_dev[d];
        w.enabled += v->enabled;
        w.max_cached_bytes += v->max;
        w.cached_bytes += v->cache.bytes;
        w.cached_blocks += v->cache.n;
        w.hits_total += v->hits;
        w.misses_total += v->misses;
        w.released_bytes_total += v->released;
        w.live_blocks += v->live_blocks;
        w.slack_bytes += v->slack;
        w.oom_retries_total += v->oom_retries;
        w.oom_give_ups_total += v->give_ups;
    }
    return w;
}

FUZZ_NO_COVERAGE static void compare_pool(int device, const vram_pool_stats *s) {
    vram_pool_stats w = model_pool_stats(device);
    FUZZ_CHECK(memcmp(s, &w, sizeof w) == 0,
               "after op #%llu %s: pool of device %d: enabled %u max %llu cached %llu in %llu, "
               "hits %llu misses %llu released %llu, live %llu slack %llu, retries %llu give-ups "
               "%llu dropped %llu; model %u %llu %llu in %llu, %llu %llu %llu, %llu %llu, %llu "
               "%llu 0",
               (unsigned long long)g_op_index, g_what, device, s->enabled,
               (unsigned long long)s->max_cached_bytes, (unsigned long long)s->cached_bytes,
               (unsigned long long)s->cached_blocks, (unsigned long long)s->hits_total,
               (unsigned long long)s->misses_total, (unsigned long long)s->released_bytes_total,
               (unsigned long long)s->live_blocks, (unsigned long long)s->slack_bytes,
               (unsigned long long)s->oom_retries_total, (unsigned long long)s->oom_give_ups_total,
               (unsigned long long)s->dropped_bytes_total, w.enabled,
               (unsigned long long)w.max_cached_bytes, (unsigned long long)w.cached_bytes,
               (unsigned long long)w.cached_blocks, (unsigned long long)w.hits_total,
               (unsigned long long)w.misses_total, (unsigned long long)w.released_bytes_total,
               (unsigned long long)w.live_blocks, (unsigned long long)w.slack_bytes,
               (unsigned long long)w.oom_retries_total, (unsigned long long)w.oom_give_ups_total);
}

static vram_host_stats model_host_stats(void) {
    vram_host_stats w;
    memset(&w, 0, sizeof w);
    w.struct_size = (uint32_t)sizeof w;
    for (int i = 0; i < g_n_hr; i++) {
        if (g_hr[i].block) {
            w.live_count++;
            w.live_bytes += g_hr[i].size;
        } else {
            w.registered_count++;
            w.registered_bytes += g_hr[i].bytes;
        }
    }
    w.cached_bytes = g_hcache.bytes;
    return w; /* the host backend never stages: no staging buffers or staged copies */
}

FUZZ_NO_COVERAGE static void compare_host(const vram_host_stats *s) {
    vram_host_stats w = model_host_stats();
    FUZZ_CHECK(memcmp(s, &w, sizeof w) == 0,
               "after op #%llu %s: host stats: live %llu (%llu bytes), cached %llu, registered "
               "%llu (%llu bytes), staging %llu, staged %llu, cleared %llu; model %llu (%llu), "
               "%llu, %llu (%llu), 0, 0, 0",
               (unsigned long long)g_op_index, g_what, (unsigned long long)s->live_count,
               (unsigned long long)s->live_bytes, (unsigned long long)s->cached_bytes,
               (unsigned long long)s->registered_count, (unsigned long long)s->registered_bytes,
               (unsigned long long)s->staging_bytes, (unsigned long long)s->staged_copies_total,
               (unsigned long long)s->staging_cleared_bytes_total,
               (unsigned long long)w.live_count, (unsigned long long)w.live_bytes,
               (unsigned long long)w.cached_bytes, (unsigned long long)w.registered_count,
               (unsigned long long)w.registered_bytes);
}

/* After every operation: each device's registry (its tags summed), pool, the host stats; with
 * all, the registry's sum over every device too (slower: at the end of an input). */
/* Nothing is ever pending on the host backend: every async call is done when it returns. */
FUZZ_NO_COVERAGE static void compare_async(const vram_async_stats *s) {
    FUZZ_CHECK(s->struct_size == sizeof *s && s->pending == 0 && s->enqueued_total == 0 &&
                   s->immediate_total == g_immediate && s->completed_total == 0 &&
                   s->failed_total == 0 && s->drained_total == 0,
               "after op #%llu %s: async stats: pending %llu, enqueued %llu, immediate %llu, "
               "completed %llu, failed %llu, drained %llu; model 0, 0, %llu, 0, 0, 0",
               (unsigned long long)g_op_index, g_what, (unsigned long long)s->pending,
               (unsigned long long)s->enqueued_total, (unsigned long long)s->immediate_total,
               (unsigned long long)s->completed_total, (unsigned long long)s->failed_total,
               (unsigned long long)s->drained_total, (unsigned long long)g_immediate);
}

FUZZ_NO_COVERAGE static void check_state(bool all) {
    uint64_t tags[2][VRAM_MAX_TAGS];
    memset(tags, 0, sizeof tags);
    for (int d = 0; d < FUZZ_DEVICES; d++) {
        check_registry(d, tags);
        vram_pool_stats p;
        FUZZ_CHECK(vram_pool_stats_get(d, &p, sizeof p) == VRAM_SUCCESS, "vram_pool_stats_get");
        compare_pool(d, &p);
    }
    check_tags(tags);
    if (all) {
        memset(tags, 0, sizeof tags);
        check_registry(-1, tags);
        check_tags(tags);
    }
    vram_host_stats h;
    FUZZ_CHECK(vram_host_stats_get(&h, sizeof h) == VRAM_SUCCESS, "vram_host_stats_get");
    compare_host(&h);
    vram_async_stats a;
    FUZZ_CHECK(vram_async_stats_get(&a, sizeof a) == VRAM_SUCCESS, "vram_async_stats_get");
    compare_async(&a);
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
 * The device pool and the emulated capacity (pool.c, backend_host.c), from the header:
 * classes of 256 B up to 1 KiB, four per power of two up to 1 MiB, whole 2 MiB pages above;
 * a class's cached blocks are handed out newest first; a trim releases the largest first.
 * ------------------------------------------------------------------------------------- */
static size_t pool_block(size_t bytes) { /* 0: never pooled */
    if (bytes <= 1024) return fuzz_rounded(bytes);
    if (bytes <= ((size_t)1 << 20)) {
        size_t p = 1024;
        while (p * 2 < bytes) p *= 2; /* p < bytes <= 2p */
        size_t step = p / 4;
        return p + (bytes - p + step - 1) / step * step;
    }
    const size_t page = (size_t)2 << 20;
    if (bytes > SIZE_MAX - (page - 1)) return 0;
    return (bytes + page - 1) / page * page;
}

static void blocks_push(m_blocks *c, uintptr_t addr, size_t size, size_t wiped) {
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 16;
        c->v = realloc(c->v, c->cap * sizeof *c->v);
        FUZZ_CHECK(c->v, "out of host memory");
    }
    c->v[c->n++] = (m_block){addr, size, wiped};
    c->bytes += size;
}

static m_block blocks_remove(m_blocks *c, size_t i) {
    m_block b = c->v[i];
    memmove(&c->v[i], &c->v[i + 1], (c->n - i - 1) * sizeof *c->v);
    c->n--;
    c->bytes -= b.size;
    return b;
}

/* The newest cached block of this size, taken out; false if none. */
static bool blocks_take(m_blocks *c, size_t size, m_block *out) {
    for (size_t i = c->n; i-- > 0;)
        if (c->v[i].size == size) {
            *out = blocks_remove(c, i);
            return true;
        }
    return false;
}

/* Take blocks out, the largest first (the newest of a size first), until at most keep bytes
 * stay; returns the bytes taken. */
static uint64_t blocks_trim(m_blocks *c, uint64_t keep, dev_model *v) {
    uint64_t taken = 0;
    while (c->bytes > keep) {
        size_t best = c->n - 1;
        for (size_t i = c->n; i-- > 0;)
            if (c->v[i].size > c->v[best].size) best = i;
        m_block b = blocks_remove(c, best);
        taken += b.size;
        if (v) {
            v->used -= b.size;
            v->released += b.size;
        }
    }
    return taken;
}

/* The offset of the first byte that is not zero in [p, p + n), or SIZE_MAX. */
FUZZ_NO_COVERAGE static size_t first_nonzero(uintptr_t p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    size_t i = 0;
    for (uint64_t w; i + 8 <= n; i += 8) {
        memcpy(&w, b + i, 8);
        if (w) break;
    }
    for (; i < n; i++)
        if (b[i]) return i;
    return SIZE_MAX;
}

static bool take_capacity(dev_model *v, size_t n) {
    if (n > FUZZ_CAPACITY - v->used) return false;
    v->used += n;
    return true;
}

/* What vram_malloc of bytes (valid, at most SIZE_MAX - 255) on device d does to the pool and
 * the capacity; applied to the model as it is predicted. */
typedef struct alloc_plan {
    int status, driver;
    bool hit;       /* served from the cache: the address is known */
    uintptr_t addr;
    size_t block;   /* the pool block it takes, 0 outside the pool */
    size_t need;    /* not a hit: what the host backend allocates */
} alloc_plan;

static alloc_plan plan_alloc(int d, size_t bytes) {
    dev_model *v = &g_dev[d];
    alloc_plan pl = {VRAM_SUCCESS, 0, false, 0, 0, 0};
    size_t need = fuzz_rounded(bytes), block = pool_block(bytes);
    if (!v->enabled || !block) {
        pl.need = need;
        if (!take_capacity(v, need)) pl.status = VRAM_ERR_ALLOCATION_FAILED, pl.driver = 2;
        return pl;
    }
    m_block b;
    if (blocks_take(&v->cache, block, &b)) {
        /* Still cached, untouched since it was wiped: zeros (a migration copies into it). */
        size_t bad = b.wiped ? first_nonzero(b.addr, b.wiped) : SIZE_MAX;
        FUZZ_CHECK(bad == SIZE_MAX, "op #%llu %s: the wiped pool block at %#lx about to be handed "
                   "out has byte %zu set", (unsigned long long)g_op_index, g_what,
                   (unsigned long)b.addr, bad);
        v->hits++;
        v->live_blocks++;
        v->slack += block - need;
        pl.hit = true;
        pl.addr = b.addr;
        pl.block = block;
        return pl;
    }
    v->misses++;
    bool ok = take_capacity(v, block), retried = false, pooled = true;
    if (!ok && v->cache.n) { /* out of memory: the cache goes first */
        retried = true;
        blocks_trim(&v->cache, 0, v);
        ok = take_capacity(v, block);
    }
    if (!ok && need < block) { /* then the request at its own size, outside the pool */
        retried = true;
        pooled = false;
        ok = take_capacity(v, need);
    }
    if (retried) {
        v->oom_retries++;
        if (!ok) v->give_ups++;
    }
    if (!ok) {
        pl.status = VRAM_ERR_ALLOCATION_FAILED, pl.driver = 2;
    } else if (pooled) {
        v->live_blocks++;
        v->slack += block - need;
        pl.block = pl.need = block;
    } else {
        pl.need = need;
    }
    return pl;
}

/* A freed allocation's memory: into the cache (true) or back to the capacity. */
static bool pool_release(const m_alloc *a) {
    dev_model *v = &g_dev[a->device];
    size_t need = fuzz_rounded(a->size);
    if (!a->block) {
        v->used -= need;
        return false;
    }
    v->live_blocks--;
    v->slack -= a->block - need;
    if (v->enabled && a->block <= v->max && v->cache.bytes <= v->max - a->block) {
        blocks_push(&v->cache, a->base, a->block, a->wipe ? a->size : 0);
        return true;
    }
    v->used -= a->block;
    v->released += a->block;
    return false;
}

/* Record an allocation the library made as planned. */
static m_alloc *record_alloc(uintptr_t base, size_t bytes, uint64_t gen, uint32_t tag, int d,
                             const alloc_plan *pl, bool wipe) {
    if (pl->hit)
        FUZZ_CHECK(base == pl->addr, "op #%llu %s: pool hit at %#lx, model expects the cached "
                   "block at %#lx", (unsigned long long)g_op_index, g_what, (unsigned long)base,
                   (unsigned long)pl->addr);
    size_t extent = pl->block ? pl->block : fuzz_rounded(bytes);
    for (int i = 0; i < g_m.n_live; i++) {
        const m_alloc *o = &g_m.live[i];
        size_t other = o->block ? o->block : fuzz_rounded(o->size);
        FUZZ_CHECK(base + extent <= o->base || o->base + other <= base,
                   "op #%llu %s: block [%#lx, +%zu) overlaps live block [%#lx, +%zu)",
                   (unsigned long long)g_op_index, g_what, (unsigned long)base, extent,
                   (unsigned long)o->base, other);
    }
    if (is_tomb(base)) g_reused_addresses++;
    if (pl->hit) g_pool_hits++;
    m_alloc *a = model_add(&g_m, base, bytes, gen, tag, d); /* tombstones inside it stay */
    a->block = pl->block;
    a->wipe = wipe;
    g_dev[d].allocs++;
    if (g_m.dev_bytes[d] > g_dev[d].peak) g_dev[d].peak = g_m.dev_bytes[d];
    if (g_m.live_bytes > g_peak_bytes) g_peak_bytes = g_m.live_bytes;
    return a;
}

/* A free the library did, past its checks: the wipe (counted as an operation), the pool or
 * the capacity, the registry's books; the free's bytes (its call is the caller's to count). */
static void release_live(int idx) {
    m_alloc *a = &g_m.live[idx];
    int d = a->device;
    if (a->wipe) book(VRAM_OP_WIPE, VRAM_SUCCESS, 0, a->size);
    if (pool_release(a) && a->wipe) {
        size_t bad = first_nonzero(a->base, a->size);
        FUZZ_CHECK(bad == SIZE_MAX, "op #%llu %s: block of %zu bytes cached under "
                   "VRAM_WIPE_ON_FREE with byte %zu set", (unsigned long long)g_op_index, g_what,
                   a->size, bad);
    }
    g_ops[VRAM_OP_FREE].bytes_ok += a->size;
    g_dev[d].frees++;
    tomb_remember(a->base, a->gen, d);
    model_remove(&g_m, idx);
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
    OP_D2D,
    OP_MIGRATE,
    OP_BATCH,
    OP_POOL_SET,
    OP_POOL_TRIM,
    OP_POOL_STATS,
    OP_HOST_ALLOC,
    OP_HOST_FREE,
    OP_HOST_REGISTER,
    OP_HOST_UNREGISTER,
    OP_HOST_TRIM,
    OP_HOST_STATS,
    OP_HOST_COPY,
    OP_STAGING,
    OP_WIPE,
    OP_DEVICE_QUERY,
    OP_ASYNC, /* 0.3.0: copies on streams and their completions, stream-ordered allocation */
    OP_KINDS
};

/* The stream of an async call (0, 1, 2: the default streams; any value: the host backend has
 * no streams) and whether its completion pointer is NULL. */
static uintptr_t pick_stream(fuzz_reader *r, bool *null_completion) {
    uint8_t k = fr_u8(r);
    *null_completion = (k & 0xf0) == 0xf0;
    return (k & 3) == 3 ? (uintptr_t)fr_u64(r) : (uintptr_t)(k & 3);
}

static void release_completion(int i) {
    g_what = "vram_completion_release";
    expect(VRAM_OP_NONE, vram_completion_release(g_comps[i]), VRAM_SUCCESS, 0, 0);
    g_comps[i] = g_comps[--g_n_comps];
}

/* After an async call: its completion, NULL on a refusal, else done (kept to be queried and
 * released later). */
static void took_completion(vram_completion *c, int want) {
    if (want != VRAM_SUCCESS) {
        FUZZ_CHECK(c == NULL, "op #%llu %s: refused, but its completion is %p",
                   (unsigned long long)g_op_index, g_what, (void *)c);
        return;
    }
    FUZZ_CHECK(c != NULL && c != (vram_completion *)(uintptr_t)0xbad0,
               "op #%llu %s: no completion", (unsigned long long)g_op_index, g_what);
    g_immediate++;
    if (g_n_comps == C_MAX) release_completion(0);
    g_comps[g_n_comps++] = c;
}

/* Stream-ordered memory comes from the driver, never from the device pool. */
static alloc_plan plan_direct(int d, size_t bytes) {
    alloc_plan pl = {VRAM_SUCCESS, 0, false, 0, 0, fuzz_rounded(bytes)};
    if (!take_capacity(&g_dev[d], pl.need)) pl.status = VRAM_ERR_ALLOCATION_FAILED, pl.driver = 2;
    return pl;
}

static void op_malloc(fuzz_reader *r, bool ex, bool small, bool async) {
    bool unused;
    uintptr_t stream = async ? pick_stream(r, &unused) : 0;
    int d = g_thread_device;
    size_t remaining = FUZZ_CAPACITY - g_dev[d].used;
    size_t bytes = small ? (size_t)fr_u16(r) % 8192 + 1 : pick_alloc_size(r, remaining);
    uint32_t tag = ex ? fr_u8(r) % 71 : 0; /* 0..70: 64..70 are invalid */
    uint8_t flags = fr_u8(r);
    bool null_ptr = (flags & 31) == 31;
    bool want_gen = ex && (flags & 32);
    g_what = async ? "vram_malloc_async" : ex ? "vram_malloc_ex" : "vram_malloc";

    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, driver = 0;
    if (null_ptr) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    } else if (bytes == 0) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_ZERO_SIZE;
    } else if (bytes > SIZE_MAX - (VRAM_ALIGNMENT - 1)) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_SIZE_OVERFLOW;
    } else if (tag >= VRAM_MAX_TAGS) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_TAG;
    }
    alloc_plan pl = {0, 0, false, 0, 0, 0};
    if (want == VRAM_SUCCESS) {
        if (g_m.n_live == M_MAX_LIVE) return; /* the model is full */
        pl = async ? plan_direct(d, bytes) : plan_alloc(d, bytes);
        want = pl.status, driver = pl.driver;
    }

    snprintf(g_args, sizeof g_args, "%s, %zu bytes, tag %u, %s (device %d)",
             null_ptr ? "NULL" : "&p", bytes, tag, want_gen ? "&generation" : "NULL", d);
    void *p = (void *)(uintptr_t)0xbad0;
    uint64_t g = 0xbad1;
    int got;
    if (async)
        got = vram_malloc_async(null_ptr ? NULL : &p, bytes, tag, want_gen ? &g : NULL, stream);
    else if (ex)
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
    record_alloc((uintptr_t)p, bytes, gen, tag, d, &pl, g_wipe_policy == VRAM_WIPE_ON_FREE);
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

/* A generation: hint's (right when the pointer is its base), 0, stale, never issued,
 * another live one's, near UINT64_MAX or random. */
static uint64_t pick_generation(fuzz_reader *r, int hint) {
    switch (fr_u8(r) % 9) {
    case 0: case 1: case 2: return hint >= 0 ? g_m.live[hint].gen : g_next_gen - 1;
    case 3: return 0;
    case 4: return g_m.n_freed ? g_m.freed[fr_u8(r) % g_m.n_freed].gen : 1;
    case 5: return g_next_gen + fr_u8(r);
    case 6: return g_m.n_live ? g_m.live[fr_u8(r) % g_m.n_live].gen : g_next_gen;
    case 7: return UINT64_MAX - fr_u8(r);
    default: return fr_u64(r);
    }
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
    int32_t repeat = -1; /* the tombstone of a repeated free */
    if (!p || live >= 0) {
    } else if (model_find(&g_m, p) >= 0) {
        want = VRAM_ERR_INTERIOR_POINTER, reason = VRAM_REASON_INTERIOR_POINTER;
    } else if ((repeat = tomb_find(p)) >= 0) {
    } else {
        want = VRAM_ERR_UNKNOWN_POINTER, reason = VRAM_REASON_UNKNOWN_POINTER;
    }
    if (live >= 0) verify_in_place(&g_m.live[live]);
    snprintf(g_args, sizeof g_args, "%#lx", (unsigned long)p);
    expect(VRAM_OP_FREE, vram_free((void *)p), want, reason, 0);
    if (repeat >= 0) g_dev[g_ring[repeat].device].repeats++, g_repeat_hits++;
    if (live >= 0) release_live(live);
}

static void op_free_ex(fuzz_reader *r, bool async) {
    bool unused;
    uintptr_t stream = async ? pick_stream(r, &unused) : 0;
    int hint;
    uintptr_t p = pick_pointer(r, &hint);
    uint64_t g = pick_generation(r, hint);
    g_what = async ? "vram_free_async" : "vram_free_ex";
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, release = -1, repeat = -1;
    if (g == 0) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
    } else if (!p) {
    } else if (g >= g_next_gen) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
    } else {
        int i = model_find_gen(&g_m, g);
        if (i < 0) { /* no longer live, whoever freed it: counted on the device of its tombstone */
            int32_t t = tomb_find(p);
            repeat = t >= 0 && g_ring[t].gen == g ? g_ring[t].device : 0;
        } else if (g_m.live[i].base != p) {
            want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
        } else {
            release = i;
        }
    }
    if (release >= 0) verify_in_place(&g_m.live[release]);
    snprintf(g_args, sizeof g_args, "%#lx, generation %llu", (unsigned long)p,
             (unsigned long long)g);
    expect(VRAM_OP_FREE, async ? vram_free_async((void *)p, g, stream) : vram_free_ex((void *)p, g),
           want, reason, 0);
    if (repeat >= 0) g_dev[repeat].repeats++;
    if (release >= 0) release_live(release);
}

static void op_copy(fuzz_reader *r, bool h2d, bool async) {
    bool null_completion = false;
    uintptr_t stream = async ? pick_stream(r, &null_completion) : 0;
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
    g_what = async ? (h2d ? "vram_memcpy_h2d_async" : "vram_memcpy_d2h_async")
                   : (h2d ? "vram_memcpy_h2d" : "vram_memcpy_d2h");
    copy_call c = copy_prepare(&g_m, h2d, dev, n, host_kind, seed, r, is_tomb);
    int op = h2d ? VRAM_OP_MEMCPY_H2D : VRAM_OP_MEMCPY_D2H;
    snprintf(g_args, sizeof g_args, "device %#lx, host %#lx, %zu bytes, stream %#lx", (unsigned long)c.dev,
             (unsigned long)c.host, c.n, (unsigned long)stream);
    if (async) {
        if (null_completion) /* checked first */
            c.pred.status = VRAM_ERR_INVALID_PARAMETERS, c.pred.reason = VRAM_REASON_NULL_POINTER;
        vram_completion *done = (vram_completion *)(uintptr_t)0xbad0, **out = null_completion ? NULL : &done;
        int got = h2d ? vram_memcpy_h2d_async((void *)c.dev, (const void *)c.host, c.n, stream, out)
                      : vram_memcpy_d2h_async((void *)c.host, (const void *)c.dev, c.n, stream, out);
        expect(op, got, c.pred.status, c.pred.reason, 0);
        if (out) took_completion(done, c.pred.status);
    } else {
        expect(op, copy_run(&c), c.pred.status, c.pred.reason, 0);
    }
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
    size_t want_free = (size_t)(FUZZ_CAPACITY - g_dev[g_thread_device].used);
    if (ok) {
        FUZZ_CHECK(t == FUZZ_CAPACITY && f == want_free,
                   "vram_get_info on device %d: free %zu total %zu; model %zu %zu",
                   g_thread_device, f, t, want_free, FUZZ_CAPACITY);
    } else {
        FUZZ_CHECK((!fp || f == 0) && (!tp || t == 0), "failed vram_get_info left outputs set");
    }
}

static void op_list(fuzz_reader *r) {
    static const int devices[] = {-1, 0, 1, -1, 1, 31, 32, -2};
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
    /* Oldest first: the model keeps its allocations in the order they were made. */
    size_t live = 0;
    for (int i = 0; i < g_m.n_live; i++) {
        const m_alloc *a = &g_m.live[i];
        if (device >= 0 && a->device != device) continue;
        if (live < capacity)
            FUZZ_CHECK(recs[live].address == a->base && recs[live].bytes == a->size &&
                           recs[live].generation == a->gen && recs[live].tag == a->tag &&
                           recs[live].device == a->device,
                       "vram_registry_list(%d): record %zu is {%#llx, %llu, gen %llu, tag %u, "
                       "device %d}, model {%#lx, %zu, gen %llu, tag %u, device %d}",
                       device, live, (unsigned long long)recs[live].address,
                       (unsigned long long)recs[live].bytes,
                       (unsigned long long)recs[live].generation, recs[live].tag,
                       recs[live].device, (unsigned long)a->base, a->size,
                       (unsigned long long)a->gen, a->tag, a->device);
        live++;
    }
    FUZZ_CHECK(count == live, "vram_registry_list(%d): count %zu, model %zu", device, count, live);
}

/* Whether the pools hold anything: a backend switch is refused (10) while they do. */
static bool pools_busy(void) {
    for (int d = 0; d < FUZZ_DEVICES; d++)
        if (g_dev[d].cache.n || g_dev[d].live_blocks) return true;
    return false;
}

static void op_select_backend(fuzz_reader *r) {
    static const char *names[] = {"host", "cuda", "bogus", NULL, "", "HOST"};
    const char *name = names[fr_u8(r) % 6];
    bool busy = g_m.n_live > 0 || pools_busy();
    /* Switching to cuda for real (nothing held) would load a driver: ask only when busy. */
    if (name && strcmp(name, "cuda") == 0 && !busy) name = "host";
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
    static const int devices[] = {0, 1, 31, 32, -1, INT32_MIN, INT32_MAX, 1, 2, 0};
    int device = devices[fr_u8(r) % 10];
    bool ok = device >= 0 && device < FUZZ_DEVICES;
    g_what = "vram_set_device";
    snprintf(g_args, sizeof g_args, "%d", device);
    expect(VRAM_OP_NONE, vram_set_device(device), ok ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS,
           ok ? VRAM_REASON_NONE : VRAM_REASON_INVALID_DEVICE, 0);
    if (ok) g_thread_device = device;
    int now = -1;
    expect(VRAM_OP_NONE, vram_get_device(&now), VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    FUZZ_CHECK(now == g_thread_device, "thread device is %d, model %d", now, g_thread_device);
    expect(VRAM_OP_NONE, vram_get_device(NULL), VRAM_ERR_INVALID_PARAMETERS,
           VRAM_REASON_NULL_POINTER, 0);
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

/* ---- copies between allocations, migration, batches ---------------------------------- */

/* The operation a copy between two devices is counted as. */
static int path_op(int src_device, int dst_device) {
    if (src_device == dst_device) return VRAM_OP_MEMCPY_D2D;
    return g_peer ? VRAM_OP_MEMCPY_P2P : VRAM_OP_MEMCPY_STAGED;
}

/* One side of a device-to-device copy: 0, or the code and reason of its refusal. */
static int d2d_side(uintptr_t p, size_t n, int *holder, int *reason) {
    *holder = model_find(&g_m, p);
    if (*holder < 0) {
        *reason = is_tomb(p) ? VRAM_REASON_FREED_POINTER : VRAM_REASON_UNKNOWN_POINTER;
        return VRAM_ERR_UNKNOWN_POINTER;
    }
    if (n > g_m.live[*holder].size - (p - g_m.live[*holder].base)) {
        *reason = VRAM_REASON_OUT_OF_BOUNDS;
        return VRAM_ERR_OUT_OF_BOUNDS;
    }
    return VRAM_SUCCESS;
}

static void op_d2d(fuzz_reader *r, bool async) {
    bool null_completion = false;
    uintptr_t stream = async ? pick_stream(r, &null_completion) : 0;
    int hs, hd;
    uintptr_t s = pick_pointer(r, &hs), d;
    int src_holder = model_find(&g_m, s);
    switch (fr_u8(r) % 6) {
    case 0: case 1: d = pick_pointer(r, &hd); break;
    case 2: /* inside a live allocation, often another device's */
        if (g_m.n_live) {
            const m_alloc *a = &g_m.live[fr_u8(r) % g_m.n_live];
            d = a->base + fr_u16(r) % a->size;
        } else {
            d = pick_pointer(r, &hd);
        }
        break;
    case 3: /* the same allocation, elsewhere in it: overlapping or not */
        d = src_holder >= 0 ? g_m.live[src_holder].base + pick_offset(r, g_m.live[src_holder].size)
                            : pick_pointer(r, &hd);
        break;
    case 4: d = s + (uintptr_t)(int64_t)(int16_t)fr_u16(r); break; /* near it */
    default: d = s; break;
    }
    size_t remaining = 0, padding_left = 0; /* from the source, or the destination if less */
    if (src_holder >= 0) {
        const m_alloc *a = &g_m.live[src_holder];
        remaining = a->size - (s - a->base);
        padding_left = fuzz_rounded(a->size) - (s - a->base);
    }
    int dst_holder = model_find(&g_m, d);
    if (dst_holder >= 0 && g_m.live[dst_holder].size - (d - g_m.live[dst_holder].base) < remaining) {
        const m_alloc *a = &g_m.live[dst_holder];
        remaining = a->size - (d - a->base);
        padding_left = fuzz_rounded(a->size) - (d - a->base);
    }
    size_t n = pick_copy_size(r, remaining, padding_left);
    if (device_side_ok(&g_m, s, n) && device_side_ok(&g_m, d, n) && n > FUZZ_COPY_MAX)
        n = FUZZ_COPY_MAX; /* a copy that may succeed is at most this long */
    g_what = async ? "vram_memcpy_d2d_async" : "vram_memcpy_d2d";
    snprintf(g_args, sizeof g_args, "dst %#lx, src %#lx, %zu bytes, stream %#lx", (unsigned long)d,
             (unsigned long)s, n, (unsigned long)stream);

    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, op = VRAM_OP_MEMCPY_D2D, dh = -1, sh = -1;
    if (null_completion) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    } else if (!d || !s) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    } else if (n == 0) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_ZERO_SIZE;
    } else if (fuzz_wraps(d, n) || fuzz_wraps(s, n)) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_RANGE_WRAP;
    } else if (d < s + n && s < d + n) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_OVERLAP;
    } else if ((want = d2d_side(s, n, &sh, &reason)) == VRAM_SUCCESS &&
               (want = d2d_side(d, n, &dh, &reason)) == VRAM_SUCCESS) {
        op = path_op(g_m.live[sh].device, g_m.live[dh].device);
    }
    if (async) {
        vram_completion *done = (vram_completion *)(uintptr_t)0xbad0;
        expect(op, vram_memcpy_d2d_async((void *)d, (const void *)s, n, stream,
                                         null_completion ? NULL : &done), want, reason, 0);
        if (!null_completion) took_completion(done, want);
    } else {
        expect(op, vram_memcpy_d2d((void *)d, (const void *)s, n), want, reason, 0);
    }
    int src_live = model_find(&g_m, s), dst_live = model_find(&g_m, d);
    if (want != VRAM_SUCCESS) { /* nothing written */
        if (src_live >= 0) verify_in_place(&g_m.live[src_live]);
        if (dst_live >= 0) verify_in_place(&g_m.live[dst_live]);
        return;
    }
    g_ops[op].bytes_ok += n;
    g_d2d_ok++;
    m_alloc *da = &g_m.live[dh];
    shadow_copy(da, d - da->base, &g_m.live[sh], s - g_m.live[sh].base, n);
    FUZZ_CHECK(memcmp((const void *)d, (const void *)s, n) == 0,
               "op #%llu vram_memcpy_d2d(%s): the ranges differ after the copy",
               (unsigned long long)g_op_index, g_args);
    verify_in_place(da);
    verify_in_place(&g_m.live[sh]);
    g_bytes_checked += n;
}

static void op_copy_path(fuzz_reader *r) {
    static const int devices[] = {0, 1, 0, 1, 2, -1, 32, INT32_MIN};
    int s = devices[fr_u8(r) % 8], d = devices[fr_u8(r) % 8];
    bool null = (fr_u8(r) & 7) == 7;
    int path = 99;
    g_what = "vram_copy_path_get";
    snprintf(g_args, sizeof g_args, "%d, %d, %s", s, d, null ? "NULL" : "&path");
    int got = vram_copy_path_get(s, d, null ? NULL : &path);
    bool valid = s >= 0 && s < FUZZ_DEVICES && d >= 0 && d < FUZZ_DEVICES;
    if (null) {
        expect(VRAM_OP_NONE, got, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NONE, 0);
    } else if (!valid) {
        expect(VRAM_OP_NONE, got, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE, 0);
    } else {
        expect(VRAM_OP_NONE, got, VRAM_SUCCESS, VRAM_REASON_NONE, 0);
        int want = s == d ? VRAM_PATH_DEVICE : g_peer ? VRAM_PATH_PEER : VRAM_PATH_STAGED;
        FUZZ_CHECK(path == want, "vram_copy_path_get(%d, %d): path %d, model %d", s, d, path, want);
    }
}

static void op_migrate(fuzz_reader *r) {
    static const int devices[] = {0, 1, 1, 0, -1, 2, 32, INT32_MIN};
    int hint;
    uintptr_t p = pick_pointer(r, &hint);
    uint64_t g = pick_generation(r, hint);
    uint8_t k = fr_u8(r);
    int device = (k & 8) && hint >= 0 ? 1 - g_m.live[hint].device : devices[k % 8];
    uint8_t outs = fr_u8(r);
    bool null_new = (outs & 7) == 7, want_gen = outs & 8;
    g_what = "vram_migrate";
    snprintf(g_args, sizeof g_args, "%#lx, generation %llu, device %d, %s, %s", (unsigned long)p,
             (unsigned long long)g, device, null_new ? "NULL" : "&new_ptr",
             want_gen ? "&new_generation" : "NULL");

    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, driver = 0, src = -1;
    bool moves = false;
    alloc_plan pl = {0, 0, false, 0, 0, 0};
    if (!p || null_new) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    } else if (g == 0) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_GENERATION;
    } else if (device < 0 || device >= FUZZ_DEVICES) {
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_INVALID_DEVICE;
    } else if ((src = model_find_gen(&g_m, g)) < 0 || g_m.live[src].base != p) {
        want = VRAM_ERR_UNKNOWN_POINTER, reason = VRAM_REASON_UNKNOWN_POINTER;
        src = -1;
    } else if (g_m.live[src].device != device) {
        if (g_m.n_live == M_MAX_LIVE) return; /* no room in the model for the new one */
        moves = true;
        pl = plan_alloc(device, g_m.live[src].size);
        want = pl.status, driver = pl.driver;
        /* The new allocation is a malloc of its own; its failure is the migration's. */
        book(VRAM_OP_MALLOC, want, VRAM_REASON_NONE, g_m.live[src].size);
    }
    if (src >= 0) verify_in_place(&g_m.live[src]);
    void *np = (void *)(uintptr_t)0xbad0;
    uint64_t ng = 0xbad1;
    int got = vram_migrate((void *)p, g, device, null_new ? NULL : &np, want_gen ? &ng : NULL);
    expect(VRAM_OP_MIGRATE, got, want, reason, driver);
    if (want != VRAM_SUCCESS) {
        if (!null_new) FUZZ_CHECK(np == NULL, "failed vram_migrate left *new_ptr = %p", np);
        if (want_gen) FUZZ_CHECK(ng == 0, "failed vram_migrate left new generation %llu",
                                 (unsigned long long)ng);
        if (src >= 0) verify_in_place(&g_m.live[src]); /* unchanged */
        return;
    }
    if (!moves) { /* already on that device: unchanged */
        FUZZ_CHECK((uintptr_t)np == p && (!want_gen || ng == g),
                   "vram_migrate to its own device: %p generation %llu, model %#lx %llu", np,
                   (unsigned long long)ng, (unsigned long)p, (unsigned long long)g);
        return;
    }
    uint64_t gen = g_next_gen++;
    FUZZ_CHECK(!want_gen || ng == gen, "vram_migrate: new generation %llu, model %llu",
               (unsigned long long)ng, (unsigned long long)gen);
    m_alloc *old = &g_m.live[src];
    size_t bytes = old->size;
    m_alloc *na = record_alloc((uintptr_t)np, bytes, gen, old->tag, device, &pl, old->wipe);
    memcpy(na->shadow, old->shadow, old->shadow_len);
    memcpy(na->known, old->known, old->shadow_len);
    verify_in_place(na); /* the content came along */
    book(path_op(old->device, device), VRAM_SUCCESS, 0, bytes);
    book(VRAM_OP_FREE, VRAM_SUCCESS, 0, 0); /* the source: its bytes are release_live's */
    release_live(src);
    g_ops[VRAM_OP_MIGRATE].bytes_ok += bytes;
    g_migrations++;
}

#define BATCH_MAX 8

static size_t pick_batch_size(fuzz_reader *r, int d) {
    switch (fr_u8(r) % 12) {
    case 0: return 0;
    case 1: return SIZE_MAX - fr_u8(r) % 255;                 /* rounding overflows */
    case 2: return FUZZ_CAPACITY + 1 + fr_u8(r);              /* never fits */
    case 3: return (size_t)(FUZZ_CAPACITY - g_dev[d].used) + 1; /* one byte too many */
    case 4: return (size_t)1 << (20 + fr_u8(r) % 6);          /* 1..32 MiB */
    case 5: return 256 * ((size_t)fr_u8(r) + 1);
    default: return (size_t)fr_u16(r) % 8192 + 1;
    }
}

/* Whether an array of count 8-byte elements at p wraps the address space. */
static bool array_wraps(uintptr_t p, size_t count) {
    return count > SIZE_MAX / 8 || fuzz_wraps(p, count * 8);
}

/* Pointers to the batch's arrays: NULL, one whose first element already wraps, or real. */
static uintptr_t batch_array(unsigned kind, void *real) {
    return kind == 0 ? 0 : kind == 1 ? UINTPTR_MAX - 7 : (uintptr_t)real;
}

static void op_batch(fuzz_reader *r) {
    int d = g_thread_device;
    size_t n = 1 + fr_u8(r) % BATCH_MAX;
    size_t *sizes_buf = malloc(n * sizeof *sizes_buf);
    void **ptrs_buf = malloc(n * sizeof *ptrs_buf);
    uint64_t *gens_buf = malloc(n * sizeof *gens_buf);
    FUZZ_CHECK(sizes_buf && ptrs_buf && gens_buf, "out of host memory");
    for (size_t i = 0; i < n; i++) {
        sizes_buf[i] = pick_batch_size(r, d);
        ptrs_buf[i] = (void *)(uintptr_t)(0xbad0 + i);
        gens_buf[i] = 0xbad1;
    }
    uint32_t tag = fr_u8(r) % 71;
    uint8_t f = fr_u8(r), a = fr_u8(r);
    size_t count = (f & 7) == 5   ? 0
                   : (f & 7) == 6 ? SIZE_MAX / 8 + 1 + fr_u8(r) /* over SIZE_MAX / 8 */
                   : (f & 7) == 7 ? SIZE_MAX / 8 - fr_u8(r)     /* the arrays' ends wrap */
                                  : n;
    unsigned pk = a % 8, sk = (a / 8) % 8, gk = a / 64; /* 0 NULL, 1 wrapping, else real */
    uintptr_t ptrs = batch_array(pk, ptrs_buf), sizes = batch_array(sk, sizes_buf);
    uintptr_t gens = gk == 3 ? batch_array(1, NULL) : gk == 2 ? (uintptr_t)gens_buf : 0;
    g_what = "vram_malloc_batch";
    snprintf(g_args, sizeof g_args, "ptrs %#lx, sizes %#lx, count %zu, tag %u, generations %#lx "
             "(device %d)", (unsigned long)ptrs, (unsigned long)sizes, count, tag,
             (unsigned long)gens, d);

    int reason = VRAM_REASON_NONE;
    if (!ptrs || !sizes)
        reason = VRAM_REASON_NULL_POINTER;
    else if (count == 0)
        reason = VRAM_REASON_ZERO_SIZE;
    else if (array_wraps(ptrs, count) || array_wraps(sizes, count) || (gens && array_wraps(gens, count)))
        reason = VRAM_REASON_SIZE_OVERFLOW;
    else if (tag >= VRAM_MAX_TAGS)
        reason = VRAM_REASON_INVALID_TAG;
    /* Past the fuzzer's n elements the library would read sizes or write outputs that are not
     * there: a count over n must make the real arrays wrap (heap addresses always do). */
    if (count > n && (reason == VRAM_REASON_NONE || (ptrs && !array_wraps(ptrs, count)))) goto out;
    for (size_t i = 0; reason == VRAM_REASON_NONE && i < count; i++) {
        if (sizes_buf[i] == 0) reason = VRAM_REASON_ZERO_SIZE;
        else if (sizes_buf[i] > SIZE_MAX - (VRAM_ALIGNMENT - 1)) reason = VRAM_REASON_SIZE_OVERFLOW;
    }
    /* Outputs are cleared first wherever they can be written: only real arrays of n. */
    bool cleared = ptrs && count && !array_wraps(ptrs, count);
    bool gens_cleared = cleared && gens && !array_wraps(gens, count);
    alloc_plan plans[BATCH_MAX];
    size_t made = 0; /* allocations the batch makes before one fails, or count */
    int want = VRAM_SUCCESS, driver = 0;
    if (reason != VRAM_REASON_NONE) {
        want = VRAM_ERR_INVALID_PARAMETERS;
    } else {
        if (g_m.n_live + (int)count > M_MAX_LIVE) goto out; /* no room in the model */
        for (; made < count; made++) {
            plans[made] = plan_alloc(d, sizes_buf[made]);
            if (plans[made].status != VRAM_SUCCESS) {
                want = plans[made].status, driver = plans[made].driver;
                break;
            }
        }
    }
    g_n_rec = 0;
    t_recording = true;
    int got = vram_malloc_batch((void **)ptrs, (const size_t *)sizes, count, tag, (uint64_t *)gens);
    t_recording = false;
    check_code(VRAM_OP_MALLOC, got, want, reason, driver);
    for (size_t i = 0; i < n; i++) {
        bool out_set = cleared && i < count;
        if (want != VRAM_SUCCESS || !out_set)
            FUZZ_CHECK(ptrs_buf[i] == (out_set ? NULL : (void *)(uintptr_t)(0xbad0 + i)),
                       "op #%llu %s(%s) -> %d: ptrs[%zu] = %p", (unsigned long long)g_op_index,
                       g_what, g_args, got, i, ptrs_buf[i]);
        if (want != VRAM_SUCCESS || !gens_cleared || i >= count)
            FUZZ_CHECK(gens_buf[i] == (gens_cleared && i < count ? 0 : 0xbad1),
                       "op #%llu %s(%s) -> %d: generations[%zu] = %llu",
                       (unsigned long long)g_op_index, g_what, g_args, got, i,
                       (unsigned long long)gens_buf[i]);
    }
    if (reason != VRAM_REASON_NONE) { /* one refused malloc */
        book(VRAM_OP_MALLOC, want, reason, 0);
        goto out;
    }
    /* Each buffer is a malloc; after a failure, the ones made are freed, oldest first. Their
     * addresses: a cached block's, else the host backend's allocations of their size, which
     * the call freed again unless the pool (on) kept them. */
    int rec = 0;
    bool kept = g_dev[d].enabled;
    uint64_t first_gen = g_next_gen;
    for (size_t i = 0; i < made; i++) {
        uintptr_t base = (uintptr_t)ptrs_buf[i];
        if (want != VRAM_SUCCESS) {
            base = plans[i].addr;
            while (!plans[i].hit && rec < g_n_rec &&
                   (g_rec[rec].n != plans[i].need || (!kept && !g_rec[rec].freed)))
                rec++;
            if (!plans[i].hit) {
                FUZZ_CHECK(rec < g_n_rec, "op #%llu %s(%s): no allocation of %zu bytes seen for "
                           "buffer %zu", (unsigned long long)g_op_index, g_what, g_args,
                           plans[i].need, i);
                base = g_rec[rec++].p;
            }
        }
        uint64_t gen = g_next_gen++;
        if (want == VRAM_SUCCESS && gens)
            FUZZ_CHECK(gens_buf[i] == gen, "vram_malloc_batch: generations[%zu] %llu, model %llu",
                       i, (unsigned long long)gens_buf[i], (unsigned long long)gen);
        record_alloc(base, sizes_buf[i], gen, tag, d, &plans[i], g_wipe_policy == VRAM_WIPE_ON_FREE);
        book(VRAM_OP_MALLOC, VRAM_SUCCESS, 0, sizes_buf[i]);
    }
    if (want == VRAM_SUCCESS) {
        g_batches_ok++;
        goto out;
    }
    book(VRAM_OP_MALLOC, want, VRAM_REASON_NONE, 0);
    for (uint64_t gen = first_gen; gen < g_next_gen; gen++) {
        book(VRAM_OP_FREE, VRAM_SUCCESS, 0, 0);
        release_live(model_find_gen(&g_m, gen));
    }
    if (made) g_batches_undone++;
out:
    free(sizes_buf);
    free(ptrs_buf);
    free(gens_buf);
}

/* ---- the device pool ------------------------------------------------------------------ */

static uint64_t pick_pool_bytes(fuzz_reader *r, int d) {
    uint64_t cached = d >= 0 && d < FUZZ_DEVICES ? g_dev[d].cache.bytes : 0;
    switch (fr_u8(r) % 10) {
    case 0: return 0;
    case 1: return cached;
    case 2: return cached ? cached - 1 : 0;
    case 3: return (uint64_t)fr_u16(r) * 256;
    case 4: return fr_u32(r);
    case 5: return FUZZ_CAPACITY;
    case 6: return UINT64_MAX - fr_u8(r);
    case 7: return (uint64_t)1 << (fr_u8(r) % 27);
    default: return (uint64_t)fr_u16(r) * 1024;
    }
}

static const int g_pool_devices[] = {0, 1, 0, 1, -1, 2, 31, 32, -2, INT32_MIN};

static void op_pool_set(fuzz_reader *r) {
    int d = g_pool_devices[fr_u8(r) % 10];
    uint64_t max = pick_pool_bytes(r, d);
    g_what = "vram_pool_set";
    snprintf(g_args, sizeof g_args, "%d, %llu", d, (unsigned long long)max);
    int got = vram_pool_set(d, max);
    if (d < 0 || d >= FUZZ_DEVICES) { /* a setting: refusals are not counted */
        expect(VRAM_OP_NONE, got, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE, 0);
        return;
    }
    dev_model *v = &g_dev[d];
    bool trims = v->cache.bytes > max; /* lowering the bound releases what is over it */
    v->max = max;
    v->enabled = max > 0;
    if (!trims) {
        expect(VRAM_OP_NONE, got, VRAM_SUCCESS, VRAM_REASON_NONE, 0);
        return;
    }
    expect(VRAM_OP_POOL_TRIM, got, VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    g_ops[VRAM_OP_POOL_TRIM].bytes_ok += blocks_trim(&v->cache, max, v);
}

static void op_pool_trim(fuzz_reader *r) {
    static const int devices[] = {-1, 0, 1, -1, 0, 1, 2, 31, 32, -2};
    int d = devices[fr_u8(r) % 10];
    uint64_t keep = pick_pool_bytes(r, d);
    g_what = "vram_pool_trim";
    snprintf(g_args, sizeof g_args, "%d, %llu", d, (unsigned long long)keep);
    int got = vram_pool_trim(d, keep);
    if (d < -1 || d >= FUZZ_DEVICES) {
        expect(VRAM_OP_POOL_TRIM, got, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE, 0);
        return;
    }
    check_code(VRAM_OP_POOL_TRIM, got, VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    for (int i = 0; i < FUZZ_DEVICES; i++) /* -1: each device, each counted as a trim */
        if (d < 0 || i == d)
            book(VRAM_OP_POOL_TRIM, VRAM_SUCCESS, 0, blocks_trim(&g_dev[i].cache, keep, &g_dev[i]));
}

static void op_pool_stats(fuzz_reader *r) {
    int d = g_pool_devices[fr_u8(r) % 10];
    unsigned kind = fr_u8(r) % 6;
    vram_pool_stats s[2];
    size_t size = kind == 1 ? sizeof s[0] - 1 - fr_u8(r) % 8 : kind == 2 ? 2 * sizeof s[0] : sizeof s[0];
    bool null = kind == 3;
    g_what = "vram_pool_stats_get";
    snprintf(g_args, sizeof g_args, "%d, %s, %zu", d, null ? "NULL" : "&stats", size);
    int got = vram_pool_stats_get(d, null ? NULL : s, size);
    bool bad = null || size < sizeof s[0] || d < -1 || d >= VRAM_MAX_DEVICES;
    expect(VRAM_OP_NONE, got, bad ? VRAM_ERR_INVALID_PARAMETERS : VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    if (bad) return;
    if (d >= FUZZ_DEVICES) { /* a device the backend does not have: nothing */
        vram_pool_stats zero;
        memset(&zero, 0, sizeof zero);
        zero.struct_size = (uint32_t)sizeof zero;
        FUZZ_CHECK(memcmp(&s[0], &zero, sizeof zero) == 0, "pool stats of device %d not empty", d);
        return;
    }
    compare_pool(d, &s[0]);
}

/* ---- pinned host memory ----------------------------------------------------------------- */

/* pinned.c's classes, from the header: 4 KiB, then four per power of two (whole pages). */
static size_t pinned_class(size_t bytes) {
    if (bytes <= 4096) return 4096;
    size_t p = 4096;
    while (p * 2 < bytes) p *= 2; /* p < bytes <= 2p */
    size_t step = p / 4 < 4096 ? 4096 : p / 4;
    return (bytes + step - 1) / step * step;
}

/* The pinned range (block or registration) holding p, or -1. */
static int hr_holding(uintptr_t p) {
    for (int i = 0; i < g_n_hr; i++)
        if (p - g_hr[i].addr < g_hr[i].size) return i;
    return -1;
}

static bool hr_overlaps(uintptr_t p, size_t n) { /* p + n does not wrap */
    for (int i = 0; i < g_n_hr; i++)
        if (p < g_hr[i].addr + g_hr[i].size && g_hr[i].addr < p + n) return true;
    return false;
}

static void hr_remove(int i) {
    if (g_hr[i].block) g_n_hblocks--; else g_n_hregs--;
    g_hr[i] = g_hr[--g_n_hr];
}

/* A block or registration, of either kind (-1 if none): the k-th one of that kind. */
static int hr_pick(bool block, unsigned k) {
    int n = block ? g_n_hblocks : g_n_hregs;
    if (!n) return -1;
    k %= (unsigned)n;
    for (int i = 0; i < g_n_hr; i++)
        if (g_hr[i].block == block && k-- == 0) return i;
    return -1;
}

static size_t pick_host_size(fuzz_reader *r) {
    switch (fr_u8(r) % 10) {
    case 0: return 0;
    case 1: return SIZE_MAX / 2 + 1 + fr_u8(r);
    case 2: return SIZE_MAX - fr_u8(r);
    case 3: return 4096;
    case 4: return 4097 + fr_u16(r) % 4096;
    case 5: return (size_t)4096 << (fr_u8(r) % 7);
    case 6: return 1 + (size_t)fr_u8(r);
    default: return 1 + (size_t)fr_u32(r) % ((size_t)256 << 10);
    }
}

static void op_host_alloc(fuzz_reader *r) {
    size_t bytes = pick_host_size(r);
    bool null = (fr_u8(r) & 15) == 15;
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE;
    if (null)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    else if (bytes == 0)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_ZERO_SIZE;
    else if (bytes > SIZE_MAX / 2)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_SIZE_OVERFLOW;
    else if (g_n_hblocks == H_MAX)
        return; /* the model is full */
    size_t size = want == VRAM_SUCCESS ? pinned_class(bytes) : 0;
    m_block reused = {0, 0, 0};
    bool reuse = want == VRAM_SUCCESS && blocks_take(&g_hcache, size, &reused);
    g_what = "vram_host_alloc";
    snprintf(g_args, sizeof g_args, "%s, %zu", null ? "NULL" : "&p", bytes);
    void *p = (void *)(uintptr_t)0xbad0;
    expect(VRAM_OP_HOST_ALLOC, vram_host_alloc(null ? NULL : &p, bytes), want, reason, 0);
    if (want != VRAM_SUCCESS) {
        if (!null) FUZZ_CHECK(p == NULL, "failed vram_host_alloc left *ptr = %p", p);
        return;
    }
    uintptr_t a = (uintptr_t)p;
    FUZZ_CHECK(!reuse || a == reused.addr, "vram_host_alloc(%zu) at %#lx, model expects the cached "
               "block at %#lx", bytes, (unsigned long)a, (unsigned long)reused.addr);
    FUZZ_CHECK(a && !fuzz_wraps(a, size) && !hr_overlaps(a, size),
               "vram_host_alloc(%zu): block %#lx overlaps a pinned range", bytes, (unsigned long)a);
    size_t bad = first_nonzero(a, bytes);
    FUZZ_CHECK(bad == SIZE_MAX, "vram_host_alloc(%zu)%s: byte %zu is not zero", bytes,
               reuse ? " from the cache" : "", bad);
    g_host_reused += reuse;
    g_hr[g_n_hr++] = (h_range){a, bytes, size, true};
    g_n_hblocks++;
    g_ops[VRAM_OP_HOST_ALLOC].bytes_ok += bytes;
}

static void op_host_free(fuzz_reader *r) {
    unsigned kind = fr_u8(r) % 10;
    int b = hr_pick(true, fr_u8(r));
    int g = hr_pick(false, fr_u8(r));
    uintptr_t p;
    if (kind <= 2 && b >= 0) p = g_hr[b].addr;
    else if (kind == 3 && b >= 0) p = g_hr[b].addr + 1 + fr_u32(r) % (g_hr[b].size - 1); /* interior */
    else if (kind == 4 && b >= 0) p = g_hr[b].addr + g_hr[b].size;                      /* its end */
    else if (kind == 5 && g_hcache.n) p = g_hcache.v[fr_u8(r) % g_hcache.n].addr;        /* cached */
    else if (kind == 6 && g >= 0) p = g_hr[g].addr;                                      /* registered */
    else if (kind == 7) p = 0;
    else if (kind == 8) p = (uintptr_t)g_arena + fr_u16(r);
    else p = (uintptr_t)fr_u64(r);
    int h = p ? hr_holding(p) : -1;
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE;
    if (!p) {
    } else if (h < 0 || !g_hr[h].block) {
        want = VRAM_ERR_UNKNOWN_POINTER, reason = VRAM_REASON_UNKNOWN_POINTER;
    } else if (g_hr[h].addr != p) {
        want = VRAM_ERR_INTERIOR_POINTER, reason = VRAM_REASON_INTERIOR_POINTER;
    }
    g_what = "vram_host_free";
    snprintf(g_args, sizeof g_args, "%#lx", (unsigned long)p);
    expect(VRAM_OP_HOST_FREE, vram_host_free((void *)p), want, reason, 0);
    if (!p || want != VRAM_SUCCESS) return;
    h_range freed = g_hr[h];
    size_t bad = first_nonzero(freed.addr, freed.bytes); /* cached, zeroed */
    FUZZ_CHECK(bad == SIZE_MAX, "vram_host_free(%#lx): byte %zu of the cached block is not zero",
               (unsigned long)p, bad);
    hr_remove(h);
    blocks_push(&g_hcache, freed.addr, freed.size, 0);
    g_ops[VRAM_OP_HOST_FREE].bytes_ok += freed.bytes;
}

static void op_host_register(fuzz_reader *r) {
    unsigned kind = fr_u8(r) % 10;
    int b = hr_pick(true, fr_u8(r)), g = hr_pick(false, fr_u8(r));
    uintptr_t p;
    size_t n;
    size_t off = fr_u32(r) % ARENA;
    if (kind <= 3) { /* a range of the arena */
        p = (uintptr_t)g_arena + off;
        n = 1 + fr_u32(r) % (ARENA - off);
    } else if (kind == 4) {
        p = 0, n = 1 + fr_u16(r);
    } else if (kind == 5) {
        p = (uintptr_t)g_arena + off, n = 0;
    } else if (kind == 6) { /* near the top of the address space: may wrap */
        p = UINTPTR_MAX - fr_u8(r), n = 1 + fr_u16(r) % 512;
    } else if (kind == 7 && b >= 0) { /* over a pinned block */
        p = g_hr[b].addr + fr_u32(r) % g_hr[b].size, n = 1 + fr_u16(r);
    } else if (kind == 8 && g >= 0) { /* over a registration */
        p = g_hr[g].addr + fr_u16(r) % g_hr[g].bytes, n = 1 + fr_u16(r);
    } else { /* nobody's memory: the host backend locks nothing */
        p = KERNEL_HALF | (uintptr_t)fr_u32(r) << 12, n = 1 + fr_u16(r);
    }
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE;
    if (!p)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    else if (n == 0)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_ZERO_SIZE;
    else if (fuzz_wraps(p, n))
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_RANGE_WRAP;
    else if (hr_overlaps(p, n))
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_OVERLAP;
    else if (g_n_hregs == H_MAX)
        return; /* the model is full */
    g_what = "vram_host_register";
    snprintf(g_args, sizeof g_args, "%#lx, %zu", (unsigned long)p, n);
    expect(VRAM_OP_NONE, vram_host_register((void *)p, n), want, reason, 0);
    if (want != VRAM_SUCCESS) return;
    g_hr[g_n_hr++] = (h_range){p, n, n, false};
    g_n_hregs++;
}

static void op_host_unregister(fuzz_reader *r) {
    unsigned kind = fr_u8(r) % 10;
    int b = hr_pick(true, fr_u8(r)), g = hr_pick(false, fr_u8(r));
    uintptr_t p;
    if (kind <= 3 && g >= 0) p = g_hr[g].addr;
    else if (kind == 4 && g >= 0 && g_hr[g].bytes > 1) p = g_hr[g].addr + 1 + fr_u16(r) % (g_hr[g].bytes - 1);
    else if (kind == 5) p = 0;
    else if (kind == 6 && b >= 0) p = g_hr[b].addr;
    else if (kind == 7) p = (uintptr_t)g_arena + fr_u16(r);
    else if (kind == 8) p = g_last_unregistered;
    else p = (uintptr_t)fr_u64(r);
    int h = p ? hr_holding(p) : -1;
    int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE;
    if (!p)
        want = VRAM_ERR_INVALID_PARAMETERS, reason = VRAM_REASON_NULL_POINTER;
    else if (h < 0 || g_hr[h].block)
        want = VRAM_ERR_UNKNOWN_POINTER, reason = VRAM_REASON_UNKNOWN_POINTER;
    else if (g_hr[h].addr != p)
        want = VRAM_ERR_INTERIOR_POINTER, reason = VRAM_REASON_INTERIOR_POINTER;
    g_what = "vram_host_unregister";
    snprintf(g_args, sizeof g_args, "%#lx", (unsigned long)p);
    expect(VRAM_OP_NONE, vram_host_unregister((void *)p), want, reason, 0);
    if (want != VRAM_SUCCESS) return;
    hr_remove(h);
    g_last_unregistered = p;
}

static void op_host_trim(fuzz_reader *r) {
    size_t keep;
    switch (fr_u8(r) % 5) {
    case 0: keep = 0; break;
    case 1: keep = g_hcache.bytes; break;
    case 2: keep = g_hcache.bytes ? g_hcache.bytes - 1 - fr_u16(r) % g_hcache.bytes : 0; break;
    case 3: keep = SIZE_MAX; break;
    default: keep = (size_t)fr_u32(r); break;
    }
    g_what = "vram_host_trim";
    snprintf(g_args, sizeof g_args, "%zu", keep);
    expect(VRAM_OP_NONE, vram_host_trim(keep), VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    blocks_trim(&g_hcache, keep, NULL);
}

static void op_host_stats(fuzz_reader *r) {
    unsigned kind = fr_u8(r) % 5;
    vram_host_stats s[2];
    size_t size = kind == 1 ? sizeof s[0] - 1 - fr_u8(r) % 8 : kind == 2 ? 2 * sizeof s[0] : sizeof s[0];
    bool null = kind == 3;
    g_what = "vram_host_stats_get";
    snprintf(g_args, sizeof g_args, "%s, %zu", null ? "NULL" : "&stats", size);
    int got = vram_host_stats_get(null ? NULL : s, size);
    if (null || size < sizeof s[0]) {
        expect(VRAM_OP_NONE, got, VRAM_ERR_INVALID_PARAMETERS,
               null ? VRAM_REASON_NULL_POINTER : VRAM_REASON_NONE, 0);
        return;
    }
    expect(VRAM_OP_NONE, got, VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    compare_host(&s[0]);
}

/* h2d / d2h with the host side in a pinned block or a registered range of the arena. */
static void op_host_copy(fuzz_reader *r) {
    bool h2d = fr_u8(r) & 1;
    int b = hr_pick(true, fr_u8(r)), g = hr_pick(false, fr_u8(r));
    int h = (fr_u8(r) & 3) == 3 && g >= 0 && g_hr[g].addr - (uintptr_t)g_arena < ARENA ? g : b;
    if (h < 0) return;
    uintptr_t host = g_hr[h].addr + fr_u32(r) % g_hr[h].bytes;
    size_t room = g_hr[h].bytes - (host - g_hr[h].addr);
    int hint;
    uintptr_t dev = pick_pointer(r, &hint);
    int holder = model_find(&g_m, dev);
    size_t remaining = 0, padding_left = 0;
    if (holder >= 0) {
        remaining = g_m.live[holder].size - (dev - g_m.live[holder].base);
        padding_left = fuzz_rounded(g_m.live[holder].size) - (dev - g_m.live[holder].base);
    }
    size_t n = pick_copy_size(r, remaining, padding_left);
    if (n > room) n = room;
    if (n > FUZZ_COPY_MAX) n = FUZZ_COPY_MAX;
    copy_pred pred = predict_copy(&g_m, dev, host, n, is_tomb(dev));
    uint8_t *buf = (uint8_t *)host;
    if (h2d)
        fuzz_fill(buf, n, fr_u64(r));
    else
        memset(buf, 0x5a, n);
    int op = h2d ? VRAM_OP_MEMCPY_H2D : VRAM_OP_MEMCPY_D2H;
    g_what = h2d ? "vram_memcpy_h2d (pinned)" : "vram_memcpy_d2h (pinned)";
    snprintf(g_args, sizeof g_args, "device %#lx, host %#lx (%s), %zu bytes", (unsigned long)dev,
             (unsigned long)host, g_hr[h].block ? "block" : "registered", n);
    int got = h2d ? vram_memcpy_h2d((void *)dev, buf, n) : vram_memcpy_d2h(buf, (void *)dev, n);
    expect(op, got, pred.status, pred.reason, 0);
    if (pred.status != VRAM_SUCCESS) {
        for (size_t i = 0; !h2d && i < n; i++)
            FUZZ_CHECK(buf[i] == 0x5a, "refused pinned d2h wrote host byte %zu", i);
        if (holder >= 0) verify_in_place(&g_m.live[holder]);
        return;
    }
    g_ops[op].bytes_ok += n;
    m_alloc *a = &g_m.live[pred.idx];
    if (h2d) {
        shadow_write(a, pred.off, buf, n);
        verify_in_place(a);
    } else {
        size_t bad = shadow_read(a, pred.off, buf, n);
        FUZZ_CHECK(bad == SIZE_MAX, "pinned d2h of %zu bytes: byte %zu of the allocation differs",
                   n, bad);
        g_bytes_checked += n;
    }
}

/* ---- settings and queries --------------------------------------------------------------- */

static void op_staging(fuzz_reader *r) {
    unsigned kind = fr_u8(r) % 8;
    vram_staging_config c;
    g_what = "vram_staging_get / set";
    g_args[0] = '\0';
    if (kind == 0) {
        expect(VRAM_OP_NONE, vram_staging_get(NULL), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_NULL_POINTER, 0);
        return;
    }
    if (kind == 1) {
        expect(VRAM_OP_NONE, vram_staging_set(NULL), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_NULL_POINTER, 0);
        return;
    }
    if (kind >= 3) {
        memset(&c, 0, sizeof c);
        c.struct_size = (uint32_t)sizeof c;
        c.threads = fr_u8(r) % 72; /* 65..71 invalid */
        switch (fr_u8(r) % 8) {
        case 0: c.chunk_bytes = 4095; break;
        case 1: c.chunk_bytes = 4096; break;
        case 2: c.chunk_bytes = (uint64_t)1 << 30; break;
        case 3: c.chunk_bytes = ((uint64_t)1 << 30) + 1; break;
        case 4: c.chunk_bytes = fr_u32(r); break;
        case 5: c.chunk_bytes = fr_u64(r); break;
        default: c.chunk_bytes = ((uint64_t)fr_u8(r) + 1) << 16; break;
        }
        c.min_bytes = fr_u8(r) & 1 ? fr_u64(r) : (uint64_t)fr_u16(r) << 8;
        c.buffers = fr_u8(r) % 18; /* 0 and 17 invalid */
        switch (fr_u8(r) % 12) {
        case 0: c.struct_size -= 8; break;
        case 1: c.struct_size += 8; break;
        case 2: c.struct_size = 0; break;
        case 3: c.reserved_ = 1 + fr_u8(r); break;
        default: break;
        }
        bool valid = c.struct_size == sizeof c && c.threads <= 64 && c.chunk_bytes >= 4096 &&
                     c.chunk_bytes <= ((uint64_t)1 << 30) && c.buffers >= 1 && c.buffers <= 16 &&
                     c.reserved_ == 0;
        snprintf(g_args, sizeof g_args, "size %u threads %u chunk %llu min %llu buffers %u "
                 "reserved %u", c.struct_size, c.threads, (unsigned long long)c.chunk_bytes,
                 (unsigned long long)c.min_bytes, c.buffers, c.reserved_);
        expect(VRAM_OP_NONE, vram_staging_set(&c), valid ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS,
               valid ? VRAM_REASON_NONE : VRAM_REASON_INVALID_CONFIG, 0);
        if (valid) g_staging = c;
    }
    memset(&c, 0xa5, sizeof c);
    expect(VRAM_OP_NONE, vram_staging_get(&c), VRAM_SUCCESS, VRAM_REASON_NONE, 0);
    FUZZ_CHECK(memcmp(&c, &g_staging, sizeof c) == 0,
               "vram_staging_get: threads %u chunk %llu min %llu buffers %u; model %u %llu %llu %u",
               c.threads, (unsigned long long)c.chunk_bytes, (unsigned long long)c.min_bytes,
               c.buffers, g_staging.threads, (unsigned long long)g_staging.chunk_bytes,
               (unsigned long long)g_staging.min_bytes, g_staging.buffers);
}

static const int g_policies[] = {0, 1, 1, 0, 2, -1, INT32_MAX, INT32_MIN};

static void op_wipe(fuzz_reader *r) {
    unsigned kind = fr_u8(r) % 6;
    g_what = "wipe policy";
    if (kind <= 1) {
        int policy = g_policies[fr_u8(r) % 8];
        bool ok = policy == VRAM_WIPE_OFF || policy == VRAM_WIPE_ON_FREE;
        snprintf(g_args, sizeof g_args, "vram_set_wipe_policy(%d)", policy);
        expect(VRAM_OP_NONE, vram_set_wipe_policy(policy),
               ok ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NONE, 0);
        if (ok) g_wipe_policy = policy;
    } else if (kind == 2) {
        int policy = -7;
        snprintf(g_args, sizeof g_args, "vram_get_wipe_policy");
        expect(VRAM_OP_NONE, vram_get_wipe_policy(NULL), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_NONE, 0);
        expect(VRAM_OP_NONE, vram_get_wipe_policy(&policy), VRAM_SUCCESS, VRAM_REASON_NONE, 0);
        FUZZ_CHECK(policy == g_wipe_policy, "wipe policy %d, model %d", policy, g_wipe_policy);
    } else {
        int hint;
        uintptr_t p = pick_pointer(r, &hint);
        uint64_t g = pick_generation(r, hint);
        int policy = g_policies[fr_u8(r) % 8];
        int want = VRAM_SUCCESS, reason = VRAM_REASON_NONE, i = -1;
        if (!p || (policy != VRAM_WIPE_OFF && policy != VRAM_WIPE_ON_FREE))
            want = VRAM_ERR_INVALID_PARAMETERS;
        else if ((i = model_find_gen(&g_m, g)) < 0 || g_m.live[i].base != p)
            want = VRAM_ERR_UNKNOWN_POINTER, reason = VRAM_REASON_UNKNOWN_POINTER;
        snprintf(g_args, sizeof g_args, "vram_set_allocation_wipe(%#lx, %llu, %d)",
                 (unsigned long)p, (unsigned long long)g, policy);
        expect(VRAM_OP_NONE, vram_set_allocation_wipe((void *)p, g, policy), want, reason, 0);
        if (want == VRAM_SUCCESS) g_m.live[i].wipe = policy == VRAM_WIPE_ON_FREE;
    }
}

/* The header's tables, for the names and messages of any code. */
static const char *const g_status_names[] = {
#define X_(code, name, message) [code] = "VRAM_" #name,
    VRAM_STATUS_MAP(X_)
#undef X_
};
static const char *const g_status_messages[] = {
#define X_(code, name, message) [code] = message,
    VRAM_STATUS_MAP(X_)
#undef X_
};
static const char *const g_reason_labels[] = {
#define X_(code, name, label) [code] = label,
    VRAM_REASON_MAP(X_)
#undef X_
};
static const char *const g_op_labels[] = {
#define X_(code, name, label) [code] = label,
    VRAM_OP_MAP(X_)
#undef X_
};

/* Names, messages, histogram bounds, version and diagnostic for any int: static strings,
 * never NULL, the header's for known codes. */
static void op_names(fuzz_reader *r) {
    uint8_t k = fr_u8(r);
    int v = k % 4 == 0 ? (int)(k / 4) - 2 : k % 4 == 1 ? (int)fr_u32(r) : k % 4 == 2 ? INT32_MIN : INT32_MAX;
    int h = (int)(fr_u8(r) % 5) - 1; /* -1 and 3 are no histogram */
    g_what = "names";
    snprintf(g_args, sizeof g_args, "%d, histogram %d", v, h);
    const char *got = vram_status_name(v);
    const char *want = v >= 0 && v < VRAM_STATUS_COUNT_ ? g_status_names[v] : "VRAM_UNKNOWN_STATUS";
    FUZZ_CHECK(got && strcmp(got, want) == 0, "vram_status_name(%d): %s", v, got ? got : "NULL");
    got = vram_strerror(v);
    FUZZ_CHECK(got && (v < 0 || v >= VRAM_STATUS_COUNT_ || strcmp(got, g_status_messages[v]) == 0),
               "vram_strerror(%d): %s", v, got ? got : "NULL");
    got = vram_reason_name(v);
    want = v >= 0 && v < VRAM_REASON_COUNT_ ? g_reason_labels[v] : "unknown";
    FUZZ_CHECK(got && strcmp(got, want) == 0, "vram_reason_name(%d): %s", v, got ? got : "NULL");
    got = vram_op_name(v);
    FUZZ_CHECK(got && (v != VRAM_OP_NONE || strcmp(got, "none") == 0) &&
                   (v < 0 || v >= VRAM_OP_COUNT_ || strcmp(got, g_op_labels[v]) == 0),
               "vram_op_name(%d): %s", v, got ? got : "NULL");
    got = vram_driver_error_name(v);
    FUZZ_CHECK(got != NULL, "vram_driver_error_name(%d): NULL", v);
    /* Bucket i's bound: latency 2^(7+i) (i < 27), size 2^(8+2i) (i < 19), bandwidth 2^(20+i)
     * (i < 23); the last bucket, any other and any other histogram: UINT64_MAX. */
    static const int buckets[] = {VRAM_LATENCY_BUCKETS, VRAM_SIZE_BUCKETS, VRAM_BANDWIDTH_BUCKETS};
    uint64_t bound = vram_histogram_bound(h, v), expected = UINT64_MAX;
    if (h >= 0 && h <= 2 && v >= 0 && v < buckets[h] - 1)
        expected = UINT64_C(1) << (h == 0 ? 7 + v : h == 1 ? 8 + 2 * v : 20 + v);
    FUZZ_CHECK(bound == expected, "vram_histogram_bound(%d, %d): %llu, expected %llu", h, v,
               (unsigned long long)bound, (unsigned long long)expected);
    FUZZ_CHECK(vram_version_number() == VRAM_VERSION_NUMBER &&
                   strcmp(vram_version_string(), VRAM_VERSION_STRING) == 0,
               "library %u (%s), header %u (%s)", vram_version_number(), vram_version_string(),
               VRAM_VERSION_NUMBER, VRAM_VERSION_STRING);
    got = vram_backend_diagnostic();
    FUZZ_CHECK(got && *got == '\0', "the host backend is usable, diagnostic: %s", got ? got : "NULL");
}

static void op_device_query(fuzz_reader *r) {
    static const int devices[] = {0, 1, 0, 1, 2, 31, 32, -1, INT32_MIN, INT32_MAX};
    unsigned kind = fr_u8(r) % 5;
    int d = devices[fr_u8(r) % 10];
    bool null = (fr_u8(r) & 7) == 7;
    bool exists = d >= 0 && d < FUZZ_DEVICES, in_range = d >= 0 && d < VRAM_MAX_DEVICES;
    int v = 12345;
    snprintf(g_args, sizeof g_args, "%d, %s", d, null ? "NULL" : "&out");
    switch (kind) {
    case 0:
        g_what = "vram_device_count";
        expect(VRAM_OP_NONE, vram_device_count(null ? NULL : &v),
               null ? VRAM_ERR_INVALID_PARAMETERS : VRAM_SUCCESS,
               null ? VRAM_REASON_NULL_POINTER : VRAM_REASON_NONE, 0);
        FUZZ_CHECK(null || v == FUZZ_DEVICES, "vram_device_count: %d", v);
        break;
    case 1:
        g_what = "vram_device_state_get";
        if (null || !in_range) {
            expect(VRAM_OP_NONE, vram_device_state_get(d, null ? NULL : &v),
                   VRAM_ERR_INVALID_PARAMETERS,
                   null ? VRAM_REASON_NULL_POINTER : VRAM_REASON_INVALID_DEVICE, 0);
            break;
        }
        expect(VRAM_OP_NONE, vram_device_state_get(d, &v), VRAM_SUCCESS, VRAM_REASON_NONE, 0);
        FUZZ_CHECK(v == (exists ? VRAM_DEVICE_USABLE : VRAM_DEVICE_UNAVAILABLE),
                   "vram_device_state_get(%d): %d", d, v);
        break;
    case 2: {
        g_what = "vram_device_props_get";
        vram_device_props p;
        int got = vram_device_props_get(d, null ? NULL : &p);
        if (null || !exists) {
            expect(VRAM_OP_NONE, got, VRAM_ERR_INVALID_PARAMETERS,
                   null ? VRAM_REASON_NULL_POINTER : VRAM_REASON_INVALID_DEVICE, 0);
            break;
        }
        expect(VRAM_OP_NONE, got, VRAM_SUCCESS, VRAM_REASON_NONE, 0);
        FUZZ_CHECK(p.total_bytes == FUZZ_CAPACITY && p.ordinal == d && p.driver_version == 0 &&
                       memchr(p.name, 0, sizeof p.name) && memchr(p.uuid, 0, sizeof p.uuid) &&
                       memchr(p.pci_bus_id, 0, sizeof p.pci_bus_id),
                   "vram_device_props_get(%d): total %llu ordinal %d driver %d", d,
                   (unsigned long long)p.total_bytes, p.ordinal, p.driver_version);
        break;
    }
    case 4:
        op_names(r);
        break;
    default:
        g_what = "vram_host_numa_node";
        expect(VRAM_OP_NONE, vram_host_numa_node(d, null ? NULL : &v),
               null || !exists ? VRAM_ERR_INVALID_PARAMETERS : VRAM_SUCCESS,
               null ? VRAM_REASON_NULL_POINTER : exists ? VRAM_REASON_NONE : VRAM_REASON_INVALID_DEVICE, 0);
        FUZZ_CHECK(null || v == -1, "vram_host_numa_node(%d): %d on the host backend", d, v);
        break;
    }
}

/* Completions: query, wait, release (a held one, or NULL), and vram_async_stats_get. */
static void op_completion(fuzz_reader *r) {
    unsigned kind = fr_u8(r) % 6;
    int i = g_n_comps ? fr_u8(r) % g_n_comps : -1;
    int done = 7;
    g_what = "completion";
    g_args[0] = '\0';
    switch (kind) {
    case 0:
        if (i < 0) break;
        expect(VRAM_OP_NONE, vram_completion_query(g_comps[i], &done), VRAM_SUCCESS, 0, 0);
        FUZZ_CHECK(done == 1, "vram_completion_query: done %d on the host backend", done);
        break;
    case 1:
        if (i >= 0) expect(VRAM_OP_NONE, vram_completion_wait(g_comps[i]), VRAM_SUCCESS, 0, 0);
        break;
    case 2:
        if (i >= 0) release_completion(i);
        break;
    case 3:
        expect(VRAM_OP_NONE, vram_completion_query(NULL, &done), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_NULL_POINTER, 0);
        if (i >= 0)
            expect(VRAM_OP_NONE, vram_completion_query(g_comps[i], NULL),
                   VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, 0);
        break;
    case 4:
        expect(VRAM_OP_NONE, vram_completion_wait(NULL), VRAM_ERR_INVALID_PARAMETERS,
               VRAM_REASON_NULL_POINTER, 0);
        expect(VRAM_OP_NONE, vram_completion_release(NULL), VRAM_SUCCESS, 0, 0);
        break;
    default: {
        vram_async_stats st[2];
        unsigned size_kind = fr_u8(r) % 4;
        size_t size = size_kind == 1 ? sizeof st[0] - 1 - fr_u8(r) % 8
                      : size_kind == 2 ? 2 * sizeof st[0] : sizeof st[0];
        bool null = size_kind == 3;
        snprintf(g_args, sizeof g_args, "vram_async_stats_get(%s, %zu)", null ? "NULL" : "&stats", size);
        int got = vram_async_stats_get(null ? NULL : st, size);
        bool ok = !null && size >= sizeof st[0];
        expect(VRAM_OP_NONE, got, ok ? VRAM_SUCCESS : VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NONE, 0);
        if (ok) compare_async(&st[0]);
        break;
    }
    }
}

/* ---------------------------------------------------------------------------------------
 * libFuzzer entry points.
 * ------------------------------------------------------------------------------------- */
static void print_summary(void) {
    if (!getenv("VRAMOBS_FUZZ_STATS")) return;
    fprintf(stderr,
            "vramobs fuzz_api_sequence: %llu inputs, %llu checked calls (0:%llu 1:%llu 2:%llu "
            "5:%llu 6:%llu 7:%llu 10:%llu), %llu allocations (%llu from the pool), %llu on a "
            "remembered freed address, %llu repeated frees of remembered addresses, %llu "
            "device-to-device copies, %llu migrations, %llu batches made, %llu undone, %llu "
            "pinned blocks from the cache, %llu device bytes compared (%s between devices)\n",
            (unsigned long long)g_inputs, (unsigned long long)g_calls,
            (unsigned long long)g_by_code[0], (unsigned long long)g_by_code[1],
            (unsigned long long)g_by_code[2], (unsigned long long)g_by_code[5],
            (unsigned long long)g_by_code[6], (unsigned long long)g_by_code[7],
            (unsigned long long)g_by_code[10],
            (unsigned long long)(g_dev[0].allocs + g_dev[1].allocs),
            (unsigned long long)g_pool_hits, (unsigned long long)g_reused_addresses,
            (unsigned long long)g_repeat_hits, (unsigned long long)g_d2d_ok,
            (unsigned long long)g_migrations, (unsigned long long)g_batches_ok,
            (unsigned long long)g_batches_undone, (unsigned long long)g_host_reused,
            (unsigned long long)g_bytes_checked, g_peer ? "peer to peer" : "staged");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    FUZZ_CHECK(__sanitizer_install_malloc_and_free_hooks(on_malloc, on_free) > 0,
               "cannot install the malloc hook");
    g_peer = fuzz_select_host_backend("1");
    for (int d = FUZZ_DEVICES - 1; d >= 0; d--) {
        size_t f = 0, t = 0;
        FUZZ_CHECK(vram_set_device(d) == VRAM_SUCCESS && vram_get_info(&f, &t) == VRAM_SUCCESS &&
                       f == FUZZ_CAPACITY && t == FUZZ_CAPACITY,
                   "host backend device %d: capacity %zu free %zu, expected %zu", d, t, f,
                   FUZZ_CAPACITY);
    }
    FUZZ_CHECK(vram_staging_get(&g_staging) == VRAM_SUCCESS, "vram_staging_get");
    FUZZ_CHECK(vram_stats_get(-1, &g_stats_base, sizeof g_stats_base) == VRAM_SUCCESS, "stats");
    for (size_t i = 0; i < RING; i++) g_ring[i].left = g_ring[i].right = -1;
    model_init(&g_m);
    atexit(print_summary);
    g_trace = getenv("VRAMOBS_FUZZ_TRACE") != NULL;
    return 0;
}

/* Give back everything an input left, as a caller would, and check that nothing stays held. */
static void finish_input(void) {
    g_op_index++;
    while (g_n_comps) release_completion(g_n_comps - 1);
    for (int i = 0; g_m.n_live > 0; i++) { /* oldest first, after checking content both ways */
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
        release_live(0);
    }
    while (g_n_hr > 0) {
        h_range h = g_hr[g_n_hr - 1];
        g_what = h.block ? "final vram_host_free" : "final vram_host_unregister";
        snprintf(g_args, sizeof g_args, "%#lx", (unsigned long)h.addr);
        if (h.block) {
            expect(VRAM_OP_HOST_FREE, vram_host_free((void *)h.addr), VRAM_SUCCESS, 0, 0);
            g_ops[VRAM_OP_HOST_FREE].bytes_ok += h.bytes;
            blocks_push(&g_hcache, h.addr, h.size, 0);
        } else {
            expect(VRAM_OP_NONE, vram_host_unregister((void *)h.addr), VRAM_SUCCESS, 0, 0);
        }
        hr_remove(g_n_hr - 1);
    }
    g_what = "final vram_host_trim";
    expect(VRAM_OP_NONE, vram_host_trim(0), VRAM_SUCCESS, 0, 0);
    blocks_trim(&g_hcache, 0, NULL);
    for (int d = 0; d < FUZZ_DEVICES; d++) { /* pools off, their blocks released */
        dev_model *v = &g_dev[d];
        g_what = "final vram_pool_set";
        snprintf(g_args, sizeof g_args, "%d, 0", d);
        bool trims = v->cache.bytes > 0;
        expect(trims ? VRAM_OP_POOL_TRIM : VRAM_OP_NONE, vram_pool_set(d, 0), VRAM_SUCCESS, 0, 0);
        v->max = 0;
        v->enabled = false;
        g_ops[VRAM_OP_POOL_TRIM].bytes_ok += blocks_trim(&v->cache, 0, v);
        FUZZ_CHECK(v->used == 0 && v->live_blocks == 0 && v->slack == 0,
                   "model of device %d still holds %llu bytes", d, (unsigned long long)v->used);
    }
    g_what = "final settings";
    expect(VRAM_OP_NONE, vram_set_wipe_policy(VRAM_WIPE_OFF), VRAM_SUCCESS, 0, 0);
    g_wipe_policy = VRAM_WIPE_OFF;
    for (int d = FUZZ_DEVICES - 1; d >= 0; d--) { /* every device's capacity is back */
        expect(VRAM_OP_NONE, vram_set_device(d), VRAM_SUCCESS, 0, 0);
        size_t f = 0, t = 0;
        expect(VRAM_OP_GET_INFO, vram_get_info(&f, &t), VRAM_SUCCESS, 0, 0);
        FUZZ_CHECK(f == FUZZ_CAPACITY && t == FUZZ_CAPACITY,
                   "capacity of device %d not returned after the input: free %zu of %zu", d, f, t);
    }
    g_thread_device = 0;
    check_state(true);
    check_aggregates();
    model_clear(&g_m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_reader r = {data, size};
    g_inputs++;
    g_op_index = 0;
    while (!fr_empty(&r)) {
        g_op_index++;
        g_args[0] = '\0';
        switch (fr_u8(&r) % OP_KINDS) {
        case OP_MALLOC: op_malloc(&r, false, false, false); break;
        case OP_MALLOC_EX: op_malloc(&r, true, false, false); break;
        case OP_MALLOC_SMALL: op_malloc(&r, fr_u8(&r) & 1, true, false); break;
        case OP_FREE: op_free(&r); break;
        case OP_FREE_EX: op_free_ex(&r, false); break;
        case OP_H2D: op_copy(&r, true, false); break;
        case OP_D2H: op_copy(&r, false, false); break;
        case OP_GET_INFO: op_get_info(&r); break;
        case OP_VERIFY:
            if (g_m.n_live) verify_through_library(&g_m.live[fr_u8(&r) % g_m.n_live]);
            break;
        case OP_LIST: op_list(&r); break;
        case OP_SELECT_BACKEND: op_select_backend(&r); break;
        case OP_SET_DEVICE: op_set_device(&r); break;
        case OP_STATS_ARGS: op_stats_args(&r); break;
        case OP_D2D:
            if (fr_u8(&r) & 1)
                op_d2d(&r, false);
            else
                op_copy_path(&r);
            break;
        case OP_MIGRATE: op_migrate(&r); break;
        case OP_BATCH: op_batch(&r); break;
        case OP_POOL_SET: op_pool_set(&r); break;
        case OP_POOL_TRIM: op_pool_trim(&r); break;
        case OP_POOL_STATS: op_pool_stats(&r); break;
        case OP_HOST_ALLOC: op_host_alloc(&r); break;
        case OP_HOST_FREE: op_host_free(&r); break;
        case OP_HOST_REGISTER: op_host_register(&r); break;
        case OP_HOST_UNREGISTER: op_host_unregister(&r); break;
        case OP_HOST_TRIM: op_host_trim(&r); break;
        case OP_HOST_STATS: op_host_stats(&r); break;
        case OP_HOST_COPY: op_host_copy(&r); break;
        case OP_STAGING: op_staging(&r); break;
        case OP_WIPE: op_wipe(&r); break;
        case OP_DEVICE_QUERY: op_device_query(&r); break;
        case OP_ASYNC:
            switch (fr_u8(&r) % 8) {
            case 0: op_copy(&r, true, true); break;
            case 1: op_copy(&r, false, true); break;
            case 2: op_d2d(&r, true); break;
            case 3: op_malloc(&r, true, false, true); break;
            case 4: op_free_ex(&r, true); break;
            default: op_completion(&r); break;
            }
            break;
        }
        check_state(false);
    }
    finish_input();
    return 0;
}
