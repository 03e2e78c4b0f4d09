//! The client's address: the socket's, or what trusted proxies say in `X-Forwarded-For`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The address of the connection a request came on, in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A proxy (an address or a CIDR network) whose `X-Forwarded-For` is believed. Written as
/// `"10.0.0.0/8"` or `"127.0.0.1"` (one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustedProxy(IpNet);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither an IP address nor a CIDR network")]
pub struct TrustedProxyError(String);

impl FromStr for TrustedProxy {
    type Err = TrustedProxyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(|net| TrustedProxy(net.trunc()))
            .map_err(|_| TrustedProxyError(text.to_owned()))
    }
}

impl TryFrom<String> for TrustedProxy {
    type Error = TrustedProxyError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<TrustedProxy> for String {
    fn from(proxy: TrustedProxy) -> String {
        proxy.to_string()
    }
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TrustedProxy {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

/// The client's address. A request from an untrusted peer is the peer's own; from a trusted
/// proxy, `X-Forwarded-For` is read from the right (the hop nearest to us): trusted hops are
/// skipped and the first untrusted address is the client. An entry that is not an address
/// stops the walk at the last hop known good; when every hop is trusted, the leftmost is it.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[TrustedProxy]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|proxy| proxy.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = forwarded_for
        .into_iter()
        .flat_map(|header| header.rsplit(','));
    for hop in hops {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            return client;
        };
        client = ip.to_canonical();
        if !is_trusted(client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn parses_addresses_and_networks() {
        let check = |text: &str, shown: &str| {
            assert_eq!(text.parse::<TrustedProxy>().unwrap().to_string(), shown)
        };
        check("10.0.0.0/8", "10.0.0.0/8");
        check("10.1.2.3/8", "10.0.0.0/8");
        check("127.0.0.1", "127.0.0.1/32");
        check("::1", "::1/128");
        check("fd00::/8", "fd00::/8");
        for bad in ["", "10.0.0.0/33", "localhost", "10.0.0"] {
            assert!(bad.parse::<TrustedProxy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let check = |peer: &str, header: Option<&str>, expected: &str| {
            assert_eq!(
                client_ip(peer.parse().unwrap(), header, &trusted),
                expected.parse::<IpAddr>().unwrap(),
                "{peer} {header:?}"
            )
        };
        // Untrusted peer: the header is ignored.
        check("198.51.100.1", Some("203.0.113.5"), "198.51.100.1");
        // Trusted peer: the nearest untrusted hop.
        check("127.0.0.1", Some("203.0.113.5"), "203.0.113.5");
        check(
            "10.0.0.2",
            Some("1.1.1.1, 203.0.113.5, 10.0.0.9"),
            "203.0.113.5",
        );
        // A spoofed left part does not help: the rightmost untrusted hop wins.
        check("10.0.0.2", Some("6.6.6.6,203.0.113.5"), "203.0.113.5");
        // Every hop trusted: the leftmost.
        check("10.0.0.2", Some("10.0.0.7, 10.0.0.8"), "10.0.0.7");
        // Garbage stops the walk at the last good hop.
        check("10.0.0.2", Some("203.0.113.5, junk, 10.0.0.8"), "10.0.0.8");
        check("10.0.0.2", Some("junk"), "10.0.0.2");
        check("10.0.0.2", None, "10.0.0.2");
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        check("::ffff:127.0.0.1", Some("2001:db8::1"), "2001:db8::1");
        // Nothing trusted: always the peer.
        assert_eq!(
            client_ip(
                "127.0.0.1".parse().unwrap(),
                Some("203.0.113.5"),
                &proxies(&[])
            ),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
