//! A principal's identity headers as rendered for the app, in one buffer: the type the
//! verified-token cache keeps with each principal.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// The identity headers vakt sets for the app, in [`IDENTITY_HEADER_NAMES`]' order.
#[derive(Clone, Copy)]
pub(super) enum IdentityHeader {
    Issuer,
    Loa,
    Subject,
    ClientId,
    Scopes,
    Amr,
    AuthTime,
    OrgNumber,
    NationalIdPseudonym,
    DpopJkt,
}

pub(super) static IDENTITY_HEADER_NAMES: [HeaderName; 10] = [
    HeaderName::from_static("x-vakt-issuer"),
    HeaderName::from_static("x-vakt-loa"),
    HeaderName::from_static("x-vakt-subject"),
    HeaderName::from_static("x-vakt-client-id"),
    HeaderName::from_static("x-vakt-scopes"),
    HeaderName::from_static("x-vakt-amr"),
    HeaderName::from_static("x-vakt-auth-time"),
    HeaderName::from_static("x-vakt-org-number"),
    HeaderName::from_static("x-vakt-national-id-pseudonym"),
    HeaderName::from_static("x-vakt-dpop-jkt"),
];

/// A principal's identity headers, rendered once and cached with it: every value's text in one
/// buffer and, per header, the name's index and the value's span. Up to `verified_token_cache`
/// principals hold one, so it is kept small (`cargo bench --bench memory` counts its bytes).
#[derive(Debug)]
pub struct RenderedIdentity {
    pub(super) text: Bytes,
    pub(super) spans: Box<[(u8, u32, u32)]>,
}

impl RenderedIdentity {
    /// The headers; a value is a slice of the shared text (a reference count, not a copy).
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        self.spans.iter().filter_map(|&(name, start, end)| {
            // Checked when rendered; checked again rather than trusted.
            let value =
                HeaderValue::from_maybe_shared(self.text.slice(start as usize..end as usize))
                    .ok()?;
            Some((IDENTITY_HEADER_NAMES[name as usize].clone(), value))
        })
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}
