//! Socket ids: `^\d+\.\d+$`, unique across nodes.

use std::fmt;

/// A connection's id as pusher-js and the server SDKs expect it: two decimal numbers joined by a dot.
///
/// The first number identifies the gateway node (random per process), the second counts
/// connections on that node, so ids never repeat across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    pub node: u32,
    pub seq: u64,
}

impl SocketId {
    /// Checks a socket id received from a client or an SDK.
    pub fn is_valid(s: &str) -> bool {
        match s.split_once('.') {
            Some((a, b)) => is_digits(a) && is_digits(b),
            None => false,
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        for ok in ["1.2", "123.456", "0.0"] {
            assert!(SocketId::is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "1.2.3",
            "a.1",
            "1.-2",
            "1 .2",
            "123456789012345678901.1",
        ] {
            assert!(!SocketId::is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn display_is_valid() {
        let id = SocketId {
            node: 4_000_000_000,
            seq: 7,
        };
        assert_eq!(id.to_string(), "4000000000.7");
        assert!(SocketId::is_valid(&id.to_string()));
    }
}
