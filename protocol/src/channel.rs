//! Channel-name rules (PROTOCOL.md §1).

use thiserror::Error;

/// Longest channel name accepted, in bytes (all accepted characters are ASCII).
pub const MAX_CHANNEL_NAME_LEN: usize = 200;

const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// The reserved channel on which the gateway publishes an app's debug records to the
/// dashboard's console. Private, but signed with [`crate::signature::debug_console_secret`],
/// never the app's secret, so an app's own auth endpoint cannot let a client in.
pub const DEBUG_CHANNEL: &str = "private-switchboard-debug";

/// What a channel's name says about how it is authorized and what it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    PrivateEncrypted,
    Presence,
    /// `#server-to-user-{id}`: only a connection signed in as that user may subscribe.
    ServerToUser,
}

/// A validated channel name with its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel<'a> {
    pub name: &'a str,
    pub kind: ChannelKind,
    /// `cache-`, `private-cache-`, `private-encrypted-cache-` and `presence-cache-` channels keep
    /// their last event.
    pub cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {len} characters long, the limit is {MAX_CHANNEL_NAME_LEN}")]
    TooLong { len: usize },
    #[error("channel name contains {found:?}; allowed are A-Z a-z 0-9 and _-=@,.;")]
    InvalidCharacter { found: char },
}

impl<'a> Channel<'a> {
    pub fn parse(name: &'a str) -> Result<Self, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        let len = name.chars().count();
        if len > MAX_CHANNEL_NAME_LEN {
            return Err(ChannelError::TooLong { len });
        }
        let checked = name.strip_prefix(SERVER_TO_USER_PREFIX).unwrap_or(name);
        if let Some(found) = checked.chars().find(|c| !is_allowed(*c)) {
            return Err(ChannelError::InvalidCharacter { found });
        }
        let (kind, rest) = if name.starts_with(SERVER_TO_USER_PREFIX) {
            (ChannelKind::ServerToUser, "")
        } else if let Some(rest) = name.strip_prefix("private-encrypted-") {
            (ChannelKind::PrivateEncrypted, rest)
        } else if let Some(rest) = name.strip_prefix("private-") {
            (ChannelKind::Private, rest)
        } else if let Some(rest) = name.strip_prefix("presence-") {
            (ChannelKind::Presence, rest)
        } else {
            (ChannelKind::Public, name)
        };
        Ok(Channel {
            name,
            kind,
            cache: rest.starts_with("cache-"),
        })
    }

    /// Private, encrypted and presence channels need a signed `auth` to subscribe.
    pub fn needs_auth(&self) -> bool {
        matches!(
            self.kind,
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        )
    }
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Result<(ChannelKind, bool), ChannelError>) {
        let got = Channel::parse(name).map(|c| (c.kind, c.cache));
        assert_eq!(got, expected, "{name}");
    }

    #[test]
    fn kinds_and_cache_flags() {
        use ChannelKind::*;
        check("orders", Ok((Public, false)));
        check("cache-orders", Ok((Public, true)));
        check("private-orders", Ok((Private, false)));
        check("private-cache-orders", Ok((Private, true)));
        check("private-encrypted-x", Ok((PrivateEncrypted, false)));
        check("private-encrypted-cache-x", Ok((PrivateEncrypted, true)));
        check("presence-room", Ok((Presence, false)));
        check("presence-cache-room", Ok((Presence, true)));
        check("#server-to-user-42", Ok((ServerToUser, false)));
        check("a_b-c=d@e,f.g;h", Ok((Public, false)));
    }

    #[test]
    fn rejects_bad_names() {
        check("", Err(ChannelError::Empty));
        check(
            "has space",
            Err(ChannelError::InvalidCharacter { found: ' ' }),
        );
        check("a/b", Err(ChannelError::InvalidCharacter { found: '/' }));
        check("#other", Err(ChannelError::InvalidCharacter { found: '#' }));
        check("ünï", Err(ChannelError::InvalidCharacter { found: 'ü' }));
        check(&"x".repeat(200), Ok((ChannelKind::Public, false)));
        check(&"x".repeat(201), Err(ChannelError::TooLong { len: 201 }));
    }

    #[test]
    fn auth_requirement_follows_kind() {
        assert!(!Channel::parse("news").unwrap().needs_auth());
        assert!(Channel::parse("private-a").unwrap().needs_auth());
        assert!(Channel::parse("private-encrypted-a").unwrap().needs_auth());
        assert!(Channel::parse("presence-a").unwrap().needs_auth());
    }
}
