//! The cluster token: nobody but the cluster's own processes can drive it.
//!
//! A cluster has one secret, a [`ClusterToken`] of 256 random bits that `fleet cluster up`
//! (or an embedded start, in memory) makes. Every gRPC request Fleet sends carries it
//! (`authorization: Bearer ...`, added by [`AuthInterceptor`] on every channel a
//! [`Connector`](crate::transport::Connector) makes), and every Fleet server checks it with
//! [`RequireToken`] — one constant-time comparison per request or stream — before any handler
//! runs. A request without it, or with another cluster's, is refused with `Unauthenticated`
//! and changes nothing.
//!
//! Where a process finds its token, first hit wins ([`process_token`]):
//! 1. [`set_process_token`] (an embedded start, `fleet cluster up`, a CLI `--token-file`);
//! 2. `FLEET_TOKEN` (how a raylet hands it to its workers: the environment, never argv);
//! 3. `FLEET_TOKEN_FILE`, a file of mode 0600 (how `fleet cluster up` hands it to daemons);
//! 4. `$FLEET_HOME/clusters/$FLEET_CLUSTER/token` (default `~/.fleet/clusters/default/token`),
//!    the file `fleet cluster up` wrote on this machine.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

/// Environment variable: the token itself.
pub const TOKEN_ENV: &str = "FLEET_TOKEN";
/// Environment variable: a file holding the token.
pub const TOKEN_FILE_ENV: &str = "FLEET_TOKEN_FILE";
/// The token file's name in a cluster's state directory.
pub const TOKEN_FILE_NAME: &str = "token";
/// Metadata key the token travels in.
const AUTHORIZATION: &str = "authorization";
const BEARER: &str = "Bearer ";
/// The shortest token accepted from a user (a generated one is 64 hex digits).
const MIN_TOKEN_CHARS: usize = 32;
/// The longest token accepted (it travels in a header).
const MAX_TOKEN_CHARS: usize = 512;

/// A cluster's shared secret, and where this process found it.
#[derive(Clone)]
pub struct ClusterToken {
    secret: String,
    source: TokenSource,
}

/// Where a token came from (said in errors, so a user knows which one was used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// Made by this process (an embedded cluster, `fleet cluster up`).
    Generated,
    /// The `FLEET_TOKEN` variable.
    Environment,
    /// A token file.
    File(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Generated => write!(f, "made by this process"),
            TokenSource::Environment => write!(f, "from {TOKEN_ENV}"),
            TokenSource::File(path) => write!(f, "from the file {}", path.display()),
        }
    }
}

/// Never prints the secret.
impl fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterToken")
            .field("fingerprint", &self.fingerprint())
            .field("source", &self.source)
            .finish()
    }
}

impl ClusterToken {
    /// A new token of 256 bits from the operating system's random source, as 64 hex digits.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        ClusterToken {
            secret: hex(&bytes),
            source: TokenSource::Generated,
        }
    }

    /// A token given as text (surrounding whitespace ignored): 32 to 512 printable ASCII
    /// characters with no spaces.
    pub fn parse(text: &str, source: TokenSource) -> Result<Self, String> {
        let secret = text.trim();
        if secret.len() < MIN_TOKEN_CHARS || secret.len() > MAX_TOKEN_CHARS {
            return Err(format!(
                "the cluster token {source} has {} characters; a token has {MIN_TOKEN_CHARS} to \
                 {MAX_TOKEN_CHARS} (`fleet token new` makes one of 256 random bits)",
                secret.len()
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the cluster token {source} holds characters other than printable ASCII; \
                 `fleet token new` makes a valid one"
            ));
        }
        Ok(ClusterToken {
            secret: secret.to_string(),
            source,
        })
    }

    /// Reads a token file, refusing one that others than its owner may read.
    pub fn read_file(path: &Path) -> Result<Self, String> {
        let metadata = std::fs::metadata(path).map_err(|e| {
            format!(
                "cannot read the cluster token file {}: {e}; `fleet cluster up` writes it into \
                 the cluster's directory, or point {TOKEN_FILE_ENV} / --token-file at the right one",
                path.display()
            )
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "the cluster token file {} has mode {mode:o}: others can read the cluster's \
                     secret; `chmod 600 {}`",
                    path.display(),
                    path.display()
                ));
            }
        }
        if metadata.len() > MAX_TOKEN_CHARS as u64 + 64 {
            return Err(format!(
                "the cluster token file {} holds {} bytes, more than a token; point \
                 {TOKEN_FILE_ENV} / --token-file at the cluster's token file",
                path.display(),
                metadata.len()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the cluster token file {}: {e}", path.display()))?;
        Self::parse(&text, TokenSource::File(path.to_path_buf()))
    }

    /// Writes the token to `path` with mode 0600 (replacing any file there atomically).
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(dir)?;
        let temporary = dir.join(format!(".{TOKEN_FILE_NAME}.{}", std::process::id()));
        let mut options = std::fs::File::options();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let written = (|| {
            let mut file = options.open(&temporary)?;
            file.write_all(self.secret.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }

    /// The secret, to hand to a child process (`FLEET_TOKEN`) — never to print.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Where this process found it.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// The first 8 hex digits of the token's SHA-256: names a token in errors and logs
    /// without revealing it.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.secret.as_bytes())
    }

    /// The header value requests carry.
    fn header(&self) -> Option<MetadataValue<Ascii>> {
        MetadataValue::try_from(format!("{BEARER}{}", self.secret)).ok()
    }
}

fn fingerprint(secret: &[u8]) -> String {
    hex(&Sha256::digest(secret)[..4])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Compares without an early exit, so the time taken says nothing about where two
/// secrets of equal length first differ (lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimizer from turning the fold into an early-exit compare.
    std::hint::black_box(difference) == 0
}

/// What [`process_token`] found: `None` until it looked.
static PROCESS_TOKEN: RwLock<Option<Option<Arc<ClusterToken>>>> = RwLock::new(None);

/// The default token file: `$FLEET_HOME/clusters/$FLEET_CLUSTER/token` (FLEET_HOME
/// defaulting to `~/.fleet`, FLEET_CLUSTER to `default`).
pub fn default_token_file() -> PathBuf {
    let cluster = std::env::var("FLEET_CLUSTER")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "default".into());
    fleet_home()
        .join("clusters")
        .join(cluster)
        .join(TOKEN_FILE_NAME)
}

/// `$FLEET_HOME`, else `$HOME/.fleet` (else a directory under the system's temp dir).
pub fn fleet_home() -> PathBuf {
    if let Some(home) = std::env::var_os("FLEET_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".fleet"),
        None => std::env::temp_dir().join("fleet"),
    }
}

/// Looks for a token in the environment (steps 2–4 of the module's list): `Ok(None)` when
/// there is none anywhere, an error when one is named but unusable.
pub fn token_from_env() -> Result<Option<ClusterToken>, String> {
    if let Ok(text) = std::env::var(TOKEN_ENV) {
        if !text.is_empty() {
            return ClusterToken::parse(&text, TokenSource::Environment).map(Some);
        }
    }
    if let Some(path) = std::env::var_os(TOKEN_FILE_ENV).filter(|p| !p.is_empty()) {
        return ClusterToken::read_file(Path::new(&path)).map(Some);
    }
    let default = default_token_file();
    if default.exists() {
        return ClusterToken::read_file(&default).map(Some);
    }
    Ok(None)
}

/// This process's token: the one set, else the environment's (looked up once; an unusable
/// one is logged and treated as none, so requests go out without a token and the server's
/// refusal says what to fix).
pub fn process_token() -> Option<Arc<ClusterToken>> {
    if let Some(found) = PROCESS_TOKEN
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return found;
    }
    let mut slot = PROCESS_TOKEN.write().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = slot.clone() {
        return found;
    }
    let found = match token_from_env() {
        Ok(token) => token.map(Arc::new),
        Err(error) => {
            tracing::error!(%error, "no usable cluster token");
            None
        }
    };
    *slot = Some(found.clone());
    found
}

/// Sets this process's token; channels made after this carry it and servers started after
/// this require it.
pub fn set_process_token(token: ClusterToken) -> Arc<ClusterToken> {
    let token = Arc::new(token);
    *PROCESS_TOKEN.write().unwrap_or_else(|e| e.into_inner()) = Some(Some(token.clone()));
    token
}

/// This process's token, or a new one made in memory and kept (an embedded cluster, an
/// in-process test cluster: every party is in this process or is its child).
pub fn ensure_process_token() -> Arc<ClusterToken> {
    if let Some(token) = process_token() {
        return token;
    }
    let mut slot = PROCESS_TOKEN.write().unwrap_or_else(|e| e.into_inner());
    if let Some(Some(token)) = slot.clone() {
        return token;
    }
    let token = Arc::new(ClusterToken::generate());
    *slot = Some(Some(token.clone()));
    token
}

/// The environment a child process of this cluster gets (its workers, a submitted driver).
pub fn child_env() -> Option<(&'static str, String)> {
    process_token().map(|t| (TOKEN_ENV, t.secret().to_string()))
}

/// A sentence on the token this process sent, for an `Unauthenticated` error.
pub fn describe_own_token() -> String {
    match process_token() {
        Some(token) => format!(
            "this process sent the token with fingerprint {} ({}); the cluster's token is in \
             its directory (`fleet cluster up` writes ~/.fleet/clusters/NAME/token): give it \
             with {TOKEN_FILE_ENV}, --token-file or {TOKEN_ENV}",
            token.fingerprint(),
            token.source()
        ),
        None => format!(
            "this process has no cluster token: give the cluster's token file (`fleet cluster \
             up` writes ~/.fleet/clusters/NAME/token) with {TOKEN_FILE_ENV} or --token-file, \
             or the token itself with {TOKEN_ENV}"
        ),
    }
}

/// Adds the token to every request a channel sends.
#[derive(Clone, Default)]
pub struct AuthInterceptor {
    header: Option<MetadataValue<Ascii>>,
}

impl AuthInterceptor {
    /// Carries `token` (none: requests go out bare and are refused).
    pub fn new(token: Option<&ClusterToken>) -> Self {
        AuthInterceptor {
            header: token.and_then(ClusterToken::header),
        }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert(AUTHORIZATION, header.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry the cluster token: what every Fleet client speaks over.
pub type AuthChannel = InterceptedService<tonic::transport::Channel, AuthInterceptor>;

/// `channel` carrying this process's token.
pub fn authed(channel: tonic::transport::Channel) -> AuthChannel {
    let token = process_token();
    InterceptedService::new(channel, AuthInterceptor::new(token.as_deref()))
}

/// The server side: refuses, before any handler runs, a request that does not carry the
/// cluster's token. Used as a layer on every Fleet server:
/// `Server::builder().layer(RequireToken::layer(token))`.
#[derive(Clone)]
pub struct RequireToken {
    expected: Arc<[u8]>,
    fingerprint: Arc<str>,
}

impl RequireToken {
    /// Requires `token`.
    pub fn new(token: &ClusterToken) -> Self {
        RequireToken {
            expected: Arc::from(format!("{BEARER}{}", token.secret).into_bytes()),
            fingerprint: Arc::from(token.fingerprint()),
        }
    }

    /// This process's token as a server layer (made in memory if the process has none).
    pub fn layer_for_process() -> tonic::service::InterceptorLayer<RequireToken> {
        tonic::service::InterceptorLayer::new(Self::new(&ensure_process_token()))
    }

    /// Whether `header` (the request's `authorization` value) is the cluster's.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), Status> {
        let Some(presented) = header else {
            return Err(Status::unauthenticated(
                "this Fleet cluster requires its cluster token and the request carried none",
            ));
        };
        if constant_time_eq(presented, &self.expected) {
            return Ok(());
        }
        let theirs = presented
            .strip_prefix(BEARER.as_bytes())
            .map(fingerprint)
            .unwrap_or_else(|| "unreadable".into());
        Err(Status::unauthenticated(format!(
            "the request's cluster token (fingerprint {theirs}) is not this cluster's \
             (fingerprint {})",
            self.fingerprint
        )))
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get(AUTHORIZATION)
            .map(|value| value.as_bytes());
        self.check(header)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_256_bits_and_distinct() {
        let a = ClusterToken::generate();
        let b = ClusterToken::generate();
        assert_eq!(a.secret().len(), 64);
        assert!(a.secret().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.secret(), b.secret());
        assert_eq!(a.fingerprint().len(), 8);
        assert!(
            !format!("{a:?}").contains(a.secret()),
            "Debug hides the secret"
        );
    }

    #[test]
    fn short_or_spaced_tokens_are_refused_with_the_fix() {
        let short = ClusterToken::parse("abc", TokenSource::Environment).expect_err("refused");
        assert!(
            short.contains("FLEET_TOKEN") && short.contains("fleet token new"),
            "{short}"
        );
        let spaced =
            ClusterToken::parse(&"a b".repeat(20), TokenSource::Environment).expect_err("refused");
        assert!(spaced.contains("printable ASCII"), "{spaced}");
        let ok = ClusterToken::parse(&format!("  {}\n", "x".repeat(40)), TokenSource::Environment);
        assert_eq!(ok.map(|t| t.secret().len()).ok(), Some(40));
    }

    #[test]
    fn token_files_are_written_0600_and_readable_ones_refused() {
        let dir = tempfile::tempdir().expect("works");
        let path = dir.path().join("token");
        let token = ClusterToken::generate();
        token.write_file(&path).expect("works");
        let read = ClusterToken::read_file(&path).expect("works");
        assert_eq!(read.secret(), token.secret());
        assert_eq!(read.source(), &TokenSource::File(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("works")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("works");
            let error = ClusterToken::read_file(&path).expect_err("refused");
            assert!(error.contains("chmod 600"), "{error}");
        }
        let missing = ClusterToken::read_file(&dir.path().join("nope")).expect_err("refused");
        assert!(
            missing.contains("nope") && missing.contains("--token-file"),
            "{missing}"
        );
    }

    #[test]
    fn the_server_check_refuses_missing_and_wrong_tokens() {
        let token = ClusterToken::generate();
        let check = RequireToken::new(&token);
        let right = format!("Bearer {}", token.secret());
        assert!(check.check(Some(right.as_bytes())).is_ok());
        let missing = check.check(None).expect_err("refused");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let other = ClusterToken::generate();
        let wrong = check
            .check(Some(format!("Bearer {}", other.secret()).as_bytes()))
            .expect_err("refused");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(wrong.message().contains(&other.fingerprint()));
        assert!(wrong.message().contains(&token.fingerprint()));
        assert!(!wrong.message().contains(token.secret()));
        // A prefix of the right header is not the right header.
        assert!(check
            .check(Some(&right.as_bytes()[..right.len() - 1]))
            .is_err());
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    proptest::proptest! {
        /// Whatever text a token file or variable holds: a token or a clear error, never a
        /// panic; a token that parses prints back as itself.
        #[test]
        fn any_text_parses_to_a_token_or_an_error(
            text in proptest::prop_oneof!["\\PC{0,100}", "[0-9a-fA-F]{56,72}", " ?[0-9a-f]{64}\n?"]
        ) {
            if let Ok(token) = ClusterToken::parse(&text, TokenSource::Environment) {
                let again = ClusterToken::parse(token.secret(), TokenSource::Environment);
                proptest::prop_assert_eq!(again.map(|t| t.fingerprint()), Ok(token.fingerprint()));
            }
        }
    }
}
