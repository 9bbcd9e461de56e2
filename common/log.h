/* common/log.h: one-line-per-event logging shared by every module and thread.
 *
 * Shape after OpenBSD's log.c: log_warn() appends strerror(errno), log_warnx()
 * does not. Every line goes to stderr as a single write(2), so lines from
 * different workers never interleave. Lines about a session start with
 * "sid=<hex>" (see log_sid()); never pass a token or password to these. */
#ifndef SB_LOG_H
#define SB_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Current threshold; lines above it cost one comparison (checked in the macros). */
extern volatile int log_threshold;

/* Parses "error|warn|info|debug"; returns -1 on an unknown name. */
int log_level_parse(const char *name);
void log_set_level(enum log_level lvl);
const char *log_level_name(enum log_level lvl);

void log_emit(enum log_level lvl, bool with_errno, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vemit(enum log_level lvl, bool with_errno, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* A peer address as "ip:port" for log lines ("?" if it cannot be told). */
struct sockaddr_storage;
void log_format_addr(const struct sockaddr_storage *peer, char *out, unsigned cap);

/* A string a peer chose (a backend host or an instance from an admin
 * request, a header, a record from Nova), made safe for one log line:
 * copied into out (cap bytes, always NUL-terminated) with control
 * characters, '\\' and every byte outside printable ASCII written as \xNN,
 * and cut with "..." when it does not fit. NULL is written "(null)".
 * Returns out, so it can be an argument of the log call itself. */
#define LOG_ESCAPED_MAX 260
const char *log_escape(const char *s, char *out, size_t cap);

_Noreturn void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define LOG_AT(lvl, err, ...) \
    do { if ((int)(lvl) <= log_threshold) log_emit((lvl), (err), __VA_ARGS__); } while (0)
#define log_warn(...)  LOG_AT(LOG_LVL_WARN, true, __VA_ARGS__)
#define log_warnx(...) LOG_AT(LOG_LVL_WARN, false, __VA_ARGS__)
#define log_error(...) LOG_AT(LOG_LVL_ERROR, false, __VA_ARGS__)
#define log_info(...)  LOG_AT(LOG_LVL_INFO, false, __VA_ARGS__)
#define log_debug(...) LOG_AT(LOG_LVL_DEBUG, false, __VA_ARGS__)

#endif
