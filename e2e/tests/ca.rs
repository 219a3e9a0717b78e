//! The CA in the cluster: one root however many replicas start, its
//! certificate in every namespace and put back when tampered with, and a
//! user's own CA plugged in with Istio's `cacerts` Secret.

use std::process::Command;
use std::time::Duration;

use crate::support::{Controller, TempNamespace, eventually, install_crds, kubectl, kubectl_ok};

fn secret_file(namespace: &str, secret: &str, key: &str) -> String {
    let template = format!("{{{{index .data \"{key}\" | base64decode}}}}");
    kubectl_ok(&["get", "secret", "-n", namespace, secret, "-o", &format!("go-template={template}")], None)
}

fn published_root(namespace: &str) -> Option<String> {
    let out = kubectl(
        &["get", "configmap", "-n", namespace, "mesh-ca-root-cert", "-o", "jsonpath={.data.root-cert\\.pem}"],
        None,
    );
    out.ok.then_some(out.stdout).filter(|s| !s.is_empty())
}

#[test]
fn replicas_share_one_root_and_publish_it_to_every_namespace() {
    install_crds();
    let home = TempNamespace::new("mesh-ca");
    // Two replicas starting at once still make one root.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Controller::start_in(&home.name));
        let b = s.spawn(|| Controller::start_in(&home.name));
        (a.join().expect("replica a"), b.join().expect("replica b"))
    });
    let secrets = kubectl_ok(&["get", "secrets", "-n", &home.name, "-o", "name"], None);
    assert_eq!(secrets.trim(), "secret/mesh-ca", "one generated root, nothing else");
    let root = secret_file(&home.name, "mesh-ca", "ca-cert.pem");
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    let version = kubectl_ok(
        &["get", "secret", "-n", &home.name, "mesh-ca", "-o", "jsonpath={.metadata.resourceVersion}"],
        None,
    );

    // A namespace made later gets the root; deleting or editing it brings it back.
    let other = TempNamespace::new("published");
    let wait_for_root = |what: &str| {
        eventually(what, Duration::from_secs(20), || published_root(&other.name).filter(|r| *r == root))
    };
    wait_for_root("the root in a new namespace");
    kubectl_ok(&["delete", "configmap", "-n", &other.name, "mesh-ca-root-cert"], None);
    wait_for_root("the root put back after deletion");
    kubectl_ok(
        &[
            "patch",
            "configmap",
            "-n",
            &other.name,
            "mesh-ca-root-cert",
            "-p",
            r#"{"data":{"root-cert.pem":"tampered"}}"#,
        ],
        None,
    );
    wait_for_root("the root put back after an edit");

    // A restart keeps the root it stored.
    drop((a, b));
    let _c = Controller::start_in(&home.name);
    let again = kubectl_ok(
        &["get", "secret", "-n", &home.name, "mesh-ca", "-o", "jsonpath={.metadata.resourceVersion}"],
        None,
    );
    assert_eq!(again, version, "the stored root was replaced");
    assert_eq!(published_root(&home.name).as_deref(), Some(root.as_str()));
}

/// A root and an intermediate made with openssl, as a user of Istio's
/// plug-in CA would, in Istio's `cacerts` file names.
pub(crate) fn make_cacerts(dir: &std::path::Path) {
    let sh = |script: &str| {
        let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("sh");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl ecparam -name prime256v1 -genkey -noout -out root-key.pem");
    sh("openssl req -x509 -new -key root-key.pem -subj '/O=example/CN=Example Root CA' -days 30 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out root-cert.pem");
    sh("openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem");
    sh("openssl req -new -key ca-key.pem -subj '/O=example/CN=Example Intermediate CA' -out ca.csr");
    sh(
        "printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\\n' > ca.ext",
    );
    sh("openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -days 30 \
        -extfile ca.ext -out ca-cert.pem");
    sh("cat ca-cert.pem root-cert.pem > cert-chain.pem");
}

#[test]
fn a_plugged_in_cacerts_secret_is_used_and_a_broken_one_keeps_the_controller_unready() {
    install_crds();
    let home = TempNamespace::new("plugged");
    let dir = std::env::temp_dir().join(format!("mesh-e2e-cacerts-{}", home.name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    make_cacerts(&dir);
    let file = |name: &str| format!("--from-file={name}={}", dir.join(name).display());

    let create_cacerts = |key: &str| {
        let key = format!("--from-file=ca-key.pem={}", dir.join(key).display());
        let (cert, root, chain) = (file("ca-cert.pem"), file("root-cert.pem"), file("cert-chain.pem"));
        kubectl_ok(
            &["create", "secret", "generic", "cacerts", "-n", &home.name, &cert, &key, &root, &chain],
            None,
        )
    };

    // A key that does not match its certificate: the controller says so and stays unready.
    create_cacerts("root-key.pem");
    let broken = Controller::spawn_in(&home.name);
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = broken.get("/readyz");
    assert_eq!(status, 503, "ready with a broken cacerts: {body}");
    assert!(body.contains("certificate authority"), "{body}");
    drop(broken);

    kubectl_ok(&["delete", "secret", "cacerts", "-n", &home.name], None);
    create_cacerts("ca-key.pem");
    let _controller = Controller::start_in(&home.name);
    let root = std::fs::read_to_string(dir.join("root-cert.pem")).expect("root");
    let published =
        eventually("the plugged-in root published", Duration::from_secs(20), || published_root(&home.name));
    assert_eq!(published.trim(), root.trim());
    assert!(
        !kubectl(&["get", "secret", "-n", &home.name, "mesh-ca"], None).ok,
        "a root was generated anyway"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
