/* broker/curlev.c: libcurl's multi interface on a libevent loop (curl's
 * socket and timer callbacks become libevent events; finished transfers go
 * to their callbacks from the loop). */
#include "broker/curlev.h"

#include <stdlib.h>
#include <sys/queue.h>

#include <curl/curl.h>

#include "common/log.h"

/* What a running transfer carries (CURLOPT_PRIVATE). */
struct curlev_req {
    LIST_ENTRY(curlev_req) link;
    CURL *easy;
    curlev_done_fn done;
    void *arg;
};

struct curlev {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    int running;
    LIST_HEAD(, curlev_req) reqs;
};

static void finish_done(struct curlev *ce)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(ce->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *easy = m->easy_handle;
        CURLcode result = m->data.result;
        struct curlev_req *r = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
        curl_multi_remove_handle(ce->multi, easy);
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        if (r != NULL) {
            LIST_REMOVE(r, link);
            curlev_done_fn done = r->done;
            void *arg = r->arg;
            free(r);
            done(easy, (int)result, arg);
        }
    }
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    struct curlev *ce = arg;
    int flags = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(ce->multi, fd, flags, &ce->running);
    finish_done(ce);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct curlev *ce = arg;
    curl_multi_socket_action(ce->multi, CURL_SOCKET_TIMEOUT, 0, &ce->running);
    finish_done(ce);
}

static int socket_cb(CURL *easy, curl_socket_t s, int action, void *userp, void *socketp)
{
    struct curlev *ce = userp;
    struct event *ev = socketp;
    if (action == CURL_POLL_REMOVE) {
        if (ev != NULL) {
            event_free(ev);
            curl_multi_assign(ce->multi, s, NULL);
        }
        return 0;
    }
    short what = EV_PERSIST | ((action & CURL_POLL_IN) ? EV_READ : 0) |
                 ((action & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (ev != NULL) {
        event_del(ev);
        event_assign(ev, ce->base, s, what, on_socket_event, ce);
    } else {
        ev = event_new(ce->base, s, what, on_socket_event, ce);
        if (ev == NULL)
            return -1;
        curl_multi_assign(ce->multi, s, ev);
    }
    event_add(ev, NULL);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct curlev *ce = userp;
    if (timeout_ms < 0) {
        evtimer_del(ce->timer);
        return 0;
    }
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    evtimer_add(ce->timer, &tv);
    return 0;
}

struct curlev *curlev_new(struct event_base *base)
{
    struct curlev *ce = calloc(1, sizeof(*ce));
    if (ce == NULL)
        return NULL;
    ce->base = base;
    LIST_INIT(&ce->reqs);
    ce->multi = curl_multi_init();
    ce->timer = evtimer_new(base, on_timer, ce);
    if (ce->multi == NULL || ce->timer == NULL) {
        curlev_free(ce);
        return NULL;
    }
    curl_multi_setopt(ce->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(ce->multi, CURLMOPT_SOCKETDATA, ce);
    curl_multi_setopt(ce->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(ce->multi, CURLMOPT_TIMERDATA, ce);
    return ce;
}

void curlev_free(struct curlev *ce)
{
    if (ce == NULL)
        return;
    if (ce->multi != NULL) {
        /* Transfers still running are dropped with their state. */
        struct curlev_req *r;
        while ((r = LIST_FIRST(&ce->reqs)) != NULL) {
            LIST_REMOVE(r, link);
            curl_multi_remove_handle(ce->multi, r->easy);
            curl_easy_cleanup(r->easy);
            free(r);
        }
        curl_multi_cleanup(ce->multi);
    }
    if (ce->timer != NULL)
        event_free(ce->timer);
    free(ce);
}

int curlev_add(struct curlev *ce, CURL *easy, curlev_done_fn done, void *arg)
{
    struct curlev_req *r = malloc(sizeof(*r));
    if (r == NULL)
        return -1;
    r->easy = easy;
    r->done = done;
    r->arg = arg;
    curl_easy_setopt(easy, CURLOPT_PRIVATE, r);
    if (curl_multi_add_handle(ce->multi, easy) != CURLM_OK) {
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        free(r);
        return -1;
    }
    LIST_INSERT_HEAD(&ce->reqs, r, link);
    return 0;
}
