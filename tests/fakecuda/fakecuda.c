/*
 * fakecuda.c - a fake NVIDIA driver library (libcuda) for tests without a GPU.
 *
 * libvram_ops' CUDA backend (native/src/backend_cuda.c) dlopen()s the driver named by
 * VRAMOBS_CUDA_DRIVER. Point that variable at libfakecuda.so and the real backend code runs
 * in CI - context push/pop, allocation, copies, error classification, sticky-failure latching -
 * against an emulated device whose faults a test can inject at run time.
 *
 * Build (one file, no CUDA toolkit; cuda.h from the nvidia-cuda-runtime wheel):
 *     cc -shared -fPIC -O2 -Wall -Wextra -Werror -I<dir of cuda.h> fakecuda.c \
 *        -o libfakecuda.so -lpthread
 * or tests/fakecuda/build.sh <output dir>.
 *
 * Driver functions exported, with cuda.h's signatures and the ABI names that the real libcuda
 * exports (cuda.h #defines the unversioned names to these, so its declarations check ours):
 *     cuInit cuDriverGetVersion cuDeviceGetCount cuDeviceGet cuDeviceGetName
 *     cuDeviceGetUuid_v2 cuDeviceGetPCIBusId cuDeviceTotalMem_v2 cuDeviceGetAttribute
 *     cuDeviceCanAccessPeer cuDevicePrimaryCtxRetain cuCtxGetCurrent cuCtxSetCurrent
 *     cuCtxPushCurrent_v2 cuCtxPopCurrent_v2 cuCtxSynchronize cuCtxEnablePeerAccess
 *     cuMemAlloc_v2 cuMemFree_v2 cuMemGetInfo_v2 cuMemAllocAsync cuMemFreeAsync
 *     cuMemHostAlloc cuMemFreeHost cuMemHostRegister_v2 cuMemHostUnregister cuMemcpyHtoD_v2
 *     cuMemcpyDtoH_v2 cuMemcpyDtoD_v2 cuMemcpyPeer cuMemcpyHtoDAsync_v2 cuMemcpyDtoHAsync_v2
 *     cuMemcpyDtoDAsync_v2 cuMemcpyPeerAsync cuMemsetD8_v2 cuMemsetD8Async cuStreamCreate
 *     cuStreamDestroy_v2 cuStreamSynchronize cuStreamWaitEvent cuStreamGetCtx cuEventCreate
 *     cuEventRecord cuEventSynchronize cuEventQuery cuEventElapsedTime cuEventDestroy_v2
 *     cuGetErrorName
 * (every function of VRAM_CUDA_FUNCTIONS in native/src/cuda_driver.h, which the library
 * resolves at load and without which it refuses the driver). cuEventElapsedTime is the
 * original ABI symbol (PFN_cuEventElapsedTime_v2000), which CUDA 13's cuda.h renames to
 * cuEventElapsedTime_v2 (not exported here); cuStreamGetCtx is PFN_cuStreamGetCtx_v9020.
 *
 * What is emulated, and how faithfully:
 *   - Every function but cuDriverGetVersion and cuGetErrorName answers
 *     CUDA_ERROR_NOT_INITIALIZED (3) until cuInit(0) has succeeded; cuInit(flags != 0) answers
 *     CUDA_ERROR_INVALID_VALUE.
 *   - Devices 0..N-1. Device d is named "Fake CUDA Device d", has PCI bus id "0000:DD:00.0"
 *     (DD = d in two hex digits), UUID GPU-facecda0-0000-4000-8000-0000000000DD (16 fixed
 *     bytes, the last the ordinal), compute capability 9.0 and a few other plausible
 *     attributes (every other valid attribute reads 0). cuDriverGetVersion gives 13000.
 *     A bad ordinal answers CUDA_ERROR_INVALID_DEVICE (101).
 *   - Contexts: cuDevicePrimaryCtxRetain returns one distinct, non-NULL CUcontext per device
 *     (the same one on every call). Each thread has its own context stack (64 deep) for
 *     cuCtxGetCurrent/cuCtxPushCurrent_v2/cuCtxPopCurrent_v2. Pushing NULL answers
 *     CUDA_ERROR_INVALID_VALUE, pushing a handle this library did not make or a full stack
 *     CUDA_ERROR_INVALID_CONTEXT (201), popping an empty stack CUDA_ERROR_INVALID_CONTEXT.
 *     cuCtxSetCurrent replaces the top of the stack (pushes on an empty one); NULL pops the
 *     top, and is a successful no-op on an empty stack, as in the real driver.
 *   - Device memory is host memory from posix_memalign(512); the "device pointer" is that host
 *     address. Like the real driver, the memory, stream and event functions need a current
 *     context (else CUDA_ERROR_INVALID_CONTEXT): cuMemAlloc_v2, cuMemFree_v2, cuMemGetInfo_v2,
 *     cuMemAllocAsync, cuMemFreeAsync, every cuMemcpy* but cuMemcpyPeer and cuMemcpyPeerAsync,
 *     cuMemsetD8*, the cuMemHost* functions and cuMemFreeHost, cuStreamCreate, cuEventCreate,
 *     and any call given a default stream: so a backend that forgets to push one fails here
 *     too. (cuStreamSynchronize, cuStreamDestroy_v2, cuStreamWaitEvent, cuStreamGetCtx,
 *     cuEventRecord, cuEventSynchronize, cuEventQuery, cuEventElapsedTime, cuEventDestroy_v2
 *     and cuMemcpyPeerAsync given explicit handles act on their handles' contexts, need
 *     none.) cuMemAlloc_v2 and cuMemGetInfo_v2 act on the device of the current context,
 *     cuMemAllocAsync on that of its stream's context; copies and frees find the allocation
 *     by address, on any device (unified addressing).
 *   - Accounting, per device: each allocation counts its size rounded up to 512 bytes;
 *     free = total - sum(rounded sizes) - reserved, where "reserved" stands for what a real
 *     primary context and the driver take: 64 MiB, or total/16 when that is smaller (override
 *     with FAKECUDA_RESERVED_BYTES, clamped to total). cuMemGetInfo_v2 reports (free, total).
 *     cuMemAlloc_v2 and cuMemAllocAsync (the same allocator: no separate pool) answer
 *     CUDA_ERROR_OUT_OF_MEMORY (2) when the rounded size exceeds free (or host memory runs
 *     out), CUDA_ERROR_INVALID_VALUE for size 0 or a NULL dptr.
 *   - cuMemFree_v2 and cuMemFreeAsync of anything but the exact start of a live allocation
 *     (0, unknown, interior, already freed) answer CUDA_ERROR_INVALID_VALUE and free nothing.
 *     Either frees an allocation made by either allocator, as the real driver does.
 *   - cuMemcpyHtoD_v2/DtoH_v2: the device range [p, p + n) must lie inside one live allocation
 *     (its requested size, not the rounded one), else CUDA_ERROR_INVALID_VALUE and no byte is
 *     copied; a NULL host pointer is CUDA_ERROR_INVALID_VALUE; n == 0 succeeds and copies
 *     nothing. Copies are synchronous memcpy()s. cuMemsetD8_v2 checks its range the same way.
 *   - cuMemcpyDtoD_v2: both ranges inside live allocations, of any devices; memmove(), so
 *     overlapping ranges are fine. cuMemcpyPeer: both contexts must be ones this library made
 *     (else CUDA_ERROR_INVALID_CONTEXT; it needs no current context) and each range must lie
 *     in an allocation of its context's device (else CUDA_ERROR_INVALID_VALUE); like the real
 *     one it copies whether or not peer access is enabled.
 *   - Streams and events are distinct heap objects, valid from create to destroy (a table
 *     lists them; a handle is only compared, never dereferenced, until found there). Creating
 *     one needs a current context, to which it then belongs. Unknown flags answer
 *     CUDA_ERROR_INVALID_VALUE (cuEventCreate: CU_EVENT_INTERPROCESS also needs
 *     CU_EVENT_DISABLE_TIMING). NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD are the
 *     default stream of the current context: valid wherever a stream is taken, but then a
 *     current context is needed. Any other handle that is not a live stream or event (never
 *     made, already destroyed; a default stream given to cuStreamDestroy_v2) answers
 *     CUDA_ERROR_INVALID_HANDLE (400). cuEventRecord also answers it when the event belongs
 *     to another context than the stream, as the real driver does. cuStreamGetCtx gives the
 *     stream's context (a default stream: the current one); a NULL pctx is
 *     CUDA_ERROR_INVALID_VALUE.
 *   - Work on streams - cuMemcpyHtoDAsync_v2, cuMemcpyDtoHAsync_v2, cuMemcpyDtoDAsync_v2,
 *     cuMemcpyPeerAsync, cuMemsetD8Async, cuMemFreeAsync, cuEventRecord - is checked when it
 *     is enqueued, as the real driver does: a current context (cuMemcpyPeerAsync: only with
 *     a default stream), a live stream, then the checks of its synchronous twin (ranges
 *     inside live allocations, ...); a refused call does and queues nothing. What happens
 *     next depends on FAKECUDA_ASYNC:
 *       immediate (the default): the work is done before the call returns (cuMemFreeAsync
 *         frees at once). cuStreamSynchronize, cuStreamWaitEvent, cuEventSynchronize and
 *         cuEventQuery only validate their handles (an event never recorded too, as the real
 *         driver does); cuEventQuery never answers CUDA_ERROR_NOT_READY, and a test cannot
 *         observe a race between a copy and a reuse of its host buffer.
 *       deferred: the work is queued on its stream, and done in order only when something
 *         forces it. NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD all name the legacy
 *         stream of the current context (one per context, a stream like the others). What
 *         forces work, on the thread that asks (never on a thread of its own):
 *           cuStreamSynchronize(s): s's work (the legacy stream: every blocking stream's too);
 *           cuEventSynchronize(e), cuStreamWaitEvent(s, e): the work of e's stream up to e's
 *             latest record (a wait runs it at once: the simplest correct dependency);
 *           cuCtxSynchronize: every stream of the current context;
 *           cuMemcpyHtoD_v2, cuMemcpyDtoH_v2, cuMemcpyDtoD_v2, cuMemsetD8_v2 (ordered in the
 *             legacy stream): the legacy stream and the blocking streams (made without
 *             CU_STREAM_NON_BLOCKING) of the current context; cuMemcpyPeer: those of both
 *             contexts. As on a GPU, a non-blocking stream is not waited for;
 *           cuMemFree_v2, cuMemFreeHost, cuMemHostUnregister: all queued work (the real ones
 *             synchronize; queued work never touches released memory);
 *           cuStreamDestroy_v2(s): s's work, then s is destroyed;
 *           fakecuda_run_all().
 *         The legacy stream and the blocking streams of a context are ordered with each
 *         other: their work runs in the order it was enqueued across them. cuEventQuery
 *         answers CUDA_ERROR_NOT_READY while the event's latest record waits, and runs
 *         nothing; CUDA_SUCCESS once it ran. Host memory the driver cannot DMA (pageable: not
 *         inside one cuMemHostAlloc block or cuMemHostRegister_v2 range) is handled as the
 *         real driver handles it: cuMemcpyHtoDAsync_v2 copies its source when called (the
 *         buffer may be reused at once; the device gets the bytes in stream order),
 *         cuMemcpyDtoHAsync_v2 runs its stream's earlier work, then copies, before it
 *         returns. Page-locked host memory is read or written only when the copy runs.
 *         cuMemFreeAsync releases the memory when it runs; until then the memory stays
 *         accounted, and new work on it (async or synchronous) or freeing it again answers
 *         CUDA_ERROR_INVALID_VALUE. A queued copy that finds its device memory released when
 *         it runs (freed first in another stream's order: a race in the caller) fails as on
 *         a GPU: CUDA_ERROR_ILLEGAL_ADDRESS (700), sticky, reported on stderr and returned by
 *         the call that forced it.
 *     Injected faults fire when the call is made (at enqueue), in both modes.
 *   - Event timing: a record stamps the host's CLOCK_MONOTONIC when its stream's earlier work
 *     is done: at cuEventRecord in immediate mode, when the record runs in deferred mode.
 *     cuEventElapsedTime gives end - start in ms. A NULL pMilliseconds answers
 *     CUDA_ERROR_INVALID_VALUE; an unknown or never recorded event, one made with
 *     CU_EVENT_DISABLE_TIMING, or events of two contexts CUDA_ERROR_INVALID_HANDLE; a latest
 *     record still waiting CUDA_ERROR_NOT_READY.
 *   - Page-locked host memory (all four need a current context): cuMemHostAlloc allocates
 *     with posix_memalign(4096) (flags PORTABLE, DEVICEMAP, WRITECOMBINED; anything else,
 *     size 0 or a NULL pp is CUDA_ERROR_INVALID_VALUE; it takes no device memory).
 *     cuMemFreeHost of anything but the start of a live cuMemHostAlloc block answers
 *     CUDA_ERROR_INVALID_VALUE. cuMemHostRegister_v2 records [p, p + n) (flags PORTABLE,
 *     DEVICEMAP, IOMEMORY, READ_ONLY); NULL, 0 bytes, an overflowing range or other flags
 *     answer CUDA_ERROR_INVALID_VALUE, a range overlapping a registered one or a
 *     cuMemHostAlloc block CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED (712).
 *     cuMemHostUnregister needs the exact start of a registered range, else
 *     CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED (713). Copies accept pageable and page-locked
 *     host memory alike (deferred mode treats them differently, as above).
 *   - Peer access (FAKECUDA_PEER): cuDeviceCanAccessPeer answers 1 for every pair of
 *     distinct devices (0 with FAKECUDA_PEER=0) and 0 for a device and itself; a bad ordinal
 *     is CUDA_ERROR_INVALID_DEVICE. cuCtxEnablePeerAccess(peer, flags) enables access from
 *     the current context's device to peer's: flags != 0 is CUDA_ERROR_INVALID_VALUE, no
 *     current context or a peer this library did not make CUDA_ERROR_INVALID_CONTEXT, the
 *     same device or an incapable pair CUDA_ERROR_PEER_ACCESS_UNSUPPORTED (217), a pair
 *     already enabled CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED (704). Enabled pairs stay.
 *   - cuGetErrorName knows every CUresult of CUDA 13 by its real name; an unknown code answers
 *     CUDA_ERROR_INVALID_VALUE and sets *pStr to NULL, as the real driver does.
 *   - All state is shared by every thread and guarded by pthread locks; copies of different
 *     allocations run concurrently (deferred work: one run at a time). Not emulated: kernels,
 *     concurrency between streams (deferred work runs on the thread that forces it), stream
 *     priorities or capture, context destruction or primary context release, per-context
 *     sticky state (a sticky fault here poisons the whole fake driver, all devices).
 *
 * Environment, read once when the library is loaded:
 *   FAKECUDA_DEVICES=<n>         devices, 0..64 (default 1); 0 makes cuDeviceGetCount report 0
 *   FAKECUDA_TOTAL_BYTES=<n>     memory of each device in bytes (default 1073741824, 1 GiB)
 *   FAKECUDA_RESERVED_BYTES=<n>  the "context" reservation (default min(64 MiB, total / 16))
 *   FAKECUDA_DRIVER_VERSION=<n>  what cuDriverGetVersion reports (default 13000)
 *   FAKECUDA_INIT_ERROR=<code>   cuInit fails with this CUresult (number or name), every call
 *   FAKECUDA_PEER=<0|1>          whether distinct devices can access each other (default 1)
 *   FAKECUDA_ASYNC=<mode>        immediate (default) or deferred: when work on streams is done
 *   FAKECUDA_FAIL=<function>:<error>:<nth>[:sticky][,...]
 *                                injections made at load, as fakecuda_inject(function, error,
 *                                nth, sticky) would; error is a number or a CUresult name,
 *                                sticky is 0/1 (default 0). E.g. FAKECUDA_FAIL=cuMemAlloc:2:3
 *                                fails the third cuMemAlloc with CUDA_ERROR_OUT_OF_MEMORY.
 *   Malformed values are reported on stderr and ignored (the default stays).
 *
 * Control functions, exported for tests (C: declare them; Rust: extern "C"; Python: ctypes on
 * the same path, which dlopen() resolves to the already loaded copy). Function names are the
 * exported ones, with or without their "_v2" suffix ("cuMemAlloc" == "cuMemAlloc_v2").
 *
 *   void fakecuda_inject(const char *function, int error, long nth, int sticky);
 *       Make the nth later call of function (1 = the very next one; counting starts at this
 *       call) return error instead of doing its work; nth == 0 makes every later call fail
 *       until fakecuda_reset(). function is any exported driver function, or "*" for any of
 *       the functions that get, free or move memory, or push a context: cuMemAlloc,
 *       cuMemFree, cuMemGetInfo, cuMemAllocAsync, cuMemFreeAsync, cuMemcpyHtoD, cuMemcpyDtoH,
 *       cuMemcpyDtoD, cuMemcpyPeer, cuMemcpyHtoDAsync, cuMemcpyDtoHAsync, cuMemcpyDtoDAsync,
 *       cuMemcpyPeerAsync, cuMemsetD8, cuMemsetD8Async, cuMemHostAlloc, cuMemHostRegister,
 *       cuCtxPushCurrent (not the stream, event, peer, unregister/free-host or query
 *       functions). A failed call writes no outputs (error 0 makes the call "succeed" without
 *       doing its work: cuMemAlloc and cuMemAllocAsync then return pointer 0,
 *       cuMemHostAlloc, cuStreamCreate and cuEventCreate NULL). If sticky != 0 and error != 0,
 *       once this fault fires every later call of every driver function returns error,
 *       except cuGetErrorName, cuCtxGetCurrent, cuCtxSetCurrent, cuCtxPushCurrent_v2 and
 *       cuCtxPopCurrent_v2, which a real driver still answers after a sticky error such as
 *       CUDA_ERROR_ILLEGAL_ADDRESS (700). Up to 32 injections wait at once; when several
 *       fire on one call the earliest made decides the error, and all that fired are used
 *       up. An unknown function name or a negative nth is reported on stderr and ignored.
 *   void fakecuda_reset(void);
 *       Drop all injections and the sticky error. Allocations, contexts, queued work and call
 *       counts stay.
 *   long fakecuda_calls(const char *function);
 *       Calls of that driver function since load, failed and refused ones included ("*": all
 *       driver functions together; -1 for an unknown name). Counts are never reset: take
 *       differences, e.g. to assert that a refused operation reached no driver function.
 *   long fakecuda_live_allocations(void);
 *   unsigned long long fakecuda_live_bytes(void);
 *       Live fake allocations on all devices, and their requested (unrounded) bytes.
 *   long fakecuda_live_streams(void);
 *   long fakecuda_live_events(void);
 *       Streams and events created and not yet destroyed.
 *   long fakecuda_live_host_allocations(void);
 *   unsigned long long fakecuda_live_host_bytes(void);
 *   long fakecuda_live_registrations(void);
 *       Live cuMemHostAlloc blocks and their bytes; live cuMemHostRegister_v2 ranges.
 *   int fakecuda_peer_enabled(int from, int to);
 *       1 once cuCtxEnablePeerAccess enabled access from device from to device to, else 0;
 *       -1 for an ordinal outside 0..FAKECUDA_DEVICES-1.
 *   long fakecuda_queued(void);
 *       Operations queued on streams and not yet run, all streams (deferred mode; always 0
 *       in immediate mode): copies, memsets, frees and event records.
 *   void fakecuda_run_all(void);
 *       Run all queued work now (as a cuCtxSynchronize of every context would), even after a
 *       sticky error.
 *
 * Memory, streams, events and queued work still live at exit stay reachable from this
 * library's tables (not a leak for LeakSanitizer or valgrind); the bookkeeping itself frees
 * what it allocates.
 */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda.h>
#include <cudaTypedefs.h>

/* cuda.h renames cuEventElapsedTime to cuEventElapsedTime_v2 (CUDA 12.8); this library exports
 * the original symbol, which libvram_ops resolves as PFN_cuEventElapsedTime_v2000. */
#undef cuEventElapsedTime
CUresult CUDAAPI cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd);
_Static_assert(__builtin_types_compatible_p(__typeof__(&cuEventElapsedTime),
                                            PFN_cuEventElapsedTime_v2000),
               "cuEventElapsedTime differs from PFN_cuEventElapsedTime_v2000");
_Static_assert(sizeof(CUdeviceptr) == sizeof(uintptr_t),
               "a device pointer is a host address here: 64-bit builds only");

#define FAKE_API __attribute__((visibility("default")))

#define FAKE_MAX_DEVICES 64
#define FAKE_STACK_DEPTH 64
#define FAKE_MAX_INJECTIONS 32
#define FAKE_ALIGNMENT ((size_t)512)
#define FAKE_DEFAULT_TOTAL ((size_t)1 << 30)
#define FAKE_DEFAULT_RESERVED ((size_t)64 << 20)
#define FAKE_DEFAULT_DRIVER_VERSION 13000

/* The control API: declared here so that -Wmissing-prototypes builds stay quiet too. */
FAKE_API void fakecuda_inject(const char *function, int error, long nth, int sticky);
FAKE_API void fakecuda_reset(void);
FAKE_API long fakecuda_calls(const char *function);
FAKE_API long fakecuda_live_allocations(void);
FAKE_API unsigned long long fakecuda_live_bytes(void);
FAKE_API long fakecuda_live_streams(void);
FAKE_API long fakecuda_live_events(void);
FAKE_API long fakecuda_live_host_allocations(void);
FAKE_API unsigned long long fakecuda_live_host_bytes(void);
FAKE_API long fakecuda_live_registrations(void);
FAKE_API int fakecuda_peer_enabled(int from, int to);
FAKE_API long fakecuda_queued(void);
FAKE_API void fakecuda_run_all(void);

/* ---------------------------------------------------------------------------------------
 * The driver functions: name, whether "*" injections hit them, whether a sticky error spares
 * them.
 * ------------------------------------------------------------------------------------- */
#define FAKE_FUNCTIONS(X)                                  \
    X(FN_INIT, "cuInit", 0, 0)                             \
    X(FN_DRIVER_GET_VERSION, "cuDriverGetVersion", 0, 0)   \
    X(FN_DEVICE_GET_COUNT, "cuDeviceGetCount", 0, 0)       \
    X(FN_DEVICE_GET, "cuDeviceGet", 0, 0)                  \
    X(FN_DEVICE_GET_NAME, "cuDeviceGetName", 0, 0)         \
    X(FN_DEVICE_GET_UUID, "cuDeviceGetUuid_v2", 0, 0)      \
    X(FN_DEVICE_GET_PCI_BUS_ID, "cuDeviceGetPCIBusId", 0, 0) \
    X(FN_DEVICE_TOTAL_MEM, "cuDeviceTotalMem_v2", 0, 0)    \
    X(FN_DEVICE_GET_ATTRIBUTE, "cuDeviceGetAttribute", 0, 0) \
    X(FN_PRIMARY_CTX_RETAIN, "cuDevicePrimaryCtxRetain", 0, 0) \
    X(FN_CTX_GET_CURRENT, "cuCtxGetCurrent", 0, 1)         \
    X(FN_CTX_PUSH_CURRENT, "cuCtxPushCurrent_v2", 1, 1)    \
    X(FN_CTX_POP_CURRENT, "cuCtxPopCurrent_v2", 0, 1)      \
    X(FN_MEM_ALLOC, "cuMemAlloc_v2", 1, 0)                 \
    X(FN_MEM_FREE, "cuMemFree_v2", 1, 0)                   \
    X(FN_MEMCPY_HTOD, "cuMemcpyHtoD_v2", 1, 0)             \
    X(FN_MEMCPY_DTOH, "cuMemcpyDtoH_v2", 1, 0)             \
    X(FN_MEM_GET_INFO, "cuMemGetInfo_v2", 1, 0)            \
    X(FN_MEMSET_D8, "cuMemsetD8_v2", 1, 0)                 \
    X(FN_CTX_SYNCHRONIZE, "cuCtxSynchronize", 0, 0)        \
    X(FN_GET_ERROR_NAME, "cuGetErrorName", 0, 1)           \
    X(FN_CTX_SET_CURRENT, "cuCtxSetCurrent", 0, 1)         \
    X(FN_DEVICE_CAN_ACCESS_PEER, "cuDeviceCanAccessPeer", 0, 0) \
    X(FN_CTX_ENABLE_PEER_ACCESS, "cuCtxEnablePeerAccess", 0, 0) \
    X(FN_MEM_HOST_ALLOC, "cuMemHostAlloc", 1, 0)           \
    X(FN_MEM_FREE_HOST, "cuMemFreeHost", 0, 0)             \
    X(FN_MEM_HOST_REGISTER, "cuMemHostRegister_v2", 1, 0)  \
    X(FN_MEM_HOST_UNREGISTER, "cuMemHostUnregister", 0, 0) \
    X(FN_MEMCPY_DTOD, "cuMemcpyDtoD_v2", 1, 0)             \
    X(FN_MEMCPY_PEER, "cuMemcpyPeer", 1, 0)                \
    X(FN_MEMCPY_HTOD_ASYNC, "cuMemcpyHtoDAsync_v2", 1, 0)  \
    X(FN_MEMCPY_DTOH_ASYNC, "cuMemcpyDtoHAsync_v2", 1, 0)  \
    X(FN_MEMCPY_DTOD_ASYNC, "cuMemcpyDtoDAsync_v2", 1, 0)  \
    X(FN_MEMSET_D8_ASYNC, "cuMemsetD8Async", 1, 0)         \
    X(FN_STREAM_CREATE, "cuStreamCreate", 0, 0)            \
    X(FN_STREAM_DESTROY, "cuStreamDestroy_v2", 0, 0)       \
    X(FN_STREAM_SYNCHRONIZE, "cuStreamSynchronize", 0, 0)  \
    X(FN_STREAM_WAIT_EVENT, "cuStreamWaitEvent", 0, 0)     \
    X(FN_EVENT_CREATE, "cuEventCreate", 0, 0)              \
    X(FN_EVENT_RECORD, "cuEventRecord", 0, 0)              \
    X(FN_EVENT_SYNCHRONIZE, "cuEventSynchronize", 0, 0)    \
    X(FN_EVENT_QUERY, "cuEventQuery", 0, 0)                \
    X(FN_EVENT_DESTROY, "cuEventDestroy_v2", 0, 0)       \
    X(FN_EVENT_ELAPSED_TIME, "cuEventElapsedTime", 0, 0) \
    X(FN_STREAM_GET_CTX, "cuStreamGetCtx", 0, 0)         \
    X(FN_MEM_ALLOC_ASYNC, "cuMemAllocAsync", 1, 0)       \
    X(FN_MEM_FREE_ASYNC, "cuMemFreeAsync", 1, 0)         \
    X(FN_MEMCPY_PEER_ASYNC, "cuMemcpyPeerAsync", 1, 0)

enum fake_fn {
#define FAKE_FN_ENUM_(id, name, star, spared) id,
    FAKE_FUNCTIONS(FAKE_FN_ENUM_)
#undef FAKE_FN_ENUM_
    FN_COUNT
};

static const struct {
    const char *name;
    int star;   /* hit by "*" injections */
    int spared; /* still answers after a sticky error */
} g_fn[FN_COUNT] = {
#define FAKE_FN_INFO_(id, name, star, spared) {name, star, spared},
    FAKE_FUNCTIONS(FAKE_FN_INFO_)
#undef FAKE_FN_INFO_
};

#define FN_STAR (-2) /* the function index of a "*" injection */

/* The exported name, or the same without its "_v2" suffix; "*" gives FN_STAR; else -1. */
static int fn_lookup(const char *name) {
    if (!name) return -1;
    if (strcmp(name, "*") == 0) return FN_STAR;
    for (int i = 0; i < FN_COUNT; i++) {
        const char *full = g_fn[i].name;
        size_t n = strlen(full);
        if (strcmp(name, full) == 0) return i;
        if (n > 3 && strcmp(full + n - 3, "_v2") == 0 && strlen(name) == n - 3 &&
            strncmp(name, full, n - 3) == 0)
            return i;
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------
 * Error names: every CUresult of CUDA 13.0, as the real cuGetErrorName spells it. Numbers,
 * not enumerators, so that an older cuda.h still compiles this file.
 * ------------------------------------------------------------------------------------- */
static const struct {
    int code;
    const char *name;
} g_error_names[] = {
    {0, "CUDA_SUCCESS"},
    {1, "CUDA_ERROR_INVALID_VALUE"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY"},
    {3, "CUDA_ERROR_NOT_INITIALIZED"},
    {4, "CUDA_ERROR_DEINITIALIZED"},
    {5, "CUDA_ERROR_PROFILER_DISABLED"},
    {6, "CUDA_ERROR_PROFILER_NOT_INITIALIZED"},
    {7, "CUDA_ERROR_PROFILER_ALREADY_STARTED"},
    {8, "CUDA_ERROR_PROFILER_ALREADY_STOPPED"},
    {34, "CUDA_ERROR_STUB_LIBRARY"},
    {36, "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER"},
    {46, "CUDA_ERROR_DEVICE_UNAVAILABLE"},
    {47, "CUDA_ERROR_MULTICAST_RESOURCE_FULL"},
    {100, "CUDA_ERROR_NO_DEVICE"},
    {101, "CUDA_ERROR_INVALID_DEVICE"},
    {102, "CUDA_ERROR_DEVICE_NOT_LICENSED"},
    {200, "CUDA_ERROR_INVALID_IMAGE"},
    {201, "CUDA_ERROR_INVALID_CONTEXT"},
    {202, "CUDA_ERROR_CONTEXT_ALREADY_CURRENT"},
    {205, "CUDA_ERROR_MAP_FAILED"},
    {206, "CUDA_ERROR_UNMAP_FAILED"},
    {207, "CUDA_ERROR_ARRAY_IS_MAPPED"},
    {208, "CUDA_ERROR_ALREADY_MAPPED"},
    {209, "CUDA_ERROR_NO_BINARY_FOR_GPU"},
    {210, "CUDA_ERROR_ALREADY_ACQUIRED"},
    {211, "CUDA_ERROR_NOT_MAPPED"},
    {212, "CUDA_ERROR_NOT_MAPPED_AS_ARRAY"},
    {213, "CUDA_ERROR_NOT_MAPPED_AS_POINTER"},
    {214, "CUDA_ERROR_ECC_UNCORRECTABLE"},
    {215, "CUDA_ERROR_UNSUPPORTED_LIMIT"},
    {216, "CUDA_ERROR_CONTEXT_ALREADY_IN_USE"},
    {217, "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED"},
    {218, "CUDA_ERROR_INVALID_PTX"},
    {219, "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT"},
    {220, "CUDA_ERROR_NVLINK_UNCORRECTABLE"},
    {221, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND"},
    {222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"},
    {223, "CUDA_ERROR_JIT_COMPILATION_DISABLED"},
    {224, "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY"},
    {225, "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC"},
    {226, "CUDA_ERROR_CONTAINED"},
    {227, "CUDA_ERROR_INSUFFICIENT_LOADER_VERSION"},
    {300, "CUDA_ERROR_INVALID_SOURCE"},
    {301, "CUDA_ERROR_FILE_NOT_FOUND"},
    {302, "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND"},
    {303, "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED"},
    {304, "CUDA_ERROR_OPERATING_SYSTEM"},
    {400, "CUDA_ERROR_INVALID_HANDLE"},
    {401, "CUDA_ERROR_ILLEGAL_STATE"},
    {402, "CUDA_ERROR_LOSSY_QUERY"},
    {500, "CUDA_ERROR_NOT_FOUND"},
    {600, "CUDA_ERROR_NOT_READY"},
    {700, "CUDA_ERROR_ILLEGAL_ADDRESS"},
    {701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"},
    {702, "CUDA_ERROR_LAUNCH_TIMEOUT"},
    {703, "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING"},
    {704, "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED"},
    {705, "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED"},
    {708, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE"},
    {709, "CUDA_ERROR_CONTEXT_IS_DESTROYED"},
    {710, "CUDA_ERROR_ASSERT"},
    {711, "CUDA_ERROR_TOO_MANY_PEERS"},
    {712, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"},
    {713, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"},
    {714, "CUDA_ERROR_HARDWARE_STACK_ERROR"},
    {715, "CUDA_ERROR_ILLEGAL_INSTRUCTION"},
    {716, "CUDA_ERROR_MISALIGNED_ADDRESS"},
    {717, "CUDA_ERROR_INVALID_ADDRESS_SPACE"},
    {718, "CUDA_ERROR_INVALID_PC"},
    {719, "CUDA_ERROR_LAUNCH_FAILED"},
    {720, "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE"},
    {721, "CUDA_ERROR_TENSOR_MEMORY_LEAK"},
    {800, "CUDA_ERROR_NOT_PERMITTED"},
    {801, "CUDA_ERROR_NOT_SUPPORTED"},
    {802, "CUDA_ERROR_SYSTEM_NOT_READY"},
    {803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"},
    {804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"},
    {805, "CUDA_ERROR_MPS_CONNECTION_FAILED"},
    {806, "CUDA_ERROR_MPS_RPC_FAILURE"},
    {807, "CUDA_ERROR_MPS_SERVER_NOT_READY"},
    {808, "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED"},
    {809, "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED"},
    {810, "CUDA_ERROR_MPS_CLIENT_TERMINATED"},
    {811, "CUDA_ERROR_CDP_NOT_SUPPORTED"},
    {812, "CUDA_ERROR_CDP_VERSION_MISMATCH"},
    {900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"},
    {901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"},
    {902, "CUDA_ERROR_STREAM_CAPTURE_MERGE"},
    {903, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"},
    {904, "CUDA_ERROR_STREAM_CAPTURE_UNJOINED"},
    {905, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION"},
    {906, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT"},
    {907, "CUDA_ERROR_CAPTURED_EVENT"},
    {908, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD"},
    {909, "CUDA_ERROR_TIMEOUT"},
    {910, "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE"},
    {911, "CUDA_ERROR_EXTERNAL_DEVICE"},
    {912, "CUDA_ERROR_INVALID_CLUSTER_SIZE"},
    {913, "CUDA_ERROR_FUNCTION_NOT_LOADED"},
    {914, "CUDA_ERROR_INVALID_RESOURCE_TYPE"},
    {915, "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION"},
    {916, "CUDA_ERROR_KEY_ROTATION"},
    {917, "CUDA_ERROR_STREAM_DETACHED"},
    {918, "CUDA_ERROR_GRAPH_RECAPTURE_FAILURE"},
    {919, "CUDA_ERROR_FABRIC_NOT_READY"},
    {999, "CUDA_ERROR_UNKNOWN"},
};

_Static_assert(CUDA_ERROR_OUT_OF_MEMORY == 2 && CUDA_ERROR_INVALID_CONTEXT == 201 &&
                   CUDA_ERROR_ILLEGAL_ADDRESS == 700 && CUDA_ERROR_UNKNOWN == 999,
               "cuda.h disagrees with the error table");

static const char *error_name(int code) {
    for (size_t i = 0; i < sizeof g_error_names / sizeof g_error_names[0]; i++)
        if (g_error_names[i].code == code) return g_error_names[i].name;
    return NULL;
}

/* A CUresult given as a number or as its name. */
static int parse_error(const char *text, int *out) {
    if (!text || !*text) return 0;
    for (size_t i = 0; i < sizeof g_error_names / sizeof g_error_names[0]; i++)
        if (strcmp(text, g_error_names[i].name) == 0) {
            *out = g_error_names[i].code;
            return 1;
        }
    char *end;
    long long v = strtoll(text, &end, 0);
    if (*end != '\0' || v < 0 || v > INT_MAX) return 0;
    *out = (int)v;
    return 1;
}

static int parse_size(const char *text, unsigned long long max, unsigned long long *out) {
    if (!text || !*text || *text == '-') return 0;
    char *end;
    unsigned long long v = strtoull(text, &end, 0);
    if (*end != '\0' || v > max) return 0;
    *out = v;
    return 1;
}

/* ---------------------------------------------------------------------------------------
 * Configuration (written once by the load-time constructor, read-only afterwards).
 * ------------------------------------------------------------------------------------- */
static int g_devices = 1;
static size_t g_total = FAKE_DEFAULT_TOTAL;
static size_t g_reserved;
static int g_driver_version = FAKE_DEFAULT_DRIVER_VERSION;
static int g_init_error; /* 0: cuInit succeeds */
static int g_peer = 1;    /* every pair of distinct devices can access each other */
static int g_deferred;    /* FAKECUDA_ASYNC=deferred: stream work waits until forced */
static int g_initialized; /* atomic */

/* ---------------------------------------------------------------------------------------
 * Call counts and faults.
 * ------------------------------------------------------------------------------------- */
static long g_calls[FN_COUNT]; /* atomic */

typedef struct injection {
    int fn;         /* enum fake_fn or FN_STAR */
    int error;
    long remaining; /* calls until it fires; 0: fires on every call */
    int sticky;
} injection;

static pthread_mutex_t g_fault_lock = PTHREAD_MUTEX_INITIALIZER;
static injection g_injections[FAKE_MAX_INJECTIONS];
static int g_injection_count;
static int g_sticky_set;
static int g_sticky_error;

/* Count a call and decide its fate: returns 1 with *error set when the call must return
 * *error without doing its work. */
static int gate(enum fake_fn fn, CUresult *error) {
    __atomic_add_fetch(&g_calls[fn], 1, __ATOMIC_RELAXED);
    int fail = 0;
    pthread_mutex_lock(&g_fault_lock);
    if (g_sticky_set && !g_fn[fn].spared) {
        *error = (CUresult)g_sticky_error;
        fail = 1;
    } else if (g_injection_count > 0) {
        int kept = 0;
        for (int i = 0; i < g_injection_count; i++) {
            injection inj = g_injections[i];
            int fired = 0;
            if (inj.fn == (int)fn || (inj.fn == FN_STAR && g_fn[fn].star)) {
                if (inj.remaining == 0) {
                    fired = 1; /* every call; stays */
                } else if (--inj.remaining == 0) {
                    fired = 2; /* used up */
                }
            }
            if (fired && !fail) {
                fail = 1;
                *error = (CUresult)inj.error;
                if (inj.sticky && inj.error != 0) {
                    g_sticky_set = 1;
                    g_sticky_error = inj.error;
                }
            }
            if (fired != 2) g_injections[kept++] = inj;
        }
        g_injection_count = kept;
    }
    pthread_mutex_unlock(&g_fault_lock);
    return fail;
}

/* A fault found while queued work ran: every later call fails, as after a GPU fault. */
static void set_sticky(CUresult error) {
    pthread_mutex_lock(&g_fault_lock);
    g_sticky_set = 1;
    g_sticky_error = (int)error;
    pthread_mutex_unlock(&g_fault_lock);
}

static void inject(int fn, int error, long nth, int sticky) {
    pthread_mutex_lock(&g_fault_lock);
    int ok = g_injection_count < FAKE_MAX_INJECTIONS;
    if (ok) g_injections[g_injection_count++] = (injection){fn, error, nth, sticky != 0};
    pthread_mutex_unlock(&g_fault_lock);
    if (!ok)
        fprintf(stderr, "fakecuda: more than %d injections waiting; this one is ignored\n",
                FAKE_MAX_INJECTIONS);
}

void fakecuda_inject(const char *function, int error, long nth, int sticky) {
    int fn = fn_lookup(function);
    if (fn == -1) {
        fprintf(stderr, "fakecuda_inject: unknown function '%s'; ignored\n",
                function ? function : "(null)");
        return;
    }
    if (nth < 0) {
        fprintf(stderr, "fakecuda_inject: nth %ld < 0; ignored\n", nth);
        return;
    }
    inject(fn, error, nth, sticky);
}

void fakecuda_reset(void) {
    pthread_mutex_lock(&g_fault_lock);
    g_injection_count = 0;
    g_sticky_set = 0;
    g_sticky_error = 0;
    pthread_mutex_unlock(&g_fault_lock);
}

long fakecuda_calls(const char *function) {
    int fn = fn_lookup(function);
    if (fn == -1) return -1;
    if (fn != FN_STAR) return __atomic_load_n(&g_calls[fn], __ATOMIC_RELAXED);
    long sum = 0;
    for (int i = 0; i < FN_COUNT; i++) sum += __atomic_load_n(&g_calls[i], __ATOMIC_RELAXED);
    return sum;
}

/* ---------------------------------------------------------------------------------------
 * Contexts: one primary context per device, a stack per thread.
 * ------------------------------------------------------------------------------------- */
struct CUctx_st {
    int device;
};

static struct CUctx_st g_contexts[FAKE_MAX_DEVICES];
static long g_retains[FAKE_MAX_DEVICES]; /* atomic; kept for debugging */

static _Thread_local struct {
    CUcontext ctx[FAKE_STACK_DEPTH];
    int depth;
} t_stack;

static int is_fake_context(CUcontext ctx) {
    for (int i = 0; i < g_devices; i++)
        if (ctx == &g_contexts[i]) return 1;
    return 0;
}

static CUcontext current_context(void) {
    return t_stack.depth > 0 ? t_stack.ctx[t_stack.depth - 1] : NULL;
}

/* ---------------------------------------------------------------------------------------
 * Device memory: a table of live allocations sorted by address.
 * ------------------------------------------------------------------------------------- */
typedef struct allocation {
    uintptr_t base;
    size_t bytes;   /* asked for */
    size_t rounded; /* accounted: bytes rounded up to FAKE_ALIGNMENT */
    int device;
    int free_queued; /* a cuMemFreeAsync of it waits in a stream (deferred mode) */
} allocation;

static pthread_rwlock_t g_mem_lock = PTHREAD_RWLOCK_INITIALIZER;
static allocation *g_allocs;
static size_t g_alloc_count, g_alloc_capacity;
static size_t g_used[FAKE_MAX_DEVICES]; /* sum of rounded sizes per device */
static unsigned long long g_live_bytes;

/* Index of the last allocation whose base is <= address, or g_alloc_count if none. */
static size_t find_floor(uintptr_t address) {
    size_t lo = 0, hi = g_alloc_count; /* first index with base > address lies in [lo, hi] */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g_allocs[mid].base <= address)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == 0 ? g_alloc_count : lo - 1;
}

/* The allocation holding [address, address + bytes), or NULL. */
static allocation *find_range(uintptr_t address, size_t bytes) {
    size_t i = find_floor(address);
    if (i == g_alloc_count) return NULL;
    allocation *a = &g_allocs[i];
    size_t offset = (size_t)(address - a->base);
    if (offset >= a->bytes || bytes > a->bytes - offset) return NULL;
    return a;
}

/* find_range, and on ctx's device when ctx is given; with at_call, not an allocation that a
 * queued cuMemFreeAsync releases (work issued after that free may not use it). */
static const allocation *usable_range(uintptr_t address, size_t bytes, CUcontext ctx,
                                      int at_call) {
    const allocation *a = find_range(address, bytes);
    if (!a || (ctx && a->device != ctx->device) || (at_call && a->free_queued)) return NULL;
    return a;
}

static size_t free_bytes(int device) {
    size_t taken = g_reserved + g_used[device];
    return taken >= g_total ? 0 : g_total - taken;
}

/* Allocate bytesize bytes of device: cuMemAlloc_v2 and cuMemAllocAsync. */
static CUresult mem_reserve(int device, size_t bytesize, CUdeviceptr *dptr) {
    if (bytesize > SIZE_MAX - (FAKE_ALIGNMENT - 1)) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t rounded = (bytesize + FAKE_ALIGNMENT - 1) & ~(FAKE_ALIGNMENT - 1);
    CUresult r = CUDA_SUCCESS;
    pthread_rwlock_wrlock(&g_mem_lock);
    void *p = NULL;
    if (rounded > free_bytes(device)) {
        r = CUDA_ERROR_OUT_OF_MEMORY;
    } else if (g_alloc_count == g_alloc_capacity) {
        size_t capacity = g_alloc_capacity ? g_alloc_capacity * 2 : 64;
        allocation *grown = realloc(g_allocs, capacity * sizeof *grown);
        if (grown) {
            g_allocs = grown;
            g_alloc_capacity = capacity;
        } else {
            r = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    if (r == CUDA_SUCCESS && posix_memalign(&p, FAKE_ALIGNMENT, bytesize) != 0)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) {
        uintptr_t base = (uintptr_t)p;
        size_t i = find_floor(base);
        i = i == g_alloc_count ? 0 : i + 1; /* insert after the last base below */
        memmove(&g_allocs[i + 1], &g_allocs[i], (g_alloc_count - i) * sizeof *g_allocs);
        g_allocs[i] = (allocation){base, bytesize, rounded, device, 0};
        g_alloc_count++;
        g_used[device] += rounded;
        g_live_bytes += bytesize;
        *dptr = (CUdeviceptr)base;
    }
    pthread_rwlock_unlock(&g_mem_lock);
    return r;
}

/* Free the allocation that starts at dptr: cuMemFree_v2, cuMemFreeAsync. */
static CUresult mem_release(CUdeviceptr dptr) {
    uintptr_t base = (uintptr_t)dptr;
    if (base == 0 || (CUdeviceptr)base != dptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    void *p = NULL;
    pthread_rwlock_wrlock(&g_mem_lock);
    size_t i = find_floor(base);
    if (i != g_alloc_count && g_allocs[i].base == base) {
        allocation a = g_allocs[i];
        memmove(&g_allocs[i], &g_allocs[i + 1], (g_alloc_count - i - 1) * sizeof *g_allocs);
        g_alloc_count--;
        g_used[a.device] -= a.rounded;
        g_live_bytes -= a.bytes;
        p = (void *)a.base;
        r = CUDA_SUCCESS;
    }
    if (g_alloc_count == 0) { /* give the table back when nothing is live */
        free(g_allocs);
        g_allocs = NULL;
        g_alloc_capacity = 0;
    }
    pthread_rwlock_unlock(&g_mem_lock);
    free(p);
    return r;
}

long fakecuda_live_allocations(void) {
    pthread_rwlock_rdlock(&g_mem_lock);
    long n = (long)g_alloc_count;
    pthread_rwlock_unlock(&g_mem_lock);
    return n;
}

unsigned long long fakecuda_live_bytes(void) {
    pthread_rwlock_rdlock(&g_mem_lock);
    unsigned long long n = g_live_bytes;
    pthread_rwlock_unlock(&g_mem_lock);
    return n;
}

/* ---------------------------------------------------------------------------------------
 * Streams and events: heap objects, valid while listed in their table. In deferred mode a
 * stream holds the work queued on it; each context has a legacy stream, its default one.
 * ------------------------------------------------------------------------------------- */
typedef struct op op;

struct CUstream_st {
    CUcontext ctx;   /* current when it was created */
    unsigned flags;  /* CU_STREAM_NON_BLOCKING or 0 */
    op *head, *tail; /* queued work, oldest first */
};

struct CUevent_st {
    CUcontext ctx;
    unsigned flags;
    unsigned long long recorded; /* records made; 0: never recorded */
    unsigned long long done;     /* the latest record that ran: complete when == recorded */
    unsigned long long time_ns;  /* CLOCK_MONOTONIC when record `done` ran */
    struct CUstream_st *stream;  /* where the latest record waits, while it does */
    unsigned long long seq;      /* and its number (op.seq) there */
    long queued;                 /* records of it waiting in streams */
};

/* The legacy stream of each context (index: device), set up at load. */
static struct CUstream_st g_legacy[FAKE_MAX_DEVICES];

typedef struct handle_table {
    void **items;
    size_t count, capacity;
} handle_table;

/* Guards both tables, the queues, the events' record state. Taken before g_mem_lock and
 * g_host_lock, never while holding either. */
static pthread_mutex_t g_handle_lock = PTHREAD_MUTEX_INITIALIZER;
static handle_table g_streams, g_events;

/* Index of item in the table, or t->count. Compares addresses only: never dereferences a
 * handle the caller made up. */
static size_t table_find(const handle_table *t, const void *item) {
    size_t i = 0;
    while (i < t->count && t->items[i] != item) i++;
    return i;
}

static int table_add(handle_table *t, void *item) {
    if (t->count == t->capacity) {
        size_t capacity = t->capacity ? t->capacity * 2 : 16;
        void **grown = realloc(t->items, capacity * sizeof *grown);
        if (!grown) return 0;
        t->items = grown;
        t->capacity = capacity;
    }
    t->items[t->count++] = item;
    return 1;
}

static int table_remove(handle_table *t, const void *item) {
    size_t i = table_find(t, item);
    if (i == t->count) return 0;
    t->items[i] = t->items[--t->count];
    if (t->count == 0) { /* give the table back when nothing is live */
        free(t->items);
        *t = (handle_table){0};
    }
    return 1;
}

static long table_count(const handle_table *t) {
    pthread_mutex_lock(&g_handle_lock);
    long n = (long)t->count;
    pthread_mutex_unlock(&g_handle_lock);
    return n;
}

long fakecuda_live_streams(void) { return table_count(&g_streams); }

long fakecuda_live_events(void) { return table_count(&g_events); }

static int is_default_stream(CUstream s) {
    return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD;
}

/* The stream named by handle h, into *out: a default stream names the current context's
 * legacy stream. g_handle_lock held. */
static CUresult find_stream(CUstream h, struct CUstream_st **out) {
    if (is_default_stream(h)) {
        CUcontext ctx = current_context();
        if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
        *out = &g_legacy[ctx->device];
        return CUDA_SUCCESS;
    }
    if (table_find(&g_streams, h) == g_streams.count) return CUDA_ERROR_INVALID_HANDLE;
    *out = h;
    return CUDA_SUCCESS;
}

/* The live event h, or NULL. g_handle_lock held. */
static struct CUevent_st *find_event(CUevent h) {
    return table_find(&g_events, h) != g_events.count ? h : NULL;
}

/* Whether work may be enqueued on s; *owner (if asked) gets its context: the current one for
 * a default stream. */
static CUresult check_stream(CUstream s, CUcontext *owner) {
    struct CUstream_st *st;
    pthread_mutex_lock(&g_handle_lock);
    CUresult r = find_stream(s, &st);
    if (r == CUDA_SUCCESS && owner) *owner = st->ctx;
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

/* ---------------------------------------------------------------------------------------
 * Page-locked host memory: cuMemHostAlloc'd blocks and cuMemHostRegister'd ranges.
 * ------------------------------------------------------------------------------------- */
#define FAKE_HOST_ALIGNMENT ((size_t)4096)

typedef struct host_range {
    uintptr_t base;
    size_t bytes;
    int allocated; /* 1: cuMemHostAlloc, 0: cuMemHostRegister */
} host_range;

static pthread_mutex_t g_host_lock = PTHREAD_MUTEX_INITIALIZER;
static host_range *g_host;
static size_t g_host_count, g_host_capacity;
static long g_host_allocations, g_registrations;
static unsigned long long g_host_bytes; /* of the cuMemHostAlloc'd blocks */

/* Index of the range starting at base, or g_host_count. */
static size_t host_find(uintptr_t base) {
    size_t i = 0;
    while (i < g_host_count && g_host[i].base != base) i++;
    return i;
}

/* Whether [base, base + bytes) overlaps a listed range; base + bytes must not overflow. */
static int host_overlaps(uintptr_t base, size_t bytes) {
    for (size_t i = 0; i < g_host_count; i++)
        if (base < g_host[i].base + g_host[i].bytes && g_host[i].base < base + bytes) return 1;
    return 0;
}

static int host_add(host_range range) {
    if (g_host_count == g_host_capacity) {
        size_t capacity = g_host_capacity ? g_host_capacity * 2 : 16;
        host_range *grown = realloc(g_host, capacity * sizeof *grown);
        if (!grown) return 0;
        g_host = grown;
        g_host_capacity = capacity;
    }
    g_host[g_host_count++] = range;
    if (range.allocated) {
        g_host_allocations++;
        g_host_bytes += range.bytes;
    } else {
        g_registrations++;
    }
    return 1;
}

static void host_remove(size_t i) {
    if (g_host[i].allocated) {
        g_host_allocations--;
        g_host_bytes -= g_host[i].bytes;
    } else {
        g_registrations--;
    }
    g_host[i] = g_host[--g_host_count];
    if (g_host_count == 0) {
        free(g_host);
        g_host = NULL;
        g_host_capacity = 0;
    }
}

long fakecuda_live_host_allocations(void) {
    pthread_mutex_lock(&g_host_lock);
    long n = g_host_allocations;
    pthread_mutex_unlock(&g_host_lock);
    return n;
}

unsigned long long fakecuda_live_host_bytes(void) {
    pthread_mutex_lock(&g_host_lock);
    unsigned long long n = g_host_bytes;
    pthread_mutex_unlock(&g_host_lock);
    return n;
}

long fakecuda_live_registrations(void) {
    pthread_mutex_lock(&g_host_lock);
    long n = g_registrations;
    pthread_mutex_unlock(&g_host_lock);
    return n;
}

/* ---------------------------------------------------------------------------------------
 * Peer access enabled by cuCtxEnablePeerAccess: [from (current context)][to (peer)].
 * ------------------------------------------------------------------------------------- */
static pthread_mutex_t g_peer_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char g_peer_enabled[FAKE_MAX_DEVICES][FAKE_MAX_DEVICES];

int fakecuda_peer_enabled(int from, int to) {
    if (from < 0 || from >= g_devices || to < 0 || to >= g_devices) return -1;
    pthread_mutex_lock(&g_peer_lock);
    int enabled = g_peer_enabled[from][to];
    pthread_mutex_unlock(&g_peer_lock);
    return enabled;
}

/* ---------------------------------------------------------------------------------------
 * Work on streams: an op is one copy, memset, free or event record. Immediate mode does it
 * when it is issued; deferred mode queues it on its stream until something forces it. The
 * queues and the events' record state are guarded by g_handle_lock.
 * ------------------------------------------------------------------------------------- */
typedef enum op_kind { OP_HTOD, OP_DTOH, OP_DTOD, OP_MEMSET, OP_FREE, OP_RECORD } op_kind;

static const char *const g_op_names[] = {"cuMemcpyHtoDAsync", "cuMemcpyDtoHAsync",
                                         "cuMemcpyDtoDAsync/cuMemcpyPeerAsync",
                                         "cuMemsetD8Async", "cuMemFreeAsync", "cuEventRecord"};

struct op {
    op *next;
    unsigned long long seq;     /* enqueue order, across all streams (from 1) */
    op_kind kind;
    uintptr_t dst, src;         /* device or host addresses, as kind says; OP_FREE: dst */
    size_t bytes;
    CUcontext dst_ctx, src_ctx; /* a peer copy: the devices its ranges must lie on */
    unsigned char value;        /* OP_MEMSET */
    void *snapshot;             /* owned copy of a pageable HtoD source; src points here */
    struct CUevent_st *event;   /* OP_RECORD; NULL once the event is destroyed */
    unsigned long long record;  /* which record of the event */
};

static unsigned long long g_seq; /* ops queued so far */
static long g_queued;            /* ops waiting */

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Whether [p, p + n) lies in one cuMemHostAlloc block or cuMemHostRegister_v2 range: host
 * memory the device reads or writes itself, after the call that named it returned. */
static int host_pinned(uintptr_t p, size_t n) {
    int pinned = 0;
    pthread_mutex_lock(&g_host_lock);
    for (size_t i = 0; i < g_host_count && !pinned; i++) {
        const host_range *h = &g_host[i];
        pinned = p >= h->base && p - h->base <= h->bytes && n <= h->bytes - (p - h->base);
    }
    pthread_mutex_unlock(&g_host_lock);
    return pinned;
}

/* Whether a copy's or memset's memory is usable: host pointers set, device ranges inside
 * live allocations (see usable_range). g_mem_lock held. */
static int op_memory_ok(const op *o, int at_call) {
    switch (o->kind) {
    case OP_HTOD: return o->src && usable_range(o->dst, o->bytes, NULL, at_call);
    case OP_DTOH: return o->dst && usable_range(o->src, o->bytes, NULL, at_call);
    case OP_DTOD:
        return usable_range(o->dst, o->bytes, o->dst_ctx, at_call) &&
               usable_range(o->src, o->bytes, o->src_ctx, at_call);
    case OP_MEMSET: return usable_range(o->dst, o->bytes, NULL, at_call) != NULL;
    default: return 1;
    }
}

/* Check a copy or memset as its call does, moving nothing. */
static CUresult op_check(const op *o) {
    if (o->bytes == 0) return CUDA_SUCCESS;
    pthread_rwlock_rdlock(&g_mem_lock);
    int ok = op_memory_ok(o, 1);
    pthread_rwlock_unlock(&g_mem_lock);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Do a copy, memset or free: check its memory, then move the bytes while no free can run
 * (memmove: overlapping device ranges are fine). at_call: in the call that issued it. */
static CUresult op_do(const op *o, int at_call) {
    if (o->kind == OP_FREE) return mem_release((CUdeviceptr)o->dst);
    if (o->bytes == 0) return CUDA_SUCCESS;
    pthread_rwlock_rdlock(&g_mem_lock);
    int ok = op_memory_ok(o, at_call);
    if (ok && o->kind == OP_MEMSET)
        memset((void *)o->dst, o->value, o->bytes);
    else if (ok)
        memmove((void *)o->dst, (const void *)o->src, o->bytes);
    pthread_rwlock_unlock(&g_mem_lock);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Deferred cuMemFreeAsync: mark the allocation that starts at dptr as released by a queued
 * free, so that no later work may use it or free it again. */
static CUresult mark_free(CUdeviceptr dptr) {
    uintptr_t base = (uintptr_t)dptr;
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    pthread_rwlock_wrlock(&g_mem_lock);
    size_t i = find_floor(base);
    if (base != 0 && i != g_alloc_count && g_allocs[i].base == base &&
        !g_allocs[i].free_queued) {
        g_allocs[i].free_queued = 1;
        r = CUDA_SUCCESS;
    }
    pthread_rwlock_unlock(&g_mem_lock);
    return r;
}

static int is_legacy(const struct CUstream_st *s) { return s == &g_legacy[s->ctx->device]; }

/* The number of s's newest op, for "all of s's work": the legacy stream's work includes
 * every blocking stream's, queued later or not. */
static unsigned long long last_seq(const struct CUstream_st *s) {
    if (is_legacy(s)) return ULLONG_MAX;
    return s->tail ? s->tail->seq : 0;
}

/* Every stream that can hold work: the legacy ones, then the live ones. */
static size_t stream_count(void) { return (size_t)g_devices + g_streams.count; }

static struct CUstream_st *stream_at(size_t i) {
    return i < (size_t)g_devices ? &g_legacy[i] : g_streams.items[i - (size_t)g_devices];
}

static void push(struct CUstream_st *s, op *o) {
    o->seq = ++g_seq;
    o->next = NULL;
    if (s->tail)
        s->tail->next = o;
    else
        s->head = o;
    s->tail = o;
    g_queued++;
}

/* An event record ran: it completes the event if it is the event's latest record. */
static void record_ran(const op *o) {
    struct CUevent_st *e = o->event;
    if (!e) return; /* destroyed meanwhile */
    e->queued--;
    if (o->record == e->recorded) {
        e->done = o->record;
        e->time_ns = now_ns();
        e->stream = NULL;
    }
}

/* Run and free the oldest op of s. A copy that finds its device memory released when it runs
 * (freed first in another stream's order) fails as on a GPU: an illegal address, sticky. */
static CUresult run_head(struct CUstream_st *s) {
    op *o = s->head;
    s->head = o->next;
    if (!s->head) s->tail = NULL;
    g_queued--;
    CUresult r = CUDA_SUCCESS;
    if (o->kind == OP_RECORD) {
        record_ran(o);
    } else if (op_do(o, 0) != CUDA_SUCCESS) {
        r = CUDA_ERROR_ILLEGAL_ADDRESS;
        fprintf(stderr,
                "fakecuda: a queued %s (dst 0x%llx, src 0x%llx, %zu bytes) found device memory "
                "released before it ran: CUDA_ERROR_ILLEGAL_ADDRESS, sticky\n",
                g_op_names[o->kind], (unsigned long long)o->dst, (unsigned long long)o->src,
                o->bytes);
        set_sticky(r);
    }
    free(o->snapshot);
    free(o);
    return r;
}

/* Which queued work a run does: the ops numbered up to upto of stream `only`, or else of the
 * streams of ctx (NULL: of every context), with blocking_only only of the legacy stream and
 * the streams made without CU_STREAM_NON_BLOCKING. */
typedef struct scope {
    const struct CUstream_st *only;
    CUcontext ctx;
    int blocking_only;
    unsigned long long upto;
} scope;

static int in_scope(const struct CUstream_st *s, const scope *sc) {
    if (sc->only) return s == sc->only;
    return (!sc->ctx || s->ctx == sc->ctx) &&
           (!sc->blocking_only || !(s->flags & CU_STREAM_NON_BLOCKING));
}

/* Run the scope's work in the order it was enqueued, across streams too; return the first
 * error. */
static CUresult run_scope(const scope *sc) {
    CUresult first = CUDA_SUCCESS;
    while (g_queued > 0) {
        struct CUstream_st *next = NULL;
        for (size_t i = 0; i < stream_count(); i++) {
            struct CUstream_st *s = stream_at(i);
            if (s->head && s->head->seq <= sc->upto && in_scope(s, sc) &&
                (!next || s->head->seq < next->head->seq))
                next = s;
        }
        if (!next) break;
        CUresult r = run_head(next);
        if (first == CUDA_SUCCESS) first = r;
    }
    return first;
}

/* Run s's work numbered up to upto. The legacy stream and the blocking streams of a context
 * are ordered with each other: for one of them, run theirs too. */
static CUresult run_stream(const struct CUstream_st *s, unsigned long long upto) {
    scope sc = {.upto = upto};
    if (s->flags & CU_STREAM_NON_BLOCKING) {
        sc.only = s;
    } else {
        sc.ctx = s->ctx;
        sc.blocking_only = 1;
    }
    return run_scope(&sc);
}

/* Deferred mode: run what a synchronous call of ctx is ordered after, its legacy stream and
 * blocking streams. */
static CUresult run_legacy(CUcontext ctx) {
    if (!g_deferred) return CUDA_SUCCESS;
    pthread_mutex_lock(&g_handle_lock);
    CUresult r = run_stream(&g_legacy[ctx->device], ULLONG_MAX);
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

/* Deferred mode: hold the queues and run all their work before memory is released, so that
 * no queued work touches it; release_end() lets go. */
static CUresult release_begin(void) {
    if (!g_deferred) return CUDA_SUCCESS;
    pthread_mutex_lock(&g_handle_lock);
    scope all = {.upto = ULLONG_MAX};
    return run_scope(&all);
}

static void release_end(void) {
    if (g_deferred) pthread_mutex_unlock(&g_handle_lock);
}

/* Queue a checked copy or memset on s - but host memory the device cannot reach is handled
 * as the real driver handles it: a pageable HtoD source is copied now, a pageable DtoH copy
 * waits for the stream's work and is done now. */
static CUresult queue_op(struct CUstream_st *s, const op *proto) {
    if (proto->kind == OP_DTOH && !host_pinned(proto->dst, proto->bytes)) {
        CUresult r = run_stream(s, g_seq);
        return r != CUDA_SUCCESS ? r : op_do(proto, 1);
    }
    op *o = malloc(sizeof *o);
    if (!o) return CUDA_ERROR_OUT_OF_MEMORY;
    *o = *proto;
    if (o->kind == OP_HTOD && !host_pinned(o->src, o->bytes)) {
        o->snapshot = malloc(o->bytes);
        if (!o->snapshot) {
            free(o);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        memcpy(o->snapshot, (const void *)o->src, o->bytes);
        o->src = (uintptr_t)o->snapshot;
    }
    push(s, o);
    return CUDA_SUCCESS;
}

/* Issue a copy or memset on stream h: checked, then done now (immediate mode) or queued. */
static CUresult submit(CUstream h, const op *o) {
    if (!g_deferred) {
        CUresult r = check_stream(h, NULL);
        return r != CUDA_SUCCESS ? r : op_do(o, 1);
    }
    struct CUstream_st *s = NULL;
    pthread_mutex_lock(&g_handle_lock);
    CUresult r = find_stream(h, &s);
    if (r == CUDA_SUCCESS) r = op_check(o);
    if (r == CUDA_SUCCESS && o->bytes > 0) r = queue_op(s, o);
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

/* A destroyed event's records still queued complete nothing. */
static void forget_event(const struct CUevent_st *e) {
    if (e->queued == 0) return;
    for (size_t i = 0; i < stream_count(); i++)
        for (op *o = stream_at(i)->head; o; o = o->next)
            if (o->event == e) o->event = NULL;
}

long fakecuda_queued(void) {
    pthread_mutex_lock(&g_handle_lock);
    long n = g_queued;
    pthread_mutex_unlock(&g_handle_lock);
    return n;
}

void fakecuda_run_all(void) {
    pthread_mutex_lock(&g_handle_lock);
    scope all = {.upto = ULLONG_MAX};
    run_scope(&all); /* a failure is sticky and reported on stderr */
    pthread_mutex_unlock(&g_handle_lock);
}

/* ---------------------------------------------------------------------------------------
 * Load-time configuration.
 * ------------------------------------------------------------------------------------- */
static void load_injections(const char *spec) {
    char *copy = strdup(spec);
    if (!copy) return;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *fields[5] = {0};
        int n = 0;
        char *rest = item;
        while (n < 5) {
            fields[n++] = rest;
            char *colon = strchr(rest, ':');
            if (!colon) break;
            *colon = '\0';
            rest = colon + 1;
        }
        int fn = n >= 3 ? fn_lookup(fields[0]) : -1;
        int error = 0;
        char *end = NULL;
        long nth = n >= 3 ? strtol(fields[2], &end, 0) : -1;
        long sticky = 0;
        int ok = n >= 3 && n <= 4 && fn != -1 && parse_error(fields[1], &error) && *fields[2] &&
                 *end == '\0' && nth >= 0;
        if (ok && n == 4) {
            sticky = strtol(fields[3], &end, 0);
            ok = *fields[3] && *end == '\0';
        }
        if (!ok) {
            fprintf(stderr,
                    "fakecuda: FAKECUDA_FAIL='%s': an item is not function:error:nth[:sticky] "
                    "(function '%s'); that item is ignored\n",
                    spec, fields[0] ? fields[0] : "");
            continue;
        }
        inject(fn, error, nth, sticky != 0);
    }
    free(copy);
}

__attribute__((constructor)) static void fakecuda_load(void) {
    const char *v;
    unsigned long long n;
    if ((v = getenv("FAKECUDA_DEVICES")) && *v) {
        if (parse_size(v, FAKE_MAX_DEVICES, &n))
            g_devices = (int)n;
        else
            fprintf(stderr, "fakecuda: FAKECUDA_DEVICES='%s' is not 0..%d; using %d\n", v,
                    FAKE_MAX_DEVICES, g_devices);
    }
    if ((v = getenv("FAKECUDA_TOTAL_BYTES")) && *v) {
        if (parse_size(v, SIZE_MAX, &n) && n > 0)
            g_total = (size_t)n;
        else
            fprintf(stderr, "fakecuda: FAKECUDA_TOTAL_BYTES='%s' is not a byte count; using %zu\n",
                    v, g_total);
    }
    g_reserved = g_total / 16 < FAKE_DEFAULT_RESERVED ? g_total / 16 : FAKE_DEFAULT_RESERVED;
    if ((v = getenv("FAKECUDA_RESERVED_BYTES")) && *v) {
        if (parse_size(v, SIZE_MAX, &n))
            g_reserved = n < g_total ? (size_t)n : g_total;
        else
            fprintf(stderr,
                    "fakecuda: FAKECUDA_RESERVED_BYTES='%s' is not a byte count; using %zu\n", v,
                    g_reserved);
    }
    if ((v = getenv("FAKECUDA_DRIVER_VERSION")) && *v) {
        if (parse_size(v, INT_MAX, &n))
            g_driver_version = (int)n;
        else
            fprintf(stderr, "fakecuda: FAKECUDA_DRIVER_VERSION='%s' is not a number; using %d\n",
                    v, g_driver_version);
    }
    if ((v = getenv("FAKECUDA_INIT_ERROR")) && *v) {
        if (!parse_error(v, &g_init_error))
            fprintf(stderr, "fakecuda: FAKECUDA_INIT_ERROR='%s' is not a CUresult; ignored\n", v);
    }
    if ((v = getenv("FAKECUDA_PEER")) && *v) {
        if (parse_size(v, 1, &n))
            g_peer = (int)n;
        else
            fprintf(stderr, "fakecuda: FAKECUDA_PEER='%s' is not 0 or 1; using %d\n", v, g_peer);
    }
    if ((v = getenv("FAKECUDA_ASYNC")) && *v) {
        if (strcmp(v, "deferred") == 0)
            g_deferred = 1;
        else if (strcmp(v, "immediate") != 0)
            fprintf(stderr,
                    "fakecuda: FAKECUDA_ASYNC='%s' is not immediate or deferred; using immediate\n",
                    v);
    }
    for (int i = 0; i < FAKE_MAX_DEVICES; i++) {
        g_contexts[i].device = i;
        g_legacy[i].ctx = &g_contexts[i];
    }
    if ((v = getenv("FAKECUDA_FAIL")) && *v) load_injections(v);
}

/* ---------------------------------------------------------------------------------------
 * The driver API.
 * ------------------------------------------------------------------------------------- */
#define GATE(fn)                          \
    do {                                  \
        CUresult gate_error_;             \
        if (gate((fn), &gate_error_)) return gate_error_; \
    } while (0)

/* GATE for a function that creates something: an injected "success" hands out 0 / NULL. */
#define GATE_CREATE(fn, out)                                          \
    do {                                                              \
        CUresult gate_error_;                                         \
        if (gate((fn), &gate_error_)) {                               \
            if (gate_error_ == CUDA_SUCCESS && (out)) *(out) = 0;    \
            return gate_error_;                                       \
        }                                                             \
    } while (0)

static int initialized(void) { return __atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE); }

#define NEED_INIT()                                          \
    do {                                                     \
        if (!initialized()) return CUDA_ERROR_NOT_INITIALIZED; \
    } while (0)

#define NEED_DEVICE(dev)                                                   \
    do {                                                                   \
        if ((dev) < 0 || (dev) >= g_devices) return CUDA_ERROR_INVALID_DEVICE; \
    } while (0)

CUresult CUDAAPI cuInit(unsigned int Flags) {
    GATE(FN_INIT);
    if (Flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (g_init_error != 0) return (CUresult)g_init_error;
    __atomic_store_n(&g_initialized, 1, __ATOMIC_RELEASE);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDriverGetVersion(int *driverVersion) {
    GATE(FN_DRIVER_GET_VERSION);
    if (!driverVersion) return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = g_driver_version;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetCount(int *count) {
    GATE(FN_DEVICE_GET_COUNT);
    NEED_INIT();
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = g_devices;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGet(CUdevice *device, int ordinal) {
    GATE(FN_DEVICE_GET);
    NEED_INIT();
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    NEED_DEVICE(ordinal);
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetName(char *name, int len, CUdevice dev) {
    GATE(FN_DEVICE_GET_NAME);
    NEED_INIT();
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    NEED_DEVICE(dev);
    snprintf(name, (size_t)len, "Fake CUDA Device %d", dev);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
    GATE(FN_DEVICE_GET_UUID);
    NEED_INIT();
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    NEED_DEVICE(dev);
    unsigned char b[16] = {0xfa, 0xce, 0xcd, 0xa0, 0x00, 0x00, 0x40, 0x00,
                           0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    b[15] = (unsigned char)dev;
    memcpy(uuid->bytes, b, sizeof b);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetPCIBusId(char *pciBusId, int len, CUdevice dev) {
    GATE(FN_DEVICE_GET_PCI_BUS_ID);
    NEED_INIT();
    if (!pciBusId || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    NEED_DEVICE(dev);
    snprintf(pciBusId, (size_t)len, "0000:%02X:00.0", (unsigned)dev);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    GATE(FN_DEVICE_TOTAL_MEM);
    NEED_INIT();
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    NEED_DEVICE(dev);
    *bytes = g_total;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
    GATE(FN_DEVICE_GET_ATTRIBUTE);
    NEED_INIT();
    if (!pi || (int)attrib <= 0 || (int)attrib >= (int)CU_DEVICE_ATTRIBUTE_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    NEED_DEVICE(dev);
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *pi = 0; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *pi = 32; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *pi = 132; break;
    case CU_DEVICE_ATTRIBUTE_ECC_ENABLED: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *pi = dev; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *pi = 5120; break;
    default: *pi = 0; break;
    }
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    GATE(FN_PRIMARY_CTX_RETAIN);
    NEED_INIT();
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    NEED_DEVICE(dev);
    __atomic_add_fetch(&g_retains[dev], 1, __ATOMIC_RELAXED);
    *pctx = &g_contexts[dev];
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetCurrent(CUcontext *pctx) {
    GATE(FN_CTX_GET_CURRENT);
    NEED_INIT();
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    *pctx = current_context();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPushCurrent_v2(CUcontext ctx) {
    GATE(FN_CTX_PUSH_CURRENT);
    NEED_INIT();
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (!is_fake_context(ctx) || t_stack.depth == FAKE_STACK_DEPTH)
        return CUDA_ERROR_INVALID_CONTEXT;
    t_stack.ctx[t_stack.depth++] = ctx;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPopCurrent_v2(CUcontext *pctx) {
    GATE(FN_CTX_POP_CURRENT);
    NEED_INIT();
    if (t_stack.depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext ctx = t_stack.ctx[--t_stack.depth];
    if (pctx) *pctx = ctx;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    GATE_CREATE(FN_MEM_ALLOC, dptr);
    NEED_INIT();
    CUcontext ctx = current_context();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if (!dptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
    return mem_reserve(ctx->device, bytesize, dptr);
}

CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr) {
    GATE(FN_MEM_FREE);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    CUresult r = release_begin();
    if (r == CUDA_SUCCESS) r = mem_release(dptr);
    release_end();
    return r;
}

/* A synchronous copy or memset of the current context: after the work it is ordered with,
 * done now. */
static CUresult sync_op(const op *o) {
    NEED_INIT();
    CUcontext ctx = current_context();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    CUresult r = run_legacy(ctx);
    return r != CUDA_SUCCESS ? r : op_do(o, 1);
}

CUresult CUDAAPI cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount) {
    GATE(FN_MEMCPY_HTOD);
    return sync_op(&(op){.kind = OP_HTOD, .dst = (uintptr_t)dstDevice,
                         .src = (uintptr_t)srcHost, .bytes = ByteCount});
}

CUresult CUDAAPI cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount) {
    GATE(FN_MEMCPY_DTOH);
    return sync_op(&(op){.kind = OP_DTOH, .dst = (uintptr_t)dstHost,
                         .src = (uintptr_t)srcDevice, .bytes = ByteCount});
}

CUresult CUDAAPI cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N) {
    GATE(FN_MEMSET_D8);
    return sync_op(&(op){.kind = OP_MEMSET, .dst = (uintptr_t)dstDevice, .value = uc, .bytes = N});
}

CUresult CUDAAPI cuCtxSynchronize(void) {
    GATE(FN_CTX_SYNCHRONIZE);
    NEED_INIT();
    CUcontext ctx = current_context();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&g_handle_lock);
    scope every_stream = {.ctx = ctx, .upto = ULLONG_MAX};
    CUresult r = run_scope(&every_stream);
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

CUresult CUDAAPI cuMemGetInfo_v2(size_t *free_mem, size_t *total_mem) {
    GATE(FN_MEM_GET_INFO);
    NEED_INIT();
    CUcontext ctx = current_context();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if (!free_mem || !total_mem) return CUDA_ERROR_INVALID_VALUE;
    pthread_rwlock_rdlock(&g_mem_lock);
    *free_mem = free_bytes(ctx->device);
    *total_mem = g_total;
    pthread_rwlock_unlock(&g_mem_lock);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorName(CUresult error, const char **pStr) {
    GATE(FN_GET_ERROR_NAME);
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    *pStr = error_name((int)error);
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---------------------------------------------------------------------------------------
 * Context binding and peer access.
 * ------------------------------------------------------------------------------------- */
CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx) {
    GATE(FN_CTX_SET_CURRENT);
    NEED_INIT();
    if (!ctx) { /* pops the top, a no-op on an empty stack */
        if (t_stack.depth > 0) t_stack.depth--;
        return CUDA_SUCCESS;
    }
    if (!is_fake_context(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    if (t_stack.depth == 0) t_stack.depth = 1;
    t_stack.ctx[t_stack.depth - 1] = ctx;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceCanAccessPeer(int *canAccessPeer, CUdevice dev, CUdevice peerDev) {
    GATE(FN_DEVICE_CAN_ACCESS_PEER);
    NEED_INIT();
    if (!canAccessPeer) return CUDA_ERROR_INVALID_VALUE;
    NEED_DEVICE(dev);
    NEED_DEVICE(peerDev);
    *canAccessPeer = g_peer && dev != peerDev; /* the real driver answers 0 for dev itself */
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxEnablePeerAccess(CUcontext peerContext, unsigned int Flags) {
    GATE(FN_CTX_ENABLE_PEER_ACCESS);
    NEED_INIT();
    if (Flags != 0) return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx = current_context();
    if (!ctx || !is_fake_context(peerContext)) return CUDA_ERROR_INVALID_CONTEXT;
    int from = ctx->device, to = peerContext->device;
    if (!g_peer || from == to) return CUDA_ERROR_PEER_ACCESS_UNSUPPORTED;
    CUresult r = CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED;
    pthread_mutex_lock(&g_peer_lock);
    if (!g_peer_enabled[from][to]) {
        g_peer_enabled[from][to] = 1;
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&g_peer_lock);
    return r;
}

/* ---------------------------------------------------------------------------------------
 * Page-locked host memory.
 * ------------------------------------------------------------------------------------- */
CUresult CUDAAPI cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags) {
    GATE_CREATE(FN_MEM_HOST_ALLOC, pp);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    if (!pp || bytesize == 0 ||
        (Flags & ~(unsigned)(CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP |
                             CU_MEMHOSTALLOC_WRITECOMBINED)) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    void *p = NULL;
    if (posix_memalign(&p, FAKE_HOST_ALIGNMENT, bytesize) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&g_host_lock);
    int added = host_add((host_range){(uintptr_t)p, bytesize, 1});
    pthread_mutex_unlock(&g_host_lock);
    if (!added) {
        free(p);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *pp = p;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemFreeHost(void *p) {
    GATE(FN_MEM_FREE_HOST);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = release_begin();
    if (r == CUDA_SUCCESS) {
        r = CUDA_ERROR_INVALID_VALUE;
        pthread_mutex_lock(&g_host_lock);
        size_t i = host_find((uintptr_t)p);
        if (i != g_host_count && g_host[i].allocated) {
            host_remove(i);
            r = CUDA_SUCCESS;
        }
        pthread_mutex_unlock(&g_host_lock);
    }
    release_end();
    if (r == CUDA_SUCCESS) free(p);
    return r;
}

CUresult CUDAAPI cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags) {
    GATE(FN_MEM_HOST_REGISTER);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    uintptr_t base = (uintptr_t)p;
    if (!p || bytesize == 0 || bytesize > UINTPTR_MAX - base ||
        (Flags & ~(unsigned)(CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP |
                             CU_MEMHOSTREGISTER_IOMEMORY | CU_MEMHOSTREGISTER_READ_ONLY)) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&g_host_lock);
    if (host_overlaps(base, bytesize))
        r = CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    else if (!host_add((host_range){base, bytesize, 0}))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_unlock(&g_host_lock);
    return r;
}

CUresult CUDAAPI cuMemHostUnregister(void *p) {
    GATE(FN_MEM_HOST_UNREGISTER);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = release_begin();
    if (r == CUDA_SUCCESS) {
        r = CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
        pthread_mutex_lock(&g_host_lock);
        size_t i = host_find((uintptr_t)p);
        if (i != g_host_count && !g_host[i].allocated) {
            host_remove(i);
            r = CUDA_SUCCESS;
        }
        pthread_mutex_unlock(&g_host_lock);
    }
    release_end();
    return r;
}

/* ---------------------------------------------------------------------------------------
 * Device-to-device and peer copies; work on streams: async copies and memset, stream-ordered
 * allocation.
 * ------------------------------------------------------------------------------------- */
CUresult CUDAAPI cuMemcpyDtoD_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount) {
    GATE(FN_MEMCPY_DTOD);
    return sync_op(&(op){.kind = OP_DTOD, .dst = (uintptr_t)dstDevice,
                         .src = (uintptr_t)srcDevice, .bytes = ByteCount});
}

CUresult CUDAAPI cuMemcpyPeer(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice,
                              CUcontext srcContext, size_t ByteCount) {
    GATE(FN_MEMCPY_PEER);
    NEED_INIT();
    if (!is_fake_context(dstContext) || !is_fake_context(srcContext))
        return CUDA_ERROR_INVALID_CONTEXT;
    CUresult r = run_legacy(dstContext);
    if (r == CUDA_SUCCESS) r = run_legacy(srcContext);
    if (r != CUDA_SUCCESS) return r;
    return op_do(&(op){.kind = OP_DTOD, .dst = (uintptr_t)dstDevice, .src = (uintptr_t)srcDevice,
                       .bytes = ByteCount, .dst_ctx = dstContext, .src_ctx = srcContext},
                 1);
}

/* An async copy or memset: a current context, then its stream and memory checked. */
static CUresult async_op(CUstream hStream, const op *o) {
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    return submit(hStream, o);
}

CUresult CUDAAPI cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost,
                                      size_t ByteCount, CUstream hStream) {
    GATE(FN_MEMCPY_HTOD_ASYNC);
    return async_op(hStream, &(op){.kind = OP_HTOD, .dst = (uintptr_t)dstDevice,
                                   .src = (uintptr_t)srcHost, .bytes = ByteCount});
}

CUresult CUDAAPI cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount,
                                      CUstream hStream) {
    GATE(FN_MEMCPY_DTOH_ASYNC);
    return async_op(hStream, &(op){.kind = OP_DTOH, .dst = (uintptr_t)dstHost,
                                   .src = (uintptr_t)srcDevice, .bytes = ByteCount});
}

CUresult CUDAAPI cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                      size_t ByteCount, CUstream hStream) {
    GATE(FN_MEMCPY_DTOD_ASYNC);
    return async_op(hStream, &(op){.kind = OP_DTOD, .dst = (uintptr_t)dstDevice,
                                   .src = (uintptr_t)srcDevice, .bytes = ByteCount});
}

CUresult CUDAAPI cuMemcpyPeerAsync(CUdeviceptr dstDevice, CUcontext dstContext,
                                   CUdeviceptr srcDevice, CUcontext srcContext, size_t ByteCount,
                                   CUstream hStream) {
    GATE(FN_MEMCPY_PEER_ASYNC);
    NEED_INIT();
    if (!is_fake_context(dstContext) || !is_fake_context(srcContext))
        return CUDA_ERROR_INVALID_CONTEXT;
    return submit(hStream, &(op){.kind = OP_DTOD, .dst = (uintptr_t)dstDevice,
                                 .src = (uintptr_t)srcDevice, .bytes = ByteCount,
                                 .dst_ctx = dstContext, .src_ctx = srcContext});
}

CUresult CUDAAPI cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N,
                                 CUstream hStream) {
    GATE(FN_MEMSET_D8_ASYNC);
    return async_op(hStream,
                    &(op){.kind = OP_MEMSET, .dst = (uintptr_t)dstDevice, .value = uc, .bytes = N});
}

CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    GATE_CREATE(FN_MEM_ALLOC_ASYNC, dptr);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext owner = NULL;
    CUresult r = check_stream(hStream, &owner);
    if (r != CUDA_SUCCESS) return r;
    if (!dptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
    return mem_reserve(owner->device, bytesize, dptr); /* usable by the stream's work at once */
}

CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
    GATE(FN_MEM_FREE_ASYNC);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    if (!g_deferred) {
        CUresult r = check_stream(hStream, NULL);
        return r != CUDA_SUCCESS ? r : mem_release(dptr);
    }
    struct CUstream_st *s = NULL;
    op *o = NULL;
    pthread_mutex_lock(&g_handle_lock);
    CUresult r = find_stream(hStream, &s);
    if (r == CUDA_SUCCESS && !(o = calloc(1, sizeof *o))) r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) r = mark_free(dptr);
    if (r == CUDA_SUCCESS) {
        o->kind = OP_FREE;
        o->dst = (uintptr_t)dptr;
        push(s, o);
        o = NULL;
    }
    pthread_mutex_unlock(&g_handle_lock);
    free(o);
    return r;
}

/* ---------------------------------------------------------------------------------------
 * Streams and events. Waiting runs the queued work it waits for (deferred mode).
 * ------------------------------------------------------------------------------------- */
CUresult CUDAAPI cuStreamCreate(CUstream *phStream, unsigned int Flags) {
    GATE_CREATE(FN_STREAM_CREATE, phStream);
    NEED_INIT();
    CUcontext ctx = current_context();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if (!phStream || (Flags & ~(unsigned)CU_STREAM_NON_BLOCKING) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUstream_st *s = calloc(1, sizeof *s);
    if (!s) return CUDA_ERROR_OUT_OF_MEMORY;
    s->ctx = ctx;
    s->flags = Flags;
    pthread_mutex_lock(&g_handle_lock);
    int added = table_add(&g_streams, s);
    pthread_mutex_unlock(&g_handle_lock);
    if (!added) {
        free(s);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *phStream = s;
    return CUDA_SUCCESS;
}

/* Runs the stream's queued work first (destroyed even if that work failed). */
CUresult CUDAAPI cuStreamDestroy_v2(CUstream hStream) {
    GATE(FN_STREAM_DESTROY);
    NEED_INIT();
    CUresult r = CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&g_handle_lock);
    /* never a default stream: the table holds none */
    struct CUstream_st *s = table_find(&g_streams, hStream) != g_streams.count ? hStream : NULL;
    if (s) {
        r = run_stream(s, last_seq(s));
        table_remove(&g_streams, s);
    }
    pthread_mutex_unlock(&g_handle_lock);
    free(s);
    return r;
}

CUresult CUDAAPI cuStreamSynchronize(CUstream hStream) {
    GATE(FN_STREAM_SYNCHRONIZE);
    NEED_INIT();
    struct CUstream_st *s;
    pthread_mutex_lock(&g_handle_lock);
    CUresult r = find_stream(hStream, &s);
    if (r == CUDA_SUCCESS) r = run_stream(s, last_seq(s));
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

CUresult CUDAAPI cuStreamGetCtx(CUstream hStream, CUcontext *pctx) {
    GATE(FN_STREAM_GET_CTX);
    NEED_INIT();
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    return check_stream(hStream, pctx);
}

/* A wait makes the event's stream run up to its record at once: the simplest correct
 * dependency (the waiting stream's later work then finds it done). */
CUresult CUDAAPI cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags) {
    GATE(FN_STREAM_WAIT_EVENT);
    NEED_INIT();
    if ((Flags & ~(unsigned)CU_EVENT_WAIT_EXTERNAL) != 0) return CUDA_ERROR_INVALID_VALUE;
    struct CUstream_st *s;
    pthread_mutex_lock(&g_handle_lock);
    CUresult r = find_stream(hStream, &s);
    struct CUevent_st *e = r == CUDA_SUCCESS ? find_event(hEvent) : NULL;
    if (r == CUDA_SUCCESS && !e) r = CUDA_ERROR_INVALID_HANDLE;
    if (e && e->done != e->recorded) r = run_stream(e->stream, e->seq);
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

CUresult CUDAAPI cuEventCreate(CUevent *phEvent, unsigned int Flags) {
    GATE_CREATE(FN_EVENT_CREATE, phEvent);
    NEED_INIT();
    CUcontext ctx = current_context();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    unsigned known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
    if (!phEvent || (Flags & ~known) != 0 ||
        ((Flags & CU_EVENT_INTERPROCESS) && !(Flags & CU_EVENT_DISABLE_TIMING)))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUevent_st *e = calloc(1, sizeof *e);
    if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
    e->ctx = ctx;
    e->flags = Flags;
    pthread_mutex_lock(&g_handle_lock);
    int added = table_add(&g_events, e);
    pthread_mutex_unlock(&g_handle_lock);
    if (!added) {
        free(e);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *phEvent = e;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventRecord(CUevent hEvent, CUstream hStream) {
    GATE(FN_EVENT_RECORD);
    NEED_INIT();
    struct CUstream_st *s;
    op *o = NULL;
    pthread_mutex_lock(&g_handle_lock);
    CUresult r = find_stream(hStream, &s);
    struct CUevent_st *e = r == CUDA_SUCCESS ? find_event(hEvent) : NULL;
    if (r == CUDA_SUCCESS && (!e || e->ctx != s->ctx))
        r = CUDA_ERROR_INVALID_HANDLE; /* unknown event, or one of another context */
    if (r == CUDA_SUCCESS && g_deferred && !(o = calloc(1, sizeof *o)))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) {
        e->recorded++;
        if (o) { /* completes when the stream's work up to here has run */
            o->kind = OP_RECORD;
            o->event = e;
            o->record = e->recorded;
            push(s, o);
            e->stream = s;
            e->seq = o->seq;
            e->queued++;
        } else { /* immediate mode: the stream's work is done */
            e->done = e->recorded;
            e->time_ns = now_ns();
        }
    }
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

CUresult CUDAAPI cuEventSynchronize(CUevent hEvent) {
    GATE(FN_EVENT_SYNCHRONIZE);
    NEED_INIT();
    pthread_mutex_lock(&g_handle_lock);
    struct CUevent_st *e = find_event(hEvent);
    CUresult r = e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
    if (e && e->done != e->recorded) r = run_stream(e->stream, e->seq);
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

/* Never runs work: a test sees CUDA_ERROR_NOT_READY until something forces the record. */
CUresult CUDAAPI cuEventQuery(CUevent hEvent) {
    GATE(FN_EVENT_QUERY);
    NEED_INIT();
    pthread_mutex_lock(&g_handle_lock);
    struct CUevent_st *e = find_event(hEvent);
    CUresult r = !e ? CUDA_ERROR_INVALID_HANDLE
                    : e->done != e->recorded ? CUDA_ERROR_NOT_READY : CUDA_SUCCESS;
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

CUresult CUDAAPI cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
    GATE(FN_EVENT_ELAPSED_TIME);
    NEED_INIT();
    if (!pMilliseconds) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_handle_lock);
    const struct CUevent_st *a = find_event(hStart), *b = find_event(hEnd);
    CUresult r = CUDA_SUCCESS;
    if (!a || !b || !a->recorded || !b->recorded || (a->flags & CU_EVENT_DISABLE_TIMING) ||
        (b->flags & CU_EVENT_DISABLE_TIMING) || a->ctx != b->ctx)
        r = CUDA_ERROR_INVALID_HANDLE;
    else if (a->done != a->recorded || b->done != b->recorded)
        r = CUDA_ERROR_NOT_READY;
    else
        *pMilliseconds = (float)(((double)b->time_ns - (double)a->time_ns) / 1e6);
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

/* A record still queued then completes nothing (the real driver lets it finish unseen). */
CUresult CUDAAPI cuEventDestroy_v2(CUevent hEvent) {
    GATE(FN_EVENT_DESTROY);
    NEED_INIT();
    pthread_mutex_lock(&g_handle_lock);
    struct CUevent_st *e = find_event(hEvent);
    if (e) {
        forget_event(e);
        table_remove(&g_events, e);
    }
    pthread_mutex_unlock(&g_handle_lock);
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    free(e);
    return CUDA_SUCCESS;
}
