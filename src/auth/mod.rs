//! Users, their passwords and tags, and who may do what in which vhost: the registry
//! connections log in against and channels check permissions with.
//!
//! Owns users, permissions and topic permissions, in memory (DashMaps read on login and on a
//! channel's first check of a resource) and in the definitions store (written and synced
//! before a change is acknowledged). Every change bumps a generation counter, which channels
//! compare (one relaxed load) to know their cached answers are stale. Talks to the store
//! only; the broker owns vhosts and calls in here.

pub mod password;
pub mod permissions;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::store::definitions::{Definitions, Loaded, PermissionDef, TopicPermissionDef, UserDef};
pub use password::Algorithm;
pub use permissions::{Cache, Compiled, CompiledTopic, Grant, Kind, Perm, Subject};

/// A user.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Name.
    pub name: String,
    /// base64(salt ‖ digest), or empty: no password login.
    pub password_hash: String,
    /// How `password_hash` was made.
    pub algorithm: Algorithm,
    /// Tags, as given (`administrator`, `monitoring`, `policymaker`, `management`,
    /// `impersonator`, or anything else).
    pub tags: Vec<String>,
    /// `max-connections` (None: unlimited).
    pub max_connections: Option<u64>,
    /// `max-channels` across the user's connections (None: unlimited).
    pub max_channels: Option<u64>,
}

impl User {
    /// Whether the user has `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    fn def(&self) -> UserDef {
        let mut limits = std::collections::BTreeMap::new();
        if let Some(n) = self.max_connections {
            limits.insert("max-connections".into(), n as i64);
        }
        if let Some(n) = self.max_channels {
            limits.insert("max-channels".into(), n as i64);
        }
        UserDef {
            name: self.name.clone(),
            password_hash: self.password_hash.clone(),
            hashing_algorithm: self.algorithm.name().into(),
            tags: self.tags.clone(),
            limits,
        }
    }

    fn from_def(d: &UserDef) -> Option<Self> {
        let limit = |k: &str| d.limits.get(k).and_then(|&n| u64::try_from(n).ok());
        Some(Self {
            name: d.name.clone(),
            password_hash: d.password_hash.clone(),
            algorithm: Algorithm::parse(&d.hashing_algorithm)?,
            tags: d.tags.clone(),
            max_connections: limit("max-connections"),
            max_channels: limit("max-channels"),
        })
    }
}

/// A password as given to [`Registry::put_user`].
#[derive(Debug, Clone)]
pub enum Password {
    /// Hash this (SHA-256, fresh salt).
    Clear(String),
    /// Already hashed (from definitions or the HTTP API's `password_hash`); empty = none.
    Hashed {
        /// base64(salt ‖ digest).
        hash: String,
        /// Its algorithm.
        algorithm: Algorithm,
    },
    /// Keep the current one (a tags-only update); none for a new user.
    Keep,
}

/// Users and permissions.
#[derive(Debug)]
pub struct Registry {
    users: DashMap<String, Arc<User>>,
    /// (vhost, user) → permissions.
    perms: DashMap<(String, String), Arc<Compiled>>,
    /// (vhost, user) → topic permissions, one per exchange.
    topics: DashMap<(String, String), Arc<Vec<CompiledTopic>>>,
    generation: AtomicU64,
    defs: Option<Arc<Definitions>>,
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why.into())
}

impl Registry {
    /// An empty registry writing through to `defs` (None: memory only).
    pub fn new(defs: Option<Arc<Definitions>>) -> Self {
        Self {
            users: DashMap::new(),
            perms: DashMap::new(),
            topics: DashMap::new(),
            generation: AtomicU64::new(1),
            defs,
        }
    }

    /// Loads what the store holds (boot). A record that no longer compiles or names an
    /// unknown algorithm is logged and skipped.
    pub fn load(&self, loaded: &Loaded) {
        for d in &loaded.users {
            match User::from_def(d) {
                Some(u) => {
                    self.users.insert(u.name.clone(), Arc::new(u));
                }
                None => {
                    tracing::error!(user = %d.name, algorithm = %d.hashing_algorithm, "skipping a stored user with an unknown hashing algorithm")
                }
            }
        }
        for p in &loaded.permissions {
            match Compiled::new(&p.configure, &p.write, &p.read) {
                Ok(c) => {
                    self.perms
                        .insert((p.vhost.clone(), p.user.clone()), Arc::new(c));
                }
                Err(e) => {
                    tracing::error!(user = %p.user, vhost = %p.vhost, "skipping stored permissions: {e}")
                }
            }
        }
        for t in &loaded.topic_permissions {
            if let Err(e) = self.insert_topic(t) {
                tracing::error!(user = %t.user, vhost = %t.vhost, "skipping stored topic permissions: {e}");
            }
        }
    }

    /// Moves the generation on: every channel re-reads its grant at its next check.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current generation (one relaxed load; channels compare it with their cache's).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn save(&self, f: impl FnOnce(&Definitions) -> io::Result<()>) -> io::Result<()> {
        match &self.defs {
            Some(d) => crate::broker::blocking(|| f(d)),
            None => Ok(()),
        }
    }

    /// The user `name` when `password` is right (and the user has one).
    pub fn login(&self, name: &str, password: &str) -> Option<Arc<User>> {
        let u = self.users.get(name)?.clone();
        password::verify(u.algorithm, &u.password_hash, password).then_some(u)
    }

    /// A user.
    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.get(name).map(|u| u.clone())
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> Vec<Arc<User>> {
        let mut v: Vec<_> = self.users.iter().map(|u| u.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Whether no user exists.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Creates or updates a user. Limits are kept on update unless given.
    /// Returns whether it was created.
    ///
    /// # Errors
    /// `InvalidInput` for a malformed hash or an empty name; the store's error otherwise.
    pub fn put_user(
        &self,
        name: &str,
        password: Password,
        tags: Vec<String>,
        limits: Option<(Option<u64>, Option<u64>)>,
    ) -> io::Result<bool> {
        if name.is_empty() {
            return Err(invalid("user name must not be empty"));
        }
        let old = self.user(name);
        let (password_hash, algorithm) = match password {
            Password::Clear(p) => (password::hash(Algorithm::Sha256, &p), Algorithm::Sha256),
            Password::Hashed { hash, algorithm } => {
                if !password::well_formed(algorithm, &hash) {
                    return Err(invalid(format!(
                        "password_hash is not a {} hash",
                        algorithm.name()
                    )));
                }
                (hash, algorithm)
            }
            Password::Keep => old
                .as_ref()
                .map(|u| (u.password_hash.clone(), u.algorithm))
                .unwrap_or_default(),
        };
        let (max_connections, max_channels) = limits.unwrap_or_else(|| {
            old.as_ref()
                .map_or((None, None), |u| (u.max_connections, u.max_channels))
        });
        let u = User {
            name: name.into(),
            password_hash,
            algorithm,
            tags,
            max_connections,
            max_channels,
        };
        self.save(|d| d.put_user(&u.def()))?;
        self.users.insert(name.into(), Arc::new(u));
        self.changed();
        Ok(old.is_none())
    }

    /// Sets a user's limits (None: unlimited).
    ///
    /// # Errors
    /// `NotFound` for an unknown user; the store's error otherwise.
    pub fn set_user_limits(
        &self,
        name: &str,
        max_connections: Option<u64>,
        max_channels: Option<u64>,
    ) -> io::Result<()> {
        let mut u = User::clone(&*self.user(name).ok_or(io::ErrorKind::NotFound)?);
        u.max_connections = max_connections;
        u.max_channels = max_channels;
        self.save(|d| d.put_user(&u.def()))?;
        self.users.insert(name.into(), Arc::new(u));
        self.changed();
        Ok(())
    }

    /// Deletes a user and its permissions. Returns whether it existed.
    ///
    /// # Errors
    /// The store's error.
    pub fn delete_user(&self, name: &str) -> io::Result<bool> {
        if self.user(name).is_none() {
            return Ok(false);
        }
        self.save(|d| d.delete_user(name))?;
        self.users.remove(name);
        self.perms.retain(|(_, u), _| u != name);
        self.topics.retain(|(_, u), _| u != name);
        self.changed();
        Ok(true)
    }

    /// What `user` may do in `vhost` now.
    pub fn grant(&self, vhost: &str, user: &str) -> Grant {
        let key = (vhost.to_owned(), user.to_owned());
        Grant {
            perms: self.perms.get(&key).map(|p| p.clone()),
            topics: self.topics.get(&key).map(|t| t.clone()).unwrap_or_default(),
        }
    }

    /// Whether `user` has any permissions in `vhost` (needed to open it).
    pub fn has_access(&self, vhost: &str, user: &str) -> bool {
        self.perms
            .contains_key(&(vhost.to_owned(), user.to_owned()))
    }

    /// Sets a user's permissions in a vhost (the caller checked both exist).
    ///
    /// # Errors
    /// `InvalidInput` for a pattern that does not compile; the store's error otherwise.
    pub fn set_permission(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> io::Result<()> {
        let c = Compiled::new(configure, write, read).map_err(invalid)?;
        self.save(|d| {
            d.put_permission(&PermissionDef {
                user: user.into(),
                vhost: vhost.into(),
                configure: configure.into(),
                write: write.into(),
                read: read.into(),
            })
        })?;
        self.perms.insert((vhost.into(), user.into()), Arc::new(c));
        self.changed();
        Ok(())
    }

    /// Clears a user's permissions in a vhost. Returns whether there were any.
    ///
    /// # Errors
    /// The store's error.
    pub fn clear_permission(&self, vhost: &str, user: &str) -> io::Result<bool> {
        let key = (vhost.to_owned(), user.to_owned());
        if !self.perms.contains_key(&key) {
            return Ok(false);
        }
        self.save(|d| d.delete_permission(vhost, user))?;
        self.perms.remove(&key);
        self.changed();
        Ok(true)
    }

    /// Every permission, sorted by vhost then user.
    pub fn permissions(&self) -> Vec<PermissionDef> {
        let mut v: Vec<_> = self
            .perms
            .iter()
            .map(|e| {
                let ((vhost, user), p) = (e.key(), e.value());
                PermissionDef {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    configure: p.configure.clone(),
                    write: p.write.clone(),
                    read: p.read.clone(),
                }
            })
            .collect();
        v.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
        v
    }

    fn insert_topic(&self, t: &TopicPermissionDef) -> Result<(), String> {
        // RabbitMQ expands these variables in topic patterns.
        let expand = |p: &str| {
            p.replace("{username}", &regex::escape(&t.user))
                .replace("{vhost}", &regex::escape(&t.vhost))
        };
        let c = CompiledTopic::new(&t.exchange, &expand(&t.write), &expand(&t.read))?;
        let key = (t.vhost.clone(), t.user.clone());
        let mut list: Vec<CompiledTopic> = Vec::new();
        if let Some(old) = self.topics.get(&key) {
            for o in old.iter().filter(|o| o.exchange != t.exchange) {
                list.push(CompiledTopic::new(&o.exchange, &o.write, &o.read)?);
            }
        }
        // The patterns as given, for listing; the compiled ones are expanded.
        let mut c = c;
        c.write = t.write.clone();
        c.read = t.read.clone();
        list.push(c);
        self.topics.insert(key, Arc::new(list));
        Ok(())
    }

    /// Sets a user's topic permissions on an exchange of a vhost.
    ///
    /// # Errors
    /// `InvalidInput` for a pattern that does not compile; the store's error otherwise.
    pub fn set_topic_permission(&self, t: &TopicPermissionDef) -> io::Result<()> {
        // Compile first, so a bad pattern is refused before anything is stored.
        CompiledTopic::new(&t.exchange, &t.write, &t.read).map_err(invalid)?;
        self.save(|d| d.put_topic_permission(t))?;
        self.insert_topic(t).map_err(invalid)?;
        self.changed();
        Ok(())
    }

    /// Clears a user's topic permissions in a vhost (on one exchange, or all).
    ///
    /// # Errors
    /// The store's error.
    pub fn clear_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: Option<&str>,
    ) -> io::Result<()> {
        self.save(|d| d.delete_topic_permissions(vhost, user, exchange))?;
        let key = (vhost.to_owned(), user.to_owned());
        let keep: Vec<TopicPermissionDef> = self
            .topic_permissions()
            .into_iter()
            .filter(|t| {
                t.vhost == vhost && t.user == user && exchange.is_some_and(|x| t.exchange != x)
            })
            .collect();
        self.topics.remove(&key);
        for t in &keep {
            let _ = self.insert_topic(t);
        }
        self.changed();
        Ok(())
    }

    /// Every topic permission, sorted by vhost, user, exchange.
    pub fn topic_permissions(&self) -> Vec<TopicPermissionDef> {
        let mut v: Vec<_> = self
            .topics
            .iter()
            .flat_map(|e| {
                let (vhost, user) = e.key().clone();
                e.value()
                    .iter()
                    .map(|t| TopicPermissionDef {
                        user: user.clone(),
                        vhost: vhost.clone(),
                        exchange: t.exchange.clone(),
                        write: t.write.clone(),
                        read: t.read.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_by(|a, b| (&a.vhost, &a.user, &a.exchange).cmp(&(&b.vhost, &b.user, &b.exchange)));
        v
    }

    /// Forgets every permission in a deleted vhost (the store dropped them with it).
    pub fn forget_vhost(&self, vhost: &str) {
        self.perms.retain(|(v, _), _| v != vhost);
        self.topics.retain(|(v, _), _| v != vhost);
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_log_in_with_their_password_and_keep_it_on_a_tags_update() {
        let r = Registry::new(None);
        assert!(
            r.put_user("u", Password::Clear("pw".into()), vec![], None)
                .unwrap()
        );
        assert!(r.login("u", "pw").is_some());
        assert!(r.login("u", "px").is_none());
        assert!(
            !r.put_user("u", Password::Keep, vec!["monitoring".into()], None)
                .unwrap()
        );
        assert!(r.login("u", "pw").unwrap().has_tag("monitoring"));
        // A hash exported from RabbitMQ logs in with RabbitMQ's password.
        r.put_user(
            "ref-sec",
            Password::Hashed {
                hash: "rV8LSLs6WTEfrgLH19yhT+kEGDEaL2/Fq1P+8K47+lzx6e15".into(),
                algorithm: Algorithm::Sha256,
            },
            vec![],
            None,
        )
        .unwrap();
        assert!(r.login("ref-sec", "s3cret-pw").is_some());
        // No password: no login.
        r.put_user("nopw", Password::Keep, vec![], None).unwrap();
        assert!(r.login("nopw", "").is_none());
    }

    #[test]
    fn permission_changes_move_the_generation_and_user_deletion_drops_them() {
        let r = Registry::new(None);
        r.put_user("u", Password::Clear("pw".into()), vec![], None)
            .unwrap();
        let g0 = r.generation();
        r.set_permission("/", "u", ".*", ".*", ".*").unwrap();
        assert!(r.generation() > g0);
        assert!(r.has_access("/", "u"));
        assert!(r.set_permission("/", "u", "(", "", "").is_err());
        r.delete_user("u").unwrap();
        assert!(!r.has_access("/", "u"));
    }
}
