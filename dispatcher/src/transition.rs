//! Cluster-wide changes of a channel's occupancy and of a presence channel's members: what
//! Pusher's `channel_occupied`/`channel_vacated`/`member_added`/`member_removed` webhooks report.
//! Every node derives the same transitions from its cluster view (its own sockets plus the
//! other nodes' reported state); one node turns them into webhooks.

/// One change as the cluster as a whole sees it, never a single node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The channel's first subscriber anywhere in the cluster arrived.
    ChannelOccupied { app_id: String, channel: String },
    /// The channel's last subscriber anywhere in the cluster left (or its node died).
    ChannelVacated { app_id: String, channel: String },
    /// The user's first socket on the presence channel, across all nodes, subscribed.
    MemberAdded {
        app_id: String,
        channel: String,
        user_id: String,
    },
    /// The user's last socket on the presence channel, across all nodes, left.
    MemberRemoved {
        app_id: String,
        channel: String,
        user_id: String,
    },
}
