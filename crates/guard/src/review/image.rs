//! Does the pull request's image exist yet? A pluggable check, because the
//! webhook arrives when the commit is pushed, minutes before CI pushes the
//! image `:pr-N`.
//!
//! [`RegistryCheck`] asks an OCI distribution registry
//! `HEAD /v2/<name>/manifests/<tag>` and reads `Docker-Content-Digest`.
//! guard records the digest it applied; after a `synchronize` it waits for a
//! *different* digest, so it does not re-apply the previous push's image.

use std::time::Duration;

use crate::platform::BoxFuture;

/// Errors asking the registry (retried until the wait ends).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image reference has no tag or no repository.
    #[error("image reference {image:?} is not <registry>/<name>:<tag>")]
    Reference { image: String },
    /// The registry could not be reached or refused us.
    #[error("registry {url}: {detail}")]
    Registry { url: String, detail: String },
}

/// Reads the digest of an image tag; `Ok(None)` while it does not exist.
pub trait ImageCheck: Send + Sync + 'static {
    fn digest<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<Option<String>, ImageError>>;
}

/// An OCI registry over HTTP(S).
pub struct RegistryCheck {
    http: reqwest::Client,
    /// Overrides `https://<registry host>` (a mirror, or a test double).
    base_url: Option<String>,
    /// Sent as `Authorization: Bearer <token>` when set.
    token: Option<String>,
}

/// `(registry host, repository name, tag)` of `host/name:tag`.
pub fn split_reference(image: &str) -> Option<(String, String, String)> {
    let (rest, tag) = image.rsplit_once(':')?;
    if tag.contains('/') {
        return None;
    }
    let (host, name) = rest.split_once('/')?;
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        // Docker Hub short names (`library/x`) are not what review images use.
        return Some(("registry-1.docker.io".into(), rest.into(), tag.into()));
    }
    Some((host.into(), name.into(), tag.into()))
}

impl RegistryCheck {
    pub fn new(base_url: Option<String>, token: Option<String>) -> Result<Self, ImageError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ImageError::Registry {
                url: "(client)".into(),
                detail: e.to_string(),
            })?;
        Ok(RegistryCheck {
            http,
            base_url,
            token,
        })
    }
}

impl ImageCheck for RegistryCheck {
    fn digest<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<Option<String>, ImageError>> {
        Box::pin(async move {
            let (host, name, tag) =
                split_reference(image).ok_or_else(|| ImageError::Reference {
                    image: image.into(),
                })?;
            let base = self
                .base_url
                .clone()
                .unwrap_or_else(|| format!("https://{host}"));
            let url = format!("{}/v2/{name}/manifests/{tag}", base.trim_end_matches('/'));
            let mut req = self.http.head(&url).header(
                "accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.list.v2+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            );
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| ImageError::Registry {
                url: url.clone(),
                detail: e.to_string(),
            })?;
            match resp.status().as_u16() {
                200 => Ok(Some(
                    resp.headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from)
                        .unwrap_or_else(|| "present".into()),
                )),
                404 => Ok(None),
                code => Err(ImageError::Registry {
                    url,
                    detail: format!("HTTP {code}"),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_host_name_tag() {
        assert_eq!(
            split_reference("registry.digitalocean.com/ultra-boost/ultra-boost:pr-42"),
            Some((
                "registry.digitalocean.com".into(),
                "ultra-boost/ultra-boost".into(),
                "pr-42".into()
            ))
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/web:pr-1"),
            Some(("127.0.0.1:5000".into(), "web".into(), "pr-1".into()))
        );
        assert_eq!(split_reference("web"), None);
        assert_eq!(split_reference("localhost:5000/web"), None);
    }
}
