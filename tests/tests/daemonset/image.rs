//! The DaemonSet's image: build-image.sh's archive against the Containerfile's layout.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vpc_lab::netns::{binary_dir, have_tool, try_run, TempDir};

use super::{repo, REPO};

const CONTAINERFILE: &str = "cni/deploy/Containerfile";
const BUILD_IMAGE: &str = "cni/deploy/build-image.sh";

/// The image build-image.sh made, and its archive (removed on drop).
pub struct BuiltImage {
    pub reference: String,
    pub archive: PathBuf,
    _dir: TempDir,
}

/// Runs `cni/deploy/build-image.sh` on the binaries this test was built with.
pub fn build_image() -> BuiltImage {
    for tool in ["buildah", "strip"] {
        assert!(have_tool(tool), "{tool} is missing: tests/install-deps.sh installs buildah and binutils");
    }
    let dir = TempDir::new();
    let out = Command::new(repo(BUILD_IMAGE))
        .arg("--bin-dir")
        .arg(binary_dir())
        .arg("--out")
        .arg(&dir.0)
        .output()
        .expect("run build-image.sh");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "build-image.sh failed:\n{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "build-image.sh prints the image and the archive: {stdout}");
    BuiltImage { reference: lines[0].into(), archive: lines[1].into(), _dir: dir }
}

/// What an image stage of a Containerfile makes: the paths its COPYs and RUNs create (not
/// directories) and its ENTRYPOINT, CMD and ENV.
#[derive(Debug, Default, PartialEq)]
struct Layout {
    files: BTreeSet<String>,
    entrypoint: Value,
    cmd: Value,
    env: Vec<String>,
}

/// The last stage of the Containerfile, read as podman/docker would build it. A RUN is
/// understood only as busybox's `--install -s DIR` (links to busybox for every applet).
fn containerfile_layout() -> Layout {
    let text = std::fs::read_to_string(repo(CONTAINERFILE)).expect("read the Containerfile");
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        match line.strip_suffix('\\') {
            Some(part) => current += &format!("{part} "),
            None => {
                current += line;
                if !current.trim().is_empty() {
                    instructions.push(std::mem::take(&mut current));
                }
            }
        }
    }
    let stage = instructions.iter().rposition(|i| i.starts_with("FROM ")).expect("a FROM");
    let mut layout = Layout::default();
    for instruction in &instructions[stage + 1..] {
        let (op, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
        match op {
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let (dest, sources) = words.split_last().expect("COPY SRC... DEST");
                for source in sources {
                    let path = match dest.strip_suffix('/') {
                        Some(dir) => format!("{dir}/{}", Path::new(source).file_name().unwrap().to_string_lossy()),
                        None => dest.to_string(),
                    };
                    layout.files.insert(path);
                }
            }
            "RUN" => {
                let argv: Vec<String> = serde_json::from_str(rest).expect("RUN in exec form");
                let [busybox, install, symbolic, dir] = argv.as_slice() else { panic!("RUN {argv:?}") };
                assert_eq!((install.as_str(), symbolic.as_str()), ("--install", "-s"), "RUN {argv:?}");
                // The build stage's busybox is Debian's busybox-static, as this machine's.
                let applets = Command::new(busybox).arg("--list").output().expect("busybox --list");
                for applet in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
                    layout.files.insert(format!("{dir}/{applet}"));
                }
            }
            "ENTRYPOINT" => layout.entrypoint = serde_json::from_str(rest).expect("ENTRYPOINT in exec form"),
            "CMD" => layout.cmd = serde_json::from_str(rest).expect("CMD in exec form"),
            "ENV" => layout.env.push(rest.to_string()),
            other => panic!("{other} in the Containerfile's image stage: teach this test what it makes"),
        }
    }
    layout
}

/// What the OCI archive holds: its one image's files (not directories) and configuration.
fn archive_layout(archive: &Path) -> Layout {
    let dir = TempDir::new();
    let oci = dir.0.join("oci");
    let rootfs = dir.0.join("rootfs");
    for d in [&oci, &rootfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let untar = |tarball: &Path, into: &Path| {
        let out = try_run(&["tar", "-xf", &tarball.to_string_lossy(), "-C", &into.to_string_lossy()]);
        assert!(out.status.success(), "untar {}: {}", tarball.display(), String::from_utf8_lossy(&out.stderr));
    };
    untar(archive, &oci);
    let blob = |digest: &Value| oci.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"));
    let json = |path: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let index = json(oci.join("index.json"));
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1), "one image: {index}");
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    for layer in manifest["layers"].as_array().unwrap() {
        untar(&blob(&layer["digest"]), &rootfs);
    }
    let mut files = BTreeSet::new();
    let mut stack = vec![rootfs.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                files.insert(format!("/{}", entry.path().strip_prefix(&rootfs).unwrap().display()));
            }
        }
    }
    let config = &json(blob(&manifest["config"]["digest"]))["config"];
    let env = config["Env"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(String::from)).collect();
    Layout { files, entrypoint: config["Entrypoint"].clone(), cmd: config["Cmd"].clone(), env }
}

#[test]
fn build_image_sh_lays_out_what_the_containerfile_does_and_tags_the_version() {
    let image = build_image();
    let commit = try_run(&["git", "-C", REPO, "rev-parse", "--short=7", "HEAD"]);
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    let tag = format!("localhost/vswitchd:{}-{commit}", env!("CARGO_PKG_VERSION"));
    assert!(
        image.reference == tag || image.reference == format!("{tag}-dirty"),
        "{} is not the workspace version and commit ({tag})",
        image.reference
    );
    let built = archive_layout(&image.archive);
    let declared = containerfile_layout();
    let only_built: Vec<&String> = built.files.difference(&declared.files).collect();
    let only_declared: Vec<&String> = declared.files.difference(&built.files).collect();
    assert!(
        only_built.is_empty() && only_declared.is_empty(),
        "build-image.sh and the Containerfile disagree:\n  only in the archive: {only_built:?}\n  only in the Containerfile: {only_declared:?}"
    );
    assert_eq!((&built.entrypoint, &built.cmd, &built.env), (&declared.entrypoint, &declared.cmd, &declared.env));
    // What the init containers' scripts and the probes run.
    for f in [
        "/usr/bin/vswitchd",
        "/usr/bin/vswitchctl",
        "/opt/cni/bin/vpc-cni",
        "/bin/sh",
        "/bin/cp",
        "/bin/chmod",
        "/bin/mv",
    ] {
        assert!(built.files.contains(f), "{f} is not in the image");
    }
    eprintln!(
        "{}: {} files, {} MB archive",
        image.reference,
        built.files.len(),
        std::fs::metadata(&image.archive).unwrap().len() >> 20
    );
}
