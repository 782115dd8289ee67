//! Layer application, hostile layers first. These run as root (mknod, chown, trusted xattrs).

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::*;
use crate::digest::Digest;

/// Builds a tar whose entry names are written raw, so tests can make what the tar crate's
/// builder would refuse to.
struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        let name = &mut h.as_gnu_mut().expect("gnu header").name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        h
    }

    fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let h = Self::header(tar::EntryType::Regular, path, mode, data.len() as u64);
        self.builder.append(&h, data).expect("append");
        self
    }

    fn owned_file(mut self, path: &str, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, path, 0o4755, 1);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.builder.append(&h, &b"x"[..]).expect("append");
        self
    }

    fn dir(mut self, path: &str) -> Self {
        let h = Self::header(tar::EntryType::Directory, path, 0o755, 0);
        self.builder.append(&h, std::io::empty()).expect("append");
        self
    }

    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, path, 0o777, 0);
        h.set_link_name_literal(target).expect("link name");
        h.set_cksum();
        self.builder.append(&h, std::io::empty()).expect("append");
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish tar")
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

struct Scratch {
    _dir: tempfile::TempDir,
    layer: PathBuf,
    outside: PathBuf,
}

/// A layer directory and a sibling "host" directory that nothing may touch.
fn scratch() -> Scratch {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = dir.path().join("layer");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&layer).expect("layer dir");
    std::fs::create_dir(&outside).expect("outside dir");
    Scratch {
        layer,
        outside,
        _dir: dir,
    }
}

fn assert_untouched(s: &Scratch) {
    let left: Vec<_> = std::fs::read_dir(&s.outside).expect("outside").collect();
    assert!(
        left.is_empty(),
        "something landed outside the layer: {left:?}"
    );
}

#[test]
fn files_dirs_links_modes_and_owners_are_kept() {
    let s = scratch();
    let tar = Layer::new()
        .dir("usr/")
        .dir("usr/bin/")
        .file("usr/bin/busybox", b"#!busybox", 0o755)
        .link(tar::EntryType::Link, "usr/bin/sh", "usr/bin/busybox")
        .link(tar::EntryType::Symlink, "bin", "usr/bin")
        .owned_file("usr/bin/ping", 1000, 50)
        .file("./etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .bytes();
    let stats = apply_layer(&gzip(&tar)[..], &s.layer).expect("applies");
    assert_eq!(stats.entries, 7);
    let busybox = std::fs::metadata(s.layer.join("usr/bin/busybox")).expect("busybox");
    assert_eq!(busybox.mode() & 0o7777, 0o755);
    assert_eq!(busybox.mtime(), 1_000_000);
    let sh = std::fs::metadata(s.layer.join("usr/bin/sh")).expect("sh");
    assert_eq!(sh.ino(), busybox.ino(), "hard link shares the inode");
    assert_eq!(
        std::fs::read_link(s.layer.join("bin")).expect("symlink"),
        PathBuf::from("usr/bin")
    );
    let ping = std::fs::metadata(s.layer.join("usr/bin/ping")).expect("ping");
    assert_eq!((ping.uid(), ping.gid()), (1000, 50));
    assert_eq!(ping.mode() & 0o7777, 0o4755, "setuid survives chown");
    assert_eq!(
        std::fs::read(s.layer.join("etc/passwd")).expect("passwd"),
        b"root:x:0:0::/root:/bin/sh\n"
    );
}

#[test]
fn plain_and_zstd_layers_apply_too() {
    for compress in [false, true] {
        let s = scratch();
        let tar_bytes = Layer::new().file("a", b"alpha", 0o600).bytes();
        let bytes = if compress {
            zstd::encode_all(&tar_bytes[..], 1).expect("zstd")
        } else {
            tar_bytes.clone()
        };
        let stats = apply_layer(&bytes[..], &s.layer).expect("applies");
        assert_eq!(std::fs::read(s.layer.join("a")).expect("a"), b"alpha");
        assert_eq!(
            stats.diff_id,
            Digest::of(&tar_bytes),
            "diff id is the uncompressed tar's digest"
        );
    }
}

#[test]
fn dot_dot_entries_are_refused() {
    let s = scratch();
    let tar = Layer::new().file("../outside/pwned", b"x", 0o644).bytes();
    let err = apply_layer(&tar[..], &s.layer).expect_err("escape");
    assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
    assert!(err.to_string().contains("../outside/pwned"), "{err}");
    assert_untouched(&s);
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let s = scratch();
    let tar = Layer::new()
        .link(
            tar::EntryType::Symlink,
            "evil",
            s.outside.to_str().expect("utf8"),
        )
        .file("evil/pwned", b"x", 0o644)
        .bytes();
    let err = apply_layer(&tar[..], &s.layer).expect_err("symlink traversal");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_untouched(&s);

    // The same with a relative symlink climbing out.
    let s = scratch();
    let tar = Layer::new()
        .link(tar::EntryType::Symlink, "up", "../outside")
        .file("up/pwned", b"x", 0o644)
        .bytes();
    assert!(apply_layer(&tar[..], &s.layer).is_err());
    assert_untouched(&s);
}

#[test]
fn replacing_a_symlink_never_writes_through_it() {
    let s = scratch();
    std::fs::write(s.outside.join("victim"), b"host data").expect("victim");
    let victim = s.outside.join("victim");
    let tar = Layer::new()
        .link(tar::EntryType::Symlink, "f", victim.to_str().expect("utf8"))
        .file("f", b"overwritten?", 0o644)
        .bytes();
    apply_layer(&tar[..], &s.layer).expect("a later entry replaces the symlink");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"host data");
    assert_eq!(
        std::fs::read(s.layer.join("f")).expect("f"),
        b"overwritten?"
    );
}

#[test]
fn hard_links_out_of_the_layer_are_refused() {
    for target in ["../outside/secret", "/etc/passwd", "missing"] {
        let s = scratch();
        std::fs::write(s.outside.join("secret"), b"s").expect("secret");
        let tar = Layer::new()
            .link(tar::EntryType::Link, "stolen", target)
            .bytes();
        let err = apply_layer(&tar[..], &s.layer).expect_err("link out");
        assert!(matches!(err, UnpackError::Escape { .. }), "{target}: {err}");
        assert!(!s.layer.join("stolen").exists());
        // Only the planted secret is outside, and it has one link.
        let meta = std::fs::metadata(s.outside.join("secret")).expect("secret");
        assert_eq!(meta.nlink(), 1);
    }
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let s = scratch();
    let tar = Layer::new()
        .dir("etc/")
        .file("etc/.wh.motd", b"", 0o644)
        .dir("var/cache/")
        .file("var/cache/.wh..wh..opq", b"", 0o644)
        .bytes();
    apply_layer(&tar[..], &s.layer).expect("applies");
    let motd = std::fs::symlink_metadata(s.layer.join("etc/motd")).expect("whiteout");
    assert!(motd.file_type().is_char_device());
    assert_eq!(motd.rdev(), 0);
    assert!(!s.layer.join("etc/.wh.motd").exists());
    let mut buf = [0u8; 4];
    let path = CString::new(s.layer.join("var/cache").as_os_str().as_bytes()).expect("c path");
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 1);
    assert_eq!(buf[0], b'y');
}

#[test]
fn garbage_is_a_read_error() {
    let s = scratch();
    let err = apply_layer(&b"\x1f\x8bnot really gzip"[..], &s.layer).expect_err("garbage");
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");
}

#[test]
fn a_layer_past_its_size_limit_is_refused() {
    let s = scratch();
    let tar = Layer::new()
        .file("small", &[7; 1000], 0o644)
        .file("big", &vec![1; 3 << 20], 0o644)
        .bytes();
    let limits = UnpackLimits {
        max_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    let err = apply_layer_within(&gzip(&tar)[..], &s.layer, limits).expect_err("too large");
    assert!(
        matches!(&err, UnpackError::TooLarge { reason } if reason.contains("1048576")),
        "{err:?}"
    );
    // Under the limit it applies.
    let s = scratch();
    let limits = UnpackLimits {
        max_bytes: 4 << 20,
        ..UnpackLimits::default()
    };
    apply_layer_within(&gzip(&tar)[..], &s.layer, limits).expect("within the limit");
}

#[test]
fn a_decompression_bomb_is_refused_by_its_expansion_ratio() {
    // A file of zeros past the ratio floor: gzip makes it ~1000 times smaller.
    let floor = 2 << 20;
    let size = floor + (4 << 20);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_path("zeros").expect("path");
    header.set_mode(0o644);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_000_000);
    header.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(header.as_bytes()).expect("header");
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..size / (1 << 20) {
        gz.write_all(&chunk).expect("zeros");
    }
    gz.write_all(&[0; 1024]).expect("end of archive");
    let bomb = gz.finish().expect("gzip");
    let s = scratch();
    let limits = UnpackLimits {
        max_bytes: 0,
        max_ratio: 100,
        ratio_floor: floor,
    };
    let err = apply_layer_within(&bomb[..], &s.layer, limits).expect_err("a bomb");
    assert!(
        matches!(&err, UnpackError::TooLarge { reason } if reason.contains("100-fold")),
        "{err:?}"
    );
}
