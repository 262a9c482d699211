//! Handshake datagrams put behind established traffic: "expensive handshake crypto must not
//! starve established traffic" starts at the socket. A thread that reads the socket hands the
//! records of established connections to the endpoint at once and copies the datagrams that
//! would start or advance a handshake
//! ([`Endpoint::is_handshake_datagram`]) into this bounded queue, to be
//! handled after them: by the same thread once its own record is in and it has handed it
//! back ([`Shared::after_receive_budget`](super::shared::Shared::after_receive_budget), one
//! at a time between reads of the socket), or by whichever thread takes the next full turn.
//!
//! Without it, an established connection's record waits behind every `ClientHello`, cookie
//! check, `SSL_new` and `SSL_free` of a flood that arrived just before it (measured in the
//! storm benchmark: the echo server's thread ran for up to 0.7 ms at a time on the flood's
//! datagrams while its own record waited in the socket).
//!
//! The order of one peer's datagrams is kept: a datagram from an address that has one waiting
//! here waits too. Memory is bounded ([`DEFERRED_MAX`] datagrams of at most
//! [`DEFERRED_LARGEST`] bytes, buffers recycled: no allocation per datagram once warm); a
//! datagram that does not fit is handled at once — after its own peer's waiting ones and those
//! queued before them, so its peer's order holds then too, and other peers' handshake
//! datagrams queued after them go on waiting.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::endpoint::Endpoint;

/// The most handshake datagrams waiting at once; one more makes room by handling the oldest.
pub(crate) const DEFERRED_MAX: usize = 64;

/// The largest datagram that waits here (a `ClientHello` or flight fragment fits a link MTU);
/// a larger one is handled at once (in its peer's order, see the module documentation).
pub(crate) const DEFERRED_LARGEST: usize = 2048;

/// The queue ([module documentation](self)).
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    waiting: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Emptied buffers, for the next datagrams (at most [`DEFERRED_MAX`]).
    spare: Vec<Vec<u8>>,
    /// Datagrams that waited here
    /// ([`EndpointStats::handshake_datagrams_deferred`](crate::EndpointStats::handshake_datagrams_deferred)).
    pub count: u64,
}

impl Deferred {
    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Hands `datagram` from `peer` to `endpoint` now if it serves an established connection
    /// (and nothing from `peer` waits), or queues it behind them.
    pub fn handle_or_defer(
        &mut self,
        endpoint: &mut Endpoint,
        now: Instant,
        peer: SocketAddr,
        datagram: &[u8],
    ) {
        // How many waiting datagrams are up to and including `peer`'s last one.
        let through_peer = self
            .waiting
            .iter()
            .rposition(|(p, _)| *p == peer)
            .map_or(0, |last| last + 1);
        if through_peer == 0 && !endpoint.is_handshake_datagram(peer, datagram) {
            endpoint.handle_datagram(now, peer, datagram);
            return;
        }
        if datagram.len() > DEFERRED_LARGEST {
            // Too large to keep: handled now, after its peer's waiting datagrams (and those
            // before them, to keep the queue in order); whatever waits after them goes on
            // waiting, so one large datagram does not bring the whole queue forward.
            for _ in 0..through_peer {
                self.handle_next(endpoint, now);
            }
            endpoint.handle_datagram(now, peer, datagram);
            return;
        }
        if self.waiting.len() >= DEFERRED_MAX {
            self.handle_next(endpoint, now);
        }
        let mut copy = self.spare.pop().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(datagram);
        self.waiting.push_back((peer, copy));
        self.count += 1;
    }

    /// Hands the oldest waiting datagram to `endpoint`; false if none waited.
    pub fn handle_next(&mut self, endpoint: &mut Endpoint, now: Instant) -> bool {
        let Some((peer, datagram)) = self.waiting.pop_front() else {
            return false;
        };
        endpoint.handle_datagram(now, peer, &datagram);
        if self.spare.len() < DEFERRED_MAX {
            self.spare.push(datagram);
        }
        true
    }

    /// Hands at most `budget` waiting datagrams to `endpoint`, oldest first; returns whether
    /// any are left.
    pub fn handle_some(&mut self, endpoint: &mut Endpoint, now: Instant, budget: usize) -> bool {
        for _ in 0..budget {
            if !self.handle_next(endpoint, now) {
                break;
            }
        }
        !self.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::{Deferred, DEFERRED_LARGEST, DEFERRED_MAX};
    use crate::context::{DtlsClientContext, DtlsServerContext, PskCredentials};
    use crate::endpoint::{ConnectionId, Endpoint, EndpointConfig, Event};

    const KEY: &[u8] = b"0123456789abcdef";

    fn server_addr() -> SocketAddr {
        "10.0.0.1:5684".parse().unwrap()
    }

    fn client_ctx() -> DtlsClientContext {
        DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(b"device".to_vec(), KEY.to_vec()))
            .build()
            .unwrap()
    }

    /// A PSK server endpoint with one established connection from `a` (its client endpoint
    /// and connection id on the server).
    fn established(now: Instant, a: SocketAddr) -> (Endpoint, Endpoint, ConnectionId) {
        let server = DtlsServerContext::builder()
            .psk_key_store(|_| Some(KEY.to_vec()))
            .build()
            .unwrap();
        let mut s = Endpoint::server(server, EndpointConfig::default()).unwrap();
        let mut c = Endpoint::client(EndpointConfig::default()).unwrap();
        c.connect(now, server_addr(), &client_ctx(), None).unwrap();
        let mut buf = vec![0u8; 65_536];
        let mut id = None;
        for _ in 0..10 {
            while let Some((_, n)) = c.poll_transmit(&mut buf) {
                s.handle_datagram(now, a, &buf[..n]);
            }
            while let Some((_, n)) = s.poll_transmit(&mut buf) {
                c.handle_datagram(now, server_addr(), &buf[..n]);
            }
            while let Some(e) = s.poll_event() {
                if let Event::Connected { id: i, .. } = e {
                    id = Some(i);
                }
            }
        }
        (s, c, id.expect("the handshake completes"))
    }

    /// A client's first datagram (its ClientHello) to the server.
    fn client_hello(now: Instant) -> Vec<u8> {
        let mut c = Endpoint::client(EndpointConfig::default()).unwrap();
        c.connect(now, server_addr(), &client_ctx(), None).unwrap();
        let mut buf = vec![0u8; 65_536];
        let (_, n) = c.poll_transmit(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// The client's next datagram to the server after `data` was sent on its connection.
    fn record(c: &mut Endpoint, data: &[u8]) -> Vec<u8> {
        while c.poll_event().is_some() {}
        let id = c.connection_id(server_addr()).unwrap();
        c.send(server_addr(), id, data).unwrap();
        let mut buf = vec![0u8; 65_536];
        let (_, n) = c.poll_transmit(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_record_of_an_established_connection_is_handled_before_the_hello_read_before_it() {
        let now = Instant::now();
        let a: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let b: SocketAddr = "192.0.2.8:40002".parse().unwrap();
        let (mut s, mut c, id) = established(now, a);
        let hello = client_hello(now);
        let data = record(&mut c, b"first");
        assert!(s.is_handshake_datagram(b, &hello));
        assert!(!s.is_handshake_datagram(a, &data));
        assert!(!s.is_handshake_datagram(b, b"garbage"));
        // An application-data record of epoch 0 (never valid) in front of a handshake's flight
        // does not carry the flight past the handshakes waiting: the datagram is looked at.
        let mut c2 = Endpoint::client(EndpointConfig::default()).unwrap();
        c2.connect(now, server_addr(), &client_ctx(), None).unwrap();
        let mut buf = vec![0u8; 65_536];
        let (_, n) = c2.poll_transmit(&mut buf).unwrap();
        s.handle_datagram(now, b, &buf[..n]); // the HelloVerifyRequest back to c2 …
        let (_, n) = s.poll_transmit(&mut buf).unwrap();
        c2.handle_datagram(now, server_addr(), &buf[..n]); // … and its second ClientHello:
        let (_, n) = c2.poll_transmit(&mut buf).unwrap();
        s.handle_datagram(now, b, &buf[..n]); // b is handshaking now
        let flight = [23, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 0xaa]
            .into_iter()
            .chain(data[..].iter().copied())
            .collect::<Vec<u8>>();
        assert!(s.is_handshake_datagram(b, &flight));
        let mut epoch_1 = flight.clone();
        epoch_1[4] = 1;
        assert!(!s.is_handshake_datagram(b, &epoch_1));
        while s.poll_transmit(&mut buf).is_some() {}

        let mut deferred = Deferred::default();
        let before = s.stats();
        deferred.handle_or_defer(&mut s, now, b, &hello);
        deferred.handle_or_defer(&mut s, now, a, &data);
        // The record is in, the hello not handled yet.
        let mut buf = [0u8; 64];
        assert_eq!(s.recv(a, id, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"first");
        assert_eq!(s.stats().datagrams_in, before.datagrams_in + 1);
        assert_eq!(
            s.stats().hello_verify_requests,
            before.hello_verify_requests
        );
        assert_eq!(deferred.count, 1);
        assert!(!deferred.is_empty());
        // Then the hello: answered with a HelloVerifyRequest.
        assert!(!deferred.handle_some(&mut s, now, 4));
        assert_eq!(
            s.stats().hello_verify_requests,
            before.hello_verify_requests + 1
        );
        assert!(!deferred.handle_next(&mut s, now));
    }

    #[test]
    fn a_peer_with_a_datagram_waiting_keeps_its_order() {
        let now = Instant::now();
        let a: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let (mut s, mut c, id) = established(now, a);
        // A ClientHello from the established connection's address (a rebooted device) waits;
        // the record after it from the same address waits behind it.
        let hello = client_hello(now);
        let data = record(&mut c, b"later");
        let mut deferred = Deferred::default();
        let before = s.stats().datagrams_in;
        deferred.handle_or_defer(&mut s, now, a, &hello);
        deferred.handle_or_defer(&mut s, now, a, &data);
        assert_eq!(deferred.count, 2);
        assert_eq!(s.stats().datagrams_in, before);
        let mut buf = [0u8; 64];
        assert_eq!(s.recv(a, id, &mut buf).unwrap(), None);
        assert!(deferred.handle_next(&mut s, now));
        assert!(deferred.handle_next(&mut s, now));
        assert_eq!(s.stats().datagrams_in, before + 2);
        assert_eq!(s.recv(a, id, &mut buf).unwrap(), Some(5));
    }

    #[test]
    fn the_queue_is_bounded_and_a_large_datagram_goes_after_its_peers_waiting_ones() {
        let now = Instant::now();
        let a: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let (mut s, _c, _) = established(now, a);
        let hello = client_hello(now);
        let mut deferred = Deferred::default();
        let before = s.stats().hello_verify_requests;
        let from = |i: usize| -> SocketAddr {
            format!("198.51.100.{}:{}", 1 + i % 200, 1000 + i)
                .parse()
                .unwrap()
        };
        for i in 0..DEFERRED_MAX + 1 {
            deferred.handle_or_defer(&mut s, now, from(i), &hello);
        }
        // The 65th made room by handling the oldest.
        assert_eq!(s.stats().hello_verify_requests, before + 1);
        assert_eq!(deferred.waiting.len(), DEFERRED_MAX);
        // A datagram too large to keep, from a peer with none waiting: handled at once, and
        // nothing else with it (one large datagram does not bring the queue forward).
        let mut large = hello.clone();
        large.resize(DEFERRED_LARGEST + 1, 0);
        let datagrams_in = s.stats().datagrams_in;
        deferred.handle_or_defer(&mut s, now, from(DEFERRED_MAX + 1), &large);
        assert_eq!(deferred.waiting.len(), DEFERRED_MAX);
        assert_eq!(s.stats().datagrams_in, datagrams_in + 1);
        // From a peer with one waiting (the 3rd from the front, `from(3)`: `from(0)` was
        // handled): its own waiting one and the two before it first, then it; the rest wait.
        let handshakes = s.stats().hello_verify_requests;
        deferred.handle_or_defer(&mut s, now, from(3), &large);
        assert_eq!(deferred.waiting.len(), DEFERRED_MAX - 3);
        assert_eq!(s.stats().hello_verify_requests, handshakes + 3);
        assert_eq!(s.stats().datagrams_in, datagrams_in + 1 + 3 + 1);
        assert_eq!(deferred.count, DEFERRED_MAX as u64 + 1);
        while deferred.handle_next(&mut s, now) {}
        assert_eq!(
            s.stats().hello_verify_requests,
            before + 1 + DEFERRED_MAX as u64
        );
        // Buffers are kept for reuse, never more than the bound.
        assert!(deferred.spare.len() <= DEFERRED_MAX);
    }
}
