//! The security team's alert rules, checked and unit-tested with the real Prometheus `promtool`
//! (scripts/test installs it; with VAKT_REQUIRE_PROMTOOL=1 a missing promtool fails the test).

use std::path::Path;
use std::process::Command;

fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var("VAKT_REQUIRE_PROMTOOL").is_err(),
        "promtool is required but not installed: run scripts/test (it installs Debian's prometheus package)"
    );
    eprintln!("skipped: promtool not installed (scripts/test installs it)");
    None
}

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus")
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    for args in [
        vec!["check", "rules", "vakt-alerts.yaml"],
        vec!["test", "rules", "vakt-alerts.test.yaml"],
    ] {
        let out = Command::new(promtool)
            .args(&args)
            .current_dir(dir())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
        assert!(text.contains("SUCCESS"), "{text}");
    }
}

#[test]
fn alert_rules_use_only_catalogued_metrics_and_every_alert_is_tested() {
    let rules = std::fs::read_to_string(dir().join("vakt-alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir().join("vakt-alerts.test.yaml")).unwrap();
    let catalogue =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/METRICS.md"))
            .unwrap();
    let mut metrics = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        // The label every series carries (admin.workload), which the alerts select on: not a metric.
        if word == "vakt_workload" {
            continue;
        }
        if word.starts_with("vakt_") {
            metrics += 1;
            assert!(
                catalogue.contains(&format!("`{word}`")),
                "{word} is not in docs/METRICS.md"
            );
        }
    }
    assert!(metrics >= 9);
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "alert {name} has no promtool test"
            );
        }
    }
}

/// The counters the "first failure" alerts watch exist at 0 on a sidecar that just started,
/// before anything failed, so Prometheus sees the first failure as an increase from 0 to 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_counters_are_scraped_at_zero_before_the_first_failure() {
    use crate::common::*;
    let workload = ChildWorkload::new("web-zero-series").await;
    let (yaml, _, admin) = workload.child_config();
    // The workload's name on every series: what the chart's alerts select on.
    let yaml = yaml.replace(
        &format!("admin:\n  listen: {admin}\n"),
        &format!("admin:\n  listen: {admin}\n  workload: shop/orders\n"),
    );
    let mut child = spawn_vakt("zero-series", &workload.dir, &yaml, admin);
    wait_ready(&child).await;
    let text = metrics_text(admin).await;
    let series: &[(&str, &[(&str, &str)])] = &[
        ("vakt_policy_reloads_total", &[("result", "failure")]),
        ("vakt_policy_reloads_total", &[("result", "success")]),
        ("vakt_certificate_reloads_total", &[("result", "failure")]),
        (
            "vakt_audit_events_dropped_total",
            &[("reason", "queue_full")],
        ),
        (
            "vakt_audit_events_dropped_total",
            &[("reason", "sink_failing")],
        ),
        ("vakt_audit_chain_breaks_total", &[("reason", "truncated")]),
        (
            "vakt_audit_chain_breaks_total",
            &[("reason", "file_deleted")],
        ),
        (
            "vakt_tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "unknown_ca")],
        ),
        (
            "vakt_tls_handshake_failures_total",
            &[("direction", "outbound"), ("reason", "unknown_ca")],
        ),
        (
            "vakt_tls_handshake_failures_total",
            &[
                ("direction", "inbound"),
                ("reason", "no_client_certificate"),
            ],
        ),
        (
            "vakt_tls_handshake_failures_total",
            &[
                ("direction", "inbound"),
                ("reason", "trust_domain_not_accepted"),
            ],
        ),
        (
            "vakt_tls_handshake_failures_total",
            &[
                ("direction", "outbound"),
                ("reason", "unexpected_server_identity"),
            ],
        ),
    ];
    // Every family says what it counts.
    for line in text.lines().filter(|l| l.starts_with("# TYPE vakt_")) {
        let family = line.split_whitespace().nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no # HELP"
        );
    }
    let unlabelled: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vakt_") && !l.contains("vakt_workload=\"shop/orders\""))
        .collect();
    assert!(
        unlabelled.is_empty(),
        "series without the workload label: {unlabelled:?}"
    );
    for (name, labels) in series {
        let present = text.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                && l.ends_with(" 0")
        });
        assert!(present, "{name}{labels:?} is not scraped at 0:\n{text}");
    }
    stop(&mut child).await;
}
