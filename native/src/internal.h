/* Internal interfaces of libvram_ops: backends, the registry, the aggregates. Not installed. */
#ifndef VRAM_INTERNAL_H
#define VRAM_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vram_ops.h"

/* How a driver failure is to be treated. */
typedef enum vram_fault {
    VRAM_FAULT_NONE = 0,         /* success */
    VRAM_FAULT_OUT_OF_MEMORY,    /* not sticky: later calls may succeed */
    VRAM_FAULT_STICKY,           /* the context is dead: latch the device */
    VRAM_FAULT_NO_DEVICE,        /* driver or device missing */
    VRAM_FAULT_OTHER
} vram_fault;

/* Copies a backend enqueues on a stream: device address from host pointer, host from device,
 * within one device, and from src_device's memory to device's (peer). */
typedef enum vram_async_kind {
    VRAM_ASYNC_H2D = 0,
    VRAM_ASYNC_D2H,
    VRAM_ASYNC_D2D,
    VRAM_ASYNC_PEER
} vram_async_kind;

/* Backend answers that are not driver codes (those are >= 0). A fence is lost when its wait
 * failed and the device could not be waited for either: whether the copy still runs is
 * unknown, so its device is treated as failed. */
#define VRAM_FENCE_PENDING (-1)
#define VRAM_STREAM_FOREIGN (-2)
#define VRAM_FENCE_LOST (-3)

/* A backend answers with its driver's raw code (0 = success); classify() interprets it.
 * Backends are stateless towards the registry: validation happens before they are called. */
typedef struct vram_backend {
    const char *name;
    /* Load and initialise once; returns true when usable. Thread-safe, idempotent. */
    bool (*init)(void);
    const char *(*diagnostic)(void);
    int (*device_count)(void);
    int (*alloc)(int device, size_t bytes, uintptr_t *out);
    int (*release)(int device, uintptr_t address, size_t bytes);
    /* sensitive: the allocation is under VRAM_WIPE_ON_FREE (host copies of its bytes made on
     * the way, such as staging buffers, are cleared after the copy). */
    int (*copy_h2d)(int device, uintptr_t dst, const void *src, size_t bytes, bool sensitive);
    int (*copy_d2h)(int device, void *dst, uintptr_t src, size_t bytes, bool sensitive);
    int (*mem_info)(int device, size_t *free_bytes, size_t *total_bytes);
    int (*wipe)(int device, uintptr_t address, size_t bytes); /* zeros, done when it returns */
    int (*props)(int device, vram_device_props *out);
    /* Copies between device ranges: on one device, and peer to peer between two devices
     * (peer_capable enables peer access once and answers whether it is on). */
    int (*copy_d2d)(int device, uintptr_t dst, uintptr_t src, size_t bytes);
    bool (*peer_capable)(int src_device, int dst_device);
    int (*copy_peer)(int dst_device, uintptr_t dst, int src_device, uintptr_t src, size_t bytes);
    /* Page-locked host memory, usable by every device, and registration of a caller's. */
    int (*host_alloc)(size_t bytes, void **out);
    int (*host_free)(void *ptr);
    int (*host_register)(void *ptr, size_t bytes);
    int (*host_unregister)(void *ptr);
    /* Caller streams (async.c), handles as the caller gave them. stream_check: 0 when stream
     * may carry work of device, VRAM_STREAM_FOREIGN when it belongs to another context, else
     * the driver's error. stream_sync waits for the work on it. copy_async enqueues a copy
     * between two timing marks and hands back the fence to wait for (NULL: the copy was done
     * before it returned); a failure answers once nothing runs (else VRAM_FENCE_LOST). fence_wait polls (block false) or waits: 0 complete (*elapsed_ns:
     * the device's time between the marks), VRAM_FENCE_PENDING, or the driver's error once
     * the copy is known to be over (else VRAM_FENCE_LOST); fence_release recycles it. alloc_async and release_async allocate and free in stream
     * order (release_async zeroes first when wipe). */
    int (*stream_check)(int device, uintptr_t stream);
    int (*stream_sync)(int device, uintptr_t stream);
    int (*copy_async)(int device, vram_async_kind kind, uintptr_t dst, uintptr_t src,
                      int src_device, size_t bytes, uintptr_t stream, void **fence);
    int (*fence_wait)(void *fence, bool block, uint64_t *elapsed_ns);
    void (*fence_release)(void *fence);
    int (*alloc_async)(int device, size_t bytes, uintptr_t stream, uintptr_t *out);
    int (*release_async)(int device, uintptr_t address, size_t bytes, bool wipe,
                         uintptr_t stream);
    /* Device memory an allocation of this size takes, as the driver rounds it. */
    size_t (*footprint)(size_t bytes);
    vram_fault (*classify)(int driver_error);
    const char *(*error_name)(int driver_error);
} vram_backend;

extern const vram_backend vram_backend_cuda;
extern const vram_backend vram_backend_host;

/* runtime.c: backend selection, the thread's device, device latches. */
const vram_backend *vram_runtime_backend(void); /* never NULL; selects the default once */
bool vram_runtime_usable(const vram_backend *backend); /* init succeeded */
int vram_runtime_thread_device(void);
bool vram_runtime_device_failed(int device);
void vram_runtime_latch(int device);
/* Bracket an allocation from its choice of backend to its registry entry: a backend switch
 * waits for it, and sees it live. */
void vram_runtime_allocation_begin(void);
void vram_runtime_allocation_end(void);

/* pool.c: the device memory pool. vram_pool_alloc and vram_pool_release stand in for the
 * backend's alloc and release (a block from the cache / into it where the pool is on; the
 * driver's codes otherwise). vram_pool_idle: no block cached or handed out on any device. */
int vram_pool_alloc(const vram_backend *backend, int device, size_t bytes, uintptr_t *out);
int vram_pool_release(const vram_backend *backend, int device, uintptr_t address, size_t bytes);
bool vram_pool_idle(void);

/* registry.c: live allocations, pinned by copies, remembered after free. */
typedef enum vram_lookup {
    VRAM_LOOKUP_LIVE = 0,
    VRAM_LOOKUP_UNKNOWN,
    VRAM_LOOKUP_FREED,
    VRAM_LOOKUP_OUT_OF_BOUNDS
} vram_lookup;

typedef struct vram_entry vram_entry;

/* Reserve a node before the driver allocates, so that recording cannot fail afterwards. */
vram_entry *vram_registry_node_new(void);
void vram_registry_node_delete(vram_entry *node);
/* Record a fresh allocation; takes ownership of node. Returns its generation. started_ns: the
 * clock at the start of the allocating call, its alloc_ns (no clock read of its own). */
uint64_t vram_registry_insert(vram_entry *node, const vram_backend *backend, uintptr_t address,
                              size_t bytes, int device, uint32_t tag, bool wipe,
                              uint64_t started_ns);
/* Set a live allocation's wipe flag; false if (address, generation) is not live. */
bool vram_registry_set_wipe(uintptr_t address, uint64_t generation, bool wipe);

/* Find the live allocation holding [address, address + bytes) and pin it against free. */
vram_lookup vram_registry_pin(uintptr_t address, size_t bytes, vram_entry **entry, int *device);
/* Pin exactly the live allocation (address, generation); false if it is not live there. */
bool vram_registry_pin_allocation(uintptr_t address, uint64_t generation, vram_entry **entry);
void vram_registry_unpin(vram_entry *entry);
/* Turn a pin into one held by an async copy (a free drains those through async.c rather than
 * waiting for their caller), and drop it. */
void vram_registry_hold_async(vram_entry *entry);
void vram_registry_unpin_async(vram_entry *entry);
/* Mark a reserved node as a stream-ordered allocation (before vram_registry_insert). */
void vram_registry_node_stream_ordered(vram_entry *node);
bool vram_entry_stream_ordered(const vram_entry *entry);

/* The free protocol: begin (waits for copies, marks the entry as being freed), then finish
 * with whether the driver released it. generation 0 means any generation. */
typedef enum vram_free_begin {
    VRAM_FREE_PROCEED = 0, /* *entry is being freed by this thread: call finish */
    VRAM_FREE_ALREADY,     /* already freed: success, nothing to do */
    VRAM_FREE_UNKNOWN,
    VRAM_FREE_INTERIOR,
    VRAM_FREE_BAD_GENERATION
} vram_free_begin;

vram_free_begin vram_registry_free_begin(uintptr_t address, uint64_t generation,
                                         vram_entry **entry);
/* outcome: 0 released (remember as freed), 1 driver failed (entry stays live),
 * 2 lost with its failed device (dropped, counted as lost). */
void vram_registry_free_finish(vram_entry *entry, int outcome);
void vram_entry_describe(const vram_entry *entry, const vram_backend **backend, int *device,
                         uintptr_t *address, size_t *bytes, bool *wipe);

void vram_entry_identity(const vram_entry *entry, uint64_t *generation, uint32_t *tag);

uint64_t vram_registry_live_count(void);
int vram_registry_stats_copy(int device, vram_registry_stats *out);
int vram_registry_list_copy(int device, vram_alloc_record *out, size_t capacity, size_t *count);

/* stats.c: lock-free aggregates. */
void vram_stats_record(int device, vram_op op, int status, vram_reason reason, size_t bytes,
                       uint64_t elapsed_ns);
int vram_stats_copy(int device, vram_stats *out);

/* Thread-local last error (vram_ops.c). */
void vram_set_last_error(int status, vram_reason reason, vram_op op, int driver_error);

/* One operation in flight (vram_ops.c), for every file that implements an operation:
 * vram_call_begin() starts its clock, vram_call_finish() counts and times it and sets the
 * last error on failure, vram_call_refuse() finishes a refusal with its reason. */
typedef struct vram_call {
    vram_op op;
    uint64_t start_ns;
    int device; /* where it counts: the allocation's device once known, else the thread's */
    vram_reason reason;
    int driver_error;
    size_t bytes;
} vram_call;

vram_call vram_call_begin(vram_op op);
int vram_call_finish(vram_call *c, int status);
int vram_call_refuse(vram_call *c, int status, vram_reason reason);

/* Shared by the operations of vram_ops.c and async.c. */
/* Translate a driver failure into a status; a sticky one latches the device. */
int vram_driver_failure(vram_call *c, const vram_backend *b, int device, int error,
                        int otherwise);
/* The checks every copy makes on its two ranges before the registry is asked (NULL, zero
 * size, wrap, overlap when asked, no device): VRAM_SUCCESS, or c finished with its refusal. */
int vram_copy_refused(vram_call *c, uintptr_t a, uintptr_t b, size_t bytes, bool overlap);
/* Pin the live allocation holding a device range, or set c's reason and say why not. */
int vram_pin_range(vram_call *c, uintptr_t address, size_t bytes, vram_entry **entry,
                   int *device);
/* The path copies from src_device to dst_device take (a vram_copy_path). */
int vram_copy_path_of(const vram_backend *b, int src_device, int dst_device);
/* Copy between two pinned device ranges, done when it returns; sets c's op to the path. */
int vram_copy_between(vram_call *c, vram_entry *dst_entry, uintptr_t dst, vram_entry *src_entry,
                      uintptr_t src, size_t bytes);

/* async.c: whether stream may carry work of device (a refusal sets c's reason), and the
 * drains: wait for the async copies holding an allocation or a pinned host range. */
int vram_stream_check(vram_call *c, const vram_backend *b, int device, uintptr_t stream);
void vram_async_drain_entry(const vram_entry *entry);
void vram_async_drain_host(uintptr_t start, size_t bytes);

/* Overflow-checked arithmetic. */
static inline bool vram_add_overflows(uintptr_t a, size_t b, uintptr_t *sum) {
    return __builtin_add_overflow(a, b, sum);
}

#endif /* VRAM_INTERNAL_H */
