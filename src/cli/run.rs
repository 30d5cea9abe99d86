//! `vakt run`: the sidecar itself, until SIGTERM or SIGINT (SIGHUP reloads).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use vakt::app::App;
use vakt::config::{Config, LogFormat, RuntimeConfig};

#[derive(Args)]
pub struct RunArgs {
    /// The sidecar config file.
    #[arg(long, short, env = "VAKT_CONFIG")]
    config: PathBuf,
}

impl RunArgs {
    pub fn run(self) -> ExitCode {
        let config = match load(&self.config) {
            Ok(c) => c,
            Err(code) => return code,
        };
        init_logging(config.log.format, &config.log.level);
        runtime(&config.runtime).block_on(async move {
            let app = match start(config).await {
                Ok(app) => app,
                Err(e) => {
                    tracing::error!(error = %e, "vakt cannot start");
                    eprintln!("vakt: cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            wait_for_shutdown_signal(&app).await;
            tracing::info!("shutting down: draining in-flight requests");
            // A drain that outlasts the grace period is still a clean, requested stop.
            app.shutdown().await;
            ExitCode::SUCCESS
        })
    }
}

/// In builds for this crate's own tests, `VAKT_TEST_AUDIT_WRITE_DELAY_MS` slows the audit file
/// sink, so that a test can kill a sidecar while events wait to be written.
#[cfg(feature = "test-support")]
async fn start(config: Config) -> Result<App, vakt::app::StartError> {
    let delay = std::env::var("VAKT_TEST_AUDIT_WRITE_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok());
    match delay {
        Some(ms) => {
            App::start_with_slow_audit_sink(config, std::time::Duration::from_millis(ms)).await
        }
        None => App::start(config).await,
    }
}

#[cfg(not(feature = "test-support"))]
async fn start(config: Config) -> Result<App, vakt::app::StartError> {
    App::start(config).await
}

/// Read and check a config file, or say why not (exit code 2).
pub(super) fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::from_file(path).map_err(|e| {
        let excerpt = match &e {
            vakt::config::ConfigError::Parse { error, .. } => error.excerpt(
                &path.display().to_string(),
                &std::fs::read_to_string(path).unwrap_or_default(),
            ),
            _ => String::new(),
        };
        eprintln!("vakt: invalid configuration: {e}\n{excerpt}");
        ExitCode::from(2)
    })
}

/// One worker: a current-thread runtime (no work stealing, no cross-thread wake-ups); more: a
/// multi-thread runtime with that many workers.
pub(super) fn runtime(config: &RuntimeConfig) -> tokio::runtime::Runtime {
    let workers = config.worker_threads();
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vakt: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

pub(super) fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Logs on stderr: stdout carries the audit trail (`sink: stdout`) and its checkpoints.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// ANSI colour only for a person at a terminal: not when stderr is a file or a pipe, nor with
/// `NO_COLOR` set (to anything; no-color.org) or `TERM=dumb`.
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

async fn wait_for_shutdown_signal(app: &App) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading certificates and policy");
                app.reload().await;
            }
        }
    }
}
