//! `cargo xtask fetch` against a loopback HTTP server: real files from ../shared/datasets
//! (when present), checksum mismatch, truncated transfer and resume, missing files, and
//! unpacking. The server is a few lines of std networking so every failure mode can be
//! injected exactly.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use xtask::fetch::{FetchOptions, FileOutcome, fetch_dataset};
use xtask::manifest::Manifest;

/// How the server answers one path.
#[derive(Clone)]
enum Behaviour {
    /// Serve the bytes, honouring `Range: bytes=N-`.
    Serve(Vec<u8>),
    /// Announce the full length, send only the first `n` bytes, then close.
    Truncate(Vec<u8>, usize),
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Behaviour>,
    /// `Range` headers seen, per path.
    ranges: Vec<(String, String)>,
    /// Directory served for paths without a route.
    root: Option<PathBuf>,
}

struct Server {
    base: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start(root: Option<PathBuf>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            root,
            ..State::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || handle(stream, &state));
            }
        });
        Server { base, state }
    }

    fn route(&self, path: &str, behaviour: Behaviour) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), behaviour);
    }

    fn ranges(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().ranges.clone()
    }
}

fn handle(mut stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut range_start = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            let value = value.trim().to_string();
            state
                .lock()
                .unwrap()
                .ranges
                .push((path.clone(), value.clone()));
            range_start = value
                .strip_prefix("bytes=")
                .and_then(|v| v.strip_suffix('-'))
                .and_then(|v| v.parse::<usize>().ok());
        }
    }
    let behaviour = {
        let st = state.lock().unwrap();
        st.routes.get(&path).cloned().or_else(|| {
            let root = st.root.as_ref()?;
            let file = root.join(path.trim_start_matches('/'));
            std::fs::read(file).ok().map(Behaviour::Serve)
        })
    };
    let (body, limit) = match behaviour {
        None => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        Some(Behaviour::Serve(body)) => {
            let n = body.len();
            (body, n)
        }
        Some(Behaviour::Truncate(body, n)) => (body, n),
    };
    let total = body.len();
    let (status, start) = match range_start {
        Some(start) if start < total => ("206 Partial Content", start),
        _ => ("200 OK", 0),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        total - start
    );
    if start > 0 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        ));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let end = limit.max(start).min(total);
    let _ = stream.write_all(&body[start..end]);
    let _ = stream.flush();
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn manifest_for(dataset: &str, files: &[(&str, &[u8])], unpack: Option<&str>) -> Manifest {
    let mut text = format!(
        "[datasets.{dataset}]\ndescription = \"test\"\nlicence = \"test\"\nhomepage = \"http://example.invalid\"\n"
    );
    for (name, bytes) in files {
        text.push_str(&format!(
            "\n[[datasets.{dataset}.files]]\nurl = \"http://canonical.invalid/{name}\"\nsize = {}\nsha256 = \"{}\"\n",
            bytes.len(),
            sha256(bytes)
        ));
        if let Some(kind) = unpack {
            text.push_str(&format!("unpack = \"{kind}\"\n"));
        }
    }
    Manifest::parse(&text).unwrap()
}

fn options(data_dir: &Path, server: &Server) -> FetchOptions {
    FetchOptions {
        data_dir: data_dir.to_path_buf(),
        mirror: Some(server.base.clone()),
        progress: false,
    }
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// The shared test-data folder beside the repository; a machine without it fails
/// here rather than passing without testing.
fn shared_datasets() -> PathBuf {
    let dir = xtask::workspace_root().join("../shared/datasets");
    assert!(
        dir.is_dir(),
        "this test needs the shared data folder {}",
        dir.display()
    );
    dir
}

#[test]
fn fetches_real_datasets_from_a_mirror_and_verifies_them() {
    let shared = shared_datasets();
    let server = Server::start(Some(shared.clone()));
    let manifest = Manifest::load(&xtask::workspace_root().join("datasets/manifest.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for dataset in ["high-school-2013", "ucte-powergrid"] {
        let (dir, files) =
            fetch_dataset(&manifest, dataset, &options(tmp.path(), &server)).unwrap();
        assert!(files.iter().all(|f| f.outcome == FileOutcome::Downloaded));
        for f in &files {
            let name = f.path.file_name().unwrap();
            assert_eq!(
                std::fs::read(&f.path).unwrap(),
                std::fs::read(shared.join(dataset).join(name)).unwrap()
            );
        }
        // A second run verifies and downloads nothing.
        let (_, again) = fetch_dataset(&manifest, dataset, &options(tmp.path(), &server)).unwrap();
        assert!(
            again
                .iter()
                .all(|f| f.outcome == FileOutcome::AlreadyPresent)
        );
        assert!(dir.ends_with(dataset));
    }
}

#[test]
fn checksum_mismatch_is_an_error_and_leaves_nothing() {
    let server = Server::start(None);
    let good = payload(5000);
    let mut bad = good.clone();
    bad[1234] ^= 0xff;
    server.route("/ds/data.bin", Behaviour::Serve(bad));
    let manifest = manifest_for("ds", &[("data.bin", &good)], None);
    let tmp = tempfile::tempdir().unwrap();
    let err = fetch_dataset(&manifest, "ds", &options(tmp.path(), &server)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("checksum mismatch for data.bin"), "{msg}");
    assert!(msg.contains(&sha256(&good)), "{msg}");
    let dir = tmp.path().join("ds");
    assert!(!dir.join("data.bin").exists());
    assert!(!dir.join("data.bin.part").exists());
}

#[test]
fn truncated_download_fails_then_resumes_with_a_range_request() {
    let server = Server::start(None);
    let data = payload(100_000);
    server.route("/ds/big.bin", Behaviour::Truncate(data.clone(), 40_000));
    let manifest = manifest_for("ds", &[("big.bin", &data)], None);
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), &server);

    let err = fetch_dataset(&manifest, "ds", &opts).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("40000 of 100000 bytes"), "{msg}");
    let dir = tmp.path().join("ds");
    assert!(
        !dir.join("big.bin").exists(),
        "no complete-looking file after truncation"
    );
    assert_eq!(
        std::fs::metadata(dir.join("big.bin.part")).unwrap().len(),
        40_000
    );

    server.route("/ds/big.bin", Behaviour::Serve(data.clone()));
    let (_, files) = fetch_dataset(&manifest, "ds", &opts).unwrap();
    assert_eq!(files[0].outcome, FileOutcome::Resumed { from: 40_000 });
    assert_eq!(std::fs::read(dir.join("big.bin")).unwrap(), data);
    assert!(!dir.join("big.bin.part").exists());
    assert!(
        server
            .ranges()
            .contains(&("/ds/big.bin".to_string(), "bytes=40000-".to_string()))
    );
}

#[test]
fn missing_file_names_the_url() {
    let server = Server::start(None);
    let manifest = manifest_for("ds", &[("absent.bin", b"abc")], None);
    let tmp = tempfile::tempdir().unwrap();
    let err = fetch_dataset(&manifest, "ds", &options(tmp.path(), &server)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("/ds/absent.bin") && msg.contains("404"),
        "{msg}"
    );
}

#[test]
fn unknown_dataset_lists_the_known_ones() {
    let manifest = manifest_for("ds", &[("a.bin", b"abc")], None);
    let err = Manifest::dataset(&manifest, "nope").unwrap_err();
    assert!(format!("{err}").contains("known: ds"));
}

#[test]
fn unpacks_tar_gz_and_gzip_after_verification() {
    let server = Server::start(None);
    // A tar.gz with one file.
    let mut tar_bytes = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut tar_bytes, flate2::Compression::default());
        let mut builder = tar::Builder::new(gz);
        let content = b"label pixels\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "inner/batch.txt", &content[..])
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap();
    }
    server.route("/arch/data.tar.gz", Behaviour::Serve(tar_bytes.clone()));
    let manifest = manifest_for("arch", &[("data.tar.gz", &tar_bytes)], Some("tar-gz"));
    let tmp = tempfile::tempdir().unwrap();
    fetch_dataset(&manifest, "arch", &options(tmp.path(), &server)).unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("arch/inner/batch.txt")).unwrap(),
        b"label pixels\n"
    );

    let mut gz_bytes = Vec::new();
    {
        let mut gz = flate2::write::GzEncoder::new(&mut gz_bytes, flate2::Compression::default());
        gz.write_all(b"merges\n").unwrap();
        gz.finish().unwrap();
    }
    server.route("/vocab/bpe.txt.gz", Behaviour::Serve(gz_bytes.clone()));
    let manifest = manifest_for("vocab", &[("bpe.txt.gz", &gz_bytes)], Some("gzip"));
    fetch_dataset(&manifest, "vocab", &options(tmp.path(), &server)).unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("vocab/bpe.txt")).unwrap(),
        b"merges\n"
    );
}

#[test]
fn cli_reports_failure_with_nonzero_exit_and_message() {
    let server = Server::start(None);
    let good = payload(1000);
    server.route("/ds/data.bin", Behaviour::Serve(payload(999)));
    let manifest = manifest_for("ds", &[("data.bin", &good)], None);
    let tmp = tempfile::tempdir().unwrap();
    // Write the manifest for the binary to read.
    let manifest_path = tmp.path().join("manifest.toml");
    let text = format!(
        "[datasets.ds]\ndescription = \"t\"\nlicence = \"t\"\nhomepage = \"h\"\n\n[[datasets.ds.files]]\nurl = \"http://canonical.invalid/data.bin\"\nsize = {}\nsha256 = \"{}\"\n",
        good.len(),
        manifest.datasets["ds"].files[0].sha256
    );
    std::fs::write(&manifest_path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fetch", "ds", "--mirror", &server.base, "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("--manifest")
        .arg(&manifest_path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("truncated: 999 of 1000 bytes"), "{stderr}");
    let mut part = Vec::new();
    std::fs::File::open(tmp.path().join("data/ds/data.bin.part"))
        .unwrap()
        .read_to_end(&mut part)
        .unwrap();
    assert_eq!(part.len(), 999);
    assert!(!tmp.path().join("data/ds/data.bin").exists());
}

#[test]
fn repository_manifest_matches_the_shared_checksums() {
    let manifest = Manifest::load(&xtask::workspace_root().join("datasets/manifest.toml")).unwrap();
    let shared = shared_datasets();
    let sums = std::fs::read_to_string(shared.join("SHA256SUMS")).unwrap();
    let mut checked = 0;
    for line in sums.lines() {
        let (sum, path) = line.split_once("  ").unwrap();
        let (dataset, file) = path.split_once('/').unwrap();
        let Some(entry) = manifest.datasets.get(dataset) else {
            continue;
        };
        if let Some(f) = entry.files.iter().find(|f| f.file_name().unwrap() == file) {
            assert_eq!(f.sha256, sum, "{path}");
            assert_eq!(
                f.size,
                std::fs::metadata(shared.join(path)).unwrap().len(),
                "{path}"
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked, 4,
        "high-school-2013 (2 files) and ucte-powergrid (2 files)"
    );
}
