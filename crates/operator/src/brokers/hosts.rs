//! The operator-wide allow-list of broker hosts (`--allowed-broker-hosts`): whoever may write a
//! ScalerConfig can otherwise make the operator connect to any host it can reach (and learn,
//! from `BrokerReachable`, whether a port answers). Empty allows every host, as before.

use std::fmt;
use std::net::IpAddr;

/// One entry of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A host name (case-insensitive) or an IP address, exactly.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself).
    Suffix(String),
    /// `10.0.0.0/8`, `fd00::/8`: any IP address in the network.
    Network(IpAddr, u8),
}

/// Parsed `--allowed-broker-hosts`: comma-separated host names, `*.domain` wildcards and IP
/// networks (`10.1.0.0/16`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    entries: Vec<Entry>,
}

impl AllowedHosts {
    /// Parses the flag's value; an empty value allows every host.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for raw in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let entry = if let Some(domain) = raw.strip_prefix("*.") {
                if domain.is_empty() || domain.contains(['*', '/']) {
                    return Err(format!("{raw:?}: a wildcard is `*.` followed by a domain"));
                }
                Entry::Suffix(format!(".{}", domain.to_ascii_lowercase()))
            } else if let Some((ip, bits)) = raw.split_once('/') {
                let ip: IpAddr = ip.parse().map_err(|_| {
                    format!("{raw:?}: a network is an IP address, `/` and a prefix length")
                })?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits
                    .parse()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{raw:?}: the prefix length must be 0 to {max}"))?;
                Entry::Network(ip, bits)
            } else if raw.contains(['*', ' ', ':']) && raw.parse::<IpAddr>().is_err() {
                return Err(format!(
                    "{raw:?}: expected a host name, `*.domain` or an IP network such as 10.0.0.0/8 (no port)"
                ));
            } else {
                Entry::Exact(raw.to_ascii_lowercase())
            };
            entries.push(entry);
        }
        Ok(Self { entries })
    }

    /// Whether the list restricts anything.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `host` (a name or an IP address, as a broker configuration gives it) may be
    /// connected to.
    pub fn allows(&self, host: &str) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|e| match e {
            Entry::Exact(h) => *h == host || (ip.is_some() && h.parse::<IpAddr>().ok() == ip),
            Entry::Suffix(s) => ip.is_none() && host.ends_with(s.as_str()),
            Entry::Network(net, bits) => ip.is_some_and(|ip| in_network(ip, *net, *bits)),
        })
    }
}

impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Exact(h) => h.clone(),
                Entry::Suffix(s) => format!("*{s}"),
                Entry::Network(ip, bits) => format!("{ip}/{bits}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_allowed_by_name_wildcard_and_network() {
        let list =
            AllowedHosts::parse("redis.team-a.svc, *.brokers.example.com,10.8.0.0/16,fd00::/8")
                .expect("valid");
        let cases = [
            ("redis.team-a.svc", true),
            ("REDIS.team-a.svc", true),
            ("redis.team-b.svc", false),
            ("mq.brokers.example.com", true),
            ("brokers.example.com", false),
            ("evil-brokers.example.com", false),
            ("10.8.3.4", true),
            ("10.9.0.1", false),
            ("[fd00::1]", true),
            ("169.254.169.254", false),
        ];
        for (host, allowed) in cases {
            assert_eq!(list.allows(host), allowed, "{host}");
        }
        assert!(AllowedHosts::parse("").expect("empty").allows("anything"));
        assert_eq!(
            list.to_string(),
            "redis.team-a.svc,*.brokers.example.com,10.8.0.0/16,fd00::/8"
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry() {
        for bad in ["*.", "10.0.0.0/33", "x/8", "redis:6379", "a*b"] {
            let err = AllowedHosts::parse(bad).expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }
}
