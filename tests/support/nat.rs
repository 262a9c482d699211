//! A NAT on loopback for Connection ID tests: the device talks to the relay's client-facing
//! socket; the relay forwards its datagrams to the server from an "outside" socket, whose
//! address is what the server sees. [`Nat::rebind`] switches to a new outside socket (a new
//! port), as a carrier-grade NAT does when a sleeping device's mapping expired: from then on
//! datagrams to the old outside address are lost (and counted), like a real expired mapping.
//!
//! Every datagram is also counted by direction, and the ClientHellos that pass are counted
//! (a new handshake would show up there).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What passed through the NAT.
#[derive(Debug, Clone, Default)]
pub struct NatStats {
    /// Datagrams from the device to the server.
    pub to_server: usize,
    /// Datagrams from the server delivered to the device.
    pub to_device: usize,
    /// Datagrams that arrived at an outside address after it was abandoned (lost).
    pub to_old_address: usize,
    /// Epoch-0 ClientHellos from the device (a fresh handshake sends one or two: the second
    /// with the cookie).
    pub client_hellos: usize,
    /// Records of content type 25 (`tls12_cid`) from the device / from the server.
    pub cid_records_to_server: usize,
    pub cid_records_to_device: usize,
    /// Every outside address used, oldest first.
    pub outside: Vec<SocketAddr>,
}

struct Shared {
    stats: NatStats,
    /// The current outside socket (a new one after each rebind).
    outside: Arc<UdpSocket>,
    /// The device's address, once seen.
    device: Option<SocketAddr>,
}

/// A NAT in front of one device: see the module documentation.
pub struct Nat {
    inside: SocketAddr,
    inside_socket: Arc<UdpSocket>,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    server: SocketAddr,
}

fn first_types(d: &[u8]) -> u8 {
    d.first().copied().unwrap_or(0)
}

impl Nat {
    /// A NAT towards `server`; the device sends to [`inside`](Self::inside).
    pub fn start(server: SocketAddr) -> Nat {
        let inside = UdpSocket::bind("127.0.0.1:0").expect("bind the NAT's inside");
        inside
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let inside_addr = inside.local_addr().unwrap();
        let outside = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind an outside port"));
        let stats = NatStats {
            outside: vec![outside.local_addr().unwrap()],
            ..NatStats::default()
        };
        let shared = Arc::new(Mutex::new(Shared {
            stats,
            outside: Arc::clone(&outside),
            device: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let inside = Arc::new(inside);
        let mut nat = Nat {
            inside: inside_addr,
            inside_socket: Arc::clone(&inside),
            shared: Arc::clone(&shared),
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            server,
        };
        // Device -> server, through whichever outside socket is current.
        let t = {
            let (shared, stop, inside) =
                (Arc::clone(&shared), Arc::clone(&stop), Arc::clone(&inside));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = inside.recv_from(&mut buf) else {
                        continue;
                    };
                    let mut s = shared.lock().unwrap();
                    s.device = Some(from);
                    s.stats.to_server += 1;
                    let d = &buf[..n];
                    if d.len() > 25 && d[0] == 22 && d[3..5] == [0, 0] && d[13] == 1 {
                        s.stats.client_hellos += 1;
                    }
                    if first_types(d) == 25 {
                        s.stats.cid_records_to_server += 1;
                    }
                    let _ = s.outside.send_to(d, server);
                }
            })
        };
        nat.threads.push(t);
        nat.watch(outside, inside);
        nat
    }

    /// Server -> device for one outside socket, while it is current; afterwards what arrives
    /// there is lost and counted.
    fn watch(&mut self, outside: Arc<UdpSocket>, inside: Arc<UdpSocket>) {
        outside
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let (shared, stop) = (Arc::clone(&self.shared), Arc::clone(&self.stop));
        let t = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, _)) = outside.recv_from(&mut buf) else {
                    continue;
                };
                let mut s = shared.lock().unwrap();
                if !Arc::ptr_eq(&s.outside, &outside) {
                    s.stats.to_old_address += 1;
                    continue;
                }
                s.stats.to_device += 1;
                if first_types(&buf[..n]) == 25 {
                    s.stats.cid_records_to_device += 1;
                }
                if let Some(device) = s.device {
                    let _ = inside.send_to(&buf[..n], device);
                }
            }
        });
        self.threads.push(t);
    }

    /// The address the device sends to.
    pub fn inside(&self) -> SocketAddr {
        self.inside
    }

    /// The server this NAT forwards to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The mapping expired: a new outside port from now on (returned); the old one is dead.
    pub fn rebind(&mut self) -> SocketAddr {
        let outside = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind an outside port"));
        let addr = outside.local_addr().unwrap();
        {
            let mut s = self.shared.lock().unwrap();
            s.outside = Arc::clone(&outside);
            s.stats.outside.push(addr);
        }
        let inside = Arc::clone(&self.inside_socket);
        self.watch(outside, inside);
        addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NatStats {
        self.shared.lock().unwrap().stats.clone()
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
