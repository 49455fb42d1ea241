/* Pinned host memory: vram_host_alloc blocks from a cache of size classes, registered caller
 * buffers, and the range table that tells a copy whether its host side is page-locked. */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "addrmap.h"
#include "hostmem.h"
#include "internal.h"

#define PAGE ((size_t)4096)
#define STEPS 4                          /* size classes per power of two */
#define CLASSES (64 * STEPS)

typedef enum range_kind {
    RANGE_BLOCK = 0,  /* a vram_host_alloc block in use */
    RANGE_REGISTERED, /* a caller's buffer, registered */
    RANGE_PENDING     /* being registered: neither copies nor unregister see it yet */
} range_kind;

typedef struct range {
    vram_addrmap_node node; /* key: start address; first, so a node is its range */
    size_t bytes;           /* asked for (blocks) or registered */
    size_t size;            /* page-locked bytes: the class size of a block */
    range_kind kind;
    uint32_t holds;              /* async copies in flight from or to it */
    const vram_backend *backend; /* the one that made or registered it */
    struct range *next;          /* in a cache list */
} range;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static vram_addrmap g_ranges;     /* blocks in use and registered ranges, disjoint */
static range *g_cache[CLASSES];   /* freed blocks, zeroed, per class */
static struct {
    uint64_t live_count, live_bytes, cached_bytes, registered_count, registered_bytes;
} g_stats;

/* Class of a size: one page up to 4 KiB, then steps of a quarter of the power of two below
 * (at least a page). bytes <= SIZE_MAX / 2 (checked by the caller): nothing overflows. */
static size_t class_size(size_t bytes, unsigned *index) {
    if (bytes <= PAGE) {
        *index = 0;
        return PAGE;
    }
    unsigned k = (unsigned)(63 - __builtin_clzll((unsigned long long)(bytes - 1))); /* 2^k < bytes */
    size_t base = (size_t)1 << k, step = base / STEPS < PAGE ? PAGE : base / STEPS;
    size_t size = (bytes + step - 1) / step * step; /* whole pages in (2^k, 2^(k+1)] */
    *index = k * STEPS + (unsigned)((size - base) / step - 1);
    return size;
}

static range *as_range(vram_addrmap_node *n) { return (range *)n; }

/* The range holding address, or NULL. Under g_lock. */
static range *holding(uintptr_t address) {
    range *r = as_range(vram_addrmap_floor(&g_ranges, address));
    return r && address - r->node.key < r->size ? r : NULL;
}

bool vram_pinned_contains(const void *ptr, size_t bytes) {
    uintptr_t p = (uintptr_t)ptr;
    pthread_mutex_lock(&g_lock);
    range *r = holding(p);
    bool inside = r && r->kind != RANGE_PENDING && bytes <= r->size - (p - r->node.key);
    pthread_mutex_unlock(&g_lock);
    return inside;
}

bool vram_pinned_hold(const void *ptr, size_t bytes) {
    uintptr_t p = (uintptr_t)ptr;
    pthread_mutex_lock(&g_lock);
    range *r = holding(p);
    bool inside = r && r->kind != RANGE_PENDING && bytes <= r->size - (p - r->node.key);
    if (inside) r->holds++;
    pthread_mutex_unlock(&g_lock);
    return inside;
}

void vram_pinned_unhold(const void *ptr) {
    pthread_mutex_lock(&g_lock);
    range *r = holding((uintptr_t)ptr); /* held: still in the table */
    if (r) r->holds--;
    pthread_mutex_unlock(&g_lock);
}

/* Called with g_lock held on the range r at p that is about to go: if async copies still hold
 * it, release the lock, wait for them, and answer true (look the range up again). */
static bool drained(range *r, uintptr_t p) {
    if (r->holds == 0) return false;
    size_t size = r->size;
    pthread_mutex_unlock(&g_lock);
    vram_async_drain_host(p, size);
    sched_yield(); /* a copy still being handed to its stream holds it but is not listed yet */
    return true;
}

/* Whether [p, p + bytes) overlaps a range of the table (p + bytes does not wrap). */
static bool overlaps(uintptr_t p, size_t bytes) {
    range *r = as_range(vram_addrmap_floor(&g_ranges, p + bytes - 1));
    return r && r->node.key + r->size > p;
}

static int fail(int status, vram_reason reason, int driver_error) {
    vram_set_last_error(status, reason, VRAM_OP_NONE, driver_error);
    return status;
}

/* Unlink cached blocks until at most keep bytes stay cached (the largest go first); returns
 * them as a list to release outside the lock. Under g_lock. */
static range *take_cached(uint64_t keep) {
    range *taken = NULL;
    for (int i = CLASSES - 1; i >= 0 && g_stats.cached_bytes > keep; i--) {
        while (g_cache[i] && g_stats.cached_bytes > keep) {
            range *r = g_cache[i];
            g_cache[i] = r->next;
            g_stats.cached_bytes -= r->size;
            r->next = taken;
            taken = r;
        }
    }
    return taken;
}

/* Put a cleared block, out of the table, into its class's cache list. */
static void cache(range *r) {
    unsigned index;
    class_size(r->size, &index);
    pthread_mutex_lock(&g_lock);
    r->next = g_cache[index];
    g_cache[index] = r;
    g_stats.cached_bytes += r->size;
    pthread_mutex_unlock(&g_lock);
}

/* Give blocks back to the driver; one it refuses goes back to the cache. Answers the first
 * driver error, 0 if none. */
static int release_blocks(range *list) {
    int first = 0;
    while (list) {
        range *r = list;
        list = r->next;
        int error = r->backend->host_free((void *)r->node.key);
        if (error == 0) {
            free(r);
            continue;
        }
        if (!first) first = error;
        cache(r);
    }
    return first;
}

/* A cached block of this class made by backend b, unlinked; NULL if none. Under g_lock. */
static range *reuse(unsigned index, const vram_backend *b) {
    for (range **link = &g_cache[index]; *link; link = &(*link)->next) {
        range *r = *link;
        if (r->backend != b) continue;
        *link = r->next;
        g_stats.cached_bytes -= r->size;
        return r;
    }
    return NULL;
}

/* At exit the cached blocks go back to the driver (blocks in use are their owners'), so that a
 * leak checker such as compute-sanitizer sees nothing of ours left. */
static void release_cache_at_exit(void) {
    pthread_mutex_lock(&g_lock);
    range *cached = take_cached(0);
    pthread_mutex_unlock(&g_lock);
    release_blocks(cached);
}

static pthread_once_t g_exit_once = PTHREAD_ONCE_INIT;

static void register_exit(void) { atexit(release_cache_at_exit); }

/* The driver's allocation, with the thread on its device's node so that the pages the
 * driver touches while locking them are placed there. */
static int driver_alloc(const vram_backend *b, int device, size_t size, void **out) {
    pthread_once(&g_exit_once, register_exit);
    cpu_set_t saved;
    bool bound = vram_numa_bind(device, &saved);
    int error = b->host_alloc(size, out);
    if (bound) vram_numa_restore(&saved);
    return error;
}

static int host_alloc(vram_call *c, void **ptr, size_t bytes) {
    const vram_backend *b = vram_runtime_backend();
    if (!vram_runtime_usable(b)) return VRAM_ERR_NO_DEVICE;
    unsigned index;
    size_t size = class_size(bytes, &index);
    pthread_mutex_lock(&g_lock);
    range *r = reuse(index, b);
    pthread_mutex_unlock(&g_lock);
    if (!r) {
        r = calloc(1, sizeof *r); /* before the driver: recording cannot fail */
        if (!r) return VRAM_ERR_ALLOCATION_FAILED;
        void *p = NULL;
        int error = driver_alloc(b, c->device, size, &p);
        if (error != 0) { /* the cache may hold what the driver lacks: release it, retry */
            pthread_mutex_lock(&g_lock);
            range *cached = take_cached(0);
            pthread_mutex_unlock(&g_lock);
            if (cached) {
                release_blocks(cached);
                error = driver_alloc(b, c->device, size, &p);
            }
        }
        if (error != 0 || !p) {
            free(r);
            c->driver_error = error;
            return error && b->classify(error) == VRAM_FAULT_NO_DEVICE ? VRAM_ERR_NO_DEVICE
                                                                       : VRAM_ERR_ALLOCATION_FAILED;
        }
        r->node.key = (uintptr_t)p;
        r->size = size;
        r->backend = b;
    }
    r->bytes = bytes;
    r->kind = RANGE_BLOCK;
    pthread_mutex_lock(&g_lock);
    vram_addrmap_insert(&g_ranges, &r->node);
    g_stats.live_count++;
    g_stats.live_bytes += r->size;
    pthread_mutex_unlock(&g_lock);
    *ptr = (void *)r->node.key;
    c->bytes = bytes;
    return VRAM_SUCCESS;
}

int vram_host_alloc(void **ptr, size_t bytes) {
    vram_call c = vram_call_begin(VRAM_OP_HOST_ALLOC);
    if (!ptr) return vram_call_refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    *ptr = NULL;
    if (bytes == 0) return vram_call_refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE);
    if (bytes > SIZE_MAX / 2)
        return vram_call_refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_SIZE_OVERFLOW);
    return vram_call_finish(&c, host_alloc(&c, ptr, bytes));
}

int vram_host_free(void *ptr) {
    vram_call c = vram_call_begin(VRAM_OP_HOST_FREE);
    if (!ptr) return vram_call_finish(&c, VRAM_SUCCESS);
    uintptr_t p = (uintptr_t)ptr;
    range *r;
    do {
        pthread_mutex_lock(&g_lock);
        r = holding(p);
        if (!r || r->kind != RANGE_BLOCK) {
            pthread_mutex_unlock(&g_lock);
            return vram_call_refuse(&c, VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER);
        }
        if (r->node.key != p) {
            pthread_mutex_unlock(&g_lock);
            return vram_call_refuse(&c, VRAM_ERR_INTERIOR_POINTER, VRAM_REASON_INTERIOR_POINTER);
        }
    } while (drained(r, p));
    vram_addrmap_remove(&g_ranges, p);
    g_stats.live_count--;
    g_stats.live_bytes -= r->size;
    pthread_mutex_unlock(&g_lock);
    /* Out of the table, not yet cached: no one else can reach it while it is cleared. */
    explicit_bzero(ptr, r->bytes);
    c.bytes = r->bytes; /* once cached, r belongs to the cache (a trim may free it) */
    cache(r);
    return vram_call_finish(&c, VRAM_SUCCESS);
}

int vram_host_trim(size_t keep_bytes) {
    pthread_mutex_lock(&g_lock);
    range *taken = take_cached(keep_bytes);
    pthread_mutex_unlock(&g_lock);
    int error = release_blocks(taken);
    return error ? fail(VRAM_ERR_DRIVER, VRAM_REASON_NONE, error) : VRAM_SUCCESS;
}

int vram_host_register(void *ptr, size_t bytes) {
    uintptr_t p = (uintptr_t)ptr, end;
    if (!ptr) return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, 0);
    if (bytes == 0) return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE, 0);
    if (vram_add_overflows(p, bytes, &end))
        return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_RANGE_WRAP, 0);
    const vram_backend *b = vram_runtime_backend();
    if (!vram_runtime_usable(b)) return fail(VRAM_ERR_NO_DEVICE, VRAM_REASON_NONE, 0);
    range *r = calloc(1, sizeof *r);
    if (!r) return fail(VRAM_ERR_ALLOCATION_FAILED, VRAM_REASON_NONE, 0);
    r->node.key = p;
    r->bytes = r->size = bytes;
    r->kind = RANGE_PENDING; /* holds its place against overlapping registrations */
    r->backend = b;
    pthread_mutex_lock(&g_lock);
    bool overlap = overlaps(p, bytes);
    if (!overlap) vram_addrmap_insert(&g_ranges, &r->node);
    pthread_mutex_unlock(&g_lock);
    if (overlap) {
        free(r);
        return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_OVERLAP, 0);
    }
    int error = b->host_register(ptr, bytes);
    pthread_mutex_lock(&g_lock);
    if (error == 0) {
        r->kind = RANGE_REGISTERED;
        g_stats.registered_count++;
        g_stats.registered_bytes += bytes;
    } else {
        vram_addrmap_remove(&g_ranges, p);
    }
    pthread_mutex_unlock(&g_lock);
    if (error == 0) return VRAM_SUCCESS;
    free(r);
    return fail(b->classify(error) == VRAM_FAULT_NO_DEVICE ? VRAM_ERR_NO_DEVICE : VRAM_ERR_DRIVER,
                VRAM_REASON_NONE, error);
}

int vram_host_unregister(void *ptr) {
    if (!ptr) return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, 0);
    uintptr_t p = (uintptr_t)ptr;
    range *r;
    do {
        pthread_mutex_lock(&g_lock);
        r = holding(p);
        if (!r || r->kind != RANGE_REGISTERED) {
            pthread_mutex_unlock(&g_lock);
            return fail(VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER, 0);
        }
        if (r->node.key != p) {
            pthread_mutex_unlock(&g_lock);
            return fail(VRAM_ERR_INTERIOR_POINTER, VRAM_REASON_INTERIOR_POINTER, 0);
        }
    } while (drained(r, p));
    /* Pending again: copies stop treating it as pinned before the driver unlocks it. */
    r->kind = RANGE_PENDING;
    g_stats.registered_count--;
    g_stats.registered_bytes -= r->bytes;
    pthread_mutex_unlock(&g_lock);
    int error = r->backend->host_unregister(ptr);
    pthread_mutex_lock(&g_lock);
    if (error == 0) {
        vram_addrmap_remove(&g_ranges, p);
    } else { /* still registered as far as the driver says: keep it, the caller may retry */
        r->kind = RANGE_REGISTERED;
        g_stats.registered_count++;
        g_stats.registered_bytes += r->bytes;
    }
    pthread_mutex_unlock(&g_lock);
    if (error == 0) {
        free(r);
        return VRAM_SUCCESS;
    }
    return fail(r->backend->classify(error) == VRAM_FAULT_NO_DEVICE ? VRAM_ERR_NO_DEVICE
                                                                    : VRAM_ERR_DRIVER,
                VRAM_REASON_NONE, error);
}

int vram_host_stats_get(vram_host_stats *out, size_t out_size) {
    if (!out || out_size < sizeof *out)
        return fail(VRAM_ERR_INVALID_PARAMETERS, out ? VRAM_REASON_NONE : VRAM_REASON_NULL_POINTER,
                    0);
    memset(out, 0, sizeof *out);
    out->struct_size = (uint32_t)sizeof *out;
    pthread_mutex_lock(&g_lock);
    out->live_count = g_stats.live_count;
    out->live_bytes = g_stats.live_bytes;
    out->cached_bytes = g_stats.cached_bytes;
    out->registered_count = g_stats.registered_count;
    out->registered_bytes = g_stats.registered_bytes;
    pthread_mutex_unlock(&g_lock);
    vram_staging_stats(&out->staging_bytes, &out->staged_copies_total,
                       &out->staging_cleared_bytes_total);
    return VRAM_SUCCESS;
}
