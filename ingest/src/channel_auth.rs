//! Whether a socket may read a channel: the signature a `pusher:subscribe` carries (PROTOCOL.md
//! §1), checked for a subscription and for the browser's history route alike.

use std::borrow::Cow;

use protocol::channel::DEBUG_CHANNEL;
use protocol::presence::{Member, PresenceError};
use protocol::signature::{channel_string_to_sign, debug_console_secret, verify_client_auth};
use protocol::{Channel, ChannelKind};
use thiserror::Error;

use crate::apps::App;

/// Why a socket may not read a channel.
#[derive(Debug, Error)]
pub enum ChannelAuthError {
    #[error("Missing auth for this channel")]
    MissingAuth,
    #[error("Invalid signature for this socket and channel")]
    InvalidSignature,
    #[error("Missing channel_data")]
    MissingChannelData,
    #[error(transparent)]
    BadChannelData(#[from] PresenceError),
    #[error("Sign in as this user to subscribe to this channel")]
    NotSignedIn,
}

/// Checks that socket `socket_id` may read `channel`: public channels need nothing; private and
/// encrypted ones `auth` over `socket_id:channel` (or, when `channel_data` is given, over
/// `socket_id:channel:channel_data`, as hosted Pusher accepts); presence ones `auth` over
/// `socket_id:channel:channel_data`, whose member is returned; `#server-to-user-{id}` the
/// socket's signed-in user `id`. The dashboard's debug channel is signed with the console's
/// own secret, never the app's.
pub fn authorize(
    app: &App,
    channel: &Channel<'_>,
    socket_id: &str,
    auth: Option<&str>,
    channel_data: Option<&str>,
    signed_in: Option<&str>,
) -> Result<Option<Member>, ChannelAuthError> {
    let secret = match channel.name {
        DEBUG_CHANNEL => Cow::Owned(debug_console_secret(&app.secret)),
        _ => Cow::Borrowed(app.secret.as_str()),
    };
    let check = |signed: String| {
        let auth = auth
            .filter(|a| !a.is_empty())
            .ok_or(ChannelAuthError::MissingAuth)?;
        if verify_client_auth(&app.key, &secret, &signed, auth) {
            Ok(())
        } else {
            Err(ChannelAuthError::InvalidSignature)
        }
    };
    match channel.kind {
        ChannelKind::Public => Ok(None),
        ChannelKind::Private | ChannelKind::PrivateEncrypted => {
            check(channel_string_to_sign(socket_id, channel.name, None))
                .or_else(|refused| match channel_data {
                    Some(data) => {
                        check(channel_string_to_sign(socket_id, channel.name, Some(data)))
                    }
                    None => Err(refused),
                })
                .map(|()| None)
        }
        ChannelKind::Presence => {
            let data = channel_data.ok_or(ChannelAuthError::MissingChannelData)?;
            check(channel_string_to_sign(socket_id, channel.name, Some(data)))?;
            Ok(Some(Member::from_channel_data(Some(data))?))
        }
        ChannelKind::ServerToUser => {
            let expected = signed_in.map(|id| format!("#server-to-user-{id}"));
            if expected.as_deref() == Some(channel.name) {
                Ok(None)
            } else {
                Err(ChannelAuthError::NotSignedIn)
            }
        }
    }
}
