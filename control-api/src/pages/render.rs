//! The page layout. Pages are `maud` templates: every spliced value is escaped at compile time,
//! so no page escapes by hand.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use clawdeploy_store::{Role, User};

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

    pub fn html(self, main: Markup) -> Response {
        let link = |href: &str, label: &str, page: &str| {
            html! {
                li { a href=(href) aria-current=[(page == self.id).then_some("page")] { (label) } }
            }
        };
        let nav = html! {
            nav aria-label="Main" {
                ul {
                    @if let Some(user) = self.user {
                        (link("/dashboard", "Dashboard", "dashboard"))
                        (link("/settings", "Settings", "settings"))
                        (link("/security", "Security log", "security"))
                        (link("/skills", "Skills", "skills"))
                        (link("/channels", "Channels", "channels"))
                        (link("/domains", "Domains", "domains"))
                        (link("/billing", "Billing", "billing"))
                        @if user.role == Role::Operator {
                            (link("/operator", "Operator", "operator"))
                        }
                        li { button type="button" .link #logout { "Log out" } }
                    } @else {
                        (link("/login", "Log in", "login"))
                        (link("/signup", "Sign up", "signup"))
                    }
                }
            }
        };
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) }
                    link rel="stylesheet" href="/static/app.css";
                    script src="/static/app.js" defer {}
                }
                body data-page=(self.id) {
                    a .skip href="#main" { "Skip to content" }
                    header .top { a .brand href="/" { "ClawDeploy" } (nav) }
                    main #main tabindex="-1" {
                        // On every page while a deletion is pending: the way back is one click.
                        @if self.user.is_some_and(|u| u.deletion_requested_at.is_some()) {
                            p .notice #deletion-banner role="status" {
                                "Your account is scheduled for deletion. "
                                button type="button" .button.small data-restore-account { "Keep my account" }
                            }
                        }
                        (main)
                    }
                    footer .foot { p { "ClawDeploy · managed OpenClaw hosting" } }
                }
            }
        };
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            page.into_string(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: Response) -> String {
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn spliced_text_is_escaped_and_the_current_page_marked() {
        let page =
            body(Page::new(r#"<a href="x">&</a>"#, "login").html(html! { p { (r#"<b>"'&"#) } }));
        assert!(
            page.contains("<title>&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;</title>"),
            "{page}"
        );
        assert!(
            page.contains(r#"<a href="/login" aria-current="page">Log in</a>"#),
            "{page}"
        );
        assert!(page.contains(r#"<a href="/signup">Sign up</a>"#), "{page}");
        assert!(
            page.contains(r#"<main id="main" tabindex="-1"><p>&lt;b&gt;&quot;'&amp;</p></main>"#),
            "{page}"
        );
    }
}
