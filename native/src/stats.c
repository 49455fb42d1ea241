/* Per-call aggregates, exact, with no lock and no atomic read-modify-write on the hot path.
 *
 * Each thread counts into shards of its own, one per device it records on: a counter has one
 * writer, so an increment is a plain load and store (atomic, relaxed, for the readers). A
 * snapshot sums, under g_lock, the shared counters and the shards of every live thread; an
 * exiting thread folds its shards into the shared counters under the same lock, so a snapshot
 * sees each count once. Where a shard cannot be had (no memory, no thread key) the call is
 * counted in the shared counters with atomic adds. Counters of one call may straddle a
 * snapshot, which a scrape tolerates (every counter is monotonic). */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct shard_set {
    struct shard_set *prev, *next; /* in g_sets */
    vram_op_stats *device[VRAM_MAX_DEVICES]; /* VRAM_OP_COUNT_ ops each; set under g_lock */
} shard_set;

static vram_op_stats g_shared[VRAM_MAX_DEVICES][VRAM_OP_COUNT_]; /* atomic adds */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static shard_set *g_sets; /* the live threads' */
static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_key;
static bool g_key_made;
static _Thread_local shard_set *t_set;

static inline void bump(uint64_t *counter, uint64_t amount) {
    __atomic_fetch_add(counter, amount, __ATOMIC_RELAXED);
}

/* A counter only this thread writes: no read-modify-write needed. */
static inline void bump_own(uint64_t *counter, uint64_t amount) {
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + amount,
                     __ATOMIC_RELAXED);
}

/* Smallest b with value <= 2^b (value >= 1). */
static inline int ceil_log2(uint64_t value) {
    return value <= 1 ? 0 : 64 - __builtin_clzll(value - 1);
}

static int latency_bucket(uint64_t ns) {
    int b = ceil_log2(ns) - 7;
    if (b < 0) return 0;
    return b < VRAM_LATENCY_BUCKETS - 1 ? b : VRAM_LATENCY_BUCKETS - 1;
}

static int size_bucket(uint64_t bytes) {
    int b = ceil_log2(bytes) - 8;
    if (b <= 0) return 0;
    b = (b + 1) / 2;
    return b < VRAM_SIZE_BUCKETS - 1 ? b : VRAM_SIZE_BUCKETS - 1;
}

static uint64_t bytes_per_second(uint64_t bytes, uint64_t ns) {
    /* Floating point: a 128-bit integer division would cost more than the rest of a record. */
    double bps = (double)bytes * 1e9 / (double)(ns ? ns : 1);
    return bps >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)bps;
}

static bool is_copy(vram_op op) {
    switch (op) {
    case VRAM_OP_MEMCPY_H2D:
    case VRAM_OP_MEMCPY_D2H:
    case VRAM_OP_MEMCPY_D2D:
    case VRAM_OP_MEMCPY_P2P:
    case VRAM_OP_MEMCPY_STAGED:
        return true;
    default:
        return false;
    }
}

static int bandwidth_bucket(uint64_t bps) {
    int b = ceil_log2(bps) - 20;
    if (b < 0) return 0;
    return b < VRAM_BANDWIDTH_BUCKETS - 1 ? b : VRAM_BANDWIDTH_BUCKETS - 1;
}

uint64_t vram_histogram_bound(int histogram, int bucket) {
    switch (histogram) {
    case VRAM_HISTOGRAM_LATENCY_NS:
        if (bucket >= 0 && bucket < VRAM_LATENCY_BUCKETS - 1) return UINT64_C(1) << (7 + bucket);
        break;
    case VRAM_HISTOGRAM_SIZE_BYTES:
        if (bucket >= 0 && bucket < VRAM_SIZE_BUCKETS - 1) return UINT64_C(1) << (8 + 2 * bucket);
        break;
    case VRAM_HISTOGRAM_BANDWIDTH_BYTES_PER_SECOND:
        if (bucket >= 0 && bucket < VRAM_BANDWIDTH_BUCKETS - 1)
            return UINT64_C(1) << (20 + bucket);
        break;
    default:
        break;
    }
    return UINT64_MAX;
}

/* Add one call to s: own (this thread's shard, one writer) or shared (atomic adds). Inlined
 * twice, so that each copy has one kind of increment. */
static inline __attribute__((always_inline)) void add_call(vram_op_stats *s, bool own, vram_op op,
                                                           int status, vram_reason reason,
                                                           size_t bytes, uint64_t elapsed_ns) {
#define ADD(counter, amount) (own ? bump_own(&(counter), (amount)) : bump(&(counter), (amount)))
    ADD(s->calls, 1);
    if (status >= 0 && status < VRAM_STATUS_CAPACITY) ADD(s->by_status[status], 1);
    if (reason != VRAM_REASON_NONE && (int)reason < VRAM_REASON_CAPACITY)
        ADD(s->refused_by_reason[reason], 1);
    if (status == VRAM_SUCCESS) {
        ADD(s->latency_ok[latency_bucket(elapsed_ns)], 1);
        ADD(s->latency_ok_sum_ns, elapsed_ns);
        if (bytes) {
            ADD(s->bytes_ok, bytes);
            ADD(s->size_ok[size_bucket(bytes)], 1);
            if (is_copy(op)) {
                uint64_t bps = bytes_per_second(bytes, elapsed_ns);
                ADD(s->bandwidth_ok[bandwidth_bucket(bps)], 1);
                ADD(s->bandwidth_ok_sum, bps);
            }
        }
    } else {
        ADD(s->latency_error[latency_bucket(elapsed_ns)], 1);
        ADD(s->latency_error_sum_ns, elapsed_ns);
    }
#undef ADD
}

/* vram_op_stats is a flat run of uint64_t counters. */
#define COUNTERS (sizeof(vram_op_stats) / sizeof(uint64_t))
_Static_assert(sizeof(vram_op_stats) % sizeof(uint64_t) == 0, "vram_op_stats must be flat");

/* An exiting thread's shards go into the shared counters (under g_lock: a snapshot sees them
 * in one place or the other, never both). */
static void retire(void *arg) {
    shard_set *set = arg;
    pthread_mutex_lock(&g_lock);
    for (int d = 0; d < VRAM_MAX_DEVICES; d++) {
        if (!set->device[d]) continue;
        for (int op = 0; op < VRAM_OP_COUNT_; op++) {
            const uint64_t *from = (const uint64_t *)&set->device[d][op];
            uint64_t *to = (uint64_t *)&g_shared[d][op];
            for (size_t i = 0; i < COUNTERS; i++)
                if (from[i]) bump(&to[i], from[i]);
        }
        free(set->device[d]);
    }
    if (set->prev) set->prev->next = set->next; else g_sets = set->next;
    if (set->next) set->next->prev = set->prev;
    pthread_mutex_unlock(&g_lock);
    free(set);
    t_set = NULL; /* a later call on this thread (another key's destructor) starts afresh */
}

/* The key's destructor is this code: it must stay mapped as long as any thread may exit. True
 * where it is part of the program, or once the library it is in is kept loaded for good (a
 * dlclose then unloads nothing). */
static bool stays_loaded(void) {
    Dl_info info;
    struct link_map *mine = NULL, *program = NULL;
    if (!dladdr1((void *)retire, &info, (void **)&mine, RTLD_DL_LINKMAP) || !mine) return false;
    void *self = dlopen(NULL, RTLD_NOW);
    bool in_program = self && dlinfo(self, RTLD_DI_LINKMAP, &program) == 0 && program == mine;
    if (self) dlclose(self);
    return in_program ||
           (info.dli_fname && dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE));
}

static void make_key(void) {
    g_key_made = stays_loaded() && pthread_key_create(&g_key, retire) == 0;
}

/* This thread's shard of a device, made on first use; NULL where none can be had. */
static __attribute__((noinline)) vram_op_stats *new_shard(int device) {
    pthread_once(&g_key_once, make_key);
    if (!g_key_made) return NULL;
    shard_set *set = t_set;
    if (!set) {
        set = calloc(1, sizeof *set);
        if (!set) return NULL;
        if (pthread_setspecific(g_key, set) != 0) {
            free(set);
            return NULL;
        }
        pthread_mutex_lock(&g_lock);
        set->next = g_sets;
        if (g_sets) g_sets->prev = set;
        g_sets = set;
        pthread_mutex_unlock(&g_lock);
        t_set = set;
    }
    vram_op_stats *shard = calloc(VRAM_OP_COUNT_, sizeof *shard);
    if (!shard) return NULL;
    pthread_mutex_lock(&g_lock);
    set->device[device] = shard;
    pthread_mutex_unlock(&g_lock);
    return shard;
}

void vram_stats_record(int device, vram_op op, int status, vram_reason reason, size_t bytes,
                       uint64_t elapsed_ns) {
    if (device < 0 || device >= VRAM_MAX_DEVICES) device = 0;
    if ((int)op < 0 || op >= VRAM_OP_COUNT_) return;
    shard_set *set = t_set;
    vram_op_stats *shard = set ? set->device[device] : NULL;
    if (!shard) shard = new_shard(device);
    if (shard)
        add_call(&shard[op], true, op, status, reason, bytes, elapsed_ns);
    else
        add_call(&g_shared[device][op], false, op, status, reason, bytes, elapsed_ns);
}

static void add_snapshot(vram_op_stats *dst, const vram_op_stats *src) {
    const uint64_t *from = (const uint64_t *)src;
    uint64_t *to = (uint64_t *)dst;
    for (size_t i = 0; i < COUNTERS; i++) to[i] += __atomic_load_n(&from[i], __ATOMIC_RELAXED);
}

int vram_stats_copy(int device, vram_stats *out) {
    memset(out, 0, sizeof *out);
    out->struct_size = (uint32_t)sizeof *out;
    out->op_count = VRAM_OP_COUNT_;
    int first = device < 0 ? 0 : device;
    int last = device < 0 ? VRAM_MAX_DEVICES - 1 : device;
    pthread_mutex_lock(&g_lock);
    for (int d = first; d <= last; d++) {
        for (int op = 0; op < VRAM_OP_COUNT_; op++) add_snapshot(&out->ops[op], &g_shared[d][op]);
        for (const shard_set *set = g_sets; set; set = set->next)
            if (set->device[d])
                for (int op = 0; op < VRAM_OP_COUNT_; op++)
                    add_snapshot(&out->ops[op], &set->device[d][op]);
    }
    pthread_mutex_unlock(&g_lock);
    return VRAM_SUCCESS;
}
