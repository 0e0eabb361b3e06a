//! Job binaries, content-addressed. A driver uploads its program to its own raylet once
//! (skipped when the raylet already has that digest); the raylet records itself as a holder
//! in the GCS KV (`fleet.binaries`, key `DIGEST/NODE`); a raylet asked to start a worker for a
//! digest it lacks fetches it from a holder once (concurrent requests share the fetch),
//! verifies the SHA-256, and becomes a holder too.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleet_proto::runtime::{BinaryChunk, FetchBinaryRequest};
use futures::future::{BoxFuture, FutureExt, Shared};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// The KV namespace of binary holders.
pub const KV_NAMESPACE: &str = "fleet.binaries";
const CHUNK_BYTES: usize = 1 << 20;

type FetchResult = Result<PathBuf, String>;

/// This node's binaries.
#[derive(Clone)]
pub struct Binaries {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    node_id: String,
    address: String,
    gcs: fleet_gcs::GcsClient,
    fetching: Mutex<HashMap<String, Shared<BoxFuture<'static, FetchResult>>>>,
}

/// Checks that `digest` is 64 hex characters (it names a file).
pub fn validate_digest(digest: &str) -> Result<(), String> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "job binary digest {digest:?} is not a SHA-256 in hex (64 characters)"
        ))
    }
}

/// The SHA-256 of a file, in hex.
pub fn digest_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The largest job binary a raylet accepts (an upload or a fetch from a peer): far above a
/// release build of a large Rust program, far below a disk-filling stream.
pub const MAX_BINARY_BYTES: u64 = 2 << 30;

/// Writes a binary as it arrives, hashing it, and installs it under its digest if the digest
/// matches. However it ends short of that (an error, a broken stream, a dropped future), the
/// temporary file is removed.
struct Incoming {
    file: std::fs::File,
    temp: PathBuf,
    hasher: Sha256,
    written: u64,
    limit: u64,
    installed: bool,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.installed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

impl Incoming {
    fn create(dir: &Path, digest: &str, limit: u64) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the binaries directory {}: {e}",
                dir.display()
            )
        })?;
        let temp = dir.join(format!(
            ".{digest}.{}.{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = std::fs::File::create(&temp)
            .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
        Ok(Incoming {
            file,
            temp,
            hasher: Sha256::new(),
            written: 0,
            limit,
            installed: false,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), String> {
        self.written = self.written.saturating_add(data.len() as u64);
        if self.written > self.limit {
            return Err(format!(
                "the job binary is larger than the {} MiB a raylet accepts; refused",
                self.limit >> 20
            ));
        }
        self.hasher.update(data);
        self.file
            .write_all(data)
            .map_err(|e| format!("cannot write {}: {e} (disk full?)", self.temp.display()))
    }

    fn install(mut self, dir: &Path, digest: &str) -> FetchResult {
        let actual = hex(&std::mem::take(&mut self.hasher).finalize());
        if actual != digest {
            return Err(format!(
                "the job binary received does not match its digest {digest} (got {actual}); upload it again"
            ));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = self
                .file
                .set_permissions(std::fs::Permissions::from_mode(0o755));
        }
        let _ = self.file.sync_all();
        let path = dir.join(digest);
        std::fs::rename(&self.temp, &path)
            .map_err(|e| format!("cannot install {}: {e}", path.display()))?;
        self.installed = true;
        Ok(path)
    }
}

impl Binaries {
    /// Binaries kept in `dir`.
    pub fn new(dir: PathBuf, node_id: String, address: String, gcs: fleet_gcs::GcsClient) -> Self {
        Binaries {
            inner: Arc::new(Inner {
                dir,
                node_id,
                address,
                gcs,
                fetching: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Where `digest` is (or would be) kept.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.inner.dir.join(digest)
    }

    /// Whether this node has `digest`.
    pub fn has(&self, digest: &str) -> bool {
        validate_digest(digest).is_ok() && self.path(digest).is_file()
    }

    async fn register_holder(&self, digest: &str) {
        let key = format!("{digest}/{}", self.inner.node_id);
        if let Err(error) = self
            .inner
            .gcs
            .kv_put(KV_NAMESPACE, key.as_bytes(), self.inner.address.as_bytes())
            .await
        {
            tracing::warn!(%error, digest, "could not record this node as a holder of the job binary");
        }
    }

    /// Receives an upload (the first chunk names the digest).
    pub async fn receive(
        &self,
        mut chunks: tonic::Streaming<BinaryChunk>,
    ) -> Result<PathBuf, String> {
        let first = chunks
            .message()
            .await
            .map_err(|s| s.message().to_string())?
            .ok_or("empty upload: the first chunk must name the binary's digest")?;
        let digest = first.digest.clone();
        validate_digest(&digest)?;
        if self.has(&digest) {
            self.register_holder(&digest).await;
            return Ok(self.path(&digest));
        }
        let mut incoming = Incoming::create(&self.inner.dir, &digest, MAX_BINARY_BYTES)?;
        incoming.write(&first.data)?;
        while let Some(chunk) = chunks
            .message()
            .await
            .map_err(|s| format!("the upload broke off: {}", s.message()))?
        {
            incoming.write(&chunk.data)?;
        }
        let path = incoming.install(&self.inner.dir, &digest)?;
        self.register_holder(&digest).await;
        Ok(path)
    }

    /// Serves `FetchBinary`.
    pub fn send(
        &self,
        request: FetchBinaryRequest,
    ) -> Result<mpsc::Receiver<Result<BinaryChunk, tonic::Status>>, tonic::Status> {
        validate_digest(&request.digest).map_err(tonic::Status::invalid_argument)?;
        let path = self.path(&request.digest);
        let mut file = std::fs::File::open(&path).map_err(|e| {
            tonic::Status::not_found(format!(
                "node {} does not have job binary {}: {e}",
                self.inner.node_id, request.digest
            ))
        })?;
        let (tx, rx) = mpsc::channel(4);
        let digest = request.digest;
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buffer = vec![0u8; CHUNK_BYTES];
            let mut first = true;
            loop {
                let n = match file.read(&mut buffer) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(tonic::Status::internal(e.to_string())));
                        return;
                    }
                };
                if n == 0 && !first {
                    return;
                }
                let chunk = BinaryChunk {
                    digest: if first { digest.clone() } else { String::new() },
                    data: buffer[..n].to_vec(),
                };
                first = false;
                if tx.blocking_send(Ok(chunk)).is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// The path of `digest` on this node, fetching it from a holder first if needed.
    pub async fn ensure(&self, digest: &str) -> FetchResult {
        validate_digest(digest)?;
        if self.has(digest) {
            return Ok(self.path(digest));
        }
        let shared = {
            let mut fetching = self
                .inner
                .fetching
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            fetching
                .entry(digest.to_string())
                .or_insert_with(|| {
                    let this = self.clone();
                    let digest = digest.to_string();
                    async move {
                        let result = this.fetch(&digest).await;
                        this.inner
                            .fetching
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&digest);
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        shared.await
    }

    async fn fetch(&self, digest: &str) -> FetchResult {
        let holders = self
            .inner
            .gcs
            .kv_list(KV_NAMESPACE, format!("{digest}/").as_bytes())
            .await
            .map_err(|e| format!("cannot look up holders of job binary {digest}: {e}"))?;
        let mut errors = Vec::new();
        for holder in holders {
            let address = String::from_utf8_lossy(&holder.value).to_string();
            if address == self.inner.address {
                continue;
            }
            match self.fetch_from(digest, &address).await {
                Ok(path) => {
                    tracing::info!(digest, from = %address, "fetched the job binary");
                    self.register_holder(digest).await;
                    return Ok(path);
                }
                Err(error) => errors.push(format!("{address}: {error}")),
            }
        }
        Err(if errors.is_empty() {
            format!("no node has job binary {digest}; the driver uploads it when it starts (is the driver's fleet version current?)")
        } else {
            format!(
                "could not fetch job binary {digest} from any holder: {}",
                errors.join("; ")
            )
        })
    }

    async fn fetch_from(&self, digest: &str, address: &str) -> FetchResult {
        let mut client = crate::transfer::connect(address)?;
        let mut stream = client
            .fetch_binary(FetchBinaryRequest {
                digest: digest.to_string(),
            })
            .await
            .map_err(|s| fleet_gcs::error::describe_status(&s))?
            .into_inner();
        let mut incoming = Incoming::create(&self.inner.dir, digest, MAX_BINARY_BYTES)?;
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| fleet_gcs::error::describe_status(&s))?
        {
            incoming.write(&chunk.data)?;
        }
        incoming.install(&self.inner.dir, digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_they_name_files() {
        assert!(validate_digest(&"a".repeat(64)).is_ok());
        assert!(validate_digest("../../etc/passwd").is_err());
        assert!(validate_digest(&"g".repeat(64)).is_err());
    }

    #[test]
    fn a_binary_that_does_not_match_its_digest_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let digest = "0".repeat(64);
        let mut incoming = Incoming::create(dir.path(), &digest, MAX_BINARY_BYTES).expect("create");
        incoming.write(b"not the binary").expect("write");
        let error = incoming.install(dir.path(), &digest).expect_err("mismatch");
        assert!(error.contains("does not match"), "{error}");
        assert!(!dir.path().join(&digest).exists());
        assert_eq!(files_in(dir.path()), 0, "the temporary file is gone");
    }

    fn files_in(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| entries.count())
    }

    #[test]
    fn an_upload_past_the_cap_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let digest = "0".repeat(64);
        let mut incoming = Incoming::create(dir.path(), &digest, 10).expect("create");
        incoming.write(&[1; 8]).expect("within the cap");
        let error = incoming.write(&[1; 8]).expect_err("past the cap");
        assert!(error.contains("larger than"), "{error}");
        drop(incoming);
        assert_eq!(files_in(dir.path()), 0, "the temporary file is gone");
    }

    #[test]
    fn an_upload_that_breaks_off_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut incoming =
            Incoming::create(dir.path(), &"0".repeat(64), MAX_BINARY_BYTES).expect("create");
        incoming.write(b"half a binary").expect("write");
        assert_eq!(files_in(dir.path()), 1);
        // The stream broke: the receiving future returns early and drops what it wrote.
        drop(incoming);
        assert_eq!(files_in(dir.path()), 0);
    }

    #[test]
    fn a_matching_binary_is_installed_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("program");
        std::fs::write(&source, b"#!/bin/sh\n").expect("write");
        let digest = digest_file(&source).expect("digest");
        let mut incoming =
            Incoming::create(&dir.path().join("bin"), &digest, MAX_BINARY_BYTES).expect("create");
        incoming.write(b"#!/bin/sh\n").expect("write");
        let path = incoming
            .install(&dir.path().join("bin"), &digest)
            .expect("install");
        assert_eq!(
            files_in(&dir.path().join("bin")),
            1,
            "only the installed binary"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o111, 0o111);
        }
    }
}
