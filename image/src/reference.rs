//! Image references, normalised the way kubelet, crictl and Docker do:
//! `busybox` is `docker.io/library/busybox:latest`; `index.docker.io` is `docker.io`;
//! a reference with a digest and no tag keeps no tag; `name:tag@digest` keeps both.

use std::fmt;
use std::str::FromStr;

use storage::Digest;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references that name neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference `{input}`: {reason}")]
pub struct ReferenceError {
    /// The reference as given (truncated).
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reference {
    /// The registry host (with port, if any), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, the name images are grouped under.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` (a RepoTag), if tagged.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest` (a RepoDigest) for `digest`.
    pub fn digested_name(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The same reference on another registry (mirrors).
    pub fn with_registry(&self, registry: &str) -> Self {
        Self {
            registry: registry.to_owned(),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse(input)
    }
}

/// Parses and normalises a reference.
pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
    let fail = |reason: &str| ReferenceError {
        input: input.chars().take(300).collect(),
        reason: reason.to_owned(),
    };
    if input.is_empty() {
        return Err(fail("it is empty"));
    }
    if input.len() > 4096 || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail(
            "it holds whitespace or control characters, or is too long",
        ));
    }
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => {
            let digest = digest.parse::<Digest>().map_err(|e| fail(&e.to_string()))?;
            (rest, Some(digest))
        }
        None => (input, None),
    };
    // A tag follows the last ':' after the last '/', so a registry port is never taken for one.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (&rest[..at], Some(&rest[at + 1..]))
        }
        None => (rest, None),
    };
    if let Some(tag) = tag {
        validate_tag(tag).map_err(|r| fail(&r))?;
    }
    let (registry, repository) = split_registry(name);
    validate_registry(&registry).map_err(|r| fail(&r))?;
    validate_repository(&repository).map_err(|r| fail(&r))?;
    if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
        return Err(fail("the repository name is longer than 255 characters"));
    }
    let tag = match (tag, &digest) {
        (Some(tag), _) => Some(tag.to_owned()),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_TAG.to_owned()),
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Docker's rule: the first component is a registry if it has a '.' or ':' or is
/// `localhost`; otherwise the name is on Docker Hub, under `library/` if it has one part.
fn split_registry(name: &str) -> (String, String) {
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
    };
    let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
        DEFAULT_REGISTRY.to_owned()
    } else {
        registry
    };
    let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    (registry, repository)
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok
        || tag.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "tag `{tag}` must be 1-128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        // [ipv6]:port
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry `{registry}` has an unclosed '['"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("registry `{registry}` is not a valid IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match registry.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(format!("registry host `{host}` is not a valid host name"));
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("registry port `{port}` is not a port number"));
    }
    Ok(())
}

/// Path components: lowercase alphanumerics joined by '.', '_', '__' or runs of '-'.
fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("the repository name is empty".to_owned());
    }
    for component in repository.split('/') {
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("repository name `{repository}` must be lowercase"));
        }
        if !component_ok(component) {
            return Err(format!(
                "repository path component `{component}` must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__', or one or more '-'.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !bytes.get(i).is_some_and(|&b| alnum(b)) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn norm(s: &str) -> String {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
    }

    #[test]
    fn normalises_like_kubelet_and_crictl() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("bitnami/nginx:1.2"), "docker.io/bitnami/nginx:1.2");
        assert_eq!(
            norm("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(norm("localhost/foo"), "localhost/foo:latest");
        assert_eq!(
            norm("127.0.0.1:5000/e2e/busybox:1.29-2"),
            "127.0.0.1:5000/e2e/busybox:1.29-2"
        );
        assert_eq!(norm("[::1]:5000/foo"), "[::1]:5000/foo:latest");
        assert_eq!(
            norm(&format!("busybox@{D}")),
            format!("docker.io/library/busybox@{D}")
        );
        assert_eq!(
            norm(&format!("gcr.io/x/y:tag@{D}")),
            format!("gcr.io/x/y:tag@{D}")
        );
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        let r = parse("myregistry:5000/app").expect("valid");
        assert_eq!(r.registry(), "myregistry:5000");
        assert_eq!(r.repository(), "app");
        assert_eq!(r.tag(), Some("latest"));
    }

    #[test]
    fn parts_and_names() {
        let r = parse("quay.io/a/b:v1").expect("valid");
        assert_eq!(r.name(), "quay.io/a/b");
        assert_eq!(r.tagged_name().as_deref(), Some("quay.io/a/b:v1"));
        let d: Digest = D.parse().expect("digest");
        assert_eq!(r.digested_name(&d), format!("quay.io/a/b@{D}"));
        assert_eq!(
            r.with_registry("127.0.0.1:5000").to_string(),
            "127.0.0.1:5000/a/b:v1"
        );
    }

    #[test]
    fn refuses_what_registries_would_refuse() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "a//b",
            "foo/../bar",
            "foo/.bar",
            "foo-/bar",
            "host:port/x",
            "busy box",
            "docker.io/",
            "[::1/foo",
            "a___b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted as {:?}", parse(bad));
        }
        let long = format!("{}/x", "a".repeat(300));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn separators_in_components() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2-c3_d4"] {
            assert!(component_ok(ok), "{ok}");
        }
        for bad in ["a..b", "a_.b", "-a", "a-", "a___b", "A"] {
            assert!(!component_ok(bad), "{bad}");
        }
    }
}
