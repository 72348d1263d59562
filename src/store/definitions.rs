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

/// Everything stored, as read at boot.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Exchanges.
    pub exchanges: Vec<ExchangeDef>,
    /// Queues.
    pub queues: Vec<QueueDef>,
    /// Bindings.
    pub bindings: Vec<BindingDef>,
}

/// The definitions store.
#[derive(Debug)]
pub struct Definitions {
    db: sled::Db,
    dir: PathBuf,
    exchanges: sled::Tree,
    queues: sled::Tree,
    bindings: sled::Tree,
}

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
        })
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
