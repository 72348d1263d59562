//! The registry of open client connections: who is connected, from where, as whom, to
//! which vhost, and a way to close any of them from outside (the management API's
//! `DELETE /api/connections/{name}`, and vhost deletion or connection limits later).
//!
//! The connection task registers itself once its handshake is done and unregisters when
//! it ends (through [`Registered`], a drop guard, so a panic cannot leave an entry
//! behind). The entry is shared (`Arc`) between the registry and the task; the task writes
//! the channel list on `channel.open` / `channel.close`, and each channel its
//! [`ChannelView`] (relaxed stores to its own atomics, read only by the management API and
//! the metrics endpoint, which also reads the [`Totals`] of what closed). Knows nothing of
//! sockets or frames: a forced close is a request the connection task picks up in its
//! `select!` and answers with `connection.close` 320.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use amq_protocol::types::FieldTable;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::counters::{Counters, Counts};

/// One open connection, as the registry and the connection task share it.
#[derive(Debug)]
pub struct ConnEntry {
    /// The broker-wide connection id (exclusive queues remember it).
    pub id: u64,
    /// RabbitMQ's connection name, `"127.0.0.1:53418 -> 127.0.0.1:5672"`.
    pub name: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Authenticated user.
    pub user: String,
    /// The vhost it opened.
    pub vhost: String,
    /// `connection.start-ok` client properties (product, version, capabilities, ...).
    pub client_properties: FieldTable,
    /// When the handshake finished, ms since the epoch.
    pub connected_at: u64,
    /// Negotiated frame_max, channel_max and heartbeat.
    pub frame_max: u32,
    /// Negotiated channel_max.
    pub channel_max: u16,
    /// Negotiated heartbeat, seconds.
    pub heartbeat: u16,
    /// Channels open now; written by the connection task on channel.open / close only.
    pub channels: AtomicU32,
    /// The open channels' views, by number.
    views: Mutex<BTreeMap<u16, Arc<ChannelView>>>,
    /// The SASL mechanism the client logged in with (`PLAIN`, `AMQPLAIN`, `EXTERNAL`).
    pub auth_mechanism: &'static str,
    /// The connection is AMQPS.
    pub ssl: bool,
    /// Why someone asked this connection to close (set before `kill` is notified).
    reason: Mutex<Option<String>>,
    /// The registry's totals, where this connection's channels' counts go when they close.
    totals: Arc<Totals>,
    /// Holding a publish until the resource alarms clear (RabbitMQ's `blocked` state).
    pub blocked: AtomicBool,
    /// Wakes the connection task to close with 320. `notify_one` keeps a permit when the
    /// task is not waiting at that moment, so a request is never lost.
    kill: Notify,
}

/// What the management API shows of one channel, written by the channel itself (relaxed
/// stores after the methods and deliveries that change it) and read by the API.
#[derive(Debug, Default)]
pub struct ChannelView {
    /// Per-consumer `basic.qos` prefetch count.
    pub prefetch_count: AtomicU32,
    /// Channel-wide (`global`) prefetch count.
    pub global_prefetch_count: AtomicU32,
    /// In confirm mode.
    pub confirm: AtomicBool,
    /// In transaction mode.
    pub transactional: AtomicBool,
    /// Consumers on the channel.
    pub consumer_count: AtomicU32,
    /// Deliveries not yet acknowledged.
    pub messages_unacknowledged: AtomicU32,
    /// Publishes not yet confirmed.
    pub messages_unconfirmed: AtomicU32,
    /// The channel's message counts (the metrics endpoint's global counters).
    pub counts: Counters,
}

/// What outlives connections and channels: the counts of those that closed, and how many
/// opened and closed (RabbitMQ's `*_opened_total` / `*_closed_total`).
#[derive(Debug, Default)]
pub struct Totals {
    /// Message counts of closed channels. Its lock is also held while a scrape sums the
    /// open ones, so a channel's counts are seen exactly once, never twice or not at all.
    retired: Mutex<Counts>,
    /// Connections opened since boot.
    pub connections_opened: AtomicU64,
    /// Connections closed since boot.
    pub connections_closed: AtomicU64,
    /// Channels opened since boot.
    pub channels_opened: AtomicU64,
    /// Channels closed since boot.
    pub channels_closed: AtomicU64,
}

impl ConnEntry {
    /// A new entry; `name` is derived from the two addresses as RabbitMQ does.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        user: &str,
        vhost: &str,
        client_properties: FieldTable,
        (frame_max, channel_max, heartbeat): (u32, u16, u16),
    ) -> Self {
        Self {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user: user.into(),
            vhost: vhost.into(),
            client_properties,
            connected_at: crate::broker::queue::now_ms(),
            frame_max,
            channel_max,
            heartbeat,
            channels: AtomicU32::new(0),
            views: Mutex::default(),
            auth_mechanism: "PLAIN",
            ssl: false,
            reason: Mutex::new(None),
            totals: Arc::default(),
            blocked: AtomicBool::new(false),
            kill: Notify::new(),
        }
    }

    /// Open channels.
    pub fn channel_count(&self) -> u32 {
        self.channels.load(Ordering::Relaxed)
    }

    /// Records the channel count (the connection task, on channel.open / close).
    pub fn set_channels(&self, n: usize) {
        self.channels.store(n as u32, Ordering::Relaxed);
    }

    /// With the mechanism the client logged in with.
    #[must_use]
    pub fn with_mechanism(mut self, mechanism: &'static str) -> Self {
        self.auth_mechanism = mechanism;
        self
    }

    /// Marks an AMQPS connection.
    #[must_use]
    pub fn with_ssl(mut self, ssl: bool) -> Self {
        self.ssl = ssl;
        self
    }

    /// A channel was opened: its view, for the channel to keep up to date.
    pub fn open_channel(&self, number: u16) -> Arc<ChannelView> {
        let v = Arc::new(ChannelView::default());
        self.views.lock().insert(number, v.clone());
        self.totals.channels_opened.fetch_add(1, Ordering::Relaxed);
        v
    }

    /// A channel is gone: its counts join the retired ones.
    pub fn close_channel(&self, number: u16) {
        let mut retired = self.totals.retired.lock();
        if let Some(v) = self.views.lock().remove(&number) {
            retired.add(&v.counts.read());
            self.totals.channels_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The open channels' views, by number.
    pub fn channel_views(&self) -> Vec<(u16, Arc<ChannelView>)> {
        self.views
            .lock()
            .iter()
            .map(|(n, v)| (*n, v.clone()))
            .collect()
    }

    /// Asks the connection to close with 320 CONNECTION_FORCED and `reason` as its text.
    pub fn close(&self, reason: &str) {
        *self.reason.lock() = Some(reason.into());
        self.kill.notify_one();
    }

    /// Resolves once someone asked this connection to close; returns the reason. For the
    /// connection task's `select!` (cancel-safe: the permit stays until it is taken).
    pub async fn close_requested(&self) -> String {
        self.kill.notified().await;
        self.reason.lock().take().unwrap_or_default()
    }
}

/// Every open connection, by id.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: DashMap<u64, Arc<ConnEntry>>,
    /// Counts and totals of what closed.
    pub totals: Arc<Totals>,
}

/// Removes its entry from the registry when dropped (the connection task ended).
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    /// The entry, shared with the registry.
    pub entry: Arc<ConnEntry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let totals = &self.registry.totals;
        let mut retired = totals.retired.lock();
        let views = std::mem::take(&mut *self.entry.views.lock());
        for v in views.values() {
            retired.add(&v.counts.read());
        }
        totals
            .channels_closed
            .fetch_add(views.len() as u64, Ordering::Relaxed);
        totals.connections_closed.fetch_add(1, Ordering::Relaxed);
        self.registry.by_id.remove(&self.entry.id);
    }
}

impl Registry {
    /// Adds an opened connection; it stays listed until the guard is dropped.
    pub fn register(self: &Arc<Self>, mut entry: ConnEntry) -> Registered {
        entry.totals = self.totals.clone();
        self.totals
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(entry);
        self.by_id.insert(entry.id, entry.clone());
        Registered {
            registry: self.clone(),
            entry,
        }
    }

    /// The message counts of every channel since boot, open and closed.
    pub fn message_counts(&self) -> Counts {
        let retired = self.totals.retired.lock();
        let mut sum = *retired;
        for e in self.by_id.iter() {
            for v in e.views.lock().values() {
                sum.add(&v.counts.read());
            }
        }
        sum
    }

    /// Every open connection, oldest first.
    pub fn list(&self) -> Vec<Arc<ConnEntry>> {
        let mut all: Vec<_> = self.by_id.iter().map(|e| e.clone()).collect();
        all.sort_by_key(|e| e.id);
        all
    }

    /// The connection with this RabbitMQ-style name.
    pub fn get_by_name(&self, name: &str) -> Option<Arc<ConnEntry>> {
        self.by_id
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.clone())
    }

    /// The connection with this id.
    pub fn get(&self, id: u64) -> Option<Arc<ConnEntry>> {
        self.by_id.get(&id).map(|e| e.clone())
    }

    /// Asks one connection to close with 320 and `reason`; false when it is not open.
    pub fn close(&self, id: u64, reason: &str) -> bool {
        match self.get(id) {
            Some(e) => {
                e.close(reason);
                true
            }
            None => false,
        }
    }

    /// Asks every connection to `vhost` to close; returns how many were asked.
    pub fn close_vhost(&self, vhost: &str, reason: &str) -> usize {
        let mut n = 0;
        for e in self.by_id.iter().filter(|e| e.vhost == vhost) {
            e.close(reason);
            n += 1;
        }
        n
    }

    /// Asks every connection of `user` to close; returns how many were asked.
    pub fn close_user(&self, user: &str, reason: &str) -> usize {
        let mut n = 0;
        for e in self.by_id.iter().filter(|e| e.user == user) {
            e.close(reason);
            n += 1;
        }
        n
    }

    /// Open connections of `user`.
    pub fn count_user(&self, user: &str) -> usize {
        self.by_id.iter().filter(|e| e.user == user).count()
    }

    /// Channels open on all of `user`'s connections.
    pub fn channels_of_user(&self, user: &str) -> usize {
        self.by_id
            .iter()
            .filter(|e| e.user == user)
            .map(|e| e.channel_count() as usize)
            .sum()
    }

    /// Open connections to `vhost`.
    pub fn count_vhost(&self, vhost: &str) -> usize {
        self.by_id.iter().filter(|e| e.vhost == vhost).count()
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No connection is open.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, port: u16, vhost: &str) -> ConnEntry {
        ConnEntry::new(
            id,
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], 5672)),
            "guest",
            vhost,
            FieldTable::default(),
            (131072, 2047, 60),
        )
    }

    #[test]
    fn entries_are_named_counted_and_leave_with_their_guard() {
        let r = Arc::new(Registry::default());
        let a = r.register(entry(1, 50001, "/"));
        let b = r.register(entry(2, 50002, "other"));
        assert_eq!(a.entry.name, "127.0.0.1:50001 -> 127.0.0.1:5672");
        assert_eq!(r.list().len(), 2);
        assert_eq!(r.count_user("guest"), 2);
        assert_eq!(r.count_vhost("/"), 1);
        assert_eq!(
            r.get_by_name("127.0.0.1:50002 -> 127.0.0.1:5672")
                .map(|e| e.id),
            Some(2)
        );
        drop(b);
        assert_eq!(r.count_vhost("other"), 0);
        assert!(!r.close(2, "gone"));
        assert!(r.close(1, "bye"));
        assert_eq!(r.close_vhost("/", "bye"), 1);
    }

    #[tokio::test]
    async fn a_close_request_made_before_anyone_waits_is_kept() {
        let e = entry(1, 50001, "/");
        e.close("because");
        assert_eq!(e.close_requested().await, "because");
    }
}
