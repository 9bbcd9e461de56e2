/* broker/config.h: the daemon's options, described once in a table that
 * serves the command line, the INI config file (keys are the long option
 * names, in a [broker] section or before any section) and --help. Parsed into
 * a fresh struct, validated, then used; the main thread owns it. */
#ifndef SB_CONFIG_H
#define SB_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* [nova] of the broker's config file: how the Nova token source reaches
 * Keystone and Nova, under the keystoneauth names nova.conf's service
 * sections use. On when auth_url is set. */
struct config_nova {
    char auth_url[512];
    char auth_type[32];              /* password | v3applicationcredential */
    char username[128], user_id[128], password[256];
    char user_domain_name[128], user_domain_id[128];
    char project_name[128], project_id[128];
    char project_domain_name[128], project_domain_id[128];
    char application_credential_id[128], application_credential_secret[256];
    char region_name[128];
    char valid_interfaces[64];       /* "internal,public" */
    char endpoint_override[512];     /* the compute endpoint, skipping the catalog */
    char cafile[512];
    int timeout;                     /* seconds, one HTTP request */
    int token_grace;                 /* seconds a Nova token stays good to the broker */
};

struct config {
    char listen[128];
    char tls_listen[128];
    char tls_cert[512];
    char tls_key[512];
    char tls_min_version[16];
    char tls_ciphers[512];
    char backend_tls[8];       /* auto | always | never */
    char backend_ca[512];
    char backend_cert[512];
    char backend_key[512];
    char backend_tls_subject[256];
    char web_listen[128];
    char web_root[512];
    char web_allowed_origins[512];
    char web_base_url[512];
    char spice_direct_path[256];   /* the .vv path on the browser port, "" = off */
    char public_host[256];         /* host= in .vv files ("" = the request's Host) */
    char tls_ca[512];              /* ca= in .vv files: the TLS port's CA */
    char tls_host_subject[256];    /* host-subject= in .vv files */
    char web_tls_cert[512];    /* the browser port speaks only TLS when set */
    char web_tls_key[512];     /* empty: the key is in web_tls_cert */
    char admin[256];
    char admin_group[64];          /* the admin socket's group ("" = the broker's) */
    char metrics_listen[128];      /* read-only GET /metrics and /healthz, "" = off */
    char store[512];
    char etcd_ca[512];           /* TLS toward etcd (https:// endpoints) */
    char etcd_cert[512];
    char etcd_key[512];
    char etcd_user[128];         /* etcd v3 auth */
    char etcd_password_file[512];
    char journal[512];           /* session records the store did not take by the stop */
    char token_file[512];
    char store_key[512];           /* seals backend passwords in token records, "" = in clear */
    char store_key_old[512];       /* the store key being retired: still opens, never seals */
    char token_key_file[512];      /* the zone secret naming token records, "" = from store_key */
    char make_store_key[512];      /* write a new key file here and exit */
    char zone_secret[512];         /* authenticates the broker-to-broker links, "" = none */
    char config_file[512];
    char nova_config[512];      /* the last --nova-config (all are read) */
    char nova_config_dir[512];  /* the last --nova-config-dir (all are read) */
    char zone[64];
    char broker_id[128];
    char peer_listen[128];           /* the broker-to-broker port, "" = none */
    char peer_advertise[256];        /* the address other brokers dial ("" = peer_listen) */
    char peer_ca[512];               /* the zone CA: mutual TLS on the peer link, "" = none */
    char peer_cert[512];             /* this broker's peer certificate (both roles) */
    char peer_key[512];
    char token_sources[64];          /* store,file,nova in the order asked */
    char trusted_proxies[1024];      /* CIDR,...: whose PROXY header / X-Forwarded-For counts */
    char proxy_protocol[32];         /* the ports where those send a PROXY header */
    struct config_nova nova;
    int workers;
    int log_level;
    int link_timeout;     /* seconds */
    int backend_timeout;  /* seconds */
    int buffer_size;      /* bytes per relay direction */
    int session_history;  /* seconds an ended session's record is kept */
    int max_unauth;       /* unauthenticated connections, all ports and workers (0: no cap) */
    int max_unauth_source; /* of those, from one source address (0: no cap) */
    int write_stall;      /* seconds a live client may take nothing we have for it (0: forever) */
    int link_key_rotate;  /* seconds a worker's link key lives (session/keyring.h) */
    int link_key_grace;   /* seconds a replaced link key still opens tickets (0: link_timeout) */
    int link_key_max_tickets; /* tickets a link key accepts before it is replaced */
    int upgrade_drain_timeout; /* seconds a process that handed over serves its sessions on */
    int broker_lease_ttl; /* seconds: the zone registration's lease */
    bool check_only;
    bool enforce_session_timeout;
    bool supervise;              /* run under a keeper process (broker/keeper.h) */
    bool token_key_compat;         /* lookups also try a token's bare sha256 name */
};

/* Fills defaults, then the config file named by --config (if any), then the
 * command line. Returns 0, 1 if the program should exit 0 (--help,
 * --version), or -1 with a message printed on stderr. */
int config_load(struct config *cfg, int argc, char **argv);
void config_usage(FILE *out);
/* Checks cross-field constraints (listen address, store spec, token file).
 * Returns 0 or -1 with a message on stderr. */
int config_validate(const struct config *cfg);
/* Whether host (a numeric address) is a loopback one: 127.0.0.0/8, ::1,
 * or ::ffff:127.x.y.z. */
bool config_is_loopback(const char *host);
/* A group by name or number; -1 if there is no such group. */
int config_group(const char *name, gid_t *gid);
/* The ports named by proxy-protocol ("native,tls,web", "none") as
 * WORKER_PROXY_* bits; -1 if a name is not one of those. */
int config_proxy_ports(const char *list);
/* Splits "HOST:PORT" ("[v6]:PORT" too) into host and port. */
int config_split_hostport(const char *s, char *host, size_t cap, uint16_t *port);

#endif
