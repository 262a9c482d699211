//! Tiny shared helpers for the examples: `--flag value` parsing, hex keys, an echo loop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::exit;

use std::net::{SocketAddr, ToSocketAddrs};

use openssl_dtls::{DtlsClient, DtlsConnection, DtlsServer};

/// `--name value` and bare `--switch` arguments.
pub struct Args {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

impl Args {
    /// Parses the process arguments; `switches` names the flags that take no value.
    pub fn parse(usage: &str, switches: &[&str]) -> Args {
        let mut values = HashMap::new();
        let mut found = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                println!("{usage}");
                exit(0);
            }
            let Some(name) = arg.strip_prefix("--") else {
                fail(usage, &format!("unexpected argument {arg:?}"));
            };
            if switches.contains(&name) {
                found.push(name.to_owned());
                continue;
            }
            match it.next() {
                Some(v) => {
                    values.insert(name.to_owned(), v);
                }
                None => fail(usage, &format!("--{name} needs a value")),
            }
        }
        Args {
            values,
            switches: found,
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn get_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.get(name).unwrap_or(default)
    }

    pub fn required(&self, usage: &str, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| fail(usage, &format!("--{name} is required")))
    }

    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

pub fn fail(usage: &str, message: &str) -> ! {
    eprintln!("error: {message}\n\n{usage}");
    exit(2)
}

/// Decodes a hex string ("73656372657450534b").
pub fn hex(usage: &str, s: &str) -> Vec<u8> {
    if s.len() % 2 != 0 {
        fail(usage, "--key-hex needs an even number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .unwrap_or_else(|_| fail(usage, "--key-hex is not hex"))
        })
        .collect()
}

/// `secretPSK` in hex: the key dtls2's examples and Californium's interop tests use.
pub const DEFAULT_KEY_HEX: &str = "73656372657450534b";

/// Accepts connections forever, echoing every datagram back to its sender on its own thread.
pub fn echo_forever(server: DtlsServer) -> ! {
    println!("listening on {}", server.local_addr());
    for conn in server.incoming() {
        match conn {
            Ok(conn) => {
                log::info!(
                    "connection from {} ({} {})",
                    conn.peer_addr(),
                    conn.protocol_version().unwrap_or("?"),
                    conn.cipher().unwrap_or("?")
                );
                std::thread::spawn(move || echo(conn));
            }
            Err(e) => log::warn!("accept: {e}"),
        }
    }
    exit(0)
}

fn echo(conn: DtlsConnection) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match conn.recv(&mut buf) {
            Ok(0) => {
                log::info!("{} closed the connection", conn.peer_addr());
                return;
            }
            Ok(n) => {
                if let Err(e) = conn.send(&buf[..n]) {
                    log::warn!("echo to {}: {e}", conn.peer_addr());
                    return;
                }
            }
            Err(e) => {
                log::info!("{}: {e}", conn.peer_addr());
                return;
            }
        }
    }
}

/// Sends `message` `count` times, printing each reply on its own line; exits non-zero on failure.
pub fn send_and_print(conn: &DtlsConnection, message: &str, count: usize) {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..count {
        if let Err(e) = conn.send(message.as_bytes()) {
            eprintln!("error: send failed: {e}");
            exit(1);
        }
        match conn.recv_timeout(&mut buf, std::time::Duration::from_secs(5)) {
            Ok(Some(0)) => {
                eprintln!("error: the server closed the connection");
                exit(1);
            }
            Ok(Some(n)) => println!("{}", String::from_utf8_lossy(&buf[..n])),
            Ok(None) => {
                eprintln!("error: no reply within 5 s");
                exit(1);
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit(1);
            }
        }
    }
    conn.close();
}

/// The `--connect` address (default 127.0.0.1:5684).
pub fn peer(usage: &str, args: &Args) -> SocketAddr {
    args.get_or("connect", "127.0.0.1:5684")
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| fail(usage, "--connect is not an address"))
}

/// A client socket on any port of the peer's address family.
pub fn client_for(usage: &str, peer: SocketAddr) -> DtlsClient {
    let bind = if peer.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    DtlsClient::bind(bind).unwrap_or_else(|e| fail(usage, &format!("bind: {e}")))
}
