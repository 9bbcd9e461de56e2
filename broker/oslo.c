/* broker/oslo.c: oslo.config's file syntax and precedence for the nova.conf
 * options the broker takes (oslo_config/iniparser.py and cfg.py's
 * ConfigParser, _Namespace, --config-dir). Main thread, start-up only. */
#include "broker/oslo.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define OSLO_FILE_MAX (4u << 20)
#define OSLO_DIR_MAX 256u /* *.conf files read from one directory */

static int failf(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int failf(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return -1;
}

/* Python's str.isspace() for ASCII. */
static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* The assignment being read: its key, first line and value so far. */
struct assign {
    bool open;
    int lineno;
    char key[256];
    bool key_long;   /* the key did not fit: no wanted option has such a name */
    char value[OSLO_VALUE_MAX + 2];
    size_t len;
    bool value_long; /* more than OSLO_VALUE_MAX bytes */
};

static void value_add(struct assign *a, const char *s, size_t n, bool newline)
{
    size_t need = n + (newline ? 1 : 0);
    if (a->len + need > OSLO_VALUE_MAX) {
        a->value_long = true;
        return;
    }
    if (newline)
        a->value[a->len++] = '\n';
    memcpy(a->value + a->len, s, n);
    a->len += n;
    a->value[a->len] = '\0';
}

/* ConfigParser.assignment: files the value under the normalized section. */
static int flush(struct assign *a, const char *section, bool have_section, const char *name,
                 int file, int lineno, struct oslo_opt *opts, size_t n, char *err, size_t cap)
{
    a->open = false;
    if (!have_section)
        return failf(err, cap, "%s:%d: Section must be started before assignment", name,
                     lineno);
    if (a->key_long)
        return 0;
    /* _normalize_group_name: DEFAULT stays, anything else is lowercased */
    char norm[256];
    size_t i = 0;
    for (; section[i] != '\0' && i + 1 < sizeof(norm); i++)
        norm[i] = strcmp(section, "DEFAULT") == 0 || section[i] < 'A' || section[i] > 'Z'
                      ? section[i]
                      : (char)(section[i] - 'A' + 'a');
    norm[i] = '\0';
    for (size_t k = 0; k < n; k++) {
        struct oslo_opt *o = &opts[k];
        int prio = -1;
        if (strcmp(o->group, norm) == 0 && strcmp(o->name, a->key) == 0)
            prio = 1;
        else if (o->dep_group != NULL && strcmp(o->dep_group, norm) == 0 &&
                 strcmp(o->dep_name, a->key) == 0)
            prio = 0;
        if (prio < 0)
            continue;
        if (a->value_long)
            return failf(err, cap, "%s:%d: the value of %s is too long (max %u bytes)", name,
                         a->lineno, a->key, OSLO_VALUE_MAX);
        if (o->set && (file < o->file || (file == o->file && prio < o->prio)))
            continue;
        o->set = true;
        o->file = file;
        o->prio = prio;
        memcpy(o->value, a->value, a->len + 1);
        snprintf(o->where, sizeof(o->where), "%s:%d", name, a->lineno);
    }
    return 0;
}

int oslo_parse(const char *text, const char *name, int file, struct oslo_opt *opts, size_t n,
               char *err, size_t errcap)
{
    static struct assign a; /* start-up, main thread: too big for the stack */
    char section[256] = "";
    bool have_section = false;
    int lineno = 0;
    memset(&a, 0, sizeof(a));
    for (const char *p = text; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        const char *line = p;
        p += len + (nl != NULL ? 1 : 0);
        lineno++;
        while (len > 0 && is_space(line[len - 1])) /* line.rstrip() */
            len--;
        if (len == 0) { /* a blank line ends a multi-line value */
            if (a.open && flush(&a, section, have_section, name, file, lineno, opts, n, err,
                                errcap) < 0)
                return -1;
            continue;
        }
        if (line[0] == ' ' || line[0] == '\t') {
            if (!a.open)
                return failf(err, errcap, "%s:%d: Unexpected continuation line", name, lineno);
            size_t s = 0;
            while (is_space(line[s])) /* line.lstrip() */
                s++;
            value_add(&a, line + s, len - s, true);
            continue;
        }
        if (a.open && flush(&a, section, have_section, name, file, lineno, opts, n, err,
                            errcap) < 0)
            return -1;
        if (line[0] == '[') {
            if (line[len - 1] != ']')
                return failf(err, errcap, "%s:%d: Invalid section (must end with ])", name,
                             lineno);
            if (len <= 2)
                return failf(err, errcap, "%s:%d: Empty section name", name, lineno);
            if (len - 2 >= sizeof(section))
                return failf(err, errcap, "%s:%d: section name too long", name, lineno);
            memcpy(section, line + 1, len - 2);
            section[len - 2] = '\0';
            have_section = true;
            continue;
        }
        if (line[0] == '#' || line[0] == ';')
            continue;
        /* _split_key_value: the first of ':' and '=' */
        const char *colon = memchr(line, ':', len), *equal = memchr(line, '=', len);
        if (colon == NULL && equal == NULL)
            return failf(err, errcap, "%s:%d: No ':' or '=' found in assignment", name, lineno);
        const char *sep = colon == NULL || (equal != NULL && equal < colon) ? equal : colon;
        size_t ks = 0, ke = (size_t)(sep - line);
        while (ks < ke && is_space(line[ks]))
            ks++;
        while (ke > ks && is_space(line[ke - 1]))
            ke--;
        if (ke == ks)
            return failf(err, errcap, "%s:%d: Key cannot be empty", name, lineno);
        size_t vs = (size_t)(sep - line) + 1, ve = len;
        while (vs < ve && is_space(line[vs]))
            vs++;
        if (ve > vs && (line[vs] == '"' || line[vs] == '\'') && line[ve - 1] == line[vs]) {
            /* value[1:-1]: a lone quote becomes "" */
            vs++;
            ve = ve > vs ? ve - 1 : vs;
        }
        memset(&a, 0, offsetof(struct assign, value));
        a.open = true;
        a.lineno = lineno;
        a.key_long = ke - ks >= sizeof(a.key);
        if (!a.key_long) {
            memcpy(a.key, line + ks, ke - ks);
            a.key[ke - ks] = '\0';
        }
        a.len = 0;
        a.value[0] = '\0';
        value_add(&a, line + vs, ve - vs, false);
    }
    if (a.open && flush(&a, section, have_section, name, file, lineno, opts, n, err, errcap) < 0)
        return -1;
    return 0;
}

int oslo_read_file(const char *path, int file, struct oslo_opt *opts, size_t n, char *err,
                   size_t errcap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return failf(err, errcap, "cannot open %s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return failf(err, errcap, "cannot read %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)OSLO_FILE_MAX) {
        close(fd);
        return S_ISREG(st.st_mode)
                   ? failf(err, errcap, "%s is too large (max %u bytes)", path, OSLO_FILE_MAX)
                   : failf(err, errcap, "%s is not a regular file", path);
    }
    char *text = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (text != NULL && got < (size_t)st.st_size) {
        ssize_t r = read(fd, text + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    int e = errno;
    close(fd);
    if (text == NULL || got != (size_t)st.st_size) {
        free(text);
        return failf(err, errcap, "cannot read %s: %s", path,
                     text == NULL ? "out of memory" : strerror(e));
    }
    text[got] = '\0';
    int rc = 0;
    if (memchr(text, '\0', got) != NULL)
        rc = failf(err, errcap, "%s: NUL byte in the file", path);
    else
        rc = oslo_parse(text, path, file, opts, n, err, errcap);
    free(text);
    return rc;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int oslo_read_dir(const char *dir, int *file, struct oslo_opt *opts, size_t n, char *err,
                  size_t errcap)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return failf(err, errcap, "cannot read config directory %s: %s", dir, strerror(errno));
    char *names[OSLO_DIR_MAX];
    size_t k = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        /* glob("*.conf"): '*' matches no leading '.' */
        if (e->d_name[0] == '.' || l < 5 || strcmp(e->d_name + l - 5, ".conf") != 0)
            continue;
        if (k == OSLO_DIR_MAX) {
            rc = failf(err, errcap, "%s: more than %u *.conf files", dir, OSLO_DIR_MAX);
            break;
        }
        size_t need = strlen(dir) + 1 + l + 1;
        if ((names[k] = malloc(need)) == NULL) {
            rc = failf(err, errcap, "%s: out of memory", dir);
            break;
        }
        snprintf(names[k++], need, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    qsort(names, k, sizeof(names[0]), name_cmp);
    for (size_t i = 0; i < k; i++) {
        if (rc == 0)
            rc = oslo_read_file(names[i], (*file)++, opts, n, err, errcap);
        free(names[i]);
    }
    return rc;
}

int oslo_bool(const char *s)
{
    static const char *const yes[] = { "1", "t", "true", "on", "y", "yes" };
    static const char *const no[] = { "0", "f", "false", "off", "n", "no" };
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return 1;
        if (strcasecmp(s, no[i]) == 0)
            return 0;
    }
    return -1;
}
