//! The NIF surface of libcluster_srv: it declares the NIFs and converts terms, nothing more.
//! The work lives in plain modules that `cargo test` runs without a BEAM: `resolver` (lookups
//! on the shared `runtime`), `transport` (one UDP or TCP exchange), `plan` (servers and search
//! list), `answer` (what an answer means and its records), `names` (targets to node names) and
//! `error` (the reasons). `probe` holds what only the benchmark uses (`bench-probe` builds).

pub mod answer;
pub mod error;
pub mod names;
pub mod plan;
pub mod resolver;
pub mod runtime;
pub mod transport;

#[cfg(feature = "bench-probe")]
pub mod probe;

#[cfg(test)]
mod fuzz;

#[cfg(feature = "nif")]
mod nif {
    use std::net::IpAddr;
    use std::panic::{AssertUnwindSafe, RefUnwindSafe};
    use std::time::Duration;

    use futures_util::FutureExt;
    use rustler::types::tuple::make_tuple;
    use rustler::{
        Atom, Binary, Decoder, Encoder, Env, LocalPid, NifResult, OwnedEnv, ResourceArc, Term,
    };

    use crate::answer::SrvRecord;
    use crate::error::{panic_message, Error};
    use crate::names::{self, Candidate, Naming, Rules};
    use crate::plan;
    use crate::resolver::{Discovery, Found, Options, Source, SrvResolver};
    use crate::runtime::runtime;
    use hickory_resolver::proto::rr::RecordType;

    mod atoms {
        rustler::atoms! {
            ok,
            error,
            invalid_nameserver,
            cluster_srv_lookup,
            __struct__,
            priority,
            weight,
            port,
            ttl,
            target,
            addresses,
            nif,
            task,
            nodes,
            records,
            rejected,
            unresolved,
            ip,
            servers,
            search,
            ndots,
            srv,
            a,
            aaaa,
            cluster_srv_probe,
            by_target,
            tcp,
        }
    }

    /// A resolver owned by the VM's garbage collector.
    pub struct ResolverResource {
        resolver: SrvResolver,
    }

    // The resolver is configuration only, never changed after it is built: a panic cannot leave
    // it half-updated.
    impl RefUnwindSafe for ResolverResource {}

    #[rustler::resource_impl]
    impl rustler::Resource for ResolverResource {}

    /// A nameserver as Elixir hands it over: `"ip[:port]"` or `{"ip", port}`.
    enum NameserverArg {
        Text(String),
        WithPort(String, i64),
    }

    impl<'a> Decoder<'a> for NameserverArg {
        fn decode(term: Term<'a>) -> NifResult<Self> {
            if let Ok(text) = term.decode::<String>() {
                return Ok(NameserverArg::Text(text));
            }
            let (ip, port): (String, i64) = term.decode()?;
            Ok(NameserverArg::WithPort(ip, port))
        }
    }

    /// Builds a resolver. A bad nameserver gives `{:error, {:invalid_nameserver, index, why}}`, with
    /// the index into the given list, so that Elixir can name the value the user wrote. With no
    /// nameservers, the system's resolv.conf gives the servers, search list and ndots; with
    /// some, `search` and `ndots` go with them. `vm_settings` says the nameservers are the VM's
    /// own settings, whose link-local servers come without their zone (see `Options`).
    #[rustler::nif]
    #[allow(clippy::too_many_arguments)]
    fn resolver_new<'a>(
        env: Env<'a>,
        nameservers: Vec<NameserverArg>,
        vm_settings: bool,
        search: Vec<String>,
        ndots: usize,
        timeout_ms: u64,
        attempts: u32,
        deadline_ms: u64,
    ) -> Term<'a> {
        guarded(env, || {
            let mut addresses = Vec::with_capacity(nameservers.len());
            for (index, nameserver) in nameservers.iter().enumerate() {
                let parsed = match (nameserver, vm_settings) {
                    (NameserverArg::Text(text), false) => plan::parse_nameserver(text),
                    (NameserverArg::WithPort(ip, port), false) => {
                        plan::nameserver_with_port(ip, *port)
                    }
                    (NameserverArg::Text(text), true) => plan::parse_address(text),
                    (NameserverArg::WithPort(ip, port), true) => plan::address_with_port(ip, *port),
                };
                match parsed {
                    Ok(address) => addresses.push(address),
                    Err(why) => {
                        let reason = (atoms::invalid_nameserver(), index, why);
                        return (atoms::error(), reason).encode(env);
                    }
                }
            }
            let options = Options {
                nameservers: addresses,
                vm_settings,
                search,
                ndots,
                timeout: Duration::from_millis(timeout_ms),
                attempts,
                deadline: Duration::from_millis(deadline_ms),
            };
            match SrvResolver::new(&options) {
                Ok(resolver) => {
                    (atoms::ok(), ResourceArc::new(ResolverResource { resolver })).encode(env)
                }
                Err(error) => (atoms::error(), error).encode(env),
            }
        })
    }

    /// Where a resolver asks: `%{servers: ["ip:port"], search: [domain], ndots: n}`.
    #[rustler::nif]
    fn resolver_plan(env: Env<'_>, resource: ResourceArc<ResolverResource>) -> Term<'_> {
        guarded(env, || {
            let plan = resource.resolver.plan();
            let servers: Vec<String> = plan.servers.iter().map(|s| s.to_string()).collect();
            let search: Vec<String> = plan.search.iter().map(|d| d.to_ascii()).collect();
            let keys = [atoms::ndots(), atoms::search(), atoms::servers()].map(|k| k.encode(env));
            let values = [
                plan.ndots.encode(env),
                search.encode(env),
                servers.encode(env),
            ];
            Term::map_from_term_arrays(env, &keys, &values)
                .unwrap_or_else(|_| atoms::error().encode(env))
        })
    }

    /// Starts a lookup on the shared runtime and returns at once. The caller later receives
    /// exactly one `{:cluster_srv_lookup, tag, {:ok, found} | {:error, reason}}`: the records
    /// for `:srv`, the addresses for `:a` and `:aaaa`.
    #[rustler::nif]
    fn start_lookup<'a>(
        env: Env<'a>,
        resource: ResourceArc<ResolverResource>,
        name: Binary<'a>,
        record_type: Atom,
        fill_addresses: bool,
        tag: Term<'a>,
    ) -> Term<'a> {
        guarded(env, || {
            // The first queries go out from here, on the caller's scheduler, before the
            // runtime's thread has woken up: a few non-blocking system calls, which take the
            // time of that wake-up off the lookup's latency.
            let begun = utf8_name(name).and_then(|name| {
                let record_type = decode_type(record_type)?;
                Ok((record_type, resource.resolver.begin(&name, record_type)))
            });
            spawn_reply(env, tag, async move {
                let (record_type, begun) = begun?;
                if record_type == RecordType::SRV {
                    let records = resource
                        .resolver
                        .lookup_begun(begun, fill_addresses)
                        .await?;
                    Ok(Answer::Records(records))
                } else {
                    let found = resource.resolver.addresses_begun(begun).await?;
                    Ok(Answer::Addresses(found))
                }
            })
        })
    }

    /// Starts a lookup whose answer is turned into node names on the runtime, so the caller
    /// receives only `{:cluster_srv_lookup, tag, {:ok, %{records: count, nodes: [atom],
    /// rejected: [{target, reason}], unresolved: [{target, reason}]}} | {:error, reason}}`:
    /// none of the answer's records reach the caller's heap, and no scheduler runs the
    /// validation. `unresolved` lists the targets whose addresses could not be resolved for
    /// `:ip` naming, with the error why (see `SrvResolver::discover`).
    #[rustler::nif]
    #[allow(clippy::too_many_arguments)]
    fn start_discover<'a>(
        env: Env<'a>,
        resource: ResourceArc<ResolverResource>,
        name: Binary<'a>,
        basename: String,
        domain: Option<String>,
        naming: Atom,
        max_nodes: usize,
        tag: Term<'a>,
    ) -> Term<'a> {
        guarded(env, || {
            let name = utf8_name(name);
            let rules = rules(basename, domain, naming, max_nodes);
            spawn_reply(env, tag, async move {
                let discovery = resource.resolver.discover(&name?, &rules).await?;
                Ok(Answer::Names(discovery))
            })
        })
    }

    /// Starts a discovery of several sources at once, each `{name, type, basename, domain,
    /// naming, tcp_first}`: the caller receives `{:cluster_srv_lookup, tag, {:ok, [result]}}`,
    /// a result per source in their order. An SRV source's result is `{:ok, %{records: count,
    /// nodes: [atom], rejected: [{target, reason}], unresolved: [{target, reason}], by_target:
    /// [{target, atom}], tcp: bool}}` (as `start_discover` gives it), its targets turned into
    /// node names here, so that none of the records reach the caller's heap and no scheduler
    /// runs the validation; an A or AAAA source's is `{:ok, %{records: count, addresses: [ip],
    /// tcp: bool}}`; a failed one's is `{:error, reason}`. `tcp` says whether the answer needed
    /// TCP, for the caller to pass back as the source's next `tcp_first`. This is the
    /// strategy's poll.
    #[rustler::nif]
    fn start_discover_all<'a>(
        env: Env<'a>,
        resource: ResourceArc<ResolverResource>,
        sources: Vec<(Binary<'a>, Atom, String, Option<String>, Atom, bool)>,
        max_nodes: usize,
        tag: Term<'a>,
    ) -> Term<'a> {
        guarded(env, || {
            let sources: Vec<Result<Source, Error>> = sources
                .into_iter()
                .map(|(name, record_type, basename, domain, naming, tcp_first)| {
                    Ok(Source {
                        // A name that is not UTF-8 is refused as an invalid name by the lookup.
                        name: String::from_utf8_lossy(name.as_slice()).into_owned(),
                        record_type: decode_type(record_type)?,
                        rules: rules(basename, domain, naming, max_nodes),
                        tcp_first,
                    })
                })
                .collect();
            // Unlike `start_lookup`, every query is left to the runtime: a poll's latency does
            // not matter, the schedulers' time does.
            spawn_reply(env, tag, async move {
                let valid: Vec<Source> = sources.iter().flatten().cloned().collect();
                let mut found = resource.resolver.discover_many(&valid).await.into_iter();
                let results = sources
                    .into_iter()
                    .map(|source| match source {
                        Ok(_) => found
                            .next()
                            .unwrap_or_else(|| Err(Error::Io("a source gave no result".into()))),
                        Err(error) => Err(error),
                    })
                    .collect();
                Ok(Answer::Discovered(results))
            })
        })
    }

    /// The wall clock in nanoseconds, as `:os.system_time(:nanosecond)` reads it.
    #[cfg(feature = "bench-probe")]
    fn now_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// The benchmark's probe (`bench-probe` builds only): `start_lookup` for SRV records, whose
    /// reply `{:cluster_srv_probe, tag, result, [entered, sent, task, found, encoded]}` carries
    /// the wall-clock time of each step: the NIF entered, the query sent from the caller's
    /// thread, the lookup's task running on the runtime, the records found, and the terms built.
    #[cfg(feature = "bench-probe")]
    #[rustler::nif]
    fn probe_lookup<'a>(
        env: Env<'a>,
        resource: ResourceArc<ResolverResource>,
        name: Binary<'a>,
        tag: Term<'a>,
    ) -> Term<'a> {
        guarded(env, || {
            let entered = now_ns();
            let begun = utf8_name(name).map(|name| resource.resolver.begin(&name, RecordType::SRV));
            let sent = now_ns();
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(error) => return (atoms::error(), error).encode(env),
            };
            let mut owned = OwnedEnv::new();
            let tag = owned.save(tag);
            let pid = env.pid();
            runtime.spawn(async move {
                let task = now_ns();
                let found = match begun {
                    Ok(begun) => resource.resolver.lookup_begun(begun, false).await,
                    Err(error) => Err(error),
                };
                let found_at = now_ns();
                let _ = owned.send_and_clear(&pid, |env| {
                    let result = match &found {
                        Ok(records) => (atoms::ok(), encode_records(env, records)).encode(env),
                        Err(error) => (atoms::error(), error).encode(env),
                    };
                    let stamps = vec![entered, sent, task, found_at, now_ns()];
                    (atoms::cluster_srv_probe(), tag.load(env), result, stamps)
                });
            });
            atoms::ok().encode(env)
        })
    }

    /// The benchmark's dirty-I/O experiment (`bench-probe` builds only): a whole SRV lookup on
    /// the dirty I/O thread that runs this call, returning `{:ok, records}` or
    /// `{:error, reason}` itself. See `probe::blocking_lookup`.
    #[cfg(feature = "bench-probe")]
    #[rustler::nif(schedule = "DirtyIo")]
    fn probe_dirty_lookup<'a>(
        env: Env<'a>,
        resource: ResourceArc<ResolverResource>,
        name: String,
        timeout_ms: u64,
    ) -> Term<'a> {
        guarded(env, || {
            let timeout = Duration::from_millis(timeout_ms);
            match crate::probe::blocking_lookup(&resource.resolver, &name, timeout) {
                Ok(records) => (atoms::ok(), encode_records(env, &records)).encode(env),
                Err(error) => (atoms::error(), error).encode(env),
            }
        })
    }

    fn decode_type(record_type: Atom) -> Result<RecordType, Error> {
        if record_type == atoms::srv() {
            Ok(RecordType::SRV)
        } else if record_type == atoms::a() {
            Ok(RecordType::A)
        } else if record_type == atoms::aaaa() {
            Ok(RecordType::AAAA)
        } else {
            Err(Error::Io(
                "the record type must be :srv, :a or :aaaa".to_string(),
            ))
        }
    }

    fn utf8_name(name: Binary<'_>) -> Result<String, Error> {
        String::from_utf8(name.as_slice().to_vec()).map_err(|error| {
            Error::InvalidName(String::from_utf8_lossy(error.as_bytes()).into_owned())
        })
    }

    fn rules(basename: String, domain: Option<String>, naming: Atom, max_nodes: usize) -> Rules {
        let naming = if naming == atoms::ip() {
            Naming::Ip
        } else {
            Naming::Hostname
        };
        Rules {
            basename,
            domain,
            naming,
            max_nodes,
        }
    }

    /// What a lookup task sends back.
    enum Answer {
        Records(Vec<SrvRecord>),
        Addresses(Vec<IpAddr>),
        Names(Discovery),
        Discovered(Vec<Result<Found, Error>>),
    }

    impl Answer {
        fn encode<'a>(&self, env: Env<'a>) -> Result<Term<'a>, Error> {
            match self {
                Answer::Records(records) => Ok(encode_records(env, records)),
                Answer::Addresses(addresses) => Ok(addresses
                    .iter()
                    .map(|ip| encode_ip(env, ip))
                    .collect::<Vec<Term<'a>>>()
                    .encode(env)),
                Answer::Discovered(results) => {
                    let mut terms = Vec::with_capacity(results.len());
                    for result in results {
                        terms.push(match result {
                            Ok(found) => (atoms::ok(), encode_found(env, found)?).encode(env),
                            Err(error) => (atoms::error(), error).encode(env),
                        });
                    }
                    Ok(terms.encode(env))
                }
                Answer::Names(discovery) => encode_names(env, discovery),
            }
        }
    }

    /// `%{records: count, nodes: [atom], rejected: [{target, reason}], unresolved: [{target,
    /// reason}], by_target: [{target, atom}]}`, each unresolved reason the error term of why,
    /// and `by_target` each accepted target's node with `Naming::Ip` (empty otherwise).
    fn encode_names<'a>(env: Env<'a>, discovery: &Discovery) -> Result<Term<'a>, Error> {
        let (nodes, rejected) = encode_outcome(env, &discovery.outcome)?;
        let by_target = encode_targets(env, &discovery.outcome)?;
        let unresolved: Vec<(&str, &Error)> = discovery
            .unresolved
            .iter()
            .map(|(target, error)| (target.as_str(), error))
            .collect();
        let keys = [
            atoms::by_target(),
            atoms::nodes(),
            atoms::records(),
            atoms::rejected(),
            atoms::tcp(),
            atoms::unresolved(),
        ]
        .map(|k| k.encode(env));
        let values = [
            by_target,
            nodes,
            discovery.records.encode(env),
            rejected,
            discovery.needs_tcp.encode(env),
            unresolved.encode(env),
        ];
        Term::map_from_term_arrays(env, &keys, &values)
            .map_err(|_| Error::Io("cannot build the answer map".to_string()))
    }

    fn encode_found<'a>(env: Env<'a>, found: &Found) -> Result<Term<'a>, Error> {
        match found {
            Found::Names(discovery) => encode_names(env, discovery),
            Found::Addresses {
                addresses,
                needs_tcp,
            } => {
                let ips: Vec<Term<'a>> = addresses.iter().map(|ip| encode_ip(env, ip)).collect();
                let keys =
                    [atoms::addresses(), atoms::records(), atoms::tcp()].map(|k| k.encode(env));
                let values = [
                    ips.encode(env),
                    addresses.len().encode(env),
                    needs_tcp.encode(env),
                ];
                Term::map_from_term_arrays(env, &keys, &values)
                    .map_err(|_| Error::Io("cannot build the answer map".to_string()))
            }
        }
    }

    /// `[{target, atom}]`: each accepted target's node, with `Naming::Ip`.
    fn encode_targets<'a>(env: Env<'a>, outcome: &names::Outcome) -> Result<Term<'a>, Error> {
        let mut pairs = Vec::with_capacity(outcome.targets.len());
        for (target, index) in &outcome.targets {
            let name = outcome
                .names
                .get(*index)
                .ok_or_else(|| Error::Io("a target's name is missing".to_string()))?;
            let atom = Atom::from_str(env, name)
                .map_err(|_| Error::Io(format!("cannot make an atom of {name:?}")))?;
            pairs.push((target.as_str(), atom));
        }
        Ok(pairs.encode(env))
    }

    /// Node names as atoms (made only here, for names that passed validation) and rejections
    /// as `{target, reason}`.
    fn encode_outcome<'a>(
        env: Env<'a>,
        outcome: &names::Outcome,
    ) -> Result<(Term<'a>, Term<'a>), Error> {
        let mut accepted = Vec::with_capacity(outcome.names.len());
        for name in &outcome.names {
            let atom = Atom::from_str(env, name).map_err(|_| {
                Error::Io(format!(
                    "cannot make an atom of the validated name {name:?}"
                ))
            })?;
            accepted.push(atom);
        }
        let mut rejected = Vec::with_capacity(outcome.rejected.len());
        for (target, reason) in &outcome.rejected {
            let reason = Atom::from_str(env, reason.as_str())
                .map_err(|_| Error::Io("cannot encode a rejection".to_string()))?;
            rejected.push((target.as_str(), reason));
        }
        Ok((accepted.encode(env), rejected.encode(env)))
    }

    /// An address as `:inet` writes it: `{a, b, c, d}` or `{a, b, c, d, e, f, g, h}`.
    struct IpArg(IpAddr);

    impl<'a> Decoder<'a> for IpArg {
        fn decode(term: Term<'a>) -> NifResult<Self> {
            let parts = rustler::types::tuple::get_tuple(term)?;
            match parts.len() {
                4 => {
                    let mut octets = [0u8; 4];
                    for (octet, part) in octets.iter_mut().zip(&parts) {
                        *octet = part.decode()?;
                    }
                    Ok(IpArg(IpAddr::from(octets)))
                }
                8 => {
                    let mut segments = [0u16; 8];
                    for (segment, part) in segments.iter_mut().zip(&parts) {
                        *segment = part.decode()?;
                    }
                    Ok(IpArg(IpAddr::from(segments)))
                }
                _ => Err(rustler::Error::BadArg),
            }
        }
    }

    /// Validates targets into node names; see `names::node_names`. Takes `[{target, addresses}]`
    /// and returns `{:ok, %{records: count, nodes: [atom], rejected: [{target, reason}],
    /// unresolved: []}}`. Atoms are made only for accepted names, after the cap, so DNS data
    /// can never add more than `max_nodes` atoms per call.
    ///
    /// It takes 1 to 4 µs a target on a normal scheduler: `ClusterSRV.Resolver` calls it only
    /// for small inputs (50 targets at most), and `node_names_dirty` for the others.
    #[rustler::nif]
    fn node_names<'a>(
        env: Env<'a>,
        candidates: Vec<(Binary<'a>, Vec<IpArg>)>,
        basename: String,
        domain: Option<String>,
        naming: Atom,
        max_nodes: usize,
    ) -> Term<'a> {
        guarded(env, || {
            name_targets(env, &candidates, rules(basename, domain, naming, max_nodes))
        })
    }

    /// `node_names` on a dirty CPU scheduler, where a large input (its decoding included) holds
    /// no normal scheduler.
    #[rustler::nif(schedule = "DirtyCpu")]
    fn node_names_dirty<'a>(
        env: Env<'a>,
        candidates: Vec<(Binary<'a>, Vec<IpArg>)>,
        basename: String,
        domain: Option<String>,
        naming: Atom,
        max_nodes: usize,
    ) -> Term<'a> {
        guarded(env, || {
            name_targets(env, &candidates, rules(basename, domain, naming, max_nodes))
        })
    }

    fn name_targets<'a>(
        env: Env<'a>,
        candidates: &[(Binary<'a>, Vec<IpArg>)],
        rules: Rules,
    ) -> Term<'a> {
        let addresses: Vec<Vec<IpAddr>> = candidates
            .iter()
            .map(|(_, ips)| ips.iter().map(|ip| ip.0).collect())
            .collect();
        let outcome = names::node_names(
            candidates
                .iter()
                .zip(&addresses)
                .map(|((target, _), addresses)| Candidate {
                    target: target.as_slice(),
                    addresses,
                }),
            &rules,
        );
        // The targets come with their addresses: nothing is resolved, so none is unresolved.
        let answer = Answer::Names(Discovery {
            records: candidates.len(),
            outcome,
            unresolved: Vec::new(),
            needs_tcp: false,
        });
        match answer.encode(env) {
            Ok(answer) => (atoms::ok(), answer).encode(env),
            Err(error) => (atoms::error(), error).encode(env),
        }
    }

    /// Runs `work` on the shared runtime and sends its result to the caller, tagged with `tag`.
    /// A panic inside `work` is caught there and sent as `{:error, {:panic, message}}`.
    fn spawn_reply<'a, F>(env: Env<'a>, tag: Term<'a>, work: F) -> Term<'a>
    where
        F: std::future::Future<Output = Result<Answer, Error>> + Send + 'static,
    {
        let runtime = match runtime() {
            Ok(runtime) => runtime,
            Err(error) => return (atoms::error(), error).encode(env),
        };
        let reply = Reply::new(env.pid(), tag);
        runtime.spawn(async move {
            let result = AssertUnwindSafe(work)
                .catch_unwind()
                .await
                .unwrap_or_else(|payload| Err(Error::Panic(panic_message(payload.as_ref()))));
            reply.send(result);
        });
        atoms::ok().encode(env)
    }

    /// Runs a NIF body so that a panic becomes `{:error, {:panic, message}}`, never a raise.
    fn guarded<'a>(env: Env<'a>, body: impl FnOnce() -> Term<'a>) -> Term<'a> {
        std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
            (
                atoms::error(),
                Error::Panic(panic_message(payload.as_ref())),
            )
                .encode(env)
        })
    }

    /// Panics on purpose at `site`, to prove each guard: `:nif` in the NIF body, `:task` inside a
    /// runtime task, and `:cancel` for a task dropped before it could reply.
    #[cfg(feature = "test-panic")]
    #[rustler::nif]
    fn test_panic<'a>(env: Env<'a>, site: Atom, tag: Term<'a>) -> Term<'a> {
        guarded(env, || {
            if site == atoms::nif() {
                panic!("test panic in the NIF body");
            } else if site == atoms::task() {
                spawn_reply(env, tag, async { panic!("test panic in a runtime task") })
            } else {
                drop_on_runtime(Reply::new(env.pid(), tag));
                atoms::ok().encode(env)
            }
        })
    }

    #[cfg(feature = "test-panic")]
    fn drop_on_runtime(reply: Reply) {
        if let Ok(runtime) = runtime() {
            runtime.spawn(async move { drop(reply) });
        }
    }

    /// Carries a lookup's reply back to the caller. If it is dropped unsent (the task was cancelled),
    /// it still sends an error, so the caller never waits for a message that cannot come.
    struct Reply {
        owned: Option<OwnedEnv>,
        tag: rustler::env::SavedTerm,
        pid: LocalPid,
    }

    impl Reply {
        fn new(pid: LocalPid, tag: Term<'_>) -> Reply {
            let owned = OwnedEnv::new();
            let tag = owned.save(tag);
            Reply {
                owned: Some(owned),
                tag,
                pid,
            }
        }

        fn send(mut self, result: Result<Answer, Error>) {
            self.deliver(result);
        }

        fn deliver(&mut self, result: Result<Answer, Error>) {
            let Some(mut owned) = self.owned.take() else {
                return;
            };
            // The VM forbids sending from an owned env on its own threads; the runtime's are not.
            if rustler::thread::is_scheduler_thread() {
                return;
            }
            let tag = self.tag.clone();
            // A send fails only when the caller has exited, and then nobody is waiting.
            let _ = owned.send_and_clear(&self.pid, |env| {
                // Encoding runs here, after the env was taken: a panic in it must still leave
                // the caller one reply.
                let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    result.and_then(|answer| answer.encode(env))
                }))
                .unwrap_or_else(|payload| Err(Error::Panic(panic_message(payload.as_ref()))));
                let result = match encoded {
                    Ok(answer) => (atoms::ok(), answer).encode(env),
                    Err(error) => (atoms::error(), error).encode(env),
                };
                (atoms::cluster_srv_lookup(), tag.load(env), result)
            });
        }
    }

    impl Drop for Reply {
        fn drop(&mut self) {
            self.deliver(Err(Error::Io("the lookup was cancelled".to_string())));
        }
    }

    fn encode_records<'a>(env: Env<'a>, records: &[SrvRecord]) -> Term<'a> {
        // Keys in the VM's term order (atoms sort by name), so building each map needs no sort.
        let keys = [
            atoms::__struct__().encode(env),
            atoms::addresses().encode(env),
            atoms::port().encode(env),
            atoms::priority().encode(env),
            atoms::target().encode(env),
            atoms::ttl().encode(env),
            atoms::weight().encode(env),
        ];
        let module = match Atom::from_str(env, "Elixir.ClusterSRV.Record") {
            Ok(module) => module.encode(env),
            Err(_) => return Vec::<Term>::new().encode(env),
        };
        let terms: Vec<Term<'a>> = records
            .iter()
            .filter_map(|record| {
                let addresses: Vec<Term<'a>> = record
                    .addresses
                    .iter()
                    .map(|ip| encode_ip(env, ip))
                    .collect();
                let values = [
                    module,
                    addresses.encode(env),
                    record.port.encode(env),
                    record.priority.encode(env),
                    record.target.encode(env),
                    record.ttl.encode(env),
                    record.weight.encode(env),
                ];
                Term::map_from_term_arrays(env, &keys, &values).ok()
            })
            .collect();
        terms.encode(env)
    }

    /// An address as `:inet` writes it: a 4-tuple of bytes or an 8-tuple of 16-bit words.
    fn encode_ip<'a>(env: Env<'a>, ip: &IpAddr) -> Term<'a> {
        match ip {
            IpAddr::V4(v4) => {
                let parts: Vec<Term<'a>> =
                    v4.octets().iter().map(|part| part.encode(env)).collect();
                make_tuple(env, &parts)
            }
            IpAddr::V6(v6) => {
                let parts: Vec<Term<'a>> =
                    v6.segments().iter().map(|part| part.encode(env)).collect();
                make_tuple(env, &parts)
            }
        }
    }

    /// Starts the shared runtime as the library loads (in a release, as the VM boots), so that
    /// the first lookup does not pay for its thread. A runtime that cannot start is started
    /// again by the next call that needs it, which reports why if it still cannot, so loading
    /// never fails for it.
    fn on_load(_env: Env, _info: Term) -> bool {
        crate::runtime::start();
        true
    }

    rustler::init!("Elixir.ClusterSRV.Native", load = on_load);
}
