//! Finds Nordic national identity numbers in free text (paths, queries, request targets, log
//! fields) so they can be replaced before the text is written anywhere.
//!
//! One pass over the bytes, driven by runs of digits: a candidate is a whole token (the bytes
//! before and after it are not letters or digits; a percent escape such as `%3D` counts as a
//! delimiter) of one of these shapes, accepted only when its date is a real calendar date and
//! its check digits hold:
//!
//! | kind | shape | check |
//! |---|---|---|
//! | Norwegian fødselsnummer, D-number (day + 40), H-number (month + 40), synthetic (Tenor, month + 80) | `DDMMYYIIIKK` | two mod-11 check digits |
//! | Swedish personnummer, samordningsnummer (day + 60) | `YYMMDD-NNNC`, `YYMMDD+NNNC`, `YYMMDDNNNC`, `YYYYMMDDNNNC`, `YYYYMMDD-NNNC` | Luhn over the ten-digit form |
//! | Danish CPR | `DDMMYY-SSSS`, `DDMMYYSSSS` | none (date only: the mod-11 check is not kept since 2007) |
//! | Finnish HETU | `DDMMYYCZZZQ`, century sign `+ - A-F U-Y` | mod-31 check character |
//!
//! The Danish form has no check, so any ten-digit token starting with a valid `DDMMYY` matches
//! (about 3.7 % of random ten-digit numbers, some phone numbers and timestamps among them):
//! over-redaction is the safe side for an audit trail.

use std::borrow::Cow;
use std::ops::Range;

/// Which national id a token was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NidKind {
    /// Norwegian fødselsnummer, D-number, H-number or synthetic test number (11 digits).
    NoFodselsnummer,
    /// Swedish personnummer or samordningsnummer, ten-digit form (with or without separator).
    SePersonnummer10,
    /// Swedish personnummer or samordningsnummer, twelve-digit form.
    SePersonnummer12,
    /// Danish CPR number.
    DkCpr,
    /// Finnish personal identity code (henkilötunnus).
    FiHetu,
}

/// A national id found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: NidKind,
    /// Byte range of the token in the text searched.
    pub range: Range<usize>,
}

impl Found {
    /// The form of the id that is pseudonymised: the form identity providers put in their
    /// national-id claims, so a pseudonym made from a path equals the one made from a token.
    /// Norwegian: the 11 digits; Swedish: the 12 digits (the century of a ten-digit form comes
    /// from its separator: `-` or none means under 100 years old, `+` older); Danish: the 10
    /// digits without `-`; Finnish: the code in upper case.
    pub fn canonical(&self, text: &str) -> String {
        let token = &text[self.range.clone()];
        match self.kind {
            NidKind::NoFodselsnummer => token.to_owned(),
            NidKind::DkCpr | NidKind::SePersonnummer12 => {
                token.chars().filter(char::is_ascii_digit).collect()
            }
            NidKind::FiHetu => token.to_ascii_uppercase(),
            NidKind::SePersonnummer10 => se_twelve_digits(token.as_bytes(), current_year()),
        }
    }
}

/// Every national id in `text`, in order, not overlapping.
pub fn find(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    scan(text.as_bytes(), |found| out.push(found));
    out
}

/// Does `text` hold any national id?
pub fn contains(text: &str) -> bool {
    let mut any = false;
    scan(text.as_bytes(), |_| any = true);
    any
}

/// `text` with every national id replaced by `with(found)`; borrowed when there is none.
pub fn replace<'a>(text: &'a str, mut with: impl FnMut(&Found) -> String) -> Cow<'a, str> {
    let found = find(text);
    if found.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 48 * found.len());
    let mut at = 0;
    for f in &found {
        out.push_str(&text[at..f.range.start]);
        out.push_str(&with(f));
        at = f.range.end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// The marker that stands for a national id where no pseudonym can be made (response bodies).
pub const MARKER: &str = "[national-id]";

/// `text` with every national id replaced by [`MARKER`].
pub fn mask(text: &str) -> Cow<'_, str> {
    replace(text, |_| MARKER.to_owned())
}

fn scan(b: &[u8], mut on_found: impl FnMut(Found)) {
    let mut i = 0;
    // Is position `i` at the start of a token (after a delimiter or at the start)?
    let mut at_start = true;
    while i < b.len() {
        let c = b[i];
        if c == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            // An escape is a delimiter: `%3D` before a number must not hide it.
            i += 3;
            at_start = true;
            continue;
        }
        if !c.is_ascii_alphanumeric() {
            i += 1;
            at_start = true;
            continue;
        }
        if at_start
            && c.is_ascii_digit()
            && let Some((end, kind)) = match_at(b, i)
        {
            on_found(Found {
                kind,
                range: i..end,
            });
            i = end;
            continue;
        }
        // Not an id: skip the rest of this alphanumeric run.
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        at_start = false;
    }
}

/// Does a token end at `k` (end of text or a byte that is not a letter or digit)?
fn ends_at(b: &[u8], k: usize) -> bool {
    k == b.len() || !b[k].is_ascii_alphanumeric()
}

fn digits(b: &[u8], from: usize, n: usize) -> bool {
    b.len() >= from + n && b[from..from + n].iter().all(u8::is_ascii_digit)
}

/// The id starting at `i` (a digit at a token start): its end and kind.
fn match_at(b: &[u8], i: usize) -> Option<(usize, NidKind)> {
    let run = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let j = i + run;
    let t = &b[i..];
    match run {
        11 if ends_at(b, j) => no_valid(&t[..11]).then_some((j, NidKind::NoFodselsnummer)),
        12 if ends_at(b, j) => {
            se_valid(&t[2..12], Some(&t[..4])).then_some((j, NidKind::SePersonnummer12))
        }
        10 if ends_at(b, j) => {
            if se_valid(&t[..10], None) {
                Some((j, NidKind::SePersonnummer10))
            } else if dk_valid(&t[..6]) {
                Some((j, NidKind::DkCpr))
            } else {
                None
            }
        }
        8 if matches!(b.get(j), Some(b'-' | b'+')) && digits(b, j + 1, 4) && ends_at(b, j + 5) => {
            let mut ten = [0u8; 10];
            ten[..6].copy_from_slice(&t[2..8]);
            ten[6..].copy_from_slice(&t[9..13]);
            se_valid(&ten, Some(&t[..4])).then_some((j + 5, NidKind::SePersonnummer12))
        }
        6 => {
            let sep = *b.get(j)?;
            if digits(b, j + 1, 4) && ends_at(b, j + 5) {
                let mut ten = [0u8; 10];
                ten[..6].copy_from_slice(&t[..6]);
                ten[6..].copy_from_slice(&t[7..11]);
                if matches!(sep, b'-' | b'+') && se_valid(&ten, None) {
                    return Some((j + 5, NidKind::SePersonnummer10));
                }
            }
            if fi_century(sep).is_some()
                && digits(b, j + 1, 3)
                && b.len() > j + 4
                && ends_at(b, j + 5)
                && fi_valid(&t[..11])
            {
                return Some((j + 5, NidKind::FiHetu));
            }
            (sep == b'-' && digits(b, j + 1, 4) && ends_at(b, j + 5) && dk_valid(&t[..6]))
                .then_some((j + 5, NidKind::DkCpr))
        }
        _ => None,
    }
}

fn num(d: &[u8]) -> u32 {
    d.iter().fold(0, |n, c| n * 10 + u32::from(c - b'0'))
}

/// Is day `day` of month `month` a calendar date? `leap`: is February 29 allowed?
fn valid_date(day: u32, month: u32, leap: bool) -> bool {
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

fn is_leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

/// Norwegian: the date (with the D, H and synthetic offsets) and the two mod-11 check digits.
fn no_valid(d: &[u8]) -> bool {
    let mut day = num(&d[0..2]);
    let mut month = num(&d[2..4]);
    if day > 40 {
        day -= 40; // D-number
    }
    if month > 80 {
        month -= 80; // synthetic test number (Skatteetaten's Tenor)
    } else if month > 40 {
        month -= 40; // H-number
    }
    let yy = num(&d[4..6]);
    let individual = num(&d[6..9]);
    let year = match individual {
        0..=499 => 1900 + yy,
        500..=749 if yy >= 54 => 1800 + yy,
        500..=999 if yy <= 39 => 2000 + yy,
        900..=999 => 1900 + yy,
        // 750-899 with a year of 40-53: not issued; the date alone decides.
        _ => 1900 + yy,
    };
    if !valid_date(day, month, is_leap(year)) {
        return false;
    }
    let check = |weights: &[u32]| -> Option<u32> {
        let sum: u32 = weights
            .iter()
            .zip(d)
            .map(|(w, c)| w * u32::from(c - b'0'))
            .sum();
        match 11 - sum % 11 {
            11 => Some(0),
            10 => None,
            k => Some(k),
        }
    };
    check(&[3, 7, 6, 1, 8, 9, 4, 5, 2]) == Some(u32::from(d[9] - b'0'))
        && check(&[5, 4, 3, 2, 7, 6, 5, 4, 3, 2]) == Some(u32::from(d[10] - b'0'))
}

/// Swedish: `ten` is `YYMMDDNNNC`; the date (day + 60 for a samordningsnummer) and the Luhn
/// check. `century` is the first two digits of a twelve-digit form (for February 29).
fn se_valid(ten: &[u8], century: Option<&[u8]>) -> bool {
    let yy = num(&ten[0..2]);
    let month = num(&ten[2..4]);
    let mut day = num(&ten[4..6]);
    if day > 60 {
        day -= 60;
    }
    let leap = match century {
        Some(c) => is_leap(num(&c[..2]) * 100 + yy),
        None => yy.is_multiple_of(4),
    };
    if !valid_date(day, month, leap) {
        return false;
    }
    let sum: u32 = ten
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let v = u32::from(c - b'0') * if i % 2 == 0 { 2 } else { 1 };
            v / 10 + v % 10
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Danish: `DDMMYY` is a calendar date (February 29 in every year divisible by 4).
fn dk_valid(d: &[u8]) -> bool {
    valid_date(
        num(&d[0..2]),
        num(&d[2..4]),
        num(&d[4..6]).is_multiple_of(4),
    )
}

/// The century of a Finnish century sign (either case).
fn fi_century(sign: u8) -> Option<u32> {
    match sign.to_ascii_uppercase() {
        b'+' => Some(1800),
        b'-' | b'Y' | b'X' | b'W' | b'V' | b'U' => Some(1900),
        b'A' | b'B' | b'C' | b'D' | b'E' | b'F' => Some(2000),
        _ => None,
    }
}

const FI_CHECK: &[u8; 31] = b"0123456789ABCDEFHJKLMNPRSTUVWXY";

/// Finnish: `DDMMYYCZZZQ`; the date in its century and the mod-31 check character.
fn fi_valid(d: &[u8]) -> bool {
    let Some(century) = fi_century(d[6]) else {
        return false;
    };
    if !digits(d, 0, 6) || !digits(d, 7, 3) {
        return false;
    }
    let yy = num(&d[4..6]);
    if !valid_date(num(&d[0..2]), num(&d[2..4]), is_leap(century + yy)) {
        return false;
    }
    let n = num(&d[0..6]) * 1000 + num(&d[7..10]);
    FI_CHECK[(n % 31) as usize] == d[10].to_ascii_uppercase()
}

/// The twelve-digit form of a ten-digit Swedish number (`YYMMDD[-+]?NNNC`) in `this_year`.
fn se_twelve_digits(token: &[u8], this_year: u32) -> String {
    let plus = token.contains(&b'+');
    let ten: Vec<u8> = token.iter().copied().filter(u8::is_ascii_digit).collect();
    let yy = num(&ten[..2]);
    // The latest year ending in `yy` not after this year; a `+` adds a hundred years of age.
    let mut year = this_year - (this_year + 100 - yy) % 100;
    if plus {
        year -= 100;
    }
    let mut out = format!("{}", year / 100);
    out.push_str(std::str::from_utf8(&ten).unwrap_or_default());
    out
}

fn current_year() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days to civil year (Howard Hinnant's algorithm), accurate for any date after 1970.
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days / 146_097;
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    u32::try_from(year).unwrap_or(2026)
}

/// Valid numbers of each format, made with their check digits, for tests.
#[cfg(any(test, feature = "test-support"))]
pub mod examples {
    use super::FI_CHECK;

    /// A Norwegian number (`DDMMYY` + three-digit individual number) with its two check digits,
    /// or `None` when a check digit would be 10 (never issued).
    pub fn no(ddmmyy: &str, individual: &str) -> Option<String> {
        let mut d: Vec<u32> = format!("{ddmmyy}{individual}")
            .bytes()
            .map(|c| u32::from(c - b'0'))
            .collect();
        for weights in [
            &[3, 7, 6, 1, 8, 9, 4, 5, 2][..],
            &[5, 4, 3, 2, 7, 6, 5, 4, 3, 2],
        ] {
            let sum: u32 = weights.iter().zip(&d).map(|(w, v)| w * v).sum();
            match 11 - sum % 11 {
                10 => return None,
                11 => d.push(0),
                k => d.push(k),
            }
        }
        Some(d.iter().map(|v| char::from(b'0' + *v as u8)).collect())
    }

    /// The first individual number from `from` that gives a valid Norwegian number.
    pub fn no_any(ddmmyy: &str, from: u32) -> String {
        (from..from + 50)
            .find_map(|i| no(ddmmyy, &format!("{i:03}")))
            .unwrap()
    }

    /// A Swedish `YYMMDDNNN` with its Luhn digit.
    pub fn se(nine: &str) -> String {
        let sum: u32 = nine
            .bytes()
            .enumerate()
            .map(|(i, c)| {
                let v = u32::from(c - b'0') * if i % 2 == 0 { 2 } else { 1 };
                v / 10 + v % 10
            })
            .sum();
        format!("{nine}{}", (10 - sum % 10) % 10)
    }

    /// A Finnish code with its check character.
    pub fn fi(ddmmyy: &str, sign: char, zzz: &str) -> String {
        let n: u32 = format!("{ddmmyy}{zzz}").parse().unwrap();
        format!("{ddmmyy}{sign}{zzz}{}", FI_CHECK[(n % 31) as usize] as char)
    }
}

#[cfg(test)]
mod tests {
    use super::examples::{fi, no, no_any, se};
    use super::*;

    fn kinds(text: &str) -> Vec<NidKind> {
        find(text).into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn norwegian_numbers_match_with_valid_check_digits_only() {
        let valid = [
            no_any("010170", 123), // fødselsnummer, 1900s
            no_any("311299", 567), // 31 December
            no_any("290200", 500), // 29 February 2000 (leap)
            no_any("410170", 123), // D-number (day + 40)
            no_any("714599", 123), // D-number on 31, H-number month (+40)
            no_any("018170", 123), // synthetic (Tenor: month + 80)
            no_any("019270", 123), // synthetic, December
        ];
        for id in &valid {
            assert_eq!(kinds(id), [NidKind::NoFodselsnummer], "{id}");
            // Any other last digit breaks the second check.
            for last in b'0'..=b'9' {
                let mut wrong = id.clone().into_bytes();
                if wrong[10] == last {
                    continue;
                }
                wrong[10] = last;
                let wrong = String::from_utf8(wrong).unwrap();
                assert!(find(&wrong).is_empty(), "{wrong}");
            }
            // And any other first check digit breaks the first.
            let mut wrong = id.clone().into_bytes();
            wrong[9] = b'0' + (wrong[9] - b'0' + 1) % 10;
            let wrong = String::from_utf8(wrong).unwrap();
            assert!(find(&wrong).is_empty(), "{wrong}");
        }
        assert_eq!(
            no("311299", "567").as_deref(),
            Some("31129956715"),
            "the published worked example"
        );
        // Not calendar dates, whatever the check digits.
        for ddmmyy in [
            "310270", "300270", "310470", "320170", "000170", "011370", "290201",
        ] {
            for individual in 100..150 {
                if let Some(id) = no(ddmmyy, &format!("{individual:03}")) {
                    assert!(find(&id).is_empty(), "{id}");
                }
            }
        }
    }

    #[test]
    fn swedish_numbers_match_in_ten_and_twelve_digits_with_luhn_only() {
        let p = se("850709980"); // 1985-07-09
        let s = se("850769980"); // samordningsnummer: day 09 + 60
        let leap = se("000229123"); // 29 February 2000
        for (ten, century) in [(&p, "19"), (&s, "19"), (&leap, "20")] {
            let (date, rest) = ten.split_at(6);
            for text in [
                ten.clone(),
                format!("{date}-{rest}"),
                format!("{date}+{rest}"),
                format!("{century}{ten}"),
                format!("{century}{date}-{rest}"),
            ] {
                assert_eq!(find(&text).len(), 1, "{text}");
                assert!(
                    matches!(
                        find(&text)[0].kind,
                        NidKind::SePersonnummer10 | NidKind::SePersonnummer12
                    ),
                    "{text}"
                );
            }
        }
        assert_eq!(kinds(&format!("19{p}")), [NidKind::SePersonnummer12]);
        // A wrong Luhn digit (and 85 is no day, so it is not a Danish number either).
        let mut wrong = p.clone().into_bytes();
        wrong[9] = b'0' + (wrong[9] - b'0' + 1) % 10;
        let wrong = String::from_utf8(wrong).unwrap();
        for text in [
            wrong.clone(),
            format!("19{wrong}"),
            format!("{}-{}", &wrong[..6], &wrong[6..]),
        ] {
            assert!(find(&text).is_empty(), "{text}");
        }
        // 31 February, 29 February 1900 (not a leap year) and day 60 + 32.
        for nine in ["850231980", "850292980", "851301980"] {
            assert!(find(&se(nine)).is_empty(), "{}", se(nine));
        }
        assert!(find(&format!("19{}", se("000229123"))).is_empty());
        assert_eq!(find(&format!("20{}", se("000229123"))).len(), 1);
    }

    #[test]
    fn danish_numbers_match_on_a_valid_date_with_or_without_dash() {
        for text in ["0101701234", "010170-1234", "3112991234", "290296-0001"] {
            assert_eq!(kinds(text), [NidKind::DkCpr], "{text}");
        }
        // 31 February, 31 April, month 13 and 29 February 1997 (none a Swedish number either);
        // `+` is no Danish separator.
        for text in [
            "3102701234",
            "310470-1235",
            "0013701234",
            "290297-0001",
            "010170+1234",
        ] {
            assert!(find(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn finnish_codes_match_with_their_check_character_only() {
        assert_eq!(
            fi("131052", '-', "308"),
            "131052-308T",
            "the published example"
        );
        let codes = [
            fi("131052", '-', "308"),
            fi("010594", 'Y', "902"),
            fi("020300", 'A', "123"),
            fi("290200", 'B', "457"), // 29 February 2000
            fi("311299", '+', "002"),
        ];
        for code in &codes {
            assert_eq!(kinds(code), [NidKind::FiHetu], "{code}");
            assert_eq!(kinds(&code.to_lowercase()), [NidKind::FiHetu], "{code}");
        }
        // Every other check letter is refused.
        let code = fi("020300", 'A', "123");
        for c in FI_CHECK.iter().filter(|c| c.is_ascii_alphabetic()) {
            let wrong = format!("{}{}", &code[..10], *c as char);
            if wrong != code {
                assert!(find(&wrong).is_empty(), "{wrong}");
            }
        }
        // An unknown century sign, and 29 February 1900.
        assert!(find(&fi("020300", 'G', "123")).is_empty());
        let not_leap = fi("290200", 'Y', "457");
        assert!(find(&not_leap).is_empty(), "{not_leap}");
    }

    #[test]
    fn whole_tokens_in_paths_and_queries() {
        let id = no_any("010170", 123);
        let hetu = fi("131052", 'A', "308");
        let cases = [
            format!("/patients/{id}/journal"),
            format!("/patients/{id}"),
            format!("/patients/{id}/"),
            format!("/search?pid={id}&x=1"),
            format!("/search?a=1,{id},2"),
            format!("/x/%3D{id}%26"),
            format!("/x/%20{id}"),
            format!("/x/a.{id}.json"),
            format!("/x/{hetu}/y"),
            format!("pid:{hetu}"),
        ];
        for text in &cases {
            let found = find(text);
            assert_eq!(found.len(), 1, "{text}");
            let token = &text[found[0].range.clone()];
            assert!(token == id || token == hetu, "{text}: {token}");
        }
        // Inside longer digit runs or glued to letters: not a token.
        let longer = [
            format!("/x/1{id}"),
            format!("/x/{id}1"),
            format!("/x/a{id}"),
            format!("/x/{id}b"),
            format!("/x/{id}{id}"),
            format!("/x/v2{hetu}"),
            format!("/x/{hetu}z"),
        ];
        for text in &longer {
            assert!(find(text).is_empty(), "{text}");
        }
        // Two ids in one text, in order.
        let two = format!("/a/{id}/b/{hetu}?c={id}");
        assert_eq!(
            kinds(&two),
            [
                NidKind::NoFodselsnummer,
                NidKind::FiHetu,
                NidKind::NoFodselsnummer
            ]
        );
        // Ordinary path material is left alone.
        for text in [
            "/orders/12345",
            "/api/v1/items/2026-01-15",
            "/t/1740000000",
            "/u/4f1c2b8e-0d7a-4c55-9a59-0c3d6a1e2b3f",
            "/ip/192.168.100.200",
            "%25%30",
        ] {
            assert!(find(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn replace_and_canonical_forms() {
        let id = no_any("010170", 123);
        let text = format!("/p/{id}/j?x={id}");
        let out = replace(&text, |f| format!("<{}>", f.canonical(&text)));
        assert_eq!(out, format!("/p/<{id}>/j?x=<{id}>"));
        assert!(matches!(
            replace("/orders/1", |_| unreachable!()),
            Cow::Borrowed(_)
        ));
        assert_eq!(mask(&format!("a {id} b")), "a [national-id] b");
        assert!(contains(&text) && !contains("/orders/1"));

        let cpr = "010170-1234";
        assert_eq!(find(cpr)[0].canonical(cpr), "0101701234");
        let hetu = fi("131052", 'a', "308").to_lowercase();
        assert_eq!(find(&hetu)[0].canonical(&hetu), hetu.to_uppercase());
        let twelve = format!("19{}-{}", "850709", &se("850709980")[6..]);
        assert_eq!(
            find(&twelve)[0].canonical(&twelve),
            format!("19{}", se("850709980"))
        );

        let ten = se("850709980");
        assert_eq!(se_twelve_digits(ten.as_bytes(), 2026), format!("19{ten}"));
        let young = se("250101123");
        let dash = format!("{}-{}", &young[..6], &young[6..]);
        let plus = format!("{}+{}", &young[..6], &young[6..]);
        assert_eq!(
            se_twelve_digits(dash.as_bytes(), 2026),
            format!("20{young}")
        );
        assert_eq!(
            se_twelve_digits(plus.as_bytes(), 2026),
            format!("19{young}")
        );
        assert!(current_year() >= 2025);
    }
}
