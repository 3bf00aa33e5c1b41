//! Where to ask and which names to ask: nameservers as users write them, the servers, search
//! list and ndots of resolv.conf, and the candidate names a relative name expands to.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::proto::rr::Name;

use crate::error::Error;

/// The port a nameserver listens on when none is given.
pub const DEFAULT_DNS_PORT: u16 = 53;

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

/// Where to ask, and how relative names are completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub servers: Vec<SocketAddr>,
    pub search: Vec<Name>,
    pub ndots: usize,
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

pub(crate) fn parse_query_name(name: &str) -> Result<Name, Error> {
    let invalid = || Error::InvalidName(name.to_string());
    if name.is_empty() || name.len() > 254 || !name.is_ascii() {
        return Err(invalid());
    }
    Name::from_ascii(name).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn name(text: &str) -> Name {
        Name::from_str(text).expect("test names are valid")
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
