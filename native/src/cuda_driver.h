/* The NVIDIA driver functions libvram_ops uses, resolved once by backend_cuda.c from the
 * library it loads at run time and shared by every file that talks to the driver (backend,
 * staging, pinned memory, peer copies). Not installed. */
#ifndef VRAM_CUDA_DRIVER_H
#define VRAM_CUDA_DRIVER_H

#include <stdbool.h>
#include <stdint.h>

#include <cudaTypedefs.h>

#include "internal.h"

/* slot, ABI symbol (cuda.h #defines the plain names to these), typedef. Every driver since
 * the version in the typedef's name exports the symbol; a missing one fails the load. */
#define VRAM_CUDA_FUNCTIONS(X) \
    X(init, cuInit, PFN_cuInit_v2000)                                                   \
    X(driver_get_version, cuDriverGetVersion, PFN_cuDriverGetVersion_v2020)             \
    X(device_get_count, cuDeviceGetCount, PFN_cuDeviceGetCount_v2000)                   \
    X(device_get, cuDeviceGet, PFN_cuDeviceGet_v2000)                                   \
    X(device_get_name, cuDeviceGetName, PFN_cuDeviceGetName_v2000)                      \
    X(device_get_uuid, cuDeviceGetUuid_v2, PFN_cuDeviceGetUuid_v11040)                  \
    X(device_get_pci_bus_id, cuDeviceGetPCIBusId, PFN_cuDeviceGetPCIBusId_v4010)        \
    X(device_total_mem, cuDeviceTotalMem_v2, PFN_cuDeviceTotalMem_v3020)                \
    X(device_get_attribute, cuDeviceGetAttribute, PFN_cuDeviceGetAttribute_v2000)       \
    X(device_can_access_peer, cuDeviceCanAccessPeer, PFN_cuDeviceCanAccessPeer_v4000)   \
    X(primary_ctx_retain, cuDevicePrimaryCtxRetain, PFN_cuDevicePrimaryCtxRetain_v7000) \
    X(ctx_get_current, cuCtxGetCurrent, PFN_cuCtxGetCurrent_v4000)                      \
    X(ctx_set_current, cuCtxSetCurrent, PFN_cuCtxSetCurrent_v4000)                      \
    X(ctx_push_current, cuCtxPushCurrent_v2, PFN_cuCtxPushCurrent_v4000)                \
    X(ctx_pop_current, cuCtxPopCurrent_v2, PFN_cuCtxPopCurrent_v4000)                   \
    X(ctx_synchronize, cuCtxSynchronize, PFN_cuCtxSynchronize_v2000)                    \
    X(ctx_enable_peer_access, cuCtxEnablePeerAccess, PFN_cuCtxEnablePeerAccess_v4000)   \
    X(mem_alloc, cuMemAlloc_v2, PFN_cuMemAlloc_v3020)                                   \
    X(mem_free, cuMemFree_v2, PFN_cuMemFree_v3020)                                      \
    X(mem_get_info, cuMemGetInfo_v2, PFN_cuMemGetInfo_v3020)                            \
    X(mem_host_alloc, cuMemHostAlloc, PFN_cuMemHostAlloc_v2020)                         \
    X(mem_free_host, cuMemFreeHost, PFN_cuMemFreeHost_v2000)                            \
    X(mem_host_register, cuMemHostRegister_v2, PFN_cuMemHostRegister_v6050)             \
    X(mem_host_unregister, cuMemHostUnregister, PFN_cuMemHostUnregister_v4000)          \
    X(memcpy_htod, cuMemcpyHtoD_v2, PFN_cuMemcpyHtoD_v3020)                             \
    X(memcpy_dtoh, cuMemcpyDtoH_v2, PFN_cuMemcpyDtoH_v3020)                             \
    X(memcpy_dtod, cuMemcpyDtoD_v2, PFN_cuMemcpyDtoD_v3020)                             \
    X(memcpy_peer, cuMemcpyPeer, PFN_cuMemcpyPeer_v4000)                                \
    X(memcpy_htod_async, cuMemcpyHtoDAsync_v2, PFN_cuMemcpyHtoDAsync_v3020)             \
    X(memcpy_dtoh_async, cuMemcpyDtoHAsync_v2, PFN_cuMemcpyDtoHAsync_v3020)             \
    X(memcpy_dtod_async, cuMemcpyDtoDAsync_v2, PFN_cuMemcpyDtoDAsync_v3020)             \
    X(memset_d8, cuMemsetD8_v2, PFN_cuMemsetD8_v3020)                                   \
    X(memset_d8_async, cuMemsetD8Async, PFN_cuMemsetD8Async_v3020)                      \
    X(stream_create, cuStreamCreate, PFN_cuStreamCreate_v2000)                          \
    X(stream_destroy, cuStreamDestroy_v2, PFN_cuStreamDestroy_v4000)                    \
    X(stream_synchronize, cuStreamSynchronize, PFN_cuStreamSynchronize_v2000)           \
    X(stream_wait_event, cuStreamWaitEvent, PFN_cuStreamWaitEvent_v3020)                \
    X(event_create, cuEventCreate, PFN_cuEventCreate_v2000)                             \
    X(event_record, cuEventRecord, PFN_cuEventRecord_v2000)                             \
    X(event_synchronize, cuEventSynchronize, PFN_cuEventSynchronize_v2000)              \
    X(event_query, cuEventQuery, PFN_cuEventQuery_v2000)                                \
    X(event_destroy, cuEventDestroy_v2, PFN_cuEventDestroy_v4000)                       \
    X(event_elapsed_time, cuEventElapsedTime, PFN_cuEventElapsedTime_v2000)             \
    X(stream_get_ctx, cuStreamGetCtx, PFN_cuStreamGetCtx_v9020)                         \
    X(mem_alloc_async, cuMemAllocAsync, PFN_cuMemAllocAsync_v11020)                     \
    X(mem_free_async, cuMemFreeAsync, PFN_cuMemFreeAsync_v11020)                        \
    X(memcpy_peer_async, cuMemcpyPeerAsync, PFN_cuMemcpyPeerAsync_v4000)                \
    X(get_error_name, cuGetErrorName, PFN_cuGetErrorName_v6000)

typedef struct vram_cuda_driver {
#define VRAM_CUDA_SLOT_(slot, symbol, type) type slot;
    VRAM_CUDA_FUNCTIONS(VRAM_CUDA_SLOT_)
#undef VRAM_CUDA_SLOT_
} vram_cuda_driver;

/* Filled by the CUDA backend's init; read only after vram_backend_cuda.init() returned true. */
extern vram_cuda_driver vram_cu;

/* Make the device's primary context current for the calling thread until vram_cuda_leave();
 * the caller's own context is restored. */
CUresult vram_cuda_enter(int device, bool *pushed);
void vram_cuda_leave(bool pushed);
/* The device's primary context (retained once, kept for the process). */
CUresult vram_cuda_primary_context(int device, CUcontext *ctx);

/* cuda_streams.c: the CUDA backend's work on caller streams (see vram_backend in internal.h). */
int vram_cuda_stream_check(int device, uintptr_t stream);
int vram_cuda_stream_sync(int device, uintptr_t stream);
int vram_cuda_copy_async(int device, vram_async_kind kind, uintptr_t dst, uintptr_t src,
                         int src_device, size_t bytes, uintptr_t stream, void **fence);
int vram_cuda_fence_wait(void *fence, bool block, uint64_t *elapsed_ns);
void vram_cuda_fence_release(void *fence);
int vram_cuda_alloc_async(int device, size_t bytes, uintptr_t stream, uintptr_t *out);
int vram_cuda_release_async(int device, uintptr_t address, size_t bytes, bool wipe,
                            uintptr_t stream);

#endif /* VRAM_CUDA_DRIVER_H */
