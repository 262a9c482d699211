//! A PSK DTLS echo server: echoes every datagram back to its sender.
//!
//! ```text
//! cargo run --example psk_server -- --listen 127.0.0.1:5684 --identity Client_identity --key-hex 73656372657450534b
//! openssl s_client -dtls1_2 -connect 127.0.0.1:5684 -psk 73656372657450534b -psk_identity Client_identity -cipher PSK-AES128-CCM8
//! ```
//!
//! A datagram longer than one of its records carries (a peer with a larger MTU) is echoed
//! truncated to the connection's data MTU, with a warning; the connection stays up.
//!
//! With `--cid-len N` the server asks every client that offers Connection IDs (RFC 9146) for an
//! N-byte CID in its records, and a connection follows its client to a new address (a NAT
//! rebinding) without a new handshake:
//!
//! ```text
//! cargo run --example psk_server -- --cid-len 8
//! cargo run --example psk_client -- --cid --message hello --count 3 --interval-ms 1000
//! ```
//!
//! Besides `listening on ADDR`, it prints one line per handshake, `handshake completed: ADDR
//! cid=HEX` (the CID it asked for; `cid=-` without), and one per move, `address changed: OLD ->
//! NEW cid=HEX`.
//!
//! With `--state-file PATH` it restarts gracefully (compact connections are then on): at start
//! it restores the connections saved in PATH, if the file exists (`restored N connections`,
//! each also reported as `handshake completed`, though none ran), and deletes it (a state
//! restored twice would reuse sequence numbers); on SIGTERM or SIGINT it saves every
//! established connection to PATH (`saved N connections`) and exits. The devices notice
//! nothing: their next records are accepted without a new handshake. The file is sealed under
//! the 32-byte key in `--state-key-file` (default `PATH.key`), created with random bytes and
//! mode 0600 if it does not exist; a state older than `--state-max-age` seconds (default 3600)
//! is refused.
//!
//! ```text
//! cargo run --example psk_server -- --state-file /var/lib/psk_server/state
//! ```

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openssl_dtls::{DtlsServer, DtlsServerContext, StateKey};

const USAGE: &str = "\
usage: psk_server [--listen ADDR] [--identity ID] [--key-hex HEX] [--hint H] [--cipher STR]
                  [--compact] [--idle-timeout SECS] [--cid-len N] [--export LABEL:LEN]
                  [--srtp PROFILES] [--state-file PATH [--state-key-file PATH]
                  [--state-max-age SECS]]
  --listen        address to bind (default 127.0.0.1:5684)
  --identity      the PSK identity accepted (default Client_identity)
  --key-hex       the key, in hex (default 73656372657450534b = \"secretPSK\")
  --hint          PSK identity hint sent to clients
  --cipher        OpenSSL cipher string (default: the PSK preset, PSK-AES128-CCM8 first)
  --compact       compact connections: free each SSL after the handshake (about 1 KB per idle peer)
  --idle-timeout  drop a connection that received nothing for SECS seconds
                  (default and 0 or none: never)
  --cid-len       Connection IDs (RFC 9146): ask clients for an N-byte CID (1 to 16), so a
                  connection follows its client to a new address (default 0: off)
  --export        LABEL:LEN: print `exporter: HEX` per connection, LEN bytes of RFC 5705
                  keying material under LABEL (as openssl -keymatexport)
  --srtp          DTLS-SRTP profiles, e.g. SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM;
                  print `srtp: PROFILE HEX` (its keying material) per connection
  --state-file    graceful restart (turns --compact on): restore the connections saved in
                  PATH at start (then delete it), save them there on SIGTERM/SIGINT and exit
  --state-key-file the 32-byte key sealing the state file (default PATH.key; created with
                  random bytes, mode 0600, if missing)
  --state-max-age refuse a state file older than SECS seconds (default 3600)
  -h, --help      this text
A datagram longer than the connection's data MTU is echoed truncated to it (logged).
Prints `handshake completed: ADDR cid=HEX` per connection (cid=- without a CID) and
`address changed: OLD -> NEW cid=HEX` per connection that moved; with --state-file,
`restored N connections` at start and `saved N connections` at exit.";

struct Options {
    listen: SocketAddr,
    identity: Vec<u8>,
    key: Vec<u8>,
    hint: Option<String>,
    cipher: Option<String>,
    compact: bool,
    idle_timeout: Option<Option<Duration>>,
    cid_len: u8,
    keying: common::Keying,
    state_file: Option<PathBuf>,
    state_key_file: Option<PathBuf>,
    state_max_age: Duration,
}

fn parse(p: &mut lexopt::Parser) -> Result<Options, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Options {
        listen: common::socket_addr(common::DEFAULT_ADDR)?,
        identity: common::DEFAULT_IDENTITY.into(),
        key: common::hex(common::DEFAULT_KEY_HEX)?,
        hint: None,
        cipher: None,
        compact: false,
        idle_timeout: None,
        cid_len: 0,
        keying: common::Keying::default(),
        state_file: None,
        state_key_file: None,
        state_max_age: Duration::from_secs(3600),
    };
    let keying = &mut o.keying;
    while let Some(arg) = p.next()? {
        match arg {
            Long("listen") => o.listen = p.value()?.parse_with(common::socket_addr)?,
            Long("identity") => o.identity = p.value()?.string()?.into_bytes(),
            Long("key-hex") => o.key = p.value()?.parse_with(common::hex)?,
            Long("hint") => o.hint = Some(p.value()?.string()?),
            Long("cipher") => o.cipher = Some(p.value()?.string()?),
            Long("compact") => o.compact = true,
            Long("idle-timeout") => {
                o.idle_timeout = Some(p.value()?.parse_with(common::idle_timeout)?)
            }
            Long("export") => keying.export = Some(p.value()?.parse_with(common::export)?),
            Long("srtp") => keying.srtp = Some(p.value()?.string()?),
            Long("cid-len") => o.cid_len = p.value()?.parse_with(common::cid_len)?,
            Long("state-file") => o.state_file = Some(p.value()?.into()),
            Long("state-key-file") => o.state_key_file = Some(p.value()?.into()),
            Long("state-max-age") => {
                o.state_max_age = Duration::from_secs(p.value()?.parse()?);
            }
            Short('h') | Long("help") => return Err(common::help(p, USAGE)),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(o)
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let o = common::parse_args(USAGE, parse);
    let mut builder = DtlsServerContext::builder();
    let (identity, key) = (o.identity, o.key);
    builder.psk_key_store(move |id| (id == identity.as_slice()).then(|| key.clone()));
    if let Some(hint) = &o.hint {
        builder.identity_hint(hint.as_bytes());
    }
    if let Some(cipher) = &o.cipher {
        builder.ciphers(cipher);
    }
    // Only compact connections can be saved: --state-file turns them on.
    builder.compact_connections(o.compact || o.state_file.is_some());
    if o.cid_len > 0 {
        builder.connection_id(o.cid_len);
    }
    if let Some(profiles) = &o.keying.srtp {
        builder.srtp_profiles(profiles);
    }
    builder.keep_exporter_secret(o.keying.export.is_some());
    let ctx = builder
        .build()
        .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
    let server = common::bind_server(o.listen, ctx, common::server_config(o.idle_timeout));
    let server = Arc::new(server);
    if let Some(path) = &o.state_file {
        let key_path = o.state_key_file.clone().unwrap_or_else(|| {
            let mut p = path.clone().into_os_string();
            p.push(".key");
            p.into()
        });
        let key = state_key(&key_path);
        restore(&server, path, &key, o.state_max_age);
        save_on_signal(Arc::clone(&server), path.clone(), key);
    }
    let keying = o.keying;
    common::echo_forever_with(server, move |conn| keying.print(conn))
}

/// The state key in `path` (32 bytes), or a new random one written there (mode 0600, never
/// overwriting a file).
fn state_key(path: &Path) -> StateKey {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(k) => StateKey::from_bytes(&k),
            Err(_) => common::die(&format!(
                "{}: a state key file holds exactly 32 bytes",
                path.display()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = StateKey::generate().unwrap_or_else(|e| common::die(&e.to_string()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| f.write_all(key.as_bytes()).and_then(|()| f.sync_all()));
            if let Err(e) = written {
                common::die(&format!("create {}: {e}", path.display()));
            }
            key
        }
        Err(e) => common::die(&format!("read {}: {e}", path.display())),
    }
}

/// Restores the connections saved in `path`, if it exists, then deletes it: a state must be
/// restored once only (restored twice, its sequence numbers would be used twice).
fn restore(server: &DtlsServer, path: &Path, key: &StateKey, max_age: Duration) {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => common::die(&format!("open {}: {e}", path.display())),
    };
    match server.restore_state(&mut file, key, max_age) {
        Ok(report) => common::say(&format!("restored {} connections", report.restored)),
        Err(e) => eprintln!("state refused: {}: {e}", path.display()),
    }
    if let Err(e) = std::fs::remove_file(path) {
        common::die(&format!("remove {}: {e}", path.display()));
    }
}

/// On SIGTERM or SIGINT: saves the server's connections to `path` (through a temporary file
/// renamed over it, so a crash never leaves half a state) and exits.
fn save_on_signal(server: Arc<DtlsServer>, path: PathBuf, key: StateKey) {
    let mut wakeup = signal::notify_on_termination();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut byte = [0u8; 1];
        let _ = wakeup.read(&mut byte); // blocks until a signal arrives
                                        // The accept loop ends with the server: this thread exits.
        common::EXITING.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let saved = std::fs::File::create(&tmp)
            .map_err(openssl_dtls::Error::Io)
            .and_then(|f| {
                let mut out = std::io::BufWriter::new(f);
                let report = server.save_state_and_stop(&mut out, &key)?;
                let f = out
                    .into_inner()
                    .map_err(|e| openssl_dtls::Error::Io(e.into_error()))?;
                f.sync_all().map_err(openssl_dtls::Error::Io)?;
                std::fs::rename(&tmp, &path).map_err(openssl_dtls::Error::Io)?;
                Ok(report)
            });
        match saved {
            Ok(report) => {
                common::say(&format!("saved {} connections", report.saved));
                let stats = server.stats();
                common::say(&format!(
                    "handshakes completed: {}",
                    stats.handshakes_completed
                ));
                let _ = std::io::stdout().flush();
                std::process::exit(0)
            }
            Err(e) => common::die(&format!("save {}: {e}", path.display())),
        }
    });
}

/// SIGTERM and SIGINT as a byte on a socket: the handler only writes one byte (`write(2)` is
/// async-signal-safe); a thread blocked on the other end does the work.
mod signal {
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicI32, Ordering};

    /// The write end of the socket pair, for the handler.
    static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(_: libc::c_int) {
        let fd = WRITE_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let byte = 1u8;
            // SAFETY: `fd` is the socket's write end, open for the life of the process (its
            // ownership was given up with `into_raw_fd`); `byte` is a live one-byte buffer.
            // write(2) is async-signal-safe. A full socket (a signal repeated) loses the byte.
            unsafe {
                libc::write(fd, std::ptr::addr_of!(byte).cast(), 1);
            }
        }
    }

    /// Installs the handler for SIGTERM and SIGINT; the returned end reads a byte per signal.
    pub fn notify_on_termination() -> UnixStream {
        let (read, write) = UnixStream::pair().expect("a socket pair");
        write.set_nonblocking(true).expect("a non-blocking socket");
        WRITE_FD.store(write.into_raw_fd(), Ordering::Relaxed);
        for sig in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: a zeroed `sigaction` is a valid empty one (no flags, empty mask); its
            // handler is set to `on_signal`, an `extern "C" fn(c_int)` that only calls
            // write(2). `sigaction` reads the struct during the call only.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                    panic!("sigaction: {}", std::io::Error::last_os_error());
                }
            }
        }
        read
    }
}
