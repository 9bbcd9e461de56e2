/* broker/journal.h: the session journal, a local file for the session
 * records the store did not take by the time the broker stopped (etcd
 * silent or unreachable). main.c writes it at the stop and reads it back at
 * the next start, queues its records to the store and removes it. Control
 * loop (main thread) only; plain blocking file I/O on a local disk. */
#ifndef SB_JOURNAL_H
#define SB_JOURNAL_H

#include <stddef.h>

#include "proto/snap.h"

/* Replaces path with the n records (written to path.tmp, fsynced, renamed;
 * mode 0600). 0, or -1 with *err set to a thread-local message. */
int journal_write(const char *path, const struct snap_session *recs, size_t n,
                  const char **err);

/* Reads path: *recs (malloc'd, caller frees; NULL when none) and *n. A
 * missing file is 0 records; lines that do not decode are skipped and
 * counted in *bad. 0, or -1 with *err when the file cannot be read. */
int journal_read(const char *path, struct snap_session **recs, size_t *n, size_t *bad,
                 const char **err);

/* Removes path (a missing file is fine); 0 or -1 with *err. */
int journal_remove(const char *path, const char **err);

#endif
