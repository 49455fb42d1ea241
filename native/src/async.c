/* Asynchronous copies on caller streams, and their completions.
 *
 * A copy handed to a stream keeps its allocations pinned in the registry, and its page-locked
 * host range held, until its completion is first seen complete: by its caller (query, wait,
 * release) or by a free of what it holds, which waits for it here (a drain) rather than for a
 * caller who may be the freeing thread itself. The copy is counted then, once, with the
 * device's time between the two marks around it on the stream.
 *
 * Completions in flight are listed under one mutex, never held across a driver call: threads
 * wait on a fence together; the first to see it over marks the completion SETTLING while it
 * releases the holds, and the others wait on `settled` for that. A completion is freed when
 * its caller has released it and no drain still looks at it (refs). Lock order: this mutex,
 * then the registry's or the pinned table's (holds are taken while the completion is listed,
 * so a drain always finds what holds an allocation). */
#include <pthread.h>
#include <stdlib.h>

#include "hostmem.h"
#include "internal.h"

typedef enum state { PENDING = 0, SETTLING, DONE } state;

struct vram_completion {
    vram_completion *prev, *next; /* in g_pending until DONE */
    const vram_backend *backend;
    void *fence;
    vram_entry *entries[2]; /* held until DONE; [1] only for copies between allocations */
    const void *host;       /* held page-locked host range, or NULL */
    vram_op op;
    int device; /* where it is counted, and latched on a sticky failure */
    size_t bytes;
    int status; /* once DONE */
    int driver_error;
    state st;
    unsigned refs;    /* the caller's, and one per drain looking at it */
    unsigned waiters; /* threads waiting on its fence: the last one out recycles it */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_settled = PTHREAD_COND_INITIALIZER;
static vram_completion *g_pending;
static vram_async_stats g_stats;

int vram_stream_check(vram_call *c, const vram_backend *b, int device, uintptr_t stream) {
    int error = b->stream_check(device, stream);
    if (error == 0) return VRAM_SUCCESS;
    if (error == VRAM_STREAM_FOREIGN || b->classify(error) == VRAM_FAULT_OTHER) {
        c->driver_error = error == VRAM_STREAM_FOREIGN ? 0 : error;
        c->reason = VRAM_REASON_INVALID_STREAM;
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    return vram_driver_failure(c, b, device, error, VRAM_ERR_DRIVER);
}

static void unlink_pending(vram_completion *c) {
    if (c->prev) c->prev->next = c->next; else g_pending = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Drop a reference; the last one frees the completion (DONE by then). */
static void put(vram_completion *c) {
    pthread_mutex_lock(&g_lock);
    bool last = --c->refs == 0;
    pthread_mutex_unlock(&g_lock);
    if (last) free(c);
}

/* Release what a finished copy held and count it (the fence goes separately). */
static void retire(vram_completion *c, int error, uint64_t elapsed_ns) {
    int status = VRAM_SUCCESS;
    if (error == VRAM_FENCE_LOST) { /* the copy may still run: its device cannot be trusted */
        vram_runtime_latch(c->device);
        status = VRAM_ERR_DEVICE_FAILED;
    } else if (error) {
        c->driver_error = error;
        status = vram_driver_failure(&(vram_call){.op = c->op, .device = c->device}, c->backend,
                                     c->device, error, VRAM_ERR_COPY_FAILED);
    }
    for (int i = 0; i < 2; i++)
        if (c->entries[i]) vram_registry_unpin_async(c->entries[i]);
    if (c->host) vram_pinned_unhold(c->host);
    vram_stats_record(c->device, c->op, status, VRAM_REASON_NONE,
                      status == VRAM_SUCCESS ? c->bytes : 0, elapsed_ns);
    c->status = status;
}

/* Whether c is complete (block: wait until it is); true once it is DONE. Any number of threads
 * may wait on its fence at once (the driver allows it); the first to see the copy over
 * retires it, the others wait for that, and the last one out recycles the fence.
 * *settled_here says whether this call retired it. */
static bool settle(vram_completion *c, bool block, bool *settled_here) {
    *settled_here = false;
    pthread_mutex_lock(&g_lock);
    if (c->st == DONE) {
        pthread_mutex_unlock(&g_lock);
        return true;
    }
    c->waiters++;
    pthread_mutex_unlock(&g_lock);
    uint64_t elapsed_ns = 0;
    int error = c->backend->fence_wait(c->fence, block, &elapsed_ns);
    pthread_mutex_lock(&g_lock);
    if (error != VRAM_FENCE_PENDING && c->st == PENDING) {
        c->st = SETTLING; /* this thread retires it */
        pthread_mutex_unlock(&g_lock);
        retire(c, error, elapsed_ns);
        pthread_mutex_lock(&g_lock);
        c->st = DONE;
        unlink_pending(c);
        g_stats.pending--;
        if (c->status == VRAM_SUCCESS) g_stats.completed_total++; else g_stats.failed_total++;
        pthread_cond_broadcast(&g_settled);
        *settled_here = true;
    }
    /* Over for another thread, which is retiring it: a moment (no driver call). */
    while (error != VRAM_FENCE_PENDING && c->st == SETTLING) pthread_cond_wait(&g_settled, &g_lock);
    bool done = c->st == DONE;
    void *fence = NULL;
    if (--c->waiters == 0 && done) { /* no one waits on the fence any more */
        fence = c->fence;
        c->fence = NULL;
    }
    pthread_mutex_unlock(&g_lock);
    if (fence) c->backend->fence_release(fence);
    return done;
}

/* Wait for every listed completion that holds: the first one found, until none is left. */
static void drain(bool (*holds)(const vram_completion *, uintptr_t, size_t), uintptr_t what,
                  size_t bytes) {
    for (;;) {
        pthread_mutex_lock(&g_lock);
        vram_completion *c = g_pending;
        while (c && !holds(c, what, bytes)) c = c->next;
        if (c) c->refs++;
        pthread_mutex_unlock(&g_lock);
        if (!c) return;
        bool settled_here;
        settle(c, true, &settled_here);
        if (settled_here) {
            pthread_mutex_lock(&g_lock);
            g_stats.drained_total++;
            pthread_mutex_unlock(&g_lock);
        }
        put(c);
    }
}

static bool holds_entry(const vram_completion *c, uintptr_t entry, size_t unused) {
    (void)unused;
    return (uintptr_t)c->entries[0] == entry || (uintptr_t)c->entries[1] == entry;
}

static bool holds_host(const vram_completion *c, uintptr_t start, size_t bytes) {
    return c->host && (uintptr_t)c->host - start < bytes;
}

void vram_async_drain_entry(const vram_entry *entry) { drain(holds_entry, (uintptr_t)entry, 0); }

void vram_async_drain_host(uintptr_t start, size_t bytes) { drain(holds_host, start, bytes); }

/* A completion for a copy done before its call returned. */
static vram_completion *done_now(vram_op op) {
    vram_completion *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->op = op;
    c->st = DONE;
    c->refs = 1;
    pthread_mutex_lock(&g_lock);
    g_stats.immediate_total++;
    pthread_mutex_unlock(&g_lock);
    return c;
}

/* List a copy handed to its stream, and turn its pins into async holds. */
static void list_pending(vram_completion *c) {
    pthread_mutex_lock(&g_lock);
    c->next = g_pending;
    if (g_pending) g_pending->prev = c;
    g_pending = c;
    for (int i = 0; i < 2; i++)
        if (c->entries[i]) vram_registry_hold_async(c->entries[i]);
    g_stats.pending++;
    g_stats.enqueued_total++;
    pthread_mutex_unlock(&g_lock);
}

/* Hand a validated copy to the stream. The completion c has its entries (pinned) and host
 * hold (if any) filled; on success it owns them, on failure they are released here. */
static int start(vram_call *call, vram_completion *c, vram_async_kind kind, uintptr_t dst,
                 uintptr_t src, int src_device, uintptr_t stream, vram_completion **out) {
    void *fence = NULL;
    int error = c->backend->copy_async(c->device, kind, dst, src, src_device, c->bytes, stream,
                                       &fence);
    if (error == 0 && fence) {
        c->fence = fence;
        c->refs = 1;
        list_pending(c);
        *out = c;
        return VRAM_SUCCESS; /* counted when it completes */
    }
    /* Failed, or done before returning (the backend has no streams): counted now. */
    const vram_backend *b = c->backend;
    for (int i = 0; i < 2; i++)
        if (c->entries[i]) vram_registry_unpin(c->entries[i]);
    if (c->host) vram_pinned_unhold(c->host);
    free(c);
    int status = VRAM_SUCCESS;
    if (error == VRAM_FENCE_LOST) { /* it may still run: its device cannot be trusted */
        vram_runtime_latch(call->device);
        status = VRAM_ERR_DEVICE_FAILED;
    } else if (error) {
        status = vram_driver_failure(call, b, call->device, error, VRAM_ERR_COPY_FAILED);
    }
    if (status == VRAM_SUCCESS && !(*out = done_now(call->op))) status = VRAM_ERR_COPY_FAILED;
    return vram_call_finish(call, status);
}

/* A copy between an allocation and host memory, on stream. */
static int host_copy(vram_op op, uintptr_t device_address, void *host, size_t bytes,
                     uintptr_t stream, vram_completion **out) {
    vram_call call = vram_call_begin(op);
    if (!out) return vram_call_refuse(&call, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    *out = NULL;
    int status = vram_copy_refused(&call, device_address, (uintptr_t)host, bytes, false);
    if (status != VRAM_SUCCESS) return status;
    vram_entry *e = NULL;
    status = vram_pin_range(&call, device_address, bytes, &e, &call.device);
    if (status != VRAM_SUCCESS) return vram_call_finish(&call, status);
    const vram_backend *b;
    uintptr_t base;
    size_t size;
    bool sensitive;
    vram_entry_describe(e, &b, &call.device, &base, &size, &sensitive);
    call.bytes = bytes;
    status = vram_runtime_device_failed(call.device)
                 ? VRAM_ERR_DEVICE_FAILED
                 : vram_stream_check(&call, b, call.device, stream);
    vram_completion *c = status == VRAM_SUCCESS ? calloc(1, sizeof *c) : NULL;
    if (status == VRAM_SUCCESS && !c) status = VRAM_ERR_COPY_FAILED;
    if (status != VRAM_SUCCESS) {
        vram_registry_unpin(e);
        return vram_call_finish(&call, status);
    }
    bool h2d = op == VRAM_OP_MEMCPY_H2D;
    if (vram_pinned_hold(host, bytes)) { /* page-locked: truly asynchronous */
        *c = (vram_completion){.backend = b, .entries = {e, NULL}, .host = host, .op = op,
                               .device = call.device, .bytes = bytes};
        return start(&call, c, h2d ? VRAM_ASYNC_H2D : VRAM_ASYNC_D2H,
                     h2d ? device_address : (uintptr_t)host,
                     h2d ? (uintptr_t)host : device_address, call.device, stream, out);
    }
    free(c);
    /* Pageable: after the stream's earlier work, done (staged) before returning. */
    int error = b->stream_sync(call.device, stream);
    if (error == 0)
        error = h2d ? b->copy_h2d(call.device, device_address, host, bytes, sensitive)
                    : b->copy_d2h(call.device, host, device_address, bytes, sensitive);
    vram_registry_unpin(e);
    status = error ? vram_driver_failure(&call, b, call.device, error, VRAM_ERR_COPY_FAILED)
                   : VRAM_SUCCESS;
    if (status == VRAM_SUCCESS && !(*out = done_now(op))) status = VRAM_ERR_COPY_FAILED;
    return vram_call_finish(&call, status);
}

int vram_memcpy_h2d_async(void *dst, const void *src, size_t bytes, uintptr_t stream,
                          vram_completion **completion) {
    return host_copy(VRAM_OP_MEMCPY_H2D, (uintptr_t)dst, (void *)(uintptr_t)src, bytes, stream,
                     completion);
}

int vram_memcpy_d2h_async(void *dst, const void *src, size_t bytes, uintptr_t stream,
                          vram_completion **completion) {
    return host_copy(VRAM_OP_MEMCPY_D2H, (uintptr_t)src, dst, bytes, stream, completion);
}

int vram_memcpy_d2d_async(void *dst, const void *src, size_t bytes, uintptr_t stream,
                          vram_completion **completion) {
    vram_call call = vram_call_begin(VRAM_OP_MEMCPY_D2D);
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (!completion)
        return vram_call_refuse(&call, VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    *completion = NULL;
    int status = vram_copy_refused(&call, d, s, bytes, true);
    if (status != VRAM_SUCCESS) return status;
    vram_entry *src_entry = NULL, *dst_entry = NULL;
    status = vram_pin_range(&call, s, bytes, &src_entry, &call.device);
    if (status != VRAM_SUCCESS) return vram_call_finish(&call, status);
    status = vram_pin_range(&call, d, bytes, &dst_entry, &call.device);
    if (status != VRAM_SUCCESS) {
        vram_registry_unpin(src_entry);
        return vram_call_finish(&call, status);
    }
    const vram_backend *b;
    int src_device, dst_device;
    uintptr_t base;
    size_t size;
    bool wipe;
    vram_entry_describe(src_entry, &b, &src_device, &base, &size, &wipe);
    vram_entry_describe(dst_entry, &b, &dst_device, &base, &size, &wipe);
    call.device = dst_device;
    call.bytes = bytes;
    int path = vram_copy_path_of(b, src_device, dst_device);
    call.op = path == VRAM_PATH_DEVICE ? VRAM_OP_MEMCPY_D2D
              : path == VRAM_PATH_PEER ? VRAM_OP_MEMCPY_P2P
                                       : VRAM_OP_MEMCPY_STAGED;
    if (vram_runtime_device_failed(src_device) || vram_runtime_device_failed(dst_device))
        status = VRAM_ERR_DEVICE_FAILED;
    else
        status = vram_stream_check(&call, b, dst_device, stream);
    vram_completion *c = NULL;
    if (status == VRAM_SUCCESS && path != VRAM_PATH_STAGED) {
        c = calloc(1, sizeof *c);
        if (!c) status = VRAM_ERR_COPY_FAILED;
    }
    if (status != VRAM_SUCCESS) {
        vram_registry_unpin(dst_entry);
        vram_registry_unpin(src_entry);
        return vram_call_finish(&call, status);
    }
    if (c) {
        *c = (vram_completion){.backend = b, .entries = {dst_entry, src_entry}, .op = call.op,
                               .device = dst_device, .bytes = bytes};
        return start(&call, c, path == VRAM_PATH_PEER ? VRAM_ASYNC_PEER : VRAM_ASYNC_D2D, d, s,
                     src_device, stream, completion);
    }
    /* Through host memory: after the stream's earlier work, done before returning. */
    int error = b->stream_sync(dst_device, stream);
    status = error ? vram_driver_failure(&call, b, dst_device, error, VRAM_ERR_COPY_FAILED)
                   : vram_copy_between(&call, dst_entry, d, src_entry, s, bytes);
    vram_registry_unpin(dst_entry);
    vram_registry_unpin(src_entry);
    if (status == VRAM_SUCCESS && !(*completion = done_now(call.op))) status = VRAM_ERR_COPY_FAILED;
    return vram_call_finish(&call, status);
}

int vram_completion_query(vram_completion *completion, int *done) {
    if (!completion || !done) {
        vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, VRAM_OP_NONE, 0);
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    bool settled_here;
    *done = settle(completion, false, &settled_here) ? 1 : 0;
    return VRAM_SUCCESS;
}

int vram_completion_wait(vram_completion *completion) {
    if (!completion) {
        vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, VRAM_OP_NONE, 0);
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    bool settled_here;
    settle(completion, true, &settled_here);
    int status = completion->status; /* immutable once DONE */
    if (status != VRAM_SUCCESS)
        vram_set_last_error(status, VRAM_REASON_NONE, completion->op, completion->driver_error);
    return status;
}

int vram_completion_release(vram_completion *completion) {
    if (!completion) return VRAM_SUCCESS;
    int status = vram_completion_wait(completion);
    put(completion);
    return status;
}

int vram_async_stats_get(vram_async_stats *out, size_t out_size) {
    if (!out || out_size < sizeof *out) {
        vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NONE, VRAM_OP_NONE, 0);
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    pthread_mutex_lock(&g_lock);
    *out = g_stats;
    pthread_mutex_unlock(&g_lock);
    out->struct_size = (uint32_t)sizeof *out;
    out->reserved_ = 0;
    return VRAM_SUCCESS;
}
