//! What a session keeps away from OpenSSL, record by record: records of later epochs, epoch-1
//! records beyond the handshake's budget, records too short for the suite's nonce and tag, and
//! (with [`crate::plaintext`]) unauthenticated plaintext during the handshake.

use super::*;

/// Epoch-1 records a handshake gives OpenSSL before OpenSSL has read the peer's
/// ChangeCipherSpec. OpenSSL keeps each epoch-1 record that arrives before it can decrypt it, a
/// full ≈ 18 KB read buffer apiece, up to 100 (≈ 1.8 MB): what a hostile peer past the cookie
/// exchange would fill. A genuine peer sends its ChangeCipherSpec just before its Finished, so
/// only reordering or loss puts one of its epoch-1 records here.
///
/// Of these, at most [`MAX_HANDSHAKE_EPOCH1_ALONE`] may arrive in datagrams without a
/// ChangeCipherSpec before them; the rest are kept for records that follow one in the same
/// datagram (a flight sent as one datagram). Once OpenSSL has read the ChangeCipherSpec,
/// epoch-1 records are decrypted (or dropped) at once and pass freely: an off-path attacker who
/// spends the budget with forged records delays a handshake by one retransmission at most.
pub const MAX_HANDSHAKE_EPOCH1_RECORDS: usize = 12;

/// Epoch-1 records before OpenSSL has read the peer's ChangeCipherSpec that may arrive without
/// one before them in their datagram (see [`MAX_HANDSHAKE_EPOCH1_RECORDS`]).
pub const MAX_HANDSHAKE_EPOCH1_ALONE: usize = 8;

/// Epoch-1 application-data and alert records a handshake gives OpenSSL after it has read the
/// peer's ChangeCipherSpec and before the handshake ends. OpenSSL decrypts them and keeps each
/// (application data that overtook the peer's Finished) in a queue of up to 100 full read
/// buffers (≈ 1.8 MB). A genuine peer sends none, or one that a lost Finished left early.
pub const MAX_HANDSHAKE_EPOCH1_APP_RECORDS: usize = 2;

/// Decides, record by record, which records of one datagram OpenSSL may see: never epoch 2 or
/// later; during the handshake, until OpenSSL has read the peer's ChangeCipherSpec, epoch-1
/// records within [`MAX_HANDSHAKE_EPOCH1_ALONE`] / [`MAX_HANDSHAKE_EPOCH1_RECORDS`]; after it,
/// epoch-1 application and alert records within [`MAX_HANDSHAKE_EPOCH1_APP_RECORDS`].
pub(super) struct EpochFilter {
    /// Whether the handshake is running (application and alert records are limited).
    pub(super) handshaking: bool,
    /// Epoch-1 application and alert records given to OpenSSL in this handshake before this
    /// datagram.
    pub(super) app_used: usize,
    /// Of them, let through in this datagram.
    pub(super) app_passed: Cell<usize>,
    /// Whether epoch-1 records are limited (handshaking, ChangeCipherSpec not read yet).
    pub(super) limited: bool,
    /// Epoch-1 records given to OpenSSL in this handshake before this datagram.
    pub(super) used: usize,
    /// A ChangeCipherSpec came earlier in this datagram.
    pub(super) ccs: Cell<bool>,
    /// Epoch-1 records of this datagram let through while limited.
    pub(super) passed: Cell<usize>,
    /// Records of this datagram kept away from OpenSSL.
    pub(super) dropped: Cell<u64>,
}

impl EpochFilter {
    /// Whether a datagram of this `shape` needs the record-by-record filter: more epoch-1
    /// records (with no ChangeCipherSpec) than the budget allows, or application and alert
    /// records during the handshake.
    pub(super) fn limits(&self, shape: &Shape) -> bool {
        (self.limited && self.used + shape.epoch1 > MAX_HANDSHAKE_EPOCH1_ALONE)
            || (self.handshaking && shape.compact_records)
    }

    pub(super) fn keep(&self, r: &RecordHeader<'_>) -> bool {
        let keep = match r.epoch() {
            0 => {
                if r.content_type() == ContentType::ChangeCipherSpec {
                    self.ccs.set(true);
                }
                true
            }
            1 if self.handshaking && r.content_type() != ContentType::Handshake => {
                let ok = self.app_used + self.app_passed.get() < MAX_HANDSHAKE_EPOCH1_APP_RECORDS;
                if ok {
                    self.app_passed.set(self.app_passed.get() + 1);
                }
                ok
            }
            1 if !self.limited => true,
            1 => {
                let cap = if self.ccs.get() {
                    MAX_HANDSHAKE_EPOCH1_RECORDS
                } else {
                    MAX_HANDSHAKE_EPOCH1_ALONE
                };
                let ok = self.used + self.passed.get() < cap;
                if ok {
                    self.passed.set(self.passed.get() + 1);
                }
                ok
            }
            _ => false,
        };
        if !keep {
            self.dropped.set(self.dropped.get() + 1);
        }
        keep
    }
}

/// The shortest protected record an AEAD suite produces: explicit nonce plus tag (RFC 5288,
/// RFC 6655, RFC 7905). 0 for anything else (no check).
pub(super) fn min_protected_len(cipher: &str) -> u8 {
    if cipher.contains("CHACHA20") || cipher.ends_with("CCM8") {
        16 // ChaCha20: no explicit nonce, 16-byte tag; CCM8: 8-byte nonce, 8-byte tag
    } else if cipher.contains("GCM") || cipher.ends_with("CCM") {
        24 // 8-byte explicit nonce, 16-byte tag
    } else {
        0
    }
}

/// The plaintext of a whole Finished message: the 12-byte DTLS handshake header and 12 bytes of
/// `verify_data` (RFC 5246 §7.4.9; the length of every DTLS 1.2 suite).
pub(super) const FINISHED_PLAINTEXT_LEN: usize = 12 + 12;

/// Whether an epoch-1 handshake record whose fragment is `len` bytes long can hold a whole
/// Finished message under a suite whose protected records are `min` bytes longer than their
/// plaintext ([`min_protected_len`]: exact for the AEAD suites). A shorter one is a fragment of
/// it (OpenSSL 3.5 and later split a Finished that does not fit the rest of a datagram), which
/// OpenSSL keeps until the rest arrives: not judged. Never under CBC suites (`min` 0): their
/// padding and MAC hide whether a record holds all 24 bytes, so a wrong key there shows as a
/// handshake timeout rather than an early `decrypt_error`.
pub(super) fn holds_whole_finished(len: usize, min: u8) -> bool {
    min > 0 && len >= usize::from(min) + FINISHED_PLAINTEXT_LEN
}

/// What one pass over a datagram's records tells the session before anything reaches OpenSSL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Shape {
    /// Epoch-1 records.
    pub(super) epoch1: usize,
    /// Records of epoch 2 or later.
    pub(super) later: usize,
    /// An epoch-1 application or alert record (what the compact layer opens).
    pub(super) compact_records: bool,
    /// A protected record shorter than `min` (the suite's nonce plus tag).
    pub(super) short: bool,
}

impl Shape {
    /// One pass over `parsed`; `min` is the shortest protected record the suite produces (0: no
    /// check).
    pub(super) fn of(parsed: &Parsed<'_>, min: usize) -> Shape {
        let mut shape = Shape::default();
        for r in parsed.records() {
            let r = &r;
            match r.epoch() {
                0 => continue,
                1 => shape.epoch1 += 1,
                _ => shape.later += 1,
            }
            shape.compact_records |= is_compact_record(r);
            shape.short |= r.fragment().len() < min;
        }
        shape
    }
}

/// Whether a handshaking session gives `record` to OpenSSL (see
/// [`Session::screen_plaintext`]); `hello_verify_ok`: a well-formed HelloVerifyRequest is in
/// place.
pub(super) fn passes_screen(record: &RecordHeader<'_>, hello_verify_ok: bool) -> bool {
    match plaintext::screen(record) {
        Screen::Feed => true,
        Screen::Alert(_) => false,
        Screen::HelloVerifyRequest { well_formed } => hello_verify_ok && well_formed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aead_minimum_record_lengths_follow_the_suites() {
        assert_eq!(min_protected_len("PSK-AES128-CCM8"), 16);
        assert_eq!(min_protected_len("ECDHE-PSK-CHACHA20-POLY1305"), 16);
        assert_eq!(min_protected_len("PSK-AES128-GCM-SHA256"), 24);
        assert_eq!(min_protected_len("PSK-AES256-CCM"), 24);
        assert_eq!(min_protected_len("ECDHE-ECDSA-AES128-GCM-SHA256"), 24);
        assert_eq!(min_protected_len("PSK-AES128-CBC-SHA256"), 0);
    }

    #[test]
    fn a_finished_fragment_is_not_judged_as_a_whole_finished() {
        let gcm = min_protected_len("ECDHE-ECDSA-AES128-GCM-SHA256");
        let ccm8 = min_protected_len("PSK-AES128-CCM8");
        // A whole Finished: 24 bytes of plaintext plus nonce and tag.
        assert!(holds_whole_finished(48, gcm));
        assert!(holds_whole_finished(40, ccm8));
        // OpenSSL 3.5's split Finished at MTU 256: 15 and 21 bytes of plaintext.
        assert!(!holds_whole_finished(39, gcm));
        assert!(!holds_whole_finished(45, gcm));
        assert!(!holds_whole_finished(39, ccm8));
        // CBC: never judged.
        assert!(!holds_whole_finished(
            64,
            min_protected_len("PSK-AES128-CBC-SHA256")
        ));
    }

    #[test]
    fn one_pass_sees_epochs_short_and_compact_records() {
        let mut record = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 7, 0, 20];
        record.extend_from_slice(&[0u8; 20]);
        let shape = |d: &[u8], min| Shape::of(&crate::wire::parse(d).unwrap(), min);
        assert!(shape(&record, 24).short);
        assert!(!shape(&record, 16).short);
        assert_eq!(
            (shape(&record, 16).epoch1, shape(&record, 16).later),
            (1, 0)
        );
        assert!(shape(&record, 16).compact_records);
        let mut two = record.clone();
        two.extend_from_slice(&record);
        two[record.len() + 4] = 2; // the second record in epoch 2
        let s = shape(&two, 16);
        assert_eq!((s.epoch1, s.later), (1, 1));
        record[4] = 0; // epoch 0: plaintext, not checked
        assert_eq!(shape(&record, 24), Shape::default());
    }
}
