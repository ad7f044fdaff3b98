//! DNS for certificates and custom domains: providers that write the DNS-01 TXT records (one
//! trait; RFC 2136 dynamic update signed with TSIG, as BIND, Knot or PowerDNS accept it), and
//! lookups of TXT and CNAME records through a configured resolver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use hickory_client::client::{Client, ClientHandle};
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, CNAME, TXT};
pub use hickory_proto::rr::RecordType;
use hickory_proto::rr::{DNSClass, Name, RData, Record};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::udp::UdpClientStream;

use clawdeploy_config::{DnsConfig, DnsProviderKind};

use crate::Error;

/// TTL of the records written (short: they live for one order).
const TXT_TTL: u32 = 60;

/// Writes and removes TXT records (DNS-01). Several values may live at one name at once (the
/// wildcard and the apex share `_acme-challenge.<base>`).
#[async_trait]
pub trait DnsProvider: Send + Sync {
    /// Adds the TXT record `value` at `name` (a full name, `_acme-challenge.<domain>`; TTL 60 s),
    /// beside any other values there.
    async fn add_txt(&self, name: &str, value: &str) -> Result<(), Error>;
    /// Removes the TXT record `value` at `name`, leaving other values there.
    async fn remove_txt(&self, name: &str, value: &str) -> Result<(), Error>;
}

/// The provider `[dns]` names, if any.
pub fn provider_from_config(config: &DnsConfig) -> Result<Option<Arc<dyn DnsProvider>>, Error> {
    match config.provider {
        DnsProviderKind::None => Ok(None),
        DnsProviderKind::Rfc2136 => Ok(Some(Arc::new(Rfc2136::from_config(config)?))),
        DnsProviderKind::Cloudflare => Ok(Some(Arc::new(crate::cloudflare::Cloudflare::new(
            &config.cloudflare_api_url,
            &config.cloudflare_api_token,
            &config.cloudflare_zone_id,
        )?))),
    }
}

/// RFC 2136 dynamic update, TSIG-signed (RFC 8945).
pub struct Rfc2136 {
    server: SocketAddr,
    zone: Name,
    signer: TSigner,
}

impl Rfc2136 {
    /// Updates `zone` on the primary `server`, signing with the TSIG key `key_name` (secret in
    /// standard base64; `algorithm` is `hmac-sha256`, `hmac-sha384` or `hmac-sha512`).
    pub fn new(
        server: SocketAddr,
        zone: &str,
        key_name: &str,
        secret_b64: &str,
        algorithm: &str,
    ) -> Result<Self, Error> {
        let algorithm = match algorithm {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => return Err(Error::Dns(format!("unsupported TSIG algorithm {other:?}"))),
        };
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_b64.trim())
            .map_err(|_| Error::Dns("the TSIG secret is not base64".into()))?;
        let key_name =
            Name::from_ascii(key_name).map_err(|e| Error::Dns(format!("TSIG key name: {e}")))?;
        let signer = TSigner::new(secret, algorithm, key_name, 300)
            .map_err(|e| Error::Dns(format!("TSIG: {e}")))?;
        Ok(Self {
            server,
            zone: fqdn(zone)?,
            signer,
        })
    }

    /// [`Rfc2136::new`] from `[dns]` (`server`, `zone`, `tsig_*`).
    pub fn from_config(config: &DnsConfig) -> Result<Self, Error> {
        let server = config
            .server
            .parse()
            .map_err(|_| Error::Dns(format!("dns.server {:?} is not IP:port", config.server)))?;
        Self::new(
            server,
            &config.zone,
            &config.tsig_key_name,
            &config.tsig_secret,
            &config.tsig_algorithm,
        )
    }

    async fn client(&self) -> Result<Client, Error> {
        let stream = UdpClientStream::builder(self.server, TokioRuntimeProvider::default())
            .with_timeout(Some(Duration::from_secs(5)))
            .with_signer(Some(Arc::new(self.signer.clone())))
            .build();
        let (client, background) = Client::connect(stream)
            .await
            .map_err(|e| Error::Dns(format!("cannot reach {}: {e}", self.server)))?;
        tokio::spawn(background);
        Ok(client)
    }

    fn check(&self, what: &str, code: ResponseCode) -> Result<(), Error> {
        if code == ResponseCode::NoError {
            Ok(())
        } else {
            Err(Error::Dns(format!(
                "{} refused the update ({what}): {code}",
                self.server
            )))
        }
    }

    /// Adds a record (any type): used for TXT here and by tests acting as a customer's DNS.
    pub async fn add(&self, record: Record) -> Result<(), Error> {
        let mut client = self.client().await?;
        let what = format!("add {} {}", record.name(), record.record_type());
        let response = client
            .append(record, self.zone.clone(), false)
            .await
            .map_err(|e| Error::Dns(format!("update failed: {e}")))?;
        self.check(&what, response.response_code())
    }

    /// Deletes every record of `name` and `rtype`.
    pub async fn delete_rrset(&self, name: &str, rtype: RecordType) -> Result<(), Error> {
        let mut client = self.client().await?;
        let mut record = Record::update0(fqdn(name)?, 0, rtype);
        record.set_dns_class(DNSClass::ANY);
        let response = client
            .delete_rrset(record.into_record_of_rdata(), self.zone.clone())
            .await
            .map_err(|e| Error::Dns(format!("update failed: {e}")))?;
        self.check(&format!("delete {name} {rtype}"), response.response_code())
    }

    /// Adds `name CNAME target`.
    pub async fn add_cname(&self, name: &str, target: &str) -> Result<(), Error> {
        self.add(Record::from_rdata(
            fqdn(name)?,
            TXT_TTL,
            RData::CNAME(CNAME(fqdn(target)?)),
        ))
        .await
    }

    /// Removes `name CNAME target` (tests acting as a customer's DNS).
    pub async fn remove_cname(&self, name: &str, target: &str) -> Result<(), Error> {
        let mut client = self.client().await?;
        let record = Record::from_rdata(fqdn(name)?, TXT_TTL, RData::CNAME(CNAME(fqdn(target)?)));
        let response = client
            .delete_by_rdata(record, self.zone.clone())
            .await
            .map_err(|e| Error::Dns(format!("update failed: {e}")))?;
        self.check(&format!("remove CNAME {name}"), response.response_code())
    }

    /// Adds `name A ip`.
    pub async fn add_a(&self, name: &str, ip: std::net::Ipv4Addr) -> Result<(), Error> {
        self.add(Record::from_rdata(fqdn(name)?, TXT_TTL, RData::A(A(ip))))
            .await
    }
}

#[async_trait]
impl DnsProvider for Rfc2136 {
    async fn add_txt(&self, name: &str, value: &str) -> Result<(), Error> {
        self.add(Record::from_rdata(
            fqdn(name)?,
            TXT_TTL,
            RData::TXT(TXT::new(vec![value.to_string()])),
        ))
        .await
    }

    async fn remove_txt(&self, name: &str, value: &str) -> Result<(), Error> {
        let mut client = self.client().await?;
        let record = Record::from_rdata(
            fqdn(name)?,
            TXT_TTL,
            RData::TXT(TXT::new(vec![value.to_string()])),
        );
        let response = client
            .delete_by_rdata(record, self.zone.clone())
            .await
            .map_err(|e| Error::Dns(format!("update failed: {e}")))?;
        self.check(&format!("remove TXT {name}"), response.response_code())
    }
}

fn fqdn(name: &str) -> Result<Name, Error> {
    let mut name =
        Name::from_ascii(name).map_err(|e| Error::Dns(format!("bad name {name:?}: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}

/// Looks records up through one resolver (no cache: each call asks again).
#[derive(Debug, Clone)]
pub struct Resolver {
    server: SocketAddr,
}

impl Resolver {
    /// Asks the DNS server at `server` over UDP (5 s per query).
    pub fn new(server: SocketAddr) -> Self {
        Self { server }
    }

    /// The resolver of `[dns]`: `dns.resolver`, else the RFC 2136 server, else `1.1.1.1:53`.
    pub fn from_config(config: &DnsConfig) -> Result<Self, Error> {
        let addr = config.resolver_addr();
        addr.parse()
            .map(Self::new)
            .map_err(|_| Error::Dns(format!("dns.resolver {addr:?} is not IP:port")))
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, Error> {
        let stream = UdpClientStream::builder(self.server, TokioRuntimeProvider::default())
            .with_timeout(Some(Duration::from_secs(5)))
            .build();
        let (mut client, background) = Client::connect(stream)
            .await
            .map_err(|e| Error::Dns(format!("cannot reach the resolver {}: {e}", self.server)))?;
        tokio::spawn(background);
        let response = client
            .query(fqdn(name)?, DNSClass::IN, rtype)
            .await
            .map_err(|e| Error::Dns(format!("lookup of {name} {rtype} failed: {e}")))?;
        Ok(response
            .answers()
            .iter()
            .filter(|r| r.record_type() == rtype)
            .map(|r| r.data().clone())
            .collect())
    }

    /// The TXT values at `name` (each record's strings joined).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .query(name, RecordType::TXT)
            .await?
            .into_iter()
            .filter_map(|data| match data {
                RData::TXT(txt) => Some(
                    txt.txt_data()
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }

    /// The CNAME target of `name`, lower case without the trailing dot.
    pub async fn cname(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self
            .query(name, RecordType::CNAME)
            .await?
            .into_iter()
            .find_map(|data| match data {
                RData::CNAME(target) => Some(
                    target
                        .0
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                ),
                _ => None,
            }))
    }

    /// The IPv4 and IPv6 addresses `name` resolves to (CNAMEs followed by the resolver).
    pub async fn addresses(&self, name: &str) -> Result<Vec<std::net::IpAddr>, Error> {
        let mut out = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            for data in self.query(name, rtype).await? {
                match data {
                    RData::A(a) => out.push(std::net::IpAddr::V4(a.0)),
                    RData::AAAA(a) => out.push(std::net::IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// Waits until `value` is among the TXT values of `name`, or `timeout` passes.
    pub async fn wait_for_txt(
        &self,
        name: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.txt(name).await {
                Ok(values) if values.iter().any(|v| v == value) => return Ok(()),
                Ok(values) => last = format!("seen {values:?}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(Error::Dns(format!(
                    "TXT {name} not visible at {} within {} s ({last})",
                    self.server,
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
