//! What the fuzz targets (`fuzz/fuzz_targets/`) run, one function each, so
//! that the same code runs every input of the corpora and every crash
//! found as a unit test (`cargo test fuzzing`). Built with the feature
//! `fuzzing` (the fuzz crate turns it on) and in tests.
//!
//! Each function takes bytes as they arrive from outside: a body the API
//! server posts, an object a watch delivers, a set of objects users apply,
//! the messages a proxy sends. Malformed input must end in an error the
//! caller handles, never a panic; what the targets assert beyond "does not
//! panic" is said on each.

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use prost::Message;
use serde_json::Value;

use crate::index::{ClusterSnapshot, Index};
use crate::model::mesh::MeshView;
use crate::validate::{self, Context, Severity};
use crate::xds::delta::DeltaStream;
use crate::xds::grpc::{Frames, Requests};
use crate::xds::protocol::Machine;
use crate::xds::proxy::ProxyKind;
use crate::xds::sotw::SotwStream;
use crate::xds::wire::Wire;
use crate::xds::{Generator, MeshGenerator, Proxy, ProxyId, Snapshot, TokenIdentity};

/// Kinds the API server validates itself: the webhook does not see them.
const CORE_KINDS: [&str; 5] = ["Namespace", "Service", "EndpointSlice", "Pod", "Secret"];

/// The pod whose sidecar the translation and xDS targets configure.
const PROXY_POD: &str = "productpage-v1-0";

/// Bookinfo as the index holds it (the unit tests' fixture, from Istio's
/// samples), built once.
fn bookinfo() -> &'static ClusterSnapshot {
    static BOOKINFO: OnceLock<ClusterSnapshot> = OnceLock::new();
    BOOKINFO.get_or_init(|| crate::testing::bookinfo::bookinfo().snapshot())
}

/// Validation's context for Bookinfo, built once.
fn context() -> &'static Context {
    static CONTEXT: OnceLock<Context> = OnceLock::new();
    CONTEXT.get_or_init(|| Context::of(bookinfo().state()))
}

/// The validating webhook's body: an AdmissionReview as the API server
/// posts it. Whatever is decoded gets an answer that serializes, returned.
pub fn admission_review(data: &[u8]) -> Option<Value> {
    let review = serde_json::from_slice::<AdmissionReview<DynamicObject>>(data).ok()?;
    let answer = crate::webhook::admission::review(review, context());
    Some(serde_json::to_value(&answer).expect("the answer serializes"))
}

/// One object, as a watch delivers it, of the kind its `kind` names: the
/// index converts it (or skips it, keeping what it had), and the mesh view
/// and validation's context are built from what it then holds, as they
/// would be from objects the webhook never saw.
pub fn index_object(data: &[u8]) {
    let Ok(object) = serde_json::from_slice::<Value>(data) else { return };
    let mut index = Index::new(Default::default());
    index.apply_value(object);
    let state = index.state();
    MeshView::build(state);
    Context::of(state);
}

/// Whether an Istio object passes the validating webhook (warnings allowed).
fn admitted(object: &Value) -> bool {
    let text = |field: &str| object.pointer(field).and_then(Value::as_str).unwrap_or_default();
    let spec = object.get("spec").cloned().unwrap_or_else(|| serde_json::json!({}));
    let findings = validate::validate_object(
        text("/kind"),
        text("/metadata/namespace"),
        text("/metadata/name"),
        &spec,
        context(),
    );
    findings.iter().all(|f| f.severity != Severity::Error)
}

/// A JSON array of objects applied on top of Bookinfo, Istio's kinds only
/// when the validating webhook would admit them (core kinds as they are):
/// the productpage sidecar's configuration, as the xDS server generates it.
/// None when the input is not such an array. The corpus's outputs are
/// checked by a real Envoy (`translate::tests::fuzz_corpus`).
pub fn translation(data: &[u8]) -> Option<Snapshot> {
    let Ok(Value::Array(objects)) = serde_json::from_slice::<Value>(data) else { return None };
    let mut index = Index::new(Default::default()).with_cluster(bookinfo().clone());
    for object in objects {
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
        if CORE_KINDS.contains(&kind) || admitted(&object) {
            index.apply_value(object);
        }
    }
    let generator = MeshGenerator::new("cluster.local");
    let push = generator.prepare(&index.snapshot(), &crate::index::Changes::everything());
    Some(push.generate(&sidecar()))
}

/// The productpage pod's sidecar, as its stream is authorized.
fn sidecar() -> Proxy {
    let ip = "10.244.0.13".parse().expect("an address");
    Proxy {
        id: ProxyId { kind: ProxyKind::Sidecar, ip, pod: PROXY_POD.into(), namespace: "default".into() },
        identity: TokenIdentity {
            namespace: "default".into(),
            service_account: "bookinfo-productpage".into(),
            pod_name: PROXY_POD.into(),
            pod_uid: "uid-productpage-v1".into(),
        },
    }
}

/// Two snapshots of the productpage sidecar, Bookinfo's and one with a
/// VirtualService more, between which the xDS target switches.
fn snapshots() -> &'static [Arc<Snapshot>; 2] {
    static SNAPSHOTS: OnceLock<[Arc<Snapshot>; 2]> = OnceLock::new();
    SNAPSHOTS.get_or_init(|| {
        let routed = serde_json::json!([{
            "apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
        }]);
        let plain = translation(b"[]").expect("Bookinfo's snapshot");
        let routed = translation(routed.to_string().as_bytes()).expect("a routed snapshot");
        [Arc::new(plain), Arc::new(routed)]
    })
}

/// What a proxy sends on one ADS stream, as the HTTP/2 body arrives: the
/// first byte picks the protocol (even: state of the world, odd: Delta),
/// the second how the rest is cut into DATA frames (that many bytes each),
/// and the rest is the body: gRPC-framed requests, read by our own gRPC
/// framing ([`crate::xds::grpc::Requests`]). The first request's node id is
/// parsed as the server parses it; every third request a new snapshot
/// arrives as well. Every response, framed as it is sent
/// ([`crate::xds::grpc::Frames`]), must be one gRPC message whose length is
/// right and which prost decodes as the protocol's response (what Envoy
/// does with it), with a nonce that grows. Returns how many responses
/// were sent.
pub fn xds_requests(data: &[u8]) -> u64 {
    let [protocol, chunk, body @ ..] = data else { return 0 };
    let chunk = usize::from(*chunk).max(1);
    let frames: Vec<_> = body
        .chunks(chunk)
        .map(|c| Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    if protocol % 2 == 0 {
        stream::<SotwStream, DiscoveryResponse, _>(body)
    } else {
        stream::<DeltaStream, DeltaDiscoveryResponse, _>(body)
    }
}

/// One stream of protocol `M` fed `body`; `P` is its response as the proxy
/// decodes it.
fn stream<M, P, B>(body: B) -> u64
where
    M: Machine,
    M::Request: Message + Default,
    P: Nonced,
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Display,
{
    let [plain, routed] = snapshots();
    let mut nonces = Nonces::default();
    let mut stream = M::new(plain.clone());
    let requests = Requests::<_, M::Request>::new(body);
    for (n, request) in futures::executor::block_on_stream(requests).enumerate() {
        let Ok(request) = request else { break };
        if n == 0 {
            let _ = ProxyId::parse(M::node(&request).map(|n| n.id.as_str()).unwrap_or_default());
        }
        if let Ok(step) = stream.on_request(&request) {
            step.responses.iter().for_each(|r| nonces.check::<P>(r));
        }
        if n % 3 == 2 {
            let snapshot = if n % 2 == 0 { routed } else { plain };
            stream.on_snapshot(snapshot.clone()).responses.iter().for_each(|r| nonces.check::<P>(r));
        }
    }
    stream.status();
    nonces.sent
}

/// A response's nonce, as the proxy reads it.
trait Nonced: Message + Default {
    fn nonce(&self) -> &str;
}

impl Nonced for DiscoveryResponse {
    fn nonce(&self) -> &str {
        &self.nonce
    }
}

impl Nonced for DeltaDiscoveryResponse {
    fn nonce(&self) -> &str {
        &self.nonce
    }
}

/// The nonces a stream sent: one counter, so each is above the last.
#[derive(Default)]
struct Nonces {
    last: Option<u64>,
    sent: u64,
}

impl Nonces {
    /// Frames `response` as the server sends it and reads it back as a
    /// proxy would.
    fn check<M: Nonced>(&mut self, response: &impl Wire) {
        let sent: Vec<u8> = Frames::message(response).iter().flat_map(|c| c.iter().copied()).collect();
        let [flag, a, b, c, d, message @ ..] = sent.as_slice() else {
            panic!("a response of {} bytes", sent.len())
        };
        assert_eq!(*flag, 0, "responses are not compressed");
        let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        assert_eq!(length, message.len(), "the gRPC prefix's length is the message's");
        let decoded =
            M::decode(message).unwrap_or_else(|e| panic!("the proxy cannot read the response: {e}"));
        let nonce: u64 =
            decoded.nonce().parse().unwrap_or_else(|_| panic!("nonce {:?} is a counter", decoded.nonce()));
        assert!(self.last.is_none_or(|last| nonce > last), "nonce {nonce} after {:?}", self.last);
        self.last = Some(nonce);
        self.sent += 1;
    }
}

#[cfg(test)]
mod tests {
    //! Every input of the checked-in corpora and every crash found, run
    //! through its target: a crash fixed stays fixed.

    use std::path::PathBuf;

    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut inputs = Vec::new();
        for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries {
                let path = entry.expect("a corpus entry").path();
                let data = std::fs::read(&path).expect("a corpus file");
                inputs.push((path, data));
            }
        }
        assert!(!inputs.is_empty(), "no corpus for {target} under {}", root.display());
        inputs
    }

    /// Writes the seed corpora under fuzz/corpus/ from Istio's samples
    /// and the validation cases (`cargo test --lib write_seed_corpora --
    /// --ignored`); libFuzzer grows them from there.
    #[test]
    #[ignore = "writes into the checkout"]
    fn write_seed_corpora() {
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
        use prost::Message;
        use serde_json::{Value, json};

        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let write = |target: &str, name: &str, data: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).expect("corpus dir");
            std::fs::write(dir.join(name), data).expect("corpus file");
        };
        let review = |object: &Value, operation: &str| {
            json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                    "kind": {"group": "networking.istio.io", "version": "v1alpha3", "kind": object["kind"]},
                    "resource": {"group": "networking.istio.io", "version": "v1alpha3", "resource": "x"},
                    "name": object["metadata"]["name"], "namespace": "default", "operation": operation,
                    "userInfo": {"username": "admin"}, "object": object,
                }
            })
        };

        // Istio's samples: one object each, and each file as one set.
        let samples = crate::api::samples::dir();
        for sub in ["networking", "rbac", "platform"] {
            let mut files: Vec<_> = std::fs::read_dir(samples.join(sub))
                .expect("samples")
                .map(|e| e.expect("entry").path())
                .collect();
            files.sort();
            for path in files {
                let stem = path.file_stem().expect("a name").to_string_lossy().into_owned();
                let docs = crate::testing::bookinfo::documents(&format!("{sub}/{stem}.yaml"));
                let mut set = Vec::new();
                for (n, mut doc) in docs.into_iter().enumerate() {
                    if doc["kind"] != "ClusterRbacConfig" {
                        doc["metadata"]["namespace"] = json!("default");
                    }
                    let bytes = serde_json::to_vec(&doc).expect("json");
                    write("index_object", &format!("{sub}-{stem}-{n}.json"), &bytes);
                    if sub != "platform" {
                        let reviewed = serde_json::to_vec(&review(&doc, "CREATE")).expect("json");
                        write("admission_review", &format!("{stem}-{n}.json"), &reviewed);
                        set.push(doc);
                    }
                }
                if !set.is_empty() {
                    write("translation", &format!("{stem}.json"), &serde_json::to_vec(&set).expect("json"));
                }
            }
        }

        // The validation cases: every rule's objects, good and bad.
        let text = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/validate/cases.yaml"),
        )
        .expect("cases.yaml");
        let cases: Vec<Value> = serde_yaml_ng::from_str(&text).expect("cases");
        for case in cases.iter().filter(|c| c.get("fill").is_none()) {
            let name = case["objectName"].as_str().or(case["name"].as_str()).unwrap_or("case");
            let object = json!({
                "apiVersion": "networking.istio.io/v1alpha3", "kind": case["kind"],
                "metadata": {"name": name, "namespace": "default"}, "spec": case["spec"],
            });
            let file = format!("case-{}.json", case["name"].as_str().unwrap_or("case"));
            write("admission_review", &file, &serde_json::to_vec(&review(&object, "CREATE")).expect("json"));
            if case["expect"] != "reject" {
                write("translation", &file, &serde_json::to_vec(&json!([object])).expect("json"));
            }
        }
        let delete = json!({"kind": "VirtualService", "metadata": {"name": "reviews"}});
        write(
            "admission_review",
            "delete.json",
            &serde_json::to_vec(&review(&delete, "DELETE")).expect("json"),
        );

        // A sidecar's streams: subscribe to every type, ACK each answer by
        // its nonce (the stream's counter), a NACK, a snapshot between.
        let node = Some(Node {
            id: "sidecar~10.244.0.13~productpage-v1-0.default~default.svc.cluster.local".into(),
            ..Default::default()
        });
        let types = [
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "type.googleapis.com/envoy.config.listener.v3.Listener",
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        ];
        let names = |n: usize| match n {
            2 => vec!["outbound|9080||reviews.default.svc.cluster.local".to_string()],
            3 => vec!["9080".to_string(), "reviews.default.svc.cluster.local:9080".to_string()],
            4 => vec!["default".to_string(), "ROOTCA".to_string()],
            _ => Vec::new(),
        };
        let frame = |out: &mut Vec<u8>, message: Vec<u8>| {
            out.push(0);
            out.extend(u32::try_from(message.len()).expect("a small request").to_be_bytes());
            out.extend(message);
        };
        // Protocol, then DATA frames of 7 and of 255 bytes.
        let mut sotw = vec![0u8, 7];
        let mut delta = vec![1u8, 255];
        for (n, type_url) in types.iter().enumerate() {
            let first = DiscoveryRequest {
                node: if n == 0 { node.clone() } else { None },
                type_url: type_url.to_string(),
                resource_names: names(n),
                ..Default::default()
            };
            frame(&mut sotw, first.encode_to_vec());
            let ack = DiscoveryRequest { response_nonce: (n + 1).to_string(), ..first.clone() };
            frame(&mut sotw, ack.encode_to_vec());
            let first = DeltaDiscoveryRequest {
                node: if n == 0 { node.clone() } else { None },
                type_url: type_url.to_string(),
                resource_names_subscribe: names(n),
                ..Default::default()
            };
            frame(&mut delta, first.encode_to_vec());
            let ack = DeltaDiscoveryRequest { response_nonce: (n + 1).to_string(), ..first.clone() };
            frame(&mut delta, ack.encode_to_vec());
        }
        let nack = DiscoveryRequest {
            type_url: types[0].into(),
            response_nonce: "6".into(),
            error_detail: Some(Default::default()),
            ..Default::default()
        };
        frame(&mut sotw, nack.encode_to_vec());
        write("xds_requests", "sotw.bin", &sotw);
        write("xds_requests", "delta.bin", &delta);
    }

    #[test]
    fn admission_review_corpus() {
        for (path, data) in inputs("admission_review") {
            let Some(answer) = super::admission_review(&data) else { continue };
            // A review with a request is answered for that request.
            if let Some(uid) = serde_json::from_slice::<serde_json::Value>(&data)
                .ok()
                .and_then(|r| r.pointer("/request/uid").and_then(|u| u.as_str()).map(str::to_string))
            {
                assert_eq!(
                    answer.pointer("/response/uid").and_then(|u| u.as_str()),
                    Some(uid.as_str()),
                    "{path:?}"
                );
            }
        }
    }

    #[test]
    fn index_object_corpus() {
        inputs("index_object").iter().for_each(|(_, data)| super::index_object(data));
    }

    #[test]
    fn translation_corpus() {
        for (path, data) in inputs("translation") {
            let Some(snapshot) = super::translation(&data) else { continue };
            let listeners = snapshot.resources(crate::xds::ResourceType::Listener).len();
            assert!(listeners >= 2, "{path:?}: the sidecar got {listeners} listeners");
        }
    }

    #[test]
    fn xds_requests_corpus() {
        let mut sent = 0;
        for (_, data) in inputs("xds_requests") {
            sent += super::xds_requests(&data);
        }
        // The seeds subscribe to all five types on both protocols.
        assert!(sent >= 10, "the seeds got {sent} responses");
    }
}
