/*
 * status.c -- ampr_strerror() and ampr_status_name(), generated from the one
 * X-macro list in status.h, with a compile-time check that ampr.h agrees.
 */
#include "ampr.h"
#include "status.h"

#define AMPR__CHECK(name, num, text) \
    _Static_assert(AMPR_##name == (num), "ampr.h and status.h disagree on " #name);
AMPR__STATUS_LIST(AMPR__CHECK)
#undef AMPR__CHECK

AMPR_API const char *ampr_strerror(ampr_status status) {
    switch (status) {
#define AMPR__TEXT(name, num, text) case AMPR_##name: return text;
        AMPR__STATUS_LIST(AMPR__TEXT)
#undef AMPR__TEXT
    }
    return "unknown status";
}

AMPR_API const char *ampr_status_name(ampr_status status) {
    switch (status) {
#define AMPR__NAME(name, num, text) case AMPR_##name: return #name;
        AMPR__STATUS_LIST(AMPR__NAME)
#undef AMPR__NAME
    }
    return "UNKNOWN";
}
