//! `vakt audit verify` and `vakt audit report`: the trail, for the security team.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use vakt::audit::{ChainKey, CheckpointFile, Timestamp, VerifyKey, VerifyOptions};

use super::bad_input;

/// The chain key(s) and checkpoints a trail is verified with.
#[derive(clap::Args)]
pub struct ChainArgs {
    /// A chain key file (`FILE`, or `KEY_ID=FILE`); repeat for rotated keys.
    #[arg(long = "key", value_name = "KEY_FILE")]
    keys: Vec<String>,
    /// The checkpoint file (`audit.checkpoint_file`): finds a tail cut off after a checkpoint
    /// and lines that differ from their checkpoint.
    #[arg(long, value_name = "FILE")]
    checkpoints: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk audit files (oldest first, across rotation) and report every problem with its seq
    /// range: edited lines, gaps, epochs, a truncated tail, key-id changes. Exits non-zero on
    /// any problem.
    Verify {
        /// The audit files, oldest first (`audit.log.2 audit.log.1 audit.log`); `-` reads a
        /// container's mixed output from stdin: its audit and checkpoint lines, skipping logs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        chain: ChainArgs,
        /// text (for a person) or json (for a SIEM or a script).
        #[arg(long, value_enum, default_value = "text")]
        output: super::explain::Output,
    },
    /// Print the audit event with this id: a denial body's `decision_id` (exit 1 when no file
    /// has it).
    Show {
        /// The event id (`decision_id` in a denial body, `id` in the event).
        id: String,
        /// The audit files to search.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Accesses per route and action, denials by reason and peer, distinct subjects.
    Report {
        /// The audit files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// RFC 3339 start of the window (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 end of the window (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// With --key, the trail is verified while it is read, and a report over a tampered
        /// trail says so first (exit 1).
        #[command(flatten)]
        chain: ChainArgs,
        /// text (for a person) or json (for a SIEM or a script).
        #[arg(long, value_enum, default_value = "text")]
        output: super::explain::Output,
    },
}

impl AuditCommand {
    pub fn run(self) -> ExitCode {
        match self {
            Self::Verify {
                files,
                chain: ChainArgs { keys, checkpoints },
                output,
            } => {
                // `-`: the stream's audit lines, and its checkpoint lines unless a file is given.
                let stdin = if files.len() == 1 && files[0].as_os_str() == "-" {
                    match split_stream(std::io::stdin().lock()) {
                        Ok(split) => Some(split),
                        Err(e) => return bad_input("audit verify", format!("stdin: {e}")),
                    }
                } else {
                    None
                };
                let (files, checkpoints) = match &stdin {
                    Some(split) => (
                        vec![split.events.clone()],
                        checkpoints.or_else(|| split.checkpoints.clone()),
                    ),
                    None => (files, checkpoints),
                };
                let options = match verify_options(&keys, checkpoints.as_deref()) {
                    Ok(o) => o,
                    Err(e) => return bad_input("audit verify", e),
                };
                let print = |report: &vakt::audit::TrailReport| match output {
                    super::explain::Output::Text => print!("{report}"),
                    super::explain::Output::Json => println!("{}", verify_json(report)),
                };
                // Exit codes: 0 intact, 1 tampered or incomplete, 2 unreadable or bad input.
                match vakt::audit::verify_trail(&files, &options) {
                    Ok(report) if report.is_intact() => {
                        print(&report);
                        ExitCode::SUCCESS
                    }
                    Ok(report) => {
                        print(&report);
                        eprintln!(
                            "vakt audit verify: {} problem(s), first: {}",
                            report.problems().count(),
                            report
                                .problems()
                                .next()
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        );
                        ExitCode::FAILURE
                    }
                    Err(e) => bad_input("audit verify", e),
                }
            }
            Self::Show { id, files } => show(&id, &files),
            Self::Report {
                files,
                from,
                to,
                chain: ChainArgs { keys, checkpoints },
                output,
            } => {
                // The trail first: a summary of edited lines would mislead.
                let verdict = if keys.is_empty() {
                    Ok(None)
                } else {
                    verify_options(&keys, checkpoints.as_deref()).and_then(|options| {
                        vakt::audit::verify_trail(&files, &options)
                            .map(Some)
                            .map_err(|e| e.to_string())
                    })
                };
                let verdict = match verdict {
                    Ok(v) => v,
                    Err(e) => return bad_input("audit report", e),
                };
                let parse = |flag: &str, v: Option<String>| {
                    v.map(|t| {
                        Timestamp::parse_rfc3339(&t).map_err(|e| format!("{flag} {t:?}: {e}"))
                    })
                    .transpose()
                };
                let window = parse("--from", from).and_then(|f| parse("--to", to).map(|t| (f, t)));
                match window
                    .and_then(|(f, t)| vakt::audit::report(&files, f, t).map_err(|e| e.to_string()))
                {
                    Ok(report) => {
                        let tampered = verdict.as_ref().is_some_and(|v| !v.is_intact());
                        let trail = match &verdict {
                            None => "not verified (give --key, and --checkpoints, to check the chain while reading)".to_owned(),
                            Some(v) if v.is_intact() => format!("intact ({} events verified)", v.events),
                            Some(v) => format!(
                                "TAMPERED OR INCOMPLETE: {} problem(s), first: {}; the tables below count what the files hold now",
                                v.problems().count(),
                                v.problems().next().map(ToString::to_string).unwrap_or_default()
                            ),
                        };
                        match output {
                            super::explain::Output::Text => print!("trail: {trail}\n{report}"),
                            super::explain::Output::Json => {
                                let mut json = report.json();
                                json["trail"] = serde_json::json!({
                                    "verified": verdict.is_some(),
                                    "intact": verdict.as_ref().map(|v| v.is_intact()),
                                    "summary": trail,
                                });
                                println!(
                                    "{}",
                                    serde_json::to_string_pretty(&json).unwrap_or_default()
                                );
                            }
                        }
                        if tampered {
                            ExitCode::FAILURE
                        } else {
                            ExitCode::SUCCESS
                        }
                    }
                    Err(e) => bad_input("audit report", e),
                }
            }
        }
    }
}

/// `--key FILE` or `--key ID=FILE` (an id binds the key to the lines of that id), and the
/// checkpoints. Messages name files, never key bytes.
fn verify_options(keys: &[String], checkpoints: Option<&Path>) -> Result<VerifyOptions, String> {
    let mut options = VerifyOptions::default();
    for arg in keys {
        let (id, file) = match arg.split_once('=') {
            Some((id, file)) if !id.contains('/') => (Some(id.to_owned()), file),
            _ => (None, arg.as_str()),
        };
        // The id only names the key here; lines are matched by the id they carry.
        let key = ChainKey::from_file(id.as_deref().unwrap_or("verify"), Path::new(file))
            .map_err(|e| format!("--key {file}: {e}"))?;
        options.keys.push(VerifyKey { id, key });
    }
    if let Some(path) = checkpoints {
        options.checkpoints =
            Some(CheckpointFile::read_all(path).map_err(|e| format!("--checkpoints: {e}"))?);
    }
    Ok(options)
}

/// The verification as JSON: every segment and finding, with `intact` first.
fn verify_json(report: &vakt::audit::TrailReport) -> String {
    let segments: Vec<serde_json::Value> = report
        .segments
        .iter()
        .map(|s| {
            serde_json::json!({
                "schema": s.schema.as_str(), "epoch": s.epoch, "key_id": s.key_id,
                "first_seq": s.first_seq, "last_seq": s.last_seq, "events": s.events,
            })
        })
        .collect();
    let findings: Vec<serde_json::Value> = report
        .findings
        .iter()
        .map(|f| {
            serde_json::json!({
                "kind": f.kind.as_str(),
                "problem": f.problem,
                "first_seq": f.seqs.map(|s| s.0),
                "last_seq": f.seqs.map(|s| s.1),
                "file": f.at.as_ref().map(|(p, _)| p.display().to_string()),
                "line": f.at.as_ref().map(|(_, l)| l),
                "detail": f.detail,
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "intact": report.is_intact(),
        "files": report.files,
        "events": report.events,
        "checkpoints": report.checkpoints,
        "segments": segments,
        "findings": findings,
    }))
    .unwrap_or_default()
}

/// Find the event `id` in `files` and print it as indented JSON, with the file and line.
fn show(id: &str, files: &[PathBuf]) -> ExitCode {
    let Ok(wanted) = uuid::Uuid::parse_str(id) else {
        return bad_input("audit show", format!("{id:?} is not an event id (a UUID)"));
    };
    let wanted = wanted.hyphenated().to_string();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => return bad_input("audit show", format!("{}: {e}", file.display())),
        };
        for (n, line) in text.lines().enumerate() {
            // Cheap test first; lines that are not events (logs on a shared stream) are skipped.
            if !line.contains(&wanted) {
                continue;
            }
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["id"] == wanted.as_str() {
                println!("{}:{}", file.display(), n + 1);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&event).unwrap_or_default()
                );
                return ExitCode::SUCCESS;
            }
        }
    }
    eprintln!("vakt audit show: no event {wanted} in the files given");
    ExitCode::FAILURE
}

/// A container's output split by line kind into temporary files: audit events (lines that
/// begin `{"schema":"vakt.audit/`) and checkpoints (`{"type":"vakt.audit.checkpoint"`); logs
/// and anything else are skipped. The files live as long as this value.
struct SplitStream {
    dir: PathBuf,
    events: PathBuf,
    checkpoints: Option<PathBuf>,
}

impl Drop for SplitStream {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The line prefixes that tell vakt's audit output from its logs (docs/AUDIT.md).
const EVENT_PREFIX: &str = "{\"schema\":\"vakt.audit/";
const CHECKPOINT_PREFIX: &str = "{\"type\":\"vakt.audit.checkpoint\"";

fn split_stream(input: impl std::io::BufRead) -> std::io::Result<SplitStream> {
    use std::io::Write as _;
    use std::os::unix::fs::DirBuilderExt as _;
    // A private directory of this process (0700), removed when the value is dropped.
    let dir = std::env::temp_dir().join(format!(
        "vakt-audit-verify-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let events = dir.join("events.log");
    let checkpoints = dir.join("checkpoints.jsonl");
    let mut event_out = std::io::BufWriter::new(std::fs::File::create(&events)?);
    let mut checkpoint_out = std::io::BufWriter::new(std::fs::File::create(&checkpoints)?);
    let (mut kept, mut marks, mut skipped) = (0u64, 0u64, 0u64);
    for line in input.split(b'\n') {
        let line = line?;
        if line.starts_with(EVENT_PREFIX.as_bytes()) {
            event_out.write_all(&line)?;
            event_out.write_all(b"\n")?;
            kept += 1;
        } else if line.starts_with(CHECKPOINT_PREFIX.as_bytes()) {
            checkpoint_out.write_all(&line)?;
            checkpoint_out.write_all(b"\n")?;
            marks += 1;
        } else if !line.is_empty() {
            skipped += 1;
        }
    }
    event_out.flush()?;
    checkpoint_out.flush()?;
    eprintln!(
        "stdin: {kept} audit line(s), {marks} checkpoint(s), {skipped} other line(s) skipped"
    );
    Ok(SplitStream {
        dir,
        events,
        checkpoints: (marks > 0).then_some(checkpoints),
    })
}
