/* Chained hashing with Fibonacci hashing of the key: its top bits pick the bucket, so keys
 * that differ only in low or only in high bits (aligned addresses, consecutive generations)
 * spread evenly. */
#include "addrhash.h"

#include <stdlib.h>

static unsigned bits_of(const vram_addrhash *map) {
    return VRAM_ADDRHASH_FIRST_BITS + map->grown;
}

static vram_addrhash_node **buckets_of(vram_addrhash *map) {
    return map->buckets ? map->buckets : map->first;
}

static size_t bucket(uintptr_t key, unsigned bits) {
    return (size_t)(((uint64_t)key * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - bits));
}

/* Double the buckets; on allocation failure (or a table as large as an index can count)
 * keep them. */
static void grow(vram_addrhash *map) {
    unsigned bits = bits_of(map) + 1;
    if (bits >= sizeof(size_t) * 8 - 4) return;
    vram_addrhash_node **fresh = calloc((size_t)1 << bits, sizeof *fresh);
    if (!fresh) return;
    vram_addrhash_node **old = buckets_of(map);
    size_t old_count = (size_t)1 << bits_of(map);
    for (size_t i = 0; i < old_count; i++) {
        for (vram_addrhash_node *n = old[i], *next; n; n = next) {
            next = n->next;
            vram_addrhash_node **head = &fresh[bucket(n->key, bits)];
            n->next = *head;
            *head = n;
        }
    }
    if (map->buckets) free(map->buckets);
    map->buckets = fresh;
    map->grown++;
}

void vram_addrhash_insert(vram_addrhash *map, vram_addrhash_node *node) {
    if (map->count >= (size_t)1 << bits_of(map)) grow(map);
    vram_addrhash_node **head = &buckets_of(map)[bucket(node->key, bits_of(map))];
    node->next = *head;
    *head = node;
    map->count++;
}

vram_addrhash_node *vram_addrhash_find(const vram_addrhash *map, uintptr_t key) {
    vram_addrhash_node *const *buckets = map->buckets ? map->buckets : map->first;
    vram_addrhash_node *n = buckets[bucket(key, bits_of(map))];
    while (n && n->key != key) n = n->next;
    return n;
}

vram_addrhash_node *vram_addrhash_remove(vram_addrhash *map, uintptr_t key) {
    vram_addrhash_node **link = &buckets_of(map)[bucket(key, bits_of(map))];
    while (*link && (*link)->key != key) link = &(*link)->next;
    vram_addrhash_node *n = *link;
    if (n) {
        *link = n->next;
        n->next = NULL;
        map->count--;
    }
    return n;
}

vram_addrhash_node *vram_addrhash_take_all(vram_addrhash *map) {
    vram_addrhash_node **buckets = buckets_of(map), *all = NULL;
    size_t count = (size_t)1 << bits_of(map);
    for (size_t i = 0; i < count && map->count > 0; i++) {
        while (buckets[i]) {
            vram_addrhash_node *n = buckets[i];
            buckets[i] = n->next;
            n->next = all;
            all = n;
            map->count--;
        }
    }
    return all;
}
