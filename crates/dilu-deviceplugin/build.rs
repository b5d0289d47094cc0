//! Compiles the vendored kubelet device plugin API (v1beta1) and the part of the kubelet's PodResources API (v1)
//! the agent reads with protox (no protoc needed) and generates the tonic clients and servers (the plugin's, the
//! kubelet's Registration and PodResourcesLister).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/deviceplugin/v1beta1/api.proto",
        "proto/podresources/v1/api.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
