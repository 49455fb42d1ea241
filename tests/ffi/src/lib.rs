//! Hand-written Rust bindings to `libvram_ops` (native/include/vram_ops.h) and the small
//! harness its integration tests share.
//!
//! The declarations mirror the header one for one: `size_t` is `usize`, `int` is `c_int`,
//! `unsigned` is `c_uint`, `uintN_t` is `uN`, and every struct is `#[repr(C)]` with the
//! header's fields in the header's order (tests/abi.rs checks the sizes and offsets, and that
//! the library's own `struct_size` agrees).
//!
//! The harness:
//! * [`mode`] says what the process is testing, from `VRAMOBS_BACKEND` (which the library reads
//!   too) and from what the library reports: the host backend, the CUDA backend on a real
//!   device, or the CUDA backend without one.
//! * [`shared`] / [`exclusive`]: the library's registry and backend are process-global while
//!   libtest runs the tests of one binary in parallel threads. Every test that allocates holds
//!   [`shared`]; a test that asserts exact global deltas (registry stats, `vram_get_info`) or
//!   touches a freed address (which another thread's allocation could otherwise reuse) holds
//!   [`exclusive`] instead. No `--test-threads=1` needed.
//! * [`XorShift64`]: a tiny PRNG seeded from the clock (or `VRAMOBS_TEST_SEED`) that never
//!   writes a zero byte, so that freshly zeroed memory cannot pass for copied data.
//! * [`DeviceBuffer`]: an allocation that frees itself, by generation, when dropped.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Constants of the header.
// ---------------------------------------------------------------------------------------------

pub const VRAM_VERSION_MAJOR: c_uint = 0;
pub const VRAM_VERSION_MINOR: c_uint = 3;
pub const VRAM_VERSION_PATCH: c_uint = 0;
/// `VRAM_VERSION_MAJOR * 10000 + VRAM_VERSION_MINOR * 100 + VRAM_VERSION_PATCH`: 300 for 0.3.0.
pub const VRAM_VERSION_NUMBER: c_uint =
    VRAM_VERSION_MAJOR * 10000 + VRAM_VERSION_MINOR * 100 + VRAM_VERSION_PATCH;
pub const VRAM_VERSION_STRING: &str = "0.3.0";

/// `vram_status` (VRAM_STATUS_MAP). 0-2 are the specification's.
pub const VRAM_SUCCESS: c_int = 0;
pub const VRAM_ERR_ALLOCATION_FAILED: c_int = 1;
pub const VRAM_ERR_INVALID_PARAMETERS: c_int = 2;
pub const VRAM_ERR_COPY_FAILED: c_int = 3;
pub const VRAM_ERR_NO_DEVICE: c_int = 4;
pub const VRAM_ERR_UNKNOWN_POINTER: c_int = 5;
pub const VRAM_ERR_OUT_OF_BOUNDS: c_int = 6;
pub const VRAM_ERR_INTERIOR_POINTER: c_int = 7;
pub const VRAM_ERR_DEVICE_FAILED: c_int = 8;
pub const VRAM_ERR_DRIVER: c_int = 9;
pub const VRAM_ERR_BUSY: c_int = 10;
/// Sentinel after the last status (`VRAM_STATUS_COUNT_`): not a status.
pub const VRAM_STATUS_COUNT_: c_int = 11;

/// `vram_reason` (VRAM_REASON_MAP): why a call was refused before reaching the driver.
pub const VRAM_REASON_NONE: i32 = 0;
pub const VRAM_REASON_NULL_POINTER: i32 = 1;
pub const VRAM_REASON_ZERO_SIZE: i32 = 2;
pub const VRAM_REASON_SIZE_OVERFLOW: i32 = 3;
pub const VRAM_REASON_RANGE_WRAP: i32 = 4;
pub const VRAM_REASON_UNKNOWN_POINTER: i32 = 5;
pub const VRAM_REASON_FREED_POINTER: i32 = 6;
pub const VRAM_REASON_INTERIOR_POINTER: i32 = 7;
pub const VRAM_REASON_OUT_OF_BOUNDS: i32 = 8;
pub const VRAM_REASON_INVALID_DEVICE: i32 = 9;
pub const VRAM_REASON_INVALID_TAG: i32 = 10;
pub const VRAM_REASON_INVALID_GENERATION: i32 = 11;
pub const VRAM_REASON_INVALID_BACKEND: i32 = 12;
pub const VRAM_REASON_OVERLAP: i32 = 13;
pub const VRAM_REASON_INVALID_CONFIG: i32 = 14;
pub const VRAM_REASON_INVALID_STREAM: i32 = 15;
pub const VRAM_REASON_COUNT_: i32 = 16;

/// `vram_op` (VRAM_OP_MAP).
pub const VRAM_OP_MALLOC: i32 = 0;
pub const VRAM_OP_FREE: i32 = 1;
pub const VRAM_OP_MEMCPY_H2D: i32 = 2;
pub const VRAM_OP_MEMCPY_D2H: i32 = 3;
pub const VRAM_OP_GET_INFO: i32 = 4;
pub const VRAM_OP_WIPE: i32 = 5;
pub const VRAM_OP_MEMCPY_D2D: i32 = 6;
pub const VRAM_OP_MEMCPY_P2P: i32 = 7;
pub const VRAM_OP_MEMCPY_STAGED: i32 = 8;
pub const VRAM_OP_MIGRATE: i32 = 9;
pub const VRAM_OP_HOST_ALLOC: i32 = 10;
pub const VRAM_OP_HOST_FREE: i32 = 11;
pub const VRAM_OP_POOL_TRIM: i32 = 12;
pub const VRAM_OP_COUNT_: i32 = 13;
/// Not an operation: device and backend queries (in `vram_error_info.op`).
pub const VRAM_OP_NONE: i32 = -1;

/// `vram_device_state`.
pub const VRAM_DEVICE_USABLE: c_int = 0;
pub const VRAM_DEVICE_FAILED: c_int = 1;
pub const VRAM_DEVICE_UNAVAILABLE: c_int = 2;

/// Sizes are accounted rounded up to this.
pub const VRAM_ALIGNMENT: usize = 256;
pub const VRAM_MAX_DEVICES: c_int = 32;
/// Owner tags 0..63; 0 means untagged.
pub const VRAM_MAX_TAGS: usize = 64;
/// Freed pointers remembered for idempotent free.
pub const VRAM_FREED_MEMORY: usize = 65536;

// ---------------------------------------------------------------------------------------------
// Structs of the header.
// ---------------------------------------------------------------------------------------------

/// The last failed call on this thread (`vram_last_error`): every function that returns a
/// failure sets it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vram_error_info {
    /// `vram_status`
    pub status: i32,
    /// `vram_reason` for refusals, else 0
    pub reason: i32,
    /// `vram_op`, or VRAM_OP_NONE for calls that are not operations
    pub op: i32,
    /// the driver's code (CUresult) when a driver call failed, else 0
    pub driver_error: i32,
}

/// Live-allocation bookkeeping of one device, or of all (`vram_registry_stats_get`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct vram_registry_stats {
    pub struct_size: u32,
    pub reserved_: u32,
    pub live_count: u64,
    /// bytes asked for
    pub live_bytes: u64,
    /// bytes accounted, rounded up to VRAM_ALIGNMENT
    pub live_rounded_bytes: u64,
    /// highest live_bytes seen
    pub peak_bytes: u64,
    pub allocs_total: u64,
    pub frees_total: u64,
    /// idempotent frees of already-freed pointers
    pub repeated_frees_total: u64,
    /// dropped because their device failed
    pub lost_total: u64,
    /// entries the driver reused: freed outside vram_free
    pub stale_evicted_total: u64,
    /// vram_now_ns() of the oldest live allocation, 0 if none
    pub oldest_alloc_ns: u64,
    pub tag_live_count: [u64; VRAM_MAX_TAGS],
    pub tag_live_bytes: [u64; VRAM_MAX_TAGS],
}

impl Default for vram_registry_stats {
    fn default() -> Self {
        // Not derivable: arrays over 32 elements have no Default.
        Self {
            struct_size: 0,
            reserved_: 0,
            live_count: 0,
            live_bytes: 0,
            live_rounded_bytes: 0,
            peak_bytes: 0,
            allocs_total: 0,
            frees_total: 0,
            repeated_frees_total: 0,
            lost_total: 0,
            stale_evicted_total: 0,
            oldest_alloc_ns: 0,
            tag_live_count: [0; VRAM_MAX_TAGS],
            tag_live_bytes: [0; VRAM_MAX_TAGS],
        }
    }
}

/// One live allocation (`vram_registry_list`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vram_alloc_record {
    pub address: u64,
    pub bytes: u64,
    pub generation: u64,
    /// vram_now_ns() at allocation
    pub alloc_ns: u64,
    pub device: i32,
    pub tag: u32,
}

// ---------------------------------------------------------------------------------------------
// Functions of the header.
// ---------------------------------------------------------------------------------------------

extern "C" {
    // Version.
    pub fn vram_version_number() -> c_uint;
    pub fn vram_version_string() -> *const c_char;

    // Names: static strings for any int, never NULL.
    pub fn vram_status_name(status: c_int) -> *const c_char;
    pub fn vram_strerror(status: c_int) -> *const c_char;
    pub fn vram_reason_name(reason: c_int) -> *const c_char;
    pub fn vram_op_name(op: c_int) -> *const c_char;

    // The five operations of the specification.
    pub fn vram_malloc(ptr: *mut *mut c_void, bytes: usize) -> c_int;
    pub fn vram_free(ptr: *mut c_void) -> c_int;
    pub fn vram_memcpy_h2d(dst: *mut c_void, src: *const c_void, bytes: usize) -> c_int;
    pub fn vram_memcpy_d2h(dst: *mut c_void, src: *const c_void, bytes: usize) -> c_int;
    pub fn vram_get_info(free_bytes: *mut usize, total_bytes: *mut usize) -> c_int;

    // Extensions.
    pub fn vram_malloc_ex(
        ptr: *mut *mut c_void,
        bytes: usize,
        tag: u32,
        generation: *mut u64,
    ) -> c_int;
    pub fn vram_free_ex(ptr: *mut c_void, generation: u64) -> c_int;

    pub fn vram_device_count(count: *mut c_int) -> c_int;
    pub fn vram_set_device(device: c_int) -> c_int;
    pub fn vram_get_device(device: *mut c_int) -> c_int;
    pub fn vram_device_state_get(device: c_int, state: *mut c_int) -> c_int;

    pub fn vram_select_backend(name: *const c_char) -> c_int;
    pub fn vram_backend_name() -> *const c_char;
    pub fn vram_backend_diagnostic() -> *const c_char;

    pub fn vram_last_error(out: *mut vram_error_info);

    pub fn vram_registry_stats_get(
        device: c_int,
        out: *mut vram_registry_stats,
        out_size: usize,
    ) -> c_int;
    pub fn vram_registry_list(
        device: c_int,
        out: *mut vram_alloc_record,
        capacity: usize,
        count: *mut usize,
    ) -> c_int;

    pub fn vram_now_ns() -> u64;

    // Pinned host memory and copies on streams.
    pub fn vram_host_alloc(ptr: *mut *mut c_void, bytes: usize) -> c_int;
    pub fn vram_host_free(ptr: *mut c_void) -> c_int;
    pub fn vram_memcpy_h2d_async(
        dst: *mut c_void,
        src: *const c_void,
        bytes: usize,
        stream: usize,
        completion: *mut *mut c_void,
    ) -> c_int;
    pub fn vram_memcpy_d2h_async(
        dst: *mut c_void,
        src: *const c_void,
        bytes: usize,
        stream: usize,
        completion: *mut *mut c_void,
    ) -> c_int;
    pub fn vram_completion_query(completion: *mut c_void, done: *mut c_int) -> c_int;
    pub fn vram_completion_wait(completion: *mut c_void) -> c_int;
    pub fn vram_completion_release(completion: *mut c_void) -> c_int;
}

// ---------------------------------------------------------------------------------------------
// Safe helpers.
// ---------------------------------------------------------------------------------------------

/// A static C string of the library as `&str`; panics on NULL (the header promises never).
fn static_str(p: *const c_char, what: &str) -> &'static str {
    assert!(!p.is_null(), "{what} returned NULL");
    // SAFETY: non-NULL, and the header promises a static NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or_else(|_| panic!("{what}: not UTF-8"))
}

/// `vram_status_name(status)`, e.g. "VRAM_SUCCESS".
pub fn status_name(status: c_int) -> &'static str {
    static_str(unsafe { vram_status_name(status) }, "vram_status_name")
}

/// `vram_strerror(status)`.
pub fn strerror(status: c_int) -> &'static str {
    static_str(unsafe { vram_strerror(status) }, "vram_strerror")
}

/// `vram_reason_name(reason)`, e.g. "out_of_bounds".
pub fn reason_name(reason: c_int) -> &'static str {
    static_str(unsafe { vram_reason_name(reason) }, "vram_reason_name")
}

/// `vram_op_name(op)`, e.g. "memcpy_h2d"; "none" for VRAM_OP_NONE.
pub fn op_name(op: c_int) -> &'static str {
    static_str(unsafe { vram_op_name(op) }, "vram_op_name")
}

/// `vram_backend_name()`: "cuda" or "host".
pub fn backend_name() -> &'static str {
    static_str(unsafe { vram_backend_name() }, "vram_backend_name")
}

/// `vram_backend_diagnostic()`: why the backend is unavailable, "" when it is available.
pub fn backend_diagnostic() -> &'static str {
    static_str(unsafe { vram_backend_diagnostic() }, "vram_backend_diagnostic")
}

/// `vram_version_string()`.
pub fn version_string() -> &'static str {
    static_str(unsafe { vram_version_string() }, "vram_version_string")
}

/// This thread's last failed call.
pub fn last_error() -> vram_error_info {
    // Garbage first, so that a library that wrote nothing is caught.
    let mut info = vram_error_info { status: -1, reason: -1, op: -1, driver_error: -1 };
    unsafe { vram_last_error(&mut info) };
    info
}

/// `vram_registry_stats_get(device)`; panics unless it succeeds.
pub fn registry_stats(device: c_int) -> vram_registry_stats {
    let mut s = vram_registry_stats::default();
    let status = unsafe {
        vram_registry_stats_get(device, &mut s, std::mem::size_of::<vram_registry_stats>())
    };
    assert_status(status, VRAM_SUCCESS, "vram_registry_stats_get");
    s
}

/// Every live allocation of all devices, oldest first.
pub fn registry_list() -> Vec<vram_alloc_record> {
    loop {
        let mut count = 0usize;
        let status = unsafe { vram_registry_list(-1, std::ptr::null_mut(), 0, &mut count) };
        assert_status(status, VRAM_SUCCESS, "vram_registry_list (count)");
        // Room for allocations made meanwhile by other threads.
        let capacity = count + 64;
        let mut out = vec![vram_alloc_record::default(); capacity];
        let status = unsafe { vram_registry_list(-1, out.as_mut_ptr(), capacity, &mut count) };
        assert_status(status, VRAM_SUCCESS, "vram_registry_list");
        if count <= capacity {
            out.truncate(count);
            return out;
        }
    }
}

/// The live record of an allocation of this generation, if any.
pub fn live_record(generation: u64) -> Option<vram_alloc_record> {
    registry_list().into_iter().find(|r| r.generation == generation)
}

/// `code (NAME)`, for messages.
pub fn describe(status: c_int) -> String {
    format!("{status} ({})", status_name(status))
}

/// Panic unless `actual == expected`, naming both codes and this thread's last error.
#[track_caller]
pub fn assert_status(actual: c_int, expected: c_int, what: &str) {
    if actual != expected {
        let e = last_error();
        panic!(
            "{what}: expected {}, got {} (last error: status {}, reason {} ({}), op {} ({}), \
             driver error {})",
            describe(expected),
            describe(actual),
            e.status,
            e.reason,
            reason_name(e.reason),
            e.op,
            op_name(e.op),
            e.driver_error
        );
    }
}

/// Panic unless this thread's last error is exactly (status, reason, op).
#[track_caller]
pub fn assert_last_error(status: c_int, reason: i32, op: i32, what: &str) {
    let e = last_error();
    assert_eq!(
        (e.status, e.reason, e.op),
        (status, reason, op),
        "{what}: last error (status, reason, op) is ({} {}, {} {}, {} {}), expected \
         ({}, {}, {})",
        e.status,
        status_name(e.status),
        e.reason,
        reason_name(e.reason),
        e.op,
        op_name(e.op),
        describe(status),
        reason_name(reason),
        op_name(op)
    );
}

/// `bytes` rounded up to VRAM_ALIGNMENT, as the library accounts them.
pub fn rounded(bytes: usize) -> usize {
    bytes.div_ceil(VRAM_ALIGNMENT) * VRAM_ALIGNMENT
}

/// An address as a pointer, for made-up or offset pointers the library must refuse or resolve.
pub fn addr(a: usize) -> *mut c_void {
    a as *mut c_void
}

// ---------------------------------------------------------------------------------------------
// What this process tests.
// ---------------------------------------------------------------------------------------------

/// The backend under test, from `VRAMOBS_BACKEND` and what the library answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `VRAMOBS_BACKEND=host`: device memory emulated in host RAM.
    Host,
    /// The CUDA backend with at least one usable device.
    CudaDevice,
    /// The CUDA backend without a driver or device: everything answers VRAM_ERR_NO_DEVICE.
    NoDevice,
}

impl Mode {
    /// Whether device memory can be allocated: the behavioural suite runs.
    pub fn has_device(self) -> bool {
        matches!(self, Mode::Host | Mode::CudaDevice)
    }
}

fn detect_mode() -> Mode {
    let wanted = std::env::var("VRAMOBS_BACKEND").unwrap_or_default();
    let backend = backend_name();
    let mut count: c_int = -1;
    let status = unsafe { vram_device_count(&mut count) };
    let mode = match wanted.as_str() {
        "host" => {
            assert_eq!(backend, "host", "VRAMOBS_BACKEND=host, but the library serves {backend}");
            assert_status(status, VRAM_SUCCESS, "vram_device_count on the host backend");
            Mode::Host
        }
        "" | "cuda" => {
            assert_eq!(backend, "cuda", "the default backend must be cuda, not {backend}");
            match status {
                VRAM_SUCCESS => Mode::CudaDevice,
                VRAM_ERR_NO_DEVICE => {
                    assert_eq!(count, 0, "vram_device_count must set 0 without a device");
                    Mode::NoDevice
                }
                other => panic!("vram_device_count on cuda answered {}", describe(other)),
            }
        }
        other => panic!("VRAMOBS_BACKEND='{other}': these tests know 'host' and 'cuda'"),
    };
    if mode.has_device() {
        assert!(count >= 1, "vram_device_count succeeded with {count} devices");
    }
    eprintln!(
        "vramobs-ffi-tests: mode {mode:?}, backend {backend}, devices {count}, diagnostic '{}'",
        backend_diagnostic()
    );
    mode
}

/// The mode of this process, detected once.
pub fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(detect_mode)
}

/// For the behavioural suite: true when there is device memory to test (host or a real GPU);
/// otherwise says the test is skipped and returns false.
pub fn device_available(test: &str) -> bool {
    let m = mode();
    if !m.has_device() {
        eprintln!("{test}: skipped, no device ({m:?}); tests/no_device.rs covers this case");
    }
    m.has_device()
}

// ---------------------------------------------------------------------------------------------
// Serialising the tests that need the registry to themselves.
// ---------------------------------------------------------------------------------------------

static REGISTRY: RwLock<()> = RwLock::new(());

/// Held by every test that allocates: may run beside the others.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    // A failed test poisons the lock; the others still have something to test.
    REGISTRY.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by a test that asserts exact process-global deltas or touches freed addresses: no
/// other test of this binary allocates, frees or copies meanwhile.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    REGISTRY.write().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Test data.
// ---------------------------------------------------------------------------------------------

/// xorshift64* (Vigna): small, fast, and good enough for test data.
#[derive(Clone, Debug)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator seeded with `seed` (0 is replaced: xorshift never leaves the zero state).
    pub fn new(seed: u64) -> Self {
        Self { state: if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed } }
    }

    /// Seeded from `VRAMOBS_TEST_SEED` (decimal or 0x-hex) if set, else from the clock, mixed
    /// with `name` so that threads and tests differ. The seed is printed (libtest shows it when
    /// the test fails): rerun with VRAMOBS_TEST_SEED=<base> to replay.
    pub fn from_time(name: &str) -> Self {
        let base = match std::env::var("VRAMOBS_TEST_SEED") {
            Ok(s) => {
                let t = s.trim();
                match t.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => t.parse::<u64>().ok(),
                }
                .unwrap_or_else(|| panic!("VRAMOBS_TEST_SEED='{s}' is not a number"))
            }
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5EED),
        };
        // FNV-1a of the name.
        let salt = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        eprintln!("{name}: VRAMOBS_TEST_SEED={base}");
        Self::new(base ^ salt)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }

    /// In `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Fill with pseudo-random bytes, none of them zero.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            for (b, w) in chunk.iter_mut().zip(word) {
                *b = if w == 0 { 0xA5 } else { w };
            }
        }
    }

    /// `n` pseudo-random non-zero bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Index of the first differing byte of two equally long slices, for short failure messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Panic with the first differing offset unless `actual == expected`.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return; // memcmp: fast even in debug builds
    }
    if let Some(i) = first_difference(actual, expected) {
        panic!(
            "{what}: {} bytes differ at offset {i} of {} (got {:#04x}, expected {:#04x})",
            actual.iter().zip(expected).filter(|(x, y)| x != y).count(),
            actual.len(),
            actual[i],
            expected[i]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// An allocation that frees itself.
// ---------------------------------------------------------------------------------------------

/// Device memory from `vram_malloc_ex`, freed by generation (`vram_free_ex`) on drop, so that a
/// drop after an explicit free can never free someone else's allocation at a reused address.
#[derive(Debug)]
pub struct DeviceBuffer {
    ptr: *mut c_void,
    len: usize,
    generation: u64,
}

// SAFETY: the pointer names device memory; the library is thread-safe.
unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// `len` bytes, untagged.
    pub fn new(len: usize) -> Result<Self, c_int> {
        Self::with_tag(len, 0)
    }

    /// `len` bytes counted under `tag`.
    pub fn with_tag(len: usize, tag: u32) -> Result<Self, c_int> {
        let mut ptr = std::ptr::null_mut();
        let mut generation = 0u64;
        let status = unsafe { vram_malloc_ex(&mut ptr, len, tag, &mut generation) };
        if status != VRAM_SUCCESS {
            assert!(ptr.is_null(), "failed vram_malloc_ex left *ptr = {ptr:?}");
            return Err(status);
        }
        assert!(!ptr.is_null(), "vram_malloc_ex succeeded with a NULL pointer");
        assert_ne!(generation, 0, "vram_malloc_ex succeeded with generation 0");
        Ok(Self { ptr, len, generation })
    }

    /// `len` bytes; panics unless the allocation succeeds.
    #[track_caller]
    pub fn alloc(len: usize) -> Self {
        Self::new(len).unwrap_or_else(|s| panic!("vram_malloc_ex({len}) failed: {}", describe(s)))
    }

    /// `len` bytes holding pseudo-random data, which is returned too.
    #[track_caller]
    pub fn filled(len: usize, rng: &mut XorShift64) -> (Self, Vec<u8>) {
        let buf = Self::alloc(len);
        let data = rng.bytes(len);
        assert_status(buf.write(0, &data), VRAM_SUCCESS, "filling a fresh buffer");
        (buf, data)
    }

    pub fn ptr(&self) -> *mut c_void {
        self.ptr
    }

    /// The address `offset` bytes in (not checked: for out-of-range pointers too).
    pub fn at(&self, offset: usize) -> *mut c_void {
        self.ptr.cast::<u8>().wrapping_add(offset).cast()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// `vram_memcpy_h2d(ptr + offset, data, data.len())`.
    pub fn write(&self, offset: usize, data: &[u8]) -> c_int {
        unsafe { vram_memcpy_h2d(self.at(offset), data.as_ptr().cast(), data.len()) }
    }

    /// `vram_memcpy_d2h(out, ptr + offset, out.len())`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> c_int {
        unsafe { vram_memcpy_d2h(out.as_mut_ptr().cast(), self.at(offset), out.len()) }
    }

    /// The whole buffer; panics unless the copy succeeds.
    #[track_caller]
    pub fn contents(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        assert_status(self.read(0, &mut out), VRAM_SUCCESS, "reading a whole buffer back");
        out
    }

    /// Free now, by generation; returns the status. Dropping afterwards frees nothing.
    pub fn free(mut self) -> c_int {
        let status = unsafe { vram_free_ex(self.ptr, self.generation) };
        self.ptr = std::ptr::null_mut();
        status
    }

    /// Give up ownership without freeing: (pointer, generation).
    pub fn into_raw(mut self) -> (*mut c_void, u64) {
        let raw = (self.ptr, self.generation);
        self.ptr = std::ptr::null_mut();
        raw
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            let status = unsafe { vram_free_ex(self.ptr, self.generation) };
            if status != VRAM_SUCCESS && !std::thread::panicking() {
                panic!("dropping a DeviceBuffer: vram_free_ex gave {}", describe(status));
            }
        }
    }
}
