/* Names and messages, generated from the tables in vram_ops.h: defined once, used everywhere. */
#include "vram_ops.h"

unsigned vram_version_number(void) { return VRAM_VERSION_NUMBER; }

const char *vram_version_string(void) { return VRAM_VERSION_STRING; }

const char *vram_status_name(int status) {
    switch (status) {
#define VRAM_STATUS_NAME_(code, name, message) \
    case code:                                 \
        return "VRAM_" #name;
        VRAM_STATUS_MAP(VRAM_STATUS_NAME_)
#undef VRAM_STATUS_NAME_
    default:
        return "VRAM_UNKNOWN_STATUS";
    }
}

const char *vram_strerror(int status) {
    switch (status) {
#define VRAM_STATUS_MESSAGE_(code, name, message) \
    case code:                                    \
        return message;
        VRAM_STATUS_MAP(VRAM_STATUS_MESSAGE_)
#undef VRAM_STATUS_MESSAGE_
    default:
        return "unknown vram status";
    }
}

const char *vram_reason_name(int reason) {
    switch (reason) {
#define VRAM_REASON_LABEL_(code, name, label) \
    case code:                                \
        return label;
        VRAM_REASON_MAP(VRAM_REASON_LABEL_)
#undef VRAM_REASON_LABEL_
    default:
        return "unknown";
    }
}

const char *vram_op_name(int op) {
    switch (op) {
#define VRAM_OP_LABEL_(code, name, label) \
    case code:                            \
        return label;
        VRAM_OP_MAP(VRAM_OP_LABEL_)
#undef VRAM_OP_LABEL_
    case VRAM_OP_NONE:
        return "none";
    default:
        return "unknown";
    }
}

/* Compile-time checks that the tables fit the fixed-size arrays of the ABI. */
_Static_assert(VRAM_STATUS_COUNT_ <= VRAM_STATUS_CAPACITY, "status table outgrew the ABI");
_Static_assert(VRAM_REASON_COUNT_ <= VRAM_REASON_CAPACITY, "reason table outgrew the ABI");
_Static_assert(VRAM_OP_COUNT_ <= VRAM_OP_CAPACITY, "op table outgrew the ABI");
