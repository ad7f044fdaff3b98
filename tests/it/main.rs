//! Black-box tests of the `clawdeploy` binary: one test binary, so Pingora is linked once.

mod bad_input;
mod egress;
mod lifecycle;
mod pool;
mod routing;
mod runtime;
mod support;
mod websocket;
