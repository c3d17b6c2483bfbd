//! The engine's narrow edge to the judge: per verification step, a
//! [`Verifier`] is fed one [`Tick`] of per-interval counts (the candidate's and
//! the live baseline's, per SLO) and answers a [`Decision`] with its evidence.
//! [`crate::engine::judge_adapter`] implements it with the `judge` crate; the
//! engine's tests script it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::phase::Decision;
use crate::platform::{Strategy, Target};
use crate::signals::Counts;

/// One SLO's counts over one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SloCounts {
    /// The candidate's events in the interval.
    pub candidate: Counts,
    /// The live stable replicas' events in the interval (zero when none serve).
    pub baseline: Counts,
}

/// What the judge sees on a tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    /// Length of the interval, seconds.
    pub seconds: f64,
    /// Per SLO name. An SLO missing here had no data this interval.
    pub slos: BTreeMap<String, SloCounts>,
    /// The canary's router weight while a canary runs beside its baseline.
    pub canary_share: Option<f64>,
    /// `false` when the source could not be read (counts are empty).
    pub source_ok: bool,
}

/// A decision with the numbers behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    /// The judge's words for where it stands, also while it continues
    /// ("verifying: availability: no events yet …"), for people watching.
    pub reason: String,
    /// Summary for history and notifications (the deciding SLO's numbers).
    pub evidence: notify::Evidence,
    /// Full per-SLO evidence as the judge reported it (JSON), for the API.
    pub detail: serde_json::Value,
}

/// Judge state for one verification step of one rollout (and, for the last
/// step, the watch after the promote).
pub trait Verifier: Send {
    fn step(&mut self, tick: &Tick) -> Verdict;

    /// Everything the verifier has gathered, for [`JudgeFactory::restore`]
    /// after a restart; `None` when it cannot be saved (then a restarted
    /// guard verifies the step afresh).
    fn checkpoint(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Makes a fresh [`Verifier`] for each step.
pub trait JudgeFactory: Send + Sync + 'static {
    /// `history`: the stable release's counts per SLO over the window before
    /// the rollout (the rolling baseline); empty when unknown.
    fn verifier(
        &self,
        target: &Target,
        strategy: Strategy,
        history: &BTreeMap<String, Counts>,
    ) -> Box<dyn Verifier>;

    /// A verifier that goes on from a [`Verifier::checkpoint`], or `None`
    /// when the checkpoint does not fit `target`'s current configuration
    /// (then the step is verified afresh).
    fn restore(
        &self,
        _target: &Target,
        _checkpoint: &serde_json::Value,
    ) -> Option<Box<dyn Verifier>> {
        None
    }
}
