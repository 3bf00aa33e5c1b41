//! SRV resolution on one shared tokio runtime.
//!
//! A lookup is one task on the runtime. Each try asks every server at once over UDP, asks
//! again over TCP when the answer is truncated, and once more without EDNS when a server
//! refuses EDNS (see `transport`, which keeps no socket or connection between exchanges).
//! hickory-proto encodes and decodes the messages, and hickory-resolver reads the system's
//! resolv.conf; hickory-resolver's own `Resolver` is not used for lookups: its cache, pool and
//! retry layers, which a poller does not need, cost more per lookup than the whole round trip
//! to the server (see bench/README.md).
//!
//! Everything here is plain Rust: `cargo test` exercises it without a BEAM.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::proto::op::{Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use once_cell::sync::Lazy;
use tokio::runtime::Runtime;

use crate::error::Error;
use crate::names::{self, Candidate, Naming, Rules};
use crate::transport::{self, Request, UdpReply};

/// The port a nameserver listens on when none is given.
pub const DEFAULT_DNS_PORT: u16 = 53;

/// Worker threads of the shared runtime. One: a lookup is mostly waiting, the BEAM already has
/// a scheduler per core, and a second worker made every lookup slower by waking it for each
/// answer (measured: 213 µs against 163 µs for a 3-record answer, see bench/README.md).
const WORKER_THREADS: usize = 1;

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
    /// The search list that goes with `nameservers` (ignored without them). Entries that are
    /// not valid domain names are left out.
    pub search: Vec<String>,
    /// How many dots make a relative name be tried as it is before the search list.
    pub ndots: usize,
    /// Time allowed for each try: the UDP exchange (sent at most 3 times, at 0, 333 and 666
    /// ms), a retry without EDNS, and the TCP exchange after a truncated answer.
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

/// A configured resolver. It holds only its configuration: no socket, connection or answer
/// outlives the lookup that used it, so a fault can never outlast the lookup it broke.
pub struct SrvResolver {
    plan: Plan,
    timeout: Duration,
    attempts: u32,
    deadline: Duration,
    // Bounds the TCP connections open at once, so that a burst of lookups with large answers
    // queues here instead of overflowing the server's listen queue (BIND's holds 10). A permit
    // lives only as long as one exchange.
    tcp_slots: tokio::sync::Semaphore,
}

/// Most TCP connections one resolver has open at once.
const TCP_CONNECTIONS: usize = 8;

/// Most address lookups one `fill_addresses` runs at once.
const FILL_CONCURRENCY: usize = 16;

/// Where to ask, and how relative names are completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub servers: Vec<SocketAddr>,
    pub search: Vec<Name>,
    pub ndots: usize,
}

impl SrvResolver {
    /// Builds a resolver. No query is sent until the first lookup.
    pub fn new(options: &Options) -> Result<SrvResolver, Error> {
        let plan = if options.nameservers.is_empty() {
            let (config, opts) =
                hickory_resolver::system_conf::read_system_conf().map_err(|error| {
                    Error::Io(format!(
                        "cannot read the system resolver configuration: {error}"
                    ))
                })?;
            system_plan(&config, &opts)
        } else {
            Plan {
                servers: options.nameservers.clone(),
                search: options
                    .search
                    .iter()
                    .filter_map(|domain| Name::from_ascii(domain).ok())
                    .filter(|domain| !domain.is_root())
                    .collect(),
                ndots: options.ndots,
            }
        };
        if plan.servers.is_empty() {
            return Err(Error::Io("no nameserver is configured".to_string()));
        }
        // Fail here, not at the first lookup, if the runtime cannot start.
        runtime()?;
        Ok(SrvResolver {
            plan,
            timeout: options.timeout,
            attempts: options.attempts.max(1),
            deadline: overall_deadline(options),
            tcp_slots: tokio::sync::Semaphore::new(TCP_CONNECTIONS),
        })
    }

    /// Where this resolver asks, and how it completes relative names.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The longest a lookup may take before it gives `Error::Timeout`.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Looks up the SRV records of `name`. A trailing dot makes the name absolute.
    ///
    /// With `fill_addresses`, targets the answer gave no address for are resolved (A, then
    /// AAAA), within a second deadline of the same length; what was found by then is kept.
    pub async fn lookup(&self, name: &str, fill_addresses: bool) -> Result<Vec<SrvRecord>, Error> {
        let mut records = self.srv_records(name).await?;
        if fill_addresses {
            self.fill_addresses(&mut records, |_| true, usize::MAX)
                .await;
        }
        Ok(records)
    }

    /// Looks up `name` and turns its targets into node names under `rules`, returning the
    /// number of records and the outcome. With `Naming::Ip`, only targets the rules accept
    /// (the first `max_nodes` of them) are resolved for addresses: DNS data never chooses what
    /// else is queried.
    pub async fn discover(
        &self,
        name: &str,
        rules: &Rules,
    ) -> Result<(usize, names::Outcome), Error> {
        let mut records = self.srv_records(name).await?;
        if rules.naming == Naming::Ip {
            let accepted = |target: &str| names::target_accepted(target, rules);
            self.fill_addresses(&mut records, accepted, rules.max_nodes)
                .await;
        }
        let candidates = records.iter().map(|record| Candidate {
            target: record.target.as_bytes(),
            addresses: &record.addresses,
        });
        Ok((records.len(), names::node_names(candidates, rules)))
    }

    async fn srv_records(&self, name: &str) -> Result<Vec<SrvRecord>, Error> {
        let query = parse_query_name(name)?;
        let answer = tokio::time::timeout(self.deadline, self.resolve(&query, RecordType::SRV))
            .await
            .map_err(|_| Error::Timeout)??;
        let records = build_records(&answer.answers, &answer.additionals);
        if records.is_empty() {
            Err(Error::NoRecords)
        } else {
            Ok(records)
        }
    }

    /// Resolves the addresses of up to `limit` distinct targets that have none and that
    /// `wanted` accepts, `FILL_CONCURRENCY` at a time, all within one deadline. A target that
    /// cannot be resolved in time keeps an empty list: the caller decides what that means.
    async fn fill_addresses(
        &self,
        records: &mut [SrvRecord],
        wanted: impl Fn(&str) -> bool,
        limit: usize,
    ) {
        let end = tokio::time::Instant::now() + self.deadline;
        let mut missing: Vec<String> = Vec::new();
        for record in records.iter().filter(|record| record.addresses.is_empty()) {
            if missing.len() >= limit {
                break;
            }
            if wanted(&record.target) && !missing.contains(&record.target) {
                missing.push(record.target.clone());
            }
        }
        let found: HashMap<String, Vec<IpAddr>> = futures_util::stream::iter(missing)
            .map(|target| async move {
                let addresses = match Name::from_ascii(format!("{target}.")) {
                    Ok(name) => tokio::time::timeout_at(end, self.addresses(&name))
                        .await
                        .unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                (target, addresses)
            })
            .buffer_unordered(FILL_CONCURRENCY)
            .collect()
            .await;
        for record in records
            .iter_mut()
            .filter(|record| record.addresses.is_empty())
        {
            if let Some(addresses) = found.get(&record.target) {
                record.addresses.clone_from(addresses);
            }
        }
    }

    /// The A records of `name`, or its AAAA records when it has no A record.
    async fn addresses(&self, name: &Name) -> Vec<IpAddr> {
        for record_type in [RecordType::A, RecordType::AAAA] {
            if let Ok(message) = self.resolve(name, record_type).await {
                let found: Vec<IpAddr> = message
                    .answers
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                        _ => None,
                    })
                    .collect();
                if !found.is_empty() {
                    return found;
                }
            }
        }
        Vec::new()
    }

    /// Asks for `name`, completed with the search list when it is relative, and returns the
    /// first answer that holds records of `record_type`.
    async fn resolve(&self, name: &Name, record_type: RecordType) -> Result<Message, Error> {
        let mut failure: Option<Error> = None;
        for candidate in candidate_names(name, &self.plan) {
            match self.query(&candidate, record_type).await {
                Ok(message) => return Ok(message),
                Err(error) => failure = Some(worse(failure, error)),
            }
        }
        Err(failure.unwrap_or(Error::NoRecords))
    }

    /// One name, `attempts` tries; each try asks every server at once and takes the first
    /// answer that settles the question, so a dead server costs no more than one `timeout`.
    async fn query(&self, name: &Name, record_type: RecordType) -> Result<Message, Error> {
        let query = Query::query(name.clone(), record_type);
        let mut last = Error::Timeout;
        for _ in 0..self.attempts {
            let deadline = tokio::time::Instant::now() + self.timeout;
            let mut asks: FuturesUnordered<_> = self
                .plan
                .servers
                .iter()
                .map(|server| self.exchange(*server, &query, deadline))
                .collect();
            while let Some(result) = asks.next().await {
                match result {
                    Ok(message) => match classify(message, record_type) {
                        Outcome::Answer(message) => return Ok(message),
                        Outcome::Final(error) => return Err(error),
                        Outcome::TryNext(error) => last = error,
                    },
                    Err(error) => last = error,
                }
            }
        }
        Err(last)
    }

    /// One try against one server, all within `deadline`: UDP, then TCP when the answer was
    /// truncated. A server that answers an EDNS query with FORMERR or NOTIMP may not know EDNS
    /// (RFC 6891, section 7), so it is asked once more without it.
    async fn exchange(
        &self,
        server: SocketAddr,
        query: &Query,
        deadline: tokio::time::Instant,
    ) -> Result<Message, Error> {
        let answer = self.ask(server, query, true, deadline).await?;
        if refuses_edns(&answer) {
            return self.ask(server, query, false, deadline).await;
        }
        Ok(answer)
    }

    async fn ask(
        &self,
        server: SocketAddr,
        query: &Query,
        edns: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Message, Error> {
        let request = Request::new(query.clone(), edns)?;
        match transport::udp(server, &request, deadline).await? {
            UdpReply::Answer(message) => Ok(message),
            UdpReply::Truncated => {
                let slot = tokio::time::timeout_at(deadline, self.tcp_slots.acquire())
                    .await
                    .map_err(|_| Error::Timeout)?
                    .map_err(|_| Error::Io("the resolver is closed".to_string()))?;
                let answer = transport::tcp(server, &request, deadline).await;
                drop(slot);
                answer
            }
        }
    }
}

/// Whether an answer to an EDNS query says the server does not take EDNS.
pub(crate) fn refuses_edns(answer: &Message) -> bool {
    matches!(
        answer.metadata.response_code,
        ResponseCode::FormErr | ResponseCode::NotImp
    )
}

/// What an answer means for the lookup.
pub(crate) enum Outcome {
    Answer(Message),
    /// The question is settled: no other server or try would say otherwise.
    Final(Error),
    /// This server failed; another may answer.
    TryNext(Error),
}

pub(crate) fn classify(message: Message, record_type: RecordType) -> Outcome {
    match message.metadata.response_code {
        ResponseCode::NoError => {
            if message
                .answers
                .iter()
                .any(|record| record.record_type() == record_type)
            {
                Outcome::Answer(message)
            } else {
                Outcome::Final(Error::NoRecords)
            }
        }
        ResponseCode::NXDomain => Outcome::Final(Error::NxDomain),
        ResponseCode::ServFail => Outcome::TryNext(Error::ServFail),
        ResponseCode::Refused => Outcome::TryNext(Error::Refused),
        other => Outcome::TryNext(Error::Io(format!("the server answered {other}"))),
    }
}

/// Of two failures over the search list, the one to report: a server failure over a negative
/// answer, and "exists without records" over "does not exist".
fn worse(previous: Option<Error>, next: Error) -> Error {
    fn rank(error: &Error) -> u8 {
        match error {
            Error::NxDomain => 0,
            Error::NoRecords => 1,
            _ => 2,
        }
    }
    match previous {
        Some(previous) if rank(&previous) >= rank(&next) => previous,
        _ => next,
    }
}

/// The names to ask for `name`, as resolv.conf's search list and ndots say: an absolute name
/// alone; a name with at least `ndots` dots first as it is, then completed; a shorter one
/// completed first.
pub fn candidate_names(name: &Name, plan: &Plan) -> Vec<Name> {
    if name.is_fqdn() {
        return vec![name.clone()];
    }
    let mut absolute = name.clone();
    absolute.set_fqdn(true);
    let completed: Vec<Name> = plan
        .search
        .iter()
        .filter_map(|domain| {
            let mut domain = domain.clone();
            domain.set_fqdn(true);
            name.clone().append_domain(&domain).ok()
        })
        .collect();
    let dots = usize::from(name.num_labels()).saturating_sub(1);
    if dots >= plan.ndots {
        std::iter::once(absolute).chain(completed).collect()
    } else {
        completed
            .into_iter()
            .chain(std::iter::once(absolute))
            .collect()
    }
}

/// The servers, search list and ndots of a system configuration (resolv.conf).
pub fn system_plan(config: &ResolverConfig, opts: &ResolverOpts) -> Plan {
    let mut servers: Vec<SocketAddr> = Vec::new();
    for server in config.name_servers() {
        let port = server
            .connections
            .first()
            .map(|connection| connection.port)
            .unwrap_or(DEFAULT_DNS_PORT);
        let address = SocketAddr::new(server.ip, port);
        if !servers.contains(&address) {
            servers.push(address);
        }
    }
    let search = if config.search().is_empty() {
        config.domain().cloned().into_iter().collect()
    } else {
        config.search().to_vec()
    };
    Plan {
        servers,
        search,
        ndots: opts.ndots,
    }
}

/// timeout × attempts, plus a margin for the last answer to be read. A try that falls back to
/// TCP is cut off by this deadline too.
fn overall_deadline(options: &Options) -> Duration {
    options
        .timeout
        .saturating_mul(options.attempts.max(1))
        .saturating_add(Duration::from_millis(100))
}

fn parse_query_name(name: &str) -> Result<Name, Error> {
    let invalid = || Error::InvalidName(name.to_string());
    if name.is_empty() || name.len() > 254 || !name.is_ascii() {
        return Err(invalid());
    }
    Name::from_ascii(name).map_err(|_| invalid())
}

/// Builds the records of an answer: every SRV record is kept (CoreDNS sends one per port), with
/// the A/AAAA addresses of its target taken from the additional section.
pub fn build_records(answers: &[Record], additionals: &[Record]) -> Vec<SrvRecord> {
    let addresses = address_index(additionals);
    let mut records: Vec<SrvRecord> = answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => {
                let target = names::normalize_target(&srv.target);
                Some(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    ttl: record.ttl,
                    addresses: addresses.get(target.as_str()).cloned().unwrap_or_default(),
                    target,
                })
            }
            _ => None,
        })
        .collect();
    sort_records(&mut records);
    records
}

/// The A/AAAA addresses of the additional section, by owner in canonical form. One pass:
/// CoreDNS sends an address for every target, and a 500-pod answer must not cost 500 × 500
/// name comparisons.
fn address_index(additionals: &[Record]) -> HashMap<String, Vec<IpAddr>> {
    let mut index: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for record in additionals {
        let address = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        let addresses = index
            .entry(names::normalize_target(&record.name))
            .or_default();
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    index
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
    use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
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
    fn the_deadline_is_timeout_times_attempts_plus_a_margin() {
        let options = Options {
            nameservers: vec![],
            search: vec![],
            ndots: 1,
            timeout: Duration::from_millis(300),
            attempts: 3,
        };
        assert_eq!(overall_deadline(&options), Duration::from_millis(1_000));
    }

    fn plan_of(resolv_conf: &str) -> Plan {
        let (config, opts) = hickory_resolver::system_conf::parse_resolv_conf(resolv_conf)
            .expect("valid resolv.conf");
        system_plan(&config, &opts)
    }

    #[test]
    fn system_configuration_gives_servers_search_list_and_ndots() {
        let plan = plan_of(
            "nameserver 10.96.0.10\n\
             nameserver 10.96.0.11\n\
             nameserver 10.96.0.10\n\
             search default.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5\n",
        );
        assert_eq!(
            plan.servers,
            [
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "10.96.0.11:53".parse().unwrap()
            ]
        );
        let search: Vec<String> = plan.search.iter().map(|name| name.to_ascii()).collect();
        assert_eq!(
            search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(plan.ndots, 5);
    }

    #[test]
    fn the_domain_line_serves_as_the_search_list_when_there_is_none() {
        let plan = plan_of("nameserver 10.0.0.1\ndomain corp.example\n");
        let search: Vec<String> = plan.search.iter().map(|name| name.to_ascii()).collect();
        assert_eq!(search, ["corp.example"]);
    }

    fn candidates(query: &str, ndots: usize) -> Vec<String> {
        let plan = Plan {
            servers: vec![],
            search: vec![name("default.svc.cluster.local"), name("cluster.local")],
            ndots,
        };
        candidate_names(&Name::from_ascii(query).unwrap(), &plan)
            .iter()
            .map(|name| name.to_ascii())
            .collect()
    }

    #[test]
    fn an_absolute_name_never_goes_through_the_search_list() {
        assert_eq!(
            candidates("myapp.default.svc.cluster.local.", 5),
            ["myapp.default.svc.cluster.local."]
        );
    }

    #[test]
    fn a_relative_name_follows_ndots() {
        // Fewer dots than ndots: completed first, as Kubernetes pods' ndots:5 does.
        assert_eq!(
            candidates("myapp-headless", 5),
            [
                "myapp-headless.default.svc.cluster.local.",
                "myapp-headless.cluster.local.",
                "myapp-headless."
            ]
        );
        // At least ndots dots: as it is first.
        assert_eq!(
            candidates("a.b", 1),
            [
                "a.b.",
                "a.b.default.svc.cluster.local.",
                "a.b.cluster.local."
            ]
        );
    }

    fn answer(code: ResponseCode, answers: Vec<Record>) -> Message {
        let mut message = Message::response(7, hickory_resolver::proto::op::OpCode::Query);
        message.metadata.response_code = code;
        message.answers = answers;
        message
    }

    fn reason(outcome: Outcome) -> (&'static str, Option<Error>) {
        match outcome {
            Outcome::Answer(_) => ("answer", None),
            Outcome::Final(error) => ("final", Some(error)),
            Outcome::TryNext(error) => ("next", Some(error)),
        }
    }

    #[test]
    fn negative_answers_settle_the_question_and_failures_move_on() {
        let owner = "svc.ns.svc.cluster.local.";
        let with_srv = vec![srv(owner, 0, 100, 4370, "a.svc.ns.svc.cluster.local.")];
        assert_eq!(
            reason(classify(
                answer(ResponseCode::NoError, with_srv),
                RecordType::SRV
            ))
            .0,
            "answer"
        );
        for (code, expected) in [
            (ResponseCode::NoError, ("final", Some(Error::NoRecords))),
            (ResponseCode::NXDomain, ("final", Some(Error::NxDomain))),
            (ResponseCode::ServFail, ("next", Some(Error::ServFail))),
            (ResponseCode::Refused, ("next", Some(Error::Refused))),
        ] {
            assert_eq!(
                reason(classify(answer(code, vec![]), RecordType::SRV)),
                expected,
                "{code:?}"
            );
        }
        match classify(answer(ResponseCode::NotImp, vec![]), RecordType::SRV) {
            Outcome::TryNext(Error::Io(message)) => {
                assert!(message.contains("Not Implemented"), "{message}")
            }
            _ => panic!("NOTIMP should move on with an io error"),
        }
        // An A record is not an answer to an SRV question.
        let only_a = vec![a(owner, [10, 0, 0, 1])];
        assert_eq!(
            reason(classify(
                answer(ResponseCode::NoError, only_a),
                RecordType::SRV
            )),
            ("final", Some(Error::NoRecords))
        );
    }

    #[test]
    fn over_the_search_list_a_server_failure_outranks_a_negative_answer() {
        assert_eq!(
            worse(Some(Error::NxDomain), Error::NoRecords),
            Error::NoRecords
        );
        assert_eq!(
            worse(Some(Error::NoRecords), Error::NxDomain),
            Error::NoRecords
        );
        assert_eq!(worse(Some(Error::NxDomain), Error::Timeout), Error::Timeout);
        assert_eq!(
            worse(Some(Error::ServFail), Error::NxDomain),
            Error::ServFail
        );
        assert_eq!(worse(None, Error::NxDomain), Error::NxDomain);
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
    fn every_target_finds_its_address_in_a_large_additional_section() {
        let owner = "svc.ns.svc.cluster.local.";
        let answers: Vec<Record> = (0..500)
            .map(|i| {
                srv(
                    owner,
                    0,
                    1,
                    4370,
                    &format!("pod-{i}.svc.ns.svc.cluster.local."),
                )
            })
            .collect();
        let additionals: Vec<Record> = (0..500)
            .rev()
            .map(|i| {
                a(
                    &format!("POD-{i}.svc.ns.svc.cluster.local."),
                    [10, 0, (i / 250) as u8, (i % 250) as u8],
                )
            })
            .collect();
        let records = build_records(&answers, &additionals);
        assert_eq!(records.len(), 500);
        for record in &records {
            let i: usize = record.target["pod-".len()..record.target.find('.').unwrap()]
                .parse()
                .unwrap();
            assert_eq!(
                record.addresses,
                vec![IpAddr::V4(Ipv4Addr::new(
                    10,
                    0,
                    (i / 250) as u8,
                    (i % 250) as u8
                ))],
                "{}",
                record.target
            );
        }
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
