//! Resource alarms: the memory high watermark and the disk free limit, raised and cleared
//! as RabbitMQ does.
//!
//! [`Alarms::check`] reads the process's resident memory (`/proc/self/statm`, what
//! RabbitMQ's `rss` strategy reads) and the free space of the data directory's filesystem
//! (`statvfs`), and raises or clears each alarm against its limit; [`monitor`] runs it every
//! `memory_monitor_interval` off the reactor. While an alarm is raised, connections take in
//! no publish (`crate::connection` looks at [`Alarms::raised`] on each `basic.publish`: one
//! relaxed atomic load) and wait on [`Alarms::subscribe`] for the clear; consumers are served
//! throughout, so the backlog can drain. The management API reads [`Alarms::readings`] and
//! moves the limits at run time ([`Alarms::set_memory_limit`]).
//!
//! A leaf: it knows the configuration's limit types and nothing of connections or HTTP.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, ResourceLimit};

/// Bit of [`Alarms::raised`]: the memory alarm.
pub const MEMORY: u8 = 1;
/// Bit of [`Alarms::raised`]: the disk alarm.
pub const DISK: u8 = 2;

/// The alarm state and the latest readings.
#[derive(Debug)]
pub struct Alarms {
    raised: AtomicU8,
    changes: watch::Sender<u8>,
    /// Memory the process may use in all: the machine's, or its cgroup's limit when lower.
    /// What relative limits are fractions of.
    total_memory: u64,
    memory_limit: AtomicU64,
    disk_limit: AtomicU64,
    mem_used: AtomicU64,
    disk_free: AtomicU64,
    data_dir: PathBuf,
    /// Checks run one at a time, so two cannot log the same transition.
    checking: parking_lot::Mutex<()>,
}

/// What the management API shows of the alarms (`/api/nodes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readings {
    /// Resident memory at the last check, bytes.
    pub mem_used: u64,
    /// The memory high watermark, bytes.
    pub mem_limit: u64,
    /// Free space on the data directory's filesystem at the last check, bytes.
    pub disk_free: u64,
    /// The disk free limit, bytes.
    pub disk_free_limit: u64,
    /// [`MEMORY`] and [`DISK`] bits.
    pub raised: u8,
}

impl Alarms {
    /// Alarms with the limits `config` sets, for the filesystem of its data directory.
    /// Nothing is raised until the first [`Alarms::check`].
    pub fn new(config: &Config) -> Self {
        let total = total_memory();
        Self {
            raised: AtomicU8::new(0),
            changes: watch::channel(0).0,
            total_memory: total,
            memory_limit: AtomicU64::new(config.vm_memory_high_watermark.resolve(total)),
            disk_limit: AtomicU64::new(config.disk_free_limit.resolve(total)),
            mem_used: AtomicU64::new(0),
            disk_free: AtomicU64::new(u64::MAX),
            data_dir: config.data_dir.clone(),
            checking: parking_lot::Mutex::new(()),
        }
    }

    /// Which alarms are raised ([`MEMORY`], [`DISK`] bits; 0 = none). Cheap enough for
    /// every publish.
    #[inline]
    pub fn raised(&self) -> u8 {
        self.raised.load(Relaxed)
    }

    /// Follows the raised bits: a connection blocked on a publish waits here for 0.
    pub fn subscribe(&self) -> watch::Receiver<u8> {
        self.changes.subscribe()
    }

    /// The readings and limits.
    pub fn readings(&self) -> Readings {
        Readings {
            mem_used: self.mem_used.load(Relaxed),
            mem_limit: self.memory_limit.load(Relaxed),
            disk_free: self.disk_free.load(Relaxed),
            disk_free_limit: self.disk_limit.load(Relaxed),
            raised: self.raised(),
        }
    }

    /// Moves the memory high watermark (as `rabbitmqctl set_vm_memory_high_watermark`);
    /// takes effect at once. Blocking (it reads the filesystem): off the reactor.
    pub fn set_memory_limit(&self, limit: ResourceLimit) {
        let bytes = limit.resolve(self.total_memory);
        tracing::info!("memory high watermark set to {bytes} bytes");
        self.memory_limit.store(bytes, Relaxed);
        self.check();
    }

    /// Moves the disk free limit (as `rabbitmqctl set_disk_free_limit`); takes effect at
    /// once. Blocking: off the reactor.
    pub fn set_disk_limit(&self, limit: ResourceLimit) {
        let bytes = limit.resolve(self.total_memory);
        tracing::info!("disk free limit set to {bytes} bytes");
        self.disk_limit.store(bytes, Relaxed);
        self.check();
    }

    /// Reads memory and disk, and raises or clears each alarm. Blocking (`statvfs` can
    /// stall on a slow filesystem): off the reactor.
    pub fn check(&self) {
        let _one = self.checking.lock();
        let used = resident_memory();
        let free = disk_free(&self.data_dir);
        self.mem_used.store(used, Relaxed);
        self.disk_free.store(free, Relaxed);
        let (mem_limit, disk_limit) = (
            self.memory_limit.load(Relaxed),
            self.disk_limit.load(Relaxed),
        );
        let mut now = 0;
        if used > mem_limit {
            now |= MEMORY;
        }
        if free < disk_limit {
            now |= DISK;
        }
        let was = self.raised.swap(now, Relaxed);
        if was == now {
            return;
        }
        for (bit, what, reading, limit) in [
            (MEMORY, "memory", used, mem_limit),
            (DISK, "disk", free, disk_limit),
        ] {
            match (was & bit != 0, now & bit != 0) {
                (false, true) => tracing::warn!(
                    "{what} resource limit alarm set ({what} {reading} bytes, limit {limit}): \
                     publishers are blocked until it clears"
                ),
                (true, false) => tracing::info!(
                    "{what} resource limit alarm cleared ({what} {reading} bytes, limit {limit})"
                ),
                _ => {}
            }
        }
        self.changes.send_replace(now);
    }
}

/// The `reason` of `connection.blocked` for these raised bits, RabbitMQ's texts (observed
/// on 3.10.8 with both alarms: "low on disk & memory").
pub fn reason(raised: u8) -> &'static str {
    match (raised & MEMORY != 0, raised & DISK != 0) {
        (true, true) => "low on disk & memory",
        (false, true) => "low on disk",
        _ => "low on memory",
    }
}

/// The resources RabbitMQ names in its health checks for these raised bits.
pub fn resources(raised: u8) -> Vec<&'static str> {
    let mut out = Vec::new();
    if raised & DISK != 0 {
        out.push("disk space");
    }
    if raised & MEMORY != 0 {
        out.push("memory");
    }
    out
}

/// Checks now and every `interval` until the runtime stops.
pub async fn monitor(alarms: std::sync::Arc<Alarms>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let a = alarms.clone();
        if tokio::task::spawn_blocking(move || a.check())
            .await
            .is_err()
        {
            tracing::warn!("resource check failed");
        }
    }
}

/// Resident memory of this process, bytes (`/proc/self/statm`; 0 where there is none).
pub fn resident_memory() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        // 4 KiB pages on the platforms Warren runs on.
        .map_or(0, |pages| pages * 4096)
}

/// The machine's memory (`MemTotal`), or the cgroup v2 limit when one is set and lower, as
/// a container's broker must measure against what it may really use.
fn total_memory() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        // No /proc: a figure that keeps relative limits sane rather than zero.
        .unwrap_or(8 << 30);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.map_or(machine, |c| c.min(machine))
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`; `u64::MAX`
/// when it cannot be read (no alarm rather than a false one).
fn disk_free(dir: &std::path::Path) -> u64 {
    #[cfg(target_os = "linux")]
    {
        match rustix::fs::statvfs(dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(_) => u64::MAX,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        u64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarms_with(mem: ResourceLimit, disk: ResourceLimit) -> (Alarms, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            vm_memory_high_watermark: mem,
            disk_free_limit: disk,
            ..Config::default()
        };
        (Alarms::new(&config), dir)
    }

    #[test]
    fn limits_raise_and_clear_and_subscribers_see_it() {
        use crate::config::ByteSize;
        let (a, _dir) = alarms_with(
            ResourceLimit::Relative(0.4),
            ResourceLimit::Absolute(ByteSize(0)),
        );
        let mut rx = a.subscribe();
        a.check();
        assert_eq!(a.raised(), 0);
        let r = a.readings();
        assert!(r.mem_used > 0 && r.mem_used < r.mem_limit, "{r:?}");
        assert!(r.disk_free > 0 && r.disk_free != u64::MAX, "{r:?}");
        a.set_memory_limit(ResourceLimit::Absolute(ByteSize(1)));
        assert_eq!(a.raised(), MEMORY);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), MEMORY);
        a.set_disk_limit(ResourceLimit::Absolute(ByteSize(u64::MAX)));
        assert_eq!(a.raised(), MEMORY | DISK);
        assert_eq!(reason(a.raised()), "low on disk & memory");
        assert_eq!(resources(a.raised()), ["disk space", "memory"]);
        a.set_memory_limit(ResourceLimit::Relative(1.0));
        a.set_disk_limit(ResourceLimit::Absolute(ByteSize(1)));
        assert_eq!(a.raised(), 0);
        assert_eq!(*rx.borrow_and_update(), 0);
        assert_eq!(reason(MEMORY), "low on memory");
        assert_eq!(reason(DISK), "low on disk");
    }
}
