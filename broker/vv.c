/* broker/vv.c: the .vv file for spice-direct consoles (see vv.h). The format
 * is virt-viewer's: a GLib key file with a [virt-viewer] group, string values
 * escaped as GKeyFile escapes them (the CA's newlines as \n). */
#include "broker/vv.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VV_CA_MAX (64 * 1024)

/* A value as GKeyFile writes it: backslash, newline, tab, CR escaped; a
 * leading space as \s. false for other control characters. */
static bool put_value(FILE *f, const char *key, const char *v)
{
    fprintf(f, "%s=", key);
    for (const char *p = v; *p != '\0'; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '\\')
            fputs("\\\\", f);
        else if (ch == '\n')
            fputs("\\n", f);
        else if (ch == '\r')
            fputs("\\r", f);
        else if (ch == '\t')
            fputs("\\t", f);
        else if (ch == ' ' && p == v)
            fputs("\\s", f);
        else if (ch < 0x20 || ch == 0x7f)
            return false;
        else
            fputc(ch, f);
    }
    fputc('\n', f);
    return true;
}

char *vv_build(const struct vv_config *c, const char *host, const char *token,
               const struct snap_token *rec, size_t *len)
{
    char h[SNAP_MAX_HOST + 8];
    if (c->public_host != NULL && c->public_host[0] != '\0') {
        snprintf(h, sizeof(h), "%s", c->public_host);
    } else if (host[0] == '[') { /* [v6]:port */
        const char *e = strchr(host, ']');
        snprintf(h, sizeof(h), "%.*s", e ? (int)(e - host - 1) : 0, host + 1);
    } else {
        snprintf(h, sizeof(h), "%.*s", (int)strcspn(host, ":"), host);
    }
    if (h[0] == '\0')
        return NULL;
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    if (f == NULL)
        return NULL;
    bool ok = true;
    fputs("[virt-viewer]\ntype=spice\n", f);
    ok &= put_value(f, "host", h);
    fprintf(f, "port=%u\n", c->port);
    if (c->tls_port != 0) {
        /* The password travels in this file: every channel over TLS. */
        fprintf(f, "tls-port=%u\nsecure-channels=all\n", c->tls_port);
        if (c->ca_pem != NULL)
            ok &= put_value(f, "ca", c->ca_pem);
        if (c->host_subject != NULL && c->host_subject[0] != '\0')
            ok &= put_value(f, "host-subject", c->host_subject);
    }
    ok &= put_value(f, "password", token);
    fputs("delete-this-file=1\n", f);
    char title[SNAP_MAX_INSTANCE + 32];
    snprintf(title, sizeof(title), "%s%s", rec->instance[0] ? "Console of " : "Console",
             rec->instance);
    ok &= put_value(f, "title", title);
    if (fclose(f) != 0 || !ok) {
        free(out);
        return NULL;
    }
    *len = n;
    return out;
}

char *vv_read_ca(const char *path, const char **err)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        *err = strerror(errno);
        return NULL;
    }
    char *buf = malloc(VV_CA_MAX + 1);
    size_t n = buf ? fread(buf, 1, VV_CA_MAX + 1, f) : 0;
    fclose(f);
    if (buf != NULL && n <= VV_CA_MAX)
        buf[n] = '\0';
    if (buf == NULL || n == 0 || n > VV_CA_MAX || strstr(buf, "-----BEGIN CERTIFICATE-----") == NULL) {
        free(buf);
        *err = n > VV_CA_MAX ? "larger than 64 KiB" : "not a PEM certificate";
        return NULL;
    }
    return buf;
}
