/* tests/unit/broker/oslo.c: cmocka tests for broker/oslo.c (oslo.config's
 * file syntax, section and deprecated-name rules, file and directory
 * precedence, its booleans); single-threaded, files in a mkdtemp directory. */
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

#include "broker/oslo.h"

enum { HOST, PORT, ORIGINS, WEB, N };

static struct oslo_opt opts[N];
static char err[1024];

static void
reset(void)
{
    memset(opts, 0, sizeof(opts));
    opts[HOST] = (struct oslo_opt){ .group = "spice", .name = "html5proxy_host" };
    opts[PORT] = (struct oslo_opt){ .group = "spice", .name = "html5proxy_port" };
    opts[ORIGINS] = (struct oslo_opt){ .group = "console", .name = "allowed_origins",
                                       .dep_group = "DEFAULT",
                                       .dep_name = "console_allowed_origins" };
    opts[WEB] = (struct oslo_opt){ .group = "DEFAULT", .name = "web" };
    err[0] = '\0';
}

/* Parses text as file 0 of "nova.conf" into fresh opts; returns rc. */
static int
parse(const char *text)
{
    reset();
    return oslo_parse(text, "nova.conf", 0, opts, N, err, sizeof(err));
}

static void
expect_error(const char *text, const char *want)
{
    assert_int_equal(parse(text), -1);
    if (strcmp(err, want) != 0)
        fail_msg("%s: got '%s', want '%s'", text, err, want);
}

static void
test_syntax(void **state)
{
    (void)state;
    /* '=' and ':', whitespace, the first separator splits */
    assert_int_equal(parse("[spice]\nhtml5proxy_host=10.0.0.1\nhtml5proxy_port :  6082  \n"), 0);
    assert_true(opts[HOST].set);
    assert_string_equal(opts[HOST].value, "10.0.0.1");
    assert_string_equal(opts[HOST].where, "nova.conf:2");
    assert_string_equal(opts[PORT].value, "6082");
    assert_false(opts[ORIGINS].set);
    assert_int_equal(parse("[DEFAULT]\nweb: /a=b:c\n"), 0);
    assert_string_equal(opts[WEB].value, "/a=b:c");
    assert_int_equal(parse("[DEFAULT]\n  \t\nweb = x:y\n"), 0);
    assert_string_equal(opts[WEB].value, "x:y");
    assert_int_equal(parse("[DEFAULT]\nweb ==x\n"), 0);
    assert_string_equal(opts[WEB].value, "=x");
    assert_int_equal(parse("[DEFAULT]\nweb =\n"), 0);
    assert_true(opts[WEB].set);
    assert_string_equal(opts[WEB].value, "");
    /* quotes: only a value wholly in one kind */
    assert_int_equal(parse("[DEFAULT]\nweb = \"/srv/a b\"\n"), 0);
    assert_string_equal(opts[WEB].value, "/srv/a b");
    assert_int_equal(parse("[DEFAULT]\nweb = '/srv'\n"), 0);
    assert_string_equal(opts[WEB].value, "/srv");
    assert_int_equal(parse("[DEFAULT]\nweb = \"/srv'\n"), 0);
    assert_string_equal(opts[WEB].value, "\"/srv'");
    assert_int_equal(parse("[DEFAULT]\nweb = \"\n"), 0);
    assert_string_equal(opts[WEB].value, "");
    /* comments at a line's start only; an inline '#' is part of the value */
    assert_int_equal(parse("# c\n; c\n[DEFAULT]\n#web = no\nweb = /srv # not a comment\n"), 0);
    assert_string_equal(opts[WEB].value, "/srv # not a comment");
    /* CRLF line ends, no final newline */
    assert_int_equal(parse("[DEFAULT]\r\nweb = /srv\r\n[spice]\r\nhtml5proxy_port = 1"), 0);
    assert_string_equal(opts[WEB].value, "/srv");
    assert_string_equal(opts[PORT].value, "1");
    /* keys compare exactly */
    assert_int_equal(parse("[DEFAULT]\nWEB = /srv\nweb-x = 1\n"), 0);
    assert_false(opts[WEB].set);
}

static void
test_continuation(void **state)
{
    (void)state;
    /* lines starting with a space or tab continue the value, joined with \n */
    assert_int_equal(parse("[console]\nallowed_origins = a,\n  b ,\n\tc\n[x]\n"), 0);
    assert_string_equal(opts[ORIGINS].value, "a,\nb ,\nc");
    assert_string_equal(opts[ORIGINS].where, "nova.conf:2");
    /* a blank line ends it: an indented line after it has nothing to continue */
    expect_error("[console]\nallowed_origins = a\n\n  b\n",
                 "nova.conf:4: Unexpected continuation line");
    /* a comment line ends it too */
    expect_error("[console]\nallowed_origins = a\n# c\n  b\n",
                 "nova.conf:4: Unexpected continuation line");
    expect_error("  [DEFAULT]\n", "nova.conf:1: Unexpected continuation line");
    expect_error("[DEFAULT]\n  web = x\n", "nova.conf:2: Unexpected continuation line");
    /* an indented '#' line continues a value (it is no comment) */
    assert_int_equal(parse("[DEFAULT]\nweb = a\n  # b\n"), 0);
    assert_string_equal(opts[WEB].value, "a\n# b");
    /* an empty first line */
    assert_int_equal(parse("[DEFAULT]\nweb =\n  /srv\n"), 0);
    assert_string_equal(opts[WEB].value, "\n/srv");
}

static void
test_sections(void **state)
{
    (void)state;
    /* group names other than DEFAULT are lowercased; DEFAULT is exact */
    assert_int_equal(parse("[SPICE]\nhtml5proxy_host = h\n[default]\nweb = /no\n"), 0);
    assert_string_equal(opts[HOST].value, "h");
    assert_false(opts[WEB].set);
    /* the name between brackets is not trimmed */
    assert_int_equal(parse("[ spice ]\nhtml5proxy_host = h\n"), 0);
    assert_false(opts[HOST].set);
    /* other sections' keys, and [DEFAULT] is no fallback for a group */
    assert_int_equal(parse("[DEFAULT]\nhtml5proxy_host = h\n[vnc]\nweb = x\n"), 0);
    assert_false(opts[HOST].set);
    assert_false(opts[WEB].set);
    expect_error("web = /srv\n", "nova.conf:1: Section must be started before assignment");
    expect_error("[DEFAULT\n", "nova.conf:1: Invalid section (must end with ])");
    expect_error("[DEFAULT] # x\n", "nova.conf:1: Invalid section (must end with ])");
    expect_error("[]\n", "nova.conf:1: Empty section name");
    expect_error("[DEFAULT]\nweb\n", "nova.conf:2: No ':' or '=' found in assignment");
    expect_error("[DEFAULT]\n = x\n", "nova.conf:2: Unexpected continuation line");
    expect_error("[DEFAULT]\n= x\n", "nova.conf:2: Key cannot be empty");
    expect_error("[DEFAULT]\n:x\n", "nova.conf:2: Key cannot be empty");
}

static void
test_precedence(void **state)
{
    (void)state;
    /* in one file the last assignment wins */
    assert_int_equal(parse("[DEFAULT]\nweb = a\n[spice]\nx = 1\n[DEFAULT]\nweb = b\n"), 0);
    assert_string_equal(opts[WEB].value, "b");
    assert_string_equal(opts[WEB].where, "nova.conf:6");
    /* the current name beats the deprecated one in the same file, either order */
    assert_int_equal(parse("[console]\nallowed_origins = new\n"
                           "[DEFAULT]\nconsole_allowed_origins = old\n"), 0);
    assert_string_equal(opts[ORIGINS].value, "new");
    assert_int_equal(parse("[DEFAULT]\nconsole_allowed_origins = old\n"), 0);
    assert_string_equal(opts[ORIGINS].value, "old");
    /* a later file wins, even with the deprecated name */
    reset();
    assert_int_equal(oslo_parse("[console]\nallowed_origins = first\n[DEFAULT]\nweb = w\n", "a",
                                0, opts, N, err, sizeof(err)), 0);
    assert_int_equal(oslo_parse("[DEFAULT]\nconsole_allowed_origins = second\n", "b", 1, opts,
                                N, err, sizeof(err)), 0);
    assert_string_equal(opts[ORIGINS].value, "second");
    assert_string_equal(opts[ORIGINS].where, "b:2");
    assert_string_equal(opts[WEB].value, "w"); /* untouched by b */
}

static void
test_limits(void **state)
{
    static char text[OSLO_VALUE_MAX + 64];
    (void)state;
    /* an unwanted long value is fine; a wanted one is an error */
    snprintf(text, sizeof(text), "[DEFAULT]\nother = %0*d\n", (int)OSLO_VALUE_MAX, 0);
    assert_int_equal(parse(text), 0);
    snprintf(text, sizeof(text), "[DEFAULT]\nweb = %0*d\n", (int)OSLO_VALUE_MAX, 0);
    assert_int_equal(parse(text), 0);
    assert_int_equal(strlen(opts[WEB].value), OSLO_VALUE_MAX);
    snprintf(text, sizeof(text), "[DEFAULT]\nweb = %0*d\n", (int)OSLO_VALUE_MAX + 1, 0);
    expect_error(text, "nova.conf:2: the value of web is too long (max 4096 bytes)");
    snprintf(text, sizeof(text), "[DEFAULT]\nweb = %0*d\n  x\n", (int)OSLO_VALUE_MAX - 1, 0);
    expect_error(text, "nova.conf:2: the value of web is too long (max 4096 bytes)");
}

static char dir[64];

static void
put(const char *name, const char *text, mode_t mode)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(p, mode), 0);
}

static void
test_files(void **state)
{
    char p[256], sub[128];
    int file = 0;
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sb-oslo-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(sub, sizeof(sub), "%s/nova.conf.d", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    put("nova.conf", "[DEFAULT]\nweb = /main\n[spice]\nhtml5proxy_port = 1\n", 0600);
    put("nova.conf.d/20-b.conf", "[DEFAULT]\nweb = /b\n", 0600);
    put("nova.conf.d/10-a.conf", "[DEFAULT]\nweb = /a\n[spice]\nhtml5proxy_port = 2\n", 0600);
    put("nova.conf.d/30-c.conf.bak", "[DEFAULT]\nweb = /bak\n", 0600);
    put("nova.conf.d/.99-hidden.conf", "[DEFAULT]\nweb = /hidden\n", 0600);

    reset();
    snprintf(p, sizeof(p), "%s/nova.conf", dir);
    assert_int_equal(oslo_read_file(p, file++, opts, N, err, sizeof(err)), 0);
    assert_int_equal(oslo_read_dir(sub, &file, opts, N, err, sizeof(err)), 0);
    assert_int_equal(file, 3);
    assert_string_equal(opts[WEB].value, "/b");
    assert_string_equal(opts[PORT].value, "2");
    snprintf(p, sizeof(p), "%s/nova.conf.d/10-a.conf:4", dir);
    assert_string_equal(opts[PORT].where, p);

    /* errors: a missing file or directory, a directory as a file, a parse
     * error in the directory, an unreadable file, a NUL byte */
    reset();
    snprintf(p, sizeof(p), "%s/missing.conf", dir);
    assert_int_equal(oslo_read_file(p, 0, opts, N, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cannot open"));
    assert_non_null(strstr(err, "No such file"));
    assert_int_equal(oslo_read_dir(p, &file, opts, N, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cannot read config directory"));
    assert_int_equal(oslo_read_file(sub, 0, opts, N, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "is not a regular file"));
    put("nova.conf.d/40-bad.conf", "[DEFAULT\n", 0600);
    assert_int_equal(oslo_read_dir(sub, &file, opts, N, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "40-bad.conf:1: Invalid section"));
    snprintf(p, sizeof(p), "%s/nova.conf.d/40-bad.conf", dir);
    unlink(p);
    if (geteuid() != 0) {
        put("locked.conf", "[DEFAULT]\n", 0000);
        snprintf(p, sizeof(p), "%s/locked.conf", dir);
        assert_int_equal(oslo_read_file(p, 0, opts, N, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "Permission denied"));
        unlink(p);
    }
    snprintf(p, sizeof(p), "%s/nul.conf", dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fwrite("[DEFAULT]\nweb = a\0b\n", 1, 20, f);
    fclose(f);
    assert_int_equal(oslo_read_file(p, 0, opts, N, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "NUL byte"));
    unlink(p);

    const char *names[] = { "nova.conf.d/20-b.conf", "nova.conf.d/10-a.conf",
                            "nova.conf.d/30-c.conf.bak", "nova.conf.d/.99-hidden.conf",
                            "nova.conf" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(sub);
    rmdir(dir);
}

static void
test_bool(void **state)
{
    (void)state;
    const char *yes[] = { "1", "t", "true", "TRUE", "On", "y", "yes" };
    const char *no[] = { "0", "f", "False", "off", "n", "NO" };
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        assert_int_equal(oslo_bool(yes[i]), 1);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        assert_int_equal(oslo_bool(no[i]), 0);
    assert_int_equal(oslo_bool(""), -1);
    assert_int_equal(oslo_bool("2"), -1);
    assert_int_equal(oslo_bool("truee"), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_continuation),
        cmocka_unit_test(test_sections),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_bool),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
