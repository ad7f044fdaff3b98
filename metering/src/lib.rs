//! Metering and limits (issue #7, not built yet): OpenClaw message quotas counted from the WebSocket
//! frames the edge relays, LLM token metering at the edge's LLM endpoint, rate limits, and the
//! Prometheus exposition. Empty until then, so the workspace layout is the architecture's.
