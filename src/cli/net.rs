//! `vakt net setup`, `vakt net show`, `vakt net cleanup`: the transparent-capture rules in the
//! current network namespace (the pod's, from an init container with NET_ADMIN).
//!
//! Exit codes: 0 done; 1 `show` found no rules; 2 bad flags; 3 the rules could not be changed
//! (nft missing, not permitted, refused).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use ipnet::Ipv4Net;
use vakt::capture::rules::{self, CaptureRules, NetError};

use super::bad_input;

/// Where the pod's nameservers are read from when `--dns-servers` is not given.
const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Subcommand)]
pub enum NetCommand {
    /// Install (or replace) the capture rules: the app's TCP goes to vakt's outbound listener,
    /// optionally inbound TCP to the app's ports goes to vakt's inbound listener.
    Setup(SetupArgs),
    /// Print the installed capture rules (exit 1 when there are none).
    Show,
    /// Remove the capture rules (only vakt's table; nothing else is touched).
    Cleanup,
}

#[derive(Args)]
pub struct SetupArgs {
    /// The UID vakt runs as: its own connections are never redirected.
    #[arg(long, value_name = "UID")]
    proxy_uid: u32,
    /// vakt's outbound listener port (`outbound.listen`, on 127.0.0.1).
    #[arg(long, default_value_t = 15001, value_name = "PORT")]
    outbound_port: u16,
    /// vakt's inbound mTLS listener port (`inbound.listen`).
    #[arg(long, default_value_t = 15443, value_name = "PORT")]
    inbound_port: u16,
    /// vakt's admin port: never taken by inbound capture.
    #[arg(long, default_value_t = 15021, value_name = "PORT")]
    admin_port: u16,
    /// The app's ports whose inbound TCP is redirected to vakt's inbound listener (comma
    /// separated; none: inbound is not captured).
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    inbound_ports: Vec<u16>,
    /// Destinations the app reaches without vakt (IPv4 CIDRs, comma separated).
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    exclude_outbound_cidrs: Vec<Ipv4Net>,
    /// Destination ports the app reaches without vakt, to any address, TCP and UDP (comma
    /// separated).
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    exclude_outbound_ports: Vec<u16>,
    /// The pod's nameservers: DNS to them passes (comma separated; default: the `nameserver`
    /// lines of /etc/resolv.conf). DNS to any other address is not exempt.
    #[arg(long, value_delimiter = ',', value_name = "ADDRESSES")]
    dns_servers: Option<Vec<std::net::IpAddr>>,
    /// Let the app's UDP out (uncaptured). Without it, only DNS (port 53) and the exclusions
    /// pass; other UDP leaving the pod is refused.
    #[arg(long)]
    allow_udp: bool,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
}

impl NetCommand {
    pub fn run(self) -> ExitCode {
        match self {
            Self::Setup(args) => args.run(),
            Self::Show => match rules::installed() {
                Ok(Some(table)) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    println!("no vakt capture rules in this network namespace");
                    ExitCode::from(1)
                }
                Err(e) => failed("show", &e),
            },
            Self::Cleanup => match rules::remove() {
                Ok(()) => {
                    println!("vakt capture rules removed");
                    ExitCode::SUCCESS
                }
                Err(e) => failed("cleanup", &e),
            },
        }
    }
}

impl SetupArgs {
    fn run(self) -> ExitCode {
        if self.inbound_ports.contains(&self.inbound_port)
            || self.inbound_ports.contains(&self.admin_port)
        {
            return bad_input(
                "net setup",
                "--inbound-ports must not name vakt's own inbound or admin port",
            );
        }
        if self.outbound_port == self.inbound_port || self.outbound_port == self.admin_port {
            return bad_input(
                "net setup",
                "--outbound-port must differ from the inbound and admin ports",
            );
        }
        let capture = CaptureRules {
            proxy_uid: self.proxy_uid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            admin_port: self.admin_port,
            inbound_ports: self.inbound_ports,
            exclude_outbound_cidrs: self.exclude_outbound_cidrs,
            exclude_outbound_ports: self.exclude_outbound_ports,
            allow_udp: self.allow_udp,
            dns_servers: match self.dns_servers {
                Some(servers) => servers,
                None => {
                    let conf = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
                    let servers = rules::nameservers(&conf);
                    if servers.is_empty() {
                        eprintln!(
                            "vakt net setup: no nameserver in {RESOLV_CONF}: DNS is captured like any other traffic (give --dns-servers)"
                        );
                    }
                    servers
                }
            },
        };
        if self.dry_run {
            print!("{}", capture.ruleset());
            return ExitCode::SUCCESS;
        }
        match rules::install(&capture) {
            Ok(()) => {
                let inbound = if capture.inbound_ports.is_empty() {
                    "inbound not captured".to_owned()
                } else {
                    format!(
                        "inbound TCP to port(s) {} -> :{}",
                        join(&capture.inbound_ports),
                        capture.inbound_port
                    )
                };
                let udp = if capture.allow_udp {
                    "UDP not captured"
                } else {
                    "UDP refused but DNS"
                };
                println!(
                    "vakt capture rules installed: outbound TCP of every UID but {} -> 127.0.0.1:{}; {inbound}; IPv6 TCP refused; {udp}",
                    capture.proxy_uid, capture.outbound_port
                );
                ExitCode::SUCCESS
            }
            Err(e) => failed("setup", &e),
        }
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn failed(command: &str, error: &NetError) -> ExitCode {
    eprintln!("vakt net {command}: {error}");
    ExitCode::from(3)
}
