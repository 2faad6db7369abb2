//! Generates the CRI client (tests/src/cri.rs) from tests/proto/cri.proto with protoc
//! (Debian's protobuf-compiler; tests/install-deps.sh installs it).

fn main() {
    println!("cargo:rerun-if-changed=proto/cri.proto");
    if let Err(e) = tonic_prost_build::configure().build_server(false).compile_protos(&["proto/cri.proto"], &["proto"])
    {
        panic!("compiling proto/cri.proto: {e} (needs protoc: apt-get install protobuf-compiler, or tests/install-deps.sh)");
    }
}
