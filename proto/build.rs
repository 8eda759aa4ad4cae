//! Compiles `suanli/v1/*.proto` with protox (pure Rust, so no `protoc` is needed) and generates
//! prost messages plus tonic clients and servers. Also writes the encoded file descriptor set
//! to `$OUT_DIR/suanli_descriptor.bin` for gRPC reflection.

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = root.join("suanli").join("v1");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    // Sorted so the generated code does not depend on directory order.
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [root.as_path()])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        Path::new(&out_dir).join("suanli_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps, so labels and env encode (and print) the same way every time.
        .btree_map(".")
        .compile_fds(descriptors)?;

    // kubelet's pod-resources API, which the agent reads to learn which GPUs kubelet gave
    // to pods. Its package is `v1`, so it is generated as `v1.rs`.
    let kubelet = root
        .join("kubelet")
        .join("podresources")
        .join("v1")
        .join("api.proto");
    println!("cargo:rerun-if-changed={}", kubelet.display());
    let kubelet_fds = protox::compile([&kubelet], [root.join("kubelet").join("podresources")])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(kubelet_fds)?;
    Ok(())
}
