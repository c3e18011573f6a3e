//! Keeps the checked-in generated code honest: regenerates it from `herald/v1/*.proto` with a
//! pure-Rust protobuf compiler (protox, so no `protoc` is needed) and fails when the result
//! differs from `src/gen/` (the Rust code and the encoded descriptor set). On a difference the new code is written, so a rerun passes and the
//! change shows in `git diff`.

use std::path::{Path, PathBuf};

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos = [root.join("herald/v1/herald.proto")];
    let fds = protox::compile(&protos, [root]).expect("the .proto files compile");
    let descriptor = prost::Message::encode_to_vec(&fds);

    let out = tempfile::tempdir().expect("a temp dir");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation succeeds");

    let mut stale = Vec::new();
    for entry in std::fs::read_dir(out.path()).expect("read generated dir") {
        let generated: PathBuf = entry.expect("dir entry").path();
        let name = generated.file_name().expect("file name").to_owned();
        let checked_in = root.join("src/gen").join(&name);
        let new = std::fs::read_to_string(&generated).expect("read generated file");
        let old = std::fs::read_to_string(&checked_in).unwrap_or_default();
        if new != old {
            std::fs::write(&checked_in, new).expect("write regenerated file");
            stale.push(checked_in.display().to_string());
        }
    }
    // The encoded descriptors (with the well-known types they import), for gRPC reflection.
    let checked_in = root.join("src/gen/herald.v1.bin");
    if std::fs::read(&checked_in).ok().as_deref() != Some(descriptor.as_slice()) {
        std::fs::write(&checked_in, &descriptor).expect("write the descriptor set");
        stale.push(checked_in.display().to_string());
    }
    assert!(
        stale.is_empty(),
        "generated code was stale and has been rewritten; commit it: {stale:?}"
    );
}
