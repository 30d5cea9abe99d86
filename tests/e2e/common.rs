//! Helpers for the end-to-end tests: the crate's test support (`vakt::testing`), and the real
//! `vakt` binary.
#![allow(dead_code, unused_imports)]

pub use vakt::testing::client::*;
pub use vakt::testing::metrics::*;
pub use vakt::testing::sidecar::*;

/// How long a test waits for the answer to a request on an accepted connection.
pub const RESPONSE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connect with `config` and send one HTTP/1.1 GET: the status, or why there was none.
pub async fn attempt(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<http::StatusCode, String> {
    let tls = mtls_connect(addr, config)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    match tokio::time::timeout(RESPONSE_WAIT, h1_send(tls, get("/", "orders.shop"))).await {
        Err(_) => Err(format!("no response within {RESPONSE_WAIT:?}")),
        Ok(Err(e)) => Err(format!("request failed: {e}")),
        Ok(Ok(response)) => Ok(response.status()),
    }
}

/// Run the real `vakt` binary: (exit code, stdout, stderr).
pub fn run_vakt(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vakt"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An app that switches every request to a raw byte echo (it answers `101` with
/// `Upgrade: websocket` but speaks no WebSocket framing) and sends `()` on the returned channel
/// each time the other side closes an upgraded connection.
pub async fn raw_upgrade_app() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
                if tcp.write_all(switched).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, closed)
}

/// Ask for a WebSocket upgrade of `/chat` on `stream` and read the answer's head; fails unless
/// it is `101`.
pub async fn upgrade_to_websocket<S>(stream: &mut S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: orders.shop\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

/// Send `bytes` into an upgraded stream and read them back from the echo within 5 s.
pub async fn echo_once<S>(stream: &mut S, bytes: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
    let mut echoed = vec![0u8; bytes.len()];
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_exact(&mut echoed),
    )
    .await
    .expect("no echo within 5 s")
    .expect("the tunnel closed instead of echoing");
    assert_eq!(echoed, bytes);
}

/// A loopback port free at the time of the call, for a child process that must be told its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `vakt run` child logging at debug, its stdout and stderr in files.
pub struct Process {
    pub child: tokio::process::Child,
    pub stdout: std::path::PathBuf,
    pub stderr: std::path::PathBuf,
    pub admin: std::net::SocketAddr,
}

pub fn spawn_vakt(
    name: &str,
    dir: &std::path::Path,
    yaml: &str,
    admin: std::net::SocketAddr,
) -> Process {
    spawn_vakt_with_env(name, dir, yaml, admin, &[])
}

/// [`spawn_vakt`] with extra environment variables.
pub fn spawn_vakt_with_env(
    name: &str,
    dir: &std::path::Path,
    yaml: &str,
    admin: std::net::SocketAddr,
    env: &[(&str, &str)],
) -> Process {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    // `VAKT_TEST_BINARY` runs the children from another build (benches/faults-long compares
    // builds with it); by default the one under test.
    let binary =
        std::env::var_os("VAKT_TEST_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_vakt").into());
    let child = tokio::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::from(
            std::fs::File::create(&stdout).unwrap(),
        ))
        .stderr(std::process::Stdio::from(
            std::fs::File::create(&stderr).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Process {
        child,
        stdout,
        stderr,
        admin,
    }
}

pub async fn wait_ready(p: &Process) {
    for _ in 0..200 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(p.admin).await
            && let Ok(r) = h1_send(tcp, get("/ready", "admin")).await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "vakt did not become ready: {}",
        std::fs::read_to_string(&p.stderr).unwrap_or_default()
    );
}

/// Send SIGTERM to a child this test started.
pub fn sigterm(pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// SIGTERM, then wait for the exit: every accepted audit event is written by then.
pub async fn stop(p: &mut Process) {
    sigterm(p.child.id().unwrap());
    let status = tokio::time::timeout(std::time::Duration::from_secs(15), p.child.wait())
        .await
        .expect("vakt exited after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The orders workload of a test server, for `vakt run` children: the in-process sidecar is shut
/// down, its files (certificates, policy, chain key) and the app stay, and the web peer's client
/// configs are made.
pub struct ChildWorkload {
    pub pki: vakt::dev::mesh::DevPki,
    pub app: vakt::dev::mesh::EchoApp,
    pub id: String,
    pub dir: std::path::PathBuf,
    /// The web peer over HTTP/1.1 and over HTTP/2.
    pub web_h1: std::sync::Arc<rustls::ClientConfig>,
    pub web_h2: std::sync::Arc<rustls::ClientConfig>,
}

impl ChildWorkload {
    /// `client` names the web peer's own directory of certificates.
    pub async fn new(client: &str) -> Self {
        let server = server(&["web"], "").await;
        let web_dir = server
            .pki
            .workload(client, &server.pki.spiffe_id("shop", "web"))
            .unwrap();
        let web_h1 = raw_client_config(Some(&web_dir), &server.dir, &server.id, &[b"http/1.1"]);
        let web_h2 = raw_client_config(Some(&web_dir), &server.dir, &server.id, &[b"h2"]);
        let Server {
            pki,
            app,
            vakt,
            id,
            dir,
        } = server;
        vakt.shutdown().await;
        Self {
            pki,
            app,
            id,
            dir,
            web_h1,
            web_h2,
        }
    }

    /// A child's config on fresh loopback ports, in front of the app: (YAML, inbound, admin).
    pub fn child_config(&self) -> (String, std::net::SocketAddr, std::net::SocketAddr) {
        let inbound: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let yaml = vakt::dev::mesh::base_config_yaml(&self.dir, TD)
            .replace("127.0.0.1:0", &admin.to_string())
            + &format!(
                "inbound:\n  listen: {inbound}\n  app: {}\n  policy: {}\n",
                self.app.addr,
                self.dir.join("policy.yaml").display()
            );
        (yaml, inbound, admin)
    }
}
