//! Compiles the master's client of etcd (`proto/etcd/rpc.proto`, the subset of etcd's v3 API the
//! etcd store uses) with protox, like the root crate's API: no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .open_files(["etcd/rpc.proto"])?
        .file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
