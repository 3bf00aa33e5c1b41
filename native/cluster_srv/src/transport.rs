//! Carrying one DNS message to one server and its answer back, over UDP or TCP.
//!
//! Nothing here outlives the exchange that opened it: every UDP exchange binds its own socket
//! (a random source port, chosen by the kernel), and every TCP exchange opens its own
//! connection and closes it with the answer. So a server that restarts, closes, resets or
//! idles out a connection can fail only the exchange it was part of, never a later one.
//!
//! What an answer means (its response code, its records, the search list) is not this
//! module's business: see `resolver`.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, Query, ResponseCode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::error::Error;

/// The EDNS UDP payload size we advertise, as the DNS flag day recommends.
pub const EDNS_PAYLOAD: u16 = 1232;

/// The largest DNS message there is: a UDP datagram is read whole whatever size was advertised,
/// since some servers send more than that without setting TC.
const MAX_MESSAGE: usize = 65_535;

/// Within one try, the query is sent again this long after the previous send...
pub const RESEND_AFTER: Duration = Duration::from_millis(333);

/// ...at most this many times in all (at 0, 333 and 666 ms), while the try lasts.
pub const MAX_SENDS: u32 = 3;

/// One query, encoded once and sent as often as needed.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: u16,
    pub query: Query,
    pub bytes: Vec<u8>,
}

impl Request {
    /// A recursive query for `query` under a random ID, with or without an EDNS OPT record.
    pub fn new(query: Query, edns: bool) -> Result<Request, Error> {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.queries.push(query.clone());
        if edns {
            let mut opt = Edns::new();
            opt.set_max_payload(EDNS_PAYLOAD);
            message.edns = Some(opt);
        }
        let bytes = message
            .to_vec()
            .map_err(|error| Error::Io(format!("cannot encode the query: {error}")))?;
        Ok(Request {
            id: message.metadata.id,
            query,
            bytes,
        })
    }
}

/// What a UDP exchange brought back.
#[derive(Debug)]
pub enum UdpReply {
    Answer(Message),
    /// The server set TC: the answer must be asked for again over TCP.
    Truncated,
}

/// A UDP exchange begun on the calling thread: its socket opened and connected, and the query
/// sent once (unless the send would have blocked), without waiting for anything. The NIF
/// begins a lookup's first exchanges this way before it hands the lookup to the runtime, so
/// the query is on the wire while the runtime's thread wakes up. The socket is the exchange's
/// own, as any other: it lives only until the exchange ends.
#[derive(Debug)]
pub struct Begun {
    socket: std::net::UdpSocket,
    sent_at: Option<Instant>,
}

/// Opens a fresh UDP socket (a random source port, chosen by the kernel) connected to
/// `server`, and sends `request` once. Nothing here blocks: the socket is non-blocking, and a
/// send that would block is left to `udp`, which sends at once.
///
/// Three system calls: the socket is made non-blocking (and close-on-exec) as it is made, and
/// `connect` binds it to a random port as it connects it, as a `bind` to port 0 would.
pub fn begin_udp(server: SocketAddr, request: &Request) -> Result<Begun, Error> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )
    .map_err(|error| io_error("cannot open a UDP socket", error))?;
    socket
        .connect(&server.into())
        .map_err(|error| io_error("cannot address the server", error))?;
    let socket = std::net::UdpSocket::from(socket);
    let sent_at = match socket.send(&request.bytes) {
        Ok(_) => Some(Instant::now()),
        Err(error) if error.kind() == ErrorKind::WouldBlock => None,
        Err(error) => return Err(io_error("cannot send the query", error)),
    };
    Ok(Begun { socket, sent_at })
}

/// Sends `request` to `server` over UDP until an answer to it arrives or `deadline` passes.
/// With `begun`, the exchange goes on from `begin_udp`: its socket, and its first send.
///
/// A datagram counts as the answer only if it comes from `server` (the socket is connected, so
/// the kernel drops any other), is a response carrying the query's ID, and answers the query's
/// question; any other is ignored, so a spoofed or stray one ends as a timeout if no real answer
/// comes. A datagram that passes the ID check but cannot be decoded is a malformed answer,
/// unless it has TC set: then the rest may have been cut anywhere, and the TCP answer, checked
/// in full, is what counts.
///
/// When the server's host refuses the datagram (ICMP port unreachable: nothing listens there
/// now), the query is sent again at the next resend, since a server that is restarting may be
/// back by then; a refusal after the last send ends the exchange as `connection refused`.
pub async fn udp(
    server: SocketAddr,
    request: &Request,
    deadline: Instant,
    begun: Option<Begun>,
) -> Result<UdpReply, Error> {
    let (socket, mut sends, mut next_send) = match begun {
        Some(Begun { socket, sent_at }) => {
            let socket = UdpSocket::from_std(socket)
                .map_err(|error| io_error("cannot open a UDP socket", error))?;
            match sent_at {
                Some(at) => (socket, 1, at + RESEND_AFTER),
                None => (socket, 0, Instant::now()),
            }
        }
        None => {
            let socket = UdpSocket::bind(unspecified(server.ip()))
                .await
                .map_err(|error| io_error("cannot open a UDP socket", error))?;
            socket
                .connect(server)
                .await
                .map_err(|error| io_error("cannot address the server", error))?;
            (socket, 0, Instant::now())
        }
    };

    let mut buffer: Vec<u8> = Vec::with_capacity(MAX_MESSAGE);
    let mut refused = false;
    loop {
        if sends < MAX_SENDS && Instant::now() >= next_send {
            sends += 1;
            next_send += RESEND_AFTER;
            match socket.send(&request.bytes).await {
                Ok(_) => {}
                // An earlier send's refusal, reported now.
                Err(error) if error.kind() == ErrorKind::ConnectionRefused => refused = true,
                Err(error) => return Err(io_error("cannot send the query", error)),
            }
        }
        let wake = if sends < MAX_SENDS {
            next_send.min(deadline)
        } else {
            deadline
        };
        buffer.clear();
        tokio::select! {
            received = socket.recv_buf(&mut buffer) => match received {
                Ok(_) => {
                    if let Some(reply) = udp_reply(&buffer, request)? {
                        return Ok(reply);
                    }
                }
                Err(error) if error.kind() == ErrorKind::ConnectionRefused => {
                    refused = true;
                    if sends >= MAX_SENDS {
                        return Err(refusal());
                    }
                }
                Err(error) => return Err(io_error("no answer", error)),
            },
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline {
                    return Err(if refused { refusal() } else { Error::Timeout });
                }
            }
        }
    }
}

fn refusal() -> Error {
    Error::Io("connection refused".to_string())
}

/// The reply a datagram is, if it is one to `request`.
fn udp_reply(bytes: &[u8], request: &Request) -> Result<Option<UdpReply>, Error> {
    if !response_to(bytes, request) {
        return Ok(None);
    }
    if bytes[2] & TC != 0 {
        return Ok(Some(UdpReply::Truncated));
    }
    Ok(matching(bytes, request)?.map(UdpReply::Answer))
}

/// The header's QR bit (a response) and TC bit (truncated), in its third octet.
const QR: u8 = 0x80;
const TC: u8 = 0x02;

/// Whether `bytes` hold a whole header of a response carrying `request`'s ID.
fn response_to(bytes: &[u8], request: &Request) -> bool {
    bytes.len() >= 12
        && u16::from_be_bytes([bytes[0], bytes[1]]) == request.id
        && bytes[2] & QR != 0
}

/// Sends `request` to `server` over a TCP connection of its own and reads the answer, all
/// before `deadline`: the answer, and its size in octets. The connection is closed when this
/// returns.
pub async fn tcp(
    server: SocketAddr,
    request: &Request,
    deadline: Instant,
) -> Result<(Message, usize), Error> {
    match tokio::time::timeout_at(deadline, tcp_exchange(server, request)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout),
    }
}

async fn tcp_exchange(server: SocketAddr, request: &Request) -> Result<(Message, usize), Error> {
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|error| io_error("cannot connect over TCP", error))?;
    // A query is one small write: waiting to coalesce it would only add latency.
    stream.set_nodelay(true).ok();

    let length = u16::try_from(request.bytes.len())
        .map_err(|_| Error::Io("the query is too long for TCP".to_string()))?;
    let mut framed = Vec::with_capacity(2 + request.bytes.len());
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&request.bytes);
    stream
        .write_all(&framed)
        .await
        .map_err(|error| io_error("cannot send the query over TCP", error))?;

    // A server may send other messages first (answers to nothing we asked): skip them.
    loop {
        let mut prefix = [0u8; 2];
        read_full(&mut stream, &mut prefix, "before answering").await?;
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        read_full(&mut stream, &mut message, "in the middle of its answer").await?;
        if let Some(answer) = matching(&message, request)? {
            return Ok((answer, message.len()));
        }
    }
}

/// Fills `buffer` from the stream, or says how far the server got before it closed.
async fn read_full(stream: &mut TcpStream, buffer: &mut [u8], when: &str) -> Result<(), Error> {
    let mut filled = 0;
    while filled < buffer.len() {
        match stream.read(&mut buffer[filled..]).await {
            Ok(0) => {
                return Err(Error::Io(format!(
                    "the server closed the TCP connection {when} ({filled} of {} bytes)",
                    buffer.len()
                )))
            }
            Ok(read) => filled += read,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(io_error("the TCP connection failed", error)),
        }
    }
    Ok(())
}

/// Decodes `bytes` if they are the answer to `request`: `Ok(None)` for a message that is not
/// (not a response, another ID, another question), an error for a response with our ID that
/// cannot be decoded.
pub fn matching(bytes: &[u8], request: &Request) -> Result<Option<Message>, Error> {
    if !response_to(bytes, request) {
        return Ok(None);
    }
    let message = Message::from_vec(bytes)
        .map_err(|error| Error::Io(format!("malformed answer: {error}")))?;
    let ours = message.queries.len() == 1 && message.queries[0] == request.query;
    // A server that does not understand EDNS may refuse the query without echoing it.
    let unparsed_refusal = message.queries.is_empty()
        && matches!(
            message.metadata.response_code,
            ResponseCode::FormErr | ResponseCode::NotImp
        );
    Ok((ours || unparsed_refusal).then_some(message))
}

fn unspecified(server: IpAddr) -> SocketAddr {
    match server {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// An I/O failure as a reason: a refused or reset connection in plain words, a timeout as one.
fn io_error(context: &str, error: std::io::Error) -> Error {
    match error.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Error::Timeout,
        ErrorKind::ConnectionRefused => Error::Io("connection refused".to_string()),
        ErrorKind::ConnectionReset => Error::Io("connection reset by the server".to_string()),
        _ => Error::Io(format!("{context}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::OpCode;
    use hickory_resolver::proto::rr::{Name, RecordType};
    use std::str::FromStr;

    fn request() -> Request {
        let name = Name::from_str("svc.ns.svc.cluster.local.").expect("a valid name");
        Request::new(Query::query(name, RecordType::SRV), true).expect("encodes")
    }

    fn reply(request: &Request, code: ResponseCode, queries: Vec<Query>) -> Vec<u8> {
        let mut message = Message::response(request.id, OpCode::Query);
        message.metadata.response_code = code;
        message.queries = queries;
        message.to_vec().expect("encodes")
    }

    #[test]
    fn a_query_carries_edns_only_when_asked() {
        let with = Message::from_vec(&request().bytes).expect("decodes");
        assert_eq!(with.edns.map(|edns| edns.max_payload()), Some(EDNS_PAYLOAD));
        let query = request().query;
        let without = Message::from_vec(&Request::new(query, false).expect("encodes").bytes)
            .expect("decodes");
        assert!(without.edns.is_none());
        assert!(without.metadata.recursion_desired);
    }

    #[test]
    fn only_the_answer_to_our_id_and_question_matches() {
        let ours = request();
        let answer = reply(&ours, ResponseCode::NoError, vec![ours.query.clone()]);
        assert!(matches!(matching(&answer, &ours), Ok(Some(_))));

        let mut other_id = answer.clone();
        other_id[0] ^= 0xff;
        assert!(matches!(matching(&other_id, &ours), Ok(None)));

        let other = Query::query(Name::from_str("other.").expect("valid"), RecordType::SRV);
        let other_question = reply(&ours, ResponseCode::NoError, vec![other]);
        assert!(matches!(matching(&other_question, &ours), Ok(None)));

        assert!(matches!(matching(&[], &ours), Ok(None)));
        assert!(matches!(matching(&answer[..11], &ours), Ok(None)));

        // Our own query echoed back is not an answer.
        assert!(matches!(matching(&ours.bytes, &ours), Ok(None)));
    }

    #[test]
    fn a_truncated_answer_is_taken_as_truncated_however_it_was_cut() {
        let ours = request();
        let mut message = Message::response(ours.id, OpCode::Query);
        message.queries = vec![ours.query.clone()];
        message.metadata.truncation = true;
        message.answers = (0..20)
            .map(|i| {
                let target = Name::from_str(&format!("pod-{i}.svc.ns.svc.cluster.local."))
                    .expect("a valid name");
                hickory_resolver::proto::rr::Record::from_rdata(
                    ours.query.name.clone(),
                    5,
                    hickory_resolver::proto::rr::RData::SRV(
                        hickory_resolver::proto::rr::rdata::SRV::new(0, 5, 4370, target),
                    ),
                )
            })
            .collect();
        let whole = message.to_vec().expect("encodes");
        // Cut in the middle of a record, its counts left as they were, as a middlebox would.
        let cut = &whole[..whole.len() / 2];
        assert!(Message::from_vec(cut).is_err());
        assert!(matches!(
            udp_reply(cut, &ours),
            Ok(Some(UdpReply::Truncated))
        ));
        assert!(matches!(
            udp_reply(&whole, &ours),
            Ok(Some(UdpReply::Truncated))
        ));
    }

    #[test]
    fn our_id_on_bytes_that_do_not_decode_is_a_malformed_answer() {
        let ours = request();
        let mut garbage = reply(&ours, ResponseCode::NoError, vec![ours.query.clone()]);
        garbage.truncate(14);
        match matching(&garbage, &ours) {
            Err(Error::Io(message)) => {
                assert!(message.starts_with("malformed answer"), "{message}")
            }
            other => panic!("expected a malformed answer, got {other:?}"),
        }
    }

    #[test]
    fn a_refusal_of_edns_matches_even_without_the_question() {
        let ours = request();
        for code in [ResponseCode::FormErr, ResponseCode::NotImp] {
            let bare = reply(&ours, code, vec![]);
            assert!(matches!(matching(&bare, &ours), Ok(Some(_))), "{code:?}");
        }
        let bare_answer = reply(&ours, ResponseCode::NoError, vec![]);
        assert!(matches!(matching(&bare_answer, &ours), Ok(None)));
    }

    #[test]
    fn socket_errors_become_reasons() {
        let refused = std::io::Error::from(ErrorKind::ConnectionRefused);
        assert_eq!(
            io_error("x", refused),
            Error::Io("connection refused".to_string())
        );
        let timed_out = std::io::Error::from(ErrorKind::TimedOut);
        assert_eq!(io_error("x", timed_out), Error::Timeout);
    }
}
