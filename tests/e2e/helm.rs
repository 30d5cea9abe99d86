//! The Helm chart (`helm/vakt`) and the example chart that includes its sidecar template
//! (`helm/examples/orders`), rendered and checked offline:
//!
//! - `helm lint --strict` with the defaults and every example values file;
//! - `helm template` with the defaults, every example and the example chart, each manifest
//!   validated by `kubernetes-validate --strict` against Kubernetes 1.31; the CRD kinds it has no
//!   schema for (cert-manager `Certificate`, Prometheus Operator `ServiceMonitor` and
//!   `PrometheusRule`) are flagged by it and checked field by field here instead;
//! - assertions on what matters: container and pod security contexts, probes, ports, the SPIFFE
//!   URI SAN, `HTTP_PROXY`, NetworkPolicy ports, the config checksum (follows the sidecar config,
//!   not the policy), the alerts' metrics (those in docs/METRICS.md);
//! - values the schema must reject;
//! - `vakt check` on the config and the policy the rendered ConfigMaps contain, with certificates
//!   issued for the SPIFFE ID the rendered `Certificate` asks for.
//!
//! Needs `helm` and `kubernetes-validate` on PATH or in `$VAKT_TOOLS/bin` (default
//! `~/.cache/vakt-tools/bin`; `scripts/install-k8s-tools.sh` installs both). Without them the
//! tests print "skipped: helm not installed" and pass, unless `VAKT_REQUIRE_K8S_TOOLS=1`, which
//! makes them fail (CI sets it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{Value, json};

const RELEASE: &str = "orders";
const NS: &str = "shop";
const KUBE_VERSION: &str = "1.31.0";
/// Every example values file the chart ships (the list); a new one must be added here.
const EXAMPLES: &[&str] = &[
    "standalone",
    "sidecar-existing-chart",
    "cert-manager",
    "existing-secret",
    "monitoring",
    "oidc",
];
/// The kinds kubernetes-validate has no schema for; checked field by field in `check_crds`.
const CRD_KINDS: &[(&str, &str)] = &[
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];
/// Paths and ports the chart fixes (and the image's ENTRYPOINT uses).
const CONFIG_PATH: &str = "/etc/vakt/vakt.yaml";
const POLICY_DIR: &str = "/var/run/vakt/policy";
const IDENTITY_DIR: &str = "/var/run/vakt/identity";
const TRUST_DIR: &str = "/var/run/vakt/trust";
const PSEUDONYM_DIR: &str = "/var/run/vakt/pseudonym";
const MTLS_PORT: i64 = 15443;
const ADMIN_PORT: i64 = 15021;
const PROXY: &str = "http://127.0.0.1:15001";

// ---- tools -------------------------------------------------------------------------------------

struct Tools {
    helm: PathBuf,
    validate: PathBuf,
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
            (Some(helm), Some(validate)) => Ok(Tools { helm, validate }),
            _ => Err(missing.join(" and ")),
        }
    });
    match found {
        Ok(tools) => Some(tools),
        Err(missing) => {
            let where_ = tools_bin();
            if std::env::var("VAKT_REQUIRE_K8S_TOOLS").as_deref() == Ok("1") {
                panic!(
                    "{missing} not found on PATH or in {} and VAKT_REQUIRE_K8S_TOOLS=1: \
                     run scripts/install-k8s-tools.sh (then put {} on PATH)",
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
    label: String,
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

    fn kinds(&self) -> BTreeSet<String> {
        self.docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_owned())
            .collect()
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
    Rendered {
        label: label.to_owned(),
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

/// kubernetes-validate --strict on the raw rendering: every core kind must pass, and the only
/// kinds it may lack a schema for are the CRDs in `CRD_KINDS` (checked in `check_crds`).
fn validate(t: &Tools, r: &Rendered) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &r.text).unwrap();
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
    assert!(
        out.status.success(),
        "{}: kubernetes-validate failed:\n{report}",
        r.label
    );
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
}

// ---- what every rendering must satisfy --------------------------------------------------------

/// What a rendering of vakt's resources says about the workload, for further checks.
struct Mesh {
    label: String,
    /// Full resource name prefix (the Service, the workload label value).
    fullname: String,
    config_text: String,
    config: Value,
    policy_text: Option<String>,
    trust_domain: String,
    service_account: String,
    spiffe_id: String,
    identity_secret: String,
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

fn inbound_configured(config: &Value) -> bool {
    !config["inbound"].is_null()
}

fn check_mesh_resources(r: &Rendered) -> Mesh {
    let label = &r.label;
    for doc in &r.docs {
        // Everything in the release namespace; the dashboard may go where Grafana looks.
        if doc["metadata"]["labels"]["grafana_dashboard"].is_null() {
            assert_eq!(
                doc["metadata"]["namespace"], NS,
                "{label}: {} {} outside the release namespace",
                doc["kind"], doc["metadata"]["name"]
            );
        }
    }

    // The sidecar config: the fixed listeners, JSON logs, and the mounted files.
    let config_map = r
        .all("ConfigMap")
        .into_iter()
        .find(|c| c["data"]["vakt.yaml"].is_string())
        .unwrap_or_else(|| panic!("{label}: no ConfigMap with vakt.yaml"));
    let config_text = config_map["data"]["vakt.yaml"].as_str().unwrap().to_owned();
    let config = yaml(&config_text);
    assert_eq!(config["admin"]["listen"], "0.0.0.0:15021", "{label}");
    assert_eq!(config["log"]["format"], "json", "{label}");
    assert!(
        config.get("audit").is_none(),
        "{label}: audit is not a vakt key yet"
    );
    if let Some(oidc) = config.get("oidc") {
        assert!(!oidc["issuers"].as_array().unwrap().is_empty(), "{label}");
        assert!(inbound_configured(&config), "{label}: oidc needs inbound");
    }
    if let Some(p) = config.get("pseudonymisation") {
        let key = str_of(&p["key_file"], "key_file");
        assert!(
            key.starts_with(&format!("{PSEUDONYM_DIR}/")),
            "{label}: {key}"
        );
    }
    if !config["outbound"].is_null() {
        assert_eq!(config["outbound"]["listen"], "127.0.0.1:15001", "{label}");
    }
    let inbound = !config["inbound"].is_null();
    if inbound {
        assert_eq!(config["inbound"]["listen"], "0.0.0.0:15443", "{label}");
        let app = str_of(&config["inbound"]["app"], "inbound.app");
        assert!(app.starts_with("127.0.0.1:"), "{label}: inbound.app {app}");
        let policy = str_of(&config["inbound"]["policy"], "inbound.policy");
        assert!(
            policy.starts_with(&format!("{POLICY_DIR}/")),
            "{label}: {policy}"
        );
    }
    let identity = &config["identity"];
    for (key, dir) in [
        ("cert", IDENTITY_DIR),
        ("key", IDENTITY_DIR),
        ("trust_bundle", TRUST_DIR),
    ] {
        let path = str_of(&identity[key], key);
        assert!(
            path.starts_with(&format!("{dir}/")),
            "{label}: identity.{key} = {path}"
        );
    }
    let trust_domain = str_of(&identity["trust_domain"], "trust_domain").to_owned();

    // The policy ConfigMap (unless an existing one is used): a separate ConfigMap.
    let policy_text = r
        .all("ConfigMap")
        .into_iter()
        .find(|c| c["data"]["policy.yaml"].is_string())
        .map(|c| c["data"]["policy.yaml"].as_str().unwrap().to_owned());
    assert_eq!(policy_text.is_some(), inbound, "{label}: policy ConfigMap");
    assert!(
        config_map["data"].get("policy.yaml").is_none(),
        "{label}: the policy must not share the config's ConfigMap"
    );

    // The ServiceAccount: dedicated, no API token.
    let sa = r.only("ServiceAccount");
    assert_eq!(sa["automountServiceAccountToken"], false, "{label}");
    let service_account = sa["metadata"]["name"].as_str().unwrap().to_owned();
    let spiffe_id = format!("spiffe://{trust_domain}/ns/{NS}/sa/{service_account}");

    // The certificate, or an existing Secret.
    let certs = r.all("Certificate");
    let identity_secret = match certs.as_slice() {
        [cert] => {
            assert_eq!(cert["apiVersion"], "cert-manager.io/v1", "{label}");
            let spec = &cert["spec"];
            assert_eq!(spec["uris"], json!([spiffe_id]), "{label}: the URI SAN");
            assert!(
                spec.get("commonName").is_none(),
                "{label}: no CN in an SVID"
            );
            assert!(spec.get("dnsNames").is_none(), "{label}: no DNS SANs");
            assert_eq!(spec["isCA"], false, "{label}");
            assert_eq!(spec["privateKey"]["algorithm"], "ECDSA", "{label}");
            assert_eq!(spec["privateKey"]["size"], 256, "{label}: P-256");
            let usages: BTreeSet<&str> = spec["usages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap())
                .collect();
            assert_eq!(
                usages,
                BTreeSet::from(["digital signature", "server auth", "client auth"]),
                "{label}"
            );
            for key in ["duration", "renewBefore"] {
                assert!(spec[key].is_string(), "{label}: Certificate {key}");
            }
            let issuer = &spec["issuerRef"];
            assert!(
                issuer["kind"] == "Issuer" || issuer["kind"] == "ClusterIssuer",
                "{label}: {issuer}"
            );
            assert_eq!(issuer["group"], "cert-manager.io", "{label}");
            assert!(!str_of(&issuer["name"], "issuerRef.name").is_empty());
            str_of(&spec["secretName"], "secretName").to_owned()
        }
        [] => String::new(),
        _ => panic!("{label}: more than one Certificate"),
    };

    // The Service: the mTLS port and nothing else.
    let services: Vec<&Value> = r
        .all("Service")
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["vakt.io/metrics"].is_null())
        .collect();
    let workload_selector = if inbound {
        assert_eq!(services.len(), 1, "{label}: one Service");
        let svc = services[0];
        let only_mtls = json!([
            {"name": "mtls", "port": MTLS_PORT, "targetPort": "vakt-mtls", "protocol": "TCP"}
        ]);
        assert_eq!(
            svc["spec"]["ports"], only_mtls,
            "{label}: the Service must expose only 15443"
        );
        svc["spec"]["selector"].clone()
    } else {
        assert!(services.is_empty(), "{label}: no Service without inbound");
        r.only("NetworkPolicy")["spec"]["podSelector"]["matchLabels"].clone()
    };
    let fullname = str_of(&workload_selector["vakt.io/workload"], "workload label").to_owned();
    assert_eq!(
        workload_selector.as_object().unwrap().len(),
        1,
        "{label}: {workload_selector}"
    );

    // The NetworkPolicy: 15443 from the mesh, 15021 from monitoring, nothing else.
    let np = r.only("NetworkPolicy");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"], workload_selector);
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]), "{label}");
    let rules = np["spec"]["ingress"].as_array().unwrap();
    let mut ports = BTreeMap::new();
    for rule in rules {
        assert_eq!(
            rule["ports"].as_array().unwrap().len(),
            1,
            "{label}: {rule}"
        );
        let port = rule["ports"][0]["port"].as_i64().unwrap();
        assert_eq!(rule["ports"][0]["protocol"], "TCP");
        let from = rule["from"].as_array().unwrap();
        assert!(!from.is_empty(), "{label}: an empty `from` admits everyone");
        ports.insert(port, from.clone());
    }
    let expected: BTreeSet<i64> = if inbound {
        BTreeSet::from([MTLS_PORT, ADMIN_PORT])
    } else {
        BTreeSet::from([ADMIN_PORT])
    };
    assert_eq!(
        ports.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "{label}: NetworkPolicy ports"
    );
    let admin_from = &ports[&ADMIN_PORT];
    assert!(
        admin_from.iter().all(
            |peer| peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                == "monitoring"
        ),
        "{label}: 15021 only from the monitoring namespace: {admin_from:?}"
    );

    check_crds(r, &fullname);

    Mesh {
        label: label.clone(),
        fullname,
        config_text,
        config,
        policy_text,
        trust_domain,
        service_account,
        spiffe_id,
        identity_secret,
    }
}

fn hardened(container: &Value, what: &str) {
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{what}: {sc}");
    assert!(
        sc["runAsUser"].as_i64().is_some_and(|uid| uid > 0),
        "{what}: a fixed non-root UID: {sc}"
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_ne!(sc["privileged"], true, "{what}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
    assert!(sc["capabilities"]["add"].is_null(), "{what}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    for part in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][part][resource].is_null(),
                "{what}: resources.{part}.{resource}"
            );
        }
    }
}

/// The pod template that runs vakt (the chart's own Deployment or one of another chart).
fn check_pod(mesh: &Mesh, pod: &Value) {
    let label = &mesh.label;
    assert_eq!(
        pod["metadata"]["labels"]["vakt.io/workload"], mesh.fullname,
        "{label}: the pods carry the label the Service selects"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["checksum/config"],
        sha256_hex(mesh.config_text.trim_end().as_bytes()),
        "{label}: checksum/config is the sha256 of the rendered sidecar config"
    );
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], mesh.service_account, "{label}");
    assert_eq!(spec["automountServiceAccountToken"], false, "{label}");
    let psc = &spec["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{label}: {psc}");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{label}");

    let init: Vec<&Value> = spec["initContainers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let main: Vec<&Value> = spec["containers"].as_array().unwrap().iter().collect();
    let is_vakt = |c: &&Value| c["args"] == json!(["run", "--config", CONFIG_PATH]);
    let sidecars: Vec<&Value> = init.iter().chain(&main).copied().filter(is_vakt).collect();
    assert_eq!(sidecars.len(), 1, "{label}: one vakt container");
    let sidecar = sidecars[0];
    let native = init.iter().any(is_vakt);
    if native {
        assert_eq!(
            sidecar["restartPolicy"], "Always",
            "{label}: a native sidecar"
        );
    } else {
        assert!(sidecar["restartPolicy"].is_null(), "{label}");
        assert!(init.is_empty(), "{label}");
    }
    for c in init.iter().chain(&main) {
        hardened(c, &format!("{label}: container {}", c["name"]));
    }
    assert_eq!(
        psc["fsGroup"], sidecar["securityContext"]["runAsGroup"],
        "{label}: fsGroup lets vakt read its key"
    );

    // vakt: probes on the admin port, its ports, its mounts.
    assert_eq!(sidecar["command"], json!(["/vakt"]), "{label}");
    for (probe, path) in [("livenessProbe", "/live"), ("readinessProbe", "/ready")] {
        assert_eq!(sidecar[probe]["httpGet"]["path"], path, "{label}: {probe}");
        assert_eq!(sidecar[probe]["httpGet"]["port"], ADMIN_PORT, "{label}");
    }
    let ports: BTreeSet<i64> = sidecar["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    let inbound = !mesh.config["inbound"].is_null();
    let expected = if inbound {
        BTreeSet::from([MTLS_PORT, ADMIN_PORT])
    } else {
        BTreeSet::from([ADMIN_PORT])
    };
    assert_eq!(ports, expected, "{label}: vakt's container ports");

    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mounts: BTreeMap<&str, &Value> = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m))
        .collect();
    for m in mounts.values() {
        assert!(
            m["subPath"].is_null(),
            "{label}: subPath mounts never update: {m}"
        );
        assert_eq!(m["readOnly"], true, "{label}: {m}");
    }
    let dir_of = |p: &Value| {
        Path::new(str_of(p, "path"))
            .parent()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let identity = &mesh.config["identity"];
    assert_eq!(mounts["vakt-config"]["mountPath"], "/etc/vakt", "{label}");
    assert_eq!(
        mounts["vakt-identity"]["mountPath"],
        dir_of(&identity["cert"]),
        "{label}"
    );
    assert_eq!(
        mounts["vakt-identity"]["mountPath"],
        dir_of(&identity["key"]),
        "{label}"
    );
    assert_eq!(
        mounts["vakt-trust"]["mountPath"],
        dir_of(&identity["trust_bundle"]),
        "{label}"
    );
    assert!(
        volumes["vakt-config"]["configMap"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-config")),
        "{label}"
    );
    let secret = &volumes["vakt-identity"]["secret"];
    assert_eq!(secret["defaultMode"], 0o440, "{label}: the key is 0440");
    if !mesh.identity_secret.is_empty() {
        assert_eq!(
            secret["secretName"], mesh.identity_secret,
            "{label}: the pod mounts the Secret cert-manager writes"
        );
    }
    match mesh.config.get("pseudonymisation") {
        Some(p) => {
            assert_eq!(
                mounts["vakt-pseudonym"]["mountPath"],
                dir_of(&p["key_file"]),
                "{label}: key_file is in the mounted Secret"
            );
            assert_eq!(volumes["vakt-pseudonym"]["secret"]["defaultMode"], 0o440);
        }
        None => assert!(!volumes.contains_key("vakt-pseudonym"), "{label}"),
    }
    if inbound {
        assert_eq!(
            mounts["vakt-policy"]["mountPath"],
            dir_of(&mesh.config["inbound"]["policy"]),
            "{label}: inbound.policy is in the mounted policy directory"
        );
        assert!(volumes["vakt-policy"]["configMap"]["name"].is_string());
    } else {
        assert!(!mounts.contains_key("vakt-policy"), "{label}");
    }

    // The app container(s): outbound through vakt, no access to vakt's key.
    let outbound = !mesh.config["outbound"].is_null();
    for app in main.iter().filter(|c| !is_vakt(c)) {
        let env: BTreeMap<&str, &str> = app["env"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|v| Some((v["name"].as_str()?, v["value"].as_str()?)))
                    .collect()
            })
            .unwrap_or_default();
        if outbound {
            assert_eq!(env.get("HTTP_PROXY"), Some(&PROXY), "{label}: {env:?}");
            assert_eq!(env.get("http_proxy"), Some(&PROXY), "{label}");
            let no_proxy = env.get("NO_PROXY").copied().unwrap_or_default();
            assert!(
                no_proxy.split(',').any(|h| h == "127.0.0.1")
                    && no_proxy.split(',').any(|h| h == "localhost"),
                "{label}: NO_PROXY {no_proxy}"
            );
        } else {
            assert!(!env.contains_key("HTTP_PROXY"), "{label}: no outbound");
        }
        let app_mounts = app["volumeMounts"].as_array().cloned().unwrap_or_default();
        assert!(
            app_mounts
                .iter()
                .all(|m| m["name"] != "vakt-identity" && m["name"] != "vakt-pseudonym"),
            "{label}: only vakt mounts its private key and the pseudonymisation key"
        );
        assert!(
            app["ports"].is_null(),
            "{label}: the app's port is loopback only, never declared"
        );
    }
}

fn catalogue() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo().join("docs/METRICS.md")).unwrap();
    let names: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("vakt_"))
        .map(str::to_owned)
        .collect();
    assert!(names.len() > 10, "docs/METRICS.md: no metrics table?");
    names
}

/// Every `vakt_*` metric an expression uses must be in docs/METRICS.md.
fn metrics_in(expr: &str) -> Vec<String> {
    let known = catalogue();
    let mut used = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("vakt_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| known.contains(*b)))
            .unwrap_or(name);
        assert!(
            known.contains(base),
            "{name} is not in docs/METRICS.md: {expr}"
        );
        used.push(base.to_owned());
        rest = &tail[end..];
    }
    used
}

fn check_dashboard_json(json_text: &str) {
    let dash: Value = serde_json::from_str(json_text).expect("dashboard JSON");
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let panels = dash["panels"].as_array().unwrap();
    let mut used = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            used.extend(metrics_in(target["expr"].as_str().unwrap()));
        }
    }
    for metric in [
        "vakt_tls_handshake_failures_total",
        "vakt_certificate_expiry_timestamp_seconds",
        "vakt_certificate_reloads_total",
        "vakt_policy_reloads_total",
        "vakt_policy_decisions_total",
        "vakt_requests_total",
    ] {
        assert!(used.contains(metric), "the dashboard shows no {metric}");
    }
}

/// The CRD kinds kubernetes-validate cannot check.
fn check_crds(r: &Rendered, fullname: &str) {
    let label = &r.label;
    for doc in &r.docs {
        let (api, kind) = (
            doc["apiVersion"].as_str().unwrap(),
            doc["kind"].as_str().unwrap(),
        );
        if !CRD_KINDS.iter().any(|(_, k)| *k == kind) {
            continue;
        }
        assert!(
            CRD_KINDS.contains(&(api, kind)),
            "{label}: {kind} with apiVersion {api}"
        );
        assert!(doc["metadata"]["name"].is_string(), "{label}: {kind} name");
        match kind {
            "Certificate" => {} // checked in check_mesh_resources
            "ServiceMonitor" => {
                let spec = &doc["spec"];
                assert_eq!(
                    spec["endpoints"],
                    json!([{"port": "admin", "path": "/metrics", "scheme": "http",
                            "interval": spec["endpoints"][0]["interval"],
                            "scrapeTimeout": spec["endpoints"][0]["scrapeTimeout"]}]),
                    "{label}"
                );
                assert_eq!(spec["namespaceSelector"]["matchNames"], json!([NS]));
                // It selects the headless metrics Service, which exposes 15021 only.
                let wanted = spec["selector"]["matchLabels"].as_object().unwrap();
                let metrics_svc: Vec<&Value> = r
                    .all("Service")
                    .into_iter()
                    .filter(|s| wanted.iter().all(|(k, v)| &s["metadata"]["labels"][k] == v))
                    .collect();
                assert_eq!(
                    metrics_svc.len(),
                    1,
                    "{label}: the ServiceMonitor's Service"
                );
                let svc = &metrics_svc[0]["spec"];
                assert_eq!(svc["clusterIP"], "None", "{label}");
                assert_eq!(
                    svc["ports"],
                    json!([{"name": "admin", "port": ADMIN_PORT, "targetPort": "vakt-admin", "protocol": "TCP"}])
                );
                assert_eq!(svc["selector"], json!({"vakt.io/workload": fullname}));
            }
            "PrometheusRule" => check_rules(r, doc, fullname),
            _ => unreachable!(),
        }
    }
}

fn check_rules(r: &Rendered, doc: &Value, fullname: &str) {
    let label = &r.label;
    let groups = doc["spec"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{label}");
    let rules: BTreeMap<&str, &Value> = groups[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| (rule["alert"].as_str().unwrap(), rule))
        .collect();
    let selector = format!("namespace=\"{NS}\",job=\"{fullname}-metrics\"");
    for (alert, metric, matcher) in [
        (
            "VaktHandshakesFromUnknownCA",
            "vakt_tls_handshake_failures_total",
            "reason=\"unknown_ca\"",
        ),
        (
            "VaktWorkloadCertificateExpiring",
            "vakt_certificate_expiry_timestamp_seconds",
            "certificate=\"workload\"",
        ),
        (
            "VaktTrustBundleExpiring",
            "vakt_certificate_expiry_timestamp_seconds",
            "certificate=\"trust_bundle\"",
        ),
        (
            "VaktCertificateReloadFailing",
            "vakt_certificate_reloads_total",
            "result=\"failure\"",
        ),
        (
            "VaktPolicyReloadFailing",
            "vakt_policy_reloads_total",
            "result=\"failure\"",
        ),
        (
            "VaktPolicyDenialSpike",
            "vakt_policy_decisions_total",
            "decision=\"deny\"",
        ),
        (
            "VaktPolicyWouldDeny",
            "vakt_policy_decisions_total",
            "decision=\"would_deny\"",
        ),
        (
            "VaktAuditEventsDropped",
            "vakt_audit_events_dropped_total",
            "increase(",
        ),
        ("VaktAuditSinkFailing", "vakt_audit_sink_healthy", "== 0"),
        (
            "VaktAuditQueueFilling",
            "vakt_audit_queue_capacity",
            "vakt_audit_queue_depth{",
        ),
    ] {
        let rule = rules
            .get(alert)
            .unwrap_or_else(|| panic!("{label}: no alert {alert}"));
        let expr = str_of(&rule["expr"], "expr");
        assert!(
            metrics_in(expr).iter().any(|m| m == metric),
            "{label}: {alert}: {expr}"
        );
        assert!(expr.contains(matcher), "{label}: {alert}: {expr}");
        assert!(
            expr.contains(&selector),
            "{label}: {alert} must select this workload's series ({selector}): {expr}"
        );
        assert!(
            ["critical", "warning", "info"].contains(&str_of(&rule["labels"]["severity"], "sev")),
            "{label}: {alert}"
        );
        assert!(rule["annotations"]["summary"].is_string(), "{label}");
        assert!(rule["annotations"]["description"].is_string(), "{label}");
    }
    assert!(
        rules["VaktPolicyDenialSpike"]["expr"]
            .as_str()
            .unwrap()
            .contains("sum by (namespace, route)"),
        "{label}: denials by route"
    );
    assert_eq!(rules.len(), 10, "{label}: {:?}", rules.keys());
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
    assert!(dockerfile.contains("cargo build --release --locked"));
    // Cargo.toml's [patch.crates-io] takes h2 from vendor/: without it the image does not build.
    assert!(
        dockerfile.lines().any(|l| l == "COPY vendor ./vendor"),
        "Dockerfile: vendor/ (the patched h2) is not copied into the build"
    );
    // build.rs links the release binary with src/link/hot-text.ld (the code layout), which
    // names functions as .cargo/config.toml's v0 mangling does.
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("COPY ") && l.contains(" build.rs ")),
        "Dockerfile: build.rs (the code layout) is not copied into the build"
    );
    assert!(
        dockerfile.lines().any(|l| l == "COPY .cargo ./.cargo"),
        "Dockerfile: .cargo/config.toml (v0 symbol names) is not copied into the build"
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
        "sidecar.probes.liveness",
        "sidecar.probes.readiness",
        "policy.document",
        "metrics.dashboard.labels",
        "certificate.certManager.issuerRef",
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

    check_dashboard_json(&std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap());
}

#[test]
fn lint_strict_with_defaults_and_every_example() {
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
}

#[test]
fn defaults_render_a_hardened_workload_that_kubernetes_accepts() {
    let Some(t) = tools() else { return };
    let r = template(t, "defaults", &[]);
    validate(t, &r);
    let mesh = check_mesh_resources(&r);
    assert_eq!(mesh.fullname, "orders-vakt");
    assert_eq!(
        mesh.spiffe_id,
        "spiffe://cluster.local/ns/shop/sa/orders-vakt"
    );
    let deployment = r.only("Deployment");
    check_pod(&mesh, &deployment["spec"]["template"]);
    let pod = &deployment["spec"]["template"]["spec"];
    // An ordinary second container by default; the app first.
    assert!(pod["initContainers"].is_null());
    assert_eq!(pod["containers"][0]["name"], "app");
    assert_eq!(pod["containers"][1]["name"], "vakt");
    assert_eq!(
        pod["containers"][1]["image"],
        format!("ghcr.io/vakt-mesh/vakt:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(mesh.config["inbound"]["app"], "127.0.0.1:8080");
    let cert = r.only("Certificate");
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "mesh-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert_eq!(cert["spec"]["secretName"], "orders-vakt-identity");
    assert_eq!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "vakt-trust")
            .unwrap()["configMap"],
        json!({"name": "mesh-trust-bundle"})
    );
    assert_eq!(
        r.only("NetworkPolicy")["spec"]["ingress"][0]["from"],
        json!([{"namespaceSelector": {"matchLabels": {"vakt.io/mesh": "enabled"}}}])
    );
    // Monitoring and the PDB are off by default.
    let kinds = r.kinds();
    for kind in ["ServiceMonitor", "PrometheusRule", "PodDisruptionBudget"] {
        assert!(!kinds.contains(kind), "defaults render a {kind}");
    }
    assert_eq!(r.all("Service").len(), 1);
    assert_eq!(r.all("ConfigMap").len(), 2, "config + policy, no dashboard");

    // A policy kept in a ConfigMap of its own: not rendered, but mounted and named.
    let r = template(
        t,
        "existing policy ConfigMap",
        &[
            "--set",
            "policy.existingConfigMap=team-policy,policy.key=rules.yaml",
        ],
    );
    validate(t, &r);
    assert_eq!(r.all("ConfigMap").len(), 1, "the config only");
    let config = yaml(
        r.one("ConfigMap", "orders-vakt-config")["data"]["vakt.yaml"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        config["inbound"]["policy"],
        "/var/run/vakt/policy/rules.yaml"
    );
    let pod = &r.only("Deployment")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vakt-policy")
        .unwrap();
    assert_eq!(volume["configMap"], json!({"name": "team-policy"}));
}

#[test]
fn standalone_example_runs_a_native_sidecar_with_a_pdb() {
    let Some(t) = tools() else { return };
    let r = render_example(t, "standalone");
    validate(t, &r);
    let mesh = check_mesh_resources(&r);
    assert_eq!(mesh.fullname, "orders");
    assert_eq!(mesh.spiffe_id, "spiffe://cluster.local/ns/shop/sa/orders");
    let deployment = r.one("Deployment", "orders");
    check_pod(&mesh, &deployment["spec"]["template"]);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "vakt");
    assert_eq!(pod["initContainers"][0]["restartPolicy"], "Always");
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
    let app = &pod["containers"][0];
    assert_eq!(app["image"], "ghcr.io/example/orders:1.4.2");
    assert!(
        app["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "LISTEN_ADDR")
    );
    assert!(app["readinessProbe"]["exec"].is_object());
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pdb = r.only("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        json!({"vakt.io/workload": "orders"})
    );
    assert_eq!(
        mesh.config["outbound"]["upstreams"],
        json!([{"authority": "payments.billing.svc.cluster.local:8080",
                "address": "payments.billing.svc.cluster.local:15443",
                "spiffe_id": "spiffe://cluster.local/ns/billing/sa/payments"}])
    );
    assert_eq!(
        mesh.config["inbound"]["strip_headers"],
        json!(["x-user-id", "x-tenant"])
    );
    let policy = yaml(mesh.policy_text.as_deref().unwrap());
    assert_eq!(policy["routes"].as_array().unwrap().len(), 4);
}

#[test]
fn cert_manager_example_asks_for_the_workload_spiffe_id() {
    let Some(t) = tools() else { return };
    let r = render_example(t, "cert-manager");
    validate(t, &r);
    let mesh = check_mesh_resources(&r);
    check_pod(&mesh, &r.only("Deployment")["spec"]["template"]);
    let cert = r.only("Certificate");
    assert_eq!(
        cert["spec"]["uris"],
        json!(["spiffe://health.example.org/ns/shop/sa/journal"])
    );
    assert_eq!(r.only("ServiceAccount")["metadata"]["name"], "journal");
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "mesh-ca", "kind": "Issuer", "group": "cert-manager.io"})
    );
    assert_eq!(cert["spec"]["duration"], "24h");
    assert_eq!(cert["spec"]["renewBefore"], "8h");
    assert_eq!(cert["spec"]["secretName"], "records-svid");
    assert_eq!(mesh.trust_domain, "health.example.org");
    assert_eq!(
        mesh.config["identity"]["trust_bundle"],
        "/var/run/vakt/trust/trust-bundle.pem"
    );
}

#[test]
fn existing_secret_example_mounts_the_given_secrets() {
    let Some(t) = tools() else { return };
    let r = render_example(t, "existing-secret");
    validate(t, &r);
    let mesh = check_mesh_resources(&r);
    assert!(r.all("Certificate").is_empty(), "no cert-manager here");
    let deployment = r.only("Deployment");
    check_pod(&mesh, &deployment["spec"]["template"]);
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(
        volume("vakt-identity")["secret"]["secretName"],
        "payments-svid"
    );
    assert_eq!(volume("vakt-trust")["secret"]["secretName"], "mesh-ca");
    assert_eq!(
        mesh.config["identity"]["cert"],
        "/var/run/vakt/identity/svid.pem"
    );
    assert_eq!(
        mesh.config["identity"]["key"],
        "/var/run/vakt/identity/svid-key.pem"
    );
    assert_eq!(mesh.spiffe_id, "spiffe://cluster.local/ns/shop/sa/payments");
    // Inbound only: no outbound listener, no HTTP_PROXY; gRPC to the app.
    assert!(mesh.config["outbound"].is_null());
    assert_eq!(mesh.config["inbound"]["app"], "127.0.0.1:9000");
    assert_eq!(mesh.config["inbound"]["app_protocol"], "h2c");
    let rule = r.only("PrometheusRule");
    let expiring = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["alert"] == "VaktWorkloadCertificateExpiring")
        .unwrap();
    assert!(expiring["expr"].as_str().unwrap().ends_with("< 604800"));
}

#[test]
fn monitoring_example_renders_service_monitor_rules_and_dashboard() {
    let Some(t) = tools() else { return };
    let r = render_example(t, "monitoring");
    validate(t, &r);
    let mesh = check_mesh_resources(&r);
    check_pod(&mesh, &r.only("Deployment")["spec"]["template"]);
    let sm = r.only("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
    let rule = r.only("PrometheusRule");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    for alert in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(alert["labels"]["team"], "shop", "{}", alert["alert"]);
    }
    let dashboard = r
        .all("ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a dashboard ConfigMap labelled grafana_dashboard: \"1\"");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(
        dashboard["metadata"]["annotations"]["grafana_folder"],
        "vakt"
    );
    let json_text = dashboard["data"]["vakt.json"].as_str().unwrap();
    check_dashboard_json(json_text);
    assert_eq!(
        json_text.trim_end(),
        std::fs::read_to_string(chart().join("files/dashboard.json"))
            .unwrap()
            .trim_end()
    );
    // Prometheus pods only, on the admin port.
    let np = r.only("NetworkPolicy");
    let admin = np["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule["ports"][0]["port"] == ADMIN_PORT)
        .unwrap();
    assert_eq!(
        admin["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );
}

#[test]
fn oidc_example_renders_issuers_and_the_pseudonymisation_key() {
    let Some(t) = tools() else { return };
    let r = render_example(t, "oidc");
    validate(t, &r);
    let mesh = check_mesh_resources(&r);
    let deployment = r.only("Deployment");
    check_pod(&mesh, &deployment["spec"]["template"]);
    let oidc = &mesh.config["oidc"];
    assert_eq!(
        oidc["issuers"][0],
        json!({"issuer": "https://helseid-sts.nhn.no", "profile": "helseid", "audiences": ["journal-api"]})
    );
    assert_eq!(oidc["issuers"][1]["algorithms"], json!(["RS256", "PS256"]));
    assert_eq!(oidc["issuers"][1]["max_token_lifetime"], "1h");
    assert_eq!(oidc["jwks_max_staleness"], "24h");
    assert_eq!(
        mesh.config["pseudonymisation"],
        json!({"key_file": "/var/run/vakt/pseudonym/key", "key_id": "k1"})
    );
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let key = volumes
        .iter()
        .find(|v| v["name"] == "vakt-pseudonym")
        .unwrap();
    assert_eq!(key["secret"]["secretName"], "vakt-pseudonym-key");
    let policy = yaml(mesh.policy_text.as_deref().unwrap());
    assert_eq!(
        policy["routes"][1]["allow"][0]["bind"],
        json!({"pid": "national_id"})
    );

    // Turning tokens on (or the key) is a sidecar-config change: it rolls the pods.
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
    assert!(check_mesh_resources(&plain).config.get("oidc").is_none());
    assert_ne!(checksum(&plain), checksum(&r));
}

/// Way in (b), rendered alone: vakt's resources without a Deployment.
#[test]
fn sidecar_example_renders_vakt_resources_without_a_deployment() {
    let Some(t) = tools() else { return };
    let r = render_example(t, "sidecar-existing-chart");
    validate(t, &r);
    let mesh = check_mesh_resources(&r);
    assert!(r.all("Deployment").is_empty());
    assert_eq!(mesh.fullname, "orders");
    assert_eq!(r.only("Service")["metadata"]["name"], "orders");
    assert_eq!(mesh.spiffe_id, "spiffe://cluster.local/ns/shop/sa/orders");
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

/// Way in (b) for real: helm/examples/orders depends on the vakt chart and includes
/// "vakt.sidecar" in its own Deployment.
#[test]
fn another_chart_includes_the_sidecar_template() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("helm"), &dir.path().join("helm"));
    let orders = dir.path().join("helm/examples/orders");
    let orders_arg = orders.to_string_lossy();
    let out = run(
        &t.helm,
        &["dependency", "update", "--skip-refresh", &orders_arg],
    );
    assert!(
        out.status.success(),
        "helm dependency update:\n{}",
        text(&out.stderr)
    );
    let out = run(
        &t.helm,
        &["lint", "--strict", &orders_arg, "--namespace", NS],
    );
    assert!(
        out.status.success(),
        "helm lint orders:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The example chart's vakt values are exactly examples/sidecar-existing-chart.yaml.
    let values = yaml(&std::fs::read_to_string(orders.join("values.yaml")).unwrap());
    let example_values = yaml(&std::fs::read_to_string(example("sidecar-existing-chart")).unwrap());
    assert_eq!(values["vakt"], example_values);

    let r = template_chart(t, &orders, "orders chart", &[]);
    validate(t, &r);
    let mesh = check_mesh_resources(&r);
    let deployment = r.only("Deployment");
    assert_eq!(deployment["metadata"]["name"], "orders");
    check_pod(&mesh, &deployment["spec"]["template"]);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "vakt", "native sidecar");
    assert_eq!(pod["containers"][0]["name"], "orders");
    assert_eq!(pod["containers"][0]["securityContext"]["runAsUser"], 10001);
    // The subchart's Service and NetworkPolicy select the parent's pods.
    assert_eq!(r.only("Service")["metadata"]["name"], "orders");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["vakt.io/workload"],
        "orders"
    );

    // Also without the native sidecar: vakt becomes the second container.
    let r = template_chart(
        t,
        &orders,
        "orders chart, classic sidecar",
        &["--set", "vakt.sidecar.native=false"],
    );
    validate(t, &r);
    let mesh = check_mesh_resources(&r);
    check_pod(&mesh, &r.only("Deployment")["spec"]["template"]);
    let pod = &r.only("Deployment")["spec"]["template"]["spec"];
    assert!(pod["initContainers"].is_null());
    assert_eq!(pod["containers"][1]["name"], "vakt");
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
        (
            &["--set", "certificate.source=vault"],
            &["certificate.source"],
        ),
        (
            &["--set", "certificate.source=existingSecret"],
            &["certificate.existingSecret.name"],
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
        (PSEUDONYM_DIR, "pseudonym"),
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
        let accepted = list(&identity["accepted_trust_domains"], "");
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
        let mesh = check_mesh_resources(&r);
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
        let mesh = check_mesh_resources(r);
        vakt_check_rendering(&mesh);
    }

    // The check has teeth: a rendered policy naming a peer outside the trust domain fails.
    let foreign = dir.path().join("foreign.yaml");
    std::fs::write(
        &foreign,
        "policy:\n  document:\n    routes:\n      - id: r\n        methods: [GET]\n        path: /r\n        allow:\n          - peers: [spiffe://elsewhere.org/ns/a/sa/b]\n",
    )
    .unwrap();
    let bad = template(t, "foreign peer", &["-f", foreign.to_str().unwrap()]);
    let mesh = check_mesh_resources(&bad);
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
        "kubectl -n shop get certificate orders-vakt",
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
