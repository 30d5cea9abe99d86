//! The code layout that `scripts/build-release` links the shipped binary with
//! (benches/mesh/hot-text.ld, made by `benches/mesh/run --hot-text`): well formed, and free of
//! anything that only one build's symbols have. That the linker takes it, and how much code it
//! puts in front, `scripts/build-release` checks on the binary it builds.

use std::path::{Path, PathBuf};

const OUTPUT_SECTION: &str = ".text.hot";

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/mesh/hot-text.ld")
}

fn script() -> String {
    std::fs::read_to_string(script_path()).expect("benches/mesh/hot-text.ld is readable")
}

/// One line of the output section: the sections of one function, or the `.text` of one
/// object of a `-sys` crate's archive (assembly has no section per function).
#[derive(Debug, PartialEq)]
enum Listed<'a> {
    /// `*(.text.NAME .text.unlikely.NAME)`
    Function(&'a str),
    /// `*:*-OBJECT(.text)`
    Object(&'a str),
}

fn parse_line(line: &str) -> Option<Listed<'_>> {
    if let Some(object) = line
        .strip_prefix("    *:*-")
        .and_then(|l| l.strip_suffix("(.text)"))
    {
        return Some(Listed::Object(object));
    }
    let (name, unlikely) = line
        .strip_prefix("    *(.text.")?
        .strip_suffix(')')?
        .split_once(" .text.unlikely.")?;
    (name == unlikely).then_some(Listed::Function(name))
}

/// The glob of every listed line, in the script's order.
fn listed(script: &str) -> Vec<&str> {
    script
        .lines()
        .filter_map(parse_line)
        .map(|l| match l {
            Listed::Function(name) | Listed::Object(name) => name,
        })
        .collect()
}

#[test]
fn the_script_puts_one_output_section_before_text_and_lists_each_function_once() {
    let script = script();
    let body: Vec<&str> = script
        .lines()
        .skip_while(|l| !l.starts_with("SECTIONS"))
        .collect();
    assert_eq!(
        &body[..4],
        &["SECTIONS", "{", &format!("  {OUTPUT_SECTION} :"), "  {"]
    );
    assert_eq!(
        &body[body.len() - 3..],
        &["  }", "}", "INSERT BEFORE .text;"]
    );
    // Every line between the braces lists a function or an object, in globs that the linkers'
    // script lexers read as one bare token each.
    let lines = &body[4..body.len() - 3];
    for line in lines {
        let glob = match parse_line(line) {
            Some(Listed::Function(name) | Listed::Object(name)) => name,
            None => panic!("not a function or object line: {line:?}"),
        };
        assert!(
            !glob.is_empty()
                && glob
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.$*-".contains(&b)),
            "a glob with characters a linker script lexer splits on: {glob:?}"
        );
    }
    let all = listed(&script);
    assert_eq!(all.len(), lines.len());
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a function is listed twice");
    // A real profile: the request path's crates are in it, vakt's own code among them, and
    // the assembly of SHA-256 and AES-GCM (TLS records, token and audit hashes).
    assert!(all.len() > 1000, "only {} lines", all.len());
    for crate_name in ["4vakt", "5hyper", "2h2", "6rustls", "5tokio"] {
        assert!(
            all.iter().any(|p| p.contains(crate_name)),
            "no function of {crate_name} in the hot text"
        );
    }
    for object in ["sha256-x86_64.o", "aesni-gcm-x86_64.o"] {
        assert!(
            script
                .lines()
                .any(|l| parse_line(l) == Some(Listed::Object(object))),
            "{object} is not in the hot text"
        );
    }
}

#[test]
fn the_globs_hold_nothing_that_only_one_build_has() {
    for glob in listed(&script()) {
        assert!(!has_legacy_hash(glob), "symbol hash in {glob}");
        if glob.starts_with("_R") {
            assert!(
                !has_crate_disambiguator(glob),
                "crate disambiguator in {glob}"
            );
            assert!(!has_back_reference(glob), "back-reference in {glob}");
        }
        let last = glob.rsplit('.').next().unwrap();
        assert!(
            last.is_empty() || !last.bytes().all(|b| b.is_ascii_digit()),
            "the compiler's number of a local symbol in {glob}"
        );
        assert!(!glob.contains("aws_lc_0_"), "aws-lc's version in {glob}");
        assert!(
            !has_object_build_prefix(glob),
            "an archive member's build prefix in {glob}"
        );
    }
}

/// The prefix cc gives an object in a `-sys` crate's archive: 16 hex digits and `-`.
fn has_object_build_prefix(glob: &str) -> bool {
    let bytes = glob.as_bytes();
    bytes.len() > 17 && bytes[..16].iter().all(u8::is_ascii_hexdigit) && bytes[16] == b'-'
}

/// A legacy-mangled symbol's hash: `17h`, 16 hex digits, `E`.
fn has_legacy_hash(glob: &str) -> bool {
    glob.match_indices("17h").any(|(i, _)| {
        let rest = &glob.as_bytes()[i + 3..];
        rest.len() > 16 && rest[..16].iter().all(u8::is_ascii_hexdigit) && rest[16] == b'E'
    })
}

/// A v0-mangled crate root's disambiguator: `Cs`, base-62 digits, `_`, then the crate name's
/// length.
fn has_crate_disambiguator(glob: &str) -> bool {
    glob.match_indices("Cs").any(|(i, _)| {
        let rest = &glob[i + 2..];
        let digits = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphanumeric())
                .len();
        rest[digits..].starts_with('_')
            && rest[digits + 1..].starts_with(|c: char| c.is_ascii_digit())
    })
}

/// A v0 back-reference: `B`, base-62 digits, `_` (an offset into the name).
fn has_back_reference(glob: &str) -> bool {
    glob.match_indices('B').any(|(i, _)| {
        let rest = &glob[i + 1..];
        rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric())
            .starts_with('_')
    })
}

#[test]
fn the_checks_of_the_globs_catch_what_they_look_for() {
    assert!(has_legacy_hash("_ZN4vakt5proxy3run17h0123456789abcdefE"));
    assert!(!has_legacy_hash("_ZN4vakt5proxy3run17h*E"));
    assert!(has_crate_disambiguator(
        "_RNvNtCsjrHSEGnQ3l9_3std6thread3new"
    ));
    assert!(!has_crate_disambiguator("_RNvNtCs*_3std6thread3new"));
    assert!(has_object_build_prefix("6cca901d1d9807b8-sha256-x86_64.o"));
    assert!(!has_object_build_prefix("sha256-x86_64.o"));
    assert!(has_back_reference("_RINtB3_8OnceCell"));
    assert!(has_back_reference("_RINtB_8OnceCell"));
    assert!(!has_back_reference("_RINtB*_8OnceCell"));
    assert_eq!(
        parse_line("    *(.text.rol64 .text.unlikely.rol64)"),
        Some(Listed::Function("rol64"))
    );
    assert_eq!(parse_line("    *(.text.a .text.unlikely.b)"), None);
    assert_eq!(
        parse_line("    *:*-sha256-x86_64.o(.text)"),
        Some(Listed::Object("sha256-x86_64.o"))
    );
}
