//! One pull: endpoints in order, manifest (through an index if need be), config, layers
//! downloaded in parallel into the content store, unpacked in order into snapshots, and
//! the image registered in one metadata transaction at the very end, so an interrupted
//! pull registers nothing and can simply be repeated.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::secrets::RegistryAuth;
use storage::{ContentError, Digest, ImageRecord};

use crate::blocking::blocking;
use crate::error::ImageError;
use crate::images::Images;
use crate::install;
use crate::manifest::{
    ACCEPTED_MANIFEST_TYPES, Descriptor, Fetched, chain_ids, parse_config, parse_manifest,
    select_platform,
};
use crate::reference::Reference;
use crate::registry::{self, Credentials, Endpoint, classify};
use crate::scope::PullScope;

/// One endpoint's connection for the length of a pull.
struct Source<'a> {
    client: oci_client::Client,
    /// Every request, connection and headers included, gets this long to answer.
    progress_timeout: Duration,
    oci: oci_client::Reference,
    auth: RegistryAuth,
    endpoint: &'a Endpoint,
    reference: &'a Reference,
}

impl Images {
    pub(crate) async fn pull_any_endpoint(
        &self,
        reference: &Reference,
        credentials: Option<Credentials>,
        scope: &PullScope,
    ) -> Result<ImageRecord, ImageError> {
        let options = self.registry();
        let endpoints = registry::endpoints(&options, reference);
        let mut last = None;
        let mut mirror_failures = Vec::new();
        for endpoint in &endpoints {
            // The pull's own credentials are for the image's registry; mirrors use theirs.
            let creds = if endpoint.mirror {
                options.auths.get(&endpoint.host).cloned()
            } else {
                credentials
                    .clone()
                    .or_else(|| options.auths.get(&endpoint.host).cloned())
            };
            let auth = creds.map_or(RegistryAuth::Anonymous, |c| c.to_auth());
            let mut attempt = self
                .pull_from(reference, endpoint, &auth, endpoint.plain_http, scope)
                .await;
            if endpoint.insecure_tls
                && !endpoint.plain_http
                && matches!(attempt, Err(ImageError::Unavailable { .. }))
            {
                tracing::info!(registry = %endpoint.host, "TLS failed on an insecure registry; trying plain HTTP");
                attempt = self
                    .pull_from(reference, endpoint, &auth, true, scope)
                    .await;
            }
            match attempt {
                Ok(image) => return Ok(image),
                // A mirror that is down, silent, refuses us or lacks the image: the next
                // endpoint may have it.
                Err(
                    e @ (ImageError::NotFound { .. }
                    | ImageError::Unavailable { .. }
                    | ImageError::Stalled { .. }
                    | ImageError::Unauthorized { .. }),
                ) if endpoint.mirror => {
                    tracing::warn!(mirror = %endpoint.host, error = %e, "mirror failed; trying the next endpoint");
                    mirror_failures.push(format!("mirror {}: {e}", endpoint.host));
                    last = Some(e);
                }
                // The registry's own failure, with what each mirror said before it.
                Err(ImageError::Unavailable {
                    reference,
                    registry,
                    message,
                }) if !mirror_failures.is_empty() => {
                    return Err(ImageError::Unavailable {
                        reference,
                        registry,
                        message: format!("{message} (after {})", mirror_failures.join("; ")),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ImageError::Internal("no endpoint to pull from".to_owned())))
    }

    async fn pull_from(
        &self,
        reference: &Reference,
        endpoint: &Endpoint,
        auth: &RegistryAuth,
        plain_http: bool,
        scope: &PullScope,
    ) -> Result<ImageRecord, ImageError> {
        let source = Source {
            // The HTTP read timeout backs up our own progress timeout (which names the
            // blob); it must not fire first.
            client: registry::client(
                endpoint,
                self.progress_timeout + Duration::from_secs(5),
                plain_http,
            ),
            progress_timeout: self.progress_timeout,
            oci: registry::oci_reference(reference, endpoint),
            auth: auth.clone(),
            endpoint,
            reference,
        };
        tracing::info!(image = %reference, registry = %endpoint.host, "pulling");
        let mut blobs = Vec::new();

        let (bytes, top) = source.manifest(&source.oci).await?;
        if let Some(pinned) = reference.digest()
            && *pinned != top
        {
            return Err(source.mismatch("manifest", pinned.clone(), top));
        }
        let (manifest_bytes, manifest_digest) =
            match parse_manifest(&bytes, &reference.to_string())? {
                Fetched::Image(_) => (bytes, top.clone()),
                Fetched::Index(entries) => {
                    scope.blob(&top.to_string());
                    self.store_blob(&bytes, &top).await?;
                    blobs.push(top.to_string());
                    let entry = select_platform(&entries, &reference.to_string())?;
                    let wanted = entry.digest()?;
                    let by_digest = oci_client::Reference::with_digest(
                        source.oci.registry().to_owned(),
                        source.oci.repository().to_owned(),
                        wanted.to_string(),
                    );
                    let mut by_digest = by_digest;
                    if endpoint.mirror {
                        by_digest.set_mirror_registry(endpoint.host.clone());
                    }
                    let (bytes, got) = source.manifest(&by_digest).await?;
                    if got != wanted {
                        return Err(source.mismatch("platform manifest", wanted, got));
                    }
                    (bytes, got)
                }
            };
        let Fetched::Image(manifest) = parse_manifest(&manifest_bytes, &reference.to_string())?
        else {
            return Err(ImageError::BadManifest {
                reason: format!("{reference}: an index entry points at another index"),
            });
        };
        scope.blob(&manifest_digest.to_string());
        self.store_blob(&manifest_bytes, &manifest_digest).await?;
        blobs.push(manifest_digest.to_string());

        let config_digest = manifest.config.digest()?;
        scope.blob(&config_digest.to_string());
        self.fetch_blob(&source, &manifest.config, "config").await?;
        blobs.push(config_digest.to_string());
        let store = Arc::clone(&self.store);
        let cd = config_digest.clone();
        let config = blocking(move || store.content.read(&cd).map_err(ImageError::from)).await?;
        let facts = parse_config(&config, manifest.layers.len(), &reference.to_string())?;
        let diff_ids = facts.diff_ids;
        let chains = chain_ids(&diff_ids);

        // Download what is neither unpacked nor stored yet, several layers at once.
        let mut needed = Vec::new();
        for (layer, chain) in manifest.layers.iter().zip(&chains) {
            blobs.push(layer.digest()?.to_string());
            scope.blob(&layer.digest()?.to_string());
            scope.chain(&chain.to_string());
            if self
                .store
                .snapshots
                .committed(&chain.to_string())?
                .is_none()
            {
                needed.push(layer);
            }
        }
        // Collected first: a closure inside the stream type trips async_trait's Send check.
        let mut downloads = Vec::with_capacity(needed.len());
        for layer in needed {
            downloads.push(self.fetch_blob(&source, layer, "layer"));
        }
        futures::stream::iter(downloads)
            .buffer_unordered(self.max_concurrent_downloads)
            .try_collect::<Vec<()>>()
            .await?;

        let mut unpacked = 0u64;
        for (i, (layer, chain)) in manifest.layers.iter().zip(&chains).enumerate() {
            let parent = i.checked_sub(1).map(|p| chains[p].to_string());
            let Some(limits) = self.limits.next_layer(unpacked) else {
                return Err(ImageError::BadLayer {
                    layer: layer.digest()?,
                    reference: reference.to_string(),
                    source: storage::UnpackError::TooLarge {
                        reason: format!(
                            "the image's layers before it already expand to {unpacked} bytes, the image limit is {}",
                            self.limits.image_bytes
                        ),
                    },
                });
            };
            unpacked = unpacked.saturating_add(
                self.unpack(
                    reference,
                    layer.digest()?,
                    &diff_ids[i],
                    chain,
                    parent,
                    limits,
                )
                .await?,
            );
        }

        let mut size = manifest.config.size()?;
        for layer in &manifest.layers {
            size = size.saturating_add(layer.size()?);
        }
        // The RepoDigest is the digest the reference resolved to: an index's own digest
        // when there is an index (what containerd and CRI-O report), so the reference a
        // user pulled by digest finds the image again.
        let mut names: Vec<String> = reference.tagged_name().into_iter().collect();
        names.push(reference.digested_name(&top));
        let record = ImageRecord {
            id: config_digest.to_string(),
            names,
            manifest_digest: manifest_digest.to_string(),
            blobs,
            chain_ids: chains.iter().map(Digest::to_string).collect(),
            size,
            pulled_at: install::now_secs(),
            user: facts.user,
        };
        let store = Arc::clone(&self.store);
        let record = blocking(move || install::register(&store, record)).await?;
        tracing::info!(image = %reference, id = %record.id, bytes = record.size, "pulled");
        Ok(record)
    }

    async fn store_blob(&self, bytes: &[u8], digest: &Digest) -> Result<(), ImageError> {
        let store = Arc::clone(&self.store);
        let bytes = bytes.to_vec();
        let digest = digest.clone();
        blocking(move || {
            store.content.write_all(&bytes, Some(&digest))?;
            Ok(())
        })
        .await
    }

    /// Downloads a blob into the content store unless it is there, verifying it.
    async fn fetch_blob(
        &self,
        source: &Source<'_>,
        desc: &Descriptor,
        what: &str,
    ) -> Result<(), ImageError> {
        let digest = desc.digest()?;
        let size = desc.size()?;
        let lock = self.key_lock(&digest.to_string());
        let _held = lock.lock().await;
        if self.store.has_blob(&digest) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut stream = source
            .bounded(
                format!("waiting for the headers of {what} {digest}"),
                source
                    .client
                    .pull_blob_stream(&source.oci, desc.digest.as_str()),
            )
            .await?
            .map_err(|e| classify(e, source.reference, source.endpoint))?;

        // Bytes go to a blocking writer thread; the async side only moves buffers.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(32);
        let store = Arc::clone(&self.store);
        let wd = digest.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<Digest, ContentError> {
            let mut w = store.content.writer(&wd, Some(size))?;
            while let Some(chunk) = rx.blocking_recv() {
                w.write_all(&chunk).map_err(|source| ContentError::Io {
                    path: std::path::PathBuf::from(format!("ingest of {wd}")),
                    source,
                })?;
            }
            w.commit()
        });

        let mut stream_error = None;
        loop {
            match tokio::time::timeout(self.progress_timeout, source_next(&mut stream.stream)).await
            {
                Err(_) => {
                    drop(tx);
                    let _ = writer.await;
                    return Err(ImageError::Stalled {
                        reference: source.reference.to_string(),
                        waiting: format!("downloading {what} {digest}"),
                        after: self.progress_timeout,
                    });
                }
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => {
                    if tx.send(chunk).await.is_err() {
                        break; // the writer failed; its error says why
                    }
                }
                Ok(Some(Err(e))) => {
                    stream_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| ImageError::Internal(format!("blob writer failed: {e}")))?;
        match written {
            Ok(_) => {
                tracing::debug!(blob = %digest, bytes = size, elapsed = ?started.elapsed(), what, "downloaded");
                Ok(())
            }
            Err(ContentError::DigestMismatch { expected, actual }) => {
                Err(source.mismatch(what, expected, actual))
            }
            // The registry sent all it had, and it was not the blob: its data is bad
            // (DataLoss), not the registry down.
            Err(ContentError::SizeMismatch {
                expected, actual, ..
            }) if stream_error.as_ref().is_none_or(is_verification_error) => {
                match stream_error.as_ref().and_then(verification_actual) {
                    Some(wrong) => Err(source.mismatch(what, digest, wrong)),
                    None => Err(ImageError::WrongSize {
                        what: what.to_owned(),
                        reference: source.reference.to_string(),
                        blob: digest,
                        expected,
                        actual,
                    }),
                }
            }
            Err(e) => match stream_error {
                // The stream ended with the client's own digest check failing.
                Some(io) if is_verification_error(&io) => match verification_actual(&io) {
                    Some(wrong) => Err(source.mismatch(what, digest, wrong)),
                    None => Err(e.into()),
                },
                // Fewer bytes than announced because the connection broke: say so.
                Some(io) => Err(ImageError::Unavailable {
                    reference: source.reference.to_string(),
                    registry: source.endpoint.host.clone(),
                    message: format!(
                        "downloading {what} {digest}: {}",
                        registry::describe_chain(&io)
                    ),
                }),
                None => Err(e.into()),
            },
        }
    }

    /// Applies one layer as the snapshot for `chain` (once, whoever asks), checking
    /// that the uncompressed content is the diff ID the config promises.
    async fn unpack(
        &self,
        reference: &Reference,
        layer: Digest,
        diff_id: &Digest,
        chain: &Digest,
        parent: Option<String>,
        limits: storage::UnpackLimits,
    ) -> Result<u64, ImageError> {
        let lock = self.key_lock(&chain.to_string());
        let _held = lock.lock().await;
        let store = Arc::clone(&self.store);
        let (chain, diff_id, name) = (chain.to_string(), diff_id.clone(), reference.to_string());
        blocking(move || {
            install::unpack_layer(
                &store,
                &layer,
                &diff_id,
                &chain,
                parent.as_deref(),
                &name,
                limits,
            )
        })
        .await
    }
}

async fn source_next<S>(stream: &mut S) -> Option<S::Item>
where
    S: futures::Stream + Unpin,
{
    stream.next().await
}

impl Source<'_> {
    async fn manifest(&self, oci: &oci_client::Reference) -> Result<(Vec<u8>, Digest), ImageError> {
        let (bytes, _) = self
            .bounded(
                format!("waiting for the manifest {oci}"),
                self.client
                    .pull_manifest_raw(oci, &self.auth, ACCEPTED_MANIFEST_TYPES),
            )
            .await?
            .map_err(|e| classify(e, self.reference, self.endpoint))?;
        let digest = Digest::of(&bytes);
        Ok((bytes, digest))
    }

    /// `request` within the progress timeout, or Stalled saying what it waited for.
    async fn bounded<T>(
        &self,
        waiting: String,
        request: impl std::future::Future<Output = T>,
    ) -> Result<T, ImageError> {
        tokio::time::timeout(self.progress_timeout, request)
            .await
            .map_err(|_| ImageError::Stalled {
                reference: self.reference.to_string(),
                waiting,
                after: self.progress_timeout,
            })
    }

    fn mismatch(&self, what: &str, expected: Digest, actual: Digest) -> ImageError {
        ImageError::DigestMismatch {
            what: what.to_owned(),
            reference: self.reference.to_string(),
            expected,
            actual,
        }
    }
}

/// The client's own digest check, if that is what ended a blob stream.
fn verification(io: &std::io::Error) -> Option<&oci_client::errors::DigestError> {
    io.get_ref()?
        .downcast_ref::<oci_client::errors::DigestError>()
}

fn is_verification_error(io: &std::io::Error) -> bool {
    matches!(
        verification(io),
        Some(oci_client::errors::DigestError::VerificationError { .. })
    )
}

/// The digest the received bytes had, as the client's check computed it.
fn verification_actual(io: &std::io::Error) -> Option<Digest> {
    match verification(io)? {
        oci_client::errors::DigestError::VerificationError { actual, .. } => actual.parse().ok(),
        _ => None,
    }
}
