/* Which backend serves the process, this thread's device, and the per-device failure latch. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static const vram_backend *g_backend; /* atomic: set once by default, or by vram_select_backend */
static pthread_once_t g_default_once = PTHREAD_ONCE_INIT;
static char g_env_error[160]; /* why VRAMOBS_BACKEND names no backend; written once */
static int g_env_invalid;      /* atomic: g_env_error applies (until a backend is selected) */
/* Held shared by an allocation from its choice of backend until its entry is recorded, and
 * exclusively by a switch of backend: no allocation can land on a backend switched away. */
static pthread_rwlock_t g_switch;
static pthread_once_t g_switch_once = PTHREAD_ONCE_INIT;
static int g_failed[VRAM_MAX_DEVICES];
static _Thread_local int t_device;

/* Non-operation calls report failures through the thread's last error too, so a caller never
 * reads a stale one. */
static int fail(int status, vram_reason reason) {
    vram_set_last_error(status, reason, VRAM_OP_NONE, 0);
    return status;
}

static const vram_backend *backend_named(const char *name) {
    if (strcmp(name, "cuda") == 0) return &vram_backend_cuda;
    if (strcmp(name, "host") == 0) return &vram_backend_host;
    return NULL;
}

static void select_default(void) {
    const char *env = getenv("VRAMOBS_BACKEND");
    const vram_backend *b = &vram_backend_cuda;
    if (env && *env) {
        b = backend_named(env);
        if (!b) {
            /* Never fall back silently: report the bad setting and serve nothing. */
            snprintf(g_env_error, sizeof g_env_error,
                     "VRAMOBS_BACKEND='%.64s' names no backend (use 'cuda' or 'host')", env);
            __atomic_store_n(&g_env_invalid, 1, __ATOMIC_RELEASE);
            b = &vram_backend_cuda;
        }
    }
    __atomic_store_n(&g_backend, b, __ATOMIC_RELEASE);
}

const vram_backend *vram_runtime_backend(void) {
    const vram_backend *b = __atomic_load_n(&g_backend, __ATOMIC_ACQUIRE);
    if (b) return b;
    pthread_once(&g_default_once, select_default);
    return __atomic_load_n(&g_backend, __ATOMIC_ACQUIRE);
}

bool vram_runtime_usable(const vram_backend *backend) {
    return !__atomic_load_n(&g_env_invalid, __ATOMIC_ACQUIRE) && backend->init();
}

int vram_runtime_thread_device(void) { return t_device; }

bool vram_runtime_device_failed(int device) {
    return __atomic_load_n(&g_failed[device], __ATOMIC_ACQUIRE) != 0;
}

void vram_runtime_latch(int device) { __atomic_store_n(&g_failed[device], 1, __ATOMIC_RELEASE); }

static void switch_lock_init(void) {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* A switch is rare and must not starve behind a stream of allocations. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&g_switch, &attr);
    pthread_rwlockattr_destroy(&attr);
}

void vram_runtime_allocation_begin(void) {
    pthread_once(&g_switch_once, switch_lock_init);
    pthread_rwlock_rdlock(&g_switch);
}

void vram_runtime_allocation_end(void) { pthread_rwlock_unlock(&g_switch); }

int vram_select_backend(const char *name) {
    const vram_backend *wanted = name ? backend_named(name) : NULL;
    if (!wanted) return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_BACKEND);
    pthread_once(&g_default_once, select_default);
    pthread_once(&g_switch_once, switch_lock_init);
    pthread_rwlock_wrlock(&g_switch);
    int status = VRAM_SUCCESS;
    if (wanted != __atomic_load_n(&g_backend, __ATOMIC_ACQUIRE) ||
        __atomic_load_n(&g_env_invalid, __ATOMIC_ACQUIRE)) {
        /* Cached pool blocks belong to the backend that made them. Live allocations first: a
         * free caches its block before its entry goes. */
        if (vram_registry_live_count() > 0 || !vram_pool_idle()) {
            status = fail(VRAM_ERR_BUSY, VRAM_REASON_NONE);
        } else {
            __atomic_store_n(&g_env_invalid, 0, __ATOMIC_RELEASE);
            __atomic_store_n(&g_backend, wanted, __ATOMIC_RELEASE);
        }
    }
    pthread_rwlock_unlock(&g_switch);
    return status;
}

const char *vram_backend_name(void) { return vram_runtime_backend()->name; }

const char *vram_backend_diagnostic(void) {
    const vram_backend *b = vram_runtime_backend();
    if (__atomic_load_n(&g_env_invalid, __ATOMIC_ACQUIRE)) return g_env_error;
    b->init();
    return b->diagnostic();
}

int vram_device_count(int *count) {
    if (!count) return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    *count = 0;
    const vram_backend *b = vram_runtime_backend();
    if (!vram_runtime_usable(b)) return fail(VRAM_ERR_NO_DEVICE, VRAM_REASON_NONE);
    *count = b->device_count();
    return VRAM_SUCCESS;
}

int vram_set_device(int device) {
    const vram_backend *b = vram_runtime_backend();
    if (device < 0 || device >= VRAM_MAX_DEVICES)
        return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE);
    if (!vram_runtime_usable(b)) return fail(VRAM_ERR_NO_DEVICE, VRAM_REASON_NONE);
    if (device >= b->device_count())
        return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE);
    t_device = device;
    return VRAM_SUCCESS;
}

int vram_get_device(int *device) {
    if (!device) return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    *device = t_device;
    return VRAM_SUCCESS;
}

int vram_device_state_get(int device, int *state) {
    if (!state) return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    if (device < 0 || device >= VRAM_MAX_DEVICES)
        return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE);
    const vram_backend *b = vram_runtime_backend();
    if (!vram_runtime_usable(b) || device >= b->device_count())
        *state = VRAM_DEVICE_UNAVAILABLE;
    else
        *state = vram_runtime_device_failed(device) ? VRAM_DEVICE_FAILED : VRAM_DEVICE_USABLE;
    return VRAM_SUCCESS;
}

/* Device properties never change: they are read from the driver once and cached, so a
 * failed device can still be named (its UUID labels its metrics) without a driver call. */
static vram_device_props g_props[VRAM_MAX_DEVICES];
static const vram_backend *g_props_backend[VRAM_MAX_DEVICES];
static pthread_mutex_t g_props_lock = PTHREAD_MUTEX_INITIALIZER;

int vram_device_props_get(int device, vram_device_props *props) {
    if (!props) return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER);
    if (device < 0 || device >= VRAM_MAX_DEVICES)
        return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE);
    memset(props, 0, sizeof *props);
    const vram_backend *b = vram_runtime_backend();
    if (!vram_runtime_usable(b)) return fail(VRAM_ERR_NO_DEVICE, VRAM_REASON_NONE);
    if (device >= b->device_count())
        return fail(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE);
    int status = VRAM_SUCCESS;
    pthread_mutex_lock(&g_props_lock);
    if (g_props_backend[device] != b) {
        if (vram_runtime_device_failed(device)) {
            status = VRAM_ERR_DEVICE_FAILED;
        } else {
            vram_device_props fresh = {0};
            fresh.ordinal = device;
            status = b->props(device, &fresh);
            if (status == VRAM_SUCCESS) {
                g_props[device] = fresh;
                g_props_backend[device] = b;
            }
        }
    }
    if (status == VRAM_SUCCESS) *props = g_props[device];
    pthread_mutex_unlock(&g_props_lock);
    return status == VRAM_SUCCESS ? status : fail(status, VRAM_REASON_NONE);
}

const char *vram_driver_error_name(int driver_error) {
    return vram_runtime_backend()->error_name(driver_error);
}

uint64_t vram_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
