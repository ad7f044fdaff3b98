//! Custom domains API (issue #6): who may add one, and every bad hostname refused with a clear
//! error before anything is stored or ordered. The DNS-verified, Pebble-issued path is in
//! `acme.rs`.

use serde_json::json;

use crate::support::*;

const PW: &str = "correct horse battery staple 9";

/// A registered user with a verified email on the Pro tier: (access token, user id).
pub async fn pro_user(edge: &Edge, email: &str) -> (String, String) {
    let (token, _, id) = edge.register(email, PW).await;
    let mail = edge.last_mail(email).await;
    let link = find_link(mail["body"].as_str().expect("mail body"));
    assert_eq!(crate::tls::follow_link(edge, &link).await.status, 200);
    set_tier(edge, &id, "pro").await;
    (token, id)
}

/// Sets a user's tier through the operator API.
pub async fn set_tier(edge: &Edge, user_id: &str, tier: &str) {
    let resp = edge
        .admin(
            "PUT",
            &format!("/admin/users/{user_id}/tier"),
            Some(ADMIN_TOKEN),
            Some(&json!({ "tier": tier }).to_string()),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn bad_hostnames_are_refused_with_what_to_fix() {
    let edge = EdgeBuilder::new().start().await;
    let add = |token: String, hostname: String| {
        let edge = &edge;
        async move {
            edge.api(
                "POST",
                "/api/domains",
                Some(&token),
                Some(json!({ "hostname": hostname })),
            )
            .await
        }
    };
    // Free tier: refused, with the reason.
    let (free, _, _) = edge.register("free@example.com", PW).await;
    let resp = add(free, "shop.example.com".into()).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.error_code(), "TIER_REQUIRED");
    // No login: 401.
    let resp = edge
        .api(
            "POST",
            "/api/domains",
            None,
            Some(json!({ "hostname": "shop.example.com" })),
        )
        .await;
    assert_eq!(resp.status, 401);

    let (token, _) = pro_user(&edge, "pro@example.com").await;
    let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
    for (hostname, code, mentions) in [
        ("192.0.2.10", "INVALID_HOSTNAME", "IP address"),
        ("[2001:db8::1]", "INVALID_HOSTNAME", "IP address"),
        (BASE_DOMAIN, "RESERVED_HOSTNAME", BASE_DOMAIN),
        ("alice.clawdeploy.test", "RESERVED_HOSTNAME", BASE_DOMAIN),
        (APP_DOMAIN, "RESERVED_HOSTNAME", BASE_DOMAIN),
        ("*.example.com", "WILDCARD_NOT_ALLOWED", "wildcard"),
        (
            "xn--zzzzzzzzzzzzzzzzzzzzzzzzz.com",
            "INVALID_PUNYCODE",
            "punycode",
        ),
        ("xn--abc-.example.com", "INVALID_HOSTNAME", "label"),
        (long.as_str(), "HOSTNAME_TOO_LONG", "at most 253"),
        (
            "shop.example.com:8443",
            "INVALID_HOSTNAME",
            "without scheme, port or path",
        ),
        ("bücher.example", "INVALID_HOSTNAME", "punycode"),
        ("localhost", "INVALID_HOSTNAME", "single label"),
        ("", "INVALID_HOSTNAME", "empty"),
    ] {
        let resp = add(token.clone(), hostname.to_string()).await;
        assert_eq!(resp.status, 422, "{hostname}: {}", resp.text());
        assert_eq!(resp.error_code(), code, "{hostname}: {}", resp.text());
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(mentions), "{hostname}: {message}");
    }
    // A well-formed name still needs an instance to point at.
    let resp = add(token.clone(), "xn--bcher-kva.example".into()).await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(resp.error_code(), "NO_INSTANCE");
    // Unknown fields and wrong types are named.
    let resp = edge
        .api(
            "POST",
            "/api/domains",
            Some(&token),
            Some(json!({ "hostname": 5 })),
        )
        .await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    // Nothing was stored, and no certificate exists for any of these names.
    let list = edge.api("GET", "/api/domains", Some(&token), None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["domains"], json!([]));
    let certs = edge
        .admin("GET", "/admin/certificates", Some(ADMIN_TOKEN), None)
        .await
        .json();
    let names: Vec<&str> = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![BASE_DOMAIN]);
    // Deleting a domain one does not have is a 404 that says so.
    let resp = edge
        .api(
            "DELETE",
            "/api/domains/shop.example.com",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(resp.status, 404);
}
