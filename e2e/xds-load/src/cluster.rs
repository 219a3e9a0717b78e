//! What the benchmark puts in the cluster, and the changes it makes, with
//! the API server: Services with EndpointSlices (addresses from a fake
//! range, never routed), pods that never run (no scheduler takes them and
//! no node matches them) but exist with a uid and a ServiceAccount, a
//! token per pod from the TokenRequest API, and one DestinationRule and
//! VirtualService whose weights the benchmark switches.
//!
//! The Services carry `service.kubernetes.io/service-proxy-name`, so the
//! local node's kube-proxy leaves them (and their endpoint churn) alone;
//! the control plane under test does not read that label.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Resource};
use serde_json::json;
use tokio::task::JoinSet;

/// Who made the objects.
const MANAGER: &str = "xds-load";
/// The port every Service has, named `http`.
pub const PORT: i32 = 9080;
/// The VirtualService's two weights, switched by each change.
pub const WEIGHTS: (u32, u32) = (80, 20);

/// The names of what the benchmark creates in one namespace.
#[derive(Clone, Debug)]
pub struct Layout {
    pub namespace: String,
    pub services: usize,
    pub proxies: usize,
    pub accounts: usize,
    pub endpoints: usize,
}

impl Layout {
    pub fn service(&self, i: usize) -> String {
        format!("svc-{i:04}")
    }

    pub fn host(&self, i: usize) -> String {
        format!("{}.{}.svc.cluster.local", self.service(i), self.namespace)
    }

    pub fn pod(&self, i: usize) -> String {
        format!("proxy-{i:04}")
    }

    pub fn account(&self, i: usize) -> String {
        format!("bench-{}", i % self.accounts.max(1))
    }

    /// The `version` label of pod `i` (the DestinationRule's subsets).
    pub fn version(&self, i: usize) -> &'static str {
        if i.is_multiple_of(2) { "v1" } else { "v2" }
    }

    /// The address proxy `i` says it has. The pods never get an IP, so
    /// the control plane checks none; this one is a fake.
    pub fn pod_ip(&self, i: usize) -> String {
        format!("10.199.{}.{}", (i / 254) % 256, i % 254 + 1)
    }

    /// Istio's node id for pod `i`.
    pub fn node_id(&self, i: usize) -> String {
        let ip = self.pod_ip(i);
        format!("sidecar~{ip}~{}.{ns}~{ns}.svc.cluster.local", self.pod(i), ns = self.namespace)
    }
}

/// The `n`th fake address: 10.200.0.1, 10.200.0.2, …, never .0 or .255.
pub fn address(n: usize) -> String {
    let (block, host) = (n / 254, n % 254 + 1);
    format!("10.{}.{}.{}", 200 + (block / 256) % 50, block % 256, host)
}

/// Runs `f` over `items`, at most `limit` at a time; the first error wins.
pub async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> anyhow::Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = anyhow::Result<R>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (n, item) in items.into_iter().enumerate() {
        if set.len() >= limit.max(1)
            && let Some(done) = set.join_next().await
        {
            out.push(done.context("a task panicked")??);
        }
        let fut = f(item);
        set.spawn(async move { fut.await.map(|r| (n, r)) });
    }
    while let Some(done) = set.join_next().await {
        out.push(done.context("a task panicked")??);
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

fn exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Creates `obj` unless it exists; false when it did.
async fn create<K>(api: &Api<K>, obj: &K) -> anyhow::Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(e) if exists(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {} {:?}", K::kind(&()), obj.meta().name)),
    }
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(value)?)
}

fn slice(layout: &Layout, i: usize, addresses: &VecDeque<String>) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(layout, i),
            "namespace": layout.namespace,
            "labels": {
                "kubernetes.io/service-name": layout.service(i),
                "endpointslice.kubernetes.io/managed-by": MANAGER,
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
        "endpoints": endpoints(addresses),
    })
}

fn slice_name(layout: &Layout, i: usize) -> String {
    format!("{}-{MANAGER}", layout.service(i))
}

fn endpoints(addresses: &VecDeque<String>) -> serde_json::Value {
    addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect()
}

/// The endpoint addresses of every Service, as the benchmark last wrote
/// them, and the next fresh address.
pub struct Endpoints {
    pub per_service: Vec<VecDeque<String>>,
    pub next: usize,
}

impl Endpoints {
    pub fn initial(layout: &Layout) -> Self {
        let per = layout.endpoints;
        let per_service =
            (0..layout.services).map(|s| (0..per).map(|e| address(s * per + e)).collect()).collect();
        Self { per_service, next: layout.services * per }
    }

    /// Replaces service `s`'s oldest address with a fresh one; returns it
    /// and the new list.
    pub fn replace_one(&mut self, s: usize) -> (String, VecDeque<String>) {
        let fresh = address(self.next);
        self.next += 1;
        let list = &mut self.per_service[s];
        list.pop_front();
        list.push_back(fresh.clone());
        (fresh, list.clone())
    }
}

/// Creates everything the proxies need; returns each pod's uid, in order.
/// What a previous run left (the side-by-side run measures a second
/// control plane on the same objects) is reused, and the endpoints it
/// churned are set back to their initial addresses.
pub async fn setup(
    client: &Client,
    layout: &Arc<Layout>,
    endpoints: &Endpoints,
) -> anyhow::Result<Vec<String>> {
    let ns = &layout.namespace;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(
        &namespaces,
        &from_json(json!({"metadata": {"name": ns, "labels": {"app.kubernetes.io/managed-by": MANAGER}}}))?,
    )
    .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    for a in 0..layout.accounts.max(1) {
        create(&accounts, &from_json(json!({"metadata": {"name": layout.account(a)}}))?).await?;
    }
    let concurrency = 32;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let work: Vec<(usize, serde_json::Value, serde_json::Value)> = (0..layout.services)
        .map(|i| {
            let service = json!({
                "metadata": {
                    "name": layout.service(i),
                    "labels": {"service.kubernetes.io/service-proxy-name": MANAGER, "app": layout.service(i)},
                },
                "spec": {"ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]},
            });
            (i, service, slice(layout, i, &endpoints.per_service[i]))
        })
        .collect();
    bounded(work, concurrency, |(i, service, slice)| {
        let (services, slices) = (services.clone(), slices.clone());
        let initial = endpoints.per_service[i].clone();
        let name = slice_name(layout, i);
        async move {
            create(&services, &from_json(service)?).await?;
            if !create(&slices, &from_json(slice)?).await? {
                patch_endpoints(&slices, &name, &initial).await?;
            }
            Ok(())
        }
    })
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let work: Vec<usize> = (0..layout.proxies).collect();
    let layout2 = layout.clone();
    bounded(work, concurrency, move |i| {
        let pods = pods.clone();
        let layout = layout2.clone();
        async move {
            let name = layout.pod(i);
            let pod = json!({
                "metadata": {
                    "name": name,
                    "labels": {
                        "app": layout.service(i % layout.services.max(1)),
                        "version": layout.version(i),
                    },
                },
                "spec": {
                    "serviceAccountName": layout.account(i),
                    "automountServiceAccountToken": false,
                    // No scheduler has this name and no node this label:
                    // the pod exists, with its uid, and never runs.
                    "schedulerName": "xds-load-never",
                    "nodeSelector": {"xds-load/never": "true"},
                    "containers": [{"name": "app", "image": "xds-load/none"}],
                },
            });
            match pods.create(&PostParams::default(), &from_json(pod)?).await {
                Ok(pod) => Ok(pod.metadata.uid.unwrap_or_default()),
                Err(e) if exists(&e) => {
                    let pod = pods.get(&name).await.with_context(|| format!("reading pod {name}"))?;
                    Ok(pod.metadata.uid.unwrap_or_default())
                }
                Err(e) => Err(e).with_context(|| format!("creating pod {name}")),
            }
        }
    })
    .await
}

/// The Istio objects whose change is measured: a DestinationRule with
/// subsets v1 and v2 of service 0, and a VirtualService splitting its
/// traffic [`WEIGHTS`].
pub async fn setup_routing(client: &Client, layout: &Layout) -> anyhow::Result<()> {
    setup_routing_of(client, layout, 0).await
}

/// The same objects for service `s`.
pub async fn setup_routing_of(client: &Client, layout: &Layout, s: usize) -> anyhow::Result<()> {
    let host = layout.service(s);
    let dr = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": host},
        "spec": {"host": host, "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
        ]},
    });
    let vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": host},
        "spec": {"hosts": [host], "http": [route(&host, WEIGHTS)]},
    });
    for (kind, obj) in [("DestinationRule", dr), ("VirtualService", vs)] {
        let api = istio(client, &layout.namespace, kind);
        let obj: DynamicObject = from_json(obj)?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            // Back to the initial weights, which the first change switches.
            Err(e) if exists(&e) && kind == "VirtualService" => {
                set_weights_of(client, layout, s, WEIGHTS).await?;
            }
            Err(e) if exists(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating {kind} {host} (are the CRDs installed?)"));
            }
        }
    }
    Ok(())
}

fn route(host: &str, (v1, v2): (u32, u32)) -> serde_json::Value {
    json!({"route": [
        {"destination": {"host": host, "subset": "v1"}, "weight": v1},
        {"destination": {"host": host, "subset": "v2"}, "weight": v2},
    ]})
}

fn istio(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

/// Sets the VirtualService's weights to `weights`; returns when the call
/// started and when it returned.
pub async fn set_weights(
    client: &Client,
    layout: &Layout,
    weights: (u32, u32),
) -> anyhow::Result<(Instant, Instant)> {
    set_weights_of(client, layout, 0, weights).await
}

/// Sets the weights of service `s`'s VirtualService.
pub async fn set_weights_of(
    client: &Client,
    layout: &Layout,
    s: usize,
    weights: (u32, u32),
) -> anyhow::Result<(Instant, Instant)> {
    let host = layout.service(s);
    let api = istio(client, &layout.namespace, "VirtualService");
    let patch = json!({"spec": {"http": [route(&host, weights)]}});
    let start = Instant::now();
    api.patch(&host, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching VirtualService {host}"))?;
    Ok((start, Instant::now()))
}

/// Sets the DestinationRule's connection limit (every cluster of the
/// Service, each subset's too).
pub async fn set_max_connections(client: &Client, layout: &Layout, limit: u64) -> anyhow::Result<()> {
    let host = layout.service(0);
    let api = istio(client, &layout.namespace, "DestinationRule");
    let patch = json!({"spec": {"trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": limit}}}}});
    api.patch(&host, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching DestinationRule {host}"))?;
    Ok(())
}

/// Writes service `s`'s endpoint list.
pub async fn set_endpoints(
    client: &Client,
    layout: &Layout,
    s: usize,
    addresses: &VecDeque<String>,
) -> anyhow::Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &layout.namespace);
    patch_endpoints(&api, &slice_name(layout, s), addresses).await
}

async fn patch_endpoints(
    api: &Api<EndpointSlice>,
    name: &str,
    addresses: &VecDeque<String>,
) -> anyhow::Result<()> {
    let patch = json!({"endpoints": endpoints(addresses)});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching EndpointSlice {name}"))?;
    Ok(())
}

/// A token for each pod: for `audience` (the control plane's), bound to
/// the pod, one hour.
pub async fn tokens(
    client: &Client,
    layout: &Arc<Layout>,
    uids: &[String],
    audience: &str,
) -> anyhow::Result<Vec<String>> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &layout.namespace);
    let work: Vec<(usize, String)> = uids.iter().cloned().enumerate().collect();
    let layout = layout.clone();
    let audience = audience.to_string();
    bounded(work, 32, move |(i, uid)| {
        let accounts = accounts.clone();
        let layout = layout.clone();
        let audience = audience.clone();
        async move {
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![audience],
                    expiration_seconds: Some(3600),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(layout.pod(i)),
                        uid: Some(uid),
                    }),
                },
                ..Default::default()
            };
            let answer = accounts
                .create_token_request(&layout.account(i), &PostParams::default(), &request)
                .await
                .with_context(|| format!("requesting a token for pod {}", layout.pod(i)))?;
            answer.status.map(|s| s.token).context("the TokenRequest came back without a token")
        }
    })
    .await
}

/// The control plane's root certificate, as it publishes it in every
/// namespace (ConfigMap `config_map`); waits up to `within` for it.
pub async fn root_cert(
    client: &Client,
    namespace: &str,
    config_map: &str,
    within: Duration,
) -> anyhow::Result<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + within;
    loop {
        if let Some(cm) = api.get_opt(config_map).await?
            && let Some(pem) = cm.data.unwrap_or_default().remove("root-cert.pem")
        {
            return Ok(pem);
        }
        if Instant::now() >= deadline {
            bail!(
                "ConfigMap {namespace}/{config_map} has no root-cert.pem after {within:?}: is the control plane running?"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Counts of what the namespace holds, for the report.
pub async fn counts(client: &Client, namespace: &str) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    let lp = kube::api::ListParams::default();
    let mut out = BTreeMap::new();
    out.insert(
        "Service",
        Api::<Service>::namespaced(client.clone(), namespace).list_metadata(&lp).await?.items.len(),
    );
    out.insert(
        "EndpointSlice",
        Api::<EndpointSlice>::namespaced(client.clone(), namespace).list_metadata(&lp).await?.items.len(),
    );
    out.insert(
        "Pod",
        Api::<Pod>::namespaced(client.clone(), namespace).list_metadata(&lp).await?.items.len(),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_addresses_are_distinct_and_valid() {
        let all: std::collections::BTreeSet<String> = (0..100_000).map(address).collect();
        assert_eq!(all.len(), 100_000);
        assert_eq!(address(0), "10.200.0.1");
        assert_eq!(address(253), "10.200.0.254");
        assert_eq!(address(254), "10.200.1.1");
        for a in &all {
            assert!(a.parse::<std::net::Ipv4Addr>().is_ok(), "{a}");
        }
    }

    #[test]
    fn churn_replaces_the_oldest_address() {
        let layout = Layout { namespace: "b".into(), services: 2, proxies: 1, accounts: 1, endpoints: 3 };
        let mut e = Endpoints::initial(&layout);
        assert_eq!(e.per_service[1], ["10.200.0.4", "10.200.0.5", "10.200.0.6"]);
        let (fresh, list) = e.replace_one(1);
        assert_eq!(fresh, "10.200.0.7");
        assert_eq!(list, ["10.200.0.5", "10.200.0.6", "10.200.0.7"]);
    }

    #[test]
    fn node_ids_follow_istios_format() {
        let layout = Layout { namespace: "bench".into(), services: 1, proxies: 1, accounts: 3, endpoints: 1 };
        assert_eq!(layout.node_id(7), "sidecar~10.199.0.8~proxy-0007.bench~bench.svc.cluster.local");
        assert_eq!(layout.account(7), "bench-1");
    }
}
