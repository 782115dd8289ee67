//! Manifests, image indexes and image configs as registries serve them: parsed from
//! untrusted JSON into just what a pull needs.

use serde::Deserialize;
use storage::Digest;

use crate::error::ImageError;

/// OCI and Docker media types a pull accepts for manifests.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];
/// OCI image index.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    /// Its digest, as a string (validated by [`Descriptor::digest`]).
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
    /// For index entries: the platform.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (an OCI layout's index names images here).
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Descriptor {
    /// The validated digest.
    pub fn digest(&self) -> Result<Digest, ImageError> {
        self.digest
            .parse()
            .map_err(|e: storage::ContentError| ImageError::BadManifest {
                reason: e.to_string(),
            })
    }

    /// The size, which must not be negative.
    pub fn size(&self) -> Result<u64, ImageError> {
        u64::try_from(self.size).map_err(|_| ImageError::BadManifest {
            reason: format!("descriptor {} has a negative size", self.digest),
        })
    }
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8` for arm64; usually absent for amd64.
    #[serde(default)]
    pub variant: Option<String>,
}

/// What a manifest fetch can turn out to be.
#[derive(Debug)]
pub enum Fetched {
    /// A multi-platform index: pick one entry.
    Index(Vec<Descriptor>),
    /// An image manifest.
    Image(ImageManifest),
}

/// An OCI layout's `index.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct LayoutIndex {
    /// The images (or indexes) the layout holds.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest: config and layers.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageManifest {
    /// The config blob.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Parses a manifest or index. Schema 1 manifests are refused: they carry no content
/// digests for layers and no config, and registries stopped serving them.
pub fn parse_manifest(bytes: &[u8], reference: &str) -> Result<Fetched, ImageError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| ImageError::BadManifest {
        reason: format!("manifest of {reference} is not valid JSON: {e}"),
    })?;
    if probe.schema_version == Some(1)
        || probe
            .media_type
            .as_deref()
            .is_some_and(|m| m.starts_with("application/vnd.docker.distribution.manifest.v1"))
    {
        return Err(ImageError::Schema1 {
            reference: reference.to_owned(),
        });
    }
    if probe.schema_version != Some(2) {
        return Err(ImageError::BadManifest {
            reason: format!(
                "manifest of {reference} has unsupported schemaVersion {:?}",
                probe.schema_version
            ),
        });
    }
    match (probe.manifests, probe.config, probe.layers) {
        (Some(manifests), None, _) => Ok(Fetched::Index(manifests)),
        (None, Some(config), Some(layers)) => Ok(Fetched::Image(ImageManifest { config, layers })),
        _ => Err(ImageError::BadManifest {
            reason: format!("manifest of {reference} is neither an image manifest nor an index"),
        }),
    }
}

/// The node's platform: linux/amd64 (variant-aware: an entry without a variant or with
/// `v1` matches plain amd64; higher micro-architecture levels are not assumed).
pub fn select_platform<'a>(
    entries: &'a [Descriptor],
    reference: &str,
) -> Result<&'a Descriptor, ImageError> {
    let wanted_arch = std::env::consts::ARCH;
    let arch = match wanted_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let matches = |d: &&Descriptor| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == "linux"
                && p.architecture == arch
                && matches!(
                    (arch, p.variant.as_deref()),
                    ("amd64", Some("v1")) | ("arm64", Some("v8")) | (_, None)
                )
        })
    };
    entries.iter().find(matches).ok_or_else(|| {
        let offered: Vec<String> = entries
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        ImageError::NoMatchingPlatform {
            reference: reference.to_owned(),
            wanted: format!("linux/{arch}"),
            offered: offered.join(", "),
        }
    })
}

/// What a pull needs from the image config.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfigSummary {
    /// The layer list in uncompressed form.
    pub rootfs: RootFs,
    /// The runtime defaults; only `User` matters here.
    #[serde(default)]
    pub config: Option<RunConfig>,
}

/// The `config` object of an image config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunConfig {
    /// `USER` of the image.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// The parts of an image config a pull records.
#[derive(Debug, Clone)]
pub struct ConfigFacts {
    /// Diff IDs, bottom first.
    pub diff_ids: Vec<Digest>,
    /// The image's user, empty if unset.
    pub user: String,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<String>,
}

/// Parses the config far enough to get the diff IDs (checking they match the layers)
/// and the user.
pub fn parse_config(
    bytes: &[u8],
    layers: usize,
    reference: &str,
) -> Result<ConfigFacts, ImageError> {
    let config: ImageConfigSummary =
        serde_json::from_slice(bytes).map_err(|e| ImageError::BadManifest {
            reason: format!("config of {reference} is not a valid image config: {e}"),
        })?;
    if config.rootfs.diff_ids.len() != layers {
        return Err(ImageError::BadManifest {
            reason: format!(
                "config of {reference} lists {} layers but the manifest has {layers}",
                config.rootfs.diff_ids.len()
            ),
        });
    }
    let diff_ids = config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| {
            d.parse()
                .map_err(|e: storage::ContentError| ImageError::BadManifest {
                    reason: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(ConfigFacts {
        diff_ids,
        user: config.config.and_then(|c| c.user).unwrap_or_default(),
    })
}

/// Chain IDs (OCI image spec): the first is the first diff ID; each next one is
/// `sha256(parent_chain + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn schema1_is_refused_clearly() {
        let err = parse_manifest(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#, "x:1")
            .expect_err("schema 1");
        assert!(err.to_string().contains("schema 1"), "{err}");
        let oci = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_MANIFEST}","config":{{"digest":"{D1}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse_manifest(oci.as_bytes(), "x").expect("oci"),
            Fetched::Image(_)
        ));
    }

    #[test]
    fn index_entries_resolve_to_linux_amd64() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_INDEX}","manifests":[
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let Fetched::Index(entries) = parse_manifest(index.as_bytes(), "x").expect("index") else {
            panic!("not an index");
        };
        assert_eq!(select_platform(&entries, "x").expect("amd64").digest, D2);
        let err = select_platform(&entries[..1], "x").expect_err("arm only");
        assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
    }

    #[test]
    fn config_layers_must_match_the_manifest() {
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{D1}","{D2}"]}}}}"#);
        assert_eq!(
            parse_config(config.as_bytes(), 2, "x")
                .expect("ok")
                .diff_ids
                .len(),
            2
        );
        assert!(parse_config(config.as_bytes(), 3, "x").is_err());
        assert!(parse_config(b"[]", 0, "x").is_err());
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let diffs: Vec<Digest> = [D1, D2]
            .iter()
            .map(|d| d.parse().expect("digest"))
            .collect();
        let chains = chain_ids(&diffs);
        assert_eq!(chains[0], diffs[0]);
        assert_eq!(chains[1], Digest::of(format!("{D1} {D2}").as_bytes()));
    }
}
