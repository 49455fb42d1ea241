/* The CUDA backend: the NVIDIA driver library, loaded at run time (no CUDA toolkit needed to
 * build). Each device is used through its primary context, the one the CUDA runtime, PyTorch
 * and CuPy use, so pointers interoperate. The caller's current context is left as found. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cudaTypedefs.h>

#include "internal.h"

#define DRIVER_DEFAULT "libcuda.so.1"

static struct {
    PFN_cuInit_v2000 init;
    PFN_cuDriverGetVersion_v2020 driver_get_version;
    PFN_cuDeviceGetCount_v2000 device_get_count;
    PFN_cuDeviceGet_v2000 device_get;
    PFN_cuDeviceGetName_v2000 device_get_name;
    PFN_cuDeviceGetUuid_v11040 device_get_uuid;
    PFN_cuDeviceGetPCIBusId_v4010 device_get_pci_bus_id;
    PFN_cuDeviceTotalMem_v3020 device_total_mem;
    PFN_cuDeviceGetAttribute_v2000 device_get_attribute;
    PFN_cuDevicePrimaryCtxRetain_v7000 primary_ctx_retain;
    PFN_cuCtxGetCurrent_v4000 ctx_get_current;
    PFN_cuCtxPushCurrent_v4000 ctx_push_current;
    PFN_cuCtxPopCurrent_v4000 ctx_pop_current;
    PFN_cuMemAlloc_v3020 mem_alloc;
    PFN_cuMemFree_v3020 mem_free;
    PFN_cuMemcpyHtoD_v3020 memcpy_htod;
    PFN_cuMemcpyDtoH_v3020 memcpy_dtoh;
    PFN_cuMemGetInfo_v3020 mem_get_info;
    PFN_cuMemsetD8_v3020 memset_d8;
    PFN_cuCtxSynchronize_v2000 ctx_synchronize;
    PFN_cuGetErrorName_v6000 get_error_name;
} cu;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static bool g_ready;
static char g_diagnostic[512];
static int g_devices;
static int g_driver_version;
static CUcontext g_ctx[VRAM_MAX_DEVICES]; /* atomic: retained once, kept for the process */
static pthread_mutex_t g_ctx_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *name_of(CUresult r) {
    const char *name = NULL;
    if (cu.get_error_name && cu.get_error_name(r, &name) == CUDA_SUCCESS && name) return name;
    return "CUDA_ERROR_UNRECOGNIZED";
}

static bool load_symbols(void *lib, const char *path) {
    /* Versioned ABI names: each exists in every driver since the version in its typedef. */
    static const struct {
        const char *symbol;
        void **slot;
    } table[] = {
        {"cuInit", (void **)&cu.init},
        {"cuDriverGetVersion", (void **)&cu.driver_get_version},
        {"cuDeviceGetCount", (void **)&cu.device_get_count},
        {"cuDeviceGet", (void **)&cu.device_get},
        {"cuDeviceGetName", (void **)&cu.device_get_name},
        {"cuDeviceGetUuid_v2", (void **)&cu.device_get_uuid},
        {"cuDeviceGetPCIBusId", (void **)&cu.device_get_pci_bus_id},
        {"cuDeviceTotalMem_v2", (void **)&cu.device_total_mem},
        {"cuDeviceGetAttribute", (void **)&cu.device_get_attribute},
        {"cuDevicePrimaryCtxRetain", (void **)&cu.primary_ctx_retain},
        {"cuCtxGetCurrent", (void **)&cu.ctx_get_current},
        {"cuCtxPushCurrent_v2", (void **)&cu.ctx_push_current},
        {"cuCtxPopCurrent_v2", (void **)&cu.ctx_pop_current},
        {"cuMemAlloc_v2", (void **)&cu.mem_alloc},
        {"cuMemFree_v2", (void **)&cu.mem_free},
        {"cuMemcpyHtoD_v2", (void **)&cu.memcpy_htod},
        {"cuMemcpyDtoH_v2", (void **)&cu.memcpy_dtoh},
        {"cuMemGetInfo_v2", (void **)&cu.mem_get_info},
        {"cuMemsetD8_v2", (void **)&cu.memset_d8},
        {"cuCtxSynchronize", (void **)&cu.ctx_synchronize},
        {"cuGetErrorName", (void **)&cu.get_error_name},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        *table[i].slot = dlsym(lib, table[i].symbol);
        if (!*table[i].slot) {
            snprintf(g_diagnostic, sizeof g_diagnostic, "%s lacks the symbol %s (driver too old?)",
                     path, table[i].symbol);
            return false;
        }
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
    CUresult r = cu.init(0);
    if (r != CUDA_SUCCESS) {
        snprintf(g_diagnostic, sizeof g_diagnostic, "cuInit failed: %s (%d)", name_of(r), (int)r);
        return;
    }
    int count = 0;
    r = cu.device_get_count(&count);
    if (r != CUDA_SUCCESS || count <= 0) {
        snprintf(g_diagnostic, sizeof g_diagnostic, "no CUDA device: cuDeviceGetCount gave %d (%s)",
                 count, r == CUDA_SUCCESS ? "CUDA_SUCCESS" : name_of(r));
        return;
    }
    cu.driver_get_version(&g_driver_version);
    g_devices = count < VRAM_MAX_DEVICES ? count : VRAM_MAX_DEVICES;
    g_ready = true;
}

static bool cuda_init(void) {
    pthread_once(&g_once, cuda_setup);
    return g_ready;
}

static const char *cuda_diagnostic(void) { return g_diagnostic; }

static int cuda_device_count(void) { return g_devices; }

static CUresult primary_context(int device, CUcontext *ctx) {
    *ctx = __atomic_load_n(&g_ctx[device], __ATOMIC_ACQUIRE);
    if (*ctx) return CUDA_SUCCESS;
    pthread_mutex_lock(&g_ctx_lock);
    CUresult r = CUDA_SUCCESS;
    *ctx = g_ctx[device];
    if (!*ctx) {
        CUdevice dev;
        r = cu.device_get(&dev, device);
        if (r == CUDA_SUCCESS) r = cu.primary_ctx_retain(ctx, dev);
        if (r == CUDA_SUCCESS) __atomic_store_n(&g_ctx[device], *ctx, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_ctx_lock);
    return r;
}

/* Make the device's primary context current for one call; *pushed says to pop it after. */
static CUresult enter(int device, bool *pushed) {
    CUcontext ctx, current = NULL;
    *pushed = false;
    CUresult r = primary_context(device, &ctx);
    if (r != CUDA_SUCCESS) return r;
    r = cu.ctx_get_current(&current);
    if (r != CUDA_SUCCESS || current == ctx) return r;
    r = cu.ctx_push_current(ctx);
    *pushed = r == CUDA_SUCCESS;
    return r;
}

static void leave(bool pushed) {
    CUcontext popped;
    if (pushed) cu.ctx_pop_current(&popped);
}

static int cuda_alloc(int device, size_t bytes, uintptr_t *out) {
    bool pushed;
    CUresult r = enter(device, &pushed);
    if (r == CUDA_SUCCESS) {
        CUdeviceptr p = 0;
        r = cu.mem_alloc(&p, bytes);
        if (r == CUDA_SUCCESS) *out = (uintptr_t)p;
    }
    leave(pushed);
    return (int)r;
}

static int cuda_release(int device, uintptr_t address, size_t bytes) {
    (void)bytes;
    bool pushed;
    CUresult r = enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = cu.mem_free((CUdeviceptr)address);
    leave(pushed);
    return (int)r;
}

static int cuda_copy_h2d(int device, uintptr_t dst, const void *src, size_t bytes) {
    bool pushed;
    CUresult r = enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = cu.memcpy_htod((CUdeviceptr)dst, src, bytes);
    leave(pushed);
    return (int)r;
}

static int cuda_copy_d2h(int device, void *dst, uintptr_t src, size_t bytes) {
    bool pushed;
    CUresult r = enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = cu.memcpy_dtoh(dst, (CUdeviceptr)src, bytes);
    leave(pushed);
    return (int)r;
}

static int cuda_wipe(int device, uintptr_t address, size_t bytes) {
    bool pushed;
    CUresult r = enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = cu.memset_d8((CUdeviceptr)address, 0, bytes);
    if (r == CUDA_SUCCESS) r = cu.ctx_synchronize(); /* zeroed before the memory is released */
    leave(pushed);
    return (int)r;
}

static int cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes) {
    bool pushed;
    CUresult r = enter(device, &pushed);
    if (r == CUDA_SUCCESS) r = cu.mem_get_info(free_bytes, total_bytes);
    leave(pushed);
    return (int)r;
}

static int cuda_props(int device, vram_device_props *out) {
    CUdevice dev;
    CUresult r = cu.device_get(&dev, device);
    if (r != CUDA_SUCCESS) return VRAM_ERR_DRIVER;
    if (cu.device_get_name(out->name, (int)sizeof out->name, dev) != CUDA_SUCCESS)
        out->name[0] = '\0';
    CUuuid id;
    if (cu.device_get_uuid(&id, dev) == CUDA_SUCCESS) {
        const unsigned char *b = (const unsigned char *)id.bytes;
        snprintf(out->uuid, sizeof out->uuid,
                 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                 b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                 b[14], b[15]);
    }
    char bus[32] = {0};
    if (cu.device_get_pci_bus_id(bus, (int)sizeof bus, dev) == CUDA_SUCCESS) {
        /* The driver writes a 4-digit PCI domain; NVML and DCGM write 8: join on theirs. */
        unsigned domain = 0, b = 0, d = 0, f = 0;
        if (sscanf(bus, "%x:%x:%x.%x", &domain, &b, &d, &f) == 4)
            snprintf(out->pci_bus_id, sizeof out->pci_bus_id, "%08X:%02X:%02X.%X", domain, b, d, f);
    }
    size_t total = 0;
    if (cu.device_total_mem(&total, dev) == CUDA_SUCCESS) out->total_bytes = total;
    cu.device_get_attribute(&out->compute_capability_major,
                            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
    cu.device_get_attribute(&out->compute_capability_minor,
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
    .footprint = cuda_footprint,
    .classify = cuda_classify,
    .error_name = cuda_error_name,
};
