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
        ("POST", "/api/instances/check"),
        ("GET", "/api/instances/me/chat"),
        ("GET", "/api/account"),
        ("GET", "/api/billing"),
        ("POST", "/api/billing/checkout"),
        ("POST", "/api/billing/portal"),
        ("POST", "/api/billing/cancel"),
        ("GET", "/api/billing/invoices"),
        ("POST", "/api/billing/credits"),
        ("POST", "/api/billing/webhook"),
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
        ("GET", "/api/instances/me/channels"),
        ("PUT", "/api/instances/me/channels/{kind}"),
        ("DELETE", "/api/instances/me/channels/{kind}"),
        ("GET", "/api/skills"),
        ("POST", "/api/skills/install"),
        ("PATCH", "/api/skills/{id}"),
        ("DELETE", "/api/skills/{id}"),
        ("GET", "/api/presets"),
        ("GET", "/api/agents"),
        ("POST", "/api/agents"),
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
        ("GET", "/admin/users/{id}/credits"),
        ("POST", "/admin/users/{id}/credits"),
        ("GET", "/admin/billing/subscriptions"),
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

/// Checks `value` against `schema` of `doc`, strictly: an object member the schema does not name
/// is a mismatch too (an undocumented field), unless the schema leaves the object open (no
/// `properties`) or gives `additionalProperties` a schema. Mismatches go to `errors` with their
/// JSON path.
fn check(doc: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema["allOf"].as_array() {
        // Flattened structs: one object with the members of every part.
        let mut merged = serde_json::Map::new();
        let mut required = Vec::new();
        for part in all {
            let part = resolve(doc, part);
            if let Some(props) = part["properties"].as_object() {
                merged.extend(props.clone());
            }
            if let Some(req) = part["required"].as_array() {
                required.extend(req.iter().cloned());
            }
        }
        let object =
            serde_json::json!({ "type": "object", "properties": merged, "required": required });
        return check(doc, &object, value, path, errors);
    }
    if let Some(any) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        if !any.iter().any(|s| {
            let mut e = Vec::new();
            check(doc, s, value, path, &mut e);
            e.is_empty()
        }) {
            errors.push(format!("{path}: {value} matches none of {any:?}"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return,
    };
    let fits = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    if !types.iter().any(|t| fits(t)) {
        errors.push(format!("{path}: {value} is not of type {types:?}"));
        return;
    }
    match value {
        Value::Object(members) => {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                if !members.contains_key(name) {
                    errors.push(format!("{path}: the required member {name} is missing"));
                }
            }
            let props = schema["properties"].as_object();
            let extra = &schema["additionalProperties"];
            for (name, member) in members {
                let here = format!("{path}.{name}");
                match props.and_then(|p| p.get(name)) {
                    Some(s) => check(doc, s, member, &here, errors),
                    None if extra.is_object() => check(doc, extra, member, &here, errors),
                    None if props.is_some() || extra == &Value::Bool(false) => {
                        errors.push(format!("{here}: answered but not documented"))
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check(doc, &schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// The document's schema of `method path`'s answer with `status`.
fn answer_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} answered {status}, which the document does not give a JSON body"
    );
    schema
}

/// Sends `method concrete` and checks the answer: the documented success status of `path` and a
/// body that validates against its documented schema.
async fn call_and_check(
    edge: &Edge,
    doc: &Value,
    (method, path, concrete): (&str, &str, &str),
    token: Option<&str>,
    body: Option<Value>,
    status: u16,
) -> Value {
    let resp = edge.api(method, concrete, token, body).await;
    assert_eq!(resp.status, status, "{method} {concrete}: {}", resp.text());
    let value = resp.json();
    let mut errors = Vec::new();
    check(
        doc,
        answer_schema(doc, method, path, status),
        &value,
        "$",
        &mut errors,
    );
    assert!(
        errors.is_empty(),
        "{method} {concrete} answered what its schema does not say:\n{}\n{value:#}",
        errors.join("\n")
    );
    value
}

/// What the handlers really answer validates against the schemas the document gives for them
/// (derived from the same structs): a field added, renamed or retyped in one and not the other
/// fails here.
#[tokio::test]
async fn real_answers_match_their_documented_schemas() {
    let edge = EdgeBuilder::new().start().await;
    let doc = edge.get(APP_DOMAIN, "/api/openapi.json").await.json();
    // The checker itself catches an undocumented member and a wrong type.
    let health = answer_schema(&doc, "GET", "/healthz", 200);
    let mut errors = Vec::new();
    check(
        &doc,
        health,
        &serde_json::json!({ "status": "ok", "extra": 1 }),
        "$",
        &mut errors,
    );
    check(
        &doc,
        health,
        &serde_json::json!({ "status": 1 }),
        "$",
        &mut errors,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");

    let ep = |m, p| (m, p, p);
    call_and_check(&edge, &doc, ep("GET", "/healthz"), None, None, 200).await;
    call_and_check(&edge, &doc, ep("GET", "/readyz"), None, None, 200).await;
    let email = "schema@example.com";
    let password = "correct horse battery staple";
    let reg = call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/auth/register"),
        None,
        Some(serde_json::json!({ "email": email, "password": password, "name": "Schema" })),
        201,
    )
    .await;
    let login = call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/auth/login"),
        None,
        Some(serde_json::json!({ "email": email, "password": password })),
        200,
    )
    .await;
    let token = login["token"].as_str().unwrap().to_string();
    let t = Some(token.as_str());
    let user_id = reg["user"]["id"].as_str().unwrap().to_string();
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/auth/refresh"),
        None,
        Some(serde_json::json!({ "refreshToken": reg["refreshToken"] })),
        200,
    )
    .await;
    call_and_check(&edge, &doc, ep("GET", "/api/account"), t, None, 200).await;
    call_and_check(
        &edge,
        &doc,
        ep("PATCH", "/api/account"),
        t,
        Some(serde_json::json!({ "timezone": "Europe/Berlin", "email": "schema2@example.com" })),
        200,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        (
            "PUT",
            "/api/account/api-keys/{provider}",
            "/api/account/api-keys/openai",
        ),
        t,
        Some(serde_json::json!({ "key": "sk-test-0123456789" })),
        200,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ep("GET", "/api/account/api-keys"),
        t,
        None,
        200,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ep("GET", "/api/account/security-log"),
        t,
        None,
        200,
    )
    .await;
    call_and_check(&edge, &doc, ep("GET", "/api/account/export"), t, None, 200).await;
    call_and_check(&edge, &doc, ep("POST", "/api/auth/mfa/setup"), t, None, 200).await;
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/auth/resend-verification"),
        t,
        None,
        202,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/auth/forgot-password"),
        None,
        Some(serde_json::json!({ "email": "schema2@example.com" })),
        202,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        (
            "GET",
            "/api/subdomains/{label}",
            "/api/subdomains/schema-free",
        ),
        None,
        None,
        200,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ("GET", "/api/subdomains/{label}", "/api/subdomains/admin"),
        None,
        None,
        200,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/instances"),
        t,
        Some(serde_json::json!({ "subdomain": "schema-check", "soulMd": "Be brief." })),
        201,
    )
    .await;
    call_and_check(&edge, &doc, ep("GET", "/api/instances/me"), t, None, 200).await;
    call_and_check(&edge, &doc, ep("GET", "/api/usage"), t, None, 200).await;
    call_and_check(
        &edge,
        &doc,
        ep("PATCH", "/api/instances/me"),
        t,
        Some(serde_json::json!({ "timezone": "UTC" })),
        200,
    )
    .await;
    call_and_check(&edge, &doc, ep("GET", "/api/domains"), t, None, 200).await;
    // Skills and presets (bundled skills install without a runtime).
    call_and_check(&edge, &doc, ep("GET", "/api/skills"), t, None, 200).await;
    call_and_check(&edge, &doc, ep("GET", "/api/presets"), t, None, 200).await;
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/skills/install"),
        t,
        Some(serde_json::json!({ "skillId": "notion", "config": { "NOTION_API_TOKEN": "secret_x" } })),
        201,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ("PATCH", "/api/skills/{id}", "/api/skills/notion"),
        t,
        Some(serde_json::json!({ "enabled": false })),
        200,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ("DELETE", "/api/skills/{id}", "/api/skills/notion"),
        t,
        None,
        200,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/instances/me/preset"),
        t,
        Some(serde_json::json!({ "preset": "writer", "replaceSoul": true })),
        200,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/session/handoff"),
        t,
        Some(serde_json::json!({ "next": "http://schema-check.clawdeploy.test/" })),
        200,
    )
    .await;
    call_and_check(&edge, &doc, ep("DELETE", "/api/instances/me"), t, None, 200).await;
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/instances/me/restore"),
        t,
        None,
        202,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/instances/me/restart"),
        t,
        None,
        202,
    )
    .await;
    // Operators.
    let a = Some(ADMIN_TOKEN);
    call_and_check(&edge, &doc, ep("GET", "/admin/routes"), a, None, 200).await;
    // Created (201), then replaced: the documented 200.
    let route = serde_json::json!({ "upstream": "127.0.0.1:9" });
    let created = edge
        .api(
            "PUT",
            "/admin/routes/schema.example.org",
            a,
            Some(route.clone()),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    call_and_check(
        &edge,
        &doc,
        (
            "PUT",
            "/admin/routes/{host}",
            "/admin/routes/schema.example.org",
        ),
        a,
        Some(route),
        200,
    )
    .await;
    call_and_check(
        &edge,
        &doc,
        (
            "GET",
            "/admin/routes/{host}",
            "/admin/routes/schema.example.org",
        ),
        a,
        None,
        200,
    )
    .await;
    call_and_check(&edge, &doc, ep("GET", "/admin/nodes"), a, None, 200).await;
    call_and_check(&edge, &doc, ep("GET", "/admin/instances"), a, None, 200).await;
    call_and_check(&edge, &doc, ep("GET", "/admin/users"), a, None, 200).await;
    call_and_check(&edge, &doc, ep("GET", "/admin/outbox"), a, None, 200).await;
    call_and_check(&edge, &doc, ep("GET", "/admin/certificates"), a, None, 200).await;
    call_and_check(
        &edge,
        &doc,
        (
            "PUT",
            "/admin/users/{id}/tier",
            &format!("/admin/users/{user_id}/tier"),
        ),
        a,
        Some(serde_json::json!({ "tier": "free" })),
        200,
    )
    .await;
    // Last: the account's deletion and its undoing.
    call_and_check(&edge, &doc, ep("DELETE", "/api/account"), t, None, 202).await;
    call_and_check(
        &edge,
        &doc,
        ep("POST", "/api/account/restore"),
        t,
        None,
        200,
    )
    .await;
}
