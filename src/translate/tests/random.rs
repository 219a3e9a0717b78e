//! Random VirtualServices and DestinationRules ([`random_config`]), each
//! set validated as the webhook would (what it refuses is dropped and
//! counted), translated for the productpage sidecar of a world with HTTP,
//! TCP and TLS Services, and loaded by a real Envoy 1.40 (`--mode
//! validate` on everything static, as [`super::envoy`] does): Envoy must
//! accept every case. A refused case shrinks to a small one and the test
//! prints its YAML and Envoy's reason.
//!
//! `MESH_RANDOM_CASES` sets the number of cases (each up to 12 of each
//! kind; default 150, what `make test` runs), `MESH_RANDOM_SEED` replays a
//! run (its seed is printed). The long run is in docs/traffic.md.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::process::Command;

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use prost::Message;
use serde_json::{Value, json};

use super::envoy::static_bootstrap;
use super::{NAMESPACE, bookinfo, endpoint_slice, mesh_view, permissive, productpage};
use crate::index::{DestinationRules, EndpointSlices, Index, Pods, Services, VirtualServices};
use crate::testing::objects::{config, pod, service};
use crate::testing::random_config::{self, field_paths};
use crate::testing::{TempDir, envoy_binary};
use crate::translate::sidecar::{inbound, outbound};
use crate::translate::tls::{TLS_MODE_ISTIO, TLS_MODE_LABEL};
use crate::validate::{Context, has_errors, inventory::Inventory, validate_object};

/// Bookinfo, plus Services the random routes can reach over TCP and TLS.
fn world() -> Index {
    let mut index = bookinfo();
    let extra = [
        ("tcp-echo", "10.96.0.40", vec![("tcp", 9000), ("tcp-two", 9001)], vec!["v1", "v2"]),
        ("secure", "10.96.0.41", vec![("https", 443), ("tls", 8443)], vec!["v1"]),
        ("mongodb", "10.96.0.42", vec![("mongo", 27017)], vec!["v1"]),
    ];
    let mut ip = 40;
    for (name, cluster_ip, ports, versions) in extra {
        let mut builder = service(name).cluster_ip(cluster_ip);
        for (port, number) in ports {
            builder = builder.port(port, number);
        }
        let svc = builder.build();
        let pods: Vec<_> = versions
            .iter()
            .map(|version| {
                ip += 1;
                pod(&format!("{name}-{version}-0"))
                    .labels(&[("app", name), ("version", version), (TLS_MODE_LABEL, TLS_MODE_ISTIO)])
                    .ip(&format!("10.244.0.{ip}"))
                    .build()
            })
            .collect();
        for p in &pods {
            index.apply::<Pods>(p);
        }
        index.apply::<Services>(&svc);
        index.apply::<EndpointSlices>(&endpoint_slice(&svc, &pods));
    }
    index
}

/// The certificate files a DestinationRule's `tls` names, as a user
/// mounts them into the sidecar: a root, and a chain and key it signed.
fn write_certificate_files() {
    let now = time::OffsetDateTime::now_utc();
    let root = crate::ca::Root::generate("cluster.local", now).expect("root");
    let authority = crate::ca::Authority::from_root(&root, now).expect("authority");
    let id = crate::ca::SpiffeId::new("cluster.local", "default", "productpage").expect("id");
    let leaf = authority.issue_workload(&id, time::Duration::DAY, now).expect("leaf");
    std::fs::create_dir_all(random_config::CERT_DIR).expect("certificate folder");
    for (path, pem) in [
        (random_config::CA_CERTIFICATES, authority.trust_bundle_pem()),
        (random_config::CLIENT_CERTIFICATE, leaf.cert_chain_pem.as_str()),
        (random_config::PRIVATE_KEY, leaf.key_pem.as_str()),
    ] {
        // Written aside and renamed, so a test running beside this one
        // never reads half a file.
        let part = format!("{path}.{}", std::process::id());
        std::fs::write(&part, pem).expect("write");
        std::fs::rename(&part, path).expect("rename");
    }
}

#[derive(Default)]
struct Tally {
    cases: usize,
    accepted: [usize; 2],
    refused: [usize; 2],
    /// Field paths of the accepted objects, per kind.
    seen: [BTreeSet<String>; 2],
    /// Why validation refused objects: field (indexes dropped) and message.
    reasons: std::collections::BTreeMap<String, usize>,
}

const KINDS: [&str; 2] = ["VirtualService", "DestinationRule"];

fn envoy_refusal(dir: &TempDir, index: &Index) -> Option<String> {
    let view = mesh_view(index);
    let proxy = productpage(index);
    let out = outbound(&view, &view.scope(&proxy));
    let inb = inbound(&view, &proxy, permissive);
    let path = dir.write("random.pb", static_bootstrap(dir, &out, &inb).encode_to_vec());
    let result = Command::new(envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    (!result.status.success()).then(|| {
        format!("{}{}", String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr))
    })
}

/// The objects as YAML, for a failure message.
fn yaml(objects: &[(usize, String, Value)]) -> String {
    objects
        .iter()
        .map(|(kind, name, spec)| {
            let doc = json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": KINDS[*kind],
                             "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec});
            serde_yaml_ng::to_string(&doc).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A runner for `cases` cases from `seed`.
fn runner(cases: u32, seed: u64) -> TestRunner {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let settings = Config { cases, failure_persistence: None, max_shrink_iters: 300, ..Config::default() };
    TestRunner::new_with_rng(settings, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes))
}

/// The `specs` of one kind that validation accepts, as the webhook
/// would judge them; counts both, and what was refused and why.
fn valid(kind: usize, specs: Vec<Value>, ctx: &Context, tally: &mut Tally) -> Vec<(usize, String, Value)> {
    let schema = random_config::spec_schema(KINDS[kind]);
    let mut accepted = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let name = format!("random-{}-{i}", if kind == 0 { "vs" } else { "dr" });
        let findings = validate_object(KINDS[kind], NAMESPACE, &name, &spec, ctx);
        if has_errors(&findings) {
            tally.refused[kind] += 1;
            for f in findings.iter().filter(|f| f.is_error()) {
                let field: String = f.field.chars().filter(|c| !c.is_ascii_digit()).collect();
                let message: String = f.message.chars().take(90).collect();
                *tally.reasons.entry(format!("{field}: {message}")).or_default() += 1;
            }
            continue;
        }
        tally.accepted[kind] += 1;
        field_paths(&schema, &spec, "spec", &mut tally.seen[kind]);
        accepted.push((kind, name, spec));
    }
    accepted
}

fn apply(index: &mut Index, objects: &[(usize, String, Value)]) {
    for (kind, name, spec) in objects {
        if *kind == 0 {
            index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(
                NAMESPACE,
                name,
                spec.clone(),
            ));
        } else {
            index.apply::<DestinationRules>(&config::<crate::api::DestinationRule>(
                NAMESPACE,
                name,
                spec.clone(),
            ));
        }
    }
}

/// The generator stays honest: most of what it draws is valid, and the
/// valid objects set every field the kinds declare (but those validation
/// refuses outright). A fixed seed: this is a property of the generator,
/// checked the same way on every run.
#[test]
fn the_generator_draws_every_field_and_mostly_valid_objects() {
    let index = world();
    let ctx = Context::of(index.state());
    let tally = RefCell::new(Tally::default());
    for (kind, name) in KINDS.iter().enumerate() {
        let strategy = proptest::collection::vec(random_config::spec(name), 8..=8);
        runner(400, 13)
            .run(&strategy, |specs| {
                valid(kind, specs, &ctx, &mut tally.borrow_mut());
                Ok(())
            })
            .expect("drawing objects does not fail");
    }
    let tally = tally.into_inner();
    let mut reasons: Vec<_> = tally.reasons.iter().collect();
    reasons.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
    for (kind, name) in KINDS.iter().enumerate() {
        let total = tally.accepted[kind] + tally.refused[kind];
        assert!(
            tally.accepted[kind] * 2 >= total,
            "{name}: only {} of {total} random objects were valid; fix the generator's pools. \
             Validation said, most often first: {:#?}",
            tally.accepted[kind],
            &reasons[..reasons.len().min(25)]
        );
        let missing: Vec<&str> = Inventory::get()
            .fields()
            .filter(|(k, path, _)| k == name && !tally.seen[kind].contains(*path))
            .filter(|(_, path, _)| !random_config::REFUSED.contains(path))
            .map(|(_, path, _)| path)
            .collect();
        assert!(missing.is_empty(), "{name}: no valid object set {missing:#?}");
    }
}

#[test]
fn envoy_accepts_every_random_valid_configuration() {
    let cases: u32 = std::env::var("MESH_RANDOM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    let seed: u64 =
        std::env::var("MESH_RANDOM_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
    eprintln!("random configurations: {cases} cases, MESH_RANDOM_SEED={seed}");
    let mut runner = runner(cases, seed);
    let strategy = (
        proptest::collection::vec(random_config::spec("VirtualService"), 0..=12),
        proptest::collection::vec(random_config::spec("DestinationRule"), 0..=12),
    );
    let dir = TempDir::new("random");
    write_certificate_files();
    let tally = RefCell::new(Tally::default());
    let result = runner.run(&strategy, |(virtual_services, destination_rules)| {
        let mut index = world();
        let mut tally = tally.borrow_mut();
        tally.cases += 1;
        // Rules first: a VirtualService's subsets are checked against them.
        let mut applied = valid(1, destination_rules, &Context::of(index.state()), &mut tally);
        apply(&mut index, &applied);
        let services = valid(0, virtual_services, &Context::of(index.state()), &mut tally);
        apply(&mut index, &services);
        applied.extend(services);
        drop(tally);
        match envoy_refusal(&dir, &index) {
            None => Ok(()),
            Some(reason) => Err(TestCaseError::fail(format!(
                "Envoy refused the translation of:\n{}\nEnvoy said:\n{reason}",
                yaml(&applied)
            ))),
        }
    });
    let tally = tally.into_inner();
    eprintln!(
        "{} cases: VirtualServices {} accepted by validation ({} refused), DestinationRules {} ({} refused); \
         every accepted set was loaded by Envoy",
        tally.cases, tally.accepted[0], tally.refused[0], tally.accepted[1], tally.refused[1]
    );
    if let Err(e) = result {
        panic!("MESH_RANDOM_SEED={seed}: {e}");
    }
}
