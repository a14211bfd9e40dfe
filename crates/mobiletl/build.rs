//! The wgpu tests run where irb-core's build script found a graphics driver (see
//! crates/irb-core/build.rs); elsewhere they are compiled as ignored, with the reason.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(wgpu_adapter)");
    if std::env::var("DEP_IRB_CORE_WGPU_PROBE_ADAPTER").as_deref() == Ok("true") {
        println!("cargo::rustc-cfg=wgpu_adapter");
    }
}
