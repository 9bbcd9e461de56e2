/* migrate/store_writer.h: store writes for a loop that must not wait for
 * them (the broker's control loop). One thread per writer makes the queued
 * puts and deletes in the order they were queued per key (etcd may make a
 * key's later write visible after another key's write queued behind it in
 * the same call: see store_etcd.c, batches), every write queued meanwhile
 * in one store call (the embedded store makes them durable with one flush,
 * etcd gets them in one txn per up to 127 writes), each within its own
 * bound counted from when it was queued: a write still queued when its
 * bound has passed fails without being tried, so a silent etcd costs every
 * write at most its bound, however many wait before it (one call carries
 * only writes whose bounds end close together, see store_writer.c). The
 * result goes to a callback on the writer's thread; the
 * caller moves it to its own loop (the broker with event_base_once).
 *
 * Values are wiped (OPENSSL_cleanse) once written: token records hold
 * backend passwords. Only the writer's thread calls the store's
 * store_put/store_delete meanwhile, so no other writer holds a write's turn
 * past its bound. */
#ifndef SB_STORE_WRITER_H
#define SB_STORE_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "migrate/store.h"

struct store_writer;

/* result: an enum store_result; new_rev: the key's new revision after a put
 * that returned STORE_OK (else 0). Runs on the writer's thread. */
typedef void (*store_writer_done_fn)(int result, int64_t new_rev, void *arg);

/* Starts the writer thread for s (borrowed: s must outlive the writer). On
 * failure returns NULL and sets *err to a static message. */
struct store_writer *store_writer_new(struct store *s, const char **err);

/* Queue a put or delete (store.h semantics; key and val are copied) to be
 * made within timeout_ms (> 0) from now. done(result, new_rev, arg) runs on
 * the writer's thread once, when the write is made or has failed; it may be
 * NULL. Returns 0, or -1 (stopping, queue full, out of memory): then done is
 * never called. Any thread. */
int store_writer_put(struct store_writer *w, const char *key, const void *val, size_t len,
                     int64_t expect_rev, long timeout_ms, store_writer_done_fn done, void *arg);
int store_writer_delete(struct store_writer *w, const char *key, int64_t expect_rev,
                        long timeout_ms, store_writer_done_fn done, void *arg);

/* A put or delete made only if check agrees, decided on the writer's thread
 * just before the write: check(cur, cur_len, cur_rev, arg) sees the key as
 * the store has it then (cur NULL: absent) and returns the revision to
 * compare-and-swap with (cur_rev, or STORE_ABSENT_REV for an absent key), or
 * STORE_WRITER_REFUSE: nothing is written and done gets STORE_CONFLICT. A
 * change between the look and the write fails the compare: STORE_CONFLICT
 * too. The look is the store's in-memory view (store_get), so a write costs
 * no extra round trip. A delete of an absent key is STORE_NOT_FOUND without
 * a check. check and done share arg; check may write into it (done runs
 * after it, on the same thread). */
#define STORE_WRITER_REFUSE (-2)
/* cur_rev when what check sees is a write queued before this one and taken
 * in the same store call, not made yet (a group commit: its revision is not
 * known). Returned as is, the write compares with the revision that write
 * gets (and fails STORE_CONFLICT if it fails). */
#define STORE_WRITER_PENDING_REV INT64_MAX
typedef int64_t (*store_writer_check_fn)(const void *cur, size_t cur_len, int64_t cur_rev,
                                         void *arg);
int store_writer_put_if(struct store_writer *w, const char *key, const void *val, size_t len,
                        store_writer_check_fn check, long timeout_ms, store_writer_done_fn done,
                        void *arg);
int store_writer_delete_if(struct store_writer *w, const char *key, store_writer_check_fn check,
                           long timeout_ms, store_writer_done_fn done, void *arg);

/* Writes queued and not finished yet (including the one being made). */
size_t store_writer_pending(struct store_writer *w);

/* Stops taking writes, makes the queued ones within flush_ms from now (a
 * write's own bound still applies; those left when flush_ms has passed fail
 * untried, with their done called), joins the thread and frees w. The wait
 * is bounded by flush_ms and the write being made when it is called (at most
 * its bound). NULL is a no-op. Not from the writer's thread. */
void store_writer_free(struct store_writer *w, long flush_ms);

#endif
