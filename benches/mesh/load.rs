//! The mesh benchmark's load generator: HTTP/1.1 keep-alive connections, a different Bearer
//! token on every request (rotating through a file of tokens), JSON results on stdout. With
//! `--dpop-proofs`, the tokens go as `DPoP` with proof i on request i (each proof used once).
//!
//! Two modes:
//! - closed (no `--rate`): every connection sends its next request as soon as the previous
//!   answer is in — the throughput a system sustains at that many connections;
//! - open (`--rate R`): requests are due at fixed times (`start + i/R`), taken in order by
//!   whichever connection is free, and each latency is measured from the moment the request was
//!   *due*, not from when it could be sent. A system that stalls therefore gets charged for
//!   every request that piled up behind the stall (no coordinated omission, as wrk2 and
//!   `oha --latency-correction` do). The pacer is a thread sleeping on the OS clock rather than
//!   the runtime's 1 ms timer wheel, so at 5,000 req/s requests leave within tens of
//!   microseconds of their due time; the load generator has its own core in the benchmark.
//!
//! `cargo run --release -p vakt-mesh-bench --bin mesh_load -- http://127.0.0.1:18080/ --rate 2000 --duration 5s`

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(about = "HTTP/1.1 load generator of the vakt mesh benchmark")]
struct Args {
    /// Target (http://host:port/path).
    url: Uri,
    /// Host header to send (default: the URL's authority).
    #[arg(long)]
    host: Option<String>,
    /// File with one access token per line; request i carries token i mod n as a Bearer token.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// File with one DPoP proof per line, proof i made for token i mod n: request i sends the
    /// token as `DPoP` with proof i. A run that uses them all up stops early.
    #[arg(long)]
    dpop_proofs: Option<PathBuf>,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Requests per second, open model; without it, closed model (as fast as answers come).
    #[arg(long)]
    rate: Option<u64>,
}

/// What every connection shares.
struct Plan {
    /// The request target in origin form (`/path?query`): a proxy reads absolute form as
    /// "forward to that authority", which is not what the Host header says.
    target: Uri,
    addr: String,
    host: HeaderValue,
    tokens: Vec<HeaderValue>,
    /// DPoP proofs, one per request; empty: Bearer tokens.
    proofs: Vec<HeaderValue>,
    start: Instant,
    end: Instant,
    /// Open model: one permit per request that has come due.
    due: Option<(Semaphore, Duration)>,
    /// Open model: index of the next due request.
    taken: AtomicU64,
    next_token: AtomicUsize,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    non_2xx: u64,
    errors: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(plan: &Plan) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(&plan.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One connection's loop; returns its latencies (µs) and counts.
async fn connection(plan: Arc<Plan>) -> (Histogram<u64>, Tally) {
    let mut latencies = histogram();
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    loop {
        // When this request was due: now (closed model) or its slot in the schedule (open).
        let due_at = match &plan.due {
            None => {
                let now = Instant::now();
                if now >= plan.end {
                    break;
                }
                now
            }
            Some((permits, interval)) => {
                let Ok(permit) = permits.acquire().await else {
                    break; // the pacer closed the schedule: the run is over
                };
                permit.forget();
                let i = plan.taken.fetch_add(1, Ordering::Relaxed);
                plan.start + interval.mul_f64(i as f64)
            }
        };
        let mut send = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(&plan).await {
                Ok(s) => s,
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let mut request = Request::get(plan.target.clone()).header(HOST, plan.host.clone());
        if !plan.tokens.is_empty() {
            let i = plan.next_token.fetch_add(1, Ordering::Relaxed);
            request = request.header(AUTHORIZATION, plan.tokens[i % plan.tokens.len()].clone());
            if !plan.proofs.is_empty() {
                let Some(proof) = plan.proofs.get(i) else {
                    break; // every proof used: a replayed one would only measure a refusal
                };
                request = request.header("dpop", proof.clone());
            }
        }
        let request = request.body(Empty::new()).expect("valid request");
        let outcome = async {
            send.ready().await?;
            let response = send.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        match outcome {
            Ok(status) => {
                let micros = due_at.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                latencies.saturating_record(micros);
                if status.is_success() {
                    tally.ok += 1;
                } else {
                    tally.non_2xx += 1;
                }
                sender = Some(send);
            }
            Err(_) => tally.errors += 1, // reconnect on the next round
        }
    }
    (latencies, tally)
}

/// Open model: releases one permit per request as it comes due. A thread of its own sleeping
/// on the OS clock (tens of µs of slack) rather than a task on the runtime's 1 ms timer wheel.
fn pace(plan: Arc<Plan>) {
    let Some((permits, interval)) = &plan.due else {
        return;
    };
    let mut released: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= plan.end {
            permits.close();
            return;
        }
        let due = (now.duration_since(plan.start).as_nanos() / interval.as_nanos()) as u64 + 1;
        if due > released {
            permits.add_permits((due - released) as usize);
            released = due;
        }
        let next = plan.start + interval.mul_f64(released as f64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// The lines of `path` as header values, each after `prefix`.
fn read_lines(path: &PathBuf, prefix: &str) -> std::io::Result<Vec<HeaderValue>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|t| {
            HeaderValue::try_from(format!("{prefix}{t}"))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let authority = args
        .url
        .authority()
        .ok_or("the URL needs host:port")?
        .to_string();
    let proofs = match &args.dpop_proofs {
        Some(p) => read_lines(p, "")?,
        None => Vec::new(),
    };
    let scheme = if proofs.is_empty() {
        "Bearer "
    } else {
        "DPoP "
    };
    let tokens = match &args.tokens {
        Some(p) => read_lines(p, scheme)?,
        None => Vec::new(),
    };
    if !proofs.is_empty() && tokens.is_empty() {
        return Err("--dpop-proofs needs --tokens".into());
    }
    let host = HeaderValue::try_from(args.host.clone().unwrap_or_else(|| authority.clone()))?;
    if args.connections == 0 || args.rate == Some(0) {
        return Err("--connections and --rate must be positive".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    let plan = Arc::new(Plan {
        target: Uri::try_from(
            args.url
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        )?,
        addr: authority,
        host,
        tokens,
        proofs,
        start,
        end: start + args.duration,
        due: args
            .rate
            .map(|r| (Semaphore::new(0), Duration::from_secs_f64(1.0 / r as f64))),
        taken: AtomicU64::new(0),
        next_token: AtomicUsize::new(0),
    });
    let (latencies, tally) = runtime.block_on(async {
        let pacer = {
            let plan = plan.clone();
            std::thread::spawn(move || pace(plan))
        };
        let workers: Vec<_> = (0..args.connections)
            .map(|_| tokio::spawn(connection(plan.clone())))
            .collect();
        let mut all = histogram();
        let mut total = Tally::default();
        for w in workers {
            let (h, t) = w.await.expect("connection task");
            all.add(&h).expect("same histogram bounds");
            total.ok += t.ok;
            total.non_2xx += t.non_2xx;
            total.errors += t.errors;
        }
        pacer.join().expect("pacer thread");
        (all, total)
    });
    let elapsed = start.elapsed().as_secs_f64();
    let answered = tally.ok + tally.non_2xx;
    let scheduled = plan.taken.load(Ordering::Relaxed);
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "rate": args.rate,
        "connections": args.connections,
        "duration_s": elapsed,
        "requests": answered,
        "rps": answered as f64 / elapsed,
        "ok": tally.ok,
        "non_2xx": tally.non_2xx,
        "errors": tally.errors,
        "proofs_used_up": !plan.proofs.is_empty()
            && plan.next_token.load(Ordering::Relaxed) >= plan.proofs.len(),
        // Open model: requests that came due but were never sent before the end.
        "not_sent": if args.rate.is_some() { scheduled.saturating_sub(answered + tally.errors) } else { 0 },
        "latency_ms": {
            "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "p999": ms(0.999),
            "max": latencies.max() as f64 / 1000.0, "mean": latencies.mean() / 1000.0,
        },
    });
    println!("{report}");
    Ok(())
}
