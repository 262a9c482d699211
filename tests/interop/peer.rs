//! Peers nobody here wrote, as child processes with bounded lifetimes; a UDP relay that measures
//! datagrams; temporary directories for PEM files.
//!
//! Nothing here can hang a test: every wait has a deadline, and a watchdog kills each child
//! after [`PEER_LIFETIME`] whatever the test does. A missing program panics with the package to
//! install: a peer that is not there is a failure, never a skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest any peer process may live: the watchdog kills it then.
pub const PEER_LIFETIME: Duration = Duration::from_secs(45);

/// Panics unless `program` can be run, naming the Debian package that provides it.
pub fn require(program: &str, version_args: &[&str], package: &str) {
    let status = Command::new(program)
        .args(version_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = status {
        missing(program, package, &e);
    }
}

fn missing(program: &str, package: &str, e: &std::io::Error) -> ! {
    panic!(
        "cannot run `{program}` ({e}): the interop tests need it. Install it with \
         `apt-get install {package}` (scripts/setup.sh installs every interop peer)"
    )
}

/// A port that was free a moment ago on 127.0.0.1 (bind port 0, read it, release it), for peers
/// that must be told their port.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
        .port()
}

/// Starts a server program on a fresh port on 127.0.0.1 (`args` gets the port) and waits until
/// it prints `ready`. The port was free when picked but another process may take it before the
/// peer binds it: a peer that ends without printing `ready` is retried on a new port, twice.
pub fn spawn_server(
    program: &str,
    package: &str,
    ready: &str,
    timeout: Duration,
    args: impl Fn(u16) -> Vec<String>,
) -> (Peer, u16) {
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let port = free_udp_port();
        let peer = Peer::spawn(program, package, &args(port));
        if peer.wait_for(ready, timeout) {
            return (peer, port);
        }
        attempts.push(peer.transcript());
    }
    panic!(
        "`{program}` never printed {ready:?}:\n{}",
        attempts.join("\n")
    );
}

#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    open_streams: usize,
    killed_by_watchdog: bool,
}

struct Shared {
    output: Mutex<Output>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running peer program: stdin is ours to write, stdout and stderr are collected.
pub struct Peer {
    command: String,
    child: Arc<Mutex<Child>>,
    stdin: Option<ChildStdin>,
    shared: Arc<Shared>,
    stop_watchdog: Arc<(Mutex<bool>, Condvar)>,
    readers: Vec<JoinHandle<()>>,
}

impl Peer {
    /// Starts `program args…` (from `package`), with a watchdog that kills it after
    /// [`PEER_LIFETIME`].
    pub fn spawn<S: AsRef<str>>(program: &str, package: &str, args: &[S]) -> Peer {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let command = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = match Command::new(program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => missing(program, package, &e),
        };
        let shared = Arc::new(Shared {
            output: Mutex::new(Output {
                open_streams: 2,
                ..Output::default()
            }),
            cond: Condvar::new(),
        });
        let stdin = child.stdin.take();
        let mut readers = Vec::new();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        for (stream, is_stdout) in [(stdout, true), (stderr, false)] {
            let shared = Arc::clone(&shared);
            readers.push(std::thread::spawn(move || {
                read_stream(stream, is_stdout, &shared)
            }));
        }
        let child = Arc::new(Mutex::new(child));
        let stop_watchdog = Arc::new((Mutex::new(false), Condvar::new()));
        {
            let child = Arc::clone(&child);
            let stop = Arc::clone(&stop_watchdog);
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let (lock, cond) = &*stop;
                let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) = cond
                    .wait_timeout_while(stopped, PEER_LIFETIME, |stopped| !*stopped)
                    .unwrap_or_else(|e| e.into_inner());
                if !*stopped {
                    let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
                    if matches!(child.try_wait(), Ok(None)) {
                        shared.lock().killed_by_watchdog = true;
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            });
        }
        Peer {
            command,
            child,
            stdin,
            shared,
            stop_watchdog,
            readers,
        }
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Writes `line` and a newline to the peer's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        let written = stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush());
        if let Err(e) = written {
            panic!(
                "cannot write to `{}`: {e}\n{}",
                self.command,
                self.transcript()
            );
        }
    }

    /// Closes the peer's stdin (end of input: clients then close their connection).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether stdout or stderr contains `needle` now.
    pub fn output_contains(&self, needle: &str) -> bool {
        let output = self.shared.lock();
        contains(&output.stdout, needle) || contains(&output.stderr, needle)
    }

    /// Waits until stdout or stderr contains `needle`; panics with the transcript if it does
    /// not within `timeout` (or the peer ends its output first).
    pub fn expect_output(&self, needle: &str, timeout: Duration) {
        if !self.wait_for(needle, timeout) {
            panic!(
                "`{}` did not print {needle:?} within {timeout:?}\n{}",
                self.command,
                self.transcript()
            );
        }
    }

    /// Waits until stdout or stderr contains `needle`: `false` if it does not within `timeout`
    /// or the peer ends its output first.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut output = self.shared.lock();
        loop {
            if contains(&output.stdout, needle) || contains(&output.stderr, needle) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || output.open_streams == 0 {
                return false;
            }
            output = self
                .shared
                .cond
                .wait_timeout(output, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` for the peer to exit on its own; `None` if it is still running.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_wait()
                .ok()
                .flatten();
            if status.is_some() || Instant::now() >= deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the peer to exit with status 0; panics with the transcript otherwise.
    pub fn expect_success(&self, timeout: Duration) {
        match self.wait_exit(timeout) {
            Some(status) if status.success() => {}
            Some(status) => panic!("`{}` failed: {status}\n{}", self.command, self.transcript()),
            None => panic!(
                "`{}` still runs after {timeout:?}\n{}",
                self.command,
                self.transcript()
            ),
        }
    }

    /// Waits for the peer to exit with a failure status; panics with the transcript otherwise.
    pub fn expect_failure(&self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(status) if !status.success() => status,
            Some(status) => panic!(
                "`{}` succeeded ({status}), expected it to fail\n{}",
                self.command,
                self.transcript()
            ),
            None => panic!(
                "`{}` still runs after {timeout:?}\n{}",
                self.command,
                self.transcript()
            ),
        }
    }

    /// Everything the peer printed so far.
    pub fn transcript(&self) -> String {
        let output = self.shared.lock();
        format!(
            "--- `{}`{} ---\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
            self.command,
            if output.killed_by_watchdog {
                " (killed by the watchdog)"
            } else {
                ""
            },
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin = None;
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let (lock, cond) = &*self.stop_watchdog;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cond.notify_all();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

fn read_stream(mut stream: Box<dyn Read + Send>, is_stdout: bool, shared: &Shared) {
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        let mut output = shared.lock();
        if n == 0 {
            output.open_streams -= 1;
            shared.cond.notify_all();
            return;
        }
        if is_stdout {
            output.stdout.extend_from_slice(&buf[..n]);
        } else {
            output.stderr.extend_from_slice(&buf[..n]);
        }
        shared.cond.notify_all();
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a [`Relay`] saw.
#[derive(Debug, Clone, Default)]
pub struct RelayStats {
    /// Datagrams from the client side to the server side.
    pub to_server: usize,
    /// Datagrams from the server side to the client side.
    pub to_client: usize,
    /// The largest datagram in either direction.
    pub largest: usize,
}

/// A UDP relay on 127.0.0.1: the first peer that is not `upstream` becomes the client; every
/// datagram is forwarded unchanged and measured.
pub struct Relay {
    addr: SocketAddr,
    stats: Arc<Mutex<RelayStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// A relay towards `upstream`.
    pub fn start(upstream: SocketAddr) -> Relay {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the relay");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stats = Arc::new(Mutex::new(RelayStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stats = Arc::clone(&stats);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut client: Option<SocketAddr> = None;
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let mut stats = stats.lock().unwrap();
                    stats.largest = stats.largest.max(n);
                    if from == upstream {
                        if let Some(client) = client {
                            stats.to_client += 1;
                            let _ = socket.send_to(&buf[..n], client);
                        }
                    } else {
                        client = Some(from);
                        stats.to_server += 1;
                        let _ = socket.send_to(&buf[..n], upstream);
                    }
                }
            })
        };
        Relay {
            addr,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    /// Where clients should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the relay saw so far.
    pub fn stats(&self) -> RelayStats {
        self.stats.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "openssl-dtls-interop-{}-{}-{nanos}-{label}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    /// Writes `contents` to `name` in the directory; returns its path as a string for a
    /// command line.
    pub fn write(&self, name: &str, contents: &[u8]) -> String {
        let path = self.path.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path_str(&path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("a UTF-8 temp path").to_owned()
}
