//! `mesh analyze`, as a user runs it: on files alone, and on the live
//! cluster through the kubeconfig, with Istio's codes, message format and
//! exit codes (79: a finding at the failure threshold).

use std::path::Path;

use crate::support::*;

fn mesh(args: &[&str]) -> Output {
    let bin = std::env::var("MESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh").to_string());
    run(&bin, args, None)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn mesh_analyze_finds_each_broken_files_problem_and_none_in_istios_samples() {
    let platform = conformance().join("platform/bookinfo.yaml");
    let networking = conformance().join("networking");
    let rules = networking.join("destination-rule-all.yaml");

    // Files alone: Bookinfo, its rules, one broken file: exactly its findings.
    for (file, expected) in mesh::analyze::testdata::broken_files() {
        let out = mesh(&["analyze", "--use-kube=false", path(&platform), path(&rules), path(&file)]);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{}: {}\n{}", file.display(), out.stdout, out.stderr);
        for (line, wanted) in lines.iter().zip(&expected) {
            assert!(line.starts_with(wanted.as_str()), "{}:\n{line}\nwanted {wanted}", file.display());
        }
        let errors = expected.iter().any(|e| e.starts_with("Error"));
        assert_eq!(out.code, Some(if errors { 79 } else { 0 }), "{}: exit code", file.display());
    }

    // The live cluster: Bookinfo and Istio's samples applied with kubectl.
    install_crds();
    let ns = TempNamespace::new("analyze");
    kubectl_ok(&["label", "namespace", &ns.name, "istio-injection=enabled"], None);
    kubectl_ok(&["apply", "-n", &ns.name, "-f", path(&platform)], None);
    for sample in ["destination-rule-all.yaml", "virtual-service-all-v1.yaml", "bookinfo-gateway.yaml"] {
        kubectl_ok(&["apply", "-n", &ns.name, "-f", path(&networking.join(sample))], None);
    }
    let kubeconfig = kubeconfig();
    let clean = mesh(&["analyze", "--kubeconfig", &kubeconfig, "-n", &ns.name]);
    assert!(clean.ok, "{}\n{}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains("No validation issues found"), "{}", clean.stdout);

    // A VirtualService naming a missing subset, applied to the cluster.
    let broken =
        std::fs::read_to_string(repo().join("src/analyze/testdata/missing-subset.yaml")).expect("a file");
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(&broken));
    let found = mesh(&["analyze", "--kubeconfig", &kubeconfig, "-n", &ns.name]);
    assert_eq!(found.code, Some(79), "{}\n{}", found.stdout, found.stderr);
    let expected = format!(
        "Error [IST0101] (VirtualService reviews.{}) Referenced host+subset in destinationrule not found: \"reviews+v9\"",
        ns.name
    );
    assert_eq!(found.stdout.trim(), expected);
    // The same as JSON, for scripts.
    let json = mesh(&["analyze", "--kubeconfig", &kubeconfig, "-n", &ns.name, "-o", "json"]);
    let findings: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(findings[0]["code"], "IST0101", "{findings}");
}
