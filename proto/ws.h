/* proto/ws.h: RFC 6455 WebSocket framing, as a byte-stream codec. Pure
 * functions over bytes, no sockets, no allocation; one decoder per stream,
 * safe from any thread that owns it.
 *
 * The broker carries SPICE over WebSocket as a byte stream: where one frame
 * ends and the next begins means nothing to it (spice-html5 and websockify
 * treat frames the same way). So the decoder does not collect messages: it
 * takes whatever bytes arrived, unmasks the data payloads in place and packs
 * them to the front of the same buffer, and keeps only a frame header split
 * across reads (at most 14 bytes) and one control frame's payload (at most
 * 125). A hostile peer's tiny fragments cost it bytes, never the broker memory.
 *
 * The encoder makes a frame header; the payload goes out beside it (writev),
 * never copied. */
#ifndef SB_WS_H
#define SB_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WS_MAX_HEADER 14u       /* 2 + 8 (length) + 4 (mask) */
#define WS_MAX_CONTROL 125u     /* a control frame's payload */

enum ws_opcode {
    WS_OP_CONTINUATION = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xa,
};

/* Close codes the broker sends (RFC 6455 7.4.1). */
#define WS_CLOSE_NORMAL 1000
#define WS_CLOSE_PROTOCOL_ERROR 1002
#define WS_CLOSE_UNSUPPORTED_DATA 1003
#define WS_CLOSE_TOO_BIG 1009

struct ws_decoder {
    bool expect_masked;          /* true: we are the server, frames must be masked */
    /* the frame being read */
    uint8_t hdr[WS_MAX_HEADER];
    uint8_t hdr_have;
    bool in_payload;             /* the header is complete */
    uint8_t opcode;
    bool fin, masked;
    uint8_t mask[4];
    uint8_t mask_off;            /* payload bytes seen mod 4 */
    uint64_t left;               /* payload bytes of this frame still to come */
    bool in_message;             /* a fragmented data message is open */
    uint64_t max_message;        /* a data message's limit, 0 = none */
    uint64_t msg_len;            /* the open data message's length so far */
    /* a control frame's payload, collected whole */
    uint8_t ctl[WS_MAX_CONTROL];
    uint8_t ctl_have;
    /* what the peer asked for */
    bool ping;                   /* answer with a PONG carrying ping_data */
    uint8_t ping_data[WS_MAX_CONTROL];
    uint8_t ping_len;
    bool closed;                 /* a CLOSE frame arrived: nothing after it counts */
    uint16_t close_code;         /* its status code, 1005 if it had none */
    uint16_t error_code;         /* on a decode error: the close code to send */
};

/* A decoder for one direction. expect_masked: the peer is a client (frames
 * must be masked, RFC 6455 5.1). max_message: a data message (its fragments
 * together) longer than this is an error (1009); 0 for no limit. */
void ws_decoder_init(struct ws_decoder *d, bool expect_masked, uint64_t max_message);

/* Decodes buf[0, len) in place: the data payloads (binary and continuation
 * frames), unmasked, end up packed in buf[0, *out_len). Control frames are
 * consumed and noted in d (d->ping, d->closed). Bytes after a CLOSE frame
 * are ignored. Returns 0, or -1 with *err a static reason and d->error_code
 * the close code to answer with; after an error the stream is over. */
int ws_decode(struct ws_decoder *d, uint8_t *buf, size_t len, size_t *out_len, const char **err);

/* Writes the header of one frame (FIN set) into out; mask NULL for an
 * unmasked (server) frame. Returns its length (2 to 14). */
size_t ws_header_build(uint8_t out[WS_MAX_HEADER], enum ws_opcode op, uint64_t payload_len,
                       const uint8_t mask[4]);

/* Writes a whole control frame (PONG, CLOSE...) of at most WS_MAX_CONTROL
 * payload bytes, unmasked, or masked with mask. Returns its length, or 0 if
 * it does not fit in cap. */
size_t ws_control_build(uint8_t *out, size_t cap, enum ws_opcode op, const uint8_t *payload,
                        size_t len, const uint8_t mask[4]);

/* XORs p[0, len) with mask, starting at mask offset *off (updated). */
void ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], uint8_t *off);

#endif
