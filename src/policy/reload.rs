//! The running policy, swapped atomically when the file changes or on SIGHUP. A new policy is
//! parsed and checked completely first; an invalid one is rejected, logged and counted, and the
//! running policy keeps answering. Readiness is not affected by a rejected reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::compile::{Policy, PolicyError, read_policy_file};
use super::file::PolicyContext;
use crate::metrics as m;

pub struct PolicyStore {
    current: ArcSwap<Policy>,
    path: PathBuf,
    context: PolicyContext,
    /// The file content the current policy came from (reloads of identical bytes are skipped).
    loaded_text: Mutex<String>,
    /// The last version rejected: its content, or why the file could not be read. A watcher that
    /// finds it again skips it, so one bad version is logged and counted once.
    rejected: Mutex<Option<Result<String, String>>>,
}

#[derive(Debug)]
pub enum PolicyReload {
    Unchanged,
    Reloaded,
    Rejected(PolicyError),
}

const RELOAD_SUCCESS: &str = "success";
const RELOAD_FAILURE: &str = "failure";

impl PolicyStore {
    /// The reload counters at zero (`metrics::register_at_zero`).
    pub fn register_failure_series() {
        for result in [RELOAD_SUCCESS, RELOAD_FAILURE] {
            m::register_at_zero(m::POLICY_RELOADS, &[("result", result)]);
        }
    }

    pub fn load(path: &Path, context: PolicyContext) -> Result<Self, PolicyError> {
        let text = read_policy_file(path)?;
        let policy = Policy::from_yaml(&text, &context).map_err(|e| e.in_file(path))?;
        record_loaded(&policy);
        Ok(Self {
            current: ArcSwap::from_pointee(policy),
            path: path.to_owned(),
            context,
            loaded_text: Mutex::new(text),
            rejected: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-read the file now (SIGHUP): a rejected version is reported however often it is seen.
    pub fn reload(&self) -> PolicyReload {
        self.reload_from(false)
    }

    /// Re-read the file after a change was seen or on the periodic re-read: a version rejected
    /// before is skipped (reported as unchanged).
    pub fn reload_changed(&self) -> PolicyReload {
        self.reload_from(true)
    }

    fn reload_from(&self, skip_rejected: bool) -> PolicyReload {
        let outcome = self.try_reload(skip_rejected);
        match &outcome {
            PolicyReload::Unchanged => {}
            PolicyReload::Reloaded => {
                metrics::counter!(m::POLICY_RELOADS, "result" => RELOAD_SUCCESS).increment(1);
                tracing::info!(path = %self.path.display(), routes = self.current().routes.len(), "policy reloaded");
            }
            PolicyReload::Rejected(error) => {
                metrics::counter!(m::POLICY_RELOADS, "result" => RELOAD_FAILURE).increment(1);
                tracing::error!(path = %self.path.display(), error = %error.one_line(), "new policy rejected; the running policy stays");
            }
        }
        outcome
    }

    fn try_reload(&self, skip_rejected: bool) -> PolicyReload {
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if skip_rejected {
            // A file that changed is read once it stopped changing: a writer that truncates and
            // then writes is not caught in between.
            let bytes = std::fs::read(&self.path).ok();
            let loaded = self.loaded_text.lock().unwrap_or_else(|p| p.into_inner());
            let changed = bytes.as_deref() != Some(loaded.as_bytes());
            drop(loaded);
            if changed {
                crate::watch::settled(bytes, || std::fs::read(&self.path).ok());
            }
        }
        let read = read_policy_file(&self.path);
        let seen_before = match (&*rejected, &read) {
            (Some(Ok(old)), Ok(new)) => old == new,
            (Some(Err(old)), Err(new)) => *old == new.to_string(),
            _ => false,
        };
        if skip_rejected && seen_before {
            return PolicyReload::Unchanged;
        }
        let text = match read {
            Ok(t) => t,
            Err(e) => {
                *rejected = Some(Err(e.to_string()));
                return PolicyReload::Rejected(e);
            }
        };
        let mut loaded = self.loaded_text.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded == text {
            *rejected = None;
            return PolicyReload::Unchanged;
        }
        match Policy::from_yaml(&text, &self.context) {
            Ok(policy) => {
                record_loaded(&policy);
                self.current.store(Arc::new(policy));
                *loaded = text;
                *rejected = None;
                PolicyReload::Reloaded
            }
            Err(e) => {
                *rejected = Some(Ok(text));
                PolicyReload::Rejected(e.in_file(&self.path))
            }
        }
    }

    /// Watch the policy file's directory and reload on change, on every `interval`, until
    /// shutdown; prune idle rate-limit keys every minute.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let store = self.clone();
        let watcher = crate::watch::spawn_watcher(
            "policy",
            vec![crate::watch::parent_dir(&self.path)],
            interval,
            shutdown.clone(),
            move || {
                store.reload_changed();
            },
        );
        let store = self.clone();
        let pruner = crate::ratelimit::spawn_pruner(Duration::from_secs(60), shutdown, move || {
            store.current().limits.prune();
        });
        vec![watcher, pruner]
    }
}

fn record_loaded(policy: &Policy) {
    metrics::gauge!(m::POLICY_ROUTES).set(policy.routes.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that truncates the file and writes the new version a moment later (`cp`, an
    /// editor saving in place), with a re-read landing in between: the empty file is never taken
    /// for a broken version, the new one is taken once whole.
    #[test]
    fn a_file_rewritten_in_place_is_read_once_it_stopped_changing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        let route = |id: &str| {
            format!(
                "routes:\n  - id: {id}\n    methods: [GET]\n    path: /a\n    allow:\n      - peers: [spiffe://td/ns/a/sa/b]\n"
            )
        };
        std::fs::write(&path, route("first")).unwrap();
        let context = PolicyContext::with_trust_domains(&["td".parse().unwrap()]);
        let store = PolicyStore::load(&path, context).unwrap();
        std::fs::write(&path, "").unwrap();
        let late = {
            let (path, text) = (path.clone(), route("second"));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(path, text).unwrap();
            })
        };
        let outcome = store.reload_changed();
        late.join().unwrap();
        assert!(matches!(outcome, PolicyReload::Reloaded), "{outcome:?}");
        assert_eq!(&*store.current().routes[0].id, "second");
    }
}
