//! No raw national id in any output. Valid ids of every supported format are sent in many
//! positions (no route, wrong method, `/**` route, bound and unbound `{param}`, query strings,
//! refused tokens, invalid paths, near misses, HEAD, HTTP/1.1 and HTTP/2, straight to the server
//! sidecar and through the client sidecar, header values, Host, request ids) through two real
//! `vakt` processes logging at debug. Then the audit files, both processes' stdout and stderr,
//! `/metrics` and every response are searched for each id, as sent and without separators.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::Value;
use vakt::authn::Loa;
use vakt::dev::idp::{self as devidp, DevIdp, KeyStore, MintOptions, Person};
use vakt::dev::mesh::{DevPki, EchoApp, base_config_yaml, write_policy};
use vakt::pseudonym::{KIND_NATIONAL_ID, Pseudonymiser};

use crate::common::*;

const KEY: &str = "redaction-test-key-0123456789abcdefghij";

const POLICY: &str = r#"
routes:
  - id: journal
    methods: [GET]
    path: /patients/{pid}/journal
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
        min_loa: high
        bind: { pid: national_id }
  - id: notes
    methods: [GET]
    path: /cases/{case}/notes
    token: optional
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
  - id: files
    methods: [GET, HEAD]
    path: /files/**
    token: optional
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
"#;

use vakt::nid::examples::{fi as fi_id, no_any as no_id, se as se_id};

/// One id: as sent, and the form its pseudonym is made of (the identity providers' claim form).
struct Id {
    name: &'static str,
    raw: String,
    canonical: String,
}

fn ids() -> Vec<Id> {
    let fnr = no_id("311299", 567);
    let dnr = no_id("450385", 100); // D-number: 5 March 1985, day + 40
    let se10 = se_id("850709980");
    let se12 = format!("19{}", se_id("700101123"));
    let dk = "070890-1234".to_owned();
    // The Danish number is not also a Swedish one (it has no check of its own).
    let dk_digits = dk.replace('-', "");
    assert_ne!(se_id(&dk_digits[..9]), dk_digits);
    let hetu = fi_id("131052", '-', "308");
    assert_eq!(hetu, "131052-308T", "the published example");
    vec![
        Id {
            name: "NO fødselsnummer",
            canonical: fnr.clone(),
            raw: fnr,
        },
        Id {
            name: "NO D-number",
            canonical: dnr.clone(),
            raw: dnr,
        },
        Id {
            name: "SE personnummer (10)",
            canonical: format!("19{se10}"),
            raw: format!("{}-{}", &se10[..6], &se10[6..]),
        },
        Id {
            name: "SE personnummer (12)",
            canonical: se12.clone(),
            raw: se12,
        },
        Id {
            name: "DK CPR",
            canonical: dk.replace('-', ""),
            raw: dk,
        },
        Id {
            name: "FI HETU",
            canonical: hetu.clone(),
            raw: hetu,
        },
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// mTLS straight to the server sidecar, as the allowed peer.
    Direct,
    /// Plain HTTP to the client sidecar's outbound listener.
    Outbound,
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    H1,
    H2,
}

struct Mesh {
    inbound: SocketAddr,
    outbound: SocketAddr,
    web_h1: Arc<rustls::ClientConfig>,
    web_h2: Arc<rustls::ClientConfig>,
}

impl Mesh {
    async fn send(
        &self,
        via: Via,
        proto: Proto,
        req: Request<TestBody>,
    ) -> hyper::Result<Response<Incoming>> {
        match (via, proto) {
            (Via::Direct, Proto::H1) => {
                let tls = mtls_connect(self.inbound, self.web_h1.clone())
                    .await
                    .unwrap();
                h1_send(tls, req).await
            }
            (Via::Direct, Proto::H2) => {
                let tls = mtls_connect(self.inbound, self.web_h2.clone())
                    .await
                    .unwrap();
                h2_send(tls, req).await
            }
            (Via::Outbound, Proto::H1) => {
                let tcp = tokio::net::TcpStream::connect(self.outbound).await.unwrap();
                h1_send(tcp, req).await
            }
            (Via::Outbound, Proto::H2) => {
                let tcp = tokio::net::TcpStream::connect(self.outbound).await.unwrap();
                h2_send(tcp, req).await
            }
        }
    }
}

/// One request: where it goes, what it carries, and the path its server-side audit event must
/// show (`None`: not checked).
struct Case {
    via: Via,
    proto: Proto,
    method: &'static str,
    /// Origin form for HTTP/1.1; made absolute for HTTP/2.
    target: String,
    host: String,
    headers: Vec<(&'static str, String)>,
    status: u16,
    server_path: Option<String>,
}

fn case(via: Via, proto: Proto, method: &'static str, target: String, status: u16) -> Case {
    Case {
        via,
        proto,
        method,
        target,
        host: "orders.shop".into(),
        headers: Vec::new(),
        status,
        server_path: None,
    }
}

impl Case {
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
    fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }
    fn logged_as(mut self, path: String) -> Self {
        self.server_path = Some(path);
        self
    }
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_national_id_in_any_output() {
    init();
    let ids = ids();
    let [fnr, dnr, se10, se12, dk, fi] = [0, 1, 2, 3, 4, 5].map(|i| ids[i].raw.clone());
    let pseudonyms = Pseudonymiser::from_secret("k1", KEY.as_bytes());
    let p = |i: usize| pseudonyms.pseudonym(KIND_NATIONAL_ID, &ids[i].canonical);

    // The issuer, the app, the PKI, and both sidecars as processes of their own.
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open_or_create(keys_dir.path()).unwrap());
    let idp = DevIdp::start("127.0.0.1:0".parse().unwrap(), keys, "/auth/realms/test")
        .await
        .unwrap();
    let pki = DevPki::new(TD).unwrap();
    let app = EchoApp::start().await.unwrap();
    let server_id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &server_id).unwrap();
    let web_dir = pki.workload("web", &pki.spiffe_id("shop", "web")).unwrap();
    let key_file = pki.path().join("pseudonym.key");
    std::fs::write(&key_file, KEY).unwrap();
    let pseudonymisation = format!(
        "pseudonymisation:\n  key_file: {}\n  key_id: k1\n",
        key_file.display()
    );
    let policy = write_policy(&dir, POLICY).unwrap();
    let (inbound, outbound) = (free_port(), free_port());
    let server_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let client_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server_yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:{inbound}\n  app: {}\n  policy: {}\n{pseudonymisation}oidc:\n  issuers:\n    - issuer: {}\n      profile: helseid\n      audiences: [journal-api]\n      algorithms: [RS256]\n      allow_insecure_loopback: true\n      dpop:\n        required: false\n",
        base_config_yaml(&dir, TD).replace("127.0.0.1:0", &server_admin.to_string()),
        app.addr,
        policy.display(),
        idp.issuer
    );
    let client_yaml = format!(
        "{}outbound:\n  listen: 127.0.0.1:{outbound}\n  upstreams:\n  - authority: orders.shop\n    address: 127.0.0.1:{inbound}\n    spiffe_id: {server_id}\n{pseudonymisation}",
        base_config_yaml(&web_dir, TD).replace("127.0.0.1:0", &client_admin.to_string()),
    );
    let mut server = spawn_vakt("server", &dir, &server_yaml, server_admin);
    let mut client = spawn_vakt("client", &web_dir, &client_yaml, client_admin);
    wait_ready(&server).await;
    wait_ready(&client).await;

    let token = idp
        .mint(
            devidp::claims(
                vakt::authn::Profile::Helseid,
                &Person {
                    sub: "citizen-1".into(),
                    national_id: Some(fnr.clone()),
                    level: Loa::High,
                    amr: vec!["BankID".into()],
                    client_id: "journal-web".into(),
                    scopes: vec!["journal.read".into()],
                    audience: "journal-api".into(),
                    ..Person::default()
                },
            ),
            &MintOptions::default(),
        )
        .unwrap();
    let mesh = Mesh {
        inbound: format!("127.0.0.1:{inbound}").parse().unwrap(),
        outbound: format!("127.0.0.1:{outbound}").parse().unwrap(),
        web_h1: raw_client_config(Some(&web_dir), &dir, &server_id, &[b"http/1.1"]),
        web_h2: raw_client_config(Some(&web_dir), &dir, &server_id, &[b"h2"]),
    };

    use Proto::*;
    use Via::*;
    let nosep = |s: &str| s.replace(['-', '+'], "");
    let cases = vec![
        // No route, wrong method, near miss.
        case(Direct, H1, "GET", format!("/records/{fnr}/journal"), 403)
            .logged_as(format!("/records/{}/journal", p(0))),
        case(Direct, H2, "GET", format!("/records/{fi}"), 403)
            .logged_as(format!("/records/{}", p(5))),
        case(Direct, H1, "GET", format!("/records/{}", nosep(&se10)), 403)
            .logged_as(format!("/records/{}", p(2))),
        case(Direct, H1, "POST", format!("/cases/{dnr}/notes"), 405)
            .logged_as(format!("/cases/{}/notes", p(1))),
        case(Direct, H2, "DELETE", format!("/files/{se12}"), 405)
            .logged_as(format!("/files/{}", p(3))),
        case(Direct, H1, "GET", format!("/cases/{se10}/notes/"), 403)
            .logged_as(format!("/cases/{}/notes/", p(2))),
        case(Direct, H1, "GET", format!("/records/x%3D{se12}"), 403)
            .logged_as(format!("/records/x%3D{}", p(3))),
        // The rest of a `/**` route, an unbound `{param}`, query strings.
        case(Direct, H1, "GET", format!("/files/{se10}/scan.pdf"), 200)
            .logged_as(format!("/files/{}/scan.pdf", p(2))),
        case(Direct, H2, "GET", format!("/cases/{se12}/notes"), 200)
            .logged_as(format!("/cases/{}/notes", p(3))),
        case(Direct, H1, "GET", format!("/files/{}", nosep(&dk)), 200)
            .logged_as(format!("/files/{}", p(4))),
        case(
            Direct,
            H1,
            "GET",
            format!("/files/report?pid={fnr}&cpr={dk}&fi={fi}"),
            200,
        )
        .logged_as("/files/report".into()),
        // Tokens: refused, missing, and valid for the id bound in the path.
        case(Direct, H1, "GET", format!("/patients/{dnr}/journal"), 401)
            .header("authorization", "Bearer not.a.jwt")
            .logged_as(format!("/patients/{}/journal", p(1))),
        case(Direct, H1, "GET", format!("/patients/{fnr}/journal"), 401)
            .logged_as(format!("/patients/{}/journal", p(0))),
        case(Direct, H1, "GET", format!("/patients/{fnr}/journal"), 200)
            .header("authorization", &format!("Bearer {token}"))
            .logged_as(format!("/patients/{}/journal", p(0))),
        // Paths refused as invalid.
        // (Their events keep the target's plain segments, the ids among them pseudonymised.)
        case(Direct, H1, "GET", format!("/files/{dk}%2Fx"), 400).logged_as("/files/*".into()),
        case(Direct, H1, "GET", format!("/files/{fi};v=1"), 400).logged_as("/files/*".into()),
        case(Direct, H1, "GET", format!("/files/{fnr}/a%2Fb"), 400)
            .logged_as(format!("/files/{}/*", p(0))),
        case(
            Direct,
            H2,
            "GET",
            format!("/records/{fi}/x;y?pid={dnr}"),
            400,
        )
        .logged_as(format!("/records/{}/*", p(5))),
        case(Direct, H2, "GET", format!("/files/a/../../{fnr}"), 403)
            .logged_as(format!("/{}", p(0))),
        // HEAD.
        case(Direct, H1, "HEAD", format!("/records/{dk}"), 403)
            .logged_as(format!("/records/{}", p(4))),
        case(Direct, H2, "HEAD", format!("/files/{fnr}"), 200)
            .logged_as(format!("/files/{}", p(0))),
        // Header values, Host and request ids.
        case(Direct, H1, "GET", "/files/ok".into(), 200)
            .header("x-custom", &fnr)
            .header("x-patient", &format!("pid={fi}"))
            .logged_as("/files/ok".into()),
        case(Direct, H1, "GET", format!("/files/{se12}"), 400)
            .host(&fnr)
            .logged_as(format!("/files/{}", p(3))),
        case(Direct, H1, "GET", "/files/ok".into(), 200)
            .host(&format!("{fi}.shop"))
            .logged_as("/files/ok".into()),
        case(Direct, H1, "GET", "/files/ok".into(), 200).header("x-request-id", &dnr),
        case(Direct, H1, "GET", "/files/ok".into(), 200)
            .header("x-request-id", &format!("req-{se12}")),
        // Through the client sidecar.
        case(Outbound, H1, "GET", format!("/records/{se12}"), 403)
            .logged_as(format!("/records/{}", p(3))),
        case(Outbound, H1, "GET", format!("/files/{dk}/a"), 200)
            .logged_as(format!("/files/{}/a", p(4))),
        case(Outbound, H2, "GET", format!("/cases/{fi}/notes"), 200)
            .logged_as(format!("/cases/{}/notes", p(5))),
        case(Outbound, H1, "PUT", format!("/files/{fnr}"), 405)
            .logged_as(format!("/files/{}", p(0))),
        case(
            Outbound,
            H1,
            "GET",
            format!("/files/q?x={dnr}&y={}", nosep(&se10)),
            200,
        )
        .logged_as("/files/q".into()),
        case(Outbound, H1, "GET", format!("/cases/{dnr}/notes"), 401)
            .header("authorization", "Bearer not.a.jwt")
            .header("x-custom", &dk),
        case(Outbound, H1, "GET", "/files/ok".into(), 403).host(&format!("{fnr}.example")),
        case(Outbound, H1, "GET", "/files/ok".into(), 403).host(&format!("{fi}.example")),
        case(Outbound, H1, "GET", format!("/files/{dk}%2F1"), 400),
        case(Outbound, H1, "HEAD", format!("/records/{fi}"), 403)
            .logged_as(format!("/records/{}", p(5))),
        case(Outbound, H2, "HEAD", format!("/files/{fi}"), 200)
            .logged_as(format!("/files/{}", p(5))),
    ];

    // Every response, head and body, is an output too.
    let mut responses = String::new();
    for (n, c) in cases.iter().enumerate() {
        let request_id = format!("redaction-case-{n}");
        let target = match c.proto {
            H1 => c.target.clone(),
            H2 => format!(
                "{}://{}{}",
                if c.via == Direct { "https" } else { "http" },
                c.host,
                c.target
            ),
        };
        let mut req = Request::builder().method(c.method).uri(&target);
        if c.proto == H1 {
            req = req.header("host", &c.host);
        }
        if !c.headers.iter().any(|(name, _)| *name == "x-request-id") {
            req = req.header("x-request-id", &request_id);
        }
        for (name, value) in &c.headers {
            req = req.header(*name, value);
        }
        let response = mesh
            .send(c.via, c.proto, req.body(Full::default()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("case {n} {} {target}: {e}", c.method));
        let status = response.status().as_u16();
        let head: HeaderMap = response.headers().clone();
        let body = body_string(response).await;
        assert_eq!(status, c.status, "case {n} {} {target}: {body}", c.method);
        responses.push_str(&format!("{status} {head:?} {body}\n"));
    }
    let metrics = format!(
        "{}\n{}",
        metrics_text(server.admin).await,
        metrics_text(client.admin).await
    );
    stop(&mut server).await;
    stop(&mut client).await;

    // The events carry the pseudonym where the id was.
    let server_events = events(&dir.join("audit.log"));
    let client_events = events(&web_dir.join("audit.log"));
    let event_of = |events: &[Value], n: usize| -> Option<Value> {
        let id = format!("redaction-case-{n}");
        events
            .iter()
            .find(|e| e["request_id"] == id.as_str())
            .cloned()
    };
    let mut checked = 0;
    for (n, c) in cases.iter().enumerate() {
        let Some(path) = &c.server_path else {
            continue;
        };
        let event = event_of(&server_events, n)
            .unwrap_or_else(|| panic!("case {n}: no server event for {}", c.target));
        assert_eq!(event["path"], path.as_str(), "case {n}: {event}");
        if c.via == Outbound {
            // The client sidecar's event: no path today; if one is added, the redacted one.
            let event = event_of(&client_events, n).expect("client event");
            assert!(
                event["path"].is_null() || event["path"] == path.as_str(),
                "case {n} (client): {event}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked} paths checked");
    // The bound route's pseudonym and the token's national id pseudonym are one.
    let bound = event_of(&server_events, 13).unwrap();
    assert_eq!(bound["decision"], "allow", "{bound}");
    assert_eq!(bound["national_id_pseudonym"], p(0).as_str(), "{bound}");
    // A request id holding an id was replaced, not logged.
    let replaced = server_events
        .iter()
        .filter(|e| {
            e["request_id"]
                .as_str()
                .is_some_and(|id| !id.starts_with("redaction-case-"))
        })
        .count();
    assert!(replaced >= 2, "{replaced} replaced request ids");

    // Every output, searched for every id as sent and without separators, ignoring case (hosts
    // are lower-cased, a Finnish check letter may be either).
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let outputs = [
        ("server audit", read(&dir.join("audit.log"))),
        ("client audit", read(&web_dir.join("audit.log"))),
        ("server stdout", read(&server.stdout)),
        ("server stderr", read(&server.stderr)),
        ("client stdout", read(&client.stdout)),
        ("client stderr", read(&client.stderr)),
        ("metrics", metrics),
        ("responses", responses),
    ];
    // The logs are really at debug (so a leak there would be seen).
    assert!(
        outputs[2..6].iter().any(|(_, text)| text.contains("DEBUG")),
        "no debug log lines captured"
    );
    let mut leaks = Vec::new();
    for id in &ids {
        let mut forms = vec![id.raw.clone(), nosep(&id.raw), id.canonical.clone()];
        forms.sort();
        forms.dedup();
        for (output, text) in &outputs {
            let text = text.to_ascii_lowercase();
            for form in &forms {
                if let Some(at) = text.find(&form.to_ascii_lowercase()) {
                    let around =
                        &text.as_bytes()[at.saturating_sub(120)..(at + 120).min(text.len())];
                    leaks.push(format!(
                        "{} {form} in {output}: …{}…",
                        id.name,
                        String::from_utf8_lossy(around)
                    ));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "raw national ids found:\n{}",
        leaks.join("\n")
    );
    // The app did receive them: the sidecars redact what they log, not what they forward.
    assert!(app.seen().iter().any(|s| s.path_and_query.contains(&fnr)));
}

/// docs/HEADERS.md describes every identity header vakt can set for the app.
#[test]
fn every_identity_header_is_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/HEADERS.md")).unwrap();
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/authn/rendered.rs"
    ))
    .unwrap();
    let mut names = 0;
    for name in source.split('"').filter(|s| s.starts_with("x-vakt-")) {
        names += 1;
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "docs/HEADERS.md: no row for {name}"
        );
    }
    assert!(names >= 10, "{names}");
    assert!(doc.contains("| `x-vakt-national-id` |"));
}
