//! OCI image-layout archives (`oci-layout`, `index.json`, `blobs/sha256/*` in a tar), for
//! air-gapped nodes: `crispd image import` and `crispd image export`.
//!
//! Import trusts the archive no more than a registry: every blob is verified against
//! its digest while it is written, layers are unpacked with the same containment, and
//! an image is registered only once all of it is in place.

use std::io::{Read, Write};

use storage::{Digest, ImageRecord, Store};

use crate::error::ImageError;
use crate::install;
use crate::manifest::{
    Fetched, LayoutIndex, chain_ids, parse_config, parse_manifest, select_platform,
};
use crate::reference::{Reference, parse};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const MAX_INDEX: u64 = 4 << 20;

fn bad(reason: impl Into<String>) -> ImageError {
    ImageError::BadManifest {
        reason: reason.into(),
    }
}

/// Imports every image an OCI layout archive names. `name` names the image when the
/// archive holds exactly one and gives no full name itself.
pub fn import_layout(
    store: &Store,
    archive: impl Read,
    name: Option<&str>,
) -> Result<Vec<ImageRecord>, ImageError> {
    let mut tar = tar::Archive::new(archive);
    let mut index = None;
    let read_err = |e: std::io::Error| bad(format!("archive is not a readable tar: {e}"));
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let path = entry
            .path()
            .map_err(read_err)?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./");
        if path == "index.json" {
            if entry.size() > MAX_INDEX {
                return Err(bad("index.json is larger than 4 MiB"));
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(read_err)?;
            index = Some(bytes);
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest: Digest = format!("sha256:{hex}")
                .parse()
                .map_err(|e: storage::ContentError| bad(format!("archive entry {path}: {e}")))?;
            if store.content.contains(&digest) {
                continue;
            }
            let mut writer = store.content.writer(&digest, Some(entry.size()))?;
            std::io::copy(&mut entry, &mut writer).map_err(read_err)?;
            writer.commit().map_err(|e| match e {
                storage::ContentError::DigestMismatch { expected, actual } => {
                    ImageError::DigestMismatch {
                        what: format!("archive blob {path}"),
                        reference: "the imported archive".to_owned(),
                        expected,
                        actual,
                    }
                }
                other => other.into(),
            })?;
        }
    }
    let index = index.ok_or_else(|| bad("archive has no index.json (not an OCI image layout)"))?;
    let index: LayoutIndex = serde_json::from_slice(&index)
        .map_err(|e| bad(format!("index.json is not an OCI index: {e}")))?;
    let single = index.manifests.len() == 1;
    let mut imported = Vec::new();
    for entry in &index.manifests {
        let reference = image_name(entry, if single { name } else { None })?;
        imported.push(install_manifest(store, &entry.digest()?, &reference)?);
    }
    Ok(imported)
}

/// The name an index entry's image gets.
fn image_name(
    entry: &crate::manifest::Descriptor,
    name: Option<&str>,
) -> Result<Reference, ImageError> {
    let given = name
        .map(str::to_owned)
        .or_else(|| entry.annotations.get(CONTAINERD_NAME).cloned())
        .or_else(|| {
            entry
                .annotations
                .get(REF_NAME)
                .filter(|r| r.contains('/') || r.contains(':'))
                .cloned()
        })
        .ok_or_else(|| {
            bad(format!(
                "manifest {} has no full image name in the archive; pass --name",
                entry.digest
            ))
        })?;
    Ok(parse(&given)?)
}

fn install_manifest(
    store: &Store,
    digest: &Digest,
    reference: &Reference,
) -> Result<ImageRecord, ImageError> {
    let label = reference.to_string();
    let mut blobs = vec![digest.to_string()];
    let bytes = store.content.read(digest)?;
    let (manifest_digest, manifest) = match parse_manifest(&bytes, &label)? {
        Fetched::Image(m) => (digest.clone(), m),
        Fetched::Index(entries) => {
            let chosen = select_platform(&entries, &label)?.digest()?;
            let bytes = store.content.read(&chosen)?;
            let Fetched::Image(m) = parse_manifest(&bytes, &label)? else {
                return Err(bad(format!(
                    "{label}: an index entry points at another index"
                )));
            };
            blobs.push(chosen.to_string());
            (chosen, m)
        }
    };
    let config_digest = manifest.config.digest()?;
    let facts = parse_config(
        &store.content.read(&config_digest)?,
        manifest.layers.len(),
        &label,
    )?;
    let chains = chain_ids(&facts.diff_ids);
    let mut size = manifest.config.size()?;
    blobs.push(config_digest.to_string());
    for (i, layer) in manifest.layers.iter().enumerate() {
        let layer_digest = layer.digest()?;
        size = size.saturating_add(layer.size()?);
        blobs.push(layer_digest.to_string());
        let parent = i.checked_sub(1).map(|p| chains[p].to_string());
        install::unpack_layer(
            store,
            &layer_digest,
            &facts.diff_ids[i],
            &chains[i].to_string(),
            parent.as_deref(),
            &label,
            // An archive the operator imports is not bounded (a registry's is).
            storage::UnpackLimits::default(),
        )?;
    }
    // As for a pull: the RepoDigest is the digest the archive names (an index's own).
    let mut names: Vec<String> = reference.tagged_name().into_iter().collect();
    names.push(reference.digested_name(digest));
    install::register(
        store,
        ImageRecord {
            id: config_digest.to_string(),
            names,
            manifest_digest: manifest_digest.to_string(),
            blobs,
            chain_ids: chains.iter().map(Digest::to_string).collect(),
            size,
            pulled_at: install::now_secs(),
            user: facts.user,
        },
    )
}

/// Writes `images` (each with the name to record for it) as one OCI layout archive.
pub fn export_layout(
    store: &Store,
    images: &[(ImageRecord, String)],
    out: impl Write,
) -> Result<(), ImageError> {
    let io = |e: std::io::Error| ImageError::Internal(format!("writing the archive: {e}"));
    let mut tar = tar::Builder::new(out);
    let add = |tar: &mut tar::Builder<_>, path: &str, size: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data).map_err(io)
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    add(
        &mut tar,
        "oci-layout",
        layout.len() as u64,
        &mut &layout[..],
    )?;
    let mut manifests = Vec::new();
    let mut written = std::collections::HashSet::new();
    for (image, name) in images {
        let manifest: Digest = image
            .manifest_digest
            .parse()
            .map_err(|e: storage::ContentError| ImageError::Store(e.into()))?;
        let mut annotations = serde_json::Map::new();
        annotations.insert(CONTAINERD_NAME.to_owned(), name.clone().into());
        if let Ok(r) = parse(name)
            && let Some(tag) = r.tag()
        {
            annotations.insert(REF_NAME.to_owned(), tag.into());
        }
        manifests.push(serde_json::json!({
            "mediaType": crate::manifest::MEDIA_OCI_MANIFEST,
            "digest": manifest.to_string(),
            "size": store.content.size(&manifest)?,
            "annotations": annotations,
        }));
        for blob in &image.blobs {
            if !written.insert(blob.clone()) {
                continue;
            }
            let digest: Digest = blob
                .parse()
                .map_err(|e: storage::ContentError| ImageError::Store(e.into()))?;
            let size = store.content.size(&digest)?;
            let mut file = store.content.open_blob(&digest)?;
            add(
                &mut tar,
                &format!("blobs/sha256/{}", digest.hex()),
                size,
                &mut file,
            )?;
        }
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::manifest::MEDIA_OCI_INDEX,
        "manifests": manifests,
    }))
    .map_err(|e| ImageError::Internal(e.to_string()))?;
    add(&mut tar, "index.json", index.len() as u64, &mut &index[..])?;
    tar.into_inner().map_err(io)?.flush().map_err(io)
}
