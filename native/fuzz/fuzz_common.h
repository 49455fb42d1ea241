/* Shared pieces of the libFuzzer targets: a byte reader, the model of one owner's live
 * allocations (on either of the FUZZ_DEVICES emulated devices) with a shadow of their content,
 * and the prediction of a copy's outcome.
 *
 * The model is written from the header's contract and the order of checks in vram_ops.c /
 * registry.c, independently of the library's code (no addrmap, no registry internals). A
 * mismatch aborts with a message, which libFuzzer reports as a crash with the input. */
#ifndef VRAMOBS_FUZZ_COMMON_H
#define VRAMOBS_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vram_ops.h"

/* Emulated devices and their capacity (each) on the host backend: big requests fail with 1
 * deterministically. */
#define FUZZ_DEVICES 2
#define FUZZ_DEVICES_TEXT "2"
#define FUZZ_CAPACITY ((size_t)64 << 20)
#define FUZZ_CAPACITY_TEXT "67108864"
#define KERNEL_HALF ((uintptr_t)1 << 63) /* never a user-space address on x86-64/arm64 */
/* Content of an allocation is shadowed over its first FUZZ_SHADOW_MAX bytes. */
#define FUZZ_SHADOW_MAX ((size_t)64 << 10)
/* Successful copies are at most this long (a longer one is shortened, keeping its end). */
#define FUZZ_COPY_MAX ((size_t)256 << 10)
/* A refused copy gets a real host buffer of at most this many bytes: if the library wrongly
 * copied the whole length, ASan reports the overflow. */
#define FUZZ_REFUSED_HOST_MAX ((size_t)4096)

/* For the checking loops (byte by byte over shadows, counters): no coverage feedback, which
 * would only slow them down and steer nothing. Never inlined: inlined into an instrumented
 * caller, the loop would be instrumented after all. */
#if defined(__clang__) && __clang_major__ >= 13
#define FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage"), noinline))
#else
#define FUZZ_NO_COVERAGE __attribute__((noinline))
#endif

/* Only the first thread to fail reports and aborts; any other parks, so that libFuzzer's
 * crash handler runs once and saves the input. */
static inline void fuzz_fail_once(void) {
    static int failing;
    if (__atomic_exchange_n(&failing, 1, __ATOMIC_SEQ_CST))
        for (;;) pause();
}

#define FUZZ_FAIL(...)                                                                     \
    do {                                                                                   \
        fuzz_fail_once();                                                                  \
        fprintf(stderr, "\nvramobs fuzz: MODEL MISMATCH at %s:%d: ", __FILE__, __LINE__); \
        fprintf(stderr, __VA_ARGS__);                                                      \
        fputc('\n', stderr);                                                               \
        abort();                                                                           \
    } while (0)
#define FUZZ_CHECK(cond, ...) \
    do {                      \
        if (!(cond)) FUZZ_FAIL(__VA_ARGS__); \
    } while (0)

/* ---------------------------------------------------------------------------------------
 * Byte reader: little-endian integers; an exhausted input reads as zeros.
 * ------------------------------------------------------------------------------------- */
typedef struct fuzz_reader {
    const uint8_t *p;
    size_t n;
} fuzz_reader;

static inline bool fr_empty(const fuzz_reader *r) { return r->n == 0; }

static inline uint8_t fr_u8(fuzz_reader *r) {
    if (!r->n) return 0;
    r->n--;
    return *r->p++;
}

static inline uint16_t fr_u16(fuzz_reader *r) {
    uint16_t v = fr_u8(r);
    return (uint16_t)(v | (uint16_t)fr_u8(r) << 8);
}

static inline uint32_t fr_u32(fuzz_reader *r) {
    uint32_t v = fr_u16(r);
    return v | (uint32_t)fr_u16(r) << 16;
}

static inline uint64_t fr_u64(fuzz_reader *r) {
    uint64_t v = fr_u32(r);
    return v | (uint64_t)fr_u32(r) << 32;
}

/* xorshift64*: fills host buffers from a seed taken from the input. */
static inline uint64_t fuzz_rng(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(2685821657736338717);
}

FUZZ_NO_COVERAGE static inline void fuzz_fill(uint8_t *buf, size_t n, uint64_t seed) {
    uint64_t s = seed | 1;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = fuzz_rng(&s);
        memcpy(buf + i, &v, 8);
    }
    for (; i < n; i++) buf[i] = (uint8_t)fuzz_rng(&s);
}

static inline size_t fuzz_rounded(size_t bytes) { /* bytes <= SIZE_MAX - 255 */
    return (bytes + (VRAM_ALIGNMENT - 1)) & ~(size_t)(VRAM_ALIGNMENT - 1);
}

static inline bool fuzz_wraps(uintptr_t a, size_t n) { return a + n < a; }

/* ---------------------------------------------------------------------------------------
 * The model of one owner's allocations.
 * ------------------------------------------------------------------------------------- */
typedef struct m_alloc {
    uintptr_t base;
    size_t size;
    uint64_t gen;
    uint32_t tag;
    int device;
    bool wipe;          /* VRAM_WIPE_ON_FREE */
    size_t block;       /* the device pool's block holding it (its class size), 0 if none */
    size_t shadow_len;  /* min(size, FUZZ_SHADOW_MAX) */
    uint8_t *shadow;    /* expected content of [base, base + shadow_len) */
    uint8_t *known;     /* 1 where shadow[i] is known (written or read back) */
} m_alloc;

typedef struct m_freed {
    uintptr_t base;
    size_t size;
    uint64_t gen;
} m_freed;

#define M_MAX_LIVE 64
#define M_MAX_FREED 64

typedef struct model {
    m_alloc live[M_MAX_LIVE]; /* in allocation order, oldest first */
    int n_live;
    m_freed freed[M_MAX_FREED]; /* ring of this input's recent frees */
    int n_freed, freed_next;
    uint64_t live_bytes;
    uint64_t live_rounded;
    uint64_t tag_count[VRAM_MAX_TAGS];
    uint64_t tag_bytes[VRAM_MAX_TAGS];
    uint64_t dev_count[FUZZ_DEVICES], dev_bytes[FUZZ_DEVICES], dev_rounded[FUZZ_DEVICES];
} model;

static inline void model_init(model *m) { memset(m, 0, sizeof *m); }

/* The live allocation holding address a, or -1 (allocations never overlap). */
static inline int model_find(const model *m, uintptr_t a) {
    for (int i = 0; i < m->n_live; i++)
        if (a - m->live[i].base < m->live[i].size) return i;
    return -1;
}

static inline int model_find_base(const model *m, uintptr_t a) {
    for (int i = 0; i < m->n_live; i++)
        if (m->live[i].base == a) return i;
    return -1;
}

static inline int model_find_gen(const model *m, uint64_t g) {
    for (int i = 0; i < m->n_live; i++)
        if (m->live[i].gen == g) return i;
    return -1;
}

/* Record a fresh allocation; checks it is sane and overlaps nothing live in this model. */
static inline m_alloc *model_add(model *m, uintptr_t base, size_t size, uint64_t gen,
                                 uint32_t tag, int device) {
    FUZZ_CHECK(base != 0 && base % VRAM_ALIGNMENT == 0,
               "allocation of %zu bytes at %#lx: not %u-aligned", size, (unsigned long)base,
               VRAM_ALIGNMENT);
    size_t need = fuzz_rounded(size);
    for (int i = 0; i < m->n_live; i++) {
        const m_alloc *o = &m->live[i];
        FUZZ_CHECK(base + need <= o->base || o->base + fuzz_rounded(o->size) <= base,
                   "allocation [%#lx, +%zu) overlaps live [%#lx, +%zu)", (unsigned long)base,
                   size, (unsigned long)o->base, o->size);
    }
    FUZZ_CHECK(m->n_live < M_MAX_LIVE, "model full");
    m_alloc *a = &m->live[m->n_live++];
    a->base = base;
    a->size = size;
    a->gen = gen;
    a->tag = tag;
    a->device = device;
    a->wipe = false;
    a->block = 0;
    a->shadow_len = size < FUZZ_SHADOW_MAX ? size : FUZZ_SHADOW_MAX;
    a->shadow = malloc(a->shadow_len);
    a->known = calloc(a->shadow_len, 1);
    FUZZ_CHECK(a->shadow && a->known, "out of host memory for the shadow");
    m->live_bytes += size;
    m->live_rounded += need;
    m->tag_count[tag]++;
    m->tag_bytes[tag] += size;
    m->dev_count[device]++;
    m->dev_bytes[device] += size;
    m->dev_rounded[device] += need;
    return a;
}

static inline void model_remove(model *m, int i) {
    m_alloc *a = &m->live[i];
    m->live_bytes -= a->size;
    m->live_rounded -= fuzz_rounded(a->size);
    m->tag_count[a->tag]--;
    m->tag_bytes[a->tag] -= a->size;
    m->dev_count[a->device]--;
    m->dev_bytes[a->device] -= a->size;
    m->dev_rounded[a->device] -= fuzz_rounded(a->size);
    m_freed *f = &m->freed[m->freed_next];
    m->freed_next = (m->freed_next + 1) % M_MAX_FREED;
    if (m->n_freed < M_MAX_FREED) m->n_freed++;
    f->base = a->base;
    f->size = a->size;
    f->gen = a->gen;
    free(a->shadow);
    free(a->known);
    memmove(&m->live[i], &m->live[i + 1], (size_t)(m->n_live - i - 1) * sizeof *a);
    m->n_live--;
}

/* Forget everything at the end of an input (the caller freed it in the library). */
static inline void model_clear(model *m) {
    while (m->n_live) model_remove(m, m->n_live - 1);
    m->n_freed = m->freed_next = 0;
}

/* Host bytes read back from [a->base + off, + n): compare with what is known, learn the
 * rest. Returns the first mismatching offset into the allocation, or SIZE_MAX. */
FUZZ_NO_COVERAGE static inline size_t shadow_read(m_alloc *a, size_t off, const uint8_t *host, size_t n) {
    size_t end = off + n < a->shadow_len ? off + n : a->shadow_len;
    for (size_t i = off; i < end; i++) {
        if (a->known[i]) {
            if (a->shadow[i] != host[i - off]) return i;
        } else {
            a->shadow[i] = host[i - off];
            a->known[i] = 1;
        }
    }
    return SIZE_MAX;
}

FUZZ_NO_COVERAGE static inline void shadow_write(m_alloc *a, size_t off, const uint8_t *host, size_t n) {
    size_t end = off + n < a->shadow_len ? off + n : a->shadow_len;
    for (size_t i = off; i < end; i++) {
        a->shadow[i] = host[i - off];
        a->known[i] = 1;
    }
}

/* A device-to-device copy of n bytes from src + soff to dst + doff (distinct ranges): the
 * destination's window takes what is known of the source's, the rest becomes unknown. */
FUZZ_NO_COVERAGE static inline void shadow_copy(m_alloc *dst, size_t doff, const m_alloc *src,
                                                size_t soff, size_t n) {
    size_t end = doff + n < dst->shadow_len ? doff + n : dst->shadow_len;
    for (size_t i = doff; i < end; i++) {
        size_t j = soff + (i - doff);
        bool known = j < src->shadow_len && src->known[j];
        dst->shadow[i] = known ? src->shadow[j] : 0;
        dst->known[i] = known;
    }
}

/* The host backend's device memory is host RAM: check the known bytes in place, without
 * going through the library (used after refused writes). Returns a mismatching offset or
 * SIZE_MAX. */
FUZZ_NO_COVERAGE static inline size_t shadow_check_in_place(const m_alloc *a) {
    const uint8_t *mem = (const uint8_t *)a->base;
    for (size_t i = 0; i < a->shadow_len; i++)
        if (a->known[i] && mem[i] != a->shadow[i]) return i;
    return SIZE_MAX;
}

/* ---------------------------------------------------------------------------------------
 * Copies: the outcome, in the order of checks of vram_ops.c copy().
 * ------------------------------------------------------------------------------------- */
typedef struct copy_pred {
    int status;
    int reason;
    int idx;    /* live allocation holding the device address, or -1 */
    size_t off; /* offset of the device address in it */
} copy_pred;

/* is_tomb: whether the library remembers the device address as freed (only changes the
 * reason of a 5: freed_pointer instead of unknown_pointer). */
static inline copy_pred predict_copy(const model *m, uintptr_t dev, uintptr_t host, size_t n,
                                     bool dev_is_tomb) {
    copy_pred p = {0, VRAM_REASON_NONE, -1, 0};
    p.idx = model_find(m, dev);
    if (p.idx >= 0) p.off = dev - m->live[p.idx].base;
    if (!dev || !host) {
        p.status = VRAM_ERR_INVALID_PARAMETERS;
        p.reason = VRAM_REASON_NULL_POINTER;
    } else if (n == 0) {
        p.status = VRAM_ERR_INVALID_PARAMETERS;
        p.reason = VRAM_REASON_ZERO_SIZE;
    } else if (fuzz_wraps(dev, n) || fuzz_wraps(host, n)) {
        p.status = VRAM_ERR_INVALID_PARAMETERS;
        p.reason = VRAM_REASON_RANGE_WRAP;
    } else if (p.idx < 0) {
        p.status = VRAM_ERR_UNKNOWN_POINTER;
        p.reason = dev_is_tomb ? VRAM_REASON_FREED_POINTER : VRAM_REASON_UNKNOWN_POINTER;
    } else if (n > m->live[p.idx].size - p.off) {
        p.status = VRAM_ERR_OUT_OF_BOUNDS;
        p.reason = VRAM_REASON_OUT_OF_BOUNDS;
    }
    return p;
}

/* Whether the device side alone would let a copy of n bytes through. */
static inline bool device_side_ok(const model *m, uintptr_t dev, size_t n) {
    if (!dev || !n || fuzz_wraps(dev, n)) return false;
    int i = model_find(m, dev);
    return i >= 0 && n <= m->live[i].size - (dev - m->live[i].base);
}

/* ---------------------------------------------------------------------------------------
 * Choices of sizes and addresses from the input.
 * ------------------------------------------------------------------------------------- */

/* An allocation size over the whole range; remaining = capacity not yet used. */
static inline size_t pick_alloc_size(fuzz_reader *r, size_t remaining) {
    size_t a, b;
    switch (fr_u8(r) % 16) {
    case 0: return 0;
    case 1: return 1;
    case 2: return (size_t)fr_u8(r) + 1;                   /* 1..256 */
    case 3: return (size_t)fr_u16(r) + 1;                  /* up to 64 KiB */
    case 4: return (size_t)(fr_u32(r) % (1u << 20)) + 1;   /* up to 1 MiB */
    case 5:                                                /* around multiples of 256 */
        a = fr_u8(r);
        b = fr_u8(r) % 3;
        return 256 * (a + 1) + b - 1;
    case 6: return remaining ? remaining : 1;              /* exactly what is left */
    case 7: return remaining + 1;                          /* one byte too many */
    case 8: return SIZE_MAX;
    case 9: return SIZE_MAX - 255;                         /* largest that rounds */
    case 10: return SIZE_MAX - 254;                        /* smallest that overflows */
    case 11: return (size_t)fr_u64(r);
    case 12: return FUZZ_CAPACITY + (fr_u8(r) % 3) - 1;
    case 13: return (size_t)1 << (fr_u8(r) % 64);
    case 14:                                               /* around powers of two */
        a = (size_t)1 << (fr_u8(r) % 64);
        b = fr_u8(r) % 3;
        return a + b - 1;
    default: return (size_t)(fr_u16(r) % 4096) + 1;
    }
}

/* Offset of a device pointer relative to a live allocation of size `size`. */
static inline uintptr_t pick_offset(fuzz_reader *r, size_t size) {
    switch (fr_u8(r) % 10) {
    case 0: case 1: return 0;
    case 2: return size > 1 ? 1 + fr_u32(r) % (size - 1) : 0; /* interior */
    case 3: return size - 1;                                   /* last byte */
    case 4: return size;                                       /* exactly at the end */
    case 5: return size + 1 + fr_u8(r);                        /* past the end */
    case 6: return fuzz_rounded(size);                         /* end of the padding */
    case 7: return (uintptr_t)fr_u64(r);                       /* anywhere, may wrap */
    case 8: return (uintptr_t)0 - 1 - fr_u8(r);                /* just before the base */
    default: return size > 0 ? fr_u16(r) % size : 0;
    }
}

/* A copy length, relative to the bytes left after the device pointer (0 if unknown). */
static inline size_t pick_copy_size(fuzz_reader *r, size_t remaining, size_t padding_left) {
    switch (fr_u8(r) % 14) {
    case 0: return 0;
    case 1: return 1;
    case 2: return (size_t)fr_u8(r) + 1;
    case 3: case 4: return remaining ? remaining : 1;  /* exactly to the end */
    case 5: return remaining + 1;                      /* one past the end */
    case 6: return SIZE_MAX;
    case 7: return SIZE_MAX - 255;
    case 8: return SIZE_MAX - 254;
    case 9: return (size_t)fr_u64(r);
    case 10: return (size_t)fr_u16(r) + 1;
    case 11: return remaining > 1 ? 1 + fr_u16(r) % remaining : 1; /* inside */
    case 12: return padding_left ? padding_left : 2;   /* into the rounding padding */
    default: return (size_t)0 - (uintptr_t)fr_u16(r); /* near SIZE_MAX */
    }
}

/* A host pointer that is not a buffer: 0 NULL, 1 near UINTPTR_MAX, 2 random. */
static inline uintptr_t pick_bogus_host(fuzz_reader *r, unsigned kind) {
    switch (kind) {
    case 0: return 0;
    case 1: return UINTPTR_MAX - fr_u8(r);
    default: return (uintptr_t)fr_u64(r);
    }
}

/* A copy under way: prepared (shortened if needed, host buffer chosen), then finished
 * (content checked against the model, buffer freed) once the caller has checked the code. */
typedef struct copy_call {
    bool h2d;
    uintptr_t dev, host;
    size_t n;
    int holder;  /* live allocation that held the device address as picked, or -1 */
    uint8_t *buf; /* the fuzzer's host buffer, or NULL for a bogus host pointer */
    size_t len;  /* its length */
    copy_pred pred;
} copy_call;

/* host_kind % 8 < 5: a real buffer; else NULL, near UINTPTR_MAX or random, unless the model
 * predicts success, in which case a real buffer of exactly n bytes is used. Sources of h2d
 * are filled from seed; destinations of d2h with 0x5a. */
static inline copy_call copy_prepare(const model *m, bool h2d, uintptr_t dev, size_t n,
                                     uint8_t host_kind, uint64_t seed, fuzz_reader *r,
                                     bool (*is_tomb)(uintptr_t)) {
    copy_call c = {h2d, dev, 0, n, model_find(m, dev), NULL, 0, {0, 0, -1, 0}};
    /* A copy that succeeds is at most FUZZ_COPY_MAX long: shorten it, keeping its end. */
    if (device_side_ok(m, c.dev, c.n) && c.n > FUZZ_COPY_MAX) {
        c.dev += c.n - FUZZ_COPY_MAX;
        c.n = FUZZ_COPY_MAX;
    }
    bool tomb = is_tomb ? is_tomb(c.dev) : false;
    bool real = host_kind % 8 < 5;
    if (!real) c.host = pick_bogus_host(r, host_kind % 8 - 5u); /* 5 NULL, 6 near max, 7 random */
    /* Placeholder 1 for a real buffer: it wraps for fewer lengths than a heap address. */
    c.pred = predict_copy(m, c.dev, real ? 1 : c.host, c.n, tomb);
    if (c.pred.status == VRAM_SUCCESS) real = true; /* never a bogus buffer to a real copy */
    if (!real) return c;
    c.len = c.pred.status == VRAM_SUCCESS ? c.n
            : c.n < FUZZ_REFUSED_HOST_MAX ? (c.n ? c.n : 1)
                                          : FUZZ_REFUSED_HOST_MAX;
    c.buf = malloc(c.len);
    FUZZ_CHECK(c.buf, "out of host memory");
    c.host = (uintptr_t)c.buf;
    if (h2d)
        fuzz_fill(c.buf, c.len, seed);
    else
        memset(c.buf, 0x5a, c.len);
    c.pred = predict_copy(m, c.dev, c.host, c.n, tomb); /* with the real address */
    return c;
}

static inline int copy_run(const copy_call *c) {
    return c->h2d ? vram_memcpy_h2d((void *)c->dev, (const void *)c->host, c->n)
                  : vram_memcpy_d2h((void *)c->host, (const void *)c->dev, c->n);
}

/* After the code matched c->pred.status: content checks. Returns the bytes compared. */
FUZZ_NO_COVERAGE static inline size_t copy_finish(model *m, copy_call *c) {
    size_t compared = 0;
    if (c->pred.status == VRAM_SUCCESS) {
        m_alloc *a = &m->live[c->pred.idx];
        if (c->h2d) {
            shadow_write(a, c->pred.off, c->buf, c->n);
            size_t bad = shadow_check_in_place(a);
            FUZZ_CHECK(bad == SIZE_MAX, "h2d of %zu bytes at offset %zu: device byte %zu is not "
                       "what the model wrote", c->n, c->pred.off, bad);
        } else {
            size_t bad = shadow_read(a, c->pred.off, c->buf, c->n);
            FUZZ_CHECK(bad == SIZE_MAX, "d2h of %zu bytes at offset %zu: byte %zu of the "
                       "allocation differs from what was written", c->n, c->pred.off, bad);
            compared = c->n;
        }
    } else {
        if (c->buf && !c->h2d)
            for (size_t i = 0; i < c->len; i++)
                FUZZ_CHECK(c->buf[i] == 0x5a, "refused d2h (expected %d) wrote host byte %zu",
                           c->pred.status, i);
        if (c->holder >= 0) {
            size_t bad = shadow_check_in_place(&m->live[c->holder]);
            FUZZ_CHECK(bad == SIZE_MAX, "refused %s (expected %d) changed device byte %zu",
                       c->h2d ? "h2d" : "d2h", c->pred.status, bad);
        }
    }
    free(c->buf);
    c->buf = NULL;
    return compared;
}

/* Select the emulated host backend with the fuzzers' devices and capacity, before any other
 * library call (the host backend reads its settings once), and check that it took. Copies
 * between the devices go peer to peer ("1") or through host memory ("0") as
 * VRAMOBS_HOST_PEER says: the target's default peer unless the environment sets it. Returns
 * whether they go peer to peer. */
static bool fuzz_select_host_backend(const char *peer) {
    setenv("VRAMOBS_BACKEND", "host", 1);
    setenv("VRAMOBS_HOST_DEVICES", FUZZ_DEVICES_TEXT, 1);
    setenv("VRAMOBS_HOST_CAPACITY", FUZZ_CAPACITY_TEXT, 1);
    setenv("VRAMOBS_HOST_PEER", peer, 0);
    bool p2p = strtoul(getenv("VRAMOBS_HOST_PEER"), NULL, 10) == 1;
    FUZZ_CHECK(vram_select_backend("host") == VRAM_SUCCESS, "cannot select the host backend");
    FUZZ_CHECK(strcmp(vram_backend_name(), "host") == 0, "backend %s", vram_backend_name());
    size_t f = 0, t = 0;
    FUZZ_CHECK(vram_get_info(&f, &t) == VRAM_SUCCESS && t == FUZZ_CAPACITY,
               "host backend capacity %zu, expected %zu", t, FUZZ_CAPACITY);
    int count = 0, path = -1;
    FUZZ_CHECK(vram_device_count(&count) == VRAM_SUCCESS && count == FUZZ_DEVICES,
               "host backend devices %d, expected %d", count, FUZZ_DEVICES);
    FUZZ_CHECK(vram_copy_path_get(0, 1, &path) == VRAM_SUCCESS &&
                   path == (p2p ? VRAM_PATH_PEER : VRAM_PATH_STAGED),
               "copy path 0 -> 1 is %d with VRAMOBS_HOST_PEER=%s", path, getenv("VRAMOBS_HOST_PEER"));
    return p2p;
}

#endif /* VRAMOBS_FUZZ_COMMON_H */
