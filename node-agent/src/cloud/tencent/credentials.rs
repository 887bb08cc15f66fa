//! The client's credentials: a key pair given to it (a file or the
//! environment, as from a Secret), or, without one, the temporary
//! credentials of the instance's CAM role from the metadata service
//! (`cam/security-credentials/<role>`: `TmpSecretId`, `TmpSecretKey`,
//! `Token`, `ExpiredTime`), fetched when first needed and again before
//! they expire, or at once when the API refuses their token. No long-term
//! key then lives on the instance.
//!
//! Behind the cluster's cloud gateway a node signs nothing: it presents
//! its Kubernetes service-account token (a projected file the kubelet
//! renews) as `Authorization: Bearer`, and the gateway, which alone holds
//! a key, judges and signs the call.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tracing::{info, warn};

use crate::cloud::CloudError;

/// How long before their expiry temporary credentials are replaced (or a
/// third of their lifetime, when that is shorter).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// SecretId, SecretKey and an optional session token. Never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// SecretId.
    pub secret_id: String,
    /// SecretKey.
    pub secret_key: String,
    /// Session token of temporary credentials.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("secret_id", &self.secret_id)
            .finish_non_exhaustive()
    }
}

/// Where the credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// A key pair (a Secret), used as it is.
    Fixed(Credentials),
    /// The instance's CAM role, from the metadata service at `metadata`
    /// (`http://metadata.tencentyun.com`).
    Role {
        /// The metadata service's base URL.
        metadata: String,
    },
    /// The cluster's cloud gateway: no key, the service-account token in
    /// `token_file` as a bearer token.
    Gateway {
        /// The projected token's path.
        token_file: std::path::PathBuf,
    },
}

/// How one call is authorised: its `Authorization` header and, for
/// temporary credentials, its `X-TC-Token`.
pub struct Authorization {
    /// The `Authorization` header's value.
    pub header: String,
    /// The `X-TC-Token` header's value.
    pub token: Option<String>,
}

/// How long a service-account token read from its file is used before the
/// file is read again (the kubelet renews it well before it expires).
pub const TOKEN_REREAD: Duration = Duration::from_secs(60);

/// Temporary credentials and when they expire (Unix seconds).
#[derive(Clone, Debug)]
struct Held {
    credentials: Credentials,
    fetched: u64,
    expires: u64,
}

/// The credentials in use: fixed, or the role's, kept fresh.
#[derive(Debug)]
pub struct Keyring {
    source: CredentialSource,
    held: Mutex<Option<Held>>,
    /// The service-account token read from its file, and until when (Unix
    /// seconds) it is used before the file is read again.
    bearer: Mutex<Option<(String, u64)>>,
    http: ureq::Agent,
}

impl Keyring {
    /// Credentials from `source`; metadata requests take at most `timeout`.
    pub fn new(source: CredentialSource, timeout: Duration) -> Keyring {
        let http = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .build(),
        );
        Keyring {
            source,
            held: Mutex::new(None),
            bearer: Mutex::new(None),
            http,
        }
    }

    /// How to authorise the next call: `sign` turns a key into the TC3
    /// `Authorization` header; behind the gateway, the bearer token.
    pub fn authorize(
        &self,
        sign: impl FnOnce(&Credentials) -> String,
    ) -> Result<Authorization, CloudError> {
        if let CredentialSource::Gateway { token_file } = &self.source {
            return Ok(Authorization {
                header: format!("Bearer {}", self.bearer(token_file)?),
                token: None,
            });
        }
        let credentials = self.current()?;
        Ok(Authorization {
            header: sign(&credentials),
            token: credentials.token,
        })
    }

    /// The service-account token, read again every [`TOKEN_REREAD`] or
    /// after the gateway refused it.
    fn bearer(&self, file: &std::path::Path) -> Result<String, CloudError> {
        let now = unix_now();
        let mut held = self.bearer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, until)) = held.as_ref()
            && now < *until
        {
            return Ok(token.clone());
        }
        let token = std::fs::read_to_string(file)
            .map_err(|e| {
                CloudError::Auth(format!("service-account token {}: {e}", file.display()))
            })?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(CloudError::Auth(format!(
                "service-account token {} is empty",
                file.display()
            )));
        }
        *held = Some((token.clone(), now + TOKEN_REREAD.as_secs()));
        Ok(token)
    }

    /// The credentials to sign the next call with. The role's are fetched
    /// when none are held or they are due for replacement; if the metadata
    /// service does not answer then, the held ones serve until they expire.
    pub fn current(&self) -> Result<Credentials, CloudError> {
        let metadata = match &self.source {
            CredentialSource::Fixed(c) => return Ok(c.clone()),
            CredentialSource::Role { metadata } => metadata,
            CredentialSource::Gateway { .. } => {
                return Err(CloudError::Auth(
                    "behind the cloud gateway the node holds no key".into(),
                ));
            }
        };
        let now = unix_now();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.as_ref()
            && !due(h, now)
        {
            return Ok(h.credentials.clone());
        }
        match self.fetch(metadata, now) {
            Ok(fresh) => {
                if held
                    .as_ref()
                    .is_none_or(|h| h.credentials.secret_id != fresh.credentials.secret_id)
                {
                    info!(
                        expires = fresh.expires,
                        "temporary credentials of the instance's role fetched"
                    );
                }
                let credentials = fresh.credentials.clone();
                *held = Some(fresh);
                Ok(credentials)
            }
            Err(e) => match held.as_ref() {
                Some(h) if h.expires > now => {
                    warn!(error = %e, expires = h.expires, "cannot renew the role's temporary credentials; using the ones held until they expire");
                    Ok(h.credentials.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// The API refused the credentials' token (expired, rotated away), or
    /// the gateway the service-account token: the next call fetches new
    /// ones, or reads the file again. Whether there is anything to fetch.
    pub fn refused(&self) -> bool {
        match self.source {
            CredentialSource::Fixed(_) => return false,
            CredentialSource::Role { .. } => {
                *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            CredentialSource::Gateway { .. } => {
                *self.bearer.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        true
    }

    /// The role's name, then its credentials.
    fn fetch(&self, metadata: &str, now: u64) -> Result<Held, CloudError> {
        let base = format!(
            "{}/latest/meta-data/cam/security-credentials/",
            metadata.trim_end_matches('/')
        );
        let get = |url: &str| {
            self.http
                .get(url)
                .call()
                .and_then(|mut r| r.body_mut().read_to_string())
                .map_err(|e| CloudError::Auth(format!("metadata {url}: {e}")))
        };
        let roles = get(&base)?;
        let role = roles.lines().map(str::trim).find(|l| !l.is_empty()).ok_or_else(|| {
            CloudError::Auth(
                "the instance has no CAM role: bind one, or give a key (--credentials-file or TENCENTCLOUD_SECRET_ID)".into(),
            )
        })?;
        let text = get(&format!("{base}{role}"))?;
        parse(&text, now)
            .map_err(|why| CloudError::Auth(format!("role {role}'s credentials: {why}")))
    }
}

/// Whether held credentials are to be replaced at `now`.
fn due(h: &Held, now: u64) -> bool {
    let lifetime = h.expires.saturating_sub(h.fetched);
    let margin = REFRESH_BEFORE.as_secs().min(lifetime / 3);
    now + margin >= h.expires
}

/// The metadata service's answer for a role.
fn parse(text: &str, now: u64) -> Result<Held, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(code) = v["Code"].as_str()
        && code != "Success"
    {
        return Err(format!("the metadata service answered {code}"));
    }
    let field = |k: &str| {
        v[k].as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("no {k}"))
    };
    let expires = v["ExpiredTime"]
        .as_u64()
        .ok_or_else(|| "no ExpiredTime".to_string())?;
    if expires <= now {
        return Err(format!("they expired at {expires}"));
    }
    Ok(Held {
        credentials: Credentials {
            secret_id: field("TmpSecretId")?,
            secret_key: field("TmpSecretKey")?,
            token: Some(field("Token")?),
        },
        fetched: now,
        expires,
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where the client's credentials come from: the key pair in `file`
/// (`SecretId=`, `SecretKey=`, optional `Token=` lines), else the one in
/// TENCENTCLOUD_SECRET_ID, TENCENTCLOUD_SECRET_KEY and
/// TENCENTCLOUD_SESSION_TOKEN, else the instance's CAM role through the
/// metadata service at `metadata`.
pub fn source(
    file: Option<&std::path::Path>,
    metadata: &str,
) -> Result<CredentialSource, CloudError> {
    let (id, key, token) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CloudError::Auth(format!("{}: {e}", path.display())))?;
            let get = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                    .map(|v| v.trim().to_string())
            };
            (get("SecretId"), get("SecretKey"), get("Token"))
        }
        None => (
            std::env::var("TENCENTCLOUD_SECRET_ID").ok(),
            std::env::var("TENCENTCLOUD_SECRET_KEY").ok(),
            std::env::var("TENCENTCLOUD_SESSION_TOKEN").ok(),
        ),
    };
    let given = |v: Option<String>| v.filter(|s| !s.is_empty());
    match (given(id), given(key)) {
        (Some(secret_id), Some(secret_key)) => Ok(CredentialSource::Fixed(Credentials {
            secret_id,
            secret_key,
            token: given(token),
        })),
        (None, None) if file.is_none() => Ok(CredentialSource::Role {
            metadata: metadata.to_string(),
        }),
        _ => Err(CloudError::Auth(match file {
            Some(path) => format!("{}: needs both SecretId= and SecretKey=", path.display()),
            None => "TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY go together".into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(expires: u64) -> String {
        serde_json::json!({
            "TmpSecretId": "AKIDtmp", "TmpSecretKey": "k", "Token": "t",
            "ExpiredTime": expires, "Expiration": "-", "Code": "Success",
        })
        .to_string()
    }

    #[test]
    fn role_credentials_are_replaced_before_they_expire() {
        let h = parse(&answer(1000 + 7200), 1000).expect("parsed");
        assert_eq!(h.credentials.token.as_deref(), Some("t"));
        assert!(
            !due(&h, 1000 + 7200 - 301),
            "kept until five minutes are left"
        );
        assert!(due(&h, 1000 + 7200 - 300));
        // Short-lived ones: a third of their lifetime before.
        let short = parse(&answer(1000 + 30), 1000).expect("parsed");
        assert!(!due(&short, 1019) && due(&short, 1020));
    }

    #[test]
    fn expired_or_incomplete_answers_are_refused() {
        assert!(parse(&answer(999), 1000).is_err());
        assert!(parse(r#"{"Code":"Failure"}"#, 1000).is_err());
        assert!(parse(r#"{"TmpSecretId":"a","ExpiredTime":5000}"#, 1000).is_err());
    }

    #[test]
    fn a_key_given_wins_and_half_a_key_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("credentials");
        std::fs::write(&file, "SecretId=a\nSecretKey=b\n").expect("write");
        assert!(matches!(
            source(Some(&file), "http://m"),
            Ok(CredentialSource::Fixed(c)) if c.secret_id == "a" && c.token.is_none()
        ));
        std::fs::write(&file, "SecretId=a\n").expect("write");
        assert!(source(Some(&file), "http://m").is_err());
    }
}
