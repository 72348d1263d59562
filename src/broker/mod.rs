//! Shared domain state: virtual hosts, users, and the ids that tie connections to the
//! exclusive queues they own. No sockets, no frames: the channel layer calls in here.

pub mod args;
pub mod connections;
pub mod counters;
pub mod dead_letter;
pub mod definitions_json;
pub mod exchange;
pub mod message;
pub mod names;
pub mod paged;
pub mod persist;
pub mod queue;
pub mod queue_args;
pub mod stats;
pub mod vhost;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::config::Config;
use crate::config::Policy;
use crate::store::definitions::{Definitions, Loaded, PolicyDef, VhostDef};
use crate::store::{MessageStore, StoreOptions};
use vhost::VHost;

/// The two stores under the data directory: sled for definitions, the segment log for
/// persistent messages.
#[derive(Debug)]
pub struct Persistence {
    /// Durable definitions: users, vhosts, permissions, exchanges, queues and bindings.
    pub defs: Arc<Definitions>,
    /// Persistent messages of durable queues, and bodies paged out of memory.
    pub store: Arc<MessageStore>,
    /// How many message bytes queues may keep in memory.
    pub budget: Budget,
    /// Where deep queues spill the index of their paged-out messages (unlinked files).
    pub spill_dir: std::path::PathBuf,
    /// Where streams keep their logs, one directory each (`queue::stream_dir_name`).
    pub stream_dir: std::path::PathBuf,
}

/// The memory budget for queued messages: past it, bodies live only in the message log.
#[derive(Debug)]
pub struct Budget {
    /// Per queue, bytes.
    pub per_queue: usize,
    /// All queues together, bytes.
    pub total: usize,
    /// What all queues hold now.
    pub resident: std::sync::atomic::AtomicUsize,
}

/// Runs blocking disk I/O from inside the runtime (definition writes, a queue's spilled
/// index, waiting for a sync) without stalling the other tasks on this worker thread (on the
/// multi-threaded runtime); on a current-thread runtime (tests) or outside a runtime there is
/// nothing else to move, so it just runs.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Removes stream logs that no stored definition owns: a crash between deleting a
/// stream's definition and its files leaves them behind. (Owned by the definitions, not by
/// the streams restored: a log that failed to open is kept for the next boot.)
fn remove_orphan_streams(dir: &std::path::Path, loaded: &Loaded) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let owned: std::collections::HashSet<String> = loaded
        .queues
        .iter()
        .filter(|q| queue::stream::is_stream(&q.arguments))
        .map(|q| queue::stream_dir_name(&queue::store_key(&q.vhost, &q.name)))
        .collect();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !owned.contains(&name) {
            tracing::warn!(dir = %e.path().display(), "removing the log of a stream that no longer exists");
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove it");
            }
        }
    }
}

/// The broker: everything connections share.
#[derive(Debug)]
pub struct Broker {
    /// Settings from `rabbit.toml` and the command line.
    pub config: Config,
    /// Memory for message bodies being received in several frames, across connections
    /// (limited by `memory_budget`).
    pub content_budget: Arc<crate::protocol::content::ContentBudget>,
    /// Open client connections (for the management API, forced closes, limits).
    pub connections: Arc<connections::Registry>,
    vhosts: DashMap<String, Arc<VHost>>,
    /// Users and permissions.
    pub auth: crate::auth::Registry,
    next_connection: AtomicU64,
    persist: Option<Arc<Persistence>>,
    /// The statistics sampler's last sum over every queue (`stats`).
    pub sampled: parking_lot::Mutex<stats::Slot>,
    /// The memory and disk alarms (checked by `crate::alarms::monitor`, which the server
    /// runs).
    pub alarms: Arc<crate::alarms::Alarms>,
}

/// With the `test-hooks` feature (tests only): bytes per second the message log's disk is
/// slowed to, read by [`Broker::open`].
#[cfg(feature = "test-hooks")]
pub const TEST_DISK_RATE_ENV: &str = "WARREN_TEST_DISK_BYTES_PER_SEC";

impl Broker {
    /// A broker without persistence (nothing is written to disk).
    pub fn new(config: Config) -> Self {
        // Nothing to read, and nothing written: seeding cannot fail.
        Self::build(config, None, &Loaded::default()).expect("an in-memory broker")
    }

    /// Opens the stores under `config.data_dir`, recovers durable topology and persistent
    /// messages, and returns the broker.
    ///
    /// # Errors
    /// The stores could not be opened (for example, another broker uses the directory).
    pub fn open(config: Config) -> std::io::Result<Self> {
        #[allow(unused_mut)]
        let mut options = StoreOptions::default();
        // Tests of the broker binary model a slow disk through the environment.
        #[cfg(feature = "test-hooks")]
        if let Some(rate) = std::env::var(TEST_DISK_RATE_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
        {
            options.faults.write_bytes_per_sec = Some(rate);
        }
        Self::open_with(config, options)
    }

    /// [`Broker::open`] with explicit message-log options (segment size, fault injection).
    ///
    /// # Errors
    /// As [`Broker::open`].
    pub fn open_with(config: Config, mut options: StoreOptions) -> std::io::Result<Self> {
        // Messages are streamed into their queues, which keep only what fits their memory
        // budget: memory at boot stays bounded however deep the queues are.
        options.replay = true;
        let spill_dir = config.data_dir.join("spill");
        // Spill files are unlinked as soon as they are created; a crash in between leaves
        // one behind.
        match std::fs::remove_dir_all(&spill_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let defs = Definitions::open(&config.data_dir.join("definitions"))?;
        let loaded = defs.load()?;
        let started = std::time::Instant::now();
        let (store, mut recovery) = MessageStore::open(&config.data_dir.join("messages"), options)?;
        let persist = Arc::new(Persistence {
            defs: Arc::new(defs),
            store: Arc::new(store),
            budget: Budget {
                per_queue: config.queue_memory_budget as usize,
                total: config.memory_budget as usize,
                resident: Default::default(),
            },
            spill_dir,
            stream_dir: config.data_dir.join("streams"),
        });
        let b = Self::build(config, Some(persist.clone()), &loaded)?;
        let queues: std::collections::HashMap<String, Arc<queue::Queue>> = b
            .vhosts
            .iter()
            .flat_map(|v| v.restore(&loaded))
            .map(|q| (q.store_key().to_owned(), q))
            .collect();
        remove_orphan_streams(&persist.stream_dir, &loaded);
        let mut counts = std::collections::HashMap::<&str, u64>::new();
        recovery.replay(|key, m, payload| match queues.get(key) {
            Some(q) => {
                if q.restore(m, payload) {
                    *counts.entry(&q.name).or_default() += 1;
                }
            }
            // A delayed exchange's pending message, or a queue that no longer exists.
            None => {
                if !b.restore_delayed(key, &m, payload) {
                    persist.store.ack(m.id)
                }
            }
        })?;
        for q in queues.values() {
            q.restored();
            if let Some(n) = counts.get(&*q.name) {
                tracing::info!(queue = %q.name, messages = n, "recovered queue");
            }
        }
        tracing::info!(
            exchanges = loaded.exchanges.len(),
            queues = loaded.queues.len(),
            bindings = loaded.bindings.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered definitions and messages"
        );
        Ok(b)
    }

    /// Boot: hands a recovered record to its delayed exchange; false if it has none.
    fn restore_delayed(
        &self,
        key: &str,
        m: &crate::store::RecoveredMessage,
        payload: &[u8],
    ) -> bool {
        let Some((vhost, exchange)) = exchange::delayed::parse_log_key(key) else {
            return false;
        };
        let Some(v) = self.vhost(vhost) else {
            return false;
        };
        let Some(x) = v.exchange(exchange) else {
            return false;
        };
        v.delayed().restore(&x, m, payload)
    }

    fn build(
        config: Config,
        persist: Option<Arc<Persistence>>,
        loaded: &Loaded,
    ) -> std::io::Result<Self> {
        let b = Self {
            content_budget: crate::protocol::content::ContentBudget::new(
                config.memory_budget as usize,
            ),
            connections: Arc::default(),
            vhosts: DashMap::new(),
            auth: crate::auth::Registry::new(persist.as_ref().map(|p| p.defs.clone())),
            next_connection: AtomicU64::new(1),
            sampled: Default::default(),
            alarms: Arc::new(crate::alarms::Alarms::new(&config)),
            persist,
            config,
        };
        b.auth.load(loaded);
        for v in &loaded.vhosts {
            b.insert_vhost(v.clone());
        }
        for p in &loaded.policies {
            match (
                b.vhost(&p.vhost),
                Policy::from_json(&p.name, &p.pattern, &p.apply_to, p.priority, &p.definition),
            ) {
                (Some(v), Ok((policy, _))) => v.put_policy(p.clone(), policy),
                (_, Err(e)) => {
                    tracing::error!(policy = %p.name, vhost = %p.vhost, "skipping a stored policy: {e}")
                }
                (None, _) => {}
            }
        }
        if !loaded.seeded {
            b.seed()?;
        }
        Ok(b)
    }

    /// First boot (as RabbitMQ's): the default vhost, and the default user as an
    /// administrator with every permission in it, unless users exist already (an import).
    fn seed(&self) -> std::io::Result<()> {
        let vhost = self.config.default_vhost.clone();
        if self.vhost(&vhost).is_none() {
            self.add_vhost(VhostDef {
                name: vhost.clone(),
                description: "Default virtual host".into(),
                tags: Vec::new(),
                default_queue_type: None,
                limits: Default::default(),
            })?;
        }
        if self.auth.is_empty() {
            let user = &self.config.default_user;
            self.auth.put_user(
                user,
                crate::auth::Password::Clear(self.config.default_pass.clone()),
                vec!["administrator".into()],
                None,
            )?;
            self.auth.set_permission(&vhost, user, ".*", ".*", ".*")?;
        }
        if let Some(p) = &self.persist {
            blocking(|| p.defs.mark_seeded())?;
        }
        Ok(())
    }

    fn insert_vhost(&self, def: VhostDef) -> Arc<VHost> {
        // Policies from rabbit.toml apply to the default vhost.
        let policies = if def.name == self.config.default_vhost {
            self.config.policies.clone()
        } else {
            Vec::new()
        };
        let v = VHost::new(&def.name, policies, self.persist.clone());
        v.set_meta(def);
        self.vhosts.insert(v.name.clone(), v.clone());
        v
    }

    /// Creates a vhost, or updates its metadata and limits when it exists. Returns whether
    /// it was created.
    ///
    /// # Errors
    /// The definitions store's error.
    pub fn add_vhost(&self, def: VhostDef) -> std::io::Result<bool> {
        if def.name.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "vhost name must not be empty",
            ));
        }
        if let Some(p) = &self.persist {
            blocking(|| p.defs.put_vhost(&def))?;
        }
        if let Some(v) = self.vhost(&def.name) {
            v.set_meta(def);
            return Ok(false);
        }
        self.insert_vhost(def);
        Ok(true)
    }

    /// Imports the `load_definitions` file, if configured (at boot).
    ///
    /// # Errors
    /// The file cannot be read or parsed, or a definition in it is refused; the text names
    /// the file and the definition.
    pub fn load_definitions(&self) -> Result<(), String> {
        let Some(path) = &self.config.load_definitions else {
            return Ok(());
        };
        let name = path.display();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("load_definitions {name}: {e}"))?;
        let defs: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("load_definitions {name}: {e}"))?;
        definitions_json::import(self, &defs, None)
            .map_err(|e| format!("load_definitions {name}: {e}"))?;
        tracing::info!(file = %name, "imported definitions");
        Ok(())
    }

    /// Sets a runtime policy in a vhost (stored, then applied to later declares). Returns
    /// the definition keys Warren does not implement, which were left out.
    ///
    /// # Errors
    /// `NotFound` for an unknown vhost, `InvalidInput` for a bad policy, or the store's.
    pub fn put_policy(&self, def: PolicyDef) -> std::io::Result<Vec<String>> {
        let v = self.vhost(&def.vhost).ok_or(std::io::ErrorKind::NotFound)?;
        let (policy, skipped) = Policy::from_json(
            &def.name,
            &def.pattern,
            &def.apply_to,
            def.priority,
            &def.definition,
        )
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        if let Some(p) = &self.persist {
            blocking(|| p.defs.put_policy(&def))?;
        }
        v.put_policy(def, policy);
        Ok(skipped)
    }

    /// Removes a runtime policy; returns whether it existed.
    ///
    /// # Errors
    /// The store's error.
    pub fn delete_policy(&self, vhost: &str, name: &str) -> std::io::Result<bool> {
        let Some(v) = self.vhost(vhost) else {
            return Ok(false);
        };
        if let Some(p) = &self.persist {
            blocking(|| p.defs.delete_policy(vhost, name))?;
        }
        Ok(v.delete_policy(name))
    }

    /// Samples every queue of every vhost once: each queue's statistics slot, each vhost's
    /// sum and the broker's (`stats`). Blocking work (one short lock per queue): run it off
    /// the reactor.
    pub fn sample_statistics(&self) {
        let now = std::time::Instant::now();
        let mut all = stats::Figures::default();
        let (mut queues, mut consumers) = (0, 0);
        for v in self.vhosts() {
            let mut sum = stats::Figures::default();
            let (mut vq, mut vc) = (0u64, 0u64);
            v.for_each_queue(|q| {
                let (f, c) = q.figures();
                q.stats.sampled.lock().record(now, f);
                sum.add(&f);
                vq += 1;
                vc += u64::from(c);
            });
            {
                let mut slot = v.sampled.lock();
                slot.record(now, sum);
                slot.queues = vq;
                slot.consumers = vc;
            }
            all.add(&sum);
            queues += vq;
            consumers += vc;
        }
        let mut slot = self.sampled.lock();
        slot.record(now, all);
        slot.queues = queues;
        slot.consumers = consumers;
    }

    /// Samples statistics now and then every `interval`, until the runtime stops.
    pub async fn run_sampler(self: Arc<Self>, interval: std::time::Duration) {
        let interval = interval.max(std::time::Duration::from_millis(10));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let b = self.clone();
            if tokio::task::spawn_blocking(move || b.sample_statistics())
                .await
                .is_err()
            {
                tracing::warn!("statistics sample failed");
            }
        }
    }

    /// How many vhosts there are.
    pub fn vhost_count(&self) -> usize {
        self.vhosts.len()
    }

    /// Every vhost, sorted by name.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut v: Vec<_> = self.vhosts.iter().map(|v| v.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Deletes a vhost and everything in it: its queues (persisted messages included),
    /// exchanges, bindings and permissions. The caller closes its connections. Returns
    /// whether it existed.
    ///
    /// # Errors
    /// The definitions store's error.
    pub fn delete_vhost(&self, name: &str) -> std::io::Result<bool> {
        let Some((_, v)) = self.vhosts.remove(name) else {
            return Ok(false);
        };
        v.delete_everything();
        if let Some(p) = &self.persist {
            blocking(|| p.defs.delete_vhost(name))?;
        }
        self.auth.forget_vhost(name);
        Ok(true)
    }

    /// Looks a vhost up.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    /// The message log's durable watermark, for publisher confirms (None without
    /// persistence).
    pub fn watermark(&self) -> Option<crate::store::Watermark> {
        self.persist.as_ref().map(|p| p.store.watermark())
    }

    /// Writes and syncs everything pending in the message log (at shutdown).
    pub fn flush(&self) {
        if let Some(p) = &self.persist
            && let Err(e) = p.store.flush()
        {
            tracing::error!("message log flush at shutdown failed: {e}");
        }
    }

    /// A fresh connection id (exclusive queues remember theirs).
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::blocking;

    /// Disk work is reached from worker tasks, `block_on` (recovery), single-threaded test
    /// runtimes and plain threads; none of them may panic, and on a worker the other tasks
    /// keep running while it blocks.
    #[test]
    fn blocking_runs_in_every_context() {
        assert_eq!(blocking(|| 1), 1);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { blocking(|| 2) }), 2);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(multi.block_on(async { blocking(|| 3) }), 3);
        let got = multi.block_on(async {
            // The single worker blocks until a task spawned after it has run: without the
            // hand-off that task would never get a thread and this would hang.
            let (tx, rx) = std::sync::mpsc::channel();
            let (started, is_blocking) = tokio::sync::oneshot::channel();
            let blocked = tokio::spawn(async move {
                blocking(|| {
                    started.send(()).unwrap();
                    rx.recv_timeout(std::time::Duration::from_secs(10))
                })
            });
            is_blocking.await.unwrap();
            tokio::spawn(async move { tx.send(4).unwrap() });
            blocked.await.unwrap()
        });
        assert_eq!(got, Ok(4));
    }
}
