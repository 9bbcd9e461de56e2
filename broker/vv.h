/* broker/vv.h: spice-direct consoles (Nova API 2.99, [spice]
 * spice_direct_proxy_base_url): the virt-viewer connection file (.vv) the
 * browser port hands remote-viewer for a console token, pointing at this
 * broker's native port (and TLS port), the token as the SPICE password. */
#ifndef SB_VV_H
#define SB_VV_H

#include <stddef.h>
#include <stdint.h>

#include "proto/snap.h"

struct vv_config {
    const char *path;          /* the URL path served, "/nova" by default */
    const char *public_host;   /* host= in the file; NULL or "": the request's Host */
    uint16_t port;             /* the native port */
    uint16_t tls_port;         /* the TLS port, 0 = off */
    const char *ca_pem;        /* the CA clients verify the TLS port with, NULL = none */
    const char *host_subject;  /* host-subject=, NULL or "" = none */
};

/* The file's text (malloc'd, *len set) for token and its record; host is the
 * request's Host header (its port dropped). NULL if a value would need
 * characters a key file cannot carry plainly (a control character). */
char *vv_build(const struct vv_config *c, const char *host, const char *token,
               const struct snap_token *rec, size_t *len);

/* Reads a PEM file for ca_pem (malloc'd); NULL with *err. */
char *vv_read_ca(const char *path, const char **err);

#endif
