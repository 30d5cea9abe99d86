//! Host, authority, method, case and slash variants through real sidecars: raw HTTP/1.1 from the
//! app to its client vakt and on through the two-hop mesh, raw HTTP/1.1 and HTTP/2 straight to
//! the server vakt over mTLS (as another sidecar, or an attacker with a mesh certificate, could
//! send). Every variant is either refused before the policy with the reason it names, or reaches
//! the recording app with exactly the host, method and path vakt matched.

use std::net::SocketAddr;

use crate::common::*;
use http::{HeaderMap, Request};
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use vakt::app::App;
use vakt::dev::mesh::SeenRequest;

/// The server's routes: one for the host `orders.shop` that withholds DELETE, and a host-less
/// one that grants it. A host vakt cannot parse must never reach the host-less route.
fn policy(web: &str) -> String {
    format!(
        "version: 1
routes:
  - id: records-on-orders
    host: orders.shop
    methods: [GET, PUT]
    path: /records/{{id}}
    allow:
      - peers: [\"{web}\"]
  - id: records-any-host
    methods: [GET, PUT, DELETE]
    path: /records/**
    allow:
      - peers: [\"{web}\"]
"
    )
}

struct Setup {
    server: Server,
    client: App,
}

impl Setup {
    async fn start() -> Self {
        let server = server(&["web"], "").await;
        let web = server.pki.spiffe_id("shop", "web");
        server.set_policy(&policy(&web), "success").await;
        let client = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
        Self { server, client }
    }

    fn outbound(&self) -> SocketAddr {
        self.client.outbound_addr.unwrap()
    }

    /// One raw request from the app to its sidecar.
    async fn send_from_app(&self, head: &[u8]) -> String {
        raw_exchange(TcpStream::connect(self.outbound()).await.unwrap(), head).await
    }

    /// One raw request straight to the server sidecar, over mTLS as the peer `web`.
    async fn send_from_peer(&self, head: &[u8]) -> String {
        let tls = mtls_connect(self.server.addr(), web_client_config(&self.server))
            .await
            .unwrap();
        raw_exchange(tls, head).await
    }

    /// One raw request either way.
    async fn send(&self, inbound: bool, head: &[u8]) -> String {
        if inbound {
            self.send_from_peer(head).await
        } else {
            self.send_from_app(head).await
        }
    }

    fn seen(&self, id: usize) -> Option<SeenRequest> {
        let id = id.to_string();
        self.server
            .app
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|r| {
                r.headers
                    .get("x-corpus-id")
                    .is_some_and(|v| v == id.as_str())
            })
            .cloned()
    }
}

/// Hosts that must be refused with `invalid_host` wherever they arrive.
const INVALID_HOSTS: &[&[u8]] = &[
    b"",
    b".",
    b"user@orders.shop",
    b"user:pass@orders.shop",
    b"orders.shop@evil.shop",
    b"@orders.shop",
    b"orders_shop",
    b"orders.shop_",
    b"orders%2eshop",
    b"orders.shop%00",
    b"orders.shop/evil",
    b"orders.shop\\evil",
    b"orders.shop?x",
    b"orders.shop#x",
    b"orders.shop,evil.shop",
    b"orders.shop evil.shop",
    b"orders.shop;evil",
    b"*.shop",
    b"*",
    b"orders..shop",
    b".orders.shop",
    b"orders.shop..",
    b"-orders.shop",
    b"orders-.shop",
    b"\xc3\xb6rders.shop",
    b"127.1",
    b"2130706433",
    b"0x7f.0.0.1",
    b"0177.0.0.1",
    b"127.0.0.01",
    b"256.1.1.1",
    b"1.2.3.4.5",
    b"orders.1",
    b"[::1",
    b"::1",
    b"[::1]x",
    b"[fe80::1%25eth0]",
    b"[1.2.3.4]",
    b"orders.shop:",
    b"orders.shop:0",
    b"orders.shop:080",
    b"orders.shop:65536",
    b"orders.shop:+80",
    b"orders.shop:80:80",
    b"orders.shop:http",
];

/// Spellings of `orders.shop` as the app addresses it (port 80 implied) that are the same host.
const SAME_HOST_OUTBOUND: &[&str] = &[
    "orders.shop",
    "ORDERS.SHOP",
    "Orders.Shop.",
    "orders.shop:80",
    "oRdErS.sHoP.:80",
];

/// One raw HTTP/1.1 request written as given on `io`; the raw answer.
async fn raw_exchange<S>(mut io: S, head: &[u8]) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(head).await.unwrap();
    let mut answer = Vec::new();
    // A refused request may be answered and the connection reset before the read completes.
    let _ = io.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// A request head: request line, `Host` lines (raw bytes), the corpus id, no body.
fn head(method: &str, target: &str, hosts: &[&[u8]], id: usize) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    for host in hosts {
        head.extend_from_slice(b"Host: ");
        head.extend_from_slice(host);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(
        format!("X-Corpus-Id: {id}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    head
}

/// What a refused variant must show: 400 with `invalid_host` (or the HTTP parser's own 400 for
/// bytes it does not take), and nothing at the app.
fn assert_refused(setup: &Setup, id: usize, answer: &str, context: &str) -> bool {
    assert_eq!(status_of(answer), 400, "{context}: {answer}");
    assert!(setup.seen(id).is_none(), "{context}: reached the app");
    answer.contains("\"error\":\"invalid_host\"")
}

/// What an accepted variant must show: the app saw exactly the canonical host, once, in `Host`
/// and in `X-Forwarded-Host`, with the method and path vakt matched.
fn assert_arrived(seen: &SeenRequest, method: &str, path: &str, host: &str, context: &str) {
    assert_eq!(seen.method.as_str(), method, "{context}");
    assert_eq!(seen.path_and_query, path, "{context}");
    let one = |headers: &HeaderMap, name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    assert_eq!(one(&seen.headers, "host"), [host], "{context}");
    assert_eq!(one(&seen.headers, "x-forwarded-host"), [host], "{context}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_authority_method_case_and_slash_variants_are_refused_or_arrive_as_matched() {
    let setup = Setup::start().await;
    let mut id = 0usize;
    let mut variants = 0usize;
    let mut refused_invalid_host = 0usize;
    let denied = |direction| [("direction", direction), ("reason", "invalid_host")];
    let before_out = metric_sum(
        &metrics_text(setup.client.admin_addr).await,
        "vakt_requests_denied_total",
        &denied("outbound"),
    );
    let before_in = metric_sum(
        &metrics_text(setup.server.vakt.admin_addr).await,
        "vakt_requests_denied_total",
        &denied("inbound"),
    );
    let (mut counted_out, mut counted_in) = (0.0, 0.0);

    // 1. Invalid hosts, from the app to its sidecar and from a peer straight to the server.
    for host in INVALID_HOSTS {
        for inbound in [false, true] {
            id += 1;
            variants += 1;
            let request = head("GET", "/records/1", &[host], id);
            let answer = setup.send(inbound, &request).await;
            let context = format!("host {:?} inbound={inbound}", String::from_utf8_lossy(host));
            if assert_refused(&setup, id, &answer, &context) {
                refused_invalid_host += 1;
                *(if inbound {
                    &mut counted_in
                } else {
                    &mut counted_out
                }) += 1.0;
            }
        }
    }

    // 2. Repeated Host lines, absolute-form targets naming another host, no host at all.
    let shapes: &[(&str, &[&[u8]])] = &[
        ("/records/1", &[b"orders.shop", b"orders.shop"]),
        ("/records/1", &[b"orders.shop", b"evil.shop"]),
        ("/records/1", &[b"evil.shop", b"orders.shop"]),
        ("/records/1", &[]),
        ("http://evil.shop/records/1", &[b"orders.shop"]),
        ("http://orders.shop/records/1", &[b"evil.shop"]),
        ("http://orders.shop:8080/records/1", &[b"orders.shop"]),
        ("http://user@orders.shop/records/1", &[b"orders.shop"]),
    ];
    for (target, hosts) in shapes {
        for inbound in [false, true] {
            id += 1;
            variants += 1;
            let request = head("GET", target, hosts, id);
            let answer = setup.send(inbound, &request).await;
            let context = format!("{target} hosts {hosts:?} inbound={inbound}");
            if assert_refused(&setup, id, &answer, &context) {
                refused_invalid_host += 1;
                *(if inbound {
                    &mut counted_in
                } else {
                    &mut counted_out
                }) += 1.0;
            }
        }
    }

    // 3. Spellings of the same host arrive as the one canonical host, through the whole mesh:
    // in `Host`, and in an absolute-form target with and without a matching `Host`.
    let absolute: [(&str, &[&[u8]]); 2] = [
        ("http://orders.shop/records/1", &[]),
        ("http://ORDERS.shop:80/records/1", &[b"orders.shop."]),
    ];
    let spellings = SAME_HOST_OUTBOUND
        .iter()
        .map(|host| ("/records/1", vec![host.as_bytes()]))
        .chain(
            absolute
                .iter()
                .map(|(target, hosts)| (*target, hosts.to_vec())),
        );
    for (target, hosts) in spellings {
        id += 1;
        variants += 1;
        let answer = setup.send_from_app(&head("GET", target, &hosts, id)).await;
        let context = format!("{target} {hosts:?}");
        assert_eq!(status_of(&answer), 200, "{context}: {answer}");
        let seen = setup.seen(id).unwrap();
        assert_arrived(&seen, "GET", "/records/1", "orders.shop", &context);
    }
    // Straight to the server: 443 is the default port of the mTLS hop; another port is kept
    // (and, not being `orders.shop` with port 443, it is still host `orders.shop` for routes).
    for (host, canonical) in [
        ("orders.shop", "orders.shop"),
        ("ORDERS.shop.:443", "orders.shop"),
        ("orders.shop:8443", "orders.shop:8443"),
        ("[::1]:443", "[::1]"),
        ("10.0.0.1", "10.0.0.1"),
    ] {
        id += 1;
        variants += 1;
        let request = head("GET", "/records/1", &[host.as_bytes()], id);
        let answer = setup.send_from_peer(&request).await;
        assert_eq!(status_of(&answer), 200, "{host}: {answer}");
        let seen = setup.seen(id).unwrap();
        assert_arrived(&seen, "GET", "/records/1", canonical, host);
    }

    // 4. The host decides the route: DELETE is withheld on orders.shop whatever its spelling,
    // and granted by the host-less route on another (valid) host.
    for (host, status) in [
        ("orders.shop", 405),
        ("ORDERS.SHOP.", 405),
        ("orders.shop:443", 405),
        ("other.shop", 200),
    ] {
        id += 1;
        variants += 1;
        let request = head("DELETE", "/records/1", &[host.as_bytes()], id);
        let answer = setup.send_from_peer(&request).await;
        assert_eq!(status_of(&answer), status, "DELETE with {host}: {answer}");
        match status {
            200 => assert_arrived(&setup.seen(id).unwrap(), "DELETE", "/records/1", host, host),
            _ => {
                assert!(answer.contains("method_not_allowed"), "{host}: {answer}");
                assert!(
                    answer.contains("\r\nallow: GET, HEAD, PUT\r\n"),
                    "{host}: {answer}"
                );
                assert!(setup.seen(id).is_none(), "{host}: reached the app");
            }
        }
    }

    // 5. HTTP/2 straight to the server: `:authority` and `host` must agree.
    let h2_config = {
        let dir = setup
            .server
            .pki
            .workload("web-h2", &setup.server.pki.spiffe_id("shop", "web"))
            .unwrap();
        raw_client_config(Some(&dir), &setup.server.dir, &setup.server.id, &[b"h2"])
    };
    let h2_cases: &[(&str, Option<&str>, u16)] = &[
        ("https://orders.shop/records/1", None, 200),
        ("https://orders.shop/records/1", Some("orders.shop"), 200),
        (
            "https://ORDERS.shop:443/records/1",
            Some("orders.shop."),
            200,
        ),
        ("https://orders.shop/records/1", Some("evil.shop"), 400),
        ("https://evil.shop/records/1", Some("orders.shop"), 400),
        (
            "https://orders.shop/records/1",
            Some("orders.shop:8443"),
            400,
        ),
        ("https://orders_shop/records/1", None, 400),
        ("https://127.1/records/1", None, 400),
    ];
    for (uri, host, status) in h2_cases {
        id += 1;
        variants += 1;
        let mut request = Request::get(*uri).header("x-corpus-id", id.to_string());
        if let Some(host) = host {
            request = request.header("host", *host);
        }
        let tls = mtls_connect(setup.server.addr(), h2_config.clone())
            .await
            .unwrap();
        let response = h2_send(tls, request.body(Full::default()).unwrap())
            .await
            .unwrap();
        let got = response.status().as_u16();
        let body = body_string(response).await;
        let context = format!("h2 {uri} host {host:?}");
        assert_eq!(got, *status, "{context}: {body}");
        if *status == 400 {
            assert!(
                body.contains("\"error\":\"invalid_host\""),
                "{context}: {body}"
            );
            assert!(setup.seen(id).is_none(), "{context}: reached the app");
            refused_invalid_host += 1;
            counted_in += 1.0;
        } else {
            assert_arrived(
                &setup.seen(id).unwrap(),
                "GET",
                "/records/1",
                "orders.shop",
                &context,
            );
        }
    }

    // 6. Methods and path spellings, app to app through the mesh, host orders.shop.
    let methods = [
        "GET", "HEAD", "PUT", "DELETE", "POST", "PATCH", "OPTIONS", "TRACE", "get", "Delete",
    ];
    let paths = [
        ("/records/1", Some("/records/1")),
        ("/records//1", Some("/records/1")),
        ("/records/./1", Some("/records/1")),
        ("/records/x/../1", Some("/records/1")),
        ("/records/%31", Some("/records/1")),
        ("/Records/1", None),
        ("/RECORDS/1", None),
        ("/records/1/", None),
    ];
    for method in methods {
        for (path, canonical) in paths {
            id += 1;
            variants += 1;
            let request = head(method, path, &[b"orders.shop"], id);
            let answer = setup.send_from_app(&request).await;
            let context = format!("{method} {path}");
            let status = status_of(&answer);
            let reached = setup.seen(id);
            match (method, canonical) {
                // GET and PUT are the route's; HEAD is authorised as GET.
                ("GET" | "HEAD" | "PUT", Some(canonical)) => {
                    assert_eq!(status, 200, "{context}: {answer}");
                    assert_arrived(
                        &reached.unwrap(),
                        method,
                        canonical,
                        "orders.shop",
                        &context,
                    );
                }
                // Any other method on the covered path: 405 naming the route's methods, never
                // the host-less route that grants DELETE.
                (_, Some(_)) => {
                    assert_eq!(status, 405, "{context}: {answer}");
                    assert!(
                        answer.contains("\r\nallow: GET, HEAD, PUT\r\n"),
                        "{context}: {answer}"
                    );
                    assert!(reached.is_none(), "{context}: reached the app");
                }
                // Case and trailing-slash near misses of the literal `records`: refused, not
                // granted by the host-less wildcard.
                (_, None) => {
                    assert_eq!(status, 403, "{context}: {answer}");
                    // A HEAD answer has no body to name the reason.
                    assert!(
                        method == "HEAD"
                            || answer.contains("\"error\":\"path_near_miss\"")
                            || answer.contains("\"error\":\"no_route\""),
                        "{context}: {answer}"
                    );
                    assert!(reached.is_none(), "{context}: reached the app");
                }
            }
        }
    }

    // Every invalid_host refusal was counted on the side that refused it.
    for (admin, direction, before, counted) in [
        (setup.client.admin_addr, "outbound", before_out, counted_out),
        (
            setup.server.vakt.admin_addr,
            "inbound",
            before_in,
            counted_in,
        ),
    ] {
        let want = before + counted;
        let got = wait_for_metric(
            admin,
            "vakt_requests_denied_total",
            &denied(direction),
            want,
        )
        .await;
        assert!(got >= want, "{direction}: {got} < {want}");
    }
    println!(
        "host corpus: {variants} host/authority/method/case/slash variants, {refused_invalid_host} refused with invalid_host, none reached the app unchecked"
    );
    assert!(variants >= 100, "only {variants} variants");
}
