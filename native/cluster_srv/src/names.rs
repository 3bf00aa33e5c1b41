//! From SRV targets to node names: normalisation, validation, de-duplication and the cap.
//!
//! Nothing here trusts DNS: a target becomes a node name only when it is a valid host name, lies
//! where the rules say it must, and fits in an atom. Only the names accepted here ever become
//! atoms, and at most `max_nodes` of them per answer.

use std::net::IpAddr;

use hickory_resolver::proto::rr::Name;

/// The longest atom the VM accepts, in characters; node names are atoms.
pub const MAX_ATOM_LENGTH: usize = 255;
/// The longest host name, in octets of its text form.
pub const MAX_HOSTNAME_LENGTH: usize = 253;
/// The longest label of a host name.
pub const MAX_LABEL_LENGTH: usize = 63;

/// The target in its canonical text form: lowercase, with no trailing dot.
///
/// Bytes that cannot stand in a host name as they are (a dot inside a label, a backslash, a
/// space, a control or non-ASCII byte) are written as RFC 1035 decimal escapes such as `\032`,
/// so the text stays printable and unambiguous.
pub fn normalize_target(target: &Name) -> String {
    let mut text = String::with_capacity(target.len());
    for (index, label) in target.iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        for &byte in label {
            let byte = byte.to_ascii_lowercase();
            if byte.is_ascii_graphic() && byte != b'.' && byte != b'\\' {
                text.push(char::from(byte));
            } else {
                text.push_str(&format!("\\{byte:03}"));
            }
        }
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

/// How node names are formed from targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `app@target`, for nodes named after their host name.
    Hostname,
    /// `app@address`, for nodes named after their IP (`app@$(POD_IP)`).
    Ip,
}

/// Why a target gave no node name. The set is closed, so reasons are safe to make atoms of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The root target `.`, which RFC 2782 uses to say "no service here".
    NoService,
    /// Not a host name: a byte outside `[a-z0-9-]`, an empty label, a label over 63 octets, or
    /// a label that starts or ends with a hyphen.
    InvalidHostname,
    /// Over 253 octets, or the node name would be over 255 characters.
    TooLong,
    /// Not under the service's domain.
    OutsideDomain,
    /// The service's own name: the service is not headless, so DNS lists it, not its pods.
    ServiceItself,
    /// `Naming::Ip`, and the target came with no usable address (none, or only unspecified
    /// ones). A target whose address lookup failed is not given here: see
    /// `resolver::Discovery::unresolved`.
    NoAddress,
    /// Valid, but past `max_nodes` distinct names in this answer.
    OverMaxNodes,
}

impl Rejection {
    /// The reason as the snake_case word Elixir sees.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NoService => "no_service",
            Rejection::InvalidHostname => "invalid_hostname",
            Rejection::TooLong => "too_long",
            Rejection::OutsideDomain => "outside_domain",
            Rejection::ServiceItself => "service_itself",
            Rejection::NoAddress => "no_address",
            Rejection::OverMaxNodes => "over_max_nodes",
        }
    }
}

/// What a node name must satisfy.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The node's base name, the part before `@`.
    pub basename: String,
    /// When set, every target must be a host strictly under this domain (lowercase, no dot at
    /// the end), as pods are under their headless service.
    pub domain: Option<String>,
    pub naming: Naming,
    pub max_nodes: usize,
}

/// One SRV target and the addresses the answer gave for it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub target: &'a [u8],
    pub addresses: &'a [IpAddr],
}

/// The accepted node names, in answer order, and each rejected target with its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub names: Vec<String>,
    pub rejected: Vec<(String, Rejection)>,
    /// With `Naming::Ip` only: each accepted target and the index of its name in `names`,
    /// since the name (an address) cannot be told from the target. The strategy keeps a node
    /// whose target is listed but whose address could not be looked up by it.
    pub targets: Vec<(String, usize)>,
}

/// Turns targets into node names under `rules`.
pub fn node_names<'a>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    rules: &Rules,
) -> Outcome {
    let candidates: Vec<Candidate<'a>> = candidates.into_iter().collect();
    let mut rejected = Vec::new();
    let mut accepted: Vec<(usize, String)> = Vec::with_capacity(candidates.len());
    let mut named_targets: Vec<(String, String)> = Vec::new();
    // One buffer for every target's canonical form: most targets need no allocation of their own.
    let mut target = String::new();
    for (order, candidate) in candidates.iter().enumerate() {
        canonical_into(candidate.target, &mut target);
        // Test builds only: proves that a panic in name parsing comes back as an error.
        #[cfg(feature = "test-panic")]
        if target == "panic.test-panic.invalid" {
            panic!("test panic in name parsing");
        }
        match node_name(&target, candidate.addresses, rules) {
            Ok(name) => {
                if rules.naming == Naming::Ip {
                    named_targets.push((target.clone(), name.clone()));
                }
                accepted.push((order, name))
            }
            Err(reason) => rejected.push((target.clone(), reason)),
        }
    }
    // CoreDNS sends one record per port, so the same name comes again: keep its first place.
    accepted.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    accepted.dedup_by(|later, first| later.1 == first.1);
    accepted.sort_unstable_by_key(|(order, _)| *order);

    let mut names = Vec::with_capacity(accepted.len().min(rules.max_nodes));
    for (order, name) in accepted {
        if names.len() < rules.max_nodes {
            names.push(name);
        } else {
            canonical_into(candidates[order].target, &mut target);
            rejected.push((target.clone(), Rejection::OverMaxNodes));
        }
    }
    let targets = target_indexes(named_targets, &names);
    Outcome {
        names,
        rejected,
        targets,
    }
}

/// Each accepted target, once, with the index of its name among `names` (the names past
/// `max_nodes` have none, and their targets are left out).
fn target_indexes(named_targets: Vec<(String, String)>, names: &[String]) -> Vec<(String, usize)> {
    if named_targets.is_empty() {
        return Vec::new();
    }
    let index: std::collections::HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let mut seen = std::collections::HashSet::new();
    named_targets
        .into_iter()
        .filter_map(|(target, name)| {
            let i = *index.get(name.as_str())?;
            seen.insert(target.clone()).then_some((target, i))
        })
        .collect()
}

/// Writes `target` without one trailing dot into `out`, lowercase when it is ASCII. A target
/// that is not ASCII is no host name; it is kept as it came (invalid UTF-8 lossily), for the
/// rejection to show, and never lowercased: Unicode case mapping can turn a non-ASCII letter
/// into an ASCII one (KELVIN SIGN into `k`).
fn canonical_into(target: &[u8], out: &mut String) {
    out.clear();
    let trimmed = target.strip_suffix(b".").unwrap_or(target);
    if trimmed.is_ascii() {
        out.extend(
            trimmed
                .iter()
                .map(|byte| char::from(byte.to_ascii_lowercase())),
        );
    } else {
        out.push_str(&String::from_utf8_lossy(trimmed));
    }
}

/// Whether `target` would give a node name under `rules`, addresses aside: a valid host name
/// where the rules want it.
pub fn target_accepted(target: &str, rules: &Rules) -> bool {
    let mut canonical = String::new();
    canonical_into(target.as_bytes(), &mut canonical);
    check_target(&canonical, rules).is_ok()
}

fn node_name(target: &str, addresses: &[IpAddr], rules: &Rules) -> Result<String, Rejection> {
    let host = check_target(target, rules)?;
    let ip;
    let host = match rules.naming {
        Naming::Hostname => host,
        Naming::Ip => {
            ip = address_host(addresses).ok_or(Rejection::NoAddress)?;
            ip.as_str()
        }
    };
    let length = rules.basename.len() + 1 + host.len();
    if length > MAX_ATOM_LENGTH {
        return Err(Rejection::TooLong);
    }
    let mut name = String::with_capacity(length);
    name.push_str(&rules.basename);
    name.push('@');
    name.push_str(host);
    Ok(name)
}

fn check_target<'t>(target: &'t str, rules: &Rules) -> Result<&'t str, Rejection> {
    if target.is_empty() {
        return Err(Rejection::NoService);
    }
    if target.len() > MAX_HOSTNAME_LENGTH {
        return Err(Rejection::TooLong);
    }
    if !is_hostname(target) {
        return Err(Rejection::InvalidHostname);
    }
    if let Some(domain) = &rules.domain {
        if target == domain {
            return Err(Rejection::ServiceItself);
        }
        let under = target
            .strip_suffix(domain.as_str())
            .is_some_and(|head| head.len() > 1 && head.ends_with('.'));
        if !under {
            return Err(Rejection::OutsideDomain);
        }
    }
    Ok(target)
}

/// RFC 1123 labels: `[a-z0-9-]`, 1 to 63 octets, neither starting nor ending with a hyphen.
/// The text is already lowercase.
fn is_hostname(text: &str) -> bool {
    text.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LENGTH
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
    })
}

/// The address a node named after its IP would use: the first IPv4, else the first IPv6. An
/// unspecified address (0.0.0.0, ::) is no node's: a connect to it reaches this host itself.
fn address_host(addresses: &[IpAddr]) -> Option<String> {
    let mut usable = addresses.iter().filter(|ip| !ip.is_unspecified());
    let first = usable.clone().next();
    usable
        .find(|ip| ip.is_ipv4())
        .or(first)
        .map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    const DOMAIN: &str = "myapp-headless.default.svc.cluster.local";

    fn rules() -> Rules {
        Rules {
            basename: "myapp".to_string(),
            domain: Some(DOMAIN.to_string()),
            naming: Naming::Hostname,
            max_nodes: 1_000,
        }
    }

    fn run(targets: &[&str], rules: &Rules) -> Outcome {
        node_names(
            targets.iter().map(|target| Candidate {
                target: target.as_bytes(),
                addresses: &[],
            }),
            rules,
        )
    }

    #[test]
    fn targets_are_lowercased_without_the_trailing_dot() {
        let name = Name::from_str("MyApp-0.MyApp-Headless.Default.svc.cluster.local.").unwrap();
        assert_eq!(
            normalize_target(&name),
            "myapp-0.myapp-headless.default.svc.cluster.local"
        );
    }

    #[test]
    fn with_ip_naming_each_accepted_target_gives_its_node() {
        let mut ip_rules = rules();
        ip_rules.naming = Naming::Ip;
        ip_rules.max_nodes = 2;
        let first = [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))];
        let second = [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))];
        let third = [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))];
        let targets = [
            format!("a.{DOMAIN}"),
            format!("a.{DOMAIN}"),
            format!("b.{DOMAIN}"),
            format!("c.{DOMAIN}"),
            format!("bad_.{DOMAIN}"),
        ];
        let addresses: [&[IpAddr]; 5] = [&first, &first, &second, &third, &first];
        let outcome = node_names(
            targets
                .iter()
                .zip(addresses)
                .map(|(target, addresses)| Candidate {
                    target: target.as_bytes(),
                    addresses,
                }),
            &ip_rules,
        );
        assert_eq!(outcome.names, ["myapp@10.0.0.1", "myapp@10.0.0.2"]);
        // Once per target, only those whose node was taken (c is past max_nodes).
        assert_eq!(
            outcome.targets,
            [(format!("a.{DOMAIN}"), 0), (format!("b.{DOMAIN}"), 1)]
        );
        // With host names the node tells its target: nothing more is kept.
        assert!(run(&[&format!("a.{DOMAIN}")], &rules()).targets.is_empty());
    }

    #[test]
    fn the_root_stays_a_dot() {
        assert_eq!(normalize_target(&Name::root()), ".");
    }

    #[test]
    fn odd_bytes_are_escaped_not_dropped() {
        let name = Name::from_labels(vec![&b"a b"[..], &b"example"[..]]).unwrap();
        assert_eq!(normalize_target(&name), "a\\032b.example");
        let name = Name::from_labels(vec![&b"a.b\\\xc3"[..], &b"x"[..]]).unwrap();
        assert_eq!(normalize_target(&name), "a\\046b\\092\\195.x");
    }

    #[test]
    fn a_pod_target_becomes_app_at_target() {
        let outcome = run(
            &["MyApp-0.MyApp-Headless.default.svc.cluster.local."],
            &rules(),
        );
        assert_eq!(outcome.names, [format!("myapp@myapp-0.{DOMAIN}")]);
        assert!(outcome.rejected.is_empty());
    }

    #[test]
    fn duplicates_from_several_ports_are_kept_once() {
        let target = format!("myapp-0.{DOMAIN}");
        let upper = target.to_uppercase();
        let outcome = run(&[&target, &target, &upper, &format!("{target}.")], &rules());
        assert_eq!(outcome.names.len(), 1);
        assert!(outcome.rejected.is_empty());
    }

    #[test]
    fn bytes_outside_letters_digits_and_hyphen_are_refused() {
        for bad in [
            "my_app-0",
            "my app",
            "a@b",
            "nul\0",
            "caf\u{e9}",
            "a\\032b",
            "*",
        ] {
            let outcome = run(&[&format!("{bad}.{DOMAIN}")], &rules());
            assert_eq!(outcome.names, Vec::<String>::new(), "{bad:?} was accepted");
            assert_eq!(outcome.rejected[0].1, Rejection::InvalidHostname, "{bad:?}");
        }
    }

    #[test]
    fn a_label_may_not_start_or_end_with_a_hyphen() {
        for bad in ["-", "-a", "a-", "-a-"] {
            let outcome = run(&[&format!("{bad}.{DOMAIN}")], &rules());
            assert_eq!(outcome.rejected[0].1, Rejection::InvalidHostname, "{bad:?}");
        }
        assert_eq!(run(&[&format!("a--b.{DOMAIN}")], &rules()).names.len(), 1);
    }

    #[test]
    fn non_ascii_never_becomes_ascii_by_lowercasing() {
        // KELVIN SIGN lowercases to an ASCII `k`, which would pass as a valid label.
        let outcome = run(&[&format!("\u{212A}.{DOMAIN}")], &rules());
        assert_eq!(outcome.names, Vec::<String>::new());
        assert_eq!(
            outcome.rejected[0],
            (format!("\u{212A}.{DOMAIN}"), Rejection::InvalidHostname)
        );
    }

    #[test]
    fn target_accepted_applies_the_rules_without_addresses() {
        let mut ip_rules = rules();
        ip_rules.naming = Naming::Ip;
        assert!(target_accepted(&format!("Pod-0.{DOMAIN}."), &ip_rules));
        assert!(!target_accepted("evil.example.com", &ip_rules));
        assert!(!target_accepted(&format!("a_b.{DOMAIN}"), &ip_rules));
    }

    #[test]
    fn label_and_name_lengths_are_bounded() {
        let label_64 = "a".repeat(64);
        let outcome = run(&[&format!("{label_64}.{DOMAIN}")], &rules());
        assert_eq!(outcome.rejected[0].1, Rejection::InvalidHostname);

        let label_63 = "a".repeat(63);
        let outcome = run(&[&format!("{label_63}.{DOMAIN}")], &rules());
        assert_eq!(outcome.names.len(), 1);

        let long = format!("{0}.{0}.{0}.{0}.{DOMAIN}", "b".repeat(63));
        assert!(long.len() > MAX_HOSTNAME_LENGTH);
        assert_eq!(run(&[&long], &rules()).rejected[0].1, Rejection::TooLong);
    }

    #[test]
    fn a_node_name_longer_than_an_atom_is_refused() {
        let mut rules = rules();
        rules.domain = None;
        rules.basename = "n".repeat(40);
        let host = format!(
            "{}.{}.{}.{}",
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(60),
            "d".repeat(60)
        );
        assert!(host.len() <= MAX_HOSTNAME_LENGTH);
        assert_eq!(run(&[&host], &rules).rejected[0].1, Rejection::TooLong);
    }

    #[test]
    fn targets_must_lie_strictly_under_the_service_domain() {
        let outcome = run(
            &[
                "myapp-0.other.default.svc.cluster.local",
                "evil.example.com",
                "xmyapp-headless.default.svc.cluster.local",
                DOMAIN,
            ],
            &rules(),
        );
        let reasons: Vec<Rejection> = outcome.rejected.iter().map(|(_, reason)| *reason).collect();
        assert_eq!(
            reasons,
            [
                Rejection::OutsideDomain,
                Rejection::OutsideDomain,
                Rejection::OutsideDomain,
                Rejection::ServiceItself
            ]
        );
    }

    #[test]
    fn without_a_domain_any_valid_host_is_accepted() {
        let mut rules = rules();
        rules.domain = None;
        let outcome = run(&["node-1.service.consul.", "host"], &rules);
        assert_eq!(outcome.names, ["myapp@node-1.service.consul", "myapp@host"]);
    }

    #[test]
    fn the_root_target_means_no_service() {
        let outcome = run(&["."], &rules());
        assert_eq!(outcome.rejected, [(String::new(), Rejection::NoService)]);
    }

    #[test]
    fn at_most_max_nodes_names_are_accepted() {
        let mut rules = rules();
        rules.max_nodes = 2;
        let targets: Vec<String> = (0..5).map(|i| format!("myapp-{i}.{DOMAIN}")).collect();
        let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
        let outcome = run(&refs, &rules);
        assert_eq!(outcome.names.len(), 2);
        assert_eq!(outcome.rejected.len(), 3);
        assert!(outcome
            .rejected
            .iter()
            .all(|(_, reason)| *reason == Rejection::OverMaxNodes));
    }

    #[test]
    fn ip_naming_skips_unspecified_addresses() {
        let mut rules = rules();
        rules.naming = Naming::Ip;
        let only = [IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
        let target = "myapp-0.myapp-headless.default.svc.cluster.local";
        assert_eq!(node_name(target, &only, &rules), Err(Rejection::NoAddress));
        let mixed = [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6("fd00::b".parse().unwrap()),
        ];
        assert_eq!(
            node_name(target, &mixed, &rules),
            Ok("myapp@fd00::b".to_string())
        );
    }

    #[test]
    fn ip_naming_prefers_ipv4_and_needs_an_address() {
        let mut rules = rules();
        rules.naming = Naming::Ip;
        let both = [
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 1, 0, 95)),
        ];
        let v6 = [IpAddr::V6("fd00::a".parse().unwrap())];
        let a = format!("a.{DOMAIN}");
        let b = format!("b.{DOMAIN}");
        let c = format!("c.{DOMAIN}");
        let outcome = node_names(
            [
                Candidate {
                    target: a.as_bytes(),
                    addresses: &both,
                },
                Candidate {
                    target: b.as_bytes(),
                    addresses: &v6,
                },
                Candidate {
                    target: c.as_bytes(),
                    addresses: &[],
                },
            ],
            &rules,
        );
        assert_eq!(outcome.names, ["myapp@10.1.0.95", "myapp@fd00::a"]);
        assert_eq!(outcome.rejected, [(c, Rejection::NoAddress)]);
    }

    #[test]
    fn ip_naming_still_checks_the_target() {
        let mut rules = rules();
        rules.naming = Naming::Ip;
        let ip = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let outcome = node_names(
            [Candidate {
                target: b"evil.example.com",
                addresses: &ip,
            }],
            &rules,
        );
        assert_eq!(outcome.rejected[0].1, Rejection::OutsideDomain);
    }

    #[test]
    fn invalid_utf8_is_refused_and_reported_readably() {
        let outcome = node_names(
            [Candidate {
                target: b"\xff\xfe.myapp-headless.default.svc.cluster.local",
                addresses: &[],
            }],
            &rules(),
        );
        assert_eq!(outcome.rejected[0].1, Rejection::InvalidHostname);
        assert!(outcome.rejected[0].0.starts_with('\u{fffd}'));
    }
}
