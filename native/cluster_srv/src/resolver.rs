//! SRV lookups on the shared runtime.
//!
//! A lookup is one task on the runtime. Each try asks every server at once over UDP, asks
//! again over TCP when the answer is truncated, and once more without EDNS when a server
//! refuses EDNS (see `transport`, which keeps no socket or connection between exchanges).
//! What the names to ask are is `plan`'s business, and what an answer means is `answer`'s.
//! hickory-proto encodes and decodes the messages, and hickory-resolver reads the system's
//! resolv.conf; hickory-resolver's own `Resolver` is not used for lookups: its cache, pool and
//! retry layers, which a poller does not need, cost more per lookup than the whole round trip
//! to the server (see bench/README.md).
//!
//! Everything here is plain Rust: `cargo test` exercises it without a BEAM.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use hickory_resolver::proto::op::{Message, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use crate::answer::{build_records, classify, refuses_edns, worse, Outcome, SrvRecord};
use crate::error::Error;
use crate::names::{self, Candidate, Naming, Rules};
use crate::plan::{self, candidate_names, parse_query_name, Plan};
use crate::runtime::runtime;
use crate::transport::{self, Request, UdpReply};

/// How to reach DNS and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Servers to ask; empty means the system's resolv.conf, with its search list and ndots.
    pub nameservers: Vec<SocketAddr>,
    /// Whether `nameservers` are the VM's own resolver settings, which drop an IPv6 zone: a
    /// link-local one then takes its zone from resolv.conf's line for it, or is left out.
    pub vm_settings: bool,
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
    /// The longest a lookup may take before it gives `Error::Timeout`; with `fill_addresses`,
    /// the address lookups get as long again. The caller computes it, so that it is computed
    /// in one place (`ClusterSRV.Resolver.deadline/2`).
    pub deadline: Duration,
}

/// One name to ask in a discovery, with the type to ask for and, for SRV, the rules that turn
/// its targets into node names.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub record_type: RecordType,
    pub rules: Rules,
    /// Ask over TCP first: the caller's last answer for this source needed TCP (see
    /// `Answered::needs_tcp`). Any TCP failure falls back to UDP at once.
    pub tcp_first: bool,
}

/// What one source of a discovery found.
#[derive(Debug)]
pub enum Found {
    /// From an SRV answer: see `Discovery`.
    Names(Discovery),
    /// From an A or AAAA answer: the addresses, which the caller names, and whether the
    /// answer needed TCP.
    Addresses {
        addresses: Vec<IpAddr>,
        needs_tcp: bool,
    },
}

/// What an SRV answer gave: the number of records, the node names made of them, and the
/// targets left out of naming because their addresses could not be resolved (`Naming::Ip`),
/// each once, in answer order, with why. An unresolved target is listed by DNS and may be a
/// live pod: it is neither named nor rejected.
#[derive(Debug, Default)]
pub struct Discovery {
    pub records: usize,
    pub outcome: names::Outcome,
    pub unresolved: Vec<(String, Error)>,
    /// Whether the SRV answer needed TCP: see `Answered::needs_tcp`.
    pub needs_tcp: bool,
}

/// An answer, and whether it needs TCP: its UDP answer was truncated, or it was asked over TCP
/// first and is larger than the UDP payload we advertise. The caller passes it back as the next
/// lookup's `tcp_first`, so that a name whose answer outgrew UDP costs one query a poll, not
/// two, and goes back to UDP once its answer fits again. The resolver itself keeps nothing.
#[derive(Debug)]
struct Answered {
    message: Message,
    needs_tcp: bool,
}

/// A lookup begun on the calling thread (`SrvResolver::begin`): the name parsed, the end of
/// its deadline fixed, and the first try's query sent to every server of the first name to
/// ask. The rest of the lookup runs on the runtime from there (`*_begun`), as if it had
/// begun there. Holds only that lookup's own sockets.
#[derive(Debug)]
pub struct Begun {
    name: Result<Name, Error>,
    record_type: RecordType,
    end: tokio::time::Instant,
    first: Option<FirstTry>,
    tcp_first: bool,
}

/// The first try of a lookup, begun: the name it asks, when the try ends, and for each server
/// (in the plan's order) its query and exchange, or `None` where beginning it failed (the try
/// then makes that exchange itself, and meets the failure there).
#[derive(Debug)]
struct FirstTry {
    name: Name,
    deadline: tokio::time::Instant,
    exchanges: Vec<Option<(Request, transport::Begun)>>,
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

impl SrvResolver {
    /// Builds a resolver. No query is sent until the first lookup.
    pub fn new(options: &Options) -> Result<SrvResolver, Error> {
        let plan = if options.nameservers.is_empty() {
            plan::resolv_conf_plan(&read_resolv_conf()?)?
        } else {
            let servers = if options.vm_settings {
                // A file that cannot be read gives no zone, as a line without one.
                let text = read_resolv_conf().unwrap_or_default();
                plan::scope_link_local(
                    options.nameservers.clone(),
                    &plan::resolv_conf_zones(&text),
                )?
            } else {
                options.nameservers.clone()
            };
            Plan {
                servers,
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
            deadline: options.deadline,
            tcp_slots: tokio::sync::Semaphore::new(TCP_CONNECTIONS),
        })
    }

    /// Where this resolver asks, and how it completes relative names.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Begins a lookup of `name` for `record_type` on the calling thread, without blocking:
    /// the first try's queries are sent from here (see `transport::begin_udp`), and the
    /// deadline counts from now. Pass the result to `lookup_begun`, `discover_begun` or
    /// `addresses_begun` on the runtime.
    pub fn begin(&self, name: &str, record_type: RecordType) -> Begun {
        self.begin_over(name, record_type, false)
    }

    /// `begin`, asking over TCP first when `tcp_first`: then no UDP query is sent from here.
    pub fn begin_over(&self, name: &str, record_type: RecordType, tcp_first: bool) -> Begun {
        let end = tokio::time::Instant::now() + self.deadline;
        let name = parse_query_name(name);
        let first = name.as_ref().ok().filter(|_| !tcp_first).and_then(|name| {
            let candidate = candidate_names(name, &self.plan).into_iter().next()?;
            let query = Query::query(candidate.clone(), record_type);
            let exchanges = self
                .plan
                .servers
                .iter()
                .map(|server| {
                    let request = Request::new(query.clone(), true).ok()?;
                    let begun = transport::begin_udp(*server, &request).ok()?;
                    Some((request, begun))
                })
                .collect();
            Some(FirstTry {
                name: candidate,
                deadline: tokio::time::Instant::now() + self.timeout,
                exchanges,
            })
        });
        Begun {
            name,
            record_type,
            end,
            first,
            tcp_first,
        }
    }

    /// Looks up the SRV records of `name`. A trailing dot makes the name absolute.
    ///
    /// With `fill_addresses`, targets the answer gave no address for are resolved (see
    /// `addresses`), within a second deadline of the same length; a target that could not be
    /// resolved keeps no address.
    pub async fn lookup(&self, name: &str, fill_addresses: bool) -> Result<Vec<SrvRecord>, Error> {
        self.lookup_begun(self.begin(name, RecordType::SRV), fill_addresses)
            .await
    }

    /// `lookup`, from a lookup `begin` began for SRV records.
    pub async fn lookup_begun(
        &self,
        begun: Begun,
        fill_addresses: bool,
    ) -> Result<Vec<SrvRecord>, Error> {
        let (mut records, _needs_tcp) = self.srv_records(begun).await?;
        if fill_addresses {
            self.fill_addresses(&mut records, |_| true, usize::MAX)
                .await;
        }
        Ok(records)
    }

    /// Looks up `name` and turns its targets into node names under `rules`. With `Naming::Ip`,
    /// only targets the rules accept (the first `max_nodes` of them) are resolved for
    /// addresses: DNS data never chooses what else is queried. A target that could not be
    /// resolved is left out of naming and reported in `Discovery::unresolved`.
    pub async fn discover(&self, name: &str, rules: &Rules) -> Result<Discovery, Error> {
        self.discover_begun(self.begin(name, RecordType::SRV), rules)
            .await
    }

    /// `discover`, from a lookup `begin` began for SRV records.
    pub async fn discover_begun(&self, begun: Begun, rules: &Rules) -> Result<Discovery, Error> {
        let (mut records, needs_tcp) = self.srv_records(begun).await?;
        let unresolved = if rules.naming == Naming::Ip {
            let accepted = |target: &str| names::target_accepted(target, rules);
            self.fill_addresses(&mut records, accepted, rules.max_nodes)
                .await
        } else {
            Vec::new()
        };
        let left_out: HashSet<&str> = unresolved
            .iter()
            .map(|(target, _)| target.as_str())
            .collect();
        let candidates = records
            .iter()
            .filter(|record| !left_out.contains(record.target.as_str()))
            .map(|record| Candidate {
                target: record.target.as_bytes(),
                addresses: &record.addresses,
            });
        let outcome = names::node_names(candidates, rules);
        Ok(Discovery {
            records: records.len(),
            outcome,
            unresolved,
            needs_tcp,
        })
    }

    /// The addresses of a lookup `begin` began for A records (`RecordType::A`) or AAAA records
    /// (`RecordType::AAAA`), sorted and each kept once, so that every caller sees them in one
    /// order. No records of the type is `Error::NoRecords`.
    pub async fn addresses_begun(&self, begun: Begun) -> Result<Vec<IpAddr>, Error> {
        self.addresses_answered(begun)
            .await
            .map(|(addresses, _needs_tcp)| addresses)
    }

    /// `addresses_begun`, and whether the answer needed TCP.
    async fn addresses_answered(&self, begun: Begun) -> Result<(Vec<IpAddr>, bool), Error> {
        let record_type = begun.record_type;
        let answered = self.resolve_begun(begun).await?;
        let addresses = addresses_in(&answered.message, record_type)?;
        Ok((addresses, answered.needs_tcp))
    }

    /// Looks up every source at once and gives what each found, in their order: node names for
    /// an SRV source (see `discover`), addresses for an A or AAAA one. One source's failure is
    /// its own: the others' results stand.
    pub async fn discover_many(&self, sources: &[Source]) -> Vec<Result<Found, Error>> {
        futures_util::future::join_all(sources.iter().map(|source| async move {
            let begun = self.begin_over(&source.name, source.record_type, source.tcp_first);
            match source.record_type {
                RecordType::SRV => self
                    .discover_begun(begun, &source.rules)
                    .await
                    .map(Found::Names),
                _ => self
                    .addresses_answered(begun)
                    .await
                    .map(|(addresses, needs_tcp)| Found::Addresses {
                        addresses,
                        needs_tcp,
                    }),
            }
        }))
        .await
    }

    async fn srv_records(&self, begun: Begun) -> Result<(Vec<SrvRecord>, bool), Error> {
        let answered = self.resolve_begun(begun).await?;
        let message = &answered.message;
        let records = build_records(&message.answers, &message.additionals);
        if records.is_empty() {
            Err(Error::NoRecords)
        } else {
            Ok((records, answered.needs_tcp))
        }
    }

    /// Resolves the addresses of up to `limit` distinct targets that have none and that
    /// `wanted` accepts, `FILL_CONCURRENCY` at a time, all within one deadline (see
    /// `addresses`). Returns the targets that could not be resolved, each once, in answer order,
    /// with why (the deadline is `Error::Timeout`); they keep an empty list.
    async fn fill_addresses(
        &self,
        records: &mut [SrvRecord],
        wanted: impl Fn(&str) -> bool,
        limit: usize,
    ) -> Vec<(String, Error)> {
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
        let mut found: HashMap<String, Result<Vec<IpAddr>, Error>> =
            futures_util::stream::iter(missing.iter().cloned())
                .map(|target| async move {
                    let addresses = match Name::from_ascii(format!("{target}.")) {
                        Ok(name) => tokio::time::timeout_at(end, self.addresses(&name))
                            .await
                            .unwrap_or(Err(Error::Timeout)),
                        Err(_) => Err(Error::InvalidName(target.clone())),
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
            if let Some(Ok(addresses)) = found.get(&record.target) {
                record.addresses.clone_from(addresses);
            }
        }
        missing
            .into_iter()
            .filter_map(|target| match found.remove(&target) {
                Some(Err(error)) => Some((target, error)),
                _ => None,
            })
            .collect()
    }

    /// The addresses of a target the SRV answer listed: its A records, or its AAAA records
    /// when the A answer is negative (no such name, or no A record). A failed A query is that
    /// failure: asking AAAA then would name a dual-stack pod after its IPv6 address, another
    /// node. Both negative is `Error::NoRecords`: a target DNS lists with no address is an
    /// inconsistent answer, not a pod gone.
    async fn addresses(&self, name: &Name) -> Result<Vec<IpAddr>, Error> {
        match self.addresses_of(name, RecordType::A).await {
            Err(Error::NxDomain | Error::NoRecords) => {}
            found => return found,
        }
        match self.addresses_of(name, RecordType::AAAA).await {
            Err(Error::NxDomain) => Err(Error::NoRecords),
            found => found,
        }
    }

    async fn addresses_of(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Vec<IpAddr>, Error> {
        let answered = self.resolve(name, record_type, None, false).await?;
        addresses_in(&answered.message, record_type)
    }

    /// A begun lookup, to its answer, within its deadline.
    async fn resolve_begun(&self, begun: Begun) -> Result<Answered, Error> {
        let name = begun.name?;
        let work = self.resolve(&name, begun.record_type, begun.first, begun.tcp_first);
        tokio::time::timeout_at(begun.end, work)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Asks for `name`, completed with the search list when it is relative, and returns the
    /// first answer that holds records of `record_type`. `first`, when given, is the first
    /// try of the first name, begun already.
    async fn resolve(
        &self,
        name: &Name,
        record_type: RecordType,
        mut first: Option<FirstTry>,
        tcp_first: bool,
    ) -> Result<Answered, Error> {
        let mut failure: Option<Error> = None;
        for candidate in candidate_names(name, &self.plan) {
            let begun = first.take().filter(|first| first.name == candidate);
            match self.query(&candidate, record_type, begun, tcp_first).await {
                Ok(message) => return Ok(message),
                Err(error) => failure = Some(worse(failure, error)),
            }
        }
        Err(failure.unwrap_or(Error::NoRecords))
    }

    /// One name, `attempts` tries; each try asks every server at once and takes the first
    /// answer that settles the question, so a dead server costs no more than one `timeout`.
    /// With `first`, the first try goes on from the exchanges begun there.
    async fn query(
        &self,
        name: &Name,
        record_type: RecordType,
        first: Option<FirstTry>,
        tcp_first: bool,
    ) -> Result<Answered, Error> {
        let query = Query::query(name.clone(), record_type);
        let mut last = Error::Timeout;
        let (mut first_deadline, mut begun) = match first {
            Some(first) => (Some(first.deadline), first.exchanges),
            None => (None, Vec::new()),
        };
        for _ in 0..self.attempts {
            let deadline = first_deadline
                .take()
                .unwrap_or_else(|| tokio::time::Instant::now() + self.timeout);
            let mut begun = std::mem::take(&mut begun).into_iter();
            let mut asks: FuturesUnordered<_> = self
                .plan
                .servers
                .iter()
                .map(|server| {
                    let begun = begun.next().flatten();
                    self.exchange(*server, &query, deadline, begun, tcp_first)
                })
                .collect();
            while let Some(result) = asks.next().await {
                match result {
                    Ok(Answered { message, needs_tcp }) => match classify(message, record_type) {
                        Outcome::Answer(message) => return Ok(Answered { message, needs_tcp }),
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
    /// truncated; or, with `tcp_first`, TCP first, and UDP at once if TCP fails in any way. A
    /// server that answers an EDNS query with FORMERR or NOTIMP may not know EDNS (RFC 6891,
    /// section 7), so it is asked once more without it.
    async fn exchange(
        &self,
        server: SocketAddr,
        query: &Query,
        deadline: tokio::time::Instant,
        begun: Option<(Request, transport::Begun)>,
        tcp_first: bool,
    ) -> Result<Answered, Error> {
        let answered = self
            .ask(server, query, true, deadline, begun, tcp_first)
            .await?;
        if refuses_edns(&answered.message) {
            return self.ask(server, query, false, deadline, None, false).await;
        }
        Ok(answered)
    }

    async fn ask(
        &self,
        server: SocketAddr,
        query: &Query,
        edns: bool,
        deadline: tokio::time::Instant,
        begun: Option<(Request, transport::Begun)>,
        tcp_first: bool,
    ) -> Result<Answered, Error> {
        let (request, begun) = match begun {
            Some((request, begun)) => (request, Some(begun)),
            None => (Request::new(query.clone(), edns)?, None),
        };
        if tcp_first && begun.is_none() {
            // TCP gets half of the try at most, so that UDP still has time if TCP hangs.
            let now = tokio::time::Instant::now();
            let tcp_deadline = deadline.min(now + deadline.saturating_duration_since(now) / 2);
            if let Ok((message, size)) = self.tcp(server, &request, tcp_deadline).await {
                let needs_tcp = size > usize::from(transport::EDNS_PAYLOAD);
                return Ok(Answered { message, needs_tcp });
            }
        }
        match transport::udp(server, &request, deadline, begun).await? {
            UdpReply::Answer(message) => Ok(Answered {
                message,
                needs_tcp: false,
            }),
            UdpReply::Truncated => {
                let (message, _size) = self.tcp(server, &request, deadline).await?;
                Ok(Answered {
                    message,
                    needs_tcp: true,
                })
            }
        }
    }

    /// One TCP exchange, within the resolver's bound on connections open at once.
    async fn tcp(
        &self,
        server: SocketAddr,
        request: &Request,
        deadline: tokio::time::Instant,
    ) -> Result<(Message, usize), Error> {
        let slot = tokio::time::timeout_at(deadline, self.tcp_slots.acquire())
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|_| Error::Io("the resolver is closed".to_string()))?;
        let answer = transport::tcp(server, request, deadline).await;
        drop(slot);
        answer
    }
}

/// The addresses of `record_type` in an answer, sorted and each kept once, so that every caller
/// sees them in one order whatever order the server rotates them in. None is
/// `Error::NoRecords`.
fn addresses_in(answer: &Message, record_type: RecordType) -> Result<Vec<IpAddr>, Error> {
    let mut found: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter(|record| record.record_type() == record_type)
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    found.sort();
    found.dedup();
    if found.is_empty() {
        Err(Error::NoRecords)
    } else {
        Ok(found)
    }
}

/// Where the system's resolver configuration is, as hickory reads it.
const RESOLV_CONF: &str = "/etc/resolv.conf";

fn read_resolv_conf() -> Result<String, Error> {
    std::fs::read_to_string(RESOLV_CONF).map_err(|error| {
        Error::Io(format!(
            "cannot read the system resolver configuration {RESOLV_CONF}: {error}"
        ))
    })
}
