//! ImageService against a real local registry (Debian's docker-registry on loopback),
//! holding images built from busybox-static by the critest fixture.

mod common;

use std::path::Path;

use common::Sandbox;
use cri_proto::v1 as cri;
use critest::fixture::{self, ImageBuilder, LayerBuilder, Registry};

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

fn pull_request(image: &str) -> cri::PullImageRequest {
    cri::PullImageRequest {
        image: spec(image),
        ..Default::default()
    }
}

fn busybox() -> ImageBuilder {
    ImageBuilder::new()
        .layer(fixture::busybox_layer().expect("busybox-static is installed (/bin/busybox)"))
        .cmd(&["sh"])
}

/// Files under `dir`, recursively (to prove nothing was left behind).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                1 + count_files(&path)
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_and_remove_by_tag_and_by_digest() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let image = busybox()
        .layer(
            LayerBuilder::new()
                .file("etc/motd", b"crisp\n", 0o644)
                .finish(),
        )
        .user("1002")
        .build();
    let manifest = fixture::push(&registry, "e2e/busybox", "1.29-2", &image).expect("push");
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let name = format!("{}/e2e/busybox:1.29-2", registry.addr);

    let pulled = images
        .pull_image(pull_request(&name))
        .await
        .expect("pull")
        .into_inner();
    assert_eq!(pulled.image_ref, image.id());

    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1);
    let listed = &listed[0];
    assert_eq!(listed.id, image.id());
    assert_eq!(listed.repo_tags, std::slice::from_ref(&name));
    assert_eq!(
        listed.repo_digests,
        [format!("{}/e2e/busybox@{manifest}", registry.addr)]
    );
    assert_eq!(listed.uid.as_ref().map(|u| u.value), Some(1002));
    let layers: u64 = image.layers.iter().map(|l| l.len() as u64).sum();
    assert_eq!(listed.size, layers + image.config.len() as u64);

    // Status by tag, by ID and by digest all find it; verbose carries the config.
    for by in [
        name.clone(),
        image.id(),
        format!("{}/e2e/busybox@{manifest}", registry.addr),
    ] {
        let status = images
            .image_status(cri::ImageStatusRequest {
                image: spec(&by),
                verbose: true,
            })
            .await
            .expect("status")
            .into_inner();
        assert_eq!(status.image.map(|i| i.id), Some(image.id()), "{by}");
        let info: serde_json::Value =
            serde_json::from_str(status.info.get("info").expect("verbose info")).expect("JSON");
        assert_eq!(info["imageSpec"]["config"]["User"], "1002");
    }

    // Pulling by digest finds the same image and adds no tag.
    let by_digest = format!("{}/e2e/busybox@{manifest}", registry.addr);
    let again = images
        .pull_image(pull_request(&by_digest))
        .await
        .expect("pull by digest")
        .into_inner();
    assert_eq!(again.image_ref, image.id());

    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("fsinfo")
        .into_inner();
    let used = fs.image_filesystems[0]
        .used_bytes
        .as_ref()
        .map_or(0, |u| u.value);
    assert!(used > 900_000, "busybox-static alone is ~1 MB, got {used}");

    images
        .remove_image(cri::RemoveImageRequest { image: spec(&name) })
        .await
        .expect("remove");
    let status = images
        .image_status(cri::ImageStatusRequest {
            image: spec(&image.id()),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner();
    assert!(status.image.is_none(), "untagged with no tag left: removed");
    // Removing again, or something never pulled, is not an error.
    images
        .remove_image(cri::RemoveImageRequest { image: spec(&name) })
        .await
        .expect("remove again");
    // Garbage collection removed blobs and snapshots.
    assert_eq!(count_files(&sandbox.path("root/content/blobs/sha256")), 0);
    assert_eq!(count_files(&sandbox.path("root/snapshots")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tags_untag_one_at_a_time() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let image = busybox().build();
    for tag in ["1", "2", "3"] {
        fixture::push(&registry, "test-image-tags", tag, &image).expect("push");
    }
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    for tag in ["1", "2", "3"] {
        let name = format!("{}/test-image-tags:{tag}", registry.addr);
        images.pull_image(pull_request(&name)).await.expect("pull");
    }
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].repo_tags.len(), 3);

    let first = format!("{}/test-image-tags:1", registry.addr);
    images
        .remove_image(cri::RemoveImageRequest {
            image: spec(&first),
        })
        .await
        .expect("untag");
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed[0].repo_tags.len(), 2, "{:?}", listed[0].repo_tags);

    // By ID, everything goes.
    images
        .remove_image(cri::RemoveImageRequest {
            image: spec(&image.id()),
        })
        .await
        .expect("remove");
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert!(listed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_each_blob_once() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let image = busybox().build();
    fixture::push(&registry, "shared", "a", &image).expect("push");
    let daemon = sandbox.start();
    let (_, images) = daemon.clients().await;
    let name = format!("{}/shared:a", registry.addr);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut client = images.clone();
        let request = pull_request(&name);
        tasks.push(tokio::spawn(
            async move { client.pull_image(request).await },
        ));
    }
    for task in tasks {
        let response = task.await.expect("task").expect("pull").into_inner();
        assert_eq!(response.image_ref, image.id());
    }
    let layer = fixture::digest(&image.layers[0]);
    assert_eq!(
        registry.blob_gets(&layer),
        1,
        "the layer was downloaded once"
    );
}

/// `multi:<tag>`: an index over busybox for amd64 and a one-file arm64 image; the amd64
/// image and the index's digest.
fn push_multi_arch(registry: &Registry, tag: &str) -> (fixture::BuiltImage, String) {
    let amd64 = busybox().build();
    let arm64 = ImageBuilder::new()
        .layer(LayerBuilder::new().file("arch", b"arm64", 0o644).finish())
        .arch("arm64")
        .build();
    let index =
        fixture::push_index(registry, "multi", tag, &[arm64, amd64.clone()]).expect("push index");
    (amd64, index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_resolves_to_linux_amd64() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let (amd64, _) = push_multi_arch(&registry, "latest");
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let pulled = images
        .pull_image(pull_request(&format!("{}/multi", registry.addr)))
        .await
        .expect("pull")
        .into_inner();
    assert_eq!(pulled.image_ref, amd64.id());
}

async fn status_of(
    images: &mut cri::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    by: &str,
) -> Result<Option<cri::Image>, tonic::Status> {
    images
        .image_status(cri::ImageStatusRequest {
            image: spec(by),
            verbose: false,
        })
        .await
        .map(|r| r.into_inner().image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_pulled_by_its_digest_is_found_listed_and_removed_by_it() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let (amd64, index) = push_multi_arch(&registry, "v1");
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let by_digest = format!("{}/multi@{index}", registry.addr);
    let pulled = images
        .pull_image(pull_request(&by_digest))
        .await
        .expect("pull by index digest")
        .into_inner();
    assert_eq!(pulled.image_ref, amd64.id());

    // The reference the user pulled finds the image; RepoDigests carries exactly it, as
    // containerd and CRI-O report it (critest's "public image with digest" checks this).
    let found = status_of(&mut images, &by_digest)
        .await
        .expect("status")
        .expect("found by the index digest");
    assert_eq!(found.id, amd64.id());
    assert!(found.repo_tags.is_empty(), "{found:?}");
    assert_eq!(found.repo_digests, std::slice::from_ref(&by_digest));
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].repo_digests, std::slice::from_ref(&by_digest));

    // Pulling the platform manifest's own digest finds the same image too.
    let by_platform = format!("{}/multi@{}", registry.addr, amd64.manifest_digest());
    images
        .pull_image(pull_request(&by_platform))
        .await
        .expect("pull by platform digest");
    let found = status_of(&mut images, &by_platform)
        .await
        .expect("status")
        .expect("found by the platform digest");
    assert_eq!(found.id, amd64.id());

    // Removing by the index digest untags that name; the platform one keeps the image
    // until it goes too.
    for name in [&by_digest, &by_platform] {
        images
            .remove_image(cri::RemoveImageRequest { image: spec(name) })
            .await
            .expect("remove by digest");
        assert_eq!(status_of(&mut images, name).await.expect("status"), None);
    }
    assert_eq!(
        status_of(&mut images, &amd64.id()).await.expect("status"),
        None
    );
    assert_eq!(count_files(&sandbox.path("root/snapshots")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_image_ids_resolve_when_unique_and_are_refused_when_ambiguous() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    // Seventeen images: by pigeonhole, two IDs share their first hex digit.
    let mut ids = Vec::new();
    for n in 0..17 {
        let image = busybox().env(&format!("N={n}")).build();
        fixture::push(&registry, "short", &n.to_string(), &image).expect("push");
        ids.push(image.id());
    }
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    for n in 0..17 {
        images
            .pull_image(pull_request(&format!("{}/short:{n}", registry.addr)))
            .await
            .expect("pull");
    }
    let hex = |id: &str| id.trim_start_matches("sha256:").to_owned();

    // crictl's 13-digit prefix (the shortest unique one here is at most that long).
    let unique = hex(&ids[0])[..13].to_owned();
    for by in [
        unique.clone(),
        format!("sha256:{unique}"),
        unique.to_uppercase(),
    ] {
        let found = status_of(&mut images, &by)
            .await
            .expect("status")
            .unwrap_or_else(|| panic!("{by} not found"));
        assert_eq!(found.id, ids[0], "{by}");
    }

    // A prefix two images share: InvalidArgument naming how many.
    let shared = (0..ids.len())
        .flat_map(|a| (a + 1..ids.len()).map(move |b| (a, b)))
        .find_map(|(a, b)| {
            let (x, y) = (hex(&ids[a]), hex(&ids[b]));
            let common = x.bytes().zip(y.bytes()).take_while(|(p, q)| p == q).count();
            (common > 0).then(|| x[..common].to_owned())
        })
        .expect("two IDs share a prefix");
    let count = ids.iter().filter(|id| hex(id).starts_with(&shared)).count();
    let err = status_of(&mut images, &shared)
        .await
        .expect_err("ambiguous prefix");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&format!("{count} images")),
        "{}",
        err.message()
    );
    let err = images
        .remove_image(cri::RemoveImageRequest {
            image: spec(&shared),
        })
        .await
        .expect_err("an ambiguous prefix removes nothing");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 17);

    // `crictl rmi <short id>` removes that image.
    images
        .remove_image(cri::RemoveImageRequest {
            image: spec(&unique),
        })
        .await
        .expect("remove by short ID");
    assert_eq!(status_of(&mut images, &ids[0]).await.expect("status"), None);
    // A prefix no image has is "not present", not an error.
    let absent = (0..16)
        .map(|d| format!("{d:x}{}", "0".repeat(40)))
        .find(|p| !ids.iter().any(|id| hex(id).starts_with(p.as_str())))
        .expect("a free prefix");
    assert_eq!(status_of(&mut images, &absent).await.expect("status"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_serve_docker_hub_names() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let image = busybox().build();
    fixture::push(&registry, "library/busybox", "fixture", &image).expect("push");
    // A dead mirror first: crisp moves on to the next endpoint.
    sandbox.write_config(&format!(
        "[registry.mirrors.\"docker.io\"]\nendpoints = [\"http://127.0.0.1:9\", \"http://{}\"]\n",
        registry.addr
    ));
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let pulled = images
        .pull_image(pull_request("busybox:fixture"))
        .await
        .expect("pull")
        .into_inner();
    assert_eq!(pulled.image_ref, image.id());
    let status = images
        .image_status(cri::ImageStatusRequest {
            image: spec("docker.io/library/busybox:fixture"),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        status.image.map(|i| i.repo_tags),
        Some(vec!["docker.io/library/busybox:fixture".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_required_and_used() {
    let sandbox = Sandbox::new("");
    let registry =
        Registry::start(&sandbox.path("registry"), Some(("alice", "s3cret"))).expect("registry");
    let image = busybox().build();
    fixture::push(&registry, "private/app", "v1", &image).expect("push");
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let name = format!("{}/private/app:v1", registry.addr);

    let denied = images
        .pull_image(pull_request(&name))
        .await
        .expect_err("no credentials");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    let wrong = cri::PullImageRequest {
        image: spec(&name),
        auth: Some(cri::AuthConfig {
            username: "alice".into(),
            password: "wrong".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = images.pull_image(wrong).await.expect_err("wrong password");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    let right = cri::PullImageRequest {
        image: spec(&name),
        auth: Some(cri::AuthConfig {
            // The `auth` form: base64 of user:password.
            auth: "YWxpY2U6czNjcmV0".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pulled = images
        .pull_image(right)
        .await
        .expect("pull with credentials")
        .into_inner();
    assert_eq!(pulled.image_ref, image.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_blob_fails_the_pull_and_registers_nothing() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let image = busybox().build();
    fixture::push(&registry, "corrupt", "v1", &image).expect("push");
    // Flip bytes in the layer as the registry stores it (same length, wrong content).
    let layer = fixture::digest(&image.layers[0]);
    let path = registry.blob_data_path(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).expect("blob data");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).expect("tamper");

    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let err = images
        .pull_image(pull_request(&format!("{}/corrupt:v1", registry.addr)))
        .await
        .expect_err("corrupt layer");
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert!(err.message().contains(&layer), "{}", err.message());
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert!(listed.is_empty());
    assert!(
        !sandbox
            .path("root/content/blobs/sha256")
            .join(layer.trim_start_matches("sha256:"))
            .exists()
    );
    assert_eq!(count_files(&sandbox.path("root/content/ingest")), 0);

    // Wrong content of another length (the registry serves what it stores, with that
    // length): still the registry's bad data, not an outage.
    let other = busybox().env("COPY=2").build();
    fixture::push(&registry, "short", "v1", &other).expect("push");
    let layer = fixture::digest(&other.layers[0]);
    let path = registry.blob_data_path(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).expect("blob data");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, bytes).expect("tamper");
    let err = images
        .pull_image(pull_request(&format!("{}/short:v1", registry.addr)))
        .await
        .expect_err("truncated layer");
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert_eq!(count_files(&sandbox.path("root/content/ingest")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_refused_and_touch_nothing_outside() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let outside = sandbox.path("host");
    std::fs::create_dir_all(&outside).expect("host dir");
    let target = outside.join("pwned");
    let hostile = [
        (
            "dotdot",
            LayerBuilder::new()
                .file("../../../../../../../../tmp/crisp-pwned", b"x", 0o644)
                .finish(),
        ),
        (
            "symlink",
            LayerBuilder::new()
                .symlink("escape", outside.to_str().expect("utf8 path"))
                .file("escape/pwned", b"x", 0o644)
                .finish(),
        ),
        (
            "hardlink",
            LayerBuilder::new()
                .hardlink("passwd", "../../../../../../etc/passwd")
                .finish(),
        ),
    ];
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    for (name, layer) in hostile {
        let image = ImageBuilder::new().layer(layer).build();
        fixture::push(&registry, &format!("hostile/{name}"), "v1", &image).expect("push");
        let repo = format!("hostile/{name}");
        let err = pull_refused(
            &mut images,
            &registry,
            &repo,
            tonic::Code::FailedPrecondition,
        )
        .await;
        assert!(
            err.message().contains("refused"),
            "{name}: {}",
            err.message()
        );
    }
    assert!(!target.exists());
    assert!(!Path::new("/tmp/crisp-pwned").exists());
    assert_eq!(count_files(&outside), 0);
    assert_eq!(
        count_files(&sandbox.path("root/snapshots")),
        0,
        "no half-made snapshot"
    );
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert!(listed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_and_missing_images_get_precise_codes() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;

    let err = images
        .pull_image(pull_request("Not/A/Valid:Ref!"))
        .await
        .expect_err("bad ref");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = images
        .pull_image(pull_request(""))
        .await
        .expect_err("empty");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let err = images
        .pull_image(pull_request(&format!("{}/nothing/here:v1", registry.addr)))
        .await
        .expect_err("missing");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let err = images
        .pull_image(pull_request("127.0.0.1:9/x:y"))
        .await
        .expect_err("nobody listens");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    let status = images
        .image_status(cri::ImageStatusRequest {
            image: spec("never/pulled:1"),
            verbose: false,
        })
        .await
        .expect("status of an absent image is not an error")
        .into_inner();
    assert!(status.image.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_a_restart() {
    let sandbox = Sandbox::new("");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let image = busybox().build();
    fixture::push(&registry, "persist", "v1", &image).expect("push");
    let name = format!("{}/persist:v1", registry.addr);
    {
        let daemon = sandbox.start();
        let (_, mut images) = daemon.clients().await;
        images.pull_image(pull_request(&name)).await.expect("pull");
        let (status, _) = daemon.stop();
        assert!(status.success());
    }
    drop(registry);
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let status = images
        .image_status(cri::ImageStatusRequest {
            image: spec(&name),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.image.map(|i| i.id), Some(image.id()));
}

/// Bytes that do not compress, quickly (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_pull_leaves_a_consistent_store() {
    let sandbox = Sandbox::new("[image]\nmax_concurrent_downloads = 1\n");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    let mut builder = busybox();
    for i in 0..4 {
        builder = builder.layer(
            LayerBuilder::new()
                .file(&format!("data/{i}"), &noise(16 << 20, i + 1), 0o644)
                .finish(),
        );
    }
    let image = builder.build();
    fixture::push(&registry, "big", "v1", &image).expect("push");
    let name = format!("{}/big:v1", registry.addr);

    let daemon = sandbox.start();
    let (_, images) = daemon.clients().await;
    let mut client = images.clone();
    let request = pull_request(&name);
    let pull = tokio::spawn(async move { client.pull_image(request).await });
    // Wait until the pull is under way: blobs arriving or a snapshot being built.
    let ingest = sandbox.path("root/content/ingest");
    let blobs = sandbox.path("root/content/blobs/sha256");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count_files(&ingest) == 0 && count_files(&blobs) < 3 {
        assert!(std::time::Instant::now() < deadline, "pull never started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    daemon.kill();
    let _ = pull.await;

    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert!(
        listed.is_empty(),
        "a half-pulled image was registered: {listed:?}"
    );
    assert_eq!(count_files(&ingest), 0, "partial downloads were cleaned");
    let leftovers: Vec<_> = std::fs::read_dir(sandbox.path("root/snapshots"))
        .expect("snapshots dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "unreferenced snapshots after restart: {leftovers:?}"
    );

    // And the pull can simply be repeated.
    let pulled = images
        .pull_image(pull_request(&name))
        .await
        .expect("pull again")
        .into_inner();
    assert_eq!(pulled.image_ref, image.id());
}

/// A registry of our own that serves one image but stalls in the middle of its layer,
/// to exercise the progress and overall pull timeouts.
fn stalling_registry(image: &fixture::BuiltImage) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let manifest = image.manifest.clone();
    let config = image.config.clone();
    let layer = image.layers[0].clone();
    let (config_digest, layer_digest) = (fixture::digest(&config), fixture::digest(&layer));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (manifest, config, layer) = (manifest.clone(), config.clone(), layer.clone());
            let (config_digest, layer_digest) = (config_digest.clone(), layer_digest.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut stream = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    // Skip headers.
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let (ctype, body, stall) = if path.contains("/manifests/") {
                        (fixture::image::OCI_MANIFEST, manifest.clone(), false)
                    } else if path.ends_with(&config_digest) {
                        ("application/octet-stream", config.clone(), false)
                    } else if path.ends_with(&layer_digest) {
                        ("application/octet-stream", layer.clone(), true)
                    } else {
                        ("application/json", b"{}".to_vec(), false)
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    if stall {
                        let _ = stream.write_all(&body[..body.len() / 2]);
                        let _ = stream.flush();
                        std::thread::sleep(std::time::Duration::from_secs(60));
                        return;
                    }
                    if stream.write_all(&body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_and_a_slow_pull_are_aborted_clearly() {
    let image = busybox().build();
    let addr = stalling_registry(&image);

    let sandbox = Sandbox::new("[image]\npull_progress_timeout = \"1s\"\n");
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let err = images
        .pull_image(pull_request(&format!("{addr}/stall:v1")))
        .await
        .expect_err("stalls");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("made no progress"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains(&fixture::digest(&image.layers[0])),
        "{}",
        err.message()
    );
    assert_eq!(count_files(&sandbox.path("root/content/ingest")), 0);
    drop(daemon);

    let sandbox = Sandbox::new("[image]\npull_progress_timeout = \"30s\"\npull_timeout = \"1s\"\n");
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let err = images
        .pull_image(pull_request(&format!("{addr}/stall:v1")))
        .await
        .expect_err("too slow");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("did not finish within"),
        "{}",
        err.message()
    );
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert!(listed.is_empty());
}

/// A registry that accepts connections and never answers.
fn silent_registry() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().flatten() {
            open.push(stream);
            if open.len() > 64 {
                return;
            }
        }
    });
    (addr, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_never_answers_fails_within_the_progress_timeout() {
    let (addr, _held) = silent_registry();
    let sandbox = Sandbox::new("[image]\npull_progress_timeout = \"2s\"\n");
    let daemon = sandbox.start();
    let (_, images) = daemon.clients().await;
    // Several at once: each fails on its own timeout, none waits behind another.
    let pulls: Vec<_> = (0..4)
        .map(|n| {
            let mut images = images.clone();
            let name = format!("{addr}/silent:v{n}");
            tokio::spawn(async move { images.pull_image(pull_request(&name)).await })
        })
        .collect();
    for pull in pulls {
        let err = pull.await.expect("join").expect_err("never answers");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        assert!(
            err.message().contains("made no progress"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("manifest"), "{}", err.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_an_oci_layout_for_air_gapped_nodes() {
    let source = Sandbox::new("");
    let registry = Registry::start(&source.path("registry"), None).expect("registry");
    let image = busybox()
        .layer(
            LayerBuilder::new()
                .file("etc/motd", b"offline\n", 0o644)
                .finish(),
        )
        .user("www-data")
        .build();
    fixture::push(&registry, "airgap/app", "v2", &image).expect("push");
    let name = format!("{}/airgap/app:v2", registry.addr);
    let archive = source.path("app.tar");
    {
        let daemon = source.start();
        let (_, mut images) = daemon.clients().await;
        images.pull_image(pull_request(&name)).await.expect("pull");
        // The store is the daemon's while it runs.
        let (status, _, stderr) =
            source.run(&["image", "export", &name, archive.to_str().expect("utf8")]);
        assert!(!status.success());
        assert!(stderr.contains("already running"), "{stderr}");
        daemon.stop();
    }
    let (status, stdout, stderr) =
        source.run(&["image", "export", &name, archive.to_str().expect("utf8")]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&image.id()), "{stdout}");
    drop(registry);

    let target = Sandbox::new("");
    let (status, stdout, stderr) =
        target.run(&["image", "import", archive.to_str().expect("utf8")]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&image.id()), "{stdout}");
    let daemon = target.start();
    let (_, mut images) = daemon.clients().await;
    let status = images
        .image_status(cri::ImageStatusRequest {
            image: spec(&name),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner();
    let found = status.image.expect("imported image is there");
    assert_eq!(found.id, image.id());
    assert_eq!(found.username, "www-data");
    assert_eq!(found.repo_tags, [name]);
}

#[test]
fn a_tampered_archive_is_refused_and_registers_nothing() {
    let sandbox = Sandbox::new("");
    let image = busybox().build();
    // A layout whose manifest blob is stored under a digest it does not have.
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data).expect("append");
    };
    let claimed = fixture::digest(&image.manifest);
    let mut forged = image.manifest.clone();
    forged.push(b' ');
    add(
        &format!("blobs/sha256/{}", claimed.trim_start_matches("sha256:")),
        &forged,
    );
    add(
        "index.json",
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{claimed}","size":1}}]}}"#).as_bytes(),
    );
    let bytes = tar.into_inner().expect("tar");
    let archive = sandbox.path("bad.tar");
    std::fs::write(&archive, bytes).expect("write");
    let (status, _, stderr) = sandbox.run(&[
        "image",
        "import",
        archive.to_str().expect("utf8"),
        "--name",
        "x/y:z",
    ]);
    assert!(!status.success());
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert_eq!(count_files(&sandbox.path("root/content/blobs/sha256")), 0);
}

/// Pushes `repo:v1`, an image of one layer per file (name, contents).
fn push_files(registry: &Registry, repo: &str, files: &[(&str, Vec<u8>)]) {
    let mut image = ImageBuilder::new();
    for (name, data) in files {
        image = image.layer(LayerBuilder::new().file(name, data, 0o644).finish());
    }
    fixture::push(registry, repo, "v1", &image.build()).expect("push");
}

/// Pulls `repo:v1`, which must fail with `code`; the status.
async fn pull_refused(
    images: &mut cri_proto::v1::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    registry: &Registry,
    repo: &str,
    code: tonic::Code,
) -> tonic::Status {
    let err = images
        .pull_image(pull_request(&format!("{}/{repo}:v1", registry.addr)))
        .await
        .expect_err("the pull must be refused");
    assert_eq!(err.code(), code, "{repo}: {err:?}");
    err
}

/// Bytes used on the filesystem holding `path`.
fn used_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs writes into the zeroed struct; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

/// Unmounts the small filesystem of the test below, even when it fails.
struct SmallRoot(std::path::PathBuf);

impl Drop for SmallRoot {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_onto_a_full_filesystem_is_resource_exhausted_and_gives_its_space_back() {
    let sandbox = Sandbox::new("[image]\nmax_concurrent_downloads = 1\n");
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    // Two layers that fit one at a time but not together (6 and 8 MiB of noise: the
    // first is stored when the second runs out of space), one that fits as a download
    // but not unpacked (32 MiB of zeros, gzipped to a few KiB), and busybox.
    push_files(
        &registry,
        "big",
        &[("noise", noise(6 << 20, 7)), ("more", noise(8 << 20, 11))],
    );
    push_files(&registry, "expands", &[("zeros", vec![0; 32 << 20])]);
    fixture::push(&registry, "small", "v1", &busybox().build()).expect("push");

    let root = sandbox.path("root");
    std::fs::create_dir_all(&root).expect("root");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&root)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount a 12 MiB tmpfs");
    let _small = SmallRoot(root.clone());
    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    let idle = used_bytes(&root);

    for name in ["big", "expands"] {
        let err = pull_refused(&mut images, &registry, name, tonic::Code::ResourceExhausted).await;
        assert!(err.message().contains("full"), "{}", err.message());
        // The space is back when the answer comes: what the pull wrote is gone.
        let used = used_bytes(&root);
        assert!(
            used <= idle + (512 << 10),
            "{name}: {used} bytes used after the failed pull, {idle} before"
        );
        assert_eq!(count_files(&root.join("content/ingest")), 0);
    }
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert!(listed.is_empty(), "{listed:?}");
    // And the next pull has room.
    images
        .pull_image(pull_request(&format!("{}/small:v1", registry.addr)))
        .await
        .expect("a small pull after the failed ones");
    let (status, _) = daemon.stop();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_and_images_past_their_unpacked_limits_are_refused_and_leave_nothing() {
    let sandbox = Sandbox::new(
        "[image]\nmax_layer_unpacked_bytes = 4194304\nmax_image_unpacked_bytes = 6291456\n",
    );
    let registry = Registry::start(&sandbox.path("registry"), None).expect("registry");
    // One layer past the layer limit (8 MiB), and two within it that together pass the
    // image limit (3 + 4 MiB).
    push_files(&registry, "layer", &[("zeros", vec![0; 8 << 20])]);
    push_files(
        &registry,
        "image",
        &[("a", vec![0; 3 << 20]), ("b", vec![1; 4 << 20])],
    );
    fixture::push(&registry, "small", "v1", &busybox().build()).expect("push");

    let daemon = sandbox.start();
    let (_, mut images) = daemon.clients().await;
    for (name, limit) in [
        ("layer", "more than 4194304 bytes"),
        ("image", "more than 3145728 bytes"),
    ] {
        let err = pull_refused(&mut images, &registry, name, tonic::Code::ResourceExhausted).await;
        assert!(err.message().contains(limit), "{name}: {}", err.message());
        assert!(
            err.message().contains("image.max_layer_unpacked_bytes"),
            "{}",
            err.message()
        );
        // Nothing of it stays: no snapshot, no blob, no ingest.
        assert_eq!(count_files(&sandbox.path("root/snapshots")), 0, "{name}");
        assert_eq!(
            count_files(&sandbox.path("root/content/blobs/sha256")),
            0,
            "{name}"
        );
        assert_eq!(count_files(&sandbox.path("root/content/ingest")), 0);
    }
    images
        .pull_image(pull_request(&format!("{}/small:v1", registry.addr)))
        .await
        .expect("an image within the limits");
}
