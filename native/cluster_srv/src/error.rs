//! The errors a lookup can end in, and how each becomes an Erlang term.

#[cfg(feature = "nif")]
mod atoms {
    rustler::atoms! {
        nxdomain,
        no_records,
        timeout,
        servfail,
        refused,
        answer_too_large,
        invalid_name,
        io,
        panic,
    }
}

/// Why a lookup gave no records. Each variant maps to one documented reason term.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The name does not exist (NXDOMAIN).
    #[error("the name does not exist")]
    NxDomain,
    /// The name exists but holds no SRV records.
    #[error("the name has no SRV records")]
    NoRecords,
    /// No server answered within the time allowed.
    #[error("no answer within the time allowed")]
    Timeout,
    /// The server answered SERVFAIL, as CoreDNS does until it has synced.
    #[error("the server answered SERVFAIL")]
    ServFail,
    /// The server refused the query.
    #[error("the server refused the query")]
    Refused,
    /// The answer does not fit in one DNS message (65,535 bytes): over TCP, the server set TC
    /// and sent part of the records or none.
    #[error("the answer does not fit in one DNS message")]
    AnswerTooLarge,
    /// The query name is not a valid DNS name.
    #[error("not a valid DNS name: {0:?}")]
    InvalidName(String),
    /// Any other failure: network, protocol, or an unusual response code.
    #[error("{0}")]
    Io(String),
    /// A bug on our side was caught before it could cross into the VM.
    #[error("internal panic: {0}")]
    Panic(String),
}

#[cfg(feature = "nif")]
impl rustler::Encoder for Error {
    fn encode<'a>(&self, env: rustler::Env<'a>) -> rustler::Term<'a> {
        match self {
            Error::NxDomain => atoms::nxdomain().encode(env),
            Error::NoRecords => atoms::no_records().encode(env),
            Error::Timeout => atoms::timeout().encode(env),
            Error::ServFail => atoms::servfail().encode(env),
            Error::Refused => atoms::refused().encode(env),
            Error::AnswerTooLarge => atoms::answer_too_large().encode(env),
            Error::InvalidName(name) => (atoms::invalid_name(), name).encode(env),
            Error::Io(message) => (atoms::io(), message).encode(env),
            Error::Panic(message) => (atoms::panic(), message).encode(env),
        }
    }
}

/// Turns the payload of a caught panic into a message.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_message_reads_str_and_string_payloads() {
        let caught = std::panic::catch_unwind(|| panic!("static text")).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "static text");

        let caught = std::panic::catch_unwind(|| panic!("formatted {}", 42)).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "formatted 42");

        let caught = std::panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(
            panic_message(caught.as_ref()),
            "panic with a non-string payload"
        );
    }
}
