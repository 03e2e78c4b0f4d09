//! The rest of the Pusher HTTP API: batch triggers, `info`, channel queries.

use serde_json::{json, Value};

use crate::common::{self, TestServer, APP_ID};

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn batch_events_deliver_in_order_and_describe_channels_on_request() {
    let server = TestServer::start().await;
    let room = format!("presence-{}", common::random_suffix());
    let mut member = server.connect().await;
    member.join(&room, "m1").await;
    let mut listener = server.connect().await;
    listener.subscribe("batch-a").await;
    let path = format!("/apps/{APP_ID}/batch_events");
    let plain = json!({"batch":[
        {"name":"one","channel":"batch-a","data":"1"},
        {"name":"two","channel":"batch-a","data":"2"},
    ]});
    let (status, body) = json_of(server.post_signed(&path, &plain.to_string()).await).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(listener.next_app_event().await["event"], "one");
    assert_eq!(listener.next_app_event().await["event"], "two");

    let with_info = json!({"batch":[
        {"name":"a","channel":"batch-a","data":"x","info":"subscription_count"},
        {"name":"b","channel":room,"data":"y","info":"user_count,subscription_count"},
        {"name":"c","channel":"empty","data":"z"},
    ]});
    let (status, body) = json_of(server.post_signed(&path, &with_info.to_string()).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"batch":[{"subscription_count":1},{"user_count":1,"subscription_count":1},{}]})
    );

    let eleven: Vec<Value> = (0..11)
        .map(|i| json!({"name":"e","channel":"c","data":i.to_string()}))
        .collect();
    let (status, body) = json_of(
        server
            .post_signed(&path, &json!({"batch": eleven}).to_string())
            .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let bad_item = json!({"batch":[{"name":"ok","channel":"c","data":"1"},{"name":"bad","channel":"bad name","data":"2"}]});
    let (status, _) = json_of(server.post_signed(&path, &bad_item.to_string()).await).await;
    assert_eq!(status, 400);
    // Nothing of a refused batch was accepted: only the five events above are stored.
    assert_eq!(server.wait_count("SELECT count(*) FROM events", 5).await, 5);
    server.cleanup().await;
}

#[tokio::test]
async fn trigger_info_reports_counts() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    a.subscribe("info-me").await;
    let body = json!({"name":"e","channels":["info-me","nobody"],"data":"x","info":"subscription_count,user_count"});
    let (status, body) = json_of(
        server
            .post_signed(&format!("/apps/{APP_ID}/events"), &body.to_string())
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels":{"info-me":{"subscription_count":1},"nobody":{"subscription_count":0}}})
    );
    server.cleanup().await;
}

#[tokio::test]
async fn channel_queries() {
    let server = TestServer::start().await;
    let room = "presence-lobby";
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.join(room, "u1").await;
    b.join(room, "u2").await;
    assert_eq!(
        a.next_app_event().await["event"],
        "pusher_internal:member_added"
    );
    a.subscribe("news").await;
    b.subscribe("news").await;
    let base = format!("/apps/{APP_ID}/channels");

    let (status, body) = json_of(server.get_signed(&base, "").await).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"channels":{"news":{},"presence-lobby":{}}}));
    let (status, body) = json_of(
        server
            .get_signed(&base, "filter_by_prefix=presence-&info=user_count")
            .await,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"channels":{"presence-lobby":{"user_count":2}}}))
    );
    let (status, _) = json_of(server.get_signed(&base, "info=user_count").await).await;
    assert_eq!(status, 400, "user_count needs the presence- prefix");

    let (status, body) = json_of(
        server
            .get_signed(
                &format!("{base}/{room}"),
                "info=user_count,subscription_count",
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"occupied":true,"user_count":2,"subscription_count":2})
        )
    );
    let (status, body) = json_of(server.get_signed(&format!("{base}/news"), "").await).await;
    assert_eq!((status, body), (200, json!({"occupied":true})));
    let (status, body) = json_of(
        server
            .get_signed(&format!("{base}/quiet"), "info=subscription_count")
            .await,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"occupied":false,"subscription_count":0}))
    );
    for (path, query) in [
        (format!("{base}/news"), "info=user_count"),
        (format!("{base}/news"), "info=cache"),
        (format!("{base}/news/users"), ""),
        (format!("{base}/bad%20name"), ""),
    ] {
        let (status, body) = json_of(server.get_signed(&path, query).await).await;
        assert_eq!(status, 400, "{path}?{query}: {body}");
        assert!(body["error"].is_string());
    }
    // An unsigned or wrongly signed query is refused like a trigger.
    let unsigned = reqwest::get(server.url(&base)).await.unwrap();
    assert_eq!(unsigned.status(), 401);
    server.cleanup().await;
}
