//! Image name -> local program, read from e2e/images.yaml. The node has no
//! container runtime: an image only says which program on this machine
//! plays its part.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct File {
    images: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Images {
    entrypoints: BTreeMap<String, Vec<String>>,
}

/// Strips the registry `docker.io/`, `library/`, the tag and the digest.
pub fn normalize(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let no_tag = match no_digest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => no_digest,
    };
    let name = no_tag.strip_prefix("docker.io/").unwrap_or(no_tag);
    name.strip_prefix("library/").unwrap_or(name).to_string()
}

impl Images {
    /// Reads the mapping, filling in `{name}` placeholders from `programs`.
    pub fn load(path: &Path, programs: &BTreeMap<String, String>) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: File =
            serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut entrypoints = BTreeMap::new();
        for (image, argv) in file.images {
            let argv = argv
                .into_iter()
                .map(|arg| {
                    let Some(name) = arg.strip_prefix('{').and_then(|a| a.strip_suffix('}')) else {
                        return Ok(arg);
                    };
                    programs.get(name).cloned().with_context(|| {
                        format!("{}: image {image} needs --program {name}=PATH", path.display())
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            entrypoints.insert(normalize(&image), argv);
        }
        Ok(Self { entrypoints })
    }

    /// The argv a container runs: its command (or the image's entrypoint)
    /// followed by its args. A command naming a path that does not exist
    /// here but has the entrypoint's file name (the Envoy image's
    /// /usr/local/bin/envoy) runs the mapped program.
    pub fn argv(&self, image: &str, command: &[String], args: &[String]) -> Result<Vec<String>> {
        let Some(entrypoint) = self.entrypoints.get(&normalize(image)) else {
            bail!("image {image} is not in e2e/images.yaml: map it to a local program");
        };
        let mut argv = if command.is_empty() { entrypoint.clone() } else { command.to_vec() };
        if let (Some(first), Some(mapped)) = (argv.first_mut(), entrypoint.first())
            && first.starts_with('/')
            && !Path::new(first.as_str()).exists()
            && Path::new(first.as_str()).file_name() == Path::new(mapped).file_name()
        {
            *first = mapped.clone();
        }
        argv.extend(args.iter().cloned());
        if argv.is_empty() {
            bail!("image {image} has no entrypoint here and the container sets no command");
        }
        Ok(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_registry_tag_and_digest() {
        assert_eq!(
            normalize("docker.io/istio/examples-bookinfo-details-v1:1.15.0"),
            "istio/examples-bookinfo-details-v1"
        );
        assert_eq!(normalize("busybox"), "busybox");
        assert_eq!(normalize("docker.io/library/busybox:1.36"), "busybox");
        assert_eq!(normalize("localhost:5000/mesh@sha256:abc"), "localhost:5000/mesh");
    }

    fn images() -> Images {
        let programs = [("envoy".to_string(), "/opt/envoy".to_string())].into();
        let dir = std::env::temp_dir().join(format!("images-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("images.yaml");
        std::fs::write(&path, "images:\n  envoyproxy/envoy: [\"{envoy}\"]\n  busybox: [sh]\n").unwrap();
        Images::load(&path, &programs).unwrap()
    }

    #[test]
    fn command_replaces_the_entrypoint_and_args_follow() {
        let i = images();
        assert_eq!(
            i.argv("envoyproxy/envoy:v1.40.0", &[], &["-c".into(), "x".into()]).unwrap(),
            ["/opt/envoy", "-c", "x"]
        );
        assert_eq!(i.argv("busybox", &["sleep".into()], &["5".into()]).unwrap(), ["sleep", "5"]);
        // The image's own path to its binary maps to the local program.
        assert_eq!(
            i.argv("envoyproxy/envoy", &["/usr/local/bin/envoy".into()], &[]).unwrap(),
            ["/opt/envoy"]
        );
        assert!(i.argv("nginx", &[], &[]).is_err());
    }
}
