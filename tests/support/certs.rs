//! Certificates for TLS tests, made with `openssl` in a folder of the test's: a CA and certificates it signs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// A certificate authority whose key and certificate live in `dir`.
pub struct TestCa {
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// A new self-signed CA, `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn new(dir: &Path, name: &str) -> crate::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = TestCa { dir: dir.to_owned(), name: name.to_owned() };
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        let subject = format!("/CN=pgm test CA {name}");
        ca.openssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject, "-keyout", &key, "-out",
            &crt,
        ])?;
        Ok(ca)
    }

    /// The CA's certificate (PEM), for a client's or server's trust store.
    pub fn certificate(&self) -> PathBuf {
        self.dir.join(format!("{}.crt", self.name))
    }

    /// A key and a certificate for `cn` signed by this CA, `<dir>/<name>.key` (PKCS#8, unencrypted) and
    /// `<dir>/<name>.crt`; with `ip`, the certificate names that address (subjectAltName), as a server's must.
    pub fn issue(&self, name: &str, cn: &str, ip: Option<&str>) -> crate::Result<(PathBuf, PathBuf)> {
        let (csr, crt, key) = (format!("{name}.csr"), format!("{name}.crt"), format!("{name}.key"));
        let subject = format!("/CN={cn}");
        self.openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out", &csr])?;
        let (ca_crt, ca_key) = (format!("{}.crt", self.name), format!("{}.key", self.name));
        let mut sign = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
        ];
        let ext = format!("{name}.ext");
        if let Some(ip) = ip {
            std::fs::write(self.dir.join(&ext), format!("subjectAltName = IP:{ip}\n"))?;
            sign.extend(["-extfile", &ext]);
        }
        self.openssl(&sign)?;
        Ok((self.dir.join(crt), self.dir.join(key)))
    }

    fn openssl(&self, args: &[&str]) -> crate::Result<()> {
        let out = Command::new("openssl").args(args).current_dir(&self.dir).output().context("start openssl")?;
        anyhow::ensure!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }
}
