//! Bind mounts that crisp prepares itself before the OCI runtime sees them.
//!
//! A recursive read-only mount (`Mount.recursive_read_only`) must make every mount under
//! its source read-only too, and an ID-mapped one (`Mount.uid_mappings`, for a pod in its
//! own user namespace) must show the source's files through the pod's ID mapping. runc
//! before 1.2 can do neither (no `rro`, no `idmap`), so crisp attaches a private copy of
//! the source tree, changed mount by mount with mount_setattr(2), at
//! `<bundle>/binds/<n>` (n = the mount's index in the request), and the runtime binds
//! that copy. The copies are detached once the runtime has created the
//! container (its mount namespace holds its own), or when a failed create is undone
//! ([`release`]).

use std::path::{Path, PathBuf};

use cri_proto::v1 as cri;

use crate::errors::LifecycleError;
use crate::pod::{IdRange, UsernsRecord};

/// Whether a mount asks for ID mapping.
fn idmapped(mount: &cri::Mount) -> bool {
    !mount.uid_mappings.is_empty() || !mount.gid_mappings.is_empty()
}

/// Where the prepared copy of request mount `n` is attached, if the mount needs one.
pub fn staged_source(bundle: &Path, n: usize, mount: &cri::Mount) -> Option<PathBuf> {
    (mount.recursive_read_only || idmapped(mount)).then(|| bundle.join("binds").join(n.to_string()))
}

/// Checks a mount that needs a prepared copy. ID mapping is the pod's own: the mount's
/// mappings must be the pod's. Recursive read-only needs `readonly` and private
/// propagation (a read-only copy cannot receive or send mount events).
pub fn check(mount: &cri::Mount, pod: Option<&UsernsRecord>) -> Result<(), LifecycleError> {
    let private = matches!(
        cri::MountPropagation::try_from(mount.propagation),
        Ok(cri::MountPropagation::PropagationPrivate)
    );
    if idmapped(mount) && !private {
        return Err(LifecycleError::invalid(format!(
            "mount at {}: an ID-mapped mount is a private copy and cannot propagate mounts",
            mount.container_path
        )));
    }
    if idmapped(mount) {
        let same = |maps: &[cri::IdMapping], r: Option<IdRange>| match (maps, r) {
            ([m], Some(r)) => {
                (m.container_id, m.host_id, m.length) == (r.container, r.host, r.size)
            }
            _ => false,
        };
        if !same(&mount.uid_mappings, pod.map(|u| u.uid))
            || !same(&mount.gid_mappings, pod.map(|u| u.gid))
        {
            return Err(LifecycleError::invalid(format!(
                "mount at {}: ID mappings must be the pod's user namespace mappings",
                mount.container_path
            )));
        }
    }
    if !mount.recursive_read_only {
        return Ok(());
    }
    if !mount.readonly {
        return Err(LifecycleError::invalid(format!(
            "mount at {}: recursive_read_only needs readonly",
            mount.container_path
        )));
    }
    if !private {
        return Err(LifecycleError::invalid(format!(
            "mount at {}: recursive_read_only needs private propagation",
            mount.container_path
        )));
    }
    Ok(())
}

/// Attaches the copies the request's mounts need; `userns` is the pod's pinned user
/// namespace, if it has one. On failure, the copies made so far are detached again.
pub fn stage(
    bundle: &Path,
    mounts: &[cri::Mount],
    userns: Option<(&Path, &UsernsRecord)>,
) -> Result<(), LifecycleError> {
    for (n, m) in mounts.iter().enumerate() {
        let Some(target) = staged_source(bundle, n, m) else {
            continue;
        };
        let made = check(m, userns.map(|(_, u)| u)).and_then(|()| {
            let options = storage::CloneOptions {
                recursive: true,
                read_only: m.recursive_read_only,
                idmap: userns.filter(|_| idmapped(m)).map(|(pin, _)| pin),
            };
            storage::clone_tree(Path::new(&m.host_path), &target, &options).map_err(|e| {
                let status = match e.kind() {
                    std::io::ErrorKind::NotFound => LifecycleError::invalid,
                    _ => LifecycleError::internal,
                };
                status(format!(
                    "preparing {} for {} (recursively read-only or ID-mapped): {e}",
                    m.host_path, m.container_path
                ))
            })
        });
        if let Err(status) = made {
            if let Err(e) = release(bundle) {
                tracing::error!(bundle = %bundle.display(), error = %e, "detaching prepared bind mounts");
            }
            return Err(status);
        }
    }
    Ok(())
}

/// [`release`] off the async threads, a failure logged (the copies then go when the
/// container is removed).
pub async fn release_off_thread(bundle: &Path) {
    let staged = bundle.to_owned();
    let released = crate::pod::blocking(move || {
        release(&staged).map_err(|e| LifecycleError::internal(e.to_string()))
    })
    .await;
    if let Err(e) = released {
        tracing::warn!(bundle = %bundle.display(), error = %e, "detaching prepared bind mounts");
    }
}

/// Detaches every prepared copy of a container. An error leaves the copies' directory in
/// place (deleting the bundle then would delete through a copy into the host's files).
pub fn release(bundle: &Path) -> std::io::Result<()> {
    storage::unmount_all_in(&bundle.join("binds"))
}
