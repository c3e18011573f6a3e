//! A small real disk that fills up: a tmpfs of a given size mounted on a temp dir, for the
//! full-disk scenarios. Mounting needs privileges; where this process has none,
//! [`Tmpfs::mount`] says so and the scenario is skipped.

use std::path::{Path, PathBuf};

/// A tmpfs mounted on a temp dir; unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one of `size` (`48m`, …), or `None` where this process may not mount.
    pub fn mount(size: &str) -> anyhow::Result<Option<Tmpfs>> {
        let dir = tempfile::tempdir()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Ok(Some(Tmpfs { dir })),
            Ok(out) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs here: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(None)
            }
            Err(err) => {
                eprintln!("skipped: no mount command: {err}");
                Ok(None)
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left with `dd` (which stops when the disk is full); the filler file,
    /// to remove when space should come back.
    pub fn fill(&self) -> anyhow::Result<PathBuf> {
        self.fill_as("filler")
    }

    /// Fills what is left into the file `name` (beside another filler, say).
    pub fn fill_as(&self, name: &str) -> anyhow::Result<PathBuf> {
        let filler = self.path().join(name);
        let _ = std::process::Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .args(["bs=1M", "status=none"])
            .status()?;
        Ok(filler)
    }
}

impl Tmpfs {
    /// Fills it until about `left` bytes are free (to the MiB below); the filler file.
    pub fn fill_leaving(&self, left: u64) -> anyhow::Result<PathBuf> {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let avail: u64 = text
            .lines()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("df said {text:?}"))?
            .trim()
            .parse()?;
        let filler = self.path().join("filler");
        let status = std::process::Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .args(["bs=1M", "status=none"])
            .arg(format!("count={}", avail.saturating_sub(left) >> 20))
            .status()?;
        anyhow::ensure!(status.success(), "dd failed");
        Ok(filler)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
