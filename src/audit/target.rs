//! The request target as the audit trail may hold it when vakt refused a request before its path
//! could be canonicalised (`invalid_path`, `invalid_host`): the raw bytes may be anything a
//! client sent, so only their plain shape is kept.

use super::fields::Text;

/// Longest redacted target, in bytes; a longer one is cut at a segment boundary and ends in
/// `...`.
pub const TARGET_MAX: usize = 256;

/// Marks a target cut at [`TARGET_MAX`].
const CUT: &str = "...";

/// A segment kept as it is: only characters that need no decoding and cannot hide anything.
fn is_plain(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// `raw` (a request path, possibly with a query) redacted for the audit trail: the query and
/// fragment dropped, every `/`-separated segment that is not plain `[A-Za-z0-9._~-]` replaced by
/// `*`, and at most [`TARGET_MAX`] bytes. Never fails: an empty target is `/`.
pub fn redact_target(raw: &str) -> Text {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    let mut out = String::with_capacity(path.len().min(TARGET_MAX));
    for (i, segment) in path.split('/').enumerate() {
        let piece = if is_plain(segment) { segment } else { "*" };
        let separator = usize::from(i > 0);
        if out.len() + separator + piece.len() > TARGET_MAX - CUT.len() {
            out.push_str(CUT);
            break;
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(piece);
    }
    if out.is_empty() {
        out.push('/');
    }
    Text::sanitized(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_their_plain_shape_only() {
        let table = [
            ("/orders/1", "/orders/1"),
            ("/orders%2F1", "/*"),
            ("/a/%2e%2e/b", "/a/*/b"),
            ("/a/../b/./c", "/a/../b/./c"),
            ("/a//b/", "/a//b/"),
            ("/a/b?token=eyJhbGciOi", "/a/b"),
            ("/a/b#frag", "/a/b"),
            ("/patients/x y/journal", "/patients/*/journal"),
            ("/a\\b/c", "/*/c"),
            ("/æøå/ok", "/*/ok"),
            ("/a;jsessionid=1/b", "/*/b"),
            ("*", "*"),
            ("", "/"),
            ("?q=1", "/"),
            ("relative/x", "relative/x"),
        ];
        for (raw, want) in table {
            assert_eq!(redact_target(raw).as_str(), want, "{raw:?}");
        }
    }

    #[test]
    fn long_targets_are_cut_at_a_segment_boundary() {
        let raw = format!("/{}", ["abcdefghij"; 40].join("/"));
        let redacted = redact_target(&raw);
        let s = redacted.as_str();
        assert!(s.len() <= TARGET_MAX, "{}", s.len());
        assert!(s.ends_with("/abcdefghij..."), "{s}");
        assert!(raw.starts_with(s.strip_suffix(CUT).unwrap()));
        // One segment longer than the bound: nothing of it is kept.
        let one = format!("/{}", "a".repeat(1000));
        assert_eq!(redact_target(&one).as_str(), "...");
    }
}
