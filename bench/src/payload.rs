//! The event payload the load tool sends: a sequence number and the send time, padded to a chosen
//! size. It is a JSON object (so the worker stores it as jsonb and SQL can read the sequence
//! number back), and a received frame is recognised by a byte scan, without a JSON parse.

use std::sync::OnceLock;
use std::time::Instant;

/// Microseconds since the first call in this process: the clock of every send and receive time.
/// Sender and receivers are the same process, so no wall clock is involved.
pub fn now_us() -> u64 {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    ANCHOR.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// `{"sb":[SEQ,SENT_US],"pad":"xx…"}`, padded with `x` to `size` bytes when it is shorter.
pub fn encode(seq: u64, sent_us: u64, size: usize) -> String {
    const CLOSE: &str = "\"}";
    let mut data = format!("{{\"sb\":[{seq},{sent_us}],\"pad\":\"");
    let pad = size.saturating_sub(data.len() + CLOSE.len());
    data.extend(std::iter::repeat_n('x', pad));
    data.push_str(CLOSE);
    data
}

/// The sequence number and send time of the payload inside `text`: the payload itself or a
/// server frame that carries it JSON-encoded in `data` (`{\"sb\":[…]…}`).
pub fn decode(text: &str) -> Option<(u64, u64)> {
    let start = ["sb\\\":[", "sb\":["]
        .iter()
        .find_map(|mark| text.find(mark).map(|at| at + mark.len()))?;
    let (seq, rest) = text[start..].split_once(',')?;
    let (sent, _) = rest.split_once(']')?;
    Some((seq.parse().ok()?, sent.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_json_of_the_requested_size() {
        let data = encode(42, 1_234_567, 100);
        assert_eq!(data.len(), 100);
        let value: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(value["sb"], serde_json::json!([42, 1_234_567]));
        // Too small a size still gives the whole payload.
        let short = encode(7, 8, 0);
        assert_eq!(short, r#"{"sb":[7,8],"pad":""}"#);
    }

    #[test]
    fn decodes_the_payload_and_server_frames_that_carry_it() {
        let data = encode(9, 77, 60);
        assert_eq!(decode(&data), Some((9, 77)));
        // The server sends data as a JSON string: the payload arrives escaped.
        let frame = protocol::frame::encode("bench", Some("fanout-1"), &data, None);
        assert_eq!(decode(&frame), Some((9, 77)));
        let client_event =
            protocol::frame::encode("client-x", Some("presence-a"), &data, Some("u1"));
        assert_eq!(decode(&client_event), Some((9, 77)));
    }

    #[test]
    fn ignores_other_frames() {
        let check = |text: &str| assert_eq!(decode(text), None, "{text}");
        check(r#"{"event":"pusher:pong","data":"{}"}"#);
        check(r#"{"event":"x","data":"{\"sb\":[1"}"#);
        check(r#"{"sb":[a,2]}"#);
        check("");
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_us();
        let b = now_us();
        assert!(b >= a);
    }
}
