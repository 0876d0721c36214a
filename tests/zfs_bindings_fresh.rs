//! The checked-in `src/zfs/bindings.rs` must be exactly what bindgen makes from `wrapper.h` today.
//!
//! Only meaningful with `--features buildtime-bindgen` (build.rs regenerates into OUT_DIR then);
//! the README's test command runs it that way. `ZFS_BINDINGS_UPDATE=1` overwrites the checked-in
//! file instead of failing, for deliberate regeneration.
#![cfg(feature = "buildtime-bindgen")]

#[test]
fn checked_in_bindings_match_regenerated() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/zfs_bindings.rs"));
    let checked_in_path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/zfs/bindings.rs");
    let checked_in = std::fs::read_to_string(checked_in_path).expect("read src/zfs/bindings.rs");
    if generated == checked_in {
        return;
    }
    if std::env::var_os("ZFS_BINDINGS_UPDATE").is_some() {
        std::fs::write(checked_in_path, generated).expect("write src/zfs/bindings.rs");
        return;
    }
    let first_diff = generated
        .lines()
        .zip(checked_in.lines())
        .position(|(g, c)| g != c)
        .unwrap_or_else(|| generated.lines().count().min(checked_in.lines().count()));
    panic!(
        "src/zfs/bindings.rs differs from bindgen's output from wrapper.h (first difference at \
         line {}); rerun with ZFS_BINDINGS_UPDATE=1 if the change is intended",
        first_diff + 1
    );
}
