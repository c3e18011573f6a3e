//! Runs the `protoc` binary that the `protoc-bin-vendored` crate ships, passing all arguments
//! through, so that build scripts needing `protoc` work on a machine with only a Rust toolchain.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let protoc = match protoc_bin_vendored::protoc_bin_path() {
        Ok(path) => path,
        Err(err) => {
            eprintln!("protoc-vendored: no vendored protoc for this platform: {err}");
            return ExitCode::from(127);
        }
    };
    match Command::new(&protoc).args(std::env::args_os().skip(1)).status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(err) => {
            eprintln!("protoc-vendored: cannot run {}: {err}", protoc.display());
            ExitCode::from(127)
        }
    }
}
