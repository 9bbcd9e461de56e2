/* common/log.c: formatting and emitting log lines; safe from any thread. */
#include "common/log.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile int log_threshold = LOG_LVL_INFO;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

int log_level_parse(const char *name)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (strcmp(name, level_names[i]) == 0)
            return (int)i;
    return -1;
}

void log_set_level(enum log_level lvl) { log_threshold = (int)lvl; }

const char *log_level_name(enum log_level lvl)
{
    return (unsigned)lvl < 4 ? level_names[lvl] : "?";
}

void log_vemit(enum log_level lvl, bool with_errno, const char *fmt, va_list ap)
{
    int saved = errno;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_level_name(lvl));
    if (n < 0)
        return;
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    if (with_errno)
        len += (size_t)snprintf(line + len, sizeof(line) - len, ": %s", strerror(saved));
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
    errno = saved;
}

void log_emit(enum log_level lvl, bool with_errno, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vemit(lvl, with_errno, fmt, ap);
    va_end(ap);
}

void fatalx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vemit(LOG_LVL_ERROR, false, fmt, ap);
    va_end(ap);
    exit(1);
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vemit(LOG_LVL_ERROR, true, fmt, ap);
    va_end(ap);
    exit(1);
}

void log_format_addr(const struct sockaddr_storage *peer, char *out, unsigned cap)
{
    char host[48], serv[8];
    if (getnameinfo((const struct sockaddr *)peer, sizeof(*peer), host, sizeof(host), serv,
                    sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV) == 0)
        snprintf(out, cap, "%s:%s", host, serv);
    else
        snprintf(out, cap, "?");
}

const char *log_escape(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    if (cap == 0)
        return "";
    if (s == NULL)
        s = "(null)";
    size_t o = 0, all = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        all += *p >= 0x20 && *p < 0x7f && *p != '\\' ? 1 : 4;
    bool cut = all >= cap;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        bool plain = *p >= 0x20 && *p < 0x7f && *p != '\\';
        size_t need = plain ? 1 : 4;
        /* When it does not all fit: room for this byte and for "...". */
        if (cut && cap >= 4 && o + need + 3 >= cap) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (o + need >= cap)
            break;
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return out;
}
