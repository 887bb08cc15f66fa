//! TC3-HMAC-SHA256, the signature of Tencent Cloud API 3.0 requests: a
//! canonical request over the method, path, query, the signed headers
//! (`content-type` and `host`) and the hashed body; a string to sign over
//! the timestamp, the credential scope (`<date>/<service>/tc3_request`) and
//! the hashed canonical request; and a key derived from the secret key by
//! HMAC over the date, the service and `tc3_request`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The algorithm name in `Authorization`.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// The headers every request signs, in canonical order.
pub const SIGNED_HEADERS: &str = "content-type;host";
/// The content type of JSON requests.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// One request to sign: a POST of a JSON body to `/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Service name, such as `vpc`.
    pub service: &'a str,
    /// The `Host` header, such as `vpc.tencentcloudapi.com`.
    pub host: &'a str,
    /// The `Content-Type` header.
    pub content_type: &'a str,
    /// The body, exactly as sent.
    pub payload: &'a [u8],
    /// `X-TC-Timestamp`, Unix seconds.
    pub timestamp: u64,
}

impl Request<'_> {
    /// The canonical request.
    pub fn canonical_request(&self) -> String {
        format!(
            "POST\n/\n\ncontent-type:{}\nhost:{}\n\n{SIGNED_HEADERS}\n{}",
            self.content_type.to_ascii_lowercase(),
            self.host.to_ascii_lowercase(),
            hex(&Sha256::digest(self.payload))
        )
    }

    /// The UTC date of the timestamp, `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        utc_date(self.timestamp)
    }

    /// The credential scope.
    pub fn scope(&self) -> String {
        format!("{}/{}/tc3_request", self.date(), self.service)
    }

    /// The string to sign.
    pub fn string_to_sign(&self) -> String {
        format!(
            "{ALGORITHM}\n{}\n{}\n{}",
            self.timestamp,
            self.scope(),
            hex(&Sha256::digest(self.canonical_request().as_bytes()))
        )
    }

    /// The hex signature with `secret_key`.
    pub fn signature(&self, secret_key: &str) -> String {
        let date = hmac(
            format!("TC3{secret_key}").as_bytes(),
            self.date().as_bytes(),
        );
        let service = hmac(&date, self.service.as_bytes());
        let signing = hmac(&service, b"tc3_request");
        hex(&hmac(&signing, self.string_to_sign().as_bytes()))
    }

    /// The `Authorization` header value.
    pub fn authorization(&self, secret_id: &str, secret_key: &str) -> String {
        format!(
            "{ALGORITHM} Credential={secret_id}/{}, SignedHeaders={SIGNED_HEADERS}, Signature={}",
            self.scope(),
            self.signature(secret_key)
        )
    }
}

/// The parts of an `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The SecretId.
    pub secret_id: String,
    /// The credential scope's date.
    pub date: String,
    /// The credential scope's service.
    pub service: String,
    /// The signed headers.
    pub signed_headers: String,
    /// The hex signature.
    pub signature: String,
}

/// Why an `Authorization` header is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Authorization header: {0}")]
pub struct MalformedAuthorization(pub String);

impl Authorization {
    /// Parses `TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request,
    /// SignedHeaders=..., Signature=...`.
    pub fn parse(header: &str) -> Result<Authorization, MalformedAuthorization> {
        let bad = |why: &str| MalformedAuthorization(why.to_string());
        let rest = header
            .strip_prefix(ALGORITHM)
            .ok_or_else(|| bad("not TC3-HMAC-SHA256"))?
            .trim_start();
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for part in rest.split(',').map(str::trim) {
            match part.split_once('=') {
                Some(("Credential", v)) => credential = Some(v),
                Some(("SignedHeaders", v)) => signed_headers = Some(v),
                Some(("Signature", v)) => signature = Some(v),
                _ => return Err(bad("unexpected part")),
            }
        }
        let credential = credential.ok_or_else(|| bad("no Credential"))?;
        let mut scope = credential.split('/');
        let (Some(secret_id), Some(date), Some(service), Some("tc3_request"), None) = (
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
        ) else {
            return Err(bad("Credential is not ID/DATE/SERVICE/tc3_request"));
        };
        Ok(Authorization {
            secret_id: secret_id.to_string(),
            date: date.to_string(),
            service: service.to_string(),
            signed_headers: signed_headers
                .ok_or_else(|| bad("no SignedHeaders"))?
                .to_string(),
            signature: signature.ok_or_else(|| bad("no Signature"))?.to_string(),
        })
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix timestamp, the API's time format.
pub fn utc_datetime(timestamp: u64) -> String {
    let secs = timestamp % 86_400;
    format!(
        "{} {:02}:{:02}:{:02}",
        utc_date(timestamp),
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The Unix timestamp of a `YYYY-MM-DD HH:MM:SS` (UTC) time.
pub fn parse_utc_datetime(s: &str) -> Option<u64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// `YYYY-MM-DD` (UTC) of a Unix timestamp.
pub fn utc_date(timestamp: u64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let days = (timestamp / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Tencent Cloud's "Signature v3" document
    /// (DescribeInstances on cvm, its example key pair as printed there).
    const PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;

    fn example() -> Request<'static> {
        Request {
            service: "cvm",
            host: "cvm.tencentcloudapi.com",
            content_type: JSON_CONTENT_TYPE,
            payload: PAYLOAD.as_bytes(),
            timestamp: 1_551_113_065,
        }
    }

    #[test]
    fn the_documented_example_signs_to_the_documented_values() {
        let r = example();
        assert_eq!(
            r.canonical_request(),
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\n\
             content-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        assert_eq!(
            r.string_to_sign(),
            "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n\
             5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(
            r.authorization(
                "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******",
                "Gu5t9xGARNpq86cd98joQYCN3*******"
            ),
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******/2019-02-25/cvm/tc3_request, \
             SignedHeaders=content-type;host, \
             Signature=2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
        );
    }

    #[test]
    fn another_key_or_body_changes_the_signature() {
        let r = example();
        let good = r.signature("key");
        assert_ne!(good, r.signature("other"));
        assert_ne!(
            good,
            Request {
                payload: b"{}",
                ..r
            }
            .signature("key")
        );
        assert_ne!(
            good,
            Request {
                timestamp: r.timestamp + 1,
                ..r
            }
            .signature("key")
        );
    }

    #[test]
    fn authorization_round_trips() {
        let header = example().authorization("AKIDexample", "secret");
        let parsed = Authorization::parse(&header).expect("parse");
        assert_eq!(parsed.secret_id, "AKIDexample");
        assert_eq!(parsed.date, "2019-02-25");
        assert_eq!(parsed.service, "cvm");
        assert_eq!(parsed.signed_headers, SIGNED_HEADERS);
        assert_eq!(parsed.signature, example().signature("secret"));
        for bad in [
            "",
            "HMAC-SHA1 Credential=a/b/c/tc3_request",
            "TC3-HMAC-SHA256 Credential=a/b/tc3_request",
        ] {
            assert!(Authorization::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datetimes_round_trip() {
        for t in [0, 951_782_400, 1_551_113_065, 1_795_910_399] {
            assert_eq!(parse_utc_datetime(&utc_datetime(t)), Some(t), "{t}");
        }
        assert_eq!(utc_datetime(1_551_113_065), "2019-02-25 16:44:25");
        assert_eq!(parse_utc_datetime("2019-13-01 00:00:00"), None);
        assert_eq!(parse_utc_datetime("garbage"), None);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_551_113_065), "2019-02-25");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_795_910_399), "2026-11-28");
        assert_eq!(utc_date(1_795_910_400), "2026-11-29");
    }
}
