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
    #[error("this issuer's tokens must be sender-constrained (DPoP), not Bearer")]
    DpopRequired,
    #[error("DPoP token without a DPoP proof")]
    DpopProofMissing,
    #[error("more than one DPoP proof")]
    DpopMultipleProofs,
    #[error("DPoP proof without a DPoP access token")]
    DpopProofWithoutToken,
    #[error("DPoP scheme with a token that is not bound to a key (no cnf.jkt)")]
    DpopTokenNotBound,
    #[error("DPoP proof is not a compact JWS of JSON objects")]
    DpopMalformed,
    #[error("DPoP proof typ is not dpop+jwt")]
    DpopWrongType,
    #[error("DPoP proof algorithm not allowed")]
    DpopAlgNotAllowed,
    #[error("DPoP proof header has a parameter that is not allowed")]
    DpopHeaderNotAllowed,
    #[error("DPoP proof jwk missing or not a usable public key")]
    DpopBadKey,
    #[error("DPoP proof jwk holds private or symmetric key material")]
    DpopPrivateKey,
    #[error("DPoP proof key does not fit the algorithm")]
    DpopKeyAlgMismatch,
    #[error("DPoP proof signature does not verify")]
    DpopBadSignature,
    #[error("DPoP proof misses jti, htm, htu, iat or ath")]
    DpopMissingClaim,
    #[error("DPoP proof htm is not the request method")]
    DpopWrongMethod,
    #[error("DPoP proof htu is not the URI of this request")]
    DpopWrongUri,
    #[error("no public URL configured to check DPoP proofs against")]
    DpopPublicUrlUnknown,
    #[error("DPoP proof too old")]
    DpopProofExpired,
    #[error("DPoP proof issued in the future")]
    DpopProofInFuture,
    #[error("DPoP proof ath does not hash this access token")]
    DpopWrongAth,
    #[error("DPoP proof key is not the key the token is bound to (cnf.jkt)")]
    DpopKeyMismatch,
    #[error("DPoP proof replayed")]
    DpopReplayed,
    #[error("DPoP replay cache full")]
    DpopReplayCacheFull,
    #[error("DPoP proof needs a nonce")]
    DpopNonceRequired,
    #[error("DPoP proof nonce unknown or expired")]
    DpopNonceInvalid,
}

impl TokenError {
    /// Refusals that point at a forged, replayed or misdirected token rather than at a client's
    /// slip; each configured issuer has a series for them from the start.
    pub const WATCHED: [TokenError; 10] = [
        Self::BadSignature,
        Self::UnknownKey,
        Self::AlgNotAllowed,
        Self::KeyAlgMismatch,
        Self::Crit,
        Self::WrongAudience,
        Self::Expired,
        Self::IssuedInFuture,
        Self::DpopBadSignature,
        Self::DpopReplayed,
    ];

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
            Self::DpopRequired => "dpop_required",
            Self::DpopProofMissing => "dpop_proof_missing",
            Self::DpopMultipleProofs => "dpop_multiple_proofs",
            Self::DpopProofWithoutToken => "dpop_proof_without_token",
            Self::DpopTokenNotBound => "dpop_token_not_bound",
            Self::DpopMalformed => "dpop_malformed_proof",
            Self::DpopWrongType => "dpop_wrong_type",
            Self::DpopAlgNotAllowed => "dpop_alg_not_allowed",
            Self::DpopHeaderNotAllowed => "dpop_header_not_allowed",
            Self::DpopBadKey => "dpop_bad_key",
            Self::DpopPrivateKey => "dpop_private_key",
            Self::DpopKeyAlgMismatch => "dpop_key_alg_mismatch",
            Self::DpopBadSignature => "dpop_bad_signature",
            Self::DpopMissingClaim => "dpop_missing_claim",
            Self::DpopWrongMethod => "dpop_wrong_method",
            Self::DpopWrongUri => "dpop_wrong_uri",
            Self::DpopPublicUrlUnknown => "dpop_public_url_unknown",
            Self::DpopProofExpired => "dpop_proof_expired",
            Self::DpopProofInFuture => "dpop_proof_in_future",
            Self::DpopWrongAth => "dpop_wrong_ath",
            Self::DpopKeyMismatch => "dpop_key_mismatch",
            Self::DpopReplayed => "dpop_replayed",
            Self::DpopReplayCacheFull => "dpop_replay_cache_full",
            Self::DpopNonceRequired => "dpop_nonce_required",
            Self::DpopNonceInvalid => "dpop_nonce_invalid",
        }
    }

    /// A refusal of the DPoP proof itself (`invalid_dpop_proof`), as opposed to the token.
    pub fn is_proof_error(self) -> bool {
        matches!(
            self,
            Self::DpopProofMissing
                | Self::DpopMultipleProofs
                | Self::DpopMalformed
                | Self::DpopWrongType
                | Self::DpopAlgNotAllowed
                | Self::DpopHeaderNotAllowed
                | Self::DpopBadKey
                | Self::DpopPrivateKey
                | Self::DpopKeyAlgMismatch
                | Self::DpopBadSignature
                | Self::DpopMissingClaim
                | Self::DpopWrongMethod
                | Self::DpopWrongUri
                | Self::DpopPublicUrlUnknown
                | Self::DpopProofExpired
                | Self::DpopProofInFuture
                | Self::DpopWrongAth
                | Self::DpopKeyMismatch
                | Self::DpopReplayed
                | Self::DpopNonceRequired
                | Self::DpopNonceInvalid
        )
    }

    /// Refusals answered with a `DPoP` challenge: the proof's, and the token's when the client
    /// should have used (or used) DPoP.
    pub fn wants_dpop_challenge(self) -> bool {
        self.is_proof_error()
            || matches!(
                self,
                Self::DpopRequired
                    | Self::DpopProofWithoutToken
                    | Self::DpopTokenNotBound
                    | Self::BoundToken
            )
    }
}
