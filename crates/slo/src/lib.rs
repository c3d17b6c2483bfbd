//! SLO specs in Sloth's formats, Prometheus rule generation identical to
//! Sloth v0.16, and the error-budget math guard's judge uses.
//!
//! - [`budget`]: pure budget arithmetic (burn rate, budget consumed,
//!   remaining, time to exhaustion, attributable burn). No parsing, no I/O.
//! - [`spec`]: loading `prometheus/v1`, `PrometheusServiceLevel` and OpenSLO
//!   specs (files, multi-document files, directories) into one model.
//! - [`validate`]: Sloth's validation rules plus a PromQL parse of every query.
//! - [`generate`]: SLI, metadata and alert rules, as Sloth generates them.
//! - [`output`]: the YAML Sloth writes (rules files, `PrometheusRule`s).
//! - [`windows`]: alert windows per SLO period (28d, 30d, or `AlertWindows`).
//!
//! Typical use: [`spec::load_path`], then [`generate::generate_document`] for
//! each document, then [`output::render`].
#![forbid(unsafe_code)]

pub mod budget;
pub mod duration;
pub mod generate;
pub mod gofmt;
pub mod output;
pub mod spec;
pub mod template;
pub mod validate;
pub mod windows;

pub use duration::PromDuration;
