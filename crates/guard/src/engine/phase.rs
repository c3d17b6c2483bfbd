//! The rollout state machine: [`Phase`], the [`Input`]s that move it and the one
//! pure [`transition`] function. No clock, no I/O: the engine feeds it and
//! carries out what the new phase asks for ([`Phase::action`]).
//!
//! ```text
//! Pending ─► Shifting{0} ─acted─► Verifying{0} ─pass─► Shifting{1} ─► … ─► Verifying{last}
//!                                   │  │  │                                   │ pass
//!                        source down│  │  │revert                             ▼
//!                  Held ◄───────────┘  │  └──────────► Reverting ─acted─► Reverted
//!                   │ source up ───────┘pause                ▲
//!                   ▼                  ▼                     │revert (attributable burn)
//!               Verifying           Paused ─resume─►   Promoting ─acted─► Watching ─elapsed─► Promoted
//! ```
//! A hold by the judge (not by a source outage) is still judged: conclusive
//! evidence against the release moves it from `Held` to `Reverting`
//! ("while held: …") without waiting for the person who was told.
//! Persisting rule: the engine stores the *new* phase before calling the
//! platform for its action, so a phase with an action means "this action may or
//! may not have happened yet"; re-running it is safe because platform actions
//! are idempotent.

use serde::{Deserialize, Serialize};

/// Why a rollout is being reverted; decides the terminal phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevertCause {
    /// The judge found attributable budget burn (or the candidate never became ready).
    Judge,
    /// A person aborted the rollout.
    Abort,
    /// A person asked for an older build back (`guard rollback`).
    Rollback,
}

/// Why a rollout is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldCause {
    /// The signal source is down or stale: resumes on its own when it answers again.
    SourceDown,
    /// The judge cannot decide (too little traffic by the deadline, an outage
    /// shared with the baseline): waits for a person to promote, and is still
    /// judged meanwhile, so conclusive evidence against the release reverts it.
    Judge,
}

/// Where a rollout is. Serialised as JSON into the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Recorded, nothing done on the platform yet. Action: none (the engine
    /// moves on at once with [`Input::Begin`]).
    Pending,
    /// The platform is being asked to give the candidate `share` of the traffic
    /// (step `step` of the plan). Action: `Platform::shift`.
    Shifting { step: usize, share: f64 },
    /// The candidate serves `share`; the judge is consulted every tick. Action: none.
    Verifying { step: usize, share: f64 },
    /// Nothing moves until a person resumes; traffic stays at `share`. Action: none.
    Paused { step: usize, share: f64 },
    /// guard cannot decide; traffic stays at `share` and a person is told. A
    /// source outage clears itself when the source answers again; a hold by
    /// the judge turns into a revert if the evidence becomes conclusive
    /// against the release. Action: none.
    Held {
        step: usize,
        share: f64,
        cause: HoldCause,
        reason: String,
    },
    /// The candidate passed (or a person promoted it); it becomes the stable
    /// release at 100 %. Action: `Platform::promote`.
    Promoting { reason: String },
    /// Promoted and still watched until `until_ms` (unix ms): attributable burn
    /// in this window still reverts. Action: none.
    Watching { until_ms: i64 },
    /// The previous build is being put back at 100 % and the candidate drained.
    /// Action: `Platform::revert`.
    Reverting { reason: String, cause: RevertCause },
    /// Terminal: the candidate is the stable release.
    Promoted,
    /// Terminal: the judge reverted the candidate.
    Reverted,
    /// Terminal: a person aborted; the previous build runs.
    Aborted,
    /// Terminal: a person's rollback finished; the requested build runs.
    RolledBack,
}

/// What the engine must do on entering a phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    None,
    Shift { share: f64 },
    Promote,
    Revert,
}

impl Phase {
    /// Short name, for logs, the store's `state` column and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Shifting { .. } => "shifting",
            Phase::Verifying { .. } => "verifying",
            Phase::Paused { .. } => "paused",
            Phase::Held { .. } => "held",
            Phase::Promoting { .. } => "promoting",
            Phase::Watching { .. } => "watching",
            Phase::Reverting { .. } => "reverting",
            Phase::Promoted => "promoted",
            Phase::Reverted => "reverted",
            Phase::Aborted => "aborted",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// The platform action this phase asks for.
    pub fn action(&self) -> Action {
        match self {
            Phase::Shifting { share, .. } => Action::Shift { share: *share },
            Phase::Promoting { .. } => Action::Promote,
            Phase::Reverting { .. } => Action::Revert,
            _ => Action::None,
        }
    }

    /// `true` once the rollout is over.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Promoted | Phase::Reverted | Phase::Aborted | Phase::RolledBack
        )
    }

    /// `true` in the phases where the candidate serves traffic and is judged.
    pub fn takes_traffic(&self) -> bool {
        matches!(self, Phase::Verifying { .. } | Phase::Watching { .. })
    }

    /// The candidate's traffic share as far as the plan goes.
    pub fn share(&self) -> f64 {
        match self {
            Phase::Shifting { share, .. }
            | Phase::Verifying { share, .. }
            | Phase::Paused { share, .. }
            | Phase::Held { share, .. } => *share,
            Phase::Promoting { .. } | Phase::Watching { .. } | Phase::Promoted => 1.0,
            _ => 0.0,
        }
    }

    /// The verdict this phase records: `promote`, `revert`, `abort`, `rollback`.
    pub fn verdict(&self) -> Option<&'static str> {
        match self {
            Phase::Promoting { .. } | Phase::Promoted => Some("promote"),
            Phase::Reverting {
                cause: RevertCause::Judge,
                ..
            }
            | Phase::Reverted => Some("revert"),
            Phase::Reverting {
                cause: RevertCause::Abort,
                ..
            }
            | Phase::Aborted => Some("abort"),
            Phase::Reverting {
                cause: RevertCause::Rollback,
                ..
            }
            | Phase::RolledBack => Some("rollback"),
            _ => None,
        }
    }
}

/// The judge's decision for the step being verified, as the engine sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Not enough evidence yet: keep verifying.
    Continue,
    /// The candidate passes this step.
    Pass { reason: String },
    /// Attributable burn: put the previous build back.
    Revert { reason: String },
    /// Cannot decide (deadline without enough data, shared outage).
    Hold { reason: String },
}

/// A person's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Skip the rest of verification and promote now.
    Promote,
    /// Put the previous build back.
    Abort,
    /// Freeze where it is.
    Pause,
    /// Go on verifying after a pause or a hold.
    Resume,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::Abort => "abort",
            Command::Pause => "pause",
            Command::Resume => "resume",
        }
    }
}

/// What moves a rollout.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Start a pending rollout.
    Begin,
    /// The current phase's platform action completed.
    Acted,
    /// The current phase's platform action failed with this detail.
    ActionFailed {
        detail: String,
        candidate_not_ready: bool,
    },
    /// The judge's decision on this tick.
    Judged(Decision),
    /// The signal source is down or stale.
    SourceDown { detail: String },
    /// The signal source answers again.
    SourceUp,
    /// The post-promote watch period is over (clock passed `until_ms`).
    WatchElapsed,
    /// A person's command.
    Command(Command),
}

/// The shape of a rollout that the state machine needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Candidate traffic share at each verification step; the last is 1.0 for
    /// rolling updates (every replica replaced) and may be below for canaries
    /// (promotion moves to 100 %).
    pub steps: Vec<f64>,
    /// Post-promote watch, milliseconds.
    pub watch_ms: i64,
    /// `false` for a target's first release or a rollback: nothing to verify against.
    pub verify: bool,
}

/// Why an input was refused in a phase (commands only; other inputs that do
/// not apply leave the phase unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command} a rollout that is {phase}")]
pub struct Refused {
    pub command: &'static str,
    pub phase: &'static str,
}

/// The one transition function. `now_ms` only stamps the watch deadline.
/// Returns the next phase (equal to `phase` when the input changes nothing).
pub fn transition(
    phase: &Phase,
    input: &Input,
    plan: &Plan,
    now_ms: i64,
) -> Result<Phase, Refused> {
    use Phase as P;
    let first_shift = || match plan.steps.first() {
        Some(&share) => P::Shifting { step: 0, share },
        None => P::Promoting {
            reason: "no verification steps configured".into(),
        },
    };
    let after_promote = || {
        if plan.watch_ms > 0 && plan.verify {
            P::Watching {
                until_ms: now_ms.saturating_add(plan.watch_ms),
            }
        } else {
            P::Promoted
        }
    };
    let next = match (phase, input) {
        (P::Pending, Input::Begin) => {
            if plan.verify {
                first_shift()
            } else {
                P::Promoting {
                    reason: "first release of this target: nothing to verify against".into(),
                }
            }
        }
        (P::Shifting { step, share }, Input::Acted) => P::Verifying {
            step: *step,
            share: *share,
        },
        (
            P::Shifting { .. },
            Input::ActionFailed {
                detail,
                candidate_not_ready: true,
            },
        ) => P::Reverting {
            reason: format!("candidate did not become ready: {detail}"),
            cause: RevertCause::Judge,
        },
        (P::Promoting { .. }, Input::Acted) => after_promote(),
        (P::Reverting { cause, .. }, Input::Acted) => match cause {
            RevertCause::Judge => P::Reverted,
            RevertCause::Abort => P::Aborted,
            RevertCause::Rollback => P::RolledBack,
        },
        (P::Verifying { step, share }, Input::Judged(d)) => match d {
            Decision::Continue => phase.clone(),
            Decision::Pass { reason } => match plan.steps.get(step + 1) {
                Some(&next) => P::Shifting {
                    step: step + 1,
                    share: next,
                },
                None => P::Promoting {
                    reason: reason.clone(),
                },
            },
            Decision::Revert { reason } => P::Reverting {
                reason: reason.clone(),
                cause: RevertCause::Judge,
            },
            Decision::Hold { reason } => P::Held {
                step: *step,
                share: *share,
                cause: HoldCause::Judge,
                reason: reason.clone(),
            },
        },
        (P::Verifying { step, share }, Input::SourceDown { detail }) => P::Held {
            step: *step,
            share: *share,
            cause: HoldCause::SourceDown,
            reason: format!("{}: {detail}", notify::SOURCE_DOWN_REASON),
        },
        (
            P::Held {
                step,
                share,
                cause: HoldCause::SourceDown,
                ..
            },
            Input::SourceUp,
        ) => P::Verifying {
            step: *step,
            share: *share,
        },
        (P::Watching { .. }, Input::Judged(Decision::Revert { reason })) => P::Reverting {
            reason: format!("after promotion: {reason}"),
            cause: RevertCause::Judge,
        },
        // Held by the judge (too little traffic by the deadline, an outage
        // shared with the baseline) is still judged: conclusive evidence
        // reverts without waiting for the person who was told.
        (
            P::Held {
                cause: HoldCause::Judge,
                ..
            },
            Input::Judged(Decision::Revert { reason }),
        ) => P::Reverting {
            reason: format!("while held: {reason}"),
            cause: RevertCause::Judge,
        },
        (P::Watching { .. }, Input::WatchElapsed) => P::Promoted,
        (_, Input::Command(cmd)) => return command(phase, *cmd),
        // Everything else changes nothing: a verdict while shifting, a failed
        // promote or revert (retried on the next tick), a source flap while paused.
        _ => phase.clone(),
    };
    Ok(next)
}

fn command(phase: &Phase, cmd: Command) -> Result<Phase, Refused> {
    use Phase as P;
    let refused = || Refused {
        command: cmd.name(),
        phase: phase.name(),
    };
    match (cmd, phase) {
        (_, p) if p.is_terminal() => Err(refused()),
        (
            Command::Promote,
            P::Pending
            | P::Shifting { .. }
            | P::Verifying { .. }
            | P::Paused { .. }
            | P::Held { .. },
        ) => Ok(P::Promoting {
            reason: "promoted by hand".into(),
        }),
        (Command::Promote, P::Promoting { .. }) => Ok(phase.clone()),
        // Already promoted: `promote` ends the watch early (e.g. one stretched
        // by a signal-source outage, see the engine).
        (Command::Promote, P::Watching { .. }) => Ok(P::Promoted),
        (Command::Abort, P::Reverting { .. }) => Ok(phase.clone()),
        (Command::Abort, _) => Ok(P::Reverting {
            reason: "aborted by hand".into(),
            cause: RevertCause::Abort,
        }),
        (Command::Pause, P::Verifying { step, share } | P::Held { step, share, .. }) => {
            Ok(P::Paused {
                step: *step,
                share: *share,
            })
        }
        // Twice is once, either way (a script may not know which came first).
        (Command::Pause, P::Paused { .. }) | (Command::Resume, P::Verifying { .. }) => {
            Ok(phase.clone())
        }
        (Command::Resume, P::Paused { step, share } | P::Held { step, share, .. }) => {
            Ok(P::Verifying {
                step: *step,
                share: *share,
            })
        }
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            steps: vec![0.5, 1.0],
            watch_ms: 10_000,
            verify: true,
        }
    }

    fn step(p: &Phase, i: Input) -> Phase {
        transition(p, &i, &plan(), 1_000).expect("accepted")
    }

    fn pass() -> Input {
        Input::Judged(Decision::Pass {
            reason: "ok".into(),
        })
    }

    #[test]
    fn good_release_walks_every_step_then_watches_then_promotes() {
        let mut p = Phase::Pending;
        let mut seen = vec![];
        for i in [
            Input::Begin,
            Input::Acted,
            Input::Judged(Decision::Continue),
            pass(),
            Input::Acted,
            pass(),
            Input::Acted,
            Input::WatchElapsed,
        ] {
            p = step(&p, i);
            seen.push(p.clone());
        }
        assert_eq!(
            seen,
            vec![
                Phase::Shifting {
                    step: 0,
                    share: 0.5
                },
                Phase::Verifying {
                    step: 0,
                    share: 0.5
                },
                Phase::Verifying {
                    step: 0,
                    share: 0.5
                },
                Phase::Shifting {
                    step: 1,
                    share: 1.0
                },
                Phase::Verifying {
                    step: 1,
                    share: 1.0
                },
                Phase::Promoting {
                    reason: "ok".into()
                },
                Phase::Watching { until_ms: 11_000 },
                Phase::Promoted,
            ]
        );
        assert!(p.is_terminal());
    }

    #[test]
    fn burn_reverts_during_verification_and_during_watch() {
        let v = Phase::Verifying {
            step: 0,
            share: 0.5,
        };
        let r = step(
            &v,
            Input::Judged(Decision::Revert {
                reason: "burn".into(),
            }),
        );
        assert_eq!(
            r,
            Phase::Reverting {
                reason: "burn".into(),
                cause: RevertCause::Judge
            }
        );
        assert_eq!(step(&r, Input::Acted), Phase::Reverted);
        let w = Phase::Watching { until_ms: 5 };
        assert!(matches!(
            step(&w, Input::Judged(Decision::Revert { reason: "x".into() })),
            Phase::Reverting { .. }
        ));
        // A pass or no-data while watching changes nothing.
        assert_eq!(step(&w, pass()), w);
    }

    #[test]
    fn source_down_holds_and_never_promotes_then_resumes() {
        let v = Phase::Verifying {
            step: 1,
            share: 1.0,
        };
        let h = step(
            &v,
            Input::SourceDown {
                detail: "timeout".into(),
            },
        );
        assert!(matches!(
            h,
            Phase::Held {
                cause: HoldCause::SourceDown,
                ..
            }
        ));
        // A stray pass while held does not promote.
        assert_eq!(step(&h, pass()), h);
        assert_eq!(step(&h, Input::SourceUp), v);
        // A judge hold does not clear itself when the source answers.
        let jh = step(
            &v,
            Input::Judged(Decision::Hold {
                reason: "no traffic".into(),
            }),
        );
        assert_eq!(step(&jh, Input::SourceUp), jh);
        assert_eq!(step(&jh, Input::Command(Command::Resume)), v);
    }

    #[test]
    fn a_judge_hold_reverts_on_conclusive_evidence_but_never_promotes_itself() {
        let v = Phase::Verifying {
            step: 0,
            share: 0.05,
        };
        let jh = step(
            &v,
            Input::Judged(Decision::Hold {
                reason: "too little traffic".into(),
            }),
        );
        assert_eq!(step(&jh, pass()), jh, "a person promotes a held release");
        let reverting = step(
            &jh,
            Input::Judged(Decision::Revert {
                reason: "burning".into(),
            }),
        );
        assert_eq!(
            reverting,
            Phase::Reverting {
                reason: "while held: burning".into(),
                cause: RevertCause::Judge,
            }
        );
        // A hold for a source outage is not judged: no data is not evidence.
        let sh = step(
            &v,
            Input::SourceDown {
                detail: "timeout".into(),
            },
        );
        assert_eq!(
            step(
                &sh,
                Input::Judged(Decision::Revert {
                    reason: "burning".into()
                })
            ),
            sh
        );
    }

    #[test]
    fn commands_apply_where_they_make_sense() {
        let v = Phase::Verifying {
            step: 0,
            share: 0.5,
        };
        let paused = step(&v, Input::Command(Command::Pause));
        assert_eq!(
            paused,
            Phase::Paused {
                step: 0,
                share: 0.5
            }
        );
        assert_eq!(
            step(&paused, pass()),
            paused,
            "a paused rollout ignores verdicts"
        );
        assert_eq!(step(&paused, Input::Command(Command::Resume)), v);
        assert_eq!(step(&paused, Input::Command(Command::Pause)), paused);
        assert_eq!(step(&v, Input::Command(Command::Resume)), v);
        assert!(matches!(
            step(&v, Input::Command(Command::Promote)),
            Phase::Promoting { .. }
        ));
        let aborting = step(&v, Input::Command(Command::Abort));
        assert_eq!(step(&aborting, Input::Acted), Phase::Aborted);
        let err = transition(
            &Phase::Reverted,
            &Input::Command(Command::Abort),
            &plan(),
            0,
        )
        .expect_err("terminal");
        assert_eq!(err.to_string(), "cannot abort a rollout that is reverted");
        assert!(
            transition(
                &Phase::Watching { until_ms: 0 },
                &Input::Command(Command::Pause),
                &plan(),
                0
            )
            .is_err()
        );
        assert_eq!(
            step(
                &Phase::Watching { until_ms: 5_000 },
                Input::Command(Command::Promote)
            ),
            Phase::Promoted,
            "promote ends a watch early"
        );
    }

    #[test]
    fn failed_actions_retry_except_a_candidate_that_never_gets_ready() {
        let s = Phase::Shifting {
            step: 0,
            share: 0.5,
        };
        let failed = |nr| Input::ActionFailed {
            detail: "boom".into(),
            candidate_not_ready: nr,
        };
        assert_eq!(step(&s, failed(false)), s);
        assert!(matches!(
            step(&s, failed(true)),
            Phase::Reverting {
                cause: RevertCause::Judge,
                ..
            }
        ));
        let r = Phase::Reverting {
            reason: "x".into(),
            cause: RevertCause::Judge,
        };
        assert_eq!(step(&r, failed(false)), r);
    }

    #[test]
    fn first_release_and_rollback_skip_verification() {
        let p = Plan {
            steps: vec![1.0],
            watch_ms: 10,
            verify: false,
        };
        let next = transition(&Phase::Pending, &Input::Begin, &p, 0).expect("ok");
        assert!(matches!(next, Phase::Promoting { .. }));
        assert_eq!(
            transition(&next, &Input::Acted, &p, 0).expect("ok"),
            Phase::Promoted
        );
    }

    #[test]
    fn every_phase_has_a_distinct_name_and_roundtrips_as_json() {
        let all = vec![
            Phase::Pending,
            Phase::Shifting {
                step: 0,
                share: 0.1,
            },
            Phase::Verifying {
                step: 0,
                share: 0.1,
            },
            Phase::Paused {
                step: 0,
                share: 0.1,
            },
            Phase::Held {
                step: 0,
                share: 0.1,
                cause: HoldCause::Judge,
                reason: "r".into(),
            },
            Phase::Promoting { reason: "r".into() },
            Phase::Watching { until_ms: 1 },
            Phase::Reverting {
                reason: "r".into(),
                cause: RevertCause::Abort,
            },
            Phase::Promoted,
            Phase::Reverted,
            Phase::Aborted,
            Phase::RolledBack,
        ];
        let names: std::collections::BTreeSet<_> = all.iter().map(Phase::name).collect();
        assert_eq!(names.len(), all.len());
        for p in all {
            let json = serde_json::to_string(&p).expect("ser");
            assert_eq!(serde_json::from_str::<Phase>(&json).expect("de"), p);
        }
    }
}
