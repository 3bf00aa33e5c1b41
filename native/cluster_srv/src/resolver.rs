//! SRV resolution with hickory on one shared tokio runtime.
//!
//! Everything here is plain Rust: `cargo test` exercises it without a BEAM.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use once_cell::sync::Lazy;
use tokio::runtime::Runtime;

use crate::error::Error;
use crate::names;

/// The port a nameserver listens on when none is given.
pub const DEFAULT_DNS_PORT: u16 = 53;

/// Worker threads of the shared runtime. DNS work is mostly waiting, and the BEAM already has
/// one scheduler per core, so two threads are enough to keep the runtime off the critical path.
const WORKER_THREADS: usize = 2;

static RUNTIME: Lazy<Result<Runtime, String>> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(2)
        .thread_name("cluster_srv")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|error| format!("cannot start the tokio runtime: {error}"))
});

/// The one runtime every resolver and lookup shares, built on first use.
pub fn runtime() -> Result<&'static Runtime, Error> {
    RUNTIME
        .as_ref()
        .map_err(|message| Error::Io(message.clone()))
}

/// One SRV record, normalised: the target is lowercase and has no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub ttl: u32,
    pub target: String,
    pub addresses: Vec<IpAddr>,
}

/// How to reach DNS and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Servers to ask; empty means the system's resolv.conf, with its search list and ndots.
    pub nameservers: Vec<SocketAddr>,
    /// Time allowed for each try.
    pub timeout: Duration,
    /// Total number of tries, the first one included.
    pub attempts: u32,
}

/// Parses a nameserver written as `"ip"`, `"ip:port"`, `"[v6]"` or `"[v6]:port"`.
///
/// A bare IPv6 address such as `"::1"` is accepted too, with the default port.
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if text.is_empty() {
        return Err("it is empty".to_string());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_DNS_PORT));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| "it opens '[' but never closes it".to_string())?;
        let ip = inside
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{inside:?} is not an IPv6 address"))?;
        let port = match after {
            "" => DEFAULT_DNS_PORT,
            _ => match after.strip_prefix(':') {
                Some(port) => parse_port(port)?,
                None => return Err(format!("unexpected {after:?} after ']'")),
            },
        };
        return Ok(SocketAddr::new(IpAddr::V6(ip), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let ip = host.parse::<std::net::Ipv4Addr>().map_err(|_| {
                format!("{host:?} is not an IP address (host names are not allowed)")
            })?;
            Ok(SocketAddr::new(IpAddr::V4(ip), parse_port(port)?))
        }
        _ => Err("expected \"ip\", \"ip:port\" or \"[ipv6]:port\"".to_string()),
    }
}

/// Builds a nameserver address from an IP written alone and a separate port.
pub fn nameserver_with_port(ip: &str, port: i64) -> Result<SocketAddr, String> {
    let ip = ip
        .parse::<IpAddr>()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    let port = u16::try_from(port)
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| format!("port {port} is not in 1..65535"))?;
    Ok(SocketAddr::new(ip, port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("port {text:?} is not in 1..65535")),
    }
}

/// A configured resolver. Cheap to share: lookups borrow it.
pub struct SrvResolver {
    inner: TokioResolver,
    deadline: Duration,
}

impl SrvResolver {
    /// Builds a resolver. No query is sent until the first lookup.
    pub fn new(options: &Options) -> Result<SrvResolver, Error> {
        let (config, mut opts) = if options.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(|error| {
                Error::Io(format!(
                    "cannot read the system resolver configuration: {error}"
                ))
            })?
        } else {
            explicit_config(&options.nameservers)
        };
        apply_options(&mut opts, options);
        let runtime = runtime()?;
        // hickory's provider spawns its connection tasks on the current runtime.
        let _guard = runtime.enter();
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|error| Error::Io(format!("cannot build the resolver: {error}")))?;
        Ok(SrvResolver {
            inner,
            deadline: overall_deadline(options),
        })
    }

    /// The longest a lookup may take before it gives `Error::Timeout`.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Looks up the SRV records of `name`. A trailing dot makes the name absolute.
    ///
    /// With `fill_addresses`, targets the answer gave no address for are resolved (A, then
    /// AAAA), concurrently and within a second deadline of the same length.
    pub async fn lookup(&self, name: &str, fill_addresses: bool) -> Result<Vec<SrvRecord>, Error> {
        let query = parse_query_name(name)?;
        let lookup = tokio::time::timeout(self.deadline, self.inner.lookup(query, RecordType::SRV))
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(map_error)?;
        let mut records = records_from_lookup(&lookup);
        if records.is_empty() {
            return Err(Error::NoRecords);
        }
        if fill_addresses {
            self.fill_addresses(&mut records).await;
        }
        Ok(records)
    }

    /// Resolves the addresses of targets that have none. A target that cannot be resolved keeps
    /// an empty list: the caller decides what a missing address means.
    async fn fill_addresses(&self, records: &mut [SrvRecord]) {
        let mut missing: Vec<String> = records
            .iter()
            .filter(|record| record.addresses.is_empty())
            .map(|record| record.target.clone())
            .collect();
        missing.sort();
        missing.dedup();
        let lookups = missing.into_iter().map(|target| async move {
            let addresses = match Name::from_ascii(format!("{target}.")) {
                Ok(name) => {
                    match tokio::time::timeout(self.deadline, self.inner.lookup_ip(name)).await {
                        Ok(Ok(found)) => found.iter().collect(),
                        _ => Vec::new(),
                    }
                }
                Err(_) => Vec::new(),
            };
            (target, addresses)
        });
        let found: std::collections::HashMap<String, Vec<IpAddr>> =
            futures_util::future::join_all(lookups)
                .await
                .into_iter()
                .collect();
        for record in records
            .iter_mut()
            .filter(|record| record.addresses.is_empty())
        {
            if let Some(addresses) = found.get(&record.target) {
                record.addresses.clone_from(addresses);
            }
        }
    }
}

fn explicit_config(nameservers: &[SocketAddr]) -> (ResolverConfig, ResolverOpts) {
    let servers = nameservers.iter().map(nameserver_config).collect();
    (
        ResolverConfig::from_parts(None, vec![], servers),
        ResolverOpts::default(),
    )
}

fn nameserver_config(address: &SocketAddr) -> NameServerConfig {
    let mut config = NameServerConfig::udp_and_tcp(address.ip());
    for connection in &mut config.connections {
        connection.port = address.port();
    }
    config
}

fn apply_options(opts: &mut ResolverOpts, options: &Options) {
    opts.timeout = options.timeout;
    // hickory counts retries after the first try; our `attempts` counts every try.
    opts.attempts = options.attempts.saturating_sub(1) as usize;
    // A poller wants the answer as it is now: no cached answers, no cached negatives.
    opts.cache_size = 0;
    // resolv.conf turns EDNS off unless it says `options edns0`; large answers want it on.
    opts.edns0 = true;
}

/// timeout × attempts, plus a little for the TCP retry of a truncated answer to finish.
fn overall_deadline(options: &Options) -> Duration {
    options.timeout * options.attempts.max(1) + Duration::from_millis(100)
}

fn parse_query_name(name: &str) -> Result<Name, Error> {
    let invalid = || Error::InvalidName(name.to_string());
    if name.is_empty() || name.len() > 254 || !name.is_ascii() {
        return Err(invalid());
    }
    Name::from_ascii(name).map_err(|_| invalid())
}

/// Maps hickory's errors onto the reasons we document.
pub fn map_error(error: NetError) -> Error {
    if error.is_nx_domain() {
        return Error::NxDomain;
    }
    if error.is_no_records_found() {
        return Error::NoRecords;
    }
    match error {
        NetError::Timeout => Error::Timeout,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => Error::ServFail,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => Error::Refused,
        other => Error::Io(other.to_string()),
    }
}

/// Builds the records of an answer: every SRV record is kept (CoreDNS sends one per port), with
/// the A/AAAA addresses of its target taken from the additional section.
pub fn records_from_lookup(lookup: &Lookup) -> Vec<SrvRecord> {
    build_records(lookup.answers(), lookup.additionals())
}

fn build_records(
    answers: &[hickory_resolver::proto::rr::Record],
    additionals: &[hickory_resolver::proto::rr::Record],
) -> Vec<SrvRecord> {
    let mut records: Vec<SrvRecord> = answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => {
                let target = names::normalize_target(&srv.target);
                let addresses = addresses_of(&srv.target, additionals);
                Some(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    ttl: record.ttl,
                    target,
                    addresses,
                })
            }
            _ => None,
        })
        .collect();
    sort_records(&mut records);
    records
}

fn addresses_of(target: &Name, additionals: &[hickory_resolver::proto::rr::Record]) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for record in additionals {
        // Name equality in DNS ignores case.
        if record.name != *target {
            continue;
        }
        let address = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    addresses
}

/// Sorts by priority, then target, then the remaining fields, so that the order is stable.
pub fn sort_records(records: &mut [SrvRecord]) {
    records.sort_by(|a, b| {
        (a.priority, &a.target, a.port, a.weight).cmp(&(b.priority, &b.target, b.port, b.weight))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
    use hickory_resolver::proto::rr::Record;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    fn name(text: &str) -> Name {
        Name::from_str(text).expect("test names are valid")
    }

    fn srv(owner: &str, priority: u16, weight: u16, port: u16, target: &str) -> Record {
        Record::from_rdata(
            name(owner),
            5,
            RData::SRV(SRV::new(priority, weight, port, name(target))),
        )
    }

    fn a(owner: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), 5, RData::A(A(Ipv4Addr::from(ip))))
    }

    #[test]
    fn nameserver_ip_alone_gets_port_53() {
        assert_eq!(
            parse_nameserver("10.0.0.10"),
            Ok("10.0.0.10:53".parse().unwrap())
        );
        assert_eq!(parse_nameserver("::1"), Ok("[::1]:53".parse().unwrap()));
        assert_eq!(
            parse_nameserver("[fd00::a]"),
            Ok("[fd00::a]:53".parse().unwrap())
        );
    }

    #[test]
    fn nameserver_with_explicit_port() {
        assert_eq!(
            parse_nameserver("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("[::1]:5353"),
            Ok("[::1]:5353".parse().unwrap())
        );
    }

    #[test]
    fn nameserver_rejects_malformed_text() {
        for bad in [
            "",
            "localhost",
            "localhost:53",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:dns",
            "300.1.1.1",
            "[::1",
            "[::1]53",
            "[10.0.0.1]:53",
            " 10.0.0.1",
            "1:2:3",
        ] {
            assert!(parse_nameserver(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn nameserver_errors_say_what_is_wrong() {
        let message = parse_nameserver("10.0.0.1:70000").unwrap_err();
        assert!(message.contains("70000"), "{message}");
        let message = parse_nameserver("dns.local:53").unwrap_err();
        assert!(message.contains("host names are not allowed"), "{message}");
    }

    #[test]
    fn nameserver_from_ip_and_port() {
        assert_eq!(
            nameserver_with_port("fd00::1", 53),
            Ok("[fd00::1]:53".parse().unwrap())
        );
        assert!(nameserver_with_port("10.0.0.1", 0).is_err());
        assert!(nameserver_with_port("10.0.0.1", 65_536).is_err());
        assert!(nameserver_with_port("10.0.0.1:53", 53).is_err());
    }

    #[test]
    fn attempts_count_every_try_and_bound_the_deadline() {
        let options = Options {
            nameservers: vec![],
            timeout: Duration::from_millis(300),
            attempts: 3,
        };
        let mut opts = ResolverOpts::default();
        apply_options(&mut opts, &options);
        assert_eq!(opts.attempts, 2, "hickory counts retries");
        assert_eq!(opts.cache_size, 0);
        assert_eq!(overall_deadline(&options), Duration::from_millis(1_000));
    }

    #[test]
    fn system_configuration_keeps_its_search_list_and_ndots() {
        let resolv_conf = "nameserver 10.96.0.10\n\
                           search default.svc.cluster.local svc.cluster.local cluster.local\n\
                           options ndots:5 timeout:9 attempts:4\n";
        let (config, mut opts) = hickory_resolver::system_conf::parse_resolv_conf(resolv_conf)
            .expect("valid resolv.conf");
        apply_options(
            &mut opts,
            &Options {
                nameservers: vec![],
                timeout: Duration::from_millis(750),
                attempts: 2,
            },
        );
        let search: Vec<String> = config.search().iter().map(|name| name.to_ascii()).collect();
        assert_eq!(
            search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(opts.ndots, 5, "ndots comes from resolv.conf");
        assert_eq!(opts.timeout, Duration::from_millis(750), "our timeout wins");
        assert_eq!(opts.attempts, 1, "our attempts win");
        assert!(opts.edns0);
    }

    #[test]
    fn explicit_nameservers_carry_their_ports_and_no_search_list() {
        let (config, _) = explicit_config(&["127.0.0.1:5353".parse().unwrap()]);
        assert!(config.search().is_empty());
        let server = &config.name_servers()[0];
        assert_eq!(server.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let ports: Vec<u16> = server.connections.iter().map(|c| c.port).collect();
        assert_eq!(ports, [5353, 5353], "UDP and TCP both use the given port");
    }

    #[test]
    fn nx_domain_is_told_apart_from_no_records() {
        let query = Query::query(name("missing.example."), RecordType::SRV);
        let nx = NetError::from(DnsError::NoRecordsFound(NoRecords::new(
            query.clone(),
            ResponseCode::NXDomain,
        )));
        let empty = NetError::from(DnsError::NoRecordsFound(NoRecords::new(
            query,
            ResponseCode::NoError,
        )));
        assert_eq!(map_error(nx), Error::NxDomain);
        assert_eq!(map_error(empty), Error::NoRecords);
    }

    #[test]
    fn response_codes_and_timeouts_map_to_reasons() {
        assert_eq!(map_error(NetError::Timeout), Error::Timeout);
        assert_eq!(
            map_error(NetError::from(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            Error::ServFail
        );
        assert_eq!(
            map_error(NetError::from(DnsError::ResponseCode(
                ResponseCode::Refused
            ))),
            Error::Refused
        );
        match map_error(NetError::from(DnsError::ResponseCode(ResponseCode::NotImp))) {
            Error::Io(message) => assert!(message.contains("Not Implemented"), "{message}"),
            other => panic!("expected an io error, got {other:?}"),
        }
    }

    #[test]
    fn records_are_sorted_by_priority_then_target_and_all_kept() {
        let owner = "svc.ns.svc.cluster.local.";
        let answers = vec![
            srv(owner, 10, 50, 4370, "b.svc.ns.svc.cluster.local."),
            srv(owner, 0, 33, 4000, "c.svc.ns.svc.cluster.local."),
            srv(owner, 0, 33, 4370, "c.svc.ns.svc.cluster.local."),
            srv(owner, 0, 33, 4370, "a.svc.ns.svc.cluster.local."),
        ];
        let records = build_records(&answers, &[]);
        let summary: Vec<(u16, &str, u16)> = records
            .iter()
            .map(|record| (record.priority, record.target.as_str(), record.port))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, "a.svc.ns.svc.cluster.local", 4370),
                (0, "c.svc.ns.svc.cluster.local", 4000),
                (0, "c.svc.ns.svc.cluster.local", 4370),
                (10, "b.svc.ns.svc.cluster.local", 4370),
            ]
        );
    }

    #[test]
    fn addresses_come_from_the_additional_section_by_target() {
        let owner = "svc.ns.svc.cluster.local.";
        let answers = vec![
            srv(owner, 0, 50, 4370, "Pod-0.svc.ns.svc.cluster.local."),
            srv(owner, 0, 50, 4370, "pod-1.svc.ns.svc.cluster.local."),
        ];
        let additionals = vec![
            a("pod-0.svc.ns.svc.cluster.local.", [10, 1, 0, 1]),
            Record::from_rdata(
                name("pod-0.svc.ns.svc.cluster.local."),
                5,
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
            ),
            a("pod-0.svc.ns.svc.cluster.local.", [10, 1, 0, 1]),
            a("other.svc.ns.svc.cluster.local.", [10, 1, 0, 9]),
        ];
        let records = build_records(&answers, &additionals);
        assert_eq!(records[0].target, "pod-0.svc.ns.svc.cluster.local");
        assert_eq!(
            records[0].addresses,
            vec![
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
        assert_eq!(records[1].addresses, Vec::<IpAddr>::new());
    }

    #[test]
    fn query_names_are_checked_before_sending() {
        assert_eq!(parse_query_name(""), Err(Error::InvalidName(String::new())));
        assert!(matches!(
            parse_query_name("bad..name"),
            Err(Error::InvalidName(_))
        ));
        assert!(matches!(
            parse_query_name("héllo.example."),
            Err(Error::InvalidName(_))
        ));
        let long = format!("{}.example.", "a".repeat(64));
        assert!(matches!(
            parse_query_name(&long),
            Err(Error::InvalidName(_))
        ));
        assert!(parse_query_name("_tcp.svc.ns.svc.cluster.local.").is_ok());
    }
}
