/* tests/unit/broker/journal.c: the session journal (broker/journal.c): a
 * round trip, a missing file, unreadable lines, a foreign file, removal;
 * single-threaded, files in a mkdtemp directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker/journal.h"

static char dir[64], path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sb-journal-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path, sizeof(path), "%s/journal", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    rmdir(dir);
    return 0;
}

static struct snap_session rec(uint32_t id, const char *reason)
{
    struct snap_session s;

    memset(&s, 0, sizeof(s));
    s.id = id;
    snprintf(s.broker, sizeof(s.broker), "a");
    snprintf(s.backend_host, sizeof(s.backend_host), "127.0.0.1");
    s.backend_port = 5900;
    s.started = 1700000000;
    s.ended = 1700000100;
    snprintf(s.end_reason, sizeof(s.end_reason), "%s", reason);
    return s;
}

static void test_round_trip(void **state)
{
    struct snap_session in[3] = { rec(1, "client closed"), rec(2, "broker shutting down"),
                                  rec(0xdeadbeef, "") };
    struct snap_session *out = NULL;
    size_t n = 0, bad = 0;
    const char *err = NULL;
    struct stat st;

    (void)state;
    assert_int_equal(journal_write(path, in, 3, &err), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(journal_read(path, &out, &n, &bad, &err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(bad, 0);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(out[i].id, in[i].id);
        assert_string_equal(out[i].end_reason, in[i].end_reason);
        assert_int_equal(out[i].ended, in[i].ended);
        assert_int_equal(out[i].backend_port, 5900);
    }
    free(out);
    /* replaced whole */
    assert_int_equal(journal_write(path, in, 1, &err), 0);
    assert_int_equal(journal_read(path, &out, &n, &bad, &err), 0);
    assert_int_equal(n, 1);
    free(out);
    assert_int_equal(journal_remove(path, &err), 0);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(journal_remove(path, &err), 0);    /* missing: fine */
}

static void test_missing(void **state)
{
    struct snap_session *out = (void *)1;
    size_t n = 9, bad = 9;
    const char *err = NULL;

    (void)state;
    assert_int_equal(journal_read(path, &out, &n, &bad, &err), 0);
    assert_null(out);
    assert_int_equal(n, 0);
    assert_int_equal(bad, 0);
}

static void test_bad_lines(void **state)
{
    struct snap_session in[1] = { rec(7, "x") };
    struct snap_session *out = NULL;
    size_t n = 0, bad = 0;
    const char *err = NULL;
    FILE *f;

    (void)state;
    assert_int_equal(journal_write(path, in, 1, &err), 0);
    assert_non_null(f = fopen(path, "a"));
    fputs("not base64!\nAAAA\n\n", f);
    fclose(f);
    assert_int_equal(journal_read(path, &out, &n, &bad, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(bad, 2);
    assert_int_equal(out[0].id, 7);
    free(out);

    /* not a journal at all: refused, left alone */
    assert_non_null(f = fopen(path, "w"));
    fputs("something else\n", f);
    fclose(f);
    out = NULL;
    assert_int_equal(journal_read(path, &out, &n, &bad, &err), -1);
    assert_non_null(strstr(err, "not a spice-broker session journal"));
    assert_null(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_lines, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
