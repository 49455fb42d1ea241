import ctypes.util

import vramobs
from vramobs import _native

PROBE = """
    import vramobs
    try:
        vramobs.alloc(64)
    except ImportError as exc:
        assert isinstance(exc, vramobs.NativeLibraryError), type(exc)
        print(exc)
    assert not vramobs.native_available()
    assert vramobs._native.library_path() is None
"""


def test_missing_library_names_the_path_tried(run_python, tmp_path):
    missing = tmp_path / "nowhere" / "libvram_ops.so"
    result = run_python(PROBE, env={"VRAMOBS_LIBRARY": str(missing)})
    assert result.returncode == 0, result.stderr
    assert "cannot load libvram_ops" in result.stdout
    assert str(missing) in result.stdout
    assert "VRAMOBS_LIBRARY" in result.stdout


def test_foreign_library_names_a_missing_vram_ops_function(run_python):
    libc = ctypes.util.find_library("c")
    assert libc
    result = run_python(PROBE, env={"VRAMOBS_LIBRARY": libc})
    assert result.returncode == 0, result.stderr
    assert f"{libc} lacks a vram_ops function" in result.stdout
    assert "vram_version_number" in result.stdout


def test_import_loads_nothing_native(run_python):
    result = run_python(
        """
        import sys, vramobs
        from vramobs import _native
        def mapped():
            with open("/proc/self/maps") as maps:
                return "libvram_ops" in maps.read()
        assert _native.library_path() is None
        assert not mapped()
        assert "numpy" not in sys.modules
        assert vramobs.native_available()
        assert mapped()
        print(_native.library_path())
        """
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip()
    assert loaded.endswith("/vramobs/libvram_ops.so")
    assert loaded == str(_native.library_path())


def test_library_in_this_process_matches_the_package():
    assert vramobs.native_available()
    lib = _native.lib()
    assert lib.vram_version_string().decode() == vramobs.__version__
    assert _native.library_path().is_file()
