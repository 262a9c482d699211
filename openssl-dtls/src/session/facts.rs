//! What a session reports about itself: its state, the handshake's facts (from the `SSL`, or
//! from [`SslFacts`] once it is freed), its configuration and counters.

use super::*;

impl Session {
    /// Which side of the handshake this session plays.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the session is in its life.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Whether the handshake completed and the session is not closed or failed.
    pub fn is_established(&self) -> bool {
        self.state == SessionState::Established
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.state == SessionState::Handshaking
    }

    /// The error that failed the session, if it failed.
    pub fn error(&self) -> Option<&Error> {
        self.hs().error.as_deref()
    }

    /// Whether the peer closed the session with `close_notify`.
    pub fn closed_by_peer(&self) -> bool {
        self.closed_by_peer
    }

    /// The negotiated protocol version, e.g. `"DTLSv1.2"`, once established (`SSL_get_version`).
    #[doc(alias = "SSL_get_version")]
    pub fn protocol_version(&self) -> Option<&'static str> {
        if self.state == SessionState::Handshaking {
            return None;
        }
        match (self.facts(), self.engine.ssl()) {
            (Some(facts), _) => Some(facts.version),
            (None, ssl) => ssl.map(|ssl| ssl.version_str()),
        }
    }

    pub(super) fn facts(&self) -> Option<&KeptFacts> {
        self.facts.as_ref()
    }

    /// What the handshake established (suite, peer identity, ALPN, server name, whether it
    /// resumed, when it started and ended), from its completion on: equal values for the life
    /// of the connection, before and after a compact hand-off.
    ///
    /// Built on each call from what the session keeps (an idle connection keeps no
    /// [`HandshakeFacts`] block of its own; the parts equal connections have in common are
    /// shared), so call it once and keep the value rather than call it per datagram.
    ///
    /// ```no_run
    /// # fn f(session: &openssl_dtls::Session) {
    /// if let Some(facts) = session.handshake_facts() {
    ///     println!("{:?} in {:?}, resumed: {}", facts.cipher, facts.duration(), facts.resumed);
    /// }
    /// # }
    /// ```
    pub fn handshake_facts(&self) -> Option<HandshakeFacts> {
        self.facts
            .as_ref()
            .map(|kept| HandshakeFacts::from_kept(kept, self.started))
    }

    /// Whether the handshake completed, whatever happened since (closed, failed).
    pub(crate) fn handshake_completed(&self) -> bool {
        self.facts.is_some()
    }

    /// How long the handshake took, once it completed (without building the facts).
    pub(crate) fn handshake_duration(&self) -> Option<std::time::Duration> {
        self.facts.as_ref().map(KeptFacts::duration)
    }

    /// The negotiated cipher's OpenSSL name, e.g. `"PSK-AES128-CCM8"` (`SSL_get_current_cipher`).
    #[doc(alias = "SSL_get_current_cipher")]
    pub fn cipher(&self) -> Option<&'static str> {
        match (self.facts(), self.engine.ssl()) {
            (Some(f), _) => f.cipher,
            (None, Some(ssl)) => ssl.current_cipher().map(|c| c.name()),
            (None, None) => None,
        }
    }

    /// The negotiated cipher's IANA name, e.g. `"TLS_PSK_WITH_AES_128_CCM_8"`.
    #[doc(alias = "SSL_CIPHER_standard_name")]
    pub fn cipher_standard_name(&self) -> Option<&'static str> {
        match (self.facts(), self.engine.ssl()) {
            (Some(f), _) => f.cipher_standard_name,
            (None, Some(ssl)) => ssl.current_cipher().and_then(|c| c.standard_name()),
            (None, None) => None,
        }
    }

    /// The PSK identity used, if the handshake used a PSK suite (`SSL_get_psk_identity`).
    #[doc(alias = "SSL_get_psk_identity")]
    pub fn psk_identity(&self) -> Option<&[u8]> {
        match (self.facts(), self.engine.ssl()) {
            (Some(f), _) => f.psk_identity.as_deref(),
            (None, Some(ssl)) => ssl.psk_identity(),
            (None, None) => None,
        }
    }

    /// The peer's certificate, if it sent one (`SSL_get1_peer_certificate`).
    #[doc(alias = "SSL_get1_peer_certificate")]
    pub fn peer_certificate(&self) -> Option<X509> {
        match (self.facts(), self.engine.ssl()) {
            (Some(f), _) => f.peer_certificate.as_deref().cloned(),
            (None, Some(ssl)) => ssl.peer_certificate(),
            (None, None) => None,
        }
    }

    /// The ALPN protocol agreed, if any (`SSL_get0_alpn_selected`).
    #[doc(alias = "SSL_get0_alpn_selected")]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match (self.facts(), self.engine.ssl()) {
            (Some(f), _) => f.alpn.as_deref(),
            (None, Some(ssl)) => ssl.selected_alpn_protocol(),
            (None, None) => None,
        }
    }

    /// The server name (SNI) the client asked for (`SSL_get_servername`).
    #[doc(alias = "SSL_get_servername")]
    pub fn server_name(&self) -> Option<&str> {
        match (self.facts(), self.engine.ssl()) {
            (Some(f), _) => f.server_name.as_deref(),
            (None, Some(ssl)) => ssl.servername(openssl::ssl::NameType::HOST_NAME),
            (None, None) => None,
        }
    }

    /// The largest application payload [`send`](Self::send) accepts: what fits one record in
    /// one datagram at this MTU and cipher (`DTLS_get_data_mtu`); 0 before the handshake.
    #[doc(alias = "DTLS_get_data_mtu")]
    pub fn data_mtu(&self) -> usize {
        usize::from(self.data_mtu)
    }

    /// The link MTU: the largest datagram this session emits.
    pub fn mtu(&self) -> usize {
        self.config.mtu
    }

    /// The peer's address, if known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// When the session was made (its handshake started).
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The peer's address, borrowed (the endpoint's peer table keys its entries by it).
    pub(crate) fn peer_addr_ref(&self) -> Option<&SocketAddr> {
        self.peer.as_ref()
    }

    /// Records the peer's address (used in logs and by the cookie callbacks).
    pub fn set_peer_addr(&mut self, peer: SocketAddr) {
        self.peer = Some(peer);
        if self.engine.openssl().is_some() {
            self.bio_mut().peer = Some(peer);
        }
    }

    /// Counters of this session.
    pub fn stats(&self) -> SessionStats {
        let mut stats = self.stats.public();
        if self.engine.openssl().is_some() {
            stats.retransmits = self.bio_ref().timeouts;
        }
        stats
    }

    /// The configuration the session runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The underlying OpenSSL object, for queries this API does not cover; `None` once a
    /// compact session handed off and freed it ([`is_compact`](Self::is_compact)).
    pub fn ssl(&self) -> Option<&SslRef> {
        self.engine.ssl()
    }

    /// Whether the connection runs on the compact record layer with its `SSL` freed
    /// ([`SessionConfig::compact`]).
    pub fn is_compact(&self) -> bool {
        matches!(self.engine, Engine::Compact(..))
    }

    /// Whether compact mode has taken over the record layer's receiving side but still keeps
    /// the `SSL` (lingering to answer a retransmitted final flight).
    pub fn is_lingering(&self) -> bool {
        self.engine.is_lingering()
    }

    /// The ClientHello random of this session's handshake, while its `SSL` exists (the only
    /// time it is asked for: a retransmitted ClientHello can only meet a handshaking session;
    /// the handshake's facts do not keep it).
    pub(crate) fn client_random(&self) -> Option<[u8; 32]> {
        let ssl = self.engine.ssl()?;
        let mut random = [0u8; 32];
        (ssl.client_random(&mut random) == 32).then_some(random)
    }
}
