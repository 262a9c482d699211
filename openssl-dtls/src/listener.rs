//! The pre-cookie path: one reusable listening `SSL` runs `DTLSv1_listen` on ClientHellos from
//! peers the endpoint does not know (RFC 6347 §4.2.1).
//!
//! A ClientHello without a valid cookie is answered with a HelloVerifyRequest carrying a stateless
//! HMAC cookie over the peer's address and port ([`crate::cookie`]); nothing is allocated for the
//! peer and nothing is retransmitted. The reply is never larger than the datagram that caused it:
//! a larger one is dropped and counted (anti-amplification). A ClientHello whose cookie verifies
//! turns the listening `SSL` into that peer's [`Session`], and a fresh listening `SSL` takes its
//! place.

use std::net::SocketAddr;
use std::time::Instant;

use openssl::ssl::Ssl;

use crate::bio::BioState;
use crate::context::DtlsServerContext;
use crate::error::Result;
use crate::ffi::bio::BioHandle;
use crate::ffi::listen::{dtls_listen, BioAddr};
use crate::session::{configure_ssl, Session};

/// What one ClientHello did to the listener.
#[derive(Debug)]
pub(crate) enum ListenOutcome {
    /// A HelloVerifyRequest of this many bytes is in `out`.
    HelloVerifyRequest(usize),
    /// The reply would have been larger than the ClientHello; nothing is sent.
    ReplyTooLarge,
    /// The cookie verified: the caller decides, then [`Listener::accept`]s or
    /// [`Listener::reset`]s.
    Verified,
    /// The handshake continues in this session (from [`Listener::accept`]).
    Accepted(Box<Session>),
    /// OpenSSL dropped the datagram (not a usable ClientHello, or a bad cookie it ignores).
    Ignored,
    /// The listening `SSL` failed and was replaced.
    Failed,
}

/// The listening `SSL` and its BIO.
pub(crate) struct Listener {
    ctx: DtlsServerContext,
    ssl: Ssl,
    bio: BioHandle,
    addr: BioAddr,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

impl Listener {
    pub(crate) fn new(ctx: &DtlsServerContext) -> Result<Listener> {
        let (ssl, bio) = Listener::listening_ssl(ctx)?;
        Ok(Listener {
            ctx: ctx.clone(),
            ssl,
            bio,
            addr: BioAddr::new()?,
        })
    }

    fn listening_ssl(ctx: &DtlsServerContext) -> Result<(Ssl, BioHandle)> {
        let mut ssl = Ssl::new(ctx.ssl_context())?;
        let bio = configure_ssl(&mut ssl, ctx.session_config())?;
        ssl.set_accept_state();
        Ok((ssl, bio))
    }

    fn bio_mut(&mut self) -> &mut BioState {
        self.bio.get_mut()
    }

    /// Runs `DTLSv1_listen` on one ClientHello from `peer`. A HelloVerifyRequest goes into `out`.
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> ListenOutcome {
        let st = self.bio_mut();
        st.peer = Some(peer);
        st.now = Some(now);
        st.alert_sent = None;
        st.alert_received = None;
        st.set_inbound(datagram);
        let r = dtls_listen(&mut self.ssl, &mut self.addr);
        let st = self.bio_mut();
        st.clear_inbound();
        if r == 1 {
            // Our epoch-0 records continue from the ClientHello's number (BioState::write).
            st.epoch0_continue_from = crate::wire::records(datagram)
                .next()
                .and_then(|r| r.ok())
                .map(|r| r.sequence());
            return ListenOutcome::Verified;
        }
        if r < 0 {
            log::debug!("DTLSv1_listen failed for {peer}; replacing the listening SSL");
            return match Listener::listening_ssl(&self.ctx) {
                Ok((ssl, bio)) => {
                    self.ssl = ssl;
                    self.bio = bio;
                    ListenOutcome::Failed
                }
                Err(e) => {
                    log::error!("cannot create a listening SSL: {e}");
                    ListenOutcome::Failed
                }
            };
        }
        let mut reply = None;
        let mut too_large = false;
        while let Some(n) = st.pop_outbound(out) {
            // RFC 6347 §4.2.1: the HelloVerifyRequest must be small; we make sure it is never
            // larger than what the (unauthenticated) sender sent us.
            if n <= datagram.len() && reply.is_none() {
                reply = Some(n);
            } else {
                too_large = true;
            }
        }
        match (reply, too_large) {
            (Some(n), _) => ListenOutcome::HelloVerifyRequest(n),
            (None, true) => ListenOutcome::ReplyTooLarge,
            (None, false) => ListenOutcome::Ignored,
        }
    }

    /// Forgets a verified ClientHello the endpoint refused: a fresh listening `SSL` takes the
    /// place of the one that read it.
    pub(crate) fn reset(&mut self) {
        match Listener::listening_ssl(&self.ctx) {
            Ok((ssl, bio)) => {
                self.ssl = ssl;
                self.bio = bio;
            }
            Err(e) => log::error!("cannot create a listening SSL: {e}"),
        }
    }

    /// Starts the handshake from the ClientHello that [`handle`](Self::handle) verified
    /// ([`ListenOutcome::Verified`]): the listening `SSL` becomes the session's.
    /// `cid`: the Connection ID the handshake issues if the client asks for CIDs.
    pub(crate) fn accept(
        &mut self,
        peer: SocketAddr,
        now: Instant,
        cid: Option<Box<[u8]>>,
    ) -> ListenOutcome {
        let (fresh, fresh_bio) = match Listener::listening_ssl(&self.ctx) {
            Ok(x) => x,
            Err(e) => {
                log::error!("cannot create a listening SSL: {e}");
                return ListenOutcome::Failed;
            }
        };
        let mut ssl = std::mem::replace(&mut self.ssl, fresh);
        if let Some(cid) = cid {
            crate::cid::assign(&mut ssl, cid);
        }
        let bio = std::mem::replace(&mut self.bio, fresh_bio);
        match Session::accepted(ssl, bio, peer, self.ctx.session_config(), now) {
            Ok(session) => ListenOutcome::Accepted(Box::new(session)),
            Err(e) => {
                log::debug!("handshake with {peer} failed at its first step: {e}");
                ListenOutcome::Failed
            }
        }
    }
}
