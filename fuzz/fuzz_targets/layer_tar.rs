//! Image layers as a hostile registry would write them, applied to an empty directory:
//! applying never panics, and nothing is written outside the destination, whatever the
//! entries' paths, link targets, types and whiteouts (`..`, absolute paths, symlinks and
//! hard links out, paths through symlinks, device nodes).
//!
//! The input is either a raw layer (tar, gzip or zstd; the first byte even) or a list of
//! entries built into a tar from a small alphabet of path components (odd), which reaches
//! the interesting cases far sooner than raw bytes do.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Path components. The `crisp-fz-` names are looked for outside the destination.
const COMPONENTS: &[&str] = &[
    "crisp-fz-a",
    "crisp-fz-b",
    "..",
    ".",
    "",
    "/",
    "tmp",
    "dest",
    ".wh.crisp-fz-a",
    ".wh..wh..opq",
    "crisp-fz-l",
    "sentinel",
];

/// A file beside the destination, which the layer may name (`../sentinel`) but must
/// never change, overwrite or link to.
const SENTINEL: &str = "sentinel";
const SENTINEL_TEXT: &[u8] = b"crisp fuzz sentinel";

#[derive(Arbitrary, Debug)]
struct Entry {
    path: Vec<u8>,
    link: Vec<u8>,
    kind: u8,
    mode: u16,
    data: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Layer {
    entries: Vec<Entry>,
    compression: u8,
}

fn join(picks: &[u8]) -> Vec<u8> {
    let parts: Vec<&str> = picks
        .iter()
        .take(8)
        .map(|p| COMPONENTS[usize::from(*p) % COMPONENTS.len()])
        .collect();
    parts.join("/").into_bytes()
}

fn tar_of(layer: &Layer) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in layer.entries.iter().take(32) {
        let kind = match entry.kind % 8 {
            0 | 1 => tar::EntryType::Regular,
            2 => tar::EntryType::Directory,
            3 => tar::EntryType::Symlink,
            4 => tar::EntryType::Link,
            5 => tar::EntryType::Char,
            6 => tar::EntryType::Fifo,
            _ => tar::EntryType::Block,
        };
        let data: &[u8] = if kind == tar::EntryType::Regular {
            &entry.data[..entry.data.len().min(4096)]
        } else {
            &[]
        };
        let mut header = tar::Header::new_ustar();
        let path = join(&entry.path);
        let link = join(&entry.link);
        {
            let bytes = header.as_mut_bytes();
            let n = path.len().min(100);
            bytes[..n].copy_from_slice(&path[..n]);
            let n = link.len().min(100);
            bytes[157..157 + n].copy_from_slice(&link[..n]);
        }
        header.set_entry_type(kind);
        header.set_mode(u32::from(entry.mode));
        header.set_size(data.len() as u64);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    match layer.compression % 3 {
        0 => out,
        1 => {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&out).expect("gzip to memory");
            gz.finish().expect("gzip to memory")
        }
        _ => zstd::encode_all(out.as_slice(), 1).expect("zstd to memory"),
    }
}

/// This process's work directory, emptied before each input.
fn work() -> &'static Path {
    static WORK: OnceLock<PathBuf> = OnceLock::new();
    WORK.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("crisp-fuzz-layer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("work directory");
        std::fs::write(dir.join(SENTINEL), SENTINEL_TEXT).expect("sentinel");
        dir
    })
}

fn check_nothing_outside(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    let mut names: Vec<_> = std::fs::read_dir(root)
        .expect("work directory")
        .map(|e| e.expect("work directory entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["dest", SENTINEL],
        "the layer wrote beside its destination"
    );
    let sentinel = root.join(SENTINEL);
    assert_eq!(
        std::fs::read(&sentinel).expect("sentinel"),
        SENTINEL_TEXT,
        "the layer changed a file outside its destination"
    );
    assert_eq!(
        std::fs::symlink_metadata(&sentinel)
            .expect("sentinel")
            .nlink(),
        1,
        "the layer linked to a file outside its destination"
    );
    let parent = root
        .parent()
        .expect("the work directory has a parent")
        .to_path_buf();
    for escape in [parent.as_path(), Path::new("/")] {
        for name in COMPONENTS.iter().filter(|c| c.starts_with("crisp-fz-")) {
            let path = Path::new(escape).join(name);
            assert!(
                std::fs::symlink_metadata(&path).is_err(),
                "the layer wrote {}",
                path.display()
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let Ok(layer) = Layer::arbitrary_take_rest(Unstructured::new(rest)) else {
            return;
        };
        tar_of(&layer)
    };
    let root = work();
    let dest = root.join("dest");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir(&dest).expect("destination");
    let limits = storage::UnpackLimits {
        max_bytes: 64 << 20,
        max_ratio: 0,
        ratio_floor: 0,
    };
    let _ = storage::apply_layer_within(bytes.as_slice(), &dest, limits);
    check_nothing_outside(root);
});
