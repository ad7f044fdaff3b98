//! Real SMTP on loopback (Debian's python3-aiosmtpd, a Maildir): verification and reset mails
//! arrive, and the links in them work through the edge. On SQLite and on PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde_json::json;
use tokio::process::{Child, Command};

use crate::both_dbs;
use crate::support::*;

const PW: &str = "securePassword123";

struct SmtpServer {
    _child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    async fn start() -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("Maildir");
        let port = free_port();
        // Debian's interpreter, which sees the python3-aiosmtpd package (a python3 earlier on
        // PATH, such as pyenv's, may not).
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let child = Command::new(python)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 -m aiosmtpd (scripts/test.sh installs python3-aiosmtpd)");
        // Ready when it answers with its SMTP greeting.
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 64];
                if let Ok(n) = tcp.read(&mut buf).await {
                    if buf[..n].starts_with(b"220") {
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not start (is python3-aiosmtpd installed?)"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        SmtpServer {
            _child: child,
            port,
            maildir,
            _dir: dir,
        }
    }

    /// Every delivered mail, as text. aiosmtpd's Mailbox writes the file before it answers 250,
    /// and the API answers only after the relay accepted the mail, so no waiting is needed.
    fn mails(&self) -> Vec<String> {
        let new = self.maildir.join("new");
        read_dir_texts(&new)
    }
}

fn read_dir_texts(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// Quoted-printable soft line breaks and `=3D` undone (lettre may encode long lines).
fn unfold(mail: &str) -> String {
    mail.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

both_dbs!(verification_and_reset_mails_arrive_over_smtp_and_links_work);

async fn verification_and_reset_mails_arrive_over_smtp_and_links_work(db: Db) {
    let smtp = SmtpServer::start().await;
    let edge = EdgeBuilder::new()
        .db(&db)
        .section("smtp", "host = \"127.0.0.1\"")
        .section("smtp", "tls = \"none\"")
        .section("smtp", &format!("port = {}", smtp.port))
        .section("smtp", "from = \"ClawDeploy <no-reply@clawdeploy.test>\"")
        .start()
        .await;
    let (token, _, _) = edge.register("smtp@example.com", PW).await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "one verification mail");
    let mail = unfold(&mails[0]);
    assert!(mail.contains("To: smtp@example.com"), "{mail}");
    assert!(mail.contains("no-reply@clawdeploy.test"), "{mail}");
    let link = find_link(&mail);
    let resp = edge.follow(&link).await;
    assert_eq!(resp.status, 200, "{link}: {}", resp.text());
    assert_eq!(
        edge.api("GET", "/api/account", Some(&token), None)
            .await
            .json()["user"]["emailVerified"],
        true
    );

    let resp = edge
        .api(
            "POST",
            "/api/auth/forgot-password",
            None,
            Some(json!({ "email": "smtp@example.com" })),
        )
        .await;
    assert_eq!(resp.status, 202);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 2);
    let reset = mails
        .iter()
        .map(|m| unfold(m))
        .find(|m| m.contains("reset-password"))
        .expect("reset mail");
    let link = find_link(&reset);
    assert_eq!(edge.follow(&link).await.status, 200);
    let done = edge
        .api(
            "POST",
            "/api/auth/reset-password",
            None,
            Some(json!({ "token": link_token(&link), "password": "freshPassword42" })),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(
        edge.login("smtp@example.com", "freshPassword42")
            .await
            .status,
        200
    );
    // Nothing went to the outbox.
    let outbox = edge
        .admin("GET", "/admin/outbox", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(outbox.json()["mode"], "smtp");
    assert_eq!(outbox.json()["mails"].as_array().unwrap().len(), 0);
}
