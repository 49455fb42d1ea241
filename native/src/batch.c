/* vram_malloc_batch: many allocations, all or nothing. Every input is checked before the
 * first driver call; then each buffer is an ordinary vram_malloc_ex (timed and counted as a
 * malloc), and a failure frees those already made through vram_free_ex (counted as frees), so
 * the registry and the counters see exactly what happened. */
#include "internal.h"

static bool array_wraps(const void *array, size_t count, size_t element) {
    uintptr_t end;
    return count > SIZE_MAX / element || vram_add_overflows((uintptr_t)array, count * element, &end);
}

/* Why the batch cannot be attempted, before anything is written (VRAM_REASON_NONE: it can). */
static vram_reason refusal(void **ptrs, const size_t *sizes, size_t count, uint32_t tag,
                           const uint64_t *generations) {
    if (!ptrs || !sizes) return VRAM_REASON_NULL_POINTER;
    if (count == 0) return VRAM_REASON_ZERO_SIZE;
    if (array_wraps(ptrs, count, sizeof *ptrs) || array_wraps(sizes, count, sizeof *sizes) ||
        (generations && array_wraps(generations, count, sizeof *generations)))
        return VRAM_REASON_SIZE_OVERFLOW;
    return tag >= VRAM_MAX_TAGS ? VRAM_REASON_INVALID_TAG : VRAM_REASON_NONE;
}

int vram_malloc_batch(void **ptrs, const size_t *sizes, size_t count, uint32_t tag,
                      uint64_t *generations) {
    vram_call c = vram_call_begin(VRAM_OP_MALLOC);
    vram_reason reason = refusal(ptrs, sizes, count, tag, generations);
    /* Every output NULL (0) from the start, wherever the arrays can be written at all. */
    if (ptrs && count && !array_wraps(ptrs, count, sizeof *ptrs)) {
        for (size_t i = 0; i < count; i++) ptrs[i] = NULL;
        if (generations && !array_wraps(generations, count, sizeof *generations))
            for (size_t i = 0; i < count; i++) generations[i] = 0;
    }
    /* Each size as vram_malloc would judge it, all of them before any allocation. */
    for (size_t i = 0; reason == VRAM_REASON_NONE && i < count; i++) {
        if (sizes[i] == 0) reason = VRAM_REASON_ZERO_SIZE;
        else if (sizes[i] > SIZE_MAX - (VRAM_ALIGNMENT - 1)) reason = VRAM_REASON_SIZE_OVERFLOW;
    }
    if (reason != VRAM_REASON_NONE)
        return vram_call_refuse(&c, VRAM_ERR_INVALID_PARAMETERS, reason);

    uint64_t generation = 0;
    for (size_t i = 0; i < count; i++) {
        int status = vram_malloc_ex(&ptrs[i], sizes[i], tag, &generation);
        if (generations) generations[i] = generation;
        if (status == VRAM_SUCCESS) continue;
        vram_error_info failure;
        vram_last_error(&failure); /* the batch reports the failed malloc, not the undoing */
        for (size_t j = 0; j < i; j++) {
            /* Freed by generation where the caller asked for them; by address otherwise (no
             * one else holds these pointers yet). A free that fails leaves its allocation
             * live (and listed by the registry), as any failed free does. */
            if (generations)
                vram_free_ex(ptrs[j], generations[j]);
            else
                vram_free(ptrs[j]);
            ptrs[j] = NULL;
            if (generations) generations[j] = 0;
        }
        vram_set_last_error(failure.status, (vram_reason)failure.reason, (vram_op)failure.op,
                            failure.driver_error);
        return status;
    }
    return VRAM_SUCCESS;
}
