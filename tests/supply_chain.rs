//! One TLS stack: rustls on aws-lc-rs. No OpenSSL, ring or native-tls may enter the dependency
//! graph (deny.toml says the same for `cargo deny`; this test needs no extra tool). Cargo.lock
//! alone is not the graph (it also records optional dependencies nobody enables), so ask cargo.

#[test]
fn no_second_tls_stack_or_crypto_provider_in_the_dependency_graph() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "--target",
            "all",
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).unwrap();
    let packages: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(packages.contains(&"rustls"));
    assert!(packages.contains(&"aws-lc-rs"));
    for banned in ["openssl", "openssl-sys", "native-tls", "ring", "boring-sys"] {
        assert!(
            !packages.contains(&banned),
            "{banned} is in the dependency graph: a second TLS stack or crypto provider crept in"
        );
    }
}
