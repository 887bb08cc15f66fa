//! One file per subcommand.

pub mod claims;
#[cfg(feature = "kubernetes")]
pub mod cluster;
mod identity;
pub mod install;
pub mod pool;
pub mod run;
pub mod uninstall;

/// Rows as `kubectl get` prints them: columns padded to their widest cell,
/// three spaces apart, no trailing blanks.
fn table<R: AsRef<[String]>>(rows: &[R]) -> String {
    let columns = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.as_ref().get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.as_ref()
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("   ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
