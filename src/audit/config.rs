//! The `audit` section: where events go, how the file rotates and syncs, and what happens when
//! an event cannot be recorded.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::sink::FsyncPolicy;

/// What to do when an audit event cannot be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAuditFailure {
    /// No access without a record: refuse with 503 `audit_unavailable`.
    #[default]
    Deny,
    /// Keep serving; every lost event is counted.
    Allow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSink {
    /// JSON lines on stdout, for the cluster's log pipeline.
    #[default]
    Stdout,
    /// A hash-chained file with size-based rotation.
    File,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    #[serde(default)]
    pub sink: AuditSink,
    /// With `sink: file`.
    #[serde(default)]
    pub file: Option<AuditFileSettings>,
    /// Events accepted and not yet written (with `on_audit_failure: deny`, plus the places held
    /// for the events of requests in flight); when full, `on_audit_failure` applies.
    #[serde(default = "defaults::queue")]
    pub queue_capacity: usize,
    /// `deny` (default: no access without a record) or `allow` (serve, count every lost event).
    #[serde(default)]
    pub on_audit_failure: OnAuditFailure,
    /// The HMAC key of the chain, kept outside the audit volume. Required with `sink: file`;
    /// without it a stdout trail is keyed with a per-process random key (never verifiable).
    #[serde(default)]
    pub chain_key: Option<ChainKeySettings>,
    /// Append-only JSONL file of checkpoints, on another volume than the audit files. Required
    /// with `sink: file`.
    #[serde(default)]
    pub checkpoint_file: Option<PathBuf>,
    /// A checkpoint at most this long after a line is written (and at shutdown).
    #[serde(
        default = "defaults::checkpoint_interval",
        deserialize_with = "crate::serde_helpers::de_duration"
    )]
    pub checkpoint_interval: Duration,
    /// And after this many lines.
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: u64,
    /// Also write each checkpoint as one JSON line on stdout (for the cluster's log pipeline).
    #[serde(default = "defaults::checkpoint_stdout")]
    pub checkpoint_stdout: bool,
    /// Regular expressions for the service's own identifiers: what they match in a logged path
    /// is replaced by a keyed pseudonym, as national ids are (see `docs/AUDIT.md`).
    #[serde(default)]
    pub redact_patterns: Vec<String>,
}

/// The chain key: a file (a Kubernetes Secret) and the id written into every line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainKeySettings {
    /// At least 32 random bytes.
    pub key_file: PathBuf,
    /// 1-16 characters of A-Z a-z 0-9 - _; a new id for every new key.
    pub key_id: String,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            sink: AuditSink::default(),
            file: None,
            queue_capacity: defaults::queue(),
            on_audit_failure: Default::default(),
            chain_key: None,
            checkpoint_file: None,
            checkpoint_interval: defaults::checkpoint_interval(),
            checkpoint_every: defaults::checkpoint_every(),
            checkpoint_stdout: defaults::checkpoint_stdout(),
            redact_patterns: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFileSettings {
    pub path: PathBuf,
    /// Rotate when the file reaches this size (bytes).
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` ... `.N`).
    #[serde(default = "defaults::max_files")]
    pub max_files: usize,
    /// `always` (fsync every batch, and a response's end waits until its event is on disk),
    /// `never`, or a duration such as `1s`.
    #[serde(default = "defaults::fsync")]
    pub fsync: String,
}

impl AuditSettings {
    /// The fsync policy of the audit file.
    pub fn fsync(&self) -> Result<FsyncPolicy, String> {
        let raw = self.file.as_ref().map_or("1s", |f| f.fsync.as_str());
        match raw {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => humantime::parse_duration(other)
                .map(FsyncPolicy::Interval)
                .map_err(|_| format!("\"{other}\" is not always, never or a duration such as 1s")),
        }
    }

    /// With a file sink and `fsync: always`, a client receives the end of a response only once
    /// the exchange's event is on disk.
    pub fn responses_wait_for_events(&self) -> bool {
        self.sink == AuditSink::File && self.fsync() == Ok(FsyncPolicy::Always)
    }

    /// Checks of the section itself; `Err((key, problem))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match (self.sink, &self.file) {
            (AuditSink::File, None) => {
                return Err(("audit.file".into(), "sink: file needs file.path".into()));
            }
            (AuditSink::Stdout, Some(_)) => {
                return Err((
                    "audit.file".into(),
                    "set sink: file to use it (the sink is stdout)".into(),
                ));
            }
            _ => {}
        }
        if let Some(file) = &self.file {
            self.fsync()
                .map_err(|problem| ("audit.file.fsync".to_owned(), problem))?;
            if file.max_bytes < 4096 || file.max_files == 0 {
                return Err((
                    "audit.file".into(),
                    "max_bytes must be at least 4096 and max_files at least 1".into(),
                ));
            }
        }
        // Fail closed: a file trail is keyed and anchored, or vakt does not start.
        if self.sink == AuditSink::File {
            if self.chain_key.is_none() {
                return Err((
                    "audit.chain_key".into(),
                    "sink: file needs chain_key (key_file, key_id): the audit chain is keyed with a secret kept outside the audit volume".into(),
                ));
            }
            if self.checkpoint_file.is_none() {
                return Err((
                    "audit.checkpoint_file".into(),
                    "sink: file needs checkpoint_file, on another volume than the audit files"
                        .into(),
                ));
            }
        }
        // The audit file and its rotated names (`audit.log.N`) are rewritten by rotation.
        if let (Some(cp), Some(file)) = (&self.checkpoint_file, &self.file) {
            let rotated = cp.parent() == file.path.parent()
                && cp
                    .file_name()
                    .zip(file.path.file_name())
                    .is_some_and(|(c, a)| {
                        c.to_string_lossy()
                            .starts_with(&format!("{}.", a.to_string_lossy()))
                    });
            if cp == &file.path || rotated {
                return Err((
                    "audit.checkpoint_file".into(),
                    "must not be the audit file itself or one of its rotated names".into(),
                ));
            }
        }
        if self.checkpoint_interval.is_zero() || self.checkpoint_every == 0 {
            return Err((
                "audit.checkpoint_interval".into(),
                "checkpoint_interval and checkpoint_every must be positive".into(),
            ));
        }
        if self.queue_capacity == 0 {
            return Err(("audit.queue_capacity".into(), "must be at least 1".into()));
        }
        for (i, pattern) in self.redact_patterns.iter().enumerate() {
            super::redact::compile_pattern(pattern)
                .map_err(|e| (format!("audit.redact_patterns[{i}]"), e.to_string()))?;
        }
        Ok(())
    }
}

mod defaults {
    pub fn checkpoint_interval() -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }
    pub fn checkpoint_every() -> u64 {
        10_000
    }
    pub fn checkpoint_stdout() -> bool {
        true
    }
    pub fn queue() -> usize {
        8192
    }
    pub fn max_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub fn max_files() -> usize {
        10
    }
    pub fn fsync() -> String {
        "1s".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AuditSettings, String> {
        let settings: AuditSettings = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        settings
            .validate()
            .map_err(|(key, problem)| format!("{key}: {problem}"))?;
        Ok(settings)
    }

    #[test]
    fn a_file_trail_needs_a_chain_key_and_a_checkpoint_file() {
        let file = "sink: file\nfile:\n  path: /var/log/vakt/audit.log\n";
        let key = "chain_key:\n  key_file: /run/key\n  key_id: c1\n";
        let checkpoints = "checkpoint_file: /var/lib/cp/audit.jsonl\n";
        let err = parse(file).unwrap_err();
        assert!(err.starts_with("audit.chain_key:"), "{err}");
        let err = parse(&format!("{file}{key}")).unwrap_err();
        assert!(err.starts_with("audit.checkpoint_file:"), "{err}");
        let ok = parse(&format!("{file}{key}{checkpoints}")).unwrap();
        assert_eq!(ok.checkpoint_interval, Duration::from_secs(60));
        assert_eq!((ok.checkpoint_every, ok.checkpoint_stdout), (10_000, true));
        let err = parse(&format!(
            "{file}{key}checkpoint_file: /var/log/vakt/audit.log\n"
        ))
        .unwrap_err();
        assert!(err.contains("not be the audit file"), "{err}");
        let err = parse(&format!(
            "{file}{key}checkpoint_file: /var/log/vakt/audit.log.3\n"
        ))
        .unwrap_err();
        assert!(err.contains("rotated names"), "{err}");
        let err = parse(&format!(
            "{file}{key}{checkpoints}checkpoint_interval: 0s\n"
        ))
        .unwrap_err();
        assert!(err.contains("must be positive"), "{err}");
        // A stdout trail may go without (its key is then per process).
        assert!(parse("sink: stdout\n").is_ok());
        assert!(
            parse("sink: stdout\nchain_key:\n  key_file: /k\n  key_id: c1\n  extra: 1\n").is_err()
        );
    }
}
