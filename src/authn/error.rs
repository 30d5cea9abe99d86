//! Why a presented token was refused: one reason code per failed check.

/// Why a presented token was refused. One code per failure; all answer 401 `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TokenError {
    #[error("more than one Authorization header")]
    MultipleAuthorization,
    #[error("Authorization is not a Bearer token")]
    NotBearer,
    #[error("access token in the query string")]
    TokenInQuery,
    #[error("token too large")]
    TooLarge,
    #[error("not a compact JWS")]
    Malformed,
    #[error("a token segment is not canonical base64url")]
    NonCanonicalEncoding,
    #[error("duplicate member in token header or claims")]
    DuplicateMember,
    #[error("token header has a parameter that is not allowed (jku, x5u, jwk, x5c, ...)")]
    HeaderNotAllowed,
    #[error("token header has crit")]
    Crit,
    #[error("wrong token type")]
    WrongType,
    #[error("an ID token is not an access token")]
    IdToken,
    #[error("sender-constrained (DPoP) token presented as Bearer")]
    BoundToken,
    #[error("issuer not configured")]
    UnknownIssuer,
    #[error("algorithm not allowed for this issuer")]
    AlgNotAllowed,
    #[error("no key with this kid")]
    UnknownKey,
    #[error("key does not fit the algorithm")]
    KeyAlgMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lifetime too long")]
    LifetimeTooLong,
    #[error("audience is not this service")]
    WrongAudience,
    #[error("required claim missing")]
    MissingClaim,
    #[error("signing keys unavailable")]
    KeysUnavailable,
    /// The kid is in no key set fetched since it was first seen, and the next refetch is not
    /// allowed yet: retryable, since the issuer may have just rotated.
    #[error("no key with this kid yet; the key set is refetched shortly")]
    UnknownKeyPending,
}

impl TokenError {
    pub fn code(self) -> &'static str {
        match self {
            Self::MultipleAuthorization => "multiple_authorization",
            Self::NotBearer => "not_bearer",
            Self::TokenInQuery => "token_in_query",
            Self::TooLarge => "token_too_large",
            Self::Malformed => "malformed_token",
            Self::NonCanonicalEncoding => "non_canonical_encoding",
            Self::DuplicateMember => "duplicate_member",
            Self::HeaderNotAllowed => "header_not_allowed",
            Self::Crit => "crit_header",
            Self::WrongType => "wrong_token_type",
            Self::IdToken => "id_token",
            Self::BoundToken => "bound_token",
            Self::UnknownIssuer => "unknown_issuer",
            Self::AlgNotAllowed => "alg_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::KeyAlgMismatch => "key_alg_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim => "missing_claim",
            Self::KeysUnavailable => "keys_unavailable",
            Self::UnknownKeyPending => "unknown_key_pending",
        }
    }
}
