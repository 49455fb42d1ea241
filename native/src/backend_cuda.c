/* The CUDA backend: the NVIDIA driver library, loaded at run time (no CUDA toolkit needed to
 * build). Each device is used through its primary context, the one the CUDA runtime, PyTorch
 * and CuPy use, so pointers interoperate. The caller's current context is left as found. */
#include <dlfcn.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"
#include "hostmem.h"
#include "internal.h"

#define DRIVER_DEFAULT "libcuda.so.1"

vram_cuda_driver vram_cu;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static bool g_ready;
static char g_diagnostic[512];
static int g_devices;
static int g_driver_version;
static CUcontext g_ctx[VRAM_MAX_DEVICES]; /* atomic: retained once, kept for the process */
static pthread_mutex_t g_ctx_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *name_of(CUresult r) {
    const char *name = NULL;
    if (vram_cu.get_error_name && vram_cu.get_error_name(r, &name) == CUDA_SUCCESS && name)
        return name;
    return "CUDA_ERROR_UNRECOGNIZED";
}

static bool load_symbols(void *lib, const char *path) {
    static const struct {
        const char *symbol;
        size_t offset;
    } table[] = {
#define VRAM_CUDA_ENTRY_(slot, symbol, type) {#symbol, offsetof(vram_cuda_driver, slot)},
        VRAM_CUDA_FUNCTIONS(VRAM_CUDA_ENTRY_)
#undef VRAM_CUDA_ENTRY_
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        void *fn = dlsym(lib, table[i].symbol);
        if (!fn) {
            snprintf(g_diagnostic, sizeof g_diagnostic, "%s lacks the symbol %s (driver too old?)",
                     path, table[i].symbol);
            return false;
        }
        /* Every slot is a function pointer: POSIX makes dlsym's result convertible to one. */
        memcpy((char *)&vram_cu + table[i].offset, &fn, sizeof fn);
    }
    return true;
}

static void cuda_setup(void) {
    const char *path = getenv("VRAMOBS_CUDA_DRIVER");
    if (!path || !*path) path = DRIVER_DEFAULT;
    /* Kept loaded for the life of the process: contexts and pointers outlive any caller. */
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *why = dlerror();
        snprintf(g_diagnostic, sizeof g_diagnostic,
                 "cannot load the NVIDIA driver library %s: %s (set VRAMOBS_CUDA_DRIVER to its "
                 "path, or VRAMOBS_BACKEND=host to emulate a device)",
                 path, why ? why : "unknown error");
        return;
    }
    if (!load_symbols(lib, path)) return;
    CUresult r = vram_cu.init(0);
    if (r != CUDA_SUCCESS) {
        snprintf(g_diagnostic, sizeof g_diagnostic, "cuInit failed: %s (%d)", name_of(r), (int)r);
        return;
    }
    int count = 0;
    r = vram_cu.device_get_count(&count);
    if (r != CUDA_SUCCESS || count <= 0) {
        snprintf(g_diagnostic, sizeof g_diagnostic, "no CUDA device: cuDeviceGetCount gave %d (%s)",
                 count, r == CUDA_SUCCESS ? "CUDA_SUCCESS" : name_of(r));
        return;
    }
    vram_cu.driver_get_version(&g_driver_version);
    g_devices = count < VRAM_MAX_DEVICES ? count : VRAM_MAX_DEVICES;
    g_ready = true;
}

static bool cuda_init(void) {
    pthread_once(&g_once, cuda_setup);
    return g_ready;
}

static const char *cuda_diagnostic(void) { return g_diagnostic; }

static int cuda_device_count(void) { return g_devices; }

CUresult vram_cuda_primary_context(int device, CUcontext *ctx) {
    *ctx = __atomic_load_n(&g_ctx[device], __ATOMIC_ACQUIRE);
    if (*ctx) return CUDA_SUCCESS;
    pthread_mutex_lock(&g_ctx_lock);
    CUresult r = CUDA_SUCCESS;
    *ctx = g_ctx[device];
    if (!*ctx) {
        CUdevice dev;
        r = vram_cu.device_get(&dev, device);
        if (r == CUDA_SUCCESS) r = vram_cu.primary_ctx_retain(ctx, dev);
        if (r == CUDA_SUCCESS) __atomic_store_n(&g_ctx[device], *ctx, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_ctx_lock);
    return r;
}

/* Make the device's primary context current for one call; *pushed says to pop it after. */
CUresult vram_cuda_enter(int device, bool *pushed) {
    CUcontext ctx, current = NULL;
    *pushed = false;
    CUresult r = vram_cuda_primary_context(device, &ctx);
    if (r != CUDA_SUCCESS) return r;
    r = vram_cu.ctx_get_current(&current);
    if (r != CUDA_SUCCESS || current == ctx) return r;
    r = vram_cu.ctx_push_current(ctx);
    *pushed = r == CUDA_SUCCESS;
    return r;
}

void vram_cuda_leave(bool pushed) {
    CUcontext popped;
    if (pushed) vram_cu.ctx_pop_current(&popped);
}

static int cuda_alloc(int device, size_t bytes, uintptr_t *out) {
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) {
        CUdeviceptr p = 0;
        r = vram_cu.mem_alloc(&p, bytes);
        if (r == CUDA_SUCCESS) *out = (uintptr_t)p;
    }
    vram_cuda_leave(pushed);
    return (int)r;
}

static int cuda_release(int device, uintptr_t address, size_t bytes) {
    (void)bytes;
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.mem_free((CUdeviceptr)address);
    vram_cuda_leave(pushed);
    return (int)r;
}

/* Pageable host memory of staging size goes through the staging engine (staging.c). */
static int cuda_copy_h2d(int device, uintptr_t dst, const void *src, size_t bytes,
                         bool sensitive) {
    int staged;
    if (vram_staging_applies(src, bytes) &&
        vram_staging_copy(VRAM_STAGE_H2D, device, dst, (void *)(uintptr_t)src, bytes, sensitive,
                          &staged))
        return staged;
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.memcpy_htod((CUdeviceptr)dst, src, bytes);
    vram_cuda_leave(pushed);
    return (int)r;
}

static int cuda_copy_d2h(int device, void *dst, uintptr_t src, size_t bytes,
                         bool sensitive) {
    int staged;
    if (vram_staging_applies(dst, bytes) &&
        vram_staging_copy(VRAM_STAGE_D2H, device, src, dst, bytes, sensitive, &staged))
        return staged;
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.memcpy_dtoh(dst, (CUdeviceptr)src, bytes);
    vram_cuda_leave(pushed);
    return (int)r;
}

static int cuda_wipe(int device, uintptr_t address, size_t bytes) {
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.memset_d8((CUdeviceptr)address, 0, bytes);
    if (r == CUDA_SUCCESS) r = vram_cu.ctx_synchronize(); /* zeroed before the memory is released */
    vram_cuda_leave(pushed);
    return (int)r;
}

/* Device-to-device copies are asynchronous to the host in the driver: each is issued on the
 * legacy default stream (ordered after work others put there, as cudaMemcpy is) and waited
 * for, so that it is done when the operation returns. */
static int cuda_copy_d2d(int device, uintptr_t dst, uintptr_t src, size_t bytes) {
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.memcpy_dtod((CUdeviceptr)dst, (CUdeviceptr)src, bytes);
    if (r == CUDA_SUCCESS) r = vram_cu.stream_synchronize(NULL);
    vram_cuda_leave(pushed);
    return (int)r;
}

/* Peer access from dst_device to src_device's memory: enabled once, remembered per pair. */
enum { PEER_UNKNOWN = 0, PEER_ON, PEER_OFF };
static int g_peer[VRAM_MAX_DEVICES][VRAM_MAX_DEVICES]; /* atomic */
static pthread_mutex_t g_peer_lock = PTHREAD_MUTEX_INITIALIZER;

static int enable_peer(int src_device, int dst_device) {
    CUdevice src, dst;
    int can = 0;
    if (vram_cu.device_get(&src, src_device) != CUDA_SUCCESS ||
        vram_cu.device_get(&dst, dst_device) != CUDA_SUCCESS ||
        vram_cu.device_can_access_peer(&can, dst, src) != CUDA_SUCCESS || !can)
        return PEER_OFF;
    CUcontext src_ctx;
    bool pushed;
    if (vram_cuda_primary_context(src_device, &src_ctx) != CUDA_SUCCESS) return PEER_OFF;
    CUresult r = vram_cuda_enter(dst_device, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.ctx_enable_peer_access(src_ctx, 0);
    vram_cuda_leave(pushed);
    /* Someone else (PyTorch, CuPy) may have enabled it already: that is as good. */
    return r == CUDA_SUCCESS || r == CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED ? PEER_ON : PEER_OFF;
}

static bool cuda_peer_capable(int src_device, int dst_device) {
    if (src_device == dst_device) return false;
    int state = __atomic_load_n(&g_peer[src_device][dst_device], __ATOMIC_ACQUIRE);
    if (state == PEER_UNKNOWN) {
        pthread_mutex_lock(&g_peer_lock);
        state = g_peer[src_device][dst_device];
        if (state == PEER_UNKNOWN) {
            state = enable_peer(src_device, dst_device);
            __atomic_store_n(&g_peer[src_device][dst_device], state, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&g_peer_lock);
    }
    return state == PEER_ON;
}

/* Issued in the destination's context, which then waits for it (cuMemcpyPeer is ordered with
 * the work of both contexts but asynchronous to the host). */
static int cuda_copy_peer(int dst_device, uintptr_t dst, int src_device, uintptr_t src,
                          size_t bytes) {
    CUcontext dst_ctx, src_ctx;
    CUresult r = vram_cuda_primary_context(dst_device, &dst_ctx);
    if (r == CUDA_SUCCESS) r = vram_cuda_primary_context(src_device, &src_ctx);
    if (r != CUDA_SUCCESS) return (int)r;
    bool pushed;
    r = vram_cuda_enter(dst_device, &pushed);
    if (r == CUDA_SUCCESS)
        r = vram_cu.memcpy_peer((CUdeviceptr)dst, dst_ctx, (CUdeviceptr)src, src_ctx, bytes);
    if (r == CUDA_SUCCESS) r = vram_cu.stream_synchronize(NULL);
    vram_cuda_leave(pushed);
    return (int)r;
}

/* Page-locked host memory is portable (usable from every context); the driver still wants
 * one current to make or release it: device 0's primary context. */
static int cuda_host_alloc(size_t bytes, void **out) {
    bool pushed;
    CUresult r = vram_cuda_enter(0, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.mem_host_alloc(out, bytes, CU_MEMHOSTALLOC_PORTABLE);
    vram_cuda_leave(pushed);
    return (int)r;
}

static int cuda_host_free(void *ptr) {
    bool pushed;
    CUresult r = vram_cuda_enter(0, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.mem_free_host(ptr);
    vram_cuda_leave(pushed);
    return (int)r;
}

static int cuda_host_register(void *ptr, size_t bytes) {
    bool pushed;
    CUresult r = vram_cuda_enter(0, &pushed);
    if (r == CUDA_SUCCESS)
        r = vram_cu.mem_host_register(ptr, bytes, CU_MEMHOSTREGISTER_PORTABLE);
    vram_cuda_leave(pushed);
    return (int)r;
}

static int cuda_host_unregister(void *ptr) {
    bool pushed;
    CUresult r = vram_cuda_enter(0, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.mem_host_unregister(ptr);
    vram_cuda_leave(pushed);
    return (int)r;
}

static int cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes) {
    bool pushed;
    CUresult r = vram_cuda_enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = vram_cu.mem_get_info(free_bytes, total_bytes);
    vram_cuda_leave(pushed);
    return (int)r;
}

static int cuda_props(int device, vram_device_props *out) {
    CUdevice dev;
    CUresult r = vram_cu.device_get(&dev, device);
    if (r != CUDA_SUCCESS) return VRAM_ERR_DRIVER;
    if (vram_cu.device_get_name(out->name, (int)sizeof out->name, dev) != CUDA_SUCCESS)
        out->name[0] = '\0';
    CUuuid id;
    if (vram_cu.device_get_uuid(&id, dev) == CUDA_SUCCESS) {
        const unsigned char *b = (const unsigned char *)id.bytes;
        snprintf(out->uuid, sizeof out->uuid,
                 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                 b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                 b[14], b[15]);
    }
    char bus[32] = {0};
    if (vram_cu.device_get_pci_bus_id(bus, (int)sizeof bus, dev) == CUDA_SUCCESS) {
        /* The driver writes a 4-digit PCI domain; NVML and DCGM write 8: join on theirs. */
        unsigned domain = 0, b = 0, d = 0, f = 0;
        if (sscanf(bus, "%x:%x:%x.%x", &domain, &b, &d, &f) == 4)
            snprintf(out->pci_bus_id, sizeof out->pci_bus_id, "%08X:%02X:%02X.%X", domain, b, d, f);
    }
    size_t total = 0;
    if (vram_cu.device_total_mem(&total, dev) == CUDA_SUCCESS) out->total_bytes = total;
    vram_cu.device_get_attribute(&out->compute_capability_major,
                            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
    vram_cu.device_get_attribute(&out->compute_capability_minor,
                            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
    out->driver_version = g_driver_version;
    return VRAM_SUCCESS;
}

/* Measured on an H100 (driver 580) through cudaMemGetInfo and NVML deltas: allocations over
 * 1 MiB take whole 2 MiB pages (1 MiB + 1 byte takes 2 MiB; 3 MiB takes 4 MiB); smaller ones
 * share pages, at least 256 B-aligned. Called for allocations the driver made, so no overflow. */
#define CUDA_PAGE ((size_t)2 << 20)

static size_t cuda_footprint(size_t bytes) {
    if (bytes > CUDA_PAGE / 2) return (bytes + (CUDA_PAGE - 1)) & ~(CUDA_PAGE - 1);
    return (bytes + (VRAM_ALIGNMENT - 1)) & ~(size_t)(VRAM_ALIGNMENT - 1);
}

static vram_fault cuda_classify(int error) {
    switch ((CUresult)error) {
    case CUDA_SUCCESS:
        return VRAM_FAULT_NONE;
    case CUDA_ERROR_OUT_OF_MEMORY:
        return VRAM_FAULT_OUT_OF_MEMORY;
    /* Sticky: "the process is left in an inconsistent state and must be restarted". */
    case CUDA_ERROR_ECC_UNCORRECTABLE:
    case CUDA_ERROR_NVLINK_UNCORRECTABLE:
    case CUDA_ERROR_ILLEGAL_ADDRESS:
    case CUDA_ERROR_LAUNCH_TIMEOUT:
    case CUDA_ERROR_ASSERT:
    case CUDA_ERROR_HARDWARE_STACK_ERROR:
    case CUDA_ERROR_ILLEGAL_INSTRUCTION:
    case CUDA_ERROR_MISALIGNED_ADDRESS:
    case CUDA_ERROR_INVALID_ADDRESS_SPACE:
    case CUDA_ERROR_INVALID_PC:
    case CUDA_ERROR_LAUNCH_FAILED:
    case CUDA_ERROR_EXTERNAL_DEVICE:
    case CUDA_ERROR_UNKNOWN: /* what a GPU fallen off the bus answers */
        return VRAM_FAULT_STICKY;
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_INVALID_DEVICE:
    case CUDA_ERROR_NOT_INITIALIZED:
    case CUDA_ERROR_DEINITIALIZED:
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
    case CUDA_ERROR_STUB_LIBRARY:
        return VRAM_FAULT_NO_DEVICE;
    default:
        return VRAM_FAULT_OTHER;
    }
}

static const char *cuda_error_name(int error) { return name_of((CUresult)error); }

const vram_backend vram_backend_cuda = {
    .name = "cuda",
    .init = cuda_init,
    .diagnostic = cuda_diagnostic,
    .device_count = cuda_device_count,
    .alloc = cuda_alloc,
    .release = cuda_release,
    .copy_h2d = cuda_copy_h2d,
    .copy_d2h = cuda_copy_d2h,
    .mem_info = cuda_mem_info,
    .wipe = cuda_wipe,
    .props = cuda_props,
    .copy_d2d = cuda_copy_d2d,
    .peer_capable = cuda_peer_capable,
    .copy_peer = cuda_copy_peer,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .host_register = cuda_host_register,
    .host_unregister = cuda_host_unregister,
    .stream_check = vram_cuda_stream_check,
    .stream_sync = vram_cuda_stream_sync,
    .copy_async = vram_cuda_copy_async,
    .fence_wait = vram_cuda_fence_wait,
    .fence_release = vram_cuda_fence_release,
    .alloc_async = vram_cuda_alloc_async,
    .release_async = vram_cuda_release_async,
    .footprint = cuda_footprint,
    .classify = cuda_classify,
    .error_name = cuda_error_name,
};
