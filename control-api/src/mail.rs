//! Outgoing mail: through an SMTP relay (lettre), or kept in the outbox when none is configured.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use clawdeploy_config::{SmtpConfig, SmtpTls};
use clawdeploy_store::Store;

/// How mail leaves: chosen once, from `[smtp]`.
pub enum Mailer {
    /// No relay: mails go to the `outbox` table (`GET /admin/outbox`).
    Outbox,
    /// Through the relay at `smtp.host`.
    Smtp {
        /// The relay connection settings (TLS mode, port, timeout, credentials).
        // Boxed: the TLS-capable transport is large, and mailers are built once.
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        /// The sender of every mail (`smtp.from`, or `no-reply@<app domain>`).
        from: Mailbox,
    },
}

/// Why a mailer cannot be built or a mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The sender, a recipient or `smtp.host` does not parse.
    #[error("bad address: {0}")]
    Address(String),
    /// lettre could not assemble the message.
    #[error("building the message: {0}")]
    Build(String),
    /// The relay refused the mail or could not be reached in `smtp.timeout_secs`.
    #[error("SMTP: {0}")]
    Smtp(String),
    /// The store's error is part of the message, not a `source()`: shown once by chain printers.
    #[error("outbox: {0}")]
    Outbox(clawdeploy_store::StoreError),
}

impl Mailer {
    /// The mailer for a config; `from` is the resolved sender.
    pub fn new(smtp: &SmtpConfig, from: &str) -> Result<Mailer, MailError> {
        if smtp.host.is_empty() {
            return Ok(Mailer::Outbox);
        }
        let from: Mailbox = from
            .parse()
            .map_err(|e| MailError::Address(format!("{from}: {e}")))?;
        let builder = match smtp.tls {
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                    .map_err(|e| MailError::Address(format!("smtp.host {}: {e}", smtp.host)))?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
                .map_err(|e| MailError::Address(format!("smtp.host {}: {e}", smtp.host)))?,
            // Plain SMTP: a relay on this host (validation refuses credentials elsewhere).
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        };
        let mut builder = builder
            .port(smtp.port)
            .timeout(Some(Duration::from_secs(smtp.timeout_secs)));
        if !smtp.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                smtp.username.clone(),
                smtp.password.clone(),
            ));
        }
        Ok(Mailer::Smtp {
            transport: Box::new(builder.build()),
            from,
        })
    }

    /// `outbox` or `smtp`, for the start-up log and `GET /admin/outbox`.
    pub fn kind(&self) -> &'static str {
        match self {
            Mailer::Outbox => "outbox",
            Mailer::Smtp { .. } => "smtp",
        }
    }

    /// Sends a plain-text mail (or keeps it in the outbox).
    pub async fn send(
        &self,
        store: &Store,
        to: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), MailError> {
        match self {
            Mailer::Outbox => {
                store
                    .push_outbox(to, subject, body)
                    .await
                    .map_err(MailError::Outbox)?;
                Ok(())
            }
            Mailer::Smtp { transport, from } => {
                let to: Mailbox = to.parse().map_err(|e| MailError::Address(format!("{e}")))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(body.to_string())
                    .map_err(|e| MailError::Build(e.to_string()))?;
                transport
                    .send(message)
                    .await
                    .map_err(|e| MailError::Smtp(e.to_string()))?;
                Ok(())
            }
        }
    }
}
