/* The host NUMA node nearest each device, from sysfs (no libnuma): the device's PCI bus id ->
 * <devices dir>/<dddd:bb:dd.f>/numa_node and local_cpulist. Read once per device and backend. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hostmem.h"
#include "internal.h"

#define SYSFS_PCI_DEVICES "/sys/bus/pci/devices"

typedef struct placement {
    const vram_backend *backend; /* the backend it was read for; NULL: not read yet */
    int node;                    /* -1: unknown, bind nothing */
    cpu_set_t cpus;
} placement;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static placement g_placement[VRAM_MAX_DEVICES];

/* Read a small sysfs file into buf (NUL-terminated, trailing newline dropped). */
static bool read_text(const char *dir, const char *file, char *buf, size_t size) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) return false;
    FILE *f = fopen(path, "re");
    if (!f) return false;
    size_t n = fread(buf, 1, size - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
    return n > 0;
}

static bool parse_long(const char *text, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text) return false;
    *out = v;
    return true;
}

/* "0-15,32-47" -> cpus; false on anything malformed or beyond CPU_SETSIZE. */
static bool parse_cpulist(const char *text, cpu_set_t *cpus) {
    CPU_ZERO(cpus);
    const char *p = text;
    while (*p) {
        char *end = NULL;
        errno = 0;
        unsigned long first = strtoul(p, &end, 10), last = first;
        if (errno || end == p) return false;
        p = end;
        if (*p == '-') {
            last = strtoul(++p, &end, 10);
            if (errno || end == p || last < first) return false;
            p = end;
        }
        if (last >= CPU_SETSIZE) return false;
        for (unsigned long cpu = first; cpu <= last; cpu++) CPU_SET((size_t)cpu, cpus);
        if (*p == ',') p++;
        else if (*p) return false;
    }
    return CPU_COUNT(cpus) > 0;
}

static void read_placement(int device, placement *out) {
    out->node = -1;
    CPU_ZERO(&out->cpus);
    /* A query of our own must not leave its failure as the caller's last error. */
    vram_error_info saved;
    vram_last_error(&saved);
    vram_device_props props;
    int status = vram_device_props_get(device, &props);
    vram_set_last_error(saved.status, (vram_reason)saved.reason, (vram_op)saved.op,
                        saved.driver_error);
    unsigned domain, bus, dev, fn;
    if (status != VRAM_SUCCESS ||
        sscanf(props.pci_bus_id, "%x:%x:%x.%x", &domain, &bus, &dev, &fn) != 4 ||
        domain > 0xffff || bus > 0xff || dev > 0x1f || fn > 7)
        return;
    const char *root = getenv("VRAMOBS_SYSFS_PCI_DEVICES");
    char dir[PATH_MAX], text[4096];
    if (snprintf(dir, sizeof dir, "%s/%04x:%02x:%02x.%x", root && *root ? root : SYSFS_PCI_DEVICES,
                 domain, bus, dev, fn) >= (int)sizeof dir)
        return;
    long node;
    if (!read_text(dir, "numa_node", text, sizeof text) || !parse_long(text, &node) ||
        node < 0 || node > INT_MAX)
        return;
    if (!read_text(dir, "local_cpulist", text, sizeof text) || !parse_cpulist(text, &out->cpus))
        return;
    out->node = (int)node;
}

/* The device's placement, read on first use under the current backend. */
static placement lookup(int device) {
    placement p = {NULL, -1, {{0}}};
    if (device < 0 || device >= VRAM_MAX_DEVICES) return p;
    const vram_backend *b = vram_runtime_backend();
    pthread_mutex_lock(&g_lock);
    if (g_placement[device].backend != b) {
        read_placement(device, &g_placement[device]);
        g_placement[device].backend = b;
    }
    p = g_placement[device];
    pthread_mutex_unlock(&g_lock);
    return p;
}

int vram_numa_node_of(int device) { return lookup(device).node; }

bool vram_numa_bind(int device, cpu_set_t *saved) {
    placement p = lookup(device);
    if (p.node < 0) return false;
    pthread_t self = pthread_self();
    if (saved && pthread_getaffinity_np(self, sizeof *saved, saved) != 0) return false;
    return pthread_setaffinity_np(self, sizeof p.cpus, &p.cpus) == 0;
}

void vram_numa_restore(const cpu_set_t *saved) {
    pthread_setaffinity_np(pthread_self(), sizeof *saved, saved);
}

int vram_host_numa_node(int device, int *node) {
    if (!node) {
        vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_NULL_POINTER, VRAM_OP_NONE, 0);
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    *node = -1;
    const vram_backend *b = vram_runtime_backend();
    if (!vram_runtime_usable(b)) {
        vram_set_last_error(VRAM_ERR_NO_DEVICE, VRAM_REASON_NONE, VRAM_OP_NONE, 0);
        return VRAM_ERR_NO_DEVICE;
    }
    if (device < 0 || device >= b->device_count()) {
        vram_set_last_error(VRAM_ERR_INVALID_PARAMETERS, VRAM_REASON_INVALID_DEVICE, VRAM_OP_NONE,
                            0);
        return VRAM_ERR_INVALID_PARAMETERS;
    }
    *node = vram_numa_node_of(device);
    return VRAM_SUCCESS;
}
