//! The address an agent advertises for its node (`RegisterRequest.advertise_addr`): checked
//! the same way by the agent at start and by the scheduler at registration, because it ends
//! up in other replicas' environments and hostfiles.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Longest accepted advertise address: a full DNS name (253) and `:65535`.
pub const MAX_ADVERTISE_ADDR_LEN: usize = 253 + 6;

/// A checked advertise address: the host replicas connect to, and the port if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertiseAddr {
    /// An IP address (IPv6 without brackets) or a DNS name.
    pub host: String,
    pub port: Option<u16>,
}

impl fmt::Display for AdvertiseAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracketed = self.host.contains(':');
        match (self.port, bracketed) {
            (None, _) => f.write_str(&self.host),
            (Some(port), true) => write!(f, "[{}]:{port}", self.host),
            (Some(port), false) => write!(f, "{}:{port}", self.host),
        }
    }
}

/// Parses `host`, `host:port`, `IP`, `IPv4:port` or `[IPv6]:port`. The error says what is
/// wrong, without the field name, so each caller can name its own flag or field.
pub fn parse_advertise_addr(text: &str) -> Result<AdvertiseAddr, String> {
    if text.len() > MAX_ADVERTISE_ADDR_LEN {
        return Err(format!(
            "is {} bytes; an address has at most {MAX_ADVERTISE_ADDR_LEN}",
            text.len()
        ));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(AdvertiseAddr {
            host: ip.to_canonical().to_string(),
            port: None,
        });
    }
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Ok(AdvertiseAddr {
            host: sock.ip().to_canonical().to_string(),
            port: Some(nonzero_port(sock.port())?),
        });
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<IpAddr>()
    {
        return Ok(AdvertiseAddr {
            host: ip.to_canonical().to_string(),
            port: None,
        });
    }
    let (host, port) = match text.split_once(':') {
        None => (text, None),
        Some((host, port)) => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{port:?} is not a port number (1-65535)"))?;
            (host, Some(nonzero_port(port)?))
        }
    };
    check_dns_name(host)?;
    Ok(AdvertiseAddr {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn nonzero_port(port: u16) -> Result<u16, String> {
    if port == 0 {
        Err("port 0 is not a port peers can connect to".to_string())
    } else {
        Ok(port)
    }
}

/// A host name as DNS allows it: dot-separated labels of letters, digits and `-`, none
/// starting or ending with `-`, each at most 63 bytes, all at most 253.
fn check_dns_name(host: &str) -> Result<(), String> {
    const HINT: &str = "expected a host name or IP address, optionally with :port";
    if host.is_empty() {
        return Err(format!("the host is empty; {HINT}"));
    }
    if host.len() > 253 {
        return Err(format!("the host is {} bytes; at most 253", host.len()));
    }
    for label in host.strip_suffix('.').unwrap_or(host).split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!("{host:?} is not a valid host name; {HINT}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_port(text: &str) -> (String, Option<u16>) {
        let a = parse_advertise_addr(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (a.host, a.port)
    }

    #[test]
    fn hosts_ips_and_ports_are_accepted() {
        assert_eq!(host_port("10.0.0.7"), ("10.0.0.7".into(), None));
        assert_eq!(
            host_port("10.0.0.7:29400"),
            ("10.0.0.7".into(), Some(29400))
        );
        assert_eq!(host_port("fd00::7"), ("fd00::7".into(), None));
        assert_eq!(host_port("[fd00::7]"), ("fd00::7".into(), None));
        assert_eq!(host_port("[fd00::7]:80"), ("fd00::7".into(), Some(80)));
        assert_eq!(host_port("::ffff:10.0.0.7"), ("10.0.0.7".into(), None));
        assert_eq!(
            host_port("GPU-07.dc-a.example."),
            ("gpu-07.dc-a.example.".into(), None)
        );
        assert_eq!(host_port("node-7:8080"), ("node-7".into(), Some(8080)));
        let a = parse_advertise_addr("[fd00::7]:80").expect("valid");
        assert_eq!(a.to_string(), "[fd00::7]:80");
    }

    #[test]
    fn bad_addresses_say_why() {
        for (text, why) in [
            ("", "the host is empty"),
            ("node 7", "not a valid host name"),
            ("-node", "not a valid host name"),
            ("a..b", "not a valid host name"),
            ("node:http", "not a port number"),
            ("node:0", "port 0"),
            ("node:70000", "not a port number"),
            ("fd00::7:80:x", "not a port number"),
            ("node\n7", "not a valid host name"),
            ("http://node", "not a port number"),
        ] {
            let err = parse_advertise_addr(text).expect_err(text);
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let long = format!("{}.example", "a".repeat(MAX_ADVERTISE_ADDR_LEN));
        assert!(
            parse_advertise_addr(&long)
                .unwrap_err()
                .contains("at most 259")
        );
        let label = format!("{}.example", "a".repeat(64));
        assert!(parse_advertise_addr(&label).is_err());
    }
}
