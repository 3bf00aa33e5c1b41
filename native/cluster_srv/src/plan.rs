//! Where to ask and which names to ask: nameservers as users write them, the servers, search
//! list and ndots of resolv.conf, and the candidate names a relative name expands to.
//!
//! An IPv6 link-local server (`fe80::/10`) is reached only through the interface its zone
//! names (`fe80::1%eth0`): without one, every exchange fails with "Invalid argument". Its zone
//! is kept wherever it is written; a server whose zone cannot be known is refused.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::proto::rr::Name;

use crate::error::Error;

/// The port a nameserver listens on when none is given.
pub const DEFAULT_DNS_PORT: u16 = 53;

/// Parses a nameserver written as `"ip"`, `"ip:port"`, `"[v6]"` or `"[v6]:port"`, where an
/// IPv6 address may carry its zone: `"fe80::1%eth0"`, `"[fe80::1%eth0]:53"`, or an interface
/// index, `"fe80::1%2"`.
///
/// A bare IPv6 address such as `"::1"` is accepted too, with the default port. A link-local
/// address without its zone is refused.
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    with_zone(parse_address(text)?)
}

/// `parse_nameserver`, but a link-local address without a zone is taken with none (scope 0),
/// for `scope_link_local` to complete: for servers from the VM's settings, which drop zones.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if text.is_empty() {
        return Err("it is empty".to_string());
    }
    if !text.starts_with('[') && (text.contains(':') || text.contains('%')) {
        if let Some((ip, scope)) = scoped_ipv6(text)? {
            return Ok(v6_address(ip, scope, DEFAULT_DNS_PORT));
        }
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_DNS_PORT));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| "it opens '[' but never closes it".to_string())?;
        let (ip, scope) =
            scoped_ipv6(inside)?.ok_or_else(|| format!("{inside:?} is not an IPv6 address"))?;
        let port = match after {
            "" => DEFAULT_DNS_PORT,
            _ => match after.strip_prefix(':') {
                Some(port) => parse_port(port)?,
                None => return Err(format!("unexpected {after:?} after ']'")),
            },
        };
        return Ok(v6_address(ip, scope, port));
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

/// Builds a nameserver address from an IP written alone (an IPv6 one with its zone, as in
/// `parse_nameserver`) and a separate port. A link-local address without its zone is refused.
pub fn nameserver_with_port(ip: &str, port: i64) -> Result<SocketAddr, String> {
    with_zone(address_with_port(ip, port)?)
}

/// `nameserver_with_port`, but a link-local address without a zone is taken with none, as in
/// `parse_address`.
pub fn address_with_port(ip: &str, port: i64) -> Result<SocketAddr, String> {
    let port = u16::try_from(port)
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| format!("port {port} is not in 1..65535"))?;
    if let Some((v6, scope)) = scoped_ipv6(ip)? {
        return Ok(v6_address(v6, scope, port));
    }
    let ip = ip
        .parse::<IpAddr>()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    Ok(SocketAddr::new(ip, port))
}

/// An IPv6 address and the index of the interface its zone names (0 for none), or `None` for
/// text that is no IPv6 address. A zone on anything but an IPv6 address is an error.
fn scoped_ipv6(text: &str) -> Result<Option<(Ipv6Addr, u32)>, String> {
    let (ip, zone) = match text.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (text, None),
    };
    let Ok(v6) = ip.parse::<Ipv6Addr>() else {
        return match zone {
            Some(_) => Err(format!(
                "{ip:?} is not an IPv6 address, and only an IPv6 address takes a zone (%...)"
            )),
            None => Ok(None),
        };
    };
    let scope = match zone {
        Some(zone) => interface_index(zone)?,
        None => 0,
    };
    Ok(Some((v6, scope)))
}

/// The index of the interface a zone names: the index itself (`2`) or the interface's name
/// (`eth0`), which must exist.
pub fn interface_index(zone: &str) -> Result<u32, String> {
    if zone.is_empty() {
        return Err("the zone after '%' is empty".to_string());
    }
    if let Ok(index) = zone.parse::<u32>() {
        return match index {
            0 => Err("zone 0 names no interface".to_string()),
            index => Ok(index),
        };
    }
    let name = std::ffi::CString::new(zone)
        .map_err(|_| format!("the zone {zone:?} is not an interface name"))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(format!("no network interface is named {zone:?}")),
        index => Ok(index),
    }
}

fn v6_address(ip: Ipv6Addr, scope: u32, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope))
}

/// Whether `address` is a link-local IPv6 server with no zone: one no exchange can reach.
fn zoneless_link_local(address: &SocketAddr) -> bool {
    matches!(address, SocketAddr::V6(v6) if v6.ip().is_unicast_link_local() && v6.scope_id() == 0)
}

fn with_zone(address: SocketAddr) -> Result<SocketAddr, String> {
    if zoneless_link_local(&address) {
        return Err(needs_zone(&address.ip()));
    }
    Ok(address)
}

fn needs_zone(ip: &IpAddr) -> String {
    format!(
        "{ip} is link-local, reached only through the interface its zone names: write it with \
         its zone, as \"{ip}%eth0\""
    )
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

/// Where resolv.conf says to ask, from its text. hickory reads the file but drops each
/// server's zone, so the zones come from the text's own `nameserver` lines (see
/// `scope_link_local`).
pub fn resolv_conf_plan(text: &str) -> Result<Plan, Error> {
    let (config, opts) =
        hickory_resolver::system_conf::parse_resolv_conf(text).map_err(|error| {
            Error::Io(format!(
                "cannot read the system resolver configuration: {error}"
            ))
        })?;
    let mut plan = system_plan(&config, &opts);
    plan.servers = scope_link_local(plan.servers, &resolv_conf_zones(text))?;
    Ok(plan)
}

/// The zone each IPv6 `nameserver` line of resolv.conf's text writes, by address.
pub fn resolv_conf_zones(text: &str) -> Vec<(Ipv6Addr, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let (ip, zone) = words.next()?.split_once('%')?;
            Some((ip.parse().ok()?, zone.to_string()))
        })
        .collect()
}

/// Gives each link-local server with no zone the zone `zones` give its address (resolv.conf's,
/// for servers from the system, which arrive without), and leaves out those whose zone is still
/// unknown. None left is an error that names them.
pub fn scope_link_local(
    servers: Vec<SocketAddr>,
    zones: &[(Ipv6Addr, String)],
) -> Result<Vec<SocketAddr>, Error> {
    let mut kept = Vec::with_capacity(servers.len());
    let mut unknown = Vec::new();
    for server in servers {
        let scoped = match server {
            SocketAddr::V6(v6) if zoneless_link_local(&server) => zones
                .iter()
                .find(|(ip, _)| ip == v6.ip())
                .and_then(|(_, zone)| interface_index(zone).ok())
                .map(|scope| v6_address(*v6.ip(), scope, v6.port())),
            other => Some(other),
        };
        match scoped {
            Some(server) if !kept.contains(&server) => kept.push(server),
            Some(_) => {}
            None => unknown.push(server.ip()),
        }
    }
    if kept.is_empty() && !unknown.is_empty() {
        let ips: Vec<String> = unknown.iter().map(|ip| ip.to_string()).collect();
        return Err(Error::Io(format!(
            "no usable nameserver: {} is link-local and its zone (the interface it is reached \
             on) is not known; write it with its zone, as nameserver {}%eth0 in resolv.conf \
             or \"{}%eth0\" in :nameservers",
            ips.join(", "),
            ips[0],
            ips[0]
        )));
    }
    Ok(kept)
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

    fn scoped(text: &str) -> SocketAddr {
        text.parse().expect("a valid socket address")
    }

    #[test]
    fn a_link_local_nameserver_keeps_its_zone_as_an_interface_index() {
        // `lo` is index 1 on Linux.
        let lo = interface_index("lo").expect("lo exists");
        let with_lo = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, lo));
        assert_eq!(parse_nameserver("fe80::1%lo"), Ok(with_lo));
        assert_eq!(parse_nameserver("[fe80::1%lo]"), Ok(with_lo));
        assert_eq!(parse_nameserver("fe80::1%1"), Ok(scoped("[fe80::1%1]:53")));
        assert_eq!(
            parse_nameserver("[fe80::1%lo]:5353").map(|a| (a.port(), a.to_string())),
            Ok((5353, format!("[fe80::1%{lo}]:5353")))
        );
        assert_eq!(nameserver_with_port("fe80::1%lo", 53), Ok(with_lo));
        // A zone is harmless on other addresses, and kept.
        assert_eq!(parse_nameserver("fd00::1%1"), Ok(scoped("[fd00::1%1]:53")));
    }

    #[test]
    fn a_link_local_nameserver_without_its_zone_is_refused_with_the_way_to_write_it() {
        for bad in ["fe80::1", "[fe80::1]:53", "[febf::a]"] {
            let message = parse_nameserver(bad).unwrap_err();
            assert!(message.contains("is link-local"), "{bad}: {message}");
            assert!(message.contains("%eth0\""), "{bad}: {message}");
        }
        let message = nameserver_with_port("fe80::1", 53).unwrap_err();
        assert!(message.contains("\"fe80::1%eth0\""), "{message}");
        // As the VM gives them, they are taken, to be completed from resolv.conf.
        assert_eq!(parse_address("fe80::1"), Ok(scoped("[fe80::1]:53")));
        assert_eq!(address_with_port("fe80::1", 53), Ok(scoped("[fe80::1]:53")));
    }

    #[test]
    fn a_zone_must_name_an_interface_of_an_ipv6_address() {
        for (bad, why) in [
            (
                "fe80::1%nosuchif9",
                "no network interface is named \"nosuchif9\"",
            ),
            ("[fe80::1%]:53", "the zone after '%' is empty"),
            ("fe80::1%0", "zone 0 names no interface"),
            ("10.0.0.1%eth0", "only an IPv6 address takes a zone"),
            ("[fe80::1%lo", "never closes"),
        ] {
            let message = parse_nameserver(bad).unwrap_err();
            assert!(message.contains(why), "{bad}: {message}");
        }
        assert!(nameserver_with_port("10.0.0.1%lo", 53).is_err());
    }

    #[test]
    fn resolv_conf_gives_a_link_local_server_its_own_zone() {
        let lo = interface_index("lo").expect("lo exists");
        let plan = resolv_conf_plan(
            "nameserver fe80::1%lo\nnameserver fe80::2%1\nnameserver 10.96.0.10\n",
        )
        .expect("a plan");
        assert_eq!(
            plan.servers,
            [
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, lo)),
                scoped("[fe80::2%1]:53"),
                scoped("10.96.0.10:53")
            ]
        );
    }

    #[test]
    fn a_link_local_server_whose_zone_is_unknown_is_left_out_while_others_remain() {
        let plan = resolv_conf_plan(
            "nameserver fe80::1\nnameserver fe80::2%nosuchif9\nnameserver 10.96.0.10\n",
        )
        .expect("a plan");
        assert_eq!(plan.servers, [scoped("10.96.0.10:53")]);

        let error = resolv_conf_plan("nameserver fe80::1\nnameserver fe80::2%nosuchif9\n")
            .expect_err("no server is left");
        let Error::Io(message) = error else {
            panic!("expected an io error, got {error:?}")
        };
        assert!(
            message.contains("fe80::1, fe80::2 is link-local"),
            "{message}"
        );
        assert!(message.contains("nameserver fe80::1%eth0"), "{message}");
    }

    #[test]
    fn servers_from_the_vm_take_the_zone_resolv_conf_gives_their_address() {
        let zones = resolv_conf_zones(
            "# nameserver fe80::9%lo\nnameserver fe80::1%lo\nnameserver 10.0.0.1\nsearch x\n",
        );
        assert_eq!(zones, [("fe80::1".parse().unwrap(), "lo".to_string())]);
        let lo = interface_index("lo").expect("lo exists");
        let servers = vec![
            scoped("[fe80::1]:53"),
            scoped("[fe80::9]:53"),
            scoped("[::1]:53"),
        ];
        assert_eq!(
            scope_link_local(servers, &zones),
            Ok(vec![
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, lo)),
                scoped("[::1]:53")
            ])
        );
        assert!(scope_link_local(vec![scoped("[fe80::9]:53")], &zones).is_err());
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
