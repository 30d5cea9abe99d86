//! A DPoP client for development and tests: a client key (ES256, ES384 or RSA), the `cnf.jkt`
//! that binds a token to it, and proofs (RFC 9449 §4.2) for a method and URL — well-formed by
//! default, or with any header or claim changed for negative tests.

use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::idp::DevIdpError;
use crate::authn::Alg;
use crate::authn::dpop::{PROOF_TYPE, thumbprint};

enum ClientSigner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A DPoP client's key pair.
pub struct DpopClientKey {
    alg: Alg,
    signer: ClientSigner,
    jwk: Value,
    jkt: String,
}

fn crypto(what: &'static str) -> impl Fn(aws_lc_rs::error::Unspecified) -> DevIdpError {
    move |_| DevIdpError::Crypto(what.to_owned())
}

fn ec_algorithm(alg: Alg) -> Option<(&'static EcdsaSigningAlgorithm, &'static str, usize)> {
    match alg {
        Alg::ES256 => Some((&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)),
        Alg::ES384 => Some((&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)),
        _ => None,
    }
}

impl DpopClientKey {
    /// A fresh key that signs proofs as `alg`.
    pub fn generate(alg: Alg) -> Result<Self, DevIdpError> {
        let der = match ec_algorithm(alg) {
            Some((ec, _, _)) => EcdsaKeyPair::generate(ec)
                .map_err(crypto("EC keygen"))?
                .to_pkcs8v1()
                .map_err(crypto("EC PKCS#8"))?
                .as_ref()
                .to_vec(),
            None => RsaKeyPair::generate(KeySize::Rsa2048)
                .map_err(crypto("RSA keygen"))?
                .as_der()
                .map_err(crypto("RSA PKCS#8"))?
                .as_ref()
                .to_vec(),
        };
        Self::from_pkcs8(alg, &der)
    }

    /// The key in `path` (PKCS#8 DER), made and written (mode 0600) when the file is missing.
    pub fn load_or_create(path: &Path, alg: Alg) -> Result<Self, DevIdpError> {
        let io = |e: std::io::Error| DevIdpError::Store(format!("{}: {e}", path.display()));
        match std::fs::read(path) {
            Ok(der) => Self::from_pkcs8(alg, &der),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(alg)?;
                let der = key.pkcs8()?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                use std::io::Write as _;
                opts.open(path)
                    .and_then(|mut f| f.write_all(&der))
                    .map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<Self, DevIdpError> {
        let (signer, jwk, canonical) = match ec_algorithm(alg) {
            Some((ec, crv, size)) => {
                let kp = EcdsaKeyPair::from_pkcs8(ec, der)
                    .map_err(|e| DevIdpError::Crypto(format!("DPoP EC key: {e}")))?;
                let point = kp.public_key().as_ref();
                if point.len() != 1 + 2 * size || point[0] != 4 {
                    return Err(DevIdpError::Crypto("DPoP EC key: unexpected point".into()));
                }
                let x = URL_SAFE_NO_PAD.encode(&point[1..1 + size]);
                let y = URL_SAFE_NO_PAD.encode(&point[1 + size..]);
                let canonical = format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#);
                let jwk = json!({"kty": "EC", "crv": crv, "x": x, "y": y});
                (ClientSigner::Ec(kp), jwk, canonical)
            }
            None => {
                let kp = RsaKeyPair::from_pkcs8(der)
                    .map_err(|e| DevIdpError::Crypto(format!("DPoP RSA key: {e}")))?;
                let public = kp.public_key();
                let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
                let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
                let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
                let jwk = json!({"kty": "RSA", "n": n, "e": e});
                (ClientSigner::Rsa(kp), jwk, canonical)
            }
        };
        Ok(Self {
            alg,
            signer,
            jwk,
            jkt: thumbprint(&canonical),
        })
    }

    fn pkcs8(&self) -> Result<Vec<u8>, DevIdpError> {
        Ok(match &self.signer {
            ClientSigner::Ec(kp) => kp
                .to_pkcs8v1()
                .map_err(crypto("EC PKCS#8"))?
                .as_ref()
                .to_vec(),
            ClientSigner::Rsa(kp) => kp.as_der().map_err(crypto("RSA PKCS#8"))?.as_ref().to_vec(),
        })
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The public key as a JWK (what a proof's `jwk` header carries).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The RFC 7638 thumbprint: the `cnf.jkt` of tokens bound to this key.
    pub fn jkt(&self) -> &str {
        &self.jkt
    }

    /// The `cnf` claim that binds a token to this key.
    pub fn cnf(&self) -> Value {
        json!({"jkt": self.jkt})
    }

    /// A well-formed proof header: `typ`, `alg` and the public `jwk`.
    pub fn header(&self) -> Map<String, Value> {
        let mut h = Map::new();
        h.insert("typ".into(), json!(PROOF_TYPE));
        h.insert("alg".into(), json!(self.alg.as_str()));
        h.insert("jwk".into(), self.jwk.clone());
        h
    }

    /// Well-formed proof claims for `method` and `url` now: a fresh `jti`, `ath` of `token`,
    /// and the nonce if one is given.
    pub fn claims(
        method: &str,
        url: &str,
        token: Option<&str>,
        nonce: Option<&str>,
    ) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
        c.insert("htm".into(), json!(method));
        c.insert("htu".into(), json!(url));
        c.insert(
            "iat".into(),
            json!(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ),
        );
        if let Some(token) = token {
            let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            c.insert("ath".into(), json!(URL_SAFE_NO_PAD.encode(hash)));
        }
        if let Some(nonce) = nonce {
            c.insert("nonce".into(), json!(nonce));
        }
        c
    }

    /// A proof for `method` and `url`, bound to `token`.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, DevIdpError> {
        self.sign(&self.header(), &Self::claims(method, url, token, nonce))
    }

    /// A compact JWS of `header` and `claims`, signed with this key as its own algorithm
    /// whatever `header` says (so a test can name another `alg`, or none).
    pub fn sign(
        &self,
        header: &Map<String, Value>,
        claims: &Map<String, Value>,
    ) -> Result<String, DevIdpError> {
        let mut jws = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?);
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?));
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            ClientSigner::Ec(kp) => kp
                .sign(&rng, jws.as_bytes())
                .map_err(crypto("ECDSA signing"))?
                .as_ref()
                .to_vec(),
            ClientSigner::Rsa(kp) => {
                let padding: &dyn signature::RsaEncoding = match self.alg {
                    Alg::RS384 => &signature::RSA_PKCS1_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_SHA384,
                    Alg::PS512 => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(padding, &rng, jws.as_bytes(), &mut sig)
                    .map_err(crypto("RSA signing"))?;
                sig
            }
        };
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(jws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::dpop::{DpopConfig, IssuerProofRules, ProofChecker, ProofContext, PublicUrl};

    fn rules(algorithms: Vec<Alg>) -> IssuerProofRules {
        IssuerProofRules {
            required: false,
            algorithms,
            require_nonce: false,
            public_urls: vec![PublicUrl::parse("https://api.example.no").unwrap()],
            leeway_secs: 5,
        }
    }

    #[test]
    fn proofs_of_every_supported_algorithm_verify_and_bind_to_their_key() {
        let checker = ProofChecker::new(&DpopConfig::default(), None);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        for alg in [Alg::ES256, Alg::ES384, Alg::RS256, Alg::PS256, Alg::PS512] {
            let key = DpopClientKey::generate(alg).unwrap();
            let proof = key
                .proof("GET", "https://api.example.no/a", Some("tok"), None)
                .unwrap();
            let request = ProofContext {
                method: &http::Method::GET,
                path: "/a",
                token: "tok",
                token_jkt: key.jkt(),
                now,
            };
            checker
                .check(&proof, &rules(vec![alg]), &request)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            // The same proof again is a replay; another algorithm's rules refuse it.
            assert_eq!(
                checker.check(&proof, &rules(vec![alg]), &request).err(),
                Some(crate::authn::TokenError::DpopReplayed),
                "{alg}"
            );
            let fresh = key
                .proof("GET", "https://api.example.no/a", Some("tok"), None)
                .unwrap();
            let other = if alg == Alg::ES256 {
                Alg::RS256
            } else {
                Alg::ES256
            };
            assert_eq!(
                checker.check(&fresh, &rules(vec![other]), &request).err(),
                Some(crate::authn::TokenError::DpopAlgNotAllowed),
                "{alg}"
            );
        }
    }

    #[test]
    fn a_key_file_is_made_once_and_read_back_as_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.p8");
        let a = DpopClientKey::load_or_create(&path, Alg::ES256).unwrap();
        let b = DpopClientKey::load_or_create(&path, Alg::ES256).unwrap();
        assert_eq!(a.jkt(), b.jkt());
        assert_eq!(a.jkt().len(), 43);
    }
}
