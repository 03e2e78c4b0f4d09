//! The one size-limited body filter of every route that takes a body: a `Content-Length` over
//! the limit is refused before anything is read; a body without one (`Transfer-Encoding:
//! chunked`) is read up to the limit and refused as soon as it passes it. Both refusals are
//! the same 413.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::{Filter, Rejection};

/// The request body was larger than the route's limit.
#[derive(Debug)]
pub struct TooLarge;

impl warp::reject::Reject for TooLarge {}

/// The request body could not be read (the client went away or sent a broken encoding).
#[derive(Debug)]
pub struct Unreadable(pub warp::Error);

impl warp::reject::Reject for Unreadable {}

/// The whole body, at most `max` bytes.
pub fn limited(max: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, body| async move {
            if length.is_some_and(|length| length > max) {
                return Err(warp::reject::custom(TooLarge));
            }
            read(body, max, length.unwrap_or(0)).await
        })
}

async fn read<B: Buf>(
    body: impl Stream<Item = Result<B, warp::Error>>,
    max: u64,
    expected: u64,
) -> Result<Bytes, Rejection> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut body = std::pin::pin!(body);
    let mut bytes = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0).min(max));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| warp::reject::custom(Unreadable(error)))?;
        if chunk.remaining() > max - bytes.len() {
            return Err(warp::reject::custom(TooLarge));
        }
        bytes.put(chunk);
    }
    Ok(bytes.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check(max: u64, chunks: &[&str]) -> Result<Bytes, bool> {
        let stream = futures_util::stream::iter(
            chunks
                .iter()
                .map(|chunk| Ok::<_, warp::Error>(Bytes::copy_from_slice(chunk.as_bytes())))
                .collect::<Vec<_>>(),
        );
        read(stream, max, 0)
            .await
            .map_err(|rejection| rejection.find::<TooLarge>().is_some())
    }

    #[tokio::test]
    async fn reads_up_to_the_limit_and_no_further() {
        assert_eq!(check(5, &[]).await.unwrap(), "");
        assert_eq!(check(5, &["ab", "cde"]).await.unwrap(), "abcde");
        assert_eq!(check(5, &["abc", "def"]).await, Err(true));
        assert_eq!(check(5, &["abcdef"]).await, Err(true));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        let filter = limited(4);
        let refused = warp::test::request()
            .method("POST")
            .header("content-length", "5")
            .body("12345")
            .filter(&filter)
            .await
            .unwrap_err();
        assert!(refused.find::<TooLarge>().is_some());
        let fine = warp::test::request()
            .method("POST")
            .body("1234")
            .filter(&filter)
            .await
            .unwrap();
        assert_eq!(fine, "1234");
    }
}
