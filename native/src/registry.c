/* The registry of live allocations.
 *
 * One mutex guards everything here; it is never held across a driver call. Copies pin their
 * entry (pins > 0) and unpin when done; a free marks its entry `freeing` (new pins are then
 * refused) and waits on `changed` until the pins drain, so a copy never races a free into
 * freed memory. Pins of async copies are drained by the free itself (async.c waits for their
 * streams), so a free before its caller waits for a copy cannot deadlock. Freed addresses are remembered in a ring of VRAM_FREED_MEMORY tombstones for
 * idempotent free; the oldest is forgotten first. */
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "addrhash.h"
#include "addrmap.h"
#include "internal.h"

struct vram_entry {
    vram_addrmap_node node; /* first: the map hands back this address */
    vram_addrhash_node by_generation; /* in g_generations, keyed by generation */
    vram_entry *prev, *next; /* allocation order on its device */
    const vram_backend *backend;
    size_t bytes;
    uint64_t generation;
    uint64_t alloc_ns;
    int device;
    uint32_t tag;
    uint32_t pins;
    uint32_t async_pins; /* of those, held by async copies: a free drains them (async.c) */
    bool freeing;  /* a free is under way: refuse new pins */
    bool detached; /* no longer in the map: the last unpin or the freer deletes it */
    bool wipe;     /* overwrite with zeros before freeing */
    bool stream_ordered; /* made by vram_malloc_async */
};

typedef struct tombstone {
    vram_addrhash_node node; /* first: the map hands back this address */
    uint64_t generation;
    int device;
    bool used;
} tombstone;

typedef struct device_books {
    vram_entry *oldest, *newest;
    vram_registry_stats stats;
} device_books;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_changed = PTHREAD_COND_INITIALIZER;
/* Live entries by address, ordered (a pointer inside an allocation finds it); by generation,
 * and tombstones by address, hashed: exact lookups only. */
static vram_addrmap g_live;
static vram_addrhash g_generations;
static vram_addrhash g_freed;
static tombstone g_tombs[VRAM_FREED_MEMORY];
static size_t g_tomb_next;
static uint64_t g_next_generation = 1;
static uint64_t g_live_count;
static uint64_t g_live_bytes;
static uint64_t g_peak_bytes;
static device_books g_books[VRAM_MAX_DEVICES];

static vram_entry *as_entry(vram_addrmap_node *n) { return (vram_entry *)n; }

static vram_entry *live_generation(uint64_t generation) {
    vram_addrhash_node *n = vram_addrhash_find(&g_generations, (uintptr_t)generation);
    return n ? (vram_entry *)((char *)n - offsetof(vram_entry, by_generation)) : NULL;
}

vram_entry *vram_registry_node_new(void) {
    vram_entry *node = malloc(sizeof *node); /* malloc's thread cache; calloc bypasses it */
    if (node) *node = (vram_entry){0};
    return node;
}

void vram_registry_node_delete(vram_entry *node) { free(node); }

void vram_registry_node_stream_ordered(vram_entry *node) { node->stream_ordered = true; }

bool vram_entry_stream_ordered(const vram_entry *e) { return e->stream_ordered; /* immutable */ }

static void forget_tomb(uintptr_t address) {
    tombstone *t = (tombstone *)vram_addrhash_remove(&g_freed, address);
    if (t) t->used = false;
}

static void remember_tomb(uintptr_t address, uint64_t generation, int device) {
    forget_tomb(address);
    tombstone *t = &g_tombs[g_tomb_next];
    g_tomb_next = (g_tomb_next + 1) % VRAM_FREED_MEMORY;
    if (t->used) vram_addrhash_remove(&g_freed, t->node.key);
    t->node.key = address;
    t->generation = generation;
    t->device = device;
    t->used = true;
    vram_addrhash_insert(&g_freed, &t->node);
}

/* Take an entry out of the map, its device's list and the live totals. */
static void unlink_entry(vram_entry *e) {
    vram_addrmap_remove(&g_live, e->node.key);
    vram_addrhash_remove(&g_generations, (uintptr_t)e->generation);
    device_books *b = &g_books[e->device];
    if (e->prev) e->prev->next = e->next; else b->oldest = e->next;
    if (e->next) e->next->prev = e->prev; else b->newest = e->prev;
    e->prev = e->next = NULL;
    b->stats.live_count--;
    b->stats.live_bytes -= e->bytes;
    b->stats.live_rounded_bytes -= e->backend->footprint(e->bytes);
    b->stats.tag_live_count[e->tag]--;
    b->stats.tag_live_bytes[e->tag] -= e->bytes;
    g_live_count--;
    g_live_bytes -= e->bytes;
    e->detached = true;
}

/* The driver handed out [address, address + bytes) again, so any entry overlapping it was
 * released: by a free still finishing (count it freed), or outside vram_free (count stale). */
static void evict_overlaps(uintptr_t address, size_t bytes) {
    for (;;) {
        vram_entry *e = as_entry(vram_addrmap_floor(&g_live, address + bytes - 1));
        if (!e || e->node.key + e->bytes <= address) return;
        /* A freeing entry with no pins left has been released by its freer's driver call. */
        bool released_by_free = e->freeing && e->pins == 0;
        unlink_entry(e);
        if (released_by_free) {
            g_books[e->device].stats.frees_total++;
        } else {
            g_books[e->device].stats.stale_evicted_total++;
            if (e->pins == 0) vram_registry_node_delete(e);
        }
        pthread_cond_broadcast(&g_changed);
    }
}

uint64_t vram_registry_insert(vram_entry *node, const vram_backend *backend, uintptr_t address,
                              size_t bytes, int device, uint32_t tag, bool wipe,
                              uint64_t started_ns) {
    pthread_mutex_lock(&g_lock);
    /* Freed starts inside the new range stay remembered: lookups consult them only for
     * addresses no live allocation holds. */
    evict_overlaps(address, bytes);
    node->node.key = address;
    node->backend = backend;
    node->bytes = bytes;
    node->device = device;
    node->tag = tag;
    node->wipe = wipe;
    node->generation = g_next_generation++;
    vram_addrmap_insert(&g_live, &node->node);
    node->by_generation.key = (uintptr_t)node->generation;
    vram_addrhash_insert(&g_generations, &node->by_generation);

    device_books *b = &g_books[device];
    /* Never older than the device's newest: its list stays in alloc_ns order. */
    node->alloc_ns = b->newest && b->newest->alloc_ns > started_ns ? b->newest->alloc_ns
                                                                  : started_ns;
    node->prev = b->newest;
    if (b->newest) b->newest->next = node; else b->oldest = node;
    b->newest = node;
    b->stats.live_count++;
    b->stats.live_bytes += bytes;
    b->stats.live_rounded_bytes += backend->footprint(bytes);
    if (b->stats.live_bytes > b->stats.peak_bytes) b->stats.peak_bytes = b->stats.live_bytes;
    b->stats.allocs_total++;
    b->stats.tag_live_count[tag]++;
    b->stats.tag_live_bytes[tag] += bytes;
    g_live_count++;
    g_live_bytes += bytes;
    if (g_live_bytes > g_peak_bytes) g_peak_bytes = g_live_bytes;
    uint64_t generation = node->generation;
    pthread_mutex_unlock(&g_lock);
    return generation;
}

vram_lookup vram_registry_pin(uintptr_t address, size_t bytes, vram_entry **entry, int *device) {
    vram_lookup result;
    pthread_mutex_lock(&g_lock);
    vram_entry *e = as_entry(vram_addrmap_floor(&g_live, address));
    if (!e || address - e->node.key >= e->bytes || e->freeing) {
        tombstone *t = (tombstone *)vram_addrhash_find(&g_freed, address);
        if (t) *device = t->device;
        result = (t || (e && e->freeing)) ? VRAM_LOOKUP_FREED : VRAM_LOOKUP_UNKNOWN;
        if (e && e->freeing) *device = e->device;
    } else {
        *device = e->device;
        /* address + bytes does not wrap (checked by the caller); compare remaining room. */
        if (bytes > e->bytes - (address - e->node.key)) {
            result = VRAM_LOOKUP_OUT_OF_BOUNDS;
        } else {
            e->pins++;
            *entry = e;
            result = VRAM_LOOKUP_LIVE;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return result;
}

bool vram_registry_pin_allocation(uintptr_t address, uint64_t generation, vram_entry **entry) {
    pthread_mutex_lock(&g_lock);
    vram_entry *e = generation ? live_generation(generation) : NULL;
    bool found = e && e->node.key == address && !e->freeing;
    if (found) {
        e->pins++;
        *entry = e;
    }
    pthread_mutex_unlock(&g_lock);
    return found;
}

void vram_registry_unpin(vram_entry *e) {
    pthread_mutex_lock(&g_lock);
    if (--e->pins == 0) {
        if (e->detached && !e->freeing)
            vram_registry_node_delete(e);
        else if (e->freeing)
            pthread_cond_broadcast(&g_changed);
    }
    pthread_mutex_unlock(&g_lock);
}

void vram_registry_hold_async(vram_entry *e) {
    pthread_mutex_lock(&g_lock);
    e->async_pins++;
    pthread_cond_broadcast(&g_changed); /* a free waiting on this pin can drain it now */
    pthread_mutex_unlock(&g_lock);
}

void vram_registry_unpin_async(vram_entry *e) {
    pthread_mutex_lock(&g_lock);
    e->async_pins--;
    pthread_mutex_unlock(&g_lock);
    vram_registry_unpin(e);
}

static void count_repeat(int device) { g_books[device].stats.repeated_frees_total++; }

vram_free_begin vram_registry_free_begin(uintptr_t address, uint64_t generation,
                                         vram_entry **entry) {
    vram_free_begin result;
    pthread_mutex_lock(&g_lock);
    for (;;) {
        vram_entry *e;
        if (generation != 0) { /* exactly this allocation, or nothing */
            if (generation >= g_next_generation) {
                result = VRAM_FREE_BAD_GENERATION;
                break;
            }
            e = live_generation(generation);
            if (!e) { /* freed already, whoever freed it; its address may be reused */
                tombstone *t = (tombstone *)vram_addrhash_find(&g_freed, address);
                count_repeat(t && t->generation == generation ? t->device : 0);
                result = VRAM_FREE_ALREADY;
                break;
            }
            if (e->node.key != address) { /* live, but not at this address */
                result = VRAM_FREE_BAD_GENERATION;
                break;
            }
        } else {
            e = as_entry(vram_addrmap_find(&g_live, address));
        }
        if (e && e->freeing) { /* another thread is freeing it: wait for its outcome */
            pthread_cond_wait(&g_changed, &g_lock);
            continue;
        }
        if (e) {
            e->freeing = true;
            while (e->pins > 0) {
                if (e->async_pins > 0) { /* copies on streams: wait for them, not their callers */
                    pthread_mutex_unlock(&g_lock);
                    vram_async_drain_entry(e); /* e stays: pinned and marked freeing */
                    pthread_mutex_lock(&g_lock);
                } else {
                    pthread_cond_wait(&g_changed, &g_lock);
                }
            }
            if (e->detached) { /* released outside vram_free meanwhile; the address is reused */
                vram_registry_node_delete(e);
                result = VRAM_FREE_ALREADY;
                break;
            }
            *entry = e;
            result = VRAM_FREE_PROCEED;
            break;
        }
        vram_entry *holder = as_entry(vram_addrmap_floor(&g_live, address));
        if (holder && address - holder->node.key < holder->bytes) {
            result = VRAM_FREE_INTERIOR;
            break;
        }
        tombstone *t = (tombstone *)vram_addrhash_find(&g_freed, address);
        if (t) count_repeat(t->device);
        result = t ? VRAM_FREE_ALREADY : VRAM_FREE_UNKNOWN;
        break;
    }
    pthread_mutex_unlock(&g_lock);
    return result;
}

void vram_registry_free_finish(vram_entry *e, int outcome) {
    pthread_mutex_lock(&g_lock);
    if (e->detached) {
        /* The driver already reused the address and evict_overlaps() counted the free. */
        e->freeing = false;
        vram_registry_node_delete(e);
    } else if (outcome == 1) {
        e->freeing = false;
    } else {
        unlink_entry(e);
        e->freeing = false;
        if (outcome == 0) {
            g_books[e->device].stats.frees_total++;
            remember_tomb(e->node.key, e->generation, e->device);
        } else {
            g_books[e->device].stats.lost_total++;
            remember_tomb(e->node.key, e->generation, e->device);
        }
        vram_registry_node_delete(e);
    }
    pthread_cond_broadcast(&g_changed);
    pthread_mutex_unlock(&g_lock);
}

void vram_entry_describe(const vram_entry *e, const vram_backend **backend, int *device,
                         uintptr_t *address, size_t *bytes, bool *wipe) {
    /* Immutable while the caller holds a pin or the freeing mark (wipe changes under the
     * lock only while no free is under way). */
    *backend = e->backend;
    *device = e->device;
    *address = e->node.key;
    *bytes = e->bytes;
    *wipe = e->wipe;
}

void vram_entry_identity(const vram_entry *e, uint64_t *generation, uint32_t *tag) {
    *generation = e->generation; /* immutable */
    *tag = e->tag;
}

bool vram_registry_set_wipe(uintptr_t address, uint64_t generation, bool wipe) {
    pthread_mutex_lock(&g_lock);
    vram_entry *e = live_generation(generation);
    bool found = e && e->node.key == address && !e->freeing;
    if (found) e->wipe = wipe;
    pthread_mutex_unlock(&g_lock);
    return found;
}

uint64_t vram_registry_live_count(void) {
    pthread_mutex_lock(&g_lock);
    uint64_t n = g_live_count;
    pthread_mutex_unlock(&g_lock);
    return n;
}

static void add_books(vram_registry_stats *to, const device_books *b) {
    const vram_registry_stats *s = &b->stats;
    to->live_count += s->live_count;
    to->live_bytes += s->live_bytes;
    to->live_rounded_bytes += s->live_rounded_bytes;
    to->allocs_total += s->allocs_total;
    to->frees_total += s->frees_total;
    to->repeated_frees_total += s->repeated_frees_total;
    to->lost_total += s->lost_total;
    to->stale_evicted_total += s->stale_evicted_total;
    for (int t = 0; t < VRAM_MAX_TAGS; t++) {
        to->tag_live_count[t] += s->tag_live_count[t];
        to->tag_live_bytes[t] += s->tag_live_bytes[t];
    }
    if (b->oldest && (to->oldest_alloc_ns == 0 || b->oldest->alloc_ns < to->oldest_alloc_ns))
        to->oldest_alloc_ns = b->oldest->alloc_ns;
}

int vram_registry_stats_copy(int device, vram_registry_stats *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&g_lock);
    if (device >= 0) {
        add_books(out, &g_books[device]);
        out->peak_bytes = g_books[device].stats.peak_bytes;
    } else {
        for (int d = 0; d < VRAM_MAX_DEVICES; d++) add_books(out, &g_books[d]);
        out->peak_bytes = g_peak_bytes;
    }
    pthread_mutex_unlock(&g_lock);
    out->struct_size = (uint32_t)sizeof *out;
    return VRAM_SUCCESS;
}

static void fill_record(vram_alloc_record *r, const vram_entry *e) {
    r->address = e->node.key;
    r->bytes = e->bytes;
    r->generation = e->generation;
    r->alloc_ns = e->alloc_ns;
    r->device = e->device;
    r->tag = e->tag;
}

int vram_registry_list_copy(int device, vram_alloc_record *out, size_t capacity, size_t *count) {
    pthread_mutex_lock(&g_lock);
    vram_entry *cursor[VRAM_MAX_DEVICES] = {0};
    size_t live = 0;
    for (int d = 0; d < VRAM_MAX_DEVICES; d++) {
        if (device >= 0 && d != device) continue;
        cursor[d] = g_books[d].oldest;
        live += g_books[d].stats.live_count;
    }
    /* Merge the per-device lists, oldest first. */
    for (size_t n = 0; n < capacity && n < live; n++) {
        int pick = -1;
        for (int d = 0; d < VRAM_MAX_DEVICES; d++)
            if (cursor[d] && (pick < 0 || cursor[d]->alloc_ns < cursor[pick]->alloc_ns)) pick = d;
        fill_record(&out[n], cursor[pick]);
        cursor[pick] = cursor[pick]->next;
    }
    pthread_mutex_unlock(&g_lock);
    *count = live;
    return VRAM_SUCCESS;
}
