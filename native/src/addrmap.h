/* An ordered map from addresses to intrusive nodes (AVL tree): exact, floor and ceiling
 * lookups in O(log n), so a pointer can be resolved to the allocation that holds it. */
#ifndef VRAM_ADDRMAP_H
#define VRAM_ADDRMAP_H

#include <stdint.h>

typedef struct vram_addrmap_node {
    struct vram_addrmap_node *left;
    struct vram_addrmap_node *right;
    uintptr_t key;
    int height;
} vram_addrmap_node;

typedef struct vram_addrmap {
    vram_addrmap_node *root;
} vram_addrmap;

/* The key must not be present. */
void vram_addrmap_insert(vram_addrmap *map, vram_addrmap_node *node);
/* Unlinks and returns the node with this key, or NULL. */
vram_addrmap_node *vram_addrmap_remove(vram_addrmap *map, uintptr_t key);
vram_addrmap_node *vram_addrmap_find(const vram_addrmap *map, uintptr_t key);
/* Node with the greatest key <= key, or NULL. */
vram_addrmap_node *vram_addrmap_floor(const vram_addrmap *map, uintptr_t key);
/* Node with the smallest key >= key, or NULL. */
vram_addrmap_node *vram_addrmap_ceiling(const vram_addrmap *map, uintptr_t key);

#endif /* VRAM_ADDRMAP_H */
