//! Reload-on-change for files mounted from Kubernetes: watch the directories (ConfigMaps and
//! Secrets update by swapping a `..data` symlink, which a watch on the file itself misses), settle
//! bursts of events, and also reload on a slow interval as a safety net. Only events that can mean
//! new content count: a reload opens and reads the files, and reacting to that would re-read them
//! in a loop.

use std::path::PathBuf;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

/// Run `reload` (on a blocking thread) after changes in `dirs` and every `interval`, until
/// `shutdown` fires. `what` names the files in logs.
pub fn spawn_watcher<F>(
    what: &'static str,
    mut dirs: Vec<PathBuf>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    reload: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() + Clone + Send + Sync + 'static,
{
    dirs.sort();
    dirs.dedup();
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| may_change_content(&e.kind)) {
            let _ = tx.try_send(());
        }
    });
    let watcher = match watcher {
        Ok(mut w) => {
            for dir in &dirs {
                if let Err(error) = w.watch(dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(what, dir = %dir.display(), %error, "cannot watch directory; relying on periodic reload");
                }
            }
            Some(w)
        }
        Err(error) => {
            tracing::warn!(what, %error, "file watching unavailable; relying on periodic reload");
            None
        }
    };
    tokio::spawn(async move {
        let _watcher = watcher; // stops watching when the task ends
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Some(()) = rx.recv() => {
                    // Let a burst of events (several files, a symlink swap) settle first.
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = shutdown.changed() => return,
            }
            let _ = tokio::task::spawn_blocking(reload.clone()).await;
        }
    })
}

/// How long changed files must stay unchanged before they are read, and how many times that
/// wait is repeated while they keep changing.
pub const SETTLE: Duration = Duration::from_millis(200);
pub const SETTLE_ROUNDS: usize = 5;

/// `first`, or what `read` gives once two reads `SETTLE` apart agree (at most `SETTLE_ROUNDS`
/// waits): a writer that replaces files in several steps (the key, then the certificate; a
/// truncate, then a write) is given a moment, so a read between its steps is not taken for a
/// new version. Blocks: call from a blocking task.
pub fn settled<T: PartialEq>(mut first: T, read: impl Fn() -> T) -> T {
    for _ in 0..SETTLE_ROUNDS {
        std::thread::sleep(SETTLE);
        let now = read();
        if now == first {
            break;
        }
        first = now;
    }
    first
}

/// Whether an event can mean that a file's content changed: created, written (and closed after
/// writing), renamed or removed. Opening, reading and closing without writing (what every reload
/// does) and access-time updates cannot.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}

/// The directory of `path` (`.` for a bare file name).
pub fn parent_dir(path: &std::path::Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, RemoveKind, RenameMode};

    #[test]
    fn reading_a_file_is_no_change_and_writing_one_is() {
        let ignored = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ];
        for kind in ignored {
            assert!(!may_change_content(&kind), "{kind:?}");
        }
        let counted = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Create(CreateKind::Any),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
            EventKind::Other,
        ];
        for kind in counted {
            assert!(may_change_content(&kind), "{kind:?}");
        }
    }
}
