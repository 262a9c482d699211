//! The 64-record anti-replay window of RFC 6347 §4.1.2.6: which sequence numbers of the current
//! epoch a receiver still accepts. It moves only after a record authenticates, so forged or
//! corrupted records cannot push genuine ones out of it.

use super::OpenError;

/// The 64-record anti-replay window of RFC 6347 §4.1.2.6. Bit `i` of `bits` stands for sequence
/// number `top - 1 - i`; `top` is one past the highest authenticated sequence number (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReplayWindow {
    top: u64,
    bits: u64,
}

impl ReplayWindow {
    /// Whether `seq` may still be accepted (not seen, not older than the window).
    #[inline]
    pub(crate) fn check(&self, seq: u64) -> Result<(), OpenError> {
        if seq >= self.top {
            return Ok(());
        }
        let age = self.top - 1 - seq;
        if age >= 64 {
            Err(OpenError::TooOld)
        } else if self.bits & (1 << age) != 0 {
            Err(OpenError::Replayed)
        } else {
            Ok(())
        }
    }

    /// The highest authenticated sequence number, if any.
    pub(crate) fn newest(&self) -> Option<u64> {
        self.top.checked_sub(1)
    }

    /// The window as `(top, bits)`, for the saved state of a graceful restart.
    pub(crate) fn parts(&self) -> (u64, u64) {
        (self.top, self.bits)
    }

    /// A window from [`parts`](Self::parts); `None` if inconsistent (bits without a top).
    pub(crate) fn from_parts(top: u64, bits: u64) -> Option<ReplayWindow> {
        (top > 0 || bits == 0).then_some(ReplayWindow { top, bits })
    }

    /// Records `seq` as accepted. Only called after the record authenticated.
    #[inline]
    pub(crate) fn mark(&mut self, seq: u64) {
        if seq == self.top {
            // The next one in order (the usual case): the window moves by one.
            self.bits = (self.bits << 1) | 1;
            self.top = seq + 1;
        } else if seq > self.top {
            let shift = seq + 1 - self.top;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = seq + 1;
        } else {
            let age = self.top - 1 - seq;
            if age < 64 {
                self.bits |= 1 << age;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_window_slides_over_64_records() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(0), Ok(()));
        w.mark(100);
        assert_eq!(w.check(100), Err(OpenError::Replayed));
        assert_eq!(w.check(99), Ok(()));
        assert_eq!(w.check(37), Ok(()));
        assert_eq!(w.check(36), Err(OpenError::TooOld));
        w.mark(40);
        assert_eq!(w.check(40), Err(OpenError::Replayed));
        w.mark(103);
        assert_eq!(w.check(100), Err(OpenError::Replayed));
        assert_eq!(w.check(40), Err(OpenError::Replayed));
        assert_eq!(w.check(39), Err(OpenError::TooOld));
        assert_eq!(w.check(101), Ok(()));
        w.mark(1000);
        assert_eq!(w.check(103), Err(OpenError::TooOld));
        assert_eq!(w.check(999), Ok(()));
    }
}
