//! Permissions as RabbitMQ checks them: per user and vhost, three regexes (configure, write,
//! read) matched against resource names; topic permissions per exchange, matched against
//! routing keys (write) and binding keys (read).
//!
//! A channel keeps a [`Cache`] of the answers it has computed, so a publish to the same
//! exchange costs one relaxed atomic load and one string comparison; the cache is dropped
//! whenever the registry's generation moves (any permission, user or vhost change).

use std::sync::Arc;

use regex::Regex;

use crate::error::AmqpError;

/// Which permission a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    /// Declare and delete.
    Configure,
    /// Publish to an exchange, bind to a queue or exchange.
    Write,
    /// Consume, get, purge, bind from an exchange.
    Read,
}

/// What kind of resource a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A queue.
    Queue,
    /// An exchange (the default one is named `amq.default` in checks and errors).
    Exchange,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Exchange => "exchange",
        }
    }
}

/// Compiles a permission regex. RabbitMQ treats an empty string as `^$` (nothing).
///
/// # Errors
/// The regex does not compile (the text says why).
pub fn compile(pattern: &str) -> Result<Regex, String> {
    let p = if pattern.is_empty() { "^$" } else { pattern };
    // A size limit keeps an operator's (or an import's) huge pattern from taking memory
    // without bound; matching is linear in the name with the regex crate.
    regex::RegexBuilder::new(p)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
}

/// A user's permissions in one vhost, compiled.
#[derive(Debug)]
pub struct Compiled {
    /// The three patterns as given.
    pub configure: String,
    /// Write pattern.
    pub write: String,
    /// Read pattern.
    pub read: String,
    re: [Regex; 3],
}

impl Compiled {
    /// Compiles the three patterns.
    ///
    /// # Errors
    /// A pattern that does not compile.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, String> {
        Ok(Self {
            re: [compile(configure)?, compile(write)?, compile(read)?],
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        })
    }

    fn allows(&self, perm: Perm, name: &str) -> bool {
        let i = match perm {
            Perm::Configure => 0,
            Perm::Write => 1,
            Perm::Read => 2,
        };
        self.re[i].is_match(name)
    }
}

/// A user's topic permissions on one exchange, compiled.
#[derive(Debug)]
pub struct CompiledTopic {
    /// The exchange.
    pub exchange: String,
    /// Routing keys that may be published (pattern as given).
    pub write: String,
    /// Binding keys that may be bound.
    pub read: String,
    write_re: Regex,
    read_re: Regex,
}

impl CompiledTopic {
    /// Compiles both patterns.
    ///
    /// # Errors
    /// A pattern that does not compile.
    pub fn new(exchange: &str, write: &str, read: &str) -> Result<Self, String> {
        Ok(Self {
            write_re: compile(write)?,
            read_re: compile(read)?,
            exchange: exchange.into(),
            write: write.into(),
            read: read.into(),
        })
    }
}

/// What a connection's user may do in its vhost, as of one registry generation.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// None: no permissions in this vhost (every check fails).
    pub perms: Option<Arc<Compiled>>,
    /// Topic permissions on any exchange of this vhost (usually none).
    pub topics: Arc<Vec<CompiledTopic>>,
}

/// The most answers a channel remembers before starting over.
const CACHE_MAX: usize = 256;

/// One channel's remembered answers.
#[derive(Debug, Default)]
pub struct Cache {
    generation: u64,
    grant: Option<Grant>,
    /// The exchange last published to, allowed: the publish fast path.
    last_publish: Option<String>,
    /// By (permission, kind), then name: a hit looks a `&str` up without allocating.
    answers: std::collections::HashMap<(Perm, Kind), std::collections::HashMap<String, bool>>,
    /// How many names `answers` holds in all.
    remembered: usize,
}

/// Who is asking, for checks and their error texts.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The authenticated user.
    pub user: &'a str,
    /// The connection's vhost.
    pub vhost: &'a str,
}

impl Cache {
    /// Starts over when the registry moved on; `fetch` reads the current grant.
    fn refresh(&mut self, generation: u64, fetch: impl FnOnce() -> Grant) -> &Grant {
        if self.generation != generation || self.grant.is_none() {
            self.generation = generation;
            self.answers.clear();
            self.remembered = 0;
            self.last_publish = None;
            self.grant = Some(fetch());
        }
        self.grant.get_or_insert_with(Grant::default)
    }

    /// Checks `perm` on a resource; the default exchange is `amq.default`.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED with RabbitMQ's text.
    pub fn check(
        &mut self,
        generation: u64,
        fetch: impl FnOnce() -> Grant,
        who: Subject<'_>,
        perm: Perm,
        kind: Kind,
        name: &str,
    ) -> Result<(), AmqpError> {
        let name = if kind == Kind::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        self.refresh(generation, fetch);
        if perm == Perm::Write
            && kind == Kind::Exchange
            && self.last_publish.as_deref() == Some(name)
        {
            return Ok(());
        }
        let cached = self
            .answers
            .get(&(perm, kind))
            .and_then(|m| m.get(name))
            .copied();
        let ok = match cached {
            Some(ok) => ok,
            None => {
                let ok = self
                    .grant
                    .as_ref()
                    .and_then(|g| g.perms.as_ref())
                    .is_some_and(|p| p.allows(perm, name));
                if self.remembered >= CACHE_MAX {
                    self.answers.clear();
                    self.remembered = 0;
                }
                self.answers
                    .entry((perm, kind))
                    .or_default()
                    .insert(name.to_owned(), ok);
                self.remembered += 1;
                ok
            }
        };
        if !ok {
            return Err(AmqpError::access_refused(format!(
                "access to {} '{name}' in vhost '{}' refused for user '{}'",
                kind.name(),
                who.vhost,
                who.user
            )));
        }
        if perm == Perm::Write && kind == Kind::Exchange {
            self.last_publish = Some(name.to_owned());
        }
        Ok(())
    }

    /// Checks a topic permission: `key` is a routing key (`write`) or a binding key (`read`)
    /// on topic exchange `exchange`. Passes when the user has none for that exchange.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED with RabbitMQ's text.
    pub fn check_topic(
        &mut self,
        generation: u64,
        fetch: impl FnOnce() -> Grant,
        who: Subject<'_>,
        write: bool,
        exchange: &str,
        key: &str,
    ) -> Result<(), AmqpError> {
        let grant = self.refresh(generation, fetch);
        if grant.topics.is_empty() {
            return Ok(());
        }
        let ok = grant
            .topics
            .iter()
            .filter(|t| t.exchange == exchange)
            .all(|t| {
                let re = if write { &t.write_re } else { &t.read_re };
                re.is_match(key)
            });
        if ok {
            return Ok(());
        }
        Err(AmqpError::access_refused(format!(
            "access to topic '{key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
            who.vhost, who.user
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(c: &str, w: &str, r: &str) -> Grant {
        Grant {
            perms: Some(Arc::new(Compiled::new(c, w, r).unwrap())),
            topics: Arc::default(),
        }
    }

    const WHO: Subject<'static> = Subject {
        user: "u",
        vhost: "v",
    };

    #[test]
    fn regexes_are_unanchored_and_empty_means_nothing() {
        let mut c = Cache::default();
        let g = grant("^ref-", ".*", "");
        assert!(
            c.check(1, || g.clone(), WHO, Perm::Configure, Kind::Queue, "ref-q")
                .is_ok()
        );
        let e = c
            .check(
                1,
                || g.clone(),
                WHO,
                Perm::Configure,
                Kind::Queue,
                "x-ref-q",
            )
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to queue 'x-ref-q' in vhost 'v' refused for user 'u'"
        );
        assert!(
            c.check(1, || g.clone(), WHO, Perm::Read, Kind::Queue, "")
                .is_ok()
        );
        assert!(
            c.check(1, || g.clone(), WHO, Perm::Read, Kind::Queue, "q")
                .is_err()
        );
        let e = c
            .check(
                2,
                || grant("", "", "").clone(),
                WHO,
                Perm::Write,
                Kind::Exchange,
                "",
            )
            .unwrap_err();
        assert!(e.text.contains("exchange 'amq.default'"), "{}", e.text);
    }

    #[test]
    fn a_new_generation_rereads_the_grant() {
        let mut c = Cache::default();
        assert!(
            c.check(
                1,
                || grant(".*", ".*", ".*"),
                WHO,
                Perm::Write,
                Kind::Exchange,
                "x"
            )
            .is_ok()
        );
        // Same generation: the cached answer stands without calling fetch.
        assert!(
            c.check(1, || unreachable!(), WHO, Perm::Write, Kind::Exchange, "x")
                .is_ok()
        );
        assert!(
            c.check(2, Grant::default, WHO, Perm::Write, Kind::Exchange, "x")
                .is_err()
        );
    }

    #[test]
    fn topic_permissions_apply_only_to_their_exchange() {
        let mut c = Cache::default();
        let g = Grant {
            perms: None,
            topics: Arc::new(vec![
                CompiledTopic::new("amq.topic", "^a\\.", "^r\\.").unwrap(),
            ]),
        };
        assert!(
            c.check_topic(1, || g.clone(), WHO, true, "amq.topic", "a.b")
                .is_ok()
        );
        let e = c
            .check_topic(1, || g.clone(), WHO, true, "amq.topic", "b.c")
            .unwrap_err();
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to topic 'b.c' in exchange 'amq.topic' in vhost 'v' refused for user 'u'"
        );
        assert!(
            c.check_topic(1, || g.clone(), WHO, false, "amq.topic", "r.x")
                .is_ok()
        );
        assert!(
            c.check_topic(1, || g.clone(), WHO, false, "other", "z")
                .is_ok()
        );
    }
}
