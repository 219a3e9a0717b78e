//! Typed builders for the objects unit tests feed the index, so a test
//! reads like the domain: `pod("reviews-v1").labels(&[("app", "reviews")])
//! .ip("10.244.0.7")`, `vs("reviews").route_to("v2")`,
//! `dr("reviews").subset("v1", &[("version", "v1")])`. Each builds the
//! object the API server would deliver to a watch; the namespace is
//! `default` unless set.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use serde_json::{Value, json};

const DEFAULT_NAMESPACE: &str = "default";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A pod, ready, with a uid derived from its name.
pub fn pod(name: &str) -> PodBuilder {
    PodBuilder {
        name: name.into(),
        uid: format!("uid-{name}"),
        labels: BTreeMap::new(),
        ip: None,
        service_account: "default".into(),
    }
}

pub struct PodBuilder {
    name: String,
    uid: String,
    labels: BTreeMap<String, String>,
    ip: Option<String>,
    service_account: String,
}

impl PodBuilder {
    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = uid.into();
        self
    }

    pub fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.labels.extend(labels(pairs));
        self
    }

    pub fn ip(mut self, ip: &str) -> Self {
        self.ip = Some(ip.into());
        self
    }

    pub fn service_account(mut self, name: &str) -> Self {
        self.service_account = name.into();
        self
    }

    pub fn build(self) -> core::Pod {
        core::Pod {
            metadata: ObjectMeta {
                name: Some(self.name),
                namespace: Some(DEFAULT_NAMESPACE.into()),
                uid: Some(self.uid),
                labels: (!self.labels.is_empty()).then_some(self.labels),
                ..Default::default()
            },
            spec: Some(core::PodSpec {
                service_account_name: Some(self.service_account),
                ..Default::default()
            }),
            status: Some(core::PodStatus {
                pod_ip: self.ip,
                conditions: Some(vec![core::PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }
}

/// A Service selecting pods labelled `app: <name>`.
pub fn service(name: &str) -> ServiceBuilder {
    ServiceBuilder {
        name: name.into(),
        namespace: DEFAULT_NAMESPACE.into(),
        cluster_ip: None,
        ports: Vec::new(),
    }
}

pub struct ServiceBuilder {
    name: String,
    namespace: String,
    cluster_ip: Option<String>,
    ports: Vec<core::ServicePort>,
}

impl ServiceBuilder {
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.cluster_ip = Some(ip.into());
        self
    }

    /// A port; Istio reads its protocol from the name (`http`, `tcp-mysql`).
    pub fn port(mut self, name: &str, number: i32) -> Self {
        self.ports.push(core::ServicePort { name: Some(name.into()), port: number, ..Default::default() });
        self
    }

    pub fn build(self) -> core::Service {
        core::Service {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace),
                ..Default::default()
            },
            spec: Some(core::ServiceSpec {
                cluster_ip: self.cluster_ip,
                selector: Some([("app".to_string(), self.name)].into()),
                ports: Some(self.ports),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A VirtualService for the host of its name (`reviews`), whose rules
/// route to subsets of that host.
pub fn vs(host: &str) -> VirtualServiceBuilder {
    VirtualServiceBuilder { host: host.into(), http: Vec::new() }
}

pub struct VirtualServiceBuilder {
    host: String,
    http: Vec<Value>,
}

impl VirtualServiceBuilder {
    /// A rule sending everything to one subset.
    pub fn route_to(mut self, subset: &str) -> Self {
        self.http.push(json!({"route": [{"destination": {"host": self.host, "subset": subset}}]}));
        self
    }

    /// A rule for requests whose `header` is exactly `value`, to one subset.
    pub fn route_header_to(mut self, header: &str, value: &str, subset: &str) -> Self {
        self.http.push(json!({"match": [{"headers": {header: {"exact": value}}}],
                              "route": [{"destination": {"host": self.host, "subset": subset}}]}));
        self
    }

    pub fn build(self) -> DynamicObject {
        let spec = json!({"hosts": [self.host], "http": self.http});
        config::<crate::api::VirtualService>(DEFAULT_NAMESPACE, &self.host, spec)
    }
}

/// A DestinationRule for `host`, named after it.
pub fn dr(host: &str) -> DestinationRuleBuilder {
    DestinationRuleBuilder { name: host.into(), spec: json!({ "host": host }) }
}

pub struct DestinationRuleBuilder {
    name: String,
    spec: Value,
}

impl DestinationRuleBuilder {
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// A subset selecting pods with `pairs`.
    pub fn subset(mut self, name: &str, pairs: &[(&str, &str)]) -> Self {
        let subset = json!({"name": name, "labels": labels(pairs)});
        match self.spec["subsets"].as_array_mut() {
            Some(subsets) => subsets.push(subset),
            None => self.spec["subsets"] = json!([subset]),
        }
        self
    }

    /// Subsets v1, v2, v3 by the `version` label, as Bookinfo's reviews has.
    pub fn versions(self) -> Self {
        self.subset("v1", &[("version", "v1")])
            .subset("v2", &[("version", "v2")])
            .subset("v3", &[("version", "v3")])
    }

    /// The rule's simple load balancer (ROUND_ROBIN, RANDOM, ...).
    pub fn load_balancer(mut self, simple: &str) -> Self {
        self.spec["trafficPolicy"]["loadBalancer"] = json!({ "simple": simple });
        self
    }

    /// Any field of the spec, as Istio's YAML writes it.
    pub fn with(mut self, field: &str, value: Value) -> Self {
        self.spec[field] = value;
        self
    }

    pub fn build(self) -> DynamicObject {
        config::<crate::api::DestinationRule>(DEFAULT_NAMESPACE, &self.name, self.spec)
    }
}

/// An object as a watch delivers it, from its whole YAML document
/// (apiVersion, kind, metadata, spec).
pub fn from_yaml(yaml: &str) -> DynamicObject {
    serde_yaml_ng::from_str(yaml).expect("an object in YAML")
}

/// An Istio object of kind `K` as a watch delivers it.
pub fn config<K: kube::Resource<DynamicType = ()>>(
    namespace: &str,
    name: &str,
    spec: Value,
) -> DynamicObject {
    let mut obj = DynamicObject::new(name, &ApiResource::erase::<K>(&())).within(namespace);
    obj.data = json!({ "spec": spec });
    obj
}

/// An EndpointSlice of `service` with one port `http`, as the endpoint
/// controller writes it: each endpoint an address, ready, and the pod it is
/// (`None`: an address no pod has).
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    port: i32,
    endpoints: &[(&str, Option<&str>)],
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    use k8s_openapi::api::discovery::v1 as discovery;
    discovery::EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(&[("kubernetes.io/service-name", service)])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![discovery::EndpointPort {
            name: Some("http".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: endpoints
            .iter()
            .map(|(ip, pod)| discovery::Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                target_ref: pod.map(|pod| core::ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(pod.into()),
                    namespace: Some(namespace.into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}

/// A Secret holding `data` (key, value), as the API server returns it.
pub fn secret(namespace: &str, name: &str, data: &[(&str, &str)]) -> core::Secret {
    core::Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_make_what_the_api_server_delivers() {
        let p = pod("reviews-v1-0").labels(&[("app", "reviews")]).ip("10.244.0.7").build();
        assert_eq!(
            p.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str),
            Some("reviews")
        );
        assert_eq!(p.status.as_ref().and_then(|s| s.pod_ip.as_deref()), Some("10.244.0.7"));

        let v = vs("reviews").route_header_to("end-user", "jason", "v2").route_to("v1").build();
        assert_eq!(v.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(v.data["spec"]["hosts"], json!(["reviews"]));
        assert_eq!(v.data["spec"]["http"][0]["match"][0]["headers"]["end-user"]["exact"], "jason");
        assert_eq!(v.data["spec"]["http"][1]["route"][0]["destination"]["subset"], "v1");

        let d = dr("reviews").versions().load_balancer("RANDOM").build();
        assert_eq!(d.data["spec"]["subsets"][2], json!({"name": "v3", "labels": {"version": "v3"}}));
        assert_eq!(d.data["spec"]["trafficPolicy"]["loadBalancer"]["simple"], "RANDOM");
    }
}
