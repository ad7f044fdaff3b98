//! The page layout and HTML escaping.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use clawdeploy_store::{Role, User};

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One page: title, the `data-page` that `app.js` dispatches on, and the signed-in user (for
/// the navigation).
pub struct Page<'a> {
    title: String,
    id: &'static str,
    user: Option<&'a User>,
}

impl<'a> Page<'a> {
    pub fn new(title: &str, id: &'static str) -> Self {
        Self {
            title: title.to_string(),
            id,
            user: None,
        }
    }

    pub fn user(mut self, user: Option<&'a User>) -> Self {
        self.user = user;
        self
    }

    pub fn html(self, main: String) -> Response {
        let link = |href: &str, label: &str, page: &str| {
            let current = if page == self.id {
                r#" aria-current="page""#
            } else {
                ""
            };
            format!(r#"<li><a href="{href}"{current}>{label}</a></li>"#)
        };
        let nav = match self.user {
            Some(user) => {
                let operator = if user.role == Role::Operator {
                    link("/operator", "Operator", "operator")
                } else {
                    String::new()
                };
                format!(
                    r#"<nav aria-label="Main"><ul>{}{}{}{}{operator}<li><button type="button" class="link" id="logout">Log out</button></li></ul></nav>"#,
                    link("/dashboard", "Dashboard", "dashboard"),
                    link("/settings", "Settings", "settings"),
                    link("/security", "Security log", "security"),
                    link("/domains", "Domains", "domains"),
                )
            }
            None => format!(
                r#"<nav aria-label="Main"><ul>{}{}</ul></nav>"#,
                link("/login", "Log in", "login"),
                link("/signup", "Sign up", "signup"),
            ),
        };
        let html = format!(
            r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body data-page="{id}">
<a class="skip" href="#main">Skip to content</a>
<header class="top"><a class="brand" href="/">ClawDeploy</a>{nav}</header>
<main id="main" tabindex="-1">
{main}
</main>
<footer class="foot"><p>ClawDeploy · managed OpenClaw hosting</p></footer>
</body>
</html>
"##,
            title = esc(&self.title),
            id = self.id,
        );
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
