//! The generator that serves the mesh's routed configuration: per push,
//! one [`MeshView`] of the index; per scope (namespace, and the few labels
//! some rule selects on), the outbound clusters, endpoints, routes and
//! listener, packed once and shared by every proxy of the scope; per proxy,
//! only its inbound listener and clusters.
//!
//! Every listener and route names the clusters it sends to, so the streams
//! send it only once those clusters (and their endpoints) are acknowledged:
//! a new subset is never routed to before the proxy knows it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use prost::{Message, Name};

use super::proxy::Proxy;
use super::snapshot::{Generator, PushContext, Resource, ResourceSet, Resources, ScopeCache, Snapshot};
use super::types;
use crate::index::Index;
use crate::model::ObjectKey;
use crate::model::mesh::{MeshView, ProxyContext, ScopeKey};
use crate::translate;

/// Translates the index into each proxy's configuration.
#[derive(Debug, Default)]
pub struct MeshGenerator;

impl Generator for MeshGenerator {
    fn prepare(&self, index: &Index) -> Arc<dyn PushContext> {
        let view = translate::mesh_view(index);
        let proxies =
            index.workloads.iter().map(|(key, w)| (key.clone(), ProxyContext::from_workload(w))).collect();
        Arc::new(MeshContext { view, proxies, outbound: ScopeCache::default() })
    }
}

struct MeshContext {
    view: MeshView,
    proxies: HashMap<ObjectKey, ProxyContext>,
    outbound: ScopeCache<ScopeKey, PackedOutbound>,
}

/// A scope's outbound configuration, packed for sharing.
struct PackedOutbound {
    clusters: Arc<ResourceSet>,
    endpoints: Arc<ResourceSet>,
    routes: Arc<ResourceSet>,
    listener: Arc<ResourceSet>,
}

impl PackedOutbound {
    fn new(view: &MeshView, scope: &ScopeKey) -> Self {
        let out = translate::sidecar::outbound(view, scope);
        Self {
            clusters: Arc::new(ResourceSet::of(out.clusters, |c: &Cluster| c.name.clone())),
            endpoints: Arc::new(ResourceSet::of(out.endpoints, |e: &ClusterLoadAssignment| {
                e.cluster_name.clone()
            })),
            routes: Arc::new(ResourceSet::new(
                out.routes
                    .iter()
                    .map(|r| Arc::new(Resource::of(r.name.clone(), r).depending_on(route_clusters(r)))),
            )),
            listener: Arc::new(listener_set(&out.listener)),
        }
    }
}

impl PushContext for MeshContext {
    fn generate(&self, proxy: &Proxy) -> Snapshot {
        let key = ObjectKey::new(&proxy.id.namespace, &proxy.id.pod);
        // Authorized streams have their pod in the index; a pod deleted
        // since gets the configuration of its namespace until its stream ends.
        let context = self.proxies.get(&key).cloned().unwrap_or_else(|| ProxyContext {
            namespace: proxy.id.namespace.clone(),
            pod: proxy.id.pod.clone(),
            ip: Some(proxy.id.ip.to_string()),
            ..ProxyContext::default()
        });
        let scope = self.view.scope(&context);
        let outbound = self.outbound.get_or_build(scope.clone(), || PackedOutbound::new(&self.view, &scope));
        let inbound = translate::sidecar::inbound(&self.view, &context);
        let inbound_clusters = Arc::new(ResourceSet::of(inbound.clusters, |c: &Cluster| c.name.clone()));
        let inbound_listener = Arc::new(listener_set(&inbound.listener));

        Snapshot::new()
            .with_resources(
                types::CLUSTER,
                Resources::from_parts([outbound.clusters.clone(), inbound_clusters]),
            )
            .with_resources(types::ENDPOINT, Resources::from_parts([outbound.endpoints.clone()]))
            .with_resources(types::ROUTE, Resources::from_parts([outbound.routes.clone()]))
            .with_resources(
                types::LISTENER,
                Resources::from_parts([outbound.listener.clone(), inbound_listener]),
            )
    }
}

/// One listener, packed with the clusters it sends to.
fn listener_set(listener: &Listener) -> ResourceSet {
    ResourceSet::new([Arc::new(
        Resource::of(listener.name.clone(), listener).depending_on(listener_clusters(listener)),
    )])
}

/// The clusters a route configuration's routes send to.
pub fn route_clusters(config: &RouteConfiguration) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for route in config.virtual_hosts.iter().flat_map(|v| &v.routes) {
        let Some(route::Action::Route(action)) = &route.action else { continue };
        match &action.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(name)) => {
                names.insert(name.clone());
            }
            Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) => {
                names.extend(weighted.clusters.iter().map(|c| c.name.clone()));
            }
            _ => {}
        }
    }
    names
}

/// The clusters a listener sends to: TCP proxies' clusters and the routes
/// of HTTP connection managers with inline route configurations (routes
/// by RDS are resources of their own, with their own dependencies).
pub fn listener_clusters(listener: &Listener) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chains = listener.filter_chains.iter().chain(listener.default_filter_chain.as_ref());
    for filter in chains.flat_map(|c| &c.filters) {
        let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
            &filter.config_type
        else {
            continue;
        };
        if any.type_url == TcpProxy::type_url() {
            if let Ok(proxy) = TcpProxy::decode(any.value.as_slice())
                && let Some(tcp_proxy::ClusterSpecifier::Cluster(name)) = proxy.cluster_specifier
            {
                names.insert(name);
            }
        } else if any.type_url == HttpConnectionManager::type_url()
            && let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
            && let Some(http_connection_manager::RouteSpecifier::RouteConfig(config)) = &hcm.route_specifier
        {
            names.extend(route_clusters(config));
        }
    }
    names
}
