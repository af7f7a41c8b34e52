/*
 * loadclient: N raw Socket.IO v4 clients over WebSocket in one epoll loop.
 *
 * Why C: on the benchmark VMs one loopback send()/recv() costs ~10 us of kernel time, so a
 * client written in Python would saturate a core long before the server under test does.
 * This program does one recv() per readiness event, parses every frame in place and keeps
 * per-message work to a few hundred nanoseconds, so its CPU share stays small (the runner
 * reports it) and the measurement is about the server.
 *
 * Client i joins chatroom r = i % K: slug "<prefix><r>", chatroom id "<base + r>".
 * Handshake per client: RFC 6455 upgrade, Engine.IO open "0{...}" -> "40" -> "40{...}" ->
 * 42["subscribe",{"channelName":...,"chatroomId":...}]. Engine.IO ping "2" is answered "3".
 * For every 42["App\\Events\\ChatMessageEvent",{..."content":"<seq> <publish_ns>"...}(,offset)]
 * it records latency = CLOCK_REALTIME(now) - publish_ns and per-client sequence accounting.
 *
 * stdout, one JSON object per line: {"event":"ready",...} once every client has sent its
 * subscribe (or given up), {"event":"progress",...} every --progress seconds after that, and
 * {"event":"summary",...} on SIGUSR1/SIGINT/SIGTERM or after --duration seconds; then exit.
 *
 * --selftest reads length-prefixed chunks (4-byte big-endian length + bytes) from stdin and
 * feeds them, as if each were one recv(), to a single client that has just sent its upgrade
 * request with the RFC 6455 sample key. It prints that client's accounting and every byte it
 * would have sent (hex), so tests can exercise the real parser on crafted byte streams.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE (256 * 1024)
#define MAX_FRAME (16u * 1024 * 1024)
#define MAX_HTTP_HEAD 8192
#define MAX_LOGGED_FAILURES 5

enum state {
    S_IDLE, S_CONNECTING, S_HTTP, S_EIO_OPEN, S_SIO_CONNECT, S_SUBSCRIBED, S_FAILED, S_CLOSED
};
static const char *const state_names[] = {"idle",      "connecting", "http",   "eio_open",
                                          "sio_connect", "subscribed", "failed", "closed"};

struct buf {
    uint8_t *p;
    size_t len, cap;
};

struct conn {
    int fd;
    int id, room;
    enum state st;
    int attempts;
    uint64_t deadline; /* CLOCK_MONOTONIC ns: end of the current stage, or when to retry */
    char key[32];
    struct buf in;  /* bytes of a frame (or HTTP head) not yet complete */
    struct buf msg; /* payload of a fragmented message being reassembled */
    struct buf out; /* bytes the kernel did not take yet */
    int msg_op;     /* opcode of the message in `msg`, -1 when none */
    bool want_out;
    uint32_t delivered, max_seq;
    uint8_t *seen; /* one bit per sequence number, to tell duplicates from late arrivals */
    uint32_t seen_bits;
};

struct config {
    const char *host, *path, *slug_prefix;
    int port, clients, rooms, retries, max_inflight;
    long room_base;
    double connect_rate, duration, stage_timeout, progress;
};

struct stats {
    uint64_t delivered, gaps, dups, reordered, other_events, bad_messages, negative_latency;
    uint64_t disconnects, connect_failures, retries, subscribed, done;
    uint64_t first_recv_ns, last_recv_ns;
    uint32_t *lat_us; /* every latency, sorted at the end for exact percentiles */
    size_t lat_len, lat_cap;
    uint64_t *room_delivered;
    int logged_failures;
};

static struct config cfg = {
    .host = "127.0.0.1",
    .path = "/socket.io/",
    .slug_prefix = "chan",
    .port = 3000,
    .clients = 1,
    .rooms = 1,
    .retries = 5,
    .max_inflight = 200,
    .room_base = 700000,
    .connect_rate = 500.0,
    .duration = 0.0,
    .stage_timeout = 10.0,
    .progress = 0.25,
};
static struct stats st;
static struct conn *conns;
static int epfd = -1;
static struct sockaddr_in server_addr;
static uint64_t rng_state;
static struct buf selftest_sent; /* in --selftest, what the client would have written */
static volatile sig_atomic_t stop_requested;
static uint64_t now_real; /* CLOCK_REALTIME of the latest recv(), used for every frame in it */

/* ---------------------------------------------------------------- utilities */

static uint64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mono_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void buf_reserve(struct buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 512;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) die("realloc");
    b->p = p;
    b->cap = cap;
}

static void buf_append(struct buf *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_consume(struct buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

/* Masks only need to be unpredictable to intermediaries; a bench client has none, so a fast
 * xorshift seeded from getrandom() is enough. Handshake keys use getrandom() directly. */
static uint32_t rng32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static void random_bytes(void *out, size_t n) {
    if (getrandom(out, n, 0) != (ssize_t)n) die("getrandom");
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = 0;
}

static uint32_t rol32(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

/* SHA-1 (FIPS 180-4) of a message shorter than 120 bytes: all Sec-WebSocket-Accept needs. */
static void sha1_short(const uint8_t *msg, size_t len, uint8_t digest[20]) {
    uint8_t data[128] = {0};
    size_t total = len + 9 <= 64 ? 64 : 128;
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    memcpy(data, msg, len);
    data[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) data[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t blk = 0; blk < total; blk += 64) {
        uint32_t w[80];
        for (int t = 0; t < 16; t++) {
            const uint8_t *q = data + blk + 4 * t;
            w[t] = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
        }
        for (int t = 16; t < 80; t++) w[t] = rol32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int t = 0; t < 80; t++) {
            uint32_t f, k;
            if (t < 20) f = (b & c) | (~b & d), k = 0x5A827999u;
            else if (t < 40) f = b ^ c ^ d, k = 0x6ED9EBA1u;
            else if (t < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDCu;
            else f = b ^ c ^ d, k = 0xCA62C1D6u;
            uint32_t tmp = rol32(a, 5) + f + e + k + w[t];
            e = d, d = c, c = rol32(b, 30), b = a, a = tmp;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) digest[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

static void expected_accept(const char *key, char out[32]) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    uint8_t cat[96], digest[20];
    size_t klen = strlen(key);
    memcpy(cat, key, klen);
    memcpy(cat + klen, guid, sizeof guid - 1);
    sha1_short(cat, klen + sizeof guid - 1, digest);
    base64(digest, 20, out);
}

/* ---------------------------------------------------------------- connection lifecycle */

static bool is_handshaking(const struct conn *c) {
    return c->st >= S_CONNECTING && c->st <= S_SIO_CONNECT;
}
static bool is_open(const struct conn *c) { return c->st >= S_EIO_OPEN && c->st <= S_SUBSCRIBED; }

static void log_failure(const struct conn *c, const char *what, const char *why) {
    if (st.logged_failures++ >= MAX_LOGGED_FAILURES) return;
    fprintf(stderr, "loadclient: client %d (%s, attempt %d): %s: %s\n", c->id, state_names[c->st],
            c->attempts + 1, what, why);
}

static void close_fd(struct conn *c) {
    if (c->fd >= 0) close(c->fd); /* close() also removes it from the epoll set */
    c->fd = -1;
    c->want_out = false;
    c->in.len = c->msg.len = c->out.len = 0;
    c->msg_op = -1;
}

/* Before the subscribe is sent a failure is retried with backoff; after it, the client is
 * lost for good: reconnecting mid-measurement would hide exactly what we measure. */
static void conn_lost(struct conn *c, const char *why) {
    if (c->st == S_SUBSCRIBED) {
        log_failure(c, "disconnected", why);
        close_fd(c);
        c->st = S_CLOSED;
        st.disconnects++;
        return;
    }
    if (!is_handshaking(c)) return;
    log_failure(c, "connect failed", why);
    close_fd(c);
    if (++c->attempts > cfg.retries) {
        c->st = S_FAILED;
        st.connect_failures++;
        st.done++;
        return;
    }
    st.retries++;
    uint64_t backoff_ms = 100ull << (c->attempts < 5 ? c->attempts : 5);
    c->st = S_IDLE;
    c->deadline = mono_ns() + backoff_ms * 1000000ull;
}

static void update_interest(struct conn *c) {
    if (c->fd < 0) return;
    bool want = c->out.len > 0 || c->st == S_CONNECTING;
    if (want == c->want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl MOD");
    c->want_out = want;
}

static void flush_out(struct conn *c) {
    while (c->out.len > 0) {
        ssize_t n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            conn_lost(c, strerror(errno));
            return;
        }
        buf_consume(&c->out, (size_t)n);
    }
    update_interest(c);
}

static void raw_send(struct conn *c, const void *data, size_t n) {
    if (c->fd < 0) { /* --selftest */
        buf_append(&selftest_sent, data, n);
        return;
    }
    buf_append(&c->out, data, n);
    flush_out(c);
}

/* One masked client frame (RFC 6455 5.3: every client frame is masked). */
static void ws_send(struct conn *c, uint8_t opcode, const void *payload, size_t n) {
    uint8_t frame[14 + 256];
    uint8_t *big = NULL, *f = frame;
    size_t hdr = n < 126 ? 6 : n < 65536 ? 8 : 14;
    if (hdr + n > sizeof frame) {
        big = malloc(hdr + n);
        if (!big) die("malloc");
        f = big;
    }
    f[0] = 0x80 | opcode;
    if (n < 126) {
        f[1] = 0x80 | (uint8_t)n;
    } else if (n < 65536) {
        f[1] = 0x80 | 126;
        f[2] = (uint8_t)(n >> 8), f[3] = (uint8_t)n;
    } else {
        f[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++) f[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    }
    uint32_t m = rng32();
    uint8_t *mask = f + hdr - 4;
    memcpy(mask, &m, 4);
    const uint8_t *p = payload;
    for (size_t i = 0; i < n; i++) f[hdr + i] = p[i] ^ mask[i & 3];
    raw_send(c, f, hdr + n);
    free(big);
}

static void ws_text(struct conn *c, const char *s, size_t n) { ws_send(c, 0x1, s, n); }

static void send_upgrade(struct conn *c) {
    uint8_t nonce[16];
    char req[512];
    random_bytes(nonce, sizeof nonce);
    base64(nonce, sizeof nonce, c->key);
    int n = snprintf(req, sizeof req,
                     "GET %s?EIO=4&transport=websocket HTTP/1.1\r\nHost: %s:%d\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     cfg.path, cfg.host, cfg.port, c->key);
    c->st = S_HTTP;
    c->deadline = mono_ns() + (uint64_t)(cfg.stage_timeout * 1e9);
    raw_send(c, req, (size_t)n);
}

static void start_conn(struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->st = S_CONNECTING; /* so that conn_lost counts it as an attempt */
        conn_lost(c, strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->st = S_CONNECTING;
    c->deadline = mono_ns() + (uint64_t)(cfg.stage_timeout * 1e9);
    c->want_out = true;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl ADD");
    int rc = connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr);
    if (rc < 0 && errno != EINPROGRESS) conn_lost(c, strerror(errno));
}

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err) {
        conn_lost(c, strerror(err));
        return;
    }
    send_upgrade(c);
    update_interest(c);
}

/* ---------------------------------------------------------------- message accounting */

static void record_latency(uint64_t publish_ns) {
    uint64_t us;
    if (now_real < publish_ns) {
        st.negative_latency++;
        us = 0;
    } else {
        uint64_t d = (now_real - publish_ns) / 1000;
        us = d > UINT32_MAX ? UINT32_MAX : d;
    }
    if (st.lat_len == st.lat_cap) {
        st.lat_cap = st.lat_cap ? st.lat_cap * 2 : 65536;
        uint32_t *p = realloc(st.lat_us, st.lat_cap * sizeof *p);
        if (!p) die("realloc latencies");
        st.lat_us = p;
    }
    st.lat_us[st.lat_len++] = (uint32_t)us;
}

static void record_delivery(struct conn *c, uint32_t seq, uint64_t publish_ns) {
    if (seq >= c->seen_bits) {
        uint32_t bits = c->seen_bits ? c->seen_bits : 256;
        while (bits <= seq) bits *= 2;
        uint8_t *p = realloc(c->seen, bits / 8);
        if (!p) die("realloc seen");
        memset(p + c->seen_bits / 8, 0, (bits - c->seen_bits) / 8);
        c->seen = p;
        c->seen_bits = bits;
    }
    uint8_t bit = (uint8_t)(1u << (seq & 7));
    if (c->seen[seq >> 3] & bit) {
        st.dups++;
        return;
    }
    c->seen[seq >> 3] |= bit;
    if (seq == c->max_seq + 1) {
        c->max_seq = seq;
    } else if (seq > c->max_seq) {
        st.gaps++;
        c->max_seq = seq;
    } else {
        st.reordered++;
    }
    c->delivered++;
    st.delivered++;
    st.room_delivered[c->room]++;
    if (!st.first_recv_ns) st.first_recv_ns = now_real;
    st.last_recv_ns = now_real;
    record_latency(publish_ns);
}

/* Finds the string value of key "content" at the top level of the JSON object at p. Keys of
 * nested objects (sender, metadata, a replied-to message) are skipped by tracking depth. */
static bool find_content(const uint8_t *p, const uint8_t *end, const uint8_t **val, size_t *vlen) {
    int depth = 0;
    bool expect_key = false;
    while (p < end) {
        uint8_t ch = *p;
        if (ch == '"') {
            const uint8_t *s = ++p;
            while (p < end && *p != '"') p += (*p == '\\') ? 2 : 1;
            if (p >= end) return false;
            size_t slen = (size_t)(p - s);
            p++;
            if (depth == 1 && expect_key) {
                expect_key = false;
                bool is_content = slen == 7 && memcmp(s, "content", 7) == 0;
                while (p < end && (*p == ' ' || *p == ':')) p++;
                if (is_content) {
                    if (p >= end || *p != '"') return false;
                    s = ++p;
                    while (p < end && *p != '"') p += (*p == '\\') ? 2 : 1;
                    if (p >= end) return false;
                    *val = s;
                    *vlen = (size_t)(p - s);
                    return true;
                }
            }
            continue;
        }
        if (ch == '{' || ch == '[') {
            depth++;
            expect_key = depth == 1 && ch == '{';
        } else if (ch == '}' || ch == ']') {
            if (--depth <= 0) return false;
        } else if (ch == ',' && depth == 1) {
            expect_key = true;
        }
        p++;
    }
    return false;
}

static bool parse_u64(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    const uint8_t *s = *p;
    uint64_t v = 0;
    while (*p < end && **p >= '0' && **p <= '9') v = v * 10 + (uint64_t)(*(*p)++ - '0');
    *out = v;
    return *p > s;
}

static void on_event(struct conn *c, const uint8_t *p, size_t n) {
    static const char prefix[] = "[\"App\\\\Events\\\\ChatMessageEvent\",";
    const size_t plen = sizeof prefix - 1;
    if (n < plen || memcmp(p, prefix, plen) != 0) {
        st.other_events++;
        return;
    }
    const uint8_t *val, *end = p + n;
    size_t vlen;
    uint64_t seq, pub;
    if (!find_content(p + plen, end, &val, &vlen)) {
        st.bad_messages++;
        return;
    }
    const uint8_t *q = val, *vend = val + vlen;
    if (!parse_u64(&q, vend, &seq) || q >= vend || *q++ != ' ' || !parse_u64(&q, vend, &pub) ||
        q != vend || seq == 0 || seq > UINT32_MAX / 2) {
        st.bad_messages++;
        return;
    }
    record_delivery(c, (uint32_t)seq, pub);
}

static void send_subscribe(struct conn *c) {
    char msg[256];
    int n = snprintf(msg, sizeof msg,
                     "42[\"subscribe\",{\"channelName\":\"%s%d\",\"chatroomId\":\"%ld\"}]",
                     cfg.slug_prefix, c->room, cfg.room_base + c->room);
    ws_text(c, msg, (size_t)n);
    c->st = S_SUBSCRIBED;
    st.subscribed++;
    st.done++;
}

static void on_socketio(struct conn *c, const uint8_t *p, size_t n) {
    if (n == 0) {
        st.bad_messages++;
        return;
    }
    switch (p[0]) {
    case '0': /* CONNECT acknowledged */
        if (c->st != S_SIO_CONNECT) {
            st.bad_messages++;
            return;
        }
        send_subscribe(c);
        return;
    case '1':
        conn_lost(c, "socket.io DISCONNECT");
        return;
    case '2':
        on_event(c, p + 1, n - 1);
        return;
    case '4': {
        char why[128];
        snprintf(why, sizeof why, "CONNECT_ERROR %.*s", (int)(n < 100 ? n - 1 : 100), p + 1);
        conn_lost(c, why);
        return;
    }
    default:
        st.other_events++;
    }
}

static void on_message(struct conn *c, int opcode, const uint8_t *p, size_t n) {
    if (opcode != 0x1 || n == 0) {
        st.bad_messages++;
        return;
    }
    switch (p[0]) {
    case '0': /* Engine.IO OPEN */
        if (c->st != S_EIO_OPEN) {
            st.bad_messages++;
            return;
        }
        ws_text(c, "40", 2);
        c->st = S_SIO_CONNECT;
        c->deadline = mono_ns() + (uint64_t)(cfg.stage_timeout * 1e9);
        return;
    case '1':
        conn_lost(c, "engine.io CLOSE");
        return;
    case '2': { /* PING -> PONG carrying the same data ("probe" included) */
        uint8_t pong[64] = {'3'};
        size_t extra = n - 1 < sizeof pong - 1 ? n - 1 : sizeof pong - 1;
        memcpy(pong + 1, p + 1, extra);
        ws_text(c, (const char *)pong, 1 + extra);
        return;
    }
    case '3':
    case '6':
        return;
    case '4':
        on_socketio(c, p + 1, n - 1);
        return;
    default:
        st.bad_messages++;
    }
}

/* ---------------------------------------------------------------- framing */

static void on_frame(struct conn *c, uint8_t b0, const uint8_t *p, size_t n) {
    bool fin = b0 & 0x80;
    int op = b0 & 0x0f;
    switch (op) {
    case 0x1:
    case 0x2:
        if (c->msg_op >= 0) {
            conn_lost(c, "new message inside a fragmented one");
        } else if (fin) {
            on_message(c, op, p, n);
        } else {
            c->msg_op = op;
            buf_append(&c->msg, p, n);
        }
        return;
    case 0x0:
        if (c->msg_op < 0) {
            conn_lost(c, "continuation without a message");
            return;
        }
        buf_append(&c->msg, p, n);
        if (fin) {
            int mop = c->msg_op;
            c->msg_op = -1;
            size_t len = c->msg.len;
            c->msg.len = 0; /* on_message never appends to msg, so the bytes stay valid */
            on_message(c, mop, c->msg.p, len);
        }
        return;
    case 0x8: {
        char why[64];
        int code = n >= 2 ? (p[0] << 8 | p[1]) : 1005;
        snprintf(why, sizeof why, "close frame %d", code);
        ws_send(c, 0x8, p, n >= 2 ? 2 : 0);
        conn_lost(c, why);
        return;
    }
    case 0x9:
        ws_send(c, 0xA, p, n);
        return;
    case 0xA:
        return;
    default:
        conn_lost(c, "unknown opcode");
    }
}

/* Parses as many complete frames as p holds; returns how many bytes they used. */
static size_t parse_frames(struct conn *c, const uint8_t *p, size_t n) {
    size_t off = 0;
    while (is_open(c) && n - off >= 2) {
        const uint8_t *f = p + off;
        uint64_t len = f[1] & 0x7f;
        size_t hdr = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = (uint64_t)f[2] << 8 | f[3];
            hdr = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | f[2 + i];
            hdr = 10;
        }
        if (f[1] & 0x80 || f[0] & 0x70) {
            conn_lost(c, "masked frame or reserved bits from the server");
            break;
        }
        if (len > MAX_FRAME) {
            conn_lost(c, "frame too large");
            break;
        }
        if (n - off < hdr + len) break;
        on_frame(c, f[0], f + hdr, (size_t)len);
        off += hdr + (size_t)len;
    }
    return off;
}

static void feed_frames(struct conn *c, const uint8_t *p, size_t n) {
    if (c->in.len == 0) {
        size_t used = parse_frames(c, p, n);
        if (is_open(c) && used < n) buf_append(&c->in, p + used, n - used);
        return;
    }
    buf_append(&c->in, p, n);
    size_t used = parse_frames(c, c->in.p, c->in.len);
    if (is_open(c)) buf_consume(&c->in, used);
}

static bool header_has(const char *head, const char *name, const char *value) {
    size_t nlen = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, nlen) != 0 || h[nlen] != ':') continue;
        h += nlen + 1;
        while (*h == ' ') h++;
        return strncmp(h, value, strlen(value)) == 0;
    }
    return false;
}

static void feed_http(struct conn *c, const uint8_t *p, size_t n) {
    buf_append(&c->in, p, n);
    buf_reserve(&c->in, 1);
    c->in.p[c->in.len] = 0;
    char *head = (char *)c->in.p;
    char *end = strstr(head, "\r\n\r\n");
    if (!end) {
        if (c->in.len > MAX_HTTP_HEAD) conn_lost(c, "HTTP response head too long");
        return;
    }
    end[2] = 0;
    char accept[32];
    expected_accept(c->key, accept);
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        char why[96];
        snprintf(why, sizeof why, "upgrade refused: %.60s", head);
        conn_lost(c, why);
        return;
    }
    if (!header_has(head, "Sec-WebSocket-Accept", accept)) {
        conn_lost(c, "bad Sec-WebSocket-Accept");
        return;
    }
    c->st = S_EIO_OPEN;
    buf_consume(&c->in, (size_t)(end + 4 - head));
    if (c->in.len) {
        size_t used = parse_frames(c, c->in.p, c->in.len);
        if (is_open(c)) buf_consume(&c->in, used);
    }
}

static void on_readable(struct conn *c, uint8_t *rbuf) {
    ssize_t n = recv(c->fd, rbuf, RBUF_SIZE, 0);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) conn_lost(c, strerror(errno));
        return;
    }
    if (n == 0) {
        conn_lost(c, "connection closed by server");
        return;
    }
    now_real = clock_ns(CLOCK_REALTIME);
    if (c->st == S_HTTP) feed_http(c, rbuf, (size_t)n);
    else feed_frames(c, rbuf, (size_t)n);
}

/* ---------------------------------------------------------------- reporting */

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* JSON output: `,"key":value` after an opening `{"event":...`. Keys never need escaping. */
static void jint(const char *key, uint64_t v) { printf(",\"%s\":%" PRIu64, key, v); }
static void jreal(const char *key, double v) { printf(",\"%s\":%.3f", key, v); }

/* Nearest-rank percentile over the sorted latencies, in ms. */
static double pct_ms(double q) {
    if (!st.lat_len) return 0;
    size_t rank = (size_t)(q * (double)st.lat_len + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > st.lat_len) rank = st.lat_len;
    return st.lat_us[rank - 1] / 1000.0;
}

static int count_open(void) {
    int n = 0;
    for (int i = 0; i < cfg.clients; i++) n += conns[i].st == S_SUBSCRIBED;
    return n;
}

static void print_summary(uint64_t start_mono) {
    qsort(st.lat_us, st.lat_len, sizeof *st.lat_us, cmp_u32);
    double sum = 0;
    for (size_t i = 0; i < st.lat_len; i++) sum += st.lat_us[i];
    uint64_t missing = 0;
    uint32_t cmin = UINT32_MAX, cmax = 0;
    for (int i = 0; i < cfg.clients; i++) {
        struct conn *c = &conns[i];
        missing += c->max_seq - c->delivered;
        if (c->st != S_SUBSCRIBED && c->st != S_CLOSED) continue;
        if (c->delivered < cmin) cmin = c->delivered;
        if (c->delivered > cmax) cmax = c->delivered;
    }
    if (cmin == UINT32_MAX) cmin = 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"event\":\"summary\"");
    jint("clients", (uint64_t)cfg.clients);
    jint("rooms", (uint64_t)cfg.rooms);
    jint("connected", (uint64_t)count_open());
    jint("subscribed", st.subscribed);
    jint("connect_failures", st.connect_failures);
    jint("retries", st.retries);
    jint("disconnects", st.disconnects);
    jint("delivered", st.delivered);
    jint("per_client_min", cmin);
    jint("per_client_max", cmax);
    jint("gaps", st.gaps);
    jint("missing", missing);
    jint("dups", st.dups);
    jint("reordered", st.reordered);
    jint("other_events", st.other_events);
    jint("bad_messages", st.bad_messages);
    jint("negative_latency", st.negative_latency);
    printf(",\"latency_ms\":{\"count\":%zu", st.lat_len);
    jreal("mean", st.lat_len ? sum / (double)st.lat_len / 1000.0 : 0.0);
    jreal("p50", pct_ms(0.50));
    jreal("p90", pct_ms(0.90));
    jreal("p99", pct_ms(0.99));
    jreal("p999", pct_ms(0.999));
    jreal("max", st.lat_len ? st.lat_us[st.lat_len - 1] / 1000.0 : 0.0);
    printf("}");
    jreal("cpu_user_s", (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6);
    jreal("cpu_sys_s", (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    jreal("wall_s", (mono_ns() - start_mono) / 1e9);
    jint("first_recv_ns", st.first_recv_ns);
    jint("last_recv_ns", st.last_recv_ns);
    printf(",\"room_delivered\":[");
    for (int r = 0; r < cfg.rooms; r++) printf("%s%" PRIu64, r ? "," : "", st.room_delivered[r]);
    printf("]}\n");
    fflush(stdout);
}

/* ---------------------------------------------------------------- main loop */

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void raise_nofile(int need) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) die("getrlimit");
    if (rl.rlim_cur >= (rlim_t)need) return;
    if (rl.rlim_max < (rlim_t)need) {
        fprintf(stderr, "loadclient: need %d file descriptors but the hard limit is %lu; raise it "
                        "(ulimit -Hn) or use fewer clients\n", need, (unsigned long)rl.rlim_max);
        exit(2);
    }
    rl.rlim_cur = (rlim_t)need;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) die("setrlimit");
}

static void check_timers(uint64_t now, double *tokens, int *next_new) {
    for (int i = 0; i < cfg.clients; i++) {
        struct conn *c = &conns[i];
        if (is_handshaking(c) && now >= c->deadline) conn_lost(c, "stage timeout");
    }
    int inflight = 0;
    for (int i = 0; i < cfg.clients; i++) inflight += is_handshaking(&conns[i]);
    /* retries first (they were paced once already), then new clients, both within the pace */
    for (int i = 0; i < *next_new && *tokens >= 1 && inflight < cfg.max_inflight; i++) {
        struct conn *c = &conns[i];
        if (c->st == S_IDLE && now >= c->deadline) {
            start_conn(c);
            *tokens -= 1, inflight++;
        }
    }
    while (*next_new < cfg.clients && *tokens >= 1 && inflight < cfg.max_inflight) {
        start_conn(&conns[(*next_new)++]);
        *tokens -= 1, inflight++;
    }
}

static int run(void) {
    static struct epoll_event events[1024];
    uint8_t *rbuf = malloc(RBUF_SIZE);
    if (!rbuf) die("malloc");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    uint64_t start = mono_ns(), last = start, last_timers = 0, ready_at = 0, next_progress = 0;
    double tokens = 1;
    int next_new = 0;
    while (!stop_requested) {
        uint64_t now = mono_ns();
        tokens += (double)(now - last) / 1e9 * cfg.connect_rate;
        double burst = cfg.connect_rate / 20 > 1 ? cfg.connect_rate / 20 : 1;
        if (tokens > burst) tokens = burst;
        last = now;
        if (!ready_at && now - last_timers >= 5000000ull) {
            check_timers(now, &tokens, &next_new);
            last_timers = now;
        }
        if (!ready_at && st.done == (uint64_t)cfg.clients) {
            ready_at = now;
            next_progress = now;
            printf("{\"event\":\"ready\"");
            jint("connected", (uint64_t)count_open());
            jint("subscribed", st.subscribed);
            jint("connect_failures", st.connect_failures);
            jint("retries", st.retries);
            jreal("elapsed_s", (now - start) / 1e9);
            printf("}\n");
            fflush(stdout);
        }
        if (ready_at && cfg.progress > 0 && now >= next_progress) {
            printf("{\"event\":\"progress\",\"delivered\":%" PRIu64 ",\"disconnects\":%" PRIu64
                   ",\"last_recv_ns\":%" PRIu64 "}\n",
                   st.delivered, st.disconnects, st.last_recv_ns);
            fflush(stdout);
            next_progress = now + (uint64_t)(cfg.progress * 1e9);
        }
        if (ready_at && cfg.duration > 0 && now - ready_at >= (uint64_t)(cfg.duration * 1e9)) break;
        int timeout_ms = ready_at ? 50 : 5;
        int n = epoll_wait(epfd, events, 1024, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            uint32_t ev = events[i].events;
            if (c->fd < 0) continue; /* closed earlier in this batch */
            if (c->st == S_CONNECTING) {
                if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
                continue;
            }
            if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c, rbuf);
            if (c->fd >= 0 && (ev & EPOLLOUT)) flush_out(c);
        }
    }
    print_summary(start);
    free(rbuf);
    return 0;
}

/* ---------------------------------------------------------------- selftest */

static int read_exact(uint8_t *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        size_t r = fread(p + got, 1, n - got, stdin);
        if (r == 0) return got == 0 ? 0 : -1;
        got += r;
    }
    return 1;
}

static int selftest(void) {
    struct conn *c = &conns[0];
    strcpy(c->key, "dGhlIHNhbXBsZSBub25jZQ=="); /* RFC 6455 section 1.3 sample */
    c->st = S_HTTP;
    c->deadline = UINT64_MAX;
    uint8_t *chunk = malloc(MAX_FRAME + 64);
    if (!chunk) die("malloc");
    for (;;) {
        uint8_t lenb[4];
        int r = read_exact(lenb, 4);
        if (r == 0) break;
        uint32_t len = (uint32_t)lenb[0] << 24 | (uint32_t)lenb[1] << 16 |
                       (uint32_t)lenb[2] << 8 | lenb[3];
        if (r < 0 || len > MAX_FRAME + 64 || read_exact(chunk, len) != 1) {
            fprintf(stderr, "selftest: truncated input\n");
            return 2;
        }
        now_real = clock_ns(CLOCK_REALTIME);
        if (c->st == S_HTTP) feed_http(c, chunk, len);
        else if (is_open(c)) feed_frames(c, chunk, len);
    }
    printf("{\"event\":\"selftest\",\"state\":\"%s\"", state_names[c->st]);
    jint("delivered", c->delivered);
    jint("max_seq", c->max_seq);
    jint("gaps", st.gaps);
    jint("dups", st.dups);
    jint("reordered", st.reordered);
    jint("other_events", st.other_events);
    jint("bad_messages", st.bad_messages);
    jint("disconnects", st.disconnects);
    jint("retries", st.retries);
    jint("latencies", st.lat_len);
    jint("buffered", c->in.len);
    printf(",\"sent_hex\":\"");
    for (size_t i = 0; i < selftest_sent.len; i++) printf("%02x", selftest_sent.p[i]);
    printf("\"}\n");
    free(chunk);
    return 0;
}

/* ---------------------------------------------------------------- arguments */

static void usage(FILE *f) {
    fprintf(f,
            "usage: loadclient [options]\n"
            "  --host H            server address, IPv4 literal or name (127.0.0.1)\n"
            "  --port P            server port (3000)\n"
            "  --path P            Socket.IO path (/socket.io/)\n"
            "  --clients N         connections (1)\n"
            "  --rooms K           chatrooms; client i joins i %% K (1)\n"
            "  --room-base B       chatroom id of room 0 (700000)\n"
            "  --slug-prefix S     slug of room r is S<r> (chan)\n"
            "  --connect-rate R    new connections per second (500)\n"
            "  --max-inflight M    handshakes in progress at once (200)\n"
            "  --retries X         retries per client before it counts as failed (5)\n"
            "  --stage-timeout S   seconds allowed per handshake stage (10)\n"
            "  --duration S        print the summary S seconds after ready (0: wait for SIGUSR1)\n"
            "  --progress S        progress line every S seconds after ready (0.25; 0: off)\n"
            "  --selftest          feed length-prefixed chunks from stdin to one client\n");
}

static void parse_args(int argc, char **argv, bool *self) {
    static const struct option opts[] = {
        {"host", 1, 0, 'h'},         {"port", 1, 0, 'p'},      {"path", 1, 0, 'P'},
        {"clients", 1, 0, 'n'},      {"rooms", 1, 0, 'k'},     {"room-base", 1, 0, 'b'},
        {"slug-prefix", 1, 0, 's'},  {"connect-rate", 1, 0, 'r'}, {"max-inflight", 1, 0, 'm'},
        {"retries", 1, 0, 'x'},      {"stage-timeout", 1, 0, 't'}, {"duration", 1, 0, 'd'},
        {"progress", 1, 0, 'g'},     {"selftest", 0, 0, 'S'},  {"help", 0, 0, '?'},
        {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': cfg.host = optarg; break;
        case 'p': cfg.port = atoi(optarg); break;
        case 'P': cfg.path = optarg; break;
        case 'n': cfg.clients = atoi(optarg); break;
        case 'k': cfg.rooms = atoi(optarg); break;
        case 'b': cfg.room_base = atol(optarg); break;
        case 's': cfg.slug_prefix = optarg; break;
        case 'r': cfg.connect_rate = atof(optarg); break;
        case 'm': cfg.max_inflight = atoi(optarg); break;
        case 'x': cfg.retries = atoi(optarg); break;
        case 't': cfg.stage_timeout = atof(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'g': cfg.progress = atof(optarg); break;
        case 'S': *self = true; break;
        default: usage(o == '?' ? stdout : stderr); exit(o == '?' ? 0 : 2);
        }
    }
    bool bad = optind != argc || cfg.clients < 1 || cfg.rooms < 1 || cfg.connect_rate <= 0;
    bad = bad || cfg.port <= 0 || cfg.port > 65535 || cfg.max_inflight < 1 || cfg.retries < 0;
    if (bad || cfg.stage_timeout <= 0) {
        usage(stderr);
        exit(2);
    }
}

static void resolve_server(void) {
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    int err = getaddrinfo(cfg.host, NULL, &hints, &res);
    if (err) {
        fprintf(stderr, "loadclient: %s: %s\n", cfg.host, gai_strerror(err));
        exit(2);
    }
    server_addr = *(struct sockaddr_in *)res->ai_addr;
    server_addr.sin_port = htons((uint16_t)cfg.port);
    freeaddrinfo(res);
}

int main(int argc, char **argv) {
    bool self = false;
    parse_args(argc, argv, &self);
    random_bytes(&rng_state, sizeof rng_state);
    rng_state |= 1;
    if (self) cfg.clients = 1;
    conns = calloc((size_t)cfg.clients, sizeof *conns);
    st.room_delivered = calloc((size_t)cfg.rooms, sizeof *st.room_delivered);
    if (!conns || !st.room_delivered) die("calloc");
    for (int i = 0; i < cfg.clients; i++) {
        conns[i].fd = -1;
        conns[i].id = i;
        conns[i].room = i % cfg.rooms;
        conns[i].msg_op = -1;
    }
    if (self) return selftest();
    resolve_server();
    raise_nofile(cfg.clients + 64);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return run();
}
