//! Links rdma-core's C mlx4 provider into the `versus_rdma_core` bench when
//! `TILDE_RDMA_CORE` names a built rdma-core source tree (`cargo xtask bench` provisions
//! one and sets it); without it, that bench says how to get one and measures nothing.

use std::env;
use std::path::PathBuf;

/// The static libraries of the tree's build, as `cargo xtask bench` builds them.
const STATIC_LIBS: &[(&str, &str)] = &[
    ("lib/statics", "mlx4"),
    ("lib/statics", "ibverbs"),
    ("util", "rdma_util_pic"),
    ("ccan", "ccan_pic"),
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tilde_rdma_core)");
    println!("cargo::rerun-if-env-changed=TILDE_RDMA_CORE");
    println!("cargo::rerun-if-changed=c/rdma_core_mlx4.c");
    let Some(tree) = env::var_os("TILDE_RDMA_CORE").map(PathBuf::from) else {
        return;
    };
    let build = tree.join("build");
    cc::Build::new()
        .file("c/rdma_core_mlx4.c")
        .include(build.join("include"))
        .include(&tree)
        .include(tree.join("providers/mlx4"))
        // rdma-core's headers are written for its own warning set, not cc's -Wextra.
        .warnings(false)
        .compile("tilde_rdma_core_mlx4");
    for (dir, lib) in STATIC_LIBS {
        println!(
            "cargo::rustc-link-search=native={}",
            build.join(dir).display()
        );
        println!("cargo::rustc-link-lib=static={lib}");
    }
    // What libibverbs' objects pulled in by the provider need.
    for lib in ["nl-route-3", "nl-3", "pthread"] {
        println!("cargo::rustc-link-lib={lib}");
    }
    println!("cargo::rustc-cfg=tilde_rdma_core");
}
