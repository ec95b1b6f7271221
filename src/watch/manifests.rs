//! A static source of API objects: multi-document YAML files (or `kind:
//! List`), as `kubectl get -o yaml` prints them. Used by `kproxy render
//! --manifests` to show what would be programmed with no cluster at all.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

/// The objects found in a set of manifests.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// Documents of other kinds, skipped: (file, kind).
    pub skipped: Vec<(String, String)>,
}

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory could not be read. The I/O error is part of the
    /// message, not a `source`, so `{:#}` does not print it twice.
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// A document is not valid YAML or not a valid object of its kind.
    #[error("{path}: document {index}: {message}")]
    Parse {
        path: String,
        index: usize,
        message: String,
    },
}

// === impl Manifests ===

impl Manifests {
    /// Reads one file, or every `*.yaml`/`*.yml`/`*.json` file of a directory
    /// (sorted by name, not recursive).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let read_err = |error| ManifestError::Read {
            path: path.display().to_string(),
            error,
        };
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut out = Manifests::default();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|error| ManifestError::Read {
                path: file.display().to_string(),
                error,
            })?;
            out.add_text(&text, &file.display().to_string())?;
        }
        Ok(out)
    }

    /// Adds the objects of one multi-document YAML text.
    pub fn add_text(&mut self, text: &str, path: &str) -> Result<(), ManifestError> {
        for (index, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let parse_err = |message: String| ManifestError::Parse {
                path: path.to_string(),
                index: index + 1,
                message,
            };
            let value = serde_norway::Value::deserialize(doc).map_err(|e| parse_err(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            self.add_value(value, path).map_err(parse_err)?;
        }
        Ok(())
    }

    fn add_value(&mut self, value: serde_norway::Value, path: &str) -> Result<(), String> {
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
        match kind.as_str() {
            "Service" => self.services.push(typed(value)?),
            "EndpointSlice" => self.slices.push(typed(value)?),
            "Node" => self.nodes.push(typed(value)?),
            "List" | "ServiceList" | "EndpointSliceList" | "NodeList" => {
                let items = value
                    .get("items")
                    .and_then(|i| i.as_sequence())
                    .cloned()
                    .unwrap_or_default();
                let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty()).map(str::to_string);
                for mut item in items {
                    if let (Some(k), Some(map)) = (&item_kind, item.as_mapping_mut()) {
                        map.entry("kind".into()).or_insert_with(|| k.clone().into());
                    }
                    self.add_value(item, path)?;
                }
            }
            _ => self.skipped.push((path.to_string(), kind)),
        }
        Ok(())
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_norway::Value) -> Result<T, String> {
    serde_norway::from_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_multi_document_yaml_and_lists() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.5]}]
ports: [{port: 8080}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: x}
---
"#;
        let mut m = Manifests::default();
        m.add_text(text, "t.yaml").expect("parses");
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.slices.len(), 1);
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.skipped, vec![("t.yaml".to_string(), "ConfigMap".to_string())]);
    }

    #[test]
    fn a_malformed_document_names_file_and_index() {
        let mut m = Manifests::default();
        let err = m
            .add_text(
                "kind: Service\nmetadata: {name: a}\n---\nkind: Service\nspec: {ports: 7}\n",
                "x.yaml",
            )
            .expect_err("bad doc");
        let msg = err.to_string();
        assert!(msg.contains("x.yaml") && msg.contains("document 2"), "{msg}");
    }
}
