//! The egress table by address: which `outbound.upstreams` entries a redirected connection's
//! original destination (IP and port) belongs to. Each entry's `authority` (and a mesh entry's
//! `address`) is resolved through DNS and resolved again when the answer's TTL runs out, so the
//! table follows the addresses the app itself resolves. An address no entry resolves to is not
//! in the table: its connections are refused.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::upstream::{Authority, Passthrough, UpstreamConfig};

/// Answers are resolved again after their TTL, but not more often than this...
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// ...and at least this often.
pub const MAX_REFRESH: Duration = Duration::from_secs(300);
/// How long the start waits for the first answers: a slow or failing DNS server must not keep
/// the sidecar from starting (the names not yet resolved refuse their connections meanwhile).
const FIRST_ROUND: Duration = Duration::from_secs(5);
/// A name that failed to resolve is tried again after this (its last answer is kept meanwhile).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// What kind of destination an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Another workload's sidecar: HTTP from the app, mTLS to the sidecar.
    Mesh,
    /// An external TLS service: checked by SNI, relayed as it is.
    PassthroughTls,
}

/// One entry of the egress table.
#[derive(Debug, Clone)]
pub struct EgressEntry {
    pub authority: Authority,
    pub kind: EntryKind,
}

/// The entries a destination address belongs to (usually one).
#[derive(Debug, Clone)]
pub struct Captured {
    /// Where the app was connecting.
    pub destination: SocketAddr,
    pub entries: Arc<[EgressEntry]>,
}

impl Captured {
    /// The mesh entries among them.
    pub fn mesh(&self) -> impl Iterator<Item = &EgressEntry> {
        self.entries.iter().filter(|e| e.kind == EntryKind::Mesh)
    }

    /// The passthrough entries among them.
    pub fn passthrough(&self) -> impl Iterator<Item = &EgressEntry> {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::PassthroughTls)
    }
}

/// A name to resolve and the entries (and ports) it stands for.
struct Name {
    host: String,
    /// `(entry index, port)` for each use of the name.
    uses: Vec<(usize, u16)>,
    /// The last good answer.
    addresses: Vec<IpAddr>,
    next_refresh: Instant,
}

/// The egress table by address, kept in step with DNS by [`EgressTable::spawn_resolver`].
pub struct EgressTable {
    entries: Vec<EgressEntry>,
    names: tokio::sync::Mutex<Vec<Name>>,
    by_address: ArcSwap<HashMap<SocketAddr, Arc<[EgressEntry]>>>,
}

impl EgressTable {
    pub fn new(upstreams: &[UpstreamConfig]) -> Self {
        let mut entries = Vec::new();
        let mut names: BTreeMap<String, Vec<(usize, u16)>> = BTreeMap::new();
        for up in upstreams {
            let index = entries.len();
            let kind = match (up.passthrough, up.mesh()) {
                (Some(Passthrough::Tls), _) => EntryKind::PassthroughTls,
                (None, Some(_)) => EntryKind::Mesh,
                (None, None) => continue,
            };
            let mut add = |authority: &Authority| {
                if let Some(port) = authority.port() {
                    names
                        .entry(authority.host().to_owned())
                        .or_default()
                        .push((index, port));
                }
            };
            add(&up.authority);
            if let Some(address) = up.mesh().and_then(|t| Authority::parse(t.address, 0)) {
                add(&address);
            }
            entries.push(EgressEntry {
                authority: up.authority.clone(),
                kind,
            });
        }
        let now = Instant::now();
        let names: Vec<Name> = names
            .into_iter()
            .map(|(host, uses)| Name {
                addresses: host
                    .parse::<IpAddr>()
                    .map(|ip| vec![ip])
                    .unwrap_or_default(),
                host,
                uses,
                next_refresh: now,
            })
            .collect();
        let by_address = ArcSwap::from_pointee(by_address(&entries, &names));
        Self {
            entries,
            names: tokio::sync::Mutex::new(names),
            by_address,
        }
    }

    /// The entries `destination` belongs to, if any.
    pub fn lookup(&self, destination: SocketAddr) -> Option<Captured> {
        let destination = canonical(destination);
        self.by_address
            .load()
            .get(&destination)
            .map(|entries| Captured {
                destination,
                entries: entries.clone(),
            })
    }

    /// Resolve every name that is due (all at once), then publish the new table; returns when
    /// the next name is due.
    pub async fn refresh(&self, resolver: &hickory_resolver::TokioResolver) -> Instant {
        let mut names = self.names.lock().await;
        let now = Instant::now();
        let due: Vec<usize> = (0..names.len())
            .filter(|&i| names[i].next_refresh <= now && names[i].host.parse::<IpAddr>().is_err())
            .collect();
        let answers = futures_util::future::join_all(
            due.iter()
                .map(|&i| resolver.lookup_ip(names[i].host.as_str())),
        )
        .await;
        let mut changed = false;
        for (&i, answer) in due.iter().zip(answers) {
            let name = &mut names[i];
            match answer {
                Ok(answer) => {
                    let mut addresses: Vec<IpAddr> = answer.iter().collect();
                    addresses.sort_unstable();
                    addresses.dedup();
                    let ttl = answer.valid_until().saturating_duration_since(now);
                    name.next_refresh = now + ttl.clamp(MIN_REFRESH, MAX_REFRESH);
                    if addresses != name.addresses {
                        tracing::info!(name = %name.host, ?addresses, "egress destination resolved");
                        name.addresses = addresses;
                        changed = true;
                    }
                }
                Err(error) => {
                    metrics::counter!(crate::metrics::EGRESS_DNS_FAILURES).increment(1);
                    tracing::warn!(name = %name.host, %error, kept = name.addresses.len(), "cannot resolve an egress destination; keeping its last addresses");
                    name.next_refresh = now + RETRY_AFTER_FAILURE;
                }
            }
        }
        if changed {
            self.by_address
                .store(Arc::new(by_address(&self.entries, &names)));
        }
        names
            .iter()
            .filter(|n| n.host.parse::<IpAddr>().is_err())
            .map(|n| n.next_refresh)
            .min()
            .unwrap_or(now + MAX_REFRESH)
    }

    /// Resolve the names once now (waiting at most [`FIRST_ROUND`]), then again whenever an
    /// answer's TTL runs out, until shutdown.
    pub async fn start_resolver(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let resolver = hickory_resolver::TokioResolver::builder_tokio()
            .map_err(std::io::Error::other)?
            .build()
            .map_err(std::io::Error::other)?;
        let mut next = tokio::time::timeout(FIRST_ROUND, self.refresh(&resolver))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    "egress names not all resolved at start; serving the rest, retrying"
                );
                Instant::now() + RETRY_AFTER_FAILURE
            });
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    _ = shutdown.changed() => return,
                }
                next = self.refresh(&resolver).await;
            }
        }))
    }
}

/// Each resolved address and port, and the entries it belongs to.
fn by_address(entries: &[EgressEntry], names: &[Name]) -> HashMap<SocketAddr, Arc<[EgressEntry]>> {
    let mut table: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
    for name in names {
        for &(entry, port) in &name.uses {
            for ip in &name.addresses {
                let slot = table
                    .entry(canonical(SocketAddr::new(*ip, port)))
                    .or_default();
                if !slot.contains(&entry) {
                    slot.push(entry);
                }
            }
        }
    }
    table
        .into_iter()
        .map(|(addr, indices)| {
            let found: Arc<[EgressEntry]> = indices.iter().map(|&i| entries[i].clone()).collect();
            (addr, found)
        })
        .collect()
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they map.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams(yaml: &str) -> Vec<UpstreamConfig> {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn address_literals_are_in_the_table_at_once_with_their_ports() {
        let table = EgressTable::new(&upstreams(
            "- authority: 10.0.0.7:8080\n  address: 10.0.0.7:15443\n  spiffe_id: spiffe://td/ns/a/sa/b\n- authority: idp.example:443\n  passthrough: tls\n",
        ));
        let found = table.lookup("10.0.0.7:8080".parse().unwrap()).unwrap();
        assert_eq!(found.entries.len(), 1);
        assert_eq!(found.entries[0].authority.as_str(), "10.0.0.7:8080");
        assert_eq!(found.mesh().count(), 1);
        // The sidecar's own port belongs to the same entry.
        assert!(table.lookup("10.0.0.7:15443".parse().unwrap()).is_some());
        // Another port of the same address, and names not resolved yet, are not.
        assert!(table.lookup("10.0.0.7:8081".parse().unwrap()).is_none());
        assert!(table.lookup("10.0.0.8:443".parse().unwrap()).is_none());
        // An IPv4-mapped IPv6 address is the IPv4 address.
        assert!(
            table
                .lookup("[::ffff:10.0.0.7]:8080".parse().unwrap())
                .is_some()
        );
    }

    #[test]
    fn entries_sharing_an_address_are_all_candidates() {
        let table = EgressTable::new(&upstreams(
            "- authority: 10.0.0.7:80\n  address: 10.0.0.7:15443\n  spiffe_id: spiffe://td/ns/a/sa/b\n- authority: 10.0.0.9:80\n  address: 10.0.0.7:15443\n  spiffe_id: spiffe://td/ns/a/sa/c\n",
        ));
        let found = table.lookup("10.0.0.7:15443".parse().unwrap()).unwrap();
        assert_eq!(found.entries.len(), 2);
    }
}
