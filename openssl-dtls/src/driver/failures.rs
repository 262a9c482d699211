//! Failed handshakes on their way to the server's failure hook: queued under the driver's lock
//! as the endpoint reports them, at most [`MAX_PENDING_FAILURES`], and handed to the hook by the
//! driver after each turn, outside the lock (the hook may call back into the server).

use std::sync::Arc;

// The hook type and the report loop are the endpoint's today; this is their one user.
use crate::endpoint::{report_failures, FailureHook, HandshakeFailure, MAX_PENDING_FAILURES};

/// The failure hook and the failures waiting for it.
#[derive(Debug, Default)]
pub(crate) struct PendingFailures {
    hook: Option<FailureHook>,
    pending: Vec<HandshakeFailure>,
}

/// Failures taken out from under the lock, with the hook to report them to.
#[derive(Debug)]
pub(crate) struct Report {
    hook: Option<FailureHook>,
    failures: Vec<HandshakeFailure>,
}

impl PendingFailures {
    /// Sets the hook called for every failed handshake from now on.
    pub fn set_hook<F>(&mut self, hook: F)
    where
        F: Fn(&HandshakeFailure) + Send + Sync + 'static,
    {
        self.hook = Some(FailureHook(Arc::new(hook)));
    }

    /// Queues `failure` for the driver to report; true if it was queued (the driver should be
    /// woken). Past [`MAX_PENDING_FAILURES`] it is only logged.
    pub fn push(&mut self, failure: HandshakeFailure) -> bool {
        if self.pending.len() < MAX_PENDING_FAILURES {
            self.pending.push(failure);
            true
        } else {
            log::info!("handshake failed: {failure}");
            false
        }
    }

    /// Takes the queued failures, to [`report`](Report::report) once the lock is released;
    /// `None` if there are none.
    pub fn take(&mut self) -> Option<Report> {
        if self.pending.is_empty() {
            return None;
        }
        Some(Report {
            hook: self.hook.clone(),
            failures: std::mem::take(&mut self.pending),
        })
    }
}

impl Report {
    /// Calls the hook for each failure (a panic in it is caught and logged), or logs each at
    /// `info` without one. Call without the driver's lock.
    pub fn report(mut self) {
        report_failures(self.hook.as_ref(), &mut self.failures);
    }
}
