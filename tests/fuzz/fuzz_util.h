/* tests/fuzz/fuzz_util.h: what the fuzz targets share: a check that aborts
 * with its line (so libFuzzer and the corpus replayer report it), and an
 * exactly-sized heap copy of an input, so ASan flags any access past it. */
#ifndef SB_FUZZ_UTIL_H
#define SB_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                            \
        }                                                                       \
    } while (0)

static inline uint8_t *
dup_exact(const uint8_t *p, size_t len)
{
    uint8_t *c = malloc(len ? len : 1);

    CHECK(c != NULL);
    if (len > 0)
        memcpy(c, p, len);
    return c;
}

#endif
