//! Skills with the real OpenClaw (issue 18; slow: one OpenClaw container). A bundled skill and a
//! curated registry skill are installed through `/api/skills`, appear in OpenClaw's own
//! `skills.status` without a restart (the registry skill fetched by OpenClaw's installer from the
//! platform's registry, its `CLAWHUB_URL`), reach the agent's prompt in the next turn, and are
//! uninstalled again. A skill's secret reaches the instance's config and nothing else. The LLM
//! provider is the fake of `openclaw.rs` (providers cannot run here).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::openclaw::{
    call, chat, connect_owner, openclaw_edge, openclaw_image, Cleanup, FakeProvider, ANSWER,
};
use crate::support::*;

const PW: &str = "correct horse battery staple 9";
const PATIENCE: Duration = Duration::from_secs(300);

/// OpenClaw's `skills.status`, as the owner sees it.
async fn skills_status(ws: &mut WebSocket) -> Vec<Value> {
    let id = uuid::Uuid::new_v4().to_string();
    let status = call(ws, &id, "skills.status", json!({})).await;
    assert_eq!(status["ok"], true, "{status}");
    status["payload"]["skills"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `skills.status` until `done` holds for it; the skills then, and how long it took.
async fn wait_status(
    ws: &mut WebSocket,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    loop {
        let skills = skills_status(ws).await;
        if done(&skills) {
            return (skills, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never showed in skills.status: {skills:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The container the route of `host` points at (the pool also holds a warm one).
async fn container_serving(edge: &Edge, host: &str) -> String {
    let port = route_of(edge, host).await["upstream"]
        .as_str()
        .and_then(|u| u.rsplit(':').next())
        .expect("a routed upstream")
        .to_string();
    let out = tokio::process::Command::new("docker")
        .args(["ps", "--format", "{{.ID}} {{.Ports}}"])
        .output()
        .await
        .expect("docker ps");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    listing
        .lines()
        .find(|l| l.contains(&format!(":{port}->")))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no container publishes {port}: {listing}"))
        .to_string()
}

fn named<'a>(skills: &'a [Value], name: &str) -> Option<&'a Value> {
    skills.iter().find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaw_installs_uses_and_removes_bundled_and_registry_skills_without_a_restart() {
    let image = openclaw_image().await;
    let (provider, provider_addr) = FakeProvider::start(IpAddr::from([127, 0, 0, 1])).await;
    let node_id = format!("ocskills{}", std::process::id());
    let _cleanup = Cleanup(node_id.clone());
    let curated = tempfile::tempdir().unwrap();
    let skill_dir = curated.path().join("team-notes");
    std::fs::create_dir_all(&skill_dir).unwrap();
    std::fs::write(
        skill_dir.join("SKILL.md"),
        "---\nname: team-notes\ndescription: CURATED-MARKER keeps the team's meeting notes tidy.\n---\n# Team notes\nWhen asked about notes, answer NOTES-OK.\n",
    )
    .unwrap();
    std::fs::write(
        skill_dir.join("clawdeploy.toml"),
        "version = \"1.0.0\"\ncategory = \"productivity\"\n",
    )
    .unwrap();
    let todo_dir = curated.path().join("team-todo");
    std::fs::create_dir_all(&todo_dir).unwrap();
    std::fs::write(
        todo_dir.join("SKILL.md"),
        "---\nname: team-todo\ndescription: Keeps the team's to-do list.\n---\nList open items.\n",
    )
    .unwrap();
    // A network of its own (each edge's egress rules allow only its own meter and registry).
    let edge = openclaw_edge(&image, &node_id, 1, 2)
        .section("runtime", "docker_network = \"clawdeploy-skills-test\"")
        .section("llm", &format!("openai_url = \"http://{provider_addr}\""))
        .section(
            "skills",
            &format!("curated_dir = \"{}\"", curated.path().display()),
        )
        .start()
        .await;
    wait_idle(&edge, 1, PATIENCE).await;
    let (token, _, _) = edge.register("skills@example.com", PW).await;
    let key = edge
        .api(
            "PUT",
            "/api/account/api-keys/openai",
            Some(&token),
            Some(json!({"key": "sk-test-skills"})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "skilled"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let host = format!("skilled.{BASE_DOMAIN}");
    let (mut ws, _) = connect_owner(&edge, &host, &token).await;

    // Before: no bundled skill is offered to the agent but what the owner installed.
    let before = skills_status(&mut ws).await;
    let weather = named(&before, "weather").expect("OpenClaw bundles weather");
    assert_eq!(weather["blockedByAllowlist"], true, "{weather}");
    assert!(named(&before, "team-notes").is_none());

    // A bundled skill: enabled by the config's hot reload.
    let installed = edge
        .api(
            "POST",
            "/api/skills/install",
            Some(&token),
            Some(json!({"skillId": "weather"})),
        )
        .await;
    assert_eq!(installed.status, 201, "{}", installed.text());
    let (_, took) = wait_status(&mut ws, "weather", |s| {
        named(s, "weather")
            .is_some_and(|w| w["blockedByAllowlist"] == false && w["eligible"] == true)
    })
    .await;
    eprintln!(
        "openclaw-skills: bundled skill visible {:.2} s after the API answered",
        took.as_secs_f64()
    );

    // A registry skill: OpenClaw's installer fetched it from the platform's registry.
    // Two at once into one instance (OpenClaw changes one package at a time: the pool queues).
    let started = Instant::now();
    let (installed, todo) = tokio::join!(
        edge.api(
            "POST",
            "/api/skills/install",
            Some(&token),
            Some(json!({"skillId": "team-notes"})),
        ),
        edge.api(
            "POST",
            "/api/skills/install",
            Some(&token),
            Some(json!({"skillId": "team-todo"})),
        )
    );
    assert_eq!(todo.status, 201, "{}", todo.text());
    assert_eq!(
        installed.status,
        201,
        "{}\n{}",
        installed.text(),
        edge.log_text()
    );
    eprintln!(
        "openclaw-skills: registry install answered in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(installed.json()["skill"]["source"], "registry");
    let (skills, _) = wait_status(&mut ws, "team-notes", |s| {
        named(s, "team-notes").is_some() && named(s, "team-todo").is_some()
    })
    .await;
    let notes = named(&skills, "team-notes").unwrap();
    assert_eq!(notes["eligible"], true, "{notes}");
    // The free tier's third slot is needed below.
    let removed = edge
        .api("DELETE", "/api/skills/team-todo", Some(&token), None)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text());

    // A skill with a secret: delivered to the instance (its requirement is met), shown to nobody.
    const SECRET: &str = "secret_notion_SKILLPLAINTEXT";
    let notion = edge
        .api(
            "POST",
            "/api/skills/install",
            Some(&token),
            Some(json!({"skillId": "notion", "config": {"NOTION_API_TOKEN": SECRET}})),
        )
        .await;
    assert_eq!(notion.status, 201, "{}", notion.text());
    let (skills, _) = wait_status(&mut ws, "notion", |s| {
        named(s, "notion").is_some_and(|n| n["blockedByAllowlist"] == false)
    })
    .await;
    let notion = named(&skills, "notion").unwrap();
    assert_eq!(
        notion["eligible"], true,
        "curl is in the image and the token is set: {notion}"
    );
    assert!(!skills_status(&mut ws)
        .await
        .iter()
        .any(|s| s.to_string().contains(SECRET)));

    // The next turn's prompt offers both installed skills (OpenClaw lists names and descriptions
    // under <available_skills>; the body is read when the model uses the skill).
    assert_eq!(chat(&mut ws, "what can you do with notes?").await, ANSWER);
    let prompts: Vec<String> = provider
        .requests()
        .iter()
        .map(|r| r["messages"].to_string())
        .collect();
    assert!(
        prompts
            .iter()
            .any(|p| p.contains("CURATED-MARKER") && p.contains("weather")),
        "the installed skills did not reach the prompt"
    );

    // Uninstall: gone from OpenClaw's list, no restart (this connection stays up throughout).
    let removed = edge
        .api("DELETE", "/api/skills/team-notes", Some(&token), None)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    let removed = edge
        .api("DELETE", "/api/skills/weather", Some(&token), None)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    wait_status(&mut ws, "the uninstalls", |s| {
        named(s, "team-notes").is_none()
            && named(s, "weather").is_some_and(|w| w["blockedByAllowlist"] == true)
    })
    .await;
    // Reinstalling after an uninstall works (nothing left behind blocks it).
    let again = edge
        .api(
            "POST",
            "/api/skills/install",
            Some(&token),
            Some(json!({"skillId": "team-notes"})),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.text());
    wait_status(&mut ws, "team-notes again", |s| {
        named(s, "team-notes").is_some()
    })
    .await;
    assert_eq!(call(&mut ws, "ping", "health", json!({})).await["ok"], true);

    // A preset writes its SOUL.md and AGENTS.md into the workspace (the owner wrote no SOUL.md).
    let applied = edge
        .api(
            "POST",
            "/api/instances/me/preset",
            Some(&token),
            Some(json!({"preset": "researcher"})),
        )
        .await;
    assert_eq!(applied.status, 200, "{}", applied.text());
    let container = container_serving(&edge, &host).await;
    let agents_md =
        crate::openclaw::exec_output(&container, &["cat", "/data/workspace/AGENTS.md"]).await;
    assert!(agents_md.contains("source of every"), "{agents_md}");
    let soul_md =
        crate::openclaw::exec_output(&container, &["cat", "/data/workspace/SOUL.md"]).await;
    assert!(soul_md.contains("careful researcher"), "{soul_md}");
    // On the free tier the edge answers a client's sub-agent request itself.
    let spawn = call(
        &mut ws,
        "spawn1",
        "sessions.create",
        json!({"key": "agent:main:subagent:t1", "parentSessionKey": "agent:main:main", "task": "look this up"}),
    )
    .await;
    assert_eq!(spawn["ok"], false, "{spawn}");
    assert_eq!(spawn["error"]["code"], "SUBAGENT_LIMIT", "{spawn}");
    let refused = edge
        .api(
            "POST",
            "/api/agents",
            Some(&token),
            Some(json!({"task": "look this up"})),
        )
        .await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (403, "SUBAGENT_LIMIT")
    );

    // On Pro, a sub-agent starts from the API: a child session of the main agent, through the
    // edge, which OpenClaw then lists.
    let link = find_link(
        edge.last_mail("skills@example.com").await["body"]
            .as_str()
            .unwrap(),
    );
    edge.follow(&link).await;
    let user_id = edge
        .api("GET", "/api/account", Some(&token), None)
        .await
        .json()["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    crate::domains::set_tier(&edge, &user_id, "pro").await;
    let spawned = edge
        .api(
            "POST",
            "/api/agents",
            Some(&token),
            Some(json!({"task": "summarise the notes", "label": "notes helper"})),
        )
        .await;
    assert_eq!(
        spawned.status,
        202,
        "{}\n{}",
        spawned.text(),
        edge.log_text()
    );
    let key = spawned.json()["agent"]["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("agent:main:subagent:"), "{key}");
    let listed = edge.api("GET", "/api/agents", Some(&token), None).await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    eprintln!("openclaw-skills: agents {}", listed.text());
    let agents = listed.json();
    assert_eq!(agents["limit"], 5);
    let child = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key.as_str());
    assert!(
        child.is_some_and(|c| c["label"] == "notes helper"),
        "{agents}"
    );
    // The owner's own connection may not start sub-agents, even on Pro: OpenClaw caps the
    // model's spawns but not a client's child sessions (seen: 8 running past a cap of 5), so
    // only the platform's connection (the API above, which keeps count) may.
    // A client naming the platform's header with a value of its own is a client like any other.
    let mut own = crate::openclaw::gateway(
        &edge,
        &host,
        Some(&token),
        &[("x-clawdeploy-edge", "guessed")],
    )
    .await
    .expect("the owner gets through the edge");
    crate::openclaw::connect(&mut own).await.expect("connected");
    let raw = call(
        &mut own,
        "raw1",
        "sessions.create",
        json!({"key": "agent:main:subagent:raw1", "parentSessionKey": "agent:main:main", "spawnDepth": 1, "task": "raw"}),
    )
    .await;
    assert_eq!(raw["ok"], false, "{raw}");
    assert_eq!(raw["error"]["code"], "SUBAGENT_LIMIT", "{raw}");
    assert!(raw.to_string().contains("POST /api/agents"), "{raw}");

    assert!(
        !edge.log_text().contains("SKILLPLAINTEXT"),
        "a skill secret was logged"
    );
    let listed = edge.api("GET", "/api/skills", Some(&token), None).await;
    assert!(!listed.text().contains("SKILLPLAINTEXT"));
}
