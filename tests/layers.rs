//! The layering rule of ARCHITECTURE.md, checked: a module of the library uses only modules of
//! lower layers (and its own), never one to its right; the test-support modules are used by no
//! library module. Reads the sources as text: every `crate::<module>` path outside comments,
//! including the modules named in a `use crate::{...}` group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The library's layers, lowest first (ARCHITECTURE.md's code map).
const LAYERS: &[&[&str]] = &[
    // Cross-cutting, below everything: syscall shims, the error type, fault points.
    &["sys", "error", "fault"],
    // What backs a path.
    &["detect"],
    // The primitives backends are made of: libzfs_core, the exact tree copy.
    &["zfs", "copy"],
    // The portable send/receive stream, made of the tree copy's pieces.
    &["stream"],
    // One module per backend.
    &["backend"],
    // The golden lifecycle.
    &["golden"],
    // The C ABI.
    &["ffi"],
];

/// Test and demo support: may use the lowest two layers and each other; no library module may
/// use them.
const SUPPORT: &[&str] = &["fixture", "treediff"];

/// What the crate root re-exports, and from where.
const ROOT_REEXPORTS: &[(&str, &str)] =
    &[("Error", "error"), ("ErrorKind", "error"), ("Result", "error"), ("Context", "error")];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/backend/zfs.rs` → `backend`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// The modules `text` names through `crate::`, comments removed; a `use crate::{...}` group
/// may span lines (rustfmt wraps long ones).
fn crate_modules(text: &str) -> Vec<String> {
    let code: String =
        text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let first = item.trim().split("::").next().unwrap_or("").trim();
                if !first.is_empty() {
                    out.push(first.to_string());
                }
            }
        } else {
            let name: String =
                rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out.into_iter()
        .map(|n| {
            ROOT_REEXPORTS.iter().find(|(item, _)| *item == n).map_or(n, |(_, m)| m.to_string())
        })
        .collect()
}

#[test]
fn no_layer_uses_one_to_its_right() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checked = 0;
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        // The CLI and the binary are a separate crate's code (they use `goldclone::`).
        if ["cli", "bin", "lib"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        // `super::super::` reaches out of a top-level module without saying `crate::`.
        let depth = file.strip_prefix(&src).unwrap().components().count();
        if depth <= 2 && text.contains("super::super::") {
            let rel = file.strip_prefix(&src).unwrap().display().to_string();
            wrong.entry(rel).or_default().push("super::super".into());
        }
        for used in crate_modules(&text) {
            if used == module || used.chars().next().is_some_and(char::is_uppercase) {
                continue;
            }
            checked += 1;
            let ok = match (layer_of(&module), layer_of(&used)) {
                (Some(from), Some(to)) => to < from,
                // Support modules use the lowest two layers and each other.
                (None, Some(to)) => SUPPORT.contains(&module.as_str()) && to <= 1,
                (None, None) => SUPPORT.contains(&module.as_str()) && SUPPORT.contains(&&*used),
                // A library module using a support module, or an unlisted module.
                (Some(_), None) => false,
            };
            if !ok {
                let rel = file.strip_prefix(&src).unwrap().display().to_string();
                wrong.entry(rel).or_default().push(used);
            }
        }
        assert!(
            layer_of(&module).is_some() || SUPPORT.contains(&module.as_str()),
            "src/{module} is in no layer: add it to LAYERS (and ARCHITECTURE.md's code map)"
        );
    }
    assert!(checked > 50, "only {checked} uses found: is the parser still right?");
    assert!(
        wrong.is_empty(),
        "uses against the layering (file: modules it must not use): {wrong:#?}"
    );
}

#[test]
fn the_parser_sees_groups_and_paths() {
    let text = "use crate::{fault, Context, backend::Plan};\nlet x = crate::zfs::Zfs::open(); // crate::golden\nuse crate::{\n    copy,\n    detect::Kind,\n};\n";
    assert_eq!(crate_modules(text), ["fault", "error", "backend", "zfs", "copy", "detect"]);
}
