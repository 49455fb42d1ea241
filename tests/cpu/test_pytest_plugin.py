"""The vram_leak_check fixture fails a test that leaves allocations live, and only that one."""

import subprocess
import sys
import textwrap


def test_vram_leak_check_fails_only_the_leaking_test(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        textwrap.dedent(
            """
            import vramobs
            kept = []

            def test_clean(vram_leak_check):
                with vramobs.alloc(4096):
                    pass

            def test_leaky(vram_leak_check):
                kept.append(vramobs.alloc(12345, tag="kv_cache"))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "VRAMOBS_BACKEND": "host"},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    # the leaky test's body passes; its teardown errors
    assert "2 passed, 1 error" in out, out
    assert "ERROR test_sample.py::test_leaky" in out and "::test_clean" not in out, out
    assert "LeakError" in out and "12345 bytes on device 0, tag kv_cache" in out, out
    assert "test_sample.py:" in out and "in test_leaky" in out, out
