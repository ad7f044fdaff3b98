//! The in-memory route table: normalised host → where its traffic goes.
//!
//! A lookup is two hash-map reads at most and never touches the database; writers (the admin API,
//! later the pool manager and the change broadcast) replace single entries, which the next request
//! sees. Nothing holds a map guard across an `.await`.

use std::net::SocketAddr;
use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;

use clawdeploy_config::{normalize_host, validate_hostname, Tier};

/// Who serves a route.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// A user's OpenClaw container.
    Instance,
    /// The in-process control API and dashboard.
    ControlPlane,
    /// A public route an operator set in config or through the admin API.
    Operator,
}

impl RouteKind {
    /// The `snake_case` name, as serialized: the `kind` label of the request metrics and the access
    /// log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instance => "instance",
            Self::ControlPlane => "control_plane",
            Self::Operator => "operator",
        }
    }
}

/// Instance status: one list for the API, the store and routing. Only `Running` is proxied.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Waiting for room on the node.
    Queued,
    /// Getting its container (from the warm pool or created).
    Provisioning,
    /// Its container is (re)starting; also shown for a `running` instance without a usable
    /// upstream.
    Starting,
    /// Ready: the only state proxied.
    Running,
    /// Asleep after being idle: the edge wakes it and holds the request meanwhile.
    Sleeping,
    /// Not running, and not restarted by the pool (an unverified account, an instance restored
    /// after a deletion) until its owner restarts it.
    Stopped,
    /// Given up on after too many restarts; down until its owner restarts it.
    Crashed,
    /// Deleted by its owner, restorable during the grace period.
    Deleting,
}

impl InstanceState {
    /// The `snake_case` name, as serialized and stored (the store's `InstanceStatus` spells it the
    /// same).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Provisioning => "provisioning",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Sleeping => "sleeping",
            Self::Stopped => "stopped",
            Self::Crashed => "crashed",
            Self::Deleting => "deleting",
        }
    }
}

/// Where one host's traffic goes. Cheap to clone: the per-request copy is an `Arc` increment.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The instance served (its id, a UUID in text form); `None` for control-plane and operator
    /// routes.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub instance_id: Option<Arc<str>>,
    /// The user an instance belongs to: only they get through.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub owner_id: Option<Arc<str>>,
    /// The identity the instance's gateway knows its owner by, and the proof header is keyed
    /// with ([`crate::gateway_trust`]); `None`: the owner's id and the instance id.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub gateway_id: Option<Arc<str>>,
    /// The owner's tier, for quotas (instances only).
    pub tier: Option<Tier>,
    /// The owner's billing anchor (unix ms): paid tiers count per period from it.
    pub billing_anchor_ms: Option<i64>,
    /// Where requests are proxied: an instance's gateway, the control API, or an operator's server.
    /// A placeholder (`0.0.0.0:0`) for an instance that is not `running`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub upstream: SocketAddr,
    /// Who serves the route.
    pub kind: RouteKind,
    /// The instance's state; always `running` for control-plane and operator routes. Other states
    /// are answered by the edge.
    pub state: InstanceState,
}

impl Route {
    /// A public route with a fixed upstream, always `running`.
    pub fn operator(upstream: SocketAddr) -> Self {
        Self {
            instance_id: None,
            owner_id: None,
            gateway_id: None,
            tier: None,
            billing_anchor_ms: None,
            upstream,
            kind: RouteKind::Operator,
            state: InstanceState::Running,
        }
    }
}

/// What a request's host resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A route: proxied if its state is `running`, else answered by the edge with the state.
    Route(Route),
    /// The bare base domain: redirect to the dashboard.
    RedirectToApp,
    /// No route: answered 404 by the edge, never forwarded.
    Unknown,
}

/// Why a route cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The text (as given) is not a valid host name.
    #[error("{0:?} is not a valid host name: use a DNS name such as status.example.com")]
    InvalidHost(String),
    /// The host is the base domain or the app domain, which the edge serves itself.
    #[error("{0} is served by the edge itself and cannot be routed elsewhere")]
    ReservedHost(String),
    /// The host is routed to an instance or the control plane, which operators cannot change.
    #[error("{0} is not an operator route; instance routes are managed through the instance API")]
    NotOperatorRoute(String),
    /// The host is routed by the config file's `[[routes]]`, which the admin API does not change.
    #[error(
        "{0} is routed by [[routes]] in the config file; change it there and restart the edge"
    )]
    ConfiguredRoute(String),
}

/// One row of [`RouteTable::list`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct RouteEntry {
    /// The normalised host (for a subdomain, `<label>.<base_domain>`).
    pub host: String,
    /// Where it goes (its fields flattened into the row when serialized).
    #[serde(flatten)]
    pub route: Route,
}

/// Host → route, for exact hosts (custom domains, operator routes, the app domain) and for
/// `<label>.<base_domain>` instance subdomains.
#[derive(Debug)]
pub struct RouteTable {
    base_domain: String,
    app_domain: String,
    /// Suffix `.<base_domain>`, kept to avoid a format per lookup.
    base_suffix: String,
    hosts: DashMap<String, Route>,
    subdomains: DashMap<String, Route>,
    /// Customers' own domains → the subdomain label of their instance: the domain follows the
    /// instance's route (state, upstream, owner) with no second copy to keep in step.
    aliases: DashMap<String, String>,
    /// Operator hosts routed by the config file's `[[routes]]` (the admin API leaves them alone).
    configured: dashmap::DashSet<String>,
    /// Told each instance route's tier, so gateway WebSockets already open meter by the new tier.
    meter: std::sync::OnceLock<Arc<clawdeploy_metering::Meter>>,
}

impl RouteTable {
    /// An empty table for instance subdomains of `base_domain` and the dashboard at `app_domain`
    /// (both normalised: lower case, no port, no trailing dot).
    pub fn new(base_domain: &str, app_domain: &str) -> Self {
        Self {
            base_domain: base_domain.to_string(),
            app_domain: app_domain.to_string(),
            base_suffix: format!(".{base_domain}"),
            hosts: DashMap::new(),
            subdomains: DashMap::new(),
            aliases: DashMap::new(),
            configured: dashmap::DashSet::new(),
            meter: std::sync::OnceLock::new(),
        }
    }

    /// Passes every instance route's tier and billing anchor to `meter` from now on.
    pub fn inform_meter(&self, meter: Arc<clawdeploy_metering::Meter>) {
        let _ = self.meter.set(meter);
    }

    /// The domain under which instances get their `<label>.<base_domain>` hosts.
    pub fn base_domain(&self) -> &str {
        &self.base_domain
    }

    /// The dashboard's and control API's host.
    pub fn app_domain(&self) -> &str {
        &self.app_domain
    }

    /// Resolves a normalised host: exact host first (custom domains, operator routes, the app
    /// domain), then `<label>.<base_domain>`.
    pub fn resolve(&self, host: &str) -> Resolution {
        if let Some(route) = self.hosts.get(host) {
            return Resolution::Route(route.value().clone());
        }
        if let Some(label) = self.aliases.get(host) {
            return match self.subdomains.get(label.value().as_str()) {
                Some(route) => Resolution::Route(route.value().clone()),
                None => Resolution::Unknown,
            };
        }
        if host == self.base_domain {
            return Resolution::RedirectToApp;
        }
        if let Some(label) = host.strip_suffix(&self.base_suffix) {
            if !label.contains('.') {
                if let Some(route) = self.subdomains.get(label) {
                    return Resolution::Route(route.value().clone());
                }
            }
        }
        Resolution::Unknown
    }

    /// Routes a verified custom domain to the instance at `<label>.<base_domain>`.
    pub fn set_alias(&self, host: &str, label: &str) {
        self.aliases.insert(host.to_string(), label.to_string());
    }

    /// Stops routing a custom domain; returns whether it was routed.
    pub fn remove_alias(&self, host: &str) -> bool {
        self.aliases.remove(host).is_some()
    }

    /// The custom domains routed now.
    pub fn alias_hosts(&self) -> Vec<String> {
        self.aliases.iter().map(|e| e.key().clone()).collect()
    }

    /// Points the app domain at the in-process control API.
    pub fn set_control_plane(&self, upstream: SocketAddr) {
        let route = Route {
            instance_id: None,
            owner_id: None,
            gateway_id: None,
            tier: None,
            billing_anchor_ms: None,
            upstream,
            kind: RouteKind::ControlPlane,
            state: InstanceState::Running,
        };
        self.hosts.insert(self.app_domain.clone(), route);
    }

    /// Normalises and checks a host an operator wants to route.
    pub fn operator_host(&self, raw: &str) -> Result<String, RouteError> {
        let host = normalize_host(raw)
            .filter(|h| validate_hostname(h).is_ok())
            .ok_or_else(|| RouteError::InvalidHost(raw.to_string()))?;
        if host == self.base_domain || host == self.app_domain {
            return Err(RouteError::ReservedHost(host));
        }
        Ok(host)
    }

    /// Checks that an operator may route `raw` through the admin API: a valid host, not the
    /// edge's own, not an instance's, not one of the config file's; the normalised host.
    pub fn check_operator(&self, raw: &str) -> Result<String, RouteError> {
        let host = self.operator_host(raw)?;
        if self.configured.contains(&host) {
            return Err(RouteError::ConfiguredRoute(host));
        }
        if let Some(existing) = self.hosts.get(&host) {
            if existing.kind != RouteKind::Operator {
                return Err(RouteError::NotOperatorRoute(host));
            }
        }
        Ok(host)
    }

    /// Routes an operator host of the config file's `[[routes]]` (see [`Self::is_configured`]).
    pub fn upsert_configured(
        &self,
        raw_host: &str,
        upstream: SocketAddr,
    ) -> Result<String, RouteError> {
        let (host, _) = self.upsert_operator(raw_host, upstream)?;
        self.configured.insert(host.clone());
        Ok(host)
    }

    /// Whether the config file's `[[routes]]` route this (normalised) host.
    pub fn is_configured(&self, host: &str) -> bool {
        self.configured.contains(host)
    }

    /// The hosts of every operator route, configured or not.
    pub fn operator_hosts(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|e| e.value().kind == RouteKind::Operator)
            .map(|e| e.key().clone())
            .collect()
    }

    /// Inserts or replaces an operator route; returns whether it was new.
    pub fn upsert_operator(
        &self,
        raw_host: &str,
        upstream: SocketAddr,
    ) -> Result<(String, bool), RouteError> {
        let host = self.operator_host(raw_host)?;
        if let Some(existing) = self.hosts.get(&host) {
            if existing.kind != RouteKind::Operator {
                return Err(RouteError::NotOperatorRoute(host));
            }
        }
        let created = self
            .hosts
            .insert(host.clone(), Route::operator(upstream))
            .is_none();
        Ok((host, created))
    }

    /// Removes an operator route; `Ok(None)` when there was none.
    pub fn remove_operator(&self, raw_host: &str) -> Result<Option<Route>, RouteError> {
        let host = self.operator_host(raw_host)?;
        match self
            .hosts
            .remove_if(&host, |_, route| route.kind == RouteKind::Operator)
        {
            Some((_, route)) => Ok(Some(route)),
            None if self.hosts.contains_key(&host) => Err(RouteError::NotOperatorRoute(host)),
            None => Ok(None),
        }
    }

    /// Inserts or replaces the route of an instance subdomain (`<label>.<base_domain>`).
    pub fn upsert_subdomain(&self, label: &str, route: Route) {
        if let (Some(meter), Some(instance), Some(tier)) =
            (self.meter.get(), &route.instance_id, route.tier)
        {
            meter.update_tier(instance, tier, route.billing_anchor_ms);
        }
        self.subdomains.insert(label.to_ascii_lowercase(), route);
    }

    /// Removes an instance subdomain's route.
    pub fn remove_subdomain(&self, label: &str) -> Option<Route> {
        self.subdomains
            .remove(&label.to_ascii_lowercase())
            .map(|(_, r)| r)
    }

    /// The labels of every instance subdomain.
    pub fn subdomain_labels(&self) -> Vec<String> {
        self.subdomains.iter().map(|e| e.key().clone()).collect()
    }

    /// Every route, sorted by host.
    pub fn list(&self) -> Vec<RouteEntry> {
        let mut entries: Vec<RouteEntry> = self
            .hosts
            .iter()
            .map(|e| RouteEntry {
                host: e.key().clone(),
                route: e.value().clone(),
            })
            .chain(self.subdomains.iter().map(|e| RouteEntry {
                host: format!("{}{}", e.key(), self.base_suffix),
                route: e.value().clone(),
            }))
            .collect();
        entries.sort_by(|a, b| a.host.cmp(&b.host));
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn exact_host_wins_over_subdomain() {
        let table = RouteTable::new("example.com", "app.example.com");
        let instance = Route {
            instance_id: Some("i1".into()),
            owner_id: None,
            gateway_id: None,
            tier: None,
            billing_anchor_ms: None,
            upstream: addr(1),
            kind: RouteKind::Instance,
            state: InstanceState::Running,
        };
        table.upsert_subdomain("alice", instance.clone());
        assert_eq!(
            table.resolve("alice.example.com"),
            Resolution::Route(instance)
        );
        table.upsert_operator("alice.example.com", addr(2)).unwrap();
        assert_eq!(
            table.resolve("alice.example.com"),
            Resolution::Route(Route::operator(addr(2)))
        );
    }

    #[test]
    fn only_one_label_deep_under_the_base_domain() {
        let table = RouteTable::new("example.com", "app.example.com");
        table.upsert_subdomain("alice", Route::operator(addr(1)));
        assert_eq!(table.resolve("x.alice.example.com"), Resolution::Unknown);
        assert_eq!(table.resolve("aliceexample.com"), Resolution::Unknown);
        assert_eq!(table.resolve("example.com"), Resolution::RedirectToApp);
        assert_eq!(
            table.resolve("app.example.com"),
            Resolution::Unknown,
            "no control plane set yet"
        );
    }

    #[test]
    fn operator_routes_cannot_take_reserved_or_instance_hosts() {
        let table = RouteTable::new("example.com", "app.example.com");
        table.set_control_plane(addr(9));
        assert_eq!(
            table.upsert_operator("App.Example.com.", addr(1)),
            Err(RouteError::ReservedHost("app.example.com".into()))
        );
        assert_eq!(
            table.upsert_operator("example.com", addr(1)),
            Err(RouteError::ReservedHost("example.com".into()))
        );
        assert!(matches!(
            table.upsert_operator("bad host", addr(1)),
            Err(RouteError::InvalidHost(_))
        ));
        assert!(matches!(
            table.upsert_operator("127.0.0.1", addr(1)),
            Err(RouteError::InvalidHost(_))
        ));
        assert_eq!(
            table.upsert_operator("Status.Example.org:80", addr(1)),
            Ok(("status.example.org".into(), true))
        );
        assert_eq!(
            table.upsert_operator("status.example.org", addr(2)),
            Ok(("status.example.org".into(), false))
        );
        assert_eq!(
            table.remove_operator("status.example.org"),
            Ok(Some(Route::operator(addr(2))))
        );
        assert_eq!(table.remove_operator("status.example.org"), Ok(None));
    }
}
