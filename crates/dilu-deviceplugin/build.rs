//! Compiles the vendored kubelet device plugin API (v1beta1) with protox (no protoc needed) and generates the
//! tonic client and server for both services (the plugin's and the kubelet's Registration).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/deviceplugin/v1beta1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
