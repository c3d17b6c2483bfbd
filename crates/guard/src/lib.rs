//! guard ("application X"): deploys a build, verifies it against its SLOs and
//! promotes or reverts it on its own. See `DESIGN.md` for the parts.
pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod lease;
pub mod metrics;
pub mod platform;
pub mod review;
pub mod router;
pub mod signals;
pub mod store;
