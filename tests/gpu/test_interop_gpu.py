"""Zero-copy views: PyTorch and CuPy read and write the same bytes as vramobs, and keep the
buffer alive for as long as they view it."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import vramobs
from vramobs import stats


def test_torch_views_the_same_bytes(random_bytes) -> None:
    torch = pytest.importorskip("torch")
    data = random_bytes(1 << 20)
    with vramobs.alloc(data.nbytes) as buf:
        buf.copy_from(data)
        view = torch.as_tensor(buf, device="cuda")
        assert view.data_ptr() == buf.ptr and view.dtype == torch.uint8
        assert np.array_equal(view.cpu().numpy(), data)
        fresh = random_bytes(data.nbytes)
        view.copy_(torch.from_numpy(fresh).cuda())
        torch.cuda.synchronize()
        assert np.array_equal(np.frombuffer(buf.to_bytes(), np.uint8), fresh)


def test_cupy_views_the_same_bytes(random_bytes) -> None:
    cupy = pytest.importorskip("cupy")
    data = random_bytes(3 * 4099)
    with vramobs.alloc(data.nbytes) as buf:
        buf.copy_from(data)
        view = cupy.asarray(buf)
        assert view.data.ptr == buf.ptr
        assert np.array_equal(cupy.asnumpy(view), data)
        view[:] = cupy.asarray(random_bytes(data.nbytes))
        cupy.cuda.runtime.deviceSynchronize()
        assert np.array_equal(np.frombuffer(buf.to_bytes(), np.uint8), cupy.asnumpy(view))


def test_a_view_keeps_the_buffer_alive(random_bytes) -> None:
    torch = pytest.importorskip("torch")
    live = stats.registry_stats().live_count
    data = random_bytes(4096)
    buf = vramobs.to_device(data)
    view = torch.as_tensor(buf, device="cuda")
    del buf
    gc.collect()
    assert stats.registry_stats().live_count == live + 1  # the view holds it
    assert np.array_equal(view.cpu().numpy(), data)
    with pytest.warns(ResourceWarning):
        del view
        gc.collect()
    assert stats.registry_stats().live_count == live


def test_memory_from_torch_is_refused_not_trusted() -> None:
    torch = pytest.importorskip("torch")
    foreign = torch.empty(4096, dtype=torch.uint8, device="cuda")
    host = np.ones(16, np.uint8)
    from vramobs import raw

    assert raw.memcpy_h2d(foreign.data_ptr(), host.ctypes.data, 16) == 5
    repeated = stats.registry_stats().repeated_frees_total
    status = raw.free(foreign.data_ptr())
    # 5, unless PyTorch's segment starts where a vramobs allocation was freed earlier in this
    # process: then it is the documented idempotent free of a remembered pointer, which calls
    # no driver function either.
    assert status == 5 or (status == 0 and stats.registry_stats().repeated_frees_total == repeated + 1)
    foreign.fill_(7)  # still PyTorch's, still usable
    assert int(foreign.sum()) == 7 * 4096
