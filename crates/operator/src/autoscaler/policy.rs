//! The scaling rule, shared by the live autoscaler and `workerpool-operator simulate`.
//!
//! `desired = clamp(ceil(queueLength × scalingFactor), minReplicas, maxReplicas)`; a higher
//! count is applied at once, a lower one only after it has been the highest recommendation
//! for the whole scale-down stabilization window.

use std::collections::VecDeque;
use std::time::Duration;

/// Workers for `queue_length` tasks: `clamp(ceil(queue_length × factor), min, max)`.
pub fn recommend(queue_length: u64, factor: f64, min: i32, max: i32) -> i32 {
    let max = max.max(0);
    let min = min.clamp(0, max);
    let raw = (queue_length as f64 * factor).ceil();
    if !raw.is_finite() || raw >= f64::from(max) {
        return max;
    }
    (raw.max(0.0) as i32).clamp(min, max)
}

/// Scale-down stabilization: remembers recommendations for `window` and answers their maximum.
#[derive(Clone, Debug, Default)]
pub struct Stabilizer {
    window: Duration,
    history: VecDeque<(Duration, i32)>,
}

impl Stabilizer {
    /// A stabilizer over `window` (zero: every recommendation is applied at once).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            history: VecDeque::new(),
        }
    }

    /// Changes the window, keeping the history.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Records `recommendation` at time `now` (any monotonic origin) and returns the count to
    /// apply: the largest recommendation of the last `window`.
    pub fn next(&mut self, now: Duration, recommendation: i32) -> i32 {
        while let Some(&(t, _)) = self.history.front() {
            if now.saturating_sub(t) > self.window {
                self.history.pop_front();
            } else {
                break;
            }
        }
        while let Some(&(_, r)) = self.history.back() {
            if r <= recommendation {
                self.history.pop_back();
            } else {
                break;
            }
        }
        self.history.push_back((now, recommendation));
        self.history
            .front()
            .map_or(recommendation, |&(_, r)| r.max(recommendation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_matches_the_seed() {
        let cases = [
            // (queue length, factor, min, max, want)
            (0, 2.0, 1, 10, 1),
            (1, 2.0, 1, 10, 2),
            (3, 2.0, 1, 10, 6),
            (100, 2.0, 1, 10, 10),
            (7, 0.5, 0, 10, 4),
            (7, 0.1, 0, 10, 1),
            (0, 0.1, 0, 10, 0),
            (10, 0.25, 3, 10, 3),
            (u64::MAX, 1.0, 0, 5, 5),
            (5, 1.0, 4, 2, 2),
        ];
        for (len, factor, min, max, want) in cases {
            assert_eq!(
                recommend(len, factor, min, max),
                want,
                "len={len} factor={factor} min={min} max={max}"
            );
        }
    }

    #[test]
    fn scale_up_is_immediate_scale_down_waits_for_the_window() {
        let mut s = Stabilizer::new(Duration::from_secs(10));
        let t = Duration::from_secs;
        assert_eq!(s.next(t(0), 2), 2);
        assert_eq!(s.next(t(1), 8), 8, "up at once");
        assert_eq!(s.next(t(2), 3), 8, "down waits");
        assert_eq!(s.next(t(11), 3), 8, "8 is still within the window");
        assert_eq!(s.next(t(12), 3), 3, "8 has left the window");
        assert_eq!(s.next(t(13), 1), 3);
        assert_eq!(s.next(t(23), 1), 1);
    }

    #[test]
    fn zero_window_follows_every_recommendation() {
        let mut s = Stabilizer::new(Duration::ZERO);
        let t = Duration::from_secs;
        assert_eq!(s.next(t(0), 5), 5);
        assert_eq!(s.next(t(1), 1), 1);
        assert_eq!(s.next(t(2), 4), 4);
    }
}
