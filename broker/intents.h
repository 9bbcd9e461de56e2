/* broker/intents.h: migration intents from the store. A compute host
 * announces an incoming live migration by writing an intent under
 * /spice-broker/<zone>/migrations/<instance> (spice-brokerctl migration
 * prepare --store, the libvirt hook) instead of calling a broker; every
 * broker of the zone watches that prefix, and the one with live sessions of
 * the instance prepares them (broker/prepare.h) as the admin prepare would.
 * Control loop only. */
#ifndef SB_INTENTS_H
#define SB_INTENTS_H

struct broker;
struct intents;

/* Starts watching b->store (the workers must be running: intents already
 * in the store are looked at once the control loop runs). NULL when out of
 * memory (logged). */
struct intents *intents_new(struct broker *b);
/* Stops watching and forgets prepares in flight (their sessions keep the
 * destination); before the workers and the store go. NULL is a no-op. */
void intents_free(struct intents *it);

#endif
