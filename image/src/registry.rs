//! Talking to registries: which endpoints to try (mirrors first), how to reach each
//! (HTTPS, unverified TLS, or plain HTTP), with which credentials, and how an
//! oci-client error reads to an operator.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use crate::error::ImageError;
use crate::reference::Reference;

/// Registry settings, rebuilt by `server` from configuration (and on SIGHUP).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryOptions {
    /// Mirror base URLs by registry host, tried in order before the registry.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Hosts reached without TLS verification (and over plain HTTP if TLS fails).
    pub insecure: Vec<String>,
    /// Credentials by registry host, for pulls that bring none.
    pub auths: BTreeMap<String, Credentials>,
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic (also used for the token service's basic challenge).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token sent as is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    pub(crate) fn to_auth(&self) -> RegistryAuth {
        match self {
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// One place to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Speak plain HTTP.
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub insecure_tls: bool,
    /// A mirror (not the reference's own registry).
    pub mirror: bool,
}

/// Whether `host[:port]` names the loopback interface.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The endpoints to try for `reference`, in order.
pub fn endpoints(options: &RegistryOptions, reference: &Reference) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for url in options
        .mirrors
        .get(reference.registry())
        .into_iter()
        .flatten()
    {
        let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
        let host = rest.split('/').next().unwrap_or_default().to_owned();
        if host.is_empty() {
            continue;
        }
        let insecure = options.insecure.contains(&host);
        out.push(Endpoint {
            plain_http: scheme == "http",
            insecure_tls: insecure,
            mirror: true,
            host,
        });
    }
    let host = reference.registry().to_owned();
    let insecure = options.insecure.contains(&host);
    out.push(Endpoint {
        plain_http: is_loopback(&host),
        insecure_tls: insecure,
        mirror: false,
        host,
    });
    out
}

/// An oci-client for one endpoint.
pub fn client(endpoint: &Endpoint, read_timeout: Duration, plain_http: bool) -> oci_client::Client {
    let config = ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: endpoint.insecure_tls,
        read_timeout: Some(read_timeout),
        connect_timeout: Some(Duration::from_secs(10)),
        // Index resolution is ours (crate::manifest::select_platform).
        platform_resolver: None,
        ..ClientConfig::default()
    };
    oci_client::Client::new(config)
}

/// The oci-client reference for `reference` fetched from `endpoint`.
pub fn oci_reference(reference: &Reference, endpoint: &Endpoint) -> oci_client::Reference {
    let registry = reference.registry().to_owned();
    let repository = reference.repository().to_owned();
    let mut oci = match (reference.tag(), reference.digest()) {
        (Some(tag), Some(d)) => oci_client::Reference::with_tag_and_digest(
            registry,
            repository,
            tag.to_owned(),
            d.to_string(),
        ),
        (None, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.to_string()),
        (tag, None) => oci_client::Reference::with_tag(
            registry,
            repository,
            tag.unwrap_or(crate::DEFAULT_TAG).to_owned(),
        ),
    };
    if endpoint.mirror {
        oci.set_mirror_registry(endpoint.host.clone());
    }
    oci
}

/// Turns an oci-client error into one an operator can act on.
pub fn classify(
    error: OciDistributionError,
    reference: &Reference,
    endpoint: &Endpoint,
) -> ImageError {
    let registry = endpoint.host.clone();
    let reference = reference.to_string();
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => ImageError::NotFound {
            reference,
            registry,
        },
        OciDistributionError::AuthenticationFailure(message) => ImageError::Unauthorized {
            reference,
            registry,
            message,
        },
        OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
            reference,
            registry,
            message: format!("401 Unauthorized for {url}; check the pull credentials"),
        },
        OciDistributionError::ServerError { code: 404, .. } => ImageError::NotFound {
            reference,
            registry,
        },
        OciDistributionError::ServerError {
            code: 401 | 403,
            url,
            message,
        } => ImageError::Unauthorized {
            reference,
            registry,
            message: format!("{url}: {message}"),
        },
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}", e.code))
                .collect();
            let text = envelope
                .errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            if codes
                .iter()
                .any(|c| c.contains("Unknown") || c == "NotFound")
            {
                ImageError::NotFound {
                    reference,
                    registry,
                }
            } else if codes.iter().any(|c| c == "Unauthorized" || c == "Denied") {
                ImageError::Unauthorized {
                    reference,
                    registry,
                    message: format!("{url}: {text}"),
                }
            } else {
                ImageError::Unavailable {
                    reference,
                    registry,
                    message: format!("{url}: {text}"),
                }
            }
        }
        other => ImageError::Unavailable {
            reference,
            registry,
            message: describe_chain(&other),
        },
    }
}

/// An error with its causes, so "connection refused" is not lost behind "request failed".
pub fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["docker.io", "10.0.0.1:5000", "registry.local:5000"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn mirrors_come_first_then_the_registry() {
        let mut options = RegistryOptions::default();
        options.mirrors.insert(
            "docker.io".into(),
            vec![
                "http://127.0.0.1:5000".into(),
                "https://mirror.example.com/v2".into(),
            ],
        );
        let r: Reference = "busybox".parse().expect("ref");
        let eps = endpoints(&options, &r);
        assert_eq!(eps.len(), 3);
        assert_eq!(
            (eps[0].host.as_str(), eps[0].plain_http, eps[0].mirror),
            ("127.0.0.1:5000", true, true)
        );
        assert_eq!(
            (eps[1].host.as_str(), eps[1].plain_http),
            ("mirror.example.com", false)
        );
        assert_eq!((eps[2].host.as_str(), eps[2].mirror), ("docker.io", false));
    }
}
