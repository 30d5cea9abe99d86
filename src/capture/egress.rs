//! The egress table by address: which `outbound.upstreams` entries a redirected connection's
//! original destination (IP and port) belongs to. Each entry's `authority` (and a mesh entry's
//! `address`) is resolved through DNS (the pod's resolver, as the app's) and resolved again when
//! the answer's TTL runs out. An address stays in the table for its TTL plus [`STALE_GRACE`]
//! after the last answer that named it: an app that cached an address a little longer, or a
//! name whose answers rotate, still reaches it; a name that no longer exists, or a DNS outage,
//! removes it within that bound. An address no entry resolves to is not in the table: its
//! connections are refused.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
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
/// A name that failed to resolve, or has no address, is asked again after this.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How long an address outlives the TTL of the last answer that named it.
pub const STALE_GRACE: Duration = Duration::from_secs(300);

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
    /// How audit events of this connection name an entry and the address dialed, made once per
    /// connection for the entry its requests go to (usually the only one).
    audit_label: Arc<std::sync::OnceLock<(Authority, Arc<str>)>>,
}

impl Captured {
    pub fn new(destination: SocketAddr, entries: Arc<[EgressEntry]>) -> Self {
        Self {
            destination,
            entries,
            audit_label: Arc::default(),
        }
    }

    /// `authority(address:port)`, as audit events name a request to `authority` on this
    /// connection.
    pub fn audit_label(&self, authority: &Authority) -> Arc<str> {
        let make = || Arc::from(format!("{authority}({})", self.destination));
        let (cached, label) = self.audit_label.get_or_init(|| (authority.clone(), make()));
        if cached == authority {
            label.clone()
        } else {
            make()
        }
    }

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
    /// Its addresses, each until when it may be used (`None`: an address literal, always).
    addresses: BTreeMap<IpAddr, Option<Instant>>,
    next_refresh: Instant,
}

impl Name {
    fn is_literal(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// Take a lookup's result; `true` when the set of addresses changed.
    fn take(
        &mut self,
        answer: Result<hickory_resolver::lookup_ip::LookupIp, hickory_resolver::net::NetError>,
        now: Instant,
    ) -> bool {
        let before: Vec<IpAddr> = self.addresses.keys().copied().collect();
        match answer {
            Ok(answer) => {
                let ttl = answer
                    .valid_until()
                    .saturating_duration_since(now)
                    .clamp(MIN_REFRESH, MAX_REFRESH);
                for ip in answer.iter() {
                    self.addresses.insert(ip, Some(now + ttl + STALE_GRACE));
                }
                self.next_refresh = now + ttl;
            }
            Err(error) if error.is_no_records_found() => {
                // An authoritative "no such address": nothing new; what was there expires.
                tracing::warn!(name = %self.host, "egress destination has no address");
                self.next_refresh = now + RETRY_AFTER_FAILURE;
            }
            Err(error) => {
                metrics::counter!(crate::metrics::EGRESS_DNS_FAILURES).increment(1);
                tracing::warn!(name = %self.host, %error, kept = self.addresses.len(), "cannot resolve an egress destination; its addresses stay until they expire");
                self.next_refresh = now + RETRY_AFTER_FAILURE;
            }
        }
        self.expire(now);
        let after: Vec<IpAddr> = self.addresses.keys().copied().collect();
        if after != before {
            tracing::info!(name = %self.host, addresses = %after.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), "egress destination resolved");
        }
        after != before
    }

    /// Drop the addresses whose time is up; `true` when one was dropped.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.addresses.len();
        self.addresses
            .retain(|_, until| until.is_none_or(|t| t > now));
        self.addresses.len() != before
    }

    /// When this name next needs attention: its refresh, or an address expiring.
    fn next_due(&self) -> Option<Instant> {
        if self.is_literal() {
            return None;
        }
        let expiry = self.addresses.values().flatten().min().copied();
        Some(expiry.map_or(self.next_refresh, |e| e.min(self.next_refresh)))
    }
}

/// The egress table by address, kept in step with DNS by [`EgressTable::start_resolver`].
pub struct EgressTable {
    entries: Vec<EgressEntry>,
    names: std::sync::Mutex<Vec<Name>>,
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
                    .map(|ip| BTreeMap::from([(ip, None)]))
                    .unwrap_or_default(),
                host,
                uses,
                next_refresh: now,
            })
            .collect();
        let by_address = ArcSwap::from_pointee(by_address(&entries, &names));
        Self {
            entries,
            names: std::sync::Mutex::new(names),
            by_address,
        }
    }

    /// The entries `destination` belongs to, if any.
    pub fn lookup(&self, destination: SocketAddr) -> Option<Captured> {
        let destination = canonical(destination);
        self.by_address
            .load()
            .get(&destination)
            .map(|entries| Captured::new(destination, entries.clone()))
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Vec<Name>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolve every name that is due, all at once, each answer published as it arrives (a slow
    /// name holds up no other); drop expired addresses. Returns when a name is next due.
    pub async fn refresh(&self, resolver: &hickory_resolver::TokioResolver) -> Instant {
        let now = Instant::now();
        let due: Vec<(usize, String)> = {
            let mut names = self.names();
            let mut expired = false;
            for name in names.iter_mut() {
                expired |= name.expire(now);
            }
            if expired {
                self.by_address
                    .store(Arc::new(by_address(&self.entries, &names)));
            }
            names
                .iter()
                .enumerate()
                .filter(|(_, n)| !n.is_literal() && n.next_refresh <= now)
                .map(|(i, n)| (i, n.host.clone()))
                .collect()
        };
        let mut lookups: futures_util::stream::FuturesUnordered<_> = due
            .into_iter()
            .map(|(i, host)| async move { (i, resolver.lookup_ip(host.as_str()).await) })
            .collect();
        while let Some((i, answer)) = lookups.next().await {
            let mut names = self.names();
            if names[i].take(answer, Instant::now()) {
                self.by_address
                    .store(Arc::new(by_address(&self.entries, &names)));
            }
        }
        self.next_due()
    }

    /// When the next name is due (a refresh or an expiring address).
    fn next_due(&self) -> Instant {
        let now = Instant::now();
        self.names()
            .iter()
            .filter_map(Name::next_due)
            .min()
            .unwrap_or(now + MAX_REFRESH)
            .max(now + Duration::from_millis(100))
    }

    /// Resolve the names once now (waiting at most [`FIRST_ROUND`]: answers that came in by
    /// then are in the table, the rest follow), then again whenever one is due, until shutdown.
    pub async fn start_resolver(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let resolver = hickory_resolver::TokioResolver::builder_tokio()
            .map_err(std::io::Error::other)?
            .build()
            .map_err(std::io::Error::other)?;
        let first = tokio::time::timeout(FIRST_ROUND, self.refresh(&resolver)).await;
        if first.is_err() {
            tracing::warn!(
                "egress names not all resolved within {FIRST_ROUND:?} of the start; serving what is resolved, retrying the rest"
            );
        }
        Ok(tokio::spawn(async move {
            loop {
                let next = self.next_due();
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    _ = shutdown.changed() => return,
                }
                self.refresh(&resolver).await;
            }
        }))
    }
}

/// Each usable address and port, and the entries it belongs to.
fn by_address(entries: &[EgressEntry], names: &[Name]) -> HashMap<SocketAddr, Arc<[EgressEntry]>> {
    let mut table: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
    for name in names {
        for &(entry, port) in &name.uses {
            for ip in name.addresses.keys() {
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
    fn addresses_leave_the_table_when_their_time_is_up_and_literals_never() {
        let now = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut name = Name {
            host: "billing.svc".into(),
            uses: vec![(0, 8080)],
            addresses: BTreeMap::from([
                (ip("10.0.0.1"), Some(now + Duration::from_secs(60))),
                (ip("10.0.0.2"), Some(now - Duration::from_secs(1))),
            ]),
            next_refresh: now + Duration::from_secs(600),
        };
        assert_eq!(name.next_due(), Some(now - Duration::from_secs(1)));
        assert!(name.expire(now));
        assert_eq!(
            name.addresses.keys().copied().collect::<Vec<_>>(),
            [ip("10.0.0.1")]
        );
        assert!(!name.expire(now));
        assert_eq!(name.next_due(), Some(now + Duration::from_secs(60)));
        let entries = [EgressEntry {
            authority: Authority::parse("billing.svc:8080", 80).unwrap(),
            kind: EntryKind::Mesh,
        }];
        let table = by_address(&entries, std::slice::from_ref(&name));
        assert!(table.contains_key(&"10.0.0.1:8080".parse().unwrap()));
        assert!(!table.contains_key(&"10.0.0.2:8080".parse().unwrap()));
        // After its time, the name has no address left: refused from then on.
        assert!(name.expire(now + Duration::from_secs(61)));
        assert!(by_address(&entries, &[name]).is_empty());

        let mut literal = Name {
            host: "10.0.0.7".into(),
            uses: vec![(0, 80)],
            addresses: BTreeMap::from([(ip("10.0.0.7"), None)]),
            next_refresh: now,
        };
        assert!(!literal.expire(now + Duration::from_secs(1_000_000)));
        assert_eq!(literal.next_due(), None);
    }

    #[test]
    fn a_connection_names_its_entry_and_address_once() {
        let a = Authority::parse("billing.svc:8080", 80).unwrap();
        let b = Authority::parse("ledger.svc:8080", 80).unwrap();
        let captured = Captured::new("10.0.3.7:8080".parse().unwrap(), Arc::from([]));
        let first = captured.audit_label(&a);
        assert_eq!(&*first, "billing.svc:8080(10.0.3.7:8080)");
        assert!(Arc::ptr_eq(&first, &captured.clone().audit_label(&a)));
        assert_eq!(&*captured.audit_label(&b), "ledger.svc:8080(10.0.3.7:8080)");
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
