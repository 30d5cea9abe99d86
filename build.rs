//! Link-time layout of the `vakt` binary.
//!
//! Release builds of `vakt` on Linux link with `src/link/hot-text.ld`: the functions the mesh
//! benchmark saw the sidecars execute go together in front of the rest of the code. A sidecar
//! then keeps ~4 MB of its ~10 MB of code resident instead of nearly all of it, and its hot code
//! shares fewer cache lines and pages with cold code. Why and how the script is made:
//! `benches/mesh/hot_text.py`; regenerate it with `benches/mesh/run --hot-text`.
//!
//! The script only orders sections (`INSERT BEFORE .text`), so lld (Rust's default linker here)
//! and GNU ld both take it; `VAKT_HOT_TEXT=off` links without it (for an A/B, or a linker that
//! does not read linker scripts). Debug builds never use it: matching its patterns against the
//! many sections of an unoptimised build would only slow every test link down.

use std::env;
use std::path::Path;

const SCRIPT: &str = "src/link/hot-text.ld";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={SCRIPT}");
    println!("cargo::rerun-if-env-changed=VAKT_HOT_TEXT");

    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let switched_off = env::var("VAKT_HOT_TEXT").is_ok_and(|v| v == "off");
    if release && linux && !switched_off {
        let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let script = Path::new(&manifest_dir).join(SCRIPT);
        // `-Xlinker`, not `-Wl,`: a comma in the checkout's path would split the argument.
        for arg in ["-Xlinker", "-T", "-Xlinker", &script.display().to_string()] {
            println!("cargo::rustc-link-arg-bin=vakt={arg}");
        }
    }
}
