/* The device memory pool: per device, freed blocks kept in size-class free lists and handed to
 * later allocations of their class without a driver call.
 *
 * A block is allocated at its class's size, so that it can serve any request of the class;
 * the registry records the size asked for, which bounds copies. Blocks handed out are kept in
 * a map by address: a free finds there whether its memory is a pool block (and of what size)
 * or an allocation made with the pool off, released to the driver as it was made. One mutex
 * per device guards its lists, map and counters; it is never held across a driver call. A
 * device whose pool was never turned on pays one atomic load per allocation and free.
 *
 * Classes follow the CUDA driver's rounding (backend_cuda.c, cuda_footprint): up to 1 MiB,
 * four classes per power of two, 256 B-granular (at most 25% over the request); above it,
 * whole 2 MiB pages, the driver's own rounding, with a list per size up to 64 MiB and one
 * list searched for the exact size beyond. */
#include <pthread.h>
#include <stdlib.h>

#include "addrhash.h"
#include "internal.h"

#define SMALL_LIMIT ((size_t)1 << 20)
#define PAGE ((size_t)2 << 20)
#define SMALL_CLASSES 44 /* 256..1024 by 256, then 4 per power of two up to 1 MiB */
#define PAGE_CLASSES 32  /* 2 MiB .. 64 MiB */
#define HUGE_CLASS (SMALL_CLASSES + PAGE_CLASSES)
#define CLASSES (HUGE_CLASS + 1)

typedef struct block {
    vram_addrhash_node node; /* first: while handed out, in its pool's map by address */
    struct block *next;     /* while cached, in its class's list */
    const vram_backend *backend;
    size_t size;  /* what the driver allocated */
    size_t slack; /* while handed out: size past the registry's footprint of the request */
} block;

typedef struct pool {
    pthread_mutex_t lock;
    int enabled;   /* atomic: read without the lock where the pool was never on */
    uint64_t live; /* atomic: blocks handed out (the map's size) */
    vram_addrhash out;
    block *cached[CLASSES];
    vram_pool_stats s; /* max_cached_bytes, cached_*, the totals; enabled and live_blocks
                          are filled at copy time */
} pool;

static pool g_pools[VRAM_MAX_DEVICES];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void pools_init(void) {
    for (int d = 0; d < VRAM_MAX_DEVICES; d++) pthread_mutex_init(&g_pools[d].lock, NULL);
}

static pool *locked(int device) {
    pthread_once(&g_once, pools_init);
    pool *p = &g_pools[device];
    pthread_mutex_lock(&p->lock);
    return p;
}

static void unlock(pool *p) { pthread_mutex_unlock(&p->lock); }

/* The class of a request (bytes >= 1) and its block size; -1 where the size would overflow. */
static int class_of(size_t bytes, size_t *size) {
    if (bytes <= 1024) {
        size_t quarters = (bytes + 255) / 256;
        *size = quarters * 256;
        return (int)quarters - 1;
    }
    if (bytes <= SMALL_LIMIT) {
        int k = 63 - __builtin_clzll((unsigned long long)(bytes - 1)); /* 2^k < bytes <= 2^k+1 */
        size_t base = (size_t)1 << k, step = base / 4;
        size_t j = (bytes - base + step - 1) / step; /* 1..4 */
        *size = base + j * step;
        return 4 + (k - 10) * 4 + (int)j - 1;
    }
    if (bytes > SIZE_MAX - (PAGE - 1)) return -1;
    size_t pages = (bytes + PAGE - 1) / PAGE;
    *size = pages * PAGE;
    return pages <= PAGE_CLASSES ? SMALL_CLASSES + (int)pages - 1 : HUGE_CLASS;
}

static int class_of_block(size_t size) {
    size_t same;
    return class_of(size, &same);
}

static void cache(pool *p, block *k) {
    int cls = class_of_block(k->size);
    k->next = p->cached[cls];
    p->cached[cls] = k;
    p->s.cached_bytes += k->size;
    p->s.cached_blocks++;
}

static block *uncache(pool *p, int cls, size_t size) {
    for (block **link = &p->cached[cls]; *link; link = &(*link)->next) {
        block *k = *link;
        if (k->size == size) { /* always the first, except in the huge class */
            *link = k->next;
            p->s.cached_bytes -= k->size;
            p->s.cached_blocks--;
            return k;
        }
    }
    return NULL;
}

static void hand_out(pool *p, block *k, size_t slack) {
    k->slack = slack;
    vram_addrhash_insert(&p->out, &k->node);
    p->s.slack_bytes += slack;
    __atomic_store_n(&p->live, p->live + 1, __ATOMIC_RELAXED);
}

static block *take_back(pool *p, uintptr_t address) {
    block *k = (block *)vram_addrhash_remove(&p->out, address);
    if (k) {
        p->s.slack_bytes -= k->slack;
        __atomic_store_n(&p->live, p->live - 1, __ATOMIC_RELAXED);
    }
    return k;
}

/* Detach cached blocks, largest classes first, until at most keep bytes stay cached. */
static block *detach(pool *p, uint64_t keep) {
    block *list = NULL;
    for (int cls = CLASSES - 1; cls >= 0 && p->s.cached_bytes > keep; cls--) {
        while (p->cached[cls] && p->s.cached_bytes > keep) {
            block *k = p->cached[cls];
            p->cached[cls] = k->next;
            p->s.cached_bytes -= k->size;
            p->s.cached_blocks--;
            k->next = list;
            list = k;
        }
    }
    return list;
}

/* A failed device's context is dead with its memory: drop its blocks without a driver call.
 * Handed-out ones are the registry's to count (as lost, when freed). */
static void drop_if_failed(pool *p, int device) {
    if (!vram_runtime_device_failed(device)) return;
    uint64_t cached = p->s.cached_bytes;
    for (block *k = detach(p, 0), *next; k; k = next) {
        next = k->next;
        free(k);
    }
    p->s.dropped_bytes_total += cached;
    for (vram_addrhash_node *n = vram_addrhash_take_all(&p->out), *next; n; n = next) {
        next = n->next;
        block *k = (block *)n;
        p->s.slack_bytes -= k->slack;
        free(k);
    }
    __atomic_store_n(&p->live, 0, __ATOMIC_RELAXED);
}

/* Release detached blocks to the driver (no lock held). A block the driver refuses to free is
 * still allocated: it goes back to the cache, or is dropped if the failure killed the device.
 * Returns the first driver error, 0 if none; *released receives the bytes released. */
static int release(int device, block *list, uint64_t *released) {
    int first_error = 0;
    block *kept = NULL;
    *released = 0;
    for (block *k = list, *next; k; k = next) {
        next = k->next;
        int error = k->backend->release(device, k->node.key, k->size);
        if (error == 0) {
            *released += k->size;
            free(k);
            continue;
        }
        if (!first_error) first_error = error;
        if (k->backend->classify(error) == VRAM_FAULT_STICKY) vram_runtime_latch(device);
        k->next = kept;
        kept = k;
    }
    pool *p = locked(device);
    p->s.released_bytes_total += *released;
    for (block *k = kept, *next; k; k = next) {
        next = k->next;
        cache(p, k);
    }
    drop_if_failed(p, device);
    unlock(p);
    return first_error;
}

int vram_pool_alloc(const vram_backend *b, int device, size_t bytes, uintptr_t *out) {
    pool *p = &g_pools[device];
    size_t size;
    int cls = class_of(bytes, &size);
    if (!__atomic_load_n(&p->enabled, __ATOMIC_RELAXED) || cls < 0)
        return b->alloc(device, bytes, out);
    p = locked(device);
    block *k = p->enabled ? uncache(p, cls, size) : NULL;
    if (k) {
        p->s.hits_total++;
        hand_out(p, k, size - b->footprint(bytes));
        *out = k->node.key; /* under the lock: a failed device's blocks may go at any time */
        unlock(p);
        return 0;
    }
    p->s.misses_total++;
    unlock(p);
    k = malloc(sizeof *k); /* before the driver: recording the block cannot fail afterwards */
    if (!k) return b->alloc(device, bytes, out); /* serve it unpooled */
    int error = b->alloc(device, size, out);
    bool retried = false;
    if (error && b->classify(error) == VRAM_FAULT_OUT_OF_MEMORY) {
        p = locked(device);
        block *list = detach(p, 0);
        unlock(p);
        uint64_t released = 0;
        if (list) {
            retried = true;
            release(device, list, &released);
            if (released) error = b->alloc(device, size, out);
        }
        /* The class rounds up: the request itself may still fit. Made unpooled. */
        if (error && b->classify(error) == VRAM_FAULT_OUT_OF_MEMORY &&
            b->footprint(bytes) < size) {
            retried = true;
            free(k);
            k = NULL;
            error = b->alloc(device, bytes, out);
        }
    }
    p = locked(device);
    if (retried) {
        p->s.oom_retries_total++;
        if (error) p->s.oom_give_ups_total++;
    }
    if (!error && k && *out) {
        k->backend = b;
        k->size = size;
        k->node.key = *out;
        hand_out(p, k, size - b->footprint(bytes));
        k = NULL;
    }
    unlock(p);
    free(k);
    return error;
}

int vram_pool_release(const vram_backend *b, int device, uintptr_t address, size_t bytes) {
    if (!__atomic_load_n(&g_pools[device].live, __ATOMIC_RELAXED))
        return b->release(device, address, bytes);
    pool *p = locked(device);
    block *k = take_back(p, address);
    if (!k) { /* made while the pool was off: released as it was made */
        unlock(p);
        return b->release(device, address, bytes);
    }
    uint64_t max = p->s.max_cached_bytes;
    if (p->enabled && k->size <= max && p->s.cached_bytes <= max - k->size) {
        cache(p, k);
        unlock(p);
        return 0;
    }
    unlock(p);
    /* Off, or the cache is full: to the driver. */
    int error = k->backend->release(device, address, k->size);
    p = locked(device);
    if (error) {
        hand_out(p, k, k->slack); /* still allocated, and still its allocation's */
        k = NULL;
    } else {
        p->s.released_bytes_total += k->size;
    }
    unlock(p);
    free(k);
    return error;
}

bool vram_pool_idle(void) {
    for (int d = 0; d < VRAM_MAX_DEVICES; d++) {
        pool *p = locked(d);
        drop_if_failed(p, d);
        bool idle = p->s.cached_blocks == 0 && p->live == 0;
        unlock(p);
        if (!idle) return false;
    }
    return true;
}

/* ---- the public functions ------------------------------------------------------------- */

/* A driver failure of a release, as a status (a sticky one has latched the device). */
static int release_failure(const vram_backend *b, int error) {
    switch (b->classify(error)) {
    case VRAM_FAULT_STICKY: return VRAM_ERR_DEVICE_FAILED;
    case VRAM_FAULT_NO_DEVICE: return VRAM_ERR_NO_DEVICE;
    default: return VRAM_ERR_DRIVER;
    }
}

/* Release a device's cached blocks down to keep bytes (and set its bound first when max is
 * not NULL): the operation pool_trim, counted on that device. */
static int trim_device(const vram_backend *b, int device, uint64_t keep, const uint64_t *max) {
    vram_call c = vram_call_begin(VRAM_OP_POOL_TRIM);
    c.device = device;
    pool *p = locked(device);
    drop_if_failed(p, device);
    if (max) {
        p->s.max_cached_bytes = *max;
        __atomic_store_n(&p->enabled, *max > 0, __ATOMIC_RELAXED);
    }
    block *list = detach(p, keep);
    unlock(p);
    if (vram_runtime_device_failed(device)) return vram_call_finish(&c, VRAM_ERR_DEVICE_FAILED);
    uint64_t released = 0;
    int error = release(device, list, &released);
    c.bytes = (size_t)released;
    c.driver_error = error;
    return vram_call_finish(&c, error ? release_failure(b, error) : VRAM_SUCCESS);
}

/* The backend, if a device argument names one of its devices (-1 too where all is true). */
static int device_arg(vram_call *c, int device, bool all, const vram_backend **b) {
    *b = vram_runtime_backend();
    if (device < (all ? -1 : 0) || device >= VRAM_MAX_DEVICES)
        return vram_call_refuse(c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE);
    if (!vram_runtime_usable(*b)) return vram_call_finish(c, VRAM_ERR_NO_DEVICE);
    if (device >= (*b)->device_count())
        return vram_call_refuse(c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE);
    return VRAM_SUCCESS;
}

int vram_pool_set(int device, uint64_t max_cached_bytes) {
    vram_call c = vram_call_begin(VRAM_OP_NONE); /* a setting: its refusals are not counted */
    const vram_backend *b;
    int status = device_arg(&c, device, false, &b);
    if (status != VRAM_SUCCESS) return status;
    if (vram_runtime_device_failed(device)) return vram_call_finish(&c, VRAM_ERR_DEVICE_FAILED);
    pool *p = locked(device);
    bool must_release = p->s.cached_bytes > max_cached_bytes;
    if (!must_release) { /* nothing to release: not a trim, not counted */
        p->s.max_cached_bytes = max_cached_bytes;
        __atomic_store_n(&p->enabled, max_cached_bytes > 0, __ATOMIC_RELAXED);
    }
    unlock(p);
    return must_release ? trim_device(b, device, max_cached_bytes, &max_cached_bytes)
                        : VRAM_SUCCESS;
}

int vram_pool_trim(int device, uint64_t keep_bytes) {
    vram_call c = vram_call_begin(VRAM_OP_POOL_TRIM);
    const vram_backend *b;
    int status = device_arg(&c, device, true, &b);
    if (status != VRAM_SUCCESS) return status;
    if (device >= 0) return trim_device(b, device, keep_bytes, NULL);
    /* Every device, each counted as its own trim; a failed device's blocks are dropped. */
    for (int d = 0; d < b->device_count(); d++) {
        int s = trim_device(b, d, keep_bytes, NULL);
        if (s != VRAM_SUCCESS && s != VRAM_ERR_DEVICE_FAILED && status == VRAM_SUCCESS)
            status = s;
    }
    return status;
}

static void add_stats(vram_pool_stats *to, pool *p) {
    const vram_pool_stats *s = &p->s;
    to->enabled += p->enabled ? 1 : 0;
    to->max_cached_bytes += s->max_cached_bytes;
    to->cached_bytes += s->cached_bytes;
    to->cached_blocks += s->cached_blocks;
    to->hits_total += s->hits_total;
    to->misses_total += s->misses_total;
    to->released_bytes_total += s->released_bytes_total;
    to->live_blocks += p->live;
    to->slack_bytes += s->slack_bytes;
    to->oom_retries_total += s->oom_retries_total;
    to->oom_give_ups_total += s->oom_give_ups_total;
    to->dropped_bytes_total += s->dropped_bytes_total;
}

int vram_pool_stats_get(int device, vram_pool_stats *out, size_t out_size) {
    if (!out || out_size < sizeof *out || device < -1 || device >= VRAM_MAX_DEVICES) {
        vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NONE, VRAM_OP_NONE, 0);
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    vram_pool_stats total = {0};
    for (int d = device < 0 ? 0 : device; d <= (device < 0 ? VRAM_MAX_DEVICES - 1 : device); d++) {
        pool *p = locked(d);
        drop_if_failed(p, d);
        add_stats(&total, p);
        unlock(p);
    }
    total.struct_size = (uint32_t)sizeof total;
    *out = total;
    return VRAM_SUCCESS;
}
