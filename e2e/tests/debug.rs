//! The controller's /debug views answer only callers the Kubernetes API
//! authorizes: the chart installed with helm, one injected pod whose Envoy
//! is connected, and requests to the controller's pod with no token, a
//! token the API server does not accept, the sidecar's own (audience
//! `mesh-ca`) token, an ordinary ServiceAccount's token, and the token of
//! a ServiceAccount bound to the chart's ClusterRole `mesh-debug`. Then
//! `mesh proxy-status` as documented: `--token`, MESH_TOKEN, the
//! kubeconfig user's token, and what it says without one.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    DebugViewer, Output, Release, TempNamespace, controllers, enter, eventually, http_get, kubeconfig,
    kubectl, kubectl_ok, run,
};

/// `mesh` with arguments, no token or kubeconfig from the environment.
fn mesh(args: &[&str]) -> Output {
    let out = Command::new(mesh_bin())
        .args(args)
        .env_remove("MESH_TOKEN")
        .env_remove("KUBECONFIG")
        .output()
        .expect("mesh runs");
    Output::from(out)
}

fn list(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

/// A listener's filter chains, the default one included.
fn chains(listener: &Value) -> usize {
    list(&listener["filter_chains"]).len() + usize::from(!listener["default_filter_chain"].is_null())
}

/// The active resources of a kind in Envoy's config dump, static first.
fn held(dump: &Value, kind: &str) -> Vec<Value> {
    let (section, lists): (&str, &[(&str, &[&str])]) = match kind {
        "cluster" => (
            "ClustersConfigDump",
            &[("static_clusters", &["cluster"]), ("dynamic_active_clusters", &["cluster"])],
        ),
        "listener" => (
            "ListenersConfigDump",
            &[("static_listeners", &["listener"]), ("dynamic_listeners", &["active_state", "listener"])],
        ),
        "route" => (
            "RoutesConfigDump",
            &[("static_route_configs", &["route_config"]), ("dynamic_route_configs", &["route_config"])],
        ),
        _ => (
            "EndpointsConfigDump",
            &[
                ("static_endpoint_configs", &["endpoint_config"]),
                ("dynamic_endpoint_configs", &["endpoint_config"]),
            ],
        ),
    };
    let configs = list(&dump["configs"]);
    let Some(section) =
        configs.iter().find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(&format!(".{section}"))))
    else {
        return Vec::new();
    };
    lists
        .iter()
        .flat_map(|(name, path)| {
            list(&section[*name]).into_iter().map(|entry| path.iter().fold(entry, |v, k| v[*k].clone()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn mesh_bin() -> String {
    std::env::var("MESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh").to_string())
}

/// `mesh proxy-status` with extra arguments and environment variables.
fn proxy_status(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(mesh_bin())
        .arg("proxy-status")
        .args(args)
        .env_remove("MESH_TOKEN")
        .env_remove("KUBECONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("mesh runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A ClusterRoleBinding of a ServiceAccount, deleted on drop.
struct ClusterRoleBinding(String);

impl ClusterRoleBinding {
    fn new(name: &str, role: &str, service_account: &str) -> Self {
        let (role, subject) =
            (format!("--clusterrole={role}"), format!("--serviceaccount={service_account}"));
        kubectl_ok(&["create", "clusterrolebinding", name, &role, &subject], None);
        Self(name.to_string())
    }
}

impl Drop for ClusterRoleBinding {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "clusterrolebinding", &self.0, "--ignore-not-found"], None);
    }
}

#[test]
fn debug_views_answer_only_users_the_api_server_authorizes() {
    let release = Release::install("mesh-e2e-debug", &[]);
    let ns = TempNamespace::new("debug");
    kubectl_ok(&["label", "namespace", &ns.name, "istio-injection=enabled"], None);
    let app = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: app}
---
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  serviceAccountName: app
  containers: [{name: sleep, image: busybox, command: [sh, -c, "sleep 3600"]}]
"#;
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(app));
    kubectl_ok(&["wait", "-n", &ns.name, "--for", "condition=Ready", "pod/app", "--timeout=90s"], None);

    let viewer = DebugViewer::bound_to("mesh-debug");

    // The sidecar's ADS stream is up: its pod is in the dump (read as the
    // viewer) of the replica it is connected to.
    let all = controllers(&release.namespace);
    let (controller, dump): (String, Value) =
        eventually("the app's Envoy connected", Duration::from_secs(60), || {
            all.iter().find_map(|controller| {
                let url = format!("{controller}/debug/config_dump?proxy={}/app", ns.name);
                let (status, body) = http_get(&url, Some(&viewer.token));
                (status == 200).then(|| (controller.clone(), serde_json::from_str(&body).expect("JSON")))
            })
        });
    let dump_url = format!("{controller}/debug/config_dump?proxy={}/app", ns.name);
    assert_eq!(dump[0]["status"]["pod"], format!("{}/app", ns.name), "{dump}");
    assert!(dump[0]["config"]["cds"]["resources"].as_array().is_some_and(|r| !r.is_empty()), "{dump}");
    for view in ["/debug/syncz", "/debug/configz"] {
        let (status, body) = http_get(&format!("{controller}{view}"), Some(&viewer.token));
        assert_eq!(status, 200, "{view} as {}: {body}", viewer.user);
    }

    // What the kubelet and Prometheus read stays open.
    for open in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = http_get(&format!("{controller}{open}"), None);
        assert_eq!(status, 200, "{open} without a token: {body}");
    }

    // No token: 401, saying what to send.
    let (status, body) = http_get(&dump_url, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer <token>") && body.contains("mesh-debug"), "{body}");

    // A token the API server does not accept: 401.
    let (status, body) = http_get(&dump_url, Some("not-a-token"));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("did not accept the token"), "{body}");

    // The sidecar's own token is for the ADS stream (audience mesh-ca), not
    // for the API server's audiences: 401.
    let sidecar_token = kubectl_ok(
        &[
            "create",
            "token",
            "app",
            "-n",
            &ns.name,
            "--audience",
            "mesh-ca",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "app",
        ],
        None,
    );
    let (status, body) = http_get(&dump_url, Some(sidecar_token.trim()));
    assert_eq!(status, 401, "{body}");

    // An ordinary pod's ServiceAccount: 403 naming the user, the path and the role.
    let app_token = kubectl_ok(&["create", "token", "app", "-n", &ns.name], None);
    let app_user = format!("system:serviceaccount:{}:app", ns.name);
    let (status, body) = http_get(&dump_url, Some(app_token.trim()));
    assert_eq!(status, 403, "{body}");
    for fragment in [app_user.as_str(), "/debug/config_dump", "--clusterrole=mesh-debug"] {
        assert!(body.contains(fragment), "the refusal lacks {fragment:?}: {body}");
    }
    for view in ["/debug/syncz", "/debug/configz"] {
        let (status, body) = http_get(&format!("{controller}{view}"), Some(app_token.trim()));
        assert_eq!(status, 403, "{view}: {body}");
    }

    // `mesh proxy-status` with a token of a user not bound: the controller's 403, passed on.
    let (ok, _, err) = proxy_status(&["--controller", &controller, "--token", app_token.trim()], &[]);
    assert!(!ok, "proxy-status ran for an unbound user");
    assert!(
        err.contains("403") && err.contains("may not get /debug/syncz") && err.contains(&app_user),
        "{err}"
    );

    // `mesh proxy-status`: with --token, with MESH_TOKEN, and with the
    // token of the kubeconfig's current user.
    let row = format!("app.{} ", ns.name);
    let synced = |out: &str| out.lines().any(|l| l.starts_with(&row) && l.matches("SYNCED").count() == 4);
    // Every replica asked, as a user of several would: the rows of all.
    let every = all.join(",");
    let table = eventually("app SYNCED in mesh proxy-status --token", Duration::from_secs(30), || {
        let (ok, out, _) = proxy_status(&["--controller", &every, "--token", &viewer.token], &[]);
        (ok && synced(&out)).then_some(out)
    });
    eprintln!("{table}");
    let (ok, out, err) = proxy_status(&["--controller", &controller], &[("MESH_TOKEN", &viewer.token)]);
    assert!(ok && synced(&out), "with MESH_TOKEN: {out}{err}");

    let dir = std::env::temp_dir().join(format!("mesh-e2e-debug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let token_kubeconfig = dir.join("kubeconfig");
    let cluster = |field: &str| {
        kubectl_ok(
            &["config", "view", "--minify", "-o", &format!("jsonpath={{.clusters[0].cluster.{field}}}")],
            None,
        )
    };
    let (server, ca) = (cluster("server"), cluster("certificate-authority"));
    std::fs::write(
        &token_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: viewer\n\
             clusters: [{{name: local, cluster: {{server: '{server}', certificate-authority: '{ca}'}}}}]\n\
             contexts: [{{name: viewer, context: {{cluster: local, user: viewer}}}}]\n\
             users: [{{name: viewer, user: {{token: '{}'}}}}]\n",
            viewer.token
        ),
    )
    .expect("a kubeconfig");
    let path = token_kubeconfig.to_str().expect("utf-8");
    let (ok, out, err) = proxy_status(&["--controller", &controller, "--kubeconfig", path], &[]);
    assert!(ok && synced(&out), "with the kubeconfig user's token: {out}{err}");
    let (ok, out, err) = proxy_status(&["--controller", &controller], &[("KUBECONFIG", path)]);
    assert!(ok && synced(&out), "with KUBECONFIG: {out}{err}");
    // The same kubeconfig works for kubectl: the token is a real user's.
    let who = run(
        "kubectl",
        &["--kubeconfig", path, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        None,
    );
    assert_eq!(who.stdout.trim(), viewer.user, "{}", who.stderr);
    let _ = std::fs::remove_dir_all(&dir);

    // The test cluster's admin authenticates with a client certificate,
    // which the controller's plain HTTP port never sees: the CLI makes a
    // short-lived token of the chart's ServiceAccount mesh-debug, bound to
    // the ClusterRole of that name.
    let admin = kubeconfig();
    let release_ns = ["--mesh-namespace", release.namespace.as_str()];
    let (ok, out, err) = proxy_status(
        &[&["--controller", &controller, "--kubeconfig", &admin][..], &release_ns].concat(),
        &[],
    );
    assert!(ok && synced(&out), "as the admin, with the chart's ServiceAccount: {out}{err}");
    // Where there is no such ServiceAccount, it says what to pass.
    let (ok, _, err) = proxy_status(
        &["--controller", &controller, "--kubeconfig", &admin, "--mesh-namespace", &ns.name],
        &[],
    );
    assert!(!ok, "proxy-status ran with no token");
    assert!(
        err.contains("client certificate") && err.contains("mesh-debug") && err.contains("--token"),
        "{err}"
    );

    // Without --controller, as istioctl: every replica found through the
    // kubeconfig and asked by port-forward through the API server.
    let (ok, out, err) = proxy_status(&[&["--kubeconfig", &admin][..], &release_ns].concat(), &[]);
    assert!(ok && synced(&out), "found through the kubeconfig: {out}{err}");
    let replicas = all.len();
    let version = mesh(&[&["version", "--kubeconfig", &admin][..], &release_ns].concat());
    assert!(version.ok, "{}", version.stderr);
    let control =
        version.stdout.lines().find(|l| l.starts_with("control plane version:")).unwrap_or_default();
    assert_eq!(control.matches(env!("CARGO_PKG_VERSION")).count(), replicas, "{}", version.stdout);
    assert!(version.stdout.starts_with(&format!("client version: {}\n", env!("CARGO_PKG_VERSION"))));

    // `mesh proxy-config`: what the app's Envoy holds, read from Envoy itself,
    // is its config dump (read here from inside the pod), kind by kind.
    let pod = format!("app.{}", ns.name);
    for kind in ["cluster", "listener", "route", "endpoint"] {
        let (json, table) =
            eventually(&format!("proxy-config {kind} = the dump"), Duration::from_secs(60), || {
                let dump = enter(&ns.name, "app", "curl -sf localhost:15000/config_dump?include_eds");
                let dump: Value = serde_json::from_str(&dump.stdout).ok()?;
                let json = mesh(&["proxy-config", kind, &pod, "-o", "json", "--kubeconfig", &admin]);
                let json: Value = serde_json::from_str(&json.stdout).ok()?;
                let table = mesh(&["proxy-config", kind, &pod, "--kubeconfig", &admin]);
                (table.ok && json == Value::Array(held(&dump, kind))).then_some((json, table.stdout))
            });
        let resources = json.as_array().expect("a list");
        assert!(!resources.is_empty(), "{kind}: the app's Envoy holds none");
        let rows = table.lines().count() - 1;
        let expected = match kind {
            "cluster" => resources.len(),
            "listener" => resources.iter().map(chains).sum(),
            "route" => resources
                .iter()
                .flat_map(|c| list(&c["virtual_hosts"]))
                .map(|h| list(&h["routes"]).len())
                .sum(),
            _ => resources
                .iter()
                .flat_map(|e| list(&e["endpoints"]))
                .map(|l| list(&l["lb_endpoints"]).len())
                .sum(),
        };
        assert_eq!(rows, expected, "{kind}: one row each:\n{table}");
        if kind == "cluster" {
            for cluster in resources {
                let name = cluster["name"].as_str().expect("a name");
                let shown = match name.split('|').collect::<Vec<_>>().as_slice() {
                    ["outbound", port, _, host] => format!("{host} {port}"),
                    _ => name.to_string(),
                };
                let key: Vec<&str> = shown.split(' ').collect();
                assert!(
                    table.lines().any(|l| l.split_whitespace().take(key.len()).eq(key.iter().copied())),
                    "{name} is not in\n{table}"
                );
            }
        }
    }
    let all_kinds = mesh(&["proxy-config", "all", &pod, "--kubeconfig", &admin]);
    assert!(all_kinds.ok && all_kinds.stdout.matches("\n\n").count() == 3, "{}", all_kinds.stdout);
    let missing = mesh(&["proxy-config", "cluster", "nobody", "-n", &ns.name, "--kubeconfig", &admin]);
    assert!(!missing.ok && missing.stderr.contains("nobody"), "{}", missing.stderr);

    // Once bound to mesh-debug, the same token is let in (after the
    // controller's memory of the refusal, at most 10 s, runs out).
    let _binding =
        ClusterRoleBinding::new(&format!("{}-app-debug", ns.name), "mesh-debug", &format!("{}:app", ns.name));
    eventually("the app's token let in once bound", Duration::from_secs(30), || {
        (http_get(&dump_url, Some(app_token.trim())).0 == 200).then_some(())
    });
}
