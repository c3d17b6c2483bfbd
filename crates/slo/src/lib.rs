//! SLO specs in Sloth's formats, Prometheus rule generation identical to
//! Sloth v0.16, and the error-budget math guard's judge uses.
//!
//! - [`budget`]: pure budget arithmetic (burn rate, budget consumed,
//!   remaining, time to exhaustion, attributable burn). No parsing, no I/O.
#![forbid(unsafe_code)]

pub mod budget;
