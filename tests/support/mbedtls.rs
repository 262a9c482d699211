//! The Mbed TLS test peer (tests/peers/mbedtls_peer.c, built by scripts/setup-mbedtls.sh): an
//! independent DTLS 1.2 implementation with RFC 9146 connection IDs. tests/peers/README.md lists
//! its options and output lines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The repository root: tests are compiled from the `openssl-dtls` crate directory, whose parent
/// is the root.
fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .filter(|p| p.join("scripts/setup-mbedtls.sh").is_file())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// `${CARGO_TARGET_DIR or <repo>/target}/peers/mbedtls_peer` (a relative `CARGO_TARGET_DIR` is
/// taken from the repository root, as scripts/setup-mbedtls.sh does).
fn peer_path(root: &Path) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    };
    target.join("peers").join("mbedtls_peer")
}

/// True when the binary exists and is at least as new as its C source.
fn up_to_date(bin: &Path, source: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(bin), modified(source)) {
        (Some(b), Some(s)) => b >= s,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The path of the Mbed TLS peer, building it first (once per test process) when it is missing
/// or older than its source. Panics when it cannot be built: a test that needs the peer fails,
/// it never skips.
pub fn mbedtls_peer() -> PathBuf {
    static BUILT: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let mut state = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if state.is_none() {
        *state = Some(build());
    }
    match state.as_ref().unwrap() {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let root = repo_root();
    let bin = peer_path(&root);
    if up_to_date(&bin, &root.join("tests/peers/mbedtls_peer.c")) {
        return Ok(bin);
    }
    let script = root.join("scripts/setup-mbedtls.sh");
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .output()
        .map_err(|e| {
            format!(
                "the Mbed TLS peer needs building and {} could not run: {e}",
                script.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "the Mbed TLS peer needs building and {} failed ({}):\n{}{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if !bin.is_file() {
        return Err(format!(
            "{} succeeded but {} does not exist:\n{}",
            script.display(),
            bin.display(),
            String::from_utf8_lossy(&output.stdout)
        ));
    }
    Ok(bin)
}
