/* tests/unit/broker/upgrade.c: the new process's side of the hand-over
 * (broker/upgrade.c, upgrade_adopt): a thread plays the old process on a
 * SOCK_SEQPACKET pair; the descriptors that ride beside its messages are
 * each closed exactly once, whether held (listeners) or not (a DONE that
 * carries some). Checked through pipes: a write end the test no longer
 * holds reads as closed (EOF) only once every copy is closed. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker/broker.h"
#include "broker/upgrade.h"

/* main.c's, which the library's admin and upgrade code call; not reached here. */
void broker_publish_session(struct broker *b, const void *rec)
{
    (void)b, (void)rec;
}
void broker_set_draining(struct broker *b, bool draining)
{
    (void)b, (void)draining;
}
int broker_store_put(struct broker *b, const char *key, const void *val, size_t len,
                     broker_write_done_fn done, void *arg)
{
    (void)b, (void)key, (void)val, (void)len, (void)done, (void)arg;
    return -1;
}
int broker_store_put_if(struct broker *b, const char *key, const void *val, size_t len,
                        int64_t expect_rev, broker_write_done_fn done, void *arg)
{
    (void)b, (void)key, (void)val, (void)len, (void)expect_rev, (void)done, (void)arg;
    return -1;
}
int broker_store_delete(struct broker *b, const char *key, broker_write_done_fn done, void *arg)
{
    (void)b, (void)key, (void)done, (void)arg;
    return -1;
}

struct old_side {
    int fd;
    int listener_fds[2];    /* write ends sent as listeners */
    int done_fd;            /* a write end sent beside DONE */
    int ok;
};


static void *old_main(void *arg)
{
    struct old_side *o = arg;
    struct snap_handover *h = calloc(1, sizeof(*h));
    uint8_t buf[4096];
    if (h == NULL)
        return NULL;
    h->type = SNAP_HO_HELLO;
    h->pid = 4242;
    h->workers = 1;
    snprintf(h->version, sizeof(h->version), "test");
    if (upgrade_send(o->fd, h, NULL, 0) < 0 || recv(o->fd, buf, sizeof(buf), 0) <= 0)
        goto out;
    memset(h, 0, sizeof(*h));
    h->type = SNAP_HO_LISTENERS;
    h->n_listeners = 2;
    h->listeners[0] = (struct snap_listener){ SNAP_LISTEN_NATIVE, 0 };
    h->listeners[1] = (struct snap_listener){ SNAP_LISTEN_ADMIN, 0 };
    if (upgrade_send(o->fd, h, o->listener_fds, 2) < 0)
        goto out;
    memset(h, 0, sizeof(*h));
    h->type = SNAP_HO_DONE;
    if (upgrade_send(o->fd, h, &o->done_fd, 1) < 0)
        goto out;
    o->ok = 1;
out:
    free(h);
    return NULL;
}

/* Reads as closed: no write end left anywhere. */
static bool closed_everywhere(int rd)
{
    char c;
    return read(rd, &c, 1) == 0;
}

static void test_done_with_fds(void **state)
{
    (void)state;
    int sv[2], p[3][2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pipe2(p[i], O_NONBLOCK | O_CLOEXEC), 0);
    char env[16];
    snprintf(env, sizeof(env), "%d", sv[1]);
    setenv(UPGRADE_FD_ENV, env, 1);
    struct old_side o = { sv[0], { p[0][1], p[1][1] }, p[2][1], 0 };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, old_main, &o), 0);
    const char *err = NULL;
    struct upgrade *u = upgrade_adopt(&err);
    pthread_join(th, NULL);
    assert_int_equal(o.ok, 1);
    assert_non_null(u);
    assert_null(err);
    /* The test's own copies of the write ends go: only upgrade_adopt's remain. */
    for (int i = 0; i < 3; i++)
        close(p[i][1]);
    /* The one beside DONE is not kept. */
    assert_true(closed_everywhere(p[2][0]));
    /* The listeners are held, until taken or freed. */
    assert_false(closed_everywhere(p[0][0]));
    assert_false(closed_everywhere(p[1][0]));
    int fd = upgrade_take_fd(u, SNAP_LISTEN_ADMIN, 0);
    assert_true(fd >= 0);
    close(fd);
    assert_true(closed_everywhere(p[1][0]));
    upgrade_free(u);
    assert_true(closed_everywhere(p[0][0]));
    for (int i = 0; i < 3; i++)
        close(p[i][0]);
    close(sv[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_done_with_fds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
