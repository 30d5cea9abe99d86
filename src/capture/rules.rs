//! The nftables rules of transparent capture, as `vakt net setup` installs them in the pod's
//! network namespace: one table (`inet vakt`) so that setup replaces it atomically and cleanup
//! removes exactly it.
//!
//! - Outbound: every new IPv4 TCP connection of a process other than vakt's own UID is
//!   redirected to the outbound listener, except to the pod's own addresses (loopback included),
//!   DNS over TCP to the pod's nameservers, and the excluded CIDRs and ports. vakt's UID is left
//!   alone, so its own dials do not loop.
//! - Inbound (optional): IPv4 TCP to the app's ports is redirected to vakt's inbound mTLS
//!   listener, so the app may bind `0.0.0.0` and plaintext from other pods never reaches it.
//! - IPv6 is not captured: new IPv6 TCP connections of the app (outbound, but DNS to the
//!   nameservers) and to the app's ports (inbound) are refused with a reset, so IPv6 is no way
//!   around the capture. Only initial SYNs are refused: the kernel's own resets carry no UID and
//!   must pass.
//! - UDP is not captured: new UDP flows of the app leaving the pod are refused (the send fails),
//!   but DNS to the pod's nameservers and the exclusions; replies of the pod's own UDP servers
//!   pass. `allow_udp` lets all of the app's UDP out instead.
//!
//! "Leaving the pod" is by destination address (`fib daddr type local`), not by interface: a
//! socket bound to `lo` does not make a remote address local.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use std::net::IpAddr;

use ipnet::Ipv4Net;

/// The table's family and name.
pub const TABLE: &str = "inet vakt";

/// What the rules redirect and what they leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    /// vakt's UID: its connections are never redirected.
    pub proxy_uid: u32,
    /// The outbound listener's port (on 127.0.0.1).
    pub outbound_port: u16,
    /// vakt's inbound mTLS listener's port.
    pub inbound_port: u16,
    /// The admin port: inbound capture never takes it.
    pub admin_port: u16,
    /// The app's ports whose inbound connections go through vakt (empty: no inbound capture).
    pub inbound_ports: Vec<u16>,
    /// Destinations the app reaches without vakt (TCP and UDP).
    pub exclude_outbound_cidrs: Vec<Ipv4Net>,
    /// Destination ports the app reaches without vakt (TCP and UDP).
    pub exclude_outbound_ports: Vec<u16>,
    /// Let the app's UDP out uncaptured; otherwise only DNS (and the exclusions) passes.
    pub allow_udp: bool,
    /// The pod's nameservers: DNS (port 53, UDP and TCP) to them passes uncaptured; to any
    /// other address it is treated like any other traffic.
    pub dns_servers: Vec<IpAddr>,
}

const DNS_PORT: u16 = 53;

impl CaptureRules {
    /// The ruleset, in `nft -f` syntax.
    pub fn ruleset(&self) -> String {
        let uid = self.proxy_uid;
        let (dns4, dns6) = self.dns_servers();
        let mut out = String::new();
        let _ = writeln!(out, "table {TABLE} {{");
        // Outbound: OUTPUT nat, before conntrack's own NAT (priority -100).
        out.push_str("\tchain outbound_redirect {\n");
        out.push_str("\t\ttype nat hook output priority -100; policy accept;\n");
        let _ = writeln!(
            out,
            "\t\tmeta nfproto ipv4 meta l4proto tcp meta skuid != {uid} jump outbound_capture"
        );
        out.push_str("\t}\n");
        out.push_str("\tchain outbound_capture {\n");
        out.push_str("\t\tfib daddr type local return\n");
        if let Some(dns4) = &dns4 {
            let _ = writeln!(out, "\t\tip daddr {dns4} tcp dport {DNS_PORT} return");
        }
        self.exclusions(&mut out, "tcp");
        let _ = writeln!(
            out,
            "\t\tmeta l4proto tcp redirect to :{}",
            self.outbound_port
        );
        out.push_str("\t}\n");
        if !self.inbound_ports.is_empty() {
            let ports = set(&self.inbound_ports);
            out.push_str("\tchain inbound_redirect {\n");
            out.push_str("\t\ttype nat hook prerouting priority -100; policy accept;\n");
            let _ = writeln!(
                out,
                "\t\tmeta nfproto ipv4 iifname != \"lo\" tcp dport {ports} redirect to :{}",
                self.inbound_port
            );
            out.push_str("\t}\n");
            out.push_str("\tchain inbound_ipv6 {\n");
            out.push_str("\t\ttype filter hook input priority 0; policy accept;\n");
            let _ = writeln!(
                out,
                "\t\tmeta nfproto ipv6 iifname != \"lo\" tcp dport {ports} tcp flags & (syn | ack) == syn reject with tcp reset"
            );
            out.push_str("\t}\n");
        }
        out.push_str("\tchain outbound_filter {\n");
        out.push_str("\t\ttype filter hook output priority 0; policy accept;\n");
        let _ = writeln!(
            out,
            "\t\tmeta nfproto ipv6 meta l4proto tcp tcp flags & (syn | ack) == syn fib daddr type != local meta skuid != {uid} jump outbound_ipv6"
        );
        if !self.allow_udp {
            let _ = writeln!(
                out,
                "\t\tmeta l4proto udp ct state new fib daddr type != local meta skuid != {uid} jump outbound_udp"
            );
        }
        out.push_str("\t}\n");
        out.push_str("\tchain outbound_ipv6 {\n");
        if let Some(dns6) = &dns6 {
            let _ = writeln!(out, "\t\tip6 daddr {dns6} tcp dport {DNS_PORT} return");
        }
        out.push_str("\t\treject with tcp reset\n");
        out.push_str("\t}\n");
        if !self.allow_udp {
            out.push_str("\tchain outbound_udp {\n");
            if let Some(dns4) = &dns4 {
                let _ = writeln!(out, "\t\tip daddr {dns4} udp dport {DNS_PORT} return");
            }
            if let Some(dns6) = &dns6 {
                let _ = writeln!(out, "\t\tip6 daddr {dns6} udp dport {DNS_PORT} return");
            }
            self.exclusions(&mut out, "udp");
            out.push_str("\t\treject\n");
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }

    /// The excluded ports and CIDRs as `return` rules for `protocol` (`tcp` or `udp`).
    fn exclusions(&self, out: &mut String, protocol: &str) {
        if !self.exclude_outbound_ports.is_empty() {
            let mut ports = self.exclude_outbound_ports.clone();
            ports.sort_unstable();
            ports.dedup();
            let _ = writeln!(out, "\t\t{protocol} dport {} return", set(&ports));
        }
        for cidr in &self.exclude_outbound_cidrs {
            let _ = writeln!(out, "\t\tip daddr {cidr} return");
        }
    }

    /// The nameservers as nft sets, IPv4 and IPv6 (`None` where there are none).
    fn dns_servers(&self) -> (Option<String>, Option<String>) {
        let list = |v6: bool| {
            let mut addrs: Vec<String> = self
                .dns_servers
                .iter()
                .filter(|a| a.is_ipv6() == v6)
                .map(IpAddr::to_string)
                .collect();
            addrs.sort_unstable();
            addrs.dedup();
            (!addrs.is_empty()).then(|| format!("{{ {} }}", addrs.join(", ")))
        };
        (list(false), list(true))
    }

    /// The whole `nft -f` script of `vakt net setup`: the table is created if missing, deleted,
    /// and defined anew in one transaction, so running it twice leaves the same rules.
    pub fn setup_script(&self) -> String {
        format!("{}{}", cleanup_script(), self.ruleset())
    }
}

/// The nameservers of a `resolv.conf` (its `nameserver` lines; a scoped IPv6 address is skipped).
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|a| a.parse().ok())
        })
        .collect()
}

/// The `nft -f` script of `vakt net cleanup`: removes the table if present, nothing else.
pub fn cleanup_script() -> String {
    format!("table {TABLE}\ndelete table {TABLE}\n")
}

fn set(ports: &[u16]) -> String {
    match ports {
        [one] => one.to_string(),
        many => format!(
            "{{ {} }}",
            many.iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "the nft command was not found: transparent capture needs nftables in the init image (Debian: apt-get install nftables)"
    )]
    NftMissing,
    #[error(
        "not permitted to change the network namespace's rules: run vakt net in the pod's network namespace with the capability NET_ADMIN (an init container), or as root on a test machine"
    )]
    NotPermitted,
    #[error("nft refused the rules: {0}")]
    Nft(String),
    #[error("cannot run nft: {0}")]
    Io(std::io::Error),
}

/// Run `nft` with `args`, feeding it `script` on stdin when given; its stdout on success.
fn nft(args: &[&str], script: Option<&str>) -> Result<String, NetError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NetError::NftMissing,
            _ => NetError::Io(e),
        })?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(script.as_bytes()).map_err(NetError::Io)?;
    }
    let output = child.wait_with_output().map_err(NetError::Io)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("Operation not permitted") {
        return Err(NetError::NotPermitted);
    }
    Err(NetError::Nft(
        stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '~' || c == ' '))
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

/// Install (or replace) the capture rules in the current network namespace.
pub fn install(rules: &CaptureRules) -> Result<(), NetError> {
    nft(&["-f", "-"], Some(&rules.setup_script())).map(drop)
}

/// Remove the capture rules from the current network namespace (nothing else).
pub fn remove() -> Result<(), NetError> {
    nft(&["-f", "-"], Some(&cleanup_script())).map(drop)
}

/// The installed capture table, or `None` when there is none.
pub fn installed() -> Result<Option<String>, NetError> {
    let listed = nft(&["list", "tables"], None)?;
    let present = listed.lines().any(|l| l.trim() == format!("table {TABLE}"));
    if !present {
        return Ok(None);
    }
    nft(&["list", "table", "inet", "vakt"], None).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> CaptureRules {
        CaptureRules {
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15443,
            admin_port: 15021,
            inbound_ports: vec![8080],
            exclude_outbound_cidrs: vec!["169.254.169.254/32".parse().unwrap()],
            exclude_outbound_ports: vec![5432, 123],
            allow_udp: false,
            dns_servers: vec![
                "10.96.0.10".parse().unwrap(),
                "fd00::a".parse().unwrap(),
                "10.96.0.10".parse().unwrap(),
            ],
        }
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l.trim() == line)
    }

    #[test]
    fn the_ruleset_redirects_the_app_and_leaves_vakt_local_addresses_dns_and_exclusions_alone() {
        let text = rules().ruleset();
        assert!(text.starts_with("table inet vakt {\n"), "{text}");
        for line in [
            "meta nfproto ipv4 meta l4proto tcp meta skuid != 1337 jump outbound_capture",
            "fib daddr type local return",
            "ip daddr { 10.96.0.10 } tcp dport 53 return",
            "tcp dport { 123, 5432 } return",
            "ip daddr 169.254.169.254/32 return",
            "meta l4proto tcp redirect to :15001",
            "meta nfproto ipv4 iifname != \"lo\" tcp dport 8080 redirect to :15443",
            "meta nfproto ipv6 iifname != \"lo\" tcp dport 8080 tcp flags & (syn | ack) == syn reject with tcp reset",
            "meta nfproto ipv6 meta l4proto tcp tcp flags & (syn | ack) == syn fib daddr type != local meta skuid != 1337 jump outbound_ipv6",
            "ip6 daddr { fd00::a } tcp dport 53 return",
            "reject with tcp reset",
            "meta l4proto udp ct state new fib daddr type != local meta skuid != 1337 jump outbound_udp",
            "ip daddr { 10.96.0.10 } udp dport 53 return",
            "ip6 daddr { fd00::a } udp dport 53 return",
            "udp dport { 123, 5432 } return",
            "reject",
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
        // The redirect comes after every exclusion; DNS is exempt only to the nameservers, and
        // the admin port is not exempt by port (it is local).
        let redirect = text.find("redirect to :15001").unwrap();
        assert!(text.find("169.254.169.254").unwrap() < redirect);
        assert!(!has_line(&text, "tcp dport 53 return"), "{text}");
        assert!(!text.contains("15021"), "{text}");
        assert!(!text.contains("oifname"), "{text}");
    }

    #[test]
    fn without_nameservers_dns_is_not_exempt() {
        let text = CaptureRules {
            dns_servers: Vec::new(),
            ..rules()
        }
        .ruleset();
        assert!(!text.contains("dport 53"), "{text}");
    }

    #[test]
    fn allowing_udp_leaves_it_alone() {
        let text = CaptureRules {
            allow_udp: true,
            ..rules()
        }
        .ruleset();
        assert!(!text.contains("udp"), "{text}");
    }

    #[test]
    fn without_inbound_ports_nothing_inbound_is_touched() {
        let text = CaptureRules {
            inbound_ports: Vec::new(),
            ..rules()
        }
        .ruleset();
        assert!(!text.contains("prerouting"), "{text}");
        assert!(!text.contains("hook input"), "{text}");
    }

    #[test]
    fn setup_replaces_the_table_in_one_script() {
        let script = rules().setup_script();
        assert!(script.starts_with("table inet vakt\ndelete table inet vakt\ntable inet vakt {"));
        assert_eq!(
            cleanup_script(),
            "table inet vakt\ndelete table inet vakt\n"
        );
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let conf = "# generated\nsearch shop.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::a".parse().unwrap()
            ]
        );
    }
}
