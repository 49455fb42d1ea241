/* The CUDA backend's work on caller streams: stream checks, copies between two timing events
 * (a fence), stream-ordered allocation. Everything runs in the device's primary context; the
 * caller's current context is left as found. */
#include <pthread.h>
#include <stdlib.h>

#include "cuda_driver.h"

/* Two events around one copy: the copy is complete when `end` is, and took the time between
 * them. Recycled per device (creating events costs microseconds). */
typedef struct fence {
    CUevent start, end;
    int device;
    struct fence *next; /* in its device's cache */
} fence;

#define FENCES_KEPT 64 /* per device: more copies in flight than this make fresh events */

static pthread_mutex_t g_fence_lock = PTHREAD_MUTEX_INITIALIZER;
static fence *g_fences[VRAM_MAX_DEVICES];
static unsigned g_fences_kept[VRAM_MAX_DEVICES];

/* The handles that name a default stream of the current context: NULL, CU_STREAM_LEGACY and
 * CU_STREAM_PER_THREAD. */
static bool is_default_stream(uintptr_t stream) { return stream <= 2; }

int vram_cuda_stream_check(int device, uintptr_t stream) {
    if (is_default_stream(stream)) return CUDA_SUCCESS; /* the device's, once it is current */
    CUcontext own, of_stream = NULL;
    CUresult r = vram_cuda_primary_context(device, &own);
    if (r == CUDA_SUCCESS) r = vram_cu.stream_get_ctx((CUstream)stream, &of_stream);
    if (r != CUDA_SUCCESS) return (int)r;
    return of_stream == own ? CUDA_SUCCESS : VRAM_STREAM_FOREIGN;
}

int vram_cuda_stream_sync(int device, uintptr_t stream) {
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.stream_synchronize((CUstream)stream);
    vram_cuda_leave(pushed);
    return (int)r;
}

/* A fence of the device, from its cache or made in its context (current). */
static CUresult take_fence(int device, fence **out) {
    pthread_mutex_lock(&g_fence_lock);
    fence *f = g_fences[device];
    if (f) {
        g_fences[device] = f->next;
        g_fences_kept[device]--;
    }
    pthread_mutex_unlock(&g_fence_lock);
    if (!f) {
        f = calloc(1, sizeof *f);
        if (!f) return CUDA_ERROR_OUT_OF_MEMORY;
        CUresult r = vram_cu.event_create(&f->start, CU_EVENT_DEFAULT);
        if (r == CUDA_SUCCESS) r = vram_cu.event_create(&f->end, CU_EVENT_DEFAULT);
        if (r != CUDA_SUCCESS) {
            if (f->start) vram_cu.event_destroy(f->start);
            free(f);
            return r;
        }
        f->device = device;
    }
    *out = f;
    return CUDA_SUCCESS;
}

void vram_cuda_fence_release(void *p) {
    fence *f = p;
    if (!f) return;
    pthread_mutex_lock(&g_fence_lock);
    bool keep = g_fences_kept[f->device] < FENCES_KEPT;
    if (keep) {
        f->next = g_fences[f->device];
        g_fences[f->device] = f;
        g_fences_kept[f->device]++;
    }
    pthread_mutex_unlock(&g_fence_lock);
    if (keep) return;
    bool pushed;
    if (vram_cuda_enter(f->device, &pushed) == CUDA_SUCCESS) { /* else leaked with the context */
        vram_cu.event_destroy(f->start);
        vram_cu.event_destroy(f->end);
    }
    vram_cuda_leave(pushed);
    free(f);
}

static CUresult enqueue_copy(vram_async_kind kind, int device, uintptr_t dst, uintptr_t src,
                             int src_device, size_t bytes, CUstream s) {
    switch (kind) {
    case VRAM_ASYNC_H2D:
        return vram_cu.memcpy_htod_async((CUdeviceptr)dst, (const void *)src, bytes, s);
    case VRAM_ASYNC_D2H:
        return vram_cu.memcpy_dtoh_async((void *)dst, (CUdeviceptr)src, bytes, s);
    case VRAM_ASYNC_D2D:
        return vram_cu.memcpy_dtod_async((CUdeviceptr)dst, (CUdeviceptr)src, bytes, s);
    case VRAM_ASYNC_PEER: {
        CUcontext dst_ctx, src_ctx;
        CUresult r = vram_cuda_primary_context(device, &dst_ctx);
        if (r == CUDA_SUCCESS) r = vram_cuda_primary_context(src_device, &src_ctx);
        if (r != CUDA_SUCCESS) return r;
        return vram_cu.memcpy_peer_async((CUdeviceptr)dst, dst_ctx, (CUdeviceptr)src, src_ctx,
                                         bytes, s);
    }
    }
    return CUDA_ERROR_INVALID_VALUE;
}

int vram_cuda_copy_async(int device, vram_async_kind kind, uintptr_t dst, uintptr_t src,
                         int src_device, size_t bytes, uintptr_t stream, void **out) {
    *out = NULL;
    bool pushed;
    CUstream s = (CUstream)stream;
    fence *f = NULL;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = take_fence(device, &f);
    if (r == CUDA_SUCCESS) r = vram_cu.event_record(f->start, s);
    bool lost = false;
    if (r == CUDA_SUCCESS) {
        r = enqueue_copy(kind, device, dst, src, src_device, bytes, s);
        if (r == CUDA_SUCCESS) r = vram_cu.event_record(f->end, s);
        /* Without its end mark nothing could tell when the copy is done: wait for it here, so
         * that no copy outlives the holds on its memory (the context, if the stream fails). */
        lost = r != CUDA_SUCCESS && vram_cu.stream_synchronize(s) != CUDA_SUCCESS &&
               vram_cu.ctx_synchronize() != CUDA_SUCCESS;
    }
    vram_cuda_leave(pushed);
    if (r != CUDA_SUCCESS) {
        vram_cuda_fence_release(f);
        return lost ? VRAM_FENCE_LOST : (int)r;
    }
    *out = f;
    return CUDA_SUCCESS;
}

int vram_cuda_fence_wait(void *p, bool block, uint64_t *elapsed_ns) {
    fence *f = p;
    *elapsed_ns = 0;
    bool pushed;
    CUresult r = vram_cuda_enter(f->device, &pushed);
    if (r == CUDA_SUCCESS)
        r = block ? vram_cu.event_synchronize(f->end) : vram_cu.event_query(f->end);
    float ms = 0;
    if (r == CUDA_SUCCESS && vram_cu.event_elapsed_time(&ms, f->start, f->end) == CUDA_SUCCESS &&
        ms > 0)
        *elapsed_ns = (uint64_t)((double)ms * 1e6);
    /* The event failed: the copy may still run. Waiting for the whole context tells; if that
     * fails too, nobody can. */
    bool lost = r != CUDA_SUCCESS && r != CUDA_ERROR_NOT_READY &&
                vram_cu.ctx_synchronize() != CUDA_SUCCESS;
    vram_cuda_leave(pushed);
    if (lost) return VRAM_FENCE_LOST;
    return r == CUDA_ERROR_NOT_READY ? VRAM_FENCE_PENDING : (int)r;
}

int vram_cuda_alloc_async(int device, size_t bytes, uintptr_t stream, uintptr_t *out) {
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) {
        CUdeviceptr p = 0;
        r = vram_cu.mem_alloc_async(&p, bytes, (CUstream)stream);
        if (r == CUDA_SUCCESS) *out = (uintptr_t)p;
    }
    vram_cuda_leave(pushed);
    return (int)r;
}

int vram_cuda_release_async(int device, uintptr_t address, size_t bytes, bool wipe,
                            uintptr_t stream) {
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS && wipe)
        r = vram_cu.memset_d8_async((CUdeviceptr)address, 0, bytes, (CUstream)stream);
    if (r == CUDA_SUCCESS) r = vram_cu.mem_free_async((CUdeviceptr)address, (CUstream)stream);
    vram_cuda_leave(pushed);
    return (int)r;
}
