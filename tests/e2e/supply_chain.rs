//! One TLS stack: rustls on aws-lc-rs. No OpenSSL, ring or native-tls may enter the dependency
//! graph (deny.toml says the same for `cargo deny`; this test needs no extra tool). Cargo.lock
//! alone is not the graph (it also records optional dependencies nobody enables), so ask cargo.

use std::collections::BTreeMap;

/// `cargo tree` with `args`, offline and locked, one `{p}`-formatted line per package.
fn cargo_tree(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "--prefix", "none"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn no_second_tls_stack_or_crypto_provider_in_the_dependency_graph() {
    // The whole workspace: vakt and the mesh benchmark's programs (benches/mesh/Cargo.toml).
    let tree = cargo_tree(&[
        "--workspace",
        "--target",
        "all",
        "-e",
        "normal,build,dev",
        "--format",
        "{p}",
    ]);
    let packages: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(packages.contains(&"vakt-mesh-bench"), "{tree}");
    assert!(packages.contains(&"rustls"));
    assert!(packages.contains(&"aws-lc-rs"));
    for banned in ["openssl", "openssl-sys", "native-tls", "ring", "boring-sys"] {
        assert!(
            !packages.contains(&banned),
            "{banned} is in the dependency graph: a second TLS stack or crypto provider crept in"
        );
    }
}

/// hyper's h2 comes from vendor/h2 (see vendor/README.md): crates.io's h2 of one exact version
/// with vakt's patch applied. The `=` pin in Cargo.toml, the vendored crate and Cargo.lock must
/// name the same version (else a re-vendoring went half-way), Cargo.lock must take h2 from the
/// path (else the patch is not in the build), and every hunk of the patch must be in the copy.
#[test]
fn vendored_h2_is_the_pinned_version_with_the_patch_applied() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();

    let manifest = read("Cargo.toml");
    let pinned = manifest
        .lines()
        .find_map(|l| l.strip_prefix("h2 = { version = \"="))
        .and_then(|rest| rest.split('"').next())
        .expect("Cargo.toml pins h2 with `h2 = { version = \"=X.Y.Z\"`");
    assert!(manifest.contains("[patch.crates-io]\n"));
    assert!(manifest.contains("\nh2 = { path = \"vendor/h2\" }\n"));

    let vendored = read("vendor/h2/Cargo.toml");
    assert!(
        vendored.contains(&format!("\nname = \"h2\"\nversion = \"{pinned}\"\n")),
        "vendor/h2 is not h2 {pinned}"
    );

    let lock = read("Cargo.lock");
    let entry = lock
        .split("[[package]]\n")
        .find(|p| p.starts_with("name = \"h2\"\n"))
        .expect("h2 in Cargo.lock");
    assert!(
        entry.starts_with(&format!("name = \"h2\"\nversion = \"{pinned}\"\n")),
        "Cargo.lock has another h2: {entry}"
    );
    assert!(
        !entry.contains("source = "),
        "Cargo.lock takes h2 from a registry, not from vendor/h2: {entry}"
    );

    let patch = read("vendor/h2-raw-string-literals.patch");
    let mut hunks = 0;
    for file in patch.split("--- a/").skip(1) {
        let path = file.lines().next().unwrap();
        let patched = read(&format!("vendor/h2/{path}"));
        for hunk in file.split("\n@@ ").skip(1) {
            // The hunk's new side: context and added lines, in order.
            let new_side: String = hunk
                .lines()
                .skip(1)
                .filter(|l| !l.starts_with('-'))
                .map(|l| format!("{}\n", l.get(1..).unwrap_or("")))
                .collect();
            assert!(
                patched.contains(&new_side),
                "vendor/h2/{path} lacks a hunk of the patch:\n{new_side}"
            );
            hunks += 1;
        }
    }
    assert!(
        hunks > 0,
        "vendor/h2-raw-string-literals.patch has no hunks"
    );
}

/// The package -> enabled features map of vakt's build (normal and build dependencies), with
/// `extra` packages selected beside it.
fn features_of_vakts_build(extra: &[&str]) -> BTreeMap<String, String> {
    let mut args = vec!["-p", "vakt"];
    for p in extra {
        args.extend(["-p", p]);
    }
    args.extend(["-e", "normal,build", "--no-dedupe", "--format", "{p}|{f}"]);
    cargo_tree(&args)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(p, f)| (p.trim_end_matches(" (*)").to_owned(), f.to_owned()))
        .collect()
}

/// benches/mesh/run builds vakt and the benchmark's app and load generator in one cargo call.
/// Cargo unifies the features of the packages it builds together, so the programs may ask only
/// for features vakt's own build already has: else the benchmark measures another vakt binary
/// than `scripts/build-release` (the Docker image) ships. (As examples of vakt they
/// did just that: vakt's dev-dependencies added features to rand, regex-automata, serde and
/// zerocopy.)
#[test]
fn building_the_mesh_benchmark_beside_vakt_leaves_vakts_features_unchanged() {
    let alone = features_of_vakts_build(&[]);
    let beside = features_of_vakts_build(&["vakt-mesh-bench"]);
    assert!(alone.keys().any(|p| p.starts_with("hyper v")), "{alone:?}");
    assert!(beside.keys().any(|p| p.starts_with("vakt-mesh-bench v")));
    for (package, features) in &alone {
        assert_eq!(
            beside.get(package),
            Some(features),
            "building vakt-mesh-bench beside vakt changes {package}'s features \
             (ask benches/mesh/Cargo.toml only for features vakt enables)"
        );
    }
}

/// The production build (`--no-default-features`, as the image and the mesh benchmark build it)
/// carries no development tool: neither rcgen nor tempfile is in its dependency graph.
#[test]
fn production_dependency_graph_has_no_development_crates() {
    let tree = cargo_tree(&[
        "--no-default-features",
        "-e",
        "normal",
        "-p",
        "vakt",
        "--format",
        "{p}",
    ]);
    let packages: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(packages.contains(&"rustls"), "{tree}");
    for dev_only in ["rcgen", "tempfile"] {
        assert!(
            !packages.contains(&dev_only),
            "{dev_only} is a dependency of the production build"
        );
    }
}

fn manifest_dir() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The sidecar built as the image builds it, without the `dev` feature (debug profile, its own target directory so the
/// default build's binary, which other tests run, is never replaced under them).
fn production_binary() -> std::path::PathBuf {
    let target = manifest_dir().join("target/production-build");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--offline",
            "--locked",
            "--no-default-features",
            "--bin",
            "vakt",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(manifest_dir())
        .status()
        .unwrap();
    assert!(status.success(), "the production build failed");
    target.join("debug/vakt")
}

/// The production binary has no `certs`, `demo` or `dev-idp` command.
#[test]
fn production_binary_has_no_development_commands() {
    let vakt = production_binary();
    let help = std::process::Command::new(&vakt)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for command in ["run", "check", "explain", "test", "audit"] {
        assert!(
            help.contains(&format!("  {command} ")),
            "{command} missing:\n{help}"
        );
    }
    for dev_command in ["certs", "demo", "dev-idp"] {
        assert!(
            !help.contains(&format!("  {dev_command} ")),
            "{dev_command} in:\n{help}"
        );
        let run = std::process::Command::new(&vakt)
            .arg(dev_command)
            .output()
            .unwrap();
        assert_eq!(
            run.status.code(),
            Some(2),
            "vakt {dev_command} must be unknown"
        );
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("unrecognized subcommand"), "{stderr}");
    }
}
