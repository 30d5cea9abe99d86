//! Conventions every `vakt` command keeps, on the built binary: logs on stderr with colour only
//! for a person at a terminal.

use crate::common::*;

/// `vakt run` logs to stderr; into a file or pipe without ANSI escapes; on a terminal (a pty
/// made with `script`) in colour, unless `NO_COLOR` is set or `TERM=dumb`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_coloured_only_on_a_terminal_that_wants_colour() {
    let workload = ChildWorkload::new("web-colour").await;
    let (yaml, _, admin) = workload.child_config();
    let mut child = spawn_vakt("colour", &workload.dir, &yaml, admin);
    wait_ready(&child).await;
    stop(&mut child).await;
    let log = std::fs::read_to_string(&child.stderr).unwrap();
    assert!(log.contains("INFO") || log.contains("DEBUG"), "{log}");
    assert!(!log.contains('\u{1b}'), "escapes in a log file:\n{log}");
    let stdout = std::fs::read_to_string(&child.stdout).unwrap();
    assert!(
        !stdout.contains("INFO") && !stdout.contains("DEBUG"),
        "logs on stdout: {stdout}"
    );

    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped the terminal half: no `script` (util-linux)");
        return;
    }
    let config = workload.dir.join("colour.yaml");
    let on_a_terminal = |env: &[(&str, &str)]| {
        let command = format!(
            "timeout -s INT 2 {} run --config {}",
            env!("CARGO_BIN_EXE_vakt"),
            config.display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("RUST_LOG", "info")
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_a_terminal(&[]);
    assert!(coloured.contains("INFO"), "{coloured}");
    assert!(
        coloured.contains('\u{1b}'),
        "no colour on a terminal:\n{coloured}"
    );
    for env in [[("NO_COLOR", "1")], [("TERM", "dumb")]] {
        let plain = on_a_terminal(&env);
        assert!(plain.contains("INFO"), "{env:?}: {plain}");
        assert!(
            !plain.contains("\u{1b}["),
            "{env:?}: colour anyway:\n{plain}"
        );
    }
}

/// `--version` names the commit the binary was built from.
#[test]
fn version_names_the_commit() {
    let (code, stdout, _) = run_vakt(&["--version"]);
    assert_eq!(code, 0);
    let expected = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert!(
        stdout.starts_with(&format!("vakt {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    if let Some(commit) = expected {
        assert!(stdout.contains(&commit), "{stdout} is not {commit}");
    }
}

/// Shell completions and the man page come from the same definitions as the parser, so they
/// name every command; `VAKT_CONFIG` stands in for `--config` in `check` as in `run`.
#[test]
fn completions_man_page_and_vakt_config() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, stderr) = run_vakt(&["completions", shell]);
        assert_eq!(code, 0, "{stderr}");
        for command in ["explain", "audit", "verify", "net"] {
            assert!(stdout.contains(command), "{shell}: {command} missing");
        }
    }
    let (code, man, _) = run_vakt(&["man"]);
    assert_eq!(code, 0);
    assert!(
        man.starts_with(".ie \\n(.g .ds Aq") || man.contains(".TH vakt"),
        "{man}"
    );
    assert!(
        man.contains("explain") && man.contains("Zero\\-trust"),
        "{man}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vakt.yaml");
    std::fs::write(&config, "identity:\n  trust_domain: cluster.local\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vakt"))
        .arg("check")
        .env("VAKT_CONFIG", &config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&config.display().to_string()) && stderr.contains("missing field `cert`"),
        "{stderr}"
    );
}

/// `vakt demo --keep DIR` leaves the trail it showed, and the command it prints verifies it.
#[test]
fn the_demo_keeps_its_trail_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("trail");
    let (code, stdout, stderr) = run_vakt(&["demo", "--keep", keep.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let command = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("vakt audit verify --key "))
        .unwrap_or_else(|| panic!("no verify command in:\n{stdout}"));
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let (code, out, err) = run_vakt(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact"), "{out}");
}
