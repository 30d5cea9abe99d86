//! Helpers for the end-to-end tests: the crate's test support (`vakt::testing`), and the real
//! `vakt` binary.
#![allow(dead_code, unused_imports)]

pub use vakt::testing::client::*;
pub use vakt::testing::metrics::*;
pub use vakt::testing::sidecar::*;

/// Run the real `vakt` binary: (exit code, stdout, stderr).
pub fn run_vakt(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vakt"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
