//! Presence `channel_data` and sign-in `user_data` (PROTOCOL.md §1).

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// Longest presence user id, in characters.
pub const MAX_USER_ID_LEN: usize = 128;
/// Largest `user_info`, in bytes of JSON.
pub const MAX_USER_INFO_BYTES: usize = 1024;
/// Most user ids in a sign-in watchlist.
pub const MAX_WATCHLIST: usize = 100;

/// One member of a presence channel, as the channel's subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    /// The `user_info` object's JSON text, if any.
    pub user_info: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PresenceError {
    #[error("channel_data is required for a presence channel")]
    Missing,
    #[error("channel_data must be a JSON object with a user_id string or number")]
    Malformed,
    #[error("user_id must be 1 to {MAX_USER_ID_LEN} characters")]
    UserIdLength,
    #[error("user_info is larger than {MAX_USER_INFO_BYTES} bytes")]
    UserInfoTooLarge,
}

#[derive(Deserialize)]
struct ChannelData {
    user_id: Value,
    user_info: Option<Box<serde_json::value::RawValue>>,
}

/// User ids are compared as strings: `10` and `"10"` are the same user (presence `user_id` and
/// sign-in `id` alike).
fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Member {
    pub fn from_channel_data(channel_data: Option<&str>) -> Result<Member, PresenceError> {
        let raw = channel_data.ok_or(PresenceError::Missing)?;
        let data: ChannelData = serde_json::from_str(raw).map_err(|_| PresenceError::Malformed)?;
        let user_id = id_string(&data.user_id).ok_or(PresenceError::Malformed)?;
        let len = user_id.chars().count();
        if len == 0 || len > MAX_USER_ID_LEN {
            return Err(PresenceError::UserIdLength);
        }
        let user_info = data.user_info.map(|raw| raw.get().to_owned());
        if user_info
            .as_ref()
            .is_some_and(|info| info.len() > MAX_USER_INFO_BYTES)
        {
            return Err(PresenceError::UserInfoTooLarge);
        }
        Ok(Member { user_id, user_info })
    }
}

/// What `pusher:signin` carries in `user_data`, after the signature was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInUser {
    pub id: String,
    pub watchlist: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigninError {
    #[error("user_data must be a JSON object with a non-empty string or number id")]
    Malformed,
    #[error("watchlist has {0} user ids; at most {MAX_WATCHLIST} allowed")]
    WatchlistTooLong(usize),
}

#[derive(Deserialize)]
struct UserData {
    id: Value,
    #[serde(default)]
    watchlist: Vec<Value>,
}

impl SignedInUser {
    pub fn from_user_data(user_data: &str) -> Result<SignedInUser, SigninError> {
        let data: UserData = serde_json::from_str(user_data).map_err(|_| SigninError::Malformed)?;
        let id = id_string(&data.id)
            .filter(|id| !id.is_empty())
            .ok_or(SigninError::Malformed)?;
        if data.watchlist.len() > MAX_WATCHLIST {
            return Err(SigninError::WatchlistTooLong(data.watchlist.len()));
        }
        let watchlist = data
            .watchlist
            .iter()
            .map(|v| id_string(v).ok_or(SigninError::Malformed))
            .collect::<Result<_, _>>()?;
        Ok(SignedInUser { id, watchlist })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(data: Option<&str>, expected: Result<(&str, Option<&str>), PresenceError>) {
        let got = Member::from_channel_data(data);
        let expected = expected.map(|(id, info)| Member {
            user_id: id.into(),
            user_info: info.map(Into::into),
        });
        assert_eq!(got, expected, "{data:?}");
    }

    #[test]
    fn channel_data() {
        check(Some(r#"{"user_id":"7"}"#), Ok(("7", None)));
        check(
            Some(r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#),
            Ok(("10", Some(r#"{"name":"Mr. Pusher"}"#))),
        );
        check(None, Err(PresenceError::Missing));
        check(Some("nope"), Err(PresenceError::Malformed));
        check(Some(r#"{"user_id":null}"#), Err(PresenceError::Malformed));
        check(Some(r#"{"user_info":{}}"#), Err(PresenceError::Malformed));
        check(Some(r#"{"user_id":""}"#), Err(PresenceError::UserIdLength));
        let long = format!(r#"{{"user_id":"{}"}}"#, "u".repeat(129));
        check(Some(&long), Err(PresenceError::UserIdLength));
        let big = format!(
            r#"{{"user_id":"1","user_info":{{"x":"{}"}}}}"#,
            "i".repeat(1100)
        );
        check(Some(&big), Err(PresenceError::UserInfoTooLarge));
    }

    #[test]
    fn user_data() {
        assert_eq!(
            SignedInUser::from_user_data(r#"{"id":"12345","watchlist":["1",2]}"#),
            Ok(SignedInUser {
                id: "12345".into(),
                watchlist: vec!["1".into(), "2".into()]
            })
        );
        assert_eq!(
            SignedInUser::from_user_data(r#"{"id":""}"#),
            Err(SigninError::Malformed)
        );
        // Laravel apps and soketi users send numeric ids: the string form is the id.
        assert_eq!(
            SignedInUser::from_user_data(r#"{"id":5}"#),
            Ok(SignedInUser {
                id: "5".into(),
                watchlist: vec![]
            })
        );
        for bad in [r#"{"id":null}"#, r#"{"id":true}"#, r#"{"id":["1"]}"#, "{}"] {
            assert_eq!(
                SignedInUser::from_user_data(bad),
                Err(SigninError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            SignedInUser::from_user_data("[]"),
            Err(SigninError::Malformed)
        );
        let long: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        let data = serde_json::json!({"id":"1","watchlist":long}).to_string();
        assert_eq!(
            SignedInUser::from_user_data(&data),
            Err(SigninError::WatchlistTooLong(101))
        );
    }
}
