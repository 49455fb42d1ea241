/* The host backend: device memory emulated in host RAM, so that validation, the registry and
 * timing run, unchanged, where there is no GPU. Chosen only explicitly (VRAMOBS_BACKEND=host
 * or vram_select_backend("host")). Its codes mirror CUDA's where one exists. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum {
    HOST_OK = 0,
    HOST_OUT_OF_MEMORY = 2,
    HOST_INVALID_DEVICE = 101
};

#define HOST_DEFAULT_CAPACITY (UINT64_C(8) << 30)

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static bool g_ready;
static char g_diagnostic[160];
static int g_devices = 1;
static uint64_t g_capacity = HOST_DEFAULT_CAPACITY;
static uint64_t g_used[VRAM_MAX_DEVICES]; /* atomic */
static bool g_peer = true;

/* Parse an unsigned decimal environment variable; false (with a diagnostic) if malformed. */
static bool env_u64(const char *name, uint64_t min, uint64_t max, uint64_t *value) {
    const char *text = getenv(name);
    if (!text || !*text) return true;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end || text[0] == '-' || v < min || v > max) {
        snprintf(g_diagnostic, sizeof g_diagnostic, "%s='%.32s' is not a number in [%llu, %llu]",
                 name, text, (unsigned long long)min, (unsigned long long)max);
        return false;
    }
    *value = v;
    return true;
}

static void host_setup(void) {
    uint64_t devices = 1, peer = 1;
    g_ready = env_u64("VRAMOBS_HOST_DEVICES", 1, VRAM_MAX_DEVICES, &devices) &&
              env_u64("VRAMOBS_HOST_CAPACITY", 1, UINT64_MAX >> 1, &g_capacity) &&
              env_u64("VRAMOBS_HOST_PEER", 0, 1, &peer);
    g_devices = (int)devices;
    g_peer = peer == 1;
}

static bool host_init(void) {
    pthread_once(&g_once, host_setup);
    return g_ready;
}

static const char *host_diagnostic(void) { return g_diagnostic; }

static int host_device_count(void) { return g_devices; }

static size_t host_footprint(size_t bytes) { /* bytes <= SIZE_MAX - 255: checked before */
    return (bytes + (VRAM_ALIGNMENT - 1)) & ~(size_t)(VRAM_ALIGNMENT - 1);
}

static int host_alloc(int device, size_t bytes, uintptr_t *out) {
    if (device < 0 || device >= g_devices) return HOST_INVALID_DEVICE;
    uint64_t need = host_footprint(bytes);
    /* Reserve capacity first, so concurrent allocations cannot overshoot it. */
    uint64_t used = __atomic_load_n(&g_used[device], __ATOMIC_RELAXED);
    do {
        if (need > g_capacity - used) return HOST_OUT_OF_MEMORY;
    } while (!__atomic_compare_exchange_n(&g_used[device], &used, used + need, true,
                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    void *p = aligned_alloc(VRAM_ALIGNMENT, (size_t)need);
    if (!p) {
        __atomic_fetch_sub(&g_used[device], need, __ATOMIC_RELAXED);
        return HOST_OUT_OF_MEMORY;
    }
    *out = (uintptr_t)p;
    return HOST_OK;
}

static int host_release(int device, uintptr_t address, size_t bytes) {
    if (device < 0 || device >= g_devices) return HOST_INVALID_DEVICE;
    free((void *)address);
    __atomic_fetch_sub(&g_used[device], (uint64_t)host_footprint(bytes), __ATOMIC_RELAXED);
    return HOST_OK;
}

/* memmove: with emulated device memory in host RAM, a caller may pass overlapping ranges. */
static int host_copy_h2d(int device, uintptr_t dst, const void *src, size_t bytes,
                         bool sensitive) {
    (void)device, (void)sensitive; /* no intermediate copy to clear */
    memmove((void *)dst, src, bytes);
    return HOST_OK;
}

static int host_copy_d2h(int device, void *dst, uintptr_t src, size_t bytes,
                         bool sensitive) {
    (void)device, (void)sensitive;
    memmove(dst, (const void *)src, bytes);
    return HOST_OK;
}

static int host_copy_d2d(int device, uintptr_t dst, uintptr_t src, size_t bytes) {
    (void)device;
    memmove((void *)dst, (const void *)src, bytes);
    return HOST_OK;
}

/* Emulated devices reach each other peer to peer unless VRAMOBS_HOST_PEER=0, which makes
 * every copy between them go through host memory, as on GPUs without peer access. */
static bool host_peer_capable(int src_device, int dst_device) {
    return src_device != dst_device && g_peer;
}

static int host_copy_peer(int dst_device, uintptr_t dst, int src_device, uintptr_t src,
                          size_t bytes) {
    (void)dst_device;
    (void)src_device;
    memmove((void *)dst, (const void *)src, bytes);
    return HOST_OK;
}

/* Pinned host memory is plain page-aligned memory here; registration locks nothing (pinned.c
 * keeps the record). */
static int host_pinned_alloc(size_t bytes, void **out) {
    *out = aligned_alloc(4096, bytes); /* bytes: a whole number of pages (pinned.c) */
    if (!*out) return HOST_OUT_OF_MEMORY;
    memset(*out, 0, bytes); /* as the fresh pages the driver locks: no heap leftovers */
    return HOST_OK;
}

static int host_pinned_free(void *ptr) {
    free(ptr);
    return HOST_OK;
}

static int host_register(void *ptr, size_t bytes) {
    (void)ptr, (void)bytes;
    return HOST_OK;
}

static int host_unregister(void *ptr) {
    (void)ptr;
    return HOST_OK;
}

static int host_wipe(int device, uintptr_t address, size_t bytes) {
    (void)device;
    explicit_bzero((void *)address, bytes); /* a clear the compiler may not drop */
    return HOST_OK;
}

/* No streams here: every stream is accepted, and async work is done before returning. */
static int host_stream_check(int device, uintptr_t stream) {
    (void)device, (void)stream;
    return HOST_OK;
}

static int host_stream_sync(int device, uintptr_t stream) { return host_stream_check(device, stream); }

static int host_copy_async(int device, vram_async_kind kind, uintptr_t dst, uintptr_t src,
                           int src_device, size_t bytes, uintptr_t stream, void **fence) {
    (void)stream;
    *fence = NULL;
    switch (kind) {
    case VRAM_ASYNC_H2D: return host_copy_h2d(device, dst, (const void *)src, bytes, false);
    case VRAM_ASYNC_D2H: return host_copy_d2h(device, (void *)dst, src, bytes, false);
    case VRAM_ASYNC_D2D: return host_copy_d2d(device, dst, src, bytes);
    case VRAM_ASYNC_PEER: return host_copy_peer(device, dst, src_device, src, bytes);
    }
    return HOST_INVALID_DEVICE;
}

static int host_fence_wait(void *fence, bool block, uint64_t *elapsed_ns) {
    (void)fence, (void)block;
    *elapsed_ns = 0;
    return HOST_OK;
}

static void host_fence_release(void *fence) { (void)fence; }

static int host_alloc_async(int device, size_t bytes, uintptr_t stream, uintptr_t *out) {
    (void)stream;
    return host_alloc(device, bytes, out);
}

static int host_release_async(int device, uintptr_t address, size_t bytes, bool wipe,
                              uintptr_t stream) {
    (void)stream;
    if (wipe) host_wipe(device, address, bytes);
    return host_release(device, address, bytes);
}

static int host_mem_info(int device, size_t *free_bytes, size_t *total_bytes) {
    if (device < 0 || device >= g_devices) return HOST_INVALID_DEVICE;
    uint64_t used = __atomic_load_n(&g_used[device], __ATOMIC_RELAXED);
    *free_bytes = (size_t)(g_capacity - used);
    *total_bytes = (size_t)g_capacity;
    return HOST_OK;
}

static int host_props(int device, vram_device_props *out) {
    snprintf(out->name, sizeof out->name, "vramobs host emulation");
    snprintf(out->uuid, sizeof out->uuid, "HOST-00000000-0000-0000-0000-%012d", device);
    snprintf(out->pci_bus_id, sizeof out->pci_bus_id, "host:%02d", device);
    out->total_bytes = g_capacity;
    return VRAM_SUCCESS;
}

static vram_fault host_classify(int error) {
    switch (error) {
    case HOST_OK: return VRAM_FAULT_NONE;
    case HOST_OUT_OF_MEMORY: return VRAM_FAULT_OUT_OF_MEMORY;
    case HOST_INVALID_DEVICE: return VRAM_FAULT_NO_DEVICE;
    default: return VRAM_FAULT_OTHER;
    }
}

static const char *host_error_name(int error) {
    switch (error) {
    case HOST_OK: return "HOST_SUCCESS";
    case HOST_OUT_OF_MEMORY: return "HOST_ERROR_OUT_OF_MEMORY";
    case HOST_INVALID_DEVICE: return "HOST_ERROR_INVALID_DEVICE";
    default: return "HOST_ERROR_UNKNOWN";
    }
}

const vram_backend vram_backend_host = {
    .name = "host",
    .init = host_init,
    .diagnostic = host_diagnostic,
    .device_count = host_device_count,
    .alloc = host_alloc,
    .release = host_release,
    .copy_h2d = host_copy_h2d,
    .copy_d2h = host_copy_d2h,
    .mem_info = host_mem_info,
    .wipe = host_wipe,
    .props = host_props,
    .copy_d2d = host_copy_d2d,
    .peer_capable = host_peer_capable,
    .copy_peer = host_copy_peer,
    .host_alloc = host_pinned_alloc,
    .host_free = host_pinned_free,
    .host_register = host_register,
    .host_unregister = host_unregister,
    .stream_check = host_stream_check,
    .stream_sync = host_stream_sync,
    .copy_async = host_copy_async,
    .fence_wait = host_fence_wait,
    .fence_release = host_fence_release,
    .alloc_async = host_alloc_async,
    .release_async = host_release_async,
    .footprint = host_footprint,
    .classify = host_classify,
    .error_name = host_error_name,
};
