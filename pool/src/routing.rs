//! Keeps the edge's in-memory route table in step with the instances in the store: a full load
//! at start and after every gap, then one reload per changed instance. Nothing here runs per
//! request.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use clawdeploy_proxy::{InstanceState, Route, RouteKind, RouteTable};
use clawdeploy_store::{Instance, InstanceStatus, Store, StoreError};

use clawdeploy_store::changes::{Change, ChangeBus};

/// The route an instance record implies. The upstream of a not-yet-placed instance is a
/// placeholder: only `running` routes are ever proxied.
pub fn route_for(instance: &Instance) -> Route {
    let state = match instance.status {
        InstanceStatus::Queued => InstanceState::Queued,
        InstanceStatus::Provisioning => InstanceState::Provisioning,
        InstanceStatus::Starting => InstanceState::Starting,
        InstanceStatus::Running => InstanceState::Running,
        InstanceStatus::Sleeping => InstanceState::Sleeping,
        InstanceStatus::Stopped => InstanceState::Stopped,
        InstanceStatus::Crashed => InstanceState::Crashed,
        InstanceStatus::Deleting => InstanceState::Deleting,
    };
    let upstream = instance
        .upstream
        .as_deref()
        .and_then(|u| u.parse::<SocketAddr>().ok());
    // Running without a usable address cannot be proxied: show it as starting.
    let state = if state == InstanceState::Running && upstream.is_none() {
        InstanceState::Starting
    } else {
        state
    };
    Route {
        instance_id: Some(Arc::from(instance.id.to_string())),
        owner_id: Some(Arc::from(instance.user_id.to_string())),
        gateway_id: instance.gateway_id.as_deref().map(Arc::from),
        tier: Some(instance.tier),
        billing_anchor_ms: instance.billing_anchor_at,
        upstream: upstream.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        kind: RouteKind::Instance,
        state,
    }
}

/// Loads every instance route, dropping subdomains that no longer exist. Returns the count.
pub async fn load_all(store: &Store, routes: &RouteTable) -> Result<usize, StoreError> {
    let instances = store.list_instances().await?;
    let live: HashSet<&str> = instances.iter().map(|i| i.subdomain.as_str()).collect();
    for label in routes.subdomain_labels() {
        if !live.contains(label.as_str()) {
            routes.remove_subdomain(&label);
        }
    }
    for instance in &instances {
        routes.upsert_subdomain(&instance.subdomain, route_for(instance));
    }
    Ok(instances.len())
}

/// Applies one change to the route table.
pub async fn apply(store: &Store, routes: &RouteTable, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::Instance { id, subdomain } => match store.get_instance(*id).await? {
            Some(instance) => {
                if instance.subdomain != *subdomain {
                    routes.remove_subdomain(subdomain);
                }
                routes.upsert_subdomain(&instance.subdomain, route_for(&instance));
            }
            None => {
                routes.remove_subdomain(subdomain);
            }
        },
        Change::OperatorRoute { host } => match store.operator_route(host).await? {
            Some(upstream) => set_operator(routes, host, &upstream),
            None => {
                if let Err(e) = routes.remove_operator(host) {
                    tracing::warn!(%host, "cannot remove an operator route: {e}");
                }
            }
        },
        Change::Resync => {
            load_all(store, routes).await?;
            load_operator_routes(store, routes).await?;
        }
        Change::SessionRevoked { .. } | Change::Certificate { .. } | Change::Domain { .. } => {}
    }
    Ok(())
}

/// Loads the operator routes set through `/admin/routes` (kept in the store), dropping those no
/// longer stored; the config file's `[[routes]]` (marked configured in the table) stay as they
/// are. Returns the count.
pub async fn load_operator_routes(store: &Store, routes: &RouteTable) -> Result<usize, StoreError> {
    let stored = store.operator_routes().await?;
    let live: HashSet<&str> = stored.iter().map(|(host, _)| host.as_str()).collect();
    for host in routes.operator_hosts() {
        if !live.contains(host.as_str()) && !routes.is_configured(&host) {
            let _ = routes.remove_operator(&host);
        }
    }
    for (host, upstream) in &stored {
        set_operator(routes, host, upstream);
    }
    Ok(stored.len())
}

/// Routes a stored operator route, unless the config file routes that host (the file wins).
fn set_operator(routes: &RouteTable, host: &str, upstream: &str) {
    if routes.is_configured(host) {
        return tracing::warn!(%host, "an operator route in the store is shadowed by [[routes]] in the config file");
    }
    let result = upstream
        .parse::<SocketAddr>()
        .map_err(|e| e.to_string())
        .and_then(|addr| {
            routes
                .upsert_operator(host, addr)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        tracing::warn!(%host, %upstream, "cannot route a stored operator route: {e}");
    }
}

/// The one path by which a node changes routes: applies `change` here with the same [`apply`]
/// every node's follower runs, then publishes it to the other nodes. This node's follower sees
/// the change again and re-applies it, which reloads the same record (apply is idempotent).
pub async fn publish(
    store: &Store,
    routes: &RouteTable,
    bus: &ChangeBus,
    change: Change,
) -> Result<(), StoreError> {
    apply(store, routes, &change).await?;
    bus.publish(change).await
}

/// Follows the change broadcast until it closes, applying each change to `routes`.
pub async fn follow(
    store: Store,
    routes: Arc<RouteTable>,
    mut changes: tokio::sync::broadcast::Receiver<Change>,
) {
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            // Fell behind: some changes were dropped, so reload everything.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Change::Resync,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if let Err(e) = apply(&store, &routes, &change).await {
            tracing::warn!(?change, "cannot apply a route change: {e}");
        }
    }
}
