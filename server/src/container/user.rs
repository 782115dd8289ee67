//! Resolving who a container runs as: the request's `run_as_user`/`run_as_username`/
//! `run_as_group`, else the image's `USER` (`uid`, `name`, `uid:gid`, `name:group`),
//! against the image's own /etc/passwd and /etc/group.

use crate::errors::LifecycleError;
use std::path::Path;

/// The resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplemental groups (from /etc/group membership and the request).
    pub groups: Vec<u32>,
}

/// Reads a file of the rootfs, refusing symlinks (they could point at the host's files).
fn read_image_file(rootfs: &Path, rel: &str) -> String {
    let path = rootfs.join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => std::fs::read_to_string(&path).unwrap_or_default(),
        _ => String::new(),
    }
}

fn passwd_entry(passwd: &str, by: impl Fn(&str, u32) -> bool) -> Option<(String, u32, u32)> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (name, uid, gid) = (f.first()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        by(name, uid).then(|| ((*name).to_owned(), uid, gid))
    })
}

fn group_id(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (*f.first()? == name).then(|| f.get(2)?.parse().ok())?
    })
}

fn member_groups(group: &str, user: &str) -> Vec<u32> {
    group
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let gid: u32 = f.get(2)?.parse().ok()?;
            f.get(3)?.split(',').any(|m| m == user).then_some(gid)
        })
        .collect()
}

/// Resolves the identity. With `strict` (SupplementalGroupsPolicy Strict) the groups
/// the image's /etc/group gives the user are not added: only the request's.
pub fn resolve(
    rootfs: &Path,
    image_user: &str,
    run_as_user: Option<i64>,
    run_as_username: &str,
    run_as_group: Option<i64>,
    supplemental: &[i64],
    strict: bool,
) -> Result<Identity, LifecycleError> {
    let passwd = read_image_file(rootfs, "etc/passwd");
    let group = read_image_file(rootfs, "etc/group");
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let requested_user = if let Some(uid) = run_as_user {
        Some(uid.to_string())
    } else if !run_as_username.is_empty() {
        Some(run_as_username.to_owned())
    } else {
        None
    };
    let user = requested_user.as_deref().unwrap_or(user_part);
    let (name, uid, mut gid) = if user.is_empty() {
        ("root".to_owned(), 0, 0)
    } else if let Ok(uid) = user.parse::<u32>() {
        match passwd_entry(&passwd, |_, u| u == uid) {
            Some((name, _, gid)) => (name, uid, gid),
            None => (String::new(), uid, 0),
        }
    } else {
        passwd_entry(&passwd, |n, _| n == user).ok_or_else(|| {
            LifecycleError::invalid(format!("user `{user}` is not in the image's /etc/passwd"))
        })?
    };
    // The image's group part applies only when the user came from the image too.
    if requested_user.is_none()
        && let Some(g) = group_part.filter(|g| !g.is_empty())
    {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_id(&group, g).ok_or_else(|| {
                LifecycleError::invalid(format!("group `{g}` is not in the image's /etc/group"))
            })?,
        };
    }
    if let Some(g) = run_as_group {
        gid = u32::try_from(g)
            .map_err(|_| LifecycleError::invalid(format!("run_as_group {g} is out of range")))?;
    }
    let mut groups = if name.is_empty() || strict {
        Vec::new()
    } else {
        member_groups(&group, &name)
    };
    for g in supplemental {
        let g = u32::try_from(*g).map_err(|_| {
            LifecycleError::invalid(format!("supplemental group {g} is out of range"))
        })?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups.retain(|g| *g != gid);
    Ok(Identity { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\ndefault-user:x:1000:1000::/home:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwww-data:x:33:\ngroup-defined-in-image:x:50000:default-user\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn image_users_in_all_their_forms() {
        let r = rootfs();
        let id = |u: &str| resolve(r.path(), u, None, "", None, &[], false).expect(u);
        assert_eq!(
            id(""),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![]
            }
        );
        assert_eq!(
            id("1002"),
            Identity {
                uid: 1002,
                gid: 0,
                groups: vec![]
            }
        );
        assert_eq!(
            id("www-data"),
            Identity {
                uid: 33,
                gid: 33,
                groups: vec![]
            }
        );
        assert_eq!(
            id("1003:1004"),
            Identity {
                uid: 1003,
                gid: 1004,
                groups: vec![]
            }
        );
        assert_eq!(id("www-data:1004").gid, 1004);
        assert_eq!(
            id("1000").groups,
            [50000],
            "groups from /etc/group membership"
        );
        assert!(resolve(r.path(), "nobody-here", None, "", None, &[], false).is_err());
        let strict = resolve(r.path(), "1000", None, "", None, &[7], true).expect("strict");
        assert_eq!(
            strict.groups,
            [7],
            "Strict ignores the image's group membership"
        );
    }

    #[test]
    fn the_request_overrides_the_image() {
        let r = rootfs();
        let id = resolve(
            r.path(),
            "www-data",
            Some(1234),
            "",
            Some(5678),
            &[7, 8],
            false,
        )
        .expect("ok");
        assert_eq!(
            id,
            Identity {
                uid: 1234,
                gid: 5678,
                groups: vec![7, 8]
            }
        );
        let id = resolve(r.path(), "", None, "www-data", None, &[], false).expect("ok");
        assert_eq!((id.uid, id.gid), (33, 33));
    }
}
