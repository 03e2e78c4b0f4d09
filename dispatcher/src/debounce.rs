//! Debouncing of [`Transition`]s for webhooks, as Pusher users want them: a `channel_vacated`
//! or `member_removed` waits a delay and is dropped, with the `channel_occupied` or
//! `member_added` that undoes it, when the channel or user is back in time (a page reload sends
//! neither). Occupied and added pass at once; what still waits when the delay is over passes
//! then.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::Transition;

/// Most transitions waiting at once; beyond that a vacated/removed passes at once (and is
/// counted in `switchboard_webhook_debounce_overflow_total`) rather than growing the map.
pub const MAX_PENDING: usize = 100_000;

/// What a transition is about: a channel, or a user on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    app_id: String,
    channel: String,
    user_id: Option<String>,
}

impl Key {
    /// The key, and whether the transition is a leave (vacated, removed).
    fn of(transition: &Transition) -> (Key, bool) {
        let key = |app_id: &str, channel: &str, user_id: Option<&str>| Key {
            app_id: app_id.to_owned(),
            channel: channel.to_owned(),
            user_id: user_id.map(str::to_owned),
        };
        match transition {
            Transition::ChannelOccupied { app_id, channel } => (key(app_id, channel, None), false),
            Transition::ChannelVacated { app_id, channel } => (key(app_id, channel, None), true),
            Transition::MemberAdded {
                app_id,
                channel,
                user_id,
            } => (key(app_id, channel, Some(user_id)), false),
            Transition::MemberRemoved {
                app_id,
                channel,
                user_id,
            } => (key(app_id, channel, Some(user_id)), true),
        }
    }
}

#[derive(Debug)]
pub struct Debounce {
    delay: Duration,
    /// Leaves waiting, with their deadline.
    pending: HashMap<Key, (Instant, Transition)>,
    /// Deadlines in order (the delay is constant, so arrival order); entries whose key left
    /// `pending` meanwhile, or came back with a later deadline, are skipped.
    order: VecDeque<(Instant, Key)>,
}

impl Debounce {
    pub fn new(delay: Duration) -> Debounce {
        Debounce {
            delay,
            pending: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Takes one transition at `now`; returns it when it passes at once.
    pub fn push(&mut self, transition: Transition, now: Instant) -> Option<Transition> {
        let (key, leave) = Key::of(&transition);
        if !leave {
            // Back in time: the leave and this arrival cancel out.
            return match self.pending.remove(&key) {
                Some(_) => None,
                None => Some(transition),
            };
        }
        if self.delay.is_zero() {
            return Some(transition);
        }
        if self.pending.contains_key(&key) {
            return None;
        }
        if self.pending.len() >= MAX_PENDING {
            metrics::counter!("switchboard_webhook_debounce_overflow_total").increment(1);
            return Some(transition);
        }
        let deadline = now + self.delay;
        self.order.push_back((deadline, key.clone()));
        self.pending.insert(key, (deadline, transition));
        None
    }

    /// The leaves whose delay is over at `now`, in order.
    pub fn due(&mut self, now: Instant) -> Vec<Transition> {
        let mut due = Vec::new();
        while let Some((deadline, _)) = self.order.front() {
            if *deadline > now {
                break;
            }
            let Some((deadline, key)) = self.order.pop_front() else {
                break;
            };
            if self.pending.get(&key).is_some_and(|(d, _)| *d == deadline) {
                if let Some((_, transition)) = self.pending.remove(&key) {
                    due.push(transition);
                }
            }
        }
        due
    }

    /// When the next leave is due, if one waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order.front().map(|(deadline, _)| *deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vacated(channel: &str) -> Transition {
        Transition::ChannelVacated {
            app_id: "a".into(),
            channel: channel.into(),
        }
    }

    fn occupied(channel: &str) -> Transition {
        Transition::ChannelOccupied {
            app_id: "a".into(),
            channel: channel.into(),
        }
    }

    fn removed(user: &str) -> Transition {
        Transition::MemberRemoved {
            app_id: "a".into(),
            channel: "presence-room".into(),
            user_id: user.into(),
        }
    }

    fn added(user: &str) -> Transition {
        Transition::MemberAdded {
            app_id: "a".into(),
            channel: "presence-room".into(),
            user_id: user.into(),
        }
    }

    const DELAY: Duration = Duration::from_secs(3);

    #[test]
    fn arrivals_pass_at_once_and_leaves_after_the_delay() {
        let start = Instant::now();
        let mut debounce = Debounce::new(DELAY);
        assert_eq!(debounce.push(occupied("c"), start), Some(occupied("c")));
        assert_eq!(debounce.push(added("u"), start), Some(added("u")));
        assert_eq!(debounce.push(vacated("c"), start), None);
        assert_eq!(debounce.push(removed("u"), start), None);
        assert_eq!(debounce.next_deadline(), Some(start + DELAY));
        assert!(debounce
            .due(start + DELAY - Duration::from_millis(1))
            .is_empty());
        assert_eq!(debounce.due(start + DELAY), [vacated("c"), removed("u")]);
        assert_eq!(debounce.next_deadline(), None);
    }

    #[test]
    fn a_return_within_the_delay_cancels_both() {
        let start = Instant::now();
        let mut debounce = Debounce::new(DELAY);
        assert_eq!(debounce.push(removed("u"), start), None);
        let back = start + Duration::from_secs(1);
        assert_eq!(debounce.push(added("u"), back), None, "reload: no added");
        assert!(debounce.due(start + DELAY * 2).is_empty(), "and no removed");

        // Away again: a fresh delay from the new leave, not the cancelled one.
        let again = start + Duration::from_secs(2);
        assert_eq!(debounce.push(removed("u"), again), None);
        assert!(debounce.due(start + DELAY).is_empty());
        assert_eq!(debounce.due(again + DELAY), [removed("u")]);
        // Other users and channels are independent.
        assert_eq!(debounce.push(vacated("c"), again), None);
        assert_eq!(debounce.push(added("v"), again), Some(added("v")));
        assert_eq!(debounce.due(again + DELAY), [vacated("c")]);
    }

    #[test]
    fn no_delay_and_a_full_map_pass_at_once() {
        let now = Instant::now();
        let mut immediate = Debounce::new(Duration::ZERO);
        assert_eq!(immediate.push(vacated("c"), now), Some(vacated("c")));

        let mut debounce = Debounce::new(DELAY);
        for i in 0..MAX_PENDING {
            assert_eq!(debounce.push(vacated(&i.to_string()), now), None);
        }
        assert_eq!(
            debounce.push(vacated("one-more"), now),
            Some(vacated("one-more"))
        );
        assert_eq!(debounce.due(now + DELAY).len(), MAX_PENDING);
    }
}
