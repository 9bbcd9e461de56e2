/* tests/fuzz/replay_main.c: a plain main() that runs LLVMFuzzerTestOneInput over corpus files and directories, so gcc builds replay the corpora; single-threaded. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole file into an exactly-sized heap buffer (so ASan sees
 * over-reads) and runs the target on it. Returns 0, or -1 if unreadable. */
static int
run_file(const char *path)
{
    FILE *f = NULL;
    uint8_t *buf = NULL;
    struct stat st;
    size_t len;
    int rc = -1;

    f = fopen(path, "rb");
    if (f == NULL || fstat(fileno(f), &st) != 0 || st.st_size < 0)
        goto fail;
    len = (size_t)st.st_size;
    buf = malloc(len ? len : 1);
    if (buf == NULL || fread(buf, 1, len, f) != len)
        goto fail;
    LLVMFuzzerTestOneInput(buf, len);
    rc = 0;
fail:
    if (rc != 0)
        fprintf(stderr, "%s: %s\n", path, strerror(errno ? errno : EIO));
    free(buf);
    if (f != NULL)
        fclose(f);
    return rc;
}

/* Runs every regular file of a directory (not recursive). Returns the count or -1. */
static long
run_dir(const char *dir)
{
    DIR *d;
    struct dirent *e;
    long n = 0;

    d = opendir(dir);
    if (d == NULL)
        goto fail;
    while ((e = readdir(d)) != NULL) {
        char path[4096];
        struct stat st;

        if (e->d_name[0] == '.')
            continue;
        if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= (int)sizeof(path))
            continue;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (run_file(path) != 0) {
            closedir(d);
            goto fail;
        }
        n++;
    }
    closedir(d);
    return n;
fail:
    return -1;
}

int
main(int argc, char **argv)
{
    long total = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS-DIR-OR-FILE...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        long n;

        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : (run_file(argv[i]) == 0 ? 1 : -1);
        if (n < 0)
            return 1;
        if (n == 0) {
            fprintf(stderr, "%s: empty corpus\n", argv[i]);
            return 1;
        }
        printf("%s: %ld inputs ok\n", argv[i], n);
        total += n;
    }
    printf("%ld inputs ok\n", total);
    return 0;
}
