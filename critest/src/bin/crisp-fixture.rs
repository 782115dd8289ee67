//! `crisp-fixture DIR [ADDR]`: starts Debian's docker-registry on ADDR (default
//! 127.0.0.1:5000) with its storage in DIR, pushes the fixture images, prints what it
//! pushed, and serves until interrupted. For hand checks with crictl and for benchmarks.

use std::path::PathBuf;

use critest::fixture::{self, ImageBuilder, LayerBuilder, Registry};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: crisp-fixture DIR [ADDR]")?);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:5000".to_owned());
    let registry = Registry::start_at(&dir, &addr, None)?;
    let busybox = ImageBuilder::new()
        .layer(fixture::busybox_layer()?)
        .cmd(&["sh"]);
    let pushed = [
        ("library/busybox", "latest", busybox.clone().build()),
        ("e2e-test-images/busybox", "1.29-2", busybox.clone().build()),
        (
            "test-image-user-uid",
            "latest",
            busybox.clone().user("1002").build(),
        ),
        (
            "two-layers",
            "latest",
            busybox
                .clone()
                .layer(
                    LayerBuilder::new()
                        .file("etc/motd", b"crisp\n", 0o644)
                        .finish(),
                )
                .build(),
        ),
    ];
    for (repo, tag, image) in &pushed {
        let digest = fixture::push(&registry, repo, tag, image)?;
        println!("{}/{repo}:{tag} {digest} id={}", registry.addr, image.id());
    }
    println!("serving on {} (Ctrl-C stops)", registry.addr);
    loop {
        std::thread::park();
    }
}
