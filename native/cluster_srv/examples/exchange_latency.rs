//! Where the time of one small SRV lookup goes, without the BEAM: `make bench` runs this against
//! the benchmark's BIND for the 3-record answer. (The raw UDP modes do not follow truncation
//! over TCP, so they are not for large answers.) Given a large answer's name too, it also
//! measures the price of opening a TCP connection per lookup against keeping one.
//!
//!     cargo run --release --example exchange_latency -- <bind port> <name> <rounds> <per round> [<large name>]
//!
//! Each mode but the two `cluster_srv_lookup_*_outside`/`_handed_off` ones runs its lookups
//! inside one task, so those figures hold no handoff from outside the runtime. Of those two,
//! `begun_outside` sends the query from the calling thread and hands the rest to the runtime,
//! as the NIF's `start_lookup` does now, and `handed_off` hands the whole lookup over, as it
//! did before. Modes alternate round by round. Output: `RESULT <mode> <median µs> <p90 µs>
//! <CPU µs per lookup>`, CPU being this process's user + system time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_srv::answer::build_records;
use cluster_srv::resolver::{Options, SrvResolver};
use cluster_srv::runtime::runtime;
use futures_util::StreamExt;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::xfer::DnsRequestSender;
use hickory_resolver::proto::op::{DnsRequest, DnsRequestOptions, Message, Query};
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::TokioResolver;

const MODES: [&str; 9] = [
    "raw_udp",
    "raw_fresh_socket",
    "raw_fresh_socket_3_calls",
    "hickory_udp_stream",
    "cluster_srv_lookup",
    "cluster_srv_lookup_begun_outside",
    "cluster_srv_lookup_handed_off",
    "hickory_resolver_1_worker",
    "hickory_resolver_2_workers",
];

/// With a large answer's name: one TCP query on a connection kept open (what the resolver
/// used to do), on a connection opened for it and closed after (what it does now), and our
/// whole lookup of that name (UDP, truncated, then TCP).
const TCP_MODES: [&str; 4] = [
    "tcp_kept_connection",
    "tcp_fresh_connection",
    "cluster_srv_lookup_large",
    "decode_large_answer",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 && args.len() != 6 {
        eprintln!("usage: exchange_latency <bind port> <name> <rounds> <per round> [<large name>]");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().expect("a port");
    let name = args[2].clone();
    let rounds: usize = args[3].parse().expect("a number of rounds");
    let per_round: usize = args[4].parse().expect("a number of lookups");
    let server: SocketAddr = ([127, 0, 0, 1], port).into();

    let one = runtime().expect("the shared runtime");
    let two = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a 2-worker runtime");

    let ours = Arc::new(
        SrvResolver::new(&Options {
            nameservers: vec![server],
            vm_settings: false,
            search: vec![],
            ndots: 1,
            timeout: Duration::from_secs(2),
            attempts: 1,
            deadline: Duration::from_millis(2_100),
        })
        .expect("a resolver"),
    );
    let hickory_one = Arc::new(hickory_resolver(server, one));
    let hickory_two = Arc::new(hickory_resolver(server, &two));

    let large = args.get(5).cloned();
    let modes: Vec<&str> = match large {
        Some(_) => MODES.iter().chain(TCP_MODES.iter()).copied().collect(),
        None => MODES.to_vec(),
    };
    let large = large.unwrap_or_default();

    let mut samples: Vec<Vec<u128>> = vec![Vec::new(); modes.len()];
    let mut cpu: Vec<Duration> = vec![Duration::ZERO; modes.len()];
    for _ in 0..rounds {
        for (index, mode) in modes.iter().enumerate() {
            let before = cpu_time();
            let times = match *mode {
                "raw_udp" => {
                    one.block_on(one.spawn(raw_udp(server, name.clone(), per_round, false)))
                }
                "raw_fresh_socket" => {
                    one.block_on(one.spawn(raw_udp(server, name.clone(), per_round, true)))
                }
                "raw_fresh_socket_3_calls" => {
                    one.block_on(one.spawn(raw_udp_3_calls(server, name.clone(), per_round)))
                }
                // As the NIF does now: the query is sent from the calling thread (a fresh
                // socket, non-blocking), and the runtime takes the lookup from there.
                "cluster_srv_lookup_begun_outside" => {
                    let mut times = Vec::with_capacity(per_round);
                    for _ in 0..per_round {
                        let started = Instant::now();
                        let begun = ours.begin(&name, RecordType::SRV);
                        let ours = ours.clone();
                        let found =
                            one.block_on(one.spawn(async move {
                                ours.lookup_begun(begun, false).await.is_ok()
                            }));
                        if !matches!(found, Ok(true)) {
                            panic!("{mode}: a lookup failed");
                        }
                        times.push(started.elapsed().as_micros());
                    }
                    Ok(Ok(times))
                }
                "hickory_udp_stream" => {
                    one.block_on(one.spawn(udp_stream(server, name.clone(), per_round)))
                }
                "cluster_srv_lookup" => {
                    let (ours, name) = (ours.clone(), name.clone());
                    one.block_on(one.spawn(async move {
                        timed(per_round, || async {
                            ours.lookup(&name, false).await.is_ok()
                        })
                        .await
                    }))
                }
                // As the NIF did before: each lookup starts from a thread outside the runtime,
                // which sends the query, and its end wakes that thread. Two handoffs between
                // threads per lookup, the first one before the query is sent.
                "cluster_srv_lookup_handed_off" => {
                    let mut times = Vec::with_capacity(per_round);
                    for _ in 0..per_round {
                        let (ours, name) = (ours.clone(), name.clone());
                        let started = Instant::now();
                        let found = one.block_on(
                            one.spawn(async move { ours.lookup(&name, false).await.is_ok() }),
                        );
                        if !matches!(found, Ok(true)) {
                            panic!("{mode}: a lookup failed");
                        }
                        times.push(started.elapsed().as_micros());
                    }
                    Ok(Ok(times))
                }
                "tcp_kept_connection" => {
                    one.block_on(one.spawn(raw_tcp(server, large.clone(), per_round, false)))
                }
                "tcp_fresh_connection" => {
                    one.block_on(one.spawn(raw_tcp(server, large.clone(), per_round, true)))
                }
                "cluster_srv_lookup_large" => {
                    let (ours, large) = (ours.clone(), large.clone());
                    one.block_on(one.spawn(async move {
                        timed(per_round, || async {
                            ours.lookup(&large, false).await.is_ok()
                        })
                        .await
                    }))
                }
                "decode_large_answer" => {
                    one.block_on(one.spawn(decode_only(server, large.clone(), per_round)))
                }
                "hickory_resolver_1_worker" => {
                    let (resolver, name) = (hickory_one.clone(), name.clone());
                    one.block_on(one.spawn(async move {
                        timed(per_round, || async {
                            resolver.srv_lookup(name.as_str()).await.is_ok()
                        })
                        .await
                    }))
                }
                "hickory_resolver_2_workers" => {
                    let (resolver, name) = (hickory_two.clone(), name.clone());
                    two.block_on(two.spawn(async move {
                        timed(per_round, || async {
                            resolver.srv_lookup(name.as_str()).await.is_ok()
                        })
                        .await
                    }))
                }
                other => unreachable!("no such mode: {other}"),
            };
            cpu[index] += cpu_time().saturating_sub(before);
            // The outer result is the task's join: a panic in it is a failure too.
            match times.unwrap_or_else(|join| Err(join.to_string())) {
                Ok(times) => samples[index].extend(times),
                Err(error) => panic!("{mode}: {error}"),
            }
        }
    }

    for (index, mode) in modes.iter().enumerate() {
        let sorted = {
            let mut all = samples[index].clone();
            all.sort_unstable();
            all
        };
        let median = sorted[sorted.len() / 2];
        let p90 = sorted[sorted.len() * 9 / 10];
        let cpu_per = cpu[index].as_micros() / sorted.len() as u128;
        println!("RESULT {mode} {median} {p90} {cpu_per}");
    }
}

fn hickory_resolver(server: SocketAddr, runtime: &tokio::runtime::Runtime) -> TokioResolver {
    let _guard = runtime.enter();
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut ns.connections {
        connection.port = server.port();
    }
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.attempts = 0;
    opts.timeout = Duration::from_secs(2);
    TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .expect("a hickory resolver")
}

/// Runs `op` `count` times, timing each; fails if any lookup failed.
async fn timed<F, Fut>(count: usize, op: F) -> Result<Vec<u128>, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        if !op().await {
            return Err("a lookup failed".to_string());
        }
        times.push(started.elapsed().as_micros());
    }
    Ok(times)
}

/// A prebuilt query over plain tokio UDP: on one kept socket, or on a fresh one each time (as
/// a client that randomises its source port must), reading the answer back with hickory-proto.
async fn raw_udp(
    server: SocketAddr,
    name: String,
    count: usize,
    fresh: bool,
) -> Result<Vec<u128>, String> {
    let query = query_bytes(&name)?;
    let mut buffer = vec![0u8; 65_535];
    let kept = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    kept.connect(server).await.map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let fresh_socket;
        let socket = if fresh {
            fresh_socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            fresh_socket
                .connect(server)
                .await
                .map_err(|e| e.to_string())?;
            &fresh_socket
        } else {
            &kept
        };
        socket.send(&query).await.map_err(|e| e.to_string())?;
        let len = socket.recv(&mut buffer).await.map_err(|e| e.to_string())?;
        if fresh {
            Message::from_vec(&buffer[..len]).map_err(|e| e.to_string())?;
        }
        times.push(started.elapsed().as_micros());
    }
    Ok(times)
}

/// A prebuilt query on a fresh socket each time, made as the resolver makes its own: created
/// non-blocking and bound by `connect`, three system calls where a bind makes five.
async fn raw_udp_3_calls(
    server: SocketAddr,
    name: String,
    count: usize,
) -> Result<Vec<u128>, String> {
    use socket2::{Domain, Protocol, Socket, Type};

    let query = query_bytes(&name)?;
    let mut buffer = vec![0u8; 65_535];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let socket = Socket::new(
            Domain::for_address(server),
            Type::DGRAM.nonblocking(),
            Some(Protocol::UDP),
        )
        .map_err(|e| e.to_string())?;
        socket.connect(&server.into()).map_err(|e| e.to_string())?;
        let socket = tokio::net::UdpSocket::from_std(socket.into()).map_err(|e| e.to_string())?;
        socket.send(&query).await.map_err(|e| e.to_string())?;
        let len = socket.recv(&mut buffer).await.map_err(|e| e.to_string())?;
        Message::from_vec(&buffer[..len]).map_err(|e| e.to_string())?;
        times.push(started.elapsed().as_micros());
    }
    Ok(times)
}

/// The CPU part of a large lookup alone: the answer, fetched once over TCP, decoded by
/// hickory-proto and made into our records, `count` times.
async fn decode_only(server: SocketAddr, name: String, count: usize) -> Result<Vec<u128>, String> {
    let mut stream = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let answer = tcp_exchange(&mut stream, &framed_query(&name)?).await?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let message = Message::from_vec(&answer).map_err(|e| e.to_string())?;
        let records = build_records(&message.answers, &message.additionals);
        if records.is_empty() {
            return Err("the large answer holds no records".to_string());
        }
        times.push(started.elapsed().as_micros());
    }
    Ok(times)
}

/// A query for `name`, framed for TCP: its length, then the message.
fn framed_query(name: &str) -> Result<Vec<u8>, String> {
    let query = query_bytes(name)?;
    let length = u16::try_from(query.len()).map_err(|e| e.to_string())?;
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    Ok(framed)
}

/// Sends a framed query on `stream` and reads the framed answer back.
async fn tcp_exchange(
    stream: &mut tokio::net::TcpStream,
    framed: &[u8],
) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    stream.write_all(framed).await.map_err(|e| e.to_string())?;
    let mut prefix = [0u8; 2];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

/// A prebuilt query over TCP, answered and decoded: on one connection kept open, or on a
/// connection of its own each time, closed after the answer.
async fn raw_tcp(
    server: SocketAddr,
    name: String,
    count: usize,
    fresh: bool,
) -> Result<Vec<u128>, String> {
    use tokio::net::TcpStream;

    let framed = framed_query(&name)?;
    let mut kept = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let mut fresh_stream;
        let stream = if fresh {
            fresh_stream = TcpStream::connect(server)
                .await
                .map_err(|e| e.to_string())?;
            &mut fresh_stream
        } else {
            &mut kept
        };
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let answer = tcp_exchange(stream, &framed).await?;
        Message::from_vec(&answer).map_err(|e| e.to_string())?;
        times.push(started.elapsed().as_micros());
    }
    Ok(times)
}

/// hickory's UDP client stream alone: the exchange our lookups used for each try before they
/// drove their own sockets.
async fn udp_stream(server: SocketAddr, name: String, count: usize) -> Result<Vec<u128>, String> {
    let name = Name::from_ascii(&name).map_err(|e| e.to_string())?;
    let mut stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(2)))
        .build();
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let request = DnsRequest::from_query(
            Query::query(name.clone(), RecordType::SRV),
            DnsRequestOptions::default(),
        );
        match stream.send_message(request).next().await {
            Some(Ok(_)) => times.push(started.elapsed().as_micros()),
            other => return Err(format!("no answer: {}", other.is_some())),
        }
    }
    Ok(times)
}

fn query_bytes(name: &str) -> Result<Vec<u8>, String> {
    let name = Name::from_ascii(name).map_err(|e| e.to_string())?;
    let mut message = Message::query();
    message.metadata.id = 0x5353;
    message.metadata.recursion_desired = true;
    message.queries.push(Query::query(name, RecordType::SRV));
    message.to_vec().map_err(|e| e.to_string())
}

/// This process's CPU time, to the nanosecond: the sum of every thread's time on a CPU, from
/// /proc/self/task/*/schedstat (its first field).
fn cpu_time() -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}
