//! A capturing deploy environment's side of `/capture/`, as tests drive
//! `imprint serve` with it: an image cut into chunks and a manifest as the
//! repository's format says, and the requests that upload them.

use super::*;
use imprint::format::digest::Digest;
use imprint::format::manifest::{Chunk, ChunkKind, Manifest, Requirements};
use std::io::BufReader;
use std::net::TcpStream;

pub const TOKEN: &str = "the-capture-token-of-these-tests";

/// What a capturing deploy environment makes of an image: its distinct
/// stored chunks (name, zstd frame) in order, and the manifest.
pub struct Captured {
    pub chunks: Vec<(Digest, Vec<u8>)>,
    pub manifest: Manifest,
}

impl Captured {
    pub fn of(name: &str, image: &[u8]) -> Captured {
        let mut chunks: Vec<(Digest, Vec<u8>)> = Vec::new();
        let mut table = Vec::new();
        for (i, piece) in image.chunks(CHUNK).enumerate() {
            let kind = if piece.iter().all(|&b| b == 0) {
                ChunkKind::Zero
            } else {
                let sha256 = Digest::of(piece);
                let frame = zstd::bulk::compress(piece, 3).unwrap();
                let stored_size = frame.len() as u32;
                if !chunks.iter().any(|(d, _)| *d == sha256) {
                    chunks.push((sha256, frame));
                }
                ChunkKind::Data {
                    sha256,
                    blake3: *blake3::hash(piece).as_bytes(),
                    stored_size,
                }
            };
            table.push(Chunk {
                offset: (i * CHUNK) as u64,
                length: piece.len() as u32,
                kind,
            });
        }
        let manifest = Manifest {
            name: name.into(),
            size: image.len() as u64,
            chunk_size: CHUNK as u32,
            chunks: table,
            requirements: Requirements {
                arch: None,
                firmware: Vec::new(),
                min_disk_size: image.len() as u64,
                ..Requirements::default()
            },
            layout: None,
            boot: None,
            generalized: true,
        };
        Captured { chunks, manifest }
    }

    /// The body of `POST /capture/missing` asking for every stored chunk.
    pub fn asked(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|(d, _)| d.0).collect()
    }
}

/// One request with a body of bytes, answered whole.
pub fn send(
    served: &Served,
    method: &str,
    target: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(served.addr()).unwrap();
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: 10.0.2.2:8080\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    read_response(&mut BufReader::new(stream), false)
}

pub fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

pub fn chunk_target(name: &Digest, mac: Option<&str>) -> String {
    let query = mac.map_or(String::new(), |m| format!("?mac={m}"));
    format!("/capture/chunks/sha256/{}{query}", name.hex())
}

/// Uploads every chunk `missing` names; each stored anew (201).
pub fn upload(served: &Served, c: &Captured, missing: &[u8], auth: &str, mac: Option<&str>) {
    for raw in missing.chunks(32) {
        let (name, frame) = c.chunks.iter().find(|(d, _)| d.0 == raw).unwrap();
        let (status, headers, body) =
            send(served, "PUT", &chunk_target(name, mac), Some(auth), frame);
        assert_eq!(status, 201, "{}", text(&body));
        assert_eq!(
            header(&headers, "x-imprint-stored-size"),
            Some(frame.len().to_string().as_str())
        );
    }
}

pub fn chunk_file(repo: &Repo, name: &Digest) -> std::path::PathBuf {
    let hex = name.hex();
    repo.path()
        .join(format!("chunks/sha256/{}/{hex}", &hex[..2]))
}

/// Every file under `dir` (temporary ones too), by path.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            found.extend(files_under(&entry.path()));
        } else {
            found.push(entry.path().display().to_string());
        }
    }
    found
}

pub fn serve_capturing(repo: &Repo, extra: &[&str]) -> Served {
    std::fs::create_dir_all(repo.path()).unwrap();
    let mut options = vec!["--capture-token", TOKEN];
    options.extend_from_slice(extra);
    Served::start_with(&repo.path(), &options, None, Stdio::null())
}

pub fn repo_check(repo: &Repo) -> std::process::Output {
    imprint(&["repo", "check", "--repo", repo.path().to_str().unwrap()])
}
