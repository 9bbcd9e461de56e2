/* migrate/handover.h: the migration engine: the broker playing spice-gtk's
 * part of SPICE seamless migration toward the source and the destination
 * QEMU, hidden from the client (migrate/handover.c; rules in mig.h). It works
 * on session/'s channels and backend legs, which reach it only through the
 * hook table below: the broker hands it to its workers in
 * session_env.migration. Everything runs on the loop that owns the session. */
#ifndef SB_HANDOVER_H
#define SB_HANDOVER_H

#include <stdbool.h>
#include <stdint.h>

struct session_hooks;
struct session_worker;

/* The engine's hooks (struct session_hooks, session/internal.h). */
extern const struct session_hooks handover_hooks;

/* Links every channel of the sessions of `instance` on this worker to a
 * migration destination in advance (PROTOCOL.md 9.11), at its plain or
 * secure port (tls_port, 0 = none) as --backend-tls decides. cb(arg, ok, why) is
 * called once per session when its destination has acknowledged or failed;
 * returns the number of sessions being prepared. A session whose backend is
 * already host at that port is left alone (not counted). Worker loop only. */
typedef void (*handover_prepare_cb)(void *arg, bool ok, const char *why);
int handover_prepare(struct session_worker *w, const char *instance, const char *host,
                     uint16_t port, uint16_t tls_port, const char *password,
                     handover_prepare_cb cb, void *arg);

#endif
