//! The servers' graceful restart and fleet flags, shared by `psk_server` and `pki_server`:
//!
//! - `--state-file PATH`: restore the connections saved in PATH at start (then delete it), save
//!   them there on SIGTERM/SIGINT and exit (compact connections are turned on: only they can
//!   be saved). Sealed under `--state-key-file` (default `PATH.key`, created with random bytes,
//!   mode 0600, if missing) or, in a fleet, under the key the fleet secret derives for the node.
//!   A state older than `--state-max-age` seconds (default 3600) is refused.
//! - `--handover SECS` (with `--state-file`): the rolling restart without a gap. Bind first
//!   (`SO_REUSEPORT`, next to the running predecessor), wait up to SECS for the predecessor's
//!   state file to appear (it writes it when stopped with SIGTERM), restore it, and only then
//!   read the socket. Prints `taking over` when bound and `restored N connections` (or `no
//!   state to take over` after SECS).
//! - `--node-id N` and `--fleet-secret-file PATH`: join a fleet (`openssl_dtls::fleet`): N is
//!   the first byte of every Connection ID this node issues (a balancer routes `tls12_cid`
//!   records by it); the file holds the secret every node shares (cookie secret, ticket keys,
//!   state keys are derived from it), created with fresh random bytes and mode 0600 if missing.
//!   A fleet node binds with `SO_REUSEPORT`, so that its successor can bind next to it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl_dtls::fleet::FleetSecret;
use openssl_dtls::{
    DtlsServer, DtlsServerContext, DtlsServerContextBuilder, EndpointConfig, SocketOptions,
    StateKey,
};

/// The usage lines of these flags, for the tools' `concat!`ed usage text.
#[allow(unused_macros)]
macro_rules! restart_usage {
    () => {
        "  --state-file    graceful restart (turns compact connections on): restore the connections
                  saved in PATH at start (then delete it), save them there on SIGTERM/SIGINT
  --state-key-file the 32-byte key sealing the state file (default PATH.key, or derived from
                  the fleet secret; created with random bytes, mode 0600, if missing)
  --state-max-age refuse a state file older than SECS seconds (default 3600)
  --handover      SECS: rolling restart without a gap: bind next to the running predecessor
                  (SO_REUSEPORT), wait up to SECS for its state file, restore, then serve
  --node-id       N: this node's index in a fleet, the first byte of its Connection IDs
  --fleet-secret-file PATH: the secret all nodes of a fleet share (created if missing)
"
    };
}
#[allow(unused_imports)]
pub(crate) use restart_usage;

/// The flags' names.
const FLAGS: [&str; 6] = [
    "state-file",
    "state-key-file",
    "state-max-age",
    "handover",
    "node-id",
    "fleet-secret-file",
];

/// The flags' values.
#[derive(Debug)]
pub struct Restart {
    pub state_file: Option<PathBuf>,
    pub state_key_file: Option<PathBuf>,
    pub state_max_age: Duration,
    pub handover: Option<Duration>,
    pub node_id: Option<u8>,
    pub fleet_secret_file: Option<PathBuf>,
}

impl Default for Restart {
    fn default() -> Restart {
        Restart {
            state_file: None,
            state_key_file: None,
            state_max_age: Duration::from_secs(3600),
            handover: None,
            node_id: None,
            fleet_secret_file: None,
        }
    }
}

/// A server set up for [`Restart::serve`]: its context builder's fleet secret, if any.
pub struct Fleet {
    secret: Option<FleetSecret>,
}

impl Restart {
    /// Whether `--name` is one of these flags.
    pub fn takes(name: &str) -> bool {
        FLAGS.contains(&name)
    }

    /// Parses the value of flag `--name` (one [`takes`](Self::takes) accepted) from `p`.
    pub fn parse_value(&mut self, name: &str, p: &mut lexopt::Parser) -> Result<(), lexopt::Error> {
        use lexopt::prelude::*;
        match name {
            "state-file" => self.state_file = Some(p.value()?.into()),
            "state-key-file" => self.state_key_file = Some(p.value()?.into()),
            "state-max-age" => self.state_max_age = Duration::from_secs(p.value()?.parse()?),
            "handover" => self.handover = Some(Duration::from_secs(p.value()?.parse()?)),
            "node-id" => self.node_id = Some(p.value()?.parse()?),
            "fleet-secret-file" => self.fleet_secret_file = Some(p.value()?.into()),
            _ => return Err(format!("--{name} is not a restart flag").into()),
        }
        Ok(())
    }

    /// Checks the flags that go together.
    pub fn check(&self) -> Result<(), lexopt::Error> {
        if self.handover.is_some() && self.state_file.is_none() {
            return Err("--handover needs --state-file".into());
        }
        if self.node_id.is_some() != self.fleet_secret_file.is_some() {
            return Err("--node-id and --fleet-secret-file go together".into());
        }
        Ok(())
    }

    /// Applies the flags to the context: compact connections for a state file, the fleet's
    /// cookie secret and CID prefix (and, if `tickets`, its ticket keys).
    pub fn configure(&self, builder: &mut DtlsServerContextBuilder, tickets: bool) -> Fleet {
        if self.state_file.is_some() {
            builder.compact_connections(true);
        }
        let secret = match (&self.fleet_secret_file, self.node_id) {
            (Some(path), Some(node)) => {
                let (secret, created) = FleetSecret::load_or_create(path)
                    .unwrap_or_else(|e| super::die(&format!("{}: {e}", path.display())));
                if created {
                    super::say(&format!("created fleet secret {}", path.display()));
                }
                builder.fleet(&secret, node);
                if tickets {
                    let keys = secret
                        .ticket_keys(openssl_dtls::context::DEFAULT_TICKET_ROTATION)
                        .unwrap_or_else(|e| super::die(&e.to_string()));
                    builder.session_tickets(keys);
                }
                Some(secret)
            }
            _ => None,
        };
        Fleet { secret }
    }

    /// Binds the server (restoring or taking over as the flags say), installs the save on
    /// SIGTERM/SIGINT, and echoes forever.
    pub fn serve(
        self,
        fleet: Fleet,
        listen: std::net::SocketAddr,
        ctx: DtlsServerContext,
        config: EndpointConfig,
        on_connection: impl Fn(&openssl_dtls::DtlsConnection),
    ) -> ! {
        let mut socket = SocketOptions::default();
        // A fleet node's successor binds next to it (--handover).
        socket.reuse_port = self.handover.is_some() || fleet.secret.is_some();
        let Some(path) = self.state_file.clone() else {
            let server = DtlsServer::bind_with(listen, ctx, config, socket)
                .unwrap_or_else(|e| super::die(&format!("bind {listen}: {e}")));
            super::echo_forever_with(server, on_connection)
        };
        let key = match (&self.state_key_file, &fleet.secret, self.node_id) {
            (None, Some(secret), Some(node)) => secret.state_key(node),
            (file, _, _) => state_key(&file.clone().unwrap_or_else(|| {
                let mut p = path.clone().into_os_string();
                p.push(".key");
                p.into()
            })),
        };
        let handover = self.handover;
        let state = || -> openssl_dtls::Result<Option<std::io::Cursor<Vec<u8>>>> {
            if let Some(wait) = handover {
                super::say("taking over");
                if !wait_for_file(&path, wait) {
                    super::say("no state to take over");
                    return Ok(None);
                }
            }
            read_and_remove(&path)
        };
        let restored = DtlsServer::bind_and_restore(
            listen,
            ctx.clone(),
            config.clone(),
            socket.clone(),
            state,
            &key,
            self.state_max_age,
        );
        let (server, report) = match restored {
            Ok(done) => done,
            // A refused file (tampered, expired, another configuration): say so and start
            // without it; its devices handshake again.
            Err(e @ openssl_dtls::Error::State(_)) => {
                eprintln!("state refused: {}: {e}", path.display());
                let server = DtlsServer::bind_with(listen, ctx, config, socket)
                    .unwrap_or_else(|e| super::die(&format!("bind {listen}: {e}")));
                (server, None)
            }
            Err(e) => super::die(&format!("bind {listen} and restore: {e}")),
        };
        if let Some(report) = report {
            super::say(&format!("restored {} connections", report.restored));
        }
        let server = Arc::new(server);
        save_on_signal(Arc::clone(&server), path, key);
        super::echo_forever_with(server, on_connection)
    }
}

/// The state key in `path` (32 bytes), or a new random one written there (mode 0600, never
/// overwriting a file).
fn state_key(path: &Path) -> StateKey {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(k) => StateKey::from_bytes(&k),
            Err(_) => super::die(&format!(
                "{}: a state key file holds exactly 32 bytes",
                path.display()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = StateKey::generate().unwrap_or_else(|e| super::die(&e.to_string()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| f.write_all(key.as_bytes()).and_then(|()| f.sync_all()));
            if let Err(e) = written {
                super::die(&format!("create {}: {e}", path.display()));
            }
            key
        }
        Err(e) => super::die(&format!("read {}: {e}", path.display())),
    }
}

/// The saved state in `path`, read into memory and the file deleted (a state must be restored
/// once only: restored twice, its sequence numbers would be used twice); `None` if there is
/// no file. The file is first claimed by renaming it to a name of this process's own: of two
/// successors woken by the same file, only one gets it (the other finds nothing to restore).
fn read_and_remove(path: &Path) -> openssl_dtls::Result<Option<std::io::Cursor<Vec<u8>>>> {
    let mut claimed = path.as_os_str().to_owned();
    claimed.push(format!(".claimed.{}", std::process::id()));
    let claimed = PathBuf::from(claimed);
    match std::fs::rename(path, &claimed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(openssl_dtls::Error::Io(e)),
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(&claimed).and_then(|mut f| f.read_to_end(&mut bytes));
    let removed = std::fs::remove_file(&claimed);
    read.map_err(openssl_dtls::Error::Io)?;
    removed.map_err(openssl_dtls::Error::Io)?;
    Ok(Some(std::io::Cursor::new(bytes)))
}

/// Waits until `path` exists (the predecessor renames its finished state there), at most
/// `wait`: sleeps on an inotify watch of the directory, not in a polling loop.
fn wait_for_file(path: &Path, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let watch = inotify::Watch::new(dir);
    loop {
        if path.exists() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match &watch {
            Ok(w) => w.wait(left),
            // No inotify: look again once per 50 ms until the deadline.
            Err(_) => std::thread::sleep(left.min(Duration::from_millis(50))),
        }
    }
}

/// On SIGTERM or SIGINT: saves the server's connections to `path` (through a temporary file
/// renamed over it, so a crash never leaves half a state, and a successor never reads half a
/// state) and exits.
fn save_on_signal(server: Arc<DtlsServer>, path: PathBuf, key: StateKey) {
    let mut wakeup = signal::notify_on_termination();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut byte = [0u8; 1];
        let _ = wakeup.read(&mut byte); // blocks until a signal arrives
                                        // The accept loop ends with the server: this thread exits the process.
        super::EXITING.store(true, std::sync::atomic::Ordering::SeqCst);
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
                super::say(&format!("saved {} connections", report.saved));
                let stats = server.stats();
                super::say(&format!(
                    "handshakes completed: {}",
                    stats.handshakes_completed
                ));
                let _ = std::io::stdout().flush();
                std::process::exit(0)
            }
            Err(e) => super::die(&format!("save {}: {e}", path.display())),
        }
    });
}

/// A directory watch (inotify) to sleep on until a file is created or renamed into it.
mod inotify {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::time::Duration;

    pub struct Watch(OwnedFd);

    impl Watch {
        pub fn new(dir: &Path) -> std::io::Result<Watch> {
            let name = std::ffi::CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: `fd` is an inotify descriptor; `name` a NUL-terminated path that
            // outlives the call.
            let wd = unsafe {
                libc::inotify_add_watch(
                    fd.as_raw_fd(),
                    name.as_ptr(),
                    libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE,
                )
            };
            if wd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Watch(fd))
        }

        /// Sleeps until something is created in the directory, or `timeout`; drains the events.
        pub fn wait(&self, timeout: Duration) {
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: `pfd` is one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            let mut buf = [0u8; 4096];
            // SAFETY: `buf` is a live buffer of the length given; the descriptor is non-blocking.
            while unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0
            {
            }
        }
    }
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
