import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

import vramobs
from vramobs import OutOfBoundsError, raw, stats

WORD = 1 << 64
sizes = st.integers(min_value=1, max_value=5000)
offsets = st.integers(min_value=0, max_value=5100)
lengths = st.integers(min_value=1, max_value=5100)


class BufferModel(RuleBasedStateMachine):
    """DeviceBuffers against a bytearray model of each buffer's contents."""

    buffers = Bundle("buffers")

    @initialize()
    def start(self):
        self.model = {}
        self.closed = []
        self.base = stats.registry_stats()

    @rule(target=buffers, nbytes=sizes, tag=st.sampled_from([None, "weights", "kv_cache"]))
    def alloc(self, nbytes, tag):
        data = os.urandom(nbytes)
        buf = vramobs.to_device(data, tag=tag)
        self.model[buf] = bytearray(data)
        return buf

    @rule(buf=consumes(buffers))
    def close(self, buf):
        assert buf.to_bytes() == self.model.pop(buf)
        buf.close()
        assert buf.closed
        self.closed.append(buf)

    @precondition(lambda self: self.closed)
    @rule(data=st.data())
    def closed_buffer_refuses_use(self, data):
        buf = self.closed[data.draw(st.integers(0, len(self.closed) - 1))]
        with pytest.raises(ValueError, match="closed"):
            buf.copy_from(os.urandom(1))
        buf.close()

    @rule(buf=buffers, offset=offsets, length=lengths)
    def copy_from(self, buf, offset, length):
        chunk = os.urandom(length)
        if offset + length > buf.nbytes:
            with pytest.raises(OutOfBoundsError):
                buf.copy_from(chunk, offset)
        else:
            buf.copy_from(chunk, offset)
            self.model[buf][offset : offset + length] = chunk

    @rule(buf=buffers, offset=offsets, length=lengths)
    def copy_to(self, buf, offset, length):
        out = bytearray(os.urandom(length))
        original = bytes(out)
        if offset + length > buf.nbytes:
            with pytest.raises(OutOfBoundsError):
                buf.copy_to(out, offset)
            assert out == original
        else:
            buf.copy_to(out, offset)
            assert out == self.model[buf][offset : offset + length]

    @rule(buf=buffers, data=st.data())
    def to_bytes_to_the_end(self, buf, data):
        offset = data.draw(
            st.one_of(
                st.integers(0, buf.nbytes - 1), st.integers(buf.nbytes + 1, buf.nbytes + 100)
            )
        )
        if offset > buf.nbytes:
            with pytest.raises(OutOfBoundsError):
                buf.to_bytes(offset)
        else:
            assert buf.to_bytes(offset) == self.model[buf][offset:]

    @rule(buf=buffers, data=st.data())
    def free_inside_the_allocation_is_refused(self, buf, data):
        # Offsets inside the 256-byte-rounded block this allocation owns; none of them can be
        # another allocation's start, which is always 256-aligned.
        rounded = -(-buf.nbytes // 256) * 256
        offset = data.draw(st.integers(1, rounded - 1).filter(lambda o: o % 256))
        assert raw.free(buf.ptr + offset) == (7 if offset < buf.nbytes else 5)

    @invariant()
    def registry_matches_model(self):
        now = stats.registry_stats()
        assert now.live_count == self.base.live_count + len(self.model)
        assert now.live_bytes == self.base.live_bytes + sum(map(len, self.model))

    def teardown(self):
        for buf, contents in self.model.items():
            assert buf.to_bytes() == contents
            buf.close()


TestBufferModel = BufferModel.TestCase
TestBufferModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def rounded(n):
    return -(-n // 256) * 256


@settings(max_examples=300, deadline=None)
@given(
    nbytes=st.one_of(
        st.integers(0, 1 << 20),
        st.integers(0, 600).map(lambda k: WORD - 1 - k),
        st.integers(0, WORD - 1),
    )
)
def test_raw_malloc_status_matches_the_contract(nbytes):
    total = raw.get_info()[2]
    status, address = raw.malloc(nbytes)
    try:
        if nbytes == 0 or rounded(nbytes) >= WORD:
            assert (status, address) == (2, 0)
        elif rounded(nbytes) > total:
            assert (status, address) == (1, 0)
        else:
            assert status == 0 and address % 256 == 0 and address != 0
    finally:
        assert raw.free(address) == 0


near_top = st.integers(0, 5000).map(lambda k: WORD - 1 - k)
HOST_BYTES = 8192


@settings(max_examples=300, deadline=None)
@given(
    nbytes=st.integers(1, 4096),
    offset=st.one_of(st.integers(0, 4200), near_top, st.integers(0, WORD - 1)),
    length=st.one_of(st.integers(0, 4200), near_top, st.integers(0, WORD - 1)),
)
def test_raw_copy_status_matches_the_contract(nbytes, offset, length):
    status, address = raw.malloc(nbytes)
    assert status == 0
    source = np.frombuffer(bytearray(os.urandom(HOST_BYTES)), dtype=np.uint8)
    target = np.frombuffer(bytearray(os.urandom(HOST_BYTES)), dtype=np.uint8)
    untouched = target.copy()
    device = (address + offset) % WORD

    def expected(host_address):
        if length == 0 or device == 0 or max(device, host_address) + length >= WORD:
            return 2
        if address <= device < address + nbytes:
            return 0 if device + length <= address + nbytes else 6
        return 5

    try:
        assert raw.memcpy_h2d(device, source.ctypes.data, length) == expected(source.ctypes.data)
        status = raw.memcpy_d2h(target.ctypes.data, device, length)
        assert status == expected(target.ctypes.data)
        if status == 0:
            assert target[:length].tobytes() == source[:length].tobytes()
            assert target[length:].tobytes() == untouched[length:].tobytes()
        else:
            assert target.tobytes() == untouched.tobytes()
    finally:
        assert raw.free(address) == 0
