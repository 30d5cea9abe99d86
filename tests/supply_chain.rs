//! One TLS stack: rustls on aws-lc-rs. No OpenSSL, ring or native-tls may enter the dependency
//! graph (deny.toml says the same for `cargo deny`; this test needs no extra tool).

#[test]
fn no_second_tls_stack_or_crypto_provider_in_cargo_lock() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let packages: Vec<&str> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .collect();
    assert!(packages.contains(&"rustls"));
    assert!(packages.contains(&"aws-lc-rs"));
    for banned in ["openssl", "openssl-sys", "native-tls", "ring", "boring-sys"] {
        assert!(
            !packages.contains(&banned),
            "{banned} is in Cargo.lock: a second TLS stack or crypto provider crept in"
        );
    }
}
