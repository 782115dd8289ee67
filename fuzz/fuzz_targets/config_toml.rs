//! crisp's configuration (a main file and drop-ins): loading never panics, and any
//! configuration that loads prints (`crispd config`) as TOML that loads again.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Up to three files, split at 0xff bytes (which valid UTF-8 never holds).
    let mut files = Vec::new();
    for (i, part) in data.split(|b| *b == 0xff).take(3).enumerate() {
        let Ok(text) = std::str::from_utf8(part) else {
            return;
        };
        files.push((
            PathBuf::from(format!("/etc/crisp/{i}.toml")),
            text.to_owned(),
        ));
    }
    let Ok(loaded) = conf::load_texts(&files) else {
        return;
    };
    let shown = loaded
        .config
        .to_toml()
        .expect("a loaded configuration prints");
    if let Err(e) = conf::load_texts(&[(PathBuf::from("/etc/crisp/shown.toml"), shown.clone())]) {
        panic!("the printed configuration does not load: {e}\n{shown}");
    }
});
