//! Unauthenticated (epoch-0) records during a handshake: which ones a session keeps from
//! OpenSSL, so that one spoofed datagram cannot end a handshake in progress.
//!
//! Until both sides have changed cipher specs, every record is plaintext: anyone who knows the
//! two addresses can forge one, without seeing the traffic. OpenSSL ends a handshake on the
//! first epoch-0 fatal alert it reads, on a `close_notify`, and on a HelloVerifyRequest it does
//! not expect (`unexpected_message`). A session therefore screens each epoch-0 record before
//! OpenSSL sees it:
//!
//! - **Alerts** are never given to OpenSSL during the handshake. They are counted
//!   ([`SessionStats::held_alerts`](crate::SessionStats::held_alerts)); the latest fatal one is
//!   *held*. If the handshake then makes no progress (OpenSSL's handshake state does not move)
//!   by the next retransmission timeout, at least one initial retransmission interval later, the
//!   session fails with the held alert as [`Error::PeerAlert`](crate::Error::PeerAlert); if the
//!   handshake moves on, the alert was not the peer's last word and is discarded. A real peer's
//!   refusal (`unknown_psk_identity`, `handshake_failure`, ...) thus still reaches the user, one
//!   retransmission interval later; a forged one costs nothing unless the real peer is silent
//!   too. Warning alerts are counted and dropped.
//! - **HelloVerifyRequests** (RFC 6347 §4.2.1) are legitimate only as the server's answer to the
//!   client's first ClientHello: a client session whose OpenSSL state is still
//!   `TLS_ST_CW_CLNT_HELLO` (it has read no ServerHello) and has accepted none before, and only
//!   when well formed. Any other record carrying one is dropped and counted
//!   ([`SessionStats::dropped_hello_verify_requests`](crate::SessionStats::dropped_hello_verify_requests)).
//!
//! See `SECURITY-CONSIDERATIONS.md` ("Spoofed plaintext records during the handshake") for the
//! trade-off and what remains possible.

use crate::error::Alert;
use crate::wire::{ContentType, HandshakeHeader, RecordHeader, DTLS1_0_VERSION, DTLS1_2_VERSION};

/// Handshake message type of a HelloVerifyRequest (RFC 6347 §4.3.2).
const HELLO_VERIFY_REQUEST: u8 = 3;

/// Largest cookie of a DTLS 1.2 HelloVerifyRequest (RFC 6347 §4.2.1: `opaque cookie<0..2^8-1>`).
const MAX_COOKIE_LEN: usize = 255;

/// What a handshaking session does with one received record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Screen {
    /// Give it to OpenSSL.
    Feed,
    /// An epoch-0 alert: keep it from OpenSSL; `Some` if it parsed (level and description).
    Alert(Option<Alert>),
    /// An epoch-0 handshake record with a HelloVerifyRequest; `true` if it is well formed (a
    /// single, whole HelloVerifyRequest with a DTLS version and a cookie of at most 255 bytes).
    HelloVerifyRequest {
        /// Whether the record is a well-formed HelloVerifyRequest.
        well_formed: bool,
    },
}

/// Sorts one record received during the handshake.
pub(crate) fn screen(record: &RecordHeader<'_>) -> Screen {
    if record.epoch() != 0 {
        return Screen::Feed; // protected: OpenSSL authenticates it (or drops it)
    }
    match record.content_type() {
        ContentType::Alert => {
            let fragment = record.fragment();
            let alert = (fragment.len() >= 2).then(|| Alert {
                level: fragment[0],
                description: fragment[1],
            });
            Screen::Alert(alert)
        }
        ContentType::Handshake if carries_hello_verify_request(record.fragment()) => {
            Screen::HelloVerifyRequest {
                well_formed: is_well_formed_hello_verify_request(record.fragment()),
            }
        }
        _ => Screen::Feed,
    }
}

/// Whether any handshake message in an epoch-0 handshake record's fragment is a
/// HelloVerifyRequest (a record may carry several messages, RFC 6347 §4.2.3). A trailing
/// header cut short counts as one if its type byte says so.
fn carries_hello_verify_request(mut fragment: &[u8]) -> bool {
    while let Some(&msg_type) = fragment.first() {
        if msg_type == HELLO_VERIFY_REQUEST {
            return true;
        }
        let Some(header) = fragment.get(..crate::wire::HANDSHAKE_HEADER_LEN) else {
            return false;
        };
        let fragment_length = u32::from_be_bytes([0, header[9], header[10], header[11]]) as usize;
        let next = crate::wire::HANDSHAKE_HEADER_LEN + fragment_length;
        fragment = fragment.get(next..).unwrap_or_default();
    }
    false
}

/// Whether `fragment` is exactly one whole HelloVerifyRequest: `server_version` (DTLS 1.0 or
/// 1.2) and a cookie of at most 255 bytes (RFC 6347 §4.2.1), nothing after it.
fn is_well_formed_hello_verify_request(fragment: &[u8]) -> bool {
    let Ok(message) = HandshakeHeader::new_checked(fragment) else {
        return false;
    };
    if message.msg_type() != HELLO_VERIFY_REQUEST || message.is_fragmented() {
        return false;
    }
    let body = message.body();
    let Some((version, rest)) = body.split_first_chunk::<2>() else {
        return false;
    };
    let version = u16::from_be_bytes(*version);
    let Some((&cookie_len, cookie)) = rest.split_first() else {
        return false;
    };
    matches!(version, DTLS1_0_VERSION | DTLS1_2_VERSION)
        && usize::from(cookie_len) <= MAX_COOKIE_LEN
        && cookie.len() == usize::from(cookie_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(content_type: u8, epoch: u8, fragment: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0xfe, 0xfd, 0, epoch, 0, 0, 0, 0, 0, 9];
        r.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        r.extend_from_slice(fragment);
        r
    }

    fn handshake_message(msg_type: u8, body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32).to_be_bytes();
        let mut m = vec![msg_type, len[1], len[2], len[3], 0, 0, 0, 0, 0];
        m.extend_from_slice(&len[1..]);
        m.extend_from_slice(body);
        m
    }

    fn screened(bytes: &[u8]) -> Screen {
        screen(&RecordHeader::new_checked(bytes).unwrap())
    }

    #[test]
    fn epoch0_alerts_are_screened_and_parsed() {
        let fatal = Alert {
            level: 2,
            description: 115,
        };
        assert_eq!(
            screened(&record(21, 0, &[2, 115])),
            Screen::Alert(Some(fatal))
        );
        assert_eq!(screened(&record(21, 0, &[2])), Screen::Alert(None));
        assert_eq!(screened(&record(21, 1, &[2, 115])), Screen::Feed, "epoch 1");
    }

    #[test]
    fn hello_verify_requests_are_recognised_and_checked() {
        let hvr = |body: &[u8]| record(22, 0, &handshake_message(3, body));
        let mut good = vec![0xfe, 0xff, 4];
        good.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            screened(&hvr(&good)),
            Screen::HelloVerifyRequest { well_formed: true }
        );
        let mut long = good.clone();
        long.push(0); // a byte after the cookie
        assert_eq!(
            screened(&hvr(&long)),
            Screen::HelloVerifyRequest { well_formed: false }
        );
        let mut bad_version = good.clone();
        bad_version[1] = 0x00;
        assert_eq!(
            screened(&hvr(&bad_version)),
            Screen::HelloVerifyRequest { well_formed: false }
        );
        // Behind another message in the same record.
        let mut two = handshake_message(14, &[]);
        two.extend_from_slice(&handshake_message(3, &good));
        assert_eq!(
            screened(&record(22, 0, &two)),
            Screen::HelloVerifyRequest { well_formed: false }
        );
        // A ServerHelloDone alone, and an epoch-1 record, go to OpenSSL.
        assert_eq!(
            screened(&record(22, 0, &handshake_message(14, &[]))),
            Screen::Feed
        );
        assert_eq!(screened(&record(22, 1, &[3; 40])), Screen::Feed);
    }
}
