//! Emits `ossl310`, `ossl320`, ... cfgs from the OpenSSL version that `openssl-sys` found
//! (`DEP_OPENSSL_VERSION_NUMBER`, exported because `openssl-sys` declares `links = "openssl"`).

fn main() {
    const CFGS: &[(u64, &str)] = &[
        (0x3_00_00_00_0, "ossl300"),
        (0x3_01_00_00_0, "ossl310"),
        (0x3_02_00_00_0, "ossl320"),
        (0x3_05_00_00_0, "ossl350"),
    ];
    for (_, name) in CFGS {
        println!("cargo:rustc-check-cfg=cfg({name})");
    }
    println!("cargo:rerun-if-env-changed=DEP_OPENSSL_VERSION_NUMBER");
    let Ok(version) = std::env::var("DEP_OPENSSL_VERSION_NUMBER") else {
        return;
    };
    let Ok(version) = u64::from_str_radix(version.trim(), 16) else {
        return;
    };
    for (min, name) in CFGS {
        if version >= *min {
            println!("cargo:rustc-cfg={name}");
        }
    }
    // Re-export for crates that depend on us.
    println!("cargo:version_number={version:x}");
}
