//! What an answer means: whether it settles the question, which failure to report over a
//! search list, and the SRV records it holds, with their targets' addresses.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::{RData, Record, RecordType};

use crate::error::Error;
use crate::names;

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

/// What a whole answer means: one that came over UDP without TC, or over TCP (a truncated UDP
/// answer is asked again over TCP, so it never comes here).
pub(crate) fn classify(message: Message, record_type: RecordType) -> Outcome {
    match message.metadata.response_code {
        // TC on a TCP answer: the set does not fit in one message, and what came (part of the
        // records, or none) is neither the list nor "no records". Every server holds the same set.
        ResponseCode::NoError if message.metadata.truncation => {
            Outcome::Final(Error::AnswerTooLarge)
        }
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
pub(crate) fn worse(previous: Option<Error>, next: Error) -> Error {
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
    use hickory_resolver::proto::rr::Name;
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
    fn a_truncated_answer_is_too_large_whether_it_holds_part_of_the_records_or_none() {
        let owner = "svc.ns.svc.cluster.local.";
        let part = vec![srv(owner, 0, 1, 4370, "a.svc.ns.svc.cluster.local.")];
        for answers in [vec![], part] {
            let mut message = answer(ResponseCode::NoError, answers);
            message.metadata.truncation = true;
            assert_eq!(
                reason(classify(message, RecordType::SRV)),
                ("final", Some(Error::AnswerTooLarge))
            );
        }
        // Another response code keeps its own meaning.
        let mut message = answer(ResponseCode::NXDomain, vec![]);
        message.metadata.truncation = true;
        assert_eq!(
            reason(classify(message, RecordType::SRV)),
            ("final", Some(Error::NxDomain))
        );
        assert_eq!(
            worse(Some(Error::NxDomain), Error::AnswerTooLarge),
            Error::AnswerTooLarge
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
}
