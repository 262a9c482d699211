//! Emits `ossl310`, `ossl320`, ... cfgs from the OpenSSL version that `openssl-sys` found
//! (`DEP_OPENSSL_VERSION_NUMBER`, exported because `openssl-sys` declares `links = "openssl"`).

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
    println!("cargo:rustc-env=OPENSSL_DTLS_SYS_VERSION_NUMBER={version:x}");
}
