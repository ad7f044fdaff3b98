//! `/api/openapi.json` is OpenAPI 3.1 and true: every documented operation is served, and the
//! served endpoints are documented.

use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn every_documented_operation_is_served_and_vice_versa() {
    let edge = EdgeBuilder::new().start().await;
    let resp = edge.get(APP_DOMAIN, "/api/openapi.json").await;
    assert_eq!(resp.status, 200);
    let doc = resp.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            assert!(op["responses"].is_object(), "{method} {path}");
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    // Each documented operation reaches a handler: neither the 404 fallback nor 405.
    for (method, path) in &documented {
        let concrete = path
            .replace("{provider}", "openai")
            .replace("{host}", "nothing.example.org")
            .replace("{id}", "00000000-0000-0000-0000-000000000000");
        let body = if ["POST", "PUT", "PATCH"].contains(&method.as_str()) {
            Some("{}")
        } else {
            None
        };
        let resp = edge
            .admin(method, &concrete, Some("not-a-valid-token"), body)
            .await;
        let fallback = resp.status == 404
            && resp.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("No such endpoint");
        assert!(
            !fallback && resp.status != 405,
            "{method} {path} is documented but not served: {} {}",
            resp.status,
            resp.text()
        );
    }
    // Every endpoint the API serves (from the issue and the README) is documented.
    let served = [
        ("POST", "/api/auth/register"),
        ("POST", "/api/auth/login"),
        ("POST", "/api/auth/refresh"),
        ("POST", "/api/auth/logout"),
        ("GET", "/api/auth/verify-email"),
        ("POST", "/api/auth/verify-email"),
        ("POST", "/api/auth/resend-verification"),
        ("POST", "/api/auth/forgot-password"),
        ("GET", "/api/auth/reset-password"),
        ("POST", "/api/auth/reset-password"),
        ("POST", "/api/auth/mfa/setup"),
        ("POST", "/api/auth/mfa/enable"),
        ("POST", "/api/auth/mfa/disable"),
        ("POST", "/api/auth/browser-session"),
        ("GET", "/api/subdomains/{label}"),
        ("GET", "/api/instances/me/chat"),
        ("GET", "/api/account"),
        ("PATCH", "/api/account"),
        ("DELETE", "/api/account"),
        ("POST", "/api/account/restore"),
        ("POST", "/api/account/password"),
        ("GET", "/api/account/api-keys"),
        ("PUT", "/api/account/api-keys/{provider}"),
        ("DELETE", "/api/account/api-keys/{provider}"),
        ("GET", "/api/account/security-log"),
        ("GET", "/api/account/export"),
        ("POST", "/api/instances"),
        ("GET", "/api/instances/me"),
        ("PATCH", "/api/instances/me"),
        ("POST", "/api/instances/me/restart"),
        ("DELETE", "/api/instances/me"),
        ("POST", "/api/instances/me/restore"),
        ("POST", "/api/instances/me/preset"),
        ("GET", "/api/skills"),
        ("POST", "/api/skills/install"),
        ("PATCH", "/api/skills/{id}"),
        ("DELETE", "/api/skills/{id}"),
        ("GET", "/api/presets"),
        ("GET", "/api/session/handoff"),
        ("POST", "/api/session/handoff"),
        ("GET", "/_clawdeploy/session"),
        ("GET", "/api/usage"),
        ("GET", "/admin/routes"),
        ("GET", "/admin/routes/{host}"),
        ("PUT", "/admin/routes/{host}"),
        ("DELETE", "/admin/routes/{host}"),
        ("GET", "/admin/nodes"),
        ("GET", "/admin/instances"),
        ("POST", "/admin/instances/migrate"),
        ("GET", "/admin/users"),
        ("PUT", "/admin/users/{id}/tier"),
        ("GET", "/admin/outbox"),
        ("POST", "/api/domains"),
        ("GET", "/api/domains"),
        ("DELETE", "/api/domains/{hostname}"),
        ("POST", "/api/domains/{hostname}/verify"),
        ("GET", "/admin/certificates"),
        ("POST", "/admin/certificates/{name}/renew"),
        ("GET", "/api/openapi.json"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    ];
    for (method, path) in served {
        assert!(
            documented.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is served but not documented"
        );
    }
    assert_eq!(documented.len(), served.len(), "documented: {documented:?}");
    // And what is not documented is not served.
    for (method, path) in [
        ("GET", "/api/instances"),
        ("DELETE", "/api/instances/me/restart"),
        ("GET", "/admin/secrets"),
    ] {
        let resp = edge.admin(method, path, Some(ADMIN_TOKEN), None).await;
        assert!(
            resp.status == 404 || resp.status == 405,
            "{method} {path}: {}",
            resp.status
        );
    }
    let err_schema: &Value = &doc["components"]["schemas"]["Error"];
    assert!(err_schema.is_object());
}
