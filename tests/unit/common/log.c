/* tests/unit/common/log.c: log_escape, for strings a peer chose. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/log.h"

static void test_plain(void **state)
{
    char out[LOG_ESCAPED_MAX];
    assert_string_equal(log_escape("qemu-1.example:5900", out, sizeof(out)),
                        "qemu-1.example:5900");
    assert_string_equal(log_escape("", out, sizeof(out)), "");
    assert_string_equal(log_escape(NULL, out, sizeof(out)), "(null)");
}

static void test_controls(void **state)
{
    char out[LOG_ESCAPED_MAX];
    /* A newline would forge a second log line. */
    assert_string_equal(log_escape("h\n2026-01-01T00:00:00.000Z info forged", out, sizeof(out)),
                        "h\\x0a2026-01-01T00:00:00.000Z info forged");
    assert_string_equal(log_escape("a\rb\tc\x1b[31m\x7f", out, sizeof(out)),
                        "a\\x0db\\x09c\\x1b[31m\\x7f");
    assert_string_equal(log_escape("\xc3\xa9\\", out, sizeof(out)), "\\xc3\\xa9\\x5c");
}

static void test_bounded(void **state)
{
    char big[1000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char out[16];
    log_escape(big, out, sizeof(out));
    assert_int_equal(strlen(out), 15);
    assert_string_equal(out, "aaaaaaaaaaaa...");
    /* An escape is never cut in half. */
    memset(big, '\n', 100);
    big[100] = '\0';
    log_escape(big, out, sizeof(out));
    assert_string_equal(out, "\\x0a\\x0a\\x0a...");
    /* What fits exactly is not cut. */
    assert_string_equal(log_escape("123456789012345", out, sizeof(out)), "123456789012345");
    char tiny[2];
    assert_string_equal(log_escape("abc", tiny, sizeof(tiny)), "a");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_controls),
        cmocka_unit_test(test_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
