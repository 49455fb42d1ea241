/* The public operations: validate, resolve through the registry, call the backend, time and
 * count. Every path returns a code; every failure sets this thread's last error. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Thread_local vram_error_info t_last_error;

void vram_set_last_error(int status, vram_reason reason, vram_op op, int driver_error) {
    t_last_error.status = status;
    t_last_error.reason = (int32_t)reason;
    t_last_error.op = (int32_t)op;
    t_last_error.driver_error = driver_error;
}

void vram_last_error(vram_error_info *out) {
    if (out) *out = t_last_error;
}

/* One call in flight: what it will report when it finishes (shared through internal.h). */
typedef vram_call call;

vram_call vram_call_begin(vram_op op) {
    call c = {op, vram_now_ns(), vram_runtime_thread_device(), VRAM_REASON_NONE, 0, 0};
    return c;
}

int vram_call_finish(vram_call *c, int status) {
    vram_stats_record(c->device, c->op, status, c->reason, status == VRAM_SUCCESS ? c->bytes : 0,
                      vram_now_ns() - c->start_ns);
    if (status != VRAM_SUCCESS) vram_set_last_error(status, c->reason, c->op, c->driver_error);
    return status;
}

int vram_call_refuse(vram_call *c, int status, vram_reason reason) {
    c->reason = reason;
    return vram_call_finish(c, status);
}

/* The short names this file uses. */
static inline call begin(vram_op op) { return vram_call_begin(op); }
static inline int finish(call *c, int status) { return vram_call_finish(c, status); }
static inline int refuse(call *c, int status, vram_reason reason) {
    return vram_call_refuse(c, status, reason);
}

int vram_driver_failure(vram_call *c, const vram_backend *b, int device, int error,
                        int otherwise) {
    c->driver_error = error;
    switch (b->classify(error)) {
    case VRAM_FAULT_STICKY:
        vram_runtime_latch(device);
        return VRAM_ERR_DEVICE_FAILED;
    case VRAM_FAULT_NO_DEVICE:
        return VRAM_ERR_NO_DEVICE;
    default:
        return otherwise;
    }
}

static int driver_failure(call *c, const vram_backend *b, int device, int error, int otherwise) {
    return vram_driver_failure(c, b, device, error, otherwise);
}

/* The backend and thread device for an operation that allocates or queries. */
static int ready(call *c, const vram_backend **b) {
    *b = vram_runtime_backend();
    if (!vram_runtime_usable(*b)) return VRAM_ERR_NO_DEVICE;
    if (c->device >= (*b)->device_count()) {
        c->reason = VRAM_REASON_INVALID_DEVICE;
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    if (vram_runtime_device_failed(c->device)) return VRAM_ERR_DEVICE_FAILED;
    return VRAM_SUCCESS;
}

static int invalid(void) {
    vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NONE, VRAM_OP_NONE, 0);
    return VRAM_ERR_INVALID_PARAMETERS;
}

static int g_wipe_policy = VRAM_WIPE_OFF; /* atomic: the policy of new allocations */

int vram_set_wipe_policy(int policy) {
    if (policy != VRAM_WIPE_OFF && policy != VRAM_WIPE_ON_FREE) return invalid();
    __atomic_store_n(&g_wipe_policy, policy, __ATOMIC_RELAXED);
    return VRAM_SUCCESS;
}

int vram_get_wipe_policy(int *policy) {
    if (!policy) return invalid();
    *policy = __atomic_load_n(&g_wipe_policy, __ATOMIC_RELAXED);
    return VRAM_SUCCESS;
}

int vram_set_allocation_wipe(void *ptr, uint64_t generation, int policy) {
    if (!ptr || (policy != VRAM_WIPE_OFF && policy != VRAM_WIPE_ON_FREE)) return invalid();
    if (!vram_registry_set_wipe((uintptr_t)ptr, generation, policy == VRAM_WIPE_ON_FREE)) {
        vram_set_last_error(VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER, VRAM_OP_NONE, 0);
        return VRAM_ERR_UNKNOWN_POINTER;
    }
    return VRAM_SUCCESS;
}

/* Overwrite an allocation about to be freed with zeros: an operation of its own, timed and
 * counted as "wipe". */
static int wipe(const vram_backend *b, int device, uintptr_t address, size_t bytes,
                int *driver_error) {
    call w = begin(VRAM_OP_WIPE);
    w.device = device;
    int error = b->wipe(device, address, bytes);
    *driver_error = error;
    if (error != 0) return finish(&w, driver_failure(&w, b, device, error, VRAM_ERR_DRIVER));
    w.bytes = bytes;
    return finish(&w, VRAM_SUCCESS);
}

/* The allocation proper, between the backend's choice and its registry entry; in stream
 * order on *stream when stream is not NULL. */
static int allocate(call *c, void **ptr, size_t bytes, uint32_t tag, uint64_t *generation,
                    const uintptr_t *stream) {
    const vram_backend *b;
    int status = ready(c, &b);
    if (status == VRAM_SUCCESS && stream) status = vram_stream_check(c, b, c->device, *stream);
    if (status != VRAM_SUCCESS) return status;
    vram_entry *node = vram_registry_node_new(); /* before the driver: recording cannot fail */
    if (!node) return VRAM_ERR_ALLOCATION_FAILED;
    uintptr_t address = 0;
    int error = stream ? b->alloc_async(c->device, bytes, *stream, &address)
                       : vram_pool_alloc(b, c->device, bytes, &address); /* or the pool */
    if (stream) vram_registry_node_stream_ordered(node);
    if (error != 0 || address == 0) {
        vram_registry_node_delete(node);
        return error ? driver_failure(c, b, c->device, error, VRAM_ERR_ALLOCATION_FAILED)
                     : VRAM_ERR_ALLOCATION_FAILED;
    }
    bool wipe = __atomic_load_n(&g_wipe_policy, __ATOMIC_RELAXED) == VRAM_WIPE_ON_FREE;
    uint64_t g = vram_registry_insert(node, b, address, bytes, c->device, tag, wipe, c->start_ns);
    *ptr = (void *)address;
    if (generation) *generation = g;
    c->bytes = bytes;
    return VRAM_SUCCESS;
}

static int malloc_on(void **ptr, size_t bytes, uint32_t tag, uint64_t *generation,
                     const uintptr_t *stream) {
    call c = begin(VRAM_OP_MALLOC);
    if (!ptr) return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    *ptr = NULL;
    if (generation) *generation = 0;
    if (bytes == 0) return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE);
    if (bytes > SIZE_MAX - (VRAM_ALIGNMENT - 1))
        return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_SIZE_OVERFLOW);
    if (tag >= VRAM_MAX_TAGS)
        return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_TAG);
    vram_runtime_allocation_begin();
    int status = allocate(&c, ptr, bytes, tag, generation, stream);
    vram_runtime_allocation_end();
    return finish(&c, status);
}

int vram_malloc_ex(void **ptr, size_t bytes, uint32_t tag, uint64_t *generation) {
    return malloc_on(ptr, bytes, tag, generation, NULL);
}

int vram_malloc(void **ptr, size_t bytes) { return vram_malloc_ex(ptr, bytes, 0, NULL); }

int vram_malloc_async(void **ptr, size_t bytes, uint32_t tag, uint64_t *generation,
                      uintptr_t stream) {
    return malloc_on(ptr, bytes, tag, generation, &stream);
}

/* Release an allocation now: zeroed first when wipe_first (memory that still holds its bytes
 * is never freed), to the driver or into the pool's cache. */
static int release_now(call *c, const vram_backend *b, uintptr_t address, size_t bytes,
                       bool wipe_first) {
    if (wipe_first) {
        int status = wipe(b, c->device, address, bytes, &c->driver_error);
        if (status != VRAM_SUCCESS) return status;
    }
    int error = vram_pool_release(b, c->device, address, bytes);
    return error ? driver_failure(c, b, c->device, error, VRAM_ERR_DRIVER) : VRAM_SUCCESS;
}

/* Release an allocation in stream order: stream-ordered memory to the driver on the stream
 * (zeroed there first when wipe); any other (the pool's blocks, cuMemAlloc's) after the
 * stream's earlier work, as vram_free releases it. */
static int release_on(call *c, const vram_backend *b, vram_entry *e, uintptr_t address,
                      size_t bytes, bool wipe_first, uintptr_t stream) {
    int status = vram_stream_check(c, b, c->device, stream);
    if (status != VRAM_SUCCESS) return status;
    if (vram_entry_stream_ordered(e)) {
        uint64_t start = vram_now_ns();
        int error = b->release_async(c->device, address, bytes, wipe_first, stream);
        if (error) return driver_failure(c, b, c->device, error, VRAM_ERR_DRIVER);
        if (wipe_first) /* the zeroing, enqueued with the free: counted, timed to enqueue */
            vram_stats_record(c->device, VRAM_OP_WIPE, VRAM_SUCCESS, VRAM_REASON_NONE, bytes,
                              vram_now_ns() - start);
        return VRAM_SUCCESS;
    }
    int error = b->stream_sync(c->device, stream);
    if (error) return driver_failure(c, b, c->device, error, VRAM_ERR_DRIVER);
    return release_now(c, b, address, bytes, wipe_first);
}

/* Free (ptr, generation); *released, when not NULL, says whether this call released it (an
 * allocation freed by someone else meanwhile succeeds without). */
static int free_generation(void *ptr, uint64_t generation, const uintptr_t *stream,
                           bool *released) {
    call c = begin(VRAM_OP_FREE);
    if (released) *released = false;
    if (!ptr) return finish(&c, VRAM_SUCCESS);
    vram_entry *e = NULL;
    vram_free_begin begun = vram_registry_free_begin((uintptr_t)ptr, generation, &e);
    /* An allocation is freed through the backend that made it, usable by construction; a
     * refusal is a "no device" where there is none to have made the pointer. */
    if (begun != VRAM_FREE_PROCEED && begun != VRAM_FREE_ALREADY &&
        !vram_runtime_usable(vram_runtime_backend()))
        return finish(&c, VRAM_ERR_NO_DEVICE);
    switch (begun) {
    case VRAM_FREE_ALREADY:
        return finish(&c, VRAM_SUCCESS);
    case VRAM_FREE_UNKNOWN:
        return refuse(&c, VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER);
    case VRAM_FREE_INTERIOR:
        return refuse(&c, VRAM_ERR_INTERIOR_POINTER, VRAM_REASON_INTERIOR_POINTER);
    case VRAM_FREE_BAD_GENERATION:
        return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_GENERATION);
    case VRAM_FREE_PROCEED:
        break;
    }
    const vram_backend *b;
    uintptr_t address;
    size_t bytes;
    bool wipe_first;
    vram_entry_describe(e, &b, &c.device, &address, &bytes, &wipe_first);
    if (vram_runtime_device_failed(c.device)) {
        /* The context is dead and its memory with it: drop the entry, call nothing. */
        vram_registry_free_finish(e, 2);
        return finish(&c, VRAM_ERR_DEVICE_FAILED);
    }
    int status = stream ? release_on(&c, b, e, address, bytes, wipe_first, *stream)
                        : release_now(&c, b, address, bytes, wipe_first);
    if (status != VRAM_SUCCESS) { /* still live, unless its device failed */
        vram_registry_free_finish(e, status == VRAM_ERR_DEVICE_FAILED ? 2 : 1);
        return finish(&c, status);
    }
    vram_registry_free_finish(e, 0);
    if (released) *released = true;
    c.bytes = bytes;
    return finish(&c, VRAM_SUCCESS);
}

int vram_free(void *ptr) { return free_generation(ptr, 0, NULL, NULL); }

int vram_free_ex(void *ptr, uint64_t generation) {
    if (generation == 0) {
        call c = begin(VRAM_OP_FREE);
        return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_GENERATION);
    }
    return free_generation(ptr, generation, NULL, NULL);
}

int vram_free_async(void *ptr, uint64_t generation, uintptr_t stream) {
    if (generation == 0) {
        call c = begin(VRAM_OP_FREE);
        return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_GENERATION);
    }
    return free_generation(ptr, generation, &stream, NULL);
}

int vram_pin_range(vram_call *c, uintptr_t address, size_t bytes, vram_entry **e, int *device) {
    switch (vram_registry_pin(address, bytes, e, device)) {
    case VRAM_LOOKUP_LIVE:
        return VRAM_SUCCESS;
    case VRAM_LOOKUP_FREED:
        c->reason = VRAM_REASON_FREED_POINTER;
        return VRAM_ERR_UNKNOWN_POINTER;
    case VRAM_LOOKUP_OUT_OF_BOUNDS:
        c->reason = VRAM_REASON_OUT_OF_BOUNDS;
        return VRAM_ERR_OUT_OF_BOUNDS;
    case VRAM_LOOKUP_UNKNOWN:
        break;
    }
    c->reason = VRAM_REASON_UNKNOWN_POINTER;
    return VRAM_ERR_UNKNOWN_POINTER;
}

int vram_copy_refused(vram_call *c, uintptr_t a, uintptr_t b, size_t bytes, bool overlap) {
    uintptr_t end;
    if (!a || !b) return refuse(c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    if (bytes == 0) return refuse(c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_ZERO_SIZE);
    if (vram_add_overflows(a, bytes, &end) || vram_add_overflows(b, bytes, &end))
        return refuse(c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_RANGE_WRAP);
    /* The driver's device copies are undefined for overlapping ranges. */
    if (overlap && a < b + bytes && b < a + bytes)
        return refuse(c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_OVERLAP);
    if (!vram_runtime_usable(vram_runtime_backend())) return finish(c, VRAM_ERR_NO_DEVICE);
    return VRAM_SUCCESS;
}

/* Both copies: device_address is the device side, host the host side. */
static int copy(vram_op op, uintptr_t device_address, void *host, size_t bytes) {
    call c = begin(op);
    int status = vram_copy_refused(&c, device_address, (uintptr_t)host, bytes, false);
    if (status != VRAM_SUCCESS) return status;
    vram_entry *e = NULL;
    status = vram_pin_range(&c, device_address, bytes, &e, &c.device);
    if (status != VRAM_SUCCESS) return finish(&c, status);
    const vram_backend *b;
    uintptr_t base;
    size_t size;
    bool wipe_on_free;
    vram_entry_describe(e, &b, &c.device, &base, &size, &wipe_on_free);
    status = VRAM_ERR_DEVICE_FAILED;
    if (!vram_runtime_device_failed(c.device)) {
        int error = op == VRAM_OP_MEMCPY_H2D
                        ? b->copy_h2d(c.device, device_address, host, bytes, wipe_on_free)
                        : b->copy_d2h(c.device, host, device_address, bytes, wipe_on_free);
        status = error ? driver_failure(&c, b, c.device, error, VRAM_ERR_COPY_FAILED)
                       : VRAM_SUCCESS;
    }
    vram_registry_unpin(e);
    c.bytes = bytes;
    return finish(&c, status);
}

int vram_memcpy_h2d(void *dst, const void *src, size_t bytes) {
    /* The host side is only read; the cast drops const for the shared copy path. */
    return copy(VRAM_OP_MEMCPY_H2D, (uintptr_t)dst, (void *)(uintptr_t)src, bytes);
}

int vram_memcpy_d2h(void *dst, const void *src, size_t bytes) {
    return copy(VRAM_OP_MEMCPY_D2H, (uintptr_t)src, dst, bytes);
}

int vram_get_info(size_t *free_bytes, size_t *total_bytes) {
    call c = begin(VRAM_OP_GET_INFO);
    if (free_bytes) *free_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    if (!free_bytes || !total_bytes)
        return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    const vram_backend *b;
    int status = ready(&c, &b);
    if (status != VRAM_SUCCESS) return finish(&c, status);
    size_t f = 0, t = 0;
    int error = b->mem_info(c.device, &f, &t);
    if (error != 0) return finish(&c, driver_failure(&c, b, c.device, error, VRAM_ERR_DRIVER));
    *free_bytes = f;
    *total_bytes = t;
    return finish(&c, VRAM_SUCCESS);
}

/* ---- Copies between allocations and migration between devices ---- */

#define STAGED_CHUNK ((size_t)64 << 20) /* host bounce buffer for copies without peer access */

/* Between devices without peer access: through a host bounce buffer, chunk by chunk. A
 * failure latches (if sticky) the device whose call failed. */
static int copy_staged(call *c, const vram_backend *b, int dst_device, uintptr_t dst,
                       int src_device, uintptr_t src, size_t bytes, bool clear) {
    size_t chunk = bytes < STAGED_CHUNK ? bytes : STAGED_CHUNK;
    unsigned char *bounce = malloc(chunk);
    if (!bounce) return VRAM_ERR_COPY_FAILED;
    int status = VRAM_SUCCESS;
    for (size_t done = 0; done < bytes && status == VRAM_SUCCESS; done += chunk) {
        size_t n = bytes - done < chunk ? bytes - done : chunk;
        int error = b->copy_d2h(src_device, bounce, src + done, n, clear);
        if (error)
            status = driver_failure(c, b, src_device, error, VRAM_ERR_COPY_FAILED);
        else if ((error = b->copy_h2d(dst_device, dst + done, bounce, n, clear)) != 0)
            status = driver_failure(c, b, dst_device, error, VRAM_ERR_COPY_FAILED);
    }
    if (clear) explicit_bzero(bounce, chunk); /* it held bytes that are to be wiped */
    free(bounce);
    return status;
}

int vram_copy_path_of(const vram_backend *b, int src_device, int dst_device) {
    if (src_device == dst_device) return VRAM_PATH_DEVICE;
    return b->peer_capable(src_device, dst_device) ? VRAM_PATH_PEER : VRAM_PATH_STAGED;
}

/* The call is counted under the path taken, on the destination's device. A sticky failure of
 * a device or peer copy latches the destination's device, whose context ran the copy. */
int vram_copy_between(vram_call *c, vram_entry *dst_entry, uintptr_t dst, vram_entry *src_entry,
                       uintptr_t src, size_t bytes) {
    const vram_backend *b;
    int dst_device, src_device;
    uintptr_t base;
    size_t size;
    bool dst_wipe, src_wipe;
    vram_entry_describe(dst_entry, &b, &dst_device, &base, &size, &dst_wipe);
    vram_entry_describe(src_entry, &b, &src_device, &base, &size, &src_wipe);
    c->device = dst_device;
    if (vram_runtime_device_failed(src_device) || vram_runtime_device_failed(dst_device))
        return VRAM_ERR_DEVICE_FAILED;
    int error;
    switch (vram_copy_path_of(b, src_device, dst_device)) {
    case VRAM_PATH_DEVICE:
        c->op = VRAM_OP_MEMCPY_D2D;
        error = b->copy_d2d(dst_device, dst, src, bytes);
        break;
    case VRAM_PATH_PEER:
        c->op = VRAM_OP_MEMCPY_P2P;
        error = b->copy_peer(dst_device, dst, src_device, src, bytes);
        break;
    default:
        c->op = VRAM_OP_MEMCPY_STAGED;
        return copy_staged(c, b, dst_device, dst, src_device, src, bytes, dst_wipe || src_wipe);
    }
    return error ? driver_failure(c, b, dst_device, error, VRAM_ERR_COPY_FAILED) : VRAM_SUCCESS;
}

int vram_memcpy_d2d(void *dst, const void *src, size_t bytes) {
    call c = begin(VRAM_OP_MEMCPY_D2D);
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    int status = vram_copy_refused(&c, d, s, bytes, true);
    if (status != VRAM_SUCCESS) return status;
    vram_entry *src_entry = NULL, *dst_entry = NULL;
    status = vram_pin_range(&c, s, bytes, &src_entry, &c.device);
    if (status != VRAM_SUCCESS) return finish(&c, status);
    status = vram_pin_range(&c, d, bytes, &dst_entry, &c.device);
    if (status == VRAM_SUCCESS) {
        status = vram_copy_between(&c, dst_entry, d, src_entry, s, bytes);
        vram_registry_unpin(dst_entry);
    }
    vram_registry_unpin(src_entry);
    c.bytes = bytes;
    return finish(&c, status);
}

int vram_copy_path_get(int src_device, int dst_device, int *path) {
    if (!path) return invalid();
    const vram_backend *b = vram_runtime_backend();
    if (!vram_runtime_usable(b)) {
        vram_set_last_error(VRAM_ERR_NO_DEVICE, VRAM_REASON_NONE, VRAM_OP_NONE, 0);
        return VRAM_ERR_NO_DEVICE;
    }
    int count = b->device_count();
    if (src_device < 0 || src_device >= count || dst_device < 0 || dst_device >= count) {
        vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE, VRAM_OP_NONE,
                            0);
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    *path = vram_copy_path_of(b, src_device, dst_device);
    return VRAM_SUCCESS;
}

/* The new allocation of a migration: counted as a malloc of its own, on the target device. */
static int allocate_on(int device, size_t bytes, uint32_t tag, bool wipe, uintptr_t *address,
                       uint64_t *generation, int *driver_error) {
    call a = begin(VRAM_OP_MALLOC);
    a.device = device;
    void *p = NULL;
    vram_runtime_allocation_begin();
    int status = allocate(&a, &p, bytes, tag, generation, NULL);
    vram_runtime_allocation_end();
    *driver_error = a.driver_error;
    finish(&a, status);
    if (status != VRAM_SUCCESS) return status;
    *address = (uintptr_t)p;
    vram_registry_set_wipe(*address, *generation, wipe); /* carried over from the source */
    return VRAM_SUCCESS;
}

int vram_migrate(void *ptr, uint64_t generation, int device, void **new_ptr,
                 uint64_t *new_generation) {
    call c = begin(VRAM_OP_MIGRATE);
    if (new_ptr) *new_ptr = NULL;
    if (new_generation) *new_generation = 0;
    if (!ptr || !new_ptr) return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    if (generation == 0)
        return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_GENERATION);
    const vram_backend *b = vram_runtime_backend();
    if (!vram_runtime_usable(b)) return finish(&c, VRAM_ERR_NO_DEVICE);
    if (device < 0 || device >= b->device_count())
        return refuse(&c, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE);
    c.device = device; /* counted on the target device */
    vram_entry *src_entry = NULL;
    if (!vram_registry_pin_allocation((uintptr_t)ptr, generation, &src_entry))
        return refuse(&c, VRAM_ERR_UNKNOWN_POINTER, VRAM_REASON_UNKNOWN_POINTER);
    int src_device;
    uintptr_t src;
    size_t bytes;
    bool wipe_flag;
    uint64_t unused;
    uint32_t tag;
    vram_entry_describe(src_entry, &b, &src_device, &src, &bytes, &wipe_flag);
    vram_entry_identity(src_entry, &unused, &tag);
    if (src_device == device) { /* already there */
        vram_registry_unpin(src_entry);
        *new_ptr = ptr;
        if (new_generation) *new_generation = generation;
        return finish(&c, VRAM_SUCCESS);
    }
    uintptr_t dst = 0;
    uint64_t dst_generation = 0;
    int status = vram_runtime_device_failed(src_device)
                     ? VRAM_ERR_DEVICE_FAILED
                     : allocate_on(device, bytes, tag, wipe_flag, &dst, &dst_generation,
                                   &c.driver_error);
    if (status == VRAM_SUCCESS) {
        vram_entry *dst_entry = NULL;
        call k = begin(VRAM_OP_MEMCPY_P2P);
        status = vram_registry_pin_allocation(dst, dst_generation, &dst_entry)
                     ? vram_copy_between(&k, dst_entry, dst, src_entry, src, bytes)
                     : VRAM_ERR_UNKNOWN_POINTER; /* freed by someone else meanwhile */
        if (dst_entry) vram_registry_unpin(dst_entry);
        k.bytes = bytes;
        finish(&k, status);
        c.driver_error = k.driver_error;
    }
    vram_registry_unpin(src_entry);
    /* The source goes only once its bytes are safe; on any failure the copy goes instead. A
     * source freed by someone else meanwhile (another migration of it) fails this one. */
    if (status == VRAM_SUCCESS) {
        bool released;
        status = free_generation(ptr, generation, NULL, &released);
        if (status == VRAM_SUCCESS && !released) {
            c.reason = VRAM_REASON_FREED_POINTER;
            status = VRAM_ERR_UNKNOWN_POINTER;
        }
    }
    if (status != VRAM_SUCCESS) {
        if (dst) free_generation((void *)dst, dst_generation, NULL, NULL);
        return finish(&c, status);
    }
    *new_ptr = (void *)dst;
    if (new_generation) *new_generation = dst_generation;
    c.bytes = bytes;
    return finish(&c, VRAM_SUCCESS);
}

int vram_stats_get(int device, vram_stats *out, size_t out_size) {
    if (!out || out_size < sizeof *out || device < -1 || device >= VRAM_MAX_DEVICES)
        return invalid();
    return vram_stats_copy(device, out);
}

int vram_registry_stats_get(int device, vram_registry_stats *out, size_t out_size) {
    if (!out || out_size < sizeof *out || device < -1 || device >= VRAM_MAX_DEVICES)
        return invalid();
    return vram_registry_stats_copy(device, out);
}

int vram_registry_list(int device, vram_alloc_record *out, size_t capacity, size_t *count) {
    if (!count || (!out && capacity) || device < -1 || device >= VRAM_MAX_DEVICES)
        return invalid();
    return vram_registry_list_copy(device, out, capacity, count);
}
