//! Reading what a command is given in a file (or on standard input), within a limit.

use anyhow::Context as _;

/// The text of `file` (`-`: standard input), refused when larger than `limit` bytes.
pub fn read_text(file: &str, limit: u64) -> anyhow::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), limit), &mut text)
            .context("reading standard input")?;
        return Ok(text);
    }
    let len = std::fs::metadata(file)
        .with_context(|| format!("reading {file}"))?
        .len();
    if len > limit {
        anyhow::bail!("{file} is {len} bytes; the limit is {limit}");
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
}
