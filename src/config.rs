//! `rabbit.toml`: the broker's settings, their defaults, and the checks that make a bad file
//! fail at startup with one line naming the key.
//!
//! A leaf module: it parses, it does not start anything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Startup errors: a bad file, a bad value, a flag that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrongly typed value.
    #[error("config file {path}: {message}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// toml's message, which names the key.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("config key '{key}': {problem}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// Everything `rabbit.toml` can set. Unknown keys are errors, so a typo cannot go unnoticed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to accept AMQP connections on.
    pub listeners: Vec<SocketAddr>,
    /// Addresses to accept AMQPS (AMQP over TLS) connections on, with `[tls]`'s
    /// certificate; none by default.
    pub listeners_tls: Vec<SocketAddr>,
    /// Certificates, keys and client verification for AMQPS and HTTPS (`[tls]`).
    pub tls: Tls,
    /// SASL mechanisms offered in `connection.start` (RabbitMQ's `auth_mechanisms`):
    /// `PLAIN`, `AMQPLAIN`, `EXTERNAL`. EXTERNAL is offered on TLS connections only.
    pub auth_mechanisms: Vec<String>,
    /// Which part of a verified client certificate names the EXTERNAL user
    /// (RabbitMQ's `ssl_cert_login_from`).
    pub ssl_cert_login_from: CertLoginFrom,
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// The user created at first boot.
    pub default_user: String,
    /// Its password.
    pub default_pass: String,
    /// The virtual host created at first boot.
    pub default_vhost: String,
    /// Largest frame the server accepts and proposes, in bytes (4096 ..= 1 MiB).
    pub frame_max: u32,
    /// Most channels per connection (1 ..= 65535).
    pub channel_max: u16,
    /// Heartbeat interval proposed to clients, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest message body accepted, in bytes (at most 512 MiB).
    pub max_message_size: u64,
    /// Seconds a client has to finish the handshake.
    pub handshake_timeout: u64,
    /// Users who may log in only from a loopback address (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    /// A definitions JSON file (RabbitMQ's format) imported at every boot.
    pub load_definitions: Option<PathBuf>,
    /// Bytes of queued messages one queue keeps in memory; past it, bodies are paged out to
    /// the message log and read back as consumers reach them.
    pub queue_memory_budget: u64,
    /// Bytes of queued messages all queues together keep in memory; also the most that
    /// message bodies being received in several frames may hold, across connections.
    pub memory_budget: u64,
    /// Most body bytes one transaction may hold uncommitted (406 past it; a transaction
    /// holding nothing yet takes any one message).
    pub max_transaction_bytes: u64,
    /// Most body bytes a channel's unacked deliveries to its consumers may hold; past it
    /// they get nothing more until acks come (0 = unlimited).
    pub max_unacked_bytes: u64,
    /// Threads that run connections and queues; 0 = half the CPUs (at least one), leaving
    /// the rest to the message log's committer, the kernel's network stack and clients.
    pub worker_threads: usize,
    /// tracing filter, e.g. `info` or `warren=debug`.
    pub log: String,
    /// Policies: queue and exchange settings applied by name pattern, as RabbitMQ's
    /// `rabbitmqctl set_policy` does.
    pub policies: Vec<Policy>,
    /// The management HTTP API (`[management]`).
    pub management: Management,
    /// The Prometheus endpoint (`[prometheus]`).
    pub prometheus: Prometheus,
    /// RabbitMQ's `vm_memory_high_watermark`: past it (the process's resident memory), the
    /// memory alarm blocks publishers.
    pub vm_memory_high_watermark: ResourceLimit,
    /// RabbitMQ's `disk_free_limit`: with less free space than this on the data directory's
    /// filesystem, the disk alarm blocks publishers.
    pub disk_free_limit: ResourceLimit,
    /// Milliseconds between resource checks (RabbitMQ's `memory_monitor_interval`).
    pub memory_monitor_interval: u64,
}

/// A resource limit as RabbitMQ writes it: `key.relative = 0.4` (a fraction of the machine's
/// memory, or of the cgroup's limit when lower) or `key.absolute = "2GiB"` (bytes).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ResourceLimit {
    /// A fraction of total memory.
    Relative(f64),
    /// Bytes.
    Absolute(ByteSize),
}

impl ResourceLimit {
    /// The limit in bytes, given the memory this process may use in all.
    pub fn resolve(self, total_memory: u64) -> u64 {
        match self {
            Self::Relative(f) => (total_memory as f64 * f) as u64,
            Self::Absolute(b) => b.0,
        }
    }
}

/// A byte count: an integer, or a string with RabbitMQ's units (`k`/`kiB`, `M`/`MiB`,
/// `G`/`GiB` are powers of two; `kB`, `MB`, `GB` powers of ten), e.g. `"50MB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a byte count like 50MB or 2GiB"))?;
        let mult: u64 = match unit.trim() {
            "" => 1,
            "k" | "K" | "kiB" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(format!("unknown unit '{other}' in '{s}'")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("'{s}' is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The `[management]` section: RabbitMQ's management HTTP API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Management {
    /// Serve the API at all.
    pub enabled: bool,
    /// Address the API listens on (RabbitMQ's management port, loopback only by default).
    pub listener: SocketAddr,
    /// Milliseconds between statistics samples (rates, totals): RabbitMQ's
    /// `collect_statistics_interval`, 5000 by default.
    pub collect_statistics_interval: u64,
    /// Serve the API over HTTPS with `[tls]`'s certificate and key (no client certificates
    /// asked for) instead of plain HTTP.
    pub tls: bool,
}

/// The `[tls]` section: RabbitMQ's `ssl_options`, for AMQPS listeners and HTTPS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// The server's certificate chain, PEM, leaf first (`ssl_options.certfile`).
    pub certfile: Option<PathBuf>,
    /// Its private key, PEM: PKCS#8, PKCS#1 or SEC1 (`ssl_options.keyfile`).
    pub keyfile: Option<PathBuf>,
    /// CA certificates, PEM, that client certificates must chain to
    /// (`ssl_options.cacertfile`); needed by `verify_peer`.
    pub cacertfile: Option<PathBuf>,
    /// Ask AMQPS clients for a certificate and verify it against `cacertfile`
    /// (`ssl_options.verify = verify_peer`). A client that sends none is still let in
    /// unless `fail_if_no_peer_cert`.
    pub verify_peer: bool,
    /// Refuse AMQPS clients without a verified certificate at the TLS handshake.
    pub fail_if_no_peer_cert: bool,
    /// TLS versions accepted: `tlsv1.2`, `tlsv1.3` (`ssl_options.versions`).
    pub versions: Vec<String>,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
            versions: vec!["tlsv1.2".into(), "tlsv1.3".into()],
        }
    }
}

/// `ssl_cert_login_from`: which part of the client certificate is the user name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertLoginFrom {
    /// The whole subject as an RFC 4514 string, e.g. `CN=client,O=Org,C=US` (RabbitMQ's
    /// default).
    #[default]
    DistinguishedName,
    /// The subject's common name (CN).
    CommonName,
}

impl Default for Management {
    fn default() -> Self {
        Self {
            enabled: true,
            listener: SocketAddr::from(([127, 0, 0, 1], 15672)),
            collect_statistics_interval: 5000,
            tls: false,
        }
    }
}

/// The `[prometheus]` section: RabbitMQ's `rabbitmq_prometheus` endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prometheus {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Address it listens on (the plugin's port, loopback only by default).
    pub listener: SocketAddr,
}

impl Default for Prometheus {
    fn default() -> Self {
        Self {
            enabled: true,
            listener: SocketAddr::from(([127, 0, 0, 1], 15692)),
        }
    }
}

/// One `[[policies]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Name, for logs.
    pub name: String,
    /// Regular expression matched against queue / exchange names.
    pub pattern: String,
    /// `queues`, `exchanges` or `all`.
    #[serde(
        rename = "apply-to",
        alias = "apply_to",
        default = "Policy::default_apply_to"
    )]
    pub apply_to: String,
    /// Higher wins when several match.
    #[serde(default)]
    pub priority: i32,
    /// The settings.
    pub definition: PolicyDefinition,
    /// `pattern`, compiled at its first use (every declare consults every policy).
    #[serde(skip)]
    compiled: std::sync::OnceLock<Option<regex::Regex>>,
}

impl Policy {
    fn default_apply_to() -> String {
        "all".into()
    }

    /// A policy from RabbitMQ's JSON form (definitions, the management API). Keys of the
    /// definition Warren does not implement are left out and returned, for a warning.
    ///
    /// # Errors
    /// A bad pattern, `apply-to` or value, with the reason.
    pub fn from_json(
        name: &str,
        pattern: &str,
        apply_to: &str,
        priority: i32,
        definition: &serde_json::Value,
    ) -> Result<(Policy, Vec<String>), String> {
        const KNOWN: &[&str] = &[
            "message-ttl",
            "expires",
            "max-length",
            "max-length-bytes",
            "overflow",
            "dead-letter-exchange",
            "dead-letter-routing-key",
            "delivery-limit",
            "alternate-exchange",
        ];
        let Some(obj) = definition.as_object() else {
            return Err("definition must be an object".into());
        };
        let (known, skipped): (serde_json::Map<_, _>, serde_json::Map<_, _>) = obj
            .clone()
            .into_iter()
            .partition(|(k, _)| KNOWN.contains(&k.as_str()));
        let def: PolicyDefinition = serde_json::from_value(serde_json::Value::Object(known))
            .map_err(|e| format!("definition: {e}"))?;
        if let Err(e) = regex::Regex::new(pattern) {
            return Err(format!("pattern: {e}"));
        }
        if !matches!(apply_to, "all" | "queues" | "exchanges") {
            return Err(format!("'{apply_to}' is not queues, exchanges or all"));
        }
        if let Some(o) = &def.overflow
            && !matches!(
                o.as_str(),
                "drop-head" | "reject-publish" | "reject-publish-dlx"
            )
        {
            return Err(format!("unknown overflow '{o}'"));
        }
        let p = Policy {
            name: name.into(),
            pattern: pattern.into(),
            apply_to: apply_to.into(),
            priority,
            definition: def,
            compiled: Default::default(),
        };
        Ok((p, skipped.into_iter().map(|(k, _)| k).collect()))
    }

    /// Whether this policy applies to a queue (`queue = true`) or exchange named `name`.
    pub fn applies(&self, name: &str, queue: bool) -> bool {
        let kind = match self.apply_to.as_str() {
            "all" => true,
            "queues" => queue,
            "exchanges" => !queue,
            _ => false,
        };
        // `check` refused invalid patterns at load; an invalid one here matches nothing.
        kind && self
            .compiled
            .get_or_init(|| regex::Regex::new(&self.pattern).ok())
            .as_ref()
            .is_some_and(|r| r.is_match(name))
    }
}

/// The keys a policy may set (RabbitMQ's names).
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicyDefinition {
    /// Per-queue message TTL, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_ttl: Option<u64>,
    /// Queue idle expiry, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Most ready messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// Most ready bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length_bytes: Option<u64>,
    /// `drop-head`, `reject-publish` or `reject-publish-dlx`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow: Option<String>,
    /// Dead-letter exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_exchange: Option<String>,
    /// Dead-letter routing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_routing_key: Option<String>,
    /// Redeliveries before dead-lettering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_limit: Option<i64>,
    /// Alternate exchange (exchanges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternate_exchange: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Loopback on both families: `localhost` is `::1` first on modern stacks.
            listeners: vec![
                SocketAddr::from(([127, 0, 0, 1], 5672)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5672)),
            ],
            listeners_tls: Vec::new(),
            tls: Tls::default(),
            auth_mechanisms: vec!["PLAIN".into(), "AMQPLAIN".into()],
            ssl_cert_login_from: CertLoginFrom::default(),
            data_dir: PathBuf::from("data"),
            default_user: "guest".into(),
            default_pass: "guest".into(),
            default_vhost: "/".into(),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            handshake_timeout: 10,
            loopback_users: vec!["guest".into()],
            load_definitions: None,
            queue_memory_budget: 128 * 1024 * 1024,
            memory_budget: 1024 * 1024 * 1024,
            max_transaction_bytes: 256 * 1024 * 1024,
            max_unacked_bytes: 256 * 1024 * 1024,
            worker_threads: 0,
            log: "info".into(),
            policies: Vec::new(),
            management: Management::default(),
            prometheus: Prometheus::default(),
            // RabbitMQ's defaults.
            vm_memory_high_watermark: ResourceLimit::Relative(0.4),
            disk_free_limit: ResourceLimit::Absolute(ByteSize(50_000_000)),
            memory_monitor_interval: 2500,
        }
    }
}

/// The smallest frame_max AMQP allows (spec: frame-min-size 4096).
pub const FRAME_MIN_SIZE: u32 = 4096;

impl Config {
    /// How many runtime worker threads to start (`worker_threads`, or its automatic value).
    /// One publisher and one consumer run fastest on one worker: a second one steals the
    /// consumer, and every hand-off then crosses cores. Measured on 2 CPUs, one worker did as
    /// well or better in every benchmark scenario and used about half the CPU per message.
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        }
    }

    /// Reads and checks a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key that is wrong.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks config text.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] or [`ConfigError::Invalid`].
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| {
                        let line = text[..s.start].matches('\n').count() + 1;
                        format!(" (line {line})")
                    })
                    .unwrap_or_default(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Range checks that serde cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| Err(ConfigError::Invalid { key, problem });
        if self.listeners.is_empty() && self.listeners_tls.is_empty() {
            return invalid(
                "listeners",
                "at least one address is needed (here or in listeners_tls)".into(),
            );
        }
        self.check_tls()?;
        if !(FRAME_MIN_SIZE..=1024 * 1024).contains(&self.frame_max) {
            return invalid(
                "frame_max",
                format!("{} is outside 4096 ..= 1048576", self.frame_max),
            );
        }
        if self.channel_max == 0 {
            return invalid("channel_max", "must be at least 1".into());
        }
        if self.max_message_size == 0 || self.max_message_size > 512 * 1024 * 1024 {
            return invalid(
                "max_message_size",
                format!("{} is outside 1 ..= 536870912", self.max_message_size),
            );
        }
        if self.worker_threads > 1024 {
            return invalid("worker_threads", "must be at most 1024".into());
        }
        if self.handshake_timeout == 0 {
            return invalid("handshake_timeout", "must be at least 1 second".into());
        }
        if self.default_user.is_empty() {
            return invalid("default_user", "must not be empty".into());
        }
        if self.default_vhost.is_empty() {
            return invalid("default_vhost", "must not be empty".into());
        }
        if let ResourceLimit::Relative(f) = self.vm_memory_high_watermark
            && !(f > 0.0 && f <= 1.0)
        {
            return invalid(
                "vm_memory_high_watermark.relative",
                format!("{f} is outside (0, 1]"),
            );
        }
        if let ResourceLimit::Relative(f) = self.disk_free_limit
            && !(f >= 0.0 && f.is_finite())
        {
            return invalid("disk_free_limit.relative", format!("{f} is negative"));
        }
        if !(10..=3_600_000).contains(&self.memory_monitor_interval) {
            return invalid(
                "memory_monitor_interval",
                format!(
                    "{} is outside 10 ..= 3600000 ms",
                    self.memory_monitor_interval
                ),
            );
        }
        for p in &self.policies {
            if let Err(e) = regex::Regex::new(&p.pattern) {
                return invalid("policies.pattern", format!("policy '{}': {e}", p.name));
            }
            if !matches!(p.apply_to.as_str(), "all" | "queues" | "exchanges") {
                return invalid(
                    "policies.apply-to",
                    format!(
                        "policy '{}': '{}' is not queues, exchanges or all",
                        p.name, p.apply_to
                    ),
                );
            }
            if let Some(o) = &p.definition.overflow
                && !matches!(
                    o.as_str(),
                    "drop-head" | "reject-publish" | "reject-publish-dlx"
                )
            {
                return invalid(
                    "policies.definition.overflow",
                    format!("policy '{}': unknown overflow '{o}'", p.name),
                );
            }
        }
        Ok(())
    }

    /// Whether anything is served over TLS, so `[tls]` must name a certificate and key.
    pub fn uses_tls(&self) -> bool {
        !self.listeners_tls.is_empty() || (self.management.enabled && self.management.tls)
    }

    fn check_tls(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.into(),
            })
        };
        if self.auth_mechanisms.is_empty() {
            return invalid("auth_mechanisms", "at least one mechanism is needed");
        }
        for m in &self.auth_mechanisms {
            if !matches!(m.as_str(), "PLAIN" | "AMQPLAIN" | "EXTERNAL") {
                return Err(ConfigError::Invalid {
                    key: "auth_mechanisms",
                    problem: format!("unknown mechanism '{m}' (PLAIN, AMQPLAIN or EXTERNAL)"),
                });
            }
        }
        let t = &self.tls;
        if t.versions.is_empty() {
            return invalid("tls.versions", "at least one version is needed");
        }
        for v in &t.versions {
            if !matches!(v.as_str(), "tlsv1.2" | "tlsv1.3") {
                return Err(ConfigError::Invalid {
                    key: "tls.versions",
                    problem: format!("unknown version '{v}' (tlsv1.2 or tlsv1.3)"),
                });
            }
        }
        if t.fail_if_no_peer_cert && !t.verify_peer {
            return invalid("tls.fail_if_no_peer_cert", "needs tls.verify_peer = true");
        }
        if t.verify_peer && t.cacertfile.is_none() {
            return invalid(
                "tls.verify_peer",
                "needs tls.cacertfile, the CAs client certificates must chain to",
            );
        }
        if self.uses_tls() {
            if t.certfile.is_none() {
                return invalid("tls.certfile", "needed by listeners_tls or management.tls");
            }
            if t.keyfile.is_none() {
                return invalid("tls.keyfile", "needed by listeners_tls or management.tls");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(
            c.listeners,
            [
                "127.0.0.1:5672".parse().unwrap(),
                "[::1]:5672".parse().unwrap()
            ]
        );
        assert_eq!(c.frame_max, 131_072);
        assert_eq!(c.default_user, "guest");
        assert!(c.management.enabled);
        assert_eq!(c.management.listener, "127.0.0.1:15672".parse().unwrap());
    }

    #[test]
    fn management_section_parses() {
        let c =
            Config::parse("[management]\nenabled = false\nlistener = \"0.0.0.0:1567\"\n").unwrap();
        assert!(!c.management.enabled);
        assert_eq!(c.management.listener.port(), 1567);
        let e = Config::parse("[management]\nport = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn resource_limits_parse_as_rabbitmq_writes_them() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.vm_memory_high_watermark, ResourceLimit::Relative(0.4));
        assert_eq!(c.disk_free_limit.resolve(0), 50_000_000);
        let c = Config::parse(
            "vm_memory_high_watermark.absolute = \"2GiB\"\ndisk_free_limit.relative = 1.5",
        )
        .unwrap();
        assert_eq!(c.vm_memory_high_watermark.resolve(0), 2 << 30);
        assert_eq!(c.disk_free_limit.resolve(1000), 1500);
        let c = Config::parse("vm_memory_high_watermark = { absolute = 1000 }").unwrap();
        assert_eq!(c.vm_memory_high_watermark.resolve(7), 1000);
        for (text, key) in [
            (
                "vm_memory_high_watermark.relative = 1.5",
                "vm_memory_high_watermark",
            ),
            ("disk_free_limit.absolute = \"50XB\"", "unknown unit 'XB'"),
            ("vm_memory_high_watermark.ratio = 0.5", "ratio"),
            ("memory_monitor_interval = 0", "memory_monitor_interval"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("50MB".parse::<ByteSize>().unwrap().0, 50_000_000);
        assert!("99999999999999999999G".parse::<ByteSize>().is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("frame_maxx = 3").unwrap_err().to_string();
        assert!(e.contains("frame_maxx"), "{e}");
    }

    #[test]
    fn out_of_range_value_is_named() {
        let e = Config::parse("frame_max = 10").unwrap_err().to_string();
        assert!(e.contains("frame_max"), "{e}");
    }

    #[test]
    fn policies_parse_and_bad_patterns_are_named() {
        let c = Config::parse(
            r#"
[[policies]]
name = "retry"
pattern = "^work\\."
apply-to = "queues"
priority = 1
definition = { message-ttl = 500, dead-letter-exchange = "dlx" }
"#,
        )
        .unwrap();
        assert_eq!(c.policies[0].definition.message_ttl, Some(500));
        assert!(c.policies[0].applies("work.a", true));
        assert!(!c.policies[0].applies("work.a", false));
        let e = Config::parse("[[policies]]\nname='x'\npattern='('\ndefinition={}\n").unwrap_err();
        assert!(e.to_string().contains("policies.pattern"), "{e}");
    }

    #[test]
    fn worker_threads_is_checked_and_defaults_to_half_the_cpus() {
        let e = Config::parse("worker_threads = 5000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker_threads"), "{e}");
        assert_eq!(Config::parse("worker_threads = 3").unwrap().workers(), 3);
        let auto = Config::default().workers();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(auto, (cpus / 2).max(1));
    }

    #[test]
    fn tls_keys_parse_and_inconsistent_ones_are_named() {
        let c = Config::parse(
            "listeners_tls = [\"127.0.0.1:5671\"]\nssl_cert_login_from = \"common_name\"\n\
             auth_mechanisms = [\"EXTERNAL\"]\n[tls]\ncertfile = \"c.pem\"\nkeyfile = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.ssl_cert_login_from, CertLoginFrom::CommonName);
        assert_eq!(c.tls.versions, ["tlsv1.2", "tlsv1.3"]);
        assert!(c.uses_tls());
        let d = Config::default();
        assert!(!d.uses_tls());
        assert_eq!(d.ssl_cert_login_from, CertLoginFrom::DistinguishedName);
        for (text, key) in [
            ("listeners_tls = [\"127.0.0.1:5671\"]", "tls.certfile"),
            (
                "[tls]\nfail_if_no_peer_cert = true",
                "tls.fail_if_no_peer_cert",
            ),
            ("[tls]\nverify_peer = true", "tls.verify_peer"),
            ("[tls]\nversions = [\"sslv3\"]", "tls.versions"),
            ("auth_mechanisms = [\"CRAM-MD5\"]", "auth_mechanisms"),
            ("ssl_cert_login_from = \"serial\"", "`serial`"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn the_shipped_rabbit_toml_parses() {
        let text = include_str!("../rabbit.toml");
        Config::parse(text).unwrap();
    }
}
