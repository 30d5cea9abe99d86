//! The HTTP client for identity providers: HTTPS on the process's one TLS stack (rustls on
//! aws-lc-rs, Mozilla roots plus the system store), plain HTTP only to loopback development
//! issuers, no redirects, a timeout and a body size limit.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
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
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl IdpClient {
    pub fn new() -> Result<Self, std::io::Error> {
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
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self { client })
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
        let response = tokio::time::timeout(TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_owned(),
            })?
            .map_err(|e| FetchError::Transport {
                url: url.to_owned(),
                message: e.to_string(),
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
