//! Applying an image layer (a tar, plain, gzip or zstd) to an empty snapshot directory.
//!
//! Layers are hostile input. Every entry is confined to the destination: a path with a
//! `..` component is refused, absolute paths are taken as relative to the layer root,
//! and no entry is ever written through a symlink (each parent component is checked
//! with `lstat` and must be a real directory). Hard links must point at something this
//! layer already put inside the destination. Symlinks are created as given and never
//! followed here; the container sees them through overlayfs, inside its own root.
//!
//! OCI whiteouts become overlayfs whiteouts: `.wh.NAME` a 0/0 character device `NAME`,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory.

use std::ffi::{CString, OsStr};
use std::fs::OpenOptions;
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::error::UnpackError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What applying a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries applied.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Digest of the uncompressed tar stream: the layer's diff ID, which the image
    /// config names and the caller must compare.
    pub diff_id: Digest,
}

/// Bounds on what one layer may expand to, checked as its uncompressed stream is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpackLimits {
    /// Uncompressed bytes the layer may have; 0 for no limit.
    pub max_bytes: u64,
    /// Uncompressed bytes per compressed byte; 0 for no limit. Checked only once the
    /// layer has expanded past `ratio_floor`: small layers of zeros are harmless.
    pub max_ratio: u64,
    /// Uncompressed bytes before the ratio is checked ([`RATIO_FLOOR`] in practice).
    pub ratio_floor: u64,
}

/// How far a layer may expand before its expansion ratio is checked.
pub const RATIO_FLOOR: u64 = 256 << 20;

/// Counts the bytes read through it (the compressed stream).
struct CountingReader<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Passes the uncompressed stream through while hashing it, and stops it (recording
/// why in `tripped`) once it goes past the limits.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    read: u64,
    compressed: std::rc::Rc<std::cell::Cell<u64>>,
    limits: UnpackLimits,
    tripped: std::rc::Rc<std::cell::Cell<Option<String>>>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        let limits = self.limits;
        let compressed = self.compressed.get().max(1);
        let why = if limits.max_bytes > 0 && self.read > limits.max_bytes {
            Some(format!(
                "it expands to more than {} bytes, the limit",
                limits.max_bytes
            ))
        } else if limits.max_ratio > 0
            && self.read > limits.ratio_floor
            && self.read / compressed > limits.max_ratio
        {
            Some(format!(
                "it expands more than {}-fold ({} bytes from {compressed}), the limit",
                limits.max_ratio, self.read
            ))
        } else {
            None
        };
        if let Some(why) = why {
            self.tripped.set(Some(why));
            return Err(std::io::Error::other("layer size limit reached"));
        }
        Ok(n)
    }
}

/// Applies the layer read from `layer` (compression sniffed from its first bytes) to
/// `dest`, which must exist and be empty.
pub fn apply_layer(layer: impl Read, dest: &Path) -> Result<UnpackStats, UnpackError> {
    apply_layer_within(layer, dest, UnpackLimits::default())
}

/// [`apply_layer`], refusing a layer that expands past `limits` (with
/// [`UnpackError::TooLarge`]; the caller removes what was written).
pub fn apply_layer_within(
    layer: impl Read,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let compressed = std::rc::Rc::new(std::cell::Cell::new(0));
    let counted = CountingReader {
        inner: layer,
        count: std::rc::Rc::clone(&compressed),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, counted);
    let magic = {
        use std::io::BufRead;
        let buf = reader
            .fill_buf()
            .map_err(|source| UnpackError::Read { source })?;
        buf.get(..4).map(<[u8]>::to_vec).unwrap_or_default()
    };
    let bounds = Bounds {
        compressed,
        limits,
        tripped: std::rc::Rc::default(),
    };
    if magic.starts_with(&[0x1f, 0x8b]) {
        apply_tar(flate2::read::GzDecoder::new(reader), dest, bounds)
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let decoder = zstd::stream::read::Decoder::with_buffer(reader)
            .map_err(|source| UnpackError::Read { source })?;
        apply_tar(decoder, dest, bounds)
    } else {
        apply_tar(reader, dest, bounds)
    }
}

/// The limits of one unpack and what tripped them.
struct Bounds {
    compressed: std::rc::Rc<std::cell::Cell<u64>>,
    limits: UnpackLimits,
    tripped: std::rc::Rc<std::cell::Cell<Option<String>>>,
}

fn apply_tar(reader: impl Read, dest: &Path, bounds: Bounds) -> Result<UnpackStats, UnpackError> {
    let tripped = std::rc::Rc::clone(&bounds.tripped);
    apply_tar_bounded(reader, dest, bounds).map_err(|e| match tripped.take() {
        // Whichever read hit the limit, and however the tar reader wrapped it: the
        // layer is too large.
        Some(reason) => UnpackError::TooLarge { reason },
        None => e,
    })
}

fn apply_tar_bounded(
    reader: impl Read,
    dest: &Path,
    bounds: Bounds,
) -> Result<UnpackStats, UnpackError> {
    let mut archive = tar::Archive::new(HashingReader {
        inner: reader,
        hasher: Hasher::default(),
        read: 0,
        compressed: bounds.compressed,
        limits: bounds.limits,
        tripped: bounds.tripped,
    });
    let mut stats = UnpackStats {
        entries: 0,
        bytes: 0,
        diff_id: Digest::of(b""),
    };
    // Directory times are set last: creating children changes them.
    let mut dir_times = Vec::new();
    let entries = archive
        .entries()
        .map_err(|source| UnpackError::Read { source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| UnpackError::Read { source })?;
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = confine(&raw)? else {
            continue; // the layer root itself
        };
        apply_entry(&mut entry, dest, &rel, &mut stats, &mut dir_times)?;
        stats.entries += 1;
    }
    for (path, mtime) in dir_times.iter().rev() {
        set_mtime(path, *mtime, false)?;
    }
    // The diff ID covers the whole stream, including the padding after the last entry.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|source| UnpackError::Read { source })?;
    stats.diff_id = rest.hasher.finish();
    Ok(stats)
}

/// The entry's path relative to the layer root, or `None` for the root itself.
fn confine(raw: &[u8]) -> Result<Option<PathBuf>, UnpackError> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape {
                    entry: String::from_utf8_lossy(raw).into_owned(),
                    reason: "its path has a `..` component".to_owned(),
                });
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Makes sure every parent of `rel` under `dest` is a real directory (creating missing
/// ones), never a symlink, and returns the full path of `rel`.
fn secure_parent(dest: &Path, rel: &Path, entry: &str) -> Result<PathBuf, UnpackError> {
    let mut current = dest.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for component in parents {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(UnpackError::Escape {
                    entry: entry.to_owned(),
                    reason: format!(
                        "its parent `{}` is a symlink, which extraction never follows",
                        current.strip_prefix(dest).unwrap_or(&current).display()
                    ),
                });
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::Invalid {
                    entry: entry.to_owned(),
                    reason: format!("its parent `{}` is not a directory", current.display()),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&current).map_err(io(&current))?;
                std::fs::set_permissions(&current, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(&current))?;
            }
            Err(e) => return Err(io(&current)(e)),
        }
    }
    Ok(dest.join(rel))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Removes whatever is at `path` (not following symlinks), so an entry replaces it.
fn clear(path: &Path, keep_dir: bool) -> Result<(), UnpackError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            if keep_dir {
                Ok(())
            } else {
                std::fs::remove_dir_all(path).map_err(io(path))
            }
        }
        Ok(_) => std::fs::remove_file(path).map_err(io(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    rel: &Path,
    stats: &mut UnpackStats,
    dir_times: &mut Vec<(PathBuf, u64)>,
) -> Result<(), UnpackError> {
    let name = rel.display().to_string();
    let target = secure_parent(dest, rel, &name)?;
    let base = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();

    // Whiteouts.
    if base == OPAQUE_MARKER.as_bytes() {
        let dir = target.parent().unwrap_or(dest);
        return set_xattr(dir, "trusted.overlay.opaque", b"y");
    }
    if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::Invalid {
                entry: name,
                reason: "whiteout of nothing".to_owned(),
            });
        }
        let whiteout = target.with_file_name(OsStr::from_bytes(hidden));
        clear(&whiteout, false)?;
        return mknod(&whiteout, libc::S_IFCHR, 0, 0);
    }

    let header = entry.header();
    let kind = header.entry_type();
    let mode = header
        .mode()
        .map_err(|source| UnpackError::Read { source })?
        & 0o7777;
    let uid = header
        .uid()
        .map_err(|source| UnpackError::Read { source })?;
    let gid = header
        .gid()
        .map_err(|source| UnpackError::Read { source })?;
    let mtime = header.mtime().unwrap_or(0);
    let (dev_major, dev_minor) = (
        header.device_major().ok().flatten().unwrap_or(0),
        header.device_minor().ok().flatten().unwrap_or(0),
    );
    let xattrs = pax_xattrs(entry)?;

    match kind {
        tar::EntryType::Directory => {
            clear(&target, true)?;
            if !target.is_dir() {
                std::fs::create_dir(&target).map_err(io(&target))?;
            }
            dir_times.push((target.clone(), mtime));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            clear(&target, false)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&target)
                .map_err(io(&target))?;
            stats.bytes += std::io::copy(entry, &mut file).map_err(io(&target))?;
        }
        tar::EntryType::Symlink => {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| UnpackError::Invalid {
                    entry: name.clone(),
                    reason: "symlink without a target".to_owned(),
                })?
                .into_owned();
            clear(&target, false)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target).map_err(io(&target))?;
        }
        tar::EntryType::Link => {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| UnpackError::Invalid {
                    entry: name.clone(),
                    reason: "hard link without a target".to_owned(),
                })?
                .into_owned();
            let link_rel = confine(&link)?.ok_or_else(|| UnpackError::Escape {
                entry: name.clone(),
                reason: "hard link to the layer root".to_owned(),
            })?;
            let source = secure_parent(dest, &link_rel, &name)?;
            match std::fs::symlink_metadata(&source) {
                Ok(meta) if !meta.is_dir() => {}
                _ => {
                    return Err(UnpackError::Escape {
                        entry: name,
                        reason: format!(
                            "hard link target `{}` is not a file this layer created",
                            link_rel.display()
                        ),
                    });
                }
            }
            clear(&target, false)?;
            // link(2) does not follow a symlink source: the link is to the symlink itself.
            std::fs::hard_link(&source, &target).map_err(io(&target))?;
            // A hard link shares the inode: its metadata is the source's.
            return Ok(());
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            clear(&target, false)?;
            let file_type = match kind {
                tar::EntryType::Char => libc::S_IFCHR,
                tar::EntryType::Block => libc::S_IFBLK,
                _ => libc::S_IFIFO,
            };
            mknod(&target, file_type, dev_major, dev_minor)?;
        }
        // Metadata-only entries the tar crate already folded into the next entry.
        tar::EntryType::XGlobalHeader
        | tar::EntryType::XHeader
        | tar::EntryType::GNULongName
        | tar::EntryType::GNULongLink => return Ok(()),
        other => {
            return Err(UnpackError::Invalid {
                entry: name,
                reason: format!("unsupported tar entry type {other:?}"),
            });
        }
    }

    std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32)).map_err(io(&target))?;
    let is_symlink = kind == tar::EntryType::Symlink;
    if !is_symlink {
        // After chown, which clears set-id bits.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .map_err(io(&target))?;
    }
    for (key, value) in xattrs {
        set_xattr(&target, &key, &value)?;
    }
    if kind != tar::EntryType::Directory {
        set_mtime(&target, mtime, is_symlink)?;
    }
    Ok(())
}

/// Extended attributes carried as PAX `SCHILY.xattr.*` records. Layers may not forge
/// overlayfs's own attributes.
fn pax_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Vec<(String, Vec<u8>)>, UnpackError> {
    let mut out = Vec::new();
    let Some(extensions) = entry
        .pax_extensions()
        .map_err(|source| UnpackError::Read { source })?
    else {
        return Ok(out);
    };
    for ext in extensions {
        let ext = ext.map_err(|source| UnpackError::Read { source })?;
        let Ok(key) = ext.key() else { continue };
        if let Some(name) = key.strip_prefix("SCHILY.xattr.")
            && !name.starts_with("trusted.overlay.")
        {
            out.push((name.to_owned(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

fn c_path(path: &Path) -> Result<CString, UnpackError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| UnpackError::Invalid {
        entry: path.display().to_string(),
        reason: "path holds a NUL byte".to_owned(),
    })
}

fn mknod(path: &Path, file_type: libc::mode_t, major: u32, minor: u32) -> Result<(), UnpackError> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path; mknod reads nothing else from memory.
    let rc = unsafe { libc::mknod(c.as_ptr(), file_type | 0o600, libc::makedev(major, minor)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io(path)(std::io::Error::last_os_error()))
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), UnpackError> {
    let c = c_path(path)?;
    let key = CString::new(name).map_err(|_| UnpackError::Invalid {
        entry: path.display().to_string(),
        reason: "xattr name holds a NUL byte".to_owned(),
    })?;
    // SAFETY: both strings are NUL-terminated; `value` is valid for `value.len()` bytes.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io(path)(std::io::Error::last_os_error()))
    }
}

fn set_mtime(path: &Path, mtime: u64, nofollow: bool) -> Result<(), UnpackError> {
    let c = c_path(path)?;
    let secs = i64::try_from(mtime).unwrap_or(i64::MAX);
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    let flags = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: `c` is NUL-terminated and `times` points at two timespecs, as required.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io(path)(std::io::Error::last_os_error()))
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
