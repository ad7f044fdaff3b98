//! Which OpenClaw gateway frames matter for metering (research/openclaw.md §1).
//!
//! A user message is a `req` whose method is `chat.send`, `sessions.send`, `sessions.steer`,
//! `agent` or `sessions.create` and whose params carry a `message` or a `task`. It counts once per
//! `idempotencyKey` when the gateway answers its `id` with `ok: true`.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Methods that start an agent turn for the user.
pub const USER_MESSAGE_METHODS: [&str; 5] = [
    "chat.send",
    "sessions.send",
    "sessions.steer",
    "agent",
    "sessions.create",
];

/// A client request that is a user message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMessage {
    /// The request id as JSON text (usually a quoted string), echoed in the answer.
    pub id: String,
    pub method: String,
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    params: Option<Params>,
    ok: Option<bool>,
}

#[derive(Deserialize)]
struct Params {
    #[serde(default)]
    message: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    task: Option<serde::de::IgnoredAny>,
    #[serde(rename = "idempotencyKey", default)]
    idempotency_key: Option<serde_json::Value>,
}

/// Classifies a client → gateway text message; `None` for anything that is not a user message
/// (including text that is not JSON: the gateway answers that itself).
pub fn user_message(text: &[u8]) -> Option<UserMessage> {
    // Cheap pre-check: every user-message method name contains "send", "steer", "agent" or
    // "create"; most frames (connect, history, pings of the app) are skipped without parsing.
    if !contains(text, b"\"method\"") {
        return None;
    }
    let frame: Frame = serde_json::from_slice(text).ok()?;
    if frame.kind.as_deref() != Some("req") {
        return None;
    }
    let method = frame.method?;
    if !USER_MESSAGE_METHODS.contains(&method.as_ref()) {
        return None;
    }
    let params = frame.params?;
    // `message: null` deserialises as None: not a message.
    if params.message.is_none() && params.task.is_none() {
        return None;
    }
    let idempotency_key = match params.idempotency_key {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Some(UserMessage {
        id: frame.id?.get().to_string(),
        method: method.into_owned(),
        idempotency_key,
    })
}

/// A gateway → client `res`: its id (JSON text) and whether it succeeded.
pub fn response(text: &[u8]) -> Option<(String, bool)> {
    if !contains(text, b"\"res\"") {
        return None;
    }
    let frame: Frame = serde_json::from_slice(text).ok()?;
    if frame.kind.as_deref() != Some("res") {
        return None;
    }
    Some((frame.id?.get().to_string(), frame.ok.unwrap_or(false)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The `res` the edge answers a refused user message with (the gateway's error shape).
pub fn quota_exceeded_response(
    id: &str,
    limit: u64,
    used: u64,
    resets_at: &str,
    upgrade_url: &str,
) -> String {
    serde_json::json!({
        "type": "res",
        "id": serde_json::from_str::<serde_json::Value>(id).unwrap_or(serde_json::Value::Null),
        "ok": false,
        "error": {
            "code": "QUOTA_EXCEEDED",
            "message": format!(
                "This instance has used its {limit} messages for this month; the count resets at {resets_at}. Upgrade for more: {upgrade_url}"
            ),
            "details": {
                "limit": limit,
                "used": used,
                "resetsAt": resets_at,
                "upgradeUrl": upgrade_url,
            },
            "retryable": false,
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_messages_are_recognised() {
        let m = user_message(br#"{"type":"req","id":"a1","method":"chat.send","params":{"sessionKey":"agent:main:main","message":"hi","idempotencyKey":"k1"}}"#).unwrap();
        assert_eq!(m.id, "\"a1\"");
        assert_eq!(m.idempotency_key.as_deref(), Some("k1"));
        assert!(user_message(
            br#"{"type":"req","id":"a1","method":"sessions.create","params":{"task":"t"}}"#
        )
        .is_some());
        assert!(user_message(
            br#"{"type":"req","id":"a1","method":"sessions.create","params":{"label":"x"}}"#
        )
        .is_none());
        assert!(user_message(
            br#"{"type":"req","id":"a1","method":"chat.history","params":{"message":"x"}}"#
        )
        .is_none());
        assert!(
            user_message(br#"{"method":"chat.send","type":"event","params":{"message":"x"}}"#)
                .is_none()
        );
        assert!(user_message(b"not json \"method\"").is_none());
        let m = user_message(
            br#"{"params":{"message":{"text":"hi"}},"method":"agent","id":7,"type":"req"}"#,
        )
        .unwrap();
        assert_eq!(m.id, "7");
        assert_eq!(m.idempotency_key, None);
    }

    #[test]
    fn responses_are_recognised() {
        assert_eq!(
            response(br#"{"type":"res","id":"a1","ok":true,"payload":{"runId":"k1"}}"#),
            Some(("\"a1\"".to_string(), true))
        );
        assert_eq!(
            response(br#"{"type":"res","id":"a1","ok":false,"error":{"code":"X"}}"#),
            Some(("\"a1\"".to_string(), false))
        );
        assert_eq!(response(br#"{"type":"event","event":"res"}"#), None);
    }

    #[test]
    fn the_refusal_echoes_the_id() {
        let text = quota_exceeded_response(
            "\"a1\"",
            100,
            100,
            "2026-12-01T00:00:00.000Z",
            "https://x/billing",
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "a1");
        assert_eq!(v["error"]["code"], "QUOTA_EXCEEDED");
        assert_eq!(v["error"]["details"]["limit"], 100);
    }
}
