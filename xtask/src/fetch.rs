//! `cargo xtask fetch <dataset>`: download with a progress bar, resume of interrupted
//! downloads (HTTP range requests), SHA-256 and size verification against
//! `datasets/manifest.toml`, and unpacking.
//!
//! A file only appears under its final name once its size and checksum match the manifest:
//! bytes in flight live in `<name>.part`, which a later run resumes; a checksum mismatch
//! deletes the partial file, so nothing that looks complete is ever left behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::manifest::{DatasetFile, Manifest, Unpack};

/// Where and how to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Root of the local data; each dataset goes to `<data_dir>/<dataset>/`.
    pub data_dir: PathBuf,
    /// Base URL of a mirror laid out as `<mirror>/<dataset>/<file name>`, used instead of
    /// the canonical URLs.
    pub mirror: Option<String>,
    /// Whether to draw progress bars (they are also hidden when stderr is not a terminal).
    pub progress: bool,
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Already present with the right checksum; nothing downloaded.
    AlreadyPresent,
    /// Downloaded from scratch.
    Downloaded,
    /// Continued from a partial download of this many bytes.
    Resumed {
        /// Bytes that were already on disk.
        from: u64,
    },
}

/// The result of fetching one file.
#[derive(Debug, Clone)]
pub struct FetchedFile {
    /// Final path of the verified file.
    pub path: PathBuf,
    /// What was done.
    pub outcome: FileOutcome,
}

/// Fetches every file of dataset `name`, returning the dataset directory and what was done.
pub fn fetch_dataset(
    manifest: &Manifest,
    name: &str,
    options: &FetchOptions,
) -> Result<(PathBuf, Vec<FetchedFile>)> {
    let dataset = manifest.dataset(name)?;
    let dir = options.data_dir.join(name);
    fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let mut fetched = Vec::new();
    for file in &dataset.files {
        fetched.push(fetch_file(name, file, &dir, options)?);
    }
    Ok((dir, fetched))
}

fn fetch_file(
    dataset_name: &str,
    file: &DatasetFile,
    dir: &Path,
    options: &FetchOptions,
) -> Result<FetchedFile> {
    let file_name = file.file_name()?;
    let dest = dir.join(&file_name);
    let url = match &options.mirror {
        Some(mirror) => format!(
            "{}/{dataset_name}/{file_name}",
            mirror.trim_end_matches('/')
        ),
        None => file.url.clone(),
    };

    let mut outcome = FileOutcome::AlreadyPresent;
    let present = dest.is_file()
        && fs::metadata(&dest)?.len() == file.size
        && sha256_file(&dest)? == file.sha256;
    if !present {
        let part = dir.join(format!("{file_name}.part"));
        let resumed_from = download(&url, &part, file.size, options.progress)?;
        let actual = sha256_file(&part)?;
        if actual != file.sha256 {
            fs::remove_file(&part).ok();
            bail!(
                "checksum mismatch for {file_name} from {url}: expected sha256 {}, got {actual}; \
                 the download was deleted",
                file.sha256
            );
        }
        fs::rename(&part, &dest)
            .with_context(|| format!("cannot move {} to {}", part.display(), dest.display()))?;
        outcome = match resumed_from {
            0 => FileOutcome::Downloaded,
            from => FileOutcome::Resumed { from },
        };
    }
    if let Some(kind) = file.unpack {
        unpack(&dest, kind, dir, &file.sha256)
            .with_context(|| format!("cannot unpack {}", dest.display()))?;
    }
    Ok(FetchedFile {
        path: dest,
        outcome,
    })
}

/// Downloads `url` into `part`, resuming from its current length. Returns the number of
/// bytes that were already present. Fails, keeping `part` for a later resume, when the
/// transfer stops short of `size`.
fn download(url: &str, part: &Path, size: u64, progress: bool) -> Result<u64> {
    let mut have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > size {
        // Longer than the real file: not a prefix of it, start over.
        fs::remove_file(part).ok();
        have = 0;
    }
    if have == size {
        return Ok(have);
    }

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request
        .call()
        .with_context(|| format!("cannot connect to {url}"))?;
    let status = response.status().as_u16();
    let resumed_from = match status {
        206 => {
            let range = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if range.starts_with(&format!("bytes {have}-")) {
                have
            } else {
                bail!("{url}: server answered the resume request with range {range:?}");
            }
        }
        200 => 0,
        _ => bail!("{url}: HTTP status {status}"),
    };

    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed_from > 0)
        .truncate(resumed_from == 0)
        .open(part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    let bar = progress_bar(size, resumed_from, progress, url);
    let mut reader = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = resumed_from;
    let copy: io::Result<()> = (|| {
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if written + n as u64 > size {
                return Err(io::Error::other(format!(
                    "server sent more than the {size} bytes the manifest records"
                )));
            }
            out.write_all(&buf[..n])?;
            written += n as u64;
            bar.set_position(written);
        }
    })();
    out.sync_all().ok();
    bar.finish_and_clear();
    if let Err(err) = copy {
        if written > size {
            fs::remove_file(part).ok();
        }
        bail!(
            "download of {url} stopped after {written} of {size} bytes ({err}); the partial \
             file {} is kept and the same command resumes it",
            part.display()
        );
    }
    if written < size {
        bail!(
            "download of {url} is truncated: {written} of {size} bytes; the partial file {} is \
             kept and the same command resumes it",
            part.display()
        );
    }
    Ok(resumed_from)
}

fn progress_bar(size: u64, start: u64, enabled: bool, url: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid progress template")
        .progress_chars("=> "),
    );
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    bar.set_position(start);
    bar
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = BufReader::new(
        File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Unpacks a verified file once; a marker holding its checksum records success, so an
/// interrupted unpack is redone and a finished one is skipped.
fn unpack(archive: &Path, kind: Unpack, dir: &Path, sha256: &str) -> Result<()> {
    let file_name = archive.file_name().unwrap_or_default().to_string_lossy();
    let marker = dir.join(format!(".{file_name}.unpacked"));
    if fs::read_to_string(&marker).is_ok_and(|m| m.trim() == sha256) {
        return Ok(());
    }
    match kind {
        Unpack::TarGz => {
            let gz = flate2::read::GzDecoder::new(BufReader::new(File::open(archive)?));
            tar::Archive::new(gz).unpack(dir)?;
        }
        Unpack::Zip => {
            let mut zip = zip::ZipArchive::new(BufReader::new(File::open(archive)?))?;
            zip.extract(dir)?;
        }
        Unpack::Gzip => {
            let Some(stem) = file_name.strip_suffix(".gz") else {
                bail!("{file_name}: gzip unpacking needs a name ending in .gz");
            };
            let mut gz = flate2::read::GzDecoder::new(BufReader::new(File::open(archive)?));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            io::copy(&mut gz, &mut tmp)?;
            tmp.persist(dir.join(stem))?;
        }
    }
    fs::write(&marker, sha256)?;
    Ok(())
}
