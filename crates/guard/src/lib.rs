//! guard ("application X"): deploys a build, verifies it against its SLOs and
//! promotes or reverts it on its own. See `DESIGN.md` for the parts.
pub mod cli;
pub mod platform;
pub mod router;
pub mod signals;
pub mod engine;
pub mod metrics;
pub mod store;
pub mod lease;
pub mod review;
pub mod config;
pub mod api;
