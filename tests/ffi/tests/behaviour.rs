//! The behaviour of the five operations and their extensions on device memory: the host
//! backend (VRAMOBS_BACKEND=host) or the CUDA backend on a real GPU, with the same test bodies.
//! Skipped, with a note, where there is no device (tests/no_device.rs covers that).
//!
//! Tests run in parallel threads of one process while the library's registry is global: each
//! test holds `shared()`, or `exclusive()` when it asserts exact global deltas or touches a
//! freed address that another thread's allocation could otherwise reuse.

use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use vramobs_ffi_tests::*;

/// An address that no backend hands out: the first page is never mapped.
const NEVER_ALLOCATED: usize = 0x10;

/// Skip the test unless there is device memory; else hold the shared lock.
macro_rules! device_test {
    ($name:literal) => {{
        if !device_available($name) {
            return;
        }
        shared()
    }};
}

/// Skip the test unless there is device memory; else hold the exclusive lock.
macro_rules! exclusive_device_test {
    ($name:literal) => {{
        if !device_available($name) {
            return;
        }
        exclusive()
    }};
}

// ---------------------------------------------------------------------------------------------
// vram_malloc
// ---------------------------------------------------------------------------------------------

#[test]
fn malloc_null_out_pointer_is_invalid() {
    let _g = device_test!("malloc_null_out_pointer_is_invalid");
    assert_status(unsafe { vram_malloc(ptr::null_mut(), 64) }, 2, "vram_malloc(NULL, 64)");
    assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_MALLOC, "vram_malloc(NULL, 64)");
    let mut g = 5u64;
    let status = unsafe { vram_malloc_ex(ptr::null_mut(), 64, 0, &mut g) };
    assert_status(status, 2, "vram_malloc_ex(NULL, 64)");
}

#[test]
fn malloc_zero_bytes_is_invalid_and_sets_null() {
    let _g = device_test!("malloc_zero_bytes_is_invalid_and_sets_null");
    let mut p = addr(0xdead_beef);
    assert_status(unsafe { vram_malloc(&mut p, 0) }, 2, "vram_malloc(&p, 0)");
    assert!(p.is_null(), "vram_malloc(&p, 0) left *ptr = {p:?}");
    assert_last_error(2, VRAM_REASON_ZERO_SIZE, VRAM_OP_MALLOC, "vram_malloc(&p, 0)");
}

#[test]
fn malloc_size_whose_rounding_overflows_is_invalid() {
    let _g = device_test!("malloc_size_whose_rounding_overflows_is_invalid");
    // bytes + 255 overflows from SIZE_MAX - 254 up.
    for bytes in [usize::MAX, usize::MAX - 1, usize::MAX - 100, usize::MAX - 254] {
        let mut p = addr(0xdead_beef);
        assert_status(unsafe { vram_malloc(&mut p, bytes) }, 2, &format!("malloc({bytes:#x})"));
        assert!(p.is_null(), "vram_malloc({bytes:#x}) left *ptr = {p:?}");
        assert_last_error(2, VRAM_REASON_SIZE_OVERFLOW, VRAM_OP_MALLOC, "rounding overflow");
    }
    // SIZE_MAX - 255 rounds to SIZE_MAX - 255 without overflow: valid, but no device has it.
    let mut p = addr(0xdead_beef);
    let status = unsafe { vram_malloc(&mut p, usize::MAX - 255) };
    assert_status(status, 1, "vram_malloc(SIZE_MAX - 255)");
    assert!(p.is_null());
}

#[test]
fn malloc_too_large_fails_cleanly_and_the_next_allocation_succeeds() {
    let _g = device_test!("malloc_too_large_fails_cleanly_and_the_next_allocation_succeeds");
    for bytes in [1usize << 60, 1usize << 50] {
        let mut p = addr(0xdead_beef);
        assert_status(unsafe { vram_malloc(&mut p, bytes) }, 1, &format!("malloc({bytes:#x})"));
        assert!(p.is_null(), "failed vram_malloc({bytes:#x}) left *ptr = {p:?}");
        let e = last_error();
        assert_eq!((e.status, e.reason, e.op), (1, VRAM_REASON_NONE, VRAM_OP_MALLOC));
        assert_ne!(e.driver_error, 0, "a driver refusal should carry the driver's code");

        let mut g = 9u64;
        let mut p = addr(0xdead_beef);
        let status = unsafe { vram_malloc_ex(&mut p, bytes, 3, &mut g) };
        assert_status(status, 1, "vram_malloc_ex(huge)");
        assert!(p.is_null());
        assert_eq!(g, 0, "a failed vram_malloc_ex must zero its generation");
    }
    // Out of memory is not sticky.
    let mut rng = XorShift64::from_time("after huge malloc");
    let (buf, data) = DeviceBuffer::filled(4097, &mut rng);
    assert_bytes_eq(&buf.contents(), &data, "a buffer allocated after a refusal");
    assert_status(buf.free(), 0, "freeing it");
}

#[test]
fn malloc_ex_tag_out_of_range_is_invalid() {
    let _g = device_test!("malloc_ex_tag_out_of_range_is_invalid");
    for tag in [VRAM_MAX_TAGS as u32, 65, u32::MAX] {
        let mut p = addr(0xdead_beef);
        let mut g = 9u64;
        let status = unsafe { vram_malloc_ex(&mut p, 64, tag, &mut g) };
        assert_status(status, 2, &format!("vram_malloc_ex(tag {tag})"));
        assert!(p.is_null());
        assert_eq!(g, 0);
        assert_last_error(2, VRAM_REASON_INVALID_TAG, VRAM_OP_MALLOC, "tag out of range");
    }
    // The last tag is valid.
    let buf = DeviceBuffer::with_tag(64, VRAM_MAX_TAGS as u32 - 1).expect("tag 63");
    assert_status(buf.free(), 0, "free tag 63");
}

#[test]
fn malloc_hands_out_distinct_disjoint_allocations() {
    let _g = device_test!("malloc_hands_out_distinct_disjoint_allocations");
    let mut rng = XorShift64::from_time("distinct allocations");
    let bufs: Vec<(DeviceBuffer, Vec<u8>)> =
        (0..32).map(|_| DeviceBuffer::filled(rng.range(1, 3000), &mut rng)).collect();
    let mut ranges: Vec<(usize, usize)> =
        bufs.iter().map(|(b, _)| (b.ptr() as usize, b.ptr() as usize + b.len())).collect();
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "allocations {:#x?} and {:#x?} overlap", w[0], w[1]);
    }
    let mut gens: Vec<u64> = bufs.iter().map(|(b, _)| b.generation()).collect();
    gens.sort();
    gens.dedup();
    assert_eq!(gens.len(), bufs.len(), "generations must be unique");
    for (b, data) in &bufs {
        assert_bytes_eq(&b.contents(), data, "a buffer among many");
    }
}

// ---------------------------------------------------------------------------------------------
// vram_free
// ---------------------------------------------------------------------------------------------

#[test]
fn free_null_is_a_successful_no_op() {
    let _g = device_test!("free_null_is_a_successful_no_op");
    assert_status(unsafe { vram_free(ptr::null_mut()) }, 0, "vram_free(NULL)");
    assert_status(unsafe { vram_free_ex(ptr::null_mut(), 1) }, 0, "vram_free_ex(NULL, 1)");
}

#[test]
fn double_free_succeeds_and_frees_nothing_more() {
    // Exclusive: between the two frees no other allocation may reuse the address.
    let _g = exclusive_device_test!("double_free_succeeds_and_frees_nothing_more");
    let mut p = ptr::null_mut();
    assert_status(unsafe { vram_malloc(&mut p, 1000) }, 0, "vram_malloc(1000)");
    let before = registry_stats(-1);
    assert_status(unsafe { vram_free(p) }, 0, "first vram_free");
    assert_status(unsafe { vram_free(p) }, 0, "second vram_free");
    assert_status(unsafe { vram_free(p) }, 0, "third vram_free");
    let after = registry_stats(-1);
    assert_eq!(after.frees_total, before.frees_total + 1, "one real free");
    assert_eq!(after.repeated_frees_total, before.repeated_frees_total + 2, "two repeats");
    assert_eq!(after.live_count, before.live_count - 1);
    assert_eq!(after.live_bytes, before.live_bytes - 1000);
}

#[test]
fn free_of_a_pointer_never_returned_is_unknown() {
    let _g = device_test!("free_of_a_pointer_never_returned_is_unknown");
    // Not a host heap address: on the host backend the heap once held allocations, and a
    // freed one's address is remembered (vram_free of it is an idempotent success).
    let on_stack = 0u64;
    for (what, p) in [
        ("a low address", addr(NEVER_ALLOCATED)),
        ("a stack address", ptr::addr_of!(on_stack) as *mut c_void),
        ("an odd address", addr(0x7654_3211)),
    ] {
        assert_status(unsafe { vram_free(p) }, 5, &format!("vram_free({what})"));
        assert_last_error(5, VRAM_REASON_UNKNOWN_POINTER, VRAM_OP_FREE, what);
    }
}

#[test]
fn free_of_an_interior_pointer_is_refused_and_the_allocation_stays_usable() {
    let _g = device_test!("free_of_an_interior_pointer_is_refused_and_the_allocation_stays_usable");
    let mut rng = XorShift64::from_time("interior free");
    let len = 4097;
    let (buf, data) = DeviceBuffer::filled(len, &mut rng);
    // Odd offsets: never the start of another allocation (every start is 256-aligned).
    for offset in [1, 7, 255, 2049, len - 1] {
        assert_status(unsafe { vram_free(buf.at(offset)) }, 7, &format!("vram_free(p + {offset})"));
        assert_last_error(7, VRAM_REASON_INTERIOR_POINTER, VRAM_OP_FREE, "interior free");
    }
    assert!(live_record(buf.generation()).is_some(), "the allocation must still be live");
    assert_bytes_eq(&buf.contents(), &data, "contents after refused interior frees");
    let fresh = rng.bytes(len);
    assert_status(buf.write(0, &fresh), 0, "writing after refused interior frees");
    assert_bytes_eq(&buf.contents(), &fresh, "round trip after refused interior frees");
    assert_status(buf.free(), 0, "the real free");
}

// ---------------------------------------------------------------------------------------------
// vram_memcpy_h2d / vram_memcpy_d2h: refusals
// ---------------------------------------------------------------------------------------------

/// Both copies with one set of arguments: (h2d status, d2h status).
fn copies(device: *mut c_void, host: *mut c_void, bytes: usize) -> (c_int, c_int) {
    unsafe { (vram_memcpy_h2d(device, host, bytes), vram_memcpy_d2h(host, device, bytes)) }
}

#[test]
fn copies_refuse_null_pointers_zero_sizes_and_wrapping_ranges() {
    let _g = device_test!("copies_refuse_null_pointers_zero_sizes_and_wrapping_ranges");
    let mut rng = XorShift64::from_time("copy refusals");
    let (buf, data) = DeviceBuffer::filled(1024, &mut rng);
    let mut host = rng.bytes(1024);
    let host_before = host.clone();
    let h = host.as_mut_ptr().cast::<c_void>();
    let d = buf.ptr();
    let null = ptr::null_mut::<c_void>();

    unsafe {
        assert_status(vram_memcpy_h2d(null, h, 16), 2, "h2d(NULL dst)");
        assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_MEMCPY_H2D, "h2d(NULL dst)");
        assert_status(vram_memcpy_h2d(d, null, 16), 2, "h2d(NULL src)");
        assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_MEMCPY_H2D, "h2d(NULL src)");
        assert_status(vram_memcpy_d2h(null, d, 16), 2, "d2h(NULL dst)");
        assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_MEMCPY_D2H, "d2h(NULL dst)");
        assert_status(vram_memcpy_d2h(h, null, 16), 2, "d2h(NULL src)");
        assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_MEMCPY_D2H, "d2h(NULL src)");
    }
    assert_eq!(copies(null, null, 16), (2, 2), "both NULL");
    assert_eq!(copies(d, h, 0), (2, 2), "zero bytes");
    assert_last_error(2, VRAM_REASON_ZERO_SIZE, VRAM_OP_MEMCPY_D2H, "zero bytes");
    assert_eq!(copies(null, h, 0), (2, 2), "NULL and zero bytes");

    // Ranges that wrap the address space: host side, device side, and by size alone.
    let wrap = addr(usize::MAX - 10);
    assert_eq!(copies(d, wrap, 100), (2, 2), "host range from SIZE_MAX - 10 wraps");
    assert_last_error(2, VRAM_REASON_RANGE_WRAP, VRAM_OP_MEMCPY_D2H, "host range wraps");
    assert_eq!(copies(wrap, h, 100), (2, 2), "device range from SIZE_MAX - 10 wraps");
    assert_last_error(2, VRAM_REASON_RANGE_WRAP, VRAM_OP_MEMCPY_D2H, "device range wraps");
    assert_eq!(copies(d, h, usize::MAX), (2, 2), "SIZE_MAX bytes wrap");
    assert_eq!(copies(buf.at(1), h, usize::MAX - 1), (2, 2), "SIZE_MAX - 1 bytes from p + 1");
    assert_eq!(copies(d, addr(usize::MAX), 1), (2, 2), "one byte at SIZE_MAX wraps");

    assert_eq!(host, host_before, "a refused copy wrote into host memory");
    assert_bytes_eq(&buf.contents(), &data, "a refused copy wrote into device memory");
}

#[test]
fn copies_past_the_end_are_out_of_bounds_and_write_nothing() {
    let _g = device_test!("copies_past_the_end_are_out_of_bounds_and_write_nothing");
    let mut rng = XorShift64::from_time("out of bounds");
    for len in [1usize, 3, 255, 256, 4097] {
        let (buf, data) = DeviceBuffer::filled(len, &mut rng);
        let mut cases = vec![(0, len + 1), (len - 1, 2), (0, len + 4096)];
        if len > 2 {
            cases.push((len / 2, len - len / 2 + 1));
            cases.push((1, len));
        }
        for (offset, bytes) in cases {
            let what = format!("{bytes} bytes at p + {offset} of {len}");
            let src = rng.bytes(bytes);
            assert_status(buf.write(offset, &src), 6, &format!("h2d {what}"));
            assert_last_error(6, VRAM_REASON_OUT_OF_BOUNDS, VRAM_OP_MEMCPY_H2D, &what);
            assert_bytes_eq(&buf.contents(), &data, &format!("device after refused h2d {what}"));

            let mut dst = rng.bytes(bytes);
            let dst_before = dst.clone();
            assert_status(buf.read(offset, &mut dst), 6, &format!("d2h {what}"));
            assert_last_error(6, VRAM_REASON_OUT_OF_BOUNDS, VRAM_OP_MEMCPY_D2H, &what);
            assert_eq!(dst, dst_before, "host after refused d2h {what}");
        }
        // One past the end lies in no allocation (odd lengths: not another one's start).
        if len % 2 == 1 {
            let mut one = [0x5Au8];
            let (h2d, d2h) = copies(buf.at(len), one.as_mut_ptr().cast(), 1);
            assert!(matches!(h2d, 5 | 6), "h2d at one past the end: {}", describe(h2d));
            assert!(matches!(d2h, 5 | 6), "d2h at one past the end: {}", describe(d2h));
            assert_eq!(one, [0x5A]);
            assert_bytes_eq(&buf.contents(), &data, "device after a copy one past the end");
        }
        assert_status(buf.free(), 0, "free");
    }
}

#[test]
fn copies_to_unknown_device_pointers_are_refused() {
    let _g = device_test!("copies_to_unknown_device_pointers_are_refused");
    let mut host = [0x11u8; 64];
    let stack_word = 0u64;
    for (what, p) in [
        ("a low address", addr(NEVER_ALLOCATED)),
        ("a stack address", ptr::addr_of!(stack_word) as *mut c_void),
        ("host memory", host.as_mut_ptr().wrapping_add(32).cast::<c_void>()),
    ] {
        let (h2d, d2h) = copies(p, host.as_mut_ptr().cast(), 16);
        assert_status(h2d, 5, &format!("h2d to {what}"));
        assert_status(d2h, 5, &format!("d2h from {what}"));
        let e = last_error();
        assert_eq!((e.status, e.op), (5, VRAM_OP_MEMCPY_D2H));
        // Unknown, or freed if the host heap once held an allocation there.
        assert!(
            matches!(e.reason, VRAM_REASON_UNKNOWN_POINTER | VRAM_REASON_FREED_POINTER),
            "reason {}",
            reason_name(e.reason)
        );
    }
    assert_eq!(stack_word, 0);
}

#[test]
fn copies_into_a_freed_buffer_are_refused() {
    // Exclusive: no other test may allocate at the freed address meanwhile.
    let _g = exclusive_device_test!("copies_into_a_freed_buffer_are_refused");
    let mut rng = XorShift64::from_time("freed buffer");
    for len in [256usize, 4097, (1 << 20) + 13] {
        let (buf, _) = DeviceBuffer::filled(len, &mut rng);
        let (p, generation) = buf.into_raw();
        assert_status(unsafe { vram_free(p) }, 0, "vram_free");
        assert!(live_record(generation).is_none(), "freed, yet listed as live");

        let mut host = rng.bytes(64);
        let before = host.clone();
        let (h2d, d2h) = copies(p, host.as_mut_ptr().cast(), 64);
        assert_status(h2d, 5, &format!("h2d into a freed buffer of {len}"));
        assert_status(d2h, 5, &format!("d2h from a freed buffer of {len}"));
        assert_last_error(5, VRAM_REASON_FREED_POINTER, VRAM_OP_MEMCPY_D2H, "freed buffer");
        // Inside the freed buffer, not at its start: unknown too.
        let (h2d, d2h) =
            copies(p.cast::<u8>().wrapping_add(17).cast(), host.as_mut_ptr().cast(), 8);
        assert_eq!((h2d, d2h), (5, 5), "copies inside a freed buffer of {len}");
        assert_eq!(host, before, "a refused d2h wrote into host memory");
        assert_status(unsafe { vram_free_ex(p, generation) }, 0, "free_ex of the freed generation");
    }
}

// ---------------------------------------------------------------------------------------------
// Copies: data
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trips_at_odd_sizes_and_offsets() {
    let _g = device_test!("round_trips_at_odd_sizes_and_offsets");
    let mut rng = XorShift64::from_time("round trips");
    for len in [1usize, 3, 255, 4097, (1 << 20) + 13] {
        // The whole buffer.
        let buf = DeviceBuffer::alloc(len);
        let data = rng.bytes(len);
        assert_status(buf.write(0, &data), 0, &format!("h2d of {len}"));
        let mut back = rng.bytes(len); // never zeros, and different from data
        assert_status(buf.read(0, &mut back), 0, &format!("d2h of {len}"));
        assert_bytes_eq(&back, &data, &format!("round trip of {len} bytes"));
        assert_status(buf.free(), 0, "free");

        // At odd offsets into a larger buffer, from odd host addresses.
        for offset in [1usize, 3, 7, 255, 257, 4095] {
            let buf = DeviceBuffer::alloc(offset + len + 5);
            let host = rng.bytes(len + 3);
            let src = &host[3..]; // an unaligned host address
            assert_status(buf.write(offset, src), 0, &format!("h2d of {len} at {offset}"));
            let expected = src.to_vec();
            let mut back = rng.bytes(len + 1);
            assert_status(buf.read(offset, &mut back[1..]), 0, &format!("d2h {len} at {offset}"));
            assert_bytes_eq(&back[1..], &expected, &format!("round trip of {len} at {offset}"));
        }
    }
}

#[test]
fn interior_copies_within_bounds_touch_only_their_range() {
    let _g = device_test!("interior_copies_within_bounds_touch_only_their_range");
    let mut rng = XorShift64::from_time("interior copies");
    let len = 65_537;
    let (buf, mut model) = DeviceBuffer::filled(len, &mut rng);
    for round in 0..200 {
        let offset = rng.below(len);
        let bytes = rng.range(1, len - offset);
        if rng.below(2) == 0 {
            let patch = rng.bytes(bytes);
            let what = format!("round {round}: h2d {bytes} at {offset}");
            assert_status(buf.write(offset, &patch), 0, &what);
            model[offset..offset + bytes].copy_from_slice(&patch);
        } else {
            let mut out = rng.bytes(bytes);
            let what = format!("round {round}: d2h {bytes} at {offset}");
            assert_status(buf.read(offset, &mut out), 0, &what);
            assert_bytes_eq(&out, &model[offset..offset + bytes], &what);
        }
    }
    // The last byte alone, and everything up to it.
    let last = [0xC3u8];
    assert_status(buf.write(len - 1, &last), 0, "h2d of the last byte");
    model[len - 1] = 0xC3;
    assert_bytes_eq(&buf.contents(), &model, "contents after 200 interior copies");
}

#[test]
fn copies_hold_their_allocation_against_a_concurrent_free() {
    // Exclusive: after the free no one else may allocate at that address while readers run.
    let _g = exclusive_device_test!("copies_hold_their_allocation_against_a_concurrent_free");
    let mut rng = XorShift64::from_time("free during copies");
    // Over glibc's largest mmap threshold (32 MiB), so that on the host backend the free
    // unmaps the memory: a copy still reading it would crash, not read stale bytes.
    let len = 64 << 20;
    let (buf, data) = DeviceBuffer::filled(len, &mut rng);
    let (p, generation) = buf.into_raw();
    let address = p as usize;
    let data = Arc::new(data);
    let readers = 4;
    let start = Arc::new(Barrier::new(readers + 1));
    let ok = Arc::new(AtomicUsize::new(0));
    let freed = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let (data, start, ok, freed) = (data.clone(), start.clone(), ok.clone(), freed.clone());
            thread::spawn(move || {
                let mut out = vec![0u8; len];
                start.wait();
                loop {
                    let was_freed = freed.load(Ordering::Acquire);
                    let status =
                        unsafe { vram_memcpy_d2h(out.as_mut_ptr().cast(), addr(address), len) };
                    match status {
                        0 => {
                            assert!(!was_freed, "a copy started after the free succeeded");
                            assert_bytes_eq(&out, &data, "a copy racing a free");
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        5 => return,
                        other => panic!("a copy racing a free gave {}", describe(other)),
                    }
                }
            })
        })
        .collect();
    start.wait();
    // Free once the readers are under way; a reader that died early ends the wait too.
    while ok.load(Ordering::Relaxed) < 8 && !handles.iter().any(|h| h.is_finished()) {
        thread::yield_now();
    }
    assert_status(unsafe { vram_free_ex(p, generation) }, 0, "the free racing copies");
    freed.store(true, Ordering::Release);
    for h in handles {
        h.join().expect("a reader panicked");
    }
    assert!(ok.load(Ordering::Relaxed) >= 8, "the readers stopped before the free");
}

/// Page-locked host memory from vram_host_alloc, freed on drop.
struct Pinned(*mut c_void, usize);

impl Pinned {
    fn new(len: usize) -> Self {
        let mut p = ptr::null_mut();
        assert_status(unsafe { vram_host_alloc(&mut p, len) }, 0, "vram_host_alloc");
        Pinned(p, len)
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: a live block of self.1 bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.0.cast::<u8>(), self.1) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        assert_status(unsafe { vram_host_free(self.0) }, 0, "vram_host_free");
    }
}

#[test]
fn async_copies_complete_and_a_free_waits_for_them() {
    let _g = device_test!("async_copies_complete_and_a_free_waits_for_them");
    let mut rng = XorShift64::from_time("async copies");
    let len = (16 << 20) + 3;
    let data = rng.bytes(len);
    let mut src = Pinned::new(len);
    src.bytes().copy_from_slice(&data);
    let mut out = Pinned::new(len);
    let buf = DeviceBuffer::new(len).expect("allocating the device buffer");
    let mut up = ptr::null_mut();
    // Stream 0: the legacy default stream of the device's context.
    let status = unsafe { vram_memcpy_h2d_async(buf.ptr(), src.0, len, 0, &mut up) };
    assert_status(status, 0, "vram_memcpy_h2d_async");
    assert!(!up.is_null(), "no completion for a copy handed to a stream");
    assert_status(unsafe { vram_completion_wait(up) }, 0, "the upload's completion");
    let mut done: c_int = 0;
    assert_status(unsafe { vram_completion_query(up, &mut done) }, 0, "query");
    assert_eq!(done, 1, "a waited-for copy is complete");
    assert_status(unsafe { vram_completion_release(up) }, 0, "release");
    let mut down = ptr::null_mut();
    let status = unsafe { vram_memcpy_d2h_async(out.0, buf.ptr(), len, 0, &mut down) };
    assert_status(status, 0, "vram_memcpy_d2h_async");
    // Freed before anyone waited: the free waits for the copy, which completes intact.
    let (p, generation) = buf.into_raw();
    assert_status(unsafe { vram_free_ex(p, generation) }, 0, "a free with a copy in flight");
    assert_status(unsafe { vram_completion_release(down) }, 0, "the drained copy's completion");
    assert_bytes_eq(out.bytes(), &data, "read back on a stream");
    let mut never = ptr::null_mut();
    let status = unsafe { vram_memcpy_h2d_async(p, src.0, len, 0, &mut never) };
    assert_status(status, 5, "an async copy into a freed buffer");
    assert!(never.is_null(), "a refused copy hands back no completion");
    assert_status(unsafe { vram_completion_release(ptr::null_mut()) }, 0, "release(NULL)");
}

// ---------------------------------------------------------------------------------------------
// vram_get_info
// ---------------------------------------------------------------------------------------------

#[test]
fn get_info_null_outputs_are_invalid_and_zero_the_other() {
    let _g = device_test!("get_info_null_outputs_are_invalid_and_zero_the_other");
    let mut free = 123usize;
    assert_status(unsafe { vram_get_info(&mut free, ptr::null_mut()) }, 2, "get_info(&f, NULL)");
    assert_eq!(free, 0, "free_bytes after get_info(&f, NULL)");
    assert_last_error(2, VRAM_REASON_NULL_POINTER, VRAM_OP_GET_INFO, "get_info(&f, NULL)");
    let mut total = 456usize;
    assert_status(unsafe { vram_get_info(ptr::null_mut(), &mut total) }, 2, "get_info(NULL, &t)");
    assert_eq!(total, 0, "total_bytes after get_info(NULL, &t)");
    let status = unsafe { vram_get_info(ptr::null_mut(), ptr::null_mut()) };
    assert_status(status, 2, "get_info(NULL, NULL)");
}

fn get_info() -> (usize, usize) {
    let (mut free, mut total) = (0usize, 0usize);
    assert_status(unsafe { vram_get_info(&mut free, &mut total) }, 0, "vram_get_info");
    assert!(total > 0 && free <= total, "free {free} of total {total}");
    (free, total)
}

#[test]
fn get_info_accounts_for_allocations() {
    // Exclusive: no other test allocates between the readings.
    let _g = exclusive_device_test!("get_info_accounts_for_allocations");
    let host = mode() == Mode::Host;
    // The host backend accounts exactly; a GPU in pages, so there use a size of whole pages.
    let sizes: &[usize] = if host { &[1, 255, 256, 4097, (1 << 20) + 13] } else { &[64 << 20] };
    for &bytes in sizes {
        let (free0, total0) = get_info();
        let buf = DeviceBuffer::alloc(bytes);
        let (free1, total1) = get_info();
        assert_eq!(total1, total0, "total changed with an allocation");
        assert!(
            free0 - free1 >= rounded(bytes),
            "free fell by {} after allocating {bytes} bytes ({} rounded)",
            free0 - free1,
            rounded(bytes)
        );
        if host {
            assert_eq!(free0 - free1, rounded(bytes), "host: free falls by the rounded size");
        }
        assert_status(buf.free(), 0, "free");
        let (free2, total2) = get_info();
        assert_eq!(total2, total0, "total changed with a free");
        if host {
            assert_eq!(free2, free0, "host: free comes back after vram_free");
        } else {
            assert!(free2 >= free1 + rounded(bytes), "free rose by {} only", free2 - free1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// vram_malloc_ex / vram_free_ex
// ---------------------------------------------------------------------------------------------

#[test]
fn generations_free_exactly_their_allocation() {
    let _g = device_test!("generations_free_exactly_their_allocation");
    let mut rng = XorShift64::from_time("generations");
    let (a, a_data) = DeviceBuffer::filled(1000, &mut rng);
    let (b, b_data) = DeviceBuffer::filled(1000, &mut rng);
    assert!(b.generation() > a.generation(), "generations must increase");
    let (pa, ga) = a.into_raw();

    unsafe {
        // Generation 0 and a generation never handed out are invalid; nothing is freed.
        assert_status(vram_free_ex(pa, 0), 2, "vram_free_ex(a, 0)");
        assert_last_error(2, VRAM_REASON_INVALID_GENERATION, VRAM_OP_FREE, "generation 0");
        assert_status(vram_free_ex(pa, u64::MAX), 2, "vram_free_ex(a, UINT64_MAX)");
        assert_last_error(2, VRAM_REASON_INVALID_GENERATION, VRAM_OP_FREE, "generation MAX");
        assert_status(vram_free_ex(pa, ga + (1 << 40)), 2, "vram_free_ex(a, far future)");
        assert!(live_record(ga).is_some(), "a refused free_ex freed the allocation");

        // A live generation named with any other pointer is refused; nothing is freed.
        for (what, p) in
            [("a + 1", pa.cast::<u8>().wrapping_add(1).cast()), ("0x10", addr(NEVER_ALLOCATED))]
        {
            assert_status(vram_free_ex(p, ga), 2, &format!("free_ex({what}, ga)"));
            assert_last_error(2, VRAM_REASON_INVALID_GENERATION, VRAM_OP_FREE, what);
            assert!(live_record(ga).is_some(), "free_ex({what}, ga) freed a");
        }

        // Another allocation's generation does not free this one.
        assert_status(vram_free_ex(pa, b.generation()), 2, "free_ex(a, b's generation)");
        assert!(live_record(ga).is_some(), "free_ex with b's generation freed a");
        assert!(live_record(b.generation()).is_some(), "free_ex(a, b's generation) freed b");
        let mut back = vec![0u8; 1000];
        assert_status(vram_memcpy_d2h(back.as_mut_ptr().cast(), pa, 1000), 0, "read a");
        assert_bytes_eq(&back, &a_data, "a after refused frees");

        // The right generation frees; again is a successful no-op.
        let record = live_record(ga).unwrap();
        assert_eq!((record.address, record.bytes, record.tag), (pa as u64, 1000, 0));
        assert_status(vram_free_ex(pa, ga), 0, "vram_free_ex(a, ga)");
        assert!(live_record(ga).is_none(), "free_ex(a, ga) left a live");
        assert_status(vram_free_ex(pa, ga), 0, "vram_free_ex(a, ga) again");
        assert_status(vram_free_ex(pa, ga), 0, "vram_free_ex(a, ga) a third time");
    }
    assert_bytes_eq(&b.contents(), &b_data, "b after a's frees");
    assert_status(b.free(), 0, "free b");
}

#[test]
fn a_stale_generation_never_frees_an_allocation_at_a_reused_address() {
    // Exclusive: the reuse of a's address must be by this test's own allocation.
    let _g =
        exclusive_device_test!("a_stale_generation_never_frees_an_allocation_at_a_reused_address");
    let mut rng = XorShift64::from_time("stale generation");
    let mut reused = 0;
    for _ in 0..16 {
        let a = DeviceBuffer::alloc(4096);
        let (pa, ga) = (a.ptr(), a.generation());
        assert_status(a.free(), 0, "free a");
        let (b, b_data) = DeviceBuffer::filled(4096, &mut rng);
        // Whether or not b took a's address, a's generation is gone: success, nothing freed.
        assert_status(unsafe { vram_free_ex(pa, ga) }, 0, "free_ex(a's address, a's generation)");
        assert_status(unsafe { vram_free_ex(b.ptr(), ga) }, 0, "free_ex(b, a's generation)");
        assert!(live_record(b.generation()).is_some(), "a stale generation freed b");
        assert_bytes_eq(&b.contents(), &b_data, "b after stale frees");
        if b.ptr() == pa {
            reused += 1;
        }
        assert_status(b.free(), 0, "free b");
    }
    eprintln!("the address was reused in {reused} of 16 rounds");
}

// ---------------------------------------------------------------------------------------------
// Registry stats, last error
// ---------------------------------------------------------------------------------------------

#[test]
fn registry_stats_rise_and_fall_exactly() {
    // Exclusive: exact deltas of process-global counters.
    let _g = exclusive_device_test!("registry_stats_rise_and_fall_exactly");
    let tag = 41u32;
    let s0 = registry_stats(-1);
    let d0 = registry_stats(0);
    let sizes = [1usize, 255, 256, 4097];
    let bufs: Vec<DeviceBuffer> =
        sizes.iter().map(|&n| DeviceBuffer::with_tag(n, tag).expect("alloc")).collect();
    let asked: u64 = sizes.iter().map(|&n| n as u64).sum();
    let accounted: u64 = sizes.iter().map(|&n| rounded(n) as u64).sum();

    let s1 = registry_stats(-1);
    assert_eq!(s1.struct_size as usize, std::mem::size_of::<vram_registry_stats>());
    assert_eq!(s1.live_count, s0.live_count + 4);
    assert_eq!(s1.live_bytes, s0.live_bytes + asked);
    assert_eq!(s1.live_rounded_bytes, s0.live_rounded_bytes + accounted);
    assert_eq!(s1.allocs_total, s0.allocs_total + 4);
    assert_eq!(s1.frees_total, s0.frees_total);
    assert_eq!(s1.tag_live_count[tag as usize], s0.tag_live_count[tag as usize] + 4);
    assert_eq!(s1.tag_live_bytes[tag as usize], s0.tag_live_bytes[tag as usize] + asked);
    assert!(s1.peak_bytes >= s1.live_bytes, "peak below live");
    assert_ne!(s1.oldest_alloc_ns, 0, "allocations are live, yet no oldest");
    assert!(s1.oldest_alloc_ns <= unsafe { vram_now_ns() });
    // All on device 0: its books moved the same way.
    let d1 = registry_stats(0);
    assert_eq!(d1.live_count, d0.live_count + 4);
    assert_eq!(d1.live_bytes, d0.live_bytes + asked);

    // Listed, with their sizes, tag and generations.
    let list = registry_list();
    assert_eq!(list.len() as u64, s1.live_count);
    for b in &bufs {
        let r = list.iter().find(|r| r.generation == b.generation()).expect("listed");
        assert_eq!((r.address, r.bytes, r.tag, r.device), (b.ptr() as u64, b.len() as u64, tag, 0));
    }
    assert!(list.windows(2).all(|w| w[0].alloc_ns <= w[1].alloc_ns), "oldest first");

    for (i, b) in bufs.into_iter().enumerate() {
        assert_status(b.free(), 0, "free");
        let s = registry_stats(-1);
        assert_eq!(s.live_count, s1.live_count - 1 - i as u64);
        assert_eq!(s.frees_total, s0.frees_total + 1 + i as u64);
    }
    let s2 = registry_stats(-1);
    assert_eq!(s2.live_count, s0.live_count);
    assert_eq!(s2.live_bytes, s0.live_bytes);
    assert_eq!(s2.live_rounded_bytes, s0.live_rounded_bytes);
    assert_eq!(s2.tag_live_count[tag as usize], s0.tag_live_count[tag as usize]);
    assert_eq!(s2.tag_live_bytes[tag as usize], s0.tag_live_bytes[tag as usize]);
    assert_eq!(s2.allocs_total, s0.allocs_total + 4);
    assert_eq!(s2.frees_total, s0.frees_total + 4);
    assert_eq!(s2.lost_total, s0.lost_total);
    assert!(s2.peak_bytes >= s1.live_bytes, "peak fell");
}

#[test]
fn last_error_reports_the_refusal_on_its_own_thread() {
    let _g = device_test!("last_error_reports_the_refusal_on_its_own_thread");
    let buf = DeviceBuffer::alloc(100);
    let host = [1u8; 101];
    let status = unsafe { vram_memcpy_h2d(buf.ptr(), host.as_ptr().cast(), 101) };
    assert_status(status, 6, "h2d of 101 bytes into 100");
    let e = last_error();
    assert_eq!(
        e,
        vram_error_info {
            status: VRAM_ERR_OUT_OF_BOUNDS,
            reason: VRAM_REASON_OUT_OF_BOUNDS,
            op: VRAM_OP_MEMCPY_H2D,
            driver_error: 0
        }
    );
    // A success does not clear it: it is the last *failed* call.
    assert_status(unsafe { vram_memcpy_h2d(buf.ptr(), host.as_ptr().cast(), 100) }, 0, "h2d");
    assert_eq!(last_error(), e);

    // Another thread's refusal is its own.
    let other = thread::spawn(|| {
        assert_status(unsafe { vram_free(addr(NEVER_ALLOCATED)) }, 5, "free on another thread");
        last_error()
    })
    .join()
    .expect("thread");
    assert_eq!((other.status, other.reason, other.op), (5, VRAM_REASON_UNKNOWN_POINTER, 1));
    assert_eq!(last_error(), e, "another thread's refusal changed this thread's last error");
    assert_status(buf.free(), 0, "free");
}

#[test]
fn devices_are_usable() {
    let _g = device_test!("devices_are_usable");
    let mut count: c_int = 0;
    assert_status(unsafe { vram_device_count(&mut count) }, 0, "vram_device_count");
    assert!((1..=VRAM_MAX_DEVICES).contains(&count), "{count} devices");
    for device in 0..count {
        let mut state = -1;
        assert_status(unsafe { vram_device_state_get(device, &mut state) }, 0, "state");
        assert_eq!(state, VRAM_DEVICE_USABLE, "device {device}");
    }
    assert_status(unsafe { vram_set_device(0) }, 0, "vram_set_device(0)");
}

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

#[test]
fn many_threads_allocate_copy_and_free_concurrently() {
    let _g = device_test!("many_threads_allocate_copy_and_free_concurrently");
    let threads = 12;
    let rounds = if mode() == Mode::Host { 300 } else { 100 };
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let start = start.clone();
            thread::spawn(move || {
                let mut rng = XorShift64::from_time(&format!("stress thread {t}"));
                let tag = 1 + t as u32;
                let mut live: Vec<(DeviceBuffer, Vec<u8>)> = Vec::new();
                start.wait();
                for round in 0..rounds {
                    match rng.below(8) {
                        // Allocate and fill, mostly small, sometimes over a MiB.
                        0..=2 if live.len() < 8 => {
                            let len = if rng.below(16) == 0 {
                                rng.range(1 << 20, 3 << 20)
                            } else {
                                rng.range(1, 20_000)
                            };
                            let buf = DeviceBuffer::with_tag(len, tag).expect("alloc");
                            let data = rng.bytes(len);
                            assert_status(buf.write(0, &data), 0, "fill");
                            live.push((buf, data));
                        }
                        // Free one, verifying it first; then free it again by generation.
                        3 if !live.is_empty() => {
                            let (buf, data) = live.swap_remove(rng.below(live.len()));
                            assert_bytes_eq(&buf.contents(), &data, "before free");
                            let (p, g) = (buf.ptr(), buf.generation());
                            assert_status(buf.free(), 0, "free");
                            assert_status(unsafe { vram_free_ex(p, g) }, 0, "free_ex again");
                        }
                        // Patch and read back a random range of one.
                        _ if !live.is_empty() => {
                            let i = rng.below(live.len());
                            let (buf, data) = &mut live[i];
                            let offset = rng.below(data.len());
                            let bytes = rng.range(1, data.len() - offset);
                            let patch = rng.bytes(bytes);
                            assert_status(buf.write(offset, &patch), 0, "patch");
                            data[offset..offset + bytes].copy_from_slice(&patch);
                            let mut out = vec![0u8; bytes];
                            assert_status(buf.read(offset, &mut out), 0, "read patch");
                            assert_bytes_eq(&out, &patch, &format!("thread {t} round {round}"));
                            // A refused copy past its end changes nothing.
                            let tail = data.len() - offset + 1;
                            assert_status(buf.write(offset, &rng.bytes(tail)), 6, "past end");
                        }
                        _ => {}
                    }
                }
                for (buf, data) in live {
                    assert_bytes_eq(&buf.contents(), &data, &format!("thread {t} at the end"));
                    assert_status(buf.free(), 0, "final free");
                }
            })
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            std::panic::resume_unwind(Box::new(format!("stress thread {t} panicked: {e:?}")));
        }
    }
}
