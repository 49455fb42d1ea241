//! The CUDA backend without a driver or device (VRAMOBS_BACKEND unset or "cuda" on a machine
//! with no GPU): every operation with valid arguments answers VRAM_ERR_NO_DEVICE (4), with
//! invalid arguments VRAM_ERR_INVALID_PARAMETERS (2), and vram_free(NULL) succeeds. Failed calls
//! leave their outputs NULL or 0. Skipped, with a note, where a device is available.

use std::ffi::{c_int, c_void};
use std::ptr;

use vramobs_ffi_tests::*;

/// An address no allocation could have: there is no device.
const FAKE_DEVICE: usize = 0x7f00_0000_1000;

fn no_device(test: &str) -> bool {
    let m = mode();
    if m != Mode::NoDevice {
        eprintln!("{test}: skipped, mode {m:?} has a device (tests/behaviour.rs runs instead)");
    }
    m == Mode::NoDevice
}

#[test]
fn the_backend_reports_no_device() {
    if !no_device("the_backend_reports_no_device") {
        return;
    }
    assert_eq!(backend_name(), "cuda");
    assert!(!backend_diagnostic().is_empty(), "no device, yet no diagnostic");
    let mut count: c_int = 7;
    assert_status(unsafe { vram_device_count(&mut count) }, 4, "vram_device_count");
    assert_eq!(count, 0);
    let mut state: c_int = -1;
    assert_status(unsafe { vram_device_state_get(0, &mut state) }, 0, "device_state_get(0)");
    assert_eq!(state, VRAM_DEVICE_UNAVAILABLE);
    assert_status(unsafe { vram_set_device(0) }, 4, "vram_set_device(0)");
    assert_status(unsafe { vram_set_device(-1) }, 2, "vram_set_device(-1)");
}

#[test]
fn malloc_with_valid_arguments_answers_no_device() {
    if !no_device("malloc_with_valid_arguments_answers_no_device") {
        return;
    }
    for bytes in [1usize, 255, 256, 4097, 1 << 20, 1 << 60, usize::MAX - 255] {
        let mut p = addr(FAKE_DEVICE);
        assert_status(unsafe { vram_malloc(&mut p, bytes) }, 4, &format!("vram_malloc({bytes})"));
        assert!(p.is_null(), "vram_malloc({bytes}) failed but left *ptr = {p:?}");
        assert_last_error(4, VRAM_REASON_NONE, VRAM_OP_MALLOC, "after vram_malloc");

        let mut g = 77u64;
        let mut p = addr(FAKE_DEVICE);
        let status = unsafe { vram_malloc_ex(&mut p, bytes, 63, &mut g) };
        assert_status(status, 4, &format!("vram_malloc_ex({bytes}, tag 63)"));
        assert!(p.is_null());
        assert_eq!(g, 0, "a failed vram_malloc_ex must zero its generation");
        let status = unsafe { vram_malloc_ex(&mut p, bytes, 0, ptr::null_mut()) };
        assert_status(status, 4, "vram_malloc_ex with a NULL generation");
    }
}

#[test]
fn malloc_with_invalid_arguments_answers_invalid_parameters() {
    if !no_device("malloc_with_invalid_arguments_answers_invalid_parameters") {
        return;
    }
    unsafe {
        assert_status(vram_malloc(ptr::null_mut(), 64), 2, "vram_malloc(NULL, 64)");
        assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_MALLOC, "malloc(NULL)");

        let mut p = addr(FAKE_DEVICE);
        assert_status(vram_malloc(&mut p, 0), 2, "vram_malloc(&p, 0)");
        assert!(p.is_null(), "vram_malloc(&p, 0) left *ptr = {p:?}");
        assert_last_error(2, VRAM_REASON_ZERO_SIZE, VRAM_OP_MALLOC, "malloc(0)");

        for bytes in [usize::MAX, usize::MAX - 100, usize::MAX - 254] {
            let mut p = addr(FAKE_DEVICE);
            assert_status(vram_malloc(&mut p, bytes), 2, &format!("vram_malloc({bytes:#x})"));
            assert!(p.is_null());
            assert_last_error(2, VRAM_REASON_SIZE_OVERFLOW, VRAM_OP_MALLOC, "malloc(overflow)");
        }

        let mut g = 77u64;
        let mut p = addr(FAKE_DEVICE);
        assert_status(vram_malloc_ex(&mut p, 64, 64, &mut g), 2, "vram_malloc_ex(tag 64)");
        assert!(p.is_null());
        assert_eq!(g, 0);
        assert_last_error(2, VRAM_REASON_INVALID_TAG, VRAM_OP_MALLOC, "malloc_ex(tag 64)");
        assert_status(vram_malloc_ex(ptr::null_mut(), 64, 0, &mut g), 2, "malloc_ex(NULL)");
    }
}

#[test]
fn free_answers_no_device_except_for_null() {
    if !no_device("free_answers_no_device_except_for_null") {
        return;
    }
    unsafe {
        assert_status(vram_free(ptr::null_mut()), 0, "vram_free(NULL)");
        assert_status(vram_free(ptr::null_mut()), 0, "vram_free(NULL) again");
        assert_status(vram_free(addr(FAKE_DEVICE)), 4, "vram_free(a device-looking pointer)");
        assert_last_error(4, VRAM_REASON_NONE, VRAM_OP_FREE, "after vram_free");
        assert_status(vram_free(addr(FAKE_DEVICE + 1)), 4, "vram_free(an odd pointer)");

        assert_status(vram_free_ex(addr(FAKE_DEVICE), 0), 2, "vram_free_ex(p, generation 0)");
        assert_last_error(2, VRAM_REASON_INVALID_GENERATION, VRAM_OP_FREE, "free_ex(gen 0)");
        assert_status(vram_free_ex(ptr::null_mut(), 0), 2, "vram_free_ex(NULL, generation 0)");
        assert_status(vram_free_ex(ptr::null_mut(), 1), 0, "vram_free_ex(NULL, 1)");
        // A well-formed generation: the device is asked about first.
        assert_status(vram_free_ex(addr(FAKE_DEVICE), 1), 4, "vram_free_ex(p, 1)");
        assert_status(vram_free_ex(addr(FAKE_DEVICE), u64::MAX), 4, "vram_free_ex(p, MAX)");
    }
}

/// Both copies with one set of arguments: (h2d status, d2h status).
fn copies(device: *mut c_void, host: *mut c_void, bytes: usize) -> (c_int, c_int) {
    unsafe { (vram_memcpy_h2d(device, host, bytes), vram_memcpy_d2h(host, device, bytes)) }
}

#[test]
fn copies_answer_no_device_or_invalid_parameters() {
    if !no_device("copies_answer_no_device_or_invalid_parameters") {
        return;
    }
    let mut rng = XorShift64::from_time("no_device copies");
    let mut host = rng.bytes(4097);
    let before = host.clone();
    let h = host.as_mut_ptr().cast::<c_void>();
    let d = addr(FAKE_DEVICE);

    // Valid arguments: no device.
    for bytes in [1usize, 3, 4097] {
        let hs = copies(d, h, bytes);
        assert_eq!(hs, (4, 4), "copies of {bytes} bytes");
    }
    unsafe {
        assert_status(vram_memcpy_h2d(d, h.cast_const(), 16), 4, "h2d");
        assert_last_error(4, VRAM_REASON_NONE, VRAM_OP_MEMCPY_H2D, "after h2d");
        assert_status(vram_memcpy_d2h(h, d, 16), 4, "d2h");
        assert_last_error(4, VRAM_REASON_NONE, VRAM_OP_MEMCPY_D2H, "after d2h");
    }

    // Invalid arguments, checked before the device.
    let null = ptr::null_mut::<c_void>();
    assert_eq!(copies(null, h, 16), (2, 2), "NULL device pointer");
    assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_MEMCPY_D2H, "NULL device pointer");
    assert_eq!(copies(d, null, 16), (2, 2), "NULL host pointer");
    assert_eq!(copies(null, null, 16), (2, 2), "both NULL");
    assert_eq!(copies(d, h, 0), (2, 2), "zero bytes");
    assert_last_error(2, VRAM_REASON_ZERO_SIZE, VRAM_OP_MEMCPY_D2H, "zero bytes");
    assert_eq!(copies(addr(usize::MAX - 10), h, 100), (2, 2), "device range wraps");
    assert_last_error(2, VRAM_REASON_RANGE_WRAP, VRAM_OP_MEMCPY_D2H, "device range wraps");
    assert_eq!(copies(d, addr(usize::MAX - 10), 100), (2, 2), "host range wraps");
    assert_eq!(copies(d, h, usize::MAX), (2, 2), "usize::MAX bytes wrap");
    assert_eq!(host, before, "a refused copy wrote into host memory");
}

#[test]
fn get_info_answers_no_device_and_zeroes_its_outputs() {
    if !no_device("get_info_answers_no_device_and_zeroes_its_outputs") {
        return;
    }
    let (mut free, mut total) = (123usize, 456usize);
    assert_status(unsafe { vram_get_info(&mut free, &mut total) }, 4, "vram_get_info");
    assert_eq!((free, total), (0, 0), "outputs after a failed vram_get_info");
    assert_last_error(4, VRAM_REASON_NONE, VRAM_OP_GET_INFO, "after vram_get_info");

    let mut free = 123usize;
    assert_status(unsafe { vram_get_info(&mut free, ptr::null_mut()) }, 2, "get_info(&f, NULL)");
    assert_eq!(free, 0);
    assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_GET_INFO, "get_info(&f, NULL)");
    let mut total = 456usize;
    assert_status(unsafe { vram_get_info(ptr::null_mut(), &mut total) }, 2, "get_info(NULL, &t)");
    assert_eq!(total, 0);
    let status = unsafe { vram_get_info(ptr::null_mut(), ptr::null_mut()) };
    assert_status(status, 2, "get_info(NULL, NULL)");
}

#[test]
fn nothing_is_ever_live() {
    if !no_device("nothing_is_ever_live") {
        return;
    }
    let s = registry_stats(-1);
    assert_eq!((s.live_count, s.live_bytes, s.allocs_total), (0, 0, 0));
    assert_eq!(s.oldest_alloc_ns, 0);
    assert!(registry_list().is_empty());
}
