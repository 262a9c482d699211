//! Calls every symbol this crate declares, so a missing or misdeclared one fails to link or run.

use std::ffi::CStr;

use openssl_dtls_sys::*;
use openssl_sys as ffi;

#[test]
fn version_cfgs_match_the_linked_openssl() {
    // SAFETY: OpenSSL_version_num takes no arguments and reads a constant.
    let linked = unsafe { ffi::OpenSSL_version_num() } as u64;
    assert_ne!(
        OPENSSL_VERSION_NUMBER, 0,
        "the build script saw DEP_OPENSSL_VERSION_NUMBER"
    );
    // Same major.minor as the headers we were built against.
    assert_eq!(
        linked >> 20,
        OPENSSL_VERSION_NUMBER >> 20,
        "linked {linked:x}, built {OPENSSL_VERSION_NUMBER:x}"
    );
    let expected_change = if linked >= 0x3020_0000 { 35 } else { 31 };
    assert_eq!(TLS_ST_SR_CHANGE, expected_change);
}

#[test]
fn every_symbol_links_and_behaves() {
    ffi::init();
    // SAFETY: every pointer below comes from OpenSSL's own constructors, is checked for null,
    // and is freed exactly once at the end of the test.
    unsafe {
        let ctx = ffi::SSL_CTX_new(ffi::DTLS_method());
        assert!(!ctx.is_null());
        assert_eq!(SSL_CTX_use_psk_identity_hint(ctx, c"hint".as_ptr()), 1);
        SSL_CTX_set_info_callback(ctx, None);
        assert_eq!(SSL_CTX_set_max_send_fragment(ctx, 1200), 1);
        assert_eq!(
            SSL_CTX_set_max_cert_list(ctx, 32 * 1024),
            100 * 1024,
            "returns OpenSSL's default"
        );

        let ssl = ffi::SSL_new(ctx);
        assert!(!ssl.is_null());
        assert_eq!(SSL_use_psk_identity_hint(ssl, c"hint2".as_ptr()), 1);
        SSL_set_info_callback(ssl, None);
        DTLS_set_timer_cb(ssl, None);
        assert_eq!(SSL_set_max_send_fragment(ssl, 1200), 1);
        // Before a handshake no cipher is chosen, so no data MTU is known.
        assert_eq!(DTLS_get_data_mtu(ssl), 0);
        let min = DTLS_get_link_min_mtu(ssl);
        assert!(min >= 200, "link min mtu {min}");
        assert_eq!(
            DTLS_set_link_mtu(ssl, min - 1),
            0,
            "below the minimum is refused"
        );
        assert_eq!(DTLS_set_link_mtu(ssl, 1200), 1);
        let mut tv = timeval {
            tv_sec: 7,
            tv_usec: 7,
        };
        assert_eq!(
            DTLSv1_get_timeout(ssl, &mut tv),
            0,
            "no timer before a handshake"
        );
        assert_eq!(DTLSv1_handle_timeout(ssl), 0);
        let before = SSL_get_options(ssl);
        let with = SSL_set_options(ssl, 0x1000); // SSL_OP_NO_QUERY_MTU
        assert_eq!(with & 0x1000, 0x1000);
        assert_eq!(SSL_clear_options(ssl, 0x1000) & 0x1000, 0);
        assert_eq!(SSL_get_options(ssl), before & !0x1000);
        assert!(BIO_get_new_index() > 0);
        let mem = ffi::BIO_new(ffi::BIO_s_mem());
        assert_eq!(BIO_method_type(mem), 1 | BIO_TYPE_SOURCE_SINK); // BIO_TYPE_MEM
        ffi::BIO_free_all(mem);
        ffi::SSL_set_accept_state(ssl);
        assert_eq!(SSL_in_init(ssl), 1);
        assert_eq!(SSL_get_state(ssl), 0, "TLS_ST_BEFORE");
        let ciphers = SSL_get1_supported_ciphers(ssl);
        assert!(!ciphers.is_null(), "DTLS_method offers ciphers by default");
        assert!(ffi::OPENSSL_sk_num(ciphers.cast()) > 0);
        ffi::OPENSSL_sk_free(ciphers.cast());

        // DTLSv1_listen without a BIO or cookie callbacks fails cleanly.
        let addr = BIO_ADDR_new();
        assert!(!addr.is_null());
        assert!(DTLSv1_listen(ssl, addr) <= 0);
        ffi::ERR_clear_error();

        let raw = [127u8, 0, 0, 1];
        let port = 5684u16.to_be();
        assert_eq!(
            BIO_ADDR_rawmake(addr, libc::AF_INET, raw.as_ptr().cast(), 4, port),
            1
        );
        assert_eq!(BIO_ADDR_family(addr), libc::AF_INET);
        assert_eq!(u16::from_be(BIO_ADDR_rawport(addr)), 5684);
        let mut out = [0u8; 16];
        let mut len = out.len();
        assert_eq!(
            BIO_ADDR_rawaddress(addr, out.as_mut_ptr().cast(), &mut len),
            1
        );
        assert_eq!(&out[..len], &raw);
        BIO_ADDR_clear(addr);
        assert_eq!(BIO_ADDR_family(addr), libc::AF_UNSPEC);
        BIO_ADDR_free(addr);

        let ty = CStr::from_ptr(SSL_alert_type_string_long(2 << 8 | 40));
        assert_eq!(ty.to_str().unwrap(), "fatal");
        let desc = CStr::from_ptr(SSL_alert_desc_string_long(40));
        assert_eq!(desc.to_str().unwrap(), "handshake failure");

        ffi::SSL_free(ssl);
        ffi::SSL_CTX_free(ctx);
    }
}
