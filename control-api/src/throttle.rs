//! Login throttling: fixed windows of failed attempts per account and per IP address, in memory
//! (per edge node; shared counters in Redis come with the metering issue).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts by key (`account:<email>`, `ip:<address>`), each counted in a fixed window
/// that starts at its first failure.
pub struct Throttle {
    window: Duration,
    entries: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    /// A throttle whose windows last `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry after)` when any key has reached its limit within the window.
    pub fn check(&self, keys: &[(&str, u32)]) -> Result<(), Duration> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for (key, limit) in keys {
            if let Some((count, start)) = entries.get(*key) {
                let elapsed = now.duration_since(*start);
                if elapsed < self.window && count >= limit {
                    let left = self.window - elapsed;
                    wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
                }
            }
        }
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt against each key.
    pub fn fail(&self, keys: &[&str]) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            let window = self.window;
            entries.retain(|_, (_, start)| now.duration_since(*start) < window);
        }
        for key in keys {
            let entry = entries.entry((*key).to_string()).or_insert((0, now));
            if now.duration_since(entry.1) >= self.window {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
    }

    /// Forgets a key's failures (after a successful login).
    pub fn clear(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_within_the_window() {
        let t = Throttle::new(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(t.check(&[("a", 3)]).is_ok());
            t.fail(&["a"]);
        }
        assert!(t.check(&[("a", 3)]).is_err());
        assert!(t.check(&[("b", 3)]).is_ok());
        t.clear("a");
        assert!(t.check(&[("a", 3)]).is_ok());
        let short = Throttle::new(Duration::ZERO);
        short.fail(&["x"]);
        assert!(short.check(&[("x", 1)]).is_ok(), "window over");
    }
}
