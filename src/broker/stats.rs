//! Sampled statistics: the message rates and the broker-wide and per-vhost totals that the
//! management API (and later the metrics endpoint) shows.
//!
//! The hot path only bumps the per-queue atomics it always kept (`QueueStats`). A sampler
//! walks every queue once per interval (RabbitMQ's `collect_statistics_interval`, 5 s by
//! default), off the reactor, and records what it read in each queue's [`Slot`], in each
//! vhost's and in the broker's: the figures and, from the previous sample, their rates per
//! second. Readers take a slot's short lock and copy it out, so `GET /api/overview` costs the
//! same at 100,000 queues as at one; in exchange, totals are as old as the last sample (as
//! RabbitMQ's are). Owns [`Figures`] and [`Slot`], plain data: the queues fill in their
//! figures (`Queue::figures`), `Broker::sample_statistics` walks them, `crate::http` reads.

use std::time::{Duration, Instant};

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
    /// Adds `o` into these figures.
    pub fn add(&mut self, o: &Self) {
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
