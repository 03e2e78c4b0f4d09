//! Live copies of Segment events on each app's analytics channel (or none), and client events
//! kept out of it.

use serde_json::json;

use super::{ok, post};
use crate::common::TestServer;

#[tokio::test]
async fn private_analytics_subscribers_see_segment_events_live() {
    let server = TestServer::start().await;
    let mut dashboard = server.connect().await;
    dashboard.subscribe_private("private-analytics").await;
    let track = json!({"userId": "u", "event": "Order Completed", "properties": {"total": 9}});
    assert_eq!(post(&server, "track", &track).await, ok());
    let live = dashboard.next_app_event().await;
    assert_eq!(live["event"], "Order Completed");
    assert_eq!(live["channel"], "private-analytics");
    assert_eq!(crate::common::ws::data(&live), track);
    let page = json!({"anonymousId": "a", "properties": {"path": "/"}});
    assert_eq!(post(&server, "page", &page).await, ok());
    let live = dashboard.next_app_event().await;
    assert_eq!(live["event"], "page");
    assert_eq!(crate::common::ws::data(&live), page);
    server.cleanup().await;
}
