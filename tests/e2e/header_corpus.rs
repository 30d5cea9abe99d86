//! Header names the app may read as identity, through the real two-hop mesh (raw HTTP/1.1 and
//! HTTP/2 from the app to its client vakt, mTLS between the sidecars, then the recording app):
//! a generated corpus of spellings of every protected and default-stripped name, and a
//! property-style run over random spellings. Each variant is either refused with
//! `invalid_header_name` or arrives stripped; control headers arrive intact.

use std::net::SocketAddr;

use crate::common::*;
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vakt::app::App;
use vakt::config::Config;
use vakt::dev::mesh::{SeenRequest, base_config_yaml};
use vakt::hygiene::names::{DEFAULT_STRIPPED, PROTECTED, VALIDATED, normalise};
use vakt::xorshift::XorShift;

/// Every value a test sends under a probed name contains this; no header the app sees may.
const FORGED: &str = "forged";

/// A client vakt like `client_sidecar`, with `extra` appended to its config.
async fn client_with(server: &Server, extra: &str) -> App {
    let pki = &server.pki;
    let dir = pki.workload("web", &pki.spiffe_id("shop", "web")).unwrap();
    let yaml = format!(
        "{}outbound:\n  listen: 127.0.0.1:0\n  upstreams:\n  - authority: orders.shop\n    address: {}\n    spiffe_id: {}\n{extra}",
        base_config_yaml(&dir, TD),
        server.addr(),
        server.id
    );
    App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap()
}

/// A two-hop mesh whose sidecars both run `hygiene` (YAML lines under `hygiene:`).
struct Mesh {
    server: Server,
    client: App,
}

impl Mesh {
    async fn start(hygiene: &str, inbound_extra: &str) -> Self {
        let section = format!("hygiene:\n{hygiene}");
        let server = server(&["web"], &format!("{inbound_extra}{section}")).await;
        let client = client_with(&server, &section).await;
        Self { server, client }
    }

    fn outbound(&self) -> SocketAddr {
        self.client.outbound_addr.unwrap()
    }

    /// The request the app saw with `x-corpus-id: id`.
    fn seen(&self, id: usize) -> Option<SeenRequest> {
        let id = id.to_string();
        let seen = self.server.app.seen.lock().unwrap();
        seen.iter()
            .rev()
            .find(|r| {
                r.headers
                    .get("x-corpus-id")
                    .is_some_and(|v| v == id.as_str())
            })
            .cloned()
    }
}

/// The names to probe: every protected and default-stripped entry (a family with a member
/// name), and the checked-and-kept names in their `_` spelling.
fn probed_names() -> Vec<String> {
    let mut names: Vec<String> = PROTECTED
        .iter()
        .chain(DEFAULT_STRIPPED)
        .map(|e| {
            if e.prefix {
                format!("{}probe", e.name)
            } else {
                e.name.to_owned()
            }
        })
        .collect();
    names.extend(
        VALIDATED
            .iter()
            .filter(|e| e.name.contains('-'))
            .map(|e| e.name.replace('-', "_")),
    );
    names
}

/// Whether a name the app received is one vakt must have removed or set itself.
fn listed(name: &str) -> bool {
    let n = normalise(name);
    PROTECTED.iter().chain(DEFAULT_STRIPPED).any(|e| {
        if e.prefix {
            n.starts_with(e.name)
        } else {
            n == e.name
        }
    })
}

/// Spellings of one name: case and `-`/`_` mixes.
fn spellings(name: &str) -> Vec<String> {
    let title: String = name
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-");
    let alternating: String = {
        let mut dash = false;
        name.chars()
            .map(|c| match c {
                '-' | '_' => {
                    dash = !dash;
                    if dash { '_' } else { '-' }
                }
                c => c,
            })
            .collect()
    };
    let mut out = vec![
        name.to_owned(),
        name.to_ascii_uppercase(),
        title.clone(),
        name.replace('-', "_"),
        name.replace('-', "_").to_ascii_uppercase(),
        title.replace('-', "_"),
        alternating,
    ];
    out.sort();
    out.dedup();
    out
}

/// One raw HTTP/1.1 request (names exactly as given) on a fresh connection: (status, body).
async fn raw_h1(addr: SocketAddr, lines: &[(String, String)]) -> (u16, String) {
    let mut head =
        String::from("POST /corpus HTTP/1.1\r\nHost: orders.shop\r\nConnection: close\r\n");
    for (name, value) in lines {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

/// One HTTP/2 request (prior knowledge) on a fresh connection: (status, body).
async fn h2(addr: SocketAddr, lines: &[(String, String)]) -> (u16, String) {
    let mut req = Request::post("http://orders.shop/corpus");
    for (name, value) in lines {
        req = req.header(name.to_ascii_lowercase(), value);
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let response = h2_send(tcp, req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, body_string(response).await)
}

/// What the app must never see, whatever was sent: a forged value anywhere, a listed name
/// other than the ones vakt sets, more than one line of those, a joined value.
fn assert_clean(headers: &HeaderMap, context: &str) {
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains(FORGED),
            "{context}: the app received {name}: {value}"
        );
        if listed(name.as_str()) {
            let set_by_vakt = [
                "x-forwarded-client-cert",
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-real-ip",
            ];
            assert!(
                set_by_vakt.contains(&name.as_str()),
                "{context}: the app received {name}: {value}"
            );
            assert_eq!(
                headers.get_all(name).iter().count(),
                1,
                "{context}: several {name} lines"
            );
            assert!(!value.contains(','), "{context}: joined {name}: {value}");
        }
    }
}

/// What vakt sets inbound with `forwarded: set`, from what it verified.
fn assert_forwarded_set(headers: &HeaderMap, context: &str) {
    let one = |name: &str| {
        let all: Vec<_> = headers.get_all(name).iter().collect();
        assert_eq!(all.len(), 1, "{context}: {name} {all:?}");
        all[0].to_str().unwrap().to_owned()
    };
    assert_eq!(one("x-forwarded-for"), "127.0.0.1", "{context}");
    assert_eq!(one("x-real-ip"), "127.0.0.1", "{context}");
    assert_eq!(one("x-forwarded-proto"), "https", "{context}");
    assert_eq!(one("x-forwarded-host"), "orders.shop", "{context}");
    assert_eq!(
        one("forwarded"),
        "for=127.0.0.1;host=\"orders.shop\";proto=https",
        "{context}"
    );
    assert!(!headers.contains_key("x-forwarded-port"), "{context}");
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Drop,
    Reject,
    Allow,
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    H1,
    H2,
}

/// Send one variant (with control headers) and check the outcome; returns whether it was
/// refused.
async fn probe(
    mesh: &Mesh,
    mode: Mode,
    transport: Transport,
    id: usize,
    variant: &[(String, String)],
) -> bool {
    let mut lines = vec![
        ("x-corpus-id".to_owned(), id.to_string()),
        ("X-Custom-Ok".to_owned(), "kept".to_owned()),
        ("Accept".to_owned(), "text/plain".to_owned()),
    ];
    lines.extend_from_slice(variant);
    let context = format!("{mode:?} {transport:?} #{id} {variant:?}");
    let (status, body) = match transport {
        Transport::H1 => raw_h1(mesh.outbound(), &lines).await,
        Transport::H2 => h2(mesh.outbound(), &lines).await,
    };
    let has_underscore = variant.iter().any(|(n, _)| n.contains('_'));
    if mode == Mode::Reject && has_underscore {
        assert_eq!(status, 400, "{context}: {body}");
        assert!(
            body.contains("\"error\":\"invalid_header_name\""),
            "{context}: {body}"
        );
        assert!(mesh.seen(id).is_none(), "{context}: reached the app");
        return true;
    }
    assert_eq!(status, 200, "{context}: {body}");
    let seen = mesh
        .seen(id)
        .unwrap_or_else(|| panic!("{context}: not at the app"));
    assert_clean(&seen.headers, &context);
    assert_eq!(
        seen.headers.get("x-custom-ok").unwrap(),
        "kept",
        "{context}"
    );
    assert_eq!(
        seen.headers.get("accept").unwrap(),
        "text/plain",
        "{context}"
    );
    assert_forwarded_set(&seen.headers, &context);
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_of_identity_header_spellings_is_refused_or_stripped_over_h1_and_h2() {
    let mut variants = 0usize;
    let mut refused = 0usize;
    let mut id = 0usize;
    for (mode, hygiene) in [
        (Mode::Drop, "  underscore_headers: drop\n"),
        (Mode::Reject, "  underscore_headers: reject\n"),
        (Mode::Allow, "  underscore_headers: allow\n"),
    ] {
        let mesh = Mesh::start(hygiene, "").await;
        let denied = [("direction", "outbound"), ("reason", "invalid_header_name")];
        let admin = mesh.client.admin_addr;
        let denied_before = metric_sum(
            &metrics_text(admin).await,
            "vakt_requests_denied_total",
            &denied,
        );
        let refused_before = refused;
        for name in probed_names() {
            let spelt = spellings(&name);
            for transport in [Transport::H1, Transport::H2] {
                let mut cases: Vec<Vec<(String, String)>> = match transport {
                    // HTTP/1.1 carries the case as sent (vakt reads names case-insensitively).
                    Transport::H1 => spelt
                        .iter()
                        .map(|s| vec![(s.clone(), format!("{FORGED}-1"))])
                        .collect(),
                    // HTTP/2 names are lower case on the wire: one per `-`/`_` spelling.
                    Transport::H2 => {
                        let mut lower: Vec<String> =
                            spelt.iter().map(|s| s.to_ascii_lowercase()).collect();
                        lower.sort();
                        lower.dedup();
                        lower
                            .into_iter()
                            .map(|s| vec![(s, format!("{FORGED}-1"))])
                            .collect()
                    }
                };
                // Duplicates: the name twice, and the name beside its `_` spelling.
                cases.push(vec![
                    (name.clone(), format!("{FORGED}-a")),
                    (name.clone(), format!("{FORGED}-b")),
                ]);
                if name.contains('-') {
                    cases.push(vec![
                        (name.clone(), format!("{FORGED}-a")),
                        (name.replace('-', "_"), format!("{FORGED}-b")),
                    ]);
                }
                for case in cases {
                    id += 1;
                    variants += 1;
                    if probe(&mesh, mode, transport, id, &case).await {
                        refused += 1;
                    }
                }
            }
        }
        // Every refusal is counted under its reason code.
        let want = denied_before + (refused - refused_before) as f64;
        let got = wait_for_metric(admin, "vakt_requests_denied_total", &denied, want).await;
        assert!(got >= want, "{mode:?}: {got} < {want}");
        // Control headers with `_`: removed (drop), refused (reject) or passed (allow).
        id += 1;
        let lines = vec![
            ("x-corpus-id".to_owned(), id.to_string()),
            ("X_Custom_Ok".to_owned(), "underscored".to_owned()),
        ];
        let (status, body) = raw_h1(mesh.outbound(), &lines).await;
        match mode {
            Mode::Reject => assert_eq!(status, 400, "{body}"),
            Mode::Drop => {
                assert_eq!(status, 200, "{body}");
                assert!(!mesh.seen(id).unwrap().headers.contains_key("x_custom_ok"));
            }
            Mode::Allow => {
                assert_eq!(status, 200, "{body}");
                assert_eq!(
                    mesh.seen(id).unwrap().headers.get("x_custom_ok").unwrap(),
                    "underscored"
                );
            }
        }
    }
    println!(
        "header corpus: {variants} variants sent through the two-hop mesh, {refused} refused with invalid_header_name, {} stripped, 0 reached the app",
        variants - refused
    );
    assert!(variants >= 300, "only {variants} variants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_an_underscore_name_from_another_sidecar_in_reject_mode() {
    let server = server(&["web"], "hygiene:\n  underscore_headers: reject\n").await;
    for (name, status) in [
        ("x_vakt_loa", 400),
        ("x_custom_ok", 400),
        ("x-custom-ok", 200),
    ] {
        let tls = mtls_connect(server.addr(), web_client_config(&server))
            .await
            .unwrap();
        let req = Request::get("https://orders.shop/direct")
            .header("host", "orders.shop")
            .header(name, "forged-direct")
            .body(Full::default())
            .unwrap();
        let response = h1_send(tls, req).await.unwrap();
        assert_eq!(response.status(), status, "{name}");
        let body = body_string(response).await;
        if status == 400 {
            assert!(body.contains("\"error\":\"invalid_header_name\""), "{body}");
        }
    }
    let seen = server.app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers.get("x-custom-ok").unwrap(), "forged-direct");
}

/// A random spelling of `name`: each letter's case and each `-` (as `-` or `_`) chosen at random.
/// A name vakt keeps under its own spelling (`x-request-id`) keeps at least one `_`.
fn random_spelling(rng: &mut XorShift, name: &str) -> String {
    let spelt: String = name
        .chars()
        .map(|c| match c {
            '-' | '_' => {
                if rng.below(2) == 0 {
                    '-'
                } else {
                    '_'
                }
            }
            c if rng.below(2) == 0 => c.to_ascii_uppercase(),
            c => c,
        })
        .collect();
    let kept_as_spelt = VALIDATED.iter().any(|e| normalise(&spelt) == e.name);
    if kept_as_spelt && !spelt.contains('_') {
        spelt.replacen('-', "_", 1)
    } else {
        spelt
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_random_spelling_of_a_listed_name_reaches_the_app() {
    let names = probed_names();
    let mut rng = XorShift(XorShift::SEED);
    let mut sent = 0usize;
    let mut id = 0usize;
    for (mode, hygiene) in [
        (Mode::Allow, "  underscore_headers: allow\n"),
        (Mode::Drop, "  underscore_headers: drop\n"),
    ] {
        let mesh = Mesh::start(hygiene, "").await;
        for _ in 0..40 {
            // Eight random spellings per request, each name possibly twice.
            let lines: Vec<(String, String)> = (0..8)
                .map(|i| {
                    let name = &names[rng.below(names.len())];
                    (random_spelling(&mut rng, name), format!("{FORGED}-{i}"))
                })
                .collect();
            sent += lines.len();
            for transport in [Transport::H1, Transport::H2] {
                id += 1;
                assert!(!probe(&mesh, mode, transport, id, &lines).await);
            }
        }
    }
    println!("property run: {sent} random spellings per transport, none reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_copies_of_the_forwarded_headers_never_join_vakts_values() {
    let mesh = Mesh::start("  forwarded: set\n", "").await;
    let forged: Vec<(String, String)> = [
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Forwarded-Port",
        "X-Real-IP",
    ]
    .iter()
    .flat_map(|n| {
        [
            (n.to_string(), format!("{FORGED}.example")),
            (n.to_string(), format!("{FORGED}2.example")),
        ]
    })
    .collect();
    for (i, transport) in [Transport::H1, Transport::H2].into_iter().enumerate() {
        assert!(!probe(&mesh, Mode::Drop, transport, i + 1, &forged).await);
    }

    // With `strip`, none of them reaches the app at all.
    let mesh = Mesh::start("  forwarded: strip\n", "").await;
    let mut lines = forged.clone();
    lines.push(("x-corpus-id".to_owned(), "1".to_owned()));
    let (status, body) = raw_h1(mesh.outbound(), &lines).await;
    assert_eq!(status, 200, "{body}");
    let seen = mesh.seen(1).unwrap();
    for name in [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    ] {
        assert!(!seen.headers.contains_key(name), "{name}");
    }
}

/// Trailer names sent by both transports: the forged ones must not reach the app.
const TRAILERS: [(&str, &str); 6] = [
    ("X-Vakt-Subject", "forged-1"),
    ("X_Vakt_LoA", "forged-2"),
    ("X-Remote-User", "forged-3"),
    ("L5d-Client-Id", "forged-4"),
    ("X-Forwarded-Host", "forged-5"),
    ("X-Custom-Ok", "kept"),
];

fn assert_trailers_clean(seen: &SeenRequest, context: &str) {
    let trailers = seen.trailers.clone().unwrap_or_default();
    assert_eq!(trailers.len(), 1, "{context}: {trailers:?}");
    assert_eq!(trailers.get("x-custom-ok").unwrap(), "kept", "{context}");
    assert_eq!(seen.body_len, 4, "{context}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_follow_the_same_rules_over_h1_chunked_and_h2_to_an_h2c_app() {
    // An h2c app: request trailers reach it over HTTP/2, and it records them.
    let mesh = Mesh::start("  underscore_headers: drop\n", "  app_protocol: h2c\n").await;

    // HTTP/1.1 chunked trailers, names as sent on the wire.
    let mut trailer_lines = String::new();
    for (name, value) in TRAILERS {
        trailer_lines.push_str(&format!("{name}: {value}\r\n"));
    }
    let head = format!(
        "POST /corpus HTTP/1.1\r\nHost: orders.shop\r\nConnection: close\r\nx-corpus-id: 1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n{trailer_lines}\r\n"
    );
    let mut tcp = TcpStream::connect(mesh.outbound()).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_trailers_clean(&mesh.seen(1).expect("at the app"), "h1 chunked");

    // HTTP/2 request trailers.
    let tcp = TcpStream::connect(mesh.outbound()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut trailers = HeaderMap::new();
    for (name, value) in TRAILERS {
        trailers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let frames = [
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"body"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post("http://orders.shop/corpus")
        .header("x-corpus-id", "2")
        .body(body)
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    assert_trailers_clean(&mesh.seen(2).expect("at the app"), "h2");
}
