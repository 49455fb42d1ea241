/* Host memory for device copies: pinned ranges (pinned.c), staging engines (staging.c) and the
 * NUMA placement both use (numa.c). Not installed. */
#ifndef VRAM_HOSTMEM_H
#define VRAM_HOSTMEM_H

#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* pinned.c: whether [ptr, ptr + bytes) lies inside one vram_host_alloc block in use or one
 * registered range. O(log n). */
bool vram_pinned_contains(const void *ptr, size_t bytes);
/* Hold such a range for an async copy (false, nothing held, when it is not one): its block
 * is not freed nor its registration dropped until vram_pinned_unhold(ptr). */
bool vram_pinned_hold(const void *ptr, size_t bytes);
void vram_pinned_unhold(const void *ptr);

/* staging.c. Directions of an engine. */
typedef enum vram_stage_direction { VRAM_STAGE_H2D = 0, VRAM_STAGE_D2H = 1 } vram_stage_direction;

/* Whether a copy of bytes from or to the pageable host range should be staged now. */
bool vram_staging_applies(const void *host, size_t bytes);
/* Copy through the device's engine for that direction; done when it returns, no worker
 * touching host afterwards. *error: 0 or the first driver error (CUresult). false (nothing
 * done) when staging was turned off since vram_staging_applies answered. */
bool vram_staging_copy(vram_stage_direction direction, int device, uintptr_t device_address,
                       void *host, size_t bytes, bool sensitive, int *error);
/* Figures for vram_host_stats. */
void vram_staging_stats(uint64_t *staging_bytes, uint64_t *staged_copies,
                        uint64_t *cleared_bytes);

/* numa.c: the node nearest a device (-1 unknown) and its CPUs, read once from sysfs. */
int vram_numa_node_of(int device);
/* Bind the calling thread to the device's node CPUs; false (nothing changed) when unknown.
 * saved, when not NULL, receives the affinity to restore with vram_numa_restore. */
bool vram_numa_bind(int device, cpu_set_t *saved);
void vram_numa_restore(const cpu_set_t *saved);

#endif /* VRAM_HOSTMEM_H */
