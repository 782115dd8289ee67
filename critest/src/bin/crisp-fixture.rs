//! `crisp-fixture DIR [ADDR]`: starts Debian's docker-registry on ADDR (default
//! 127.0.0.1:5000) with its storage in DIR, pushes the images critest pulls (under the
//! paths `../shared/CRITEST-IMAGES.md` lists, minus those this offline fixture cannot
//! build) plus a few for hand checks, prints what it pushed, and serves until killed.
//!
//! crispd reaches them through registry mirrors: `registry.k8s.io`, `k8s.gcr.io`,
//! `gcr.io` and `docker.io` → `http://ADDR` (see critest/crisp-critest.toml).

use std::path::PathBuf;

use critest::fixture::{self, BuiltImage, ImageBuilder, LayerBuilder, Registry};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: crisp-fixture DIR [ADDR]")?);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:5000".to_owned());
    let registry = Registry::start_at(&dir, &addr, None)?;
    let busybox = ImageBuilder::new()
        .layer(fixture::busybox_layer()?)
        .cmd(&["sh"]);
    let marked = |name: &str| {
        busybox
            .clone()
            .layer(
                LayerBuilder::new()
                    .file("etc/image-name", name.as_bytes(), 0o644)
                    .finish(),
            )
            .build()
    };
    let staging = "k8s-staging-cri-tools";
    let tags_image = marked("test-image-tags");
    let predefined_group = busybox
        .clone()
        .layer(
            LayerBuilder::new()
                .file(
                    "etc/passwd",
                    b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\ndefault-user:x:1000:1000::/home/default-user:/bin/sh\n",
                    0o644,
                )
                .file(
                    "etc/group",
                    b"root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\ngroup-defined-in-image:x:50000:default-user\n",
                    0o644,
                )
                .finish(),
        )
        .user("1000")
        .build();
    let pause = ImageBuilder::new()
        .layer(fixture::busybox_layer()?)
        .entrypoint(&["/bin/sleep", "2147483647"])
        .build();
    let images: Vec<(String, &str, BuiltImage)> = vec![
        ("library/busybox".into(), "latest", busybox.clone().build()),
        (
            "e2e-test-images/busybox".into(),
            "1.29-2",
            busybox.clone().build(),
        ),
        ("pause".into(), "3.9", pause.clone()),
        ("pause".into(), "3.10", pause),
        (
            format!("{staging}/test-image-1"),
            "latest",
            marked("test-image-1"),
        ),
        (
            format!("{staging}/test-image-2"),
            "latest",
            marked("test-image-2"),
        ),
        (
            format!("{staging}/test-image-3"),
            "latest",
            marked("test-image-3"),
        ),
        (
            format!("{staging}/test-image-latest"),
            "latest",
            marked("test-image-latest"),
        ),
        (
            format!("{staging}/test-image-tags"),
            "1",
            tags_image.clone(),
        ),
        (
            format!("{staging}/test-image-tags"),
            "2",
            tags_image.clone(),
        ),
        (format!("{staging}/test-image-tags"), "3", tags_image),
        (
            format!("{staging}/test-image-tag"),
            "test",
            marked("test-image-tag-test"),
        ),
        (
            format!("{staging}/test-image-tag"),
            "all",
            marked("test-image-tag-all"),
        ),
        (
            format!("{staging}/test-image-user-uid"),
            "latest",
            busybox.clone().user("1002").build(),
        ),
        (
            format!("{staging}/test-image-user-username"),
            "latest",
            busybox.clone().user("www-data").build(),
        ),
        (
            format!("{staging}/test-image-user-uid-group"),
            "latest",
            busybox.clone().user("1003:1004").build(),
        ),
        (
            format!("{staging}/test-image-user-username-group"),
            "latest",
            busybox.clone().user("www-data:1004").build(),
        ),
        (
            format!("{staging}/test-image-predefined-group"),
            "latest",
            predefined_group,
        ),
    ];
    for (repo, tag, image) in &images {
        let digest = fixture::push(&registry, repo, tag, image)?;
        println!("{}/{repo}:{tag} {digest} id={}", registry.addr, image.id());
    }
    println!("serving on {} (Ctrl-C stops)", registry.addr);
    loop {
        std::thread::park();
    }
}
