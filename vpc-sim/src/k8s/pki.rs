//! Keys, certificates and kubeconfigs of one cluster, made with Debian's
//! `openssl`: a CA, the apiserver's serving certificate, one client
//! certificate per component (its CN and O are what RBAC and the Node
//! authorizer see) and the service-account signing key.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the cluster's PKI lives and what a kubeconfig needs from it.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The directory holding every key and certificate.
    pub dir: PathBuf,
}

impl Pki {
    /// Makes the CA and the service-account key in `dir`.
    pub fn create(dir: &Path, tag: &str) -> Result<Pki, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            &format!("/CN=vpcsim-{tag}-ca"),
            "-keyout",
            &pki.path("ca.key"),
            "-out",
            &pki.path("ca.crt"),
        ])?;
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &pki.path("sa.key"),
        ])?;
        openssl(&[
            "pkey",
            "-in",
            &pki.path("sa.key"),
            "-pubout",
            "-out",
            &pki.path("sa.pub"),
        ])?;
        Ok(pki)
    }

    /// A file of the PKI, as a string for command lines.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Issues `name.crt`/`name.key` for `subject` (`/O=…/CN=…`), with
    /// `sans` (`IP:…,DNS:…`) when it serves.
    pub fn issue(&self, name: &str, subject: &str, sans: Option<&str>) -> Result<(), String> {
        let csr = self.path(&format!("{name}.csr"));
        let ext = self.path(&format!("{name}.ext"));
        let mut extensions = String::from(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        if let Some(sans) = sans {
            extensions.push_str(&format!("subjectAltName={sans}\n"));
        }
        fs::write(&ext, extensions).map_err(|e| format!("{ext}: {e}"))?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &self.path(&format!("{name}.key")),
            "-out",
            &csr,
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.path("ca.crt"),
            "-CAkey",
            &self.path("ca.key"),
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            &ext,
            "-out",
            &self.path(&format!("{name}.crt")),
        ])?;
        let _ = fs::remove_file(&csr);
        let _ = fs::remove_file(&ext);
        Ok(())
    }

    /// Writes a kubeconfig for the client certificate `name` to `path`.
    pub fn kubeconfig(&self, path: &Path, server: &str, name: &str) -> Result<(), String> {
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: vpc-sim
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {name}
  user:
    client-certificate: {crt}
    client-key: {key}
contexts:
- name: vpc-sim
  context:
    cluster: vpc-sim
    user: {name}
current-context: vpc-sim
",
            ca = self.path("ca.crt"),
            crt = self.path(&format!("{name}.crt")),
            key = self.path(&format!("{name}.key")),
        );
        fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn openssl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl").args(args).output().map_err(|e| {
        format!("cannot run openssl (apt-get install openssl) for the cluster's certificates: {e}")
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
