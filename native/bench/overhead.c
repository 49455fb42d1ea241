/* What observation costs in C: each vram operation against the bare driver call it wraps,
 * timed in the same process on the same device. Prints one markdown row per operation.
 * Run on a GPU: overhead [iterations]. Without one, overhead host [iterations] times the
 * pooled pair on the host backend, where no driver is called: vramobs' own work alone. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cudaTypedefs.h>

#include "vram_ops.h"

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Medians over rounds of the mean time per call within a round; the driver's round and
 * vramobs' alternate, so that drift in the machine's speed falls on both alike. */
#define MEDIANS_NS(raw, ours, rounds, per_round, raw_body, ours_body)      \
    do {                                                                    \
        double raw_[rounds], ours_[rounds];                                 \
        for (int r_ = 0; r_ < (rounds); r_++) {                             \
            double t0_ = now_ns();                                          \
            for (int i_ = 0; i_ < (per_round); i_++) { raw_body; }          \
            double t1_ = now_ns();                                          \
            for (int i_ = 0; i_ < (per_round); i_++) { ours_body; }         \
            raw_[r_] = (t1_ - t0_) / (per_round);                           \
            ours_[r_] = (now_ns() - t1_) / (per_round);                     \
        }                                                                   \
        qsort(raw_, (rounds), sizeof(double), compare);                     \
        qsort(ours_, (rounds), sizeof(double), compare);                    \
        (raw) = raw_[(rounds) / 2];                                         \
        (ours) = ours_[(rounds) / 2];                                       \
    } while (0)

#define CHECK(call)                                                         \
    do {                                                                    \
        int rc_ = (int)(call);                                              \
        if (rc_ != 0) {                                                     \
            fprintf(stderr, "%s failed: %d at line %d\n", #call, rc_, __LINE__); \
            exit(1);                                                        \
        }                                                                   \
    } while (0)

/* The pooled malloc+free pair on the host backend, against the clock read it makes four of. */
static int host_pair(int per_round) {
    CHECK(vram_select_backend("host"));
    CHECK(vram_pool_set(0, (uint64_t)64 << 20));
    enum { SIZE = 4096, ROUNDS = 31 };
    void *p;
    uint64_t generation;
    struct timespec ts;
    double clock_ns, pair_ns;
    MEDIANS_NS(clock_ns, pair_ns, ROUNDS, per_round, clock_gettime(CLOCK_MONOTONIC, &ts),
               {
                   CHECK(vram_malloc_ex(&p, SIZE, 0, &generation));
                   CHECK(vram_free_ex(p, generation));
               });
    vram_pool_stats pool;
    CHECK(vram_pool_stats_get(0, &pool, sizeof pool));
    printf("| operation (4 KiB, host backend) | ns |\n|---|---|\n");
    printf("| malloc_ex+free_ex, pooled (%llu of %llu from the cache) | %.0f |\n",
           (unsigned long long)pool.hits_total,
           (unsigned long long)(pool.hits_total + pool.misses_total), pair_ns);
    printf("| clock_gettime | %.0f |\n", clock_ns);
    CHECK(vram_pool_set(0, 0));
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "host") == 0)
        return host_pair(argc > 2 ? atoi(argv[2]) : 20000);
    int per_round = argc > 1 ? atoi(argv[1]) : 2000;
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "no driver: %s\n", dlerror());
        return 1;
    }
    PFN_cuMemAlloc_v3020 mem_alloc = (PFN_cuMemAlloc_v3020)dlsym(lib, "cuMemAlloc_v2");
    PFN_cuMemFree_v3020 mem_free = (PFN_cuMemFree_v3020)dlsym(lib, "cuMemFree_v2");
    PFN_cuMemcpyHtoD_v3020 htod = (PFN_cuMemcpyHtoD_v3020)dlsym(lib, "cuMemcpyHtoD_v2");
    PFN_cuMemcpyDtoH_v3020 dtoh = (PFN_cuMemcpyDtoH_v3020)dlsym(lib, "cuMemcpyDtoH_v2");
    PFN_cuMemGetInfo_v3020 get_info = (PFN_cuMemGetInfo_v3020)dlsym(lib, "cuMemGetInfo_v2");
    PFN_cuCtxSetCurrent_v4000 set_current = (PFN_cuCtxSetCurrent_v4000)dlsym(lib, "cuCtxSetCurrent");
    PFN_cuDevicePrimaryCtxRetain_v7000 retain =
        (PFN_cuDevicePrimaryCtxRetain_v7000)dlsym(lib, "cuDevicePrimaryCtxRetain");

    /* vramobs first: it initialises the driver and retains the primary context. */
    size_t free_b, total_b;
    CHECK(vram_get_info(&free_b, &total_b));
    CUcontext ctx;
    CHECK(retain(&ctx, 0));
    CHECK(set_current(ctx)); /* the same context vramobs uses: no push/pop on either side */

    enum { SIZE = 4096, ROUNDS = 31 };
    char *host = malloc(SIZE);
    for (int i = 0; i < SIZE; i++) host[i] = (char)(rand() & 0xff);
    CUdeviceptr dptr;
    void *vptr;
    CHECK(mem_alloc(&dptr, SIZE));
    CHECK(vram_malloc(&vptr, SIZE));

    double raw, ours;
    printf("| operation (4 KiB) | driver ns | vramobs ns | overhead ns |\n|---|---|---|---|\n");
    MEDIANS_NS(raw, ours, ROUNDS, per_round, CHECK(htod(dptr, host, SIZE)),
               CHECK(vram_memcpy_h2d(vptr, host, SIZE)));
    printf("| memcpy_h2d | %.0f | %.0f | %.0f |\n", raw, ours, ours - raw);
    MEDIANS_NS(raw, ours, ROUNDS, per_round, CHECK(dtoh(host, dptr, SIZE)),
               CHECK(vram_memcpy_d2h(host, vptr, SIZE)));
    printf("| memcpy_d2h | %.0f | %.0f | %.0f |\n", raw, ours, ours - raw);
    MEDIANS_NS(raw, ours, ROUNDS, per_round, CHECK(get_info(&free_b, &total_b)),
               CHECK(vram_get_info(&free_b, &total_b)));
    printf("| get_info | %.0f | %.0f | %.0f |\n", raw, ours, ours - raw);
    CUdeviceptr tmp;
    void *vtmp;
    MEDIANS_NS(raw, ours, ROUNDS, per_round / 10,
               {
                   CHECK(mem_alloc(&tmp, SIZE));
                   CHECK(mem_free(tmp));
               },
               {
                   CHECK(vram_malloc(&vtmp, SIZE));
                   CHECK(vram_free(vtmp));
               });
    printf("| malloc+free | %.0f | %.0f | %.0f |\n", raw, ours, ours - raw);
    /* The pool: each freed block serves the next allocation, with no driver call. */
    vram_pool_stats pool_before, pool_after;
    CHECK(vram_pool_set(0, (uint64_t)64 << 20));
    CHECK(vram_pool_stats_get(0, &pool_before, sizeof pool_before));
    MEDIANS_NS(raw, ours, ROUNDS, per_round / 10,
               {
                   CHECK(mem_alloc(&tmp, SIZE));
                   CHECK(mem_free(tmp));
               },
               {
                   CHECK(vram_malloc(&vtmp, SIZE));
                   CHECK(vram_free(vtmp));
               });
    CHECK(vram_pool_stats_get(0, &pool_after, sizeof pool_after));
    printf("| malloc+free, pooled (%llu of %llu from the cache) | %.0f | %.0f | %.0f |\n",
           (unsigned long long)(pool_after.hits_total - pool_before.hits_total),
           (unsigned long long)(pool_after.hits_total - pool_before.hits_total +
                                pool_after.misses_total - pool_before.misses_total),
           raw, ours, ours - raw);
    CHECK(vram_pool_set(0, 0));
    /* The parts: the clock (read twice per call), and validation with the registry lookup,
     * timed by a copy refused before the driver. */
    struct timespec ts;
    MEDIANS_NS(raw, ours, ROUNDS, per_round, clock_gettime(CLOCK_MONOTONIC, &ts),
               (void)vram_memcpy_h2d((char *)vptr + SIZE - 8, host, 16));
    printf("| clock_gettime | - | %.0f | - |\n", raw);
    printf("| refused copy (bounds) | - | %.0f | - |\n", ours);
    CHECK(mem_free(dptr));
    CHECK(vram_free(vptr));
    free(host);
    return 0;
}
