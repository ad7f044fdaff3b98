//! Black-box tests of the `clawdeploy` binary: one test binary, so Pingora is linked once.

mod account;
mod admin_api;
mod attacks;
mod auth;
mod bad_input;
mod bodies;
mod dashboard;
mod egress;
mod instance_access;
mod instances;
mod lifecycle;
mod llm_meter;
mod mail;
mod metering;
mod openapi;
mod openclaw;
mod pool;
mod routing;
mod runtime;
mod sessions;
mod shared_counters;
mod support;
mod webdriver;
mod websocket;
