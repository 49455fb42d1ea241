//! vram_select_backend, in a process of its own (one test binary, one test), since it changes
//! the backend for the whole process. Runs in every mode: the host backend always exists.

use std::ffi::CString;
use std::ptr;

use vramobs_ffi_tests::*;

fn select(name: &str) -> i32 {
    let name = CString::new(name).unwrap();
    unsafe { vram_select_backend(name.as_ptr()) }
}

#[test]
fn select_backend_switches_only_while_nothing_is_live() {
    let original = backend_name();
    assert_eq!(original, if mode() == Mode::Host { "host" } else { "cuda" });

    // Unknown names change nothing.
    assert_status(unsafe { vram_select_backend(ptr::null()) }, 2, "vram_select_backend(NULL)");
    for bad in ["", "bogus", "HOST", "cuda ", "host\u{1}"] {
        assert_status(select(bad), 2, &format!("vram_select_backend({bad:?})"));
        assert_eq!(backend_name(), original, "a refused selection changed the backend");
    }

    // Nothing is live yet: switching to the host backend succeeds, and it serves.
    assert_status(select("host"), 0, "select host");
    assert_eq!(backend_name(), "host");
    assert!(backend_diagnostic().is_empty(), "host: {}", backend_diagnostic());
    assert_status(select("host"), 0, "selecting the backend in use again");

    let mut rng = XorShift64::from_time("backend select");
    let (buf, data) = DeviceBuffer::filled(3000, &mut rng);
    // While an allocation is live the backend cannot change.
    assert_status(select("cuda"), 10, "select cuda with a live allocation");
    assert_eq!(backend_name(), "host");
    assert_status(select("host"), 0, "selecting the backend in use, with one live");
    assert_bytes_eq(&buf.contents(), &data, "the allocation after refused switches");
    assert_status(buf.free(), 0, "free");

    // Free again: back to the original.
    assert_status(select(original), 0, "select the original backend");
    assert_eq!(backend_name(), original);
    if original == "cuda" && mode() == Mode::NoDevice {
        let mut p = addr(0x1000);
        assert_status(unsafe { vram_malloc(&mut p, 64) }, 4, "malloc on cuda without a device");
        assert!(p.is_null());
    }
}
