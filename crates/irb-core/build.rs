//! Whether this machine can run the wgpu tests: wgpu needs a graphics driver, on Linux
//! a Vulkan loader and driver (Mesa's lavapipe from Debian's `mesa-vulkan-drivers` and
//! `libvulkan1` runs on any CPU). Without one the wgpu tests are compiled as ignored,
//! with the reason, so `cargo test` counts them as not run instead of passing them;
//! `REQUIRE_WGPU_ADAPTER=1` (set by .ci/run, which installs lavapipe) makes a missing
//! driver a build error. The answer is passed on to dependents' build scripts as
//! `DEP_IRB_CORE_WGPU_PROBE_ADAPTER` (the `links` key), so that every crate's wgpu tests
//! follow one probe.

use std::path::Path;

/// Where the Vulkan loader finds driver manifests (the loader's search list).
const ICD_DIRS: [&str; 4] = [
    "/usr/share/vulkan/icd.d",
    "/usr/local/share/vulkan/icd.d",
    "/etc/vulkan/icd.d",
    "/usr/lib/x86_64-linux-gnu/vulkan/icd.d",
];

/// Where distributions put the Vulkan loader library.
const LOADER_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

fn has_json(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "json"))
    })
}

fn vulkan_found() -> bool {
    let driver_env = ["VK_ICD_FILENAMES", "VK_DRIVER_FILES"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let driver = driver_env || ICD_DIRS.iter().any(|d| has_json(Path::new(d)));
    let loader = LOADER_DIRS
        .iter()
        .any(|d| Path::new(d).join("libvulkan.so.1").exists());
    driver && loader
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(wgpu_adapter)");
    for var in [
        "REQUIRE_WGPU_ADAPTER",
        "VK_ICD_FILENAMES",
        "VK_DRIVER_FILES",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    for dir in ICD_DIRS.iter().filter(|d| Path::new(d).is_dir()) {
        println!("cargo::rerun-if-changed={dir}");
    }
    // Metal on macOS and DirectX 12 on Windows come with the system.
    let found = match std::env::var("CARGO_CFG_TARGET_OS").as_deref() {
        Ok("linux") | Ok("freebsd") => vulkan_found(),
        _ => true,
    };
    if !found && std::env::var("REQUIRE_WGPU_ADAPTER").is_ok_and(|v| v == "1") {
        panic!(
            "REQUIRE_WGPU_ADAPTER=1 but no Vulkan driver was found (looked for a driver \
             manifest in {ICD_DIRS:?} and libvulkan.so.1 in {LOADER_DIRS:?}); install \
             mesa-vulkan-drivers and libvulkan1"
        );
    }
    if found {
        println!("cargo::rustc-cfg=wgpu_adapter");
    }
    println!("cargo::metadata=adapter={found}");
}
