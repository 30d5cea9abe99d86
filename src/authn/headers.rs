//! The verified principal as headers for the app: rendered once per principal and cached with
//! it. The national id leaves only as a pseudonym here; the policy decides per route whether the
//! raw id or the token is forwarded as well.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use super::principal::Principal;
use super::rendered::{IDENTITY_HEADER_NAMES, IdentityHeader, RenderedIdentity};
use crate::pseudonym::Pseudonymiser;

/// Renders the verified principal as headers for the app (set after the client's own `x-vakt-*`
/// headers were stripped).
pub struct IdentityHeaders {
    pub pseudonyms: Arc<Pseudonymiser>,
}

impl IdentityHeaders {
    /// The principal's headers that do not depend on the route (the raw national id does),
    /// rendered on the principal's first request and kept with it in the verified-token cache.
    pub fn values(&self, p: &Principal) -> Arc<RenderedIdentity> {
        let key_id = self.pseudonyms.key_id();
        match p.identity_headers.get() {
            Some((made_with, values)) if made_with == key_id => values.clone(),
            _ => {
                let values = Arc::new(self.render(p));
                let _ = p.identity_headers.set((key_id.to_owned(), values.clone()));
                values
            }
        }
    }

    fn render(&self, p: &Principal) -> RenderedIdentity {
        let mut text = Vec::with_capacity(256);
        let mut spans = Vec::with_capacity(IDENTITY_HEADER_NAMES.len());
        let mut put = |name: IdentityHeader, parts: &mut dyn Iterator<Item = &str>| {
            let start = text.len();
            for (i, part) in parts.enumerate() {
                if i > 0 {
                    text.push(b' ');
                }
                text.extend_from_slice(part.as_bytes());
            }
            // A value with a control character is left out, as `HeaderValue::from_str` would.
            if HeaderValue::from_bytes(&text[start..]).is_ok() {
                spans.push((name as u8, start as u32, text.len() as u32));
            } else {
                text.truncate(start);
            }
        };
        put(IdentityHeader::Issuer, &mut std::iter::once(&*p.issuer));
        put(IdentityHeader::Loa, &mut std::iter::once(p.loa.as_str()));
        if let Some(s) = &p.subject {
            put(IdentityHeader::Subject, &mut std::iter::once(s.as_str()));
        }
        if let Some(c) = &p.client_id {
            put(IdentityHeader::ClientId, &mut std::iter::once(&**c));
        }
        if !p.scopes.is_empty() {
            put(
                IdentityHeader::Scopes,
                &mut p.scopes.iter().map(String::as_str),
            );
        }
        if !p.amr.is_empty() {
            put(IdentityHeader::Amr, &mut p.amr.iter().map(String::as_str));
        }
        if let Some(t) = p.auth_time {
            let mut digits = itoa::Buffer::new();
            put(
                IdentityHeader::AuthTime,
                &mut std::iter::once(digits.format(t)),
            );
        }
        if let Some(org) = p.org_numbers.first() {
            put(
                IdentityHeader::OrgNumber,
                &mut std::iter::once(org.as_str()),
            );
        }
        if let Some(pseudonym) = &p.pseudonyms(&self.pseudonyms).national_id {
            put(
                IdentityHeader::NationalIdPseudonym,
                &mut std::iter::once(&**pseudonym),
            );
        }
        if let Some(jkt) = &p.dpop_jkt {
            put(IdentityHeader::DpopJkt, &mut std::iter::once(&**jkt));
        }
        RenderedIdentity {
            text: Bytes::copy_from_slice(&text),
            spans: spans.into_boxed_slice(),
        }
    }
}
