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
# fuzz_api_sequence: one opcode byte (% 30), then the operation's arguments.
# --------------------------------------------------------------------------------------
OP_MALLOC, OP_MALLOC_EX, OP_FREE, OP_FREE_EX, OP_H2D, OP_D2H, OP_GET_INFO, OP_VERIFY, \
    OP_LIST, OP_SELECT_BACKEND, OP_SET_DEVICE, OP_STATS_ARGS, OP_MALLOC_SMALL, OP_D2D, \
    OP_MIGRATE, OP_BATCH, OP_POOL_SET, OP_POOL_TRIM, OP_POOL_STATS, OP_HOST_ALLOC, \
    OP_HOST_FREE, OP_HOST_REGISTER, OP_HOST_UNREGISTER, OP_HOST_TRIM, OP_HOST_STATS, \
    OP_HOST_COPY, OP_STAGING, OP_WIPE, OP_DEVICE_QUERY, OP_ASYNC = range(30)
A_H2D, A_D2H, A_D2D, A_MALLOC, A_FREE, A_COMPLETION = range(6)


def stream(k=0, value=0, null=False):
    """pick_stream: k 0, 1, 2 the default streams, 3 any value; null: no completion pointer."""
    return u8(k | (0xf0 if null else 0)) + (u64(value) if k == 3 else b"")

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
        self.used = 0    # rounded bytes live (of the thread's device, without the pool)
        self.cached = 0  # pinned host blocks in the cache (the decoders only ask whether any)

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

    def malloc_ex(self, cat, arg=None, tag=0, want_gen=True, null_ptr=False, prefix=None):
        out, size = self._size(cat, arg)
        flags = (31 if null_ptr else 0) | (32 if want_gen else 0)
        self.b += (prefix or u8(OP_MALLOC_EX)) + out + u8(tag) + u8(flags)
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

    def free_ex(self, ptr, gen_kind, arg=0, frees=None, prefix=None):
        """gen_kind: 'right', 'zero', 'stale' (arg: freed index), 'never' (next + arg),
        'live' (arg: live index), 'max' (UINT64_MAX - arg), 'random' (arg)."""
        self.b += (prefix or u8(OP_FREE_EX)) + ptr[0]
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

    def copy(self, h2d, ptr, size_kind, arg=0, host=HOST_BUFFER, host_arg=0, seed=1, prefix=None):
        self.b += (prefix or u8(OP_H2D if h2d else OP_D2H)) + ptr[0] + u8(size_kind)
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

    # ---- the operations of 0.2.0 ----
    @staticmethod
    def copy_size(kind, arg=0):
        """pick_copy_size's bytes."""
        out = u8(kind)
        if kind == CS_U8:
            out += u8(arg - 1)
        elif kind == CS_U64:
            out += u64(arg)
        elif kind == CS_U16:
            out += u16(arg - 1)
        elif kind in (CS_INSIDE, CS_NEAR_SIZE_MAX):
            out += u16(arg)
        return out

    def d2d(self, src, dst, size_kind, arg=0, prefix=None):
        """dst: ("ptr", pointer bytes), ("in", live index, offset), ("same", offset kind,
        extra bytes), ("near", delta) or ("self",)."""
        self.b += (prefix or u8(OP_D2D) + u8(1)) + src[0]
        if dst[0] == "ptr":
            self.b += u8(0) + dst[1][0]
        elif dst[0] == "in":
            self.b += u8(2) + u8(dst[1]) + u16(dst[2])
        elif dst[0] == "same":
            self.b += u8(3) + u8(dst[1]) + dst[2]
        elif dst[0] == "near":
            self.b += u8(4) + u16(dst[1])
        else:
            self.b += u8(5)
        self.b += self.copy_size(size_kind, arg)
        return self

    def copy_path(self, src_index, dst_index, null=False):
        """indexes into {0, 1, 0, 1, 2, -1, 32, INT32_MIN}."""
        self.b += u8(OP_D2D) + u8(0) + u8(src_index) + u8(dst_index) + u8(7 if null else 0)
        return self

    def gen(self, kind, arg=0):
        """pick_generation's bytes: 'right', 'zero', 'stale', 'never', 'live', 'max', 'random'."""
        if kind == "right":
            return u8(0)
        if kind == "zero":
            return u8(3)
        if kind == "stale":
            return u8(4) + (u8(arg) if self.freed else b"")
        if kind == "never":
            return u8(5) + u8(arg)
        if kind == "live":
            return u8(6) + (u8(arg) if self.live else b"")
        if kind == "max":
            return u8(7) + u8(arg)
        return u8(8) + u64(arg)

    def migrate(self, ptr, gen, device=None, other=False, null_new=False, want_gen=True,
                moves=None):
        """device: index into {0, 1, 1, 0, -1, 2, 32, INT32_MIN}; other: to the other device.
        moves: index of the live allocation it moves (one more freed entry)."""
        self.b += u8(OP_MIGRATE) + ptr[0] + gen + u8(8 if other else device)
        self.b += u8((7 if null_new else 0) | (8 if want_gen else 0))
        if moves is not None:
            self.live.append(self.live.pop(moves))
            self.freed = min(self.freed + 1, 64)
        return self

    def batch(self, sizes, tag=0, count=None, ptrs=2, sizes_kind=2, gens=2, arg=0,
              made=None, undone=0):
        """sizes: (kind, arg) of pick_batch_size; count: None (all), 'zero', 'over' (over
        SIZE_MAX / 8) or 'wrap' (the arrays' ends wrap); ptrs / sizes_kind: 0 NULL, 1 wrapping,
        2 real; gens: 0 NULL, 2 real, 3 wrapping. made: sizes that stay live; undone: how many
        the batch makes and frees again."""
        self.b += u8(OP_BATCH) + u8(len(sizes) - 1)
        for kind, a in sizes:
            self.b += u8(kind)
            if kind in (1, 2, 4, 5):
                self.b += u8(a)
            elif kind >= 6:
                self.b += u16(a)
        f = {None: 0, "zero": 5, "over": 6, "wrap": 7}[count]
        self.b += u8(tag) + u8(f) + u8(ptrs | sizes_kind << 3 | gens << 6)
        if count in ("over", "wrap"):
            self.b += u8(arg)
        for size in made or []:
            self.live.append(size)
        self.freed = min(self.freed + undone, 64)
        return self

    def pool_bytes(self, kind, arg=0):
        out = u8(kind)
        if kind == 3 or kind >= 8:
            out += u16(arg)
        elif kind == 4:
            out += u32(arg)
        elif kind in (6, 7):
            out += u8(arg)
        return out

    def pool_set(self, device_index, kind, arg=0):
        """device_index into {0, 1, 0, 1, -1, 2, 31, 32, -2, INT32_MIN}; kind: 0 zero, 1 what
        is cached, 2 one less, 3 256 * arg, 4 arg, 5 the capacity, 6 UINT64_MAX - arg,
        7 2**arg, 8 1024 * arg."""
        self.b += u8(OP_POOL_SET) + u8(device_index) + self.pool_bytes(kind, arg)
        return self

    def pool_trim(self, device_index, kind, arg=0):
        """device_index into {-1, 0, 1, -1, 0, 1, 2, 31, 32, -2}."""
        self.b += u8(OP_POOL_TRIM) + u8(device_index) + self.pool_bytes(kind, arg)
        return self

    def pool_stats(self, device_index, kind=0, shrink=0):
        """kind: 0 exact, 1 too small, 2 larger, 3 NULL."""
        self.b += u8(OP_POOL_STATS) + u8(device_index) + u8(kind)
        if kind == 1:
            self.b += u8(shrink)
        return self

    def host_alloc(self, kind, arg=0, null=False):
        """pick_host_size: 0 zero, 1 SIZE_MAX / 2 + 1 + arg, 2 SIZE_MAX - arg, 3 4096,
        4 4097 + arg, 5 4096 << arg, 6 1 + arg, 7 1 + arg (u32)."""
        self.b += u8(OP_HOST_ALLOC) + u8(kind)
        if kind in (1, 2, 5, 6):
            self.b += u8(arg)
        elif kind == 4:
            self.b += u16(arg)
        elif kind >= 7:
            self.b += u32(arg)
        self.b += u8(15 if null else 0)
        return self

    def host_free(self, kind, block=0, reg=0, arg=0, blocks=True, regs=True):
        """kind: 0 a block, 3 inside one, 4 its end, 5 a cached block, 6 a registration,
        7 NULL, 8 the arena + arg, 9 random."""
        self.b += u8(OP_HOST_FREE) + u8(kind) + u8(block) + u8(reg)
        if kind == 3 and blocks:
            self.b += u32(arg)
        elif kind == 5 and self.cached:
            self.b += u8(arg)
        elif kind == 8:
            self.b += u16(arg)
        elif (kind <= 4 and not blocks) or (kind == 5 and not self.cached) or \
                (kind == 6 and not regs) or kind == 9:
            self.b += u64(arg)
        return self

    def host_register(self, kind, off=0, n=1, block=0, reg=0, top=0):
        """kind: 0 the arena at off, n bytes; 4 NULL; 5 zero bytes; 6 UINTPTR_MAX - top, n;
        7 inside a block (off), 8 inside a registration (off), 9 a kernel-half page off."""
        self.b += u8(OP_HOST_REGISTER) + u8(kind) + u8(block) + u8(reg) + u32(off)
        if kind <= 3:
            self.b += u32(n - 1)
        elif kind == 4:
            self.b += u16(n - 1)
        elif kind == 6:
            self.b += u8(top) + u16(n - 1)
        elif kind == 7:
            self.b += u32(off) + u16(n - 1)
        elif kind == 8:
            self.b += u16(off) + u16(n - 1)
        elif kind == 9:
            self.b += u32(off) + u16(n - 1)
        return self

    def host_unregister(self, kind, block=0, reg=0, arg=0):
        """kind: 0 a registration, 4 inside it (arg), 5 NULL, 6 a block, 7 the arena + arg,
        8 the last one unregistered, 9 random (registrations and blocks exist)."""
        self.b += u8(OP_HOST_UNREGISTER) + u8(kind) + u8(block) + u8(reg)
        if kind in (4, 7):
            self.b += u16(arg)
        elif kind == 9:
            self.b += u64(arg)
        return self

    def host_trim(self, kind, arg=0):
        """kind: 0 keep nothing, 1 keep all, 2 a bit less, 3 SIZE_MAX, 4 arg."""
        self.b += u8(OP_HOST_TRIM) + u8(kind)
        if kind == 2 and self.cached:
            self.b += u16(arg)
        elif kind == 4:
            self.b += u32(arg)
        return self

    def host_stats(self, kind=0, shrink=0):
        self.b += u8(OP_HOST_STATS) + u8(kind)
        if kind == 1:
            self.b += u8(shrink)
        return self

    def host_copy(self, h2d, ptr, size_kind, arg=0, block=0, reg=0, registered=False, off=0,
                  seed=5):
        """h2d / d2h with the host side a pinned block (or an arena registration) + off."""
        self.b += u8(OP_HOST_COPY) + u8(1 if h2d else 0) + u8(block) + u8(reg)
        self.b += u8(3 if registered else 0) + u32(off) + ptr[0] + self.copy_size(size_kind, arg)
        if h2d:
            self.b += u64(seed)  # the host bytes; a d2h's are 0x5a
        return self

    def staging(self, kind, threads=4, chunk=(1, 0), min_bytes=(0, 16), buffers=2, bad=4,
                reserved=0):
        """kind: 0 get(NULL), 1 set(NULL), 2 get, 3.. set then get. chunk: (kind, arg) of
        {4095, 4096, 1 GiB, 1 GiB + 1, u32, u64, (arg + 1) << 16}; min_bytes: (0, arg << 8)
        or (1, u64); bad: 0 size - 8, 1 size + 8, 2 size 0, 3 reserved, else none."""
        self.b += u8(OP_STAGING) + u8(kind)
        if kind < 3:
            return self
        self.b += u8(threads) + u8(chunk[0])
        if chunk[0] == 4:
            self.b += u32(chunk[1])
        elif chunk[0] == 5:
            self.b += u64(chunk[1])
        elif chunk[0] >= 6:
            self.b += u8(chunk[1])
        self.b += u8(min_bytes[0]) + (u64(min_bytes[1]) if min_bytes[0] & 1 else u16(min_bytes[1]))
        self.b += u8(buffers) + u8(bad)
        if bad == 3:
            self.b += u8(reserved - 1)
        return self

    def wipe_policy(self, index):
        """vram_set_wipe_policy of {0, 1, 1, 0, 2, -1, INT32_MAX, INT32_MIN}[index]."""
        self.b += u8(OP_WIPE) + u8(0) + u8(index)
        return self

    def get_wipe_policy(self):
        self.b += u8(OP_WIPE) + u8(2)
        return self

    def allocation_wipe(self, ptr, gen, index):
        self.b += u8(OP_WIPE) + u8(3) + ptr[0] + gen + u8(index)
        return self

    # ---- 0.3.0: async copies, completions, stream-ordered allocation ----
    def h2d_async(self, ptr, size_kind, arg=0, st=stream(), **k):
        return self.copy(True, ptr, size_kind, arg, prefix=u8(OP_ASYNC) + u8(A_H2D) + st, **k)

    def d2h_async(self, ptr, size_kind, arg=0, st=stream(), **k):
        return self.copy(False, ptr, size_kind, arg, prefix=u8(OP_ASYNC) + u8(A_D2H) + st, **k)

    def d2d_async(self, src, dst, size_kind, arg=0, st=stream()):
        return self.d2d(src, dst, size_kind, arg, prefix=u8(OP_ASYNC) + u8(A_D2D) + st)

    def malloc_async(self, cat, arg=None, tag=0, st=stream(), **k):
        return self.malloc_ex(cat, arg, tag, prefix=u8(OP_ASYNC) + u8(A_MALLOC) + st, **k)

    def free_async(self, ptr, gen_kind, arg=0, st=stream(), **k):
        return self.free_ex(ptr, gen_kind, arg, prefix=u8(OP_ASYNC) + u8(A_FREE) + st, **k)

    def completion(self, kind, index=0, held=True, size_kind=0, shrink=0):
        """kind: 0 query, 1 wait, 2 release a held completion (index), 3 query with NULLs,
        4 wait / release NULL, 5 vram_async_stats_get (size_kind 0 exact, 1 short, 2 larger,
        3 NULL)."""
        self.b += u8(OP_ASYNC) + u8(A_COMPLETION) + u8(kind) + (u8(index) if held else b"")
        if kind == 5:
            self.b += u8(size_kind) + (u8(shrink) if size_kind == 1 else b"")
        return self

    def names(self, k, value=0, histogram=1):
        """k % 4: 0 the code k // 4 - 2, 1 value, 2 INT32_MIN, 3 INT32_MAX; histogram - 1."""
        self.b += u8(OP_DEVICE_QUERY) + u8(4) + u8(0) + u8(0) + u8(k)
        self.b += (u32(value) if k % 4 == 1 else b"") + u8(histogram)
        return self

    def device_query(self, kind, device_index, null=False):
        """kind: 0 count, 1 state, 2 props, 3 NUMA node; device_index into
        {0, 1, 0, 1, 2, 31, 32, -1, INT32_MIN, INT32_MAX}."""
        self.b += u8(OP_DEVICE_QUERY) + u8(kind) + u8(device_index) + u8(7 if null else 0)
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

    s = Seq()
    s.malloc_ex(SZ_U16, 3000, tag=4)
    s.malloc_ex(SZ_U16, 1000, tag=5)
    s.h2d(s.live_ptr(0), CS_REMAINING, seed=11)
    s.h2d(s.live_ptr(1), CS_REMAINING, seed=12)
    s.d2d(s.live_ptr(0), ("in", 1, 0), CS_U16, 1000)              # 0: all of the second
    s.d2d(s.live_ptr(0), ("in", 1, 500), CS_U16, 600)             # 6: past its end
    s.d2d(s.live_ptr(0), ("same", OFF_INTERIOR, u32(99)), CS_U16, 1000)  # 2: overlap
    s.d2d(s.live_ptr(0), ("same", OFF_INTERIOR, u32(1999)), CS_U16, 1000)  # 0: its other half
    s.d2d(s.live_ptr(0), ("self",), CS_ONE)                       # 2: overlap with itself
    s.d2d(s.live_ptr(0), ("near", 0xffff), CS_ONE)                # 5: one byte before it
    s.d2d(s.live_ptr(0), ("ptr", s.other_ptr("null")), CS_ONE)    # 2: NULL
    s.d2d(s.live_ptr(0), ("in", 1, 0), CS_ZERO)                   # 2: zero bytes
    s.d2d(s.live_ptr(0), ("in", 1, 0), CS_SIZE_MAX)               # 2: wraps
    s.d2d(s.live_ptr(0, "end"), ("in", 1, 0), CS_ONE)             # 5: at the source's end
    s.free(s.live_ptr(1), frees=1)
    s.d2d(s.live_ptr(0), ("ptr", s.freed_ptr(0)), CS_ONE)         # 5: freed destination
    s.d2d(s.freed_ptr(0), ("in", 0, 0), CS_ONE)                   # 5: freed source
    s.verify(0)
    seeds["13_d2d"] = (s, "d2d on one device: whole, past the end, overlapping, NULL, freed")

    s = Seq()
    s.set_device(1)                                               # device 1
    s.malloc_ex(SZ_U16, 5000, tag=7)
    s.h2d(s.live_ptr(0), CS_REMAINING, seed=21)
    s.set_device(0)
    s.malloc_ex(SZ_U16, 5000, tag=8)
    s.d2d(s.live_ptr(0), ("in", 1, 0), CS_U16, 5000)              # 0: device 1 -> 0
    s.d2d(s.live_ptr(1, OFF_U16, 100), ("in", 0, 4000), CS_U16, 900)  # 0: 0 -> 1
    s.verify(0).verify(1)
    s.get_info(0)
    s.list(2, 3, 4).list(1, 3, 4).list(0, 3, 4)
    for a, b in ((0, 1), (1, 0), (0, 0), (4, 0), (5, 1), (6, 7)):
        s.copy_path(a, b)
    s.copy_path(0, 1, null=True)
    s.set_device(2).set_device(8)                                 # 2: 31 and 2 are invalid
    seeds["14_d2d_devices"] = (s, "allocations on both devices, copies between them, paths")

    s = Seq()
    s.malloc_ex(SZ_U16, 4000, tag=9)
    s.h2d(s.live_ptr(0), CS_REMAINING, seed=31)
    s.migrate(s.live_ptr(0), s.gen("zero"), 1)                    # 2: generation 0
    s.migrate(s.live_ptr(0), s.gen("never", 3), 1)                # 5
    s.migrate(s.live_ptr(0), s.gen("right"), 5)                   # 2: device 2
    s.migrate(s.live_ptr(0), s.gen("right"), 1, null_new=True)    # 2: NULL new_ptr
    s.migrate(s.live_ptr(0, "interior", 5), s.gen("right"), 1)    # 5: not its base
    s.migrate(s.live_ptr(0), s.gen("right"), 0)                   # 0: already there
    s.migrate(s.live_ptr(0), s.gen("right"), other=True, moves=0)  # 0: to device 1
    s.verify(0)
    s.migrate(s.live_ptr(0), s.gen("stale", 0), 0)                # 5: the old generation
    s.free_ex(s.freed_ptr(0), "stale", 0)                          # 0: repeated free
    s.migrate(s.live_ptr(0), s.gen("right"), other=True, want_gen=False, moves=0)  # back
    s.d2h(s.live_ptr(0), CS_REMAINING)
    seeds["15_migrate"] = (s, "migrate: bad generations and devices, to its own device, there and back")

    s = Seq()
    small = (6, 700)
    s.batch([small, (6, 100), (5, 3)], tag=3, made=[701, 101, 1024])  # 0: three made
    s.batch([small, (0, 0), small])                                # 2: a size of 0
    s.batch([small, (1, 3)])                                       # 2: size overflows
    s.batch([small, small, (2, 0), small], tag=1, undone=2)        # 1: the third does not fit
    s.batch([small], tag=64)                                       # 2: invalid tag
    s.batch([small, small], count="zero")                          # 2
    s.batch([small, small], count="over", arg=1)                   # 2: over SIZE_MAX / 8
    s.batch([small, small], count="wrap", arg=3)                   # 2: the arrays wrap
    s.batch([small], ptrs=0)                                       # 2: NULL ptrs
    s.batch([small], sizes_kind=0)                                 # 2: NULL sizes
    s.batch([small], ptrs=1)                                       # 2: ptrs wrap
    s.batch([small, small], sizes_kind=1)                          # 2: sizes wrap
    s.batch([small, small], gens=3)                                # 2: generations wrap
    s.batch([small, small], gens=0, made=[701, 701])               # 0: without generations
    s.free(s.freed_ptr(0))                                         # a batch's undone buffer
    s.list(0, 3, 10)
    seeds["16_batch"] = (s, "batch: made, refused for every reason, undone after one that does not fit")

    s = Seq()
    s.pool_set(0, 8, 1024)                                         # device 0: 1 MiB
    s.malloc(SZ_U16, 1000)
    s.h2d(s.live_ptr(0), CS_REMAINING, seed=41)
    s.free(s.live_ptr(0), frees=0)                                 # cached
    s.malloc(SZ_U16, 900)                                          # the same block back
    s.d2h(s.live_ptr(0), CS_REMAINING)
    s.h2d(s.live_ptr(0, OFF_LAST), CS_U8, 2)                       # 6: past the 900 asked for
    s.malloc(SZ_U16, 60000)
    s.free(s.live_ptr(1), frees=1)
    s.free(s.live_ptr(0), frees=0)
    s.pool_stats(0).pool_stats(4).pool_stats(5).pool_stats(7).pool_stats(0, 1, 3)
    s.pool_stats(0, 3).pool_stats(0, 2)
    s.select_backend(1)                                            # 10: blocks cached
    s.malloc_small(2000)
    s.pool_set(0, 2)                                               # lower the bound: a trim
    s.pool_trim(1, 3, 1)                                           # keep 256 bytes
    s.pool_trim(0, 0).pool_trim(6, 0).pool_trim(8, 0).pool_trim(9, 0)
    s.pool_set(1, 5).pool_set(4, 3, 4).pool_set(5, 3, 4).pool_set(7, 0).pool_set(9, 0)
    s.set_device(1)
    s.malloc(SZ_U16, 3000)                                         # a pool miss on device 1
    s.free(s.live_ptr(1), frees=1)
    s.pool_set(0, 0)                                               # off: the block stays out
    s.free(s.live_ptr(0), frees=0)
    seeds["17_pool"] = (s, "pool: a freed block handed back, stats, trims, bounds, busy backend")

    s = Seq()
    s.malloc(SZ_U64, 21 << 20)                                     # pool off: outside it
    s.pool_set(0, 6)                                               # unbounded
    s.malloc(SZ_U64, 43 << 20)                                     # its 44 MiB block does not fit:
    s.free(s.live_ptr(1), frees=1)                                 #   made at its own size
    s.free(s.live_ptr(0), frees=0)                                 # to the driver, as it was made
    s.wipe_policy(1)                                               # wipe on free
    s.malloc(SZ_POW2, 25)                                          # 32 MiB
    s.h2d(s.live_ptr(0), CS_U16, 4000, seed=51)
    s.free(s.live_ptr(0), frees=0)                                 # wiped, cached
    s.malloc(SZ_POW2, 25)                                          # back, zeroed
    s.malloc(SZ_U64, 40 << 20)                                     # 1: nothing cached to release
    s.free(s.live_ptr(0), frees=0)                                 # cached
    s.malloc(SZ_U64, 40 << 20)                                     # the cache released, retried
    s.wipe_policy(0)
    s.free(s.live_ptr(0), frees=0)
    s.pool_trim(0, 0)
    seeds["18_pool_oom"] = (s, "pool: wiped blocks, out of memory releases the cache and retries")

    s = Seq()
    s.host_alloc(6, 99)                                            # 100 B: a page
    s.host_alloc(5, 2)                                             # 16 KiB
    s.host_alloc(4, 1000)                                          # 5097 B
    s.host_alloc(0).host_alloc(1, 1).host_alloc(2, 0).host_alloc(3, null=True)  # 2
    s.malloc(SZ_U16, 6000)
    s.host_copy(True, s.live_ptr(0), CS_REMAINING, block=1)        # 0: from a pinned block
    s.host_copy(False, s.live_ptr(0), CS_U16, 3000, block=0)       # 0: into a page, clamped
    s.host_register(0, off=8192, n=10000)                          # the arena
    s.host_register(0, off=9000, n=10)                             # 2: overlap
    s.host_register(7, off=100, block=1)                           # 2: over a block
    s.host_register(4).host_register(5)                            # 2: NULL, zero bytes
    s.host_register(6, top=3, n=10)                                # 2: wraps
    s.host_register(9, off=5, n=4096)                              # 0: nobody's memory
    s.host_copy(True, s.live_ptr(0), CS_U16, 2000, reg=0, registered=True, off=10)
    s.host_copy(False, s.live_ptr(0, OFF_END), CS_ONE, block=2)    # 5
    s.host_free(3, block=1, arg=70000)                             # 7: inside it
    s.host_free(4, block=1)                                        # 5: its end
    s.host_free(6, reg=0)                                          # 5: a registration
    s.host_free(7).host_free(8, arg=77).host_free(9, arg=0x1234)   # 0, 5, 5
    s.host_free(0, block=1)                                        # 0: cached, zeroed
    s.cached = 1
    s.host_free(5)                                                 # 5: a cached block
    s.host_alloc(5, 2)                                             # 0: the same block back
    s.host_unregister(4, reg=0, arg=3).host_unregister(5).host_unregister(6, block=0)
    s.host_unregister(0, reg=0).host_unregister(8).host_unregister(7, arg=9000)
    s.host_stats().host_stats(1, 0).host_stats(2).host_stats(3)
    s.host_free(0, block=0)
    s.host_trim(1).host_trim(2, 1).host_trim(4, 5000).host_trim(0)
    seeds["19_host_pinned"] = (s, "pinned blocks and registrations: copies, overlaps, cache, trim")

    s = Seq()
    s.staging(0).staging(1).staging(2)
    s.staging(3, threads=8, chunk=(6, 31), min_bytes=(0, 4096), buffers=4)  # valid
    s.staging(3, threads=0)                                        # staging off
    s.staging(3, threads=65)                                       # 2: invalid_config
    s.staging(3, chunk=(0, 0)).staging(3, chunk=(3, 0)).staging(3, buffers=0)
    s.staging(3, buffers=17).staging(3, bad=0).staging(3, bad=1).staging(3, bad=2)
    s.staging(3, bad=3, reserved=1).staging(3, chunk=(2, 0), min_bytes=(1, 2**64 - 1), buffers=16)
    s.wipe_policy(4).wipe_policy(5).wipe_policy(6).wipe_policy(1).get_wipe_policy()
    s.malloc_ex(SZ_U16, 300, tag=2)                                # under the wipe policy
    s.wipe_policy(0)
    s.malloc_ex(SZ_U16, 300, tag=2)
    s.allocation_wipe(s.live_ptr(1), s.gen("right"), 1)            # 0
    s.allocation_wipe(s.live_ptr(0), s.gen("live", 1), 0)          # 5: another's generation
    s.allocation_wipe(s.live_ptr(0), s.gen("right"), 4)            # 2: no such policy
    s.allocation_wipe(s.other_ptr("null"), s.gen("zero"), 0)       # 2: NULL
    s.h2d(s.live_ptr(1), CS_REMAINING)
    s.free(s.live_ptr(1), frees=1)                                 # wiped
    for k in range(4):
        for d in (0, 1, 4, 5, 6, 7, 8):
            s.device_query(k, d)
        s.device_query(k, 0, null=True)
    for code in range(-2, 20):
        s.names(4 * (code + 2), histogram=code % 5)
    s.names(1, 2**31 + 5, 0).names(2, 0, 4).names(3, 0, 2).names(4 * 28, 0, 1).names(4 * 21, 0, 2)
    seeds["20_settings"] = (s, "staging configurations, wipe policies, device queries")

    s = Seq()
    s.malloc_ex(SZ_U16, 2000, tag=6)
    s.h2d_async(s.live_ptr(0), CS_REMAINING, seed=61)                      # 0: kept
    s.d2h_async(s.live_ptr(0), CS_REMAINING, st=stream(2))                 # 0
    s.d2h_async(s.live_ptr(0), CS_ONE, st=stream(1, null=True))            # 2: no completion
    s.h2d_async(s.live_ptr(0, OFF_LAST), CS_U8, 2, st=stream(3, 0xdead))   # 6
    s.h2d_async(s.live_ptr(0), CS_ONE, host=HOST_NULL)                     # 2: NULL host
    s.d2d_async(s.live_ptr(0), ("same", OFF_INTERIOR, u32(999)), CS_U16, 500)   # 0
    s.d2d_async(s.live_ptr(0), ("self",), CS_ONE)                          # 2: overlap
    s.malloc_async(SZ_U16, 3000, tag=7, st=stream(1))                      # stream-ordered
    s.d2d_async(s.live_ptr(0), ("in", 1, 0), CS_U16, 2000, st=stream(3, 77))  # 0
    s.completion(0, 1).completion(1, 0).completion(2, 0).completion(3, 0).completion(4)
    s.completion(5, 0, size_kind=0).completion(5, 0, size_kind=1, shrink=2)
    s.completion(5, 0, size_kind=2).completion(5, 0, size_kind=3)
    s.pool_set(0, 8, 1024)                                                 # the pool on
    s.free_async(s.live_ptr(1), "right", frees=1)                          # to the driver
    s.malloc_async(SZ_U16, 3000, st=stream(2))                             # not from the pool
    s.free_async(s.live_ptr(1), "zero")                                    # 2
    s.free_async(s.live_ptr(1), "stale", 0)                                # 0: repeated
    s.wipe_policy(1)
    s.malloc_async(SZ_U16, 500)
    s.free_async(s.live_ptr(2), "right", frees=2)                          # wiped on the stream
    s.migrate(s.live_ptr(1), s.gen("right"), other=True, moves=1)          # a stream-ordered one
    s.malloc_async(SZ_CAPACITY, 1)                                         # 1: too big
    s.malloc_async(SZ_ZERO).malloc_async(SZ_ONE, tag=64).malloc_async(SZ_ONE, null_ptr=True)
    s.wipe_policy(0)
    seeds["21_async"] = (s, "0.3.0: async copies and completions, stream-ordered allocation and free")
    return seeds


# --------------------------------------------------------------------------------------
# fuzz_registry_threads: a header (shared size, tag, content seed), then 4 equal streams.
# --------------------------------------------------------------------------------------
T_MALLOC, T_MALLOC_EX, T_FREE, T_FREE_EX, T_H2D, T_D2H, T_READ_SHARED, T_FREE_SHARED, \
    T_GET_INFO, T_VERIFY, T_D2D, T_D2D_SHARED, T_MIGRATE, T_BATCH, T_POOL, T_SET_DEVICE, \
    T_ALLOC_WIPE, T_HOST, T_ASYNC_COPY, T_ASYNC_D2D, T_MALLOC_ASYNC, T_FREE_ASYNC = \
    0, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23


class Thread:
    """Encoder of one thread's stream; n_live / n_freed as the thread's model sees them."""

    def __init__(self):
        self.b = bytearray()
        self.live = []
        self.freed = 0
        self.blocks = 0  # pinned blocks the thread holds
        self.regs = 0    # buffers it registered

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

    def gen(self, kind, arg=0):
        """t_generation: 0 the pointer's, 2 zero, 3 stale, 4 another live one's, 5 never."""
        out = u8(kind)
        if (kind == 3 and self.freed) or (kind == 4 and self.live) or kind == 5:
            out += u8(arg)
        return out

    def d2d(self, src, size_kind, arg=0, dst=None, within=None):
        """dst: pointer bytes, or within: offset into the source's block."""
        self.b += u8(T_D2D) + src
        self.b += u8(3) + u32(within) if within is not None else u8(0) + dst
        self.b += Seq.copy_size(size_kind, arg)
        return self

    def d2d_shared(self, soff, i, doff, n):
        self.b += u8(T_D2D_SHARED) + u16(soff)
        if self.live:
            self.b += u8(i) + u16(doff) + u16(n - 1)
        return self

    def migrate(self, p, gen, device=None, other=False, moves=None):
        """device: index into {0, 1, 1, 0, 2, -1, 32, 1}."""
        self.b += u8(T_MIGRATE) + p + gen + u8(8 if other else device)
        if moves is not None:
            self.live.append(self.live.pop(moves))
            self.freed += 1
        return self

    def batch(self, sizes, tag=0, f=4, made=0, undone=0):
        """sizes: (kind, arg): 0 zero, 1 overflows, 2 over the capacity, else arg + 1 bytes;
        f % 8: 0 count 0, 1 count over SIZE_MAX / 8, 2 NULL ptrs, 3 NULL sizes, else all;
        f & 8: with generations."""
        self.b += u8(T_BATCH) + u8(len(sizes) - 1)
        for kind, a in sizes:
            self.b += u8(kind) + (u8(a) if kind == 1 else u16(a) if kind >= 2 else b"")
        self.b += u8(tag) + u8(f)
        self.live += [1] * made
        self.freed += undone
        return self

    def pool(self, kind, device_index, bound_index):
        """kind 0 set, 1 trim, 2 stats; devices {0, 1, -1, 2, 32, 0, 1, -1}; bounds
        {0, 1 MiB, 4 MiB, 16 MiB (a trim keeps UINT64_MAX)}."""
        self.b += u8(T_POOL) + u8(kind) + u8(device_index) + u8(bound_index)
        return self

    def set_device(self, index):
        """{0, 1, 1, 0, 2, -1}[index]."""
        self.b += u8(T_SET_DEVICE) + u8(index)
        return self

    def alloc_wipe(self, p, gen, policy):
        self.b += u8(T_ALLOC_WIPE) + p + gen + u8(policy)
        return self

    def host(self, kind, block=0, reg=0, arg=0, copy=None):
        """t_host: 0 alloc arg bytes, 1 free (arg % 4: 0 the block, 2 inside it, 3 nobody's),
        2 trim (arg: index of {0, 1 MiB, SIZE_MAX, 4096}), 3 register a buffer of arg + 1
        bytes, 4 register over a block (arg even) or registration (odd), 5 unregister (arg
        odd: inside), 6 stats, 7 h2d / 8 d2h: copy = (async, registered, live index, offset,
        host offset, n - 1, one_more)."""
        self.b += u8(T_HOST) + u8(kind)
        self.b += (u8(block) if self.blocks else b"") + (u8(reg) if self.regs else b"")
        if kind in (0, 3):
            self.b += u16(arg)
            if kind == 0 and arg:
                self.blocks += 1
            if kind == 3:
                self.regs += 1
        elif kind in (1, 2, 4, 5):
            self.b += u8(arg)
            if kind == 1 and self.blocks and arg % 4 in (0, 1):
                self.blocks -= 1
            if kind == 5 and self.regs and not arg & 1:
                self.regs -= 1
        elif kind in (7, 8):
            async_, registered, i, off, hoff, n, more = copy
            self.b += u8(async_) + u8(registered)
            if (self.regs if registered else self.blocks) and self.live:
                self.b += u8(i) + u16(off) + u16(hoff) + u16(n) + u8(0 if more else 1)
        return self

    def stream(self, k=0, value=0):
        return u8(k) + (u64(value) if k == 3 else b"")

    def copy_async(self, h2d, p, size_kind, arg=0, k=0):
        self.b += u8(T_ASYNC_COPY) + u8(1 if h2d else 0) + self.stream(k)
        self.b += p + Seq.copy_size(size_kind, arg) + u8(HOST_BUFFER) + u64(9)
        return self

    def d2d_async(self, src, size_kind, arg=0, dst=None, within=None, k=1):
        self.b += u8(T_ASYNC_D2D) + self.stream(k) + src
        self.b += u8(3) + u32(within) if within is not None else u8(0) + dst
        self.b += Seq.copy_size(size_kind, arg)
        return self

    def malloc_async(self, size, tag=0, k=2):
        self.b += u8(T_MALLOC_ASYNC) + self.stream(k) + u8(6) + u16(size - 1) + u8(tag)
        if tag < 64 and len(self.live) < 16:
            self.live.append(size)
        return self

    def free_async(self, p, gen_kind, arg=0, frees=None, k=0):
        self.b += u8(T_FREE_ASYNC) + self.stream(k) + p + u8(gen_kind)
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

    ts = []
    for i in range(4):
        t = Thread()
        if i % 2:
            t.set_device(1)
        t.malloc(3000 + i, ex=True, tag=i)
        t.malloc(2000, ex=True, tag=i)
        t.copy(True, t.ptr(0), CS_REMAINING, seed=i + 1)
        t.d2d(t.ptr(0), CS_U16, 2000, dst=t.ptr(1))              # 0
        t.d2d(t.ptr(0), CS_U16, 1000, within=1500)               # 0: the other half
        t.d2d(t.ptr(0), CS_U16, 1000, within=10)                 # 2: overlap
        t.d2d(t.ptr(0, 5), CS_ONE, dst=t.ptr(1))                 # 5: the source's end
        t.d2d(t.ptr(0), CS_U16, 2001, dst=t.ptr(1))              # 6
        t.d2d_shared(i * 100, 1, 0, 500)
        t.migrate(t.ptr(0), t.gen(0), other=True, moves=0)       # to the other device
        t.migrate(t.ptr(0), t.gen(2), 1)                         # 2: generation 0
        t.migrate(t.ptr(0), t.gen(5, 1), 1)                      # 5: never issued
        t.migrate(t.ptr(0), t.gen(0), 4)                         # 2: device 2
        t.d2d(t.ptr(1), CS_U16, 2000, dst=t.ptr(0))              # between the devices
        t.verify(0).verify(1)
        if i == 3:
            t.free_shared()
        t.d2d_shared(0, 0, 100, 1000)
        t.migrate(t.ptr(1), t.gen(0), other=True, moves=1)       # back
        t.free_ex(t.ptr(0), 0, frees=0)
        ts.append(t)
    seeds["09_d2d_migrate"] = (threads_input(2048, 3, ts),
                               "d2d and migrate between both devices, d2d from S while it is freed")

    ts = []
    for i in range(4):
        t = Thread()
        t.pool(0, i % 2, 2)                                      # 4 MiB on device 0 or 1
        t.set_device(i % 2)
        t.batch([(6, 999), (6, 2999), (6, 99)], tag=i, f=12, made=3)
        t.batch([(6, 999), (6, 999), (2, 0)], f=12, undone=2)    # 1: the third does not fit
        t.batch([(6, 999), (0, 0)])                              # 2: zero size
        t.batch([(6, 999)], tag=65)                              # 2: invalid tag
        t.batch([(6, 1)], f=0).batch([(6, 1)], f=1).batch([(6, 1)], f=2).batch([(6, 1)], f=3)
        t.alloc_wipe(t.ptr(0), t.gen(0), 1)                      # 0: wiped when freed
        t.alloc_wipe(t.ptr(1), t.gen(0), 2)                      # 2: no such policy
        t.alloc_wipe(t.ptr(1), t.gen(4, 0), 1)                   # 5: another's generation
        t.free_ex(t.ptr(0), 0, frees=0)                          # cached (wiped)
        t.malloc(1000)                                           # maybe the same block
        t.pool(2, 0, 0).pool(2, 2, 0).pool(2, 4, 0)
        t.pool(1, 2, 1).pool(1, 3, 0).pool(1, i % 2, 3)
        t.free(t.ptr(0), frees=0)
        t.pool(0, 2, 0).pool(0, 3, 1)                            # 2: devices -1 and 2
        t.pool(0, i % 2, 1)                                      # lower: a trim
        ts.append(t)
    seeds["10_batch_pool"] = (threads_input(4096, 6, ts),
                              "batches made, undone and refused; pools on both devices; wiped blocks")

    ts = []
    for i in range(4):
        t = Thread()
        t.malloc(5000 + i, ex=True, tag=i)
        t.host(0, arg=3000 + 100 * i)                            # a pinned block
        t.host(3, arg=999)                                       # a registered buffer
        t.host(7, copy=(0, 0, 0, 0, 0, 2999, False))             # h2d from the block
        t.host(8, copy=(1, 1, 0, 100, 0, 899, False))            # async d2h into the buffer
        t.host(7, copy=(1, 0, 0, 4000, 0, 2999, True))           # 6: past the allocation
        t.host(4, arg=2).host(4, arg=3)                          # 2: overlaps
        t.host(1, arg=2)                                         # 7: inside the block
        t.host(1, arg=3)                                         # 5: nobody's
        t.host(5, arg=1)                                         # 7: inside the registration
        t.host(6).host(2, arg=i % 4)                             # stats; trims racing frees
        t.host(1, arg=0)                                         # freed into the cache
        t.host(0, arg=3000).host(0, arg=0)                       # maybe another's; 2: zero
        t.copy_async(True, t.ptr(0), CS_REMAINING, k=3)
        t.d2d_async(t.ptr(0), CS_U16, 1000, within=2000)
        t.malloc_async(700, tag=9)
        t.d2d_async(t.ptr(0), CS_U16, 700, dst=t.ptr(1), k=2)
        t.free_async(t.ptr(1), 0, frees=1)
        t.free_async(t.ptr(0), 2)                                # 2: generation 0
        t.host(5, arg=0)                                         # unregistered
        t.host(2, arg=0)
        ts.append(t)
    seeds["11_host_async"] = (threads_input(512, 4, ts),
                              "pinned blocks and registrations racing trims; the async twins")
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
