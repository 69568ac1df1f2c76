//! The committed `include/crabnet.h` must be exactly what cbindgen makes of the sources.
//!
//! After changing an export or its docs, regenerate it:
//! `CRABNET_BLESS=1 cargo test -p crabnet-ffi --test header`.

use std::path::Path;

#[test]
fn committed_header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");

    let path = crate_dir.join("../include/crabnet.h");
    if std::env::var_os("CRABNET_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/crabnet.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} is out of date (first difference at line {line}); regenerate it with\n    \
             CRABNET_BLESS=1 cargo test -p crabnet-ffi --test header",
            path.display()
        );
    }
}
