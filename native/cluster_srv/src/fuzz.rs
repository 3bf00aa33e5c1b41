//! Fuzzing of everything that comes from the network: decoding and handling an answer, and
//! turning its targets into node names. Whatever the bytes, nothing panics, and what comes out
//! satisfies the rules.
//!
//! - The proptest suites run with `cargo test`.
//! - `fuzz_for_a_while` (ignored by default) mutates the committed corpus, which holds the
//!   answers of the hostile test server (`test/support/harness/hostile_dns.ex`), for
//!   `FUZZ_SECONDS` (default 60): `make fuzz` runs it in release, and `make test` for a few
//!   seconds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, Query};
use hickory_resolver::proto::rr::{Name, RecordType};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};

use crate::answer::build_records;
use crate::names::{self, Candidate, Naming, Rules, MAX_ATOM_LENGTH, MAX_LABEL_LENGTH};

const DOMAIN: &str = "many.hostile.test";
const MAX_NODES: usize = 50;

fn rules(naming: Naming) -> Rules {
    Rules {
        basename: "app".to_string(),
        domain: Some(DOMAIN.to_string()),
        naming,
        max_nodes: MAX_NODES,
    }
}

/// Decodes `bytes` as an answer and handles it as a lookup would.
fn check_answer(bytes: &[u8]) {
    let Ok(message) = Message::from_vec(bytes) else {
        return;
    };
    let records = build_records(&message.answers, &message.additionals);
    for record in &records {
        assert!(!record.target.is_empty());
        // Odd bytes are escaped: the text is always printable ASCII.
        assert!(
            record.target.bytes().all(|byte| byte.is_ascii_graphic()),
            "{:?}",
            record.target
        );
    }
    drop(message);
    if let (Ok(name), Some(id)) = (
        Name::from_ascii(format!("{DOMAIN}.")),
        bytes.first_chunk::<2>(),
    ) {
        let request = crate::transport::Request {
            id: u16::from_be_bytes(*id),
            query: Query::query(name, RecordType::SRV),
            bytes: Vec::new(),
        };
        if let Ok(Some(message)) = crate::transport::matching(bytes, &request) {
            let _ = crate::answer::refuses_edns(&message);
            let _ = crate::answer::classify(message, RecordType::SRV);
        }
    }
    for naming in [Naming::Hostname, Naming::Ip] {
        check_names(
            records.iter().map(|record| Candidate {
                target: record.target.as_bytes(),
                addresses: &record.addresses,
            }),
            naming,
        );
    }
}

/// Turns targets into names and checks every accepted one.
fn check_names<'a>(candidates: impl IntoIterator<Item = Candidate<'a>>, naming: Naming) {
    let candidates: Vec<Candidate<'a>> = candidates.into_iter().collect();
    let outcome = names::node_names(candidates.iter().copied(), &rules(naming));
    assert!(outcome.names.len() <= MAX_NODES);
    assert!(outcome.names.len() + outcome.rejected.len() <= candidates.len());
    let mut seen = std::collections::HashSet::new();
    for name in &outcome.names {
        assert!(seen.insert(name.clone()), "{name} twice");
        assert!(name.len() <= MAX_ATOM_LENGTH);
        let host = name.strip_prefix("app@").expect("the basename");
        if naming == Naming::Hostname {
            assert!(host.ends_with(&format!(".{DOMAIN}")), "{name}");
            for label in host.split('.') {
                assert!(
                    !label.is_empty() && label.len() <= MAX_LABEL_LENGTH,
                    "{name}"
                );
                assert!(
                    label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{name}"
                );
            }
        } else {
            assert!(host.parse::<std::net::IpAddr>().is_ok(), "{name}");
        }
    }
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            std::fs::read(entry.path()).ok().map(|bytes| (name, bytes))
        })
        .collect();
    files.sort();
    files
}

/// One random change to `bytes`: a flipped bit, a new byte, a cut, an insertion or a copy.
fn mutate(bytes: &mut Vec<u8>, rng: &mut TestRng) {
    if bytes.is_empty() {
        bytes.push(rng.random());
        return;
    }
    let at = rng.random_range(0..bytes.len());
    match rng.random_range(0..5) {
        0 => bytes[at] ^= 1 << rng.random_range(0..8),
        1 => bytes[at] = rng.random(),
        2 => bytes.truncate(at),
        3 => bytes.insert(at, rng.random()),
        _ => {
            let from = rng.random_range(0..bytes.len());
            let length = rng.random_range(0..16).min(bytes.len() - from);
            let chunk: Vec<u8> = bytes[from..from + length].to_vec();
            bytes.splice(at..at, chunk);
        }
    }
}

#[test]
fn the_corpus_holds_the_hostile_cases_and_each_is_handled() {
    let corpus = corpus();
    let names: Vec<&str> = corpus.iter().map(|(name, _)| name.as_str()).collect();
    for case in [
        "many.bin",
        "flood.bin",
        "longname.bin",
        "longlabel.bin",
        "garbage.bin",
        "loop.bin",
    ] {
        assert!(names.contains(&case), "the corpus lacks {case}: {names:?}");
    }
    for (name, bytes) in &corpus {
        check_answer(bytes);
        let decoded = Message::from_vec(bytes);
        match name.as_str() {
            "longname.bin" | "longlabel.bin" | "garbage.bin" | "loop.bin" => {
                assert!(decoded.is_err(), "{name} should not decode")
            }
            "many.bin" => {
                let message = decoded.expect("many.bin is well-formed");
                let records = build_records(&message.answers, &message.additionals);
                let outcome = names::node_names(
                    records.iter().map(|record| Candidate {
                        target: record.target.as_bytes(),
                        addresses: &record.addresses,
                    }),
                    &rules(Naming::Hostname),
                );
                // 20 valid pods, each listed twice; everything else refused.
                assert_eq!(outcome.names.len(), 20);
                assert!(outcome.rejected.len() > 1_000);
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1_500)) {
        check_answer(&bytes);
    }

    #[test]
    fn mutated_answers_are_never_a_panic(seed in any::<[u8; 32]>(), rounds in 1usize..24) {
        let corpus = corpus();
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        let (_, original) = &corpus[rng.random_range(0..corpus.len())];
        let mut bytes = original.clone();
        for _ in 0..rounds {
            mutate(&mut bytes, &mut rng);
        }
        check_answer(&bytes);
    }

    #[test]
    fn arbitrary_targets_give_only_valid_names(
        targets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..90), 0..120)
    ) {
        check_names(targets.iter().map(|t| Candidate { target: t, addresses: &[] }), Naming::Hostname);
    }

    #[test]
    fn target_like_text_gives_only_valid_names(
        labels in proptest::collection::vec("[a-zA-Z0-9_@ .-]{0,70}", 0..60)
    ) {
        let targets: Vec<String> = labels.iter().map(|label| format!("{label}.{DOMAIN}")).collect();
        check_names(targets.iter().map(|t| Candidate { target: t.as_bytes(), addresses: &[] }), Naming::Hostname);
    }
}

/// `make fuzz`: mutates the corpus (and random bytes) for FUZZ_SECONDS, checking every result.
#[test]
#[ignore]
fn fuzz_for_a_while() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let corpus = corpus();
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map(|since| since.as_nanos() as u64).unwrap_or(0) ^ u64::from(std::process::id())
        });
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runs: u64 = 0;
    while Instant::now() < deadline {
        let mut bytes = if rng.random_range(0..10) == 0 {
            (0..rng.random_range(0..1_500))
                .map(|_| rng.random())
                .collect()
        } else {
            corpus[rng.random_range(0..corpus.len())].1.clone()
        };
        for _ in 0..rng.random_range(1..32) {
            mutate(&mut bytes, &mut rng);
        }
        check_answer(&bytes);
        runs += 1;
    }
    println!("fuzz: {runs} mutated answers in {seconds} s (FUZZ_SEED={seed}), no failure");
}
