//! What a logged path, query or target may not carry in clear: national ids (found by
//! [`crate::nid`], replaced by their keyed pseudonym in the [`KIND_NATIONAL_ID`] namespace, so
//! the same person has the same pseudonym in a path as in `national_id_pseudonym`) and the
//! service's own identifiers named by `audit.redact_patterns` (replaced by a keyed pseudonym in
//! the [`KIND_REDACTED`] namespace: equal values stay correlatable, nothing is readable).

use std::borrow::Cow;
use std::sync::Arc;

use regex::Regex;

use crate::nid;
use crate::pseudonym::{KIND_NATIONAL_ID, Pseudonymiser};

/// Pseudonym namespace of what `audit.redact_patterns` matched.
pub const KIND_REDACTED: &str = "redacted";

/// A pattern of `audit.redact_patterns` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedactPatternError {
    #[error("not a valid regular expression: {0}")]
    Invalid(#[from] regex::Error),
    #[error("matches the empty string, so it would match everywhere")]
    MatchesEmpty,
}

/// Compile one pattern of `audit.redact_patterns`.
pub fn compile_pattern(pattern: &str) -> Result<Regex, RedactPatternError> {
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()?;
    if re.is_match("") {
        return Err(RedactPatternError::MatchesEmpty);
    }
    Ok(re)
}

/// Replaces national ids and the configured patterns in logged text.
pub struct Redactor {
    pseudonyms: Arc<Pseudonymiser>,
    patterns: Vec<Regex>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// `patterns` as written in `audit.redact_patterns`; `Err((index, why))` for the first that
    /// cannot be used.
    pub fn new(
        pseudonyms: Arc<Pseudonymiser>,
        patterns: &[String],
    ) -> Result<Self, (usize, RedactPatternError)> {
        let patterns = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| compile_pattern(p).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pseudonyms,
            patterns,
        })
    }

    /// National ids only (no configured patterns).
    pub fn national_ids(pseudonyms: Arc<Pseudonymiser>) -> Self {
        Self {
            pseudonyms,
            patterns: Vec::new(),
        }
    }

    pub fn pseudonyms(&self) -> &Pseudonymiser {
        &self.pseudonyms
    }

    /// `text` with every national id and every match of a configured pattern replaced by its
    /// pseudonym; borrowed when there is nothing to replace. Matches are taken on the original
    /// text (a pseudonym is never searched again); where two overlap, the earlier one wins.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.patterns.is_empty() {
            return nid::replace(text, |found| {
                self.pseudonyms
                    .pseudonym(KIND_NATIONAL_ID, &found.canonical(text))
            });
        }
        let mut hits: Vec<(usize, usize, Option<nid::Found>)> = nid::find(text)
            .into_iter()
            .map(|f| (f.range.start, f.range.end, Some(f)))
            .collect();
        for re in &self.patterns {
            hits.extend(re.find_iter(text).map(|m| (m.start(), m.end(), None)));
        }
        if hits.is_empty() {
            return Cow::Borrowed(text);
        }
        hits.sort_by_key(|(start, end, _)| (*start, std::cmp::Reverse(*end)));
        let mut out = String::with_capacity(text.len() + 48 * hits.len());
        let mut at = 0;
        for (start, end, found) in hits {
            if start < at {
                continue;
            }
            out.push_str(&text[at..start]);
            out.push_str(&match found {
                Some(f) => self
                    .pseudonyms
                    .pseudonym(KIND_NATIONAL_ID, &f.canonical(text)),
                None => self.pseudonyms.pseudonym(KIND_REDACTED, &text[start..end]),
            });
            at = end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(patterns: &[&str]) -> Redactor {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        Redactor::new(
            Arc::new(Pseudonymiser::from_secret("k1", &[7; 32])),
            &patterns,
        )
        .unwrap()
    }

    // A valid fødselsnummer (check digits 1 and 5: the published worked example).
    const FNR: &str = "31129956715";

    #[test]
    fn national_ids_become_their_national_id_pseudonym() {
        let r = redactor(&[]);
        let pseudonym = r.pseudonyms().pseudonym(KIND_NATIONAL_ID, FNR);
        let text = format!("/patients/{FNR}/journal?pid={FNR}");
        assert_eq!(
            r.redact(&text),
            format!("/patients/{pseudonym}/journal?pid={pseudonym}")
        );
        assert!(matches!(r.redact("/orders/1"), Cow::Borrowed(_)));
    }

    #[test]
    fn configured_patterns_become_pseudonyms_of_their_own_kind() {
        let r = redactor(&[r"\bMRN-[0-9]{6}\b", r"case-[a-z]+"]);
        let text = format!("/records/MRN-123456/case-abc/{FNR}");
        let out = r.redact(&text);
        let mrn = r.pseudonyms().pseudonym(KIND_REDACTED, "MRN-123456");
        let case = r.pseudonyms().pseudonym(KIND_REDACTED, "case-abc");
        let nid = r.pseudonyms().pseudonym(KIND_NATIONAL_ID, FNR);
        assert_eq!(out, format!("/records/{mrn}/{case}/{nid}"));
        assert_ne!(
            mrn,
            r.pseudonyms().pseudonym(KIND_NATIONAL_ID, "MRN-123456")
        );
        // Overlapping matches: the earlier and longer one is replaced once.
        let r = redactor(&[r"x/[0-9]+", r"[0-9]{11}"]);
        let text = format!("/x/{FNR}");
        let out = r.redact(&text);
        assert_eq!(
            out,
            format!(
                "/{}",
                r.pseudonyms().pseudonym(KIND_REDACTED, &format!("x/{FNR}"))
            )
        );
        assert!(!out.contains(FNR));
    }

    #[test]
    fn unusable_patterns_are_refused_with_their_index() {
        let p = Arc::new(Pseudonymiser::from_secret("k1", &[7; 32]));
        let bad = |patterns: &[&str]| {
            let patterns: Vec<String> = patterns.iter().map(|s| (*s).to_owned()).collect();
            Redactor::new(p.clone(), &patterns).unwrap_err()
        };
        assert!(matches!(
            bad(&["ok", "("]),
            (1, RedactPatternError::Invalid(_))
        ));
        assert!(matches!(
            bad(&["a*"]),
            (0, RedactPatternError::MatchesEmpty)
        ));
        assert!(
            RedactPatternError::MatchesEmpty
                .to_string()
                .contains("empty string")
        );
    }
}
