//! Minimal inbound authorization: only the listed peers reach the app (deny by default). The
//! per-route policy engine replaces this stage.

use std::collections::HashSet;

use crate::error::DenyReason;
use crate::hygiene::RequestId;
use crate::identity::{PeerIdentity, SpiffeId};
use crate::stack::{Next, Req, Resp, Stage};

pub struct AllowPeers {
    allowed: HashSet<SpiffeId>,
}

impl AllowPeers {
    pub fn new(allowed: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self {
            allowed: allowed.into_iter().collect(),
        }
    }

    fn decide(&self, peer: Option<&PeerIdentity>) -> Result<(), DenyReason> {
        match peer {
            Some(p) if self.allowed.contains(&p.spiffe_id) => Ok(()),
            Some(_) => Err(DenyReason::PeerNotAllowed),
            None => Err(DenyReason::NoPeerIdentity),
        }
    }
}

impl Stage for AllowPeers {
    async fn handle(&self, req: Req, next: Next) -> Resp {
        match self.decide(req.extensions().get::<PeerIdentity>()) {
            Ok(()) => next.run(req).await,
            Err(reason) => {
                let id = req.extensions().get::<RequestId>().map(|r| &r.0);
                reason.into_response(id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> PeerIdentity {
        PeerIdentity {
            spiffe_id: id.parse().unwrap(),
            cert_sha256: [0; 32],
        }
    }

    #[test]
    fn only_listed_peers_pass() {
        let allow = AllowPeers::new(["spiffe://td/ns/a/sa/web".parse().unwrap()]);
        let cases = [
            (Some(peer("spiffe://td/ns/a/sa/web")), Ok(())),
            (
                Some(peer("spiffe://td/ns/a/sa/other")),
                Err(DenyReason::PeerNotAllowed),
            ),
            (
                Some(peer("spiffe://td/ns/a/sa/web2")),
                Err(DenyReason::PeerNotAllowed),
            ),
            (None, Err(DenyReason::NoPeerIdentity)),
        ];
        for (p, expected) in cases {
            assert_eq!(allow.decide(p.as_ref()), expected, "{p:?}");
        }
        let nobody = AllowPeers::new([]);
        assert_eq!(
            nobody.decide(Some(&peer("spiffe://td/ns/a/sa/web"))),
            Err(DenyReason::PeerNotAllowed)
        );
    }
}
