// Connection-ID-aware routing of DTLS 1.2 datagrams for nginx's stream module (njs >= 0.7).
//
// nginx proxies UDP in "sessions": the datagrams of one client address and port go to the
// upstream chosen for the session's first datagram, until the session has been idle for
// `proxy_timeout`. This module looks at that first datagram (`js_preread`) and sets the
// variable $dtls_node:
//
//   * a `tls12_cid` record (RFC 9146: content type 25, version 0xfefd, epoch != 0) carries the
//     Connection ID the node issued; openssl-dtls nodes of a fleet put their node index in the
//     CID's first byte (`DtlsServerContextBuilder::fleet`, `--node-id N`), so $dtls_node is that
//     byte in decimal, whatever address the datagram comes from (a NAT rebinding, a new nginx
//     session after the device slept);
//   * anything else (a ClientHello, a handshake record, a record without CID, garbage) leaves
//     $dtls_node empty: the configuration hashes the client's address instead.
//
// The record header read (DTLS 1.2, RFC 6347 §4.1, with RFC 9146 §4):
//
//   offset 0      content type (25 = tls12_cid)
//   offset 1..2   version (0xfe 0xfd)
//   offset 3..4   epoch (0 only for the unprotected handshake: never a CID record)
//   offset 5..10  sequence number
//   offset 11..   the CID; its first byte is the node index
//
// See deploy/nginx/README.md for the configuration around it.

var TLS12_CID = 25;

function node_of(data) {
    if (data.length < 12) {
        return "";
    }
    if (data.charCodeAt(0) != TLS12_CID
        || data.charCodeAt(1) != 0xfe || data.charCodeAt(2) != 0xfd) {
        return "";
    }
    if (data.charCodeAt(3) == 0 && data.charCodeAt(4) == 0) {
        return "";
    }
    return String(data.charCodeAt(11));
}

function preread(s) {
    s.on('upload', function (data, flags) {
        s.variables.dtls_node = node_of(data);
        s.done();
    });
}

export default { preread, node_of };
