//! Checks that the OpenSSL `openssl-sys` found is one this crate supports, and emits `ossl310`,
//! `ossl320`, ... cfgs from its version (`DEP_OPENSSL_VERSION_NUMBER` and the other `DEP_OPENSSL_*`
//! variables, exported because `openssl-sys` declares `links = "openssl"`).
//!
//! Supported: OpenSSL 3.0 to 4.0 (tested: 3.0, 3.5, 3.6, 4.0; see the README's
//! "Supported OpenSSL versions"). Older OpenSSL, LibreSSL, BoringSSL and AWS-LC are refused with
//! a compile error that says so; a release newer than the newest tested branch gets a warning.

/// The oldest supported release (`OPENSSL_VERSION_NUMBER` layout).
const MIN_VERSION: u64 = 0x3000_0000;
/// The first release past the newest tested branch (4.0.x).
const UNTESTED_FROM: u64 = 0x4010_0000;
const SUPPORTED: &str = "OpenSSL 3.0 to 4.0 (tested: 3.0, 3.5, 3.6 and 4.0)";
const HOW_TO_FIX: &str = "Install a supported OpenSSL's headers and libraries (Debian/Ubuntu: \
     libssl-dev on Debian 12 / Ubuntu 22.04 or newer) and point openssl-sys at it (OPENSSL_DIR, \
     or pkg-config), or enable openssl-dtls's `vendored` feature to build and link a fresh \
     OpenSSL.";

fn main() {
    const CFGS: &[(u64, &str)] = &[
        (0x3000_0000, "ossl300"),
        (0x3010_0000, "ossl310"),
        (0x3020_0000, "ossl320"),
        (0x3050_0000, "ossl350"),
    ];
    for (_, name) in CFGS {
        println!("cargo:rustc-check-cfg=cfg({name})");
    }
    for var in [
        "DEP_OPENSSL_VERSION_NUMBER",
        "DEP_OPENSSL_LIBRESSL_VERSION_NUMBER",
        "DEP_OPENSSL_BORINGSSL",
        "DEP_OPENSSL_AWSLC",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    for (name, what) in [
        ("DEP_OPENSSL_LIBRESSL_VERSION_NUMBER", "LibreSSL"),
        ("DEP_OPENSSL_BORINGSSL", "BoringSSL"),
        ("DEP_OPENSSL_AWSLC", "AWS-LC"),
    ] {
        if var(name).is_some() {
            unsupported(&format!("openssl-sys found {what}"));
        }
    }
    let Some(text) = var("DEP_OPENSSL_VERSION_NUMBER") else {
        // Not from openssl-sys's build script (e.g. a `links` override in a Cargo config):
        // nothing to check against.
        println!(
            "cargo:warning=openssl-dtls-sys: openssl-sys did not report the OpenSSL version; \
             supported: {SUPPORTED}"
        );
        return;
    };
    let Ok(version) = u64::from_str_radix(text.trim(), 16) else {
        println!(
            "cargo:warning=openssl-dtls-sys: cannot read the OpenSSL version openssl-sys \
             reported ({text:?}); supported: {SUPPORTED}"
        );
        return;
    };
    if version < MIN_VERSION {
        unsupported(&format!(
            "openssl-sys found OpenSSL {} ({version:#x})",
            version_string(version)
        ));
    }
    if version >= UNTESTED_FROM {
        println!(
            "cargo:warning=openssl-dtls-sys: OpenSSL {} is newer than the releases openssl-dtls \
             is tested with; supported: {SUPPORTED}",
            version_string(version)
        );
    }
    for (min, name) in CFGS {
        if version >= *min {
            println!("cargo:rustc-cfg={name}");
        }
    }
    println!("cargo:rustc-env=OPENSSL_DTLS_SYS_VERSION_NUMBER={version:x}");
}

/// `3.0.19` from 0x30000130 (OpenSSL 3+: MNN00PP0), `1.1.1` from 0x1010117f (older: MNNFFPPS).
fn version_string(v: u64) -> String {
    let (major, minor) = ((v >> 28) & 0xf, (v >> 20) & 0xff);
    if major >= 3 {
        format!("{major}.{minor}.{}", (v >> 4) & 0xff)
    } else {
        format!("{major}.{minor}.{}", (v >> 12) & 0xff)
    }
}

fn unsupported(found: &str) -> ! {
    panic!(
        "\n\nopenssl-dtls supports {SUPPORTED}, but {found}.\n{HOW_TO_FIX}\n\
         (openssl-dtls uses OpenSSL 3's API, such as OSSL_PARAM and the 64-bit SSL_set_options, and \
         is tested only against OpenSSL.)\n\n"
    );
}
