//! `/switchboard/app/{key}`: the same protocol as `/app/{key}`, with each channel event's id.

use serde_json::Value;

use super::{channel_name, connect_opted_in};
use crate::common::TestServer;

#[tokio::test]
async fn opted_in_sockets_get_the_stored_id_and_stock_sockets_nothing_new() {
    let server = TestServer::start().await;
    let channel = channel_name("news");
    let mut stock = server.connect().await;
    let mut opted = connect_opted_in(&server).await;
    stock.subscribe(&channel).await;
    opted.subscribe(&channel).await;
    for i in 0..3 {
        let data = format!(r#"{{"n":{i}}}"#);
        assert_eq!(server.trigger(&channel, "tick", &data).await.status(), 200);
    }
    let mut ids = Vec::new();
    for i in 0..3 {
        let plain = stock.next_app_event().await;
        let keys: Vec<&str> = plain
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["channel", "data", "event"], "{plain}");
        let with_id = opted.next_app_event().await;
        assert_eq!(with_id["data"], format!(r#"{{"n":{i}}}"#));
        assert_eq!(with_id["event"], plain["event"]);
        ids.push(with_id["id"].as_str().expect("an id").to_owned());
    }
    let stored = server
        .wait_count(
            &format!("SELECT count(*) FROM events WHERE channel = '{channel}'"),
            3,
        )
        .await;
    assert_eq!(stored, 3);
    let rows: Vec<(String, Value)> =
        sqlx::query_as("SELECT id::text, data FROM events WHERE channel = $1 ORDER BY id")
            .bind(&channel)
            .fetch_all(&mut server.db().await)
            .await
            .unwrap();
    let stored_ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        stored_ids, ids,
        "the live ids are the stored ones, in order"
    );
    server.cleanup().await;
}

#[tokio::test]
async fn the_opt_in_path_refuses_like_the_stock_one() {
    let server = TestServer::start().await;
    let url = format!(
        "ws://{}/switchboard/app/no-such-key?protocol=7",
        server.http
    );
    let mut socket = crate::common::ws::Client::connect_raw(&url).await;
    match crate::common::ws::read_seen(&mut socket, crate::common::ws::WAIT).await {
        crate::common::ws::Seen::Event(error) => {
            assert_eq!(error["event"], "pusher:error");
            assert_eq!(crate::common::ws::data(&error)["code"], 4001);
        }
        other => panic!("expected pusher:error, saw {other:?}"),
    }
    server.cleanup().await;
}
