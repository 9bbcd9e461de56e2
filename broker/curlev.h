/* broker/curlev.h: libcurl's multi interface driven by a libevent loop:
 * HTTP requests that never block the loop that issued them (the control
 * loop's questions to Keystone and Nova). One curlev per loop, used from that
 * loop's thread only. */
#ifndef SB_CURLEV_H
#define SB_CURLEV_H

#include <event2/event.h>

typedef void CURL;
struct curlev;

struct curlev *curlev_new(struct event_base *base);
/* Cancels every request still running (no callbacks) and frees. */
void curlev_free(struct curlev *ce);

/* A finished request: result is libcurl's CURLcode (0 = a reply came; then
 * CURLINFO_RESPONSE_CODE has the status). The callback owns easy (clean it
 * up, or reuse it). */
typedef void (*curlev_done_fn)(CURL *easy, int result, void *arg);
/* Starts easy (set up by the caller, CURLOPT_PRIVATE left to curlev) on the
 * loop; done is called from the loop, never from inside curlev_add. 0 or -1. */
int curlev_add(struct curlev *ce, CURL *easy, curlev_done_fn done, void *arg);

#endif
