/* An unordered map from keys (addresses, generations) to intrusive nodes, for lookups that
 * need no order: chained hashing, O(1) expected to insert, find and remove, where the ordered
 * map (addrmap.h) pays O(log n) with a rebalance on every change. Insertion cannot fail: the
 * table doubles when it holds as many nodes as buckets, and where that allocation fails it
 * keeps its size (chains grow longer; lookups stay correct). A zeroed vram_addrhash is empty
 * and ready. Not thread-safe: its owner's lock guards it. */
#ifndef VRAM_ADDRHASH_H
#define VRAM_ADDRHASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct vram_addrhash_node {
    struct vram_addrhash_node *next; /* in its bucket */
    uintptr_t key;
} vram_addrhash_node;

#define VRAM_ADDRHASH_FIRST_BITS 4

typedef struct vram_addrhash {
    vram_addrhash_node **buckets; /* NULL: first, until the table first grows */
    size_t count;
    unsigned grown;               /* log2 of the bucket count, less VRAM_ADDRHASH_FIRST_BITS */
    vram_addrhash_node *first[1u << VRAM_ADDRHASH_FIRST_BITS];
} vram_addrhash;

/* The key (node->key) must not be present. */
void vram_addrhash_insert(vram_addrhash *map, vram_addrhash_node *node);
vram_addrhash_node *vram_addrhash_find(const vram_addrhash *map, uintptr_t key);
/* Unlinks and returns the node with this key, or NULL. */
vram_addrhash_node *vram_addrhash_remove(vram_addrhash *map, uintptr_t key);
/* Unlinks every node; returns them chained through next (NULL if none). */
vram_addrhash_node *vram_addrhash_take_all(vram_addrhash *map);

#endif /* VRAM_ADDRHASH_H */
