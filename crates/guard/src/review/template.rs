//! The review environment template: the rendered `review` overlay.
//!
//! guard does not run kustomize in the cluster. It reads the overlay
//! rendered once with its placeholders,
//!
//! ```text
//! kubectl kustomize deploy/kustomize/overlays/review > review.yaml
//! ```
//!
//! (namespace `ultra-boost-pr-0`, image tag `pr-0`), and for pull request `N`
//! replaces, in memory, every string equal to the placeholder namespace with
//! `ultra-boost-pr-N` and every image tag `:pr-0` with `:pr-N`. That is
//! exactly what `deploy/kustomize/render.sh review --pr N` produces, so the
//! review environment is the overlay, not a second copy of it in Rust
//! (`tests/review_webhook.rs` compares the two for a real PR number).
//!
//! guard then adds its own bookkeeping: on the Namespace the labels
//! `guard.ultra-boost.dev/review-pr: "N"` and the annotations
//! `guard.ultra-boost.dev/last-activity`, `.../head-sha`, `.../image-digest`;
//! on every pod template the annotations `guard.ultra-boost.dev/build: pr-N`,
//! `.../commit: <head sha>` and `.../image-digest`, so each push is a new
//! rollout, verified like any other.

use serde_json::{Value, json};

/// Label on namespaces guard owns (and so may delete).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label naming the pull request of a review namespace.
pub const LABEL_REVIEW_PR: &str = "guard.ultra-boost.dev/review-pr";
/// Namespace annotation: RFC 3339 time of the last webhook for the pull request (TTL sweep).
pub const ANNOTATION_LAST_ACTIVITY: &str = "guard.ultra-boost.dev/last-activity";
/// Namespace annotation: head commit of the pull request last applied.
pub const ANNOTATION_HEAD_SHA: &str = "guard.ultra-boost.dev/head-sha";
/// Namespace and pod-template annotation: registry digest of the image applied.
pub const ANNOTATION_IMAGE_DIGEST: &str = "guard.ultra-boost.dev/image-digest";

/// Errors loading a template; each names the field and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file is not YAML.
    #[error("{path}: not YAML: {detail}")]
    Yaml { path: String, detail: String },
    /// The template breaks a rule guard relies on.
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
}

/// A parsed, validated review template.
#[derive(Clone, Debug)]
pub struct ReviewTemplate {
    objects: Vec<Value>,
    /// Placeholder namespace, e.g. `ultra-boost-pr-0`.
    namespace: String,
    /// Namespace prefix, e.g. `ultra-boost-pr-`.
    prefix: String,
}

/// What to render for one pull request.
#[derive(Clone, Debug)]
pub struct ReviewRequest<'a> {
    pub number: u64,
    pub head_sha: &'a str,
    /// Registry digest of the image, when known.
    pub image_digest: Option<&'a str>,
    /// RFC 3339 time of this activity.
    pub now: &'a str,
}

fn walk_strings(v: &mut Value, f: &dyn Fn(&str) -> Option<String>) {
    match v {
        Value::String(s) => {
            if let Some(n) = f(s) {
                *s = n;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| walk_strings(x, f)),
        Value::Object(m) => m.values_mut().for_each(|x| walk_strings(x, f)),
        _ => {}
    }
}

fn pod_templates(obj: &mut Value) -> Option<&mut Value> {
    obj.pointer_mut("/spec/template")
}

impl ReviewTemplate {
    /// Parses and validates a rendered overlay (`path` names it in errors).
    pub fn parse(path: &str, text: &str) -> Result<Self, TemplateError> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| TemplateError::Yaml {
                path: path.into(),
                detail: e.to_string(),
            })?;
        let objects: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
        let invalid = |detail: String| TemplateError::Invalid {
            path: path.into(),
            detail,
        };
        for (i, o) in objects.iter().enumerate() {
            if o.get("apiVersion").and_then(Value::as_str).is_none()
                || o.get("kind").and_then(Value::as_str).is_none()
                || o.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .is_none()
            {
                return Err(invalid(format!(
                    "document {}: apiVersion, kind and metadata.name are required",
                    i + 1
                )));
            }
        }
        let namespaces: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Namespace")
            .collect();
        let [ns] = namespaces.as_slice() else {
            return Err(invalid(format!(
                "expected exactly one Namespace (e.g. ultra-boost-pr-0), found {}",
                namespaces.len()
            )));
        };
        let namespace = ns
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(prefix) = namespace.strip_suffix('0').filter(|p| p.ends_with('-')) else {
            return Err(invalid(format!(
                "Namespace metadata.name must be the placeholder <prefix>-0 (e.g. ultra-boost-pr-0); got {namespace:?}"
            )));
        };
        if ns
            .pointer(&format!(
                "/metadata/labels/{}",
                LABEL_MANAGED_BY.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            != Some("guard")
        {
            return Err(invalid(format!(
                "Namespace {namespace}: metadata.labels.\"{LABEL_MANAGED_BY}\" must be \"guard\" (guard deletes only namespaces it owns)"
            )));
        }
        let images: Vec<String> = objects
            .iter()
            .filter_map(|o| {
                o.pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
            })
            .flatten()
            .filter_map(|c| c.get("image").and_then(Value::as_str).map(String::from))
            .collect();
        if !images.iter().any(|i| i.ends_with(":pr-0")) {
            return Err(invalid(format!(
                "no container image has the placeholder tag :pr-0 (images: {images:?}); render the review overlay unchanged"
            )));
        }
        let prefix = prefix.to_string();
        Ok(ReviewTemplate {
            objects,
            namespace,
            prefix,
        })
    }

    /// The namespace of pull request `n`.
    pub fn namespace_for(&self, n: u64) -> String {
        format!("{}{n}", self.prefix)
    }

    /// The pull request number of a namespace name, if it is a review namespace.
    pub fn number_of(&self, namespace: &str) -> Option<u64> {
        namespace.strip_prefix(&self.prefix)?.parse().ok()
    }

    /// Images (with tag `pr-N`) the environment of `n` runs.
    pub fn images_for(&self, n: u64) -> Vec<String> {
        let mut out: Vec<String> = self
            .render_plain(n)
            .iter()
            .filter_map(|o| {
                o.pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
                    .cloned()
            })
            .flatten()
            .filter_map(|c| c.get("image").and_then(Value::as_str).map(String::from))
            .filter(|i| i.ends_with(&format!(":pr-{n}")))
            .collect();
        out.dedup();
        out
    }

    /// The overlay for `n` exactly as `render.sh review --pr N` renders it.
    pub fn render_plain(&self, n: u64) -> Vec<Value> {
        let ns = self.namespace.clone();
        let new_ns = self.namespace_for(n);
        let tag = format!(":pr-{n}");
        self.objects
            .iter()
            .map(|o| {
                let mut o = o.clone();
                walk_strings(&mut o, &|s| {
                    if s == ns {
                        Some(new_ns.clone())
                    } else {
                        s.strip_suffix(":pr-0").map(|base| format!("{base}{tag}"))
                    }
                });
                o
            })
            .collect()
    }

    /// The objects to apply for a pull request, Namespace first, with guard's
    /// bookkeeping labels and annotations.
    pub fn render(&self, req: &ReviewRequest<'_>) -> Vec<Value> {
        let mut objects = self.render_plain(req.number);
        objects.sort_by_key(|o| o["kind"] != "Namespace");
        for o in &mut objects {
            if o["kind"] == "Namespace" {
                o["metadata"]["labels"][LABEL_REVIEW_PR] = json!(req.number.to_string());
                let a = &mut o["metadata"]["annotations"];
                a[ANNOTATION_LAST_ACTIVITY] = json!(req.now);
                a[ANNOTATION_HEAD_SHA] = json!(req.head_sha);
                if let Some(d) = req.image_digest {
                    a[ANNOTATION_IMAGE_DIGEST] = json!(d);
                }
            }
            if let Some(t) = pod_templates(o) {
                let a = &mut t["metadata"]["annotations"];
                a[crate::platform::kubernetes::rollout::ANNOTATION_BUILD] =
                    json!(format!("pr-{}", req.number));
                a[crate::platform::kubernetes::rollout::ANNOTATION_COMMIT] = json!(req.head_sha);
                if let Some(d) = req.image_digest {
                    a[ANNOTATION_IMAGE_DIGEST] = json!(d);
                }
            }
        }
        objects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: web-pr-0
  labels:
    app.kubernetes.io/managed-by: guard
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: web-pr-0
spec:
  template:
    spec:
      containers:
        - name: web
          image: registry.example/web:pr-0
"#;

    #[test]
    fn renders_namespace_and_tag_and_bookkeeping() {
        let t = ReviewTemplate::parse("review.yaml", T).unwrap();
        assert_eq!(t.namespace_for(42), "web-pr-42");
        assert_eq!(t.number_of("web-pr-42"), Some(42));
        assert_eq!(t.number_of("web-pr-x"), None);
        assert_eq!(
            t.images_for(42),
            vec!["registry.example/web:pr-42".to_string()]
        );
        let objs = t.render(&ReviewRequest {
            number: 42,
            head_sha: "abc",
            image_digest: Some("sha256:1"),
            now: "2026-01-01T00:00:00Z",
        });
        assert_eq!(objs[0]["kind"], "Namespace");
        assert_eq!(objs[0]["metadata"]["name"], "web-pr-42");
        assert_eq!(objs[0]["metadata"]["labels"][LABEL_REVIEW_PR], "42");
        assert_eq!(objs[1]["metadata"]["namespace"], "web-pr-42");
        assert_eq!(
            objs[1]["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.example/web:pr-42"
        );
        assert_eq!(
            objs[1]["spec"]["template"]["metadata"]["annotations"]["guard.ultra-boost.dev/commit"],
            "abc"
        );
    }

    #[test]
    fn refuses_templates_guard_could_not_own() {
        let unowned = T.replace("app.kubernetes.io/managed-by: guard", "team: x");
        let e = ReviewTemplate::parse("r.yaml", &unowned)
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.yaml") && e.contains("managed-by"), "{e}");
        let no_tag = T.replace(":pr-0", ":latest");
        assert!(
            ReviewTemplate::parse("r.yaml", &no_tag)
                .unwrap_err()
                .to_string()
                .contains(":pr-0")
        );
        let bad_ns = T.replace("web-pr-0", "web");
        assert!(ReviewTemplate::parse("r.yaml", &bad_ns).is_err());
        assert!(
            ReviewTemplate::parse("r.yaml", "a: [")
                .unwrap_err()
                .to_string()
                .starts_with("r.yaml: not YAML")
        );
    }
}
