//! The HTTP client for identity providers: HTTPS on the process's one TLS stack (rustls on
//! aws-lc-rs, Mozilla roots plus the system store), plain HTTP only to loopback development
//! issuers, no redirects, a timeout and a body size limit. With `oidc.https_proxy`, HTTPS goes
//! through that proxy's CONNECT tunnel (TLS stays end to end with the provider); loopback
//! development issuers are asked directly.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Largest discovery document or key set accepted.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not an allowed URL (https, or http to a loopback address when allowed)")]
    NotAllowed { url: String },
    #[error("{url}: timed out")]
    Timeout { url: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: HTTP {status} (redirects are not followed)")]
    Status { url: String, status: StatusCode },
    #[error("{url}: body larger than {MAX_BODY_BYTES} bytes or unreadable")]
    Body { url: String },
}

pub struct Fetched {
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct IdpClient {
    direct: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Through the configured HTTPS proxy, for every provider that is not on loopback.
    proxied: Option<Proxied>,
}

#[derive(Clone)]
struct Proxied {
    client: Client<HttpsConnector<Tunnel<HttpConnector>>, Empty<Bytes>>,
    /// `host:port` of the proxy, named in errors (the config refuses credentials in it).
    proxy: String,
}

impl IdpClient {
    /// A client that reaches providers directly, or through the CONNECT proxy `https_proxy`
    /// (an `http://host:port` URL, checked by the config).
    pub fn new(https_proxy: Option<&Uri>) -> Result<Self, std::io::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let https = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
        };
        let client = || {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new());
            builder
        };
        let proxied = https_proxy.map(|proxy| Proxied {
            client: client()
                .build(https().wrap_connector(Tunnel::new(proxy.clone(), http.clone()))),
            proxy: proxy
                .authority()
                .map(ToString::to_string)
                .unwrap_or_default(),
        });
        Ok(Self {
            direct: client().build(https().wrap_connector(http)),
            proxied,
        })
    }

    /// GET `url`; 2xx only, body at most [`MAX_BODY_BYTES`].
    pub async fn get(&self, url: &str, allow_loopback_http: bool) -> Result<Fetched, FetchError> {
        let not_allowed = || FetchError::NotAllowed {
            url: url.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| not_allowed())?;
        let loopback = uri.host().is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if allow_loopback_http && loopback => {}
            _ => return Err(not_allowed()),
        }
        let request = Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("vakt/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|_| not_allowed())?;
        let (sent, via) = match &self.proxied {
            Some(p) if !loopback => (p.client.request(request), Some(p.proxy.as_str())),
            _ => (self.direct.request(request), None),
        };
        let response = tokio::time::timeout(TIMEOUT, sent)
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_owned(),
            })?
            .map_err(|e| FetchError::Transport {
                url: url.to_owned(),
                message: match via {
                    Some(proxy) => format!("through the proxy {proxy}: {}", error_chain(&e)),
                    None => error_chain(&e),
                },
            })?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status(),
            });
        }
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_owned(),
            })?
            .map_err(|_| FetchError::Body {
                url: url.to_owned(),
            })?
            .to_bytes();
        Ok(Fetched {
            headers: parts.headers,
            body,
        })
    }
}

/// An error and its causes in one line ("client error (Connect): tunnel error: unsuccessful"),
/// since the client's own message alone does not say what failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
