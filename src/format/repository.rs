//! Where a repository keeps its files. Every path is relative to the repository
//! root, so the same layout serves from a directory, any static HTTP server, an
//! object store or a USB medium.
//!
//! ```text
//! refs/<name>/<tag>             "sha256:<hex>\n" of a manifest
//! manifests/sha256/<hex>        manifest (postcard)
//! manifests/sha256/<hex>.sig    signature lines
//! chunks/sha256/<hh>/<hex>      zstd of a chunk, named by the sha256 of its content
//! ```

use super::digest::Digest;

pub fn ref_path(name: &str, tag: &str) -> String {
    format!("refs/{name}/{tag}")
}

pub fn manifest_path(digest: &Digest) -> String {
    format!("manifests/sha256/{}", digest.hex())
}

pub fn signature_path(digest: &Digest) -> String {
    format!("manifests/sha256/{}.sig", digest.hex())
}

pub fn chunk_path(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("chunks/sha256/{}/{hex}", &hex[..2])
}

/// Text of a ref file.
pub fn ref_text(digest: &Digest) -> String {
    format!("{digest}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths_match_the_documented_format() {
        let d = Digest::of(b"abc");
        assert_eq!(
            chunk_path(&d),
            "chunks/sha256/ba/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(manifest_path(&d), format!("manifests/sha256/{}", d.hex()));
        assert_eq!(
            signature_path(&d),
            format!("manifests/sha256/{}.sig", d.hex())
        );
        assert_eq!(ref_path("demo", "v1"), "refs/demo/v1");
        assert_eq!(ref_text(&d), format!("sha256:{}\n", d.hex()));
    }
}
