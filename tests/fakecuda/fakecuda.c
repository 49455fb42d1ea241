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
 *     cuMemAlloc_v2 cuMemFree_v2 cuMemGetInfo_v2 cuMemHostAlloc cuMemFreeHost
 *     cuMemHostRegister_v2 cuMemHostUnregister cuMemcpyHtoD_v2 cuMemcpyDtoH_v2 cuMemcpyDtoD_v2
 *     cuMemcpyPeer cuMemcpyHtoDAsync_v2 cuMemcpyDtoHAsync_v2 cuMemcpyDtoDAsync_v2
 *     cuMemsetD8_v2 cuMemsetD8Async cuStreamCreate cuStreamDestroy_v2 cuStreamSynchronize
 *     cuStreamWaitEvent cuEventCreate cuEventRecord cuEventSynchronize cuEventQuery
 *     cuEventDestroy_v2 cuGetErrorName
 * (every function of VRAM_CUDA_FUNCTIONS in native/src/cuda_driver.h, which the library
 * resolves at load and without which it refuses the driver).
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
 *     every cuMemcpy* but cuMemcpyPeer, cuMemsetD8*, the cuMemHost* functions and
 *     cuMemFreeHost, cuStreamCreate, cuEventCreate, and any call given a default stream: so a
 *     backend that forgets to push one fails here too. (cuStreamSynchronize,
 *     cuStreamDestroy_v2, cuStreamWaitEvent, cuEventRecord, cuEventSynchronize, cuEventQuery
 *     and cuEventDestroy_v2 given explicit handles act on their handles' contexts, need none.) cuMemAlloc_v2 and cuMemGetInfo_v2 act on the
 *     device of the current context; copies and frees find the allocation by address, on any
 *     device (unified addressing).
 *   - Accounting, per device: each allocation counts its size rounded up to 512 bytes;
 *     free = total - sum(rounded sizes) - reserved, where "reserved" stands for what a real
 *     primary context and the driver take: 64 MiB, or total/16 when that is smaller (override
 *     with FAKECUDA_RESERVED_BYTES, clamped to total). cuMemGetInfo_v2 reports (free, total).
 *     cuMemAlloc_v2 answers CUDA_ERROR_OUT_OF_MEMORY (2) when the rounded size exceeds free
 *     (or host memory runs out), CUDA_ERROR_INVALID_VALUE for size 0 or a NULL dptr.
 *   - cuMemFree_v2 of anything but the exact start of a live allocation (0, unknown, interior,
 *     already freed) answers CUDA_ERROR_INVALID_VALUE and frees nothing.
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
 *     to another context than the stream, as the real driver does.
 *   - Async work is done when it is enqueued: cuMemcpy*Async_v2 and cuMemsetD8Async need a
 *     current context and a valid stream, then check and copy/set exactly as their
 *     synchronous twins, before returning. So cuStreamSynchronize, cuStreamWaitEvent,
 *     cuEventSynchronize and cuEventQuery only validate their handles and answer
 *     CUDA_SUCCESS (an event never recorded too, as the real driver answers for one);
 *     cuEventQuery never answers CUDA_ERROR_NOT_READY. A test cannot observe a race between
 *     a copy and a reuse of its host buffer here: that needs the GPU tests.
 *   - Page-locked host memory (all four need a current context): cuMemHostAlloc allocates
 *     with posix_memalign(4096) (flags PORTABLE, DEVICEMAP, WRITECOMBINED; anything else,
 *     size 0 or a NULL pp is CUDA_ERROR_INVALID_VALUE; it takes no device memory).
 *     cuMemFreeHost of anything but the start of a live cuMemHostAlloc block answers
 *     CUDA_ERROR_INVALID_VALUE. cuMemHostRegister_v2 records [p, p + n) (flags PORTABLE,
 *     DEVICEMAP, IOMEMORY, READ_ONLY); NULL, 0 bytes, an overflowing range or other flags
 *     answer CUDA_ERROR_INVALID_VALUE, a range overlapping a registered one or a
 *     cuMemHostAlloc block CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED (712).
 *     cuMemHostUnregister needs the exact start of a registered range, else
 *     CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED (713). Host memory is never touched otherwise:
 *     copies accept pageable and page-locked host memory alike.
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
 *     allocations run concurrently. Not emulated: kernels, real asynchrony (see above), stream
 *     priorities or capture, event timing, context destruction or primary context release,
 *     per-context sticky state (a sticky fault here poisons the whole fake driver, all
 *     devices).
 *
 * Environment, read once when the library is loaded:
 *   FAKECUDA_DEVICES=<n>         devices, 0..64 (default 1); 0 makes cuDeviceGetCount report 0
 *   FAKECUDA_TOTAL_BYTES=<n>     memory of each device in bytes (default 1073741824, 1 GiB)
 *   FAKECUDA_RESERVED_BYTES=<n>  the "context" reservation (default min(64 MiB, total / 16))
 *   FAKECUDA_DRIVER_VERSION=<n>  what cuDriverGetVersion reports (default 13000)
 *   FAKECUDA_INIT_ERROR=<code>   cuInit fails with this CUresult (number or name), every call
 *   FAKECUDA_PEER=<0|1>          whether distinct devices can access each other (default 1)
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
 *       cuMemFree, cuMemGetInfo, cuMemcpyHtoD, cuMemcpyDtoH, cuMemcpyDtoD, cuMemcpyPeer,
 *       cuMemcpyHtoDAsync, cuMemcpyDtoHAsync, cuMemcpyDtoDAsync, cuMemsetD8, cuMemsetD8Async,
 *       cuMemHostAlloc, cuMemHostRegister, cuCtxPushCurrent (not the stream, event, peer,
 *       unregister/free-host or query functions).
 *       A failed call writes no outputs (error 0 makes the call "succeed" without doing its
 *       work: cuMemAlloc then returns pointer 0, cuMemHostAlloc, cuStreamCreate and
 *       cuEventCreate NULL). If sticky != 0 and error != 0, once this fault fires every later
 *       call of every driver function returns error, except cuGetErrorName, cuCtxGetCurrent,
 *       cuCtxSetCurrent, cuCtxPushCurrent_v2 and cuCtxPopCurrent_v2, which a real driver
 *       still answers after a sticky error such as CUDA_ERROR_ILLEGAL_ADDRESS (700). Up to 32 injections wait at once; when several fire on one call the earliest
 *       made decides the error, and all that fired are used up. An unknown function name or
 *       a negative nth is reported on stderr and ignored.
 *   void fakecuda_reset(void);
 *       Drop all injections and the sticky error. Allocations, contexts and call counts stay.
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
 *
 * Memory, streams and events still live at exit stay reachable from this library's tables
 * (not a leak for LeakSanitizer or valgrind); the bookkeeping itself frees what it allocates.
 */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h>

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
    X(FN_EVENT_DESTROY, "cuEventDestroy_v2", 0, 0)

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

static size_t free_bytes(int device) {
    size_t taken = g_reserved + g_used[device];
    return taken >= g_total ? 0 : g_total - taken;
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
 * Streams and events: heap objects, valid while listed in their table.
 * ------------------------------------------------------------------------------------- */
struct CUstream_st {
    CUcontext ctx; /* current when it was created */
};

struct CUevent_st {
    CUcontext ctx;
};

typedef struct handle_table {
    void **items;
    size_t count, capacity;
} handle_table;

static pthread_mutex_t g_handle_lock = PTHREAD_MUTEX_INITIALIZER; /* both tables */
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

/* Whether work may be enqueued on s; *owner (if asked) gets its context: the current one for
 * a default stream. */
static CUresult check_stream(CUstream s, CUcontext *owner) {
    if (is_default_stream(s)) {
        CUcontext ctx = current_context();
        if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
        if (owner) *owner = ctx;
        return CUDA_SUCCESS;
    }
    CUresult r = CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&g_handle_lock);
    if (table_find(&g_streams, s) != g_streams.count) {
        if (owner) *owner = s->ctx;
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

static int is_live_event(CUevent e) {
    pthread_mutex_lock(&g_handle_lock);
    int live = table_find(&g_events, e) != g_events.count;
    pthread_mutex_unlock(&g_handle_lock);
    return live;
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
    for (int i = 0; i < FAKE_MAX_DEVICES; i++) g_contexts[i].device = i;
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

/* GATE for a function that creates something: an injected "success" hands out NULL. */
#define GATE_CREATE(fn, out)                                          \
    do {                                                              \
        CUresult gate_error_;                                         \
        if (gate((fn), &gate_error_)) {                               \
            if (gate_error_ == CUDA_SUCCESS && (out)) *(out) = NULL; \
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
    CUresult gate_error;
    if (gate(FN_MEM_ALLOC, &gate_error)) {
        if (gate_error == CUDA_SUCCESS && dptr) *dptr = 0; /* "success" without memory */
        return gate_error;
    }
    NEED_INIT();
    CUcontext ctx = current_context();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if (!dptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
    if (bytesize > SIZE_MAX - (FAKE_ALIGNMENT - 1)) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t rounded = (bytesize + FAKE_ALIGNMENT - 1) & ~(FAKE_ALIGNMENT - 1);
    int device = ctx->device;
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
        g_allocs[i] = (allocation){base, bytesize, rounded, device};
        g_alloc_count++;
        g_used[device] += rounded;
        g_live_bytes += bytesize;
        *dptr = (CUdeviceptr)base;
    }
    pthread_rwlock_unlock(&g_mem_lock);
    return r;
}

CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr) {
    GATE(FN_MEM_FREE);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
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

/* Both copies: check the device range, then memcpy while no free can run. */
static CUresult copy(uintptr_t device, void *host, size_t bytes, int to_device) {
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    if (bytes == 0) return CUDA_SUCCESS;
    if (!host || device == 0) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    pthread_rwlock_rdlock(&g_mem_lock);
    if (find_range(device, bytes)) {
        if (to_device)
            memcpy((void *)device, host, bytes);
        else
            memcpy(host, (const void *)device, bytes);
        r = CUDA_SUCCESS;
    }
    pthread_rwlock_unlock(&g_mem_lock);
    return r;
}

CUresult CUDAAPI cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount) {
    GATE(FN_MEMCPY_HTOD);
    if ((CUdeviceptr)(uintptr_t)dstDevice != dstDevice) return CUDA_ERROR_INVALID_VALUE;
    return copy((uintptr_t)dstDevice, (void *)(uintptr_t)srcHost, ByteCount, 1);
}

CUresult CUDAAPI cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount) {
    GATE(FN_MEMCPY_DTOH);
    if ((CUdeviceptr)(uintptr_t)srcDevice != srcDevice) return CUDA_ERROR_INVALID_VALUE;
    return copy((uintptr_t)srcDevice, dstHost, ByteCount, 0);
}

/* Both memsets, after their context (and stream) checks. */
static CUresult set_range(CUdeviceptr dstDevice, unsigned char uc, size_t N) {
    if (N == 0) return CUDA_SUCCESS;
    if ((CUdeviceptr)(uintptr_t)dstDevice != dstDevice || dstDevice == 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    pthread_rwlock_rdlock(&g_mem_lock);
    if (find_range((uintptr_t)dstDevice, N)) {
        memset((void *)(uintptr_t)dstDevice, uc, N);
        r = CUDA_SUCCESS;
    }
    pthread_rwlock_unlock(&g_mem_lock);
    return r;
}

CUresult CUDAAPI cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N) {
    GATE(FN_MEMSET_D8);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    return set_range(dstDevice, uc, N);
}

CUresult CUDAAPI cuCtxSynchronize(void) {
    GATE(FN_CTX_SYNCHRONIZE);
    NEED_INIT();
    return current_context() ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT; /* all work is done */
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
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_host_lock);
    size_t i = host_find((uintptr_t)p);
    if (i != g_host_count && g_host[i].allocated) {
        host_remove(i);
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&g_host_lock);
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
    CUresult r = CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
    pthread_mutex_lock(&g_host_lock);
    size_t i = host_find((uintptr_t)p);
    if (i != g_host_count && !g_host[i].allocated) {
        host_remove(i);
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&g_host_lock);
    return r;
}

/* ---------------------------------------------------------------------------------------
 * Device-to-device and peer copies, async copies (done at enqueue), async memset.
 * ------------------------------------------------------------------------------------- */
/* Both ranges inside live allocations (of the devices of dst_ctx / src_ctx when given),
 * then memmove while no free can run. */
static CUresult copy_dtod(CUdeviceptr dst, CUcontext dst_ctx, CUdeviceptr src,
                          CUcontext src_ctx, size_t bytes) {
    if (bytes == 0) return CUDA_SUCCESS;
    if ((CUdeviceptr)(uintptr_t)dst != dst || (CUdeviceptr)(uintptr_t)src != src || dst == 0 ||
        src == 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    pthread_rwlock_rdlock(&g_mem_lock);
    const allocation *d = find_range((uintptr_t)dst, bytes);
    const allocation *s = find_range((uintptr_t)src, bytes);
    if (d && s && (!dst_ctx || d->device == dst_ctx->device) &&
        (!src_ctx || s->device == src_ctx->device)) {
        memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, bytes);
        r = CUDA_SUCCESS;
    }
    pthread_rwlock_unlock(&g_mem_lock);
    return r;
}

CUresult CUDAAPI cuMemcpyDtoD_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount) {
    GATE(FN_MEMCPY_DTOD);
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    return copy_dtod(dstDevice, NULL, srcDevice, NULL, ByteCount);
}

CUresult CUDAAPI cuMemcpyPeer(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice,
                              CUcontext srcContext, size_t ByteCount) {
    GATE(FN_MEMCPY_PEER);
    NEED_INIT();
    if (!is_fake_context(dstContext) || !is_fake_context(srcContext))
        return CUDA_ERROR_INVALID_CONTEXT;
    return copy_dtod(dstDevice, dstContext, srcDevice, srcContext, ByteCount);
}

/* The checks every async call makes before its work: a current context and a usable stream. */
static CUresult enqueue(CUstream hStream) {
    NEED_INIT();
    if (!current_context()) return CUDA_ERROR_INVALID_CONTEXT;
    return check_stream(hStream, NULL);
}

CUresult CUDAAPI cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost,
                                      size_t ByteCount, CUstream hStream) {
    GATE(FN_MEMCPY_HTOD_ASYNC);
    CUresult r = enqueue(hStream);
    if (r != CUDA_SUCCESS) return r;
    if ((CUdeviceptr)(uintptr_t)dstDevice != dstDevice) return CUDA_ERROR_INVALID_VALUE;
    return copy((uintptr_t)dstDevice, (void *)(uintptr_t)srcHost, ByteCount, 1);
}

CUresult CUDAAPI cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount,
                                      CUstream hStream) {
    GATE(FN_MEMCPY_DTOH_ASYNC);
    CUresult r = enqueue(hStream);
    if (r != CUDA_SUCCESS) return r;
    if ((CUdeviceptr)(uintptr_t)srcDevice != srcDevice) return CUDA_ERROR_INVALID_VALUE;
    return copy((uintptr_t)srcDevice, dstHost, ByteCount, 0);
}

CUresult CUDAAPI cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                      size_t ByteCount, CUstream hStream) {
    GATE(FN_MEMCPY_DTOD_ASYNC);
    CUresult r = enqueue(hStream);
    if (r != CUDA_SUCCESS) return r;
    return copy_dtod(dstDevice, NULL, srcDevice, NULL, ByteCount);
}

CUresult CUDAAPI cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N,
                                 CUstream hStream) {
    GATE(FN_MEMSET_D8_ASYNC);
    CUresult r = enqueue(hStream);
    if (r != CUDA_SUCCESS) return r;
    return set_range(dstDevice, uc, N);
}

/* ---------------------------------------------------------------------------------------
 * Streams and events. All work is done when it is enqueued, so waiting never blocks.
 * ------------------------------------------------------------------------------------- */
CUresult CUDAAPI cuStreamCreate(CUstream *phStream, unsigned int Flags) {
    GATE_CREATE(FN_STREAM_CREATE, phStream);
    NEED_INIT();
    CUcontext ctx = current_context();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if (!phStream || (Flags & ~(unsigned)CU_STREAM_NON_BLOCKING) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUstream_st *s = malloc(sizeof *s);
    if (!s) return CUDA_ERROR_OUT_OF_MEMORY;
    s->ctx = ctx;
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

CUresult CUDAAPI cuStreamDestroy_v2(CUstream hStream) {
    GATE(FN_STREAM_DESTROY);
    NEED_INIT();
    pthread_mutex_lock(&g_handle_lock);
    int removed = table_remove(&g_streams, hStream); /* never holds a default stream */
    pthread_mutex_unlock(&g_handle_lock);
    if (!removed) return CUDA_ERROR_INVALID_HANDLE;
    free(hStream);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamSynchronize(CUstream hStream) {
    GATE(FN_STREAM_SYNCHRONIZE);
    NEED_INIT();
    return check_stream(hStream, NULL);
}

CUresult CUDAAPI cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags) {
    GATE(FN_STREAM_WAIT_EVENT);
    NEED_INIT();
    if ((Flags & ~(unsigned)CU_EVENT_WAIT_EXTERNAL) != 0) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = check_stream(hStream, NULL);
    if (r != CUDA_SUCCESS) return r;
    return is_live_event(hEvent) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
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
    struct CUevent_st *e = malloc(sizeof *e);
    if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
    e->ctx = ctx;
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
    CUcontext stream_ctx = NULL;
    CUresult r = check_stream(hStream, &stream_ctx);
    if (r != CUDA_SUCCESS) return r;
    r = CUDA_ERROR_INVALID_HANDLE; /* unknown event, or one of another context */
    pthread_mutex_lock(&g_handle_lock);
    if (table_find(&g_events, hEvent) != g_events.count && hEvent->ctx == stream_ctx)
        r = CUDA_SUCCESS;
    pthread_mutex_unlock(&g_handle_lock);
    return r;
}

CUresult CUDAAPI cuEventSynchronize(CUevent hEvent) {
    GATE(FN_EVENT_SYNCHRONIZE);
    NEED_INIT();
    return is_live_event(hEvent) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult CUDAAPI cuEventQuery(CUevent hEvent) {
    GATE(FN_EVENT_QUERY);
    NEED_INIT();
    return is_live_event(hEvent) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult CUDAAPI cuEventDestroy_v2(CUevent hEvent) {
    GATE(FN_EVENT_DESTROY);
    NEED_INIT();
    pthread_mutex_lock(&g_handle_lock);
    int removed = table_remove(&g_events, hEvent);
    pthread_mutex_unlock(&g_handle_lock);
    if (!removed) return CUDA_ERROR_INVALID_HANDLE;
    free(hEvent);
    return CUDA_SUCCESS;
}
