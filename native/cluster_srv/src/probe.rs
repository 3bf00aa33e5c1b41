//! What the benchmark measures the kept path against (`make bench`); compiled only with the
//! `bench-probe` feature, which the Mix compiler turns on in the dev environment alone, so it
//! never reaches the library users build.
//!
//! `blocking_lookup` is the experiment of doing a whole lookup on the calling thread, as a
//! dirty I/O NIF would: one UDP exchange with the first server, blocking until it answers or
//! `timeout` passes, with none of the resolver's resends, TCP or other servers. It is an upper
//! bound on what that design could gain, not a resolver.

use std::time::{Duration, Instant};

use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::RecordType;

use crate::answer::{build_records, classify, Outcome, SrvRecord};
use crate::error::Error;
use crate::plan::{candidate_names, parse_query_name};
use crate::resolver::SrvResolver;
use crate::transport::{matching, Request};

/// Looks up the SRV records of `name` from the resolver's first server, on this thread.
pub fn blocking_lookup(
    resolver: &SrvResolver,
    name: &str,
    timeout: Duration,
) -> Result<Vec<SrvRecord>, Error> {
    let plan = resolver.plan();
    let server = *plan
        .servers
        .first()
        .ok_or_else(|| Error::Io("no nameserver".to_string()))?;
    let name = parse_query_name(name)?;
    let candidate = candidate_names(&name, plan)
        .into_iter()
        .next()
        .ok_or(Error::NoRecords)?;
    let request = Request::new(Query::query(candidate, RecordType::SRV), true)?;
    let io = |error: std::io::Error| Error::Io(error.to_string());
    let socket = std::net::UdpSocket::bind(match server {
        std::net::SocketAddr::V4(_) => "0.0.0.0:0",
        std::net::SocketAddr::V6(_) => "[::]:0",
    })
    .map_err(io)?;
    socket.connect(server).map_err(io)?;
    socket.send(&request.bytes).map_err(io)?;
    let end = Instant::now() + timeout;
    let mut buffer = vec![0u8; 65_535];
    loop {
        let left = end
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(Error::Timeout)?;
        socket.set_read_timeout(Some(left)).map_err(io)?;
        let read = match socket.recv(&mut buffer) {
            Ok(read) => read,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Error::Timeout)
            }
            Err(error) => return Err(io(error)),
        };
        if let Some(message) = matching(&buffer[..read], &request)? {
            return match classify(message, RecordType::SRV) {
                Outcome::Answer(message) => {
                    Ok(build_records(&message.answers, &message.additionals))
                }
                Outcome::Final(error) | Outcome::TryNext(error) => Err(error),
            };
        }
    }
}
