//! zt-janitor: keeps a Cloudflare Zero Trust account free of stale device registrations.
//!
//! One module per concern: `config` (settings), `secret` (the API token), `cloudflare` (model
//! and the only HTTP client), `resource` (what differs per kind of object), `rules` (pure decisions), `plan` (listing through the rules),
//! `apply` (the executor), `audit` (the only SQL), `cycle` (one run end to end), `explain` (one object's verdict), `metrics`,
//! `http` and `logging` (observability), `notify` (webhooks after each run), `startup` (what a process opens before its first cycle),
//! `schedule` (the daemon), `report` (rendering), `export` (the audit log for a SIEM), `cli`, and the built-in `fake` API with the
//! `demo` and `bench` commands built on it.

pub mod apply;
pub mod audit;
pub mod bench;
pub mod check;
pub mod cli;
pub mod cloudflare;
pub mod config;
pub mod cycle;
pub mod demo;
pub mod explain;
pub mod export;
pub mod fake;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod progress;
pub mod report;
pub mod resource;
pub mod rules;
pub mod saved_plan;
pub mod schedule;
pub mod secret;
pub mod startup;
pub mod stop;
pub mod undo;
