//! Serde helpers shared by the modules' config types: values that YAML has no type for.

use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

/// A duration written as humantime text (`500ms`, `10s`, `5m`).
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "\"{s}\" is not a duration: {e} (expected e.g. 500ms, 10s, 5m)"
        ))
    })
}

/// A list of HTTP header names, each checked.
pub fn de_header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                serde::de::Error::custom(format!("\"{n}\" is not a valid HTTP header name"))
            })
        })
        .collect()
}

/// A YAML file that could not be read into its type: where, and what, in words a reader of the
/// file understands (not the parser's terms). One line; [`YamlError::excerpt`] shows the place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.one_line())]
pub struct YamlError {
    /// 1-based; 0 when the parser gave no position.
    pub line: u64,
    pub column: u64,
    /// The keys leading to the place, dotted (`routes.rate_limit.per_second`), when the text
    /// shows them.
    pub key: Option<String>,
    pub message: String,
}

impl YamlError {
    fn one_line(&self) -> String {
        match (self.line, &self.key) {
            (0, _) => self.message.clone(),
            (line, Some(key)) => format!(
                "line {line} column {}, {key}: {}",
                self.column, self.message
            ),
            (line, None) => format!("line {line} column {}: {}", self.column, self.message),
        }
    }

    /// The offending line of `text` and the one before it, with a caret under the column,
    /// headed by `file:line:column` (for a terminal; logs take the one-line form).
    pub fn excerpt(&self, file: &str, text: &str) -> String {
        if self.line == 0 {
            return String::new();
        }
        let at = self.line as usize;
        let width = at.to_string().len();
        let mut out = format!("  --> {file}:{}:{}\n", self.line, self.column);
        for n in at.saturating_sub(1).max(1)..=at {
            let content = text.lines().nth(n - 1).unwrap_or("");
            out.push_str(&format!("{n:>width$} | {content}\n"));
        }
        let pad = " ".repeat(width + 3 + (self.column as usize).saturating_sub(1));
        out.push_str(&format!("{pad}^\n"));
        out
    }
}

/// Read YAML `text` into `T`, strictly: booleans only as `true`/`false` (YAML 1.1's `yes`,
/// `on`, `y` are refused, not read as true), duplicate keys refused. Errors in plain words.
pub fn from_yaml<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, YamlError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let raw = e.without_snippet().to_string();
        // The parser puts the position in front; it is kept apart here.
        let message = match raw.split_once(": ") {
            Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => {
                rest.to_owned()
            }
            _ => raw,
        };
        let message = message
            .strip_suffix(&format!(" at line {line}, column {column}"))
            .unwrap_or(&message)
            .to_owned();
        YamlError {
            line,
            column,
            // A missing field, or a value of the wrong shape, is reported where the mapping or
            // value starts: a key written there is a sibling, not the subject.
            key: key_at(
                text,
                line,
                column,
                ![
                    "missing field",
                    "expected sequence start",
                    "expected mapping start",
                ]
                .iter()
                .any(|m| message.starts_with(m)),
            ),
            message: plain_words(&message),
        }
    })
}

/// The keys of block mappings leading to `line`/`column` of `text`, with list positions
/// (`routes[0].allow[1].min_loa`): the `key:` left of the column on that line (or, with
/// `own_key`, the key the line starts with), then each less indented `key:` or `- ` item above.
fn key_at(text: &str, line: u64, column: u64, own_key: bool) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = usize::try_from(line).ok()?.checked_sub(1)?;
    let current = *lines.get(at)?;
    let left = current
        .get(
            ..usize::try_from(column)
                .ok()?
                .saturating_sub(1)
                .min(current.len()),
        )
        .unwrap_or(current);
    let key_of = |text: &str| -> Option<String> {
        let text = text.trim_start().trim_start_matches("- ").trim_start();
        let (key, _) = text.split_once(':')?;
        let key = key.trim().trim_matches(['"', '\'']);
        (!key.is_empty()
            && key
                .chars()
                .all(|c| c.is_alphanumeric() || "_-.".contains(c)))
        .then(|| key.to_owned())
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let is_item = |l: &str| l.trim_start().starts_with("- ");
    let mut keys: Vec<String> = Vec::new();
    match key_of(left) {
        Some(k) => keys.push(k),
        None if own_key => keys.extend(key_of(current)),
        None => {}
    }
    // Within a flow mapping on this line ({a: 1, b: x}), the nearest key before the column.
    if left.contains(['{', ','])
        && let Some(k) = left.rsplit([',', '{']).next().and_then(key_of)
        && keys.last() != Some(&k)
    {
        keys.push(k);
    }
    // The list item the line itself opens.
    let mut depth = indent(current);
    let mut item_line = is_item(current).then_some(at);
    for (n, above) in lines[..at].iter().enumerate().rev() {
        if above.trim().is_empty() || above.trim_start().starts_with('#') {
            continue;
        }
        let level = indent(above);
        if let Some(item) = item_line
            && level < indent(lines[item])
        {
            // `above` holds the list: the item's index among its siblings.
            let siblings = lines[n + 1..=item]
                .iter()
                .filter(|l| is_item(l) && indent(l) == indent(lines[item]))
                .count();
            match keys.first_mut() {
                Some(first) => *first = format!("[{}].{first}", siblings - 1),
                None => keys.push(format!("[{}]", siblings - 1)),
            }
            item_line = None;
        }
        if level < depth {
            if is_item(above) {
                // A key inside an item goes under that item's index.
                if let Some(k) = key_of(above).filter(|_| level + 2 < depth) {
                    keys.insert(0, k);
                }
                item_line = Some(n);
            } else if let Some(k) = key_of(above) {
                let joined = keys.first().is_some_and(|f| f.starts_with('['));
                if joined {
                    keys[0] = format!("{k}{}", keys[0]);
                } else {
                    keys.insert(0, k);
                }
            }
            depth = level;
            if depth == 0 {
                break;
            }
        }
    }
    (!keys.is_empty()).then(|| keys.join(".").replace(".[", "["))
}

/// The parser's terms for what it expected, in the words of someone writing the file.
fn plain_words(message: &str) -> String {
    const TERMS: &[(&str, &str)] = &[
        (
            "expected sequence start",
            "expected a list here (items on lines starting with \"- \", or [a, b])",
        ),
        (
            "expected mapping start",
            "expected keys with values here (key: value), not a single value",
        ),
        ("invalid u64", "expected a whole number, 0 or more"),
        (
            "invalid u32",
            "expected a whole number, 0 or more (at most 4294967295)",
        ),
        ("invalid u16", "expected a whole number from 0 to 65535"),
        ("invalid u8", "expected a whole number from 0 to 255"),
        ("invalid i64", "expected a whole number"),
        ("invalid f64", "expected a number"),
    ];
    for (term, plain) in TERMS {
        if message.trim() == *term {
            return (*plain).to_owned();
        }
        if let Some(rest) = message.strip_prefix(term) {
            return format!("{plain}{rest}");
        }
    }
    if message.contains("expected a nonzero ") {
        return "expected a whole number, 1 or more (not 0)".to_owned();
    }
    if message.contains("invalid boolean") || message.contains("expected a boolean") {
        return format!("{message} (write true or false)");
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        #[serde(default)]
        on: bool,
        #[serde(default)]
        list: Vec<String>,
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn yaml_errors_say_where_and_what_in_plain_words() {
        for (text, line, words) in [
            ("on: yes\n", 1, "line 1 column 5, on: "),
            ("on: yes\n", 1, "true or false"),
            ("on: y\n", 1, "true or false"),
            ("list: one\n", 1, "expected a list here"),
            ("count: -1\n", 1, "expected a whole number, 0 or more"),
            ("count: 1\ncount: 2\n", 2, "duplicate"),
            ("list:\n  - a\n  - b: c\n", 3, ", list[1]"),
            ("colour: red\n", 1, "unknown field `colour`"),
        ] {
            let e = from_yaml::<Doc>(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e:?}");
            assert!(e.to_string().contains(words), "{text}: {e}");
            assert!(!e.to_string().contains("<input>"), "{e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
            assert_eq!(
                e.to_string().matches("line ").count(),
                1,
                "the place once: {e}"
            );
        }
        let ok: Doc = from_yaml("on: true\nlist: [a]\ncount: 3\n").unwrap();
        assert!(ok.on);
        let e = from_yaml::<Doc>("list:\n  - a\ncount: lots\n").unwrap_err();
        let excerpt = e.excerpt("policy.yaml", "list:\n  - a\ncount: lots\n");
        assert!(excerpt.starts_with("  --> policy.yaml:3:8\n"), "{excerpt}");
        assert!(excerpt.contains("3 | count: lots\n"), "{excerpt}");
        assert!(
            excerpt.ends_with("       ^\n") || excerpt.contains("^"),
            "{excerpt}"
        );
    }
}
