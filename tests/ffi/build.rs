//! Links the test crate against libvram_ops.so, dynamically, from $VRAMOBS_LIB_DIR.
//!
//! The directory is also written into the test binaries as their run path (`-Wl,-rpath`), so
//! they run without LD_LIBRARY_PATH. Carried to another machine (`cargo test --no-run`), they
//! still honour LD_LIBRARY_PATH first: the linker writes a RUNPATH, which it overrides.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=VRAMOBS_LIB_DIR");
    println!("cargo:rerun-if-changed=build.rs");

    let dir = match env::var_os("VRAMOBS_LIB_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => panic!(
            "\n\nVRAMOBS_LIB_DIR is not set. Point it at the directory holding libvram_ops.so, \
             e.g.\n  cmake -S . -B /tmp/ffibuild -G Ninja && cmake --build /tmp/ffibuild\n  \
             VRAMOBS_LIB_DIR=/tmp/ffibuild/native cargo test --offline \
             --manifest-path tests/ffi/Cargo.toml\n\n"
        ),
    };
    // An absolute path, so that the run path still holds from wherever a test binary runs.
    let dir = dir.canonicalize().unwrap_or_else(|e| {
        panic!("VRAMOBS_LIB_DIR={} is not a usable directory: {e}", dir.display())
    });
    let library = dir.join("libvram_ops.so");
    if !library.is_file() {
        println!(
            "cargo:warning=VRAMOBS_LIB_DIR={} holds no libvram_ops.so; linking will fail",
            dir.display()
        );
    }
    // Relink when the library is rebuilt.
    println!("cargo:rerun-if-changed={}", library.display());

    let dir = dir.display();
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=dylib=vram_ops");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}
