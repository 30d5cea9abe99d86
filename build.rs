//! The commit the binary is built from (`vakt --version`): `VAKT_COMMIT` when set (an image build
//! without the repository passes it), else `git rev-parse`, else "unknown".
//!
//! Optional code layout of the `vakt` binary. With `VAKT_CODE_LAYOUT=<linker script>`, as
//! `scripts/build-release` sets it to `benches/mesh/hot-text.ld`, the binary is linked with that
//! script, which puts the functions a sidecar executes in front of the rest of the code (why:
//! `benches/mesh/hot_text.py`). Without the variable the link is cargo's own.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    commit();
    println!("cargo::rerun-if-env-changed=VAKT_CODE_LAYOUT");
    let Some(script) = env::var_os("VAKT_CODE_LAYOUT").filter(|s| !s.is_empty()) else {
        return;
    };
    // A relative path is taken from the package's directory.
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = Path::new(&manifest_dir).join(script);
    assert!(
        script.is_file(),
        "VAKT_CODE_LAYOUT: no linker script at {}",
        script.display()
    );
    let script = script.display().to_string();
    println!("cargo::rerun-if-changed={script}");
    // `-Xlinker`, not `-Wl,`: a comma in the path would split the argument.
    for arg in ["-Xlinker", "-T", "-Xlinker", &script] {
        println!("cargo::rustc-link-arg-bin=vakt={arg}");
    }
}

fn commit() {
    println!("cargo::rerun-if-env-changed=VAKT_COMMIT");
    for watched in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(watched).exists() {
            println!("cargo::rerun-if-changed={watched}");
        }
    }
    let commit = env::var("VAKT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo::rustc-env=VAKT_COMMIT={commit}");
}
