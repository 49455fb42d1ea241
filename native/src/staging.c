/* Staging: copies between device memory and pageable host memory through page-locked buffers.
 *
 * Each device has one engine per direction: worker threads (bound to the device's NUMA node,
 * its primary context current), each with its own stream and a few pinned buffers. A copy is
 * cut into chunks that the workers take in turn; a worker moves a chunk between the caller's
 * memory and one of its buffers while the copy engine moves the chunks before it. The copy is
 * done when every worker has synchronised its stream, so nothing touches the caller's memory
 * or the device range after it returns. Copies in one direction on one device take turns on
 * its engine (each uses every thread; the driver's pageable path is several times slower than
 * waiting for a turn). Engines are made on their first copy and kept. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_driver.h"
#include "hostmem.h"
#include "internal.h"

/* Defaults from `vramobs bench --staging-sweep` on an H100 host (32 CPUs): 256 MiB pageable
 * copies ran at 23-26 GB/s with 4 threads, 35-43 with 8, 43-44 both ways with 16 threads of
 * 2 MiB chunks (4 and 8 MiB chunks were slower). Half the CPUs, 4 to 16, per direction. */
#define DEFAULT_CHUNK ((uint64_t)2 << 20)
#define DEFAULT_MIN ((uint64_t)1 << 20)
#define DEFAULT_BUFFERS 2u
#define MAX_THREADS 64u
#define MAX_BUFFERS 16u
#define MIN_CHUNK ((uint64_t)4096)
#define MAX_CHUNK ((uint64_t)1 << 30)
/* A copy is cut so that every buffer of every thread carries a chunk, down to this size:
 * smaller DMA chunks cost more in driver calls than they gain in overlap (cutting 64 MiB
 * copies four times finer made them 20% slower on the H100, and so did small first chunks
 * with chunks shrinking towards the end, guided-scheduling style: 0.57 x pinned at 64 MiB
 * against 0.72). */
#define MIN_JOB_CHUNK ((size_t)256 << 10)
#define JOB_ALIGN ((size_t)64 << 10)

typedef struct engine engine;

typedef struct worker {
    engine *engine;
    pthread_t thread;
    bool started;
    int setup_error;
    CUstream stream;
    void *buffer[MAX_BUFFERS];
    CUevent event[MAX_BUFFERS];
    size_t dirty[MAX_BUFFERS]; /* bytes of a sensitive copy a buffer holds, to clear */
} worker;

struct engine {
    pthread_mutex_t turn; /* held by the copy using the engine, and while it is rebuilt */
    pthread_mutex_t lock; /* guards what follows; the workers wait on wake, the copy on done */
    pthread_cond_t wake;
    pthread_cond_t done;
    int device;
    vram_stage_direction direction;
    bool built, stop;
    uint64_t generation; /* of the configuration it was built with */
    worker *workers;
    uint32_t count, buffers;
    size_t buffer_bytes;
    uint64_t job;     /* sequence number of the current copy */
    uint32_t running; /* workers still setting up or busy with the current copy */
    /* The current copy. */
    uintptr_t device_address;
    char *host;
    size_t bytes, chunk, chunks;
    bool sensitive;
    size_t next;      /* atomic: the next chunk to take */
    int error;        /* atomic: the first driver error */
};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static engine g_engines[VRAM_MAX_DEVICES][2];
static pthread_mutex_t g_config_lock = PTHREAD_MUTEX_INITIALIZER;
static vram_staging_config g_config; /* under g_config_lock */
static uint64_t g_generation;        /* under g_config_lock: bumped when engines must change */
static uint32_t g_threads;           /* atomic mirrors for the check on every copy */
static uint64_t g_min_bytes;
static uint64_t g_staging_bytes, g_staged_copies, g_cleared_bytes; /* atomic */

static bool config_valid(const vram_staging_config *c) {
    return c->struct_size == sizeof *c && c->threads <= MAX_THREADS &&
           c->chunk_bytes >= MIN_CHUNK && c->chunk_bytes <= MAX_CHUNK && c->buffers >= 1 &&
           c->buffers <= MAX_BUFFERS && c->reserved_ == 0;
}

/* An unsigned decimal environment variable; false if set but malformed. */
static bool env_u64(const char *name, uint64_t *value) {
    const char *text = getenv(name);
    if (!text || !*text) return true;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end || text[0] == '-' || text[0] == '+') return false;
    *value = v;
    return true;
}

static void teardown(engine *e);

static void release_all(void) {
    for (int d = 0; d < VRAM_MAX_DEVICES; d++) {
        for (int dir = 0; dir < 2; dir++) {
            engine *e = &g_engines[d][dir];
            pthread_mutex_lock(&e->turn);
            if (e->built) teardown(e);
            pthread_mutex_unlock(&e->turn);
        }
    }
}

static void setup(void) {
    for (int d = 0; d < VRAM_MAX_DEVICES; d++) {
        for (int dir = 0; dir < 2; dir++) {
            engine *e = &g_engines[d][dir];
            pthread_mutex_init(&e->turn, NULL);
            pthread_mutex_init(&e->lock, NULL);
            pthread_cond_init(&e->wake, NULL);
            pthread_cond_init(&e->done, NULL);
            e->device = d;
            e->direction = (vram_stage_direction)dir;
        }
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t threads = cpus >= 32 ? 16u : cpus >= 8 ? (uint64_t)cpus / 2 : 4u;
    uint64_t chunk = DEFAULT_CHUNK, min = DEFAULT_MIN,
             buffers = DEFAULT_BUFFERS;
    bool ok = env_u64("VRAMOBS_STAGING_THREADS", &threads) &&
              env_u64("VRAMOBS_STAGING_CHUNK_BYTES", &chunk) &&
              env_u64("VRAMOBS_STAGING_MIN_BYTES", &min) &&
              env_u64("VRAMOBS_STAGING_BUFFERS", &buffers) && threads <= MAX_THREADS &&
              buffers <= MAX_BUFFERS;
    vram_staging_config c = {(uint32_t)sizeof c, (uint32_t)threads, chunk, min, (uint32_t)buffers,
                             0};
    if (!ok || !config_valid(&c)) { /* a bad setting turns staging off, visibly */
        c = (vram_staging_config){(uint32_t)sizeof c, 0, DEFAULT_CHUNK, DEFAULT_MIN,
                                  DEFAULT_BUFFERS, 0};
    }
    g_config = c;
    __atomic_store_n(&g_threads, c.threads, __ATOMIC_RELAXED);
    __atomic_store_n(&g_min_bytes, c.min_bytes, __ATOMIC_RELAXED);
    /* Staging buffers go back to the driver at exit (before its own teardown: it was loaded
     * first), so leak checkers see nothing left behind. */
    atexit(release_all);
}

bool vram_staging_applies(const void *host, size_t bytes) {
    pthread_once(&g_once, setup);
    return __atomic_load_n(&g_threads, __ATOMIC_RELAXED) != 0 &&
           bytes >= __atomic_load_n(&g_min_bytes, __ATOMIC_RELAXED) &&
           !vram_pinned_contains(host, bytes);
}

static void record_error(engine *e, int error) {
    int none = 0;
    __atomic_compare_exchange_n(&e->error, &none, error, false, __ATOMIC_RELAXED,
                                __ATOMIC_RELAXED);
}

static bool failed(engine *e) { return __atomic_load_n(&e->error, __ATOMIC_RELAXED) != 0; }

/* The next chunk of the current copy: false when none is left. */
static bool take(engine *e, size_t *offset, size_t *len) {
    size_t i = __atomic_fetch_add(&e->next, 1, __ATOMIC_RELAXED);
    if (i >= e->chunks) return false;
    *offset = i * e->chunk;
    *len = e->bytes - *offset < e->chunk ? e->bytes - *offset : e->chunk;
    return true;
}

static void mark(engine *e, worker *w, unsigned slot, size_t len) {
    if (e->sensitive && w->dirty[slot] < len) w->dirty[slot] = len;
}

/* Host to device: fill a buffer once its last DMA is done, queue its DMA, go on. */
static void run_h2d(engine *e, worker *w) {
    unsigned slot = 0;
    size_t offset, len;
    while (!failed(e) && take(e, &offset, &len)) {
        CUresult r = vram_cu.event_synchronize(w->event[slot]);
        if (r == CUDA_SUCCESS) {
            mark(e, w, slot, len);
            memcpy(w->buffer[slot], e->host + offset, len);
            r = vram_cu.memcpy_htod_async((CUdeviceptr)(e->device_address + offset),
                                          w->buffer[slot], len, w->stream);
        }
        if (r == CUDA_SUCCESS) r = vram_cu.event_record(w->event[slot], w->stream);
        if (r != CUDA_SUCCESS) {
            record_error(e, (int)r);
            return;
        }
        slot = (slot + 1) % e->buffers;
    }
}

/* Device to host: keep every buffer's DMA queued; copy out the oldest when it lands. */
static void run_d2h(engine *e, worker *w) {
    size_t offset[MAX_BUFFERS], len[MAX_BUFFERS];
    unsigned head = 0, queued = 0;
    bool more = true;
    for (;;) {
        while (more && queued < e->buffers && !failed(e)) {
            unsigned slot = (head + queued) % e->buffers;
            more = take(e, &offset[slot], &len[slot]);
            if (!more) break;
            mark(e, w, slot, len[slot]);
            CUresult r = vram_cu.memcpy_dtoh_async(
                w->buffer[slot], (CUdeviceptr)(e->device_address + offset[slot]), len[slot],
                w->stream);
            if (r == CUDA_SUCCESS) r = vram_cu.event_record(w->event[slot], w->stream);
            if (r != CUDA_SUCCESS) {
                record_error(e, (int)r);
                return;
            }
            queued++;
        }
        if (queued == 0 || failed(e)) return;
        CUresult r = vram_cu.event_synchronize(w->event[head]);
        if (r != CUDA_SUCCESS) {
            record_error(e, (int)r);
            return;
        }
        memcpy(e->host + offset[head], w->buffer[head], len[head]);
        head = (head + 1) % e->buffers;
        queued--;
    }
}

/* One worker's part of a copy: its chunks, then its stream drained and, for a sensitive
 * copy, its buffers cleared. */
static void run(engine *e, worker *w) {
    if (e->direction == VRAM_STAGE_H2D)
        run_h2d(e, w);
    else
        run_d2h(e, w);
    CUresult r = vram_cu.stream_synchronize(w->stream); /* no DMA of this copy in flight */
    if (r != CUDA_SUCCESS) record_error(e, (int)r);
    uint64_t cleared = 0;
    for (unsigned i = 0; i < e->buffers; i++) {
        if (!w->dirty[i]) continue;
        explicit_bzero(w->buffer[i], w->dirty[i]);
        cleared += w->dirty[i];
        w->dirty[i] = 0;
    }
    if (cleared) __atomic_fetch_add(&g_cleared_bytes, cleared, __ATOMIC_RELAXED);
}

static CUresult worker_setup(engine *e, worker *w) {
    vram_numa_bind(e->device, NULL); /* first: the pages below are placed where it runs */
    CUcontext ctx;
    CUresult r = vram_cuda_primary_context(e->device, &ctx);
    if (r == CUDA_SUCCESS) r = vram_cu.ctx_set_current(ctx);
    if (r == CUDA_SUCCESS) r = vram_cu.stream_create(&w->stream, CU_STREAM_NON_BLOCKING);
    for (unsigned i = 0; i < e->buffers && r == CUDA_SUCCESS; i++) {
        r = vram_cu.mem_host_alloc(&w->buffer[i], e->buffer_bytes, 0);
        if (r != CUDA_SUCCESS) {
            w->buffer[i] = NULL;
            break;
        }
        __atomic_fetch_add(&g_staging_bytes, (uint64_t)e->buffer_bytes, __ATOMIC_RELAXED);
        r = vram_cu.event_create(&w->event[i], CU_EVENT_DISABLE_TIMING);
        if (r != CUDA_SUCCESS) w->event[i] = NULL;
    }
    return r;
}

static void worker_cleanup(engine *e, worker *w) {
    for (unsigned i = 0; i < e->buffers; i++) {
        if (w->event[i]) vram_cu.event_destroy(w->event[i]);
        if (w->buffer[i]) {
            vram_cu.mem_free_host(w->buffer[i]);
            __atomic_fetch_sub(&g_staging_bytes, (uint64_t)e->buffer_bytes, __ATOMIC_RELAXED);
        }
    }
    if (w->stream) vram_cu.stream_destroy(w->stream);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    engine *e = w->engine;
    CUresult r = worker_setup(e, w);
    pthread_mutex_lock(&e->lock);
    w->setup_error = (int)r;
    uint64_t seen = e->job;
    if (--e->running == 0) pthread_cond_broadcast(&e->done);
    for (;;) {
        while (!e->stop && e->job == seen) pthread_cond_wait(&e->wake, &e->lock);
        if (e->stop) break;
        seen = e->job;
        pthread_mutex_unlock(&e->lock);
        run(e, w);
        pthread_mutex_lock(&e->lock);
        if (--e->running == 0) pthread_cond_broadcast(&e->done);
    }
    pthread_mutex_unlock(&e->lock);
    worker_cleanup(e, w);
    return NULL;
}

/* Stop and join the workers; they release their streams, events and buffers. Under turn. */
static void teardown(engine *e) {
    pthread_mutex_lock(&e->lock);
    e->stop = true;
    pthread_cond_broadcast(&e->wake);
    pthread_mutex_unlock(&e->lock);
    for (uint32_t i = 0; i < e->count; i++)
        if (e->workers[i].started) pthread_join(e->workers[i].thread, NULL);
    free(e->workers);
    e->workers = NULL;
    e->count = 0;
    e->built = false;
}

/* Start the workers and wait for their setup; all or nothing. Under turn. */
static int build(engine *e, const vram_staging_config *c, uint64_t generation) {
    e->workers = calloc(c->threads, sizeof *e->workers);
    if (!e->workers) return CUDA_ERROR_OUT_OF_MEMORY;
    e->count = c->threads;
    e->buffers = c->buffers;
    e->buffer_bytes = (size_t)c->chunk_bytes;
    e->stop = false;
    int error = 0;
    pthread_mutex_lock(&e->lock);
    e->running = 0;
    for (uint32_t i = 0; i < e->count; i++) {
        worker *w = &e->workers[i];
        w->engine = e;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            error = CUDA_ERROR_OPERATING_SYSTEM;
            break;
        }
        w->started = true;
        e->running++;
    }
    while (e->running) pthread_cond_wait(&e->done, &e->lock);
    pthread_mutex_unlock(&e->lock);
    for (uint32_t i = 0; i < e->count && !error; i++) error = e->workers[i].setup_error;
    if (error) {
        teardown(e);
        return error;
    }
    e->built = true;
    e->generation = generation;
    return 0;
}

bool vram_staging_copy(vram_stage_direction direction, int device, uintptr_t device_address,
                       void *host, size_t bytes, bool sensitive, int *error) {
    pthread_once(&g_once, setup);
    engine *e = &g_engines[device][direction];
    pthread_mutex_lock(&e->turn);
    pthread_mutex_lock(&g_config_lock);
    vram_staging_config c = g_config;
    uint64_t generation = g_generation;
    pthread_mutex_unlock(&g_config_lock);
    if (c.threads == 0) { /* turned off since the caller asked */
        pthread_mutex_unlock(&e->turn);
        return false;
    }
    *error = 0;
    if (e->built && e->generation != generation) teardown(e);
    if (!e->built) *error = build(e, &c, generation);
    if (*error == 0) {
        /* Chunks small enough that every buffer of every worker carries one. */
        size_t per = bytes / ((size_t)e->count * e->buffers) + 1;
        per = per >= e->buffer_bytes ? e->buffer_bytes
                                     : (per + JOB_ALIGN - 1) / JOB_ALIGN * JOB_ALIGN;
        if (per < MIN_JOB_CHUNK) per = MIN_JOB_CHUNK;
        if (per > e->buffer_bytes) per = e->buffer_bytes;
        pthread_mutex_lock(&e->lock);
        e->device_address = device_address;
        e->host = host;
        e->bytes = bytes;
        e->chunk = per;
        e->chunks = bytes / per + (bytes % per != 0);
        e->sensitive = sensitive;
        e->next = 0;
        e->error = 0;
        e->running = e->count;
        e->job++;
        pthread_cond_broadcast(&e->wake);
        while (e->running) pthread_cond_wait(&e->done, &e->lock);
        *error = e->error;
        pthread_mutex_unlock(&e->lock);
        __atomic_fetch_add(&g_staged_copies, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&e->turn);
    return true;
}

void vram_staging_stats(uint64_t *staging_bytes, uint64_t *staged_copies,
                        uint64_t *cleared_bytes) {
    *staging_bytes = __atomic_load_n(&g_staging_bytes, __ATOMIC_RELAXED);
    *staged_copies = __atomic_load_n(&g_staged_copies, __ATOMIC_RELAXED);
    *cleared_bytes = __atomic_load_n(&g_cleared_bytes, __ATOMIC_RELAXED);
}

int vram_staging_get(vram_staging_config *out) {
    if (!out) {
        vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, VRAM_OP_NONE, 0);
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    pthread_once(&g_once, setup);
    pthread_mutex_lock(&g_config_lock);
    *out = g_config;
    pthread_mutex_unlock(&g_config_lock);
    return VRAM_SUCCESS;
}

int vram_staging_set(const vram_staging_config *config) {
    if (!config || !config_valid(config)) {
        vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS,
                            config ? VRAM_REASON_INVALID_CONFIG : VRAM_REASON_NULL_POINTER,
                            VRAM_OP_NONE, 0);
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    pthread_once(&g_once, setup);
    pthread_mutex_lock(&g_config_lock);
    bool rebuild = config->threads != g_config.threads ||
                   config->chunk_bytes != g_config.chunk_bytes ||
                   config->buffers != g_config.buffers;
    g_config = *config;
    if (rebuild) g_generation++;
    __atomic_store_n(&g_threads, config->threads, __ATOMIC_RELAXED);
    __atomic_store_n(&g_min_bytes, config->min_bytes, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&g_config_lock);
    /* Release the old buffers now (waiting for copies in flight); the next copy rebuilds. */
    if (rebuild) release_all();
    return VRAM_SUCCESS;
}
