/* broker/oslo.h: reading the few nova.conf options the broker takes the way
 * oslo.config (and so nova-spicehtml5proxy) reads them: its iniparser's
 * syntax, its section-name rules, deprecated names, and --config-file /
 * --config-dir precedence (later files win). Main thread, start-up only. */
#ifndef SB_OSLO_H
#define SB_OSLO_H

#include <stdbool.h>
#include <stddef.h>

#define OSLO_VALUE_MAX 4096u /* a wanted value longer than this is an error */

/* One option the caller wants, and what the files said about it. */
struct oslo_opt {
    const char *group;     /* "DEFAULT", or a group name in lowercase */
    const char *name;      /* compared exactly, as oslo.config does */
    const char *dep_group; /* a deprecated group + name also read, or NULL */
    const char *dep_name;
    /* Filled in by oslo_parse: */
    bool set;
    char value[OSLO_VALUE_MAX + 1];
    char where[600];       /* "FILE:LINE" of the value, for error lines */
    int file, prio;        /* precedence: which file, current or deprecated name */
};

/* Parses text (NUL-terminated: the contents of the file called `name`, the
 * `file`th one read) as oslo.config does, and stores into opts[0..n) the
 * values of the options they name. Syntax: "[section]" lines (the text
 * between the brackets is the name, untrimmed; "DEFAULT" is itself, other
 * names compare lowercased), "key = value" or "key: value" (the first of '='
 * and ':' splits; key and value trimmed; a value wholly in matching quotes
 * loses them), '#' or ';' comments at the start of a line only, a line
 * starting with a space or tab continuing the value above (joined with
 * "\n"), a blank line ending one. A value set in a later file (a greater
 * `file`) wins; in one file, the last assignment wins, and the current name
 * over the deprecated one. Returns 0, or -1 with "NAME:LINE: reason" in
 * err: oslo.config's parse errors, an assignment before any section, a NUL
 * byte, a wanted value longer than OSLO_VALUE_MAX. */
int oslo_parse(const char *text, const char *name, int file, struct oslo_opt *opts, size_t n,
               char *err, size_t errcap);

/* Reads the file at path and oslo_parse()s it as the `file`th one. Returns 0,
 * or -1 with a reason in err (cannot open or read it, not a regular file, over
 * 4 MiB, or a parse error). */
int oslo_read_file(const char *path, int file, struct oslo_opt *opts, size_t n, char *err,
                   size_t errcap);

/* oslo.config's --config-dir: every "*.conf" in dir (not hidden ones), in
 * sorted order, read with oslo_read_file as files *file, *file + 1, ...
 * (*file is advanced). Returns 0, or -1 with a reason in err (no such
 * directory, or a file's error). */
int oslo_read_dir(const char *dir, int *file, struct oslo_opt *opts, size_t n, char *err,
                  size_t errcap);

/* oslo.config's Boolean: 1/t/true/on/y/yes or 0/f/false/off/n/no, any case.
 * Returns 1, 0, or -1 for anything else. */
int oslo_bool(const char *s);

#endif
