//! Compiles the recorded sysfs trees in `node-agent/fixtures` into the demo as a table of
//! directories, files (`include_str!`) and symbolic links, so the binary needs no files
//! beside it. The links matter: the agent finds PCIe paths and NIC-to-GPU distances by
//! resolving them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// The recorded machines: the name of the constant, and the tree under `node-agent/fixtures`.
const TREES: [(&str, &str); 2] = [
    ("HGX_H100_TREE", "hgx-h100"),
    ("H100_HOST_TREE", "h100-host"),
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let fixtures = manifest.join("../../node-agent/fixtures");
    let mut out = String::new();
    for (constant, tree) in TREES {
        let root = fixtures
            .join(tree)
            .canonicalize()
            .unwrap_or_else(|e| panic!("the recorded tree {tree} is missing: {e}"));
        println!("cargo::rerun-if-changed={}", root.display());
        let mut entries = Vec::new();
        walk(&root, &root, &mut entries);
        entries.sort();
        writeln!(out, "const {constant}: &[TreeEntry] = &[").expect("writing to a String");
        for (_, entry) in entries {
            writeln!(out, "    {entry},").expect("writing to a String");
        }
        writeln!(out, "];").expect("writing to a String");
    }
    let target = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it")).join("trees.rs");
    fs::write(&target, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", target.display()));
}

/// Appends the relative path and a `TreeEntry` expression of each directory, file and link
/// below `dir`.
fn walk(root: &Path, dir: &Path, entries: &mut Vec<(String, String)>) {
    let listing = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for item in listing {
        let path = item
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        let relative = path
            .strip_prefix(root)
            .expect("listed below the root")
            .to_str()
            .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
            .to_string();
        let kind = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let target = target
                .to_str()
                .unwrap_or_else(|| panic!("{} points to a non-UTF-8 path", path.display()));
            let entry = format!("TreeEntry::Link {{ path: {relative:?}, target: {target:?} }}");
            entries.push((relative, entry));
        } else if kind.is_dir() {
            entries.push((
                relative.clone(),
                format!("TreeEntry::Dir {{ path: {relative:?} }}"),
            ));
            walk(root, &path, entries);
        } else {
            let absolute = path
                .to_str()
                .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()));
            let entry = format!(
                "TreeEntry::File {{ path: {relative:?}, text: include_str!({absolute:?}) }}"
            );
            entries.push((relative, entry));
        }
    }
}
