//! Cluster-wide webhooks (`channel_occupied`, `channel_vacated`, `member_added`,
//! `member_removed`) from the registry's [`Transition`]s. Every node derives the same
//! transitions from its cluster view and debounces them the same way; only the leader (the
//! lowest node id it knows alive) emits them, so each fires once across the cluster.
//!
//! Leadership moves when the leader is forgotten (goodbye, or silent for
//! `cluster_node_timeout_ms`). What the others derived meanwhile is not lost: each node keeps what
//! it did not emit for [`HOLD_FOR`], and a node that becomes leader emits what of it came after
//! it last heard from the old leader (at least once: the old leader may have sent those last
//! moments too). A node that just started emits nothing for [`STARTUP_GRACE`] (it may not know a
//! lower node yet) and then decides the same way, from its start.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dispatcher::{Debounce, Transition};
use protocol::webhook::WebhookEvent;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Gateway;

/// How long a node keeps the transitions it did not emit, for a takeover: longer than a node
/// can stay known after its last word (`cluster_node_timeout_ms` is validated far below it).
const HOLD_FOR: Duration = Duration::from_secs(60);
/// Most transitions held for a takeover (the oldest go first).
const HOLD_MAX: usize = 10_000;
/// How long a node that just started waits before it may lead.
pub const STARTUP_GRACE: Duration = Duration::from_secs(2);
/// How often leadership is looked at when nothing else happens.
const LEADER_CHECK: Duration = Duration::from_millis(100);

/// Turns the gateway registry's transitions into its webhooks until `shutdown`; `delay`
/// debounces leaves (`webhooks.vacate_debounce_ms`).
pub async fn forward(gateway: Arc<Gateway>, delay: Duration, shutdown: CancellationToken) {
    let registry = &gateway.registry;
    let mut transitions = registry.transitions();
    let mut leadership = Leadership::new(registry.node(), Instant::now());
    let mut debounce = Debounce::new(delay);
    let mut check = tokio::time::interval(LEADER_CHECK);
    loop {
        let due = debounce.next_deadline();
        let ready: Vec<Transition> = tokio::select! {
            () = shutdown.cancelled() => break,
            next = transitions.recv() => match next {
                Some(transition) => debounce.push(transition, Instant::now()).into_iter().collect(),
                None => break,
            },
            () = sleep_until(due) => debounce.due(Instant::now()),
            _ = check.tick() => Vec::new(),
        };
        let leader = registry.leader();
        let heard = registry.heard_at(leader);
        for transition in leadership.step(Instant::now(), leader, heard, ready) {
            let (app_id, event) = webhook_of(transition);
            gateway.webhooks.emit(&app_id, event);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn webhook_of(transition: Transition) -> (String, WebhookEvent) {
    match transition {
        Transition::ChannelOccupied { app_id, channel } => {
            (app_id, WebhookEvent::ChannelOccupied { channel })
        }
        Transition::ChannelVacated { app_id, channel } => {
            (app_id, WebhookEvent::ChannelVacated { channel })
        }
        Transition::MemberAdded {
            app_id,
            channel,
            user_id,
        } => (app_id, WebhookEvent::MemberAdded { channel, user_id }),
        Transition::MemberRemoved {
            app_id,
            channel,
            user_id,
        } => (app_id, WebhookEvent::MemberRemoved { channel, user_id }),
    }
}

/// Who emits: this node while it leads; what it held, from when the old leader fell silent, when
/// it takes over.
struct Leadership {
    node: u32,
    started: Instant,
    leading: bool,
    /// When the leader this node followed was last heard from.
    followed_heard: Option<Instant>,
    held: VecDeque<(Instant, Transition)>,
}

impl Leadership {
    fn new(node: u32, started: Instant) -> Leadership {
        Leadership {
            node,
            started,
            leading: false,
            followed_heard: None,
            held: VecDeque::new(),
        }
    }

    /// At `now`, with `leader` (last heard at `heard`) leading the cluster as this node sees it,
    /// `ready` transitions are due: returns those to emit.
    fn step(
        &mut self,
        now: Instant,
        leader: u32,
        heard: Option<Instant>,
        ready: Vec<Transition>,
    ) -> Vec<Transition> {
        if leader != self.node {
            self.followed_heard = heard.or(self.followed_heard);
        }
        let leading = leader == self.node && now.duration_since(self.started) >= STARTUP_GRACE;
        let mut emit = Vec::new();
        if leading && !self.leading {
            let since = self.followed_heard.unwrap_or(self.started);
            emit.extend(
                self.held
                    .drain(..)
                    .filter(|(at, _)| *at >= since)
                    .map(|(_, t)| t),
            );
        }
        self.leading = leading;
        if leading {
            emit.extend(ready);
        } else {
            self.held.extend(ready.into_iter().map(|t| (now, t)));
            while self.held.len() > HOLD_MAX
                || self
                    .held
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > HOLD_FOR)
            {
                self.held.pop_front();
            }
        }
        emit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupied(channel: &str) -> Transition {
        Transition::ChannelOccupied {
            app_id: "a".into(),
            channel: channel.into(),
        }
    }

    #[test]
    fn a_node_leads_after_its_grace_and_sends_what_came_since_it_started() {
        let start = Instant::now();
        let mut alone = Leadership::new(5, start);
        assert!(alone
            .step(start, 5, None, vec![occupied("early")])
            .is_empty());
        let after = start + STARTUP_GRACE;
        assert_eq!(
            alone.step(after, 5, None, vec![occupied("later")]),
            [occupied("early"), occupied("later")]
        );
        assert_eq!(
            alone.step(after, 5, None, vec![occupied("now")]),
            [occupied("now")]
        );
    }

    #[test]
    fn a_follower_emits_nothing_and_takes_over_from_when_the_leader_fell_silent() {
        let start = Instant::now();
        let mut follower = Leadership::new(5, start);
        let t = |secs: u64| start + STARTUP_GRACE + Duration::from_secs(secs);
        assert!(follower
            .step(t(0), 3, Some(t(0)), vec![occupied("sent-by-3")])
            .is_empty());
        // Node 3 is last heard at t(1); what comes after it may never have been sent.
        assert!(follower.step(t(1), 3, Some(t(1)), vec![]).is_empty());
        assert!(follower
            .step(t(2), 3, Some(t(1)), vec![occupied("after-silence")])
            .is_empty());
        // Forgotten at t(6): node 5 leads and sends what came after t(1).
        assert_eq!(
            follower.step(t(6), 5, None, vec![occupied("new")]),
            [occupied("after-silence"), occupied("new")]
        );
    }

    #[test]
    fn held_transitions_are_bounded_in_age_and_number() {
        let start = Instant::now();
        let mut follower = Leadership::new(5, start);
        for i in 0..HOLD_MAX + 10 {
            follower.step(start, 3, Some(start), vec![occupied(&i.to_string())]);
        }
        assert_eq!(follower.held.len(), HOLD_MAX);
        follower.step(
            start + HOLD_FOR + Duration::from_secs(1),
            3,
            Some(start),
            vec![],
        );
        assert!(follower.held.is_empty());
    }
}
