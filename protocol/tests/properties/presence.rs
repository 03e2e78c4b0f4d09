//! Presence `channel_data` and sign-in `user_data`: ids as strings, limits enforced.

use proptest::prelude::*;
use protocol::presence::{
    Member, PresenceError, SignedInUser, SigninError, MAX_USER_ID_LEN, MAX_USER_INFO_BYTES,
    MAX_WATCHLIST,
};
use serde_json::{json, Value};

use super::{config, json_value};

/// A user id as clients send it: a string, or a number whose text is the id.
fn user_id() -> impl Strategy<Value = (Value, String)> {
    prop_oneof![
        any::<String>().prop_map(|s| (json!(s), s)),
        any::<i64>().prop_map(|n| (json!(n), n.to_string())),
        any::<u64>().prop_map(|n| (json!(n), n.to_string())),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn channel_data_never_panics(text in any::<String>()) {
        let _ = Member::from_channel_data(Some(&text));
    }

    #[test]
    fn channel_data_ids_are_their_string_form(
        (id, expected) in user_id(),
        info in prop::option::of(json_value()),
    ) {
        let mut data = json!({ "user_id": id });
        if let Some(info) = &info {
            data["user_info"] = info.clone();
        }
        let text = data.to_string();
        // `"user_info": null` is no user_info.
        let info_text = info.as_ref().filter(|v| !v.is_null()).map(Value::to_string);
        let got = Member::from_channel_data(Some(&text));
        let len = expected.chars().count();
        let expected = if len == 0 || len > MAX_USER_ID_LEN {
            Err(PresenceError::UserIdLength)
        } else if info_text.as_ref().is_some_and(|t| t.len() > MAX_USER_INFO_BYTES) {
            Err(PresenceError::UserInfoTooLarge)
        } else {
            Ok(Member { user_id: expected, user_info: info_text })
        };
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn user_data_never_panics(text in any::<String>()) {
        let _ = SignedInUser::from_user_data(&text);
    }

    #[test]
    fn user_data_ids_are_their_string_form(
        (id, expected) in user_id(),
        watchlist in prop::collection::vec(user_id(), 0..(MAX_WATCHLIST + 3)),
    ) {
        let ids: Vec<Value> = watchlist.iter().map(|(v, _)| v.clone()).collect();
        let text = json!({ "id": id, "watchlist": ids }).to_string();
        let expected = if expected.is_empty() {
            Err(SigninError::Malformed)
        } else if watchlist.len() > MAX_WATCHLIST {
            Err(SigninError::WatchlistTooLong(watchlist.len()))
        } else {
            Ok(SignedInUser {
                id: expected,
                watchlist: watchlist.into_iter().map(|(_, s)| s).collect(),
            })
        };
        prop_assert_eq!(SignedInUser::from_user_data(&text), expected);
    }
}
