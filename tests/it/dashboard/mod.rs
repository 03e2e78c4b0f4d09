//! The dashboard on the admin listener: the web console's page and files, its JSON endpoints,
//! their auth. The browser tests of the same pages are in tests/js/dashboard.test.mjs.

mod console;
mod dead;
mod grafana;
mod system;
mod web;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;

use crate::common::TestServer;

/// Publishes a message the worker cannot decode, so it is dead-lettered (and counted).
pub(crate) async fn dead_letter_one(server: &TestServer) {
    let topology = bus::Topology::new(server.config.amqp_prefix.clone());
    let connection = bus::connect(&server.config.amqp_url, "test-poison")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            &topology.events_exchange(),
            bus::EVENT_ROUTING_KEY,
            BasicPublishOptions::default(),
            b"not a batch of envelopes",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    connection.close(200, "done").await.unwrap();
}
