//! `X-Idempotency-Key` on `POST /apps/{id}/events` and `/batch_events`: a retried request with
//! the same key never makes a second row, nor (on the same node, within the window) a second
//! live delivery.
//!
//! The request's key becomes one key per envelope — `"{key} {channel}"` for a trigger,
//! `"{key} {index} {channel}"` for item `index` of a batch — carried as
//! `Envelope::idempotency_key`. Storage keeps the first envelope of an `(app_id, key)` within the
//! dedup window (`idempotency_dedup`, like Segment's `messageId` in `event_dedup`), whichever
//! node published it. This node also remembers the keys it had confirmed ([`RecentKeys`], a
//! bounded LRU map): a retry's envelopes whose keys it knows are answered without being
//! published again, so subscribers do not see them twice.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;
use protocol::Envelope;
use warp::http::HeaderMap;

use crate::error::ApiError;

/// The request header.
pub const HEADER: &str = "x-idempotency-key";
/// Longest key accepted, in bytes (visible ASCII only).
pub const MAX_KEY_LEN: usize = 128;

/// A request's validated idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The request's key: none without the header; one header of 1 to [`MAX_KEY_LEN`] visible
    /// ASCII characters (`!` to `~`), else 400.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let bytes = value.as_bytes();
        let valid = values.next().is_none()
            && (1..=MAX_KEY_LEN).contains(&bytes.len())
            && bytes.iter().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(ApiError::InvalidIdempotencyKey { max: MAX_KEY_LEN });
        }
        Ok(Some(IdempotencyKey(
            String::from_utf8_lossy(bytes).into_owned(),
        )))
    }

    /// The key of a trigger's envelope for `channel`.
    pub fn for_trigger(&self, channel: &str) -> String {
        format!("{} {channel}", self.0)
    }

    /// The key of the envelope for `channel` of item `index` of a batch trigger.
    pub fn for_batch_item(&self, index: usize, channel: &str) -> String {
        format!("{} {index} {channel}", self.0)
    }
}

/// The per-envelope keys this node published and RabbitMQ confirmed, for `window`, at most
/// `capacity` of them (the least recently used go first: a forgotten key costs a live
/// duplicate, never a second row).
pub struct RecentKeys {
    keys: Mutex<LruCache<(String, String), Instant>>,
    window: Duration,
}

impl RecentKeys {
    pub fn new(capacity: NonZeroUsize, window: Duration) -> RecentKeys {
        RecentKeys {
            keys: Mutex::new(LruCache::new(capacity)),
            window,
        }
    }

    /// Removes the envelopes whose key was confirmed here within the window; returns how many.
    pub fn drop_known(&self, envelopes: &mut Vec<Envelope>) -> usize {
        let before = envelopes.len();
        let mut keys = self.keys.lock();
        envelopes.retain(|envelope| {
            let Some(key) = &envelope.idempotency_key else {
                return true;
            };
            let entry = (envelope.app_id.clone(), key.clone());
            match keys.get(&entry) {
                Some(confirmed) if confirmed.elapsed() < self.window => false,
                Some(_) => {
                    keys.pop(&entry);
                    true
                }
                None => true,
            }
        });
        before - envelopes.len()
    }

    /// Remembers `(app_id, key)` pairs just confirmed.
    pub fn remember(&self, confirmed: impl IntoIterator<Item = (String, String)>) {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        for entry in confirmed {
            keys.put(entry, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Source;
    use warp::http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HEADER, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn keys_are_one_header_of_visible_ascii() {
        let check = |values: &[&[u8]], expected: Option<Option<&str>>| {
            let parsed = IdempotencyKey::from_headers(&headers(values)).ok();
            let expected = expected.map(|key| key.map(|k| IdempotencyKey(k.to_owned())));
            assert_eq!(parsed, expected, "{values:?}");
        };
        check(&[], Some(None));
        check(&[b"order-17"], Some(Some("order-17")));
        check(
            &[b"8e03978e-40d5-43e8-bc93-6894a57f9324"],
            Some(Some("8e03978e-40d5-43e8-bc93-6894a57f9324")),
        );
        check(
            &[&[b'k'; MAX_KEY_LEN]],
            Some(Some(&"k".repeat(MAX_KEY_LEN))),
        );
        check(&[&[b'k'; MAX_KEY_LEN + 1]], None);
        check(&[b""], None);
        check(&[b"has space"], None);
        check(&[b"tab\there"], None);
        check(&["caf\u{e9}".as_bytes()], None);
        check(&[b"a", b"b"], None);
    }

    #[test]
    fn per_envelope_keys_cannot_collide_across_endpoints() {
        let key = IdempotencyKey("k".into());
        assert_eq!(key.for_trigger("orders"), "k orders");
        assert_eq!(key.for_batch_item(3, "orders"), "k 3 orders");
        assert_ne!(key.for_trigger("0"), key.for_batch_item(0, ""));
    }

    fn confirmed(keys: &[(&str, &str)]) -> Vec<(String, String)> {
        keys.iter()
            .map(|(app, key)| ((*app).to_owned(), (*key).to_owned()))
            .collect()
    }

    fn keyed(app: &str, key: Option<&str>) -> Envelope {
        let mut envelope = Envelope::new(app, Source::Api, "c", "e", String::new());
        envelope.idempotency_key = key.map(str::to_owned);
        envelope
    }

    #[test]
    fn known_keys_are_dropped_per_app_within_the_window() {
        let recent = RecentKeys::new(NonZeroUsize::new(2).unwrap(), Duration::from_secs(60));
        recent.remember(confirmed(&[("1", "a")]));
        let mut retry = vec![
            keyed("1", Some("a")),
            keyed("2", Some("a")),
            keyed("1", Some("b")),
            keyed("1", None),
        ];
        assert_eq!(recent.drop_known(&mut retry), 1);
        let left: Vec<(&str, Option<&str>)> = retry
            .iter()
            .map(|e| (e.app_id.as_str(), e.idempotency_key.as_deref()))
            .collect();
        assert_eq!(left, [("2", Some("a")), ("1", Some("b")), ("1", None)]);

        // Bounded: the least recently used key goes first.
        recent.remember(confirmed(&[("1", "b"), ("1", "c")]));
        let mut again = vec![keyed("1", Some("a")), keyed("1", Some("c"))];
        assert_eq!(recent.drop_known(&mut again), 1);
        assert_eq!(again[0].idempotency_key.as_deref(), Some("a"));
    }

    #[test]
    fn keys_are_forgotten_after_the_window() {
        let recent = RecentKeys::new(NonZeroUsize::new(8).unwrap(), Duration::ZERO);
        recent.remember(confirmed(&[("1", "a")]));
        let mut retry = vec![keyed("1", Some("a"))];
        assert_eq!(recent.drop_known(&mut retry), 0);
        assert_eq!(retry.len(), 1);
    }
}
