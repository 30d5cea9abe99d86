//! The audit line: an event written as one JSON object, directly (the writer thread formats
//! every event).

use super::event::{AuditEvent, SCHEMA};
use super::fields::{Action, Label, Outcome, Pseudonym, Text};

/// `,"name":` — a field's key with its punctuation, as one literal.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl AuditEvent {
    /// Append this event to `out` as one JSON object without a newline: the bytes of an audit
    /// line, which the chain hashes. The JSON is the same, byte for byte, as `serde_json` makes
    /// from the `Serialize` impl (field order, omitted fields, escapes; a test holds the two
    /// together). It is written directly because the writer thread formats every event, and
    /// serde's per-field machinery and escaping were most of that thread's time.
    pub fn write_json(&self, out: &mut String) {
        // The optional fields' values, when present.
        fn label(l: &Option<Label>) -> Option<&str> {
            l.as_ref().map(Label::as_str)
        }
        fn text(t: &Option<Text>) -> Option<&str> {
            t.as_ref().map(Text::as_str)
        }
        fn pseudonym(p: &Option<Pseudonym>) -> Option<&str> {
            p.as_ref().map(Pseudonym::as_str)
        }

        string(out, "{\"schema\":", SCHEMA);
        number(out, key!("seq"), self.seq);
        string(out, key!("prev"), self.prev.hex(&mut [0; 64]));
        number(out, key!("epoch"), self.epoch);
        opt_string(out, key!("chain_key_id"), label(&self.chain_key_id));
        if let Some(note) = &self.chain {
            out.push_str(key!("chain"));
            note.write_json(out);
        }
        let mut id = uuid::Uuid::encode_buffer();
        string(
            out,
            key!("id"),
            self.id.0.hyphenated().encode_lower(&mut id),
        );
        string(out, key!("time"), self.time.rfc3339(&mut [0; 24]));
        string(out, key!("direction"), self.direction.as_str());
        string(out, key!("decision"), self.decision.as_str());
        string(out, key!("reason"), self.reason.as_str());
        opt_string(out, key!("request_id"), label(&self.request_id));
        opt_string(out, key!("trace_id"), label(&self.trace_id));
        opt_string(out, key!("route"), label(&self.route));
        opt_number(out, key!("rule"), self.rule.map(u64::from));
        opt_string(out, key!("method"), label(&self.method));
        opt_string(out, key!("action"), self.action.map(Action::as_str));
        opt_string(out, key!("route_template"), text(&self.route_template));
        opt_string(out, key!("path"), text(&self.path));
        opt_string(out, key!("peer"), text(&self.peer));
        opt_string(out, key!("destination"), text(&self.destination));
        opt_string(out, key!("expected_peer"), text(&self.expected_peer));
        opt_string(out, key!("source"), text(&self.source));
        opt_string(out, key!("issuer"), text(&self.issuer));
        opt_string(out, key!("client_id"), label(&self.client_id));
        opt_string(out, key!("dpop_jkt"), label(&self.dpop_jkt));
        let subject = pseudonym(&self.subject_pseudonym);
        opt_string(out, key!("subject_pseudonym"), subject);
        let national_id = pseudonym(&self.national_id_pseudonym);
        opt_string(out, key!("national_id_pseudonym"), national_id);
        opt_string(out, key!("loa"), label(&self.loa));
        if let Some((first, rest)) = self.amr.split_first() {
            out.push_str(key!("amr"));
            out.push('[');
            push_json_string(out, first.as_str());
            for amr in rest {
                out.push(',');
                push_json_string(out, amr.as_str());
            }
            out.push(']');
        }
        opt_number(out, key!("status"), self.status.map(u64::from));
        opt_string(out, key!("outcome"), self.outcome.map(Outcome::as_str));
        opt_number(out, key!("bytes_in"), self.bytes_in);
        opt_number(out, key!("bytes_out"), self.bytes_out);
        opt_number(out, key!("duration_ms"), self.duration_ms);
        out.push('}');
    }
}

/// `key` (see [`key!`]) and `value` as a JSON string.
fn string(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    push_json_string(out, value);
}

/// `key` (see [`key!`]) and `value` as a JSON number.
fn number(out: &mut String, key: &str, value: u64) {
    out.push_str(key);
    out.push_str(itoa::Buffer::new().format(value));
}

/// [`string`], when there is a value (an absent field is left out).
fn opt_string(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        string(out, key, value);
    }
}

/// [`number`], when there is a value (an absent field is left out).
fn opt_number(out: &mut String, key: &str, value: Option<u64>) {
    if let Some(value) = value {
        number(out, key, value);
    }
}

/// `value` as a JSON string: `"`, `\` and control characters escaped the way `serde_json`
/// does (`\n`, `\u001f`, ...), everything else as it is.
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    // Audit values are checked to need no escape, so test that first and copy the value whole;
    // 16 bytes at a time, without a branch per byte.
    let needs_escape = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    if value
        .as_bytes()
        .chunks(16)
        .all(|chunk| !chunk.iter().fold(false, |any, &b| any | needs_escape(b)))
    {
        out.push_str(value);
        out.push('"');
        return;
    }
    let mut clean = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Everything before `i` is whole characters: `i` is at an ASCII byte.
        out.push_str(&value[clean..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        } else {
            out.push_str(escape);
        }
        clean = i + 1;
    }
    out.push_str(&value[clean..]);
    out.push('"');
}
