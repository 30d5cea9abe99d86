//! `vakt audit report FILE…`: a summary of a time window for the security team's review —
//! accesses per route and action, denials by reason and by peer, how many distinct subjects
//! (a count, never a list), and the busiest national-id pseudonyms; and, from the trail's own
//! records, the epochs (with the gap each break names), sequence gaps, and rotated-out files.
//! It reads; `verify` checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;

use super::chain::{EpochStart, REASON_FILE_ROTATED_OUT, parse_line};
use super::checkpoint::CHECKPOINT_PREFIX;
use super::event::AuditEvent;
use super::fields::{Action, Decision, Direction, Outcome};
use super::time::Timestamp;

/// How many national-id pseudonyms the report lists.
pub const TOP_N: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Decisions counted for one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub allow: u64,
    pub deny: u64,
    pub would_deny: u64,
    pub refused: u64,
}

/// A row of the decision columns: total, allow, deny, would_deny, refused.
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>8} {:>8} {:>8} {:>10} {:>8}",
            self.total(),
            self.allow,
            self.deny,
            self.would_deny,
            self.refused
        )
    }
}

impl Counts {
    fn add(&mut self, d: Decision) {
        match d {
            Decision::Allow => self.allow += 1,
            Decision::Deny => self.deny += 1,
            Decision::WouldDeny => self.would_deny += 1,
            Decision::Refused => self.refused += 1,
            // The trail's own records are reported apart.
            Decision::Recorded => {}
        }
    }

    pub fn total(&self) -> u64 {
        self.allow + self.deny + self.would_deny + self.refused
    }
}

/// The summary. Maps are ordered for stable output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Window: `from` inclusive, `to` exclusive; `None` is open.
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub files: usize,
    /// Events in the window.
    pub events: u64,
    /// Lines that are not audit events (run `verify` to see why).
    pub unreadable_lines: u64,
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
    pub decisions: Counts,
    /// Requests (inbound and outbound) per route id (`-` when none matched) and action
    /// (`None` when the method is unknown).
    pub accesses: BTreeMap<(String, Option<Action>), Counts>,
    /// Refused handshakes (no route, no action).
    pub handshakes_refused: u64,
    /// Exchanges by how they ended (`-` for events written before outcomes were recorded).
    pub outcomes: BTreeMap<String, u64>,
    /// Allowed exchanges the client abandoned: the app may have acted on them.
    pub allowed_then_aborted: u64,
    /// Deny and refused decisions by reason code.
    pub denials_by_reason: BTreeMap<String, u64>,
    /// Deny and refused decisions by peer SPIFFE ID (`-` when there was none).
    pub denials_by_peer: BTreeMap<String, u64>,
    /// Deny and refused decisions by (peer, route, reason): who was refused what, and why.
    pub denials_by_peer_route_reason: BTreeMap<(String, String, String), u64>,
    /// Dry-run `would_deny` by (peer, reason): what enforcing a dry-run route would refuse.
    pub would_deny_by_peer_reason: BTreeMap<(String, String), u64>,
    /// Decisions per hour (`YYYY-MM-DDTHH`, UTC).
    pub by_hour: BTreeMap<String, Counts>,
    pub distinct_subjects: usize,
    pub distinct_national_ids: usize,
    /// The [`TOP_N`] national-id pseudonyms with the most events, most first (ties by name).
    pub busiest_national_ids: Vec<(String, u64)>,
    /// Epochs begun in the window: (epoch, first seq, how it began).
    pub epochs: Vec<(u64, u64, EpochStart)>,
    /// `seq` ranges missing between consecutive lines of the files (whatever the window).
    pub gaps: Vec<(u64, u64)>,
    /// Files rotation deleted, as recorded: (first seq, last seq).
    pub rotated_out: Vec<(Option<u64>, Option<u64>)>,
}

/// Summarise the events of `paths` with `from <= time < to`.
pub fn report(
    paths: &[PathBuf],
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<Report, ReportError> {
    let mut r = Report {
        from,
        to,
        files: paths.len(),
        ..Report::default()
    };
    let mut subjects: HashSet<String> = HashSet::new();
    let mut last_seq: Option<u64> = None;
    let mut national_ids: HashMap<String, u64> = HashMap::new();
    for path in paths {
        let io_err = |source| ReportError::Io {
            path: path.clone(),
            source,
        };
        let reader = BufReader::new(File::open(path).map_err(io_err)?);
        for line in reader.split(b'\n') {
            let line = line.map_err(io_err)?;
            if line.is_empty() || line.starts_with(CHECKPOINT_PREFIX.as_bytes()) {
                continue;
            }
            let Ok(parsed) = parse_line(&line) else {
                r.unreadable_lines += 1;
                continue;
            };
            let e = parsed.event;
            if let Some(prev) = last_seq
                && e.seq > prev + 1
                && e.chain.as_ref().is_none_or(|c| c.epoch_start.is_none())
            {
                r.gaps.push((prev + 1, e.seq - 1));
            }
            last_seq = Some(e.seq);
            if from.is_some_and(|f| e.time < f) || to.is_some_and(|t| e.time >= t) {
                continue;
            }
            if let Some(note) = &e.chain {
                if let Some(start) = note.epoch_start {
                    r.epochs.push((e.epoch, e.seq, start));
                } else if e.reason.as_str() == REASON_FILE_ROTATED_OUT {
                    r.rotated_out
                        .push((note.rotated_first_seq, note.rotated_last_seq));
                }
                continue;
            }
            r.add(&e, &mut subjects, &mut national_ids);
        }
    }
    r.distinct_subjects = subjects.len();
    r.distinct_national_ids = national_ids.len();
    let mut busiest: Vec<(String, u64)> = national_ids.into_iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    busiest.truncate(TOP_N);
    r.busiest_national_ids = busiest;
    Ok(r)
}

impl Report {
    fn add(
        &mut self,
        e: &AuditEvent,
        subjects: &mut HashSet<String>,
        national_ids: &mut HashMap<String, u64>,
    ) {
        self.events += 1;
        self.first = Some(self.first.map_or(e.time, |t| t.min(e.time)));
        self.last = Some(self.last.map_or(e.time, |t| t.max(e.time)));
        self.decisions.add(e.decision);
        let hour = e.time.to_string().get(..13).unwrap_or_default().to_owned();
        self.by_hour.entry(hour).or_default().add(e.decision);
        let peer = e.peer.as_ref().map_or("-", |p| p.as_str()).to_owned();
        let route = e.route.as_ref().map_or("-", |r| r.as_str()).to_owned();
        if e.decision == Decision::WouldDeny {
            *self
                .would_deny_by_peer_reason
                .entry((peer.clone(), e.reason.as_str().to_owned()))
                .or_default() += 1;
        }
        if e.decision.is_denial() {
            *self
                .denials_by_peer_route_reason
                .entry((peer.clone(), route.clone(), e.reason.as_str().to_owned()))
                .or_default() += 1;
        }
        if e.direction == Direction::Handshake {
            self.handshakes_refused += 1;
        } else {
            let route = e.route.as_ref().map_or("-", |r| r.as_str()).to_owned();
            self.accesses
                .entry((route, e.action))
                .or_default()
                .add(e.decision);
        }
        *self
            .outcomes
            .entry(e.outcome.map_or("-", Outcome::as_str).to_owned())
            .or_default() += 1;
        if e.decision == Decision::Allow && e.outcome == Some(Outcome::ClientAborted) {
            self.allowed_then_aborted += 1;
        }
        if e.decision.is_denial() {
            *self
                .denials_by_reason
                .entry(e.reason.as_str().to_owned())
                .or_default() += 1;
            let peer = e.peer.as_ref().map_or("-", |p| p.as_str()).to_owned();
            *self.denials_by_peer.entry(peer).or_default() += 1;
        }
        if let Some(s) = &e.subject_pseudonym {
            subjects.insert(s.as_str().to_owned());
        }
        if let Some(n) = &e.national_id_pseudonym {
            *national_ids.entry(n.as_str().to_owned()).or_default() += 1;
        }
    }
}

/// Rows of a map, most first (ties by name).
fn by_count(map: &BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    let mut rows: Vec<(&str, u64)> = map.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    rows
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let open =
            |t: Option<Timestamp>, s: &'static str| t.map_or(s.to_owned(), |t| t.to_string());
        writeln!(f, "vakt audit report")?;
        match (self.from, self.to, self.first, self.last) {
            (None, None, Some(first), Some(last)) => writeln!(
                f,
                "window: {first} .. {last} (every event in the files; --from/--to narrow it)"
            )?,
            _ => writeln!(
                f,
                "window: {} .. {} (from inclusive, to exclusive)",
                open(self.from, "the first event"),
                open(self.to, "the last event")
            )?,
        }
        let c = &self.decisions;
        writeln!(
            f,
            "events: {} in {} file{} (allow {}, deny {}, would_deny {}, refused {})",
            self.events,
            self.files,
            if self.files == 1 { "" } else { "s" },
            c.allow,
            c.deny,
            c.would_deny,
            c.refused
        )?;
        if let (Some(first), Some(last)) = (self.first, self.last) {
            writeln!(f, "first event: {first}, last event: {last}")?;
        }
        if self.unreadable_lines > 0 {
            writeln!(
                f,
                "warning: {} lines are not audit events and were skipped; run `vakt audit verify`",
                self.unreadable_lines
            )?;
        }
        for (epoch, seq, start) in &self.epochs {
            let flag = if start.is_break() { "warning: " } else { "" };
            writeln!(
                f,
                "{flag}epoch {epoch} begins at seq {seq} ({}){}",
                start.as_str(),
                if start.is_break() {
                    ": the trail did not continue its last checkpoint; run `vakt audit verify`"
                } else {
                    ""
                }
            )?;
        }
        for (a, b) in &self.gaps {
            writeln!(
                f,
                "warning: seq {a} to {b} missing from the files; run `vakt audit verify`"
            )?;
        }
        for (a, b) in &self.rotated_out {
            let show = |v: &Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
            writeln!(f, "rotated out (recorded): seq {} to {}", show(a), show(b))?;
        }

        writeln!(f, "\nAccesses by route and action")?;
        if self.accesses.is_empty() {
            writeln!(f, "  (none)")?;
        } else {
            let width = self
                .accesses
                .keys()
                .map(|(r, _)| r.len())
                .max()
                .unwrap_or(0)
                .max(5);
            writeln!(
                f,
                "  {:<width$}  {:<7} {:>8} {:>8} {:>8} {:>10} {:>8}",
                "route", "action", "total", "allow", "deny", "would_deny", "refused"
            )?;
            for ((route, action), c) in &self.accesses {
                writeln!(
                    f,
                    "  {:<width$}  {:<7} {c}",
                    route,
                    action.map_or("-", Action::as_str),
                )?;
            }
        }
        if self.handshakes_refused > 0 {
            writeln!(f, "  refused TLS handshakes: {}", self.handshakes_refused)?;
        }

        if self.allowed_then_aborted > 0 {
            writeln!(
                f,
                "  allowed, then abandoned by the client (the app may have acted): {}",
                self.allowed_then_aborted
            )?;
        }

        for (title, map) in [
            ("Outcomes", &self.outcomes),
            ("Denials by reason", &self.denials_by_reason),
            ("Denials by peer", &self.denials_by_peer),
        ] {
            writeln!(f, "\n{title}")?;
            let rows = by_count(map);
            if rows.is_empty() {
                writeln!(f, "  (none)")?;
            }
            let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (key, n) in rows {
                writeln!(f, "  {key:<width$}  {n:>8}")?;
            }
        }

        writeln!(f, "\nDenials by peer, route and reason")?;
        let mut rows: Vec<(&(String, String, String), &u64)> =
            self.denials_by_peer_route_reason.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        if rows.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for ((peer, route, reason), n) in rows {
            writeln!(f, "  {peer}  {route}  {reason}  {n:>8}")?;
        }
        writeln!(
            f,
            "\nDry-run: would be denied, by peer and reason (what enforcing would refuse)"
        )?;
        let mut rows: Vec<(&(String, String), &u64)> =
            self.would_deny_by_peer_reason.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        if rows.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for ((peer, reason), n) in rows {
            writeln!(f, "  {peer}  {reason}  {n:>8}")?;
        }
        writeln!(f, "\nBy hour (UTC)")?;
        writeln!(
            f,
            "  {:<13}  {:>8} {:>8} {:>8} {:>10} {:>8}",
            "hour", "total", "allow", "deny", "would_deny", "refused"
        )?;
        for (hour, c) in &self.by_hour {
            writeln!(f, "  {hour:<13}  {c}")?;
        }

        writeln!(
            f,
            "\nDistinct subjects (pseudonymised): {}",
            self.distinct_subjects
        )?;
        writeln!(
            f,
            "\nBusiest national-id pseudonyms (top {} of {})",
            TOP_N, self.distinct_national_ids
        )?;
        if self.busiest_national_ids.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for (pseudonym, n) in &self.busiest_national_ids {
            writeln!(f, "  {pseudonym}  {n:>8}")?;
        }
        Ok(())
    }
}

impl Report {
    /// The summary as JSON, for a SIEM or a script: the same tables as the text.
    pub fn json(&self) -> serde_json::Value {
        let counts = |c: &Counts| {
            serde_json::json!({"total": c.total(), "allow": c.allow, "deny": c.deny,
                               "would_deny": c.would_deny, "refused": c.refused})
        };
        let time = |t: Option<Timestamp>| t.map(|t| t.to_string());
        serde_json::json!({
            "from": time(self.from), "to": time(self.to),
            "first_event": time(self.first), "last_event": time(self.last),
            "files": self.files, "events": self.events,
            "unreadable_lines": self.unreadable_lines,
            "decisions": counts(&self.decisions),
            "accesses": self.accesses.iter().map(|((route, action), c)| {
                let mut row = counts(c);
                row["route"] = route.as_str().into();
                row["action"] = action.map(Action::as_str).into();
                row
            }).collect::<Vec<_>>(),
            "handshakes_refused": self.handshakes_refused,
            "outcomes": self.outcomes,
            "allowed_then_aborted": self.allowed_then_aborted,
            "denials_by_reason": self.denials_by_reason,
            "denials_by_peer": self.denials_by_peer,
            "denials_by_peer_route_reason": self.denials_by_peer_route_reason.iter()
                .map(|((peer, route, reason), n)| serde_json::json!(
                    {"peer": peer, "route": route, "reason": reason, "count": n}))
                .collect::<Vec<_>>(),
            "would_deny_by_peer_reason": self.would_deny_by_peer_reason.iter()
                .map(|((peer, reason), n)| serde_json::json!(
                    {"peer": peer, "reason": reason, "count": n}))
                .collect::<Vec<_>>(),
            "by_hour": self.by_hour.iter().map(|(hour, c)| {
                let mut row = counts(c);
                row["hour"] = hour.as_str().into();
                row
            }).collect::<Vec<_>>(),
            "distinct_subjects": self.distinct_subjects,
            "distinct_national_ids": self.distinct_national_ids,
            "busiest_national_ids": self.busiest_national_ids.iter()
                .map(|(p, n)| serde_json::json!({"pseudonym": p, "count": n}))
                .collect::<Vec<_>>(),
            "epochs": self.epochs.iter()
                .map(|(epoch, seq, start)| serde_json::json!(
                    {"epoch": epoch, "first_seq": seq, "start": start.as_str(), "break": start.is_break()}))
                .collect::<Vec<_>>(),
            "gaps": self.gaps.iter().map(|(a, b)| serde_json::json!({"first_seq": a, "last_seq": b})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::audit::chain::ChainWriter;
    use crate::audit::fields::{Label, Pseudonym, Text};
    use crate::pseudonym::Pseudonymiser;

    /// A generated stream with known counts. Times: one event per second from a fixed start.
    fn generate(path: &std::path::Path) -> Timestamp {
        let p = Pseudonymiser::from_secret("k1", &[3; 32]);
        let start = Timestamp::parse_rfc3339("2025-03-01T08:00:00Z").unwrap();
        let mut chain = ChainWriter::new(crate::audit::testutil::test_key());
        let mut out = String::new();
        for i in 0..1000u64 {
            let (direction, decision, reason) = match i % 10 {
                0..=5 => (Direction::Inbound, Decision::Allow, "rule_matched"),
                6 => (Direction::Inbound, Decision::Deny, "peer_not_allowed"),
                7 => (Direction::Inbound, Decision::Deny, "token_expired"),
                8 => (
                    Direction::Inbound,
                    Decision::WouldDeny,
                    "insufficient_scope",
                ),
                _ => (Direction::Handshake, Decision::Refused, "unknown_ca"),
            };
            let mut e = AuditEvent::new(direction, decision, Label::new(reason).unwrap());
            // Every allowed exchange with i % 10 == 5 was abandoned by its client; the first
            // ten events predate outcomes.
            e.outcome = match (i < 10, i % 10, decision) {
                (true, ..) => None,
                (_, 5, _) => Some(Outcome::ClientAborted),
                (_, _, Decision::Deny | Decision::Refused) => Some(Outcome::Refused),
                _ => Some(Outcome::Completed),
            };
            e.time = Timestamp::from_unix_millis(start.unix_millis() + 1000 * i as i64).unwrap();
            e.peer =
                Some(Text::new(format!("spiffe://cluster.local/ns/n/sa/peer{}", i % 3)).unwrap());
            if direction != Direction::Handshake {
                e.route = Some(Label::new(if i % 2 == 0 { "journal" } else { "notes" }).unwrap());
                e.set_method(if i % 4 == 1 { "POST" } else { "GET" });
                e.subject_pseudonym = Some(Pseudonym::subject(&p, &format!("sub{}", i % 25)));
                // Event i concerns patient i % 13.
                e.national_id_pseudonym =
                    Some(Pseudonym::national_id(&p, &format!("0101{:07}", i % 13)));
            }
            out.push_str(&chain.seal(e).text);
            out.push('\n');
        }
        out.push_str("not an event\n");
        fs::write(path, out).unwrap();
        start
    }

    #[test]
    fn counts_over_a_generated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let start = generate(&path);
        let r = report(std::slice::from_ref(&path), None, None).unwrap();
        assert_eq!(r.events, 1000);
        assert_eq!(r.unreadable_lines, 1);
        assert_eq!(
            r.decisions,
            Counts {
                allow: 600,
                deny: 200,
                would_deny: 100,
                refused: 100
            }
        );
        assert_eq!(r.handshakes_refused, 100);
        assert_eq!(
            r.outcomes,
            BTreeMap::from([
                ("-".to_owned(), 10),
                ("client_aborted".to_owned(), 99),
                ("completed".to_owned(), 594),
                ("refused".to_owned(), 297),
            ])
        );
        assert_eq!(r.allowed_then_aborted, 99);
        let text = r.to_string();
        assert!(
            text.contains("allowed, then abandoned by the client (the app may have acted): 99"),
            "{text}"
        );
        // Routes: even i → journal, odd → notes; POST when i % 4 == 1 (always odd → notes).
        // Request events are i % 10 in 0..=8: 900 of them, 500 even and 400 odd.
        let journal_read = r.accesses[&("journal".to_owned(), Some(Action::Read))];
        let notes_read = r.accesses[&("notes".to_owned(), Some(Action::Read))];
        let notes_create = r.accesses[&("notes".to_owned(), Some(Action::Create))];
        assert_eq!(journal_read.total(), 500);
        assert_eq!(notes_read.total() + notes_create.total(), 400);
        // i % 4 == 1 and i % 10 != 9: 250 values of i % 4 == 1, of which i % 10 == 9 are
        // i % 20 == 9: 50.
        assert_eq!(notes_create.total(), 200);
        assert_eq!(r.accesses.len(), 3);
        // Allow: i % 10 in 0..=5, even ones go to journal: 0, 2, 4 → 300.
        assert_eq!(journal_read.allow, 300);
        assert_eq!(journal_read.deny, 100, "i % 10 == 6");
        assert_eq!(journal_read.would_deny, 100, "i % 10 == 8");
        assert_eq!(
            r.denials_by_reason,
            BTreeMap::from([
                ("peer_not_allowed".to_owned(), 100),
                ("token_expired".to_owned(), 100),
                ("unknown_ca".to_owned(), 100),
            ])
        );
        assert_eq!(r.denials_by_peer.values().sum::<u64>(), 300);
        assert_eq!(r.denials_by_peer.len(), 3);
        assert_eq!(r.distinct_subjects, 25);
        assert_eq!(r.distinct_national_ids, 13);
        assert_eq!(r.busiest_national_ids.len(), TOP_N);
        let counts: Vec<u64> = r.busiest_national_ids.iter().map(|(_, n)| *n).collect();
        assert!(counts.windows(2).all(|w| w[0] >= w[1]));
        // Exact: count request events per patient.
        let p = Pseudonymiser::from_secret("k1", &[3; 32]);
        let mut want: HashMap<String, u64> = HashMap::new();
        for i in (0..1000u64).filter(|i| i % 10 != 9) {
            *want
                .entry(Pseudonym::national_id(&p, &format!("0101{:07}", i % 13)).to_string())
                .or_default() += 1;
        }
        for (pseudonym, n) in &r.busiest_national_ids {
            assert_eq!(want[pseudonym], *n, "{pseudonym}");
        }
        assert_eq!(counts[0], *want.values().max().unwrap());
        assert_eq!(r.first, Some(start));

        // A window: events 100..200 (to exclusive).
        let from = Timestamp::from_unix_millis(start.unix_millis() + 100_000).unwrap();
        let to = Timestamp::from_unix_millis(start.unix_millis() + 200_000).unwrap();
        let w = report(&[path], Some(from), Some(to)).unwrap();
        assert_eq!(w.events, 100);
        assert_eq!(w.decisions.allow, 60);
        assert_eq!(
            (w.first, w.last.map(|t| t.unix_millis())),
            (Some(from), Some(to.unix_millis() - 1000))
        );

        let text = r.to_string();
        for needle in [
            "events: 1000 in 1 file (allow 600, deny 200, would_deny 100, refused 100)",
            "Accesses by route and action",
            "journal",
            "Denials by reason",
            "peer_not_allowed",
            "Denials by peer",
            "spiffe://cluster.local/ns/n/sa/peer0",
            "Distinct subjects (pseudonymised): 25",
            "Busiest national-id pseudonyms (top 10 of 13)",
            "refused TLS handshakes: 100",
            "1 lines are not audit events",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("0101"), "no raw national ids in the report");
    }

    #[test]
    fn epochs_gaps_and_rotated_files_are_flagged() {
        use crate::audit::chain::{ChainNote, ChainPosition, EpochStart, note_event};
        use crate::audit::fields::ChainHash;
        use crate::audit::testutil::{event, test_key};

        let key = test_key();
        let mut w = ChainWriter::new(key.clone());
        let mut lines: Vec<String> = (1..=5).map(|n| w.seal(event(n)).text).collect();
        lines.push(
            w.seal(note_event(ChainNote {
                rotated_first_seq: Some(1),
                rotated_last_seq: Some(3),
                ..ChainNote::default()
            }))
            .text,
        );
        // seq 7 to 8 deleted from the file.
        w.seal(event(7));
        w.seal(event(8));
        lines.push(w.seal(event(9)).text);
        // A new epoch after a cut tail.
        let mut w = ChainWriter::resume(
            ChainPosition {
                next_seq: 20,
                prev: ChainHash::ZERO,
                epoch: 2,
            },
            key,
        );
        lines.push(
            w.seal(note_event(ChainNote {
                epoch_start: Some(EpochStart::Truncated),
                prev_epoch: Some(1),
                checkpoint_seq: Some(19),
                found_seq: Some(9),
                ..ChainNote::default()
            }))
            .text,
        );
        lines.push(w.seal(event(21)).text);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        fs::write(&path, lines.join("\n") + "\n").unwrap();
        let r = report(&[path], None, None).unwrap();
        // The trail's own records are not accesses.
        assert_eq!(r.events, 7);
        assert_eq!(r.epochs, [(2, 20, EpochStart::Truncated)]);
        assert_eq!(r.gaps, [(7, 8)]);
        assert_eq!(r.rotated_out, [(Some(1), Some(3))]);
        let text = r.to_string();
        for needle in [
            "warning: epoch 2 begins at seq 20 (truncated)",
            "warning: seq 7 to 8 missing from the files",
            "rotated out (recorded): seq 1 to 3",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
