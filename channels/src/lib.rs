//! Messaging channels: how an owner's assistant is reached from the messaging apps they use.
//!
//! An instance never holds a channel's credential. Its OpenClaw is configured with the app's API
//! root pointing at the edge's relay (on the LLM meter's address, which instances reach and the
//! egress rules open) and a placeholder credential naming the instance ([`container_bot_token`]);
//! the relay injects the owner's sealed credential and calls the app. Everything the instance
//! receives passes the relay, which is where each message from an allowed sender is counted
//! against the tier's quota, and where a message over quota is answered with the quota's refusal
//! instead of reaching the agent. A tenant running code in its container therefore can neither
//! read the bot token nor receive a message around the meter.
//!
//! Telegram is the one channel in this release ([`telegram`]).

#![warn(missing_docs)]

pub mod telegram;

/// The bot token an instance's OpenClaw is configured with: `0:` and its LLM meter token (the
/// member's, fixed from boot). The relay reads the instance from it; Telegram never sees it.
pub fn container_bot_token(meter_token: &str) -> String {
    format!("0:{meter_token}")
}
