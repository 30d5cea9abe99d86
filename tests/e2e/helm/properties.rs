//! The chart's security properties, checked on every render: what must hold however a golden
//! file is regenerated. Most are rows of [`PROPERTIES`]; what a row cannot say (a checksum, the
//! same label on both ends of a selector, the files vakt reads in the directories it mounts, the
//! fields of the CRD kinds kubernetes-validate has no schema for) is code below it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{
    ADMIN_PORT, CONFIG_PATH, CRD_KINDS, Mesh, NS, RENDERS, Rendered, repo, sha256_hex, str_of,
};

/// `(renders, object, field, expected)`, one property per row.
///
/// - renders: names from `RENDERS`, space-separated; `*` is every render (also those other
///   tests make), `!name` leaves one out. A row naming renders fails where its object is
///   missing; a `*` row skips a render without the object (the goldens say which exist).
/// - object: `pod` (the workload's pod template), `vakt` (its vakt container), `capture` (the
///   transparent-capture init container), `apps` (each other container), `containers` (each
///   container but the capture init container), `config` (the rendered vakt.yaml), `Service`
///   (the workload's Service, not the metrics one) or any other kind (each object of it).
/// - field: `a.b`, `a[0]`, `a["key.with.dots"]`, `a[name=x]` (the element named x), `a[*]` (every
///   element: the values as a list).
/// - expected: JSON (absent is `null`); `set` (present and not empty); `starts TEXT` (a string
///   starting with TEXT); `each EXPECTED` (every value of a `[*]` field, at least one).
#[rustfmt::skip]
pub(super) const PROPERTIES: &[(&str, &str, &str, &str)] = &[
    // Every container: not root, no privileges, a read-only root, a resource budget.
    ("*",                      "containers",     "securityContext.runAsNonRoot", "true"),
    ("!openshift",             "containers",     "securityContext.runAsUser", "set"),
    ("openshift",              "containers",     "securityContext.runAsUser", "null"),
    ("*",                      "containers",     "securityContext.readOnlyRootFilesystem", "true"),
    ("*",                      "containers",     "securityContext.allowPrivilegeEscalation", "false"),
    ("*",                      "containers",     "securityContext.privileged", "false"),
    ("*",                      "containers",     "securityContext.capabilities", r#"{"drop": ["ALL"]}"#),
    ("*",                      "containers",     "securityContext.seccompProfile.type", RUNTIME_DEFAULT),
    ("*",                      "containers",     "resources.requests.cpu", "set"),
    ("*",                      "containers",     "resources.requests.memory", "set"),
    ("*",                      "containers",     "resources.limits.cpu", "set"),
    ("*",                      "containers",     "resources.limits.memory", "set"),
    // The pod: non-root, no Kubernetes API token; vakt's group (the fsGroup) alone reads its keys.
    ("*",                      "pod",            "spec.securityContext.runAsNonRoot", "true"),
    ("*",                      "pod",            "spec.securityContext.seccompProfile.type", RUNTIME_DEFAULT),
    ("!openshift",             "pod",            "spec.securityContext.fsGroup", "65532"),
    ("openshift",              "pod",            "spec.securityContext.fsGroup", "null"),
    ("*",                      "pod",            "spec.automountServiceAccountToken", "false"),
    ("*",                      "ServiceAccount", "automountServiceAccountToken", "false"),
    // The identity: by default the pod's own from csi-driver-spiffe, readable by vakt's group.
    (CSI,                      "pod",            "spec.volumes[name=vakt-identity].csi.driver", r#""spiffe.csi.cert-manager.io""#),
    (CSI,                      "pod",            "spec.volumes[name=vakt-identity].csi.readOnly", "true"),
    (CSI,                      "pod",            "spec.volumes[name=vakt-identity].secret", "null"),
    ("!cert-manager !existing-secret !openshift", "pod", CSI_FS_GROUP, r#""65532""#),
    ("openshift",              "pod",            CSI_FS_GROUP, r#""1000680000""#),
    ("cert-manager existing-secret", "pod",      "spec.volumes[name=vakt-identity].secret.defaultMode", "288"),
    ("cert-manager existing-secret", "pod",      "spec.volumes[name=vakt-identity].csi", "null"),
    ("oidc",                   "pod",            "spec.volumes[name=vakt-pseudonym].secret.defaultMode", "288"),
    // vakt: the image's user, probes on the admin port, its two ports, read-only mounts that
    // follow their Secret or ConfigMap (a subPath mount never sees a rotated certificate).
    ("!openshift",             "vakt",           "securityContext.runAsUser", "65532"),
    ("!openshift",             "vakt",           "securityContext.runAsGroup", "65532"),
    ("*",                      "vakt",           "livenessProbe.httpGet.path", r#""/live""#),
    ("*",                      "vakt",           "livenessProbe.httpGet.port", "15021"),
    ("*",                      "vakt",           "readinessProbe.httpGet.path", r#""/ready""#),
    ("*",                      "vakt",           "readinessProbe.httpGet.port", "15021"),
    // A native sidecar (the default): the app starts once vakt is ready.
    ("!orders-chart-classic",  "vakt",           "restartPolicy", r#""Always""#),
    ("!orders-chart-classic",  "vakt",           "startupProbe.httpGet.path", r#""/ready""#),
    ("!orders-chart-classic",  "vakt",           "startupProbe.httpGet.port", "15021"),
    ("orders-chart-classic",   "vakt",           "startupProbe", "null"),
    ("*",                      "vakt",           "ports[*].containerPort", "[15443, 15021]"),
    ("!audit-file",            "vakt",           "volumeMounts[*].readOnly", "each true"),
    ("*",                      "vakt",           "volumeMounts[*].subPath", "each null"),
    // Transparent capture: the one container with privileges, exactly those it needs (root in
    // the pod's network namespace, NET_ADMIN) and no more, leaving vakt's UID alone; the app and
    // the pod's default UID are not vakt's.
    ("transparent",            "capture",        "args", r#"["net", "setup", "--proxy-uid=65532", "--outbound-port=15001", "--inbound-port=15443", "--admin-port=15021", "--inbound-ports=8080"]"#),
    ("transparent",            "capture",        "securityContext.runAsUser", "0"),
    ("transparent",            "capture",        "securityContext.capabilities", r#"{"drop": ["ALL"], "add": ["NET_ADMIN"]}"#),
    ("transparent",            "capture",        "securityContext.readOnlyRootFilesystem", "true"),
    ("transparent",            "capture",        "securityContext.allowPrivilegeEscalation", "false"),
    ("transparent",            "capture",        "securityContext.privileged", "false"),
    ("transparent",            "capture",        "securityContext.seccompProfile.type", RUNTIME_DEFAULT),
    ("transparent",            "capture",        "resources.limits.memory", "set"),
    ("transparent",            "apps",           "securityContext.runAsUser", "10001"),
    ("transparent",            "pod",            "spec.securityContext.runAsUser", "10001"),
    ("transparent",            "config",         "outbound.capture", r#""transparent""#),
    // The app's httpGet probes go to vakt's admin port, which answers only their paths.
    ("transparent",            "apps",           "readinessProbe.httpGet.port", "15021"),
    ("transparent",            "apps",           "readinessProbe.httpGet.path", r#""/app-health/healthz""#),
    ("transparent",            "config",         "inbound.app_probe_paths", r#"["/healthz"]"#),
    ("transparent",            "config",         "inbound.app_health", r#""/healthz""#),
    ("!transparent",           "config",         "inbound.app_probe_paths", "null"),
    // The audit trail: stdout by default; in files, on a volume of their own that only vakt
    // writes, the chain key from a Secret only vakt reads, checkpoints on another volume.
    ("!audit-file",            "config",         "audit.sink", r#""stdout""#),
    ("*",                      "config",         "audit.on_audit_failure", r#""deny""#),
    ("audit-file",             "config",         "audit.sink", r#""file""#),
    ("audit-file",             "config",         "audit.file.path", r#""/var/log/vakt/audit.log""#),
    ("audit-file",             "config",         "audit.file.fsync", r#""always""#),
    ("audit-file",             "config",         "audit.chain_key.key_file", r#""/var/run/vakt/audit-chain/key""#),
    ("audit-file",             "config",         "audit.checkpoint_file", r#""/var/lib/vakt-checkpoints/audit-checkpoints.jsonl""#),
    ("audit-file",             "config",         "audit.redact_patterns", r#"["\\bMRN-[0-9]{6,10}\\b"]"#),
    ("audit-file",             "pod",            "spec.volumes[name=vakt-audit-chain-key].secret.defaultMode", "288"),
    ("audit-file",             "pod",            "spec.volumes[name=vakt-audit].emptyDir.sizeLimit", r#""2Gi""#),
    ("audit-file",             "vakt",           "volumeMounts[name=vakt-audit-chain-key].readOnly", "true"),
    ("audit-file",             "vakt",           "volumeMounts[name=vakt-audit].readOnly", "null"),
    ("audit-file",             "apps",           "volumeMounts[name=vakt-audit]", "null"),
    ("audit-file",             "apps",           "volumeMounts[name=vakt-audit-chain-key]", "null"),
    // The apps: calls out through vakt; no port of their own, no access to vakt's keys.
    ("!existing-secret !transparent", "apps",    "env[name=HTTP_PROXY].value", PROXY),
    ("!existing-secret !transparent", "apps",    "env[name=http_proxy].value", PROXY),
    ("!existing-secret !transparent", "apps",    "env[name=NO_PROXY].value", r#""localhost,127.0.0.1,::1""#),
    ("existing-secret transparent", "apps",      "env[name=HTTP_PROXY]", "null"),
    ("*",                      "apps",           "ports", "null"),
    ("*",                      "apps",           "volumeMounts[name=vakt-identity]", "null"),
    ("*",                      "apps",           "volumeMounts[name=vakt-pseudonym]", "null"),
    // The network: the Service exposes the mTLS port only; ingress admits 15443 from the mesh
    // and 15021 (/metrics) from the monitoring namespace, each from someone, nothing else.
    ("*",                      "Service",        "spec.ports", SERVICE_PORTS),
    ("!egress-policy",         "NetworkPolicy",  "spec.policyTypes", r#"["Ingress"]"#),
    ("!egress-policy",         "NetworkPolicy",  "spec.egress", "null"),
    // Egress, when asked for: DNS to kube-dns, 15443 to the mesh, the identity providers (here
    // through an HTTPS proxy, on its port).
    ("egress-policy",          "NetworkPolicy",  "spec.policyTypes", r#"["Ingress", "Egress"]"#),
    ("egress-policy",          "NetworkPolicy",  "spec.egress[*].ports[*].port", "[53, 53, 15443, 3128]"),
    ("egress-policy",          "NetworkPolicy",  "spec.egress[0].to[0].podSelector.matchLabels", r#"{"k8s-app": "kube-dns"}"#),
    ("egress-policy",          "NetworkPolicy",  "spec.egress[2].to[0].ipBlock.cidr", r#""203.0.113.10/32""#),
    ("*",                      "NetworkPolicy",  "spec.ingress[*].ports[*].port", "[15443, 15021]"),
    ("*",                      "NetworkPolicy",  "spec.ingress[*].ports[*].protocol", r#"each "TCP""#),
    ("*",                      "NetworkPolicy",  "spec.ingress[*].from", "each set"),
    ("*",                      "NetworkPolicy",  ADMIN_FROM_NAMESPACE, r#"each "monitoring""#),
    ("defaults",               "NetworkPolicy",  "spec.ingress[0].from", MESH_NAMESPACES),
    ("monitoring",             "NetworkPolicy",  ADMIN_FROM_PODS, r#""prometheus""#),
    // The SVID: exactly one URI SAN, the workload's SPIFFE ID; no CN, no DNS name, not a CA.
    ("*",                      "Certificate",    "spec.commonName", "null"),
    ("*",                      "Certificate",    "spec.dnsNames", "null"),
    ("*",                      "Certificate",    "spec.isCA", "false"),
    ("*",                      "Certificate",    "spec.privateKey.algorithm", r#""ECDSA""#),
    ("*",                      "Certificate",    "spec.privateKey.size", "256"),
    ("*",                      "Certificate",    "spec.usages", USAGES),
    ("cert-manager",           "Certificate",    "spec.uris", HEALTH_JOURNAL),
    // Its approval: that SPIFFE ID only, from this namespace only, nothing else in the request.
    ("cert-manager",           "CertificateRequestPolicy", "spec.allowed", CRP_ALLOWED),
    ("*",                      "CertificateRequestPolicy", "spec.constraints.privateKey", r#"{"algorithm": "ECDSA", "minSize": 256, "maxSize": 256}"#),
    ("*",                      "CertificateRequestPolicy", "spec.selector.namespace", r#"{"matchNames": ["shop"]}"#),
    // The config vakt runs: its listeners where the ports and the NetworkPolicy expect them,
    // the app on loopback only, TLS 1.3, JSON logs.
    ("*",                      "config",         "admin.listen", r#""0.0.0.0:15021""#),
    ("*",                      "config",         "admin.workload", "starts shop/"),
    ("*",                      "config",         "inbound.listen", r#""0.0.0.0:15443""#),
    ("*",                      "config",         "inbound.app", "starts 127.0.0.1:"),
    ("!existing-secret",       "config",         "outbound.listen", r#""127.0.0.1:15001""#),
    ("existing-secret",        "config",         "outbound", "null"),
    ("*",                      "config",         "tls.min_version", r#""1.3""#),
    ("*",                      "config",         "log.format", r#""json""#),
];

const RUNTIME_DEFAULT: &str = r#""RuntimeDefault""#;
const PROXY: &str = r#""http://127.0.0.1:15001""#;
const SERVICE_PORTS: &str =
    r#"[{"name": "mtls", "port": 15443, "targetPort": "vakt-mtls", "protocol": "TCP"}]"#;
/// The peers the admin port admits (the rule after the mTLS port's).
const ADMIN_FROM_NAMESPACE: &str =
    r#"spec.ingress[1].from[*].namespaceSelector.matchLabels["kubernetes.io/metadata.name"]"#;
const ADMIN_FROM_PODS: &str =
    r#"spec.ingress[1].from[0].podSelector.matchLabels["app.kubernetes.io/name"]"#;
const MESH_NAMESPACES: &str =
    r#"[{"namespaceSelector": {"matchLabels": {"vakt.io/mesh": "enabled"}}}]"#;
const USAGES: &str = r#"["digital signature", "server auth", "client auth"]"#;
const HEALTH_JOURNAL: &str = r#"["spiffe://health.example.org/ns/shop/sa/journal"]"#;
const CRP_ALLOWED: &str = r#"{"isCA": false, "uris": {"values": ["spiffe://health.example.org/ns/shop/sa/journal"], "required": true}, "usages": ["digital signature", "server auth", "client auth"]}"#;
/// The renders whose identity comes from csi-driver-spiffe (every one but two).
const CSI: &str = "!cert-manager !existing-secret";
const CSI_FS_GROUP: &str = r#"spec.volumes[name=vakt-identity].csi.volumeAttributes["spiffe.csi.cert-manager.io/fs-group"]"#;

/// The kinds a row may name besides the roles `pod`, `vakt`, `apps`, `containers`, `config`.
const KINDS: &[&str] = &[
    "Service",
    "NetworkPolicy",
    "Certificate",
    "CertificateRequestPolicy",
    "ServiceAccount",
    "Deployment",
    "ConfigMap",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "PrometheusRule",
];

// ---- the table ---------------------------------------------------------------------------------

enum Step<'a> {
    Key(&'a str),
    Index(usize),
    Named(&'a str, &'a str),
    Each,
}

fn parse_field(field: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    let mut rest = field;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let (inside, after) = inner
                .split_once(']')
                .unwrap_or_else(|| panic!("field {field}: unclosed ["));
            steps.push(if inside == "*" {
                Step::Each
            } else if let Ok(i) = inside.parse() {
                Step::Index(i)
            } else if let Some(key) = inside.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
                Step::Key(key)
            } else if let Some((key, value)) = inside.split_once('=') {
                Step::Named(key, value)
            } else {
                panic!("field {field}: cannot read [{inside}]")
            });
            rest = after;
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            if end > 0 {
                steps.push(Step::Key(&rest[..end]));
            }
            rest = &rest[end..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    steps
}

static NULL: Value = Value::Null;

fn select<'v>(value: &'v Value, steps: &[Step], out: &mut Vec<&'v Value>) {
    let Some((step, rest)) = steps.split_first() else {
        out.push(value);
        return;
    };
    match step {
        Step::Key(key) => select(value.get(*key).unwrap_or(&NULL), rest, out),
        Step::Index(i) => select(value.get(*i).unwrap_or(&NULL), rest, out),
        Step::Named(key, name) => {
            let found = value
                .as_array()
                .and_then(|items| items.iter().find(|e| e[*key].as_str() == Some(*name)));
            select(found.unwrap_or(&NULL), rest, out)
        }
        Step::Each => {
            for item in value.as_array().into_iter().flatten() {
                select(item, rest, out);
            }
        }
    }
}

fn holds(value: &Value, expected: &str) -> bool {
    if expected == "set" {
        return !(value.is_null() || value == "" || value == &json!([]) || value == &json!({}));
    }
    if let Some(prefix) = expected.strip_prefix("starts ") {
        return value.as_str().is_some_and(|s| s.starts_with(prefix));
    }
    let expected: Value = serde_json::from_str(expected)
        .unwrap_or_else(|e| panic!("PROPERTIES: expected value {expected} is not JSON: {e}"));
    value == &expected
}

/// Why `object` breaks the row `field`/`expected`, if it does.
fn breaks(object: &Value, field: &str, expected: &str) -> Option<String> {
    let steps = parse_field(field);
    let mut values = Vec::new();
    select(object, &steps, &mut values);
    let found = if steps.iter().any(|s| matches!(s, Step::Each)) {
        Value::Array(values.iter().map(|v| (*v).clone()).collect())
    } else {
        values[0].clone()
    };
    let ok = match expected.strip_prefix("each ") {
        Some(each) => !values.is_empty() && values.iter().all(|v| holds(v, each)),
        None => holds(&found, expected),
    };
    (!ok).then(|| format!("{field}: expected {expected}, found {found}"))
}

fn applies(renders: &str, label: &str) -> bool {
    let (out, named): (Vec<&str>, Vec<&str>) =
        renders.split_whitespace().partition(|t| t.starts_with('!'));
    let included = named.is_empty() || named.contains(&"*") || named.contains(&label);
    included && !out.iter().any(|t| &t[1..] == label)
}

fn pods(r: &Rendered) -> Vec<&Value> {
    r.all("Deployment")
        .into_iter()
        .map(|d| &d["spec"]["template"])
        .collect()
}

fn is_vakt(container: &Value) -> bool {
    container["args"] == json!(["run", "--config", CONFIG_PATH])
}

/// The transparent-capture init container (`vakt net setup`).
fn is_capture(container: &Value) -> bool {
    container["args"][0] == "net" && container["args"][1] == "setup"
}

/// A pod template's init containers and containers.
fn pod_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    let spec = &pod["spec"];
    let init = spec["initContainers"].as_array().into_iter().flatten();
    init.chain(spec["containers"].as_array().into_iter().flatten())
}

fn containers(r: &Rendered) -> Vec<&Value> {
    pods(r).into_iter().flat_map(pod_containers).collect()
}

/// The workload's Service(s): not the headless one the ServiceMonitor scrapes.
fn workload_services(r: &Rendered) -> Vec<&Value> {
    r.all("Service")
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["vakt.io/metrics"].is_null())
        .collect()
}

fn objects<'r>(r: &'r Rendered, config: &'r Value, object: &str) -> Vec<&'r Value> {
    match object {
        "pod" => pods(r),
        "vakt" => containers(r).into_iter().filter(|c| is_vakt(c)).collect(),
        "capture" => containers(r)
            .into_iter()
            .filter(|c| is_capture(c))
            .collect(),
        "apps" => containers(r)
            .into_iter()
            .filter(|c| !is_vakt(c) && !is_capture(c))
            .collect(),
        "containers" => containers(r)
            .into_iter()
            .filter(|c| !is_capture(c))
            .collect(),
        "config" => vec![config],
        "Service" => workload_services(r),
        kind if KINDS.contains(&kind) => r.all(kind),
        other => panic!("PROPERTIES: unknown object {other}"),
    }
}

fn name_of(object: &Value) -> String {
    let name = &object["metadata"]["name"];
    let name = if name.is_null() {
        &object["name"]
    } else {
        name
    };
    name.as_str().unwrap_or("").to_owned()
}

/// The table names only renders and objects that exist, and every field parses.
fn check_table() {
    for (renders, object, field, _) in PROPERTIES {
        for name in renders
            .split_whitespace()
            .map(|t| t.trim_start_matches('!'))
        {
            assert!(
                name == "*" || RENDERS.iter().any(|r| r.name == name),
                "PROPERTIES: no render named {name}"
            );
        }
        assert!(
            ["pod", "vakt", "capture", "apps", "containers", "config"].contains(object)
                || KINDS.contains(object),
            "PROPERTIES: unknown object {object}"
        );
        parse_field(field);
    }
}

/// Every row of [`PROPERTIES`] that applies to `r`, then the checks below it.
pub(super) fn check(r: &Rendered) {
    check_table();
    let mesh = Mesh::of(r);
    let mut failures = Vec::new();
    for (renders, object, field, expected) in PROPERTIES {
        if !applies(renders, &r.label) {
            continue;
        }
        let found = objects(r, &mesh.config, object);
        if found.is_empty() && *renders != "*" && !renders.starts_with('!') {
            failures.push(format!("{object}: none in this render"));
        }
        for o in found {
            if let Some(why) = breaks(o, field, expected) {
                failures.push(format!("{object} {}: {why}", name_of(o)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "render {}: security properties (tests/e2e/helm/properties.rs) do not hold:\n  {}",
        r.label,
        failures.join("\n  ")
    );
    check_selectors_and_identity(r, &mesh);
    check_crds(r, &mesh.fullname);
}

/// The pods roll exactly when the sidecar config changes; the Service and the NetworkPolicy
/// select the workload's pods; the pods run as the account the certificate names and mount the
/// Secret cert-manager writes; every file vakt is configured to read is in a directory mounted
/// into its container.
fn check_selectors_and_identity(r: &Rendered, mesh: &Mesh) {
    let label = &r.label;
    let selector = json!({"vakt.io/workload": mesh.fullname});
    for svc in workload_services(r) {
        assert_eq!(svc["spec"]["selector"], selector, "{label}: Service");
    }
    let np = r.only("NetworkPolicy");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"], selector,
        "{label}: the NetworkPolicy protects the workload's pods"
    );
    let cert = r.all("Certificate");
    if let [cert] = cert.as_slice() {
        assert_eq!(cert["spec"]["uris"], json!([mesh.spiffe_id]), "{label}");
    }
    for pod in pods(r) {
        assert_eq!(
            pod["metadata"]["labels"]["vakt.io/workload"], mesh.fullname,
            "{label}: the pods carry the label the Service and the NetworkPolicy select"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["checksum/config"],
            sha256_hex(mesh.config_text.trim_end().as_bytes()),
            "{label}: checksum/config is the sha256 of the rendered sidecar config"
        );
        assert_eq!(
            pod["spec"]["serviceAccountName"], mesh.service_account,
            "{label}: the pods run as the account in the SPIFFE ID"
        );
        let config = &mesh.config;
        let federation = config["identity"]["federation"]
            .as_array()
            .into_iter()
            .flatten();
        let files = [
            Some(CONFIG_PATH),
            config["identity"]["cert"].as_str(),
            config["identity"]["key"].as_str(),
            config["identity"]["trust_bundle"].as_str(),
            config["inbound"]["policy"].as_str(),
            config["pseudonymisation"]["key_file"].as_str(),
            config["audit"]["chain_key"]["key_file"].as_str(),
            config["audit"]["file"]["path"].as_str(),
            config["audit"]["checkpoint_file"].as_str(),
        ]
        .into_iter()
        .chain(federation.map(|f| f["bundle"].as_str()));
        let vakt = pod_containers(pod).find(|c| is_vakt(c)).unwrap();
        let mounted: BTreeSet<&str> = vakt["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        for file in files.flatten() {
            let dir = file.rsplit_once('/').map_or("", |(dir, _)| dir);
            assert!(
                mounted.contains(dir),
                "{label}: vakt reads {file}, but {dir} is not mounted ({mounted:?})"
            );
        }
        check_identity_volume(r, mesh, pod);
    }
}

/// The identity volume fits its source. csi-driver-spiffe: the key files' group is one vakt
/// runs in, and the pod's account may create CertificateRequests (nothing else). cert-manager:
/// the pods mount the Secret the Certificate names, and approver-policy approves that SPIFFE ID
/// for that issuer, from this namespace, for cert-manager's controller only.
fn check_identity_volume(r: &Rendered, mesh: &Mesh, pod: &Value) {
    let label = &r.label;
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let identity = volumes
        .iter()
        .find(|v| v["name"] == "vakt-identity")
        .unwrap_or_else(|| panic!("{label}: no vakt-identity volume"));
    let roles = r.all("Role");
    let bindings = r.all("RoleBinding");
    let role_named = |name: &Value| {
        let role = roles.iter().find(|ro| &ro["metadata"]["name"] == name);
        role.unwrap_or_else(|| panic!("{label}: no Role {name}"))
    };
    if !identity["csi"].is_null() {
        let group = str_of(
            &identity["csi"]["volumeAttributes"]["spiffe.csi.cert-manager.io/fs-group"],
            "fs-group",
        );
        let vakt = pod_containers(pod).find(|c| is_vakt(c)).unwrap();
        let groups = [
            &pod["spec"]["securityContext"]["fsGroup"],
            &vakt["securityContext"]["runAsGroup"],
            &pod["spec"]["securityContext"]["runAsGroup"],
        ];
        assert!(
            groups
                .iter()
                .any(|g| g.as_i64().is_some_and(|g| g.to_string() == group))
                || label == "openshift",
            "{label}: the key files' group {group} is not one vakt runs in"
        );
        assert!(
            r.all("Certificate").is_empty(),
            "{label}: CSI and a Certificate"
        );
        assert!(r.all("CertificateRequestPolicy").is_empty(), "{label}");
        let [binding] = bindings.as_slice() else {
            panic!("{label}: one RoleBinding expected (the CSI driver's)")
        };
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": mesh.service_account, "namespace": NS}]),
            "{label}"
        );
        assert_eq!(
            role_named(&binding["roleRef"]["name"])["rules"],
            json!([{"apiGroups": ["cert-manager.io"], "resources": ["certificaterequests"], "verbs": ["create"]}]),
            "{label}: the pod's account may create CertificateRequests, nothing more"
        );
        return;
    }
    if let [cert] = r.all("Certificate").as_slice() {
        assert_eq!(
            identity["secret"]["secretName"], cert["spec"]["secretName"],
            "{label}: the pods mount the Secret cert-manager writes"
        );
        let policies = r.all("CertificateRequestPolicy");
        let [policy] = policies.as_slice() else {
            panic!("{label}: a Certificate without its CertificateRequestPolicy")
        };
        let spec = &policy["spec"];
        assert_eq!(spec["allowed"]["uris"]["values"], json!([mesh.spiffe_id]));
        assert_eq!(
            spec["selector"]["issuerRef"], cert["spec"]["issuerRef"],
            "{label}"
        );
        assert_eq!(spec["constraints"]["maxDuration"], cert["spec"]["duration"]);
        let [binding] = bindings.as_slice() else {
            panic!("{label}: one RoleBinding expected (approver-policy's)")
        };
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "cert-manager", "namespace": "cert-manager"}]),
            "{label}"
        );
        assert_eq!(
            role_named(&binding["roleRef"]["name"])["rules"],
            json!([{"apiGroups": ["policy.cert-manager.io"], "resources": ["certificaterequestpolicies"],
                    "verbs": ["use"], "resourceNames": [policy["metadata"]["name"]]}]),
            "{label}: cert-manager may use this policy, no other"
        );
    }
}

// ---- the CRD kinds kubernetes-validate cannot check --------------------------------------------

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
            "Certificate" => {
                let spec = &doc["spec"];
                for key in ["duration", "renewBefore", "secretName"] {
                    assert!(spec[key].is_string(), "{label}: Certificate {key}");
                }
                let issuer = &spec["issuerRef"];
                assert!(
                    issuer["kind"] == "Issuer" || issuer["kind"] == "ClusterIssuer",
                    "{label}: {issuer}"
                );
                assert_eq!(issuer["group"], "cert-manager.io", "{label}");
                assert!(!str_of(&issuer["name"], "issuerRef.name").is_empty());
            }
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
            // Checked against the Certificate it approves, in `check_identity_volume`.
            "CertificateRequestPolicy" => {}
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
    let selector = format!("vakt_workload=\"{NS}/{fullname}\"");
    for (alert, metric, matcher) in [
        ("VaktTargetDown", "vakt_build_info", "absent("),
        (
            "VaktJwksStale",
            "vakt_jwks_last_success_timestamp_seconds",
            "time() -",
        ),
        (
            "VaktTokenFailureSpike",
            "vakt_authn_failures_total",
            "rate(",
        ),
        (
            "VaktCertificateReloadFailing",
            "vakt_certificate_reloads_total",
            "offset 15m",
        ),
        (
            "VaktAuditEventsDropped",
            "vakt_audit_events_dropped_total",
            "offset 5m",
        ),
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
        (
            "VaktDpopReplayCacheFilling",
            "vakt_dpop_replay_cache_capacity",
            "vakt_dpop_replay_cache_entries{",
        ),
        // A new pod's series starts at 1: increase() alone would miss it.
        (
            "VaktAuditChainBroken",
            "vakt_audit_chain_breaks_total",
            "offset 15m",
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
            .contains("sum by (vakt_workload, route)"),
        "{label}: denials by route"
    );
    assert_eq!(rules.len(), 15, "{label}: {:?}", rules.keys());
    promtool_check(label, &doc["spec"]["groups"]);
}

/// `promtool check rules` on the rendered groups (JSON is YAML), where promtool is installed
/// (`scripts/test` installs it and sets VAKT_REQUIRE_PROMTOOL).
fn promtool_check(label: &str, groups: &Value) {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("VAKT_REQUIRE_PROMTOOL").is_none(),
            "promtool is required but not installed"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, json!({ "groups": groups }).to_string()).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{label}: promtool check rules on the chart's rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- the metrics catalogue ---------------------------------------------------------------------

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
        // The workload label (a matcher, or in `by (...)`), not a metric.
        if name == "vakt_workload" {
            rest = &tail[end..];
            continue;
        }
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

pub(super) fn check_dashboard_json(json_text: &str) {
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
