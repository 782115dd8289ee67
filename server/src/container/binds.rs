//! Bind mounts that crisp prepares itself before the OCI runtime sees them.
//!
//! A recursive read-only mount (`Mount.recursive_read_only`) must make every mount under
//! its source read-only too. runc before 1.2 cannot (it has no `rro` option), so crisp
//! attaches a private copy of the source tree, made read-only mount by mount with
//! mount_setattr(2), at `<bundle>/binds/<n>` (n = the mount's index in the request), and
//! the runtime binds that copy. The copies are detached once the runtime has created the
//! container (its mount namespace holds its own), or when a failed create is undone
//! ([`release`]).

use std::path::{Path, PathBuf};

use cri_proto::v1 as cri;
use tonic::Status;

/// Where the prepared copy of request mount `n` is attached, if the mount needs one.
pub fn staged_source(bundle: &Path, n: usize, mount: &cri::Mount) -> Option<PathBuf> {
    mount
        .recursive_read_only
        .then(|| bundle.join("binds").join(n.to_string()))
}

/// Checks a recursive read-only request: it needs `readonly` and private propagation
/// (a read-only copy cannot receive or send mount events).
pub fn check(mount: &cri::Mount) -> Result<(), Status> {
    if !mount.recursive_read_only {
        return Ok(());
    }
    if !mount.readonly {
        return Err(Status::invalid_argument(format!(
            "mount at {}: recursive_read_only needs readonly",
            mount.container_path
        )));
    }
    let private = matches!(
        cri::MountPropagation::try_from(mount.propagation),
        Ok(cri::MountPropagation::PropagationPrivate)
    );
    if !private {
        return Err(Status::invalid_argument(format!(
            "mount at {}: recursive_read_only needs private propagation",
            mount.container_path
        )));
    }
    Ok(())
}

/// Attaches the copies the request's mounts need. On failure, the copies made so far are
/// detached again.
pub fn stage(bundle: &Path, mounts: &[cri::Mount]) -> Result<(), Status> {
    for (n, m) in mounts.iter().enumerate() {
        let Some(target) = staged_source(bundle, n, m) else {
            continue;
        };
        let made = check(m).and_then(|()| {
            let options = storage::CloneOptions {
                recursive: true,
                read_only: true,
                idmap: None,
            };
            storage::clone_tree(Path::new(&m.host_path), &target, &options).map_err(|e| {
                let status = match e.kind() {
                    std::io::ErrorKind::NotFound => Status::invalid_argument,
                    _ => Status::internal,
                };
                status(format!(
                    "making a recursively read-only copy of {} for {}: {e}",
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

/// Detaches every prepared copy of a container. An error leaves the copies' directory in
/// place (deleting the bundle then would delete through a copy into the host's files).
pub fn release(bundle: &Path) -> std::io::Result<()> {
    storage::unmount_all_in(&bundle.join("binds"))
}
