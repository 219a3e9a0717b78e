//! The resource types the mesh serves over ADS, as one enum: their type
//! URLs on the wire, how each is subscribed to, the order they are pushed
//! in, and their short names in metrics and debug output.
//!
//! A request's type URL is read into a [`ResourceType`] once, where the
//! stream state machines take the request; a type URL the mesh does not
//! serve is handled there (see [`super::sotw`] and [`super::delta`]),
//! so nothing past that point deals in strings.

use std::fmt;

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::{Message, Name};

/// A kind of xDS resource the mesh serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl ResourceType {
    /// Every type, in push order (see [`ResourceType::push_rank`]).
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Secret,
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The type URL of the resource's proto, as requests and responses
    /// carry it.
    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    /// The type a type URL names; `None` for a type the mesh does not serve.
    pub fn from_type_url(type_url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == type_url)
    }

    /// Listeners and clusters are always sent whole: a proxy gets all of
    /// its listeners and clusters, whatever names it asks for.
    pub fn is_wildcard_only(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }

    /// Whether resources of this type may name the clusters they send
    /// traffic to, and so wait for them (make-before-break).
    pub fn names_clusters(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Route)
    }

    /// Where a type goes when several are pushed at once: what is referred
    /// to before what refers to it (secrets, clusters, endpoints, then
    /// listeners and routes), so Envoy never waits on a missing piece.
    pub fn push_rank(self) -> usize {
        match self {
            ResourceType::Secret => 0,
            ResourceType::Cluster => 1,
            ResourceType::Endpoint => 2,
            ResourceType::Listener => 3,
            ResourceType::Route => 4,
        }
    }

    /// A short name, for metric labels and debug output.
    pub fn label(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::Secret => "sds",
        }
    }
}

/// A proto the mesh serves, with its resource type: what lets a snapshot
/// be built from messages without naming their type twice.
pub trait Served: Message + Name {
    const TYPE: ResourceType;
}

impl Served for Cluster {
    const TYPE: ResourceType = ResourceType::Cluster;
}
impl Served for ClusterLoadAssignment {
    const TYPE: ResourceType = ResourceType::Endpoint;
}
impl Served for Listener {
    const TYPE: ResourceType = ResourceType::Listener;
}
impl Served for RouteConfiguration {
    const TYPE: ResourceType = ResourceType::Route;
}
impl Served for Secret {
    const TYPE: ResourceType = ResourceType::Secret;
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of<M: Served>() -> (String, &'static str) {
        (M::type_url(), M::TYPE.type_url())
    }

    #[test]
    fn type_urls_are_the_protos_own() {
        for (proto, served) in [
            url_of::<Listener>(),
            url_of::<Cluster>(),
            url_of::<ClusterLoadAssignment>(),
            url_of::<RouteConfiguration>(),
            url_of::<Secret>(),
        ] {
            assert_eq!(proto, served);
        }
        let served: std::collections::BTreeSet<_> = ResourceType::ALL.iter().map(|t| t.type_url()).collect();
        assert_eq!(served.len(), ResourceType::ALL.len(), "one proto per type");
    }

    #[test]
    fn every_type_reads_back_from_its_url_and_nothing_else_does() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(ResourceType::from_type_url(""), None);
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/envoy.service.runtime.v3.Runtime"), None);
        // Type URLs are exact: no prefix or case folding.
        assert_eq!(ResourceType::from_type_url("envoy.config.cluster.v3.Cluster"), None);
    }

    #[test]
    fn push_order_puts_what_is_named_before_what_names_it() {
        let mut by_rank = ResourceType::ALL;
        by_rank.sort_by_key(|t| t.push_rank());
        assert_eq!(by_rank, ResourceType::ALL);
        assert!(ResourceType::Cluster.push_rank() < ResourceType::Route.push_rank());
        assert!(ResourceType::Endpoint.push_rank() < ResourceType::Listener.push_rank());
    }

    #[test]
    fn labels_are_distinct() {
        let labels: std::collections::BTreeSet<_> = ResourceType::ALL.iter().map(|t| t.label()).collect();
        assert_eq!(labels.len(), ResourceType::ALL.len());
    }
}
