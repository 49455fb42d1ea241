/* AVL tree over intrusive nodes. Recursion depth is bounded by the tree height,
 * at most 1.44 * log2(n) + 2 (under 100 for any n that fits in memory). */
#include "addrmap.h"

#include <stddef.h>

static int height(const vram_addrmap_node *n) { return n ? n->height : 0; }

static void update(vram_addrmap_node *n) {
    int l = height(n->left), r = height(n->right);
    n->height = (l > r ? l : r) + 1;
}

static vram_addrmap_node *rotate_right(vram_addrmap_node *n) {
    vram_addrmap_node *l = n->left;
    n->left = l->right;
    l->right = n;
    update(n);
    update(l);
    return l;
}

static vram_addrmap_node *rotate_left(vram_addrmap_node *n) {
    vram_addrmap_node *r = n->right;
    n->right = r->left;
    r->left = n;
    update(n);
    update(r);
    return r;
}

static vram_addrmap_node *rebalance(vram_addrmap_node *n) {
    update(n);
    int balance = height(n->left) - height(n->right);
    if (balance > 1) {
        if (height(n->left->left) < height(n->left->right)) n->left = rotate_left(n->left);
        return rotate_right(n);
    }
    if (balance < -1) {
        if (height(n->right->right) < height(n->right->left)) n->right = rotate_right(n->right);
        return rotate_left(n);
    }
    return n;
}

static vram_addrmap_node *insert(vram_addrmap_node *root, vram_addrmap_node *node) {
    if (!root) return node;
    if (node->key < root->key)
        root->left = insert(root->left, node);
    else
        root->right = insert(root->right, node);
    return rebalance(root);
}

void vram_addrmap_insert(vram_addrmap *map, vram_addrmap_node *node) {
    node->left = node->right = NULL;
    node->height = 1;
    map->root = insert(map->root, node);
}

/* Unlink the minimum of a subtree into *min; returns the new subtree. */
static vram_addrmap_node *take_min(vram_addrmap_node *n, vram_addrmap_node **min) {
    if (!n->left) {
        *min = n;
        return n->right;
    }
    n->left = take_min(n->left, min);
    return rebalance(n);
}

static vram_addrmap_node *remove_key(vram_addrmap_node *n, uintptr_t key,
                                     vram_addrmap_node **removed) {
    if (!n) return NULL;
    if (key < n->key) {
        n->left = remove_key(n->left, key, removed);
    } else if (key > n->key) {
        n->right = remove_key(n->right, key, removed);
    } else {
        *removed = n;
        if (!n->left) return n->right;
        if (!n->right) return n->left;
        vram_addrmap_node *successor = NULL;
        vram_addrmap_node *right = take_min(n->right, &successor);
        successor->left = n->left;
        successor->right = right;
        return rebalance(successor);
    }
    return rebalance(n);
}

vram_addrmap_node *vram_addrmap_remove(vram_addrmap *map, uintptr_t key) {
    vram_addrmap_node *removed = NULL;
    map->root = remove_key(map->root, key, &removed);
    return removed;
}

vram_addrmap_node *vram_addrmap_find(const vram_addrmap *map, uintptr_t key) {
    vram_addrmap_node *n = map->root;
    while (n && n->key != key) n = key < n->key ? n->left : n->right;
    return n;
}

vram_addrmap_node *vram_addrmap_floor(const vram_addrmap *map, uintptr_t key) {
    vram_addrmap_node *n = map->root, *best = NULL;
    while (n) {
        if (n->key == key) return n;
        if (n->key < key) {
            best = n;
            n = n->right;
        } else {
            n = n->left;
        }
    }
    return best;
}

vram_addrmap_node *vram_addrmap_ceiling(const vram_addrmap *map, uintptr_t key) {
    vram_addrmap_node *n = map->root, *best = NULL;
    while (n) {
        if (n->key == key) return n;
        if (n->key > key) {
            best = n;
            n = n->left;
        } else {
            n = n->right;
        }
    }
    return best;
}
