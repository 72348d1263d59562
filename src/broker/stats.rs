//! Sampled statistics: the message rates and the broker-wide and per-vhost totals that the
//! management API (and later the metrics endpoint) shows.
//!
//! The hot path only bumps the per-queue atomics it always kept (`QueueStats`). A sampler
//! walks every queue once per interval (RabbitMQ's `collect_statistics_interval`, 5 s by
//! default), off the reactor, and records what it read in each queue's [`Slot`], in each
//! vhost's and in the broker's: the figures and, from the previous sample, their rates per
//! second. Readers take a slot's short lock and copy it out, so `GET /api/overview` costs the
//! same at 100,000 queues as at one; in exchange, totals are as old as the last sample (as
//! RabbitMQ's are). Owns [`Figures`], [`Slot`] and [`sample`]; reads `Broker`, `VHost` and
//! `Queue`, and is read by `crate::http`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::Broker;
use super::queue::{Queue, QueueSnapshot};

/// RabbitMQ's default `collect_statistics_interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Index of each figure in [`Figures::0`] (and of its rate in [`Slot::rates`]).
pub mod fig {
    /// Messages ready plus unacknowledged.
    pub const MESSAGES: usize = 0;
    /// Messages ready for delivery.
    pub const READY: usize = 1;
    /// Delivered, not yet settled.
    pub const UNACKED: usize = 2;
    /// Messages enqueued (count).
    pub const PUBLISH: usize = 3;
    /// Deliveries plus gets (count).
    pub const DELIVER_GET: usize = 4;
    /// Acknowledgements (count).
    pub const ACK: usize = 5;
    /// Redeliveries (count).
    pub const REDELIVER: usize = 6;
    /// How many figures there are.
    pub const N: usize = 7;
}

/// One reading of a queue's (or a sum of queues') figures, indexed by [`fig`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures(pub [u64; fig::N]);

impl Figures {
    /// A queue's figures now (takes its lock once, for the ready count).
    pub fn of(q: &Queue) -> (Self, u32) {
        let s = q.snapshot();
        (Self::with(q, &s), s.consumers)
    }

    /// A queue's figures, its ready count from a snapshot already taken.
    pub fn with(q: &Queue, s: &QueueSnapshot) -> Self {
        let unacked = q.stats.unacked.load(Relaxed);
        let mut f = [0; fig::N];
        f[fig::MESSAGES] = s.ready + unacked;
        f[fig::READY] = s.ready;
        f[fig::UNACKED] = unacked;
        f[fig::PUBLISH] = q.stats.publish.load(Relaxed);
        f[fig::DELIVER_GET] = q.stats.deliver_get.load(Relaxed);
        f[fig::ACK] = q.stats.ack.load(Relaxed);
        f[fig::REDELIVER] = q.stats.redeliver.load(Relaxed);
        Self(f)
    }

    fn add(&mut self, o: &Self) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a = a.saturating_add(b);
        }
    }
}

/// The last sample of one object: its figures, their rates per second since the sample
/// before, and (for sums) how many queues and consumers went into it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// When it was taken (`None` before the first sample).
    pub at: Option<Instant>,
    /// The figures read.
    pub figures: Figures,
    /// Change per second of each figure since the previous sample (0 after the first).
    pub rates: [f64; fig::N],
    /// Queues summed (sums only).
    pub queues: u64,
    /// Consumers summed (or the queue's own).
    pub consumers: u64,
}

impl Slot {
    /// Records a new reading taken at `at`, computing rates against the previous one. A
    /// counter that went down (a queue deleted from a sum) gives a rate of 0, not negative.
    pub fn record(&mut self, at: Instant, figures: Figures) {
        if let Some(prev) = self.at {
            let dt = at.saturating_duration_since(prev).as_secs_f64();
            for i in 0..fig::N {
                let (now, was) = (figures.0[i], self.figures.0[i]);
                self.rates[i] = if dt <= 0.0 {
                    self.rates[i]
                } else if i <= fig::UNACKED {
                    // Depths move both ways: their rate may be negative, as RabbitMQ's is.
                    (now as f64 - was as f64) / dt
                } else {
                    now.saturating_sub(was) as f64 / dt
                };
            }
        }
        self.at = Some(at);
        self.figures = figures;
    }
}

/// Samples every queue of every vhost once: each queue's slot, each vhost's sum and the
/// broker's. Blocking work (one short lock per queue): run it off the reactor.
pub fn sample(broker: &Broker) {
    let now = Instant::now();
    let mut all = Figures::default();
    let (mut queues, mut consumers) = (0, 0);
    for v in broker.vhosts() {
        let mut sum = Figures::default();
        let (mut vq, mut vc) = (0u64, 0u64);
        v.for_each_queue(|q| {
            let (f, c) = Figures::of(q);
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
    let mut slot = broker.sampled.lock();
    slot.record(now, all);
    slot.queues = queues;
    slot.consumers = consumers;
}

/// Samples now and then every `interval`, until the runtime stops. The first sample is
/// taken before this returns, so the first request after start already has figures.
pub async fn run(broker: std::sync::Arc<Broker>, interval: Duration) {
    let interval = interval.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let b = broker.clone();
        if tokio::task::spawn_blocking(move || sample(&b))
            .await
            .is_err()
        {
            tracing::warn!("statistics sample failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_and_depth_rates_may_be_negative() {
        let t0 = Instant::now();
        let mut s = Slot::default();
        let mut f = Figures::default();
        f.0[fig::READY] = 10;
        f.0[fig::PUBLISH] = 100;
        s.record(t0, f);
        assert_eq!(s.rates, [0.0; fig::N]);
        f.0[fig::READY] = 4;
        f.0[fig::PUBLISH] = 300;
        s.record(t0 + Duration::from_secs(2), f);
        assert_eq!(s.rates[fig::PUBLISH], 100.0);
        assert_eq!(s.rates[fig::READY], -3.0);
        // A sum that lost a deleted queue's counts does not report a negative count rate.
        f.0[fig::PUBLISH] = 50;
        s.record(t0 + Duration::from_secs(3), f);
        assert_eq!(s.rates[fig::PUBLISH], 0.0);
    }
}
