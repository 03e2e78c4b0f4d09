//! The registry's state under its lock: the local sockets and the cluster view together, and
//! what follows from both — cluster-wide counts and members, `subscription_count`, the
//! notices of remote changes, the transitions.
//!
//! [`Registry::connection_peak`]: super::Registry::connection_peak
//! [`Registry::subscription_peak`]: super::Registry::subscription_peak
//! [`Registry::debug_log`]: super::Registry::debug_log

use std::collections::HashMap;
use std::time::Duration;

use protocol::frame;
use protocol::presence::Member;
use protocol::{Channel, ChannelKind};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;

use super::local::{ChannelState, Local};
use super::sync::Outgoing;
use crate::cluster::{Cluster, Effects, LocalView, Notice};
use crate::debug::DebugRecord;
use crate::{Frame, Transition};

/// Above this many subscribers, `subscription_count` is sent at most every [`COUNT_THROTTLE`].
const COUNT_THROTTLE_ABOVE: usize = 100;
pub(super) const COUNT_THROTTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(super) struct State {
    pub local: Local,
    pub cluster: Cluster,
    /// Local changes not yet told to the other nodes.
    pub outgoing: Outgoing,
    /// Where transitions go, once [`Registry::transitions`] was called.
    pub transitions: Option<mpsc::Sender<Transition>>,
    /// Per app, the most connections across the cluster at a local connect since the last
    /// [`Registry::connection_peak`].
    pub peaks: HashMap<String, usize>,
    /// Per app, the most subscriptions on this node since the last
    /// [`Registry::subscription_peak`].
    pub subscription_peaks: HashMap<String, usize>,
    /// Where debug records go, once [`Registry::debug_log`] was called.
    pub debug: Option<mpsc::Sender<DebugRecord>>,
}

impl State {
    pub fn connections(&self, app_id: &str) -> usize {
        let local = self.local.apps.get(app_id).map_or(0, |a| a.sockets.len());
        local + self.cluster.connections(app_id)
    }

    pub fn subscriptions(&self, app_id: &str, channel: &str) -> usize {
        self.local.subscriptions(app_id, channel) + self.cluster.subscriptions(app_id, channel)
    }

    pub fn has_member(&self, app_id: &str, channel: &str, user_id: &str) -> bool {
        self.local.has_member(app_id, channel, user_id)
            || self.cluster.has_member(app_id, channel, user_id)
    }

    pub fn is_signed_in(&self, app_id: &str, user_id: &str) -> bool {
        self.local.is_signed_in(app_id, user_id) || self.cluster.is_signed_in(app_id, user_id)
    }

    /// Unique members of a presence channel across the cluster, local ones first.
    pub fn members(&self, app_id: &str, channel: &str) -> Vec<Member> {
        let local = self.local.channel(app_id, channel);
        let mut members: Vec<Member> = local.into_iter().flat_map(ChannelState::members).collect();
        members.extend(
            self.cluster
                .members(app_id, channel)
                .filter(|m| local.is_none_or(|c| !c.members.contains_key(&m.user_id))),
        );
        members
    }

    /// Sends the channel's subscription count to its local subscribers, if the app wants it.
    pub fn notify_count(&mut self, app_id: &str, channel: &str) {
        if Channel::parse(channel).is_ok_and(|c| c.kind == ChannelKind::Presence) {
            return;
        }
        let count = self.subscriptions(app_id, channel);
        let Some(app) = self.local.apps.get_mut(app_id) else {
            return;
        };
        if !app.options.subscription_count {
            return;
        }
        let Some(state) = app.channels.get_mut(channel) else {
            return;
        };
        let now = Instant::now();
        let throttled = count > COUNT_THROTTLE_ABOVE
            && state
                .count_sent_at
                .is_some_and(|at| now.duration_since(at) < COUNT_THROTTLE);
        let key = (app_id.to_owned(), channel.to_owned());
        if throttled {
            self.local.count_pending.insert(key);
        } else {
            self.local.count_pending.remove(&key);
            state.count_sent_at = Some(now);
            let frame: Frame = frame::encode_subscription_count(channel, count).into();
            state.send_all(&frame, None);
        }
    }

    pub fn emit(&mut self, transition: Transition) {
        let Some(transitions) = &self.transitions else {
            return;
        };
        match transitions.try_send(transition) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("switchboard_transitions_dropped_total").increment(1);
            }
            Err(TrySendError::Closed(_)) => self.transitions = None,
        }
    }

    /// Queues for local sockets what remote changes mean to them, and emits the transitions.
    pub fn apply(&mut self, effects: Effects) {
        let mut watched: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
        for notice in effects.notices {
            match notice {
                Notice::MemberAdded {
                    app_id,
                    channel,
                    member,
                } => {
                    if let Some(c) = self.local.channel(&app_id, &channel) {
                        c.send_all(&frame::encode_member_added(&channel, &member).into(), None);
                    }
                }
                Notice::MemberRemoved {
                    app_id,
                    channel,
                    user_id,
                } => {
                    if let Some(c) = self.local.channel(&app_id, &channel) {
                        c.send_all(
                            &frame::encode_member_removed(&channel, &user_id).into(),
                            None,
                        );
                    }
                }
                Notice::Count { app_id, channel } => self.notify_count(&app_id, &channel),
                Notice::Online { app_id, user_id } => {
                    watched.entry(app_id).or_default().0.push(user_id);
                }
                Notice::Offline { app_id, user_id } => {
                    watched.entry(app_id).or_default().1.push(user_id);
                }
            }
        }
        for (app_id, (online, offline)) in watched {
            if let Some(app) = self.local.apps.get(&app_id) {
                app.notify_watchers(&online, &offline);
            }
        }
        for transition in effects.transitions {
            self.emit(transition);
        }
    }
}
