//! Golden renders: every render in `RENDERS` is compared byte for byte with its file in
//! `tests/golden/helm/`. Nothing in the chart's output is nondeterministic (the config checksum
//! is a hash of the config), so nothing is normalised. A chart change shows as a diff here, and
//! `VAKT_UPDATE_GOLDEN=1` rewrites the files so that the change is reviewed in `git diff`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{RENDERS, Rendered, repo};

/// Regenerates the goldens; the security properties are still checked while it does.
pub(super) const REGENERATE: &str = "VAKT_UPDATE_GOLDEN=1 cargo test --test e2e helm::";
/// Diff lines shown on a mismatch.
const SHOWN: usize = 60;
/// Context lines around each change.
const CONTEXT: usize = 3;

pub(super) fn updating() -> bool {
    std::env::var("VAKT_UPDATE_GOLDEN").as_deref() == Ok("1")
}

fn dir() -> PathBuf {
    repo().join("tests/golden/helm")
}

fn relative(name: &str) -> String {
    format!("tests/golden/helm/{name}.yaml")
}

/// `r`'s text must be its golden file's (or, when updating, becomes it).
pub(super) fn compare(r: &Rendered) {
    let path = dir().join(format!("{}.yaml", r.label));
    let golden = std::fs::read_to_string(&path).ok();
    if golden.as_deref() == Some(r.text.as_str()) {
        return;
    }
    if updating() {
        std::fs::create_dir_all(dir()).unwrap();
        std::fs::write(&path, &r.text).unwrap();
        eprintln!("updated {}", relative(&r.label));
        return;
    }
    let Some(golden) = golden else {
        panic!(
            "render {}: no golden file {}; make it with\n  {REGENERATE}",
            r.label,
            relative(&r.label)
        );
    };
    panic!(
        "render {} differs from its golden file (- golden, + helm template now):\n\
         --- {}\n+++ {}\n{}\n\
         If the change is intended, regenerate the goldens and review them in git diff:\n  {REGENERATE}",
        r.label,
        relative(&r.label),
        r.command,
        unified_diff(&golden, &r.text)
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Same,
    Removed,
    Added,
}

/// The lines of `old` and `new` as a sequence of kept, removed and added lines (a longest common
/// subsequence of what lies between the common head and tail).
fn line_ops<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<(Op, &'a str)> {
    let head = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let tail = old[head..]
        .iter()
        .rev()
        .zip(new[head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (a, b) = (&old[head..old.len() - tail], &new[head..new.len() - tail]);
    // lcs[i][j]: length of a longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(Op, &str)> = old[..head].iter().map(|l| (Op::Same, *l)).collect();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((Op::Same, a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push((Op::Removed, a[i]));
            i += 1;
        } else {
            ops.push((Op::Added, b[j]));
            j += 1;
        }
    }
    ops.extend(old[old.len() - tail..].iter().map(|l| (Op::Same, *l)));
    ops
}

/// A unified diff of `old` and `new` (hunks with a few lines of context), cut after
/// [`SHOWN`] lines.
pub(super) fn unified_diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let ops = line_ops(&a, &b);
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != Op::Same).collect();
    if changed.is_empty() {
        return "(the same lines: only line endings or the final newline differ)".to_owned();
    }
    // Hunks: runs of changes closer than two contexts apart, with their context.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changed {
        let (start, end) = (k.saturating_sub(CONTEXT), (k + CONTEXT + 1).min(ops.len()));
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    // Line numbers (1-based) in old and new where each op starts.
    let mut at = Vec::with_capacity(ops.len());
    let (mut o, mut n) = (1, 1);
    for (op, _) in &ops {
        at.push((o, n));
        match op {
            Op::Same => (o, n) = (o + 1, n + 1),
            Op::Removed => o += 1,
            Op::Added => n += 1,
        }
    }
    let mut out = Vec::new();
    for (start, end) in hunks {
        let slice = &ops[start..end];
        let olen = slice.iter().filter(|(op, _)| *op != Op::Added).count();
        let nlen = slice.iter().filter(|(op, _)| *op != Op::Removed).count();
        out.push(format!(
            "@@ -{},{olen} +{},{nlen} @@",
            at[start].0, at[start].1
        ));
        for (op, line) in slice {
            let sign = match op {
                Op::Same => ' ',
                Op::Removed => '-',
                Op::Added => '+',
            };
            out.push(format!("{sign}{line}"));
        }
    }
    let total = out.len();
    if total > SHOWN {
        out.truncate(SHOWN);
        out.push(format!("... {} more diff lines", total - SHOWN));
    }
    out.join("\n")
}

/// Every render has a test and a golden file, and no golden file is left from a render that is
/// gone (when updating, such files are removed).
#[test]
fn every_render_has_a_test_and_a_golden_file() {
    let renders: BTreeSet<&str> = RENDERS.iter().map(|r| r.name).collect();
    let tested: BTreeSet<&str> = super::render::TESTED.iter().copied().collect();
    assert_eq!(tested, renders, "RENDERS and the tests in mod render");
    let examples: BTreeSet<&str> = RENDERS.iter().filter_map(|r| r.values).collect();
    assert_eq!(
        examples,
        super::EXAMPLES.iter().copied().collect(),
        "a render for every example values file"
    );
    let files: BTreeSet<String> = std::fs::read_dir(dir())
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for file in &files {
        let known = file
            .strip_suffix(".yaml")
            .is_some_and(|name| renders.contains(name));
        if !known && updating() {
            std::fs::remove_file(dir().join(file)).unwrap();
            eprintln!("removed tests/golden/helm/{file}");
        } else {
            assert!(known, "tests/golden/helm/{file} belongs to no render");
        }
    }
    if !updating() {
        for name in &renders {
            assert!(
                files.contains(&format!("{name}.yaml")),
                "no golden file {}; make it with\n  {REGENERATE}",
                relative(name)
            );
        }
    }
}

#[test]
fn unified_diff_shows_the_changed_lines_with_context() {
    let old: String = (1..=20).map(|n| format!("{n}\n")).collect();
    let new = old.replace("\n3\n", "\nthree\n").replace("\n17\n", "\n");
    assert_eq!(
        unified_diff(&old, &new),
        "@@ -1,6 +1,6 @@\n 1\n 2\n-3\n+three\n 4\n 5\n 6\n\
         @@ -14,7 +14,6 @@\n 14\n 15\n 16\n-17\n 18\n 19\n 20"
    );
}
