//! Learning-rate schedule: linear warmup, then cosine decay to a floor; as a pure function of
//! the step ([`WarmupCosine`]) and as a Burn [`LrScheduler`] ([`WarmupCosineScheduler`]).
//!
//! Burn 0.21 has no equivalent to delegate to: its `ComposedLrScheduler` combines schedulers
//! *at the same step* (product, sum or mean), not one after the other, so a warmup followed by a
//! cosine cannot be written with it, and its cosine restarts after `num_iters` instead of
//! holding the floor.

use burn::lr_scheduler::LrScheduler;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// `lr(step)`: rises linearly from `peak / warmup` to `peak` over `warmup` steps, then follows a
/// half cosine from `peak` down to `floor` at `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub peak: f64,
    /// Final learning rate.
    pub floor: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
}

impl WarmupCosine {
    /// The learning rate of `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let decay_steps = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / decay_steps as f64).min(1.0);
        self.floor
            + 0.5 * (self.peak - self.floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// [`WarmupCosine`] as a Burn learning-rate scheduler, for `burn-train`'s `Learner`: the calls
/// to [`LrScheduler::step`] return the rates of optimizer steps 0, 1, 2, ... Its record is the
/// number of calls made, so a resumed `Learner` continues the schedule exactly.
///
/// Burn's `Learner` calls the scheduler once per micro-batch, so with gradient accumulation it
/// is called `accumulation` times per optimizer step, and the optimizer uses the last rate:
/// [`WarmupCosineScheduler::with_calls_per_step`] keeps the schedule counted in optimizer
/// steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosineScheduler {
    schedule: WarmupCosine,
    calls_per_step: u64,
    calls: u64,
}

impl WarmupCosineScheduler {
    /// A scheduler at step 0 of `schedule`, called once per optimizer step.
    pub fn new(schedule: WarmupCosine) -> Self {
        Self {
            schedule,
            calls_per_step: 1,
            calls: 0,
        }
    }

    /// Called `calls` times per optimizer step (at least once).
    pub fn with_calls_per_step(self, calls: u64) -> Self {
        Self {
            calls_per_step: calls.max(1),
            ..self
        }
    }

    /// The optimizer step whose rate the next call to [`LrScheduler::step`] returns.
    pub fn next_step(&self) -> u64 {
        self.calls / self.calls_per_step
    }
}

impl LrScheduler for WarmupCosineScheduler {
    type Record<B: Backend> = u64;

    fn step(&mut self) -> f64 {
        let rate = self.schedule.at(self.next_step());
        self.calls += 1;
        rate
    }

    fn to_record<B: Backend>(&self) -> u64 {
        self.calls
    }

    fn load_record<B: Backend>(self, calls: u64) -> Self {
        Self { calls, ..self }
    }
}

#[cfg(test)]
mod tests {
    use burn::lr_scheduler::LrScheduler;
    use burn_ndarray::NdArray;

    use super::{WarmupCosine, WarmupCosineScheduler};

    #[test]
    fn the_scheduler_follows_the_schedule_and_resumes_from_its_record() {
        let schedule = WarmupCosine {
            peak: 1e-3,
            floor: 1e-4,
            warmup: 3,
            total: 20,
        };
        let mut scheduler = WarmupCosineScheduler::new(schedule);
        for step in 0..8 {
            assert_eq!(scheduler.step(), schedule.at(step));
        }
        let record = scheduler.to_record::<NdArray>();
        let mut resumed = WarmupCosineScheduler::new(schedule).load_record::<NdArray>(record);
        for step in 8..25 {
            assert_eq!(resumed.step(), schedule.at(step));
        }
        let mut accumulating = WarmupCosineScheduler::new(schedule).with_calls_per_step(3);
        for call in 0..30 {
            assert_eq!(accumulating.step(), schedule.at(call / 3));
        }
    }

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        let s = WarmupCosine {
            peak: 1e-3,
            floor: 1e-4,
            warmup: 10,
            total: 110,
        };
        assert!((s.at(0) - 1e-4).abs() < 1e-12);
        assert!((s.at(9) - 1e-3).abs() < 1e-12);
        assert!((s.at(10) - 1e-3).abs() < 1e-12);
        assert!((s.at(60) - 5.5e-4).abs() < 1e-12);
        assert!((s.at(110) - 1e-4).abs() < 1e-12);
        assert!((s.at(500) - 1e-4).abs() < 1e-12);
        assert!((1..110).all(|i| s.at(i + 10) <= s.at(i + 9) + 1e-15));
    }
}
