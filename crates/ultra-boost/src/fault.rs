//! Fault injection for `GET /`: a share of answers turned into 500s and a fixed
//! added latency, used to prove that guard catches bad releases.
//!
//! The draws come from SplitMix64 over one atomic counter: lock-free on the
//! request path, and one reproducible sequence per seed (across all worker
//! threads, in the order requests draw).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The configured faults and the random sequence deciding which requests fail.
#[derive(Debug)]
pub struct Faults {
    error_rate: f64,
    latency: Option<Duration>,
    state: AtomicU64,
}

impl Faults {
    /// Faults with this error share, added latency and seed.
    pub fn new(error_rate: f64, latency_ms: u64, seed: u64) -> Faults {
        Faults {
            error_rate,
            latency: (latency_ms > 0).then(|| Duration::from_millis(latency_ms)),
            state: AtomicU64::new(seed),
        }
    }

    /// Latency to add to the request, if any.
    pub fn latency(&self) -> Option<Duration> {
        self.latency
    }

    /// Whether this request must fail. Draws nothing when the rate is 0.
    pub fn should_fail(&self) -> bool {
        self.error_rate > 0.0 && self.next_unit() < self.error_rate
    }

    /// A uniform draw in [0, 1).
    fn next_unit(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed for when none is configured: differs between processes and starts.
pub fn default_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_fails_and_full_always_fails() {
        let off = Faults::new(0.0, 0, 1);
        assert!((0..10_000).all(|_| !off.should_fail()));
        let all = Faults::new(1.0, 0, 1);
        assert!((0..10_000).all(|_| all.should_fail()));
        assert_eq!(off.latency(), None);
        assert_eq!(
            Faults::new(0.0, 250, 1).latency(),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn share_is_within_five_sigma() {
        let (n, p) = (100_000u32, 0.1);
        let f = Faults::new(p, 0, 42);
        let k = (0..n).filter(|_| f.should_fail()).count() as f64;
        let mean = f64::from(n) * p;
        let sigma = (mean * (1.0 - p)).sqrt();
        assert!(
            (k - mean).abs() < 5.0 * sigma,
            "k={k} mean={mean} sigma={sigma}"
        );
    }

    #[test]
    fn same_seed_same_sequence() {
        let a = Faults::new(0.5, 0, 7);
        let b = Faults::new(0.5, 0, 7);
        let sa: Vec<bool> = (0..64).map(|_| a.should_fail()).collect();
        let sb: Vec<bool> = (0..64).map(|_| b.should_fail()).collect();
        assert_eq!(sa, sb);
    }

    #[test]
    fn draws_are_in_unit_interval() {
        let f = Faults::new(0.5, 0, u64::MAX);
        for _ in 0..10_000 {
            let u = f.next_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
