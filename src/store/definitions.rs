//! Durable definitions — exchanges, queues (with their arguments) and bindings — in sled.
//!
//! Definitions are tiny and rarely written, so every change is flushed and then fsynced
//! before the caller answers `*-ok`: sled's own `flush` ends in `sync_file_range`, which does
//! not reach the drive (shared/design/storage.md), so the files are synced here as well.
//! Records are JSON (serde) so a later version can read them. Knows nothing of AMQP beyond
//! the plain data it stores; the broker decides what is durable.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};

/// A durable exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Virtual host.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Type name (`direct`, `fanout`, ...).
    pub kind: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Declared arguments.
    pub arguments: FieldTable,
}

/// A durable queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Virtual host.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Declared arguments.
    pub arguments: FieldTable,
}

/// A binding between durable ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    /// Virtual host.
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    /// Destination queue or exchange.
    pub destination: String,
    /// Whether the destination is an exchange.
    pub to_exchange: bool,
    /// Binding key.
    pub key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// A user: RabbitMQ's definition fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserDef {
    /// Name.
    pub name: String,
    /// base64(salt ‖ digest); empty for a user without a password.
    pub password_hash: String,
    /// RabbitMQ's module name of the hashing algorithm.
    pub hashing_algorithm: String,
    /// Tags (`administrator`, `monitoring`, ...; unknown ones are kept).
    pub tags: Vec<String>,
    /// `max-connections`, `max-channels`.
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, i64>,
}

/// A virtual host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VhostDef {
    /// Name.
    pub name: String,
    /// Description (RabbitMQ's `metadata.description`).
    #[serde(default)]
    pub description: String,
    /// Tags (`metadata.tags`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// `default_queue_type`, when set.
    #[serde(default)]
    pub default_queue_type: Option<String>,
    /// `max-connections`, `max-queues`.
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, i64>,
}

/// A user's permissions in a vhost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PermissionDef {
    /// User.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
    /// Regex for configure access.
    pub configure: String,
    /// Regex for write access.
    pub write: String,
    /// Regex for read access.
    pub read: String,
}

/// A user's topic permissions on one exchange of a vhost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicPermissionDef {
    /// User.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Regex for routing keys published.
    pub write: String,
    /// Regex for binding keys bound.
    pub read: String,
}

/// A policy set at run time (definitions import, the management API), in RabbitMQ's form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyDef {
    /// Virtual host.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Regex over queue / exchange names.
    pub pattern: String,
    /// `queues`, `exchanges` or `all`.
    pub apply_to: String,
    /// Higher wins.
    pub priority: i32,
    /// The definition object, as given.
    pub definition: serde_json::Value,
}

/// Everything stored, as read at boot.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Exchanges.
    pub exchanges: Vec<ExchangeDef>,
    /// Queues.
    pub queues: Vec<QueueDef>,
    /// Bindings.
    pub bindings: Vec<BindingDef>,
    /// Users.
    pub users: Vec<UserDef>,
    /// Virtual hosts.
    pub vhosts: Vec<VhostDef>,
    /// Permissions.
    pub permissions: Vec<PermissionDef>,
    /// Topic permissions.
    pub topic_permissions: Vec<TopicPermissionDef>,
    /// Policies set at run time.
    pub policies: Vec<PolicyDef>,
    /// Whether the default user and vhost were ever created: they are created once, at the
    /// first boot, as RabbitMQ does, and not again after an operator deleted them.
    pub seeded: bool,
}

/// The definitions store.
#[derive(Debug)]
pub struct Definitions {
    db: sled::Db,
    dir: PathBuf,
    exchanges: sled::Tree,
    queues: sled::Tree,
    bindings: sled::Tree,
    users: sled::Tree,
    vhosts: sled::Tree,
    permissions: sled::Tree,
    topic_permissions: sled::Tree,
    policies: sled::Tree,
    meta: sled::Tree,
}

/// The `meta` key set once the default user and vhost exist.
const SEEDED: &[u8] = b"seeded";

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Encodes a record, and refuses (`InvalidInput`) one that would not decode again at the
/// next boot (serde_json refuses JSON nested past 128 levels): storing it would lose the
/// definition silently at restart.
fn encode<T: Serialize + for<'de> Deserialize<'de>>(x: &T) -> io::Result<Vec<u8>> {
    let v = serde_json::to_vec(x).map_err(other)?;
    if let Err(e) = serde_json::from_slice::<T>(&v) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("definition cannot be stored: {e}"),
        ));
    }
    Ok(v)
}

fn key(parts: &[&str]) -> Vec<u8> {
    // NUL cannot appear in AMQP names, so it separates parts unambiguously.
    parts.join("\0").into_bytes()
}

impl BindingDef {
    fn key(&self) -> Vec<u8> {
        let args = serde_json::to_string(&self.arguments).unwrap_or_default();
        let kind = if self.to_exchange { "e" } else { "q" };
        key(&[
            &self.vhost,
            &self.source,
            kind,
            &self.destination,
            &self.key,
            &args,
        ])
    }
}

impl Definitions {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// The I/O or sled error, as `io::Error`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // sled's default cache is 1 GiB; definitions need a few KiB.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(other)?;
        let tree = |n: &str| db.open_tree(n).map_err(other);
        Ok(Self {
            exchanges: tree("exchanges")?,
            queues: tree("queues")?,
            bindings: tree("bindings")?,
            users: tree("users")?,
            vhosts: tree("vhosts")?,
            permissions: tree("permissions")?,
            topic_permissions: tree("topic_permissions")?,
            policies: tree("policies")?,
            meta: tree("meta")?,
            dir: dir.to_owned(),
            db,
        })
    }

    /// Reads every definition. A record that cannot be decoded is logged and left out: one
    /// bad definition must not keep the broker from starting.
    ///
    /// # Errors
    /// A sled error.
    pub fn load(&self) -> io::Result<Loaded> {
        fn all<T: for<'de> Deserialize<'de>>(t: &sled::Tree) -> io::Result<Vec<T>> {
            let mut out = Vec::new();
            for kv in t.iter() {
                let (k, v) = kv.map_err(other)?;
                match serde_json::from_slice(&v) {
                    Ok(d) => out.push(d),
                    Err(e) => tracing::error!(
                        tree = %String::from_utf8_lossy(&t.name()),
                        key = %String::from_utf8_lossy(&k).replace('\0', "/"),
                        "skipping a stored definition that cannot be decoded: {e}"
                    ),
                }
            }
            Ok(out)
        }
        Ok(Loaded {
            exchanges: all(&self.exchanges)?,
            queues: all(&self.queues)?,
            bindings: all(&self.bindings)?,
            users: all(&self.users)?,
            vhosts: all(&self.vhosts)?,
            permissions: all(&self.permissions)?,
            topic_permissions: all(&self.topic_permissions)?,
            policies: all(&self.policies)?,
            seeded: self.meta.contains_key(SEEDED).map_err(other)?,
        })
    }

    /// Records that the default user and vhost were created.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn mark_seeded(&self) -> io::Result<()> {
        self.meta.insert(SEEDED, &b"1"[..]).map_err(other)?;
        self.sync()
    }

    /// Stores a user.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn put_user(&self, u: &UserDef) -> io::Result<()> {
        self.users
            .insert(key(&[&u.name]), encode(u)?)
            .map_err(other)?;
        self.sync()
    }

    /// Removes a user with its permissions and topic permissions.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn delete_user(&self, name: &str) -> io::Result<()> {
        self.users.remove(key(&[name])).map_err(other)?;
        remove_where::<PermissionDef>(&self.permissions, |p| p.user == name)?;
        remove_where::<TopicPermissionDef>(&self.topic_permissions, |p| p.user == name)?;
        self.sync()
    }

    /// Stores a vhost.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn put_vhost(&self, v: &VhostDef) -> io::Result<()> {
        self.vhosts
            .insert(key(&[&v.name]), encode(v)?)
            .map_err(other)?;
        self.sync()
    }

    /// Removes a vhost and everything defined in it.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn delete_vhost(&self, name: &str) -> io::Result<()> {
        self.vhosts.remove(key(&[name])).map_err(other)?;
        remove_where::<ExchangeDef>(&self.exchanges, |x| x.vhost == name)?;
        remove_where::<QueueDef>(&self.queues, |q| q.vhost == name)?;
        remove_where::<BindingDef>(&self.bindings, |b| b.vhost == name)?;
        remove_where::<PermissionDef>(&self.permissions, |p| p.vhost == name)?;
        remove_where::<TopicPermissionDef>(&self.topic_permissions, |p| p.vhost == name)?;
        remove_where::<PolicyDef>(&self.policies, |p| p.vhost == name)?;
        self.sync()
    }

    /// Stores (replaces) a policy.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn put_policy(&self, p: &PolicyDef) -> io::Result<()> {
        self.policies
            .insert(key(&[&p.vhost, &p.name]), encode(p)?)
            .map_err(other)?;
        self.sync()
    }

    /// Removes a policy.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn delete_policy(&self, vhost: &str, name: &str) -> io::Result<()> {
        self.policies.remove(key(&[vhost, name])).map_err(other)?;
        self.sync()
    }

    /// Stores (replaces) a user's permissions in a vhost.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn put_permission(&self, p: &PermissionDef) -> io::Result<()> {
        self.permissions
            .insert(key(&[&p.vhost, &p.user]), encode(p)?)
            .map_err(other)?;
        self.sync()
    }

    /// Removes a user's permissions in a vhost.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn delete_permission(&self, vhost: &str, user: &str) -> io::Result<()> {
        self.permissions
            .remove(key(&[vhost, user]))
            .map_err(other)?;
        self.sync()
    }

    /// Stores (replaces) a user's topic permissions on an exchange.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn put_topic_permission(&self, p: &TopicPermissionDef) -> io::Result<()> {
        self.topic_permissions
            .insert(key(&[&p.vhost, &p.user, &p.exchange]), encode(p)?)
            .map_err(other)?;
        self.sync()
    }

    /// Removes a user's topic permissions in a vhost: on one exchange, or all of them.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn delete_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: Option<&str>,
    ) -> io::Result<()> {
        remove_where::<TopicPermissionDef>(&self.topic_permissions, |p| {
            p.vhost == vhost && p.user == user && exchange.is_none_or(|x| p.exchange == x)
        })?;
        self.sync()
    }

    /// Stores an exchange.
    ///
    /// # Errors
    /// The write or sync failed; `InvalidInput` for a record that could not be read back.
    pub fn put_exchange(&self, x: &ExchangeDef) -> io::Result<()> {
        let v = encode(x)?;
        self.exchanges
            .insert(key(&[&x.vhost, &x.name]), v)
            .map_err(other)?;
        self.sync()
    }

    /// Removes an exchange and every binding that names it.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn delete_exchange(&self, vhost: &str, name: &str) -> io::Result<()> {
        self.exchanges.remove(key(&[vhost, name])).map_err(other)?;
        self.remove_bindings(vhost, |b| {
            b.source == name || (b.to_exchange && b.destination == name)
        })?;
        self.sync()
    }

    /// Stores a queue.
    ///
    /// # Errors
    /// The write or sync failed; `InvalidInput` for a record that could not be read back.
    pub fn put_queue(&self, q: &QueueDef) -> io::Result<()> {
        let v = encode(q)?;
        self.queues
            .insert(key(&[&q.vhost, &q.name]), v)
            .map_err(other)?;
        self.sync()
    }

    /// Removes a queue and its bindings.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn delete_queue(&self, vhost: &str, name: &str) -> io::Result<()> {
        self.queues.remove(key(&[vhost, name])).map_err(other)?;
        self.remove_bindings(vhost, |b| !b.to_exchange && b.destination == name)?;
        self.sync()
    }

    /// Stores a binding.
    ///
    /// # Errors
    /// The write or sync failed; `InvalidInput` for a record that could not be read back.
    pub fn put_binding(&self, b: &BindingDef) -> io::Result<()> {
        let v = encode(b)?;
        self.bindings.insert(b.key(), v).map_err(other)?;
        self.sync()
    }

    /// Removes a binding.
    ///
    /// # Errors
    /// The write or sync failed.
    pub fn delete_binding(&self, b: &BindingDef) -> io::Result<()> {
        self.bindings.remove(b.key()).map_err(other)?;
        self.sync()
    }

    fn remove_bindings(&self, vhost: &str, doomed: impl Fn(&BindingDef) -> bool) -> io::Result<()> {
        for kv in self
            .bindings
            .scan_prefix(&key(&[vhost, ""])[..vhost.len() + 1])
        {
            let (k, v) = kv.map_err(other)?;
            if let Ok(b) = serde_json::from_slice::<BindingDef>(&v)
                && doomed(&b)
            {
                self.bindings.remove(k).map_err(other)?;
            }
        }
        Ok(())
    }

    /// Flushes sled, then fsyncs its files: `flush` alone does not reach the drive.
    fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(other)?;
        sync_tree(&self.dir)
    }
}

/// Removes the records of `tree` that `doomed` picks (undecodable ones stay: boot skips them).
fn remove_where<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    doomed: impl Fn(&T) -> bool,
) -> io::Result<()> {
    for kv in tree.iter() {
        let (k, v) = kv.map_err(other)?;
        if serde_json::from_slice::<T>(&v).is_ok_and(|d| doomed(&d)) {
            tree.remove(k).map_err(other)?;
        }
    }
    Ok(())
}

fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            sync_tree(&entry.path())?;
        } else if ty.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_survive_reopen_and_deletes_cascade_to_bindings() {
        let dir = tempfile::tempdir().unwrap();
        {
            let d = Definitions::open(dir.path()).unwrap();
            d.put_exchange(&ExchangeDef {
                vhost: "/".into(),
                name: "x".into(),
                kind: "topic".into(),
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            })
            .unwrap();
            for q in ["a", "b"] {
                d.put_queue(&QueueDef {
                    vhost: "/".into(),
                    name: q.into(),
                    auto_delete: false,
                    arguments: FieldTable::default(),
                })
                .unwrap();
                d.put_binding(&BindingDef {
                    vhost: "/".into(),
                    source: "x".into(),
                    destination: q.into(),
                    to_exchange: false,
                    key: "k.#".into(),
                    arguments: FieldTable::default(),
                })
                .unwrap();
            }
            d.delete_queue("/", "a").unwrap();
        }
        let d = Definitions::open(dir.path()).unwrap();
        let l = d.load().unwrap();
        assert_eq!(l.exchanges.len(), 1);
        assert_eq!(
            l.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(l.bindings.len(), 1);
        assert_eq!(l.bindings[0].destination, "b");
        d.delete_exchange("/", "x").unwrap();
        assert!(d.load().unwrap().bindings.is_empty());
    }
    fn deep(depth: usize) -> FieldTable {
        let mut t = FieldTable::default();
        for _ in 1..depth {
            let mut outer = FieldTable::default();
            outer.insert("n".into(), amq_protocol::types::AMQPValue::FieldTable(t));
            t = outer;
        }
        t
    }

    /// What would not decode at the next boot is refused when stored, and a record that
    /// cannot be decoded anyway (written by hand here) is skipped at load, not fatal.
    #[test]
    fn undecodable_definitions_are_refused_at_store_and_skipped_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let d = Definitions::open(dir.path()).unwrap();
        let q = |name: &str, depth| QueueDef {
            vhost: "/".into(),
            name: name.into(),
            auto_delete: false,
            arguments: deep(depth),
        };
        d.put_queue(&q("ok", crate::protocol::nesting::MAX_NESTING))
            .unwrap();
        let e = d.put_queue(&q("deep", 70)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        d.queues
            .insert(key(&["/", "garbage"]), &b"{not json"[..])
            .unwrap();
        drop(d);
        let d = Definitions::open(dir.path()).unwrap();
        let l = d.load().unwrap();
        assert_eq!(
            l.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
            ["ok"]
        );
    }
}
