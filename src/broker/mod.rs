//! Shared domain state: virtual hosts, users, and the ids that tie connections to the
//! exclusive queues they own. No sockets, no frames: the channel layer calls in here.

pub mod args;
pub mod dead_letter;
pub mod exchange;
pub mod message;
pub mod names;
pub mod queue;
pub mod queue_args;
pub mod vhost;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::config::Config;
use vhost::VHost;

/// The broker: everything connections share.
#[derive(Debug)]
pub struct Broker {
    /// Settings from `rabbit.toml` and the command line.
    pub config: Config,
    vhosts: DashMap<String, Arc<VHost>>,
    users: DashMap<String, String>,
    next_connection: AtomicU64,
}

impl Broker {
    /// A broker with the configured default user and vhost.
    pub fn new(config: Config) -> Self {
        let b = Self {
            vhosts: DashMap::new(),
            users: DashMap::new(),
            next_connection: AtomicU64::new(1),
            config,
        };
        b.vhosts.insert(
            b.config.default_vhost.clone(),
            VHost::new(&b.config.default_vhost, b.config.policies.clone()),
        );
        b.users
            .insert(b.config.default_user.clone(), b.config.default_pass.clone());
        b
    }

    /// Looks a vhost up.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    /// Checks a user's password.
    pub fn authenticate(&self, user: &str, pass: &str) -> bool {
        self.users.get(user).is_some_and(|p| p.as_str() == pass)
    }

    /// A fresh connection id (exclusive queues remember theirs).
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}
