//! The committed `include/crabnet.h` must be exactly what cbindgen makes of the sources.
//!
//! After changing an export or its docs, regenerate it:
//! `CRABNET_BLESS=1 cargo test -p crabnet-ffi --test header`.

// The check (and its `CRABNET_BLESS`) is shared with the core's committed-file tests.
#[path = "../../crabnet-core/tests/support/committed.rs"]
mod committed;

use std::path::Path;

use committed::check_or_bless;

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
    check_or_bless(&path, &generated, |line| {
        format!(
            "{} is out of date (first difference at line {line}); regenerate it with\n    \
             CRABNET_BLESS=1 cargo test -p crabnet-ffi --test header",
            path.display()
        )
    });
}
