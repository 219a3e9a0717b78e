//! Who sees a piece of configuration: `exportTo`, as Istio defines it.
//! `"*"` exports to every namespace, `"."` to the object's own, `"~"` to
//! none, any other entry names a namespace. No `exportTo` means every
//! namespace (Istio's default mesh setting). What a host name in it means
//! is [`super::host`]'s.

use std::collections::BTreeSet;

use serde::Serialize;

/// The namespaces a configuration object is visible to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportTo {
    all: bool,
    namespaces: BTreeSet<String>,
}

impl ExportTo {
    /// Reads an `exportTo` list of an object in `namespace`.
    pub fn parse(export_to: &[String], namespace: &str) -> Self {
        if export_to.is_empty() {
            return Self::everywhere();
        }
        let mut out = Self::default();
        for entry in export_to {
            match entry.as_str() {
                "*" => out.all = true,
                "." => {
                    out.namespaces.insert(namespace.to_string());
                }
                "~" => {}
                other => {
                    out.namespaces.insert(other.to_string());
                }
            }
        }
        out
    }

    pub fn everywhere() -> Self {
        Self { all: true, namespaces: BTreeSet::new() }
    }

    pub fn visible_to(&self, namespace: &str) -> bool {
        self.all || self.namespaces.contains(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn export_to_follows_istio() {
        let default = ExportTo::parse(&[], "a");
        assert!(default.visible_to("a") && default.visible_to("b"));
        let own = ExportTo::parse(&strings(&["."]), "a");
        assert!(own.visible_to("a") && !own.visible_to("b"));
        let listed = ExportTo::parse(&strings(&[".", "c"]), "a");
        assert!(listed.visible_to("a") && listed.visible_to("c") && !listed.visible_to("b"));
        let all = ExportTo::parse(&strings(&["*"]), "a");
        assert!(all.visible_to("z"));
        let none = ExportTo::parse(&strings(&["~"]), "a");
        assert!(!none.visible_to("a"));
    }
}
