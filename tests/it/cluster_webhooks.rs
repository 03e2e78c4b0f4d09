//! Cluster-wide webhooks: `channel_occupied`/`vacated` and `member_added`/`removed` once across
//! two gateways, debounced (a presence user back within the delay makes none), and a gateway
//! killed with `kill -9` has its channels vacated once.

use std::time::Duration;

use faults::receiver::{Behaviour, Receiver};
use protocol::webhook::{EventType, WebhookEvent};
use switchboard::config::Config;
use switchboard::Role;

use crate::common::ws::Client;
use crate::common::{test_config, TestServer, KEY};
use crate::processes::Deployment;
use crate::webhooks::{events, unique, wait_for_events, webhook, with_webhooks};

const CLUSTER_TYPES: [EventType; 4] = [
    EventType::ChannelOccupied,
    EventType::ChannelVacated,
    EventType::MemberAdded,
    EventType::MemberRemoved,
];

fn cluster_config(receiver: &Receiver, debounce_ms: u64) -> Config {
    let mut config = test_config();
    with_webhooks(
        &mut config,
        vec![webhook(&receiver.url("/cluster"), &CLUSTER_TYPES, None)],
    );
    config.webhooks.vacate_debounce_ms = debounce_ms;
    config
}

/// Asserts that `receiver` gets nothing more than `expected` within `quiet`.
async fn exactly(receiver: &Receiver, expected: &[WebhookEvent], quiet: Duration) {
    let mut got = wait_for_events(receiver, expected.len()).await;
    tokio::time::sleep(quiet).await;
    assert_eq!(
        events(&receiver.received()).len(),
        expected.len(),
        "{got:?}"
    );
    got.sort_by_key(|e| format!("{e:?}"));
    let mut expected = expected.to_vec();
    expected.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(got, expected);
}

#[tokio::test]
async fn occupancy_and_members_fire_once_across_two_gateways() {
    let receiver = Receiver::start(Behaviour::Ok).await;
    let config = cluster_config(&receiver, 300);
    let a = TestServer::start_config(Role::Serve, config.clone()).await;
    let b = TestServer::start_config(Role::Gateway, config).await;
    let room = unique("presence-cluster");
    // One user on both nodes, another on one: each joins and leaves once for the cluster.
    let mut ann_a = a.connect().await;
    ann_a.join(&room, "ann").await;
    let mut ann_b = b.connect().await;
    ann_b.join(&room, "ann").await;
    let mut bob_b = b.connect().await;
    bob_b.join(&room, "bob").await;
    let added = |user: &str| WebhookEvent::MemberAdded {
        channel: room.clone(),
        user_id: user.into(),
    };
    let occupied = WebhookEvent::ChannelOccupied {
        channel: room.clone(),
    };
    exactly(
        &receiver,
        &[occupied.clone(), added("ann"), added("bob")],
        Duration::from_millis(500),
    )
    .await;
    drop((ann_a, ann_b, bob_b));
    let removed = |user: &str| WebhookEvent::MemberRemoved {
        channel: room.clone(),
        user_id: user.into(),
    };
    exactly(
        &receiver,
        &[
            occupied,
            added("ann"),
            added("bob"),
            removed("ann"),
            removed("bob"),
            WebhookEvent::ChannelVacated {
                channel: room.clone(),
            },
        ],
        Duration::from_millis(1500),
    )
    .await;
    b.cleanup().await;
    a.cleanup().await;
}

#[tokio::test]
async fn a_presence_user_back_within_the_delay_makes_no_webhook() {
    let receiver = Receiver::start(Behaviour::Ok).await;
    let server = TestServer::start_config(Role::Serve, cluster_config(&receiver, 1500)).await;
    let room = unique("presence-flap");
    let mut stays = server.connect().await;
    stays.join(&room, "stays").await;
    let mut flapper = server.connect().await;
    flapper.join(&room, "flapper").await;
    let first = [
        WebhookEvent::ChannelOccupied {
            channel: room.clone(),
        },
        WebhookEvent::MemberAdded {
            channel: room.clone(),
            user_id: "stays".into(),
        },
        WebhookEvent::MemberAdded {
            channel: room.clone(),
            user_id: "flapper".into(),
        },
    ];
    exactly(&receiver, &first, Duration::from_millis(200)).await;

    // A page reload: gone and back within 1.5 s makes neither removed nor added.
    drop(flapper);
    let mut flapper = server.connect().await;
    flapper.join(&room, "flapper").await;
    exactly(&receiver, &first, Duration::from_millis(2500)).await;

    // Away for longer: exactly one member_removed.
    drop(flapper);
    let mut all = first.to_vec();
    all.push(WebhookEvent::MemberRemoved {
        channel: room.clone(),
        user_id: "flapper".into(),
    });
    exactly(&receiver, &all, Duration::from_millis(500)).await;
    drop(stays);
    server.cleanup().await;
}

#[tokio::test]
async fn a_gateway_killed_with_kill_9_has_its_channels_vacated_once() {
    let receiver = Receiver::start(Behaviour::Ok).await;
    let mut deployment = Deployment::new();
    let file = std::env::temp_dir().join(format!("{}.toml", unique("cluster-webhooks")));
    std::fs::write(
        &file,
        format!(
            "[[apps]]\nid = \"{}\"\nkey = \"{KEY}\"\nsecret = \"{}\"\n\n\
             [[apps.webhooks]]\nurl = \"{}\"\n\n\
             [webhooks]\nvacate_debounce_ms = 200\nbatch_window_ms = 20\n\n\
             [gateway]\ncluster_heartbeat_ms = 300\ncluster_node_timeout_ms = 1500\n",
            crate::common::APP_ID,
            crate::common::SECRET,
            receiver.url("/killed")
        ),
    )
    .unwrap();
    deployment.config_file = Some(file.clone());
    let survivor = deployment.start("gateway").await;
    let mut doomed = deployment.start("gateway").await;
    let worker = deployment.start("worker").await;
    let channel = unique("doomed");
    let mut client = Client::connect(&format!("ws://{}/app/{KEY}?protocol=7", doomed.http())).await;
    client.subscribe(&channel).await;
    let occupied = WebhookEvent::ChannelOccupied {
        channel: channel.clone(),
    };
    exactly(
        &receiver,
        std::slice::from_ref(&occupied),
        Duration::from_millis(300),
    )
    .await;

    doomed.child.kill().unwrap();
    let vacated = WebhookEvent::ChannelVacated {
        channel: channel.clone(),
    };
    exactly(&receiver, &[occupied, vacated], Duration::from_secs(2)).await;
    drop((client, doomed, survivor, worker));
    deployment.cleanup().await;
    let _ = std::fs::remove_file(file);
}
