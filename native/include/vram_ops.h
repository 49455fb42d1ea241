/*
 * vram_ops.h - safe, observable GPU memory operations.
 *
 * The only public header of libvram_ops and its contract for C, C++, Rust and ctypes.
 *
 * The five operations of the vram_ops specification keep the spec's exact signatures and
 * codes (0 success, 1 allocation failed, 2 invalid parameters). Every other code is listed,
 * once, in VRAM_STATUS_MAP. Every call is validated before any driver call, checked for
 * overflow, timed, and counted in aggregates that vram_stats_get() copies out.
 *
 * Device pointers are validated against a registry of live allocations: a pointer that
 * vram_malloc did not return (or that was freed) is refused, and a copy must lie inside
 * one live allocation. Copies hold their allocation while they run, so a concurrent
 * vram_free waits for them: a copy never touches freed memory.
 *
 * Idempotent free and address reuse: vram_free(p) on a pointer that was already freed
 * returns VRAM_SUCCESS and calls no driver function, for as long as p is remembered as freed
 * (the most recent VRAM_FREED_MEMORY frees). But the driver may hand the same address to a
 * later allocation; from then on p names the new allocation and vram_free(p) frees it. The
 * C API cannot tell a stale p from the current one. Callers that may free twice should use
 * vram_malloc_ex()'s generation and vram_free_ex(), which frees only that generation (the
 * Python buffer does).
 *
 * Backends: "cuda" (default) loads the NVIDIA driver library at run time; no CUDA toolkit is
 * needed to build or to run. Without a driver or device every operation answers
 * VRAM_ERR_NO_DEVICE. "host" emulates device memory in host RAM to run the same validation,
 * registry and timing code where there is no GPU; it is never chosen silently, only through
 * VRAMOBS_BACKEND=host or vram_select_backend("host"), and it names itself in
 * vram_backend_name().
 *
 * Environment: VRAMOBS_BACKEND (cuda|host), VRAMOBS_CUDA_DRIVER (path of libcuda),
 * VRAMOBS_HOST_DEVICES (emulated device count, default 1), VRAMOBS_HOST_CAPACITY (bytes per
 * emulated device, default 8 GiB), VRAMOBS_HOST_PEER (1, default: emulated devices copy peer
 * to peer; 0: through host memory).
 *
 * All functions are thread-safe. None aborts, throws or returns without a code.
 */
#ifndef VRAM_OPS_H
#define VRAM_OPS_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(VRAM_BUILDING_LIBRARY)
#    define VRAM_API __declspec(dllexport)
#  else
#    define VRAM_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define VRAM_API __attribute__((visibility("default")))
#else
#  define VRAM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------
 * Version. The ABI is stable within a major version; compare vram_version_number() with
 * VRAM_VERSION_NUMBER to detect a header/library mismatch.
 * ---------------------------------------------------------------------------------------- */
#define VRAM_VERSION_MAJOR 0
#define VRAM_VERSION_MINOR 3
#define VRAM_VERSION_PATCH 0
#define VRAM_VERSION_NUMBER \
    (VRAM_VERSION_MAJOR * 10000 + VRAM_VERSION_MINOR * 100 + VRAM_VERSION_PATCH)
#define VRAM_VERSION_STRING "0.3.0"

VRAM_API unsigned vram_version_number(void);
VRAM_API const char *vram_version_string(void);

/* ------------------------------------------------------------------------------------------
 * Status codes: the one table. Values are stable; 0-2 are the specification's.
 * ---------------------------------------------------------------------------------------- */
#define VRAM_STATUS_MAP(XX)                                                                   \
    XX(0, SUCCESS, "success")                                                                 \
    XX(1, ERR_ALLOCATION_FAILED, "allocation failed: device memory exhausted or refused")     \
    XX(2, ERR_INVALID_PARAMETERS, "invalid parameters")                                     \
    XX(3, ERR_COPY_FAILED, "copy failed in the driver")                                       \
    XX(4, ERR_NO_DEVICE, "no usable CUDA driver or device")                                   \
    XX(5, ERR_UNKNOWN_POINTER, "pointer is not a live allocation made by vram_malloc")        \
    XX(6, ERR_OUT_OF_BOUNDS, "range runs past the end of its allocation")                     \
    XX(7, ERR_INTERIOR_POINTER, "pointer lies inside an allocation, not at its start")        \
    XX(8, ERR_DEVICE_FAILED, "device failed with a sticky error; the process must restart")   \
    XX(9, ERR_DRIVER, "driver call failed")                                                   \
    XX(10, ERR_BUSY, "cannot change this while allocations are live")

typedef enum vram_status {
#define VRAM_STATUS_ENUM_(code, name, message) VRAM_##name = code,
    VRAM_STATUS_MAP(VRAM_STATUS_ENUM_)
#undef VRAM_STATUS_ENUM_
    VRAM_STATUS_COUNT_ /* sentinel: not a status */
} vram_status;

/* Static strings for any int; an unknown code gives "VRAM_UNKNOWN_STATUS". Never NULL. */
VRAM_API const char *vram_status_name(int status);
VRAM_API const char *vram_strerror(int status);

/* Why a call was refused before reaching the driver: the security signal. Counted per
 * operation in vram_op_stats.refused_by_reason and reported by vram_last_error(). */
#define VRAM_REASON_MAP(XX)                          \
    XX(0, NONE, "none")                              \
    XX(1, NULL_POINTER, "null_pointer")              \
    XX(2, ZERO_SIZE, "zero_size")                    \
    XX(3, SIZE_OVERFLOW, "size_overflow")            \
    XX(4, RANGE_WRAP, "range_wrap")                  \
    XX(5, UNKNOWN_POINTER, "unknown_pointer")        \
    XX(6, FREED_POINTER, "freed_pointer")            \
    XX(7, INTERIOR_POINTER, "interior_pointer")      \
    XX(8, OUT_OF_BOUNDS, "out_of_bounds")            \
    XX(9, INVALID_DEVICE, "invalid_device")          \
    XX(10, INVALID_TAG, "invalid_tag")               \
    XX(11, INVALID_GENERATION, "invalid_generation") \
    XX(12, INVALID_BACKEND, "invalid_backend")       \
    XX(13, OVERLAP, "overlap")                       \
    XX(14, INVALID_CONFIG, "invalid_config")         \
    XX(15, INVALID_STREAM, "invalid_stream")

typedef enum vram_reason {
#define VRAM_REASON_ENUM_(code, name, label) VRAM_REASON_##name = code,
    VRAM_REASON_MAP(VRAM_REASON_ENUM_)
#undef VRAM_REASON_ENUM_
    VRAM_REASON_COUNT_ /* sentinel */
} vram_reason;

VRAM_API const char *vram_reason_name(int reason); /* "out_of_bounds"; "unknown" if unknown */

/* ------------------------------------------------------------------------------------------
 * The five operations of the specification.
 * ---------------------------------------------------------------------------------------- */

/* Allocate bytes of device memory on this thread's device (vram_set_device, default 0).
 * ptr NULL, bytes 0, or bytes whose rounding to VRAM_ALIGNMENT overflows -> 2. Driver
 * failure -> 1. On any failure *ptr is NULL (when ptr is not NULL). */
VRAM_API int vram_malloc(void **ptr, size_t bytes);

/* Free an allocation made by vram_malloc. NULL -> success, no-op. A freed pointer -> success,
 * no driver call (see "Idempotent free" above). A pointer never returned -> 5; an interior
 * pointer -> 7; neither reaches the driver. Waits for copies in flight on that allocation. */
VRAM_API int vram_free(void *ptr);

/* Copy bytes from host memory to device memory. dst may point inside an allocation, but
 * [dst, dst + bytes) must lie inside one live allocation, else 5 or 6 and no byte is written.
 * NULL pointers, bytes 0, or ranges that wrap the address space -> 2. */
VRAM_API int vram_memcpy_h2d(void *dst, const void *src, size_t bytes);

/* Copy bytes from device memory to host memory; the same rules, for the device range src. */
VRAM_API int vram_memcpy_d2h(void *dst, const void *src, size_t bytes);

/* Free and total device memory of this thread's device, exactly as the driver reports them.
 * NULL pointers -> 2. On failure both outputs that are not NULL are set to 0. */
VRAM_API int vram_get_info(size_t *free_bytes, size_t *total_bytes);

/* ------------------------------------------------------------------------------------------
 * Extensions beyond the specification.
 * ---------------------------------------------------------------------------------------- */

#define VRAM_ALIGNMENT 256u     /* the least granularity sizes are rounded to */
#define VRAM_MAX_DEVICES 32
#define VRAM_MAX_TAGS 64        /* owner tags 0..63; 0 means untagged */
#define VRAM_FREED_MEMORY 65536 /* freed pointers remembered for idempotent free */

/* vram_malloc with an owner tag (counted per tag) and the allocation's generation, a number
 * unique to this allocation for the life of the process. generation may be NULL. */
VRAM_API int vram_malloc_ex(void **ptr, size_t bytes, uint32_t tag, uint64_t *generation);

/* Free exactly the allocation of this generation. If that generation is no longer live
 * (freed by anyone, its address possibly reused) -> success, nothing freed. If it is live
 * but not at ptr, or was never handed out -> 2 (reason invalid_generation); nothing freed. */
VRAM_API int vram_free_ex(void *ptr, uint64_t generation);

/* Secure wipe. Freed device memory can come back to this process holding its old bytes (the
 * next allocation of the same size often gets the same pages). With VRAM_WIPE_ON_FREE an
 * allocation is overwritten with zeros (a device memset, timed and counted as the operation
 * "wipe") before it is freed; if the wipe fails, the free fails and the allocation stays
 * live. The policy applies to allocations made after it is set, and can be set per
 * allocation. */
typedef enum vram_wipe_policy {
    VRAM_WIPE_OFF = 0,
    VRAM_WIPE_ON_FREE = 1
} vram_wipe_policy;

VRAM_API int vram_set_wipe_policy(int policy);  /* -> 2 for an unknown policy */
VRAM_API int vram_get_wipe_policy(int *policy);
/* Change the policy of one live allocation (ptr and its generation, as vram_free_ex): a pair
 * that is not a live allocation (freed, never issued, live elsewhere) -> 5; an unknown
 * policy or NULL ptr -> 2. */
VRAM_API int vram_set_allocation_wipe(void *ptr, uint64_t generation, int policy);

/* Devices. The device chosen applies to this thread's later vram_malloc and vram_get_info;
 * copies and frees always run on the device of their allocation. */
VRAM_API int vram_device_count(int *count);
VRAM_API int vram_set_device(int device);
VRAM_API int vram_get_device(int *device);

typedef enum vram_device_state {
    VRAM_DEVICE_USABLE = 0,
    VRAM_DEVICE_FAILED = 1,      /* latched after a sticky driver error: restart the process */
    VRAM_DEVICE_UNAVAILABLE = 2  /* no driver, or no such device */
} vram_device_state;

/* A sticky driver error (illegal address, launch failure, uncorrectable ECC, ...) latches
 * its device as failed: every later operation on it returns VRAM_ERR_DEVICE_FAILED at once,
 * without calling the driver. Out-of-memory is not sticky. */
VRAM_API int vram_device_state_get(int device, int *state);

typedef struct vram_device_props {
    char name[128];       /* "NVIDIA H100 80GB HBM3" */
    char uuid[64];        /* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi/DCGM */
    char pci_bus_id[32];  /* "00000000:01:00.0" */
    uint64_t total_bytes;
    int32_t compute_capability_major;
    int32_t compute_capability_minor;
    int32_t driver_version; /* 13000 for CUDA 13.0; 0 on the host backend */
    int32_t ordinal;
} vram_device_props;

/* Read once from the driver and cached: a device that failed after its first query is still
 * described (without a driver call); one that failed before it -> VRAM_ERR_DEVICE_FAILED. */
VRAM_API int vram_device_props_get(int device, vram_device_props *props);

/* Backends. vram_select_backend("host" | "cuda") -> 10 while allocations are live or device
 * pool blocks cached (see vram_pool_trim), 2 for an unknown name. vram_backend_name() answers the backend in use (selecting the default from
 * VRAMOBS_BACKEND on first use). vram_backend_diagnostic() says why a backend is unavailable
 * ("" when it is available). Both return static strings, never NULL. */
VRAM_API int vram_select_backend(const char *name);
VRAM_API const char *vram_backend_name(void);
VRAM_API const char *vram_backend_diagnostic(void);

/* The last failed call on this thread: every function that returns a failure sets it. */
typedef struct vram_error_info {
    int32_t status;       /* vram_status */
    int32_t reason;       /* vram_reason for refusals, else 0 */
    int32_t op;           /* vram_op, or VRAM_OP_NONE for calls that are not operations */
    int32_t driver_error; /* the driver's code (CUresult) when a driver call failed, else 0 */
} vram_error_info;

VRAM_API void vram_last_error(vram_error_info *out);
VRAM_API const char *vram_driver_error_name(int driver_error); /* "CUDA_ERROR_OUT_OF_MEMORY" */

/* ------------------------------------------------------------------------------------------
 * Copies between device allocations and migration between devices.
 * ---------------------------------------------------------------------------------------- */

typedef enum vram_copy_path {
    VRAM_PATH_DEVICE = 0, /* both ranges on one device: counted as memcpy_d2d */
    VRAM_PATH_PEER = 1,   /* between devices, peer to peer: memcpy_p2p */
    VRAM_PATH_STAGED = 2  /* between devices through host memory: memcpy_staged */
} vram_copy_path;

/* Copy bytes from the device range src to the device range dst. Each range must lie inside
 * one live allocation (5 or 6 as for the other copies, and no byte is written); ranges that
 * overlap -> 2 (reason overlap). Between devices the copy goes peer to peer where the
 * hardware allows it (peer access is enabled on first use) and through host memory
 * otherwise; it is counted under the path taken. Done when the call returns. */
VRAM_API int vram_memcpy_d2d(void *dst, const void *src, size_t bytes);

/* The path that copies from src_device to dst_device take (a vram_copy_path). */
VRAM_API int vram_copy_path_get(int src_device, int dst_device, int *path);

/* Move the live allocation (ptr, generation) to device: a new allocation there, of the same
 * size, owner tag and wipe policy, receives its bytes, then the old one is freed. On success
 * *new_ptr and *new_generation (which may be NULL) name the new allocation. All or nothing:
 * on any failure the old allocation is live and unchanged and nothing new remains. Moving an
 * allocation to its own device succeeds and returns it unchanged. An allocation freed by
 * another call while it moves (a concurrent free or migration of it) -> 5 (freed_pointer),
 * and the copy is freed. Counted as migrate. */
VRAM_API int vram_migrate(void *ptr, uint64_t generation, int device, void **new_ptr,
                          uint64_t *new_generation);

/* ------------------------------------------------------------------------------------------
 * Pageable copies at pinned speed: staging.
 *
 * A copy between device memory and ordinary (pageable) host memory of at least min_bytes
 * runs through page-locked staging buffers, made once per device and direction: host
 * threads move chunks between the caller's memory and the staging buffers while the copy
 * engine moves the chunks before them. Each direction has its own buffers, threads and
 * stream, so a host-to-device and a device-to-host copy run at once. Copies from or to
 * pinned memory (vram_host_alloc, vram_host_register) skip staging. A staging buffer that
 * carried bytes of an allocation under VRAM_WIPE_ON_FREE is cleared after the copy.
 * ---------------------------------------------------------------------------------------- */

typedef struct vram_staging_config {
    uint32_t struct_size;  /* sizeof(vram_staging_config) */
    uint32_t threads;      /* host copy threads per device and direction (0..64; default half
                            * the online CPUs, 4 to 16); 0 turns staging off */
    uint64_t chunk_bytes;  /* bytes per staging buffer (4 KiB..1 GiB, default 2 MiB) */
    uint64_t min_bytes;    /* smaller pageable copies go to the driver directly (default 1 MiB) */
    uint32_t buffers;      /* staging buffers per thread (1..16, default 2) */
    uint32_t reserved_;    /* 0 */
} vram_staging_config;

/* Read or change the configuration (environment: VRAMOBS_STAGING_THREADS,
 * VRAMOBS_STAGING_CHUNK_BYTES, VRAMOBS_STAGING_MIN_BYTES, VRAMOBS_STAGING_BUFFERS; a malformed
 * or out-of-range value there turns staging off, which vram_staging_get shows as threads 0).
 * Out-of-range values or a struct_size other than sizeof(vram_staging_config) -> 2 (reason
 * invalid_config). A change applies to copies that start after it; changing threads,
 * chunk_bytes or buffers waits for staged copies in flight and releases the staging buffers
 * (made again by the next staged copy). Staged copies in one direction on one device take
 * turns: each uses every thread of its engine. */
VRAM_API int vram_staging_get(vram_staging_config *out);
VRAM_API int vram_staging_set(const vram_staging_config *config);

/* ------------------------------------------------------------------------------------------
 * Pinned (page-locked) host memory, usable by every device.
 * ---------------------------------------------------------------------------------------- */

/* Page-locked host memory from a cache of freed blocks (the driver's allocation costs
 * milliseconds). Counted as host_alloc and host_free. Sizes are rounded up to a size class
 * (4 KiB, then four classes per power of two); a freed block is zeroed (its requested bytes)
 * when it enters the cache, so it is reused clean. The driver allocates a block with the
 * calling thread bound to the CPUs of its device's NUMA node, where its pages are placed.
 * When the driver refuses a block, the cache is released and the allocation tried again.
 * vram_host_free: NULL -> success; a pointer vram_host_alloc did not return -> 5; an interior
 * one -> 7. */
VRAM_API int vram_host_alloc(void **ptr, size_t bytes);
VRAM_API int vram_host_free(void *ptr);
/* Page-lock a caller's buffer until vram_host_unregister(ptr): copies from and to it then skip
 * staging. Overlapping an already registered or vram_host_alloc range -> 2 (overlap). */
VRAM_API int vram_host_register(void *ptr, size_t bytes);
VRAM_API int vram_host_unregister(void *ptr);
/* Return cached pinned blocks to the driver, keeping at most keep_bytes. */
VRAM_API int vram_host_trim(size_t keep_bytes);

typedef struct vram_host_stats {
    uint32_t struct_size;
    uint32_t reserved_;
    uint64_t live_count;        /* vram_host_alloc blocks in use */
    uint64_t live_bytes;        /* their page-locked bytes (sizes rounded to their class) */
    uint64_t cached_bytes;      /* freed blocks kept for reuse */
    uint64_t registered_count;  /* caller buffers registered */
    uint64_t registered_bytes;
    uint64_t staging_bytes;     /* page-locked staging buffers */
    uint64_t staged_copies_total;
    uint64_t staging_cleared_bytes_total; /* staging bytes cleared after copies of
                                           * VRAM_WIPE_ON_FREE allocations */
} vram_host_stats;

VRAM_API int vram_host_stats_get(vram_host_stats *out, size_t out_size);

/* The host NUMA node nearest a device, where its staging buffers and threads live: read from
 * /sys/bus/pci/devices/<its PCI bus id>/numa_node (VRAMOBS_SYSFS_PCI_DEVICES names another
 * directory, for tests). -1 when unknown (no such file, a single-node machine reporting -1,
 * the host backend): then nothing is bound. Invalid device -> 2. */
VRAM_API int vram_host_numa_node(int device, int *node);

/* ------------------------------------------------------------------------------------------
 * Device memory pool and batch allocation.
 *
 * Off by default. On a device where it is on, vram_free keeps the device memory of an
 * allocation in a cache of size classes instead of returning it to the driver, and
 * vram_malloc on that device takes a cached block of its class before calling the driver.
 * Everything else is as without the pool: the five operations keep their codes, a reused
 * block is a new allocation (new generation; bytes past the requested size are out of
 * bounds), timing and counts are the same operations. A block freed under VRAM_WIPE_ON_FREE
 * is wiped before it enters the cache. When the driver is out of memory, the device's cache
 * is released and the allocation tried once more (and, where the class rounded the request
 * up, once more at its own size) before it fails.
 *
 * Classes follow the driver's rounding: up to 1 MiB, four per power of two, 256 B-granular
 * (a block is at most 25% larger than the request); above, whole 2 MiB pages. A freed block
 * enters the cache only while the cache has room for it (else it goes to the driver), and a
 * block of an allocation made while the pool was off goes to the driver as without the pool.
 * Cached blocks count as held memory: vram_select_backend answers 10 while any are cached
 * (trim first). A device latched failed drops its cached blocks without a driver call
 * (counted in dropped_bytes_total).
 * ---------------------------------------------------------------------------------------- */

/* Turn the pool of a device on, caching at most max_cached_bytes (0 turns it off and
 * releases the cache); lowering the bound releases what is over it, counted as pool_trim.
 * An unknown device -> 2 (invalid_device). */
VRAM_API int vram_pool_set(int device, uint64_t max_cached_bytes);
/* Return cached blocks to the driver, largest first, keeping at most keep_bytes per device
 * (device -1: every device). Timed and counted as the operation pool_trim, once per device,
 * with the bytes released. A release the driver refuses leaves its block cached -> 9 (8 if
 * the failure latched the device). */
VRAM_API int vram_pool_trim(int device, uint64_t keep_bytes);

typedef struct vram_pool_stats {
    uint32_t struct_size;
    uint32_t enabled;
    uint64_t max_cached_bytes;
    uint64_t cached_bytes;       /* device memory held by cached blocks */
    uint64_t cached_blocks;
    uint64_t hits_total;         /* allocations served from the cache */
    uint64_t misses_total;       /* allocations that called the driver while it was on */
    uint64_t released_bytes_total; /* returned to the driver by trim, overflow or OOM */
    uint64_t live_blocks;        /* pool blocks handed out to live allocations */
    uint64_t slack_bytes;        /* their bytes past the driver's rounding of the requests:
                                    device memory the registry's live_rounded_bytes omits */
    uint64_t oom_retries_total;  /* allocations tried again after out-of-memory */
    uint64_t oom_give_ups_total; /* of those, the ones that failed all the same */
    uint64_t dropped_bytes_total; /* cached bytes dropped with their failed device */
} vram_pool_stats;

/* One device's pool, or the sum over all with device -1 (enabled: how many are on). */
VRAM_API int vram_pool_stats_get(int device, vram_pool_stats *out, size_t out_size);

/* Allocate count buffers on this thread's device, all or nothing: on success ptrs[i] (and
 * generations[i], when generations is not NULL) for every i; on failure every ptrs[i] is
 * NULL, nothing stays allocated, and the code is that of the first failure. Each size follows
 * vram_malloc's rules; count 0 or a count whose arrays would overflow -> 2. Every input is
 * checked before the first allocation: a refusal counts as one refused malloc. Then each
 * buffer counts as one malloc, and the buffers undone after a failure as frees. */
VRAM_API int vram_malloc_batch(void **ptrs, const size_t *sizes, size_t count, uint32_t tag,
                               uint64_t *generations);

/* ------------------------------------------------------------------------------------------
 * Asynchronous operations on CUDA streams.
 *
 * stream is a CUstream handle as an integer, as PyTorch (torch.cuda.Stream.cuda_stream), CuPy
 * (cupy.cuda.Stream.ptr) and cuda-python (int(CUstream)) expose it: 0 and 1 name the legacy
 * default stream, 2 the per-thread default stream. It must belong to the primary context of
 * the allocation's device (the context the CUDA runtime, PyTorch and CuPy use); a stream of
 * another context or device -> 2 (reason invalid_stream). The driver cannot tell a stale or
 * made-up handle from a stream: passing one is undefined, as for every CUDA API.
 *
 * An async copy is validated like its synchronous twin (the same codes and reasons, no byte
 * written on a refusal), ordered after the work already on stream, and hands back a
 * completion: query, wait for and release it. The copy's allocations (and its host range,
 * when that is vram_host_alloc or registered memory) stay held until it is complete: a
 * vram_free, vram_free_async, vram_host_free or vram_host_unregister of them first waits for
 * the copies in flight on them, so no copy ever touches released memory. With ordinary
 * (pageable) host memory the copy is done when the call returns, as the driver does it:
 * after the stream's earlier work, through the staging engines; likewise copies between
 * devices without peer access. An async copy is counted once, when its completion is first
 * seen complete, under its direction's operation (memcpy_h2d, memcpy_d2h, memcpy_d2d,
 * memcpy_p2p), with the time the device took from its start to its end on the stream as its
 * latency: the histograms show the copy's own bandwidth. Refusals are counted at the call.
 * On the host backend there are no streams: any stream value is accepted and the copy is done
 * when the call returns.
 * ---------------------------------------------------------------------------------------- */

typedef struct vram_completion vram_completion;

/* The async twins of vram_memcpy_h2d, vram_memcpy_d2h and vram_memcpy_d2d. completion NULL
 * -> 2 (null_pointer); on success *completion must be released, on failure it is NULL. */
VRAM_API int vram_memcpy_h2d_async(void *dst, const void *src, size_t bytes, uintptr_t stream,
                                   vram_completion **completion);
VRAM_API int vram_memcpy_d2h_async(void *dst, const void *src, size_t bytes, uintptr_t stream,
                                   vram_completion **completion);
VRAM_API int vram_memcpy_d2d_async(void *dst, const void *src, size_t bytes, uintptr_t stream,
                                   vram_completion **completion);

/* *done = 1 once the copy is complete (its status is then what vram_completion_wait returns),
 * else 0; never blocks. NULL arguments -> 2. */
VRAM_API int vram_completion_query(vram_completion *completion, int *done);
/* Block until the copy is complete; return its status: 0, 3 (the copy failed on the device)
 * or 8 (a sticky error, the device latched failed). NULL -> 2. */
VRAM_API int vram_completion_wait(vram_completion *completion);
/* Wait as vram_completion_wait, then destroy the completion and return the copy's status.
 * NULL -> success. The completion must not be used afterwards. */
VRAM_API int vram_completion_release(vram_completion *completion);

/* Stream-ordered allocation from the device's default memory pool (cuMemAllocAsync): the
 * memory is usable by work on stream (or after it) at once, by the host's synchronous copies
 * after the stream's earlier work. Otherwise as vram_malloc_ex, on this thread's device,
 * counted as malloc. */
VRAM_API int vram_malloc_async(void **ptr, size_t bytes, uint32_t tag, uint64_t *generation,
                               uintptr_t stream);
/* Free the allocation (ptr, generation) in stream order (cuMemFreeAsync): it leaves the
 * registry at once and its memory returns to the driver after the stream's earlier work.
 * Codes as vram_free_ex; under VRAM_WIPE_ON_FREE it is zeroed on the stream first. Any
 * allocation may be freed this way, and a vram_malloc_async one by vram_free too. */
VRAM_API int vram_free_async(void *ptr, uint64_t generation, uintptr_t stream);

typedef struct vram_async_stats {
    uint32_t struct_size;
    uint32_t reserved_;
    uint64_t pending;          /* completions not yet seen complete */
    uint64_t enqueued_total;   /* copies handed to a stream */
    uint64_t immediate_total;  /* async calls done when they returned (pageable, staged, host) */
    uint64_t completed_total;  /* enqueued copies seen complete, successfully */
    uint64_t failed_total;     /* enqueued copies that failed on the device */
    uint64_t drained_total;    /* waited for by a free before their caller waited */
} vram_async_stats;

VRAM_API int vram_async_stats_get(vram_async_stats *out, size_t out_size);

/* ------------------------------------------------------------------------------------------
 * Observability: per-call aggregates kept in C with atomics, copied out on demand.
 * ---------------------------------------------------------------------------------------- */

#define VRAM_OP_MAP(XX)                   \
    XX(0, MALLOC, "malloc")               \
    XX(1, FREE, "free")                   \
    XX(2, MEMCPY_H2D, "memcpy_h2d")       \
    XX(3, MEMCPY_D2H, "memcpy_d2h")       \
    XX(4, GET_INFO, "get_info")           \
    XX(5, WIPE, "wipe")                   \
    XX(6, MEMCPY_D2D, "memcpy_d2d")       \
    XX(7, MEMCPY_P2P, "memcpy_p2p")       \
    XX(8, MEMCPY_STAGED, "memcpy_staged") \
    XX(9, MIGRATE, "migrate")             \
    XX(10, HOST_ALLOC, "host_alloc")      \
    XX(11, HOST_FREE, "host_free")        \
    XX(12, POOL_TRIM, "pool_trim")

typedef enum vram_op {
#define VRAM_OP_ENUM_(code, name, label) VRAM_OP_##name = code,
    VRAM_OP_MAP(VRAM_OP_ENUM_)
#undef VRAM_OP_ENUM_
    VRAM_OP_COUNT_, /* sentinel */
    VRAM_OP_NONE = -1 /* not an operation: device and backend queries */
} vram_op;

VRAM_API const char *vram_op_name(int op); /* "memcpy_h2d"; "none" for VRAM_OP_NONE */

#define VRAM_OP_CAPACITY 16        /* room for later operations without an ABI change */
#define VRAM_STATUS_CAPACITY 16
#define VRAM_REASON_CAPACITY 16
#define VRAM_LATENCY_BUCKETS 28    /* call time <= 2^(7+i) ns, i < 27; the last is +Inf */
#define VRAM_SIZE_BUCKETS 20       /* bytes <= 2^(8+2i), i < 19; the last is +Inf */
#define VRAM_BANDWIDTH_BUCKETS 24  /* bytes/s <= 2^(20+i), i < 23; the last is +Inf */

typedef enum vram_histogram {
    VRAM_HISTOGRAM_LATENCY_NS = 0,
    VRAM_HISTOGRAM_SIZE_BYTES = 1,
    VRAM_HISTOGRAM_BANDWIDTH_BYTES_PER_SECOND = 2
} vram_histogram;

/* Upper bound of bucket i of a histogram; UINT64_MAX for the +Inf bucket and out of range. */
VRAM_API uint64_t vram_histogram_bound(int histogram, int bucket);

/* Counts per bucket are not cumulative. Byte counts are of successful calls. */
typedef struct vram_op_stats {
    uint64_t calls;
    uint64_t by_status[VRAM_STATUS_CAPACITY];
    uint64_t refused_by_reason[VRAM_REASON_CAPACITY];
    uint64_t latency_ok[VRAM_LATENCY_BUCKETS];
    uint64_t latency_error[VRAM_LATENCY_BUCKETS];
    uint64_t latency_ok_sum_ns;
    uint64_t latency_error_sum_ns;
    uint64_t bytes_ok;
    uint64_t size_ok[VRAM_SIZE_BUCKETS];
    uint64_t bandwidth_ok[VRAM_BANDWIDTH_BUCKETS]; /* copies only */
    uint64_t bandwidth_ok_sum;                     /* bytes/s summed over those copies */
} vram_op_stats;

typedef struct vram_stats {
    uint32_t struct_size; /* sizeof(vram_stats) of the library that filled it */
    uint32_t op_count;    /* VRAM_OP_COUNT_ */
    vram_op_stats ops[VRAM_OP_CAPACITY];
} vram_stats;

/* Copy the aggregates of one device (or all devices with device = -1). out_size must be at
 * least sizeof(vram_stats). Calls refused before a device was known count on the thread's
 * device. */
VRAM_API int vram_stats_get(int device, vram_stats *out, size_t out_size);

typedef struct vram_registry_stats {
    uint32_t struct_size;
    uint32_t reserved_;
    uint64_t live_count;
    uint64_t live_bytes;          /* bytes asked for */
    uint64_t live_rounded_bytes;  /* device memory they take, as the driver rounds sizes */
    uint64_t peak_bytes;          /* highest live_bytes seen */
    uint64_t allocs_total;
    uint64_t frees_total;
    uint64_t repeated_frees_total;   /* idempotent frees of already-freed pointers */
    uint64_t lost_total;             /* dropped because their device failed */
    uint64_t stale_evicted_total;    /* entries the driver reused: freed outside vram_free */
    uint64_t oldest_alloc_ns;        /* vram_now_ns() of the oldest live allocation, 0 if none */
    uint64_t tag_live_count[VRAM_MAX_TAGS];
    uint64_t tag_live_bytes[VRAM_MAX_TAGS];
} vram_registry_stats;

VRAM_API int vram_registry_stats_get(int device, vram_registry_stats *out, size_t out_size);

typedef struct vram_alloc_record {
    uint64_t address;
    uint64_t bytes;
    uint64_t generation;
    uint64_t alloc_ns; /* vram_now_ns() at allocation */
    int32_t device;
    uint32_t tag;
} vram_alloc_record;

/* Copy up to capacity live allocations of a device (-1: all), oldest first, into out
 * (which may be NULL when capacity is 0); *count receives how many are live in all. */
VRAM_API int vram_registry_list(int device, vram_alloc_record *out, size_t capacity,
                                size_t *count);

/* The monotonic clock the library times with, in nanoseconds. */
VRAM_API uint64_t vram_now_ns(void);

#ifdef __cplusplus
}
#endif

#endif /* VRAM_OPS_H */
