//! The ABI itself, in every mode: version, names and messages, struct layouts, and the
//! argument checks of the functions that answer without a device.

use std::ffi::c_int;
use std::mem::{offset_of, size_of};
use std::ptr;

use vramobs_ffi_tests::*;

/// VRAM_STATUS_MAP of the header: (code, name, message).
const STATUSES: [(c_int, &str, &str); 11] = [
    (VRAM_SUCCESS, "VRAM_SUCCESS", "success"),
    (
        VRAM_ERR_ALLOCATION_FAILED,
        "VRAM_ERR_ALLOCATION_FAILED",
        "allocation failed: device memory exhausted or refused",
    ),
    (VRAM_ERR_INVALID_PARAMETERS, "VRAM_ERR_INVALID_PARAMETERS", "invalid parameters"),
    (VRAM_ERR_COPY_FAILED, "VRAM_ERR_COPY_FAILED", "copy failed in the driver"),
    (VRAM_ERR_NO_DEVICE, "VRAM_ERR_NO_DEVICE", "no usable CUDA driver or device"),
    (
        VRAM_ERR_UNKNOWN_POINTER,
        "VRAM_ERR_UNKNOWN_POINTER",
        "pointer is not a live allocation made by vram_malloc",
    ),
    (VRAM_ERR_OUT_OF_BOUNDS, "VRAM_ERR_OUT_OF_BOUNDS", "range runs past the end of its allocation"),
    (
        VRAM_ERR_INTERIOR_POINTER,
        "VRAM_ERR_INTERIOR_POINTER",
        "pointer lies inside an allocation, not at its start",
    ),
    (
        VRAM_ERR_DEVICE_FAILED,
        "VRAM_ERR_DEVICE_FAILED",
        "device failed with a sticky error; the process must restart",
    ),
    (VRAM_ERR_DRIVER, "VRAM_ERR_DRIVER", "driver call failed"),
    (VRAM_ERR_BUSY, "VRAM_ERR_BUSY", "cannot change this while allocations are live"),
];

/// VRAM_REASON_MAP of the header: (code, label).
const REASONS: [(i32, &str); 16] = [
    (VRAM_REASON_NONE, "none"),
    (VRAM_REASON_NULL_POINTER, "null_pointer"),
    (VRAM_REASON_ZERO_SIZE, "zero_size"),
    (VRAM_REASON_SIZE_OVERFLOW, "size_overflow"),
    (VRAM_REASON_RANGE_WRAP, "range_wrap"),
    (VRAM_REASON_UNKNOWN_POINTER, "unknown_pointer"),
    (VRAM_REASON_FREED_POINTER, "freed_pointer"),
    (VRAM_REASON_INTERIOR_POINTER, "interior_pointer"),
    (VRAM_REASON_OUT_OF_BOUNDS, "out_of_bounds"),
    (VRAM_REASON_INVALID_DEVICE, "invalid_device"),
    (VRAM_REASON_INVALID_TAG, "invalid_tag"),
    (VRAM_REASON_INVALID_GENERATION, "invalid_generation"),
    (VRAM_REASON_INVALID_BACKEND, "invalid_backend"),
    (VRAM_REASON_OVERLAP, "overlap"),
    (VRAM_REASON_INVALID_CONFIG, "invalid_config"),
    (VRAM_REASON_INVALID_STREAM, "invalid_stream"),
];

#[test]
fn version_matches_the_header() {
    assert_eq!(VRAM_VERSION_NUMBER, 300, "0.3.0 is 0 * 10000 + 3 * 100 + 0");
    assert_eq!(unsafe { vram_version_number() }, VRAM_VERSION_NUMBER);
    assert_eq!(version_string(), VRAM_VERSION_STRING);
    assert_eq!(version_string(), "0.3.0");
}

#[test]
fn status_names_and_messages_match_the_header() {
    assert_eq!(STATUSES.len() as c_int, VRAM_STATUS_COUNT_);
    for (code, name, message) in STATUSES {
        assert_eq!(status_name(code), name, "vram_status_name({code})");
        assert_eq!(strerror(code), message, "vram_strerror({code})");
    }
    assert_eq!(status_name(0), "VRAM_SUCCESS");
}

#[test]
fn unknown_status_codes_have_names_and_messages() {
    for code in [VRAM_STATUS_COUNT_, 11, 12, 99, 255, -1, -4, c_int::MAX, c_int::MIN] {
        assert_eq!(status_name(code), "VRAM_UNKNOWN_STATUS", "vram_status_name({code})");
        // strerror: non-NULL (checked by the helper) and not empty.
        assert!(!strerror(code).is_empty(), "vram_strerror({code}) is empty");
    }
}

#[test]
fn reason_and_op_names_match_the_header() {
    assert_eq!(REASONS.len() as i32, VRAM_REASON_COUNT_);
    for (code, label) in REASONS {
        assert_eq!(reason_name(code), label, "vram_reason_name({code})");
    }
    for code in [VRAM_REASON_COUNT_, 17, -1, c_int::MAX, c_int::MIN] {
        assert_eq!(reason_name(code), "unknown", "vram_reason_name({code})");
    }
    let ops = [
        (VRAM_OP_MALLOC, "malloc"),
        (VRAM_OP_FREE, "free"),
        (VRAM_OP_MEMCPY_H2D, "memcpy_h2d"),
        (VRAM_OP_MEMCPY_D2H, "memcpy_d2h"),
        (VRAM_OP_GET_INFO, "get_info"),
        (VRAM_OP_WIPE, "wipe"),
        (VRAM_OP_MEMCPY_D2D, "memcpy_d2d"),
        (VRAM_OP_MEMCPY_P2P, "memcpy_p2p"),
        (VRAM_OP_MEMCPY_STAGED, "memcpy_staged"),
        (VRAM_OP_MIGRATE, "migrate"),
        (VRAM_OP_HOST_ALLOC, "host_alloc"),
        (VRAM_OP_HOST_FREE, "host_free"),
        (VRAM_OP_POOL_TRIM, "pool_trim"),
    ];
    assert_eq!(ops.len() as i32, VRAM_OP_COUNT_);
    for (code, label) in ops {
        assert_eq!(op_name(code), label, "vram_op_name({code})");
    }
    assert_eq!(op_name(VRAM_OP_NONE), "none", "vram_op_name(VRAM_OP_NONE)");
    for code in [VRAM_OP_COUNT_, 16, -2, c_int::MAX, c_int::MIN] {
        assert_eq!(op_name(code), "unknown", "vram_op_name({code})");
    }
}

#[test]
fn struct_layouts_match_the_header() {
    assert_eq!(size_of::<vram_error_info>(), 16);
    assert_eq!(offset_of!(vram_error_info, status), 0);
    assert_eq!(offset_of!(vram_error_info, reason), 4);
    assert_eq!(offset_of!(vram_error_info, op), 8);
    assert_eq!(offset_of!(vram_error_info, driver_error), 12);

    assert_eq!(size_of::<vram_alloc_record>(), 40);
    assert_eq!(offset_of!(vram_alloc_record, generation), 16);
    assert_eq!(offset_of!(vram_alloc_record, device), 32);
    assert_eq!(offset_of!(vram_alloc_record, tag), 36);

    // 2 x u32, 10 x u64, then two arrays of VRAM_MAX_TAGS u64.
    assert_eq!(VRAM_MAX_TAGS, 64);
    assert_eq!(size_of::<vram_registry_stats>(), 8 + 10 * 8 + 2 * 64 * 8);
    assert_eq!(offset_of!(vram_registry_stats, live_count), 8);
    assert_eq!(offset_of!(vram_registry_stats, oldest_alloc_ns), 80);
    assert_eq!(offset_of!(vram_registry_stats, tag_live_count), 88);
    assert_eq!(offset_of!(vram_registry_stats, tag_live_bytes), 88 + 64 * 8);

    // The library's own sizeof agrees.
    let s = registry_stats(-1);
    assert_eq!(s.struct_size as usize, size_of::<vram_registry_stats>());
}

#[test]
fn registry_queries_check_their_arguments() {
    let size = size_of::<vram_registry_stats>();
    let mut s = vram_registry_stats::default();
    unsafe {
        assert_status(vram_registry_stats_get(-1, ptr::null_mut(), size), 2, "stats NULL out");
        assert_status(vram_registry_stats_get(-1, &mut s, size - 1), 2, "stats short out_size");
        assert_status(vram_registry_stats_get(-1, &mut s, 0), 2, "stats out_size 0");
        assert_status(vram_registry_stats_get(-2, &mut s, size), 2, "stats device -2");
        assert_status(
            vram_registry_stats_get(VRAM_MAX_DEVICES, &mut s, size),
            2,
            "stats device VRAM_MAX_DEVICES",
        );
        // A larger buffer is fine (a newer caller's struct).
        let mut big = [vram_registry_stats::default(); 2];
        assert_status(vram_registry_stats_get(0, big.as_mut_ptr(), 2 * size), 0, "stats big out");
        assert_eq!(big[0].struct_size as usize, size);

        let mut count = usize::MAX;
        let mut rec = vram_alloc_record::default();
        assert_status(vram_registry_list(-1, &mut rec, 1, ptr::null_mut()), 2, "list NULL count");
        assert_status(
            vram_registry_list(-1, ptr::null_mut(), 1, &mut count),
            2,
            "list NULL out with capacity 1",
        );
        assert_status(vram_registry_list(-2, ptr::null_mut(), 0, &mut count), 2, "list device -2");
        assert_status(vram_registry_list(32, ptr::null_mut(), 0, &mut count), 2, "list device 32");
        assert_status(vram_registry_list(-1, ptr::null_mut(), 0, &mut count), 0, "list count only");
        assert_ne!(count, usize::MAX, "vram_registry_list did not set *count");
    }
}

#[test]
fn device_queries_check_their_arguments() {
    let mut state: c_int = -1;
    unsafe {
        assert_status(vram_device_count(ptr::null_mut()), 2, "vram_device_count(NULL)");
        assert_status(vram_device_state_get(0, ptr::null_mut()), 2, "device_state_get NULL");
        assert_status(vram_device_state_get(-1, &mut state), 2, "device_state_get(-1)");
        assert_status(vram_device_state_get(VRAM_MAX_DEVICES, &mut state), 2, "state(32)");
        assert_status(vram_set_device(-1), 2, "vram_set_device(-1)");
        assert_status(vram_set_device(VRAM_MAX_DEVICES), 2, "vram_set_device(32)");
        assert_status(vram_get_device(ptr::null_mut()), 2, "vram_get_device(NULL)");
        let mut device: c_int = -1;
        assert_status(vram_get_device(&mut device), 0, "vram_get_device");
        assert_eq!(device, 0, "a thread's device is 0 until it sets one");
        // The last valid device index is out of range unless the machine has 32 devices.
        let mut count: c_int = 0;
        if vram_device_count(&mut count) == VRAM_SUCCESS && count < VRAM_MAX_DEVICES {
            assert_status(vram_device_state_get(count, &mut state), 0, "state(count)");
            assert_eq!(state, VRAM_DEVICE_UNAVAILABLE, "a device past the count");
            assert_status(vram_set_device(count), 2, "vram_set_device(count)");
        }
    }
}

#[test]
fn last_error_null_out_is_ignored() {
    // The header says none of its functions aborts; vram_last_error(NULL) must simply return.
    unsafe { vram_last_error(ptr::null_mut()) };
}

#[test]
fn monotonic_clock_advances() {
    let a = unsafe { vram_now_ns() };
    std::thread::sleep(std::time::Duration::from_millis(2));
    let b = unsafe { vram_now_ns() };
    assert!(b >= a + 1_000_000, "vram_now_ns went from {a} to {b} across a 2 ms sleep");
}

#[test]
fn mode_is_consistent_with_the_environment() {
    // Detecting the mode asserts the backend name against VRAMOBS_BACKEND.
    let m = mode();
    let mut state: c_int = -1;
    let status = unsafe { vram_device_state_get(0, &mut state) };
    assert_status(status, 0, "vram_device_state_get(0)");
    let expected = if m.has_device() { VRAM_DEVICE_USABLE } else { VRAM_DEVICE_UNAVAILABLE };
    assert_eq!(state, expected, "device 0 in mode {m:?}");
    assert_eq!(backend_diagnostic().is_empty(), m.has_device(), "diagnostic in mode {m:?}");
}

/// Set this thread's last error to a malloc refusal, so that a later check sees a fresh one.
fn prime_last_error() {
    assert_status(unsafe { vram_malloc(ptr::null_mut(), 64) }, 2, "vram_malloc(NULL, 64)");
    assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_MALLOC, "vram_malloc(NULL, 64)");
}

#[test]
fn every_failing_call_sets_the_last_error() {
    // Calls that are not operations report VRAM_OP_NONE.
    const NULL_P: i32 = VRAM_REASON_NULL_POINTER;
    const BAD_DEV: i32 = VRAM_REASON_INVALID_DEVICE;
    const BAD_NAME: i32 = VRAM_REASON_INVALID_BACKEND;
    type Case = (&'static str, fn() -> c_int, i32);
    let cases: [Case; 9] = [
        ("vram_device_count(NULL)", || unsafe { vram_device_count(ptr::null_mut()) }, NULL_P),
        (
            "vram_device_state_get(0, NULL)",
            || unsafe { vram_device_state_get(0, ptr::null_mut()) },
            NULL_P,
        ),
        ("vram_device_state_get(-1, &s)", || unsafe { vram_device_state_get(-1, &mut 0) }, BAD_DEV),
        ("vram_set_device(-1)", || unsafe { vram_set_device(-1) }, BAD_DEV),
        ("vram_get_device(NULL)", || unsafe { vram_get_device(ptr::null_mut()) }, NULL_P),
        (
            "vram_select_backend(\"bogus\")",
            || unsafe { vram_select_backend(c"bogus".as_ptr()) },
            BAD_NAME,
        ),
        ("vram_select_backend(NULL)", || unsafe { vram_select_backend(ptr::null()) }, BAD_NAME),
        (
            "vram_registry_stats_get(short)",
            || unsafe { vram_registry_stats_get(-1, &mut vram_registry_stats::default(), 8) },
            VRAM_REASON_NONE,
        ),
        (
            "vram_registry_list(count NULL)",
            || unsafe { vram_registry_list(-1, ptr::null_mut(), 0, ptr::null_mut()) },
            VRAM_REASON_NONE,
        ),
    ];
    for (what, call, reason) in cases {
        prime_last_error();
        assert_status(call(), VRAM_ERR_INVALID_PARAMETERS, what);
        let e = last_error();
        assert_eq!(
            e,
            vram_error_info { status: 2, reason, op: VRAM_OP_NONE, driver_error: 0 },
            "last error after {what}: reason {} (expected {}), op {}",
            reason_name(e.reason),
            reason_name(reason),
            op_name(e.op)
        );
    }
}
