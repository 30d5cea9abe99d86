//! The production build (`--no-default-features`, as the image and the mesh benchmark build it)
//! carries no development tool: no `dev` module, no `certs`, `demo` or `dev-idp` command, and
//! neither rcgen nor tempfile in its dependency graph.

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn production_dependency_graph_has_no_development_crates() {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "--prefix", "none"])
        .args(["--no-default-features", "-e", "normal", "-p", "vakt"])
        .args(["--format", "{p}"])
        .current_dir(manifest_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).unwrap();
    let packages: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(packages.contains(&"rustls"), "{tree}");
    for dev_only in ["rcgen", "tempfile"] {
        assert!(
            !packages.contains(&dev_only),
            "{dev_only} is a dependency of the production build"
        );
    }
}

/// Builds the sidecar as the image does (debug profile, its own target directory so the
/// default build's binary, which other tests run, is never replaced under them).
fn production_binary() -> PathBuf {
    let target = manifest_dir().join("target/production-build");
    let status = Command::new(env!("CARGO"))
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

#[test]
fn production_binary_has_no_development_commands() {
    let vakt = production_binary();
    let help = Command::new(&vakt).arg("--help").output().unwrap();
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
        let run = Command::new(&vakt).arg(dev_command).output().unwrap();
        assert_eq!(
            run.status.code(),
            Some(2),
            "vakt {dev_command} must be unknown"
        );
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("unrecognized subcommand"), "{stderr}");
    }
}
