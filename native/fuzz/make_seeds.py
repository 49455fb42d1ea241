#!/usr/bin/env python3
"""Write the seed corpora of the libFuzzer targets: native/fuzz/corpus/<target>/<name>.

Each seed is a hand-written scenario, encoded with the decoders of fuzz_api_sequence.c and
fuzz_registry_threads.c (which read little-endian integers; an exhausted input reads as
zeros). The encoders below track only what the decoders branch on (how many allocations are
live, how many were freed), so that every byte lands where the comment says. Run it after a
change to a decoder and commit the result:

    python3 native/fuzz/make_seeds.py           # rewrites the corpus directories
    python3 native/fuzz/make_seeds.py --list    # prints each seed and what it does
"""
import argparse
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
U64_MAX = 2**64 - 1
CAPACITY = 64 << 20


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & U64_MAX)


# --------------------------------------------------------------------------------------
# fuzz_api_sequence: one opcode byte (% 13), then the operation's arguments.
# --------------------------------------------------------------------------------------
OP_MALLOC, OP_MALLOC_EX, OP_FREE, OP_FREE_EX, OP_H2D, OP_D2H, OP_GET_INFO, OP_VERIFY, \
    OP_LIST, OP_SELECT_BACKEND, OP_SET_DEVICE, OP_STATS_ARGS, OP_MALLOC_SMALL = range(13)

# pick_alloc_size categories
SZ_ZERO, SZ_ONE, SZ_U8, SZ_U16, SZ_U32, SZ_NEAR256, SZ_REMAINING, SZ_REMAINING_PLUS1, \
    SZ_SIZE_MAX, SZ_SIZE_MAX_255, SZ_SIZE_MAX_254, SZ_U64, SZ_CAPACITY, SZ_POW2, \
    SZ_NEAR_POW2, SZ_SMALL = range(16)

# pick_offset kinds
OFF_BASE, OFF_INTERIOR, OFF_LAST, OFF_END, OFF_PAST_END, OFF_PADDING_END, OFF_U64, \
    OFF_BEFORE, OFF_U16 = 0, 2, 3, 4, 5, 6, 7, 8, 9

# pick_copy_size kinds
CS_ZERO, CS_ONE, CS_U8, CS_REMAINING, CS_REMAINING_PLUS1, CS_SIZE_MAX, CS_SIZE_MAX_255, \
    CS_SIZE_MAX_254, CS_U64, CS_U16, CS_INSIDE, CS_PADDING, CS_NEAR_SIZE_MAX = \
    0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13

HOST_BUFFER, HOST_NULL, HOST_NEAR_MAX, HOST_RANDOM = 0, 5, 6, 7


class Seq:
    """Encoder for fuzz_api_sequence, tracking live and freed counts as the model does."""

    def __init__(self):
        self.b = bytearray()
        self.live = []   # sizes of live allocations, oldest first
        self.freed = 0   # entries in the model's ring of this input's frees (max 64)
        self.used = 0    # rounded bytes live

    @staticmethod
    def rounded(n):
        return (n + 255) & ~255

    def _size(self, cat, arg=None):
        out = u8(cat)
        remaining = CAPACITY - self.used
        if cat == SZ_U8:
            out += u8(arg - 1)
            size = arg
        elif cat == SZ_U16:
            out += u16(arg - 1)
            size = arg
        elif cat == SZ_U32:
            out += u32(arg - 1)
            size = arg
        elif cat == SZ_NEAR256:
            k, d = arg  # 256 * k + d, d in -1..1
            out += u8(k - 1) + u8(d + 1)
            size = 256 * k + d
        elif cat == SZ_U64:
            out += u64(arg)
            size = arg
        elif cat == SZ_CAPACITY:
            out += u8(arg + 1)  # capacity + arg, arg in -1..1
            size = CAPACITY + arg
        elif cat == SZ_POW2:
            out += u8(arg)
            size = 1 << arg
        elif cat == SZ_NEAR_POW2:
            k, d = arg  # 2**k + d, d in -1..1
            out += u8(k) + u8(d + 1)
            size = (1 << k) + d
        elif cat == SZ_SMALL:
            out += u16(arg - 1)  # 1..4096
            size = arg
        else:
            size = {SZ_ZERO: 0, SZ_ONE: 1, SZ_REMAINING: remaining or 1,
                    SZ_REMAINING_PLUS1: remaining + 1, SZ_SIZE_MAX: U64_MAX,
                    SZ_SIZE_MAX_255: U64_MAX - 255, SZ_SIZE_MAX_254: U64_MAX - 254}[cat]
        return out, size

    def _alloc_outcome(self, size, tag, null_ptr):
        if null_ptr or size == 0 or size > U64_MAX - 255 or tag >= 64:
            return
        if self.rounded(size) > CAPACITY - self.used or len(self.live) >= 64:
            return
        self.live.append(size)
        self.used += self.rounded(size)

    def malloc(self, cat, arg=None, null_ptr=False):
        out, size = self._size(cat, arg)
        self.b += u8(OP_MALLOC) + out + u8(31 if null_ptr else 0)
        self._alloc_outcome(size, 0, null_ptr)
        return self

    def malloc_ex(self, cat, arg=None, tag=0, want_gen=True, null_ptr=False):
        out, size = self._size(cat, arg)
        flags = (31 if null_ptr else 0) | (32 if want_gen else 0)
        self.b += u8(OP_MALLOC_EX) + out + u8(tag) + u8(flags)
        self._alloc_outcome(size, tag, null_ptr)
        return self

    def malloc_small(self, size, ex=False, tag=0):
        self.b += u8(OP_MALLOC_SMALL) + u8(1 if ex else 0) + u16(size - 1)
        if ex:
            self.b += u8(tag)
        self.b += u8(32)
        self._alloc_outcome(size, tag if ex else 0, False)
        return self

    # Pointers (pick_pointer). Returns (bytes, index of the live allocation or None).
    def live_ptr(self, i, how="base", arg=None):
        assert self.live, "no live allocation"
        if how == "base":
            return u8(0) + u8(i), i
        if how == "interior":
            return u8(3) + u8(i) + u32(arg or 0), i
        if how == "end":
            return u8(4) + u8(i), i
        # around it: pick_offset
        out = u8(5) + u8(i) + u8(how)
        if how == OFF_INTERIOR:
            out += u32(arg or 0)
        elif how in (OFF_PAST_END, OFF_BEFORE):
            out += u8(arg or 0)
        elif how == OFF_U64:
            out += u64(arg or 0)
        elif how == OFF_U16:
            out += u16(arg or 0)
        return out, i

    def freed_ptr(self, j):
        assert self.freed
        # kind 6 or 7 with live allocations; 0..7 without
        return u8(6) + u8(j), None

    def other_ptr(self, kind, arg=0):
        """kind: 'null', 'near_max' (UINTPTR_MAX - arg), 'small' (arg), 'random' (arg)."""
        if kind == "null":
            return u8(8), None
        if kind == "near_max":
            return u8(9) + u8(arg), None
        if kind == "small":
            return u8(10) + u16(arg), None
        return u8(11) + u64(arg), None

    def _freed_one(self, i):
        size = self.live.pop(i)
        self.used -= self.rounded(size)
        self.freed = min(self.freed + 1, 64)

    def free(self, ptr, frees=None):
        """frees: index of the live allocation the model expects this call to release."""
        self.b += u8(OP_FREE) + ptr[0]
        if frees is not None:
            self._freed_one(frees)
        return self

    def free_ex(self, ptr, gen_kind, arg=0, frees=None):
        """gen_kind: 'right', 'zero', 'stale' (arg: freed index), 'never' (next + arg),
        'live' (arg: live index), 'max' (UINT64_MAX - arg), 'random' (arg)."""
        self.b += u8(OP_FREE_EX) + ptr[0]
        if gen_kind == "right":
            self.b += u8(0)
        elif gen_kind == "zero":
            self.b += u8(3)
        elif gen_kind == "stale":
            self.b += u8(4) + (u8(arg) if self.freed else b"")
        elif gen_kind == "never":
            self.b += u8(5) + u8(arg)
        elif gen_kind == "live":
            self.b += u8(6) + (u8(arg) if self.live else b"")
        elif gen_kind == "max":
            self.b += u8(7) + u8(arg)
        else:
            self.b += u8(8) + u64(arg)
        if frees is not None:
            self._freed_one(frees)
        return self

    def copy(self, h2d, ptr, size_kind, arg=0, host=HOST_BUFFER, host_arg=0, seed=1):
        self.b += u8(OP_H2D if h2d else OP_D2H) + ptr[0] + u8(size_kind)
        if size_kind == CS_U8:
            self.b += u8(arg - 1)
        elif size_kind == CS_U64:
            self.b += u64(arg)
        elif size_kind == CS_U16:
            self.b += u16(arg - 1)
        elif size_kind == CS_NEAR_SIZE_MAX:
            self.b += u16(arg)  # SIZE_MAX + 1 - arg
        elif size_kind == CS_INSIDE:
            self.b += u16(arg)  # 1 + arg % remaining; read only when more than one byte remains
        self.b += u8(host) + u64(seed)
        if host == HOST_NEAR_MAX:
            self.b += u8(host_arg)
        elif host == HOST_RANDOM:
            self.b += u64(host_arg)
        return self

    def h2d(self, *a, **k):
        return self.copy(True, *a, **k)

    def d2h(self, *a, **k):
        return self.copy(False, *a, **k)

    def get_info(self, kind):
        """kind: 0 both, 1 free NULL, 2 total NULL, 3 both NULL."""
        self.b += u8(OP_GET_INFO) + u8(kind)
        return self

    def verify(self, i):
        self.b += u8(OP_VERIFY) + (u8(i) if self.live else b"")
        return self

    def list(self, device_index, kind, capacity=0):
        """device_index into {-1, 0, 0, -1, 1, 31, 32, -2}; kind 0 count only, 1 NULL out,
        2 NULL count, 3 records."""
        self.b += u8(OP_LIST) + u8(device_index) + u8(kind)
        if kind:
            self.b += u8(capacity)
        return self

    def select_backend(self, index):
        """index into {"host", "cuda", "bogus", NULL, "", "HOST"}."""
        self.b += u8(OP_SELECT_BACKEND) + u8(index)
        return self

    def set_device(self, index):
        """index into {0, 1, 31, 32, -1, INT32_MIN, INT32_MAX, 0}."""
        self.b += u8(OP_SET_DEVICE) + u8(index)
        return self

    def stats_args(self, device_index, kind, shrink=0):
        self.b += u8(OP_STATS_ARGS) + u8(device_index) + u8(kind)
        if kind & 2:
            self.b += u8(shrink)
        return self


def sequence_seeds():
    seeds = {}

    s = Seq()
    s.malloc(SZ_U16, 1000)
    s.h2d(s.live_ptr(0), CS_REMAINING, seed=7)
    s.d2h(s.live_ptr(0), CS_REMAINING)
    s.verify(0)
    s.free(s.live_ptr(0), frees=0)
    seeds["01_write_read_free"] = (s, "allocate 1000 B, h2d and d2h the whole of it, verify, free")

    s = Seq()
    s.malloc(SZ_U8, 100)
    s.free(s.live_ptr(0, "interior", 10))             # 7: interior
    s.free(s.live_ptr(0, "end"))                      # 5: just past the end
    s.free(s.live_ptr(0), frees=0)                    # 0: frees it
    s.free(s.freed_ptr(0))                            # 0: repeated free
    s.free(s.freed_ptr(0))                            # 0: again
    s.free(s.other_ptr("null"))                       # 0: NULL
    s.free(s.other_ptr("random", 0x123456789abcdef0))  # 5: unknown
    s.free(s.other_ptr("near_max", 3))                # 5
    s.free(s.other_ptr("small", 4096))                # 5
    seeds["02_free_kinds"] = (s, "free: interior (7), end (5), base, freed twice (0), NULL, unknown")

    s = Seq()
    s.malloc_ex(SZ_U8, 64, tag=1)
    s.malloc_ex(SZ_U8, 64, tag=63)
    s.malloc_ex(SZ_U8, 64, tag=64)                    # 2: invalid tag
    s.malloc_ex(SZ_U8, 64, tag=70)                    # 2
    s.free_ex(s.live_ptr(0), "zero")                  # 2: generation 0
    s.free_ex(s.live_ptr(0), "never", 5)              # 2: never issued
    s.free_ex(s.live_ptr(0), "max", 0)                # 2: UINT64_MAX
    s.free_ex(s.live_ptr(0), "live", 1)               # 2: another live one's
    s.free_ex(s.live_ptr(0), "right", frees=0)        # 0: frees it
    s.free_ex(s.live_ptr(0), "stale", 0)              # 0: stale generation, nothing freed
    s.free_ex(s.other_ptr("null"), "max", 1)          # 0: NULL pointer
    s.free_ex(s.other_ptr("null"), "zero")            # 2: generation 0 before NULL
    s.list(0, 3, 8)
    seeds["03_tags_generations"] = (s, "tags 1, 63, 64, 70; free_ex with every kind of generation")

    s = Seq()
    for cat in (SZ_ZERO, SZ_SIZE_MAX, SZ_SIZE_MAX_255, SZ_SIZE_MAX_254):
        s.malloc(cat)
    s.malloc(SZ_CAPACITY, 1)                          # 1: one byte over the capacity
    s.malloc(SZ_CAPACITY, 0)                          # 0: exactly the capacity
    s.get_info(0)                                     # free 0
    s.malloc(SZ_ONE)                                  # 1: nothing left
    s.free(s.live_ptr(0), frees=0)
    s.malloc(SZ_U16, 300)
    s.malloc(SZ_REMAINING)                            # 0: the rest exactly
    s.malloc(SZ_ONE)                                  # 1
    s.free(s.live_ptr(1), frees=1)
    s.malloc(SZ_REMAINING_PLUS1)                      # 1
    s.malloc(SZ_U64, 0x8000000000000000)              # 1
    s.malloc(SZ_ONE, null_ptr=True)                   # 2: NULL ptr
    seeds["04_size_edges"] = (s, "sizes 0, SIZE_MAX, SIZE_MAX-255 (1), SIZE_MAX-254 (2), capacity +-1, remaining")

    s = Seq()
    s.malloc(SZ_NEAR256, (2, 1))                      # 513 B
    s.h2d(s.live_ptr(0), CS_REMAINING)
    s.h2d(s.live_ptr(0, OFF_END), CS_ONE)             # 5: at the end
    s.h2d(s.live_ptr(0, OFF_LAST), CS_ONE)            # 0: last byte
    s.h2d(s.live_ptr(0, OFF_LAST), CS_REMAINING_PLUS1)  # 6
    s.h2d(s.live_ptr(0, OFF_INTERIOR, 99), CS_REMAINING_PLUS1)  # 6
    s.h2d(s.live_ptr(0, OFF_INTERIOR, 99), CS_PADDING)  # 6: into the padding
    s.d2h(s.live_ptr(0, OFF_PADDING_END), CS_ONE)     # 5
    s.d2h(s.live_ptr(0, OFF_PAST_END, 9), CS_ONE)     # 5
    s.d2h(s.live_ptr(0, OFF_BEFORE, 0), CS_ONE)       # 5: one before the base
    s.d2h(s.live_ptr(0), CS_SIZE_MAX)                 # 2: wraps
    s.d2h(s.live_ptr(0), CS_SIZE_MAX_255)             # 2
    s.d2h(s.live_ptr(0), CS_SIZE_MAX_254)             # 2
    s.d2h(s.live_ptr(0), CS_ZERO)                     # 2: zero bytes
    s.d2h(s.live_ptr(0, OFF_U64, 2**64 - 16), CS_U8, 32)  # 5: starts 16 bytes before the base
    s.verify(0)
    seeds["05_copy_bounds"] = (s, "copies at the end, last byte, past the end, into the padding, wrapping")

    s = Seq()
    s.malloc(SZ_U8, 200)
    s.h2d(s.live_ptr(0), CS_REMAINING, host=HOST_NULL)          # 2: NULL host
    s.h2d(s.live_ptr(0), CS_ONE, host=HOST_NEAR_MAX, host_arg=0)  # 2: host wraps
    s.d2h(s.live_ptr(0), CS_U8, 8, host=HOST_NEAR_MAX, host_arg=3)  # 2
    s.d2h(s.live_ptr(0), CS_U8, 2, host=HOST_NEAR_MAX, host_arg=3)  # 0 (buffer substituted)
    s.d2h(s.other_ptr("null"), CS_ONE)                          # 2: NULL device
    s.d2h(s.other_ptr("near_max", 0), CS_ONE)                   # 5: no wrap, unknown
    s.d2h(s.other_ptr("near_max", 0), CS_U8, 2)                 # 2: wraps
    s.h2d(s.other_ptr("random", 0x7f0000001000), CS_U8, 16, host=HOST_RANDOM,
          host_arg=0xdeadbeef)                                  # 5
    seeds["06_bogus_pointers"] = (s, "NULL and near-UINTPTR_MAX host and device pointers")

    s = Seq()
    s.malloc(SZ_U8, 128)
    s.h2d(s.live_ptr(0), CS_REMAINING)
    s.free(s.live_ptr(0), frees=0)
    s.h2d(s.freed_ptr(0), CS_ONE)                     # 5: freed
    s.d2h(s.freed_ptr(0), CS_U8, 128)                 # 5: freed
    for _ in range(4):                                # the allocator may hand the address back
        s.malloc(SZ_U8, 128)
    s.free(s.freed_ptr(0))                            # frees the new one if reused, else 0
    s.d2h(s.freed_ptr(0), CS_U8, 128)
    seeds["07_freed_and_reused"] = (s, "copies to a freed pointer; same-size allocations to reuse it")

    s = Seq()
    s.get_info(0).get_info(1).get_info(2).get_info(3)
    s.malloc(SZ_U32, 300000)
    s.get_info(0)
    s.list(0, 0).list(0, 1, 0).list(0, 1, 2).list(0, 2).list(4, 3, 2).list(6, 3, 1).list(7, 0)
    s.select_backend(0).select_backend(1).select_backend(2).select_backend(3)
    s.select_backend(4).select_backend(5)
    s.set_device(0).set_device(1).set_device(3).set_device(4).set_device(5)
    s.stats_args(0, 0).stats_args(0, 1).stats_args(3, 0).stats_args(4, 1)
    s.stats_args(0, 2, 0).stats_args(0, 3, 7)
    s.free(s.live_ptr(0), frees=0)
    s.select_backend(1)                               # nothing live: stays on host
    seeds["08_queries"] = (s, "get_info NULL combos, registry list, backend, device and stats arguments")

    s = Seq()
    for n in (1, 255, 256, 257, 4096, 65536):
        s.malloc_small(min(n, 8192), ex=True, tag=n % 64)
    for i in range(6):
        s.h2d(s.live_ptr(i), CS_REMAINING, seed=i + 1)
    s.free(s.live_ptr(2), frees=2)
    s.free_ex(s.live_ptr(2), "right", frees=2)
    for i in range(len(s.live)):
        s.d2h(s.live_ptr(i), CS_REMAINING)
    s.list(0, 3, 10)
    seeds["09_many"] = (s, "six allocations around 256-byte multiples, written, two freed, read back")

    s = Seq()
    s.malloc(SZ_POW2, 21)                             # 2 MiB: beyond the shadowed window
    s.h2d(s.live_ptr(0), CS_REMAINING)                # 2 MiB: shortened to 256 KiB, keeps its end
    s.d2h(s.live_ptr(0, OFF_INTERIOR, 70000), CS_U16, 5000)
    s.d2h(s.live_ptr(0), CS_REMAINING)
    s.h2d(s.live_ptr(0, OFF_U16, 65530), CS_U8, 20)   # straddles the shadow's end
    s.d2h(s.live_ptr(0, OFF_U16, 65520), CS_U8, 40)
    seeds["10_large"] = (s, "a 2 MiB allocation: shortened copies, the shadow window's edge")

    s = Seq()
    for k in range(3):
        s.malloc(SZ_NEAR256, (k + 1, 0))
    s.free(s.live_ptr(1), frees=1)
    s.malloc(SZ_NEAR256, (2, 0))
    s.free(s.freed_ptr(0))
    s.free(s.live_ptr(0, "interior", 1))
    s.free_ex(s.freed_ptr(0), "stale", 0)
    s.free_ex(s.live_ptr(0, "end"), "right")          # live generation, other pointer: 2
    seeds["11_reuse_interplay"] = (s, "free, reallocate the same size, free the old pointer, stale generations")

    s = Seq()
    s.malloc(SZ_POW2, 12)                             # 4096
    s.malloc(SZ_POW2, 63)                             # 1: too big
    s.malloc(SZ_SMALL, 4001)
    s.malloc(SZ_NEAR_POW2, (10, -1))                  # 1023
    s.h2d(s.live_ptr(0), CS_INSIDE, 100)
    s.d2h(s.live_ptr(0), CS_NEAR_SIZE_MAX, 1)         # 2: SIZE_MAX
    s.d2h(s.live_ptr(0), CS_U64, 1 << 40)             # 6
    s.d2h(s.live_ptr(1), CS_REMAINING, host=HOST_RANDOM, host_arg=1)  # 0: buffer substituted
    s.h2d(s.live_ptr(2, OFF_U16, 1000), CS_U16, 23)   # 0: ends exactly at the end
    s.verify(1)
    seeds["12_mixed"] = (s, "powers of two, near-SIZE_MAX and random lengths, random host pointers")
    return seeds


# --------------------------------------------------------------------------------------
# fuzz_registry_threads: a header (shared size, tag, content seed), then 4 equal streams.
# --------------------------------------------------------------------------------------
T_MALLOC, T_MALLOC_EX, T_FREE, T_FREE_EX, T_H2D, T_D2H, T_READ_SHARED, T_FREE_SHARED, \
    T_GET_INFO, T_VERIFY = 0, 2, 3, 4, 5, 6, 7, 9, 10, 11


class Thread:
    """Encoder of one thread's stream; n_live / n_freed as the thread's model sees them."""

    def __init__(self):
        self.b = bytearray()
        self.live = []
        self.freed = 0

    def malloc(self, size, ex=False, tag=0):
        self.b += u8(T_MALLOC_EX if ex else T_MALLOC) + u8(6) + u16(size - 1)
        if ex:
            self.b += u8(tag)
        if tag < 64 and len(self.live) < 16:
            self.live.append(size)
        return self

    def malloc_fail(self, kind, ex=False, tag=0):
        """kind: 0 zero, 1 over capacity, 2 SIZE_MAX-255, 3 overflow."""
        self.b += u8(T_MALLOC_EX if ex else T_MALLOC) + u8(kind)
        if kind == 1:
            self.b += u32(12345)
        elif kind == 3:
            self.b += u8(0)
        if ex:
            self.b += u8(tag)
        return self

    def ptr(self, i, how=0, arg=0):
        """how: 0 base, 3 interior, 4 last byte, 5 end, 6 into the padding."""
        out = u8(how) + u8(i)
        if how == 3:
            out += u32(arg)
        elif how == 6 and (self.live[i] % 256):
            out += u16(arg)
        return out

    def foreign(self, kind, arg=0):
        """kind 0 NULL, 1 kernel-half (| arg), 2 first page (arg % 4096): opcodes 9, 7, 8."""
        out = u8((9, 7, 8)[kind])
        if kind == 1:
            out += u64(arg)
        elif kind == 2:
            out += u16(arg)
        return out

    def free(self, p, frees=None):
        self.b += u8(T_FREE) + p
        if frees is not None:
            self.live.pop(frees)
            self.freed += 1
        return self

    def free_ex(self, p, gen_kind, arg=0, frees=None):
        """gen_kind: 0 right, 2 zero, 3 stale (arg: freed index), 4 live (arg), 5 never."""
        self.b += u8(T_FREE_EX) + p + u8(gen_kind)
        if gen_kind == 3 and self.freed:
            self.b += u8(arg)
        elif gen_kind == 4 and self.live:
            self.b += u8(arg)
        elif gen_kind == 5:
            self.b += u8(arg)
        if frees is not None:
            self.live.pop(frees)
            self.freed += 1
        return self

    def copy(self, h2d, p, size_kind, arg=0, host=HOST_BUFFER, seed=3):
        self.b += u8(T_H2D if h2d else T_D2H) + p + u8(size_kind)
        if size_kind == CS_U8:
            self.b += u8(arg - 1)
        elif size_kind == CS_U16:
            self.b += u16(arg - 1)
        elif size_kind in (CS_INSIDE, CS_NEAR_SIZE_MAX):
            self.b += u16(arg)
        elif size_kind == CS_U64:
            self.b += u64(arg)
        self.b += u8(host) + u64(seed)
        if host == HOST_NEAR_MAX:
            self.b += u8(0)
        elif host == HOST_RANDOM:
            self.b += u64(0x1234)
        return self

    def read_shared(self, off, n):
        self.b += u8(T_READ_SHARED) + u16(off) + u16(n)
        return self

    def free_shared(self):
        self.b += u8(T_FREE_SHARED)
        return self

    def get_info(self, kind=0):
        self.b += u8(T_GET_INFO) + u8(kind)
        return self

    def verify(self, i=0):
        self.b += u8(T_VERIFY) + (u8(i) if self.live else b"")
        return self


def threads_input(shared_size, tag, streams):
    """Pad the four streams to one length with get_info (10, 10 -> both pointers given)."""
    length = max(len(t.b) for t in streams)
    body = b""
    for t in streams:
        body += bytes(t.b) + bytes([T_GET_INFO]) * (length - len(t.b))
    return u16(shared_size - 1) + u8(tag) + u64(0x5eed) + body


def worker_basic(seed):
    t = Thread()
    t.malloc(100 + seed, ex=True, tag=seed)
    t.malloc(4000)
    t.copy(True, t.ptr(0), CS_REMAINING, seed=seed)
    t.copy(False, t.ptr(0), CS_REMAINING)
    t.read_shared(seed * 10, 64)
    t.free(t.ptr(0, 3, 7))
    t.free(t.ptr(1), frees=1)
    t.free_ex(t.ptr(0), 0, frees=0)
    t.free_ex(t.foreign(1, 5), 3, 1)                 # stale generation, kernel-half pointer: 0
    return t


def threads_seeds():
    seeds = {}
    seeds["01_basic"] = (threads_input(4096, 5, [worker_basic(i) for i in range(4)]),
                         "each thread allocates, copies, reads S, frees (interior 7, then its own)")

    ts = []
    for i in range(4):
        t = Thread()
        t.read_shared(0, 256).read_shared(100, 1000)
        if i % 2:
            t.free_shared()
        t.read_shared(0, 1).read_shared(2000, 48)
        ts.append(t)
    seeds["02_race_free_shared"] = (threads_input(2048, 1, ts),
                                    "threads 1 and 3 free S while all read it")

    ts = []
    for i in range(4):
        t = Thread()
        for k in range(6):
            t.malloc(256 * (k + 1) + i, ex=k % 2 == 0, tag=k)
        for k in range(6):
            t.copy(True, t.ptr(k), CS_REMAINING, seed=k + 10 * i)
        t.verify(3)
        t.free_ex(t.ptr(0), 4, 2)                        # another live generation: 2
        for k in range(5, -1, -1):
            t.free(t.ptr(k), frees=k)
        t.free_shared()
        ts.append(t)
    seeds["03_churn"] = (threads_input(64, 0, ts), "allocate six, write, free in reverse; all free S")

    ts = []
    for i in range(4):
        t = Thread()
        t.malloc(300)
        t.copy(True, t.ptr(0, 5), CS_ONE)                # 5: at the end
        t.copy(False, t.ptr(0, 4), CS_REMAINING_PLUS1)   # 6
        t.copy(False, t.ptr(0, 6, 100), CS_ONE)          # 5: in the padding
        t.copy(True, t.ptr(0), CS_SIZE_MAX)              # 2: wraps
        t.copy(True, t.ptr(0), CS_ZERO)                  # 2
        t.copy(True, t.ptr(0), CS_ONE, host=HOST_NULL)   # 2
        t.copy(False, t.foreign(1, 0x1000), CS_ONE)      # 5
        t.copy(False, t.foreign(2, 16), CS_ONE)          # 5
        t.free(t.ptr(0, 5))                              # 5
        t.free(t.foreign(1, 77))                         # 5
        ts.append(t)
    seeds["04_bounds"] = (threads_input(1, 63, ts), "refused copies and frees, concurrently")

    ts = []
    for i in range(4):
        t = Thread()
        t.malloc_fail(0).malloc_fail(1).malloc_fail(2).malloc_fail(3)
        t.malloc(10, ex=True, tag=64 + i)                # 2: invalid tag
        t.malloc_fail(1, ex=True, tag=70)                # 2: the tag is checked first
        t.get_info(0).get_info(1).get_info(3)
        t.free_ex(t.foreign(2, 1), 2)                    # 2: generation 0
        t.free_ex(t.foreign(2, 1), 5, 9)                 # 2: never issued
        ts.append(t)
    seeds["05_refusals"] = (threads_input(65536, 7, ts), "allocation failures and refusals")

    ts = []
    for i in range(4):
        t = Thread()
        for k in range(16):                              # the most a thread keeps live
            t.malloc(64 + 64 * k + i, ex=True, tag=(i * 16 + k) % 64)
        t.malloc(10)                                     # skipped: the thread's model is full
        for k in range(0, 16, 3):
            t.copy(True, t.ptr(k), CS_REMAINING, seed=k)
            t.read_shared(k * 100, 200)
        if i == 2:
            t.free_shared()
        for k in range(15, -1, -2):
            t.free_ex(t.ptr(k), 0, frees=k)
        t.verify(0)
        ts.append(t)
    seeds["06_full"] = (threads_input(4000, 9, ts), "sixteen live allocations per thread, S freed midway")

    ts = []
    for i in range(4):
        t = Thread()
        t.malloc(512 + i)
        t.copy(True, t.ptr(0), CS_REMAINING, host=HOST_NEAR_MAX)   # 2: host wraps
        t.copy(False, t.ptr(0), CS_ONE, host=HOST_NEAR_MAX)        # 2: UINTPTR_MAX + 1 wraps
        t.copy(True, t.ptr(0), CS_U8, 16, host=HOST_RANDOM)        # 0: buffer substituted
        t.copy(False, t.ptr(0), CS_REMAINING_PLUS1, host=HOST_RANDOM)  # 6
        t.copy(True, t.ptr(0, 3, 100), CS_INSIDE, 50)
        t.copy(False, t.ptr(0), CS_NEAR_SIZE_MAX, 255)             # 2: wraps
        t.verify(0)
        ts.append(t)
    seeds["07_bogus_hosts"] = (threads_input(300, 2, ts), "NULL, near-UINTPTR_MAX and random host pointers")

    ts = []
    for i in range(4):
        t = Thread()
        for k in range(8):
            t.malloc(1000 * (k + 1), ex=True, tag=k)
            t.read_shared(k, 8)
            t.free(t.ptr(0), frees=0)
            t.free_ex(t.foreign(1, k), 3, 0)             # stale generation: repeated free
        t.free_shared()
        t.free_shared()
        ts.append(t)
    seeds["08_churn_shared"] = (threads_input(8192, 33, ts),
                                "allocate and free at once while reading S; everyone frees S twice")
    return seeds


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the seeds, write nothing")
    parser.add_argument("--out", default=os.path.join(HERE, "corpus"))
    args = parser.parse_args()
    corpora = {
        "fuzz_api_sequence": {k: (bytes(s.b), d) for k, (s, d) in sequence_seeds().items()},
        "fuzz_registry_threads": threads_seeds(),
    }
    for target, seeds in corpora.items():
        directory = os.path.join(args.out, target)
        if not args.list:
            shutil.rmtree(directory, ignore_errors=True)
            os.makedirs(directory)
        for name, (data, what) in sorted(seeds.items()):
            if args.list:
                print(f"{target}/{name} ({len(data)} B): {what}")
            else:
                with open(os.path.join(directory, name), "wb") as f:
                    f.write(data)
        if not args.list:
            print(f"{directory}: {len(seeds)} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
