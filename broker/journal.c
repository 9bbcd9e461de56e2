/* broker/journal.c: the session journal (see journal.h). One record a line,
 * after a header line: the record's snap encoding (proto/snap.h, versioned)
 * in base64. Control loop only. */
#include "broker/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#define HEADER "spice-broker session journal 1\n"
#define LINE_MAX_B64 (1 << 16)       /* far above an encoded session record */

static const char *errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *errorf(const char *fmt, ...)
{
    static _Thread_local char buf[640];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return buf;
}

int journal_write(const char *path, const struct snap_session *recs, size_t n,
                  const char **err)
{
    char tmp[600];
    FILE *f = NULL;
    int fd = -1;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        *err = "journal path too long";
        return -1;
    }
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0 ||
        (f = fdopen(fd, "w")) == NULL) {
        *err = errorf("%s: %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    fputs(HEADER, f);
    for (size_t i = 0; i < n; i++) {
        uint8_t *val = NULL;
        size_t len = 0;
        char *b64;

        if (snap_session_encode(&recs[i], &val, &len) != 0 || len > LINE_MAX_B64 / 2 ||
            (b64 = malloc(4 * ((len + 2) / 3) + 1)) == NULL) {
            free(val);
            *err = "cannot encode a session record";
            goto fail;
        }
        EVP_EncodeBlock((unsigned char *)b64, val, (int)len);
        fprintf(f, "%s\n", b64);
        free(b64);
        free(val);
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        *err = errorf("%s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (fclose(f) != 0) {
        f = NULL;
        *err = errorf("%s: %s", tmp, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        *err = errorf("rename %s to %s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    return 0;
fail:
    if (f != NULL)
        fclose(f);
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return -1;
}

int journal_read(const char *path, struct snap_session **recs, size_t *n, size_t *bad,
                 const char **err)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0, cap_recs = 0;
    ssize_t got;
    bool first = true;

    *recs = NULL;
    *n = *bad = 0;
    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        *err = errorf("%s: %s", path, strerror(errno));
        return -1;
    }
    while ((got = getline(&line, &cap, f)) > 0) {
        size_t len = (size_t)got;
        if (first) {
            first = false;
            if (strcmp(line, HEADER) != 0) {
                *err = errorf("%s: not a spice-broker session journal (or a newer format)",
                              path);
                goto fail;
            }
            continue;
        }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        uint8_t *val = len % 4 == 0 && len <= LINE_MAX_B64 ? malloc(len / 4 * 3 + 1) : NULL;
        int dlen = val != NULL ? EVP_DecodeBlock(val, (unsigned char *)line, (int)len) : -1;
        if (dlen >= 0) {
            /* EVP_DecodeBlock counts the padding as zero bytes */
            dlen -= (line[len - 1] == '=') + (len >= 2 && line[len - 2] == '=');
        }
        if (*n == cap_recs) {
            size_t nc = cap_recs ? cap_recs * 2 : 16;
            void *p = realloc(*recs, nc * sizeof(**recs));
            if (p == NULL) {
                free(val);
                *err = "out of memory";
                goto fail;
            }
            *recs = p;
            cap_recs = nc;
        }
        if (dlen < 0 || snap_session_decode(val, (size_t)dlen, &(*recs)[*n]) != 0)
            (*bad)++;
        else
            (*n)++;
        free(val);
    }
    if (ferror(f)) {
        *err = errorf("%s: %s", path, strerror(errno));
        goto fail;
    }
    free(line);
    fclose(f);
    return 0;
fail:
    free(line);
    fclose(f);
    free(*recs);
    *recs = NULL;
    *n = 0;
    return -1;
}

int journal_remove(const char *path, const char **err)
{
    if (unlink(path) != 0 && errno != ENOENT) {
        *err = errorf("%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
