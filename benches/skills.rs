//! Skill installs under concurrency (issue 18, PRD §6.3: 50 concurrent installs complete or fail
//! cleanly). Not a test: it records p50/p99 in `benches/results/<date>-skills-<mode>.md`.
//!
//! ```sh
//! SKILLS_BENCH=api      cargo bench --bench skills   # SKILLS_INSTANCES (50): fixture instances
//! SKILLS_BENCH=openclaw cargo bench --bench skills   # SKILLS_OPENCLAW (3) real OpenClaw instances
//! ```
//!
//! - `api`: 50 instances (the fixture, as local processes), each installing a bundled skill with a
//!   secret at the same moment: the platform's whole path (checks, the cap's transaction, sealing,
//!   the config rewrite into the instance), then 50 concurrent uninstalls.
//! - `openclaw`: real OpenClaw instances each installing every curated registry skill at once
//!   (`SKILLS_PER_INSTANCE`, 3), so OpenClaw's own installer fetches from the platform's registry:
//!   the API's answer comes after the instance has unpacked the skill.

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/it/openclaw.rs"]
mod openclaw;

#[allow(dead_code)]
#[path = "../tests/it/webdriver.rs"]
mod webdriver;

#[allow(dead_code)]
#[path = "report.rs"]
mod report;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use report::*;
use support::*;

const PW: &str = "correct horse battery staple 9";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    raise_fd_limit();
    match std::env::var("SKILLS_BENCH").as_deref() {
        Ok("openclaw") => openclaw_installs().await,
        _ => api_installs().await,
    }
}

/// Fires `calls` at once; each call's duration and status.
async fn at_once<F, Fut>(calls: Vec<F>) -> Vec<(Duration, u16)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let futures = calls.into_iter().map(|call| async move {
        let started = Instant::now();
        let status = call().await;
        (started.elapsed(), status)
    });
    futures_util::future::join_all(futures).await
}

fn statuses(results: &[(Duration, u16)]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for (_, s) in results {
        *counts.entry(*s).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n}× {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn api_installs() {
    let n = env_usize("SKILLS_INSTANCES", 50);
    let node = format!("skillsbench{}", std::process::id());
    let edge = fixture_pool_edge(false, 5, &node)
        .section("pool", &format!("capacity = {}", n + 10))
        .start()
        .await;
    let mut tokens = Vec::new();
    for i in 0..n {
        let (token, _, _) = edge.register(&format!("bench{i}@example.com"), PW).await;
        let created = edge
            .api(
                "POST",
                "/api/instances",
                Some(&token),
                Some(json!({"subdomain": format!("bench-{i}")})),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text());
        tokens.push(token);
    }
    for t in &tokens {
        edge.wait_running(t, Duration::from_secs(120)).await;
    }
    let (load_before, mem_before) = (load(), used_mib());
    let installs = at_once(
        tokens
            .iter()
            .map(|t| {
                let edge = &edge;
                move || async move {
                    edge.api("POST", "/api/skills/install", Some(t),
                        Some(json!({"skillId": "notion", "config": {"NOTION_API_TOKEN": "secret_bench"}})))
                        .await
                        .status
                }
            })
            .collect(),
    )
    .await;
    let removals = at_once(
        tokens
            .iter()
            .map(|t| {
                let edge = &edge;
                move || async move {
                    edge.api("DELETE", "/api/skills/notion", Some(t), None)
                        .await
                        .status
                }
            })
            .collect(),
    )
    .await;
    let mut report = format!(
        "# Skills: {n} concurrent installs through the API ({})\n\n\
         {n} fixture instances (local processes), each installing the bundled `notion` skill with a \
         secret at once, then uninstalling it at once. Load before: {load_before}; used memory \
         {mem_before:.0} MiB; after: {}.\n\n{SUMMARY_HEAD}",
        date(),
        load()
    );
    let times = |r: &[(Duration, u16)]| r.iter().map(|(d, _)| *d).collect::<Vec<_>>();
    report.push_str(&summary_row("install (201)", &times(&installs)));
    report.push_str(&summary_row("uninstall (200)", &times(&removals)));
    report.push_str(&format!(
        "\nStatuses: installs {}; uninstalls {}.\n",
        statuses(&installs),
        statuses(&removals)
    ));
    write_result("skills", "api", &report);
}

async fn openclaw_installs() {
    let image = openclaw::openclaw_image().await;
    let n = env_usize("SKILLS_OPENCLAW", 3);
    let per = env_usize("SKILLS_PER_INSTANCE", 3);
    let (_provider, provider_addr) =
        openclaw::FakeProvider::start(IpAddr::from([127, 0, 0, 1])).await;
    let node = format!("skillsocbench{}", std::process::id());
    let _cleanup = openclaw::Cleanup(node.clone());
    let curated = tempfile::tempdir().unwrap();
    for k in 0..per {
        let dir = curated.path().join(format!("bench-skill-{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("SKILL.md"),
            format!("---\nname: bench-skill-{k}\ndescription: Bench skill {k}.\n---\nUse it.\n"),
        )
        .unwrap();
    }
    let edge = openclaw::openclaw_edge(&image, &node, n, n + 1)
        .section("runtime", "docker_network = \"clawdeploy-skills-bench\"")
        .section("llm", &format!("openai_url = \"http://{provider_addr}\""))
        .section(
            "skills",
            &format!("curated_dir = \"{}\"", curated.path().display()),
        )
        .section("tiers.free", "skills = 0")
        .start()
        .await;
    wait_idle(&edge, n as u64, Duration::from_secs(900)).await;
    let mut tokens = Vec::new();
    for i in 0..n {
        let (token, _, _) = edge.register(&format!("oc{i}@example.com"), PW).await;
        let created = edge
            .api(
                "POST",
                "/api/instances",
                Some(&token),
                Some(json!({"subdomain": format!("oc-{i}")})),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text());
        edge.wait_running(&token, Duration::from_secs(600)).await;
        tokens.push(token);
    }
    let (load_before, mem_before) = (load(), used_mib());
    let mut calls = Vec::new();
    for t in &tokens {
        for k in 0..per {
            let edge = &edge;
            calls.push(move || async move {
                let r = edge
                    .api(
                        "POST",
                        "/api/skills/install",
                        Some(t),
                        Some(json!({"skillId": format!("bench-skill-{k}")})),
                    )
                    .await;
                if r.status != 201 {
                    eprintln!("install refused: {}", r.text());
                }
                r.status
            });
        }
    }
    let installs = at_once(calls).await;
    let mut report = format!(
        "# Skills: registry installs into the real OpenClaw ({})\n\n\
         {n} OpenClaw 2026.9.6 instances, each installing {per} curated registry skills at once \
         ({} installs in flight): the API answers after OpenClaw's own installer fetched the \
         archive from the platform's registry and unpacked it. Load before: {load_before}; used \
         memory {mem_before:.0} MiB; after: {}.\n\n{SUMMARY_HEAD}",
        date(),
        n * per,
        load()
    );
    let times: Vec<Duration> = installs.iter().map(|(d, _)| *d).collect();
    report.push_str(&summary_row("registry install (201)", &times));
    report.push_str(&format!("\nStatuses: {}.\n", statuses(&installs)));
    write_result("skills", "openclaw", &report);
}
