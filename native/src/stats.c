/* Per-call aggregates: relaxed atomic adds into fixed arrays, no allocation, no lock.
 * A snapshot reads each counter atomically; counters of one call may straddle a snapshot,
 * which a scrape tolerates (every counter is monotonic). */
#include <string.h>

#include "internal.h"

static vram_op_stats g_stats[VRAM_MAX_DEVICES][VRAM_OP_CAPACITY];

static inline void bump(uint64_t *counter, uint64_t amount) {
    __atomic_fetch_add(counter, amount, __ATOMIC_RELAXED);
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

void vram_stats_record(int device, vram_op op, int status, vram_reason reason, size_t bytes,
                       uint64_t elapsed_ns) {
    if (device < 0 || device >= VRAM_MAX_DEVICES) device = 0;
    if ((int)op < 0 || op >= VRAM_OP_COUNT_) return;
    vram_op_stats *s = &g_stats[device][op];
    bump(&s->calls, 1);
    if (status >= 0 && status < VRAM_STATUS_CAPACITY) bump(&s->by_status[status], 1);
    if (reason != VRAM_REASON_NONE && (int)reason < VRAM_REASON_CAPACITY)
        bump(&s->refused_by_reason[reason], 1);
    if (status == VRAM_SUCCESS) {
        bump(&s->latency_ok[latency_bucket(elapsed_ns)], 1);
        bump(&s->latency_ok_sum_ns, elapsed_ns);
        if (bytes) {
            bump(&s->bytes_ok, bytes);
            bump(&s->size_ok[size_bucket(bytes)], 1);
            if (is_copy(op)) {
                uint64_t bps = bytes_per_second(bytes, elapsed_ns);
                bump(&s->bandwidth_ok[bandwidth_bucket(bps)], 1);
                bump(&s->bandwidth_ok_sum, bps);
            }
        }
    } else {
        bump(&s->latency_error[latency_bucket(elapsed_ns)], 1);
        bump(&s->latency_error_sum_ns, elapsed_ns);
    }
}

static void add_snapshot(vram_op_stats *dst, const vram_op_stats *src) {
    /* vram_op_stats is a flat run of uint64_t counters: read each one atomically. */
    const uint64_t *from = (const uint64_t *)src;
    uint64_t *to = (uint64_t *)dst;
    for (size_t i = 0; i < sizeof(vram_op_stats) / sizeof(uint64_t); i++)
        to[i] += __atomic_load_n(&from[i], __ATOMIC_RELAXED);
}

_Static_assert(sizeof(vram_op_stats) % sizeof(uint64_t) == 0, "vram_op_stats must be flat");

int vram_stats_copy(int device, vram_stats *out) {
    memset(out, 0, sizeof *out);
    out->struct_size = (uint32_t)sizeof *out;
    out->op_count = VRAM_OP_COUNT_;
    int first = device < 0 ? 0 : device;
    int last = device < 0 ? VRAM_MAX_DEVICES - 1 : device;
    for (int d = first; d <= last; d++)
        for (int op = 0; op < VRAM_OP_COUNT_; op++) add_snapshot(&out->ops[op], &g_stats[d][op]);
    return VRAM_SUCCESS;
}
