//! The Helm chart (`helm/vakt`) and the example chart that includes its sidecar template
//! (`helm/examples/orders`), rendered and checked offline.
//!
//! - Every render in [`RENDERS`] (the defaults, every example values file, the example chart, and
//!   two variants) has a test in [`render`]: `helm template` output equal byte for byte to its
//!   golden file in `tests/golden/helm/` ([`golden`]), every manifest valid for
//!   `kubernetes-validate --strict` against Kubernetes 1.31, and the security properties in
//!   [`properties`]: a table of the fields that state them (security contexts, probes, ports,
//!   the SPIFFE URI SAN, `HTTP_PROXY`, NetworkPolicy ports...), the config checksum, and the
//!   custom resources (cert-manager `Certificate`, approver-policy `CertificateRequestPolicy`,
//!   Prometheus Operator `ServiceMonitor` and `PrometheusRule`, whose alerts use only metrics in
//!   docs/METRICS.md): each valid against its CRD's schema (`tests/fixtures/crds/validate.py`,
//!   with kubernetes-validate's Python) and checked field by field.
//! - The identity: the CSI volume's key group is vakt's, the pod's account may only create
//!   CertificateRequests; a Certificate comes with a CertificateRequestPolicy for its SPIFFE ID
//!   only. `helm/platform/` (cert-manager, the mesh CA, trust-manager's Bundle,
//!   csi-driver-spiffe) validates against its CRDs and names what the chart's defaults expect.
//! - `helm lint --strict` with the defaults, every example and the example chart.
//! - The config checksum follows the sidecar config, not the policy; values the schema must
//!   reject; `vakt check` on the config and the policy the rendered ConfigMaps contain; the
//!   chart's values mirror vakt's config and policy keys; NOTES.txt.
//!
//! A render that changed fails with a diff; `VAKT_UPDATE_GOLDEN=1 cargo test --test e2e helm::`
//! rewrites the goldens, to be reviewed in `git diff` (the security properties still apply).
//!
//! Needs `helm` and `kubernetes-validate` on PATH or in `$VAKT_TOOLS/bin` (default
//! `~/.cache/vakt-tools/bin`; `scripts/install-k8s-tools.sh` installs both). Without them the
//! tests print "skipped: helm not installed" and pass, unless `VAKT_REQUIRE_K8S_TOOLS=1` (CI) or
//! `VAKT_UPDATE_GOLDEN=1`, which make them fail.

mod golden;
mod properties;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{Value, json};

const RELEASE: &str = "orders";
const NS: &str = "shop";
const KUBE_VERSION: &str = "1.31.0";
/// Every example values file the chart ships; a new one must be added here and to [`RENDERS`].
const EXAMPLES: &[&str] = &[
    "standalone",
    "sidecar-existing-chart",
    "cert-manager",
    "existing-secret",
    "monitoring",
    "oidc",
    "transparent",
    "audit-file",
];
/// The kinds kubernetes-validate has no schema for: validated against their CRDs' schemas
/// (`tests/fixtures/crds/`) and checked field by field in [`properties`].
const CRD_KINDS: &[(&str, &str)] = &[
    ("cert-manager.io/v1", "Certificate"),
    (
        "policy.cert-manager.io/v1alpha1",
        "CertificateRequestPolicy",
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];
/// Paths and ports the chart fixes (and the image's ENTRYPOINT uses).
const CONFIG_PATH: &str = "/etc/vakt/vakt.yaml";
const POLICY_DIR: &str = "/var/run/vakt/policy";
const IDENTITY_DIR: &str = "/var/run/vakt/identity";
const TRUST_DIR: &str = "/var/run/vakt/trust";
const FEDERATION_DIR: &str = "/var/run/vakt/federation";
const PSEUDONYM_DIR: &str = "/var/run/vakt/pseudonym";
const AUDIT_KEY_DIR: &str = "/var/run/vakt/audit-chain";
const AUDIT_DIR: &str = "/var/log/vakt";
const AUDIT_CHECKPOINT_DIR: &str = "/var/lib/vakt-checkpoints";
const ADMIN_PORT: i64 = 15021;

// ---- tools -------------------------------------------------------------------------------------

struct Tools {
    helm: PathBuf,
    validate: PathBuf,
    /// The Python of kubernetes-validate's virtualenv (it has jsonschema and PyYAML), for
    /// `tests/fixtures/crds/validate.py`.
    python: PathBuf,
}

fn tools_bin() -> PathBuf {
    match std::env::var_os("VAKT_TOOLS") {
        Some(dir) => PathBuf::from(dir).join("bin"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/vakt-tools/bin"),
    }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([tools_bin()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The tools, or `None` (after saying so) when they are missing and not required.
fn tools() -> Option<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    let found = TOOLS.get_or_init(|| {
        let missing: Vec<&str> = ["helm", "kubernetes-validate"]
            .into_iter()
            .filter(|t| find_tool(t).is_none())
            .collect();
        match (find_tool("helm"), find_tool("kubernetes-validate")) {
            (Some(helm), Some(validate)) => {
                let python = std::fs::canonicalize(&validate)
                    .ok()
                    .and_then(|v| Some(v.parent()?.join("python3")))
                    .filter(|p| p.exists())
                    .ok_or_else(|| "kubernetes-validate's virtualenv python".to_owned())?;
                Ok(Tools {
                    helm,
                    validate,
                    python,
                })
            }
            _ => Err(missing.join(" and ")),
        }
    });
    match found {
        Ok(tools) => Some(tools),
        Err(missing) => {
            let where_ = tools_bin();
            // Updating goldens without the tools would skip every render and look like success.
            if std::env::var("VAKT_REQUIRE_K8S_TOOLS").as_deref() == Ok("1") || golden::updating() {
                panic!(
                    "{missing} not found on PATH or in {} and VAKT_REQUIRE_K8S_TOOLS=1 or \
                     VAKT_UPDATE_GOLDEN=1: run scripts/install-k8s-tools.sh (then put {} on PATH)",
                    where_.display(),
                    where_.display()
                );
            }
            eprintln!(
                "skipped: helm not installed ({missing} not found on PATH or in {}); \
                 run scripts/install-k8s-tools.sh to run the chart tests",
                where_.display()
            );
            None
        }
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("helm/vakt")
}

fn example(name: &str) -> String {
    chart()
        .join(format!("examples/{name}.yaml"))
        .to_string_lossy()
        .into_owned()
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn vakt(args: &[&str]) -> Output {
    run(Path::new(env!("CARGO_BIN_EXE_vakt")), args)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"))
}

// ---- rendering ---------------------------------------------------------------------------------

/// One `helm template` result: the raw text (what kubernetes-validate reads) and the parsed
/// documents.
struct Rendered {
    /// The render's name in [`RENDERS`], or what another test calls it.
    label: String,
    /// The helm command line (paths relative to the repository).
    command: String,
    text: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.label))
    }

    fn only(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "{}: expected exactly one {kind}", self.label);
        all[0]
    }
}

fn template_chart(t: &Tools, chart: &Path, label: &str, args: &[&str]) -> Rendered {
    let chart = chart.to_string_lossy();
    let mut all = vec![
        "template",
        RELEASE,
        &chart,
        "--namespace",
        NS,
        "--kube-version",
        KUBE_VERSION,
    ];
    all.extend_from_slice(args);
    let out = run(&t.helm, &all);
    assert!(
        out.status.success(),
        "{label}: helm template failed:\n{}",
        text(&out.stderr)
    );
    let text = text(&out.stdout);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{label}: rendered YAML does not parse: {e}"));
    assert!(!docs.is_empty(), "{label}: nothing rendered");
    let command = format!("helm {}", all.join(" ")).replace(&format!("{}/", repo().display()), "");
    Rendered {
        label: label.to_owned(),
        command,
        text,
        docs,
    }
}

fn template(t: &Tools, label: &str, args: &[&str]) -> Rendered {
    template_chart(t, &chart(), label, args)
}

fn render_example(t: &Tools, name: &str) -> Rendered {
    template(t, name, &["-f", &example(name)])
}

/// Which chart a render is of.
enum Chart {
    /// helm/vakt
    Vakt,
    /// helm/examples/orders, with helm/vakt as its dependency
    Orders,
}

/// A render with a golden file and a test of its own in [`render`].
struct Render {
    name: &'static str,
    chart: Chart,
    /// An example values file of helm/vakt/examples, by name.
    values: Option<&'static str>,
    args: &'static [&'static str],
}

const fn vakt_chart(name: &'static str, values: Option<&'static str>) -> Render {
    Render {
        name,
        chart: Chart::Vakt,
        values,
        args: &[],
    }
}

/// The defaults, every example values file, the example chart, and two variants: a policy kept
/// in a ConfigMap of its own, and the example chart with vakt as an ordinary second container.
const RENDERS: &[Render] = &[
    vakt_chart("defaults", None),
    Render {
        name: "existing-policy",
        chart: Chart::Vakt,
        values: None,
        args: &[
            "--set",
            "policy.existingConfigMap=team-policy,policy.key=rules.yaml",
        ],
    },
    vakt_chart("standalone", Some("standalone")),
    vakt_chart("sidecar-existing-chart", Some("sidecar-existing-chart")),
    vakt_chart("cert-manager", Some("cert-manager")),
    vakt_chart("existing-secret", Some("existing-secret")),
    vakt_chart("monitoring", Some("monitoring")),
    vakt_chart("oidc", Some("oidc")),
    vakt_chart("transparent", Some("transparent")),
    vakt_chart("audit-file", Some("audit-file")),
    Render {
        name: "openshift",
        chart: Chart::Vakt,
        values: None,
        args: &[
            "--set",
            "sidecar.runAsUser=null,sidecar.runAsGroup=null,app.securityContext.runAsUser=null,app.securityContext.runAsGroup=null,workload.podSecurityContext.runAsUser=null,workload.podSecurityContext.runAsGroup=null,workload.podSecurityContext.fsGroup=null,identity.csi.fsGroup=1000680000",
        ],
    },
    Render {
        name: "egress-policy",
        chart: Chart::Vakt,
        values: None,
        args: &[
            "--set",
            "networkPolicy.egress.enabled=true,networkPolicy.egress.identityProviderCidrs={203.0.113.10/32},config.oidc.httpsProxy=http://proxy.infra:3128",
        ],
    },
    Render {
        name: "orders-chart",
        chart: Chart::Orders,
        values: None,
        args: &[],
    },
    Render {
        name: "orders-chart-classic",
        chart: Chart::Orders,
        values: None,
        args: &["--set", "vakt.sidecar.native=false"],
    },
];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        // What `helm dependency update` makes in a developer's tree is made afresh here.
        if name == "charts" || name == "Chart.lock" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A copy of helm/ in a temp dir with the example chart's dependency (helm/vakt) packaged into
/// it: the example chart's directory in that copy.
fn orders_chart(t: &Tools) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("helm"), &dir.path().join("helm"));
    let orders = dir.path().join("helm/examples/orders");
    let out = run(
        &t.helm,
        &[
            "dependency",
            "update",
            "--skip-refresh",
            &orders.to_string_lossy(),
        ],
    );
    assert!(
        out.status.success(),
        "helm dependency update:\n{}",
        text(&out.stderr)
    );
    (dir, orders)
}

fn render(t: &Tools, name: &str) -> Rendered {
    let spec = RENDERS
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no render {name} in RENDERS"));
    let mut args: Vec<String> = spec
        .values
        .iter()
        .flat_map(|e| ["-f".into(), example(e)])
        .collect();
    args.extend(spec.args.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match spec.chart {
        Chart::Vakt => template(t, name, &args),
        Chart::Orders => {
            let (_dir, orders) = orders_chart(t);
            let mut r = template_chart(t, &orders, name, &args);
            r.command = r.command.replace(
                &orders.to_string_lossy().into_owned(),
                "helm/examples/orders",
            );
            r
        }
    }
}

/// kubernetes-validate --strict on the raw rendering: every core kind must pass, and the only
/// kinds it may lack a schema for are the CRDs in `CRD_KINDS` (checked in `check_crds`).
fn validate(t: &Tools, r: &Rendered) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &r.text).unwrap();
    let (ok, report) = kubernetes_validate(t, &file);
    assert!(ok, "{}: kubernetes-validate failed:\n{report}", r.label);
    assert!(
        !report.contains("ERROR"),
        "{}: kubernetes-validate:\n{report}",
        r.label
    );
    let mut core = 0;
    for doc in &r.docs {
        let (api, kind) = (
            doc["apiVersion"].as_str().unwrap(),
            doc["kind"].as_str().unwrap(),
        );
        let name = doc["metadata"]["name"].as_str().unwrap();
        if CRD_KINDS.contains(&(api, kind)) {
            assert!(
                report.contains(&format!(
                    "Couldn't find schema for kind {kind} with api version {api}"
                )),
                "{}: expected kubernetes-validate to flag the CRD {kind}:\n{report}",
                r.label
            );
        } else {
            core += 1;
            let passed = format!(
                "passed for resource {}/{name} against version 1.31",
                kind.to_lowercase()
            );
            assert!(
                report.contains(&passed),
                "{}: {kind}/{name} was not validated:\n{report}",
                r.label
            );
        }
    }
    assert_eq!(
        report.matches("passed for resource").count(),
        core,
        "{}: {report}",
        r.label
    );
    assert_eq!(
        report.matches("Couldn't find schema").count(),
        r.docs.len() - core,
        "{}: a kind without a schema that is not one of the known CRDs:\n{report}",
        r.label
    );
    validate_custom_resources(t, r, &file);
}

/// `kubernetes-validate --strict` on `file` against [`KUBE_VERSION`]: success, and what it said.
fn kubernetes_validate(t: &Tools, file: &Path) -> (bool, String) {
    let out = run(
        &t.validate,
        &[
            "--strict",
            "--kubernetes-version",
            KUBE_VERSION,
            &file.to_string_lossy(),
        ],
    );
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (out.status.success(), report)
}

/// Every custom resource of `r` against its CRD's schema (`tests/fixtures/crds/validate.py`).
fn validate_custom_resources(t: &Tools, r: &Rendered, file: &Path) {
    let script = repo().join("tests/fixtures/crds/validate.py");
    let out = run(
        &t.python,
        &[&script.to_string_lossy(), &file.to_string_lossy()],
    );
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{}: custom resources against their CRD schemas:\n{report}",
        r.label
    );
    // Core kinds have no group, or one under k8s.io; the rest are custom resources.
    let custom: Vec<&Value> = r
        .docs
        .iter()
        .filter(|d| {
            let api = str_of(&d["apiVersion"], "apiVersion");
            api.split_once('/')
                .is_some_and(|(group, _)| group.contains('.') && !group.ends_with(".k8s.io"))
        })
        .collect();
    for doc in &custom {
        let line = format!(
            "passed {}/{} against ",
            str_of(&doc["kind"], "kind"),
            str_of(&doc["metadata"]["name"], "name")
        );
        assert!(report.contains(&line), "{}: {line}?\n{report}", r.label);
    }
    assert_eq!(report.matches("passed ").count(), custom.len(), "{report}");
}

// ---- what a render says about the workload ----------------------------------------------------

/// What a render of vakt's resources says about the workload, for further checks.
struct Mesh {
    label: String,
    /// The value of the `vakt.io/workload` label the Service and the NetworkPolicy select.
    fullname: String,
    config_text: String,
    config: Value,
    policy_text: Option<String>,
    trust_domain: String,
    service_account: String,
    spiffe_id: String,
}

impl Mesh {
    fn of(r: &Rendered) -> Mesh {
        let label = &r.label;
        let config_text = r
            .all("ConfigMap")
            .into_iter()
            .find_map(|c| c["data"]["vakt.yaml"].as_str())
            .unwrap_or_else(|| panic!("{label}: no ConfigMap with vakt.yaml"))
            .to_owned();
        let config = yaml(&config_text);
        let policy_text = r
            .all("ConfigMap")
            .into_iter()
            .find_map(|c| c["data"]["policy.yaml"].as_str())
            .map(str::to_owned);
        let trust_domain = str_of(&config["identity"]["trust_domain"], "trust_domain").to_owned();
        let service_account = str_of(
            &r.only("ServiceAccount")["metadata"]["name"],
            "ServiceAccount name",
        )
        .to_owned();
        let spiffe_id = format!("spiffe://{trust_domain}/ns/{NS}/sa/{service_account}");
        let selector = &r.only("NetworkPolicy")["spec"]["podSelector"]["matchLabels"];
        let fullname = str_of(&selector["vakt.io/workload"], "workload label").to_owned();
        Mesh {
            label: label.clone(),
            fullname,
            config_text,
            config,
            policy_text,
            trust_domain,
            service_account,
            spiffe_id,
        }
    }
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

// ---- one test per render ----------------------------------------------------------------------

/// `name` validates, keeps its security properties, and equals its golden file (last, so that a
/// regeneration still checks the rest).
fn check_render(name: &str) {
    let Some(t) = tools() else { return };
    let r = render(t, name);
    validate(t, &r);
    properties::check(&r);
    golden::compare(&r);
}

/// One test per render: `cargo test --test e2e helm::render::oidc`.
mod render {
    macro_rules! renders {
        ($($test:ident: $name:literal),* $(,)?) => {
            $(
                #[test]
                fn $test() {
                    super::check_render($name);
                }
            )*
            /// The renders with a test here.
            pub(super) const TESTED: &[&str] = &[$($name),*];
        };
    }

    renders! {
        defaults: "defaults",
        existing_policy: "existing-policy",
        standalone: "standalone",
        sidecar_existing_chart: "sidecar-existing-chart",
        cert_manager: "cert-manager",
        existing_secret: "existing-secret",
        monitoring: "monitoring",
        oidc: "oidc",
        transparent: "transparent",
        audit_file: "audit-file",
        egress_policy: "egress-policy",
        openshift: "openshift",
        orders_chart: "orders-chart",
        orders_chart_classic: "orders-chart-classic",
    }
}

// ---- the tests ---------------------------------------------------------------------------------

#[test]
fn chart_metadata_matches_the_crate_and_the_image() {
    let chart_yaml = yaml(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap());
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["name"], "vakt");
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
    let values = yaml(&std::fs::read_to_string(chart().join("values.yaml")).unwrap());
    assert_eq!(
        values["sidecar"]["image"]["tag"],
        env!("CARGO_PKG_VERSION"),
        "the default vakt image is the chart's appVersion"
    );

    // The image runs what the chart mounts, as a non-root user, with the ports vakt uses.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for line in [
        &format!("ENTRYPOINT [\"/vakt\", \"run\", \"--config\", \"{CONFIG_PATH}\"]"),
        "EXPOSE 15443 15001 15021",
        "USER 65532:65532",
        "FROM gcr.io/distroless/cc-debian12:nonroot",
    ] {
        assert!(
            dockerfile.lines().any(|l| l == line),
            "Dockerfile: missing `{line}`"
        );
    }
    // The shipped build: scripts/build-release (no default features, the code layout).
    assert!(
        dockerfile
            .lines()
            .any(|l| l == "COPY scripts/build-release ./scripts/build-release"),
        "Dockerfile: scripts/build-release is not copied into the build"
    );
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == "scripts/build-release \\"),
        "Dockerfile: the binary is not built by scripts/build-release"
    );
    // Cargo.toml's [patch.crates-io] takes h2 from vendor/: without it the image does not build.
    assert!(
        dockerfile.lines().any(|l| l == "COPY vendor ./vendor"),
        "Dockerfile: vendor/ (the patched h2) is not copied into the build"
    );
    // build.rs passes the code layout (benches/mesh/hot-text.ld) to the link.
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("COPY ") && l.contains(" build.rs ")),
        "Dockerfile: build.rs (the code layout) is not copied into the build"
    );
    let dockerignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(dockerignore.lines().any(|l| l == "target/"));
}

#[test]
fn values_schema_is_strict_and_every_value_is_documented() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .expect("values.schema.json is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    // additionalProperties: false wherever the schema defines an object's properties.
    fn walk(node: &Value, at: &str, objects: &mut usize) {
        match node {
            Value::Object(map) => {
                if map.get("type") == Some(&json!("object")) && map.contains_key("properties") {
                    *objects += 1;
                    assert_eq!(
                        map.get("additionalProperties"),
                        Some(&json!(false)),
                        "values.schema.json {at}: additionalProperties must be false"
                    );
                }
                for (k, v) in map {
                    walk(v, &format!("{at}/{k}"), objects);
                }
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| walk(v, &format!("{at}/{i}"), objects)),
            _ => {}
        }
    }
    let mut objects = 0;
    walk(&schema, "#", &mut objects);
    assert!(objects > 30, "only {objects} strict objects?");

    // The policy part of the schema knows every key of vakt's own policy schema (the keys the
    // policy format gained since are checked by rendering config/policy.example.yaml as
    // policy.document in `rendered_config_and_policy_pass_vakt_check`).
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docs/policy.schema.json")).unwrap(),
    )
    .unwrap();
    let keys = |v: &Value| -> BTreeSet<String> {
        v["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let defs = &schema["definitions"];
    for (ours, theirs) in [
        (
            &schema["properties"]["policy"]["properties"]["document"],
            &policy,
        ),
        (&defs["policyRoute"], &policy["$defs"]["route"]),
        (&defs["policyRule"], &policy["$defs"]["rule"]),
        (&defs["policyRateLimit"], &policy["$defs"]["rate_limit"]),
    ] {
        let missing: Vec<String> = keys(theirs).difference(&keys(ours)).cloned().collect();
        assert!(
            missing.is_empty(),
            "values.schema.json lacks policy keys of docs/policy.schema.json: {missing:?}"
        );
    }

    // Every value is in the README's values table.
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let values = yaml(&std::fs::read_to_string(chart().join("values.yaml")).unwrap());
    const OPAQUE: &[&str] = &[
        "workload.strategy",
        "workload.podSecurityContext",
        "app.securityContext",
        "app.resources",
        "sidecar.resources",
        "capture.resources",
        "sidecar.probes.liveness",
        "sidecar.probes.readiness",
        "sidecar.probes.startup",
        "policy.document",
        "metrics.dashboard.labels",
        "identity.certificate.issuerRef",
        "identity.certificate.approverPolicy.requester",
    ];
    fn leaves(v: &Value, at: &str, out: &mut Vec<String>) {
        match v.as_object() {
            Some(map) if !map.is_empty() && !OPAQUE.contains(&at) => {
                for (k, v) in map {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    leaves(v, &path, out);
                }
            }
            _ => out.push(at.to_owned()),
        }
    }
    let mut keys = Vec::new();
    leaves(&values, "", &mut keys);
    assert!(keys.len() > 80);
    for key in keys {
        assert!(
            readme.contains(&format!("| `{key}` |")),
            "helm/vakt/README.md: no row for `{key}`"
        );
    }

    properties::check_dashboard_json(
        &std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap(),
    );
}

#[test]
fn lint_strict_with_defaults_every_example_and_the_example_chart() {
    let Some(t) = tools() else { return };
    let chart = chart();
    let chart = chart.to_string_lossy();
    let found: BTreeSet<String> = std::fs::read_dir(self::chart().join("examples"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        found,
        EXAMPLES.iter().map(|s| s.to_string()).collect(),
        "examples/"
    );
    let mut runs: Vec<Vec<String>> = vec![vec![]];
    runs.extend(EXAMPLES.iter().map(|e| vec!["-f".to_owned(), example(e)]));
    for extra in runs {
        let mut args = vec!["lint", "--strict", &chart, "--namespace", NS];
        args.extend(extra.iter().map(String::as_str));
        let out = run(&t.helm, &args);
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "helm {args:?}:\n{report}");
        assert!(
            report.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{report}"
        );
        assert!(
            !report.contains("[WARNING]") && !report.contains("[ERROR]"),
            "{report}"
        );
    }

    // The example chart (way in (b): it includes "vakt.sidecar" in its own Deployment), whose
    // vakt values are exactly examples/sidecar-existing-chart.yaml.
    let (_dir, orders) = orders_chart(t);
    let out = run(
        &t.helm,
        &[
            "lint",
            "--strict",
            &orders.to_string_lossy(),
            "--namespace",
            NS,
        ],
    );
    assert!(
        out.status.success(),
        "helm lint orders:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let values = yaml(&std::fs::read_to_string(orders.join("values.yaml")).unwrap());
    let example_values = yaml(&std::fs::read_to_string(example("sidecar-existing-chart")).unwrap());
    assert_eq!(values["vakt"], example_values);
}

/// vakt's snake_case config keys as the chart's camelCase values keys (recursively).
fn camel_case_keys(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let mut key = String::new();
                    let mut upper = false;
                    for c in k.chars() {
                        if c == '_' {
                            upper = true;
                        } else if upper {
                            key.push(c.to_ascii_uppercase());
                            upper = false;
                        } else {
                            key.push(c);
                        }
                    }
                    (key, camel_case_keys(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(camel_case_keys).collect()),
        other => other.clone(),
    }
}

fn checksum(r: &Rendered) -> String {
    r.only("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn data<'a>(r: &'a Rendered, name: &str, key: &str) -> &'a str {
    r.one("ConfigMap", name)["data"][key].as_str().unwrap()
}

#[test]
fn config_checksum_follows_the_sidecar_config_but_not_the_policy() {
    let Some(t) = tools() else { return };
    let base = template(t, "defaults", &[]);
    let sum = checksum(&base);
    assert_eq!(sum.len(), 64);

    // Sidecar config changes roll the pods.
    for (what, set) in [
        ("log level", "config.logLevel=debug"),
        ("trust bundle key", "trustBundle.key=bundle.pem"),
        ("app port", "app.port=9090"),
        (
            "upstream",
            "config.outbound.upstreams[0].authority=a.b:80,config.outbound.upstreams[0].address=a.b:15443,config.outbound.upstreams[0].spiffeId=spiffe://cluster.local/ns/b/sa/a",
        ),
    ] {
        let changed = template(t, what, &["--set", set]);
        assert_ne!(
            data(&changed, "orders-vakt-config", "vakt.yaml"),
            data(&base, "orders-vakt-config", "vakt.yaml"),
            "{what}"
        );
        assert_ne!(
            checksum(&changed),
            sum,
            "{what} must change checksum/config"
        );
    }
    // Turning tokens off (or on) is a sidecar-config change too.
    let oidc = render(t, "oidc");
    let plain = template(
        t,
        "no oidc",
        &[
            "-f",
            &example("oidc"),
            "--set-json",
            "config.oidc.issuers=[]",
        ],
    );
    assert!(Mesh::of(&plain).config.get("oidc").is_none());
    assert_ne!(checksum(&plain), checksum(&oidc), "oidc issuers");

    // Policy changes hot-reload: the policy ConfigMap changes, the pod template does not.
    let dir = tempfile::tempdir().unwrap();
    let new_policy = dir.path().join("policy.yaml");
    std::fs::write(
        &new_policy,
        "policy:\n  document:\n    version: 1\n    default_mode: dry-run\n    routes:\n      - id: all\n        methods: [GET, POST]\n        path: /**\n        allow:\n          - peers: [spiffe://cluster.local/ns/frontend/sa/web]\n",
    )
    .unwrap();
    let policy_file = new_policy.to_string_lossy();
    let policy_text = dir.path().join("policy-text.yaml");
    std::fs::write(
        &policy_text,
        "version: 1\nroutes:\n  - {id: h, methods: [GET], path: /h, public: true}\n",
    )
    .unwrap();
    let set_text = format!("policy.text={}", policy_text.display());
    for (what, args) in [
        ("policy.document", vec!["-f", &policy_file]),
        ("policy.text", vec!["--set-file", &set_text]),
    ] {
        let changed = template(t, what, &args);
        assert_ne!(
            data(&changed, "orders-vakt-policy", "policy.yaml"),
            data(&base, "orders-vakt-policy", "policy.yaml"),
            "{what}: the policy did change"
        );
        assert_eq!(
            data(&changed, "orders-vakt-config", "vakt.yaml"),
            data(&base, "orders-vakt-config", "vakt.yaml"),
            "{what}"
        );
        assert_eq!(
            checksum(&changed),
            sum,
            "{what}: a policy change must not restart pods"
        );
        assert_eq!(
            changed.only("Deployment")["spec"]["template"],
            base.only("Deployment")["spec"]["template"],
            "{what}: the pod template is unchanged"
        );
    }
}

#[test]
fn schema_rejects_unknown_keys_and_wrong_types() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "networkPolicy:\n  mtlsfrom:\n    - namespaceSelector: {}\n",
    )
    .unwrap();
    let typo = typo.to_string_lossy().into_owned();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--set", "bogus=1"],
            &["Additional property bogus is not allowed"],
        ),
        (&["-f", &typo], &["networkPolicy", "mtlsfrom"]),
        (
            &["--set", "sidecar.image.colour=red"],
            &["sidecar.image", "colour"],
        ),
        (
            &["--set", "config.limits.idleTimeot=5m"],
            &["config.limits", "idleTimeot"],
        ),
        (&["--set", "app.port=http"], &["app.port", "integer"]),
        (
            &["--set-string", "sidecar.native=yes"],
            &["sidecar.native", "boolean"],
        ),
        (
            &["--set", "config.limits.idleTimeout=5"],
            &["config.limits.idleTimeout", "string"],
        ),
        (
            &["--set", "config.limits.maxHeaderBytes=100"],
            &["config.limits.maxHeaderBytes"],
        ),
        (&["--set", "identity.source=vault"], &["identity.source"]),
        (
            &["--set", "identity.source=existingSecret"],
            &["identity.existingSecret.name"],
        ),
        (
            &["--set", "certificate.source=certManager"],
            &["Additional property certificate is not allowed"],
        ),
        (
            &["--set", "identity.csi.fsGroup=0"],
            &["identity.csi.fsGroup"],
        ),
        (
            &[
                "--set",
                "config.oidc.httpsProxy=http://user:pw@proxy.infra:3128",
            ],
            &["config.oidc.httpsProxy"],
        ),
        (&["--set", "trustDomain=Not A Domain"], &["trustDomain"]),
        (
            &["--set", "config.tlsMinVersion=1.1"],
            &["config.tlsMinVersion"],
        ),
        (
            &["--set", "policy.document.routes[0].colour=red"],
            &["policy.document.routes.0", "colour"],
        ),
        (
            &[
                "--set",
                "config.outbound.upstreams[0].authority=a:80,config.outbound.upstreams[0].address=a:15443,config.outbound.upstreams[0].spiffeId=https://a",
            ],
            &["config.outbound.upstreams.0.spiffeId"],
        ),
        (
            &[
                "--set",
                "config.inbound.enabled=false,config.outbound.enabled=false",
            ],
            &["config"],
        ),
    ];
    for (args, expected) in cases {
        let chart = chart();
        let chart = chart.to_string_lossy();
        let mut all = vec!["template", RELEASE, &chart, "--namespace", NS];
        all.extend_from_slice(args);
        let out = run(&t.helm, &all);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} was accepted:\n{}",
            text(&out.stdout)
        );
        assert!(
            stderr.contains("values don't meet the specifications of the schema"),
            "{args:?}: not rejected by the schema:\n{stderr}"
        );
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "{args:?}: expected {needle:?} in:\n{stderr}"
            );
        }
    }
}

/// `vakt check` on exactly what the ConfigMaps carry: the config with its mount directories
/// pointed at a temp dir holding the rendered policy and a certificate issued for the SPIFFE ID
/// the rendering asks for.
fn vakt_check_rendering(mesh: &Mesh) {
    let label = &mesh.label;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_string_lossy().into_owned();
    let mut config = mesh.config_text.clone();
    for (mounted, local) in [
        (POLICY_DIR, "policy"),
        (IDENTITY_DIR, "identity"),
        (TRUST_DIR, "trust"),
        (FEDERATION_DIR, "federation"),
        (PSEUDONYM_DIR, "pseudonym"),
        (AUDIT_KEY_DIR, "audit-chain"),
        (AUDIT_DIR, "audit"),
        (AUDIT_CHECKPOINT_DIR, "audit-checkpoints"),
    ] {
        std::fs::create_dir_all(dir.path().join(local)).unwrap();
        config = config.replace(&format!("{mounted}/"), &format!("{root}/{local}/"));
    }
    assert!(!config.contains("/var/run/vakt"), "{label}: {config}");
    let config_file = dir.path().join("vakt.yaml");
    std::fs::write(&config_file, &config).unwrap();
    let local = |key: &Value| {
        let mounted = str_of(key, "path");
        let (d, file) = mounted.rsplit_once('/').unwrap();
        let sub = Path::new(d).file_name().unwrap().to_owned();
        dir.path().join(sub).join(file)
    };
    if let Some(policy) = &mesh.policy_text {
        std::fs::write(local(&mesh.config["inbound"]["policy"]), policy).unwrap();
    }
    if let Some(p) = mesh.config.get("pseudonymisation") {
        std::fs::write(local(&p["key_file"]), [0x5a; 48]).unwrap();
    }
    if let Some(key) = mesh.config["audit"].get("chain_key") {
        std::fs::write(local(&key["key_file"]), "5a".repeat(32)).unwrap();
    }

    // A certificate for the SPIFFE ID from the rendering, from a CA of the trust domain.
    let ca = dir.path().join("ca");
    let svid = dir.path().join("svid");
    let (ca_arg, svid_arg) = (ca.to_string_lossy(), svid.to_string_lossy());
    for args in [
        vec![
            "certs",
            "init",
            "--dir",
            &ca_arg,
            "--trust-domain",
            &mesh.trust_domain,
        ],
        vec![
            "certs",
            "issue",
            "--ca",
            &ca_arg,
            "--spiffe-id",
            &mesh.spiffe_id,
            "--out",
            &svid_arg,
        ],
    ] {
        let out = vakt(&args);
        assert!(
            out.status.success(),
            "{label}: vakt {args:?}: {}",
            text(&out.stderr)
        );
    }
    let identity = &mesh.config["identity"];
    std::fs::copy(svid.join("cert.pem"), local(&identity["cert"])).unwrap();
    std::fs::copy(svid.join("key.pem"), local(&identity["key"])).unwrap();
    std::fs::copy(ca.join("ca.pem"), local(&identity["trust_bundle"])).unwrap();
    // Each federated trust domain's bundle (one directory per trust domain): any CA certificate
    // loads, so the same one stands in for the partners'.
    for federated in identity["federation"].as_array().into_iter().flatten() {
        let mounted = str_of(&federated["bundle"], "path");
        let bundle = Path::new(&mounted.replacen(FEDERATION_DIR, &format!("{root}/federation"), 1))
            .to_owned();
        std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
        std::fs::copy(ca.join("ca.pem"), &bundle).unwrap();
    }

    let config_arg = config_file.to_string_lossy();
    let out = vakt(&["check", "--config", &config_arg, "--with-certs"]);
    assert!(
        out.status.success(),
        "{label}: vakt check --config on the rendered config failed:\n{}{}\n{config}",
        text(&out.stdout),
        text(&out.stderr)
    );
    if mesh.policy_text.is_some() {
        let policy = local(&mesh.config["inbound"]["policy"]);
        let policy_arg = policy.to_string_lossy();
        // The policy on its own, with the trust domains and issuers of the rendered config.
        let mut args = vec![
            "check",
            "--policy",
            &policy_arg,
            "--trust-domain",
            &mesh.trust_domain,
        ];
        let list = |v: &Value, key: &str| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| {
                            if key.is_empty() {
                                x.as_str()
                            } else {
                                x[key].as_str()
                            }
                        })
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let accepted = list(&identity["federation"], "trust_domain");
        let issuers = list(&mesh.config["oidc"]["issuers"], "issuer");
        for td in &accepted {
            args.extend(["--trust-domain", td]);
        }
        for issuer in &issuers {
            args.extend(["--issuer", issuer]);
        }
        let out = vakt(&args);
        assert!(
            out.status.success(),
            "{label}: vakt check --policy on the rendered policy failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn rendered_config_and_policy_pass_vakt_check() {
    let Some(t) = tools() else { return };
    let mut renderings = vec![template(t, "defaults", &[])];
    renderings.extend(EXAMPLES.iter().map(|e| render_example(t, e)));

    // vakt's own documented examples (config/) carried by the chart: its OIDC section as
    // `config.oidc` values, its policy as `policy.document` (so the schema must accept every
    // key of the policy format) and as `policy.text`.
    let vakt_example =
        yaml(&std::fs::read_to_string(repo().join("config/vakt.example.yaml")).unwrap());
    let mut oidc = vakt_example["oidc"].clone();
    for issuer in oidc["issuers"].as_array_mut().unwrap() {
        // Development-only key (http issuers on loopback): not offered by the chart.
        let insecure = issuer
            .as_object_mut()
            .unwrap()
            .remove("allow_insecure_loopback");
        assert_ne!(insecure, Some(json!(true)));
    }
    let policy_example =
        std::fs::read_to_string(repo().join("config/policy.example.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let as_document = dir.path().join("document.json");
    let as_text = dir.path().join("text.json");
    let oidc_values = camel_case_keys(&oidc);
    std::fs::write(
        &as_document,
        json!({"config": {"oidc": oidc_values}, "policy": {"document": yaml(&policy_example)}})
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        &as_text,
        json!({"config": {"oidc": oidc_values}}).to_string(),
    )
    .unwrap();
    let set_text = format!(
        "policy.text={}",
        repo().join("config/policy.example.yaml").display()
    );
    for (label, args) in [
        (
            "vakt's examples as policy.document",
            vec!["-f", as_document.to_str().unwrap()],
        ),
        (
            "vakt's examples as policy.text",
            vec!["-f", as_text.to_str().unwrap(), "--set-file", &set_text],
        ),
    ] {
        let r = template(t, label, &args);
        properties::check(&r);
        let mesh = Mesh::of(&r);
        assert_eq!(
            mesh.config["oidc"], oidc,
            "{label}: the chart renders vakt's oidc keys"
        );
        assert_eq!(
            yaml(mesh.policy_text.as_deref().unwrap()),
            yaml(&policy_example),
            "{label}"
        );
        renderings.push(r);
    }

    for r in &renderings {
        vakt_check_rendering(&Mesh::of(r));
    }

    // The check has teeth: a rendered policy naming a peer outside the trust domain fails.
    let foreign = dir.path().join("foreign.yaml");
    std::fs::write(
        &foreign,
        "policy:\n  document:\n    routes:\n      - id: r\n        methods: [GET]\n        path: /r\n        allow:\n          - peers: [spiffe://elsewhere.org/ns/a/sa/b]\n",
    )
    .unwrap();
    let bad = template(t, "foreign peer", &["-f", foreign.to_str().unwrap()]);
    let mesh = Mesh::of(&bad);
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, mesh.policy_text.as_deref().unwrap()).unwrap();
    let out = vakt(&[
        "check",
        "--policy",
        policy.to_str().unwrap(),
        "--trust-domain",
        "cluster.local",
    ]);
    assert!(
        !out.status.success(),
        "a peer from another trust domain was accepted"
    );
    assert!(
        text(&out.stderr).contains("elsewhere.org"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn notes_tell_the_installer_what_to_check_next() {
    let Some(t) = tools() else { return };
    // helm template does not print NOTES.txt: render it through a ConfigMap in a copy.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("vakt");
    copy_dir(&chart(), &copy);
    let notes = std::fs::read_to_string(chart().join("templates/NOTES.txt")).unwrap();
    std::fs::write(
        copy.join("templates/zz-notes-test.yaml"),
        format!(
            "{{{{- define \"test.notes\" -}}}}{notes}{{{{- end }}}}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{{{ include \"test.notes\" . | toJson }}}}\n"
        ),
    )
    .unwrap();
    let render_notes = |args: &[&str]| -> String {
        let r = template_chart(t, &copy, "NOTES", args);
        r.one("ConfigMap", "notes")["data"]["notes"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let notes = render_notes(&[]);
    for needle in [
        "spiffe://cluster.local/ns/shop/sa/orders-vakt",
        "csi-driver-spiffe (spiffe.csi.cert-manager.io)",
        "trust domain \"cluster.local\"",
        "kubectl -n shop get certificaterequests",
        "kubectl -n shop get configmap mesh-trust-bundle",
        "rollout status deployment/orders-vakt",
        "127.0.0.1:8080 only",
        "vakt check --policy policy.yaml --trust-domain cluster.local",
        "vakt.io/mesh=enabled",
        "curl -s localhost:15021/ready",
        "every outbound call gets 403",
    ] {
        assert!(
            notes.contains(needle),
            "NOTES.txt lacks {needle:?}:\n{notes}"
        );
    }
    let notes = render_notes(&["--set", "identity.source=certificate"]);
    for needle in [
        "kubectl -n shop get certificate orders-vakt",
        "CertificateRequestPolicy \"vakt-shop-orders-vakt\"",
        "whoever may create Certificates or CertificateRequests in shop",
        "every replica shares it",
    ] {
        assert!(notes.contains(needle), "{needle:?}:\n{notes}");
    }
    let notes = render_notes(&[
        "--set",
        "identity.source=certificate,identity.certificate.approverPolicy.create=false",
    ]);
    assert!(
        notes.contains("anyone who may create a Certificate in any namespace"),
        "{notes}"
    );
    let notes = render_notes(&["-f", &example("existing-secret")]);
    assert!(
        notes.contains("existing Secret \"payments-svid\""),
        "{notes}"
    );
    assert!(!notes.contains("get certificate"), "{notes}");
    let notes = render_notes(&["-f", &example("standalone")]);
    assert!(
        notes.contains("payments.billing.svc.cluster.local:8080 -> payments.billing.svc.cluster.local:15443 as spiffe://cluster.local/ns/billing/sa/payments"),
        "{notes}"
    );
    let notes = render_notes(&["-f", &example("transparent")]);
    for needle in [
        "Every TCP connection of the app goes through vakt",
        "redirected to vakt's mTLS port",
        "helseid-sts.nhn.no:443 -> relayed as it is",
        "billing.billing.svc.cluster.local:8080 -> billing.billing.svc.cluster.local:15443",
    ] {
        assert!(notes.contains(needle), "{needle:?}: {notes}");
    }
    assert!(!notes.contains("HTTP_PROXY=http"), "{notes}");
    let notes = render_notes(&["-f", &example("oidc")]);
    assert!(
        notes.contains("--trust-domain cluster.local --issuer https://helseid-sts.nhn.no"),
        "{notes}"
    );
    assert!(
        notes.contains("egress to https://helseid-sts.nhn.no"),
        "{notes}"
    );
    let notes = render_notes(&["-f", &example("monitoring")]);
    assert!(notes.contains("ServiceMonitor orders-vakt"), "{notes}");
}

/// Transparent capture exempts vakt's UID: the chart refuses to render a pod where the app, or a
/// container without a UID of its own, could run as that UID.
#[test]
fn transparent_capture_refuses_a_pod_that_could_run_as_vakts_uid() {
    let Some(t) = tools() else { return };
    let cases: &[(&str, &str)] = &[
        ("app.securityContext.runAsUser=65532", "is vakt's UID"),
        ("sidecar.runAsUser=null", "set sidecar.runAsUser"),
        (
            "app.securityContext.runAsUser=null",
            "set app.securityContext.runAsUser",
        ),
        ("app.securityContext.runAsUser=0", "must run as non-root"),
        (
            "app.securityContext.runAsNonRoot=false",
            "must run as non-root",
        ),
        (
            "app.securityContext.allowPrivilegeEscalation=true",
            "must run as non-root",
        ),
        (
            "app.securityContext.capabilities.add={SETUID}",
            "must run as non-root",
        ),
        (
            "workload.podSecurityContext.runAsUser=65532",
            "workload.podSecurityContext.runAsUser",
        ),
        (
            "workload.podSecurityContext.runAsUser=null",
            "workload.podSecurityContext.runAsUser",
        ),
    ];
    assert_refused(t, &example("transparent"), cases);
    // Proxy mode asks none of this.
    let out = template_with(t, &["--set", "app.securityContext.runAsUser=65532"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A file audit trail needs its chain key from a Secret (vakt refuses to start without one), and
/// a PVC volume needs its claim: the chart says so instead of rendering a pod that cannot start.
#[test]
fn a_file_audit_trail_without_its_key_or_claim_is_refused() {
    let Some(t) = tools() else { return };
    let values = example("audit-file");
    assert_refused(
        t,
        &values,
        &[
            (
                "audit.chainKey.existingSecret=",
                "audit.sink file needs audit.chainKey.existingSecret",
            ),
            (
                "audit.file.volume=persistentVolumeClaim",
                "needs audit.file.claimName",
            ),
        ],
    );
    let out = template_with(
        t,
        &[
            "-f",
            &values,
            "--set",
            "audit.file.volume=persistentVolumeClaim,audit.file.claimName=journal-audit",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("claimName: journal-audit"));
}

/// `helm template` of the chart (release and namespace of the renders) with `args`.
fn template_with(t: &Tools, args: &[&str]) -> Output {
    let chart = chart();
    let chart = chart.to_string_lossy();
    let mut all = vec!["template", RELEASE, &chart, "--namespace", NS];
    all.extend_from_slice(args);
    run(&t.helm, &all)
}

/// `helm template` of the chart with `values` and each `--set` of `cases` fails, saying the
/// case's text.
fn assert_refused(t: &Tools, values: &str, cases: &[(&str, &str)]) {
    for (set, needle) in cases {
        let out = template_with(t, &["-f", values, "--set", set]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(
            stderr.contains(needle),
            "{set}: expected {needle:?} in:\n{stderr}"
        );
    }
}

/// csi-driver-spiffe writes the key readable by one group: with no group known (OpenShift
/// leaves them all to the platform) the chart asks for one instead of rendering a pod whose vakt
/// cannot read its key. The other sources do not need one.
#[test]
fn csi_identity_without_a_group_for_the_key_is_refused() {
    let Some(t) = tools() else { return };
    let no_groups = "sidecar.runAsGroup=null,workload.podSecurityContext.fsGroup=null";
    let out = template_with(t, &["--set", no_groups]);
    assert!(
        !out.status.success(),
        "rendered without a group for the key"
    );
    assert!(
        text(&out.stderr).contains("set identity.csi.fsGroup"),
        "{}",
        text(&out.stderr)
    );
    let out = template_with(
        t,
        &["--set", &format!("{no_groups},identity.source=certificate")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The cluster-wide pieces the chart README's walkthrough applies (`helm/platform/`): valid
/// against Kubernetes and their CRDs, and naming what the chart's defaults expect (the issuer,
/// the trust domain, the driver, the trust bundle's ConfigMap and key, the mesh label).
#[test]
fn platform_manifests_validate_and_fit_the_chart_defaults() {
    let Some(t) = tools() else { return };
    let platform = repo().join("helm/platform");
    let defaults = yaml(&std::fs::read_to_string(chart().join("values.yaml")).unwrap());
    let mut docs = Vec::new();
    for name in ["mesh-ca.yaml", "trust-bundle.yaml"] {
        let file = platform.join(name);
        let manifest = std::fs::read_to_string(&file).unwrap();
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&manifest).unwrap();
        let (ok, report) = kubernetes_validate(t, &file);
        assert!(ok && !report.contains("ERROR"), "{name}:\n{report}");
        let r = Rendered {
            label: name.to_owned(),
            command: String::new(),
            text: manifest,
            docs: parsed,
        };
        validate_custom_resources(t, &r, &file);
        docs.extend(r.docs);
    }
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("helm/platform: no {kind} {name}"))
    };
    let issuer = &defaults["identity"]["certificate"]["issuerRef"];
    assert_eq!(issuer["kind"], "ClusterIssuer");
    let ca_issuer = find("ClusterIssuer", str_of(&issuer["name"], "issuer"));
    let root = find("Certificate", "mesh-ca-root");
    assert_eq!(
        ca_issuer["spec"]["ca"]["secretName"],
        root["spec"]["secretName"]
    );
    assert_eq!(root["spec"]["isCA"], true);

    let bundle = find(
        "Bundle",
        str_of(&defaults["trustBundle"]["name"], "trustBundle.name"),
    );
    assert_eq!(defaults["trustBundle"]["source"], "configMap");
    assert_eq!(
        bundle["spec"]["target"]["configMap"]["key"],
        defaults["trustBundle"]["key"]
    );
    assert_eq!(
        bundle["spec"]["sources"][0]["secret"]["name"],
        root["spec"]["secretName"]
    );
    assert_eq!(
        root["metadata"]["namespace"], "cert-manager",
        "trust-manager's trust namespace"
    );
    assert_eq!(
        bundle["spec"]["target"]["namespaceSelector"]["matchLabels"],
        json!({"vakt.io/mesh": "enabled"}),
        "the label the chart's NOTES and NetworkPolicy use for mesh namespaces"
    );

    let csi =
        yaml(&std::fs::read_to_string(platform.join("csi-driver-spiffe.values.yaml")).unwrap());
    let app = &csi["app"];
    assert_eq!(app["trustDomain"], defaults["trustDomain"]);
    assert_eq!(app["name"], defaults["identity"]["csi"]["driver"]);
    assert_eq!(app["issuer"], *issuer);
    assert_eq!(
        app["approver"]["signerName"],
        format!(
            "clusterissuers.cert-manager.io/{}",
            str_of(&issuer["name"], "issuer")
        )
    );
    let cert_manager =
        yaml(&std::fs::read_to_string(platform.join("cert-manager.values.yaml")).unwrap());
    assert_eq!(cert_manager["disableAutoApproval"], true);
}

/// The alert rules in `config/prometheus/` (for a Prometheus outside Kubernetes, and what the
/// promtool unit tests exercise) are the chart's PrometheusRule, rendered for every vakt: one
/// source. `VAKT_UPDATE_GOLDEN=1` rewrites the file from the chart.
#[test]
fn config_prometheus_alerts_are_the_charts_rules() {
    let Some(t) = tools() else { return };
    let out = template_with(
        t,
        &[
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set-string",
            r#"metrics.prometheusRule.selector=vakt_workload=~".*""#,
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered = text(&out.stdout);
    let spec = rendered
        .split_once("\nspec:\n")
        .expect("a PrometheusRule with a spec")
        .1;
    let groups: String = spec
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    let expected = format!(
        "# vakt's alert rules for a Prometheus that scrapes vakt, for every vakt it scrapes: the Helm\n\
         # chart's PrometheusRule (helm/vakt/templates/prometheusrule.yaml) rendered with the selector\n\
         # vakt_workload=~\".*\"; a chart test keeps the two equal ({}).\n\
         #   promtool check rules config/prometheus/vakt-alerts.yaml\n\
         #   promtool test rules config/prometheus/vakt-alerts.test.yaml\n{groups}",
        golden::REGENERATE
    );
    let path = repo().join("config/prometheus/vakt-alerts.yaml");
    if golden::updating() {
        std::fs::write(&path, &expected).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == expected,
        "config/prometheus/vakt-alerts.yaml is not the chart's rules; regenerate with {}",
        golden::REGENERATE
    );
}
