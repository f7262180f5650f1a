//! ElectrumX's session cost model (aiorpcx): requests, bandwidth and errors add cost, cost
//! decays over time, and between the soft and hard limits a session's concurrency falls
//! and its requests sleep; at the hard limit it is disconnected.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// The cost of an error; errors that took resources to find cost more.
pub const ERROR_BASE_COST: f64 = 100.0;
/// Unparsable messages cost ten times more again.
pub const PARSE_ERROR_EXTRA_COST: f64 = ERROR_BASE_COST * 10.0;
/// A new session's cost, so that connecting is not free.
pub const CONNECTION_COST: f64 = 5.0;

/// Cost settings, from the configuration.
#[derive(Clone, Debug)]
pub struct CostParams {
    pub soft_limit: f64,
    /// Zero disables throttling (the local RPC).
    pub hard_limit: f64,
    pub bw_cost_per_byte: f64,
    pub sleep: Duration,
    pub initial_concurrent: usize,
}

impl CostParams {
    pub fn from_config(config: &Config) -> CostParams {
        CostParams {
            soft_limit: config.cost_soft_limit,
            hard_limit: config.cost_hard_limit,
            bw_cost_per_byte: 1.0 / config.bandwidth_unit_cost as f64,
            sleep: config.request_sleep,
            initial_concurrent: config.initial_concurrent,
        }
    }

    /// The local RPC: no throttling.
    pub fn unlimited(initial_concurrent: usize) -> CostParams {
        CostParams {
            soft_limit: 0.0,
            hard_limit: 0.0,
            bw_cost_per_byte: 0.0,
            sleep: Duration::ZERO,
            initial_concurrent,
        }
    }
}

/// A session's cost and the throttling derived from it.
#[derive(Debug)]
pub struct Cost {
    params: CostParams,
    cost: f64,
    cost_last: f64,
    cost_time: Instant,
    fraction: f64,
    decay_per_sec: f64,
}

impl Cost {
    pub fn new(params: CostParams) -> Cost {
        let decay_per_sec = params.hard_limit / 10_000.0;
        Cost {
            params,
            cost: 0.0,
            cost_last: 0.0,
            cost_time: Instant::now(),
            fraction: 0.0,
            decay_per_sec,
        }
    }

    pub fn value(&self) -> f64 {
        self.cost
    }

    /// Where the cost sits between the soft (0) and hard (1) limits, or beyond.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// The sleep before handling a request.
    pub fn sleep(&self) -> Duration {
        self.params.sleep.mul_f64(self.fraction.min(1.0))
    }

    pub fn bw_cost(&self, bytes: usize) -> f64 {
        bytes as f64 * self.params.bw_cost_per_byte
    }

    /// Adds (or with a negative delta, refunds) cost; recalculates when it drifted.
    /// `extra` is the cost the session bears for its group.
    pub fn bump(&mut self, delta: f64, extra: f64, concurrency: &Concurrency) {
        self.cost = (self.cost + delta).max(0.0);
        if (self.cost - self.cost_last).abs() > 100.0 {
            self.recalc(extra, concurrency, Instant::now());
        }
    }

    /// Subscriptions have an ongoing cost: decay slows as they grow.
    pub fn set_subscriptions(&mut self, count: usize) {
        self.decay_per_sec = self.params.hard_limit / (10_000.0 + 5.0 * count as f64);
    }

    /// Applies the decay since the last recalculation and retargets concurrency from the
    /// session's cost plus `extra`, its share of its group's.
    pub fn recalc(&mut self, extra: f64, concurrency: &Concurrency, now: Instant) {
        let elapsed = now.saturating_duration_since(self.cost_time).as_secs_f64();
        self.cost = (self.cost - elapsed * self.decay_per_sec).max(0.0);
        self.cost_time = now;
        self.cost_last = self.cost;
        let soft_range = self.params.hard_limit - self.params.soft_limit;
        if soft_range <= 0.0 {
            return;
        }
        self.fraction = ((self.cost + extra - self.params.soft_limit) / soft_range).max(0.0);
        let target = ((1.0 - self.fraction) * self.params.initial_concurrent as f64)
            .ceil()
            .max(0.0);
        concurrency.set_target(target as i64);
    }
}

/// The session is over its hard cost limit.
#[derive(Debug, PartialEq, Eq)]
pub struct ExcessiveCost;

/// A semaphore whose size follows a moving target (aiorpcx's `Concurrency`).
#[derive(Debug)]
pub struct Concurrency {
    semaphore: Arc<Semaphore>,
    /// (target, permits the semaphore currently represents)
    state: Mutex<(i64, i64)>,
}

impl Concurrency {
    pub fn new(target: usize) -> Arc<Concurrency> {
        Arc::new(Concurrency {
            semaphore: Arc::new(Semaphore::new(target)),
            state: Mutex::new((target as i64, target as i64)),
        })
    }

    pub fn max_concurrent(&self) -> i64 {
        self.lock().0
    }

    pub fn set_target(&self, target: i64) {
        self.lock().0 = target;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (i64, i64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot; fails once the target has fallen to zero.
    pub async fn enter(self: &Arc<Self>) -> Result<ConcurrencyGuard, ExcessiveCost> {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ExcessiveCost)?;
        let mut state = self.lock();
        if state.0 <= 0 {
            return Err(ExcessiveCost);
        }
        while state.1 < state.0 {
            state.1 += 1;
            self.semaphore.add_permits(1);
        }
        Ok(ConcurrencyGuard {
            permit: Some(permit),
            owner: self.clone(),
        })
    }
}

/// A held slot; leaving it shrinks the semaphore when the target fell meanwhile.
pub struct ConcurrencyGuard {
    permit: Option<OwnedSemaphorePermit>,
    owner: Arc<Concurrency>,
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        let mut state = self.owner.lock();
        if let Some(permit) = self.permit.take() {
            if state.1 > state.0 {
                state.1 -= 1;
                permit.forget();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> CostParams {
        CostParams {
            soft_limit: 1000.0,
            hard_limit: 2000.0,
            bw_cost_per_byte: 0.001,
            sleep: Duration::from_millis(1000),
            initial_concurrent: 10,
        }
    }

    #[test]
    fn throttling_between_limits() {
        let conc = Concurrency::new(10);
        let mut cost = Cost::new(params());
        cost.bump(50.0, 0.0, &conc);
        assert_eq!(
            (cost.value(), cost.fraction(), conc.max_concurrent()),
            (50.0, 0.0, 10)
        );
        cost.bump(1500.0, 0.0, &conc);
        let now = cost.cost_time;
        cost.recalc(0.0, &conc, now);
        // A few microseconds of decay (0.2 per second) may have passed since the bump.
        assert!((cost.fraction() - 0.55).abs() < 1e-6, "{}", cost.fraction());
        assert_eq!(conc.max_concurrent(), 5);
        assert!(cost.sleep().abs_diff(Duration::from_millis(550)) < Duration::from_millis(1));
        cost.bump(500.0, 0.0, &conc);
        cost.recalc(0.0, &conc, now);
        assert_eq!(conc.max_concurrent(), 0);
        assert_eq!(cost.bw_cost(5000), 5.0);
    }

    #[test]
    fn cost_decays_and_never_goes_negative() {
        let conc = Concurrency::new(10);
        let mut cost = Cost::new(params());
        cost.bump(500.0, 0.0, &conc);
        let later = cost.cost_time + Duration::from_secs(1000);
        cost.recalc(0.0, &conc, later); // 0.2 per second
        assert!((cost.value() - 300.0).abs() < 1e-6, "{}", cost.value());
        cost.set_subscriptions(10_000);
        cost.recalc(0.0, &conc, later + Duration::from_secs(1000)); // 2000 / 60000 per second
        assert!(
            (cost.value() - (300.0 - 1000.0 / 30.0)).abs() < 1e-6,
            "{}",
            cost.value()
        );
        cost.bump(-1e9, 0.0, &conc);
        assert_eq!(cost.value(), 0.0);
    }

    #[test]
    fn group_cost_throttles_too() {
        let conc = Concurrency::new(10);
        let mut cost = Cost::new(params());
        let now = cost.cost_time;
        cost.recalc(1500.0, &conc, now);
        assert_eq!(
            (cost.value(), cost.fraction(), conc.max_concurrent()),
            (0.0, 0.5, 5)
        );
    }

    #[test]
    fn no_hard_limit_means_no_throttling() {
        let conc = Concurrency::new(3);
        let mut cost = Cost::new(CostParams::unlimited(3));
        cost.bump(1e9, 0.0, &conc);
        assert_eq!((cost.fraction(), conc.max_concurrent()), (0.0, 3));
    }

    #[tokio::test]
    async fn concurrency_follows_target() {
        let conc = Concurrency::new(2);
        let a = conc.enter().await.unwrap();
        let b = conc.enter().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(20), conc.enter())
                .await
                .is_err()
        );
        conc.set_target(1);
        drop(a); // shrinks: still no room
        assert!(
            tokio::time::timeout(Duration::from_millis(20), conc.enter())
                .await
                .is_err()
        );
        drop(b);
        let c = conc.enter().await.unwrap();
        conc.set_target(3);
        drop(c);
        let _held: Vec<ConcurrencyGuard> = vec![
            conc.enter().await.unwrap(),
            conc.enter().await.unwrap(),
            conc.enter().await.unwrap(),
        ];
        conc.set_target(0);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), conc.enter())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn zero_target_is_excessive() {
        let conc = Concurrency::new(1);
        conc.set_target(0);
        assert_eq!(conc.enter().await.err(), Some(ExcessiveCost));
    }
}
