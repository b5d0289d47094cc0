//! Builds the software CUDA driver (`libcuda.so.1`), the software NVML (`libnvidia-ml.so.1`) and the two
//! builds of the CUDA test application with the system C compiler (`$CC`, else `gcc`) into `$OUT_DIR/fakecuda/`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: [&str; 4] = [
    "csrc/cuda_subset.h",
    "csrc/fake_cuda.c",
    "csrc/cuda_app.c",
    "csrc/fake_nvml.c",
];

const COMMON_FLAGS: [&str; 6] = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"];

fn main() {
    if let Err(message) = build() {
        eprintln!("error: dilu-cuda-testkit build script: {message}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    println!("cargo:rerun-if-changed=build.rs");
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-env-changed=CC");

    let manifest_dir = PathBuf::from(
        env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?,
    );
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let csrc = manifest_dir.join("csrc");
    let dir = out_dir.join("fakecuda");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let compiler = compiler();
    let include = format!("-I{}", csrc.display());

    // The driver: hidden visibility by default, so only the cu* entry points are exported.
    let driver = dir.join("libcuda.so.1");
    compile(
        &compiler,
        &[
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-Wl,-soname,libcuda.so.1",
            "-Wl,-z,defs",
            &include,
            "-o",
            path_str(&driver)?,
            path_str(&csrc.join("fake_cuda.c"))?,
            "-lpthread",
            "-ldl",
        ],
    )?;

    // `-lcuda` finds libcuda.so; point it at the real soname.
    let link = dir.join("libcuda.so");
    if fs::symlink_metadata(&link).is_ok() {
        fs::remove_file(&link).map_err(|e| format!("cannot replace {}: {e}", link.display()))?;
    }
    std::os::unix::fs::symlink("libcuda.so.1", &link)
        .map_err(|e| format!("cannot create symlink {}: {e}", link.display()))?;

    let app_source = csrc.join("cuda_app.c");
    let lib_dir = format!("-L{}", dir.display());
    // Linked build: resolves cu* at load time from libcuda.so.1 (no rpath: callers set LD_LIBRARY_PATH).
    compile(
        &compiler,
        &[
            "-DDILU_APP_LINKED",
            &include,
            "-o",
            path_str(&dir.join("cuda_app_linked"))?,
            path_str(&app_source)?,
            &lib_dir,
            "-lcuda",
            "-ldl",
            "-lpthread",
        ],
    )?;
    // Dynamic build: dlopen/dlsym or cuGetProcAddress at run time only.
    compile(
        &compiler,
        &[
            &include,
            "-o",
            path_str(&dir.join("cuda_app_dyn"))?,
            path_str(&app_source)?,
            "-ldl",
            "-lpthread",
        ],
    )?;

    // The software NVML: only the nvml* entry points exported.
    compile(
        &compiler,
        &[
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-Wl,-soname,libnvidia-ml.so.1",
            "-Wl,-z,defs",
            "-o",
            path_str(&dir.join("libnvidia-ml.so.1"))?,
            path_str(&csrc.join("fake_nvml.c"))?,
            "-lpthread",
        ],
    )?;

    println!("cargo:rustc-env=DILU_TESTKIT_DIR={}", dir.display());
    Ok(())
}

/// `$CC` split on whitespace (so `ccache gcc` works), else `gcc`.
fn compiler() -> Vec<String> {
    match env::var("CC") {
        Ok(cc) if !cc.trim().is_empty() => cc.split_whitespace().map(str::to_owned).collect(),
        _ => vec!["gcc".to_owned()],
    }
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("path {} is not valid UTF-8", path.display()))
}

fn compile(compiler: &[String], args: &[&str]) -> Result<(), String> {
    let (program, leading) = compiler
        .split_first()
        .ok_or_else(|| "no C compiler given".to_owned())?;
    let mut command = Command::new(program);
    command.args(leading).args(COMMON_FLAGS).args(args);
    let shown = format!("{command:?}");
    let output = command.output().map_err(|e| {
        format!(
            "cannot run the C compiler `{program}` ({e}); install gcc or set CC to a C compiler\n  command: {shown}"
        )
    })?;
    if !output.status.success() {
        return Err(format!(
            "the C compiler failed ({})\n  command: {shown}\n  stderr:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout),
        ));
    }
    Ok(())
}
