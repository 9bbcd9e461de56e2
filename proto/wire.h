/* proto/wire.h: the SPICE wire codec. Pure functions over bytes, no sockets, no
 * allocation; safe from any thread.
 *
 * Every parser takes (buf, len) and never reads past len: a length field that
 * points outside the buffer is an error (WIRE_BAD), never an over-read. Every
 * builder takes (buf, cap) and returns the bytes written, or 0 if cap is too
 * small. All integers on the wire are little-endian; the layouts and constants
 * come from spice-protocol's <spice/protocol.h> and <spice/enums.h>; message
 * bodies that spice-protocol does not declare (they live in spice-common's
 * generated code) are read at the offsets documented next to each function. */
#ifndef SB_WIRE_H
#define SB_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <spice/enums.h>
#include <spice/protocol.h>

/* Results of the incremental parsers. */
enum wire_result {
    WIRE_OK = 0,
    WIRE_NEED_MORE = 1, /* buffer holds a valid prefix; read more and call again */
    WIRE_BAD = -1,      /* malformed; *err (when given) names the problem */
};

/* ------------------------------------------------------------------ caps */

/* The broker accepts at most this many 32-bit cap words of each kind (spice-gtk
 * sends 1, QEMU 1); more is treated as a hostile link. */
#define WIRE_MAX_CAP_WORDS 8

struct wire_caps {
    uint32_t n_common, n_channel;
    uint32_t common[WIRE_MAX_CAP_WORDS];
    uint32_t channel[WIRE_MAX_CAP_WORDS];
};

bool wire_caps_has_common(const struct wire_caps *c, unsigned cap);
bool wire_caps_has_channel(const struct wire_caps *c, unsigned cap);
/* Sets a cap bit, growing n_common/n_channel as needed (caps >= 32*WIRE_MAX_CAP_WORDS are ignored). */
void wire_caps_set_common(struct wire_caps *c, unsigned cap);
void wire_caps_set_channel(struct wire_caps *c, unsigned cap);
void wire_caps_clear_common(struct wire_caps *c, unsigned cap);

/* ------------------------------------------------------------------ link */

#define WIRE_LINK_HEADER_SIZE 16u             /* sizeof(SpiceLinkHeader) */
#define WIRE_LINK_MAX_BODY 4096u              /* spice-server's own limit */
#define WIRE_LINK_REPLY_FIXED 178u            /* sizeof(SpiceLinkReply) */
#define WIRE_LINK_MESS_FIXED 18u              /* sizeof(SpiceLinkMess) */
#define WIRE_TICKET_SIZE 128u                 /* SPICE_TICKET_KEY_PAIR_LENGTH / 8 */
#define WIRE_PUBKEY_SIZE SPICE_TICKET_PUBKEY_BYTES

/* Parses the 16-byte SpiceLinkHeader at buf. On WIRE_OK, *body_size is the byte
 * count that follows (checked: 18 or 178 <= size <= WIRE_LINK_MAX_BODY is the
 * caller's min; here only size <= WIRE_LINK_MAX_BODY). *link_err receives the
 * SPICE_LINK_ERR_* a server should answer with when the result is WIRE_BAD
 * (INVALID_MAGIC for bad magic, VERSION_MISMATCH for major != 2, INVALID_DATA
 * for a bad size). */
int wire_link_header_parse(const uint8_t *buf, size_t len, uint32_t *body_size,
                           uint32_t *link_err, const char **err);

/* A client's link message (SpiceLinkMess + caps). */
struct wire_link_mess {
    uint32_t connection_id;
    uint8_t channel_type;
    uint8_t channel_id;
    struct wire_caps caps;
};

/* Parses a SpiceLinkMess body of exactly len bytes (the header's size). Checks
 * len >= 18, cap counts <= WIRE_MAX_CAP_WORDS, and that caps_offset and the cap
 * words lie inside the body. */
int wire_link_mess_parse(const uint8_t *body, size_t len, struct wire_link_mess *out,
                         const char **err);

/* Writes SpiceLinkHeader + SpiceLinkMess + caps (caps_offset 18). */
size_t wire_link_mess_build(uint8_t *buf, size_t cap, const struct wire_link_mess *m);

/* A server's link reply (SpiceLinkReply + caps). */
struct wire_link_reply {
    uint32_t error;                    /* SPICE_LINK_ERR_* */
    uint8_t pub_key[WIRE_PUBKEY_SIZE]; /* DER SubjectPublicKeyInfo, RSA-1024 */
    struct wire_caps caps;
};

/* Parses a SpiceLinkReply body of exactly len bytes. */
int wire_link_reply_parse(const uint8_t *body, size_t len, struct wire_link_reply *out,
                          const char **err);

/* Writes SpiceLinkHeader + SpiceLinkReply + caps (caps_offset 178). */
size_t wire_link_reply_build(uint8_t *buf, size_t cap, const struct wire_link_reply *r);

/* Writes header + a zeroed SpiceLinkReply carrying only `error` (how
 * spice-server refuses a link before authentication). */
size_t wire_link_error_build(uint8_t *buf, size_t cap, uint32_t error);

/* The 4-byte link result (u32 SPICE_LINK_ERR_*) and the 4-byte
 * SpiceLinkAuthMechanism. */
void wire_put_u32(uint8_t *p, uint32_t v);
uint32_t wire_get_u32(const uint8_t *p);
void wire_put_u16(uint8_t *p, uint16_t v);
uint16_t wire_get_u16(const uint8_t *p);
void wire_put_u64(uint8_t *p, uint64_t v);
uint64_t wire_get_u64(const uint8_t *p);

/* ------------------------------------------------------------------ data headers */

#define WIRE_MINI_HEADER_SIZE 6u  /* sizeof(SpiceMiniDataHeader): u16 type, u32 size */
#define WIRE_FULL_HEADER_SIZE 18u /* sizeof(SpiceDataHeader): u64 serial, u16 type, u32 size, u32 sub_list */

struct wire_msg_header {
    uint64_t serial;   /* 0 with the mini header */
    uint16_t type;
    uint32_t size;     /* body bytes */
    uint32_t sub_list; /* 0 with the mini header */
};

/* Parses one data header (mini or full) at buf: WIRE_NEED_MORE if len is short. */
int wire_msg_header_parse(const uint8_t *buf, size_t len, bool mini, struct wire_msg_header *out);
/* Writes a mini (6 B) or full (18 B) header; returns its size. buf must hold 18 bytes. */
size_t wire_msg_header_build(uint8_t *buf, bool mini, const struct wire_msg_header *h);

/* The streaming framer: splits a byte stream into whole messages without
 * copying payloads. Feed it the bytes as they arrive; it reports each header
 * once, then how many body bytes belong to the current message. It keeps up to
 * one header's worth of bytes of its own, so headers split across reads work. */
struct wire_framer {
    bool mini;
    uint32_t max_body;     /* larger bodies are WIRE_BAD (hostile peer) */
    uint8_t hdr[WIRE_FULL_HEADER_SIZE];
    uint8_t hdr_have;      /* header bytes collected so far */
    uint32_t body_left;    /* body bytes of the current message still to come */
    bool in_body;
    uint64_t messages;     /* complete headers seen */
};

enum wire_frame_kind {
    WIRE_FRAME_HEADER,  /* a header completed: .hdr is valid, .len is the header bytes consumed from this call */
    WIRE_FRAME_BODY,    /* .len body bytes of the current message (maybe partial) */
    WIRE_FRAME_END,     /* the current message is complete (emitted after its last body byte, or right after a header with size 0); .len is 0 */
};

struct wire_frame {
    enum wire_frame_kind kind;
    size_t len;                 /* bytes of the input consumed by this step */
    struct wire_msg_header hdr; /* the current message's header */
};

void wire_framer_init(struct wire_framer *f, bool mini, uint32_t max_body);
/* Consumes from buf[0..len) and describes one step in *out. Returns WIRE_OK
 * (out filled, out->len bytes consumed, may be 0 for END), WIRE_NEED_MORE (all
 * len bytes consumed into a partial header, nothing to report), or WIRE_BAD
 * (body larger than max_body). */
int wire_framer_next(struct wire_framer *f, const uint8_t *buf, size_t len,
                     struct wire_frame *out, const char **err);

/* ------------------------------------------------------------------ messages
 * Bodies only (no data header). Parsers check the exact or minimum size. */

/* SPICE_MSG_SET_ACK: u32 generation, u32 window (8 B). */
struct wire_set_ack { uint32_t generation, window; };
int wire_set_ack_parse(const uint8_t *b, size_t len, struct wire_set_ack *out);
size_t wire_set_ack_build(uint8_t *b, size_t cap, const struct wire_set_ack *m);

/* SPICE_MSGC_ACK_SYNC: u32 generation (4 B). SPICE_MSGC_ACK: empty. */
int wire_ack_sync_parse(const uint8_t *b, size_t len, uint32_t *generation);
size_t wire_ack_sync_build(uint8_t *b, size_t cap, uint32_t generation);

/* SPICE_MSG_PING: u32 id, u64 timestamp, padding (>= 12 B). SPICE_MSGC_PONG: id, timestamp (12 B). */
struct wire_ping { uint32_t id; uint64_t timestamp; };
int wire_ping_parse(const uint8_t *b, size_t len, struct wire_ping *out);
size_t wire_pong_build(uint8_t *b, size_t cap, const struct wire_ping *p);
int wire_pong_parse(const uint8_t *b, size_t len, struct wire_ping *out);

/* SPICE_MSG_MIGRATE: u32 flags (SPICE_MIGRATE_NEED_FLUSH | SPICE_MIGRATE_NEED_DATA_TRANSFER). */
int wire_migrate_parse(const uint8_t *b, size_t len, uint32_t *flags);
size_t wire_migrate_build(uint8_t *b, size_t cap, uint32_t flags);

/* SPICE_MSG_MIGRATE_DATA / SPICE_MSGC_MIGRATE_DATA bodies are opaque, except
 * the display's "DCMD" record: SpiceMigrateDataHeader{u32 magic, u32 version}
 * then u64 message_serial. */
#define WIRE_MIGRATE_DATA_DISPLAY_MAGIC 0x444d4344u /* "DCMD" little-endian */
int wire_migrate_data_display_serial(const uint8_t *b, size_t len, uint64_t *serial);

/* SPICE_MSG_WAIT_FOR_CHANNELS: u8 count + count x {u8 type, u8 id, u64 serial}. */
#define WIRE_MAX_WAIT_CHANNELS 32
struct wire_wait_channel { uint8_t type, id; uint64_t serial; };
struct wire_wait_for_channels { uint8_t count; struct wire_wait_channel ch[WIRE_MAX_WAIT_CHANNELS]; };
int wire_wait_for_channels_parse(const uint8_t *b, size_t len, struct wire_wait_for_channels *out);
size_t wire_wait_for_channels_build(uint8_t *b, size_t cap, const struct wire_wait_for_channels *m);

/* SPICE_MSG_MAIN_INIT (32 B): 8 x u32. */
struct wire_main_init {
    uint32_t session_id, display_channels_hint, supported_mouse_modes, current_mouse_mode;
    uint32_t agent_connected, agent_tokens, multi_media_time, ram_hint;
};
int wire_main_init_parse(const uint8_t *b, size_t len, struct wire_main_init *out);
size_t wire_main_init_build(uint8_t *b, size_t cap, const struct wire_main_init *m);

/* SPICE_MSG_MAIN_CHANNELS_LIST: u32 n + n x {u8 type, u8 id}. */
#define WIRE_MAX_CHANNELS 64
struct wire_channel_id { uint8_t type, id; };
struct wire_channels_list { uint32_t n; struct wire_channel_id ch[WIRE_MAX_CHANNELS]; };
int wire_channels_list_parse(const uint8_t *b, size_t len, struct wire_channels_list *out);
size_t wire_channels_list_build(uint8_t *b, size_t cap, const struct wire_channels_list *m);

/* SPICE_MSG_MAIN_MOUSE_MODE: u16 supported, u16 current (4 B).
 * SPICE_MSGC_MAIN_MOUSE_MODE_REQUEST: u16 mode (2 B). */
struct wire_mouse_mode { uint16_t supported, current; };
int wire_mouse_mode_parse(const uint8_t *b, size_t len, struct wire_mouse_mode *out);
size_t wire_mouse_mode_build(uint8_t *b, size_t cap, const struct wire_mouse_mode *m);
int wire_mouse_mode_request_parse(const uint8_t *b, size_t len, uint16_t *mode);
size_t wire_mouse_mode_request_build(uint8_t *b, size_t cap, uint16_t mode);

/* u32 bodies: MAIN_MULTI_MEDIA_TIME, MAIN_AGENT_TOKEN, MAIN_AGENT_CONNECTED_TOKENS,
 * MAIN_AGENT_DISCONNECTED, MSGC_MAIN_AGENT_START, MSGC_MAIN_AGENT_TOKEN,
 * MSGC_MAIN_MIGRATE_DST_DO_SEAMLESS. */
int wire_u32_body_parse(const uint8_t *b, size_t len, uint32_t *v);
size_t wire_u32_body_build(uint8_t *b, size_t cap, uint32_t v);

/* MAIN_MIGRATE_BEGIN / MAIN_MIGRATE_SWITCH_HOST (20 B fixed + strings) and
 * MAIN_MIGRATE_BEGIN_SEAMLESS (24 B fixed: + u32 src_mig_version):
 * u16 port @0, u16 sport @2, u32 host_size @4, u32 host_ptr @8,
 * u32 cert_subject_size @12, u32 cert_subject_ptr @16. Pointers count from the
 * start of the body; host_size includes the NUL. Port values 0 and 0xFFFF mean
 * "absent" (reported as 0). */
#define WIRE_MAX_HOST 256
struct wire_migrate_dst {
    uint16_t port, sport;
    char host[WIRE_MAX_HOST];         /* NUL-terminated */
    char cert_subject[WIRE_MAX_HOST]; /* "" when absent */
    uint32_t src_mig_version;         /* BEGIN_SEAMLESS only, else 0 */
};
int wire_migrate_dst_parse(const uint8_t *b, size_t len, bool seamless,
                           struct wire_migrate_dst *out, const char **err);
size_t wire_migrate_dst_build(uint8_t *b, size_t cap, bool seamless,
                              const struct wire_migrate_dst *m);

/* Writes a whole message (header + body) into buf; returns total bytes or 0. */
size_t wire_msg_build(uint8_t *buf, size_t cap, bool mini, uint16_t type,
                      const uint8_t *body, uint32_t body_len);

/* Names for logs ("main", "display", ...); "unknown" for others. */
const char *wire_channel_name(unsigned channel_type);
const char *wire_link_err_name(uint32_t err);

#endif
