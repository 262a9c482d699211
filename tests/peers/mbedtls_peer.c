/*
 * mbedtls_peer: an independent DTLS 1.2 test peer built on Mbed TLS 3.6, for interop tests of
 * RFC 9146 Connection IDs (and plain DTLS 1.2) against openssl-dtls.
 *
 * One program, both roles, over a non-connected UDP socket on 127.0.0.1 with our own BIO
 * callbacks (sendto/recvfrom), so the program sees every datagram and its source address. It
 * counts records by content type while walking each datagram, and performs the RFC 9146
 * section 6 peer-address update itself (Mbed TLS leaves that to the application).
 *
 * tests/peers/README.md lists the options and the output lines that tests rely on.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "mbedtls/ctr_drbg.h"
#include "mbedtls/entropy.h"
#include "mbedtls/error.h"
#include "mbedtls/net_sockets.h"
#include "mbedtls/pk.h"
#include "mbedtls/ssl.h"
#include "mbedtls/ssl_ciphersuites.h"
#include "mbedtls/ssl_cookie.h"
#include "mbedtls/timing.h"
#include "mbedtls/x509_crt.h"
#include "psa/crypto.h"

#if !defined(MBEDTLS_SSL_DTLS_CONNECTION_ID) || !defined(MBEDTLS_SSL_PROTO_DTLS)
#error "this peer needs MBEDTLS_SSL_PROTO_DTLS and MBEDTLS_SSL_DTLS_CONNECTION_ID"
#endif

#define MSG_TYPE_CID 25
#define ECHO_TIMEOUT_MS 5000
#define MAX_PENDING 128
#define DGRAM_MAX 16384 + 512

/* ---------------------------------------------------------------- failures */

static void fail(const char *what, int code)
{
    if (code < 0) {
        fprintf(stderr, "error: %s (-0x%04X)\n", what, (unsigned) -code);
    } else {
        fprintf(stderr, "error: %s (-0x%04X)\n", what, (unsigned) code);
    }
    exit(1);
}

static void fail_errno(const char *what)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s: %s", what, strerror(errno));
    fail(buf, 0);
}

static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

/* ---------------------------------------------------------------- options */

struct options {
    int server;
    int port;
    struct sockaddr_in connect_addr;
    int have_connect;
    const char *psk_identity;
    unsigned char psk[64];
    size_t psk_len;
    const char *cert, *key, *ca;
    int require_client_cert;
    const char *ciphersuite;
    int cid; /* -1: off, else own CID length */
    long exit_after; /* server: 0 = run until killed */
    long count;
    long interval_ms;
    const char *message;
    long rebind_after; /* client: 0 = never */
};

static void usage(void)
{
    fprintf(stderr,
            "usage: mbedtls_peer --role server|client [--port P | --connect 127.0.0.1:P]\n"
            "         (--psk-identity ID --psk-hex HEX | --cert PEM --key PEM --ca PEM)\n"
            "         [--require-client-cert] [--ciphersuite NAME] [--cid off|N]\n"
            "         server: [--exit-after N]\n"
            "         client: [--count N] [--interval-ms MS] [--message TEXT] [--rebind-after K]\n");
    exit(1);
}

static long parse_long(const char *opt, const char *s, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v < min || v > max) {
        char buf[256];
        snprintf(buf, sizeof buf, "bad value for %s: '%s'", opt, s);
        fail(buf, 0);
    }
    return v;
}

static size_t parse_hex(const char *s, unsigned char *outb, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n % 2 != 0 || n / 2 > max) {
        fail("bad --psk-hex (even number of hex digits, at most 64 bytes)", 0);
    }
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1 || !strchr("0123456789abcdefABCDEF", s[2 * i]) ||
            !strchr("0123456789abcdefABCDEF", s[2 * i + 1])) {
            fail("bad --psk-hex (not hex)", 0);
        }
        outb[i] = (unsigned char) v;
    }
    return n / 2;
}

static void parse_args(int argc, char **argv, struct options *o)
{
    memset(o, 0, sizeof *o);
    o->server = -1;
    o->cid = -1;
    o->count = 1;
    o->message = "hello";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--require-client-cert") == 0) {
            o->require_client_cert = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage();
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "error: missing value for %s (-0x0000)\n", a);
            usage();
        }
        const char *v = argv[++i];
        if (strcmp(a, "--role") == 0) {
            if (strcmp(v, "server") == 0) {
                o->server = 1;
            } else if (strcmp(v, "client") == 0) {
                o->server = 0;
            } else {
                fail("--role must be server or client", 0);
            }
        } else if (strcmp(a, "--port") == 0) {
            o->port = (int) parse_long(a, v, 0, 65535);
        } else if (strcmp(a, "--connect") == 0) {
            const char *colon = strrchr(v, ':');
            char host[64];
            if (colon == NULL || (size_t) (colon - v) >= sizeof host) {
                fail("--connect wants IP:PORT", 0);
            }
            memcpy(host, v, (size_t) (colon - v));
            host[colon - v] = '\0';
            o->connect_addr.sin_family = AF_INET;
            o->connect_addr.sin_port = htons((uint16_t) parse_long(a, colon + 1, 1, 65535));
            if (inet_pton(AF_INET, host, &o->connect_addr.sin_addr) != 1) {
                fail("--connect wants an IPv4 address", 0);
            }
            o->have_connect = 1;
        } else if (strcmp(a, "--psk-identity") == 0) {
            o->psk_identity = v;
        } else if (strcmp(a, "--psk-hex") == 0) {
            o->psk_len = parse_hex(v, o->psk, sizeof o->psk);
        } else if (strcmp(a, "--cert") == 0) {
            o->cert = v;
        } else if (strcmp(a, "--key") == 0) {
            o->key = v;
        } else if (strcmp(a, "--ca") == 0) {
            o->ca = v;
        } else if (strcmp(a, "--ciphersuite") == 0) {
            o->ciphersuite = v;
        } else if (strcmp(a, "--cid") == 0) {
            o->cid = strcmp(v, "off") == 0 ? -1
                     : (int) parse_long(a, v, 0, MBEDTLS_SSL_CID_IN_LEN_MAX);
        } else if (strcmp(a, "--exit-after") == 0) {
            o->exit_after = parse_long(a, v, 0, 1L << 30);
        } else if (strcmp(a, "--count") == 0) {
            o->count = parse_long(a, v, 0, 1L << 30);
        } else if (strcmp(a, "--interval-ms") == 0) {
            o->interval_ms = parse_long(a, v, 0, 60000);
        } else if (strcmp(a, "--message") == 0) {
            o->message = v;
        } else if (strcmp(a, "--rebind-after") == 0) {
            o->rebind_after = parse_long(a, v, 0, 1L << 30);
        } else {
            fprintf(stderr, "error: unknown option %s (-0x0000)\n", a);
            usage();
        }
    }
    if (o->server < 0) {
        fail("--role server|client is required", 0);
    }
    if (!o->server && !o->have_connect) {
        fail("the client needs --connect IP:PORT", 0);
    }
    int psk = o->psk_identity != NULL || o->psk_len != 0;
    if (psk && (o->psk_identity == NULL || o->psk_len == 0)) {
        fail("--psk-identity and --psk-hex go together", 0);
    }
    if (!psk) {
        if (o->server && (o->cert == NULL || o->key == NULL)) {
            fail("the server needs --psk-identity/--psk-hex or --cert/--key", 0);
        }
        if (!o->server && o->ca == NULL) {
            fail("the client needs --psk-identity/--psk-hex or --ca", 0);
        }
        if ((o->cert == NULL) != (o->key == NULL)) {
            fail("--cert and --key go together", 0);
        }
    }
    if (o->require_client_cert && o->ca == NULL) {
        fail("--require-client-cert needs --ca", 0);
    }
}

/* ---------------------------------------------------------------- transport */

struct peer_io {
    int fd;
    struct sockaddr_in peer;         /* where records are sent */
    struct sockaddr_in last_src;     /* source of the datagram Mbed TLS is reading now */
    int last_had_cid;                /* that datagram held a type-25 record */
    uint64_t last_max_seq;           /* highest epoch/sequence of its type-25 records */
    uint64_t auth_max_seq;           /* highest such value of an authenticated datagram */
    int accept_any_source;           /* set once CID carries the association */
    size_t own_cid_len;              /* CID length in records we receive (type 25) */
    int peer_cid_known;              /* CID length in records we send is known */
    size_t peer_cid_len;
    /* datagrams sent before the peer's CID length is known (walked once it is) */
    unsigned char *pending[MAX_PENDING];
    size_t pending_len[MAX_PENDING];
    int pending_n;
    /* counters */
    unsigned long sent_cid, recv_cid, sent_other_e1, recv_other_e1;
};

static const char *addr_str(const struct sockaddr_in *a, char *buf, size_t len)
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    snprintf(buf, len, "%s:%u", ip, (unsigned) ntohs(a->sin_port));
    return buf;
}

static int same_addr(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
    return a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port;
}

/* Walks the records of one datagram. cid_len: the CID length in type-25 records. Counts
 * type-25 records and epoch>=1 records of other types; returns the highest 64-bit
 * epoch|sequence of the type-25 records (0 if none) via max_seq. */
static void walk(const unsigned char *b, size_t n, size_t cid_len, unsigned long *cid_count,
                 unsigned long *other_count, int *had_cid, uint64_t *max_seq)
{
    size_t off = 0;
    while (off + 13 <= n) {
        unsigned type = b[off];
        unsigned epoch = ((unsigned) b[off + 3] << 8) | b[off + 4];
        uint64_t es = 0;
        for (int i = 3; i < 11; i++) {
            es = (es << 8) | b[off + i];
        }
        size_t hdr = 13;
        if (type == MSG_TYPE_CID) {
            hdr = 11 + cid_len + 2;
            if (off + hdr > n) {
                break;
            }
        }
        size_t len = ((size_t) b[off + hdr - 2] << 8) | b[off + hdr - 1];
        if (off + hdr + len > n) {
            break; /* truncated or not ours: stop counting */
        }
        if (type == MSG_TYPE_CID) {
            (*cid_count)++;
            if (had_cid != NULL) {
                *had_cid = 1;
            }
            if (max_seq != NULL && es > *max_seq) {
                *max_seq = es;
            }
        } else if (epoch >= 1) {
            (*other_count)++;
        }
        off += hdr + len;
    }
}

static void count_sent(struct peer_io *io, const unsigned char *buf, size_t len)
{
    if (io->peer_cid_known) {
        walk(buf, len, io->peer_cid_len, &io->sent_cid, &io->sent_other_e1, NULL, NULL);
        return;
    }
    if (io->pending_n >= MAX_PENDING) {
        fail("too many datagrams sent before the handshake completed", 0);
    }
    io->pending[io->pending_n] = malloc(len ? len : 1);
    if (io->pending[io->pending_n] == NULL) {
        fail("out of memory", 0);
    }
    memcpy(io->pending[io->pending_n], buf, len);
    io->pending_len[io->pending_n] = len;
    io->pending_n++;
}

static void set_peer_cid_len(struct peer_io *io, size_t len)
{
    io->peer_cid_len = len;
    io->peer_cid_known = 1;
    for (int i = 0; i < io->pending_n; i++) {
        walk(io->pending[i], io->pending_len[i], len, &io->sent_cid, &io->sent_other_e1, NULL,
             NULL);
        free(io->pending[i]);
    }
    io->pending_n = 0;
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    struct peer_io *io = ctx;
    ssize_t n;
    do {
        n = sendto(io->fd, buf, len, 0, (const struct sockaddr *) &io->peer, sizeof io->peer);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return MBEDTLS_ERR_SSL_WANT_WRITE;
        }
        if (errno == ECONNREFUSED) {
            /* an ICMP port unreachable from an earlier datagram: UDP is lossy, carry on */
            return (int) len;
        }
        return MBEDTLS_ERR_NET_SEND_FAILED;
    }
    count_sent(io, buf, (size_t) n);
    return (int) n;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* timeout 0: block. Drops datagrams from other addresses unless CID carries the
 * association (then Mbed TLS sees them and drops those whose CID or MAC is wrong). */
static int bio_recv_timeout(void *ctx, unsigned char *buf, size_t len, uint32_t timeout)
{
    struct peer_io *io = ctx;
    long long deadline = timeout ? now_ms() + timeout : 0;
    for (;;) {
        int wait = -1;
        if (timeout) {
            long long left = deadline - now_ms();
            if (left <= 0) {
                return MBEDTLS_ERR_SSL_TIMEOUT;
            }
            wait = (int) left;
        }
        struct pollfd p = { .fd = io->fd, .events = POLLIN };
        int r = poll(&p, 1, wait);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return MBEDTLS_ERR_NET_RECV_FAILED;
        }
        if (r == 0) {
            return MBEDTLS_ERR_SSL_TIMEOUT;
        }
        struct sockaddr_in src;
        socklen_t slen = sizeof src;
        ssize_t n = recvfrom(io->fd, buf, len, 0, (struct sockaddr *) &src, &slen);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNREFUSED) {
                continue;
            }
            return MBEDTLS_ERR_NET_RECV_FAILED;
        }
        if (slen != sizeof src || src.sin_family != AF_INET) {
            continue;
        }
        if (!io->accept_any_source && !same_addr(&src, &io->peer)) {
            continue;
        }
        io->last_src = src;
        io->last_had_cid = 0;
        io->last_max_seq = 0;
        walk(buf, (size_t) n, io->own_cid_len, &io->recv_cid, &io->recv_other_e1,
             &io->last_had_cid, &io->last_max_seq);
        return (int) n;
    }
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    return bio_recv_timeout(ctx, buf, len, 0);
}

static int udp_socket(int port, struct sockaddr_in *bound)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        fail_errno("socket");
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t) port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *) &a, sizeof a) != 0) {
        fail_errno("bind 127.0.0.1");
    }
    socklen_t l = sizeof *bound;
    if (getsockname(fd, (struct sockaddr *) bound, &l) != 0) {
        fail_errno("getsockname");
    }
    return fd;
}

/* ---------------------------------------------------------------- TLS set-up */

struct tls {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    mbedtls_ssl_cookie_ctx cookie;
    mbedtls_x509_crt cert, ca;
    mbedtls_pk_context key;
    mbedtls_timing_delay_context timer;
    int suites[2];
    unsigned char own_cid[MBEDTLS_SSL_CID_IN_LEN_MAX];
};

static void tls_init(struct tls *t, const struct options *o, struct peer_io *io)
{
    int ret;
    memset(t, 0, sizeof *t);
    psa_status_t st = psa_crypto_init();
    if (st != PSA_SUCCESS) {
        fail("psa_crypto_init", (int) st);
    }
    mbedtls_entropy_init(&t->entropy);
    mbedtls_ctr_drbg_init(&t->drbg);
    mbedtls_ssl_config_init(&t->conf);
    mbedtls_ssl_init(&t->ssl);
    mbedtls_ssl_cookie_init(&t->cookie);
    mbedtls_x509_crt_init(&t->cert);
    mbedtls_x509_crt_init(&t->ca);
    mbedtls_pk_init(&t->key);

    const char *pers = o->server ? "mbedtls_peer server" : "mbedtls_peer client";
    if ((ret = mbedtls_ctr_drbg_seed(&t->drbg, mbedtls_entropy_func, &t->entropy,
                                     (const unsigned char *) pers, strlen(pers))) != 0) {
        fail("mbedtls_ctr_drbg_seed", ret);
    }
    if ((ret = mbedtls_ssl_config_defaults(&t->conf,
                                           o->server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
                                           MBEDTLS_SSL_TRANSPORT_DATAGRAM,
                                           MBEDTLS_SSL_PRESET_DEFAULT)) != 0) {
        fail("mbedtls_ssl_config_defaults", ret);
    }
    mbedtls_ssl_conf_rng(&t->conf, mbedtls_ctr_drbg_random, &t->drbg);
    mbedtls_ssl_conf_min_tls_version(&t->conf, MBEDTLS_SSL_VERSION_TLS1_2);
    mbedtls_ssl_conf_max_tls_version(&t->conf, MBEDTLS_SSL_VERSION_TLS1_2);
    mbedtls_ssl_conf_handshake_timeout(&t->conf, 1000, 16000);

    if (o->ciphersuite != NULL) {
        t->suites[0] = mbedtls_ssl_get_ciphersuite_id(o->ciphersuite);
        if (t->suites[0] == 0) {
            fail("unknown --ciphersuite (Mbed TLS names, e.g. TLS-PSK-WITH-AES-128-CCM-8)", 0);
        }
        t->suites[1] = 0;
        mbedtls_ssl_conf_ciphersuites(&t->conf, t->suites);
    }

    if (o->psk_len != 0) {
        if ((ret = mbedtls_ssl_conf_psk(&t->conf, o->psk, o->psk_len,
                                        (const unsigned char *) o->psk_identity,
                                        strlen(o->psk_identity))) != 0) {
            fail("mbedtls_ssl_conf_psk", ret);
        }
    }
    if (o->cert != NULL) {
        if ((ret = mbedtls_x509_crt_parse_file(&t->cert, o->cert)) != 0) {
            fail("reading --cert", ret);
        }
        if ((ret = mbedtls_pk_parse_keyfile(&t->key, o->key, NULL, mbedtls_ctr_drbg_random,
                                            &t->drbg)) != 0) {
            fail("reading --key", ret);
        }
        if ((ret = mbedtls_ssl_conf_own_cert(&t->conf, &t->cert, &t->key)) != 0) {
            fail("mbedtls_ssl_conf_own_cert", ret);
        }
    }
    if (o->ca != NULL) {
        if ((ret = mbedtls_x509_crt_parse_file(&t->ca, o->ca)) != 0) {
            fail("reading --ca", ret);
        }
        mbedtls_ssl_conf_ca_chain(&t->conf, &t->ca, NULL);
    }
    if (o->server) {
        mbedtls_ssl_conf_authmode(&t->conf, o->require_client_cert ? MBEDTLS_SSL_VERIFY_REQUIRED
                                                                   : MBEDTLS_SSL_VERIFY_NONE);
        if ((ret = mbedtls_ssl_cookie_setup(&t->cookie, mbedtls_ctr_drbg_random, &t->drbg)) != 0) {
            fail("mbedtls_ssl_cookie_setup", ret);
        }
        mbedtls_ssl_conf_dtls_cookies(&t->conf, mbedtls_ssl_cookie_write, mbedtls_ssl_cookie_check,
                                      &t->cookie);
    } else {
        mbedtls_ssl_conf_authmode(&t->conf, o->ca != NULL ? MBEDTLS_SSL_VERIFY_REQUIRED
                                                          : MBEDTLS_SSL_VERIFY_NONE);
    }

    if (o->cid >= 0) {
        if ((ret = mbedtls_ssl_conf_cid(&t->conf, (size_t) o->cid,
                                        MBEDTLS_SSL_UNEXPECTED_CID_IGNORE)) != 0) {
            fail("mbedtls_ssl_conf_cid", ret);
        }
    }

    if ((ret = mbedtls_ssl_setup(&t->ssl, &t->conf)) != 0) {
        fail("mbedtls_ssl_setup", ret);
    }
    if (!o->server) {
        /* Verify the chain against --ca but not the name (explicitly, as 3.6.3+ requires). */
        if ((ret = mbedtls_ssl_set_hostname(&t->ssl, NULL)) != 0) {
            fail("mbedtls_ssl_set_hostname", ret);
        }
    }
    if (o->cid >= 0) {
        if ((ret = mbedtls_ctr_drbg_random(&t->drbg, t->own_cid, (size_t) o->cid)) != 0) {
            fail("generating own CID", ret);
        }
        if ((ret = mbedtls_ssl_set_cid(&t->ssl, MBEDTLS_SSL_CID_ENABLED, t->own_cid,
                                       (size_t) o->cid)) != 0) {
            fail("mbedtls_ssl_set_cid", ret);
        }
        io->own_cid_len = (size_t) o->cid;
    }
    mbedtls_ssl_set_bio(&t->ssl, io, bio_send, bio_recv, bio_recv_timeout);
    mbedtls_ssl_set_timer_cb(&t->ssl, &t->timer, mbedtls_timing_set_delay,
                             mbedtls_timing_get_delay);
}

static void hex(char *dst, const unsigned char *b, size_t n)
{
    if (n == 0) {
        strcpy(dst, "-");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        sprintf(dst + 2 * i, "%02x", b[i]);
    }
}

/* After a completed handshake: learn the negotiated CIDs, print the summary line. */
static void handshake_done(struct tls *t, const struct options *o, struct peer_io *io,
                           int handshakes)
{
    int enabled = MBEDTLS_SSL_CID_DISABLED;
    unsigned char peer_cid[MBEDTLS_SSL_CID_OUT_LEN_MAX];
    size_t peer_len = 0;
    int ret = mbedtls_ssl_get_peer_cid(&t->ssl, &enabled, peer_cid, &peer_len);
    if (ret != 0) {
        fail("mbedtls_ssl_get_peer_cid", ret);
    }
    if (enabled != MBEDTLS_SSL_CID_ENABLED) {
        peer_len = 0;
    }
    set_peer_cid_len(io, peer_len);
    char out_hex[2 * MBEDTLS_SSL_CID_OUT_LEN_MAX + 2], in_hex[2 * MBEDTLS_SSL_CID_IN_LEN_MAX + 2];
    hex(out_hex, peer_cid, peer_len);
    /* Our own CID is in use when the extension was negotiated (get_peer_cid says disabled
     * only when it was not, or when both CIDs are empty). */
    size_t own_len = (enabled == MBEDTLS_SSL_CID_ENABLED && o->cid > 0) ? (size_t) o->cid : 0;
    hex(in_hex, t->own_cid, own_len);
    /* From now on a datagram's source address need not match: our CID identifies the
     * association, and Mbed TLS drops records whose CID or MAC does not match. */
    io->accept_any_source = own_len > 0;
    out("handshake completed: suite=%s cid_out=%s cid_in=%s\n", mbedtls_ssl_get_ciphersuite(&t->ssl),
        out_hex, in_hex);
    out("handshakes: %d\n", handshakes);
}

static void print_records(const struct peer_io *io)
{
    out("records: sent_cid=%lu recv_cid=%lu sent_other_epoch1=%lu recv_other_epoch1=%lu\n",
        io->sent_cid, io->recv_cid, io->sent_other_e1, io->recv_other_e1);
}

/* ---------------------------------------------------------------- server */

static int run_server(const struct options *o)
{
    struct peer_io io;
    memset(&io, 0, sizeof io);
    struct sockaddr_in bound;
    io.fd = udp_socket(o->port, &bound);
    static struct tls t;
    tls_init(&t, o, &io);
    out("listening on %u\n", (unsigned) ntohs(bound.sin_port));
    int ret;
    int handshakes = 0;
    long echoed = 0;
    unsigned char buf[DGRAM_MAX];
    char a1[64], a2[64];

new_handshake:
    /* Wait for a ClientHello and take its source as the peer (as mbedtls_net_accept does). */
    io.accept_any_source = 0;
    io.peer_cid_known = 0;
    for (;;) {
        struct sockaddr_in src;
        socklen_t slen = sizeof src;
        ssize_t n = recvfrom(io.fd, buf, 1, MSG_PEEK, (struct sockaddr *) &src, &slen);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail_errno("recvfrom");
        }
        io.peer = src;
        break;
    }
    {
        /* transport id for the cookie: address and port bytes */
        unsigned char id[6];
        memcpy(id, &io.peer.sin_addr, 4);
        memcpy(id + 4, &io.peer.sin_port, 2);
        if ((ret = mbedtls_ssl_set_client_transport_id(&t.ssl, id, sizeof id)) != 0) {
            fail("mbedtls_ssl_set_client_transport_id", ret);
        }
    }
    do {
        ret = mbedtls_ssl_handshake(&t.ssl);
    } while (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE);
    if (ret == MBEDTLS_ERR_SSL_HELLO_VERIFY_REQUIRED) {
        /* HelloVerifyRequest sent; the client's next ClientHello carries the cookie. */
        if ((ret = mbedtls_ssl_session_reset(&t.ssl)) != 0) {
            fail("mbedtls_ssl_session_reset", ret);
        }
        /* the sent HelloVerifyRequest was counted in pending: all epoch 0, walk it now */
        set_peer_cid_len(&io, 0);
        io.peer_cid_known = 0;
        goto new_handshake;
    }
    if (ret != 0) {
        fail("handshake", ret);
    }
    handshakes++;
    handshake_done(&t, o, &io, handshakes);

    for (;;) {
        ret = mbedtls_ssl_read(&t.ssl, buf, sizeof buf);
        if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE ||
            ret == MBEDTLS_ERR_SSL_TIMEOUT) {
            continue;
        }
        if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
            break;
        }
        if (ret == MBEDTLS_ERR_SSL_CLIENT_RECONNECT) {
            /* a new ClientHello from the peer's address: a new handshake on this context */
            out("client reconnect\n");
            io.accept_any_source = 0;
            io.peer_cid_known = 0;
            do {
                ret = mbedtls_ssl_handshake(&t.ssl);
            } while (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE);
            if (ret == MBEDTLS_ERR_SSL_HELLO_VERIFY_REQUIRED) {
                if ((ret = mbedtls_ssl_session_reset(&t.ssl)) != 0) {
                    fail("mbedtls_ssl_session_reset", ret);
                }
                set_peer_cid_len(&io, 0);
                io.peer_cid_known = 0;
                goto new_handshake;
            }
            if (ret != 0) {
                fail("handshake (client reconnect)", ret);
            }
            handshakes++;
            handshake_done(&t, o, &io, handshakes);
            continue;
        }
        if (ret < 0) {
            fail("mbedtls_ssl_read", ret);
        }
        /* RFC 9146 section 6: the datagram authenticated (a record in it decrypted to data),
         * carried a CID and is newer than any authenticated before: follow its address. */
        if (io.accept_any_source && io.last_had_cid && !same_addr(&io.last_src, &io.peer) &&
            io.last_max_seq > io.auth_max_seq) {
            out("address changed: %s -> %s\n", addr_str(&io.peer, a1, sizeof a1),
                addr_str(&io.last_src, a2, sizeof a2));
            io.peer = io.last_src;
        }
        if (io.last_max_seq > io.auth_max_seq && same_addr(&io.last_src, &io.peer)) {
            io.auth_max_seq = io.last_max_seq;
        }
        size_t len = (size_t) ret;
        size_t done = 0;
        while (done < len) {
            ret = mbedtls_ssl_write(&t.ssl, buf + done, len - done);
            if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE) {
                continue;
            }
            if (ret < 0) {
                fail("mbedtls_ssl_write", ret);
            }
            done += (size_t) ret;
        }
        echoed++;
        if (o->exit_after > 0 && echoed >= o->exit_after) {
            do {
                ret = mbedtls_ssl_close_notify(&t.ssl);
            } while (ret == MBEDTLS_ERR_SSL_WANT_WRITE);
            break;
        }
    }
    print_records(&io);
    out("bye\n");
    return 0;
}

/* ---------------------------------------------------------------- client */

static int run_client(const struct options *o)
{
    struct peer_io io;
    memset(&io, 0, sizeof io);
    struct sockaddr_in bound;
    io.fd = udp_socket(0, &bound);
    io.peer = o->connect_addr;

    static struct tls t;
    tls_init(&t, o, &io);
    int ret;
    do {
        ret = mbedtls_ssl_handshake(&t.ssl);
    } while (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE);
    if (ret != 0) {
        if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
            char vb[512];
            mbedtls_x509_crt_verify_info(vb, sizeof vb, "  ", mbedtls_ssl_get_verify_result(&t.ssl));
            fprintf(stderr, "verify: %s", vb);
        }
        fail("handshake", ret);
    }
    handshake_done(&t, o, &io, 1);
    mbedtls_ssl_conf_read_timeout(&t.conf, ECHO_TIMEOUT_MS);

    unsigned char buf[DGRAM_MAX];
    char a1[64], a2[64];
    for (long i = 1; i <= o->count; i++) {
        char msg[4096];
        int mlen = snprintf(msg, sizeof msg, "%s %ld", o->message, i);
        if (mlen < 0 || (size_t) mlen >= sizeof msg) {
            fail("--message too long", 0);
        }
        do {
            ret = mbedtls_ssl_write(&t.ssl, (const unsigned char *) msg, (size_t) mlen);
        } while (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE);
        if (ret < 0) {
            fail("mbedtls_ssl_write", ret);
        }
        long long deadline = now_ms() + ECHO_TIMEOUT_MS;
        for (;;) {
            ret = mbedtls_ssl_read(&t.ssl, buf, sizeof buf - 1);
            if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE) {
                if (now_ms() < deadline) {
                    continue;
                }
                ret = MBEDTLS_ERR_SSL_TIMEOUT;
            }
            if (ret == MBEDTLS_ERR_SSL_TIMEOUT) {
                fprintf(stderr, "error: no echo of message %ld within %d ms (-0x%04X)\n", i,
                        ECHO_TIMEOUT_MS, (unsigned) -MBEDTLS_ERR_SSL_TIMEOUT);
                exit(2);
            }
            if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
                fail("peer closed before echoing", ret);
            }
            if (ret < 0) {
                fail("mbedtls_ssl_read", ret);
            }
            break;
        }
        buf[ret] = '\0';
        out("echo: %s\n", (char *) buf);
        if (o->rebind_after > 0 && i == o->rebind_after) {
            struct sockaddr_in nb;
            int nfd = udp_socket(0, &nb);
            close(io.fd);
            io.fd = nfd;
            out("rebound: %s -> %s\n", addr_str(&bound, a1, sizeof a1), addr_str(&nb, a2, sizeof a2));
            bound = nb;
        }
        if (i < o->count && o->interval_ms > 0) {
            usleep((useconds_t) o->interval_ms * 1000);
        }
    }
    do {
        ret = mbedtls_ssl_close_notify(&t.ssl);
    } while (ret == MBEDTLS_ERR_SSL_WANT_WRITE);
    if (ret < 0) {
        fail("mbedtls_ssl_close_notify", ret);
    }
    print_records(&io);
    return 0;
}

int main(int argc, char **argv)
{
    struct options o;
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(60);
    parse_args(argc, argv, &o);
    return o.server ? run_server(&o) : run_client(&o);
}
