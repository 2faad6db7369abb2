//! The sandbox ("pause") image every pod of the test's containerd runs, made without a registry.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::SANDBOX_IMAGE;
use crate::netns::run;

const BUSYBOX: &str = "/bin/busybox";

/// Builds the sandbox image as an OCI image layout tarball in `dir`: one layer holding Debian's
/// static busybox, whose entrypoint sleeps for ever (the "pause" process). Returns the tarball.
pub fn build_sandbox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let blobs = dir.join("oci/blobs/sha256");
    for d in ["bin", "dev", "proc", "sys", "etc", "tmp", "run"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy /bin/busybox (busybox-static)");
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        std::fs::write(rootfs.join(f), "").unwrap();
    }
    let layer = dir.join("layer.tar");
    run(&[
        "tar",
        "--sort=name",
        "--mtime=@0",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "-cf",
        layer.to_str().unwrap(),
        "-C",
        rootfs.to_str().unwrap(),
        ".",
    ]);
    // Stores a file as a blob; returns its descriptor fields (digest, size).
    let blob = |path: &Path| -> (String, u64) {
        let out = run(&["sha256sum", path.to_str().unwrap()]);
        let hex = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string();
        let size = std::fs::metadata(path).unwrap().len();
        std::fs::rename(path, blobs.join(&hex)).unwrap();
        (format!("sha256:{hex}"), size)
    };
    let blob_json = |name: &str, v: &Value| {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
        blob(&path)
    };
    let (layer_digest, layer_size) = blob(&layer);
    let (config_digest, config_size) = blob_json(
        "config.json",
        &json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }),
    );
    let (manifest_digest, manifest_size) = blob_json(
        "manifest.json",
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
        }),
    );
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {
                "io.containerd.image.name": SANDBOX_IMAGE,
                "org.opencontainers.image.ref.name": SANDBOX_IMAGE.rsplit(':').next().unwrap(),
            },
        }],
    });
    std::fs::write(dir.join("oci/index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci/oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tarball = dir.join("sandbox-image.tar");
    run(&["tar", "-cf", tarball.to_str().unwrap(), "-C", dir.join("oci").to_str().unwrap(), "."]);
    tarball
}
